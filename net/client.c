/* net/client.c — the connecting side: one connection (fl_net_connect),
 * exponential backoff with full jitter, and a client that reconnects by
 * itself (fl_net_reconnect_*). */
#include "net/net_internal.h"

#include <stdio.h>
#include <string.h>

void fl_net_connect_opts_init(fl_net_connect_opts_t *o)
{
    memset(o, 0, sizeof *o);
    fl_net_limits_init(&o->limits);
}

/* ---- one connection ---- */

static void on_connect(uv_connect_t *req, int status)
{
    fl_net_conn_t *c = req->data;
    if (status == UV_ECANCELED || c->state == NET_CLOSED)
        return;
    if (status < 0) {
        fl_net__conn_close(c, FL_EIO);
        return;
    }
    fl_net__conn_start(c);
}

static void conn_connect_addr(fl_net_conn_t *c, const struct sockaddr *sa)
{
    c->connect_req.data = c;
    if (uv_tcp_connect(&c->connect_req, &c->tcp, sa, on_connect) < 0)
        fl_net__conn_close(c, FL_EIO);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    fl_net_conn_t *c = req->data;
    if (fl_net__conn_gai_done(c)) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0 || !res)
        fl_net__conn_close(c, FL_EIO);
    else
        conn_connect_addr(c, res->ai_addr); /* the first address only */
    uv_freeaddrinfo(res);
}

int fl_net_connect(uv_loop_t *loop, const fl_net_connect_opts_t *o,
                   fl_net_conn_t **out)
{
    int rc = 0;
    fl_net_conn_t *c = NULL;
    struct sockaddr_storage ss;
    if (out)
        *out = NULL;
    if (!loop || !o || !o->host || o->port <= 0 || o->port > 65535)
        return FL_EINVAL;
    c = fl_net__conn_new(loop, &o->limits, &o->cb, o->data);
    if (!c)
        return FL_ENOMEM;
    c->port = o->port;
    c->rbuf = fl_malloc(FL_NET_READ_BUF);
    c->host = fl_strdup(o->host);
    c->server_name = fl_strdup(o->server_name ? o->server_name : o->host);
    if (!c->rbuf || !c->host || !c->server_name) {
        rc = FL_ENOMEM;
        goto out;
    }
    if (o->tls) {
        rc = fl_net__tls_attach(c, o->tls, 0, c->server_name);
        if (rc < 0)
            goto out;
    }
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(c->host, c->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(c->host, c->port, (struct sockaddr_in6 *)&ss) == 0) {
        conn_connect_addr(c, (const struct sockaddr *)&ss);
    } else {
        struct addrinfo hints;
        char port[16];
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(port, sizeof port, "%d", c->port);
        c->gai.data = c;
        if (uv_getaddrinfo(loop, &c->gai, on_resolved, c->host, port, &hints) <
            0)
            fl_net__conn_close(c, FL_EIO); /* reported to on_close */
        else
            c->gai_pending = 1;
    }
    if (out)
        *out = c;
    c = NULL;
out:
    if (c)
        fl_net__conn_abort_new(c);
    return rc;
}

/* ---- backoff ---- */

void fl_net_backoff_init(fl_net_backoff_t *b, uint64_t base_ms, uint64_t cap_ms,
                         uint64_t seed)
{
    b->base_ms = base_ms ? base_ms : 1;
    b->cap_ms = FL_MAX(cap_ms, b->base_ms);
    b->attempt = 0;
    if (seed == 0 && fl_random_bytes(&seed, sizeof seed) < 0)
        seed = fl_time_mono_ns();
    fl_rng_seed(&b->rng, seed);
}

uint64_t fl_net_backoff_next(fl_net_backoff_t *b)
{
    /* bound = min(cap, base * 2^attempt), without overflow. */
    uint64_t bound = b->cap_ms;
    if (b->attempt < 64 && b->base_ms <= (b->cap_ms >> b->attempt))
        bound = b->base_ms << b->attempt;
    if (b->attempt < 64)
        b->attempt++;
    if (bound == UINT64_MAX)
        return fl_rng_next(&b->rng);
    return fl_rng_below(&b->rng, bound + 1); /* full jitter: [0, bound] */
}

void fl_net_backoff_reset(fl_net_backoff_t *b)
{
    b->attempt = 0;
}

/* ---- reconnecting client ---- */

