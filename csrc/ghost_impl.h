/*
 * ghost_impl.h -- ghost (virtual) batches and batch renormalization, written
 * once for an element type.  Included at the end of kernels_impl.h (T, R,
 * SFX and NAME defined there: T the element type of the data, R that of the
 * per-channel arrays and constants, float for the half types).
 *
 * A ghost call is `groups` independent batch norms of (outer, C, inner)
 * blocks that follow each other in memory: the batch axis split into groups
 * of consecutive samples.  Each group has the plan an ordinary call on its
 * block would make (so its numbers are that call's, bit for bit: they
 * depend on the block's shape only), and the items of all the groups run
 * in one parallel job: item t is item t % per of group t / per, run on a
 * copy of the call's shared state whose pointers are moved to the group.
 * No copies of the data, no loop over groups around the parallel jobs:
 * many small groups still keep every thread busy.
 *
 * Renormalization only changes each channel's constants (renorm_channel in
 * kernels_impl.h, bfinish_ghost in backward_impl.h), so it runs in the
 * same kernels at the same speed.
 */

/* ---- forward ------------------------------------------------------------ */

/* The shared state of a ghost forward: group 0's, and the strides that
 * move it to another group. */
typedef struct {
    NAME(fwd) f;      /* group 0 */
    ptrdiff_t vals;   /* values per group (outer * C * inner) */
    ptrdiff_t parts;  /* per-chunk or per-block results per group */
    ptrdiff_t ncoef;  /* constants per group: 4*C, and 4*Cv when folded */
    fbn_item_fn item; /* the ordinary item run in each group */
    ptrdiff_t per;    /* its items per group */
    double *gtmp;     /* whole-group items: 2*C + 2*Cv doubles per group */
} NAME(gfwd);

/* The state of group g, into *f. */
static void NAME(gfwd_group)(const NAME(gfwd) *gf, ptrdiff_t g, NAME(fwd) *f)
{
    ptrdiff_t C = gf->f.p->C, v = g * gf->vals;
    *f = gf->f;
    f->x += v;
    f->y += v;
    if (f->z)
        f->z += v;
    f->pm += g * gf->parts;
    f->pq += g * gf->parts;
    f->coef += g * gf->ncoef;
    f->coefv = gf->f.coefv == gf->f.coef ? f->coef : f->coef + 4 * C;
    f->mean_out += g * C;
    if (f->mean_lo_out)
        f->mean_lo_out += g * C;
    f->invstd_out += g * C;
    if (f->var_out)
        f->var_out += g * C;
    if (f->r_out)
        f->r_out += g * C;
    if (f->d_out)
        f->d_out += g * C;
}

static void NAME(item_gfwd)(void *arg, ptrdiff_t t)
{
    const NAME(gfwd) *gf = (const NAME(gfwd) *)arg;
    NAME(fwd) f;
    NAME(gfwd_group)(gf, t / gf->per, &f);
    gf->item(&f, t % gf->per);
}

/* Runs `item` (per items in each group) over all groups in one job. */
static void NAME(gfwd_run)(NAME(gfwd) *gf, ptrdiff_t groups, fbn_item_fn item,
                           ptrdiff_t per, int flags)
{
    gf->item = item;
    gf->per = per;
    fbn_parallel_for(groups * per, NAME(item_gfwd), gf, gf->f.p->nth,
                     flags | gf->f.p->light);
}

/* The merge half of stats_phase for one group (its items have run). */
static void NAME(gmerge)(const NAME(fwd) *f, double *mean, double *m2, double *mv,
                         double *qv)
{
    const fbn_plan *p = f->p;
    ptrdiff_t c;
    if (p->cl) {
        fbn_merge_blocks(f->pm, f->pq, p->Cv, p->rb, p->nb, p->outerv, mv, qv);
        fbn_unfold_moments(p, mv, qv, f->pm + p->nb * p->Cv, f->pq + p->nb * p->Cv,
                           mean, m2);
    } else {
        for (c = 0; c < p->C; c++)
            fbn_merge_chunks(f->pm + c * p->nk, f->pq + c * p->nk, p->nk, p->ntot,
                             mean + c, m2 + c);
    }
}

/* A whole channel-last group in one item, when a group's arrays fit in the
 * cache budget: its statistics blocks, their merge and its constants, then
 * its transform while its values are still in cache.  The same functions
 * in the same order as the phases, so the same bits; but no serial merge
 * of every group on the caller between two parallel jobs (with many small
 * groups, e.g. (16384, 64) in groups of 128 rows, that was most of the
 * call). */
