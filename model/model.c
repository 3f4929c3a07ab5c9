/*
 * model/model.c — the model handle: configuration, the one-allocation
 * parameter/gradient vectors with named views, LoRA adapters, and the fp32
 * forward and backward passes over the layer kernels of layers.c.
 */
#include "model/model.h"
#include "model/layers.h"
#include "model/model_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* ---- configuration ------------------------------------------------------- */

void fl_model_config_default(fl_model_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->dim = 128;
    cfg->hidden_dim = 384;
    cfg->n_layers = 4;
    cfg->n_heads = 4;
    cfg->n_kv_heads = 2;
    cfg->vocab_size = 259;
    cfg->seq_len = 128;
    cfg->tied_output = 1;
    cfg->lora_rank = 0;
    cfg->lora_alpha = 16.0f;
    cfg->rope_theta = 10000.0f;
    cfg->norm_eps = 1e-5f;
}

static int bad(char *why, size_t whylen, const char *msg)
{
    if (why && whylen)
        snprintf(why, whylen, "%s", msg);
    return FL_ERANGE;
}

int fl_model_config_check(const fl_model_config_t *c, char *why, size_t whylen)
{
    if (c->dim < 2 || c->dim > FL_MODEL_MAX_DIM)
        return bad(why, whylen, "dim out of range");
    if (c->hidden_dim < 1 || c->hidden_dim > FL_MODEL_MAX_HIDDEN)
        return bad(why, whylen, "hidden_dim out of range");
    if (c->n_layers < 1 || c->n_layers > FL_MODEL_MAX_LAYERS)
        return bad(why, whylen, "n_layers out of range");
    if (c->n_heads < 1 || c->n_heads > FL_MODEL_MAX_HEADS ||
        c->dim % c->n_heads != 0)
        return bad(why, whylen, "n_heads out of range or does not divide dim");
    if ((c->dim / c->n_heads) % 2 != 0)
        return bad(why, whylen, "head size (dim / n_heads) must be even");
    if (c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads ||
        c->n_heads % c->n_kv_heads != 0)
        return bad(why, whylen, "n_kv_heads must divide n_heads");
    if (c->vocab_size < 2 || c->vocab_size > FL_MODEL_MAX_VOCAB)
        return bad(why, whylen, "vocab_size out of range");
    if (c->seq_len < 1 || c->seq_len > FL_MODEL_MAX_SEQ)
        return bad(why, whylen, "seq_len out of range");
    if (c->tied_output != 0 && c->tied_output != 1)
        return bad(why, whylen, "tied_output must be 0 or 1");
    if (c->lora_rank < 0 || c->lora_rank > FL_MODEL_MAX_RANK ||
        c->lora_rank > c->dim || c->lora_rank > c->hidden_dim)
        return bad(why, whylen, "lora_rank out of range");
    if (!(c->lora_alpha > 0.0f && c->lora_alpha < 1e6f))
        return bad(why, whylen, "lora_alpha out of range");
    if (!(c->rope_theta >= 1.0f && c->rope_theta < 1e9f))
        return bad(why, whylen, "rope_theta out of range");
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return bad(why, whylen, "norm_eps out of range");
    size_t nb = fl_model_config_num_base(c), nl = fl_model_config_num_lora(c);
    if (nb + nl > FL_MODEL_MAX_PARAMS)
        return bad(why, whylen, "too many parameters");
    return 0;
}

static size_t kv_dim_of(const fl_model_config_t *c)
{
    return (size_t)c->dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
}

/* Sizes stay far inside size_t for dims within the limits (each factor is
 * at most 2^20, products of three at most 2^60). */
size_t fl_model_config_num_base(const fl_model_config_t *c)
{
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           KV = kv_dim_of(c);
    size_t n = V * C;                /* token_embedding */
    n += L * C;                      /* rms_att */
    n += L * C * C + 2 * L * KV * C; /* wq, wk, wv */
    n += L * C * C;                  /* wo */
    n += L * C;                      /* rms_ffn */
    n += 3 * L * H * C;              /* w1, w2, w3 */
    n += C;                          /* rms_final */
    n += c->tied_output ? 0 : V * C; /* wcls */
    return n;
}

