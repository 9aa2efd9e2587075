/*
 * kernels_impl.h -- the forward kernels, written once for an element type.
 *
 * Included by type_instance.h with T (float or double, or fbn_half), R
 * (the per-channel and computing type: T, or float for the half types),
 * FBN_HALF (0, or 1 for float16, 2 for bfloat16), SFX (f32, f64, f16, bf16)
 * and FBN_ISA (base, avx2, avx512: the instruction set the compiler may use)
 * defined, after the element interface (elem_impl.h: NAME(f) gives the
 * specific name f_SFX_ISA, FBN_LD/FBN_ST an element's value) and, for the
 * half types, their hot loops (half_impl.h), which stand in for the bodies
 * this file compiles only for float and double (#if !FBN_HALF).
 * Everything is static; the table NAME(ops) at the end is what dispatch.c
 * dispatches to.
 *
 * Every kernel follows a plan (fbn_plan, plan.h) made from the geometry
 * of its (outer, C, inner) view and the caches, and runs the plan's items
 * through fbn_parallel_for (pool.h):
 *   channel-first (inner > 1; C == 1 is one run of outer*inner values):
 *     a tile is a group of channels times a range of their chunks (chunk =
 *     FBN_CHUNK consecutive values of one channel, the unit of the
 *     statistics).  Tiles are read in memory order, sample by sample, so
 *     short planes still stream.  When the whole of a tile's channels fits
 *     in the cache budget, the tile is fused: statistics, then the
 *     transform while the values are in cache (one read of x).  Otherwise
 *     the statistics tiles run first and the transform follows in blocks of
 *     memory.
 *   channel-last (inner == 1): blocks of rows, SIMD across channels; the
 *     statistics of each block, then the transform by blocks.
 * Every per-chunk or per-block result is combined in chunk or block order,
 * so the numbers depend on the shape only: not on the plan, the thread
 * count or the instruction set.
 *
 * The normalisation of a value is
 *   t = ((x - mh) - ml) * a + b   [+ z]   [max(t, 0)   [min(t, 6)]]
 * with per-channel constants mh + ml = mean (ml carries the part of a double
 * mean that float cannot hold, so large offsets cancel exactly),
 * a = gamma * invstd and b = beta, and the activation act (FBN_ACT_*: none,
 * ReLU, ReLU6) a constant in each instance of a loop.
 */
/* Non-temporal copy of n bytes to dst: fbn_stream's 16-byte stores, or in
 * the AVX2 and AVX-512 kernels FBN_WIDE_NT-byte stores (32 or 64: a whole
 * line per store) where dst is so aligned (apply_span's tiles end on
 * 64-byte boundaries).  Measured with AVX-512: 20-30% faster streamed
 * passes than 16-byte stores. */
static inline void NAME(stream)(void *dst, const void *src, size_t n)
{
#if FBN_WIDE_NT
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (FBN_WIDE_NT - ((size_t)(uintptr_t)d & (FBN_WIDE_NT - 1))) & (FBN_WIDE_NT - 1);
    if (head > n)
        head = n;
    fbn_stream(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= FBN_WIDE_NT; n -= FBN_WIDE_NT, d += FBN_WIDE_NT, s += FBN_WIDE_NT) {
#if FBN_WIDE_NT == 64
        _mm512_stream_si512((__m512i *)d, _mm512_loadu_si512((const void *)s));
#else
        _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
#endif
    }
    fbn_stream(d, s, n);
#else
    fbn_stream(dst, src, n);
#endif
}

/* ---- reductions -------------------------------------------------------- */

/* The generic form of a function that half_impl.h wraps (the half types
 * run the float kernel's on widened rows; this one when a buffer cannot be
 * had). */
#if FBN_HALF
#define FBN_GENERIC(f) FBN_CAT(f##_generic, SFX, FBN_ISA)
#else
#define FBN_GENERIC(f) NAME(f)
#endif

#if !FBN_HALF && FBN_F16C == 512 && FBN_LANES == 16
/* AVX-512 and AVX2, float and double: the statistics' 16 double lanes in
 * FBN_SUM_REGS registers of FBN_DW lanes, FBN_DW values of T loaded and
 * widened by one instruction each (GCC's lane loops loaded 16 floats at
 * once and split them, a shuffle per 16 values, and went through the
 * stack on short runs: 1.1-1.5x the time).  The same additions in the same
 * order as the plain loops, so the same bits. */
#define FBN_SUM_REGS 2
typedef __m512d NAME(dv);
#define FBN_DV_LD _mm512_loadu_pd
#define FBN_DV_ST _mm512_storeu_pd
#define FBN_DV_ADD _mm512_add_pd
#define FBN_DV_SUB _mm512_sub_pd
#define FBN_DV_MUL _mm512_mul_pd
#define FBN_DV_SET1 _mm512_set1_pd
static inline __m512d NAME(ldw)(const T *p)
{
    if (sizeof(T) == 4)
        return _mm512_cvtps_pd(_mm256_loadu_ps((const float *)(const void *)p));
    return _mm512_loadu_pd((const double *)(const void *)p);
}
#elif !FBN_HALF && FBN_F16C == 256 && FBN_LANES == 16
#define FBN_SUM_REGS 4
typedef __m256d NAME(dv);
#define FBN_DV_LD _mm256_loadu_pd
#define FBN_DV_ST _mm256_storeu_pd
#define FBN_DV_ADD _mm256_add_pd
#define FBN_DV_SUB _mm256_sub_pd
#define FBN_DV_MUL _mm256_mul_pd
#define FBN_DV_SET1 _mm256_set1_pd
static inline __m256d NAME(ldw)(const T *p)
{
    if (sizeof(T) == 4)
        return _mm256_cvtps_pd(_mm_loadu_ps((const float *)(const void *)p));
    return _mm256_loadu_pd((const double *)(const void *)p);
}
#else
#define FBN_SUM_REGS 0
#endif
#define FBN_DW (FBN_LANES / (FBN_SUM_REGS ? FBN_SUM_REGS : 1))

#if !FBN_HALF /* (the half types': half_impl.h, with FBN_SACC and FBN_QACC,
                 their accumulators per channel in the statistics' passes) */
#define FBN_SACC FBN_ACC
#define FBN_QACC FBN_ACC

/* Adds n values to the lane accumulators acc[0..FBN_LANES] (the last one
 * takes the values that do not fill a row of lanes), in double (in
 * registers with FBN_SUM_REGS, above). */
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    double t = acc[FBN_LANES];
    ptrdiff_t i = 0;
#if FBN_SUM_REGS
    NAME(dv) a[FBN_SUM_REGS];
    int j;
    for (j = 0; j < FBN_SUM_REGS; j++)
        a[j] = FBN_DV_LD(acc + j * FBN_DW);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (j = 0; j < FBN_SUM_REGS; j++)
            a[j] = FBN_DV_ADD(a[j], NAME(ldw)(x + i + j * FBN_DW));
    for (j = 0; j < FBN_SUM_REGS; j++)
        FBN_DV_ST(acc + j * FBN_DW, a[j]);
