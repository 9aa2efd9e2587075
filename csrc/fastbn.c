/*
 * fastbn.c -- batch-normalization kernels (see fastbn.h for the interface).
 *
 * The kernels are written once, in kernels_impl.h, and instantiated here for
 * float and double, and for the half types float16 and bfloat16 (stored as
 * 16-bit patterns, computed in float: half_convert.h).  This file holds what does not depend on the element
 * type: status strings, OpenMP queries, the thread policy, the statistics
 * merge, and the walk over one channel's values in channel-first layout.
 *
 * Determinism: statistics are computed per fixed-size chunk (channel-first)
 * or fixed-size block of rows (channel-last) and merged in chunk order, so
 * the floating-point operations are the same whether a channel is handled by
 * one thread or split over many.  The build uses -ffp-contract=off so the
 * compiler cannot fuse the same expression differently in two places.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastbn.h"
#include "ops.h"
#include "pool.h"
#include "portable.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h> /* the AVX-512 kernels' 64-byte streaming stores */
#endif
#define FBN_HAVE_NT 1
#else
#define FBN_HAVE_NT 0
#endif

/* Values per statistics chunk in channel-first layout: small enough that the
 * second pass of the two-pass variance reads it from L1/L2.  Part of the
 * numerics (with FBN_LANES and the block rows below): never tuned. */
#define FBN_CHUNK 4096
/* Values per row block in channel-last layout (at least FBN_MIN_ROWS rows). */
#define FBN_BLOCK_VALUES 16384
#define FBN_MIN_ROWS 64
/* Problems with fewer values than this run on the calling thread. */
#define FBN_SERIAL_MAX 32768
/* Calls that move fewer bytes than this (every array read or written,
 * counted once) do not wake sleeping helpers (they use awake ones): waking
 * one took 30-300 us on a 2-vCPU VM, about the time of the whole call, and
 * next to another library's spinning threads the wake itself cost the
 * caller about 10 us.  Counting bytes, not values, makes the rule follow
 * the work: a backward moves four arrays, a forward two, float64 twice the
 * bytes of float32 (2 MB: a float32 forward of 256K values). */
#define FBN_WAKE_BYTES 2097152
/* Independent accumulators in the reductions: lets the compiler vectorise
 * without reassociating (results do not depend on the data's alignment). */
#define FBN_LANES 16
#define FBN_ACC (FBN_LANES + 1)
/* Values per tile when results go out through an L1 buffer. */
#define FBN_TILE 1024
/* Kernels that can stream whole lines from registers (FBN_NT_LINES) do so
 * for a piece of a run with at least this many whole lines of output (1 KB
 * of half values; below that the extra calls per piece cost more than the
 * tile's copy saves: measured on 14x14 planes). */
#define FBN_NT_DIRECT 16
/* At most this many channels per channel-first tile (their accumulators
 * live on the stack of the item). */
#define FBN_TILE_C 64
/* A channel-first tile takes enough channels that each sample contributes
 * a contiguous run of at least this many bytes (short planes: 7x7 floats
 * are 196 bytes) so that memory is read in long streams. */
#define FBN_RUN_BYTES 2048
/* Fused tiles stream their output only when each sample's run is at least
 * this long: 2 KB for float32 and float64 (streamed, the 7x7-28x28 planes'
 * training forward took 0.71-0.89x the time of cached stores, measured at 1
 * and 2 threads, back to back and with 64 MB written between calls); 4 KB
 * for the half types, whose kernels are compute-bound on such runs, so the
 * streamed tile's extra copy through L1 cost more than the write-allocate
 * it saved (1.02-1.13x at 14x14 and 28x28; 56x56 gained 0.86-0.95x). */
#define FBN_NT_RUN_BYTES(sz) ((sz) == 2 ? 4096 : 2048)
/* Prefetches go to L2 and below (locality hint 2). */
#define FBN_PF_LOCALITY 2
/* Values (channel-first) per block of the transform phase. */
#define FBN_APPLY_VALUES 16384
/* A streamed transform (inference, and training's second pass) prefetches
 * x this many values ahead of the tile (channel-last: the group of rows) it
 * transforms: measured on the 2-core Xeon, 2 threads, NCHW 14x14 to
 * 112x112 planes: 0.79-0.98x the time for every type, calls timed after a
 * 10 ms pause alike (1 tile ahead: a little less); NHWC 0.88-0.97x.  (The
 * backward's streamed pass, after its reduction pass, gained nothing.) */
#define FBN_APF (2 * FBN_TILE)
/* Work items wanted per thread, so that helpers that arrive late still
 * find work and every thread ends at about the same time. */
