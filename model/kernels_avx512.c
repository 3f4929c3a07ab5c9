/*
 * model/kernels_avx512.c — int8 GEMM/GEMV with AVX-512 VNNI (vpdpbusd).
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma
 * (model/module.mk); called only when cpuid says the CPU has them.
 *
 * vpdpbusd multiplies 4 unsigned bytes (the biased activations, broadcast)
 * by 4 signed bytes (one packed weight block row) and adds the 4 products
 * into an int32 lane: one instruction = 64 multiply-accumulates. The int32
 * accumulators of a group start at the precomputed -128 * sum(w), which
 * removes the activation bias exactly.
 *
 * GEMM: a register tile of 4 tokens x 3 panels (48 output rows): 12 int32
 * accumulators for the current group, 12 fp32 accumulators across groups,
 * 3 weight loads and 4 broadcasts per 12 vpdpbusd. The panel block is the
 * outer loop so its weights stay in L1/L2 while every token passes by.
 * GEMV: 8 panels at a time (8 independent dependency chains over one
 * broadcast activation), streaming the weights once.
 */
#if defined(__x86_64__)

#include "model/kernels_isa.h"
#include "common/common.h"

#include <immintrin.h>
#include <string.h>

#define MR 4 /* tokens per GEMM tile */
#define NP 3 /* panels per GEMM tile */
#define VP 8 /* panels per GEMV step */

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE __m512i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* acc += x (u8) . w (s8) by lanes of 4 bytes. Written as inline asm with a
 * tied accumulator: with the intrinsic, GCC 12 copies every accumulator
 * once per iteration, which costs a fifth of the GEMM's throughput. */
static ALWAYS_INLINE void dpbusd(__m512i *acc, __m512i x, __m512i w)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(x), "v"(w));
}

/* Stores 16 floats of row segment j0.. of y, only the n - j0 valid ones. */
static ALWAYS_INLINE void store_rows(float *y, int j0, int n, __m512 v)
{
    int nv = n - j0;
    if (nv >= 16)
        _mm512_storeu_ps(y + j0, v);
    else
        _mm512_mask_storeu_ps(y + j0, (__mmask16)((1u << nv) - 1), v);
}

static ALWAYS_INLINE void gemm_tile(float *y, const uint8_t *x, const float *xs,
                                    const fl_q8_matrix_t *w, int p0,
                                    const int mr, const int np)
{
    const int k = w->k, gs4 = w->gs / 4, G = w->k / w->gs, n = w->n;
    const size_t pstride = (size_t)(k / 4) * 64;
    const int8_t *wp = w->w + (size_t)p0 * pstride;
    __m512 facc[MR][NP];
#pragma GCC unroll 4
    for (int t = 0; t < mr; t++)
#pragma GCC unroll 3
        for (int p = 0; p < np; p++)
            facc[t][p] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m512i acc[MR][NP];
        const size_t gi = ((size_t)p0 * G + g) * 16;
#pragma GCC unroll 3
        for (int p = 0; p < np; p++) {
            __m512i b = _mm512_load_si512(w->bias + gi + (size_t)p * G * 16);
#pragma GCC unroll 4
            for (int t = 0; t < mr; t++)
                acc[t][p] = b;
        }
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            __m512i wv[NP];
#pragma GCC unroll 3
            for (int p = 0; p < np; p++)
                wv[p] = _mm512_load_si512(wg + p * pstride + (size_t)kb * 64);
#pragma GCC unroll 4
            for (int t = 0; t < mr; t++) {
                __m512i xb = bcast4(xg + (size_t)t * k + (size_t)kb * 4);
#pragma GCC unroll 3
                for (int p = 0; p < np; p++)
                    dpbusd(&acc[t][p], xb, wv[p]);
            }
        }
#pragma GCC unroll 3
        for (int p = 0; p < np; p++) {
            __m512 ws = _mm512_load_ps(w->scale + gi + (size_t)p * G * 16);
#pragma GCC unroll 4
            for (int t = 0; t < mr; t++) {
                __m512 sc = _mm512_mul_ps(ws, _mm512_set1_ps(xs[t * G + g]));
                facc[t][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][p]), sc,
                                             facc[t][p]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < mr; t++)
#pragma GCC unroll 3
        for (int p = 0; p < np; p++)
            store_rows(y + (size_t)t * n, (p0 + p) * 16, n, facc[t][p]);
}

/* The full 4 x 3 tile with named accumulators: GCC keeps them in
 * registers without the copies it inserts for arrays of vectors. */
