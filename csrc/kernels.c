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

/* One instance per row of FBN_ISA_LIST (ops.h), which gives each its
 * name, width and target; isa_instances.h reads the row of FBN_ISA.  (An
 * #include cannot come from a macro, so each row has its line here; a row
 * missing here fails to link, one here but not in the list to compile.) */
#define FBN_ISA base
#include "isa_instances.h"
#if FBN_HAVE_DISPATCH
#define FBN_ISA avx2
#include "isa_instances.h"
#define FBN_ISA avx512
#include "isa_instances.h"
#define FBN_ISA avx512bf16
#include "isa_instances.h"
#endif