#define FBN_ITEMS_PER_THREAD 4

/* Channel-last rows longer than this many bytes are reduced in tiles of
 * FBN_ROW_TILE rows (see block_moments). */
#define FBN_STRIP_MAX_ROW 512
/* The half types' backward sums rows longer than that slice by slice of
 * this many channels, each slice over all the block's rows (its double
 * sums stay in L1; float32 rows, not widened, stream faster row by row). */
#define FBN_LONG_SLICE 512
#define FBN_ROW_TILE 8
/* GCC and clang vector extensions (see kernels_impl.h); other compilers
 * run the same arithmetic as scalar loops. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FBN_NO_VEC)
#define FBN_VEC 1
#else
#define FBN_VEC 0
#endif
/* Rows (channel-last backward) summed in the element type before their
 * partial sums go to the double accumulators: 8 terms of float keep a
 * relative error below 5e-7 of each partial sum. */
#define FBN_FLUSH 8
/* Per-channel constants of up to this many channels live on the stack, and
 * a call's scratch when it needs at most this many bytes. */
#define FBN_STACK_C 64
#define FBN_STACK_BYTES 4096

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

int fbn_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fbn_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

long fbn_openmp_version(void)
{
#ifdef _OPENMP
    return (long)_OPENMP;
#else
    return 0;
#endif
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

/* ---- the machine's caches and the budgets made from them ---------------- */

/* The best instruction set (FBN_ISA_*; -1: not read yet; fbn_init reads it). */
static int fbn_best = -1;
static int fbn_detect_isa(void);

/* Detected sizes in bytes (0: unknown; fbn_init fills them). */
static long long fbn_cache[3];
/* Tuning: -1 means "from the caches" (see fbn_budget). */
static long long fbn_tune_nt = -1, fbn_tune_fuse = -1, fbn_tune_tile = -1;
/* Problems with fewer values run on the caller alone; calls that move
 * fewer bytes do not wake sleeping helpers (tunable for tests). */
static long long fbn_serial_max = FBN_SERIAL_MAX;
static long long fbn_wake_min = FBN_WAKE_BYTES;

#if defined(__linux__)
#include <stdio.h>
static long long fbn_sysfs_size(const char *path)
{
    char buf[64];
    long long v = 0;
    char unit = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof buf, f) == NULL || sscanf(buf, "%lld%c", &v, &unit) < 1)
        v = 0;
    fclose(f);
    if (unit == 'K')
        v <<= 10;
    else if (unit == 'M')
        v <<= 20;
    return v;
}
#elif defined(__APPLE__)
#include <sys/sysctl.h>
static long long fbn_sysctl(const char *name)
{
    long long v = 0;
    size_t len = sizeof v;
    if (sysctlbyname(name, &v, &len, NULL, 0) != 0)
        return 0;
    return v;
}
#elif defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#endif

void fbn_init(void)
{
    long long c[3] = {0, 0, 0};
#if defined(__linux__)
    int i;
    for (i = 0; i < 8; i++) {
        char path[96], type[32] = "";
        long long level;
        FILE *f;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        f = fopen(path, "r");
        if (f == NULL)
            break;
        if (fgets(type, sizeof type, f) == NULL)
            type[0] = 0;
        fclose(f);
        if (strncmp(type, "Instruction", 11) == 0)
            continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        level = fbn_sysfs_size(path);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (level >= 1 && level <= 3)
            c[level - 1] = fbn_sysfs_size(path);
    }
#elif defined(__APPLE__)
    /* Apple silicon: the performance cores' L2 is shared by a cluster */
    long long per = fbn_sysctl("hw.perflevel0.cpusperl2");
    c[0] = fbn_sysctl("hw.perflevel0.l1dcachesize");
    c[1] = fbn_sysctl("hw.perflevel0.l2cachesize");
    if (c[1] > 0 && per > 1)
        c[1] /= per;
    if (c[0] == 0)
        c[0] = fbn_sysctl("hw.l1dcachesize");
    if (c[1] == 0)
        c[1] = fbn_sysctl("hw.l2cachesize");
    c[2] = fbn_sysctl("hw.l3cachesize");
#elif defined(_WIN32)
    /* one entry per relation of every logical processor: ask the size first
     * (large machines have far more than any fixed buffer holds) */
    SYSTEM_LOGICAL_PROCESSOR_INFORMATION *info = NULL;
    DWORD len = 0, i;
    if (!GetLogicalProcessorInformation(NULL, &len) &&
        GetLastError() == ERROR_INSUFFICIENT_BUFFER && len > 0 &&
        (info = (SYSTEM_LOGICAL_PROCESSOR_INFORMATION *)malloc(len)) != NULL &&
        GetLogicalProcessorInformation(info, &len))
        for (i = 0; i < len / sizeof info[0]; i++)
            if (info[i].Relationship == RelationCache &&
                info[i].Cache.Type != CacheInstruction && info[i].Cache.Level >= 1 &&
                info[i].Cache.Level <= 3 && c[info[i].Cache.Level - 1] == 0)
                c[info[i].Cache.Level - 1] = (long long)info[i].Cache.Size;
    free(info);
#endif
    memcpy(fbn_cache, c, sizeof c);
    fbn_best = fbn_detect_isa();
}

