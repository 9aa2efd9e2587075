/*
 * colstats.c -- per-column statistics of a 2-D matrix that skip NaN values
 * (optionally with row weights), and per-column standardisation
 * y = (x - mean) / scale: the kernels behind fastbn.sklearn.StandardScaler
 * (see fastbn.h for the interface).
 *
 * The kernels are written once, in colstats_impl.h, and instantiated here
 * for float and double and, on x86-64 with GCC or clang, for the baseline,
 * AVX2 and AVX-512 (the one fbn_simd() names runs).  The arithmetic is the
 * same everywhere (explicit lanes, no FMA contraction: the build uses
 * -ffp-contract=off), so every instruction set and every thread count
 * gives bitwise the same results.  Work is split in fixed blocks that
 * depend on the shape only, run through fbn_parallel_for (pool.h), and
 * per-block results are combined in block order.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastbn.h"
#include "pool.h"
#include "portable.h"


/* Values per row block (row-major statistics), at least CS_MIN_ROWS rows:
 * a block (64 KB of float) is read twice, the second time from cache. */
#define CS_BLOCK_VALUES 16384
#define CS_MIN_ROWS 64
/* Rows per chunk of a column (column-major statistics). */
#define CS_CHUNK 4096
/* Independent accumulators: one per column of a strip (row-major), one
 * per lane of a run (column-major). */
#define CS_LANES 16
/* Values per standardisation item. */
#define CS_APPLY_VALUES 16384
/* Constants of up to this many columns live on the stack. */
#define CS_STACK_C 256
/* GCC and clang vector extensions for the statistics' lanes (other
 * compilers run the same arithmetic as scalar loops). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FBN_NO_VEC)
#define CS_VEC 1
#else
#define CS_VEC 0
#endif

static inline ptrdiff_t cs_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t cs_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t cs_cdiv(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }

/* Rows per statistics block: depends on p only (part of the numerics). */
static inline ptrdiff_t cs_block_rows(ptrdiff_t p)
{
    ptrdiff_t r = CS_BLOCK_VALUES / (p > 0 ? p : 1);
    return r < CS_MIN_ROWS ? CS_MIN_ROWS : r;
}

/* Threads for `work` values in `items` items: the caller alone below the
 * batch-norm kernels' serial threshold (fbn_set_tuning's serial_values). */
static int cs_threads(int nthreads, ptrdiff_t work, ptrdiff_t items)
{
    long long nt, fuse, tile, serial, wake;
    fbn_get_tuning(&nt, &fuse, &tile, &serial, &wake);
    if (nthreads < 2 || (long long)work < serial || items < 2)
        return 1;
    return (ptrdiff_t)nthreads > items ? (int)items : nthreads;
}

/* FBN_LIGHT for calls under the wake threshold (fbn_set_tuning's
 * wake_values): they do not wake sleeping helpers. */
static int cs_light(ptrdiff_t work)
{
    long long nt, fuse, tile, serial, wake;
    fbn_get_tuning(&nt, &fuse, &tile, &serial, &wake);
    return (long long)work < wake ? FBN_LIGHT : 0;
}

/* What the items of one call share. */
typedef struct {
    const void *x;
    void *y;
    ptrdiff_t n, p;
    int colmajor;
    const double *w;     /* statistics: row weights or NULL */
    ptrdiff_t rows;      /* row-major: rows per item */
    ptrdiff_t nparts;    /* statistics: blocks (row-major) or chunks per
                            column (column-major) */
    double *part;        /* statistics: (weight, mean, m2) per block and
                            column: [block][3][p] (row-major) or
                            [column][chunk][3] (column-major) */
    const void *mt;      /* standardisation: 2*p constants of T (mean, scale) */
    int inverse;         /* standardisation: y = x * scale + mean */
    unsigned char *flags; /* standardisation: item saw an infinity */
} cs_job;

/* Chan et al.'s merge of (nb, mb, qb) into (*na, *ma, *qa); parts of
 * weight 0 hold no values. */
static inline void cs_merge(double *na, double *ma, double *qa, double nb, double mb,
                            double qb)
{
    double n, d;
    if (nb == 0.0)
        return;
    if (*na == 0.0) {
        *na = nb;
        *ma = mb;
        *qa = qb;
        return;
    }
    n = *na + nb;
    d = mb - *ma;
    *ma += d * (nb / n);
    *qa += qb + d * d * (*na * (nb / n));
    *na = n;
}

/* A block's moments from its two passes: weight k, the mean m of the
 * first pass, the sums e of w*(x - m) and q of w*(x - m)^2 of the second.
 * The correction e/k moves m to the mean of the values as well as double
 * can, and q - e*e/k is M2 about that mean (never below 0). */
static inline void cs_corrected(double k, double m, double e, double q, double *ko,
                                double *mo, double *qo)
{
    double c = k != 0.0 ? e / k : 0.0, r = q - e * c;
    *ko = k;
    *mo = m + c;
    *qo = r > 0.0 ? r : 0.0;
}

/* The per-column results from the parts (blocks or chunks, in order),
 * merged in a fixed pairwise tree: parts 2i and 2i+1, then pairs of
 * those, ... (tmp: 3 * nparts doubles). */
