/*
 * backward_impl.h -- the backward kernels, written once for an element type.
 * Included at the end of kernels_impl.h (T, SFX and NAME defined there).
 *
 * With dy' = dy * (y > 0) when the forward fused a ReLU (y given), the
 * per-channel reductions are sum_dy = sum(dy') and
 * sum_dyxmu = sum(dy' * (x - mean)); then, per value,
 *   training: dx = A*dy' + B*(x - mean) + D,
 *             A = g*invstd, B = -A*invstd^2*sum_dyxmu/n, D = -A*sum_dy/n
 *   frozen:   dx = A*dy'
 * and the residual's gradient (dz) is dy'.
 */

/* Adds the reductions of n contiguous values to the lane accumulators
 * s0 (sum g) and s1 (sum g * (x - m)), FBN_LANES + 1 each, in double. */
static inline void NAME(bsum_plain)(const T *g, const T *x, ptrdiff_t n,
                                    double m, double *s0, double *s1)
{
    double a0[FBN_LANES], a1[FBN_LANES];
    double t0 = s0[FBN_LANES], t1 = s1[FBN_LANES];
    ptrdiff_t i = 0;
    int k;
    memcpy(a0, s0, sizeof a0);
    memcpy(a1, s1, sizeof a1);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++) {
            double gk = (double)g[i + k];
            a0[k] += gk;
            a1[k] += gk * ((double)x[i + k] - m);
        }
    for (; i < n; i++) {
        double gk = (double)g[i];
        t0 += gk;
        t1 += gk * ((double)x[i] - m);
    }
    memcpy(s0, a0, sizeof a0);
    memcpy(s1, a1, sizeof a1);
    s0[FBN_LANES] = t0;
    s1[FBN_LANES] = t1;
}

/* dy' = dy where y > 0, else 0, for n values (a select, not a product, so
 * an infinite dy where y <= 0 gives 0, not NaN). */
static inline void NAME(mask_grad)(const T *dy, const T *y, T *g, ptrdiff_t n)
{
    ptrdiff_t i;
#pragma omp simd
    for (i = 0; i < n; i++)
        g[i] = y[i] > (T)0 ? dy[i] : (T)0;
}

/* The reductions of n values with dy' = dy * (y > 0) when y is given: the
 * mask is applied tile by tile into an L1 buffer first, so the reduction
 * itself has no branch (a branch on a random ReLU mask mispredicts half the
 * time). */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, ptrdiff_t n,
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
        NAME(mask_grad)(dy + t, y + t, g, len);
        NAME(bsum_plain)(g, x + t, len, m, s0, s1);
    }
}

/* Reductions over the values [i0, i1) of channel c (channel-first), added
 * to s[0], s[1]. */
static void NAME(bsum_range)(const T *dy, const T *x, const T *y, ptrdiff_t C,
                             ptrdiff_t inner, ptrdiff_t c, ptrdiff_t i0,
                             ptrdiff_t i1, double m, double *s)
{
    fbn_seg sg = fbn_seg_start(i0, i1, inner);
    ptrdiff_t off, len;
    double a0[FBN_LANES + 1] = {0}, a1[FBN_LANES + 1] = {0};
    while ((len = fbn_seg_next(&sg, C, inner, c, &off)) > 0) {
        NAME(bsum_body)(dy + off, x + off, y ? y + off : NULL, len, m, a0, a1);
    }
    s[0] += fbn_lanes_total(a0);
    s[1] += fbn_lanes_total(a1);
}

/* Reductions of a whole channel, chunk by chunk in order. */
static void NAME(bsum_channel)(const T *dy, const T *x, const T *y,
                               ptrdiff_t C, ptrdiff_t inner, ptrdiff_t c,
                               ptrdiff_t ntot, double m, double *sdy,
                               double *sdyx)
{
    double tot0 = 0.0, tot1 = 0.0;
    ptrdiff_t i0;
    for (i0 = 0; i0 < ntot; i0 += FBN_CHUNK) {
        double s[2] = {0.0, 0.0};
        NAME(bsum_range)(dy, x, y, C, inner, c, i0, fbn_min(i0 + FBN_CHUNK, ntot),
                         m, s);
        tot0 += s[0];
        tot1 += s[1];
    }
    *sdy = tot0;
    *sdyx = tot1;
}

