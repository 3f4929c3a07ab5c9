/* tests/fuzz/fuzz_peer.c — the server's handling of what devices send, on
 * arbitrary bytes: the hello, heartbeats, model downloads and the round
 * orchestrator with the real engines.
 *
 * One server runs for the whole process (plain TCP, the real engines, a
 * tiny model, three enrolled devices). For each input three devices
 * connect through the peer seam with valid signed hellos, a round of
 * secure aggregation starts with all three, and the input's records
 * [selector][length, 2 bytes LE][bytes] are delivered. The selector picks
 * the device and what it sends: its next valid message of the protocol
 * (each device runs the real secure-aggregation client, so rounds can go
 * through every phase to a published version), an Envelope made of the
 * bytes, or a valid message of that device for the current round (accept,
 * advertisement, share keys, masked input, unmasking, report, manifest and
 * chunk requests, heartbeat) overwritten from the offset the bytes' first
 * two give. Then the devices disconnect and the round ends. Nothing may
 * crash, leak or read out of bounds, and the server must stay able to run
 * the next input. */
#include "artifact/artifact.h"
#include "compress/compress.h"
#include "secagg/secagg.h"
#include "model/model.h"
#include "server/internal.h"

#include "tests/fuzz/fuzz_util.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUST(cond)                                                             \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_peer: setup failed at line %d\n", __LINE__); \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

#define NDEV        3
#define MAX_FRAME   (64u << 10)
#define N_TEMPLATES 9

typedef struct {
    fl_server_peer_t *p;
    uint8_t pk[32], sk[64];
    uint8_t nonce[32];
    uint64_t round;
    uint32_t id;
    int close_asked, closed;
    /* The device's own part: the invitation and the requests of the
     * round, its secure-aggregation client and how far it went. */
    fl_envelope_t *invite, *share_req, *masked_req, *unmask_req;
    fl_secagg_client_t *sa;
    int step; /* 0 accept, 1 advertise, 2 share, 3 masked, 4 unmask, 5 done */
} dev_t_;

static struct {
    char dir[256];
    uv_loop_t loop;
    fl_server_config_t cfg;
    fl_server_t *s;
    dev_t_ dev[NDEV];
} g;

static int dev_send(void *ctx, const uint8_t *payload, size_t len)
{
    dev_t_ *d = ctx;
    fl_envelope_t *e = NULL;
    if (fl_proto_decode(payload, len, 1u << 30, &e) < 0)
        __builtin_trap(); /* the server sends only valid Envelopes */
    if (e->body_case == FLOTILLA__ENVELOPE__BODY_SERVER_HELLO &&
        e->server_hello->nonce.len == 32)
        memcpy(d->nonce, e->server_hello->nonce.data, 32);
    fl_envelope_t **keep = NULL;
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ROUND_INVITE:
        d->round = e->round_invite->config->round;
        d->id = e->round_invite->config->client_id;
        keep = &d->invite;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST:
        keep = &d->share_req;
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST:
        keep = &d->masked_req;
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST:
        keep = &d->unmask_req;
        break;
    default:
        break;
    }
    if (keep) {
        fl_proto_free(*keep);
        *keep = e;
    } else {
        fl_proto_free(e);
    }
    return 0;
}

static void dev_reset(dev_t_ *d)
{
    fl_proto_free(d->invite);
    fl_proto_free(d->share_req);
    fl_proto_free(d->masked_req);
    fl_proto_free(d->unmask_req);
    fl_secagg_client_free(d->sa);
    d->invite = d->share_req = d->masked_req = d->unmask_req = NULL;
    d->sa = NULL;
    d->step = 0;
}

static void dev_close(void *ctx)
{
    ((dev_t_ *)ctx)->close_asked = 1;
}

static const fl_server_peer_ops_t dev_ops = {.send = dev_send,
                                             .close = dev_close};

static void deliver(dev_t_ *d, const uint8_t *p, size_t n)
{
    if (!d->p || d->close_asked)
        return;
    fl_server_peer_frame(d->p, p, n);
    for (int i = 0; i < 4; i++)
        uv_run(&g.loop, UV_RUN_NOWAIT);
}

