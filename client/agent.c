/* client/agent.c — the client side of the protocol (docs/PROTOCOL.md):
 * hello, verified model downloads, rounds. Transport-agnostic; training on
 * the loop's thread pool. */
#include "client/client.h"

#include "proto/proto.h"
#include "secagg/secagg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HELLO_LABEL   "flotilla-hello-v1"
#define CHUNK_BYTES   (1u << 20)
#define RESIDUAL_FILE "residual.bin"
#define JOURNAL_FILE  "journal.json"
#define MAX_PARAMS    ((size_t)1 << 28)

/* A round the agent takes part in. */
typedef struct {
    fl_client_agent_t *a;
    fl_envelope_t *invite; /* owned: keeps the RoundConfig alive */
    const Flotilla__RoundConfig *cfg;
    uint64_t round;
    uint32_t id;
    int secagg;
    fl_compress_t *codec;
    fl_secagg_client_t *sa;
    fl_model_t *model; /* the global model trained from (the agent's) */
    uint32_t *ring;    /* [m], secagg on */
    fl_buf_t payload;  /* secagg off */
    float *residual;   /* working copy [d], NULL without error feedback */
    size_t d, m;
    fl_client_train_cfg_t tc;
    uv_work_t work;
    int training, trained, train_rc;
    fl_client_update_stats_t stats;
    fl_envelope_t
        *pending_masked; /* MaskedInputRequest before training ended */
    int sent_input;
    int abandoned; /* the connection went away during training */
    uint64_t up0, down0;
} round_t;

/* A model download in progress. */
typedef struct {
    int active;
    uint64_t version;
    fl_artifact_manifest_t *manifest;
    size_t file;         /* index of the file being fetched */
    uint64_t offset;     /* bytes of it on disk */
    uint64_t meta_bytes; /* manifest and signature received */
    char dir[FL_CLIENT_STORE_PATH_MAX];
} fetch_t;

/* One model version in the shared cache: loading (one agent downloads it,
 * others wait for it) or ready (model set, used by refs agents). */
typedef struct cache_entry {
    struct cache_entry *next;
    fl_client_model_cache_t *cache;
    uint64_t version;
    uint8_t signing_pub[FL_ARTIFACT_PUBLIC_BYTES];
    fl_model_t *model;          /* owned; NULL while loading; read-only */
    fl_client_agent_t *loader;  /* the agent downloading it, while loading */
    fl_client_agent_t *waiters; /* agents waiting for it (next_waiter) */
    uint64_t wire_bytes;        /* manifest, signature and files */
    int refs;                   /* agents whose model this is */
} cache_entry_t;

struct fl_client_model_cache {
    cache_entry_t *entries;
    int freed; /* fl_client_model_cache_free was called */
    uint64_t hits, hit_bytes;
};

struct fl_client_agent {
    fl_client_agent_opts_t o;
    char state_dir[FL_CLIENT_STORE_PATH_MAX];
    const fl_client_io_t *io;
    void *ioctx;
    int connected, hello_done;
    uint8_t nonce[32];
    fl_model_t *model; /* owned, or the shared entry's (read-only) */
    uint64_t version;
    cache_entry_t *shared;          /* the cache entry model belongs to */
    cache_entry_t *loading;         /* the entry this agent downloads */
    cache_entry_t *waiting;         /* the entry this agent waits for */
    fl_client_agent_t *next_waiter; /* in waiting->waiters */
    uint64_t bytes_cached;          /* downloads served from the cache */
    float *residual;                /* [residual_n] */
    size_t residual_n;
    round_t *round;
    fl_envelope_t *pending_invite; /* waits for the model it names */
    fetch_t fetch;
    uint64_t bytes_up, bytes_down;
    uint64_t heartbeats;
    int freeing;   /* free requested while a round trains */
    int trainings; /* works in flight */
};

/* ---- small helpers ---- */

static void event(fl_client_agent_t *a, int kind, uint64_t round,
                  uint64_t version, int status, const char *what)
{
    if (!a->o.on_event)
        return;
    fl_client_event_t ev = {.kind = kind,
                            .round = round,
                            .version = version,
                            .status = status,
                            .what = what};
    a->o.on_event(a->o.ctx, &ev);
}

static int send_env(fl_client_agent_t *a, fl_envelope_t *e)
{
    if (!a->connected || !a->io)
        return FL_ECLOSED;
    fl_buf_t b;
    fl_buf_init(&b, a->o.max_frame + FL_FRAME_HEADER_LEN);
    int rc = fl_proto_encode_frame(e, &b, a->o.max_frame);
    if (rc == 0) {
        rc = a->io->send(a->ioctx, b.data + FL_FRAME_HEADER_LEN,
                         b.len - FL_FRAME_HEADER_LEN);
        if (rc >= 0) {
            a->bytes_up += b.len;
            rc = 0;
        }
    }
    fl_buf_free(&b);
    return rc;
}

