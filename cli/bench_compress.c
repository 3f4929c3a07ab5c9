/* cli/bench_compress.c — flotilla bench compress: the update codecs on one
 * delta vector (heavy-tailed synthetic, or a raw float32 file), kernel by
 * kernel, with memcpy of the same bytes as the reference rate.
 *
 * --make-deltas FILE produces such a file from real training: the tiny
 * model is trained centrally on "public" fortunes topics (the global
 * model), then fine-tuned locally on one other topic as a client would in
 * a round; local - global is written as raw little-endian float32. */
#include "cli/cli.h"
#include "common/bitpack.h"
#include "compress/compress.h"
#include "model/model.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

typedef struct {
    int64_t params;
    int64_t reps;
    int64_t cohort;
    int64_t seed;
    double tail_dof;
    char *deltas;
    int json;
    char *make_deltas;
    char *data;
    char *public_topics;
    char *topic;
    int64_t pretrain_steps;
    int64_t local_steps;
    double local_lr;
    double range_factor;
    int64_t ef_rounds;
    double clip_factor;
} bench_opts_t;

static const fl_cfg_opt_t opts[] = {
    {"params", FL_CFG_INT, offsetof(bench_opts_t, params), "1000000", 1,
     FL_COMPRESS_MAX_PARAMS, NULL, NULL,
     "d, the length of the synthetic delta"},
    {"reps", FL_CFG_INT, offsetof(bench_opts_t, reps), "5", 1, 1000, NULL, NULL,
     "repetitions of every timing (the best is kept)"},
    {"cohort", FL_CFG_INT, offsetof(bench_opts_t, cohort), "100", 1, 1 << 24,
     NULL, NULL, "n, clients summed in the ring (sets r)"},
    {"seed", FL_CFG_INT, offsetof(bench_opts_t, seed), "1", 0, 1e18, NULL, NULL,
     "seed of the synthetic delta and of every codec"},
    {"tail-dof", FL_CFG_DOUBLE, offsetof(bench_opts_t, tail_dof), "3", 1, 1000,
     NULL, NULL, "degrees of freedom of the Student-t synthetic delta"},
    {"deltas", FL_CFG_STRING, offsetof(bench_opts_t, deltas), NULL, 1, 0, NULL,
     NULL, "raw little-endian float32 file: measure this delta instead"},
    {"json", FL_CFG_BOOL, offsetof(bench_opts_t, json), "false", 1, 0, NULL,
     NULL, "print JSON"},
    {"range-factor", FL_CFG_DOUBLE, offsetof(bench_opts_t, range_factor), "0",
     0, 1e6, NULL, NULL,
     "gamma of the scale formula for every codec; 0 = max(1, 1/4 + b/2)"},
    {"clip-factor", FL_CFG_DOUBLE, offsetof(bench_opts_t, clip_factor), "1", 1,
     1e6, NULL, NULL, "clip norm S = this times ||x||"},
    {"ef-rounds", FL_CFG_INT, offsetof(bench_opts_t, ef_rounds), "10", 0, 1000,
     NULL, NULL, "rounds of the same delta with error feedback (0 = skip)"},
    {"make-deltas", FL_CFG_STRING, offsetof(bench_opts_t, make_deltas), NULL, 1,
     0, NULL, NULL,
     "train the tiny model and write local - global to this file instead"},
    {"data", FL_CFG_STRING, offsetof(bench_opts_t, data),
     "/usr/share/games/fortunes", 1, 0, NULL, NULL,
     "--make-deltas: directory of text files"},
    {"public-topics", FL_CFG_STRING, offsetof(bench_opts_t, public_topics),
     "fortunes,literature,people,wisdom,science", 1, 0, NULL, NULL,
     "--make-deltas: files the global model is trained on"},
    {"topic", FL_CFG_STRING, offsetof(bench_opts_t, topic), "computers", 1, 0,
     NULL, NULL, "--make-deltas: the client's file"},
    {"pretrain-steps", FL_CFG_INT, offsetof(bench_opts_t, pretrain_steps),
     "300", 0, 1e6, NULL, NULL, "--make-deltas: steps of the global model"},
    {"local-steps", FL_CFG_INT, offsetof(bench_opts_t, local_steps), "20", 1,
     1e6, NULL, NULL, "--make-deltas: steps of the client's round"},
    {"local-lr", FL_CFG_DOUBLE, offsetof(bench_opts_t, local_lr), "0.001", 0, 1,
     NULL, NULL, "--make-deltas: the client's AdamW learning rate"},
};
static const fl_cfg_table_t table = {opts, FL_ARRAY_LEN(opts), "bench"};

