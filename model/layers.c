/*
 * model/layers.c — fp32 layer kernels, forward and backward (see layers.h).
 */
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for the softmaxes and SiLU: plain float arithmetic that the
 * compiler can vectorise (libm's expf is a call per element). Range
 * reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial for
 * e^r, 2^n through the exponent bits. Relative error below 2e-7 for
 * x in [-87, 88]; inputs are clamped to that range (exp(-87) ~ 1.6e-38,
 * far below anything a softmax or a sigmoid can resolve); NaN gives
 * exp(-87), so a poisoned input never reaches an undefined conversion. */
static inline float fast_expf(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: round to nearest */
    x = x > -87.0f ? x : -87.0f;       /* also maps NaN to -87 */
    x = x < 88.0f ? x : 88.0f;
    float t = x * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = x - n * 0.693359375f; /* ln2 split in two for accuracy */
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Four lanes at a time through GCC/clang vector extensions (SSE on x86,
 * NEON on ARM: the baseline of both, so no flags and no ABI change). v_exp
 * performs fast_expf's operations in the same order, so each lane equals
 * the scalar result bit for bit. */
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

static inline f32x4 v_load(const float *p)
{
    f32x4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v_store(float *p, f32x4 v)
{
    memcpy(p, &v, sizeof v);
}

static inline f32x4 v_splat(float x)
{
    return (f32x4){x, x, x, x};
}

/* mask lanes (all ones) take a, the others b */
static inline f32x4 v_select(i32x4 mask, f32x4 a, f32x4 b)
{
    return (f32x4)(((i32x4)a & mask) | ((i32x4)b & ~mask));
}

static inline f32x4 v_exp(f32x4 x)
{
    const f32x4 shifter = v_splat(12582912.0f);
    x = v_select(x > v_splat(-87.0f), x, v_splat(-87.0f));
    x = v_select(x < v_splat(88.0f), x, v_splat(88.0f));
    f32x4 t = x * v_splat(1.44269504088896341f) + shifter;
    f32x4 n = t - shifter;
    f32x4 r = x - n * v_splat(0.693359375f);
    r = r - n * v_splat(-2.12194440e-4f);
    f32x4 p = v_splat(1.0f / 720.0f);
    p = p * r + v_splat(1.0f / 120.0f);
    p = p * r + v_splat(1.0f / 24.0f);
    p = p * r + v_splat(1.0f / 6.0f);
    p = p * r + v_splat(0.5f);
    p = p * r + v_splat(1.0f);
    p = p * r + v_splat(1.0f);
    i32x4 bits = (__builtin_convertvector(n, i32x4) + 127) << 23;
    return p * (f32x4)bits;
}

/* Softmax of row[0..len) in place; len >= 1. */
static void softmax_row(float *row, int len)
{
    float mx = row[0];
    for (int s = 1; s < len; s++)
        mx = row[s] > mx ? row[s] : mx;
    int s = 0;
    const f32x4 vmx = v_splat(mx);
    for (; s + 4 <= len; s += 4)
        v_store(row + s, v_exp(v_load(row + s) - vmx));
    for (; s < len; s++)
        row[s] = fast_expf(row[s] - mx);
    float sum = 0.0f;
    for (s = 0; s < len; s++)
        sum += row[s];
    const f32x4 inv = v_splat(1.0f / sum);
    for (s = 0; s + 4 <= len; s += 4)
        v_store(row + s, v_load(row + s) * inv);
    for (; s < len; s++)
        row[s] *= 1.0f / sum;
}

/* ---- matmul -------------------------------------------------------------- */

static void matmul_fwd_ref(float *out, const float *inp, const float *w, int N,
                           int IC, int OC, int acc)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * IC;
        for (int o = 0; o < OC; o++) {
            const float *wr = w + (size_t)o * IC;
            float s = 0.0f;
            for (int i = 0; i < IC; i++)
                s += x[i] * wr[i];
            float *y = out + (size_t)n * OC + o;
            *y = acc ? *y + s : s;
        }
    }
}

void fl_model__matmul_fwd(float *out, const float *inp, const float *w, int N,
                          int IC, int OC, int acc, int blas)
{
    if (!blas) {
        matmul_fwd_ref(out, inp, w, N, IC, OC, acc);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp,
                IC, w, IC, acc ? 1.0f : 0.0f, out, OC);
}

static void matmul_bwd_ref(float *dinp, float *dw, const float *dout,
                           const float *inp, const float *w, int N, int IC,
                           int OC, int acc)
{
    if (dinp && !acc)
        memset(dinp, 0, (size_t)N * IC * sizeof *dinp);
    if (dinp) {
        for (int n = 0; n < N; n++) {
            const float *dy = dout + (size_t)n * OC;
            float *dx = dinp + (size_t)n * IC;
            for (int o = 0; o < OC; o++) {
                const float *wr = w + (size_t)o * IC;
                for (int i = 0; i < IC; i++)
                    dx[i] += dy[o] * wr[i];
            }
        }
    }
    if (dw) {
        for (int o = 0; o < OC; o++) {
            float *dwr = dw + (size_t)o * IC;
            for (int n = 0; n < N; n++) {
                float d = dout[(size_t)n * OC + o];
                const float *x = inp + (size_t)n * IC;
                for (int i = 0; i < IC; i++)
                    dwr[i] += d * x[i];
            }
        }
    }
}

void fl_model__matmul_bwd(float *dinp, float *dw, const float *dout,
                          const float *inp, const float *w, int N, int IC,
                          int OC, int acc, int blas)
{
    if (!blas) {
        matmul_bwd_ref(dinp, dw, dout, inp, w, N, IC, OC, acc);
        return;
    }
    if (dinp) /* [N, IC] (+)= [N, OC] @ [OC, IC] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f,
                    dout, OC, w, IC, acc ? 1.0f : 0.0f, dinp, IC);
    if (dw) /* [OC, IC] += [N, OC]^T @ [N, IC] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f,
                    dout, OC, inp, IC, 1.0f, dw, IC);
}

/* ---- RMSNorm ------------------------------------------------------------- */

/* sum_i a_i b_i c_i (c may be NULL: sum a_i b_i) over n: four lanes, then
 * the lanes and the tail in a fixed order. */
static float dot3_vec(const float *a, const float *b, const float *c, int n)
{
    f32x4 acc = v_splat(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        f32x4 t = v_load(a + i) * v_load(b + i);
        acc += c ? t * v_load(c + i) : t;
    }
    float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; i < n; i++)
        s += c ? a[i] * b[i] * c[i] : a[i] * b[i];
    return s;
}

static float dot3_ref(const float *a, const float *b, const float *c, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += c ? a[i] * b[i] * c[i] : a[i] * b[i];
    return s;
}

void fl_model__rmsnorm_fwd(float *out, float *rstd, const float *inp,
                           const float *g, int N, int C, float eps, int vec)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = vec ? dot3_vec(x, x, NULL, C) : dot3_ref(x, x, NULL, C);
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
        int i = 0;
        for (const f32x4 vr = v_splat(r); vec && i + 4 <= C; i += 4)
            v_store(y + i, v_load(x + i) * vr * v_load(g + i));
        for (; i < C; i++)
            y[i] = x[i] * r * g[i];
    }
}

