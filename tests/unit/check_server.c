/* tests/unit/check_server.c — the aggregation server daemon.
 *
 * units:       configuration, enrolment, state files, the metrics text and
 *              responder, hellos, the round orchestrator (in-process peers,
 *              a test engine), the privacy-budget stop;
 * process:     `flotilla server` — /metrics, /healthz, SIGHUP, SIGTERM, a
 *              corrupt state refused, enroll/revoke/list;
 * integration: real TLS and the real engines — rounds with a dropout at
 *              each secure-aggregation phase, without secure aggregation and
 *              over a Harary graph, checked against a recomputation with the
 *              same noise seed and independent signature checks; SIGKILL
 *              mid-round and resume; client/ agents against the server; TLS
 *              versions and hostile connections against the process. */
#include "artifact/artifact.h"
#include "client/client.h"
#include "compress/compress.h"
#include "net/net.h"
#include "secagg/secagg.h"
#include "server/dp.h"
#include "server/internal.h"
#include "tests/unit/testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <regex.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    ck_assert_int_eq(fl_file_write_atomic(path, text, strlen(text), 0600), 0);
}

/* A configuration that passes the checks: plain TCP, no metrics. */
static void test_config(fl_server_config_t *c, const char *dir)
{
    char err[256] = "";
    ck_assert_int_eq(fl_server_config_init(c, err, sizeof err), 0);
    const fl_cfg_table_t *t = fl_server_config_table();
    ck_assert_int_eq(fl_cfg_set(t, c, "state", dir, err, sizeof err), 0);
    ck_assert_int_eq(fl_cfg_set(t, c, "transport", "tcp", err, sizeof err), 0);
    ck_assert_int_eq(fl_cfg_set(t, c, "metrics", "false", err, sizeof err), 0);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* One HTTP exchange on loopback; returns the whole response (owned) or
 * NULL when the connection is refused. */
static char *http_raw(int port, const char *req, size_t reqlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return NULL;
    }
    size_t off = 0;
    while (off < reqlen) {
        ssize_t n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server may answer and close before reading all */
        off += (size_t)n;
    }
    fl_buf_t b;
    fl_buf_init(&b, 1u << 22);
    char tmp[4096];
    for (int i = 0; i < 10000; i++) {
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0)
            break;
        ck_assert_int_eq(fl_buf_append(&b, tmp, (size_t)n), 0);
    }
    close(fd);
    fl_buf_append_u8(&b, 0);
    return (char *)b.data;
}

static char *http_get(int port, const char *path)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n",
             path);
    return http_raw(port, req, strlen(req));
}

/* Checks Prometheus text: every line is a comment (# HELP / # TYPE) or
 * `name{labels} value` with a number value; returns the sample count. */
static int check_prometheus(const char *text)
{
    regex_t sample, comment;
    ck_assert_int_eq(
        regcomp(&sample,
                "^[a-zA-Z_:][a-zA-Z0-9_:]*"
                "(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"[^\"]*\""
                "(,[a-zA-Z_][a-zA-Z0-9_]*=\"[^\"]*\")*\\})?"
                " [-+]?([0-9]+(\\.[0-9]*)?([eE][-+]?[0-9]+)?|NaN|[-+]?Inf)$",
                REG_EXTENDED | REG_NOSUB),
        0);
    ck_assert_int_eq(regcomp(&comment,
                             "^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int samples = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        ck_assert_msg(nl != NULL, "the last line has no newline");
        char line[512];
        size_t n = (size_t)(nl - p);
        ck_assert_uint_lt(n, sizeof line);
        memcpy(line, p, n);
        line[n] = '\0';
        if (line[0] == '#')
            ck_assert_msg(regexec(&comment, line, 0, NULL, 0) == 0,
                          "bad comment line: %s", line);
        else {
            ck_assert_msg(regexec(&sample, line, 0, NULL, 0) == 0,
                          "bad sample line: %s", line);
            samples++;
        }
        p = nl + 1;
    }
    regfree(&sample);
    regfree(&comment);
    return samples;
}

/* The value of one sample line "name value" in Prometheus text, or -1. */
static double metric_value(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* ---- configuration ------------------------------------------------------ */

START_TEST(test_config_defaults_and_flags)
{
    fl_server_config_t c;
    memset(&c, 0, sizeof c);
    char err[512] = "", dir[256], ini[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(ini, sizeof ini, "%s/s.ini", dir);
    write_file(ini, "[server]\ncohort = 20\nmin-clients = 5\n"
                    "over-selection = 1.5\ntransport = tcp\n"
                    "noise-multiplier = 0.7\nserver-optimizer = fedadam\n");
    char *argv[] = {"server",
                    "--config",
                    ini,
                    "--state",
                    dir,
                    "--cohort",
                    "30",
                    "--no-metrics",
                    "--quant-bits",
                    "4",
                    "--no-secagg"};
    int rest = 0, help = 0;
    ck_assert_int_eq(fl_cfg_parse_args(fl_server_config_table(), &c,
                                       (int)FL_ARRAY_LEN(argv), argv, &rest,
                                       &help, err, sizeof err),
                     0);
    ck_assert_int_eq(c.cohort, 30); /* the flag overrides the file */
    ck_assert_int_eq(c.min_clients, 5);
    ck_assert_double_eq(c.noise_multiplier, 0.7);
    ck_assert_int_eq(c.server_optimizer, FL_SERVER_OPT_FEDADAM);
    ck_assert_int_eq(c.metrics, 0);
    ck_assert_int_eq(c.secagg, 0);
    ck_assert_int_eq(c.quant_bits, 4);
    ck_assert_int_eq(fl_server_config_check(&c, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_config_invitees(&c), 45);
    /* r = b + ceil(log2 45) + 1 = 4 + 6 + 1 */
    ck_assert_uint_eq(fl_server_config_ring_bits(&c), 11);
    fl_server_config_free(&c);

    /* Defaults: over-selection 1.3, a majority threshold, 8-bit ring. */
    test_config(&c, dir);
    ck_assert_double_eq(c.over_selection, 1.3);
    ck_assert_int_eq(fl_server_config_check(&c, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_config_invitees(&c), 13);
    ck_assert_uint_eq(fl_server_config_threshold(&c, 13), 7);
    ck_assert_uint_eq(fl_server_config_threshold(&c, 4), 2);
    ck_assert_uint_eq(fl_server_config_ring_bits(&c), 8 + 4 + 1);
    fl_server_config_free(&c);
    fl_test_rmtree(dir);
}
END_TEST

/* Every option of the table works as a flag, whatever its place in the
 * table (getopt_long's own return values ':' '?' 'h' must not collide). */
START_TEST(test_config_every_flag)
{
    const fl_cfg_table_t *t = fl_server_config_table();
    for (size_t i = 0; i < t->nopts; i++) {
        const fl_cfg_opt_t *o = &t->opts[i];
        fl_server_config_t c;
        memset(&c, 0, sizeof c);
        char flag[96], err[512] = "";
        const char *val = o->def ? o->def : "x";
        if (o->type == FL_CFG_ENUM) /* the last choice */
            val = strrchr(o->choices, '|') + 1;
        snprintf(flag, sizeof flag, "--%s", o->name);
        char *argv[] = {"server", flag, (char *)val, NULL};
        int argc = o->type == FL_CFG_BOOL ? 2 : 3, rest = 0, help = 0;
        int rc =
            fl_cfg_parse_args(t, &c, argc, argv, &rest, &help, err, sizeof err);
        ck_assert_msg(rc == 0 && !help && rest == argc, "%s: rc %d help %d %s",
                      flag, rc, help, err);
        fl_server_config_free(&c);
    }
    fl_server_config_t c;
    memset(&c, 0, sizeof c);
    char err[512] = "";
    char *argv[] = {"server", "--over-selection", "1.5", "--graph", "harary"};
    int rest = 0, help = 0;
    ck_assert_int_eq(
        fl_cfg_parse_args(t, &c, 5, argv, &rest, &help, err, sizeof err), 0);
    ck_assert_double_eq(c.over_selection, 1.5);
    ck_assert_int_eq(c.graph, FL_SERVER_GRAPH_HARARY);
    fl_server_config_free(&c);
}
END_TEST

/* Each case: extra "key = value" lines, and a word the error must hold. */
START_TEST(test_config_refusals)
{
    static const struct {
        const char *ini;
        const char *why;
    } cases[] = {
        {"min-clients = 11\n", "larger than cohort"},
        {"support = top-k\nsupport-size = 10\n", "secagg off"},
        {"quant-bits = 0\n", "secagg off"},
        {"ring-bits = 9\n", "cannot hold"},
        {"quant-bits = 16\ncohort = 40000\nover-selection = 1\n", "at most 32"},
        {"transport = tls\n", "tls-cert"},
        {"transport = tls\ntls-cert = a\ntls-key = b\nmtls = true\n", "tls-ca"},
        {"threshold = 13\n", "below the 13"},
        {"threshold = 1\n", "single neighbour"},
        {"cohort = 2\nmin-clients = 2\nover-selection = 1\n", "at least 3"},
        {"support = random-k\n", "support-size"},
        {"secagg-corrupt = 0.3\nsecagg-dropout = 0.7\n", "at most 0.9"},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(cases); i++) {
        fl_server_config_t c;
        char err[512] = "";
        test_config(&c, "/nonexistent");
        ck_assert_int_eq(fl_cfg_load_string(fl_server_config_table(), &c,
                                            cases[i].ini, strlen(cases[i].ini),
                                            "t.ini", err, sizeof err),
                         0);
        ck_assert_int_eq(fl_server_config_check(&c, err, sizeof err),
                         FL_ECONFIG);
        ck_assert_msg(strstr(err, cases[i].why), "case %zu: '%s'", i, err);
        fl_server_config_free(&c);
    }
    /* Single-option refusals name the file, the line and the key. */
    static const char *const bad[] = {
        "over-selection = 0.5\n", "cohort = 0\n",      "delta = 1.5\n",
        "port = 70000\n",         "graph = ring\n",    "no-such-key = 1\n",
        "quant-bits = 17\n",      "[client]\nx = 1\n", "cohort = ten\n",
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++) {
        fl_server_config_t c;
        char err[512] = "";
        test_config(&c, "/nonexistent");
        ck_assert_int_lt(fl_cfg_load_string(fl_server_config_table(), &c,
                                            bad[i], strlen(bad[i]), "t.ini",
                                            err, sizeof err),
                         0);
        ck_assert_msg(strncmp(err, "t.ini:", 6) == 0, "'%s'", err);
        fl_server_config_free(&c);
    }
    /* No state directory at all. */
    fl_server_config_t c;
    char err[512] = "";
    ck_assert_int_eq(fl_server_config_init(&c, err, sizeof err), 0);
    ck_assert_int_eq(fl_server_config_check(&c, err, sizeof err), FL_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err, "state"));
    fl_server_config_free(&c);
}
END_TEST

/* deploy/server.example.ini uses only real keys, and its values pass. */
START_TEST(test_config_example_file)
{
    char path[1024], err[512] = "";
    fl_server_config_t c;
    ck_assert_int_eq(fl_server_config_init(&c, err, sizeof err), 0);
    fl_test_srcpath(path, sizeof path, "deploy/server.example.ini");
    ck_assert_msg(fl_cfg_load_file(fl_server_config_table(), &c, path, err,
                                   sizeof err) == 0,
                  "%s", err);
    ck_assert_msg(fl_server_config_check(&c, err, sizeof err) == 0, "%s", err);
    fl_server_config_free(&c);
    /* And every option of the table is in the example. */
    uint8_t *text = NULL;
    size_t len = 0;
    ck_assert_int_eq(fl_file_read_all(path, 1 << 20, &text, &len), 0);
    const fl_cfg_table_t *t = fl_server_config_table();
    for (size_t i = 0; i < t->nopts; i++) {
        char key[80];
        snprintf(key, sizeof key, "\n%s =", t->opts[i].name);
        char key2[80];
        snprintf(key2, sizeof key2, "\n# %s =", t->opts[i].name);
        ck_assert_msg(strstr((char *)text, key) || strstr((char *)text, key2),
                      "option %s missing from the example", t->opts[i].name);
    }
    fl_free(text);
}
END_TEST

/* ---- enrolment ----------------------------------------------------------- */

START_TEST(test_enrol_file)
{
    char dir[256], path[300], err[512] = "";
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/enrolled", dir);
    uint8_t k[3][32];
    for (int i = 0; i < 3; i++)
        fl_test_fill(k[i], 32, 100 + (uint64_t)i);

    fl_server_enrol_t *e = NULL;
    /* A missing file is an empty list. */
    ck_assert_int_eq(fl_server_enrol_load(path, &e, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_enrol_count(e), 0);
    ck_assert_int_eq(fl_server_enrol_add(e, k[0], "kitchen-pi"), 0);
    ck_assert_int_eq(fl_server_enrol_add(e, k[1], NULL), 0);
    ck_assert_int_eq(fl_server_enrol_add(e, k[1], NULL), FL_EEXIST);
    ck_assert_int_eq(fl_server_enrol_add(e, k[2], "bad name"), FL_EINVAL);
    ck_assert_int_eq(fl_server_enrol_save(e, path), 0);
    fl_server_enrol_free(e);

    ck_assert_int_eq(fl_server_enrol_load(path, &e, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_enrol_count(e), 2);
    ck_assert(fl_server_enrol_contains(e, k[0]));
    ck_assert(fl_server_enrol_contains(e, k[1]));
    ck_assert(!fl_server_enrol_contains(e, k[2]));
    ck_assert_int_eq(fl_server_enrol_remove(e, k[0]), 0);
    ck_assert_int_eq(fl_server_enrol_remove(e, k[0]), FL_ENOENT);
    ck_assert(!fl_server_enrol_contains(e, k[0]));
    fl_server_enrol_free(e);

    /* Edits under the lock, as the CLI does them. */
    ck_assert_int_eq(
        fl_server_enrol_edit(path, k[2], "door", 1, err, sizeof err), 0);
    ck_assert_int_eq(fl_server_enrol_edit(path, k[2], NULL, 1, err, sizeof err),
                     FL_EEXIST);
    ck_assert_int_eq(fl_server_enrol_edit(path, k[0], NULL, 0, err, sizeof err),
                     0);
    ck_assert_int_eq(fl_server_enrol_edit(path, k[0], NULL, 0, err, sizeof err),
                     FL_ENOENT);
    ck_assert_int_eq(fl_server_enrol_load(path, &e, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_enrol_count(e), 2);
    ck_assert(fl_server_enrol_contains(e, k[2]));
    fl_server_enrol_free(e);

    /* Malformed files are refused whole, with the line. */
    static const char *const bad[] = {
        "# ok\nzz\n",
        "0000000000000000000000000000000000000000000000000000000000000000 a "
        "b\n",
        "0000000000000000000000000000000000000000000000000000000000000000 "
        "n\x01\n",
        "0000000000000000000000000000000000000000000000000000000000000000\n"
        "0000000000000000000000000000000000000000000000000000000000000000\n",
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++) {
        write_file(path, bad[i]);
        e = (fl_server_enrol_t *)1;
        ck_assert_int_eq(fl_server_enrol_load(path, &e, err, sizeof err),
                         FL_EFORMAT);
        ck_assert_ptr_null(e);
        ck_assert_msg(strstr(err, "enrolled:"), "%s", err);
    }
    fl_test_rmtree(dir);
}
END_TEST

static void sign_hello(Flotilla__ClientHello *h, uint8_t sig[64],
                       const uint8_t pk[32], const uint8_t sk[64],
                       const uint8_t nonce[32])
{
    uint8_t msg[FL_SERVER_HELLO_MSG_LEN];
    fl_server_hello_message(msg, nonce, pk, FL_PROTOCOL_VERSION);
    crypto_sign_detached(sig, NULL, msg, sizeof msg, sk);
    h->protocol_version = FL_PROTOCOL_VERSION;
    h->identity_key.data = (uint8_t *)pk;
    h->identity_key.len = 32;
    h->signature.data = sig;
    h->signature.len = 64;
}

START_TEST(test_hello_check)
{
    ck_assert_int_ge(sodium_init(), 0);
    uint8_t pk[32], sk[64], pk2[32], sk2[64], nonce[32], other[32], sig[64];
    crypto_sign_keypair(pk, sk);
    crypto_sign_keypair(pk2, sk2);
    randombytes_buf(nonce, sizeof nonce);
    randombytes_buf(other, sizeof other);
    fl_server_enrol_t *e = NULL;
    ck_assert_int_eq(fl_server_enrol_new(&e), 0);
    ck_assert_int_eq(fl_server_enrol_add(e, pk, "a"), 0);

    Flotilla__ClientHello h = FLOTILLA__CLIENT_HELLO__INIT;
    sign_hello(&h, sig, pk, sk, nonce);
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h), 0);
    /* Replayed against another connection's nonce. */
    ck_assert_int_eq(fl_server_hello_check(e, other, &h),
                     FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE);
    /* A flipped signature bit. */
    sig[5] ^= 1;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE);
    /* Properly signed by a key that is not enrolled. */
    sign_hello(&h, sig, pk2, sk2, nonce);
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_NOT_ENROLLED);
    /* An enrolled key claimed, signed by another key. */
    sign_hello(&h, sig, pk2, sk2, nonce);
    h.identity_key.data = pk;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE);
    /* Short key, other version. */
    sign_hello(&h, sig, pk, sk, nonce);
    h.identity_key.len = 31;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE);
    sign_hello(&h, sig, pk, sk, nonce);
    h.protocol_version = 2;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_VERSION);
    /* Fields over the protocol's limits. */
    sign_hello(&h, sig, pk, sk, nonce);
    char *caps[33];
    for (int i = 0; i < 33; i++)
        caps[i] = "aes";
    h.capabilities = caps;
    h.n_capabilities = 32;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h), 0);
    h.n_capabilities = 33;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_PROTOCOL);
    caps[0] = "a-capability-name-longer-than-32-bytes";
    h.n_capabilities = 1;
    ck_assert_int_eq(fl_server_hello_check(e, nonce, &h),
                     FLOTILLA__ABORT_REASON__ABORT_PROTOCOL);
    fl_server_enrol_free(e);
}
END_TEST

