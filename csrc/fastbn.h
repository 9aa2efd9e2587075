/*
 * fastbn.h -- the whole C interface of fastbn's batch-normalization kernels.
 *
 * Every array is a C-contiguous block of shape (outer, C, inner) with the
 * channel axis in the middle: element (o, c, i) is at x[(o*C + c)*inner + i].
 * Per-channel arrays have C elements.  Nothing here allocates memory the
 * caller has to free, touches Python, or raises: every function returns
 * FBN_OK (0) or a negative status that fbn_strerror() names.
 *
 * Memory: all pointers are owned by the caller and must not alias each other
 * unless a comment says so (the forward kernels accept y == x, in place).
 * Optional pointers may be NULL where documented.  Scratch memory is
 * malloc'ed and freed inside a call (FBN_ENOMEM when that fails).
 *
 * Threads: `nthreads` is the number of threads to use, the caller included
 * (<= 1: the caller alone).  Small problems run on the caller whatever
 * `nthreads` says.  Results are bitwise identical for every thread count:
 * statistics are taken in fixed chunks (per channel) or blocks (of rows)
 * whose partial results are combined in order.  Functions are re-entrant
 * and may be called from several threads at once on different outputs.
 *
 * Each kernel is written once (a template over the element type) and
 * compiled for every element type and instruction set; the element type
 * is the `dtype` argument (see "the kernels" below).  Statistics are
 * accumulated in double.
 */
#ifndef FASTBN_H
#define FASTBN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define FBN_OK 0
#define FBN_EINVAL (-1) /* a size is negative or an argument is inconsistent */
#define FBN_ENOMEM (-2) /* scratch allocation failed */

/* Human-readable name of a status code (static storage, never NULL). */
const char *fbn_strerror(int status);

/* 1 if the library was compiled with OpenMP, else 0. */
int fbn_have_openmp(void);

/* omp_get_max_threads() of the calling thread (1 without OpenMP). */
int fbn_omp_max_threads(void);

/* Version of the OpenMP specification the compiler implements (_OPENMP,
 * e.g. 201511), 0 without OpenMP. */
long fbn_openmp_version(void);

/* Compiler and instruction-set baseline the kernels were built for, e.g.
 * "gcc 12.2.0; SSE2" (static storage). */
const char *fbn_build_info(void);

/* Instruction-set dispatch.  The kernels are compiled for a portable
 * baseline and, on x86-64 with GCC or clang, also for AVX2 and AVX-512;
 * the best one the CPU supports is used (all give bitwise the same
 * results).  fbn_set_simd("auto" | "baseline" | "avx2" | "avx512" | "avx512bf16",
 * the last AVX-512 with bfloat16 conversions) chooses
 * one (FBN_EINVAL if it was not built or the CPU lacks it); call it before
 * any kernel runs, not concurrently with kernels.  fbn_simd() names the
 * active one; fbn_simd_available() lists those usable here, space-separated. */
int fbn_set_simd(const char *name);
const char *fbn_simd(void);
const char *fbn_simd_available(void);

/* Reads the sizes of the machine's caches, from which the kernels choose
 * how to split their work (fused tiles, statistics tiles, non-temporal
 * stores), and the best instruction set the CPU supports.  Call once
 * before the first kernel, not concurrently with
 * kernels; without it the kernels assume L2 = 1 MB.
 * fbn_cache_sizes() gives the L1d, L2 and L3 sizes in effect (0: unknown).
 * fbn_set_cache_sizes() forces them (each < 0: the detected size), for
 * tests and measurements of the plans other CPUs make (not thread-safe;
 * set while no kernel runs); no size changes a result's bits. */
void fbn_init(void);
void fbn_cache_sizes(long long *l1, long long *l2, long long *l3);
void fbn_set_cache_sizes(long long l1, long long l2, long long l3);

/* Strategy tuning, for measurements and tests (not thread-safe; set while
 * no kernel runs).  Each value < 0 means "from the caches" (the default):
 *   nt_bytes:   outputs of at least this many bytes are written with
 *               non-temporal stores (default 3/4 of L3; 0: always);
 *   fuse_bytes: channel-first statistics and the elementwise pass are
 *               fused per tile when a channel's arrays fit in this many
 *               bytes (default 3/4 of L2; 0: never fused);
 *   tile_bytes: bytes read by one statistics tile (default 1/4 of L2);
 *   serial_values: calls on fewer values run on the caller alone
 *               (default 32768);
 *   wake_bytes: calls that move fewer bytes (every array read or written,
 *               once) do not wake sleeping helpers, they use those that
 *               are awake (default 2 MB).
 * No setting changes a result's bits, only the speed.  fbn_get_tuning
 * gives the values in effect. */
