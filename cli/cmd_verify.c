/* cli/cmd_verify.c — flotilla verify. */
#include "cli/cli.h"

int fl_cmd_verify(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("verify", "not built yet");
    return FL_EXIT_FAIL;
}