/* Reductions of rows [r0, r1) (channel-last) into s0[C], s1[C]. */
/* bsum_rows for long rows: row by row, vectorised across channels (a
 * row's mask applied piece by piece into an L1 buffer).  s0, s1 start at 0. */
FBN_NOINLINE static void NAME(bsum_long_rows)(const T *dy, const T *x, const T *y,
                                 ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                                 const double *m, double *s0, double *s1)
{
    T g[FBN_TILE];
    ptrdiff_t r, c, c0;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        for (c0 = 0; c0 < C; c0 += FBN_TILE) {
            ptrdiff_t len = fbn_min(FBN_TILE, C - c0);
            const T *gr = dy + r * C + c0;
            if (y) {
                NAME(mask_grad)(gr, y + r * C + c0, g, len);
                gr = g;
            }
#pragma omp simd
            for (c = 0; c < len; c++) {
                double gc = (double)gr[c];
                s0[c0 + c] += gc;
                s1[c0 + c] += gc * ((double)xr[c0 + c] - m[c0 + c]);
            }
        }
    }
}

static void NAME(bsum_rows)(const T *dy, const T *x, const T *y, ptrdiff_t C,
                            ptrdiff_t r0, ptrdiff_t r1, const double *m,
                            double *s0, double *s1)
{
    T g[FBN_TILE];
    ptrdiff_t r, rr, c, c0;
    /* tiles of whole rows (the ReLU mask applied to the tile into an L1
     * buffer first), reduced in strips of FBN_LANES channels whose
     * accumulators stay in registers over the tile's rows; each channel is
     * summed over the rows in order */
    ptrdiff_t rt = FBN_TILE / C;
    int k;
    for (c = 0; c < C; c++)
        s0[c] = s1[c] = 0.0;
    if ((size_t)C * sizeof(T) > FBN_STRIP_MAX_ROW) {
        NAME(bsum_long_rows)(dy, x, y, C, r0, r1, m, s0, s1);
        return;
    }
    for (rr = r0; rr < r1; rr += rt) {
        ptrdiff_t nr = fbn_min(rt, r1 - rr);
        const T *gt = dy + rr * C, *xt = x + rr * C;
        if (y) {
            NAME(mask_grad)(gt, y + rr * C, g, nr * C);
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
                T mt[FBN_LANES];
                for (k = 0; k < FBN_LANES; k++)
                    mt[k] = (T)mk[k]; /* exact: the mean came as T */
                for (r = 0; r < nr; r += FBN_FLUSH) {
                    ptrdiff_t re = fbn_min(r + FBN_FLUSH, nr), rj;
                    T f0[FBN_LANES], f1[FBN_LANES];
#if FBN_VEC
                    NAME(vec) v0[FBN_NV], v1[FBN_NV], vg, vx, vm[FBN_NV];
                    int q;
                    memcpy(vm, mt, sizeof vm);
                    for (q = 0; q < FBN_NV; q++)
                        v0[q] = v1[q] = (NAME(vec)){0};
                    for (rj = r; rj < re; rj++)
                        for (q = 0; q < FBN_NV; q++) {
                            memcpy(&vg, gt + rj * C + c0 + q * FBN_VN, sizeof vg);
                            memcpy(&vx, xt + rj * C + c0 + q * FBN_VN, sizeof vx);
                            v0[q] += vg;
                            v1[q] += vg * (vx - vm[q]);
                        }
                    memcpy(f0, v0, sizeof f0);
                    memcpy(f1, v1, sizeof f1);
#else
                    for (k = 0; k < FBN_LANES; k++)
                        f0[k] = f1[k] = (T)0;
                    for (rj = r; rj < re; rj++)
                        for (k = 0; k < FBN_LANES; k++) {
                            T gv = gt[rj * C + c0 + k];
                            f0[k] += gv;
                            f1[k] += gv * (xt[rj * C + c0 + k] - mt[k]);
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
                        double gc = (double)gt[r * C + c0 + k];
                        a0[k] += gc;
                        a1[k] += gc * ((double)xt[r * C + c0 + k] - mk[k]);
                    }
            }
            memcpy(s0 + c0, a0, sizeof(double) * (size_t)w);
            memcpy(s1 + c0, a1, sizeof(double) * (size_t)w);
        }
    }
}

