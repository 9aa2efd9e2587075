/*
 * colstats.h -- what the per-column kernels (colstats_impl.h) share across
 * element types and instruction sets: their constants, threads, the job
 * they run and the merge of its parts (internal; included once, before the
 * kernels are instantiated).
 *
 * Per-column statistics of a 2-D matrix that skip NaN values (optionally
 * with row weights), and per-column standardisation y = (x - mean) /
 * scale: the kernels behind fastbn.sklearn.StandardScaler (see fastbn.h
 * for the interface).  The arithmetic is the same everywhere (explicit
 * lanes, no FMA contraction: the build uses -ffp-contract=off), so every
 * instruction set and every thread count gives bitwise the same results.
 * Work is split in fixed blocks that depend on the shape only, run through
 * fbn_parallel_for (pool.h), and per-block results are combined in block
 * order.
 */
/* Values per row block (row-major statistics), at least CS_MIN_ROWS rows:
 * a block (64 KB of float) is read twice, the second time from cache. */
#define CS_BLOCK_VALUES 16384
#define CS_MIN_ROWS 64
/* Rows per chunk of a column (column-major statistics). */
#define CS_CHUNK 4096
/* Independent accumulators: one per column of a strip (row-major), one
 * per lane of a run (column-major). */
#define CS_LANES FBN_LANES
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

/* Rows per statistics block: depends on p only (part of the numerics). */
static inline ptrdiff_t cs_block_rows(ptrdiff_t p)
{
    ptrdiff_t r = CS_BLOCK_VALUES / (p > 0 ? p : 1);
    return r < CS_MIN_ROWS ? CS_MIN_ROWS : r;
}

/* FBN_LIGHT for calls under the wake threshold (fbn_set_tuning's
 * wake_values): they do not wake sleeping helpers. */
static int cs_light(ptrdiff_t work)
{
    return (long long)work < fbn_wake_min ? FBN_LIGHT : 0;
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

/* Chan et al.'s merge (fbn_merge) of (nb, mb, qb) into (*na, *ma, *qa);
 * parts of weight 0 hold no values. */
static inline void cs_merge(double *na, double *ma, double *qa, double nb, double mb,
                            double qb)
{
    if (nb == 0.0)
        return;
    if (*na == 0.0) {
        *na = nb;
        *ma = mb;
        *qa = qb;
        return;
    }
    fbn_merge(na, ma, qa, nb, mb, qb);
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
