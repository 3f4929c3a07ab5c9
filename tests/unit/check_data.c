/* tests/unit/check_data.c — listing text files, token streams, the seeded
 * train/validation split, batches and windows. */
#include "model/data.h"
#include "model/tokenizer.h"
#include "tests/unit/testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void write_file(const char *dir, const char *name, const void *data,
                       size_t len)
{
    char path[512];
    ck_assert_int_eq(fl_path_join(path, sizeof path, dir, name), 0);
    ck_assert_int_eq(fl_file_write_atomic(path, data, len, 0644), 0);
}

/* Reproducible text without NUL bytes (so it is "text"). */
static uint8_t *make_text(size_t len, uint64_t seed)
{
    uint8_t *p = malloc(len + 1);
    fl_test_fill(p, len, seed);
    for (size_t i = 0; i < len; i++)
        if (p[i] == 0)
            p[i] = 'x';
    return p;
}

START_TEST(test_list_files_filters)
{
    char dir[256], path[512], target[512];
    fl_test_tmpdir(dir, sizeof dir);
    write_file(dir, "b.txt", "bee\n", 4);
    write_file(dir, "a", "ay\n", 3);
    write_file(dir, "a.dat", "\0\0\0\2", 4);
    write_file(dir, "c.dat", "index", 5);
    write_file(dir, "z", "zed\n", 4);
    write_file(dir, ".hidden", "no\n", 3);
    write_file(dir, "d.u8", "not a link, still skipped\n", 26);
    snprintf(path, sizeof path, "%s/a.u8", dir);
    ck_assert_int_eq(symlink("a", path), 0);
    snprintf(path, sizeof path, "%s/link", dir);
    snprintf(target, sizeof target, "%s/b.txt", dir);
    ck_assert_int_eq(symlink(target, path), 0);
    snprintf(path, sizeof path, "%s/sub", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    write_file(path, "inner", "in\n", 3);

    char **names;
    size_t n;
    ck_assert_int_eq(fl_data_list_files(dir, &names, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(names[0], "a");
    ck_assert_str_eq(names[1], "b.txt");
    ck_assert_str_eq(names[2], "z");
    fl_data_names_free(names, n);

    /* The corpus is those files, in order, each with a newline. */
    uint8_t *c;
    size_t cl;
    ck_assert_int_eq(fl_data_read_corpus(dir, NULL, 0, 1 << 20, &c, &cl), 0);
    ck_assert_uint_eq(cl, 14);
    ck_assert_mem_eq(c, "ay\n\nbee\n\nzed\n\n", 14);
    ck_assert_int_eq(c[cl], 0);
    fl_free(c);
    ck_assert_int_eq(fl_data_read_corpus(dir, NULL, 0, 13, &c, &cl),
                     FL_ETOOBIG);
    ck_assert_int_eq(fl_data_read_corpus(dir, NULL, 0, 14, &c, &cl), 0);
    fl_free(c);

    ck_assert_int_eq(fl_data_list_files("/nonexistent-dir", &names, &n),
                     FL_ENOENT);
    ck_assert_ptr_null(names);
    fl_test_rmtree(dir);
}
END_TEST

/* The fortunes package: text files beside .dat indexes and .u8 links. */
START_TEST(test_list_fortunes)
{
    const char *dir = "/usr/share/games/fortunes";
    char **names;
    size_t n;
    if (access(dir, R_OK) != 0)
        return; /* not installed here */
    ck_assert_int_eq(fl_data_list_files(dir, &names, &n), 0);
    ck_assert_uint_gt(n, 10);
    int has_art = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert(strstr(names[i], ".dat") == NULL);
        ck_assert(strstr(names[i], ".u8") == NULL);
        if (i > 0)
            ck_assert_int_lt(strcmp(names[i - 1], names[i]), 0);
        has_art |= strcmp(names[i], "art") == 0;
    }
    ck_assert(has_art);
    fl_data_names_free(names, n);
}
END_TEST

/* Walks the document's chunks: each must be the next chunk of exactly one
 * part, so the parts are disjoint and together are the document. Returns
 * the number of chunks that went to validation. */
static size_t check_partition(const int32_t *doc, size_t n, size_t ct,
                              const int32_t *tr, size_t ntr, const int32_t *va,
                              size_t nva)
{
    size_t pt = 0, pv = 0, nval = 0;
    for (size_t off = 0; off < n; off += ct) {
        size_t len = FL_MIN(ct, n - off);
        int in_t = pt + len <= ntr &&
                   memcmp(tr + pt, doc + off, len * sizeof *doc) == 0;
        int in_v = pv + len <= nva &&
                   memcmp(va + pv, doc + off, len * sizeof *doc) == 0;
        ck_assert_int_eq(in_t + in_v, 1);
        if (in_t) {
            pt += len;
        } else {
            pv += len;
            nval++;
        }
    }
    ck_assert_uint_eq(pt, ntr);
    ck_assert_uint_eq(pv, nva);
    return nval;
}

START_TEST(test_split_by_position)
{
    fl_tokenizer_t *tok;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    size_t len = 4000;
    uint8_t *text = make_text(len, 11);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.chunk_tokens = 16;
    o.seed = 1;
    fl_data_t *d1, *d2, *d3;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "topic", &d1), 0);
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "topic", &d2), 0);
    o.seed = 2;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "topic", &d3), 0);
    ck_assert_uint_eq(fl_data_num_files(d1), 1);
    ck_assert_uint_eq(fl_data_num_bytes(d1), len);

    /* The document: BOS, then a byte id per byte. */
    int32_t *doc = malloc((len + 1) * sizeof *doc);
    doc[0] = FL_TOKENIZER_BOS;
    for (size_t i = 0; i < len; i++)
        doc[i + 1] = 3 + text[i];
    size_t n1t, n1v, n2t, n2v, n3t, n3v;
    const int32_t *t1 = fl_data_tokens(d1, FL_DATA_TRAIN, &n1t);
    const int32_t *v1 = fl_data_tokens(d1, FL_DATA_VAL, &n1v);
    const int32_t *t2 = fl_data_tokens(d2, FL_DATA_TRAIN, &n2t);
    const int32_t *v2 = fl_data_tokens(d2, FL_DATA_VAL, &n2v);
    const int32_t *t3 = fl_data_tokens(d3, FL_DATA_TRAIN, &n3t);
    const int32_t *v3 = fl_data_tokens(d3, FL_DATA_VAL, &n3v);
    /* 4001 tokens = 251 chunks; round(0.1 * 251) = 25 to validation. */
    ck_assert_uint_eq(check_partition(doc, len + 1, 16, t1, n1t, v1, n1v), 25);
    ck_assert_uint_eq(check_partition(doc, len + 1, 16, t3, n3t, v3, n3v), 25);
    /* Same seed, same split; another seed, another split. */
    ck_assert_uint_eq(n1v, n2v);
    ck_assert_mem_eq(t1, t2, n1t * sizeof *t1);
    ck_assert_mem_eq(v1, v2, n1v * sizeof *v1);
    ck_assert(n1v != n3v || memcmp(v1, v3, n1v * sizeof *v1) != 0);

    /* A file too small for two chunks stays in training. */
    fl_data_t *small;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, 10, "s", &small), 0);
    size_t ns;
    fl_data_tokens(small, FL_DATA_VAL, &ns);
    ck_assert_uint_eq(ns, 0);
    fl_data_tokens(small, FL_DATA_TRAIN, &ns);
    ck_assert_uint_eq(ns, 11);
    fl_data_free(small);

    /* Bad options. */
    fl_data_t *bad = (fl_data_t *)tok;
    o.val_fraction = 0.9;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "t", &bad),
                     FL_EINVAL);
    ck_assert_ptr_null(bad);
    o.val_fraction = 0.1;
    o.chunk_tokens = 0;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "t", &bad),
                     FL_EINVAL);
    o.chunk_tokens = 16;
    o.max_bytes = len - 1;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "t", &bad),
                     FL_ETOOBIG);

    free(doc);
    free(text);
    fl_data_free(d1);
    fl_data_free(d2);
    fl_data_free(d3);
    fl_data_free(NULL);
    fl_tokenizer_free(tok);
}
END_TEST

