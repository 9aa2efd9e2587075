/*
 * backward_impl.h -- the backward kernels, written once for an element type.
 * Included at the end of kernels_impl.h (T, R, SFX, NAME, FBN_LD and
 * FBN_ST defined there), with the same plans and items as the forward.
 *
 * With dy' = dy * (y > 0) when the forward fused a ReLU (y given), the
 * per-channel reductions are sum_dy = sum(dy') and
 * sum_dyxmu = sum(dy' * (x - mean)); then, per value,
 *   training: dx = A*dy' + B*(x - mean) + D,
 *             A = g*invstd, B = -A*invstd^2*sum_dyxmu/n, D = -A*sum_dy/n
 *   frozen:   dx = A*dy'
 * and the residual's gradient (dz) is dy'.
 *
 * The mask from x: with an activation and no y, the mask is that of the
 * forward's output recomputed from x.  The forward's constants (fk, four
 * arrays of C as coef_one makes them, from the statistics it returned,
 * gamma, beta and a renormalised forward's r, d) go through the forward's
 * own elementwise code (apply_any, rows_any) into an L1 tile just before
 * the tile is used, so each mask is bitwise the forward's (the value
 * rounded to T first, as the forward stored it), for the transform's
 * arithmetic instead of a read of y.  For float and double the forward's
 * t = ((x - mh) - ml) * a + b alone is made (y passes the mask exactly
 * where t does): in registers where the channel-last sums use it
 * (ldgx, bsum_strips16), or into the tile (mask_grad_x, mask_row_x,
 * t_rows).  For float and the half types a batch
 * forward's ml (the part of its double mean below R's precision) is not in
 * the returned mean: the forward's statistics of x are taken again with
 * its own code (tile_moments in a fused tile, stats_phase otherwise), which
 * gives them bit for bit.
 */

#if !FBN_HALF /* (half_impl.h: bsum_body) */
/* Adds the reductions of n contiguous values to the lane accumulators
 * s0 (sum g) and s1 (sum g * (x - m)), FBN_LANES + 1 each, in double. */
static inline void NAME(bsum_plain)(const T *g, const T *x, ptrdiff_t n,
                                    double m, double *s0, double *s1)
{
    double t0 = s0[FBN_LANES], t1 = s1[FBN_LANES];
    ptrdiff_t i = 0;
#if FBN_VEC
    NAME(d8) a0, b0, a1, b1, mv = {m, m, m, m, m, m, m, m}, ga, gb;
    NAME(t8) u, w;
    memcpy(&a0, s0, sizeof a0);
    memcpy(&b0, s0 + 8, sizeof b0);
    memcpy(&a1, s1, sizeof a1);
    memcpy(&b1, s1 + 8, sizeof b1);
    for (; i + FBN_LANES <= n; i += FBN_LANES) {
        FBN_LOAD8(u, g + i);
        FBN_LOAD8(w, g + i + 8);
        ga = FBN_TO_D8(u);
        gb = FBN_TO_D8(w);
        a0 += ga;
        b0 += gb;
        FBN_LOAD8(u, x + i);
        FBN_LOAD8(w, x + i + 8);
        a1 += ga * (FBN_TO_D8(u) - mv);
        b1 += gb * (FBN_TO_D8(w) - mv);
    }
    memcpy(s0, &a0, sizeof a0);
    memcpy(s0 + 8, &b0, sizeof b0);
    memcpy(s1, &a1, sizeof a1);
    memcpy(s1 + 8, &b1, sizeof b1);
#else
    double a0[FBN_LANES], a1[FBN_LANES];
    int k;
    memcpy(a0, s0, sizeof a0);
    memcpy(a1, s1, sizeof a1);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++) {
            double gk = (double)FBN_LD(g[i + k]);
            a0[k] += gk;
            a1[k] += gk * ((double)FBN_LD(x[i + k]) - m);
        }
    memcpy(s0, a0, sizeof a0);
    memcpy(s1, a1, sizeof a1);
#endif
    for (; i < n; i++) {
        double gk = (double)FBN_LD(g[i]);
        t0 += gk;
        t1 += gk * ((double)FBN_LD(x[i]) - m);
    }
    s0[FBN_LANES] = t0;
    s1[FBN_LANES] = t1;
}
#endif

/* dy' = dy where y passes the mask of activation act (pass()), else 0, for
 * n values (a select, not a product, so an infinite dy where the mask is
 * closed gives 0, not NaN). */
static inline void NAME(mask_grad)(const T *dy, const T *y, int act, T *g, ptrdiff_t n)
{
    ptrdiff_t i;
    if (act == FBN_ACT_RELU6) {
        FBN_OMP_SIMD
        for (i = 0; i < n; i++)
            g[i] = NAME(pass)(FBN_LD(y[i]), FBN_ACT_RELU6) ? dy[i] : (T)0;
    } else {
        FBN_OMP_SIMD
        for (i = 0; i < n; i++) /* (T)0: +0 in every type */
            g[i] = NAME(pass)(FBN_LD(y[i]), FBN_ACT_RELU) ? dy[i] : (T)0;
    }
}

/* Channels [c0, c0 + n) of four arrays of C constants into kc (four of n). */
static inline void NAME(kslice)(const R *k, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t n, R *kc)
{
    int j;
    for (j = 0; j < 4; j++)
        memcpy(kc + j * n, k + j * C + c0, sizeof(R) * (size_t)n);
}

/* The mask from x reads x (into y's tile) and then dy, one after the other:
 * dy's lines of this tile of n values and both arrays' lines of the next
 * are prefetched first, so that the two memory streams overlap as they do
 * when the loops read dy, x and y together (dense (4096,1024) float32 at 1
 * thread, on a loaded machine: 1.5-1.8x the y-path's time without it,
 * 1.2-1.3x with it). */
static inline void NAME(gen_prefetch)(const T *x, const T *dy, ptrdiff_t n)
{
    size_t b = (size_t)n * sizeof(T);
    fbn_prefetch(dy, 0, b);
    fbn_prefetch(x, b, b);
    fbn_prefetch(dy, b, b);
}

/* The forward's output of n values of channel c (channel-first; fk: its
 * 4*C constants) into yb. */
static inline void NAME(gen_run)(const T *x, T *yb, ptrdiff_t n, const R *fk, ptrdiff_t C,
                                 ptrdiff_t c, int act)
{
    NAME(apply_any)(x, NULL, yb, n, fk[c], fk[C + c], fk[2 * C + c], fk[3 * C + c], act);
}

#if !FBN_SUM_REGS /* (bsum_long_rows') */
/* The forward's output of channels [c0, c0 + n) of rows [0, nr) of a
 * channel-last block of rows of C values (fk: 4*C constants; kc: scratch
 * of 4*n, unused when n == C) into yb (nr rows of n). */
static void NAME(gen_rows)(const T *x, T *yb, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t n,
                           ptrdiff_t nr, const R *fk, R *kc, int act)
{
    ptrdiff_t r;
    if (n == C) {
        NAME(rows_any)(x, NULL, yb, C, 0, nr, fk, act);
        return;
    }
    NAME(kslice)(fk, C, c0, n, kc);
    for (r = 0; r < nr; r++)
        NAME(rows_any)(x + r * C + c0, NULL, yb + r * n, n, 0, 1, kc, act);
}
#endif

/* The reductions of n values with dy' = dy * (y > 0) when y is given: the
 * mask is applied tile by tile into an L1 buffer first, so the reduction
 * itself has no branch (a branch on a random ReLU mask mispredicts half the
 * time). */
#if !FBN_HALF /* (half_impl.h) */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, int act, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    T g[FBN_TILE];
    ptrdiff_t t;
    if (!y) {
        NAME(bsum_plain)(dy, x, n, m, s0, s1);
        return;
    }
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(mask_grad)(dy + t, y + t, act, g, len);
        NAME(bsum_plain)(g, x + t, len, m, s0, s1);
    }
}
#endif

#if !FBN_HALF
/* mask_grad with the mask of the forward's output of x (constants mh, ml,
 * a, b): for float and double y is the forward's t itself, activated, and
 * y passes the mask exactly where t does, so t is not stored. */
static inline void NAME(mask_grad_x)(const T *dy, const T *x, int act, R mh, R ml, R a,
                                     R b, T *g, ptrdiff_t n)
{
    ptrdiff_t i;
    if (act == FBN_ACT_RELU6) {
        FBN_OMP_SIMD
        for (i = 0; i < n; i++) /* (apply_body's t) */
            g[i] = NAME(pass)(((x[i] - mh) - ml) * a + b, FBN_ACT_RELU6) ? dy[i] : (T)0;
    } else {
        FBN_OMP_SIMD
        for (i = 0; i < n; i++)
            g[i] = NAME(pass)(((x[i] - mh) - ml) * a + b, FBN_ACT_RELU) ? dy[i] : (T)0;
    }
}
#endif

#if !FBN_HALF
/* mask_grad_x of one channel-last row of C values (fk: 4*C constants). */
static inline void NAME(mask_row_x)(const T *dy, const T *x, int act, ptrdiff_t C,
                                    const R *fk, T *g)
{
    const R *mh = fk, *ml = fk + C, *a = fk + 2 * C, *b = fk + 3 * C;
    ptrdiff_t c;
    if (act == FBN_ACT_RELU6) {
        FBN_OMP_SIMD
        for (c = 0; c < C; c++)
            g[c] = NAME(pass)(((x[c] - mh[c]) - ml[c]) * a[c] + b[c], FBN_ACT_RELU6)
                       ? dy[c] : (T)0;
    } else {
        FBN_OMP_SIMD
        for (c = 0; c < C; c++)
            g[c] = NAME(pass)(((x[c] - mh[c]) - ml[c]) * a[c] + b[c], FBN_ACT_RELU)
                       ? dy[c] : (T)0;
    }
}
#endif

/* bsum_body with the mask from x, tile by tile (FBN_TILE, a multiple of
 * the lanes: the sums of one call on the n values): for float and double
 * the mask straight from x (mask_grad_x, then bsum_body's bsum_plain), for
 * the half types y's tile recomputed first (rounded to T). */
