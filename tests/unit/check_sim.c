/* tests/unit/check_sim.c — corpus records, client partitions and results. */
#include "model/tokenizer.h"
#include "sim/sim.h"
#include "tests/unit/testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void make_corpus(fl_sim_corpus_t *c, int topics, int per_topic)
{
    fl_sim_corpus_init(c, 1 << 24);
    for (int t = 0; t < topics; t++) {
        fl_buf_t b;
        fl_buf_init(&b, 1 << 20);
        int n = per_topic * (t + 1); /* topics of different sizes */
        for (int i = 0; i < n; i++)
            ck_assert_int_eq(
                fl_buf_printf(&b, "topic %d record %d\nline two\n%%\n", t, i),
                0);
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        ck_assert_int_eq(
            fl_sim_corpus_add_topic(c, name, (char *)b.data, b.len), 0);
        fl_buf_free(&b);
    }
}

START_TEST(test_corpus_records)
{
    fl_sim_corpus_t c;
    fl_sim_corpus_init(&c, 1 << 20);
    const char *fortunes = "first\nfortune\n%\nsecond\n%\n\n%\nthird";
    ck_assert_int_eq(
        fl_sim_corpus_add_topic(&c, "f", fortunes, strlen(fortunes)), 0);
    ck_assert_uint_eq(c.n_records, 3);
    ck_assert_int_eq(
        memcmp(c.text.data + c.records[0].off, "first\nfortune\n", 14), 0);
    ck_assert_uint_eq(c.records[0].len, 14);
    ck_assert_int_eq(memcmp(c.text.data + c.records[2].off, "third\n", 6), 0);
    const char *paras = "para one\nstill one\n\n\npara two\n";
    ck_assert_int_eq(fl_sim_corpus_add_topic(&c, "p", paras, strlen(paras)), 0);
    ck_assert_uint_eq(c.n_records, 5);
    ck_assert_int_eq(c.records[3].topic, 1);
    ck_assert_int_eq(memcmp(c.text.data + c.records[4].off, "para two\n", 9),
                     0);
    ck_assert_int_eq(c.n_topics, 2);
    ck_assert_str_eq(c.topics[1], "p");
    fl_sim_corpus_free(&c);
    /* The size limit holds. */
    fl_sim_corpus_init(&c, 10);
    ck_assert_int_eq(
        fl_sim_corpus_add_topic(&c, "x", fortunes, strlen(fortunes)),
        FL_ETOOBIG);
    fl_sim_corpus_free(&c);
}
END_TEST

/* Every private record is in exactly one client's train or val list, every
 * public record in public_idx; nothing else anywhere. */
static void check_coverage(const fl_sim_corpus_t *c,
                           const fl_sim_partition_t *p)
{
    int *seen = calloc(c->n_records, sizeof *seen);
    int *pub = calloc((size_t)c->n_topics, sizeof *pub);
    for (int k = 0; k < p->n_public_topics; k++)
        pub[p->public_topics[k]] = 1;
    for (int i = 0; i < p->n_clients; i++) {
        for (size_t k = p->train_off[i]; k < p->train_off[i + 1]; k++)
            seen[p->train_idx[k]]++;
        for (size_t k = p->val_off[i]; k < p->val_off[i + 1]; k++)
            seen[p->val_idx[k]]++;
    }
    for (size_t k = 0; k < p->n_public; k++)
        seen[p->public_idx[k]] += 100;
    for (size_t r = 0; r < c->n_records; r++)
        ck_assert_int_eq(seen[r], pub[c->records[r].topic] ? 100 : 1);
    free(seen);
    free(pub);
}