typedef struct {
    const char *name;
    fl_compress_support_t support;
    double frac; /* k / D for sparse supports */
    unsigned b;
    int rotate;
    int secagg;
} codec_t;

static const codec_t codecs[] = {
    {"dense-8", FL_COMPRESS_SUPPORT_DENSE, 1, 8, 0, 1},
    {"dense-8-rot", FL_COMPRESS_SUPPORT_DENSE, 1, 8, 1, 1},
    {"dense-4", FL_COMPRESS_SUPPORT_DENSE, 1, 4, 0, 1},
    {"dense-4-rot", FL_COMPRESS_SUPPORT_DENSE, 1, 4, 1, 1},
    {"dense-2", FL_COMPRESS_SUPPORT_DENSE, 1, 2, 0, 1},
    {"dense-2-rot", FL_COMPRESS_SUPPORT_DENSE, 1, 2, 1, 1},
    {"dense-1", FL_COMPRESS_SUPPORT_DENSE, 1, 1, 0, 1},
    {"dense-1-rot", FL_COMPRESS_SUPPORT_DENSE, 1, 1, 1, 1},
    {"randk10-8", FL_COMPRESS_SUPPORT_RANDOM_K, 0.10, 8, 0, 1},
    {"randk10-8-rot", FL_COMPRESS_SUPPORT_RANDOM_K, 0.10, 8, 1, 1},
    {"randk10-4-rot", FL_COMPRESS_SUPPORT_RANDOM_K, 0.10, 4, 1, 1},
    {"topk1-8-nosecagg", FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG, 0.01, 8, 0, 0},
    {"topk1-8-rot-nosecagg", FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG, 0.01, 8, 1,
     0},
    {"dense-8-nosecagg", FL_COMPRESS_SUPPORT_DENSE, 1, 8, 0, 0},
};

/* Student-t with nu degrees of freedom, times 1e-3 (a delta's scale):
 * heavy-tailed like real updates, finite variance for nu > 2. */
static void fill_student_t(float *x, size_t n, double nu, uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    int k = (int)nu;
    for (size_t i = 0; i < n; i++) {
        double chi = 0;
        for (int j = 0; j < k; j++) {
            double g = fl_rng_normal(&r);
            chi += g * g;
        }
        x[i] = (float)(1e-3 * fl_rng_normal(&r) / sqrt(chi / k));
    }
}

/* Best of reps, after one untimed run (page faults, caches): seconds. */
#define TIME_BEST(reps, best, body)                                            \
    do {                                                                       \
        body;                                                                  \
        (best) = 1e30;                                                         \
        for (int64_t rep_ = 0; rep_ < (reps); rep_++) {                        \
            double t0_ = fl_time_mono_s();                                     \
            body;                                                              \
            double dt_ = fl_time_mono_s() - t0_;                               \
            if (dt_ < (best))                                                  \
                (best) = dt_;                                                  \
        }                                                                      \
    } while (0)

static double gbps(double bytes, double s)
{
    return s > 0 ? bytes / s / 1e9 : 0;
}

static double round3(double v)
{
    return v == 0 || !isfinite(v) ? v : round(v * 1000) / 1000;
}

