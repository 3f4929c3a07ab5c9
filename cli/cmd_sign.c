/* cli/cmd_sign.c — flotilla sign. */
#include "cli/cli.h"

int fl_cmd_sign(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("sign", "not built yet");
    return FL_EXIT_FAIL;
}
