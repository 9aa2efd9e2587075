/*
 * kernels_impl.h -- the forward kernels, written once for an element type.
 *
 * Included by fastbn.c with T (float or double), SFX (f32 or f64) and
 * FBN_ISA (base, avx2, avx512: the instruction set the compiler may use)
 * defined.  NAME(f) gives the specific name f_SFX_ISA.  Everything is
 * static; the table NAME(ops) at the end is what fastbn.c dispatches to.
 *
 * Layouts of the (outer, C, inner) view:
 *   channel-first (inner > 1): channel c is `outer` runs of `inner` values;
 *   channel-last (inner == 1): each row holds C values, one per channel.
 * A single channel (C == 1) is always treated as channel-first with one run.
 *
 * The normalisation of a value is
 *   t = ((x - mh) - ml) * a + b   [+ z]   [max(t, 0)]
 * with per-channel constants mh + ml = mean (ml carries the part of a double
 * mean that float cannot hold, so large offsets cancel exactly),
 * a = gamma * invstd and b = beta.
 */
#define FBN_CAT_(a, b, c) a##_##b##_##c
#define FBN_CAT(a, b, c) FBN_CAT_(a, b, c)
#define NAME(f) FBN_CAT(f, SFX, FBN_ISA)

/* ---- reductions -------------------------------------------------------- */

#if FBN_VEC
/* 32-byte vectors of T (GCC/clang vector extensions) for the few loops the
 * auto-vectoriser handles badly; FBN_NV of them make the FBN_LANES lanes.
 * The arithmetic is lane by lane, as in the scalar fallback, so every
 * instruction set (and the fallback) gives the same bits. */
typedef T NAME(vec) __attribute__((vector_size(32)));
#define FBN_VN ((int)(32 / sizeof(T)))
#define FBN_NV (FBN_LANES / FBN_VN)
#endif

/* Adds n values to the lane accumulators acc[0..FBN_LANES] (the last one
 * takes the values that do not fill a row of lanes), in double. */
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    double v[FBN_LANES], t = acc[FBN_LANES];
    ptrdiff_t i = 0;
    int k;
    memcpy(v, acc, sizeof v);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++)
            v[k] += (double)x[i + k];
    for (; i < n; i++)
        t += (double)x[i];
    memcpy(acc, v, sizeof v);
    acc[FBN_LANES] = t;
}

/* Adds the squared deviations of n values from m to the lane accumulators. */
static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    double v[FBN_LANES], t = acc[FBN_LANES];
    ptrdiff_t i = 0;
    int k;
    memcpy(v, acc, sizeof v);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++) {
            double d = (double)x[i + k] - m;
            v[k] += d * d;
        }
    for (; i < n; i++) {
        double d = (double)x[i] - m;
        t += d * d;
    }
    memcpy(acc, v, sizeof v);
    acc[FBN_LANES] = t;
}

/* Two-pass moments of the values [i0, i1) of channel c (channel-first):
 * the chunk is small enough that the second pass reads it from cache. */
static void NAME(chunk_moments)(const T *x, ptrdiff_t C, ptrdiff_t inner,
                                ptrdiff_t c, ptrdiff_t i0, ptrdiff_t i1,
                                double *mean, double *m2)
{
    fbn_seg s = fbn_seg_start(i0, i1, inner);
    ptrdiff_t off, len;
    double acc[FBN_LANES + 1] = {0}, m;
    while ((len = fbn_seg_next(&s, C, inner, c, &off)) > 0)
        NAME(sum_acc)(x + off, len, acc);
    m = fbn_lanes_total(acc) / (double)(i1 - i0);
    memset(acc, 0, sizeof acc);
    s = fbn_seg_start(i0, i1, inner);
    while ((len = fbn_seg_next(&s, C, inner, c, &off)) > 0)
        NAME(ssd_acc)(x + off, len, m, acc);
    *mean = m;
    *m2 = fbn_lanes_total(acc);
}