static size_t pack(fl_envelope_t *e, uint8_t *out)
{
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    MUST(n <= MAX_FRAME);
    flotilla__envelope__pack(e, out);
    return n;
}

/* Valid message k of device d for its current round, packed into out. */
static size_t template(int k, const dev_t_ *d, uint8_t *out)
{
    static uint8_t zero[64], packed[64];
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__RoundAccept ra = FLOTILLA__ROUND_ACCEPT__INIT;
    Flotilla__AdvertiseKeys ak = FLOTILLA__ADVERTISE_KEYS__INIT;
    Flotilla__ShareKeysResponse sk = FLOTILLA__SHARE_KEYS_RESPONSE__INIT;
    Flotilla__MaskedInputResponse mi = FLOTILLA__MASKED_INPUT_RESPONSE__INIT;
    Flotilla__UnmaskingResponse um = FLOTILLA__UNMASKING_RESPONSE__INIT;
    Flotilla__TrainingReport tr = FLOTILLA__TRAINING_REPORT__INIT;
    Flotilla__ManifestRequest mr = FLOTILLA__MANIFEST_REQUEST__INIT;
    Flotilla__ChunkRequest cr = FLOTILLA__CHUNK_REQUEST__INIT;
    Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
    ProtobufCBinaryData z32 = {32, zero}, z64 = {64, zero};
    switch (k) {
    case 0:
        ra.round = d->round;
        ra.accept = 1;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
        e.round_accept = &ra;
        break;
    case 1:
        ak.round = d->round;
        ak.client_id = d->id;
        ak.c_pk = ak.s_pk = ak.identity_key = z32;
        ak.signature = z64;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS;
        e.advertise_keys = &ak;
        break;
    case 2:
        sk.round = d->round;
        sk.client_id = d->id;
        sk.session_id = z32;
        e.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE;
        e.share_keys_response = &sk;
        break;
    case 3:
        mi.round = d->round;
        mi.client_id = d->id;
        mi.num_values = 16;
        mi.packed.data = packed;
        mi.packed.len = sizeof packed;
        mi.session_id = z32;
        e.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
        e.masked_input_response = &mi;
        break;
    case 4:
        um.round = d->round;
        um.client_id = d->id;
        um.session_id = z32;
        e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE;
        e.unmasking_response = &um;
        break;
    case 5:
        tr.round = d->round;
        tr.loss_before = 2.0f;
        tr.loss_after = 1.5f;
        tr.num_examples = 10;
        e.body_case = FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT;
        e.training_report = &tr;
        break;
    case 6:
        mr.version = 1;
        e.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST;
        e.manifest_request = &mr;
        break;
    case 7:
        cr.version = 1;
        cr.file = "model.bin";
        cr.offset = 100;
        cr.length = 1000;
        e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST;
        e.chunk_request = &cr;
        break;
    default:
        hb.seq = 1;
        e.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
        e.heartbeat = &hb;
        break;
    }
    return pack(&e, out);
}

static void send_msg(dev_t_ *d, fl_envelope_t *e)
{
    static uint8_t buf[MAX_FRAME];
    deliver(d, buf, pack(e, buf));
}

