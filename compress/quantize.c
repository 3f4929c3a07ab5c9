/* compress/quantize.c — unbiased stochastic rounding onto the b-bit grid,
 * and the ring Z_(2^r): lift, centered lift, modular sums.
 *
 * Randomness: value 2j uses bits 8..31 and value 2j+1 bits 40..63 of the
 * j-th fl_rng_next step, as a 24-bit uniform u in [0, 1). A value y on the
 * grid between f and f + 1 rounds up when u < y - f: the probability is
 * (y - f) to within 2^-24, so E[q] = y to within 2^-24 of a step. */
#include "compress/compress.h"

#include <math.h>
#include <string.h>

#define U24 (1.0f / 16777216.0f)

static inline uint32_t u24(uint64_t w, size_t i)
{
    return (uint32_t)(w >> ((i & 1) ? 40 : 8)) & 0xffffffu;
}

void fl_compress_quantize_ref(int32_t *q, const float *x, size_t m, float scale,
                              unsigned b, fl_rng_t *rng)
{
    const float qmax = (float)fl_compress_qmax(b);
    uint64_t w = 0;
    for (size_t i = 0; i < m; i++) {
        if ((i & 1) == 0)
            w = fl_rng_next(rng);
        float u = (float)u24(w, i) * U24;
        float y = x[i] * scale;
        y = fminf(fmaxf(y, -qmax), qmax); /* clamp: the grid's edges */
        if (b == 1) {
            /* Sign grid {-1, +1}: P(+1) = (1 + y) / 2. */
            q[i] = u < (1.0f + y) * 0.5f ? 1 : -1;
        } else {
            float f = floorf(y);
            q[i] = (int32_t)f + (u < y - f ? 1 : 0);
        }
    }
}

/* The same arithmetic as the reference, in blocks: first the random words
 * (a tight scalar xoshiro256** loop on a local copy of the state, the same
 * generator as fl_rng_next), then a branch-free loop the compiler
 * vectorizes. floor is computed by truncation and a correction so it needs
 * no SSE4.1; |y| <= qmax < 2^15 keeps the int conversion exact. */
#define QBLOCK 512

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void fl_compress_quantize(int32_t *q, const float *x, size_t m, float scale,
                          unsigned b, fl_rng_t *rng)
{
    const float qmax = (float)fl_compress_qmax(b);
    uint64_t s0 = rng->s[0], s1 = rng->s[1], s2 = rng->s[2], s3 = rng->s[3];
    uint32_t ub[QBLOCK];
    for (size_t base = 0; base < m; base += QBLOCK) {
        size_t n = FL_MIN((size_t)QBLOCK, m - base);
        for (size_t j = 0; j < n; j += 2) {
            uint64_t r = rotl64(s1 * 5, 7) * 9;
            uint64_t t = s1 << 17;
            s2 ^= s0;
            s3 ^= s1;
            s1 ^= s2;
            s0 ^= s3;
            s2 ^= t;
            s3 = rotl64(s3, 45);
            ub[j] = (uint32_t)(r >> 8) & 0xffffffu;
            ub[j + 1] = (uint32_t)(r >> 40) & 0xffffffu;
        }
        const float *xb = x + base;
        int32_t *qb = q + base;
        if (b == 1) {
            for (size_t j = 0; j < n; j++) {
                float y = xb[j] * scale;
                y = y > -qmax ? y : -qmax; /* NaN -> -qmax, as fmaxf */
                y = y < qmax ? y : qmax;
                float u = (float)(int32_t)ub[j] * U24;
                qb[j] = u < (1.0f + y) * 0.5f ? 1 : -1;
            }
        } else {
            for (size_t j = 0; j < n; j++) {
                float y = xb[j] * scale;
                y = y > -qmax ? y : -qmax; /* NaN -> -qmax, as fmaxf */
                y = y < qmax ? y : qmax;
                int32_t t = (int32_t)y;
                float ft = (float)t;
                int32_t below = ft > y; /* negative non-integers */
                float f = ft - (float)below;
                float u = (float)(int32_t)ub[j] * U24;
                qb[j] = t - below + (u < y - f);
            }
        }
    }
    rng->s[0] = s0;
    rng->s[1] = s1;
    rng->s[2] = s2;
    rng->s[3] = s3;
}

void fl_compress_dequantize(float *x, const int32_t *q, size_t m, float scale)
{
    const float inv = 1.0f / scale;
    for (size_t i = 0; i < m; i++)
        x[i] = (float)q[i] * inv;
}

static inline uint32_t ring_mask(unsigned r)
{
    FL_ASSERT(r >= 1 && r <= 32);
    return r == 32 ? 0xffffffffu : (1u << r) - 1;
}

void fl_compress_lift(uint32_t *ring, const int32_t *q, size_t m, unsigned r)
{
    const uint32_t mask = ring_mask(r);
    for (size_t i = 0; i < m; i++)
        ring[i] = (uint32_t)q[i] & mask; /* modular conversion: defined */
}

void fl_compress_unlift(int32_t *q, const uint32_t *ring, size_t m, unsigned r)
{
    const uint32_t mask = ring_mask(r);
    const int64_t half = (int64_t)1 << (r - 1), full = (int64_t)1 << r;
    for (size_t i = 0; i < m; i++) {
        int64_t v = (int64_t)(ring[i] & mask);
        v -= v >= half ? full : 0;
        q[i] = (int32_t)v;
    }
}

void fl_compress_ring_add(uint32_t *acc, const uint32_t *x, size_t m,
                          unsigned r)
{
    const uint32_t mask = ring_mask(r);
    for (size_t i = 0; i < m; i++)
        acc[i] = (acc[i] + x[i]) & mask; /* unsigned wrap-around */
}
