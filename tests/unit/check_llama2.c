/* tests/unit/check_llama2.c — llama2.c checkpoints (versions 0, 1 and 2,
 * written by tests/vectors/llama2_ckpt.py with numpy) imported into
 * flotilla's model: every weight, the configuration, the tokenizer check,
 * refusal of truncated and malformed files, and `flotilla model import`. */
#include "model/llama2.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static char g_dir[256];

static void make_vectors(void)
{
    char script[512];
    fl_test_tmpdir(g_dir, sizeof g_dir);
    fl_test_srcpath(script, sizeof script, "tests/vectors/llama2_ckpt.py");
    ck_assert_int_eq(
        fl_test_system("%s %s %s", fl_test_python(), script, g_dir), 0);
}

static void drop_vectors(void)
{
    fl_test_rmtree(g_dir);
}

static uint8_t *read_vec(const char *name, const char *ext, size_t *len)
{
    char path[512];
    uint8_t *d = NULL;
    snprintf(path, sizeof path, "%s/%s.%s", g_dir, name, ext);
    ck_assert_int_eq(fl_file_read_all(path, 1 << 26, &d, len), 0);
    return d;
}

/* Compares the model's views, in llama2.c order, with the reference. */
static void assert_weights(fl_model_t *m, const char *name)
{
    size_t rl;
    uint8_t *ref = read_vec(name, "ref", &rl);
    const fl_model_config_t *c = fl_model_config(m);
    fl_model_weights_t *w = fl_model_weights(m);
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim,
           L = (size_t)c->n_layers, V = (size_t)c->vocab_size,
           KV = D / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    struct {
        const float *p;
        size_t n;
    } views[12] = {
        {w->token_embedding, V * D}, {w->rms_att, L * D}, {w->wq, L * D * D},
        {w->wk, L * KV * D},         {w->wv, L * KV * D}, {w->wo, L * D * D},
        {w->rms_ffn, L * D},         {w->w1, L * H * D},  {w->w2, L * D * H},
        {w->w3, L * H * D},          {w->rms_final, D},   {w->wcls, V * D},
    };
    size_t nviews = c->tied_output ? 11 : 12, off = 0;
    for (size_t k = 0; k < nviews; k++) {
        ck_assert_uint_le(off + views[k].n * 4, rl);
        for (size_t i = 0; i < views[k].n; i++) {
            float want;
            memcpy(&want, ref + off + 4 * i, 4);
            if (views[k].p[i] != want)
                ck_abort_msg("%s: view %zu element %zu is %g, want %g", name, k,
                             i, (double)views[k].p[i], (double)want);
        }
        off += views[k].n * 4;
    }
    ck_assert_uint_eq(off, rl);
    if (c->tied_output)
        ck_assert_ptr_eq(w->wcls, w->token_embedding);
    fl_free(ref);
}

static fl_model_t *import_ok(const char *name, fl_llama2_info_t *info)
{
    char path[512], why[256] = "";
    fl_model_t *m = NULL;
    snprintf(path, sizeof path, "%s/%s.bin", g_dir, name);
    int rc = fl_llama2_import_file(path, &m, info, why, sizeof why);
    ck_assert_msg(rc == 0, "%s: %s", name, why);
    return m;
}

START_TEST(test_import_versions)
{
    struct {
        const char *name;
        int version, shared, gs, dim, hidden, layers, heads, kv, vocab, seq;
    } cases[] = {
        {"v0_shared", 0, 1, 0, 32, 64, 2, 4, 4, 259, 16},
        {"v0_untied_gqa", 0, 0, 0, 32, 48, 2, 4, 2, 40, 8},
        {"v1_untied", 1, 0, 0, 16, 24, 1, 2, 1, 20, 4},
        {"v2_shared", 2, 1, 32, 32, 64, 2, 4, 2, 259, 16},
        {"v2_untied", 2, 0, 16, 32, 64, 1, 4, 4, 40, 8},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(cases); i++) {
        fl_llama2_info_t info;
        fl_model_t *m = import_ok(cases[i].name, &info);
        const fl_model_config_t *c = fl_model_config(m);
        ck_assert_int_eq(info.version, cases[i].version);
        ck_assert_int_eq(info.shared_classifier, cases[i].shared);
        ck_assert_int_eq(info.group_size, cases[i].gs);
        ck_assert_int_eq(c->dim, cases[i].dim);
        ck_assert_int_eq(c->hidden_dim, cases[i].hidden);
        ck_assert_int_eq(c->n_layers, cases[i].layers);
        ck_assert_int_eq(c->n_heads, cases[i].heads);
        ck_assert_int_eq(c->n_kv_heads, cases[i].kv);
        ck_assert_int_eq(c->vocab_size, cases[i].vocab);
        ck_assert_int_eq(c->seq_len, cases[i].seq);
        ck_assert_int_eq(c->tied_output, cases[i].shared);
        ck_assert_int_eq(c->lora_rank, 0);
        assert_weights(m, cases[i].name);
        /* The imported model runs. */
        int32_t tok[8] = {1, 5, 7, 9, 11, 13, 2, 3}, tgt[8];
        for (int k = 0; k < 8; k++)
            tgt[k] = (tok[k] + 1) % c->vocab_size;
        float loss = -1;
        int T = FL_MIN(8, c->seq_len);
        ck_assert_int_eq(fl_model_forward(m, tok, tgt, 1, T, &loss), 0);
        ck_assert(isfinite(loss) && loss > 0);
        fl_model_free(m);
    }
}
END_TEST

