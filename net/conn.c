/* net/conn.c — a connection: frames in and out, the write queue and its
 * back-pressure, deadlines, and the asynchronous close. Transport-neutral:
 * socket bytes go through c->tp (transport_tcp.c, transport_tls.c). */
#include "net/net_internal.h"

#include <stdlib.h>
#include <string.h>

/* Decoder buffers above this are released after their frame. */
#define DECODER_KEEP (256u << 10)

void fl_net_limits_init(fl_net_limits_t *l)
{
    memset(l, 0, sizeof *l);
    l->max_frame = FL_FRAME_DEFAULT_MAX;
    l->wq_high = 4u << 20;
    l->wq_max = 80u << 20;
    l->idle_ms = 0;
    l->handshake_ms = 10000;
}

/* ---- creation ---- */

static void on_timer(uv_timer_t *t);

fl_net_conn_t *fl_net__conn_new(uv_loop_t *loop, const fl_net_limits_t *lim,
                                const fl_net_callbacks_t *cb, void *data)
{
    fl_net_conn_t *c = fl_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->lim = *lim;
    if (c->lim.max_frame == 0 || c->lim.max_frame > UINT32_MAX)
        c->lim.max_frame = FL_FRAME_DEFAULT_MAX;
    if (c->lim.wq_high == 0)
        c->lim.wq_high = 4u << 20;
    if (c->lim.wq_max < c->lim.wq_high)
        c->lim.wq_max = c->lim.wq_high;
    if (cb)
        c->cb = *cb;
    c->data = data;
    c->tp = &fl_net__tcp;
    c->state = NET_CONNECTING;
    fl_frame_decoder_init(&c->dec, c->lim.max_frame);
    /* The three handles live as long as c; closing them frees it. */
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    uv_timer_init(loop, &c->deadline);
    c->tcp.data = c;
    c->timer.data = c;
    c->deadline.data = c;
    c->handles = 3;
    if (c->lim.handshake_ms)
        uv_timer_start(&c->timer, on_timer, c->lim.handshake_ms, 0);
    return c;
}

/* ---- closing ---- */

static void conn_finalize(fl_net_conn_t *c)
{
    if (c->cb.on_close)
        c->cb.on_close(c, c->reason);
    if (c->tp && c->tp->destroy)
        c->tp->destroy(c);
    fl_frame_decoder_free(&c->dec);
    fl_net_tls_free(c->tls);
    fl_free(c->rbuf);
    fl_free(c->host);
    fl_free(c->server_name);
    fl_net_server_t *s = c->server;
    if (s)
        fl_net__server_conn_gone(s, c); /* may free s */
    fl_free(c);
}

static void conn_maybe_finalize(fl_net_conn_t *c)
{
    if (c->handles == 0 && !c->gai_pending)
        conn_finalize(c);
}

int fl_net__conn_gai_done(fl_net_conn_t *c)
{
    c->gai_pending = 0;
    if (c->state != NET_CLOSED)
        return 0;
    conn_maybe_finalize(c);
    return 1;
}

static void on_handle_closed(uv_handle_t *h)
{
    fl_net_conn_t *c = h->data;
    c->handles--;
    conn_maybe_finalize(c);
}

void fl_net__conn_close(fl_net_conn_t *c, int reason)
{
    if (c->state == NET_CLOSED)
        return;
    c->state = NET_CLOSED;
    c->reason = reason;
    if (c->in_handshake) {
        c->in_handshake = 0;
        if (c->server)
            fl_net__server_handshake_done(c->server);
    }
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai);
    /* Closing the TCP handle cancels its pending writes, connect and
     * shutdown requests; their callbacks run before on_handle_closed. */
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->deadline, on_handle_closed);
}

/* A connection that failed before its handles were used: close them all
 * the same way, with no callbacks (the caller reports the error). */
void fl_net__conn_abort_new(fl_net_conn_t *c)
{
    c->cb.on_close = NULL;
    c->server = NULL;
    fl_net__conn_close(c, FL_ECLOSED);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    fl_net_conn_t *c = req->data;
    if (status == UV_ECANCELED)
        return; /* closed meanwhile; c is still valid until its handles go */
    fl_net__conn_close(c, status < 0 ? FL_EIO : 0);
}