/* A protocol failure: report it and close the connection. */
static int fail(fl_client_agent_t *a, int rc, const char *what)
{
    event(a, FL_CLIENT_EV_ERROR, a->round ? a->round->round : 0, a->version, rc,
          what);
    if (a->connected && a->io)
        a->io->close(a->ioctx, rc);
    return rc < 0 ? rc : FL_EPROTO;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int path_in(const char *dir, const char *name, char *out, size_t len)
{
    return fl_path_join(out, len, dir, name);
}

/* ---- the model in use ---- */

/* ---- the shared model cache ---- */

int fl_client_model_cache_new(fl_client_model_cache_t **out)
{
    *out = fl_calloc(1, sizeof **out);
    return *out ? 0 : FL_ENOMEM;
}

void fl_client_model_cache_free(fl_client_model_cache_t *c)
{
    if (!c)
        return;
    c->freed = 1;
    if (!c->entries)
        fl_free(c);
}

void fl_client_model_cache_stats(const fl_client_model_cache_t *c,
                                 fl_client_model_cache_stats_t *out)
{
    memset(out, 0, sizeof *out);
    out->hits = c->hits;
    out->hit_bytes = c->hit_bytes;
    for (const cache_entry_t *e = c->entries; e; e = e->next)
        out->entries += e->model != NULL;
}

/* The entry of version for this agent's signing key, or NULL. */
static cache_entry_t *cache_find(fl_client_agent_t *a, uint64_t version)
{
    fl_client_model_cache_t *c = a->o.model_cache;
    if (!c || c->freed)
        return NULL;
    for (cache_entry_t *e = c->entries; e; e = e->next)
        if (e->version == version &&
            sodium_memcmp(e->signing_pub, a->o.signing_pub,
                          sizeof e->signing_pub) == 0)
            return e;
    return NULL;
}

static cache_entry_t *cache_add(fl_client_agent_t *a, uint64_t version)
{
    fl_client_model_cache_t *c = a->o.model_cache;
    if (!c || c->freed)
        return NULL;
    cache_entry_t *e = fl_calloc(1, sizeof *e);
    if (!e)
        return NULL; /* the agent downloads on its own */
    e->cache = c;
    e->version = version;
    memcpy(e->signing_pub, a->o.signing_pub, sizeof e->signing_pub);
    e->next = c->entries;
    c->entries = e;
    return e;
}

/* Frees an entry nobody uses, waits for or loads (and the cache after its
 * last entry when it was freed). */
static void cache_drop_if_unused(cache_entry_t *e)
{
    if (e->refs > 0 || e->loader || e->waiters)
        return;
    fl_client_model_cache_t *c = e->cache;
    for (cache_entry_t **pp = &c->entries; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    fl_model_free(e->model);
    fl_free(e);
    if (c->freed && !c->entries)
        fl_free(c);
}

/* Lets go of the model in use, owned or shared. */
static void model_release(fl_client_agent_t *a)
{
    if (a->shared) {
        cache_entry_t *e = a->shared;
        a->shared = NULL;
        e->refs--;
        cache_drop_if_unused(e);
    } else {
        fl_model_free(a->model);
    }
    a->model = NULL;
}

static void waiter_remove(fl_client_agent_t *a)
{
    cache_entry_t *e = a->waiting;
    if (!e)
        return;
    for (fl_client_agent_t **pp = &e->waiters; *pp; pp = &(*pp)->next_waiter)
        if (*pp == a) {
            *pp = a->next_waiter;
            break;
        }
    a->waiting = NULL;
    a->next_waiter = NULL;
    cache_drop_if_unused(e);
}

static int start_fetch(fl_client_agent_t *a, uint64_t version);
static int take_pending_invite(fl_client_agent_t *a);
static void round_end(fl_client_agent_t *a, int status, const char *what);

/* The agents that waited for e, detached from it. */
static fl_client_agent_t *waiters_take(cache_entry_t *e)
{
    fl_client_agent_t *w = e->waiters;
    e->waiters = NULL;
    for (fl_client_agent_t *x = w; x; x = x->next_waiter)
        x->waiting = NULL;
    return w;
}

/* The waiters' download did not happen: each starts its own (one of them
 * becomes the loader, the others wait for it again). */
static void waiters_retry(fl_client_agent_t *w, uint64_t version)
{
    while (w) {
        fl_client_agent_t *n = w->next_waiter;
        w->next_waiter = NULL;
        w->fetch.active = 0;
        if (w->connected && w->hello_done && start_fetch(w, version) < 0 &&
            w->connected && w->io)
            w->io->close(w->ioctx, FL_EIO);
        w = n;
    }
}

/* This agent stops downloading for the cache (failure, disconnection, a
 * newer version): the agents waiting for it fetch on their own. */
static void entry_abandon(cache_entry_t *e)
{
    e->loader = NULL;
    uint64_t v = e->version;
    fl_client_agent_t *w = waiters_take(e);
    cache_drop_if_unused(e);
    waiters_retry(w, v);
}

static void loader_abandon(fl_client_agent_t *a)
{
    cache_entry_t *e = a->loading;
    if (!e)
        return;
    a->loading = NULL;
    entry_abandon(e);
}

/* Uses the cached, ready e as this agent's model (a round in progress is
 * ended first). FL_EAGAIN when a worker still reads the current model
 * (then the agent downloads on its own). */
static int cache_use(fl_client_agent_t *a, cache_entry_t *e, int hit)
{
    if (a->trainings > 0)
        return FL_EAGAIN;
    if (a->round)
        round_end(a, FL_EABORTED, "a new model version arrived");
    model_release(a);
    a->model = e->model;
    a->shared = e;
    a->version = e->version;
    e->refs++;
    if (hit) { /* instead of a download */
        a->bytes_cached += e->wire_bytes;
        e->cache->hits++;
        e->cache->hit_bytes += e->wire_bytes;
    }
    return 0;
}

static int residual_check(fl_client_agent_t *a);

/* After this agent downloaded, verified and loaded its model: the model
 * goes into the cache (e: the entry it loaded for, or NULL), or, when
 * another agent was faster, this copy is dropped for the shared one. The
 * waiters then use it. */
static void cache_publish(fl_client_agent_t *a, cache_entry_t *e,
                          uint64_t wire_bytes)
{
    if (!e) {
        e = cache_find(a, a->version);
        if (e && e->model) {
            cache_use(a, e, 0); /* this copy was downloaded: drop it */
            return;
        }
        if (e || !(e = cache_add(a, a->version)))
            return; /* another agent loads it: keep this copy */
    }
    e->loader = NULL;
    e->model = a->model;
    e->wire_bytes = wire_bytes;
    e->refs = 1;
    a->shared = e;
    fl_client_agent_t *w = waiters_take(e);
    while (w) {
        fl_client_agent_t *n = w->next_waiter;
        w->next_waiter = NULL;
        w->fetch.active = 0;
        if (w->connected && w->hello_done) {
            if (cache_use(w, e, 1) == 0) {
                if (residual_check(w) == 0)
                    event(w, FL_CLIENT_EV_MODEL, 0, w->version, 0,
                          "model verified and in use (shared)");
                take_pending_invite(w);
            } else if (start_fetch(w, e->version) < 0 && w->io) {
                w->io->close(w->ioctx, FL_EIO);
            }
        }
        w = n;
    }
}

/* Whether a model of vocabulary v made for the tokenizer ref (NULL or ""
 * when it does not say) can read this device's tokens; if not, why says
 * so. */
static int tokenizer_ok(const fl_client_agent_t *a, uint64_t v, const char *ref,
                        char *why, size_t whylen)
{
    if (a->o.vocab_size && v != a->o.vocab_size) {
        snprintf(why, whylen,
                 "model vocabulary of %" PRIu64 " tokens, this device's "
                 "tokenizer has %u",
                 v, a->o.vocab_size);
        return 0;
    }
    if (ref && ref[0] && a->o.tokenizer_ref && a->o.tokenizer_ref[0] &&
        strcmp(ref, a->o.tokenizer_ref) != 0) {
        snprintf(why, whylen,
                 "model made for tokenizer %.56s, this device's is %.56s", ref,
                 a->o.tokenizer_ref);
        return 0;
    }
    return 1;
}

/* Loads the store's current version; on failure rolls back once. When
 * neither version verifies and loads (e.g. the server's signing key was
 * rotated), the device starts without a model and downloads the current
 * one: a stored model is never used unverified, and never blocks start. */
static int load_current_model(fl_client_agent_t *a)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        char dir[FL_CLIENT_STORE_PATH_MAX], bin[FL_CLIENT_STORE_PATH_MAX];
        uint64_t v;
        int rc = fl_client_store_current(a->state_dir, &v, dir, sizeof dir);
        if (rc == FL_ENOENT)
            return 0; /* no model yet */
        if (rc == 0)
            rc = fl_artifact_verify_dir(dir, a->o.signing_pub, NULL, NULL, 0);
        if (rc == 0)
            rc = path_in(dir, "model.bin", bin, sizeof bin);
        fl_model_t *m = NULL;
        if (rc == 0)
            rc = fl_model_load(bin, &m);
        char why[200];
        if (rc == 0 &&
            !tokenizer_ok(a, (uint64_t)fl_model_config(m)->vocab_size,
                          fl_model_tokenizer_ref(m), why, sizeof why)) {
            FL_WARN("model version %" PRIu64 " not used: %s", v, why);
            fl_model_free(m);
            m = NULL;
            rc = FL_EFORMAT;
        }
        if (rc == 0) {
            model_release(a);
            a->model = m;
            a->version = v;
            return 0;
        }
        if (rc == FL_ENOMEM || fl_client_store_rollback(a->state_dir) < 0)
            return rc == FL_ENOMEM ? rc : 0;
    }
    return 0;
}

