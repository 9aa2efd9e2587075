/*
 * isa_instances.h -- the kernels of both element types for the instruction
 * set named by FBN_ISA (included by fastbn.c once per instruction set).
 */
#define T float
#define SFX f32
#include "kernels_impl.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "kernels_impl.h"
#undef T
#undef SFX
