/* tests/unit/check_model.c — the fp32 transformer: every layer's backward
 * against finite differences, BLAS against the reference kernels, logits,
 * gradients and 10 optimizer steps against PyTorch (tests/parity/), LoRA,
 * determinism, model.bin round trips and refusals, and a short training run
 * on fortunes text that must beat the unigram baseline. */
#include "common/common.h"
#include "model/layers.h"
#include "model/model.h"
#include "tests/unit/testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill_normal(float *p, size_t n, double std, uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(fl_rng_normal(&r) * std);
}

static double max_abs(const float *p, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)p[i]) > m) /* not fmax: see rel_err */
            m = fabs((double)p[i]);
    return m;
}

/* ---- finite differences for each layer ----------------------------------
 * Objective f = sum_i wts_i * out_i (accumulated in double) of a layer's
 * float output; its gradient is the layer's backward with dout = wts.
 * Central differences with eps = 1e-2 on O(1) inputs: truncation error is
 * O(eps^2), float rounding O(1e-7 / eps). */
enum { L_MATMUL, L_RMSNORM, L_ROPE, L_ATTN, L_SWIGLU, L_XENT };

#define FB   2
#define FT   5
#define FNH  4
#define FNKV 2
#define FHS  4
#define FC   (FNH * FHS)
#define FKV  (FNKV * FHS)

typedef struct {
    int layer, blas;
    float x[FB * FT * FC], y[FB * FT * FC], z[FB * FT * FC], g[64];
    float out[FB * FT * FC], aux[FB * FNH * FT * FT], wts[FB * FT * FC];
    float cos_t[FT * FHS / 2], sin_t[FT * FHS / 2];
    int32_t tg[8];
} fd_ctx_t;

/* sizes: matmul inp x [6, 7], w y [5, 7]; rmsnorm x [3, 8], g [8];
 * rope x [B, T, FNH * FHS]; attention q x [B, T, FC], k y, v z [B, T, FKV];
 * swiglu x, y [20]; xent logits x [4, 7], targets tg. */
static double fd_objective(fd_ctx_t *c)
{
    size_t n = 0;
    double obj = 0.0;
    switch (c->layer) {
    case L_MATMUL:
        fl_model__matmul_fwd(c->out, c->x, c->y, 6, 7, 5, 0, c->blas);
        n = 30;
        break;
    case L_RMSNORM:
        fl_model__rmsnorm_fwd(c->out, c->aux, c->x, c->g, 3, 8, 1e-5f, c->blas);
        n = 24;
        break;
    case L_ROPE:
        memcpy(c->out, c->x, sizeof c->x);
        fl_model__rope(c->out, c->cos_t, c->sin_t, FB, FT, FNH, FHS, 0);
        n = FB * FT * FC;
        break;
    case L_ATTN:
        fl_model__attention_fwd(c->out, c->aux, c->x, c->y, c->z, FB, FT, FNH,
                                FNKV, FHS, c->blas);
        n = FB * FT * FC;
        break;
    case L_SWIGLU:
        fl_model__swiglu_fwd(c->out, c->aux, c->x, c->y, 20, c->blas);
        n = 20;
        break;
    case L_XENT: {
        int cnt;
        return fl_model__xent_fwd(c->aux, c->x, c->tg, 4, 7, &cnt) / cnt;
    }
    }
    for (size_t i = 0; i < n; i++)
        obj += (double)c->wts[i] * c->out[i];
    return obj;
}

/* Compares analytic[0..n) with central differences of the objective in the
 * input p[0..n); returns the worst error over the largest gradient. */
static double fd_compare(fd_ctx_t *c, float *p, const float *analytic, size_t n)
{
    double worst = 0.0, scale = max_abs(analytic, n);
    ck_assert(scale > 1e-3); /* a vanishing gradient would prove nothing */
    const float eps = 1e-2f;
    for (size_t i = 0; i < n; i++) {
        float keep = p[i];
        p[i] = keep + eps;
        double fp = fd_objective(c);
        p[i] = keep - eps;
        double fm = fd_objective(c);
        p[i] = keep;
        double fd = (fp - fm) / (2.0 * eps);
        worst = fmax(worst, fabs(fd - analytic[i]));
    }
    return worst / scale;
}

static void fd_setup(fd_ctx_t *c, int layer, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->layer = layer;
    fill_normal(c->x, FL_ARRAY_LEN(c->x), 1.0, seed);
    fill_normal(c->y, FL_ARRAY_LEN(c->y), 1.0, seed + 1);
    fill_normal(c->z, FL_ARRAY_LEN(c->z), 1.0, seed + 2);
    fill_normal(c->g, FL_ARRAY_LEN(c->g), 0.5, seed + 3);
    for (size_t i = 0; i < FL_ARRAY_LEN(c->g); i++)
        c->g[i] += 1.0f;
    fill_normal(c->wts, FL_ARRAY_LEN(c->wts), 1.0, seed + 4);
    for (int t = 0; t < FT; t++)
        for (int i = 0; i < FHS / 2; i++) {
            double ang = t * pow(10000.0, -2.0 * i / FHS);
            c->cos_t[t * FHS / 2 + i] = (float)cos(ang);
            c->sin_t[t * FHS / 2 + i] = (float)sin(ang);
        }
    int32_t tg[4] = {3, -1, 0, 6};
    memcpy(c->tg, tg, sizeof tg);
}

START_TEST(test_fd_matmul)
{
    static fd_ctx_t c;
    for (int blas = 0; blas < 2; blas++) {
        fd_setup(&c, L_MATMUL, 10);
        c.blas = blas;
        float dx[42] = {0}, dw[35] = {0};
        fl_model__matmul_bwd(dx, dw, c.wts, c.x, c.y, 6, 7, 5, 1, blas);
        ck_assert_double_lt(fd_compare(&c, c.x, dx, 42), 1e-3);
        ck_assert_double_lt(fd_compare(&c, c.y, dw, 35), 1e-3);
    }
}
END_TEST

