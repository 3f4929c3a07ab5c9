/*
 * server/server.h — the aggregation server: configuration, enrolment,
 * persistent state, metrics and the daemon that runs rounds (DESIGN.md §3).
 *
 * Pieces, each usable alone (the CLI and the tests use them that way):
 *   - fl_server_config_t and its option table (one table: INI and flags);
 *   - fl_server_enrol_t, the allow-list of device identity keys;
 *   - fl_server_state_t, the state directory's checkpoint, written
 *     atomically and checked (magic, length, BLAKE2b) when read back;
 *   - fl_server_metrics_t and its Prometheus text rendering;
 *   - fl_server_t, the daemon on a libuv loop: rounds, peers, the metrics
 *     endpoint, signals.
 *
 * The daemon's files in server/: config.c (the option table), enrol.c
 * (allow-list, hello check), state.c (checkpoint), metrics.c and http.c
 * (the /metrics endpoint), server.c (life cycle, peers, signals),
 * listen.c (net/ connections as peers), serve.c (manifest and chunks),
 * round.c (the round orchestrator) and engine.c (the glue to secagg/,
 * compress/, dp, optim, artifact/ and model/). Run by `flotilla server`
 * (cli/cmd_server.c); every option is explained in
 * deploy/server.example.ini.
 *
 * Peers reach the server through a small seam (fl_server_peer_*): whoever
 * owns a connection (net/ in the daemon, the simulator or a test
 * in-process) hands decoded frames in and gets frames out through
 * fl_server_peer_ops_t. The server never sees a socket of a device.
 *
 * Ownership: pointer arguments are borrowed unless marked "taken" or
 * "returned owned". Thread-safety: fl_server_t and everything it owns
 * belongs to the thread running its loop; the free-standing helpers
 * (config, enrolment files, state files, rendering) are reentrant.
 */
#ifndef FL_SERVER_SERVER_H
#define FL_SERVER_SERVER_H

#include "common/common.h"
#include "proto/proto.h"

#include <uv.h>

/* ---- configuration ------------------------------------------------------ */

typedef enum {
    FL_SERVER_TRANSPORT_TLS = 0,
    FL_SERVER_TRANSPORT_TCP
} fl_server_transport_t;
typedef enum {
    FL_SERVER_SUPPORT_DENSE = 0,
    FL_SERVER_SUPPORT_RANDOM_K,
    FL_SERVER_SUPPORT_TOP_K
} fl_server_support_t;
typedef enum {
    FL_SERVER_GRAPH_COMPLETE = 0,
    FL_SERVER_GRAPH_HARARY
} fl_server_graph_t;
typedef enum { FL_SERVER_PRG_AES = 0, FL_SERVER_PRG_CHACHA20 } fl_server_prg_t;
typedef enum {
    FL_SERVER_OPT_FEDAVG = 0,
    FL_SERVER_OPT_FEDADAM,
    FL_SERVER_OPT_FEDYOGI
} fl_server_opt_kind_t;
typedef enum {
    FL_SERVER_CLIENT_ADAMW = 0,
    FL_SERVER_CLIENT_SGD
} fl_server_client_opt_t;

/* Every option of `flotilla server`. Strings are owned by the struct
 * (fl_server_config_free). Durations are milliseconds unless the name says
 * otherwise. deploy/server.example.ini explains each one. */