static void NAME(item_group_fwd)(void *arg, ptrdiff_t g)
{
    const NAME(gfwd) *gf = (const NAME(gfwd) *)arg;
    const fbn_plan *p = gf->f.p;
    ptrdiff_t i, c, C = p->C;
    double *tmp = gf->gtmp + g * (2 * C + 2 * p->Cv);
    NAME(fwd) f;
    NAME(gfwd_group)(gf, g, &f);
    for (i = 0; i < fbn_stat_items(p); i++)
        NAME(item_stats_rows)(&f, i);
    NAME(gmerge)(&f, tmp, tmp + C, tmp + 2 * C, tmp + 2 * C + p->Cv);
    for (c = 0; c < C; c++)
        NAME(finish_channel)(&f, c, tmp[c], tmp[C + c]);
    NAME(unfold_coef)(p, f.coef, f.coefv);
    for (i = 0; i < fbn_apply_items(p); i++)
        NAME(item_apply)(&f, i);
}

/* Whole-group items for a ghost call of `groups` channel-last groups of
 * `gbytes` bytes each per array, `arrays` arrays: when each group fits in
 * the cache budget and there are groups enough for every thread. */
static int NAME(whole_groups)(const fbn_plan *p, ptrdiff_t groups, ptrdiff_t gbytes,
                              int arrays)
{
    long long nt, fuse, tile;
    if (!p->cl || groups < 2 || (p->nth > 1 && groups < 2 * (ptrdiff_t)p->nth))
        return 0;
    fbn_budgets(p->nth, &nt, &fuse, &tile);
    return (long long)gbytes * arrays <= fuse;
}

static int NAME(k_train_ghost)(const void *x, ptrdiff_t groups, ptrdiff_t outer,
                               ptrdiff_t C, ptrdiff_t inner, const void *gamma,
                               const void *beta, const void *z, double eps, int act,
                               const fbn_renorm *rn, void *y, void *mean_out,
                               void *mean_lo_out, void *invstd_out, double *var_out,
                               double *r_out, double *d_out, int nthreads)
{
    fbn_plan p;
    NAME(gfwd) gf;
    NAME(fwd) fg;
    ptrdiff_t og, g, c, parts, cv, nv;
    int whole;
    size_t nd, bytes;
    char *mem;
    double *tmp;
    if (groups == 1 && rn == NULL) /* ordinary batch norm (its own checks) */
        return NAME(k_train_forward)(x, outer, C, inner, gamma, beta, z, eps, act, y,
                                     mean_out, mean_lo_out, invstd_out, var_out,
                                     nthreads);
    if (groups < 1 || outer < 0 || C < 0 || inner < 0 || outer % groups != 0 ||
        !(eps > 0))
        return FBN_EINVAL;
    og = outer / groups;
    if (og * inner < 1 && C > 0)
        return FBN_EINVAL;
    if (rn && (r_out == NULL || d_out == NULL))
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    fbn_plan_make_g(&p, groups, og, C, inner, sizeof(T), 1, z ? 1 : 0, 1,
                    FBN_OP_STATS | FBN_OP_APPLY, nthreads);
    parts = fbn_plan_parts(&p);
    cv = p.cl ? p.Cv : 0;
    nv = p.cl && p.fold > 1 ? p.Cv : 0;
    whole = NAME(whole_groups)(&p, groups, og * C * inner * (ptrdiff_t)sizeof(T),
                               z ? 3 : 2);
    /* per group: 2*parts doubles of moments and the constants; then
     * 2*C + 2*cv doubles for the merges (per group for whole-group items) */
    nd = 2 * (size_t)groups * (size_t)parts +
         (whole ? (size_t)groups : 1) * (2 * (size_t)C + 2 * (size_t)cv);
    bytes = sizeof(double) * nd + sizeof(R) * 4 * (size_t)groups * (size_t)(C + nv);
    mem = (char *)malloc(bytes);
    if (mem == NULL)
        return FBN_ENOMEM;
    memset(&gf, 0, sizeof gf);
    gf.f.p = &p;
    gf.f.x = x;
    gf.f.z = z;
    gf.f.gamma = gamma;
    gf.f.beta = beta;
    gf.f.y = y;
    gf.f.act = act;
    gf.f.eps = eps;
    gf.f.mean_out = mean_out;
    gf.f.mean_lo_out = mean_lo_out;
    gf.f.invstd_out = invstd_out;
    gf.f.var_out = var_out;
    gf.f.rn = rn;
    gf.f.r_out = rn ? r_out : NULL;
    gf.f.d_out = rn ? d_out : NULL;
    gf.f.pm = (double *)mem;
    gf.f.pq = gf.f.pm + groups * parts;
    tmp = gf.f.pq + groups * parts;
    gf.f.coef = (R *)(mem + sizeof(double) * nd);
    gf.f.coefv = nv ? gf.f.coef + 4 * C : gf.f.coef;
    gf.vals = og * C * inner;
    gf.parts = parts;
    gf.ncoef = 4 * (C + nv);
    gf.gtmp = tmp;
    if (p.fused) {
        NAME(gfwd_run)(&gf, groups, NAME(item_fused_tile), p.ntiles, FBN_FORWARD);
    } else if (whole) {
        fbn_parallel_for(groups, NAME(item_group_fwd), &gf, p.nth, FBN_FORWARD | p.light);
    } else {
        if (p.cl)
            NAME(gfwd_run)(&gf, groups, NAME(item_stats_rows), fbn_stat_items(&p),
                           FBN_FORWARD);
        else
            NAME(gfwd_run)(&gf, groups, NAME(item_stats_tile), p.ntiles, FBN_FORWARD);
        for (g = 0; g < groups; g++) {
            NAME(gfwd_group)(&gf, g, &fg);
            NAME(gmerge)(&fg, tmp, tmp + C, tmp + 2 * C, tmp + 2 * C + cv);
            for (c = 0; c < C; c++)
                NAME(finish_channel)(&fg, c, tmp[c], tmp[C + c]);
            if (p.cl)
                NAME(unfold_coef)(&p, fg.coef, fg.coefv);
        }
        NAME(gfwd_run)(&gf, groups, NAME(item_apply), fbn_apply_items(&p), FBN_REVERSE);
    }
    if (p.nt)
        fbn_sfence();
    free(mem);
    return FBN_OK;
}

