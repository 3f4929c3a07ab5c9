/* tests/fuzz/fuzz_tokenizer.c — tokenizer.bin loading, encoding and
 * decoding, and BPE training, on arbitrary bytes.
 *
 * Input: byte 0 picks the mode, bytes 1-2 (little-endian) the length k of
 * a tokenizer.bin image that follows; the rest is text.
 *   mode even: load the image; if it loads, encode the text and decode it
 *     (must give the text back when the vocabulary has every byte), then
 *     (bit 1 set) again with BOS and the dummy prefix, or (bit 1 clear)
 *     save it and check that it reloads to the same image.
 *   mode odd:  train a small vocabulary on (the start of) the text, then
 *     the same checks with the trained tokenizer. */
#include "model/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const fl_tokenizer_t *t, const uint8_t *text, size_t len,
                  unsigned flags)
{
    int32_t *ids = malloc((len + 3) * sizeof *ids);
    size_t n = 0;
    if (!ids)
        return;
    int rc = fl_tokenizer_encode(t, text, len, flags, ids, len + 3, &n);
    if (rc == 0) {
        fl_buf_t out;
        fl_buf_init(&out, len + 64);
        if (n > len + 3 || fl_tokenizer_decode(t, ids, n, flags, &out) != 0)
            __builtin_trap();
        if (fl_tokenizer_lossless(t) &&
            (out.len != len || (len && memcmp(out.data, text, len) != 0)))
            __builtin_trap();
        fl_buf_free(&out);
    } else if (rc != FL_ENOTSUP || fl_tokenizer_lossless(t)) {
        __builtin_trap();
    }
    free(ids);
}

static void check_save(const fl_tokenizer_t *t)
{
    fl_buf_t a, b;
    fl_tokenizer_t *u = NULL;
    fl_buf_init(&a, FL_TOKENIZER_MAX_FILE);
    fl_buf_init(&b, FL_TOKENIZER_MAX_FILE);
    if (fl_tokenizer_save_buf(t, &a) != 0 ||
        fl_tokenizer_load_buf(a.data, a.len, &u) != 0 ||
        fl_tokenizer_save_buf(u, &b) != 0 || a.len != b.len ||
        memcmp(a.data, b.data, a.len) != 0)
        __builtin_trap();
    fl_tokenizer_free(u);
    fl_buf_free(&a);
    fl_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    unsigned mode = data[0];
    size_t k = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3;
    size -= 3;
    if (k > size)
        k = size;
    const uint8_t *text = data + k;
    size_t len = size - k;
    fl_tokenizer_t *t = NULL;
    if (mode % 2 == 0) {
        if (fl_tokenizer_load_buf(data, k, &t) != 0)
            return 0;
    } else {
        fl_tokenizer_train_opts_t o;
        fl_tokenizer_train_opts_init(&o);
        o.vocab_size = FL_TOKENIZER_BYTE_VOCAB + (int)(mode >> 1);
        o.max_token_len = 1 + (int)(mode % 16);
        /* Training is the slow part: on at most 512 bytes of the text. */
        if (fl_tokenizer_train_bpe(&o, text, FL_MIN(len, 512), &t) != 0)
            __builtin_trap();
        if (fl_tokenizer_vocab_size(t) > o.vocab_size)
            __builtin_trap();
    }
    check(t, text, len, 0);
    if (mode & 2) /* spread the slower checks over the inputs */
        check(t, text, len, FL_TOKENIZER_ADD_BOS | FL_TOKENIZER_DUMMY_PREFIX);
    else
        check_save(t);
    fl_tokenizer_free(t);
    return 0;
}