static void NAME(bsum_gen)(const T *dy, const T *x, int act, ptrdiff_t n, const R *fk,
                           ptrdiff_t C, ptrdiff_t c, double m, double *s0, double *s1)
{
    T yb[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(gen_prefetch)(x + t, dy + t, len);
#if FBN_HALF
        NAME(gen_run)(x + t, yb, len, fk, C, c, act);
        NAME(bsum_body)(dy + t, x + t, yb, act, len, m, s0, s1);
#else
        NAME(mask_grad_x)(dy + t, x + t, act, fk[c], fk[C + c], fk[2 * C + c],
                          fk[3 * C + c], yb, len);
        NAME(bsum_plain)(yb, x + t, len, m, s0, s1);
#endif
    }
}

/* The reductions over chunk k of channels [c0, c1) (channel-first), in
 * memory order, into the lane accumulators a0, a1 (FBN_ACC per channel);
 * as in chunk_pass, each channel's values arrive in their own order. */
static void NAME(bchunk_pass)(const T *dy, const T *x, const T *y, const R *fk,
                              int act, const fbn_plan *p, ptrdiff_t c0, ptrdiff_t c1,
                              ptrdiff_t k, const R *mean, double *a0, double *a1)
{
    ptrdiff_t inner = p->inner, C = p->C;
    ptrdiff_t i0 = k * FBN_CHUNK, i1 = fbn_min(i0 + FBN_CHUNK, p->ntot), o, c;
    for (o = i0 / inner; o * inner < i1; o++) {
        ptrdiff_t j0 = i0 > o * inner ? i0 - o * inner : 0;
        ptrdiff_t len = fbn_min(i1 - o * inner, inner) - j0;
        ptrdiff_t off = o * C * inner + j0;
        for (c = c0; c < c1; c++) {
            ptrdiff_t q = off + c * inner;
            if (fk)
                NAME(bsum_gen)(dy + q, x + q, act, len, fk, C, c, (double)mean[c],
                               a0 + (c - c0) * FBN_ACC, a1 + (c - c0) * FBN_ACC);
            else
                NAME(bsum_body)(dy + q, x + q, y ? y + q : NULL, act, len,
                                (double)mean[c], a0 + (c - c0) * FBN_ACC,
                                a1 + (c - c0) * FBN_ACC);
        }
    }
}

/* The reductions of chunks [k0, k1) of channels [c0, c1) (at most
 * FBN_TILE_C) into pd/px[c * nk + k]. */
static void NAME(tile_sums)(const T *dy, const T *x, const T *y, const R *fk, int act,
                            const fbn_plan *p, ptrdiff_t c0, ptrdiff_t c1,
                            ptrdiff_t k0, ptrdiff_t k1, const R *mean,
                            double *pd, double *px)
{
    double a0[FBN_TILE_C * FBN_ACC], a1[FBN_TILE_C * FBN_ACC];
    ptrdiff_t w = c1 - c0, k, c;
    for (k = k0; k < k1; k++) {
        memset(a0, 0, sizeof(double) * FBN_ACC * (size_t)w);
        memset(a1, 0, sizeof(double) * FBN_ACC * (size_t)w);
        NAME(bchunk_pass)(dy, x, y, fk, act, p, c0, c1, k, mean, a0, a1);
        for (c = 0; c < w; c++) {
            pd[(c0 + c) * p->nk + k] = fbn_lanes_total(a0 + c * FBN_ACC);
            px[(c0 + c) * p->nk + k] = fbn_lanes_total(a1 + c * FBN_ACC);
        }
    }
}

#if FBN_SUM_REGS
/* AVX-512 and AVX2, float and double: FBN_DW channels of a row (dy, x and
 * y, or fk, at the first of them), dy' and x widened into double
 * registers; dy' = dy where the mask passes (mode 1: from y; mode 2: from
 * x, as mask_row_x, with the forward's constants fk, four arrays of C),
 * else +0; mode 0: dy.  The mask's arithmetic is R's, lane by lane, as in
 * mask_grad and mask_row_x, so the same bits. */
static inline void NAME(ldgx)(const T *dy, const T *x, const T *y, const R *fk, ptrdiff_t C,
                              int mode, int act, NAME(dv) *g, NAME(dv) *xd)
{
#if FBN_F16C == 512
    if (sizeof(T) == 4) {
        const float *f = (const float *)(const void *)fk;
        __m256 d = _mm256_loadu_ps((const float *)(const void *)dy);
        __m256 v = _mm256_loadu_ps((const float *)(const void *)x), t;
        if (mode) {
            __mmask8 k;
            if (mode == 2)
                t = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(v,
                        _mm256_loadu_ps(f)), _mm256_loadu_ps(f + C)),
                        _mm256_loadu_ps(f + 2 * C)), _mm256_loadu_ps(f + 3 * C));
            else
                t = _mm256_loadu_ps((const float *)(const void *)y);
            k = _mm256_cmp_ps_mask(t, _mm256_setzero_ps(), _CMP_GT_OQ);
            if (act == FBN_ACT_RELU6)
                k &= _mm256_cmp_ps_mask(t, _mm256_set1_ps(6.0f), _CMP_LT_OQ);
            d = _mm256_maskz_mov_ps(k, d);
        }
        *g = _mm512_cvtps_pd(d);
        *xd = _mm512_cvtps_pd(v);
    } else {
        const double *f = (const double *)(const void *)fk;
        __m512d d = _mm512_loadu_pd((const double *)(const void *)dy);
        __m512d v = _mm512_loadu_pd((const double *)(const void *)x), t;
        if (mode) {
            __mmask8 k;
            if (mode == 2)
                t = _mm512_add_pd(_mm512_mul_pd(_mm512_sub_pd(_mm512_sub_pd(v,
                        _mm512_loadu_pd(f)), _mm512_loadu_pd(f + C)),
                        _mm512_loadu_pd(f + 2 * C)), _mm512_loadu_pd(f + 3 * C));
            else
                t = _mm512_loadu_pd((const double *)(const void *)y);
            k = _mm512_cmp_pd_mask(t, _mm512_setzero_pd(), _CMP_GT_OQ);
            if (act == FBN_ACT_RELU6)
                k &= _mm512_cmp_pd_mask(t, _mm512_set1_pd(6.0), _CMP_LT_OQ);
            d = _mm512_maskz_mov_pd(k, d);
        }
        *g = d;
        *xd = v;
    }
#else /* AVX2 */
    if (sizeof(T) == 4) {
        const float *f = (const float *)(const void *)fk;
        __m128 d = _mm_loadu_ps((const float *)(const void *)dy);
        __m128 v = _mm_loadu_ps((const float *)(const void *)x), t, k;
        if (mode) {
            if (mode == 2)
                t = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(_mm_sub_ps(v, _mm_loadu_ps(f)),
                        _mm_loadu_ps(f + C)), _mm_loadu_ps(f + 2 * C)), _mm_loadu_ps(f + 3 * C));
            else
                t = _mm_loadu_ps((const float *)(const void *)y);
            k = _mm_cmp_ps(t, _mm_setzero_ps(), _CMP_GT_OQ);
            if (act == FBN_ACT_RELU6)
                k = _mm_and_ps(k, _mm_cmp_ps(t, _mm_set1_ps(6.0f), _CMP_LT_OQ));
            d = _mm_and_ps(k, d);
        }
        *g = _mm256_cvtps_pd(d);
        *xd = _mm256_cvtps_pd(v);
    } else {
        const double *f = (const double *)(const void *)fk;
        __m256d d = _mm256_loadu_pd((const double *)(const void *)dy);
        __m256d v = _mm256_loadu_pd((const double *)(const void *)x), t, k;
        if (mode) {
            if (mode == 2)
                t = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(_mm256_sub_pd(v,
                        _mm256_loadu_pd(f)), _mm256_loadu_pd(f + C)),
                        _mm256_loadu_pd(f + 2 * C)), _mm256_loadu_pd(f + 3 * C));
            else
                t = _mm256_loadu_pd((const double *)(const void *)y);
            k = _mm256_cmp_pd(t, _mm256_setzero_pd(), _CMP_GT_OQ);
            if (act == FBN_ACT_RELU6)
                k = _mm256_and_pd(k, _mm256_cmp_pd(t, _mm256_set1_pd(6.0), _CMP_LT_OQ));
            d = _mm256_and_pd(k, d);
        }
        *g = d;
        *xd = v;
    }
#endif
}

/* bsum_long_rows in registers (mode and act constants in each instance):
 * blocks of rows of about FBN_TILE * 4 values, each taken in strips of
 * FBN_BQ registers of channels whose accumulators, means and constants
 * stay in registers over the block's rows (dy' made and used there, not
 * stored); the last C % (FBN_BQ * FBN_DW) channels one by one.  Each
 * channel is summed over the rows in order, as the plain loop does: the
 * same bits. */
#define FBN_BQ 4
static inline void NAME(bsum_long_regs)(const T *dy, const T *x, const T *y, const R *fk,
                                        ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                        const double *m, double *s0, double *s1, int mode,
                                        int act)
{
    const ptrdiff_t W = FBN_BQ * FBN_DW, rb = fbn_max(1, 4 * FBN_TILE / C);
    ptrdiff_t rr, re, r, c, c0;
    for (rr = r0; rr < r1; rr = re) {
        re = fbn_min(rr + rb, r1);
        for (c0 = 0; c0 + W <= C; c0 += W) {
            NAME(dv) a0[FBN_BQ], a1[FBN_BQ], mv[FBN_BQ], gv, xv;
            int j;
            for (j = 0; j < FBN_BQ; j++) {
                a0[j] = FBN_DV_LD(s0 + c0 + j * FBN_DW);
                a1[j] = FBN_DV_LD(s1 + c0 + j * FBN_DW);
                mv[j] = FBN_DV_LD(m + c0 + j * FBN_DW);
            }
            for (r = rr; r < re; r++)
                for (j = 0; j < FBN_BQ; j++) {
                    ptrdiff_t o = r * C + c0 + j * FBN_DW;
                    NAME(ldgx)(dy + o, x + o, mode == 1 ? y + o : NULL,
                               mode == 2 ? fk + c0 + j * FBN_DW : NULL, C, mode, act, &gv, &xv);
                    a0[j] = FBN_DV_ADD(a0[j], gv);
                    a1[j] = FBN_DV_ADD(a1[j], FBN_DV_MUL(gv, FBN_DV_SUB(xv, mv[j])));
                }
            for (j = 0; j < FBN_BQ; j++) {
                FBN_DV_ST(s0 + c0 + j * FBN_DW, a0[j]);
                FBN_DV_ST(s1 + c0 + j * FBN_DW, a1[j]);
            }
        }
        for (r = rr; r < re; r++)
            for (c = c0; c < C; c++) {
                ptrdiff_t o = r * C + c;
                T gt = dy[o];
                double gc;
                if (mode == 2 && !NAME(pass)(((x[o] - fk[c]) - fk[C + c]) * fk[2 * C + c]
                                             + fk[3 * C + c], act))
                    gt = (T)0;
                if (mode == 1 && !NAME(pass)(FBN_LD(y[o]), act))
                    gt = (T)0;
                gc = (double)gt;
                s0[c] += gc;
                s1[c] += gc * ((double)x[o] - m[c]);
            }
    }
}
#undef FBN_BQ
#endif

