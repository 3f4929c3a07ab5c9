/*
 * client/client.h — the device daemon: configuration, eligibility, the state
 * directory and the local inference socket.
 *
 * The daemon keeps the device's text on the device. It takes part in rounds
 * only when the device is eligible (time window, AC power, load), and it
 * serves local inference over a Unix socket from the current verified model
 * while rounds train.
 *
 * Ownership: handles are returned owned and freed with their _free (NULL is
 * a no-op); pointer arguments are borrowed. Thread-safety: the inference
 * server runs on one libuv loop; its generate callback runs on the loop's
 * thread pool and must be safe to call concurrently with training.
 */
#ifndef FL_CLIENT_H
#define FL_CLIENT_H

#include "artifact/artifact.h"
#include "common/common.h"
#include "compress/compress.h"
#include "model/data.h"
#include "model/model.h"

#include <uv.h>

/* ---- configuration ---------------------------------------------------------
 * One table for `flotilla client`: the INI file keys and the long flags. */
typedef struct {
    char *server;       /* host:port of the aggregation server */
    char *ca_file;      /* CA that signed the server's certificate */
    char *pin_sha256;   /* optional pinned certificate fingerprint (hex) */
    char *signing_pub;  /* the server's model-signing public key file */
    char *identity_key; /* this device's Ed25519 key file */
    char *client_cert;  /* mutual TLS (optional) */
    char *client_key;
    char *data_dir;     /* the device's text */
    char *tokenizer;    /* tokenizer.bin of the fleet's models; "" = bytes */
    char *state_dir;    /* identity, models, residual, journal */
    char *socket_path;  /* local inference socket; "" = none */
    int64_t threads;    /* training threads */
    int64_t memory_mb;  /* memory cap for training */
    int64_t nice;       /* scheduling priority of the training thread */
    char *windows;      /* "HH:MM-HH:MM[,HH:MM-HH:MM...]"; "" = any time */
    int ac_only;        /* take part only on mains power */
    double max_load;    /* 1-minute load average above which we decline */
    int require_secagg; /* decline rounds without secure aggregation */
    int64_t min_participants; /* decline rounds of fewer invitees */
    char *log_level;
    int log_json;
} fl_client_config_t;

extern const fl_cfg_table_t fl_client_config_table;

/* ---- eligibility ------------------------------------------------------------
 */
#define FL_CLIENT_MAX_WINDOWS 16

typedef struct {
    int n;
    struct {
        int start, end; /* minutes after midnight; end < start wraps */
    } w[FL_CLIENT_MAX_WINDOWS];
} fl_client_windows_t;

/* Parses "22:00-06:30,12:00-13:00" (local time); "" or NULL is "always"
 * (n = 0). FL_EFORMAT on a malformed window, FL_ETOOBIG for too many. */
int fl_client_windows_parse(const char *s, fl_client_windows_t *out);
/* 1 when minute_of_day (0..1439) is inside a window, or there are none. */
int fl_client_windows_contains(const fl_client_windows_t *w, int minute_of_day);

/* Reads <sysfs>/class/power_supply/: *on_ac = 1 when a Mains, USB or
 * USB-C supply is online, or when the device has no battery at all (a
 * desktop or server); 0 when it runs on battery. sysfs is normally "/sys". */
int fl_client_on_ac_power(const char *sysfs, int *on_ac);

typedef struct {
    int minute_of_day; /* local time */
    double load1;      /* 1-minute load average */
    int on_ac;
} fl_client_conditions_t;

/* Reads the current conditions of this device. */
int fl_client_conditions_now(const char *sysfs, fl_client_conditions_t *out);
/* 1 when the device may take part; else 0 with a short reason in why. */
int fl_client_eligible(const fl_client_config_t *cfg,
                       const fl_client_windows_t *windows,
                       const fl_client_conditions_t *now, char *why,
                       size_t whylen);

/* ---- state directory
 * ---------------------------------------------------------
 *   <state>/identity.key, identity.pub   the device's Ed25519 key pair
 *   <state>/models/<version>/            verified model versions
 *   <state>/models/current, previous     files naming a version directory
 *   <state>/residual.bin                 error-feedback residual
 *   <state>/journal.json                 the last rounds taken part in
 * Every file is written atomically; a file that fails its checksum is
 * refused, never half-used. */

