/* cli/util.c — what every subcommand shares: errors and option parsing. */
#include "cli/cli.h"

void fl_cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "flotilla %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int fl_cli_parse(const char *cmd, const char *usage, const fl_cfg_table_t *t,
                 void *obj, int argc, char **argv, int *rest)
{
    char err[512] = "";
    int help = 0;
    int rc =
        fl_cfg_parse_args(t, obj, argc, argv, rest, &help, err, sizeof err);
    if (help) {
        printf("usage: flotilla %s\n\n", usage);
        fl_cfg_print_help(t, stdout);
        return FL_EXIT_OK;
    }
    if (rc < 0) {
        fl_cli_error(cmd, "%s", err);
        fprintf(stderr, "try 'flotilla %s --help'\n", cmd);
        return FL_EXIT_USAGE;
    }
    return -1; /* go on */
}
