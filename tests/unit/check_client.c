/* tests/unit/check_client.c — the device daemon's eligibility rules, state
 * files and local inference socket. */
#include "client/client.h"
#include "tests/unit/testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

START_TEST(test_windows)
{
    fl_client_windows_t w;
    ck_assert_int_eq(fl_client_windows_parse("", &w), 0);
    ck_assert_int_eq(w.n, 0);
    ck_assert(fl_client_windows_contains(&w, 700));
    ck_assert_int_eq(fl_client_windows_parse("22:00-06:30, 12:00-13:00", &w),
                     0);
    ck_assert_int_eq(w.n, 2);
    ck_assert(fl_client_windows_contains(&w, 23 * 60));
    ck_assert(fl_client_windows_contains(&w, 0));
    ck_assert(fl_client_windows_contains(&w, 6 * 60 + 29));
    ck_assert(!fl_client_windows_contains(&w, 6 * 60 + 30));
    ck_assert(fl_client_windows_contains(&w, 12 * 60 + 30));
    ck_assert(!fl_client_windows_contains(&w, 13 * 60));
    ck_assert(!fl_client_windows_contains(&w, 21 * 60 + 59));
    static const char *bad[] = {"22:00",     "25:00-01:00",  "10:60-11:00",
                                "1:00-2:00", "10:00-11:00,", "10:00-11:00;x"};
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++)
        ck_assert_msg(fl_client_windows_parse(bad[i], &w) == FL_EFORMAT, "%s",
                      bad[i]);
}
END_TEST

static void put(const char *dir, const char *sub, const char *name,
                const char *val)
{
    char p[512];
    snprintf(p, sizeof p, "%s/class/power_supply/%s", dir, sub);
    ck_assert_int_eq(fl_mkdir_p(p, 0755), 0);
    snprintf(p, sizeof p, "%s/class/power_supply/%s/%s", dir, sub, name);
    ck_assert_int_eq(fl_file_write_atomic(p, val, strlen(val), 0644), 0);
}