static void cs_merge_parts(const cs_job *jb, double *tmp, double *count, double *mean,
                           double *m2)
{
    ptrdiff_t c, b, w, np = jb->nparts, p = jb->p;
    for (c = 0; c < p; c++) {
        for (b = 0; b < np; b++) {
            const double *o;
            if (jb->colmajor) {
                o = jb->part + 3 * (c * np + b);
                tmp[3 * b] = o[0];
                tmp[3 * b + 1] = o[1];
                tmp[3 * b + 2] = o[2];
            } else {
                o = jb->part + 3 * p * b + c;
                tmp[3 * b] = o[0];
                tmp[3 * b + 1] = o[p];
                tmp[3 * b + 2] = o[2 * p];
            }
        }
        for (w = 1; w < np; w *= 2)
            for (b = 0; b + w < np; b += 2 * w)
                cs_merge(tmp + 3 * b, tmp + 3 * b + 1, tmp + 3 * b + 2, tmp[3 * (b + w)],
                         tmp[3 * (b + w) + 1], tmp[3 * (b + w) + 2]);
        count[c] = tmp[0];
        mean[c] = tmp[0] != 0.0 ? tmp[1] : NAN;
        m2[c] = tmp[2];
    }
}

/* Table of one element type's kernels (signatures as in fastbn.h). */
#define CS_OPS_TYPE_(s) cs_ops_##s
#define CS_OPS_TYPE(s) CS_OPS_TYPE_(s)
#define CS_DEFINE_OPS(T, SFX)                                                   \
    typedef struct {                                                            \
        int (*colstats)(const T *, ptrdiff_t, ptrdiff_t, int, const double *,   \
                        double *, double *, double *, int);                     \
        int (*standardize)(const T *, ptrdiff_t, ptrdiff_t, int, const double *, \
                           const double *, int, T *, int *, int);               \
    } cs_ops_##SFX;
CS_DEFINE_OPS(float, f32)
CS_DEFINE_OPS(double, f64)

/* Both element types for each instruction set. */
#define CS_ISA base
#define T float
#define SFX f32
#include "colstats_impl.h"
#undef T
#undef SFX
#define T double
#define SFX f64
#include "colstats_impl.h"
#undef T
#undef SFX
#undef CS_ISA

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(FBN_NO_DISPATCH)
#define CS_HAVE_DISPATCH 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define CS_ISA avx2
#define T float
#define SFX f32
#include "colstats_impl.h"
#undef T
#undef SFX
#define T double
#define SFX f64
#include "colstats_impl.h"
#undef T
#undef SFX
#undef CS_ISA
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")
#endif
#define CS_ISA avx512
#define T float
#define SFX f32
#include "colstats_impl.h"
#undef T
#undef SFX
#define T double
#define SFX f64
#include "colstats_impl.h"
#undef T
#undef SFX
#undef CS_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
#define CS_HAVE_DISPATCH 0
#endif

/* The kernels of the instruction set fbn_simd() names (fbn_set_simd
 * chooses it for every fastbn kernel). */
#if CS_HAVE_DISPATCH
static int cs_isa(void)
{
    const char *s = fbn_simd();
    if (strncmp(s, "avx512", 6) == 0) /* (avx512bf16: only bfloat16 differs) */
        return 2;
    if (strcmp(s, "avx2") == 0)
        return 1;
    return 0;
}
#endif

static const cs_ops_f32 *cs_table_f32(void)
{
#if CS_HAVE_DISPATCH
    static const cs_ops_f32 *const t[] = {&ops_f32_base, &ops_f32_avx2, &ops_f32_avx512};
    return t[cs_isa()];
#else
    return &ops_f32_base;
#endif
}

static const cs_ops_f64 *cs_table_f64(void)
{
#if CS_HAVE_DISPATCH
    static const cs_ops_f64 *const t[] = {&ops_f64_base, &ops_f64_avx2, &ops_f64_avx512};
    return t[cs_isa()];
#else
    return &ops_f64_base;
#endif
}

int fbn_colstats_f32(const float *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                     const double *w, double *count, double *mean, double *m2,
                     int nthreads)
{
    return cs_table_f32()->colstats(x, n, p, colmajor, w, count, mean, m2, nthreads);
}

int fbn_colstats_f64(const double *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                     const double *w, double *count, double *mean, double *m2,
                     int nthreads)
{
    return cs_table_f64()->colstats(x, n, p, colmajor, w, count, mean, m2, nthreads);
}

int fbn_standardize_f32(const float *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                        const double *mean, const double *scale, int inverse,
                        float *y, int *has_inf, int nthreads)
{
    return cs_table_f32()->standardize(x, n, p, colmajor, mean, scale, inverse, y,
                                       has_inf, nthreads);
}

int fbn_standardize_f64(const double *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                        const double *mean, const double *scale, int inverse,
                        double *y, int *has_inf, int nthreads)
{
    return cs_table_f64()->standardize(x, n, p, colmajor, mean, scale, inverse, y,
                                       has_inf, nthreads);
}
