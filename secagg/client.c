/*
 * secagg/client.c — the client's state machine: advertise, share keys,
 * masked input, unmasking. Secrets (identity key, the two X25519 secret
 * keys, the self-mask seed and the shares received from neighbours) live
 * in one sodium_malloc block, wiped as soon as they are no longer needed
 * and on every failure.
 */
#include "secagg/secagg_int.h"

#include "common/bitpack.h"

#include <sodium.h>
#include <string.h>

#define SLOT_BYTES (2 * FL_SECAGG_SHARE_BYTES + 32)

typedef enum {
    C_NEW = 0,
    C_ADVERTISED,
    C_SHARED,
    C_MASKED,
    C_DONE,
    C_FAILED,
} cphase_t;

typedef struct {
    uint8_t c_pk[32], s_pk[32];
    uint8_t has_keys, has_share, marked;
} cpeer_t;

typedef struct {
    uint8_t id_sk[FL_SECAGG_IDSK_BYTES];
    uint8_t c_sk[32], s_sk[32], b[32];
    uint8_t key[32], seed[32];
    uint8_t pt[2 * FL_SECAGG_SHARE_BYTES];
    /* then, per neighbour slot, the received share (share of b_v || share
     * of s_sk_v, 80 bytes) and the key v -> me that opens it (32 bytes) */
    uint8_t recv[];
} csecret_t;

struct fl_secagg_client {
    cphase_t phase;
    uint64_t round;
    uint8_t nonce[FL_SECAGG_NONCE_BYTES];
    size_t dim;
    unsigned r;
    int prg;
    uint32_t t, id, idx;
    sa_graph_t g;
    uint32_t *nbr; /* k neighbour indices, protocol order */
    cpeer_t *peer; /* by slot */
    uint8_t c_pk[32], s_pk[32], id_pk[32];
    uint8_t session[FL_SECAGG_SESSION_BYTES];
    csecret_t *sec;
    size_t sec_len;
};

static void wipe_secrets(fl_secagg_client_t *c)
{
    if (c->sec != NULL)
        sodium_memzero(c->sec, c->sec_len);
}

/* Every failure after the first message ends the client's round. */
static int fail(fl_secagg_client_t *c, int rc)
{
    if (rc != 0 && rc != FL_ESTATE) {
        wipe_secrets(c);
        c->phase = C_FAILED;
    }
    return rc;
}