/* Reductions of rows [r0, r1) (channel-last) into s0[C], s1[C]. */
/* bsum_rows for long rows: row by row, vectorised across channels (a
 * row's mask applied piece by piece into an L1 buffer; with FBN_SUM_REGS,
 * bsum_long_regs).  s0, s1 start at 0. */
FBN_NOINLINE static void NAME(bsum_long_rows)(const T *dy, const T *x, const T *y,
                                              const R *fk, int act, ptrdiff_t C,
                                              ptrdiff_t r0, ptrdiff_t r1, const double *m,
                                              double *s0, double *s1)
{
#if FBN_SUM_REGS
    if (fk && act == FBN_ACT_RELU6)
        NAME(bsum_long_regs)(dy, x, y, fk, C, r0, r1, m, s0, s1, 2, FBN_ACT_RELU6);
    else if (fk)
        NAME(bsum_long_regs)(dy, x, y, fk, C, r0, r1, m, s0, s1, 2, FBN_ACT_RELU);
    else if (y && act == FBN_ACT_RELU6)
        NAME(bsum_long_regs)(dy, x, y, fk, C, r0, r1, m, s0, s1, 1, FBN_ACT_RELU6);
    else if (y)
        NAME(bsum_long_regs)(dy, x, y, fk, C, r0, r1, m, s0, s1, 1, FBN_ACT_RELU);
    else
        NAME(bsum_long_regs)(dy, x, y, fk, C, r0, r1, m, s0, s1, 0, FBN_ACT_RELU);
#else
    T g[FBN_TILE], yb[FBN_TILE];
    R kc[4 * FBN_TILE];
    ptrdiff_t r, c, c0;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        for (c0 = 0; c0 < C; c0 += FBN_TILE) {
            ptrdiff_t len = fbn_min(FBN_TILE, C - c0);
            const T *gr = dy + r * C + c0;
            if (fk) { /* the mask from x */
                NAME(gen_prefetch)(xr + c0, gr, len);
#if !FBN_HALF
                if (len == C) {
                    NAME(mask_row_x)(gr, xr, act, C, fk, g);
                    gr = g;
                } else
#endif
                {
                    NAME(gen_rows)(xr, yb, C, c0, len, 1, fk, kc, act);
                    NAME(mask_grad)(gr, yb, act, g, len);
                    gr = g;
                }
            } else if (y) {
                NAME(mask_grad)(gr, y + r * C + c0, act, g, len);
                gr = g;
            }
        FBN_OMP_SIMD
            for (c = 0; c < len; c++) {
                double gc = (double)FBN_LD(gr[c]);
                s0[c0 + c] += gc;
                s1[c0 + c] += gc * ((double)FBN_LD(xr[c0 + c]) - m[c0 + c]);
            }
        }
    }
#endif
}

#if FBN_SUM_REGS && FBN_F16C == 512
/* bsum_rows' strips of 16 channels on AVX-512 for float (C a multiple of
 * 16): dy' made from y or x (ldgx's arithmetic, 16 lanes) where it is
 * used, the FBN_FLUSH rows' float sums and the strip's double accumulators
 * in registers over the tile's rows.  The same operations lane by lane in
 * the same order as the vector loop, so the same bits. */
static inline void NAME(bsum_strips16)(const T *dy, const T *x, const T *y, const R *fk,
                                       ptrdiff_t C, ptrdiff_t nr, const double *m,
                                       double *s0, double *s1, int mode, int act)
{
    const float *pd = (const float *)(const void *)dy, *px = (const float *)(const void *)x;
    const float *py = (const float *)(const void *)y, *f = (const float *)(const void *)fk;
    ptrdiff_t c0, r, rj;
    for (c0 = 0; c0 < C; c0 += 16) {
        __m512d a0l = _mm512_loadu_pd(s0 + c0), a0h = _mm512_loadu_pd(s0 + c0 + 8);
        __m512d a1l = _mm512_loadu_pd(s1 + c0), a1h = _mm512_loadu_pd(s1 + c0 + 8);
        __m512 mt = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(
                        _mm512_loadu_pd(m + c0))), _mm512_cvtpd_ps(_mm512_loadu_pd(m + c0 + 8)), 1);
        __m512 mh = _mm512_setzero_ps(), ml = mh, fa = mh, fb = mh;
        if (mode == 2) {
            mh = _mm512_loadu_ps(f + c0);
            ml = _mm512_loadu_ps(f + C + c0);
            fa = _mm512_loadu_ps(f + 2 * C + c0);
            fb = _mm512_loadu_ps(f + 3 * C + c0);
        }
        for (r = 0; r < nr; r += FBN_FLUSH) {
            ptrdiff_t re = fbn_min(r + FBN_FLUSH, nr);
            __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
            for (rj = r; rj < re; rj++) {
                ptrdiff_t o = rj * C + c0;
                __m512 d = _mm512_loadu_ps(pd + o), xv = _mm512_loadu_ps(px + o), t;
                if (mode) {
                    __mmask16 k;
                    if (mode == 2)
                        t = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(xv, mh), ml),
                                                        fa), fb);
                    else
                        t = _mm512_loadu_ps(py + o);
                    k = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GT_OQ);
                    if (act == FBN_ACT_RELU6)
                        k &= _mm512_cmp_ps_mask(t, _mm512_set1_ps(6.0f), _CMP_LT_OQ);
                    d = _mm512_maskz_mov_ps(k, d);
                }
                v0 = _mm512_add_ps(v0, d);
                v1 = _mm512_add_ps(v1, _mm512_mul_ps(d, _mm512_sub_ps(xv, mt)));
            }
            a0l = _mm512_add_pd(a0l, _mm512_cvtps_pd(_mm512_castps512_ps256(v0)));
            a0h = _mm512_add_pd(a0h, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v0, 1)));
            a1l = _mm512_add_pd(a1l, _mm512_cvtps_pd(_mm512_castps512_ps256(v1)));
            a1h = _mm512_add_pd(a1h, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v1, 1)));
        }
        _mm512_storeu_pd(s0 + c0, a0l);
        _mm512_storeu_pd(s0 + c0 + 8, a0h);
        _mm512_storeu_pd(s1 + c0, a1l);
        _mm512_storeu_pd(s1 + c0 + 8, a1h);
    }
}
#elif FBN_SUM_REGS && FBN_F16C == 256
/* The same on AVX2: each strip of 16 channels in two registers of 8. */
static inline void NAME(bsum_strips16)(const T *dy, const T *x, const T *y, const R *fk,
                                       ptrdiff_t C, ptrdiff_t nr, const double *m,
                                       double *s0, double *s1, int mode, int act)
{
    const float *pd = (const float *)(const void *)dy, *px = (const float *)(const void *)x;
    const float *py = (const float *)(const void *)y, *f = (const float *)(const void *)fk;
    ptrdiff_t c0, r, rj;
    int q;
    for (c0 = 0; c0 < C; c0 += 16) {
        __m256d a0[4], a1[4];
        __m256 mt[2], mh[2], ml[2], fa[2], fb[2];
        for (q = 0; q < 4; q++) {
            a0[q] = _mm256_loadu_pd(s0 + c0 + 4 * q);
            a1[q] = _mm256_loadu_pd(s1 + c0 + 4 * q);
        }
        for (q = 0; q < 2; q++) {
            ptrdiff_t c = c0 + 8 * q;
            mt[q] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(
                        _mm256_loadu_pd(m + c))), _mm256_cvtpd_ps(_mm256_loadu_pd(m + c + 4)), 1);
            mh[q] = ml[q] = fa[q] = fb[q] = _mm256_setzero_ps();
            if (mode == 2) {
                mh[q] = _mm256_loadu_ps(f + c);
                ml[q] = _mm256_loadu_ps(f + C + c);
                fa[q] = _mm256_loadu_ps(f + 2 * C + c);
                fb[q] = _mm256_loadu_ps(f + 3 * C + c);
            }
        }
        for (r = 0; r < nr; r += FBN_FLUSH) {
            ptrdiff_t re = fbn_min(r + FBN_FLUSH, nr);
            __m256 v0[2], v1[2];
            for (q = 0; q < 2; q++)
                v0[q] = v1[q] = _mm256_setzero_ps();
            for (rj = r; rj < re; rj++)
                for (q = 0; q < 2; q++) {
                    ptrdiff_t o = rj * C + c0 + 8 * q;
                    __m256 d = _mm256_loadu_ps(pd + o), xv = _mm256_loadu_ps(px + o), t, k;
                    if (mode) {
                        if (mode == 2)
                            t = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(xv,
                                    mh[q]), ml[q]), fa[q]), fb[q]);
                        else
                            t = _mm256_loadu_ps(py + o);
                        k = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GT_OQ);
                        if (act == FBN_ACT_RELU6)
                            k = _mm256_and_ps(k, _mm256_cmp_ps(t, _mm256_set1_ps(6.0f),
                                                               _CMP_LT_OQ));
                        d = _mm256_and_ps(k, d);
                    }
                    v0[q] = _mm256_add_ps(v0[q], d);
                    v1[q] = _mm256_add_ps(v1[q], _mm256_mul_ps(d, _mm256_sub_ps(xv, mt[q])));
                }
            for (q = 0; q < 2; q++) {
                a0[2 * q] = _mm256_add_pd(a0[2 * q], _mm256_cvtps_pd(_mm256_castps256_ps128(v0[q])));
                a0[2 * q + 1] = _mm256_add_pd(a0[2 * q + 1],
                                              _mm256_cvtps_pd(_mm256_extractf128_ps(v0[q], 1)));
                a1[2 * q] = _mm256_add_pd(a1[2 * q], _mm256_cvtps_pd(_mm256_castps256_ps128(v1[q])));
                a1[2 * q + 1] = _mm256_add_pd(a1[2 * q + 1],
                                              _mm256_cvtps_pd(_mm256_extractf128_ps(v1[q], 1)));
            }
        }
        for (q = 0; q < 4; q++) {
            _mm256_storeu_pd(s0 + c0 + 4 * q, a0[q]);
            _mm256_storeu_pd(s1 + c0 + 4 * q, a1[q]);
        }
    }
}
#endif

