/*
 * isa_instances.h -- the kernels of every element type for the instruction
 * set named by FBN_ISA (included by fastbn.c once per instruction set).
 * T is the element type, R the per-channel and computing type, FBN_HALF
 * the half format of T (0: none, T == R; 1: float16; 2: bfloat16).
 */
#ifndef FBN_BF16_ONLY /* (set for the avx512bf16 level: bfloat16 alone) */
#define T float
#define R float
#define FBN_HALF 0
#define SFX f32
#include "kernels_impl.h"
#undef T
#undef R
#undef FBN_HALF
#undef SFX

#define T double
#define R double
#define FBN_HALF 0
#define SFX f64
#include "kernels_impl.h"
#undef T
#undef R
#undef FBN_HALF
#undef SFX

#define T fbn_half
#define R float
#define FBN_HALF 1
#define SFX f16
#include "kernels_impl.h"
#undef T
#undef R
#undef FBN_HALF
#undef SFX

#endif /* FBN_BF16_ONLY */

#define T fbn_half
#define R float
#define FBN_HALF 2
#define SFX bf16
#include "kernels_impl.h"
#undef T
#undef R
#undef FBN_HALF
#undef SFX
