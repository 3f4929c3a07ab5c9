/* client/generate.c — local text generation on the int8 path. */
#include "client/client.h"

#include "model/infer.h"
#include "model/quant.h"
#include "model/sample.h"
#include "model/tokenizer.h"

#include <string.h>

int fl_client_generate(const fl_q8_model_t *q, const fl_tokenizer_t *tok,
                       const fl_client_gen_req_t *req, fl_buf_t *out,
                       fl_client_gen_stats_t *st)
{
    int rc;
    fl_infer_t *inf = NULL;
    fl_sampler_t *smp = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    const fl_model_config_t *c = fl_q8_model_config(q);
    size_t plen = strlen(req->prompt), n = 0;
    double t0 = fl_time_mono_s();
    memset(st, 0, sizeof *st);

    ids = fl_malloc((plen + 3) * sizeof *ids);
    logits = fl_malloc((size_t)c->vocab_size * sizeof *logits);
    if (!ids || !logits) {
        rc = FL_ENOMEM;
        goto out;
    }
    if ((rc = fl_tokenizer_encode(tok, (const uint8_t *)req->prompt, plen,
                                  FL_TOKENIZER_ADD_BOS, ids, plen + 3, &n)) < 0)
        goto out;
    if (n >= (size_t)c->seq_len) { /* keep the end of a long prompt */
        size_t keep = (size_t)c->seq_len / 2;
        memmove(ids + 1, ids + n - keep, keep * sizeof *ids);
        n = keep + 1;
    }
    fl_sample_opts_t so;
    fl_sample_opts_init(&so);
    so.temperature = req->temperature;
    so.top_k = req->top_k;
    so.top_p = req->top_p;
    so.seed = req->seed;
    if ((rc = fl_infer_new_q8(q, (int)n, &inf)) < 0 ||
        (rc = fl_sampler_new(&so, c->vocab_size, &smp)) < 0)
        goto out;
    if ((rc = fl_infer_forward(inf, ids, (int)n, 0, logits, 0)) < 0)
        goto out;
    int pos = (int)n;
    for (int k = 0; k < req->max_tokens && pos < c->seq_len; k++) {
        int32_t next = fl_sampler_next(smp, logits);
        if (next < 0) {
            rc = next;
            goto out;
        }
        if (k == 0)
            st->first_token_ms = (fl_time_mono_s() - t0) * 1000.0;
        if (next == FL_TOKENIZER_EOS)
            break;
        if ((rc = fl_tokenizer_decode(tok, &next, 1, 0, out)) < 0)
            goto out;
        st->tokens++;
        if ((rc = fl_infer_forward(inf, &next, 1, pos++, logits, 0)) < 0)
            goto out;
    }
    st->total_ms = (fl_time_mono_s() - t0) * 1000.0;
out:
    fl_sampler_free(smp);
    fl_infer_free(inf);
    fl_free(ids);
    fl_free(logits);
    return rc;
}