/* ---- state ----------------------------------------------------------------*/

static void sample_state(fl_server_state_t *st)
{
    fl_server_state_init(st);
    st->round = 41;
    st->round_started = 42;
    st->rounds_completed = 39;
    st->rounds_aborted = 2;
    st->model_version = 40;
    snprintf(st->model_dir, sizeof st->model_dir, "models/v40");
    fl_test_fill(st->model_hash, 32, 7);
    st->epsilon = 1.25;
    st->accountant_len = 300;
    st->accountant = fl_malloc(300);
    fl_test_fill(st->accountant, 300, 8);
    st->optimizer_len = 4096;
    st->optimizer = fl_malloc(4096);
    fl_test_fill(st->optimizer, 4096, 9);
}

START_TEST(test_state_roundtrip)
{
    char dir[256], err[512] = "";
    fl_test_tmpdir(dir, sizeof dir);
    fl_server_state_t a, b;
    sample_state(&a);
    fl_server_state_init(&b);
    ck_assert_int_eq(fl_server_state_load(dir, &b, err, sizeof err), FL_ENOENT);
    ck_assert_int_eq(fl_server_state_save(dir, &a), 0);
    ck_assert_int_eq(fl_server_state_load(dir, &b, err, sizeof err), 0);
    ck_assert_uint_eq(b.round, 41);
    ck_assert_uint_eq(b.round_started, 42);
    ck_assert_uint_eq(b.rounds_completed, 39);
    ck_assert_uint_eq(b.rounds_aborted, 2);
    ck_assert_uint_eq(b.model_version, 40);
    ck_assert_str_eq(b.model_dir, "models/v40");
    ck_assert_mem_eq(b.model_hash, a.model_hash, 32);
    ck_assert_double_eq(b.epsilon, 1.25);
    ck_assert_uint_eq(b.accountant_len, 300);
    ck_assert_mem_eq(b.accountant, a.accountant, 300);
    ck_assert_uint_eq(b.optimizer_len, 4096);
    ck_assert_mem_eq(b.optimizer, a.optimizer, 4096);
    /* The next save replaces the optimizer sidecar of the last one. */
    a.round = 42;
    ck_assert_int_eq(fl_server_state_save(dir, &a), 0);
    ck_assert_int_eq(fl_test_system("test ! -e %s/optim-41.bin && test -e "
                                    "%s/optim-42.bin",
                                    dir, dir),
                     0);
    fl_server_state_clear(&a);
    fl_server_state_clear(&b);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_enrol_edit_keeps_dir_owner)
{
    /* Run as root on a state directory owned by the service's user, an
     * edit leaves the list readable by that user. */
    if (geteuid() != 0)
        return;
    char dir[256], path[300], err[256] = "";
    fl_test_tmpdir(dir, sizeof dir);
    ck_assert_int_eq(chown(dir, 65534, 65534), 0);
    snprintf(path, sizeof path, "%s/enrolled", dir);
    uint8_t key[32];
    memset(key, 7, sizeof key);
    ck_assert_msg(fl_server_enrol_edit(path, key, "dev", 1, err, sizeof err) ==
                      0,
                  "%s", err);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_uid, 65534);
    ck_assert_uint_eq(st.st_gid, 65534);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_state_without_dp)
{
    /* Without noise the epsilon spent is infinite: saved and read back. */
    fl_server_state_t st, back;
    fl_server_state_init(&st);
    fl_server_state_init(&back);
    st.round = 3;
    st.model_version = 4;
    st.epsilon = INFINITY;
    uint8_t *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(fl_server_state_encode(&st, &buf, &len), 0);
    ck_assert_int_eq(fl_server_state_decode(buf, len, &back), 0);
    ck_assert(isinf(back.epsilon));
    ck_assert_uint_eq(back.round, 3);
    fl_free(buf);
    fl_server_state_clear(&back);
    fl_server_state_clear(&st);
}
END_TEST

START_TEST(test_state_corruption)
{
    fl_server_state_t a, b;
    uint8_t *buf = NULL;
    size_t len = 0;
    sample_state(&a);
    fl_server_state_init(&b);
    ck_assert_int_eq(fl_server_state_encode(&a, &buf, &len), 0);
    ck_assert_int_eq(fl_server_state_decode(buf, len, &b), 0);
    ck_assert_uint_eq(b.round, 41);
    fl_server_state_clear(&b);
    /* Every single-byte change and every truncation is detected. */
    for (size_t i = 0; i < len; i++) {
        buf[i] ^= 0x20;
        int rc = fl_server_state_decode(buf, len, &b);
        ck_assert_msg(rc == FL_EMAGIC || rc == FL_EHASH || rc == FL_EVERSION ||
                          rc == FL_ETRUNC || rc == FL_EFORMAT,
                      "flip at %zu gave %d", i, rc);
        buf[i] ^= 0x20;
    }
    for (size_t n = 0; n < len; n++) {
        int rc = fl_server_state_decode(buf, n, &b);
        ck_assert_msg(rc == FL_EMAGIC || rc == FL_ETRUNC, "cut at %zu: %d", n,
                      rc);
    }
    ck_assert_uint_eq(b.round, 0); /* untouched by failures */
    fl_free(buf);

    /* On disk: a half-written state makes the server refuse to start. */
    char dir[256], path[300], err[1024] = "";
    fl_test_tmpdir(dir, sizeof dir);
    ck_assert_int_eq(fl_server_state_save(dir, &a), 0);
    snprintf(path, sizeof path, "%s/state", dir);
    ck_assert_int_eq(truncate(path, 60), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    fl_server_config_t c;
    test_config(&c, dir);
    fl_server_t *s = NULL;
    ck_assert_int_eq(fl_server_new(&loop, &c, &s, err, sizeof err), FL_ETRUNC);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, "truncated") && strstr(err, "refusing"), "%s",
                  err);
    /* A corrupt optimizer sidecar too. */
    ck_assert_int_eq(fl_server_state_save(dir, &a), 0);
    ck_assert_int_eq(fl_test_system("printf x | dd of=%s/optim-41.bin bs=1 "
                                    "seek=100 conv=notrunc 2>/dev/null",
                                    dir),
                     0);
    ck_assert_int_eq(fl_server_new(&loop, &c, &s, err, sizeof err), FL_EHASH);
    ck_assert_msg(strstr(err, "optim-41.bin"), "%s", err);
    fl_server_config_free(&c);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    fl_server_state_clear(&a);
    fl_test_rmtree(dir);
}
END_TEST

/* ---- metrics ----------------------------------------------------------- */

