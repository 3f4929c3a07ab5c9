/* tests/fuzz/fuzz_compress_payload.c — a peer's update payload (secure
 * aggregation off) through fl_compress_accumulate_payload, for a codec
 * chosen by the first byte. Accepted payloads add finite values within
 * the sensitivity bound; refused ones leave the sum untouched. */
#include "compress/compress.h"

#include <math.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DIM 300

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned bits[] = {0, 1, 2, 5, 8, 16};
    if (size < 1)
        return 0;
    fl_compress_config_t cfg;
    fl_compress_config_init(&cfg);
    cfg.secagg = 0;
    cfg.quant_bits = bits[data[0] % 6];
    cfg.rotate = data[0] >> 3 & 1;
    switch (data[0] >> 4 & 3) {
    case 1:
        cfg.support = FL_COMPRESS_SUPPORT_RANDOM_K;
        cfg.support_size = 30;
        break;
    case 2:
    case 3:
        cfg.support = FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG;
        cfg.support_size = 1 + (data[0] >> 6) * 40;
        break;
    default:
        break;
    }
    fl_compress_t *c;
    if (fl_compress_new(&c, &cfg, DIM) != 0)
        __builtin_trap();
    static float acc[512], before[512];
    memset(acc, 0, sizeof acc);
    memcpy(before, acc, sizeof acc);
    int rc = fl_compress_accumulate_payload(c, acc, data + 1, size - 1);
    size_t D = (size_t)fl_compress_space_dim(c);
    if (rc < 0) {
        if (memcmp(acc, before, sizeof acc) != 0)
            __builtin_trap();
    } else {
        double n2 = 0;
        for (size_t i = 0; i < D; i++) {
            if (!isfinite(acc[i]))
                __builtin_trap();
            n2 += (double)acc[i] * acc[i];
        }
        if (sqrt(n2) > fl_compress_sensitivity(&cfg, DIM) * 1.01)
            __builtin_trap();
    }
    fl_compress_free(c);
    return 0;
}
