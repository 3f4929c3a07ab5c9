/* tests/unit/check_fleet.c — devices and a server as real processes on
 * loopback: `flotilla client` daemons (started before the server) enrol,
 * take part in rounds over TLS with secure aggregation, survive a SIGKILL
 * of the server, answer local inference while rounds run, stay under their
 * memory cap, and the global model's loss on their text falls. And: every
 * byte a device sends in rounds is recorded, and none of its text is in
 * them. */
#include "client/client.h"
#include "model/quant.h"
#include "model/tokenizer.h"
#include "net/net.h"
#include "server/server.h"
#include "tests/unit/testutil.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#define NCLIENTS 3

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* The server's last completed round (0 when no state yet). */
static uint64_t server_round(const char *dir, char *model_dir, size_t len)
{
    fl_server_state_t st;
    char err[256];
    fl_server_state_init(&st);
    uint64_t r = 0;
    if (fl_server_state_load(dir, &st, err, sizeof err) == 0) {
        r = st.round;
        if (model_dir && fl_path_join(model_dir, len, dir, st.model_dir) < 0)
            model_dir[0] = '\0';
    }
    fl_server_state_clear(&st);
    return r;
}

static uint64_t wait_round(const char *dir, uint64_t want, int seconds,
                           const char *log)
{
    uint64_t r = 0;
    for (int i = 0; i < seconds * 10 && (r = server_round(dir, NULL, 0)) < want;
         i++)
        usleep(100000);
    if (r < want)
        fl_test_system("tail -30 '%s' >&2", log);
    ck_assert_msg(r >= want, "the server completed %llu rounds, wanted %llu",
                  (unsigned long long)r, (unsigned long long)want);
    return r;
}

/* One device's text: a style of its own. */
static void write_text(const char *dir, int who)
{
    static const char *const styles[NCLIENTS] = {
        "the cat sat on the mat and looked at the hat.",
        "a stitch in time saves nine, they say in the town.",
        "rain in spain falls mainly on the plain, again.",
    };
    char path[1024];
    ck_assert_int_eq(fl_mkdir_p(dir, 0700), 0);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    for (int i = 0; i < 150; i++)
        fl_buf_printf(&b, "%s %d\n", styles[who], i % 5);
    ck_assert_int_eq(fl_file_write_atomic(path, b.data, b.len, 0600), 0);
    fl_buf_free(&b);
}

static void small_model(const char *path, uint64_t seed)
{
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = 32;
    mc.hidden_dim = 64;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.seq_len = 32;
    mc.vocab_size = 259; /* the byte-level tokenizer */
    fl_model_t *m = NULL;
    ck_assert_int_eq(fl_model_new(&mc, &m), 0);
    fl_model_init_weights(m, seed);
    ck_assert_int_eq(fl_model_save(m, path, 0), 0);
    fl_model_free(m);
}

/* Mean validation loss of the model file on the devices' text. */
static double fleet_loss(const char *model_path, const char *base)
{
    fl_model_t *m = NULL;
    fl_tokenizer_t *tok = NULL;
    ck_assert_int_eq(fl_model_load(model_path, &m), 0);
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    double total = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/data%d", base, i);
        fl_data_opts_t o;
        fl_data_opts_init(&o);
        o.dir = dir;
        fl_data_t *d = NULL;
        ck_assert_int_eq(fl_data_load(&o, tok, &d), 0);
        double l;
        ck_assert_int_eq(fl_client_eval(m, d, FL_DATA_VAL, 32, 64, &l), 0);
        total += l;
        fl_data_free(d);
    }
    fl_tokenizer_free(tok);
    fl_model_free(m);
    return total / NCLIENTS;
}