#else
    double v[FBN_LANES];
    int k;
    memcpy(v, acc, sizeof v);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++)
            v[k] += (double)FBN_LD(x[i + k]);
    memcpy(acc, v, sizeof v);
#endif
    for (; i < n; i++)
        t += (double)FBN_LD(x[i]);
    acc[FBN_LANES] = t;
}

/* Adds the squared deviations of n values from m to the lane accumulators. */
static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    double t = acc[FBN_LANES];
    ptrdiff_t i = 0;
#if FBN_SUM_REGS
    NAME(dv) a[FBN_SUM_REGS], mv = FBN_DV_SET1(m), d;
    int j;
    for (j = 0; j < FBN_SUM_REGS; j++)
        a[j] = FBN_DV_LD(acc + j * FBN_DW);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (j = 0; j < FBN_SUM_REGS; j++) {
            d = FBN_DV_SUB(NAME(ldw)(x + i + j * FBN_DW), mv);
            a[j] = FBN_DV_ADD(a[j], FBN_DV_MUL(d, d));
        }
    for (j = 0; j < FBN_SUM_REGS; j++)
        FBN_DV_ST(acc + j * FBN_DW, a[j]);
#else
    double v[FBN_LANES];
    int k;
    memcpy(v, acc, sizeof v);
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (k = 0; k < FBN_LANES; k++) {
            double d = (double)FBN_LD(x[i + k]) - m;
            v[k] += d * d;
        }
    memcpy(acc, v, sizeof v);
#endif
    for (; i < n; i++) {
        double d = (double)FBN_LD(x[i]) - m;
        t += d * d;
    }
    acc[FBN_LANES] = t;
}
#endif /* FBN_HALF */

#if !FBN_HALF && FBN_SUM_REGS
/* ssd_acc over the values [i0, i1) of one channel (x: its first run), run
 * by run, the lanes kept in registers. */
static inline void NAME(ssd_runs)(const T *x, const fbn_plan *p, ptrdiff_t i0,
                                  ptrdiff_t i1, double m, double *acc)
{
    ptrdiff_t inner = p->inner, step = p->C * inner, o, i;
    NAME(dv) a[FBN_SUM_REGS], mv = FBN_DV_SET1(m), d;
    double t = acc[FBN_LANES];
    int j;
    for (j = 0; j < FBN_SUM_REGS; j++)
        a[j] = FBN_DV_LD(acc + j * FBN_DW);
    for (o = i0 / inner; o * inner < i1; o++) {
        ptrdiff_t j0 = i0 > o * inner ? i0 - o * inner : 0;
        ptrdiff_t len = fbn_min(i1 - o * inner, inner) - j0;
        const T *r = x + o * step + j0;
        for (i = 0; i + FBN_LANES <= len; i += FBN_LANES)
            for (j = 0; j < FBN_SUM_REGS; j++) {
                d = FBN_DV_SUB(NAME(ldw)(r + i + j * FBN_DW), mv);
                a[j] = FBN_DV_ADD(a[j], FBN_DV_MUL(d, d));
            }
        for (; i < len; i++) {
            double e = (double)FBN_LD(r[i]) - m;
            t += e * e;
        }
    }
    for (j = 0; j < FBN_SUM_REGS; j++)
        FBN_DV_ST(acc + j * FBN_DW, a[j]);
    acc[FBN_LANES] = t;
}
#endif

/* One pass over chunk k of the channels [c0, c1) (channel-first), in memory
 * order: sums into the lane accumulators acc[(c - c0) * FBN_SACC ...] when m
 * is NULL, else squared deviations from m[c - c0] (into FBN_QACC each).
 * Each channel's values arrive in its own order, run by run (pieces of runs
 * at the chunk's ends), whatever the group of channels, so its lanes always
 * see the same sequence.  dbl (half types): the float kernel's double sums
 * (FBN_ACC each).  (With FBN_SUM_REGS, the squared deviations of a tile of
 * several channels and short runs go channel by channel: ssd_runs.) */
static void NAME(chunk_pass)(const T *x, const fbn_plan *p, ptrdiff_t c0,
                             ptrdiff_t c1, ptrdiff_t k, const double *m,
                             double *acc, int dbl)
{
    ptrdiff_t inner = p->inner, C = p->C;
    ptrdiff_t i0 = k * FBN_CHUNK, i1 = fbn_min(i0 + FBN_CHUNK, p->ntot), o, c;
    (void)dbl;
#if !FBN_HALF && FBN_SUM_REGS
    if (m && c1 - c0 > 1 && inner < FBN_CHUNK) {
        /* the second pass (from cache) of a tile of several channels with
         * runs shorter than a chunk: channel by channel, the lanes staying
         * in registers over the channel's runs (the same additions, in the
         * same order, as ssd_acc run by run) */
        for (c = c0; c < c1; c++)
            NAME(ssd_runs)(x + c * inner, p, i0, i1, m[c - c0], acc + (c - c0) * FBN_ACC);
        return;
    }
#endif
    for (o = i0 / inner; o * inner < i1; o++) {
        ptrdiff_t j0 = i0 > o * inner ? i0 - o * inner : 0;
        ptrdiff_t len = fbn_min(i1 - o * inner, inner) - j0;
        const T *run = x + o * C * inner + j0;
#if FBN_HALF
        if (dbl)
            for (c = c0; c < c1; c++)
                NAME(dsum_acc)(run + c * inner, len, m ? m + (c - c0) : NULL,
                               acc + (c - c0) * FBN_ACC);
        else
#endif
        if (m)
            for (c = c0; c < c1; c++)
                NAME(ssd_acc)(run + c * inner, len, m[c - c0], acc + (c - c0) * FBN_QACC);
        else
            for (c = c0; c < c1; c++)
                NAME(sum_acc)(run + c * inner, len, acc + (c - c0) * FBN_SACC);
    }
}

/* Moments of chunks [k0, k1) of channels [c0, c1) (at most FBN_TILE_C),
 * two passes per chunk (the second from cache), into pm/pq[c * nk + k].
 * The half types' passes sum in float, and the chunk's moments are
 * corrected by sum(d) (half_impl.h); a chunk whose float sums did not hold
 * is summed again as the float kernel sums it. */
