/*
 * elem_impl.h -- the element-type interface of the kernel templates, for
 * one element type T (its computing type R, FBN_HALF, SFX) and instruction
 * set (FBN_ISA, FBN_F16C): what kernels_impl.h, backward_impl.h,
 * ghost_impl.h, colstats_impl.h and half_impl.h know of an element.
 *
 *   FBN_LD(v), FBN_ST(t)  one element as R (exact), an R value stored as
 *                         an element (rounded once);
 *   NAME(widen), NAME(narrow)  n elements to float and back (half types);
 *   the lanes of a register (half types with F16C): NAME(load16),
 *     NAME(loadn), NAME(store16), NAME(storen), NAME(narrow16),
 *     NAME(narrow32) at AVX-512; NAME(load8), NAME(store8), NAME(round8),
 *     NAME(load16u), NAME(store16u) at AVX2;
 *   vectors of R and of double for the reductions (FBN_VEC): NAME(vec),
 *     NAME(d8), NAME(t8), FBN_LOAD8, FBN_LOADN, FBN_TO_D8;
 *   the backward's activation masks: NAME(pass), NAME(pass16),
 *     NAME(pass8); and the macros that make a kernel's flags constants.
 *
 * Included once per element type and instruction set (type_instance.h),
 * before the templates; it includes none of them.
 */
#ifndef FBN_ACT_Z
/* f(args..., act, hasz) with the activation (FBN_ACT_*) and the residual
 * flag made constants, so that each instance of an inline body is a
 * simple loop */
#define FBN_ACT_Z(f, act, hasz, ...)                                           \
    do {                                                                       \
        if ((act) == FBN_ACT_RELU6)                                            \
            FBN_FLAG(f, hasz, __VA_ARGS__, FBN_ACT_RELU6);                     \
        else if (act)                                                          \
            FBN_FLAG(f, hasz, __VA_ARGS__, FBN_ACT_RELU);                      \
        else                                                                   \
            FBN_FLAG(f, hasz, __VA_ARGS__, FBN_ACT_NONE);                      \
    } while (0)
/* f(args..., 1) if flag, else f(args..., 0) */
#define FBN_FLAG(f, flag, ...)                                                 \
    do {                                                                       \
        if (flag)                                                              \
            f(__VA_ARGS__, 1);                                                 \
        else                                                                   \
            f(__VA_ARGS__, 0);                                                 \
    } while (0)
/* f(args..., mask, training, hasdz) with the three made constants (the
 * backward's bodies; mask: the forward's activation, FBN_ACT_*) */
#define FBN_MASK_TRAIN_DZ(f, mask, training, hasdz, ...)                       \
    do {                                                                       \
        if ((mask) == FBN_ACT_RELU6)                                           \
            FBN_TRAIN_DZ(f, training, hasdz, __VA_ARGS__, FBN_ACT_RELU6);      \
        else if (mask)                                                         \
            FBN_TRAIN_DZ(f, training, hasdz, __VA_ARGS__, FBN_ACT_RELU);       \
        else                                                                   \
            FBN_TRAIN_DZ(f, training, hasdz, __VA_ARGS__, FBN_ACT_NONE);       \
    } while (0)
#define FBN_TRAIN_DZ(f, training, hasdz, ...)                                  \
    do {                                                                       \
        if (training)                                                          \
            FBN_FLAG(f, hasdz, __VA_ARGS__, 1);                                \
        else                                                                   \
            FBN_FLAG(f, hasdz, __VA_ARGS__, 0);                                \
    } while (0)
/* The activation act (a constant in each body) of a value t of R in place:
 * max(t, 0), and min(., 6) for ReLU6 (NaN stays NaN, -0 stays -0). */
#define FBN_ACTIVATE(t, act)                                                   \
    do {                                                                       \
        if (act)                                                               \
            (t) = (t) < (R)0 ? (R)0 : (t);                                     \
        if ((act) == FBN_ACT_RELU6)                                            \
            (t) = (t) > (R)6 ? (R)6 : (t);                                     \
    } while (0)
#endif
#define FBN_CAT_(a, b, c) a##_##b##_##c
#define FBN_CAT(a, b, c) FBN_CAT_(a, b, c)
#define NAME(f) FBN_CAT(f, SFX, FBN_ISA)

/* An element as R (FBN_LD: exact) and an R value stored as an element
 * (FBN_ST: rounded once).  The half types compute exactly what the float
 * kernels compute on the widened values (half_convert.h). */
#if FBN_HALF == 1 && FBN_F16C
/* one value through F16C (the scalar tails of the runs: 7x7 planes have
 * one in every 49 values), bitwise the portable conversions */
