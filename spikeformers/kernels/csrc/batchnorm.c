/* Training-mode BatchNorm over a channels-last block (CPU), alone or fused with the LIF neuron
 * that follows it, for spikeformers/kernels.py.
 *
 * The tensor is an [M, C] row-major matrix: a channels-last [N, C, H, W] (M = N*H*W) or the
 * [N, C, L, 1] view of a channels-innermost token matrix. Every function works on the channel
 * slice [c0, c1) of all M rows. Across the OpenMP threads (parallel.h) it splits the rows
 * whenever there are enough of them (BN_ROW_SPLIT), else the channels (no partial sums to merge):
 * each block of BN_ROWS rows keeps its float sums, added into the totals in block order afterwards,
 * the same additions in the same order as the serial loop, so both splits give the same bits.
 * Statistics are accumulated in double; the
 * values are read and written as float32 or bfloat16 (round to nearest even), the per-channel
 * coefficients are float32.
 *
 *   forward : mean, var (biased) over the rows (sums of x - x[row 0], against cancellation); y = x * a + b, a = w / sqrt(var + eps),
 *             b = bias - mean * a; writes mean and rstd = 1 / sqrt(var + eps) for backward.
 *   backward: gb = sum gy, gw = rstd * (sum gy x - mean gb),
 *             gx = w rstd (gy - gb / M - (x - mean) rstd gw / M) = gy * p + x * q + r.
 *
 * PyTorch's own CPU kernel computes the same quantities; its backward for channels-last took
 * 3.5-4.5x its forward on this machine, this one reads x and gy twice and writes gx once.
 *
 * BatchNorm + LIF forward (bnlif_forward_*): the rows are T time steps of R = M / T rows each
 * (the merged [T*B, ...] layout of the models), and the BatchNorm output y feeds a LIF neuron
 * with decay_input (the official models' neuron). y is never written: after the statistics pass
 * the kernel computes y, rounds it to the tensor's dtype exactly as bn_forward stores it, and runs
 * the neuron's charge / fire / reset over t, writing the spikes and (for the backward) the
 * membranes H. 4 passes over the activation instead of bn_forward + lif_forward's 6 (x twice, y
 * written and read back, spikes, H). Built like the neuron forward, without fast-math or
 * contraction, as is bn_forward: the same y, hence the same spikes and H, as the two kernels in
 * turn. The backward is lif_backward then bn_backward: a fused backward that recomputed y and H
 * from x (6 passes instead of 8, nothing but x saved) measured slower here, its sigmoid surrogate
 * being compute-bound at these sizes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"
#include "common.h"
#include "lif.h"

#define ROUND_f32(v) (v)
#define ROUND_bf16(v) bf2f(f2bf(v))

/* rows are processed in blocks whose float partial sums go into the double totals: the inner
 * loops over channels stay float and vectorise, the totals keep double accuracy */
#define BN_ROWS 64
/* Enough rows: split the rows (blocks of BN_ROWS) across the threads, not the channels; the results
 * are the same either way (see bn_stats_rows). Split by channels, 48 channels went 32 / 16 (one
 * thread idle a third of the time), and the BN + LIF forward ran slower on 2 threads than on 1 even
 * at 384 channels: [256 rows, 384] float32 took 45 us on 1 thread, 78-85 us on 2 (each thread firing
 * half of every row), 31 us with the rows split (a C harness on a 2-core AMD EPYC). */
#define BN_ROW_SPLIT(M, n) (sf_openmp_threads() > 1 && (M) >= 4 * BN_ROWS && (M) * (n) >= SF_PAR_MIN)

/* the row split's reduction: nb blocks of float sums [s-part (n), t-part (n)] added into the double
 * totals s, t in block order, the additions the serial loops make */
static void bn_add_blocks(double *s, double *t, const float *part, int64_t nb, int64_t n) {
    for (int64_t blk = 0; blk < nb; blk++) {
        const float *ps = part + blk * 2 * n, *pt = ps + n;
        for (int64_t j = 0; j < n; j++) { s[j] += ps[j]; t[j] += pt[j]; }
    }
}

#define BN_FUNCS(SUF, T)                                                                          \
/* statistics of channels [c0, c0 + n): mean, var, rstd (out arrays indexed by channel), and   \
 * the coefficients y = x * A[j] + B[j] */                                                        \
