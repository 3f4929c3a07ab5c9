/* tests/unit/check_agent.c — the client agent against a scripted server:
 * the signed hello, a chunked and resumed model download verified before
 * use, tampered and replayed versions refused, a round without secure
 * aggregation from invitation to result, and what the agent keeps. */
#include "client/client.h"
#include "model/tokenizer.h"
#include "proto/proto.h"
#include "tests/unit/testutil.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- a scripted server: what the agent sends is queued here ---- */
#define MAXQ 64
typedef struct {
    fl_envelope_t *q[MAXQ];
    int n;
    int closed, close_reason;
} wire_t;

static int wire_send(void *io, const uint8_t *payload, size_t len)
{
    wire_t *w = io;
    fl_envelope_t *e = NULL;
    ck_assert_int_eq(fl_proto_decode(payload, len, 1 << 26, &e), 0);
    ck_assert_int_lt(w->n, MAXQ);
    w->q[w->n++] = e;
    return 0;
}

static void wire_close(void *io, int reason)
{
    wire_t *w = io;
    w->closed = 1;
    w->close_reason = reason;
}

static const fl_client_io_t wire_io = {wire_send, wire_close};

/* Takes the oldest message the agent sent; it must have the given body. */
static fl_envelope_t *take(wire_t *w, int body)
{
    ck_assert_msg(w->n > 0, "the agent sent nothing (wanted body %d)", body);
    fl_envelope_t *e = w->q[0];
    memmove(w->q, w->q + 1, (size_t)(w->n - 1) * sizeof w->q[0]);
    w->n--;
    ck_assert_msg((int)e->body_case == body, "got %s, wanted body %d",
                  fl_proto_body_name(e), body);
    return e;
}

static void deliver(fl_client_agent_t *a, fl_envelope_t *e)
{
    fl_buf_t b;
    fl_buf_init(&b, 1 << 26);
    ck_assert_int_eq(fl_proto_encode_frame(e, &b, 1 << 26), 0);
    fl_client_agent_on_frame(a, b.data + 4, b.len - 4);
    fl_buf_free(&b);
}

typedef struct {
    int kinds[64];
    int status[64];
    uint64_t versions[64];
    int n;
    fl_client_update_stats_t last_stats;
} events_t;

static void on_event(void *ctx, const fl_client_event_t *ev)
{
    events_t *e = ctx;
    if (e->n < 64) {
        e->kinds[e->n] = ev->kind;
        e->status[e->n] = ev->status;
        e->versions[e->n] = ev->version;
        e->n++;
    }
    if (ev->kind == FL_CLIENT_EV_ROUND_DONE)
        e->last_stats = ev->stats;
}

static int last_event(const events_t *e)
{
    return e->n ? e->kinds[e->n - 1] : -1;
}

/* ---- fixture: a signing key, a published version, the device's text ---- */
typedef struct {
    char dir[256], root[300], state[300];
    fl_artifact_key_t *signer, *device;
    fl_tokenizer_t *tok;
    fl_data_t *data;
    fl_model_t *model;
    uv_loop_t loop;
    wire_t wire;
    events_t ev;
    fl_client_agent_t *agent;
    const char *config_json; /* the next publish's manifest config */
    uint32_t vocab;          /* the agent's tokenizer, 0/NULL: unchecked */
    const char *tokref;
    int require_secagg; /* the agent's round policy */
    uint32_t min_participants;
} fx_t;

static void publish(fx_t *f, uint64_t version, uint64_t seed)
{
    fl_model_init_weights(f->model, seed);
    fl_buf_t b;
    fl_buf_init(&b, 1 << 26);
    ck_assert_int_eq(fl_model_save_buf(f->model, 0, &b), 0);
    fl_artifact_meta_t meta = {.version = version,
                               .round = version,
                               .epsilon = 1.5,
                               .delta = 1e-5,
                               .config_json = f->config_json};
    fl_artifact_input_t in = {
        .name = "model.bin", .data = b.data, .len = b.len};
    char why[160];
    ck_assert_msg(fl_artifact_publish(f->root, f->signer, &meta, &in, 1, 3, why,
                                      sizeof why) == 0,
                  "%s", why);
    fl_buf_free(&b);
}

static void fx_init(fx_t *f)
{
    memset(f, 0, sizeof *f);
    fl_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->root, sizeof f->root, "%s/published", f->dir);
    snprintf(f->state, sizeof f->state, "%s/device", f->dir);
    ck_assert_int_eq(fl_artifact_key_generate(&f->signer), 0);
    ck_assert_int_eq(fl_artifact_key_generate(&f->device), 0);
    ck_assert_int_eq(fl_tokenizer_new_bytes(&f->tok), 0);
    fl_buf_t text;
    fl_buf_init(&text, 1 << 20);
    for (int i = 0; i < 120; i++)
        fl_buf_printf(&text, "a stitch in time saves nine %d\n", i % 7);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    ck_assert_int_eq(
        fl_data_load_text(&o, f->tok, text.data, text.len, "t", &f->data), 0);
    fl_buf_free(&text);
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = 32;
    mc.hidden_dim = 64;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.seq_len = 32;
    mc.vocab_size = fl_tokenizer_vocab_size(f->tok);
    ck_assert_int_eq(fl_model_new(&mc, &f->model), 0);
    uv_loop_init(&f->loop);
}

