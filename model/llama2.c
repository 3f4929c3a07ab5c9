/*
 * model/llama2.c — llama2.c checkpoints (versions 0, 1, 2) into fl_model_t
 * (see llama2.h). The header fixes every size; the file's length must be
 * exactly that before a byte of the weights is touched.
 */
#include "model/llama2.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llama2.c checkpoints are little-endian: add byte swapping here"
#endif

#define V0_HEADER_SIZE 28 /* 7 int32 */

static int fail(char *why, size_t whylen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *why, size_t whylen, int rc, const char *fmt, ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int32_t rd_i32(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Bytes of one Q8_0 tensor of n values: int8 values, then fp32 scales. */
static uint64_t q8_bytes(uint64_t n, uint64_t gs)
{
    return n + 4 * (n / gs);
}

int fl_llama2_probe(const uint8_t *buf, size_t len, fl_llama2_info_t *info,
                    char *why, size_t whylen)
{
    fl_llama2_info_t in;
    const uint8_t *h;
    int32_t hv[7];
    char msg[160];

    memset(&in, 0, sizeof in);
    if (len < 4)
        return fail(why, whylen, FL_ETRUNC, "file of %zu bytes has no header",
                    len);
    if ((uint32_t)rd_i32(buf) == FL_LLAMA2_MAGIC) {
        if (len < FL_LLAMA2_HEADER_SIZE)
            return fail(why, whylen, FL_ETRUNC,
                        "file of %zu bytes is shorter than its %d-byte header",
                        len, FL_LLAMA2_HEADER_SIZE);
        in.version = rd_i32(buf + 4);
        if (in.version != 1 && in.version != 2)
            return fail(why, whylen, FL_EVERSION,
                        "llama2.c checkpoint version %d (supported: 0, 1, 2)",
                        in.version);
        h = buf + 8;
        if (buf[36] > 1)
            return fail(why, whylen, FL_ERANGE,
                        "shared-classifier flag is %u, not 0 or 1", buf[36]);
        in.shared_classifier = buf[36];
        if (in.version == 2)
            in.group_size = rd_i32(buf + 37);
    } else {
        if (len < V0_HEADER_SIZE)
            return fail(why, whylen, FL_ETRUNC,
                        "file of %zu bytes is shorter than a version 0 header",
                        len);
        in.version = 0;
        h = buf;
    }
    for (int i = 0; i < 7; i++)
        hv[i] = rd_i32(h + 4 * i);
    if (in.version == 0) {
        /* The sign of the vocabulary size says whether wcls is shared. */
        in.shared_classifier = hv[5] > 0;
        if (hv[5] < 0 && hv[5] != INT32_MIN)
            hv[5] = -hv[5];
    }
    fl_model_config_t *c = &in.cfg;
    fl_model_config_default(c);
    c->dim = hv[0];
    c->hidden_dim = hv[1];
    c->n_layers = hv[2];
    c->n_heads = hv[3];
    c->n_kv_heads = hv[4];
    c->vocab_size = hv[5];
    c->seq_len = hv[6];
    c->tied_output = in.shared_classifier;
    c->lora_rank = 0;
    if (fl_model_config_check(c, msg, sizeof msg) != 0)
        return fail(why, whylen, FL_ERANGE,
                    "version %d header (dim %d, hidden %d, layers %d, heads "
                    "%d, kv heads %d, vocab %d, seq %d): %s",
                    in.version, hv[0], hv[1], hv[2], hv[3], hv[4], hv[5], hv[6],
                    msg);

    uint64_t D = (uint64_t)c->dim, H = (uint64_t)c->hidden_dim,
             L = (uint64_t)c->n_layers, V = (uint64_t)c->vocab_size,
             S = (uint64_t)c->seq_len, hs = D / (uint64_t)c->n_heads,
             KV = hs * (uint64_t)c->n_kv_heads;
    uint64_t qo = D * D, kv = KV * D, ff = H * D,
             cls = in.shared_classifier ? 0 : V * D;
    uint64_t need;
    if (in.version == 0) {
        need = V0_HEADER_SIZE + 4 * (V * D + 2 * L * D + L * (2 * qo + 2 * kv) +
                                     3 * L * ff + D + 2 * S * (hs / 2) + cls);
    } else if (in.version == 1) {
        need =
            FL_LLAMA2_HEADER_SIZE +
            4 * (2 * L * D + D + V * D + L * (2 * qo + 2 * kv + 3 * ff) + cls);
    } else {
        int64_t gs = in.group_size;
        if (gs < 1 || (V * D) % (uint64_t)gs || kv % (uint64_t)gs ||
            qo % (uint64_t)gs || ff % (uint64_t)gs)
            return fail(why, whylen, FL_ERANGE,
                        "Q8_0 group size %d does not divide every weight "
                        "matrix",
                        in.group_size);
        uint64_t g = (uint64_t)gs;
        need = FL_LLAMA2_HEADER_SIZE + 4 * (2 * L * D + D) +
               q8_bytes(V * D, g) +
               L * (2 * q8_bytes(qo, g) + 2 * q8_bytes(kv, g) +
                    3 * q8_bytes(ff, g)) +
               (cls ? q8_bytes(cls, g) : 0);
    }
    if ((uint64_t)len < need)
        return fail(why, whylen, FL_ETRUNC,
                    "version %d checkpoint is truncated: %zu bytes, the "
                    "header implies %llu",
                    in.version, len, (unsigned long long)need);
    if ((uint64_t)len > need)
        return fail(why, whylen, FL_EFORMAT,
                    "version %d checkpoint has %llu trailing bytes (%zu "
                    "bytes, the header implies %llu)",
                    in.version, (unsigned long long)((uint64_t)len - need), len,
                    (unsigned long long)need);
    in.file_size = (size_t)need;
    if (info)
        *info = in;
    return 0;
}

/* Copies n fp32 values from the (possibly unaligned) file. */
static const uint8_t *take_f32(float *dst, const uint8_t *p, size_t n)
{
    memcpy(dst, p, n * sizeof *dst);
    return p + n * sizeof *dst;
}

/* Dequantizes one Q8_0 tensor of n values (n % gs == 0). */
static const uint8_t *take_q8(float *dst, const uint8_t *p, size_t n, size_t gs)
{
    const int8_t *q = (const int8_t *)p;
    const uint8_t *s = p + n;
    for (size_t g = 0; g < n / gs; g++) {
        float scale;
        memcpy(&scale, s + 4 * g, sizeof scale);
        for (size_t i = 0; i < gs; i++)
            dst[g * gs + i] = (float)q[g * gs + i] * scale;
    }
    return s + 4 * (n / gs);
}

int fl_llama2_import_buf(const uint8_t *buf, size_t len, fl_model_t **out,
                         fl_llama2_info_t *info, char *why, size_t whylen)
{
    fl_llama2_info_t in;
    fl_model_t *m = NULL;
    int rc;

    *out = NULL;
    if ((rc = fl_llama2_probe(buf, len, &in, why, whylen)) != 0)
        return rc;
    if ((rc = fl_model_new(&in.cfg, &m)) != 0)
        return fail(why, whylen, rc, "cannot allocate the model: %s",
                    fl_strerror(rc));
    const fl_model_config_t *c = &in.cfg;
    fl_model_weights_t *w = fl_model_weights(m);
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           S = (size_t)c->seq_len, hs = D / (size_t)c->n_heads,
           KV = hs * (size_t)c->n_kv_heads;
    const uint8_t *p;
    if (in.version == 0) {
        p = take_f32(w->token_embedding, buf + V0_HEADER_SIZE, V * D);
        p = take_f32(w->rms_att, p, L * D);
        p = take_f32(w->wq, p, L * D * D);
        p = take_f32(w->wk, p, L * KV * D);
        p = take_f32(w->wv, p, L * KV * D);
        p = take_f32(w->wo, p, L * D * D);
        p = take_f32(w->rms_ffn, p, L * D);
        p = take_f32(w->w1, p, L * H * D);
        p = take_f32(w->w2, p, L * D * H);
        p = take_f32(w->w3, p, L * H * D);
        p = take_f32(w->rms_final, p, D);
        p += 2 * S * (hs / 2) * sizeof(float); /* RoPE tables */
        if (!in.shared_classifier)
            p = take_f32(w->wcls, p, V * D);
    } else if (in.version == 1) {
        p = take_f32(w->rms_att, buf + FL_LLAMA2_HEADER_SIZE, L * D);
        p = take_f32(w->rms_ffn, p, L * D);
        p = take_f32(w->rms_final, p, D);
        p = take_f32(w->token_embedding, p, V * D);
        p = take_f32(w->wq, p, L * D * D);
        p = take_f32(w->wk, p, L * KV * D);
        p = take_f32(w->wv, p, L * KV * D);
        p = take_f32(w->wo, p, L * D * D);
        p = take_f32(w->w1, p, L * H * D);
        p = take_f32(w->w2, p, L * D * H);
        p = take_f32(w->w3, p, L * H * D);
        if (!in.shared_classifier)
            p = take_f32(w->wcls, p, V * D);
    } else {
        size_t gs = (size_t)in.group_size;
        p = take_f32(w->rms_att, buf + FL_LLAMA2_HEADER_SIZE, L * D);
        p = take_f32(w->rms_ffn, p, L * D);
        p = take_f32(w->rms_final, p, D);
        p = take_q8(w->token_embedding, p, V * D, gs);
        struct {
            float *base;
            size_t per_layer;
        } mats[7] = {{w->wq, D * D}, {w->wk, KV * D}, {w->wv, KV * D},
                     {w->wo, D * D}, {w->w1, H * D},  {w->w2, D * H},
                     {w->w3, H * D}};
        for (int k = 0; k < 7; k++)
            for (size_t l = 0; l < L; l++)
                p = take_q8(mats[k].base + l * mats[k].per_layer, p,
                            mats[k].per_layer, gs);
        if (!in.shared_classifier)
            p = take_q8(w->wcls, p, V * D, gs);
    }
    FL_ASSERT(p == buf + in.file_size);
    /* A NaN or infinity would poison every step of training. */
    const float *base = fl_model_base_params(m);
    size_t nb = fl_model_config_num_base(c);
    for (size_t i = 0; i < nb; i++) {
        if (!isfinite(base[i])) {
            rc = fail(why, whylen, FL_EFORMAT,
                      "weight %zu of the checkpoint is not a finite number", i);
            fl_model_free(m);
            return rc;
        }
    }
    if (info)
        *info = in;
    *out = m;
    return 0;
}

int fl_llama2_import_file(const char *path, fl_model_t **out,
                          fl_llama2_info_t *info, char *why, size_t whylen)
{
    struct stat st;
    void *map = MAP_FAILED;
    int fd, rc;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = fl_err_from_errno(errno);
        return fail(why, whylen, rc, "%s: %s", path, fl_strerror(rc));
    }
    if (fstat(fd, &st) != 0) {
        rc = fl_err_from_errno(errno);
        fail(why, whylen, rc, "%s: %s", path, fl_strerror(rc));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = fail(why, whylen, FL_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > FL_LLAMA2_MAX_FILE) {
        rc = fail(why, whylen, FL_ETOOBIG, "%s: larger than %zu bytes", path,
                  FL_LLAMA2_MAX_FILE);
        goto out;
    }
    if (st.st_size < 4) {
        rc = fail(why, whylen, FL_ETRUNC, "%s: %lld bytes, no header", path,
                  (long long)st.st_size);
        goto out;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = fl_err_from_errno(errno);
        fail(why, whylen, rc, "%s: %s", path, fl_strerror(rc));
        goto out;
    }
    rc = fl_llama2_import_buf(map, (size_t)st.st_size, out, info, why, whylen);
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)st.st_size);
    close(fd);
    return rc;
}

int fl_llama2_import(const char *checkpoint, const char *tokenizer,
                     fl_model_t **model, fl_tokenizer_t **tok,
                     fl_llama2_info_t *info, char *why, size_t whylen)
{
    fl_model_t *m = NULL;
    fl_tokenizer_t *t = NULL;
    int rc;

    *model = NULL;
    if (tok)
        *tok = NULL;
    if ((rc = fl_tokenizer_load(tokenizer, &t)) != 0) {
        fail(why, whylen, rc, "%s: %s", tokenizer, fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_llama2_import_file(checkpoint, &m, info, why, whylen)) != 0)
        goto out;
    int nv = fl_tokenizer_vocab_size(t), mv = fl_model_config(m)->vocab_size;
    if (nv != mv) {
        rc = fail(why, whylen, FL_EFORMAT,
                  "%s has %d tokens but the checkpoint's vocabulary is %d",
                  tokenizer, nv, mv);
        goto out;
    }
    *model = m;
    m = NULL;
    if (tok) {
        *tok = t;
        t = NULL;
    }
out:
    fl_model_free(m);
    fl_tokenizer_free(t);
    return rc;
}