/* Device d's next valid message of the round, if it has one to send. */
static void play(dev_t_ *d)
{
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    if (!d->invite || !d->p || d->close_asked)
        return;
    const Flotilla__RoundConfig *rc = d->invite->round_invite->config;
    switch (d->step) {
    case 0: {
        Flotilla__RoundAccept ra = FLOTILLA__ROUND_ACCEPT__INIT;
        ra.round = rc->round;
        ra.accept = 1;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
        e.round_accept = &ra;
        d->step = 1;
        send_msg(d, &e);
        return;
    }
    case 1: {
        fl_secagg_round_t round;
        memset(&round, 0, sizeof round);
        round.round = rc->round;
        if (rc->round_nonce.len != 32)
            return;
        memcpy(round.round_nonce, rc->round_nonce.data, 32);
        fl_compress_config_t cc;
        fl_compress_config_init(&cc);
        cc.rotate = rc->codec->rotate;
        round.dim = fl_compress_values(&cc, rc->num_params);
        round.config = rc->secagg;
        Flotilla__AdvertiseKeys *adv = NULL;
        if (fl_secagg_client_new(&round, d->id, d->sk, &d->sa) < 0 ||
            fl_secagg_client_advertise(d->sa, &adv) < 0)
            __builtin_trap(); /* the server's own invitation */
        e.body_case = FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS;
        e.advertise_keys = adv;
        d->step = 2;
        send_msg(d, &e);
        fl_secagg_msg_free(adv);
        return;
    }
    case 2: {
        Flotilla__ShareKeysResponse *r = NULL;
        if (!d->share_req ||
            fl_secagg_client_share_keys(d->sa, d->share_req->share_keys_request,
                                        &r) < 0)
            return;
        e.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE;
        e.share_keys_response = r;
        d->step = 3;
        send_msg(d, &e);
        fl_secagg_msg_free(r);
        return;
    }
    case 3: {
        Flotilla__MaskedInputResponse *r = NULL;
        if (!d->masked_req)
            return;
        fl_compress_config_t cc;
        fl_compress_config_init(&cc);
        cc.rotate = rc->codec->rotate;
        uint64_t m = fl_compress_values(&cc, rc->num_params);
        uint32_t *x = fl_calloc(m ? m : 1, sizeof *x);
        for (uint64_t i = 0; i < m; i++)
            x[i] = (uint32_t)(i * 7 + d->id) & 0xff;
        int rc2 = fl_secagg_client_masked_input(
            d->sa, d->masked_req->masked_input_request, x, &r);
        fl_free(x);
        if (rc2 < 0)
            return;
        e.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
        e.masked_input_response = r;
        d->step = 4;
        send_msg(d, &e);
        fl_secagg_msg_free(r);
        return;
    }
    case 4: {
        Flotilla__UnmaskingResponse *r = NULL;
        if (!d->unmask_req ||
            fl_secagg_client_unmask(d->sa, d->unmask_req->unmasking_request,
                                    &r) < 0)
            return;
        e.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE;
        e.unmasking_response = r;
        d->step = 5;
        send_msg(d, &e);
        fl_secagg_msg_free(r);
        return;
    }
    default:
        return;
    }
}

static void connect_all(void)
{
    if (g.s->stopping) { /* the server took the SIGINT or SIGTERM */
        fprintf(stderr, "fuzz_peer: the server was stopped by a signal\n");
        exit(0);
    }
    uint8_t buf[2048];
    for (int i = 0; i < NDEV; i++) {
        dev_t_ *d = &g.dev[i];
        dev_reset(d);
        d->close_asked = d->closed = 0;
        d->round = 0;
        d->id = 0;
        MUST(fl_server_peer_open(g.s, &dev_ops, d, &d->p) == 0 && d->p);
        uint8_t msg[FL_SERVER_HELLO_MSG_LEN], sig[64];
        fl_server_hello_message(msg, d->nonce, d->pk, FL_PROTOCOL_VERSION);
        crypto_sign_detached(sig, NULL, msg, sizeof msg, d->sk);
        Flotilla__ClientHello h = FLOTILLA__CLIENT_HELLO__INIT;
        h.protocol_version = FL_PROTOCOL_VERSION;
        h.identity_key.data = d->pk;
        h.identity_key.len = 32;
        h.signature.data = sig;
        h.signature.len = 64;
        h.model_version = 1;
        fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
        e.body_case = FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO;
        e.client_hello = &h;
        deliver(d, buf, pack(&e, buf));
        MUST(d->p->hello_ok);
    }
    /* Invites all three once the last input's round has ended (its end
     * may still run on the thread pool). */
    double t0 = fl_time_mono_s();
    while (!g.dev[0].invite) {
        MUST(fl_time_mono_s() - t0 < 30);
        fl_server_round_tick(g.s->round);
        uv_run(&g.loop, UV_RUN_NOWAIT);
    }
    for (int i = 0; i < NDEV; i++)
        MUST(g.dev[i].invite != NULL);
}

