/* cli/bench_secagg.c — flotilla bench secagg. */
#include "cli/cli.h"

int fl_bench_secagg(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("bench secagg", "not built yet");
    return FL_EXIT_FAIL;
}
