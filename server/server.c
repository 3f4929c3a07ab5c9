/* server/server.c — the daemon: state directory, enrolment, peers and their
 * hellos, signals, the metrics endpoint and the life cycle of a run. */
#include "server/internal.h"

#include <signal.h>
#include <sodium.h>
#include <string.h>

/* ---- metrics endpoint callbacks ------------------------------------------*/

static int http_metrics(void *ctx, fl_buf_t *out)
{
    fl_server_t *s = ctx;
    s->metrics.enrolled = fl_server_enrol_count(s->enrol);
    return fl_server_metrics_render(&s->metrics, out);
}

static int http_healthy(void *ctx)
{
    fl_server_t *s = ctx;
    return !s->stopping;
}

/* Loads the current global model: the published version the state points
 * at, or else init-model (not yet published: version 0). */
static int load_model(fl_server_t *s, char *err, size_t errlen)
{
    char dir[4096], path[4096];
    const char *src = NULL;
    int rc = 0;
    if (s->state.model_version && s->state.model_dir[0]) {
        rc =
            fl_path_join(dir, sizeof dir, s->cfg.state_dir, s->state.model_dir);
        if (rc == 0)
            rc = fl_path_join(path, sizeof path, dir, "model.bin");
        if (rc < 0)
            return rc;
        src = path;
    } else if (s->cfg.init_model) {
        src = s->cfg.init_model;
    } else {
        return 0; /* rounds wait for a model */
    }
    rc = fl_model_load(src, &s->model);
    if (rc < 0) {
        snprintf(err, errlen, "model %s: %s", src, fl_strerror(rc));
        return rc;
    }
    size_t n = fl_model_num_params(s->model);
    s->params = fl_malloc(n * sizeof(float));
    if (!s->params)
        return FL_ENOMEM;
    memcpy(s->params, fl_model_params(s->model), n * sizeof(float));
    s->num_params = n;
    FL_INFO("global model %s: %zu trainable parameters", src, n);
    return 0;
}

/* ---- creation
 * ---------------------------------------------------------------*/

int fl_server_new(uv_loop_t *loop, const fl_server_config_t *cfg,
                  fl_server_t **out, char *err, size_t errlen)
{
    fl_server_t *s = NULL;
    int rc = fl_server_config_check(cfg, err, errlen);
    if (rc < 0)
        return rc;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return FL_ECRYPTO;
    }
    s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->loop = loop;
    s->engine = &fl_server_engine_default;
    fl_server_state_init(&s->state);
    rc = fl_server_config_copy(&s->cfg, cfg);
    if (rc < 0) {
        fl_free(s);
        return rc;
    }
    rc = fl_mkdir_p(s->cfg.state_dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", s->cfg.state_dir, fl_strerror(rc));
        goto out;
    }
    if (s->cfg.enrol_file)
        snprintf(s->enrol_path, sizeof s->enrol_path, "%s", s->cfg.enrol_file);
    else if (fl_path_join(s->enrol_path, sizeof s->enrol_path, s->cfg.state_dir,
                          FL_SERVER_ENROL_FILE) < 0) {
        rc = FL_ETOOBIG;
        snprintf(err, errlen, "state path too long");
        goto out;
    }
    rc = fl_server_enrol_load(s->enrol_path, &s->enrol, err, errlen);
    if (rc < 0)
        goto out;
    rc = fl_server_state_load(s->cfg.state_dir, &s->state, err, errlen);
    if (rc == FL_ENOENT)
        rc = 0; /* a new server */
    if (rc < 0)
        goto out;
    s->metrics.rounds_completed = s->state.rounds_completed;
    s->metrics.rounds_aborted = s->state.rounds_aborted;
    s->metrics.round = s->state.round;
    s->metrics.model_version = s->state.model_version;
    s->metrics.epsilon = s->state.epsilon;
    s->metrics.epsilon_budget = s->cfg.epsilon_budget;
    s->metrics.enrolled = fl_server_enrol_count(s->enrol);
    s->engine_ctx = s;
    rc = fl_server_engine_open(s, err, errlen);
    if (rc < 0)
        goto out;
    rc = load_model(s, err, errlen);
    if (rc < 0)
        goto out;
    rc = fl_server_engine_publish_initial(s, err, errlen);
    if (rc < 0)
        goto out;
    rc = fl_server_round_new(s, &s->round);
    if (rc < 0) {
        snprintf(err, errlen, "round engine: %s", fl_strerror(rc));
        goto out;
    }
