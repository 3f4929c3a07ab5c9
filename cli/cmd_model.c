/* cli/cmd_model.c — flotilla model. */
#include "cli/cli.h"

int fl_cmd_model(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("model", "not built yet");
    return FL_EXIT_FAIL;
}