#define DOT3(t, xb)                                                            \
    do {                                                                       \
        dpbusd(&a##t##0, xb, w0);                                              \
        dpbusd(&a##t##1, xb, w1);                                              \
        dpbusd(&a##t##2, xb, w2);                                              \
    } while (0)
#define FOLD3(t)                                                               \
    do {                                                                       \
        __m512 sx = _mm512_set1_ps(xs[t * G + g]);                             \
        f##t##0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##t##0),                 \
                                  _mm512_mul_ps(s0, sx), f##t##0);             \
        f##t##1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##t##1),                 \
                                  _mm512_mul_ps(s1, sx), f##t##1);             \
        f##t##2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##t##2),                 \
                                  _mm512_mul_ps(s2, sx), f##t##2);             \
    } while (0)
#define STORE3(t)                                                              \
    do {                                                                       \
        store_rows(y + (size_t)t * n, p0 * 16, n, f##t##0);                    \
        store_rows(y + (size_t)t * n, p0 * 16 + 16, n, f##t##1);               \
        store_rows(y + (size_t)t * n, p0 * 16 + 32, n, f##t##2);               \
    } while (0)

static void tile_4_3(float *y, const uint8_t *x, const float *xs,
                     const fl_q8_matrix_t *w, int p0)
{
    const int k = w->k, gs4 = w->gs / 4, G = w->k / w->gs, n = w->n;
    const size_t pstride = (size_t)(k / 4) * 64;
    const int8_t *wp = w->w + (size_t)p0 * pstride;
    __m512 f00 = _mm512_setzero_ps(), f01 = f00, f02 = f00, f10 = f00,
           f11 = f00, f12 = f00, f20 = f00, f21 = f00, f22 = f00, f30 = f00,
           f31 = f00, f32 = f00;
    for (int g = 0; g < G; g++) {
        const size_t gi = ((size_t)p0 * G + g) * 16, gp = (size_t)G * 16;
        __m512i b0 = _mm512_load_si512(w->bias + gi);
        __m512i b1 = _mm512_load_si512(w->bias + gi + gp);
        __m512i b2 = _mm512_load_si512(w->bias + gi + 2 * gp);
        __m512i a00 = b0, a01 = b1, a02 = b2, a10 = b0, a11 = b1, a12 = b2,
                a20 = b0, a21 = b1, a22 = b2, a30 = b0, a31 = b1, a32 = b2;
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            const int8_t *wk = wg + (size_t)kb * 64;
            __m512i w0 = _mm512_load_si512(wk);
            __m512i w1 = _mm512_load_si512(wk + pstride);
            __m512i w2 = _mm512_load_si512(wk + 2 * pstride);
            const uint8_t *xk = xg + (size_t)kb * 4;
            __m512i x0 = bcast4(xk);
            DOT3(0, x0);
            __m512i x1 = bcast4(xk + k);
            DOT3(1, x1);
            __m512i x2 = bcast4(xk + 2 * (size_t)k);
            DOT3(2, x2);
            __m512i x3 = bcast4(xk + 3 * (size_t)k);
            DOT3(3, x3);
        }
        __m512 s0 = _mm512_load_ps(w->scale + gi);
        __m512 s1 = _mm512_load_ps(w->scale + gi + gp);
        __m512 s2 = _mm512_load_ps(w->scale + gi + 2 * gp);
        FOLD3(0);
        FOLD3(1);
        FOLD3(2);
        FOLD3(3);
    }
    STORE3(0);
    STORE3(1);
    STORE3(2);
    STORE3(3);
}

#define TILE(mr_, np_)                                                         \
    static void tile_##mr_##_##np_(float *y, const uint8_t *x,                 \
                                   const float *xs, const fl_q8_matrix_t *w,   \
                                   int p0)                                     \
    {                                                                          \
        gemm_tile(y, x, xs, w, p0, mr_, np_);                                  \
    }
TILE(1, 1)
TILE(1, 2)
TILE(1, 3)
TILE(2, 1)
TILE(2, 2)
TILE(2, 3)
TILE(3, 1)
TILE(3, 2)
TILE(3, 3)
TILE(4, 1)
TILE(4, 2)

typedef void (*tile_fn)(float *, const uint8_t *, const float *,
                        const fl_q8_matrix_t *, int);
static const tile_fn tiles[MR][NP] = {
    {tile_1_1, tile_1_2, tile_1_3},
    {tile_2_1, tile_2_2, tile_2_3},
    {tile_3_1, tile_3_2, tile_3_3},
    {tile_4_1, tile_4_2, tile_4_3},
};

static void avx512_gemm(float *y, const uint8_t *xq, const float *xs, int m,
                        const fl_q8_matrix_t *w)
{
    const int G = w->k / w->gs;
    for (int p0 = 0; p0 < w->npanels; p0 += NP) {
        int np = FL_MIN(NP, w->npanels - p0);
        int i = 0;
        for (; i + MR <= m; i += MR)
            tiles[MR - 1][np - 1](y + (size_t)i * w->n, xq + (size_t)i * w->k,
                                  xs + (size_t)i * G, w, p0);
        if (i < m)
            tiles[m - i - 1][np - 1](y + (size_t)i * w->n,
                                     xq + (size_t)i * w->k, xs + (size_t)i * G,
                                     w, p0);
    }
}

static ALWAYS_INLINE void gemv_step(float *y, const uint8_t *x, const float *xs,
                                    const fl_q8_matrix_t *w, int p0,
                                    const int np)
{
    const int gs4 = w->gs / 4, G = w->k / w->gs;
    const size_t pstride = (size_t)(w->k / 4) * 64;
    const int8_t *wp = w->w + (size_t)p0 * pstride;
    __m512 facc[VP];
#pragma GCC unroll 8
    for (int p = 0; p < np; p++)
        facc[p] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m512i acc[VP];
        const size_t gi = ((size_t)p0 * G + g) * 16;
#pragma GCC unroll 8
        for (int p = 0; p < np; p++)
            acc[p] = _mm512_load_si512(w->bias + gi + (size_t)p * G * 16);
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            __m512i xb = bcast4(xg + (size_t)kb * 4);
#pragma GCC unroll 8
            for (int p = 0; p < np; p++)
                dpbusd(&acc[p], xb,
                       _mm512_load_si512(wg + p * pstride + (size_t)kb * 64));
        }
        __m512 sx = _mm512_set1_ps(xs[g]);
#pragma GCC unroll 8
        for (int p = 0; p < np; p++) {
            __m512 ws = _mm512_load_ps(w->scale + gi + (size_t)p * G * 16);
            facc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p]),
                                      _mm512_mul_ps(ws, sx), facc[p]);
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < np; p++)
        store_rows(y, (p0 + p) * 16, w->n, facc[p]);
}

