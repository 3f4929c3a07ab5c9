/*
 * model/modelfile.c — model.bin: writer and a loader that checks every size
 * against the image's length before it reads or allocates anything.
 * The layout is documented in model.h.
 */
#include "model/model.h"
#include "model/model_internal.h"

#include <math.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model.bin stores raw little-endian floats; add byte swapping here"
#endif

enum {
    OFF_VERSION = 8,
    OFF_HSIZE = 12,
    OFF_FLAGS = 16,
    OFF_DIMS = 20, /* 8 x i32 */
    OFF_FLOATS = 52,
    OFF_TOKLEN = 64,
    OFF_TOKREF = 68,
    OFF_NBASE = 324,
    OFF_NLORA = 332,
    OFF_STEP = 340,
};

enum { FLAG_TIED = 1, FLAG_OPTIM = 2, FLAG_KNOWN = 3 };

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
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

int fl_model_save_buf(const fl_model_t *m, int flags, fl_buf_t *out)
{
    const fl_model_config_t *c = &m->cfg;
    uint8_t h[FL_MODEL_HEADER_SIZE];
    int with_opt = (flags & FL_MODEL_SAVE_OPTIM) && m->opt;
    size_t ntrain = fl_model_num_params(m);
    memset(h, 0, sizeof h);
    memcpy(h, FL_MODEL_MAGIC, 8);
    put32(h + OFF_VERSION, FL_MODEL_VERSION);
    put32(h + OFF_HSIZE, FL_MODEL_HEADER_SIZE);
    put32(h + OFF_FLAGS,
          (c->tied_output ? FLAG_TIED : 0) | (with_opt ? FLAG_OPTIM : 0));
    const int32_t dims[8] = {c->dim,     c->hidden_dim, c->n_layers,
                             c->n_heads, c->n_kv_heads, c->vocab_size,
                             c->seq_len, c->lora_rank};
    for (int i = 0; i < 8; i++)
        put32(h + OFF_DIMS + 4 * i, (uint32_t)dims[i]);
    putf(h + OFF_FLOATS, c->lora_alpha);
    putf(h + OFF_FLOATS + 4, c->rope_theta);
    putf(h + OFF_FLOATS + 8, c->norm_eps);
    size_t tl = strlen(m->tokref);
    put32(h + OFF_TOKLEN, (uint32_t)tl);
    memcpy(h + OFF_TOKREF, m->tokref, tl);
    put64(h + OFF_NBASE, m->n_base);
    put64(h + OFF_NLORA, c->lora_rank > 0 ? m->n_lora : 0);
    put64(h + OFF_STEP, with_opt ? (uint64_t)m->step : 0);
    int rc;
    if ((rc = fl_buf_append(out, h, sizeof h)) < 0)
        return rc;
    if ((rc = fl_buf_append(out, m->base, m->n_base * sizeof(float))) < 0)
        return rc;
    if (c->lora_rank > 0 &&
        (rc = fl_buf_append(out, m->adapters, m->n_lora * sizeof(float))) < 0)
        return rc;
    if (with_opt &&
        (rc = fl_buf_append(out, m->opt, 2 * ntrain * sizeof(float))) < 0)
        return rc;
    return 0;
}

int fl_model_save(const fl_model_t *m, const char *path, int flags)
{
    fl_buf_t b;
    fl_buf_init(&b, FL_MODEL_MAX_FILE);
    int rc = fl_model_save_buf(m, flags, &b);
    if (rc == 0)
        rc = fl_file_write_atomic(path, b.data, b.len, 0644);
    fl_buf_free(&b);
    return rc;
}

static int all_finite(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return 0;
    return 1;
}

int fl_model_load_buf(const uint8_t *data, size_t len, fl_model_t **out)
{
    fl_model_t *m = NULL;
    int rc = 0;
    *out = NULL;
    if (len == 0)
        return FL_ETRUNC;
    if (memcmp(data, FL_MODEL_MAGIC, FL_MIN(len, 8)) != 0)
        return FL_EMAGIC;
    if (len < OFF_FLAGS)
        return FL_ETRUNC;
    if (get32(data + OFF_VERSION) != FL_MODEL_VERSION)
        return FL_EVERSION;
    if (get32(data + OFF_HSIZE) != FL_MODEL_HEADER_SIZE)
        return FL_EFORMAT;
    if (len < FL_MODEL_HEADER_SIZE)
        return FL_ETRUNC;
    uint32_t flags = get32(data + OFF_FLAGS);
    if (flags & ~(uint32_t)FLAG_KNOWN)
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
    c.lora_rank = d[7];
    c.tied_output = (flags & FLAG_TIED) ? 1 : 0;
    c.lora_alpha = getf(data + OFF_FLOATS);
    c.rope_theta = getf(data + OFF_FLOATS + 4);
    c.norm_eps = getf(data + OFF_FLOATS + 8);
    if ((rc = fl_model_config_check(&c, NULL, 0)) < 0)
        return rc;
    uint32_t tl = get32(data + OFF_TOKLEN);
    if (tl >= FL_MODEL_TOKREF_MAX || memchr(data + OFF_TOKREF, 0, tl))
        return FL_EFORMAT;
    size_t nbase = fl_model_config_num_base(&c);
    size_t nlora = fl_model_config_num_lora(&c);
    if (get64(data + OFF_NBASE) != nbase || get64(data + OFF_NLORA) != nlora)
        return FL_EFORMAT;
    int64_t step = (int64_t)get64(data + OFF_STEP);
    if (step < 0)
        return FL_EFORMAT;
    size_t ntrain = c.lora_rank > 0 ? nlora : nbase;
    /* counts are < 2^32 each (config limits), so no overflow here */
    size_t nfloat = nbase + nlora + ((flags & FLAG_OPTIM) ? 2 * ntrain : 0);
    size_t need = FL_MODEL_HEADER_SIZE + nfloat * sizeof(float);
    if (len < need)
        return FL_ETRUNC;
    if (len > need)
        return FL_EFORMAT;
    if ((rc = fl_model_new(&c, &m)) < 0)
        return rc;
    const uint8_t *p = data + FL_MODEL_HEADER_SIZE;
    memcpy(m->base, p, nbase * sizeof(float));
    p += nbase * sizeof(float);
    if (nlora) {
        memcpy(m->adapters, p, nlora * sizeof(float));
        p += nlora * sizeof(float);
    }
    if (!all_finite(m->base, nbase) ||
        (nlora && !all_finite(m->adapters, nlora))) {
        rc = FL_EFORMAT;
        goto out;
    }
    if (flags & FLAG_OPTIM) {
        m->opt = fl_aligned_alloc(64, (2 * ntrain + 1) * sizeof(float));
        if (!m->opt) {
            rc = FL_ENOMEM;
            goto out;
        }
        memcpy(m->opt, p, 2 * ntrain * sizeof(float));
        if (!all_finite(m->opt, 2 * ntrain)) {
            rc = FL_EFORMAT;
            goto out;
        }
        m->step = step;
    }
    memcpy(m->tokref, data + OFF_TOKREF, tl);
    m->tokref[tl] = 0;
    *out = m;
    m = NULL;
out:
    fl_model_free(m);
    return rc;
}

int fl_model_load(const char *path, fl_model_t **out)
{
    uint8_t *data = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fl_file_read_all(path, FL_MODEL_MAX_FILE, &data, &len);
    if (rc < 0)
        return rc;
    rc = fl_model_load_buf(data, len, out);
    fl_free(data);
    return rc;
}