void fbn_cache_sizes(long long *l1, long long *l2, long long *l3)
{
    *l1 = fbn_cache[0];
    *l2 = fbn_cache[1];
    *l3 = fbn_cache[2];
}

/* The budgets in bytes, for a call on nth threads:
 *   nt:   outputs at least this large are written with non-temporal stores:
 *         the L2 caches of the nth threads (a larger output leaves them
 *         anyway, and a streamed line is not read before it is written;
 *         measured on a 2 MB-L2 Xeon: 0.6-0.7x the time of plain stores for
 *         3-12 MB outputs; its L3 kept nothing for us);
 *   fuse: a fused tile's arrays (read and written) must fit in this (3/4
 *         of L2), so that its values are still there for the second pass;
 *   tile: a statistics tile reads this much (1/4 of L2).
 * An unknown L2 counts as 1 MB. */
static void fbn_budgets(int nth, long long *nt, long long *fuse, long long *tile)
{
    long long l2 = fbn_cache[1] > 0 ? fbn_cache[1] : (1LL << 20);
    *nt = fbn_tune_nt >= 0 ? fbn_tune_nt : l2 * (nth > 1 ? nth : 1);
    *fuse = fbn_tune_fuse >= 0 ? fbn_tune_fuse : l2 / 4 * 3;
    *tile = fbn_tune_tile >= 0 ? fbn_tune_tile : l2 / 4;
}

void fbn_set_tuning(long long nt_bytes, long long fuse_bytes, long long tile_bytes,
                    long long serial_values, long long wake_bytes)
{
    fbn_tune_nt = nt_bytes < 0 ? -1 : nt_bytes;
    fbn_tune_fuse = fuse_bytes < 0 ? -1 : fuse_bytes;
    fbn_tune_tile = tile_bytes < 0 ? -1 : tile_bytes;
    fbn_serial_max = serial_values < 0 ? FBN_SERIAL_MAX : serial_values;
    fbn_wake_min = wake_bytes < 0 ? FBN_WAKE_BYTES : wake_bytes;
}

void fbn_get_tuning(long long *nt_bytes, long long *fuse_bytes, long long *tile_bytes,
                    long long *serial_values, long long *wake_bytes)
{
    fbn_budgets(1, nt_bytes, fuse_bytes, tile_bytes);
    *serial_values = fbn_serial_max;
    *wake_bytes = fbn_wake_min;
}

/* ---- memory traffic ------------------------------------------------------ */

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

static inline ptrdiff_t fbn_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

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
static inline ptrdiff_t fbn_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t fbn_cdiv(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }

/* Threads to use for `work` values split in `items`: the caller alone for
 * small work or without OpenMP, never more threads than items. */
static int fbn_threads(int nthreads, ptrdiff_t work, ptrdiff_t items)
{
#ifdef _OPENMP
    if (nthreads < 2 || work < fbn_serial_max || items < 2)
        return 1;
    if ((ptrdiff_t)nthreads > items)
        return (int)items;
    return nthreads;
#else
    (void)nthreads;
    (void)work;
    (void)items;
    return 1;
#endif
}

/* Chan et al.'s merge of the moments (nb, mb, m2b) into (*na, *ma, *m2a). */
static inline void fbn_merge(double *na, double *ma, double *m2a, double nb,
                             double mb, double m2b)
{
    double n = *na + nb;
    double d = mb - *ma;
    *ma += d * (nb / n);
    *m2a += m2b + d * d * (*na * (nb / n));
    *na = n;
}

/* Total of lane accumulators acc[0..FBN_LANES]: a fixed pairwise tree
 * over the lanes, then the leftover accumulator. */