/* Moments of a whole channel (channel-first), chunk by chunk in order. */
static void NAME(channel_moments)(const T *x, ptrdiff_t C, ptrdiff_t inner,
                                  ptrdiff_t c, ptrdiff_t ntot, double *mean,
                                  double *m2)
{
    double n = 0.0, m = 0.0, q = 0.0;
    ptrdiff_t i0;
    for (i0 = 0; i0 < ntot; i0 += FBN_CHUNK) {
        ptrdiff_t i1 = fbn_min(i0 + FBN_CHUNK, ntot);
        double mk, qk;
        NAME(chunk_moments)(x, C, inner, c, i0, i1, &mk, &qk);
        if (i0 == 0) {
            n = (double)i1;
            m = mk;
            q = qk;
        } else {
            fbn_merge(&n, &m, &q, (double)(i1 - i0), mk, qk);
        }
    }
    *mean = m;
    *m2 = q;
}

/* Two-pass moments of rows [r0, r1) (channel-last), written to mean[C] and
 * m2[C]. */
static void NAME(block_moments)(const T *x, ptrdiff_t C, ptrdiff_t r0,
                                ptrdiff_t r1, double *mean, double *m2)
{
    /* Strips of FBN_LANES channels, whose accumulators stay in registers
     * while a tile of rows goes by.  Short rows: the tile is the whole block
     * (rows x 64 bytes, still in L1 for the second pass).  Long rows, whose
     * stride (often a power of two) would make many rows of a strip collide
     * in one L1 set: tiles of FBN_ROW_TILE rows.  Each channel is summed over
     * the rows in order either way, so the bits do not depend on it. */
    ptrdiff_t rt = (size_t)C * sizeof(T) > FBN_STRIP_MAX_ROW ? FBN_ROW_TILE : r1 - r0;
    ptrdiff_t r, rr, c, c0;
    double inv = 1.0 / (double)(r1 - r0);
    int k;
    for (c = 0; c < C; c++)
        mean[c] = m2[c] = 0.0;
    for (rr = r0; rr < r1; rr += rt) {
        ptrdiff_t re = fbn_min(rr + rt, r1);
        for (c0 = 0; c0 < C; c0 += FBN_LANES) {
            const T *xs = x + c0;
            double s[FBN_LANES];
            int w = (int)fbn_min(FBN_LANES, C - c0);
            memcpy(s, mean + c0, sizeof(double) * (size_t)w);
            if (w == FBN_LANES) {
                for (r = rr; r < re; r++)
                    for (k = 0; k < FBN_LANES; k++)
                        s[k] += (double)xs[r * C + k];
            } else {
                for (r = rr; r < re; r++)
                    for (k = 0; k < w; k++)
                        s[k] += (double)xs[r * C + k];
            }
            memcpy(mean + c0, s, sizeof(double) * (size_t)w);
        }
    }
    for (c = 0; c < C; c++)
        mean[c] *= inv;
    for (rr = r0; rr < r1; rr += rt) {
        ptrdiff_t re = fbn_min(rr + rt, r1);
        for (c0 = 0; c0 < C; c0 += FBN_LANES) {
            const T *xs = x + c0;
            double m[FBN_LANES], q[FBN_LANES];
            int w = (int)fbn_min(FBN_LANES, C - c0);
            memcpy(m, mean + c0, sizeof(double) * (size_t)w);
            memcpy(q, m2 + c0, sizeof(double) * (size_t)w);
            if (w == FBN_LANES) {
                for (r = rr; r < re; r++)
                    for (k = 0; k < FBN_LANES; k++) {
                        double d = (double)xs[r * C + k] - m[k];
                        q[k] += d * d;
                    }
            } else {
                for (r = rr; r < re; r++)
                    for (k = 0; k < w; k++) {
                        double d = (double)xs[r * C + k] - m[k];
                        q[k] += d * d;
                    }
            }
            memcpy(m2 + c0, q, sizeof(double) * (size_t)w);
        }
    }
}

