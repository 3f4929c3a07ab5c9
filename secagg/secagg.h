/*
 * secagg/secagg.h — secure aggregation (Bonawitz et al., CCS 2017, in the
 * semi-honest setting) over a complete or a random Harary neighbour graph
 * (SecAgg+, Bell et al., CCS 2020), as state machines without I/O.
 *
 * A round, driven by the server, the simulator or a test:
 *
 *   server: fl_secagg_server_new(round, identity keys)
 *   client: fl_secagg_client_new(round, id, identity secret key)
 *   0 client_advertise -> AdvertiseKeys     -> server_handle_advertise
 *                                              server_advertise_close
 *   1 server_share_keys_request(id)          -> client_share_keys
 *     ShareKeysResponse                      -> server_handle_share_keys
 *                                              server_share_keys_close
 *   2 server_masked_input_request(id)        -> client_masked_input(x)
 *     MaskedInputResponse                    -> server_handle_masked_input
 *                                              (added to one accumulator)
 *                                              server_masked_input_close
 *   3 server_unmasking_request(id)           -> client_unmask
 *     UnmaskingResponse                      -> server_handle_unmasking
 *                                              server_unmasking_close
 *   4 server_unmask (or derive_part x K, unmask_part x K on workers, then
 *     server_unmask_finish), server_result -> sum of the survivors' inputs
 *     mod 2^r.
 *
 * A client that misses a phase's deadline is simply not heard from; the
 * driver calls the _close function when the deadline passes (or when all
 * have answered).
 *
 * Closing a phase, the server applies each client's own rule for the next
 * step, so that it never sends a request a client is bound to refuse:
 *   advertise_close    a client goes on only if at least t of its
 *                      neighbours (itself not counted) are left with keys;
 *   share_keys_close   only if at least t of its neighbours are left that
 *                      shared keys (it needs t shares to mask its input).
 * Both remove the clients below t again and again until every one left has
 * t (a client removed so is a dropout of the phase that closed: its next
 * request answers FL_ENOENT and its neighbours never get its keys or
 * shares, so no mask involves it), and abort with FL_ETHRESHOLD only when
 * fewer than t clients are left.
 *   masked_input_close aborts with FL_ETHRESHOLD when a secret the
 *                      unmasking needs (a survivor's b_u; a dropped
 *                      client's s_sk when a survivor masked with it) has
 *                      fewer than t holders among the survivors: inputs
 *                      are in the sum already, no client can be left out
 *                      any more, and the round cannot end.
 *   unmasking_close    aborts with FL_ETHRESHOLD, before reconstructing
 *                      anything, when such a secret has fewer than t
 *                      holders among the clients that answered.
 * fl_secagg_server_close_info says what the last _close did and why.
 *
 * Hostile input: every fl_secagg_server_handle_* checks the phase, the
 * round, the session id, the sender (`sender` is the round-local id the
 * transport authenticated; the message's client_id must match it), sizes
 * and duplicates before touching any state; a refused message changes
 * nothing and the driver closes only that peer. A client refuses a
 * request that fails a check, wipes its secrets and takes no further part.
 *
 * Cryptography (the exact bytes, so that separately built clients and
 * servers agree; tests/vectors/secagg_kat.txt holds known answers):
 *   session_id  = BLAKE2b-256("flotilla-secagg-session-v1" || round_nonce ||
 *                 be64 round || for every advertised client in increasing id
 *                 order: be32 id || c_pk || s_pk || identity_key)
 *   mask seed   s_uv = BLAKE2b-256(key = X25519(s_sk_u, s_pk_v),
 *                 "flotilla-secagg-mask-v1" || session_id ||
 *                 be32 min(u,v) || be32 max(u,v))
 *   share key   k_u->v = BLAKE2b-256(key = X25519(c_sk_u, c_pk_v),
 *                 "flotilla-secagg-share-v1" || session_id || be32 u ||
 *                 be32 v)                          (ordered: sender first)
 *   share AEAD  XChaCha20-Poly1305-IETF, key k_u->v, random 24-byte nonce,
 *                 AD = session_id || be64 round || be32 u || be32 v.
 *   Labels are ASCII without a NUL. BLAKE2b-256 is crypto_generichash with
 *   a 32-byte output (keyed where a key is given).
 *
 * Shares: a client splits b_u and s_sk_u among its neighbours that
 * advertised keys (not itself), t-of-them; so t counts neighbours, and
 * every survivor's b_u, and the s_sk_u of every dropped client that a
 * survivor masked with, must have t neighbours that answer the unmasking,
 * else the round aborts with FL_ETHRESHOLD. A recovered s_sk is checked against
 * the advertised s_pk (a wrong share gives FL_ECRYPTO, not a wrong sum).
 *
 * Masks: y_u = x_u + PRG(b_u) + sum over neighbours v that shared keys of
 *   (+PRG(s_uv) if u < v, -PRG(s_uv) if u > v)   (mod 2^r).
 *
 * Mask expansion PRG(seed) into n ring elements of r bits (1 <= r <= 32):
 *   the keystream K is AES-256-CTR (key = seed, initial counter block = 16
 *   zero bytes, the whole block a big-endian counter, as OpenSSL's CTR
 *   mode) or ChaCha20 (RFC 8439: key = seed, 32-bit block counter 0,
 *   12-byte zero nonce); element i is bits [i*r, (i+1)*r) of K read as a
 *   little-endian bit stream (bit j of K is bit j%8 of byte j/8) — the
 *   layout of common/bitpack.h. No bias (2^r divides 2^32), no keystream bit
 *   skipped; ceil(n*r/8) keystream bytes are used. For r = 32 element i is
 *   K[4i..4i+4) little-endian.
 *
 * Shamir: t-of-n over GF(p), p = 2^61 - 1. A 32-byte secret is split into
 * 5 chunks of 7 bytes (little-endian, the last zero-padded), one field
 * element each, each with its own random polynomial of degree t-1. A share
 * is the 5 evaluations at x = the holder's client id (>= 1), 8 bytes
 * little-endian each (40 bytes).
 *
 * Ownership: messages passed in are borrowed. Messages given out are
 * returned owned and freed with fl_secagg_msg_free. Thread-safety: one
 * handle is used by one thread at a time, except that distinct parts of
 * fl_secagg_server_derive_part / fl_secagg_server_unmask_part may run on
 * different threads at once. The primitives are reentrant.
 */
