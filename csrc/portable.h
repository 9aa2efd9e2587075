/*
 * portable.h -- the few things that differ between the compilers fastbn
 * builds with (GCC >= 9, clang >= 14 and Apple clang, MSVC 2019 and newer):
 * SIMD hints, inlining, prefetch, and reading the CPU's features.
 *
 * Nothing here changes the arithmetic: a hint that a compiler lacks is
 * compiled as nothing, and the loops under it compute the same values in the
 * same order (the build forbids FMA contraction everywhere).
 */
#ifndef FBN_PORTABLE_H
#define FBN_PORTABLE_H

#include <stdint.h>

/* ---- OpenMP SIMD hints ----------------------------------------------------
 * FBN_OMP_SIMD before a loop asks for it to be vectorised ("#pragma omp
 * simd": OpenMP 4.0).  GCC and clang honour it under -fopenmp or
 * -fopenmp-simd (setup.py passes one of them); MSVC's /openmp is OpenMP 2.0
 * and rejects the pragma, so there, and wherever FBN_NO_OMP_SIMD is defined
 * (the build CI uses to stand for MSVC's), the macro is empty.
 *
 * FBN_OMP_SIMD_MAX(v) asks the same for a loop whose one reduction is a
 * maximum into v.  clang's vectoriser cannot do a max reduction written as a
 * select (it warns "loop not vectorized"), so it gets no hint: the loop
 * stays scalar there and computes the same value. */
#if defined(FBN_NO_OMP_SIMD) || (defined(_MSC_VER) && !defined(__clang__))
#define FBN_OMP_SIMD
#define FBN_OMP_SIMD_MAX(v)
#else
#define FBN_PRAGMA_(x) _Pragma(#x)
#define FBN_OMP_SIMD FBN_PRAGMA_(omp simd)
#if defined(__clang__)
#define FBN_OMP_SIMD_MAX(v)
#else
#define FBN_OMP_SIMD_MAX(v) FBN_PRAGMA_(omp simd reduction(max : v))
#endif
#endif

/* ---- inlining and prefetch ---------------------------------------------- */
#if defined(__GNUC__) || defined(__clang__)
#define FBN_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define FBN_NOINLINE __declspec(noinline)
#else
#define FBN_NOINLINE
#endif

#if defined(_MSC_VER) && !defined(__clang__) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
#include <xmmintrin.h>
#endif

/* Prefetch the line at address q (an integer: it may lie past an array's
 * end, where a prefetch does nothing) into L2 and below. */
static inline void fbn_prefetch_line(uintptr_t q)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch((const void *)q, 0, 2);
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_prefetch((const char *)q, _MM_HINT_T1);
#else
    (void)q;
#endif
}

/* ---- CPU features (x86-64) -------------------------------------------------
 * Read from CPUID and XGETBV directly, not with __builtin_cpu_supports: clang
 * accepts "f16c" there only from LLVM 18, and MSVC has no such builtin.
 * A feature counts only if the OS saves its registers (XCR0). */
enum {
    FBN_CPU_AVX2 = 1 << 0,       /* AVX2 and F16C, with YMM state saved */
    FBN_CPU_AVX512 = 1 << 1,     /* AVX-512 F, VL, BW, DQ, with ZMM state saved */
    FBN_CPU_AVX512BF16 = 1 << 2, /* AVX-512 BF16 (with FBN_CPU_AVX512) */
    FBN_CPU_F16C = 1 << 3        /* F16C (VCVTPH2PS, VCVTPS2PH) with AVX state */
};

#if defined(__x86_64__) || defined(_M_X64)
#if defined(_MSC_VER) && !defined(__clang__)
static inline void fbn_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    r[0] = (unsigned)v[0];
    r[1] = (unsigned)v[1];
    r[2] = (unsigned)v[2];
    r[3] = (unsigned)v[3];
}
static inline uint64_t fbn_xgetbv0(void) { return (uint64_t)_xgetbv(0); }
#else
static inline void fbn_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    unsigned a, b, c, d;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    r[0] = a;
    r[1] = b;
    r[2] = c;
    r[3] = d;
}
static inline uint64_t fbn_xgetbv0(void)
{
    unsigned lo, hi;
    /* (the instruction's bytes: assemblers without XSAVE support take it) */
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* The FBN_CPU_* bits this CPU and OS support. */
static inline int fbn_cpu_features(void)
{
    unsigned r[4], max_leaf;
    uint64_t xcr0;
    int f = 0;
    fbn_cpuid(0, 0, r);
    max_leaf = r[0];
    if (max_leaf < 1)
        return 0;
    fbn_cpuid(1, 0, r);
    /* ECX: bit 27 OSXSAVE, bit 28 AVX, bit 29 F16C */
    if (!(r[2] & (1u << 27)) || !(r[2] & (1u << 28)))
        return 0;
    xcr0 = fbn_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) /* XMM and YMM state */
        return 0;
    if (r[2] & (1u << 29))
        f |= FBN_CPU_F16C;
    if (max_leaf < 7)
        return f;
    fbn_cpuid(7, 0, r);
    /* EBX: bit 5 AVX2, 16 AVX512F, 17 AVX512DQ, 30 AVX512BW, 31 AVX512VL */
    if ((r[1] & (1u << 5)) && (f & FBN_CPU_F16C))
        f |= FBN_CPU_AVX2;
    if ((f & FBN_CPU_AVX2) && (xcr0 & 0xe0) == 0xe0 /* opmask, ZMM state */
        && (r[1] & (1u << 16)) && (r[1] & (1u << 17)) && (r[1] & (1u << 30)) &&
        (r[1] & (1u << 31))) {
        f |= FBN_CPU_AVX512;
        if (r[0] >= 1) { /* sub-leaf 1, EAX bit 5: AVX512_BF16 */
            fbn_cpuid(7, 1, r);
            if (r[0] & (1u << 5))
                f |= FBN_CPU_AVX512BF16;
        }
    }
    return f;
}
#else
static inline int fbn_cpu_features(void) { return 0; }
#endif

#endif /* FBN_PORTABLE_H */
