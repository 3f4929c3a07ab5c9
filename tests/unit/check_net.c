/* tests/unit/check_net.c — the transport on loopback: frames round-trip
 * over TCP and TLS 1.3 both ways; every misbehaving peer (oversize frame,
 * garbage, TLS 1.2, no or wrong certificate, silence, not reading, one too
 * many) is closed with its reason while the others keep working; backoff
 * and reconnection. Certificates are made by the openssl CLI in a
 * temporary directory. Every wait is bounded by a generous deadline that
 * fails the test instead of hanging it. */
#include "net/net.h"
#include "proto/frame.h"
#include "tests/unit/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- certificates ---- */

static char g_dir[256];

static const char *path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", g_dir, name);
    return out;
}

static void certs_make(void)
{
    fl_test_tmpdir(g_dir, sizeof g_dir);
    const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    int rc = fl_test_system(
        "(cd '%s' && "
        "openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 "
        "  -subj /CN=flotilla-test-ca && "
        "openssl req -x509 %s -keyout other-ca.key -out other-ca.pem -days 2 "
        "  -subj /CN=flotilla-other-ca && "
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\\n' "
        "  > server.ext && "
        "printf 'extendedKeyUsage=clientAuth\\n' > client.ext && "
        "openssl req %s -keyout server.key -out server.csr -subj /CN=localhost "
        "&& openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
        "  -CAcreateserial -out server.pem -days 2 -extfile server.ext && "
        "openssl req %s -keyout client.key -out client.csr -subj /CN=device-1 "
        "&& openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key "
        "  -CAcreateserial -out client.pem -days 2 -extfile client.ext && "
        "openssl req %s -keyout rogue.key -out rogue.csr -subj /CN=device-2 "
        "&& openssl x509 -req -in rogue.csr -CA other-ca.pem "
        "  -CAkey other-ca.key -CAcreateserial -out rogue.pem -days 2 "
        "  -extfile client.ext) >/dev/null 2>&1",
        g_dir, ec, ec, ec, ec, ec);
    ck_assert_msg(rc == 0, "openssl could not make the test certificates");
}

static void certs_remove(void)
{
    fl_test_rmtree(g_dir);
}

static fl_net_tls_t *server_tls(int mutual)
{
    char cert[512], key[512], ca[512];
    fl_net_tls_opts_t o = {
        .cert_file = path_in(cert, sizeof cert, "server.pem"),
        .key_file = path_in(key, sizeof key, "server.key"),
        .ca_file = mutual ? path_in(ca, sizeof ca, "ca.pem") : NULL};
    fl_net_tls_t *t = NULL;
    ck_assert_int_eq(fl_net_tls_server_new(&o, &t), 0);
    return t;
}

/* who: NULL (no certificate), "client" or "rogue". */
static fl_net_tls_t *client_tls(const char *who, const uint8_t *pin,
                                int with_ca)
{
    char cert[512], key[512], ca[512], n1[64], n2[64];
    fl_net_tls_opts_t o = {0};
    if (who) {
        snprintf(n1, sizeof n1, "%s.pem", who);
        snprintf(n2, sizeof n2, "%s.key", who);
        o.cert_file = path_in(cert, sizeof cert, n1);
        o.key_file = path_in(key, sizeof key, n2);
    }
    if (with_ca)
        o.ca_file = path_in(ca, sizeof ca, "ca.pem");
    o.pin_sha256 = pin;
    fl_net_tls_t *t = NULL;
    ck_assert_int_eq(fl_net_tls_client_new(&o, &t), 0);
    return t;
}

/* ---- the loop ---- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes uv_run at least every 5 ms */
} env_t;

static void noop_timer(uv_timer_t *t)
{
    (void)t;
}

static void env_init(env_t *e)
{
    signal(SIGPIPE, SIG_IGN);
    ck_assert_int_eq(uv_loop_init(&e->loop), 0);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, noop_timer, 5, 5);
}

