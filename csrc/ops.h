/*
 * ops.h -- the table of one element type's kernels for one instruction set
 * (internal; fastbn.h is the public interface).
 *
 * Each template instance (isa_instances.h: kernels_impl.h, colstats_impl.h
 * for one element type and instruction set) fills one fbn_ops; the public
 * entry points (dispatch.c) pick the table of the call's dtype and the
 * active instruction set and call through it.  The signatures are those of
 * fastbn.h without the dtype.  Kernels an element type lacks are NULL (the
 * per-column kernels of the half types).
 */
#ifndef FASTBN_OPS_H
#define FASTBN_OPS_H

#include "fastbn.h"

typedef struct {
    int (*moments)(const void *x, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                   double *mean, double *m2, int nthreads);
    int (*train_forward)(const void *x, ptrdiff_t groups, ptrdiff_t outer,
                         ptrdiff_t C, ptrdiff_t inner, const void *gamma,
                         const void *beta, const void *z, double eps, int act,
                         const fbn_renorm *rn, void *y, void *mean_out,
                         void *mean_lo_out, void *invstd_out, double *var_out,
                         double *r_out, double *d_out, int nthreads);
    int (*infer_forward)(const void *x, ptrdiff_t outer, ptrdiff_t C,
                         ptrdiff_t inner, const void *mean, const void *var,
                         const void *gamma, const void *beta, const void *z,
                         double eps, int act, void *y, int nthreads);
    int (*apply)(const void *x, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                 const double *mean, const double *invstd, const void *gamma,
                 const void *beta, const void *z, int act, void *y, int nthreads);
    int (*backward_reduce)(const void *dy, const void *x, const void *y, int act,
                           ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                           const void *mean, double *sum_dy, double *sum_dyxmu,
                           int nthreads);
    int (*backward_apply)(const void *dy, const void *x, const void *y, int act,
                          ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                          const void *mean, const void *invstd, const void *gamma,
                          const double *sum_dy, const double *sum_dyxmu,
                          double count, int training, void *dx, void *dz,
                          int nthreads);
    int (*backward)(const void *dy, const void *x, const void *y, int act,
                    ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                    const void *mean, const void *invstd, const void *gamma,
                    const void *beta, const void *mean_lo, const double *r,
                    const double *d, int training, void *dx, void *dz, void *dgamma,
                    void *dbeta, int nthreads);
    int (*colstats)(const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                    const double *w, double *count, double *mean, double *m2,
                    int nthreads);
    int (*standardize)(const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                       const double *mean, const double *scale, int inverse,
                       void *y, int *has_inf, int nthreads);
} fbn_ops;

/* ---- the instruction sets: the one list ---------------------------------
 * One row per instruction set, FBN_ISA_ROW_<isa>(X) = X(isa, name, cpu,
 * bits, target, bf16, others):
 *   isa     the suffix of its kernels' names (f_<type>_<isa>);
 *   name    its name for fbn_set_simd and fbn_simd;
 *   cpu     the FBN_CPU_* features (portable.h) it needs;
 *   bits    its vector width: 0 for the portable baseline (compiled with the
 *           build's flags, no target), else 256 (AVX2) or 512 (AVX-512);
 *   target  the target features its kernels are compiled for;
 *   bf16    1 if only its bfloat16 kernels are its own (they narrow with
 *           VCVTNEPS2BF16), the other types' being those of `others`;
 *   others  the set whose float32/float64/float16 kernels it uses (itself
 *           but for a bf16 row).
 * FBN_ISA_LIST(X) gives the rows built, in order of preference: x86-64
 * with GCC or clang, the baseline, AVX2 (with F16C), AVX-512 and AVX-512
 * with BF16 conversions; elsewhere (and with FBN_NO_DISPATCH, the build
 * MSVC makes) the baseline alone.  kernels.c instantiates each row once
 * (isa_instances.h), dispatch.c picks one at run time.  The same source is
 * compiled for every row: the reductions use a fixed number of explicit
 * lanes and the build forbids FMA contraction, so every row computes
 * bitwise the same results; it is only faster. */
#define FBN_ISA_ROW_base(X) X(base, "baseline", 0, 0, "", 0, base)
#define FBN_ISA_ROW_avx2(X) X(avx2, "avx2", FBN_CPU_AVX2, 256, "avx2,f16c", 0, avx2)
#define FBN_ISA_ROW_avx512(X)                                                  \
    X(avx512, "avx512", FBN_CPU_AVX2 | FBN_CPU_AVX512, 512,                    \
      "avx512f,avx512vl,avx512bw,avx512dq,f16c", 0, avx512)
#define FBN_ISA_ROW_avx512bf16(X)                                              \
    X(avx512bf16, "avx512bf16", FBN_CPU_AVX2 | FBN_CPU_AVX512 | FBN_CPU_AVX512BF16, \
      512, "avx512f,avx512vl,avx512bw,avx512dq,f16c,avx512bf16", 1, avx512)

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(FBN_NO_DISPATCH)
#define FBN_HAVE_DISPATCH 1
#define FBN_ISA_LIST(X)                                                        \
    FBN_ISA_ROW_base(X) FBN_ISA_ROW_avx2(X) FBN_ISA_ROW_avx512(X) FBN_ISA_ROW_avx512bf16(X)
#else
#define FBN_HAVE_DISPATCH 0
#define FBN_ISA_LIST(X) FBN_ISA_ROW_base(X)
#endif

/* fbn_isa_ops_<isa>[dtype]: the tables of one instruction set
 * (isa_instances.h). */
#define FBN_ISA_DECLARE(isa, name, cpu, bits, target, bf16, others)            \
    extern const fbn_ops *const fbn_isa_ops_##isa[FBN_NDTYPES];
FBN_ISA_LIST(FBN_ISA_DECLARE)
#undef FBN_ISA_DECLARE

/* The table of element type `dtype` (0 <= dtype < FBN_NDTYPES) for the
 * active instruction set (dispatch.c). */
const fbn_ops *fbn_ops_for(int dtype);

#endif /* FASTBN_OPS_H */
