/* tests/fuzz/fuzz_model_q8.c — the model.q8 loader on arbitrary bytes: it
 * must refuse or accept without a sanitizer finding, and an accepted file
 * must re-serialise to the same bytes and run a forward step. */
#include "model/infer.h"
#include "model/quant.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fl_q8_model_t *q = NULL;
    if (fl_q8_model_load_buf(data, size, &q) != 0) {
        if (q)
            __builtin_trap();
        return 0;
    }
    fl_buf_t b;
    fl_buf_init(&b, FL_Q8_MAX_FILE);
    if (fl_q8_model_save_buf(q, &b) != 0 || b.len != size ||
        memcmp(b.data, data, size) != 0)
        __builtin_trap();
    fl_buf_free(&b);
    /* Small models only (the KV cache is sized by seq_len, which costs
     * nothing in the file): one token through the int8 path. */
    const fl_model_config_t *c = fl_q8_model_config(q);
    size_t kv = (size_t)c->dim / c->n_heads * c->n_kv_heads;
    size_t cache = 2 * (size_t)c->n_layers * c->seq_len * kv;
    if ((size_t)c->vocab_size * c->dim < (1u << 20) && cache < (1u << 24)) {
        fl_infer_t *s = NULL;
        float *logits = fl_malloc((size_t)c->vocab_size * sizeof(float));
        int32_t tok = 0;
        if (logits && fl_infer_new_q8(q, 2, &s) == 0)
            (void)fl_infer_forward(s, &tok, 1, 0, logits, 0);
        fl_infer_free(s);
        fl_free(logits);
    }
    fl_q8_model_free(q);
    return 0;
}
