/* compress/codec.c — the whole client and server pipelines for one codec
 * configuration (see the header comment of compress/compress.h). */
#include "compress/compress.h"
#include "common/bitpack.h"

#include <math.h>
#include <string.h>

struct fl_compress {
    fl_compress_config_t cfg;
    uint64_t d, D, m;
    float scale, inv_scale;
    double sensitivity;
    uint32_t *support; /* [m] sorted indices; NULL for dense */
    float *work;       /* [D] the transmit-space vector */
    float *vals;       /* [m] gathered values (sparse supports) */
    int32_t *q;        /* [m] grid values */
};

void fl_compress_free(fl_compress_t *c)
{
    if (!c)
        return;
    fl_free(c->support);
    fl_free(c->work);
    fl_free(c->vals);
    fl_free(c->q);
    fl_free(c);
}

int fl_compress_new(fl_compress_t **out, const fl_compress_config_t *cfg,
                    uint64_t d)
{
    fl_compress_t *c = NULL;
    uint64_t *bits = NULL;
    int rc = fl_compress_config_check(cfg, d);
    *out = NULL;
    if (rc < 0)
        goto out;
    rc = FL_ENOMEM;
    c = fl_calloc(1, sizeof *c);
    if (!c)
        goto out;
    c->cfg = *cfg;
    c->d = d;
    c->D = fl_compress_space(cfg, d);
    c->m = fl_compress_values(cfg, d);
    c->scale = (float)fl_compress_scale(cfg, d);
    c->inv_scale = c->scale > 0 ? 1.0f / c->scale : 0;
    c->sensitivity = fl_compress_sensitivity(cfg, d);
    /* Sizes fit size_t even on 32-bit devices: D <= 2^30 floats would not
     * (4 GiB), so check the products. */
    size_t wbytes, qbytes;
    if (fl_mul_size((size_t)c->D, sizeof(float), &wbytes) < 0 ||
        fl_mul_size((size_t)FL_MAX(c->m, 1), sizeof(int32_t), &qbytes) < 0) {
        rc = FL_ETOOBIG;
        goto out;
    }
    c->work = fl_aligned_alloc(64, wbytes);
    c->q = fl_aligned_alloc(64, qbytes);
    if (!c->work || !c->q)
        goto out;
    if (cfg->support != FL_COMPRESS_SUPPORT_DENSE) {
        c->support = fl_malloc(qbytes); /* m uint32_t */
        if (!c->support)
            goto out;
    }
    if (cfg->support != FL_COMPRESS_SUPPORT_DENSE || cfg->quant_bits == 0) {
        c->vals = fl_aligned_alloc(64, qbytes); /* m floats */
        if (!c->vals)
            goto out;
    }
    if (cfg->support == FL_COMPRESS_SUPPORT_RANDOM_K) {
        bits = fl_malloc((c->D + 63) / 64 * sizeof(uint64_t));
        if (!bits)
            goto out;
        rc = fl_compress_support_random_k(c->support, bits, (size_t)c->m,
                                          (size_t)c->D, cfg->support_seed);
        if (rc < 0)
            goto out;
    } else if (cfg->support == FL_COMPRESS_SUPPORT_EXPLICIT) {
        memcpy(c->support, cfg->support_indices, c->m * sizeof(uint32_t));
    }
    c->cfg.support_indices =
        cfg->support == FL_COMPRESS_SUPPORT_EXPLICIT ? c->support : NULL;
    *out = c;
    c = NULL;
    rc = 0;
out:
    fl_free(bits);
    fl_compress_free(c);
    return rc;
}

const fl_compress_config_t *fl_compress_config(const fl_compress_t *c)
{
    return &c->cfg;
}
uint64_t fl_compress_dim(const fl_compress_t *c)
{
    return c->d;
}
uint64_t fl_compress_space_dim(const fl_compress_t *c)
{
    return c->D;
}
uint64_t fl_compress_value_count(const fl_compress_t *c)
{
    return c->m;
}
double fl_compress_scale_of(const fl_compress_t *c)
{
    return c->scale;
}

/* The client pipeline up to the grid values: c->q (or c->vals / c->work
 * for fp32) and, for top-k, c->support. */