static void FBN_GENERIC(bsum_rows)(const T *dy, const T *x, const T *y, const R *fk,
                                   int act, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                   const double *m, double *s0, double *s1)
{
    T g[FBN_TILE], yb[FBN_TILE];
    ptrdiff_t r, rr, c, c0;
    /* tiles of whole rows (the ReLU mask applied to the tile into an L1
     * buffer first), reduced in strips of FBN_LANES channels whose
     * accumulators stay in registers over the tile's rows; each channel is
     * summed over the rows in order */
    ptrdiff_t rt = FBN_TILE / C;
    int k;
    for (c = 0; c < C; c++)
        s0[c] = s1[c] = 0.0;
    /* sizeof(R): this choice changes the bits, so the half types take the
     * float kernel's */
    if ((size_t)C * sizeof(R) > FBN_STRIP_MAX_ROW) {
        NAME(bsum_long_rows)(dy, x, y, fk, act, C, r0, r1, m, s0, s1);
        return;
    }
    for (rr = r0; rr < r1; rr += rt) {
        ptrdiff_t nr = fbn_min(rt, r1 - rr);
        const T *gt = dy + rr * C, *xt = x + rr * C;
#if FBN_SUM_REGS
        if (sizeof(T) == 4 && C % 16 == 0) {
            const T *yt = y ? y + rr * C : NULL;
            if (fk)
                NAME(gen_prefetch)(xt, gt, nr * C);
            if (fk && act == FBN_ACT_RELU6)
                NAME(bsum_strips16)(gt, xt, yt, fk, C, nr, m, s0, s1, 2, FBN_ACT_RELU6);
            else if (fk)
                NAME(bsum_strips16)(gt, xt, yt, fk, C, nr, m, s0, s1, 2, FBN_ACT_RELU);
            else if (y && act == FBN_ACT_RELU6)
                NAME(bsum_strips16)(gt, xt, yt, fk, C, nr, m, s0, s1, 1, FBN_ACT_RELU6);
            else if (y)
                NAME(bsum_strips16)(gt, xt, yt, fk, C, nr, m, s0, s1, 1, FBN_ACT_RELU);
            else
                NAME(bsum_strips16)(gt, xt, yt, fk, C, nr, m, s0, s1, 0, FBN_ACT_RELU);
            continue;
        }
#endif
        if (fk) { /* the mask from x */
            NAME(gen_prefetch)(xt, gt, nr * C);
#if FBN_HALF
            NAME(rows_any)(xt, NULL, yb, C, 0, nr, fk, act);
            NAME(mask_grad)(gt, yb, act, g, nr * C);
#else
            for (r = 0; r < nr; r++)
                NAME(mask_row_x)(gt + r * C, xt + r * C, act, C, fk, g + r * C);
            (void)yb;
#endif
            gt = g;
        } else if (y) {
            NAME(mask_grad)(gt, y + rr * C, act, g, nr * C);
            gt = g;
        }
        for (c0 = 0; c0 < C; c0 += FBN_LANES) {
            double a0[FBN_LANES], a1[FBN_LANES], mk[FBN_LANES];
            int w = (int)fbn_min(FBN_LANES, C - c0);
            memcpy(a0, s0 + c0, sizeof(double) * (size_t)w);
            memcpy(a1, s1 + c0, sizeof(double) * (size_t)w);
            memcpy(mk, m + c0, sizeof(double) * (size_t)w);
            if (w == FBN_LANES) {
                /* FBN_FLUSH rows at a time summed in T (SIMD-wide for float),
                 * then added to the double accumulators */
                R mt[FBN_LANES];
                for (k = 0; k < FBN_LANES; k++)
                    mt[k] = (R)mk[k]; /* exact: the mean came as R */
                for (r = 0; r < nr; r += FBN_FLUSH) {
                    ptrdiff_t re = fbn_min(r + FBN_FLUSH, nr), rj;
                    R f0[FBN_LANES], f1[FBN_LANES];
#if FBN_VEC
                    NAME(vec) v0[FBN_NV], v1[FBN_NV], vg, vx, vm[FBN_NV];
                    int q;
                    memcpy(vm, mt, sizeof vm);
                    for (q = 0; q < FBN_NV; q++)
                        v0[q] = v1[q] = (NAME(vec)){0};
                    for (rj = r; rj < re; rj++)
                        for (q = 0; q < FBN_NV; q++) {
#if FBN_HALF
                            FBN_LOADN(vg, gt + rj * C + c0 + q * FBN_VN, FBN_VN);
                            FBN_LOADN(vx, xt + rj * C + c0 + q * FBN_VN, FBN_VN);
#else
                            memcpy(&vg, gt + rj * C + c0 + q * FBN_VN, sizeof vg);
                            memcpy(&vx, xt + rj * C + c0 + q * FBN_VN, sizeof vx);
#endif
                            v0[q] += vg;
                            v1[q] += vg * (vx - vm[q]);
                        }
                    memcpy(f0, v0, sizeof f0);
                    memcpy(f1, v1, sizeof f1);
#else
                    for (k = 0; k < FBN_LANES; k++)
                        f0[k] = f1[k] = (R)0;
                    for (rj = r; rj < re; rj++)
                        for (k = 0; k < FBN_LANES; k++) {
                            R gv = FBN_LD(gt[rj * C + c0 + k]);
                            f0[k] += gv;
                            f1[k] += gv * (FBN_LD(xt[rj * C + c0 + k]) - mt[k]);
                        }
#endif
                    for (k = 0; k < FBN_LANES; k++) {
                        a0[k] += (double)f0[k];
                        a1[k] += (double)f1[k];
                    }
                }
            } else {
                for (r = 0; r < nr; r++)
                    for (k = 0; k < w; k++) {
                        double gc = (double)FBN_LD(gt[r * C + c0 + k]);
                        a0[k] += gc;
                        a1[k] += gc * ((double)FBN_LD(xt[r * C + c0 + k]) - mk[k]);
                    }
            }
            memcpy(s0 + c0, a0, sizeof(double) * (size_t)w);
            memcpy(s1 + c0, a1, sizeof(double) * (size_t)w);
        }
    }
}

#if FBN_HALF
/* The block's rows of dy, x (and y) widened into buffers, then the float
 * kernel's bsum_rows (its tiles start at the block's first row either
 * way, so the sums are the same). */
static void NAME(bsum_rows)(const T *dy, const T *x, const T *y, const R *fk, int act,
                            ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1, const double *m,
                            double *s0, double *s1)
{
    ptrdiff_t n = (r1 - r0) * C, t;
    int masked = y || fk;
    T yb[FBN_TILE];
    float *w;
    if ((size_t)C * sizeof(float) > FBN_STRIP_MAX_ROW) {
        /* long rows: the float kernel sums each channel over the rows in
         * order (bsum_long_rows), so the rows can be taken a slice of
         * FBN_LONG_SLICE channels at a time, slice by slice over the
         * block's rows: the slice's double sums stay in L1 (a whole
         * block of widened rows is megabytes, beyond L2); with F16C each
         * row's slice is widened in registers (bsum_row_regs), else into
         * an L1 buffer for the float kernel's loop.  The mask from x: each
         * row's slice of y recomputed into yb (the slice's constants in
         * kc, taken once per slice) */
        R kc[4 * FBN_LONG_SLICE];
        ptrdiff_t r, c;
        for (c = 0; c < C; c++)
            s0[c] = s1[c] = 0.0;
#if FBN_F16C
        for (c = 0; c < C; c += FBN_LONG_SLICE) {
            ptrdiff_t len = fbn_min(FBN_LONG_SLICE, C - c);
            if (fk)
                NAME(kslice)(fk, C, c, len, kc);
            for (r = r0; r < r1; r++) {
                const T *yr = y ? y + r * C + c : NULL;
                if (fk) {
                    NAME(rows_any)(x + r * C + c, NULL, yb, len, 0, 1, kc, act);
                    yr = yb;
                }
                NAME(bsum_row_regs)(dy + r * C + c, x + r * C + c, yr, act, len, m + c,
                                    s0 + c, s1 + c);
            }
        }
#else
        w = (float *)malloc(sizeof(float) * 3 * FBN_LONG_SLICE);
        if (w == NULL) {
            FBN_GENERIC(bsum_rows)(dy, x, y, fk, act, C, r0, r1, m, s0, s1);
            return;
        }
        for (c = 0; c < C; c += FBN_LONG_SLICE) {
            ptrdiff_t len = fbn_min(FBN_LONG_SLICE, C - c);
            if (fk)
                NAME(kslice)(fk, C, c, len, kc);
            for (r = r0; r < r1; r++) {
                NAME(widen)(dy + r * C + c, w, len);
                NAME(widen)(x + r * C + c, w + len, len);
                if (fk) {
                    NAME(rows_any)(x + r * C + c, NULL, yb, len, 0, 1, kc, act);
                    NAME(widen)(yb, w + 2 * len, len);
                } else if (y) {
                    NAME(widen)(y + r * C + c, w + 2 * len, len);
                }
                FBN_F32(bsum_long_rows)(w, w + len, masked ? w + 2 * len : NULL, NULL, act,
                                        len, 0, 1, m + c, s0 + c, s1 + c);
            }
        }
        free(w);
#endif
        return;
    }
    w = (float *)malloc(sizeof(float) * 3 * (size_t)(n > 0 ? n : 1));
    if (w == NULL) {
        FBN_GENERIC(bsum_rows)(dy, x, y, fk, act, C, r0, r1, m, s0, s1);
        return;
    }
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t), o = r0 * C + t;
        NAME(widen)(dy + o, w + t, len);
        NAME(widen)(x + o, w + n + t, len);
        if (y)
            NAME(widen)(y + o, w + 2 * n + t, len);
    }
    if (fk) { /* the mask from x: y recomputed in groups of whole rows */
        ptrdiff_t g = FBN_TILE / C, r;
        for (r = 0; r < r1 - r0; r += g) {
            ptrdiff_t nr = fbn_min(g, r1 - r0 - r);
            NAME(rows_any)(x + (r0 + r) * C, NULL, yb, C, 0, nr, fk, act);
            NAME(widen)(yb, w + 2 * n + r * C, nr * C);
        }
    }
    FBN_F32(bsum_rows)(w, w + n, masked ? w + 2 * n : NULL, NULL, act, C, 0, r1 - r0, m,
                       s0, s1);
    free(w);
}
#endif

