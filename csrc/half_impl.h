/*
 * half_impl.h -- the hot loops of the half types (float16, bfloat16),
 * included by type_instance.h when FBN_HALF is set (T = fbn_half, R =
 * float), after elem_impl.h (the lanes it loads and stores through) and
 * before the templates (kernels_impl.h), which call these loops where
 * the float types have their own.
 *
 * The batch statistics are summed in float, not in double as the float
 * kernels sum them (see "statistics" below): about half the work, and
 * exact enough for half outputs; at AVX-512 and AVX2 the half values are
 * widened in registers as they are summed.  The transform and the backward
 * do the float kernel's arithmetic: at AVX-512 (FBN_F16C == 512) and AVX2
 * (FBN_F16C == 256) in registers, 16 or 8 values (or channel-last: 16 or 8
 * channels) at a time, in the float kernel's lane order (elementwise tails
 * masked or in the float kernel's own expression, reduction tails in the
 * scalar lane, as there); at AVX-512 whole lines of long runs are streamed
 * straight from the registers (apply_nt_body).  Without F16C (the portable
 * level) they work on L1 tiles of FBN_TILE values (rows longer than a
 * tile: slices of FBN_TILE channels) widened to float (exactly), run
 * through the float kernels' own loop (FBN_F32(f): the f32 instance for
 * the same instruction set, compiled before this one), the results rounded
 * once back to the half type; the channel-last backward's reductions do so
 * at every level.  (The widen - float loop - narrow passes through L1 cost
 * the AVX-512 kernels 15-30 % of a channel-last transform.)  So given the
 * same statistics the results are bitwise those of the float kernel on the
 * widened data; and every result is the same for every plan, thread count
 * and instruction set.  (Conversions inside the float loops kept GCC from
 * vectorising them; the separate conversion loops vectorise.)
 */
/* ---- statistics ----------------------------------------------------------
 * Channel-first (tile_moments), a chunk's two passes add in float:
 *   pass 1: in each run (piece of a run at the chunk's ends) of a channel,
 *     the values of even steps (a step: FBN_LANES values) go to one float
 *     partial sum per lane, of odd steps to another (two additions in
 *     flight); the partial sums run over the chunk and are added to the
 *     lanes' double accumulators at its end (acc_done);
 *   pass 2: d = x - mf in float (mf: the chunk's pass-1 mean rounded to
 *     float), the sums of d and of d*d (float products, no fused
 *     multiply-add) the same way;
 * values that do not fill a step (the end of each run) go to the scalar
 * lane in double.  The chunk's mean is then mf + sum(d)/n and its M2
 * sum(d*d) - sum(d)^2/n (tile_moments): the corrected two-pass algorithm,
 * in which the error of pass 1 cancels and sum(d) is small.  A float
 * partial sum adds at most FBN_CHUNK / 32 = 128 values, so M2's relative
 * error is below 129 float roundings (7.7e-6; typically 1e-7), and the
 * mean's below as many roundings of the standard deviation: far below half
 * a unit of float16 (4.9e-4) or bfloat16 (3.9e-3) in the normalised
 * outputs.  (The float kernels keep double lanes: their outputs are float,
 * where these errors would show.)  A chunk whose float sums leave the
 * range where this holds (bfloat16 beyond 1e19 or deviations below 1e-19,
 * inf or NaN: sums_held) is summed again in double, as the float kernels
 * sum the widened values.  Channel-last blocks of rows: the same sums with
 * the lanes across channels (block_moments_f).  The order of every
 * operation is fixed by the shape, so the bits are the same on every
 * instruction set (the AVX-512 loops and the portable ones), plan and
 * thread count.
 *
 * Per channel, the accumulators (FBN_SACC doubles in pass 1, FBN_QACC in
 * pass 2, zeroed before each chunk) hold the double lanes (FBN_ACC: sums;
 * in pass 2 then FBN_ACC for the squares) and the float partial sums as 16
 * floats per 8 doubles (p, q; in pass 2 p, q for d and u, v for d*d). */
#define FBN_SACC (FBN_ACC + 16)
#define FBN_QACC (2 * FBN_ACC + 32)

#if FBN_F16C == 512
/* Pass 1 of n values of a channel's chunk (see above). */
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    double *st = acc + FBN_ACC;
    __m512 p = _mm512_loadu_ps(st), q = _mm512_loadu_ps(st + 8);
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        p = _mm512_add_ps(p, NAME(load16)(x + i));
        q = _mm512_add_ps(q, NAME(load16)(x + i + 16));
    }
    if (i + 16 <= n) {
        p = _mm512_add_ps(p, NAME(load16)(x + i));
        i += 16;
    }
    if (i < n) {
        double t = acc[FBN_LANES];
        for (; i < n; i++)
            t += (double)FBN_LD(x[i]);
        acc[FBN_LANES] = t;
    }
    _mm512_storeu_ps(st, p);
    _mm512_storeu_ps(st + 8, q);
}

