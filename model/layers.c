/*
 * model/layers.c — fp32 layer kernels, forward and backward (see layers.h).
 */
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

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
                           int OC)
{
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
                          int OC, int blas)
{
    if (!blas) {
        matmul_bwd_ref(dinp, dw, dout, inp, w, N, IC, OC);
        return;
    }
    if (dinp) /* [N, IC] += [N, OC] @ [OC, IC] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f,
                    dout, OC, w, IC, 1.0f, dinp, IC);
    if (dw) /* [OC, IC] += [N, OC]^T @ [N, IC] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f,
                    dout, OC, inp, IC, 1.0f, dw, IC);
}

/* ---- RMSNorm ------------------------------------------------------------- */

void fl_model__rmsnorm_fwd(float *out, float *rstd, const float *inp,
                           const float *g, int N, int C, float eps)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++)
            ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
        for (int i = 0; i < C; i++)
            y[i] = x[i] * r * g[i];
    }
}

/* y_i = x_i r g_i, r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / C:
 * dx_j = r g_j dy_j - x_j r^3 / C * sum_i dy_i g_i x_i. */
void fl_model__rmsnorm_bwd(float *dinp, float *dg, const float *dout,
                           const float *inp, const float *g, const float *rstd,
                           int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        float dot = 0.0f;
        for (int i = 0; i < C; i++)
            dot += dy[i] * g[i] * x[i];
        float c = dot * r * r * r / (float)C;
        for (int i = 0; i < C; i++)
            dx[i] += r * g[i] * dy[i] - x[i] * c;
        if (dg)
            for (int i = 0; i < C; i++)
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

void fl_model__attention_fwd(float *out, float *att, const float *q,
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
                    a[s] = expf(a[s] - mx);
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
void fl_model__attention_bwd(float *dq, float *dk, float *dv, const float *dout,
                             const float *att, const float *q, const float *k,
                             const float *v, int B, int T, int nh, int nkv,
                             int hs)
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

/* ---- SwiGLU -------------------------------------------------------------- */

void fl_model__swiglu_fwd(float *out, const float *h1, const float *h3,
                          size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = h1[i];
        float sig = 1.0f / (1.0f + expf(-x));
        out[i] = x * sig * h3[i];
    }
}

void fl_model__swiglu_bwd(float *dh1, float *dh3, const float *dout,
                          const float *h1, const float *h3, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = h1[i];
        float sig = 1.0f / (1.0f + expf(-x));
        float silu = x * sig;
        dh3[i] = dout[i] * silu;
        dh1[i] = dout[i] * h3[i] * sig * (1.0f + x * (1.0f - sig));
    }
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
            p[i] = expf(z[i] - mx);
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