static void NAME(tile_moments)(const T *x, const fbn_plan *p, ptrdiff_t c0,
                               ptrdiff_t c1, ptrdiff_t k0, ptrdiff_t k1,
                               double *pm, double *pq)
{
    double acc[FBN_TILE_C * FBN_QACC], m[FBN_TILE_C];
    ptrdiff_t w = c1 - c0, k, c;
    for (k = k0; k < k1; k++) {
        double cnt = (double)(fbn_min(k * FBN_CHUNK + FBN_CHUNK, p->ntot) - k * FBN_CHUNK);
        memset(acc, 0, sizeof(double) * FBN_SACC * (size_t)w);
        NAME(chunk_pass)(x, p, c0, c1, k, NULL, acc, 0);
        for (c = 0; c < w; c++) {
#if FBN_HALF
            NAME(acc_done)(acc + c * FBN_SACC, 0);
#endif
            m[c] = fbn_lanes_total(acc + c * FBN_SACC) / cnt;
        }
        memset(acc, 0, sizeof(double) * FBN_QACC * (size_t)w);
        NAME(chunk_pass)(x, p, c0, c1, k, m, acc, 0);
        for (c = 0; c < w; c++) {
#if FBN_HALF
            double *a = acc + c * FBN_QACC, sd, q;
            NAME(acc_done)(a, 1);
            sd = fbn_lanes_total(a);
            q = fbn_lanes_total(a + FBN_ACC) - sd * (sd / cnt);
            if (NAME(sums_held)(q, sd, cnt)) {
                pm[(c0 + c) * p->nk + k] = (double)(float)m[c] + sd / cnt;
                pq[(c0 + c) * p->nk + k] = q;
            } else {
                double md;
                memset(a, 0, sizeof(double) * FBN_ACC);
                NAME(chunk_pass)(x, p, c0 + c, c0 + c + 1, k, NULL, a, 1);
                md = fbn_lanes_total(a) / cnt;
                memset(a, 0, sizeof(double) * FBN_ACC);
                NAME(chunk_pass)(x, p, c0 + c, c0 + c + 1, k, &md, a, 1);
                pm[(c0 + c) * p->nk + k] = md;
                pq[(c0 + c) * p->nk + k] = fbn_lanes_total(a);
            }
#else
            pm[(c0 + c) * p->nk + k] = m[c];
            pq[(c0 + c) * p->nk + k] = fbn_lanes_total(acc + c * FBN_ACC);
#endif
        }
    }
}

/* Two-pass moments of rows [r0, r1) (channel-last), written to mean[C] and
 * m2[C]. */
static void FBN_GENERIC(block_moments)(const T *x, ptrdiff_t C, ptrdiff_t r0,
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
#if FBN_SUM_REGS
            if (w == FBN_LANES) {
                NAME(dv) a[FBN_SUM_REGS];
                int j;
                for (j = 0; j < FBN_SUM_REGS; j++)
                    a[j] = FBN_DV_LD(mean + c0 + j * FBN_DW);
                for (r = rr; r < re; r++)
                    for (j = 0; j < FBN_SUM_REGS; j++)
                        a[j] = FBN_DV_ADD(a[j], NAME(ldw)(xs + r * C + j * FBN_DW));
                for (j = 0; j < FBN_SUM_REGS; j++)
                    FBN_DV_ST(mean + c0 + j * FBN_DW, a[j]);
                continue;
            }
#endif
            memcpy(s, mean + c0, sizeof(double) * (size_t)w);
            if (w == FBN_LANES) {
                for (r = rr; r < re; r++)
                    for (k = 0; k < FBN_LANES; k++)
                        s[k] += (double)FBN_LD(xs[r * C + k]);
            } else {
                for (r = rr; r < re; r++)
                    for (k = 0; k < w; k++)
                        s[k] += (double)FBN_LD(xs[r * C + k]);
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
#if FBN_SUM_REGS
            if (w == FBN_LANES) {
                NAME(dv) mr[FBN_SUM_REGS], qr[FBN_SUM_REGS], d;
                int j;
                for (j = 0; j < FBN_SUM_REGS; j++) {
                    mr[j] = FBN_DV_LD(mean + c0 + j * FBN_DW);
                    qr[j] = FBN_DV_LD(m2 + c0 + j * FBN_DW);
                }
                for (r = rr; r < re; r++)
                    for (j = 0; j < FBN_SUM_REGS; j++) {
                        d = FBN_DV_SUB(NAME(ldw)(xs + r * C + j * FBN_DW), mr[j]);
                        qr[j] = FBN_DV_ADD(qr[j], FBN_DV_MUL(d, d));
                    }
                for (j = 0; j < FBN_SUM_REGS; j++)
                    FBN_DV_ST(m2 + c0 + j * FBN_DW, qr[j]);
                continue;
            }
#endif
            memcpy(m, mean + c0, sizeof(double) * (size_t)w);
            memcpy(q, m2 + c0, sizeof(double) * (size_t)w);
            if (w == FBN_LANES) {
                for (r = rr; r < re; r++)
                    for (k = 0; k < FBN_LANES; k++) {
                        double d = (double)FBN_LD(xs[r * C + k]) - m[k];
                        q[k] += d * d;
                    }
            } else {
                for (r = rr; r < re; r++)
                    for (k = 0; k < w; k++) {
                        double d = (double)FBN_LD(xs[r * C + k]) - m[k];
                        q[k] += d * d;
                    }
            }
            memcpy(m2 + c0, q, sizeof(double) * (size_t)w);
        }
    }
}

#if FBN_HALF
/* Rows [r0, r1): their moments summed in float (block_moments_f,
 * half_impl.h), or, where the float sums did not hold for some channel,
 * the float kernel's block_moments on the rows widened (its sums run over
 * the block's rows in the same order). */
static void NAME(block_moments)(const T *x, ptrdiff_t C, ptrdiff_t r0,
                                ptrdiff_t r1, double *mean, double *m2)
{
    ptrdiff_t n = (r1 - r0) * C, t;
    /* C doubles, then 5 C floats of float sums */
    double *sd = (double *)malloc(sizeof(double) * (size_t)C + sizeof(float) * (size_t)(5 * C));
    float *w;
    int held;
    if (sd == NULL) {
        FBN_GENERIC(block_moments)(x, C, r0, r1, mean, m2);
        return;
    }
    held = NAME(block_moments_f)(x + r0 * C, C, r1 - r0, mean, m2, sd, (float *)(sd + C));
    free(sd);
    if (held)
        return;
    w = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (w == NULL) {
        FBN_GENERIC(block_moments)(x, C, r0, r1, mean, m2);
        return;
    }
    for (t = 0; t < n; t += FBN_TILE)
        NAME(widen)(x + r0 * C + t, w + t, fbn_min(FBN_TILE, n - t));
    FBN_F32(block_moments)(w, C, 0, r1 - r0, mean, m2);
    free(w);
}
#endif

/* ---- normalisation ----------------------------------------------------- */

/* The elementwise transform of n contiguous values.  x, z and y may be the
 * same array (each value is read before it is written at the same index);
 * `omp simd` states that there is no dependence between iterations. */
