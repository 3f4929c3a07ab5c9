/* server/engine.c — the engines seam of this build (fl_server_engine_t):
 * secure aggregation (secagg/), the codec (compress/), differential privacy
 * (server/dp.h), the server optimizer (server/optim.h), model files
 * (model/) and signed publishing (artifact/). The orchestrator (round.c)
 * reaches them only through this table. */
#include "server/internal.h"

#include "model/quant.h"

#include <math.h>
#include <sodium.h>
#include <string.h>

#include "artifact/artifact.h"
#include "compress/compress.h"
#include "secagg/secagg.h"
#include "server/dp.h"
#include "server/optim.h"

#define MODELS_DIR "models"

/* One round's aggregation. */
typedef struct {
    fl_server_t *s;
    int secagg;
    fl_compress_config_t ccfg;
    fl_compress_t *codec;
    uint64_t d, D, m;
    fl_secagg_server_t *sa; /* secagg on */
    float *acc;             /* secagg off: the sum in the transmit space [D] */
} eround_t;

static int to_compress_config(const Flotilla__CodecConfig *cc, int secagg,
                              uint32_t n, fl_compress_config_t *out)
{
    fl_compress_config_init(out);
    switch (cc->support) {
    case FLOTILLA__SUPPORT_KIND__SUPPORT_DENSE:
        out->support = FL_COMPRESS_SUPPORT_DENSE;
        break;
    case FLOTILLA__SUPPORT_KIND__SUPPORT_RANDOM_K:
        out->support = FL_COMPRESS_SUPPORT_RANDOM_K;
        break;
    case FLOTILLA__SUPPORT_KIND__SUPPORT_TOP_K:
        out->support = FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG;
        break;
    default:
        return FL_ENOTSUP; /* explicit lists: not chosen by this server yet */
    }
    out->support_seed = cc->support_seed;
    out->support_size = cc->support_size;
    out->quant_bits = cc->quant_bits;
    out->rotate = cc->rotate;
    out->rotation_seed = cc->rotation_seed;
    out->clip_norm = cc->clip_norm;
    out->range_factor = cc->range_factor;
    out->scale = cc->scale;
    out->error_feedback = cc->error_feedback;
    out->quant_seed = cc->quant_seed;
    out->secagg = secagg;
    out->ring_bits = cc->ring_bits;
    out->max_summands = n;
    return 0;
}

static int eng_begin(void *ctx, Flotilla__RoundConfig *rc, uint32_t n,
                     const uint8_t (*keys)[32], void **round_ctx,
                     uint64_t *num_values)
{
    fl_server_t *s = ctx;
    int rc_ = 0;
    if (!s->signing_key)
        return FL_ECONFIG; /* nothing could be published */
    eround_t *er = fl_calloc(1, sizeof *er);
    if (!er)
        return FL_ENOMEM;
    er->s = s;
    er->secagg = rc->secagg->enabled;
    er->d = rc->num_params;
    /* The codec fields the server derives for this round. */
    rc->codec->max_summands = n;
    rc->codec->secure_aggregation = er->secagg;
    rc->codec->range_factor = 0;
    rc_ = to_compress_config(rc->codec, er->secagg, n, &er->ccfg);
    if (rc_ == 0)
        rc_ = fl_compress_config_check(&er->ccfg, er->d);
    if (rc_ == 0)
        rc_ = fl_compress_new(&er->codec, &er->ccfg, er->d);
    if (rc_ < 0)
        goto out;
    er->D = fl_compress_space_dim(er->codec);
    er->m = fl_compress_value_count(er->codec);
    if (er->secagg && rc->secagg->graph == FLOTILLA__GRAPH_KIND__GRAPH_HARARY &&
        s->cfg.degree && rc->secagg->degree + 2 > n) {
        /* Too few invitees for the configured degree: the complete graph
         * (every device a neighbour of every other) is the only choice. */
        rc->secagg->graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
        rc->secagg->degree = n - 1;
        if (!s->cfg.threshold || rc->secagg->threshold > n - 1)
            rc->secagg->threshold = FL_MAX(2u, (n - 1) / 2 + 1);
    }
    if (er->secagg && rc->secagg->graph == FLOTILLA__GRAPH_KIND__GRAPH_HARARY &&
        s->cfg.degree == 0) {
        /* SecAgg+ parameters for the configured corrupt and dropout
         * fractions (the complete graph for small cohorts). */
        fl_secagg_params_t p;
        rc_ = fl_secagg_params_find(n, s->cfg.secagg_corrupt,
                                    s->cfg.secagg_dropout, &p);
        if (rc_ < 0)
            goto out;
        rc->secagg->graph = p.graph;
        rc->secagg->degree = p.degree;
        if (!s->cfg.threshold)
            rc->secagg->threshold = p.threshold;
    }
    if (er->secagg) {
        fl_secagg_round_t round;
        memset(&round, 0, sizeof round);
        round.round = rc->round;
        memcpy(round.round_nonce, rc->round_nonce.data, FL_SECAGG_NONCE_BYTES);
        round.dim = er->m;
        round.config = rc->secagg;
        rc_ = fl_secagg_config_check(rc->secagg);
        if (rc_ == 0)
            rc_ = fl_secagg_server_new(&round, keys, &er->sa);
    } else {
        er->acc = fl_calloc(er->D, sizeof(float));
        if (!er->acc)
            rc_ = FL_ENOMEM;
    }
out:
    if (rc_ < 0) {
        fl_secagg_server_free(er->sa);
        fl_compress_free(er->codec);
        fl_free(er->acc);
        fl_free(er);
        return rc_;
    }
    *round_ctx = er;
    *num_values = er->m;
    return 0;
}