static int load_deltas(const char *path, float **out, size_t *n)
{
    uint8_t *data = NULL;
    size_t len;
    int rc =
        fl_file_read_all(path, (size_t)FL_COMPRESS_MAX_PARAMS * 4, &data, &len);
    if (rc < 0)
        return rc;
    if (len == 0 || len % 4) {
        fl_free(data);
        return FL_EFORMAT;
    }
    *n = len / 4;
    *out = fl_malloc(len);
    if (!*out) {
        fl_free(data);
        return FL_ENOMEM;
    }
    for (size_t i = 0; i < *n; i++) {
        uint32_t u = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                     (uint32_t)data[4 * i + 2] << 16 |
                     (uint32_t)data[4 * i + 3] << 24;
        memcpy(&(*out)[i], &u, 4);
        if (!isfinite((*out)[i])) {
            fl_free(data);
            fl_free(*out);
            *out = NULL;
            return FL_ERANGE;
        }
    }
    fl_free(data);
    return 0;
}

/* One message of x through a fresh handle for cfg: decoded into out[d],
 * residual[d] updated (error feedback). */
static int roundtrip(const fl_compress_config_t *cfg, size_t d, const float *x,
                     float *residual, float *out, fl_rng_t *rng)
{
    fl_compress_t *c = NULL;
    uint32_t *ring = NULL;
    uint8_t *wire = NULL;
    float *acc = NULL;
    uint64_t cap;
    size_t len;
    int rc = fl_compress_new(&c, cfg, d);
    if (rc < 0)
        goto out;
    if ((rc = fl_compress_wire_bytes(cfg, d, &cap, NULL)) < 0)
        goto out;
    rc = FL_ENOMEM;
    ring = fl_malloc((size_t)fl_compress_value_count(c) * sizeof *ring);
    wire = fl_malloc((size_t)cap);
    acc = fl_calloc((size_t)fl_compress_space_dim(c), sizeof *acc);
    if (!ring || !wire || !acc)
        goto out;
    if (cfg->secagg) {
        rc = fl_compress_encode_ring(c, ring, x, residual, rng, NULL);
        if (rc == 0)
            rc = fl_compress_decode_ring_sum(c, out, ring, 1.0);
    } else {
        rc = fl_compress_encode_payload(c, wire, (size_t)cap, &len, x, residual,
                                        rng, NULL);
        if (rc == 0)
            rc = fl_compress_accumulate_payload(c, acc, wire, len);
        if (rc == 0)
            rc = fl_compress_finish(c, out, acc, 1.0);
    }
out:
    fl_free(ring);
    fl_free(wire);
    fl_free(acc);
    fl_compress_free(c);
    return rc;
}

/* The same delta sent R times with error feedback, a new support and
 * rotation seed every round: ||sum of what arrived - R x|| / (R ||x||). */
static int ef_error(const fl_compress_config_t *base, size_t d, const float *x,
                    int64_t R, uint64_t seed, double *err)
{
    float *res = fl_calloc(d, sizeof *res), *out = fl_malloc(d * sizeof *out);
    double *sum = fl_calloc(d, sizeof *sum);
    int rc = FL_ENOMEM;
    fl_rng_t rng;
    fl_rng_seed(&rng, seed);
    if (!res || !out || !sum)
        goto out;
    for (int64_t t = 0; t < R; t++) {
        fl_compress_config_t cfg = *base;
        cfg.support_seed = seed + 1000 + (uint64_t)t;
        cfg.rotation_seed = seed + 2000 + (uint64_t)t;
        if ((rc = roundtrip(&cfg, d, x, res, out, &rng)) < 0)
            goto out;
        for (size_t i = 0; i < d; i++)
            sum[i] += out[i];
    }
    double e2 = 0, x2 = 0;
    for (size_t i = 0; i < d; i++) {
        double e = sum[i] - (double)R * x[i];
        e2 += e * e;
        x2 += (double)x[i] * x[i];
    }
    *err = sqrt(e2 / x2) / (double)R;
    rc = 0;
out:
    fl_free(res);
    fl_free(out);
    fl_free(sum);
    return rc;
}