START_TEST(test_metrics_render)
{
    fl_server_metrics_t m;
    memset(&m, 0, sizeof m);
    m.connected = 12;
    m.rounds_completed = 3;
    m.rounds_aborted = 1;
    m.bytes_in = 123456789012ull;
    m.dropouts[FL_SERVER_PHASE_UNMASK] = 2;
    m.left_out[FL_SERVER_PHASE_SHARE] = 3;
    m.announcements = 41;
    m.phase_seconds[FL_SERVER_PHASE_SHARE] = 0.25;
    m.phase_count[FL_SERVER_PHASE_SHARE] = 1;
    m.epsilon = 1.5;
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(fl_server_metrics_render(&m, &b), 0);
    fl_buf_append_u8(&b, 0);
    const char *t = (const char *)b.data;
    ck_assert_int_gt(check_prometheus(t), 20);
    ck_assert_double_eq(metric_value(t, "flotilla_connected_clients"), 12);
    ck_assert_double_eq(metric_value(t, "flotilla_rounds_completed_total"), 3);
    ck_assert_double_eq(metric_value(t, "flotilla_bytes_received_total"),
                        123456789012.0);
    ck_assert_double_eq(metric_value(t, "flotilla_epsilon"), 1.5);
    ck_assert_double_eq(metric_value(t, "flotilla_model_announcements_total"),
                        41);
    ck_assert_ptr_nonnull(
        strstr(t, "flotilla_dropouts_total{phase=\"unmask\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(
        t, "flotilla_phase_duration_seconds_count{phase=\"share\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "flotilla_secagg_left_out_total{phase=\"share\"} 3\n"));
    fl_buf_free(&b);
    /* No noise: an infinite epsilon, spelled as Prometheus wants it. */
    m.epsilon = INFINITY;
    fl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(fl_server_metrics_render(&m, &b), 0);
    fl_buf_append_u8(&b, 0);
    ck_assert_int_gt(check_prometheus((const char *)b.data), 20);
    ck_assert_ptr_nonnull(
        strstr((const char *)b.data, "flotilla_epsilon +Inf\n"));
    fl_buf_free(&b);
}
END_TEST

static int fake_metrics(void *ctx, fl_buf_t *out)
{
    return fl_buf_printf(out, "x 1\n");
}

START_TEST(test_http_respond)
{
    fl_server_http_handler_t h = {fake_metrics, NULL, NULL};
    static const struct {
        const char *req;
        const char *status;
    } cases[] = {
        {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 "},
        {"GET /metrics?x=1 HTTP/1.0\r\n\r\n", "HTTP/1.1 200 "},
        {"GET /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 200 "},
        {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "},
        {"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "},
        {"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "},
        {"GET /metrics\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /metrics HTTP/2\r\n\r\n", "HTTP/1.1 400 "},
        {"get /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET  /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"\r\n\r\n", "HTTP/1.1 400 "},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(cases); i++) {
        fl_buf_t b;
        fl_buf_init(&b, 1 << 16);
        ck_assert_int_eq(fl_server_http_respond(&h,
                                                (const uint8_t *)cases[i].req,
                                                strlen(cases[i].req), &b),
                         0);
        ck_assert_msg(b.len > 13 && memcmp(b.data, cases[i].status, 13) == 0,
                      "case %zu: %.*s", i, (int)FL_MIN(b.len, 40),
                      (const char *)b.data);
        fl_buf_free(&b);
    }
}
END_TEST

/* ---- in-process peers ---------------------------------------------------- */

#define MAX_MSGS 64

typedef struct {
    fl_server_peer_t *p;
    fl_envelope_t *msgs[MAX_MSGS];
    int nmsgs, next;
    int close_asked;
    int closed;
    uint8_t pk[32], sk[64];
} fake_t;

static int fake_send(void *ctx, const uint8_t *payload, size_t len)
{
    fake_t *f = ctx;
    ck_assert_int_lt(f->nmsgs, MAX_MSGS);
    fl_envelope_t *e = NULL;
    ck_assert_int_eq(fl_proto_decode(payload, len, 1u << 26, &e), 0);
    f->msgs[f->nmsgs++] = e;
    return 0;
}

static void fake_close(void *ctx)
{
    fake_t *f = ctx;
    f->close_asked = 1;
}

static const fl_server_peer_ops_t fake_ops = {.send = fake_send,
                                              .close = fake_close};

/* The next message the server sent to f, or NULL. */
static fl_envelope_t *fake_next(fake_t *f)
{
    return f->next < f->nmsgs ? f->msgs[f->next++] : NULL;
}

static fl_envelope_t *fake_expect(fake_t *f, int body_case)
{
    fl_envelope_t *e = fake_next(f);
    ck_assert_msg(e != NULL, "no message, expected case %d", body_case);
    ck_assert_msg((int)e->body_case == body_case, "got %s, expected %d",
                  fl_proto_body_name(e), body_case);
    return e;
}

static void fake_free(fake_t *f)
{
    for (int i = 0; i < f->nmsgs; i++)
        fl_proto_free(f->msgs[i]);
    memset(f->msgs, 0, sizeof f->msgs);
    f->nmsgs = f->next = 0;
}

static void fake_deliver(fake_t *f, fl_envelope_t *e)
{
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    uint8_t *buf = fl_malloc(n);
    flotilla__envelope__pack(e, buf);
    fl_server_peer_frame(f->p, buf, n);
    fl_free(buf);
}

/* The transport finished closing the connections the server asked to. */
static void fake_reap(fake_t *fs, int n)
{
    for (int i = 0; i < n; i++)
        if (fs[i].close_asked && !fs[i].closed) {
            fs[i].closed = 1;
            fl_server_peer_closed(fs[i].p);
        }
}

/* Opens f and answers the server hello with a hello signed by f's key. */
static void fake_connect(fl_server_t *s, fake_t *f)
{
    memset(f->msgs, 0, sizeof f->msgs);
    ck_assert_int_eq(fl_server_peer_open(s, &fake_ops, f, &f->p), 0);
    fl_envelope_t *sh = fake_expect(f, FLOTILLA__ENVELOPE__BODY_SERVER_HELLO);
    ck_assert_uint_eq(sh->server_hello->nonce.len, 32);
    Flotilla__ClientHello h = FLOTILLA__CLIENT_HELLO__INIT;
    uint8_t sig[64];
    sign_hello(&h, sig, f->pk, f->sk, sh->server_hello->nonce.data);
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO;
    e.client_hello = &h;
    fake_deliver(f, &e);
}

typedef struct {
    char dir[256];
    uv_loop_t loop;
    fl_server_config_t cfg;
    fl_server_t *s;
} fixture_t;

static void fixture_new(fixture_t *fx, int nkeys, fake_t *fs, int enrolled)
{
    char err[512] = "", path[400];
    ck_assert_int_ge(sodium_init(), 0);
    fl_test_tmpdir(fx->dir, sizeof fx->dir);
    snprintf(path, sizeof path, "%s/enrolled", fx->dir);
    for (int i = 0; i < nkeys; i++) {
        memset(&fs[i], 0, sizeof fs[i]);
        crypto_sign_keypair(fs[i].pk, fs[i].sk);
        if (i < enrolled)
            ck_assert_int_eq(
                fl_server_enrol_edit(path, fs[i].pk, NULL, 1, err, sizeof err),
                0);
    }
    uv_loop_init(&fx->loop);
    test_config(&fx->cfg, fx->dir);
}

static void fixture_start(fixture_t *fx, const fl_server_engine_t *engine,
                          void *ctx)
{
    char err[512] = "";
    ck_assert_msg(fl_server_new(&fx->loop, &fx->cfg, &fx->s, err, sizeof err) ==
                      0,
                  "%s", err);
    if (engine)
        fl_server_set_engine(fx->s, engine, ctx);
    ck_assert_int_eq(fl_server_start(fx->s, err, sizeof err), 0);
}

static void fixture_free(fixture_t *fx, fake_t *fs, int n)
{
    fl_server_stop(fx->s);
    fake_reap(fs, n);
    for (int i = 0; i < n; i++)
        fake_free(&fs[i]);
    for (int i = 0; i < 1000 && uv_run(&fx->loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
    fl_server_free(fx->s);
    ck_assert_int_eq(uv_loop_close(&fx->loop), 0);
    fl_server_config_free(&fx->cfg);
    fl_test_rmtree(fx->dir);
}

START_TEST(test_hello_over_peers)
{
    fixture_t fx;
    fake_t fs[4];
    fixture_new(&fx, 4, fs, 2); /* keys 0 and 1 enrolled */
    fixture_start(&fx, NULL, NULL);

    /* Enrolled: accepted. */
    fake_connect(fx.s, &fs[0]);
    fl_envelope_t *e =
        fake_expect(&fs[0], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    ck_assert(e->hello_result->accepted);
    ck_assert(!fs[0].close_asked);

    /* Not enrolled: refused with the reason, then closed. */
    fake_connect(fx.s, &fs[2]);
    e = fake_expect(&fs[2], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    ck_assert(!e->hello_result->accepted);
    ck_assert_uint_eq(e->hello_result->reason,
                      FLOTILLA__ABORT_REASON__ABORT_NOT_ENROLLED);
    ck_assert(fs[2].close_asked);
    ck_assert_uint_eq(fl_server_metrics(fx.s)->hellos_refused, 1);

    /* A message before the hello: Error, closed. Garbage: closed. */
    ck_assert_int_eq(fl_server_peer_open(fx.s, &fake_ops, &fs[3], &fs[3].p), 0);
    Flotilla__Envelope hb = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Heartbeat h = FLOTILLA__HEARTBEAT__INIT;
    hb.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
    hb.heartbeat = &h;
    fake_deliver(&fs[3], &hb);
    fake_expect(&fs[3], FLOTILLA__ENVELOPE__BODY_SERVER_HELLO);
    fake_expect(&fs[3], FLOTILLA__ENVELOPE__BODY_ERROR);
    ck_assert(fs[3].close_asked);
    fake_reap(fs, 4);

    /* The enrolled device still works. */
    fake_deliver(&fs[0], &hb);
    fake_expect(&fs[0], FLOTILLA__ENVELOPE__BODY_HEARTBEAT);
    uint8_t junk[7] = {1, 2, 3, 4, 5, 6, 7};
    fake_connect(fx.s, &fs[1]);
    fake_expect(&fs[1], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    ck_assert_int_lt(fl_server_peer_frame(fs[1].p, junk, sizeof junk), 0);
    ck_assert(fs[1].close_asked);
    ck_assert(!fs[0].close_asked);
    fake_reap(fs, 4);
    ck_assert_uint_eq(fl_server_metrics(fx.s)->connected, 1);

    /* Revoking key 0 and reloading (what SIGHUP does) closes it; enrolling
     * key 2 lets it in. */
    char path[400], err[256];
    snprintf(path, sizeof path, "%s/enrolled", fx.dir);
    ck_assert_int_eq(
        fl_server_enrol_edit(path, fs[0].pk, NULL, 0, err, sizeof err), 0);
    ck_assert_int_eq(
        fl_server_enrol_edit(path, fs[2].pk, NULL, 1, err, sizeof err), 0);
    ck_assert_int_eq(fl_server_reload_enrolment(fx.s), 0);
    ck_assert(fs[0].close_asked);
    fake_reap(fs, 4);
    fs[2].close_asked = fs[2].closed = 0;
    fake_free(&fs[2]);
    fake_connect(fx.s, &fs[2]);
    e = fake_expect(&fs[2], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    ck_assert(e->hello_result->accepted);
    /* A broken list on reload keeps the old one. */
    write_file(path, "not a key\n");
    ck_assert_int_eq(fl_server_reload_enrolment(fx.s), FL_EFORMAT);
    ck_assert_uint_eq(fl_server_metrics(fx.s)->enrolled, 2);
    ck_assert(!fs[2].close_asked);
    fixture_free(&fx, fs, 4);
}
END_TEST

/* ---- the round orchestrator, with a test engine --------------------------
 * The engine sums plain little-endian uint32 inputs modulo 2^16 and, in
 * finish (on the thread pool), adds the sum to the parameters, bumps the
 * model version and writes the state as the real pipeline does. */

#define T_VALUES 8

typedef struct {
    uint32_t sum[T_VALUES];
    int inputs;
    int begun, ended, finished, budget_calls;
    uint32_t n;
    Flotilla__RoundConfig seen; /* scalar fields of the last config */
    uint32_t threshold;
} test_engine_t;

static test_engine_t te;

static int te_begin(void *ctx, Flotilla__RoundConfig *rc, uint32_t n,
                    const uint8_t (*keys)[32], void **round_ctx,
                    uint64_t *num_values)
{
    memset(te.sum, 0, sizeof te.sum);
    te.inputs = 0;
    te.begun++;
    te.n = n;
    te.threshold = rc->secagg->threshold;
    *round_ctx = &te;
    *num_values = T_VALUES;
    return 0;
}

static int te_handle(void *round_ctx, uint32_t sender, const fl_envelope_t *e)
{
    if (e->body_case != FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE)
        return FL_EPROTO;
    const Flotilla__MaskedInputResponse *m = e->masked_input_response;
    if (m->packed.len != 4 * T_VALUES)
        return FL_EFORMAT;
    for (int i = 0; i < T_VALUES; i++) {
        uint32_t v;
        memcpy(&v, m->packed.data + 4 * i, 4);
        te.sum[i] = (te.sum[i] + v) & 0xffff;
    }
    te.inputs++;
    return 0;
}

static int te_finish(void *round_ctx, fl_server_finish_t *f)
{
    f->new_params = fl_malloc(f->num_params * sizeof(float));
    if (!f->new_params)
        return FL_ENOMEM;
    for (uint64_t i = 0; i < f->num_params; i++)
        f->new_params[i] = f->params[i] + (float)te.sum[i];
    f->state.round = f->round;
    f->state.rounds_completed++;
    f->state.model_version++;
    f->state.epsilon += 0.5;
    te.finished++;
    return fl_server_state_save(f->cfg->state_dir, &f->state);
}

static void te_end(void *round_ctx)
{
    te.ended++;
}

static const fl_server_engine_t test_engine = {
    .begin = te_begin, .handle = te_handle, .finish = te_finish, .end = te_end};

/* Runs the loop until cond holds (bounded: fails instead of hanging). */
#define RUN_UNTIL(fx, cond)                                                    \
    do {                                                                       \
        double t0_ = fl_time_mono_s();                                         \
        while (!(cond)) {                                                      \
            ck_assert_msg(fl_time_mono_s() - t0_ < 20, "timed out: " #cond);   \
            uv_run(&(fx)->loop, UV_RUN_NOWAIT);                                \
            usleep(200);                                                       \
        }                                                                      \
    } while (0)

static fl_envelope_t *find_msg(fake_t *f, int body_case)
{
    for (fl_envelope_t *e; (e = fake_next(f));)
        if ((int)e->body_case == body_case)
            return e;
    return NULL;
}

static void send_accept(fake_t *f, uint64_t round, int yes)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__RoundAccept a = FLOTILLA__ROUND_ACCEPT__INIT;
    a.round = round;
    a.accept = yes;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
    e.round_accept = &a;
    fake_deliver(f, &e);
}

static void send_input(fake_t *f, uint64_t round, uint32_t id, uint32_t base)
{
    uint8_t packed[4 * T_VALUES];
    for (uint32_t i = 0; i < T_VALUES; i++) {
        uint32_t v = base + i;
        memcpy(packed + 4 * i, &v, 4);
    }
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__MaskedInputResponse m = FLOTILLA__MASKED_INPUT_RESPONSE__INIT;
    m.round = round;
    m.client_id = id;
    m.num_values = T_VALUES;
    m.packed.data = packed;
    m.packed.len = sizeof packed;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
    e.masked_input_response = &m;
    fake_deliver(f, &e);
}

static void send_report(fake_t *f, uint64_t round, float before, float after,
                        uint32_t examples)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__TrainingReport t = FLOTILLA__TRAINING_REPORT__INIT;
    t.round = round;
    t.loss_before = before;
    t.loss_after = after;
    t.num_examples = examples;
    e.body_case = FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT;
    e.training_report = &t;
    fake_deliver(f, &e);
}

static int te_budget_spent(void *ctx, const fl_server_config_t *cfg,
                           const fl_server_state_t *st, uint64_t population)
{
    te.budget_calls++;
    return FL_EBUDGET;
}

/* A spent privacy budget stops training: no round starts, models are still
 * served, /metrics says so. */
START_TEST(test_round_budget_spent)
{
    fixture_t fx;
    fake_t fs[3];
    char err[256] = "";
    const fl_cfg_table_t *t = fl_server_config_table();
    memset(&te, 0, sizeof te);
    fixture_new(&fx, 3, fs, 3);
    fl_cfg_set(t, &fx.cfg, "secagg", "false", err, sizeof err);
    fl_cfg_set(t, &fx.cfg, "cohort", "3", err, sizeof err);
    fl_cfg_set(t, &fx.cfg, "round-interval-ms", "0", err, sizeof err);
    fl_cfg_set(t, &fx.cfg, "epsilon-budget", "1.0", err, sizeof err);
    static fl_server_engine_t eng;
    eng = test_engine;
    eng.budget = te_budget_spent;
    fixture_start(&fx, &eng, NULL);
    fl_server_set_params(fx.s, fl_calloc(T_VALUES, sizeof(float)), T_VALUES);
    for (int i = 0; i < 3; i++) {
        fake_connect(fx.s, &fs[i]);
        fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    }
    RUN_UNTIL(&fx, fl_server_metrics(fx.s)->budget_spent);
    ck_assert_int_eq(te.begun, 0);
    ck_assert_int_eq(te.budget_calls, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_null(
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_INVITE));
    fixture_free(&fx, fs, 3);
}
END_TEST

/* Sets options of fx's configuration, each of which must be accepted. */
static void fx_set(fixture_t *fx, const char *const (*kv)[2], size_t n)
{
    char err[256] = "";
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fl_cfg_set(fl_server_config_table(), &fx->cfg, kv[i][0],
                                 kv[i][1], err, sizeof err) == 0,
                      "%s = %s: %s", kv[i][0], kv[i][1], err);
}

/* A round without secure aggregation that waits for every answer, the
 * next one starting at once. */
static const char *const plain_rounds[][2] = {
    {"secagg", "false"},         {"over-selection", "1.0"},
    {"min-clients", "3"},        {"round-interval-ms", "0"},
    {"accept-ms", "60000"},      {"train-ms", "1"},
    {"masked-input-ms", "60000"}};

START_TEST(test_round_orchestrator)
{
    fixture_t fx;
    fake_t fs[5];
    char err[256] = "";
    const fl_cfg_table_t *t = fl_server_config_table();
    memset(&te, 0, sizeof te);
    fixture_new(&fx, 5, fs, 5);
    fx_set(&fx, plain_rounds, FL_ARRAY_LEN(plain_rounds));
    fl_cfg_set(t, &fx.cfg, "cohort", "4", err, sizeof err);
    fl_cfg_set(t, &fx.cfg, "noise-multiplier", "0.9", err, sizeof err);
    fixture_start(&fx, &test_engine, NULL);
    float *params = fl_calloc(T_VALUES, sizeof(float));
    fl_server_set_params(fx.s, params, T_VALUES);
    for (int i = 0; i < 4; i++) {
        fake_connect(fx.s, &fs[i]);
        fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    }

    /* Round 1: four invited with every parameter. */
    RUN_UNTIL(&fx, te.begun == 1);
    Flotilla__RoundConfig *rc[4];
    uint32_t seen_ids = 0;
    for (int i = 0; i < 4; i++) {
        fl_envelope_t *e =
            fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_INVITE);
        rc[i] = e->round_invite->config;
        ck_assert_uint_eq(rc[i]->round, 1);
        ck_assert_uint_eq(rc[i]->round_nonce.len, 32);
        ck_assert_uint_eq(rc[i]->num_params, T_VALUES);
        ck_assert_uint_eq(rc[i]->expected_cohort, 4);
        ck_assert_uint_eq(rc[i]->training->local_steps, 20);
        ck_assert_uint_eq(rc[i]->codec->quant_bits, 8);
        ck_assert_float_eq(rc[i]->codec->clip_norm, 1.0f);
        ck_assert(!rc[i]->secagg->enabled);
        ck_assert_uint_eq(rc[i]->secagg->n_participants, 4);
        ck_assert_uint_eq(rc[i]->deadlines->masked_input_ms, 60000);
        ck_assert_mem_eq(rc[i]->round_nonce.data, rc[0]->round_nonce.data, 32);
        seen_ids |= 1u << rc[i]->client_id;
    }
    ck_assert_uint_eq(seen_ids, 0x1e); /* ids 1..4 */
    for (int i = 0; i < 4; i++)
        send_accept(&fs[i], 1, 1);
    /* One device drops after accepting; a second input from the same
     * device is refused; the three others' inputs are summed. */
    fs[3].close_asked = 1;
    fake_reap(fs, 4);
    send_report(&fs[0], 1, 2.0f, 1.5f, 10);
    send_report(&fs[0], 1, 9.0f, 9.0f, 99); /* a second one is not counted */
    send_report(&fs[1], 1, 3.0f, 2.5f, 20);
    send_input(&fs[0], 1, rc[0]->client_id, 100);
    send_input(&fs[1], 1, rc[1]->client_id, 200);
    /* Speaking for another client closes that device only... not here:
     * a message for another round is ignored and closes nothing. */
    send_input(&fs[2], 7, rc[2]->client_id, 999);
    ck_assert(!fs[2].close_asked);
    ck_assert_int_eq(te.inputs, 2);
    send_input(&fs[2], 1, rc[2]->client_id, 300);
    RUN_UNTIL(&fx, te.ended == 1);
    ck_assert_int_eq(te.finished, 1);
    for (int i = 0; i < 3; i++) {
        fl_envelope_t *e =
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_RESULT);
        ck_assert_ptr_nonnull(e);
        ck_assert(e->round_result->success);
        ck_assert_uint_eq(e->round_result->round, 1);
        ck_assert_uint_eq(e->round_result->survivors, 3);
        ck_assert_uint_eq(e->round_result->new_model_version, 1);
        ck_assert_double_eq(e->round_result->epsilon, 0.5);
    }
    for (uint32_t i = 0; i < T_VALUES; i++) /* the exact survivors' sum */
        ck_assert_float_eq(fx.s->params[i], (float)(600 + 3 * i));
    const fl_server_metrics_t *m = fl_server_metrics(fx.s);
    ck_assert_uint_eq(m->rounds_completed, 1);
    ck_assert_uint_eq(m->dropouts[FL_SERVER_PHASE_MASKED_INPUT], 1);
    ck_assert_uint_eq(m->phase_count[FL_SERVER_PHASE_INVITE], 1);
    ck_assert_uint_eq(m->training_reports, 2);
    ck_assert_uint_eq(m->training_examples, 30);
    ck_assert_double_eq(m->loss_before, 2.5);
    ck_assert_double_eq(m->loss_after, 2.0);
    fl_server_state_t st;
    fl_server_state_init(&st);
    ck_assert_int_eq(fl_server_state_load(fx.dir, &st, err, sizeof err), 0);
    ck_assert_uint_eq(st.round, 1);
    ck_assert_uint_eq(st.model_version, 1);
    fl_server_state_clear(&st);

    /* Round 2 starts at once with the three left; only two accept: too
     * few, aborted, and round 3 starts anyway. */
    RUN_UNTIL(&fx, te.begun == 2);
    uint32_t id2[3];
    for (int i = 0; i < 3; i++) {
        fl_envelope_t *e =
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_INVITE);
        ck_assert_ptr_nonnull(e);
        ck_assert_uint_eq(e->round_invite->config->round, 2);
        id2[i] = e->round_invite->config->client_id;
    }
    send_accept(&fs[0], 2, 1);
    send_accept(&fs[1], 2, 1);
    send_accept(&fs[2], 2, 0);
    RUN_UNTIL(&fx, te.ended == 2);
    for (int i = 0; i < 2; i++) {
        fl_envelope_t *e = find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ABORT);
        ck_assert_ptr_nonnull(e);
        ck_assert_uint_eq(e->abort->reason,
                          FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS);
        e = find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_RESULT);
        ck_assert_ptr_nonnull(e);
        ck_assert(!e->round_result->success);
    }
    ck_assert_uint_eq(m->rounds_aborted, 1);
    ck_assert_uint_eq(fl_server_state(fx.s)->round, 2);
    RUN_UNTIL(&fx, te.begun == 3);
    /* A late message of round 2 is ignored, not fatal. */
    send_input(&fs[0], 2, id2[0], 1);
    ck_assert(!fs[0].close_asked);
    ck_assert_int_eq(te.inputs, 0);

    /* SIGTERM-like stop in the middle of round 3 aborts it cleanly. */
    fl_server_stop(fx.s);
    for (int i = 0; i < 3; i++) {
        fl_envelope_t *e = find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ABORT);
        ck_assert_ptr_nonnull(e);
        ck_assert_uint_eq(e->abort->reason,
                          FLOTILLA__ABORT_REASON__ABORT_SHUTDOWN);
        ck_assert(fs[i].close_asked);
    }
    ck_assert_uint_eq(fl_server_state(fx.s)->round, 3);
    ck_assert_uint_eq(fl_server_state(fx.s)->rounds_aborted, 2);
    fixture_free(&fx, fs, 5);
}
END_TEST

/* ---- new versions are announced -------------------------------------------
 * Five devices, three in round 1. The three learn version 1 from their
 * RoundResult; the two others are sent ModelAvailable once each: at once
 * with announce-spread-ms = 0 (case 0), one per tick when spread (case 1);
 * and not at all with announce = false (case 2). A device that connects
 * afterwards learns the version from its HelloResult. */
START_TEST(test_round_announces_new_version)
{
    fixture_t fx;
    fake_t fs[6];
    memset(&te, 0, sizeof te);
    fixture_new(&fx, 6, fs, 6);
    fx_set(&fx, plain_rounds, FL_ARRAY_LEN(plain_rounds));
    const char *const kv[][2] = {{"cohort", "3"},
                                 {"announce-spread-ms", _i == 1 ? "2000" : "0"},
                                 {"announce", _i == 2 ? "false" : "true"}};
    fx_set(&fx, kv, FL_ARRAY_LEN(kv));
    fixture_start(&fx, &test_engine, NULL);
    fl_server_set_params(fx.s, fl_calloc(T_VALUES, sizeof(float)), T_VALUES);
    for (int i = 0; i < 5; i++) {
        fake_connect(fx.s, &fs[i]);
        fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    }
    RUN_UNTIL(&fx, te.begun == 1);
    int in[5] = {0}, nin = 0;
    uint32_t id[5] = {0};
    for (int i = 0; i < 5; i++) {
        fl_envelope_t *e = fake_next(&fs[i]);
        if (!e)
            continue;
        ck_assert_int_eq(e->body_case, FLOTILLA__ENVELOPE__BODY_ROUND_INVITE);
        in[i] = 1;
        nin++;
        id[i] = e->round_invite->config->client_id;
        send_accept(&fs[i], 1, 1);
    }
    ck_assert_int_eq(nin, 3);
    for (int i = 0; i < 5; i++)
        if (in[i])
            send_input(&fs[i], 1, id[i], 10);
    RUN_UNTIL(&fx, te.ended == 1);
    const fl_server_metrics_t *m = fl_server_metrics(fx.s);
    ck_assert_uint_eq(m->model_version, 1);
    if (_i == 1) { /* 2000 ms in 50 ticks of 40 ms: one device a tick */
        ck_assert_uint_eq(m->announcements, 0);
        RUN_UNTIL(&fx, m->announcements >= 1);
        ck_assert_uint_eq(m->announcements, 1);
    }
    if (_i != 2)
        RUN_UNTIL(&fx, m->announcements == 2);
    /* A newcomer is told by its hello. */
    fake_connect(fx.s, &fs[5]);
    fl_envelope_t *h =
        fake_expect(&fs[5], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    ck_assert_uint_eq(h->hello_result->current_model_version, 1);
    for (int k = 0; k < 20; k++) { /* more ticks: nothing more is sent */
        uv_run(&fx.loop, UV_RUN_NOWAIT);
        usleep(5000);
    }
    ck_assert_uint_eq(m->announcements, _i == 2 ? 0 : 2);
    for (int i = 0; i < 6; i++) {
        int told = 0, results = 0;
        for (fl_envelope_t *e; (e = fake_next(&fs[i]));) {
            if (e->body_case == FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE) {
                ck_assert_uint_eq(e->model_available->version, 1);
                told++;
            }
            if (e->body_case == FLOTILLA__ENVELOPE__BODY_ROUND_RESULT &&
                e->round_result->round == 1) {
                ck_assert(e->round_result->success);
                ck_assert_uint_eq(e->round_result->new_model_version, 1);
                results++;
            }
        }
        ck_assert_int_eq(results, i < 5 && in[i]);
        ck_assert_int_eq(told, i < 5 && !in[i] && _i != 2);
    }
    fixture_free(&fx, fs, 6);
}
END_TEST

/* Versions faster than the spread: the devices that know the oldest
 * version are told first, so none waits for ever. Six devices, one told a
 * tick; after two are told of version 1, version 2 arrives: the four that
 * know only version 0 are told before those two. */
START_TEST(test_announce_oldest_first)
{
    fixture_t fx;
    fake_t fs[6];
    fixture_new(&fx, 6, fs, 6);
    static const char *const kv[][2] = {{"round-interval-ms", "3600000"},
                                        {"announce-spread-ms", "2000"}};
    fx_set(&fx, kv, FL_ARRAY_LEN(kv));
    fixture_start(&fx, &test_engine, NULL);
    for (int i = 0; i < 6; i++) {
        fake_connect(fx.s, &fs[i]);
        fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    }
    const fl_server_metrics_t *m = fl_server_metrics(fx.s);
    fx.s->state.model_version = 1;
    fl_server_announce(fx.s);
    RUN_UNTIL(&fx, m->announcements == 2);
    int first[6] = {0};
    for (int i = 0; i < 6; i++) {
        fl_envelope_t *e = fake_next(&fs[i]);
        if (e) {
            ck_assert_int_eq(e->body_case,
                             FLOTILLA__ENVELOPE__BODY_MODEL_AVAILABLE);
            ck_assert_uint_eq(e->model_available->version, 1);
            first[i] = 1;
        }
    }
    fx.s->state.model_version = 2;
    fl_server_announce(fx.s);
    RUN_UNTIL(&fx, m->announcements == 6);
    for (int i = 0; i < 6; i++) { /* the four that knew version 0 */
        fl_envelope_t *e = fake_next(&fs[i]);
        ck_assert(first[i] ? e == NULL : e != NULL);
        if (e)
            ck_assert_uint_eq(e->model_available->version, 2);
    }
    RUN_UNTIL(&fx, m->announcements == 8);
    for (int i = 0; i < 6; i++) { /* then the two others, once */
        fl_envelope_t *e = fake_next(&fs[i]);
        ck_assert(first[i] ? e != NULL : e == NULL);
    }
    fixture_free(&fx, fs, 6);
}
END_TEST

/* ---- a device secure aggregation leaves out ------------------------------
 * The test engine in secure-aggregation mode: it takes every phase's
 * message, sums the inputs as te does, and has nothing to ask the device
 * lo_left_out in the share phase (as the real engine when too few of that
 * device's neighbours advertised). The server must tell that device with an
 * Abort, count it as left out rather than as a dropout, and finish the
 * round with the others. */

static uint32_t lo_left_out;
static int lo_closes[FL_SERVER_PHASE_COUNT];

static int lo_handle(void *round_ctx, uint32_t sender, const fl_envelope_t *e)
{
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        return 0;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        ck_assert_uint_ne(sender, lo_left_out);
        return 0;
    default:
        return te_handle(round_ctx, sender, e);
    }
}

static int lo_close(void *round_ctx, int phase)
{
    lo_closes[phase]++;
    return 0;
}

static int lo_request(void *round_ctx, int phase, uint32_t id, fl_envelope_t *e)
{
    static Flotilla__ShareKeysRequest sk;
    static Flotilla__MaskedInputRequest mi;
    static Flotilla__UnmaskingRequest um;
    switch (phase) {
    case FL_SERVER_PHASE_SHARE:
        if (id == lo_left_out)
            return FL_ENOENT;
        flotilla__share_keys_request__init(&sk);
        sk.round = 1;
        e->body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST;
        e->share_keys_request = &sk;
        return 0;
    case FL_SERVER_PHASE_MASKED_INPUT:
        ck_assert_uint_ne(id, lo_left_out);
        flotilla__masked_input_request__init(&mi);
        mi.round = 1;
        e->body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST;
        e->masked_input_request = &mi;
        return 0;
    case FL_SERVER_PHASE_UNMASK:
        ck_assert_uint_ne(id, lo_left_out);
        flotilla__unmasking_request__init(&um);
        um.round = 1;
        e->body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST;
        e->unmasking_request = &um;
        return 0;
    default:
        return FL_ESTATE;
    }
}

static void lo_send(fake_t *f, int body_case, uint32_t id)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__AdvertiseKeys ak = FLOTILLA__ADVERTISE_KEYS__INIT;
    Flotilla__ShareKeysResponse sr = FLOTILLA__SHARE_KEYS_RESPONSE__INIT;
    Flotilla__UnmaskingResponse ur = FLOTILLA__UNMASKING_RESPONSE__INIT;
    e.body_case = (Flotilla__Envelope__BodyCase)body_case;
    switch (body_case) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        ak.round = 1;
        ak.client_id = id;
        e.advertise_keys = &ak;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        sr.round = 1;
        sr.client_id = id;
        e.share_keys_response = &sr;
        break;
    default:
        ur.round = 1;
        ur.client_id = id;
        e.unmasking_response = &ur;
        break;
    }
    fake_deliver(f, &e);
}

