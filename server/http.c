/* server/http.c — the metrics endpoint: a fixed HTTP responder on libuv.
 *
 * Not a general HTTP server: it reads one request head of at most
 * FL_SERVER_HTTP_MAX_REQUEST bytes, answers GET /metrics and GET /healthz,
 * 404 for other paths, 405 for other methods, 400 for anything malformed
 * or too long, and closes the connection after the answer. */
#include "server/internal.h"

#include <string.h>

typedef struct http_conn {
    uv_tcp_t tcp; /* first: the handle's data points at the conn anyway */
    uv_timer_t timer;
    fl_server_http_t *srv;
    uint8_t req[FL_SERVER_HTTP_MAX_REQUEST];
    size_t len;
    int answered;
    int closing; /* handles still to close */
    uv_write_t wr;
    fl_buf_t resp;
    struct http_conn *prev, *next;
} http_conn_t;

struct fl_server_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    fl_server_http_handler_t h;
    http_conn_t *conns;
    size_t nconns;
    int port;
    int closing;
    int listener_open;
};

static void maybe_free(fl_server_http_t *s)
{
    if (s->closing && !s->listener_open && !s->conns)
        fl_free(s);
}

static int reply(fl_buf_t *out, int status, const char *reason,
                 const char *ctype, const uint8_t *body, size_t blen,
                 const char *extra)
{
    int rc = fl_buf_printf(out,
                           "HTTP/1.1 %d %s\r\n"
                           "Content-Type: %s\r\n"
                           "Content-Length: %zu\r\n"
                           "%s"
                           "Connection: close\r\n\r\n",
                           status, reason, ctype, blen, extra ? extra : "");
    if (rc == 0 && blen)
        rc = fl_buf_append(out, body, blen);
    return rc;
}

static int reply_text(fl_buf_t *out, int status, const char *reason,
                      const char *text, const char *extra)
{
    return reply(out, status, reason, "text/plain; charset=utf-8",
                 (const uint8_t *)text, strlen(text), extra);
}

int fl_server_http_respond(const fl_server_http_handler_t *h,
                           const uint8_t *req, size_t len, fl_buf_t *out)
{
    /* Request line: METHOD SP TARGET SP HTTP/1.x CRLF */
    const uint8_t *eol = NULL;
    for (size_t i = 0; i + 1 < len; i++)
        if (req[i] == '\r' && req[i + 1] == '\n') {
            eol = req + i;
            break;
        }
    if (!eol || eol - req > 1024)
        return reply_text(out, 400, "Bad Request", "bad request\n", NULL);
    char line[1025];
    size_t n = (size_t)(eol - req);
    memcpy(line, req, n);
    line[n] = '\0';
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strchr(sp2 + 1, ' ') ||
        (strcmp(sp2 + 1, "HTTP/1.1") != 0 && strcmp(sp2 + 1, "HTTP/1.0") != 0))
        return reply_text(out, 400, "Bad Request", "bad request\n", NULL);
    *sp1 = '\0';
    *sp2 = '\0';
    const char *method = line, *target = sp1 + 1;
    for (const char *p = line; *p; p++)
        if (*p < 'A' || *p > 'Z')
            return reply_text(out, 400, "Bad Request", "bad request\n", NULL);
    /* The query string, if any, is ignored. */
    char path[1025];
    size_t pl = strcspn(target, "?");
    memcpy(path, target, pl);
    path[pl] = '\0';
    int known = strcmp(path, "/metrics") == 0 || strcmp(path, "/healthz") == 0;
    if (!known)
        return reply_text(out, 404, "Not Found", "not found\n", NULL);
    if (strcmp(method, "GET") != 0)
        return reply_text(out, 405, "Method Not Allowed",
                          "method not allowed\n", "Allow: GET\r\n");
    if (strcmp(path, "/healthz") == 0) {
        if (h->healthy && !h->healthy(h->ctx))
            return reply_text(out, 503, "Service Unavailable",
                              "shutting down\n", NULL);
        return reply_text(out, 200, "OK", "ok\n", NULL);
    }
    fl_buf_t body;
    fl_buf_init(&body, 16u << 20);
    int rc = h->metrics ? h->metrics(h->ctx, &body) : 0;
    if (rc == 0)
        rc = reply(out, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                   body.data, body.len, NULL);
    else
        rc = reply_text(out, 500, "Internal Server Error", "error\n", NULL);
    fl_buf_free(&body);
    return rc;
}

