/*
 * secagg/crypto.c — the primitives: key derivation bound to the session,
 * the share AEAD, the signed advertisement bytes, and the mask PRG (AES-256-
 * CTR or ChaCha20 from OpenSSL's EVP, expanded straight into r-bit ring
 * elements). Also the per-message arenas of outgoing messages.
 */
#include "secagg/secagg_int.h"

#include <openssl/evp.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the mask kernels assume a little-endian host"
#endif

/* ---- outgoing messages -----------------------------------------------------
 */

/* Every outgoing message is laid out as [sa_arena_t][message] inside the
 * arena's first block, so fl_secagg_msg_free finds the arena from the
 * message pointer. */
typedef struct {
    sa_arena_t *arena;
} sa_msg_hdr_t;

void *sa_arena_alloc(sa_arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (a->head == NULL || a->head->cap - a->head->used < n) {
        size_t cap = FL_MAX(n, (size_t)16384 - sizeof(sa_blk_t));
        sa_blk_t *b = fl_malloc(sizeof *b + cap);
        if (b == NULL)
            return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

static void sa_arena_free(sa_arena_t *a)
{
    sa_blk_t *b = a->head;
    while (b != NULL) {
        sa_blk_t *next = b->next;
        fl_free(b);
        b = next;
    }
    a->head = NULL;
}

void *sa_msg_new(const ProtobufCMessageDescriptor *d, size_t size,
                 sa_arena_t **arena)
{
    sa_arena_t tmp = {NULL};
    sa_arena_t *a = sa_arena_alloc(&tmp, sizeof *a);
    if (a == NULL)
        return NULL;
    sa_msg_hdr_t *h = sa_arena_alloc(&tmp, sizeof *h + size);
    if (h == NULL) {
        sa_arena_free(&tmp);
        return NULL;
    }
    *a = tmp;
    h->arena = a;
    void *m = (unsigned char *)h + sizeof *h;
    protobuf_c_message_init(d, m);
    *arena = a;
    return m;
}

void fl_secagg_msg_free(void *msg)
{
    if (msg == NULL)
        return;
    sa_msg_hdr_t *h = (sa_msg_hdr_t *)((unsigned char *)msg - sizeof *h);
    sa_arena_t a = *h->arena;
    sa_arena_free(&a);
}

int sa_bytes(sa_arena_t *a, ProtobufCBinaryData *b, const void *p, size_t n)
{
    uint8_t *q = sa_arena_alloc(a, n ? n : 1);
    if (q == NULL)
        return FL_ENOMEM;
    if (n)
        memcpy(q, p, n);
    b->data = q;
    b->len = n;
    return 0;
}

/* ---- helpers
 * ------------------------------------------------------------------ */

void sa_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void sa_be64(uint8_t *p, uint64_t v)
{
    sa_be32(p, (uint32_t)(v >> 32));
    sa_be32(p + 4, (uint32_t)v);
}

int sa_ensure_sodium(void)
{
    return sodium_init() < 0 ? FL_ECRYPTO : 0;
}

/* ---- derivations ------------------------------------------------------------
 */

typedef struct {
    const uint8_t *id_pk, *c_pk, *s_pk;
    uint32_t id;
} sa_adv_ref_t;

static int adv_cmp(const void *a, const void *b)
{
    uint32_t x = ((const sa_adv_ref_t *)a)->id;
    uint32_t y = ((const sa_adv_ref_t *)b)->id;
    return x < y ? -1 : x > y;
}

int fl_secagg_session_id(uint8_t out[FL_SECAGG_SESSION_BYTES],
                         const uint8_t round_nonce[FL_SECAGG_NONCE_BYTES],
                         uint64_t round,
                         const Flotilla__AdvertiseKeys *const *keys, size_t n)
{
    static const char label[] = "flotilla-secagg-session-v1";
    int rc = 0;
    sa_adv_ref_t *refs = NULL;
    if (n > FL_SECAGG_MAX_CLIENTS)
        return FL_EINVAL;
    if (n > 0 && (refs = fl_calloc(n, sizeof *refs)) == NULL)
        return FL_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const Flotilla__AdvertiseKeys *k = keys[i];
        if (k->c_pk.len != 32 || k->s_pk.len != 32 ||
            k->identity_key.len != 32) {
            rc = FL_EFORMAT;
            goto out;
        }
        refs[i] = (sa_adv_ref_t){k->identity_key.data, k->c_pk.data,
                                 k->s_pk.data, k->client_id};
    }
    if (n > 1)
        qsort(refs, n, sizeof *refs, adv_cmp);
    crypto_generichash_state st;
    uint8_t hdr[8];
    crypto_generichash_init(&st, NULL, 0, FL_SECAGG_SESSION_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)label, sizeof label - 1);
    crypto_generichash_update(&st, round_nonce, FL_SECAGG_NONCE_BYTES);
    sa_be64(hdr, round);
    crypto_generichash_update(&st, hdr, 8);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && refs[i].id == refs[i - 1].id) {
            rc = FL_EDUPLICATE;
            goto out;
        }
        sa_be32(hdr, refs[i].id);
        crypto_generichash_update(&st, hdr, 4);
        crypto_generichash_update(&st, refs[i].c_pk, 32);
        crypto_generichash_update(&st, refs[i].s_pk, 32);
        crypto_generichash_update(&st, refs[i].id_pk, 32);
    }
    crypto_generichash_final(&st, out, FL_SECAGG_SESSION_BYTES);