/* Pass 2 of n values of a channel's chunk about (float)m (see above). */
static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    double *st = acc + 2 * FBN_ACC;
    __m512 p = _mm512_loadu_ps(st), q = _mm512_loadu_ps(st + 8);
    __m512 u = _mm512_loadu_ps(st + 16), v = _mm512_loadu_ps(st + 24);
    float mf = (float)m;
    __m512 mv = _mm512_set1_ps(mf);
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 d = _mm512_sub_ps(NAME(load16)(x + i), mv);
        __m512 g = _mm512_sub_ps(NAME(load16)(x + i + 16), mv);
        p = _mm512_add_ps(p, d);
        q = _mm512_add_ps(q, g);
        u = _mm512_add_ps(u, _mm512_mul_ps(d, d));
        v = _mm512_add_ps(v, _mm512_mul_ps(g, g));
    }
    if (i + 16 <= n) {
        __m512 d = _mm512_sub_ps(NAME(load16)(x + i), mv);
        p = _mm512_add_ps(p, d);
        u = _mm512_add_ps(u, _mm512_mul_ps(d, d));
        i += 16;
    }
    if (i < n) {
        double t = acc[FBN_LANES], tq = acc[FBN_ACC + FBN_LANES];
        for (; i < n; i++) {
            double d = (double)(FBN_LD(x[i]) - mf);
            t += d;
            tq += d * d;
        }
        acc[FBN_LANES] = t;
        acc[FBN_ACC + FBN_LANES] = tq;
    }
    _mm512_storeu_ps(st, p);
    _mm512_storeu_ps(st + 8, q);
    _mm512_storeu_ps(st + 16, u);
    _mm512_storeu_ps(st + 24, v);
}
#elif FBN_F16C == 256
/* AVX2: the same, a step (16 lanes) as two vectors of 8. */
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    float *st = (float *)(acc + FBN_ACC);
    __m256 p0 = _mm256_loadu_ps(st), p1 = _mm256_loadu_ps(st + 8);
    __m256 q0 = _mm256_loadu_ps(st + 16), q1 = _mm256_loadu_ps(st + 24);
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        p0 = _mm256_add_ps(p0, NAME(load8)(x + i));
        p1 = _mm256_add_ps(p1, NAME(load8)(x + i + 8));
        q0 = _mm256_add_ps(q0, NAME(load8)(x + i + 16));
        q1 = _mm256_add_ps(q1, NAME(load8)(x + i + 24));
    }
    if (i + 16 <= n) {
        p0 = _mm256_add_ps(p0, NAME(load8)(x + i));
        p1 = _mm256_add_ps(p1, NAME(load8)(x + i + 8));
        i += 16;
    }
    if (i < n) {
        double t = acc[FBN_LANES];
        for (; i < n; i++)
            t += (double)FBN_LD(x[i]);
        acc[FBN_LANES] = t;
    }
    _mm256_storeu_ps(st, p0);
    _mm256_storeu_ps(st + 8, p1);
    _mm256_storeu_ps(st + 16, q0);
    _mm256_storeu_ps(st + 24, q1);
}

static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    float *st = (float *)(acc + 2 * FBN_ACC);
    __m256 p0 = _mm256_loadu_ps(st), p1 = _mm256_loadu_ps(st + 8);
    __m256 q0 = _mm256_loadu_ps(st + 16), q1 = _mm256_loadu_ps(st + 24);
    __m256 u0 = _mm256_loadu_ps(st + 32), u1 = _mm256_loadu_ps(st + 40);
    __m256 v0 = _mm256_loadu_ps(st + 48), v1 = _mm256_loadu_ps(st + 56);
    float mf = (float)m;
    __m256 mv = _mm256_set1_ps(mf), d;
    ptrdiff_t i = 0;
#define FBN_SSD8(s, w, j)                                                      \
    do {                                                                       \
        d = _mm256_sub_ps(NAME(load8)(x + i + (j)), mv);                       \
        s = _mm256_add_ps(s, d);                                               \
        w = _mm256_add_ps(w, _mm256_mul_ps(d, d));                             \
    } while (0)
    for (; i + 32 <= n; i += 32) {
        FBN_SSD8(p0, u0, 0);
        FBN_SSD8(p1, u1, 8);
        FBN_SSD8(q0, v0, 16);
        FBN_SSD8(q1, v1, 24);
    }
    if (i + 16 <= n) {
        FBN_SSD8(p0, u0, 0);
        FBN_SSD8(p1, u1, 8);
        i += 16;
    }
#undef FBN_SSD8
    if (i < n) {
        double t = acc[FBN_LANES], tq = acc[FBN_ACC + FBN_LANES];
        for (; i < n; i++) {
            double dd = (double)(FBN_LD(x[i]) - mf);
            t += dd;
            tq += dd * dd;
        }
        acc[FBN_LANES] = t;
        acc[FBN_ACC + FBN_LANES] = tq;
    }
    _mm256_storeu_ps(st, p0);
    _mm256_storeu_ps(st + 8, p1);
    _mm256_storeu_ps(st + 16, q0);
    _mm256_storeu_ps(st + 24, q1);
    _mm256_storeu_ps(st + 32, u0);
    _mm256_storeu_ps(st + 40, u1);
    _mm256_storeu_ps(st + 48, v0);
    _mm256_storeu_ps(st + 56, v1);
}
#else
/* The same operations in the same order, on pieces widened into L1 (a
 * multiple of two steps, so that the parity of a step is that of its
 * place in the run). */