typedef struct {
    char *listen;          /* device listener address */
    int64_t port;          /* 0 = any free port */
    int transport;         /* fl_server_transport_t */
    char *tls_cert;        /* PEM certificate chain */
    char *tls_key;         /* PEM private key */
    char *tls_ca;          /* PEM CA bundle for client certificates */
    int mtls;              /* require client certificates */
    char *state_dir;       /* required */
    char *signing_key;     /* Ed25519 secret key file (model signing) */
    char *enrol_file;      /* NULL = <state_dir>/enrolled */
    char *init_model;      /* model file of version 1 when none is published */
    char *server_name;     /* sent in ServerHello */
    int metrics;           /* serve /metrics and /healthz */
    char *metrics_listen;  /* address of the metrics endpoint */
    int64_t metrics_port;  /* 0 = any free port */
    int64_t cohort;        /* expected cohort size (mean's denominator) */
    double over_selection; /* invite ceil(cohort * over_selection) */
    int64_t min_clients;   /* fewer survivors than this: abort */
    int64_t population;    /* devices sampled from; 0 = enrolled count */
    int64_t rounds;        /* stop after this many rounds; 0 = no limit */
    int64_t round_interval_ms;
    int64_t accept_ms;       /* invitation -> RoundAccept */
    int64_t train_ms;        /* local training */
    int64_t advertise_ms;    /* AdvertiseKeys */
    int64_t share_ms;        /* ShareKeysResponse */
    int64_t masked_input_ms; /* MaskedInputResponse, after training */
    int64_t unmask_ms;       /* UnmaskingResponse */
    int64_t idle_timeout_ms;
    int64_t hello_timeout_ms; /* an accepted hello within this, or closed */
    int64_t max_frame;        /* bytes */
    int64_t max_connections;
    int64_t max_handshakes;
    int64_t max_handshakes_per_source;
    int64_t chunk_size; /* largest model chunk served, bytes */
    /* differential privacy */
    double noise_multiplier; /* z */
    double clip_norm;        /* S */
    double epsilon_budget;   /* 0 = no budget */
    double delta;
    int64_t noise_seed; /* 0 = CSPRNG; any other value: reproducible noise,
                           for tests only */
    /* codec */
    int64_t quant_bits;   /* b */
    int support;          /* fl_server_support_t */
    int64_t support_size; /* k; 0 = every coordinate */
    int rotate;
    int error_feedback;
    int64_t ring_bits; /* r; 0 = b + ceil(log2 n) + 1 */
    /* secure aggregation */
    int secagg;
    int graph;             /* fl_server_graph_t */
    int64_t degree;        /* 0 = automatic for the graph */
    int64_t threshold;     /* t; 0 = automatic */
    int prg;               /* fl_server_prg_t */
    double secagg_corrupt; /* Harary parameters when degree is 0 */
    double secagg_dropout;
    /* local training, sent in RoundConfig */
    int64_t local_steps;
    int64_t batch_size;
    int64_t seq_len;
    double client_lr;
    int client_optimizer; /* fl_server_client_opt_t */
    double weight_decay;
    double momentum;
    double grad_clip;
    /* server optimizer */
    int server_optimizer; /* fl_server_opt_kind_t */
    double server_lr;     /* 0 = the optimizer's default */
    double server_momentum;
    double server_beta1;
    double server_beta2;
    double server_tau;
    int64_t keep_versions;
    int announce;               /* ModelAvailable to connected devices */
    int64_t announce_spread_ms; /* over this long; 0 = at once */
    /* logs */
    int log_level; /* fl_log_level_t */
    int log_json;
} fl_server_config_t;

/* The option table of `flotilla server` ([server] section in INI). */
const fl_cfg_table_t *fl_server_config_table(void);
/* Defaults for every field. */
int fl_server_config_init(fl_server_config_t *c, char *err, size_t errlen);
/* Checks what single options cannot: state_dir given, min_clients <= cohort,
 * TLS files present for transport=tls, a CA for mTLS, codec settings that
 * secure aggregation can carry (no top-k, no fp32), a ring wide enough for
 * the cohort. FL_ECONFIG with a sentence in err. */
int fl_server_config_check(const fl_server_config_t *c, char *err,
                           size_t errlen);
void fl_server_config_free(fl_server_config_t *c);
/* Deep copy (strings duplicated); dst is overwritten, not freed. */
int fl_server_config_copy(fl_server_config_t *dst,
                          const fl_server_config_t *src);