out:
    fl_free(refs);
    return rc;
}

void fl_secagg_advertise_signed_bytes(
    uint8_t out[FL_SECAGG_ADVERTISE_SIGNED_BYTES],
    const uint8_t round_nonce[FL_SECAGG_NONCE_BYTES], uint64_t round,
    uint32_t client_id, const uint8_t c_pk[32], const uint8_t s_pk[32])
{
    static const char label[] = "flotilla-advertise-v1";
    size_t o = 0;
    memcpy(out, label, sizeof label - 1);
    o += sizeof label - 1;
    memcpy(out + o, round_nonce, FL_SECAGG_NONCE_BYTES);
    o += FL_SECAGG_NONCE_BYTES;
    sa_be64(out + o, round);
    o += 8;
    sa_be32(out + o, client_id);
    o += 4;
    memcpy(out + o, c_pk, 32);
    o += 32;
    memcpy(out + o, s_pk, 32);
    o += 32;
    FL_ASSERT(o == FL_SECAGG_ADVERTISE_SIGNED_BYTES);
}

static void kdf(uint8_t out[32], const uint8_t shared[32], const char *label,
                size_t labellen, const uint8_t session[32], uint32_t a,
                uint32_t b)
{
    uint8_t ids[8];
    crypto_generichash_state st;
    crypto_generichash_init(&st, shared, 32, 32);
    crypto_generichash_update(&st, (const uint8_t *)label, labellen);
    crypto_generichash_update(&st, session, 32);
    sa_be32(ids, a);
    sa_be32(ids + 4, b);
    crypto_generichash_update(&st, ids, 8);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

/* BLAKE2b-256(key = X25519(sk, pk), label || session || be32 a || be32 b). */
static int derive(uint8_t out[32], const char *label, size_t labellen,
                  const uint8_t sk[32], const uint8_t pk[32],
                  const uint8_t session[32], uint32_t a, uint32_t b)
{
    uint8_t shared[crypto_scalarmult_BYTES];
    int rc = 0;
    if (sa_ensure_sodium() != 0)
        return FL_ECRYPTO;
    if (crypto_scalarmult(shared, sk, pk) != 0)
        rc = FL_ECRYPTO; /* a low-order point: the result would be public */
    else
        kdf(out, shared, label, labellen, session, a, b);
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int sa_derive_share_keys(uint8_t send[32], uint8_t recv[32],
                         const uint8_t my_sk[32], const uint8_t peer_pk[32],
                         const uint8_t session[32], uint32_t me, uint32_t peer)
{
    static const char label[] = "flotilla-secagg-share-v1";
    uint8_t shared[crypto_scalarmult_BYTES];
    int rc = 0;
    if (crypto_scalarmult(shared, my_sk, peer_pk) != 0) {
        rc = FL_ECRYPTO;
    } else {
        kdf(send, shared, label, sizeof label - 1, session, me, peer);
        kdf(recv, shared, label, sizeof label - 1, session, peer, me);
    }
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int fl_secagg_derive_mask_seed(uint8_t out[FL_SECAGG_KEY_BYTES],
                               const uint8_t my_sk[32],
                               const uint8_t peer_pk[32],
                               const uint8_t session[FL_SECAGG_SESSION_BYTES],
                               uint32_t u, uint32_t v)
{
    static const char label[] = "flotilla-secagg-mask-v1";
    return derive(out, label, sizeof label - 1, my_sk, peer_pk, session,
                  FL_MIN(u, v), FL_MAX(u, v));
}

int fl_secagg_derive_share_key(uint8_t out[FL_SECAGG_KEY_BYTES],
                               const uint8_t my_sk[32],
                               const uint8_t peer_pk[32],
                               const uint8_t session[FL_SECAGG_SESSION_BYTES],
                               uint32_t from, uint32_t to)
{
    static const char label[] = "flotilla-secagg-share-v1";
    return derive(out, label, sizeof label - 1, my_sk, peer_pk, session, from,
                  to);
}

/* ---- the share AEAD
 * ------------------------------------------------------------ */

#define SA_AD_BYTES (32 + 8 + 4 + 4)
#define SA_PT_BYTES (2 * FL_SECAGG_SHARE_BYTES)
_Static_assert(FL_SECAGG_CT_BYTES ==
                   crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + SA_PT_BYTES +
                       crypto_aead_xchacha20poly1305_ietf_ABYTES,
               "ciphertext size");

static void share_ad(uint8_t ad[SA_AD_BYTES], const uint8_t session[32],
                     uint64_t round, uint32_t from, uint32_t to)
{
    memcpy(ad, session, 32);
    sa_be64(ad + 32, round);
    sa_be32(ad + 40, from);
    sa_be32(ad + 44, to);
}

int fl_secagg_share_seal(uint8_t ct[FL_SECAGG_CT_BYTES], const uint8_t key[32],
                         const uint8_t session[32], uint64_t round,
                         uint32_t from, uint32_t to,
                         const uint8_t pt[SA_PT_BYTES])
{
    uint8_t ad[SA_AD_BYTES];
    const size_t nb = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
    share_ad(ad, session, round, from, to);
    randombytes_buf(ct, nb);
    unsigned long long clen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_encrypt(ct + nb, &clen, pt,
                                                   SA_PT_BYTES, ad, sizeof ad,
                                                   NULL, ct, key) != 0 ||
        clen != FL_SECAGG_CT_BYTES - nb)
        return FL_ECRYPTO;
    return 0;
}

int fl_secagg_share_open(uint8_t pt[SA_PT_BYTES], const uint8_t key[32],
                         const uint8_t session[32], uint64_t round,
                         uint32_t from, uint32_t to, const uint8_t *ct,
                         size_t ctlen)
{
    uint8_t ad[SA_AD_BYTES];
    const size_t nb = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
    if (ctlen != FL_SECAGG_CT_BYTES)
        return FL_EFORMAT;
    share_ad(ad, session, round, from, to);
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt, &plen, NULL, ct + nb,
                                                   ctlen - nb, ad, sizeof ad,
                                                   ct, key) != 0) {
        sodium_memzero(pt, SA_PT_BYTES);
        return FL_EMAC;
    }
    return 0;
}

