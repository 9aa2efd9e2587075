/*
 * plan.c -- the plans of the kernels' calls and the in-order merges of
 * their statistics (see plan.h).
 */
#include <string.h>

#include "plan.h"
#include "pool.h"
#include "stream.h"

/* Makes the plan of a call on the (outer, C, inner) view with elements of
 * sz bytes: nstat arrays read by the reductions (and again by the
 * elementwise pass), nextra arrays read only by the elementwise pass (the
 * residual), nout arrays written, ops FBN_OP_*.  Needs outer*inner >= 1
 * and C >= 1.  groups > 1 (ghost batches, ghost_impl.h): the call is that
 * many independent (outer, C, inner) blocks one after the other, each with
 * this plan, whose items all run in one parallel job; the threads, light
 * calls and streamed stores are chosen for the whole call. */
void fbn_plan_make_g(fbn_plan *p, ptrdiff_t groups, ptrdiff_t outer, ptrdiff_t C,
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
         * channels enough for every thread.  (Tiles of channels that fit
         * only the thread's share of L3, their second pass reading from L3,
         * were measured on the 2 MB-L2 Xeon with L2 forced to 1 MB: forward
         * 1.10-1.16x and backward 0.95-1.11x the time of two-phase tiles,
         * so they are not made.) */
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
void fbn_tile_range(const fbn_plan *p, ptrdiff_t t, ptrdiff_t *c0,
                           ptrdiff_t *c1, ptrdiff_t *k0, ptrdiff_t *k1)
{
    ptrdiff_t cg = t % p->ncg, kg = t / p->ncg;
    *c0 = cg * p->g;
    *c1 = fbn_min(*c0 + p->g, p->C);
    *k0 = kg * p->kt;
    *k1 = fbn_min(*k0 + p->kt, p->nk);
}

/* The moments of the C channels of a folded channel-last plan: the Cv
 * virtual channels' moments (outerv values each) merged per channel in
 * order, then the left-over rows' (pm_rem, pq_rem: rem values each). */
void fbn_unfold_moments(const fbn_plan *p, const double *mv, const double *qv,
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
void fbn_merge_chunks(const double *pm, const double *pq, ptrdiff_t nk,
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
void fbn_merge_blocks(const double *pm, const double *pq, ptrdiff_t C,
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