/* Measures one codec on x[d]; adds its object to arr. */
static int bench_codec(json_t *arr, const codec_t *cc, const float *x, size_t d,
                       const bench_opts_t *o, float *scratch)
{
    fl_compress_config_t cfg;
    fl_compress_t *c = NULL;
    uint32_t *ring = NULL, *unpacked = NULL;
    int32_t *q = NULL;
    uint8_t *wire = NULL;
    float *out = NULL, *acc = NULL, *vals = NULL;
    int rc;
    double norm = fl_compress_l2_norm(x, d);

    fl_compress_config_init(&cfg);
    cfg.support = cc->support;
    cfg.quant_bits = cc->b;
    cfg.rotate = cc->rotate;
    cfg.rotation_seed = (uint64_t)o->seed + 11;
    cfg.support_seed = (uint64_t)o->seed + 12;
    cfg.secagg = cc->secagg;
    /* S >= ||x||: the DP clip is not what is measured here. */
    cfg.clip_norm = (float)(norm * o->clip_factor * 1.000001);
    cfg.max_summands = (uint32_t)o->cohort;
    cfg.range_factor = (float)o->range_factor;
    cfg.ring_bits = fl_compress_ring_bits_min(cc->b, (uint64_t)o->cohort);
    size_t D = (size_t)fl_compress_space(&cfg, d);
    if (cc->support != FL_COMPRESS_SUPPORT_DENSE)
        cfg.support_size = FL_MAX((uint64_t)1, (uint64_t)(cc->frac * D));
    if (cfg.ring_bits > FL_COMPRESS_MAX_RING)
        return FL_ECONFIG;
    uint64_t wire_bytes, plain_bytes;
    rc = fl_compress_new(&c, &cfg, d);
    if (rc < 0)
        goto out;
    rc = fl_compress_wire_bytes(&cfg, d, &wire_bytes, NULL);
    if (rc < 0)
        goto out;
    {
        fl_compress_config_t p = cfg;
        p.secagg = 0;
        rc = fl_compress_wire_bytes(&p, d, &plain_bytes, NULL);
        if (rc < 0)
            goto out;
    }
    size_t m = (size_t)fl_compress_value_count(c);
    unsigned width = cc->secagg ? cfg.ring_bits : cc->b;
    rc = FL_ENOMEM;
    ring = fl_malloc(m * sizeof *ring);
    unpacked = fl_malloc(m * sizeof *unpacked);
    q = fl_malloc(m * sizeof *q);
    vals = fl_malloc(m * sizeof *vals);
    wire = fl_malloc((size_t)wire_bytes + 16);
    out = fl_malloc(d * sizeof *out);
    acc = fl_calloc(D, sizeof *acc);
    if (!ring || !unpacked || !q || !vals || !wire || !out || !acc)
        goto out;

    fl_rng_t rng;
    fl_rng_seed(&rng, (uint64_t)o->seed + 13);
    double t_clip, t_quant, t_pack, t_unpack, t_enc, t_dec, t_rot = 0;
    double scale = fl_compress_scale_of(c);
    /* Kernels, each on its own input. */
    TIME_BEST(o->reps, t_clip, {
        memcpy(scratch, x, d * sizeof *x);
        (void)fl_compress_clip(scratch, d, norm * 0.5);
    });
    double t_copy;
    TIME_BEST(o->reps, t_copy, memcpy(scratch, x, d * sizeof *x));
    t_clip = FL_MAX(t_clip - t_copy, 1e-9);
    for (size_t j = 0; j < m; j++)
        vals[j] = x[(j * 7919) % d]; /* values of the delta's distribution */
    TIME_BEST(o->reps, t_quant,
              fl_compress_quantize(q, vals, m, (float)scale, cc->b, &rng));
    fl_compress_lift(ring, q, m, width);
    TIME_BEST(o->reps, t_pack, fl_bitpack(wire, ring, m, width));
    TIME_BEST(o->reps, t_unpack, fl_bitunpack(unpacked, wire, m, width));
    if (memcmp(unpacked, ring, m * sizeof *ring) != 0) {
        rc = FL_EINTERNAL;
        goto out;
    }
    if (cc->rotate) {
        size_t P = D;
        float *rb = scratch; /* scratch holds D floats */
        TIME_BEST(o->reps, t_rot, {
            memcpy(rb, x, d * sizeof *x);
            memset(rb + d, 0, (P - d) * sizeof *rb);
            fl_compress_rotate(rb, P, 3);
        });
    }
    /* The whole pipelines, and the error of one message. */
    size_t len = 0;
    if (cc->secagg) {
        TIME_BEST(o->reps, t_enc,
                  rc = fl_compress_encode_ring(c, ring, x, NULL, &rng, NULL));
        if (rc < 0)
            goto out;
        TIME_BEST(o->reps, t_dec,
                  rc = fl_compress_decode_ring_sum(c, out, ring, 1.0));
        if (rc < 0)
            goto out;
        len = fl_bitpack_bytes(m, width);
    } else {
        TIME_BEST(o->reps, t_enc,
                  rc = fl_compress_encode_payload(c, wire, wire_bytes + 16,
                                                  &len, x, NULL, &rng, NULL));
        if (rc < 0)
            goto out;
        TIME_BEST(o->reps, t_dec, {
            memset(acc, 0, D * sizeof *acc);
            rc = fl_compress_accumulate_payload(c, acc, wire, len);
            if (rc == 0)
                rc = fl_compress_finish(c, out, acc, 1.0);
        });
        if (rc < 0)
            goto out;
    }
    double e2 = 0, x2 = 0;
    for (size_t i = 0; i < d; i++) {
        double e = (double)out[i] - x[i];
        e2 += e * e;
        x2 += (double)x[i] * x[i];
    }
    /* On the support alone: the error of what was sent (sparse codecs). */
    double se2 = 0, sx2 = 0;
    const fl_compress_config_t *hc = fl_compress_config(c);
    if (!cc->rotate && cc->support == FL_COMPRESS_SUPPORT_RANDOM_K) {
        uint64_t *bits = fl_malloc((D + 63) / 64 * 8);
        uint32_t *idx = fl_malloc(m * sizeof *idx);
        if (bits && idx &&
            fl_compress_support_random_k(idx, bits, m, D, hc->support_seed) ==
                0)
            for (size_t j = 0; j < m; j++) {
                double e = (double)out[idx[j]] - x[idx[j]];
                se2 += e * e;
                sx2 += (double)x[idx[j]] * x[idx[j]];
            }
        fl_free(bits);
        fl_free(idx);
    }

    json_t *obj = json_object();
    json_object_set_new(obj, "codec", json_string(cc->name));
    json_object_set_new(
        obj, "support",
        json_string(cc->support == FL_COMPRESS_SUPPORT_DENSE      ? "dense"
                    : cc->support == FL_COMPRESS_SUPPORT_RANDOM_K ? "random-k"
                                                                  : "top-k"));
    json_object_set_new(obj, "k", json_integer((json_int_t)m));
    json_object_set_new(obj, "quant_bits", json_integer(cc->b));
    json_object_set_new(obj, "rotate", json_boolean(cc->rotate));
    json_object_set_new(obj, "secagg", json_boolean(cc->secagg));
    json_object_set_new(obj, "ring_bits",
                        cc->secagg ? json_integer(cfg.ring_bits) : json_null());
    json_object_set_new(obj, "clip_gbps",
                        json_real(round3(gbps(4.0 * d, t_clip))));
    json_object_set_new(obj, "quantize_gbps",
                        json_real(round3(gbps(4.0 * m, t_quant))));
    json_object_set_new(obj, "pack_gbps",
                        json_real(round3(gbps(4.0 * m, t_pack))));
    json_object_set_new(obj, "unpack_gbps",
                        json_real(round3(gbps(4.0 * m, t_unpack))));
    json_object_set_new(obj, "rotate_gbps",
                        cc->rotate ? json_real(round3(gbps(4.0 * D, t_rot)))
                                   : json_null());
    json_object_set_new(obj, "encode_gbps",
                        json_real(round3(gbps(4.0 * d, t_enc))));
    json_object_set_new(obj, "decode_gbps",
                        json_real(round3(gbps(4.0 * d, t_dec))));
    json_object_set_new(obj, "wire_bytes", json_integer((json_int_t)len));
    json_object_set_new(obj, "bits_per_param",
                        json_real(round3(8.0 * (double)len / d)));
    json_object_set_new(
        obj, "bits_per_param_secagg_off",
        json_real(round3(8.0 * (double)(cc->secagg ? plain_bytes : len) / d)));
    json_object_set_new(obj, "relative_l2_error",
                        json_real(round3(sqrt(e2 / x2))));
    if (o->ef_rounds > 0) {
        double ef;
        char key[64];
        rc = ef_error(&cfg, d, x, o->ef_rounds, (uint64_t)o->seed + 99, &ef);
        if (rc < 0)
            goto out;
        snprintf(key, sizeof key, "relative_l2_error_ef%d", (int)o->ef_rounds);
        json_object_set_new(obj, key, json_real(round3(ef)));
    }
    json_object_set_new(obj, "relative_l2_error_on_support",
                        sx2 > 0 ? json_real(round3(sqrt(se2 / sx2)))
                                : json_null());
    json_object_set_new(obj, "upload_reduction_vs_fp32",
                        json_real(round3(4.0 * d / (double)len)));
    json_array_append_new(arr, obj);
    rc = 0;
out:
    fl_free(ring);
    fl_free(unpacked);
    fl_free(q);
    fl_free(vals);
    fl_free(wire);
    fl_free(out);
    fl_free(acc);
    fl_compress_free(c);
    return rc;
}