START_TEST(test_fd_rmsnorm)
{
    static fd_ctx_t c;
    fd_setup(&c, L_RMSNORM, 20);
    c.blas = _i;
    float dx[24] = {0}, dg[8] = {0};
    fd_objective(&c); /* rstd into aux */
    fl_model__rmsnorm_bwd(dx, dg, c.wts, c.x, c.g, c.aux, 3, 8, c.blas);
    ck_assert_double_lt(fd_compare(&c, c.x, dx, 24), 1e-2);
    ck_assert_double_lt(fd_compare(&c, c.g, dg, 8), 1e-3);
}
END_TEST

START_TEST(test_fd_rope)
{
    static fd_ctx_t c;
    fd_setup(&c, L_ROPE, 30);
    static float dx[FB * FT * FC];
    memcpy(dx, c.wts, sizeof dx);
    fl_model__rope(dx, c.cos_t, c.sin_t, FB, FT, FNH, FHS, 1);
    ck_assert_double_lt(fd_compare(&c, c.x, dx, FB * FT * FC), 1e-3);
}
END_TEST

START_TEST(test_fd_attention)
{
    static fd_ctx_t c;
    fd_setup(&c, L_ATTN, 40);
    c.blas = _i;
    static float dq[FB * FT * FC], dk[FB * FT * FKV], dv[FB * FT * FKV];
    float scratch[FT * FT];
    fd_objective(&c);
    fl_model__attention_bwd(dq, dk, dv, scratch, c.wts, c.aux, c.x, c.y, c.z,
                            FB, FT, FNH, FNKV, FHS, c.blas);
    ck_assert_double_lt(fd_compare(&c, c.x, dq, FB * FT * FC), 1e-2);
    ck_assert_double_lt(fd_compare(&c, c.y, dk, FB * FT * FKV), 1e-2);
    ck_assert_double_lt(fd_compare(&c, c.z, dv, FB * FT * FKV), 1e-2);
    /* causal: the last position's key/value get gradient only from itself;
     * the first query has a single key, so its gradient is zero */
    for (int i = 0; i < FHS; i++)
        ck_assert_float_eq_tol(dq[i], 0.0f, 1e-7);
}
END_TEST

START_TEST(test_fd_swiglu)
{
    static fd_ctx_t c;
    fd_setup(&c, L_SWIGLU, 50);
    c.blas = _i;
    float d1[20], d3[20];
    fd_objective(&c); /* sigmoid into aux */
    fl_model__swiglu_bwd(d1, d3, c.wts, c.x, c.y, c.aux, 20, c.blas);
    ck_assert_double_lt(fd_compare(&c, c.x, d1, 20), 1e-3);
    ck_assert_double_lt(fd_compare(&c, c.y, d3, 20), 1e-3);
}
END_TEST

/* The 4-lane SwiGLU equals the scalar reference bit for bit, including
 * saturated inputs far outside the exp range. */
START_TEST(test_swiglu_vector_is_scalar)
{
    enum { N = 1003 };
    static float h1[N], h3[N], d[N], o[2][N], g1[2][N], g3[2][N], sg[2][N];
    fill_normal(h1, N, 8.0, 1);
    fill_normal(h3, N, 1.0, 2);
    fill_normal(d, N, 1.0, 3);
    h1[5] = 200.0f;
    h1[6] = -200.0f;
    h1[7] = 1e30f;
    for (int v = 0; v < 2; v++) {
        fl_model__swiglu_fwd(o[v], sg[v], h1, h3, N, v);
        fl_model__swiglu_bwd(g1[v], g3[v], d, h1, h3, sg[v], N, v);
    }
    ck_assert_mem_eq(o[0], o[1], sizeof o[0]);
    ck_assert_mem_eq(sg[0], sg[1], sizeof sg[0]);
    ck_assert_mem_eq(g1[0], g1[1], sizeof g1[0]);
    ck_assert_mem_eq(g3[0], g3[1], sizeof g3[0]);
    ck_assert_float_lt(fabsf(o[0][6]), 1e-30f); /* silu(-200) ~ 0 */
    ck_assert_float_eq_tol(o[0][5], 200.0f * h3[5], 1e-4f);
    /* and it is SiLU: compare with libm */
    for (int i = 0; i < N; i++) {
        double ref = h1[i] / (1.0 + exp(-(double)h1[i])) * h3[i];
        if (fabs(h1[i]) < 80)
            ck_assert_double_le(fabs(o[0][i] - ref), 1e-6 * fabs(ref) + 1e-30);
    }
}
END_TEST

START_TEST(test_fd_cross_entropy)
{
    static fd_ctx_t c;
    fd_setup(&c, L_XENT, 60);
    float dl[28];
    fd_objective(&c);
    fl_model__xent_bwd(dl, c.aux, c.tg, 4, 7, 1.0f / 3.0f);
    ck_assert_double_lt(fd_compare(&c, c.x, dl, 28), 1e-3);
    for (int i = 7; i < 14; i++) /* the ignored row */
        ck_assert_float_eq(dl[i], 0.0f);
}
END_TEST

/* ---- a small model ------------------------------------------------------- */

static void small_config(fl_model_config_t *c, int kv, int tied, int rank)
{
    fl_model_config_default(c);
    c->dim = 32;
    c->hidden_dim = 48;
    c->n_layers = 2;
    c->n_heads = 4;
    c->n_kv_heads = kv;
    c->vocab_size = 50;
    c->seq_len = 16;
    c->tied_output = tied;
    c->lora_rank = rank;
    c->lora_alpha = 8.0f;
}