void fl_net_conn_close(fl_net_conn_t *c, int reason)
{
    if (!c || c->state == NET_CLOSED || c->state == NET_DRAINING)
        return;
    if (reason < 0 || c->state != NET_OPEN) {
        fl_net__conn_close(c, reason);
        return;
    }
    /* Graceful: stop reading, flush, then a TCP shutdown (which waits for
     * the queued writes) and close. Bounded by the handshake deadline. */
    c->state = NET_DRAINING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->deadline);
    if (c->lim.handshake_ms)
        uv_timer_start(&c->timer, on_timer, c->lim.handshake_ms, 0);
    else
        uv_timer_stop(&c->timer);
    if (c->tp->shutdown)
        c->tp->shutdown(c);
    if (c->state != NET_DRAINING)
        return;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        fl_net__conn_close(c, 0);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t)
{
    fl_net_conn_t *c = t->data;
    /* Handshake, idle, or the graceful-close bound: all mean the peer was
     * too slow. */
    fl_net__conn_close(c, FL_ETIMEOUT);
}

static void on_deadline(uv_timer_t *t)
{
    fl_net_conn_t *c = t->data;
    if (c->cb.on_deadline)
        c->cb.on_deadline(c);
    else
        fl_net__conn_close(c, FL_ETIMEOUT);
}

int fl_net_conn_set_deadline(fl_net_conn_t *c, uint64_t ms)
{
    if (c->state >= NET_DRAINING)
        return FL_ECLOSED;
    if (ms == 0)
        uv_timer_stop(&c->deadline);
    else
        uv_timer_start(&c->deadline, on_deadline, ms, 0);
    return 0;
}

int fl_net_conn_set_idle(fl_net_conn_t *c, uint64_t idle_ms)
{
    if (c->state >= NET_DRAINING)
        return FL_ECLOSED;
    c->lim.idle_ms = idle_ms;
    if (c->state != NET_OPEN)
        return 0; /* the handshake deadline runs; idle starts at open */
    if (idle_ms)
        uv_timer_start(&c->timer, on_timer, idle_ms, 0);
    else
        uv_timer_stop(&c->timer);
    return 0;
}

/* ---- reading ---- */

/* A reset is the peer going away, like an end of stream. */
static int sock_err_reason(int uverr)
{
    return (uverr == UV_ECONNRESET || uverr == UV_EPIPE) ? FL_ECLOSED : FL_EIO;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    fl_net_conn_t *c = h->data;
    /* Each read is processed completely in on_read before the next alloc,
     * so a server's connections can share one buffer. */
    uint8_t *p = c->server ? c->server->rbuf : c->rbuf;
    *buf = uv_buf_init((char *)p, FL_NET_READ_BUF);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    fl_net_conn_t *c = st->data;
    if (c->state >= NET_DRAINING)
        return;
    if (n > 0) {
        c->st.bytes_in += (uint64_t)n;
        if (c->server)
            c->server->st.io.bytes_in += (uint64_t)n;
        int rc = c->tp->input(c, (const uint8_t *)buf->base, (size_t)n);
        if (rc < 0 && c->state < NET_DRAINING)
            fl_net__conn_close(c, rc);
    } else if (n < 0) {
        int reason = n == UV_EOF ? FL_ECLOSED : sock_err_reason((int)n);
        if (reason == FL_ECLOSED && fl_frame_decoder_finish(&c->dec) < 0)
            reason = FL_ETRUNC;
        fl_net__conn_close(c, reason);
    }
}

void fl_net__conn_start(fl_net_conn_t *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    /* Finds peers that vanished without a FIN when no idle deadline is
     * set (60 s before the first probe). */
    uv_tcp_keepalive(&c->tcp, 1, 60);
    c->state = NET_HANDSHAKE;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) {
        fl_net__conn_close(c, FL_EIO);
        return;
    }
    rc = c->tp->start(c);
    if (rc < 0)
        fl_net__conn_close(c, rc);
}