/* Per-channel moments of the whole array in double (both layouts). */
static int NAME(stats)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                       ptrdiff_t inner, double *mean, double *m2, int nthreads)
{
    ptrdiff_t ntot = outer * inner;
    if (ntot == 0) {
        ptrdiff_t c;
        for (c = 0; c < C; c++)
            mean[c] = m2[c] = 0.0;
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
            /* one channel per work item */
            if (nth > 1) {
                ptrdiff_t c;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
                for (c = 0; c < C; c++)
                    NAME(channel_moments)(x, C, inner, c, ntot, mean + c, m2 + c);
            } else {
                ptrdiff_t c;
                for (c = 0; c < C; c++)
                    NAME(channel_moments)(x, C, inner, c, ntot, mean + c, m2 + c);
            }
        } else {
            /* few channels: chunks in parallel, then merged in order */
            double *pm = (double *)malloc(sizeof(double) * 2 * (size_t)(C * nk));
            double *pq;
            ptrdiff_t item, c;
            if (pm == NULL)
                return FBN_ENOMEM;
            pq = pm + C * nk;
#pragma omp parallel for num_threads(nth) schedule(static)
            for (item = 0; item < C * nk; item++) {
                ptrdiff_t cc = item / nk, k = item % nk;
                ptrdiff_t i0 = k * FBN_CHUNK, i1 = fbn_min(i0 + FBN_CHUNK, ntot);
                NAME(chunk_moments)(x, C, inner, cc, i0, i1, pm + item, pq + item);
            }
            for (c = 0; c < C; c++) {
                ptrdiff_t k;
                double n = (double)fbn_min(FBN_CHUNK, ntot);
                double m = pm[c * nk], q = pq[c * nk];
                for (k = 1; k < nk; k++) {
                    ptrdiff_t i0 = k * FBN_CHUNK, i1 = fbn_min(i0 + FBN_CHUNK, ntot);
                    fbn_merge(&n, &m, &q, (double)(i1 - i0), pm[c * nk + k],
                              pq[c * nk + k]);
                }
                mean[c] = m;
                m2[c] = q;
            }
            free(pm);
        }
        return FBN_OK;
    } else {
        /* channel-last: blocks of rows, merged in block order */
        ptrdiff_t rb = fbn_block_rows(C);
        ptrdiff_t nb = (outer + rb - 1) / rb;
        int nth = fbn_threads(nthreads, ntot * C, nb);
        double *pm, *pq;
        ptrdiff_t b, c;
        if (nb == 1) {
            NAME(block_moments)(x, C, 0, outer, mean, m2);
            return FBN_OK;
        }
        pm = (double *)malloc(sizeof(double) * 2 * (size_t)(C * nb));
        if (pm == NULL)
            return FBN_ENOMEM;
        pq = pm + C * nb;
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++)
                NAME(block_moments)(x, C, b * rb, fbn_min(b * rb + rb, outer),
                                    pm + b * C, pq + b * C);
        } else {
            for (b = 0; b < nb; b++)
                NAME(block_moments)(x, C, b * rb, fbn_min(b * rb + rb, outer),
                                    pm + b * C, pq + b * C);
        }
        /* merge block by block, vectorised over channels */
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
        free(pm);
        return FBN_OK;
    }
}

/* ---- normalisation ----------------------------------------------------- */

/* The elementwise transform of n contiguous values.  x, z and y may be the
 * same array (each value is read before it is written at the same index);
 * `omp simd` states that there is no dependence between iterations. */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    T mh, T ml, T a, T b, int relu, int hasz)
{
    ptrdiff_t i;
#pragma omp simd
    for (i = 0; i < n; i++) {
        T t = ((x[i] - mh) - ml) * a + b;
        if (hasz)
            t += z[i];
        if (relu)
            t = t < (T)0 ? (T)0 : t; /* NaN stays NaN */
        y[i] = t;
    }
}

