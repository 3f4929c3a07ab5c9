/* cli/cmd_server.c — flotilla server. */
#include "cli/cli.h"

int fl_cmd_server(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("server", "not built yet");
    return FL_EXIT_FAIL;
}
