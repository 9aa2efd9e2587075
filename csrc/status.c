/*
 * status.c -- the names of fastbn's status codes and what the library was
 * built with (see fastbn.h).
 */
#include "fastbn.h"

const char *fbn_strerror(int status)
{
    switch (status) {
    case FBN_OK:
        return "success";
    case FBN_EINVAL:
        return "invalid argument (negative size or too few values per channel)";
    case FBN_ENOMEM:
        return "out of memory for scratch space";
    default:
        return "unknown fastbn status";
    }
}

#if defined(__clang__)
#define FBN_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define FBN_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define FBN_STR2_(x) #x
#define FBN_STR_(x) FBN_STR2_(x)
#define FBN_COMPILER "msvc " FBN_STR_(_MSC_VER)
#else
#define FBN_COMPILER "unknown compiler"
#endif

#if defined(__AVX512F__)
#define FBN_SIMD "AVX-512F"
#elif defined(__AVX2__)
#define FBN_SIMD "AVX2"
#elif defined(__AVX__)
#define FBN_SIMD "AVX"
#elif defined(__SSE2__) || defined(_M_X64)
#define FBN_SIMD "SSE2"
#elif defined(__ARM_NEON) || defined(_M_ARM64)
#define FBN_SIMD "NEON"
#else
#define FBN_SIMD "none"
#endif

const char *fbn_build_info(void) { return FBN_COMPILER "; " FBN_SIMD; }