#define RUN_UNTIL(e, cond, ms)                                                 \
    do {                                                                       \
        uint64_t end_ = fl_time_mono_ns() + (uint64_t)(ms)*1000000u;           \
        while (!(cond) && fl_time_mono_ns() < end_)                            \
            uv_run(&(e)->loop, UV_RUN_ONCE);                                   \
        ck_assert_msg((cond), "timed out waiting for %s", #cond);              \
    } while (0)

/* Runs for a while (to show that something does NOT happen). */
static void run_for(env_t *e, unsigned ms)
{
    uint64_t end = fl_time_mono_ns() + (uint64_t)ms * 1000000u;
    while (fl_time_mono_ns() < end)
        uv_run(&e->loop, UV_RUN_ONCE);
}

/* Everything must have been freed by the caller: the loop then empties by
 * itself, and closing it proves no handle was left behind. */
static void env_finish(env_t *e)
{
    uv_close((uv_handle_t *)&e->tick, NULL);
    uint64_t end = fl_time_mono_ns() + 3000000000u;
    while (uv_loop_alive(&e->loop) && fl_time_mono_ns() < end)
        uv_run(&e->loop, UV_RUN_NOWAIT);
    ck_assert_msg(!uv_loop_alive(&e->loop), "handles left open");
    ck_assert_int_eq(uv_loop_close(&e->loop), 0);
}

/* ---- one side's view ---- */

/* Frames carry their sequence number in their first 8 bytes and bytes
 * derived from it after; the receiver checks order, length and content. */
typedef struct {
    int opened, closed, frames, rejects, writable, deadlines;
    int reasons[64];
    int nreasons;
    int last_reject;
    int echo;          /* send every frame back */
    int close_after;   /* close with FL_EPROTO after this many frames */
    int bye_on_open;   /* send send_n frames, then close gracefully */
    int small;         /* frames of at most 308 bytes */
    unsigned send_n;   /* frames to send on open */
    uint64_t expect;   /* next sequence number */
    int bad;           /* frames that did not match */
    uint64_t phase_ms; /* server: arm this phase deadline on open */
    fl_net_conn_t *conn;
    int fp_rc;
    uint8_t fp[FL_NET_FP_LEN];
    uint8_t *spki; /* the peer's key (DER) while s->conn is open */
    size_t spki_len;
} side_t;

static size_t len_of(uint64_t seq, int small)
{
    if (small)
        return 8 + (size_t)(seq * 37 % 300);
    if (seq % 50 == 7)
        return (3u << 20) + (size_t)seq; /* split across many reads */
    if (seq % 5 == 0)
        return 20000 + (size_t)seq; /* above one TLS record */
    return 8 + (size_t)(seq * 37 % 300);
}

static uint8_t *make_frame(uint64_t seq, int small, size_t *len)
{
    size_t n = len_of(seq, small);
    uint8_t *p = fl_malloc(n);
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(seq >> (8 * i));
    fl_test_fill(p + 8, n - 8, seq + 1);
    *len = n;
    return p;
}

static void check_frame(side_t *s, const uint8_t *p, size_t n)
{
    uint64_t seq = 0;
    size_t want = 0;
    if (n < 8) {
        s->bad++;
        return;
    }
    for (int i = 0; i < 8; i++)
        seq |= (uint64_t)p[i] << (8 * i);
    uint8_t *exp = seq == s->expect ? make_frame(seq, s->small, &want) : NULL;
    if (!exp || want != n || memcmp(exp, p, n) != 0)
        s->bad++;
    fl_free(exp);
    s->expect++;
}

static side_t *side_of(fl_net_conn_t *c)
{
    fl_net_server_t *srv = fl_net_conn_server(c);
    return srv ? fl_net_server_data(srv) : fl_net_conn_data(c);
}

static void send_frames(fl_net_conn_t *c, unsigned n, int small)
{
    for (unsigned i = 0; i < n; i++) {
        size_t len;
        uint8_t *p = make_frame(i, small, &len);
        int rc;
        if (i % 2) {
            rc = fl_net_send_owned(c, p, len);
        } else {
            rc = fl_net_send(c, p, len);
            fl_free(p);
        }
        ck_assert(rc == 0 || rc == FL_NET_BACKPRESSURE);
    }
}

static void cb_open(fl_net_conn_t *c)
{
    side_t *s = side_of(c);
    s->opened++;
    s->conn = c;
    s->fp_rc = fl_net_conn_peer_fingerprint(c, FL_NET_FP_SPKI, s->fp);
    fl_free(s->spki);
    ck_assert_int_eq(fl_net_conn_peer_spki(c, &s->spki, &s->spki_len),
                     s->fp_rc == 0 ? 0 : FL_ENOENT);
    if (s->phase_ms)
        ck_assert_int_eq(fl_net_conn_set_deadline(c, s->phase_ms), 0);
    send_frames(c, s->send_n, s->small);
    if (s->bye_on_open)
        fl_net_conn_close(c, 0);
}

static void cb_frame(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    side_t *s = side_of(c);
    s->frames++;
    check_frame(s, p, n);
    if (s->close_after && s->frames == s->close_after) {
        fl_net_conn_close(c, FL_EPROTO);
        ck_assert_int_eq(fl_net_send(c, p, n), FL_ECLOSED);
        return;
    }
    if (s->echo) {
        int rc = fl_net_send(c, p, n);
        ck_assert(rc == 0 || rc == FL_NET_BACKPRESSURE);
    }
}

static void cb_close(fl_net_conn_t *c, int reason)
{
    side_t *s = side_of(c);
    s->closed++;
    if (s->nreasons < (int)FL_ARRAY_LEN(s->reasons))
        s->reasons[s->nreasons++] = reason;
    if (s->conn == c) {
        s->conn = NULL;
        fl_free(s->spki);
        s->spki = NULL;
    }
}

static void cb_writable(fl_net_conn_t *c)
{
    side_of(c)->writable++;
}

static void cb_deadline(fl_net_conn_t *c)
{
    side_of(c)->deadlines++;
}

static void cb_reject(fl_net_server_t *srv, int reason)
{
    side_t *s = fl_net_server_data(srv);
    s->rejects++;
    s->last_reject = reason;
}

static const fl_net_callbacks_t k_cbs = {
    .on_open = cb_open,
    .on_frame = cb_frame,
    .on_writable = cb_writable,
    .on_close = cb_close,
};

static fl_net_server_t *start_server(env_t *e, side_t *s, fl_net_tls_t *tls,
                                     fl_net_server_opts_t *o_in)
{
    fl_net_server_opts_t o;
    if (o_in)
        o = *o_in;
    else
        fl_net_server_opts_init(&o);
    o.tls = tls;
    o.cb = k_cbs;
    o.on_reject = cb_reject;
    o.data = s;
    fl_net_server_t *srv = NULL;
    ck_assert_int_eq(fl_net_server_new(&e->loop, &o, &srv), 0);
    ck_assert_int_gt(fl_net_server_port(srv), 0);
    return srv;
}

static fl_net_conn_t *start_client(env_t *e, side_t *s, int port,
                                   fl_net_tls_t *tls, const char *host,
                                   const char *server_name)
{
    fl_net_connect_opts_t o;
    fl_net_connect_opts_init(&o);
    o.host = host ? host : "127.0.0.1";
    o.port = port;
    o.server_name = server_name;
    o.tls = tls;
    o.cb = k_cbs;
    o.data = s;
    fl_net_conn_t *c = NULL;
    ck_assert_int_eq(fl_net_connect(&e->loop, &o, &c), 0);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* ---- raw sockets: peers that misbehave ---- */

/* A TCP connection to the loopback address of af; src (IPv4 only, may be
 * NULL) binds the local end to another loopback address first. */
static int raw_connect_src(int af, int port, int rcvbuf, const char *src)
{
    int fd = socket(af, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &b.sin_addr);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&b, sizeof b), 0);
    }
    int rc;
    if (af == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6,
                                 .sin6_port = htons((uint16_t)port)};
        inet_pton(AF_INET6, "::1", &a.sin6_addr);
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    }
    ck_assert_int_eq(rc, 0);
    return fd;
}

static int raw_connect_af(int af, int port, int rcvbuf)
{
    return raw_connect_src(af, port, rcvbuf, NULL);
}

static int raw_connect(int port)
{
    return raw_connect_af(AF_INET, port, 0);
}

/* Sends everything, running the loop whenever the socket is full (the
 * server reads on this same thread). */
static void raw_send(env_t *e, int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t end = fl_time_mono_ns() + 10000000000u;
    while (n > 0 && fl_time_mono_ns() < end) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            b += k;
            n -= (size_t)k;
        } else {
            uv_run(&e->loop, UV_RUN_ONCE);
        }
    }
    ck_assert_uint_eq(n, 0);
}

/* 1 when the server has closed fd (EOF or reset) within ms. */
static int raw_closed(int fd, int ms)
{
    uint8_t buf[4096];
    uint64_t end = fl_time_mono_ns() + (uint64_t)ms * 1000000u;
    while (fl_time_mono_ns() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return 1;
    }
    return 0;
}

/* ---- round trips ---- */

enum { ROUND_FRAMES = 120 };

static void roundtrip(int use_tls, const char *host, const char *server_name)
{
    env_t e;
    side_t ss = {.echo = 1}, cs = {.send_n = ROUND_FRAMES};
    env_init(&e);
    fl_net_tls_t *st = use_tls ? server_tls(0) : NULL;
    fl_net_tls_t *ct = use_tls ? client_tls(NULL, NULL, 1) : NULL;
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.host = host;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    fl_net_conn_t *c =
        start_client(&e, &cs, fl_net_server_port(srv), ct, host, server_name);
    fl_net_tls_free(ct); /* connections keep their own reference */
    fl_net_tls_free(st);

    RUN_UNTIL(&e, cs.frames == ROUND_FRAMES, 20000);
    ck_assert_int_eq(ss.frames, ROUND_FRAMES);
    ck_assert_int_eq(ss.bad, 0);
    ck_assert_int_eq(cs.bad, 0);
    ck_assert_int_eq(fl_net_conn_is_tls(c), use_tls);
    ck_assert_int_eq(fl_net_conn_is_tls(ss.conn), use_tls);
    char addr[80];
    ck_assert_int_eq(fl_net_conn_peer_addr(ss.conn, addr, sizeof addr), 0);
    ck_assert_ptr_nonnull(strstr(addr, host));
    fl_net_server_stats_t sst;
    fl_net_stats_t cst;
    fl_net_server_stats(srv, &sst);
    fl_net_conn_stats(c, &cst);
    ck_assert_uint_eq(sst.accepted, 1);
    ck_assert_uint_eq(sst.conns, 1);
    ck_assert_uint_eq(sst.handshakes, 0);
    ck_assert_uint_eq(sst.io.frames_in, ROUND_FRAMES);
    ck_assert_uint_eq(sst.io.frames_out, ROUND_FRAMES);
    ck_assert_uint_eq(cst.frames_out, ROUND_FRAMES);
    ck_assert_uint_eq(cst.frames_in, ROUND_FRAMES);
    uint64_t wire = 0;
    for (uint64_t i = 0; i < ROUND_FRAMES; i++)
        wire += len_of(i, 0) + FL_FRAME_HEADER_LEN;
    if (use_tls) { /* records and handshake on top */
        ck_assert_uint_gt(sst.io.bytes_in, wire);
        ck_assert_uint_gt(cst.bytes_in, wire);
    } else {
        ck_assert_uint_eq(sst.io.bytes_in, wire);
        ck_assert_uint_eq(sst.io.bytes_out, wire);
        ck_assert_uint_eq(cst.bytes_in, wire);
        ck_assert_uint_eq(cst.bytes_out, wire);
    }
    /* No client certificate was asked for. */
    ck_assert_int_eq(ss.fp_rc, FL_ENOENT);
    ck_assert_int_eq(cs.fp_rc, use_tls ? 0 : FL_ENOENT);

    /* Graceful close from the client: the server sees the end of stream. */
    fl_net_conn_close(c, 0);
    RUN_UNTIL(&e, ss.closed == 1 && cs.closed == 1, 5000);
    ck_assert_int_eq(cs.reasons[0], 0);
    ck_assert_int_eq(ss.reasons[0], FL_ECLOSED);
    ck_assert_int_eq(fl_net_server_nconns(srv), 0);
    fl_net_server_free(srv);
    env_finish(&e);
}