#if !FBN_HALF /* (half_impl.h) */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int act, int hasz)
{
    ptrdiff_t i;
        FBN_OMP_SIMD
    for (i = 0; i < n; i++) {
        R t = ((FBN_LD(x[i]) - mh) - ml) * a + b;
        if (hasz)
            t += FBN_LD(z[i]);
        FBN_ACTIVATE(t, act);
        y[i] = FBN_ST(t);
    }
}
#endif

static void NAME(apply_any)(const T *x, const T *z, T *y, ptrdiff_t n, R mh,
                            R ml, R a, R b, int act)
{
    FBN_ACT_Z(NAME(apply_body), act, z != NULL, x, z, y, n, mh, ml, a, b);
}

#if !FBN_HALF
/* apply_body with a value's constants from k (four arrays of n: mh, ml, a,
 * b, at k, k + FBN_TILE, ...): the same arithmetic on every value, for a
 * span of several short runs in one loop (apply_short). */
static inline void NAME(apply_kbody)(const T *x, const T *z, T *y, ptrdiff_t n,
                                     const R *k, int act, int hasz)
{
    const R *mh = k, *ml = k + FBN_TILE, *a = k + 2 * FBN_TILE, *b = k + 3 * FBN_TILE;
    ptrdiff_t i;
        FBN_OMP_SIMD
    for (i = 0; i < n; i++) {
        R t = ((FBN_LD(x[i]) - mh[i]) - ml[i]) * a[i] + b[i];
        if (hasz)
            t += FBN_LD(z[i]);
        FBN_ACTIVATE(t, act);
        y[i] = FBN_ST(t);
    }
}
#endif

#if FBN_HALF && FBN_F16C == 512
/* The kernels whose transform can write straight to memory, a whole line
 * per non-temporal store (apply_nt_body): apply_span lets them. */
#undef FBN_NT_LINES
#define FBN_NT_LINES 1
#define FBN_LINE_VALUES ((ptrdiff_t)(64 / sizeof(T)))
static void NAME(apply_any_nt)(const T *x, const T *z, T *y, ptrdiff_t n, R mh,
                               R ml, R a, R b, int act, ptrdiff_t pf)
{
    FBN_ACT_Z(NAME(apply_nt_body), act, z != NULL, x, z, y, n, mh, ml, a, b, pf);
}
#else
#undef FBN_NT_LINES
#define FBN_NT_LINES 0
#endif

/* Per-channel constants, structure of arrays: coef[0..C) = mh,
 * coef[C..2C) = ml, coef[2C..3C) = a, coef[3C..4C) = b.  a is made from
 * invstd rounded to R, the value the kernels return, so that the
 * backward can rebuild a bit for bit from it (its activation mask from
 * x, backward_impl.h). */
static void NAME(coef_one)(R *coef, ptrdiff_t C, ptrdiff_t c, double mean,
                           double invstd, const R *gamma, const R *beta)
{
    R mh = (R)mean;
    double g = gamma ? (double)gamma[c] : 1.0;
    coef[c] = mh;
    coef[C + c] = (R)(mean - (double)mh);
    coef[2 * C + c] = (R)(g * (double)(R)invstd);
    coef[3 * C + c] = beta ? beta[c] : (R)0;
}

/* Channel-last: the 4*C constants (four arrays of C) repeated for the Cv
 * virtual channels of folded rows, into coefv (four arrays of Cv). */
static void NAME(unfold_coef)(const fbn_plan *p, const R *coef, R *coefv)
{
    ptrdiff_t a, j;
    if (coefv == coef)
        return;
    for (a = 0; a < 4; a++)
        for (j = 0; j < p->Cv; j++)
            coefv[a * p->Cv + j] = coef[a * p->C + j % p->C];
}

#if FBN_NT_LINES
/* The whole 64-byte lines [*l0, *l1) of y[q, e): nonzero when they are at
 * least FBN_NT_DIRECT, for apply_span to write straight to y. */
static inline int NAME(nt_lines)(const T *y, ptrdiff_t q, ptrdiff_t e, ptrdiff_t *l0,
                                 ptrdiff_t *l1)
{
    *l0 = q + (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)(y + q)) & 63) / sizeof(T));
    *l1 = *l0 + (e - *l0) / FBN_LINE_VALUES * FBN_LINE_VALUES;
    return !((uintptr_t)y & (sizeof(T) - 1)) && *l1 - *l0 >= FBN_NT_DIRECT * FBN_LINE_VALUES;
}

/* apply_span's values [q, l1) of one run, whose whole lines [l0, l1) go
 * straight to y: the partial line before them into the tile (from i; then
 * y[from, l0) streamed from it); pf: line by line, the values pf elements
 * further on prefetched. */
static FBN_NOINLINE void NAME(apply_piece_nt)(const T *x, const T *z, T *y, T *buf,
                                              ptrdiff_t i, ptrdiff_t from, ptrdiff_t q,
                                              ptrdiff_t l0, ptrdiff_t l1, R mh, R ml, R a,
                                              R b, int act, ptrdiff_t pf)
{
    NAME(apply_any)(x + q, z ? z + q : NULL, buf + (q - i), l0 - q, mh, ml, a, b, act);
    NAME(stream)(y + from, buf + (from - i), (size_t)(l0 - from) * sizeof(T));
    NAME(apply_any_nt)(x + l0, z ? z + l0 : NULL, y + l0, l1 - l0, mh, ml, a, b, act, pf);
}
#endif

/* The transform of the flat values [s0, s1) of a channel-first array (run
 * r of `inner` values has channel r % C).  With nt, y is written through
 * an L1 tile with non-temporal stores; tiles end on 64-byte boundaries of
 * y, so each line is written whole, however short the runs are.  Kernels
 * with FBN_NT_LINES write the whole lines of a run's piece (from where it
 * starts in a tile to the run's last whole line: at least FBN_NT_DIRECT
 * lines) straight to y, and only the partial lines at its ends through
 * tiles (the next tile starts after them).  pf != 0: tile by tile (direct
 * lines line by line), the values pf elements further on are prefetched. */