static inline double fbn_lanes_total(const double *acc)
{
    double v[FBN_LANES];
    int w, k;
    memcpy(v, acc, sizeof v);
    for (w = FBN_LANES / 2; w >= 1; w /= 2)
        for (k = 0; k < w; k++)
            v[k] += v[k + w];
    return v[0] + acc[FBN_LANES];
}

/* Rows per block in channel-last layout: depends on C only. */
static inline ptrdiff_t fbn_block_rows(ptrdiff_t C)
{
    ptrdiff_t r = FBN_BLOCK_VALUES / (C > 0 ? C : 1);
    return r < FBN_MIN_ROWS ? FBN_MIN_ROWS : r;
}

/* ---- plans: how a call splits its work --------------------------------- */

#define FBN_OP_STATS 1 /* the call computes per-channel reductions */
#define FBN_OP_APPLY 2 /* the call writes an elementwise result */

typedef struct {
    ptrdiff_t outer, C, inner, ntot; /* the view; C == 1 is (1, 1, ntot) */
    int cl;                          /* channel-last (inner == 1, C > 1) */
    int nth;                         /* threads */
    int light;                       /* FBN_LIGHT (pool.h) for short calls */
    int nt;                          /* non-temporal output stores */
    int fused;                       /* channel-first tiles hold whole channels */
    int pf;                          /* fused forward tiles prefetch the next */
    ptrdiff_t nk;                    /* chunks per channel (channel-first) */
    ptrdiff_t g, kt, ncg, nkg, ntiles; /* tile: channels, chunks; groups of
                                        channels, of chunks; tiles */
    ptrdiff_t fold, Cv, outerv, rem; /* channel-last: `fold` rows make one row
                                        of Cv = C*fold virtual channels;
                                        outerv such rows, then rem rows */
    ptrdiff_t rb, nb;                /* channel-last: rows (of Cv) per
                                        statistics block, blocks */
    ptrdiff_t ab, nab;               /* elementwise blocks: values
                                        (channel-first) or rows of Cv, count */
} fbn_plan;

/* Makes the plan of a call on the (outer, C, inner) view with elements of
 * sz bytes: nstat arrays read by the reductions (and again by the
 * elementwise pass), nextra arrays read only by the elementwise pass (the
 * residual), nout arrays written, ops FBN_OP_*.  Needs outer*inner >= 1
 * and C >= 1.  groups > 1 (ghost batches, ghost_impl.h): the call is that
 * many independent (outer, C, inner) blocks one after the other, each with
 * this plan, whose items all run in one parallel job; the threads, light
 * calls and streamed stores are chosen for the whole call. */
