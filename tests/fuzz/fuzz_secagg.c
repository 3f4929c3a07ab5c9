/* tests/fuzz/fuzz_secagg.c — the secure-aggregation server's message
 * handling on arbitrary bytes.
 *
 * Once per process a 4-client round (client 4 drops after sharing keys) is
 * recorded with deterministic randomness. Each input then builds a fresh
 * server, replays the valid messages up to the phase the first byte picks,
 * and feeds Envelopes made from the input: either raw bytes decoded as an
 * Envelope, or a recorded valid message of that phase with bytes of its
 * wire form overwritten. Then the valid messages of the phase are replayed
 * (refused as duplicates where the fuzzed ones were taken) and the round is
 * driven to its end. Nothing may crash, leak or read out of bounds. */
#include "proto/proto.h"
#include "secagg/secagg.h"

#include <sodium.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The recording must work; say where it did not. */
#define MUST(cond)                                                             \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_secagg: setup failed at line %d\n",          \
                    __LINE__);                                                 \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

#define N   4
#define DIM 16

/* ---- deterministic randomness for the recording ----------------------------
 */

static uint64_t rb_counter;

static const char *rb_name(void)
{
    return "fuzz-deterministic";
}

static uint32_t rb_random(void)
{
    uint32_t v;
    uint8_t seed[randombytes_SEEDBYTES] = {0};
    memcpy(seed, &rb_counter, sizeof rb_counter);
    rb_counter++;
    randombytes_buf_deterministic(&v, sizeof v, seed);
    return v;
}

static void rb_buf(void *const buf, const size_t size)
{
    uint8_t seed[randombytes_SEEDBYTES] = {0};
    memcpy(seed, &rb_counter, sizeof rb_counter);
    rb_counter++;
    randombytes_buf_deterministic(buf, size, seed);
}

static struct randombytes_implementation rb_impl = {rb_name, rb_random, NULL,
                                                    NULL,    rb_buf,    NULL};

/* ---- the recording ----------------------------------------------------------
 */

typedef struct {
    uint8_t *data;
    size_t len;
} rec_t;

static uint32_t ids[N] = {1, 2, 3, 4};
static Flotilla__SecAggConfig cfg = FLOTILLA__SEC_AGG_CONFIG__INIT;
static fl_secagg_round_t round_;
static rec_t rec[4][N]; /* phase, client: packed Envelope */
static int ready;

static void record(int phase, int i, Flotilla__Envelope__BodyCase body, void *m)
{
    Flotilla__Envelope env = FLOTILLA__ENVELOPE__INIT;
    env.protocol_version = FL_PROTOCOL_VERSION;
    env.body_case = body;
    env.advertise_keys = m; /* the oneof shares storage */
    size_t len = protobuf_c_message_get_packed_size(&env.base);
    rec[phase][i].data = fl_malloc(len);
    rec[phase][i].len = protobuf_c_message_pack(&env.base, rec[phase][i].data);
}

static void setup(void)
{
    uint8_t pk[N][32], sk[N][64];
    fl_secagg_client_t *cl[N];
    fl_secagg_server_t *s = NULL;
    uint32_t x[DIM] = {0};
    randombytes_set_implementation(&rb_impl);
    MUST(!(sodium_init() < 0));
    cfg.threshold = 2;
    cfg.degree = N - 1;
    cfg.ring_bits = 12;
    cfg.graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
    cfg.n_participants = N;
    cfg.participants = ids;
    round_.round = 9;
    memset(round_.round_nonce, 7, sizeof round_.round_nonce);
    round_.dim = DIM;
    round_.config = &cfg;
    MUST(!(fl_secagg_server_new(&round_, NULL, &s) != 0));
    for (int i = 0; i < N; i++) {
        crypto_sign_keypair(pk[i], sk[i]);
        MUST(!(fl_secagg_client_new(&round_, ids[i], sk[i], &cl[i]) != 0));
        Flotilla__AdvertiseKeys *m;
        MUST(!(fl_secagg_client_advertise(cl[i], &m) != 0 ||
               fl_secagg_server_handle_advertise(s, ids[i], m) != 0));
        record(0, i, FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS, m);
        fl_secagg_msg_free(m);
    }
    MUST(!(fl_secagg_server_advertise_close(s) != 0));
    for (int i = 0; i < N; i++) {
        Flotilla__ShareKeysRequest *q;
        Flotilla__ShareKeysResponse *m;
        MUST(!(fl_secagg_server_share_keys_request(s, ids[i], &q) != 0 ||
               fl_secagg_client_share_keys(cl[i], q, &m) != 0 ||
               fl_secagg_server_handle_share_keys(s, ids[i], m) != 0));
        record(1, i, FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE, m);
        fl_secagg_msg_free(q);
        fl_secagg_msg_free(m);
    }
    MUST(!(fl_secagg_server_share_keys_close(s) != 0));
    for (int i = 0; i < N - 1; i++) { /* client 4 drops */
        Flotilla__MaskedInputRequest *q;
        Flotilla__MaskedInputResponse *m;
        x[0] = (uint32_t)i + 1;
        MUST(!(fl_secagg_server_masked_input_request(s, ids[i], &q) != 0 ||
               fl_secagg_client_masked_input(cl[i], q, x, &m) != 0 ||
               fl_secagg_server_handle_masked_input(s, ids[i], m) != 0));
        record(2, i, FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE, m);
        fl_secagg_msg_free(q);
        fl_secagg_msg_free(m);
    }
    MUST(!(fl_secagg_server_masked_input_close(s) != 0));
    for (int i = 0; i < N - 1; i++) {
        Flotilla__UnmaskingRequest *q;
        Flotilla__UnmaskingResponse *m;
        MUST(!(fl_secagg_server_unmasking_request(s, ids[i], &q) != 0 ||
               fl_secagg_client_unmask(cl[i], q, &m) != 0 ||
               fl_secagg_server_handle_unmasking(s, ids[i], m) != 0));
        record(3, i, FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE, m);
        fl_secagg_msg_free(q);
        fl_secagg_msg_free(m);
    }
    uint32_t out[DIM];
    int urc = fl_secagg_server_unmasking_close(s);
    if (urc != 0)
        fprintf(stderr, "unmasking_close: %s\n", fl_err_name(urc));
    MUST(urc == 0);
    MUST(fl_secagg_server_unmask(s) == 0);
    MUST(fl_secagg_server_result(s, out, DIM, NULL, NULL) == 0);
    MUST(out[0] == 6);
    fl_secagg_server_free(s);
    for (int i = 0; i < N; i++)
        fl_secagg_client_free(cl[i]);
    sodium_memzero(sk, sizeof sk);
    ready = 1;
}

