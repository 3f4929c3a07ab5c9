/* tests/unit/check_secagg.c — secure aggregation: known answers for the
 * derivations, the mask PRG, Shamir and the graph (tests/vectors/
 * secagg_kat.txt, computed by tests/tools/secagg_kat.py from the spec in
 * secagg/secagg.h, not from this code); whole rounds with random dropouts
 * at every phase; hostile, replayed, duplicated and out-of-order messages. */
#include "secagg/secagg.h"
#include "tests/unit/testutil.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- the vector file -------------------------------------------------------
 */

static char *kat_text;

static void kat_load(void)
{
    char path[4096];
    uint8_t *data = NULL;
    size_t len = 0;
    if (kat_text != NULL)
        return;
    fl_test_srcpath(path, sizeof path, "tests/vectors/secagg_kat.txt");
    ck_assert_int_eq(fl_file_read_all(path, 1 << 20, &data, &len), 0);
    kat_text = (char *)data;
}

/* The value of "name = value" (into out, NUL-terminated). */
static const char *kat(const char *name, char *out, size_t outlen)
{
    kat_load();
    size_t nl = strlen(name);
    for (const char *p = kat_text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl + 3 && memcmp(p, name, nl) == 0 &&
            memcmp(p + nl, " = ", 3) == 0) {
            size_t vl = ll - nl - 3;
            ck_assert_uint_lt(vl, outlen);
            memcpy(out, p + nl + 3, vl);
            out[vl] = 0;
            return out;
        }
        p = eol ? eol + 1 : NULL;
    }
    ck_abort_msg("no vector %s", name);
    return NULL;
}

static void kat_hex(const char *name, uint8_t *out, size_t n)
{
    char buf[4096];
    kat(name, buf, sizeof buf);
    ck_assert_int_eq(fl_hex_decode(out, n, buf, strlen(buf)), 0);
}

static unsigned long kat_ulong(const char *name)
{
    char buf[64];
    return strtoul(kat(name, buf, sizeof buf), NULL, 10);
}

static size_t kat_list(const char *name, uint32_t *out, size_t max)
{
    char buf[4096];
    size_t m = 0;
    char *p = (char *)kat(name, buf, sizeof buf);
    while (*p && m < max) {
        out[m++] = (uint32_t)strtoul(p, &p, 10);
        if (*p == ',')
            p++;
    }
    return m;
}

/* ---- known answers
 * ------------------------------------------------------------ */

typedef struct {
    uint8_t c_sk[32], c_pk[32], s_sk[32], s_pk[32], id_pk[32], id_sk[64];
    uint8_t sig[64];
} kat_client_t;

static void kat_client(uint32_t i, kat_client_t *c)
{
    char name[64];
    uint8_t seed[32];
    snprintf(name, sizeof name, "client%u_c_sk_seed", i);
    kat_hex(name, c->c_sk, 32);
    snprintf(name, sizeof name, "client%u_s_sk_seed", i);
    kat_hex(name, c->s_sk, 32);
    snprintf(name, sizeof name, "client%u_id_seed", i);
    kat_hex(name, seed, 32);
    crypto_sign_seed_keypair(c->id_pk, c->id_sk, seed);
    crypto_scalarmult_base(c->c_pk, c->c_sk);
    crypto_scalarmult_base(c->s_pk, c->s_sk);
}

START_TEST(test_kat_derivations)
{
    ck_assert_int_ge(sodium_init(), 0);
    uint8_t nonce[32], want[64], got[64];
    kat_hex("round_nonce", nonce, 32);
    uint64_t round = kat_ulong("round");
    kat_client_t cl[4];
    Flotilla__AdvertiseKeys adv[3];
    const Flotilla__AdvertiseKeys *ptrs[3];
    const uint32_t order[3] = {3, 1, 2};
    for (int j = 0; j < 3; j++) {
        uint32_t i = order[j];
        char name[64];
        kat_client(i, &cl[i]);
        snprintf(name, sizeof name, "client%u_c_pk", i);
        kat_hex(name, want, 32);
        ck_assert_mem_eq(want, cl[i].c_pk, 32);
        snprintf(name, sizeof name, "client%u_s_pk", i);
        kat_hex(name, want, 32);
        ck_assert_mem_eq(want, cl[i].s_pk, 32);
        snprintf(name, sizeof name, "client%u_id_pk", i);
        kat_hex(name, want, 32);
        ck_assert_mem_eq(want, cl[i].id_pk, 32);
        /* the signed bytes: Ed25519 is deterministic */
        uint8_t sb[FL_SECAGG_ADVERTISE_SIGNED_BYTES];
        fl_secagg_advertise_signed_bytes(sb, nonce, round, i, cl[i].c_pk,
                                         cl[i].s_pk);
        crypto_sign_detached(got, NULL, sb, sizeof sb, cl[i].id_sk);
        snprintf(name, sizeof name, "client%u_signature", i);
        kat_hex(name, want, 64);
        ck_assert_mem_eq(want, got, 64);
        flotilla__advertise_keys__init(&adv[j]);
        adv[j].client_id = i;
        adv[j].c_pk = (ProtobufCBinaryData){32, cl[i].c_pk};
        adv[j].s_pk = (ProtobufCBinaryData){32, cl[i].s_pk};
        adv[j].identity_key = (ProtobufCBinaryData){32, cl[i].id_pk};
        ptrs[j] = &adv[j];
    }
    uint8_t session[32];
    ck_assert_int_eq(fl_secagg_session_id(session, nonce, round, ptrs, 3), 0);
    kat_hex("session_id", want, 32);
    ck_assert_mem_eq(want, session, 32);

    /* the mask seed is the same from both ends */
    kat_hex("mask_seed_3_1", want, 32);
    ck_assert_int_eq(
        fl_secagg_derive_mask_seed(got, cl[3].s_sk, cl[1].s_pk, session, 3, 1),
        0);
    ck_assert_mem_eq(want, got, 32);
    ck_assert_int_eq(
        fl_secagg_derive_mask_seed(got, cl[1].s_sk, cl[3].s_pk, session, 1, 3),
        0);
    ck_assert_mem_eq(want, got, 32);
    /* share keys are directional */
    kat_hex("share_key_1_to_2", want, 32);
    ck_assert_int_eq(
        fl_secagg_derive_share_key(got, cl[1].c_sk, cl[2].c_pk, session, 1, 2),
        0);
    ck_assert_mem_eq(want, got, 32);
    kat_hex("share_key_2_to_1", want, 32);
    ck_assert_int_eq(
        fl_secagg_derive_share_key(got, cl[2].c_sk, cl[1].c_pk, session, 2, 1),
        0);
    ck_assert_mem_eq(want, got, 32);
    /* a share ciphertext made by the independent implementation opens
     * with the documented associated data, and only with it */
    uint8_t key[32], pt[80], ct[FL_SECAGG_CT_BYTES], opened[80];
    kat_hex("share_aead_key", key, 32);
    kat_hex("share_aead_plaintext", pt, 80);
    kat_hex("share_aead_ciphertext", ct, sizeof ct);
    ck_assert_int_eq(
        fl_secagg_share_open(opened, key, session, round, 1, 2, ct, sizeof ct),
        0);
    ck_assert_mem_eq(opened, pt, 80);
    ck_assert_int_eq(
        fl_secagg_share_open(opened, key, session, round, 2, 1, ct, sizeof ct),
        FL_EMAC);
    ck_assert_int_eq(fl_secagg_share_open(opened, key, session, round + 1, 1, 2,
                                          ct, sizeof ct),
                     FL_EMAC);
    ck_assert_int_eq(fl_secagg_share_open(opened, key, session, round, 1, 2, ct,
                                          sizeof ct - 1),
                     FL_EFORMAT);
    /* and our own sealing opens back */
    ck_assert_int_eq(fl_secagg_share_seal(ct, key, session, round, 3, 1, pt),
                     0);
    ck_assert_int_eq(
        fl_secagg_share_open(opened, key, session, round, 3, 1, ct, sizeof ct),
        0);
    ck_assert_mem_eq(opened, pt, 80);
    /* a low-order point is refused */
    uint8_t zero[32] = {0};
    ck_assert_int_eq(
        fl_secagg_derive_mask_seed(got, cl[1].s_sk, zero, session, 1, 3),
        FL_ECRYPTO);
    /* duplicate ids in the session list */
    adv[1].client_id = 3;
    ck_assert_int_eq(fl_secagg_session_id(session, nonce, round, ptrs, 3),
                     FL_EDUPLICATE);
}
END_TEST