static void fbn_plan_make_g(fbn_plan *p, ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C,
                            ptrdiff_t inner, size_t sz, int nstat, int nextra, int nout,
                            int ops, int nthreads)
{
    ptrdiff_t ntot = outer * inner, size = ntot * C * groups;
    long long nt_bytes, fuse, tile, out_bytes = (long long)size * (long long)sz;
    memset(p, 0, sizeof *p);
    p->light = out_bytes * (nstat + nextra + nout) < fbn_wake_min ? FBN_LIGHT : 0;
    if (C == 1) { /* one contiguous run */
        outer = 1;
        inner = ntot;
    }
    p->outer = outer;
    p->C = C;
    p->inner = inner;
    p->ntot = ntot;
    p->cl = inner == 1 && C > 1;
    if (p->cl) {
        /* few channels: SIMD runs across a row's channels, so k rows are
         * taken as one row of C*k virtual channels (a multiple of 16, at
         * least 64), whose moments or sums are merged per channel */
        ptrdiff_t k = 1;
        if (C < 64)
            while (C * k < 64 || (C * k) % 16 != 0)
                k++;
        if (outer < k)
            k = 1;
        p->fold = k;
        p->Cv = C * k;
        p->outerv = outer / k;
        p->rem = outer - p->outerv * k;
        p->rb = fbn_block_rows(p->Cv);
        p->nb = fbn_cdiv(p->outerv, p->rb);
        p->ab = fbn_max(1, FBN_APPLY_VALUES / p->Cv);
        p->nab = fbn_cdiv(p->outerv, p->ab);
        p->nth = fbn_threads(nthreads, size,
                             groups * (fbn_max(p->nb, p->nab) + (p->rem > 0)));
        fbn_budgets(p->nth, &nt_bytes, &fuse, &tile);
        p->nt = FBN_HAVE_NT && (ops & FBN_OP_APPLY) && out_bytes >= nt_bytes;
        (void)nextra;
        (void)nout;
        (void)nstat;
    } else {
        ptrdiff_t chan = ntot * (ptrdiff_t)sz;  /* bytes of a channel */
        ptrdiff_t run = inner * (ptrdiff_t)sz;  /* bytes of a run */
        ptrdiff_t g_run = fbn_min(fbn_min(fbn_cdiv(FBN_RUN_BYTES, run), C), FBN_TILE_C);
        ptrdiff_t foot;
        int nth, nt_big;
        p->nk = fbn_cdiv(ntot, FBN_CHUNK);
        p->ab = FBN_APPLY_VALUES;
        p->nab = fbn_cdiv(size, p->ab);
        nth = fbn_threads(nthreads, size, groups * fbn_max(C, p->nk));
        fbn_budgets(nth, &nt_bytes, &fuse, &tile);
        nt_big = FBN_HAVE_NT && (ops & FBN_OP_APPLY) && out_bytes >= nt_bytes;
        /* the bytes of a channel that a fused tile keeps in cache: outputs
         * streamed past the caches do not count */
        foot = chan * (nstat + nextra + (nt_big && run >= FBN_NT_RUN_BYTES(sz) ? 0 : nout));
        /* fused when a channel's arrays fit in the budget and there are
         * channels enough for every thread */
        p->fused = ops == (FBN_OP_STATS | FBN_OP_APPLY) && foot <= fuse &&
                   (nth == 1 || groups * C >= 2 * (ptrdiff_t)nth);
        if (p->fused) {
            ptrdiff_t g_fit = fbn_max(1, (ptrdiff_t)(fuse / foot));
            p->g = fbn_min(g_fit, g_run);
            if (nth > 1)
                p->g = fbn_max(1, fbn_min(p->g, groups * C / (FBN_ITEMS_PER_THREAD * nth)));
            p->kt = p->nk;
        } else {
            ptrdiff_t ncg;
            p->g = fbn_max(1, g_run);
            p->kt = (ptrdiff_t)(tile / (p->g * FBN_CHUNK * (ptrdiff_t)sz * fbn_max(1, nstat)));
            p->kt = fbn_max(1, fbn_min(p->kt, p->nk));
            ncg = fbn_cdiv(C, p->g);
            if (nth > 1 && groups * ncg * fbn_cdiv(p->nk, p->kt) < FBN_ITEMS_PER_THREAD * nth)
                p->kt = fbn_max(1, p->nk / fbn_cdiv(FBN_ITEMS_PER_THREAD * nth, groups * ncg));
        }
        p->ncg = fbn_cdiv(C, p->g);
        p->nkg = fbn_cdiv(p->nk, p->kt);
        p->ntiles = p->ncg * p->nkg;
        p->nth = nth;
        /* streamed outputs: the elementwise blocks when the output is
         * large; fused tiles only when each sample's run (a tile's
         * channels) is long enough, FBN_NT_RUN_BYTES */
        p->nt = nt_big && (!p->fused || p->g * run >= FBN_NT_RUN_BYTES(sz));
        /* a fused tile reads its channels first and writes last: the next
         * tile's reads, prefetched piece by piece during the writes, keep
         * both directions busy (10-20% at 1 thread, 0-35% at 2 measured) */
        p->pf = p->fused && p->C > p->g;
    }
}

/* The plan of an ordinary call: one group. */
static void fbn_plan_make(fbn_plan *p, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                          size_t sz, int nstat, int nextra, int nout, int ops,
                          int nthreads)
{
    fbn_plan_make_g(p, 1, outer, C, inner, sz, nstat, nextra, nout, ops, nthreads);
}

/* The plan a kernel would make, for tests and the benchmark report:
 * fields[0..10] = channel-last, threads, non-temporal stores, fused,
 * channels per tile, chunks per tile, tiles, chunks per channel, row
 * blocks (channel-last statistics), elementwise blocks, rows folded into
 * one (channel-last). */
void fbn_describe_plan(ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C,
                       ptrdiff_t inner, int elsize, int nstat, int nextra, int nout,
                       int ops, int nthreads, long long *fields)
{
    fbn_plan p;
    fbn_plan_make_g(&p, groups, outer, C, inner, (size_t)elsize, nstat, nextra, nout,
                    ops, nthreads);
    fields[0] = p.cl;
    fields[1] = p.nth;
    fields[2] = p.nt;
    fields[3] = p.fused;
    fields[4] = p.g;
    fields[5] = p.kt;
    fields[6] = p.ntiles;
    fields[7] = p.nk;
    fields[8] = p.nb;
    fields[9] = p.nab;
    fields[10] = p.cl ? p.fold : 1;
}

