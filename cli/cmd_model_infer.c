/* cli/cmd_model_infer.c — flotilla model generate | quantize. */
#include "cli/cli.h"

int fl_cmd_model_generate(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("model generate", "not built yet");
    return FL_EXIT_FAIL;
}

int fl_cmd_model_quantize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fl_cli_error("model quantize", "not built yet");
    return FL_EXIT_FAIL;
}