START_TEST(test_tcp_roundtrip)
{
    roundtrip(0, "127.0.0.1", NULL);
}
END_TEST

START_TEST(test_tls_roundtrip)
{
    roundtrip(1, "127.0.0.1", "localhost");
}
END_TEST

/* IPv6 loopback, TLS verified against the certificate's IP SAN. */
START_TEST(test_tls_roundtrip_ipv6)
{
    roundtrip(1, "::1", NULL);
}
END_TEST

/* Five hundred frames in one write, then one frame a byte at a time. */
START_TEST(test_many_frames_one_write)
{
    env_t e;
    side_t ss = {0};
    env_init(&e);
    fl_net_server_t *srv = start_server(&e, &ss, NULL, NULL);
    fl_buf_t out;
    fl_buf_init(&out, 1u << 24);
    ss.small = 1;
    for (uint64_t i = 0; i < 500; i++) {
        size_t n;
        uint8_t *p = make_frame(i, 1, &n);
        ck_assert_int_eq(fl_frame_encode(&out, p, n, 1u << 24), 0);
        fl_free(p);
    }
    int fd = raw_connect(fl_net_server_port(srv));
    raw_send(&e, fd, out.data, out.len);
    RUN_UNTIL(&e, ss.frames == 500, 10000);
    ck_assert_int_eq(ss.bad, 0);

    fl_buf_reset(&out);
    size_t n;
    uint8_t *p = make_frame(500, 1, &n);
    ck_assert_int_eq(fl_frame_encode(&out, p, n, 1u << 24), 0);
    fl_free(p);
    for (size_t i = 0; i < out.len; i++)
        raw_send(&e, fd, out.data + i, 1);
    RUN_UNTIL(&e, ss.frames == 501, 5000);
    ck_assert_int_eq(ss.bad, 0);
    fl_buf_free(&out);

    /* A stream that ends inside a frame is reported as truncated. */
    uint8_t half[6] = {0, 0, 0, 10, 1, 2};
    raw_send(&e, fd, half, sizeof half);
    run_for(&e, 20);
    close(fd);
    RUN_UNTIL(&e, ss.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ETRUNC);
    fl_net_server_free(srv);
    env_finish(&e);
}
END_TEST

/* ---- misbehaving peers ---- */

/* Over TLS: one client declares a frame above the server's maximum; it is
 * closed with FL_ETOOBIG and the other client carries on. */
