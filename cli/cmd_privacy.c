/* cli/cmd_privacy.c — flotilla privacy. */
#include "cli/cli.h"

int fl_cmd_privacy(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("privacy", "not built yet");
    return FL_EXIT_FAIL;
}
