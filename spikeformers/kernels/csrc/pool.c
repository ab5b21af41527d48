/* Max pooling over a channels-last block (CPU), for spikeformers/kernels.py: x is [N, H, W, C]
 * row-major, y [N, Ho, Wo, C], window k x k, stride s, zero-free padding p (padded positions never
 * win), no dilation, floor mode. Work is split over the N images (OpenMP, parallel.h).
 *
 * Ties and NaN follow PyTorch's CPU kernel exactly: the window is scanned row by row, a value
 * replaces the running maximum when it is greater or NaN, so the first maximum wins (the first
 * valid position when all are equal, e.g. a window of zero spikes) and a NaN sticks. The forward
 * optionally writes, per output element, the winning tap ky * k + kx as one byte (k <= 15); the
 * backward adds each output gradient to its winner, summing an image's contributions in float
 * and rounding once to the tensor's dtype. Built without fast-math (the NaN test must stay).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "parallel.h"
#include "common.h"

#define POOL_FUNCS(SUF, T)                                                                        \
void maxpool_forward_##SUF(const T *x, T *y, uint8_t *arg, int64_t N, int64_t H, int64_t W,     \
                           int64_t C, int64_t Ho, int64_t Wo, int64_t n0, int64_t n1, int k,     \
                           int s, int p) {                                                        \
    SF_PAR_BEGIN(n0, n1, 1, (n1 - n0) * Ho * Wo * C >= SF_PAR_MIN)                                  \
    float *m = malloc(C * sizeof(float));                                                         \
    int32_t *b = malloc(C * sizeof(int32_t));  /* 32-bit lanes: the loops vectorise 16 wide */   \
    for (int64_t n = n0; n < n1; n++)                                                             \
        for (int64_t oy = 0; oy < Ho; oy++)                                                       \
            for (int64_t ox = 0; ox < Wo; ox++) {                                                 \
                for (int64_t j = 0; j < C; j++) { m[j] = -INFINITY; b[j] = 0; }                   \
                int first = 1;                                                                    \
                for (int ky = 0; ky < k; ky++) {                                                  \
                    int64_t iy = oy * s - p + ky;                                                 \
                    if (iy < 0 || iy >= H) continue;                                              \
                    for (int kx = 0; kx < k; kx++) {                                              \
                        int64_t ix = ox * s - p + kx;                                             \
                        if (ix < 0 || ix >= W) continue;                                          \
                        const T *row = x + ((n * H + iy) * W + ix) * C;                           \
                        int32_t code = ky * k + kx;                                               \
                        if (first) {   /* PyTorch starts from the first valid position */         \
                            for (int64_t j = 0; j < C; j++) b[j] = code;                          \
                            first = 0;                                                            \
                        }                                                                         \
                        for (int64_t j = 0; j < C; j++) {                                         \
                            float v = LOAD_##SUF(row[j]);                                          \
                            int upd = (v > m[j]) | (v != v);                                      \
                            m[j] = upd ? v : m[j];                                                \
                            b[j] = upd ? code : b[j];                                             \
                        }                                                                         \
                    }                                                                             \
                }                                                                                 \
                int64_t o = ((n * Ho + oy) * Wo + ox) * C;                                        \
                for (int64_t j = 0; j < C; j++) y[o + j] = STORE_##SUF(m[j]);                     \
                if (arg) for (int64_t j = 0; j < C; j++) arg[o + j] = (uint8_t)b[j];              \
            }                                                                                     \
    free(m); free(b);                                                                             \
    SF_PAR_END                                                                                    \
}                                                                                                 \
void maxpool_backward_##SUF(const T *gy, const uint8_t *arg, T *gx, int64_t N, int64_t H,       \
                            int64_t W, int64_t C, int64_t Ho, int64_t Wo, int64_t n0, int64_t n1, \
                            int k, int s, int p) {                                                \
    SF_PAR_BEGIN(n0, n1, 1, (n1 - n0) * H * W * C >= SF_PAR_MIN)                                    \
    float *acc = malloc(H * W * C * sizeof(float));                                               \
    int64_t off[256];  /* tap code -> offset of its input pixel from the window's corner */       \
    for (int c = 0; c < k * k; c++) off[c] = ((c / k) * W + c % k) * C;                           \
    for (int64_t n = n0; n < n1; n++) {                                                           \
        for (int64_t e = 0; e < H * W * C; e++) acc[e] = 0.0f;                                    \
        for (int64_t oy = 0; oy < Ho; oy++)                                                       \
            for (int64_t ox = 0; ox < Wo; ox++) {                                                 \
                int64_t o = ((n * Ho + oy) * Wo + ox) * C;                                        \
                /* the window's corner may lie in the padding; a winning tap never does */        \
                int64_t corner = ((oy * s - p) * W + (ox * s - p)) * C;                           \
                for (int64_t j = 0; j < C; j++)                                                   \
                    acc[corner + off[arg[o + j]] + j] += LOAD_##SUF(gy[o + j]);                   \
            }                                                                                     \
        T *out = gx + n * H * W * C;                                                              \
        for (int64_t e = 0; e < H * W * C; e++) out[e] = STORE_##SUF(acc[e]);                     \
    }                                                                                             \
    free(acc);                                                                                    \
    SF_PAR_END                                                                                    \
}

POOL_FUNCS(f32, float)
POOL_FUNCS(bf16, uint16_t)