/* Per-channel reductions of the whole array (both layouts), in double. */
static int NAME(breduce)(const T *dy, const T *x, const T *y, ptrdiff_t outer,
                         ptrdiff_t C, ptrdiff_t inner, const T *mean,
                         double *sdy, double *sdyx, int nthreads)
{
    ptrdiff_t ntot = outer * inner, c;
    if (ntot == 0) {
        for (c = 0; c < C; c++)
            sdy[c] = sdyx[c] = 0.0;
        return FBN_OK;
    }
    if (inner > 1 || C == 1) {
        ptrdiff_t nk = (ntot + FBN_CHUNK - 1) / FBN_CHUNK;
        int nth = fbn_threads(nthreads, ntot * C, C * nk);
        if (C == 1 && inner == 1) {
            inner = outer;
            outer = 1;
        }
        if (nth <= 1 || C >= 4 * (ptrdiff_t)nth) {
            if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
                for (c = 0; c < C; c++)
                    NAME(bsum_channel)(dy, x, y, C, inner, c, ntot,
                                       (double)mean[c], sdy + c, sdyx + c);
            } else {
                for (c = 0; c < C; c++)
                    NAME(bsum_channel)(dy, x, y, C, inner, c, ntot,
                                       (double)mean[c], sdy + c, sdyx + c);
            }
        } else {
            double *p = (double *)malloc(sizeof(double) * 2 * (size_t)(C * nk));
            ptrdiff_t item;
            if (p == NULL)
                return FBN_ENOMEM;
#pragma omp parallel for num_threads(nth) schedule(static)
            for (item = 0; item < C * nk; item++) {
                ptrdiff_t cc = item / nk, i0 = (item % nk) * FBN_CHUNK;
                p[2 * item] = p[2 * item + 1] = 0.0;
                NAME(bsum_range)(dy, x, y, C, inner, cc, i0,
                                 fbn_min(i0 + FBN_CHUNK, ntot),
                                 (double)mean[cc], p + 2 * item);
            }
            for (c = 0; c < C; c++) {
                double tot0 = 0.0, tot1 = 0.0;
                ptrdiff_t k;
                for (k = 0; k < nk; k++) {
                    tot0 += p[2 * (c * nk + k)];
                    tot1 += p[2 * (c * nk + k) + 1];
                }
                sdy[c] = tot0;
                sdyx[c] = tot1;
            }
            free(p);
        }
        return FBN_OK;
    } else {
        ptrdiff_t rb = fbn_block_rows(C);
        ptrdiff_t nb = (outer + rb - 1) / rb, b;
        int nth = fbn_threads(nthreads, ntot * C, nb);
        /* partial sums per block, then the block means in double for m */
        double *p = (double *)malloc(sizeof(double) * (size_t)(2 * C * nb + C));
        double *q, *m;
        if (p == NULL)
            return FBN_ENOMEM;
        q = p + C * nb;
        m = q + C * nb;
        for (c = 0; c < C; c++)
            m[c] = (double)mean[c];
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++)
                NAME(bsum_rows)(dy, x, y, C, b * rb, fbn_min(b * rb + rb, outer),
                                m, p + b * C, q + b * C);
        } else {
            for (b = 0; b < nb; b++)
                NAME(bsum_rows)(dy, x, y, C, b * rb, fbn_min(b * rb + rb, outer),
                                m, p + b * C, q + b * C);
        }
        for (c = 0; c < C; c++)
            sdy[c] = sdyx[c] = 0.0;
        for (b = 0; b < nb; b++)
            for (c = 0; c < C; c++) {
                sdy[c] += p[b * C + c];
                sdyx[c] += q[b * C + c];
            }
        free(p);
        return FBN_OK;
    }
}

