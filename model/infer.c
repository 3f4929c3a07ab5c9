/*
 * model/infer.c — the decoder forward pass with a KV cache, fp32 or int8.
 *
 * Per block of n tokens at positions pos .. pos + n - 1 (n <= max_batch):
 *   x = embed(tokens)                                   [n, dim]
 *   per layer: xb = rmsnorm(x); q, k, v = xb Wq, Wk, Wv; rope(q, k);
 *              cache[l][pos + t] = k, v; xb2 = attention over the cache;
 *              x += xb2 Wo; xb = rmsnorm(x); hb = silu(xb W1) * (xb W3);
 *              x += hb W2
 *   logits = rmsnorm(x) Wcls
 * The only difference between the two paths is the matrix product (and the
 * int8 embedding lookup, which dequantizes one row).
 */
#include "model/infer.h"
#include "model/kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

struct fl_infer {
    fl_model_config_t cfg;
    int int8;
    fl_model_weights_t w;      /* fp32 path */
    const fl_q8_weights_t *qw; /* int8 path */
    int gs;
    const fl_q8_kernels_t *ks;
    int max_batch, kv_dim, head_size;
    size_t bytes;
    float *cache;                    /* kcache and vcache */
    float *kcache, *vcache;          /* [L, seq_len, kv_dim] */
    float *mem;                      /* one allocation for all below */
    float *x, *xb, *xb2, *q, *k, *v; /* [B, dim] / [B, kv_dim] */
    float *hb, *hb2;                 /* [B, hidden] */
    float *att;                      /* [seq_len] */
    float *rope_cos, *rope_sin;      /* [seq_len, head_size / 2] */
    float *aqs;                      /* [B, max(dim, hidden) / gs] */
    uint8_t *aq;                     /* [B, max(dim, hidden)] */
};

void fl_infer_free(fl_infer_t *s)
{
    if (!s)
        return;
    fl_free(s->cache);
    fl_free(s->mem);
    fl_free(s->aq);
    fl_free(s);
}

static int state_new(const fl_model_config_t *cfg, int max_batch, int gs,
                     fl_infer_t **out)
{
    *out = NULL;
    if (max_batch < 1 || max_batch > (1 << 16))
        return FL_EINVAL;
    fl_infer_t *s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->cfg = *cfg;
    s->max_batch = max_batch;
    s->gs = gs;
    s->head_size = cfg->dim / cfg->n_heads;
    s->kv_dim = s->head_size * cfg->n_kv_heads;
    size_t L = (size_t)cfg->n_layers, S = (size_t)cfg->seq_len,
           D = (size_t)cfg->dim, KV = (size_t)s->kv_dim,
           H = (size_t)cfg->hidden_dim, B = (size_t)max_batch,
           half = (size_t)s->head_size / 2, wide = FL_MAX(D, H);
    /* each piece rounded to 16 floats so every array is 64-byte aligned */
#define R16(n) (((n) + 15) / 16 * 16)
    size_t sizes[] = {R16(B * D),    R16(B * D),    R16(B * D),
                      R16(B * D),    R16(B * KV),   R16(B * KV),
                      R16(B * H),    R16(B * H),    R16(S),
                      R16(S * half), R16(S * half), R16(B * wide / 4)};
#undef R16
    size_t total = 0;
    for (size_t i = 0; i < FL_ARRAY_LEN(sizes); i++)
        total += sizes[i];
    /* The KV cache is its own calloc: the kernel hands out zero pages
     * lazily, so a long context costs memory only as far as it is used
     * (a model file's seq_len alone cannot make us touch gigabytes). */
    s->cache = fl_calloc(2 * L * S, KV * sizeof(float));
    s->mem = fl_aligned_alloc(64, total * sizeof(float));
    s->aq = fl_aligned_alloc(64, B * wide);
    if (!s->cache || !s->mem || !s->aq) {
        fl_infer_free(s);
        return FL_ENOMEM;
    }
    s->kcache = s->cache;
    s->vcache = s->cache + L * S * KV;
    s->bytes = (2 * L * S * KV + total) * sizeof(float) + B * wide;
    float **ptrs[] = {&s->x,   &s->xb,       &s->xb2,      &s->q,
                      &s->k,   &s->v,        &s->hb,       &s->hb2,
                      &s->att, &s->rope_cos, &s->rope_sin, &s->aqs};
    float *p = s->mem;
    for (size_t i = 0; i < FL_ARRAY_LEN(sizes); i++) {
        *ptrs[i] = p;
        p += sizes[i];
    }
    /* the same table as the training forward (model/model.c) */
    int hs = s->head_size;
    for (size_t t = 0; t < S; t++)
        for (size_t i = 0; i < half; i++) {
            double freq = pow((double)cfg->rope_theta, -2.0 * (double)i / hs);
            double ang = (double)t * freq;
            s->rope_cos[t * half + i] = (float)cos(ang);
            s->rope_sin[t * half + i] = (float)sin(ang);
        }
    *out = s;
    return 0;
}