START_TEST(test_oversize_closes_only_that_peer)
{
    env_t e;
    side_t ss = {.echo = 1}, good = {0}, bad = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.limits.max_frame = 4096;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    int port = fl_net_server_port(srv);
    fl_net_conn_t *g = start_client(&e, &good, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, good.opened && ss.opened == 1, 5000);
    fl_net_conn_t *gs = ss.conn; /* the server's side of the good peer */
    fl_net_conn_t *b = start_client(&e, &bad, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, bad.opened && ss.opened == 2, 5000);

    uint8_t small[100], big[5000];
    fl_test_fill(small, sizeof small, 1);
    fl_test_fill(big, sizeof big, 2);
    ck_assert_int_eq(fl_net_send(g, small, sizeof small), 0);
    RUN_UNTIL(&e, good.frames == 1, 5000);
    ck_assert_int_eq(fl_net_send(b, big, sizeof big), 0);
    RUN_UNTIL(&e, ss.closed == 1 && bad.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ETOOBIG);
    ck_assert_int_eq(fl_net_server_nconns(srv), 1);
    /* The other peer still works, both ways. */
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(fl_net_send(g, small, sizeof small), 0);
    RUN_UNTIL(&e, good.frames == 11, 5000);
    ck_assert_int_eq(good.closed, 0);

    /* A limit per connection: the good peer may now send 50 bytes, so its
     * next 100-byte frame closes it too. */
    ck_assert_int_eq(fl_net_conn_set_max_frame(gs, 0), FL_EINVAL);
    ck_assert_int_eq(fl_net_conn_set_max_frame(gs, 50), 0);
    ck_assert_int_eq(fl_net_send(gs, small, sizeof small), FL_ETOOBIG);
    ck_assert_int_eq(fl_net_send(g, small, sizeof small), 0);
    RUN_UNTIL(&e, ss.closed == 2 && good.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[1], FL_ETOOBIG);
    ck_assert_int_eq(good.frames, 11);
    fl_net_server_free(srv);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* Garbage on the TLS port closes that socket only. */
START_TEST(test_tls_garbage_closes_only_that_peer)
{
    env_t e;
    side_t ss = {.echo = 1}, good = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_t *srv = start_server(&e, &ss, st, NULL);
    int port = fl_net_server_port(srv);
    fl_net_conn_t *g = start_client(&e, &good, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, good.opened == 1 && ss.opened == 1, 5000);

    int fd = raw_connect(port);
    uint8_t junk[700];
    memcpy(junk, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    fl_test_fill(junk + 27, sizeof junk - 27, 9);
    raw_send(&e, fd, junk, sizeof junk);
    RUN_UNTIL(&e, ss.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ECRYPTO);
    ck_assert_int_eq(ss.opened, 1); /* the garbage never opened */
    ck_assert(raw_closed(fd, 2000));
    close(fd);

    size_t n;
    uint8_t *p = make_frame(0, 0, &n);
    ck_assert_int_eq(fl_net_send(g, p, n), 0);
    fl_free(p);
    RUN_UNTIL(&e, good.frames == 1, 5000);
    ck_assert_int_eq(good.bad, 0);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, good.closed == 1, 5000);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* `openssl s_client`, run in a thread while the loop serves it. */
typedef struct {
    pthread_t th;
    char cmd[2048];
    atomic_int done;
    int status;
} sclient_t;

static void *sclient_main(void *arg)
{
    sclient_t *s = arg;
    s->status = fl_test_system("%s", s->cmd);
    atomic_store(&s->done, 1);
    return NULL;
}

static int run_s_client(env_t *e, int port, const char *version,
                        const char *out)
{
    sclient_t s;
    memset(&s, 0, sizeof s);
    snprintf(s.cmd, sizeof s.cmd,
             "timeout 10 openssl s_client -connect 127.0.0.1:%d %s "
             "-servername localhost -CAfile '%s/ca.pem' -verify_return_error "
             "</dev/null >'%s/%s' 2>&1",
             port, version, g_dir, g_dir, out);
    ck_assert_int_eq(pthread_create(&s.th, NULL, sclient_main, &s), 0);
    RUN_UNTIL(e, atomic_load(&s.done), 15000);
    pthread_join(s.th, NULL);
    return s.status;
}

START_TEST(test_tls13_only)
{
    env_t e;
    side_t ss = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0);
    fl_net_server_t *srv = start_server(&e, &ss, st, NULL);
    int port = fl_net_server_port(srv);

    /* A client limited to TLS 1.2 is refused. */
    ck_assert_int_ne(run_s_client(&e, port, "-tls1_2", "s12.out"), 0);
    RUN_UNTIL(&e, ss.closed == 1, 5000);
    ck_assert_int_eq(ss.opened, 0);
    ck_assert_int_eq(ss.reasons[0], FL_ENOTSUP);

    /* openssl s_client -tls1_3 completes a verified handshake. */
    ck_assert_int_eq(run_s_client(&e, port, "-tls1_3", "s13.out"), 0);
    RUN_UNTIL(&e, ss.closed == 2, 5000);
    ck_assert_int_eq(ss.opened, 1);
    ck_assert_int_eq(fl_test_system("grep -q 'TLSv1.3' '%s/s13.out' && "
                                    "grep -q 'Verify return code: 0' "
                                    "'%s/s13.out'",
                                    g_dir, g_dir),
                     0);
    fl_net_server_free(srv);
    fl_net_tls_free(st);
    env_finish(&e);
}
END_TEST

/* Mutual TLS: a certificate from the CA opens, and the server sees its
 * key; no certificate, or one from another CA, is refused. */
START_TEST(test_mutual_tls)
{
    env_t e;
    side_t ss = {.echo = 1}, ok = {.send_n = 3}, none = {0}, rogue = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(1);
    fl_net_tls_t *ct_ok = client_tls("client", NULL, 1);
    fl_net_tls_t *ct_none = client_tls(NULL, NULL, 1);
    fl_net_tls_t *ct_rogue = client_tls("rogue", NULL, 1);
    fl_net_server_t *srv = start_server(&e, &ss, st, NULL);
    int port = fl_net_server_port(srv);
    char path[512];
    uint8_t want[FL_NET_FP_LEN];
    ck_assert_int_eq(
        fl_net_cert_fingerprint(path_in(path, sizeof path, "client.pem"),
                                FL_NET_FP_SPKI, want),
        0);

    start_client(&e, &ok, port, ct_ok, NULL, "localhost");
    RUN_UNTIL(&e, ok.frames == 3, 5000);
    ck_assert_int_eq(ss.opened, 1);
    ck_assert_int_eq(ss.fp_rc, 0);
    ck_assert_mem_eq(ss.fp, want, FL_NET_FP_LEN);
    ck_assert_int_eq(ok.bad, 0);
    /* The key itself, as the openssl CLI sees it. */
    uint8_t *der = NULL;
    size_t der_len = 0;
    ck_assert_int_eq(fl_test_system("cd '%s' && openssl x509 -in client.pem "
                                    "-pubkey -noout | openssl pkey -pubin "
                                    "-outform DER > client.spki",
                                    g_dir),
                     0);
    ck_assert_int_eq(fl_file_read_all(path_in(path, sizeof path, "client.spki"),
                                      4096, &der, &der_len),
                     0);
    ck_assert_uint_eq(ss.spki_len, der_len);
    ck_assert_mem_eq(ss.spki, der, der_len);
    fl_free(der);

    start_client(&e, &none, port, ct_none, NULL, "localhost");
    RUN_UNTIL(&e, none.closed == 1 && ss.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_EDENIED);
    ck_assert_int_lt(none.reasons[0], 0);

    start_client(&e, &rogue, port, ct_rogue, NULL, "localhost");
    RUN_UNTIL(&e, rogue.closed == 1 && ss.closed == 2, 5000);
    ck_assert_int_eq(ss.reasons[1], FL_EDENIED);
    ck_assert_int_eq(ss.opened, 1); /* only the enrolled certificate */
    ck_assert_int_eq(ok.closed, 0);

    fl_net_server_free(srv);
    RUN_UNTIL(&e, ok.closed == 1, 5000);
    fl_net_tls_free(st);
    fl_net_tls_free(ct_ok);
    fl_net_tls_free(ct_none);
    fl_net_tls_free(ct_rogue);
    env_finish(&e);
}
END_TEST

/* Pinning: the right SPKI or certificate fingerprint opens without a CA;
 * a wrong one, or a CA-verified certificate for another name, is refused
 * by the client. */
START_TEST(test_pinning_and_names)
{
    env_t e;
    side_t ss = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0};
    env_init(&e);
    char path[512];
    path_in(path, sizeof path, "server.pem");
    uint8_t spki[FL_NET_FP_LEN], cert[FL_NET_FP_LEN], wrong[FL_NET_FP_LEN];
    ck_assert_int_eq(fl_net_cert_fingerprint(path, FL_NET_FP_SPKI, spki), 0);
    ck_assert_int_eq(fl_net_cert_fingerprint(path, FL_NET_FP_CERT, cert), 0);
    ck_assert_int_eq(
        fl_net_cert_fingerprint("/nonexistent.pem", FL_NET_FP_SPKI, wrong),
        FL_ENOENT);
    /* The SPKI pin agrees with the openssl CLI. */
    char hex[2 * FL_NET_FP_LEN + 1];
    fl_hex_encode(hex, spki, FL_NET_FP_LEN);
    ck_assert_int_eq(
        fl_test_system("openssl x509 -in '%s' -pubkey -noout | openssl pkey "
                       "-pubin -outform DER | openssl dgst -sha256 -r | grep "
                       "-q '^%s'",
                       path, hex),
        0);
    memcpy(wrong, spki, sizeof wrong);
    wrong[7] ^= 1;

    fl_net_tls_t *st = server_tls(0);
    fl_net_server_t *srv = start_server(&e, &ss, st, NULL);
    int port = fl_net_server_port(srv);
    fl_net_tls_t *t1 = client_tls(NULL, spki, 0);
    fl_net_tls_t *t2 = client_tls(NULL, cert, 0);
    fl_net_tls_t *t3 = client_tls(NULL, wrong, 1);
    fl_net_tls_t *t4 = client_tls(NULL, NULL, 1);
    start_client(&e, &c1, port, t1, NULL, NULL);
    start_client(&e, &c2, port, t2, NULL, NULL);
    start_client(&e, &c3, port, t3, NULL, "localhost");
    start_client(&e, &c4, port, t4, NULL, "evil.example");
    RUN_UNTIL(&e, c1.opened && c2.opened && c3.closed && c4.closed, 5000);
    ck_assert_int_eq(c3.opened, 0);
    ck_assert_int_eq(c3.reasons[0], FL_EDENIED);
    ck_assert_int_eq(c4.opened, 0);
    ck_assert_int_eq(c4.reasons[0], FL_EDENIED);
    ck_assert_int_eq(c1.fp_rc, 0);
    ck_assert_mem_eq(c1.fp, spki, FL_NET_FP_LEN);
    RUN_UNTIL(&e, ss.opened == 2 && ss.closed == 2, 5000);

    fl_net_server_free(srv);
    RUN_UNTIL(&e, c1.closed && c2.closed, 5000);
    fl_net_tls_free(st);
    fl_net_tls_free(t1);
    fl_net_tls_free(t2);
    fl_net_tls_free(t3);
    fl_net_tls_free(t4);
    env_finish(&e);
}
END_TEST

