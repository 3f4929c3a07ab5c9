/* client/daemon.c — `flotilla client`: the agent on a TLS connection with
 * reconnection, the local inference socket, limits and signals. */
#include "client/client.h"

#include "model/quant.h"
#include "model/tokenizer.h"
#include "net/net.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* The int8 model that inference uses, shared by worker threads. */
typedef struct {
    fl_q8_model_t *q;
    uint64_t version;
    int refs;
} qref_t;

typedef struct {
    const fl_client_config_t *cfg;
    uv_loop_t *loop;
    fl_artifact_key_t *identity;
    fl_tokenizer_t *tok;
    fl_data_t *data;
    fl_client_agent_t *agent;
    fl_net_tls_t *tls;
    fl_net_reconnect_t *reconnect;
    fl_net_conn_t *conn; /* the session the agent knows of */
    fl_client_infer_t *infer;
    fl_client_windows_t windows;
    uv_signal_t sigterm, sigint;
    uv_timer_t heartbeat;
    pthread_mutex_t qlock;
    qref_t *qcur;
    char host[256];
    int port;
    int stopping;
} daemon_t;

/* ---- the int8 model for inference ---- */

static void qref_put(daemon_t *d, qref_t *r)
{
    pthread_mutex_lock(&d->qlock);
    int last = --r->refs == 0;
    pthread_mutex_unlock(&d->qlock);
    if (last) {
        fl_q8_model_free(r->q);
        fl_free(r);
    }
}

/* Quantizes the agent's current model for inference (on the loop). */
static void refresh_q8(daemon_t *d)
{
    uint64_t v;
    fl_model_t *m = fl_client_agent_model(d->agent, &v);
    if (!m || (d->qcur && d->qcur->version == v))
        return;
    qref_t *r = fl_calloc(1, sizeof *r);
    if (!r)
        return;
    int rc = fl_q8_model_from_model(
        m, fl_q8_default_group_size(fl_model_config(m)), &r->q);
    if (rc < 0) {
        FL_WARN("cannot quantize model %llu for inference: %s",
                (unsigned long long)v, fl_strerror(rc));
        fl_free(r);
        return;
    }
    r->version = v;
    r->refs = 1;
    pthread_mutex_lock(&d->qlock);
    qref_t *old = d->qcur;
    d->qcur = r;
    pthread_mutex_unlock(&d->qlock);
    if (old)
        qref_put(d, old);
}

static int generate(void *ctx, const fl_client_gen_req_t *req, fl_buf_t *out,
                    fl_client_gen_stats_t *st)
{
    daemon_t *d = ctx;
    pthread_mutex_lock(&d->qlock);
    qref_t *r = d->qcur;
    if (r)
        r->refs++;
    pthread_mutex_unlock(&d->qlock);
    if (!r)
        return FL_ENOENT; /* no verified model yet */
    int rc = fl_client_generate(r->q, d->tok, req, out, st);
    qref_put(d, r);
    return rc;
}

/* ---- the agent's events, logged ---- */

static void on_event(void *ctx, const fl_client_event_t *ev)
{
    daemon_t *d = ctx;
    switch (ev->kind) {
    case FL_CLIENT_EV_HELLO:
        FL_INFO("connected to %s:%d, model version %llu", d->host, d->port,
                (unsigned long long)ev->version);
        break;
    case FL_CLIENT_EV_REFUSED:
        FL_ERROR("the server refused this device (reason %d): is its key "
                 "enrolled?",
                 ev->status);
        break;
    case FL_CLIENT_EV_MODEL:
        FL_INFO("model version %llu verified and in use",
                (unsigned long long)ev->version);
        refresh_q8(d);
        break;
    case FL_CLIENT_EV_MODEL_REFUSED:
        FL_WARN("model version %llu refused: %s (%s)",
                (unsigned long long)ev->version, ev->what,
                fl_strerror(ev->status));
        break;
    case FL_CLIENT_EV_DECLINED:
        FL_INFO("round %llu declined: %s", (unsigned long long)ev->round,
                ev->what);
        break;
    case FL_CLIENT_EV_ROUND_DONE:
        if (ev->status == 0)
            FL_INFO("round %llu done: loss %.4f -> %.4f on %u windows, "
                    "%.0f ms training, %llu bytes up, %llu down",
                    (unsigned long long)ev->round, ev->stats.loss_before,
                    ev->stats.loss_after, ev->stats.num_examples,
                    ev->stats.train_ms, (unsigned long long)ev->bytes_up,
                    (unsigned long long)ev->bytes_down);
        else
            FL_INFO("round %llu ended without us: %s",
                    (unsigned long long)ev->round, ev->what);
        break;
    case FL_CLIENT_EV_ERROR:
        FL_WARN("protocol error: %s (%s)", ev->what, fl_strerror(ev->status));
        break;
    }
}