START_TEST(test_kat_prg)
{
    static const unsigned rs[] = {1, 7, 8, 13, 16, 24, 31, 32};
    static const char *names[] = {"aes", "chacha"};
    static const int prgs[] = {FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR,
                               FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20};
    uint8_t seed[32], want[32], got[32];
    kat_hex("prg_seed", seed, 32);
    size_t n = kat_ulong("prg_n");
    uint32_t *v = fl_calloc(n, sizeof *v), *w = fl_calloc(n, sizeof *w);
    ck_assert_ptr_nonnull(v);
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < FL_ARRAY_LEN(rs); i++) {
            char name[64];
            unsigned r = rs[i];
            ck_assert_int_eq(fl_secagg_prg_expand(v, n, seed, prgs[p], r), 0);
            uint8_t *raw = fl_malloc(4 * n);
            for (size_t j = 0; j < n; j++) { /* little-endian words */
                raw[4 * j] = (uint8_t)v[j];
                raw[4 * j + 1] = (uint8_t)(v[j] >> 8);
                raw[4 * j + 2] = (uint8_t)(v[j] >> 16);
                raw[4 * j + 3] = (uint8_t)(v[j] >> 24);
            }
            snprintf(name, sizeof name, "prg_%s_r%u_first8", names[p], r);
            kat_hex(name, want, 32);
            ck_assert_mem_eq(want, raw, 32);
            snprintf(name, sizeof name, "prg_%s_r%u_blake2b", names[p], r);
            kat_hex(name, want, 32);
            crypto_generichash(got, 32, raw, 4 * n, NULL, 0);
            ck_assert_msg(memcmp(want, got, 32) == 0, "%s", name);
            fl_free(raw);
            /* a part that starts at an aligned offset continues the stream */
            size_t start = 2 * FL_SECAGG_PART_ALIGN, len = n - start;
            memset(w, 0, n * sizeof *w);
            ck_assert_int_eq(
                fl_secagg_prg_add(w, start, len, seed, prgs[p], r, 0), 0);
            for (size_t j = 0; j < len; j++)
                ck_assert_uint_eq(w[j] & (uint32_t)((1ull << r) - 1),
                                  v[start + j]);
            /* negate undoes add */
            ck_assert_int_eq(
                fl_secagg_prg_add(w, start, len, seed, prgs[p], r, 1), 0);
            for (size_t j = 0; j < len; j++)
                ck_assert_uint_eq(w[j], 0);
        }
    ck_assert_int_eq(fl_secagg_prg_add(w, 3, 10, seed, prgs[0], 8, 0),
                     FL_EINVAL);
    ck_assert_int_eq(fl_secagg_prg_expand(v, 10, seed, 7, 8), FL_EINVAL);
    fl_free(v);
    fl_free(w);
}
END_TEST

START_TEST(test_kat_shamir)
{
    uint8_t secret[32], coins[512], shares[5 * 40], want[40], back[32];
    uint32_t xs[8];
    kat_hex("shamir_secret", secret, 32);
    uint32_t t = (uint32_t)kat_ulong("shamir_t");
    size_t nx = kat_list("shamir_xs", xs, 8);
    ck_assert_uint_eq(nx, 5);
    kat_hex("shamir_coins", coins, 8 * 41);
    ck_assert_int_eq(fl_secagg_shamir_split_coins(shares, 40, secret, 32, t, xs,
                                                  nx, coins, 8 * 41),
                     0);
    for (size_t i = 0; i < nx; i++) {
        char name[64];
        snprintf(name, sizeof name, "shamir_share_x%u", xs[i]);
        kat_hex(name, want, 40);
        ck_assert_mem_eq(want, shares + 40 * i, 40);
    }
    /* any t shares give the secret back */
    for (size_t a = 0; a < nx; a++)
        for (size_t b = a + 1; b < nx; b++)
            for (size_t c = b + 1; c < nx; c++) {
                uint32_t sx[3] = {xs[a], xs[b], xs[c]};
                uint8_t sh[3 * 40];
                memcpy(sh, shares + 40 * a, 40);
                memcpy(sh + 40, shares + 40 * b, 40);
                memcpy(sh + 80, shares + 40 * c, 40);
                ck_assert_int_eq(
                    fl_secagg_shamir_combine(back, 32, t, sx, sh, 40, 3), 0);
                ck_assert_mem_eq(back, secret, 32);
            }
    /* too few coins */
    ck_assert_int_eq(fl_secagg_shamir_split_coins(shares, 40, secret, 32, t, xs,
                                                  nx, coins, 16),
                     FL_ERANGE);
}
END_TEST

START_TEST(test_kat_graph)
{
    uint32_t parts[64], want[64], got[64];
    size_t n = kat_list("graph_participants", parts, 64);
    Flotilla__SecAggConfig c = FLOTILLA__SEC_AGG_CONFIG__INIT;
    c.graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY;
    c.graph_seed = kat_ulong("graph_seed");
    c.degree = (uint32_t)kat_ulong("graph_k");
    c.threshold = 2;
    c.ring_bits = 16;
    c.n_participants = n;
    c.participants = parts;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "graph_neighbors_%u", parts[i]);
        size_t m = kat_list(name, want, 64);
        ck_assert_int_eq(fl_secagg_graph_neighbors(&c, parts[i], got, 64),
                         (int)m);
        ck_assert_mem_eq(want, got, m * sizeof *got);
    }
    ck_assert_int_eq(fl_secagg_graph_neighbors(&c, 11, got, 64), FL_ENOENT);
}
END_TEST

/* ---- Shamir behaviour
 * ------------------------------------------------------------ */

START_TEST(test_shamir_refusals)
{
    uint8_t secret[45], back[45], shares[6 * 56];
    uint32_t xs[6] = {7, 300, 1, 70000, 4000000000u, 2};
    fl_test_fill(secret, sizeof secret, 9);
    /* 45 bytes: 7 chunks, share_len 56 */
    ck_assert_int_eq(fl_secagg_shamir_split(shares, 56, secret, 45, 4, xs, 6),
                     0);
    ck_assert_int_eq(
        fl_secagg_shamir_combine(back, 45, 4, xs + 2, shares + 2 * 56, 56, 4),
        0);
    ck_assert_mem_eq(back, secret, 45);
    /* missing shares */
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, xs, shares, 56, 3),
                     FL_ETHRESHOLD);
    /* a duplicate point */
    uint32_t dx[4] = {7, 300, 7, 1};
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, dx, shares, 56, 4),
                     FL_EDUPLICATE);
    ck_assert_int_eq(fl_secagg_shamir_split(shares, 56, secret, 45, 4, dx, 4),
                     FL_EDUPLICATE);
    /* x = 0 */
    uint32_t zx[4] = {7, 0, 1, 2};
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, zx, shares, 56, 4),
                     FL_EINVAL);
    /* bad length */
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, xs, shares, 40, 4),
                     FL_EINVAL);
    /* an element >= p */
    uint8_t bad[4 * 56];
    memcpy(bad, shares, sizeof bad);
    memset(bad + 56, 0xff, 8);
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, xs, bad, 56, 4),
                     FL_EFORMAT);
    /* a corrupted share: detected by the chunk range (almost surely) */
    memcpy(bad, shares, sizeof bad);
    bad[56] ^= 1;
    ck_assert_int_eq(fl_secagg_shamir_combine(back, 45, 4, xs, bad, 56, 4),
                     FL_ECRYPTO);
    for (size_t i = 0; i < 45; i++)
        ck_assert_uint_eq(back[i], 0); /* wiped on error */
    /* fresh polynomials: two splits of one secret differ */
    uint8_t again[6 * 56];
    ck_assert_int_eq(fl_secagg_shamir_split(again, 56, secret, 45, 4, xs, 6),
                     0);
    ck_assert(memcmp(again, shares, sizeof again) != 0);
    /* t = 1 is the secret itself; t > n refused */
    ck_assert_int_eq(fl_secagg_shamir_split(shares, 56, secret, 45, 7, xs, 6),
                     FL_EINVAL);
}
END_TEST

/* ---- the parameter finder
 * --------------------------------------------------------- */