/* After a model change: a residual of another shape is dropped. A new one
 * is allocated at the first round with error feedback (residual_fit), so
 * that devices that never take part hold none (a simulated fleet has
 * thousands of agents in one process). Returns 0. */
static int residual_check(fl_client_agent_t *a)
{
    if (a->model && a->residual &&
        a->residual_n != fl_model_num_params(a->model)) {
        fl_free(a->residual);
        a->residual = NULL;
        a->residual_n = 0;
    }
    return 0;
}

/* Makes sure the residual matches the model's trainable vector. */
static int residual_fit(fl_client_agent_t *a)
{
    if (!a->model)
        return 0;
    size_t d = fl_model_num_params(a->model);
    if (a->residual && a->residual_n == d)
        return 0;
    fl_free(a->residual);
    a->residual = fl_calloc(d, sizeof *a->residual);
    a->residual_n = a->residual ? d : 0;
    return a->residual ? 0 : FL_ENOMEM;
}

/* ---- rounds ---- */

static void round_free(round_t *r)
{
    if (!r)
        return;
    fl_proto_free(r->invite);
    fl_proto_free(r->pending_masked);
    fl_compress_free(r->codec);
    fl_secagg_client_free(r->sa);
    fl_free(r->ring);
    fl_buf_free(&r->payload);
    fl_free(r->residual);
    fl_free(r);
}

/* Ends the agent's current round: journal, event, and (on success) the new
 * residual kept. */
static void round_end(fl_client_agent_t *a, int status, const char *what)
{
    round_t *r = a->round;
    if (!r)
        return;
    a->round = NULL;
    if (status == 0 && r->trained && r->train_rc == 0 && r->residual &&
        a->residual && a->residual_n == r->d) {
        char p[FL_CLIENT_STORE_PATH_MAX];
        memcpy(a->residual, r->residual, r->d * sizeof *a->residual);
        if (path_in(a->state_dir, RESIDUAL_FILE, p, sizeof p) == 0)
            fl_client_residual_save(p, a->residual, r->d, a->version);
    }
    if (r->trained || status != 0) {
        char p[FL_CLIENT_STORE_PATH_MAX];
        fl_client_journal_entry_t e = {.round = r->round,
                                       .model_version = a->version,
                                       .status = status,
                                       .loss_before = r->stats.loss_before,
                                       .loss_after = r->stats.loss_after,
                                       .num_examples = r->stats.num_examples,
                                       .time_ms = fl_time_wall_ms()};
        if (path_in(a->state_dir, JOURNAL_FILE, p, sizeof p) == 0)
            fl_client_journal_append(p, &e);
    }
    if (a->o.on_event) {
        fl_client_event_t ev = {.kind = FL_CLIENT_EV_ROUND_DONE,
                                .round = r->round,
                                .version = a->version,
                                .status = status,
                                .what = what,
                                .stats = r->stats,
                                .bytes_up = a->bytes_up - r->up0,
                                .bytes_down = a->bytes_down - r->down0};
        a->o.on_event(a->o.ctx, &ev);
    }
    if (r->training)
        r->abandoned = 1; /* freed when the work returns */
    else
        round_free(r);
}

static int send_report(fl_client_agent_t *a, round_t *r)
{
    Flotilla__TrainingReport rep = FLOTILLA__TRAINING_REPORT__INIT;
    rep.round = r->round;
    rep.loss_before = r->stats.loss_before;
    rep.loss_after = r->stats.loss_after;
    rep.num_examples = r->stats.num_examples;
    rep.train_ms = (uint32_t)r->stats.train_ms;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT;
    e.training_report = &rep;
    return send_env(a, &e);
}

/* Sends the masked (or, without secure aggregation, plain) input. */
static int send_input(fl_client_agent_t *a, round_t *r,
                      const Flotilla__MaskedInputRequest *req)
{
    int rc;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
    if (r->secagg) {
        Flotilla__MaskedInputResponse *out = NULL;
        rc = fl_secagg_client_masked_input(r->sa, req, r->ring, &out);
        if (rc < 0)
            return rc;
        e.masked_input_response = out;
        rc = send_env(a, &e);
        fl_secagg_msg_free(out);
    } else {
        Flotilla__MaskedInputResponse out =
            FLOTILLA__MASKED_INPUT_RESPONSE__INIT;
        out.round = r->round;
        out.client_id = r->id;
        out.num_values = r->m;
        out.packed.data = r->payload.data;
        out.packed.len = r->payload.len;
        e.masked_input_response = &out;
        rc = send_env(a, &e);
    }
    if (rc == 0) {
        r->sent_input = 1;
        rc = send_report(a, r);
    }
    return rc;
}

