/* compress/config.c — the codec description: defaults, validation, the
 * scale, the DP sensitivity after quantization and the bytes on the wire. */
#include "compress/compress.h"

#include <math.h>
#include <string.h>

void fl_compress_config_init(fl_compress_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->support = FL_COMPRESS_SUPPORT_DENSE;
    cfg->quant_bits = 8;
    cfg->clip_norm = FL_COMPRESS_DEFAULT_CLIP;
    cfg->error_feedback = 1;
    cfg->secagg = 1;
    cfg->max_summands = 1;
    cfg->ring_bits = fl_compress_ring_bits_min(8, 1);
}

unsigned fl_compress_ring_bits_min(unsigned b, uint64_t n)
{
    unsigned lg = 0; /* ceil(log2 n) */
    while (lg < 64 && (n > 1 ? (uint64_t)(n - 1) >> lg : 0) != 0)
        lg++;
    return b + lg + 1;
}

size_t fl_compress_rotation_dim(size_t d)
{
    FL_ASSERT(d >= 1 && d <= FL_COMPRESS_MAX_PARAMS);
    const size_t h = FL_COMPRESS_ROT_ROWS;
    if (d > h)
        return (d + h - 1) / h * h;
    size_t p = 1;
    while (p < d)
        p <<= 1;
    return p;
}

uint64_t fl_compress_space(const fl_compress_config_t *cfg, uint64_t d)
{
    if (d == 0 || d > FL_COMPRESS_MAX_PARAMS)
        return 0;
    return cfg->rotate ? fl_compress_rotation_dim((size_t)d) : d;
}

uint64_t fl_compress_values(const fl_compress_config_t *cfg, uint64_t d)
{
    return cfg->support == FL_COMPRESS_SUPPORT_DENSE ? fl_compress_space(cfg, d)
                                                     : cfg->support_size;
}

int32_t fl_compress_qmax(unsigned b)
{
    FL_ASSERT(b >= 1 && b <= FL_COMPRESS_MAX_BITS);
    return b == 1 ? 1 : (int32_t)((1u << (b - 1)) - 1);
}

int fl_compress_config_check(const fl_compress_config_t *cfg, uint64_t d)
{
    if (d == 0 || d > FL_COMPRESS_MAX_PARAMS)
        return FL_ERANGE;
    uint64_t D = fl_compress_space(cfg, d);
    if (!(cfg->clip_norm > 0) || !isfinite(cfg->clip_norm))
        return FL_ECONFIG;
    if (cfg->quant_bits > FL_COMPRESS_MAX_BITS)
        return FL_ECONFIG;
    if (!(cfg->range_factor >= 0) || !isfinite(cfg->range_factor) ||
        !(cfg->scale >= 0) || !isfinite(cfg->scale))
        return FL_ECONFIG;
    switch (cfg->support) {
    case FL_COMPRESS_SUPPORT_DENSE:
        break;
    case FL_COMPRESS_SUPPORT_RANDOM_K:
    case FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG:
        if (cfg->support_size == 0 || cfg->support_size > D)
            return FL_ERANGE;
        break;
    case FL_COMPRESS_SUPPORT_EXPLICIT:
        if (cfg->support_size == 0 || cfg->support_size > D ||
            !cfg->support_indices)
            return FL_ERANGE;
        for (uint64_t i = 0; i < cfg->support_size; i++) {
            uint32_t v = cfg->support_indices[i];
            if (v >= D || (i > 0 && v <= cfg->support_indices[i - 1]))
                return FL_ECONFIG;
        }
        break;
    default:
        return FL_ECONFIG;
    }
    if (cfg->secagg) {
        /* Public supports only, integer values only, and the headroom
         * rule r >= b + ceil(log2 n) + 1. */
        if (cfg->support == FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG)
            return FL_ECONFIG;
        if (cfg->quant_bits == 0 || cfg->max_summands == 0)
            return FL_ECONFIG;
        if (cfg->ring_bits < 1 || cfg->ring_bits > FL_COMPRESS_MAX_RING)
            return FL_ECONFIG;
        if (cfg->ring_bits <
            fl_compress_ring_bits_min(cfg->quant_bits, cfg->max_summands))
            return FL_ECONFIG;
    }
    return 0;
}

double fl_compress_scale(const fl_compress_config_t *cfg, uint64_t d)
{
    unsigned b = cfg->quant_bits;
    if (b == 0)
        return 0;
    if (cfg->scale > 0)
        return cfg->scale;
    double S = cfg->clip_norm;
    /* The default gamma: about the smallest relative error of one message
     * of Gaussian coordinates (what the rotation produces), measured with
     * bench compress --range-factor for b = 1..8 (docs/COMPRESSION.md). */
    double gamma =
        cfg->range_factor > 0 ? cfg->range_factor : FL_MAX(1.0, 0.25 + b / 2.0);
    uint64_t Ds = fl_compress_values(cfg, d);
    if (Ds == 0)
        return 0;
    double R = FL_MIN(S, gamma * S / sqrt((double)Ds));
    return (double)fl_compress_qmax(b) / R;
}

double fl_compress_sensitivity(const fl_compress_config_t *cfg, uint64_t d)
{
    unsigned b = cfg->quant_bits;
    double S = cfg->clip_norm;
    if (b == 0)
        return S;
    double m = (double)fl_compress_values(cfg, d);
    double scale = fl_compress_scale(cfg, d);
    double a = S + sqrt(m) / scale;
    double c = sqrt(m) * fl_compress_qmax(b) / scale;
    return FL_MIN(a, c);
}

int fl_compress_wire_bytes(const fl_compress_config_t *cfg, uint64_t d,
                           uint64_t *bytes, int *exact)
{
    int rc = fl_compress_config_check(cfg, d);
    if (rc < 0)
        return rc;
    uint64_t m = fl_compress_values(cfg, d);
    uint64_t D = fl_compress_space(cfg, d);
    int ex = 1;
    uint64_t n;
    if (cfg->secagg) {
        n = (m * cfg->ring_bits + 7) / 8;
    } else {
        n = cfg->quant_bits == 0 ? 4 * m : (m * cfg->quant_bits + 7) / 8;
        if (cfg->support == FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG) {
            n += fl_compress_indices_bytes_max((size_t)m, (size_t)D);
            ex = 0;
        }
    }
    *bytes = n;
    if (exact)
        *exact = ex;
    return 0;
}