static void fx_agent(fx_t *f)
{
    fl_client_agent_opts_t o = {.loop = &f->loop,
                                .state_dir = f->state,
                                .identity = f->device,
                                .data = f->data,
                                .seed = 3,
                                .vocab_size = f->vocab,
                                .tokenizer_ref = f->tokref,
                                .require_secagg = f->require_secagg,
                                .min_participants = f->min_participants,
                                .on_event = on_event,
                                .ctx = &f->ev};
    fl_artifact_key_public(f->signer, o.signing_pub);
    ck_assert_int_eq(fl_client_agent_new(&o, &f->agent), 0);
    memset(&f->wire, 0, sizeof f->wire);
    fl_client_agent_connected(f->agent, &wire_io, &f->wire);
}

static void drain(wire_t *w)
{
    for (int i = 0; i < w->n; i++)
        fl_proto_free(w->q[i]);
    w->n = 0;
}

static void fx_free(fx_t *f)
{
    fl_client_agent_free(f->agent);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&f->loop), 0);
    drain(&f->wire);
    fl_model_free(f->model);
    fl_data_free(f->data);
    fl_tokenizer_free(f->tok);
    fl_artifact_key_free(f->signer);
    fl_artifact_key_free(f->device);
    fl_test_rmtree(f->dir);
}

/* Hello: ServerHello in, a correctly signed ClientHello out, then
 * HelloResult announcing `version`; for agent a sending on wire w. */
static void do_hello_on(fx_t *f, fl_client_agent_t *a, wire_t *w,
                        uint64_t version)
{
    uint8_t nonce[32];
    randombytes_buf(nonce, sizeof nonce);
    Flotilla__ServerHello sh = FLOTILLA__SERVER_HELLO__INIT;
    sh.protocol_version = FL_PROTOCOL_VERSION;
    sh.nonce.data = nonce;
    sh.nonce.len = 32;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_SERVER_HELLO;
    e.server_hello = &sh;
    deliver(a, &e);
    fl_envelope_t *ch = take(w, FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO);
    uint8_t pk[32], msg[17 + 32 + 32 + 4];
    fl_artifact_key_public(f->device, pk);
    ck_assert_uint_eq(ch->client_hello->identity_key.len, 32);
    ck_assert_mem_eq(ch->client_hello->identity_key.data, pk, 32);
    memcpy(msg, "flotilla-hello-v1", 17);
    memcpy(msg + 17, nonce, 32);
    memcpy(msg + 49, pk, 32);
    msg[81] = msg[82] = msg[83] = 0;
    msg[84] = FL_PROTOCOL_VERSION;
    ck_assert_uint_eq(ch->client_hello->signature.len, 64);
    ck_assert_int_eq(crypto_sign_verify_detached(
                         ch->client_hello->signature.data, msg, sizeof msg, pk),
                     0);
    fl_proto_free(ch);
    Flotilla__HelloResult hr = FLOTILLA__HELLO_RESULT__INIT;
    hr.accepted = 1;
    hr.current_model_version = version;
    e.body_case = FLOTILLA__ENVELOPE__BODY_HELLO_RESULT;
    e.hello_result = &hr;
    deliver(a, &e);
}

static void do_hello(fx_t *f, uint64_t version)
{
    do_hello_on(f, f->agent, &f->wire, version);
}

/* Serves the manifest and every chunk the agent asks for, at most `step`
 * bytes each; `flip` >= 0 flips that byte of model.bin on the way. Stops
 * after `max_chunks` chunks (to cut a download short). */
