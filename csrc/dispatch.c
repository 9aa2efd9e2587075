/*
 * dispatch.c -- the public kernels of fastbn.h: the instruction set in use
 * (the best the CPU supports, or the one fbn_set_simd chose) and, for each
 * call, the ops table of its dtype for that set (kernels.c).
 */
#include <string.h>

#include "internal.h"
#include "ops.h"

/* The rows of FBN_ISA_LIST (ops.h), indexed in its order: names, the CPU
 * features each needs, and fbn_table[isa][dtype], the kernels of every
 * element type per set. */
#define FBN_ISA_NAME(isa, name, cpu, bits, target, bf16, others) name,
#define FBN_ISA_CPU(isa, name, cpu, bits, target, bf16, others) (cpu),
#define FBN_ISA_TABLE(isa, name, cpu, bits, target, bf16, others) fbn_isa_ops_##isa,
#define FBN_ISA_SPACED(isa, name, cpu, bits, target, bf16, others) name " "
static const char *const fbn_isa_names[] = {FBN_ISA_LIST(FBN_ISA_NAME)};
static const int fbn_isa_cpu[] = {FBN_ISA_LIST(FBN_ISA_CPU)};
static const fbn_ops *const *const fbn_table[] = {FBN_ISA_LIST(FBN_ISA_TABLE)};
#define FBN_NISA ((int)(sizeof fbn_isa_names / sizeof fbn_isa_names[0]))

/* The best instruction set (a row; -1: not read yet; fbn_init reads it), and
 * the names of those up to it, space-separated (fbn_simd_available). */
static int fbn_best = -1;
static char fbn_avail[sizeof(FBN_ISA_LIST(FBN_ISA_SPACED))];

/* Best instruction set this CPU (and OS) supports among those built: the
 * last row whose features it has (each row needs those of the rows before
 * it).  Read once (CPUID is slow, and traps to the hypervisor in a VM): by
 * fbn_init, which the library's users call before any kernel. */
static int fbn_detect_isa(void)
{
    int f = FBN_NISA > 1 ? fbn_cpu_features() : 0, best = 0, i;
    for (i = 1; i < FBN_NISA; i++)
        if ((f & fbn_isa_cpu[i]) == fbn_isa_cpu[i])
            best = i;
    return best;
}

void fbn_isa_init(void)
{
    size_t n = 0, len;
    int i;
    fbn_best = fbn_detect_isa();
    for (i = 0; i <= fbn_best; i++) {
        len = strlen(fbn_isa_names[i]);
        if (i > 0)
            fbn_avail[n++] = ' ';
        memcpy(fbn_avail + n, fbn_isa_names[i], len);
        n += len;
    }
    fbn_avail[n] = '\0';
}

static int fbn_best_isa(void)
{
    int best = fbn_best;
    return best >= 0 ? best : fbn_detect_isa();
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
    for (i = 0; i < FBN_NISA; i++)
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
    if (fbn_best < 0) /* (before fbn_init: not thread-safe, as fbn_init) */
        fbn_isa_init();
    return fbn_avail;
}

/* ---- the public kernels: the table of the dtype, then its kernel -------- */

const fbn_ops *fbn_ops_for(int dtype) { return fbn_table[fbn_active_isa()][dtype]; }

/* The table of dtype, NULL for an unknown one. */
static const fbn_ops *fbn_ops_of(int dtype)
{
    return dtype >= 0 && dtype < FBN_NDTYPES ? fbn_ops_for(dtype) : NULL;
}

static int fbn_act_ok(int act) { return act >= FBN_ACT_NONE && act <= FBN_ACT_RELU6; }

/* The backward's y: NULL without an activation, needed with one (but by
 * fbn_backward, which takes the mask from x without it). */
static int fbn_mask_ok(int act, const void **y)
{
    if (act == FBN_ACT_NONE)
        *y = NULL;
    return fbn_act_ok(act) && (act == FBN_ACT_NONE || *y != NULL);
}

int fbn_moments(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                ptrdiff_t inner, double *mean, double *m2, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL)
        return FBN_EINVAL;
    return o->moments(x, outer, C, inner, mean, m2, nthreads);
}

int fbn_train_forward(int dtype, const void *x, ptrdiff_t groups, ptrdiff_t outer,
                      ptrdiff_t C, ptrdiff_t inner, const void *gamma,
                      const void *beta, const void *z, double eps, int act,
                      const fbn_renorm *rn, void *y, void *mean_out,
                      void *mean_lo_out, void *invstd_out, double *var_out,
                      double *r_out, double *d_out, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->train_forward(x, groups, outer, C, inner, gamma, beta, z, eps, act, rn,
                            y, mean_out, mean_lo_out, invstd_out, var_out, r_out, d_out,
                            nthreads);
}

int fbn_infer_forward(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                      ptrdiff_t inner, const void *mean, const void *var,
                      const void *gamma, const void *beta, const void *z,
                      double eps, int act, void *y, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->infer_forward(x, outer, C, inner, mean, var, gamma, beta, z, eps, act,
                            y, nthreads);
}

int fbn_apply(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
              ptrdiff_t inner, const double *mean, const double *invstd,
              const void *gamma, const void *beta, const void *z, int act,
              void *y, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->apply(x, outer, C, inner, mean, invstd, gamma, beta, z, act, y,
                    nthreads);
}

int fbn_backward_reduce(int dtype, const void *dy, const void *x, const void *y,
                        int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                        const void *mean, double *sum_dy, double *sum_dyxmu,
                        int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_mask_ok(act, &y))
        return FBN_EINVAL;
    return o->backward_reduce(dy, x, y, act, outer, C, inner, mean, sum_dy,
                              sum_dyxmu, nthreads);
}

int fbn_backward_apply(int dtype, const void *dy, const void *x, const void *y,
                       int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                       const void *mean, const void *invstd, const void *gamma,
                       const double *sum_dy, const double *sum_dyxmu, double count,
                       int training, void *dx, void *dz, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_mask_ok(act, &y))
        return FBN_EINVAL;
    return o->backward_apply(dy, x, y, act, outer, C, inner, mean, invstd, gamma,
                             sum_dy, sum_dyxmu, count, training, dx, dz, nthreads);
}

int fbn_backward(int dtype, const void *dy, const void *x, const void *y, int act,
                 ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                 const void *mean, const void *invstd, const void *gamma,
                 const void *beta, const void *mean_lo, const double *r,
                 const double *d, int training, void *dx, void *dz, void *dgamma,
                 void *dbeta, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act) || (act != FBN_ACT_NONE && y == NULL && dz != NULL))
        return FBN_EINVAL; /* (a residual's mask needs y) */
    if (act == FBN_ACT_NONE)
        y = NULL;
    return o->backward(dy, x, y, act, groups, outer, C, inner, mean, invstd, gamma, beta,
                       mean_lo, r, d, training, dx, dz, dgamma, dbeta, nthreads);
}

int fbn_colstats(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                 const double *w, double *count, double *mean, double *m2,
                 int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || o->colstats == NULL)
        return FBN_EINVAL;
    return o->colstats(x, n, p, colmajor, w, count, mean, m2, nthreads);
}

int fbn_standardize(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p,
                    int colmajor, const double *mean, const double *scale,
                    int inverse, void *y, int *has_inf, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (has_inf)
        *has_inf = 0;
    if (o == NULL || o->standardize == NULL)
        return FBN_EINVAL;
    return o->standardize(x, n, p, colmajor, mean, scale, inverse, y, has_inf,
                          nthreads);
}
