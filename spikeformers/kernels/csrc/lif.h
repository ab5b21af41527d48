/* LIF / IF arithmetic shared by the neuron kernels (neurons.c) and the fused BatchNorm + LIF
 * kernels (batchnorm.c): charge, reset and surrogate-derivative expressions. They use the names
 * tau, c, r, vth and alpha of the enclosing function. */
#ifndef SPIKEFORMERS_LIF_H
#define SPIKEFORMERS_LIF_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* charge kinds */
#define CH_DECAY 0        /* h = v + (x - v) / tau                       */
#define CH_DECAY_R 1      /* h = v + (x - (v - r)) / tau                 */
#define CH_NODECAY 2      /* h = v * c + x,  c = float(1 - 1/tau)         */
#define CH_NODECAY_R 3    /* h = v - (v - r) / tau + x                   */
#define CH_IF 4           /* h = v + x                                   */
/* reset kinds */
#define RS_SOFT 0         /* v = h - s * vth      */
#define RS_ZERO 1         /* v = h * (1 - s)      */
#define RS_VALUE 2        /* v = (1 - s) * h + s * r */
/* surrogates */
#define SG_SIGMOID 0
#define SG_ATAN 1
#define SG_STRAIGHT 2
#define SG_TRIANGLE 3


/* Inner loops are specialised per (charge, reset) and per surrogate so that the compiler can
 * vectorise them; the reset is written as a select on the 0/1 spike, which gives the same value
 * as the loop's product form (h * (1 - s) etc.) for s in {0, 1}. */
#define CHARGE_0(v, x) ((v) + ((x) - ((v) - r)) / tau)     /* decay_input (r = 0 gives v - 0 = v) */
#define CHARGE_2(v, x) ((v) * c + (x))                      /* no decay_input, v_reset 0          */
#define CHARGE_3(v, x) ((v) - ((v) - r) / tau + (x))        /* no decay_input, v_reset r          */
#define CHARGE_4(v, x) ((v) + (x))                          /* IF                                  */
#define RESET_0(h) ((h) - vth)                              /* soft                               */
#define RESET_1(h) ((h) * 0.0f)                             /* hard to 0: h * (1 - 1)             */
#define RESET_2(h) (0.0f * (h) + r)                         /* hard to r: (1 - 1) * h + 1 * r     */

/* exp for the backward's sigmoid: Cephes' expf polynomial (rel. error ~2e-7), written without
 * calls or branches so that the compiler vectorises the loops around it. */
static inline float exp_approx(float x) {
    x = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale; memcpy(&scale, &e, 4);
    return p * scale;
}
#define SG_0(z) ({ float _s = 1.0f / (1.0f + exp_approx(-alpha * (z))); alpha * _s * (1.0f - _s); })
#define SG_1(z) ({ float _q = 1.5707963267948966f * alpha * (z); (alpha / 2.0f) / (1.0f + _q * _q); })
#define SG_2(z) (fabsf(z) <= alpha ? 1.0f : 0.0f)
#define SG_3(z) ({ float _g = 1.0f - fabsf(z) / alpha; _g > 0.0f ? _g / alpha : 0.0f; })

#endif