static inline void NAME(sum_acc)(const T *x, ptrdiff_t n, double *acc)
{
    double *st = acc + FBN_ACC;
    float w[FBN_TILE], pq[2][FBN_LANES];
    ptrdiff_t i = 0, len, j;
    int k;
    memcpy(pq, st, sizeof pq);
    for (; (len = fbn_min(FBN_TILE, n - i) / FBN_LANES * FBN_LANES) > 0; i += len) {
        NAME(widen)(x + i, w, len);
        for (j = 0; j + 2 * FBN_LANES <= len; j += 2 * FBN_LANES)
            for (k = 0; k < FBN_LANES; k++) {
                pq[0][k] += w[j + k];
                pq[1][k] += w[j + FBN_LANES + k];
            }
        if (j < len)
            for (k = 0; k < FBN_LANES; k++)
                pq[0][k] += w[j + k];
    }
    for (; i < n; i++)
        acc[FBN_LANES] += (double)FBN_LD(x[i]);
    memcpy(st, pq, sizeof pq);
}

static inline void NAME(ssd_acc)(const T *x, ptrdiff_t n, double m, double *acc)
{
    double *st = acc + 2 * FBN_ACC;
    float w[FBN_TILE], pq[4][FBN_LANES]; /* p, q, u, v */
    float mf = (float)m;
    ptrdiff_t i = 0, len, j;
    int k;
    memcpy(pq, st, sizeof pq);
    for (; (len = fbn_min(FBN_TILE, n - i) / FBN_LANES * FBN_LANES) > 0; i += len) {
        NAME(widen)(x + i, w, len);
        for (j = 0; j + 2 * FBN_LANES <= len; j += 2 * FBN_LANES)
            for (k = 0; k < FBN_LANES; k++) {
                float d = w[j + k] - mf, g = w[j + FBN_LANES + k] - mf;
                pq[0][k] += d;
                pq[1][k] += g;
                pq[2][k] += d * d;
                pq[3][k] += g * g;
            }
        if (j < len)
            for (k = 0; k < FBN_LANES; k++) {
                float d = w[j + k] - mf;
                pq[0][k] += d;
                pq[2][k] += d * d;
            }
    }
    for (; i < n; i++) {
        double d = (double)(FBN_LD(x[i]) - mf);
        acc[FBN_LANES] += d;
        acc[FBN_ACC + FBN_LANES] += d * d;
    }
    memcpy(st, pq, sizeof pq);
}
#endif

/* The end of a chunk's pass: the float partial sums p, then q (pass 2, q2
 * set: and u, then v) added to the double lanes. */
static inline void NAME(acc_done)(double *acc, int q2)
{
    float pq[4][FBN_LANES];
    int k;
    memcpy(pq, acc + (q2 ? 2 * FBN_ACC : FBN_ACC), sizeof(float) * FBN_LANES * (q2 ? 4 : 2));
    for (k = 0; k < FBN_LANES; k++) {
        acc[k] += (double)pq[0][k];
        acc[k] += (double)pq[1][k];
    }
    if (q2)
        for (k = 0; k < FBN_LANES; k++) {
            acc[FBN_ACC + k] += (double)pq[2][k];
            acc[FBN_ACC + k] += (double)pq[3][k];
        }
}

/* Whether a chunk's or block's float sums held for a channel: its M2 is
 * finite and, unless it is 0 with sum(d) 0 (constant values), at least
 * 2^-100 per value (every d*d that matters well inside float's normal
 * range; bfloat16 deviations above 1e19 overflow). */
static inline int NAME(sums_held)(double q, double sd, double cnt)
{
    return q < 1e300 && (q >= 0x1p-100 * cnt || (q == 0.0 && sd == 0.0));
}

/* Rows per piece of the channel-last float sums: a float partial sum adds
 * at most FBN_HROWS / 2 values, as in the channel-first chunks. */
#define FBN_HROWS 256

#if FBN_VEC
/* A strip's row of FBN_LANES channels as FBN_SV vectors of float: one of
 * 16 at AVX-512, else two of 8 (GCC keeps a 64-byte vector that the
 * instruction set lacks in memory). */
#undef FBN_SV /* (this file is included once per element type and level) */
#if FBN_F16C == 512
#define FBN_SV 1
#else
#define FBN_SV 2
#endif
typedef float NAME(sv) __attribute__((vector_size(4 * FBN_LANES / FBN_SV)));

/* The strip's row at x widened to float, in registers. */
static inline void NAME(strip_ld)(const T *x, NAME(sv) *v)
{
#if FBN_F16C == 512
    __m512 t = NAME(load16)(x);
    memcpy(v, &t, sizeof t);
#elif FBN_F16C == 256
    __m256 t0 = NAME(load8)(x), t1 = NAME(load8)(x + 8);
    memcpy(v, &t0, sizeof t0);
    memcpy(v + 1, &t1, sizeof t1);
#else
    float t[FBN_LANES];
    int k;
    for (k = 0; k < FBN_LANES; k++)
        t[k] = FBN_LD(x[k]);
    memcpy(v, t, sizeof t);
#endif
}
#endif

/* One row of the long-row float sums, channel by channel: a[c] += x[c]
 * (g NULL), or with d = x[c] - mf[c]: a[c] += d and g[c] += d*d. */