START_TEST(test_round_left_out_is_told)
{
    fixture_t fx;
    fake_t fs[4];
    memset(&te, 0, sizeof te);
    memset(lo_closes, 0, sizeof lo_closes);
    fixture_new(&fx, 4, fs, 4);
    fx_set(&fx, plain_rounds, FL_ARRAY_LEN(plain_rounds));
    static const char *const kv[][2] = {{"secagg", "true"},
                                        {"cohort", "4"},
                                        {"advertise-ms", "60000"},
                                        {"share-ms", "60000"},
                                        {"unmask-ms", "60000"}};
    fx_set(&fx, kv, FL_ARRAY_LEN(kv));
    static fl_server_engine_t eng;
    eng = test_engine;
    eng.handle = lo_handle;
    eng.close = lo_close;
    eng.request = lo_request;
    fixture_start(&fx, &eng, NULL);
    fl_server_set_params(fx.s, fl_calloc(T_VALUES, sizeof(float)), T_VALUES);
    for (int i = 0; i < 4; i++) {
        fake_connect(fx.s, &fs[i]);
        fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_HELLO_RESULT);
    }
    RUN_UNTIL(&fx, te.begun == 1);
    uint32_t id[4];
    for (int i = 0; i < 4; i++) {
        fl_envelope_t *e =
            fake_expect(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_INVITE);
        ck_assert(e->round_invite->config->secagg->enabled);
        id[i] = e->round_invite->config->client_id;
    }
    lo_left_out = id[3];
    for (int i = 0; i < 4; i++)
        send_accept(&fs[i], 1, 1);
    for (int i = 0; i < 4; i++)
        lo_send(&fs[i], FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS, id[i]);
    ck_assert_int_eq(lo_closes[FL_SERVER_PHASE_ADVERTISE], 1);

    /* The device left out is told at once, with the round and the reason,
     * and asked nothing more; its connection stays open. */
    fl_envelope_t *e = find_msg(&fs[3], FLOTILLA__ENVELOPE__BODY_ABORT);
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(e->abort->round, 1);
    ck_assert_uint_eq(e->abort->reason,
                      FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS);
    ck_assert_ptr_nonnull(strstr(e->abort->message, "left out of the share"));
    ck_assert_ptr_null(fake_next(&fs[3]));
    ck_assert(!fs[3].close_asked);
    const fl_server_metrics_t *m = fl_server_metrics(fx.s);
    ck_assert_uint_eq(m->left_out[FL_SERVER_PHASE_SHARE], 1);
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++)
        ck_assert_uint_eq(m->dropouts[p], 0);
    /* A late answer of its own for this round is not used and closes
     * nothing. */
    lo_send(&fs[3], FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE, id[3]);
    ck_assert(!fs[3].close_asked);

    /* The three others finish the round without waiting for it. */
    for (int i = 0; i < 3; i++) {
        ck_assert_ptr_nonnull(
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST));
        lo_send(&fs[i], FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE, id[i]);
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_ptr_nonnull(
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST));
        send_input(&fs[i], 1, id[i], 100 * (uint32_t)(i + 1));
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_ptr_nonnull(
            find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST));
        lo_send(&fs[i], FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE, id[i]);
    }
    RUN_UNTIL(&fx, te.ended == 1);
    ck_assert_int_eq(te.finished, 1);
    for (int i = 0; i < 3; i++) {
        e = find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ROUND_RESULT);
        ck_assert_ptr_nonnull(e);
        ck_assert(e->round_result->success);
        ck_assert_uint_eq(e->round_result->survivors, 3);
        ck_assert_ptr_null(find_msg(&fs[i], FLOTILLA__ENVELOPE__BODY_ABORT));
    }
    /* No result for it (round 2 may have invited it since). */
    ck_assert_ptr_null(find_msg(&fs[3], FLOTILLA__ENVELOPE__BODY_ROUND_RESULT));
    for (uint32_t i = 0; i < T_VALUES; i++) /* the three inputs' sum */
        ck_assert_float_eq(fx.s->params[i], (float)(600 + 3 * i));
    ck_assert_uint_eq(m->rounds_completed, 1);
    ck_assert_uint_eq(m->left_out[FL_SERVER_PHASE_SHARE], 1);
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++)
        ck_assert_uint_eq(m->dropouts[p], 0);
    fixture_free(&fx, fs, 4);
}
END_TEST