/* The error-feedback residual: [n] floats for the model version it was
 * computed against. File: "FLRESID1", u64 n, u64 version, floats, then the
 * FNV-1a 64-bit checksum of everything before it. */
int fl_client_residual_save(const char *path, const float *r, size_t n,
                            uint64_t version);
/* *out is returned owned ([*n] floats). FL_ENOENT when there is none;
 * FL_EFORMAT/FL_ETRUNC/FL_EMAGIC for a damaged file; max_n bounds n. */
int fl_client_residual_load(const char *path, size_t max_n, float **out,
                            size_t *n, uint64_t *version);

typedef struct {
    uint64_t round;
    uint64_t model_version;
    int status; /* 0 success, else an FL_E* code */
    float loss_before, loss_after;
    uint32_t num_examples;
    uint64_t time_ms; /* wall clock at the end */
} fl_client_journal_entry_t;

#define FL_CLIENT_JOURNAL_KEEP 64

/* Appends an entry to the journal, keeping the last FL_CLIENT_JOURNAL_KEEP
 * (one JSON object per line, rewritten atomically). */
int fl_client_journal_append(const char *path,
                             const fl_client_journal_entry_t *e);
/* Reads up to max entries (newest last); *n receives the count. Lines that
 * do not parse are skipped and counted in *bad (may be NULL). */
int fl_client_journal_read(const char *path, fl_client_journal_entry_t *out,
                           size_t max, size_t *n, size_t *bad);

/* ---- a round's update
 * ---------------------------------------------------------- Local training
 * from the global model, then the delta encoded for the round's codec. Pure
 * computation on borrowed inputs: it runs on a worker thread while the event
 * loop goes on (the daemon), or on the simulator's worker pool. */
typedef struct {
    uint32_t local_steps; /* >= 1 */
    uint32_t batch_size;  /* >= 1 */
    uint32_t seq_len;     /* 1 .. the model's seq_len */
    float learning_rate;
    int optimizer; /* fl_model_optim_kind_t */
    float weight_decay;
    float momentum;  /* SGD */
    float grad_clip; /* 0 = off */
    uint64_t seed;   /* the round's training seed; mixed with the client's */
} fl_client_train_cfg_t;

typedef struct {
    float loss_before;     /* mean loss on the evaluation windows, before */
    float loss_after;      /* and after local training */
    uint32_t num_examples; /* windows trained on */
    double train_ms;
    double delta_norm; /* ||delta|| before clipping */
} fl_client_update_stats_t;

/* Trains a copy of global on data's training part and encodes
 * delta = local - global with codec: into ring[fl_compress_value_count]
 * when the codec has secure aggregation on, else into payload (appended;
 * the codec's wire format). residual[d] (NULL: no error feedback) is added
 * and replaced by what was not sent. client_seed makes one client's batches
 * and rounding its own. global, data and tc are borrowed and not modified;
 * the codec's scratch is used, so one codec serves one thread at a time. */
int fl_client_update(const fl_model_t *global, const fl_data_t *data,
                     const fl_client_train_cfg_t *tc, fl_compress_t *codec,
                     float *residual, uint64_t client_seed, uint32_t *ring,
                     fl_buf_t *payload, fl_client_update_stats_t *st);

/* Mean loss of model on up to max_windows of data's part (windows of
 * seq_len, in order). FL_ERANGE when the part is shorter than one window. */
int fl_client_eval(fl_model_t *model, const fl_data_t *data,
                   fl_data_part_t part, int seq_len, size_t max_windows,
                   double *loss);

/* ---- model store
 * --------------------------------------------------------------
 * <state>/models/<version>/ holds verified versions; the files "current"
 * and "previous" name one each (a decimal version and a newline, written
 * atomically). A download goes to models/.staging-<version>/ (resumable:
 * a partial file's size is where the download goes on), is verified there
 * by the caller, and is committed with one rename. Only current and
 * previous are kept. */