static void bn_block_sums_##SUF(const T *x, const float *k, float *ps, float *pss, int64_t M,   \
                                int64_t C, int64_t c0, int64_t n, int64_t blk) {                 \
    int64_t r0 = blk * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                         \
    for (int64_t j = 0; j < n; j++) { ps[j] = 0.0f; pss[j] = 0.0f; }                              \
    for (int64_t i = r0; i < r1; i++) {                                                           \
        const T *row = x + i * C + c0;                                                            \
        for (int64_t j = 0; j < n; j++) { float v = LOAD_##SUF(row[j]) - k[j]; ps[j] += v; pss[j] += v * v; } \
    }                                                                                             \
}                                                                                                 \
static void bn_stats_finish_##SUF(const double *s, const double *ss, const float *k,             \
                                  const float *w, const float *b, float *mean_out, float *var_out, \
                                  float *rstd_out, float *A, float *B, int64_t M, int64_t c0,     \
                                  int64_t n, float eps);                                          \
static void bn_stats_##SUF(const T *x, const float *w, const float *b, float *mean_out,          \
                           float *var_out, float *rstd_out, float *A, float *B, int64_t M,       \
                           int64_t C, int64_t c0, int64_t n, float eps) {                        \
    double *s = calloc(2 * n, sizeof(double)), *ss = s + n;                                       \
    float *ps = malloc(3 * n * sizeof(float)), *pss = ps + n, *k = ps + 2 * n;                    \
    for (int64_t j = 0; j < n; j++) k[j] = M ? LOAD_##SUF(x[c0 + j]) : 0.0f; /* shift: row 0 */   \
    for (int64_t blk = 0; blk * BN_ROWS < M; blk++) {                                             \
        bn_block_sums_##SUF(x, k, ps, pss, M, C, c0, n, blk);                                     \
        for (int64_t j = 0; j < n; j++) { s[j] += ps[j]; ss[j] += pss[j]; }                       \
    }                                                                                             \
    bn_stats_finish_##SUF(s, ss, k, w, b, mean_out, var_out, rstd_out, A, B, M, c0, n, eps);      \
    free(s); free(ps);                                                                            \
}                                                                                                 \
/* the same statistics with the row blocks split across the threads: each block's float sums     \
 * are kept and added into the double totals in block order afterwards, the very additions the   \
 * serial loop above makes, so the results are bit-identical to it */                            \