out:
    if (rc < 0) {
        fl_server_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* ---- signals -------------------------------------------------------------*/

static void on_signal(uv_signal_t *h, int signum)
{
    fl_server_t *s = h->data;
    if (signum == SIGHUP) {
        FL_INFO("SIGHUP: reloading the enrolment list");
        fl_server_reload_enrolment(s);
        return;
    }
    FL_INFO("%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    fl_server_stop(s);
}

static void on_round_timer(uv_timer_t *t)
{
    fl_server_t *s = t->data;
    if (!s->stopping)
        fl_server_round_tick(s->round);
}

void fl_server_schedule_round(fl_server_t *s, uint64_t ms)
{
    if (!s->stopping && s->started)
        uv_timer_start(&s->round_timer, on_round_timer, ms, 0);
}

/* ---- announcing new versions ----
 * Devices in the round that made a version learn it from RoundResult and
 * devices that connect later from HelloResult; every other connected
 * device is sent ModelAvailable, a share of them each tick, so that the
 * downloads spread over announce-spread-ms instead of arriving at once. */

#define ANNOUNCE_TICKS 50 /* batches per spread */

static int needs_announce(const fl_server_peer_t *p, uint64_t v)
{
    return p->hello_ok && !p->closing && p->told_version < v;
}

/* Sends ModelAvailable to at most quota devices, those that know the
 * oldest version first (when versions come faster than the spread, every
 * device still hears of a recent one within about a spread); returns how
 * many still wait. */
static size_t announce_some(fl_server_t *s, size_t quota)
{
    uint64_t v = s->state.model_version;
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__ModelAvailable ma = FLOTILLA__MODEL_AVAILABLE__INIT;
    ma.version = v;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE;
    e.model_available = &ma;
    for (;;) {
        uint64_t oldest = UINT64_MAX;
        size_t waiting = 0;
        for (fl_server_peer_t *p = s->peers; p; p = p->next)
            if (needs_announce(p, v)) {
                waiting++;
                oldest = FL_MIN(oldest, p->told_version);
            }
        if (waiting == 0 || quota == 0)
            return waiting;
        for (fl_server_peer_t *p = s->peers; p && quota > 0; p = p->next) {
            if (!needs_announce(p, v) || p->told_version != oldest)
                continue;
            quota--;
            p->told_version = v;
            if (fl_server_peer_send(p, &e) == 0)
                s->metrics.announcements++;
        }
    }
}

static void on_announce_timer(uv_timer_t *t)
{
    fl_server_t *s = t->data;
    if (s->stopping || announce_some(s, s->announce_quota) == 0)
        uv_timer_stop(&s->announce_timer);
}

void fl_server_announce(fl_server_t *s)
{
    if (!s->cfg.announce || !s->started || s->stopping)
        return;
    uint64_t v = s->state.model_version;
    size_t n = 0;
    for (fl_server_peer_t *p = s->peers; p; p = p->next)
        n += needs_announce(p, v);
    uint64_t spread = (uint64_t)s->cfg.announce_spread_ms;
    if (n == 0 || spread == 0) {
        uv_timer_stop(&s->announce_timer);
        announce_some(s, SIZE_MAX);
        return;
    }
    /* A version published while the last one is still being announced
     * takes over: its batches are counted anew. */
    uint64_t tick = FL_MAX(spread / ANNOUNCE_TICKS, 10);
    uint64_t ticks = FL_MAX(spread / tick, 1);
    s->announce_quota = (size_t)((n + ticks - 1) / ticks);
    uv_timer_start(&s->announce_timer, on_announce_timer, tick, tick);
}

int fl_server_start(fl_server_t *s, char *err, size_t errlen)
{
    int rc = 0;
    FL_ASSERT(!s->started);
    s->started = 1;
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_hup);
    uv_timer_init(s->loop, &s->round_timer);
    uv_timer_init(s->loop, &s->drain_timer);
    uv_timer_init(s->loop, &s->announce_timer);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->round_timer.data = s->drain_timer.data = s->announce_timer.data = s;
    s->handles_open = 1;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
    if (s->cfg.metrics) {
        fl_server_http_handler_t h = {http_metrics, http_healthy, s};
        rc = fl_server_http_new(s->loop, s->cfg.metrics_listen,
                                (int)s->cfg.metrics_port, &h, &s->http);
        if (rc < 0) {
            snprintf(err, errlen, "metrics endpoint %s:%lld: %s",
                     s->cfg.metrics_listen, (long long)s->cfg.metrics_port,
                     rc == FL_EEXIST ? "address in use" : fl_strerror(rc));
            fl_server_stop(s);
            return rc;
        }
        FL_INFO("metrics on http://%s:%d/metrics", s->cfg.metrics_listen,
                fl_server_http_port(s->http));
    }
    rc = fl_server_listen_start(s, err, errlen);
    if (rc < 0) {
        fl_server_stop(s);
        return rc;
    }
    FL_INFO("state %s: last round %llu, model version %llu, epsilon %.4g, "
            "%zu devices enrolled",
            s->cfg.state_dir, (unsigned long long)s->state.round,
            (unsigned long long)s->state.model_version, s->state.epsilon,
            fl_server_enrol_count(s->enrol));
    uv_timer_start(&s->round_timer, on_round_timer,
                   (uint64_t)s->cfg.round_interval_ms, 0);
    return 0;
}

int fl_server_reload_enrolment(fl_server_t *s)
{
    char err[512] = "";
    fl_server_enrol_t *e = NULL;
    int rc = fl_server_enrol_load(s->enrol_path, &e, err, sizeof err);
    if (rc < 0) {
        FL_ERROR("enrolment not reloaded, the previous list stays: %s", err);
        return rc;
    }
    fl_server_enrol_free(s->enrol);
    s->enrol = e;
    s->metrics.enrolled = fl_server_enrol_count(e);
    /* Devices that were revoked lose their connection now. */
    size_t dropped = 0;
    for (fl_server_peer_t *p = s->peers; p; p = p->next)
        if (p->hello_ok && !p->closing &&
            !fl_server_enrol_contains(e, p->key)) {
            fl_server_peer_refuse(p, FL_EDENIED, "enrolment revoked");
            dropped++;
        }
    FL_INFO("enrolment reloaded: %zu devices (%zu revoked connections closed)",
            fl_server_enrol_count(e), dropped);
    return 0;
}

static void handle_closed(uv_handle_t *h)
{
    fl_server_t *s = h->data;
    s->handles_open--;
}

/* The last step of stop: the listener and the server's own handles. */
static void stop_finish(fl_server_t *s)
{
    if (!s->draining)
        return;
    s->draining = 0;
    fl_server_listen_stop(s);
    if (s->started && s->handles_open == 1) {
        s->handles_open = 6;
        uv_close((uv_handle_t *)&s->announce_timer, handle_closed);
        uv_close((uv_handle_t *)&s->sig_term, handle_closed);
        uv_close((uv_handle_t *)&s->sig_int, handle_closed);
        uv_close((uv_handle_t *)&s->sig_hup, handle_closed);
        uv_close((uv_handle_t *)&s->round_timer, handle_closed);
        uv_close((uv_handle_t *)&s->drain_timer, handle_closed);
    }
    FL_INFO("stopped");
}

static void on_drain_timeout(uv_timer_t *t)
{
    stop_finish(t->data);
}

/* The second half of stop: after the round is quiet. Peers are closed
 * gracefully (their Abort and RoundResult go out first); the listener and
 * the loop's handles go once they are all gone, or after 2 s. */
void fl_server_stop_continue(fl_server_t *s)
{
    int rc = fl_server_state_save(s->cfg.state_dir, &s->state);
    if (rc < 0)
        FL_ERROR("saving the state: %s", fl_strerror(rc));
    fl_server_http_close(s->http);
    s->http = NULL;
    s->draining = 1;
    for (fl_server_peer_t *p = s->peers; p; p = p->next)
        fl_server_peer_close(p);
    if (!s->peers || !s->started)
        stop_finish(s);
    else
        uv_timer_start(&s->drain_timer, on_drain_timeout, 2000, 0);
}

void fl_server_stop(fl_server_t *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    if (s->started) {
        uv_timer_stop(&s->round_timer);
        uv_timer_stop(&s->announce_timer);
    }
    if (fl_server_round_shutdown(s->round))
        return; /* the round calls fl_server_stop_continue when done */
    fl_server_stop_continue(s);
}

void fl_server_free(fl_server_t *s)
{
    if (!s)
        return;
    while (s->peers) {
        fl_server_peer_t *p = s->peers;
        s->peers = p->next;
        fl_free(p);
    }
    fl_server_round_free(s->round);
    fl_server_engine_close(s);
    fl_free(s->params);
    fl_model_free(s->model);
    fl_server_enrol_free(s->enrol);
    fl_server_state_clear(&s->state);
    fl_server_config_free(&s->cfg);
    fl_free(s);
}

void fl_server_set_engine(fl_server_t *s, const fl_server_engine_t *e,
                          void *ctx)
{
    FL_ASSERT(!s->started);
    s->engine = e;
    s->engine_ctx = ctx;
}

void fl_server_set_params(fl_server_t *s, float *params, uint64_t n)
{
    fl_free(s->params);
    s->params = params;
    s->num_params = n;
}

int fl_server_metrics_port(const fl_server_t *s)
{
    return fl_server_http_port(s->http);
}

const fl_server_metrics_t *fl_server_metrics(const fl_server_t *s)
{
    return &s->metrics;
}

const fl_server_state_t *fl_server_state(const fl_server_t *s)
{
    return &s->state;
}

int fl_server_run(const fl_server_config_t *cfg)
{
    uv_loop_t loop;
    fl_server_t *s = NULL;
    char err[1024] = "";
    int rc = uv_loop_init(&loop);
    if (rc < 0)
        return FL_EIO;
    signal(SIGPIPE, SIG_IGN); /* libuv writes with write(2) */
    rc = fl_server_new(&loop, cfg, &s, err, sizeof err);
    if (rc == 0)
        rc = fl_server_start(s, err, sizeof err);
    if (rc < 0)
        FL_ERROR("%s", err[0] ? err : fl_strerror(rc));
    uv_run(&loop, UV_RUN_DEFAULT);
    fl_server_free(s);
    if (uv_loop_close(&loop) != 0)
        FL_WARN("event loop closed with handles still open");
    return rc;
}

/* ---- peers ----------------------------------------------------------------*/

int fl_server_peer_send(fl_server_peer_t *p, fl_envelope_t *e)
{
    if (p->closing)
        return FL_ECLOSED;
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    if (n == 0 || n > (size_t)p->srv->cfg.max_frame)
        return FL_ETOOBIG;
    uint8_t *buf = fl_malloc(n);
    if (!buf)
        return FL_ENOMEM;
    flotilla__envelope__pack(e, buf);
    int rc = p->ops->send(p->ctx, buf, n);
    fl_free(buf);
    if (rc < 0) {
        fl_server_peer_close(p);
        return rc;
    }
    p->srv->metrics.bytes_out += n + FL_FRAME_HEADER_LEN;
    return 0;
}

void fl_server_peer_close(fl_server_peer_t *p)
{
    if (p->closing)
        return;
    p->closing = 1;
    if (p->round_slot)
        fl_server_round_peer_gone(p->srv->round, p);
    p->ops->close(p->ctx);
}

void fl_server_peer_refuse(fl_server_peer_t *p, int err, const char *msg)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Error er = FLOTILLA__ERROR__INIT;
    er.code = (uint32_t)(err < 0 ? -err : err);
    er.message = (char *)msg;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ERROR;
    e.error = &er;
    fl_server_peer_send(p, &e);
    fl_server_peer_close(p);
}