int fl_infer_new_fp32(fl_model_t *m, int max_batch, fl_infer_t **out)
{
    const fl_model_config_t *cfg = fl_model_config(m);
    *out = NULL;
    if (cfg->lora_rank != 0)
        return FL_EINVAL;
    int rc = state_new(cfg, max_batch, 0, out);
    if (rc == 0)
        (*out)->w = *fl_model_weights(m);
    return rc;
}

int fl_infer_new_q8(const fl_q8_model_t *q, int max_batch, fl_infer_t **out)
{
    int rc = state_new(fl_q8_model_config(q), max_batch,
                       fl_q8_model_group_size(q), out);
    if (rc == 0) {
        (*out)->int8 = 1;
        (*out)->qw = fl_q8_model_weights(q);
        (*out)->ks = fl_q8_kernels_best();
    }
    return rc;
}

const fl_model_config_t *fl_infer_config(const fl_infer_t *s)
{
    return &s->cfg;
}

int fl_infer_is_int8(const fl_infer_t *s)
{
    return s->int8;
}

size_t fl_infer_state_bytes(const fl_infer_t *s)
{
    return s->bytes;
}

/* ---- pieces -------------------------------------------------------------- */

static void rmsnorm(float *out, const float *x, const float *g, int n, int d,
                    float eps)
{
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        float *o = out + (size_t)r * d;
        float ss = 0.0f;
        for (int i = 0; i < d; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (int i = 0; i < d; i++)
            o[i] = xr[i] * inv * g[i];
    }
}

/* out [n, rows] = in [n, cols] W^T, W (rows, cols): fp32 or int8. With
 * same_in, the int8 path reuses the activations quantized by the previous
 * call (q, k, v and w1, w3 share their input). */
static void matmul(fl_infer_t *s, float *out, const float *in, int n,
                   const float *w32, const fl_q8_matrix_t *w8, int rows,
                   int cols, int same_in)
{
    if (!s->int8) {
        if (n == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, w32,
                        cols, in, 1, 0.0f, out, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, cols,
                        1.0f, in, cols, w32, cols, 0.0f, out, rows);
        return;
    }
    if (!same_in)
        s->ks->quantize_act(s->aq, s->aqs, in, n, cols, s->gs);
    if (n == 1)
        s->ks->gemv(out, s->aq, s->aqs, w8);
    else
        s->ks->gemm(out, s->aq, s->aqs, n, w8);
}