#if !FBN_HALF /* (half_impl.h) */
/* dx (and dz) for n contiguous values of one channel.  dx may equal dy. */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    ptrdiff_t i;
        FBN_OMP_SIMD
    for (i = 0; i < n; i++) {
        T gt = dy[i];
        R g, r;
        if (mask)
            gt = NAME(pass)(FBN_LD(y[i]), mask) ? gt : (T)0;
        if (hasdz)
            dz[i] = gt;
        g = FBN_LD(gt);
        r = A * g;
        if (training)
            r += B * (FBN_LD(x[i]) - m) + D;
        dx[i] = FBN_ST(r);
    }
}
#endif

/* Backward constants of a channel, structure of arrays: k[0..C) = mean,
 * k[C..2C) = A, k[2C..3C) = B, k[3C..4C) = D. */
static void NAME(bcoef_one)(R *k, ptrdiff_t C, ptrdiff_t c, const R *mean,
                            const R *invstd, const R *gamma, double sdy,
                            double sdyx, double count)
{
    double inv = (double)invstd[c];
    double A = (gamma ? (double)gamma[c] : 1.0) * inv;
    k[c] = mean[c];
    k[C + c] = (R)A;
    k[2 * C + c] = (R)(-A * inv * inv * (sdyx / count));
    k[3 * C + c] = (R)(-A * (sdy / count));
}

/* dx (and dz) for n contiguous values with the given constants; the flags
 * become constants in each call, so each loop is simple. */
static void NAME(bapply_any)(const T *dy, const T *x, const T *y, int act, T *dx, T *dz,
                             ptrdiff_t n, R m, R A, R B, R D, int training)
{
    FBN_MASK_TRAIN_DZ(NAME(bapply_body), y ? act : FBN_ACT_NONE, training, dz != NULL,
                      dy, x, y, dx, dz, n, m, A, B, D);
}

/* bapply_any with the mask from x (n values of channel c), y recomputed
 * tile by tile. */
static void NAME(bapply_gen)(const T *dy, const T *x, const R *fk, ptrdiff_t C,
                             ptrdiff_t c, int act, T *dx, T *dz, ptrdiff_t n, R m, R A,
                             R B, R D, int training)
{
    T yb[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(gen_prefetch)(x + t, dy + t, len);
        NAME(gen_run)(x + t, yb, len, fk, C, c, act);
        NAME(bapply_any)(dy + t, x + t, yb, act, dx + t, dz ? dz + t : NULL, len, m, A, B,
                         D, training);
    }
}

/* dx (and dz) for the flat values [s0, s1) of a channel-first array; with
 * nt, through L1 tiles that end on 64-byte boundaries of dx, out with
 * non-temporal stores (as apply_span); fk: the mask from x. */
static void NAME(bapply_span)(const T *dy, const T *x, const T *y, const R *fk, int act,
                              T *dx, T *dz, ptrdiff_t C, ptrdiff_t inner, ptrdiff_t s0,
                              ptrdiff_t s1, const R *k, int training, int nt)
{
    T bx[FBN_TILE], bz[FBN_TILE];
    ptrdiff_t i = s0;
    while (i < s1) {
        ptrdiff_t end = nt ? i + fbn_tile_len(dx + i, sizeof(T), s1 - i) : s1;
        ptrdiff_t q = i, r = i / inner, c = r % C, rend = (r + 1) * inner;
        while (q < end) { /* run r (channel c) ends at rend */
            ptrdiff_t len = fbn_min(rend, end) - q;
            T *oq = nt ? bx + (q - i) : dx + q;
            T *zq = dz ? (nt ? bz + (q - i) : dz + q) : NULL;
            if (fk)
                NAME(bapply_gen)(dy + q, x + q, fk, C, c, act, oq, zq, len, k[c],
                                 k[C + c], k[2 * C + c], k[3 * C + c], training);
            else
                NAME(bapply_any)(dy + q, x + q, y ? y + q : NULL, act, oq, zq, len, k[c],
                                 k[C + c], k[2 * C + c], k[3 * C + c], training);
            q += len;
            if (q == rend) {
                rend += inner;
                c = c + 1 == C ? 0 : c + 1;
            }
        }
        if (nt) {
            NAME(stream)(dx + i, bx, (size_t)(end - i) * sizeof(T));
            if (dz)
                NAME(stream)(dz + i, bz, (size_t)(end - i) * sizeof(T));
        }
        i = end;
    }
}

#if !FBN_HALF
/* Rows [r0, r1) of dx (channel-last); the constants are per channel.
 * act: the mask's activation, a constant in each instance (brows_any). */
static inline void NAME(brows_body)(const T *dy, const T *x, const T *y, T *dx,
                                    T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                    const R *k, int training, int act)
{
    const R *m = k, *A = k + C, *B = k + 2 * C, *D = k + 3 * C;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *dr = dy + r * C, *xr = x + r * C;
        const T *yr = y ? y + r * C : NULL;
        T *dxr = dx + r * C;
        T *dzr = dz ? dz + r * C : NULL;
        FBN_OMP_SIMD
        for (c = 0; c < C; c++) {
            T gt = dr[c];
            R g, v;
            if (yr)
                gt = NAME(pass)(FBN_LD(yr[c]), act) ? gt : (T)0;
            if (dzr)
                dzr[c] = gt;
            g = FBN_LD(gt);
            v = A[c] * g;
            if (training)
                v += B[c] * (FBN_LD(xr[c]) - m[c]) + D[c];
            dxr[c] = FBN_ST(v);
        }
    }
}

static void NAME(brows_any)(const T *dy, const T *x, const T *y, int act, T *dx,
                            T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                            const R *k, int training)
{
    if (act == FBN_ACT_RELU6)
        NAME(brows_body)(dy, x, y, dx, dz, C, r0, r1, k, training, FBN_ACT_RELU6);
    else
        NAME(brows_body)(dy, x, y, dx, dz, C, r0, r1, k, training, FBN_ACT_RELU);
}
#elif FBN_F16C == 512
/* AVX-512: the float kernel's brows_any in registers, 16 channels at a time
 * (the last C % 16 masked), as bapply_body does a channel-first run; dx may
 * equal dy. */
static inline void NAME(brows_regs)(const T *dy, const T *x, const T *y, T *dx,
                                    T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                    const R *k, int mask, int training, int hasdz)
{
    const R *m = k, *A = k + C, *B = k + 2 * C, *D = k + 3 * C;
    __m512 g, v;
    ptrdiff_t r, c;
#define FBN_BROW16(ld, ldc, st)                                                 \
    do {                                                                       \
        g = ld(dr + c);                                                        \
        if (mask)                                                              \
            g = _mm512_maskz_mov_ps(NAME(pass16)(ld(yr + c), mask), g);        \
        if (hasdz)                                                             \
            st(dzr + c, g);                                                    \
        v = _mm512_mul_ps(ldc(A + c), g);                                      \
        if (training)                                                          \
            v = _mm512_add_ps(v, _mm512_add_ps(_mm512_mul_ps(ldc(B + c),        \
                    _mm512_sub_ps(ld(xr + c), ldc(m + c))), ldc(D + c)));      \
        st(dxr + c, v);                                                        \
    } while (0)
#define FBN_LDX(p) NAME(loadn)((p), C - c)
#define FBN_LDC(p) _mm512_maskz_loadu_ps(w, (p))
#define FBN_STN(p, t) NAME(storen)((p), (t), C - c)
    for (r = r0; r < r1; r++) {
        const T *dr = dy + r * C, *xr = x + r * C, *yr = mask ? y + r * C : NULL;
        T *dxr = dx + r * C, *dzr = hasdz ? dz + r * C : NULL;
        for (c = 0; c + 16 <= C; c += 16)
            FBN_BROW16(NAME(load16), _mm512_loadu_ps, NAME(store16));
        if (c < C) { /* the last C % 16 channels */
            __mmask16 w = (__mmask16)((1u << (C - c)) - 1u);
            FBN_BROW16(FBN_LDX, FBN_LDC, FBN_STN);
        }
    }
#undef FBN_STN
#undef FBN_LDC
#undef FBN_LDX
#undef FBN_BROW16
}

#elif FBN_F16C == 256
/* AVX2: the same, 8 channels at a time, the last C % 8 one by one in the
 * float kernel's expression. */
