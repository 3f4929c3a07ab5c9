/* tests/unit/check_common.c — errors, allocation, buffers, configuration,
 * hex, files and randomness. */
#include "common/common.h"
#include "common/bitpack.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

START_TEST(test_error_table)
{
    ck_assert_str_eq(fl_strerror(FL_ENOMEM), "out of memory");
    ck_assert_str_eq(fl_err_name(FL_ENOMEM), "FL_ENOMEM");
    ck_assert_str_eq(fl_err_name(FL_ETOOBIG), "FL_ETOOBIG");
    ck_assert_str_eq(fl_strerror(0), "success");
    ck_assert_str_eq(fl_strerror(12345), "unknown error");
    /* Every code has its own name and message. */
    for (int e = FL_E__BASE + 1; e < FL_E__END; e++) {
        ck_assert_int_lt(e, 0);
        ck_assert_str_ne(fl_strerror(e), "unknown error");
        for (int f = e + 1; f < FL_E__END; f++)
            ck_assert_str_ne(fl_err_name(e), fl_err_name(f));
    }
}
END_TEST

START_TEST(test_alloc_injection)
{
    fl_alloc_fail_after(2);
    void *a = fl_malloc(10);
    void *b = fl_malloc(10);
    void *c = fl_malloc(10);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_null(b);
    ck_assert_ptr_nonnull(c);
    fl_free(a);
    fl_free(c);
    fl_alloc_fail_after(0);
    ck_assert_ptr_null(fl_calloc(SIZE_MAX / 2, 4)); /* overflow refused */
    size_t out;
    ck_assert_int_eq(fl_mul_size(SIZE_MAX, 2, &out), FL_ETOOBIG);
    ck_assert_int_eq(fl_mul_size(3, 4, &out), 0);
    ck_assert_uint_eq(out, 12);
}
END_TEST

START_TEST(test_buf_limits)
{
    fl_buf_t b;
    fl_buf_init(&b, 10);
    ck_assert_int_eq(fl_buf_append(&b, "hello", 5), 0);
    ck_assert_int_eq(fl_buf_append(&b, "world", 5), 0);
    ck_assert_int_eq(fl_buf_append(&b, "!", 1), FL_ETOOBIG);
    ck_assert_uint_eq(b.len, 10);
    ck_assert_mem_eq(b.data, "helloworld", 10);
    fl_buf_consume(&b, 5);
    ck_assert_mem_eq(b.data, "world", 5);
    ck_assert_int_eq(fl_buf_printf(&b, "%d", 42), 0);
    ck_assert_mem_eq(b.data, "world42", 7);
    ck_assert_int_eq(fl_buf_printf(&b, "%s", "toolong"), FL_ETOOBIG);
    ck_assert_uint_eq(b.len, 7);
    /* A failed allocation leaves the buffer as it was. */
    fl_buf_t c;
    fl_buf_init(&c, 1 << 20);
    fl_alloc_fail_after(1);
    ck_assert_int_eq(fl_buf_append(&c, "x", 1), FL_ENOMEM);
    ck_assert_uint_eq(c.len, 0);
    fl_alloc_fail_after(0);
    fl_buf_free(&b);
    fl_buf_free(&c);
}
END_TEST

/* ---- configuration ---- */
typedef struct {
    int64_t rounds;
    double lr;
    int secagg;
    char *name;
    int graph;
} cfg_t;

static int validate_name(const void *field, char *why, size_t whylen)
{
    const char *const *s = field;
    if (*s && strchr(*s, ' ')) {
        snprintf(why, whylen, "must not contain spaces");
        return FL_EINVAL;
    }
    return 0;
}