void fbn_set_tuning(long long nt_bytes, long long fuse_bytes, long long tile_bytes,
                    long long serial_values, long long wake_bytes);
void fbn_get_tuning(long long *nt_bytes, long long *fuse_bytes, long long *tile_bytes,
                    long long *serial_values, long long *wake_bytes);

/* Scheduling of the kernels' work onto threads (see pool.h).
 * fbn_set_scheduler("pool" | "openmp"): the caller-runs pool (default) or
 * an OpenMP parallel loop, for comparison (FBN_EINVAL for another name or
 * "openmp" without OpenMP); set while no kernel runs.  fbn_scheduler()
 * names the active one ("serial" in a build without OpenMP).
 * fbn_set_spin_us(us): how long an idle helper of the pool spins before
 * it sleeps (returns the previous value).  fbn_pool_threads(): helper
 * threads started so far. */
int fbn_set_scheduler(const char *name);
const char *fbn_scheduler(void);
long fbn_set_spin_us(long us);
int fbn_pool_threads(void);

/* fbn_set_team(run, tid, max): the "pool" scheduler's jobs run on another
 * OpenMP runtime's thread team instead of fastbn's helpers (PyTorch's
 * threads, so that the two libraries do not fight for the cores).  `run`
 * has the ABI of libgomp's GOMP_parallel (fn(data) on every thread of a
 * team of at most nthreads, the caller included, returning when all are
 * done; flags 0), `tid` of omp_get_thread_num and `max` of
 * omp_get_max_threads of the same runtime (it caps the thread count).
 * All NULL: fastbn's own helpers again (the default).  Results are the
 * same bits either way.  Set while no kernel runs; FBN_EINVAL if only
 * some are NULL, or for a team in a build without OpenMP. */
typedef void (*fbn_team_run_fn)(void (*fn)(void *), void *data, unsigned nthreads,
                                unsigned flags);
typedef int (*fbn_team_int_fn)(void);
int fbn_set_team(fbn_team_run_fn run, fbn_team_int_fn tid, fbn_team_int_fn max);

/* The plan a kernel makes for a call (for tests and the benchmark report)
 * over `groups` ghost batches of (outer, C, inner) each (1: an ordinary
 * call): nstat = arrays its reductions read, nextra = arrays only its
 * elementwise pass reads, nout = arrays it writes, ops = 1 (reductions) |
 * 2 (elementwise pass); outer*inner >= 1, C >= 1.  fields[0..10] receive:
 * channel-last, threads, non-temporal stores, fused, channels per tile,
 * chunks per tile, tiles, chunks per channel, row blocks, elementwise
 * blocks, rows folded into one (channel-last rows of few channels). */
void fbn_describe_plan(ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C,
                       ptrdiff_t inner, int elsize, int nstat, int nextra, int nout,
                       int ops, int nthreads, long long *fields);

/* ---- the kernels --------------------------------------------------------
 *
 * Element types.  Every kernel takes its element type as its first
 * argument, `dtype`, and its arrays as untyped pointers:
 *   FBN_FLOAT32, FBN_FLOAT64: data (x, y, z, dy, dx, dz) and per-channel
 *     arrays (gamma, beta, mean, invstd, var, dgamma, dbeta) of that type;
 *   FBN_FLOAT16, FBN_BFLOAT16: data as 16-bit patterns (fbn_half) of IEEE
 *     binary16 or bfloat16, per-channel arrays float.  Loads convert exactly
 *     to float, every computation is the float kernel's (same operations in
 *     the same order, so the per-channel results are bitwise those of the
 *     float32 kernel on the converted values) and each output value is
 *     rounded once to the half type (to nearest, ties to even; NaN stays a
 *     quiet NaN with the sign and top payload bits).
 * Arrays documented as double are double for every dtype.  Statistics are
 * accumulated in double.  An unknown dtype gives FBN_EINVAL.
 *
 * Activations (`act`), applied after the residual add in the same pass:
 *   FBN_ACT_NONE, FBN_ACT_RELU (max(t, 0)), FBN_ACT_RELU6 (min(max(t, 0),
 *   6)); NaN stays NaN.  The backward's dy' is dy where the forward's
 *   output y passes the activation's mask (relu: y > 0; relu6:
 *   0 < y < 6), else 0; it needs y for any act but FBN_ACT_NONE (y is
 *   ignored for FBN_ACT_NONE), except fbn_backward, which can recompute
 *   the mask from x (see there). */