static void NAME(apply_span)(const T *x, const T *z, T *y, ptrdiff_t C,
                             ptrdiff_t inner, ptrdiff_t s0, ptrdiff_t s1,
                             const R *coef, int act, int nt, ptrdiff_t pf)
{
    T buf[FBN_TILE];
    ptrdiff_t i = s0;
    while (i < s1) {
        ptrdiff_t end = nt ? i + fbn_tile_len(y + i, sizeof(T), s1 - i)
                           : (pf ? fbn_min(i + FBN_TILE, s1) : s1);
        ptrdiff_t from = i; /* y[from, end) is still to be copied from buf */
        if (pf)
            fbn_prefetch(x + i, (size_t)pf * sizeof(T), (size_t)(end - i) * sizeof(T));
        ptrdiff_t q = i, r = i / inner, c = r % C, rend = (r + 1) * inner;
        while (q < end) { /* run r (channel c) ends at rend */
            ptrdiff_t len = fbn_min(rend, end) - q;
            R mh = coef[c], ml = coef[C + c], a = coef[2 * C + c], b = coef[3 * C + c];
            const T *zq = z ? z + q : NULL;
#if FBN_NT_LINES
            ptrdiff_t l0, l1, e = fbn_min(rend, s1);
            if (nt && e - q > FBN_NT_DIRECT * FBN_LINE_VALUES &&
                NAME(nt_lines)(y, q, e, &l0, &l1)) {
                /* through the run's last whole line; the next tile starts
                 * there */
                NAME(apply_piece_nt)(x, z, y, buf, i, from, q, l0, l1, mh, ml, a, b, act, pf);
                end = from = l1;
                len = l1 - q;
            } else
#endif
            NAME(apply_any)(x + q, zq, nt ? buf + (q - i) : y + q, len, mh, ml, a, b, act);
            q += len;
            if (q == rend) {
                rend += inner;
                c = c + 1 == C ? 0 : c + 1;
            }
        }
        if (nt)
            NAME(stream)(y + from, buf + (from - i), (size_t)(end - from) * sizeof(T));
        i = end;
    }
}

#if !FBN_HALF
static inline void NAME(rows_body)(const T *x, const T *z, T *y, ptrdiff_t C,
                                   ptrdiff_t r0, ptrdiff_t r1, const R *coef,
                                   int act, int hasz)
{
    const R *mh = coef, *ml = coef + C, *a = coef + 2 * C, *b = coef + 3 * C;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        const T *zr = hasz ? z + r * C : NULL;
        T *yr = y + r * C;
        FBN_OMP_SIMD
        for (c = 0; c < C; c++) {
            R t = ((FBN_LD(xr[c]) - mh[c]) - ml[c]) * a[c] + b[c];
            if (hasz)
                t += FBN_LD(zr[c]);
            FBN_ACTIVATE(t, act);
            yr[c] = FBN_ST(t);
        }
    }
}

static void NAME(rows_any)(const T *x, const T *z, T *y, ptrdiff_t C,
                           ptrdiff_t r0, ptrdiff_t r1, const R *coef, int act)
{
    FBN_ACT_Z(NAME(rows_body), act, z != NULL, x, z, y, C, r0, r1, coef);
}
#elif FBN_F16C == 512
/* AVX-512: the float kernel's rows_body in registers, 16 channels at a
 * time (the last C % 16 masked), each value rounded once (store16). */
static inline void NAME(rows_regs)(const T *x, const T *z, T *y, ptrdiff_t C,
                                   ptrdiff_t r0, ptrdiff_t r1, const R *coef,
                                   int act, int hasz)
{
    const R *mh = coef, *ml = coef + C, *a = coef + 2 * C, *b = coef + 3 * C;
    __m512 zero = _mm512_setzero_ps(), t;
    ptrdiff_t r, c;
#define FBN_ROW16(ld, ldc)                                                      \
    do {                                                                       \
        t = _mm512_sub_ps(_mm512_sub_ps(ld(xr + c), ldc(mh + c)), ldc(ml + c)); \
        t = _mm512_add_ps(_mm512_mul_ps(t, ldc(a + c)), ldc(b + c));           \
        if (hasz)                                                              \
            t = _mm512_add_ps(t, ld(zr + c));                                  \
        if (act)                                                               \
            t = _mm512_max_ps(zero, t);                                        \
        if ((act) == FBN_ACT_RELU6)                                            \
            t = _mm512_min_ps(_mm512_set1_ps(6.0f), t);                        \
    } while (0)
#define FBN_LDX(p) NAME(loadn)((p), C - c)
#define FBN_LDC(p) _mm512_maskz_loadu_ps(m, (p))
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C, *zr = hasz ? z + r * C : NULL;
        T *yr = y + r * C;
        for (c = 0; c + 16 <= C; c += 16) {
            FBN_ROW16(NAME(load16), _mm512_loadu_ps);
            NAME(store16)(yr + c, t);
        }
        if (c < C) { /* the last C % 16 channels */
            __mmask16 m = (__mmask16)((1u << (C - c)) - 1u);
            FBN_ROW16(FBN_LDX, FBN_LDC);
            NAME(storen)(yr + c, t, C - c);
        }
    }
#undef FBN_LDC
#undef FBN_LDX
#undef FBN_ROW16
}

#elif FBN_F16C == 256
/* AVX2: the float kernel's rows_body in registers, 8 channels at a time,
 * the last C % 8 one by one in its own expression. */
static inline void NAME(rows_regs)(const T *x, const T *z, T *y, ptrdiff_t C,
                                   ptrdiff_t r0, ptrdiff_t r1, const R *coef,
                                   int act, int hasz)
{
    const R *mh = coef, *ml = coef + C, *a = coef + 2 * C, *b = coef + 3 * C;
    __m256 zero = _mm256_setzero_ps(), t;
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const T *xr = x + r * C, *zr = hasz ? z + r * C : NULL;
        T *yr = y + r * C;
        for (c = 0; c + 8 <= C; c += 8) {
            t = _mm256_sub_ps(_mm256_sub_ps(NAME(load8)(xr + c), _mm256_loadu_ps(mh + c)),
                              _mm256_loadu_ps(ml + c));
            t = _mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(a + c)), _mm256_loadu_ps(b + c));
            if (hasz)
                t = _mm256_add_ps(t, NAME(load8)(zr + c));
            if (act)
                t = _mm256_max_ps(zero, t);
            if (act == FBN_ACT_RELU6)
                t = _mm256_min_ps(_mm256_set1_ps(6.0f), t);
            NAME(store8)(yr + c, t);
        }
        for (; c < C; c++) {
            R u = ((FBN_LD(xr[c]) - mh[c]) - ml[c]) * a[c] + b[c];
            if (hasz)
                u += FBN_LD(zr[c]);
            FBN_ACTIVATE(u, act);
            yr[c] = FBN_ST(u);
        }
    }
}
#endif

#if FBN_HALF && FBN_F16C
/* The half kernels' rows in registers, flags made constants. */
static void NAME(rows_any)(const T *x, const T *z, T *y, ptrdiff_t C,
                           ptrdiff_t r0, ptrdiff_t r1, const R *coef, int act)
{
    FBN_ACT_Z(NAME(rows_regs), act, z != NULL, x, z, y, C, r0, r1, coef);
}
#elif FBN_HALF
/* Groups of rows widened into L1 tiles, the float kernel's rows_any, and
 * rounded once.  Rows longer than a tile go by slices of FBN_TILE
 * channels, each slice's constants copied out once. */