/* y_i = x_i r g_i, r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / C:
 * dx_j = r g_j dy_j - x_j r^3 / C * sum_i dy_i g_i x_i. */
void fl_model__rmsnorm_bwd(float *dinp, float *dg, const float *dout,
                           const float *inp, const float *g, const float *rstd,
                           int N, int C, int vec)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        float dot = vec ? dot3_vec(dy, g, x, C) : dot3_ref(dy, g, x, C);
        float c = dot * r * r * r / (float)C;
        int i = 0;
        const f32x4 vr = v_splat(r), vc = v_splat(c);
        for (; vec && i + 4 <= C; i += 4)
            v_store(dx + i,
                    v_load(dx + i) + (vr * v_load(g + i) * v_load(dy + i) -
                                      v_load(x + i) * vc));
        for (; i < C; i++)
            dx[i] += r * g[i] * dy[i] - x[i] * c;
        if (!dg)
            continue;
        for (i = 0; vec && i + 4 <= C; i += 4)
            v_store(dg + i,
                    v_load(dg + i) + v_load(dy + i) * v_load(x + i) * vr);
        for (; i < C; i++)
            dg[i] += dy[i] * x[i] * r;
    }
}

/* ---- rotary position embedding ------------------------------------------- */

void fl_model__rope(float *x, const float *cos_t, const float *sin_t, int B,
                    int T, int nh, int hs, int inverse)
{
    int half = hs / 2;
    float sgn = inverse ? -1.0f : 1.0f;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *cs = cos_t + (size_t)t * half;
            const float *sn = sin_t + (size_t)t * half;
            float *row = x + ((size_t)b * T + t) * (size_t)nh * hs;
            for (int h = 0; h < nh; h++) {
                float *v = row + (size_t)h * hs;
                for (int i = 0; i < half; i++) {
                    float c = cs[i], s = sgn * sn[i];
                    float v0 = v[2 * i], v1 = v[2 * i + 1];
                    v[2 * i] = v0 * c - v1 * s;
                    v[2 * i + 1] = v0 * s + v1 * c;
                }
            }
        }
    }
}