static inline void NAME(brows_regs)(const T *dy, const T *x, const T *y, T *dx,
                                    T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                    const R *k, int mask, int training, int hasdz)
{
    const R *m = k, *A = k + C, *B = k + 2 * C, *D = k + 3 * C;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *dr = dy + r * C, *xr = x + r * C, *yr = mask ? y + r * C : NULL;
        T *dxr = dx + r * C, *dzr = hasdz ? dz + r * C : NULL;
        for (c = 0; c + 8 <= C; c += 8) {
            __m256 g = NAME(load8)(dr + c), v;
            if (mask)
                g = _mm256_and_ps(NAME(pass8)(NAME(load8)(yr + c), mask), g);
            if (hasdz)
                NAME(store8)(dzr + c, g);
            v = _mm256_mul_ps(_mm256_loadu_ps(A + c), g);
            if (training)
                v = _mm256_add_ps(v, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(B + c),
                        _mm256_sub_ps(NAME(load8)(xr + c), _mm256_loadu_ps(m + c))),
                        _mm256_loadu_ps(D + c)));
            NAME(store8)(dxr + c, v);
        }
        for (; c < C; c++) {
            float g = FBN_LD(dr[c]), v;
            if (mask && !NAME(pass)(FBN_LD(yr[c]), mask))
                g = 0.0f;
            if (hasdz)
                dzr[c] = FBN_ST(g);
            v = A[c] * g;
            if (training)
                v += B[c] * (FBN_LD(xr[c]) - m[c]) + D[c];
            dxr[c] = FBN_ST(v);
        }
    }
}
#endif

#if FBN_HALF && FBN_F16C
/* The half kernels' rows in registers, flags made constants. */
static void NAME(brows_any)(const T *dy, const T *x, const T *y, int act, T *dx, T *dz,
                            ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1, const R *k,
                            int training)
{
    FBN_MASK_TRAIN_DZ(NAME(brows_regs), y ? act : FBN_ACT_NONE, training, dz != NULL,
                      dy, x, y, dx, dz, C, r0, r1, k);
}
#elif FBN_HALF
/* Groups of rows widened into L1 tiles, the float kernel's brows_any, and
 * rounded once.  Rows longer than a tile go by slices of FBN_TILE
 * channels, each slice's constants copied out once. */
static void NAME(brows_any)(const T *dy, const T *x, const T *y, int act, T *dx, T *dz,
                            ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1, const R *k,
                            int training)
{
    float wg[FBN_TILE], wx[FBN_TILE], wy[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t g = FBN_TILE / C, r;
    if (g < 1) {
        float kc[4 * FBN_TILE];
        ptrdiff_t c0;
        for (c0 = 0; c0 < C; c0 += FBN_TILE) {
            ptrdiff_t len = fbn_min(FBN_TILE, C - c0);
            fbn_coef_slice(k, C, c0, len, kc);
            for (r = r0; r < r1; r++) {
                ptrdiff_t o = r * C + c0;
                NAME(widen)(dy + o, wg, len);
                if (training)
                    NAME(widen)(x + o, wx, len);
                if (y)
                    NAME(widen)(y + o, wy, len);
                FBN_F32(brows_any)(wg, wx, y ? wy : NULL, act, wg, dz ? wz : NULL, len, 0, 1,
                                   kc, training);
                if (dz)
                    NAME(narrow)(wz, dz + o, len);
                NAME(narrow)(wg, dx + o, len);
            }
        }
        return;
    }
    for (r = r0; r < r1; r += g) {
        ptrdiff_t len = fbn_min(g, r1 - r) * C, o = r * C;
        NAME(widen)(dy + o, wg, len);
        if (training)
            NAME(widen)(x + o, wx, len);
        if (y)
            NAME(widen)(y + o, wy, len);
        FBN_F32(brows_any)(wg, wx, y ? wy : NULL, act, wg, dz ? wz : NULL, C, 0, len / C, k,
                           training);
        if (dz)
            NAME(narrow)(wz, dz + o, len);
        NAME(narrow)(wg, dx + o, len);
    }
}
#endif

#if !FBN_HALF
/* The forward's t = ((x - mh) - ml) * a + b (fk: its 4*C constants) of nr
 * rows of C values into t. */
static void NAME(t_rows)(const T *x, const R *fk, ptrdiff_t C, ptrdiff_t nr, T *t)
{
    ptrdiff_t r, c;
    for (r = 0; r < nr; r++) {
        const T *xr = x + r * C;
        T *tr = t + r * C;
        FBN_OMP_SIMD
        for (c = 0; c < C; c++)
            tr[c] = ((xr[c] - fk[c]) - fk[C + c]) * fk[2 * C + c] + fk[3 * C + c];
    }
}
#endif

/* bapply_rows with the mask from x (fk: the forward's constants): groups
 * of whole rows, their y recomputed into an L1 tile; rows longer than a
 * tile go by slices of FBN_GEN_SLICE channels, each slice's constants
 * taken once (and written straight to dx). */
#define FBN_GEN_SLICE (FBN_TILE / 4)
static void NAME(bapply_rows_gen)(const T *dy, const T *x, const R *fk, int act, T *dx,
                                  T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                  const R *k, int training, int nt)
{
    T yb[FBN_TILE], bx[FBN_TILE], bz[FBN_TILE];
    ptrdiff_t g = FBN_TILE / C, r, c0;
    if (g < 1) {
        R kc[4 * FBN_GEN_SLICE], fc[4 * FBN_GEN_SLICE];
        for (c0 = 0; c0 < C; c0 += FBN_GEN_SLICE) {
            ptrdiff_t len = fbn_min(FBN_GEN_SLICE, C - c0);
            NAME(kslice)(k, C, c0, len, kc);
            NAME(kslice)(fk, C, c0, len, fc);
            for (r = r0; r < r1; r++) {
                ptrdiff_t o = r * C + c0;
                NAME(rows_any)(x + o, NULL, yb, len, 0, 1, fc, act);
                NAME(brows_any)(dy + o, x + o, yb, act, dx + o, dz ? dz + o : NULL, len, 0,
                                1, kc, training);
            }
        }
        return;
    }
    for (r = r0; r < r1; r += g) {
        ptrdiff_t nr = fbn_min(g, r1 - r);
        size_t bytes = (size_t)(nr * C) * sizeof(T);
        NAME(gen_prefetch)(x + r * C, dy + r * C, nr * C);
#if FBN_HALF
        NAME(rows_any)(x + r * C, NULL, yb, C, 0, nr, fk, act);
#else
        /* float and double: the forward's t (mask_row_x's), not activated
         * (it passes the mask where y does) */
        NAME(t_rows)(x + r * C, fk, C, nr, yb);
#endif
        NAME(brows_any)(dy + r * C, x + r * C, yb, act, nt ? bx : dx + r * C,
                        dz ? (nt ? bz : dz + r * C) : NULL, C, 0, nr, k, training);
        if (nt) {
            NAME(stream)(dx + r * C, bx, bytes);
            if (dz)
                NAME(stream)(dz + r * C, bz, bytes);
        }
    }
}
#undef FBN_GEN_SLICE

/* Rows [r0, r1) (channel-last); with nt, groups of rows go through L1
 * tiles and out with non-temporal stores; fk: the mask from x. */
static void NAME(bapply_rows)(const T *dy, const T *x, const T *y, const R *fk, int act,
                              T *dx, T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                              const R *k, int training, int nt)
{
    T bx[FBN_TILE], bz[FBN_TILE];
    ptrdiff_t g = FBN_TILE / C, r;
    if (fk) {
        NAME(bapply_rows_gen)(dy, x, fk, act, dx, dz, C, r0, r1, k, training, nt);
        return;
    }
    if (!nt || g < 1) {
        NAME(brows_any)(dy, x, y, act, dx, dz, C, r0, r1, k, training);
        return;
    }
    for (r = r0; r < r1; r += g) {
        ptrdiff_t nr = fbn_min(g, r1 - r);
        size_t bytes = (size_t)(nr * C) * sizeof(T);
        NAME(brows_any)(dy + r * C, x + r * C, y ? y + r * C : NULL, act, bx,
                        dz ? bz : NULL, C, 0, nr, k, training);
        NAME(stream)(dx + r * C, bx, bytes);
        if (dz)
            NAME(stream)(dz + r * C, bz, bytes);
    }
}

/* ---- the work items ---------------------------------------------------- */

/* What the items of one backward call share. */
typedef struct {
    const fbn_plan *p;
    const T *dy, *x, *y;
    int act;         /* the forward's activation (y's mask; y NULL: none) */
    const R *mean, *invstd, *gamma;
    T *dx, *dz;
    int training;
    double *pd, *px; /* per-chunk or per-block sums */
    double *m;       /* channel-last: the mean of each virtual channel, in
                        double (Cv values) */
    R *k;            /* 4*C constants (see bcoef_one) */
    R *kv;           /* channel-last: those of the Cv virtual channels of
                        folded rows (k when not folded) */
    R *dgamma, *dbeta;
    const double *rr, *rd; /* batch renormalization's r and d (C values
                              each; NULL: none) */
    double *dg64, *db64;   /* ghost batches: dgamma and dbeta of the
                              group in double (C values each), in place
                              of dgamma, dbeta */
    const R *beta;   /* the forward's beta (NULL: 0), for the mask from x */
    const R *mean_lo; /* a batch forward's mean_lo_out (C values), for the
                         mask from x; NULL: not given */
    R *fk;           /* the mask from x (act, no y): the forward's 4*C
                        constants (coef_one); NULL: the mask from y */
    R *fkv;          /* channel-last: those of the Cv virtual channels of
                        folded rows (fk when not folded) */
    int again;       /* the mask from x needs the forward's statistics of
                        x taken again (fwd_means): not given mean_lo */
} NAME(bwd);

/* The arguments every backward kernel shares, into b (the rest zero). */
static void NAME(bwd_init)(NAME(bwd) *b, const fbn_plan *p, const T *dy,
                           const T *x, const T *y, int act, const R *mean,
                           const R *invstd,
                           const R *gamma, int training, T *dx, T *dz)
{
    memset(b, 0, sizeof *b);
    b->p = p;
    b->dy = dy;
    b->x = x;
    b->y = y;
    b->act = act;
    b->mean = mean;
    b->invstd = invstd;
    b->gamma = gamma;
    b->training = training;
    b->dx = dx;
    b->dz = dz;
}

/* bfinish_channel of a ghost group or a renormalised forward: the scale
 * is gamma*r (r = 1 without renormalization), dgamma = r*sum(dy'*xhat) +
 * d*sum(dy') and dbeta = sum(dy') go to dg64, db64 in double. */
static void NAME(bfinish_ghost)(NAME(bwd) *b, ptrdiff_t c, double sdy, double sdyx,
                                double count)
{
    ptrdiff_t C = b->p->C;
    int tr = b->training;
    double inv = (double)b->invstd[c], r = b->rr ? b->rr[c] : 1.0;
    double A = (b->gamma ? (double)b->gamma[c] : 1.0) * r * inv;
    double dg = sdyx * inv;
    b->k[c] = b->mean[c];
    b->k[C + c] = (R)A;
    b->k[2 * C + c] = (R)(-A * inv * inv * ((tr ? sdyx : 0.0) / (tr ? count : 1.0)));
    b->k[3 * C + c] = (R)(-A * ((tr ? sdy : 0.0) / (tr ? count : 1.0)));
    if (b->rr)
        dg = r * dg + b->rd[c] * sdy;
    b->dg64[c] = dg;
    b->db64[c] = sdy;
}

/* The constants of channel c from its reductions (and dgamma, dbeta when
 * they are wanted). */
static void NAME(bfinish_channel)(NAME(bwd) *b, ptrdiff_t c, double sdy,
                                  double sdyx, double count)
{
    int tr = b->training;
    if (b->dg64) {
        NAME(bfinish_ghost)(b, c, sdy, sdyx, count);
        return;
    }
    NAME(bcoef_one)(b->k, b->p->C, c, b->mean, b->invstd, b->gamma, tr ? sdy : 0.0,
                    tr ? sdyx : 0.0, tr ? count : 1.0);
    if (b->dgamma) {
        b->dgamma[c] = (R)(sdyx * (double)b->invstd[c]);
        b->dbeta[c] = (R)sdy;
    }
}

/* The per-channel sums of channel c over its nk chunks, in chunk order. */
static void NAME(chunk_totals)(const NAME(bwd) *b, ptrdiff_t c, double *sdy,
                               double *sdyx)
{
    const fbn_plan *p = b->p;
    double t0 = 0.0, t1 = 0.0;
    ptrdiff_t k;
    for (k = 0; k < p->nk; k++) {
        t0 += b->pd[c * p->nk + k];
        t1 += b->px[c * p->nk + k];
    }
    *sdy = t0;
    *sdyx = t1;
}

/* The forward's constants of channel c (the mask from x), as its
 * finish_channel made them: coef_one from its double mean (mean: the
 * statistics taken again, or the returned mean where that is exact, or
 * with the ml it returned, mean_lo) and the invstd it returned; a
 * renormalised forward's a and b as renorm_channel makes them. */
static void NAME(fwd_coef)(NAME(bwd) *b, ptrdiff_t c, double mean)
{
    ptrdiff_t C = b->p->C;
    NAME(coef_one)(b->fk, C, c, mean, (double)b->invstd[c], b->gamma, b->beta);
    if (b->mean_lo) /* (mean is mh: coef_one's ml was 0) */
        b->fk[C + c] = b->mean_lo[c];
    if (b->rr) {
        double g = b->gamma ? (double)b->gamma[c] : 1.0;
        b->fk[2 * C + c] = (R)(g * b->rr[c] * (double)b->invstd[c]);
        b->fk[3 * C + c] = (R)((b->beta ? (double)b->beta[c] : 0.0) + g * b->rd[c]);
    }
}

/* The forward's means of chunks [k0, k1) of channels [c0, c1) (the mask
 * from x) into pm[c * nk + k] (pq: their M2, or 0 where only the mean is
 * taken): for float the first pass of tile_moments alone (the merged mean
 * does not depend on M2), for the half types tile_moments (their chunk
 * means come from both passes). */
static void NAME(tile_means)(const T *x, const fbn_plan *p, ptrdiff_t c0, ptrdiff_t c1,
                             ptrdiff_t k0, ptrdiff_t k1, double *pm, double *pq)
{
#if FBN_HALF
    NAME(tile_moments)(x, p, c0, c1, k0, k1, pm, pq);
#else
    double acc[FBN_TILE_C * FBN_ACC];
    ptrdiff_t w = c1 - c0, k, c;
    for (k = k0; k < k1; k++) {
        double cnt = (double)(fbn_min(k * FBN_CHUNK + FBN_CHUNK, p->ntot) - k * FBN_CHUNK);
        memset(acc, 0, sizeof(double) * FBN_ACC * (size_t)w);
        NAME(chunk_pass)(x, p, c0, c1, k, NULL, acc, 0);
        for (c = 0; c < w; c++) {
            pm[(c0 + c) * p->nk + k] = fbn_lanes_total(acc + c * FBN_ACC) / cnt;
            pq[(c0 + c) * p->nk + k] = 0.0;
        }
    }
#endif
}

/* The forward's means of rows [r0, r1) (channel-last) into mean[C] (m2:
 * 0, or their M2 for the half types): block_moments' sums, each channel
 * over the rows in order. */
static void NAME(block_means)(const T *x, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                              double *mean, double *m2)
{
#if FBN_HALF
    NAME(block_moments)(x, C, r0, r1, mean, m2);
#else
    double inv = 1.0 / (double)(r1 - r0);
    ptrdiff_t r, c;
    for (c = 0; c < C; c++)
        mean[c] = m2[c] = 0.0;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        FBN_OMP_SIMD
        for (c = 0; c < C; c++)
            mean[c] += (double)xr[c];
    }
    for (c = 0; c < C; c++)
        mean[c] *= inv;
#endif
}