START_TEST(test_params)
{
    fl_secagg_params_t p;
    ck_assert_int_eq(fl_secagg_params_find(1000, 0.05, 0.05, &p), 0);
    ck_assert_int_eq(p.graph, FLOTILLA__GRAPH_KIND__GRAPH_HARARY);
    ck_assert_uint_eq(p.degree, 30); /* as Google's FCP finds */
    ck_assert_uint_eq(p.threshold, 17);
    ck_assert_int_eq(fl_secagg_params_find(30, 0.05, 0.05, &p), 0);
    ck_assert_int_eq(p.graph, FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE);
    ck_assert_uint_eq(p.degree, 29);
    ck_assert_uint_eq(p.threshold, 15);
    /* more dropout or corruption never lowers the degree */
    uint32_t last = 0;
    for (double d = 0.0; d <= 0.3001; d += 0.05) {
        ck_assert_int_eq(fl_secagg_params_harary(500, 0.05, d, &p), 0);
        ck_assert_uint_ge(p.degree, last);
        ck_assert_uint_le(p.threshold, p.degree);
        ck_assert_uint_ge(p.threshold, 2);
        last = p.degree;
    }
    ck_assert_int_eq(fl_secagg_params_find(2, 0.05, 0.05, &p), FL_EINVAL);
    ck_assert_int_eq(fl_secagg_params_find(100, 0.5, 0.5, &p), FL_EINVAL);
    ck_assert_int_eq(fl_secagg_params_find(100, -0.1, 0.1, &p), FL_EINVAL);
}
END_TEST

START_TEST(test_graph_symmetric)
{
    uint32_t parts[300], nb[300], nb2[300];
    for (int i = 0; i < 300; i++)
        parts[i] = (uint32_t)(i * 7 + 1);
    Flotilla__SecAggConfig c = FLOTILLA__SEC_AGG_CONFIG__INIT;
    c.graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY;
    c.graph_seed = 1234;
    c.degree = 20;
    c.threshold = 11;
    c.ring_bits = 20;
    c.n_participants = 300;
    c.participants = parts;
    for (int i = 0; i < 300; i++) {
        int m = fl_secagg_graph_neighbors(&c, parts[i], nb, 300);
        ck_assert_int_eq(m, 20);
        for (int j = 0; j < m; j++) {
            ck_assert_uint_ne(nb[j], parts[i]);
            for (int l = 0; l < j; l++)
                ck_assert_uint_ne(nb[j], nb[l]);
            int m2 = fl_secagg_graph_neighbors(&c, nb[j], nb2, 300);
            int found = 0;
            for (int l = 0; l < m2; l++)
                found |= nb2[l] == parts[i];
            ck_assert(found);
        }
    }
    /* odd degree, degree too large, duplicate ids */
    c.degree = 21;
    ck_assert_int_eq(fl_secagg_config_check(&c), FL_EINVAL);
    c.degree = 299;
    ck_assert_int_eq(fl_secagg_config_check(&c), FL_EINVAL);
    c.graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
    ck_assert_int_eq(fl_secagg_config_check(&c), 0);
    parts[5] = parts[6];
    ck_assert_int_eq(fl_secagg_graph_neighbors(&c, parts[0], nb, 300),
                     FL_EDUPLICATE);
}
END_TEST

/* ---- whole rounds
 * ------------------------------------------------------------------ */

/* A message passed through the wire format, as a real driver would. */
static void *wire(const void *msg)
{
    const ProtobufCMessage *m = msg;
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = fl_malloc(len ? len : 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(protobuf_c_message_pack(m, buf), len);
    void *copy = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
    ck_assert_ptr_nonnull(copy);
    fl_free(buf);
    fl_secagg_msg_free((void *)msg);
    return copy;
}

static void unwire(void *m)
{
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
}

/* Where a client stops taking part in a whole round. */
enum {
    AT_ADVERTISE = 0, /* never advertises */
    AT_SHARE,         /* its ShareKeysResponse is lost */
    AT_MASKED,        /* shared keys, sends no input */
    AT_UNMASK,        /* sent its input, does not answer the unmasking */
    AT_END,           /* takes part to the end */
};

typedef struct {
    uint32_t n;
    unsigned r;
    int graph;
    int prg;
    uint32_t degree, threshold;
    size_t dim;
    uint64_t seed;
    double drop[4]; /* before advertise, share keys, masked input, unmask */
    const uint8_t *stop; /* NULL, or per client: AT_* below */
    unsigned nparts;
    int threads; /* run the unmasking parts on threads */
} spec_t;

typedef struct {
    fl_secagg_server_t *srv;
    unsigned part, nparts;
    int stage; /* 0 derive, 1 unmask */
    int rc;
} part_job_t;

static void *part_thread(void *arg)
{
    part_job_t *j = arg;
    j->rc = j->stage == 0
                ? fl_secagg_server_derive_part(j->srv, j->part, j->nparts)
                : fl_secagg_server_unmask_part(j->srv, j->part, j->nparts);
    return NULL;
}

typedef struct {
    fl_secagg_round_t round;
    Flotilla__SecAggConfig cfg;
    uint32_t *ids;
    uint8_t (*idpk)[32];
    uint8_t (*idsk)[64];
    fl_secagg_client_t **cl;
    fl_secagg_server_t *srv;
    uint32_t **x;
} world_t;

static void world_init(world_t *w, const spec_t *sp)
{
    memset(w, 0, sizeof *w);
    flotilla__sec_agg_config__init(&w->cfg);
    w->cfg.enabled = 1;
    w->cfg.threshold = sp->threshold;
    w->cfg.degree = sp->degree;
    w->cfg.ring_bits = sp->r;
    w->cfg.prg = sp->prg;
    w->cfg.graph = sp->graph;
    w->cfg.graph_seed = sp->seed * 31 + 5;
    w->ids = fl_calloc(sp->n, sizeof *w->ids);
    w->idpk = fl_calloc(sp->n, 32);
    w->idsk = fl_calloc(sp->n, 64);
    w->cl = fl_calloc(sp->n, sizeof *w->cl);
    w->x = fl_calloc(sp->n, sizeof *w->x);
    for (uint32_t i = 0; i < sp->n; i++) {
        w->ids[i] = 100 + 3 * i; /* ids need not be 1..n */
        crypto_sign_keypair(w->idpk[i], w->idsk[i]);
    }
    w->cfg.n_participants = sp->n;
    w->cfg.participants = w->ids;
    w->round.round = 42;
    fl_test_fill(w->round.round_nonce, 32, sp->seed);
    w->round.dim = sp->dim;
    w->round.config = &w->cfg;
    ck_assert_int_eq(
        fl_secagg_server_new(&w->round, (const uint8_t(*)[32])w->idpk, &w->srv),
        0);
    for (uint32_t i = 0; i < sp->n; i++) {
        ck_assert_int_eq(
            fl_secagg_client_new(&w->round, w->ids[i], w->idsk[i], &w->cl[i]),
            0);
        w->x[i] = fl_calloc(sp->dim, sizeof(uint32_t));
        fl_rng_t rng;
        fl_rng_seed(&rng, sp->seed * 1000 + i);
        for (size_t j = 0; j < sp->dim; j++)
            w->x[i][j] =
                (uint32_t)(fl_rng_next(&rng) & (uint32_t)((1ull << sp->r) - 1));
    }
}

static void world_free(world_t *w, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        fl_secagg_client_free(w->cl[i]);
        fl_free(w->x[i]);
    }
    fl_secagg_server_free(w->srv);
    fl_free(w->ids);
    fl_free(w->idpk);
    fl_free(w->idsk);
    fl_free(w->cl);
    fl_free(w->x);
}

/* The model of the server's rule at a close, written independently of
 * secagg/server.c: a client of `in` with fewer than t neighbours in `in`
 * leaves, rescanning until none does. Returns how many left. */
static uint32_t model_prune(const world_t *w, const spec_t *sp, uint8_t *in,
                            uint32_t *nb)
{
    uint32_t left = 0;
    int changed;
    do {
        changed = 0;
        for (uint32_t i = 0; i < sp->n; i++) {
            if (!in[i])
                continue;
            int m = fl_secagg_graph_neighbors(&w->cfg, w->ids[i], nb, sp->n);
            uint32_t live = 0;
            for (int j = 0; j < m; j++)
                live += in[(nb[j] - 100) / 3];
            if (live < sp->threshold) {
                in[i] = 0;
                left++;
                changed = 1;
            }
        }
    } while (changed);
    return left;
}

static uint32_t model_count(const uint8_t *in, uint32_t n)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        k += in[i];
    return k;
}

