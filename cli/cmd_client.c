/* cli/cmd_client.c — flotilla client. */
#include "cli/cli.h"

int fl_cmd_client(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("client", "not built yet");
    return FL_EXIT_FAIL;
}
