/*
 * net/net.h — the transport: length-prefixed frames over TCP or TLS 1.3 on
 * libuv streams, with the limits a server facing many devices needs.
 *
 * Layers. A connection (fl_net_conn_t) owns a libuv TCP handle, a frame
 * decoder (proto/frame.h) and a transport from a small table of function
 * pointers: plain TCP, or TLS 1.3 through OpenSSL memory BIOs. Framing,
 * queues and deadlines do not know which transport they run on.
 *
 *   server:  fl_net_server_new(loop, &opts) listens; every accepted socket
 *            becomes a connection that reports to opts.cb: on_open once the
 *            TLS handshake is done, on_frame per complete frame, on_close
 *            exactly once with a reason.
 *   client:  fl_net_connect(loop, &opts) for one session, or
 *            fl_net_reconnect_new() for a session that comes back with
 *            exponential backoff and full jitter after every loss.
 *
 * A server, in short:
 *
 *   fl_net_server_opts_t o;
 *   fl_net_server_opts_init(&o);
 *   o.host = "::"; o.port = 7443;
 *   o.tls = tls;                     (fl_net_tls_server_new; NULL = TCP)
 *   o.limits.max_frame = 16u << 20; o.limits.idle_ms = 120000;
 *   o.cb.on_open = on_open;          (fl_net_conn_set_data(c, device);
 *                                     fl_net_conn_set_deadline(c, ms))
 *   o.cb.on_frame = on_frame;        (decode the Envelope in payload)
 *   o.cb.on_close = on_close;        (forget the device; log the reason)
 *   fl_net_server_new(loop, &o, &srv);
 *   ... fl_net_send(c, p, n) == FL_NET_BACKPRESSURE: pause that producer
 *       until on_writable;
 *   fl_net_server_free(srv); then run the loop until it is empty.
 *
 * Frames. The payload handed to on_frame is one encoded Envelope; the
 * caller decodes it. Its length is checked against limits.max_frame before
 * any memory is reserved for it; a larger declared length closes that peer
 * with FL_ETOOBIG.
 *
 * Close reasons (the `reason` of on_close), all negative FL_E* codes, or 0
 * after a graceful fl_net_conn_close(c, 0):
 *   FL_ECLOSED   the peer closed or reset the stream, or the server or
 *                reconnecting client it belongs to was freed; FL_ETRUNC
 *                when the peer left in the middle of a frame
 *   FL_ETOOBIG   the peer declared a frame longer than limits.max_frame
 *   FL_EFORMAT   the peer sent a zero-length frame
 *   FL_ETIMEOUT  handshake, idle or phase deadline passed
 *   FL_EAGAIN    slow reader: the write queue would pass limits.wq_max
 *   FL_ECRYPTO   TLS failure (garbage, bad record, handshake failure)
 *   FL_ENOTSUP   the peer offered no TLS version we accept (e.g. TLS 1.2)
 *   FL_EDENIED   certificate verification failed (chain, host name, pin,
 *                or a client without a certificate under mutual TLS)
 *   FL_EIO       a socket error (connection refused, reset, ...)
 *   anything the caller passed to fl_net_conn_close.
 * Every error closes only the connection it happened on.
 *
 * Threads. Everything runs on the thread of the uv_loop_t the caller owns
 * and runs; no function here may be called from another thread. net never
 * logs and never changes signal dispositions: programs must ignore SIGPIPE
 * (signal(SIGPIPE, SIG_IGN)), since libuv writes with write(2).
 *
 * Lifetime. Closing is asynchronous, as in libuv: fl_net_conn_close,
 * fl_net_server_free and fl_net_reconnect_free start closing; the memory is
 * released after the last handle has closed, so the caller keeps running
 * the loop (uv_run until it returns) before uv_loop_close. A connection is
 * valid until its on_close callback returns.
 *
 * Ownership: pointer arguments are borrowed unless marked "taken" or
 * "returned owned". Option structs are read during the call only (strings
 * are copied).
 */
#ifndef FL_NET_H
#define FL_NET_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* fl_net_send* returns this (> 0) when the frame was queued but the write
 * queue is now above limits.wq_high: stop producing until on_writable. */
#define FL_NET_BACKPRESSURE 1

/* SHA-256 fingerprints, of a certificate (DER) or of its public key
 * (DER SubjectPublicKeyInfo, as in HPKP pins). */
#define FL_NET_FP_LEN 32
typedef enum {
    FL_NET_FP_SPKI = 0,
    FL_NET_FP_CERT = 1,
} fl_net_fp_kind_t;