/* ---- causal attention ---------------------------------------------------- */

static void attention_fwd_ref(float *out, float *att, const float *q,
                              const float *k, const float *v, int B, int T,
                              int nh, int nkv, int hs)
{
    int C = nh * hs, KC = nkv * hs, grp = nh / nkv;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < nh; h++) {
            int kh = h / grp;
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)b * T + t) * C + (size_t)h * hs;
                float *a = att + (((size_t)b * nh + h) * T + t) * T;
                float mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    const float *ks =
                        k + ((size_t)b * T + s) * KC + (size_t)kh * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++)
                        d += qt[i] * ks[i];
                    d *= scale;
                    a[s] = d;
                    if (d > mx)
                        mx = d;
                }
                float sum = 0.0f;
                for (int s = 0; s <= t; s++) {
                    a[s] = fast_expf(a[s] - mx);
                    sum += a[s];
                }
                float inv = 1.0f / sum;
                for (int s = 0; s <= t; s++)
                    a[s] *= inv;
                for (int s = t + 1; s < T; s++)
                    a[s] = 0.0f;
                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hs;
                memset(o, 0, (size_t)hs * sizeof *o);
                for (int s = 0; s <= t; s++) {
                    const float *vs =
                        v + ((size_t)b * T + s) * KC + (size_t)kh * hs;
                    for (int i = 0; i < hs; i++)
                        o[i] += a[s] * vs[i];
                }
            }
        }
    }
}

/* o_t = sum_s p_ts v_s, p_t = softmax(scale * q_t . k_s):
 * dv_s += p_ts do_t; dp_ts = do_t . v_s; ds_ts = p_ts (dp_ts - sum p dp);
 * dq_t += scale ds_ts k_s; dk_s += scale ds_ts q_t. */
static void attention_bwd_ref(float *dq, float *dk, float *dv,
                              const float *dout, const float *att,
                              const float *q, const float *k, const float *v,
                              int B, int T, int nh, int nkv, int hs)
{
    int C = nh * hs, KC = nkv * hs, grp = nh / nkv;
    float scale = 1.0f / sqrtf((float)hs);
    memset(dq, 0, (size_t)B * T * C * sizeof *dq);
    memset(dk, 0, (size_t)B * T * KC * sizeof *dk);
    memset(dv, 0, (size_t)B * T * KC * sizeof *dv);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < nh; h++) {
            int kh = h / grp;
            for (int t = 0; t < T; t++) {
                size_t qo = ((size_t)b * T + t) * C + (size_t)h * hs;
                const float *qt = q + qo, *dot = dout + qo;
                float *dqt = dq + qo;
                const float *a = att + (((size_t)b * nh + h) * T + t) * T;
                /* dp into a small pass: sum p dp first */
                float pdp = 0.0f;
                for (int s = 0; s <= t; s++) {
                    const float *vs =
                        v + ((size_t)b * T + s) * KC + (size_t)kh * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++)
                        d += dot[i] * vs[i];
                    pdp += a[s] * d;
                }
                for (int s = 0; s <= t; s++) {
                    size_t ko = ((size_t)b * T + s) * KC + (size_t)kh * hs;
                    const float *vs = v + ko, *ks = k + ko;
                    float *dvs = dv + ko, *dks = dk + ko;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++)
                        d += dot[i] * vs[i];
                    float ds = a[s] * (d - pdp) * scale;
                    for (int i = 0; i < hs; i++) {
                        dvs[i] += a[s] * dot[i];
                        dqt[i] += ds * ks[i];
                        dks[i] += ds * qt[i];
                    }
                }
            }
        }
    }
}