START_TEST(test_ac_power)
{
    char dir[256];
    int on;
    fl_test_tmpdir(dir, sizeof dir);
    /* No power_supply class at all: a server or desktop. */
    ck_assert_int_eq(fl_client_on_ac_power(dir, &on), 0);
    ck_assert_int_eq(on, 1);
    put(dir, "BAT0", "type", "Battery\n");
    put(dir, "AC", "type", "Mains\n");
    put(dir, "AC", "online", "0\n");
    ck_assert_int_eq(fl_client_on_ac_power(dir, &on), 0);
    ck_assert_int_eq(on, 0);
    put(dir, "AC", "online", "1\n");
    ck_assert_int_eq(fl_client_on_ac_power(dir, &on), 0);
    ck_assert_int_eq(on, 1);
    put(dir, "AC", "online", "0\n");
    put(dir, "usb", "type", "USB_C\n");
    put(dir, "usb", "online", "1\n");
    ck_assert_int_eq(fl_client_on_ac_power(dir, &on), 0);
    ck_assert_int_eq(on, 1);

    fl_client_config_t cfg = {.ac_only = 1, .max_load = 2.0};
    fl_client_windows_t w;
    ck_assert_int_eq(fl_client_windows_parse("01:00-02:00", &w), 0);
    fl_client_conditions_t now = {
        .minute_of_day = 90, .load1 = 0.5, .on_ac = 1};
    char why[64];
    ck_assert_int_eq(fl_client_eligible(&cfg, &w, &now, why, sizeof why), 1);
    now.on_ac = 0;
    ck_assert_int_eq(fl_client_eligible(&cfg, &w, &now, why, sizeof why), 0);
    ck_assert_str_eq(why, "on battery");
    now.on_ac = 1;
    now.load1 = 3;
    ck_assert_int_eq(fl_client_eligible(&cfg, &w, &now, why, sizeof why), 0);
    now.load1 = 0;
    now.minute_of_day = 200;
    ck_assert_int_eq(fl_client_eligible(&cfg, &w, &now, why, sizeof why), 0);
    ck_assert_str_eq(why, "outside the training windows");
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_residual_file)
{
    char dir[256], path[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/residual.bin", dir);
    float r[1000];
    for (int i = 0; i < 1000; i++)
        r[i] = (float)i * 0.25f - 7;
    float *back = NULL;
    size_t n;
    uint64_t ver;
    ck_assert_int_eq(fl_client_residual_load(path, 1000, &back, &n, &ver),
                     FL_ENOENT);
    ck_assert_int_eq(fl_client_residual_save(path, r, 1000, 42), 0);
    ck_assert_int_eq(fl_client_residual_load(path, 1000, &back, &n, &ver), 0);
    ck_assert_uint_eq(n, 1000);
    ck_assert_uint_eq(ver, 42);
    ck_assert_mem_eq(back, r, sizeof r);
    fl_free(back);
    ck_assert_int_eq(fl_client_residual_load(path, 999, &back, &n, &ver),
                     FL_ETOOBIG);
    /* One flipped bit anywhere is found. */
    ck_assert_int_eq(fl_test_system("printf '\\001' | dd of='%s' bs=1 seek=500 "
                                    "conv=notrunc status=none",
                                    path),
                     0);
    ck_assert_int_eq(fl_client_residual_load(path, 1000, &back, &n, &ver),
                     FL_EFORMAT);
    ck_assert_ptr_null(back);
    /* A truncated file. */
    ck_assert_int_eq(fl_client_residual_save(path, r, 1000, 42), 0);
    ck_assert_int_eq(truncate(path, 3000), 0);
    ck_assert_int_eq(fl_client_residual_load(path, 1000, &back, &n, &ver),
                     FL_ETRUNC);
    ck_assert_int_eq(fl_test_system("printf 'XXXXXXXX' | dd of='%s' bs=1 "
                                    "seek=0 conv=notrunc status=none",
                                    path),
                     0);
    ck_assert_int_eq(fl_client_residual_load(path, 1000, &back, &n, &ver),
                     FL_EMAGIC);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_journal)
{
    char dir[256], path[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/journal.json", dir);
    for (int i = 0; i < FL_CLIENT_JOURNAL_KEEP + 10; i++) {
        fl_client_journal_entry_t e = {.round = (uint64_t)i,
                                       .model_version = (uint64_t)i / 2,
                                       .status = i % 7 == 0 ? FL_ETIMEOUT : 0,
                                       .loss_before = 3.5f,
                                       .loss_after = 3.25f,
                                       .num_examples = 100 + (uint32_t)i,
                                       .time_ms = 1000u * (uint64_t)i};
        ck_assert_int_eq(fl_client_journal_append(path, &e), 0);
    }
    fl_client_journal_entry_t got[200];
    size_t n, bad;
    ck_assert_int_eq(fl_client_journal_read(path, got, 200, &n, &bad), 0);
    ck_assert_uint_eq(n, FL_CLIENT_JOURNAL_KEEP);
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_eq(got[0].round, 10);
    ck_assert_uint_eq(got[n - 1].round, FL_CLIENT_JOURNAL_KEEP + 9);
    ck_assert_uint_eq(got[n - 1].num_examples,
                      100 + FL_CLIENT_JOURNAL_KEEP + 9);
    ck_assert_float_eq(got[n - 1].loss_after, 3.25f);
    ck_assert_int_eq(got[4].status, FL_ETIMEOUT); /* round 14 */
    /* A damaged line is skipped and counted. */
    ck_assert_int_eq(fl_test_system("echo '{\"round\": \"x\"}' >> '%s'", path),
                     0);
    ck_assert_int_eq(fl_client_journal_read(path, got, 200, &n, &bad), 0);
    ck_assert_uint_eq(bad, 1);
    ck_assert_uint_eq(n, FL_CLIENT_JOURNAL_KEEP);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_infer_parse)
{
    fl_client_gen_req_t r;
    char prompt[FL_CLIENT_INFER_MAX_PROMPT + 1], why[160];
    const char *ok =
        "{\"prompt\": \"Once upon\", \"max_tokens\": 5, "
        "\"temperature\": 0, \"top_p\": 0.5, \"top_k\": 3, \"seed\": 9}";
    ck_assert_int_eq(
        fl_client_infer_parse(ok, strlen(ok), &r, prompt, why, sizeof why), 0);
    ck_assert_str_eq(r.prompt, "Once upon");
    ck_assert_int_eq(r.max_tokens, 5);
    ck_assert_float_eq(r.temperature, 0);
    ck_assert_float_eq(r.top_p, 0.5f);
    ck_assert_int_eq(r.top_k, 3);
    ck_assert_uint_eq(r.seed, 9);
    static const char *bad[] = {
        "not json",
        "[1]",
        "{}",
        "{\"prompt\": 3}",
        "{\"prompt\": \"a\", \"max_tokens\": 0}",
        "{\"prompt\": \"a\", \"max_tokens\": 100000}",
        "{\"prompt\": \"a\", \"temperature\": -1}",
        "{\"prompt\": \"a\", \"top_p\": 0}",
        "{\"prompt\": \"a\", \"extra\": 1}",
        "{\"prompt\": \"a\\u0000b\"}",
        "{\"prompt\": \"a\", \"prompt\": \"b\"}",
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++)
        ck_assert_msg(fl_client_infer_parse(bad[i], strlen(bad[i]), &r, prompt,
                                            why, sizeof why) == FL_EFORMAT,
                      "%s", bad[i]);
    /* The prompt size limit. */
    size_t big = FL_CLIENT_INFER_MAX_PROMPT + 100;
    char *line = malloc(big + 32);
    int n = snprintf(line, big + 32, "{\"prompt\": \"");
    memset(line + n, 'a', big);
    memcpy(line + n + big, "\"}", 3);
    ck_assert_int_eq(
        fl_client_infer_parse(line, strlen(line), &r, prompt, why, sizeof why),
        FL_EFORMAT);
    ck_assert_msg(strstr(why, "longer") != NULL, "%s", why);
    free(line);
}
END_TEST

/* ---- the socket, with a fake generator: it echoes the prompt reversed
 * and, for the prompt "bytes", returns invalid UTF-8. */
static int fake_gen(void *ctx, const fl_client_gen_req_t *req, fl_buf_t *out,
                    fl_client_gen_stats_t *st)
{
    (void)ctx;
    if (strcmp(req->prompt, "fail") == 0)
        return FL_EIO;
    if (strcmp(req->prompt, "bytes") == 0)
        return fl_buf_append(out,
                             "a\xff"
                             "b",
                             3);
    size_t n = strlen(req->prompt);
    for (size_t i = 0; i < n && (int)i < req->max_tokens; i++)
        fl_buf_append_u8(out, (uint8_t)req->prompt[n - 1 - i]);
    st->tokens = (int)FL_MIN(n, (size_t)req->max_tokens);
    st->first_token_ms = 1;
    st->total_ms = 2;
    return 0;
}

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    fl_client_infer_t *srv;
} loop_ctx_t;

static void on_stop(uv_async_t *a)
{
    loop_ctx_t *lc = a->data;
    fl_client_infer_free(lc->srv);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_thread(void *arg)
{
    loop_ctx_t *lc = arg;
    uv_run(&lc->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int connect_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Reads one line (without the newline) into buf; returns its length, or
 * -1 at end of stream. */
static int read_line(int fd, char *buf, size_t len)
{
    size_t n = 0;
    while (n + 1 < len) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r <= 0)
            return n ? (int)n : -1;
        if (ch == '\n')
            break;
        buf[n++] = ch;
    }
    buf[n] = '\0';
    return (int)n;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        ck_assert_int_gt(w, 0);
        s += w;
        n -= (size_t)w;
    }
}

START_TEST(test_infer_socket)
{
    char dir[256], path[300], line[4096];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/infer.sock", dir);
    loop_ctx_t lc;
    uv_loop_init(&lc.loop);
    ck_assert_int_eq(
        fl_client_infer_new(&lc.loop, path, fake_gen, NULL, &lc.srv), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0660);
    uv_async_init(&lc.loop, &lc.stop, on_stop);
    lc.stop.data = &lc;
    pthread_t th;
    pthread_create(&th, NULL, loop_thread, &lc);

    int fd = connect_unix(path);
    /* Two requests in one write, then a malformed one, then a good one: the
     * answers come in order and the connection survives the error. */
    const char *reqs =
        "{\"prompt\": \"abc\"}\n{\"prompt\": \"hello\", \"max_tokens\": 2}\n"
        "{\"prompt\": 1}\n{\"prompt\": \"bytes\"}\n{\"prompt\": \"fail\"}\n";
    send_all(fd, reqs, strlen(reqs));
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"text\":\"cba\"") &&
                      strstr(line, "\"tokens\":3"),
                  "%s", line);
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"text\":\"ol\""), "%s", line);
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"error\":\"'prompt' (a string) is required\""),
                  "%s", line);
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"text\":\"a\\uFFFDb\""), "%s", line);
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"error\""), "%s", line);
    /* A second client at the same time is served. */
    int fd2 = connect_unix(path);
    send_all(fd2, "{\"prompt\": \"xy\"}\n", 17);
    ck_assert_int_gt(read_line(fd2, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "\"text\":\"yx\""), "%s", line);
    close(fd2);
    /* An over-long line: an error, then the connection is closed. */
    size_t big = FL_CLIENT_INFER_MAX_LINE + 10;
    char *junk = malloc(big);
    memset(junk, 'x', big);
    send_all(fd, junk, big);
    free(junk);
    ck_assert_int_gt(read_line(fd, line, sizeof line), 0);
    ck_assert_msg(strstr(line, "too long"), "%s", line);
    ck_assert_int_eq(read_line(fd, line, sizeof line), -1);
    close(fd);

    uv_async_send(&lc.stop);
    pthread_join(th, NULL);
    ck_assert_int_eq(uv_loop_close(&lc.loop), 0);
    fl_test_rmtree(dir);
}
END_TEST

