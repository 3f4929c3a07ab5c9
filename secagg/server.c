/*
 * secagg/server.c — the server's state machine. It treats every message as
 * hostile: phase, round, session, sender, sizes and duplicates are checked
 * before any state changes, and a refused message changes nothing.
 *
 * Memory: the accumulator is d words; the rest is O(n * degree): the
 * encrypted shares to forward (120 bytes each) and the revealed shares
 * (40 bytes each, in guarded memory).
 */
#include "secagg/secagg_int.h"

#include "common/bitpack.h"

#include <sodium.h>
#include <stdatomic.h>
#include <string.h>

#define S_BYTES FL_SECAGG_SHARE_BYTES
#define TILE    65536u /* coordinates per unmasking tile: 256 KiB of acc */

typedef struct {
    uint8_t c_pk[32], s_pk[32], id_pk[32], sig[64];
    uint8_t adv, shared, input, unmasked;
} sclient_t;

typedef struct {
    uint32_t a, b; /* a == b: self mask of a; else a survivor, b dropped */
    uint8_t negate;
} job_t;

struct fl_secagg_server {
    fl_secagg_phase_t phase;
    int abort_rc;
    uint64_t round;
    uint8_t nonce[FL_SECAGG_NONCE_BYTES];
    size_t dim;
    unsigned r;
    int prg;
    uint32_t t, k;
    sa_graph_t g;
    sclient_t *cl;
    uint8_t *idkeys; /* n * 32, or NULL */
    uint8_t session[FL_SECAGG_SESSION_BYTES];
    uint32_t n_adv, n_shared, n_input, n_unmasked;
    uint8_t *cts;      /* n * k * 120: the share of sender a for its slot */
    uint8_t *revealed; /* n * k * 40 (sodium_malloc): holder a, slot */
    uint32_t *acc;     /* dim */
    uint32_t *tmp;     /* k: neighbour lists */
    uint8_t *seen;     /* k: duplicate detection */
    /* unmasking */
    job_t *jobs;
    size_t njobs;
    uint8_t *seeds;   /* njobs * 32 (sodium_malloc) */
    uint8_t *secrets; /* n * 32 (sodium_malloc): b_u or s_sk_v */
    unsigned nparts;
    _Atomic uint64_t derive_done, unmask_done;
    fl_secagg_close_info_t info; /* the last _close */
};

static int abort_round(fl_secagg_server_t *s, int rc)
{
    s->phase = FL_SECAGG_PHASE_ABORTED;
    s->abort_rc = rc;
    if (s->revealed != NULL)
        sodium_memzero(s->revealed, (size_t)s->g.n * s->k * S_BYTES);
    if (s->secrets != NULL)
        sodium_memzero(s->secrets, (size_t)s->g.n * 32);
    if (s->seeds != NULL)
        sodium_memzero(s->seeds, s->njobs * 32);
    return rc;
}

