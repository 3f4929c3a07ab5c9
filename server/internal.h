/*
 * server/internal.h — shared between the files of server/ only; nothing
 * outside server/ includes it.
 *
 * Thread-safety: everything here runs on the server's loop thread, except
 * the work functions named *_work, which run on the libuv thread pool and
 * touch only the job they are given.
 */
#ifndef FL_SERVER_INTERNAL_H
#define FL_SERVER_INTERNAL_H

#include "model/model.h"
#include "server/server.h"

/* ---- the metrics endpoint (server/http.c) ---------------------------------
 * A small fixed HTTP/1.x responder: GET /metrics and GET /healthz, one
 * request per connection, requests larger than FL_SERVER_HTTP_MAX_REQUEST
 * refused, a deadline per connection, a cap on connections at once. */

#define FL_SERVER_HTTP_MAX_REQUEST 4096
#define FL_SERVER_HTTP_MAX_CONNS   64
#define FL_SERVER_HTTP_TIMEOUT_MS  5000

typedef struct fl_server_http fl_server_http_t;

typedef struct {
    /* Appends the metrics text to out. */
    int (*metrics)(void *ctx, fl_buf_t *out);
    /* 1 if healthy. */
    int (*healthy)(void *ctx);
    void *ctx;
} fl_server_http_handler_t;

/* Binds addr:port (0 = any free port). *out returned owned; it frees
 * itself after fl_server_http_close once its handles are closed. */
int fl_server_http_new(uv_loop_t *loop, const char *addr, int port,
                       const fl_server_http_handler_t *h,
                       fl_server_http_t **out);
int fl_server_http_port(const fl_server_http_t *h);
void fl_server_http_close(fl_server_http_t *h);

/* The answer to one request (for tests of the parsing without sockets):
 * status and body for the request bytes in req. */
int fl_server_http_respond(const fl_server_http_handler_t *h,
                           const uint8_t *req, size_t len, fl_buf_t *out);

/* ---- the engines seam (server/engine.c) -----------------------------------
 * Everything a round needs from the engines (secagg/, compress/, dp,
 * optim, artifact/, model/) goes through this table, so the orchestrator
 * in round.c is a state machine that only routes messages, keeps time and
 * counts survivors. server/engine.c holds the table that calls the real
 * engines; tests substitute their own to drive the orchestrator. */

/* Work items per parallel stage: libuv's default thread-pool size. */
#define FL_SERVER_PARALLEL_PARTS 4

typedef struct {
    uint64_t round;
    uint32_t survivors; /* clients whose input is in the sum */
    int secagg;
    uint64_t population; /* devices sampled from (accountant's q) */
    /* Borrowed from the server for the job's life, read-only. */
    const fl_server_config_t *cfg;
    const float *params; /* current global model [num_params] */
    uint64_t num_params;
    /* The current model (architecture, frozen base under LoRA), borrowed
     * read-only as the template of the new version; NULL in tests. */
    const fl_model_t *model;
    fl_server_state_t state; /* in: a copy of the server's; out: updated
                                (model pointer, epsilon, accountant) */
    float *new_params;       /* out, fl_malloc'd [num_params], taken */
    char err[256];
} fl_server_finish_t;