static void work_train(uv_work_t *w)
{
    round_t *r = w->data;
    fl_client_agent_t *a = r->a;
    r->train_rc = fl_client_update(r->model, a->o.data, &r->tc, r->codec,
                                   r->residual, a->o.seed ^ r->id, r->ring,
                                   r->secagg ? NULL : &r->payload, &r->stats);
}

static void agent_release(fl_client_agent_t *a);

static void after_train(uv_work_t *w, int status)
{
    round_t *r = w->data;
    fl_client_agent_t *a = r->a;
    r->training = 0;
    r->trained = 1;
    a->trainings--;
    if (status < 0 && r->train_rc == 0)
        r->train_rc = FL_EABORTED;
    if (r->abandoned || a->round != r) {
        round_free(r);
        if (a->freeing)
            agent_release(a);
        return;
    }
    if (r->train_rc < 0) {
        round_end(a, r->train_rc, "local training failed");
        return;
    }
    int rc = 0;
    if (!r->secagg)
        rc = send_input(a, r, NULL);
    else if (r->pending_masked)
        rc = send_input(a, r, r->pending_masked->masked_input_request);
    if (rc < 0) {
        fail(a, rc, "cannot send the masked input");
        round_end(a, rc, "cannot send the masked input");
    }
}

static int codec_from_proto(const Flotilla__CodecConfig *cc, int secagg,
                            fl_compress_config_t *out)
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
        return FL_ENOTSUP;
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
    out->max_summands = cc->max_summands;
    return 0;
}

static int decline(fl_client_agent_t *a, uint64_t round, const char *why)
{
    Flotilla__RoundAccept acc = FLOTILLA__ROUND_ACCEPT__INIT;
    acc.round = round;
    acc.accept = 0;
    acc.reason = (char *)why;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
    e.round_accept = &acc;
    event(a, FL_CLIENT_EV_DECLINED, round, a->version, 0, why);
    return send_env(a, &e);
}

static int start_fetch(fl_client_agent_t *a, uint64_t version);

/* Takes the invitation envelope (owned) on success or failure. */
static int on_invite(fl_client_agent_t *a, fl_envelope_t *env)
{
    const Flotilla__RoundConfig *cfg =
        env->round_invite ? env->round_invite->config : NULL;
    round_t *r = NULL;
    int rc = 0;
    char why[128];
    if (!cfg || !cfg->training || !cfg->codec || !cfg->secagg ||
        !cfg->deadlines) {
        fl_proto_free(env);
        return fail(a, FL_EPROTO, "invitation without a full RoundConfig");
    }
    uint64_t round = cfg->round;
    if (a->round) { /* a new invitation ends what is left of the last one */
        round_end(a, FL_EABORTED, "superseded by a new invitation");
    }
    /* The device's own policy, before anything is spent on the round. */
    why[0] = '\0';
    if (a->o.require_secagg && !cfg->secagg->enabled)
        snprintf(why, sizeof why,
                 "secure aggregation is off and this device requires it");
    else if (cfg->secagg->n_participants < a->o.min_participants)
        snprintf(why, sizeof why,
                 "%zu invitees, this device requires at least %u",
                 cfg->secagg->n_participants, a->o.min_participants);
    if (why[0]) {
        rc = decline(a, round, why);
        fl_proto_free(env);
        return rc;
    }
    if (a->model && cfg->model_version != a->version && a->trainings == 0) {
        /* A version committed while a training was in flight. */
        uint64_t v;
        char dir[FL_CLIENT_STORE_PATH_MAX];
        if (fl_client_store_current(a->state_dir, &v, dir, sizeof dir) == 0 &&
            v == cfg->model_version && load_current_model(a) == 0) {
            residual_check(a);
            event(a, FL_CLIENT_EV_MODEL, 0, a->version, 0,
                  "model verified and in use");
        }
    }
    if (!a->model || cfg->model_version != a->version) {
        uint64_t want = cfg->model_version;
        if (a->model && want < a->version) {
            rc = decline(a, round, "model out of date");
            fl_proto_free(env);
            return rc;
        }
        /* Fetch the round's model first; the invitation is answered once
         * it is verified and in use (within the server's accept deadline). */
        if (a->pending_invite) {
            Flotilla__RoundConfig *old =
                a->pending_invite->round_invite->config;
            decline(a, old->round, "superseded by a new invitation");
            fl_proto_free(a->pending_invite);
        }
        a->pending_invite = env;
        return start_fetch(a, want);
    }
    if (a->o.eligible && !a->o.eligible(a->o.ctx, why, sizeof why)) {
        rc = decline(a, round, why);
        fl_proto_free(env);
        return rc;
    }
    const Flotilla__TrainingConfig *t = cfg->training;
    size_t d = fl_model_num_params(a->model);
    if (cfg->num_params != d || cfg->round_nonce.len != 32 ||
        t->local_steps < 1 || t->local_steps > 10000 || t->batch_size < 1 ||
        t->batch_size > 1024 || t->seq_len < 1 ||
        (int)t->seq_len > fl_model_config(a->model)->seq_len ||
        !(t->learning_rate > 0 && t->learning_rate < 10) ||
        (t->optimizer != FLOTILLA__OPTIMIZER__OPTIMIZER_ADAMW &&
         t->optimizer != FLOTILLA__OPTIMIZER__OPTIMIZER_SGD) ||
        cfg->client_id < 1) {
        rc = decline(a, round, "round configuration not acceptable");
        fl_proto_free(env);
        return rc;
    }

    r = fl_calloc(1, sizeof *r);
    if (!r) {
        fl_proto_free(env);
        return FL_ENOMEM;
    }
    r->a = a;
    r->invite = env;
    r->cfg = cfg;
    r->round = round;
    r->id = cfg->client_id;
    r->secagg = cfg->secagg->enabled;
    r->d = d;
    r->model = a->model;
    r->up0 = a->bytes_up;
    r->down0 = a->bytes_down;
    fl_buf_init(&r->payload, 1u << 30);
    r->tc = (fl_client_train_cfg_t){
        .local_steps = t->local_steps,
        .batch_size = t->batch_size,
        .seq_len = t->seq_len,
        .learning_rate = t->learning_rate,
        .optimizer = t->optimizer == FLOTILLA__OPTIMIZER__OPTIMIZER_SGD
                         ? FL_MODEL_SGD
                         : FL_MODEL_ADAMW,
        .weight_decay = t->weight_decay,
        .momentum = t->momentum,
        .grad_clip = t->grad_clip,
        .seed = t->seed,
    };

    fl_compress_config_t cc;
    if ((rc = codec_from_proto(cfg->codec, r->secagg, &cc)) < 0 ||
        (rc = fl_compress_config_check(&cc, d)) < 0 ||
        (rc = fl_compress_new(&r->codec, &cc, d)) < 0) {
        round_free(r);
        return decline(a, round, "codec not acceptable");
    }
    r->m = fl_compress_value_count(r->codec);
    if (r->secagg) {
        r->ring = fl_calloc(r->m ? r->m : 1, sizeof *r->ring);
        if (!r->ring) {
            round_free(r);
            return FL_ENOMEM;
        }
    }
    if (cc.error_feedback && (rc = residual_fit(a)) == 0) {
        r->residual = fl_malloc(d * sizeof *r->residual);
        if (!r->residual) {
            round_free(r);
            return FL_ENOMEM;
        }
        memcpy(r->residual, a->residual, d * sizeof *r->residual);
    }
    if (r->secagg) {
        fl_secagg_round_t sr;
        memset(&sr, 0, sizeof sr);
        sr.round = round;
        memcpy(sr.round_nonce, cfg->round_nonce.data, 32);
        sr.dim = r->m;
        sr.config = cfg->secagg;
        uint8_t sk[FL_ARTIFACT_SECRET_BYTES];
        fl_artifact_key_secret(a->o.identity, sk);
        rc = fl_secagg_client_new(&sr, r->id, sk, &r->sa);
        sodium_memzero(sk, sizeof sk);
        if (rc < 0) {
            round_free(r);
            return decline(a, round, "secure aggregation not acceptable");
        }
    }

    /* Accept, advertise keys at once (they do not depend on the update),
     * and train on the thread pool meanwhile. */
    Flotilla__RoundAccept acc = FLOTILLA__ROUND_ACCEPT__INIT;
    acc.round = round;
    acc.accept = 1;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
    e.round_accept = &acc;
    a->round = r;
    if ((rc = send_env(a, &e)) < 0)
        goto fail;
    if (r->secagg) {
        Flotilla__AdvertiseKeys *adv = NULL;
        if ((rc = fl_secagg_client_advertise(r->sa, &adv)) < 0)
            goto fail;
        fl_envelope_t ae = FLOTILLA__ENVELOPE__INIT;
        ae.body_case = FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS;
        ae.advertise_keys = adv;
        rc = send_env(a, &ae);
        fl_secagg_msg_free(adv);
        if (rc < 0)
            goto fail;
    }
    r->work.data = r;
    r->training = 1;
    a->trainings++;
    if ((rc = uv_queue_work(a->o.loop, &r->work, work_train, after_train)) <
        0) {
        r->training = 0;
        a->trainings--;
        rc = FL_EIO;
        goto fail;
    }
    return 0;
fail:
    round_end(a, rc, "cannot take part");
    return rc;
}