static int eligible(void *ctx, char *why, size_t whylen)
{
    daemon_t *d = ctx;
    fl_client_conditions_t now;
    if (fl_client_conditions_now("/sys", &now) < 0) {
        snprintf(why, whylen, "cannot read the device's conditions");
        return 0;
    }
    return fl_client_eligible(d->cfg, &d->windows, &now, why, whylen);
}

/* ---- the connection ---- */

static int io_send(void *io, const uint8_t *payload, size_t len)
{
    int rc = fl_net_send(io, payload, len);
    return rc < 0 ? rc : 0;
}

static void io_close(void *io, int reason)
{
    fl_net_conn_close(io, reason < 0 ? reason : 0);
}

static const fl_client_io_t net_io = {io_send, io_close};

static void on_open(fl_net_conn_t *c)
{
    daemon_t *d = fl_net_conn_data(c);
    d->conn = c;
    fl_client_agent_connected(d->agent, &net_io, c);
}

static void on_frame(fl_net_conn_t *c, const uint8_t *p, size_t len)
{
    daemon_t *d = fl_net_conn_data(c);
    if (d->conn == c)
        fl_client_agent_on_frame(d->agent, p, len);
}

static void on_close(fl_net_conn_t *c, int reason)
{
    daemon_t *d = fl_net_conn_data(c);
    if (d->conn == c) {
        d->conn = NULL;
        fl_client_agent_disconnected(d->agent);
        FL_INFO("disconnected from the server: %s", fl_strerror(reason));
    }
}

static void on_retry(fl_net_reconnect_t *r, int last, uint64_t delay_ms)
{
    daemon_t *d = fl_net_reconnect_data(r);
    FL_INFO("connecting to %s:%d again in %.1f s (%s)", d->host, d->port,
            (double)delay_ms / 1000.0, fl_strerror(last));
}

/* ---- start and stop ---- */

static void on_signal(uv_signal_t *h, int signum)
{
    daemon_t *d = h->data;
    if (d->stopping)
        return;
    d->stopping = 1;
    FL_INFO("signal %d: stopping", signum);
    fl_net_reconnect_free(d->reconnect);
    d->reconnect = NULL;
    fl_client_infer_free(d->infer);
    d->infer = NULL;
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->heartbeat, NULL);
}

#define HEARTBEAT_MS 30000

static void on_heartbeat(uv_timer_t *t)
{
    daemon_t *d = t->data;
    fl_client_agent_heartbeat(d->agent);
}

static int split_host_port(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return FL_EINVAL;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') { /* [::1]:7443 */
        h++;
        hl -= 2;
    }
    if (hl >= hostlen)
        return FL_ETOOBIG;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 1 || p > 65535)
        return FL_EINVAL;
    *port = (int)p;
    return 0;
}

int fl_client_tokenizer(const char *path, fl_tokenizer_t **out, char *err,
                        size_t errlen)
{
    int rc = path && path[0] ? fl_tokenizer_load(path, out)
                             : fl_tokenizer_new_bytes(out);
    if (rc < 0)
        snprintf(err, errlen, "tokenizer %s: %s",
                 path && path[0] ? path : "(bytes)", fl_strerror(rc));
    return rc;
}

int fl_client_tokenizer_ref(const fl_tokenizer_t *tok, char *ref, size_t reflen)
{
    if (fl_tokenizer_kind(tok) == FL_TOKENIZER_BYTES) {
        snprintf(ref, reflen, "byte");
        return 0;
    }
    fl_buf_t b;
    fl_buf_init(&b, FL_TOKENIZER_MAX_FILE);
    uint8_t md[FL_ARTIFACT_HASH_BYTES];
    int rc = fl_tokenizer_save_buf(tok, &b);
    if (rc == 0)
        rc = fl_artifact_sha256(b.data, b.len, md);
    if (rc == 0) {
        char hex[2 * FL_ARTIFACT_HASH_BYTES + 1];
        fl_hex_encode(hex, md, sizeof md);
        int n = snprintf(ref, reflen, "bpe:%s", hex);
        if (n < 0 || (size_t)n >= reflen)
            rc = FL_ETOOBIG;
    }
    fl_buf_free(&b);
    return rc;
}