typedef struct fl_net_tls fl_net_tls_t;
typedef struct fl_net_conn fl_net_conn_t;
typedef struct fl_net_server fl_net_server_t;
typedef struct fl_net_reconnect fl_net_reconnect_t;

/* ---- TLS contexts --------------------------------------------------------
 * TLS 1.3 only, both ways. A context is reference-counted internally: it
 * may be freed while connections made with it are still open. */
typedef struct {
    /* Server: the certificate chain and key (PEM), required. Client: an
     * optional certificate and key for mutual TLS. */
    const char *cert_file;
    const char *key_file;
    /* Server: when set, mutual TLS: every client must present a
     * certificate that verifies against these CAs (PEM), or the handshake
     * fails (FL_EDENIED). Client: the CAs that verify the server's chain
     * and its name (fl_net_connect_opts_t.server_name). */
    const char *ca_file;
    /* Client only: a pinned SHA-256 fingerprint (FL_NET_FP_LEN bytes) of
     * the server's certificate or of its public key (either matches). With
     * ca_file too, both checks must pass. A client needs ca_file or pin. */
    const uint8_t *pin_sha256;
} fl_net_tls_opts_t;

/* Returned owned in *out. FL_EINVAL for missing options, FL_ECRYPTO when a
 * file cannot be read or the key does not match the certificate. */
int fl_net_tls_server_new(const fl_net_tls_opts_t *opts, fl_net_tls_t **out);
int fl_net_tls_client_new(const fl_net_tls_opts_t *opts, fl_net_tls_t **out);
void fl_net_tls_free(fl_net_tls_t *tls); /* NULL is a no-op */

/* The fingerprint of the first certificate in a PEM file. */
int fl_net_cert_fingerprint(const char *pem_file, fl_net_fp_kind_t kind,
                            uint8_t out[FL_NET_FP_LEN]);

/* ---- per-connection limits and callbacks -------------------------------- */
typedef struct {
    size_t max_frame;      /* largest payload, received or sent */
    size_t wq_high;        /* queued bytes above which send says BACKPRESSURE */
    size_t wq_max;         /* hard cap on queued bytes; passing it closes the
                              connection with FL_EAGAIN (a frame is always
                              accepted into an empty queue) */
    uint64_t idle_ms;      /* close when no application bytes arrive for
                              this long (after the handshake; TLS bytes
                              that complete no record do not count);
                              0 = never */
    uint64_t handshake_ms; /* connect + TLS handshake deadline; 0 = none */
} fl_net_limits_t;

/* Defaults: max_frame FL_FRAME_DEFAULT_MAX (64 MiB), wq_high 4 MiB, wq_max
 * 80 MiB, idle_ms 0, handshake_ms 10000. */
void fl_net_limits_init(fl_net_limits_t *l);

typedef struct {
    /* Connected and, for TLS, handshake complete: frames may be sent. */
    void (*on_open)(fl_net_conn_t *c);
    /* One complete frame; payload is borrowed for the call only. */
    void (*on_frame)(fl_net_conn_t *c, const uint8_t *payload, size_t len);
    /* After a send returned FL_NET_BACKPRESSURE, the queue fell to
     * wq_high / 2 or below. Optional. */
    void (*on_writable)(fl_net_conn_t *c);
    /* The phase deadline (fl_net_conn_set_deadline) passed. Optional: when
     * NULL the connection is closed with FL_ETIMEOUT. */
    void (*on_deadline)(fl_net_conn_t *c);
    /* Exactly once per connection, also for one that never opened
     * (fl_net_conn_is_open tells); c is freed when this returns. Under
     * mutual TLS a refused client may see on_open first: TLS 1.3 clients
     * finish their handshake before the server has checked them. */
    void (*on_close)(fl_net_conn_t *c, int reason);
} fl_net_callbacks_t;

/* ---- connections --------------------------------------------------------- */

/* Queues one frame (payload copied). Returns 0, FL_NET_BACKPRESSURE (queued,
 * but the queue is above wq_high), or a negative error: FL_ESTATE before
 * on_open, FL_ECLOSED once closing, FL_EINVAL for an empty payload,
 * FL_ETOOBIG above max_frame (nothing sent, the connection stays), FL_EAGAIN
 * when the hard cap is passed (the connection is being closed). */
int fl_net_send(fl_net_conn_t *c, const uint8_t *payload, size_t len);
/* The same, with payload taken: allocated with fl_malloc, freed by net
 * once written or on any error. Avoids a copy on plain TCP. */
int fl_net_send_owned(fl_net_conn_t *c, uint8_t *payload, size_t len);

