/* compress/support.c — which coordinates are sent: public random-k,
 * per-client top-k, and the compact wire form of a sorted index list. */
#include "compress/compress.h"

#include <string.h>

/* ---- public random-k ------------------------------------------------------
 */

int fl_compress_support_random_k(uint32_t *idx, uint64_t *scratch, size_t k,
                                 size_t D, uint64_t seed)
{
    if (k > D || D > (size_t)UINT32_MAX + 1)
        return FL_EINVAL;
    size_t words = (D + 63) / 64;
    memset(scratch, 0, words * sizeof *scratch);
    fl_rng_t rng;
    fl_rng_seed(&rng, seed);
    /* Floyd: after the step for j, the set is a uniform (j-D+k+1)-subset
     * of [0, j]. The bitmap is the set; reading it back sorts it. */
    for (size_t j = D - k; j < D; j++) {
        size_t t = (size_t)fl_rng_below(&rng, (uint64_t)j + 1);
        uint64_t bit = (uint64_t)1 << (t & 63);
        if (scratch[t >> 6] & bit) {
            t = j;
            bit = (uint64_t)1 << (t & 63);
        }
        scratch[t >> 6] |= bit;
    }
    size_t o = 0;
    for (size_t w = 0; w < words; w++) {
        uint64_t v = scratch[w];
        while (v) {
            idx[o++] = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(v));
            v &= v - 1;
        }
    }
    FL_ASSERT(o == k);
    return 0;
}

/* ---- top-k ------------------------------------------------------------------
 * The key of a float is its magnitude's bit pattern: for non-negative
 * floats, integer order is numeric order (NaN sorts above infinity, but
 * the codec refuses non-finite input before it gets here). A radix select
 * on 11/11/10-bit digits finds the k-th largest key T in three passes; a
 * fourth pass takes every key above T and the first keys equal to T. */
static inline uint32_t mag_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x7fffffffu;
}

int fl_compress_support_top_k(uint32_t *idx, const float *x, size_t D, size_t k)
{
    if (k > D || D > UINT32_MAX)
        return FL_EINVAL;
    if (k == 0)
        return 0;
    static const unsigned shift[3] = {21, 10, 0};
    static const unsigned width[3] = {11, 11, 10};
    uint32_t prefix = 0; /* the digits of T found so far */
    uint32_t pmask = 0;  /* which bits of prefix are decided */
    size_t want = k;     /* rank of T among keys matching prefix, from top */
    uint32_t hist[2048];
    for (int pass = 0; pass < 3; pass++) {
        unsigned nb = 1u << width[pass];
        memset(hist, 0, nb * sizeof hist[0]);
        for (size_t i = 0; i < D; i++) {
            uint32_t key = mag_key(x[i]);
            if ((key & pmask) == prefix)
                hist[(key >> shift[pass]) & (nb - 1)]++;
        }
        size_t b = nb;
        while (b-- > 0) {
            if (want <= hist[b])
                break;
            want -= hist[b];
        }
        FL_ASSERT(b < nb);
        prefix |= (uint32_t)b << shift[pass];
        pmask |= (nb - 1) << shift[pass];
    }
    const uint32_t T = prefix;
    size_t o = 0, ties = want; /* keys equal to T still to take */
    for (size_t i = 0; i < D && o < k; i++) {
        uint32_t key = mag_key(x[i]);
        if (key > T || (key == T && ties > 0)) {
            ties -= key == T;
            idx[o++] = (uint32_t)i;
        }
    }
    FL_ASSERT(o == k);
    return 0;
}

/* ---- index lists on the wire -------------------------------------------- */

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Reads a minimal LEB128 varint of at most 5 bytes (values < 2^35) from
 * in[*pos, len). */
static int get_varint(const uint8_t *in, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (*pos >= len)
            return FL_ETRUNC;
        uint8_t c = in[(*pos)++];
        v |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            if (c == 0 && i > 0)
                return FL_EFORMAT; /* not minimal */
            *out = v;
            return 0;
        }
    }
    return FL_EFORMAT;
}

static size_t header_bytes(size_t k, size_t D)
{
    return 1 + varint_len(D) + varint_len(k);
}

static size_t gaps_bytes(const uint32_t *idx, size_t k)
{
    size_t n = 0;
    for (size_t i = 0; i < k; i++)
        n += varint_len(i == 0 ? idx[0] : (uint64_t)idx[i] - idx[i - 1] - 1);
    return n;
}

size_t fl_compress_indices_bytes(const uint32_t *idx, size_t k, size_t D)
{
    return header_bytes(k, D) + FL_MIN(gaps_bytes(idx, k), (D + 7) / 8);
}

