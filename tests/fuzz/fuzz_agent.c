/* tests/fuzz/fuzz_agent.c — the client agent's handling of what a server
 * sends, on arbitrary bytes.
 *
 * Once per process a tiny model is published as version 1 and downloaded
 * into a device's store. Each input then starts a fresh agent on that
 * store, completes a valid hello, and delivers the frames the input
 * describes: records of [kind][length, 2 bytes LE][bytes]. kind % 4 = 3
 * plays the next step of a round of secure aggregation with the device and
 * two other clients against the real secure-aggregation server (so the
 * device gets valid requests in every phase, and its answers go back to
 * that server); kind % 4 = 0 or 2 sends the bytes as an Envelope; kind %
 * 4 = 1 picks a valid message (the round's last request, invitations with
 * and without secure aggregation, a secure-aggregation request, a
 * manifest, a chunk, a version announcement, a round result, an abort, a
 * heartbeat) and overwrites its wire form with the bytes from the offset
 * their first two bytes give. Trainings run on the loop's thread pool
 * between frames. Nothing may crash, leak or read out of bounds. */
#include "artifact/artifact.h"
#include "client/client.h"
#include "model/data.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "proto/proto.h"
#include "secagg/secagg.h"

#include "tests/fuzz/fuzz_util.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUST(cond)                                                             \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_agent: setup failed at line %d\n",           \
                    __LINE__);                                                 \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

#define MAX_FRAME   (64u << 10)
#define N_TEMPLATES 10

typedef struct {
    int closed;
    fl_envelope_t *last; /* the last frame the agent sent */
    /* its last secure-aggregation message of each phase (0..3) */
    fl_envelope_t *sa[4];
} wire_t;

/* A round of secure aggregation the harness plays with the agent (client
 * 1) and two clients of its own (2, 3) against the real server engine. */
typedef struct {
    int step;
    uint64_t round;
    uint8_t nonce[32];
    uint32_t ids[3];
    uint8_t idpk[3][32], idsk[3][64]; /* [0] is the agent's public key */
    Flotilla__SecAggConfig sa;
    fl_secagg_round_t r;
    fl_secagg_server_t *srv;
    fl_secagg_client_t *cl[3]; /* [1], [2]: the harness's clients */
    fl_buf_t last;             /* the last request sent to the agent */
} play_t;

static struct {
    char dir[256], root[300], state[300];
    uv_loop_t loop;
    fl_artifact_key_t *signer, *device;
    fl_tokenizer_t *tok;
    fl_data_t *data;
    uint8_t signing_pub[32];
    uint64_t num_params;
    fl_buf_t templates[N_TEMPLATES];
} g;

/* The identity keys of the harness's two secure-aggregation clients. */
static uint8_t other_pk[2][32], other_sk[2][64];

static int io_send(void *io, const uint8_t *p, size_t len)
{
    wire_t *w = io;
    if (w->closed)
        return FL_ECLOSED;
    fl_envelope_t *e = NULL;
    if (fl_proto_decode(p, len, 1u << 30, &e) < 0)
        __builtin_trap(); /* the agent sends only valid Envelopes */
    int ph = -1;
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        ph = 0;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        ph = 1;
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        ph = 2;
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        ph = 3;
        break;
    default:
        break;
    }
    fl_envelope_t **slot = ph >= 0 ? &w->sa[ph] : &w->last;
    fl_proto_free(*slot);
    *slot = e;
    return 0;
}

static void wire_free(wire_t *w)
{
    fl_proto_free(w->last);
    for (int i = 0; i < 4; i++)
        fl_proto_free(w->sa[i]);
}

static void io_close(void *io, int reason)
{
    (void)reason;
    ((wire_t *)io)->closed = 1;
}

static const fl_client_io_t wire_io = {io_send, io_close};

static void pack(fl_envelope_t *e, fl_buf_t *out)
{
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    fl_buf_init(out, MAX_FRAME);
    MUST(fl_buf_reserve(out, n) == 0);
    flotilla__envelope__pack(e, out->data);
    out->len = n;
}