/* Weights large enough that every gradient is well away from zero. */
static fl_model_t *small_model(int kv, int tied, int rank, uint64_t seed)
{
    fl_model_config_t c;
    small_config(&c, kv, tied, rank);
    fl_model_t *m = NULL;
    ck_assert_int_eq(fl_model_new(&c, &m), 0);
    fl_model_init_weights(m, seed);
    float *b = fl_model_base_params(m);
    size_t nb = fl_model_config_num_base(&c);
    for (size_t i = 0; i < nb; i++)
        b[i] *= 5.0f; /* std 0.1 */
    fl_model_weights_t *w = fl_model_weights(m);
    float *gains[3] = {w->rms_att, w->rms_ffn, w->rms_final};
    size_t glen[3] = {(size_t)c.n_layers * c.dim, (size_t)c.n_layers * c.dim,
                      (size_t)c.dim};
    for (int k = 0; k < 3; k++) {
        fill_normal(gains[k], glen[k], 0.1, seed + 100 + k);
        for (size_t i = 0; i < glen[k]; i++)
            gains[k][i] += 1.0f;
    }
    if (rank) {
        fl_model_lora_t *lv = fl_model_lora(m);
        float *end = fl_model_params(m) + fl_model_num_params(m);
        for (int p = 0; p < FL_MODEL_NPROJ; p++) {
            float *next = p + 1 < FL_MODEL_NPROJ ? lv->a[p + 1] : end;
            fill_normal(lv->b[p], (size_t)(next - lv->b[p]), 0.05,
                        seed + 200 + p);
        }
    }
    return m;
}

static void small_batch(int32_t *tok, int32_t *tgt, int B, int T, int V,
                        uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    for (int i = 0; i < B * T; i++)
        tok[i] = (int32_t)fl_rng_below(&r, (uint64_t)V);
    for (int i = 0; i < B * T; i++) /* next-token targets, last one random */
        tgt[i] = (i + 1) % T ? tok[i + 1] : (int32_t)fl_rng_below(&r, V);
    tgt[1] = -1; /* one ignored position */
}

/* Named tensors of the trainable vector: offsets and lengths. */
typedef struct {
    const char *name;
    size_t off, len;
} tensor_t;

static int trainable_tensors(fl_model_t *m, tensor_t *t)
{
    const fl_model_config_t *c = fl_model_config(m);
    int n = 0;
    if (c->lora_rank > 0) {
        static const char *names[FL_MODEL_NPROJ] = {"wq", "wk", "wv", "wo",
                                                    "w1", "w2", "w3"};
        fl_model_lora_t *lv = fl_model_lora(m);
        float *p0 = fl_model_params(m);
        for (int p = 0; p < FL_MODEL_NPROJ; p++) {
            t[n].name = names[p]; /* A */
            t[n].off = (size_t)(lv->a[p] - p0);
            t[n].len = (size_t)(lv->b[p] - lv->a[p]);
            n++;
            t[n].name = names[p]; /* B */
            t[n].off = (size_t)(lv->b[p] - p0);
            t[n].len = (p + 1 < FL_MODEL_NPROJ)
                           ? (size_t)(lv->a[p + 1] - lv->b[p])
                           : fl_model_num_params(m) - t[n].off;
            n++;
        }
        return n;
    }
    fl_model_weights_t *w = fl_model_weights(m);
    float *p0 = fl_model_base_params(m);
    float *v[] = {
        w->token_embedding, w->rms_att, w->wq, w->wk, w->wv,        w->wo,
        w->rms_ffn,         w->w1,      w->w2, w->w3, w->rms_final, w->wcls};
    static const char *names[] = {
        "token_embedding", "rms_att", "wq", "wk", "wv",        "wo",
        "rms_ffn",         "w1",      "w2", "w3", "rms_final", "wcls"};
    int cnt = c->tied_output ? 11 : 12;
    for (int i = 0; i < cnt; i++) {
        t[n].name = names[i];
        t[n].off = (size_t)(v[i] - p0);
        t[n].len = (i + 1 < cnt) ? (size_t)(v[i + 1] - v[i])
                                 : fl_model_num_params(m) - t[n].off;
        n++;
    }
    return n;
}

/* Whole-model finite differences on a few coordinates of every tensor. */
START_TEST(test_fd_whole_model)
{
    int rank = _i ? 4 : 0;
    fl_model_t *m = small_model(2, _i == 0, rank, 7);
    enum { B = 2, T = 6 };
    int32_t tok[B * T], tgt[B * T];
    small_batch(tok, tgt, B, T, 50, 8);
    float loss;
    fl_model_zero_grad(m);
    ck_assert_int_eq(fl_model_forward(m, tok, tgt, B, T, &loss), 0);
    ck_assert_int_eq(fl_model_backward(m), 0);
    float *p = fl_model_params(m), *g = fl_model_grads(m);
    size_t np = fl_model_num_params(m);
    float *an = malloc(np * sizeof *an);
    memcpy(an, g, np * sizeof *an);
    tensor_t t[32];
    int nt = trainable_tensors(m, t);
    fl_rng_t r;
    fl_rng_seed(&r, 9);
    for (int k = 0; k < nt; k++) {
        double scale = max_abs(an + t[k].off, t[k].len);
        for (int j = 0; j < 4; j++) {
            size_t i = t[k].off + fl_rng_below(&r, t[k].len);
            float keep = p[i], eps = 1e-2f, lp, lm;
            p[i] = keep + eps;
            fl_model_forward(m, tok, tgt, B, T, &lp);
            p[i] = keep - eps;
            fl_model_forward(m, tok, tgt, B, T, &lm);
            p[i] = keep;
            double fd = ((double)lp - lm) / (2.0 * eps);
            ck_assert_msg(fabs(fd - an[i]) <= 2e-2 * scale + 2e-5,
                          "%s[%zu]: fd %g analytic %g", t[k].name, i - t[k].off,
                          fd, an[i]);
        }
    }
    free(an);
    fl_model_free(m);
}
END_TEST