/* ---- backward ----------------------------------------------------------- */

/* The shared state of a ghost backward (as NAME(gfwd)). */
typedef struct {
    NAME(bwd) b;      /* group 0 */
    ptrdiff_t vals, parts, ncoef;
    ptrdiff_t cv;     /* channel-last: Cv (the doubles of b.m per group) */
    fbn_item_fn item;
    ptrdiff_t per;
    double *gtmp;     /* whole-group items: 2*C + 2*Cv doubles per group */
} NAME(gbwd);

static void NAME(gbwd_group)(const NAME(gbwd) *gb, ptrdiff_t g, NAME(bwd) *b)
{
    ptrdiff_t C = gb->b.p->C, v = g * gb->vals;
    *b = gb->b;
    b->dy += v;
    b->x += v;
    if (b->y)
        b->y += v;
    b->dx += v;
    if (b->dz)
        b->dz += v;
    b->mean += g * C;
    b->invstd += g * C;
    b->pd += g * gb->parts;
    b->px += g * gb->parts;
    b->m += g * gb->cv;
    b->k += g * gb->ncoef;
    b->kv = gb->b.kv == gb->b.k ? b->k : b->k + 4 * C;
    if (b->fk) {
        b->fk += g * gb->ncoef;
        b->fkv = gb->b.fkv == gb->b.fk ? b->fk : b->fk + 4 * C;
    }
    if (b->rr) {
        b->rr += g * C;
        b->rd += g * C;
    }
    if (b->mean_lo)
        b->mean_lo += g * C;
    b->dg64 += g * C;
    b->db64 += g * C;
}

static void NAME(item_gbwd)(void *arg, ptrdiff_t t)
{
    const NAME(gbwd) *gb = (const NAME(gbwd) *)arg;
    NAME(bwd) b;
    NAME(gbwd_group)(gb, t / gb->per, &b);
    gb->item(&b, t % gb->per);
}

static void NAME(gbwd_run)(NAME(gbwd) *gb, ptrdiff_t groups, fbn_item_fn item,
                           ptrdiff_t per, int flags)
{
    gb->item = item;
    gb->per = per;
    fbn_parallel_for(groups * per, NAME(item_gbwd), gb, gb->b.p->nth,
                     flags | gb->b.p->light);
}