int fl_server_peer_open(fl_server_t *s, const fl_server_peer_ops_t *ops,
                        void *ctx, fl_server_peer_t **out)
{
    *out = NULL;
    if (s->stopping)
        return FL_ECLOSED;
    fl_server_peer_t *p = fl_calloc(1, sizeof *p);
    if (!p)
        return FL_ENOMEM;
    p->srv = s;
    p->ops = ops;
    p->ctx = ctx;
    randombytes_buf(p->nonce, sizeof p->nonce);
    p->next = s->peers;
    if (s->peers)
        s->peers->prev = p;
    s->peers = p;
    s->metrics.connections++;
    *out = p;

    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__ServerHello h = FLOTILLA__SERVER_HELLO__INIT;
    h.protocol_version = FL_PROTOCOL_VERSION;
    h.nonce.data = p->nonce;
    h.nonce.len = sizeof p->nonce;
    if (s->have_signing_pub) {
        h.model_signing_key.data = s->signing_pub;
        h.model_signing_key.len = sizeof s->signing_pub;
    }
    h.server_name = s->cfg.server_name ? s->cfg.server_name : (char *)"";
    e.body_case = FLOTILLA__ENVELOPE__BODY_SERVER_HELLO;
    e.server_hello = &h;
    return fl_server_peer_send(p, &e);
}