/* Every shorter file is truncated, a longer one has trailing bytes. */
START_TEST(test_truncated_and_trailing)
{
    const char *names[] = {"v0_shared", "v0_untied_gqa", "v1_untied",
                           "v2_shared", "v2_untied"};
    for (size_t k = 0; k < FL_ARRAY_LEN(names); k++) {
        size_t len;
        uint8_t *d = read_vec(names[k], "bin", &len);
        fl_model_t *m = NULL;
        char why[256];
        for (size_t cut = 0; cut < len; cut += cut < 300 ? 1 : 61) {
            int rc = fl_llama2_import_buf(d, cut, &m, NULL, why, sizeof why);
            ck_assert_msg(rc == FL_ETRUNC, "%s cut at %zu: %s", names[k], cut,
                          fl_err_name(rc));
            ck_assert_ptr_null(m);
        }
        ck_assert_int_eq(fl_llama2_import_buf(d, len - 1, &m, NULL, NULL, 0),
                         FL_ETRUNC);
        uint8_t *longer = malloc(len + 4);
        memcpy(longer, d, len);
        memset(longer + len, 0, 4);
        ck_assert_int_eq(
            fl_llama2_import_buf(longer, len + 4, &m, NULL, why, sizeof why),
            FL_EFORMAT);
        ck_assert_ptr_nonnull(strstr(why, "trailing"));
        free(longer);
        fl_free(d);
    }
}
END_TEST

static int import_patched(const uint8_t *d, size_t len, size_t at,
                          const void *val, size_t vl)
{
    uint8_t *c = malloc(len);
    memcpy(c, d, len);
    memcpy(c + at, val, vl);
    fl_model_t *m = NULL;
    char why[256];
    int rc = fl_llama2_import_buf(c, len, &m, NULL, why, sizeof why);
    if (rc == 0)
        fl_model_free(m);
    else
        ck_assert_ptr_null(m);
    free(c);
    return rc;
}

START_TEST(test_bad_headers)
{
    size_t l0, l2;
    uint8_t *v0 = read_vec("v0_shared", "bin", &l0);
    uint8_t *v2 = read_vec("v2_shared", "bin", &l2);
    int32_t v;
    uint8_t b;
    /* Untouched, both import. */
    ck_assert_int_eq(import_patched(v0, l0, 0, v0, 4), 0);
    ck_assert_int_eq(import_patched(v2, l2, 0, v2, 4), 0);
    /* Version 0: negative dim, heads not dividing dim, absurd layers,
     * vocabulary INT32_MIN, kv heads not dividing heads. */
    v = -32;
    ck_assert_int_eq(import_patched(v0, l0, 0, &v, 4), FL_ERANGE);
    v = 3;
    ck_assert_int_eq(import_patched(v0, l0, 12, &v, 4), FL_ERANGE);
    v = 1 << 30;
    ck_assert_int_eq(import_patched(v0, l0, 8, &v, 4), FL_ERANGE);
    v = INT32_MIN;
    ck_assert_int_eq(import_patched(v0, l0, 20, &v, 4), FL_ERANGE);
    v = 3;
    ck_assert_int_eq(import_patched(v0, l0, 16, &v, 4), FL_ERANGE);
    /* A vocabulary sign flip changes the implied size: truncated. */
    v = -259;
    ck_assert_int_eq(import_patched(v0, l0, 20, &v, 4), FL_ETRUNC);
    /* A NaN weight. */
    float nan = NAN;
    ck_assert_int_eq(import_patched(v0, l0, 28 + 4 * 100, &nan, 4), FL_EFORMAT);
    /* Version 2: unknown version, bad group sizes, bad flag. */
    v = 3;
    ck_assert_int_eq(import_patched(v2, l2, 4, &v, 4), FL_EVERSION);
    v = 0;
    ck_assert_int_eq(import_patched(v2, l2, 37, &v, 4), FL_ERANGE);
    v = 7;
    ck_assert_int_eq(import_patched(v2, l2, 37, &v, 4), FL_ERANGE);
    v = -32;
    ck_assert_int_eq(import_patched(v2, l2, 37, &v, 4), FL_ERANGE);
    v = 16; /* divides everything, but implies more scales */
    ck_assert_int_eq(import_patched(v2, l2, 37, &v, 4), FL_ETRUNC);
    v = 64; /* does not divide the 259 x 32 embedding */
    ck_assert_int_eq(import_patched(v2, l2, 37, &v, 4), FL_ERANGE);
    b = 2;
    ck_assert_int_eq(import_patched(v2, l2, 36, &b, 1), FL_ERANGE);
    b = 0; /* unshared: needs a classifier that is not there */
    ck_assert_int_eq(import_patched(v2, l2, 36, &b, 1), FL_ETRUNC);
    /* Junk. */
    uint8_t junk[300];
    fl_test_fill(junk, sizeof junk, 1);
    fl_model_t *m = NULL;
    ck_assert_int_lt(fl_llama2_import_buf(junk, sizeof junk, &m, NULL, NULL, 0),
                     0);
    ck_assert_int_eq(
        fl_llama2_import_file("/nonexistent.bin", &m, NULL, NULL, 0),
        FL_ENOENT);
    fl_free(v0);
    fl_free(v2);
}
END_TEST

