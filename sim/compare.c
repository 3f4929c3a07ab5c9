/* sim/compare.c — `flotilla sim --compare`: several configurations on the
 * same seed and data, one table and one set of plots. */
#include "sim/sim.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* What one run left in its summary.json. */
typedef struct {
    char name[128];
    char out[PATH_MAX];
    int ran, ok;
    const char *mode;
    double initial, final, bytes_up, epsilon, wall;
    long long rounds;
} run_result_t;

/* A run's name from its file: "dir/fedavg-8bit.ini" -> "fedavg-8bit". */
static void name_from_path(const char *path, char *name, size_t len)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 4 && strcmp(base + n - 4, ".ini") == 0)
        n -= 4;
    snprintf(name, len, "%.*s", (int)n, base);
}

/* Names become directories and plot titles. */
static int name_ok(const char *s)
{
    if (!s[0] || s[0] == '.')
        return 0;
    for (; *s; s++)
        if (*s == '/' || *s == '\'' || *s == '|' || *s == ',' ||
            (unsigned char)*s < 0x20)
            return 0;
    return 1;
}

/* Run i's options: defaults, its INI file, then the shared flags. */
static int load_run(const char *ini, int flag_argc, char *const *flag_argv,
                    fl_sim_config_t *c, char *err, size_t errlen)
{
    char cmd[] = "sim", opt[] = "--config";
    int argc = flag_argc + 3, rest, help = 0, rc;
    char **argv = fl_calloc((size_t)argc + 1, sizeof *argv);
    if (!argv)
        return FL_ENOMEM;
    argv[0] = cmd;
    for (int i = 0; i < flag_argc; i++)
        argv[1 + i] = flag_argv[i];
    argv[flag_argc + 1] = opt;
    argv[flag_argc + 2] = (char *)ini;
    rc = fl_cfg_parse_args(&fl_sim_config_table, c, argc, argv, &rest, &help,
                           err, errlen);
    if (rc == 0 && (help || rest < argc)) {
        snprintf(err, errlen, "%s: unexpected argument '%s'", ini,
                 help ? "--help" : argv[rest]);
        rc = FL_EUSAGE;
    }
    fl_free(argv);
    return rc;
}

static void read_summary(run_result_t *r)
{
    char path[PATH_MAX];
    json_error_t je;
    r->ok = 0;
    if (fl_path_join(path, sizeof path, r->out, "summary.json") < 0)
        return;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        return;
    json_t *eps = json_object_get(j, "epsilon");
    r->initial = json_number_value(json_object_get(j, "initial_val_loss"));
    r->final = json_number_value(json_object_get(j, "final_val_loss"));
    r->bytes_up =
        json_number_value(json_object_get(j, "upload_bytes_per_client_round"));
    r->epsilon = json_is_number(eps) ? json_number_value(eps) : INFINITY;
    r->wall = json_number_value(json_object_get(j, "wall_s"));
    r->rounds = (long long)json_integer_value(json_object_get(j, "rounds"));
    const char *mode = json_string_value(json_object_get(j, "mode"));
    r->mode =
        mode && strcmp(mode, "centralized") == 0 ? "centralized" : "federated";
    r->ok = 1;
    json_decref(j);
}

static int write_tables(const char *out_dir, const run_result_t *runs, int n)
{
    fl_buf_t md, csv;
    char path[PATH_MAX];
    int rc;
    fl_buf_init(&md, 1 << 20);
    fl_buf_init(&csv, 1 << 20);
    if ((rc = fl_buf_printf(&md, "| run | mode | final validation loss | "
                                 "perplexity | bytes up per device per round "
                                 "| epsilon | rounds | wall time (s) |\n"
                                 "|---|---|---:|---:|---:|---:|---:|---:|\n")) <
            0 ||
        (rc = fl_buf_printf(&csv, "run,mode,initial_val_loss,final_val_loss,"
                                  "perplexity,bytes_up_per_client_round,"
                                  "epsilon,rounds,wall_s,status\n")) < 0)
        goto out;
    for (int i = 0; i < n; i++) {
        const run_result_t *r = &runs[i];
        if (!r->ok) {
            const char *st = r->ran ? "failed" : "not run";
            if ((rc = fl_buf_printf(&md, "| %s | %s | | | | | | |\n", r->name,
                                    st)) < 0 ||
                (rc = fl_buf_printf(&csv, "%s,,,,,,,,,%s\n", r->name, st)) < 0)
                goto out;
            continue;
        }
        char eps[32];
        if (isfinite(r->epsilon))
            snprintf(eps, sizeof eps, "%.3g", r->epsilon);
        else
            snprintf(eps, sizeof eps, "inf");
        if ((rc = fl_buf_printf(&md,
                                "| %s | %s | %.4f | %.3f | %.0f | %s | %lld | "
                                "%.1f |\n",
                                r->name, r->mode, r->final, exp(r->final),
                                r->bytes_up,
                                isfinite(r->epsilon) ? eps : "∞ (no DP)",
                                r->rounds, r->wall)) < 0 ||
            (rc = fl_buf_printf(
                 &csv, "%s,%s,%.6f,%.6f,%.4f,%.0f,%s,%lld,%.3f,ok\n", r->name,
                 r->mode, r->initial, r->final, exp(r->final), r->bytes_up, eps,
                 r->rounds, r->wall)) < 0)
            goto out;
    }
    if ((rc = fl_path_join(path, sizeof path, out_dir, "comparison.md")) < 0 ||
        (rc = fl_file_write_atomic(path, md.data, md.len, 0644)) < 0 ||
        (rc = fl_path_join(path, sizeof path, out_dir, "comparison.csv")) < 0 ||
        (rc = fl_file_write_atomic(path, csv.data, csv.len, 0644)) < 0)
        goto out;
out:
    fl_buf_free(&md);
    fl_buf_free(&csv);
    return rc;
}