void fl_net__conn_opened(fl_net_conn_t *c)
{
    if (c->state != NET_HANDSHAKE)
        return;
    c->state = NET_OPEN;
    if (c->in_handshake) {
        c->in_handshake = 0;
        if (c->server)
            fl_net__server_handshake_done(c->server);
    }
    if (c->lim.idle_ms)
        uv_timer_start(&c->timer, on_timer, c->lim.idle_ms, 0);
    else
        uv_timer_stop(&c->timer);
    if (c->cb.on_open)
        c->cb.on_open(c);
}

int fl_net__conn_deliver(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    /* Idle means no application bytes: TLS ciphertext that never completes
     * a record (a stream whose record length was damaged, or a trickle)
     * does not keep a connection alive. */
    if (n > 0 && c->state == NET_OPEN && c->lim.idle_ms)
        uv_timer_start(&c->timer, on_timer, c->lim.idle_ms, 0);
    while (n > 0) {
        if (c->state != NET_OPEN)
            return FL_ECLOSED;
        size_t used = 0;
        const uint8_t *frame = NULL;
        size_t flen = 0;
        int rc = fl_frame_decoder_feed(&c->dec, p, n, &used, &frame, &flen);
        if (rc < 0)
            return rc;
        p += used;
        n -= used;
        if (rc != 1)
            continue;
        c->st.frames_in++;
        if (c->server)
            c->server->st.io.frames_in++;
        if (c->cb.on_frame)
            c->cb.on_frame(c, frame, flen);
        /* One large frame must not pin its buffer for the connection's
         * whole life (a server holds thousands of them). */
        if (c->dec.payload.cap > DECODER_KEEP && !c->dec.in_payload)
            fl_buf_free(&c->dec.payload);
    }
    return c->state == NET_OPEN ? 0 : FL_ECLOSED;
}

int fl_net_conn_set_max_frame(fl_net_conn_t *c, size_t max_frame)
{
    if (max_frame == 0 || max_frame > UINT32_MAX)
        return FL_EINVAL;
    if (c->state >= NET_DRAINING)
        return FL_ECLOSED;
    c->lim.max_frame = max_frame;
    /* The decoder checks the next declared length against max_len, and
     * its buffer never grows past payload.max. */
    c->dec.max_len = max_frame;
    c->dec.payload.max = max_frame;
    return 0;
}

/* ---- writing ---- */

size_t fl_net_conn_queued(const fl_net_conn_t *c)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

static void on_write(uv_write_t *req, int status)
{
    fl_net_wreq_t *w = (fl_net_wreq_t *)req;
    fl_net_conn_t *c = w->c;
    fl_free(w->owned);
    fl_free(w);
    if (status == UV_ECANCELED || c->state == NET_CLOSED)
        return;
    if (status < 0) {
        fl_net__conn_close(c, sock_err_reason(status));
        return;
    }
    if (c->above_high && fl_net_conn_queued(c) <= c->lim.wq_high / 2) {
        c->above_high = 0;
        if (c->state == NET_OPEN && c->cb.on_writable)
            c->cb.on_writable(c);
    }
}

fl_net_wreq_t *fl_net__wreq_new(size_t inl)
{
    fl_net_wreq_t *w = fl_malloc(sizeof *w + inl);
    if (w) {
        w->c = NULL;
        w->owned = NULL;
        w->inl = inl;
    }
    return w;
}

int fl_net__conn_write_wire(fl_net_conn_t *c, fl_net_wreq_t *w,
                            const uint8_t *p, size_t n, void *owned)
{
    int rc = 0;
    uv_buf_t bufs[2];
    unsigned nbufs = 0;
    if (c->state == NET_CLOSED) {
        rc = FL_ECLOSED;
        goto out;
    }
    if (w->inl)
        bufs[nbufs++] = uv_buf_init((char *)w->data, (unsigned)w->inl);
    if (n)
        bufs[nbufs++] = uv_buf_init((char *)p, (unsigned)n);
    w->c = c;
    w->owned = owned;
    owned = NULL;
    c->st.bytes_out += w->inl + n;
    if (c->server)
        c->server->st.io.bytes_out += w->inl + n;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write) < 0) {
        owned = w->owned;
        rc = FL_EIO;
        goto out;
    }
    w = NULL;