int fl_secagg_client_new(const fl_secagg_round_t *round, uint32_t client_id,
                         const uint8_t identity_sk[FL_SECAGG_IDSK_BYTES],
                         fl_secagg_client_t **out)
{
    fl_secagg_client_t *c = NULL;
    int rc;
    *out = NULL;
    if (round == NULL || identity_sk == NULL || round->dim == 0 ||
        round->dim > FL_SECAGG_MAX_DIM)
        return FL_EINVAL;
    if ((rc = sa_ensure_sodium()) != 0)
        return rc;
    if ((c = fl_calloc(1, sizeof *c)) == NULL)
        return FL_ENOMEM;
    if ((rc = sa_graph_init(&c->g, round->config)) != 0)
        goto out;
    long a = sa_graph_index(&c->g, client_id);
    if (a < 0) {
        rc = FL_ENOENT;
        goto out;
    }
    c->idx = (uint32_t)a;
    c->id = client_id;
    c->round = round->round;
    memcpy(c->nonce, round->round_nonce, sizeof c->nonce);
    c->dim = round->dim;
    c->r = round->config->ring_bits;
    c->prg = round->config->prg;
    c->t = round->config->threshold;
    c->nbr = fl_calloc(c->g.k, sizeof *c->nbr);
    c->peer = fl_calloc(c->g.k, sizeof *c->peer);
    c->sec_len = sizeof *c->sec + (size_t)c->g.k * SLOT_BYTES;
    c->sec = sodium_malloc(c->sec_len);
    if (c->nbr == NULL || c->peer == NULL || c->sec == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    sodium_memzero(c->sec, c->sec_len);
    sa_graph_neighbors(&c->g, c->idx, c->nbr);
    memcpy(c->sec->id_sk, identity_sk, FL_SECAGG_IDSK_BYTES);
    crypto_sign_ed25519_sk_to_pk(c->id_pk, c->sec->id_sk);
    *out = c;
    c = NULL;
    rc = 0;
out:
    fl_secagg_client_free(c);
    return rc;
}

void fl_secagg_client_free(fl_secagg_client_t *c)
{
    if (c == NULL)
        return;
    if (c->sec != NULL)
        sodium_free(c->sec); /* wipes */
    fl_free(c->nbr);
    fl_free(c->peer);
    sa_graph_free(&c->g);
    fl_free(c);
}

int fl_secagg_client_advertise(fl_secagg_client_t *c,
                               Flotilla__AdvertiseKeys **out)
{
    sa_arena_t *a = NULL;
    uint8_t signed_bytes[FL_SECAGG_ADVERTISE_SIGNED_BYTES];
    uint8_t sig[FL_SECAGG_SIG_BYTES];
    *out = NULL;
    if (c->phase != C_NEW)
        return FL_ESTATE;
    crypto_box_keypair(c->c_pk, c->sec->c_sk);
    crypto_box_keypair(c->s_pk, c->sec->s_sk);
    randombytes_buf(c->sec->b, sizeof c->sec->b);
    fl_secagg_advertise_signed_bytes(signed_bytes, c->nonce, c->round, c->id,
                                     c->c_pk, c->s_pk);
    crypto_sign_ed25519_detached(sig, NULL, signed_bytes, sizeof signed_bytes,
                                 c->sec->id_sk);
    Flotilla__AdvertiseKeys *m =
        sa_msg_new(&flotilla__advertise_keys__descriptor, sizeof *m, &a);
    if (m == NULL)
        return fail(c, FL_ENOMEM);
    m->round = c->round;
    m->client_id = c->id;
    if (sa_bytes(a, &m->c_pk, c->c_pk, 32) ||
        sa_bytes(a, &m->s_pk, c->s_pk, 32) ||
        sa_bytes(a, &m->signature, sig, sizeof sig) ||
        sa_bytes(a, &m->identity_key, c->id_pk, 32)) {
        fl_secagg_msg_free(m);
        return fail(c, FL_ENOMEM);
    }
    c->phase = C_ADVERTISED;
    *out = m;
    return 0;
}

static int check_session(const fl_secagg_client_t *c, uint64_t round,
                         const ProtobufCBinaryData *session)
{
    if (round != c->round)
        return FL_EROUND;
    if (session->len != FL_SECAGG_SESSION_BYTES ||
        sodium_memcmp(session->data, c->session, FL_SECAGG_SESSION_BYTES) != 0)
        return FL_EROUND;
    return 0;
}

/* The neighbour slot of a peer id, or a negative code. */
static long peer_slot(const fl_secagg_client_t *c, uint32_t id)
{
    long b = sa_graph_index(&c->g, id);
    if (b < 0)
        return FL_EPROTO;
    long s = sa_graph_slot(&c->g, c->idx, (uint32_t)b);
    return s < 0 ? FL_EPROTO : s;
}

static int share_keys(fl_secagg_client_t *c,
                      const Flotilla__ShareKeysRequest *req,
                      Flotilla__ShareKeysResponse **out)
{
    sa_arena_t *a = NULL;
    Flotilla__ShareKeysResponse *m = NULL;
    uint8_t *shares = NULL; /* nk shares of b, then nk shares of s_sk */
    uint32_t *xs = NULL;
    const Flotilla__AdvertiseKeys **all = NULL;
    size_t nk = req->n_keys, S = FL_SECAGG_SHARE_BYTES;
    int rc = 0;

    if (req->round != c->round)
        return FL_EROUND;
    if (req->session_id.len != FL_SECAGG_SESSION_BYTES)
        return FL_EFORMAT;
    if (nk > c->g.k)
        return FL_EPROTO;
    if (nk < c->t)
        return FL_ETHRESHOLD;
    for (size_t i = 0; i < nk; i++) {
        const Flotilla__AdvertiseKeys *k = req->keys[i];
        uint8_t sb[FL_SECAGG_ADVERTISE_SIGNED_BYTES];
        if (k->round != c->round)
            return FL_EROUND;
        if (k->c_pk.len != 32 || k->s_pk.len != 32 ||
            k->signature.len != FL_SECAGG_SIG_BYTES ||
            k->identity_key.len != FL_SECAGG_IDPK_BYTES)
            return FL_EFORMAT;
        long s = peer_slot(c, k->client_id);
        if (s < 0)
            return (int)s;
        if (c->peer[s].has_keys)
            return FL_EDUPLICATE;
        fl_secagg_advertise_signed_bytes(sb, c->nonce, c->round, k->client_id,
                                         k->c_pk.data, k->s_pk.data);
        if (crypto_sign_ed25519_verify_detached(
                k->signature.data, sb, sizeof sb, k->identity_key.data) != 0)
            return FL_ESIGNATURE;
        memcpy(c->peer[s].c_pk, k->c_pk.data, 32);
        memcpy(c->peer[s].s_pk, k->s_pk.data, 32);
        c->peer[s].has_keys = 1;
    }
    /* With every other key in hand (the complete graph), the session id is
     * checked rather than trusted. */
    if (c->g.kind == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE) {
        uint8_t sid[FL_SECAGG_SESSION_BYTES];
        Flotilla__AdvertiseKeys self = FLOTILLA__ADVERTISE_KEYS__INIT;
        self.client_id = c->id;
        self.c_pk = (ProtobufCBinaryData){32, c->c_pk};
        self.s_pk = (ProtobufCBinaryData){32, c->s_pk};
        self.identity_key = (ProtobufCBinaryData){32, c->id_pk};
        if ((all = fl_calloc(nk + 1, sizeof *all)) == NULL)
            return FL_ENOMEM;
        for (size_t i = 0; i < nk; i++)
            all[i] = req->keys[i];
        all[nk] = &self;
        rc = fl_secagg_session_id(sid, c->nonce, c->round, all, nk + 1);
        if (rc == 0 && sodium_memcmp(sid, req->session_id.data, 32) != 0)
            rc = FL_EROUND;
        if (rc != 0)
            goto out;
    }
    memcpy(c->session, req->session_id.data, FL_SECAGG_SESSION_BYTES);

    shares = sodium_malloc(2 * nk * S);
    xs = fl_calloc(nk, sizeof *xs);
    if (shares == NULL || xs == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    size_t m_i = 0;
    for (uint32_t s = 0; s < c->g.k; s++)
        if (c->peer[s].has_keys)
            xs[m_i++] = c->g.ids[c->nbr[s]];
    if ((rc = fl_secagg_shamir_split(shares, S, c->sec->b, 32, c->t, xs, nk)) !=
            0 ||
        (rc = fl_secagg_shamir_split(shares + nk * S, S, c->sec->s_sk, 32, c->t,
                                     xs, nk)) != 0)
        goto out;
    m = sa_msg_new(&flotilla__share_keys_response__descriptor, sizeof *m, &a);
    if (m == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    m->round = c->round;
    m->client_id = c->id;
    m->n_shares = nk;
    m->shares = sa_arena_alloc(a, nk * sizeof *m->shares);
    if (m->shares == NULL ||
        sa_bytes(a, &m->session_id, c->session, FL_SECAGG_SESSION_BYTES)) {
        rc = FL_ENOMEM;
        goto out;
    }
    m_i = 0;
    for (uint32_t s = 0; s < c->g.k; s++) {
        if (!c->peer[s].has_keys)
            continue;
        uint32_t to = c->g.ids[c->nbr[s]];
        Flotilla__EncryptedShare *e = sa_arena_alloc(a, sizeof *e);
        uint8_t *ct = sa_arena_alloc(a, FL_SECAGG_CT_BYTES);
        if (e == NULL || ct == NULL) {
            rc = FL_ENOMEM;
            goto out;
        }
        flotilla__encrypted_share__init(e);
        memcpy(c->sec->pt, shares + m_i * S, S);
        memcpy(c->sec->pt + S, shares + (nk + m_i) * S, S);
        /* one agreement gives the key to send and the key to receive */
        uint8_t *rkey = c->sec->recv + (size_t)s * SLOT_BYTES + 2 * S;
        if ((rc = sa_derive_share_keys(c->sec->key, rkey, c->sec->c_sk,
                                       c->peer[s].c_pk, c->session, c->id,
                                       to)) != 0 ||
            (rc = fl_secagg_share_seal(ct, c->sec->key, c->session, c->round,
                                       c->id, to, c->sec->pt)) != 0)
            goto out;
        e->from = c->id;
        e->to = to;
        e->ciphertext = (ProtobufCBinaryData){FL_SECAGG_CT_BYTES, ct};
        m->shares[m_i++] = e;
    }
    *out = m;
    m = NULL;
out:
    sodium_memzero(c->sec->pt, sizeof c->sec->pt);
    sodium_memzero(c->sec->key, sizeof c->sec->key);
    if (shares != NULL)
        sodium_free(shares);
    fl_free(xs);
    fl_free(all);
    fl_secagg_msg_free(m);
    return rc;
}

int fl_secagg_client_share_keys(fl_secagg_client_t *c,
                                const Flotilla__ShareKeysRequest *req,
                                Flotilla__ShareKeysResponse **out)
{
    *out = NULL;
    if (c->phase != C_ADVERTISED)
        return FL_ESTATE;
    if (req == NULL)
        return fail(c, FL_EINVAL);
    int rc = share_keys(c, req, out);
    if (rc == 0)
        c->phase = C_SHARED;
    return fail(c, rc);
}

static int masked_input(fl_secagg_client_t *c,
                        const Flotilla__MaskedInputRequest *req,
                        const uint32_t *x, Flotilla__MaskedInputResponse **out)
{
    sa_arena_t *a = NULL;
    Flotilla__MaskedInputResponse *m = NULL;
    uint32_t *y = NULL;
    sa_prg_t *prg = NULL;
    size_t got = 0, S = FL_SECAGG_SHARE_BYTES;
    int rc;

    if ((rc = check_session(c, req->round, &req->session_id)) != 0)
        return rc;
    if (req->n_shares > c->g.k)
        return FL_EPROTO;
    for (size_t i = 0; i < req->n_shares; i++) {
        const Flotilla__EncryptedShare *e = req->shares[i];
        if (e->to != c->id)
            return FL_EPROTO;
        long s = peer_slot(c, e->from);
        if (s < 0)
            return (int)s;
        if (!c->peer[s].has_keys)
            return FL_EPROTO; /* we never shared with it */
        if (c->peer[s].has_share)
            return FL_EDUPLICATE;
        uint8_t *slot = c->sec->recv + (size_t)s * SLOT_BYTES;
        rc = fl_secagg_share_open(slot, slot + 2 * S, c->session, c->round,
                                  e->from, c->id, e->ciphertext.data,
                                  e->ciphertext.len);
        if (rc != 0)
            return rc;
        if (sa_share_check(slot, 2 * S) != 0)
            return FL_EFORMAT;
        c->peer[s].has_share = 1;
        got++;
    }
    if (got < c->t)
        return FL_ETHRESHOLD;

    y = fl_aligned_alloc(64, c->dim * sizeof *y);
    prg = sa_prg_new();
    if (y == NULL || prg == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    memcpy(y, x, c->dim * sizeof *y);
    if ((rc = sa_prg_add(prg, y, 0, c->dim, c->sec->b, c->prg, c->r, 0)) != 0)
        goto out;
    for (uint32_t s = 0; s < c->g.k; s++) {
        if (!c->peer[s].has_share)
            continue;
        uint32_t v = c->g.ids[c->nbr[s]];
        if ((rc = fl_secagg_derive_mask_seed(c->sec->seed, c->sec->s_sk,
                                             c->peer[s].s_pk, c->session, c->id,
                                             v)) != 0 ||
            (rc = sa_prg_add(prg, y, 0, c->dim, c->sec->seed, c->prg, c->r,
                             c->id > v)) != 0)
            goto out;
    }
    m = sa_msg_new(&flotilla__masked_input_response__descriptor, sizeof *m, &a);
    size_t nbytes = fl_bitpack_bytes(c->dim, c->r);
    uint8_t *packed = m ? sa_arena_alloc(a, nbytes) : NULL;
    if (packed == NULL ||
        sa_bytes(a, &m->session_id, c->session, FL_SECAGG_SESSION_BYTES)) {
        rc = FL_ENOMEM;
        goto out;
    }
    fl_bitpack(packed, y, c->dim, c->r);
    m->round = c->round;
    m->client_id = c->id;
    m->num_values = c->dim;
    m->packed = (ProtobufCBinaryData){nbytes, packed};
    *out = m;
    m = NULL;
out:
    sodium_memzero(c->sec->seed, sizeof c->sec->seed);
    if (y != NULL) {
        sodium_memzero(y, c->dim * sizeof *y);
        fl_free(y);
    }
    sa_prg_free(prg);
    fl_secagg_msg_free(m);
    return rc;
}

int fl_secagg_client_masked_input(fl_secagg_client_t *c,
                                  const Flotilla__MaskedInputRequest *req,
                                  const uint32_t *x,
                                  Flotilla__MaskedInputResponse **out)
{
    *out = NULL;
    if (c->phase != C_SHARED)
        return FL_ESTATE;
    if (req == NULL || x == NULL)
        return fail(c, FL_EINVAL);
    int rc = masked_input(c, req, x, out);
    if (rc == 0) {
        /* the client's own secrets are now only in its neighbours' shares */
        sodium_memzero(c->sec->c_sk, sizeof c->sec->c_sk);
        sodium_memzero(c->sec->s_sk, sizeof c->sec->s_sk);
        sodium_memzero(c->sec->b, sizeof c->sec->b);
        sodium_memzero(c->sec->id_sk, sizeof c->sec->id_sk);
        for (uint32_t s = 0; s < c->g.k; s++) /* the receive keys */
            sodium_memzero(c->sec->recv + (size_t)s * SLOT_BYTES +
                               2 * FL_SECAGG_SHARE_BYTES,
                           32);
        c->phase = C_MASKED;
    }
    return fail(c, rc);
}

static int mark(fl_secagg_client_t *c, uint32_t id, uint8_t how)
{
    long s = peer_slot(c, id);
    if (s < 0)
        return (int)s;
    if (!c->peer[s].has_share)
        return FL_EPROTO;
    if (c->peer[s].marked == how)
        return FL_EDUPLICATE;
    if (c->peer[s].marked != 0)
        return FL_EPROTO; /* listed as survivor and dropped: never both */
    c->peer[s].marked = how;
    return 0;
}

static int unmask(fl_secagg_client_t *c, const Flotilla__UnmaskingRequest *req,
                  Flotilla__UnmaskingResponse **out)
{
    enum { SURVIVED = 1, DROPPED = 2 };
    sa_arena_t *a = NULL;
    Flotilla__UnmaskingResponse *m = NULL;
    size_t S = FL_SECAGG_SHARE_BYTES, self = 0, alive = 0, nshare = 0;
    int rc;

    if ((rc = check_session(c, req->round, &req->session_id)) != 0)
        return rc;
    if (req->n_survivors > (size_t)c->g.k + 1 || req->n_dropped > c->g.k)
        return FL_EPROTO;
    for (size_t i = 0; i < req->n_survivors; i++) {
        if (req->survivors[i] == c->id) {
            if (self++)
                return FL_EDUPLICATE;
            continue;
        }
        if ((rc = mark(c, req->survivors[i], SURVIVED)) != 0)
            return rc;
        alive++;
    }
    for (size_t i = 0; i < req->n_dropped; i++) {
        if (req->dropped[i] == c->id)
            return FL_EPROTO;
        if ((rc = mark(c, req->dropped[i], DROPPED)) != 0)
            return rc;
    }
    if (!self)
        return FL_EPROTO;
    for (uint32_t s = 0; s < c->g.k; s++) {
        if (c->peer[s].has_share && !c->peer[s].marked)
            return FL_EPROTO; /* a neighbour's fate left out */
        nshare += c->peer[s].has_share;
    }
    if (alive + 1 < c->t)
        return FL_ETHRESHOLD;

    m = sa_msg_new(&flotilla__unmasking_response__descriptor, sizeof *m, &a);
    if (m == NULL ||
        (m->shares = sa_arena_alloc(a, nshare * sizeof *m->shares)) == NULL ||
        sa_bytes(a, &m->session_id, c->session, FL_SECAGG_SESSION_BYTES)) {
        rc = FL_ENOMEM;
        goto out;
    }
    m->round = c->round;
    m->client_id = c->id;
    for (uint32_t s = 0; s < c->g.k; s++) {
        if (!c->peer[s].has_share)
            continue;
        Flotilla__RevealedShare *r = sa_arena_alloc(a, sizeof *r);
        if (r == NULL) {
            rc = FL_ENOMEM;
            goto out;
        }
        flotilla__revealed_share__init(r);
        const uint8_t *sh = c->sec->recv + (size_t)s * SLOT_BYTES;
        r->owner = c->g.ids[c->nbr[s]];
        if (c->peer[s].marked == SURVIVED) {
            r->kind = FLOTILLA__SHARE_KIND__SHARE_SELF_MASK;
        } else {
            r->kind = FLOTILLA__SHARE_KIND__SHARE_PAIRWISE_KEY;
            sh += S;
        }
        if ((rc = sa_bytes(a, &r->share, sh, S)) != 0)
            goto out;
        m->shares[m->n_shares++] = r;
    }
    *out = m;
    m = NULL;
out:
    fl_secagg_msg_free(m);
    return rc;
}

int fl_secagg_client_unmask(fl_secagg_client_t *c,
                            const Flotilla__UnmaskingRequest *req,
                            Flotilla__UnmaskingResponse **out)
{
    *out = NULL;
    if (c->phase != C_MASKED)
        return FL_ESTATE;
    if (req == NULL)
        return fail(c, FL_EINVAL);
    int rc = unmask(c, req, out);
    if (rc == 0) {
        wipe_secrets(c);
        c->phase = C_DONE;
    }
    return fail(c, rc);
}