static void rope(const fl_infer_t *s, float *v, int nheads, int pos)
{
    int half = s->head_size / 2;
    const float *cs = s->rope_cos + (size_t)pos * half;
    const float *sn = s->rope_sin + (size_t)pos * half;
    for (int h = 0; h < nheads; h++) {
        float *x = v + (size_t)h * s->head_size;
        for (int i = 0; i < half; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * cs[i] - x1 * sn[i];
            x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

/* out [dim] for query q [dim] at position pos of layer l's cache. */
static void attention(fl_infer_t *s, float *out, const float *q, int l, int pos)
{
    const int hs = s->head_size, kvd = s->kv_dim;
    const int grp = s->cfg.n_heads / s->cfg.n_kv_heads;
    const size_t lo = (size_t)l * s->cfg.seq_len * kvd;
    const float scale = 1.0f / sqrtf((float)hs);
    for (int h = 0; h < s->cfg.n_heads; h++) {
        const float *qh = q + (size_t)h * hs;
        const size_t ho = lo + (size_t)(h / grp) * hs;
        float mx = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            const float *kt = s->kcache + ho + (size_t)t * kvd;
            float d = 0.0f;
            for (int i = 0; i < hs; i++)
                d += qh[i] * kt[i];
            d *= scale;
            s->att[t] = d;
            mx = fmaxf(mx, d);
        }
        float sum = 0.0f;
        for (int t = 0; t <= pos; t++) {
            s->att[t] = expf(s->att[t] - mx);
            sum += s->att[t];
        }
        float inv = 1.0f / sum;
        float *o = out + (size_t)h * hs;
        memset(o, 0, (size_t)hs * sizeof *o);
        for (int t = 0; t <= pos; t++) {
            const float *vt = s->vcache + ho + (size_t)t * kvd;
            float a = s->att[t] * inv;
            for (int i = 0; i < hs; i++)
                o[i] += a * vt[i];
        }
    }
}

/* One block of n <= max_batch tokens; logits for rows [first, n). */
static void block(fl_infer_t *s, const int32_t *tokens, int n, int pos,
                  float *logits, int first)
{
    const fl_model_config_t *c = &s->cfg;
    const int D = c->dim, H = c->hidden_dim, KV = s->kv_dim;
    const size_t L = (size_t)c->n_layers, DD = (size_t)D * D,
                 KD = (size_t)KV * D, HD = (size_t)H * D;
    for (int t = 0; t < n; t++) {
        float *xr = s->x + (size_t)t * D;
        if (s->int8)
            fl_q8_dequantize_row(xr, s->qw->emb_q + (size_t)tokens[t] * D,
                                 s->qw->emb_s + (size_t)tokens[t] * (D / s->gs),
                                 D, s->gs);
        else
            memcpy(xr, s->w.token_embedding + (size_t)tokens[t] * D,
                   (size_t)D * sizeof(float));
    }
    for (size_t l = 0; l < L; l++) {
        const float *g_att = s->int8 ? s->qw->rms_att : s->w.rms_att;
        const float *g_ffn = s->int8 ? s->qw->rms_ffn : s->w.rms_ffn;
        const fl_q8_matrix_t *q8 = s->qw ? s->qw->wq + l : NULL;
        const fl_q8_matrix_t *k8 = s->qw ? s->qw->wk + l : NULL;
        const fl_q8_matrix_t *v8 = s->qw ? s->qw->wv + l : NULL;
        const fl_q8_matrix_t *o8 = s->qw ? s->qw->wo + l : NULL;
        const fl_q8_matrix_t *w18 = s->qw ? s->qw->w1 + l : NULL;
        const fl_q8_matrix_t *w28 = s->qw ? s->qw->w2 + l : NULL;
        const fl_q8_matrix_t *w38 = s->qw ? s->qw->w3 + l : NULL;
        rmsnorm(s->xb, s->x, g_att + l * D, n, D, c->norm_eps);
        matmul(s, s->q, s->xb, n, s->int8 ? NULL : s->w.wq + l * DD, q8, D, D,
               0);
        matmul(s, s->k, s->xb, n, s->int8 ? NULL : s->w.wk + l * KD, k8, KV, D,
               1);
        matmul(s, s->v, s->xb, n, s->int8 ? NULL : s->w.wv + l * KD, v8, KV, D,
               1);
        size_t lo = l * (size_t)c->seq_len * KV;
        for (int t = 0; t < n; t++) {
            rope(s, s->q + (size_t)t * D, c->n_heads, pos + t);
            rope(s, s->k + (size_t)t * KV, c->n_kv_heads, pos + t);
            memcpy(s->kcache + lo + (size_t)(pos + t) * KV,
                   s->k + (size_t)t * KV, (size_t)KV * sizeof(float));
            memcpy(s->vcache + lo + (size_t)(pos + t) * KV,
                   s->v + (size_t)t * KV, (size_t)KV * sizeof(float));
        }
        for (int t = 0; t < n; t++)
            attention(s, s->xb2 + (size_t)t * D, s->q + (size_t)t * D, (int)l,
                      pos + t);
        matmul(s, s->xb, s->xb2, n, s->int8 ? NULL : s->w.wo + l * DD, o8, D, D,
               0);
        for (size_t i = 0; i < (size_t)n * D; i++)
            s->x[i] += s->xb[i];
        rmsnorm(s->xb, s->x, g_ffn + l * D, n, D, c->norm_eps);
        matmul(s, s->hb, s->xb, n, s->int8 ? NULL : s->w.w1 + l * HD, w18, H, D,
               0);
        matmul(s, s->hb2, s->xb, n, s->int8 ? NULL : s->w.w3 + l * HD, w38, H,
               D, 1);
        for (size_t i = 0; i < (size_t)n * H; i++) {
            float a = s->hb[i];
            s->hb[i] = a / (1.0f + expf(-a)) * s->hb2[i];
        }
        matmul(s, s->xb, s->hb, n, s->int8 ? NULL : s->w.w2 + l * HD, w28, D, H,
               0);
        for (size_t i = 0; i < (size_t)n * D; i++)
            s->x[i] += s->xb[i];
    }
    if (first >= n)
        return;
    int nl = n - first;
    const float *g_fin = s->int8 ? s->qw->rms_final : s->w.rms_final;
    rmsnorm(s->xb, s->x + (size_t)first * D, g_fin, nl, D, c->norm_eps);
    matmul(s, logits, s->xb, nl, s->int8 ? NULL : s->w.wcls,
           s->qw ? s->qw->wcls : NULL, c->vocab_size, D, 0);
}

int fl_infer_forward(fl_infer_t *s, const int32_t *tokens, int n, int pos,
                     float *logits, int all_logits)
{
    const fl_model_config_t *c = &s->cfg;
    if (n < 1 || pos < 0)
        return FL_EINVAL;
    if (pos > c->seq_len - n)
        return FL_ERANGE;
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return FL_ERANGE;
    for (int done = 0; done < n;) {
        int nb = FL_MIN(s->max_batch, n - done);
        int last = done + nb == n;
        float *lg = all_logits ? logits + (size_t)done * c->vocab_size : logits;
        int first = all_logits ? 0 : (last ? nb - 1 : nb);
        block(s, tokens + done, nb, pos + done, lg, first);
        done += nb;
    }
    return 0;
}
