/*
 * dispatch_impl.h -- the public entry points of fastbn.h for one element
 * type (T, R, SFX), each forwarding to the kernels of the chosen instruction
 * set.  Included by fastbn.c once per element type.
 */
#define FBN_PUB_(f, s) f##_##s
#define FBN_PUB(f, s) FBN_PUB_(f, s)
#define FBN_TABLE_(s) fbn_table_##s
#define FBN_TABLE(s) FBN_TABLE_(s)
#define OPS (FBN_TABLE(SFX)[fbn_active_isa()])

int FBN_PUB(fbn_moments, SFX)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                              ptrdiff_t inner, double *mean, double *m2,
                              int nthreads)
{
    return OPS->moments(x, outer, C, inner, mean, m2, nthreads);
}

int FBN_PUB(fbn_train_forward, SFX)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                                    ptrdiff_t inner, const R *gamma,
                                    const R *beta, const T *z, double eps,
                                    int relu, T *y, R *mean_out, R *invstd_out,
                                    double *var_out, int nthreads)
{
    return OPS->train_forward(x, outer, C, inner, gamma, beta, z, eps, relu, y,
                              mean_out, invstd_out, var_out, nthreads);
}

int FBN_PUB(fbn_infer_forward, SFX)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                                    ptrdiff_t inner, const R *mean,
                                    const R *var, const R *gamma, const R *beta,
                                    const T *z, double eps, int relu, T *y,
                                    int nthreads)
{
    return OPS->infer_forward(x, outer, C, inner, mean, var, gamma, beta, z, eps,
                              relu, y, nthreads);
}

int FBN_PUB(fbn_apply, SFX)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                            ptrdiff_t inner, const double *mean,
                            const double *invstd, const R *gamma, const R *beta,
                            const T *z, int relu, T *y, int nthreads)
{
    return OPS->apply(x, outer, C, inner, mean, invstd, gamma, beta, z, relu, y,
                      nthreads);
}

int FBN_PUB(fbn_backward_reduce, SFX)(const T *dy, const T *x, const T *y,
                                      ptrdiff_t outer, ptrdiff_t C,
                                      ptrdiff_t inner, const R *mean,
                                      double *sum_dy, double *sum_dyxmu,
                                      int nthreads)
{
    return OPS->backward_reduce(dy, x, y, outer, C, inner, mean, sum_dy,
                                sum_dyxmu, nthreads);
}

int FBN_PUB(fbn_backward_apply, SFX)(const T *dy, const T *x, const T *y,
                                     ptrdiff_t outer, ptrdiff_t C,
                                     ptrdiff_t inner, const R *mean,
                                     const R *invstd, const R *gamma,
                                     const double *sum_dy,
                                     const double *sum_dyxmu, double count,
                                     int training, T *dx, T *dz, int nthreads)
{
    return OPS->backward_apply(dy, x, y, outer, C, inner, mean, invstd, gamma,
                               sum_dy, sum_dyxmu, count, training, dx, dz,
                               nthreads);
}

int FBN_PUB(fbn_backward, SFX)(const T *dy, const T *x, const T *y,
                               ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                               const R *mean, const R *invstd, const R *gamma,
                               int training, T *dx, T *dz, R *dgamma, R *dbeta,
                               int nthreads)
{
    return OPS->backward(dy, x, y, outer, C, inner, mean, invstd, gamma,
                         training, dx, dz, dgamma, dbeta, nthreads);
}

#undef OPS
#undef FBN_TABLE
#undef FBN_TABLE_
#undef FBN_PUB
#undef FBN_PUB_
