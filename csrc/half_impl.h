/*
 * half_impl.h -- the hot loops of the half types (float16, bfloat16),
 * included by kernels_impl.h when FBN_HALF is set (T = fbn_half, R = float).
 *
 * At AVX-512 (FBN_F16C == 512) the statistics, the transform and the
 * backward convert in registers, 16 values at a time, and do the float
 * kernel's arithmetic in the float kernel's lane order (elementwise tails
 * masked, reduction tails in the scalar lane, as there).  Elsewhere each
 * loop takes its values in L1 tiles of FBN_TILE: widened to float
 * (exactly), run through the float kernels' own loop (FBN_F32(f): the f32
 * instance for the same instruction set, compiled before this one), and
 * the results rounded once back to the half type.  FBN_TILE is a multiple
 * of FBN_LANES, so a reduction's lanes see each value in the order the
 * float kernel's would.  Either way the results are bitwise those of the
 * float kernel on the widened data, for every plan, thread count and
 * instruction set.  (Conversions inside the float loops kept GCC from
 * vectorising them; the separate conversion loops vectorise.)
 */
#undef FBN_F32
#ifdef FBN_F32_ISA /* (an instance of the bfloat16 kernels alone) */
#define FBN_F32(f) FBN_CAT(f, f32, FBN_F32_ISA)
#else
#define FBN_F32(f) FBN_CAT(f, f32, FBN_ISA)
#endif

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
#if defined(FBN_BF16_NARROW) && FBN_BF16_NARROW
    /* AVX-512_BF16: VCVTNEPS2BF16 rounds to nearest even as fbn_f32_to_bf16
     * does, NaN alike, but reads denormal inputs as zero
     * (tools/check_half_convert.c): a vector holding one takes the integer
     * rule below. */
    __mmask16 den = _mm512_cmplt_epu32_mask(
        _mm512_sub_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                         _mm512_set1_epi32(1)),
        _mm512_set1_epi32(0x007fffff));
    if (!den)
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

static inline void NAME(store16)(T *y, __m512 t)
{
    _mm256_storeu_si256((__m256i *)y, NAME(narrow16)(t));
}

/* The first n < 16 of them (nothing else written). */
static inline void NAME(storen)(T *y, __m512 t, ptrdiff_t n)
{
    _mm256_mask_storeu_epi16(y, (__mmask16)((1u << n) - 1u), NAME(narrow16)(t));
}
#endif

/* n elements widened to float: at AVX-512 16 at a time (load16), float16
 * at AVX2 with F16C 8 at a time (VCVTPH2PS, exact like fbn_f16_to_f32, NaN
 * quieted alike); the rest one by one. */
static inline void NAME(widen)(const T *x, float *w, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if FBN_F16C == 512
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(w + i, NAME(load16)(x + i));
#elif FBN_HALF == 1 && FBN_F16C == 256
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(w + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
#endif
    {
        ptrdiff_t j;
#pragma omp simd
        for (j = i; j < n; j++)
            w[j] = FBN_LD(x[j]);
    }
}

/* n floats rounded once to the half type: at AVX-512 16 at a time
 * (store16), float16 at AVX2 with F16C 8 at a time (VCVTPS2PH with round to
 * nearest even, bitwise fbn_f32_to_f16 for every float, denormals produced
 * whatever MXCSR's flush modes); the rest one by one. */
static inline void NAME(narrow)(const float *w, T *y, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if FBN_F16C == 512
    for (; i + 16 <= n; i += 16)
        NAME(store16)(y + i, _mm512_loadu_ps(w + i));
#elif FBN_HALF == 1 && FBN_F16C == 256
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(w + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    {
        ptrdiff_t j;
#pragma omp simd
        for (j = i; j < n; j++)
            y[j] = FBN_ST(w[j]);
    }
}

#if FBN_F16C == 512
/* AVX-512: the reductions convert in registers (no tile): 16 values
 * widened at once, the lanes as two vectors of 8 doubles, each lane adding
 * its values in the float kernel's order (same bits). */

static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    __m512d a0 = _mm512_loadu_pd(acc), a1 = _mm512_loadu_pd(acc + 8);
    double t = acc[FBN_LANES];
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = NAME(load16)(x + i);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    }
    for (; i < n; i++)
        t += (double)FBN_LD(x[i]);
    _mm512_storeu_pd(acc, a0);
    _mm512_storeu_pd(acc + 8, a1);
    acc[FBN_LANES] = t;
}