/* The naive kernels and sgemm give the same logits and gradients. */
START_TEST(test_blas_matches_reference)
{
    fl_model_t *m = small_model(2, 1, _i ? 3 : 0, 11);
    enum { B = 2, T = 9 };
    int32_t tok[B * T], tgt[B * T];
    small_batch(tok, tgt, B, T, 50, 12);
    size_t np = fl_model_num_params(m), nl = (size_t)B * T * 50;
    float *g0 = malloc(np * sizeof *g0), *l0 = malloc(nl * sizeof *l0);
    float loss[2];
    for (int blas = 0; blas < 2; blas++) {
        fl_model_set_use_blas(m, blas);
        fl_model_zero_grad(m);
        ck_assert_int_eq(fl_model_forward(m, tok, tgt, B, T, &loss[blas]), 0);
        ck_assert_int_eq(fl_model_backward(m), 0);
        if (!blas) {
            memcpy(g0, fl_model_grads(m), np * sizeof *g0);
            memcpy(l0, fl_model_logits(m), nl * sizeof *l0);
        }
    }
    ck_assert_float_eq_tol(loss[0], loss[1], 1e-5f * loss[0]);
    const float *g1 = fl_model_grads(m), *l1 = fl_model_logits(m);
    double gs = max_abs(g0, np), ls = max_abs(l0, nl);
    for (size_t i = 0; i < np; i++)
        ck_assert_double_le(fabs(g0[i] - g1[i]), 1e-5 * gs);
    for (size_t i = 0; i < nl; i++)
        ck_assert_double_le(fabs(l0[i] - l1[i]), 1e-5 * ls);
    free(g0);
    free(l0);
    fl_model_free(m);
}
END_TEST

/* ---- parity with PyTorch ------------------------------------------------- */

typedef struct {
    const char *what;
    int kv, tied, rank, kind;
    float clip;
} parity_case_t;

static const parity_case_t parity_cases[] = {
    {"gqa, tied, AdamW", 2, 1, 0, FL_MODEL_ADAMW, 1.0f},
    {"mha, untied, SGD momentum", 4, 0, 0, FL_MODEL_SGD, 0.5f},
    {"gqa, LoRA r4, AdamW", 2, 1, 4, FL_MODEL_ADAMW, 1.0f},
    {"mha, untied, LoRA r2, AdamW", 4, 0, 2, FL_MODEL_ADAMW, 0.05f},
};

static double rel_err(const float *a, const double *ref, size_t n)
{
    double worst = 0, scale = 0;
    /* plain comparisons: gcc 12 for aarch64 crashes vectorising this loop
     * written with fmax */
    for (size_t i = 0; i < n; i++) {
        double r = fabs(ref[i]), d = fabs((double)a[i] - ref[i]);
        if (r > scale)
            scale = r;
        if (d > worst)
            worst = d;
    }
    return scale > 0 ? worst / scale : worst;
}

START_TEST(test_parity_pytorch)
{
    const parity_case_t *pc = &parity_cases[_i];
    enum { B = 3, T = 10, STEPS = 10 };
    char dir[256], path[512], cmd_script[512];
    fl_test_tmpdir(dir, sizeof dir);
    fl_model_t *m = small_model(pc->kv, pc->tied, pc->rank, 100 + _i);
    int32_t batch[2 + 2 * B * T];
    batch[0] = B;
    batch[1] = T;
    small_batch(batch + 2, batch + 2 + B * T, B, T, 50, 200 + _i);
    const int32_t *tok = batch + 2, *tgt = batch + 2 + B * T;
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.kind = pc->kind;
    o.lr = pc->kind == FL_MODEL_SGD ? 0.1f : 3e-3f;
    o.min_lr = o.lr / 10;
    o.warmup = 3;
    o.total = STEPS;
    o.weight_decay = 0.1f;
    o.grad_clip = pc->clip;
    o.momentum = 0.9f;

    snprintf(path, sizeof path, "%s/model.bin", dir);
    ck_assert_int_eq(fl_model_save(m, path, 0), 0);
    snprintf(path, sizeof path, "%s/batch.bin", dir);
    ck_assert_int_eq(fl_file_write_atomic(path, batch, sizeof batch, 0644), 0);
    char opt[512];
    int n = snprintf(opt, sizeof opt,
                     "kind %s\nlr %.9g\nmin_lr %.9g\nwarmup %d\ntotal %d\n"
                     "beta1 %.9g\nbeta2 %.9g\neps %.9g\nmomentum %.9g\n"
                     "weight_decay %.9g\ngrad_clip %.9g\nsteps %d\n",
                     pc->kind == FL_MODEL_SGD ? "sgd" : "adamw", o.lr, o.min_lr,
                     (int)o.warmup, (int)o.total, o.beta1, o.beta2, o.eps,
                     o.momentum, o.weight_decay, o.grad_clip, STEPS);
    snprintf(path, sizeof path, "%s/optim.txt", dir);
    ck_assert_int_eq(fl_file_write_atomic(path, opt, (size_t)n, 0644), 0);
    ck_assert_int_eq(
        fl_test_system("'%s' '%s' '%s'", fl_test_python(),
                       fl_test_srcpath(cmd_script, sizeof cmd_script,
                                       "tests/parity/"
                                       "model_parity.py"),
                       dir),
        0);

    size_t np = fl_model_num_params(m), nl = (size_t)B * T * 50;
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    snprintf(path, sizeof path, "%s/ref.bin", dir);
    ck_assert_int_eq(fl_file_read_all(path, 1 << 26, &raw, &rawlen), 0);
    ck_assert_uint_eq(rawlen, (1 + nl + np + STEPS) * sizeof(double));
    const double *ref = (const double *)raw;

    float loss;
    fl_model_zero_grad(m);
    ck_assert_int_eq(fl_model_forward(m, tok, tgt, B, T, &loss), 0);
    ck_assert_int_eq(fl_model_backward(m), 0);
    ck_assert_msg(fabs(loss - ref[0]) <= 1e-5 * ref[0], "%s: loss %g vs %g",
                  pc->what, loss, ref[0]);
    double e = rel_err(fl_model_logits(m), ref + 1, nl);
    ck_assert_msg(e < 1e-4, "%s: logits rel err %g", pc->what, e);
    tensor_t t[32];
    int nt = trainable_tensors(m, t);
    const double *rg = ref + 1 + nl;
    for (int k = 0; k < nt; k++) {
        e = rel_err(fl_model_grads(m) + t[k].off, rg + t[k].off, t[k].len);
        ck_assert_msg(e < 1e-4, "%s: grad %s rel err %g", pc->what, t[k].name,
                      e);
        ck_assert(max_abs(fl_model_grads(m) + t[k].off, t[k].len) > 1e-6);
    }
    const double *rl = rg + np;
    for (int s = 0; s < STEPS; s++) {
        ck_assert_int_eq(fl_model_train_step(m, &o, tok, tgt, B, T, &loss), 0);
        ck_assert_msg(fabs(loss - rl[s]) <= 1e-4 * rl[s],
                      "%s: step %d loss %.7f vs torch %.7f", pc->what, s, loss,
                      rl[s]);
    }
    ck_assert_double_lt(rl[STEPS - 1], rl[0]); /* it did train */
    fl_free(raw);
    fl_model_free(m);
    fl_test_rmtree(dir);
}
END_TEST