/* Sends one request to an inference socket; the answer line into out. */
static int ask_socket(const char *path, const char *req, char *out, size_t len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        return -1;
    memcpy(a.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    size_t n = 0;
    while (n + 1 < len) {
        ssize_t r = read(fd, out + n, 1);
        if (r <= 0 || out[n] == '\n')
            break;
        n++;
    }
    out[n] = '\0';
    close(fd);
    return (int)n;
}

static long peak_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static void write_server_ini(const char *ini, const char *base, int port,
                             const char *transport)
{
    char text[4096];
    snprintf(
        text, sizeof text,
        "[server]\nstate = %s/server\ntransport = %s\nlisten = 127.0.0.1\n"
        "port = %d\ntls-cert = %s/tls/server.crt\ntls-key = %s/tls/server.key\n"
        "signing-key = %s/sign.key\ninit-model = %s/init.bin\nmetrics = false\n"
        "cohort = %d\nover-selection = 1.0\nmin-clients = %d\npopulation = "
        "100\n"
        "round-interval-ms = 200\nnoise-multiplier = 0.05\nclip-norm = 2.0\n"
        "local-steps = 12\nbatch-size = 4\nseq-len = 32\nclient-lr = 0.003\n"
        "secagg = true\ngraph = complete\nquant-bits = 8\nrotate = true\n"
        "accept-ms = 20000\ntrain-ms = 60000\nadvertise-ms = 20000\n"
        "share-ms = 20000\nmasked-input-ms = 60000\nunmask-ms = 20000\n",
        base, transport, port, base, base, base, base, NCLIENTS, NCLIENTS);
    ck_assert_int_eq(fl_file_write_atomic(ini, text, strlen(text), 0600), 0);
}

/* Keys, certificates, the initial model and the devices' text. */
static void fleet_setup(const char *base)
{
    char path[600], prefix[600];
    fl_test_srcpath(path, sizeof path, "deploy/make-ca.sh");
    ck_assert_int_eq(
        fl_test_system("sh '%s' --out '%s/tls' --server-name localhost "
                       "--server-ip 127.0.0.1 >/dev/null 2>&1",
                       path, base),
        0);
    fl_artifact_key_t *k = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&k), 0);
    snprintf(prefix, sizeof prefix, "%s/sign", base);
    ck_assert_int_eq(fl_artifact_key_save(k, prefix), 0);
    fl_artifact_key_free(k);
    snprintf(path, sizeof path, "%s/init.bin", base);
    small_model(path, 5);
    for (int i = 0; i < NCLIENTS; i++) {
        snprintf(path, sizeof path, "%s/data%d", base, i);
        write_text(path, i);
    }
}

