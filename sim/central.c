/* sim/central.c — the centralized baseline of the fleet simulator: the
 * same initial model, pre-trained on the same public topics, trained by one
 * trainer on the union of the devices' training text, evaluated on the
 * devices' validation text exactly as the federated runs are.
 *
 * Steps: a federated round trains cohort devices for local-steps steps of
 * batch-size windows each, so one "round" here is cohort x local-steps
 * optimizer steps of batch-size windows, and a run is rounds of them: the
 * same number of windows seen and of gradient evaluations as the federated
 * run at full participation. The optimizer is the devices' (AdamW at a
 * constant client-lr), but its state is kept across the whole run. */
#include "sim/sim_internal.h"

#include "client/client.h"
#include "model/data.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Mean validation loss over the devices that hold a validation window:
 * the federated runs' global loss (sim/fleet.c eval_global). */
static int eval_devices(const fl_model_t *cm, fl_data_t *const *data, int n,
                        const fl_sim_config_t *cfg, double *loss)
{
    fl_model_t *m = NULL;
    int rc = fl_model_clone(cm, &m);
    if (rc < 0)
        return rc;
    double total = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        double l;
        if (fl_client_eval(m, data[i], FL_DATA_VAL, (int)cfg->seq_len,
                           (size_t)cfg->eval_windows, &l) == 0) {
            total += l;
            k++;
        }
    }
    fl_model_free(m);
    if (k == 0)
        return FL_ERANGE;
    *loss = total / k;
    return 0;
}

/* The device whose training windows hold the token u in [0, cum[n-1]):
 * windows are drawn uniformly from the union of the devices' text. */