START_TEST(test_split_dir)
{
    char dir[256];
    fl_test_tmpdir(dir, sizeof dir);
    uint8_t *texts[10];
    char names[10][8];
    for (int i = 0; i < 10; i++) {
        texts[i] = make_text(300, 100 + (uint64_t)i);
        snprintf(names[i], sizeof names[i], "f%d", i);
        write_file(dir, names[i], texts[i], 300);
    }
    write_file(dir, "binary", "ab\0cd", 5); /* NUL: not text, skipped */
    write_file(dir, "f0.dat", "xx", 2);
    fl_tokenizer_t *tok;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.dir = dir;
    o.split = FL_DATA_SPLIT_FILE;
    o.val_fraction = 0.2;
    o.seed = 5;
    fl_data_t *d, *e;
    ck_assert_int_eq(fl_data_load(&o, tok, &d), 0);
    ck_assert_int_eq(fl_data_load(&o, tok, &e), 0);
    ck_assert_uint_eq(fl_data_num_files(d), 10);
    ck_assert_uint_eq(fl_data_num_bytes(d), 3000);
    size_t nt, nv, mt, mv;
    const int32_t *tr = fl_data_tokens(d, FL_DATA_TRAIN, &nt);
    const int32_t *va = fl_data_tokens(d, FL_DATA_VAL, &nv);
    const int32_t *tr2 = fl_data_tokens(e, FL_DATA_TRAIN, &mt);
    const int32_t *va2 = fl_data_tokens(e, FL_DATA_VAL, &mv);
    /* Two whole files (of 301 tokens) in validation, eight in training,
     * each file in one part only. */
    ck_assert_uint_eq(nv, 2 * 301);
    ck_assert_uint_eq(nt, 8 * 301);
    ck_assert_uint_eq(mv, nv);
    ck_assert_mem_eq(tr, tr2, nt * sizeof *tr);
    ck_assert_mem_eq(va, va2, nv * sizeof *va);
    for (int i = 0; i < 10; i++) {
        int found = 0;
        for (int part = 0; part < 2; part++) {
            const int32_t *p = part ? va : tr;
            size_t np = part ? nv : nt;
            for (size_t off = 0; off < np; off += 301) {
                int same = p[off] == FL_TOKENIZER_BOS;
                for (size_t k = 0; k < 300 && same; k++)
                    same = p[off + 1 + k] == 3 + texts[i][k];
                found += same;
            }
        }
        ck_assert_int_eq(found, 1);
    }
    fl_data_free(d);
    fl_data_free(e);

    /* By position, a file's split does not depend on the other files:
     * validation of {f0} alone is the start of validation of all. */
    o.split = FL_DATA_SPLIT_POSITION;
    o.chunk_tokens = 10;
    char *one[1] = {names[0]};
    ck_assert_int_eq(fl_data_load(&o, tok, &d), 0);
    o.names = one;
    o.nnames = 1;
    ck_assert_int_eq(fl_data_load(&o, tok, &e), 0);
    va = fl_data_tokens(d, FL_DATA_VAL, &nv);
    va2 = fl_data_tokens(e, FL_DATA_VAL, &mv);
    ck_assert_uint_gt(mv, 0);
    ck_assert_uint_gt(nv, mv);
    ck_assert_mem_eq(va, va2, mv * sizeof *va);
    fl_data_free(d);
    fl_data_free(e);

    /* The size limit covers everything read. */
    o.names = NULL;
    o.max_bytes = 2999;
    ck_assert_int_eq(fl_data_load(&o, tok, &d), FL_ETOOBIG);
    o.max_bytes = 3000;
    ck_assert_int_eq(fl_data_load(&o, tok, &d), 0);
    fl_data_free(d);
    o.dir = "/nonexistent-dir";
    ck_assert_int_eq(fl_data_load(&o, tok, &d), FL_ENOENT);

    for (int i = 0; i < 10; i++)
        free(texts[i]);
    fl_tokenizer_free(tok);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_batches_and_windows)
{
    fl_tokenizer_t *tok;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&tok), 0);
    size_t len = 1000;
    uint8_t *text = make_text(len, 21);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.val_fraction = 0;
    fl_data_t *d;
    ck_assert_int_eq(fl_data_load_text(&o, tok, text, len, "x", &d), 0);
    size_t n;
    const int32_t *ids = fl_data_tokens(d, FL_DATA_TRAIN, &n);
    ck_assert_uint_eq(n, 1001);
    enum { B = 4, T = 32 };
    int32_t b1[B][T + 1], b2[B][T + 1];
    fl_rng_t r1, r2;
    fl_rng_seed(&r1, 9);
    fl_rng_seed(&r2, 9);
    for (int it = 0; it < 20; it++) {
        ck_assert_int_eq(fl_data_batch(d, FL_DATA_TRAIN, &r1, B, T, &b1[0][0]),
                         0);
        ck_assert_int_eq(fl_data_batch(d, FL_DATA_TRAIN, &r2, B, T, &b2[0][0]),
                         0);
        ck_assert_mem_eq(b1, b2, sizeof b1);
        /* Every row is T + 1 consecutive ids of the stream. */
        for (int b = 0; b < B; b++) {
            int found = 0;
            for (size_t s = 0; s + T + 1 <= n && !found; s++)
                found = memcmp(ids + s, b1[b], sizeof b1[b]) == 0;
            ck_assert(found);
        }
    }
    /* (1001 - 1) / 32 = 31 windows, in order. */
    ck_assert_uint_eq(fl_data_num_windows(d, FL_DATA_TRAIN, T), 31);
    int32_t w[T + 1];
    ck_assert_int_eq(fl_data_window(d, FL_DATA_TRAIN, 30, T, w), 0);
    ck_assert_mem_eq(w, ids + 30 * T, sizeof w);
    ck_assert_int_eq(fl_data_window(d, FL_DATA_TRAIN, 31, T, w), FL_ERANGE);
    /* The empty validation part has nothing to give. */
    ck_assert_uint_eq(fl_data_num_windows(d, FL_DATA_VAL, T), 0);
    ck_assert_int_eq(fl_data_batch(d, FL_DATA_VAL, &r1, B, T, &b1[0][0]),
                     FL_ERANGE);
    ck_assert_int_eq(fl_data_batch(d, FL_DATA_TRAIN, &r1, B, 1001, NULL),
                     FL_ERANGE);
    fl_data_free(d);
    free(text);
    fl_tokenizer_free(tok);
}
END_TEST