static int encode(fl_compress_t *c, const float *delta, float *residual,
                  fl_rng_t *rng, double *norm_out)
{
    const size_t d = (size_t)c->d, D = (size_t)c->D, m = (size_t)c->m;
    const double S = c->cfg.clip_norm;
    float *w = c->work;

    double norm = fl_compress_l2_norm(delta, d);
    if (norm_out)
        *norm_out = norm;
    if (!isfinite(norm))
        return FL_ERANGE;
    /* x = clip_S(delta) + residual, kept in residual (it becomes the new
     * residual once what is sent is subtracted). */
    float f1 = norm > S ? (float)(S / norm * (1.0 - 1e-6)) : 1.0f;
    if (residual) {
        for (size_t i = 0; i < d; i++)
            residual[i] += delta[i] * f1;
        memcpy(w, residual, d * sizeof(float));
    } else {
        for (size_t i = 0; i < d; i++)
            w[i] = delta[i] * f1;
    }
    memset(w + d, 0, (D - d) * sizeof(float));
    if (residual && !isfinite(fl_compress_l2_norm(w, d)))
        return FL_ERANGE; /* the residual was not finite */

    if (c->cfg.rotate)
        fl_compress_rotate(w, D, c->cfg.rotation_seed);

    /* v: the m values to send, clipped to S (what leaves the device is
     * bounded, whatever the residual holds). */
    float *v = w;
    if (c->cfg.support == FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG) {
        int rc = fl_compress_support_top_k(c->support, w, D, m);
        if (rc < 0)
            return rc;
    }
    if (c->support) {
        for (size_t j = 0; j < m; j++)
            c->vals[j] = w[c->support[j]];
        v = c->vals;
    }
    (void)fl_compress_clip(v, m, S);
    const unsigned b = c->cfg.quant_bits;
    if (b > 0)
        fl_compress_quantize(c->q, v, m, c->scale, b, rng);
    else if (v != c->vals)
        memcpy(c->vals, v, m * sizeof(float)); /* fp32: vals is sent */

    if (!residual)
        return 0;
    /* residual = x - unrotate(scatter(sent)). */
    if (!c->cfg.rotate && c->support) {
        for (size_t j = 0; j < m; j++)
            residual[c->support[j]] -=
                b > 0 ? (float)c->q[j] * c->inv_scale : c->vals[j];
        return 0;
    }
    if (c->support) {
        memset(w, 0, D * sizeof(float));
        for (size_t j = 0; j < m; j++)
            w[c->support[j]] =
                b > 0 ? (float)c->q[j] * c->inv_scale : c->vals[j];
    } else if (b > 0) {
        fl_compress_dequantize(w, c->q, m, c->scale);
    } /* dense fp32: w holds what is sent (and vals a copy of it) */
    if (c->cfg.rotate)
        fl_compress_unrotate(w, D, c->cfg.rotation_seed);
    for (size_t i = 0; i < d; i++)
        residual[i] -= w[i];
    return 0;
}