void fl_model__proj_shape(const fl_model_config_t *c, int p, int *in, int *out)
{
    int C = c->dim, H = c->hidden_dim, KV = (int)kv_dim_of(c);
    static const int is_kv[FL_MODEL_NPROJ] = {0, 1, 1, 0, 0, 0, 0};
    switch (p) {
    case FL_MODEL_W1:
    case FL_MODEL_W3:
        *in = C;
        *out = H;
        break;
    case FL_MODEL_W2:
        *in = H;
        *out = C;
        break;
    default:
        *in = C;
        *out = is_kv[p] ? KV : C;
        break;
    }
}

size_t fl_model_config_num_lora(const fl_model_config_t *c)
{
    size_t n = 0, r = (size_t)c->lora_rank, L = (size_t)c->n_layers;
    for (int p = 0; p < FL_MODEL_NPROJ; p++) {
        int in, out;
        fl_model__proj_shape(c, p, &in, &out);
        n += L * r * ((size_t)in + (size_t)out);
    }
    return n;
}

/* ---- views --------------------------------------------------------------- */

static void weight_views(const fl_model_config_t *c, float *p,
                         fl_model_weights_t *w)
{
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           KV = kv_dim_of(c);
    w->token_embedding = p;
    p += V * C;
    w->rms_att = p;
    p += L * C;
    w->wq = p;
    p += L * C * C;
    w->wk = p;
    p += L * KV * C;
    w->wv = p;
    p += L * KV * C;
    w->wo = p;
    p += L * C * C;
    w->rms_ffn = p;
    p += L * C;
    w->w1 = p;
    p += L * H * C;
    w->w2 = p;
    p += L * C * H;
    w->w3 = p;
    p += L * H * C;
    w->rms_final = p;
    p += C;
    w->wcls = c->tied_output ? w->token_embedding : p;
}

static void lora_views(const fl_model_config_t *c, float *p, fl_model_lora_t *v)
{
    size_t r = (size_t)c->lora_rank, L = (size_t)c->n_layers;
    for (int k = 0; k < FL_MODEL_NPROJ; k++) {
        int in, out;
        fl_model__proj_shape(c, k, &in, &out);
        v->a[k] = p;
        p += L * r * (size_t)in;
        v->b[k] = p;
        p += L * (size_t)out * r;
    }
}

/* Base projection matrix p of layer l and its gradient (NULL if frozen). */
static float *proj_base(fl_model_weights_t *w, int p)
{
    switch (p) {
    case FL_MODEL_WQ:
        return w->wq;
    case FL_MODEL_WK:
        return w->wk;
    case FL_MODEL_WV:
        return w->wv;
    case FL_MODEL_WO:
        return w->wo;
    case FL_MODEL_W1:
        return w->w1;
    case FL_MODEL_W2:
        return w->w2;
    default:
        return w->w3;
    }
}

static int lora_on(const fl_model_t *m)
{
    return m->cfg.lora_rank > 0;
}

static void set_views(fl_model_t *m)
{
    weight_views(&m->cfg, m->base, &m->w);
    memset(&m->gw, 0, sizeof m->gw);
    memset(&m->lv, 0, sizeof m->lv);
    memset(&m->gl, 0, sizeof m->gl);
    if (lora_on(m)) {
        lora_views(&m->cfg, m->adapters, &m->lv);
        lora_views(&m->cfg, m->grads, &m->gl);
    } else {
        weight_views(&m->cfg, m->grads, &m->gw);
    }
}

static float *alloc_floats(size_t n)
{
    return fl_aligned_alloc(64, (n ? n : 1) * sizeof(float));
}

/* ---- lifecycle ----------------------------------------------------------- */

/* Whether the OpenBLAS thread count was set (see fl_model_set_threads). */
static atomic_int threads_set;

