/*
 * check_half_convert.c -- the hardware conversions against csrc/half_convert.h.
 *
 * fastbn's kernels may use a hardware conversion only where it gives the
 * bits of the portable round-to-nearest-even code for every input, so that
 * every instruction set computes the same results.  This program checks,
 * on the CPU it runs on:
 *   F16C VCVTPH2PS  (float16 -> float) for all 65536 float16 values;
 *   F16C VCVTPS2PH  (float -> float16, round to nearest even) for all 2^32
 *                   floats, and again under MXCSR FTZ|DAZ for the values
 *                   that give float16 denormals or zeros;
 *   AVX512_BF16 VCVTNEPS2BF16 (float -> bfloat16) for all 2^32 floats:
 *                   it flushes denormal inputs to zero, so fastbn does not
 *                   use it (the count of differing inputs is printed).
 * Build and run (about 30 s):
 *   gcc -O2 -Icsrc tools/check_half_convert.c -o /tmp/chk && /tmp/chk
 * Exit status 1 if an F16C conversion differs from the portable code.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint16_t fbn_half;
#include "half_convert.h"

__attribute__((target("f16c"))) static long check_f16c(int ftz_daz)
{
    long bad = 0;
    uint32_t u = 0, end = ftz_daz ? 0x39000000u : 0u;
    unsigned csr = _mm_getcsr();
    if (ftz_daz)
        _mm_setcsr(csr | 0x8040u);
    for (uint32_t h = 0; h < 65536; h++) {
        float a = fbn_f16_to_f32((fbn_half)h), b = _cvtsh_ss((unsigned short)h);
        if (memcmp(&a, &b, 4) != 0)
            bad++;
    }
    do { /* all floats (or, under FTZ|DAZ, those of magnitude < 2^-13) */
        float f[8];
        uint16_t r[8];
        int k;
        for (k = 0; k < 8; k++) {
            uint32_t v = u + (uint32_t)k;
            memcpy(&f[k], &v, 4);
        }
        __m128i ph = _mm256_cvtps_ph(_mm256_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT);
        memcpy(r, &ph, 16);
        for (k = 0; k < 8; k++)
            if (r[k] != fbn_f32_to_f16(f[k]) ||  /* and the scalar form */
                _cvtss_sh(f[k], _MM_FROUND_TO_NEAREST_INT) != r[k])
                bad++;
        u += 8;
    } while (u != end);
    _mm_setcsr(csr);
    return bad;
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static long check_bf16(long *denormal)
{
    long bad = 0;
    uint32_t u = 0;
    *denormal = 0;
    do {
        float f[16];
        uint16_t r[16];
        int k;
        for (k = 0; k < 16; k++) {
            uint32_t v = u + (uint32_t)k;
            memcpy(&f[k], &v, 4);
        }
        __m256bh bh = _mm512_cvtneps_pbh(_mm512_loadu_ps(f));
        memcpy(r, &bh, 32);
        for (k = 0; k < 16; k++)
            if (r[k] != fbn_f32_to_bf16(f[k])) {
                bad++;
                if (((u + (uint32_t)k) & 0x7f800000u) == 0)
                    (*denormal)++;
            }
        u += 16;
    } while (u != 0);
    return bad;
}

int main(void)
{
    int fail = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("f16c")) {
        long a = check_f16c(0), b = check_f16c(1);
        printf("F16C: %ld differences (default MXCSR), %ld under FTZ|DAZ\n", a, b);
        fail |= a != 0 || b != 0;
    } else {
        printf("F16C: not on this CPU\n");
    }
    if (__builtin_cpu_supports("avx512bf16")) {
        long den, bad = check_bf16(&den);
        printf("VCVTNEPS2BF16: %ld of 2^32 floats differ (%ld of them denormal "
               "inputs, flushed to zero): not usable\n", bad, den);
    } else {
        printf("AVX512_BF16: not on this CPU\n");
    }
    return fail;
}