static void bn_stats_rows_##SUF(const T *x, const float *w, const float *b, float *mean_out,     \
                                float *var_out, float *rstd_out, float *A, float *B, int64_t M,  \
                                int64_t C, int64_t c0, int64_t n, float eps) {                   \
    int64_t nb = (M + BN_ROWS - 1) / BN_ROWS;                                                     \
    double *s = calloc(2 * n, sizeof(double)), *ss = s + n;                                       \
    float *k = malloc(n * sizeof(float)), *part = malloc(nb * 2 * n * sizeof(float));             \
    for (int64_t j = 0; j < n; j++) k[j] = M ? LOAD_##SUF(x[c0 + j]) : 0.0f;                      \
    int64_t b0 = 0, b1 = nb;                                                                      \
    SF_PAR_BEGIN(b0, b1, 1, nb > 1)                                                               \
    for (int64_t blk = b0; blk < b1; blk++)                                                       \
        bn_block_sums_##SUF(x, k, part + blk * 2 * n, part + blk * 2 * n + n, M, C, c0, n, blk);  \
    SF_PAR_END                                                                                    \
    bn_add_blocks(s, ss, part, nb, n);                                                            \
    bn_stats_finish_##SUF(s, ss, k, w, b, mean_out, var_out, rstd_out, A, B, M, c0, n, eps);      \
    free(s); free(k); free(part);                                                                 \
}                                                                                                 \
static void bn_stats_finish_##SUF(const double *s, const double *ss, const float *k,             \
                                  const float *w, const float *b, float *mean_out, float *var_out, \
                                  float *rstd_out, float *A, float *B, int64_t M, int64_t c0,     \
                                  int64_t n, float eps) {                                         \
    for (int64_t j = 0; j < n; j++) {                                                             \
        double d = s[j] / (double)M, var = ss[j] / (double)M - d * d, m = d + (double)k[j];       \
        if (var < 0.0) var = 0.0;                                                                 \
        float rstd = (float)(1.0 / sqrt(var + (double)eps));                                      \
        float a = (w ? w[c0 + j] : 1.0f) * rstd;                                                  \
        mean_out[c0 + j] = (float)m; var_out[c0 + j] = (float)var; rstd_out[c0 + j] = rstd;       \
        A[j] = a; B[j] = (b ? b[c0 + j] : 0.0f) - (float)m * a;                                   \
    }                                                                                             \
}                                                                                                 \
/* from the per-channel sums of gy and gy (x - mean): gw, gb and gx = gy * P + x * Q + S */      \
static void bn_grad_coeffs_##SUF(const double *sg, const double *sgx, const float *w,            \
                                 const float *mean, const float *rstd, float *gw, float *gb,     \
                                 float *P, float *Q, float *S, int64_t M, int64_t c0, int64_t n) { \
    for (int64_t j = 0; j < n; j++) {                                                             \
        float rs = rstd[c0 + j], wv = w ? w[c0 + j] : 1.0f;                                       \
        float sgy = (float)sg[j], sgxh = (float)(sgx[j] * rs);  /* sum gy, sum gy * xhat */       \
        if (gb) gb[c0 + j] = sgy;                                                                 \
        if (gw) gw[c0 + j] = sgxh;                                                                \
        float p = wv * rs, q = -p * rs * sgxh / (float)M;                                         \
        P[j] = p; Q[j] = q; S[j] = -p * sgy / (float)M - q * mean[c0 + j];                        \
    }                                                                                             \
}                                                                                                 \
static void bn_apply_grad_##SUF(const T *gy, const T *x, T *gx, const float *P, const float *Q,  \
                                const float *S, int64_t i0, int64_t i1, int64_t C, int64_t c0,   \
                                int64_t n) {                                                     \
    for (int64_t i = i0; i < i1; i++) {                                                           \
        const T *g = gy + i * C + c0, *row = x + i * C + c0; T *out = gx + i * C + c0;            \
        for (int64_t j = 0; j < n; j++)                                                           \
            out[j] = STORE_##SUF(LOAD_##SUF(g[j]) * P[j] + LOAD_##SUF(row[j]) * Q[j] + S[j]);     \
    }                                                                                             \
}                                                                                                 \
static void bn_apply_##SUF(const T *x, T *y, const float *A, const float *B, int64_t i0,         \
                           int64_t i1, int64_t C, int64_t c0, int64_t n) {                       \
    for (int64_t i = i0; i < i1; i++) {                                                           \
        const T *row = x + i * C + c0; T *out = y + i * C + c0;                                   \
        for (int64_t j = 0; j < n; j++) out[j] = STORE_##SUF(LOAD_##SUF(row[j]) * A[j] + B[j]);   \
    }                                                                                             \
}                                                                                                 \
/* float sums of gy and gy * (x - mean) over one block of rows */                                \
static void bn_grad_block_sums_##SUF(const T *gy, const T *x, const float *mean, float *ps,      \
                                     float *psx, int64_t M, int64_t C, int64_t c0, int64_t n,    \
                                     int64_t blk) {                                              \
    int64_t r0 = blk * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                         \
    for (int64_t j = 0; j < n; j++) { ps[j] = 0.0f; psx[j] = 0.0f; }                              \
    for (int64_t i = r0; i < r1; i++) {                                                           \
        const T *g = gy + i * C + c0, *row = x + i * C + c0;                                      \
        for (int64_t j = 0; j < n; j++) {                                                         \
            float gv = LOAD_##SUF(g[j]);                                                          \
            ps[j] += gv; psx[j] += gv * (LOAD_##SUF(row[j]) - mean[c0 + j]);                      \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
void bn_forward_##SUF(const T *x, T *y, const float *w, const float *b, float *mean_out,         \
                      float *var_out, float *rstd_out, int64_t M, int64_t C, int64_t c0, int64_t c1, float eps) { \
    if (BN_ROW_SPLIT(M, c1 - c0)) {                                                               \
        int64_t n = c1 - c0, i0 = 0, i1 = M;                                                      \
        float *A = malloc(2 * n * sizeof(float)), *B = A + n;                                     \
        bn_stats_rows_##SUF(x, w, b, mean_out, var_out, rstd_out, A, B, M, C, c0, n, eps);        \
        SF_PAR_BEGIN(i0, i1, BN_ROWS, 1)                                                          \
        bn_apply_##SUF(x, y, A, B, i0, i1, C, c0, n);                                             \
        SF_PAR_END                                                                                \
        free(A);                                                                                  \
        return;                                                                                   \
    }                                                                                             \
    SF_PAR_BEGIN(c0, c1, 16, M * (c1 - c0) >= SF_PAR_MIN && c1 - c0 >= 32)                          \
    int64_t n = c1 - c0;                                                                          \
    float *A = malloc(2 * n * sizeof(float)), *B = A + n;                                         \
    bn_stats_##SUF(x, w, b, mean_out, var_out, rstd_out, A, B, M, C, c0, n, eps);                 \
    bn_apply_##SUF(x, y, A, B, 0, M, C, c0, n);                                                   \
    free(A);                                                                                      \
    SF_PAR_END                                                                                    \
}                                                                                                 \
void bn_backward_##SUF(const T *gy, const T *x, T *gx, const float *w, const float *mean,        \
                       const float *rstd, float *gw, float *gb, int64_t M, int64_t C, int64_t c0, \
                       int64_t c1) {                                                              \
    if (BN_ROW_SPLIT(M, c1 - c0)) {   /* block sums in parallel, added in block order */         \
        int64_t n = c1 - c0, nb = (M + BN_ROWS - 1) / BN_ROWS, b0 = 0, b1 = nb, i0 = 0, i1 = M;  \
        double *s = calloc(2 * n, sizeof(double)), *sx = s + n;                                   \
        float *part = malloc(nb * 2 * n * sizeof(float)), *coef = malloc(3 * n * sizeof(float));  \
        SF_PAR_BEGIN(b0, b1, 1, 1)                                                                \
        for (int64_t blk = b0; blk < b1; blk++)                                                   \
            bn_grad_block_sums_##SUF(gy, x, mean, part + blk * 2 * n, part + blk * 2 * n + n, M, C, c0, n, blk); \
        SF_PAR_END                                                                                \
        bn_add_blocks(s, sx, part, nb, n);                                                        \
        bn_grad_coeffs_##SUF(s, sx, w, mean, rstd, gw, gb, coef, coef + n, coef + 2 * n, M, c0, n); \
        SF_PAR_BEGIN(i0, i1, BN_ROWS, 1)                                                          \
        bn_apply_grad_##SUF(gy, x, gx, coef, coef + n, coef + 2 * n, i0, i1, C, c0, n);           \
        SF_PAR_END                                                                                \
        free(s); free(part); free(coef);                                                          \
        return;                                                                                   \
    }                                                                                             \
    SF_PAR_BEGIN(c0, c1, 16, M * (c1 - c0) >= SF_PAR_MIN && c1 - c0 >= 32)                          \
    int64_t n = c1 - c0;                                                                          \
    double *s = calloc(2 * n, sizeof(double)), *sx = s + n;                                       \
    float *ps = malloc(3 * n * sizeof(float)), *psx = ps + n, *pr = ps + 2 * n;                   \
    for (int64_t blk = 0; blk * BN_ROWS < M; blk++) {                                             \
        bn_grad_block_sums_##SUF(gy, x, mean, ps, psx, M, C, c0, n, blk);                         \
        for (int64_t j = 0; j < n; j++) { s[j] += ps[j]; sx[j] += psx[j]; }                       \
    }                                                                                             \
    bn_grad_coeffs_##SUF(s, sx, w, mean, rstd, gw, gb, ps, psx, pr, M, c0, n);                    \
    bn_apply_grad_##SUF(gy, x, gx, ps, psx, pr, 0, M, C, c0, n);                                  \
    free(s); free(ps);                                                                            \
    SF_PAR_END                                                                                    \
}

BN_FUNCS(f32, float)
BN_FUNCS(bf16, uint16_t)

/* ---- BatchNorm + LIF (decay_input charge, CHARGE_0 of lif.h; reset kind RK) ---------------- */

#define BNLIF_FWD_BODY(RK, SUF, TY, KEEP)                                                         \
    for (int64_t i = i0; i < i1; i++) {                                                           \
        for (int64_t j = 0; j < n; j++) v[j] = v0;                                                \
        for (int64_t t = 0; t < TT; t++) {                                                        \
            int64_t off = (t * R + i) * C + c0;                                                   \
            const TY *row = x + off; TY *out = s + off, *ht = KEEP ? hs + off : NULL;             \
            for (int64_t j = 0; j < n; j++) {                                                     \
                float y = ROUND_##SUF(LOAD_##SUF(row[j]) * A[j] + B[j]);                          \
                float h = CHARGE_0(v[j], y);                                                      \
                int f = h >= vth;                                                                 \
                out[j] = STORE_##SUF(f ? 1.0f : 0.0f);                                            \
                if (KEEP) hb[j] = h;                                                              \
                v[j] = f ? RESET_##RK(h) : h;                                                     \
            }                                                                                     \
            /* own loop: the threshold-side store (common.h) would keep the loop above scalar */  \
            if (KEEP) for (int64_t j = 0; j < n; j++) ht[j] = STORE_SIDE_##SUF(hb[j], vth, hb[j] >= vth); \
        }                                                                                         \
    }

#define BNLIF_FIRE(SUF, TY)                                                                       \
    switch (rkind * 2 + (hs != NULL)) {                                                           \
    case 0: { BNLIF_FWD_BODY(0, SUF, TY, 0) break; }                                              \
    case 1: { BNLIF_FWD_BODY(0, SUF, TY, 1) break; }                                              \
    case 2: { BNLIF_FWD_BODY(1, SUF, TY, 0) break; }                                              \
    case 3: { BNLIF_FWD_BODY(1, SUF, TY, 1) break; }                                              \
    case 4: { BNLIF_FWD_BODY(2, SUF, TY, 0) break; }                                              \
    default: { BNLIF_FWD_BODY(2, SUF, TY, 1) break; }                                             \
    }

#define BNLIF_FUNCS(SUF, TY)                                                                      \
void bnlif_forward_##SUF(const TY *x, TY *s, TY *hs, const float *w, const float *b,             \
                         float *mean_out, float *var_out, float *rstd_out, int64_t M, int64_t C, \
                         int64_t c0, int64_t c1, float eps, int64_t TT, int rkind, float tau,   \
                         float r, float vth, float v0) {                                          \
    if (BN_ROW_SPLIT(M, c1 - c0) && M / TT >= 2) {   /* statistics, then the rows of a step */   \
        int64_t n = c1 - c0, R = M / TT, i0 = 0, i1 = R;                                          \
        float *A = malloc(2 * n * sizeof(float)), *B = A + n;                                     \
        bn_stats_rows_##SUF(x, w, b, mean_out, var_out, rstd_out, A, B, M, C, c0, n, eps);        \
        SF_PAR_BEGIN(i0, i1, 1, 1)                                                                \
        float *v = malloc(2 * n * sizeof(float)), *hb = v + n;                                    \
        BNLIF_FIRE(SUF, TY)                                                                       \
        free(v);                                                                                  \
        SF_PAR_END                                                                                \
        free(A);                                                                                  \
        return;                                                                                   \
    }                                                                                             \
    SF_PAR_BEGIN(c0, c1, 16, M * (c1 - c0) >= SF_PAR_MIN && c1 - c0 >= 32)                          \
    int64_t n = c1 - c0, R = M / TT, i0 = 0, i1 = R;                                              \
    float *A = malloc(4 * n * sizeof(float)), *B = A + n, *v = A + 2 * n, *hb = A + 3 * n;        \
    bn_stats_##SUF(x, w, b, mean_out, var_out, rstd_out, A, B, M, C, c0, n, eps);                 \
    BNLIF_FIRE(SUF, TY)                                                                           \
    free(A);                                                                                      \
    SF_PAR_END                                                                                    \
}

BNLIF_FUNCS(f32, float)
BNLIF_FUNCS(bf16, uint16_t)

/* nn.BatchNorm's running-average update after a training step over n values per channel, in one
 * call instead of six tensor ops: num_batches_tracked += 1 (nbt may be NULL); f = momentum, or
 * 1 / num_batches_tracked for momentum < 0 (PyTorch's momentum=None, a cumulative average);
 * running = (1 - f) running + f batch, with the batch variance made unbiased (n / (n - 1));
 * computed in double, stored as float32. */
void bn_update_running(float *rm, float *rv, int64_t *nbt, const float *mean, const float *var, int64_t C,
                       double momentum, int64_t n) {
    if (nbt) *nbt += 1;
    double f = momentum >= 0.0 ? momentum : 1.0 / (double)(nbt && *nbt > 0 ? *nbt : 1);
    double unbias = n > 1 ? (double)n / (double)(n - 1) : 1.0;
    for (int64_t c = 0; c < C; c++) {
        rm[c] = (float)((1.0 - f) * (double)rm[c] + f * (double)mean[c]);
        rv[c] = (float)((1.0 - f) * (double)rv[c] + f * (double)var[c] * unbias);
    }
}