static inline void NAME(row_sums)(const T *xr, ptrdiff_t C, const float *mf, float *a, float *g)
{
    ptrdiff_t c = 0;
#if FBN_F16C == 512
    if (g)
        for (; c + 16 <= C; c += 16) {
            __m512 d = _mm512_sub_ps(NAME(load16)(xr + c), _mm512_loadu_ps(mf + c));
            _mm512_storeu_ps(a + c, _mm512_add_ps(_mm512_loadu_ps(a + c), d));
            _mm512_storeu_ps(g + c, _mm512_add_ps(_mm512_loadu_ps(g + c), _mm512_mul_ps(d, d)));
        }
    else
        for (; c + 16 <= C; c += 16)
            _mm512_storeu_ps(a + c, _mm512_add_ps(_mm512_loadu_ps(a + c), NAME(load16)(xr + c)));
#elif FBN_F16C == 256
    if (g)
        for (; c + 8 <= C; c += 8) {
            __m256 d = _mm256_sub_ps(NAME(load8)(xr + c), _mm256_loadu_ps(mf + c));
            _mm256_storeu_ps(a + c, _mm256_add_ps(_mm256_loadu_ps(a + c), d));
            _mm256_storeu_ps(g + c, _mm256_add_ps(_mm256_loadu_ps(g + c), _mm256_mul_ps(d, d)));
        }
    else
        for (; c + 8 <= C; c += 8)
            _mm256_storeu_ps(a + c, _mm256_add_ps(_mm256_loadu_ps(a + c), NAME(load8)(xr + c)));
#endif
    if (g)
        for (; c < C; c++) {
            float d = FBN_LD(xr[c]) - mf[c];
            a[c] += d;
            g[c] += d * d;
        }
    else
        for (; c < C; c++)
            a[c] += FBN_LD(xr[c]);
}

/* The channel-last form: the moments of nr rows w (C channels, row
 * stride C), widened in registers and summed as above with the lanes
 * across channels: even and odd rows into two float partial sums per
 * channel, added into double at the end of each piece of FBN_HROWS rows;
 * pass 2 about each channel's pass-1 mean rounded to float, corrected by
 * sum(d).  Short rows: strips of FBN_LANES channels, their partial sums in
 * registers over a piece; long rows (whose stride would make a strip's
 * rows collide in L1): row by row across all channels, the partial sums in
 * L1 (row_sums; strips over tiles of FBN_ROW_TILE rows, as the float
 * kernels sum, were 1.2-1.6x slower here).  Each channel's values arrive
 * in row order either way, so the bits are the same.  sd: C doubles, st:
 * 5 C floats of scratch.  Returns 0, the results unset, when the float
 * sums did not hold for a channel. */
static int NAME(block_moments_f)(const T *w, ptrdiff_t C, ptrdiff_t nr,
                                 double *mean, double *m2, double *sd, float *st)
{
    int strips = (size_t)C * sizeof(float) <= FBN_STRIP_MAX_ROW;
    ptrdiff_t rr, r, c, c0;
    float *p = st, *q = st + C, *u = st + 2 * C, *v = st + 3 * C, *mf = st + 4 * C;
    int pass, k;
    for (c = 0; c < C; c++)
        mean[c] = m2[c] = sd[c] = 0.0;
    for (pass = 0; pass < 2; pass++) {
        for (rr = 0; rr < nr; rr += FBN_HROWS) {
            ptrdiff_t re = fbn_min(rr + FBN_HROWS, nr);
            double *s1 = pass == 0 ? mean : sd;
            for (c = 0; c < 4 * C; c++)
                st[c] = 0.0f;
            if (strips) {
                for (c0 = 0; c0 < C; c0 += FBN_LANES) {
                    int wd = (int)fbn_min(FBN_LANES, C - c0);
                    const T *ws = w + c0;
                    float a[FBN_LANES] = {0}, b[FBN_LANES] = {0}, g[FBN_LANES] = {0},
                          h[FBN_LANES] = {0}, m[FBN_LANES] = {0};
                    memcpy(m, mf + c0, sizeof(float) * (size_t)wd);
#if FBN_VEC
                    if (wd == FBN_LANES) {
                        /* (explicit vectors: GCC left pass 1 scalar) */
                        NAME(sv) va[FBN_SV] = {0}, vb[FBN_SV] = {0}, vg[FBN_SV] = {0},
                                 vh[FBN_SV] = {0}, vm[FBN_SV], x0[FBN_SV], x1[FBN_SV];
                        int j;
                        memcpy(vm, m, sizeof vm);
                        for (r = rr; r + 1 < re; r += 2) {
                            NAME(strip_ld)(ws + r * C, x0);
                            NAME(strip_ld)(ws + (r + 1) * C, x1);
                            for (j = 0; j < FBN_SV; j++) {
                                if (pass) {
                                    x0[j] -= vm[j];
                                    x1[j] -= vm[j];
                                    vg[j] += x0[j] * x0[j];
                                    vh[j] += x1[j] * x1[j];
                                }
                                va[j] += x0[j];
                                vb[j] += x1[j];
                            }
                        }
                        if (r < re) {
                            NAME(strip_ld)(ws + r * C, x0);
                            for (j = 0; j < FBN_SV; j++) {
                                if (pass) {
                                    x0[j] -= vm[j];
                                    vg[j] += x0[j] * x0[j];
                                }
                                va[j] += x0[j];
                            }
                        }
                        memcpy(a, va, sizeof a);
                        memcpy(b, vb, sizeof b);
                        memcpy(g, vg, sizeof g);
                        memcpy(h, vh, sizeof h);
                    } else
#endif
                    { /* the same, lane by lane (the last strip) */
                        for (r = rr; r + 1 < re; r += 2)
                            for (k = 0; k < wd; k++) {
                                float d = FBN_LD(ws[r * C + k]), e = FBN_LD(ws[(r + 1) * C + k]);
                                if (pass) {
                                    d -= m[k];
                                    e -= m[k];
                                    g[k] += d * d;
                                    h[k] += e * e;
                                }
                                a[k] += d;
                                b[k] += e;
                            }
                        if (r < re)
                            for (k = 0; k < wd; k++) {
                                float d = FBN_LD(ws[r * C + k]);
                                if (pass) {
                                    d -= m[k];
                                    g[k] += d * d;
                                }
                                a[k] += d;
                            }
                    }
                    memcpy(p + c0, a, sizeof(float) * (size_t)wd);
                    memcpy(q + c0, b, sizeof(float) * (size_t)wd);
                    memcpy(u + c0, g, sizeof(float) * (size_t)wd);
                    memcpy(v + c0, h, sizeof(float) * (size_t)wd);
                }
            } else {
                for (r = rr; r < re; r++)
                    NAME(row_sums)(w + r * C, C, mf, (r - rr) & 1 ? q : p,
                                   pass == 0 ? NULL : (r - rr) & 1 ? v : u);
            }
            /* the end of a piece */
            for (c = 0; c < C; c++) {
                s1[c] += (double)p[c];
                s1[c] += (double)q[c];
            }
            if (pass)
                for (c = 0; c < C; c++) {
                    m2[c] += (double)u[c];
                    m2[c] += (double)v[c];
                }
        }
        if (pass == 0)
            for (c = 0; c < C; c++) {
                mean[c] /= (double)nr;
                mf[c] = (float)mean[c];
            }
    }
    for (c = 0; c < C; c++) {
        double qq = m2[c] - sd[c] * (sd[c] / (double)nr);
        if (!NAME(sums_held)(qq, sd[c], (double)nr))
            return 0;
        mean[c] = (double)mf[c] + sd[c] / (double)nr;
        m2[c] = qq;
    }
    return 1;
}

