/*
 * common/bitpack.h — packing unsigned values at exactly r bits each
 * (r = 1..32), the wire format of ring elements.
 *
 * Layout: value i occupies bits [i*r, (i+1)*r) of the output, taken as one
 * little-endian bit stream (bit k of the stream is bit k%8 of byte k/8).
 * Only the low r bits of each input value are used; the unused high bits
 * of the last byte are zero. Shared by compress/ (the codec) and secagg/
 * (masked vectors), which may not include each other.
 *
 * Kernels: outputs first, no allocation. Thread-safe.
 */
#ifndef FL_COMMON_BITPACK_H
#define FL_COMMON_BITPACK_H

#include <stddef.h>
#include <stdint.h>

/* Bytes needed for n values of r bits: ceil(n*r/8). */
size_t fl_bitpack_bytes(size_t n, unsigned r);
/* out: fl_bitpack_bytes(n, r) bytes. */
void fl_bitpack(uint8_t *out, const uint32_t *in, size_t n, unsigned r);
/* out: n values; in: fl_bitpack_bytes(n, r) bytes. */
void fl_bitunpack(uint32_t *out, const uint8_t *in, size_t n, unsigned r);
/* Reference versions, one bit at a time, for tests. */
void fl_bitpack_ref(uint8_t *out, const uint32_t *in, size_t n, unsigned r);
void fl_bitunpack_ref(uint32_t *out, const uint8_t *in, size_t n, unsigned r);

#endif