static void serve_download_on(fx_t *f, fl_client_agent_t *a, wire_t *w,
                              size_t step, long flip, int max_chunks)
{
    char cur[400], p[500];
    snprintf(cur, sizeof cur, "%s/current", f->root);
    uint8_t *mj, *sig, *bin;
    size_t mjl, sigl, binl;
    snprintf(p, sizeof p, "%s/manifest.json", cur);
    ck_assert_int_eq(fl_file_read_all(p, 1 << 20, &mj, &mjl), 0);
    snprintf(p, sizeof p, "%s/manifest.sig", cur);
    ck_assert_int_eq(fl_file_read_all(p, 1 << 20, &sig, &sigl), 0);
    snprintf(p, sizeof p, "%s/model.bin", cur);
    ck_assert_int_eq(fl_file_read_all(p, 1 << 26, &bin, &binl), 0);
    if (flip >= 0)
        bin[flip] ^= 1;

    fl_envelope_t *req = take(w, FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST);
    uint64_t version = req->manifest_request->version;
    fl_proto_free(req);
    Flotilla__ManifestResponse mr = FLOTILLA__MANIFEST_RESPONSE__INIT;
    mr.version = version;
    mr.manifest_json.data = mj;
    mr.manifest_json.len = mjl;
    mr.signature.data = sig;
    mr.signature.len = sigl;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_RESPONSE;
    e.manifest_response = &mr;
    deliver(a, &e);
    for (int k = 0;
         k < max_chunks && w->n > 0 &&
         w->q[0]->body_case == FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST;
         k++) {
        fl_envelope_t *cr = take(w, FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST);
        ck_assert_str_eq(cr->chunk_request->file, "model.bin");
        uint64_t off = cr->chunk_request->offset;
        size_t n = FL_MIN((size_t)cr->chunk_request->length, step);
        n = FL_MIN(n, binl - (size_t)off);
        Flotilla__Chunk c = FLOTILLA__CHUNK__INIT;
        c.version = version;
        c.file = "model.bin";
        c.offset = off;
        c.total_size = binl;
        c.data.data = bin + off;
        c.data.len = n;
        e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK;
        e.chunk = &c;
        fl_proto_free(cr);
        deliver(a, &e);
    }
    fl_free(mj);
    fl_free(sig);
    fl_free(bin);
}

static void serve_download(fx_t *f, size_t step, long flip, int max_chunks)
{
    serve_download_on(f, f->agent, &f->wire, step, flip, max_chunks);
}

START_TEST(test_hello_and_download)
{
    fx_t f;
    fx_init(&f);
    publish(&f, 1, 11);
    fx_agent(&f);
    uint64_t v = 99;
    ck_assert_ptr_null(fl_client_agent_model(f.agent, &v));
    ck_assert_uint_eq(v, 0);
    do_hello(&f, 1);
    /* A download cut short after three chunks... */
    serve_download(&f, 4096, -1, 3);
    ck_assert_ptr_null(fl_client_agent_model(f.agent, NULL));
    fl_client_agent_disconnected(f.agent);
    drain(&f.wire);
    /* ...resumes where it stopped after a reconnection. */
    fl_client_agent_connected(f.agent, &wire_io, &f.wire);
    do_hello(&f, 1);
    serve_download(&f, 1 << 20, -1, 1000);
    fl_envelope_t *dummy = NULL;
    (void)dummy;
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL);
    fl_model_t *m = fl_client_agent_model(f.agent, &v);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(v, 1);
    ck_assert_mem_eq(fl_model_params(m), fl_model_params(f.model),
                     fl_model_num_params(m) * sizeof(float));
    /* A restarted agent finds the verified model in its store. */
    fl_client_agent_free(f.agent);
    f.agent = NULL;
    fx_agent(&f);
    ck_assert_ptr_nonnull(fl_client_agent_model(f.agent, &v));
    ck_assert_uint_eq(v, 1);

    /* After the signing key is rotated, the stored model no longer
     * verifies: a restarted device starts without it (and downloads). */
    {
        fl_client_agent_free(f.agent);
        f.agent = NULL;
        fl_artifact_key_t *old = f.signer;
        ck_assert_int_eq(fl_artifact_key_generate(&f.signer), 0);
        fx_agent(&f);
        ck_assert_ptr_null(fl_client_agent_model(f.agent, &v));
        fl_client_agent_free(f.agent);
        f.agent = NULL;
        fl_artifact_key_free(f.signer);
        f.signer = old;
        fx_agent(&f);
        ck_assert_ptr_nonnull(fl_client_agent_model(f.agent, &v));
        ck_assert_uint_eq(v, 1);
    }
    /* Version 2 with one byte flipped in transit: refused, 1 stays. */
    publish(&f, 2, 12);
    do_hello(&f, 2);
    serve_download(&f, 1 << 20, 700, 1000);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL_REFUSED);
    ck_assert_int_eq(f.ev.status[f.ev.n - 1], FL_EHASH);
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 1);
    /* The honest copy of version 2 is taken. */
    fl_client_agent_disconnected(f.agent);
    drain(&f.wire);
    fl_client_agent_connected(f.agent, &wire_io, &f.wire);
    do_hello(&f, 2);
    serve_download(&f, 1 << 20, -1, 1000);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL);
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 2);
    fx_free(&f);
}
END_TEST