#ifndef FL_SECAGG_SECAGG_H
#define FL_SECAGG_SECAGG_H

#include "common/common.h"
#include "proto/flotilla.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define FL_SECAGG_NONCE_BYTES   32 /* round_nonce */
#define FL_SECAGG_SESSION_BYTES 32
#define FL_SECAGG_KEY_BYTES     32 /* X25519 keys, seeds, derived keys */
#define FL_SECAGG_IDPK_BYTES    32 /* Ed25519 public key */
#define FL_SECAGG_IDSK_BYTES    64 /* Ed25519 secret key (libsodium layout) */
#define FL_SECAGG_SIG_BYTES     64
#define FL_SECAGG_SHARE_BYTES   40  /* one Shamir share of a 32-byte secret */
#define FL_SECAGG_CT_BYTES      120 /* an EncryptedShare ciphertext */
#define FL_SECAGG_MAX_CLIENTS   100000u
#define FL_SECAGG_MAX_DIM       (1u << 28)
#define FL_SECAGG_SHAMIR_P      ((1ull << 61) - 1)
/* Part boundaries of fl_secagg_server_unmask_part are multiples of this
 * many coordinates (whole AES and ChaCha20 blocks for every r). */
#define FL_SECAGG_PART_ALIGN 512u
#define FL_SECAGG_MAX_PARTS  64u

/* What the round fixes for everyone; caller-allocated, copied by _new. */
typedef struct {
    uint64_t round;
    uint8_t round_nonce[FL_SECAGG_NONCE_BYTES];
    size_t dim; /* d: the length of every input vector */
    /* threshold, degree, ring_bits, prg, graph, graph_seed, participants
     * (distinct ids >= 1); borrowed, copied. */
    const Flotilla__SecAggConfig *config;
} fl_secagg_round_t;