int fl_sim_compare(const char *out_dir, const char *const *ini_paths,
                   int n_runs, int flag_argc, char *const *flag_argv, char *err,
                   size_t errlen)
{
    fl_sim_config_t *cfgs = NULL;
    run_result_t *runs = NULL;
    const char **csvs = NULL, **names = NULL;
    char path[PATH_MAX];
    int rc = 0, first_fail = 0;
    if (n_runs < 1) {
        snprintf(err, errlen, "--compare needs configuration files");
        return FL_EUSAGE;
    }
    cfgs = fl_calloc((size_t)n_runs, sizeof *cfgs);
    runs = fl_calloc((size_t)n_runs, sizeof *runs);
    csvs = fl_calloc((size_t)n_runs, sizeof *csvs);
    names = fl_calloc((size_t)n_runs, sizeof *names);
    if (!cfgs || !runs || !csvs || !names) {
        rc = FL_ENOMEM;
        goto out;
    }

    /* Every configuration first, so that a typo in the last file does not
     * cost the time of the others. */
    for (int i = 0; i < n_runs; i++) {
        fl_sim_config_t *c = &cfgs[i];
        run_result_t *r = &runs[i];
        if ((rc = load_run(ini_paths[i], flag_argc, flag_argv, c, err,
                           errlen)) < 0)
            goto out;
        if (strcmp(c->name, "run") == 0)
            name_from_path(ini_paths[i], r->name, sizeof r->name);
        else
            snprintf(r->name, sizeof r->name, "%s", c->name);
        if (!name_ok(r->name)) {
            snprintf(err, errlen, "%s: run name '%s' cannot name a directory",
                     ini_paths[i], r->name);
            rc = FL_EINVAL;
            goto out;
        }
        for (int k = 0; k < i; k++)
            if (strcmp(runs[k].name, r->name) == 0) {
                snprintf(err, errlen, "%s and %s: both runs are named '%s'",
                         ini_paths[k], ini_paths[i], r->name);
                rc = FL_EINVAL;
                goto out;
            }
        if (c->seed != cfgs[0].seed || strcmp(c->data, cfgs[0].data) != 0 ||
            strcmp(c->tokenizer, cfgs[0].tokenizer) != 0 ||
            c->clients != cfgs[0].clients ||
            c->public_topics != cfgs[0].public_topics ||
            c->split != cfgs[0].split) {
            snprintf(err, errlen,
                     "%s: seed, data, tokenizer, clients, public-topics and "
                     "split must be those of %s (one seed, one partition)",
                     ini_paths[i], ini_paths[0]);
            rc = FL_EINVAL;
            goto out;
        }
        if (fl_path_join(r->out, sizeof r->out, out_dir, r->name) < 0) {
            rc = FL_ETOOBIG;
            goto out;
        }
        if ((rc = fl_cfg_set(&fl_sim_config_table, c, "out", r->out, err,
                             errlen)) < 0 ||
            (rc = fl_cfg_set(&fl_sim_config_table, c, "name", r->name, err,
                             errlen)) < 0)
            goto out;
    }
    if ((rc = fl_mkdir_p(out_dir, 0755)) < 0) {
        snprintf(err, errlen, "%s: %s", out_dir, fl_strerror(rc));
        goto out;
    }

    double t0 = fl_time_mono_s();
    int n_ok = 0;
    for (int i = 0; i < n_runs; i++) {
        char why[512] = "";
        FL_INFO("comparison: run %d/%d, %s", i + 1, n_runs, runs[i].name);
        int r = fl_sim_run(&cfgs[i], why, sizeof why);
        runs[i].ran = 1;
        if (r == 0)
            read_summary(&runs[i]);
        if (!runs[i].ok) {
            FL_ERROR("run %s failed: %s", runs[i].name,
                     why[0] ? why : fl_strerror(r < 0 ? r : FL_EIO));
            if (!first_fail) {
                first_fail = r < 0 ? r : FL_EIO;
                snprintf(err, errlen, "run %s: %s", runs[i].name,
                         why[0] ? why : fl_strerror(first_fail));
            }
            if (r == FL_EABORTED) /* a signal: stop the whole comparison */
                break;
            continue;
        }
        if (fl_path_join(path, sizeof path, runs[i].out, "metrics.csv") < 0)
            continue;
        csvs[n_ok] = fl_strdup(path);
        names[n_ok] = runs[i].name;
        if (csvs[n_ok])
            n_ok++;
    }
    if ((rc = write_tables(out_dir, runs, n_runs)) < 0) {
        snprintf(err, errlen, "%s: comparison tables: %s", out_dir,
                 fl_strerror(rc));
        goto out;
    }
    if (n_ok > 0) {
        int prc = fl_sim_plot(out_dir, csvs, names, n_ok);
        if (prc < 0)
            FL_WARN("no comparison plots: %s", fl_strerror(prc));
    }
    FL_INFO("comparison of %d runs in %.0f s: %s/comparison.md", n_runs,
            fl_time_mono_s() - t0, out_dir);
    rc = first_fail;
out:
    for (int i = 0; cfgs && i < n_runs; i++) /* calloc'd: NULL strings */
        fl_cfg_free(&fl_sim_config_table, &cfgs[i]);
    for (int i = 0; csvs && i < n_runs; i++)
        fl_free((void *)csvs[i]);
    fl_free(csvs);
    fl_free(names);
    fl_free(runs);
    fl_free(cfgs);
    return rc;
}
