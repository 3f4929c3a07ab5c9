/* cli/main.c — the flotilla entry point: dispatch to subcommands. */
#include "cli/cli.h"

#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"server", fl_cmd_server, "run the aggregation server"},
    {"client", fl_cmd_client, "run the device daemon; local inference"},
    {"sim", fl_cmd_sim, "simulate a fleet against the real server"},
    {"keygen", fl_cmd_keygen, "create an Ed25519 key pair"},
    {"sign", fl_cmd_sign, "sign a model manifest"},
    {"verify", fl_cmd_verify,
     "verify a model directory's signature and hashes"},
    {"model", fl_cmd_model,
     "init | train | eval | generate | quantize | import model files"},
    {"privacy", fl_cmd_privacy, "(epsilon, delta) of a DP training plan"},
    {"bench", fl_cmd_bench, "benchmarks, printed as JSON"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: flotilla <command> [options]\n\n"
                 "flotilla is federated learning for fleets of edge Linux "
                 "devices.\n\ncommands:\n");
    for (size_t i = 0; i < FL_ARRAY_LEN(commands); i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'flotilla <command> --help' describes each command.\n"
                 "'flotilla --version' prints the version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return FL_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
        strcmp(cmd, "help") == 0) {
        usage(stdout);
        return FL_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("flotilla %s\n", FL_VERSION);
        return FL_EXIT_OK;
    }
    for (size_t i = 0; i < FL_ARRAY_LEN(commands); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "flotilla: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return FL_EXIT_USAGE;
}