static int eng_handle(void *round_ctx, uint32_t sender, const fl_envelope_t *e)
{
    eround_t *er = round_ctx;
    if (er->secagg)
        return fl_secagg_server_handle(er->sa, sender, e);
    if (e->body_case != FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE)
        return FL_EPROTO;
    const Flotilla__MaskedInputResponse *m = e->masked_input_response;
    return fl_compress_accumulate_payload(er->codec, er->acc, m->packed.data,
                                          m->packed.len);
}

static int eng_close(void *round_ctx, int phase)
{
    eround_t *er = round_ctx;
    if (!er->secagg)
        return 0;
    switch (phase) {
    case FL_SERVER_PHASE_ADVERTISE:
        return fl_secagg_server_advertise_close(er->sa);
    case FL_SERVER_PHASE_SHARE:
        return fl_secagg_server_share_keys_close(er->sa);
    case FL_SERVER_PHASE_MASKED_INPUT:
        return fl_secagg_server_masked_input_close(er->sa);
    case FL_SERVER_PHASE_UNMASK:
        return fl_secagg_server_unmasking_close(er->sa);
    default:
        return 0;
    }
}

static void eng_describe_close(void *round_ctx, char *buf, size_t len)
{
    eround_t *er = round_ctx;
    fl_secagg_close_info_t info;
    if (len)
        buf[0] = '\0';
    if (!er->secagg || !er->sa)
        return;
    fl_secagg_server_close_info(er->sa, &info);
    fl_secagg_close_info_describe(&info, buf, len);
}

static int eng_request(void *round_ctx, int phase, uint32_t id,
                       fl_envelope_t *e)
{
    eround_t *er = round_ctx;
    if (!er->secagg)
        return FL_ENOTSUP;
    switch (phase) {
    case FL_SERVER_PHASE_SHARE:
        e->body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST;
        return fl_secagg_server_share_keys_request(er->sa, id,
                                                   &e->share_keys_request);
    case FL_SERVER_PHASE_MASKED_INPUT:
        e->body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST;
        return fl_secagg_server_masked_input_request(er->sa, id,
                                                     &e->masked_input_request);
    case FL_SERVER_PHASE_UNMASK:
        e->body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST;
        return fl_secagg_server_unmasking_request(er->sa, id,
                                                  &e->unmasking_request);
    default:
        return FL_EINVAL;
    }
}

static void eng_request_done(void *round_ctx, fl_envelope_t *e)
{
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST:
        fl_secagg_msg_free(e->share_keys_request);
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST:
        fl_secagg_msg_free(e->masked_input_request);
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST:
        fl_secagg_msg_free(e->unmasking_request);
        break;
    default:
        break;
    }
}

/* The accountant's q: the chance that a given device is in a round. Every
 * invitee may contribute, so with over-selection it is the invitees, not
 * the cohort, over the population. */
static double sampling_rate(const fl_server_config_t *c, uint64_t population)
{
    uint64_t invited = fl_server_config_invitees(c);
    if (population == 0 || invited >= population)
        return 1.0;
    return (double)invited / (double)population;
}