static int deliver(fl_client_agent_t *a, wire_t *w, const uint8_t *p,
                   size_t len)
{
    if (w->closed)
        return -1;
    fl_client_agent_on_frame(a, p, len);
    uv_run(&g.loop, UV_RUN_DEFAULT); /* trainings on the thread pool */
    return w->closed ? -1 : 0;
}

static int deliver_env(fl_client_agent_t *a, wire_t *w, fl_envelope_t *e)
{
    fl_buf_t b;
    pack(e, &b);
    int rc = deliver(a, w, b.data, b.len);
    fl_buf_free(&b);
    return rc;
}

/* With FUZZ_VERBOSE set, the agent's events (to follow one input). */
static void on_event(void *ctx, const fl_client_event_t *ev)
{
    (void)ctx;
    fprintf(stderr, "fuzz_agent: event %d round %llu status %d: %s\n", ev->kind,
            (unsigned long long)ev->round, ev->status,
            ev->what ? ev->what : "");
}

static fl_client_agent_t *agent_new(wire_t *w)
{
    fl_client_agent_opts_t o = {.loop = &g.loop,
                                .state_dir = g.state,
                                .identity = g.device,
                                .data = g.data,
                                .seed = 3,
                                .vocab_size = FL_TOKENIZER_BYTE_VOCAB,
                                .tokenizer_ref = "byte",
                                .require_secagg = 0,
                                .min_participants = 3,
                                .on_event =
                                    getenv("FUZZ_VERBOSE") ? on_event : NULL};
    memcpy(o.signing_pub, g.signing_pub, 32);
    fl_client_agent_t *a = NULL;
    MUST(fl_client_agent_new(&o, &a) == 0);
    memset(w, 0, sizeof *w);
    fl_client_agent_connected(a, &wire_io, w);
    return a;
}

/* ServerHello, then HelloResult naming `version`. */
static void hello(fl_client_agent_t *a, wire_t *w, uint64_t version)
{
    uint8_t nonce[32] = {1, 2, 3};
    Flotilla__ServerHello sh = FLOTILLA__SERVER_HELLO__INIT;
    sh.protocol_version = FL_PROTOCOL_VERSION;
    sh.nonce.data = nonce;
    sh.nonce.len = 32;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_SERVER_HELLO;
    e.server_hello = &sh;
    deliver_env(a, w, &e);
    Flotilla__HelloResult hr = FLOTILLA__HELLO_RESULT__INIT;
    hr.accepted = 1;
    hr.current_model_version = version;
    e.body_case = FLOTILLA__ENVELOPE__BODY_HELLO_RESULT;
    e.hello_result = &hr;
    deliver_env(a, w, &e);
}

static void read_version_file(const char *name, uint8_t **out, size_t *len)
{
    char cur[400], p[500];
    snprintf(cur, sizeof cur, "%s/current", g.root);
    snprintf(p, sizeof p, "%s/%s", cur, name);
    MUST(fl_file_read_all(p, 1 << 26, out, len) == 0);
}

/* The manifest response and the chunk of model.bin at offset (all of it
 * from there) of the published version. */
static void version_messages(fl_buf_t *manifest, fl_buf_t *chunk,
                             uint64_t offset)
{
    uint8_t *mj, *sig, *bin;
    size_t mjl, sigl, binl;
    read_version_file("manifest.json", &mj, &mjl);
    read_version_file("manifest.sig", &sig, &sigl);
    read_version_file("model.bin", &bin, &binl);
    Flotilla__ManifestResponse mr = FLOTILLA__MANIFEST_RESPONSE__INIT;
    mr.version = 1;
    mr.manifest_json.data = mj;
    mr.manifest_json.len = mjl;
    mr.signature.data = sig;
    mr.signature.len = sigl;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_RESPONSE;
    e.manifest_response = &mr;
    pack(&e, manifest);
    MUST(offset <= binl);
    Flotilla__Chunk c = FLOTILLA__CHUNK__INIT;
    c.version = 1;
    c.file = "model.bin";
    c.offset = offset;
    c.total_size = binl;
    c.data.data = bin + offset;
    c.data.len = binl - offset;
    e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK;
    e.chunk = &c;
    pack(&e, chunk);
    fl_free(mj);
    fl_free(sig);
    fl_free(bin);
}