/* The float kernel's double sums (pass 1: m NULL), on widened tiles: a
 * chunk whose float sums left their range (tile_moments). */
static inline void NAME(dsum_acc)(const T *x, ptrdiff_t n, const double *m, double *acc)
{
    float w[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(x + t, w, len);
        if (m)
            FBN_F32(ssd_acc)(w, len, *m, acc);
        else
            FBN_F32(sum_acc)(w, len, acc);
    }
}

#if FBN_F16C == 512

/* AVX-512: the float kernel's arithmetic in registers, 16 values at a time
 * (max(0, t) is t < 0 ? 0 : t: NaN and -0 stay), the last n % 16 with
 * masked loads and stores (elementwise: the same bits as one by one);
 * x, z and y may be the same array. */
/* The transform of 16 values v (z: the residual's) */
#define FBN_TFORM16(t, v, zv, hasml)                                            \
    do {                                                                       \
        t = _mm512_sub_ps((v), vmh);                                           \
        if (hasml)                                                             \
            t = _mm512_sub_ps(t, vml);                                         \
        t = _mm512_add_ps(_mm512_mul_ps(t, va), vb);                           \
        if (hasz)                                                              \
            t = _mm512_add_ps(t, (zv));                                        \
        if (act)                                                               \
            t = _mm512_max_ps(zero, t);                                        \
        if ((act) == FBN_ACT_RELU6)                                            \
            t = _mm512_min_ps(_mm512_set1_ps(6.0f), t);                        \
    } while (0)

static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int act, int hasz)
{
    __m512 vmh = _mm512_set1_ps(mh), vml = _mm512_set1_ps(ml), t;
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    ptrdiff_t i = 0, r;
    /* t - 0 is t (-0 included): without ml's subtraction where it is 0
     * (inference: always) */
    if (ml != 0.0f)
        for (; i + 16 <= n; i += 16) {
            FBN_TFORM16(t, NAME(load16)(x + i), NAME(load16)(z + i), 1);
            NAME(store16)(y + i, t);
        }
    else
        for (; i + 16 <= n; i += 16) {
            FBN_TFORM16(t, NAME(load16)(x + i), NAME(load16)(z + i), 0);
            NAME(store16)(y + i, t);
        }
    r = n - i;
    if (r > 0) { /* the tail, masked (7x7 runs end in one) */
        FBN_TFORM16(t, NAME(loadn)(x + i, r), NAME(loadn)(z + i, r), 1);
        NAME(storen)(y + i, t, r);
    }
}

/* The same, written straight to memory with non-temporal stores, a 64-byte
 * line (32 values) per store: y 64-byte aligned, n a multiple of 32
 * (apply_span's whole lines); pf != 0: line by line, the line of x pf
 * values further on prefetched. */
