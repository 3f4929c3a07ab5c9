/* cli/cmd_sim.c — flotilla sim. */
#include "cli/cli.h"

int fl_cmd_sim(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("sim", "not built yet");
    return FL_EXIT_FAIL;
}
