/* Split a range [LO, HI) across the OpenMP threads, in multiples of UNIT, when COND holds.
 * Inside SF_PAR_BEGIN ... SF_PAR_END the names LO and HI are rebound to the calling thread's
 * part, so a serial function body becomes parallel by wrapping it. Built without OpenMP, the
 * body runs once on the whole range. */
#ifndef SPIKEFORMERS_PARALLEL_H
#define SPIKEFORMERS_PARALLEL_H
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#define SF_PRAGMA(x) _Pragma(#x)
#define SF_PAR_BEGIN(LO, HI, UNIT, COND)                                                      \
    {                                                                                         \
        const int64_t sf_lo = (LO), sf_hi = (HI);                                             \
        SF_PRAGMA(omp parallel if (COND))                                                     \
        {                                                                                     \
            int64_t sf_nt = omp_get_num_threads(), sf_id = omp_get_thread_num();              \
            int64_t sf_step = ((sf_hi - sf_lo + sf_nt - 1) / sf_nt + (UNIT) - 1) / (UNIT) * (UNIT); \
            int64_t sf_a = sf_lo + sf_id * sf_step, sf_b = sf_a + sf_step < sf_hi ? sf_a + sf_step : sf_hi; \
            if (sf_a < sf_b) {                                                                \
                int64_t LO = sf_a, HI = sf_b;
#define SF_PAR_END                                                                            \
            }                                                                                 \
        }                                                                                     \
    }
static inline int sf_openmp_threads(void) { return omp_get_max_threads(); }
#else
#define SF_PAR_BEGIN(LO, HI, UNIT, COND) {
#define SF_PAR_END }
static inline int sf_openmp_threads(void) { return 0; }
#endif
#define SF_PAR_MIN 32768   /* elements below which one thread does the whole call */
#endif
