/*
 * half_convert.h -- conversions between float and the 16-bit types float16
 * (IEEE binary16) and bfloat16, as bit patterns (included by kernels.c).
 *
 * Widening is exact.  Narrowing rounds once, to nearest with ties to even,
 * denormal results included (no flush to zero); a NaN becomes a quiet NaN
 * with its sign and the top bits of its payload (float16: 0x7e00 | the top
 * 10 payload bits; bfloat16: the top 16 bits with the quiet bit set), and a
 * float16 NaN widens to a quiet float NaN likewise.  Hardware conversions
 * are not used: VCVTNEPS2BF16 (AVX512_BF16) flushes denormals to zero, and
 * these branch-free integer forms vectorise in every instruction set (the
 * one floating-point step, the float16 denormal rounding, is an exact IEEE
 * addition), so every instruction set gives the same bits whatever the
 * MXCSR flush modes are.
 *
 * The functions are written without branches (selects) so that the
 * compiler vectorises the kernels' loops that call them.
 */
#ifndef FBN_HALF_CONVERT_H
#define FBN_HALF_CONVERT_H

static inline float fbn_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t fbn_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* c ? a : b for c in {0, 1}, as bit masks: straight-line code that the
 * compiler vectorises (with ?: GCC kept branches in the loops). */
static inline uint32_t fbn_sel(uint32_t c, uint32_t a, uint32_t b)
{
    uint32_t m = 0u - c;
    return (a & m) | (b & ~m);
}

/* bfloat16 -> float: exact, the top 16 bits of the float. */
static inline float fbn_bf16_to_f32(fbn_half h)
{
    return fbn_bits_to_f32((uint32_t)h << 16);
}

/* float -> bfloat16, to nearest even (overflow gives infinity). */
static inline fbn_half fbn_f32_to_bf16(float f)
{
    uint32_t u = fbn_f32_to_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t q = (u >> 16) | 0x40u; /* NaN: quiet */
    return (fbn_half)fbn_sel((u & 0x7fffffffu) > 0x7f800000u, q, r);
}

/* float16 -> float: exact. */
static inline float fbn_f16_to_f32(fbn_half h)
{
    uint32_t a = (uint32_t)h & 0x7fffu, e = (uint32_t)h & 0x7c00u;
    uint32_t mant = a & 0x3ffu;
    uint32_t s = ((uint32_t)h & 0x8000u) << 16;
    /* normal: rebias the exponent (15 -> 127) */
    uint32_t nrm = (a << 13) + (112u << 23);
    /* infinity or NaN (quieted, payload kept) */
    uint32_t inf = 0x7f800000u | (mant << 13) | ((uint32_t)(mant != 0u) << 22);
    /* zero or denormal: m * 2^-24, exact (m < 1024) */
    uint32_t den = fbn_f32_to_bits((float)(int32_t)mant * 5.9604644775390625e-8f);
    uint32_t r = fbn_sel(e == 0x7c00u, inf, fbn_sel(e == 0u, den, nrm));
    return fbn_bits_to_f32(r | s);
}

/* float -> float16, to nearest even (overflow gives infinity, values below
 * half the smallest denormal give a signed zero). */
static inline fbn_half fbn_f32_to_f16(float f)
{
    uint32_t u = fbn_f32_to_bits(f);
    uint32_t s = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    /* normal result: rebias, round the 13 dropped bits to nearest even (a
     * carry may go into the exponent, up to infinity) */
    uint32_t nrm = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* denormal result (|f| < 2^-14): adding 0.5 rounds |f| to a multiple of
     * 2^-24 (0.5's ulp), to nearest even; the low bits are then the count
     * (1024 = the smallest normal, when it rounds up) */
    uint32_t den = fbn_f32_to_bits(fbn_bits_to_f32(a) + 0.5f) - 0x3f000000u;
    uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
    uint32_t r = fbn_sel(a >= (113u << 23), nrm, den);
    r = fbn_sel(a >= 0x47800000u, 0x7c00u, r);
    r = fbn_sel(a > 0x7f800000u, nan, r);
    return (fbn_half)(r | s);
}

#endif /* FBN_HALF_CONVERT_H */