/* Whether every secret the unmasking needs has t holders in `holders`: the
 * b_v of every client v that sent its input, and the s_sk_v of every
 * client v whose shares went out (`shared`) and that a survivor masked
 * with (a neighbour sent its input). */
static int model_recoverable(const world_t *w, const spec_t *sp,
                             const uint8_t *shared, const uint8_t *input,
                             const uint8_t *holders, uint32_t *nb)
{
    for (uint32_t v = 0; v < sp->n; v++) {
        if (!shared[v])
            continue;
        int m = fl_secagg_graph_neighbors(&w->cfg, w->ids[v], nb, sp->n);
        uint32_t near = 0, have = 0;
        for (int j = 0; j < m; j++) {
            near += input[(nb[j] - 100) / 3];
            have += holders[(nb[j] - 100) / 3];
        }
        if ((input[v] || near > 0) && have < sp->threshold)
            return 0;
    }
    return 1;
}

/* The server's account of a close agrees with what the test saw. */
static void check_info(const fl_secagg_server_t *srv,
                       fl_secagg_close_info_t *info, fl_secagg_phase_t phase,
                       int rc, uint32_t pruned, uint32_t remaining)
{
    fl_secagg_server_close_info(srv, info);
    ck_assert_int_eq(info->phase, phase);
    ck_assert_int_eq(info->rc, rc);
    ck_assert_uint_eq(info->pruned, pruned);
    ck_assert_uint_eq(info->remaining, rc == 0 ? remaining : 0);
    if (rc == FL_ETHRESHOLD)
        ck_assert_int_ne(info->why, FL_SECAGG_SHORT_NONE);
}

/* What a round did. */
typedef struct {
    int ok;             /* the round ended with the exact sum */
    int aborted_at;     /* the phase whose close aborted, or -1 */
    uint32_t pruned[2]; /* left out by advertise / share keys close */
    uint32_t survivors; /* inputs in the sum */
    fl_secagg_close_info_t info[4]; /* each close's account */
} outcome_t;

/* Runs a round where client i stops at sp->stop[i] (or, without a plan, at
 * a random phase drawn with the probabilities sp->drop). At each close the
 * server must do exactly what the model above says: leave out the same
 * clients (their requests answer FL_ENOENT), and abort with FL_ETHRESHOLD
 * exactly when the round cannot end. No client is ever sent a request it
 * refuses, and a round that ends gives the survivors' exact sum. Returns
 * the server's final code. */
static int run_round(const spec_t *sp, outcome_t *o)
{
    world_t w;
    fl_rng_t rng;
    int rc = 0;
    world_init(&w, sp);
    fl_rng_seed(&rng, sp->seed);
    uint32_t n = sp->n, t = sp->threshold;
    memset(o, 0, sizeof *o);
    o->aborted_at = -1;
    uint8_t *stop = fl_calloc(n, 1), *adv = fl_calloc(n, 1);
    uint8_t *ask1 = fl_calloc(n, 1), *shared = fl_calloc(n, 1);
    uint8_t *ask2 = fl_calloc(n, 1), *input = fl_calloc(n, 1);
    uint8_t *unmasked = fl_calloc(n, 1);
    uint32_t *nb = fl_calloc(n, sizeof(uint32_t));
    for (uint32_t i = 0; i < n; i++) {
        if (sp->stop != NULL) {
            stop[i] = sp->stop[i];
            continue;
        }
        stop[i] = AT_END;
        for (uint8_t p = 0; p < 4; p++)
            if (fl_rng_uniform(&rng) < sp->drop[p]) {
                stop[i] = p;
                break;
            }
    }

    /* phase 0 */
    for (uint32_t i = 0; i < n; i++) {
        if (stop[i] == AT_ADVERTISE)
            continue;
        Flotilla__AdvertiseKeys *m;
        ck_assert_int_eq(fl_secagg_client_advertise(w.cl[i], &m), 0);
        m = wire(m);
        ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[i], m),
                         0);
        unwire(m);
        adv[i] = ask1[i] = 1;
    }
    o->pruned[0] = model_prune(&w, sp, ask1, nb);
    rc = fl_secagg_server_advertise_close(w.srv);
    ck_assert_int_eq(rc, model_count(ask1, n) < t ? FL_ETHRESHOLD : 0);
    check_info(w.srv, &o->info[0], FL_SECAGG_PHASE_ADVERTISE, rc, o->pruned[0],
               model_count(ask1, n));
    if (rc != 0) {
        o->aborted_at = FL_SECAGG_PHASE_ADVERTISE;
        goto out;
    }

    /* phase 1: those who stop here lose their answer */
    for (uint32_t i = 0; i < n; i++) {
        if (!adv[i])
            continue;
        Flotilla__ShareKeysRequest *q;
        Flotilla__ShareKeysResponse *m;
        rc = fl_secagg_server_share_keys_request(w.srv, w.ids[i], &q);
        if (!ask1[i]) { /* left out: it would have refused */
            ck_assert_int_eq(rc, FL_ENOENT);
            continue;
        }
        ck_assert_int_eq(rc, 0);
        q = wire(q);
        ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[i], q, &m), 0);
        unwire(q);
        if (stop[i] == AT_SHARE) {
            fl_secagg_msg_free(m);
            continue;
        }
        m = wire(m);
        ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[i], m),
                         0);
        unwire(m);
        shared[i] = ask2[i] = 1;
    }
    o->pruned[1] = model_prune(&w, sp, ask2, nb);
    rc = fl_secagg_server_share_keys_close(w.srv);
    ck_assert_int_eq(rc, model_count(ask2, n) < t ? FL_ETHRESHOLD : 0);
    check_info(w.srv, &o->info[1], FL_SECAGG_PHASE_SHARE_KEYS, rc, o->pruned[1],
               model_count(ask2, n));
    if (rc != 0) {
        o->aborted_at = FL_SECAGG_PHASE_SHARE_KEYS;
        goto out;
    }

    /* phase 2: those who stop here leave after sharing keys */
    for (uint32_t i = 0; i < n; i++) {
        if (!shared[i])
            continue;
        Flotilla__MaskedInputRequest *q;
        Flotilla__MaskedInputResponse *m;
        rc = fl_secagg_server_masked_input_request(w.srv, w.ids[i], &q);
        if (!ask2[i]) {
            ck_assert_int_eq(rc, FL_ENOENT);
            continue;
        }
        ck_assert_int_eq(rc, 0);
        if (stop[i] == AT_MASKED) {
            fl_secagg_msg_free(q);
            continue;
        }
        q = wire(q);
        ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[i], q, w.x[i], &m),
                         0);
        unwire(q);
        m = wire(m);
        ck_assert_int_eq(
            fl_secagg_server_handle_masked_input(w.srv, w.ids[i], m), 0);
        unwire(m);
        input[i] = 1;
    }
    rc = fl_secagg_server_masked_input_close(w.srv);
    ck_assert_int_eq(rc,
                     model_count(input, n) < t ||
                             !model_recoverable(&w, sp, ask2, input, input, nb)
                         ? FL_ETHRESHOLD
                         : 0);
    check_info(w.srv, &o->info[2], FL_SECAGG_PHASE_MASKED_INPUT, rc, 0,
               model_count(input, n));
    if (rc != 0) {
        o->aborted_at = FL_SECAGG_PHASE_MASKED_INPUT;
        goto out;
    }

    /* phase 3: those who stop here sent their input, then left */
    for (uint32_t i = 0; i < n; i++) {
        if (!input[i])
            continue;
        Flotilla__UnmaskingRequest *q;
        Flotilla__UnmaskingResponse *m;
        ck_assert_int_eq(
            fl_secagg_server_unmasking_request(w.srv, w.ids[i], &q), 0);
        if (stop[i] == AT_UNMASK) {
            fl_secagg_msg_free(q);
            continue;
        }
        q = wire(q);
        ck_assert_int_eq(fl_secagg_client_unmask(w.cl[i], q, &m), 0);
        unwire(q);
        m = wire(m);
        ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[i], m),
                         0);
        unwire(m);
        unmasked[i] = 1;
    }
    rc = fl_secagg_server_unmasking_close(w.srv);
    ck_assert_int_eq(
        rc, model_count(unmasked, n) < t ||
                    !model_recoverable(&w, sp, ask2, input, unmasked, nb)
                ? FL_ETHRESHOLD
                : 0);
    check_info(w.srv, &o->info[3], FL_SECAGG_PHASE_UNMASKING, rc, 0,
               model_count(unmasked, n));
    if (rc != 0) {
        ck_assert_int_eq(
            fl_secagg_server_result(w.srv, nb, sp->dim, NULL, NULL),
            FL_ETHRESHOLD);
        o->aborted_at = FL_SECAGG_PHASE_UNMASKING;
        goto out;
    }
    unsigned K = sp->nparts ? sp->nparts : 1;
    if (sp->threads) {
        /* each stage's parts on their own threads, as a server would */
        pthread_t th[FL_SECAGG_MAX_PARTS];
        part_job_t jobs[FL_SECAGG_MAX_PARTS];
        for (int stage = 0; stage < 2; stage++) {
            for (unsigned k = 0; k < K; k++) {
                jobs[k] = (part_job_t){w.srv, k, K, stage, -1};
                ck_assert_int_eq(
                    pthread_create(&th[k], NULL, part_thread, &jobs[k]), 0);
            }
            for (unsigned k = 0; k < K; k++) {
                pthread_join(th[k], NULL);
                ck_assert_int_eq(jobs[k].rc, 0);
            }
        }
    } else {
        for (unsigned k = 0; k < K; k++) /* any order */
            ck_assert_int_eq(fl_secagg_server_derive_part(w.srv, K - 1 - k, K),
                             0);
        /* unmasking before every derive part is done is refused */
        ck_assert_int_eq(fl_secagg_server_unmask_finish(w.srv), FL_ESTATE);
        for (unsigned k = 0; k < K; k++)
            ck_assert_int_eq(fl_secagg_server_unmask_part(w.srv, k, K), 0);
    }
    ck_assert_int_eq(fl_secagg_server_unmask_finish(w.srv), 0);

    uint32_t *sum = fl_calloc(sp->dim, sizeof *sum);
    uint32_t *expect = fl_calloc(sp->dim, sizeof *expect);
    uint32_t *surv = fl_calloc(n, sizeof *surv);
    size_t ns = 0;
    ck_assert_int_eq(fl_secagg_server_result(w.srv, sum, sp->dim, surv, &ns),
                     0);
    ck_assert_uint_eq(ns, model_count(input, n));
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!input[i])
            continue;
        ck_assert_uint_eq(surv[k++], w.ids[i]);
        for (size_t j = 0; j < sp->dim; j++)
            expect[j] += w.x[i][j];
    }
    for (size_t j = 0; j < sp->dim; j++)
        ck_assert_uint_eq(sum[j], expect[j] & (uint32_t)((1ull << sp->r) - 1));
    fl_free(sum);
    fl_free(expect);
    fl_free(surv);
    o->ok = 1;
    o->survivors = (uint32_t)ns;
