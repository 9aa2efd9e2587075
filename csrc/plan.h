/*
 * plan.h -- how a kernel call splits its work (internal): the plan made
 * from the geometry of the call's (outer, C, inner) view and the caches,
 * and the in-order merges of the per-chunk and per-block statistics.
 */
#ifndef FASTBN_PLAN_H
#define FASTBN_PLAN_H

#include "internal.h"

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

/* Makes the plan of a call (plan.c; see there). */
void fbn_plan_make_g(fbn_plan *p, ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C,
                     ptrdiff_t inner, size_t sz, int nstat, int nextra, int nout,
                     int ops, int nthreads);
/* Channels [c0, c1) and chunks [k0, k1) of tile t (channel-first). */
void fbn_tile_range(const fbn_plan *p, ptrdiff_t t, ptrdiff_t *c0, ptrdiff_t *c1,
                    ptrdiff_t *k0, ptrdiff_t *k1);
/* The merges of per-chunk and per-block moments, in order (plan.c). */
void fbn_unfold_moments(const fbn_plan *p, const double *mv, const double *qv,
                        const double *pm_rem, const double *pq_rem, double *mean,
                        double *m2);
void fbn_merge_chunks(const double *pm, const double *pq, ptrdiff_t nk, ptrdiff_t ntot,
                      double *mean, double *m2);
void fbn_merge_blocks(const double *pm, const double *pq, ptrdiff_t C, ptrdiff_t rb,
                      ptrdiff_t nb, ptrdiff_t outer, double *mean, double *m2);

/* The plan of an ordinary call: one group. */
static inline void fbn_plan_make(fbn_plan *p, ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                          size_t sz, int nstat, int nextra, int nout, int ops,
                          int nthreads)
{
    fbn_plan_make_g(p, 1, outer, C, inner, sz, nstat, nextra, nout, ops, nthreads);
}

/* Per-chunk or per-block results of a plan: C * nk (channel-first), or
 * Cv * nb and C for the rows left over from folding (channel-last). */
static inline ptrdiff_t fbn_plan_parts(const fbn_plan *p)
{
    return p->cl ? p->Cv * p->nb + p->C : p->C * p->nk;
}

/* Channel-last items: the blocks, and one more for the rows left over from
 * folding. */
static inline ptrdiff_t fbn_stat_items(const fbn_plan *p) { return p->nb + (p->rem > 0); }
static inline ptrdiff_t fbn_apply_items(const fbn_plan *p)
{
    return p->cl ? p->nab + (p->rem > 0) : p->nab;
}

#endif /* FASTBN_PLAN_H */