/* Channels [c0, c1) and chunks [k0, k1) of tile t (channel-first).  Tiles
 * go chunk group by chunk group, so that consecutive tiles are near in
 * memory and a thread's range of tiles covers about the same part of the
 * array as its range of elementwise blocks. */
static void fbn_tile_range(const fbn_plan *p, ptrdiff_t t, ptrdiff_t *c0,
                           ptrdiff_t *c1, ptrdiff_t *k0, ptrdiff_t *k1)
{
    ptrdiff_t cg = t % p->ncg, kg = t / p->ncg;
    *c0 = cg * p->g;
    *c1 = fbn_min(*c0 + p->g, p->C);
    *k0 = kg * p->kt;
    *k1 = fbn_min(*k0 + p->kt, p->nk);
}

/* Per-chunk or per-block results of a plan: C * nk (channel-first), or
 * Cv * nb and C for the rows left over from folding (channel-last). */
static ptrdiff_t fbn_plan_parts(const fbn_plan *p)
{
    return p->cl ? p->Cv * p->nb + p->C : p->C * p->nk;
}

/* Channel-last items: the blocks, and one more for the rows left over from
 * folding. */
static ptrdiff_t fbn_stat_items(const fbn_plan *p) { return p->nb + (p->rem > 0); }
static ptrdiff_t fbn_apply_items(const fbn_plan *p)
{
    return p->cl ? p->nab + (p->rem > 0) : p->nab;
}

/* The moments of the C channels of a folded channel-last plan: the Cv
 * virtual channels' moments (outerv values each) merged per channel in
 * order, then the left-over rows' (pm_rem, pq_rem: rem values each). */
static void fbn_unfold_moments(const fbn_plan *p, const double *mv, const double *qv,
                               const double *pm_rem, const double *pq_rem,
                               double *mean, double *m2)
{
    ptrdiff_t c, i;
    for (c = 0; c < p->C; c++) {
        double n = (double)p->outerv, m = mv[c], q = qv[c];
        for (i = 1; i < p->fold; i++)
            fbn_merge(&n, &m, &q, (double)p->outerv, mv[c + i * p->C], qv[c + i * p->C]);
        if (p->rem > 0)
            fbn_merge(&n, &m, &q, (double)p->rem, pm_rem[c], pq_rem[c]);
        mean[c] = m;
        m2[c] = q;
    }
}

/* The moments of a channel from its nk chunk moments, merged in chunk
 * order (chunk k has FBN_CHUNK values, the last one the rest). */
static void fbn_merge_chunks(const double *pm, const double *pq, ptrdiff_t nk,
                             ptrdiff_t ntot, double *mean, double *m2)
{
    double n = (double)fbn_min(FBN_CHUNK, ntot), m = pm[0], q = pq[0];
    ptrdiff_t k;
    for (k = 1; k < nk; k++)
        fbn_merge(&n, &m, &q, (double)(fbn_min(k * FBN_CHUNK + FBN_CHUNK, ntot) - k * FBN_CHUNK),
                  pm[k], pq[k]);
    *mean = m;
    *m2 = q;
}

/* The moments of every channel from nb row blocks' moments (pm, pq:
 * [nb][C]), merged block by block (vectorised over channels). */
static void fbn_merge_blocks(const double *pm, const double *pq, ptrdiff_t C,
                             ptrdiff_t rb, ptrdiff_t nb, ptrdiff_t outer,
                             double *mean, double *m2)
{
    ptrdiff_t b, c;
    for (c = 0; c < C; c++) {
        mean[c] = pm[c];
        m2[c] = pq[c];
    }
    for (b = 1; b < nb; b++) {
        double na = (double)(b * rb);
        double nbk = (double)(fbn_min(b * rb + rb, outer) - b * rb);
        double n = na + nbk;
        double f = nbk / n, g = na * (nbk / n);
        const double *bm = pm + b * C, *bq = pq + b * C;
        for (c = 0; c < C; c++) {
            double d = bm[c] - mean[c];
            mean[c] += d * f;
            m2[c] += bq[c] + d * d * g;
        }
    }
}

/* ---- the kernels, once per element type and instruction set ------------ */

#include "half_convert.h"
#include "colstats.h"

/* The portable baseline (SSE2 on x86-64; whatever the target has
 * elsewhere). */
#define FBN_ISA base
#define FBN_WIDE_NT 0
#define FBN_F16C 0
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA

