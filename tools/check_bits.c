/*
 * check_bits.c -- a digest of every result bit of fastbn's C interface, so
 * that builds for other platforms can be compared with the x86-64 one
 * (tools/check_platforms.sh: GCC with runtime dispatch, clang 14, the
 * build MSVC would compile, and an aarch64 cross-build run under qemu).
 *
 * Deterministic inputs (an integer hash, no libm, no rand()) for every
 * element type, for channel-first and channel-last blocks, small (serial)
 * and large (threaded, fused and two-phase plans), go through the training
 * forward (with affine, residual, ReLU and ReLU6), inference, the fused
 * backward (both masks),
 * ghost batches with renormalization, the moments and the column
 * statistics.  (The mask from x given the forward's mean_lo is checked to
 * be bitwise the mask from x without it, not hashed.)  Each call's outputs are hashed (FNV-1a over their bytes).
 * For each instruction set the build has and thread counts 1 and 2, it
 * prints one line "<level> <threads> <digest>"; every line must show the
 * same digest (the kernels promise the same bits everywhere), and the
 * platforms must agree with each other.  Exit status 1 when the lines of
 * one build disagree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastbn.h"

static uint64_t digest;

static void mix(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++) {
        digest ^= b[i];
        digest *= 1099511628211ULL;
    }
}

static void check(int status, const char *what)
{
    if (status != FBN_OK) {
        fprintf(stderr, "check_bits: %s failed: %s\n", what, fbn_strerror(status));
        exit(2);
    }
    mix(&status, sizeof status);
}

/* A value in [-4, 4) from an integer hash of i and a seed (exact in every
 * type: a multiple of 2^-8). */