START_TEST(test_foreign_signature_and_replay)
{
    fx_t f;
    fx_init(&f);
    /* Versions signed by another key are never used. */
    fl_artifact_key_t *honest = f.signer, *other = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&other), 0);
    f.signer = other;
    publish(&f, 1, 5);
    f.signer = honest;
    fx_agent(&f);
    do_hello(&f, 1);
    serve_download(&f, 1 << 20, -1, 1000);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL_REFUSED);
    ck_assert_int_eq(f.ev.status[f.ev.n - 1], FL_ESIGNATURE);
    ck_assert_ptr_null(fl_client_agent_model(f.agent, NULL));
    ck_assert_int_eq(f.wire.n, 0); /* no chunk was even asked for */
    fl_artifact_key_free(other);
    /* An honest version 2, then a replay of an older signed manifest. */
    fl_test_system("rm -rf '%s'", f.root);
    publish(&f, 1, 6);
    char keep[600];
    snprintf(keep, sizeof keep, "%s/v1", f.dir);
    fl_test_system("cp -r '%s/current/.' '%s'", f.root, keep);
    publish(&f, 2, 7);
    fl_client_agent_disconnected(f.agent);
    fl_client_agent_connected(f.agent, &wire_io, &f.wire);
    do_hello(&f, 2);
    serve_download(&f, 1 << 20, -1, 1000);
    uint64_t v;
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 2);
    /* Serve v1's manifest as if it were current. */
    fl_test_system("rm -rf '%s/current' && ln -s '%s' '%s/current'", f.root,
                   keep, f.root);
    fl_client_agent_disconnected(f.agent);
    fl_client_agent_connected(f.agent, &wire_io, &f.wire);
    do_hello(&f, 3); /* the server claims a newer version */
    serve_download(&f, 1 << 20, -1, 1000);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL_REFUSED);
    ck_assert_int_eq(f.ev.status[f.ev.n - 1], FL_EVERSION);
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 2);
    fx_free(&f);
}
END_TEST

START_TEST(test_invite_waits_for_newer_model)
{
    /* Invited for a version it does not hold yet, a device fetches it,
     * verifies it and then accepts. */
    fx_t f;
    fx_init(&f);
    publish(&f, 1, 31);
    fx_agent(&f);
    do_hello(&f, 1);
    serve_download(&f, 1 << 20, -1, 1000);
    publish(&f, 2, 32);
    uint8_t nonce[32] = {2};
    Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
    tc.local_steps = 1;
    tc.batch_size = 1;
    tc.seq_len = 8;
    tc.learning_rate = 1e-3f;
    Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
    cc.quant_bits = 8;
    cc.clip_norm = 1.0f;
    cc.max_summands = 4;
    Flotilla__SecAggConfig sa = FLOTILLA__SEC_AGG_CONFIG__INIT;
    Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    rc.round = 9;
    rc.round_nonce.data = nonce;
    rc.round_nonce.len = 32;
    rc.model_version = 2;
    rc.num_params = fl_model_num_params(fl_client_agent_model(f.agent, NULL));
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
    deliver(f.agent, &e);
    /* No answer yet: the manifest of version 2 is asked for first. */
    ck_assert_int_eq(f.wire.q[0]->body_case,
                     FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST);
    serve_download(&f, 1 << 20, -1, 1000);
    uint64_t v;
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 2);
    fl_envelope_t *acc = take(&f.wire, FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT);
    ck_assert(acc->round_accept->accept);
    ck_assert_uint_eq(acc->round_accept->round, 9);
    fl_proto_free(acc);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    fl_proto_free(
        take(&f.wire, FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE));
    fx_free(&f);
}
END_TEST

/* A version announced outside any round (ModelAvailable) is fetched,
 * verified and used; an announcement of a version the device holds, or of
 * an older one, asks for nothing. */
START_TEST(test_announced_version_is_fetched)
{
    fx_t f;
    fx_init(&f);
    publish(&f, 1, 41);
    fx_agent(&f);
    do_hello(&f, 1);
    serve_download(&f, 1 << 20, -1, 1000);
    uint64_t v;
    fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 1);
    publish(&f, 2, 42);
    Flotilla__ModelAvailable ma = FLOTILLA__MODEL_AVAILABLE__INIT;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE;
    e.model_available = &ma;
    ma.version = 1;
    deliver(f.agent, &e);
    ck_assert_int_eq(f.wire.n, 0);
    ma.version = 2;
    deliver(f.agent, &e);
    ck_assert_int_eq(f.wire.n, 1);
    ck_assert_uint_eq(f.wire.q[0]->manifest_request->version, 2);
    serve_download(&f, 1 << 20, -1, 1000);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL);
    fl_model_t *m = fl_client_agent_model(f.agent, &v);
    ck_assert_uint_eq(v, 2);
    ck_assert_mem_eq(fl_model_params(m), fl_model_params(f.model),
                     fl_model_num_params(m) * sizeof(float));
    for (uint64_t old = 0; old <= 2; old++) {
        ma.version = old;
        deliver(f.agent, &e);
        ck_assert_int_eq(f.wire.n, 0);
    }
    fx_free(&f);
}
END_TEST

/* A version made for another tokenizer is refused: before its download
 * when the manifest's architecture says so (another vocabulary, or another
 * tokenizer reference), after it when only model.bin does (rolled back);
 * one that matches is used. */