static int load_accountant(const fl_server_state_t *st,
                           fl_dp_accountant_t **out)
{
    if (st->accountant_len)
        return fl_dp_accountant_load(st->accountant, st->accountant_len, out);
    *out = fl_dp_accountant_new();
    return *out ? 0 : FL_ENOMEM;
}

static int take_buf(fl_buf_t *b, uint8_t **data, size_t *len)
{
    fl_free(*data);
    *data = b->data;
    *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return 0;
}

/* Publishes params as the next version; updates the model pointer of st. */
static int publish(fl_server_t *s, const fl_model_t *tmpl, const float *params,
                   uint64_t round, fl_server_state_t *st, char *why,
                   size_t whylen)
{
    char root[4096], name[32], mpath[4096], vdir[4096];
    fl_model_t *m = NULL;
    uint8_t *man = NULL;
    size_t manlen = 0;
    fl_q8_model_t *q8 = NULL;
    fl_buf_t bin, q8bin;
    fl_buf_init(&bin, FL_MODEL_MAX_FILE);
    fl_buf_init(&q8bin, FL_MODEL_MAX_FILE);
    int rc = fl_model_clone(tmpl, &m);
    if (rc < 0)
        goto out;
    memcpy(fl_model_params(m), params, fl_model_num_params(m) * sizeof(float));
    rc = fl_model_save_buf(m, 0, &bin);
    if (rc < 0)
        goto out;
    /* The int8 export devices serve inference from: adapters (if any)
     * folded into the copy's base weights first. */
    rc = fl_model_lora_merge(m);
    if (rc == 0)
        rc = fl_q8_model_from_model(
            m, fl_q8_default_group_size(fl_model_config(m)), &q8);
    if (rc == 0)
        rc = fl_q8_model_save_buf(q8, &q8bin);
    if (rc < 0) {
        snprintf(why, whylen, "int8 export: %s", fl_strerror(rc));
        goto out;
    }
    rc = fl_path_join(root, sizeof root, s->cfg.state_dir, MODELS_DIR);
    if (rc < 0)
        goto out;
    /* The architecture, so that a device can refuse a version it cannot
     * use (a vocabulary other than its tokenizer's) before downloading. */
    const fl_model_config_t *mc = fl_model_config(tmpl);
    const char *tokref = fl_model_tokenizer_ref(tmpl);
    char arch[768], tok[FL_MODEL_TOKREF_MAX + 16] = "";
    if (tokref[0] &&
        strspn(tokref,
               "abcdefghijklmnopqrstuvwxyz"
               "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-") == strlen(tokref))
        snprintf(tok, sizeof tok, ",\"tokenizer\":\"%s\"", tokref);
    snprintf(arch, sizeof arch,
             "{\"architecture\":{\"dim\":%d,\"hidden_dim\":%d,"
             "\"n_layers\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,"
             "\"vocab_size\":%d,\"seq_len\":%d,\"tied_output\":%d,"
             "\"lora_rank\":%d%s}}",
             mc->dim, mc->hidden_dim, mc->n_layers, mc->n_heads, mc->n_kv_heads,
             mc->vocab_size, mc->seq_len, mc->tied_output, mc->lora_rank, tok);
    fl_artifact_meta_t meta = {.version = st->model_version + 1,
                               .round = round,
                               .epsilon = st->epsilon,
                               .delta = s->cfg.delta,
                               .config_json = arch};
    fl_artifact_input_t files[] = {
        {.name = "model.bin", .data = bin.data, .len = bin.len},
        {.name = "model.q8", .data = q8bin.data, .len = q8bin.len}};
    rc = fl_artifact_publish(root, s->signing_key, &meta, files,
                             FL_ARRAY_LEN(files),
                             (unsigned)s->cfg.keep_versions, why, whylen);
    if (rc < 0)
        goto out;
    rc = fl_artifact_version_name(meta.version, name, sizeof name);
    if (rc == 0)
        rc = fl_path_join(vdir, sizeof vdir, root, name);
    if (rc == 0)
        rc = fl_path_join(mpath, sizeof mpath, vdir, FL_ARTIFACT_MANIFEST);
    if (rc == 0)
        rc = fl_file_read_all(mpath, FL_ARTIFACT_MANIFEST_MAX, &man, &manlen);
    if (rc == 0)
        rc = fl_artifact_sha256(man, manlen, st->model_hash);
    if (rc < 0)
        goto out;
    st->model_version = meta.version;
    snprintf(st->model_dir, sizeof st->model_dir, "%s/%s", MODELS_DIR, name);
out:
    fl_free(man);
    fl_buf_free(&bin);
    fl_buf_free(&q8bin);
    fl_q8_model_free(q8);
    fl_model_free(m);
    return rc;
}

