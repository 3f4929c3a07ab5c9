/*
 * model/quant.c — model.q8: quantization of a fp32 model, writer, and a
 * loader that computes the exact file length from the header and refuses
 * anything else before it allocates. Layout in model/quant.h.
 */
#include "model/quant.h"

#include <math.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model.q8 stores raw little-endian floats; add byte swapping here"
#endif

enum {
    OFF_VERSION = 8,
    OFF_HSIZE = 12,
    OFF_FLAGS = 16,
    OFF_DIMS = 20, /* 8 x i32 */
    OFF_FLOATS = 52,
    OFF_TOKLEN = 60,
    OFF_TOKREF = 64,
    OFF_PAYLOAD = 320,
    OFF_END = 328,
    TOKREF_MAX = 256,
};

enum { FLAG_TIED = 1 };

enum { MAT_WQ, MAT_WK, MAT_WV, MAT_WO, MAT_W1, MAT_W2, MAT_W3, NMAT };

struct fl_q8_model {
    fl_model_config_t cfg;
    int gs;
    char tokref[TOKREF_MAX];
    float *norms;         /* rms_att [L*dim], rms_ffn [L*dim], final */
    int8_t *emb_q;        /* [vocab, dim] */
    float *emb_s;         /* [vocab, dim/gs] */
    fl_q8_matrix_t *mats; /* [NMAT][L] */
    fl_q8_matrix_t wcls;  /* packed head (from emb when tied) */
    fl_q8_weights_t views;
};

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void putf(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    put32(p, u);
}

