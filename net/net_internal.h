/*
 * net/net_internal.h — shared between the files of net/ only; never
 * included from outside the module.
 *
 * The transport table: a connection calls these and nothing else of its
 * transport, so conn.c (framing, queues, deadlines) works the same over
 * plain TCP and TLS. A transport turns socket bytes into plaintext
 * (fl_net__conn_deliver) and frames into socket bytes
 * (fl_net__conn_write_wire).
 */
#ifndef FL_NET_INTERNAL_H
#define FL_NET_INTERNAL_H

#include "net/net.h"
#include "proto/frame.h"

#define FL_NET_READ_BUF (64u << 10)

typedef struct fl_net_transport {
    const char *name;
    /* The socket is connected: start the handshake, or open at once. */
    int (*start)(fl_net_conn_t *c);
    /* Bytes from the socket. */
    int (*input)(fl_net_conn_t *c, const uint8_t *p, size_t n);
    /* One frame: 4 header bytes then the payload. owned (may be NULL) is
     * taken and is the payload itself when set. */
    int (*send)(fl_net_conn_t *c, const uint8_t hdr[FL_FRAME_HEADER_LEN],
                const uint8_t *p, size_t n, uint8_t *owned);
    /* Graceful end of the write side (TLS close_notify). */
    void (*shutdown)(fl_net_conn_t *c);
    /* Releases the transport's state; the handles are closed. */
    void (*destroy)(fl_net_conn_t *c);
} fl_net_transport_t;

extern const fl_net_transport_t fl_net__tcp;
extern const fl_net_transport_t fl_net__tls;

typedef enum {
    NET_CONNECTING = 0, /* client: resolving / connecting */
    NET_HANDSHAKE,      /* socket up, TLS handshake running */
    NET_OPEN,
    NET_DRAINING, /* graceful close: flushing */
    NET_CLOSED,   /* handles closing; on_close pending */
} fl_net_state_t;

struct fl_net_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;    /* handshake deadline, then idle deadline */
    uv_timer_t deadline; /* phase deadline */
    uv_loop_t *loop;
    int handles; /* handles not yet closed */
    int gai_pending;
    uv_getaddrinfo_t gai;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;

    fl_net_state_t state;
    int reason;
    int above_high;
    int in_handshake; /* counted in server->handshakes */
    /* Accepted connections: the peer's source, for per-source limits (an
     * IPv4 address, or the /64 prefix of an IPv6 one); src_len 0 = unknown. */
    uint8_t src[8];
    uint8_t src_len;
    int deliver_depth;

    const fl_net_transport_t *tp;
    void *tp_state;
    fl_net_tls_t *tls; /* one reference */

    fl_net_server_t *server;
    fl_net_conn_t *prev, *next; /* in server->conns */
    fl_net_reconnect_t *owner;  /* reconnecting client, or NULL */

    fl_net_callbacks_t cb;
    void *data;
    fl_net_stats_t st;
    fl_net_limits_t lim;
    fl_frame_decoder_t dec;
    uint8_t *rbuf; /* client connections; servers share theirs */

    char *host;
    char *server_name;
    int port;
};

struct fl_net_server {
    uv_tcp_t listener;
    uv_loop_t *loop;
    int listener_open;
    int freeing;
    fl_net_server_opts_t o; /* host is not kept */
    fl_net_conn_t *conns;
    unsigned nconns;
    unsigned handshakes;
    fl_net_server_stats_t st; /* conns/handshakes filled on demand */
    int port;
    uint8_t rbuf[FL_NET_READ_BUF]; /* shared: reads are processed at once */
};

/* conn.c */
fl_net_conn_t *fl_net__conn_new(uv_loop_t *loop, const fl_net_limits_t *lim,
                                const fl_net_callbacks_t *cb, void *data);
void fl_net__conn_abort_new(fl_net_conn_t *c); /* before any handle init */
/* The socket is up: start the transport and reading. */
void fl_net__conn_start(fl_net_conn_t *c);
/* Handshake done: on_open and the idle deadline. */
void fl_net__conn_opened(fl_net_conn_t *c);
/* Plaintext from the transport; returns < 0 when c is closing. */
int fl_net__conn_deliver(fl_net_conn_t *c, const uint8_t *p, size_t n);
/* A write request carrying `inl` bytes of its own (its data area), then
 * optionally `n` more bytes at p that stay valid until the write is done
 * (they point into `owned`, taken, freed after the write or on error). */
typedef struct {
    uv_write_t req;
    fl_net_conn_t *c;
    void *owned;
    size_t inl;
    uint8_t data[];
} fl_net_wreq_t;

fl_net_wreq_t *fl_net__wreq_new(size_t inl); /* NULL on no memory */
/* Queues w (taken) on the socket. */
int fl_net__conn_write_wire(fl_net_conn_t *c, fl_net_wreq_t *w,
                            const uint8_t *p, size_t n, void *owned);
void fl_net__conn_close(fl_net_conn_t *c, int reason);
/* The address lookup has called back; returns 1 when c was closed
 * meanwhile (and may now be freed: do not touch it). */
int fl_net__conn_gai_done(fl_net_conn_t *c);
void fl_net__server_conn_gone(fl_net_server_t *s, fl_net_conn_t *c);
void fl_net__server_handshake_done(fl_net_server_t *s);

/* transport_tls.c */
int fl_net__tls_attach(fl_net_conn_t *c, fl_net_tls_t *tls, int is_server,
                       const char *server_name);
fl_net_tls_t *fl_net__tls_ref(fl_net_tls_t *t);
int fl_net__tls_peer_fingerprint(const fl_net_conn_t *c, fl_net_fp_kind_t kind,
                                 uint8_t out[FL_NET_FP_LEN]);
int fl_net__tls_peer_spki(const fl_net_conn_t *c, uint8_t **der, size_t *len);

#endif