/* ---- the mask PRG
 * ------------------------------------------------------------- */

/* Elements per keystream chunk: a multiple of FL_SECAGG_PART_ALIGN so that
 * every chunk starts on a whole cipher block for every r. */
#define SA_CHUNK  4096u
#define SA_KS_MAX (SA_CHUNK * 4u)

struct sa_prg {
    EVP_CIPHER_CTX *ctx;
    EVP_CIPHER *aes, *chacha;
    alignas(64) uint8_t ks[SA_KS_MAX + 16]; /* keystream, 16 bytes of slack */
};

static const uint8_t sa_zero[SA_KS_MAX];

sa_prg_t *sa_prg_new(void)
{
    sa_prg_t *p = fl_aligned_alloc(64, sizeof *p);
    if (p == NULL)
        return NULL;
    p->ctx = EVP_CIPHER_CTX_new();
    p->aes = EVP_CIPHER_fetch(NULL, "AES-256-CTR", NULL);
    p->chacha = EVP_CIPHER_fetch(NULL, "ChaCha20", NULL);
    if (p->ctx == NULL || p->aes == NULL || p->chacha == NULL) {
        sa_prg_free(p);
        return NULL;
    }
    return p;
}

void sa_prg_free(sa_prg_t *p)
{
    if (p == NULL)
        return;
    EVP_CIPHER_CTX_free(p->ctx);
    EVP_CIPHER_free(p->aes);
    EVP_CIPHER_free(p->chacha);
    sodium_memzero(p->ks, sizeof p->ks);
    fl_free(p);
}

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The r-bit value number i of a bit stream of inlen bytes, read safely. */
static inline uint32_t bits_get_safe(const uint8_t *in, size_t inlen, size_t i,
                                     unsigned r)
{
    size_t bit = i * r, byte = bit >> 3;
    uint64_t w = 0;
    for (unsigned j = 0; j < 8 && byte + j < inlen; j++)
        w |= (uint64_t)in[byte + j] << (8 * j);
    return (uint32_t)((w >> (bit & 7)) & ((1ull << r) - 1));
}

