/* bfloat16 <-> float32 and typed load / store, shared by the C kernels of spikeformers. */
#ifndef SPIKEFORMERS_COMMON_H
#define SPIKEFORMERS_COMMON_H
#include <stdint.h>
#include <string.h>

static inline float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static inline float f32_load(const float *p) { return *p; }
static inline void f32_store(float *p, float v) { *p = v; }
static inline float bf16_load(const uint16_t *p) { return bf2f(*p); }
static inline void bf16_store(uint16_t *p, float v) { *p = f2bf(v); }
/* A membrane potential saved for a backward that tests it against the threshold (the LIF's reset
 * mask H < vth, the ternary neuron's |U| >= vth) must stay on the side the forward decided in
 * float32. Rounding to bfloat16 can move it onto the other side (0.998 rounds to 1.0), so the
 * stored value is moved one bfloat16 step back where that happens: `fired` is the forward's
 * decision. One step suffices (h lies within half a step of its rounded value); for vth > 0 the
 * rounded value is then positive and one step is +-1 on its bits. Written as integer selects so
 * that the loops stay vectorised (a branchy version made the ternary forward 20x slower). */
static inline uint16_t f2bf_side(float h, float vth, int fired) {
    uint32_t b = f2bf(h);
    int32_t up = fired ? 1 : -1, wrong = (bf2f((uint16_t)b) >= vth) ^ (fired != 0);
    return (uint16_t)(b + (uint32_t)(up & -wrong));
}
static inline void f32_store_side(float *p, float v, float vth, int fired) { (void)vth; (void)fired; *p = v; }
static inline void bf16_store_side(uint16_t *p, float v, float vth, int fired) { *p = f2bf_side(v, vth, fired); }
/* the same for the ternary neuron, on the magnitude (rounding is symmetric: the sign bit stays) */
static inline void f32_store_mag_side(float *p, float v, float vth, int fired) { (void)vth; (void)fired; *p = v; }
static inline void bf16_store_mag_side(uint16_t *p, float v, float vth, int fired) {
    uint32_t b = f2bf(v), m = b & 0x7fffu;
    int32_t up = fired ? 1 : -1, wrong = (bf2f((uint16_t)m) >= vth) ^ (fired != 0);
    *p = (uint16_t)((b & 0x8000u) | (m + (uint32_t)(up & -wrong)));
}
/* value forms, for kernels generated per type suffix (SUF = f32 | bf16) */
#define LOAD_f32(v) (v)
#define LOAD_bf16(v) bf2f(v)
#define STORE_f32(v) (v)
#define STORE_bf16(v) f2bf(v)
#define STORE_SIDE_f32(v, vth, f) (v)
#define STORE_SIDE_bf16(v, vth, f) f2bf_side(v, vth, f)

#endif