/* dx (and dz) for n contiguous values of one channel.  dx may equal dy. */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, T m, T A, T B,
                                     T D, int mask, int training, int hasdz)
{
    ptrdiff_t i;
#pragma omp simd
    for (i = 0; i < n; i++) {
        T g = dy[i];
        T r;
        if (mask)
            g = y[i] > (T)0 ? g : (T)0;
        if (hasdz)
            dz[i] = g;
        r = A * g;
        if (training)
            r += B * (x[i] - m) + D;
        dx[i] = r;
    }
}

/* Backward constants of a channel, structure of arrays: k[0..C) = mean,
 * k[C..2C) = A, k[2C..3C) = B, k[3C..4C) = D. */
static void NAME(bcoef_one)(T *k, ptrdiff_t C, ptrdiff_t c, const T *mean,
                            const T *invstd, const T *gamma, double sdy,
                            double sdyx, double count)
{
    double inv = (double)invstd[c];
    double A = (gamma ? (double)gamma[c] : 1.0) * inv;
    k[c] = mean[c];
    k[C + c] = (T)A;
    k[2 * C + c] = (T)(-A * inv * inv * (sdyx / count));
    k[3 * C + c] = (T)(-A * (sdy / count));
}

/* dx (and dz) for n contiguous values with the given constants; the flags
 * become constants in each call, so each loop is simple. */
static void NAME(bapply_any)(const T *dy, const T *x, const T *y, T *dx, T *dz,
                             ptrdiff_t n, T m, T A, T B, T D, int training)
{
    if (training) {
        if (y) {
            if (dz) NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 1, 1, 1);
            else    NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 1, 1, 0);
        } else {
            if (dz) NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 0, 1, 1);
            else    NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 0, 1, 0);
        }
    } else {
        if (y) {
            if (dz) NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 1, 0, 1);
            else    NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 1, 0, 0);
        } else {
            if (dz) NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 0, 0, 1);
            else    NAME(bapply_body)(dy, x, y, dx, dz, n, m, A, B, D, 0, 0, 0);
        }
    }
}

/* dx (and dz) for n contiguous values; mode as for the forward's apply_seg:
 * non-temporal outputs through L1 tiles, prefetch of the next channel's dy,
 * x and y. */
static void NAME(bapply_seg)(const T *dy, const T *x, const T *y, T *dx, T *dz,
                             ptrdiff_t n, T m, T A, T B, T D, int training,
                             const fbn_mode *mode)
{
    T bx[FBN_TILE], bz[FBN_TILE];
    ptrdiff_t t = 0;
    if (!mode->nt && !mode->pf) {
        NAME(bapply_any)(dy, x, y, dx, dz, n, m, A, B, D, training);
        return;
    }
    while (t < n) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        const T *yt = y ? y + t : NULL;
        if (mode->pf) {
            fbn_prefetch(dy + t + mode->pf, (size_t)len * sizeof(T));
            fbn_prefetch(x + t + mode->pf, (size_t)len * sizeof(T));
            if (y)
                fbn_prefetch(y + t + mode->pf, (size_t)len * sizeof(T));
        }
        if (mode->nt) {
            NAME(bapply_any)(dy + t, x + t, yt, bx, dz ? bz : NULL, len, m, A, B, D,
                             training);
            fbn_stream(dx + t, bx, (size_t)len * sizeof(T));
            if (dz)
                fbn_stream(dz + t, bz, (size_t)len * sizeof(T));
        } else {
            NAME(bapply_any)(dy + t, x + t, yt, dx + t, dz ? dz + t : NULL, len, m,
                             A, B, D, training);
        }
        t += len;
    }
}