static float getf(const uint8_t *p)
{
    uint32_t u = get32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int kv_dim(const fl_model_config_t *c)
{
    return c->dim / c->n_heads * c->n_kv_heads;
}

/* Rows and columns of matrix kind t. */
static void mat_shape(const fl_model_config_t *c, int t, int *rows, int *cols)
{
    switch (t) {
    case MAT_WQ:
    case MAT_WO:
        *rows = c->dim;
        *cols = c->dim;
        break;
    case MAT_WK:
    case MAT_WV:
        *rows = kv_dim(c);
        *cols = c->dim;
        break;
    case MAT_W1:
    case MAT_W3:
        *rows = c->hidden_dim;
        *cols = c->dim;
        break;
    default: /* MAT_W2 */
        *rows = c->dim;
        *cols = c->hidden_dim;
        break;
    }
}

/* Bytes of one quantized tensor in the file. */
static size_t tensor_bytes(size_t rows, size_t cols, int gs)
{
    return rows * cols + rows * (cols / (size_t)gs) * sizeof(float);
}

/* The exact payload size for a valid config (no overflow: every count is
 * bounded by model.h's limits, products stay below 2^50). */
static size_t payload_bytes(const fl_model_config_t *c, int gs)
{
    size_t L = (size_t)c->n_layers, D = (size_t)c->dim;
    size_t n = (2 * L * D + D) * sizeof(float);
    n += tensor_bytes((size_t)c->vocab_size, D, gs);
    for (int t = 0; t < NMAT; t++) {
        int r, k;
        mat_shape(c, t, &r, &k);
        n += L * tensor_bytes((size_t)r, (size_t)k, gs);
    }
    if (!c->tied_output)
        n += tensor_bytes((size_t)c->vocab_size, D, gs);
    return n;
}

int fl_q8_default_group_size(const fl_model_config_t *cfg)
{
    for (int gs = 128; gs >= 4; gs -= 4)
        if (cfg->dim % gs == 0 && cfg->hidden_dim % gs == 0)
            return gs;
    return 0;
}

static int check_gs(const fl_model_config_t *c, int gs)
{
    if (gs < 4 || gs % 4 != 0 || c->dim % gs != 0 || c->hidden_dim % gs != 0)
        return FL_EINVAL;
    return 0;
}

void fl_q8_model_free(fl_q8_model_t *q)
{
    if (!q)
        return;
    if (q->mats)
        for (int i = 0; i < NMAT * q->cfg.n_layers; i++)
            fl_q8_matrix_free(&q->mats[i]);
    fl_free(q->mats);
    fl_q8_matrix_free(&q->wcls);
    fl_free(q->norms);
    fl_free(q->emb_q);
    fl_free(q->emb_s);
    fl_free(q);
}

/* Allocates everything for (cfg, gs), zeroed. */
static int alloc_model(const fl_model_config_t *cfg, int gs,
                       fl_q8_model_t **out)
{
    int rc;
    *out = NULL;
    fl_q8_model_t *q = fl_calloc(1, sizeof *q);
    if (!q)
        return FL_ENOMEM;
    q->cfg = *cfg;
    q->cfg.lora_rank = 0; /* not stored: an export has no adapters */
    q->cfg.lora_alpha = 1.0f;
    q->gs = gs;
    snprintf(q->tokref, sizeof q->tokref, "byte");
    size_t L = (size_t)cfg->n_layers, D = (size_t)cfg->dim,
           V = (size_t)cfg->vocab_size;
    q->norms = fl_aligned_alloc(64, (2 * L * D + D) * sizeof(float));
    q->emb_q = fl_aligned_alloc(64, V * D);
    q->emb_s = fl_aligned_alloc(64, V * (D / (size_t)gs) * sizeof(float));
    q->mats = fl_calloc(NMAT * L, sizeof *q->mats);
    if (!q->norms || !q->emb_q || !q->emb_s || !q->mats) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (int t = 0; t < NMAT; t++) {
        int r, k;
        mat_shape(cfg, t, &r, &k);
        for (size_t l = 0; l < L; l++)
            if ((rc = fl_q8_matrix_init(&q->mats[t * L + l], r, k, gs)) < 0)
                goto out;
    }
    if ((rc = fl_q8_matrix_init(&q->wcls, cfg->vocab_size, cfg->dim, gs)) < 0)
        goto out;
    fl_q8_weights_t *v = &q->views;
    v->rms_att = q->norms;
    v->rms_ffn = q->norms + L * D;
    v->rms_final = q->norms + 2 * L * D;
    v->emb_q = q->emb_q;
    v->emb_s = q->emb_s;
    v->wq = q->mats + MAT_WQ * L;
    v->wk = q->mats + MAT_WK * L;
    v->wv = q->mats + MAT_WV * L;
    v->wo = q->mats + MAT_WO * L;
    v->w1 = q->mats + MAT_W1 * L;
    v->w2 = q->mats + MAT_W2 * L;
    v->w3 = q->mats + MAT_W3 * L;
    v->wcls = &q->wcls;
    *out = q;
    q = NULL;
out:
    fl_q8_model_free(q);
    return rc;
}

static const float *fp32_matrix(const fl_model_config_t *c,
                                const fl_model_weights_t *w, int t, int l)
{
    int r, k;
    mat_shape(c, t, &r, &k);
    const float *base[NMAT] = {w->wq, w->wk, w->wv, w->wo, w->w1, w->w2, w->w3};
    return base[t] + (size_t)l * r * k;
}

int fl_q8_model_quantize(const fl_model_config_t *cfg,
                         const fl_model_weights_t *w, int gs,
                         fl_q8_model_t **out)
{
    int rc;
    fl_q8_model_t *q = NULL;
    int8_t *tq = NULL;
    float *ts = NULL;
    *out = NULL;
    if (cfg->lora_rank != 0)
        return FL_EINVAL;
    if ((rc = fl_model_config_check(cfg, NULL, 0)) < 0)
        return rc;
    if (gs == 0)
        gs = fl_q8_default_group_size(cfg);
    if ((rc = check_gs(cfg, gs)) < 0)
        return rc;
    if ((rc = alloc_model(cfg, gs, &q)) < 0)
        return rc;
    size_t L = (size_t)cfg->n_layers, D = (size_t)cfg->dim,
           V = (size_t)cfg->vocab_size;
    memcpy(q->norms, w->rms_att, L * D * sizeof(float));
    memcpy(q->norms + L * D, w->rms_ffn, L * D * sizeof(float));
    memcpy(q->norms + 2 * L * D, w->rms_final, D * sizeof(float));
    fl_q8_quantize_rows(q->emb_q, q->emb_s, w->token_embedding, (int)V, (int)D,
                        gs);
    /* scratch for the largest matrix: rows * cols <= max(V, H) * max(D, H) */
    size_t maxr = FL_MAX(V, FL_MAX(D, (size_t)cfg->hidden_dim));
    size_t maxc = FL_MAX(D, (size_t)cfg->hidden_dim);
    tq = fl_malloc(maxr * maxc);
    ts = fl_malloc(maxr * (maxc / (size_t)gs) * sizeof(float));
    if (!tq || !ts) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (int t = 0; t < NMAT; t++) {
        int r, k;
        mat_shape(cfg, t, &r, &k);
        for (size_t l = 0; l < L; l++) {
            fl_q8_quantize_rows(tq, ts, fp32_matrix(cfg, w, t, (int)l), r, k,
                                gs);
            fl_q8_matrix_pack(&q->mats[t * L + l], tq, ts);
        }
    }
    if (cfg->tied_output) {
        fl_q8_matrix_pack(&q->wcls, q->emb_q, q->emb_s);
    } else {
        fl_q8_quantize_rows(tq, ts, w->wcls, (int)V, (int)D, gs);
        fl_q8_matrix_pack(&q->wcls, tq, ts);
    }
    *out = q;
    q = NULL;
out:
    fl_free(tq);
    fl_free(ts);
    fl_q8_model_free(q);
    return rc;
}

int fl_q8_model_from_model(fl_model_t *m, int gs, fl_q8_model_t **out)
{
    int rc =
        fl_q8_model_quantize(fl_model_config(m), fl_model_weights(m), gs, out);
    if (rc == 0)
        rc = fl_q8_model_set_tokenizer_ref(*out, fl_model_tokenizer_ref(m));
    if (rc < 0 && *out) {
        fl_q8_model_free(*out);
        *out = NULL;
    }
    return rc;
}

const fl_model_config_t *fl_q8_model_config(const fl_q8_model_t *q)
{
    return &q->cfg;
}

int fl_q8_model_group_size(const fl_q8_model_t *q)
{
    return q->gs;
}

const fl_q8_weights_t *fl_q8_model_weights(const fl_q8_model_t *q)
{
    return &q->views;
}

const char *fl_q8_model_tokenizer_ref(const fl_q8_model_t *q)
{
    return q->tokref;
}

int fl_q8_model_set_tokenizer_ref(fl_q8_model_t *q, const char *ref)
{
    size_t n = strlen(ref);
    if (n >= TOKREF_MAX)
        return FL_ETOOBIG;
    memcpy(q->tokref, ref, n + 1);
    return 0;
}

size_t fl_q8_model_bytes(const fl_q8_model_t *q)
{
    const fl_model_config_t *c = &q->cfg;
    size_t n = payload_bytes(c, q->gs);
    if (c->tied_output) /* the packed head is a second copy */
        n += tensor_bytes((size_t)c->vocab_size, (size_t)c->dim, q->gs);
    return n;
}

/* ---- writing ------------------------------------------------------------- */

static int append_matrix(fl_buf_t *out, const fl_q8_matrix_t *m)
{
    int rc, G = m->k / m->gs;
    int8_t *row = NULL;
    float *s = NULL;
    if ((rc = fl_buf_reserve(
             out, tensor_bytes((size_t)m->n, (size_t)m->k, m->gs))) < 0)
        return rc;
    row = fl_malloc((size_t)m->k);
    s = fl_malloc((size_t)m->n * G * sizeof(float));
    if (!row || !s) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (int j = 0; j < m->n; j++) {
        fl_q8_matrix_unpack_row(m, j, row, s + (size_t)j * G);
        if ((rc = fl_buf_append(out, row, (size_t)m->k)) < 0)
            goto out;
    }
    rc = fl_buf_append(out, s, (size_t)m->n * G * sizeof(float));
out:
    fl_free(row);
    fl_free(s);
    return rc;
}

int fl_q8_model_save_buf(const fl_q8_model_t *q, fl_buf_t *out)
{
    const fl_model_config_t *c = &q->cfg;
    uint8_t h[FL_Q8_HEADER_SIZE];
    int rc;
    memset(h, 0, sizeof h);
    memcpy(h, FL_Q8_MAGIC, 8);
    put32(h + OFF_VERSION, FL_Q8_VERSION);
    put32(h + OFF_HSIZE, FL_Q8_HEADER_SIZE);
    put32(h + OFF_FLAGS, c->tied_output ? FLAG_TIED : 0);
    const int32_t dims[8] = {c->dim,     c->hidden_dim, c->n_layers,
                             c->n_heads, c->n_kv_heads, c->vocab_size,
                             c->seq_len, q->gs};
    for (int i = 0; i < 8; i++)
        put32(h + OFF_DIMS + 4 * i, (uint32_t)dims[i]);
    putf(h + OFF_FLOATS, c->rope_theta);
    putf(h + OFF_FLOATS + 4, c->norm_eps);
    size_t tl = strlen(q->tokref);
    put32(h + OFF_TOKLEN, (uint32_t)tl);
    memcpy(h + OFF_TOKREF, q->tokref, tl);
    uint64_t pay = payload_bytes(c, q->gs);
    for (int i = 0; i < 8; i++)
        h[OFF_PAYLOAD + i] = (uint8_t)(pay >> (8 * i));
    size_t L = (size_t)c->n_layers, D = (size_t)c->dim,
           V = (size_t)c->vocab_size;
    if ((rc = fl_buf_reserve(out, sizeof h + pay)) < 0)
        return rc;
    if ((rc = fl_buf_append(out, h, sizeof h)) < 0 ||
        (rc = fl_buf_append(out, q->norms, (2 * L * D + D) * sizeof(float))) <
            0 ||
        (rc = fl_buf_append(out, q->emb_q, V * D)) < 0 ||
        (rc = fl_buf_append(out, q->emb_s,
                            V * (D / (size_t)q->gs) * sizeof(float))) < 0)
        return rc;
    for (int i = 0; i < NMAT * c->n_layers; i++)
        if ((rc = append_matrix(out, &q->mats[i])) < 0)
            return rc;
    if (!c->tied_output && (rc = append_matrix(out, &q->wcls)) < 0)
        return rc;
    return 0;
}

int fl_q8_model_save(const fl_q8_model_t *q, const char *path)
{
    fl_buf_t b;
    fl_buf_init(&b, FL_Q8_MAX_FILE);
    int rc = fl_q8_model_save_buf(q, &b);
    if (rc == 0)
        rc = fl_file_write_atomic(path, b.data, b.len, 0644);
    fl_buf_free(&b);
    return rc;
}

/* ---- loading ------------------------------------------------------------- */

static int floats_ok(const uint8_t *p, size_t n, int nonneg)
{
    for (size_t i = 0; i < n; i++) {
        float f = getf(p + 4 * i);
        if (!isfinite(f) || (nonneg && f < 0.0f))
            return 0;
    }
    return 1;
}

static int int8_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0x80)
            return 0;
    return 1;
}

