/*
 * secagg/secagg_int.h — what the files of secagg/ share; not included from
 * outside the module.
 */
#ifndef FL_SECAGG_INT_H
#define FL_SECAGG_INT_H

#include "secagg/secagg.h"

#include <stdalign.h>

/* ---- outgoing messages: one arena per message ---------------------------- */

typedef struct sa_blk {
    struct sa_blk *next;
    size_t used, cap;
    alignas(16) unsigned char data[];
} sa_blk_t;

typedef struct {
    sa_blk_t *head;
} sa_arena_t;

/* Zeroed memory that lives as long as the message; NULL on failure. */
void *sa_arena_alloc(sa_arena_t *a, size_t n);
/* A message of the given descriptor, initialised, with its arena; freed by
 * fl_secagg_msg_free. NULL on failure. */
void *sa_msg_new(const ProtobufCMessageDescriptor *d, size_t size,
                 sa_arena_t **arena);
/* Copies n bytes into the arena as a bytes field. */
int sa_bytes(sa_arena_t *a, ProtobufCBinaryData *b, const void *p, size_t n);

/* ---- the graph ------------------------------------------------------------
 */

typedef struct {
    Flotilla__GraphKind kind;
    uint32_t n, k;    /* k: degree */
    uint32_t *ids;    /* index -> id, participants order */
    uint64_t *lookup; /* (id << 32 | index), sorted, for sa_graph_index */
    uint32_t *ring;   /* Harary: position -> index */
    uint32_t *pos;    /* Harary: index -> position */
} sa_graph_t;

int sa_graph_init(sa_graph_t *g, const Flotilla__SecAggConfig *c);
void sa_graph_free(sa_graph_t *g);
/* The index of id, or -1. */
long sa_graph_index(const sa_graph_t *g, uint32_t id);
/* Neighbour indices of index a into out (room for k); returns k. */
uint32_t sa_graph_neighbors(const sa_graph_t *g, uint32_t a, uint32_t *out);
/* The slot of b in a's neighbour list, or -1 when not neighbours. */
long sa_graph_slot(const sa_graph_t *g, uint32_t a, uint32_t b);

/* ---- Shamir internals ------------------------------------------------------
 */

/* Lagrange coefficients at 0 for points xs[0..t). FL_EDUPLICATE, FL_EINVAL. */
int sa_lagrange0(uint64_t *coef, const uint32_t *xs, uint32_t t);
/* secret from shares[i] (share_len bytes each, for i < t) and coef. */
int sa_shamir_apply(uint8_t *secret, size_t len, const uint64_t *coef,
                    uint32_t t, const uint8_t *const *shares);
int sa_share_check(const uint8_t *share, size_t share_len);

/* ---- the mask PRG
 * ------------------------------------------------------------ */

typedef struct sa_prg sa_prg_t; /* an EVP context; one per thread */
sa_prg_t *sa_prg_new(void);
void sa_prg_free(sa_prg_t *p);
int sa_prg_add(sa_prg_t *p, uint32_t *acc, size_t start, size_t n,
               const uint8_t seed[32], int prg, unsigned r, int negate);
/* acc[i] += (-=) the r-bit value i of the bit stream in (inlen bytes). */
void sa_bits_add(uint32_t *acc, const uint8_t *in, size_t inlen, size_t n,
                 unsigned r, int negate);

/* ---- helpers
 * ----------------------------------------------------------------- */

void sa_be32(uint8_t *p, uint32_t v);
void sa_be64(uint8_t *p, uint64_t v);
int sa_ensure_sodium(void);
/* Both directional share keys from one X25519: me->peer and peer->me. */
int sa_derive_share_keys(uint8_t send[32], uint8_t recv[32],
                         const uint8_t my_sk[32], const uint8_t peer_pk[32],
                         const uint8_t session[32], uint32_t me, uint32_t peer);

#endif