START_TEST(test_model_for_another_tokenizer_refused)
{
    fx_t f;
    fx_init(&f);
    f.vocab = 259;
    f.tokref = "byte";
    fx_agent(&f);
    do_hello(&f, 0);
    Flotilla__ModelAvailable ma = FLOTILLA__MODEL_AVAILABLE__INIT;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE;
    e.model_available = &ma;
    static const char *const configs[] = {
        "{\"architecture\":{\"vocab_size\":512}}",
        "{\"architecture\":{\"vocab_size\":259,\"tokenizer\":\"bpe:00ff\"}}",
        NULL, /* model.bin alone names another tokenizer */
        "{\"architecture\":{\"vocab_size\":259,\"tokenizer\":\"byte\"}}"};
    for (uint64_t v = 1; v <= 4; v++) {
        f.config_json = configs[v - 1];
        ck_assert_int_eq(
            fl_model_set_tokenizer_ref(f.model, v == 3 ? "bpe:00ff" : "byte"),
            0);
        publish(&f, v, 50 + v);
        ma.version = v;
        deliver(f.agent, &e);
        ck_assert_int_eq(f.wire.n, 1); /* the manifest request */
        /* Refused from the manifest (v 1, 2): not one chunk is asked for. */
        serve_download(&f, 1 << 20, -1, v < 3 ? 0 : 1000);
        uint64_t have = 0;
        if (v < 4) {
            ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL_REFUSED);
            ck_assert_int_eq(f.ev.status[f.ev.n - 1], FL_EFORMAT);
            ck_assert_ptr_null(fl_client_agent_model(f.agent, &have));
        } else {
            ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_MODEL);
            ck_assert_ptr_nonnull(fl_client_agent_model(f.agent, &have));
            ck_assert_uint_eq(have, 4);
        }
        ck_assert_int_eq(f.wire.n, 0);
    }
    fx_free(&f);
}
END_TEST

/* The device's round policy: an invitation without secure aggregation, or
 * with fewer invitees than the device requires, is declined at once, with
 * the reason, before the model it names is even fetched; one that meets
 * the policy is not. */
START_TEST(test_round_policy_declines)
{
    fx_t f;
    fx_init(&f);
    f.require_secagg = 1;
    f.min_participants = 5;
    publish(&f, 1, 61);
    fx_agent(&f);
    do_hello(&f, 0); /* no model yet: a fetch would be the first answer */
    uint8_t nonce[32] = {7};
    uint32_t ids[5] = {1, 2, 3, 4, 5};
    Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
    Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
    Flotilla__SecAggConfig sa = FLOTILLA__SEC_AGG_CONFIG__INIT;
    Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    rc.round_nonce.data = nonce;
    rc.round_nonce.len = 32;
    rc.model_version = 1;
    rc.training = &tc;
    rc.codec = &cc;
    rc.secagg = &sa;
    rc.deadlines = &dl;
    rc.client_id = 1;
    sa.participants = ids;
    Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
    inv.config = &rc;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
    e.round_invite = &inv;
    static const struct {
        int secagg;
        size_t n;
        const char *why;
    } cases[] = {{0, 5, "secure aggregation is off"},
                 {1, 4, "4 invitees, this device requires at least 5"},
                 {1, 5, NULL}};
    for (size_t i = 0; i < FL_ARRAY_LEN(cases); i++) {
        rc.round = 10 + i;
        sa.enabled = cases[i].secagg;
        sa.n_participants = cases[i].n;
        deliver(f.agent, &e);
        ck_assert_int_eq(f.wire.n, 1);
        if (cases[i].why) {
            fl_envelope_t *acc =
                take(&f.wire, FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT);
            ck_assert(!acc->round_accept->accept);
            ck_assert_uint_eq(acc->round_accept->round, 10 + i);
            ck_assert_ptr_nonnull(
                strstr(acc->round_accept->reason, cases[i].why));
            fl_proto_free(acc);
            ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_DECLINED);
        } else { /* within the policy: the model is fetched first */
            ck_assert_int_eq(f.wire.q[0]->body_case,
                             FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST);
        }
    }
    drain(&f.wire);
    fx_free(&f);
}
END_TEST