static void NAME(apply_any)(const T *x, const T *z, T *y, ptrdiff_t n, T mh,
                            T ml, T a, T b, int relu)
{
    if (relu) {
        if (z)
            NAME(apply_body)(x, z, y, n, mh, ml, a, b, 1, 1);
        else
            NAME(apply_body)(x, z, y, n, mh, ml, a, b, 1, 0);
    } else {
        if (z)
            NAME(apply_body)(x, z, y, n, mh, ml, a, b, 0, 1);
        else
            NAME(apply_body)(x, z, y, n, mh, ml, a, b, 0, 0);
    }
}

/* The transform of n contiguous values.  mode->nt: write y with
 * non-temporal stores (through a tile in L1), for outputs too large to stay
 * in cache; mode->pf: prefetch the values pf elements ahead of x (the next
 * channel's run in the fused forward) while working. */
static void NAME(apply_seg)(const T *x, const T *z, T *y, ptrdiff_t n, T mh,
                            T ml, T a, T b, int relu, const fbn_mode *mode)
{
    T buf[FBN_TILE];
    ptrdiff_t t = 0;
    if (!mode->nt && !mode->pf) {
        NAME(apply_any)(x, z, y, n, mh, ml, a, b, relu);
        return;
    }
    while (t < n) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        if (mode->pf)
            fbn_prefetch(x + t + mode->pf, (size_t)len * sizeof(T));
        if (mode->nt) {
            NAME(apply_any)(x + t, z ? z + t : NULL, buf, len, mh, ml, a, b, relu);
            fbn_stream(y + t, buf, (size_t)len * sizeof(T));
        } else {
            NAME(apply_any)(x + t, z ? z + t : NULL, y + t, len, mh, ml, a, b, relu);
        }
        t += len;
    }
}

/* Per-channel constants, structure of arrays: coef[0..C) = mh,
 * coef[C..2C) = ml, coef[2C..3C) = a, coef[3C..4C) = b. */
static void NAME(coef_one)(T *coef, ptrdiff_t C, ptrdiff_t c, double mean,
                           double invstd, const T *gamma, const T *beta)
{
    T mh = (T)mean;
    double g = gamma ? (double)gamma[c] : 1.0;
    coef[c] = mh;
    coef[C + c] = (T)(mean - (double)mh);
    coef[2 * C + c] = (T)(g * invstd);
    coef[3 * C + c] = beta ? beta[c] : (T)0;
}

/* Values [i0, i1) of channel c, channel-first. */
static void NAME(apply_range)(const T *x, const T *z, T *y, ptrdiff_t C,
                              ptrdiff_t inner, ptrdiff_t c, ptrdiff_t i0,
                              ptrdiff_t i1, const T *coef, int relu,
                              const fbn_mode *mode)
{
    fbn_seg s = fbn_seg_start(i0, i1, inner);
    ptrdiff_t off, len;
    T mh = coef[c], ml = coef[C + c], a = coef[2 * C + c], b = coef[3 * C + c];
    while ((len = fbn_seg_next(&s, C, inner, c, &off)) > 0)
        NAME(apply_seg)(x + off, z ? z + off : NULL, y + off, len, mh, ml, a, b,
                        relu, mode);
}

static inline void NAME(rows_body)(const T *x, const T *z, T *y, ptrdiff_t C,
                                   ptrdiff_t r0, ptrdiff_t r1, const T *coef,
                                   int relu, int hasz)
{
    const T *mh = coef, *ml = coef + C, *a = coef + 2 * C, *b = coef + 3 * C;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        const T *zr = hasz ? z + r * C : NULL;
        T *yr = y + r * C;
#pragma omp simd
        for (c = 0; c < C; c++) {
            T t = ((xr[c] - mh[c]) - ml[c]) * a[c] + b[c];
            if (hasz)
                t += zr[c];
            if (relu)
                t = t < (T)0 ? (T)0 : t;
            yr[c] = t;
        }
    }
}

