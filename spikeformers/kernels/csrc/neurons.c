/* Fused multi-step neurons for spikeformers (CPU). Built at run time by spikeformers/kernels.py
 * with the system C compiler and loaded through ctypes; every function works on a [T, N] block
 * (N contiguous elements per time step, step t at offset t * N) and on a slice [lo, hi) of the N
 * elements, so Python can split the work across threads (ctypes releases the GIL).
 *
 * Threads: built with -fopenmp, every function splits its slice [lo, hi) across the OpenMP
 * threads itself (parallel.h). The library then shares PyTorch's libgomp (same soname, already
 * loaded), so the threads are the ones PyTorch's own operators just used, not a second pool
 * fighting them for the cores; without OpenMP it runs serially and Python splits the work.
 *
 * Exactness: the file is built twice. The forward functions are taken from the build with
 * -ffp-contract=off and without fast-math: the float32 forward performs the same IEEE operations,
 * in the same order and with the same float32 constants, as the plain PyTorch loop in neurons.py,
 * so spikes and membranes are bit-identical. The backward functions come from a -ffast-math build
 * (vectorised expf; gradients agree with the loop's to float rounding). bfloat16 tensors are read
 * and written as bfloat16 but the state is kept in float32 inside the kernel.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* GCC vectorises for 256-bit registers even where AVX-512 exists. These loops are compute-bound
 * (the sigmoid surrogate's polynomial exp), and the full width made the LIF backward 1.3-1.4x
 * and the ternary kernels 1.3-1.4x faster here (benchmarks/kernel_micro.py); the BatchNorm
 * kernel, whose inner loops run over few channels, was slower so and keeps the default.
 * Without AVX-512 the pragma changes nothing. */
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "parallel.h"
#include "common.h"
#include "lif.h"

#define BLK 256
/* elements per time step from which a call is split across the threads: the loop over T does T
 * times that work per element, and PyTorch's OpenMP workers are still spinning from the operator
 * before, so the split pays off early (a [4, 24576] bf16 LIF forward: 22.8 us on one thread,
 * 14.4 us on two, interleaved one-off timing) */
#define PAR_MIN_STEP 4096