START_TEST(test_plain_round)
{
    fx_t f;
    fx_init(&f);
    publish(&f, 1, 21);
    fx_agent(&f);
    do_hello(&f, 1);
    serve_download(&f, 1 << 20, -1, 1000);
    fl_model_t *m = fl_client_agent_model(f.agent, NULL);
    ck_assert_ptr_nonnull(m);
    size_t d = fl_model_num_params(m);

    /* A round without secure aggregation: dense 8-bit codec. */
    uint8_t nonce[32] = {1};
    Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
    tc.local_steps = 3;
    tc.batch_size = 2;
    tc.seq_len = 16;
    tc.learning_rate = 1e-3f;
    tc.seed = 9;
    Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
    cc.quant_bits = 8;
    cc.clip_norm = 1.0f;
    cc.error_feedback = 1;
    cc.max_summands = 4;
    Flotilla__SecAggConfig sa = FLOTILLA__SEC_AGG_CONFIG__INIT;
    sa.enabled = 0;
    Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    rc.round = 5;
    rc.round_nonce.data = nonce;
    rc.round_nonce.len = 32;
    rc.model_version = 1;
    rc.num_params = d;
    rc.training = &tc;
    rc.codec = &cc;
    rc.secagg = &sa;
    rc.deadlines = &dl;
    rc.client_id = 1;
    rc.expected_cohort = 4;
    Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
    inv.config = &rc;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
    e.round_invite = &inv;

    /* An invitation for an older model version is declined; one with a
     * wrong dimension too. */
    rc.model_version = 0;
    deliver(f.agent, &e);
    fl_envelope_t *acc = take(&f.wire, FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT);
    ck_assert(!acc->round_accept->accept);
    ck_assert_str_eq(acc->round_accept->reason, "model out of date");
    fl_proto_free(acc);
    drain(&f.wire);
    rc.model_version = 1;
    rc.num_params = d + 1;
    deliver(f.agent, &e);
    acc = take(&f.wire, FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT);
    ck_assert(!acc->round_accept->accept);
    fl_proto_free(acc);
    rc.num_params = d;

    deliver(f.agent, &e);
    acc = take(&f.wire, FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT);
    ck_assert(acc->round_accept->accept);
    ck_assert_uint_eq(acc->round_accept->round, 5);
    fl_proto_free(acc);
    ck_assert_int_eq(f.wire.n, 0);
    uv_run(&f.loop, UV_RUN_DEFAULT); /* local training on the thread pool */
    fl_envelope_t *in =
        take(&f.wire, FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE);
    ck_assert_uint_eq(in->masked_input_response->round, 5);
    ck_assert_uint_eq(in->masked_input_response->client_id, 1);
    uint64_t wire_bytes;
    fl_compress_config_t ccfg;
    fl_compress_config_init(&ccfg);
    ccfg.secagg = 0;
    ccfg.quant_bits = 8;
    ccfg.clip_norm = 1.0f;
    ccfg.max_summands = 4;
    ck_assert_int_eq(fl_compress_wire_bytes(&ccfg, d, &wire_bytes, NULL), 0);
    ck_assert_uint_eq(in->masked_input_response->packed.len, wire_bytes);
    /* The server side decodes it into a bounded contribution. */
    fl_compress_t *codec;
    ck_assert_int_eq(fl_compress_new(&codec, &ccfg, d), 0);
    float *acc_v = calloc(fl_compress_space_dim(codec), sizeof(float));
    ck_assert_int_eq(fl_compress_accumulate_payload(
                         codec, acc_v, in->masked_input_response->packed.data,
                         in->masked_input_response->packed.len),
                     0);
    free(acc_v);
    fl_compress_free(codec);
    fl_proto_free(in);
    fl_envelope_t *rep =
        take(&f.wire, FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT);
    ck_assert_uint_eq(rep->training_report->num_examples, 6);
    ck_assert_float_gt(rep->training_report->loss_before, 0);
    fl_proto_free(rep);

    /* The result ends the round: journal and residual are written. */
    Flotilla__RoundResult rr = FLOTILLA__ROUND_RESULT__INIT;
    rr.round = 5;
    rr.success = 1;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_RESULT;
    e.round_result = &rr;
    deliver(f.agent, &e);
    ck_assert_int_eq(last_event(&f.ev), FL_CLIENT_EV_ROUND_DONE);
    ck_assert_int_eq(f.ev.status[f.ev.n - 1], 0);
    char p[600];
    fl_client_journal_entry_t j[4];
    size_t nj;
    snprintf(p, sizeof p, "%s/journal.json", f.state);
    ck_assert_int_eq(fl_client_journal_read(p, j, 4, &nj, NULL), 0);
    ck_assert_uint_ge(nj, 1);
    ck_assert_uint_eq(j[nj - 1].round, 5);
    ck_assert_int_eq(j[nj - 1].status, 0);
    ck_assert_uint_eq(j[nj - 1].num_examples, 6);
    float *res;
    size_t n;
    uint64_t ver;
    snprintf(p, sizeof p, "%s/residual.bin", f.state);
    ck_assert_int_eq(fl_client_residual_load(p, d, &res, &n, &ver), 0);
    ck_assert_uint_eq(n, d);
    double norm = 0;
    for (size_t i = 0; i < d; i++)
        norm += (double)res[i] * res[i];
    ck_assert_double_gt(norm, 0); /* 8-bit rounding leaves something */
    fl_free(res);
    /* A heartbeat goes out on request, numbered. */
    ck_assert_int_eq(fl_client_agent_heartbeat(f.agent), 0);
    ck_assert_int_eq(fl_client_agent_heartbeat(f.agent), 0);
    fl_envelope_t *hb = take(&f.wire, FLOTILLA__ENVELOPE__BODY_HEARTBEAT);
    ck_assert_uint_eq(hb->heartbeat->seq, 1);
    fl_proto_free(hb);
    hb = take(&f.wire, FLOTILLA__ENVELOPE__BODY_HEARTBEAT);
    ck_assert_uint_eq(hb->heartbeat->seq, 2);
    ck_assert_uint_gt(hb->heartbeat->time_ms, 0);
    fl_proto_free(hb);
    /* Messages of a round the agent is not in are ignored. */
    Flotilla__UnmaskingRequest ur = FLOTILLA__UNMASKING_REQUEST__INIT;
    ur.round = 77;
    e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST;
    e.unmasking_request = &ur;
    deliver(f.agent, &e);
    ck_assert_int_eq(f.wire.n, 0);
    ck_assert(!f.wire.closed);
    /* Garbage closes the connection. */
    uint8_t junk[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    ck_assert_int_lt(fl_client_agent_on_frame(f.agent, junk, sizeof junk), 0);
    ck_assert(f.wire.closed);
    fx_free(&f);
}
END_TEST

/* ---- the shared model cache ---- */

/* A RoundResult announcing version: the agent fetches it. */
static void announce(fl_client_agent_t *a, uint64_t version)
{
    Flotilla__RoundResult rr = FLOTILLA__ROUND_RESULT__INIT;
    rr.round = version - 1;
    rr.success = 1;
    rr.new_model_version = version;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_RESULT;
    e.round_result = &rr;
    deliver(a, &e);
}
typedef struct {
    fl_client_agent_t *a;
    wire_t w;
    events_t ev;
    char state[320];
} peer_t;

static void peer_new(fx_t *f, peer_t *p, const char *name,
                     fl_client_model_cache_t *cache)
{
    memset(p, 0, sizeof *p);
    snprintf(p->state, sizeof p->state, "%s/%s", f->dir, name);
    fl_client_agent_opts_t o = {.loop = &f->loop,
                                .state_dir = p->state,
                                .identity = f->device,
                                .data = f->data,
                                .seed = 5,
                                .on_event = on_event,
                                .ctx = &p->ev,
                                .model_cache = cache};
    fl_artifact_key_public(f->signer, o.signing_pub);
    ck_assert_int_eq(fl_client_agent_new(&o, &p->a), 0);
    fl_client_agent_connected(p->a, &wire_io, &p->w);
}

static uint64_t download_size(fx_t *f)
{
    static const char *const names[] = {"manifest.json", "manifest.sig",
                                        "model.bin"};
    uint64_t n = 0;
    for (int i = 0; i < 3; i++) {
        char p[500];
        uint8_t *b;
        size_t len;
        snprintf(p, sizeof p, "%s/current/%s", f->root, names[i]);
        ck_assert_int_eq(fl_file_read_all(p, 1 << 26, &b, &len), 0);
        fl_free(b);
        n += len;
    }
    return n;
}

/* Agents sharing a cache: one downloads a version while the others wait
 * (sending nothing), then all use that one verified copy; a late agent
 * takes it at once; when the downloading agent goes away, a waiter
 * downloads instead; the cache outlives no agent and leaks nothing. */
START_TEST(test_model_cache)
{
    fx_t f;
    fx_init(&f);
    publish(&f, 1, 21);
    uint64_t size1 = download_size(&f);
    fl_client_model_cache_t *cache = NULL;
    ck_assert_int_eq(fl_client_model_cache_new(&cache), 0);
    peer_t a, b, c;
    peer_new(&f, &a, "a", cache);
    peer_new(&f, &b, "b", cache);

    do_hello_on(&f, a.a, &a.w, 1);
    ck_assert_int_eq(a.w.n, 1); /* a asks for the manifest */
    do_hello_on(&f, b.a, &b.w, 1);
    ck_assert_int_eq(b.w.n, 0); /* b waits for a's download */
    serve_download_on(&f, a.a, &a.w, 1 << 20, -1, 1000);
    uint64_t va = 0, vb = 0;
    fl_model_t *ma = fl_client_agent_model(a.a, &va);
    fl_model_t *mb = fl_client_agent_model(b.a, &vb);
    ck_assert_ptr_nonnull(ma);
    ck_assert_ptr_eq(ma, mb); /* one copy */
    ck_assert_uint_eq(va, 1);
    ck_assert_uint_eq(vb, 1);
    ck_assert_int_eq(last_event(&b.ev), FL_CLIENT_EV_MODEL);
    ck_assert_mem_eq(fl_model_params(ma), fl_model_params(f.model),
                     fl_model_num_params(ma) * sizeof(float));
    ck_assert_uint_eq(fl_client_agent_bytes_cached(a.a), 0);
    ck_assert_uint_eq(fl_client_agent_bytes_cached(b.a), size1);

    /* A late agent takes version 1 at once, with no request. */
    peer_new(&f, &c, "c", cache);
    do_hello_on(&f, c.a, &c.w, 1);
    ck_assert_int_eq(c.w.n, 0);
    ck_assert_ptr_eq(fl_client_agent_model(c.a, NULL), ma);
    fl_client_model_cache_stats_t st;
    fl_client_model_cache_stats(cache, &st);
    ck_assert_uint_eq(st.hits, 2);
    ck_assert_uint_eq(st.hit_bytes, 2 * size1);
    ck_assert_uint_eq(st.entries, 1);

    /* Version 2: c downloads, b waits; c's connection drops mid-way, so
     * b asks for the manifest itself and shares its copy with c. */
    publish(&f, 2, 22);
    uint64_t size2 = download_size(&f);
    announce(c.a, 2);
    announce(b.a, 2);
    ck_assert_int_eq(c.w.n, 1);
    ck_assert_int_eq(b.w.n, 0);
    fl_client_agent_disconnected(c.a);
    drain(&c.w);
    ck_assert_int_eq(b.w.n, 1);
    serve_download_on(&f, b.a, &b.w, 1 << 20, -1, 1000);
    fl_model_t *m2 = fl_client_agent_model(b.a, &vb);
    ck_assert_uint_eq(vb, 2);
    ck_assert_ptr_ne(m2, ma);
    ck_assert_ptr_eq(fl_client_agent_model(a.a, NULL), ma); /* a keeps 1 */
    fl_client_agent_connected(c.a, &wire_io, &c.w);
    do_hello_on(&f, c.a, &c.w, 2);
    ck_assert_int_eq(c.w.n, 0);
    ck_assert_ptr_eq(fl_client_agent_model(c.a, NULL), m2);
    ck_assert_uint_eq(fl_client_agent_bytes_cached(c.a), size1 + size2);
    fl_client_model_cache_stats(cache, &st);
    ck_assert_uint_eq(st.entries, 2);

    /* The cache may go first; the entries go with their last agent. */
    fl_client_model_cache_free(cache);
    fl_client_agent_free(a.a);
    fl_client_agent_free(b.a);
    fl_client_agent_free(c.a);
    drain(&a.w);
    drain(&b.w);
    drain(&c.w);
    fx_free(&f);
}
END_TEST

/* A training round never writes into the shared model: local training
 * works on a clone. */
START_TEST(test_update_reads_global_only)
{
    fx_t f;
    fx_init(&f);
    fl_model_init_weights(f.model, 7);
    size_t d = fl_model_num_params(f.model);
    float *before = fl_malloc(d * sizeof *before);
    ck_assert_ptr_nonnull(before);
    memcpy(before, fl_model_params(f.model), d * sizeof *before);
    fl_compress_config_t cc;
    fl_compress_config_init(&cc);
    cc.quant_bits = 8;
    cc.clip_norm = 4;
    cc.max_summands = 4;
    cc.ring_bits = fl_compress_ring_bits_min(8, 4);
    fl_compress_t *codec = NULL;
    ck_assert_int_eq(fl_compress_new(&codec, &cc, d), 0);
    fl_client_train_cfg_t tc = {.local_steps = 3,
                                .batch_size = 2,
                                .seq_len = 16,
                                .learning_rate = 1e-2f,
                                .optimizer = FL_MODEL_ADAMW,
                                .seed = 1};
    uint32_t *ring = fl_calloc(fl_compress_value_count(codec), sizeof *ring);
    ck_assert_ptr_nonnull(ring);
    fl_client_update_stats_t st;
    ck_assert_int_eq(
        fl_client_update(f.model, f.data, &tc, codec, NULL, 9, ring, NULL, &st),
        0);
    ck_assert_double_gt(st.delta_norm, 0); /* the clone moved... */
    ck_assert_mem_eq(fl_model_params(f.model), before,
                     d * sizeof *before); /* ...the global did not */
    fl_free(ring);
    fl_compress_free(codec);
    fl_free(before);
    fx_free(&f);
}
END_TEST

Suite *check_agent_suite(void)
{
    Suite *s = suite_create("agent");
    TCase *tc = tcase_create("scripted");
    tcase_add_test(tc, test_hello_and_download);
    tcase_add_test(tc, test_foreign_signature_and_replay);
    tcase_add_test(tc, test_plain_round);
    tcase_add_test(tc, test_invite_waits_for_newer_model);
    tcase_add_test(tc, test_announced_version_is_fetched);
    tcase_add_test(tc, test_model_for_another_tokenizer_refused);
    tcase_add_test(tc, test_round_policy_declines);
    tcase_add_test(tc, test_model_cache);
    tcase_add_test(tc, test_update_reads_global_only);
    suite_add_tcase(s, tc);
    return s;
}