START_TEST(test_import_with_tokenizer)
{
    char ck[512], ck2[512], tp[512], why[256];
    fl_tokenizer_t *bytes = NULL, *t = NULL;
    fl_model_t *m = NULL;
    snprintf(ck, sizeof ck, "%s/v2_shared.bin", g_dir);
    snprintf(ck2, sizeof ck2, "%s/v0_untied_gqa.bin", g_dir);
    snprintf(tp, sizeof tp, "%s/tokenizer.bin", g_dir);
    ck_assert_int_eq(fl_tokenizer_new_bytes(&bytes), 0);
    ck_assert_int_eq(fl_tokenizer_save(bytes, tp), 0);
    fl_tokenizer_free(bytes);
    ck_assert_int_eq(fl_llama2_import(ck, tp, &m, &t, NULL, why, sizeof why),
                     0);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 259);
    fl_model_free(m);
    fl_tokenizer_free(t);
    /* 259 tokens for a vocabulary of 40. */
    ck_assert_int_eq(fl_llama2_import(ck2, tp, &m, &t, NULL, why, sizeof why),
                     FL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(why, "40"));
    ck_assert_ptr_null(m);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(fl_llama2_import(ck, "/nonexistent/tokenizer.bin", &m,
                                      NULL, NULL, why, sizeof why),
                     FL_ENOENT);
}
END_TEST

START_TEST(test_cli_import)
{
    char bin[512], tp[512], out[512];
    fl_tokenizer_t *bytes = NULL;
    fl_test_flotilla(bin, sizeof bin);
    snprintf(tp, sizeof tp, "%s/tok-in.bin", g_dir);
    snprintf(out, sizeof out, "%s/out/model.bin", g_dir);
    ck_assert_int_eq(fl_tokenizer_new_bytes(&bytes), 0);
    ck_assert_int_eq(fl_tokenizer_save(bytes, tp), 0);
    fl_tokenizer_free(bytes);
    ck_assert_int_eq(fl_test_system("mkdir -p %s/out", g_dir), 0);
    ck_assert_int_eq(
        fl_test_system("%s model import --checkpoint %s/v0_shared.bin "
                       "--tokenizer %s --out %s --json > %s/out/import.json",
                       bin, g_dir, tp, out, g_dir),
        0);
    fl_model_t *m = NULL;
    ck_assert_int_eq(fl_model_load(out, &m), 0);
    ck_assert_str_eq(fl_model_tokenizer_ref(m), "byte");
    assert_weights(m, "v0_shared");
    fl_model_free(m);
    /* The tokenizer went beside the model. */
    char tout[512];
    fl_tokenizer_t *t = NULL;
    snprintf(tout, sizeof tout, "%s/out/tokenizer.bin", g_dir);
    ck_assert_int_eq(fl_tokenizer_load(tout, &t), 0);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 259);
    fl_tokenizer_free(t);
    size_t jl;
    uint8_t *json;
    char jp[512];
    snprintf(jp, sizeof jp, "%s/out/import.json", g_dir);
    ck_assert_int_eq(fl_file_read_all(jp, 1 << 16, &json, &jl), 0);
    ck_assert_ptr_nonnull(strstr((char *)json, "\"llama2c_version\":0"));
    fl_free(json);
    /* A bad checkpoint fails with 1, a missing flag is a usage error. */
    ck_assert_int_eq(fl_test_system("%s model import --checkpoint %s "
                                    "--tokenizer %s --out %s 2>/dev/null",
                                    bin, tp, tp, out),
                     1);
    ck_assert_int_eq(
        fl_test_system("%s model import --tokenizer %s 2>/dev/null", bin, tp),
        2);
}
END_TEST

Suite *check_llama2_suite(void)
{
    Suite *s = suite_create("llama2");
    TCase *tc = tcase_create("core");
    tcase_add_unchecked_fixture(tc, make_vectors, drop_vectors);
    tcase_add_test(tc, test_import_versions);
    tcase_add_test(tc, test_truncated_and_trailing);
    tcase_add_test(tc, test_bad_headers);
    tcase_add_test(tc, test_import_with_tokenizer);
    tcase_add_test(tc, test_cli_import);
    suite_add_tcase(s, tc);
    return s;
}