int fl_compress_encode_ring(fl_compress_t *c, uint32_t *ring,
                            const float *delta, float *residual, fl_rng_t *rng,
                            double *norm)
{
    if (!c->cfg.secagg)
        return FL_ECONFIG;
    int rc = encode(c, delta, residual, rng, norm);
    if (rc < 0)
        return rc;
    fl_compress_lift(ring, c->q, (size_t)c->m, c->cfg.ring_bits);
    return 0;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static size_t values_bytes(const fl_compress_t *c)
{
    unsigned b = c->cfg.quant_bits;
    return b == 0 ? 4 * (size_t)c->m : fl_bitpack_bytes((size_t)c->m, b);
}

int fl_compress_encode_payload(fl_compress_t *c, uint8_t *out, size_t cap,
                               size_t *len, const float *delta, float *residual,
                               fl_rng_t *rng, double *norm)
{
    const size_t m = (size_t)c->m;
    const unsigned b = c->cfg.quant_bits;
    size_t o = 0;
    if (c->cfg.secagg)
        return FL_ECONFIG;
    int rc = encode(c, delta, residual, rng, norm);
    if (rc < 0)
        return rc;
    if (c->cfg.support == FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG) {
        rc = fl_compress_indices_encode(out, cap, &o, c->support, m,
                                        (size_t)c->D);
        if (rc < 0)
            return rc;
    }
    size_t vb = values_bytes(c);
    if (vb > cap - o)
        return FL_ETOOBIG;
    if (b == 0) {
        for (size_t j = 0; j < m; j++) {
            uint32_t u;
            memcpy(&u, &c->vals[j], sizeof u);
            put_le32(out + o + 4 * j, u);
        }
    } else {
        /* b-bit two's complement, in place over q (int32_t and uint32_t
         * may alias); the sign grid sends 1 for +1 and 0 for -1. */
        uint32_t *u = (uint32_t *)c->q;
        const uint32_t mask = (uint32_t)((1ull << b) - 1);
        for (size_t j = 0; j < m; j++)
            u[j] = b == 1 ? (uint32_t)(c->q[j] > 0) : (uint32_t)c->q[j] & mask;
        fl_bitpack(out + o, u, m, b);
    }
    *len = o + vb;
    return 0;
}

static void scatter_scaled(fl_compress_t *c, float *w, const int32_t *q,
                           float f)
{
    const size_t D = (size_t)c->D, m = (size_t)c->m;
    if (!c->support) {
        for (size_t i = 0; i < D; i++)
            w[i] = (float)q[i] * f;
        return;
    }
    memset(w, 0, D * sizeof(float));
    for (size_t j = 0; j < m; j++)
        w[c->support[j]] = (float)q[j] * f;
}

int fl_compress_decode_ring_sum(fl_compress_t *c, float *out,
                                const uint32_t *sum, double denom)
{
    if (!c->cfg.secagg)
        return FL_ECONFIG;
    if (!(denom > 0))
        return FL_EINVAL;
    fl_compress_unlift(c->q, sum, (size_t)c->m, c->cfg.ring_bits);
    float f = (float)(1.0 / ((double)c->scale * denom));
    scatter_scaled(c, c->work, c->q, f);
    if (c->cfg.rotate)
        fl_compress_unrotate(c->work, (size_t)c->D, c->cfg.rotation_seed);
    memcpy(out, c->work, (size_t)c->d * sizeof(float));
    return 0;
}

int fl_compress_accumulate_payload(fl_compress_t *c, float *acc,
                                   const uint8_t *in, size_t len)
{
    const size_t m = (size_t)c->m;
    const unsigned b = c->cfg.quant_bits;
    size_t pos = 0;
    int rc;
    if (c->cfg.secagg)
        return FL_ECONFIG;
    if (c->cfg.support == FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG) {
        size_t D, k;
        rc = fl_compress_indices_peek(in, len, (size_t)c->D, &D, &k, &pos);
        if (rc < 0)
            return rc;
        if (D != c->D || k != m)
            return FL_EFORMAT;
        rc = fl_compress_indices_decode(c->support, m, &k, &D, in, pos,
                                        (size_t)c->D);
        if (rc < 0)
            return rc;
    }
    if (len - pos != values_bytes(c))
        return len - pos < values_bytes(c) ? FL_ETRUNC : FL_EFORMAT;
    const uint8_t *p = in + pos;
    /* Decode into vals (sparse) or work (dense), check, then add. */
    float *v = c->vals ? c->vals : c->work;
    double norm2 = 0, bound;
    if (b == 0) {
        for (size_t j = 0; j < m; j++) {
            uint32_t u = get_le32(p + 4 * j);
            memcpy(&v[j], &u, sizeof u);
            if (!isfinite(v[j]))
                return FL_ERANGE;
            norm2 += (double)v[j] * v[j];
        }
    } else {
        uint32_t *u = (uint32_t *)c->q;
        fl_bitunpack(u, p, m, b);
        const int64_t half = (int64_t)1 << (b - 1);
        for (size_t j = 0; j < m; j++) {
            int64_t s;
            if (b == 1) {
                s = u[j] ? 1 : -1;
            } else {
                s = (int64_t)u[j] - (u[j] >= (uint64_t)half ? 2 * half : 0);
                if (s == -half)
                    return FL_ERANGE; /* not on the symmetric grid */
            }
            v[j] = (float)s * c->inv_scale;
            norm2 += (double)v[j] * v[j];
        }
    }
    bound = c->sensitivity * (1 + 1e-3);
    if (!(sqrt(norm2) <= bound))
        return FL_ERANGE;
    if (c->support) {
        for (size_t j = 0; j < m; j++)
            acc[c->support[j]] += v[j];
    } else {
        for (size_t j = 0; j < m; j++)
            acc[j] += v[j];
    }
    return 0;
}

int fl_compress_finish(fl_compress_t *c, float *out, float *acc, double denom)
{
    if (!(denom > 0))
        return FL_EINVAL;
    if (c->cfg.rotate)
        fl_compress_unrotate(acc, (size_t)c->D, c->cfg.rotation_seed);
    float f = (float)(1.0 / denom);
    for (size_t i = 0; i < (size_t)c->d; i++)
        out[i] = acc[i] * f;
    return 0;
}