/* Derived numbers (valid after fl_server_config_check). */
uint32_t fl_server_config_invitees(const fl_server_config_t *c);
uint32_t fl_server_config_ring_bits(const fl_server_config_t *c);
/* The secure-aggregation threshold t for n invitees: the configured one,
 * or a majority of a client's neighbours (at least 2). */
uint32_t fl_server_config_threshold(const fl_server_config_t *c, uint32_t n);

/* ---- enrolment ------------------------------------------------------------
 * The allow-list: one device per line, "<64 hex digits> [name]"; '#'
 * starts a comment. Names are 1..64 characters of [A-Za-z0-9._:@-]. */

#define FL_SERVER_KEY_LEN    32
#define FL_SERVER_NAME_MAX   64
#define FL_SERVER_ENROL_MAX  1000000 /* devices */
#define FL_SERVER_ENROL_FILE "enrolled"

typedef struct fl_server_enrol fl_server_enrol_t;

/* An empty list. */
int fl_server_enrol_new(fl_server_enrol_t **out);
/* Reads a list; a missing file is an empty list. A malformed line fails
 * the whole load with FL_EFORMAT and "path:line: reason" in err. */
int fl_server_enrol_load(const char *path, fl_server_enrol_t **out, char *err,
                         size_t errlen);
/* The same on text in memory; name is used in errors (tests, fuzzing). */
int fl_server_enrol_parse(const char *text, size_t len, const char *name,
                          fl_server_enrol_t **out, char *err, size_t errlen);
/* Writes the list atomically. */
int fl_server_enrol_save(const fl_server_enrol_t *e, const char *path);
void fl_server_enrol_free(fl_server_enrol_t *e);
/* name may be NULL. FL_EEXIST if the key is already enrolled, FL_EINVAL for
 * a bad name. */
int fl_server_enrol_add(fl_server_enrol_t *e, const uint8_t key[32],
                        const char *name);
/* FL_ENOENT if the key is not enrolled. */
int fl_server_enrol_remove(fl_server_enrol_t *e, const uint8_t key[32]);
/* 1 if enrolled, else 0. */
int fl_server_enrol_contains(const fl_server_enrol_t *e, const uint8_t key[32]);
size_t fl_server_enrol_count(const fl_server_enrol_t *e);
/* The i-th entry in key order; *name is borrowed ("" when none). */
int fl_server_enrol_get(const fl_server_enrol_t *e, size_t i, uint8_t key[32],
                        const char **name);
/* A key given on the command line: 64 hex digits, a public key file from
 * `flotilla keygen` (PREFIX.pub), or a file whose first word is 64 hex
 * digits. */
int fl_server_key_parse(const char *arg, uint8_t key[32]);
/* Adds or removes one key in the file under an exclusive lock, so that two
 * commands never lose each other's edit. */
int fl_server_enrol_edit(const char *path, const uint8_t key[32],
                         const char *name, int add, char *err, size_t errlen);

/* Checks a ClientHello against the server's nonce and the list. Returns 0,
 * or the AbortReason to send: FLOTILLA__ABORT_REASON__ABORT_VERSION,
 * ..._PROTOCOL (capabilities or client version over the protocol's limits),
 * ..._NOT_ENROLLED or ..._BAD_SIGNATURE (a key or signature of the wrong
 * length counts as a bad signature). */
int fl_server_hello_check(const fl_server_enrol_t *e, const uint8_t nonce[32],
                          const Flotilla__ClientHello *h);
/* The bytes a client signs (for clients and tests): "flotilla-hello-v1" ||
 * nonce || key || be32(version); out holds FL_SERVER_HELLO_MSG_LEN. */
#define FL_SERVER_HELLO_MSG_LEN (17 + 32 + 32 + 4)
void fl_server_hello_message(uint8_t out[FL_SERVER_HELLO_MSG_LEN],
                             const uint8_t nonce[32], const uint8_t key[32],
                             uint32_t version);