static void stage_file(const char *state, uint64_t v, const char *content)
{
    char dir[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX + 16];
    ck_assert_int_eq(fl_client_store_staging(state, v, dir, sizeof dir), 0);
    snprintf(p, sizeof p, "%s/model.bin", dir);
    ck_assert_int_eq(fl_file_write_atomic(p, content, strlen(content), 0600),
                     0);
}

static void check_current(const char *state, uint64_t want, const char *content)
{
    char dir[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX + 16];
    uint64_t v;
    uint8_t *data;
    size_t len;
    ck_assert_int_eq(fl_client_store_current(state, &v, dir, sizeof dir), 0);
    ck_assert_uint_eq(v, want);
    snprintf(p, sizeof p, "%s/model.bin", dir);
    ck_assert_int_eq(fl_file_read_all(p, 100, &data, &len), 0);
    ck_assert_str_eq((char *)data, content);
    fl_free(data);
}

START_TEST(test_model_store)
{
    char state[256], dir[FL_CLIENT_STORE_PATH_MAX];
    uint64_t v;
    fl_test_tmpdir(state, sizeof state);
    ck_assert_int_eq(fl_client_store_current(state, &v, dir, sizeof dir),
                     FL_ENOENT);
    stage_file(state, 1, "one");
    ck_assert_int_eq(fl_client_store_commit(state, 1), 0);
    check_current(state, 1, "one");
    ck_assert_int_eq(fl_client_store_previous(state, &v, dir, sizeof dir),
                     FL_ENOENT);
    ck_assert_int_eq(fl_client_store_rollback(state), FL_ENOENT);
    stage_file(state, 2, "two");
    ck_assert_int_eq(fl_client_store_commit(state, 2), 0);
    check_current(state, 2, "two");
    ck_assert_int_eq(fl_client_store_previous(state, &v, dir, sizeof dir), 0);
    ck_assert_uint_eq(v, 1);
    /* A third version prunes the first; a download of 5 in progress stays. */
    stage_file(state, 5, "five, partial");
    stage_file(state, 3, "three");
    ck_assert_int_eq(fl_client_store_commit(state, 3), 0);
    check_current(state, 3, "three");
    ck_assert_int_eq(
        fl_test_system("test ! -e '%s/models/1' && test -d '%s/models/2' && "
                       "test -d '%s/models/.staging-5'",
                       state, state, state),
        0);
    /* Version 3 fails to load: back to 2, and 3 is gone. */
    ck_assert_int_eq(fl_client_store_rollback(state), 0);
    check_current(state, 2, "two");
    ck_assert_int_eq(fl_test_system("test ! -e '%s/models/3'", state), 0);
    ck_assert_int_eq(fl_client_store_previous(state, &v, dir, sizeof dir),
                     FL_ENOENT);
    /* The staged download resumes where it stopped. */
    ck_assert_int_eq(fl_client_store_staging(state, 5, dir, sizeof dir), 0);
    ck_assert_int_eq(fl_test_system("grep -q partial '%s/model.bin'", dir), 0);
    /* A damaged pointer file is an error, not a silent reset. */
    ck_assert_int_eq(
        fl_test_system("echo garbage > '%s/models/current'", state), 0);
    ck_assert_int_eq(fl_client_store_current(state, &v, dir, sizeof dir),
                     FL_EFORMAT);
    fl_test_rmtree(state);
}
END_TEST