START_TEST(test_fleet_of_daemons)
{
    char base[256], path[2048], ini[700], slog[700], line[2048], model_dir[900];
    fl_test_tmpdir(base, sizeof base);
    signal(SIGPIPE, SIG_IGN);
    fleet_setup(base);
    int port = free_port();
    snprintf(ini, sizeof ini, "%s/server.ini", base);
    snprintf(slog, sizeof slog, "%s/server.log", base);
    write_server_ini(ini, base, port, "tls");

    /* Devices: identity, enrolment, configuration; started before the
     * server exists. */
    pid_t cl[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        char bin[512], hex[128] = "";
        fl_test_flotilla(bin, sizeof bin);
        snprintf(path, sizeof path,
                 "%s client id --state '%s/dev%d' 2>/dev/null", bin, base, i);
        FILE *p = popen(path, "r");
        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(fgets(hex, sizeof hex, p));
        pclose(p);
        hex[strcspn(hex, "\n")] = '\0';
        ck_assert_uint_eq(strlen(hex), 64);
        snprintf(path, sizeof path, "server enroll --state '%s/server' %s",
                 base, hex);
        ck_assert_int_eq(
            fl_test_wait_exit(fl_test_spawn_flotilla(slog, path), 30), 0);
        char cini[700], text[2048];
        snprintf(cini, sizeof cini, "%s/dev%d.ini", base, i);
        snprintf(
            text, sizeof text,
            "[client]\nserver = 127.0.0.1:%d\nca-file = %s/tls/ca.crt\n"
            "signing-pub = %s/sign.pub\ndata = %s/data%d\nstate = %s/dev%d\n"
            "socket = %s/dev%d.sock\nthreads = 1\nmemory-mb = 512\nnice = 0\n"
            "max-load = 1000\n",
            port, base, base, base, i, base, i, base, i);
        ck_assert_int_eq(fl_file_write_atomic(cini, text, strlen(text), 0600),
                         0);
        snprintf(path, sizeof path, "client --config '%s'", cini);
        snprintf(cini, sizeof cini, "%s/dev%d.log", base, i);
        cl[i] = fl_test_spawn_flotilla(cini, path);
    }
    usleep(500000);
    snprintf(path, sizeof path, "server --config '%s'", ini);
    pid_t srv = fl_test_spawn_flotilla(slog, path);

    snprintf(path, sizeof path, "%s/server", base);
    wait_round(path, 2, 180, slog);

    /* Local inference answers while rounds run. */
    snprintf(line, sizeof line, "%s/dev0.sock", base);
    char answer[4096];
    ck_assert_int_gt(
        ask_socket(
            line, "{\"prompt\": \"the cat\", \"max_tokens\": 8, \"seed\": 1}\n",
            answer, sizeof answer),
        0);
    ck_assert_msg(strstr(answer, "\"text\":") && strstr(answer, "\"tokens\":"),
                  "%s", answer);

    /* SIGKILL the server in the middle of its rounds; restart it. */
    uint64_t before = server_round(path, NULL, 0);
    ck_assert_int_eq(kill(srv, SIGKILL), 0);
    ck_assert_int_eq(fl_test_wait_exit(srv, 20), -1);
    snprintf(line, sizeof line, "server --config '%s'", ini);
    srv = fl_test_spawn_flotilla(slog, line);
    wait_round(path, before + 2, 180, slog);

    /* Memory under the cap, reported. */
    for (int i = 0; i < NCLIENTS; i++) {
        long kb = peak_rss_kb(cl[i]);
        fprintf(stderr, "fleet: device %d peak memory %.1f MiB (cap 512 MiB)\n",
                i, kb / 1024.0);
        ck_assert_int_gt(kb, 0);
        ck_assert_int_lt(kb, 512 * 1024);
    }
    /* Clean stops. */
    ck_assert_int_eq(kill(srv, SIGTERM), 0);
    ck_assert_int_eq(fl_test_wait_exit(srv, 60), 0);
    for (int i = 0; i < NCLIENTS; i++) {
        ck_assert_int_eq(kill(cl[i], SIGTERM), 0);
        ck_assert_int_eq(fl_test_wait_exit(cl[i], 60), 0);
    }
    /* Every device took part after the restart. */
    for (int i = 0; i < NCLIENTS; i++) {
        fl_client_journal_entry_t j[64];
        size_t n, ok_after = 0;
        snprintf(line, sizeof line, "%s/dev%d/journal.json", base, i);
        ck_assert_int_eq(fl_client_journal_read(line, j, 64, &n, NULL), 0);
        for (size_t k = 0; k < n; k++)
            if (j[k].status == 0 && j[k].round > before)
                ok_after++;
        ck_assert_msg(ok_after >= 1, "device %d: no round after the restart",
                      i);
    }
    /* The global model learned the devices' text. */
    uint64_t last = server_round(path, model_dir, sizeof model_dir);
    snprintf(line, sizeof line, "%s/init.bin", base);
    double l0 = fleet_loss(line, base);
    snprintf(line, sizeof line, "%s/model.bin", model_dir);
    double l1 = fleet_loss(line, base);
    fprintf(stderr, "fleet: %llu rounds, validation loss %.3f -> %.3f\n",
            (unsigned long long)last, l0, l1);
    ck_assert_msg(l1 < l0 - 0.2, "loss %.3f -> %.3f", l0, l1);
    /* The published version verifies, and carries the int8 export devices
     * serve inference from. */
    uint8_t pub[32];
    char why[160] = "";
    snprintf(line, sizeof line, "%s/sign.pub", base);
    ck_assert_int_eq(fl_artifact_pub_load(line, pub), 0);
    ck_assert_msg(
        fl_artifact_verify_dir(model_dir, pub, NULL, why, sizeof why) == 0,
        "%s", why);
    fl_q8_model_t *q8 = NULL;
    snprintf(line, sizeof line, "%s/model.q8", model_dir);
    ck_assert_int_eq(fl_q8_model_load(line, &q8), 0);
    fl_q8_model_free(q8);
    /* `flotilla client infer` on a device's store generates with the
     * fleet's tokenizer (byte-level) and refuses one of another
     * vocabulary. */
    char bin[512];
    fl_test_flotilla(bin, sizeof bin);
    ck_assert_int_eq(
        fl_test_system("%s client infer --state '%s/dev0' --signing-pub "
                       "'%s/sign.pub' --prompt 'a' --max-tokens 4 "
                       ">/dev/null 2>&1",
                       bin, base, base),
        0);
    static const char corpus[] = "the cat sat on the mat and the cat ran";
    fl_tokenizer_train_opts_t to;
    fl_tokenizer_train_opts_init(&to);
    to.vocab_size = 270;
    fl_tokenizer_t *bpe = NULL;
    ck_assert_int_eq(fl_tokenizer_train_bpe(&to, (const uint8_t *)corpus,
                                            sizeof corpus - 1, &bpe),
                     0);
    snprintf(line, sizeof line, "%s/bpe.bin", base);
    ck_assert_int_eq(fl_tokenizer_save(bpe, line), 0);
    fl_tokenizer_free(bpe);
    ck_assert_int_ne(
        fl_test_system("%s client infer --state '%s/dev0' --signing-pub "
                       "'%s/sign.pub' --tokenizer '%s' --prompt 'a' "
                       "2>'%s/infer.err' >/dev/null",
                       bin, base, base, line, base),
        0);
    ck_assert_int_eq(
        fl_test_system("grep -q 'vocabulary' '%s/infer.err'", base), 0);
    fl_test_rmtree(base);
}
END_TEST