/* The same with sgemm per (batch, head): S = Q K^T computed in full (the
 * masked upper triangle is wasted work, still far cheaper than scalar
 * loops), causal softmax row by row, O = P V. */
static void attention_fwd_blas(float *out, float *att, const float *q,
                               const float *k, const float *v, int B, int T,
                               int nh, int nkv, int hs)
{
    int C = nh * hs, KC = nkv * hs, grp = nh / nkv;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < nh; h++) {
            int kh = h / grp;
            const float *qh = q + (size_t)b * T * C + (size_t)h * hs;
            const float *kb = k + (size_t)b * T * KC + (size_t)kh * hs;
            const float *vb = v + (size_t)b * T * KC + (size_t)kh * hs;
            float *a = att + ((size_t)b * nh + h) * T * T;
            /* a [T, T] = scale * q_h [T, hs] @ k_h [T, hs]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs,
                        scale, qh, C, kb, KC, 0.0f, a, T);
            for (int t = 0; t < T; t++) {
                float *row = a + (size_t)t * T;
                softmax_row(row, t + 1);
                memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof *row);
            }
            /* out_h [T, hs] = a [T, T] @ v_h [T, hs] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T,
                        1.0f, a, T, vb, KC, 0.0f,
                        out + (size_t)b * T * C + (size_t)h * hs, C);
        }
    }
}

static void attention_bwd_blas(float *dq, float *dk, float *dv, float *dp,
                               const float *dout, const float *att,
                               const float *q, const float *k, const float *v,
                               int B, int T, int nh, int nkv, int hs)
{
    int C = nh * hs, KC = nkv * hs, grp = nh / nkv;
    float scale = 1.0f / sqrtf((float)hs);
    memset(dk, 0, (size_t)B * T * KC * sizeof *dk);
    memset(dv, 0, (size_t)B * T * KC * sizeof *dv);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < nh; h++) {
            int kh = h / grp;
            size_t qo = (size_t)b * T * C + (size_t)h * hs;
            size_t ko = (size_t)b * T * KC + (size_t)kh * hs;
            const float *a = att + ((size_t)b * nh + h) * T * T;
            /* dv_h [T, hs] += a^T @ do_h */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f,
                        a, T, dout + qo, C, 1.0f, dv + ko, KC);
            /* dp [T, T] = do_h @ v_h^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f,
                        dout + qo, C, v + ko, KC, 0.0f, dp, T);
            /* ds = scale * a * (dp - sum_s a dp), in place in dp */
            for (int t = 0; t < T; t++) {
                const float *ar = a + (size_t)t * T;
                float *dr = dp + (size_t)t * T;
                float pdp = 0.0f;
                for (int s = 0; s <= t; s++)
                    pdp += ar[s] * dr[s];
                for (int s = 0; s <= t; s++)
                    dr[s] = scale * ar[s] * (dr[s] - pdp);
                for (int s = t + 1; s < T; s++)
                    dr[s] = 0.0f;
            }
            /* dq_h [T, hs] = ds @ k_h; dk_h += ds^T @ q_h */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T,
                        1.0f, dp, T, k + ko, KC, 0.0f, dq + qo, C);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f,
                        dp, T, q + qo, C, 1.0f, dk + ko, KC);
        }
    }
}