/* Bytes accepted by send and not yet handed to the kernel. */
size_t fl_net_conn_queued(const fl_net_conn_t *c);

/* Counters, for metrics. Bytes are socket bytes (TLS records and
 * handshakes included), counted out when queued; frames are payloads. */
typedef struct {
    uint64_t bytes_in, bytes_out;
    uint64_t frames_in, frames_out;
} fl_net_stats_t;
void fl_net_conn_stats(const fl_net_conn_t *c, fl_net_stats_t *out);

/* Starts closing. reason < 0: at once, queued frames are dropped. reason 0:
 * gracefully, stops reading, sends what is queued (and the TLS close_notify)
 * then closes; bounded by handshake_ms. on_close follows in a later loop
 * iteration with the reason of the first close. Idempotent. */
void fl_net_conn_close(fl_net_conn_t *c, int reason);

/* Arms the phase deadline ms from now (replacing the previous one); 0
 * disarms it. On expiry cb.on_deadline runs, or the connection closes with
 * FL_ETIMEOUT. FL_ECLOSED when closing. */
int fl_net_conn_set_deadline(fl_net_conn_t *c, uint64_t ms);

/* Per-connection limits, changed after the connection exists: e.g. a
 * small max_frame until the peer has authenticated, a larger one after;
 * an idle deadline that fits the phase (0 = none). A lower max_frame
 * applies from the frame being read. FL_EINVAL for max_frame 0 or above
 * UINT32_MAX, FL_ECLOSED when closing. */
int fl_net_conn_set_max_frame(fl_net_conn_t *c, size_t max_frame);
int fl_net_conn_set_idle(fl_net_conn_t *c, uint64_t idle_ms);

void fl_net_conn_set_data(fl_net_conn_t *c, void *data); /* borrowed */
void *fl_net_conn_data(const fl_net_conn_t *c);
/* The server that accepted c, or NULL for a client connection. */
fl_net_server_t *fl_net_conn_server(const fl_net_conn_t *c);
int fl_net_conn_is_open(const fl_net_conn_t *c);
int fl_net_conn_is_tls(const fl_net_conn_t *c);
/* "a.b.c.d:port" or "[v6]:port" into buf; FL_ETOOBIG if it does not fit. */
int fl_net_conn_peer_addr(const fl_net_conn_t *c, char *buf, size_t len);
/* Fingerprint of the peer's certificate (the client's, under mutual TLS).
 * FL_ENOENT without one (plain TCP, or no client certificate). */
int fl_net_conn_peer_fingerprint(const fl_net_conn_t *c, fl_net_fp_kind_t kind,
                                 uint8_t out[FL_NET_FP_LEN]);
/* The peer certificate's public key as DER SubjectPublicKeyInfo, returned
 * owned in *der (fl_free). FL_ENOENT without a peer certificate. */
int fl_net_conn_peer_spki(const fl_net_conn_t *c, uint8_t **der, size_t *len);

/* ---- server -------------------------------------------------------------- */
typedef struct {
    const char *host;  /* numeric address to bind: "127.0.0.1", "::", ... */
    int port;          /* 0 = ephemeral, see fl_net_server_port */
    fl_net_tls_t *tls; /* borrowed (a reference is kept); NULL = plain TCP */
    fl_net_limits_t limits;
    unsigned max_conns;      /* open connections; excess sockets are closed
                                at once (default 1024; 0 = no limit) */
    unsigned max_handshakes; /* TLS handshakes in progress (default 64;
                                0 = no limit) */
    /* TLS handshakes in progress from one source: an IPv4 address, or an
     * IPv6 /64 (default 8; 0 = no limit). Keeps one host from holding every
     * handshake slot with connections that never finish. */
    unsigned max_handshakes_per_source;
    int backlog;           /* listen(2) backlog (default 128) */
    fl_net_callbacks_t cb; /* for every accepted connection */
    /* Optional: a socket was closed at accept (FL_EAGAIN: a limit; or the
     * accept error). */
    void (*on_reject)(fl_net_server_t *s, int reason);
    void *data; /* borrowed; fl_net_server_data */
} fl_net_server_opts_t;

/* Defaults: host "127.0.0.1", port 0, no TLS, fl_net_limits_init, the
 * limits above, no callbacks. */
void fl_net_server_opts_init(fl_net_server_opts_t *o);
/* Binds and listens; *out returned owned. FL_EINVAL for a bad address,
 * FL_EIO (or FL_EEXIST for an address in use) when bind/listen fail; the
 * memory of a failed server is released on the next loop iteration. */