void fl_server_peer_closed(fl_server_peer_t *p)
{
    fl_server_t *s = p->srv;
    if (p->round_slot)
        fl_server_round_peer_gone(s->round, p);
    if (p->hello_ok && s->metrics.connected)
        s->metrics.connected--;
    if (s->metrics.connections)
        s->metrics.connections--;
    if (p->prev)
        p->prev->next = p->next;
    else
        s->peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    fl_free(p);
    if (s->draining && !s->peers)
        stop_finish(s);
}

static int on_hello(fl_server_peer_t *p, const Flotilla__ClientHello *h)
{
    fl_server_t *s = p->srv;
    int reason = fl_server_hello_check(s->enrol, p->nonce, h);
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__HelloResult r = FLOTILLA__HELLO_RESULT__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_HELLO_RESULT;
    e.hello_result = &r;
    r.current_model_version = s->state.model_version;
    if (reason) {
        char hex[65] = "";
        if (h->identity_key.len == 32)
            fl_hex_encode(hex, h->identity_key.data, 32);
        FL_WARN("hello refused (%s) for key %s",
                reason == FLOTILLA__ABORT_REASON__ABORT_NOT_ENROLLED
                    ? "not enrolled"
                : reason == FLOTILLA__ABORT_REASON__ABORT_VERSION
                    ? "protocol version"
                : reason == FLOTILLA__ABORT_REASON__ABORT_PROTOCOL
                    ? "fields over the protocol's limits"
                    : "bad signature",
                hex[0] ? hex : "(malformed)");
        s->metrics.hellos_refused++;
        r.accepted = 0;
        r.reason = (uint32_t)reason;
        fl_server_peer_send(p, &e);
        fl_server_peer_close(p);
        return FL_EDENIED;
    }
    /* One connection per device: a reconnecting device replaces its old
     * connection (which may not have timed out yet). */
    for (fl_server_peer_t *q = s->peers; q; q = q->next)
        if (q != p && q->hello_ok && !q->closing &&
            memcmp(q->key, h->identity_key.data, 32) == 0) {
            FL_INFO("device reconnected; closing its previous connection");
            fl_server_peer_close(q);
        }
    memcpy(p->key, h->identity_key.data, 32);
    p->hello_ok = 1;
    p->model_version = h->model_version;
    p->told_version = s->state.model_version;
    s->metrics.connected++;
    if (p->ops->authenticated)
        p->ops->authenticated(p->ctx);
    r.accepted = 1;
    return fl_server_peer_send(p, &e);
}

