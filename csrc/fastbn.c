/*
 * fastbn.c -- batch-normalization kernels (see fastbn.h for the interface).
 *
 * The kernels are written once, in kernels_impl.h, and instantiated here for
 * float and double.  This file holds what does not depend on the element
 * type: status strings, OpenMP queries, the thread policy, the statistics
 * merge, and the walk over one channel's values in channel-first layout.
 *
 * Determinism: statistics are computed per fixed-size chunk (channel-first)
 * or fixed-size block of rows (channel-last) and merged in chunk order, so
 * the floating-point operations are the same whether a channel is handled by
 * one thread or split over many.  The build uses -ffp-contract=off so the
 * compiler cannot fuse the same expression differently in two places.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastbn.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define FBN_HAVE_NT 1
#else
#define FBN_HAVE_NT 0
#endif

/* Values per statistics chunk in channel-first layout: small enough that the
 * second pass of the two-pass variance reads it from L1/L2. */
#define FBN_CHUNK 4096
/* Values per row block in channel-last layout (at least FBN_MIN_ROWS rows). */
#define FBN_BLOCK_VALUES 16384
#define FBN_MIN_ROWS 64
/* Problems with fewer values than this run serially: a parallel region
 * costs more than it saves. */
#define FBN_SERIAL_MAX 32768
/* Independent accumulators in the reductions: lets the compiler vectorise
 * without reassociating (results do not depend on the data's alignment). */
#define FBN_LANES 16
/* Values per tile when results go out through an L1 buffer. */
#define FBN_TILE 1024
/* Outputs of at least this many bytes are written with non-temporal
 * stores (they would not stay in cache anyway); tunable for measurements. */
#define FBN_NT_BYTES_DEFAULT (24L * 1024 * 1024)
/* The fused passes prefetch the next channel only for arrays at least this
 * large (smaller ones are in cache already). */
#define FBN_PREFETCH_BYTES (4L * 1024 * 1024)
#if defined(__GNUC__) || defined(__clang__)
#define FBN_NOINLINE __attribute__((noinline))
#else
#define FBN_NOINLINE
#endif

/* Channel-last rows longer than this many bytes are reduced in tiles of
 * FBN_ROW_TILE rows (see block_moments). */
#define FBN_STRIP_MAX_ROW 512
#define FBN_ROW_TILE 8
/* GCC and clang vector extensions (see kernels_impl.h); other compilers
 * run the same arithmetic as scalar loops. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FBN_NO_VEC)
#define FBN_VEC 1
#else
#define FBN_VEC 0
#endif
/* Rows (channel-last backward) summed in the element type before their
 * partial sums go to the double accumulators: 8 terms of float keep a
 * relative error below 5e-7 of each partial sum. */
#define FBN_FLUSH 8
/* Per-channel constants of up to this many channels live on the stack. */
#define FBN_STACK_C 64

const char *fbn_strerror(int status)
{
    switch (status) {
    case FBN_OK:
        return "success";
    case FBN_EINVAL:
        return "invalid argument (negative size or too few values per channel)";
    case FBN_ENOMEM:
        return "out of memory for scratch space";
    default:
        return "unknown fastbn status";
    }
}

int fbn_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fbn_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

long fbn_openmp_version(void)
{
#ifdef _OPENMP
    return (long)_OPENMP;
#else
    return 0;
#endif
}

#if defined(__clang__)
#define FBN_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define FBN_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define FBN_STR2_(x) #x
#define FBN_STR_(x) FBN_STR2_(x)
#define FBN_COMPILER "msvc " FBN_STR_(_MSC_VER)
#else
#define FBN_COMPILER "unknown compiler"
#endif

#if defined(__AVX512F__)
#define FBN_SIMD "AVX-512F"
#elif defined(__AVX2__)
#define FBN_SIMD "AVX2"
#elif defined(__AVX__)
#define FBN_SIMD "AVX"
#elif defined(__SSE2__) || defined(_M_X64)
#define FBN_SIMD "SSE2"
#elif defined(__ARM_NEON) || defined(_M_ARM64)
#define FBN_SIMD "NEON"
#else
#define FBN_SIMD "none"
#endif

const char *fbn_build_info(void) { return FBN_COMPILER "; " FBN_SIMD; }

/* ---- memory traffic: non-temporal stores and prefetch ------------------- */

/* How one pass writes and reads ahead: nt = non-temporal output stores,
 * pf = prefetch the values pf elements after the current ones. */
typedef struct {
    int nt;
    ptrdiff_t pf;
} fbn_mode;