/* ---- optimizers, LoRA, determinism --------------------------------------- */

START_TEST(test_lr_schedule)
{
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.lr = 1.0f;
    o.min_lr = 0.1f;
    o.warmup = 4;
    o.total = 14;
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 0), 0.25f, 1e-7);
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 3), 1.0f, 1e-7);
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 4), 1.0f, 1e-7);
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 9), 0.55f, 1e-6); /* midway */
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 14), 0.1f, 1e-7);
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 100), 0.1f, 1e-7);
    o.total = 0;
    ck_assert_float_eq_tol(fl_model_lr_at(&o, 100), 1.0f, 1e-7);
}
END_TEST

START_TEST(test_grad_clip)
{
    fl_model_t *m = small_model(2, 1, 0, 31);
    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    small_batch(tok, tgt, B, T, 50, 32);
    fl_model_zero_grad(m);
    fl_model_forward(m, tok, tgt, B, T, NULL);
    fl_model_backward(m);
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.kind = FL_MODEL_SGD;
    o.momentum = 0.0f;
    o.grad_clip = 1e-3f;
    float norm;
    ck_assert_int_eq(fl_model_step(m, &o, &norm), 0);
    ck_assert_float_gt(norm, 1e-3f);
    double ss = 0;
    const float *g = fl_model_grads(m);
    for (size_t i = 0; i < fl_model_num_params(m); i++)
        ss += (double)g[i] * g[i];
    ck_assert_double_eq_tol(sqrt(ss), 1e-3, 1e-6);
    fl_model_free(m);
}
END_TEST

static void train_some(fl_model_t *m, int steps, uint64_t seed)
{
    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    for (int s = 0; s < steps; s++) {
        small_batch(tok, tgt, B, T, 50, seed + s);
        ck_assert_int_eq(fl_model_train_step(m, &o, tok, tgt, B, T, NULL), 0);
    }
}

/* The vectorised AdamW update equals the scalar one bit for bit. */
START_TEST(test_adamw_vector_is_scalar)
{
    fl_model_t *a = small_model(2, 1, _i ? 3 : 0, 91), *b = NULL;
    ck_assert_int_eq(fl_model_clone(a, &b), 0);
    fl_model_set_use_blas(b, 0);
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.weight_decay = 0.1f;
    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    size_t np = fl_model_num_params(a);
    for (int s = 0; s < 3; s++) {
        small_batch(tok, tgt, B, T, 50, 92 + s);
        fl_model_zero_grad(a);
        ck_assert_int_eq(fl_model_forward(a, tok, tgt, B, T, NULL), 0);
        ck_assert_int_eq(fl_model_backward(a), 0);
        memcpy(fl_model_grads(b), fl_model_grads(a), np * sizeof(float));
        ck_assert_int_eq(fl_model_step(a, &o, NULL), 0);
        ck_assert_int_eq(fl_model_step(b, &o, NULL), 0);
        ck_assert_mem_eq(fl_model_params(a), fl_model_params(b),
                         np * sizeof(float));
    }
    fl_model_free(a);
    fl_model_free(b);
}
END_TEST

START_TEST(test_deterministic)
{
    fl_model_t *a = small_model(2, 1, 0, 41), *b = small_model(2, 1, 0, 41);
    ck_assert_mem_eq(fl_model_params(a), fl_model_params(b),
                     fl_model_num_params(a) * sizeof(float));
    train_some(a, 3, 5);
    train_some(b, 3, 5);
    ck_assert_mem_eq(fl_model_params(a), fl_model_params(b),
                     fl_model_num_params(a) * sizeof(float));
    fl_model_t *c = small_model(2, 1, 0, 42);
    ck_assert(memcmp(fl_model_params(a), fl_model_params(c),
                     fl_model_num_params(a) * sizeof(float)) != 0);
    fl_model_free(a);
    fl_model_free(b);
    fl_model_free(c);
}
END_TEST

START_TEST(test_lora_frozen_base_and_merge)
{
    fl_model_t *m = small_model(2, 1, 0, 51);
    size_t nb = fl_model_num_params(m);
    ck_assert_int_eq(fl_model_lora_add(m, 4, 8.0f, 52), 0);
    ck_assert_int_eq(fl_model_lora_add(m, 4, 8.0f, 52), FL_ESTATE);
    ck_assert_uint_eq(fl_model_num_params(m),
                      fl_model_config_num_lora(fl_model_config(m)));
    ck_assert_ptr_ne(fl_model_params(m), fl_model_base_params(m));
    float *base0 = malloc(nb * sizeof(float));
    memcpy(base0, fl_model_base_params(m), nb * sizeof(float));
    train_some(m, 3, 53);
    ck_assert_mem_eq(base0, fl_model_base_params(m), nb * sizeof(float));
    /* the adapters moved away from B = 0 */
    fl_model_lora_t *lv = fl_model_lora(m);
    ck_assert(max_abs(lv->b[FL_MODEL_WQ], 16) > 0);

    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    small_batch(tok, tgt, B, T, 50, 54);
    float l1, l2;
    fl_model_forward(m, tok, tgt, B, T, &l1);
    size_t nl = (size_t)B * T * 50;
    float *lg = malloc(nl * sizeof *lg);
    memcpy(lg, fl_model_logits(m), nl * sizeof *lg);
    ck_assert_int_eq(fl_model_lora_merge(m), 0);
    ck_assert_ptr_null(fl_model_lora(m));
    ck_assert_uint_eq(fl_model_num_params(m), nb);
    fl_model_forward(m, tok, tgt, B, T, &l2);
    ck_assert_float_eq_tol(l1, l2, 1e-5f);
    double s = max_abs(lg, nl);
    for (size_t i = 0; i < nl; i++)
        ck_assert_double_le(fabs(lg[i] - fl_model_logits(m)[i]), 1e-5 * s);
    free(lg);
    free(base0);
    fl_model_free(m);
}
END_TEST