/* Checks that a round message belongs to the current round. */
static round_t *current_round(fl_client_agent_t *a, uint64_t round)
{
    return (a->round && a->round->round == round) ? a->round : NULL;
}

static int on_share_keys(fl_client_agent_t *a,
                         const Flotilla__ShareKeysRequest *m)
{
    round_t *r = current_round(a, m->round);
    if (!r || !r->secagg)
        return 0; /* a late message of a round we left: ignored */
    Flotilla__ShareKeysResponse *out = NULL;
    int rc = fl_secagg_client_share_keys(r->sa, m, &out);
    if (rc < 0) {
        round_end(a, rc, "share-keys request refused");
        return fail(a, rc, "share-keys request refused");
    }
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE;
    e.share_keys_response = out;
    rc = send_env(a, &e);
    fl_secagg_msg_free(out);
    return rc;
}

/* Takes env (owned). */
static int on_masked_request(fl_client_agent_t *a, fl_envelope_t *env)
{
    const Flotilla__MaskedInputRequest *m = env->masked_input_request;
    round_t *r = current_round(a, m->round);
    int rc = 0;
    if (!r || !r->secagg || r->sent_input || r->pending_masked) {
        fl_proto_free(env);
        return 0;
    }
    if (!r->trained) {
        r->pending_masked = env; /* answered when training ends */
        return 0;
    }
    rc = send_input(a, r, m);
    fl_proto_free(env);
    if (rc < 0) {
        round_end(a, rc, "masked input refused");
        return fail(a, rc, "masked input refused");
    }
    return 0;
}

static int on_unmasking(fl_client_agent_t *a,
                        const Flotilla__UnmaskingRequest *m)
{
    round_t *r = current_round(a, m->round);
    if (!r || !r->secagg)
        return 0;
    Flotilla__UnmaskingResponse *out = NULL;
    int rc = fl_secagg_client_unmask(r->sa, m, &out);
    if (rc < 0) {
        round_end(a, rc, "unmasking request refused");
        return fail(a, rc, "unmasking request refused");
    }
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE;
    e.unmasking_response = out;
    rc = send_env(a, &e);
    fl_secagg_msg_free(out);
    return rc;
}

/* ---- model download ---- */

/* Ends the download in progress, and the agent's part in a shared one. */
static void fetch_reset(fl_client_agent_t *a)
{
    loader_abandon(a);
    waiter_remove(a);
    fl_artifact_manifest_free(a->fetch.manifest);
    memset(&a->fetch, 0, sizeof a->fetch);
}

static int start_fetch(fl_client_agent_t *a, uint64_t version)
{
    if (a->fetch.active && a->fetch.version >= version)
        return 0;
    fetch_reset(a);
    /* With a shared cache: the version in use by another agent, or wait
     * for the agent that downloads it, or download it for everyone. */
    cache_entry_t *ce = cache_find(a, version);
    if (ce && ce->model && (!a->model || version > a->version) &&
        cache_use(a, ce, 1) == 0) {
        residual_check(a);
        event(a, FL_CLIENT_EV_MODEL, 0, a->version, 0,
              "model verified and in use (shared)");
        return take_pending_invite(a);
    }
    a->fetch.active = 1;
    a->fetch.version = version;
    if (ce && !ce->model && ce->loader && ce->loader != a) {
        a->waiting = ce;
        a->next_waiter = ce->waiters;
        ce->waiters = a;
        return 0;
    }
    if (!ce && (ce = cache_add(a, version))) {
        ce->loader = a;
        a->loading = ce;
    }
    Flotilla__ManifestRequest req = FLOTILLA__MANIFEST_REQUEST__INIT;
    req.version = version;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST;
    e.manifest_request = &req;
    return send_env(a, &e);
}