size_t fl_compress_indices_bytes_max(size_t k, size_t D)
{
    size_t worst_gaps = k * varint_len(D > 0 ? D - 1 : 0);
    return header_bytes(k, D) + FL_MIN(worst_gaps, (D + 7) / 8);
}

int fl_compress_indices_encode(uint8_t *out, size_t cap, size_t *len,
                               const uint32_t *idx, size_t k, size_t D)
{
    if (k > D || D > UINT32_MAX)
        return FL_EINVAL;
    for (size_t i = 0; i < k; i++)
        if (idx[i] >= D || (i > 0 && idx[i] <= idx[i - 1]))
            return FL_EINVAL;
    size_t g = gaps_bytes(idx, k), bm = (D + 7) / 8;
    size_t total = header_bytes(k, D) + FL_MIN(g, bm);
    if (total > cap)
        return FL_ETOOBIG;
    size_t o = 0;
    out[o++] = g <= bm ? FL_COMPRESS_INDEX_GAPS : FL_COMPRESS_INDEX_BITMAP;
    o += put_varint(out + o, D);
    o += put_varint(out + o, k);
    if (g <= bm) {
        for (size_t i = 0; i < k; i++)
            o += put_varint(
                out + o, i == 0 ? idx[0] : (uint64_t)idx[i] - idx[i - 1] - 1);
    } else {
        memset(out + o, 0, bm);
        for (size_t i = 0; i < k; i++)
            out[o + idx[i] / 8] |= (uint8_t)(1u << (idx[i] % 8));
        o += bm;
    }
    FL_ASSERT(o == total);
    *len = total;
    return 0;
}

/* Parses and checks an encoding from a peer; writes the indices when idx
 * is not NULL (cap entries). *used: bytes of in the encoding takes. */
static int parse(uint32_t *idx, size_t cap, const uint8_t *in, size_t len,
                 size_t max_D, size_t *D_out, size_t *k_out, size_t *used)
{
    size_t pos = 0;
    uint64_t D, k;
    int rc;
    if (len < 1)
        return FL_ETRUNC;
    uint8_t tag = in[pos++];
    if (tag != FL_COMPRESS_INDEX_GAPS && tag != FL_COMPRESS_INDEX_BITMAP)
        return FL_EFORMAT;
    if ((rc = get_varint(in, len, &pos, &D)) < 0 ||
        (rc = get_varint(in, len, &pos, &k)) < 0)
        return rc;
    if (D == 0 || D > max_D || D > UINT32_MAX)
        return FL_ETOOBIG;
    if (k > D)
        return FL_EFORMAT;
    if (idx && k > cap)
        return FL_ETOOBIG;
    if (tag == FL_COMPRESS_INDEX_GAPS) {
        uint64_t next = 0; /* smallest allowed index */
        for (uint64_t i = 0; i < k; i++) {
            uint64_t gap;
            if ((rc = get_varint(in, len, &pos, &gap)) < 0)
                return rc;
            if (gap >= D || next + gap >= D)
                return FL_EFORMAT;
            uint64_t v = next + gap;
            if (idx)
                idx[i] = (uint32_t)v;
            next = v + 1;
        }
    } else {
        size_t bm = (size_t)((D + 7) / 8);
        if (len - pos < bm)
            return FL_ETRUNC;
        const uint8_t *p = in + pos;
        if ((D % 8) && (p[bm - 1] >> (D % 8)))
            return FL_EFORMAT; /* bits past D */
        uint64_t count = 0;
        for (size_t i = 0; i < bm; i++)
            count += (uint64_t)__builtin_popcount(p[i]);
        if (count != k)
            return FL_EFORMAT;
        if (idx) {
            size_t o = 0;
            for (size_t i = 0; i < bm; i++)
                for (unsigned b = 0; b < 8; b++)
                    if (p[i] >> b & 1)
                        idx[o++] = (uint32_t)(i * 8 + b);
        }
        pos += bm;
    }
    *D_out = (size_t)D;
    *k_out = (size_t)k;
    *used = pos;
    return 0;
}

int fl_compress_indices_peek(const uint8_t *in, size_t len, size_t max_D,
                             size_t *D, size_t *k, size_t *enc_len)
{
    return parse(NULL, 0, in, len, max_D, D, k, enc_len);
}

int fl_compress_indices_decode(uint32_t *idx, size_t cap, size_t *k, size_t *D,
                               const uint8_t *in, size_t len, size_t max_D)
{
    size_t used, kk, DD;
    int rc = parse(idx, cap, in, len, max_D, &DD, &kk, &used);
    if (rc < 0)
        return rc;
    if (used != len)
        return FL_EFORMAT; /* trailing bytes */
    *k = kk;
    *D = DD;
    return 0;
}