/* ---- state ----------------------------------------------------------------
 * <state_dir>/state: the last completed round, counters, the accountant and
 * the pointer to the current model. Written with fl_file_write_atomic;
 * read back only if the magic, the length and the BLAKE2b checksum agree
 * (FL_EMAGIC, FL_ETRUNC, FL_EHASH otherwise — never silently reset). */

#define FL_SERVER_STATE_FILE "state"
#define FL_SERVER_STATE_MAX  (64u << 20)

typedef struct {
    uint64_t round;            /* last finished round; 0 = none yet */
    uint64_t round_started;    /* last round number handed out, so that a
                                  crash never makes one be reused */
    uint64_t rounds_completed; /* counters survive restarts */
    uint64_t rounds_aborted;
    uint64_t model_version; /* 0 = no model published yet */
    char model_dir[256];    /* relative to the state dir, "" if none */
    uint8_t model_hash[32]; /* SHA-256 of the manifest */
    double epsilon;         /* spent so far */
    uint8_t *accountant;    /* owned; the accountant's own serialization */
    size_t accountant_len;
    uint8_t *optimizer; /* owned; server-optimizer moments, may be NULL */
    size_t optimizer_len;
} fl_server_state_t;

void fl_server_state_init(fl_server_state_t *st);
void fl_server_state_clear(fl_server_state_t *st); /* frees the blobs */
/* Missing file: FL_ENOENT (a new server). err gets a sentence otherwise. */
int fl_server_state_load(const char *dir, fl_server_state_t *st, char *err,
                         size_t errlen);
int fl_server_state_save(const char *dir, const fl_server_state_t *st);
/* Encoding without files, for tests and fuzzing. *out returned owned. */
int fl_server_state_encode(const fl_server_state_t *st, uint8_t **out,
                           size_t *len);
int fl_server_state_decode(const uint8_t *in, size_t len,
                           fl_server_state_t *st);

/* ---- metrics --------------------------------------------------------------*/

typedef enum {
    FL_SERVER_PHASE_INVITE = 0,
    FL_SERVER_PHASE_ADVERTISE,
    FL_SERVER_PHASE_SHARE,
    FL_SERVER_PHASE_MASKED_INPUT,
    FL_SERVER_PHASE_UNMASK,
    FL_SERVER_PHASE_FINISH,
    FL_SERVER_PHASE_COUNT
} fl_server_phase_t;

const char *fl_server_phase_name(int phase);

typedef struct {
    uint64_t connected;   /* peers with an accepted hello */
    uint64_t connections; /* open connections, hello or not */
    uint64_t enrolled;
    uint64_t rounds_completed;
    uint64_t rounds_aborted;
    uint64_t round; /* the round running or last run */
    uint64_t model_version;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t hellos_refused;
    uint64_t connections_refused; /* closed at accept by a limit */
    uint64_t announcements;       /* ModelAvailable messages sent */
    uint64_t dropouts[FL_SERVER_PHASE_COUNT];
    /* Devices secure aggregation left out of a phase (fewer than t
     * neighbours still taking part): told with an Abort, not dropouts. */
    uint64_t left_out[FL_SERVER_PHASE_COUNT];
    double phase_seconds[FL_SERVER_PHASE_COUNT]; /* sum */
    uint64_t phase_count[FL_SERVER_PHASE_COUNT];
    double epsilon;
    double epsilon_budget;
    int budget_spent;               /* training stopped by the privacy budget */
    uint64_t training_reports;      /* TrainingReports received */
    uint64_t training_examples;     /* their num_examples, summed */
    double loss_before, loss_after; /* means over the last round's reports */
} fl_server_metrics_t;

/* Appends the Prometheus text exposition (format 0.0.4) to out. */
int fl_server_metrics_render(const fl_server_metrics_t *m, fl_buf_t *out);