out:
    fl_free(w);
    fl_free(owned);
    return rc;
}

static int conn_send(fl_net_conn_t *c, const uint8_t *p, size_t n,
                     uint8_t *owned)
{
    int rc = 0;
    if (c->state != NET_OPEN) {
        rc = c->state < NET_OPEN ? FL_ESTATE : FL_ECLOSED;
        goto out;
    }
    if (n == 0) {
        rc = FL_EINVAL;
        goto out;
    }
    if (n > c->lim.max_frame || n > UINT32_MAX) {
        rc = FL_ETOOBIG;
        goto out;
    }
    /* What the frame will add to the queue, TLS records included. */
    size_t add = n + FL_FRAME_HEADER_LEN + (n / 16384 + 2) * 32;
    size_t q = fl_net_conn_queued(c);
    if (q > 0 && (add > c->lim.wq_max || q > c->lim.wq_max - add)) {
        /* The peer does not read fast enough: drop it, not the server. */
        fl_net__conn_close(c, FL_EAGAIN);
        rc = FL_EAGAIN;
        goto out;
    }
    uint8_t hdr[FL_FRAME_HEADER_LEN] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16),
                                        (uint8_t)(n >> 8), (uint8_t)n};
    rc = c->tp->send(c, hdr, p, n, owned);
    owned = NULL;
    if (rc < 0) {
        fl_net__conn_close(c, rc);
        goto out;
    }
    c->st.frames_out++;
    if (c->server)
        c->server->st.io.frames_out++;
    if (fl_net_conn_queued(c) > c->lim.wq_high) {
        c->above_high = 1;
        rc = FL_NET_BACKPRESSURE;
    }
out:
    fl_free(owned);
    return rc;
}

int fl_net_send(fl_net_conn_t *c, const uint8_t *payload, size_t len)
{
    return conn_send(c, payload, len, NULL);
}

int fl_net_send_owned(fl_net_conn_t *c, uint8_t *payload, size_t len)
{
    return conn_send(c, payload, len, payload);
}

/* ---- accessors ---- */

void fl_net_conn_stats(const fl_net_conn_t *c, fl_net_stats_t *out)
{
    *out = c->st;
}

void fl_net_conn_set_data(fl_net_conn_t *c, void *data)
{
    c->data = data;
}

void *fl_net_conn_data(const fl_net_conn_t *c)
{
    return c->data;
}

fl_net_server_t *fl_net_conn_server(const fl_net_conn_t *c)
{
    return c->server;
}

int fl_net_conn_is_open(const fl_net_conn_t *c)
{
    return c->state == NET_OPEN;
}

int fl_net_conn_is_tls(const fl_net_conn_t *c)
{
    return c->tp == &fl_net__tls;
}

int fl_net_conn_peer_addr(const fl_net_conn_t *c, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    char ip[64];
    int port = 0, n = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) < 0)
        return FL_ENOENT;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
        n = snprintf(buf, len, "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
        n = snprintf(buf, len, "[%s]:%d", ip, port);
    }
    return (n < 0 || (size_t)n >= len) ? FL_ETOOBIG : 0;
}

int fl_net_conn_peer_fingerprint(const fl_net_conn_t *c, fl_net_fp_kind_t kind,
                                 uint8_t out[FL_NET_FP_LEN])
{
    if (c->tp != &fl_net__tls)
        return FL_ENOENT;
    return fl_net__tls_peer_fingerprint(c, kind, out);
}

int fl_net_conn_peer_spki(const fl_net_conn_t *c, uint8_t **der, size_t *len)
{
    *der = NULL;
    *len = 0;
    if (c->tp != &fl_net__tls)
        return FL_ENOENT;
    return fl_net__tls_peer_spki(c, der, len);
}