typedef struct {
    /* Loop thread, when a round starts: prepares the aggregation for the
     * RoundConfig (codec, secure aggregation) of the n invitees, whose
     * identity keys are keys[0..n) in participant order (client id i+1).
     * Says how many values each client sends. The engine may complete
     * the codec fields it derives (before the invitations go out).
     * *round_ctx is the engine's until end. */
    int (*begin)(void *ctx, Flotilla__RoundConfig *rc, uint32_t n,
                 const uint8_t (*keys)[32], void **round_ctx,
                 uint64_t *num_values);
    /* Loop thread: one client message of the current phase (AdvertiseKeys,
     * ShareKeysResponse, MaskedInputResponse, UnmaskingResponse), from the
     * client whose round-local id the orchestrator authenticated. Peer
     * data: a refusal (FL_EFORMAT, FL_ESIGNATURE, FL_EPROTO, ...) changes
     * nothing and the orchestrator closes that client only. */
    int (*handle)(void *round_ctx, uint32_t sender, const fl_envelope_t *e);
    /* Loop thread: the phase (FL_SERVER_PHASE_*) is over, because every
     * survivor answered or the deadline passed. FL_ETHRESHOLD aborts the
     * round (too few left); another error aborts it as internal. */
    int (*close)(void *round_ctx, int phase);
    /* Optional, loop thread: how the last close went, in words (which
     * device lacked neighbours or holders); for the log. */
    void (*describe_close)(void *round_ctx, char *buf, size_t len);
    /* Loop thread: the request for client id in the phase that just
     * opened, as the body of *e (set body_case and the pointer). The body
     * stays the engine's; request_done(round_ctx, e) is called after it is
     * sent. FL_ENOENT: nothing for that client (it dropped). */
    int (*request)(void *round_ctx, int phase, uint32_t id, fl_envelope_t *e);
    void (*request_done)(void *round_ctx, fl_envelope_t *e);
    /* Optional, thread pool, before finish: parallel_stages stages of
     * FL_SERVER_PARALLEL_PARTS calls each (secagg's mask removal split by
     * coordinates); the calls of a stage run at once on different
     * threads, a stage starts when the previous one has returned. */
    int (*parallel)(void *round_ctx, unsigned stage, unsigned part,
                    unsigned nparts);
    unsigned parallel_stages;
    /* Thread pool: unmask (secagg), decode, noise, accountant, server
     * optimizer, publish, write the new state. Touches only round_ctx and
     * f. Returns 0 or an FL_E* code with f->err set. */
    int (*finish)(void *round_ctx, fl_server_finish_t *f);
    /* Loop thread: the round is over (any outcome); frees round_ctx. */
    void (*end)(void *round_ctx);
    /* Loop thread, before a round: can the engines run one at all (e.g. a
     * signing key is loaded)? 0, or an error with a sentence in why; the
     * orchestrator then waits. Optional. */
    int (*ready)(void *ctx, char *why, size_t whylen);
    /* Loop thread, before a round: may one more round run within the
     * privacy budget? 0 or FL_EBUDGET. */
    int (*budget)(void *ctx, const fl_server_config_t *cfg,
                  const fl_server_state_t *st, uint64_t population);
} fl_server_engine_t;

/* The engines of this build, with the server as ctx. */
extern const fl_server_engine_t fl_server_engine_default;
/* At start, after the state is loaded: loads the signing key, adopts a
 * version published just before a crash, and verifies the current
 * version's signature and hashes. Then, after the model is loaded,
 * publish_initial makes init-model version 1 when nothing is published.
 * At the end: wipes the key. */
int fl_server_engine_open(fl_server_t *s, char *err, size_t errlen);
int fl_server_engine_publish_initial(fl_server_t *s, char *err, size_t errlen);
void fl_server_engine_close(fl_server_t *s);

/* ---- the server and its peers (server/server.c) --------------------------*/

typedef struct fl_server_round fl_server_round_t;

struct fl_server_peer {
    fl_server_t *srv;
    const fl_server_peer_ops_t *ops;
    void *ctx;
    uint8_t nonce[32];      /* the ServerHello nonce the client signs */
    int hello_ok;           /* an enrolled key signed the hello */
    int closing;            /* close asked; frames are ignored */
    uint8_t key[32];        /* identity key, valid when hello_ok */
    uint64_t model_version; /* the version the client said it holds */
    uint64_t told_version;  /* the newest version it was told of (hello,
                               round result or announcement) */
    uint32_t round_slot; /* 1 + index in the round's participants; 0 = none */
    struct fl_server_peer *prev, *next;
};