START_TEST(test_config_and_args)
{
    fl_model_config_t c;
    fl_model_config_default(&c);
    ck_assert_int_eq(fl_model_config_check(&c, NULL, 0), 0);
    char why[128];
    fl_model_config_t bad = c;
    bad.n_heads = 3; /* does not divide 128 */
    ck_assert_int_eq(fl_model_config_check(&bad, why, sizeof why), FL_ERANGE);
    ck_assert(strstr(why, "n_heads") != NULL);
    bad = c;
    bad.n_kv_heads = 3;
    ck_assert_int_eq(fl_model_config_check(&bad, NULL, 0), FL_ERANGE);
    bad = c;
    bad.dim = 1 << 20;
    ck_assert_int_eq(fl_model_config_check(&bad, NULL, 0), FL_ERANGE);
    bad = c;
    bad.vocab_size = FL_MODEL_MAX_VOCAB;
    bad.dim = FL_MODEL_MAX_DIM; /* each in range, the product is not */
    bad.n_heads = 64;
    ck_assert_int_eq(fl_model_config_check(&bad, why, sizeof why), FL_ERANGE);
    fl_model_t *m = NULL;
    ck_assert_int_eq(fl_model_new(&bad, &m), FL_ERANGE);
    ck_assert_ptr_null(m);
    fl_model_free(NULL);

    ck_assert_int_eq(fl_model_new(&c, &m), 0);
    int32_t tok[4] = {1, 2, c.vocab_size, 3}, tgt[4] = {1, 2, 3, 4};
    ck_assert_int_eq(fl_model_forward(m, tok, tgt, 1, 4, NULL), FL_ERANGE);
    ck_assert_int_eq(fl_model_backward(m), FL_ESTATE);
    tok[2] = 7;
    tgt[0] = -2;
    ck_assert_int_eq(fl_model_forward(m, tok, tgt, 1, 4, NULL), FL_ERANGE);
    ck_assert_int_eq(fl_model_forward(m, tok, NULL, 1, c.seq_len + 1, NULL),
                     FL_ERANGE);
    ck_assert_int_eq(fl_model_forward(m, tok, NULL, 1, 4, NULL), 0);
    ck_assert_int_eq(fl_model_backward(m), FL_ESTATE); /* no targets */
    char longref[300];
    memset(longref, 'x', sizeof longref - 1);
    longref[299] = 0;
    ck_assert_int_eq(fl_model_set_tokenizer_ref(m, longref), FL_ETOOBIG);
    ck_assert_str_eq(fl_model_tokenizer_ref(m), "byte");
    fl_model_free(m);
}
END_TEST

/* ---- model.bin ----------------------------------------------------------- */

START_TEST(test_modelfile_roundtrip)
{
    fl_model_t *m = small_model(2, _i != 1, _i == 2 ? 3 : 0, 61);
    train_some(m, 2, 62);
    ck_assert_int_eq(fl_model_set_tokenizer_ref(m, "bpe:abc123"), 0);
    fl_buf_t b;
    fl_buf_init(&b, FL_MODEL_MAX_FILE);
    ck_assert_int_eq(fl_model_save_buf(m, FL_MODEL_SAVE_OPTIM, &b), 0);
    fl_model_t *r = NULL;
    ck_assert_int_eq(fl_model_load_buf(b.data, b.len, &r), 0);
    ck_assert_mem_eq(fl_model_config(m), fl_model_config(r),
                     sizeof(fl_model_config_t));
    ck_assert_str_eq(fl_model_tokenizer_ref(r), "bpe:abc123");
    ck_assert_int_eq(fl_model_step_count(r), 2);
    ck_assert_uint_eq(fl_model_num_params(r), fl_model_num_params(m));
    ck_assert_mem_eq(fl_model_base_params(m), fl_model_base_params(r),
                     fl_model_config_num_base(fl_model_config(m)) * 4);
    ck_assert_mem_eq(fl_model_params(m), fl_model_params(r),
                     fl_model_num_params(m) * 4);
    /* resumed training continues exactly like the original */
    train_some(m, 2, 70);
    train_some(r, 2, 70);
    ck_assert_mem_eq(fl_model_params(m), fl_model_params(r),
                     fl_model_num_params(m) * 4);
    fl_model_free(r);
    /* without optimizer state the file is smaller and the step is 0 */
    size_t full = b.len;
    fl_buf_reset(&b);
    ck_assert_int_eq(fl_model_save_buf(m, 0, &b), 0);
    ck_assert_uint_eq(b.len, full - 2 * fl_model_num_params(m) * 4);
    ck_assert_int_eq(fl_model_load_buf(b.data, b.len, &r), 0);
    ck_assert_int_eq(fl_model_step_count(r), 0);
    fl_model_free(r);
    fl_buf_free(&b);
    fl_model_free(m);
}
END_TEST

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

