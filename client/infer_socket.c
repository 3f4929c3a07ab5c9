/* client/infer_socket.c — local inference over a Unix socket, JSON lines.
 *
 * One request at a time per connection: a complete line stops reading,
 * the generation runs on the libuv thread pool, and the answer is written
 * before the next line is looked at. Malformed requests get an error line
 * and the connection stays; an over-long line closes it. */
#include "client/client.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct conn conn_t;

struct fl_client_infer {
    uv_loop_t *loop;
    uv_pipe_t listener;
    fl_client_generate_fn gen;
    void *ctx;
    conn_t *conns; /* doubly linked */
    int nconns;
    int open_handles; /* listener + connections not yet closed */
    int closing;
};

struct conn {
    uv_pipe_t pipe;
    fl_client_infer_t *srv;
    conn_t *prev, *next;
    fl_buf_t in; /* bytes read, not yet a complete line handled */
    int busy;    /* a generation is in flight */
    int closing;
    uv_work_t work;
    /* the request being generated */
    fl_client_gen_req_t req;
    char prompt[FL_CLIENT_INFER_MAX_PROMPT + 1];
    fl_buf_t text;
    fl_client_gen_stats_t stats;
    int gen_rc;
};

static void maybe_free_server(fl_client_infer_t *s)
{
    if (s->closing && s->open_handles == 0)
        fl_free(s);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    fl_client_infer_t *s = c->srv;
    fl_buf_free(&c->in);
    fl_buf_free(&c->text);
    fl_free(c);
    s->open_handles--;
    maybe_free_server(s);
}

static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    fl_client_infer_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    if (!c->busy) /* else closed when the generation returns */
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    fl_free(w->data);
    fl_free(w);
}

/* Writes a JSON value as one line (takes the reference). */
static void send_json(conn_t *c, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(j);
    if (!s) {
        conn_close(c);
        return;
    }
    size_t n = strlen(s);
    char *line = fl_malloc(n + 1);
    uv_write_t *w = fl_malloc(sizeof *w);
    if (!line || !w) {
        free(s);
        fl_free(line);
        fl_free(w);
        conn_close(c);
        return;
    }
    memcpy(line, s, n);
    line[n] = '\n';
    free(s);
    w->data = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)n + 1);
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, on_written) < 0) {
        fl_free(line);
        fl_free(w);
        conn_close(c);
    }
}

static void send_error(conn_t *c, const char *msg)
{
    send_json(c, json_pack("{s:s}", "error", msg));
}

