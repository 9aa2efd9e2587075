/*
 * stream.h -- the streaming helpers of the kernels (internal): copies with
 * non-temporal stores, the fence that publishes them, prefetches, and the
 * L1 tiles that end on cache-line boundaries.
 */
#ifndef FASTBN_STREAM_H
#define FASTBN_STREAM_H

#include "internal.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h> /* the AVX-512 kernels' 64-byte streaming stores */
#endif
#define FBN_HAVE_NT 1
#else
#define FBN_HAVE_NT 0
#endif

/* Copy n bytes to dst with non-temporal stores where dst is 16-byte
 * aligned (plain copies for the unaligned head and the tail). */
static inline void fbn_stream(void *dst, const void *src, size_t n)
{
#if FBN_HAVE_NT
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (16 - ((size_t)(uintptr_t)d & 15)) & 15;
    if (head > n)
        head = n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

/* Makes the non-temporal stores visible before the kernel returns. */
static inline void fbn_sfence(void)
{
#if FBN_HAVE_NT
    _mm_sfence();
#endif
}

/* Asks for the n bytes `ahead` bytes beyond p to be brought towards the
 * cache.  (The addresses are computed as integers: they may lie past the
 * array's end, where a prefetch does nothing, and pointer arithmetic there
 * would be undefined.) */
static inline void fbn_prefetch(const void *p, size_t ahead, size_t n)
{
    uintptr_t q = (uintptr_t)p + ahead, end = q + n;
    for (; q < end; q += 64)
        fbn_prefetch_line(q);
}

/* Elements (at most `left`) of an L1 tile that starts at p and ends on a
 * 64-byte boundary, so that streamed tiles write whole cache lines. */
static inline ptrdiff_t fbn_tile_len(const void *p, size_t sz, ptrdiff_t left)
{
    uintptr_t a = (uintptr_t)p;
    uintptr_t e = (a + FBN_TILE * sz) & ~(uintptr_t)63;
    ptrdiff_t n = (ptrdiff_t)((e - a) / sz);
    return n < left ? n : left;
}


/* Channels [c0, c0 + len) of four per-channel float arrays laid end to end
 * (k + j*C, j = 0..3) into kc, as four arrays of len: the constants of a
 * slice of rows longer than an L1 tile (the half kernels' tile loops). */
static inline void fbn_coef_slice(const float *k, ptrdiff_t C, ptrdiff_t c0,
                                  ptrdiff_t len, float *kc)
{
    int j;
    for (j = 0; j < 4; j++)
        memcpy(kc + j * len, k + j * C + c0, sizeof(float) * (size_t)len);
}

#endif /* FASTBN_STREAM_H */