static void NAME(item_fmeans_tile)(void *arg, ptrdiff_t t)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    ptrdiff_t c0, c1, k0, k1;
    fbn_tile_range(b->p, t, &c0, &c1, &k0, &k1);
    NAME(tile_means)(b->x, b->p, c0, c1, k0, k1, b->pd, b->px);
}

static void NAME(item_fmeans_rows)(void *arg, ptrdiff_t i)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    const fbn_plan *p = b->p;
    if (i < p->nb)
        NAME(block_means)(b->x, p->Cv, i * p->rb, fbn_min(i * p->rb + p->rb, p->outerv),
                          b->pd + i * p->Cv, b->px + i * p->Cv);
    else
        NAME(block_means)(b->x + p->outerv * p->Cv, p->C, 0, p->rem,
                          b->pd + p->nb * p->Cv, b->px + p->nb * p->Cv);
}

/* The forward's constants of every channel (the mask from x), from its
 * means of x taken again (as its statistics phase takes them) when
 * b->again (tmp: 2*C + 2*Cv doubles; the per-part sums pd, px are scratch
 * here); parallel: as a parallel job, else on the calling thread (a whole
 * group in one item).  Fused tiles take theirs in item_bfused_tile. */
static void NAME(fwd_means)(NAME(bwd) *b, double *tmp, int parallel)
{
    const fbn_plan *p = b->p;
    ptrdiff_t c, i, C = p->C;
    if (b->again) {
        ptrdiff_t n = p->cl ? fbn_stat_items(p) : p->ntiles;
        fbn_item_fn item = p->cl ? NAME(item_fmeans_rows) : NAME(item_fmeans_tile);
        if (parallel)
            fbn_parallel_for(n, item, b, p->nth, FBN_FORWARD | p->light);
        else
            for (i = 0; i < n; i++)
                item(b, i);
        if (p->cl) {
            fbn_merge_blocks(b->pd, b->px, p->Cv, p->rb, p->nb, p->outerv, tmp + 2 * C,
                             tmp + 2 * C + p->Cv);
            fbn_unfold_moments(p, tmp + 2 * C, tmp + 2 * C + p->Cv, b->pd + p->nb * p->Cv,
                               b->px + p->nb * p->Cv, tmp, tmp + C);
        } else {
            for (c = 0; c < C; c++)
                fbn_merge_chunks(b->pd + c * p->nk, b->px + c * p->nk, p->nk, p->ntot,
                                 tmp + c, tmp + C + c);
        }
    }
    for (c = 0; c < C; c++)
        NAME(fwd_coef)(b, c, b->again ? tmp[c] : (double)b->mean[c]);
    if (p->cl)
        NAME(unfold_coef)(p, b->fk, b->fkv);
}

static void NAME(item_bsums_tile)(void *arg, ptrdiff_t t)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    ptrdiff_t c0, c1, k0, k1;
    fbn_tile_range(b->p, t, &c0, &c1, &k0, &k1);
    NAME(tile_sums)(b->dy, b->x, b->y, b->fk, b->act, b->p, c0, c1, k0, k1, b->mean,
                    b->pd, b->px);
}

/* A fused tile: the reductions of whole channels, then dx while their
 * values are in cache.  (Unlike the forward's, it does not prefetch the
 * next tile: with three arrays of its own in L2 that was 10-27% slower at
 * 2 threads.) */
static void NAME(item_bfused_tile)(void *arg, ptrdiff_t t)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    const fbn_plan *p = b->p;
    ptrdiff_t c0, c1, k0, k1, c, o, ci = p->C * p->inner;
    fbn_tile_range(p, t, &c0, &c1, &k0, &k1);
    if (b->fk && b->again) {
        /* the mask from x: the forward's statistics of these channels
         * (the sums' scratch holds their chunks' moments first) */
        NAME(tile_means)(b->x, p, c0, c1, 0, p->nk, b->pd, b->px);
        for (c = c0; c < c1; c++) {
            double mean, m2;
            fbn_merge_chunks(b->pd + c * p->nk, b->px + c * p->nk, p->nk, p->ntot, &mean,
                             &m2);
            NAME(fwd_coef)(b, c, mean);
        }
    }
    NAME(tile_sums)(b->dy, b->x, b->y, b->fk, b->act, p, c0, c1, 0, p->nk, b->mean, b->pd,
                    b->px);
    for (c = c0; c < c1; c++) {
        double sdy, sdyx;
        NAME(chunk_totals)(b, c, &sdy, &sdyx);
        NAME(bfinish_channel)(b, c, sdy, sdyx, (double)p->ntot);
    }
    for (o = 0; o < p->outer; o++)
        NAME(bapply_span)(b->dy, b->x, b->y, b->fk, b->act, b->dx, b->dz, p->C, p->inner,
                          o * ci + c0 * p->inner, o * ci + c1 * p->inner, b->k,
                          b->training, p->nt);
}

/* A block of (folded) rows' sums (channel-last); the last item takes the
 * rows left over from folding. */