static int rope_tables(fl_model_t *m)
{
    int half = m->cfg.dim / m->cfg.n_heads / 2;
    size_t n = (size_t)m->cfg.seq_len * (size_t)half;
    m->rope_cos = alloc_floats(2 * n);
    if (!m->rope_cos)
        return FL_ENOMEM;
    m->rope_sin = m->rope_cos + n;
    int hs = 2 * half;
    for (int t = 0; t < m->cfg.seq_len; t++) {
        for (int i = 0; i < half; i++) {
            double freq = pow((double)m->cfg.rope_theta, -2.0 * i / hs);
            double ang = (double)t * freq;
            m->rope_cos[(size_t)t * half + i] = (float)cos(ang);
            m->rope_sin[(size_t)t * half + i] = (float)sin(ang);
        }
    }
    return 0;
}

int fl_model_new(const fl_model_config_t *cfg, fl_model_t **out)
{
    int rc = 0;
    fl_model_t *m = NULL;
    *out = NULL;
    if ((rc = fl_model_config_check(cfg, NULL, 0)) < 0)
        return rc;
    if (!atomic_exchange(&threads_set, 1))
        openblas_set_num_threads(1);
    m = fl_calloc(1, sizeof *m);
    if (!m)
        return FL_ENOMEM;
    m->cfg = *cfg;
    m->use_blas = 1;
    snprintf(m->tokref, sizeof m->tokref, "byte");
    m->n_base = fl_model_config_num_base(cfg);
    m->n_lora = fl_model_config_num_lora(cfg);
    m->base = alloc_floats(m->n_base);
    m->adapters = lora_on(m) ? alloc_floats(m->n_lora) : NULL;
    m->grads = alloc_floats(lora_on(m) ? m->n_lora : m->n_base);
    if (!m->base || !m->grads || (lora_on(m) && !m->adapters)) {
        rc = FL_ENOMEM;
        goto out;
    }
    set_views(m);
    *out = m;
    m = NULL;
out:
    fl_model_free(m);
    return rc;
}

void fl_model_free(fl_model_t *m)
{
    if (!m)
        return;
    fl_free(m->acts);
    fl_free(m->tok);
    fl_free(m->opt);
    fl_free(m->rope_cos);
    fl_free(m->grads);
    fl_free(m->adapters);
    fl_free(m->base);
    fl_free(m);
}

int fl_model_clone(const fl_model_t *src, fl_model_t **out)
{
    fl_model_t *m = NULL;
    int rc = fl_model_new(&src->cfg, &m);
    if (rc < 0)
        return rc;
    memcpy(m->base, src->base, src->n_base * sizeof(float));
    if (lora_on(src))
        memcpy(m->adapters, src->adapters, src->n_lora * sizeof(float));
    if (src->opt) {
        size_t n = 2 * fl_model_num_params(src);
        m->opt = alloc_floats(n);
        if (!m->opt) {
            fl_model_free(m);
            return FL_ENOMEM;
        }
        memcpy(m->opt, src->opt, n * sizeof(float));
    }
    m->step = src->step;
    m->use_blas = src->use_blas;
    memcpy(m->tokref, src->tokref, sizeof m->tokref);
    *out = m;
    return 0;
}

static void fill_normal(fl_rng_t *r, float *p, size_t n, double std)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(fl_rng_normal(r) * std);
}