/* The totals half of bsums_phase for one group (its items have run). */
static void NAME(gbtotals)(const NAME(bwd) *b, double *sdy, double *sdyx, double *sv)
{
    const fbn_plan *p = b->p;
    ptrdiff_t c, i, j;
    if (p->cl) {
        double *s0 = sv, *s1 = sv + p->Cv;
        for (j = 0; j < p->Cv; j++)
            s0[j] = s1[j] = 0.0;
        for (i = 0; i < p->nb; i++)
            for (j = 0; j < p->Cv; j++) {
                s0[j] += b->pd[i * p->Cv + j];
                s1[j] += b->px[i * p->Cv + j];
            }
        for (c = 0; c < p->C; c++) {
            double t0 = s0[c], t1 = s1[c];
            for (i = 1; i < p->fold; i++) {
                t0 += s0[c + i * p->C];
                t1 += s1[c + i * p->C];
            }
            if (p->rem > 0) {
                t0 += b->pd[p->nb * p->Cv + c];
                t1 += b->px[p->nb * p->Cv + c];
            }
            sdy[c] = t0;
            sdyx[c] = t1;
        }
    } else {
        for (c = 0; c < p->C; c++)
            NAME(chunk_totals)(b, c, sdy + c, sdyx + c);
    }
}

/* A whole channel-last group of the backward in one item (as
 * item_group_fwd): its sums, totals and constants, then its dx. */
static void NAME(item_group_bwd)(void *arg, ptrdiff_t g)
{
    const NAME(gbwd) *gb = (const NAME(gbwd) *)arg;
    const fbn_plan *p = gb->b.p;
    ptrdiff_t i, c, C = p->C;
    double *tmp = gb->gtmp + g * (2 * C + 2 * p->Cv);
    NAME(bwd) b;
    NAME(gbwd_group)(gb, g, &b);
    if (b.fk)
        NAME(fwd_means)(&b, tmp, 0);
    for (i = 0; i < fbn_stat_items(p); i++)
        NAME(item_bsums_rows)(&b, i);
    NAME(gbtotals)(&b, tmp, tmp + C, tmp + 2 * C);
    for (c = 0; c < C; c++)
        NAME(bfinish_channel)(&b, c, tmp[c], tmp[C + c], (double)p->ntot);
    NAME(unfold_coef)(p, b.k, b.kv);
    for (i = 0; i < fbn_apply_items(p); i++)
        NAME(item_bapply)(&b, i);
}