static long long fbn_nt_bytes = FBN_NT_BYTES_DEFAULT;
static int fbn_prefetch_enabled = 1;

void fbn_set_tuning(long long nt_min_bytes, int prefetch)
{
    fbn_nt_bytes = nt_min_bytes;
    fbn_prefetch_enabled = prefetch != 0;
}

void fbn_get_tuning(long long *nt_min_bytes, int *prefetch)
{
    *nt_min_bytes = fbn_nt_bytes;
    *prefetch = fbn_prefetch_enabled;
}

static inline int fbn_use_nt(size_t out_bytes)
{
    return FBN_HAVE_NT && fbn_nt_bytes >= 0 && (long long)out_bytes >= fbn_nt_bytes;
}

static inline int fbn_prefetch_on(void) { return fbn_prefetch_enabled; }

/* Copy n bytes to dst with non-temporal stores where dst is 16-byte
 * aligned (plain copies for the unaligned head and the tail). */
static inline void fbn_stream(void *dst, const void *src, size_t n)
{
#if FBN_HAVE_NT
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (16 - ((size_t)(uintptr_t)d & 15)) & 15;
    if (head > n)
        head = n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

/* Makes this thread's non-temporal stores visible before it moves on. */
static inline void fbn_sfence(void)
{
#if FBN_HAVE_NT
    _mm_sfence();
#endif
}

/* Asks for n bytes at p to be brought towards the cache. */
static inline void fbn_prefetch(const void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    const char *q = (const char *)p, *end = q + n;
    for (; q < end; q += 64)
        __builtin_prefetch(q, 0, 2);
#else
    (void)p;
    (void)n;
#endif
}

/* Threads to use for `work` values: serial for small work or without
 * OpenMP, never more threads than there are work items. */
static int fbn_threads(int nthreads, ptrdiff_t work, ptrdiff_t items)
{
#ifdef _OPENMP
    if (nthreads < 2 || work < FBN_SERIAL_MAX || items < 2)
        return 1;
    if ((ptrdiff_t)nthreads > items)
        return (int)items;
    return nthreads;
#else
    (void)nthreads;
    (void)work;
    (void)items;
    return 1;
#endif
}

/* Chan et al.'s merge of the moments (nb, mb, m2b) into (*na, *ma, *m2a). */
static inline void fbn_merge(double *na, double *ma, double *m2a, double nb,
                             double mb, double m2b)
{
    double n = *na + nb;
    double d = mb - *ma;
    *ma += d * (nb / n);
    *m2a += m2b + d * d * (*na * (nb / n));
    *na = n;
}

/* Total of lane accumulators acc[0..FBN_LANES]: a fixed pairwise tree
 * over the lanes, then the leftover accumulator. */
static inline double fbn_lanes_total(const double *acc)
{
    double v[FBN_LANES];
    int w, k;
    memcpy(v, acc, sizeof v);
    for (w = FBN_LANES / 2; w >= 1; w /= 2)
        for (k = 0; k < w; k++)
            v[k] += v[k + w];
    return v[0] + acc[FBN_LANES];
}

/* Walk over the logical values [i0, i1) of one channel in channel-first
 * layout (value i is at (o, j) = (i / inner, i % inner)), one contiguous
 * segment at a time. */
typedef struct {
    ptrdiff_t o, j, left;
} fbn_seg;

static inline fbn_seg fbn_seg_start(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t inner)
{
    fbn_seg s;
    s.o = i0 / inner;
    s.j = i0 % inner;
    s.left = i1 - i0;
    return s;
}

/* Length of the next segment (0 at the end); *off is its offset. */
static inline ptrdiff_t fbn_seg_next(fbn_seg *s, ptrdiff_t C, ptrdiff_t inner,
                                     ptrdiff_t c, ptrdiff_t *off)
{
    ptrdiff_t len;
    if (s->left <= 0)
        return 0;
    len = inner - s->j;
    if (len > s->left)
        len = s->left;
    *off = (s->o * C + c) * inner + s->j;
    s->left -= len;
    s->j = 0;
    s->o++;
    return len;
}

static inline ptrdiff_t fbn_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

/* Rows per block in channel-last layout: depends on C only. */
static inline ptrdiff_t fbn_block_rows(ptrdiff_t C)
{
    ptrdiff_t r = FBN_BLOCK_VALUES / (C > 0 ? C : 1);
    return r < FBN_MIN_ROWS ? FBN_MIN_ROWS : r;
}

/* ---- the kernels, once per element type and instruction set ------------ */

/* Table of one element type's kernels (same signatures as fastbn.h). */
#define FBN_OPS_TYPE_(s) fbn_ops_##s
#define FBN_OPS_TYPE(s) FBN_OPS_TYPE_(s)
#define FBN_DEFINE_OPS(T, SFX)                                                 \
    typedef struct {                                                           \
        int (*moments)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, double *,   \
                       double *, int);                                         \
        int (*train_forward)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t,       \
                             const T *, const T *, const T *, double, int,     \
                             T *, T *, T *, double *, int);                    \
        int (*infer_forward)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t,       \
                             const T *, const T *, const T *, const T *,       \
                             const T *, double, int, T *, int);                \
        int (*apply)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t,               \
                     const double *, const double *, const T *, const T *,     \
                     const T *, int, T *, int);                                \
        int (*backward_reduce)(const T *, const T *, const T *, ptrdiff_t,     \
                               ptrdiff_t, ptrdiff_t, const T *, double *,      \
                               double *, int);                                 \
        int (*backward_apply)(const T *, const T *, const T *, ptrdiff_t,      \
                              ptrdiff_t, ptrdiff_t, const T *, const T *,      \
                              const T *, const double *, const double *,       \
                              double, int, T *, T *, int);                     \
        int (*backward)(const T *, const T *, const T *, ptrdiff_t, ptrdiff_t, \
                        ptrdiff_t, const T *, const T *, const T *, int, T *,  \
                        T *, T *, T *, int);                                   \
    } fbn_ops_##SFX;
