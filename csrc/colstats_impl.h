/*
 * colstats_impl.h -- per-column statistics that skip NaN (optionally
 * weighted) and the per-column standardisation of a 2-D matrix, written
 * once for an element type.
 *
 * Included at the end of kernels_impl.h for float and double (T, SFX,
 * FBN_ISA and NAME defined there; colstats.h holds what the instances
 * share); CS(f) names cs_f_SFX_ISA.  Everything is static; the kernels go
 * into the element type's ops table (kernels_impl.h).
 *
 * A matrix has n rows (samples) and p columns (features); element (r, c)
 * is at x[r*p + c] (row-major, C order) or x[c*n + r] (column-major,
 * Fortran order).  The arithmetic of a column never depends on the
 * layout's work split, the thread count or the instruction set:
 *   row-major: blocks of cs_block_rows(p) rows; inside a block each column
 *     is summed row by row, in strips of CS_LANES columns whose
 *     accumulators stay in registers;
 *   column-major: chunks of CS_CHUNK rows of one column; inside a chunk
 *     value i goes to lane i % CS_LANES, and the lanes' moments are merged
 *     in a fixed tree.
 * Each block or chunk takes two passes, the second from cache: its
 * weighted mean, then the weighted deviations from it and their squares
 * (the corrected two-pass algorithm of Chan, Golub and LeVeque: the sum of
 * the deviations corrects the mean and the sum of squares).  The
 * per-block moments are merged with Chan's formula in a fixed pairwise
 * tree (cs_merge_parts), so the mean's rounding grows with the log of the
 * number of blocks, not with their number.
 */
#define CS(f) NAME(cs_##f)

/* ---- statistics ------------------------------------------------------ */

#if CS_VEC
/* Eight double lanes, and eight values of T, as GCC/clang vectors (one
 * AVX-512 register; two AVX2 or four SSE2 ones): the
 * lane-by-lane arithmetic of the scalar code below (a value that is NaN
 * adds +0.0, by a mask instead of a branch, which compilers do not
 * if-convert under IEEE exception semantics), so both give the same bits. */
typedef double CS(dv) __attribute__((vector_size(64)));
typedef long long CS(iv) __attribute__((vector_size(64)));
typedef T CS(tv) __attribute__((vector_size(8 * sizeof(T))));

/* dst = the eight values of T at p, in double (macros: a function
 * returning a 64-byte vector would change the ABI in the baseline build) */
#define CS_LOAD4(dst, p)                                                        \
    do {                                                                        \
        CS(tv) tv_;                                                             \
        memcpy(&tv_, (p), sizeof tv_);                                          \
        (dst) = __builtin_convertvector(tv_, CS(dv));                           \
    } while (0)
/* a where ok (all bits set), else +0.0 */
#define CS_KEEP(a, ok) ((CS(dv))((CS(iv))(a) & (ok)))

/* The two passes over CS_LANES contiguous values per step, `steps` steps
 * `stride` values apart (row-major strip: one row per step; column-major
 * run: 16 consecutive values per step), lane j taking value j of each
 * step.  Weights: one per step (gstep, row-major), one per value (gval,
 * column-major) or none.  Lane totals into k, s (the first pass's mean),
 * e (sum of w*(x - mean)) and q (sum of w*(x - mean)^2). */
