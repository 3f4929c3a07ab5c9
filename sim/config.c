/* sim/config.c — the one option table of `flotilla sim`. */
#include "sim/sim.h"

#define OPT(name, type, field, def, lo, hi, help)                              \
    {                                                                          \
        name, type, offsetof(fl_sim_config_t, field), def, lo, hi, NULL, NULL, \
            help                                                               \
    }
#define ENUM(name, field, def, choices, help)                                  \
    {                                                                          \
        name, FL_CFG_ENUM, offsetof(fl_sim_config_t, field), def, 1, 0,        \
            choices, NULL, help                                                \
    }

static const fl_cfg_opt_t sim_opts[] = {
    OPT("data", FL_CFG_STRING, data, "/usr/share/games/fortunes", 1, 0,
        "directory of UTF-8 text files; each file is a topic"),
    OPT("tokenizer", FL_CFG_STRING, tokenizer, "", 1, 0,
        "tokenizer.bin of the model and the devices (\"\" = byte-level)"),
    OPT("out", FL_CFG_STRING, out, "results/default", 1, 0,
        "results directory (metrics.csv, summary.json, plots)"),
    OPT("name", FL_CFG_STRING, name, "run", 1, 0,
        "the run's name in plots and comparisons"),
    OPT("seed", FL_CFG_INT, seed, "1", 0, 1e15, "one seed, one run"),
    OPT("clients", FL_CFG_INT, clients, "48", 3, 100000, "virtual devices"),
    OPT("cohort", FL_CFG_INT, cohort, "12", 3, 100000,
        "devices per round (the mean's fixed denominator)"),
    OPT("rounds", FL_CFG_INT, rounds, "20", 1, 1000000, "rounds to run"),
    OPT("public-topics", FL_CFG_INT, public_topics, "4", 1, 10000,
        "topics held out as public data for pre-training"),
    ENUM("split", split, "topic", "topic|dirichlet",
         "devices by topic, or Dirichlet shares of every topic"),
    OPT("alpha", FL_CFG_DOUBLE, alpha, "0.5", 1e-3, 1e6,
        "Dirichlet concentration (split = dirichlet)"),
    OPT("val-fraction", FL_CFG_DOUBLE, val_fraction, "0.1", 0.01, 0.5,
        "of each device's text kept for validation"),
    OPT("max-mb", FL_CFG_INT, max_mb, "64", 1, 65536, "text read at most"),
    ENUM("transport", transport, "inproc", "inproc|tls",
         "in-process pipes, or TLS connections on loopback"),
    OPT("dim", FL_CFG_INT, dim, "128", 8, 4096, "model width"),
    OPT("layers", FL_CFG_INT, layers, "4", 1, 64, "decoder layers"),
    OPT("heads", FL_CFG_INT, heads, "4", 1, 64, "attention heads"),
    OPT("hidden", FL_CFG_INT, hidden, "384", 8, 16384, "SwiGLU width"),
    OPT("seq-len", FL_CFG_INT, seq_len, "64", 8, 4096,
        "context of the model and of training windows"),
    OPT("pretrain-steps", FL_CFG_INT, pretrain_steps, "300", 0, 1000000,
        "central pre-training steps on the public topics"),
    OPT("pretrain-lr", FL_CFG_DOUBLE, pretrain_lr, "3e-3", 1e-6, 1,
        "pre-training learning rate"),
    OPT("secagg", FL_CFG_BOOL, secagg, "true", 1, 0, "secure aggregation"),
    ENUM("graph", graph, "harary", "complete|harary",
         "secure-aggregation neighbour graph"),
    OPT("quant-bits", FL_CFG_INT, quant_bits, "8", 0, 16,
        "bits per transmitted value (0 = fp32, secagg off only)"),
    OPT("rotate", FL_CFG_BOOL, rotate, "false", 1, 0,
        "randomized Hadamard rotation before quantizing"),
    OPT("error-feedback", FL_CFG_BOOL, error_feedback, "true", 1, 0,
        "devices keep what was not sent for the next round"),
    ENUM("support", support, "dense", "dense|random-k",
         "which coordinates are sent"),
    OPT("support-fraction", FL_CFG_DOUBLE, support_fraction, "0.1", 1e-6, 1,
        "fraction of coordinates sent (support = random-k)"),
    OPT("clip-norm", FL_CFG_DOUBLE, clip_norm, "8", 1e-6, 1e6,
        "S: each device's delta is clipped to this L2 norm"),
    OPT("noise-multiplier", FL_CFG_DOUBLE, noise_multiplier, "0.002", 0, 1e3,
        "z: DP noise standard deviation over the sensitivity (0: no DP)"),
    OPT("delta", FL_CFG_DOUBLE, delta, "1e-5", 1e-12, 0.1, "DP delta"),
    OPT("local-steps", FL_CFG_INT, local_steps, "8", 1, 10000,
        "local training steps per round"),
    OPT("batch-size", FL_CFG_INT, batch_size, "4", 1, 1024,
        "windows per local step"),
    OPT("client-lr", FL_CFG_DOUBLE, client_lr, "2e-3", 1e-7, 1,
        "devices' AdamW learning rate"),
    ENUM("server-optimizer", server_optimizer, "fedavg",
         "fedavg|fedadam|fedyogi", "server optimizer"),
    OPT("server-lr", FL_CFG_DOUBLE, server_lr, "1.0", 0, 1e3,
        "server learning rate"),
    OPT("dropout", FL_CFG_DOUBLE, dropout, "0.02", 0, 0.9,
        "probability a participant drops at each phase"),
    OPT("straggler", FL_CFG_DOUBLE, straggler, "0", 0, 0.9,
        "probability a participant's input arrives after the deadline"),
    OPT("churn", FL_CFG_DOUBLE, churn, "0.02", 0, 0.9,
        "probability a device leaves between rounds (it rejoins later)"),
    OPT("phase-ms", FL_CFG_INT, phase_ms, "5000", 100, 3600000,
        "deadline of each phase"),
    OPT("eval-windows", FL_CFG_INT, eval_windows, "4", 1, 100000,
        "validation windows per device for the global loss"),
    OPT("quiet", FL_CFG_BOOL, quiet, "false", 1, 0, "no progress line"),
    ENUM("mode", mode, "federated", "federated|centralized",
         "the fleet, or the centralized baseline on the union of its text"),
};

const fl_cfg_table_t fl_sim_config_table = {
    sim_opts, sizeof sim_opts / sizeof sim_opts[0], "sim"};