FBN_DEFINE_OPS(float, f32)
FBN_DEFINE_OPS(double, f64)

/* The portable baseline (SSE2 on x86-64; whatever the target has
 * elsewhere). */
#define FBN_ISA base
#include "isa_instances.h"
#undef FBN_ISA

/* x86-64 with GCC or clang: the same source compiled for AVX2 and for
 * AVX-512, chosen once at run time by a CPU check.  The reductions use a
 * fixed number of explicit lanes and the build forbids FMA contraction, so
 * every instruction set computes bitwise the same results; it is only
 * faster. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(FBN_NO_DISPATCH)
#define FBN_HAVE_DISPATCH 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define FBN_ISA avx2
#include "isa_instances.h"
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")
#endif
#define FBN_ISA avx512
#include "isa_instances.h"
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
#define FBN_HAVE_DISPATCH 0
#endif

/* ---- instruction-set dispatch -------------------------------------------- */

enum { FBN_ISA_BASE = 0, FBN_ISA_AVX2 = 1, FBN_ISA_AVX512 = 2 };
static const char *const fbn_isa_names[] = {"baseline", "avx2", "avx512"};

static const fbn_ops_f32 *const fbn_table_f32[] = {
    &ops_f32_base,
#if FBN_HAVE_DISPATCH
    &ops_f32_avx2, &ops_f32_avx512,
#endif
};
static const fbn_ops_f64 *const fbn_table_f64[] = {
    &ops_f64_base,
#if FBN_HAVE_DISPATCH
    &ops_f64_avx2, &ops_f64_avx512,
#endif
};

/* Best instruction set this CPU (and OS) supports among those built. */
static int fbn_best_isa(void)
{
#if FBN_HAVE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return FBN_ISA_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return FBN_ISA_AVX2;
#endif
    return FBN_ISA_BASE;
}

static int fbn_isa = -1; /* -1: not chosen yet (the best one is used) */

static int fbn_active_isa(void)
{
    int isa = fbn_isa;
    return isa >= 0 ? isa : fbn_best_isa();
}

int fbn_set_simd(const char *name)
{
    int best = fbn_best_isa(), want = -1, i;
    if (name == NULL || strcmp(name, "auto") == 0 || name[0] == '\0') {
        fbn_isa = best;
        return FBN_OK;
    }
    for (i = 0; i < 3; i++)
        if (strcmp(name, fbn_isa_names[i]) == 0)
            want = i;
    if (want < 0 || want > best)
        return FBN_EINVAL;
    fbn_isa = want;
    return FBN_OK;
}

const char *fbn_simd(void) { return fbn_isa_names[fbn_active_isa()]; }

const char *fbn_simd_available(void)
{
    static const char *const avail[] = {"baseline", "baseline avx2",
                                        "baseline avx2 avx512"};
    return avail[fbn_best_isa()];
}

#define T float
#define SFX f32
#include "dispatch_impl.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "dispatch_impl.h"
#undef T
#undef SFX