static inline void CS(lanes2)(const T *x, ptrdiff_t steps, ptrdiff_t stride,
                              const double *gstep, const double *gval,
                              double *k, double *s, double *e, double *q)
{
    CS(dv) ka[2], sa[2], ea[2], qa[2], ma[2];
    const CS(dv) one = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
    const CS(dv) zero = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    double m[CS_LANES];
    ptrdiff_t r;
    int h, j;
    for (h = 0; h < 2; h++)
        ka[h] = sa[h] = ea[h] = qa[h] = zero;
    if (!gstep && !gval) {
        /* First without masks: when no lane's sum is NaN, no value was NaN
         * and the masked passes would give these very bits (every weight
         * 1, nothing masked); else they run. */
        CS(dv) any = zero;
        for (r = 0; r < steps; r++) {
            const T *xr = x + r * stride;
            for (h = 0; h < 2; h++) {
                CS(dv) v;
                CS_LOAD4(v, xr + 8 * h);
                sa[h] += v;
            }
        }
        for (h = 0; h < 2; h++)
            any += sa[h];
        if (any[0] == any[0] && any[1] == any[1] && any[2] == any[2] && any[3] == any[3] &&
            any[4] == any[4] && any[5] == any[5] && any[6] == any[6] && any[7] == any[7]) {
            double n = (double)steps;
            memcpy(s, sa, sizeof sa);
            for (j = 0; j < CS_LANES; j++) {
                k[j] = n;
                m[j] = n != 0.0 ? s[j] / n : 0.0;
            }
            memcpy(ma, m, sizeof ma);
            for (r = 0; r < steps; r++) {
                const T *xr = x + r * stride;
                for (h = 0; h < 2; h++) {
                    CS(dv) v, d;
                    CS_LOAD4(v, xr + 8 * h);
                    d = v - ma[h];
                    ea[h] += d;
                    qa[h] += d * d;
                }
            }
            memcpy(s, m, sizeof m);
            memcpy(e, ea, sizeof ea);
            memcpy(q, qa, sizeof qa);
            return;
        }
        for (h = 0; h < 2; h++)
            sa[h] = zero;
    }
    for (r = 0; r < steps; r++) {
        const T *xr = x + r * stride;
        for (h = 0; h < 2; h++) {
            CS(dv) v, g;
            CS(iv) ok;
            CS_LOAD4(v, xr + 8 * h);
            ok = v == v;
            if (gstep) {
                double gs = gstep[r];
                g = (CS(dv)){gs, gs, gs, gs, gs, gs, gs, gs};
            } else if (gval) {
                memcpy(&g, gval + r * CS_LANES + 8 * h, sizeof g);
            } else {
                ka[h] += CS_KEEP(one, ok);
                sa[h] += CS_KEEP(v, ok);
                continue;
            }
            ka[h] += CS_KEEP(g, ok);
            sa[h] += CS_KEEP(g * v, ok);
        }
    }
    memcpy(k, ka, sizeof ka);
    memcpy(s, sa, sizeof sa);
    for (j = 0; j < CS_LANES; j++)
        m[j] = k[j] != 0.0 ? s[j] / k[j] : 0.0;
    memcpy(ma, m, sizeof ma);
    for (r = 0; r < steps; r++) {
        const T *xr = x + r * stride;
        for (h = 0; h < 2; h++) {
            CS(dv) v, g, d;
            CS(iv) ok;
            CS_LOAD4(v, xr + 8 * h);
            d = v - ma[h];
            ok = v == v;
            if (gstep) {
                double gs = gstep[r];
                g = (CS(dv)){gs, gs, gs, gs, gs, gs, gs, gs};
            } else if (gval) {
                memcpy(&g, gval + r * CS_LANES + 8 * h, sizeof g);
            } else {
                ea[h] += CS_KEEP(d, ok);
                qa[h] += CS_KEEP(d * d, ok);
                continue;
            }
            ea[h] += CS_KEEP(g * d, ok);
            qa[h] += CS_KEEP(g * (d * d), ok);
        }
    }
    memcpy(s, m, sizeof m);
    memcpy(e, ea, sizeof ea);
    memcpy(q, qa, sizeof qa);
}
#undef CS_LOAD4
#undef CS_KEEP
#else
/* The same with scalar lanes (compilers without vector extensions). */
static inline void CS(lanes2)(const T *x, ptrdiff_t steps, ptrdiff_t stride,
                              const double *gstep, const double *gval,
                              double *k, double *s, double *e, double *q)
{
    double m[CS_LANES];
    ptrdiff_t r;
    int j;
    for (j = 0; j < CS_LANES; j++)
        k[j] = s[j] = e[j] = q[j] = 0.0;
    for (r = 0; r < steps; r++)
        for (j = 0; j < CS_LANES; j++) {
            double v = (double)x[r * stride + j];
            double g = gstep ? gstep[r] : gval ? gval[r * CS_LANES + j] : 1.0;
            if (v == v) {
                k[j] += g;
                s[j] += gstep || gval ? g * v : v;
            } else {
                k[j] += 0.0;
                s[j] += 0.0;
            }
        }
    for (j = 0; j < CS_LANES; j++)
        m[j] = k[j] != 0.0 ? s[j] / k[j] : 0.0;
    for (r = 0; r < steps; r++)
        for (j = 0; j < CS_LANES; j++) {
            double v = (double)x[r * stride + j], d = v - m[j];
            double g = gstep ? gstep[r] : gval ? gval[r * CS_LANES + j] : 1.0;
            int w = gstep || gval;
            e[j] += v == v ? (w ? g * d : d) : 0.0;
            q[j] += v == v ? (w ? g * (d * d) : d * d) : 0.0;
        }
    memcpy(s, m, sizeof m);
}
#endif

