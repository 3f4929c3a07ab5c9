/* cli/cmd_keygen.c — flotilla keygen. */
#include "cli/cli.h"

int fl_cmd_keygen(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("keygen", "not built yet");
    return FL_EXIT_FAIL;
}