/* Publishes the tiny model as version 1 and downloads it into the store. */
static void setup_store(void)
{
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = 8;
    mc.hidden_dim = 16;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.seq_len = 16;
    mc.vocab_size = FL_TOKENIZER_BYTE_VOCAB;
    fl_model_t *m = NULL;
    MUST(fl_model_new(&mc, &m) == 0);
    fl_model_init_weights(m, 7);
    MUST(fl_model_set_tokenizer_ref(m, "byte") == 0);
    g.num_params = fl_model_num_params(m);
    fl_buf_t b;
    fl_buf_init(&b, 1 << 26);
    MUST(fl_model_save_buf(m, 0, &b) == 0);
    fl_model_free(m);
    fl_artifact_meta_t meta = {
        .version = 1,
        .round = 1,
        .epsilon = 1.0,
        .delta = 1e-5,
        .config_json =
            "{\"architecture\":{\"vocab_size\":259,\"tokenizer\":\"byte\"}}"};
    fl_artifact_input_t in = {
        .name = "model.bin", .data = b.data, .len = b.len};
    char why[160];
    MUST(fl_artifact_publish(g.root, g.signer, &meta, &in, 1, 3, why,
                             sizeof why) == 0);
    fl_buf_free(&b);

    wire_t w;
    fl_client_agent_t *a = agent_new(&w);
    hello(a, &w, 1); /* the agent asks for the manifest, then the chunk */
    fl_buf_t man, chunk;
    version_messages(&man, &chunk, 0);
    deliver(a, &w, man.data, man.len);
    deliver(a, &w, chunk.data, chunk.len);
    fl_buf_free(&man);
    fl_buf_free(&chunk);
    uint64_t v = 0;
    MUST(fl_client_agent_model(a, &v) != NULL && v == 1);
    fl_client_agent_free(a);
    wire_free(&w);
    uv_run(&g.loop, UV_RUN_DEFAULT);
}

