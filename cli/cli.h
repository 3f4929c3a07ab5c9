/*
 * cli/cli.h — the flotilla subcommands. Each takes the arguments after its
 * own name (argv[0] is the subcommand's name) and returns the process exit
 * status: 0 ok, 1 runtime failure, 2 usage.
 */
#ifndef FL_CLI_H
#define FL_CLI_H

#include "common/common.h"

enum { FL_EXIT_OK = 0, FL_EXIT_FAIL = 1, FL_EXIT_USAGE = 2 };

int fl_cmd_server(int argc, char **argv);
int fl_cmd_client(int argc, char **argv);
int fl_cmd_sim(int argc, char **argv);
int fl_cmd_keygen(int argc, char **argv);
int fl_cmd_sign(int argc, char **argv);
int fl_cmd_verify(int argc, char **argv);
int fl_cmd_model(int argc, char **argv);
int fl_cmd_privacy(int argc, char **argv);
int fl_cmd_bench(int argc, char **argv);

/* flotilla model <verb>: cli/cmd_model.c dispatches init, train and eval
 * itself and hands these to the files that own them. */
int fl_cmd_model_generate(int argc, char **argv); /* cli/cmd_model_infer.c */
int fl_cmd_model_quantize(int argc, char **argv); /* cli/cmd_model_infer.c */
int fl_cmd_model_import(int argc, char **argv);   /* cli/cmd_model_import.c */

/* flotilla bench <what>: each prints one JSON object on stdout. */
int fl_bench_model(int argc, char **argv);
/* bench model is assembled from two halves: cli/bench_model.c measures the
 * int8 kernels and inference and calls this one (cli/bench_train.c), which
 * adds the local-training keys (train_tokens_per_s, train_vs_torch,
 * train_peak_rss_mb) to obj. Returns 0 or an FL_E* code. */
struct json_t;
int fl_bench_model_train(struct json_t *obj, int threads);
int fl_bench_compress(int argc, char **argv);
int fl_bench_secagg(int argc, char **argv);

/* Prints "flotilla <cmd>: <message>" on stderr. */
void fl_cli_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses argv against a config table and handles --help and errors the same
 * way for every command: returns -1 to go on, or the exit status to return
 * (FL_EXIT_OK after --help, FL_EXIT_USAGE on an error):
 *     int rc = fl_cli_parse(...);  if (rc >= 0) return rc; */
int fl_cli_parse(const char *cmd, const char *usage, const fl_cfg_table_t *t,
                 void *obj, int argc, char **argv, int *rest);

#endif