#define LIF_FWD_BODY(CK, RK, SUF, TY, LOAD, STORE)                                                        \
    float v[BLK], hb[BLK];                                                                                 \
    for (int64_t b = lo; b < hi; b += BLK) {                                                         \
        int64_t n = hi - b < BLK ? hi - b : BLK;                                                     \
        for (int64_t i = 0; i < n; i++) v[i] = v0;                                                   \
        for (int64_t t = 0; t < T; t++) {                                                            \
            const TY *xt = x + t * N + b; TY *st = s + t * N + b;                                    \
            if (hs) {                                                                                \
                TY *ht = hs + t * N + b;                                                             \
                for (int64_t i = 0; i < n; i++) {                                                    \
                    float h = CHARGE_##CK(v[i], LOAD(xt + i));                                       \
                    int f = h >= vth;                                                                \
                    STORE(st + i, f ? 1.0f : 0.0f); hb[i] = h;                                       \
                    v[i] = f ? RESET_##RK(h) : h;                                                    \
                }                                                                                    \
                /* own loop: the threshold-side store would keep the loop above from vectorising */ \
                for (int64_t i = 0; i < n; i++) SUF##_store_side(ht + i, hb[i], vth, hb[i] >= vth);  \
            } else {                                                                                 \
                for (int64_t i = 0; i < n; i++) {                                                    \
                    float h = CHARGE_##CK(v[i], LOAD(xt + i));                                       \
                    int f = h >= vth;                                                                \
                    STORE(st + i, f ? 1.0f : 0.0f);                                                  \
                    v[i] = f ? RESET_##RK(h) : h;                                                    \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }

#define LIF_BWD_BODY(SK, TY, LOAD, STORE)                                                             \
    float gv[BLK];                                                                                   \
    const float soft = rkind == 0 ? 1.0f : 0.0f, keepg = detach ? 0.0f : 1.0f;                       \
    for (int64_t b = lo; b < hi; b += BLK) {                                                         \
        int64_t n = hi - b < BLK ? hi - b : BLK;                                                     \
        for (int64_t i = 0; i < n; i++) gv[i] = 0.0f;                                                \
        for (int64_t t = T - 1; t >= 0; t--) {                                                       \
            const TY *gst = gs + t * N + b, *ht = hs + t * N + b; TY *gxt = gx + t * N + b;          \
            for (int64_t i = 0; i < n; i++) {                                                        \
                float h = LOAD(ht + i), z = h - vth;                                                 \
                float sg = SG_##SK(z);                                                               \
                float m = z < 0.0f ? 1.0f : 0.0f;                                                    \
                /* soft: dV/dH = 1 - keepg vth g;  hard: dV/dH = (1 - S) + keepg (r - H) g */        \
                float dvdh = soft + (1.0f - soft) * m + keepg * (soft * -vth + (1.0f - soft) * (r - h)) * sg; \
                float gh = LOAD(gst + i) * sg + gv[i] * dvdh;                                        \
                STORE(gxt + i, gh * bcoef);                                                          \
                gv[i] = gh * a;                                                                      \
            }                                                                                        \
        }                                                                                            \
    }

#define TERN_BWD_BODY(SK, TY, LOAD, STORE)                                                            \
    float gu[BLK];                                                                                   \
    const float keepg = detach ? 0.0f : 1.0f;                                                        \
    for (int64_t b = lo; b < hi; b += BLK) {                                                         \
        int64_t n = hi - b < BLK ? hi - b : BLK;                                                     \
        for (int64_t i = 0; i < n; i++) gu[i] = 0.0f;                                                \
        for (int64_t t = T - 1; t >= 0; t--) {                                                       \
            const TY *got = go + t * N + b, *ut = us + t * N + b; TY *gxt = gx + t * N + b;          \
            for (int64_t i = 0; i < n; i++) {                                                        \
                float uu = LOAD(ut + i);                                                             \
                float sgn = uu < 0.0f ? -1.0f : 1.0f;                                                \
                float mag = sgn * uu - vth;                                                          \
                float out = mag >= 0.0f ? sgn : 0.0f;                                                \
                /* u[t+1] = decay u[t] (1 - |o[t]|) + x[t+1]; d|o|/do = sign(o) */                   \
                float g_o = LOAD(got + i) - keepg * gu[i] * decay * uu * out;                        \
                float g = gu[i] * decay * (1.0f - fabsf(out)) + g_o * SG_##SK(mag);                  \
                STORE(gxt + i, g);                                                                   \
                gu[i] = g;                                                                           \
            }                                                                                        \
        }                                                                                            \
    }

#define DEFINE_KERNELS(SUF, TY, LOAD, STORE)                                                          \
void lif_forward_##SUF(const TY *__restrict x, TY *__restrict s, TY *__restrict hs, int64_t T, int64_t N, int64_t lo, int64_t hi,     \
                       int ckind, int rkind, float tau, float c, float r, float vth, float v0) {     \
    if (ckind == 1) ckind = 0;                                                                       \
    SF_PAR_BEGIN(lo, hi, BLK, N >= PAR_MIN_STEP)                                                       \
    switch (ckind * 3 + rkind) {                                                                     \
    case 0: { LIF_FWD_BODY(0, 0, SUF, TY, LOAD, STORE) break; }                                           \
    case 1: { LIF_FWD_BODY(0, 1, SUF, TY, LOAD, STORE) break; }                                           \
    case 2: { LIF_FWD_BODY(0, 2, SUF, TY, LOAD, STORE) break; }                                           \
    case 6: { LIF_FWD_BODY(2, 0, SUF, TY, LOAD, STORE) break; }                                           \
    case 7: { LIF_FWD_BODY(2, 1, SUF, TY, LOAD, STORE) break; }                                           \
    case 8: { LIF_FWD_BODY(2, 2, SUF, TY, LOAD, STORE) break; }                                           \
    case 9: { LIF_FWD_BODY(3, 0, SUF, TY, LOAD, STORE) break; }                                           \
    case 10: { LIF_FWD_BODY(3, 1, SUF, TY, LOAD, STORE) break; }                                          \
    case 11: { LIF_FWD_BODY(3, 2, SUF, TY, LOAD, STORE) break; }                                          \
    case 12: { LIF_FWD_BODY(4, 0, SUF, TY, LOAD, STORE) break; }                                          \
    case 13: { LIF_FWD_BODY(4, 1, SUF, TY, LOAD, STORE) break; }                                          \
    default: { LIF_FWD_BODY(4, 2, SUF, TY, LOAD, STORE) break; }                                          \
    }                                                                                                \
    SF_PAR_END                                                                                       \
}                                                                                                    \
void lif_backward_##SUF(const TY *__restrict gs, const TY *__restrict hs, TY *__restrict gx, int64_t T, int64_t N, int64_t lo,        \
                        int64_t hi, int rkind, int detach, float a, float bcoef, float vth, float r, \
                        int skind, float alpha) {                                                    \
    SF_PAR_BEGIN(lo, hi, BLK, N >= PAR_MIN_STEP)                                                       \
    switch (skind) {                                                                                 \
    case 0: { LIF_BWD_BODY(0, TY, LOAD, STORE) break; }                                              \
    case 1: { LIF_BWD_BODY(1, TY, LOAD, STORE) break; }                                              \
    case 2: { LIF_BWD_BODY(2, TY, LOAD, STORE) break; }                                              \
    default: { LIF_BWD_BODY(3, TY, LOAD, STORE) break; }                                             \
    }                                                                                                \
    SF_PAR_END                                                                                       \
}                                                                                                    \
void ternary_forward_##SUF(const TY *__restrict x, TY *__restrict o, TY *__restrict us, int64_t T, int64_t N, int64_t lo, int64_t hi,  \
                           float decay, float vth) {                                                 \
    SF_PAR_BEGIN(lo, hi, BLK, N >= PAR_MIN_STEP)                                                       \
    float u[BLK], ob[BLK];                                                                           \
    for (int64_t b = lo; b < hi; b += BLK) {                                                         \
        int64_t n = hi - b < BLK ? hi - b : BLK;                                                     \
        for (int64_t i = 0; i < n; i++) { u[i] = 0.0f; ob[i] = 0.0f; }                               \
        for (int64_t t = 0; t < T; t++) {                                                            \
            const TY *xt = x + t * N + b; TY *ot = o + t * N + b;                                    \
            for (int64_t i = 0; i < n; i++) {                                                        \
                float keep = 1.0f - fabsf(ob[i]);                                                    \
                float uu = decay * u[i] * keep + LOAD(xt + i);                                       \
                float sgn = uu < 0.0f ? -1.0f : 1.0f;                                                \
                float out = (sgn * uu - vth >= 0.0f) ? sgn : 0.0f;                                   \
                STORE(ot + i, out);                                                                  \
                u[i] = uu; ob[i] = out;                                                              \
            }                                                                                        \
            if (us)                                                                                  \
                for (int64_t i = 0; i < n; i++)                                                      \
                    SUF##_store_mag_side(us + t * N + b + i, u[i], vth, ob[i] != 0.0f);              \
        }                                                                                            \
    }                                                                                                \
    SF_PAR_END                                                                                       \
}                                                                                                    \
void ternary_backward_##SUF(const TY *__restrict go, const TY *__restrict us, TY *__restrict gx, int64_t T, int64_t N, int64_t lo,     \
                            int64_t hi, int detach, float decay, float vth, int skind, float alpha) { \
    SF_PAR_BEGIN(lo, hi, BLK, N >= PAR_MIN_STEP)                                                       \
    switch (skind) {                                                                                 \
    case 0: { TERN_BWD_BODY(0, TY, LOAD, STORE) break; }                                             \
    case 1: { TERN_BWD_BODY(1, TY, LOAD, STORE) break; }                                             \
    case 2: { TERN_BWD_BODY(2, TY, LOAD, STORE) break; }                                             \
    default: { TERN_BWD_BODY(3, TY, LOAD, STORE) break; }                                            \
    }                                                                                                \
    SF_PAR_END                                                                                       \
}

DEFINE_KERNELS(f32, float, f32_load, f32_store)
DEFINE_KERNELS(bf16, uint16_t, bf16_load, bf16_store)

int spikeformers_kernels_version(void) { return 2; }
int spikeformers_openmp_threads(void) { return sf_openmp_threads(); }  /* 0: built without OpenMP */