/* ---- one input
 * ---------------------------------------------------------------- */

static void feed(fl_secagg_server_t *s, uint32_t sender, const uint8_t *p,
                 size_t len)
{
    fl_envelope_t *e = NULL;
    if (fl_proto_decode(p, len, 1 << 16, &e) != 0)
        return;
    int rc = fl_secagg_server_handle(s, sender, e);
    if (rc > 0)
        __builtin_trap();
    fl_proto_free(e);
}

static int close_phase(fl_secagg_server_t *s, int phase)
{
    int rc;
    switch (phase) {
    case 0:
        rc = fl_secagg_server_advertise_close(s);
        break;
    case 1:
        rc = fl_secagg_server_share_keys_close(s);
        break;
    case 2:
        rc = fl_secagg_server_masked_input_close(s);
        break;
    default:
        rc = fl_secagg_server_unmasking_close(s);
        break;
    }
    /* the account of the close agrees with it and reads as one line */
    fl_secagg_close_info_t info;
    char line[256];
    fl_secagg_server_close_info(s, &info);
    if (rc == FL_ESTATE) /* not closed: nothing to account for */
        return rc;
    if (info.rc != rc || (int)info.phase != phase ||
        fl_secagg_close_info_describe(&info, line, sizeof line) <= 0)
        __builtin_trap();
    return rc;
}

/* Requests for everyone, so the request builders see the fuzzed state. */
static void requests(fl_secagg_server_t *s, int phase)
{
    for (uint32_t id = 0; id <= N + 1; id++) {
        void *q = NULL;
        if (phase == 1)
            (void)fl_secagg_server_share_keys_request(
                s, id, (Flotilla__ShareKeysRequest **)&q);
        else if (phase == 2)
            (void)fl_secagg_server_masked_input_request(
                s, id, (Flotilla__MaskedInputRequest **)&q);
        else if (phase == 3)
            (void)fl_secagg_server_unmasking_request(
                s, id, (Flotilla__UnmaskingRequest **)&q);
        fl_secagg_msg_free(q);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready)
        setup();
    if (size < 3)
        return 0;
    int phase = data[0] % 4;
    uint32_t sender = data[1] % (N + 2); /* 0 and N+1 are unknown */
    int mode = data[2];
    data += 3;
    size -= 3;

    fl_secagg_server_t *s = NULL;
    if (fl_secagg_server_new(&round_, NULL, &s) != 0)
        __builtin_trap();
    for (int p = 0; p < phase; p++) {
        for (int i = 0; i < N; i++)
            if (rec[p][i].data != NULL)
                feed(s, ids[i], rec[p][i].data, rec[p][i].len);
        if (close_phase(s, p) != 0)
            __builtin_trap();
        requests(s, p + 1);
    }

    if (mode & 1) {
        /* a recorded message of this phase, bytes overwritten:
         * (offset lo, offset hi, value) triples */
        int who = (mode >> 1) % N;
        const rec_t *r = &rec[phase][who];
        if (r->data != NULL) {
            uint8_t *buf = fl_malloc(r->len);
            memcpy(buf, r->data, r->len);
            size_t len = r->len;
            for (size_t i = 0; i + 3 <= size; i += 3) {
                size_t off = (size_t)(data[i] | data[i + 1] << 8);
                if (off == 0xffff) { /* truncate */
                    len = data[i + 2] < len ? data[i + 2] : len;
                    continue;
                }
                buf[off % r->len] = data[i + 2];
            }
            feed(s, sender, buf, len);
            fl_free(buf);
        }
    } else {
        /* raw Envelopes, each preceded by a one-byte length */
        size_t pos = 0;
        while (pos < size) {
            size_t len = data[pos++];
            if (len > size - pos)
                len = size - pos;
            feed(s, sender, data + pos, len);
            pos += len;
        }
    }
    /* the honest messages of the phase, then to the end of the round */
    for (int p = phase; p < 4; p++) {
        for (int i = 0; i < N; i++)
            if (rec[p][i].data != NULL)
                feed(s, ids[i], rec[p][i].data, rec[p][i].len);
        if (close_phase(s, p) != 0)
            break;
        requests(s, p + 1);
        if (p == 3) {
            uint32_t out[DIM];
            if (fl_secagg_server_unmask(s) == 0)
                (void)fl_secagg_server_result(s, out, DIM, NULL, NULL);
        }
    }
    fl_secagg_server_free(s);
    return 0;
}