static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    __m512d a0 = _mm512_loadu_pd(acc), a1 = _mm512_loadu_pd(acc + 8);
    __m512d mv = _mm512_set1_pd(m);
    double t = acc[FBN_LANES];
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = NAME(load16)(x + i);
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), mv);
        __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), mv);
        a0 = _mm512_add_pd(a0, _mm512_mul_pd(d0, d0));
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(d1, d1));
    }
    for (; i < n; i++) {
        double d = (double)FBN_LD(x[i]) - m;
        t += d * d;
    }
    _mm512_storeu_pd(acc, a0);
    _mm512_storeu_pd(acc + 8, a1);
    acc[FBN_LANES] = t;
}
#else
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    float w[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(x + t, w, len);
        FBN_F32(sum_acc)(w, len, acc);
    }
}

static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    float w[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(x + t, w, len);
        FBN_F32(ssd_acc)(w, len, m, acc);
    }
}
#endif

#if FBN_F16C == 512

/* AVX-512: the float kernel's arithmetic in registers, 16 values at a time
 * (max(0, t) is t < 0 ? 0 : t: NaN and -0 stay), the last n % 16 with
 * masked loads and stores (elementwise: the same bits as one by one);
 * x, z and y may be the same array. */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int relu, int hasz)
{
    __m512 vmh = _mm512_set1_ps(mh), vml = _mm512_set1_ps(ml);
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    ptrdiff_t i;
    for (i = 0; i < n; i += 16) {
        ptrdiff_t r = n - i; /* < 16: the tail, masked (7x7 runs end in one) */
        __m512 t = _mm512_sub_ps(_mm512_sub_ps(r >= 16 ? NAME(load16)(x + i)
                                                       : NAME(loadn)(x + i, r), vmh), vml);
        t = _mm512_add_ps(_mm512_mul_ps(t, va), vb);
        if (hasz)
            t = _mm512_add_ps(t, r >= 16 ? NAME(load16)(z + i) : NAME(loadn)(z + i, r));
        if (relu)
            t = _mm512_max_ps(zero, t);
        if (r >= 16)
            NAME(store16)(y + i, t);
        else
            NAME(storen)(y + i, t, r);
    }
}
#else
/* x, z and y may be the same array (a tile is read before it is written). */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int relu, int hasz)
{
    float w[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(x + t, w, len);
        if (hasz)
            NAME(widen)(z + t, wz, len);
        FBN_F32(apply_body)(w, wz, w, len, mh, ml, a, b, relu, hasz);
        NAME(narrow)(w, y + t, len);
    }
}
#endif