START_TEST(test_partition_by_topic)
{
    fl_sim_corpus_t c;
    make_corpus(&c, 6, 10);
    fl_sim_split_t cfg = {.mode = FL_SIM_SPLIT_TOPIC,
                          .n_clients = 20,
                          .n_public_topics = 2,
                          .val_fraction = 0.2,
                          .seed = 5};
    fl_sim_partition_t p, q;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), 0);
    check_coverage(&c, &p);
    for (int i = 0; i < p.n_clients; i++) {
        int t = p.client_topic[i];
        ck_assert_int_ge(t, 0);
        for (int k = 0; k < p.n_public_topics; k++)
            ck_assert_int_ne(t, p.public_topics[k]);
        ck_assert_uint_gt(p.train_off[i + 1], p.train_off[i]);
        for (size_t k = p.train_off[i]; k < p.train_off[i + 1]; k++)
            ck_assert_int_eq(c.records[p.train_idx[k]].topic, t);
        /* validation: about a fifth, at least one */
        size_t nv = p.val_off[i + 1] - p.val_off[i];
        size_t nt = p.train_off[i + 1] - p.train_off[i];
        ck_assert_uint_ge(nv, 1);
        ck_assert_uint_le(nv, (nv + nt) / 5 + 1);
    }
    /* One seed, one partition; another seed, another. */
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &q), 0);
    ck_assert_mem_eq(p.train_idx, q.train_idx,
                     p.train_off[p.n_clients] * sizeof(size_t));
    ck_assert_mem_eq(p.public_topics, q.public_topics, 2 * sizeof(int));
    fl_sim_partition_free(&q);
    cfg.seed = 6;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &q), 0);
    ck_assert(memcmp(p.train_idx, q.train_idx,
                     p.train_off[p.n_clients] * sizeof(size_t)) != 0);
    fl_sim_partition_free(&q);
    fl_sim_partition_free(&p);
    /* Bad configurations. */
    cfg.n_public_topics = 6;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), FL_EINVAL);
    cfg.n_public_topics = 0;
    cfg.n_clients = 0;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), FL_EINVAL);
    fl_sim_corpus_free(&c);
}
END_TEST

/* Mean over clients of the largest share one topic has in the client's
 * records: 1 is one topic per client, 1/topics is IID. */
static double mean_max_share(const fl_sim_corpus_t *c,
                             const fl_sim_partition_t *p)
{
    double total = 0;
    int counted = 0;
    for (int i = 0; i < p->n_clients; i++) {
        int cnt[16] = {0}, n = 0, mx = 0;
        for (size_t k = p->train_off[i]; k < p->train_off[i + 1]; k++, n++)
            cnt[c->records[p->train_idx[k]].topic]++;
        if (n == 0)
            continue;
        for (int t = 0; t < 16; t++)
            mx = cnt[t] > mx ? cnt[t] : mx;
        total += (double)mx / n;
        counted++;
    }
    return total / counted;
}

START_TEST(test_partition_dirichlet)
{
    fl_sim_corpus_t c;
    make_corpus(&c, 8, 60);
    fl_sim_split_t cfg = {.mode = FL_SIM_SPLIT_DIRICHLET,
                          .alpha = 0.1,
                          .n_clients = 30,
                          .n_public_topics = 1,
                          .val_fraction = 0.1,
                          .seed = 9};
    fl_sim_partition_t p;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), 0);
    check_coverage(&c, &p);
    double skewed = mean_max_share(&c, &p);
    fl_sim_partition_free(&p);
    cfg.alpha = 100;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), 0);
    check_coverage(&c, &p);
    double iid = mean_max_share(&c, &p);
    fl_sim_partition_free(&p);
    /* Small alpha concentrates each client on few topics; large alpha
     * approaches the topic mix of the whole (largest topic 8/35 ~ 0.23). */
    ck_assert_msg(skewed > 0.6, "alpha 0.1: %f", skewed);
    ck_assert_msg(iid < 0.4, "alpha 100: %f", iid);
    cfg.alpha = 0;
    ck_assert_int_eq(fl_sim_partition(&c, &cfg, &p), FL_EINVAL);
    fl_sim_corpus_free(&c);
}
END_TEST