out:
    fl_free(stop);
    fl_free(adv);
    fl_free(ask1);
    fl_free(shared);
    fl_free(ask2);
    fl_free(input);
    fl_free(unmasked);
    fl_free(nb);
    world_free(&w, n);
    return rc;
}

static void spec_params(spec_t *sp, uint32_t n, double delta)
{
    fl_secagg_params_t p;
    ck_assert_int_eq(fl_secagg_params_find(n, 0.05, delta, &p), 0);
    sp->graph = p.graph;
    sp->degree = p.degree;
    sp->threshold = p.threshold;
}

START_TEST(test_round_no_dropout)
{
    static const unsigned rs[] = {32, 24, 16, 13, 1};
    for (size_t i = 0; i < FL_ARRAY_LEN(rs); i++) {
        spec_t sp = {.n = 6,
                     .r = rs[i],
                     .prg = (int)(i % 2),
                     .dim = 1000 + i,
                     .seed = 7 + i};
        spec_params(&sp, sp.n, 0.1);
        outcome_t o;
        ck_assert_int_eq(run_round(&sp, &o), 0);
        ck_assert(o.ok);
    }
}
END_TEST

START_TEST(test_round_harary_parts)
{
    /* a Harary graph, dropouts after key sharing, unmasking in 3 parts */
    spec_t sp = {.n = 90,
                 .r = 20,
                 .prg = FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20,
                 .graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY,
                 .degree = 12,
                 .threshold = 6,
                 .dim = 3000,
                 .seed = 99,
                 .drop = {0.02, 0.02, 0.1, 0.02},
                 .nparts = 3};
    outcome_t o;
    ck_assert_int_eq(run_round(&sp, &o), 0);
    ck_assert(o.ok);
    /* the same on 4 threads, over more coordinates than one tile */
    sp.threads = 1;
    sp.nparts = 4;
    sp.dim = 70000;
    sp.n = 20;
    sp.graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
    sp.degree = 19;
    sp.threshold = 10;
    sp.prg = FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR;
    sp.r = 24;
    ck_assert_int_eq(run_round(&sp, &o), 0);
    ck_assert(o.ok);
}
END_TEST

/* Many seeds: random n, r, PRG, graph and dropouts at every phase. At
 * every close the server does what the model in run_round says (the same
 * clients left out, an abort exactly when the round cannot end); no client
 * is ever sent a request it refuses; whenever the server does not abort,
 * the sum is exact. */
START_TEST(test_round_property)
{
    fl_rng_t rng;
    int succeeded = 0, aborted = 0, pruned = 0;
    fl_rng_seed(&rng, 20261121);
    for (int it = 0; it < 40; it++) {
        spec_t sp = {0};
        /* mostly small cohorts, a few up to 200 (Harary) */
        sp.n = it % 8 == 7 ? 100 + (uint32_t)fl_rng_below(&rng, 101)
                           : 3 + (uint32_t)fl_rng_below(&rng, 40);
        sp.r = 1 + (unsigned)fl_rng_below(&rng, 32);
        sp.prg = (int)fl_rng_below(&rng, 2);
        sp.dim = 1 + fl_rng_below(&rng, 700);
        sp.seed = 1000 + (uint64_t)it;
        sp.nparts = 1 + (unsigned)fl_rng_below(&rng, 4);
        double level = fl_rng_uniform(&rng) < 0.3 ? 0.35 : 0.08;
        for (int p = 0; p < 4; p++)
            sp.drop[p] = fl_rng_uniform(&rng) * level;
        spec_params(&sp, sp.n, 0.1);
        if (sp.graph == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE &&
            fl_rng_below(&rng, 2))
            sp.threshold = 2 + (uint32_t)fl_rng_below(&rng, sp.n - 2);
        outcome_t o;
        int rc = run_round(&sp, &o);
        if (o.ok) {
            ck_assert_int_eq(rc, 0);
            succeeded++;
        } else {
            ck_assert_int_eq(rc, FL_ETHRESHOLD);
            aborted++;
        }
        pruned += o.pruned[0] + o.pruned[1] > 0;
    }
    ck_assert_int_gt(succeeded, 10);
    ck_assert_int_gt(aborted, 0);
    ck_assert_int_gt(pruned, 0);
}
END_TEST

/* The graph of a spec as world_init builds it (ids 100 + 3i). */
static void spec_graph(const spec_t *sp, Flotilla__SecAggConfig *c,
                       uint32_t *ids)
{
    flotilla__sec_agg_config__init(c);
    c->threshold = sp->threshold;
    c->degree = sp->degree;
    c->ring_bits = sp->r;
    c->prg = sp->prg;
    c->graph = sp->graph;
    c->graph_seed = sp->seed * 31 + 5;
    for (uint32_t i = 0; i < sp->n; i++)
        ids[i] = 100 + 3 * i;
    c->n_participants = sp->n;
    c->participants = ids;
}

static void describe_has(const fl_secagg_close_info_t *info, const char *want)
{
    char line[256];
    fl_secagg_close_info_describe(info, line, sizeof line);
    ck_assert_msg(strstr(line, want) != NULL, "'%s' lacks '%s'", line, want);
}

/* Cohort 3, t = 2 on the complete graph: after one advertise dropout each
 * survivor has 1 neighbour's key, fewer than the t it needs to share
 * (shares go to neighbours only), so both would refuse. The server ends
 * the round at the advertise close, naming a client and its count, and
 * asks no one to share. With one more client the same dropout leaves 2
 * neighbours each and the round ends with the exact sum of the others. */