static void NAME(rows_any)(const T *x, const T *z, T *y, ptrdiff_t C,
                           ptrdiff_t r0, ptrdiff_t r1, const T *coef, int relu)
{
    if (relu) {
        if (z)
            NAME(rows_body)(x, z, y, C, r0, r1, coef, 1, 1);
        else
            NAME(rows_body)(x, z, y, C, r0, r1, coef, 1, 0);
    } else {
        if (z)
            NAME(rows_body)(x, z, y, C, r0, r1, coef, 0, 1);
        else
            NAME(rows_body)(x, z, y, C, r0, r1, coef, 0, 0);
    }
}

/* Rows [r0, r1), channel-last; with mode->nt, groups of rows go through a
 * tile in L1 and out with non-temporal stores. */
static void NAME(apply_rows)(const T *x, const T *z, T *y, ptrdiff_t C,
                             ptrdiff_t r0, ptrdiff_t r1, const T *coef, int relu,
                             const fbn_mode *mode)
{
    T buf[FBN_TILE];
    ptrdiff_t k = FBN_TILE / C, r;
    if (!mode->nt || k < 1) {
        NAME(rows_any)(x, z, y, C, r0, r1, coef, relu);
        return;
    }
    for (r = r0; r < r1; r += k) {
        ptrdiff_t nr = fbn_min(k, r1 - r);
        NAME(rows_any)(x + r * C, z ? z + r * C : NULL, buf, C, 0, nr, coef, relu);
        fbn_stream(y + r * C, buf, (size_t)(nr * C) * sizeof(T));
    }
}

/* Channel-first values [i0, i1) of the flat array, in memory order: each
 * run of `inner` values uses its channel's constants. */
static void NAME(apply_flat)(const T *x, const T *z, T *y, ptrdiff_t C,
                             ptrdiff_t inner, ptrdiff_t i0, ptrdiff_t i1,
                             const T *coef, int relu, const fbn_mode *mode)
{
    ptrdiff_t i = i0;
    while (i < i1) {
        ptrdiff_t r = i / inner, j = i - r * inner, c = r % C;
        ptrdiff_t len = fbn_min(inner - j, i1 - i);
        NAME(apply_seg)(x + i, z ? z + i : NULL, y + i, len, coef[c],
                        coef[C + c], coef[2 * C + c], coef[3 * C + c], relu, mode);
        i += len;
    }
}

/* The transform over the whole array with the constants in coef, in memory
 * order, split into fixed blocks for the threads. */
static void NAME(apply_all)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                            ptrdiff_t inner, const T *coef, const T *z,
                            int relu, T *y, int nthreads)
{
    ptrdiff_t ntot = outer * inner;
    fbn_mode mode;
    /* non-temporal stores pay in channel-first layout; in channel-last
     * layout, whose statistics pass has just pulled x through the caches,
     * measured slower (NHWC (32,56,56,64): 1.73x vs 1.54x np.copyto) */
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
        /* blocks in reverse order: the statistics pass read the array
         * front to back, so its tail is what is still in cache */
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++) {
                ptrdiff_t i0 = (nb - 1 - b) * FBN_BLOCK_VALUES;
                NAME(apply_flat)(x, z, y, C, inner, i0,
                                 fbn_min(i0 + FBN_BLOCK_VALUES, size), coef, relu,
                                 &mode);
            }
        } else {
            for (b = nb - 1; b >= 0; b--)
                NAME(apply_flat)(x, z, y, C, inner, b * FBN_BLOCK_VALUES,
                                 fbn_min(b * FBN_BLOCK_VALUES + FBN_BLOCK_VALUES, size),
                                 coef, relu, &mode);
        }
    } else {
        ptrdiff_t rb = fbn_block_rows(C);
        ptrdiff_t nb = (outer + rb - 1) / rb;
        int nth = fbn_threads(nthreads, ntot * C, nb);
        ptrdiff_t b;
        /* blocks in reverse order, as above */
        if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
            for (b = 0; b < nb; b++) {
                ptrdiff_t r0 = (nb - 1 - b) * rb;
                NAME(apply_rows)(x, z, y, C, r0, fbn_min(r0 + rb, outer), coef,
                                 relu, &mode);
            }
        } else {
            for (b = nb - 1; b >= 0; b--)
                NAME(apply_rows)(x, z, y, C, b * rb, fbn_min(b * rb + rb, outer),
                                 coef, relu, &mode);
        }
    }
    if (mode.nt)
        fbn_sfence();
}