#define FL_CLIENT_STORE_PATH_MAX 4096

/* 0 with *version and the version's directory, FL_ENOENT when there is
 * none yet. */
int fl_client_store_current(const char *state_dir, uint64_t *version, char *dir,
                            size_t dirlen);
int fl_client_store_previous(const char *state_dir, uint64_t *version,
                             char *dir, size_t dirlen);
/* The staging directory for version (created if missing; a partial
 * download in it is kept, so the transfer can resume). */
int fl_client_store_staging(const char *state_dir, uint64_t version, char *dir,
                            size_t dirlen);
/* Makes the staged version current: rename into models/<version>, previous
 * := the old current, then removes every other version. */
int fl_client_store_commit(const char *state_dir, uint64_t version);
/* After a version failed to load: current := previous and the failed
 * version is removed. FL_ENOENT when there is no previous version. */
int fl_client_store_rollback(const char *state_dir);

/* ---- the agent: the client side of the protocol ---------------------------
 * One device's part in the federation, independent of the transport: the
 * owner of the connection (net/ in the daemon, the simulator in-process)
 * hands every frame's payload in and sends what the agent gives out. The
 * agent answers the server's hello with a signature, downloads new model
 * versions in chunks (resuming a partial download), verifies them against
 * the server's signing key before use and swaps them in atomically (rolling
 * back when one fails to load), and takes part in rounds: local training on
 * the loop's thread pool, the delta encoded for the round's codec, secure
 * aggregation, the residual and the journal written when the round ends.
 * Device state (model, residual) survives reconnections.
 *
 * Thread-safety: everything runs on the loop's thread except the training,
 * which reads the model and data on a worker. */
typedef enum {
    FL_CLIENT_EV_HELLO = 0,     /* the server accepted the hello */
    FL_CLIENT_EV_REFUSED,       /* the server refused it (status: reason) */
    FL_CLIENT_EV_MODEL,         /* a verified model is in use (version) */
    FL_CLIENT_EV_MODEL_REFUSED, /* a download failed verification */
    FL_CLIENT_EV_DECLINED,      /* an invitation was declined (what) */
    FL_CLIENT_EV_ROUND_DONE,    /* a round ended; status 0 = success */
    FL_CLIENT_EV_ERROR,         /* a protocol error; the connection closes */
} fl_client_event_kind_t;

typedef struct {
    int kind;
    uint64_t round;
    uint64_t version;
    int status;       /* 0 or an FL_E* code / AbortReason */
    const char *what; /* a short explanation, borrowed for the call */
    fl_client_update_stats_t stats; /* ROUND_DONE after training */
    uint64_t bytes_up, bytes_down;  /* ROUND_DONE: this round's frames */
} fl_client_event_t;

/* ---- a shared model cache -------------------------------------------------
 * Agents of one process (the simulator's virtual devices) may share the
 * model versions they use: the first agent to verify and load version V
 * puts it in the cache; another agent that needs V (for the same signing
 * key) takes a reference to it instead of downloading and loading its own
 * copy. A cached model is read-only: training clones it
 * (fl_client_update), so one copy serves every agent and worker.
 * Entries are refcounted by the agents using them and freed with their
 * last user. Real daemons do not use a cache.
 *
 * Thread-safety: loop thread only (the agents' loop). */
typedef struct fl_client_model_cache fl_client_model_cache_t;

/* *out returned owned. */
int fl_client_model_cache_new(fl_client_model_cache_t **out);
/* The cache goes once its last entry is released: agents using it may be
 * freed after it. NULL is a no-op. */
void fl_client_model_cache_free(fl_client_model_cache_t *c);

typedef struct {
    uint64_t hits;      /* downloads served from the cache */
    uint64_t hit_bytes; /* what those downloads would have taken */
    size_t entries;     /* versions held now */
} fl_client_model_cache_stats_t;

void fl_client_model_cache_stats(const fl_client_model_cache_t *c,
                                 fl_client_model_cache_stats_t *out);