/* Values [i0, i1) of channel c (channel-first). */
static void NAME(bapply_range)(const T *dy, const T *x, const T *y, T *dx,
                               T *dz, ptrdiff_t C, ptrdiff_t inner,
                               ptrdiff_t c, ptrdiff_t i0, ptrdiff_t i1,
                               const T *k, int training, const fbn_mode *mode)
{
    fbn_seg sg = fbn_seg_start(i0, i1, inner);
    ptrdiff_t off, len;
    T m = k[c], A = k[C + c], B = k[2 * C + c], D = k[3 * C + c];
    while ((len = fbn_seg_next(&sg, C, inner, c, &off)) > 0)
        NAME(bapply_seg)(dy + off, x + off, y ? y + off : NULL, dx + off,
                         dz ? dz + off : NULL, len, m, A, B, D, training, mode);
}

/* Rows [r0, r1) of dx (channel-last); the constants are per channel. */
static void NAME(brows_any)(const T *dy, const T *x, const T *y, T *dx,
                              T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                              const T *k, int training)
{
    const T *m = k, *A = k + C, *B = k + 2 * C, *D = k + 3 * C;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *dr = dy + r * C, *xr = x + r * C;
        const T *yr = y ? y + r * C : NULL;
        T *dxr = dx + r * C;
        T *dzr = dz ? dz + r * C : NULL;
#pragma omp simd
        for (c = 0; c < C; c++) {
            T g = dr[c];
            T v;
            if (yr)
                g = yr[c] > (T)0 ? g : (T)0;
            if (dzr)
                dzr[c] = g;
            v = A[c] * g;
            if (training)
                v += B[c] * (xr[c] - m[c]) + D[c];
            dxr[c] = v;
        }
    }
}

/* Rows [r0, r1) (channel-last); with mode->nt, groups of rows go through
 * L1 tiles and out with non-temporal stores. */
static void NAME(bapply_rows)(const T *dy, const T *x, const T *y, T *dx,
                              T *dz, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1,
                              const T *k, int training, const fbn_mode *mode)
{
    T bx[FBN_TILE], bz[FBN_TILE];
    ptrdiff_t g = FBN_TILE / C, r;
    if (!mode->nt || g < 1) {
        NAME(brows_any)(dy, x, y, dx, dz, C, r0, r1, k, training);
        return;
    }
    for (r = r0; r < r1; r += g) {
        ptrdiff_t nr = fbn_min(g, r1 - r);
        size_t bytes = (size_t)(nr * C) * sizeof(T);
        NAME(brows_any)(dy + r * C, x + r * C, y ? y + r * C : NULL, bx,
                        dz ? bz : NULL, C, 0, nr, k, training);
        fbn_stream(dx + r * C, bx, bytes);
        if (dz)
            fbn_stream(dz + r * C, bz, bytes);
    }
}

/* Channel-first values [i0, i1) of the flat array, in memory order. */
static void NAME(bapply_flat)(const T *dy, const T *x, const T *y, T *dx,
                              T *dz, ptrdiff_t C, ptrdiff_t inner, ptrdiff_t i0,
                              ptrdiff_t i1, const T *k, int training,
                              const fbn_mode *mode)
{
    ptrdiff_t i = i0;
    while (i < i1) {
        ptrdiff_t r = i / inner, j = i - r * inner, c = r % C;
        ptrdiff_t len = fbn_min(inner - j, i1 - i);
        NAME(bapply_seg)(dy + i, x + i, y ? y + i : NULL, dx + i,
                         dz ? dz + i : NULL, len, k[c], k[C + c], k[2 * C + c],
                         k[3 * C + c], training, mode);
        i += len;
    }
}

