/*
 * model/kernels_neondot.c — int8 GEMM/GEMV for ARMv8.2 NEON with the
 * dot-product extension (sdot). Compiled with -march=armv8.2-a+dotprod
 * (model/module.mk); called only when getauxval(AT_HWCAP) has ASIMDDP.
 *
 * A packed block (16 rows x 4 bytes) is four q-registers of 4 rows x 4
 * bytes; sdot against the 4 activation bytes repeated in every lane adds
 * each row's 4 products into its int32 lane. Activations are unbiased
 * (xor 0x80) as they are broadcast.
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

/* One panel (16 rows) for one token: out [16]. */
static void panel(float *out, const uint8_t *x, const float *xs,
                  const fl_q8_matrix_t *w, int p)
{
    const int gs4 = w->gs / 4, G = w->k / w->gs;
    const int8_t *wp = w->w + (size_t)p * (size_t)(w->k / 4) * 64;
    float32x4_t f0 = vdupq_n_f32(0), f1 = f0, f2 = f0, f3 = f0;
    for (int g = 0; g < G; g++) {
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        const uint8_t *xg = x + (size_t)g * w->gs;
        const int8_t *wg = wp + (size_t)g * gs4 * 64;
        for (int kb = 0; kb < gs4; kb++) {
            int8x16_t xb = bcast4(xg + kb * 4);
            const int8_t *wk = wg + (size_t)kb * 64;
            a0 = vdotq_s32(a0, vld1q_s8(wk), xb);
            a1 = vdotq_s32(a1, vld1q_s8(wk + 16), xb);
            a2 = vdotq_s32(a2, vld1q_s8(wk + 32), xb);
            a3 = vdotq_s32(a3, vld1q_s8(wk + 48), xb);
        }
        const float *sp = w->scale + ((size_t)p * G + g) * 16;
        float sx = xs[g];
        f0 = vfmaq_f32(f0, vcvtq_f32_s32(a0), vmulq_n_f32(vld1q_f32(sp), sx));
        f1 = vfmaq_f32(f1, vcvtq_f32_s32(a1),
                       vmulq_n_f32(vld1q_f32(sp + 4), sx));
        f2 = vfmaq_f32(f2, vcvtq_f32_s32(a2),
                       vmulq_n_f32(vld1q_f32(sp + 8), sx));
        f3 = vfmaq_f32(f3, vcvtq_f32_s32(a3),
                       vmulq_n_f32(vld1q_f32(sp + 12), sx));
    }
    vst1q_f32(out, f0);
    vst1q_f32(out + 4, f1);
    vst1q_f32(out + 8, f2);
    vst1q_f32(out + 12, f3);
}

static void neondot_gemm(float *y, const uint8_t *xq, const float *xs, int m,
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

static void neondot_gemv(float *y, const uint8_t *xq, const float *xs,
                         const fl_q8_matrix_t *w)
{
    neondot_gemm(y, xq, xs, 1, w);
}

const fl_q8_kernels_t fl_q8_kernels_neondot_ = {
    "neondot", neondot_gemm, neondot_gemv, fl_q8_quantize_act_neon_};

#endif /* __aarch64__ */