struct fl_net_reconnect {
    uv_loop_t *loop;
    uv_timer_t timer;
    int timer_open;
    int stopping;
    fl_net_reconnect_opts_t o; /* o.conn.host etc. point at the copies */
    char *host;
    char *server_name;
    fl_net_tls_t *tls; /* one reference */
    fl_net_backoff_t backoff;
    fl_net_conn_t *conn; /* the current attempt or session */
    int open;
};

void fl_net_reconnect_opts_init(fl_net_reconnect_opts_t *o)
{
    memset(o, 0, sizeof *o);
    fl_net_connect_opts_init(&o->conn);
    o->base_ms = 500;
    o->cap_ms = 60000;
}

static void rc_maybe_free(fl_net_reconnect_t *r)
{
    if (!r->stopping || r->timer_open || r->conn)
        return;
    fl_net_tls_free(r->tls);
    fl_free(r->host);
    fl_free(r->server_name);
    fl_free(r);
}

static void rc_attempt(fl_net_reconnect_t *r);

static void rc_on_timer(uv_timer_t *t)
{
    rc_attempt(t->data);
}

static void rc_schedule(fl_net_reconnect_t *r, int last_reason)
{
    uint64_t delay = fl_net_backoff_next(&r->backoff);
    if (r->o.on_retry)
        r->o.on_retry(r, last_reason, delay);
    if (!r->stopping)
        uv_timer_start(&r->timer, rc_on_timer, delay, 0);
}

static void rc_on_open(fl_net_conn_t *c)
{
    fl_net_reconnect_t *r = c->owner;
    fl_net_backoff_reset(&r->backoff);
    r->open = 1;
    if (r->o.conn.cb.on_open)
        r->o.conn.cb.on_open(c);
}

static void rc_on_close(fl_net_conn_t *c, int reason)
{
    fl_net_reconnect_t *r = c->owner;
    if (r->o.conn.cb.on_close)
        r->o.conn.cb.on_close(c, reason);
    r->conn = NULL;
    r->open = 0;
    if (r->stopping)
        rc_maybe_free(r);
    else
        rc_schedule(r, reason);
}

static void rc_attempt(fl_net_reconnect_t *r)
{
    fl_net_connect_opts_t co = r->o.conn;
    fl_net_conn_t *c = NULL;
    co.cb.on_open = rc_on_open;
    co.cb.on_close = rc_on_close;
    int rc = fl_net_connect(r->loop, &co, &c);
    if (rc < 0) {
        rc_schedule(r, rc);
        return;
    }
    c->owner = r; /* before any callback: they all come later */
    r->conn = c;
}

static void rc_on_timer_closed(uv_handle_t *h)
{
    fl_net_reconnect_t *r = h->data;
    r->timer_open = 0;
    rc_maybe_free(r);
}

int fl_net_reconnect_new(uv_loop_t *loop, const fl_net_reconnect_opts_t *o,
                         fl_net_reconnect_t **out)
{
    fl_net_reconnect_t *r = NULL;
    *out = NULL;
    if (!loop || !o || !o->conn.host || o->conn.port <= 0 ||
        o->conn.port > 65535)
        return FL_EINVAL;
    r = fl_calloc(1, sizeof *r);
    if (!r)
        return FL_ENOMEM;
    r->loop = loop;
    r->o = *o;
    r->host = fl_strdup(o->conn.host);
    r->server_name =
        o->conn.server_name ? fl_strdup(o->conn.server_name) : NULL;
    if (!r->host || (o->conn.server_name && !r->server_name)) {
        fl_free(r->host);
        fl_free(r->server_name);
        fl_free(r);
        return FL_ENOMEM;
    }
    r->o.conn.host = r->host;
    r->o.conn.server_name = r->server_name;
    r->tls = fl_net__tls_ref(o->conn.tls);
    fl_net_backoff_init(&r->backoff, o->base_ms, o->cap_ms, o->seed);
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->timer_open = 1;
    rc_attempt(r);
    *out = r;
    return 0;
}

fl_net_conn_t *fl_net_reconnect_conn(const fl_net_reconnect_t *r)
{
    return r->open ? r->conn : NULL;
}

void *fl_net_reconnect_data(const fl_net_reconnect_t *r)
{
    return r->o.conn.data;
}

void fl_net_reconnect_free(fl_net_reconnect_t *r)
{
    if (!r || r->stopping)
        return;
    r->stopping = 1;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, rc_on_timer_closed);
    if (r->conn)
        fl_net__conn_close(r->conn, FL_ECLOSED);
}