static void NAME(bapply_all)(const T *dy, const T *x, const T *y,
                             ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                             const T *k, int training, T *dx, T *dz,
                             int nthreads)
{
    ptrdiff_t ntot = outer * inner;
    fbn_mode mode;
    /* as in the forward's apply_all: non-temporal stores in channel-first
     * layout only */
    mode.nt = (inner > 1 || C == 1) && fbn_use_nt((size_t)(ntot * C) * sizeof(T));
    mode.pf = 0;
    if (ntot == 0 || C == 0)
        return;
    if (inner > 1 || C == 1) {
        ptrdiff_t size = ntot * C;
        ptrdiff_t nb = (size + FBN_BLOCK_VALUES - 1) / FBN_BLOCK_VALUES, b;
        int nth = fbn_threads(nthreads, size, nb);
        if (C == 1)
            inner = size;
        /* blocks in reverse order: the reductions read the arrays front to
         * back, so their tails are what is still in cache */
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++) {
                ptrdiff_t i0 = (nb - 1 - b) * FBN_BLOCK_VALUES;
                NAME(bapply_flat)(dy, x, y, dx, dz, C, inner, i0,
                                  fbn_min(i0 + FBN_BLOCK_VALUES, size), k, training,
                                  &mode);
            }
        } else {
            for (b = nb - 1; b >= 0; b--)
                NAME(bapply_flat)(dy, x, y, dx, dz, C, inner, b * FBN_BLOCK_VALUES,
                                  fbn_min(b * FBN_BLOCK_VALUES + FBN_BLOCK_VALUES, size),
                                  k, training, &mode);
        }
    } else {
        ptrdiff_t rb = fbn_block_rows(C);
        ptrdiff_t nb = (outer + rb - 1) / rb, b;
        int nth = fbn_threads(nthreads, ntot * C, nb);
        /* blocks in reverse order, as above */
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++) {
                ptrdiff_t r0 = (nb - 1 - b) * rb;
                NAME(bapply_rows)(dy, x, y, dx, dz, C, r0, fbn_min(r0 + rb, outer), k,
                                  training, &mode);
            }
        } else {
            for (b = nb - 1; b >= 0; b--)
                NAME(bapply_rows)(dy, x, y, dx, dz, C, b * rb,
                                  fbn_min(b * rb + rb, outer), k, training, &mode);
        }
    }
    if (mode.nt)
        fbn_sfence();
}

static int NAME(k_backward_reduce)(const T *dy, const T *x, const T *y,
                              ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                              const T *mean, double *sum_dy, double *sum_dyxmu,
                              int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    return NAME(breduce)(dy, x, y, outer, C, inner, mean, sum_dy, sum_dyxmu,
                         nthreads);
}

static int NAME(k_backward_apply)(const T *dy, const T *x, const T *y,
                             ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                             const T *mean, const T *invstd, const T *gamma,
                             const double *sum_dy, const double *sum_dyxmu,
                             double count, int training, T *dx, T *dz,
                             int nthreads)
{
    ptrdiff_t c;
    T *k;
    if (outer < 0 || C < 0 || inner < 0 || (training && !(count > 0)))
        return FBN_EINVAL;
    if (C == 0 || outer * inner == 0)
        return FBN_OK;
    k = (T *)malloc(sizeof(T) * 4 * (size_t)C);
    if (k == NULL)
        return FBN_ENOMEM;
    for (c = 0; c < C; c++)
        NAME(bcoef_one)(k, C, c, mean, invstd, gamma, training ? sum_dy[c] : 0.0,
                        training ? sum_dyxmu[c] : 0.0, training ? count : 1.0);
    NAME(bapply_all)(dy, x, y, outer, C, inner, k, training, dx, dz, nthreads);
    free(k);
    return FBN_OK;
}

/* One channel of the fused backward: reductions, then dx while the
 * channel's values are in cache. */
