/* cli/cmd_model_import.c — flotilla model import (llama2.c checkpoints). */
#include "cli/cli.h"

int fl_cmd_model_import(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("model import", "not built yet");
    return FL_EXIT_FAIL;
}
