/* cli/bench_model.c — flotilla bench model. */
#include "cli/cli.h"

int fl_bench_model(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("bench model", "not built yet");
    return FL_EXIT_FAIL;
}