START_TEST(test_modelfile_refusals)
{
    fl_model_t *m = small_model(2, 1, 2, 81), *r = NULL;
    fl_buf_t b;
    fl_buf_init(&b, FL_MODEL_MAX_FILE);
    ck_assert_int_eq(fl_model_save_buf(m, 0, &b), 0);
    uint8_t *img = malloc(b.len);
    size_t len = b.len;
    /* every truncation is refused (FL_ETRUNC; header cuts after the magic
     * may be caught by an earlier check) and allocates nothing */
    for (size_t cut = 0; cut < len; cut += (cut < 600 ? 1 : 997)) {
        int rc = fl_model_load_buf(b.data, cut, &r);
        ck_assert_msg(rc == FL_ETRUNC, "cut %zu: %s", cut, fl_err_name(rc));
        ck_assert_ptr_null(r);
    }
#define TRY(expect)                                                            \
    do {                                                                       \
        int rc_ = fl_model_load_buf(img, len, &r);                             \
        ck_assert_msg(rc_ == (expect), "%s", fl_err_name(rc_));                \
        ck_assert_ptr_null(r);                                                 \
        memcpy(img, b.data, len);                                              \
    } while (0)
    memcpy(img, b.data, len);
    img[0] = 'X';
    TRY(FL_EMAGIC);
    put32(img + 8, 2);
    TRY(FL_EVERSION);
    put32(img + 12, 1024);
    TRY(FL_EFORMAT);
    put32(img + 16, 0x80); /* unknown flag */
    TRY(FL_EFORMAT);
    put32(img + 20, 0x7fffffff); /* absurd dim */
    TRY(FL_ERANGE);
    put32(img + 24 + 4 * 4, 1u << 30); /* absurd vocab */
    TRY(FL_ERANGE);
    put32(img + 20 + 7 * 4, 0xffffffffu); /* negative rank */
    TRY(FL_ERANGE);
    put32(img + 20 + 2 * 4, 3); /* 3 layers: sizes no longer match */
    TRY(FL_EFORMAT);
    put32(img + 64, 400); /* tokenizer reference too long */
    TRY(FL_EFORMAT);
    float nan = NAN;
    memcpy(img + 512 + 40, &nan, 4);
    TRY(FL_EFORMAT);
    ck_assert_int_eq(fl_model_load_buf(b.data, len, &r), 0);
    fl_model_free(r);
    r = NULL;
    fl_buf_append_u8(&b, 0); /* trailing garbage */
    ck_assert_int_eq(fl_model_load_buf(b.data, b.len, &r), FL_EFORMAT);
    char dir[256], path[512];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/none.bin", dir);
    ck_assert_int_eq(fl_model_load(path, &r), FL_ENOENT);
    ck_assert_int_eq(fl_model_save(m, path, FL_MODEL_SAVE_OPTIM), 0);
    ck_assert_int_eq(fl_model_load(path, &r), 0);
    fl_model_free(r);
    fl_test_rmtree(dir);
    free(img);
    fl_buf_free(&b);
    fl_model_free(m);
}
END_TEST

/* ---- learning real text -------------------------------------------------- */

/* A short run on fortunes text (byte tokens): validation loss must end
 * well below the unigram entropy of the validation bytes under the
 * training byte frequencies. */
START_TEST(test_train_beats_unigram)
{
    uint8_t *text = NULL;
    size_t len = 0;
    const char *path = getenv("FL_TEST_FORTUNES");
    if (!path)
        path = "/usr/share/games/fortunes/fortunes";
    ck_assert_int_eq(fl_file_read_all(path, 1 << 24, &text, &len), 0);
    len = FL_MIN(len, (size_t)48000);
    ck_assert_uint_gt(len, 20000);
    size_t ntrain = len * 9 / 10;
    double cnt[256];
    for (int i = 0; i < 256; i++)
        cnt[i] = 1.0;
    for (size_t i = 0; i < ntrain; i++)
        cnt[text[i]] += 1.0;
    double unigram = 0;
    for (size_t i = ntrain; i < len; i++)
        unigram -= log(cnt[text[i]] / (double)(ntrain + 256));
    unigram /= (double)(len - ntrain);

    fl_model_config_t c;
    fl_model_config_default(&c);
    c.dim = 64;
    c.hidden_dim = 160;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.seq_len = 64;
    fl_model_t *m = NULL;
    ck_assert_int_eq(fl_model_new(&c, &m), 0);
    fl_model_init_weights(m, 1);
    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.lr = 4e-3f;
    o.min_lr = 4e-4f;
    o.warmup = 10;
    o.total = 150;
    o.weight_decay = 0.01f;
    enum { B = 8, T = 64 };
    int32_t tok[B * T], tgt[B * T];
    fl_rng_t r;
    fl_rng_seed(&r, 3);
    for (int s = 0; s < o.total; s++) {
        for (int b = 0; b < B; b++) {
            size_t st = fl_rng_below(&r, ntrain - T - 1);
            for (int t = 0; t < T; t++) {
                tok[b * T + t] = text[st + t];
                tgt[b * T + t] = text[st + t + 1];
            }
        }
        ck_assert_int_eq(fl_model_train_step(m, &o, tok, tgt, B, T, NULL), 0);
    }
    double vsum = 0;
    int vn = 0;
    for (size_t st = ntrain; st + T + 1 <= len && vn < 16; st += T, vn++) {
        for (int t = 0; t < T; t++) {
            tok[t] = text[st + t];
            tgt[t] = text[st + t + 1];
        }
        float l;
        ck_assert_int_eq(fl_model_forward(m, tok, tgt, 1, T, &l), 0);
        vsum += l;
    }
    double val = vsum / vn;
    ck_assert_msg(val < unigram - 0.3, "val loss %.3f, unigram %.3f", val,
                  unigram);
    fl_free(text);
    fl_model_free(m);
}
END_TEST

/* ---- the command line ---------------------------------------------------- */

static json_t *run_json(const char *cmd, const char *outfile)
{
    ck_assert_msg(fl_test_system("%s > '%s'", cmd, outfile) == 0, "%s", cmd);
    json_error_t err;
    json_t *j = json_load_file(outfile, 0, &err);
    ck_assert_msg(j != NULL, "%s: %s", outfile, err.text);
    return j;
}

/* flotilla model init | train | eval on a few fortunes files: the trained
 * model's validation loss ends well below the unigram baseline, eval
 * agrees, and bad input is refused with the documented exit codes. */