/* ---- public kernels ---------------------------------------------------- */

static int NAME(k_moments)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                      ptrdiff_t inner, double *mean, double *m2, int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    return NAME(stats)(x, outer, C, inner, mean, m2, nthreads);
}

/* One channel of the fused training forward: statistics, then the
 * transform while the channel's values are still in cache. */
static void NAME(train_channel)(const T *x, ptrdiff_t C, ptrdiff_t inner,
                                ptrdiff_t c, ptrdiff_t ntot, const T *gamma,
                                const T *beta, const T *z, double eps, int relu,
                                T *y, T *coef, T *mean_out, T *invstd_out,
                                double *var_out, int nt, int big,
                                ptrdiff_t c_end)
{
    double m, q, var, inv;
    fbn_mode mode;
    mode.nt = nt;
    /* prefetch the next channel of this thread while this one is
     * normalised from cache */
    mode.pf = (fbn_prefetch_on() && big && c + 1 < c_end) ? inner : 0;
    NAME(channel_moments)(x, C, inner, c, ntot, &m, &q);
    var = q / (double)ntot;
    inv = 1.0 / sqrt(var + eps);
    NAME(coef_one)(coef, C, c, m, inv, gamma, beta);
    NAME(apply_range)(x, z, y, C, inner, c, 0, ntot, coef, relu, &mode);
    mean_out[c] = (T)m;
    invstd_out[c] = (T)inv;
    if (var_out)
        var_out[c] = var;
}

static int NAME(k_train_forward)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                            ptrdiff_t inner, const T *gamma, const T *beta,
                            const T *z, double eps, int relu, T *y, T *mean_out,
                            T *invstd_out, double *var_out, int nthreads)
{
    ptrdiff_t ntot = outer * inner, c;
    T stack_coef[4 * FBN_STACK_C];
    T *coef;
    int status = FBN_OK;
    if (outer < 0 || C < 0 || inner < 0 || (ntot < 1 && C > 0) || !(eps > 0))
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    coef = C <= FBN_STACK_C ? stack_coef : (T *)malloc(sizeof(T) * 4 * (size_t)C);
    if (coef == NULL)
        return FBN_ENOMEM;
    if (inner > 1 || C == 1) {
        ptrdiff_t nk = (ntot + FBN_CHUNK - 1) / FBN_CHUNK;
        int nth = fbn_threads(nthreads, ntot * C, C * nk);
        ptrdiff_t cin = inner;
        if (C == 1 && inner == 1)
            cin = outer;
        if (nth <= 1 || C >= 4 * (ptrdiff_t)nth) {
            /* fused: each channel's values are read from memory once; each
             * thread takes a contiguous block of channels so that it can
             * prefetch its next channel */
            size_t bytes = (size_t)(ntot * C) * sizeof(T);
            int nt = fbn_use_nt(bytes), big = bytes >= FBN_PREFETCH_BYTES;
            ptrdiff_t t;
            if (nth > 1) {
#pragma omp parallel for num_threads(nth) schedule(static, 1)
                for (t = 0; t < nth; t++) {
                    ptrdiff_t c0 = C * t / nth, c1 = C * (t + 1) / nth, cc;
                    for (cc = c0; cc < c1; cc++)
                        NAME(train_channel)(x, C, cin, cc, ntot, gamma, beta, z,
                                            eps, relu, y, coef, mean_out,
                                            invstd_out, var_out, nt, big, c1);
                    if (nt)
                        fbn_sfence();
                }
            } else {
                for (c = 0; c < C; c++)
                    NAME(train_channel)(x, C, cin, c, ntot, gamma, beta, z, eps,
                                        relu, y, coef, mean_out, invstd_out,
                                        var_out, nt, big, C);
                if (nt)
                    fbn_sfence();
            }
            if (coef != stack_coef)
                free(coef);
            return FBN_OK;
        }
    }
    /* two phases: statistics (parallel over chunks or row blocks), then the
     * transform */
    {
        double *mean = (double *)malloc(sizeof(double) * 2 * (size_t)C);
        double *m2;
        if (mean == NULL) {
            if (coef != stack_coef)
                free(coef);
            return FBN_ENOMEM;
        }
        m2 = mean + C;
        status = NAME(stats)(x, outer, C, inner, mean, m2, nthreads);
        if (status == FBN_OK) {
            for (c = 0; c < C; c++) {
                double var = m2[c] / (double)ntot;
                double inv = 1.0 / sqrt(var + eps);
                NAME(coef_one)(coef, C, c, mean[c], inv, gamma, beta);
                mean_out[c] = (T)mean[c];
                invstd_out[c] = (T)inv;
                if (var_out)
                    var_out[c] = var;
            }
            NAME(apply_all)(x, outer, C, inner, coef, z, relu, y, nthreads);
        }
        free(mean);
    }
    if (coef != stack_coef)
        free(coef);
    return status;
}