/* ---- peers: the seam between a transport and the server -----------------*/

typedef struct fl_server_peer fl_server_peer_t;

typedef struct {
    /* Queues one frame whose payload is the encoded Envelope (the
     * transport adds the length header); the bytes are borrowed for the
     * call. Returns 0 (or a positive back-pressure hint) or an FL_E* code,
     * after which the server closes the peer. */
    int (*send)(void *ctx, const uint8_t *payload, size_t len);
    /* Asks the transport to close the connection after the frames already
     * queued. The transport answers later with fl_server_peer_closed. */
    void (*close)(void *ctx);
    /* Optional: the peer's hello was accepted; the transport lifts what it
     * imposes on unauthenticated connections (the hello deadline, the
     * small frame limit). */
    void (*authenticated)(void *ctx);
} fl_server_peer_ops_t;

/* Largest frame an unauthenticated peer may send: the ClientHello at the
 * protocol's limits (32 capabilities of 32 bytes, a 64-byte client version,
 * key and signature) is under 1.5 KB. */
#define FL_SERVER_HELLO_MAX_FRAME 4096

/* ---- the daemon -------------------------------------------------------- */

typedef struct fl_server fl_server_t;

/* Opens the state directory (creating it), loads the enrolment list, the
 * state (a corrupt state file fails here with a clear err), the signing
 * key and the global model (the current version, verified, or init-model,
 * then published as version 1), and prepares the server on loop. cfg is
 * copied. *out returned owned. */
int fl_server_new(uv_loop_t *loop, const fl_server_config_t *cfg,
                  fl_server_t **out, char *err, size_t errlen);
/* Binds the metrics endpoint and the device listener, installs
 * SIGTERM/SIGINT/SIGHUP handlers and arms the round timer. */
int fl_server_start(fl_server_t *s, char *err, size_t errlen);
/* Ends the current round cleanly (aborting it, with Abort and RoundResult
 * to its participants; a round already finishing on the thread pool is
 * let finish), saves the state, closes the peers (their last frames are
 * flushed, 2 s at most) and every handle; the loop then runs out. Safe to
 * call more than once; must be called before fl_server_free. */
void fl_server_stop(fl_server_t *s);
/* Re-reads the enrolment list; on a bad file the old list stays. */
int fl_server_reload_enrolment(fl_server_t *s);
/* After the loop has run out. NULL is a no-op. */
void fl_server_free(fl_server_t *s);

/* The whole `flotilla server` run: loop, start, run until stopped. Returns
 * 0 after a clean stop, or an FL_E* code. */
int fl_server_run(const fl_server_config_t *cfg);

/* Bound ports (after start; 0 when not listening), for tests and logs. */
int fl_server_metrics_port(const fl_server_t *s);
int fl_server_port(const fl_server_t *s);
const fl_server_metrics_t *fl_server_metrics(const fl_server_t *s);
/* The server's view of its state (borrowed). */
const fl_server_state_t *fl_server_state(const fl_server_t *s);

/* A transport accepted a connection: the server sends its ServerHello
 * through ops and returns the peer handle (owned by the server, valid
 * until fl_server_peer_closed). ctx is borrowed and passed to ops. *out is
 * set whenever the peer was registered, even when the hello could not be
 * sent (the peer is then closing and the transport still reports
 * fl_server_peer_closed); it is NULL when nothing was registered. */
int fl_server_peer_open(fl_server_t *s, const fl_server_peer_ops_t *ops,
                        void *ctx, fl_server_peer_t **out);
/* One complete frame payload (the Envelope bytes, without the length).
 * A malformed or unexpected message closes only this peer. Returns 0 or
 * the reason the peer is being closed. */
int fl_server_peer_frame(fl_server_peer_t *p, const uint8_t *payload,
                         size_t len);
/* The transport closed the connection; p is invalid afterwards. */
void fl_server_peer_closed(fl_server_peer_t *p);

#endif