/* Frees a message given out by this module; NULL is a no-op. */
void fl_secagg_msg_free(void *msg);

/* ---- parameters ---------------------------------------------------------- */

typedef struct {
    Flotilla__GraphKind graph;
    uint32_t degree;    /* neighbours per client */
    uint32_t threshold; /* t */
} fl_secagg_params_t;

/* Degree and threshold for n clients of which a fraction gamma may be
 * corrupt and a fraction delta may drop out over the round: the smallest
 * even degree k of a random Harary graph such that (a) the honest survivors
 * stay connected except with probability 2^-41 and (b) some t has
 * Pr[a client has >= t corrupt neighbours] <= 2^-41/n (security, sigma = 40
 * split over two events) and Pr[a client has < t surviving neighbours]
 * <= 2^-20/n (correctness, eta = 20); t is the smallest such value. For
 * n <= FL_SECAGG_SMALL_COHORT, or when no such k < n/2 exists, the complete
 * graph with
 * t = max(2, floor((n - 1) / 2) + 1), which needs gamma < 1/2 and
 * delta < 1/2. FL_EINVAL for n < 3 or rates outside [0, 1) or
 * gamma + delta > 0.9; FL_ERANGE when the complete graph cannot meet the
 * rates either. */
#define FL_SECAGG_SMALL_COHORT 64u
int fl_secagg_params_find(uint32_t n, double gamma, double delta,
                          fl_secagg_params_t *out);
/* Only the Harary search; FL_ERANGE when no k < n - 1 works. */
int fl_secagg_params_harary(uint32_t n, double gamma, double delta,
                            fl_secagg_params_t *out);

/* Checks a SecAggConfig against the module's limits: 3 <= n <=
 * FL_SECAGG_MAX_CLIENTS distinct ids >= 1, 1 <= r <= 32, a known prg and
 * graph, degree = n - 1 (complete) or even in [2, n - 2] (Harary),
 * 2 <= t <= degree. */
int fl_secagg_config_check(const Flotilla__SecAggConfig *c);

/* ---- the neighbour graph --------------------------------------------------
 */

/* The neighbours of client `id` (round-local ids) written to out (room for
 * the degree), in the order the protocol uses; returns their number or a
 * negative FL_E* code. The Harary graph places the participants on a ring in
 * the order of a Fisher-Yates shuffle driven by the ChaCha20 keystream of
 * key BLAKE2b-256("flotilla-secagg-graph-v1" || be64 graph_seed) (uniform
 * draws below i+1 by rejection of 32-bit little-endian words) and joins
 * each to the degree/2 nearest on either side. */
int fl_secagg_graph_neighbors(const Flotilla__SecAggConfig *c, uint32_t id,
                              uint32_t *out, size_t outlen);

/* ---- primitives (exposed for known-answer tests) ------------------------- */

/* The session id over `n` advertisements (any order; sorted inside). */
int fl_secagg_session_id(uint8_t out[FL_SECAGG_SESSION_BYTES],
                         const uint8_t round_nonce[FL_SECAGG_NONCE_BYTES],
                         uint64_t round,
                         const Flotilla__AdvertiseKeys *const *keys, size_t n);
/* The bytes an AdvertiseKeys signature covers (out: 21+32+8+4+32+32). */
#define FL_SECAGG_ADVERTISE_SIGNED_BYTES 129
void fl_secagg_advertise_signed_bytes(
    uint8_t out[FL_SECAGG_ADVERTISE_SIGNED_BYTES],
    const uint8_t round_nonce[FL_SECAGG_NONCE_BYTES], uint64_t round,
    uint32_t client_id, const uint8_t c_pk[32], const uint8_t s_pk[32]);
