/* common/bitpack.c — r-bit packing through a 64-bit accumulator. */
#include "common/bitpack.h"

#include "common/common.h"

#include <string.h>

size_t fl_bitpack_bytes(size_t n, unsigned r)
{
    FL_ASSERT(r >= 1 && r <= 32);
    return (size_t)(((uint64_t)n * r + 7) / 8);
}

void fl_bitpack(uint8_t *out, const uint32_t *in, size_t n, unsigned r)
{
    FL_ASSERT(r >= 1 && r <= 32);
    if (r == 32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = in[i];
            out[4 * i] = (uint8_t)v;
            out[4 * i + 1] = (uint8_t)(v >> 8);
            out[4 * i + 2] = (uint8_t)(v >> 16);
            out[4 * i + 3] = (uint8_t)(v >> 24);
        }
        return;
    }
    if (r == 8) {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)in[i];
        return;
    }
    if (r == 16) {
        for (size_t i = 0; i < n; i++) {
            out[2 * i] = (uint8_t)in[i];
            out[2 * i + 1] = (uint8_t)(in[i] >> 8);
        }
        return;
    }
    const uint64_t mask = (1ULL << r) - 1;
    uint64_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc |= ((uint64_t)in[i] & mask) << bits;
        bits += r;
        if (bits >= 32) { /* flush 4 bytes; at most 31 + 31 bits pending */
            out[o] = (uint8_t)acc;
            out[o + 1] = (uint8_t)(acc >> 8);
            out[o + 2] = (uint8_t)(acc >> 16);
            out[o + 3] = (uint8_t)(acc >> 24);
            o += 4;
            acc >>= 32;
            bits -= 32;
        }
    }
    while (bits > 0) {
        out[o++] = (uint8_t)acc;
        acc >>= 8;
        bits = bits > 8 ? bits - 8 : 0;
    }
}

void fl_bitunpack(uint32_t *out, const uint8_t *in, size_t n, unsigned r)
{
    FL_ASSERT(r >= 1 && r <= 32);
    if (r == 32) {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint32_t)in[4 * i] | (uint32_t)in[4 * i + 1] << 8 |
                     (uint32_t)in[4 * i + 2] << 16 |
                     (uint32_t)in[4 * i + 3] << 24;
        return;
    }
    if (r == 8) {
        for (size_t i = 0; i < n; i++)
            out[i] = in[i];
        return;
    }
    if (r == 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint32_t)in[2 * i] | (uint32_t)in[2 * i + 1] << 8;
        return;
    }
    const uint64_t mask = (1ULL << r) - 1;
    size_t nbytes = fl_bitpack_bytes(n, r), p = 0;
    uint64_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        while (bits < r) { /* refill 4 bytes when possible, else 1 */
            if (p + 4 <= nbytes && bits <= 32) {
                acc |= ((uint64_t)in[p] | (uint64_t)in[p + 1] << 8 |
                        (uint64_t)in[p + 2] << 16 | (uint64_t)in[p + 3] << 24)
                       << bits;
                p += 4;
                bits += 32;
            } else {
                acc |= (uint64_t)in[p++] << bits;
                bits += 8;
            }
        }
        out[i] = (uint32_t)(acc & mask);
        acc >>= r;
        bits -= r;
    }
}

void fl_bitpack_ref(uint8_t *out, const uint32_t *in, size_t n, unsigned r)
{
    memset(out, 0, fl_bitpack_bytes(n, r));
    for (size_t i = 0; i < n; i++)
        for (unsigned b = 0; b < r; b++)
            if (in[i] >> b & 1) {
                uint64_t k = (uint64_t)i * r + b;
                out[k / 8] |= (uint8_t)(1u << (k % 8));
            }
}

void fl_bitunpack_ref(uint32_t *out, const uint8_t *in, size_t n, unsigned r)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t v = 0;
        for (unsigned b = 0; b < r; b++) {
            uint64_t k = (uint64_t)i * r + b;
            v |= (uint32_t)(in[k / 8] >> (k % 8) & 1) << b;
        }
        out[i] = v;
    }
}