static int pick_device(const double *cum, int n, double u)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (u < cum[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int write_summary(fl_sim_results_t *res, const fl_sim_config_t *cfg,
                         int rounds, int ndev, double initial, double final,
                         double wall, int64_t steps, size_t params)
{
    int rc = FL_ENOMEM;
    char *js = NULL, *line = NULL;
    json_t *j = json_pack(
        "{s:s, s:s, s:i, s:i, s:I, s:f, s:f, s:n, s:f, s:b, s:f, s:f, s:I, "
        "s:I, s:I, s:f}",
        "name", cfg->name, "mode", "centralized", "rounds", rounds, "clients",
        ndev, "cohort", (json_int_t)cfg->cohort, "initial_val_loss", initial,
        "final_val_loss", final, "epsilon", "delta", cfg->delta, "secagg", 0,
        "upload_bytes_per_client_round", 0.0, "wall_s", wall, "steps",
        (json_int_t)steps, "batch_size", (json_int_t)cfg->batch_size, "params",
        (json_int_t)params, "noise_multiplier", 0.0);
    if (j)
        js = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    if (js) {
        size_t n = strlen(js);
        if ((line = fl_malloc(n + 2))) {
            memcpy(line, js, n);
            line[n] = '\n';
            line[n + 1] = '\0';
            rc = fl_sim_results_summary(res, line);
        }
    }
    fl_free(line);
    free(js);
    return rc;
}

int fl_sim__central_run(const fl_sim_config_t *cfg, char *err, size_t errlen)
{
    fl_sim_corpus_t corpus;
    fl_sim_partition_t part;
    fl_tokenizer_t *tok = NULL;
    fl_model_t *m = NULL;
    fl_data_t **data = NULL;
    double *cum = NULL;
    int32_t *win = NULL, *tk = NULL, *tg = NULL;
    fl_sim_results_t *res = NULL;
    char tmp[PATH_MAX] = "", path[PATH_MAX];
    int ndev = 0, rc;
    const int B = (int)cfg->batch_size, T = (int)cfg->seq_len;
    double t_start = fl_time_mono_s();
    memset(&part, 0, sizeof part);
    fl_sim_corpus_init(&corpus, 0);

    if (cfg->cohort > cfg->clients) {
        snprintf(err, errlen, "cohort %lld is larger than the fleet (%lld)",
                 (long long)cfg->cohort, (long long)cfg->clients);
        return FL_EINVAL;
    }
    snprintf(tmp, sizeof tmp, "%s/flotilla-central-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp)) {
        snprintf(err, errlen, "cannot make a temporary directory: %s",
                 strerror(errno));
        tmp[0] = '\0';
        return FL_EIO;
    }
    /* The same tokenizer, corpus, partition and initial model as the
     * federated runs. */
    if ((rc = fl_sim__prepare(cfg, &tok, &corpus, &part, err, errlen)) < 0)
        goto out;
    fl_buf_t pub;
    fl_buf_init(&pub, (size_t)cfg->max_mb << 20);
    rc = fl_sim__records_text(&corpus, part.public_idx, part.n_public, &pub);
    snprintf(path, sizeof path, "%s/init.bin", tmp);
    if (rc == 0)
        rc = fl_sim__pretrain(cfg, tok, &pub, path, &m);
    fl_buf_free(&pub);
    unlink(path);
    if (rc < 0) {
        snprintf(err, errlen, "pre-training: %s", fl_strerror(rc));
        goto out;
    }

    /* Every device's text, split into training and validation exactly as
     * sim/fleet.c splits it for the device's agent. */
    ndev = part.n_clients;
    data = fl_calloc((size_t)ndev, sizeof *data);
    cum = fl_calloc((size_t)ndev, sizeof *cum);
    win = fl_malloc((size_t)B * (T + 1) * sizeof *win);
    tk = fl_malloc((size_t)B * T * sizeof *tk);
    tg = fl_malloc((size_t)B * T * sizeof *tg);
    if (!data || !cum || !win || !tk || !tg) {
        rc = FL_ENOMEM;
        goto out;
    }
    double tokens = 0;
    for (int i = 0; i < ndev && rc == 0; i++) {
        rc = fl_sim__device_data(cfg, &corpus, &part, i, tok, &data[i]);
        size_t n = 0;
        if (rc == 0)
            fl_data_tokens(data[i], FL_DATA_TRAIN, &n);
        /* a device shorter than one window contributes no window */
        tokens += n > (size_t)T ? (double)(n - (size_t)T) : 0;
        cum[i] = tokens;
    }
    if (rc < 0) {
        snprintf(err, errlen, "devices: %s", fl_strerror(rc));
        goto out;
    }
    if (tokens <= 0) {
        snprintf(err, errlen, "the devices hold too little text to train");
        rc = FL_ERANGE;
        goto out;
    }
    double initial, val;
    if ((rc = eval_devices(m, data, ndev, cfg, &initial)) < 0) {
        snprintf(err, errlen, "the devices hold too little text to validate");
        goto out;
    }

    if ((rc = fl_sim_results_new(cfg->out, &res)) < 0) {
        snprintf(err, errlen, "%s: %s", cfg->out, fl_strerror(rc));
        goto out;
    }
    fl_sim_round_row_t row0 = {.round = 0,
                               .train_loss = initial,
                               .val_loss = initial,
                               .val_ppl = exp(initial),
                               /* nothing released yet, as in fleet.c */
                               .epsilon = 0};
    if ((rc = fl_sim_results_add(res, &row0)) < 0)
        goto out;

    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.lr = (float)cfg->client_lr;
    o.min_lr = o.lr;
    o.warmup = 0;
    o.total = 0;
    fl_model_optim_reset(m);
    fl_rng_t rng;
    fl_rng_seed(&rng, (uint64_t)cfg->seed ^ 0xce47a1u);
    const int64_t per_round = cfg->cohort * cfg->local_steps;
    FL_INFO("centralized baseline: %d devices' text, %lld rounds of %lld "
            "steps of %d windows",
            ndev, (long long)cfg->rounds, (long long)per_round, B);
    val = initial;
    double t_last = fl_time_mono_s();
    for (int64_t r = 1; r <= cfg->rounds; r++) {
        double loss_sum = 0;
        for (int64_t s = 0; s < per_round; s++) {
            for (int b = 0; b < B; b++) {
                int i = pick_device(cum, ndev, fl_rng_uniform(&rng) * tokens);
                if ((rc = fl_data_batch(data[i], FL_DATA_TRAIN, &rng, 1, T,
                                        win + (size_t)b * (T + 1))) < 0)
                    goto out;
                memcpy(tk + b * T, win + b * (T + 1), (size_t)T * sizeof *tk);
                memcpy(tg + b * T, win + b * (T + 1) + 1,
                       (size_t)T * sizeof *tg);
            }
            float loss;
            if ((rc = fl_model_train_step(m, &o, tk, tg, B, T, &loss)) < 0)
                goto out;
            loss_sum += loss;
        }
        if ((rc = eval_devices(m, data, ndev, cfg, &val)) < 0)
            goto out;
        double now = fl_time_mono_s();
        fl_sim_round_row_t row = {.round = (int)r,
                                  .train_loss = loss_sum / (double)per_round,
                                  .val_loss = val,
                                  .val_ppl = exp(val),
                                  .participants = 1,
                                  .survivors = 1,
                                  .round_s = now - t_last,
                                  .epsilon = INFINITY};
        t_last = now;
        if ((rc = fl_sim_results_add(res, &row)) < 0)
            goto out;
        if (cfg->quiet || !isatty(STDOUT_FILENO))
            FL_INFO("round %lld (centralized): val loss %.4f", (long long)r,
                    val);
        else
            fl_sim_progress(stdout, (int)r, (int)cfg->rounds, val,
                            now - t_start);
    }
    double wall = fl_time_mono_s() - t_start;
    if ((rc = write_summary(res, cfg, (int)cfg->rounds, ndev, initial, val,
                            wall, cfg->rounds * per_round,
                            fl_model_num_params(m))) < 0)
        goto out;
    if (snprintf(path, sizeof path, "%s/metrics.csv", cfg->out) >=
        (int)sizeof path) {
        rc = FL_ETOOBIG;
        goto out;
    }
    const char *csv[1] = {path}, *names[1] = {cfg->name};
    int prc = fl_sim_plot(cfg->out, csv, names, 1);
    if (prc < 0)
        FL_WARN("no plots: %s", fl_strerror(prc));
    FL_INFO("done (centralized): %lld rounds in %.0f s, validation loss "
            "%.4f -> %.4f",
            (long long)cfg->rounds, wall, initial, val);
out:
    fl_sim_results_free(res);
    fl_free(tg);
    fl_free(tk);
    fl_free(win);
    fl_free(cum);
    for (int i = 0; data && i < ndev; i++)
        fl_data_free(data[i]);
    fl_free(data);
    fl_model_free(m);
    fl_sim_partition_free(&part);
    fl_sim_corpus_free(&corpus);
    fl_tokenizer_free(tok);
    if (tmp[0])
        rmdir(tmp);
    return rc;
}