START_TEST(test_round_small_cohort_advertise_dropout)
{
    uint8_t stop[4] = {AT_ADVERTISE, AT_END, AT_END, AT_END};
    spec_t sp = {.n = 3,
                 .r = 16,
                 .graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE,
                 .degree = 2,
                 .threshold = 2,
                 .dim = 300,
                 .seed = 31,
                 .stop = stop};
    outcome_t o;
    ck_assert_int_eq(run_round(&sp, &o), FL_ETHRESHOLD);
    ck_assert_int_eq(o.aborted_at, FL_SECAGG_PHASE_ADVERTISE);
    ck_assert_uint_eq(o.pruned[0], 2);
    ck_assert_int_eq(o.info[0].why, FL_SECAGG_SHORT_NEIGHBOURS);
    ck_assert_uint_eq(o.info[0].have, 1);
    ck_assert_uint_eq(o.info[0].need, 2);
    ck_assert(o.info[0].client == 103 || o.info[0].client == 106);
    describe_has(&o.info[0], "of t = 2 live neighbours");

    sp.n = 4;
    sp.degree = 3;
    ck_assert_int_eq(run_round(&sp, &o), 0);
    ck_assert(o.ok);
    ck_assert_uint_eq(o.pruned[0], 0);
    ck_assert_uint_eq(o.survivors, 3);
    /* t = 3 of 3 neighbours: the same dropout cannot be survived */
    sp.threshold = 3;
    ck_assert_int_eq(run_round(&sp, &o), FL_ETHRESHOLD);
    ck_assert_int_eq(o.aborted_at, FL_SECAGG_PHASE_ADVERTISE);
    ck_assert_uint_eq(o.info[0].have, 2);
}
END_TEST

/* A Harary graph (n = 12, k = 4, t = 2) where three of client x's four
 * neighbours drop, before advertising or while sharing keys. x is left
 * with one live neighbour y and would refuse: the server leaves x out
 * (FL_ENOENT, checked in run_round) and the round ends with the exact sum
 * of the 8 others. y is chosen with a single neighbour in common with x,
 * so y keeps t live neighbours and nothing cascades. Left in, x would have
 * refused its masked input and, sharing its key with y alone, made the
 * unmasking fail. */
START_TEST(test_round_harary_thin_neighbourhood)
{
    spec_t sp = {.n = 12,
                 .r = 20,
                 .prg = FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20,
                 .graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY,
                 .degree = 4,
                 .threshold = 2,
                 .dim = 777,
                 .seed = 77,
                 .nparts = 2};
    Flotilla__SecAggConfig c;
    uint32_t ids[12], nx[4], ny[4];
    spec_graph(&sp, &c, ids);
    ck_assert_int_eq(fl_secagg_graph_neighbors(&c, ids[0], nx, 4), 4);
    int y = -1;
    for (int j = 0; j < 4 && y < 0; j++) {
        ck_assert_int_eq(fl_secagg_graph_neighbors(&c, nx[j], ny, 4), 4);
        int common = 0;
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++)
                common += ny[a] == nx[b];
        if (common == 1)
            y = j;
    }
    ck_assert_int_ge(y, 0);
    for (int at = AT_ADVERTISE; at <= AT_SHARE; at++) {
        uint8_t stop[12];
        memset(stop, AT_END, sizeof stop);
        for (int j = 0; j < 4; j++)
            if (j != y)
                stop[(nx[j] - 100) / 3] = (uint8_t)at;
        sp.stop = stop;
        outcome_t o;
        ck_assert_int_eq(run_round(&sp, &o), 0);
        ck_assert(o.ok);
        ck_assert_uint_eq(o.survivors, 8);
        const fl_secagg_close_info_t *in = &o.info[at];
        ck_assert_uint_eq(o.pruned[at], 1);
        ck_assert_uint_eq(o.pruned[1 - at], 0);
        ck_assert_int_eq(in->rc, 0);
        ck_assert_uint_eq(in->client, ids[0]);
        ck_assert_uint_eq(in->have, 1);
        ck_assert_uint_eq(in->remaining, 8);
        describe_has(in, "1 client left out (fewer than t = 2 live "
                         "neighbours), 8 go on");
    }
}
END_TEST

/* Rounds that truly cannot end stop at the close where that becomes
 * certain, with the reason. */
START_TEST(test_round_cannot_complete)
{
    /* complete graph, n = 5, t = 3: two leave after sharing keys; each of
     * the three inputs has 2 holders of its self-mask seed, never 3. The
     * clients alone would still have answered the unmasking (2 surviving
     * neighbours + themselves = t) and failed there. */
    uint8_t stop[8] = {AT_END, AT_END, AT_END, AT_MASKED, AT_MASKED};
    spec_t sp = {.n = 5,
                 .r = 12,
                 .graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE,
                 .degree = 4,
                 .threshold = 3,
                 .dim = 100,
                 .seed = 5,
                 .stop = stop};
    outcome_t o;
    ck_assert_int_eq(run_round(&sp, &o), FL_ETHRESHOLD);
    ck_assert_int_eq(o.aborted_at, FL_SECAGG_PHASE_MASKED_INPUT);
    ck_assert_int_eq(o.info[2].why, FL_SECAGG_SHORT_SELF_MASK);
    ck_assert_uint_eq(o.info[2].client, 100);
    ck_assert_uint_eq(o.info[2].have, 2);
    describe_has(&o.info[2], "masked input: the self-mask seed of survivor "
                             "100 has 2 of t = 3 holders left");

    /* one survivor does not answer the unmasking: the others' self-mask
     * seeds have 2 holders left */
    memcpy(stop, (uint8_t[]){AT_END, AT_END, AT_UNMASK, AT_END, AT_MASKED}, 5);
    ck_assert_int_eq(run_round(&sp, &o), FL_ETHRESHOLD);
    ck_assert_int_eq(o.aborted_at, FL_SECAGG_PHASE_UNMASKING);
    ck_assert_int_eq(o.info[3].why, FL_SECAGG_SHORT_SELF_MASK);
    ck_assert_uint_eq(o.info[3].have, 2);

    /* Harary n = 12, k = 4, t = 3: half the clients never advertise, every
     * other one on the ring; those left have at most 2 live neighbours */
    spec_t hs = {.n = 12,
                 .r = 8,
                 .graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY,
                 .degree = 4,
                 .threshold = 3,
                 .dim = 50,
                 .seed = 8};
    Flotilla__SecAggConfig c;
    uint32_t ids[12], nb[4];
    uint8_t hstop[12];
    memset(hstop, AT_END, sizeof hstop);
    spec_graph(&hs, &c, ids);
    uint32_t cur = ids[0];
    for (int step = 0; step < 6; step++) { /* walk the ring two at a time */
        ck_assert_int_eq(fl_secagg_graph_neighbors(&c, cur, nb, 4), 4);
        hstop[(nb[0] - 100) / 3] = AT_ADVERTISE; /* next on the ring */
        cur = nb[1];                             /* the one after */
    }
    hs.stop = hstop;
    ck_assert_int_eq(run_round(&hs, &o), FL_ETHRESHOLD);
    ck_assert_int_eq(o.aborted_at, FL_SECAGG_PHASE_ADVERTISE);
    ck_assert_uint_eq(o.pruned[0], 6);
    ck_assert_uint_eq(o.info[0].have, 2);
    describe_has(&o.info[0], "advertise: 6 clients left out");
}
END_TEST

/* ---- hostile messages
 * ------------------------------------------------------------------ */

/* A 5-client round driven by hand up to each phase. */
static void small_world(world_t *w, spec_t *sp)
{
    *sp = (spec_t){.n = 5,
                   .r = 12,
                   .prg = 0,
                   .graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE,
                   .degree = 4,
                   .threshold = 3,
                   .dim = 100,
                   .seed = 5};
    world_init(w, sp);
}

