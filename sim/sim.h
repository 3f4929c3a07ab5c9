/*
 * sim/sim.h — the fleet simulator: splitting a corpus into virtual devices,
 * and writing a run's results (metrics.csv, summary.json, plots).
 *
 * A corpus is a set of records (one fortune, one paragraph) each tagged
 * with its topic (the file it came from). A partition gives every virtual
 * client its own training and validation records, and keeps some topics
 * aside as public data for pre-training the initial global model. One seed
 * always gives one partition.
 *
 * Ownership: handles are returned owned and released with their _free;
 * pointer arguments are borrowed. Thread-safety: a handle belongs to one
 * thread.
 */
#ifndef FL_SIM_H
#define FL_SIM_H

#include "common/common.h"

/* ---- corpus ----------------------------------------------------------------
 */
typedef struct {
    size_t off, len; /* bytes of the record in the corpus text */
    int topic;       /* index into topics */
} fl_sim_record_t;

typedef struct {
    fl_buf_t text;            /* every record's bytes, back to back */
    fl_sim_record_t *records; /* [n_records] */
    size_t n_records, cap_records;
    char **topics; /* [n_topics] names, owned */
    int n_topics;
} fl_sim_corpus_t;

void fl_sim_corpus_init(fl_sim_corpus_t *c, size_t max_bytes);
void fl_sim_corpus_free(fl_sim_corpus_t *c);
/* Adds one topic's text, cut into records: a line holding only '%' (the
 * fortune format) separates records when present; otherwise blank lines do.
 * Empty records are dropped. FL_ETOOBIG past the corpus' max_bytes. */
int fl_sim_corpus_add_topic(fl_sim_corpus_t *c, const char *name,
                            const char *text, size_t len);

/* ---- partition ------------------------------------------------------------
 */
typedef enum {
    FL_SIM_SPLIT_TOPIC = 0, /* each client's records come from one topic */
    FL_SIM_SPLIT_DIRICHLET =
        1, /* per topic, shares over clients ~ Dir(alpha) */
} fl_sim_split_mode_t;

typedef struct {
    int mode;            /* fl_sim_split_mode_t */
    double alpha;        /* Dirichlet concentration, > 0 */
    int n_clients;       /* >= 1 */
    int n_public_topics; /* topics held out as public data, < n_topics */
    double val_fraction; /* of each client's records, in [0, 0.9] */
    uint64_t seed;
} fl_sim_split_t;

typedef struct {
    int n_clients;
    /* Client i trains on records train_idx[train_off[i] .. train_off[i+1])
     * and validates on val_idx[val_off[i] .. val_off[i+1]). */
    size_t *train_off, *train_idx;
    size_t *val_off, *val_idx;
    int *client_topic;  /* [n_clients]; the topic (TOPIC mode), else -1 */
    size_t *public_idx; /* records of the held-out topics */
    size_t n_public;
    int *public_topics; /* [n_public_topics] */
    int n_public_topics;
} fl_sim_partition_t;

/* Splits the corpus. Every record of a non-public topic goes to exactly one
 * client (train or validation) or, when a topic has no client, nowhere;
 * every record of a public topic goes to public_idx. FL_EINVAL for a bad
 * configuration (no topic left for clients, alpha <= 0...). */
int fl_sim_partition(const fl_sim_corpus_t *c, const fl_sim_split_t *cfg,
                     fl_sim_partition_t *out);
void fl_sim_partition_free(fl_sim_partition_t *p);

/* ---- results ----------------------------------------------------------------
 */
typedef struct {
    int round;
    double train_loss; /* mean over participants, before local training */
    double val_loss;   /* global model on held-out client data */
    double val_ppl;    /* exp(val_loss) */
    int participants;  /* invited and accepted */
    int survivors;     /* whose input is in the sum */
    double bytes_up;   /* per participating client */
    double bytes_down; /* per participating client */
    double round_s;    /* wall time */
    double epsilon;    /* cumulative */
} fl_sim_round_row_t;

typedef struct fl_sim_results fl_sim_results_t;

/* Creates dir (and parents) and dir/metrics.csv with its header line. */
int fl_sim_results_new(const char *dir, fl_sim_results_t **out);
void fl_sim_results_free(fl_sim_results_t *r);
/* Appends one row and flushes it, so a killed run keeps its rows. */
int fl_sim_results_add(fl_sim_results_t *r, const fl_sim_round_row_t *row);
/* Writes dir/summary.json atomically from a JSON text (the caller builds
 * it; see cli/cmd_sim.c for the keys). */
int fl_sim_results_summary(fl_sim_results_t *r, const char *json_text);

