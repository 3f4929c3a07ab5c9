/* cli/cmd_sim.c — flotilla sim: a simulated fleet against the real server. */
#include "cli/cli.h"

#include "sim/sim.h"

#include <string.h>

int fl_cmd_sim(int argc, char **argv)
{
    fl_sim_config_t c;
    memset(&c, 0, sizeof c);
    int rest, rc = fl_cli_parse("sim", "sim [--config FILE] [options]",
                                &fl_sim_config_table, &c, argc, argv, &rest);
    if (rc >= 0)
        return rc;
    if (rest < argc) {
        fl_cli_error("sim", "unexpected argument '%s'", argv[rest]);
        fl_cfg_free(&fl_sim_config_table, &c);
        return FL_EXIT_USAGE;
    }
    fl_log_set_role("sim");
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