/* ---- the process ----------------------------------------------------------
 */

/* The server over plain TCP on a free port, its metrics on mport; its
 * log written anew. */
static pid_t spawn_server(const char *dir, int mport, const char *log)
{
    char args[1024];
    snprintf(args, sizeof args,
             "server --state '%s' --transport tcp --listen 127.0.0.1 --port 0 "
             "--metrics-listen 127.0.0.1 --metrics-port %d "
             "--round-interval-ms 50",
             dir, mport);
    fl_test_system(": > '%s'", log);
    return fl_test_spawn_flotilla(log, args);
}

START_TEST(test_process_metrics_sighup_sigterm)
{
    char dir[256], log[300], *r = NULL;
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    int port = free_port();
    pid_t pid = spawn_server(dir, port, log);
    double t0 = fl_time_mono_s();
    while (!(r = http_get(port, "/healthz"))) {
        ck_assert_msg(fl_time_mono_s() - t0 < 20, "server did not come up");
        usleep(20000);
    }
    ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "%s", r);
    ck_assert_ptr_nonnull(strstr(r, "\r\n\r\nok\n"));
    free(r);

    r = http_get(port, "/metrics");
    ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "%s", r);
    ck_assert_ptr_nonnull(strstr(r, "Content-Type: text/plain; version=0.0.4"));
    char *body = strstr(r, "\r\n\r\n");
    ck_assert_ptr_nonnull(body);
    ck_assert_int_gt(check_prometheus(body + 4), 20);
    ck_assert_double_eq(metric_value(body + 4, "flotilla_enrolled_clients"), 0);
    free(r);

    r = http_get(port, "/nothing");
    ck_assert_msg(strncmp(r, "HTTP/1.1 404 ", 13) == 0, "%s", r);
    free(r);
    /* A request head larger than the limit: 400, and the server lives. */
    size_t big = 3 * FL_SERVER_HTTP_MAX_REQUEST;
    char *req = fl_malloc(big);
    memcpy(req, "GET /metrics HTTP/1.1\r\nX: ", 26);
    memset(req + 26, 'a', big - 26);
    r = http_raw(port, req, big);
    fl_free(req);
    ck_assert_msg(r && strncmp(r, "HTTP/1.1 400 ", 13) == 0, "%s", r);
    free(r);

    /* Enroll with the CLI while it runs; SIGHUP makes it count. */
    char bin[1024];
    fl_test_flotilla(bin, sizeof bin);
    ck_assert_int_eq(
        fl_test_system("%s server enroll --state %s --name pi-1 "
                       "00112233445566778899aabbccddeeff00112233445566778899"
                       "aabbccddeeff >/dev/null 2>&1",
                       bin, dir),
        0);
    ck_assert_int_eq(kill(pid, SIGHUP), 0);
    t0 = fl_time_mono_s();
    for (;;) {
        r = http_get(port, "/metrics");
        ck_assert_ptr_nonnull(r);
        body = strstr(r, "\r\n\r\n");
        double v =
            body ? metric_value(body + 4, "flotilla_enrolled_clients") : -1;
        free(r);
        if (v == 1)
            break;
        ck_assert_msg(fl_time_mono_s() - t0 < 20, "SIGHUP not applied");
        usleep(20000);
    }

    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert_int_eq(fl_test_wait_exit(pid, 20), 0);
    ck_assert_int_eq(fl_test_system("grep -q 'SIGTERM' %s", log), 0);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_process_refuses_corrupt_state)
{
    char dir[256], log[300], path[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    fl_server_state_t a;
    sample_state(&a);
    ck_assert_int_eq(fl_server_state_save(dir, &a), 0);
    fl_server_state_clear(&a);
    snprintf(path, sizeof path, "%s/state", dir);
    ck_assert_int_eq(fl_test_system("printf Z | dd of=%s bs=1 seek=80 "
                                    "conv=notrunc 2>/dev/null",
                                    path),
                     0);
    pid_t pid = spawn_server(dir, free_port(), log);
    ck_assert_int_eq(fl_test_wait_exit(pid, 20), 1);
    ck_assert_int_eq(fl_test_system("grep -q 'checksum mismatch' %s", log), 0);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_cli_enrol)
{
    char dir[256], bin[1024], key[300];
    fl_test_tmpdir(dir, sizeof dir);
    fl_test_flotilla(bin, sizeof bin);
    const char *hex =
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    snprintf(key, sizeof key, "%s/dev.pub", dir);
    char text[80];
    snprintf(text, sizeof text, "%s\n", hex);
    write_file(key, text);
    ck_assert_int_eq(fl_test_system("%s server enroll --state %s --name d1 "
                                    "%s >/dev/null 2>&1",
                                    bin, dir, key),
                     0);
    /* Twice: refused. Bad key: usage error. */
    ck_assert_int_eq(fl_test_system("%s server enroll --state %s %s "
                                    ">/dev/null 2>&1",
                                    bin, dir, hex),
                     1);
    ck_assert_int_eq(fl_test_system("%s server enroll --state %s abc "
                                    ">/dev/null 2>&1",
                                    bin, dir),
                     2);
    ck_assert_int_eq(fl_test_system("%s server list --state %s --json | grep "
                                    "-q '\"name\": \"d1\"'",
                                    bin, dir),
                     0);
    ck_assert_int_eq(fl_test_system("%s server revoke --state %s %s "
                                    ">/dev/null 2>&1",
                                    bin, dir, hex),
                     0);
    ck_assert_int_eq(fl_test_system("%s server revoke --state %s %s "
                                    ">/dev/null 2>&1",
                                    bin, dir, hex),
                     1);
    ck_assert_int_eq(
        fl_test_system("test -z \"$(%s server list --state %s)\"", bin, dir),
        0);
    /* A device key made by `flotilla keygen`. */
    ck_assert_int_eq(fl_test_system("%s keygen --out %s/device >/dev/null && "
                                    "%s server enroll --state %s "
                                    "%s/device.pub >/dev/null 2>&1",
                                    bin, dir, bin, dir, dir),
                     0);
    uint8_t pk[32];
    char pub[400], err[256];
    snprintf(pub, sizeof pub, "%s/device.pub", dir);
    ck_assert_int_eq(fl_server_key_parse(pub, pk), 0);
    fl_server_enrol_t *e = NULL;
    snprintf(pub, sizeof pub, "%s/enrolled", dir);
    ck_assert_int_eq(fl_server_enrol_load(pub, &e, err, sizeof err), 0);
    ck_assert_uint_eq(fl_server_enrol_count(e), 1);
    ck_assert(fl_server_enrol_contains(e, pk));
    fl_server_enrol_free(e);
    fl_test_rmtree(dir);
}
END_TEST

/* The material of a test that runs a real server: TLS certificates from
 * deploy/make-ca.sh in dir/tls (into certs), a model-signing key in
 * dir/sign (its path into key, its public half into pk) and a tiny initial
 * model in dir/init.bin (its path into path; its parameter count returned
 * and, if x0, a copy of its parameters). */
static void it_make_ca(const char *dir, char *certs, size_t len)
{
    char script[600];
    snprintf(certs, len, "%s/tls", dir);
    fl_test_srcpath(script, sizeof script, "deploy/make-ca.sh");
    ck_assert_int_eq(fl_test_system("sh %s --out %s --server-name localhost "
                                    "--server-ip 127.0.0.1 >/dev/null 2>&1",
                                    script, certs),
                     0);
}

static void it_signing_key(const char *dir, char *key, size_t len,
                           uint8_t pk[32])
{
    fl_artifact_key_t *sk = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&sk), 0);
    fl_artifact_key_public(sk, pk);
    snprintf(key, len, "%s/sign", dir);
    ck_assert_int_eq(fl_artifact_key_save(sk, key), 0);
    fl_artifact_key_free(sk);
}

static uint64_t it_tiny_model(const char *dir, uint64_t seed, char *path,
                              size_t len, float **x0)
{
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = 16;
    mc.hidden_dim = 32;
    mc.n_layers = 1;
    mc.n_heads = 2;
    mc.n_kv_heads = 1;
    mc.seq_len = 16;
    fl_model_t *model = NULL;
    ck_assert_int_eq(fl_model_new(&mc, &model), 0);
    fl_model_init_weights(model, seed);
    ck_assert_int_eq(fl_model_set_tokenizer_ref(model, "byte"), 0);
    snprintf(path, len, "%s/init.bin", dir);
    ck_assert_int_eq(fl_model_save(model, path, 0), 0);
    uint64_t d = fl_model_num_params(model);
    if (x0) {
        *x0 = fl_malloc(d * sizeof(float));
        memcpy(*x0, fl_model_params(model), d * sizeof(float));
    }
    fl_model_free(model);
    return d;
}

/* ---- integration: real TLS, the real engines ------------------------------
 * Four enrolled devices connect over TLS 1.3 to a server on
 * 127.0.0.1; one fetches the signed manifest and the model in chunks; all
 * take part in a round driven by the secagg client engine (or, in one case,
 * without secure aggregation), and the device with id 2 drops at the
 * case's phase. The published version
 * must verify (artifact and openssl pkeyutl) and equal the previous model
 * plus the FedAvg step on the noised mean of the survivors' decoded
 * updates, recomputed here with the same noise seed. */

#define IC_N       4
#define IC_NOISE_Z 0.5
#define IC_SEED    4242

typedef struct {
    int idx;
    uint8_t pk[32], sk[64];
    fl_net_conn_t *conn;
    fl_secagg_client_t *sa;
    fl_compress_t *codec;
    uint32_t id, n;
    uint64_t round, d, m;
    unsigned ring_bits;
    uint32_t *ring;   /* what it sent (before masking) */
    uint8_t *payload; /* secagg off: what it sent */
    size_t payload_len;
    int plain; /* the round runs without secure aggregation */
    int hello_ok, got_result, success, closed, dropped, sent_input;
    int fetch; /* download the model after the hello */
    uint64_t result_round, result_version, result_survivors;
    int mid_round; /* got a ShareKeysRequest of round mid_of */
    uint64_t mid_of;
    /* client 0: the model download */
    uint8_t *dl;
    uint64_t dl_len, dl_total;
    int manifest_ok, download_done;
} iclient_t;

static iclient_t ic[IC_N];
/* The phase in which the device with id 2 drops (FL_SERVER_PHASE_*), or -1:
 * ADVERTISE = before advertising, SHARE = on ShareKeysRequest,
 * MASKED_INPUT = on MaskedInputRequest, UNMASK = on UnmaskingRequest (its
 * input is then in the sum). */
static int ic_drop_phase = FL_SERVER_PHASE_MASKED_INPUT;

static int ic_drops(const iclient_t *c, int phase)
{
    return c->n == IC_N && c->id == 2 && ic_drop_phase == phase;
}
static uint8_t ic_sign_pk[32];

static void ic_send(iclient_t *c, Flotilla__Envelope *e)
{
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    uint8_t *buf = fl_malloc(n);
    flotilla__envelope__pack(e, buf);
    ck_assert_int_ge(fl_net_send(c->conn, buf, n), 0);
    fl_free(buf);
}

static void ic_chunk_request(iclient_t *c)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__ChunkRequest r = FLOTILLA__CHUNK_REQUEST__INIT;
    r.version = 1;
    r.file = "model.bin";
    r.offset = c->dl_len;
    r.length = 4000; /* small chunks: the download resumes by offset */
    e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK_REQUEST;
    e.chunk_request = &r;
    ic_send(c, &e);
}

static void ic_delta(float *x, uint64_t d, int idx)
{
    for (uint64_t j = 0; j < d; j++)
        x[j] = 0.002f * (float)sin((double)j * 0.37 * (idx + 1)) +
               0.001f * (float)idx;
}

static void ic_round_reset(iclient_t *c)
{
    fl_secagg_client_free(c->sa);
    fl_compress_free(c->codec);
    fl_free(c->ring);
    fl_free(c->payload);
    c->sa = NULL;
    c->codec = NULL;
    c->ring = NULL;
    c->payload = NULL;
}