/* ---- --make-deltas ---------------------------------------------------------
 * Byte-level tokens (id = 3 + byte, vocabulary 259, as model/tokenizer.h
 * lays them out); batches of B random windows of T + 1 tokens. */
typedef struct {
    int32_t *ids;
    size_t n;
} stream_t;

static int stream_add_file(stream_t *s, const char *dir, const char *name)
{
    char path[4096];
    uint8_t *data = NULL;
    size_t len;
    int rc = fl_path_join(path, sizeof path, dir, name);
    if (rc < 0)
        return rc;
    rc = fl_file_read_all(path, (size_t)64 << 20, &data, &len);
    if (rc < 0)
        return rc;
    int32_t *ids = fl_realloc(s->ids, (s->n + len + 1) * sizeof *ids);
    if (!ids) {
        fl_free(data);
        return FL_ENOMEM;
    }
    s->ids = ids;
    s->ids[s->n++] = 1; /* BOS */
    for (size_t i = 0; i < len; i++)
        s->ids[s->n++] = 3 + data[i];
    fl_free(data);
    return 0;
}

static int train_steps(fl_model_t *m, const fl_model_optim_t *o,
                       const stream_t *s, int64_t steps, fl_rng_t *rng,
                       float *first_loss, float *last_loss)
{
    enum { B = 4, T = 64 };
    int32_t tok[B * T], tgt[B * T];
    if (s->n < T + 2)
        return FL_EINVAL;
    for (int64_t st = 0; st < steps; st++) {
        for (int b = 0; b < B; b++) {
            size_t at = (size_t)fl_rng_below(rng, s->n - T - 1);
            memcpy(tok + b * T, s->ids + at, T * sizeof *tok);
            memcpy(tgt + b * T, s->ids + at + 1, T * sizeof *tgt);
        }
        float loss;
        int rc = fl_model_train_step(m, o, tok, tgt, B, T, &loss);
        if (rc < 0)
            return rc;
        if (st == 0 && first_loss)
            *first_loss = loss;
        if (last_loss)
            *last_loss = loss;
    }
    return 0;
}