typedef uint16_t fbn_half;
enum { FBN_FLOAT32 = 0, FBN_FLOAT64 = 1, FBN_FLOAT16 = 2, FBN_BFLOAT16 = 3 };
#define FBN_NDTYPES 4
enum { FBN_ACT_NONE = 0, FBN_ACT_RELU = 1, FBN_ACT_RELU6 = 2 };

/* Batch renormalization's running statistics (see fbn_train_forward). */
typedef struct {
    const double *mean;  /* C running means */
    const double *sigma; /* C values sqrt(running_var + eps) */
    double rmax;         /* >= 1; INFINITY: r not clipped */
    double dmax;         /* >= 0; INFINITY: d not clipped */
} fbn_renorm;

/* Per-channel mean and M2 (sum of squared deviations) in double; the
 * count is outer*inner.  mean, m2: C doubles each (written).  outer*inner
 * may be 0 (mean = 0, m2 = 0). */
int fbn_moments(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                ptrdiff_t inner, double *mean, double *m2, int nthreads);

/* Training forward: batch statistics then
 *   y = act((x - mean) * invstd * gamma + beta + z)
 * fused per channel while the channel's values are in cache.
 * gamma, beta, z: may be NULL (1, 0, no residual); z has x's shape.  y may
 * equal x (in place); z may equal y only if it equals x too.
 *
 * Ghost batches: the (outer, C, inner) block is `groups` blocks of
 * (outer/groups, C, inner) one after the other (the batch axis split into
 * groups of consecutive samples), each normalised with its own statistics
 * exactly as a call on that block alone would (bit for bit); the items of
 * all groups run in one parallel job.  groups = 1 is ordinary batch norm.
 * outer % groups must be 0 and outer/groups*inner >= 1 (FBN_EINVAL
 * otherwise).  mean_out, invstd_out: groups*C values (written, group-major);
 * var_out: groups*C doubles, the biased batch variance (written; may be
 * NULL).  mean_lo_out: groups*C values (written; may be NULL), the part of
 * the double batch mean below the per-channel type's precision,
 * (R)(mean - (double)mean_out) with R that type (0 for FBN_FLOAT64): the
 * normalisation subtracts mean_out, then mean_lo_out.  fbn_backward takes
 * it to rebuild the forward's activation mask from x without taking the
 * batch mean again.
 *
 * Batch renormalization (Ioffe 2017), when rn is not NULL: with the batch
 * statistics mu_B, sigma_B = sqrt(var_B + eps) of a group and the running
 * ones mu, sigma = sqrt(running_var + eps):
 *   r = clip(sigma_B / sigma, 1/rmax, rmax),
 *   d = clip((mu_B - mu) / sigma, -dmax, dmax),
 *   y = act(gamma * ((x - mu_B) / sigma_B * r + d) + beta + z),
 * computed as the ordinary pass with per-channel constants
 * a = gamma*r/sigma_B, b = beta + gamma*d (no extra pass).  r_out, d_out:
 * groups*C doubles (needed with rn, else may be NULL). */
int fbn_train_forward(int dtype, const void *x, ptrdiff_t groups, ptrdiff_t outer,
                      ptrdiff_t C, ptrdiff_t inner, const void *gamma,
                      const void *beta, const void *z, double eps, int act,
                      const fbn_renorm *rn, void *y, void *mean_out,
                      void *mean_lo_out, void *invstd_out, double *var_out,
                      double *r_out, double *d_out, int nthreads);

/* Inference forward with given statistics, one pass:
 *   y = act((x - mean) / sqrt(var + eps) * gamma + beta + z).
 * mean, var: C per-channel values.  Other arguments as for the training
 * forward. */
int fbn_infer_forward(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                      ptrdiff_t inner, const void *mean, const void *var,
                      const void *gamma, const void *beta, const void *z,
                      double eps, int act, void *y, int nthreads);

/* The normalisation alone, with double statistics (used after statistics
 * were combined across processes):
 *   y = act((x - mean) * invstd * gamma + beta + z).
 * mean, invstd: C doubles. */
int fbn_apply(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
              ptrdiff_t inner, const double *mean, const double *invstd,
              const void *gamma, const void *beta, const void *z, int act,
              void *y, int nthreads);

/* Backward reductions, one pass over dy and x:
 *   sum_dy[c] = sum(dy')          sum_dyxmu[c] = sum(dy' * (x - mean))
 * with dy' as the activation act of the forward (output y) gives it.
 * mean: C per-channel values.  sum_dy, sum_dyxmu: C doubles. */
int fbn_backward_reduce(int dtype, const void *dy, const void *x, const void *y,
                        int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                        const void *mean, double *sum_dy, double *sum_dyxmu,
                        int nthreads);

