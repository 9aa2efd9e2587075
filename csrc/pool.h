/*
 * pool.h -- how the kernels' blocks are scheduled onto threads (internal;
 * fastbn.h is the public interface).
 *
 * fbn_parallel_for(n, fn, ctx, nthreads, flags) calls fn(ctx, i) once for
 * every item i in [0, n), on the calling thread and up to nthreads - 1
 * helper threads, and returns when every item is done.  Items must be
 * independent; which thread runs an item is not specified, so a kernel
 * that combines per-item results does so in item order afterwards (its
 * results then do not depend on the thread count).  Each thread starts on
 * its own contiguous range of items (thread r of t: [r*n/t, (r+1)*n/t)),
 * front to back (FBN_FORWARD) or back to front (FBN_REVERSE), then helps
 * with the others' ranges; a pass that splits the same data the same way
 * as the pass before it thus finds most of its part in its own cache.
 * With FBN_LIGHT, helpers that sleep are left asleep (the caller works
 * alone unless some are awake), except within a burst of back-to-back
 * jobs (the first few run alone, then the helpers are woken and stay
 * awake between the jobs that follow).
 *
 * Two schedulers implement it:
 *   "pool" (default): caller-runs.  The caller publishes the job, wakes
 *     sleeping helpers if there are any, and claims items itself.  Helpers that arrive late find fewer items (or none)
 *     and the call returns as soon as every item is done, not when every
 *     helper has arrived: a helper that cannot get a core (another library's
 *     threads spinning on it) or is still waking up never makes the call
 *     slower than the caller working alone.  Helpers spin briefly after a
 *     job (back-to-back calls find them awake), then sleep.  A call made
 *     while another thread's call holds the pool runs on its caller alone.
 *   "openmp": an OpenMP parallel loop with dynamic scheduling (the join
 *     waits for every thread of the team), kept for comparison.
 * Builds without OpenMP run every item on the caller.
 *
 * Thread-safety: fbn_parallel_for may be called from any number of threads
 * at once.
 */
#ifndef FASTBN_POOL_H
#define FASTBN_POOL_H

#include <stddef.h>

typedef void (*fbn_item_fn)(void *ctx, ptrdiff_t item);

#define FBN_FORWARD 0
#define FBN_REVERSE 1 /* ranges are worked through back to front */
#define FBN_LIGHT 2   /* a short job: do not wake sleeping helpers (waking
                         one takes longer than the job), use awake ones */

void fbn_parallel_for(ptrdiff_t n, fbn_item_fn fn, void *ctx, int nthreads,
                      int flags);

/* The scheduler controls (fbn_set_scheduler, fbn_set_spin_us, ...) are in
 * fastbn.h. */

#endif /* FASTBN_POOL_H */