/* X25519 then the keyed BLAKE2b above. FL_ECRYPTO for a low-order point. */
int fl_secagg_derive_mask_seed(uint8_t out[FL_SECAGG_KEY_BYTES],
                               const uint8_t my_sk[32],
                               const uint8_t peer_pk[32],
                               const uint8_t session[FL_SECAGG_SESSION_BYTES],
                               uint32_t u, uint32_t v);
int fl_secagg_derive_share_key(uint8_t out[FL_SECAGG_KEY_BYTES],
                               const uint8_t my_sk[32],
                               const uint8_t peer_pk[32],
                               const uint8_t session[FL_SECAGG_SESSION_BYTES],
                               uint32_t from, uint32_t to);

/* The EncryptedShare ciphertext: nonce (24, random) || XChaCha20-Poly1305
 * of pt (80: share of b || share of s_sk) with AD = session || be64 round ||
 * be32 from || be32 to || tag (16). open: FL_EFORMAT for a bad length,
 * FL_EMAC when the tag does not verify (pt wiped). */
int fl_secagg_share_seal(uint8_t ct[FL_SECAGG_CT_BYTES], const uint8_t key[32],
                         const uint8_t session[FL_SECAGG_SESSION_BYTES],
                         uint64_t round, uint32_t from, uint32_t to,
                         const uint8_t pt[2 * FL_SECAGG_SHARE_BYTES]);
int fl_secagg_share_open(uint8_t pt[2 * FL_SECAGG_SHARE_BYTES],
                         const uint8_t key[32],
                         const uint8_t session[FL_SECAGG_SESSION_BYTES],
                         uint64_t round, uint32_t from, uint32_t to,
                         const uint8_t *ct, size_t ctlen);

/* out[i] = element i of PRG(seed), i in [0, n). prg: Flotilla__MaskPrg. */
int fl_secagg_prg_expand(uint32_t *out, size_t n,
                         const uint8_t seed[FL_SECAGG_KEY_BYTES], int prg,
                         unsigned r);
/* acc[i] += (or -= when negate) element start+i of PRG(seed), i in [0, n),
 * mod 2^32; start is a multiple of FL_SECAGG_PART_ALIGN. The hot loop. */
int fl_secagg_prg_add(uint32_t *acc, size_t start, size_t n,
                      const uint8_t seed[FL_SECAGG_KEY_BYTES], int prg,
                      unsigned r, int negate);

/* Shamir t-of-nx over GF(2^61 - 1) for a secret of any length: it is cut
 * into 7-byte chunks, each shared with its own polynomial, so a share holds
 * ceil(len / 7) elements, 8 bytes each (share_len = 8 * ceil(len / 7)). shares:
 * nx * share_len bytes, share i for point xs[i] (distinct, >= 1). Fresh
 * coefficients from randombytes_buf. */
int fl_secagg_shamir_split(uint8_t *shares, size_t share_len,
                           const uint8_t *secret, size_t len, uint32_t t,
                           const uint32_t *xs, size_t nx);
/* The same with the coefficients drawn from `coins` (8 bytes little-endian
 * per draw, the low 61 bits kept, a draw equal to p rejected; for each
 * chunk in turn its t-1 coefficients, lowest degree first). For tests.
 * FL_ERANGE when coins run out. */
int fl_secagg_shamir_split_coins(uint8_t *shares, size_t share_len,
                                 const uint8_t *secret, size_t len, uint32_t t,
                                 const uint32_t *xs, size_t nx,
                                 const uint8_t *coins, size_t ncoins);
/* Recovers the secret from m >= t shares (the first t are used). Refuses
 * fewer than t shares (FL_ETHRESHOLD), a repeated point (FL_EDUPLICATE),
 * x = 0 or a bad length (FL_EINVAL), an element >= p (FL_EFORMAT) and a
 * result whose chunks do not fit in 7 bytes or whose padding is not zero
 * (FL_ECRYPTO: inconsistent shares). The secret is wiped on error. */
int fl_secagg_shamir_combine(uint8_t *secret, size_t len, uint32_t t,
                             const uint32_t *xs, const uint8_t *shares,
                             size_t share_len, size_t m);

/* ---- client -----------------------------------------------------------------
 */