/* Separate loops per width so that the compiler vectorises each; restrict
 * tells it the keystream bytes do not alias the accumulator. r = 24 reads
 * four values from three 32-bit words. */
#define SA_BITS_LOOP(OP)                                                       \
    do {                                                                       \
        switch (r) {                                                           \
        case 32:                                                               \
            for (size_t i = 0; i < n; i++)                                     \
                acc[i] OP ld32(in + 4 * i);                                    \
            return;                                                            \
        case 16:                                                               \
            for (size_t i = 0; i < n; i++)                                     \
                acc[i] OP(uint32_t)(in[2 * i] | (uint32_t)in[2 * i + 1] << 8); \
            return;                                                            \
        case 8:                                                                \
            for (size_t i = 0; i < n; i++)                                     \
                acc[i] OP in[i];                                               \
            return;                                                            \
        case 24: {                                                             \
            size_t i = 0;                                                      \
            for (; i + 4 <= n; i += 4) {                                       \
                const uint8_t *p = in + 3 * i;                                 \
                uint32_t w0 = ld32(p), w1 = ld32(p + 4), w2 = ld32(p + 8);     \
                acc[i] OP(w0 & 0xffffffu);                                     \
                acc[i + 1] OP((w0 >> 24 | w1 << 8) & 0xffffffu);               \
                acc[i + 2] OP((w1 >> 16 | w2 << 16) & 0xffffffu);              \
                acc[i + 3] OP(w2 >> 8);                                        \
            }                                                                  \
            for (; i < n; i++)                                                 \
                acc[i] OP(uint32_t)(in[3 * i] | (uint32_t)in[3 * i + 1] << 8 | \
                                    (uint32_t)in[3 * i + 2] << 16);            \
            return;                                                            \
        }                                                                      \
        default: {                                                             \
            const uint64_t mask = (1ull << r) - 1;                             \
            size_t i = 0;                                                      \
            /* bulk: the 8-byte load stays inside the input */                 \
            size_t bulk = inlen >= 8 ? ((inlen - 8) * 8) / r : 0;              \
            bulk = FL_MIN(bulk, n);                                            \
            for (; i < bulk; i++) {                                            \
                size_t bit = i * r;                                            \
                acc[i] OP(uint32_t)((ld64(in + (bit >> 3)) >> (bit & 7)) &     \
                                    mask);                                     \
            }                                                                  \
            for (; i < n; i++)                                                 \
                acc[i] OP bits_get_safe(in, inlen, i, r);                      \
            return;                                                            \
        }                                                                      \
        }                                                                      \
    } while (0)