static void disconnect_all(void)
{
    for (int i = 0; i < NDEV; i++) {
        dev_t_ *d = &g.dev[i];
        if (d->p)
            fl_server_peer_close(d->p);
    }
    for (int i = 0; i < NDEV; i++) {
        dev_t_ *d = &g.dev[i];
        if (d->p)
            fl_server_peer_closed(d->p);
        d->p = NULL;
        dev_reset(d);
    }
    for (int i = 0; i < 8; i++)
        uv_run(&g.loop, UV_RUN_NOWAIT);
}

static void setup(void)
{
    char err[512] = "", path[600], key[600];
    MUST(sodium_init() >= 0);
    const char *dir = fuzz_workdir("peer");
    MUST(dir != NULL);
    snprintf(g.dir, sizeof g.dir, "%s", dir);
    snprintf(path, sizeof path, "%s/enrolled", g.dir);
    for (int i = 0; i < NDEV; i++) {
        crypto_sign_keypair(g.dev[i].pk, g.dev[i].sk);
        MUST(fl_server_enrol_edit(path, g.dev[i].pk, NULL, 1, err,
                                  sizeof err) == 0);
    }
    fl_artifact_key_t *sk = NULL;
    MUST(fl_artifact_key_generate(&sk) == 0);
    snprintf(key, sizeof key, "%s/sign", g.dir);
    MUST(fl_artifact_key_save(sk, key) == 0);
    fl_artifact_key_free(sk);
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = 8;
    mc.hidden_dim = 16;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.seq_len = 16;
    fl_model_t *m = NULL;
    MUST(fl_model_new(&mc, &m) == 0);
    fl_model_init_weights(m, 3);
    snprintf(path, sizeof path, "%s/init.bin", g.dir);
    MUST(fl_model_save(m, path, 0) == 0);
    fl_model_free(m);

    MUST(fl_server_config_init(&g.cfg, err, sizeof err) == 0);
    const fl_cfg_table_t *t = fl_server_config_table();
    char keypath[700];
    snprintf(keypath, sizeof keypath, "%s.key", key);
    const char *kv[][2] = {{"state", g.dir},
                           {"transport", "tcp"},
                           {"listen", "127.0.0.1"},
                           {"port", "0"},
                           {"metrics", "false"},
                           {"signing-key", keypath},
                           {"init-model", path},
                           {"cohort", "3"},
                           {"over-selection", "1.0"},
                           {"min-clients", "3"},
                           {"round-interval-ms", "86400000"},
                           {"accept-ms", "86400000"},
                           {"advertise-ms", "86400000"},
                           {"share-ms", "86400000"},
                           {"train-ms", "1"},
                           {"masked-input-ms", "86400000"},
                           {"unmask-ms", "86400000"},
                           {"announce-spread-ms", "0"},
                           {"noise-multiplier", "0"}};
    for (size_t i = 0; i < FL_ARRAY_LEN(kv); i++)
        MUST(fl_cfg_set(t, &g.cfg, kv[i][0], kv[i][1], err, sizeof err) == 0);
    MUST(uv_loop_init(&g.loop) == 0);
    MUST(fl_server_new(&g.loop, &g.cfg, &g.s, err, sizeof err) == 0);
    MUST(fl_server_start(g.s, err, sizeof err) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static uint8_t frame[MAX_FRAME];
    if (!ready) {
        setup();
        ready = 1;
    }
    connect_all();
    while (size >= 3) {
        unsigned sel = data[0];
        size_t len = (size_t)data[1] | (size_t)data[2] << 8;
        data += 3;
        size -= 3;
        len = FL_MIN(len, size);
        dev_t_ *d = &g.dev[sel % NDEV];
        size_t n;
        if (((sel >> 2) & 3) == 3) { /* the device's own next message */
            play(d);
            data += len;
            size -= len;
            continue;
        }
        if ((sel >> 2) & 3) { /* a valid message, overwritten */
            n = template((int)((sel >> 4) % N_TEMPLATES), d, frame);
            if (len >= 2 && n > 0) {
                size_t off = ((size_t)data[0] | (size_t)data[1] << 8) % n;
                memcpy(frame + off, data + 2, FL_MIN(len - 2, n - off));
            }
        } else {
            n = len;
            memcpy(frame, data, n);
        }
        data += len;
        size -= len;
        deliver(d, frame, n);
    }
    disconnect_all();
    return 0;
}