static void setup_templates(void)
{
    int k = 0;
    uint8_t nonce[32] = {9};
    uint32_t ids[3] = {1, 2, 3};
    Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
    tc.local_steps = 1;
    tc.batch_size = 1;
    tc.seq_len = 8;
    tc.learning_rate = 1e-3f;
    tc.seed = 5;
    Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
    cc.quant_bits = 8;
    cc.clip_norm = 1.0f;
    cc.max_summands = 3;
    cc.ring_bits = 11;
    Flotilla__SecAggConfig sa = FLOTILLA__SEC_AGG_CONFIG__INIT;
    sa.participants = ids;
    sa.n_participants = 3;
    sa.threshold = 2;
    sa.degree = 2;
    sa.ring_bits = 11;
    Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    rc.round = 2;
    rc.round_nonce.data = nonce;
    rc.round_nonce.len = 32;
    rc.model_version = 1;
    rc.num_params = g.num_params;
    rc.expected_cohort = 3;
    rc.training = &tc;
    rc.codec = &cc;
    rc.secagg = &sa;
    rc.deadlines = &dl;
    rc.client_id = 1;
    Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
    inv.config = &rc;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
    e.round_invite = &inv;
    pack(&e, &g.templates[k++]); /* without secure aggregation */
    sa.enabled = 1;
    cc.secure_aggregation = 1;
    pack(&e, &g.templates[k++]); /* with it */

    uint8_t session[32] = {4};
    Flotilla__ShareKeysRequest sk = FLOTILLA__SHARE_KEYS_REQUEST__INIT;
    sk.round = 2;
    sk.session_id.data = session;
    sk.session_id.len = 32;
    e.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST;
    e.share_keys_request = &sk;
    pack(&e, &g.templates[k++]);
    uint32_t surv[2] = {1, 2}, dropped[1] = {3};
    Flotilla__UnmaskingRequest ur = FLOTILLA__UNMASKING_REQUEST__INIT;
    ur.round = 2;
    ur.survivors = surv;
    ur.n_survivors = 2;
    ur.dropped = dropped;
    ur.n_dropped = 1;
    ur.session_id.data = session;
    ur.session_id.len = 32;
    e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST;
    e.unmasking_request = &ur;
    pack(&e, &g.templates[k++]);

    version_messages(&g.templates[k], &g.templates[k + 1], 64);
    k += 2;

    Flotilla__ModelAvailable ma = FLOTILLA__MODEL_AVAILABLE__INIT;
    ma.version = 2;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE;
    e.model_available = &ma;
    pack(&e, &g.templates[k++]);
    Flotilla__RoundResult rr = FLOTILLA__ROUND_RESULT__INIT;
    rr.round = 2;
    rr.success = 1;
    rr.new_model_version = 2;
    rr.survivors = 3;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_RESULT;
    e.round_result = &rr;
    pack(&e, &g.templates[k++]);
    Flotilla__Abort ab = FLOTILLA__ABORT__INIT;
    ab.round = 2;
    ab.reason = FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS;
    ab.message = "left out";
    e.body_case = FLOTILLA__ENVELOPE__BODY_ABORT;
    e.abort = &ab;
    pack(&e, &g.templates[k++]);
    Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
    hb.seq = 1;
    e.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    pack(&e, &g.templates[k++]);
    MUST(k == N_TEMPLATES);
}

static void setup(void)
{
    MUST(sodium_init() >= 0);
    const char *dir = fuzz_workdir("agent");
    MUST(dir != NULL);
    snprintf(g.dir, sizeof g.dir, "%s", dir);
    snprintf(g.root, sizeof g.root, "%s/published", g.dir);
    snprintf(g.state, sizeof g.state, "%s/device", g.dir);
    MUST(uv_loop_init(&g.loop) == 0);
    MUST(fl_artifact_key_generate(&g.signer) == 0);
    MUST(fl_artifact_key_generate(&g.device) == 0);
    fl_artifact_key_public(g.signer, g.signing_pub);
    MUST(fl_tokenizer_new_bytes(&g.tok) == 0);
    fl_buf_t text;
    fl_buf_init(&text, 1 << 20);
    for (int i = 0; i < 60; i++)
        fl_buf_printf(&text, "a stitch in time saves nine %d\n", i % 7);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    MUST(fl_data_load_text(&o, g.tok, text.data, text.len, "t", &g.data) == 0);
    fl_buf_free(&text);
    setup_store();
    setup_templates();
    for (int i = 0; i < 2; i++)
        crypto_sign_keypair(other_pk[i], other_sk[i]);
}

/* ---- a round of secure aggregation, played with the agent ---- */

static void play_init(play_t *pl, uint64_t round)
{
    memset(pl, 0, sizeof *pl);
    pl->round = round;
    memcpy(pl->nonce, &round, sizeof round);
    for (uint32_t i = 0; i < 3; i++)
        pl->ids[i] = i + 1;
    fl_artifact_key_public(g.device, pl->idpk[0]);
    for (int i = 0; i < 2; i++) {
        memcpy(pl->idpk[i + 1], other_pk[i], 32);
        memcpy(pl->idsk[i + 1], other_sk[i], 64);
    }
    flotilla__sec_agg_config__init(&pl->sa);
    pl->sa.enabled = 1;
    pl->sa.participants = pl->ids;
    pl->sa.n_participants = 3;
    pl->sa.threshold = 2;
    pl->sa.degree = 2;
    pl->sa.ring_bits = 11;
    pl->r.round = round;
    memcpy(pl->r.round_nonce, pl->nonce, 32);
    pl->r.dim = g.num_params;
    pl->r.config = &pl->sa;
    fl_buf_init(&pl->last, MAX_FRAME);
}

