/*
 * kernels.c -- the kernels, instantiated: the templates (kernels_impl.h and
 * what it includes: backward_impl.h, ghost_impl.h, half_impl.h,
 * colstats_impl.h) compiled once for every element type (float, double,
 * and the half types float16 and bfloat16, stored as 16-bit patterns and
 * computed in float: half_convert.h) and every instruction set, each
 * instance filling one ops table (isa_instances.h, ops.h) that dispatch.c
 * chooses from.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "ops.h"
#include "plan.h"
#include "pool.h"
#include "stream.h"

#include "half_convert.h"
#include "colstats.h"

/* The portable baseline (SSE2 on x86-64; whatever the target has
 * elsewhere). */
#define FBN_ISA base
#define FBN_WIDE_NT 0
#define FBN_F16C 0
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA

/* x86-64 with GCC or clang: the same source compiled for AVX2 and for
 * AVX-512, chosen once at run time by a CPU check.  The reductions use a
 * fixed number of explicit lanes and the build forbids FMA contraction, so
 * every instruction set computes bitwise the same results; it is only
 * faster. */
#if FBN_HAVE_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif
/* F16C (every AVX2 CPU has it): float16 conversions in one instruction
 * (VCVTPH2PS, VCVTPS2PH), bitwise those of half_convert.h (checked for
 * every float16 and every float by tools/check_half_convert.c) */
#define FBN_ISA avx2
#define FBN_WIDE_NT 32
#define FBN_F16C 256
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,f16c,prefer-vector-width=512")
#endif
#define FBN_ISA avx512
#define FBN_WIDE_NT 64
#define FBN_F16C 512
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA
/* AVX-512 with BF16 (Cooper Lake, Sapphire Rapids, Zen 4): the bfloat16
 * kernels again, narrowing with VCVTNEPS2BF16; the other types and the
 * float loops under them are the AVX-512 ones. */
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,f16c,avx512bf16"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,f16c,avx512bf16,prefer-vector-width=512")
#endif
#define FBN_ISA avx512bf16
#define FBN_F32_ISA avx512
#define FBN_WIDE_NT 64
#define FBN_F16C 512
#define FBN_BF16_NARROW 1
#define FBN_BF16_ONLY 1
#include "isa_instances.h"
#undef FBN_BF16_ONLY
#undef FBN_BF16_NARROW
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_F32_ISA
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
