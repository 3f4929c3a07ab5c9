/*
 * secagg/shamir.c — Shamir t-of-n secret sharing over GF(2^61 - 1).
 *
 * Why this field: a Mersenne prime reduces with two shifts and adds on
 * native 64-bit words (a 128-bit product), it is far larger than any
 * share point (client ids are 32-bit, so x >= 1 never collides with 0 and
 * there is no 255-party limit), and a 32-byte secret needs only 5 chunks.
 * Shamir is information-theoretically hiding in any field, so the size of
 * the field does not weaken the scheme; chunks get independent polynomials.
 */
#include "secagg/secagg_int.h"

#include <sodium.h>
#include <string.h>

#define P     FL_SECAGG_SHAMIR_P
#define CHUNK 7u /* secret bytes per field element */
#define ELEM  8u /* bytes per element in a share */
#define MAX_T FL_SECAGG_MAX_CLIENTS

static inline uint64_t fadd(uint64_t a, uint64_t b)
{
    uint64_t c = a + b; /* < 2^62 */
    return c >= P ? c - P : c;
}

static inline uint64_t fsub(uint64_t a, uint64_t b)
{
    return a >= b ? a - b : a + P - b;
}

static inline uint64_t fmul(uint64_t a, uint64_t b)
{
    unsigned __int128 z = (unsigned __int128)a * b;
    uint64_t lo = (uint64_t)z & P, hi = (uint64_t)(z >> 61);
    uint64_t c = lo + hi;
    c = (c & P) + (c >> 61);
    return c >= P ? c - P : c;
}

static uint64_t finv(uint64_t a) /* a != 0: a^(p-2) */
{
    uint64_t r = 1, e = P - 2;
    while (e) {
        if (e & 1)
            r = fmul(r, a);
        a = fmul(a, a);
        e >>= 1;
    }
    return r;
}

static uint64_t ld_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void st_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static size_t nchunks(size_t len)
{
    return (len + CHUNK - 1) / CHUNK;
}

/* Secret chunk j as a field element. */
static uint64_t chunk_of(const uint8_t *secret, size_t len, size_t j)
{
    uint64_t v = 0;
    for (size_t b = 0; b < CHUNK; b++) {
        size_t k = j * CHUNK + b;
        if (k < len)
            v |= (uint64_t)secret[k] << (8 * b);
    }
    return v;
}

typedef struct {
    const uint8_t *coins; /* NULL: randombytes_buf */
    size_t ncoins, used;
} coin_src_t;

static int draw(coin_src_t *src, uint64_t *out)
{
    for (;;) {
        uint8_t b[8];
        if (src->coins == NULL) {
            randombytes_buf(b, sizeof b);
        } else {
            if (src->ncoins - src->used < 8)
                return FL_ERANGE;
            memcpy(b, src->coins + src->used, 8);
            src->used += 8;
        }
        uint64_t v = ld_le64(b) & P;
        sodium_memzero(b, sizeof b);
        if (v != P) {
            *out = v;
            return 0;
        }
    }
}

static int split(uint8_t *shares, size_t share_len, const uint8_t *secret,
                 size_t len, uint32_t t, const uint32_t *xs, size_t nx,
                 coin_src_t *src)
{
    uint64_t *coef = NULL;
    int rc = 0;
    size_t nc = nchunks(len);
    if (len == 0 || share_len != nc * ELEM || t < 1 || t > MAX_T || nx < t ||
        nx > MAX_T)
        return FL_EINVAL;
    for (size_t i = 0; i < nx; i++) {
        if (xs[i] == 0)
            return FL_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (xs[j] == xs[i])
                return FL_EDUPLICATE;
    }
    coef = sodium_malloc((size_t)t * sizeof *coef);
    if (coef == NULL)
        return FL_ENOMEM;
    for (size_t c = 0; c < nc; c++) {
        coef[0] = chunk_of(secret, len, c);
        for (uint32_t k = 1; k < t; k++)
            if ((rc = draw(src, &coef[k])) != 0)
                goto out;
        for (size_t i = 0; i < nx; i++) {
            uint64_t x = xs[i] % P, y = 0; /* Horner */
            for (uint32_t k = t; k-- > 0;)
                y = fadd(fmul(y, x), coef[k]);
            st_le64(shares + i * share_len + c * ELEM, y);
        }
    }
out:
    sodium_free(coef); /* wipes */
    if (rc != 0)
        sodium_memzero(shares, nx * share_len);
    return rc;
}

int fl_secagg_shamir_split(uint8_t *shares, size_t share_len,
                           const uint8_t *secret, size_t len, uint32_t t,
                           const uint32_t *xs, size_t nx)
{
    coin_src_t src = {NULL, 0, 0};
    if (sa_ensure_sodium() != 0)
        return FL_ECRYPTO;
    return split(shares, share_len, secret, len, t, xs, nx, &src);
}