static void play_free(play_t *pl)
{
    fl_secagg_server_free(pl->srv);
    for (int i = 0; i < 3; i++)
        fl_secagg_client_free(pl->cl[i]);
    fl_buf_free(&pl->last);
    sodium_memzero(pl->idsk, sizeof pl->idsk);
}

/* Sends e to the agent; its wire form becomes the round's last request. */
static void play_send(fl_client_agent_t *a, wire_t *w, play_t *pl,
                      fl_envelope_t *e)
{
    fl_buf_free(&pl->last);
    pack(e, &pl->last);
    deliver(a, w, pl->last.data, pl->last.len);
}

/* The agent's message of phase ph, if any, to the server (which may refuse
 * it: that is its business). */
static void play_take(play_t *pl, wire_t *w, int ph)
{
    if (w->sa[ph])
        fl_secagg_server_handle(pl->srv, 1, w->sa[ph]);
    fl_proto_free(w->sa[ph]);
    w->sa[ph] = NULL;
}

static void play_step(fl_client_agent_t *a, wire_t *w, play_t *pl)
{
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    int step = pl->step++;
    if (step > 0 && !pl->srv)
        return;
    switch (step) {
    case 0: { /* the invitation; the server and the two other clients */
        Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
        tc.local_steps = 1;
        tc.batch_size = 1;
        tc.seq_len = 8;
        tc.learning_rate = 1e-3f;
        Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
        cc.quant_bits = 8;
        cc.clip_norm = 1.0f;
        cc.max_summands = 3;
        cc.ring_bits = 11;
        cc.secure_aggregation = 1;
        Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
        Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
        rc.round = pl->round;
        rc.round_nonce.data = pl->nonce;
        rc.round_nonce.len = 32;
        rc.model_version = 1;
        rc.num_params = g.num_params;
        rc.expected_cohort = 3;
        rc.training = &tc;
        rc.codec = &cc;
        rc.secagg = &pl->sa;
        rc.deadlines = &dl;
        rc.client_id = 1;
        Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
        inv.config = &rc;
        MUST(fl_secagg_server_new(&pl->r, (const uint8_t(*)[32])pl->idpk,
                                  &pl->srv) == 0);
        for (int i = 1; i < 3; i++)
            MUST(fl_secagg_client_new(&pl->r, pl->ids[i], pl->idsk[i],
                                      &pl->cl[i]) == 0);
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
        e.round_invite = &inv;
        play_send(a, w, pl, &e);
        return;
    }
    case 1: { /* advertisements; the share-keys requests */
        play_take(pl, w, 0);
        for (int i = 1; i < 3; i++) {
            Flotilla__AdvertiseKeys *adv = NULL;
            MUST(fl_secagg_client_advertise(pl->cl[i], &adv) == 0);
            fl_secagg_server_handle_advertise(pl->srv, pl->ids[i], adv);
            fl_secagg_msg_free(adv);
        }
        if (fl_secagg_server_advertise_close(pl->srv) < 0)
            return;
        for (int i = 0; i < 3; i++) {
            Flotilla__ShareKeysRequest *req = NULL;
            Flotilla__ShareKeysResponse *resp = NULL;
            if (fl_secagg_server_share_keys_request(pl->srv, pl->ids[i], &req) <
                0)
                continue;
            if (i == 0) {
                e.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST;
                e.share_keys_request = req;
                play_send(a, w, pl, &e);
            } else if (fl_secagg_client_share_keys(pl->cl[i], req, &resp) ==
                       0) {
                fl_secagg_server_handle_share_keys(pl->srv, pl->ids[i], resp);
            }
            fl_secagg_msg_free(resp);
            fl_secagg_msg_free(req);
        }
        return;
    }
    case 2: { /* shares; the masked-input requests */
        play_take(pl, w, 1);
        if (fl_secagg_server_share_keys_close(pl->srv) < 0)
            return;
        uint32_t *x = fl_calloc(g.num_params, sizeof *x);
        MUST(x != NULL);
        for (int i = 0; i < 3; i++) {
            Flotilla__MaskedInputRequest *req = NULL;
            Flotilla__MaskedInputResponse *resp = NULL;
            if (fl_secagg_server_masked_input_request(pl->srv, pl->ids[i],
                                                      &req) < 0)
                continue;
            if (i == 0) {
                e.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST;
                e.masked_input_request = req;
                play_send(a, w, pl, &e);
            } else if (fl_secagg_client_masked_input(pl->cl[i], req, x,
                                                     &resp) == 0) {
                fl_secagg_server_handle_masked_input(pl->srv, pl->ids[i], resp);
            }
            fl_secagg_msg_free(resp);
            fl_secagg_msg_free(req);
        }
        fl_free(x);
        return;
    }
    case 3: { /* masked inputs; the unmasking requests */
        play_take(pl, w, 2);
        if (fl_secagg_server_masked_input_close(pl->srv) < 0)
            return;
        for (int i = 0; i < 3; i++) {
            Flotilla__UnmaskingRequest *req = NULL;
            Flotilla__UnmaskingResponse *resp = NULL;
            if (fl_secagg_server_unmasking_request(pl->srv, pl->ids[i], &req) <
                0)
                continue;
            if (i == 0) {
                e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST;
                e.unmasking_request = req;
                play_send(a, w, pl, &e);
            } else if (fl_secagg_client_unmask(pl->cl[i], req, &resp) == 0) {
                fl_secagg_server_handle_unmasking(pl->srv, pl->ids[i], resp);
            }
            fl_secagg_msg_free(resp);
            fl_secagg_msg_free(req);
        }
        return;
    }
    case 4: { /* the unmasking; the result */
        play_take(pl, w, 3);
        int ok = fl_secagg_server_unmasking_close(pl->srv) == 0 &&
                 fl_secagg_server_unmask(pl->srv) == 0;
        Flotilla__RoundResult rr = FLOTILLA__ROUND_RESULT__INIT;
        rr.round = pl->round;
        rr.success = ok;
        rr.new_model_version = 1;
        rr.survivors = 3;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_RESULT;
        e.round_result = &rr;
        play_send(a, w, pl, &e);
        return;
    }
    default:
        return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    static uint64_t inputs;
    wire_t w;
    fl_client_agent_t *a = agent_new(&w);
    hello(a, &w, 1);
    play_t pl;
    play_init(&pl, 2 + inputs++);
    uint8_t *frame = fl_malloc(MAX_FRAME);
    MUST(frame != NULL);
    while (size >= 3 && !w.closed) {
        unsigned kind = data[0];
        size_t len = (size_t)data[1] | (size_t)data[2] << 8;
        data += 3;
        size -= 3;
        len = FL_MIN(len, size);
        size_t n;
        if (kind % 4 == 3) { /* the round's next step */
            play_step(a, &w, &pl);
            data += len;
            size -= len;
            continue;
        }
        if (kind % 4 == 1) { /* a valid message, overwritten from an offset */
            unsigned k = (kind >> 2) % (N_TEMPLATES + 1);
            const fl_buf_t *t = k < N_TEMPLATES ? &g.templates[k] : &pl.last;
            n = t->len;
            if (n > 0)
                memcpy(frame, t->data, n);
            if (len >= 2 && n > 0) {
                size_t off = ((size_t)data[0] | (size_t)data[1] << 8) % n;
                size_t m = FL_MIN(len - 2, n - off);
                memcpy(frame + off, data + 2, m);
            }
        } else {
            n = len;
            memcpy(frame, data, n);
        }
        data += len;
        size -= len;
        deliver(a, &w, frame, n);
    }
    fl_free(frame);
    fl_client_agent_disconnected(a);
    fl_client_agent_free(a);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    wire_free(&w);
    play_free(&pl);
    return 0;
}
