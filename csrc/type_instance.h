/*
 * type_instance.h -- the kernels of one element type for one instruction
 * set: its element interface (elem_impl.h), the half types' hot loops
 * (half_impl.h), then the templates (kernels_impl.h and what it includes),
 * which end with the type's ops table NAME(ops).  Included by
 * isa_instances.h with T, R, FBN_HALF and SFX defined; undefines what it
 * defined.
 */
#include "elem_impl.h"
#if FBN_HALF
#include "half_impl.h"
#endif
#include "kernels_impl.h"

#if FBN_VEC
#undef FBN_VN
#undef FBN_NV
#undef FBN_LOAD8
#undef FBN_TO_D8
#if FBN_HALF
#undef FBN_LOADN
#endif
#endif
#undef FBN_LD
#undef FBN_ST
#if FBN_HALF
#undef FBN_F32
#endif
#undef NAME
#undef FBN_CAT
#undef FBN_CAT_
#undef T
#undef R
#undef FBN_HALF
#undef SFX