/* Row-major: the moments of the rows [r0, r1) of strip [c0, c0 + w) (w <=
 * CS_LANES) into k, s, q (weight, mean, M2 about the mean; see
 * cs_corrected). */
static void CS(strip_moments)(const T *x, ptrdiff_t p, ptrdiff_t r0, ptrdiff_t r1,
                              ptrdiff_t c0, int w, const double *wt, double *k,
                              double *s, double *q)
{
    double ks[CS_LANES], ss[CS_LANES], es[CS_LANES], qs[CS_LANES], m[CS_LANES];
    ptrdiff_t r;
    int j;
    if (w == CS_LANES) {
        CS(lanes2)(x + r0 * p + c0, r1 - r0, p, wt ? wt + r0 : NULL, NULL, ks, ss, es,
                   qs);
    } else {
        /* the last strip of fewer columns: scalar lanes, the same
         * arithmetic */
        for (j = 0; j < w; j++)
            ks[j] = ss[j] = es[j] = qs[j] = 0.0;
        for (r = r0; r < r1; r++) {
            const T *xr = x + r * p + c0;
            double g = wt ? wt[r] : 1.0;
            for (j = 0; j < w; j++) {
                double v = (double)xr[j];
                if (v == v) {
                    ks[j] += g;
                    ss[j] += wt ? g * v : v;
                } else {
                    ks[j] += 0.0;
                    ss[j] += 0.0;
                }
            }
        }
        for (j = 0; j < w; j++)
            m[j] = ks[j] != 0.0 ? ss[j] / ks[j] : 0.0;
        for (r = r0; r < r1; r++) {
            const T *xr = x + r * p + c0;
            double g = wt ? wt[r] : 1.0;
            for (j = 0; j < w; j++) {
                double v = (double)xr[j], d = v - m[j];
                es[j] += v == v ? (wt ? g * d : d) : 0.0;
                qs[j] += v == v ? (wt ? g * (d * d) : d * d) : 0.0;
            }
        }
        memcpy(ss, m, sizeof(double) * (size_t)w);
    }
    for (j = 0; j < w; j++)
        cs_corrected(ks[j], ss[j], es[j], qs[j], k + j, s + j, q + j);
}

/* Column-major: the moments of the contiguous values v[0..len) (rows
 * starting at r0 of one column; wt: their weights or NULL) into *k, *m,
 * *q.  Value i goes to lane i % CS_LANES (the last len % CS_LANES values
 * to one more accumulator); the lanes are added in a fixed tree. */
static void CS(run_moments)(const T *v, ptrdiff_t len, const double *wt, double *k,
                            double *m, double *q)
{
    double ka[CS_LANES], qa[CS_LANES], ea[CS_LANES], ma[CS_LANES];
    double kt = 0.0, st = 0.0, qt = 0.0, et = 0.0, mt;
    ptrdiff_t i, full = len / CS_LANES * CS_LANES;
    CS(lanes2)(v, full / CS_LANES, CS_LANES, NULL, wt, ka, ma, ea, qa);
    for (i = full; i < len; i++) {
        double x = (double)v[i], g = wt ? wt[i] : 1.0;
        if (x == x) {
            kt += g;
            st += wt ? g * x : x;
        }
    }
    mt = kt != 0.0 ? st / kt : 0.0;
    for (i = full; i < len; i++) {
        double x = (double)v[i], g = wt ? wt[i] : 1.0, d = x - mt;
        if (x == x) {
            et += wt ? g * d : d;
            qt += wt ? g * (d * d) : d * d;
        }
    }
    /* the lanes and the rest merged as parts of one run */
    {
        double n = 0.0, mm = 0.0, qq = 0.0, pk, pm, pq;
        int j;
        for (j = 0; j < CS_LANES; j++) {
            cs_corrected(ka[j], ma[j], ea[j], qa[j], &pk, &pm, &pq);
            ka[j] = pk;
            ma[j] = pm;
            qa[j] = pq;
        }
        /* pairwise over the lanes, then the rest */
        for (j = 1; j < CS_LANES; j *= 2) {
            int a;
            for (a = 0; a + j < CS_LANES; a += 2 * j)
                cs_merge(ka + a, ma + a, qa + a, ka[a + j], ma[a + j], qa[a + j]);
        }
        n = ka[0];
        mm = ma[0];
        qq = qa[0];
        cs_corrected(kt, mt, et, qt, &pk, &pm, &pq);
        cs_merge(&n, &mm, &qq, pk, pm, pq);
        *k = n;
        *m = mm;
        *q = qq;
    }
}

/* One statistics item: a block of rows (row-major) or a chunk of one
 * column (column-major). */