/* Asks for the next missing piece, or finishes the download. */
static int fetch_next(fl_client_agent_t *a);

/* Answers an invitation that waited for its model: accepted now if the
 * model it names is in use, declined otherwise. */
static int take_pending_invite(fl_client_agent_t *a)
{
    fl_envelope_t *env = a->pending_invite;
    if (!env)
        return 0;
    a->pending_invite = NULL;
    const Flotilla__RoundConfig *cfg = env->round_invite->config;
    if (a->model && cfg->model_version == a->version)
        return on_invite(a, env); /* takes env */
    int rc = decline(a, cfg->round, "model not available");
    fl_proto_free(env);
    return rc;
}

static int fetch_finish(fl_client_agent_t *a)
{
    char why[160] = "";
    uint64_t v = a->fetch.version;
    int rc = fl_artifact_verify_dir(a->fetch.dir, a->o.signing_pub, NULL, why,
                                    sizeof why);
    if (rc < 0) {
        /* Never used: the staged files are discarded. */
        char p[FL_CLIENT_STORE_PATH_MAX];
        for (size_t i = 0; i < a->fetch.manifest->nfiles; i++)
            if (path_in(a->fetch.dir, a->fetch.manifest->files[i].name, p,
                        sizeof p) == 0)
                unlink(p);
        fetch_reset(a);
        event(a, FL_CLIENT_EV_MODEL_REFUSED, 0, v, rc, why);
        return take_pending_invite(a);
    }
    /* What the download took, for agents that share it instead. */
    uint64_t wire = a->fetch.meta_bytes;
    for (size_t i = 0; i < a->fetch.manifest->nfiles; i++)
        wire += a->fetch.manifest->files[i].size;
    cache_entry_t *shared = a->loading; /* kept through fetch_reset */
    a->loading = NULL;
    fetch_reset(a);
    if ((rc = fl_client_store_commit(a->state_dir, v)) < 0) {
        if (shared)
            entry_abandon(shared);
        event(a, FL_CLIENT_EV_MODEL_REFUSED, 0, v, rc, "cannot store it");
        return 0;
    }
    if (a->round) /* the training in flight keeps reading the old model */
        round_end(a, FL_EABORTED, "a new model version arrived");
    if (a->trainings > 0) {
        /* The old model is still read by a worker: load the new one at the
         * next invitation instead. */
        if (shared)
            entry_abandon(shared);
        return take_pending_invite(a);
    }
    rc = load_current_model(a);
    if (rc < 0 || a->version != v) {
        if (shared)
            entry_abandon(shared);
        event(a, FL_CLIENT_EV_MODEL_REFUSED, 0, v, rc < 0 ? rc : FL_EFORMAT,
              "the new version does not load; rolled back");
        return 0;
    }
    residual_check(a);
    if (a->o.model_cache)
        cache_publish(a, shared, wire);
    event(a, FL_CLIENT_EV_MODEL, 0, v, 0, "model verified and in use");
    return take_pending_invite(a);
}

static int fetch_next(fl_client_agent_t *a)
{
    fetch_t *f = &a->fetch;
    while (f->file < f->manifest->nfiles) {
        const fl_artifact_file_t *fi = &f->manifest->files[f->file];
        char p[FL_CLIENT_STORE_PATH_MAX];
        struct stat st;
        if (path_in(f->dir, fi->name, p, sizeof p) < 0)
            return FL_ETOOBIG;
        f->offset = stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
        if (f->offset > fi->size) { /* not this version's file */
            unlink(p);
            f->offset = 0;
        }
        if (f->offset < fi->size) {
            Flotilla__ChunkRequest req = FLOTILLA__CHUNK_REQUEST__INIT;
            req.version = f->version;
            req.file = (char *)fi->name;
            req.offset = f->offset;
            req.length =
                (uint32_t)FL_MIN((uint64_t)CHUNK_BYTES, fi->size - f->offset);
            fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
            e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST;
            e.chunk_request = &req;
            return send_env(a, &e);
        }
        f->file++;
    }
    return fetch_finish(a);
}