static void fill_const(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

static void init_lora(fl_model_t *m, fl_rng_t *r)
{
    size_t L = (size_t)m->cfg.n_layers, rk = (size_t)m->cfg.lora_rank;
    for (int p = 0; p < FL_MODEL_NPROJ; p++) {
        int in, out;
        fl_model__proj_shape(&m->cfg, p, &in, &out);
        fill_normal(r, m->lv.a[p], L * rk * (size_t)in, 1.0 / sqrt(in));
        memset(m->lv.b[p], 0, L * (size_t)out * rk * sizeof(float));
    }
}

void fl_model_init_weights(fl_model_t *m, uint64_t seed)
{
    const fl_model_config_t *c = &m->cfg;
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           KV = kv_dim_of(c);
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    double std = 0.02, std_out = 0.02 / sqrt(2.0 * (double)L);
    fl_model_weights_t *w = &m->w;
    fill_normal(&r, w->token_embedding, V * C, std);
    fill_const(w->rms_att, L * C, 1.0f);
    fill_normal(&r, w->wq, L * C * C, std);
    fill_normal(&r, w->wk, L * KV * C, std);
    fill_normal(&r, w->wv, L * KV * C, std);
    fill_normal(&r, w->wo, L * C * C, std_out);
    fill_const(w->rms_ffn, L * C, 1.0f);
    fill_normal(&r, w->w1, L * H * C, std);
    fill_normal(&r, w->w2, L * C * H, std_out);
    fill_normal(&r, w->w3, L * H * C, std);
    fill_const(w->rms_final, C, 1.0f);
    if (!c->tied_output)
        fill_normal(&r, w->wcls, V * C, std);
    if (lora_on(m))
        init_lora(m, &r);
    fl_model_optim_reset(m);
}

/* ---- accessors ----------------------------------------------------------- */

const fl_model_config_t *fl_model_config(const fl_model_t *m)
{
    return &m->cfg;
}

fl_model_weights_t *fl_model_weights(fl_model_t *m)
{
    return &m->w;
}

fl_model_lora_t *fl_model_lora(fl_model_t *m)
{
    return lora_on(m) ? &m->lv : NULL;
}

float *fl_model_params(fl_model_t *m)
{
    return lora_on(m) ? m->adapters : m->base;
}

float *fl_model_grads(fl_model_t *m)
{
    return m->grads;
}

size_t fl_model_num_params(const fl_model_t *m)
{
    return lora_on(m) ? m->n_lora : m->n_base;
}

float *fl_model_base_params(fl_model_t *m)
{
    return m->base;
}

int fl_model_set_tokenizer_ref(fl_model_t *m, const char *ref)
{
    size_t n = strlen(ref);
    if (n >= sizeof m->tokref)
        return FL_ETOOBIG;
    memcpy(m->tokref, ref, n + 1);
    return 0;
}

const char *fl_model_tokenizer_ref(const fl_model_t *m)
{
    return m->tokref;
}

void fl_model_set_use_blas(fl_model_t *m, int on)
{
    m->use_blas = on ? 1 : 0;
}

void fl_model_set_threads(int n)
{
    atomic_store(&threads_set, 1);
    openblas_set_num_threads(n < 1 ? 1 : n);
}

/* ---- LoRA on/off --------------------------------------------------------- */

int fl_model_lora_add(fl_model_t *m, int rank, float alpha, uint64_t seed)
{
    if (lora_on(m))
        return FL_ESTATE;
    fl_model_config_t c = m->cfg;
    c.lora_rank = rank;
    c.lora_alpha = alpha;
    if (rank < 1 || fl_model_config_check(&c, NULL, 0) < 0)
        return FL_ERANGE;
    size_t nl = fl_model_config_num_lora(&c);
    float *ad = alloc_floats(nl), *gr = alloc_floats(nl);
    if (!ad || !gr) {
        fl_free(ad);
        fl_free(gr);
        return FL_ENOMEM;
    }
    fl_free(m->grads);
    m->grads = gr;
    m->adapters = ad;
    m->n_lora = nl;
    m->cfg = c;
    set_views(m);
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    init_lora(m, &r);
    fl_model_optim_reset(m);
    m->have_targets = 0;
    return 0;
}

int fl_model_lora_merge(fl_model_t *m)
{
    if (!lora_on(m))
        return 0;
    float *gr = alloc_floats(m->n_base);
    if (!gr)
        return FL_ENOMEM;
    const fl_model_config_t *c = &m->cfg;
    int r = c->lora_rank;
    float s = c->lora_alpha / (float)r;
    for (int p = 0; p < FL_MODEL_NPROJ; p++) {
        int in, out;
        fl_model__proj_shape(c, p, &in, &out);
        for (int l = 0; l < c->n_layers; l++) {
            float *W = proj_base(&m->w, p) + (size_t)l * out * in;
            const float *A = m->lv.a[p] + (size_t)l * r * in;
            const float *B = m->lv.b[p] + (size_t)l * out * r;
            /* W [out, in] += s * B [out, r] @ A [r, in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r,
                        s, B, r, A, in, 1.0f, W, in);
        }
    }
    fl_free(m->grads);
    fl_free(m->adapters);
    m->grads = gr;
    m->adapters = NULL;
    m->n_lora = 0;
    m->cfg.lora_rank = 0;
    set_views(m);
    fl_model_optim_reset(m);
    m->have_targets = 0;
    return 0;
}

/* ---- activations --------------------------------------------------------- */

/* Lays out the activation views for (B, T) over base (NULL: only counts).
 * Returns the number of floats. */
static size_t act_layout(const fl_model_config_t *c, int B, int T, float *base,
                         fl_model_acts_t *a)
{
    size_t N = (size_t)B * T, C = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           KV = kv_dim_of(c), nh = (size_t)c->n_heads, r = (size_t)c->lora_rank;
    struct {
        float **p;
        size_t n;
    } t[] = {
        {&a->res, (L + 1) * N * C},
        {&a->res_mid, L * N * C},
        {&a->xn1, L * N * C},
        {&a->xn2, L * N * C},
        {&a->rstd1, L * N},
        {&a->rstd2, L * N},
        {&a->q, L * N * C},
        {&a->k, L * N * KV},
        {&a->v, L * N * KV},
        {&a->att, L * N * nh * (size_t)T},
        {&a->atty, L * N * C},
        {&a->h1, L * N * H},
        {&a->h3, L * N * H},
        {&a->hg, L * N * H},
        {&a->sig, L * N * H},
        {&a->xnf, N * C},
        {&a->rstdf, N},
        {&a->logits, N * V},
        {&a->lh, L * FL_MODEL_NPROJ * N * r},
        {&a->dres, N * C},
        {&a->dxn, N * C},
        {&a->datty, N * C},
        {&a->dq, N * C},
        {&a->dk, N * KV},
        {&a->dv, N * KV},
        {&a->dhg, N * H},
        {&a->dh1, N * H},
        {&a->dh3, N * H},
        {&a->dlogits, N * V},
        {&a->dlh, N * r},
        {&a->datt, (size_t)T * T},
    };
    size_t total = 0;
    for (size_t i = 0; i < FL_ARRAY_LEN(t); i++) {
        *t[i].p = base ? base + total : NULL;
        total += (t[i].n + 15) & ~(size_t)15; /* 64-byte aligned views */
    }
    return total;
}

static int ensure_acts(fl_model_t *m, int B, int T)
{
    fl_model_acts_t tmp;
    /* Bound B * T before sizing: each view is at most a few N * (V or
     * L * H ...) floats; refuse anything that would not fit in memory. */
    if ((size_t)B * (size_t)T > ((size_t)1 << 24))
        return FL_ERANGE;
    size_t need = act_layout(&m->cfg, B, T, NULL, &tmp);
    size_t N = (size_t)B * T;
    if (need > m->acts_cap) {
        float *a = alloc_floats(need);
        if (!a)
            return FL_ENOMEM;
        fl_free(m->acts);
        m->acts = a;
        m->acts_cap = need;
    }
    if (2 * N > m->tok_cap) {
        int32_t *t = fl_malloc(2 * N * sizeof *t);
        if (!t)
            return FL_ENOMEM;
        fl_free(m->tok);
        m->tok = t;
        m->tok_cap = 2 * N;
    }
    act_layout(&m->cfg, B, T, m->acts, &m->a);
    if (!m->rope_cos)
        return rope_tables(m); /* lazily: loading stays cheap */
    return 0;
}

/* ---- projections with optional LoRA ------------------------------------- */

/* out [N, OC] (= or +=) inp [N, IC] @ W_eff^T for projection p of layer l;
 * keeps s * (inp @ A^T) in lh for the backward pass. */
static void proj_fwd(fl_model_t *m, int l, int p, float *out, const float *inp,
                     int N, int acc)
{
    int in, outd;
    fl_model__proj_shape(&m->cfg, p, &in, &outd);
    const float *W = proj_base(&m->w, p) + (size_t)l * outd * in;
    fl_model__matmul_fwd(out, inp, W, N, in, outd, acc, m->use_blas);
    if (!lora_on(m))
        return;
    int r = m->cfg.lora_rank;
    float s = m->cfg.lora_alpha / (float)r;
    float *h = m->a.lh + ((size_t)l * FL_MODEL_NPROJ + p) * (size_t)N * r;
    const float *A = m->lv.a[p] + (size_t)l * r * in;
    const float *Bm = m->lv.b[p] + (size_t)l * outd * r;
    fl_model__matmul_fwd(h, inp, A, N, in, r, 0, m->use_blas);
    for (size_t i = 0; i < (size_t)N * r; i++)
        h[i] *= s;
    fl_model__matmul_fwd(out, h, Bm, N, r, outd, 1, m->use_blas);
}

/* dinp [N, IC] (+= when acc, else =) dout @ W_eff; weight (or adapter)
 * gradients +=. */
static void proj_bwd(fl_model_t *m, int l, int p, float *dinp,
                     const float *dout, const float *inp, int N, int acc)
{
    int in, outd;
    fl_model__proj_shape(&m->cfg, p, &in, &outd);
    size_t off = (size_t)l * outd * in;
    const float *W = proj_base(&m->w, p) + off;
    float *gW = lora_on(m) ? NULL : proj_base(&m->gw, p) + off;
    fl_model__matmul_bwd(dinp, gW, dout, inp, W, N, in, outd, acc, m->use_blas);
    if (!lora_on(m))
        return;
    int r = m->cfg.lora_rank;
    float s = m->cfg.lora_alpha / (float)r;
    const float *h = m->a.lh + ((size_t)l * FL_MODEL_NPROJ + p) * (size_t)N * r;
    const float *A = m->lv.a[p] + (size_t)l * r * in;
    const float *Bm = m->lv.b[p] + (size_t)l * outd * r;
    float *gA = m->gl.a[p] + (size_t)l * r * in;
    float *gB = m->gl.b[p] + (size_t)l * outd * r;
    float *dh = m->a.dlh;
    fl_model__matmul_bwd(dh, gB, dout, h, Bm, N, r, outd, 0, m->use_blas);
    for (size_t i = 0; i < (size_t)N * r; i++)
        dh[i] *= s;
    fl_model__matmul_bwd(dinp, gA, dh, inp, A, N, in, r, 1, m->use_blas);
}

/* ---- forward ---------------------------------------------------------------
 */

int fl_model_forward(fl_model_t *m, const int32_t *tokens,
                     const int32_t *targets, int B, int T, float *loss)
{
    const fl_model_config_t *c = &m->cfg;
    int C = c->dim, H = c->hidden_dim, V = c->vocab_size, nh = c->n_heads,
        nkv = c->n_kv_heads, hs = C / nh, KV = (int)kv_dim_of(c);
    m->have_targets = 0;
    if (B < 1 || T < 1 || T > c->seq_len)
        return FL_ERANGE;
    size_t N = (size_t)B * T;
    for (size_t i = 0; i < N; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return FL_ERANGE;
        if (targets && (targets[i] < -1 || targets[i] >= V))
            return FL_ERANGE;
    }
    int rc = ensure_acts(m, B, T);
    if (rc < 0)
        return rc;
    fl_model_acts_t *a = &m->a;
    memcpy(m->tok, tokens, N * sizeof *tokens);
    if (targets)
        memcpy(m->tok + N, targets, N * sizeof *targets);
    m->B = B;
    m->T = T;

    for (size_t n = 0; n < N; n++)
        memcpy(a->res + n * C, m->w.token_embedding + (size_t)tokens[n] * C,
               (size_t)C * sizeof(float));

    for (int l = 0; l < c->n_layers; l++) {
        size_t oc = (size_t)l * N * C, okv = (size_t)l * N * KV,
               oh = (size_t)l * N * H;
        float *x = a->res + oc, *xm = a->res_mid + oc, *xo = x + N * C;
        float *xn1 = a->xn1 + oc, *xn2 = a->xn2 + oc;
        float *q = a->q + oc, *k = a->k + okv, *v = a->v + okv;
        float *atty = a->atty + oc;
        float *h1 = a->h1 + oh, *h3 = a->h3 + oh, *hg = a->hg + oh;
        float *sg = a->sig + oh;
        float *att = a->att + (size_t)l * N * nh * T;

        fl_model__rmsnorm_fwd(xn1, a->rstd1 + (size_t)l * N, x,
                              m->w.rms_att + (size_t)l * C, (int)N, C,
                              c->norm_eps, m->use_blas);
        proj_fwd(m, l, FL_MODEL_WQ, q, xn1, (int)N, 0);
        proj_fwd(m, l, FL_MODEL_WK, k, xn1, (int)N, 0);
        proj_fwd(m, l, FL_MODEL_WV, v, xn1, (int)N, 0);
        fl_model__rope(q, m->rope_cos, m->rope_sin, B, T, nh, hs, 0);
        fl_model__rope(k, m->rope_cos, m->rope_sin, B, T, nkv, hs, 0);
        fl_model__attention_fwd(atty, att, q, k, v, B, T, nh, nkv, hs,
                                m->use_blas);
        memcpy(xm, x, N * C * sizeof(float));
        proj_fwd(m, l, FL_MODEL_WO, xm, atty, (int)N, 1);

        fl_model__rmsnorm_fwd(xn2, a->rstd2 + (size_t)l * N, xm,
                              m->w.rms_ffn + (size_t)l * C, (int)N, C,
                              c->norm_eps, m->use_blas);
        proj_fwd(m, l, FL_MODEL_W1, h1, xn2, (int)N, 0);
        proj_fwd(m, l, FL_MODEL_W3, h3, xn2, (int)N, 0);
        fl_model__swiglu_fwd(hg, sg, h1, h3, N * H, m->use_blas);
        memcpy(xo, xm, N * C * sizeof(float));
        proj_fwd(m, l, FL_MODEL_W2, xo, hg, (int)N, 1);
    }

    float *xl = a->res + (size_t)c->n_layers * N * C;
    fl_model__rmsnorm_fwd(a->xnf, a->rstdf, xl, m->w.rms_final, (int)N, C,
                          c->norm_eps, m->use_blas);
    fl_model__matmul_fwd(a->logits, a->xnf, m->w.wcls, (int)N, C, V, 0,
                         m->use_blas);
    int count = 0;
    double sum =
        fl_model__xent_fwd(a->dlogits, a->logits, targets, (int)N, V, &count);
    m->count = count;
    m->loss = count ? (float)(sum / count) : 0.0f;
    if (loss)
        *loss = m->loss;
    m->have_targets = targets != NULL;
    return 0;
}

const float *fl_model_logits(const fl_model_t *m)
{
    return m->a.logits;
}

void fl_model_zero_grad(fl_model_t *m)
{
    memset(m->grads, 0, fl_model_num_params(m) * sizeof(float));
}

/* ---- backward ------------------------------------------------------------ */

int fl_model_backward(fl_model_t *m)
{
    if (!m->have_targets)
        return FL_ESTATE;
    const fl_model_config_t *c = &m->cfg;
    int B = m->B, T = m->T;
    int C = c->dim, H = c->hidden_dim, V = c->vocab_size, nh = c->n_heads,
        nkv = c->n_kv_heads, hs = C / nh, KV = (int)kv_dim_of(c);
    size_t N = (size_t)B * T;
    fl_model_acts_t *a = &m->a;
    int full = !lora_on(m);
    const int32_t *targets = m->tok + N;

    /* head */
    float scale = m->count ? 1.0f / (float)m->count : 0.0f;
    /* the forward left the probabilities in dlogits; in place */
    fl_model__xent_bwd(a->dlogits, a->dlogits, targets, (int)N, V, scale);
    float *gcls = NULL;
    if (full)
        gcls = c->tied_output ? m->gw.token_embedding : m->gw.wcls;
    fl_model__matmul_bwd(a->dxn, gcls, a->dlogits, a->xnf, m->w.wcls, (int)N, C,
                         V, 0, m->use_blas);
    memset(a->dres, 0, N * C * sizeof(float));
    float *xl = a->res + (size_t)c->n_layers * N * C;
    fl_model__rmsnorm_bwd(a->dres, full ? m->gw.rms_final : NULL, a->dxn, xl,
                          m->w.rms_final, a->rstdf, (int)N, C, m->use_blas);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        size_t oc = (size_t)l * N * C, okv = (size_t)l * N * KV,
               oh = (size_t)l * N * H;
        float *x = a->res + oc, *xm = a->res_mid + oc;
        float *xn1 = a->xn1 + oc, *xn2 = a->xn2 + oc;
        float *q = a->q + oc, *k = a->k + okv, *v = a->v + okv;
        float *atty = a->atty + oc;
        float *h1 = a->h1 + oh, *h3 = a->h3 + oh, *hg = a->hg + oh;
        float *sg = a->sig + oh;
        float *att = a->att + (size_t)l * N * nh * T;

        /* MLP: x_out = xm + W2(swiglu(W1 xn2, W3 xn2)) */
        proj_bwd(m, l, FL_MODEL_W2, a->dhg, a->dres, hg, (int)N, 0);
        fl_model__swiglu_bwd(a->dh1, a->dh3, a->dhg, h1, h3, sg, N * H,
                             m->use_blas);
        proj_bwd(m, l, FL_MODEL_W1, a->dxn, a->dh1, xn2, (int)N, 0);
        proj_bwd(m, l, FL_MODEL_W3, a->dxn, a->dh3, xn2, (int)N, 1);
        fl_model__rmsnorm_bwd(a->dres,
                              full ? m->gw.rms_ffn + (size_t)l * C : NULL,
                              a->dxn, xm, m->w.rms_ffn + (size_t)l * C,
                              a->rstd2 + (size_t)l * N, (int)N, C, m->use_blas);

        /* attention: xm = x + WO(attn(rope(WQ xn1), rope(WK xn1), WV xn1)) */
        proj_bwd(m, l, FL_MODEL_WO, a->datty, a->dres, atty, (int)N, 0);
        fl_model__attention_bwd(a->dq, a->dk, a->dv, a->datt, a->datty, att, q,
                                k, v, B, T, nh, nkv, hs, m->use_blas);
        fl_model__rope(a->dq, m->rope_cos, m->rope_sin, B, T, nh, hs, 1);
        fl_model__rope(a->dk, m->rope_cos, m->rope_sin, B, T, nkv, hs, 1);
        proj_bwd(m, l, FL_MODEL_WQ, a->dxn, a->dq, xn1, (int)N, 0);
        proj_bwd(m, l, FL_MODEL_WK, a->dxn, a->dk, xn1, (int)N, 1);
        proj_bwd(m, l, FL_MODEL_WV, a->dxn, a->dv, xn1, (int)N, 1);
        fl_model__rmsnorm_bwd(a->dres,
                              full ? m->gw.rms_att + (size_t)l * C : NULL,
                              a->dxn, x, m->w.rms_att + (size_t)l * C,
                              a->rstd1 + (size_t)l * N, (int)N, C, m->use_blas);
    }

    if (full) {
        for (size_t n = 0; n < N; n++) {
            float *g = m->gw.token_embedding + (size_t)m->tok[n] * C;
            const float *d = a->dres + n * C;
            for (int i = 0; i < C; i++)
                g[i] += d[i];
        }
    }
    return 0;
}

/* ---- convenience --------------------------------------------------------- */

int fl_model_train_step(fl_model_t *m, const fl_model_optim_t *o,
                        const int32_t *tokens, const int32_t *targets, int B,
                        int T, float *loss)
{
    int rc;
    fl_model_zero_grad(m);
    if ((rc = fl_model_forward(m, tokens, targets, B, T, loss)) < 0)
        return rc;
    if ((rc = fl_model_backward(m)) < 0)
        return rc;
    return fl_model_step(m, o, NULL);
}

void fl_model_matmul_ref(float *out, const float *inp, const float *w, int N,
                         int IC, int OC, int accumulate)
{
    fl_model__matmul_fwd(out, inp, w, N, IC, OC, accumulate, 0);
}

void fl_model_matmul_blas(float *out, const float *inp, const float *w, int N,
                          int IC, int OC, int accumulate)
{
    fl_model__matmul_fwd(out, inp, w, N, IC, OC, accumulate, 1);
}
