/*
 * isa_instances.h -- the kernels of every element type for the instruction
 * set FBN_ISA (included by kernels.c once per row of FBN_ISA_LIST, ops.h,
 * with FBN_ISA defined; undefines it).  The row gives the target the
 * kernels are compiled for and what the templates read:
 *   FBN_F16C     the vector width in bits (0, 256, 512): the half types'
 *                conversions and loops in registers (F16C comes with AVX2);
 *   FBN_WIDE_NT  the bytes of one non-temporal store (0: none wider than
 *                the baseline's);
 *   FBN_BF16_NARROW, FBN_BF16_ONLY  bfloat16 narrowed with VCVTNEPS2BF16,
 *                the only kernels of the row (FBN_F32_ISA: the others').
 * T is the element type, R the per-channel and computing type, FBN_HALF
 * the half format of T (0: none, T == R; 1: float16; 2: bfloat16).
 */
#define FBN_ICAT_(a, b, c) a##_##b##_##c
#define FBN_ICAT(a, b, c) FBN_ICAT_(a, b, c)
#define FBN_ROW_(a, b) a##b
#define FBN_ROW(a, b) FBN_ROW_(a, b)
/* field f of FBN_ISA's row */
#define FBN_ISA_FIELD(f) FBN_ROW(FBN_ISA_ROW_, FBN_ISA)(f)
#define FBN_FIELD_BITS(isa, name, cpu, bits, target, bf16, others) bits
#define FBN_FIELD_TARGET(isa, name, cpu, bits, target, bf16, others) target
#define FBN_FIELD_BF16(isa, name, cpu, bits, target, bf16, others) bf16
#define FBN_FIELD_OTHERS(isa, name, cpu, bits, target, bf16, others) others

#define FBN_F16C FBN_ISA_FIELD(FBN_FIELD_BITS)
#define FBN_WIDE_NT (FBN_F16C / 8)
#define FBN_BF16_NARROW FBN_ISA_FIELD(FBN_FIELD_BF16)
#define FBN_BF16_ONLY FBN_BF16_NARROW
#define FBN_F32_ISA FBN_ISA_FIELD(FBN_FIELD_OTHERS)

/* The row's target, from here to the end of the file (GCC: also 512-bit
 * vectors preferred at AVX-512). */
#define FBN_PRAGMA_(x) _Pragma(#x)
#define FBN_PRAGMA(x) FBN_PRAGMA_(x)
#if FBN_F16C
#if defined(__clang__)
FBN_PRAGMA(clang attribute push(__attribute__((target(FBN_ISA_FIELD(FBN_FIELD_TARGET)))),
                                apply_to = function))
#else
FBN_PRAGMA(GCC push_options)
#if FBN_F16C == 512
FBN_PRAGMA(GCC target(FBN_ISA_FIELD(FBN_FIELD_TARGET), "prefer-vector-width=512"))
#else
FBN_PRAGMA(GCC target(FBN_ISA_FIELD(FBN_FIELD_TARGET)))
#endif
#endif
#endif

#if !FBN_BF16_ONLY
#define T float
#define R float
#define FBN_HALF 0
#define SFX f32
#include "type_instance.h"

#define T double
#define R double
#define FBN_HALF 0
#define SFX f64
#include "type_instance.h"

#define T fbn_half
#define R float
#define FBN_HALF 1
#define SFX f16
#include "type_instance.h"
#endif

#define T fbn_half
#define R float
#define FBN_HALF 2
#define SFX bf16
#include "type_instance.h"

/* The tables of this instruction set, indexed by dtype (fastbn.h's enum
 * order). */
const fbn_ops *const FBN_ICAT(fbn_isa, ops, FBN_ISA)[FBN_NDTYPES] = {
    &FBN_ICAT(ops, f32, FBN_F32_ISA), &FBN_ICAT(ops, f64, FBN_F32_ISA),
    &FBN_ICAT(ops, f16, FBN_F32_ISA), &FBN_ICAT(ops, bf16, FBN_ISA)};

#if FBN_F16C
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#undef FBN_PRAGMA
#undef FBN_PRAGMA_
#undef FBN_F32_ISA
#undef FBN_BF16_ONLY
#undef FBN_BF16_NARROW
#undef FBN_WIDE_NT
#undef FBN_F16C
#undef FBN_FIELD_OTHERS
#undef FBN_FIELD_BF16
#undef FBN_FIELD_TARGET
#undef FBN_FIELD_BITS
#undef FBN_ISA_FIELD
#undef FBN_ROW
#undef FBN_ROW_
#undef FBN_ICAT
#undef FBN_ICAT_
#undef FBN_ISA
