/*
 * isa_instances.h -- the kernels of every element type for the instruction
 * set named by FBN_ISA (included by kernels.c once per instruction set).
 * T is the element type, R the per-channel and computing type, FBN_HALF
 * the half format of T (0: none, T == R; 1: float16; 2: bfloat16).
 */
#ifndef FBN_BF16_ONLY /* (set for the avx512bf16 level: bfloat16 alone) */
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

#endif /* FBN_BF16_ONLY */

#define T fbn_half
#define R float
#define FBN_HALF 2
#define SFX bf16
#include "type_instance.h"

/* The tables of this instruction set, indexed by dtype (fastbn.h's enum
 * order); an instance of the bfloat16 kernels alone takes the others from
 * FBN_F32_ISA. */
#define FBN_ICAT_(a, b, c) a##_##b##_##c
#define FBN_ICAT(a, b, c) FBN_ICAT_(a, b, c)
#ifdef FBN_F32_ISA
#define FBN_OTHER_ISA FBN_F32_ISA
#else
#define FBN_OTHER_ISA FBN_ISA
#endif
const fbn_ops *const FBN_ICAT(fbn_isa, ops, FBN_ISA)[FBN_NDTYPES] = {
    &FBN_ICAT(ops, f32, FBN_OTHER_ISA), &FBN_ICAT(ops, f64, FBN_OTHER_ISA),
    &FBN_ICAT(ops, f16, FBN_OTHER_ISA), &FBN_ICAT(ops, bf16, FBN_ISA)};
#undef FBN_OTHER_ISA
#undef FBN_ICAT
#undef FBN_ICAT_