/* Thread pool, several parts at once: stage 0 derives the dropped
 * clients' pairwise seeds, stage 1 removes the masks over coordinate
 * ranges. */
static int eng_parallel(void *round_ctx, unsigned stage, unsigned part,
                        unsigned nparts)
{
    eround_t *er = round_ctx;
    if (!er->secagg)
        return 0;
    return stage == 0 ? fl_secagg_server_derive_part(er->sa, part, nparts)
                      : fl_secagg_server_unmask_part(er->sa, part, nparts);
}

/* Thread pool. */
static int eng_finish(void *round_ctx, fl_server_finish_t *f)
{
    eround_t *er = round_ctx;
    fl_server_t *s = er->s;
    const fl_server_config_t *c = f->cfg;
    float *g = NULL;
    uint32_t *sum = NULL;
    fl_dp_noise_t *noise = NULL;
    fl_dp_accountant_t *acc = NULL;
    fl_optim_t *opt = NULL;
    fl_buf_t b;
    fl_buf_init(&b, SIZE_MAX);
    int rc = FL_ENOMEM;
    const char *step = "memory";

    g = fl_calloc(er->d, sizeof *g);
    f->new_params = fl_malloc(er->d * sizeof(float));
    if (!g || !f->new_params)
        goto out;
    /* 1. The exact sum of the survivors' encoded vectors, decoded to
     * floats (denominator 1: the noise goes on the sum). */
    if (er->secagg) {
        step = "unmasking";
        sum = fl_calloc(er->m, sizeof *sum);
        rc = sum ? fl_secagg_server_unmask_finish(er->sa) : FL_ENOMEM;
        if (rc == 0)
            rc = fl_secagg_server_result(er->sa, sum, er->m, NULL, NULL);
        if (rc == 0) {
            step = "decoding";
            rc = fl_compress_decode_ring_sum(er->codec, g, sum, 1.0);
        }
    } else {
        step = "decoding";
        rc = fl_compress_finish(er->codec, g, er->acc, 1.0);
    }
    if (rc < 0)
        goto out;
    /* 2. Gaussian noise sigma = z S' on the sum, then the fixed cohort. */
    step = "noise";
    double sens = fl_compress_sensitivity(&er->ccfg, er->d);
    uint8_t seed[FL_DP_SEED_BYTES];
    if (c->noise_seed) {
        uint8_t in[16];
        for (int i = 0; i < 8; i++) {
            in[i] = (uint8_t)((uint64_t)c->noise_seed >> (8 * i));
            in[8 + i] = (uint8_t)(f->round >> (8 * i));
        }
        crypto_generichash(seed, sizeof seed, in, sizeof in, NULL, 0);
    }
    noise = fl_dp_noise_new(c->noise_seed ? seed : NULL);
    sodium_memzero(seed, sizeof seed);
    rc = noise
             ? fl_dp_noised_mean(noise, g, g, er->d, c->noise_multiplier * sens,
                                 (double)c->cohort)
             : FL_ECRYPTO;
    if (rc < 0)
        goto out;
    /* 3. The accountant: one sampled-Gaussian step at q = cohort /
     * population. */
    step = "accountant";
    rc = load_accountant(&f->state, &acc);
    if (rc == 0)
        rc = fl_dp_accountant_compose(acc, sampling_rate(c, f->population),
                                      c->noise_multiplier, 1);
    if (rc == 0)
        rc = fl_dp_accountant_epsilon(acc, c->delta, &f->state.epsilon, NULL);
    if (rc == 0)
        rc = fl_dp_accountant_save(acc, &b);
    if (rc < 0)
        goto out;
    take_buf(&b, &f->state.accountant, &f->state.accountant_len);
    /* 4. The server optimizer on the noised mean. */
    step = "server optimizer";
    fl_optim_config_t oc;
    fl_optim_config_init(&oc, (fl_optim_kind_t)c->server_optimizer);
    if (c->server_lr > 0)
        oc.lr = c->server_lr;
    oc.momentum = c->server_momentum;
    oc.beta1 = c->server_beta1;
    oc.beta2 = c->server_beta2;
    oc.tau = c->server_tau;
    rc = fl_optim_new(&oc, er->d, &opt);
    if (rc == 0 && f->state.optimizer_len &&
        fl_optim_load(opt, f->state.optimizer, f->state.optimizer_len) < 0)
        FL_WARN("the saved server-optimizer state does not match the "
                "configuration; starting it afresh");
    memcpy(f->new_params, f->params, er->d * sizeof(float));
    if (rc == 0)
        rc = fl_optim_step(opt, f->new_params, g);
    if (rc == 0)
        rc = fl_optim_save(opt, &b);
    if (rc < 0)
        goto out;
    take_buf(&b, &f->state.optimizer, &f->state.optimizer_len);
    /* 5. Publish the signed version, then commit the state. */
    step = "publishing";
    rc = publish(s, f->model, f->new_params, f->round, &f->state, f->err,
                 sizeof f->err);
    if (rc < 0)
        goto out;
    f->state.round = f->round;
    f->state.rounds_completed++;
    step = "saving the state";
    rc = fl_server_state_save(c->state_dir, &f->state);
out:
    if (rc < 0 && !f->err[0])
        snprintf(f->err, sizeof f->err, "%s: %s", step, fl_strerror(rc));
    fl_buf_free(&b);
    fl_optim_free(opt);
    fl_dp_accountant_free(acc);
    fl_dp_noise_free(noise);
    fl_free(sum);
    fl_free(g);
    return rc;
}