START_TEST(test_results_files)
{
    char dir[256], sub[300], path[400];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(sub, sizeof sub, "%s/run/a", dir);
    fl_sim_results_t *r;
    ck_assert_int_eq(fl_sim_results_new(sub, &r), 0);
    for (int i = 0; i < 3; i++) {
        fl_sim_round_row_t row = {.round = i,
                                  .train_loss = 3.0 - i,
                                  .val_loss = 3.1 - i * 0.5,
                                  .val_ppl = 20.0,
                                  .participants = 10,
                                  .survivors = 9,
                                  .bytes_up = 1000,
                                  .bytes_down = 2000,
                                  .round_s = 0.5,
                                  .epsilon = 0.1 * i};
        ck_assert_int_eq(fl_sim_results_add(r, &row), 0);
    }
    ck_assert_int_eq(fl_sim_results_summary(r, "{\"rounds\": 3}\n"), 0);
    fl_sim_results_free(r);
    snprintf(path, sizeof path, "%s/metrics.csv", sub);
    ck_assert_int_eq(fl_test_system("test $(wc -l < '%s') -eq 4", path), 0);
    ck_assert_int_eq(fl_test_system("grep -q "
                                    "'^2,1.000000,2.100000,20.0000,10,9,1000,"
                                    "2000,0.500,0.200000$' '%s'",
                                    path),
                     0);
    snprintf(path, sizeof path, "%s/summary.json", sub);
    ck_assert_int_eq(fl_test_system("grep -q rounds '%s'", path), 0);

    char csv[400];
    snprintf(csv, sizeof csv, "%s/metrics.csv", sub);
    const char *paths[2] = {csv, csv}, *names[2] = {"a", "b"};
    int rc = fl_sim_plot(sub, paths, names, 2);
    if (rc != FL_ENOTSUP) {
        ck_assert_int_eq(rc, 0);
        const char *pngs[] = {"val_loss.png", "bytes.png", "epsilon.png"};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", sub, pngs[i]);
            /* a PNG file: its signature is 89 'P' 'N' 'G' */
            ck_assert_int_eq(
                fl_test_system(
                    "head -c 4 '%s' | od -An -tx1 | grep -q '89 50 4e 47'",
                    path),
                0);
        }
    }
    const char *bad[1] = {"x'y"};
    ck_assert_int_eq(
        fl_sim_plot(sub, bad, names, 1) == FL_EINVAL || rc == FL_ENOTSUP, 1);
    fl_test_rmtree(dir);
}
END_TEST

/* Generated topics for the fleet tests: six short proverbs, repeated. */
static void write_tiny_corpus(const char *data)
{
    static const char *const topics[] = {
        "the cat sat on the mat",        "rain falls on the plain",
        "a stitch in time saves nine",   "birds of a feather flock",
        "all that glitters is not gold", "the early bird gets the worm"};
    char path[400];
    ck_assert_int_eq(fl_mkdir_p(data, 0700), 0);
    for (int t = 0; t < 6; t++) {
        fl_buf_t b;
        fl_buf_init(&b, 1 << 20);
        for (int i = 0; i < 120; i++)
            fl_buf_printf(&b, "%s, number %d.\n%%\n", topics[t], i % 9);
        snprintf(path, sizeof path, "%s/topic%d", data, t);
        ck_assert_int_eq(fl_file_write_atomic(path, b.data, b.len, 0644), 0);
        fl_buf_free(&b);
    }
}

/* A small fleet end to end: generated topics, the real server, devices
 * running the real agent over in-process pipes, faults on; with the
 * byte-level tokenizer (case 0) and with a BPE vocabulary trained on the
 * corpus (case 1), which the model, the devices and the published versions
 * then all use. */