static void ic_on_invite(iclient_t *c, Flotilla__RoundConfig *rc)
{
    fl_compress_config_t cc;
    ic_round_reset(c);
    fl_compress_config_init(&cc);
    ck_assert_int_eq(rc->codec->support, FLOTILLA__SUPPORT_KIND__SUPPORT_DENSE);
    cc.support = FL_COMPRESS_SUPPORT_DENSE;
    cc.quant_bits = rc->codec->quant_bits;
    cc.rotate = rc->codec->rotate;
    cc.rotation_seed = rc->codec->rotation_seed;
    cc.clip_norm = rc->codec->clip_norm;
    cc.range_factor = rc->codec->range_factor;
    cc.scale = rc->codec->scale;
    cc.quant_seed = rc->codec->quant_seed;
    c->plain = !rc->secagg->enabled;
    ck_assert_int_eq(rc->codec->secure_aggregation, !c->plain);
    cc.secagg = !c->plain;
    cc.ring_bits = rc->codec->ring_bits;
    cc.max_summands = rc->codec->max_summands;
    ck_assert_uint_eq(rc->codec->max_summands, rc->secagg->n_participants);
    c->d = rc->num_params;
    c->id = rc->client_id;
    c->n = (uint32_t)rc->secagg->n_participants;
    c->round = rc->round;
    c->ring_bits = rc->codec->ring_bits;
    ck_assert_int_eq(fl_compress_new(&c->codec, &cc, c->d), 0);
    c->m = fl_compress_value_count(c->codec);
    if (c->plain) { /* accept, then send the codec payload at once */
        Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
        Flotilla__RoundAccept a = FLOTILLA__ROUND_ACCEPT__INIT;
        a.round = rc->round;
        a.accept = 1;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
        e.round_accept = &a;
        ic_send(c, &e);
        if (ic_drops(c, FL_SERVER_PHASE_MASKED_INPUT)) {
            c->dropped = 1;
            fl_net_conn_close(c->conn, FL_ECLOSED);
            return;
        }
        uint64_t cap = 0;
        ck_assert_int_eq(fl_compress_wire_bytes(&cc, c->d, &cap, NULL), 0);
        c->payload = fl_malloc(cap);
        float *x = fl_malloc(c->d * sizeof(float));
        ic_delta(x, c->d, c->idx);
        fl_rng_t rng;
        fl_rng_seed(&rng, 1000 + (uint64_t)c->idx);
        ck_assert_int_eq(fl_compress_encode_payload(c->codec, c->payload, cap,
                                                    &c->payload_len, x, NULL,
                                                    &rng, NULL),
                         0);
        fl_free(x);
        Flotilla__Envelope e3 = FLOTILLA__ENVELOPE__INIT;
        Flotilla__MaskedInputResponse mi =
            FLOTILLA__MASKED_INPUT_RESPONSE__INIT;
        mi.round = rc->round;
        mi.client_id = c->id;
        mi.num_values = c->m;
        mi.packed.data = c->payload;
        mi.packed.len = c->payload_len;
        e3.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
        e3.masked_input_response = &mi;
        ic_send(c, &e3);
        c->sent_input = 1;
        return;
    }
    fl_secagg_round_t round;
    memset(&round, 0, sizeof round);
    round.round = rc->round;
    memcpy(round.round_nonce, rc->round_nonce.data, 32);
    round.dim = c->m;
    round.config = rc->secagg;
    ck_assert_int_eq(fl_secagg_client_new(&round, c->id, c->sk, &c->sa), 0);

    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__RoundAccept a = FLOTILLA__ROUND_ACCEPT__INIT;
    a.round = rc->round;
    a.accept = 1;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT;
    e.round_accept = &a;
    ic_send(c, &e);
    if (ic_drops(c, FL_SERVER_PHASE_ADVERTISE)) {
        c->dropped = 1;
        fl_net_conn_close(c->conn, FL_ECLOSED);
        return;
    }
    Flotilla__AdvertiseKeys *adv = NULL;
    ck_assert_int_eq(fl_secagg_client_advertise(c->sa, &adv), 0);
    Flotilla__Envelope e2 = FLOTILLA__ENVELOPE__INIT;
    e2.body_case = FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS;
    e2.advertise_keys = adv;
    ic_send(c, &e2);
    fl_secagg_msg_free(adv);
}