static void eng_end(void *round_ctx)
{
    eround_t *er = round_ctx;
    fl_secagg_server_free(er->sa);
    fl_compress_free(er->codec);
    fl_free(er->acc);
    fl_free(er);
}

static int eng_budget(void *ctx, const fl_server_config_t *c,
                      const fl_server_state_t *st, uint64_t population)
{
    fl_dp_accountant_t *acc = NULL;
    if (c->epsilon_budget <= 0)
        return 0;
    int rc = load_accountant(st, &acc);
    if (rc == 0)
        rc = fl_dp_accountant_check(acc, sampling_rate(c, population),
                                    c->noise_multiplier, c->delta,
                                    c->epsilon_budget, NULL);
    fl_dp_accountant_free(acc);
    return rc;
}

static int eng_ready(void *ctx, char *why, size_t whylen)
{
    fl_server_t *s = ctx;
    if (!s->signing_key) {
        snprintf(why, whylen, "no signing-key to publish model versions with");
        return FL_ECONFIG;
    }
    return 0;
}

const fl_server_engine_t fl_server_engine_default = {
    .ready = eng_ready,
    .begin = eng_begin,
    .handle = eng_handle,
    .close = eng_close,
    .describe_close = eng_describe_close,
    .request = eng_request,
    .request_done = eng_request_done,
    .parallel = eng_parallel,
    .parallel_stages = 2,
    .finish = eng_finish,
    .end = eng_end,
    .budget = eng_budget,
};

/* A crash after a version was published and before the state naming it
 * was written leaves models/current one version ahead of the state. That
 * version was never announced (RoundResult and model serving follow the
 * state), but its noise was drawn: it is adopted and its round charged to
 * the accountant, so the privacy spent is never under-counted. */