static const fl_cfg_opt_t cfg_opts[] = {
    {"rounds", FL_CFG_INT, offsetof(cfg_t, rounds), "10", 1, 1000, NULL, NULL,
     "number of rounds"},
    {"learning-rate", FL_CFG_DOUBLE, offsetof(cfg_t, lr), "0.5", 0, 10, NULL,
     NULL, "server learning rate"},
    {"secagg", FL_CFG_BOOL, offsetof(cfg_t, secagg), "true", 1, 0, NULL, NULL,
     "secure aggregation"},
    {"name", FL_CFG_STRING, offsetof(cfg_t, name), "fleet", 1, 0, NULL,
     validate_name, "a name"},
    {"graph", FL_CFG_ENUM, offsetof(cfg_t, graph), "harary", 1, 0,
     "complete|harary", NULL, "neighbour graph"},
};
static const fl_cfg_table_t cfg_table = {cfg_opts, FL_ARRAY_LEN(cfg_opts),
                                         "sim"};

static int load(cfg_t *c, const char *text, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    int rc = fl_cfg_defaults(&cfg_table, c, err, errlen);
    ck_assert_int_eq(rc, 0);
    return fl_cfg_load_string(&cfg_table, c, text, strlen(text), "t.ini", err,
                              errlen);
}

START_TEST(test_config_file_ok)
{
    cfg_t c;
    char err[256] = "";
    int rc = load(&c,
                  "; comment\n[sim]\nrounds = 20\nlearning_rate = 0.25\n"
                  "secagg = no\nname = edge\ngraph = complete\n",
                  err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(c.rounds, 20);
    ck_assert_double_eq(c.lr, 0.25);
    ck_assert_int_eq(c.secagg, 0);
    ck_assert_str_eq(c.name, "edge");
    ck_assert_int_eq(c.graph, 0);
    fl_cfg_free(&cfg_table, &c);
}
END_TEST

START_TEST(test_config_file_errors)
{
    static const struct {
        const char *text;
        int rc;
        const char *msg;
    } cases[] = {
        {"rounds = 5\nbogus = 1\n", FL_EUNKNOWN_KEY,
         "t.ini:2: key 'bogus': unknown key"},
        {"\n\nrounds = 0\n", FL_ERANGE, "t.ini:3: key 'rounds': 0 is outside"},
        {"rounds = 5000\n", FL_ERANGE, "t.ini:1: key 'rounds'"},
        {"rounds = ten\n", FL_EFORMAT, "t.ini:1: key 'rounds': 'ten' is not"},
        {"learning-rate = nan\n", FL_EFORMAT, "t.ini:1: key 'learning-rate'"},
        {"secagg = maybe\n", FL_EFORMAT, "t.ini:1: key 'secagg'"},
        {"graph = ring\n", FL_ERANGE,
         "t.ini:1: key 'graph': 'ring' is not one"},
        {"name = a b\n", FL_EINVAL, "t.ini:1: key 'name': must not contain"},
        {"rounds = 5\nthis line is malformed\n", FL_EFORMAT,
         "t.ini:2: malformed line"},
        {"[server]\nrounds = 5\n", FL_EUNKNOWN_KEY,
         "t.ini:2: key 'rounds': unknown section [server]"},
        {"[sim\nrounds = 5\n", FL_EFORMAT, "t.ini:1: malformed line"},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(cases); i++) {
        cfg_t c;
        char err[256] = "";
        int rc = load(&c, cases[i].text, err, sizeof err);
        ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d (%s)", i, rc, err);
        ck_assert_msg(strncmp(err, cases[i].msg, strlen(cases[i].msg)) == 0,
                      "case %zu: got '%s' want '%s'", i, err, cases[i].msg);
        fl_cfg_free(&cfg_table, &c);
    }
    /* A line longer than the INI reader takes is refused, not split. */
    char longline[600];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "name = ", 7);
    longline[sizeof longline - 2] = '\n';
    longline[sizeof longline - 1] = '\0';
    cfg_t c;
    char err[256] = "";
    ck_assert_int_eq(load(&c, longline, err, sizeof err), FL_ETOOBIG);
    ck_assert_msg(strstr(err, "t.ini:1: line longer") != NULL, "%s", err);
    fl_cfg_free(&cfg_table, &c);
}
END_TEST