START_TEST(test_fleet_run)
{
    char dir[256], data[300], out[300], path[400];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    write_tiny_corpus(data);
    fl_sim_config_t c;
    memset(&c, 0, sizeof c);
    char err[512] = "";
    ck_assert_int_eq(fl_cfg_defaults(&fl_sim_config_table, &c, err, sizeof err),
                     0);
    char opts[][2][32] = {{"clients", "6"},
                          {"cohort", "4"},
                          {"rounds", "3"},
                          {"public-topics", "1"},
                          {"dim", "32"},
                          {"hidden", "64"},
                          {"layers", "1"},
                          {"heads", "2"},
                          {"seq-len", "32"},
                          {"pretrain-steps", "20"},
                          {"noise-multiplier", "0"},
                          {"graph", "complete"},
                          {"dropout", "0"},
                          {"churn", "0"},
                          {"quiet", "true"},
                          {"clip-norm", "4"}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        ck_assert_msg(fl_cfg_set(&fl_sim_config_table, &c, opts[i][0],
                                 opts[i][1], err, sizeof err) == 0,
                      "%s", err);
    ck_assert_int_eq(
        fl_cfg_set(&fl_sim_config_table, &c, "data", data, err, sizeof err), 0);
    ck_assert_int_eq(
        fl_cfg_set(&fl_sim_config_table, &c, "out", out, err, sizeof err), 0);
    int vocab = FL_TOKENIZER_BYTE_VOCAB;
    if (_i == 1) {
        uint8_t *text;
        size_t tlen;
        snprintf(path, sizeof path, "%s/topic0", data);
        ck_assert_int_eq(fl_file_read_all(path, 1 << 20, &text, &tlen), 0);
        fl_tokenizer_train_opts_t to;
        fl_tokenizer_train_opts_init(&to);
        to.vocab_size = 320;
        fl_tokenizer_t *tok = NULL;
        ck_assert_int_eq(fl_tokenizer_train_bpe(&to, text, tlen, &tok), 0);
        vocab = fl_tokenizer_vocab_size(tok);
        ck_assert_int_gt(vocab, FL_TOKENIZER_BYTE_VOCAB);
        snprintf(path, sizeof path, "%s/tokenizer.bin", dir);
        ck_assert_int_eq(fl_tokenizer_save(tok, path), 0);
        fl_tokenizer_free(tok);
        fl_free(text);
        ck_assert_int_eq(fl_cfg_set(&fl_sim_config_table, &c, "tokenizer", path,
                                    err, sizeof err),
                         0);
    }
    fl_log_set_level(FL_LOG_WARN);
    int rc = fl_sim_run(&c, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    /* metrics.csv: a header, round 0 and three rounds in which devices
     * survived into the sum. */
    snprintf(path, sizeof path, "%s/metrics.csv", out);
    ck_assert_int_eq(fl_test_system("test $(wc -l < '%s') -eq 5", path), 0);
    ck_assert_int_eq(
        fl_test_system("awk -F, 'NR>2 && $6 < 3 {exit 1}' '%s'", path), 0);
    /* summary.json has the keys, and the loss fell. */
    uint8_t *js;
    size_t len;
    snprintf(path, sizeof path, "%s/summary.json", out);
    ck_assert_int_eq(fl_file_read_all(path, 1 << 20, &js, &len), 0);
    static const char *const keys[] = {"rounds",
                                       "clients",
                                       "initial_val_loss",
                                       "final_val_loss",
                                       "epsilon",
                                       "delta",
                                       "secagg",
                                       "upload_bytes_per_client_round",
                                       "wall_s"};
    for (size_t i = 0; i < FL_ARRAY_LEN(keys); i++) {
        char k[64];
        snprintf(k, sizeof k, "\"%s\"", keys[i]);
        ck_assert_msg(strstr((char *)js, k) != NULL, "summary lacks %s",
                      keys[i]);
    }
    double l0 = strtod(strstr((char *)js, "\"initial_val_loss\":") + 19, NULL);
    double l1 = strtod(strstr((char *)js, "\"final_val_loss\":") + 17, NULL);
    ck_assert_msg(l1 < l0 - 0.05, "loss %f -> %f", l0, l1);
    char want[64];
    snprintf(want, sizeof want, "\"vocab_size\": %d", vocab);
    ck_assert_ptr_nonnull(strstr((char *)js, want));
    ck_assert_ptr_nonnull(strstr((char *)js, _i ? "\"tokenizer\": \"bpe:"
                                                : "\"tokenizer\": \"byte\""));
    fl_free(js);
    fl_cfg_free(&fl_sim_config_table, &c);
    fl_test_rmtree(dir);
}
END_TEST

/* --compare: a centralized baseline (named by its file) and a federated
 * run (named by its `name` key) on the same data and seed; the flags apply
 * to both. Both are in comparison.md/csv, start from the same model (the
 * same initial loss) and learn; one set of plots has both. A third run that
 * fails (fp32 with secure aggregation on, which the server refuses) is
 * listed as failed, does not stop the others, and its error is returned. */
START_TEST(test_compare_runs)
{
    char dir[256], data[300], out[300], a[300], b[300], c[300], path[400];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(a, sizeof a, "%s/central.ini", dir);
    snprintf(b, sizeof b, "%s/fed.ini", dir);
    snprintf(c, sizeof c, "%s/too-big.ini", dir);
    write_tiny_corpus(data);
    const char *ini_a = "# the baseline\nmode = centralized\n";
    const char *ini_b = "[sim]\nname = fedavg-8bit\nsecagg = false\n";
    ck_assert_int_eq(fl_file_write_atomic(a, ini_a, strlen(ini_a), 0644), 0);
    ck_assert_int_eq(fl_file_write_atomic(b, ini_b, strlen(ini_b), 0644), 0);
    ck_assert_int_eq(fl_file_write_atomic(c, "quant-bits = 0\n", 15, 0644), 0);
    char data_flag[320];
    snprintf(data_flag, sizeof data_flag, "--data=%s", data);
    char *flags[] = {
        data_flag,      "--clients=6",         "--cohort=4",
        "--rounds=2",   "--public-topics=1",   "--dim=32",
        "--hidden=64",  "--layers=1",          "--heads=2",
        "--seq-len=32", "--pretrain-steps=20", "--noise-multiplier=0",
        "--dropout=0",  "--churn=0",           "--clip-norm=4",
        "--quiet"};
    const char *inis[3] = {a, c, b};
    char err[512] = "";
    fl_log_set_level(FL_LOG_OFF); /* the failed run's error is expected */
    int rc = fl_sim_compare(out, inis, 3, (int)FL_ARRAY_LEN(flags), flags, err,
                            sizeof err);
    fl_log_set_level(FL_LOG_WARN);
    ck_assert_msg(rc < 0 && strstr(err, "too-big") && strstr(err, "quant-bits"),
                  "%d %s", rc, err);

    /* Each run in its own directory: round 0 and two rounds. */
    static const char *const runs[] = {"central", "fedavg-8bit"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/metrics.csv", out, runs[i]);
        ck_assert_int_eq(fl_test_system("test $(wc -l < '%s') -eq 4", path), 0);
        snprintf(path, sizeof path, "%s/%s/summary.json", out, runs[i]);
        ck_assert_int_eq(fl_test_system("grep -q final_val_loss '%s'", path),
                         0);
    }
    snprintf(path, sizeof path, "%s/comparison.md", out);
    ck_assert_int_eq(
        fl_test_system("grep -q '^| central | centralized |' '%s'"
                       " && grep -q '^| fedavg-8bit | federated "
                       "|' '%s' && grep -q '^| too-big | failed |' '%s' "
                       "&& test $(grep -c '^|' '%s') -eq 5",
                       path, path, path, path),
        0);
    /* comparison.csv: one row per run; the same initial loss (one
     * pre-trained model), every final loss below it, bytes only for the
     * federated run, two rounds each. */
    snprintf(path, sizeof path, "%s/comparison.csv", out);
    ck_assert_int_eq(fl_test_system("test $(wc -l < '%s') -eq 4", path), 0);
    ck_assert_int_eq(
        fl_test_system(
            "awk -F, 'NR==2 && ($1 != \"central\" || $6 != 0) "
            "{exit 1} NR==3 && $0 != \"too-big,,,,,,,,,failed\" "
            "{exit 1} NR==4 && ($1 != \"fedavg-8bit\" || $6 <= "
            "0) {exit 1} (NR==2 || NR==4) && ($10 != \"ok\" || $8 != 2 || "
            "$4 >= $3) {exit 1} NR==2 {i=$3} NR==4 && $3 != i "
            "{exit 1}' '%s'",
            path),
        0);
    if (access("/usr/bin/gnuplot", X_OK) == 0) {
        const char *pngs[] = {"val_loss.png", "bytes.png", "epsilon.png"};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", out, pngs[i]);
            ck_assert_int_eq(
                fl_test_system(
                    "head -c 4 '%s' | od -An -tx1 | grep -q '89 50 4e 47'",
                    path),
                0);
        }
        /* one line per run */
        snprintf(path, sizeof path, "%s/plots.gnuplot", out);
        ck_assert_int_eq(
            fl_test_system("grep val_loss.png -A2 '%s' | grep -q "
                           "\"title 'central'.*title 'fedavg-8bit'\"",
                           path),
            0);
    }

    /* Runs must share the seed and the data; names must be distinct. */
    const char *ini_c = "seed = 7\n";
    snprintf(path, sizeof path, "%s/other-seed.ini", dir);
    ck_assert_int_eq(fl_file_write_atomic(path, ini_c, strlen(ini_c), 0644), 0);
    const char *bad[2] = {a, path};
    ck_assert_int_eq(fl_sim_compare(out, bad, 2, (int)FL_ARRAY_LEN(flags),
                                    flags, err, sizeof err),
                     FL_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "seed"));
    const char *twice[2] = {a, a};
    ck_assert_int_eq(fl_sim_compare(out, twice, 2, (int)FL_ARRAY_LEN(flags),
                                    flags, err, sizeof err),
                     FL_EINVAL);
    fl_test_rmtree(dir);
}
END_TEST