static inline void NAME(apply_nt_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                       R mh, R ml, R a, R b, ptrdiff_t pf, int act,
                                       int hasz)
{
    __m512 vmh = _mm512_set1_ps(mh), vml = _mm512_set1_ps(ml), t, u;
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    ptrdiff_t i;
#define FBN_LINE_NT(hasml)                                                     \
    for (i = 0; i < n; i += 32) {                                              \
        if (pf)                                                                \
            fbn_prefetch(x + i, (size_t)pf * sizeof(T), 1);                    \
        FBN_TFORM16(t, NAME(load16)(x + i), NAME(load16)(z + i), hasml);      \
        FBN_TFORM16(u, NAME(load16)(x + i + 16), NAME(load16)(z + i + 16), hasml); \
        _mm512_stream_si512((void *)(y + i), NAME(narrow32)(t, u));           \
    }
    if (ml != 0.0f)
        FBN_LINE_NT(1)
    else
        FBN_LINE_NT(0)
#undef FBN_LINE_NT
}
#undef FBN_TFORM16
#elif FBN_F16C == 256
/* AVX2: the float kernel's arithmetic in registers, 8 values at a time
 * (max(0, t) as at AVX-512), the last n % 8 one by one in the float
 * kernel's own expression; x, z and y may be the same array. */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int act, int hasz)
{
    __m256 vmh = _mm256_set1_ps(mh), vml = _mm256_set1_ps(ml), t;
    __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), zero = _mm256_setzero_ps();
    ptrdiff_t i = 0;
#define FBN_TFORM8(t, v, zv)                                                   \
    do {                                                                       \
        t = _mm256_sub_ps(_mm256_sub_ps((v), vmh), vml);                       \
        t = _mm256_add_ps(_mm256_mul_ps(t, va), vb);                           \
        if (hasz)                                                              \
            t = _mm256_add_ps(t, (zv));                                        \
        if (act)                                                               \
            t = _mm256_max_ps(zero, t);                                        \
        if ((act) == FBN_ACT_RELU6)                                            \
            t = _mm256_min_ps(_mm256_set1_ps(6.0f), t);                        \
    } while (0)
#if FBN_HALF == 2
    for (; i + 16 <= n; i += 16) { /* (in the unpacks' order: one set of constants) */
        __m256 x0, x1, z0 = zero, z1 = zero, u;
        NAME(load16u)(x + i, &x0, &x1);
        if (hasz)
            NAME(load16u)(z + i, &z0, &z1);
        FBN_TFORM8(t, x0, z0);
        FBN_TFORM8(u, x1, z1);
        NAME(store16u)(y + i, t, u);
    }
#endif
    for (; i + 8 <= n; i += 8) {
        FBN_TFORM8(t, NAME(load8)(x + i), NAME(load8)(z + i));
        NAME(store8)(y + i, t);
    }
#undef FBN_TFORM8
    for (; i < n; i++) {
        R u = ((FBN_LD(x[i]) - mh) - ml) * a + b;
        if (hasz)
            u += FBN_LD(z[i]);
        FBN_ACTIVATE(u, act);
        y[i] = FBN_ST(u);
    }
}
#else
/* x, z and y may be the same array (a tile is read before it is written). */
static inline void NAME(apply_body)(const T *x, const T *z, T *y, ptrdiff_t n,
                                    R mh, R ml, R a, R b, int act, int hasz)
{
    float w[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(x + t, w, len);
        if (hasz)
            NAME(widen)(z + t, wz, len);
        FBN_F32(apply_body)(w, wz, w, len, mh, ml, a, b, act, hasz);
        NAME(narrow)(w, y + t, len);
    }
}
#endif

#if FBN_F16C
/* The backward's reductions, values [i, n) in the scalar lane (t0, t1),
 * as bsum_plain adds its last n % 16 values. */
static inline void NAME(bsum_tail)(const T *dy, const T *x, const T *y, int act,
                                   ptrdiff_t i, ptrdiff_t n, double m, double *t0,
                                   double *t1)
{
    for (; i < n; i++) {
        float gf = FBN_LD(dy[i]);
        double gk;
        if (y && !NAME(pass)(FBN_LD(y[i]), act))
            gf = 0.0f;
        gk = (double)gf;
        *t0 += gk;
        *t1 += gk * ((double)FBN_LD(x[i]) - m);
    }
}
#endif

#if FBN_F16C == 512
/* AVX-512: the backward's arithmetic in registers, as the forward's: 16
 * values widened at once, the mask a compare (y > 0, false for NaN, so
 * dy' = +0 there as in mask_grad), each double lane adding its values in
 * the float kernel's order (bsum_plain: lanes 0-7 and 8-15, the last
 * n % 16 values in the scalar lane), so the bits are the float kernel's on
 * the widened data. */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, int act, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    __m512d a0 = _mm512_loadu_pd(s0), b0 = _mm512_loadu_pd(s0 + 8);
    __m512d a1 = _mm512_loadu_pd(s1), b1 = _mm512_loadu_pd(s1 + 8);
    __m512d mv = _mm512_set1_pd(m);
    double t0 = s0[FBN_LANES], t1 = s1[FBN_LANES];
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = NAME(load16)(dy + i), v = NAME(load16)(x + i);
        __m512d ga, gb;
        if (y)
            g = _mm512_maskz_mov_ps(NAME(pass16)(NAME(load16)(y + i), act), g);
        ga = _mm512_cvtps_pd(_mm512_castps512_ps256(g));
        gb = _mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1));
        a0 = _mm512_add_pd(a0, ga);
        b0 = _mm512_add_pd(b0, gb);
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(ga, _mm512_sub_pd(
                 _mm512_cvtps_pd(_mm512_castps512_ps256(v)), mv)));
        b1 = _mm512_add_pd(b1, _mm512_mul_pd(gb, _mm512_sub_pd(
                 _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), mv)));
    }
    NAME(bsum_tail)(dy, x, y, act, i, n, m, &t0, &t1);
    _mm512_storeu_pd(s0, a0);
    _mm512_storeu_pd(s0 + 8, b0);
    _mm512_storeu_pd(s1, a1);
    _mm512_storeu_pd(s1 + 8, b1);
    s0[FBN_LANES] = t0;
    s1[FBN_LANES] = t1;
}