START_TEST(test_example_config)
{
    /* The shipped example sets every option, and they all parse. */
    char path[512], err[512] = "";
    fl_client_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    fl_test_srcpath(path, sizeof path, "deploy/client.example.ini");
    ck_assert_int_eq(
        fl_cfg_defaults(&fl_client_config_table, &cfg, err, sizeof err), 0);
    ck_assert_msg(fl_cfg_load_file(&fl_client_config_table, &cfg, path, err,
                                   sizeof err) == 0,
                  "%s", err);
    ck_assert_int_eq(cfg.ac_only, 1);
    ck_assert_str_eq(cfg.windows, "22:00-06:00");
    ck_assert_double_eq(cfg.max_load, 2.0);
    for (size_t i = 0; i < fl_client_config_table.nopts; i++)
        ck_assert_msg(fl_test_system("grep -Eq '^;? ?%s =' '%s'",
                                     fl_client_config_table.opts[i].name,
                                     path) == 0,
                      "option %s is not in the example",
                      fl_client_config_table.opts[i].name);
    fl_cfg_free(&fl_client_config_table, &cfg);
}
END_TEST

Suite *check_client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("daemon");
    tcase_add_test(tc, test_windows);
    tcase_add_test(tc, test_ac_power);
    tcase_add_test(tc, test_residual_file);
    tcase_add_test(tc, test_journal);
    tcase_add_test(tc, test_infer_parse);
    tcase_add_test(tc, test_infer_socket);
    tcase_add_test(tc, test_model_store);
    tcase_add_test(tc, test_example_config);
    suite_add_tcase(s, tc);
    return s;
}
