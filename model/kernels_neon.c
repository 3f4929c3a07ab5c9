/*
 * model/kernels_neon.c — int8 GEMM/GEMV for baseline ARMv8 NEON (no
 * dot-product extension, e.g. Cortex-A53/A72).
 *
 * vmull_s8 multiplies 8 byte pairs into int16 (|w x| <= 127 * 127, no
 * overflow), vpadalq_s16 adds neighbouring pairs into int32 accumulators;
 * at the end of a group vpaddq_s32 folds the two halves of each row's 4
 * products: lo holds rows (0, 1), hi rows (2, 3) of a 4-row block.
 */
#if defined(__aarch64__)

#include "model/kernels_isa.h"

#include <arm_neon.h>
#include <string.h>

static inline int8x16_t bcast4(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return veorq_s8(vreinterpretq_s8_u32(vdupq_n_u32(v)), vdupq_n_s8(-128));
}

#define MAC(v)                                                                 \
    do {                                                                       \
        int8x16_t wv = vld1q_s8(wk + 16 * (v));                                \
        lo##v =                                                                \
            vpadalq_s16(lo##v, vmull_s8(vget_low_s8(wv), vget_low_s8(xb)));    \
        hi##v = vpadalq_s16(hi##v, vmull_high_s8(wv, xb));                     \
    } while (0)

#define FOLD(v)                                                                \
    f##v = vfmaq_f32(f##v, vcvtq_f32_s32(vpaddq_s32(lo##v, hi##v)),            \
                     vmulq_n_f32(vld1q_f32(sp + 4 * (v)), sx))

static void panel(float *out, const uint8_t *x, const float *xs,
                  const fl_q8_matrix_t *w, int p)
{
    const int gs4 = w->gs / 4, G = w->k / w->gs;
    const int8_t *wp = w->w + (size_t)p * (size_t)(w->k / 4) * 64;
    float32x4_t f0 = vdupq_n_f32(0), f1 = f0, f2 = f0, f3 = f0;
    for (int g = 0; g < G; g++) {
        int32x4_t lo0 = vdupq_n_s32(0), lo1 = lo0, lo2 = lo0, lo3 = lo0;
        int32x4_t hi0 = lo0, hi1 = lo0, hi2 = lo0, hi3 = lo0;
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            int8x16_t xb = bcast4(xg + kb * 4);
            const int8_t *wk = wg + (size_t)kb * 64;
            MAC(0);
            MAC(1);
            MAC(2);
            MAC(3);
        }
        const float *sp = w->scale + ((size_t)p * G + g) * 16;
        float sx = xs[g];
        FOLD(0);
        FOLD(1);
        FOLD(2);
        FOLD(3);
    }
    vst1q_f32(out, f0);
    vst1q_f32(out + 4, f1);
    vst1q_f32(out + 8, f2);
    vst1q_f32(out + 12, f3);
}

static void neon_gemm(float *y, const uint8_t *xq, const float *xs, int m,
                      const fl_q8_matrix_t *w)
{
    const int G = w->k / w->gs;
    float out[16];
    for (int p = 0; p < w->npanels; p++) {
        int j0 = p * 16, nv = w->n - j0 < 16 ? w->n - j0 : 16;
        for (int i = 0; i < m; i++) {
            panel(out, xq + (size_t)i * w->k, xs + (size_t)i * G, w, p);
            memcpy(y + (size_t)i * w->n + j0, out, (size_t)nv * sizeof(float));
        }
    }
}

static void neon_gemv(float *y, const uint8_t *xq, const float *xs,
                      const fl_q8_matrix_t *w)
{
    neon_gemm(y, xq, xs, 1, w);
}

/* The activation quantizer for both NEON sets: the portable arithmetic,
 * 4 lanes at a time (vcvtnq rounds to nearest-even, as nearbyintf). */
void fl_q8_quantize_act_neon_(uint8_t *xq, float *xs, const float *x, int m,
                              int k, int gs)
{
    const int G = k / gs;
    for (int r = 0; r < m; r++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)r * k + (size_t)g * gs;
            uint8_t *qg = xq + (size_t)r * k + (size_t)g * gs;
            float32x4_t vmax = vdupq_n_f32(0.0f);
            for (int t = 0; t < gs; t += 4)
                vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(xg + t)));
            float amax = vmaxvq_f32(vmax);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xs[(size_t)r * G + g] = amax / 127.0f;
            for (int t = 0; t < gs; t += 4) {
                int32x4_t v =
                    vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + t), inv));
                v = vminq_s32(vmaxq_s32(v, vdupq_n_s32(-127)),
                              vdupq_n_s32(127));
                v = vaddq_s32(v, vdupq_n_s32(FL_Q8_ACT_BIAS));
                uint16x4_t h = vqmovun_s32(v);
                uint8x8_t b = vqmovn_u16(vcombine_u16(h, h));
                uint32_t four = vget_lane_u32(vreinterpret_u32_u8(b), 0);
                memcpy(qg + t, &four, 4);
            }
        }
    }
}

const fl_q8_kernels_t fl_q8_kernels_neon_ = {"neon", neon_gemm, neon_gemv,
                                             fl_q8_quantize_act_neon_};

#endif /* __aarch64__ */