static int make_deltas(const bench_opts_t *o)
{
    fl_model_config_t mc;
    fl_model_optim_t opt;
    fl_model_t *m = NULL;
    stream_t pub = {NULL, 0}, loc = {NULL, 0};
    float *global = NULL, *delta = NULL;
    char *topics = NULL;
    int rc;
    fl_rng_t rng;
    fl_rng_seed(&rng, (uint64_t)o->seed);

    rc = FL_ENOMEM;
    topics = fl_strdup(o->public_topics);
    if (!topics)
        goto out;
    for (char *save = NULL, *t = strtok_r(topics, ",", &save); t;
         t = strtok_r(NULL, ",", &save))
        if ((rc = stream_add_file(&pub, o->data, t)) < 0)
            goto out;
    if ((rc = stream_add_file(&loc, o->data, o->topic)) < 0)
        goto out;

    fl_model_config_default(&mc);
    mc.vocab_size = 259;
    fl_model_set_threads(1);
    if ((rc = fl_model_new(&mc, &m)) < 0)
        goto out;
    fl_model_init_weights(m, (uint64_t)o->seed);
    fl_model_optim_default(&opt);
    opt.lr = 2e-3f;
    opt.min_lr = 2e-4f;
    opt.warmup = 20;
    opt.total = o->pretrain_steps;
    float l0 = 0, l1 = 0, g0 = 0, g1 = 0;
    if (o->pretrain_steps > 0 &&
        (rc = train_steps(m, &opt, &pub, o->pretrain_steps, &rng, &g0, &g1)) <
            0)
        goto out;

    size_t d = fl_model_num_params(m);
    rc = FL_ENOMEM;
    global = fl_malloc(d * sizeof *global);
    delta = fl_malloc(d * sizeof *delta);
    if (!global || !delta)
        goto out;
    memcpy(global, fl_model_params(m), d * sizeof *global);
    /* The client's round: fresh optimizer state, constant learning rate. */
    fl_model_optim_reset(m);
    fl_model_optim_default(&opt);
    opt.lr = (float)o->local_lr;
    opt.min_lr = opt.lr;
    if ((rc = train_steps(m, &opt, &loc, o->local_steps, &rng, &l0, &l1)) < 0)
        goto out;
    const float *p = fl_model_params(m);
    uint8_t *bytes = (uint8_t *)global; /* reuse: global is done with */
    for (size_t i = 0; i < d; i++) {
        delta[i] = p[i] - global[i];
        uint32_t u;
        memcpy(&u, &delta[i], 4);
        bytes[4 * i] = (uint8_t)u;
        bytes[4 * i + 1] = (uint8_t)(u >> 8);
        bytes[4 * i + 2] = (uint8_t)(u >> 16);
        bytes[4 * i + 3] = (uint8_t)(u >> 24);
    }
    if ((rc = fl_file_write_atomic(o->make_deltas, bytes, 4 * d, 0644)) < 0)
        goto out;
    double n2 = fl_compress_l2_norm(delta, d), mx = 0;
    for (size_t i = 0; i < d; i++)
        mx = fmax(mx, fabs(delta[i]));
    json_t *j = json_pack(
        "{s:s, s:I, s:s, s:s, s:I, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:f}",
        "deltas", o->make_deltas, "params", (json_int_t)d, "public_topics",
        o->public_topics, "topic", o->topic, "pretrain_steps",
        (json_int_t)o->pretrain_steps, "pretrain_loss_first", (double)g0,
        "pretrain_loss_last", (double)g1, "local_steps",
        (json_int_t)o->local_steps, "local_loss_first", (double)l0,
        "local_loss_last", (double)l1, "delta_l2", n2, "delta_rms",
        n2 / sqrt((double)d), "delta_max_abs", mx);
    if (j) {
        json_dumpf(j, stdout,
                   JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                       JSON_REAL_PRECISION(6));
        fputc('\n', stdout);
        json_decref(j);
    }
    rc = 0;
out:
    fl_model_free(m);
    fl_free(pub.ids);
    fl_free(loc.ids);
    fl_free(global);
    fl_free(delta);
    fl_free(topics);
    return rc;
}