#define FBN_LD(v) _cvtsh_ss(v)
#define FBN_ST(v) ((fbn_half)_cvtss_sh((v), _MM_FROUND_TO_NEAREST_INT))
#elif FBN_HALF == 1
#define FBN_LD(v) fbn_f16_to_f32(v)
#define FBN_ST(v) fbn_f32_to_f16(v)
#elif FBN_HALF == 2
#define FBN_LD(v) fbn_bf16_to_f32(v)
#define FBN_ST(v) fbn_f32_to_bf16(v)
#else
#define FBN_LD(v) (v)
#define FBN_ST(v) (v)
#endif

/* 1 where the forward's output v (an element as R) passes the backward's
 * mask of activation act: v > 0 (ReLU), 0 < v < 6 (ReLU6); 0 for NaN. */
static inline int NAME(pass)(R v, int act)
{
    return act == FBN_ACT_RELU6 ? (v > (R)0) & (v < (R)6) : v > (R)0;
}

#if FBN_VEC
/* 32-byte vectors of T (GCC/clang vector extensions) for the few loops the
 * auto-vectoriser handles badly; FBN_NV of them make the FBN_LANES lanes.
 * The arithmetic is lane by lane, as in the scalar fallback, so every
 * instruction set (and the fallback) gives the same bits. */
typedef R NAME(vec) __attribute__((vector_size(32)));
#define FBN_VN ((int)(32 / sizeof(R)))
#define FBN_NV (FBN_LANES / FBN_VN)
#endif

#if FBN_VEC
/* The 16 double lanes as two vectors of 8, and 8 values of T, for the
 * backward's reductions: GCC turned their plain lane loops into scalar code
 * where they are inlined.  Element-wise IEEE arithmetic, so the bits are
 * those of the scalar loops. */
typedef double NAME(d8) __attribute__((vector_size(64)));
typedef R NAME(t8) __attribute__((vector_size(8 * sizeof(R))));
#if FBN_HALF
/* n elements at p, widened, into the vector v (of n values of R) */
#define FBN_LOADN(v, p, n)                                                     \
    do {                                                                       \
        R w_[n];                                                               \
        int j_;                                                                \
        for (j_ = 0; j_ < (n); j_++)                                           \
            w_[j_] = FBN_LD((p)[j_]);                                          \
        memcpy(&(v), w_, sizeof(v));                                           \
    } while (0)
#define FBN_LOAD8(v, p) FBN_LOADN(v, p, 8)
#else
#define FBN_LOAD8(v, p) memcpy(&(v), (p), sizeof(v))
#endif
#define FBN_TO_D8(v) __builtin_convertvector((v), NAME(d8))
#endif

#if FBN_HALF
#undef FBN_F32
/* (FBN_F32_ISA: FBN_ISA, or the set whose float kernels an instance of the
 * bfloat16 kernels alone uses; isa_instances.h) */
#define FBN_F32(f) FBN_CAT(f, f32, FBN_F32_ISA)

#if FBN_F16C == 512
/* 16 values widened to float, exactly (float16: VCVTPH2PS; bfloat16: the
 * top 16 bits of the float). */
static inline __m512 NAME(widen16)(__m256i h)
{
#if FBN_HALF == 1
    return _mm512_cvtph_ps(h);
#else
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#endif
}

static inline __m512 NAME(load16)(const T *x)
{
    return NAME(widen16)(_mm256_loadu_si256((const __m256i *)x));
}

/* The first n < 16 values (the others read as 0, never touched). */
static inline __m512 NAME(loadn)(const T *x, ptrdiff_t n)
{
    return NAME(widen16)(_mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1u), x));
}