/* ---- deadlines and limits ---- */

START_TEST(test_idle_deadline)
{
    env_t e;
    side_t ss = {0}, cs = {0};
    env_init(&e);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.limits.idle_ms = 400;
    fl_net_server_t *srv = start_server(&e, &ss, NULL, &so);
    int fd = raw_connect(fl_net_server_port(srv));
    /* A peer that keeps talking is not idle. */
    start_client(&e, &cs, fl_net_server_port(srv), NULL, NULL, NULL);
    RUN_UNTIL(&e, ss.opened == 2, 5000);
    uint8_t ping[8] = {1};
    for (int i = 0; i < 32 && cs.conn; i++) {
        fl_net_send(cs.conn, ping, sizeof ping);
        run_for(&e, 25);
    }
    /* 800 ms have passed: the silent one is gone, the talker is not. */
    ck_assert_int_eq(cs.closed, 0);
    RUN_UNTIL(&e, ss.closed >= 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ETIMEOUT);
    ck_assert(raw_closed(fd, 2000));
    close(fd);
    /* Then the talker goes silent too. */
    RUN_UNTIL(&e, ss.closed == 2 && cs.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[1], FL_ETIMEOUT);
    ck_assert_int_eq(ss.frames, 32);

    /* Per connection: no idle deadline for this one, a short one for
     * that one. */
    side_t c2 = {0}, c3 = {0};
    start_client(&e, &c2, fl_net_server_port(srv), NULL, NULL, NULL);
    RUN_UNTIL(&e, ss.opened == 3, 5000);
    ck_assert_int_eq(fl_net_conn_set_idle(ss.conn, 0), 0);
    start_client(&e, &c3, fl_net_server_port(srv), NULL, NULL, NULL);
    RUN_UNTIL(&e, ss.opened == 4, 5000);
    ck_assert_int_eq(fl_net_conn_set_idle(ss.conn, 50), 0);
    RUN_UNTIL(&e, c3.closed == 1, 5000);
    run_for(&e, 600);
    ck_assert_int_eq(c2.closed, 0);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, c2.closed == 1, 5000);
    env_finish(&e);
}
END_TEST

START_TEST(test_phase_deadline)
{
    env_t e;
    side_t ss = {.phase_ms = 60}, c1 = {0}, c2 = {0};
    env_init(&e);
    fl_net_server_t *srv = start_server(&e, &ss, NULL, NULL);
    int port = fl_net_server_port(srv);
    /* Without on_deadline the connection is closed. */
    start_client(&e, &c1, port, NULL, NULL, NULL);
    RUN_UNTIL(&e, ss.closed == 1 && c1.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ETIMEOUT);
    ck_assert_int_eq(c1.reasons[0], FL_ECLOSED);
    fl_net_server_free(srv);

    /* With on_deadline the server decides; re-arming and disarming work. */
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.cb = k_cbs;
    so.cb.on_deadline = cb_deadline;
    so.data = &ss;
    so.on_reject = cb_reject;
    memset(&ss, 0, sizeof ss);
    ss.phase_ms = 30;
    ck_assert_int_eq(fl_net_server_new(&e.loop, &so, &srv), 0);
    start_client(&e, &c2, fl_net_server_port(srv), NULL, NULL, NULL);
    RUN_UNTIL(&e, ss.deadlines == 1, 5000);
    ck_assert_int_eq(ss.closed, 0);
    ck_assert_int_eq(fl_net_conn_set_deadline(ss.conn, 30), 0);
    RUN_UNTIL(&e, ss.deadlines == 2, 5000);
    ck_assert_int_eq(fl_net_conn_set_deadline(ss.conn, 20), 0);
    ck_assert_int_eq(fl_net_conn_set_deadline(ss.conn, 0), 0);
    run_for(&e, 100);
    ck_assert_int_eq(ss.deadlines, 2);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, c2.closed == 1 && ss.closed == 1, 5000);
    env_finish(&e);
}
END_TEST

START_TEST(test_connection_limit)
{
    env_t e;
    side_t ss = {0};
    env_init(&e);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.max_conns = 2;
    fl_net_server_t *srv = start_server(&e, &ss, NULL, &so);
    int port = fl_net_server_port(srv);
    int a = raw_connect(port), b = raw_connect(port);
    RUN_UNTIL(&e, ss.opened == 2, 5000);
    int c = raw_connect(port);
    RUN_UNTIL(&e, ss.rejects == 1, 5000);
    ck_assert_int_eq(ss.last_reject, FL_EAGAIN);
    fl_net_server_stats_t sst;
    fl_net_server_stats(srv, &sst);
    ck_assert_uint_eq(sst.rejected, 1);
    ck_assert_uint_eq(sst.accepted, 2);
    ck_assert(raw_closed(c, 2000));
    ck_assert_int_eq(fl_net_server_nconns(srv), 2);
    ck_assert_int_eq(ss.closed, 0);
    /* A slot frees up when a peer leaves. */
    close(a);
    RUN_UNTIL(&e, ss.closed == 1, 5000);
    int d = raw_connect(port);
    RUN_UNTIL(&e, ss.opened == 3, 5000);
    ck_assert_int_eq(ss.rejects, 1);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, ss.closed == 3, 5000);
    close(b);
    close(c);
    close(d);
    env_finish(&e);
}
END_TEST

/* A slow-loris TLS client holds the only handshake slot: the next socket
 * is closed at once, and the deadline then frees the slot. */
START_TEST(test_handshake_limit_and_deadline)
{
    env_t e;
    side_t ss = {0}, cs = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.max_handshakes = 1;
    so.limits.handshake_ms = 300;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    int port = fl_net_server_port(srv);

    int loris = raw_connect(port);
    uint8_t partial[3] = {0x16, 0x03, 0x01}; /* a record header, cut */
    raw_send(&e, loris, partial, sizeof partial);
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 1, 5000);
    int excess = raw_connect(port);
    RUN_UNTIL(&e, ss.rejects == 1, 5000);
    ck_assert(raw_closed(excess, 2000));

    RUN_UNTIL(&e, ss.closed == 1, 5000);
    ck_assert_int_eq(ss.reasons[0], FL_ETIMEOUT);
    ck_assert(raw_closed(loris, 2000));
    /* The slot is free again. */
    start_client(&e, &cs, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, cs.opened == 1 && ss.opened == 1, 5000);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, cs.closed == 1, 5000);
    close(loris);
    close(excess);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* Handshakes are limited per source address: two stalled handshakes from
 * 127.0.0.1 fill its share, a third from there is closed at once, while
 * one from 127.0.0.2 is still taken; when a stalled one leaves, a real
 * client from 127.0.0.1 gets through. */