typedef struct {
    uv_loop_t *loop;
    const char *state_dir;             /* copied */
    const fl_artifact_key_t *identity; /* borrowed for the agent's life */
    uint8_t signing_pub[FL_ARTIFACT_PUBLIC_BYTES];
    const fl_data_t *data; /* borrowed: the device's text */
    uint64_t seed;         /* this device's seed for batches and rounding */
    /* The vocabulary of the tokenizer that made data: a version whose model
     * has another is refused (before its download when the manifest says
     * its architecture). 0 = not checked. */
    uint32_t vocab_size;
    /* Its reference (fl_client_tokenizer_ref), borrowed: a model that names
     * another tokenizer is refused too. NULL = not checked. */
    const char *tokenizer_ref;
    /* The device's own policy for rounds, checked before anything is spent
     * on an invitation: decline rounds without secure aggregation, and
     * rounds of fewer than min_participants invitees (0 = any). */
    int require_secagg;
    uint32_t min_participants;
    /* 1 when the device may train now, else 0 and a reason; NULL: always */
    int (*eligible)(void *ctx, char *why, size_t whylen);
    void (*on_event)(void *ctx, const fl_client_event_t *ev); /* may be NULL */
    void *ctx;
    size_t max_frame; /* 0 = FL_FRAME_DEFAULT_MAX */
    /* Borrowed for the agent's life; NULL (the daemon): every version is
     * downloaded. With a cache, a version another agent has verified and
     * loaded is used from it, with no download and no copy on disk. */
    fl_client_model_cache_t *model_cache;
} fl_client_agent_opts_t;

typedef struct {
    /* Queues one frame (the transport adds the length header); the bytes
     * are borrowed for the call. A negative return closes the connection. */
    int (*send)(void *io, const uint8_t *payload, size_t len);
    /* Asks the transport to close; it later calls
     * fl_client_agent_disconnected. */
    void (*close)(void *io, int reason);
} fl_client_io_t;

typedef struct fl_client_agent fl_client_agent_t;

/* Loads the current model from the state directory's store (rolling back
 * to the previous version when it does not load) and the residual. A
 * device without a model gets one from the server at the first hello.
 * *out returned owned. */
int fl_client_agent_new(const fl_client_agent_opts_t *o,
                        fl_client_agent_t **out);
/* Frees at once when no training is in flight, else once it has returned
 * (the loop must run). NULL is a no-op. */
void fl_client_agent_free(fl_client_agent_t *a);
/* A connection is up; io and ioctx are borrowed until disconnected. */
void fl_client_agent_connected(fl_client_agent_t *a, const fl_client_io_t *io,
                               void *ioctx);
/* One frame from the server. A negative return means the agent asked the
 * transport to close (malformed or unexpected input). */
int fl_client_agent_on_frame(fl_client_agent_t *a, const uint8_t *payload,
                             size_t len);
/* The connection is gone: a round in progress is abandoned (its training
 * may still finish in the background and is then dropped). */
void fl_client_agent_disconnected(fl_client_agent_t *a);
/* Sends a Heartbeat when connected (the transport's idle deadline on the
 * server closes silent peers): call it periodically. */
int fl_client_agent_heartbeat(fl_client_agent_t *a);
/* The model in use (borrowed, NULL before the first) and its version. */
fl_model_t *fl_client_agent_model(fl_client_agent_t *a, uint64_t *version);
/* Bytes of frames sent and received over the agent's life. */
void fl_client_agent_bytes(const fl_client_agent_t *a, uint64_t *up,
                           uint64_t *down);
/* Bytes of the downloads served from the model cache instead (manifest,
 * signature and files, as the download would have taken); 0 without one. */
uint64_t fl_client_agent_bytes_cached(const fl_client_agent_t *a);

/* ---- local inference socket ------------------------------------------------
 * JSON lines over a Unix stream socket. A request is one line:
 *   {"prompt": "...", "max_tokens": 64, "temperature": 0.8, "top_p": 0.9,
 *    "top_k": 0, "seed": 1}
 * (only prompt is required) and the answer is one line:
 *   {"text": "...", "tokens": 64, "first_token_ms": 3.1, "total_ms": 40.2,
 *    "tokens_per_s": 1592.0}
 * or {"error": "..."} for a malformed request, after which the connection
 * stays open. Lines are at most FL_CLIENT_INFER_MAX_LINE bytes; a longer
 * one is answered with an error and the connection closed. */