/* A BPE tokenizer trained on a directory's corpus, then that directory
 * as token streams. */
START_TEST(test_bpe_streams)
{
    char dir[256];
    fl_test_tmpdir(dir, sizeof dir);
    const char *a = "the cat sat on the mat\nthe cat ate\n";
    const char *b = "the dog sat on the log\n";
    write_file(dir, "a", a, strlen(a));
    write_file(dir, "b", b, strlen(b));
    uint8_t *corpus;
    size_t cl;
    ck_assert_int_eq(fl_data_read_corpus(dir, NULL, 0, 1 << 20, &corpus, &cl),
                     0);
    fl_tokenizer_train_opts_t to;
    fl_tokenizer_train_opts_init(&to);
    to.vocab_size = 300;
    fl_tokenizer_t *tok;
    ck_assert_int_eq(fl_tokenizer_train_bpe(&to, corpus, cl, &tok), 0);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.dir = dir;
    o.val_fraction = 0;
    fl_data_t *d;
    ck_assert_int_eq(fl_data_load(&o, tok, &d), 0);
    size_t n;
    const int32_t *ids = fl_data_tokens(d, FL_DATA_TRAIN, &n);
    ck_assert_uint_lt(n, strlen(a) + strlen(b));
    /* Decoding the stream gives the files back (BOS decodes to nothing). */
    fl_buf_t out;
    fl_buf_init(&out, 1 << 20);
    ck_assert_int_eq(fl_tokenizer_decode(tok, ids, n, 0, &out), 0);
    ck_assert_uint_eq(out.len, strlen(a) + strlen(b));
    ck_assert_mem_eq(out.data, a, strlen(a));
    ck_assert_mem_eq(out.data + strlen(a), b, strlen(b));
    ck_assert_int_eq(ids[0], FL_TOKENIZER_BOS);
    fl_buf_free(&out);
    fl_data_free(d);
    fl_tokenizer_free(tok);
    fl_free(corpus);
    fl_test_rmtree(dir);
}
END_TEST

Suite *check_data_suite(void)
{
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_list_files_filters);
    tcase_add_test(tc, test_list_fortunes);
    tcase_add_test(tc, test_split_by_position);
    tcase_add_test(tc, test_split_dir);
    tcase_add_test(tc, test_batches_and_windows);
    tcase_add_test(tc, test_bpe_streams);
    suite_add_tcase(s, tc);
    return s;
}