static void CS(item_stats)(void *arg, ptrdiff_t b)
{
    cs_job *jb = (cs_job *)arg;
    const T *x = (const T *)jb->x;
    if (jb->colmajor) {
        ptrdiff_t c = b / jb->nparts, k = b % jb->nparts;
        ptrdiff_t r0 = k * CS_CHUNK, r1 = fbn_min(r0 + CS_CHUNK, jb->n);
        double *o = jb->part + 3 * b;
        CS(run_moments)(x + c * jb->n + r0, r1 - r0, jb->w ? jb->w + r0 : NULL, o,
                        o + 1, o + 2);
    } else {
        ptrdiff_t r0 = b * jb->rows, r1 = fbn_min(r0 + jb->rows, jb->n), c0;
        double *k = jb->part + 3 * jb->p * b, *s = k + jb->p, *q = s + jb->p;
        for (c0 = 0; c0 < jb->p; c0 += CS_LANES) {
            int w = (int)fbn_min(CS_LANES, jb->p - c0);
            CS(strip_moments)(x, jb->p, r0, r1, c0, w, jb->w, k + c0, s + c0, q + c0);
        }
    }
}

static int CS(k_colstats)(const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                          const double *w, double *count, double *mean,
                          double *m2, int nthreads)
{
    cs_job jb;
    ptrdiff_t items, c;
    if (n < 0 || p < 0)
        return FBN_EINVAL;
    if (p == 0)
        return FBN_OK;
    if (n == 0) {
        for (c = 0; c < p; c++) {
            count[c] = m2[c] = 0.0;
            mean[c] = NAN;
        }
        return FBN_OK;
    }
    memset(&jb, 0, sizeof jb);
    jb.x = x;
    jb.n = n;
    jb.p = p;
    jb.colmajor = colmajor;
    jb.w = w;
    if (colmajor) {
        jb.nparts = fbn_cdiv(n, CS_CHUNK);
        items = p * jb.nparts;
    } else {
        jb.rows = cs_block_rows(p);
        jb.nparts = fbn_cdiv(n, jb.rows);
        items = jb.nparts;
    }
    /* the parts, then room for one column's parts to merge */
    jb.part = (double *)malloc(sizeof(double) * 3 * ((size_t)p + 1) * (size_t)jb.nparts);
    if (jb.part == NULL)
        return FBN_ENOMEM;
    fbn_parallel_for(items, CS(item_stats), &jb, fbn_threads(nthreads, n * p, items),
                     FBN_FORWARD | cs_light(n * p));
    cs_merge_parts(&jb, jb.part + 3 * (size_t)p * (size_t)jb.nparts, count, mean, m2);
    free(jb.part);
    return FBN_OK;
}

/* ---- standardisation --------------------------------------------------- */

/* y = (x - m) / s (inverse: y = x * s + m) for the values of rows [r0, r1)
 * (row-major, every column) into y; returns the largest |x| that is not
 * NaN (to find infinities). */
static inline T CS(rows_std)(const T *x, T *y, ptrdiff_t p, ptrdiff_t r0, ptrdiff_t r1,
                             const T *m, const T *s, int inverse)
{
    T mx = (T)0;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * p;
        T *yr = y + (r - r0) * p;
        if (inverse) {
        FBN_OMP_SIMD_MAX(mx)
            for (c = 0; c < p; c++) {
                T v = xr[c], a = v < (T)0 ? -v : v;
                mx = a > mx ? a : mx;
                yr[c] = v * s[c] + m[c];
            }
        } else {
        FBN_OMP_SIMD_MAX(mx)
            for (c = 0; c < p; c++) {
                T v = xr[c], a = v < (T)0 ? -v : v;
                mx = a > mx ? a : mx;
                yr[c] = (v - m[c]) / s[c];
            }
        }
    }
    return mx;
}

/* The same for len contiguous values of one column (constants m, s). */
static inline T CS(run_std)(const T *x, T *y, ptrdiff_t len, T m, T s, int inverse)
{
    T mx = (T)0;
    ptrdiff_t i;
    if (inverse) {
        FBN_OMP_SIMD_MAX(mx)
        for (i = 0; i < len; i++) {
            T v = x[i], a = v < (T)0 ? -v : v;
            mx = a > mx ? a : mx;
            y[i] = v * s + m;
        }
    } else {
        FBN_OMP_SIMD_MAX(mx)
        for (i = 0; i < len; i++) {
            T v = x[i], a = v < (T)0 ? -v : v;
            mx = a > mx ? a : mx;
            y[i] = (v - m) / s;
        }
    }
    return mx;
}