/* The same kind of fleet over real TLS connections on loopback: the sim
 * makes its CA and server certificate, the server listens with TLS, every
 * device connects through net/ and verifies the server against the CA;
 * devices drop at phases and churn (their connections closed). */
START_TEST(test_fleet_tls)
{
    char dir[256], data[300], out[300], path[400];
    fl_test_tmpdir(dir, sizeof dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    write_tiny_corpus(data);
    fl_sim_config_t c;
    memset(&c, 0, sizeof c);
    char err[512] = "";
    ck_assert_int_eq(fl_cfg_defaults(&fl_sim_config_table, &c, err, sizeof err),
                     0);
    char opts[][2][32] = {{"transport", "tls"},     {"clients", "6"},
                          {"cohort", "4"},          {"rounds", "3"},
                          {"public-topics", "1"},   {"dim", "32"},
                          {"hidden", "64"},         {"layers", "1"},
                          {"heads", "2"},           {"seq-len", "32"},
                          {"pretrain-steps", "20"}, {"noise-multiplier", "0"},
                          {"graph", "complete"},    {"dropout", "0.03"},
                          {"churn", "0.05"},        {"quiet", "true"},
                          {"clip-norm", "4"}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        ck_assert_msg(fl_cfg_set(&fl_sim_config_table, &c, opts[i][0],
                                 opts[i][1], err, sizeof err) == 0,
                      "%s", err);
    ck_assert_int_eq(
        fl_cfg_set(&fl_sim_config_table, &c, "data", data, err, sizeof err), 0);
    ck_assert_int_eq(
        fl_cfg_set(&fl_sim_config_table, &c, "out", out, err, sizeof err), 0);
    fl_log_set_level(FL_LOG_WARN);
    int rc = fl_sim_run(&c, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    /* A header, round 0 and three rounds with at least min-clients (3)
     * survivors and bytes on the wire both ways. */
    snprintf(path, sizeof path, "%s/metrics.csv", out);
    ck_assert_int_eq(fl_test_system("test $(wc -l < '%s') -eq 5", path), 0);
    ck_assert_int_eq(
        fl_test_system("awk -F, 'NR>2 && ($6 < 3 || $7 <= 0 || $8 <= 0) "
                       "{exit 1}' '%s'",
                       path),
        0);
    uint8_t *js;
    size_t len;
    snprintf(path, sizeof path, "%s/summary.json", out);
    ck_assert_int_eq(fl_file_read_all(path, 1 << 20, &js, &len), 0);
    ck_assert_ptr_nonnull(strstr((char *)js, "\"transport\": \"tls\""));
    ck_assert_ptr_nonnull(strstr((char *)js, "\"rounds\": 3"));
    double l0 = strtod(strstr((char *)js, "\"initial_val_loss\":") + 19, NULL);
    double l1 = strtod(strstr((char *)js, "\"final_val_loss\":") + 17, NULL);
    ck_assert_msg(l1 < l0 - 0.05, "loss %f -> %f", l0, l1);
    fl_free(js);
    fl_cfg_free(&fl_sim_config_table, &c);
    fl_test_rmtree(dir);
}
END_TEST

Suite *check_sim_suite(void)
{
    Suite *s = suite_create("sim");
    TCase *tc = tcase_create("partition");
    tcase_add_test(tc, test_corpus_records);
    tcase_add_test(tc, test_partition_by_topic);
    tcase_add_test(tc, test_partition_dirichlet);
    tcase_add_test(tc, test_results_files);
    tcase_add_loop_test(tc, test_fleet_run, 0, 2);
    tcase_add_test(tc, test_fleet_tls);
    tcase_add_test(tc, test_compare_runs);
    tcase_set_timeout(tc, 600);
    suite_add_tcase(s, tc);
    return s;
}