/* 16 floats rounded once to the half type. */
static inline __m256i NAME(narrow16)(__m512 t)
{
#if FBN_HALF == 1
    return _mm512_cvtps_ph(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    __m512i u = _mm512_castps_si512(t);
#if FBN_BF16_NARROW
    /* AVX-512_BF16: VCVTNEPS2BF16 rounds to nearest even as fbn_f32_to_bf16
     * does, NaN alike, but reads denormal inputs as zero
     * (tools/check_half_convert.c): a vector holding one takes the integer
     * rule below. */
    if (!_mm512_fpclass_ps_mask(t, 0x20)) /* (class 0x20: denormal) */
        return (__m256i)_mm512_cvtneps_pbh(t);
#endif
    /* fbn_f32_to_bf16, lane by lane */
    __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
#endif
}

/* 32 floats (t: the first 16, u: the next) rounded once to the half type:
 * a whole 64-byte line, for one non-temporal store (two 32-byte stores to
 * a line cost the streamed transform 10-25 %). */
static inline __m512i NAME(narrow32)(__m512 t, __m512 u)
{
#if FBN_HALF == 2 && FBN_BF16_NARROW
    /* bfloat16: one VCVTNE2PS2BF16 for both, as narrow16 when neither
     * holds a denormal */
    if (_kortestz_mask16_u8(_mm512_fpclass_ps_mask(t, 0x20), _mm512_fpclass_ps_mask(u, 0x20)))
        return (__m512i)_mm512_cvtne2ps_pbh(u, t);
#endif
    return _mm512_inserti64x4(_mm512_castsi256_si512(NAME(narrow16)(t)), NAME(narrow16)(u), 1);
}

static inline void NAME(store16)(T *y, __m512 t)
{
    _mm256_storeu_si256((__m256i *)y, NAME(narrow16)(t));
}

/* The first n < 16 of them (nothing else written). */
/* The backward's mask of activation act on 16 floats (as pass()). */
static inline __mmask16 NAME(pass16)(__m512 v, int act)
{
    __mmask16 k = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    if (act == FBN_ACT_RELU6)
        k &= _mm512_cmp_ps_mask(v, _mm512_set1_ps(6.0f), _CMP_LT_OQ);
    return k;
}

static inline void NAME(storen)(T *y, __m512 t, ptrdiff_t n)
{
    _mm256_mask_storeu_epi16(y, (__mmask16)((1u << n) - 1u), NAME(narrow16)(t));
}
#elif FBN_F16C == 256
/* AVX2 with F16C: 8 values widened to float, exactly (float16: VCVTPH2PS;
 * bfloat16: the top 16 bits of the float). */
static inline __m256 NAME(load8)(const T *x)
{
    __m128i h = _mm_loadu_si128((const __m128i *)x);
#if FBN_HALF == 1
    return _mm256_cvtph_ps(h);
#else
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#endif
}

#if FBN_HALF == 2
/* bfloat16: 8 floats rounded once (fbn_f32_to_bf16 lane by lane), each to
 * the low 16 bits of its 32-bit lane. */
static inline __m256i NAME(round8)(__m256 t)
{
    __m256i u = _mm256_castps_si256(t), hi = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                                   _mm256_and_si256(hi, _mm256_set1_epi32(1))), 16);
    __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
    return _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)),
                              _mm256_castps_si256(nan));
}

/* 16 values as two vectors of 8 floats in the order of the 16-bit unpacks
 * within 128-bit lanes (a: values 0-3 and 8-11, b: 4-7 and 12-15): one
 * unpack per 8 to widen, one pack per 16 to narrow, for elementwise loops
 * with one set of constants. */
static inline void NAME(load16u)(const T *x, __m256 *a, __m256 *b)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)x), zero = _mm256_setzero_si256();
    *a = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h));
    *b = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h));
}

static inline void NAME(store16u)(T *y, __m256 a, __m256 b)
{
    _mm256_storeu_si256((__m256i *)y, _mm256_packus_epi32(NAME(round8)(a), NAME(round8)(b)));
}
#endif

/* 8 floats rounded once to the half type (float16: VCVTPS2PH, bitwise
 * fbn_f32_to_f16; bfloat16: round8). */
/* The backward's mask of activation act on 8 floats (as pass()). */
static inline __m256 NAME(pass8)(__m256 v, int act)
{
    __m256 k = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
    if (act == FBN_ACT_RELU6)
        k = _mm256_and_ps(k, _mm256_cmp_ps(v, _mm256_set1_ps(6.0f), _CMP_LT_OQ));
    return k;
}

static inline void NAME(store8)(T *y, __m256 t)
{
#if FBN_HALF == 1
    __m128i h = _mm256_cvtps_ph(t, _MM_FROUND_TO_NEAREST_INT);
#else
    /* 8 values < 2^16: packed to 16 bits within each 128-bit half, the
     * halves' low quadwords then brought together */
    __m256i r = NAME(round8)(t);
    __m128i h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
#endif
    _mm_storeu_si128((__m128i *)y, h);
}
#endif

/* n elements widened to float: at AVX-512 16 at a time (load16), at AVX2 8
 * at a time (load8; VCVTPH2PS is exact like fbn_f16_to_f32, NaN quieted
 * alike); the rest one by one. */
static inline void NAME(widen)(const T *x, float *w, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if FBN_F16C == 512
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(w + i, NAME(load16)(x + i));
#elif FBN_F16C == 256
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(w + i, NAME(load8)(x + i));
#endif
    {
        ptrdiff_t j;
        FBN_OMP_SIMD
        for (j = i; j < n; j++)
            w[j] = FBN_LD(x[j]);
    }
}

/* n floats rounded once to the half type: at AVX-512 16 at a time
 * (store16), at AVX2 8 at a time (store8; VCVTPS2PH rounds to nearest even,
 * bitwise fbn_f32_to_f16 for every float, denormals produced whatever
 * MXCSR's flush modes); the rest one by one. */
static inline void NAME(narrow)(const float *w, T *y, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if FBN_F16C == 512
    for (; i + 16 <= n; i += 16)
        NAME(store16)(y + i, _mm512_loadu_ps(w + i));
#elif FBN_F16C == 256
    for (; i + 8 <= n; i += 8)
        NAME(store8)(y + i, _mm256_loadu_ps(w + i));
#endif
    {
        ptrdiff_t j;
        FBN_OMP_SIMD
        for (j = i; j < n; j++)
            y[j] = FBN_ST(w[j]);
    }
}
#endif /* FBN_HALF */
