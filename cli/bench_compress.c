/* cli/bench_compress.c — flotilla bench compress. */
#include "cli/cli.h"

int fl_bench_compress(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("bench compress", "not built yet");
    return FL_EXIT_FAIL;
}