/* The largest |x| that is not NaN of n contiguous values. */
static inline T CS(scan)(const T *x, ptrdiff_t n)
{
    T mx = (T)0;
    ptrdiff_t i;
        FBN_OMP_SIMD_MAX(mx)
    for (i = 0; i < n; i++) {
        T v = x[i], a = v < (T)0 ? -v : v;
        mx = a > mx ? a : mx;
    }
    return mx;
}

/* One standardisation item: CS_APPLY_VALUES values in memory order, with
 * plain stores (non-temporal ones, through an L1 tile as the batch-norm
 * kernels stream, took 1.3-1.6x as long for the 256 MB outputs of the
 * issue-13 benchmark on this project's VM, into fresh or reused arrays).
 * Without y, the item only looks for infinities. */
static void CS(item_std)(void *arg, ptrdiff_t b)
{
    cs_job *jb = (cs_job *)arg;
    const T *x = (const T *)jb->x, *m = (const T *)jb->mt, *s = m + jb->p;
    T *y = (T *)jb->y;
    T mx = (T)0, t;
    if (y == NULL) {
        ptrdiff_t i0 = jb->colmajor ? b * CS_APPLY_VALUES : b * jb->rows * jb->p;
        ptrdiff_t i1 = jb->colmajor ? fbn_min(i0 + CS_APPLY_VALUES, jb->n * jb->p)
                                    : fbn_min(b * jb->rows + jb->rows, jb->n) * jb->p;
        mx = CS(scan)(x + i0, i1 - i0);
    } else if (jb->colmajor) {
        ptrdiff_t total = jb->n * jb->p;
        ptrdiff_t i = b * CS_APPLY_VALUES, end = fbn_min(i + CS_APPLY_VALUES, total);
        while (i < end) {
            ptrdiff_t c = i / jb->n, stop = fbn_min(end, (c + 1) * jb->n);
            t = CS(run_std)(x + i, y + i, stop - i, m[c], s[c], jb->inverse);
            mx = t > mx ? t : mx;
            i = stop;
        }
    } else {
        ptrdiff_t r = b * jb->rows, r1 = fbn_min(r + jb->rows, jb->n);
        mx = CS(rows_std)(x, y + r * jb->p, jb->p, r, r1, m, s, jb->inverse);
    }
    jb->flags[b] = mx == (T)INFINITY;
}

static int CS(k_standardize)(const void *x, ptrdiff_t n, ptrdiff_t p, int colmajor,
                             const double *mean, const double *scale, int inverse,
                             void *y, int *has_inf, int nthreads)
{
    cs_job jb;
    T stack[2 * CS_STACK_C], *mt;
    ptrdiff_t items, c, b;
    int nth, bad = 0;
    if (has_inf)
        *has_inf = 0;
    if (n < 0 || p < 0)
        return FBN_EINVAL;
    if (n == 0 || p == 0)
        return FBN_OK;
    /* the constants in T, as NumPy's astype rounds them (no centring: 0, no
     * scaling: 1, which leave every value's bits as they are) */
    mt = p <= CS_STACK_C ? stack : (T *)malloc(sizeof(T) * 2 * (size_t)p);
    if (mt == NULL)
        return FBN_ENOMEM;
    for (c = 0; c < p; c++) {
        mt[c] = mean ? (T)mean[c] : (T)0;
        mt[p + c] = scale ? (T)scale[c] : (T)1;
    }
    memset(&jb, 0, sizeof jb);
    jb.x = x;
    jb.y = y;
    jb.n = n;
    jb.p = p;
    jb.colmajor = colmajor;
    jb.mt = mt;
    jb.inverse = inverse;
    if (colmajor) {
        items = fbn_cdiv(n * p, CS_APPLY_VALUES);
    } else {
        jb.rows = fbn_max(1, CS_APPLY_VALUES / p);
        items = fbn_cdiv(n, jb.rows);
    }
    nth = fbn_threads(nthreads, n * p, items);
    jb.flags = (unsigned char *)malloc((size_t)items);
    if (jb.flags == NULL) {
        if (mt != stack)
            free(mt);
        return FBN_ENOMEM;
    }
    fbn_parallel_for(items, CS(item_std), &jb, nth,
                     FBN_FORWARD | cs_light(n * p));
    for (b = 0; b < items; b++)
        bad |= jb.flags[b];
    if (has_inf)
        *has_inf = bad;
    free(jb.flags);
    if (mt != stack)
        free(mt);
    return FBN_OK;
}

#undef CS