static int on_manifest(fl_client_agent_t *a,
                       const Flotilla__ManifestResponse *m)
{
    fetch_t *f = &a->fetch;
    char why[160] = "", dir[FL_CLIENT_STORE_PATH_MAX],
         p[FL_CLIENT_STORE_PATH_MAX];
    int rc;
    if (!f->active)
        return 0;
    if (m->signature.len != FL_ARTIFACT_SIG_BYTES ||
        m->manifest_json.len > FL_ARTIFACT_MANIFEST_MAX)
        return fail(a, FL_EPROTO, "malformed manifest response");
    /* The signature first: nothing in an unsigned manifest is looked at. */
    rc = fl_artifact_sig_verify(a->o.signing_pub, m->manifest_json.data,
                                m->manifest_json.len, m->signature.data);
    if (rc == 0)
        rc = fl_artifact_manifest_parse(m->manifest_json.data,
                                        m->manifest_json.len, &f->manifest, why,
                                        sizeof why);
    if (rc == 0 && (f->manifest->version <= a->version ||
                    (f->version && f->manifest->version != f->version))) {
        rc = FL_EVERSION; /* a replayed or unexpected version */
        snprintf(why, sizeof why, "version %" PRIu64 " not newer than %" PRIu64,
                 f->manifest->version, a->version);
    }
    uint64_t vocab = a->o.vocab_size;
    char tokref[FL_MODEL_TOKREF_MAX] = "";
    if (rc == 0 && fl_artifact_manifest_config_u64(f->manifest, "architecture",
                                                   "vocab_size", &vocab) != 0)
        vocab = a->o.vocab_size; /* not said: checked once loaded */
    if (rc == 0)
        fl_artifact_manifest_config_str(f->manifest, "architecture",
                                        "tokenizer", tokref, sizeof tokref);
    if (rc == 0 && !tokenizer_ok(a, vocab, tokref, why, sizeof why))
        rc = FL_EFORMAT; /* not downloaded: it could not be used */
    if (rc < 0) {
        uint64_t v = f->version;
        fetch_reset(a);
        event(a, FL_CLIENT_EV_MODEL_REFUSED, 0, v, rc,
              why[0] ? why : "manifest signature does not verify");
        return take_pending_invite(a);
    }
    f->version = f->manifest->version;
    f->meta_bytes = m->manifest_json.len + m->signature.len;
    if ((rc = fl_client_store_staging(a->state_dir, f->version, dir,
                                      sizeof dir)) < 0)
        return fail(a, rc, "cannot stage the download");
    memcpy(f->dir, dir, sizeof f->dir);
    /* A staged manifest of another content means the staged files are of
     * another build of this version: start over. */
    uint8_t *old = NULL;
    size_t oldlen = 0;
    if (path_in(dir, FL_ARTIFACT_MANIFEST, p, sizeof p) == 0 &&
        fl_file_read_all(p, FL_ARTIFACT_MANIFEST_MAX, &old, &oldlen) == 0) {
        if (oldlen != m->manifest_json.len ||
            memcmp(old, m->manifest_json.data, oldlen) != 0)
            for (size_t i = 0; i < f->manifest->nfiles; i++) {
                char fp[FL_CLIENT_STORE_PATH_MAX];
                if (path_in(dir, f->manifest->files[i].name, fp, sizeof fp) ==
                    0)
                    unlink(fp);
            }
        fl_free(old);
    }
    if ((rc = fl_file_write_atomic(p, m->manifest_json.data,
                                   m->manifest_json.len, 0600)) < 0 ||
        (rc = path_in(dir, FL_ARTIFACT_SIGNATURE, p, sizeof p)) < 0 ||
        (rc = fl_file_write_atomic(p, m->signature.data, m->signature.len,
                                   0600)) < 0)
        return fail(a, rc, "cannot stage the manifest");
    f->file = 0;
    rc = fetch_next(a);
    return rc < 0 ? fail(a, rc, "download failed") : 0;
}

static int on_chunk(fl_client_agent_t *a, const Flotilla__Chunk *c)
{
    fetch_t *f = &a->fetch;
    if (!f->active || !f->manifest || f->file >= f->manifest->nfiles)
        return 0;
    const fl_artifact_file_t *fi = &f->manifest->files[f->file];
    if (c->version != f->version || !c->file || strcmp(c->file, fi->name) ||
        c->offset != f->offset || c->total_size != fi->size ||
        c->data.len == 0 || c->data.len > fi->size - f->offset)
        return fail(a, FL_EPROTO, "unexpected chunk");
    char p[FL_CLIENT_STORE_PATH_MAX];
    int rc = path_in(f->dir, fi->name, p, sizeof p);
    if (rc < 0)
        return fail(a, rc, "bad file name");
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(a, fl_err_from_errno(errno), "cannot write the download");
    size_t off = 0;
    while (off < c->data.len) {
        ssize_t w = write(fd, c->data.data + off, c->data.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = fl_err_from_errno(errno);
            break;
        }
        off += (size_t)w;
    }
    if (rc == 0 && f->offset + c->data.len == fi->size && fsync(fd) < 0)
        rc = fl_err_from_errno(errno);
    close(fd);
    if (rc < 0)
        return fail(a, rc, "cannot write the download");
    rc = fetch_next(a);
    return rc < 0 ? fail(a, rc, "download failed") : 0;
}

/* ---- hello ---- */

static int on_server_hello(fl_client_agent_t *a, const Flotilla__ServerHello *h)
{
    if (a->hello_done || h->nonce.len != 32)
        return fail(a, FL_EPROTO, "unexpected server hello");
    if (h->protocol_version != FL_PROTOCOL_VERSION)
        return fail(a, FL_EVERSION, "server speaks another protocol version");
    memcpy(a->nonce, h->nonce.data, 32);

    uint8_t pk[32], sig[64], msg[sizeof HELLO_LABEL - 1 + 32 + 32 + 4];
    fl_artifact_key_public(a->o.identity, pk);
    size_t n = sizeof HELLO_LABEL - 1;
    memcpy(msg, HELLO_LABEL, n);
    memcpy(msg + n, a->nonce, 32);
    memcpy(msg + n + 32, pk, 32);
    put_be32(msg + n + 64, FL_PROTOCOL_VERSION);
    int rc = fl_artifact_sign(a->o.identity, msg, sizeof msg, sig);
    if (rc < 0)
        return fail(a, rc, "cannot sign the hello");

    char *caps[3];
    size_t ncaps = 0;
    caps[ncaps++] = "chacha20";
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("aes"))
        caps[ncaps++] = "aes";
#endif
    Flotilla__ClientHello ch = FLOTILLA__CLIENT_HELLO__INIT;
    ch.protocol_version = FL_PROTOCOL_VERSION;
    ch.identity_key.data = pk;
    ch.identity_key.len = 32;
    ch.signature.data = sig;
    ch.signature.len = 64;
    ch.capabilities = caps;
    ch.n_capabilities = ncaps;
    ch.model_version = a->version;
    ch.client_version = (char *)FL_VERSION;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO;
    e.client_hello = &ch;
    return send_env(a, &e);
}

static int on_hello_result(fl_client_agent_t *a, const Flotilla__HelloResult *r)
{
    if (a->hello_done)
        return fail(a, FL_EPROTO, "unexpected hello result");
    if (!r->accepted) {
        event(a, FL_CLIENT_EV_REFUSED, 0, a->version, (int)r->reason,
              "the server refused this device");
        if (a->io)
            a->io->close(a->ioctx, FL_EDENIED);
        return FL_EDENIED;
    }
    a->hello_done = 1;
    event(a, FL_CLIENT_EV_HELLO, 0, a->version, 0, "connected");
    if (r->current_model_version > a->version)
        return start_fetch(a, r->current_model_version);
    return 0;
}

/* ---- dispatch ---- */

