/* net/server.c — the listening side: bind, accept under the connection and
 * handshake limits, and the list of live connections. */
#include "net/net_internal.h"

#include <string.h>

void fl_net_server_opts_init(fl_net_server_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    fl_net_limits_init(&o->limits);
    o->max_conns = 1024;
    o->max_handshakes = 64;
    o->max_handshakes_per_source = 8;
    o->backlog = 128;
}

static void server_maybe_free(fl_net_server_t *s)
{
    if (s->freeing && !s->listener_open && s->nconns == 0) {
        fl_net_tls_free(s->o.tls);
        fl_free(s);
    }
}

void fl_net__server_conn_gone(fl_net_server_t *s, fl_net_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    s->st.closed++;
    server_maybe_free(s);
}

void fl_net__server_handshake_done(fl_net_server_t *s)
{
    if (s->handshakes > 0)
        s->handshakes--;
}

static void on_rejected_closed(uv_handle_t *h)
{
    fl_free(h);
}

/* Accepts the pending socket only to close it at once. */
static void server_reject(fl_net_server_t *s, int reason)
{
    uv_tcp_t *t = fl_malloc(sizeof *t);
    if (t) {
        uv_tcp_init(s->loop, t);
        uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, on_rejected_closed);
    }
    s->st.rejected++;
    if (s->o.on_reject)
        s->o.on_reject(s, reason);
}

/* The source of an accepted socket: an IPv4 address (IPv4-mapped IPv6
 * included) or the /64 prefix of an IPv6 address. */
static void conn_source(fl_net_conn_t *c)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    c->src_len = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        memcpy(c->src, &((const struct sockaddr_in *)&ss)->sin_addr, 4);
        c->src_len = 4;
    } else if (ss.ss_family == AF_INET6) {
        const uint8_t *a =
            ((const struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0,    0,
                                           0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, sizeof mapped) == 0) {
            memcpy(c->src, a + 12, 4);
            c->src_len = 4;
        } else {
            memcpy(c->src, a, 8);
            c->src_len = 8;
        }
    }
}

/* Handshakes in progress from c's source. A walk over the open
 * connections: one accept costs O(connections), a few microseconds per
 * thousand, and nothing has to be kept in step on close. */
static unsigned source_handshakes(const fl_net_server_t *s,
                                  const fl_net_conn_t *c)
{
    unsigned n = 0;
    for (const fl_net_conn_t *o = s->conns; o; o = o->next)
        if (o->in_handshake && o->src_len == c->src_len &&
            memcmp(o->src, c->src, c->src_len) == 0)
            n++;
    return n;
}

static void on_connection(uv_stream_t *ls, int status)
{
    fl_net_server_t *s = ls->data;
    fl_net_conn_t *c = NULL;
    if (status < 0) {
        s->st.rejected++;
        if (s->o.on_reject)
            s->o.on_reject(s, FL_EIO);
        return;
    }
    if (s->freeing || (s->o.max_conns && s->nconns >= s->o.max_conns) ||
        (s->o.tls && s->o.max_handshakes &&
         s->handshakes >= s->o.max_handshakes)) {
        server_reject(s, FL_EAGAIN);
        return;
    }
    c = fl_net__conn_new(s->loop, &s->o.limits, &s->o.cb, NULL);
    if (!c) {
        server_reject(s, FL_ENOMEM);
        return;
    }
    int rc = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (rc == 0 && s->o.tls && s->o.max_handshakes_per_source) {
        conn_source(c);
        if (c->src_len &&
            source_handshakes(s, c) >= s->o.max_handshakes_per_source) {
            fl_net__conn_abort_new(c);
            s->st.rejected++;
            s->st.rejected_source++;
            if (s->o.on_reject)
                s->o.on_reject(s, FL_EAGAIN);
            return;
        }
    }
    if (rc == 0 && s->o.tls)
        rc = fl_net__tls_attach(c, s->o.tls, 1, NULL);
    if (rc != 0) {
        fl_net__conn_abort_new(c);
        s->st.rejected++;
        if (s->o.on_reject)
            s->o.on_reject(s, rc < 0 && rc > FL_E__BASE ? FL_EIO : rc);
        return;
    }
    c->server = s;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    s->st.accepted++;
    if (s->o.tls) {
        c->in_handshake = 1;
        s->handshakes++;
    }
    fl_net__conn_start(c);
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (!host || port < 0 || port > 65535)
        return FL_EINVAL;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return FL_EINVAL;
}

static void on_listener_closed(uv_handle_t *h)
{
    fl_net_server_t *s = h->data;
    s->listener_open = 0;
    server_maybe_free(s);
}

int fl_net_server_new(uv_loop_t *loop, const fl_net_server_opts_t *o,
                      fl_net_server_t **out)
{
    int rc = 0;
    struct sockaddr_storage ss;
    fl_net_server_t *s = NULL;
    *out = NULL;
    if (!loop || !o)
        return FL_EINVAL;
    rc = parse_addr(o->host, o->port, &ss);
    if (rc < 0)
        return rc;
    s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->loop = loop;
    s->o = *o;
    s->o.host = NULL;
    s->o.tls = fl_net__tls_ref(o->tls);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener,
                       o->backlog > 0 ? o->backlog : 128, on_connection);
    if (rc < 0) {
        rc = rc == UV_EADDRINUSE ? FL_EEXIST : FL_EIO;
        goto out;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    if (rc < 0) {
        rc = FL_EIO;
        goto out;
    }
    s->port = bound.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    s = NULL;
out:
    if (s) {
        /* The listener handle needs its asynchronous close. */
        fl_net_server_free(s);
    }
    return rc;
}

int fl_net_server_port(const fl_net_server_t *s)
{
    return s->port;
}

void *fl_net_server_data(const fl_net_server_t *s)
{
    return s->o.data;
}

unsigned fl_net_server_nconns(const fl_net_server_t *s)
{
    return s->nconns;
}

void fl_net_server_stats(const fl_net_server_t *s, fl_net_server_stats_t *out)
{
    *out = s->st;
    out->conns = s->nconns;
    out->handshakes = s->handshakes;
}

void fl_net_server_free(fl_net_server_t *s)
{
    if (!s || s->freeing)
        return;
    s->freeing = 1;
    for (fl_net_conn_t *c = s->conns; c; c = c->next)
        fl_net__conn_close(c, FL_ECLOSED);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