START_TEST(test_config_flags_override_file)
{
    char dir[256], path[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.ini", dir);
    const char *text = "rounds = 30\nname = fromfile\n";
    ck_assert_int_eq(fl_file_write_atomic(path, text, strlen(text), 0600), 0);

    char a0[] = "sim", a1[] = "--config", a3[] = "--rounds=40",
         a4[] = "--no-secagg", a5[] = "out", a6[] = "--graph",
         a7[] = "complete";
    char *argv[] = {a0, a1, path, a3, a4, a5, a6, a7, NULL};
    cfg_t c;
    memset(&c, 0, sizeof c);
    int rest = 0, help = 0;
    char err[256] = "";
    int rc = fl_cfg_parse_args(&cfg_table, &c, 8, argv, &rest, &help, err,
                               sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(c.rounds, 40);
    ck_assert_str_eq(c.name, "fromfile");
    ck_assert_int_eq(c.secagg, 0);
    ck_assert_int_eq(c.graph, 0);
    ck_assert_double_eq(c.lr, 0.5);
    ck_assert_int_eq(rest, 7);
    ck_assert_str_eq(argv[rest], "out");
    fl_cfg_free(&cfg_table, &c);

    char b1[] = "--rounds", b2[] = "0";
    char *argv2[] = {a0, b1, b2, NULL};
    memset(&c, 0, sizeof c);
    rc = fl_cfg_parse_args(&cfg_table, &c, 3, argv2, &rest, &help, err,
                           sizeof err);
    ck_assert_int_eq(rc, FL_ERANGE);
    ck_assert_msg(strstr(err, "'--rounds'") != NULL, "%s", err);
    fl_cfg_free(&cfg_table, &c);

    char d1[] = "--bogus";
    char *argv3[] = {a0, d1, NULL};
    memset(&c, 0, sizeof c);
    rc = fl_cfg_parse_args(&cfg_table, &c, 2, argv3, &rest, &help, err,
                           sizeof err);
    ck_assert_int_eq(rc, FL_EUSAGE);
    ck_assert_msg(strstr(err, "unknown option '--bogus'") != NULL, "%s", err);
    fl_cfg_free(&cfg_table, &c);

    /* An error in the file named by --config names that file. */
    const char *bad = "rounds = 1\nrounds = -3\n";
    ck_assert_int_eq(fl_file_write_atomic(path, bad, strlen(bad), 0600), 0);
    char *argv4[] = {a0, a1, path, NULL};
    memset(&c, 0, sizeof c);
    rc = fl_cfg_parse_args(&cfg_table, &c, 3, argv4, &rest, &help, err,
                           sizeof err);
    ck_assert_int_eq(rc, FL_ERANGE);
    char want[400];
    snprintf(want, sizeof want, "%s:2: key 'rounds'", path);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    fl_cfg_free(&cfg_table, &c);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_hex)
{
    uint8_t in[] = {0x00, 0x01, 0xab, 0xff}, out[4];
    char hex[9];
    fl_hex_encode(hex, in, 4);
    ck_assert_str_eq(hex, "0001abff");
    ck_assert_int_eq(fl_hex_decode(out, 4, "0001ABff", 8), 0);
    ck_assert_mem_eq(out, in, 4);
    ck_assert_int_eq(fl_hex_decode(out, 4, "0001abfg", 8), FL_EFORMAT);
    ck_assert_int_eq(fl_hex_decode(out, 4, "0001ab", 6), FL_EFORMAT);
}
END_TEST

START_TEST(test_files)
{
    char dir[256], path[300], sub[300];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/a.bin", dir);
    ck_assert_int_eq(fl_file_write_atomic(path, "abc", 3, 0644), 0);
    ck_assert_int_eq(fl_file_write_atomic(path, "defg", 4, 0644), 0);
    uint8_t *data;
    size_t len;
    ck_assert_int_eq(fl_file_read_all(path, 100, &data, &len), 0);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(data, "defg", 4);
    ck_assert_int_eq(data[4], 0);
    fl_free(data);
    ck_assert_int_eq(fl_file_read_all(path, 3, &data, &len), FL_ETOOBIG);
    ck_assert_ptr_null(data);
    snprintf(sub, sizeof sub, "%s/none", dir);
    ck_assert_int_eq(fl_file_read_all(sub, 3, &data, &len), FL_ENOENT);
    /* No temporary file is left behind. */
    ck_assert_int_eq(fl_test_system("test $(ls -A '%s' | wc -l) -eq 1", dir),
                     0);
    snprintf(sub, sizeof sub, "%s/x/y/z", dir);
    ck_assert_int_eq(fl_mkdir_p(sub, 0700), 0);
    struct stat st;
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    char j[16];
    ck_assert_int_eq(fl_path_join(j, sizeof j, "a/", "b"), 0);
    ck_assert_str_eq(j, "a/b");
    ck_assert_int_eq(fl_path_join(j, sizeof j, "aaaaaaaaaa", "bbbbbbbb"),
                     FL_ETOOBIG);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_rng)
{
    fl_rng_t a, b;
    fl_rng_seed(&a, 7);
    fl_rng_seed(&b, 7);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(fl_rng_next(&a), fl_rng_next(&b));
    /* fl_rng_below is uniform: chi-square over 10 bins, 100k draws. */
    long counts[10] = {0};
    for (int i = 0; i < 100000; i++)
        counts[fl_rng_below(&a, 10)]++;
    double chi = 0;
    for (int i = 0; i < 10; i++)
        chi += (counts[i] - 10000.0) * (counts[i] - 10000.0) / 10000.0;
    ck_assert_double_lt(chi, 27.88); /* p = 0.001 for 9 degrees of freedom */
    double s = 0, s2 = 0;
    for (int i = 0; i < 100000; i++) {
        double x = fl_rng_normal(&a);
        s += x;
        s2 += x * x;
    }
    ck_assert_double_lt(fabs(s / 100000), 0.015);
    ck_assert_double_lt(fabs(s2 / 100000 - 1.0), 0.03);
    uint8_t k1[32], k2[32];
    ck_assert_int_eq(fl_random_bytes(k1, 32), 0);
    ck_assert_int_eq(fl_random_bytes(k2, 32), 0);
    ck_assert_mem_ne(k1, k2, 32);
}
END_TEST

START_TEST(test_bitpack_every_width)
{
    /* Every r from 1 to 32, lengths that are and are not multiples of 8
     * and 32; fast and reference agree, and unpacking inverts packing. */
    static const size_t lens[] = {0, 1, 7, 8, 9, 31, 32, 33, 100, 1001};
    for (unsigned r = 1; r <= 32; r++) {
        for (size_t li = 0; li < FL_ARRAY_LEN(lens); li++) {
            size_t n = lens[li];
            uint32_t in[1001], out[1001], ref[1001];
            uint8_t p1[4100], p2[4100];
            fl_test_fill((uint8_t *)in, sizeof in, r * 1000 + n);
            uint32_t mask = r == 32 ? 0xffffffffu : (1u << r) - 1;
            size_t nb = fl_bitpack_bytes(n, r);
            ck_assert_uint_eq(nb, (n * r + 7) / 8);
            memset(p1, 0xa5, sizeof p1);
            fl_bitpack(p1, in, n, r);
            fl_bitpack_ref(p2, in, n, r);
            ck_assert_mem_eq(p1, p2, nb);
            ck_assert_uint_eq(p1[nb], 0xa5); /* nothing written past the end */
            fl_bitunpack(out, p1, n, r);
            fl_bitunpack_ref(ref, p1, n, r);
            for (size_t i = 0; i < n; i++) {
                ck_assert_uint_eq(out[i], in[i] & mask);
                ck_assert_uint_eq(ref[i], in[i] & mask);
            }
        }
    }
}
END_TEST

Suite *check_common_suite(void)
{
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_error_table);
    tcase_add_test(tc, test_alloc_injection);
    tcase_add_test(tc, test_buf_limits);
    tcase_add_test(tc, test_config_file_ok);
    tcase_add_test(tc, test_config_file_errors);
    tcase_add_test(tc, test_config_flags_override_file);
    tcase_add_test(tc, test_hex);
    tcase_add_test(tc, test_files);
    tcase_add_test(tc, test_rng);
    tcase_add_test(tc, test_bitpack_every_width);
    suite_add_tcase(s, tc);
    return s;
}