static double val(size_t i, unsigned seed)
{
    uint32_t h = (uint32_t)i * 2654435761u ^ (seed * 40503u + 0x9e3779b9u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return ((double)(h % 2048u) - 1024.0) / 256.0;
}

/* float to the 16-bit patterns (exact: val's values are representable in
 * float16 and bfloat16) */
static uint16_t to_f16(double v)
{
    /* v = k / 256 with |k| <= 1024: normal float16 or zero */
    uint16_t sign = v < 0 ? 0x8000 : 0;
    double a = v < 0 ? -v : v;
    int e = 0;
    if (a == 0)
        return sign;
    while (a >= 2.0) {
        a /= 2;
        e++;
    }
    while (a < 1.0) {
        a *= 2;
        e--;
    }
    return (uint16_t)(sign | ((e + 15) << 10) | (uint16_t)((a - 1.0) * 1024.0));
}
static uint16_t to_bf16(double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

typedef struct {
    ptrdiff_t outer, C, inner, groups;
} shape;

static const shape shapes[] = {
    {4, 3, 7, 2},     /* tiny: serial, odd remainders */
    {8, 16, 197, 4},  /* channel-first, short runs */
    {6, 2, 5001, 3},  /* few long channels: split over threads */
    {64, 40, 1, 8},   /* channel-last rows */
    {512, 19, 1, 4},  /* channel-last, many rows */
    {16, 8, 3136, 2}, /* 56x56 planes, larger than the serial threshold */
};

#define RUN_TYPE(T, R, SFX, DT, CONV)                                          \
    static void run_##SFX(const shape *s, int nth)                             \
    {                                                                          \
        size_t n = (size_t)(s->outer * s->C * s->inner), i;                    \
        size_t nc = (size_t)s->C, ng = (size_t)s->groups * nc;                 \
        T *x = malloc(n * sizeof(T)), *z = malloc(n * sizeof(T));              \
        T *dy = malloc(n * sizeof(T)), *y = malloc(n * sizeof(T));             \
        T *dx = malloc(n * sizeof(T)), *dz = malloc(n * sizeof(T));            \
        R *g = malloc(nc * sizeof(R)), *b = malloc(nc * sizeof(R));            \
        R *mean = malloc(ng * sizeof(R)), *invstd = malloc(ng * sizeof(R));    \
        R *var = malloc(nc * sizeof(R)), *dg = malloc(nc * sizeof(R));         \
        R *db = malloc(nc * sizeof(R)), *lo = malloc(ng * sizeof(R));          \
        R *dg2 = malloc(2 * nc * sizeof(R));                                   \
        double *dmean = malloc(nc * sizeof(double)), *dm2 = malloc(nc * 8);    \
        double *rr = malloc(ng * 8), *dd = malloc(ng * 8), *bv = malloc(ng * 8); \
        double rmean[64], rsig[64];                                            \
        fbn_renorm rn;                                                         \
        int act;                                                               \
        if (!x || !z || !dy || !y || !dx || !dz || !g || !b || !mean ||        \
            !invstd || !var || !dg || !db || !dmean || !dm2 || !rr || !dd ||   \
            !bv || !lo || !dg2) {                                              \
            fprintf(stderr, "check_bits: out of memory\n");                    \
            exit(2);                                                           \
        }                                                                      \
        for (i = 0; i < n; i++) {                                              \
            x[i] = CONV(val(i, 1) + 0.25);                                     \
            z[i] = CONV(val(i, 2) / 4);                                        \
            dy[i] = CONV(val(i, 3));                                           \
        }                                                                      \
        for (i = 0; i < nc; i++) {                                             \
            g[i] = (R)(val(i, 4) / 2 + 1);                                     \
            b[i] = (R)(val(i, 5) / 8);                                         \
            var[i] = (R)(val(i, 6) / 8 + 1);                                   \
            rmean[i % 64] = val(i, 7) / 16;                                    \
            rsig[i % 64] = val(i, 8) / 16 + 1.5;                               \
        }                                                                      \
        check(fbn_moments(DT, x, s->outer, s->C, s->inner, dmean, dm2, nth),   \
              "moments");                                                      \
        mix(dmean, nc * 8);                                                    \
        mix(dm2, nc * 8);                                                      \
        for (act = FBN_ACT_RELU6; act >= FBN_ACT_RELU; act--) {                \
            /* (ReLU last: the calls below take its outputs) */                \
            check(fbn_train_forward(DT, x, 1, s->outer, s->C, s->inner, g, b,  \
                                    z, 1e-5, act, NULL, y, mean, NULL, invstd, \
                                    bv, NULL, NULL, nth),                      \
                  "train_forward");                                            \
            mix(y, n * sizeof(T));                                             \
            mix(mean, nc * sizeof(R));                                         \
            mix(invstd, nc * sizeof(R));                                       \
            check(fbn_backward(DT, dy, x, y, act, 1, s->outer, s->C, s->inner, \
                               mean, invstd, g, NULL, NULL, NULL, NULL, 1, dx, \
                               dz, dg, db, nth),                               \
                  "backward");                                                 \
            mix(dx, n * sizeof(T));                                            \
            mix(dz, n * sizeof(T));                                            \
            mix(dg, nc * sizeof(R));                                           \
            mix(db, nc * sizeof(R));                                           \
        }                                                                      \
        check(fbn_backward(DT, dy, x, NULL, FBN_ACT_NONE, 1, s->outer, s->C,   \
                           s->inner, mean, invstd, NULL, NULL, NULL, NULL,     \
                           NULL, 0, dx, NULL, dg, db, nth),                    \
              "backward (frozen)");                                            \
        mix(dx, n * sizeof(T));                                                \
        check(fbn_infer_forward(DT, x, s->outer, s->C, s->inner, mean, var, g, \
                                NULL, NULL, 1e-3, FBN_ACT_NONE, y, nth),       \
              "infer_forward");                                                \
        mix(y, n * sizeof(T));                                                 \
        if (nc <= 64) {                                                        \
            rn.mean = rmean;                                                   \
            rn.sigma = rsig;                                                   \
            rn.rmax = 1.5;                                                     \
            rn.dmax = 0.5;                                                     \
            check(fbn_train_forward(DT, x, s->groups, s->outer, s->C,          \
                                    s->inner, g, b, NULL, 1e-5, FBN_ACT_RELU,  \
                                    &rn, y, mean, lo, invstd, bv, rr, dd, nth), \
                  "train_forward_ghost");                                      \
            mix(y, n * sizeof(T));                                             \
            mix(mean, ng * sizeof(R));                                         \
            mix(invstd, ng * sizeof(R));                                       \
            mix(rr, ng * 8);                                                   \
            mix(dd, ng * 8);                                                   \
            check(fbn_backward(DT, dy, x, y, FBN_ACT_RELU, s->groups,          \
                               s->outer, s->C, s->inner, mean, invstd, g, NULL, \
                               NULL, rr, dd, 1, dx, NULL, dg, db, nth),        \
                  "backward_ghost");                                           \
            mix(dx, n * sizeof(T));                                            \
            mix(dg, nc * sizeof(R));                                           \
            check(fbn_backward(DT, dy, x, NULL, FBN_ACT_RELU, s->groups,       \
                               s->outer, s->C, s->inner, mean, invstd, g, b,   \
                               NULL, rr, dd, 1, dx, NULL, dg, db, nth),        \
                  "backward_ghost (mask from x)");                             \
            mix(dx, n * sizeof(T));                                            \
            mix(dg, nc * sizeof(R));                                           \
            mix(db, nc * sizeof(R));                                           \
            if (fbn_backward(DT, dy, x, NULL, FBN_ACT_RELU, s->groups,         \
                             s->outer, s->C, s->inner, mean, invstd, g, b, lo, \
                             rr, dd, 1, dz, NULL, dg2, dg2 + nc, nth) != FBN_OK \
                || memcmp(dz, dx, n * sizeof(T)) != 0                          \
                || memcmp(dg2, dg, nc * sizeof(R)) != 0                        \
                || memcmp(dg2 + nc, db, nc * sizeof(R)) != 0) {                \
                fprintf(stderr, "check_bits: the mask from x with mean_lo "    \
                        "differs (" #SFX ")\n");                               \
                exit(1);                                                       \
            }                                                                  \
        }                                                                      \
        free(x); free(z); free(dy); free(y); free(dx); free(dz); free(g);      \
        free(b); free(mean); free(invstd); free(var); free(dg); free(db);      \
        free(dmean); free(dm2); free(rr); free(dd); free(bv); free(lo);        \
        free(dg2);                                                             \
    }

#define ID(v) (v)
RUN_TYPE(float, float, f32, FBN_FLOAT32, (float)ID)
RUN_TYPE(double, double, f64, FBN_FLOAT64, ID)
RUN_TYPE(fbn_half, float, f16, FBN_FLOAT16, to_f16)
RUN_TYPE(fbn_half, float, bf16, FBN_BFLOAT16, to_bf16)

#define RUN_COLS(T, SFX, DT)                                                   \
    static void cols_##SFX(ptrdiff_t rows, ptrdiff_t p, int colmajor, int nth) \
    {                                                                          \
        size_t n = (size_t)(rows * p), i;                                      \
        T *x = malloc(n * sizeof(T)), *y = malloc(n * sizeof(T));              \
        double *w = malloc((size_t)rows * 8), *cnt = malloc((size_t)p * 8);    \
        double *mean = malloc((size_t)p * 8), *m2 = malloc((size_t)p * 8);     \
        int inf = 0;                                                           \
        if (!x || !y || !w || !cnt || !mean || !m2) {                          \
            fprintf(stderr, "check_bits: out of memory\n");                    \
            exit(2);                                                           \
        }                                                                      \
        for (i = 0; i < n; i++)                                                \
            x[i] = (T)(val(i, 9) * 100 + 1e3);                                 \
        for (i = 0; i < (size_t)rows; i++)                                     \
            w[i] = val(i, 10) / 8 + 1;                                         \
        check(fbn_colstats(DT, x, rows, p, colmajor, w, cnt, mean, m2, nth),   \
              "colstats");                                                     \
        mix(cnt, (size_t)p * 8);                                               \
        mix(mean, (size_t)p * 8);                                              \
        mix(m2, (size_t)p * 8);                                                \
        for (i = 0; i < (size_t)p; i++)                                        \
            m2[i] = m2[i] / cnt[i] + 1;                                        \
        check(fbn_standardize(DT, x, rows, p, colmajor, mean, m2, 0, y, &inf,  \
                              nth),                                            \
              "standardize");                                                  \
        mix(y, n * sizeof(T));                                                 \
        mix(&inf, sizeof inf);                                                 \
        free(x); free(y); free(w); free(cnt); free(mean); free(m2);            \
    }
RUN_COLS(float, f32, FBN_FLOAT32)
RUN_COLS(double, f64, FBN_FLOAT64)

static uint64_t run_all(int nth)
{
    size_t k;
    digest = 14695981039346656037ULL;
    for (k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        run_f32(&shapes[k], nth);
        run_f64(&shapes[k], nth);
        run_f16(&shapes[k], nth);
        run_bf16(&shapes[k], nth);
    }
    cols_f32(3000, 7, 0, nth);
    cols_f32(300, 33, 1, nth);
    cols_f64(3000, 7, 1, nth);
    cols_f64(700, 40, 0, nth);
    return digest;
}

int main(void)
{
    char levels[256], *lv, *save = NULL;
    uint64_t first = 0;
    int nth, bad = 0, any = 0;
    fbn_init();
    /* small thresholds: the threaded plans run on these small inputs too */
    fbn_set_tuning(-1, -1, -1, 1024, -1);
    snprintf(levels, sizeof levels, "%s", fbn_simd_available());
    for (lv = strtok_r(levels, " ", &save); lv; lv = strtok_r(NULL, " ", &save)) {
        if (fbn_set_simd(lv) != FBN_OK) {
            fprintf(stderr, "check_bits: cannot select %s\n", lv);
            return 2;
        }
        for (nth = 1; nth <= 2; nth++) {
            uint64_t d = run_all(nth);
            printf("%-11s %d %016llx\n", lv, nth, (unsigned long long)d);
            if (any && d != first)
                bad = 1;
            first = any ? first : d;
            any = 1;
        }
    }
    printf("digest %016llx\n", (unsigned long long)first);
    if (bad)
        fprintf(stderr, "check_bits: the levels or thread counts disagree\n");
    return bad;
}