typedef struct fl_secagg_client fl_secagg_client_t;

/* identity_sk: the client's Ed25519 secret key (borrowed, copied into
 * guarded memory). *out returned owned. */
int fl_secagg_client_new(const fl_secagg_round_t *round, uint32_t client_id,
                         const uint8_t identity_sk[FL_SECAGG_IDSK_BYTES],
                         fl_secagg_client_t **out);
void fl_secagg_client_free(fl_secagg_client_t *c);

/* Phase 0: fresh key pairs and self-mask seed; the signed advertisement. */
int fl_secagg_client_advertise(fl_secagg_client_t *c,
                               Flotilla__AdvertiseKeys **out);
/* Phase 1: checks the neighbours' keys and signatures (and the session id
 * when it received every key), shares b_u and s_sk_u with them. */
int fl_secagg_client_share_keys(fl_secagg_client_t *c,
                                const Flotilla__ShareKeysRequest *req,
                                Flotilla__ShareKeysResponse **out);
/* Phase 2: decrypts the shares (at least t), masks x (dim values, each
 * already reduced mod 2^r by the caller; borrowed) and packs it. */
int fl_secagg_client_masked_input(fl_secagg_client_t *c,
                                  const Flotilla__MaskedInputRequest *req,
                                  const uint32_t *x,
                                  Flotilla__MaskedInputResponse **out);
/* Phase 3: reveals, for each neighbour holding a share, the self-mask share
 * if it survived or the pairwise-key share if it dropped — never both:
 * refuses a request that lists a peer twice, leaves one out, names a
 * stranger, drops this client or has fewer than t survivors; answers at
 * most once. */
int fl_secagg_client_unmask(fl_secagg_client_t *c,
                            const Flotilla__UnmaskingRequest *req,
                            Flotilla__UnmaskingResponse **out);

/* ---- server
 * ------------------------------------------------------------------ */

typedef struct fl_secagg_server fl_secagg_server_t;

typedef enum {
    FL_SECAGG_PHASE_ADVERTISE = 0,
    FL_SECAGG_PHASE_SHARE_KEYS,
    FL_SECAGG_PHASE_MASKED_INPUT,
    FL_SECAGG_PHASE_UNMASKING,
    FL_SECAGG_PHASE_UNMASK, /* reconstruction done, PRG work pending */
    FL_SECAGG_PHASE_DONE,
    FL_SECAGG_PHASE_ABORTED,
} fl_secagg_phase_t;

/* identity_keys: NULL, or one Ed25519 public key per participant in the
 * order of config->participants (borrowed, copied); with keys, an
 * advertisement signed by another key is refused. *out returned owned. */
int fl_secagg_server_new(const fl_secagg_round_t *round,
                         const uint8_t (*identity_keys)[FL_SECAGG_IDPK_BYTES],
                         fl_secagg_server_t **out);
void fl_secagg_server_free(fl_secagg_server_t *s);
fl_secagg_phase_t fl_secagg_server_phase(const fl_secagg_server_t *s);

/* Dispatch on the Envelope's body to the handlers below (FL_EPROTO for a
 * body that is not a client's secure-aggregation message). */
int fl_secagg_server_handle(fl_secagg_server_t *s, uint32_t sender,
                            const Flotilla__Envelope *env);

int fl_secagg_server_handle_advertise(fl_secagg_server_t *s, uint32_t sender,
                                      const Flotilla__AdvertiseKeys *m);
int fl_secagg_server_advertise_close(fl_secagg_server_t *s);
/* FL_ENOENT for a client that is not in the phase's set. */
int fl_secagg_server_share_keys_request(fl_secagg_server_t *s, uint32_t id,
                                        Flotilla__ShareKeysRequest **out);

int fl_secagg_server_handle_share_keys(fl_secagg_server_t *s, uint32_t sender,
                                       const Flotilla__ShareKeysResponse *m);
int fl_secagg_server_share_keys_close(fl_secagg_server_t *s);
int fl_secagg_server_masked_input_request(fl_secagg_server_t *s, uint32_t id,
                                          Flotilla__MaskedInputRequest **out);