/* x86-64 with GCC or clang: the same source compiled for AVX2 and for
 * AVX-512, chosen once at run time by a CPU check.  The reductions use a
 * fixed number of explicit lanes and the build forbids FMA contraction, so
 * every instruction set computes bitwise the same results; it is only
 * faster. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(FBN_NO_DISPATCH)
#define FBN_HAVE_DISPATCH 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif
/* F16C (every AVX2 CPU has it): float16 conversions in one instruction
 * (VCVTPH2PS, VCVTPS2PH), bitwise those of half_convert.h (checked for
 * every float16 and every float by tools/check_half_convert.c) */
#define FBN_ISA avx2
#define FBN_WIDE_NT 32
#define FBN_F16C 256
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,f16c,prefer-vector-width=512")
#endif
#define FBN_ISA avx512
#define FBN_WIDE_NT 64
#define FBN_F16C 512
#include "isa_instances.h"
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_ISA
/* AVX-512 with BF16 (Cooper Lake, Sapphire Rapids, Zen 4): the bfloat16
 * kernels again, narrowing with VCVTNEPS2BF16; the other types and the
 * float loops under them are the AVX-512 ones. */
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,f16c,avx512bf16"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,f16c,avx512bf16,prefer-vector-width=512")
#endif
#define FBN_ISA avx512bf16
#define FBN_F32_ISA avx512
#define FBN_WIDE_NT 64
#define FBN_F16C 512
#define FBN_BF16_NARROW 1
#define FBN_BF16_ONLY 1
#include "isa_instances.h"
#undef FBN_BF16_ONLY
#undef FBN_BF16_NARROW
#undef FBN_F16C
#undef FBN_WIDE_NT
#undef FBN_F32_ISA
#undef FBN_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
#define FBN_HAVE_DISPATCH 0
#endif

/* ---- instruction-set dispatch -------------------------------------------- */

enum { FBN_ISA_BASE = 0, FBN_ISA_AVX2 = 1, FBN_ISA_AVX512 = 2, FBN_ISA_AVX512BF16 = 3 };
/* The instruction sets built, in the order of the enum: X(isa, name). */
#if FBN_HAVE_DISPATCH
#define FBN_ISA_LIST(X) X(base, "baseline") X(avx2, "avx2") X(avx512, "avx512") \
    X(avx512bf16, "avx512bf16")
#else
#define FBN_ISA_LIST(X) X(base, "baseline")
#endif
#define FBN_ISA_NAME(isa, name) name,
#define FBN_ISA_TABLE(isa, name) fbn_isa_ops_##isa,
static const char *const fbn_isa_names[] = {FBN_ISA_LIST(FBN_ISA_NAME)};
/* fbn_table[isa][dtype]: the kernels of every element type per set */
static const fbn_ops *const *const fbn_table[] = {FBN_ISA_LIST(FBN_ISA_TABLE)};
#define FBN_NISA ((int)(sizeof fbn_isa_names / sizeof fbn_isa_names[0]))

/* Best instruction set this CPU (and OS) supports among those built, read
 * once (CPUID is slow, and traps to the hypervisor in a VM): by fbn_init,
 * which the library's users call before any kernel. */
static int fbn_detect_isa(void)
{
#if FBN_HAVE_DISPATCH
    int f = fbn_cpu_features();
    if (f & FBN_CPU_AVX512)
        return (f & FBN_CPU_AVX512BF16) ? FBN_ISA_AVX512BF16 : FBN_ISA_AVX512;
    if (f & FBN_CPU_AVX2)
        return FBN_ISA_AVX2;
#endif
    return FBN_ISA_BASE;
}

static int fbn_best_isa(void)
{
    int best = fbn_best;
    return best >= 0 ? best : fbn_detect_isa();
}

static int fbn_isa = -1; /* -1: not chosen yet (the best one is used) */

static int fbn_active_isa(void)
{
    int isa = fbn_isa;
    return isa >= 0 ? isa : fbn_best_isa();
}

int fbn_set_simd(const char *name)
{
    int best = fbn_best_isa(), want = -1, i;
    if (name == NULL || strcmp(name, "auto") == 0 || name[0] == '\0') {
        fbn_isa = best;
        return FBN_OK;
    }
    for (i = 0; i < FBN_NISA; i++)
        if (strcmp(name, fbn_isa_names[i]) == 0)
            want = i;
    if (want < 0 || want > best)
        return FBN_EINVAL;
    fbn_isa = want;
    return FBN_OK;
}

const char *fbn_simd(void) { return fbn_isa_names[fbn_active_isa()]; }

const char *fbn_simd_available(void)
{
    static const char *const avail[] = {"baseline", "baseline avx2",
                                        "baseline avx2 avx512",
                                        "baseline avx2 avx512 avx512bf16"};
    return avail[fbn_best_isa()];
}

