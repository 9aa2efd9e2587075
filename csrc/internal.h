/*
 * internal.h -- what fastbn's C files share (internal; fastbn.h is the
 * public interface): the constants that fix the numerics and the work
 * split, the tuning state (cache.c), small helpers, and the statistics
 * merge.
 *
 * Determinism: statistics are computed per fixed-size chunk (channel-first)
 * or fixed-size block of rows (channel-last) and merged in chunk order, so
 * the floating-point operations are the same whether a channel is handled by
 * one thread or split over many.  The build uses -ffp-contract=off so the
 * compiler cannot fuse the same expression differently in two places.
 */
#ifndef FASTBN_INTERNAL_H
#define FASTBN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastbn.h"
#include "portable.h"

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
/* Fused tiles whose runs have at most this many bytes transform a
 * sample's runs of the tile's channels in one loop, each value's constants
 * laid out in L1 (apply_short).  Measured, float32 training forward at 1
 * thread against one loop per run: 4x4 planes 0.75-0.87x the time, 7x7
 * 0.92-0.93x, 10x10 0.95-0.98x, 8x8 (the tiny call) 0.99x; 14x14 (784
 * bytes) 1.05x, so not there. */
#define FBN_SHORT_RUN 512
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

/* ---- the tuning state (cache.c) ----------------------------------------- */

/* Problems with fewer values run on the caller alone; calls that move
 * fewer bytes do not wake sleeping helpers (fbn_set_tuning). */
extern long long fbn_serial_max;
extern long long fbn_wake_min;

/* The budgets in bytes for a call on nth threads (cache.c): non-temporal
 * output stores, fused tiles, statistics tiles. */
void fbn_budgets(int nth, long long *nt, long long *fuse, long long *tile);

/* Reads the best instruction set the CPU supports (dispatch.c; called by
 * fbn_init). */
void fbn_isa_init(void);

/* ---- small helpers ------------------------------------------------------ */

static inline ptrdiff_t fbn_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t fbn_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t fbn_cdiv(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }

/* Threads to use for `work` values split in `items`: the caller alone for
 * small work or without OpenMP, never more threads than items. */
static inline int fbn_threads(int nthreads, ptrdiff_t work, ptrdiff_t items)
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

#endif /* FASTBN_INTERNAL_H */