int fl_secagg_server_new(const fl_secagg_round_t *round,
                         const uint8_t (*identity_keys)[FL_SECAGG_IDPK_BYTES],
                         fl_secagg_server_t **out)
{
    fl_secagg_server_t *s = NULL;
    int rc;
    *out = NULL;
    if (round == NULL || round->dim == 0 || round->dim > FL_SECAGG_MAX_DIM)
        return FL_EINVAL;
    if ((rc = sa_ensure_sodium()) != 0)
        return rc;
    if ((s = fl_calloc(1, sizeof *s)) == NULL)
        return FL_ENOMEM;
    if ((rc = sa_graph_init(&s->g, round->config)) != 0)
        goto out;
    s->round = round->round;
    memcpy(s->nonce, round->round_nonce, sizeof s->nonce);
    s->dim = round->dim;
    s->r = round->config->ring_bits;
    s->prg = round->config->prg;
    s->t = round->config->threshold;
    s->k = s->g.k;
    s->cl = fl_calloc(s->g.n, sizeof *s->cl);
    s->acc = fl_aligned_alloc(64, s->dim * sizeof *s->acc);
    s->tmp = fl_calloc(s->k, sizeof *s->tmp);
    s->seen = fl_calloc(s->k, 1);
    if (s->cl == NULL || s->acc == NULL || s->tmp == NULL || s->seen == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    if (identity_keys != NULL) {
        if ((s->idkeys = fl_calloc(s->g.n, 32)) == NULL) {
            rc = FL_ENOMEM;
            goto out;
        }
        memcpy(s->idkeys, identity_keys, (size_t)s->g.n * 32);
    }
    atomic_init(&s->derive_done, 0);
    atomic_init(&s->unmask_done, 0);
    *out = s;
    s = NULL;
    rc = 0;
out:
    fl_secagg_server_free(s);
    return rc;
}

void fl_secagg_server_free(fl_secagg_server_t *s)
{
    if (s == NULL)
        return;
    if (s->revealed != NULL)
        sodium_free(s->revealed);
    if (s->secrets != NULL)
        sodium_free(s->secrets);
    if (s->seeds != NULL)
        sodium_free(s->seeds);
    fl_free(s->jobs);
    fl_free(s->cts);
    fl_free(s->acc);
    fl_free(s->tmp);
    fl_free(s->seen);
    fl_free(s->idkeys);
    fl_free(s->cl);
    sa_graph_free(&s->g);
    fl_free(s);
}

fl_secagg_phase_t fl_secagg_server_phase(const fl_secagg_server_t *s)
{
    return s->phase;
}

/* The index of a sender whose message carries client_id, or a code. */
static long sender_index(const fl_secagg_server_t *s, uint32_t sender,
                         uint32_t client_id)
{
    if (client_id != sender)
        return FL_EPROTO;
    long a = sa_graph_index(&s->g, sender);
    return a < 0 ? FL_EPROTO : a;
}

static int check_session(const fl_secagg_server_t *s, uint64_t round,
                         const ProtobufCBinaryData *session)
{
    if (round != s->round)
        return FL_EROUND;
    if (session->len != FL_SECAGG_SESSION_BYTES ||
        sodium_memcmp(session->data, s->session, FL_SECAGG_SESSION_BYTES) != 0)
        return FL_EROUND;
    return 0;
}

/* ---- the clients' rule at each close ---------------------------------------
 * A client refuses a request that gives it fewer than t neighbours' keys
 * (share keys) or shares (masked input), and an unmasking cannot end when
 * a secret it needs has fewer than t holders. The closes apply the same
 * counts, so that no request is sent that is bound to be refused. */

/* The flag that says client c is in stage 0 (advertised), 1 (shared keys),
 * 2 (sent its input) or 3 (answered the unmasking). */
static uint8_t *member(sclient_t *c, int stage)
{
    return stage == 0   ? &c->adv
           : stage == 1 ? &c->shared
           : stage == 2 ? &c->input
                        : &c->unmasked;
}

/* The checks a client's message of phase 1..3 (share keys, masked input,
 * unmasking; stage = phase) passes first, in this order: the server is in
 * that phase (FL_ESTATE), the sender speaks for itself (FL_EPROTO), of this
 * round and session (FL_EROUND), it took part in the previous stage
 * (FL_EPROTO) and has not answered this one (FL_EDUPLICATE). Returns the
 * sender's index. */
static long admit(fl_secagg_server_t *s, fl_secagg_phase_t phase,
                  uint32_t sender, uint32_t client_id, uint64_t round,
                  const ProtobufCBinaryData *session)
{
    if (s->phase != phase)
        return FL_ESTATE;
    long a = sender_index(s, sender, client_id);
    if (a < 0)
        return a;
    int rc = check_session(s, round, session);
    if (rc != 0)
        return rc;
    if (!*member(&s->cl[a], phase - 1))
        return FL_EPROTO;
    if (*member(&s->cl[a], phase))
        return FL_EDUPLICATE;
    return a;
}

/* How many of client a's neighbours are in stage (member()). Leaves its
 * neighbour list in s->tmp. */
static uint32_t live_neighbours(fl_secagg_server_t *s, uint32_t a, int stage,
                                uint32_t *nb)
{
    *nb = sa_graph_neighbors(&s->g, a, s->tmp);
    uint32_t k = 0;
    for (uint32_t i = 0; i < *nb; i++)
        k += *member(&s->cl[s->tmp[i]], stage);
    return k;
}

static void info_start(fl_secagg_server_t *s, fl_secagg_phase_t phase)
{
    memset(&s->info, 0, sizeof s->info);
    s->info.phase = phase;
    s->info.need = s->t;
}

/* Records how the close ended; returns rc. */
static int closed(fl_secagg_server_t *s, int rc, uint32_t remaining)
{
    s->info.rc = rc;
    s->info.remaining = rc == 0 ? remaining : 0;
    return rc;
}

/* Leaves out every client of `stage` that has fewer than t neighbours in
 * it, again and again until every one left has t (what is left is the
 * same whatever the order). *count is the stage's count. */
static int prune(fl_secagg_server_t *s, int stage, uint32_t *count)
{
    uint32_t n = s->g.n, *deg = NULL, *queue = NULL, *nb = NULL;
    size_t head = 0, tail = 0;
    int rc = 0;
    if (s->g.kind == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE) {
        /* everyone's live neighbours are the others: all stay or all go */
        if (*count == 0 || *count - 1 >= s->t)
            return 0;
        for (uint32_t a = 0; a < n; a++) {
            if (!*member(&s->cl[a], stage))
                continue;
            if (s->info.pruned++ == 0) {
                s->info.why = FL_SECAGG_SHORT_NEIGHBOURS;
                s->info.client = s->g.ids[a];
                s->info.have = *count - 1;
            }
            *member(&s->cl[a], stage) = 0;
        }
        *count = 0;
        return 0;
    }
    deg = fl_calloc(n, sizeof *deg);
    queue = fl_calloc(n, sizeof *queue);
    nb = fl_calloc(s->k, sizeof *nb);
    if (deg == NULL || queue == NULL || nb == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (uint32_t a = 0; a < n; a++) {
        if (!*member(&s->cl[a], stage))
            continue;
        uint32_t m = sa_graph_neighbors(&s->g, a, nb);
        for (uint32_t i = 0; i < m; i++)
            deg[a] += *member(&s->cl[nb[i]], stage);
        if (deg[a] < s->t)
            queue[tail++] = a;
    }
    /* each client is queued once: when first seen below t */
    while (head < tail) {
        uint32_t a = queue[head++];
        if (s->info.pruned++ == 0) { /* the first is a cause, not a cascade */
            s->info.why = FL_SECAGG_SHORT_NEIGHBOURS;
            s->info.client = s->g.ids[a];
            s->info.have = deg[a];
        }
        *member(&s->cl[a], stage) = 0;
        (*count)--;
        uint32_t m = sa_graph_neighbors(&s->g, a, nb);
        for (uint32_t i = 0; i < m; i++) {
            uint32_t b = nb[i];
            if (*member(&s->cl[b], stage) && deg[b]-- == s->t)
                queue[tail++] = b;
        }
    }
out:
    fl_free(deg);
    fl_free(queue);
    fl_free(nb);
    return rc;
}

/* Whether the unmasking needs the secret of client v: 1 for a survivor's
 * b_v, 2 for the s_sk_v of a dropped client that a survivor masked with
 * (every neighbour that sent its input had v's share), 0 otherwise. The
 * holders of that share among the clients of `stage` into *holders.
 * Uses s->tmp. */
static int secret_needed(fl_secagg_server_t *s, uint32_t v, int stage,
                         uint32_t *holders)
{
    *holders = 0;
    if (!s->cl[v].shared)
        return 0;
    uint32_t nb = sa_graph_neighbors(&s->g, v, s->tmp), inputs = 0;
    for (uint32_t i = 0; i < nb; i++) {
        inputs += s->cl[s->tmp[i]].input;
        *holders += *member(&s->cl[s->tmp[i]], stage);
    }
    return s->cl[v].input ? 1 : inputs > 0 ? 2 : 0;
}

/* FL_ETHRESHOLD (with the account filled) when a needed secret has fewer
 * than t holders in `stage`. */
static int check_holders(fl_secagg_server_t *s, int stage)
{
    for (uint32_t v = 0; v < s->g.n; v++) {
        uint32_t holders;
        int need = secret_needed(s, v, stage, &holders);
        if (need == 0 || holders >= s->t)
            continue;
        s->info.why =
            need == 1 ? FL_SECAGG_SHORT_SELF_MASK : FL_SECAGG_SHORT_MASK_KEY;
        s->info.client = s->g.ids[v];
        s->info.have = holders;
        return FL_ETHRESHOLD;
    }
    return 0;
}

/* Fewer than t clients in the stage: the account says how many. */
static int too_few(fl_secagg_server_t *s, uint32_t left)
{
    if (s->info.why == FL_SECAGG_SHORT_NONE) {
        s->info.why = FL_SECAGG_SHORT_CLIENTS;
        s->info.have = left;
    }
    return closed(s, abort_round(s, FL_ETHRESHOLD), 0);
}

void fl_secagg_server_close_info(const fl_secagg_server_t *s,
                                 fl_secagg_close_info_t *out)
{
    *out = s->info;
}

int fl_secagg_close_info_describe(const fl_secagg_close_info_t *in, char *buf,
                                  size_t len)
{
    static const char *const names[] = {
        [FL_SECAGG_PHASE_ADVERTISE] = "advertise",
        [FL_SECAGG_PHASE_SHARE_KEYS] = "share keys",
        [FL_SECAGG_PHASE_MASKED_INPUT] = "masked input",
        [FL_SECAGG_PHASE_UNMASKING] = "unmasking",
    };
    const char *ph =
        (unsigned)in->phase < FL_ARRAY_LEN(names) && names[in->phase] != NULL
            ? names[in->phase]
            : "secure aggregation";
    char out[96] = "";
    if (in->pruned > 0)
        snprintf(out, sizeof out,
                 "%u client%s left out (fewer than t = %u live neighbours), ",
                 in->pruned, in->pruned == 1 ? "" : "s", in->need);
    if (in->rc == 0)
        return snprintf(buf, len, "%s: %s%u go on", ph, out, in->remaining);
    if (in->rc != FL_ETHRESHOLD)
        return snprintf(buf, len, "%s: %s", ph, fl_strerror(in->rc));
    switch (in->why) {
    case FL_SECAGG_SHORT_NEIGHBOURS:
        return snprintf(buf, len,
                        "%s: %snone left; client %u has %u of t = %u live "
                        "neighbours",
                        ph, out, in->client, in->have, in->need);
    case FL_SECAGG_SHORT_SELF_MASK:
        return snprintf(buf, len,
                        "%s: the self-mask seed of survivor %u has %u of t = "
                        "%u holders left",
                        ph, in->client, in->have, in->need);
    case FL_SECAGG_SHORT_MASK_KEY:
        return snprintf(buf, len,
                        "%s: the mask key of dropped client %u has %u of t = "
                        "%u holders left",
                        ph, in->client, in->have, in->need);
    default:
        return snprintf(buf, len, "%s: %s%u clients left, t = %u needed", ph,
                        out, in->have, in->need);
    }
}

/* ---- phase 0: advertise
 * ------------------------------------------------------ */

int fl_secagg_server_handle_advertise(fl_secagg_server_t *s, uint32_t sender,
                                      const Flotilla__AdvertiseKeys *m)
{
    uint8_t sb[FL_SECAGG_ADVERTISE_SIGNED_BYTES];
    if (m == NULL)
        return FL_EINVAL;
    if (s->phase != FL_SECAGG_PHASE_ADVERTISE)
        return FL_ESTATE;
    long a = sender_index(s, sender, m->client_id);
    if (a < 0)
        return (int)a;
    if (m->round != s->round)
        return FL_EROUND;
    if (m->c_pk.len != 32 || m->s_pk.len != 32 ||
        m->signature.len != FL_SECAGG_SIG_BYTES ||
        m->identity_key.len != FL_SECAGG_IDPK_BYTES)
        return FL_EFORMAT;
    sclient_t *c = &s->cl[a];
    if (c->adv)
        return FL_EDUPLICATE;
    if (s->idkeys != NULL && sodium_memcmp(s->idkeys + (size_t)a * 32,
                                           m->identity_key.data, 32) != 0)
        return FL_ESIGNATURE;
    fl_secagg_advertise_signed_bytes(sb, s->nonce, s->round, m->client_id,
                                     m->c_pk.data, m->s_pk.data);
    if (crypto_sign_ed25519_verify_detached(m->signature.data, sb, sizeof sb,
                                            m->identity_key.data) != 0)
        return FL_ESIGNATURE;
    memcpy(c->c_pk, m->c_pk.data, 32);
    memcpy(c->s_pk, m->s_pk.data, 32);
    memcpy(c->id_pk, m->identity_key.data, 32);
    memcpy(c->sig, m->signature.data, 64);
    c->adv = 1;
    s->n_adv++;
    return 0;
}

static void adv_view(const fl_secagg_server_t *s, uint32_t a,
                     Flotilla__AdvertiseKeys *k)
{
    const sclient_t *c = &s->cl[a];
    flotilla__advertise_keys__init(k);
    k->round = s->round;
    k->client_id = s->g.ids[a];
    k->c_pk = (ProtobufCBinaryData){32, (uint8_t *)c->c_pk};
    k->s_pk = (ProtobufCBinaryData){32, (uint8_t *)c->s_pk};
    k->identity_key = (ProtobufCBinaryData){32, (uint8_t *)c->id_pk};
    k->signature = (ProtobufCBinaryData){64, (uint8_t *)c->sig};
}

int fl_secagg_server_advertise_close(fl_secagg_server_t *s)
{
    Flotilla__AdvertiseKeys *views = NULL;
    const Flotilla__AdvertiseKeys **ptrs = NULL;
    int rc;
    if (s->phase != FL_SECAGG_PHASE_ADVERTISE)
        return FL_ESTATE;
    info_start(s, FL_SECAGG_PHASE_ADVERTISE);
    /* a client with fewer than t neighbours' keys refuses to share (and a
     * client left out is no one's neighbour: no key, no share, no mask) */
    if ((rc = prune(s, 0, &s->n_adv)) != 0)
        return closed(s, rc, 0);
    if (s->n_adv < s->t)
        return too_few(s, s->n_adv);
    views = fl_calloc(s->n_adv, sizeof *views);
    ptrs = fl_calloc(s->n_adv, sizeof *ptrs);
    size_t nct;
    if (views == NULL || ptrs == NULL ||
        fl_mul_size((size_t)s->g.n * s->k, FL_SECAGG_CT_BYTES, &nct) != 0 ||
        (s->cts = fl_malloc(nct)) == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    size_t m = 0;
    for (uint32_t a = 0; a < s->g.n; a++)
        if (s->cl[a].adv) {
            adv_view(s, a, &views[m]);
            ptrs[m] = &views[m];
            m++;
        }
    if ((rc = fl_secagg_session_id(s->session, s->nonce, s->round, ptrs, m)) !=
        0)
        goto out;
    s->phase = FL_SECAGG_PHASE_SHARE_KEYS;
out:
    fl_free(views);
    fl_free(ptrs);
    return closed(s, rc, s->n_adv);
}

static int client_in(const fl_secagg_server_t *s, uint32_t id, int phase_flag,
                     long *a_out)
{
    long a = sa_graph_index(&s->g, id);
    if (a < 0)
        return FL_ENOENT;
    if (!*member(&s->cl[a], phase_flag))
        return FL_ENOENT;
    *a_out = a;
    return 0;
}

int fl_secagg_server_share_keys_request(fl_secagg_server_t *s, uint32_t id,
                                        Flotilla__ShareKeysRequest **out)
{
    sa_arena_t *ar = NULL;
    long a;
    int rc;
    *out = NULL;
    if (s->phase != FL_SECAGG_PHASE_SHARE_KEYS)
        return FL_ESTATE;
    if ((rc = client_in(s, id, 0, &a)) != 0)
        return rc;
    Flotilla__ShareKeysRequest *m =
        sa_msg_new(&flotilla__share_keys_request__descriptor, sizeof *m, &ar);
    if (m == NULL)
        return FL_ENOMEM;
    m->round = s->round;
    uint32_t nb = sa_graph_neighbors(&s->g, (uint32_t)a, s->tmp);
    if (sa_bytes(ar, &m->session_id, s->session, FL_SECAGG_SESSION_BYTES) ||
        (m->keys = sa_arena_alloc(ar, nb * sizeof *m->keys)) == NULL)
        goto nomem;
    for (uint32_t i = 0; i < nb; i++) {
        uint32_t b = s->tmp[i];
        if (!s->cl[b].adv)
            continue;
        Flotilla__AdvertiseKeys view, *k = sa_arena_alloc(ar, sizeof *k);
        if (k == NULL)
            goto nomem;
        adv_view(s, b, &view);
        *k = view;
        if (sa_bytes(ar, &k->c_pk, view.c_pk.data, 32) ||
            sa_bytes(ar, &k->s_pk, view.s_pk.data, 32) ||
            sa_bytes(ar, &k->identity_key, view.identity_key.data, 32) ||
            sa_bytes(ar, &k->signature, view.signature.data, 64))
            goto nomem;
        m->keys[m->n_keys++] = k;
    }
    *out = m;
    return 0;
nomem:
    fl_secagg_msg_free(m);
    return FL_ENOMEM;
}

/* ---- phase 1: share keys
 * ------------------------------------------------------ */

int fl_secagg_server_handle_share_keys(fl_secagg_server_t *s, uint32_t sender,
                                       const Flotilla__ShareKeysResponse *m)
{
    if (m == NULL)
        return FL_EINVAL;
    long a = admit(s, FL_SECAGG_PHASE_SHARE_KEYS, sender, m->client_id,
                   m->round, &m->session_id);
    if (a < 0)
        return (int)a;
    uint32_t nb;
    if (m->n_shares != live_neighbours(s, (uint32_t)a, 0, &nb))
        return FL_EPROTO;
    memset(s->seen, 0, s->k);
    for (size_t i = 0; i < m->n_shares; i++) {
        const Flotilla__EncryptedShare *e = m->shares[i];
        if (e->from != sender)
            return FL_EPROTO;
        long b = sa_graph_index(&s->g, e->to);
        long slot = b < 0 ? -1 : sa_graph_slot(&s->g, (uint32_t)a, (uint32_t)b);
        if (slot < 0 || !s->cl[b].adv)
            return FL_EPROTO;
        if (s->seen[slot])
            return FL_EDUPLICATE;
        if (e->ciphertext.len != FL_SECAGG_CT_BYTES)
            return FL_EFORMAT;
        s->seen[slot] = 1;
    }
    for (size_t i = 0; i < m->n_shares; i++) {
        const Flotilla__EncryptedShare *e = m->shares[i];
        long b = sa_graph_index(&s->g, e->to);
        long slot = sa_graph_slot(&s->g, (uint32_t)a, (uint32_t)b);
        memcpy(s->cts + ((size_t)a * s->k + (size_t)slot) * FL_SECAGG_CT_BYTES,
               e->ciphertext.data, FL_SECAGG_CT_BYTES);
    }
    s->cl[a].shared = 1;
    s->n_shared++;
    return 0;
}

int fl_secagg_server_share_keys_close(fl_secagg_server_t *s)
{
    int rc;
    if (s->phase != FL_SECAGG_PHASE_SHARE_KEYS)
        return FL_ESTATE;
    info_start(s, FL_SECAGG_PHASE_SHARE_KEYS);
    /* A client with fewer than t neighbours' shares refuses to mask. One
     * left out is a dropout of this phase that its neighbours never heard
     * of: its shares are not forwarded, so no one masks with it, and its
     * secrets are never needed. */
    if ((rc = prune(s, 1, &s->n_shared)) != 0)
        return closed(s, rc, 0);
    if (s->n_shared < s->t)
        return too_few(s, s->n_shared);
    s->phase = FL_SECAGG_PHASE_MASKED_INPUT;
    return closed(s, 0, s->n_shared);
}

int fl_secagg_server_masked_input_request(fl_secagg_server_t *s, uint32_t id,
                                          Flotilla__MaskedInputRequest **out)
{
    sa_arena_t *ar = NULL;
    long a;
    int rc;
    *out = NULL;
    if (s->phase != FL_SECAGG_PHASE_MASKED_INPUT)
        return FL_ESTATE;
    if ((rc = client_in(s, id, 1, &a)) != 0)
        return rc;
    Flotilla__MaskedInputRequest *m =
        sa_msg_new(&flotilla__masked_input_request__descriptor, sizeof *m, &ar);
    if (m == NULL)
        return FL_ENOMEM;
    m->round = s->round;
    uint32_t nb = sa_graph_neighbors(&s->g, (uint32_t)a, s->tmp);
    if (sa_bytes(ar, &m->session_id, s->session, FL_SECAGG_SESSION_BYTES) ||
        (m->shares = sa_arena_alloc(ar, nb * sizeof *m->shares)) == NULL)
        goto nomem;
    for (uint32_t i = 0; i < nb; i++) {
        uint32_t b = s->tmp[i];
        if (!s->cl[b].shared)
            continue;
        long slot = sa_graph_slot(&s->g, b, (uint32_t)a);
        FL_ASSERT(slot >= 0);
        Flotilla__EncryptedShare *e = sa_arena_alloc(ar, sizeof *e);
        if (e == NULL)
            goto nomem;
        flotilla__encrypted_share__init(e);
        e->from = s->g.ids[b];
        e->to = id;
        if (sa_bytes(ar, &e->ciphertext,
                     s->cts +
                         ((size_t)b * s->k + (size_t)slot) * FL_SECAGG_CT_BYTES,
                     FL_SECAGG_CT_BYTES))
            goto nomem;
        m->shares[m->n_shares++] = e;
    }
    *out = m;
    return 0;
nomem:
    fl_secagg_msg_free(m);
    return FL_ENOMEM;
}

/* ---- phase 2: masked input
 * ----------------------------------------------------- */

int fl_secagg_server_handle_masked_input(fl_secagg_server_t *s, uint32_t sender,
                                         const Flotilla__MaskedInputResponse *m)
{
    if (m == NULL)
        return FL_EINVAL;
    long a = admit(s, FL_SECAGG_PHASE_MASKED_INPUT, sender, m->client_id,
                   m->round, &m->session_id);
    if (a < 0)
        return (int)a;
    if (m->num_values != s->dim)
        return FL_EPROTO;
    size_t nbytes = fl_bitpack_bytes(s->dim, s->r);
    if (m->packed.len != nbytes)
        return FL_EFORMAT;
    unsigned used = (unsigned)((s->dim * s->r) % 8);
    if (used != 0 && (m->packed.data[nbytes - 1] >> used) != 0)
        return FL_EFORMAT;
    sa_bits_add(s->acc, m->packed.data, nbytes, s->dim, s->r, 0);
    s->cl[a].input = 1;
    s->n_input++;
    return 0;
}

int fl_secagg_server_masked_input_close(fl_secagg_server_t *s)
{
    if (s->phase != FL_SECAGG_PHASE_MASKED_INPUT)
        return FL_ESTATE;
    info_start(s, FL_SECAGG_PHASE_MASKED_INPUT);
    if (s->n_input < s->t)
        return too_few(s, s->n_input);
    /* The inputs are in the sum: no one can be left out any more. Even if
     * every survivor answers, each needed secret must have t holders among
     * them (this implies every survivor's own check: its surviving
     * neighbours plus itself reach t). */
    if (check_holders(s, 2) != 0)
        return closed(s, abort_round(s, FL_ETHRESHOLD), 0);
    size_t nrev;
    if (fl_mul_size((size_t)s->g.n * s->k, S_BYTES, &nrev) != 0 ||
        (s->revealed = sodium_malloc(nrev)) == NULL)
        return closed(s, FL_ENOMEM, 0);
    sodium_memzero(s->revealed, nrev);
    s->phase = FL_SECAGG_PHASE_UNMASKING;
    return closed(s, 0, s->n_input);
}

int fl_secagg_server_unmasking_request(fl_secagg_server_t *s, uint32_t id,
                                       Flotilla__UnmaskingRequest **out)
{
    sa_arena_t *ar = NULL;
    long a;
    int rc;
    *out = NULL;
    if (s->phase != FL_SECAGG_PHASE_UNMASKING)
        return FL_ESTATE;
    if ((rc = client_in(s, id, 2, &a)) != 0)
        return rc;
    Flotilla__UnmaskingRequest *m =
        sa_msg_new(&flotilla__unmasking_request__descriptor, sizeof *m, &ar);
    if (m == NULL)
        return FL_ENOMEM;
    m->round = s->round;
    uint32_t nb = sa_graph_neighbors(&s->g, (uint32_t)a, s->tmp);
    if (sa_bytes(ar, &m->session_id, s->session, FL_SECAGG_SESSION_BYTES) ||
        (m->survivors = sa_arena_alloc(ar, (nb + 1) * sizeof(uint32_t))) ==
            NULL ||
        (m->dropped = sa_arena_alloc(ar, nb * sizeof(uint32_t))) == NULL) {
        fl_secagg_msg_free(m);
        return FL_ENOMEM;
    }
    m->survivors[m->n_survivors++] = id;
    for (uint32_t i = 0; i < nb; i++) {
        const sclient_t *c = &s->cl[s->tmp[i]];
        if (!c->shared)
            continue;
        if (c->input)
            m->survivors[m->n_survivors++] = s->g.ids[s->tmp[i]];
        else
            m->dropped[m->n_dropped++] = s->g.ids[s->tmp[i]];
    }
    *out = m;
    return 0;
}

/* ---- phase 3: unmasking -----------------------------------------------------
 */

int fl_secagg_server_handle_unmasking(fl_secagg_server_t *s, uint32_t sender,
                                      const Flotilla__UnmaskingResponse *m)
{
    int rc;
    if (m == NULL)
        return FL_EINVAL;
    long a = admit(s, FL_SECAGG_PHASE_UNMASKING, sender, m->client_id, m->round,
                   &m->session_id);
    if (a < 0)
        return (int)a;
    uint32_t nb;
    if (m->n_shares != live_neighbours(s, (uint32_t)a, 1, &nb))
        return FL_EPROTO;
    memset(s->seen, 0, s->k);
    for (size_t i = 0; i < m->n_shares; i++) {
        const Flotilla__RevealedShare *r = m->shares[i];
        long b = sa_graph_index(&s->g, r->owner);
        long slot = b < 0 ? -1 : sa_graph_slot(&s->g, (uint32_t)a, (uint32_t)b);
        if (slot < 0 || !s->cl[b].shared)
            return FL_EPROTO;
        if (s->seen[slot])
            return FL_EDUPLICATE;
        Flotilla__ShareKind want =
            s->cl[b].input ? FLOTILLA__SHARE_KIND__SHARE_SELF_MASK
                           : FLOTILLA__SHARE_KIND__SHARE_PAIRWISE_KEY;
        if (r->kind != want)
            return FL_EPROTO;
        if (r->share.len != S_BYTES)
            return FL_EFORMAT;
        if ((rc = sa_share_check(r->share.data, S_BYTES)) != 0)
            return rc;
        s->seen[slot] = 1;
    }
    for (size_t i = 0; i < m->n_shares; i++) {
        const Flotilla__RevealedShare *r = m->shares[i];
        long b = sa_graph_index(&s->g, r->owner);
        long slot = sa_graph_slot(&s->g, (uint32_t)a, (uint32_t)b);
        memcpy(s->revealed + ((size_t)a * s->k + (size_t)slot) * S_BYTES,
               r->share.data, S_BYTES);
    }
    s->cl[a].unmasked = 1;
    s->n_unmasked++;
    return 0;
}

/* Recovers the secret of owner v from the first t holders that answered. */
static int reconstruct(fl_secagg_server_t *s, uint32_t v, uint32_t *xs,
                       uint32_t *last_xs, uint32_t *have_last, uint64_t *coef,
                       const uint8_t **ptrs)
{
    uint32_t nb = sa_graph_neighbors(&s->g, v, s->tmp), m = 0;
    for (uint32_t i = 0; i < nb && m < s->t; i++) {
        uint32_t u = s->tmp[i];
        if (!s->cl[u].unmasked)
            continue;
        long slot = sa_graph_slot(&s->g, u, v);
        FL_ASSERT(slot >= 0);
        xs[m] = s->g.ids[u];
        ptrs[m] = s->revealed + ((size_t)u * s->k + (size_t)slot) * S_BYTES;
        m++;
    }
    if (m < s->t)
        return FL_ETHRESHOLD;
    /* neighbouring owners often share the holder set: reuse coefficients */
    if (!*have_last || memcmp(xs, last_xs, m * sizeof *xs) != 0) {
        int rc = sa_lagrange0(coef, xs, s->t);
        if (rc != 0)
            return rc;
        memcpy(last_xs, xs, m * sizeof *xs);
        *have_last = 1;
    }
    return sa_shamir_apply(s->secrets + (size_t)v * 32, 32, coef, s->t, ptrs);
}

int fl_secagg_server_unmasking_close(fl_secagg_server_t *s)
{
    uint32_t *xs = NULL, *last = NULL, have_last = 0;
    uint64_t *coef = NULL;
    const uint8_t **ptrs = NULL;
    int rc = 0;
    if (s->phase != FL_SECAGG_PHASE_UNMASKING)
        return FL_ESTATE;
    info_start(s, FL_SECAGG_PHASE_UNMASKING);
    if (s->n_unmasked < s->t)
        return too_few(s, s->n_unmasked);
    /* every needed secret has t holders that answered, or nothing is
     * reconstructed at all */
    if (check_holders(s, 3) != 0)
        return closed(s, abort_round(s, FL_ETHRESHOLD), 0);
    xs = fl_calloc(s->t, sizeof *xs);
    last = fl_calloc(s->t, sizeof *last);
    coef = fl_calloc(s->t, sizeof *coef);
    ptrs = fl_calloc(s->t, sizeof *ptrs);
    s->secrets = sodium_malloc((size_t)s->g.n * 32);
    if (xs == NULL || last == NULL || coef == NULL || ptrs == NULL ||
        s->secrets == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    sodium_memzero(s->secrets, (size_t)s->g.n * 32);
    size_t njobs = 0;
    for (uint32_t v = 0; v < s->g.n; v++) {
        uint32_t holders;
        if (secret_needed(s, v, 3, &holders) == 0)
            continue; /* not shared, or dropped with no survivor near */
        if ((rc = reconstruct(s, v, xs, last, &have_last, coef, ptrs)) != 0)
            goto out;
        if (s->cl[v].input) {
            njobs++;
            continue;
        }
        /* a dropped client's recovered key must match the one it signed */
        uint8_t pk[32];
        if (crypto_scalarmult_base(pk, s->secrets + (size_t)v * 32) != 0 ||
            sodium_memcmp(pk, s->cl[v].s_pk, 32) != 0) {
            rc = FL_ECRYPTO;
            goto out;
        }
        uint32_t nb = sa_graph_neighbors(&s->g, v, s->tmp);
        for (uint32_t i = 0; i < nb; i++)
            njobs += s->cl[s->tmp[i]].input;
    }
    s->jobs = fl_calloc(njobs ? njobs : 1, sizeof *s->jobs);
    s->seeds = sodium_malloc(njobs ? njobs * 32 : 32);
    if (s->jobs == NULL || s->seeds == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    s->njobs = 0;
    for (uint32_t v = 0; v < s->g.n; v++) {
        if (!s->cl[v].shared)
            continue;
        if (s->cl[v].input) {
            s->jobs[s->njobs++] = (job_t){v, v, 1};
            continue;
        }
        uint32_t nb = sa_graph_neighbors(&s->g, v, s->tmp);
        for (uint32_t i = 0; i < nb; i++) {
            uint32_t u = s->tmp[i];
            if (s->cl[u].input) /* u added +PRG when id_u < id_v */
                s->jobs[s->njobs++] =
                    (job_t){u, v, (uint8_t)(s->g.ids[u] < s->g.ids[v])};
        }
    }
    FL_ASSERT(s->njobs == njobs);
    s->phase = FL_SECAGG_PHASE_UNMASK;
out:
    fl_free(xs);
    fl_free(last);
    sodium_memzero(coef, s->t * sizeof *coef);
    fl_free(coef);
    fl_free(ptrs);
    if (rc != 0)
        return closed(s, abort_round(s, rc), 0);
    return closed(s, 0, s->n_unmasked);
}

/* ---- phase 4: the PRG work
 * ------------------------------------------------------- */

static int check_parts(fl_secagg_server_t *s, unsigned part, unsigned nparts)
{
    if (nparts < 1 || nparts > FL_SECAGG_MAX_PARTS || part >= nparts)
        return FL_EINVAL;
    if (s->phase != FL_SECAGG_PHASE_UNMASK)
        return FL_ESTATE;
    /* the first call fixes nparts; the driver must use the same for all */
    unsigned expected = 0;
    if (!__atomic_compare_exchange_n(&s->nparts, &expected, nparts, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
        expected != nparts)
        return FL_EINVAL;
    return 0;
}

static uint64_t all_parts(unsigned nparts)
{
    return nparts == 64 ? ~0ull : (1ull << nparts) - 1;
}

int fl_secagg_server_derive_part(fl_secagg_server_t *s, unsigned part,
                                 unsigned nparts)
{
    int rc = check_parts(s, part, nparts);
    if (rc != 0)
        return rc;
    for (size_t j = part; j < s->njobs; j += nparts) {
        const job_t *jb = &s->jobs[j];
        uint8_t *seed = s->seeds + j * 32;
        if (jb->a == jb->b) {
            memcpy(seed, s->secrets + (size_t)jb->a * 32, 32);
        } else if ((rc = fl_secagg_derive_mask_seed(
                        seed, s->secrets + (size_t)jb->b * 32,
                        s->cl[jb->a].s_pk, s->session, s->g.ids[jb->a],
                        s->g.ids[jb->b])) != 0) {
            return rc;
        }
    }
    atomic_fetch_or(&s->derive_done, 1ull << part);
    return 0;
}

int fl_secagg_server_unmask_part(fl_secagg_server_t *s, unsigned part,
                                 unsigned nparts)
{
    int rc = check_parts(s, part, nparts);
    if (rc != 0)
        return rc;
    if (atomic_load(&s->derive_done) != all_parts(nparts))
        return FL_ESTATE;
    size_t blocks = (s->dim + FL_SECAGG_PART_ALIGN - 1) / FL_SECAGG_PART_ALIGN;
    size_t lo = FL_MIN(s->dim, blocks * part / nparts * FL_SECAGG_PART_ALIGN);
    size_t hi =
        FL_MIN(s->dim, blocks * (part + 1) / nparts * FL_SECAGG_PART_ALIGN);
    sa_prg_t *p = sa_prg_new();
    if (p == NULL)
        return FL_ENOMEM;
    /* tile the coordinates so the accumulator slice stays in cache */
    for (size_t t0 = lo; t0 < hi && rc == 0; t0 += TILE) {
        size_t len = FL_MIN((size_t)TILE, hi - t0);
        for (size_t j = 0; j < s->njobs && rc == 0; j++)
            rc = sa_prg_add(p, s->acc + t0, t0, len, s->seeds + j * 32, s->prg,
                            s->r, s->jobs[j].negate);
    }
    sa_prg_free(p);
    if (rc == 0)
        atomic_fetch_or(&s->unmask_done, 1ull << part);
    return rc;
}

int fl_secagg_server_unmask_finish(fl_secagg_server_t *s)
{
    if (s->phase != FL_SECAGG_PHASE_UNMASK || s->nparts == 0 ||
        atomic_load(&s->unmask_done) != all_parts(s->nparts))
        return FL_ESTATE;
    if (s->r < 32) {
        uint32_t mask = (1u << s->r) - 1;
        for (size_t i = 0; i < s->dim; i++)
            s->acc[i] &= mask;
    }
    sodium_memzero(s->seeds, s->njobs * 32);
    sodium_memzero(s->secrets, (size_t)s->g.n * 32);
    sodium_memzero(s->revealed, (size_t)s->g.n * s->k * S_BYTES);
    s->phase = FL_SECAGG_PHASE_DONE;
    return 0;
}

int fl_secagg_server_unmask(fl_secagg_server_t *s)
{
    int rc;
    if ((rc = fl_secagg_server_derive_part(s, 0, 1)) != 0 ||
        (rc = fl_secagg_server_unmask_part(s, 0, 1)) != 0)
        return rc;
    return fl_secagg_server_unmask_finish(s);
}

int fl_secagg_server_result(const fl_secagg_server_t *s, uint32_t *out,
                            size_t dim, uint32_t *survivors, size_t *nsurvivors)
{
    if (s->phase == FL_SECAGG_PHASE_ABORTED)
        return s->abort_rc;
    if (s->phase != FL_SECAGG_PHASE_DONE)
        return FL_ESTATE;
    if (dim != s->dim || out == NULL)
        return FL_EINVAL;
    memcpy(out, s->acc, dim * sizeof *out);
    size_t m = 0;
    for (uint32_t a = 0; a < s->g.n; a++)
        if (s->cl[a].input) {
            if (survivors != NULL)
                survivors[m] = s->g.ids[a];
            m++;
        }
    if (survivors != NULL && m > 1) {
        /* ascending ids (insertion sort; small and rare) */
        for (size_t i = 1; i < m; i++) {
            uint32_t v = survivors[i];
            size_t j = i;
            for (; j > 0 && survivors[j - 1] > v; j--)
                survivors[j] = survivors[j - 1];
            survivors[j] = v;
        }
    }
    if (nsurvivors != NULL)
        *nsurvivors = m;
    return 0;
}

/* ---- dispatch
 * ----------------------------------------------------------------- */

int fl_secagg_server_handle(fl_secagg_server_t *s, uint32_t sender,
                            const Flotilla__Envelope *env)
{
    if (env == NULL)
        return FL_EINVAL;
    switch (env->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        return fl_secagg_server_handle_advertise(s, sender,
                                                 env->advertise_keys);
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        return fl_secagg_server_handle_share_keys(s, sender,
                                                  env->share_keys_response);
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        return fl_secagg_server_handle_masked_input(s, sender,
                                                    env->masked_input_response);
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        return fl_secagg_server_handle_unmasking(s, sender,
                                                 env->unmasking_response);
    default:
        return FL_EPROTO;
    }
}
