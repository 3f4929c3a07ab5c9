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

#include "common/common.h"

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
    char *data_dir;    /* the device's text */
    char *state_dir;   /* identity, models, residual, journal */
    char *socket_path; /* local inference socket; "" = none */
    int64_t threads;   /* training threads */
    int64_t memory_mb; /* memory cap for training */
    int64_t nice;      /* scheduling priority of the training thread */
    char *windows;     /* "HH:MM-HH:MM[,HH:MM-HH:MM...]"; "" = any time */
    int ac_only;       /* take part only on mains power */
    double max_load;   /* 1-minute load average above which we decline */
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

#endif