static void gemv_full(float *y, const uint8_t *x, const float *xs,
                      const fl_q8_matrix_t *w, int p0)
{
    gemv_step(y, x, xs, w, p0, VP);
}

static void gemv_one(float *y, const uint8_t *x, const float *xs,
                     const fl_q8_matrix_t *w, int p0)
{
    gemv_step(y, x, xs, w, p0, 1);
}

static void avx512_gemv(float *y, const uint8_t *xq, const float *xs,
                        const fl_q8_matrix_t *w)
{
    int p0 = 0;
    for (; p0 + VP <= w->npanels; p0 += VP)
        gemv_full(y, xq, xs, w, p0);
    for (; p0 < w->npanels; p0++)
        gemv_one(y, xq, xs, w, p0);
}

/* Same arithmetic as the portable quantizer: amax, inv = 127 / amax in
 * float, round x * inv to nearest-even (MXCSR default), clamp. */
static void avx512_quantize_act(uint8_t *xq, float *xs, const float *x, int m,
                                int k, int gs)
{
    const int G = k / gs;
    for (int r = 0; r < m; r++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)r * k + (size_t)g * gs;
            uint8_t *qg = xq + (size_t)r * k + (size_t)g * gs;
            __m512 vmax = _mm512_setzero_ps();
            for (int t = 0; t < gs; t += 16) {
                __mmask16 mk = gs - t >= 16 ? 0xffff : (1u << (gs - t)) - 1;
                __m512 v = _mm512_maskz_loadu_ps(mk, xg + t);
                vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
            }
            float amax = _mm512_reduce_max_ps(vmax);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xs[(size_t)r * G + g] = amax / 127.0f;
            __m512 vi = _mm512_set1_ps(inv);
            __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
            __m512i bias = _mm512_set1_epi32(FL_Q8_ACT_BIAS);
            for (int t = 0; t < gs; t += 16) {
                __mmask16 mk = gs - t >= 16 ? 0xffff : (1u << (gs - t)) - 1;
                __m512 v = _mm512_maskz_loadu_ps(mk, xg + t);
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vi));
                q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                q = _mm512_add_epi32(q, bias);
                _mm_mask_storeu_epi8(qg + t, mk, _mm512_cvtepi32_epi8(q));
            }
        }
    }
}

const fl_q8_kernels_t fl_q8_kernels_avx512vnni_ = {
    "avx512vnni", avx512_gemm, avx512_gemv, avx512_quantize_act};

#endif /* __x86_64__ */