int fl_client_agent_on_frame(fl_client_agent_t *a, const uint8_t *payload,
                             size_t len)
{
    fl_envelope_t *e = NULL;
    a->bytes_down += len + FL_FRAME_HEADER_LEN;
    int rc = fl_proto_decode(payload, len, a->o.max_frame, &e);
    if (rc < 0)
        return fail(a, rc, "undecodable frame");
    int body = e->body_case;
    if (!a->hello_done && body != FLOTILLA__ENVELOPE__BODY_SERVER_HELLO &&
        body != FLOTILLA__ENVELOPE__BODY_HELLO_RESULT &&
        body != FLOTILLA__ENVELOPE__BODY_HEARTBEAT &&
        body != FLOTILLA__ENVELOPE__BODY_ERROR) {
        fl_proto_free(e);
        return fail(a, FL_ESTATE, "message before the hello completed");
    }
    switch (body) {
    case FLOTILLA__ENVELOPE__BODY_SERVER_HELLO:
        rc = on_server_hello(a, e->server_hello);
        break;
    case FLOTILLA__ENVELOPE__BODY_HELLO_RESULT:
        rc = on_hello_result(a, e->hello_result);
        break;
    case FLOTILLA__ENVELOPE__BODY_HEARTBEAT:
        rc = 0;
        break;
    case FLOTILLA__ENVELOPE__BODY_ROUND_INVITE:
        return on_invite(a, e); /* takes e */
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST:
        rc = on_share_keys(a, e->share_keys_request);
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST:
        return on_masked_request(a, e); /* takes e */
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST:
        rc = on_unmasking(a, e->unmasking_request);
        break;
    case FLOTILLA__ENVELOPE__BODY_ROUND_RESULT: {
        const Flotilla__RoundResult *r = e->round_result;
        if (current_round(a, r->round))
            round_end(a, r->success ? 0 : FL_EABORTED,
                      r->success ? "round complete" : "round failed");
        if (r->success && r->new_model_version > a->version)
            rc = start_fetch(a, r->new_model_version);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE:
        /* A version published by a round this device was not part of. */
        if (a->hello_done && e->model_available->version > a->version)
            rc = start_fetch(a, e->model_available->version);
        break;
    case FLOTILLA__ENVELOPE__BODY_ABORT:
        if (current_round(a, e->abort->round))
            round_end(a, FL_EABORTED,
                      e->abort->message ? e->abort->message : "aborted");
        rc = 0;
        break;
    case FLOTILLA__ENVELOPE__BODY_MANIFEST_RESPONSE:
        rc = on_manifest(a, e->manifest_response);
        break;
    case FLOTILLA__ENVELOPE__BODY_CHUNK:
        rc = on_chunk(a, e->chunk);
        break;
    case FLOTILLA__ENVELOPE__BODY_ERROR:
        rc = 0; /* the server closes after it */
        break;
    default:
        rc = fail(a, FL_EPROTO, "message a server does not send");
        break;
    }
    fl_proto_free(e);
    return rc;
}

/* ---- life cycle ---- */

int fl_client_agent_new(const fl_client_agent_opts_t *o,
                        fl_client_agent_t **out)
{
    int rc;
    *out = NULL;
    if (!o->loop || !o->state_dir || !o->identity || !o->data)
        return FL_EINVAL;
    fl_client_agent_t *a = fl_calloc(1, sizeof *a);
    if (!a)
        return FL_ENOMEM;
    a->o = *o;
    if (!a->o.max_frame)
        a->o.max_frame = FL_FRAME_DEFAULT_MAX;
    if (snprintf(a->state_dir, sizeof a->state_dir, "%s", o->state_dir) >=
        (int)sizeof a->state_dir) {
        rc = FL_ETOOBIG;
        goto fail;
    }
    a->o.state_dir = a->state_dir;
    if ((rc = fl_mkdir_p(a->state_dir, 0700)) < 0 ||
        (rc = load_current_model(a)) < 0)
        goto fail;
    if (a->model) {
        char p[FL_CLIENT_STORE_PATH_MAX];
        uint64_t v;
        float *r = NULL;
        size_t n = 0;
        size_t d = fl_model_num_params(a->model);
        if (path_in(a->state_dir, RESIDUAL_FILE, p, sizeof p) == 0 &&
            fl_client_residual_load(p, FL_MIN(d, MAX_PARAMS), &r, &n, &v) ==
                0 &&
            n == d) {
            a->residual = r;
            a->residual_n = n;
        } else {
            fl_free(r); /* missing, damaged or of another shape: start over */
        }
    }
    *out = a;
    return 0;
fail:
    fl_model_free(a->model);
    fl_free(a);
    return rc;
}

static void agent_release(fl_client_agent_t *a)
{
    if (a->trainings > 0)
        return;
    fl_proto_free(a->pending_invite);
    fetch_reset(a);
    model_release(a);
    fl_free(a->residual);
    fl_free(a);
}

void fl_client_agent_free(fl_client_agent_t *a)
{
    if (!a)
        return;
    a->connected = 0;
    a->io = NULL;
    if (a->round)
        round_end(a, FL_EABORTED, "shutting down");
    loader_abandon(a); /* now: other agents may not wait for this one */
    waiter_remove(a);
    a->freeing = 1;
    agent_release(a);
}

void fl_client_agent_connected(fl_client_agent_t *a, const fl_client_io_t *io,
                               void *ioctx)
{
    a->io = io;
    a->ioctx = ioctx;
    a->connected = 1;
    a->hello_done = 0;
}

void fl_client_agent_disconnected(fl_client_agent_t *a)
{
    a->connected = 0;
    a->hello_done = 0;
    a->io = NULL;
    a->ioctx = NULL;
    if (a->round)
        round_end(a, FL_ECLOSED, "connection lost");
    fl_proto_free(a->pending_invite);
    a->pending_invite = NULL;
    loader_abandon(a); /* the agents waiting for it fetch on their own */
    waiter_remove(a);
    a->fetch.active = 0; /* the staged files stay: the next one resumes */
    fl_artifact_manifest_free(a->fetch.manifest);
    a->fetch.manifest = NULL;
}

int fl_client_agent_heartbeat(fl_client_agent_t *a)
{
    if (!a->connected || !a->hello_done)
        return 0;
    Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
    hb.seq = ++a->heartbeats;
    hb.time_ms = fl_time_wall_ms();
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    return send_env(a, &e);
}

fl_model_t *fl_client_agent_model(fl_client_agent_t *a, uint64_t *version)
{
    if (version)
        *version = a->version;
    return a->model;
}

void fl_client_agent_bytes(const fl_client_agent_t *a, uint64_t *up,
                           uint64_t *down)
{
    *up = a->bytes_up;
    *down = a->bytes_down;
}

uint64_t fl_client_agent_bytes_cached(const fl_client_agent_t *a)
{
    return a->bytes_cached;
}