/* ---- connections ----------------------------------------------------------*/

static void conn_handle_closed(uv_handle_t *hd)
{
    http_conn_t *c = hd->data;
    if (--c->closing > 0)
        return;
    fl_server_http_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    fl_buf_free(&c->resp);
    fl_free(c);
    maybe_free(s);
}

static void conn_close(http_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 2;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_written(uv_write_t *wr, int status)
{
    http_conn_t *c = wr->data;
    conn_close(c);
}

static void conn_answer(http_conn_t *c, int too_big)
{
    c->answered = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    int rc = too_big
                 ? reply_text(&c->resp, 400, "Bad Request",
                              "request too large\n", NULL)
                 : fl_server_http_respond(&c->srv->h, c->req, c->len, &c->resp);
    if (rc < 0) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)c->resp.data, (unsigned)c->resp.len);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *c = hd->data;
    size_t room = sizeof c->req - c->len;
    if (room == 0) { /* one spare byte tells "too large" apart */
        static char sink[1];
        *buf = uv_buf_init(sink, sizeof sink);
        return;
    }
    *buf = uv_buf_init((char *)c->req + c->len, (unsigned)room);
}

static int head_complete(const http_conn_t *c)
{
    for (size_t i = 0; i + 3 < c->len; i++)
        if (memcmp(c->req + i, "\r\n\r\n", 4) == 0)
            return 1;
    return 0;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    http_conn_t *c = st->data;
    if (c->answered || c->closing)
        return;
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (n == 0)
        return;
    if (buf->base != (char *)c->req + c->len) {
        conn_answer(c, 1); /* the head did not fit */
        return;
    }
    c->len += (size_t)n;
    if (head_complete(c))
        conn_answer(c, 0);
    else if (c->len == sizeof c->req)
        conn_answer(c, 1);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *ls, int status)
{
    fl_server_http_t *s = ls->data;
    if (status < 0 || s->closing)
        return;
    http_conn_t *c = fl_calloc(1, sizeof *c);
    if (!c)
        return; /* the pending connection is accepted next time */
    c->srv = s;
    fl_buf_init(&c->resp, 32u << 20);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0 ||
        s->nconns > FL_SERVER_HTTP_MAX_CONNS) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, FL_SERVER_HTTP_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

static void listener_closed(uv_handle_t *hd)
{
    fl_server_http_t *s = hd->data;
    s->listener_open = 0;
    maybe_free(s);
}

int fl_server_http_new(uv_loop_t *loop, const char *addr, int port,
                       const fl_server_http_handler_t *h,
                       fl_server_http_t **out)
{
    struct sockaddr_storage sa;
    int rc;
    fl_server_http_t *s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->loop = loop;
    s->h = *h;
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&sa) != 0) {
        fl_free(s);
        return FL_EINVAL;
    }
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 64, on_connection);
    if (rc < 0) {
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, listener_closed);
        return rc == UV_EADDRINUSE ? FL_EEXIST : FL_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    s->port = bound.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return 0;
}

int fl_server_http_port(const fl_server_http_t *h)
{
    return h ? h->port : 0;
}

void fl_server_http_close(fl_server_http_t *s)
{
    if (!s || s->closing)
        return;
    s->closing = 1;
    for (http_conn_t *c = s->conns; c; c = c->next)
        if (!c->answered)
            conn_close(c); /* answered ones close after their write */
    uv_close((uv_handle_t *)&s->listener, listener_closed);
}