static void NAME(rows_any)(const T *x, const T *z, T *y, ptrdiff_t C,
                           ptrdiff_t r0, ptrdiff_t r1, const R *coef, int act)
{
    float w[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t k = FBN_TILE / C, r;
    if (k < 1) {
        float kc[4 * FBN_TILE];
        ptrdiff_t c0;
        for (c0 = 0; c0 < C; c0 += FBN_TILE) {
            ptrdiff_t len = fbn_min(FBN_TILE, C - c0);
            fbn_coef_slice(coef, C, c0, len, kc);
            for (r = r0; r < r1; r++) {
                NAME(widen)(x + r * C + c0, w, len);
                if (z)
                    NAME(widen)(z + r * C + c0, wz, len);
                FBN_F32(rows_any)(w, z ? wz : NULL, w, len, 0, 1, kc, act);
                NAME(narrow)(w, y + r * C + c0, len);
            }
        }
        return;
    }
    for (r = r0; r < r1; r += k) {
        ptrdiff_t nr = fbn_min(k, r1 - r);
        NAME(widen)(x + r * C, w, nr * C);
        if (z)
            NAME(widen)(z + r * C, wz, nr * C);
        FBN_F32(rows_any)(w, z ? wz : NULL, w, C, 0, nr, coef, act);
        NAME(narrow)(w, y + r * C, nr * C);
    }
}
#endif

/* Rows [r0, r1), channel-last; with nt, groups of rows go through a tile
 * in L1 and out with non-temporal stores. */
static void NAME(apply_rows)(const T *x, const T *z, T *y, ptrdiff_t C,
                             ptrdiff_t r0, ptrdiff_t r1, const R *coef, int act,
                             int nt)
{
    T buf[FBN_TILE];
    ptrdiff_t k = FBN_TILE / C, r;
    if (!nt || k < 1) {
        NAME(rows_any)(x, z, y, C, r0, r1, coef, act);
        return;
    }
    for (r = r0; r < r1; r += k) {
        ptrdiff_t nr = fbn_min(k, r1 - r);
        fbn_prefetch(x + r * C, FBN_APF * sizeof(T), (size_t)(nr * C) * sizeof(T));
        NAME(rows_any)(x + r * C, z ? z + r * C : NULL, buf, C, 0, nr, coef, act);
        NAME(stream)(y + r * C, buf, (size_t)(nr * C) * sizeof(T));
    }
}

/* ---- the work items ---------------------------------------------------- */

/* What the items of one forward call share. */
typedef struct {
    const fbn_plan *p;
    const T *x, *z;
    const R *gamma, *beta;
    T *y;
    int act;
    double eps;
    double *pm, *pq;    /* per-chunk or per-block moments */
    R *coef;            /* 4*C constants (see coef_one) */
    R *coefv;           /* channel-last: the constants of the Cv virtual
                           channels of folded rows (coef when not folded) */
    R *mean_out, *invstd_out;
    R *mean_lo_out;     /* the constants' ml (coef_one; NULL: not wanted) */
    double *var_out;
    const fbn_renorm *rn; /* batch renormalization (NULL: none) */
    double *r_out, *d_out; /* its r and d, C values each (with rn) */
} NAME(fwd);

/* Batch renormalization of channel c (f->rn, see fastbn.h): r and d from
 * the batch's mean and variance and the running statistics, clipped, and
 * the constants a = gamma*r*invstd, b = beta + gamma*d in place of
 * coef_one's.  NaN in the statistics stays NaN (and stays in channel c). */
static void NAME(renorm_channel)(NAME(fwd) *f, ptrdiff_t c, double mean, double var)
{
    const fbn_renorm *rn = f->rn;
    ptrdiff_t C = f->p->C;
    double sb = sqrt(var + f->eps), inv = 1.0 / sb;
    double s = rn->sigma[c], g = f->gamma ? (double)f->gamma[c] : 1.0;
    double r = sb / s, d = (mean - rn->mean[c]) / s;
    if (r < 1.0 / rn->rmax)
        r = 1.0 / rn->rmax;
    else if (r > rn->rmax)
        r = rn->rmax;
    if (d < -rn->dmax)
        d = -rn->dmax;
    else if (d > rn->dmax)
        d = rn->dmax;
    f->coef[2 * C + c] = (R)(g * r * (double)(R)inv); /* (as coef_one) */
    f->coef[3 * C + c] = (R)((f->beta ? (double)f->beta[c] : 0.0) + g * d);
    f->r_out[c] = r;
    f->d_out[c] = d;
}

/* The statistics of one channel from its merged moments: its constants and
 * the outputs of the training forward. */
static void NAME(finish_channel)(NAME(fwd) *f, ptrdiff_t c, double mean, double m2)
{
    double var = m2 / (double)f->p->ntot;
    double inv = 1.0 / sqrt(var + f->eps);
    NAME(coef_one)(f->coef, f->p->C, c, mean, inv, f->gamma, f->beta);
    f->mean_out[c] = (R)mean;
    if (f->mean_lo_out)
        f->mean_lo_out[c] = f->coef[f->p->C + c];
    f->invstd_out[c] = (R)inv;
    if (f->var_out)
        f->var_out[c] = var;
    if (f->rn)
        NAME(renorm_channel)(f, c, mean, var);
}

/* A statistics tile (channel-first): moments of its chunks. */
static void NAME(item_stats_tile)(void *arg, ptrdiff_t t)
{
    NAME(fwd) *f = (NAME(fwd) *)arg;
    const fbn_plan *p = f->p;
    ptrdiff_t c0, c1, k0, k1;
    fbn_tile_range(p, t, &c0, &c1, &k0, &k1);
    NAME(tile_moments)(f->x, p, c0, c1, k0, k1, f->pm, f->pq);
}

#if !FBN_HALF
/* The transform of channels [c0, c1) of every sample (cached stores), when
 * their runs are short (FBN_SHORT_RUN): each value's constants laid out
 * once in L1 (k), so that a sample's runs of these channels, contiguous in
 * memory, go through one loop instead of one loop per run. */
static void NAME(apply_short)(NAME(fwd) *f, ptrdiff_t c0, ptrdiff_t c1)
{
    const fbn_plan *p = f->p;
    R k[4 * FBN_TILE];
    ptrdiff_t inner = p->inner, C = p->C, n = (c1 - c0) * inner, c, j, o, a;
    ptrdiff_t pf = (p->pf && c1 < C) ? n : 0;
    for (c = c0; c < c1; c++)
        for (a = 0; a < 4; a++)
            for (j = 0; j < inner; j++)
                k[a * FBN_TILE + (c - c0) * inner + j] = f->coef[a * C + c];
    for (o = 0; o < p->outer; o++) {
        ptrdiff_t s = o * C * inner + c0 * inner;
        if (pf)
            fbn_prefetch(f->x + s, (size_t)pf * sizeof(T), (size_t)n * sizeof(T));
        FBN_ACT_Z(NAME(apply_kbody), f->act, f->z != NULL, f->x + s,
                  f->z ? f->z + s : NULL, f->y + s, n, k);
    }
}
#endif

/* A fused tile (channel-first): the statistics of whole channels, then
 * their transform while the values are in cache, sample by sample. */
static void NAME(item_fused_tile)(void *arg, ptrdiff_t t)
{
    NAME(fwd) *f = (NAME(fwd) *)arg;
    const fbn_plan *p = f->p;
    ptrdiff_t c0, c1, k0, k1, c, o, ci = p->C * p->inner;
    fbn_tile_range(p, t, &c0, &c1, &k0, &k1);
    NAME(tile_moments)(f->x, p, c0, c1, 0, p->nk, f->pm, f->pq);
    for (c = c0; c < c1; c++) {
        double mean, m2;
        fbn_merge_chunks(f->pm + c * p->nk, f->pq + c * p->nk, p->nk, p->ntot,
                         &mean, &m2);
        NAME(finish_channel)(f, c, mean, m2);
    }
#if !FBN_HALF
    if (!p->nt && p->inner * (ptrdiff_t)sizeof(T) <= FBN_SHORT_RUN &&
        (c1 - c0) * p->inner <= FBN_TILE) {
        NAME(apply_short)(f, c0, c1);
        return;
    }
#endif
    for (o = 0; o < p->outer; o++)
        NAME(apply_span)(f->x, f->z, f->y, p->C, p->inner, o * ci + c0 * p->inner,
                         o * ci + c1 * p->inner, f->coef, f->act, p->nt,
                         (p->pf && c1 < p->C) ? (c1 - c0) * p->inner : 0);
}

/* A block of (folded) rows' moments (channel-last); the last item takes
 * the rows left over from folding. */
static void NAME(item_stats_rows)(void *arg, ptrdiff_t b)
{
    NAME(fwd) *f = (NAME(fwd) *)arg;
    const fbn_plan *p = f->p;
    if (b < p->nb)
        NAME(block_moments)(f->x, p->Cv, b * p->rb, fbn_min(b * p->rb + p->rb, p->outerv),
                            f->pm + b * p->Cv, f->pq + b * p->Cv);
    else
        NAME(block_moments)(f->x + p->outerv * p->Cv, p->C, 0, p->rem,
                            f->pm + p->nb * p->Cv, f->pq + p->nb * p->Cv);
}

/* A block of the transform, in memory order.  After a statistics pass the
 * blocks are scheduled back to front (FBN_REVERSE): each thread read its
 * part front to back, so the end of its part is what its cache holds. */
static void NAME(item_apply)(void *arg, ptrdiff_t b)
{
    NAME(fwd) *f = (NAME(fwd) *)arg;
    const fbn_plan *p = f->p;
    ptrdiff_t i0 = b * p->ab, off = p->outerv * p->Cv;
    if (p->cl && b < p->nab)
        NAME(apply_rows)(f->x, f->z, f->y, p->Cv, i0, fbn_min(i0 + p->ab, p->outerv),
                         f->coefv, f->act, p->nt);
    else if (p->cl) /* the rows left over from folding */
        NAME(apply_rows)(f->x + off, f->z ? f->z + off : NULL, f->y + off, p->C, 0,
                         p->rem, f->coef, f->act, p->nt);
    else
        NAME(apply_span)(f->x, f->z, f->y, p->C, p->inner, i0,
                         fbn_min(i0 + p->ab, p->ntot * p->C), f->coef, f->act,
                         p->nt, p->nt ? FBN_APF : 0);
}

/* The statistics phase: per-chunk (channel-first) or per-block
 * (channel-last) moments, merged per channel in order into mean[C], m2[C]
 * (mv, qv: scratch of Cv doubles for channel-last plans). */
static void NAME(stats_phase)(NAME(fwd) *f, double *mean, double *m2, double *mv,
                              double *qv)
{
    const fbn_plan *p = f->p;
    ptrdiff_t c;
    if (p->cl) {
        fbn_parallel_for(fbn_stat_items(p), NAME(item_stats_rows), f, p->nth,
                         FBN_FORWARD | p->light);
        fbn_merge_blocks(f->pm, f->pq, p->Cv, p->rb, p->nb, p->outerv, mv, qv);
        fbn_unfold_moments(p, mv, qv, f->pm + p->nb * p->Cv, f->pq + p->nb * p->Cv,
                           mean, m2);
    } else {
        fbn_parallel_for(p->ntiles, NAME(item_stats_tile), f, p->nth,
                         FBN_FORWARD | p->light);
        for (c = 0; c < p->C; c++)
            fbn_merge_chunks(f->pm + c * p->nk, f->pq + c * p->nk, p->nk, p->ntot,
                             mean + c, m2 + c);
    }
}

/* Scratch of a forward call: the per-chunk/per-block moments (2 * nparts
 * doubles), then 2*C + 2*Cv doubles (*tmp), then the 4*C constants and, for
 * folded channel-last rows, 4*Cv more; in `stack` (of FBN_STACK_BYTES)
 * when it fits, else malloc'ed (*mem, to free). */
static int NAME(fwd_scratch)(NAME(fwd) *f, double **tmp, void **mem, double *stack)
{
    const fbn_plan *p = f->p;
    size_t cv = p->cl ? (size_t)p->Cv : 0, nv = p->cl && p->fold > 1 ? cv : 0;
    size_t nd = 2 * (size_t)fbn_plan_parts(p) + 2 * (size_t)p->C + 2 * cv;
    size_t bytes = sizeof(double) * nd + sizeof(R) * 4 * ((size_t)p->C + nv);
    char *m = bytes <= FBN_STACK_BYTES ? (char *)stack : (char *)malloc(bytes);
    if (m == NULL)
        return FBN_ENOMEM;
    f->pm = (double *)m;
    f->pq = f->pm + fbn_plan_parts(p);
    *tmp = f->pq + fbn_plan_parts(p);
    f->coef = (R *)(m + sizeof(double) * nd);
    f->coefv = nv ? f->coef + 4 * p->C : f->coef;
    *mem = m == (char *)stack ? NULL : m;
    return FBN_OK;
}

/* ---- public kernels ---------------------------------------------------- */

static int NAME(k_moments)(const void *x, ptrdiff_t outer, ptrdiff_t C,
                           ptrdiff_t inner, double *mean, double *m2, int nthreads)
{
    fbn_plan p;
    NAME(fwd) f;
    double *tmp, stack[FBN_STACK_BYTES / sizeof(double)];
    void *mem;
    ptrdiff_t c;
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    if (outer * inner == 0) {
        for (c = 0; c < C; c++)
            mean[c] = m2[c] = 0.0;
        return FBN_OK;
    }
    if (C == 0)
        return FBN_OK;
    fbn_plan_make(&p, outer, C, inner, sizeof(T), 1, 0, 0, FBN_OP_STATS, nthreads);
    memset(&f, 0, sizeof f);
    f.p = &p;
    f.x = x;
    if (NAME(fwd_scratch)(&f, &tmp, &mem, stack) != FBN_OK)
        return FBN_ENOMEM;
    NAME(stats_phase)(&f, mean, m2, tmp + 2 * C, tmp + 2 * C + p.Cv);
    free(mem);
    return FBN_OK;
}

static int NAME(k_train_forward)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                                 ptrdiff_t inner, const R *gamma, const R *beta,
                                 const T *z, double eps, int act, T *y, R *mean_out,
                                 R *mean_lo_out, R *invstd_out, double *var_out,
                                 int nthreads)
{
    fbn_plan p;
    NAME(fwd) f;
    double *tmp, stack[FBN_STACK_BYTES / sizeof(double)];
    void *mem;
    ptrdiff_t c;
    if (outer < 0 || C < 0 || inner < 0 || (outer * inner < 1 && C > 0) || !(eps > 0))
        return FBN_EINVAL;
    if (C == 0)
        return FBN_OK;
    fbn_plan_make(&p, outer, C, inner, sizeof(T), 1, z ? 1 : 0, 1,
                  FBN_OP_STATS | FBN_OP_APPLY, nthreads);
    memset(&f, 0, sizeof f);
    f.p = &p;
    f.x = x;
    f.z = z;
    f.gamma = gamma;
    f.beta = beta;
    f.y = y;
    f.act = act;
    f.eps = eps;
    f.mean_out = mean_out;
    f.mean_lo_out = mean_lo_out;
    f.invstd_out = invstd_out;
    f.var_out = var_out;
    if (NAME(fwd_scratch)(&f, &tmp, &mem, stack) != FBN_OK)
        return FBN_ENOMEM;
    if (p.fused) {
        fbn_parallel_for(p.ntiles, NAME(item_fused_tile), &f, p.nth,
                         FBN_FORWARD | p.light);
    } else {
        NAME(stats_phase)(&f, tmp, tmp + C, tmp + 2 * C, tmp + 2 * C + p.Cv);
        for (c = 0; c < C; c++)
            NAME(finish_channel)(&f, c, tmp[c], tmp[C + c]);
        if (p.cl)
            NAME(unfold_coef)(&p, f.coef, f.coefv);
        fbn_parallel_for(fbn_apply_items(&p), NAME(item_apply), &f, p.nth,
                         FBN_REVERSE | p.light);
    }
    if (p.nt)
        fbn_sfence();
    free(mem);
    return FBN_OK;
}