#define FL_CLIENT_INFER_MAX_LINE   (64 * 1024)
#define FL_CLIENT_INFER_MAX_PROMPT (16 * 1024)
#define FL_CLIENT_INFER_MAX_TOKENS 4096
#define FL_CLIENT_INFER_MAX_CONNS  64

typedef struct {
    const char *prompt; /* NUL-terminated UTF-8 */
    int max_tokens;     /* 1..FL_CLIENT_INFER_MAX_TOKENS */
    float temperature;  /* 0 = greedy */
    float top_p;        /* (0, 1] */
    int top_k;          /* 0 = off */
    uint64_t seed;
} fl_client_gen_req_t;

typedef struct {
    int tokens;
    double first_token_ms;
    double total_ms;
} fl_client_gen_stats_t;

/* Generates text for req into out (appended). Runs on a worker thread. */
typedef int (*fl_client_generate_fn)(void *ctx, const fl_client_gen_req_t *req,
                                     fl_buf_t *out,
                                     fl_client_gen_stats_t *stats);

typedef struct fl_client_infer fl_client_infer_t;

/* Listens on path (an existing socket file is replaced; mode 0660) on the
 * given loop. gen and ctx are borrowed for the server's life. */
int fl_client_infer_new(uv_loop_t *loop, const char *path,
                        fl_client_generate_fn gen, void *ctx,
                        fl_client_infer_t **out);
/* Stops listening and closes every connection; the handle is freed once
 * libuv has closed them (run the loop). Requests being generated finish
 * first. NULL is a no-op. */
void fl_client_infer_free(fl_client_infer_t *s);

/* Parses one request line (exposed for tests and fuzzing). On success the
 * prompt is copied into prompt_buf (size FL_CLIENT_INFER_MAX_PROMPT + 1) and
 * req->prompt points to it; on failure why receives the reason. */
int fl_client_infer_parse(const char *line, size_t len,
                          fl_client_gen_req_t *req, char *prompt_buf, char *why,
                          size_t whylen);

/* ---- generation and the daemon --------------------------------------------
 */
struct fl_q8_model;
struct fl_tokenizer;

/* Generates text for req with the int8 model q (borrowed, read-only: many
 * threads may generate from one q at once). The prompt is encoded with tok
 * after BOS; generation stops at EOS, max_tokens or the context length. */
int fl_client_generate(const struct fl_q8_model *q,
                       const struct fl_tokenizer *tok,
                       const fl_client_gen_req_t *req, fl_buf_t *out,
                       fl_client_gen_stats_t *stats);

/* The whole `flotilla client` daemon: identity (made on first start),
 * model store, connection with reconnection and backoff, rounds, the
 * inference socket; until SIGTERM or SIGINT. Logs. Returns 0 after a clean
 * stop or an FL_E* code (err gets a sentence). */
int fl_client_run(const fl_client_config_t *cfg, char *err, size_t errlen);

/* The identity key of a state directory: <state>/identity.key, created
 * (with identity.pub) when missing, or the file cfg names. *out returned
 * owned. */
int fl_client_identity(const fl_client_config_t *cfg, fl_artifact_key_t **out,
                       char *err, size_t errlen);

/* The tokenizer a config names: the file at `path` (llama2.c's
 * tokenizer.bin layout) or, for NULL or "", the byte-level one. Its
 * vocabulary must be the fleet's models' (fl_client_agent_opts_t
 * vocab_size). *out returned owned. */
int fl_client_tokenizer(const char *path, struct fl_tokenizer **out, char *err,
                        size_t errlen);
/* The reference a model stores for tok (fl_model_tokenizer_ref): "byte",
 * or "bpe:" and the SHA-256 of its tokenizer.bin in hex. */
#define FL_CLIENT_TOKREF_MAX 72
int fl_client_tokenizer_ref(const struct fl_tokenizer *tok, char *ref,
                            size_t reflen);

#endif