START_TEST(test_hostile_advertise)
{
    world_t w;
    spec_t sp;
    small_world(&w, &sp);
    Flotilla__AdvertiseKeys *m;
    ck_assert_int_eq(fl_secagg_client_advertise(w.cl[0], &m), 0);
    /* advertise twice: a client refuses */
    Flotilla__AdvertiseKeys *m2;
    ck_assert_int_eq(fl_secagg_client_advertise(w.cl[0], &m2), FL_ESTATE);
    /* sender mismatch, unknown id */
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[1], m),
                     FL_EPROTO);
    m->client_id = 7;
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, 7, m), FL_EPROTO);
    m->client_id = w.ids[0];
    /* replay from another round */
    m->round = 41;
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m),
                     FL_EROUND);
    m->round = 42;
    /* bad signature */
    m->signature.data[3] ^= 1;
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m),
                     FL_ESIGNATURE);
    m->signature.data[3] ^= 1;
    /* wrong key length */
    m->c_pk.len = 31;
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m),
                     FL_EFORMAT);
    m->c_pk.len = 32;
    /* signed by a key that is not the enrolled one */
    uint8_t pk[32], sk[64], sb[FL_SECAGG_ADVERTISE_SIGNED_BYTES];
    crypto_sign_keypair(pk, sk);
    Flotilla__AdvertiseKeys forged = *m;
    uint8_t sig[64];
    fl_secagg_advertise_signed_bytes(sb, w.round.round_nonce, 42, w.ids[0],
                                     m->c_pk.data, m->s_pk.data);
    crypto_sign_detached(sig, NULL, sb, sizeof sb, sk);
    forged.signature = (ProtobufCBinaryData){64, sig};
    forged.identity_key = (ProtobufCBinaryData){32, pk};
    ck_assert_int_eq(
        fl_secagg_server_handle_advertise(w.srv, w.ids[0], &forged),
        FL_ESIGNATURE);
    /* accepted once, then a duplicate */
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m), 0);
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m),
                     FL_EDUPLICATE);
    /* out of order: a later phase's request or message */
    Flotilla__ShareKeysRequest *q;
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[0], &q),
                     FL_ESTATE);
    Flotilla__MaskedInputResponse mi = FLOTILLA__MASKED_INPUT_RESPONSE__INIT;
    mi.client_id = w.ids[0];
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[0], &mi),
                     FL_ESTATE);
    ck_assert_int_eq(fl_secagg_server_unmask(w.srv), FL_ESTATE);
    /* a client gets a request before it advertised */
    Flotilla__ShareKeysRequest empty = FLOTILLA__SHARE_KEYS_REQUEST__INIT;
    Flotilla__ShareKeysResponse *r;
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[1], &empty, &r),
                     FL_ESTATE);
    /* too few advertised: a clean abort, and nothing after it */
    ck_assert_int_eq(fl_secagg_server_advertise_close(w.srv), FL_ETHRESHOLD);
    ck_assert_int_eq(fl_secagg_server_phase(w.srv), FL_SECAGG_PHASE_ABORTED);
    ck_assert_int_eq(fl_secagg_server_handle_advertise(w.srv, w.ids[0], m),
                     FL_ESTATE);
    fl_secagg_msg_free(m);
    world_free(&w, sp.n);
}
END_TEST

/* Drives the small world through advertise and share keys. */
/* Every client advertises; the advertise phase closes. */
static void advertise_all(world_t *w, const spec_t *sp)
{
    for (uint32_t i = 0; i < sp->n; i++) {
        Flotilla__AdvertiseKeys *m;
        ck_assert_int_eq(fl_secagg_client_advertise(w->cl[i], &m), 0);
        ck_assert_int_eq(
            fl_secagg_server_handle_advertise(w->srv, w->ids[i], m), 0);
        fl_secagg_msg_free(m);
    }
    ck_assert_int_eq(fl_secagg_server_advertise_close(w->srv), 0);
}

/* Clients 0 .. k-1 send their masked inputs (the others drop); the phase
 * closes. */
static void send_inputs(world_t *w, uint32_t k)
{
    for (uint32_t i = 0; i < k; i++) {
        Flotilla__MaskedInputRequest *q;
        Flotilla__MaskedInputResponse *m;
        ck_assert_int_eq(
            fl_secagg_server_masked_input_request(w->srv, w->ids[i], &q), 0);
        ck_assert_int_eq(
            fl_secagg_client_masked_input(w->cl[i], q, w->x[i], &m), 0);
        fl_secagg_msg_free(q);
        ck_assert_int_eq(
            fl_secagg_server_handle_masked_input(w->srv, w->ids[i], m), 0);
        fl_secagg_msg_free(m);
    }
    ck_assert_int_eq(fl_secagg_server_masked_input_close(w->srv), 0);
}

static void to_masked_input(world_t *w, const spec_t *sp,
                            Flotilla__ShareKeysResponse **keep)
{
    advertise_all(w, sp);
    for (uint32_t i = 0; i < sp->n; i++) {
        Flotilla__ShareKeysRequest *q;
        Flotilla__ShareKeysResponse *m;
        ck_assert_int_eq(
            fl_secagg_server_share_keys_request(w->srv, w->ids[i], &q), 0);
        ck_assert_int_eq(fl_secagg_client_share_keys(w->cl[i], q, &m), 0);
        fl_secagg_msg_free(q);
        ck_assert_int_eq(
            fl_secagg_server_handle_share_keys(w->srv, w->ids[i], m), 0);
        if (i == 0 && keep != NULL)
            *keep = m;
        else
            fl_secagg_msg_free(m);
    }
    ck_assert_int_eq(fl_secagg_server_share_keys_close(w->srv), 0);
}

START_TEST(test_hostile_share_keys)
{
    world_t w;
    spec_t sp;
    small_world(&w, &sp);
    advertise_all(&w, &sp);
    Flotilla__ShareKeysRequest *q;
    Flotilla__ShareKeysResponse *m;
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[0], &q),
                     0);
    /* client side: a tampered session id, a neighbour key with a broken
     * signature: each client refuses and takes no further part */
    q->session_id.data[0] ^= 1;
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[0], q, &m), FL_EROUND);
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[0], q, &m), FL_ESTATE);
    fl_secagg_msg_free(q);
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[1], &q),
                     0);
    q->keys[1]->signature.data[0] ^= 1;
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[1], q, &m),
                     FL_ESIGNATURE);
    fl_secagg_msg_free(q);
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[2], &q),
                     0);
    q->round = 43; /* replayed into another round */
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[2], q, &m), FL_EROUND);
    fl_secagg_msg_free(q);

    /* server side */
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[3], &q),
                     0);
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[3], q, &m), 0);
    fl_secagg_msg_free(q);
    m->round = 41;
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EROUND);
    m->round = 42;
    m->session_id.data[5] ^= 1;
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EROUND);
    m->session_id.data[5] ^= 1;
    uint32_t to = m->shares[1]->to;
    m->shares[1]->to = m->shares[0]->to; /* two shares for one peer */
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EDUPLICATE);
    m->shares[1]->to = w.ids[3]; /* a share for itself */
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EPROTO);
    m->shares[1]->to = to;
    m->shares[1]->from = w.ids[4];
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EPROTO);
    m->shares[1]->from = w.ids[3];
    m->shares[1]->ciphertext.len--;
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EFORMAT);
    m->shares[1]->ciphertext.len++;
    m->n_shares--;
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EPROTO);
    m->n_shares++;
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m), 0);
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[3], m),
                     FL_EDUPLICATE);
    fl_secagg_msg_free(m);
    /* only client 3 (and 4 below) shared: below t = 3 */
    ck_assert_int_eq(fl_secagg_server_share_keys_request(w.srv, w.ids[4], &q),
                     0);
    ck_assert_int_eq(fl_secagg_client_share_keys(w.cl[4], q, &m), 0);
    fl_secagg_msg_free(q);
    ck_assert_int_eq(fl_secagg_server_handle_share_keys(w.srv, w.ids[4], m), 0);
    fl_secagg_msg_free(m);
    ck_assert_int_eq(fl_secagg_server_share_keys_close(w.srv), FL_ETHRESHOLD);
    world_free(&w, sp.n);
}
END_TEST

