/* cli/cmd_sim.c — flotilla sim: a simulated fleet against the real server;
 * with --compare, several configurations side by side. */
#include "cli/cli.h"

#include "sim/sim.h"

#include <string.h>
#include <unistd.h>
#include <stdlib.h>

#define SIM_USAGE                                                              \
    "sim [--config FILE] [options]\n"                                          \
    "       flotilla sim --compare [options] A.ini B.ini ...   (options "      \
    "apply to every run;\n"                                                    \
    "       --out DIR, default results/compare, gets DIR/<run>/ and "          \
    "DIR/comparison.md)"

/* Removes every "--compare" from argv; returns how many there were. */
static int take_compare_flag(int *argc, char **argv)
{
    int found = 0, k = 1;
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            while (i < *argc)
                argv[k++] = argv[i++];
            break;
        }
        if (strcmp(argv[i], "--compare") == 0)
            found++;
        else
            argv[k++] = argv[i];
    }
    *argc = k;
    argv[k] = NULL;
    return found;
}

static int run_compare(const fl_sim_config_t *c, int argc, char **argv,
                       int rest)
{
    /* argv[1 .. rest) are the flags (fl_cli_parse moved the files to the
     * end); the default results directory of a comparison is its own. */
    const char *out = "results/compare";
    for (int i = 1; i < rest; i++)
        if (strcmp(argv[i], "--out") == 0 || strncmp(argv[i], "--out=", 6) == 0)
            out = c->out;
    if (rest >= argc) {
        fl_cli_error("sim", "--compare needs configuration files");
        return FL_EXIT_USAGE;
    }
    char err[512] = "";
    int rc = fl_sim_compare(out, (const char *const *)argv + rest, argc - rest,
                            rest - 1, argv + 1, err, sizeof err);
    if (rc < 0)
        fl_cli_error("sim", "%s", err[0] ? err : fl_strerror(rc));
    if (rc == 0)
        printf("comparison: %s/comparison.md, %s/comparison.csv, plots "
               "%s/*.png\n",
               out, out, out);
    return rc == FL_EUSAGE ? FL_EXIT_USAGE
                           : (rc < 0 ? FL_EXIT_FAIL : FL_EXIT_OK);
}

int fl_cmd_sim(int argc, char **argv)
{
    fl_sim_config_t c;
    memset(&c, 0, sizeof c);
    int compare = take_compare_flag(&argc, argv);
    int rest, rc = fl_cli_parse("sim", SIM_USAGE, &fl_sim_config_table, &c,
                                argc, argv, &rest);
    if (rc >= 0)
        return rc;
    fl_log_set_role("sim");
    /* The virtual devices train on libuv's thread pool: one worker per
     * core, set before the pool starts (an explicit setting wins). */
    if (!getenv("UV_THREADPOOL_SIZE")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        char n[24];
        snprintf(n, sizeof n, "%ld", cores > 0 ? cores : 1);
        setenv("UV_THREADPOOL_SIZE", n, 0);
    }
    if (compare) {
        rc = run_compare(&c, argc, argv, rest);
        fl_cfg_free(&fl_sim_config_table, &c);
        return rc;
    }
    if (rest < argc) {
        fl_cli_error("sim", "unexpected argument '%s'", argv[rest]);
        fl_cfg_free(&fl_sim_config_table, &c);
        return FL_EXIT_USAGE;
    }
    char err[512] = "";
    rc = fl_sim_run(&c, err, sizeof err);
    if (rc < 0)
        fl_cli_error("sim", "%s", err[0] ? err : fl_strerror(rc));
    else
        printf("results: %s/summary.json, %s/metrics.csv, plots %s/*.png\n",
               c.out, c.out, c.out);
    fl_cfg_free(&fl_sim_config_table, &c);
    return rc < 0 ? FL_EXIT_FAIL : FL_EXIT_OK;
}