int fl_bench_compress(int argc, char **argv)
{
    bench_opts_t o;
    int rest, status = FL_EXIT_FAIL;
    float *x = NULL, *scratch = NULL;
    json_t *root = NULL;
    memset(&o, 0, sizeof o);
    int prc = fl_cli_parse("bench compress", "bench compress [options] --json",
                           &table, &o, argc, argv, &rest);
    if (prc >= 0) {
        fl_cfg_free(&table, &o);
        return prc;
    }
    if (o.make_deltas) {
        int rc = make_deltas(&o);
        if (rc < 0)
            fl_cli_error("bench compress", "--make-deltas: %s",
                         fl_strerror(rc));
        fl_cfg_free(&table, &o);
        return rc < 0 ? FL_EXIT_FAIL : FL_EXIT_OK;
    }
    size_t d = (size_t)o.params;
    if (o.deltas) {
        int rc = load_deltas(o.deltas, &x, &d);
        if (rc < 0) {
            fl_cli_error("bench compress", "%s: %s", o.deltas, fl_strerror(rc));
            goto out;
        }
    } else {
        x = fl_malloc(d * sizeof *x);
        if (!x)
            goto out;
        fill_student_t(x, d, o.tail_dof, (uint64_t)o.seed);
    }
    scratch = fl_aligned_alloc(64, fl_compress_rotation_dim(d) * sizeof(float));
    if (!scratch)
        goto out;

    double t_copy;
    TIME_BEST(o.reps, t_copy, memcpy(scratch, x, d * sizeof *x));
    root = json_object();
    json_object_set_new(root, "bench", json_string("compress"));
    json_object_set_new(root, "params", json_integer((json_int_t)d));
    json_object_set_new(root, "deltas",
                        json_string(o.deltas ? "file" : "synthetic student-t"));
    if (!o.deltas)
        json_object_set_new(root, "tail_dof", json_real(o.tail_dof));
    json_object_set_new(root, "cohort", json_integer(o.cohort));
    json_object_set_new(root, "clip_factor", json_real(o.clip_factor));
    json_object_set_new(root, "range_factor",
                        o.range_factor > 0 ? json_real(o.range_factor)
                                           : json_string("max(1, 1/4 + b/2)"));
    json_object_set_new(
        root, "units",
        json_string("*_gbps: 1e9 bytes of fp32 input to that step per second "
                    "on one core (4 bytes per coordinate it handles: d for "
                    "clip/encode/decode, k for quantize/pack/unpack, the "
                    "padded D for rotate); best of reps; shared machine, "
                    "noisy"));
    json_object_set_new(
        root, "error",
        json_string(
            "relative_l2_error = ||decode(encode(x)) - x|| / ||x|| "
            "for one message, clip norm S = clip_factor ||x||, no error "
            "feedback; relative_l2_error_efR: x sent R times with "
            "error feedback and a new support and rotation each "
            "round, ||sum decoded - R x|| / (R ||x||)"));
    json_object_set_new(root, "memcpy_gbps",
                        json_real(round3(gbps(4.0 * d, t_copy))));
    json_t *arr = json_array();
    json_object_set_new(root, "codecs", arr);
    for (size_t i = 0; i < FL_ARRAY_LEN(codecs); i++) {
        int rc = bench_codec(arr, &codecs[i], x, d, &o, scratch);
        if (rc < 0) {
            fl_cli_error("bench compress", "%s: %s", codecs[i].name,
                         fl_strerror(rc));
            goto out;
        }
    }
    if (o.json) {
        json_dumpf(root, stdout,
                   JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                       JSON_REAL_PRECISION(6));
        fputc('\n', stdout);
    } else {
        printf("%-22s %5s %6s %6s %6s %6s %6s %7s %7s\n", "codec", "bits",
               "clip", "quant", "pack", "unpack", "enc", "relerr", "reduce");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            printf("%-22s %5.2f %6.2f %6.2f %6.2f %6.2f %6.2f %7.4f %7.1f\n",
                   json_string_value(json_object_get(v, "codec")),
                   json_real_value(json_object_get(v, "bits_per_param")),
                   json_real_value(json_object_get(v, "clip_gbps")),
                   json_real_value(json_object_get(v, "quantize_gbps")),
                   json_real_value(json_object_get(v, "pack_gbps")),
                   json_real_value(json_object_get(v, "unpack_gbps")),
                   json_real_value(json_object_get(v, "encode_gbps")),
                   json_real_value(json_object_get(v, "relative_l2_error")),
                   json_real_value(
                       json_object_get(v, "upload_reduction_vs_fp32")));
        }
        printf("(GB/s of fp32 input; memcpy %.2f GB/s)\n",
               json_real_value(json_object_get(root, "memcpy_gbps")));
    }
    status = FL_EXIT_OK;
out:
    json_decref(root);
    fl_free(x);
    fl_free(scratch);
    fl_cfg_free(&table, &o);
    return status;
}