/* Backward elementwise pass given the reductions (sums over `count`
 * values per channel, possibly across processes).  training = 1:
 *   dx = g*invstd * (dy' - sum_dy/count
 *                    - (x - mean) * invstd^2 * sum_dyxmu/count)
 * training = 0 (frozen statistics): dx = dy' * g * invstd.
 * g = gamma or 1 (gamma may be NULL).  dz (may be NULL) receives dy', the
 * gradient of a residual added before the activation.  dx may equal dy. */
int fbn_backward_apply(int dtype, const void *dy, const void *x, const void *y,
                       int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                       const void *mean, const void *invstd, const void *gamma,
                       const double *sum_dy, const double *sum_dyxmu, double count,
                       int training, void *dx, void *dz, int nthreads);

/* Whole backward: reductions and dx fused per channel while the channel's
 * values are in cache, over `groups` ghost batches as the training forward
 * made them (groups = 1: ordinary batch norm).  mean, invstd: groups*C
 * values (what the forward returned); gamma: C values (may be NULL).
 *
 * The mask from x: with act != FBN_ACT_NONE and y NULL (a forward without
 * a residual), dy' takes the mask of the forward's output recomputed from
 * x, bitwise the mask of the y it returned: training = 1, the training
 * forward's (fbn_train_forward with these groups, gamma, beta, eps, act and
 * rn, which returned mean, invstd, r and d; for float and the half types
 * the mask needs its mean's low part too: mean_lo, the mean_lo_out it
 * returned, groups*C values, or NULL, and then the batch means of x are
 * taken again, one more pass over x); training = 0, the inference
 * forward's (fbn_infer_forward with mean, var, eps, gamma, beta, act,
 * where invstd holds 1/sqrt(var + eps) computed in double and rounded to
 * the per-channel type; mean_lo is ignored).  beta: C values, the
 * forward's (NULL: 0).  beta and mean_lo are ignored with y or without
 * act.  With a residual the mask needs y (dz given, act and no y:
 * FBN_EINVAL).  The plans then count two arrays read (dy, x) instead of
 * three.
 *
 * r, d:
 * groups*C doubles from a renormalised forward (both NULL otherwise; the
 * backward holds them constant: dx is the ordinary backward with gamma*r
 * as the scale).  dgamma = sum(dy' * (r*xhat + d)), dbeta = sum(dy'): C
 * values (written), summed over the groups in double, in group order.
 * Other arguments as above; count is outer/groups*inner. */
int fbn_backward(int dtype, const void *dy, const void *x, const void *y, int act,
                 ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                 const void *mean, const void *invstd, const void *gamma,
                 const void *beta, const void *mean_lo, const double *r,
                 const double *d, int training, void *dx, void *dz, void *dgamma,
                 void *dbeta, int nthreads);

/* Per-column statistics of a 2-D matrix and its standardisation
 * (fastbn.sklearn.StandardScaler's dense paths; dtype FBN_FLOAT32 or
 * FBN_FLOAT64, FBN_EINVAL for the half types).  The matrix has n rows and
 * p columns; element (r, c) is at x[r*p + c] when colmajor is 0 (C order),
 * at x[c*n + r] when it is 1 (Fortran order).
 *
 * fbn_colstats: per column, the values that are not NaN, weighted by
 * w[r] (n doubles; NULL: weight 1), give
 *   count[c] = sum of their weights (their number without w),
 *   mean[c]  = weighted mean (NaN when count[c] is 0),
 *   m2[c]    = sum of w * (x - mean)^2,
 * each p doubles (written).  Two passes per cache-resident block in
 * double, blocks merged with Chan's formula in order: bitwise the same
 * for every thread count and instruction set.  n may be 0.
 *
 * fbn_standardize: y = (x - mean) / scale per column (inverse = 1:
 * y = x * scale + mean), computed in the element type with mean and scale
 * first rounded to it (the arithmetic of NumPy's
 * `x -= mean.astype(T); x /= scale...`).  mean NULL: no centring; scale
 * NULL: no scaling.  NaN stays NaN.  y has x's layout and may equal x (in
 * place), nothing else may overlap; y NULL: nothing is written, x is only
 * searched for infinities.  *has_inf (may be NULL) receives 1 if x holds
 * +-inf, else 0. */
int fbn_colstats(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                 const double *w, double *count, double *mean, double *m2,
                 int nthreads);
int fbn_standardize(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p,
                    int colmajor, const double *mean, const double *scale,
                    int inverse, void *y, int *has_inf, int nthreads);

#ifdef __cplusplus
}
#endif

#endif /* FASTBN_H */