int fl_net_server_new(uv_loop_t *loop, const fl_net_server_opts_t *o,
                      fl_net_server_t **out);
/* The bound port (useful with port 0). */
int fl_net_server_port(const fl_net_server_t *s);
void *fl_net_server_data(const fl_net_server_t *s);
/* Connections accepted and not yet closed (handshaking ones included). */
unsigned fl_net_server_nconns(const fl_net_server_t *s);

typedef struct {
    unsigned conns;           /* open now, handshaking included */
    unsigned handshakes;      /* TLS handshakes in progress */
    uint64_t accepted;        /* since start */
    uint64_t rejected;        /* closed at accept (limits, errors) */
    uint64_t rejected_source; /* of those, over max_handshakes_per_source */
    uint64_t closed;          /* accepted connections that have closed */
    fl_net_stats_t io;        /* all connections, closed ones included */
} fl_net_server_stats_t;
void fl_net_server_stats(const fl_net_server_t *s, fl_net_server_stats_t *out);
/* Stops listening and closes every connection (on_close with FL_ECLOSED);
 * the memory goes when the last handle has closed. NULL is a no-op. */
void fl_net_server_free(fl_net_server_t *s);

/* ---- client -------------------------------------------------------------- */
typedef struct {
    const char *host; /* numeric address or a name (resolved with libuv) */
    int port;
    /* TLS: the name sent as SNI and checked against the certificate (a
     * numeric address is checked against its IP SANs); NULL = host. */
    const char *server_name;
    fl_net_tls_t *tls; /* borrowed (a reference is kept); NULL = plain TCP */
    fl_net_limits_t limits;
    fl_net_callbacks_t cb;
    void *data; /* borrowed; fl_net_conn_data */
} fl_net_connect_opts_t;

void fl_net_connect_opts_init(fl_net_connect_opts_t *o);
/* Starts connecting; *out (optional) receives the connection, which
 * reports on_open or on_close later (a refused connect or a failed lookup
 * is on_close with FL_EIO). Only the first resolved address is tried.
 * Returns FL_EINVAL, FL_ENOMEM or FL_ECRYPTO without any callback. */
int fl_net_connect(uv_loop_t *loop, const fl_net_connect_opts_t *o,
                   fl_net_conn_t **out);

/* ---- backoff --------------------------------------------------------------
 * Exponential backoff with full jitter: attempt k (from 0) waits a uniform
 * delay in [0, min(cap_ms, base_ms * 2^k)]. A plain value: no resources. */
typedef struct {
    uint64_t base_ms;
    uint64_t cap_ms;
    unsigned attempt;
    fl_rng_t rng;
} fl_net_backoff_t;

/* seed 0 draws the seed from fl_random_bytes; another value makes the
 * delays reproducible (tests). */
void fl_net_backoff_init(fl_net_backoff_t *b, uint64_t base_ms, uint64_t cap_ms,
                         uint64_t seed);
uint64_t fl_net_backoff_next(fl_net_backoff_t *b);
void fl_net_backoff_reset(fl_net_backoff_t *b); /* after a good session */

/* ---- reconnecting client --------------------------------------------------
 * Connects at once; whenever the session ends (or a connect fails) it
 * waits fl_net_backoff_next() and tries again. The backoff is reset when a
 * session opens. conn.cb are called for every session (on_close included,
 * also for attempts that never opened) with fl_net_conn_data = conn.data. */
typedef struct {
    fl_net_connect_opts_t conn;
    uint64_t base_ms; /* default 500 */
    uint64_t cap_ms;  /* default 60000 */
    uint64_t seed;    /* 0 = random */
    /* Optional: the next attempt starts in delay_ms (after last_reason). */
    void (*on_retry)(fl_net_reconnect_t *r, int last_reason, uint64_t delay_ms);
} fl_net_reconnect_opts_t;

void fl_net_reconnect_opts_init(fl_net_reconnect_opts_t *o);
int fl_net_reconnect_new(uv_loop_t *loop, const fl_net_reconnect_opts_t *o,
                         fl_net_reconnect_t **out);
/* The open session, or NULL between sessions. */
fl_net_conn_t *fl_net_reconnect_conn(const fl_net_reconnect_t *r);
void *fl_net_reconnect_data(const fl_net_reconnect_t *r); /* conn.data */
/* Stops retrying and closes the session (FL_ECLOSED); memory goes when
 * the handles have closed. May be called from any of its callbacks (e.g.
 * on_retry after FL_EDENIED, which retrying will not cure). NULL is a
 * no-op. */
void fl_net_reconnect_free(fl_net_reconnect_t *r);

#endif /* FL_NET_H */