static void NAME(backward_channel)(const T *dy, const T *x, const T *y,
                                   ptrdiff_t C, ptrdiff_t inner, ptrdiff_t c,
                                   ptrdiff_t ntot, const T *mean,
                                   const T *invstd, const T *gamma,
                                   int training, T *dx, T *dz, T *k,
                                   T *dgamma, T *dbeta, int nt, int big,
                                   ptrdiff_t c_end)
{
    double sdy, sdyx;
    fbn_mode mode;
    mode.nt = nt;
    mode.pf = (fbn_prefetch_on() && big && c + 1 < c_end) ? inner : 0;
    NAME(bsum_channel)(dy, x, y, C, inner, c, ntot, (double)mean[c], &sdy, &sdyx);
    NAME(bcoef_one)(k, C, c, mean, invstd, gamma, training ? sdy : 0.0,
                    training ? sdyx : 0.0, training ? (double)ntot : 1.0);
    NAME(bapply_range)(dy, x, y, dx, dz, C, inner, c, 0, ntot, k, training, &mode);
    dgamma[c] = (T)(sdyx * (double)invstd[c]);
    dbeta[c] = (T)sdy;
}

static int NAME(k_backward)(const T *dy, const T *x, const T *y, ptrdiff_t outer,
                       ptrdiff_t C, ptrdiff_t inner, const T *mean,
                       const T *invstd, const T *gamma, int training, T *dx,
                       T *dz, T *dgamma, T *dbeta, int nthreads)
{
    ptrdiff_t ntot = outer * inner, c;
    T *k;
    int status = FBN_OK;
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    if (ntot == 0) {
        for (c = 0; c < C; c++)
            dgamma[c] = dbeta[c] = (T)0;
        return FBN_OK;
    }
    k = (T *)malloc(sizeof(T) * 4 * (size_t)C);
    if (k == NULL)
        return FBN_ENOMEM;
    if (inner > 1 || C == 1) {
        ptrdiff_t nk = (ntot + FBN_CHUNK - 1) / FBN_CHUNK;
        int nth = fbn_threads(nthreads, ntot * C, C * nk);
        ptrdiff_t cin = (C == 1 && inner == 1) ? outer : inner;
        if (nth <= 1 || C >= 4 * (ptrdiff_t)nth) {
            /* fused; contiguous blocks of channels per thread, each thread
             * prefetching its next channel */
            size_t bytes = (size_t)(ntot * C) * sizeof(T);
            int nt = fbn_use_nt(bytes), big = bytes >= FBN_PREFETCH_BYTES;
            ptrdiff_t t;
            if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static, 1)
                for (t = 0; t < nth; t++) {
                    ptrdiff_t c0 = C * t / nth, c1 = C * (t + 1) / nth, cc;
                    for (cc = c0; cc < c1; cc++)
                        NAME(backward_channel)(dy, x, y, C, cin, cc, ntot, mean,
                                               invstd, gamma, training, dx, dz, k,
                                               dgamma, dbeta, nt, big, c1);
                    if (nt)
                        fbn_sfence();
                }
            } else {
                for (c = 0; c < C; c++)
                    NAME(backward_channel)(dy, x, y, C, cin, c, ntot, mean, invstd,
                                           gamma, training, dx, dz, k, dgamma,
                                           dbeta, nt, big, C);
                if (nt)
                    fbn_sfence();
            }
            free(k);
            return FBN_OK;
        }
    }
    {
        double *s = (double *)malloc(sizeof(double) * 2 * (size_t)C);
        if (s == NULL) {
            free(k);
            return FBN_ENOMEM;
        }
        status = NAME(breduce)(dy, x, y, outer, C, inner, mean, s, s + C,
                               nthreads);
        if (status == FBN_OK) {
            for (c = 0; c < C; c++) {
                NAME(bcoef_one)(k, C, c, mean, invstd, gamma,
                                training ? s[c] : 0.0, training ? s[C + c] : 0.0,
                                training ? (double)ntot : 1.0);
                dgamma[c] = (T)(s[C + c] * (double)invstd[c]);
                dbeta[c] = (T)s[c];
            }
            NAME(bapply_all)(dy, x, y, outer, C, inner, k, training, dx, dz,
                             nthreads);
        }
        free(s);
    }
    free(k);
    return status;
}
