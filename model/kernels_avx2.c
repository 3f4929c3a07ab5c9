/*
 * model/kernels_avx2.c — int8 GEMM/GEMV with AVX2 (no VNNI).
 * Compiled with -mavx2 -mfma (model/module.mk); called only when cpuid
 * says the CPU has them.
 *
 * vpmaddubsw multiplies unsigned by signed bytes and adds pairs into
 * saturating int16. With |w| as the unsigned operand and x * sign(w) as the
 * signed one, a pair is at most 2 * 127 * 127 = 32258 and never saturates;
 * vpmaddwd by ones then sums the pairs into int32, exactly. A packed block
 * (16 rows x 4 bytes) is two ymm; the GEMM tile is 4 tokens x 1 panel.
 */
#if defined(__x86_64__)

#include "model/kernels_isa.h"
#include "common/common.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define MR 4

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* The 4 biased activation bytes at p, unbiased, in every int32 lane. */
static ALWAYS_INLINE __m256i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_xor_si256(_mm256_set1_epi32(v), _mm256_set1_epi8(-128));
}

static ALWAYS_INLINE __m256i dot4(__m256i acc, __m256i absw, __m256i w,
                                  __m256i x, __m256i ones)
{
    __m256i p16 = _mm256_maddubs_epi16(absw, _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
}

static ALWAYS_INLINE void store_panel(float *y, int j0, int n, __m256 lo,
                                      __m256 hi)
{
    if (n - j0 >= 16) {
        _mm256_storeu_ps(y + j0, lo);
        _mm256_storeu_ps(y + j0 + 8, hi);
    } else {
        float tmp[16];
        _mm256_storeu_ps(tmp, lo);
        _mm256_storeu_ps(tmp + 8, hi);
        memcpy(y + j0, tmp, (size_t)(n - j0) * sizeof(float));
    }
}

static ALWAYS_INLINE void tile(float *y, const uint8_t *x, const float *xs,
                               const fl_q8_matrix_t *w, int p, const int mr)
{
    const int k = w->k, gs4 = w->gs / 4, G = w->k / w->gs;
    const int8_t *wp = w->w + (size_t)p * (size_t)(k / 4) * 64;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 flo[MR], fhi[MR];
#pragma GCC unroll 4
    for (int t = 0; t < mr; t++)
        flo[t] = fhi[t] = _mm256_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m256i alo[MR], ahi[MR];
#pragma GCC unroll 4
        for (int t = 0; t < mr; t++)
            alo[t] = ahi[t] = _mm256_setzero_si256();
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            __m256i wlo = _mm256_load_si256((const __m256i *)(wg + kb * 64));
            __m256i whi =
                _mm256_load_si256((const __m256i *)(wg + kb * 64 + 32));
            __m256i awlo = _mm256_abs_epi8(wlo), awhi = _mm256_abs_epi8(whi);
#pragma GCC unroll 4
            for (int t = 0; t < mr; t++) {
                __m256i xb = bcast4(xg + (size_t)t * k + (size_t)kb * 4);
                alo[t] = dot4(alo[t], awlo, wlo, xb, ones);
                ahi[t] = dot4(ahi[t], awhi, whi, xb, ones);
            }
        }
        const float *sp = w->scale + ((size_t)p * G + g) * 16;
        __m256 slo = _mm256_load_ps(sp), shi = _mm256_load_ps(sp + 8);
#pragma GCC unroll 4
        for (int t = 0; t < mr; t++) {
            __m256 sx = _mm256_set1_ps(xs[t * G + g]);
            flo[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(alo[t]),
                                     _mm256_mul_ps(slo, sx), flo[t]);
            fhi[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ahi[t]),
                                     _mm256_mul_ps(shi, sx), fhi[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < mr; t++)
        store_panel(y + (size_t)t * w->n, p * 16, w->n, flo[t], fhi[t]);
}

#define TILE(mr_)                                                              \
    static void tile_##mr_(float *y, const uint8_t *x, const float *xs,        \
                           const fl_q8_matrix_t *w, int p)                     \
    {                                                                          \
        tile(y, x, xs, w, p, mr_);                                             \
    }
TILE(1)
TILE(2)
TILE(3)
TILE(4)

typedef void (*tile_fn)(float *, const uint8_t *, const float *,
                        const fl_q8_matrix_t *, int);
static const tile_fn tiles[MR] = {tile_1, tile_2, tile_3, tile_4};

static void avx2_gemm(float *y, const uint8_t *xq, const float *xs, int m,
                      const fl_q8_matrix_t *w)
{
    const int G = w->k / w->gs;
    for (int p = 0; p < w->npanels; p++) {
        for (int i = 0; i < m; i += MR) {
            int mr = FL_MIN(MR, m - i);
            tiles[mr - 1](y + (size_t)i * w->n, xq + (size_t)i * w->k,
                          xs + (size_t)i * G, w, p);
        }
    }
}

static void avx2_gemv(float *y, const uint8_t *xq, const float *xs,
                      const fl_q8_matrix_t *w)
{
    for (int p = 0; p < w->npanels; p++)
        tile_1(y, xq, xs, w, p);
}

/* Same arithmetic as the portable quantizer, 8 lanes at a time: amax,
 * inv = 127 / amax in float, x * inv rounded to nearest-even (the MXCSR
 * default, as nearbyintf), clamped; a tail of 4 goes through the scalar
 * code with the same inv. */
static void avx2_quantize_act(uint8_t *xq, float *xs, const float *x, int m,
                              int k, int gs)
{
    const int G = k / gs;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i bias = _mm256_set1_epi32(FL_Q8_ACT_BIAS);
    for (int r = 0; r < m; r++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)r * k + (size_t)g * gs;
            uint8_t *qg = xq + (size_t)r * k + (size_t)g * gs;
            __m256 vmax = _mm256_setzero_ps();
            int t = 0;
            for (; t + 8 <= gs; t += 8)
                vmax = _mm256_max_ps(
                    vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xg + t)));
            float lanes[8];
            _mm256_storeu_ps(lanes, vmax);
            float amax = 0.0f;
            for (int i = 0; i < 8; i++)
                amax = fmaxf(amax, lanes[i]);
            for (; t < gs; t++)
                amax = fmaxf(amax, fabsf(xg[t]));
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xs[(size_t)r * G + g] = amax / 127.0f;
            __m256 vi = _mm256_set1_ps(inv);
            for (t = 0; t + 8 <= gs; t += 8) {
                __m256i v = _mm256_cvtps_epi32(
                    _mm256_mul_ps(_mm256_loadu_ps(xg + t), vi));
                v = _mm256_add_epi32(
                    _mm256_min_epi32(_mm256_max_epi32(v, lo), hi), bias);
                __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v),
                                              _mm256_extracti128_si256(v, 1));
                _mm_storel_epi64((__m128i *)(qg + t),
                                 _mm_packus_epi16(p16, p16));
            }
            for (; t < gs; t++) {
                float v = nearbyintf(xg[t] * inv);
                v = fminf(127.0f, fmaxf(-127.0f, v));
                qg[t] = (uint8_t)((int)v + FL_Q8_ACT_BIAS);
            }
        }
    }
}

const fl_q8_kernels_t fl_q8_kernels_avx2_ = {"avx2", avx2_gemm, avx2_gemv,
                                             avx2_quantize_act};

#endif /* __x86_64__ */