/* Draws PNG plots with gnuplot from one or more runs' metrics.csv files:
 * out_dir/val_loss.png, bytes.png and epsilon.png, one line per run,
 * labelled by names[i]. FL_ENOTSUP when gnuplot is not installed. */
int fl_sim_plot(const char *out_dir, const char *const *csv_paths,
                const char *const *names, int n_runs);

/* ---- progress ---------------------------------------------------------- */
/* One line, redrawn in place on a terminal: round, loss and time left. */
void fl_sim_progress(FILE *tty, int round, int rounds, double loss,
                     double elapsed_s);

/* ---- the simulated fleet
 * ------------------------------------------------------ */
/* inproc: in-process pipes, no sockets. tls: TLS 1.3 on loopback through
 * net/, every device connecting and verifying the server as the daemon
 * does, with a CA and server certificate the run makes with the openssl
 * command in its temporary directory. Either way the devices share one
 * in-memory copy of each model version (client/client.h model cache). */
typedef enum {
    FL_SIM_TRANSPORT_INPROC = 0,
    FL_SIM_TRANSPORT_TLS = 1
} fl_sim_transport_t;

typedef enum {
    FL_SIM_MODE_FEDERATED = 0,   /* the real server and agents */
    FL_SIM_MODE_CENTRALIZED = 1, /* the baseline: one trainer, all the text */
} fl_sim_mode_t;

/* Every option of `flotilla sim` (one table: INI and flags). Strings are
 * owned (fl_cfg_free with fl_sim_config_table). */
typedef struct {
    char *data;      /* directory of text files */
    char *tokenizer; /* tokenizer.bin; "" = byte-level */
    char *out;       /* results directory */
    char *name;      /* the run's name in plots and comparisons */
    int64_t seed;
    int64_t clients; /* virtual devices */
    int64_t cohort;  /* expected cohort per round */
    int64_t rounds;
    int64_t public_topics;
    int split; /* fl_sim_split_mode_t */
    double alpha;
    double val_fraction;
    int64_t max_mb; /* of text read */
    int transport;  /* fl_sim_transport_t */
    /* model and pre-training */
    int64_t dim, layers, heads, hidden, seq_len;
    int64_t pretrain_steps;
    double pretrain_lr;
    /* rounds */
    int secagg;
    int graph; /* 0 complete, 1 harary */
    int64_t quant_bits;
    int rotate;
    int error_feedback;
    int support; /* 0 dense, 1 random-k */
    double support_fraction;
    double clip_norm;
    double noise_multiplier;
    double delta;
    int64_t local_steps, batch_size;
    double client_lr;
    int server_optimizer; /* 0 fedavg, 1 fedadam, 2 fedyogi */
    double server_lr;
    /* faults */
    double dropout;       /* per phase, per participant */
    double straggler;     /* probability an input arrives after the deadline */
    double churn;         /* per client and round: leave (and later rejoin) */
    int64_t phase_ms;     /* deadline of each phase */
    int64_t eval_windows; /* per client, for the global validation loss */
    int quiet;
    int mode; /* fl_sim_mode_t */
} fl_sim_config_t;

extern const fl_cfg_table_t fl_sim_config_table;

/* Runs one simulation into cfg->out: metrics.csv, summary.json, plots.
 * mode = centralized runs the baseline instead (sim/central.c): the same
 * pre-trained model trained by one trainer on the union of the devices'
 * training text for rounds x cohort x local-steps optimizer steps, with a
 * metrics.csv row every cohort x local-steps steps.
 * Logs progress. err gets a sentence on failure. */
int fl_sim_run(const fl_sim_config_t *cfg, char *err, size_t errlen);

/* ---- comparisons ----------------------------------------------------------
 */
/* `flotilla sim --compare`: runs n_runs configurations one after another
 * into out_dir/<name>/, where run i's options are the defaults, then the
 * INI file ini_paths[i], then the flags flag_argv[0 .. flag_argc) (the
 * command line's, in `flotilla sim` form, e.g. "--rounds", "5"; they apply
 * to every run). A run's name is its file's `name` key, or the file's base
 * name without ".ini". Every run must have the same seed and data. Then
 * writes out_dir/comparison.md (a markdown table), out_dir/comparison.csv
 * and the plots (one line per run). A run that fails is listed as failed
 * and the others still run, except after a signal (SIGINT, SIGTERM), which
 * stops the comparison; the first failure is returned. All arguments are
 * borrowed. */
int fl_sim_compare(const char *out_dir, const char *const *ini_paths,
                   int n_runs, int flag_argc, char *const *flag_argv, char *err,
                   size_t errlen);

#endif