struct fl_server {
    uv_loop_t *loop;
    fl_server_config_t cfg; /* deep copy */
    char enrol_path[4096];
    fl_server_enrol_t *enrol;
    fl_server_state_t state;
    fl_server_metrics_t metrics;
    uint64_t refused_logged_at; /* loop ms of the last refusal warning */
    fl_server_http_t *http;
    fl_server_round_t *round;
    void *listener; /* the device listener (server/listen.c), or NULL */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t round_timer;
    uv_timer_t drain_timer;    /* bounds the wait for peers to flush on stop */
    uv_timer_t announce_timer; /* spreads ModelAvailable (fl_server_announce) */
    size_t announce_quota;     /* devices told per tick */
    int handles_open;          /* signals and timers, closed on stop */
    int draining;
    int started, stopping;
    fl_server_peer_t *peers;
    uint8_t signing_pub[32]; /* the model signing key's public half */
    int have_signing_pub;
    const fl_server_engine_t *engine;
    void *engine_ctx;
    float *params; /* the trainable vector of the current global model,
                      owned; NULL before one is loaded */
    uint64_t num_params;
    fl_model_t *model; /* the model params came from, or NULL */
    struct fl_artifact_key *signing_key; /* owned, or NULL */
};

/* For tests and the simulator: replace the engines (before start), and
 * install the current global model (taken). */
void fl_server_set_engine(fl_server_t *s, const fl_server_engine_t *e,
                          void *ctx);
void fl_server_set_params(fl_server_t *s, float *params, uint64_t n);

/* Encodes e and sends it to p; on a transport error the peer is closed.
 * Returns 0 or the error. */
int fl_server_peer_send(fl_server_peer_t *p, fl_envelope_t *e);
/* Asks the transport to close p (idempotent). */
void fl_server_peer_close(fl_server_peer_t *p);
/* A new version is published: tells every connected device that does not
 * know of it yet (ModelAvailable), evenly over announce-spread-ms. */
void fl_server_announce(fl_server_t *s);
/* Sends Error{|err|, msg} (what the peer sent is the reason) then closes
 * p (docs/PROTOCOL.md §6). */
void fl_server_peer_refuse(fl_server_peer_t *p, int err, const char *msg);

/* ---- rounds (server/round.c) ---------------------------------------------
 * The orchestrator: a state machine on the loop thread, driven by the round
 * timer, by messages and by phase deadlines; the heavy end of a round runs
 * on the thread pool. */
int fl_server_round_new(fl_server_t *s, fl_server_round_t **out);
void fl_server_round_free(fl_server_round_t *r);
/* Starts a round if none is running and enough eligible peers are there;
 * otherwise re-arms the round timer. */
void fl_server_round_tick(fl_server_round_t *r);
/* A round message from a peer with an accepted hello. Returns 0, or the
 * reason the peer must be refused and closed (an FL_E* code). */
int fl_server_round_on_message(fl_server_round_t *r, fl_server_peer_t *p,
                               const fl_envelope_t *e);
/* p is going away (closed or replaced): it drops out of the round. */
void fl_server_round_peer_gone(fl_server_round_t *r, fl_server_peer_t *p);
/* Shutdown: aborts the round unless it is finishing on the thread pool.
 * Returns 1 while a thread-pool job is still running (the round then calls
 * fl_server_stop_continue when it is done), 0 when idle. */
int fl_server_round_shutdown(fl_server_round_t *r);
/* Arms the round timer: the orchestrator ticks in ms (not when stopping). */
void fl_server_schedule_round(fl_server_t *s, uint64_t ms);
/* Called by the round once a shutdown may proceed. */
void fl_server_stop_continue(fl_server_t *s);

/* ---- the device listener (server/listen.c) -------------------------------*/
int fl_server_listen_start(fl_server_t *s, char *err, size_t errlen);
/* Closes the listener and every connection still open, at once. */
void fl_server_listen_stop(fl_server_t *s);

/* ---- model distribution (server/serve.c) ----------------------------------*/
int fl_server_serve_manifest(fl_server_peer_t *p,
                             const Flotilla__ManifestRequest *m);
int fl_server_serve_chunk(fl_server_peer_t *p, const Flotilla__ChunkRequest *m);

#endif