/* dx (and dz) of n values of one channel, the float kernel's bapply_body
 * in registers, the last n % 16 masked; dx may equal dy (each 16 are read
 * before written). */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    __m512 vm = _mm512_set1_ps(m), va = _mm512_set1_ps(A), vb = _mm512_set1_ps(B);
    __m512 vd = _mm512_set1_ps(D);
    ptrdiff_t i;
    for (i = 0; i < n; i += 16) {
        ptrdiff_t q = n - i; /* < 16: the tail, masked */
        __m512 g = q >= 16 ? NAME(load16)(dy + i) : NAME(loadn)(dy + i, q), r;
        if (mask)
            g = _mm512_maskz_mov_ps(NAME(pass16)(
                    q >= 16 ? NAME(load16)(y + i) : NAME(loadn)(y + i, q), mask), g);
        if (hasdz) {
            if (q >= 16)
                NAME(store16)(dz + i, g);
            else
                NAME(storen)(dz + i, g, q);
        }
        r = _mm512_mul_ps(va, g);
        if (training)
            r = _mm512_add_ps(r, _mm512_add_ps(_mm512_mul_ps(vb, _mm512_sub_ps(
                    q >= 16 ? NAME(load16)(x + i) : NAME(loadn)(x + i, q), vm)), vd));
        if (q >= 16)
            NAME(store16)(dx + i, r);
        else
            NAME(storen)(dx + i, r, q);
    }
}
#elif FBN_F16C == 256
/* AVX2: the backward's reductions in registers as at AVX-512, 8 values
 * widened at once into two double vectors of 4 lanes, the lanes in the
 * float kernel's order (bsum_plain: 16 lanes, the last n % 16 values in
 * the scalar lane). */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, int act, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    __m256d a[4], b[4], mv = _mm256_set1_pd(m);
    double t0 = s0[FBN_LANES], t1 = s1[FBN_LANES];
    ptrdiff_t i = 0;
    int k;
    for (k = 0; k < 4; k++) {
        a[k] = _mm256_loadu_pd(s0 + 4 * k);
        b[k] = _mm256_loadu_pd(s1 + 4 * k);
    }
    for (; i + 16 <= n; i += 16)
        for (k = 0; k < 2; k++) {
            __m256 g = NAME(load8)(dy + i + 8 * k), v = NAME(load8)(x + i + 8 * k);
            __m256d glo, ghi;
            if (y)
                g = _mm256_and_ps(NAME(pass8)(NAME(load8)(y + i + 8 * k), act), g);
            glo = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
            ghi = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
            a[2 * k] = _mm256_add_pd(a[2 * k], glo);
            a[2 * k + 1] = _mm256_add_pd(a[2 * k + 1], ghi);
            b[2 * k] = _mm256_add_pd(b[2 * k], _mm256_mul_pd(glo, _mm256_sub_pd(
                           _mm256_cvtps_pd(_mm256_castps256_ps128(v)), mv)));
            b[2 * k + 1] = _mm256_add_pd(b[2 * k + 1], _mm256_mul_pd(ghi, _mm256_sub_pd(
                               _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mv)));
        }
    NAME(bsum_tail)(dy, x, y, act, i, n, m, &t0, &t1);
    for (k = 0; k < 4; k++) {
        _mm256_storeu_pd(s0 + 4 * k, a[k]);
        _mm256_storeu_pd(s1 + 4 * k, b[k]);
    }
    s0[FBN_LANES] = t0;
    s1[FBN_LANES] = t1;
}

/* dx (and dz) of n values of one channel, the float kernel's bapply_body
 * in registers, 8 at a time, the last n % 8 one by one in its expression;
 * dx may equal dy. */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    __m256 vm = _mm256_set1_ps(m), va = _mm256_set1_ps(A), vb = _mm256_set1_ps(B);
    __m256 vd = _mm256_set1_ps(D);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = NAME(load8)(dy + i), r;
        if (mask)
            g = _mm256_and_ps(NAME(pass8)(NAME(load8)(y + i), mask), g);
        if (hasdz)
            NAME(store8)(dz + i, g);
        r = _mm256_mul_ps(va, g);
        if (training)
            r = _mm256_add_ps(r, _mm256_add_ps(_mm256_mul_ps(vb, _mm256_sub_ps(
                    NAME(load8)(x + i), vm)), vd));
        NAME(store8)(dx + i, r);
    }
    for (; i < n; i++) {
        float g = FBN_LD(dy[i]), r;
        if (mask && !NAME(pass)(FBN_LD(y[i]), mask))
            g = 0.0f;
        if (hasdz)
            dz[i] = FBN_ST(g);
        r = A * g;
        if (training)
            r += B * (FBN_LD(x[i]) - m) + D;
        dx[i] = FBN_ST(r);
    }
}
#else
/* The backward's reductions of n values (dy' = dy where y > 0 when y is
 * given): the float kernel's bsum_body, tile by tile. */
