/* sim/results.c — metrics.csv, summary.json, gnuplot plots and the
 * terminal progress line. */
#include "sim/sim.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct fl_sim_results {
    char dir[PATH_MAX];
    FILE *csv;
};

static const char csv_header[] =
    "round,train_loss,val_loss,val_ppl,participants,survivors,bytes_up,"
    "bytes_down,round_s,epsilon\n";

int fl_sim_results_new(const char *dir, fl_sim_results_t **out)
{
    char path[PATH_MAX];
    int rc;
    *out = NULL;
    fl_sim_results_t *r = fl_calloc(1, sizeof *r);
    if (!r)
        return FL_ENOMEM;
    if (snprintf(r->dir, sizeof r->dir, "%s", dir) >= (int)sizeof r->dir ||
        fl_path_join(path, sizeof path, dir, "metrics.csv") < 0) {
        rc = FL_ETOOBIG;
        goto fail;
    }
    if ((rc = fl_mkdir_p(dir, 0755)) < 0)
        goto fail;
    r->csv = fopen(path, "w");
    if (!r->csv) {
        rc = fl_err_from_errno(errno);
        goto fail;
    }
    fputs(csv_header, r->csv);
    fflush(r->csv);
    *out = r;
    return 0;
fail:
    fl_free(r);
    return rc;
}

void fl_sim_results_free(fl_sim_results_t *r)
{
    if (!r)
        return;
    if (r->csv)
        fclose(r->csv);
    fl_free(r);
}

int fl_sim_results_add(fl_sim_results_t *r, const fl_sim_round_row_t *w)
{
    int n = fprintf(r->csv, "%d,%.6f,%.6f,%.4f,%d,%d,%.0f,%.0f,%.3f,%.6f\n",
                    w->round, w->train_loss, w->val_loss, w->val_ppl,
                    w->participants, w->survivors, w->bytes_up, w->bytes_down,
                    w->round_s, w->epsilon);
    if (n < 0 || fflush(r->csv) != 0)
        return FL_EIO;
    return 0;
}

int fl_sim_results_summary(fl_sim_results_t *r, const char *json_text)
{
    char path[PATH_MAX];
    if (fl_path_join(path, sizeof path, r->dir, "summary.json") < 0)
        return FL_ETOOBIG;
    return fl_file_write_atomic(path, json_text, strlen(json_text), 0644);
}

/* Quotes a string for a gnuplot single-quoted literal (no quotes inside). */
static int plot_safe(const char *s)
{
    return strchr(s, '\'') == NULL && strchr(s, '\n') == NULL;
}

static int write_plot(fl_buf_t *g, const char *out_dir, const char *file,
                      const char *ylabel, const char *column,
                      const char *const *csv, const char *const *names, int n)
{
    int rc = fl_buf_printf(g,
                           "set output '%s/%s'\nset ylabel '%s'\n"
                           "plot ",
                           out_dir, file, ylabel);
    for (int i = 0; i < n && rc == 0; i++)
        rc = fl_buf_printf(g,
                           "%s'%s' using 'round':'%s' with linespoints "
                           "title '%s'",
                           i ? ", " : "", csv[i], column, names[i]);
    return rc ? rc : fl_buf_printf(g, "\n");
}

int fl_sim_plot(const char *out_dir, const char *const *csv_paths,
                const char *const *names, int n_runs)
{
    int rc = 0;
    fl_buf_t g;
    char script[PATH_MAX];
    fl_buf_init(&g, 1 << 20);
    if (access("/usr/bin/gnuplot", X_OK) != 0)
        return FL_ENOTSUP;
    if (!plot_safe(out_dir))
        return FL_EINVAL;
    for (int i = 0; i < n_runs; i++)
        if (!plot_safe(csv_paths[i]) || !plot_safe(names[i]))
            return FL_EINVAL;
    rc = fl_buf_printf(&g, "set terminal png size 900,560\n"
                           "set datafile separator ','\n"
                           "set key outside right\nset grid\n"
                           "set xlabel 'round'\n");
    if (rc == 0)
        rc = write_plot(&g, out_dir, "val_loss.png",
                        "validation loss (nats/token)", "val_loss", csv_paths,
                        names, n_runs);
    if (rc == 0)
        rc = write_plot(&g, out_dir, "bytes.png", "bytes up per client",
                        "bytes_up", csv_paths, names, n_runs);
    if (rc == 0)
        rc = write_plot(&g, out_dir, "epsilon.png", "epsilon (cumulative)",
                        "epsilon", csv_paths, names, n_runs);
    if (rc == 0 &&
        fl_path_join(script, sizeof script, out_dir, "plots.gnuplot") < 0)
        rc = FL_ETOOBIG;
    if (rc == 0)
        rc = fl_file_write_atomic(script, g.data, g.len, 0644);
    if (rc == 0) {
        pid_t pid = fork();
        if (pid < 0) {
            rc = FL_EIO;
        } else if (pid == 0) {
            /* gnuplot's warnings go to a log beside the plots. */
            char log[PATH_MAX];
            if (fl_path_join(log, sizeof log, out_dir, "plots.log") == 0 &&
                freopen(log, "w", stderr) == NULL)
                _exit(126);
            execl("/usr/bin/gnuplot", "gnuplot", script, (char *)NULL);
            _exit(127);
        } else {
            int st;
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                rc = FL_EIO;
        }
    }
    fl_buf_free(&g);
    return rc;
}

void fl_sim_progress(FILE *tty, int round, int rounds, double loss,
                     double elapsed_s)
{
    const int width = 30;
    int done = rounds > 0 ? round * width / rounds : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < done ? '#' : '.';
    bar[width] = '\0';
    double left = round > 0 ? elapsed_s / round * (rounds - round) : 0;
    fprintf(tty, "\r[%s] round %d/%d  val loss %.3f  %dm%02ds left ", bar,
            round, rounds, loss, (int)left / 60, (int)left % 60);
    if (round >= rounds)
        fputc('\n', tty);
    fflush(tty);
}
