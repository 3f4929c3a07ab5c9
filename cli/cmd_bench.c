/* cli/cmd_bench.c — flotilla bench <what>: benchmarks as JSON. */
#include "cli/cli.h"

#include <string.h>

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} benches[] = {
    {"model", fl_bench_model, "int8 kernels, training and inference"},
    {"compress", fl_bench_compress, "update codecs"},
    {"secagg", fl_bench_secagg, "a secure-aggregation round in one process"},
};

int fl_cmd_bench(int argc, char **argv)
{
    if (argc >= 2) {
        for (size_t i = 0; i < FL_ARRAY_LEN(benches); i++)
            if (strcmp(argv[1], benches[i].name) == 0)
                return benches[i].run(argc - 1, argv + 1);
    }
    FILE *out = (argc >= 2 && strcmp(argv[1], "--help") == 0) ? stdout : stderr;
    fprintf(out, "usage: flotilla bench <what> [options] --json\n\n");
    for (size_t i = 0; i < FL_ARRAY_LEN(benches); i++)
        fprintf(out, "  %-9s %s\n", benches[i].name, benches[i].summary);
    return out == stdout ? FL_EXIT_OK : FL_EXIT_USAGE;
}