void fl_model__attention_fwd(float *out, float *att, const float *q,
                             const float *k, const float *v, int B, int T,
                             int nh, int nkv, int hs, int blas)
{
    if (blas)
        attention_fwd_blas(out, att, q, k, v, B, T, nh, nkv, hs);
    else
        attention_fwd_ref(out, att, q, k, v, B, T, nh, nkv, hs);
}

void fl_model__attention_bwd(float *dq, float *dk, float *dv, float *scratch,
                             const float *dout, const float *att,
                             const float *q, const float *k, const float *v,
                             int B, int T, int nh, int nkv, int hs, int blas)
{
    if (blas)
        attention_bwd_blas(dq, dk, dv, scratch, dout, att, q, k, v, B, T, nh,
                           nkv, hs);
    else
        attention_bwd_ref(dq, dk, dv, dout, att, q, k, v, B, T, nh, nkv, hs);
}

/* ---- SwiGLU --------------------------------------------------------------
 * Vectorised with v_exp; the scalar loop finishes the tail and is the
 * reference (bitwise equal). */

static void swiglu_fwd_ref(float *out, float *sig, const float *h1,
                           const float *h3, size_t from, size_t n)
{
    for (size_t i = from; i < n; i++) {
        float x = h1[i];
        float sg = 1.0f / (1.0f + fast_expf(-x));
        sig[i] = sg;
        out[i] = x * sg * h3[i];
    }
}

static void swiglu_bwd_ref(float *dh1, float *dh3, const float *dout,
                           const float *h1, const float *h3, const float *sig,
                           size_t from, size_t n)
{
    for (size_t i = from; i < n; i++) {
        float x = h1[i], sg = sig[i];
        float silu = x * sg;
        dh3[i] = dout[i] * silu;
        dh1[i] = dout[i] * h3[i] * sg * (1.0f + x * (1.0f - sg));
    }
}

void fl_model__swiglu_fwd(float *out, float *sig, const float *h1,
                          const float *h3, size_t n, int vec)
{
    size_t i = 0;
    const f32x4 one = v_splat(1.0f);
    for (; vec && i + 4 <= n; i += 4) {
        f32x4 x = v_load(h1 + i);
        f32x4 sg = one / (one + v_exp(-x));
        v_store(sig + i, sg);
        v_store(out + i, x * sg * v_load(h3 + i));
    }
    swiglu_fwd_ref(out, sig, h1, h3, i, n);
}

void fl_model__swiglu_bwd(float *dh1, float *dh3, const float *dout,
                          const float *h1, const float *h3, const float *sig,
                          size_t n, int vec)
{
    size_t i = 0;
    const f32x4 one = v_splat(1.0f);
    for (; vec && i + 4 <= n; i += 4) {
        f32x4 x = v_load(h1 + i), d = v_load(dout + i), sg = v_load(sig + i);
        f32x4 silu = x * sg;
        v_store(dh3 + i, d * silu);
        v_store(dh1 + i, d * v_load(h3 + i) * sg * (one + x * (one - sg)));
    }
    swiglu_bwd_ref(dh1, dh3, dout, h1, h3, sig, i, n);
}

/* ---- softmax cross-entropy ---------------------------------------------- */

double fl_model__xent_fwd(float *probs, const float *logits,
                          const int32_t *targets, int N, int V, int *count)
{
    double total = 0.0;
    int cnt = 0;
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        float mx = z[0];
        for (int i = 1; i < V; i++)
            if (z[i] > mx)
                mx = z[i];
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            p[i] = fast_expf(z[i] - mx);
            sum += p[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++)
            p[i] *= inv;
        if (targets && targets[n] >= 0) {
            /* log-sum-exp form: exact even when p[target] underflows */
            total += log(sum) - (double)(z[targets[n]] - mx);
            cnt++;
        }
    }
    if (count)
        *count = cnt;
    return total;
}

void fl_model__xent_bwd(float *dlogits, const float *probs,
                        const int32_t *targets, int N, int V, float scale)
{
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * V;
        const float *p = probs + (size_t)n * V;
        if (targets[n] < 0) {
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        for (int i = 0; i < V; i++)
            d[i] = scale * p[i];
        d[targets[n]] -= scale;
    }
}