START_TEST(test_handshake_limit_per_source)
{
    env_t e;
    side_t ss = {0}, cs = {0};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.max_handshakes = 100;
    so.max_handshakes_per_source = 2;
    so.limits.handshake_ms = 20000;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    int port = fl_net_server_port(srv);
    uint8_t partial[3] = {0x16, 0x03, 0x01}; /* a record header, cut */

    int a = raw_connect(port), b = raw_connect(port);
    raw_send(&e, a, partial, sizeof partial);
    raw_send(&e, b, partial, sizeof partial);
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 2, 5000);
    int c = raw_connect(port);
    RUN_UNTIL(&e, ss.rejects == 1, 5000);
    ck_assert_int_eq(ss.last_reject, FL_EAGAIN);
    ck_assert(raw_closed(c, 2000));
    int d = raw_connect_src(AF_INET, port, 0, "127.0.0.2");
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 3, 5000);
    fl_net_server_stats_t sst;
    fl_net_server_stats(srv, &sst);
    ck_assert_uint_eq(sst.rejected, 1);
    ck_assert_uint_eq(sst.rejected_source, 1);
    ck_assert_uint_eq(sst.handshakes, 3);

    /* A stalled handshake leaves: 127.0.0.1 has a slot again. */
    close(a);
    RUN_UNTIL(&e, ss.closed == 1, 5000);
    start_client(&e, &cs, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, cs.opened == 1 && ss.opened == 1, 5000);
    ck_assert_int_eq(ss.rejects, 1);
    /* Completed handshakes do not count: another stalled one fits. */
    int f = raw_connect(port);
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 4, 5000);
    ck_assert_int_eq(ss.rejects, 1);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, cs.closed == 1, 5000);
    close(b);
    close(c);
    close(d);
    close(f);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* The client side has a handshake deadline too: a server that accepts and
 * says nothing. */
START_TEST(test_client_handshake_deadline)
{
    env_t e;
    side_t cs = {0};
    env_init(&e);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(lfd, 4), 0);
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    fl_net_tls_t *ct = client_tls(NULL, NULL, 1);
    fl_net_connect_opts_t o;
    fl_net_connect_opts_init(&o);
    o.host = "127.0.0.1";
    o.port = ntohs(a.sin_port);
    o.tls = ct;
    o.cb = k_cbs;
    o.data = &cs;
    o.limits.handshake_ms = 150;
    ck_assert_int_eq(fl_net_connect(&e.loop, &o, NULL), 0);
    RUN_UNTIL(&e, cs.closed == 1, 5000);
    ck_assert_int_eq(cs.reasons[0], FL_ETIMEOUT);
    ck_assert_int_eq(cs.opened, 0);
    close(lfd);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* A peer that never reads: the sender is told at the high-water mark, and
 * the peer is closed when the hard cap would be passed. A peer that reads
 * brings on_writable. */
static void backpressure(int use_tls)
{
    env_t e;
    side_t ss = {0}, cs = {0};
    env_init(&e);
    fl_net_tls_t *st = use_tls ? server_tls(0) : NULL;
    fl_net_tls_t *ct = use_tls ? client_tls(NULL, NULL, 1) : NULL;
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.limits.wq_high = 256u << 10;
    so.limits.wq_max = 1u << 20;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    int port = fl_net_server_port(srv);

    uint8_t *chunk = fl_calloc(1, 64u << 10);
    ck_assert_ptr_nonnull(chunk);
    if (!use_tls) {
        int fd = raw_connect_af(AF_INET, port, 4096);
        RUN_UNTIL(&e, ss.opened == 1, 5000);
        fl_net_conn_t *c = ss.conn;
        int first_bp = -1, closed_at = -1;
        for (int i = 0; i < 4096; i++) {
            int rc = fl_net_send(c, chunk, 64u << 10);
            if (rc == FL_NET_BACKPRESSURE && first_bp < 0)
                first_bp = i;
            if (rc == FL_EAGAIN) {
                closed_at = i;
                break;
            }
            ck_assert(rc == 0 || rc == FL_NET_BACKPRESSURE);
            ck_assert_uint_le(fl_net_conn_queued(c), so.limits.wq_max);
        }
        ck_assert_int_ge(first_bp, 0);
        ck_assert_int_gt(closed_at, first_bp);
        ck_assert_int_eq(fl_net_send(c, chunk, 10), FL_ECLOSED);
        RUN_UNTIL(&e, ss.closed == 1, 5000);
        ck_assert_int_eq(ss.reasons[0], FL_EAGAIN);
        ck_assert(raw_closed(fd, 5000));
        close(fd);
    }

    /* A reading peer drains the queue: on_writable. */
    start_client(&e, &cs, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, ss.conn && cs.opened == 1, 5000);
    int sent = 0, rc = 0;
    while (rc != FL_NET_BACKPRESSURE && sent < 4096) {
        rc = fl_net_send(ss.conn, chunk, 64u << 10);
        ck_assert(rc == 0 || rc == FL_NET_BACKPRESSURE);
        sent++;
    }
    ck_assert_int_eq(rc, FL_NET_BACKPRESSURE);
    RUN_UNTIL(&e, ss.writable == 1 && cs.frames == sent, 10000);
    ck_assert_uint_le(fl_net_conn_queued(ss.conn), so.limits.wq_high / 2);
    fl_free(chunk);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, cs.closed == 1, 5000);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}

START_TEST(test_backpressure_tcp)
{
    backpressure(0);
}
END_TEST

START_TEST(test_backpressure_tls)
{
    backpressure(1);
}
END_TEST

/* Closing from inside callbacks: a frame that breaks the protocol ends the
 * connection at once, even with more frames in the same read; a graceful
 * close right after sending still delivers everything. */
START_TEST(test_close_from_callbacks)
{
    env_t e;
    side_t ss = {.close_after = 3}, cs = {.send_n = 40, .small = 1};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_t *srv = start_server(&e, &ss, st, NULL);
    int port = fl_net_server_port(srv);
    start_client(&e, &cs, port, ct, NULL, "localhost");
    RUN_UNTIL(&e, ss.closed == 1 && cs.closed == 1, 5000);
    ck_assert_int_eq(ss.frames, 3);
    ck_assert_int_eq(ss.reasons[0], FL_EPROTO);
    ck_assert_int_eq(cs.reasons[0], FL_ECLOSED);
    fl_net_server_free(srv);

    /* The server says goodbye with a 3 MiB frame still queued. */
    side_t s2 = {.send_n = 8, .bye_on_open = 1}, c2 = {0};
    srv = start_server(&e, &s2, st, NULL);
    start_client(&e, &c2, fl_net_server_port(srv), ct, NULL, "localhost");
    RUN_UNTIL(&e, s2.closed == 1 && c2.closed == 1, 10000);
    ck_assert_int_eq(c2.frames, 8);
    ck_assert_int_eq(c2.bad, 0);
    ck_assert_int_eq(s2.reasons[0], 0);
    ck_assert_int_eq(c2.reasons[0], FL_ECLOSED);
    fl_net_server_free(srv);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
}
END_TEST

/* ---- backoff and reconnection ---- */