static int reconcile(fl_server_t *s, char *err, size_t errlen)
{
    char root[4096], dir[4096], mpath[4096];
    const char *base;
    uint64_t v = 0;
    fl_artifact_manifest_t *man = NULL;
    fl_dp_accountant_t *acc = NULL;
    uint8_t *mj = NULL;
    size_t mjlen = 0;
    fl_buf_t b;
    fl_buf_init(&b, SIZE_MAX);
    int rc = fl_path_join(root, sizeof root, s->cfg.state_dir, MODELS_DIR);
    if (rc == 0)
        rc = fl_artifact_current(root, dir, sizeof dir, &v);
    if (rc == FL_ENOENT || (rc == 0 && v <= s->state.model_version)) {
        rc = 0;
        goto out;
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", root, fl_strerror(rc));
        goto out;
    }
    if (v != s->state.model_version + 1) {
        snprintf(err, errlen,
                 "%s/current is version %llu but the state names version "
                 "%llu; refusing to start",
                 root, (unsigned long long)v,
                 (unsigned long long)s->state.model_version);
        rc = FL_ESTATE;
        goto out;
    }
    char why[256] = "";
    rc = fl_artifact_verify_dir(dir, s->signing_pub, &man, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s; refusing to start", dir, why);
        goto out;
    }
    rc = fl_path_join(mpath, sizeof mpath, dir, FL_ARTIFACT_MANIFEST);
    if (rc == 0)
        rc = fl_file_read_all(mpath, FL_ARTIFACT_MANIFEST_MAX, &mj, &mjlen);
    if (rc == 0)
        rc = fl_artifact_sha256(mj, mjlen, s->state.model_hash);
    if (rc == 0)
        rc = load_accountant(&s->state, &acc);
    uint64_t pop = s->cfg.population ? (uint64_t)s->cfg.population
                                     : fl_server_enrol_count(s->enrol);
    if (rc == 0)
        rc = fl_dp_accountant_compose(acc, sampling_rate(&s->cfg, pop),
                                      s->cfg.noise_multiplier, 1);
    if (rc == 0)
        rc = fl_dp_accountant_epsilon(acc, s->cfg.delta, &s->state.epsilon,
                                      NULL);
    if (rc == 0)
        rc = fl_dp_accountant_save(acc, &b);
    if (rc < 0) {
        snprintf(err, errlen, "adopting version %llu: %s",
                 (unsigned long long)v, fl_strerror(rc));
        goto out;
    }
    take_buf(&b, &s->state.accountant, &s->state.accountant_len);
    base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    rc = fl_path_join(s->state.model_dir, sizeof s->state.model_dir, MODELS_DIR,
                      base);
    if (rc < 0) {
        snprintf(err, errlen, "%s: name too long", dir);
        goto out;
    }
    s->state.model_version = v;
    if (man->round > s->state.round)
        s->state.round = man->round;
    s->state.rounds_completed++;
    rc = fl_server_state_save(s->cfg.state_dir, &s->state);
    if (rc < 0) {
        snprintf(err, errlen, "saving the state: %s", fl_strerror(rc));
        goto out;
    }
    FL_WARN("version %llu (round %llu) was published but not recorded before "
            "a crash; adopted, epsilon now %.4g",
            (unsigned long long)v, (unsigned long long)man->round,
            s->state.epsilon);
out:
    fl_buf_free(&b);
    fl_free(mj);
    fl_dp_accountant_free(acc);
    fl_artifact_manifest_free(man);
    return rc;
}

int fl_server_engine_open(fl_server_t *s, char *err, size_t errlen)
{
    if (!s->cfg.signing_key) {
        return 0; /* eng_ready says why rounds wait */
    }
    int rc = fl_artifact_key_load(s->cfg.signing_key, &s->signing_key);
    if (rc < 0) {
        snprintf(err, errlen, "signing key %s: %s", s->cfg.signing_key,
                 rc == FL_EDENIED
                     ? "this user cannot read it, or group or others can (it "
                       "must be mode 0600, readable by the server's user only)"
                     : fl_strerror(rc));
        return rc;
    }
    fl_artifact_key_public(s->signing_key, s->signing_pub);
    s->have_signing_pub = 1;
    rc = reconcile(s, err, errlen);
    if (rc < 0 || !s->state.model_version)
        return rc;
    /* The version the state names must be intact and ours. */
    char dir[4096], why[256] = "";
    rc = fl_path_join(dir, sizeof dir, s->cfg.state_dir, s->state.model_dir);
    if (rc == 0)
        rc = fl_artifact_verify_dir(dir, s->signing_pub, NULL, why, sizeof why);
    if (rc < 0)
        snprintf(err, errlen, "model version %llu (%s): %s; refusing to start",
                 (unsigned long long)s->state.model_version, dir,
                 why[0] ? why : fl_strerror(rc));
    return rc;
}

int fl_server_engine_publish_initial(fl_server_t *s, char *err, size_t errlen)
{
    if (!s->signing_key || s->state.model_version || !s->model)
        return 0;
    /* The initial model becomes version 1 (round 0). */
    char why[256] = "";
    int rc = publish(s, s->model, s->params, 0, &s->state, why, sizeof why);
    if (rc == 0)
        rc = fl_server_state_save(s->cfg.state_dir, &s->state);
    if (rc < 0) {
        snprintf(err, errlen, "publishing the initial model: %s",
                 why[0] ? why : fl_strerror(rc));
        return rc;
    }
    FL_INFO("initial model published as version %llu",
            (unsigned long long)s->state.model_version);
    return 0;
}

void fl_server_engine_close(fl_server_t *s)
{
    fl_artifact_key_free(s->signing_key);
    s->signing_key = NULL;
}
