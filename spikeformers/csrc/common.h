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
/* value forms, for kernels generated per type suffix (SUF = f32 | bf16) */
#define LOAD_f32(v) (v)
#define LOAD_bf16(v) bf2f(v)
#define STORE_f32(v) (v)
#define STORE_bf16(v) f2bf(v)

#endif