START_TEST(test_backoff)
{
    fl_net_backoff_t a, b;
    fl_net_backoff_init(&a, 100, 10000, 42);
    fl_net_backoff_init(&b, 100, 10000, 42);
    uint64_t seq[20];
    for (int i = 0; i < 20; i++) {
        uint64_t bound = FL_MIN(10000u, 100u << FL_MIN(i, 20));
        seq[i] = fl_net_backoff_next(&a);
        ck_assert_uint_le(seq[i], bound);
        ck_assert_uint_eq(seq[i], fl_net_backoff_next(&b)); /* reproducible */
    }
    /* Jittered: not all at the bound, not all equal. */
    int distinct = 0;
    for (int i = 1; i < 20; i++)
        distinct += seq[i] != seq[i - 1];
    ck_assert_int_gt(distinct, 10);
    /* Growth: the mean delay at attempt k is about min(cap, base 2^k) / 2. */
    double mean[8] = {0};
    for (int k = 0; k < 8; k++) {
        for (int s = 0; s < 2000; s++) {
            fl_net_backoff_reset(&a);
            for (int j = 0; j < k; j++)
                fl_net_backoff_next(&a);
            mean[k] += (double)fl_net_backoff_next(&a) / 2000.0;
        }
        double bound = FL_MIN(10000.0, 100.0 * (double)(1u << k));
        ck_assert_double_ge(mean[k], bound * 0.4);
        ck_assert_double_le(mean[k], bound * 0.6);
    }
    ck_assert_double_gt(mean[6], 10 * mean[2]);
    /* Capped for ever, even after very many attempts. */
    for (int i = 0; i < 200; i++)
        ck_assert_uint_le(fl_net_backoff_next(&a), 10000);
    fl_net_backoff_t big;
    fl_net_backoff_init(&big, UINT64_MAX / 3, UINT64_MAX, 7);
    for (int i = 0; i < 100; i++)
        fl_net_backoff_next(&big);
    fl_net_backoff_t r;
    fl_net_backoff_init(&r, 10, 20, 0); /* random seed */
    ck_assert_uint_le(fl_net_backoff_next(&r), 10);
}
END_TEST

typedef struct {
    int retries;
    uint64_t delays[64];
    int reasons[64];
} retry_log_t;

typedef struct {
    side_t side;
    retry_log_t log;
} rc_ctx_t;

static void cb_retry_log(fl_net_reconnect_t *r, int last_reason, uint64_t delay)
{
    rc_ctx_t *x = fl_net_reconnect_data(r);
    if (x->log.retries < 64) {
        x->log.delays[x->log.retries] = delay;
        x->log.reasons[x->log.retries] = last_reason;
    }
    x->log.retries++;
}

/* The server is down: attempts fail and back off; it comes up: the client
 * connects; it goes down and up again: the client comes back. */
START_TEST(test_reconnect)
{
    env_t e;
    side_t ss = {.echo = 1};
    rc_ctx_t x;
    memset(&x, 0, sizeof x);
    x.side.send_n = 2;
    env_init(&e);
    /* Find a free port, then leave it unbound. */
    fl_net_server_t *srv = start_server(&e, &ss, NULL, NULL);
    int port = fl_net_server_port(srv);
    fl_net_server_free(srv);
    run_for(&e, 10);

    fl_net_reconnect_opts_t o;
    fl_net_reconnect_opts_init(&o);
    o.conn.host = "127.0.0.1";
    o.conn.port = port;
    o.conn.cb = k_cbs;
    o.conn.data = &x;
    o.base_ms = 5;
    o.cap_ms = 40;
    o.seed = 1234;
    o.on_retry = cb_retry_log;
    fl_net_reconnect_t *r = NULL;
    ck_assert_int_eq(fl_net_reconnect_new(&e.loop, &o, &r), 0);
    RUN_UNTIL(&e, x.log.retries >= 6, 5000);
    ck_assert_ptr_null(fl_net_reconnect_conn(r));
    ck_assert_int_eq(x.side.opened, 0);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(x.log.reasons[i], FL_EIO); /* refused */
        ck_assert_uint_le(x.log.delays[i], FL_MIN(40u, 5u << i));
    }

    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.port = port;
    srv = start_server(&e, &ss, NULL, &so);
    RUN_UNTIL(&e, x.side.frames == 2, 5000);
    ck_assert_ptr_nonnull(fl_net_reconnect_conn(r));
    ck_assert_int_eq(x.side.bad, 0);

    /* The server goes away: the session ends, and comes back after. */
    int closed_before = x.side.closed;
    fl_net_server_free(srv);
    RUN_UNTIL(&e, x.side.closed > closed_before, 5000);
    ck_assert_ptr_null(fl_net_reconnect_conn(r));
    int before = x.log.retries;
    srv = NULL;
    RUN_UNTIL(&e, x.log.retries > before, 5000);
    ss.expect = 0;
    x.side.expect = 0;
    srv = start_server(&e, &ss, NULL, &so);
    RUN_UNTIL(&e, x.side.opened == 2 && x.side.frames == 4, 5000);
    /* The backoff was reset by the first good session. */
    ck_assert_uint_le(x.log.delays[before], 5);

    fl_net_reconnect_free(r);
    fl_net_reconnect_free(NULL);
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 0, 5000);
    fl_net_server_free(srv);
    env_finish(&e);
}
END_TEST

static void cb_retry_stop(fl_net_reconnect_t *r, int last_reason,
                          uint64_t delay)
{
    cb_retry_log(r, last_reason, delay);
    rc_ctx_t *x = fl_net_reconnect_data(r);
    if (x->log.retries == 3)
        fl_net_reconnect_free(r);
}

/* A reconnecting client stopped from its own callback, and one freed in
 * the middle of an attempt to a name being resolved. */
START_TEST(test_reconnect_stop)
{
    env_t e;
    side_t ss = {0};
    rc_ctx_t x;
    memset(&x, 0, sizeof x);
    env_init(&e);
    fl_net_server_t *srv = start_server(&e, &ss, NULL, NULL);
    int port = fl_net_server_port(srv);
    fl_net_server_free(srv);
    run_for(&e, 10);

    fl_net_reconnect_opts_t o;
    fl_net_reconnect_opts_init(&o);
    o.conn.host = "127.0.0.1";
    o.conn.port = port;
    o.conn.cb = k_cbs;
    o.conn.data = &x;
    o.base_ms = 1;
    o.cap_ms = 5;
    o.seed = 99;
    o.on_retry = cb_retry_stop;
    fl_net_reconnect_t *r = NULL;
    ck_assert_int_eq(fl_net_reconnect_new(&e.loop, &o, &r), 0);
    RUN_UNTIL(&e, x.log.retries == 3, 5000);
    run_for(&e, 50);
    ck_assert_int_eq(x.log.retries, 3);
    ck_assert_int_eq(x.side.closed, 3);

    o.conn.host = "localhost";
    o.on_retry = cb_retry_log;
    ck_assert_int_eq(fl_net_reconnect_new(&e.loop, &o, &r), 0);
    fl_net_reconnect_free(r);
    env_finish(&e);
}
END_TEST

/* A crowd: sixty reconnecting TLS clients at once against a server that
 * lets eight handshakes run at a time. The excess is closed at accept,
 * backs off with jitter, and every client gets in and round-trips. */
enum { CROWD = 60 };