int fl_secagg_shamir_split_coins(uint8_t *shares, size_t share_len,
                                 const uint8_t *secret, size_t len, uint32_t t,
                                 const uint32_t *xs, size_t nx,
                                 const uint8_t *coins, size_t ncoins)
{
    coin_src_t src = {coins, ncoins, 0};
    if (sa_ensure_sodium() != 0)
        return FL_ECRYPTO;
    return split(shares, share_len, secret, len, t, xs, nx, &src);
}

int sa_lagrange0(uint64_t *coef, const uint32_t *xs, uint32_t t)
{
    /* coef_i = prod_{j != i} x_j / (x_j - x_i)
     *        = (prod_j x_j) / (x_i * prod_{j != i} (x_j - x_i)) */
    uint64_t *prefix = NULL;
    for (uint32_t i = 0; i < t; i++) {
        if (xs[i] == 0)
            return FL_EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (xs[j] == xs[i])
                return FL_EDUPLICATE;
    }
    if ((prefix = fl_calloc((size_t)t + 1, sizeof *prefix)) == NULL)
        return FL_ENOMEM;
    uint64_t all = 1;
    for (uint32_t j = 0; j < t; j++)
        all = fmul(all, xs[j]);
    prefix[0] = 1;
    for (uint32_t i = 0; i < t; i++) {
        uint64_t den = xs[i];
        for (uint32_t j = 0; j < t; j++)
            if (j != i)
                den = fmul(den, fsub(xs[j], xs[i]));
        coef[i] = den;
        prefix[i + 1] = fmul(prefix[i], den);
    }
    /* one inversion for all (Montgomery's trick) */
    uint64_t inv = finv(prefix[t]), suffix = 1;
    for (uint32_t i = t; i-- > 0;) {
        uint64_t inv_i = fmul(inv, fmul(prefix[i], suffix));
        suffix = fmul(suffix, coef[i]);
        coef[i] = fmul(all, inv_i);
    }
    fl_free(prefix);
    return 0;
}

int sa_share_check(const uint8_t *share, size_t share_len)
{
    if (share_len == 0 || share_len % ELEM != 0)
        return FL_EINVAL;
    for (size_t o = 0; o < share_len; o += ELEM)
        if (ld_le64(share + o) >= P)
            return FL_EFORMAT;
    return 0;
}

int sa_shamir_apply(uint8_t *secret, size_t len, const uint64_t *coef,
                    uint32_t t, const uint8_t *const *shares)
{
    size_t nc = nchunks(len);
    for (size_t c = 0; c < nc; c++) {
        uint64_t s = 0;
        for (uint32_t i = 0; i < t; i++)
            s = fadd(s, fmul(coef[i], ld_le64(shares[i] + c * ELEM)));
        /* a consistent sharing gives back a 7-byte chunk, zero-padded */
        size_t have = FL_MIN((size_t)CHUNK, len - c * CHUNK);
        if (s >> (8 * have) != 0) {
            sodium_memzero(&s, sizeof s);
            sodium_memzero(secret, len);
            return FL_ECRYPTO;
        }
        for (size_t b = 0; b < have; b++)
            secret[c * CHUNK + b] = (uint8_t)(s >> (8 * b));
        sodium_memzero(&s, sizeof s);
    }
    return 0;
}

int fl_secagg_shamir_combine(uint8_t *secret, size_t len, uint32_t t,
                             const uint32_t *xs, const uint8_t *shares,
                             size_t share_len, size_t m)
{
    uint64_t *coef = NULL;
    const uint8_t **ptrs = NULL;
    int rc = 0;
    if (len == 0 || share_len != nchunks(len) * ELEM || t < 1 || t > MAX_T) {
        rc = FL_EINVAL;
        goto out;
    }
    if (m < t) {
        rc = FL_ETHRESHOLD;
        goto out;
    }
    /* every share offered is checked, not only the t used */
    for (size_t i = 0; i < m; i++) {
        if (xs[i] == 0) {
            rc = FL_EINVAL;
            goto out;
        }
        for (size_t j = 0; j < i; j++)
            if (xs[j] == xs[i]) {
                rc = FL_EDUPLICATE;
                goto out;
            }
        if ((rc = sa_share_check(shares + i * share_len, share_len)) != 0)
            goto out;
    }
    coef = fl_calloc(t, sizeof *coef);
    ptrs = fl_calloc(t, sizeof *ptrs);
    if (coef == NULL || ptrs == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    if ((rc = sa_lagrange0(coef, xs, t)) != 0)
        goto out;
    for (uint32_t i = 0; i < t; i++)
        ptrs[i] = shares + (size_t)i * share_len;
    rc = sa_shamir_apply(secret, len, coef, t, ptrs);
out:
    fl_free(ptrs);
    fl_free(coef);
    if (rc != 0 && secret != NULL)
        sodium_memzero(secret, len);
    return rc;
}