/* The transform with given per-channel statistics: T mean and var (with
 * eps) when mean_d is NULL, else double mean and invstd. */
static int NAME(transform)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                           ptrdiff_t inner, const T *mean_t, const T *var_t,
                           double eps, const double *mean_d,
                           const double *invstd_d, const T *gamma,
                           const T *beta, const T *z, int relu, T *y,
                           int nthreads)
{
    T stack_coef[4 * FBN_STACK_C] = {0}; /* (silences a false GCC warning) */
    T *coef;
    ptrdiff_t c;
    if (C == 0 || outer * inner == 0)
        return FBN_OK;
    coef = C <= FBN_STACK_C ? stack_coef : (T *)malloc(sizeof(T) * 4 * (size_t)C);
    if (coef == NULL)
        return FBN_ENOMEM;
    for (c = 0; c < C; c++) {
        if (mean_d)
            NAME(coef_one)(coef, C, c, mean_d[c], invstd_d[c], gamma, beta);
        else
            NAME(coef_one)(coef, C, c, (double)mean_t[c],
                           1.0 / sqrt((double)var_t[c] + eps), gamma, beta);
    }
    NAME(apply_all)(x, outer, C, inner, coef, z, relu, y, nthreads);
    if (coef != stack_coef)
        free(coef);
    return FBN_OK;
}

static int NAME(k_infer_forward)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                                 ptrdiff_t inner, const T *mean, const T *var,
                                 const T *gamma, const T *beta, const T *z,
                                 double eps, int relu, T *y, int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0 || !(eps > 0))
        return FBN_EINVAL;
    return NAME(transform)(x, outer, C, inner, mean, var, eps, NULL, NULL, gamma,
                           beta, z, relu, y, nthreads);
}

static int NAME(k_apply)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                         ptrdiff_t inner, const double *mean,
                         const double *invstd, const T *gamma, const T *beta,
                         const T *z, int relu, T *y, int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    return NAME(transform)(x, outer, C, inner, NULL, NULL, 0.0, mean, invstd,
                           gamma, beta, z, relu, y, nthreads);
}

#include "backward_impl.h"

#if FBN_VEC
#undef FBN_VN
#undef FBN_NV
#endif

static const FBN_OPS_TYPE(SFX) NAME(ops) = {
    NAME(k_moments),         NAME(k_train_forward), NAME(k_infer_forward),
    NAME(k_apply),           NAME(k_backward_reduce), NAME(k_backward_apply),
    NAME(k_backward),
};

#undef NAME
#undef FBN_CAT
#undef FBN_CAT_