/* Adds the masked vector into the accumulator at once (O(d) memory). */
int fl_secagg_server_handle_masked_input(
    fl_secagg_server_t *s, uint32_t sender,
    const Flotilla__MaskedInputResponse *m);
int fl_secagg_server_masked_input_close(fl_secagg_server_t *s);
int fl_secagg_server_unmasking_request(fl_secagg_server_t *s, uint32_t id,
                                       Flotilla__UnmaskingRequest **out);

int fl_secagg_server_handle_unmasking(fl_secagg_server_t *s, uint32_t sender,
                                      const Flotilla__UnmaskingResponse *m);
/* Reconstructs every needed secret (Shamir), checks each recovered s_sk
 * against its advertised s_pk and lists the masks to remove. */
int fl_secagg_server_unmasking_close(fl_secagg_server_t *s);

/* The PRG-heavy unmasking, split in nparts (1..FL_SECAGG_MAX_PARTS) parts:
 * first every derive_part(k, nparts) (the X25519 agreements with the
 * dropped clients' keys, split by mask), then every unmask_part(k, nparts)
 * (mask removal over coordinate range k), then unmask_finish. Distinct
 * parts of one stage may run on distinct threads at the same time. */
int fl_secagg_server_derive_part(fl_secagg_server_t *s, unsigned part,
                                 unsigned nparts);
int fl_secagg_server_unmask_part(fl_secagg_server_t *s, unsigned part,
                                 unsigned nparts);
int fl_secagg_server_unmask_finish(fl_secagg_server_t *s);
/* All of the above on the calling thread. */
int fl_secagg_server_unmask(fl_secagg_server_t *s);

/* What the last _close did (caller-allocated; filled by
 * fl_secagg_server_close_info). Plain values, no secret. */
typedef enum {
    FL_SECAGG_SHORT_NONE = 0,
    FL_SECAGG_SHORT_CLIENTS,    /* fewer than t clients left at all */
    FL_SECAGG_SHORT_NEIGHBOURS, /* client: have of its neighbours are left */
    FL_SECAGG_SHORT_SELF_MASK,  /* client survived: have holders of b_u */
    FL_SECAGG_SHORT_MASK_KEY,   /* client dropped: have holders of s_sk_u */
} fl_secagg_short_t;

typedef struct {
    fl_secagg_phase_t phase; /* the phase that was closed */
    int rc;                  /* what the _close returned */
    uint32_t pruned;         /* clients left out by this close (below t) */
    uint32_t remaining;      /* clients going on to the next phase */
    /* Why, when rc is FL_ETHRESHOLD. SHORT_CLIENTS: `have` clients were
     * left (client is 0). Otherwise client `client` (an id) had `have`
     * live neighbours (or holders) of the `need` (= t) it needs; when
     * clients were left out, the first of them (a cause, not one that
     * only followed it), whatever rc is. */
    fl_secagg_short_t why;
    uint32_t client, have, need;
} fl_secagg_close_info_t;

/* The account of the last _close (zeroed, phase ADVERTISE, before any). */
void fl_secagg_server_close_info(const fl_secagg_server_t *s,
                                 fl_secagg_close_info_t *out);
/* One line for a log (no secret in it), such as "share keys: 1 client left
 * out (fewer than t = 2 live neighbours), 8 go on" or "advertise: 2
 * clients left out (fewer than t = 2 live neighbours), none left; client 4
 * has 1 of t = 2 live neighbours". Returns what snprintf returns. */
int fl_secagg_close_info_describe(const fl_secagg_close_info_t *info, char *buf,
                                  size_t len);

/* The sum of the survivors' inputs mod 2^r, dim values into out; the
 * survivors' ids (ascending) into survivors (room for n; may be NULL),
 * their number into *nsurvivors (may be NULL). */
int fl_secagg_server_result(const fl_secagg_server_t *s, uint32_t *out,
                            size_t dim, uint32_t *survivors,
                            size_t *nsurvivors);

#endif /* FL_SECAGG_SECAGG_H */