/* ---- the text stays on the device ---- */
typedef struct {
    fl_client_agent_t *agent;
    fl_net_conn_t *conn;
    fl_buf_t sent;
    int rounds_ok;
} rec_t;

static int rec_send(void *io, const uint8_t *payload, size_t len)
{
    rec_t *r = fl_net_conn_data(io);
    fl_buf_append(&r->sent, payload, len);
    int rc = fl_net_send(io, payload, len);
    return rc < 0 ? rc : 0;
}

static void rec_close(void *io, int reason)
{
    fl_net_conn_close(io, reason);
}
static const fl_client_io_t rec_io = {rec_send, rec_close};

static void rec_open(fl_net_conn_t *c)
{
    rec_t *r = fl_net_conn_data(c);
    r->conn = c;
    fl_client_agent_connected(r->agent, &rec_io, c);
}

static void rec_frame(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    rec_t *r = fl_net_conn_data(c);
    fl_client_agent_on_frame(r->agent, p, n);
}

static void rec_closed(fl_net_conn_t *c, int reason)
{
    rec_t *r = fl_net_conn_data(c);
    (void)reason;
    if (r->conn == c) {
        r->conn = NULL;
        fl_client_agent_disconnected(r->agent);
    }
}

static void rec_event(void *ctx, const fl_client_event_t *ev)
{
    rec_t *r = ctx;
    if (ev->kind == FL_CLIENT_EV_ROUND_DONE && ev->status == 0)
        r->rounds_ok++;
}

