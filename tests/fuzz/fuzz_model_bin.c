/* tests/fuzz/fuzz_model_bin.c — the model.bin loader on arbitrary bytes.
 * Whatever it accepts must run a forward pass and survive a save/load round
 * trip unchanged. */
#include "model/model.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fl_model_t *m = NULL, *r = NULL;
    fl_buf_t b;
    fl_buf_init(&b, FL_MODEL_MAX_FILE);
    if (fl_model_load_buf(data, size, &m) < 0)
        goto out;
    const fl_model_config_t *c = fl_model_config(m);
    int32_t tok[2] = {0, c->vocab_size - 1}, tgt[2] = {c->vocab_size - 1, -1};
    int T = c->seq_len >= 2 ? 2 : 1;
    if (fl_model_forward(m, tok, tgt, 1, T, NULL) == 0)
        fl_model_backward(m);
    if (fl_model_save_buf(m, FL_MODEL_SAVE_OPTIM, &b) < 0)
        goto out;
    if (fl_model_load_buf(b.data, b.len, &r) < 0)
        __builtin_trap();
    if (fl_model_num_params(r) != fl_model_num_params(m) ||
        memcmp(fl_model_params(r), fl_model_params(m),
               fl_model_num_params(m) * sizeof(float)) != 0)
        __builtin_trap();
out:
    fl_model_free(r);
    fl_model_free(m);
    fl_buf_free(&b);
    return 0;
}