int fl_client_infer_parse(const char *line, size_t len,
                          fl_client_gen_req_t *req, char *prompt_buf, char *why,
                          size_t whylen)
{
    json_error_t err;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
    int rc = FL_EFORMAT;
    if (!j) {
        snprintf(why, whylen, "not JSON: %s", err.text);
        return FL_EFORMAT;
    }
    if (!json_is_object(j)) {
        snprintf(why, whylen, "a request is a JSON object");
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        if (strcmp(key, "prompt") && strcmp(key, "max_tokens") &&
            strcmp(key, "temperature") && strcmp(key, "top_p") &&
            strcmp(key, "top_k") && strcmp(key, "seed")) {
            snprintf(why, whylen, "unknown field '%.40s'", key);
            goto out;
        }
    }
    json_t *p = json_object_get(j, "prompt");
    if (!json_is_string(p)) {
        snprintf(why, whylen, "'prompt' (a string) is required");
        goto out;
    }
    size_t plen = json_string_length(p);
    if (plen > FL_CLIENT_INFER_MAX_PROMPT) {
        snprintf(why, whylen, "'prompt' longer than %d bytes",
                 FL_CLIENT_INFER_MAX_PROMPT);
        goto out;
    }
    if (memchr(json_string_value(p), '\0', plen)) {
        snprintf(why, whylen, "'prompt' contains a NUL character");
        goto out;
    }
    memcpy(prompt_buf, json_string_value(p), plen);
    prompt_buf[plen] = '\0';
    *req = (fl_client_gen_req_t){.prompt = prompt_buf,
                                 .max_tokens = 64,
                                 .temperature = 0.8f,
                                 .top_p = 0.9f,
                                 .top_k = 0,
                                 .seed = 0};
    if ((v = json_object_get(j, "max_tokens"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > FL_CLIENT_INFER_MAX_TOKENS) {
            snprintf(why, whylen, "'max_tokens' must be an integer in 1..%d",
                     FL_CLIENT_INFER_MAX_TOKENS);
            goto out;
        }
        req->max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(j, "temperature"))) {
        double t = json_number_value(v);
        if (!json_is_number(v) || !(t >= 0 && t <= 10)) {
            snprintf(why, whylen, "'temperature' must be a number in [0, 10]");
            goto out;
        }
        req->temperature = (float)t;
    }
    if ((v = json_object_get(j, "top_p"))) {
        double t = json_number_value(v);
        if (!json_is_number(v) || !(t > 0 && t <= 1)) {
            snprintf(why, whylen, "'top_p' must be a number in (0, 1]");
            goto out;
        }
        req->top_p = (float)t;
    }
    if ((v = json_object_get(j, "top_k"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > 1 << 20) {
            snprintf(why, whylen, "'top_k' must be a non-negative integer");
            goto out;
        }
        req->top_k = (int)json_integer_value(v);
    }
    if ((v = json_object_get(j, "seed"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(why, whylen, "'seed' must be a non-negative integer");
            goto out;
        }
        req->seed = (uint64_t)json_integer_value(v);
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static void process_lines(conn_t *c);

/* Length of the valid UTF-8 sequence at p (1..4), or 0. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t b = p[0];
    size_t len;
    uint32_t min, cp;
    if (b < 0x80)
        return 1;
    if ((b & 0xe0) == 0xc0)
        len = 2, min = 0x80, cp = b & 0x1f;
    else if ((b & 0xf0) == 0xe0)
        len = 3, min = 0x800, cp = b & 0x0f;
    else if ((b & 0xf8) == 0xf0)
        len = 4, min = 0x10000, cp = b & 0x07;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Rewrites text in place so that it is valid UTF-8: every byte that does
 * not start a valid sequence becomes U+FFFD (the text may grow). */
static int utf8_sanitize(fl_buf_t *text)
{
    fl_buf_t out;
    fl_buf_init(&out, text->max + text->max / 2 + 16);
    int rc = 0;
    for (size_t i = 0; i < text->len && rc == 0;) {
        size_t l = utf8_seq(text->data + i, text->len - i);
        if (l) {
            rc = fl_buf_append(&out, text->data + i, l);
            i += l;
        } else {
            rc = fl_buf_append(&out, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    if (rc == 0) {
        fl_buf_free(text);
        *text = out;
    } else {
        fl_buf_free(&out);
    }
    return rc;
}

static void work_generate(uv_work_t *w)
{
    conn_t *c = w->data;
    fl_buf_reset(&c->text);
    memset(&c->stats, 0, sizeof c->stats);
    c->gen_rc = c->srv->gen(c->srv->ctx, &c->req, &c->text, &c->stats);
}

static void after_generate(uv_work_t *w, int status)
{
    conn_t *c = w->data;
    c->busy = 0;
    if (c->closing) {
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
        return;
    }
    if (status == 0 && c->gen_rc == 0)
        c->gen_rc = utf8_sanitize(&c->text);
    if (status < 0 || c->gen_rc < 0) {
        send_error(c, status < 0 ? "cancelled" : fl_strerror(c->gen_rc));
    } else {
        double tps = c->stats.total_ms > 0
                         ? c->stats.tokens / (c->stats.total_ms / 1000.0)
                         : 0;
        send_json(c, json_pack("{s:s%, s:i, s:f, s:f, s:f}", "text",
                               (const char *)c->text.data, c->text.len,
                               "tokens", c->stats.tokens, "first_token_ms",
                               c->stats.first_token_ms, "total_ms",
                               c->stats.total_ms, "tokens_per_s", tps));
    }
    if (!c->closing)
        process_lines(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Handles complete lines in c->in until a generation starts. */
static void process_lines(conn_t *c)
{
    while (!c->busy && !c->closing) {
        uint8_t *nl = c->in.len ? memchr(c->in.data, '\n', c->in.len) : NULL;
        if (!nl) {
            if (c->in.len > FL_CLIENT_INFER_MAX_LINE) {
                send_error(c, "request line too long");
                conn_close(c);
                return;
            }
            uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
            return;
        }
        size_t len = (size_t)(nl - c->in.data);
        char why[160];
        int rc =
            len > FL_CLIENT_INFER_MAX_LINE
                ? (snprintf(why, sizeof why, "request line too long"),
                   FL_ETOOBIG)
                : fl_client_infer_parse((const char *)c->in.data, len, &c->req,
                                        c->prompt, why, sizeof why);
        fl_buf_consume(&c->in, len + 1);
        if (rc < 0) {
            send_error(c, why);
            continue;
        }
        c->busy = 1;
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->work.data = c;
        if (uv_queue_work(c->srv->loop, &c->work, work_generate,
                          after_generate) < 0) {
            c->busy = 0;
            send_error(c, "cannot schedule the request");
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    (void)suggested;
    if (fl_buf_reserve(&c->in, 4096) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = (char *)c->in.data + c->in.len;
    buf->len = c->in.cap - c->in.len;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    (void)buf;
    if (nread == UV_ENOBUFS) { /* the line limit was reached */
        send_error(c, "request line too long");
        conn_close(c);
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->in.len += (size_t)nread;
    process_lines(c);
}

static void on_connection(uv_stream_t *l, int status)
{
    fl_client_infer_t *s = l->data;
    if (status < 0)
        return;
    conn_t *c = fl_calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    fl_buf_init(&c->in, FL_CLIENT_INFER_MAX_LINE + 4096);
    fl_buf_init(&c->text, 1 << 22);
    uv_pipe_init(s->loop, &c->pipe, 0);
    c->pipe.data = c;
    s->open_handles++;
    if (uv_accept(l, (uv_stream_t *)&c->pipe) < 0 ||
        s->nconns >= FL_CLIENT_INFER_MAX_CONNS) {
        c->closing = 1;
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
        return;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h)
{
    fl_client_infer_t *s = h->data;
    s->open_handles--;
    maybe_free_server(s);
}

int fl_client_infer_new(uv_loop_t *loop, const char *path,
                        fl_client_generate_fn gen, void *ctx,
                        fl_client_infer_t **out)
{
    int rc;
    *out = NULL;
    fl_client_infer_t *s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->loop = loop;
    s->gen = gen;
    s->ctx = ctx;
    uv_pipe_init(loop, &s->listener, 0);
    s->listener.data = s;
    s->open_handles = 1;
    unlink(path); /* a stale socket from a previous run */
    if ((rc = uv_pipe_bind(&s->listener, path)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 16, on_connection)) < 0) {
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return rc == UV_EADDRINUSE ? FL_EEXIST : FL_EIO;
    }
    if (chmod(path, 0660) < 0) {
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return FL_EIO;
    }
    *out = s;
    return 0;
}

void fl_client_infer_free(fl_client_infer_t *s)
{
    if (!s)
        return;
    s->closing = 1;
    while (s->conns)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