/* Built for AVX-512 (x86-64-v4), AVX2 and baseline x86-64, chosen at load
 * time. Not under ThreadSanitizer: the chooser is an ifunc resolver that
 * runs during relocation, before the sanitizer's runtime exists, and its
 * instrumentation would crash the program at load. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&         \
    !defined(__SANITIZE_THREAD__)
#define SA_CLONES                                                              \
    __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define SA_CLONES
#endif

SA_CLONES static void bits_add(uint32_t *restrict acc,
                               const uint8_t *restrict in, size_t inlen,
                               size_t n, unsigned r)
{
    SA_BITS_LOOP(+=);
}

SA_CLONES static void bits_sub(uint32_t *restrict acc,
                               const uint8_t *restrict in, size_t inlen,
                               size_t n, unsigned r)
{
    SA_BITS_LOOP(-=);
}

/* Any other r: groups of 8 values (r bytes) with r a compile-time
 * constant, so every offset and shift in a group is fixed; one kernel per
 * r and sign. Each handles the groups whose 8-byte loads stay inside the
 * input and returns how many values it did. */
#define SA_GROUP_KERNEL(R, NAME, OP)                                           \
    SA_CLONES static size_t NAME##_##R(uint32_t *restrict acc,                 \
                                       const uint8_t *restrict in,             \
                                       size_t inlen, size_t n)                 \
    {                                                                          \
        const uint64_t mask = (1ull << (R)) - 1;                               \
        size_t g = 0, ng = n / 8;                                              \
        if (inlen >= (size_t)(R) + 8)                                          \
            ng = FL_MIN(ng, (inlen - (R)-8) / (R) + 1);                        \
        else                                                                   \
            ng = 0;                                                            \
        for (; g < ng; g++) {                                                  \
            const uint8_t *p = in + g * (R);                                   \
            uint32_t *a = acc + 8 * g;                                         \
            for (unsigned j = 0; j < 8; j++)                                   \
                a[j] OP(uint32_t)(                                             \
                    (ld64(p + (j * (R)) / 8) >> ((j * (R)) % 8)) & mask);      \
        }                                                                      \
        return 8 * ng;                                                         \
    }

/* clang-format off */
#define SA_FOR_R(X)                                                            \
    X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(9) X(10) X(11) X(12) X(13) X(14)      \
    X(15) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(25) X(26) X(27) X(28)    \
    X(29) X(30) X(31)
/* clang-format on */
#define SA_KERNELS(R)                                                          \
    SA_GROUP_KERNEL(R, group_add, +=)                                          \
    SA_GROUP_KERNEL(R, group_sub, -=)
SA_FOR_R(SA_KERNELS)

typedef size_t (*sa_group_fn)(uint32_t *restrict, const uint8_t *restrict,
                              size_t, size_t);
#define SA_ADD_ENTRY(R) [R] = group_add_##R,
#define SA_SUB_ENTRY(R) [R] = group_sub_##R,
static const sa_group_fn sa_group_add[33] = {SA_FOR_R(SA_ADD_ENTRY)};
static const sa_group_fn sa_group_sub[33] = {SA_FOR_R(SA_SUB_ENTRY)};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SA_HAVE_AVX2_24 1
/* r = 24 with AVX2: 8 values from 24 bytes; the dwords are moved so that
 * each 128-bit lane holds 12 of those bytes, then spread to 4 x 32 bits.
 * Handles the prefix whose 32-byte loads stay inside the input; returns
 * how many values it did. */
__attribute__((target("avx2"))) static size_t
bits24_avx2(uint32_t *restrict acc, const uint8_t *restrict in, size_t inlen,
            size_t n, int negate)
{
    const __m256i perm = _mm256_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6);
    const __m256i shuf = _mm256_setr_epi8(
        0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, /* lane 0 */
        0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    size_t i = 0;
    for (; i + 8 <= n && 3 * i + 32 <= inlen; i += 8) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(in + 3 * i));
        b = _mm256_permutevar8x32_epi32(b, perm);
        b = _mm256_shuffle_epi8(b, shuf);
        __m256i a = _mm256_loadu_si256((const __m256i *)(acc + i));
        a = negate ? _mm256_sub_epi32(a, b) : _mm256_add_epi32(a, b);
        _mm256_storeu_si256((__m256i *)(acc + i), a);
    }
    return i;
}
#endif

