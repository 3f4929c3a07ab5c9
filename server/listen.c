/* server/listen.c — the device listener: net/ connections (TLS 1.3 or plain
 * TCP) plugged into the server's peer seam. Each connection carries its
 * peer as data; frames go to fl_server_peer_frame, the close to
 * fl_server_peer_closed. */
#include "server/internal.h"

#include "net/net.h"

static int net_peer_send(void *ctx, const uint8_t *payload, size_t len)
{
    int rc = fl_net_send(ctx, payload, len);
    return rc < 0 ? rc : 0; /* back-pressure: the queue is bounded by net */
}

static void net_peer_close(void *ctx)
{
    fl_net_conn_close(ctx, 0); /* graceful: queued frames go out first */
}

/* Until its hello is accepted a connection may send only small frames and
 * must finish within hello-timeout-ms: an unauthenticated peer holds
 * neither a large buffer nor a connection slot for long. */
static void net_peer_authenticated(void *ctx)
{
    fl_net_conn_t *c = ctx;
    fl_server_t *s = fl_net_server_data(fl_net_conn_server(c));
    fl_net_conn_set_max_frame(c, (size_t)s->cfg.max_frame);
    fl_net_conn_set_deadline(c, 0);
}

static const fl_server_peer_ops_t net_peer_ops = {net_peer_send, net_peer_close,
                                                  net_peer_authenticated};

static void on_open(fl_net_conn_t *c)
{
    fl_server_t *s = fl_net_server_data(fl_net_conn_server(c));
    fl_server_peer_t *p = NULL;
    int rc = fl_server_peer_open(s, &net_peer_ops, c, &p);
    if (!p) {
        fl_net_conn_close(c, rc < 0 ? rc : FL_ECLOSED);
        return;
    }
    fl_net_conn_set_data(c, p);
    fl_net_conn_set_max_frame(
        c, FL_MIN((size_t)FL_SERVER_HELLO_MAX_FRAME, (size_t)s->cfg.max_frame));
    fl_net_conn_set_deadline(c, (uint64_t)s->cfg.hello_timeout_ms);
}

static void on_frame(fl_net_conn_t *c, const uint8_t *payload, size_t len)
{
    fl_server_peer_t *p = fl_net_conn_data(c);
    if (p)
        fl_server_peer_frame(p, payload, len);
}

static void on_close(fl_net_conn_t *c, int reason)
{
    fl_server_peer_t *p = fl_net_conn_data(c);
    if (reason < 0 && reason != FL_ECLOSED) {
        char addr[64] = "";
        if (fl_net_conn_peer_addr(c, addr, sizeof addr) < 0 || !addr[0])
            snprintf(addr, sizeof addr, "(address unknown)");
        FL_INFO("connection %s closed: %s", addr, fl_strerror(reason));
    }
    if (p)
        fl_server_peer_closed(p);
}

/* Connections refused at accept are counted; the warning is written at
 * most once a minute, so a flood does not become a flood of log lines. */
static void on_reject(fl_net_server_t *ns, int reason)
{
    fl_server_t *s = fl_net_server_data(ns);
    uint64_t now = uv_now(s->loop);
    s->metrics.connections_refused++;
    if (s->refused_logged_at == 0 || now - s->refused_logged_at >= 60000) {
        fl_net_server_stats_t st;
        fl_net_server_stats(ns, &st);
        FL_WARN("connection refused at accept: %s (%llu refused so far, %llu "
                "over the per-source handshake limit)",
                fl_strerror(reason), (unsigned long long)st.rejected,
                (unsigned long long)st.rejected_source);
        s->refused_logged_at = now ? now : 1;
    }
}

int fl_server_listen_start(fl_server_t *s, char *err, size_t errlen)
{
    const fl_server_config_t *c = &s->cfg;
    fl_net_tls_t *tls = NULL;
    fl_net_server_t *ns = NULL;
    int rc = 0;
    if (c->transport == FL_SERVER_TRANSPORT_TLS) {
        fl_net_tls_opts_t to = {.cert_file = c->tls_cert,
                                .key_file = c->tls_key,
                                .ca_file = c->mtls ? c->tls_ca : NULL};
        rc = fl_net_tls_server_new(&to, &tls);
        if (rc < 0) {
            snprintf(err, errlen, "TLS (%s, %s): %s", c->tls_cert, c->tls_key,
                     fl_strerror(rc));
            return rc;
        }
    }
    fl_net_server_opts_t o;
    fl_net_server_opts_init(&o);
    o.host = c->listen;
    o.port = (int)c->port;
    o.tls = tls;
    o.limits.max_frame = (size_t)c->max_frame;
    o.limits.idle_ms = (uint64_t)c->idle_timeout_ms;
    o.max_conns = (unsigned)c->max_connections;
    o.max_handshakes = (unsigned)c->max_handshakes;
    o.max_handshakes_per_source = (unsigned)c->max_handshakes_per_source;
    o.cb.on_open = on_open;
    o.cb.on_frame = on_frame;
    o.cb.on_close = on_close;
    o.on_reject = on_reject;
    o.data = s;
    rc = fl_net_server_new(s->loop, &o, &ns);
    fl_net_tls_free(tls); /* the server keeps its own reference */
    if (rc < 0) {
        snprintf(err, errlen, "listening on %s:%lld: %s", c->listen,
                 (long long)c->port,
                 rc == FL_EEXIST ? "address in use" : fl_strerror(rc));
        return rc;
    }
    s->listener = ns;
    FL_INFO("devices connect to %s:%d (%s)", c->listen, fl_net_server_port(ns),
            tls ? "TLS 1.3" : "plain TCP");
    return 0;
}

void fl_server_listen_stop(fl_server_t *s)
{
    fl_net_server_free(s->listener);
    s->listener = NULL;
}

int fl_server_port(const fl_server_t *s)
{
    return s->listener ? fl_net_server_port(s->listener) : 0;
}