int fl_client_identity(const fl_client_config_t *cfg, fl_artifact_key_t **out,
                       char *err, size_t errlen)
{
    char path[PATH_MAX], prefix[PATH_MAX];
    int rc;
    if (cfg->identity_key && cfg->identity_key[0]) {
        rc = fl_artifact_key_load(cfg->identity_key, out);
        if (rc < 0)
            snprintf(err, errlen, "%s: %s", cfg->identity_key, fl_strerror(rc));
        return rc;
    }
    if ((rc = fl_mkdir_p(cfg->state_dir, 0700)) < 0 ||
        (rc = fl_path_join(prefix, sizeof prefix, cfg->state_dir, "identity")) <
            0 ||
        (rc = fl_path_join(path, sizeof path, cfg->state_dir, "identity.key")) <
            0) {
        snprintf(err, errlen, "%s: %s", cfg->state_dir, fl_strerror(rc));
        return rc;
    }
    rc = fl_artifact_key_load(path, out);
    if (rc == FL_ENOENT) {
        if ((rc = fl_artifact_key_generate(out)) == 0 &&
            (rc = fl_artifact_key_save(*out, prefix)) < 0) {
            fl_artifact_key_free(*out);
            *out = NULL;
        }
        if (rc == 0) {
            uint8_t pk[32];
            char hex[65];
            fl_artifact_key_public(*out, pk);
            fl_hex_encode(hex, pk, 32);
            FL_INFO("new device identity %s (enrol it on the server)", hex);
        }
    }
    if (rc < 0)
        snprintf(err, errlen, "%s: %s", path, fl_strerror(rc));
    return rc;
}

/* Resource limits: nice level, training threads, a memory cap on the
 * process's data segments. */
static void apply_limits(const fl_client_config_t *cfg)
{
    if (setpriority(PRIO_PROCESS, 0, (int)cfg->nice) < 0)
        FL_WARN("cannot set nice %lld: %s", (long long)cfg->nice,
                strerror(errno));
    fl_model_set_threads((int)cfg->threads);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* The sanitizers reserve terabytes of shadow address space and have
     * allocators of their own: a cap on data segments would stop them,
     * not the training. */
    if (cfg->memory_mb > 0)
        FL_WARN("memory cap of %lld MiB not applied under a sanitizer",
                (long long)cfg->memory_mb);
#else
    if (cfg->memory_mb > 0) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = (rlim_t)cfg->memory_mb << 20;
        if (setrlimit(RLIMIT_DATA, &rl) < 0)
            FL_WARN("cannot cap memory at %lld MiB: %s",
                    (long long)cfg->memory_mb, strerror(errno));
    }
#endif
}