START_TEST(test_crowd_with_handshake_limit)
{
    env_t e;
    side_t ss = {.echo = 1};
    env_init(&e);
    fl_net_tls_t *st = server_tls(0), *ct = client_tls(NULL, NULL, 1);
    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.max_handshakes = 8;
    so.backlog = 256;
    fl_net_server_t *srv = start_server(&e, &ss, st, &so);
    rc_ctx_t *x = fl_calloc(CROWD, sizeof *x);
    fl_net_reconnect_t *r[CROWD];
    ck_assert_ptr_nonnull(x);
    for (int i = 0; i < CROWD; i++) {
        fl_net_reconnect_opts_t o;
        fl_net_reconnect_opts_init(&o);
        o.conn.host = "127.0.0.1";
        o.conn.port = fl_net_server_port(srv);
        o.conn.server_name = "localhost";
        o.conn.tls = ct;
        o.conn.cb = k_cbs;
        o.conn.data = &x[i];
        o.base_ms = 5;
        o.cap_ms = 200;
        o.seed = 1000 + (uint64_t)i;
        o.on_retry = cb_retry_log;
        x[i].side.send_n = 3;
        x[i].side.small = 1;
        ck_assert_int_eq(fl_net_reconnect_new(&e.loop, &o, &r[i]), 0);
    }
    ss.small = 1;
    int done = 0;
    uint64_t end = fl_time_mono_ns() + 30000000000u;
    while (done < CROWD && fl_time_mono_ns() < end) {
        uv_run(&e.loop, UV_RUN_ONCE);
        done = 0;
        for (int i = 0; i < CROWD; i++)
            done += x[i].side.frames == 3;
    }
    ck_assert_int_eq(done, CROWD);
    fl_net_server_stats_t sst;
    fl_net_server_stats(srv, &sst);
    ck_assert_uint_eq(sst.accepted - sst.closed, CROWD);
    ck_assert_uint_gt(sst.rejected, 0); /* the limit did bite */
    int retries = 0;
    for (int i = 0; i < CROWD; i++)
        retries += x[i].log.retries;
    ck_assert_int_ge(retries, (int)sst.rejected);
    ck_assert_uint_eq(sst.io.frames_in, 3 * CROWD);
    for (int i = 0; i < CROWD; i++) {
        ck_assert_int_eq(x[i].side.bad, 0);
        ck_assert_int_eq(x[i].side.opened, 1);
    }
    /* The server checks each connection's own order: sequence numbers
     * restart per client, so count, not order, is what it can assert. */
    ck_assert_int_eq(ss.frames, 3 * CROWD);
    for (int i = 0; i < CROWD; i++)
        fl_net_reconnect_free(r[i]);
    RUN_UNTIL(&e, fl_net_server_nconns(srv) == 0, 10000);
    fl_net_server_free(srv);
    fl_net_tls_free(st);
    fl_net_tls_free(ct);
    env_finish(&e);
    fl_free(x);
}
END_TEST

/* ---- API contracts ---- */

START_TEST(test_api_errors)
{
    env_t e;
    side_t ss = {0}, cs = {0};
    env_init(&e);
    fl_net_tls_t *t = NULL;
    fl_net_tls_opts_t to = {0};
    ck_assert_int_eq(fl_net_tls_client_new(&to, &t), FL_EINVAL);
    ck_assert_int_eq(fl_net_tls_server_new(&to, &t), FL_EINVAL);
    ck_assert_ptr_null(t);
    char cert[512], key[512];
    to.cert_file = path_in(cert, sizeof cert, "server.pem");
    to.key_file = path_in(key, sizeof key, "client.key"); /* not its key */
    ck_assert_int_eq(fl_net_tls_server_new(&to, &t), FL_ECRYPTO);
    fl_net_tls_free(NULL);
    fl_net_server_free(NULL);

    fl_net_server_opts_t so;
    fl_net_server_opts_init(&so);
    so.host = "not-an-address";
    fl_net_server_t *srv = NULL;
    ck_assert_int_eq(fl_net_server_new(&e.loop, &so, &srv), FL_EINVAL);
    srv = start_server(&e, &ss, NULL, NULL);
    fl_net_server_t *dup = NULL;
    so.host = "127.0.0.1";
    so.port = fl_net_server_port(srv);
    ck_assert_int_eq(fl_net_server_new(&e.loop, &so, &dup), FL_EEXIST);
    ck_assert_ptr_null(dup);

    fl_net_connect_opts_t co;
    fl_net_connect_opts_init(&co);
    ck_assert_int_eq(fl_net_connect(&e.loop, &co, NULL), FL_EINVAL);

    fl_net_conn_t *c =
        start_client(&e, &cs, fl_net_server_port(srv), NULL, NULL, NULL);
    uint8_t b[8] = {0};
    ck_assert_int_eq(fl_net_send(c, b, sizeof b), FL_ESTATE);
    RUN_UNTIL(&e, cs.opened == 1, 5000);
    ck_assert_int_eq(fl_net_send(c, b, 0), FL_EINVAL);
    uint8_t *big = fl_malloc(FL_FRAME_DEFAULT_MAX + 1u);
    ck_assert_ptr_nonnull(big);
    ck_assert_int_eq(fl_net_send_owned(c, big, FL_FRAME_DEFAULT_MAX + 1u),
                     FL_ETOOBIG); /* taken and freed even so */
    ck_assert(fl_net_conn_is_open(c));
    ck_assert_ptr_eq(fl_net_conn_data(c), &cs);
    fl_net_conn_set_data(c, &cs);
    ck_assert_ptr_null(fl_net_conn_server(c));
    /* A name is resolved. */
    side_t ns = {0};
    start_client(&e, &ns, fl_net_server_port(srv), NULL, "localhost", NULL);
    RUN_UNTIL(&e, ns.opened == 1 || ns.closed == 1, 5000);
    /* Closing twice is harmless; sends after close fail. */
    fl_net_conn_close(c, FL_EABORTED);
    fl_net_conn_close(c, 0);
    ck_assert_int_eq(fl_net_send(c, b, sizeof b), FL_ECLOSED);
    ck_assert_int_eq(fl_net_conn_set_deadline(c, 10), FL_ECLOSED);
    RUN_UNTIL(&e, cs.closed == 1, 5000);
    ck_assert_int_eq(cs.reasons[0], FL_EABORTED);
    fl_net_server_free(srv);
    RUN_UNTIL(&e, ns.closed == 1, 5000);
    env_finish(&e);
}
END_TEST

Suite *check_net_suite(void)
{
    Suite *s = suite_create("net");
    TCase *tc = tcase_create("loopback");
    tcase_add_unchecked_fixture(tc, certs_make, certs_remove);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_tcp_roundtrip);
    tcase_add_test(tc, test_tls_roundtrip);
    tcase_add_test(tc, test_tls_roundtrip_ipv6);
    tcase_add_test(tc, test_many_frames_one_write);
    tcase_add_test(tc, test_oversize_closes_only_that_peer);
    tcase_add_test(tc, test_tls_garbage_closes_only_that_peer);
    tcase_add_test(tc, test_tls13_only);
    tcase_add_test(tc, test_mutual_tls);
    tcase_add_test(tc, test_pinning_and_names);
    tcase_add_test(tc, test_idle_deadline);
    tcase_add_test(tc, test_phase_deadline);
    tcase_add_test(tc, test_connection_limit);
    tcase_add_test(tc, test_handshake_limit_and_deadline);
    tcase_add_test(tc, test_handshake_limit_per_source);
    tcase_add_test(tc, test_client_handshake_deadline);
    tcase_add_test(tc, test_backpressure_tcp);
    tcase_add_test(tc, test_backpressure_tls);
    tcase_add_test(tc, test_close_from_callbacks);
    tcase_add_test(tc, test_reconnect);
    tcase_add_test(tc, test_reconnect_stop);
    tcase_add_test(tc, test_crowd_with_handshake_limit);
    tcase_add_test(tc, test_api_errors);
    suite_add_tcase(s, tc);
    TCase *tb = tcase_create("backoff");
    tcase_add_test(tb, test_backoff);
    suite_add_tcase(s, tb);
    return s;
}