/* Reads one tensor [rows, cols] at *p into row-major q/s (if not NULL) or
 * packs it into m; advances *p. The caller has checked the length. */
static int read_tensor(const uint8_t **p, int rows, int cols, int gs, int8_t *q,
                       float *s, fl_q8_matrix_t *m)
{
    size_t nq = (size_t)rows * cols, ns = (size_t)rows * (cols / gs);
    const uint8_t *pq = *p, *ps = *p + nq;
    if (!int8_ok(pq, nq) || !floats_ok(ps, ns, 1))
        return FL_EFORMAT;
    *p += nq + ns * sizeof(float);
    if (q) {
        memcpy(q, pq, nq);
        memcpy(s, ps, ns * sizeof(float));
        return 0;
    }
    /* pack straight from the image: rows are contiguous there, the scales
     * may be unaligned, so copy them first */
    float *sa = fl_malloc(ns * sizeof(float));
    if (!sa)
        return FL_ENOMEM;
    memcpy(sa, ps, ns * sizeof(float));
    fl_q8_matrix_pack(m, (const int8_t *)pq, sa);
    fl_free(sa);
    return 0;
}

int fl_q8_model_load_buf(const uint8_t *data, size_t len, fl_q8_model_t **out)
{
    fl_q8_model_t *q = NULL;
    int rc;
    *out = NULL;
    if (len == 0)
        return FL_ETRUNC;
    if (memcmp(data, FL_Q8_MAGIC, FL_MIN(len, 8)) != 0)
        return FL_EMAGIC;
    if (len < OFF_FLAGS)
        return FL_ETRUNC;
    if (get32(data + OFF_VERSION) != FL_Q8_VERSION)
        return FL_EVERSION;
    if (get32(data + OFF_HSIZE) != FL_Q8_HEADER_SIZE)
        return FL_EFORMAT;
    if (len < FL_Q8_HEADER_SIZE)
        return FL_ETRUNC;
    uint32_t flags = get32(data + OFF_FLAGS);
    if (flags & ~(uint32_t)FLAG_TIED)
        return FL_EFORMAT;
    for (size_t i = OFF_END; i < FL_Q8_HEADER_SIZE; i++)
        if (data[i])
            return FL_EFORMAT;
    fl_model_config_t c;
    memset(&c, 0, sizeof c);
    int32_t d[8];
    for (int i = 0; i < 8; i++)
        d[i] = (int32_t)get32(data + OFF_DIMS + 4 * i);
    c.dim = d[0];
    c.hidden_dim = d[1];
    c.n_layers = d[2];
    c.n_heads = d[3];
    c.n_kv_heads = d[4];
    c.vocab_size = d[5];
    c.seq_len = d[6];
    c.tied_output = (flags & FLAG_TIED) ? 1 : 0;
    c.lora_rank = 0;
    c.lora_alpha = 1.0f;
    c.rope_theta = getf(data + OFF_FLOATS);
    c.norm_eps = getf(data + OFF_FLOATS + 4);
    int gs = d[7];
    if ((rc = fl_model_config_check(&c, NULL, 0)) < 0)
        return rc;
    if ((rc = check_gs(&c, gs)) < 0)
        return rc;
    uint32_t tl = get32(data + OFF_TOKLEN);
    if (tl >= TOKREF_MAX || memchr(data + OFF_TOKREF, 0, tl))
        return FL_EFORMAT;
    for (size_t i = OFF_TOKREF + tl; i < OFF_PAYLOAD; i++)
        if (data[i])
            return FL_EFORMAT;
    uint64_t pay = 0;
    for (int i = 0; i < 8; i++)
        pay |= (uint64_t)data[OFF_PAYLOAD + i] << (8 * i);
    size_t need = payload_bytes(&c, gs);
    if (pay != need)
        return FL_EFORMAT;
    if (len - FL_Q8_HEADER_SIZE < need)
        return FL_ETRUNC;
    if (len - FL_Q8_HEADER_SIZE > need)
        return FL_EFORMAT;

    if ((rc = alloc_model(&c, gs, &q)) < 0)
        return rc;
    memcpy(q->tokref, data + OFF_TOKREF, tl);
    q->tokref[tl] = 0;
    const uint8_t *p = data + FL_Q8_HEADER_SIZE;
    size_t L = (size_t)c.n_layers, D = (size_t)c.dim;
    size_t nnorm = 2 * L * D + D;
    if (!floats_ok(p, nnorm, 0)) {
        rc = FL_EFORMAT;
        goto out;
    }
    memcpy(q->norms, p, nnorm * sizeof(float));
    p += nnorm * sizeof(float);
    if ((rc = read_tensor(&p, c.vocab_size, c.dim, gs, q->emb_q, q->emb_s,
                          NULL)) < 0)
        goto out;
    for (int t = 0; t < NMAT; t++) {
        int r, k;
        mat_shape(&c, t, &r, &k);
        for (size_t l = 0; l < L; l++)
            if ((rc = read_tensor(&p, r, k, gs, NULL, NULL,
                                  &q->mats[t * L + l])) < 0)
                goto out;
    }
    if (c.tied_output)
        fl_q8_matrix_pack(&q->wcls, q->emb_q, q->emb_s);
    else if ((rc = read_tensor(&p, c.vocab_size, c.dim, gs, NULL, NULL,
                               &q->wcls)) < 0)
        goto out;
    *out = q;
    q = NULL;
out:
    fl_q8_model_free(q);
    return rc;
}

int fl_q8_model_load(const char *path, fl_q8_model_t **out)
{
    uint8_t *data = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fl_file_read_all(path, FL_Q8_MAX_FILE, &data, &len);
    if (rc == 0)
        rc = fl_q8_model_load_buf(data, len, out);
    fl_free(data);
    return rc;
}
