/* cli/cmd_model.c — flotilla model <verb>. */
#include "cli/cli.h"

#include <string.h>

int fl_cmd_model(int argc, char **argv)
{
    if (argc >= 2) {
        if (strcmp(argv[1], "generate") == 0)
            return fl_cmd_model_generate(argc - 1, argv + 1);
        if (strcmp(argv[1], "quantize") == 0)
            return fl_cmd_model_quantize(argc - 1, argv + 1);
        if (strcmp(argv[1], "import") == 0)
            return fl_cmd_model_import(argc - 1, argv + 1);
    }
    fl_cli_error("model", "usage: flotilla model init|train|eval|generate|"
                          "quantize|import [options]");
    return FL_EXIT_USAGE;
}