static void ic_on_frame(fl_net_conn_t *conn, const uint8_t *p, size_t len)
{
    iclient_t *c = fl_net_conn_data(conn);
    fl_envelope_t *e = NULL;
    ck_assert_int_eq(fl_proto_decode(p, len, 1u << 26, &e), 0);
    Flotilla__Envelope out = FLOTILLA__ENVELOPE__INIT;
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_SERVER_HELLO: {
        /* The server announces the key that signs models. */
        ck_assert_uint_eq(e->server_hello->model_signing_key.len, 32);
        ck_assert_mem_eq(e->server_hello->model_signing_key.data, ic_sign_pk,
                         32);
        Flotilla__ClientHello h = FLOTILLA__CLIENT_HELLO__INIT;
        uint8_t sig[64];
        sign_hello(&h, sig, c->pk, c->sk, e->server_hello->nonce.data);
        out.body_case = FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO;
        out.client_hello = &h;
        ic_send(c, &out);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_HELLO_RESULT:
        ck_assert(e->hello_result->accepted);
        ck_assert_uint_ge(e->hello_result->current_model_version, 1);
        c->hello_ok = 1;
        if (c->fetch) {
            Flotilla__ManifestRequest mr = FLOTILLA__MANIFEST_REQUEST__INIT;
            out.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_REQUEST;
            out.manifest_request = &mr;
            ic_send(c, &out);
        }
        break;
    case FLOTILLA__ENVELOPE__BODY_MANIFEST_RESPONSE: {
        Flotilla__ManifestResponse *m = e->manifest_response;
        ck_assert_uint_eq(m->version, 1);
        ck_assert_uint_eq(m->signature.len, 64);
        ck_assert_int_eq(
            fl_artifact_sig_verify(ic_sign_pk, m->manifest_json.data,
                                   m->manifest_json.len, m->signature.data),
            0);
        /* The manifest says the architecture and the tokenizer. */
        fl_artifact_manifest_t *mf = NULL;
        uint64_t vocab = 0, dim = 0;
        char tok[16];
        ck_assert_int_eq(fl_artifact_manifest_parse(m->manifest_json.data,
                                                    m->manifest_json.len, &mf,
                                                    NULL, 0),
                         0);
        ck_assert_int_eq(fl_artifact_manifest_config_u64(mf, "architecture",
                                                         "vocab_size", &vocab),
                         0);
        ck_assert_int_eq(
            fl_artifact_manifest_config_u64(mf, "architecture", "dim", &dim),
            0);
        ck_assert_int_eq(fl_artifact_manifest_config_str(
                             mf, "architecture", "tokenizer", tok, sizeof tok),
                         0);
        ck_assert_uint_eq(vocab, FL_TOKENIZER_BYTE_VOCAB);
        ck_assert_uint_eq(dim, 16);
        ck_assert_str_eq(tok, "byte");
        fl_artifact_manifest_free(mf);
        c->manifest_ok = 1;
        ic_chunk_request(c);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_CHUNK: {
        Flotilla__Chunk *k = e->chunk;
        ck_assert_uint_eq(k->offset, c->dl_len);
        ck_assert_uint_le(k->data.len, 4000);
        c->dl_total = k->total_size;
        c->dl = fl_realloc(c->dl, c->dl_len + k->data.len + 1);
        memcpy(c->dl + c->dl_len, k->data.data, k->data.len);
        c->dl_len += k->data.len;
        if (c->dl_len < c->dl_total)
            ic_chunk_request(c);
        else
            c->download_done = 1;
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_ROUND_INVITE:
        ic_on_invite(c, e->round_invite->config);
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST: {
        Flotilla__ShareKeysResponse *r = NULL;
        if (c->mid_of && e->share_keys_request->round == c->mid_of) {
            c->mid_round = 1; /* the test kills the server now */
            break;
        }
        if (ic_drops(c, FL_SERVER_PHASE_SHARE)) {
            c->dropped = 1;
            fl_net_conn_close(conn, FL_ECLOSED);
            break;
        }
        ck_assert_int_eq(
            fl_secagg_client_share_keys(c->sa, e->share_keys_request, &r), 0);
        out.body_case = FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE;
        out.share_keys_response = r;
        ic_send(c, &out);
        fl_secagg_msg_free(r);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST: {
        if (ic_drops(c, FL_SERVER_PHASE_MASKED_INPUT)) {
            c->dropped = 1;
            fl_net_conn_close(conn, FL_ECLOSED);
            break;
        }
        float *x = fl_malloc(c->d * sizeof(float));
        c->ring = fl_calloc(c->m, sizeof(uint32_t));
        ic_delta(x, c->d, c->idx);
        fl_rng_t rng;
        fl_rng_seed(&rng, 1000 + (uint64_t)c->idx);
        ck_assert_int_eq(
            fl_compress_encode_ring(c->codec, c->ring, x, NULL, &rng, NULL), 0);
        fl_free(x);
        Flotilla__MaskedInputResponse *r = NULL;
        ck_assert_int_eq(fl_secagg_client_masked_input(
                             c->sa, e->masked_input_request, c->ring, &r),
                         0);
        out.body_case = FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE;
        out.masked_input_response = r;
        ic_send(c, &out);
        fl_secagg_msg_free(r);
        c->sent_input = 1;
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST: {
        Flotilla__UnmaskingResponse *r = NULL;
        if (ic_drops(c, FL_SERVER_PHASE_UNMASK)) {
            c->dropped = 1;
            fl_net_conn_close(conn, FL_ECLOSED);
            break;
        }
        ck_assert_int_eq(
            fl_secagg_client_unmask(c->sa, e->unmasking_request, &r), 0);
        out.body_case = FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE;
        out.unmasking_response = r;
        ic_send(c, &out);
        fl_secagg_msg_free(r);
        break;
    }
    case FLOTILLA__ENVELOPE__BODY_ROUND_RESULT:
        c->got_result = 1;
        c->success = e->round_result->success;
        c->result_round = e->round_result->round;
        c->result_version = e->round_result->new_model_version;
        c->result_survivors = e->round_result->survivors;
        if (c->success)
            ck_assert(e->round_result->epsilon > 0);
        break;
    default:
        break;
    }
    fl_proto_free(e);
}

static void ic_on_close(fl_net_conn_t *conn, int reason)
{
    iclient_t *c = fl_net_conn_data(conn);
    c->closed = 1;
    c->conn = NULL;
}

static void ic_on_open(fl_net_conn_t *conn)
{
}

START_TEST(test_integration_tls_round)
{
    /* Cases: secure aggregation with a device dropping at masked input,
     * without secure aggregation, then with it and a drop at each other
     * phase. */
    static const struct {
        int plain, drop, harary;
    } cases[] = {{0, FL_SERVER_PHASE_MASKED_INPUT, 0},
                 {1, FL_SERVER_PHASE_MASKED_INPUT, 0},
                 {0, FL_SERVER_PHASE_ADVERTISE, 0},
                 {0, FL_SERVER_PHASE_SHARE, 0},
                 {0, FL_SERVER_PHASE_UNMASK, 0},
                 {0, -1, 1}};
    const int plain = cases[_i].plain;
    ic_drop_phase = cases[_i].drop;
    /* A drop at unmasking comes after the input: it is in the sum. With
     * degree 2 a dropout would leave a neighbour of it one share short, so
     * the Harary case has none. */
    const int nsum =
        ic_drop_phase == FL_SERVER_PHASE_UNMASK || ic_drop_phase < 0 ? 4 : 3;
    fixture_t fx;
    fake_t keys[IC_N];
    char err[512] = "", path[600], cmd[1024], certs[300], key[400];
    const fl_cfg_table_t *t = fl_server_config_table();
    signal(SIGPIPE, SIG_IGN);
    memset(ic, 0, sizeof ic);
    fixture_new(&fx, IC_N, keys, IC_N);
    /* TLS material, the signing key and the initial model. */
    it_make_ca(fx.dir, certs, sizeof certs);
    it_signing_key(fx.dir, key, sizeof key, ic_sign_pk);
    float *x0 = NULL;
    uint64_t d = it_tiny_model(fx.dir, 7, path, sizeof path, &x0);

    static const char *const kv[][2] = {
        {"transport", "tls"},
        {"listen", "127.0.0.1"},
        {"port", "0"},
        {"cohort", "4"},
        {"over-selection", "1.0"},
        {"min-clients", "3"},
        {"rounds", "1"},
        {"round-interval-ms", "1000"},
        {"support", "dense"},
        {"quant-bits", "8"},
        {"noise-multiplier", "0.5"},
        {"noise-seed", "4242"},
        {"server-lr", "1.0"},
        {"population", "100"},
        {"epsilon-budget", "50"},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(kv); i++)
        ck_assert_int_eq(
            fl_cfg_set(t, &fx.cfg, kv[i][0], kv[i][1], err, sizeof err), 0);
    fl_cfg_set(t, &fx.cfg, "secagg", plain ? "false" : "true", err, sizeof err);
    if (cases[_i].harary) { /* SecAgg+: each device has 2 neighbours */
        fl_cfg_set(t, &fx.cfg, "graph", "harary", err, sizeof err);
        fl_cfg_set(t, &fx.cfg, "degree", "2", err, sizeof err);
    }
    snprintf(cmd, sizeof cmd, "%s/server.crt", certs);
    fl_cfg_set(t, &fx.cfg, "tls-cert", cmd, err, sizeof err);
    snprintf(cmd, sizeof cmd, "%s/server.key", certs);
    fl_cfg_set(t, &fx.cfg, "tls-key", cmd, err, sizeof err);
    snprintf(cmd, sizeof cmd, "%s.key", key);
    fl_cfg_set(t, &fx.cfg, "signing-key", cmd, err, sizeof err);
    fl_cfg_set(t, &fx.cfg, "init-model", path, err, sizeof err);
    fixture_start(&fx, NULL, NULL);
    ck_assert_uint_eq(fl_server_state(fx.s)->model_version, 1);
    int port = fl_server_port(fx.s);
    ck_assert_int_gt(port, 0);

    /* The devices, over TLS 1.3, verifying the server's certificate. */
    fl_net_tls_t *ctls = NULL;
    snprintf(cmd, sizeof cmd, "%s/ca.crt", certs);
    fl_net_tls_opts_t to = {.ca_file = cmd};
    ck_assert_int_eq(fl_net_tls_client_new(&to, &ctls), 0);
    ic[0].fetch = 1;
    for (int i = 0; i < IC_N; i++) {
        ic[i].idx = i;
        memcpy(ic[i].pk, keys[i].pk, 32);
        memcpy(ic[i].sk, keys[i].sk, 64);
        fl_net_connect_opts_t o;
        fl_net_connect_opts_init(&o);
        o.host = "127.0.0.1";
        o.port = port;
        o.tls = ctls;
        o.cb.on_open = ic_on_open;
        o.cb.on_frame = ic_on_frame;
        o.cb.on_close = ic_on_close;
        o.data = &ic[i];
        ck_assert_int_eq(fl_net_connect(&fx.loop, &o, &ic[i].conn), 0);
    }
    fl_net_tls_free(ctls);
    /* rounds = 1: the server stops itself after the round. */
    RUN_UNTIL(&fx, fx.s->stopping && ic[0].closed && ic[1].closed &&
                       ic[2].closed && ic[3].closed);

    int survivors = 0, i0 = ic[0].dropped ? 1 : 0;
    uint32_t *sum = fl_calloc(ic[i0].m, sizeof(uint32_t));
    float *acc = fl_calloc(fl_compress_space_dim(ic[i0].codec), sizeof(float));
    for (int i = 0; i < IC_N; i++) {
        ck_assert(ic[i].hello_ok);
        if (ic[i].dropped) {
            ck_assert(!ic[i].got_result);
            if (!ic[i].sent_input)
                continue;
        } else {
            ck_assert_msg(ic[i].got_result && ic[i].success, "client %d", i);
            ck_assert_uint_eq(ic[i].result_version, 2);
            ck_assert_uint_eq(ic[i].result_survivors, (uint64_t)nsum);
        }
        ck_assert_int_eq(ic[i].plain, plain);
        if (plain)
            ck_assert_int_eq(fl_compress_accumulate_payload(ic[i0].codec, acc,
                                                            ic[i].payload,
                                                            ic[i].payload_len),
                             0);
        else
            fl_compress_ring_add(sum, ic[i].ring, ic[i].m, ic[i].ring_bits);
        survivors++;
    }
    ck_assert_int_eq(survivors, nsum);
    /* The download by chunks equals the published version 1. */
    ck_assert(ic[0].manifest_ok && ic[0].download_done);
    uint8_t *v1 = NULL;
    size_t v1len = 0;
    snprintf(path, sizeof path, "%s/models/v000000000001/model.bin", fx.dir);
    ck_assert_int_eq(fl_file_read_all(path, 1u << 26, &v1, &v1len), 0);
    ck_assert_uint_eq(v1len, ic[0].dl_len);
    ck_assert_mem_eq(v1, ic[0].dl, v1len);
    fl_free(v1);

    /* Recompute the step: decode, the same seeded noise, FedAvg lr 1. */
    const fl_server_state_t *st = fl_server_state(fx.s);
    ck_assert_uint_eq(st->round, 1);
    ck_assert_uint_eq(st->model_version, 2);
    float *g = fl_calloc(d, sizeof(float));
    if (plain)
        ck_assert_int_eq(fl_compress_finish(ic[i0].codec, g, acc, 1.0), 0);
    else
        ck_assert_int_eq(fl_compress_decode_ring_sum(ic[i0].codec, g, sum, 1.0),
                         0);
    fl_free(acc);
    uint8_t in[16], seed[32];
    for (int i = 0; i < 8; i++) {
        in[i] = (uint8_t)((uint64_t)IC_SEED >> (8 * i));
        in[8 + i] = (uint8_t)((uint64_t)1 >> (8 * i));
    }
    crypto_generichash(seed, sizeof seed, in, sizeof in, NULL, 0);
    fl_dp_noise_t *nz = fl_dp_noise_new(seed);
    double sens = fl_compress_sensitivity(fl_compress_config(ic[i0].codec), d);
    ck_assert_int_eq(fl_dp_noised_mean(nz, g, g, d, IC_NOISE_Z * sens, 4.0), 0);
    fl_dp_noise_free(nz);
    snprintf(path, sizeof path, "%s/%s/model.bin", fx.dir, st->model_dir);
    fl_model_t *pub = NULL;
    ck_assert_int_eq(fl_model_load(path, &pub), 0);
    ck_assert_uint_eq(fl_model_num_params(pub), d);
    const float *x1 = fl_model_params(pub);
    double maxdiff = 0, maxstep = 0;
    for (uint64_t i = 0; i < d; i++) {
        double want = (double)x0[i] + (double)g[i];
        maxdiff = fmax(maxdiff, fabs(want - (double)x1[i]));
        maxstep = fmax(maxstep, fabs((double)g[i]));
    }
    ck_assert_msg(maxdiff < 1e-6, "published model differs by %g", maxdiff);
    ck_assert(maxstep > 1e-4); /* the step is not trivially zero */
    fl_model_free(pub);

    /* The version verifies: artifact's verifier, and openssl on its own. */
    snprintf(path, sizeof path, "%s/%s", fx.dir, st->model_dir);
    ck_assert_int_eq(
        fl_artifact_verify_dir(path, ic_sign_pk, NULL, err, sizeof err), 0);
    uint8_t der[44] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                       0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
    memcpy(der + 12, ic_sign_pk, 32);
    char b64[100], pem[400];
    sodium_bin2base64(b64, sizeof b64, der, sizeof der,
                      sodium_base64_VARIANT_ORIGINAL);
    snprintf(pem, sizeof pem, "%s/sign.pem", fx.dir);
    snprintf(cmd, sizeof cmd,
             "-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----\n", b64);
    write_file(pem, cmd);
    ck_assert_int_eq(fl_test_system("openssl pkeyutl -verify -pubin -inkey %s "
                                    "-rawin -in %s/manifest.json -sigfile "
                                    "%s/manifest.sig >/dev/null 2>&1",
                                    pem, path, path),
                     0);
    const fl_server_metrics_t *m = fl_server_metrics(fx.s);
    ck_assert_uint_eq(m->rounds_completed, 1);
    uint64_t drops = 0;
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++)
        drops += m->dropouts[p];
    ck_assert_uint_eq(drops, ic_drop_phase < 0 ? 0 : 1);
    /* A device leaving right after accepting may be counted while the
     * invitation phase is still open. */
    if (ic_drop_phase >= 0 && ic_drop_phase != FL_SERVER_PHASE_ADVERTISE)
        ck_assert_uint_eq(m->dropouts[ic_drop_phase], 1);
    ck_assert(m->epsilon > 0 && m->epsilon < 50);

    for (int i = 0; i < IC_N; i++) {
        ic_round_reset(&ic[i]);
        fl_free(ic[i].dl);
    }
    fl_free(sum);
    fl_free(g);
    fl_free(x0);
    fixture_free(&fx, keys, 0);
}
END_TEST

/* Connects ic[0..n) to the server on port over TLS. */
static void ic_connect_all(uv_loop_t *loop, int n, int port, const char *ca)
{
    fl_net_tls_t *ctls = NULL;
    fl_net_tls_opts_t to = {.ca_file = ca};
    ck_assert_int_eq(fl_net_tls_client_new(&to, &ctls), 0);
    for (int i = 0; i < n; i++) {
        fl_net_connect_opts_t o;
        fl_net_connect_opts_init(&o);
        o.host = "127.0.0.1";
        o.port = port;
        o.tls = ctls;
        o.cb.on_open = ic_on_open;
        o.cb.on_frame = ic_on_frame;
        o.cb.on_close = ic_on_close;
        o.data = &ic[i];
        ic[i].closed = 0;
        ic[i].got_result = ic[i].success = 0;
        ck_assert_int_eq(fl_net_connect(loop, &o, &ic[i].conn), 0);
    }
    fl_net_tls_free(ctls);
}

static void wait_port(int port)
{
    double t0 = fl_time_mono_s();
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return;
        ck_assert_msg(fl_time_mono_s() - t0 < 30, "server did not come up");
        usleep(20000);
    }
}

static pid_t spawn_config(const char *ini, const char *log)
{
    char args[600];
    snprintf(args, sizeof args, "server --config '%s'", ini);
    return fl_test_spawn_flotilla(log, args);
}

#define RUN_LOOP_UNTIL(loop, cond)                                             \
    do {                                                                       \
        double t0_ = fl_time_mono_s();                                         \
        while (!(cond)) {                                                      \
            ck_assert_msg(fl_time_mono_s() - t0_ < 40, "timed out: " #cond);   \
            uv_run((loop), UV_RUN_NOWAIT);                                     \
            usleep(500);                                                       \
        }                                                                      \
    } while (0)

/* The server process is killed with SIGKILL in the middle of round 2,
 * restarted, resumes at the last completed round (1) with a valid signed
 * model, and completes the next round with the devices, which reconnect. */
START_TEST(test_crash_sigkill_resume)
{
    fake_t keys[3];
    fixture_t fx; /* for the directory and keys only */
    char err[512] = "", path[600], certs[300], key[400], ini[400], log[400];
    char ca[400], text[4096];
    signal(SIGPIPE, SIG_IGN);
    memset(ic, 0, sizeof ic);
    fixture_new(&fx, 3, keys, 3);
    it_make_ca(fx.dir, certs, sizeof certs);
    it_signing_key(fx.dir, key, sizeof key, ic_sign_pk);
    it_tiny_model(fx.dir, 9, path, sizeof path, NULL);
    int port = free_port();
    snprintf(ini, sizeof ini, "%s/server.ini", fx.dir);
    snprintf(log, sizeof log, "%s/server.log", fx.dir);
    snprintf(ca, sizeof ca, "%s/ca.crt", certs);
    snprintf(text, sizeof text,
             "[server]\nstate = %s\ntransport = tls\nlisten = 127.0.0.1\n"
             "port = %d\ntls-cert = %s/server.crt\ntls-key = %s/server.key\n"
             "signing-key = %s.key\ninit-model = %s\nmetrics = false\n"
             "cohort = 3\nover-selection = 1.0\nmin-clients = 3\n"
             "round-interval-ms = 300\nnoise-seed = 77\npopulation = 50\n",
             fx.dir, port, certs, certs, key, path);
    write_file(ini, text);

    pid_t pid = spawn_config(ini, log);
    wait_port(port);
    for (int i = 0; i < 3; i++) {
        ic[i].idx = i;
        memcpy(ic[i].pk, keys[i].pk, 32);
        memcpy(ic[i].sk, keys[i].sk, 64);
        ic[i].mid_of = 2;
    }
    ic_connect_all(&fx.loop, 3, port, ca);
    /* Round 1 completes; round 2 reaches its ShareKeys phase. */
    RUN_LOOP_UNTIL(&fx.loop,
                   ic[0].mid_round && ic[1].mid_round && ic[2].mid_round);
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(ic[i].result_round, 1);
        ck_assert_uint_eq(ic[i].result_version, 2);
    }
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(fl_test_wait_exit(pid, 20), -1); /* killed, not exited */
    RUN_LOOP_UNTIL(&fx.loop, ic[0].closed && ic[1].closed && ic[2].closed);

    /* On disk: the last completed round and its signed version. */
    fl_server_state_t st;
    fl_server_state_init(&st);
    ck_assert_int_eq(fl_server_state_load(fx.dir, &st, err, sizeof err), 0);
    ck_assert_uint_eq(st.round, 1);
    ck_assert_uint_eq(st.round_started, 2);
    ck_assert_uint_eq(st.model_version, 2);
    snprintf(path, sizeof path, "%s/%s", fx.dir, st.model_dir);
    ck_assert_int_eq(
        fl_artifact_verify_dir(path, ic_sign_pk, NULL, err, sizeof err), 0);
    fl_server_state_clear(&st);

    /* Restart: the devices come back; round 2 was handed out before the
     * crash, so the next round is 3, computed from round 1's model. */
    pid = spawn_config(ini, log);
    wait_port(port);
    for (int i = 0; i < 3; i++)
        ic[i].mid_of = 0;
    ic_connect_all(&fx.loop, 3, port, ca);
    RUN_LOOP_UNTIL(&fx.loop,
                   ic[0].got_result && ic[1].got_result && ic[2].got_result);
    for (int i = 0; i < 3; i++) {
        ck_assert(ic[i].success);
        ck_assert_uint_eq(ic[i].result_round, 3);
        ck_assert_uint_eq(ic[i].result_version, 3);
    }
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert_int_eq(fl_test_wait_exit(pid, 30), 0);
    RUN_LOOP_UNTIL(&fx.loop, ic[0].closed && ic[1].closed && ic[2].closed);
    fl_server_state_init(&st);
    ck_assert_int_eq(fl_server_state_load(fx.dir, &st, err, sizeof err), 0);
    ck_assert_uint_eq(st.round, 3);
    ck_assert_uint_eq(st.model_version, 3);
    ck_assert_uint_eq(st.rounds_completed, 2);
    ck_assert(st.epsilon > 0);
    fl_server_state_clear(&st);
    for (int i = 0; i < 3; i++)
        ic_round_reset(&ic[i]);
    for (int i = 0; i < 100 && uv_run(&fx.loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
    ck_assert_int_eq(uv_loop_close(&fx.loop), 0);
    fl_server_config_free(&fx.cfg);
    fl_test_rmtree(fx.dir);
}
END_TEST

/* A device whose hello the server must refuse, over real TLS. */
typedef struct {
    uint8_t pk[32], sk[64];
    int refused, reason, closed, close_reason;
    size_t big; /* > 0: send a frame of this many bytes after ServerHello */
    int silent; /* send nothing after ServerHello */
    size_t pad; /* > 0: a hello whose client_version has this many bytes */
} intruder_t;

static void in_on_frame(fl_net_conn_t *conn, const uint8_t *p, size_t len)
{
    intruder_t *x = fl_net_conn_data(conn);
    fl_envelope_t *e = NULL;
    ck_assert_int_eq(fl_proto_decode(p, len, 1u << 26, &e), 0);
    if (e->body_case == FLOTILLA__ENVELOPE__BODY_SERVER_HELLO) {
        if (x->silent) {
            /* nothing: the hello deadline must close it */
        } else if (x->big) {
            uint8_t *junk = fl_calloc(1, x->big);
            ck_assert_int_ge(fl_net_send(conn, junk, x->big), 0);
            fl_free(junk);
        } else {
            Flotilla__ClientHello h = FLOTILLA__CLIENT_HELLO__INIT;
            uint8_t sig[64];
            sign_hello(&h, sig, x->pk, x->sk, e->server_hello->nonce.data);
            char *pad = NULL;
            if (x->pad) {
                pad = fl_malloc(x->pad + 1);
                memset(pad, 'v', x->pad);
                pad[x->pad] = '\0';
                h.client_version = pad;
            }
            Flotilla__Envelope out = FLOTILLA__ENVELOPE__INIT;
            out.body_case = FLOTILLA__ENVELOPE__BODY_CLIENT_HELLO;
            out.client_hello = &h;
            out.protocol_version = FL_PROTOCOL_VERSION;
            size_t n = flotilla__envelope__get_packed_size(&out);
            uint8_t *buf = fl_malloc(n);
            flotilla__envelope__pack(&out, buf);
            ck_assert_int_ge(fl_net_send(conn, buf, n), 0);
            fl_free(buf);
            fl_free(pad);
        }
    } else if (e->body_case == FLOTILLA__ENVELOPE__BODY_HELLO_RESULT) {
        x->refused = !e->hello_result->accepted;
        x->reason = (int)e->hello_result->reason;
    }
    fl_proto_free(e);
}

static void in_on_close(fl_net_conn_t *conn, int reason)
{
    intruder_t *x = fl_net_conn_data(conn);
    x->closed = 1;
    x->close_reason = reason;
}

/* The server process over TLS: TLS 1.3 handshakes (openssl s_client), TLS
 * 1.2 refused, an unenrolled key refused with its reason, an oversized
 * frame, a frame over the limit before a hello, a connection that never
 * says hello and garbage each close only their connection; the server
 * keeps serving and exits 0 on SIGTERM. */
START_TEST(test_process_tls_faults)
{
    char dir[256], certs[300], log[300], ini[300], ca[400];
    char text[2048], *r = NULL;
    signal(SIGPIPE, SIG_IGN); /* net writes with write(2) */
    fl_test_tmpdir(dir, sizeof dir);
    it_make_ca(dir, certs, sizeof certs);
    int port = free_port(), mport = free_port();
    snprintf(ini, sizeof ini, "%s/server.ini", dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    snprintf(ca, sizeof ca, "%s/ca.crt", certs);
    snprintf(text, sizeof text,
             "[server]\nstate = %s\nlisten = 127.0.0.1\nport = %d\n"
             "tls-cert = %s/server.crt\ntls-key = %s/server.key\n"
             "metrics-port = %d\nmax-frame = 65536\n"
             "hello-timeout-ms = 300\n",
             dir, port, certs, certs, mport);
    write_file(ini, text);
    pid_t pid = spawn_config(ini, log);
    wait_port(port);

    ck_assert_int_eq(fl_test_system("openssl s_client -connect 127.0.0.1:%d "
                                    "-tls1_3 -CAfile %s -verify_return_error "
                                    "</dev/null 2>/dev/null | grep -q "
                                    "'TLSv1.3'",
                                    port, ca),
                     0);
    ck_assert_int_ne(fl_test_system("openssl s_client -connect 127.0.0.1:%d "
                                    "-tls1_2 -CAfile %s </dev/null "
                                    ">/dev/null 2>&1",
                                    port, ca),
                     0);
    /* Garbage on the TLS port. */
    r = http_get(port, "/metrics");
    free(r);

    uv_loop_t loop;
    uv_loop_init(&loop);
    fl_net_tls_t *ctls = NULL;
    fl_net_tls_opts_t to = {.ca_file = ca};
    ck_assert_int_eq(fl_net_tls_client_new(&to, &ctls), 0);
    intruder_t x[4];
    memset(x, 0, sizeof x);
    crypto_sign_keypair(x[0].pk, x[0].sk);
    x[1].big = 100000; /* above the server's max-frame */
    /* A hello of 8 KB, below max-frame but above the limit before a hello:
     * the connection is closed unread (a hello that big would be answered
     * "refused" if it were read). */
    crypto_sign_keypair(x[2].pk, x[2].sk);
    x[2].pad = 8000;
    x[3].silent = 1; /* no hello: closed at hello-timeout-ms, not at the
                        idle timeout (120 s) */
    for (int i = 0; i < 4; i++) {
        fl_net_connect_opts_t o;
        fl_net_connect_opts_init(&o);
        o.host = "127.0.0.1";
        o.port = port;
        o.tls = ctls;
        o.cb.on_open = ic_on_open;
        o.cb.on_frame = in_on_frame;
        o.cb.on_close = in_on_close;
        o.data = &x[i];
        ck_assert_int_eq(fl_net_connect(&loop, &o, NULL), 0);
    }
    fl_net_tls_free(ctls);
    RUN_LOOP_UNTIL(&loop,
                   x[0].closed && x[1].closed && x[2].closed && x[3].closed);
    ck_assert(x[0].refused);
    ck_assert_int_eq(x[0].reason, FLOTILLA__ABORT_REASON__ABORT_NOT_ENROLLED);
    for (int i = 1; i < 4; i++)
        ck_assert(!x[i].refused);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
    ck_assert_int_eq(uv_loop_close(&loop), 0);

    /* Still serving; the refusal is counted. */
    r = http_get(mport, "/metrics");
    ck_assert_ptr_nonnull(r);
    char *body = strstr(r, "\r\n\r\n");
    ck_assert_ptr_nonnull(body);
    ck_assert_double_eq(metric_value(body + 4, "flotilla_hellos_refused_total"),
                        1);
    free(r);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert_int_eq(fl_test_wait_exit(pid, 30), 0);
    fl_test_rmtree(dir);
}
END_TEST

/* ---- the real client agent against the real server ----------------------
 * Devices run client/'s agent (hello, verified model download, local
 * training on the thread pool, codec, secure aggregation) connected to the
 * server in-process through a pair of queues, so both protocol sides as
 * built are checked against each other over two rounds. */

typedef struct qframe {
    struct qframe *next;
    size_t len;
    uint8_t data[];
} qframe_t;

typedef struct {
    fl_server_peer_t *peer;
    fl_client_agent_t *agent;
    qframe_t *to_server, *to_client; /* FIFO heads */
    int close_asked, closed;
    uv_timer_t pump;
    int rounds_ok, rounds_failed, refused;
    uint64_t model_version;
} duct_t;

static void duct_push(qframe_t **q, const uint8_t *p, size_t len)
{
    qframe_t *f = fl_malloc(sizeof *f + len);
    ck_assert_ptr_nonnull(f);
    f->next = NULL;
    f->len = len;
    memcpy(f->data, p, len);
    while (*q)
        q = &(*q)->next;
    *q = f;
}

static qframe_t *duct_pop(qframe_t **q)
{
    qframe_t *f = *q;
    if (f)
        *q = f->next;
    return f;
}

static void duct_pump(uv_timer_t *t);

static void duct_kick(duct_t *d)
{
    if (!d->closed)
        uv_timer_start(&d->pump, duct_pump, 0, 0);
}

static int srv_side_send(void *ctx, const uint8_t *p, size_t len)
{
    duct_t *d = ctx;
    duct_push(&d->to_client, p, len);
    duct_kick(d);
    return 0;
}

static void srv_side_close(void *ctx)
{
    duct_t *d = ctx;
    d->close_asked = 1;
    duct_kick(d);
}

static int cli_side_send(void *io, const uint8_t *p, size_t len)
{
    duct_t *d = io;
    if (d->close_asked)
        return FL_ECLOSED;
    duct_push(&d->to_server, p, len);
    duct_kick(d);
    return 0;
}

static void cli_side_close(void *io, int reason)
{
    duct_t *d = io;
    d->close_asked = 1;
    duct_kick(d);
}

static const fl_server_peer_ops_t duct_srv_ops = {.send = srv_side_send,
                                                  .close = srv_side_close};
static const fl_client_io_t duct_cli_io = {cli_side_send, cli_side_close};

/* Delivers what is queued both ways; a close goes through once the frames
 * queued before it are delivered. */
static void duct_pump(uv_timer_t *t)
{
    duct_t *d = t->data;
    for (int i = 0; i < 256 && !d->closed; i++) {
        qframe_t *f = duct_pop(&d->to_server);
        if (f) {
            fl_server_peer_frame(d->peer, f->data, f->len);
            fl_free(f);
            continue;
        }
        f = duct_pop(&d->to_client);
        if (f) {
            fl_client_agent_on_frame(d->agent, f->data, f->len);
            fl_free(f);
            continue;
        }
        if (d->close_asked) {
            d->closed = 1;
            fl_server_peer_closed(d->peer);
            fl_client_agent_disconnected(d->agent);
        }
        return;
    }
    duct_kick(d);
}

static void agent_event(void *ctx, const fl_client_event_t *ev)
{
    duct_t *d = ctx;
    switch (ev->kind) {
    case FL_CLIENT_EV_ROUND_DONE:
        if (ev->status == 0)
            d->rounds_ok++;
        else
            d->rounds_failed++;
        break;
    case FL_CLIENT_EV_MODEL:
        d->model_version = ev->version;
        break;
    case FL_CLIENT_EV_REFUSED:
    case FL_CLIENT_EV_MODEL_REFUSED:
    case FL_CLIENT_EV_ERROR:
        d->refused = 1;
        break;
    default:
        break;
    }
}

#define AG_N 3

START_TEST(test_agents_two_rounds)
{
    /* Case 0: dense 8-bit; case 1: public random-k with the Hadamard
     * rotation and 4-bit values. */
    const int sparse = _i;
    fixture_t fx;
    fake_t keys[AG_N];
    duct_t du[AG_N];
    fl_artifact_key_t *id[AG_N];
    fl_data_t *data[AG_N];
    fl_client_agent_t *ag[AG_N];
    char err[512] = "", path[600], key[400], cdir[400];
    const fl_cfg_table_t *t = fl_server_config_table();
    memset(du, 0, sizeof du);
    fixture_new(&fx, AG_N, keys, 0);

    uint8_t sign_pk[32];
    it_signing_key(fx.dir, key, sizeof key, sign_pk);
    it_tiny_model(fx.dir, 3, path, sizeof path, NULL);

    static const char *const kv[][2] = {
        {"cohort", "3"},
        {"over-selection", "1.0"},
        {"min-clients", "3"},
        {"rounds", "2"},
        {"round-interval-ms", "50"},
        {"local-steps", "2"},
        {"batch-size", "2"},
        {"seq-len", "16"},
        {"noise-multiplier", "0.3"},
        {"population", "30"},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(kv); i++)
        ck_assert_int_eq(
            fl_cfg_set(t, &fx.cfg, kv[i][0], kv[i][1], err, sizeof err), 0);
    if (sparse) {
        static const char *const kv2[][2] = {{"support", "random-k"},
                                             {"support-size", "2000"},
                                             {"rotate", "true"},
                                             {"quant-bits", "4"}};
        for (size_t i = 0; i < FL_ARRAY_LEN(kv2); i++)
            ck_assert_int_eq(
                fl_cfg_set(t, &fx.cfg, kv2[i][0], kv2[i][1], err, sizeof err),
                0);
    }
    snprintf(err, sizeof err, "%s.key", key);
    fl_cfg_set(t, &fx.cfg, "signing-key", err, err + 256, 256);
    fl_cfg_set(t, &fx.cfg, "init-model", path, err, sizeof err);

    /* The devices: identity keys enrolled, their own text and state. */
    fl_tokenizer_t *tok = NULL;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    snprintf(path, sizeof path, "%s/enrolled", fx.dir);
    for (int i = 0; i < AG_N; i++) {
        uint8_t pk[32];
        ck_assert_int_eq(fl_artifact_key_generate(&id[i]), 0);
        fl_artifact_key_public(id[i], pk);
        ck_assert_int_eq(
            fl_server_enrol_edit(path, pk, NULL, 1, err, sizeof err), 0);
        char text[2048];
        size_t n = 0;
        for (int k = 0; k < 40; k++)
            n += (size_t)snprintf(text + n, sizeof text - n,
                                  "device %d says line %d of its text. ", i, k);
        fl_data_opts_t dopts;
        fl_data_opts_init(&dopts);
        dopts.chunk_tokens = 64;
        ck_assert_int_eq(fl_data_load_text(&dopts, tok, (const uint8_t *)text,
                                           n, "local.txt", &data[i]),
                         0);
    }
    fixture_start(&fx, NULL, NULL);
    for (int i = 0; i < AG_N; i++) {
        snprintf(cdir, sizeof cdir, "%s/device%d", fx.dir, i);
        ck_assert_int_eq(fl_mkdir_p(cdir, 0700), 0);
        fl_client_agent_opts_t o;
        memset(&o, 0, sizeof o);
        o.loop = &fx.loop;
        o.state_dir = cdir;
        o.identity = id[i];
        memcpy(o.signing_pub, sign_pk, 32);
        o.data = data[i];
        o.seed = 100 + (uint64_t)i;
        o.on_event = agent_event;
        o.ctx = &du[i];
        ck_assert_int_eq(fl_client_agent_new(&o, &ag[i]), 0);
        du[i].agent = ag[i];
        uv_timer_init(&fx.loop, &du[i].pump);
        du[i].pump.data = &du[i];
        fl_client_agent_connected(ag[i], &duct_cli_io, &du[i]);
        ck_assert_int_eq(
            fl_server_peer_open(fx.s, &duct_srv_ops, &du[i], &du[i].peer), 0);
    }
    /* rounds = 2: the server stops after the second round. */
    RUN_UNTIL(&fx,
              fx.s->stopping && du[0].closed && du[1].closed && du[2].closed);
    for (int i = 0; i < AG_N; i++) {
        ck_assert_msg(!du[i].refused, "device %d refused something", i);
        ck_assert_msg(du[i].rounds_ok == 2,
                      "device %d: %d rounds ok, %d failed", i, du[i].rounds_ok,
                      du[i].rounds_failed);
        ck_assert_uint_ge(du[i].model_version, 2); /* fetched round 1's */
    }
    const fl_server_state_t *st = fl_server_state(fx.s);
    ck_assert_uint_eq(st->round, 2);
    ck_assert_uint_eq(st->model_version, 3);
    ck_assert(st->epsilon > 0);
    ck_assert_uint_eq(fl_server_metrics(fx.s)->training_reports, 2 * AG_N);

    for (int i = 0; i < AG_N; i++) {
        fl_client_agent_free(ag[i]);
        uv_close((uv_handle_t *)&du[i].pump, NULL);
    }
    for (int i = 0; i < 200 && uv_run(&fx.loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
    for (int i = 0; i < AG_N; i++) {
        fl_data_free(data[i]);
        fl_artifact_key_free(id[i]);
        while (du[i].to_client)
            fl_free(duct_pop(&du[i].to_client));
        while (du[i].to_server)
            fl_free(duct_pop(&du[i].to_server));
    }
    fl_tokenizer_free(tok);
    fixture_free(&fx, keys, 0);
}
END_TEST

Suite *check_server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("units");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_config_defaults_and_flags);
    tcase_add_test(tc, test_config_every_flag);
    tcase_add_test(tc, test_config_refusals);
    tcase_add_test(tc, test_config_example_file);
    tcase_add_test(tc, test_enrol_file);
    tcase_add_test(tc, test_hello_check);
    tcase_add_test(tc, test_state_roundtrip);
    tcase_add_test(tc, test_state_without_dp);
    tcase_add_test(tc, test_enrol_edit_keeps_dir_owner);
    tcase_add_test(tc, test_state_corruption);
    tcase_add_test(tc, test_metrics_render);
    tcase_add_test(tc, test_http_respond);
    tcase_add_test(tc, test_hello_over_peers);
    tcase_add_test(tc, test_round_orchestrator);
    tcase_add_test(tc, test_round_budget_spent);
    tcase_add_test(tc, test_round_left_out_is_told);
    tcase_add_loop_test(tc, test_round_announces_new_version, 0, 3);
    tcase_add_test(tc, test_announce_oldest_first);
    suite_add_tcase(s, tc);
    TCase *pc = tcase_create("process");
    tcase_set_timeout(pc, 60);
    tcase_add_test(pc, test_process_metrics_sighup_sigterm);
    tcase_add_test(pc, test_process_refuses_corrupt_state);
    tcase_add_test(pc, test_cli_enrol);
    suite_add_tcase(s, pc);
    TCase *ic_ = tcase_create("integration");
    tcase_set_timeout(ic_, 80);
    tcase_add_loop_test(ic_, test_integration_tls_round, 0, 6);
    tcase_add_test(ic_, test_crash_sigkill_resume);
    tcase_add_loop_test(ic_, test_agents_two_rounds, 0, 2);
    tcase_add_test(ic_, test_process_tls_faults);
    suite_add_tcase(s, ic_);
    return s;
}