void sa_bits_add(uint32_t *acc, const uint8_t *in, size_t inlen, size_t n,
                 unsigned r, int negate)
{
    FL_ASSERT(r >= 1 && r <= 32);
    FL_ASSERT(inlen >= (n * r + 7) / 8);
#ifdef SA_HAVE_AVX2_24
    if (r == 24 && __builtin_cpu_supports("avx2")) {
        size_t done = bits24_avx2(acc, in, inlen, n, negate);
        acc += done;
        in += 3 * done;
        inlen -= 3 * done;
        n -= done;
    }
#endif
    sa_group_fn grp = negate ? sa_group_sub[r] : sa_group_add[r];
    if (grp != NULL) {
        size_t done = grp(acc, in, inlen, n); /* a multiple of 8 values */
        acc += done;
        in += done / 8 * r;
        inlen -= done / 8 * r;
        n -= done;
    }
    if (negate)
        bits_sub(acc, in, inlen, n, r);
    else
        bits_add(acc, in, inlen, n, r);
}

static int prg_init(sa_prg_t *p, const uint8_t seed[32], int prg, unsigned r,
                    size_t start)
{
    uint8_t iv[16] = {0};
    uint64_t bitpos = (uint64_t)start * r;
    EVP_CIPHER *c;
    if (prg == FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR) {
        /* a 128-bit big-endian block counter */
        uint64_t block = bitpos / 128;
        sa_be64(iv + 8, block);
        c = p->aes;
    } else if (prg == FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20) {
        /* OpenSSL's IV: 32-bit little-endian block counter || nonce */
        uint64_t block = bitpos / 512;
        if (block > UINT32_MAX)
            return FL_ERANGE;
        iv[0] = (uint8_t)block;
        iv[1] = (uint8_t)(block >> 8);
        iv[2] = (uint8_t)(block >> 16);
        iv[3] = (uint8_t)(block >> 24);
        c = p->chacha;
    } else {
        return FL_EINVAL;
    }
    if (EVP_EncryptInit_ex2(p->ctx, c, seed, iv, NULL) != 1)
        return FL_ECRYPTO;
    return 0;
}

int sa_prg_add(sa_prg_t *p, uint32_t *acc, size_t start, size_t n,
               const uint8_t seed[32], int prg, unsigned r, int negate)
{
    if (r < 1 || r > 32 || start % FL_SECAGG_PART_ALIGN != 0 ||
        n > FL_SECAGG_MAX_DIM || start > FL_SECAGG_MAX_DIM)
        return FL_EINVAL;
    int rc = prg_init(p, seed, prg, r, start);
    if (rc != 0)
        return rc;
    for (size_t off = 0; off < n; off += SA_CHUNK) {
        size_t m = FL_MIN((size_t)SA_CHUNK, n - off);
        size_t bytes = (m * r + 7) / 8;
        int outl = 0;
        if (EVP_EncryptUpdate(p->ctx, p->ks, &outl, sa_zero, (int)bytes) != 1 ||
            (size_t)outl != bytes) {
            rc = FL_ECRYPTO;
            break;
        }
        sa_bits_add(acc + off, p->ks, bytes, m, r, negate);
    }
    sodium_memzero(p->ks, sizeof p->ks);
    return rc;
}

int fl_secagg_prg_add(uint32_t *acc, size_t start, size_t n,
                      const uint8_t seed[FL_SECAGG_KEY_BYTES], int prg,
                      unsigned r, int negate)
{
    sa_prg_t *p = sa_prg_new();
    if (p == NULL)
        return FL_ECRYPTO;
    int rc = sa_prg_add(p, acc, start, n, seed, prg, r, negate);
    sa_prg_free(p);
    return rc;
}

int fl_secagg_prg_expand(uint32_t *out, size_t n,
                         const uint8_t seed[FL_SECAGG_KEY_BYTES], int prg,
                         unsigned r)
{
    if (n > FL_SECAGG_MAX_DIM)
        return FL_EINVAL;
    memset(out, 0, n * sizeof *out);
    int rc = fl_secagg_prg_add(out, 0, n, seed, prg, r, 0);
    if (rc == 0 && r < 32)
        for (size_t i = 0; i < n; i++)
            out[i] &= (1u << r) - 1;
    return rc;
}