/* ---- the public kernels: the table of the dtype, then its kernel -------- */

const fbn_ops *fbn_ops_for(int dtype) { return fbn_table[fbn_active_isa()][dtype]; }

/* The table of dtype, NULL for an unknown one. */
static const fbn_ops *fbn_ops_of(int dtype)
{
    return dtype >= 0 && dtype < FBN_NDTYPES ? fbn_ops_for(dtype) : NULL;
}

static int fbn_act_ok(int act) { return act >= FBN_ACT_NONE && act <= FBN_ACT_RELU6; }

/* The backward's y: NULL without an activation, needed with one. */
static int fbn_mask_ok(int act, const void **y)
{
    if (act == FBN_ACT_NONE)
        *y = NULL;
    return fbn_act_ok(act) && (act == FBN_ACT_NONE || *y != NULL);
}

int fbn_moments(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                ptrdiff_t inner, double *mean, double *m2, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL)
        return FBN_EINVAL;
    return o->moments(x, outer, C, inner, mean, m2, nthreads);
}

int fbn_train_forward(int dtype, const void *x, ptrdiff_t groups, ptrdiff_t outer,
                      ptrdiff_t C, ptrdiff_t inner, const void *gamma,
                      const void *beta, const void *z, double eps, int act,
                      const fbn_renorm *rn, void *y, void *mean_out,
                      void *invstd_out, double *var_out, double *r_out,
                      double *d_out, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->train_forward(x, groups, outer, C, inner, gamma, beta, z, eps, act, rn,
                            y, mean_out, invstd_out, var_out, r_out, d_out, nthreads);
}

int fbn_infer_forward(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
                      ptrdiff_t inner, const void *mean, const void *var,
                      const void *gamma, const void *beta, const void *z,
                      double eps, int act, void *y, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->infer_forward(x, outer, C, inner, mean, var, gamma, beta, z, eps, act,
                            y, nthreads);
}

int fbn_apply(int dtype, const void *x, ptrdiff_t outer, ptrdiff_t C,
              ptrdiff_t inner, const double *mean, const double *invstd,
              const void *gamma, const void *beta, const void *z, int act,
              void *y, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_act_ok(act))
        return FBN_EINVAL;
    return o->apply(x, outer, C, inner, mean, invstd, gamma, beta, z, act, y,
                    nthreads);
}

int fbn_backward_reduce(int dtype, const void *dy, const void *x, const void *y,
                        int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                        const void *mean, double *sum_dy, double *sum_dyxmu,
                        int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_mask_ok(act, &y))
        return FBN_EINVAL;
    return o->backward_reduce(dy, x, y, act, outer, C, inner, mean, sum_dy,
                              sum_dyxmu, nthreads);
}

int fbn_backward_apply(int dtype, const void *dy, const void *x, const void *y,
                       int act, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                       const void *mean, const void *invstd, const void *gamma,
                       const double *sum_dy, const double *sum_dyxmu, double count,
                       int training, void *dx, void *dz, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_mask_ok(act, &y))
        return FBN_EINVAL;
    return o->backward_apply(dy, x, y, act, outer, C, inner, mean, invstd, gamma,
                             sum_dy, sum_dyxmu, count, training, dx, dz, nthreads);
}

int fbn_backward(int dtype, const void *dy, const void *x, const void *y, int act,
                 ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                 const void *mean, const void *invstd, const void *gamma,
                 const double *r, const double *d, int training, void *dx,
                 void *dz, void *dgamma, void *dbeta, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || !fbn_mask_ok(act, &y))
        return FBN_EINVAL;
    return o->backward(dy, x, y, act, groups, outer, C, inner, mean, invstd, gamma, r,
                       d, training, dx, dz, dgamma, dbeta, nthreads);
}

int fbn_colstats(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                 const double *w, double *count, double *mean, double *m2,
                 int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (o == NULL || o->colstats == NULL)
        return FBN_EINVAL;
    return o->colstats(x, n, p, colmajor, w, count, mean, m2, nthreads);
}

int fbn_standardize(int dtype, const void *x, ptrdiff_t n, ptrdiff_t p,
                    int colmajor, const double *mean, const double *scale,
                    int inverse, void *y, int *has_inf, int nthreads)
{
    const fbn_ops *o = fbn_ops_of(dtype);
    if (has_inf)
        *has_inf = 0;
    if (o == NULL || o->standardize == NULL)
        return FBN_EINVAL;
    return o->standardize(x, n, p, colmajor, mean, scale, inverse, y, has_inf,
                          nthreads);
}
