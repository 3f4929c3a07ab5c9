/* tests/fuzz/fuzz_compress_indices.c — the index-list decoder on arbitrary
 * bytes (a peer's top-k payload, a server's explicit support). Whatever it
 * accepts must be a strictly increasing list below D that re-encodes to
 * the same list, no longer than the accepted input. */
#include "compress/compress.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP   4096
#define MAX_D (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint32_t idx[CAP], again[CAP];
    static uint8_t enc[CAP * 5 + MAX_D / 8 + 16];
    size_t k, D, pk, pD, plen;
    int prc = fl_compress_indices_peek(data, size, MAX_D, &pD, &pk, &plen);
    int rc = fl_compress_indices_decode(idx, CAP, &k, &D, data, size, MAX_D);
    if (rc < 0)
        return 0;
    /* Peek agrees with a successful decode. */
    if (prc != 0 || pD != D || pk != k || plen != size)
        __builtin_trap();
    if (D == 0 || D > MAX_D || k > D || k > CAP)
        __builtin_trap();
    for (size_t i = 0; i < k; i++)
        if (idx[i] >= D || (i > 0 && idx[i] <= idx[i - 1]))
            __builtin_trap();
    size_t len;
    if (fl_compress_indices_encode(enc, sizeof enc, &len, idx, k, D) != 0)
        __builtin_trap();
    if (len > size || len != fl_compress_indices_bytes(idx, k, D))
        __builtin_trap(); /* the encoder picks the smaller form */
    size_t k2, D2;
    if (fl_compress_indices_decode(again, CAP, &k2, &D2, enc, len, MAX_D) != 0)
        __builtin_trap();
    if (k2 != k || D2 != D || memcmp(again, idx, k * sizeof *idx) != 0)
        __builtin_trap();
    return 0;
}
