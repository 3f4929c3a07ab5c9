/* client/update.c — one client's contribution to a round: local training
 * from the global model, then the encoded delta. */
#include "client/client.h"

#include <math.h>
#include <string.h>

/* Splits B windows of T + 1 ids into inputs and targets [B, T]. */
static void split_windows(const int32_t *win, int B, int T, int32_t *tokens,
                          int32_t *targets)
{
    for (int b = 0; b < B; b++) {
        memcpy(tokens + (size_t)b * T, win + (size_t)b * (T + 1),
               (size_t)T * sizeof *tokens);
        memcpy(targets + (size_t)b * T, win + (size_t)b * (T + 1) + 1,
               (size_t)T * sizeof *targets);
    }
}

int fl_client_eval(fl_model_t *model, const fl_data_t *data,
                   fl_data_part_t part, int T, size_t max_windows, double *loss)
{
    size_t n = fl_data_num_windows(data, part, T);
    if (n == 0)
        return FL_ERANGE;
    if (n > max_windows)
        n = max_windows;
    int32_t *win = fl_malloc((size_t)(T + 1) * sizeof *win);
    int32_t *tok = fl_malloc((size_t)T * sizeof *tok);
    int32_t *tgt = fl_malloc((size_t)T * sizeof *tgt);
    int rc = (!win || !tok || !tgt) ? FL_ENOMEM : 0;
    double sum = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        float l;
        if ((rc = fl_data_window(data, part, i, T, win)) < 0)
            break;
        split_windows(win, 1, T, tok, tgt);
        if ((rc = fl_model_forward(model, tok, tgt, 1, T, &l)) < 0)
            break;
        sum += l;
    }
    if (rc == 0)
        *loss = sum / (double)n;
    fl_free(win);
    fl_free(tok);
    fl_free(tgt);
    return rc;
}

/* Windows held out of training to measure loss before and after. */
#define EVAL_WINDOWS 4

int fl_client_update(const fl_model_t *global, const fl_data_t *data,
                     const fl_client_train_cfg_t *tc, fl_compress_t *codec,
                     float *residual, uint64_t client_seed, uint32_t *ring,
                     fl_buf_t *payload, fl_client_update_stats_t *st)
{
    int rc = 0;
    fl_model_t *local = NULL;
    int32_t *win = NULL, *tok = NULL, *tgt = NULL;
    float *delta = NULL;
    const int B = (int)tc->batch_size, T = (int)tc->seq_len;
    const fl_model_config_t *mc = fl_model_config(global);
    double t0 = fl_time_mono_s(), before = 0, after = 0;
    memset(st, 0, sizeof *st);

    if (tc->local_steps < 1 || B < 1 || T < 1 || T > mc->seq_len || B > 4096)
        return FL_EINVAL;
    size_t d = fl_model_num_params(global);
    if (fl_compress_dim(codec) != d)
        return FL_EINVAL;

    if ((rc = fl_model_clone(global, &local)) < 0)
        goto out;
    fl_model_optim_reset(local);
    win = fl_malloc((size_t)B * (T + 1) * sizeof *win);
    tok = fl_malloc((size_t)B * T * sizeof *tok);
    tgt = fl_malloc((size_t)B * T * sizeof *tgt);
    delta = fl_malloc(d * sizeof *delta);
    if (!win || !tok || !tgt || !delta) {
        rc = FL_ENOMEM;
        goto out;
    }

    /* Loss before, on the first windows of the local validation part (the
     * training part when there is no validation text). */
    fl_data_part_t evalp = fl_data_num_windows(data, FL_DATA_VAL, T) > 0
                               ? FL_DATA_VAL
                               : FL_DATA_TRAIN;
    if ((rc = fl_client_eval(local, data, evalp, T, EVAL_WINDOWS, &before)) < 0)
        goto out;

    fl_model_optim_t o;
    fl_model_optim_default(&o);
    o.kind = tc->optimizer;
    o.lr = tc->learning_rate;
    o.min_lr = tc->learning_rate;
    o.warmup = 0;
    o.total = 0;
    o.weight_decay = tc->weight_decay;
    o.momentum = tc->momentum;
    o.grad_clip = tc->grad_clip;

    fl_rng_t rng;
    uint64_t s = tc->seed ^ (client_seed * 0x9e3779b97f4a7c15ULL);
    fl_rng_seed(&rng, fl_splitmix64(&s));
    for (uint32_t step = 0; step < tc->local_steps; step++) {
        float l;
        if ((rc = fl_data_batch(data, FL_DATA_TRAIN, &rng, B, T, win)) < 0)
            goto out;
        split_windows(win, B, T, tok, tgt);
        if ((rc = fl_model_train_step(local, &o, tok, tgt, B, T, &l)) < 0)
            goto out;
        if (!isfinite(l)) {
            rc = FL_ERANGE;
            goto out;
        }
    }
    if ((rc = fl_client_eval(local, data, evalp, T, EVAL_WINDOWS, &after)) < 0)
        goto out;

    /* delta = local - global on the trainable vector. */
    const float *g = fl_model_params((fl_model_t *)global);
    const float *p = fl_model_params(local);
    for (size_t i = 0; i < d; i++)
        delta[i] = p[i] - g[i];

    fl_rng_t qrng;
    fl_rng_seed(&qrng,
                fl_compress_config(codec)->quant_seed ^ fl_splitmix64(&s));
    if (fl_compress_config(codec)->secagg) {
        if (!ring) {
            rc = FL_EINVAL;
            goto out;
        }
        rc = fl_compress_encode_ring(codec, ring, delta, residual, &qrng,
                                     &st->delta_norm);
    } else {
        uint64_t cap = 0;
        size_t len = 0;
        if (!payload) {
            rc = FL_EINVAL;
            goto out;
        }
        if ((rc = fl_compress_wire_bytes(fl_compress_config(codec), d, &cap,
                                         NULL)) < 0 ||
            (rc = fl_buf_reserve(payload, (size_t)cap)) < 0)
            goto out;
        rc = fl_compress_encode_payload(
            codec, payload->data + payload->len, payload->cap - payload->len,
            &len, delta, residual, &qrng, &st->delta_norm);
        if (rc == 0)
            payload->len += len;
    }
    if (rc < 0)
        goto out;
    st->loss_before = (float)before;
    st->loss_after = (float)after;
    st->num_examples = tc->local_steps * (uint32_t)B;
    st->train_ms = (fl_time_mono_s() - t0) * 1000.0;
out:
    fl_model_free(local);
    fl_free(win);
    fl_free(tok);
    fl_free(tgt);
    fl_free(delta);
    return rc;
}