/* The transform with given per-channel statistics: R mean and var (with
 * eps) when mean_d is NULL, else double mean and invstd. */
static int NAME(transform)(const T *x, ptrdiff_t outer, ptrdiff_t C,
                           ptrdiff_t inner, const R *mean_t, const R *var_t,
                           double eps, const double *mean_d,
                           const double *invstd_d, const R *gamma,
                           const R *beta, const T *z, int act, T *y,
                           int nthreads)
{
    fbn_plan p;
    NAME(fwd) f;
    R stack_coef[8 * FBN_STACK_C];
    size_t nc;
    ptrdiff_t c;
    if (C == 0 || outer * inner == 0)
        return FBN_OK;
    fbn_plan_make(&p, outer, C, inner, sizeof(T), 1, z ? 1 : 0, 1, FBN_OP_APPLY,
                  nthreads);
    memset(&f, 0, sizeof f);
    f.p = &p;
    f.x = x;
    f.z = z;
    f.y = y;
    f.act = act;
    /* the constants, and those of folded channel-last rows */
    nc = 4 * (size_t)C + (p.cl && p.fold > 1 ? 4 * (size_t)p.Cv : 0);
    f.coef = nc <= 8 * FBN_STACK_C ? stack_coef : (R *)malloc(sizeof(R) * nc);
    if (f.coef == NULL)
        return FBN_ENOMEM;
    f.coefv = nc > 4 * (size_t)C ? f.coef + 4 * C : f.coef;
    for (c = 0; c < C; c++) {
        if (mean_d)
            NAME(coef_one)(f.coef, C, c, mean_d[c], invstd_d[c], gamma, beta);
        else
            NAME(coef_one)(f.coef, C, c, (double)mean_t[c],
                           1.0 / sqrt((double)var_t[c] + eps), gamma, beta);
    }
    if (p.cl)
        NAME(unfold_coef)(&p, f.coef, f.coefv);
    /* after the moments kernel (the MPI forward), back to front as above */
    fbn_parallel_for(fbn_apply_items(&p), NAME(item_apply), &f, p.nth,
                     (mean_d ? FBN_REVERSE : FBN_FORWARD) | p.light);
    if (p.nt)
        fbn_sfence();
    if (f.coef != stack_coef)
        free(f.coef);
    return FBN_OK;
}