int fl_server_peer_frame(fl_server_peer_t *p, const uint8_t *payload,
                         size_t len)
{
    fl_server_t *s = p->srv;
    fl_envelope_t *e = NULL;
    int rc = 0;
    if (p->closing)
        return FL_ECLOSED;
    s->metrics.bytes_in += len + FL_FRAME_HEADER_LEN;
    rc = fl_proto_decode(payload, len, (size_t)s->cfg.max_frame, &e);
    if (rc < 0) {
        FL_WARN("malformed frame from a device (%s); closing it",
                fl_strerror(rc));
        fl_server_peer_close(p);
        return rc;
    }
    if (!p->hello_ok) {
        if (e->body_case != FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO) {
            FL_WARN("%s before the hello; closing", fl_proto_body_name(e));
            fl_server_peer_refuse(p, FL_EPROTO, "hello first");
            rc = FL_EPROTO;
        } else {
            rc = on_hello(p, e->client_hello);
        }
        goto out;
    }
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_HEARTBEAT: {
        Flotilla__Envelope r = FLOTILLA__ENVELOPE__INIT;
        Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
        hb.seq = e->heartbeat->seq;
        hb.time_ms = fl_time_wall_ms();
        r.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
        r.heartbeat = &hb;
        rc = fl_server_peer_send(p, &r);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST:
        rc = fl_server_serve_manifest(p, e->manifest_request);
        break;
    case FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST:
        rc = fl_server_serve_chunk(p, e->chunk_request);
        if (rc == FL_EPROTO)
            fl_server_peer_refuse(p, FL_EPROTO, "bad file name");
        break;
    case FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT:
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
    case FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT:
        rc = fl_server_round_on_message(s->round, p, e);
        if (rc < 0) {
            FL_WARN("%s refused (%s); closing that device",
                    fl_proto_body_name(e), fl_strerror(rc));
            fl_server_peer_refuse(p, rc, fl_strerror(rc));
        }
        break;
    default:
        FL_WARN("unexpected %s from a device; closing it",
                fl_proto_body_name(e));
        fl_server_peer_refuse(p, FL_EPROTO, "unexpected message");
        rc = FL_EPROTO;
    }
out:
    fl_proto_free(e);
    return rc;
}