static int NAME(k_backward_ghost)(const void *dy, const void *x, const void *y,
                                  int act, ptrdiff_t groups, ptrdiff_t outer,
                                  ptrdiff_t C, ptrdiff_t inner, const void *mean_v,
                                  const void *invstd, const void *gamma, const void *beta,
                                  const void *mean_lo, const double *r, const double *d,
                                  int training, void *dx, void *dz, void *dgamma_v,
                                  void *dbeta_v, int nthreads)
{
    fbn_plan p;
    NAME(gbwd) gb;
    NAME(bwd) bg;
    ptrdiff_t og, g, c, j, parts, cv, nv;
    int whole;
    size_t nd, bytes;
    char *mem;
    double *tmp, *dg64, *db64;
    const R *mean = (const R *)mean_v;
    R *dgamma = (R *)dgamma_v, *dbeta = (R *)dbeta_v;
    if (groups == 1 && r == NULL && d == NULL) /* ordinary (its own checks) */
        return NAME(k_backward)(dy, x, y, act, outer, C, inner, mean, invstd, gamma, beta,
                                mean_lo, training, dx, dz, dgamma, dbeta, nthreads);
    if (groups < 1 || outer < 0 || C < 0 || inner < 0 || outer % groups != 0 ||
        (r == NULL) != (d == NULL))
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    if (outer * inner == 0) {
        for (c = 0; c < C; c++)
            dgamma[c] = dbeta[c] = (R)0;
        return FBN_OK;
    }
    og = outer / groups;
    fbn_plan_make_g(&p, groups, og, C, inner, sizeof(T), y ? 3 : 2, 0, dz ? 2 : 1,
                    FBN_OP_STATS | FBN_OP_APPLY, nthreads);
    parts = fbn_plan_parts(&p);
    cv = p.cl ? p.Cv : 0;
    nv = p.cl && p.fold > 1 ? p.Cv : 0;
    whole = NAME(whole_groups)(&p, groups, og * C * inner * (ptrdiff_t)sizeof(T),
                               (y ? 3 : 2) + (dz ? 2 : 1));
    /* per group: 2*parts doubles of sums, cv doubles of means, the two
     * gradients (2*C doubles) and the constants; then 2*C + 2*cv doubles
     * for the totals (per group for whole-group items) */
    nd = (size_t)groups * (2 * (size_t)parts + (size_t)cv + 2 * (size_t)C) +
         (whole ? (size_t)groups : 1) * (2 * (size_t)C + 2 * (size_t)cv);
    /* (twice the constants for the mask from x: the forward's too) */
    bytes = sizeof(double) * nd + sizeof(R) * 4 * (size_t)groups * (size_t)(C + nv) *
            (act != FBN_ACT_NONE && y == NULL ? 2 : 1);
    mem = (char *)malloc(bytes);
    if (mem == NULL)
        return FBN_ENOMEM;
    memset(&gb, 0, sizeof gb);
    NAME(bwd_init)(&gb.b, &p, dy, x, y, act, mean, invstd, gamma, training, dx, dz);
    gb.b.rr = r;
    gb.b.rd = d;
    gb.b.pd = (double *)mem;
    gb.b.px = gb.b.pd + groups * parts;
    gb.b.m = gb.b.px + groups * parts;
    dg64 = gb.b.m + groups * cv;
    db64 = dg64 + groups * C;
    tmp = db64 + groups * C;
    gb.b.dg64 = dg64;
    gb.b.db64 = db64;
    gb.b.k = (R *)(mem + sizeof(double) * nd);
    gb.b.kv = nv ? gb.b.k + 4 * C : gb.b.k;
    gb.b.beta = (const R *)beta;
    if (act != FBN_ACT_NONE && y == NULL) { /* the mask from x (as k_backward) */
        gb.b.fk = gb.b.k + 4 * groups * (C + nv);
        gb.b.fkv = nv ? gb.b.fk + 4 * C : gb.b.fk;
        gb.b.mean_lo = training ? (const R *)mean_lo : NULL; /* (as k_backward) */
        gb.b.again = training && sizeof(R) < sizeof(double) && !gb.b.mean_lo;
    }
    gb.vals = og * C * inner;
    gb.parts = parts;
    gb.ncoef = 4 * (C + nv);
    gb.cv = cv;
    if (p.cl) /* each virtual channel's mean, in double */
        for (g = 0; g < groups; g++)
            for (j = 0; j < cv; j++)
                gb.b.m[g * cv + j] = (double)mean[g * C + j % C];
    gb.gtmp = tmp;
    if (gb.b.fk && !(p.fused && gb.b.again) && !(whole && !p.fused))
        for (g = 0; g < groups; g++) { /* (whole groups: in their items) */
            NAME(gbwd_group)(&gb, g, &bg);
            NAME(fwd_means)(&bg, tmp, 1);
        }
    if (p.fused) {
        NAME(gbwd_run)(&gb, groups, NAME(item_bfused_tile), p.ntiles, FBN_FORWARD);
    } else if (whole) {
        fbn_parallel_for(groups, NAME(item_group_bwd), &gb, p.nth, FBN_FORWARD | p.light);
    } else {
        if (p.cl)
            NAME(gbwd_run)(&gb, groups, NAME(item_bsums_rows), fbn_stat_items(&p),
                           FBN_FORWARD);
        else
            NAME(gbwd_run)(&gb, groups, NAME(item_bsums_tile), p.ntiles, FBN_FORWARD);
        for (g = 0; g < groups; g++) {
            NAME(gbwd_group)(&gb, g, &bg);
            NAME(gbtotals)(&bg, tmp, tmp + C, tmp + 2 * C);
            for (c = 0; c < C; c++)
                NAME(bfinish_channel)(&bg, c, tmp[c], tmp[C + c], (double)p.ntot);
            if (p.cl)
                NAME(unfold_coef)(&p, bg.k, bg.kv);
        }
        NAME(gbwd_run)(&gb, groups, NAME(item_bapply), fbn_apply_items(&p), FBN_REVERSE);
    }
    if (p.nt)
        fbn_sfence();
    /* the gradients of gamma and beta: sums over the groups, in order */
    for (c = 0; c < C; c++) {
        double sg = dg64[c], sb = db64[c];
        for (g = 1; g < groups; g++) {
            sg += dg64[g * C + c];
            sb += db64[g * C + c];
        }
        dgamma[c] = (R)sg;
        dbeta[c] = (R)sb;
    }
    free(mem);
    return FBN_OK;
}