START_TEST(test_cli_init_train_eval)
{
    char dir[256], bin[512], cmd[4096], out[512];
    fl_test_tmpdir(dir, sizeof dir);
    fl_test_flotilla(bin, sizeof bin);
    ck_assert_int_eq(
        fl_test_system("mkdir '%s/data' && cd /usr/share/games/fortunes && "
                       "cp fortunes pets '%s/data/'",
                       dir, dir),
        0);
    snprintf(out, sizeof out, "%s/out.json", dir);
    snprintf(cmd, sizeof cmd,
             "%s model init --out '%s/m.bin' --dim 64 --hidden-dim 160 "
             "--layers 2 --heads 4 --kv-heads 2 --seq-len 64 --json",
             bin, dir);
    json_t *j = run_json(cmd, out);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(j, "config"), "vocab_size")),
                     259);
    ck_assert_str_eq(json_string_value(json_object_get(j, "tokenizer_ref")),
                     "byte");
    json_decref(j);
    /* an existing file is not overwritten without --force */
    ck_assert_int_eq(fl_test_system("%s model init --out '%s/m.bin' "
                                    "2>/dev/null",
                                    bin, dir),
                     1);

    snprintf(
        cmd, sizeof cmd,
        "%s model train --model '%s/m.bin' --out '%s/t.bin' --data "
        "'%s/data' --steps 150 --batch 8 --warmup 10 --lr 4e-3 --min-lr 4e-4 "
        "--weight-decay 0.01 --eval-every 75 --eval-windows 24 --json",
        bin, dir, dir, dir);
    j = run_json(cmd, out);
    double val = json_real_value(json_object_get(j, "val_loss"));
    double uni = json_real_value(json_object_get(j, "unigram_loss"));
    ck_assert_msg(val < uni - 0.3, "val %.3f unigram %.3f", val, uni);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "history")), 2);
    json_decref(j);

    snprintf(cmd, sizeof cmd,
             "%s model eval --model '%s/t.bin' --data '%s/data' "
             "--max-windows 24 --batch 8 --json",
             bin, dir, dir);
    j = run_json(cmd, out);
    double ev = json_real_value(json_object_get(j, "loss"));
    ck_assert_double_eq_tol(ev, val, 1e-3); /* the same 24 windows */
    ck_assert_double_eq_tol(json_real_value(json_object_get(j, "perplexity")),
                            exp(ev), 1e-6 * exp(ev));
    json_decref(j);

    /* the trained file resumes with its optimizer state */
    fl_model_t *m = NULL;
    snprintf(out, sizeof out, "%s/t.bin", dir);
    ck_assert_int_eq(fl_model_load(out, &m), 0);
    ck_assert_int_eq(fl_model_step_count(m), 150);
    fl_model_free(m);

    /* determinism and exact resumption: 12 steps in one go equal 6 steps,
     * saved, then resumed to 12 (a constant learning rate, so that the
     * schedule does not depend on the total) */
    char opts[512];
    snprintf(opts, sizeof opts,
             "--data '%s/data' --batch 4 --seq-len 32 --warmup 0 --lr 2e-3 "
             "--min-lr 2e-3 --eval-every 0 --eval-windows 2 >/dev/null",
             dir);
    ck_assert_int_eq(fl_test_system("%s model train --model '%s/m.bin' --out "
                                    "'%s/a.bin' --steps 12 %s",
                                    bin, dir, dir, opts),
                     0);
    ck_assert_int_eq(fl_test_system("%s model train --model '%s/m.bin' --out "
                                    "'%s/b.bin' --steps 12 %s",
                                    bin, dir, dir, opts),
                     0);
    ck_assert_int_eq(fl_test_system("%s model train --model '%s/m.bin' --out "
                                    "'%s/c.bin' --steps 6 %s && %s model "
                                    "train --model '%s/c.bin' --steps 12 %s",
                                    bin, dir, dir, opts, bin, dir, opts),
                     0);
    ck_assert_int_eq(fl_test_system("cmp -s '%s/a.bin' '%s/b.bin' && cmp -s "
                                    "'%s/a.bin' '%s/c.bin'",
                                    dir, dir, dir, dir),
                     0);

    /* refusals: not a model (1), a bad configuration (2), missing data */
    ck_assert_int_eq(fl_test_system("%s model eval --model '%s/data/love' "
                                    "--data '%s/data' 2>/dev/null",
                                    bin, dir, dir),
                     1);
    ck_assert_int_eq(fl_test_system("%s model init --out '%s/x.bin' "
                                    "--heads 3 2>/dev/null",
                                    bin, dir),
                     2);
    ck_assert_int_eq(fl_test_system("%s model train --model '%s/t.bin' "
                                    "--data '%s/none' 2>/dev/null",
                                    bin, dir, dir),
                     1);
    ck_assert_int_eq(fl_test_system("%s model train --model '%s/t.bin' "
                                    "2>/dev/null",
                                    bin, dir),
                     2);
    fl_test_rmtree(dir);
}
END_TEST

Suite *check_model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("layers");
    tcase_add_test(tc, test_fd_matmul);
    tcase_add_loop_test(tc, test_fd_rmsnorm, 0, 2);
    tcase_add_test(tc, test_fd_rope);
    tcase_add_loop_test(tc, test_fd_attention, 0, 2);
    tcase_add_loop_test(tc, test_fd_swiglu, 0, 2);
    tcase_add_test(tc, test_swiglu_vector_is_scalar);
    tcase_add_test(tc, test_fd_cross_entropy);
    tcase_add_loop_test(tc, test_fd_whole_model, 0, 2);
    tcase_add_loop_test(tc, test_blas_matches_reference, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("parity");
    tcase_add_loop_test(tc, test_parity_pytorch, 0,
                        (int)FL_ARRAY_LEN(parity_cases));
    suite_add_tcase(s, tc);
    tc = tcase_create("train");
    tcase_add_test(tc, test_lr_schedule);
    tcase_add_test(tc, test_grad_clip);
    tcase_add_test(tc, test_deterministic);
    tcase_add_loop_test(tc, test_adamw_vector_is_scalar, 0, 2);
    tcase_add_test(tc, test_lora_frozen_base_and_merge);
    tcase_add_test(tc, test_config_and_args);
    tcase_add_test(tc, test_train_beats_unigram);
    suite_add_tcase(s, tc);
    tc = tcase_create("file");
    tcase_add_loop_test(tc, test_modelfile_roundtrip, 0, 3);
    tcase_add_test(tc, test_modelfile_refusals);
    suite_add_tcase(s, tc);
    tc = tcase_create("cli");
    tcase_add_test(tc, test_cli_init_train_eval);
    suite_add_tcase(s, tc);
    return s;
}