static void NAME(bsum_body)(const T *dy, const T *x, const T *y, int act, ptrdiff_t n,
                            double m, double *s0, double *s1)
{
    float wg[FBN_TILE], wx[FBN_TILE], wy[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(dy + t, wg, len);
        NAME(widen)(x + t, wx, len);
        if (y) {
            NAME(widen)(y + t, wy, len);
            FBN_F32(mask_grad)(wg, wy, act, wg, len);
        }
        FBN_F32(bsum_plain)(wg, wx, len, m, s0, s1);
    }
}

/* dx (and dz) of n values of one channel; dx may equal dy. */
static inline void NAME(bapply_body)(const T *dy, const T *x, const T *y,
                                     T *dx, T *dz, ptrdiff_t n, R m, R A, R B,
                                     R D, int mask, int training, int hasdz)
{
    float wg[FBN_TILE], wx[FBN_TILE], wy[FBN_TILE], wz[FBN_TILE];
    ptrdiff_t t;
    for (t = 0; t < n; t += FBN_TILE) {
        ptrdiff_t len = fbn_min(FBN_TILE, n - t);
        NAME(widen)(dy + t, wg, len);
        if (training)
            NAME(widen)(x + t, wx, len);
        if (mask)
            NAME(widen)(y + t, wy, len);
        FBN_F32(bapply_body)(wg, wx, wy, wg, wz, len, m, A, B, D, mask, training,
                             hasdz);
        if (hasdz)
            NAME(narrow)(wz, dz + t, len);
        NAME(narrow)(wg, dx + t, len);
    }
}
#endif

#if FBN_F16C
/* A long row's slice of n channels (the channel-last backward's
 * reductions): the float kernel's bsum_long_rows on the widened values,
 * channel by channel (s0[c] += g, s1[c] += g * (x - m[c]) in double, g
 * = +0 where y <= 0 or NaN when y is given), in registers. */
static void NAME(bsum_row_regs)(const T *dy, const T *x, const T *y, int act, ptrdiff_t n,
                                const double *m, double *s0, double *s1)
{
    ptrdiff_t c = 0;
#if FBN_F16C == 512
#define FBN_BROW(gd, xd, o)                                                    \
    do {                                                                       \
        __m512d gk = (gd);                                                     \
        _mm512_storeu_pd(s0 + (o), _mm512_add_pd(_mm512_loadu_pd(s0 + (o)), gk)); \
        _mm512_storeu_pd(s1 + (o), _mm512_add_pd(_mm512_loadu_pd(s1 + (o)),      \
            _mm512_mul_pd(gk, _mm512_sub_pd((xd), _mm512_loadu_pd(m + (o))))));  \
    } while (0)
    for (; c + 16 <= n; c += 16) {
        __m512 g = NAME(load16)(dy + c), v = NAME(load16)(x + c);
        if (y)
            g = _mm512_maskz_mov_ps(NAME(pass16)(NAME(load16)(y + c), act), g);
        FBN_BROW(_mm512_cvtps_pd(_mm512_castps512_ps256(g)),
                 _mm512_cvtps_pd(_mm512_castps512_ps256(v)), c);
        FBN_BROW(_mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1)),
                 _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), c + 8);
    }
#else
#define FBN_BROW(gd, xd, o)                                                    \
    do {                                                                       \
        __m256d gk = (gd);                                                     \
        _mm256_storeu_pd(s0 + (o), _mm256_add_pd(_mm256_loadu_pd(s0 + (o)), gk)); \
        _mm256_storeu_pd(s1 + (o), _mm256_add_pd(_mm256_loadu_pd(s1 + (o)),      \
            _mm256_mul_pd(gk, _mm256_sub_pd((xd), _mm256_loadu_pd(m + (o))))));  \
    } while (0)
    for (; c + 8 <= n; c += 8) {
        __m256 g = NAME(load8)(dy + c), v = NAME(load8)(x + c);
        if (y)
            g = _mm256_and_ps(NAME(pass8)(NAME(load8)(y + c), act), g);
        FBN_BROW(_mm256_cvtps_pd(_mm256_castps256_ps128(g)),
                 _mm256_cvtps_pd(_mm256_castps256_ps128(v)), c);
        FBN_BROW(_mm256_cvtps_pd(_mm256_extractf128_ps(g, 1)),
                 _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), c + 4);
    }
#endif
#undef FBN_BROW
    for (; c < n; c++) {
        float gf = FBN_LD(dy[c]);
        double gk;
        if (y && !NAME(pass)(FBN_LD(y[c]), act))
            gf = 0.0f;
        gk = (double)gf;
        s0[c] += gk;
        s1[c] += gk * ((double)FBN_LD(x[c]) - m[c]);
    }
}
#endif