int fl_client_run(const fl_client_config_t *cfg, char *err, size_t errlen)
{
    daemon_t d;
    int rc;
    memset(&d, 0, sizeof d);
    d.cfg = cfg;
    d.loop = uv_default_loop();
    pthread_mutex_init(&d.qlock, NULL);
    signal(SIGPIPE, SIG_IGN);

    if ((rc = fl_client_windows_parse(cfg->windows, &d.windows)) < 0) {
        snprintf(err, errlen, "windows: %s", fl_strerror(rc));
        goto out;
    }
    if ((rc = split_host_port(cfg->server, d.host, sizeof d.host, &d.port)) <
        0) {
        snprintf(err, errlen, "server '%s': expected host:port", cfg->server);
        goto out;
    }
    if ((rc = fl_client_identity(cfg, &d.identity, err, errlen)) < 0)
        goto out;
    fl_client_agent_opts_t ao;
    memset(&ao, 0, sizeof ao);
    if (!cfg->signing_pub || !cfg->signing_pub[0]) {
        rc = FL_ECONFIG;
        snprintf(err, errlen,
                 "signing-pub: the server's model-signing public "
                 "key is required (no model is used unverified)");
        goto out;
    }
    if ((rc = fl_artifact_pub_load(cfg->signing_pub, ao.signing_pub)) < 0) {
        snprintf(err, errlen, "%s: %s", cfg->signing_pub, fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_client_tokenizer(cfg->tokenizer, &d.tok, err, errlen)) < 0)
        goto out;
    fl_data_opts_t dopt;
    fl_data_opts_init(&dopt);
    dopt.dir = cfg->data_dir;
    if ((rc = fl_data_load(&dopt, d.tok, &d.data)) < 0) {
        snprintf(err, errlen, "data %s: %s", cfg->data_dir, fl_strerror(rc));
        goto out;
    }
    apply_limits(cfg);

    uint8_t seed[8];
    fl_random_bytes(seed, sizeof seed);
    ao.loop = d.loop;
    ao.state_dir = cfg->state_dir;
    ao.identity = d.identity;
    ao.data = d.data;
    ao.vocab_size = (uint32_t)fl_tokenizer_vocab_size(d.tok);
    char tokref[FL_CLIENT_TOKREF_MAX];
    if ((rc = fl_client_tokenizer_ref(d.tok, tokref, sizeof tokref)) < 0) {
        snprintf(err, errlen, "tokenizer: %s", fl_strerror(rc));
        goto out;
    }
    ao.tokenizer_ref = tokref;
    ao.require_secagg = cfg->require_secagg;
    ao.min_participants = (uint32_t)cfg->min_participants;
    memcpy(&ao.seed, seed, sizeof seed);
    ao.eligible = eligible;
    ao.on_event = on_event;
    ao.ctx = &d;
    if ((rc = fl_client_agent_new(&ao, &d.agent)) < 0) {
        snprintf(err, errlen, "state %s: %s", cfg->state_dir, fl_strerror(rc));
        goto out;
    }
    refresh_q8(&d);

    fl_net_tls_opts_t to;
    memset(&to, 0, sizeof to);
    to.ca_file = cfg->ca_file && cfg->ca_file[0] ? cfg->ca_file : NULL;
    uint8_t pin[FL_NET_FP_LEN];
    if (cfg->pin_sha256 && cfg->pin_sha256[0]) {
        if (fl_hex_decode(pin, sizeof pin, cfg->pin_sha256,
                          strlen(cfg->pin_sha256)) < 0) {
            rc = FL_ECONFIG;
            snprintf(err, errlen, "pin-sha256: expected %d hex digits",
                     2 * FL_NET_FP_LEN);
            goto out;
        }
        to.pin_sha256 = pin;
    }
    to.cert_file =
        cfg->client_cert && cfg->client_cert[0] ? cfg->client_cert : NULL;
    to.key_file =
        cfg->client_key && cfg->client_key[0] ? cfg->client_key : NULL;
    if ((rc = fl_net_tls_client_new(&to, &d.tls)) < 0) {
        snprintf(err, errlen,
                 "TLS: %s (a CA file or a pinned fingerprint "
                 "is required)",
                 fl_strerror(rc));
        goto out;
    }
    fl_net_reconnect_opts_t ro;
    fl_net_reconnect_opts_init(&ro);
    ro.conn.host = d.host;
    ro.conn.port = d.port;
    ro.conn.tls = d.tls;
    ro.conn.cb.on_open = on_open;
    ro.conn.cb.on_frame = on_frame;
    ro.conn.cb.on_close = on_close;
    ro.conn.data = &d;
    ro.on_retry = on_retry;
    if ((rc = fl_net_reconnect_new(d.loop, &ro, &d.reconnect)) < 0) {
        snprintf(err, errlen, "cannot connect: %s", fl_strerror(rc));
        goto out;
    }
    if (cfg->socket_path && cfg->socket_path[0] &&
        (rc = fl_client_infer_new(d.loop, cfg->socket_path, generate, &d,
                                  &d.infer)) < 0) {
        snprintf(err, errlen, "socket %s: %s", cfg->socket_path,
                 fl_strerror(rc));
        goto out;
    }
    uv_signal_init(d.loop, &d.sigterm);
    uv_signal_init(d.loop, &d.sigint);
    d.sigterm.data = d.sigint.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_timer_init(d.loop, &d.heartbeat);
    d.heartbeat.data = &d;
    uv_timer_start(&d.heartbeat, on_heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
    FL_INFO("flotilla client %s: server %s:%d, state %s, data %s (%zu files)",
            FL_VERSION, d.host, d.port, cfg->state_dir, cfg->data_dir,
            fl_data_num_files(d.data));
    uv_run(d.loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    fl_net_reconnect_free(d.reconnect);
    fl_client_infer_free(d.infer);
    if (d.agent) {
        fl_client_agent_free(d.agent);
        d.agent = NULL;
    }
    uv_run(d.loop, UV_RUN_DEFAULT); /* let handles close, work return */
    fl_net_tls_free(d.tls);
    if (d.qcur)
        qref_put(&d, d.qcur);
    fl_data_free(d.data);
    fl_tokenizer_free(d.tok);
    fl_artifact_key_free(d.identity);
    pthread_mutex_destroy(&d.qlock);
    uv_loop_close(d.loop);
    return rc;
}