static void NAME(item_bsums_rows)(void *arg, ptrdiff_t i)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    const fbn_plan *p = b->p;
    ptrdiff_t off = p->outerv * p->Cv;
    if (i < p->nb)
        NAME(bsum_rows)(b->dy, b->x, b->y, b->fkv, b->act, p->Cv, i * p->rb,
                        fbn_min(i * p->rb + p->rb, p->outerv), b->m,
                        b->pd + i * p->Cv, b->px + i * p->Cv);
    else
        NAME(bsum_rows)(b->dy + off, b->x + off, b->y ? b->y + off : NULL, b->fk, b->act,
                        p->C, 0, p->rem, b->m, b->pd + p->nb * p->Cv,
                        b->px + p->nb * p->Cv);
}

/* A block of dx in memory order (scheduled as the forward's). */
static void NAME(item_bapply)(void *arg, ptrdiff_t i)
{
    NAME(bwd) *b = (NAME(bwd) *)arg;
    const fbn_plan *p = b->p;
    ptrdiff_t i0 = i * p->ab, off = p->outerv * p->Cv;
    if (p->cl && i < p->nab)
        NAME(bapply_rows)(b->dy, b->x, b->y, b->fkv, b->act, b->dx, b->dz, p->Cv, i0,
                          fbn_min(i0 + p->ab, p->outerv), b->kv, b->training, p->nt);
    else if (p->cl) /* the rows left over from folding */
        NAME(bapply_rows)(b->dy + off, b->x + off, b->y ? b->y + off : NULL, b->fk,
                          b->act, b->dx + off, b->dz ? b->dz + off : NULL, p->C, 0,
                          p->rem, b->k, b->training, p->nt);
    else
        NAME(bapply_span)(b->dy, b->x, b->y, b->fk, b->act, b->dx, b->dz, p->C, p->inner,
                          i0,
                          fbn_min(i0 + p->ab, p->ntot * p->C), b->k, b->training,
                          p->nt);
}

/* The reductions phase: per-chunk or per-block sums, totalled per channel
 * in order into sdy[C], sdyx[C] (sv: scratch of 2*Cv doubles for
 * channel-last plans: the virtual channels' totals, summed per channel in
 * order, then the left-over rows'). */
static void NAME(bsums_phase)(NAME(bwd) *b, double *sdy, double *sdyx, double *sv)
{
    const fbn_plan *p = b->p;
    ptrdiff_t c, i, j;
    if (p->cl) {
        double *s0 = sv, *s1 = sv + p->Cv;
        for (j = 0; j < p->Cv; j++)
            b->m[j] = (double)b->mean[j % p->C];
        fbn_parallel_for(fbn_stat_items(p), NAME(item_bsums_rows), b, p->nth,
                         FBN_FORWARD | p->light);
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
        fbn_parallel_for(p->ntiles, NAME(item_bsums_tile), b, p->nth,
                         FBN_FORWARD | p->light);
        for (c = 0; c < p->C; c++)
            NAME(chunk_totals)(b, c, sdy + c, sdyx + c);
    }
}

/* Scratch of a backward call: per-chunk/per-block sums (2 * nparts
 * doubles), Cv doubles (the channel-last mean), 2*C + 2*Cv doubles (*tmp),
 * then the 4*C constants and, for folded channel-last rows, 4*Cv more, and
 * as many again for the forward's (the mask from x: act without y); on
 * the stack when they fit (as fwd_scratch). */
static int NAME(bwd_scratch)(NAME(bwd) *b, double **tmp, void **mem, double *stack)
{
    const fbn_plan *p = b->p;
    size_t cv = p->cl ? (size_t)p->Cv : 0, nv = p->cl && p->fold > 1 ? cv : 0;
    size_t nd = 2 * (size_t)fbn_plan_parts(p) + 3 * cv + 2 * (size_t)p->C;
    int gen = b->act != FBN_ACT_NONE && b->y == NULL;
    size_t bytes = sizeof(double) * nd + sizeof(R) * 4 * ((size_t)p->C + nv) * (gen ? 2 : 1);
    char *m = bytes <= FBN_STACK_BYTES ? (char *)stack : (char *)malloc(bytes);
    if (m == NULL)
        return FBN_ENOMEM;
    b->pd = (double *)m;
    b->px = b->pd + fbn_plan_parts(p);
    b->m = b->px + fbn_plan_parts(p);
    *tmp = b->m + cv;
    b->k = (R *)(m + sizeof(double) * nd);
    b->kv = nv ? b->k + 4 * p->C : b->k;
    if (gen) {
        b->fk = b->k + 4 * (p->C + (ptrdiff_t)nv);
        b->fkv = nv ? b->fk + 4 * p->C : b->fk;
    }
    *mem = m == (char *)stack ? NULL : m;
    return FBN_OK;
}

static int NAME(k_backward_reduce)(const void *dy, const void *x, const void *y,
                                   int act, ptrdiff_t outer, ptrdiff_t C,
                                   ptrdiff_t inner, const void *mean, double *sum_dy,
                                   double *sum_dyxmu, int nthreads)
{
    fbn_plan p;
    NAME(bwd) b;
    double *tmp, stack[FBN_STACK_BYTES / sizeof(double)];
    void *mem;
    ptrdiff_t c;
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    if (outer * inner == 0) {
        for (c = 0; c < C; c++)
            sum_dy[c] = sum_dyxmu[c] = 0.0;
        return FBN_OK;
    }
    if (C == 0)
        return FBN_OK;
    fbn_plan_make(&p, outer, C, inner, sizeof(T), y ? 3 : 2, 0, 0, FBN_OP_STATS,
                  nthreads);
    NAME(bwd_init)(&b, &p, dy, x, y, act, mean, NULL, NULL, 0, NULL, NULL);
    if (NAME(bwd_scratch)(&b, &tmp, &mem, stack) != FBN_OK)
        return FBN_ENOMEM;
    NAME(bsums_phase)(&b, sum_dy, sum_dyxmu, tmp + 2 * C);
    free(mem);
    return FBN_OK;
}

static int NAME(k_backward_apply)(const void *dy, const void *x, const void *y,
                                  int act, ptrdiff_t outer, ptrdiff_t C,
                                  ptrdiff_t inner, const void *mean, const void *invstd,
                                  const void *gamma, const double *sum_dy,
                                  const double *sum_dyxmu, double count, int training,
                                  void *dx, void *dz, int nthreads)
{
    fbn_plan p;
    NAME(bwd) b;
    ptrdiff_t c;
    if (outer < 0 || C < 0 || inner < 0 || (training && !(count > 0)))
        return FBN_EINVAL;
    if (C == 0 || outer * inner == 0)
        return FBN_OK;
    fbn_plan_make(&p, outer, C, inner, sizeof(T), y ? 3 : 2, 0, dz ? 2 : 1,
                  FBN_OP_APPLY, nthreads);
    NAME(bwd_init)(&b, &p, dy, x, y, act, mean, invstd, gamma, training, dx, dz);
    b.k = (R *)malloc(sizeof(R) * 4 * ((size_t)C + (p.cl && p.fold > 1 ? (size_t)p.Cv : 0)));
    if (b.k == NULL)
        return FBN_ENOMEM;
    b.kv = p.cl && p.fold > 1 ? b.k + 4 * C : b.k;
    for (c = 0; c < C; c++)
        NAME(bfinish_channel)(&b, c, training ? sum_dy[c] : 0.0,
                              training ? sum_dyxmu[c] : 0.0, count);
    if (p.cl)
        NAME(unfold_coef)(&p, b.k, b.kv);
    fbn_parallel_for(fbn_apply_items(&p), NAME(item_bapply), &b, p.nth,
                     FBN_REVERSE | p.light);
    if (p.nt)
        fbn_sfence();
    free(b.k);
    return FBN_OK;
}

static int NAME(k_backward)(const T *dy, const T *x, const T *y, int act, ptrdiff_t outer,
                            ptrdiff_t C, ptrdiff_t inner, const R *mean,
                            const R *invstd, const R *gamma, const R *beta,
                            const R *mean_lo, int training, T *dx, T *dz, R *dgamma,
                            R *dbeta, int nthreads)
{
    fbn_plan p;
    NAME(bwd) b;
    double *tmp, stack[FBN_STACK_BYTES / sizeof(double)];
    void *mem;
    ptrdiff_t c;
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    if (outer * inner == 0) {
        for (c = 0; c < C; c++)
            dgamma[c] = dbeta[c] = (R)0;
        return FBN_OK;
    }
    fbn_plan_make(&p, outer, C, inner, sizeof(T), y ? 3 : 2, 0, dz ? 2 : 1,
                  FBN_OP_STATS | FBN_OP_APPLY, nthreads);
    NAME(bwd_init)(&b, &p, dy, x, y, act, mean, invstd, gamma, training, dx, dz);
    b.beta = beta;
    b.dgamma = dgamma;
    b.dbeta = dbeta;
    if (NAME(bwd_scratch)(&b, &tmp, &mem, stack) != FBN_OK)
        return FBN_ENOMEM;
    /* the mask from x: a batch forward's ml, given (mean_lo) or from its
     * statistics taken again for float and the half types (sizeof(R) <
     * sizeof(double); for double ml is 0) */
    b.mean_lo = b.fk && training ? mean_lo : NULL;
    b.again = b.fk && training && sizeof(R) < sizeof(double) && !b.mean_lo;
    if (b.fk && !(p.fused && b.again))
        NAME(fwd_means)(&b, tmp, 1);
    if (p.fused) {
        fbn_parallel_for(p.ntiles, NAME(item_bfused_tile), &b, p.nth,
                         FBN_FORWARD | p.light);
    } else {
        NAME(bsums_phase)(&b, tmp, tmp + C, tmp + 2 * C);
        for (c = 0; c < C; c++)
            NAME(bfinish_channel)(&b, c, tmp[c], tmp[C + c], (double)p.ntot);
        if (p.cl)
            NAME(unfold_coef)(&p, b.k, b.kv);
        fbn_parallel_for(fbn_apply_items(&p), NAME(item_bapply), &b, p.nth,
                     FBN_REVERSE | p.light);
    }
    if (p.nt)
        fbn_sfence();
    free(mem);
    return FBN_OK;
}