#if FBN_F16C == 512
/* AVX-512: the backward's arithmetic in registers, as the forward's: 16
 * values widened at once, the mask a compare (y > 0, false for NaN, so
 * dy' = +0 there as in mask_grad), each double lane adding its values in
 * the float kernel's order (bsum_plain: lanes 0-7 and 8-15, the last
 * n % 16 values in the scalar lane), so the bits are the float kernel's on
 * the widened data. */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    __m512d a0 = _mm512_loadu_pd(s0), b0 = _mm512_loadu_pd(s0 + 8);
    __m512d a1 = _mm512_loadu_pd(s1), b1 = _mm512_loadu_pd(s1 + 8);
    __m512d mv = _mm512_set1_pd(m);
    __m512 zero = _mm512_setzero_ps();
    double t0 = s0[FBN_LANES], t1 = s1[FBN_LANES];
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = NAME(load16)(dy + i), v = NAME(load16)(x + i);
        __m512d ga, gb;
        if (y)
            g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(NAME(load16)(y + i), zero, _CMP_GT_OQ), g);
        ga = _mm512_cvtps_pd(_mm512_castps512_ps256(g));
        gb = _mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1));
        a0 = _mm512_add_pd(a0, ga);
        b0 = _mm512_add_pd(b0, gb);
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(ga, _mm512_sub_pd(
                 _mm512_cvtps_pd(_mm512_castps512_ps256(v)), mv)));
        b1 = _mm512_add_pd(b1, _mm512_mul_pd(gb, _mm512_sub_pd(
                 _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), mv)));
    }
    for (; i < n; i++) {
        float gf = FBN_LD(dy[i]);
        double gk;
        if (y && !(FBN_LD(y[i]) > 0.0f))
            gf = 0.0f;
        gk = (double)gf;
        t0 += gk;
        t1 += gk * ((double)FBN_LD(x[i]) - m);
    }
    _mm512_storeu_pd(s0, a0);
    _mm512_storeu_pd(s0 + 8, b0);
    _mm512_storeu_pd(s1, a1);
    _mm512_storeu_pd(s1 + 8, b1);
    s0[FBN_LANES] = t0;
    s1[FBN_LANES] = t1;
}

/* dx (and dz) of n values of one channel, the float kernel's bapply_body
 * in registers, the last n % 16 masked; dx may equal dy (each 16 are read
 * before written). */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    __m512 vm = _mm512_set1_ps(m), va = _mm512_set1_ps(A), vb = _mm512_set1_ps(B);
    __m512 vd = _mm512_set1_ps(D), zero = _mm512_setzero_ps();
    ptrdiff_t i;
    for (i = 0; i < n; i += 16) {
        ptrdiff_t q = n - i; /* < 16: the tail, masked */
        __m512 g = q >= 16 ? NAME(load16)(dy + i) : NAME(loadn)(dy + i, q), r;
        if (mask)
            g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(
                    q >= 16 ? NAME(load16)(y + i) : NAME(loadn)(y + i, q), zero, _CMP_GT_OQ), g);
        if (hasdz) {
            if (q >= 16)
                NAME(store16)(dz + i, g);
            else
                NAME(storen)(dz + i, g, q);
        }
        r = _mm512_mul_ps(va, g);
        if (training)
            r = _mm512_add_ps(r, _mm512_add_ps(_mm512_mul_ps(vb, _mm512_sub_ps(
                    q >= 16 ? NAME(load16)(x + i) : NAME(loadn)(x + i, q), vm)), vd));
        if (q >= 16)
            NAME(store16)(dx + i, r);
        else
            NAME(storen)(dx + i, r, q);
    }
}
#else
/* The backward's reductions of n values (dy' = dy where y > 0 when y is
 * given): the float kernel's bsum_body, tile by tile. */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    float wg[FBN_TILE], wx[FBN_TILE], wy[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(dy + t, wg, len);
        NAME(widen)(x + t, wx, len);
        if (y) {
            NAME(widen)(y + t, wy, len);
            FBN_F32(mask_grad)(wg, wy, wg, len);
        }
        FBN_F32(bsum_plain)(wg, wx, len, m, s0, s1);
    }
}

/* dx (and dz) of n values of one channel; dx may equal dy. */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    float wg[FBN_TILE], wx[FBN_TILE], wy[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(dy + t, wg, len);
        if (training)
            NAME(widen)(x + t, wx, len);
        if (mask)
            NAME(widen)(y + t, wy, len);
        FBN_F32(bapply_body)(wg, wx, wy, wg, wz, len, m, A, B, D, mask, training,
                             hasdz);
        if (hasdz)
            NAME(narrow)(wz, dz + t, len);
        NAME(narrow)(wg, dx + t, len);
    }
}
#endif