START_TEST(test_text_stays_on_device)
{
    char base[256], path[2048], ini[700], slog[700];
    fl_test_tmpdir(base, sizeof base);
    signal(SIGPIPE, SIG_IGN);
    fleet_setup(base);
    int port = free_port();
    snprintf(ini, sizeof ini, "%s/server.ini", base);
    snprintf(slog, sizeof slog, "%s/server.log", base);
    write_server_ini(ini, base, port, "tcp");

    uv_loop_t loop;
    uv_loop_init(&loop);
    fl_tokenizer_t *tok = NULL;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    rec_t rec[NCLIENTS];
    fl_data_t *data[NCLIENTS];
    fl_artifact_key_t *id[NCLIENTS];
    uint8_t signing_pub[32];
    snprintf(path, sizeof path, "%s/sign.pub", base);
    ck_assert_int_eq(fl_artifact_pub_load(path, signing_pub), 0);
    for (int i = 0; i < NCLIENTS; i++) {
        char dir[700], hex[65], state[700];
        uint8_t pk[32];
        snprintf(dir, sizeof dir, "%s/data%d", base, i);
        fl_data_opts_t o;
        fl_data_opts_init(&o);
        o.dir = dir;
        ck_assert_int_eq(fl_data_load(&o, tok, &data[i]), 0);
        ck_assert_int_eq(fl_artifact_key_generate(&id[i]), 0);
        fl_artifact_key_public(id[i], pk);
        fl_hex_encode(hex, pk, 32);
        snprintf(path, sizeof path, "server enroll --state '%s/server' %s",
                 base, hex);
        ck_assert_int_eq(
            fl_test_wait_exit(fl_test_spawn_flotilla(slog, path), 30), 0);
        memset(&rec[i], 0, sizeof rec[i]);
        fl_buf_init(&rec[i].sent, 1u << 30);
        snprintf(state, sizeof state, "%s/dev%d", base, i);
        fl_client_agent_opts_t ao = {.loop = &loop,
                                     .state_dir = state,
                                     .identity = id[i],
                                     .data = data[i],
                                     .seed = (uint64_t)i + 1,
                                     .on_event = rec_event,
                                     .ctx = &rec[i]};
        memcpy(ao.signing_pub, signing_pub, 32);
        ck_assert_int_eq(fl_client_agent_new(&ao, &rec[i].agent), 0);
    }
    snprintf(path, sizeof path, "server --config '%s'", ini);
    pid_t srv = fl_test_spawn_flotilla(slog, path);
    for (int i = 0; i < 100; i++) { /* the listener */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            break;
        usleep(100000);
    }
    for (int i = 0; i < NCLIENTS; i++) {
        fl_net_connect_opts_t co;
        fl_net_connect_opts_init(&co);
        co.host = "127.0.0.1";
        co.port = port;
        co.cb.on_open = rec_open;
        co.cb.on_frame = rec_frame;
        co.cb.on_close = rec_closed;
        co.data = &rec[i];
        ck_assert_int_eq(fl_net_connect(&loop, &co, NULL), 0);
    }
    double t0 = fl_time_mono_s();
    while (fl_time_mono_s() - t0 < 180) {
        uv_run(&loop, UV_RUN_NOWAIT);
        int done = 1;
        for (int i = 0; i < NCLIENTS; i++)
            done &= rec[i].rounds_ok >= 2;
        if (done)
            break;
        usleep(2000);
    }
    for (int i = 0; i < NCLIENTS; i++)
        ck_assert_msg(rec[i].rounds_ok >= 2, "device %d completed %d rounds", i,
                      rec[i].rounds_ok);
    kill(srv, SIGTERM);
    ck_assert_int_eq(fl_test_wait_exit(srv, 60), 0);

    /* No 8-byte run of a device's text is in anything it sent. */
    for (int i = 0; i < NCLIENTS; i++) {
        char p[700];
        uint8_t *text;
        size_t tlen;
        snprintf(p, sizeof p, "%s/data%d/notes.txt", base, i);
        ck_assert_int_eq(fl_file_read_all(p, 1 << 20, &text, &tlen), 0);
        const fl_buf_t *s = &rec[i].sent;
        ck_assert_uint_gt(s->len, 1000);
        fprintf(stderr, "fleet: device %d sent %zu bytes in %d rounds\n", i,
                s->len, rec[i].rounds_ok);
        for (size_t k = 0; k + 8 <= tlen; k++)
            if (memmem(s->data, s->len, text + k, 8)) {
                ck_abort_msg("device %d sent its text at offset %zu", i, k);
            }
        fl_free(text);
    }
    for (int i = 0; i < NCLIENTS; i++) {
        if (rec[i].conn)
            fl_net_conn_close(rec[i].conn, FL_ECLOSED);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < NCLIENTS; i++) {
        fl_client_agent_free(rec[i].agent);
        fl_buf_free(&rec[i].sent);
        fl_data_free(data[i]);
        fl_artifact_key_free(id[i]);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    fl_tokenizer_free(tok);
    fl_test_rmtree(base);
}
END_TEST

Suite *check_fleet_suite(void)
{
    Suite *s = suite_create("fleet");
    TCase *tc = tcase_create("processes");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_fleet_of_daemons);
    tcase_add_test(tc, test_text_stays_on_device);
    suite_add_tcase(s, tc);
    return s;
}