static int NAME(k_infer_forward)(const void *x, ptrdiff_t outer, ptrdiff_t C,
                                 ptrdiff_t inner, const void *mean, const void *var,
                                 const void *gamma, const void *beta, const void *z,
                                 double eps, int act, void *y, int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0 || !(eps > 0))
        return FBN_EINVAL;
    return NAME(transform)(x, outer, C, inner, mean, var, eps, NULL, NULL, gamma,
                           beta, z, act, y, nthreads);
}

static int NAME(k_apply)(const void *x, ptrdiff_t outer, ptrdiff_t C,
                         ptrdiff_t inner, const double *mean,
                         const double *invstd, const void *gamma, const void *beta,
                         const void *z, int act, void *y, int nthreads)
{
    if (outer < 0 || C < 0 || inner < 0)
        return FBN_EINVAL;
    return NAME(transform)(x, outer, C, inner, NULL, NULL, 0.0, mean, invstd,
                           gamma, beta, z, act, y, nthreads);
}

#include "backward_impl.h"
#include "ghost_impl.h"
#if !FBN_HALF
#include "colstats_impl.h"
#endif

#undef FBN_GENERIC
#undef FBN_SUM_REGS
#undef FBN_DW
#if defined(FBN_DV_LD)
#undef FBN_DV_LD
#undef FBN_DV_ST
#undef FBN_DV_ADD
#undef FBN_DV_SUB
#undef FBN_DV_MUL
#undef FBN_DV_SET1
#endif
#undef FBN_LINE_VALUES
#undef FBN_SACC
#undef FBN_HROWS
#undef FBN_QACC

static const fbn_ops NAME(ops) = {
    NAME(k_moments),         NAME(k_train_ghost),    NAME(k_infer_forward),
    NAME(k_apply),           NAME(k_backward_reduce), NAME(k_backward_apply),
    NAME(k_backward_ghost),
#if FBN_HALF
    NULL, NULL, /* (no per-column kernels) */
#else
    NAME(cs_k_colstats),     NAME(cs_k_standardize),
#endif
};