START_TEST(test_hostile_masked_input)
{
    world_t w;
    spec_t sp;
    small_world(&w, &sp);
    to_masked_input(&w, &sp, NULL);
    Flotilla__MaskedInputRequest *q;
    Flotilla__MaskedInputResponse *m;
    /* client: a tampered share fails its MAC */
    ck_assert_int_eq(fl_secagg_server_masked_input_request(w.srv, w.ids[0], &q),
                     0);
    q->shares[2]->ciphertext.data[40] ^= 1;
    ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[0], q, w.x[0], &m),
                     FL_EMAC);
    fl_secagg_msg_free(q);
    /* client: a share sent twice; a share addressed to someone else */
    ck_assert_int_eq(fl_secagg_server_masked_input_request(w.srv, w.ids[1], &q),
                     0);
    Flotilla__EncryptedShare *keep = q->shares[1];
    q->shares[1] = q->shares[0];
    ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[1], q, w.x[1], &m),
                     FL_EDUPLICATE);
    q->shares[1] = keep;
    q->shares[0]->to = w.ids[3];
    ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[2], q, w.x[2], &m),
                     FL_EPROTO);
    fl_secagg_msg_free(q);
    /* client: fewer than t shares */
    ck_assert_int_eq(fl_secagg_server_masked_input_request(w.srv, w.ids[3], &q),
                     0);
    q->n_shares = 2;
    ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[3], q, w.x[3], &m),
                     FL_ETHRESHOLD);
    fl_secagg_msg_free(q);
    /* server: client 4's masked input, mangled */
    ck_assert_int_eq(fl_secagg_server_masked_input_request(w.srv, w.ids[4], &q),
                     0);
    ck_assert_int_eq(fl_secagg_client_masked_input(w.cl[4], q, w.x[4], &m), 0);
    fl_secagg_msg_free(q);
    m->num_values = 99;
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[4], m),
                     FL_EPROTO);
    m->num_values = 100;
    m->packed.len--;
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[4], m),
                     FL_EFORMAT);
    m->packed.len++;
    m->session_id.len = 0;
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[4], m),
                     FL_EROUND);
    m->session_id.len = 32;
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[4], m),
                     0);
    ck_assert_int_eq(fl_secagg_server_handle_masked_input(w.srv, w.ids[4], m),
                     FL_EDUPLICATE);
    fl_secagg_msg_free(m);
    /* one survivor < t */
    ck_assert_int_eq(fl_secagg_server_masked_input_close(w.srv), FL_ETHRESHOLD);
    world_free(&w, sp.n);
}
END_TEST

START_TEST(test_hostile_unmasking)
{
    world_t w;
    spec_t sp;
    small_world(&w, &sp);
    to_masked_input(&w, &sp, NULL);
    /* clients 0..3 send inputs; 4 drops */
    send_inputs(&w, 4);
    Flotilla__UnmaskingRequest *q;
    Flotilla__UnmaskingResponse *m;
    ck_assert_int_eq(fl_secagg_server_unmasking_request(w.srv, w.ids[4], &q),
                     FL_ENOENT); /* 4 dropped */
    ck_assert_int_eq(fl_secagg_server_unmasking_request(w.srv, w.ids[0], &q),
                     0);
    ck_assert_uint_eq(q->n_survivors, 4);
    ck_assert_uint_eq(q->n_dropped, 1);
    /* a peer listed as both survivor and dropped: never reveal both */
    uint32_t d = q->dropped[0];
    q->dropped[0] = q->survivors[1];
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[0], q, &m), FL_EPROTO);
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[0], q, &m), FL_ESTATE);
    fl_secagg_msg_free(q);
    /* the client itself listed as dropped */
    ck_assert_int_eq(fl_secagg_server_unmasking_request(w.srv, w.ids[1], &q),
                     0);
    q->dropped[0] = w.ids[1];
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[1], q, &m), FL_EPROTO);
    fl_secagg_msg_free(q);
    /* a neighbour's fate left out */
    ck_assert_int_eq(fl_secagg_server_unmasking_request(w.srv, w.ids[2], &q),
                     0);
    q->n_dropped = 0;
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[2], q, &m), FL_EPROTO);
    fl_secagg_msg_free(q);
    /* client 3 answers properly, once */
    ck_assert_int_eq(fl_secagg_server_unmasking_request(w.srv, w.ids[3], &q),
                     0);
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[3], q, &m), 0);
    Flotilla__UnmaskingResponse *again;
    ck_assert_int_eq(fl_secagg_client_unmask(w.cl[3], q, &again), FL_ESTATE);
    fl_secagg_msg_free(q);
    ck_assert_uint_eq(m->n_shares, 4);
    /* server: wrong kind for a survivor's share */
    size_t di = 0;
    for (size_t i = 0; i < m->n_shares; i++)
        if (m->shares[i]->owner == d)
            di = i;
    ck_assert_int_eq(m->shares[di]->kind,
                     FLOTILLA__SHARE_KIND__SHARE_PAIRWISE_KEY);
    size_t si = (di + 1) % m->n_shares;
    m->shares[si]->kind = FLOTILLA__SHARE_KIND__SHARE_PAIRWISE_KEY;
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m),
                     FL_EPROTO);
    m->shares[si]->kind = FLOTILLA__SHARE_KIND__SHARE_SELF_MASK;
    m->shares[si]->share.len = 39;
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m),
                     FL_EFORMAT);
    m->shares[si]->share.len = 40;
    uint32_t owner = m->shares[si]->owner;
    m->shares[si]->owner = m->shares[di]->owner;
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m),
                     FL_EPROTO); /* kind mismatch comes first */
    m->shares[si]->owner = owner;
    m->client_id = w.ids[2];
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m),
                     FL_EPROTO);
    m->client_id = w.ids[3];
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m), 0);
    ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[3], m),
                     FL_EDUPLICATE);
    /* the envelope dispatch refuses bodies that are not client messages */
    Flotilla__Envelope env = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
    env.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    ck_assert_int_eq(fl_secagg_server_handle(w.srv, w.ids[3], &env), FL_EPROTO);
    env.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE;
    env.unmasking_response = m;
    ck_assert_int_eq(fl_secagg_server_handle(w.srv, w.ids[3], &env),
                     FL_EDUPLICATE);
    fl_secagg_msg_free(m);
    /* only one of the survivors answered: t = 3 not met */
    ck_assert_int_eq(fl_secagg_server_unmasking_close(w.srv), FL_ETHRESHOLD);
    uint32_t out[100];
    ck_assert_int_eq(fl_secagg_server_result(w.srv, out, 100, NULL, NULL),
                     FL_ETHRESHOLD);
    world_free(&w, sp.n);
}
END_TEST

/* A revealed share that a semi-honest client would never send is caught
 * by the key check rather than giving a wrong sum. */
START_TEST(test_wrong_share_detected)
{
    world_t w;
    spec_t sp;
    small_world(&w, &sp);
    to_masked_input(&w, &sp, NULL);
    send_inputs(&w, 4);
    for (uint32_t i = 0; i < 4; i++) {
        Flotilla__UnmaskingRequest *q;
        Flotilla__UnmaskingResponse *m;
        ck_assert_int_eq(
            fl_secagg_server_unmasking_request(w.srv, w.ids[i], &q), 0);
        ck_assert_int_eq(fl_secagg_client_unmask(w.cl[i], q, &m), 0);
        fl_secagg_msg_free(q);
        for (size_t j = 0; j < m->n_shares; j++)
            if (m->shares[j]->kind ==
                    FLOTILLA__SHARE_KIND__SHARE_PAIRWISE_KEY &&
                i == 0)
                m->shares[j]->share.data[0] ^= 1; /* still < p */
        ck_assert_int_eq(fl_secagg_server_handle_unmasking(w.srv, w.ids[i], m),
                         0);
        fl_secagg_msg_free(m);
    }
    ck_assert_int_eq(fl_secagg_server_unmasking_close(w.srv), FL_ECRYPTO);
    ck_assert_int_eq(fl_secagg_server_phase(w.srv), FL_SECAGG_PHASE_ABORTED);
    world_free(&w, sp.n);
}
END_TEST

Suite *check_secagg_suite(void)
{
    Suite *s = suite_create("secagg");
    TCase *tc = tcase_create("kat");
    tcase_add_test(tc, test_kat_derivations);
    tcase_add_test(tc, test_kat_prg);
    tcase_add_test(tc, test_kat_shamir);
    tcase_add_test(tc, test_kat_graph);
    suite_add_tcase(s, tc);
    tc = tcase_create("parts");
    tcase_add_test(tc, test_shamir_refusals);
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_graph_symmetric);
    suite_add_tcase(s, tc);
    tc = tcase_create("rounds");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_round_no_dropout);
    tcase_add_test(tc, test_round_harary_parts);
    tcase_add_test(tc, test_round_property);
    tcase_add_test(tc, test_round_small_cohort_advertise_dropout);
    tcase_add_test(tc, test_round_harary_thin_neighbourhood);
    tcase_add_test(tc, test_round_cannot_complete);
    suite_add_tcase(s, tc);
    tc = tcase_create("hostile");
    tcase_add_test(tc, test_hostile_advertise);
    tcase_add_test(tc, test_hostile_share_keys);
    tcase_add_test(tc, test_hostile_masked_input);
    tcase_add_test(tc, test_hostile_unmasking);
    tcase_add_test(tc, test_wrong_share_detected);
    suite_add_tcase(s, tc);
    return s;
}
