/* tests/unit/check_tokenizer.c — byte-level and BPE tokenizers: id layout,
 * training (known merges), llama2.c-equivalent encoding, lossless
 * round trips, tokenizer.bin files and their refusal. */
#include "model/tokenizer.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static fl_tokenizer_t *train(const char *corpus, int vocab)
{
    fl_tokenizer_train_opts_t o;
    fl_tokenizer_train_opts_init(&o);
    o.vocab_size = vocab;
    fl_tokenizer_t *t = NULL;
    ck_assert_int_eq(
        fl_tokenizer_train_bpe(&o, (const uint8_t *)corpus, strlen(corpus), &t),
        0);
    return t;
}

static void assert_token(const fl_tokenizer_t *t, int id, const char *text,
                         float score)
{
    size_t len;
    float s;
    const uint8_t *p = fl_tokenizer_token(t, id, &len, &s);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(len, strlen(text));
    ck_assert_mem_eq(p, text, len);
    ck_assert_float_eq(s, score);
}

/* Encodes and decodes; checks the text comes back unchanged. */
static void assert_roundtrip(const fl_tokenizer_t *t, const uint8_t *x,
                             size_t len, unsigned flags)
{
    int32_t *ids = malloc((len + 3) * sizeof *ids);
    size_t n;
    ck_assert_int_eq(fl_tokenizer_encode(t, x, len, flags, ids, len + 3, &n),
                     0);
    fl_buf_t out;
    fl_buf_init(&out, 1 << 24);
    ck_assert_int_eq(fl_tokenizer_decode(t, ids, n, flags, &out), 0);
    ck_assert_uint_eq(out.len, len);
    if (len)
        ck_assert_mem_eq(out.data, x, len);
    fl_buf_free(&out);
    free(ids);
}

START_TEST(test_byte_level_layout)
{
    fl_tokenizer_t *t = NULL;
    ck_assert_int_eq(fl_tokenizer_new_bytes(&t), 0);
    ck_assert_int_eq(fl_tokenizer_kind(t), FL_TOKENIZER_BYTES);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 259);
    ck_assert(fl_tokenizer_lossless(t));
    assert_token(t, FL_TOKENIZER_BOS, "<s>", 0.0f);
    assert_token(t, FL_TOKENIZER_BYTE0 + 0x0A, "<0x0A>", 0.0f);
    ck_assert_ptr_null(fl_tokenizer_token(t, 259, NULL, NULL));
    uint8_t x[512];
    fl_test_fill(x, sizeof x, 7);
    int32_t ids[515];
    size_t n;
    ck_assert_int_eq(
        fl_tokenizer_encode(t, x, sizeof x,
                            FL_TOKENIZER_ADD_BOS | FL_TOKENIZER_ADD_EOS, ids,
                            515, &n),
        0);
    ck_assert_uint_eq(n, 514);
    ck_assert_int_eq(ids[0], FL_TOKENIZER_BOS);
    ck_assert_int_eq(ids[513], FL_TOKENIZER_EOS);
    for (size_t i = 0; i < sizeof x; i++)
        ck_assert_int_eq(ids[i + 1], 3 + x[i]);
    assert_roundtrip(t, x, sizeof x, 0);
    assert_roundtrip(t, x, sizeof x, FL_TOKENIZER_DUMMY_PREFIX);
    /* A buffer too small, an id out of range. */
    ck_assert_int_eq(fl_tokenizer_encode(t, x, 10, 0, ids, 9, &n), FL_ETOOBIG);
    fl_buf_t out;
    fl_buf_init(&out, 1024);
    int32_t bad[3] = {70, 259, 71};
    ck_assert_int_eq(fl_tokenizer_decode(t, bad, 3, 0, &out), FL_ERANGE);
    ck_assert_uint_eq(out.len, 0);
    fl_buf_free(&out);
    fl_tokenizer_free(t);
    fl_tokenizer_free(NULL);
}
END_TEST

/* "ab ab ab abc abc": words "ab" x1, " ab" x2, " abc" x2. Characters by
 * count: a 5, b 5, ' ' 4, c 2. Pairs: (a,b) 5 -> "ab"; then (' ',ab) 4
 * -> " ab"; then (" ab",c) 2 -> " abc"; then nothing occurs twice. */
START_TEST(test_bpe_known_merges)
{
    fl_tokenizer_t *t = train("ab ab ab abc abc", 1000);
    ck_assert_int_eq(fl_tokenizer_kind(t), FL_TOKENIZER_BPE);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 266);
    assert_token(t, 259, "a", 0.0f);
    assert_token(t, 260, "b", 0.0f);
    assert_token(t, 261, " ", 0.0f);
    assert_token(t, 262, "c", 0.0f);
    assert_token(t, 263, "ab", -1.0f);
    assert_token(t, 264, " ab", -2.0f);
    assert_token(t, 265, " abc", -3.0f);
    int32_t ids[16];
    size_t n;
    ck_assert_int_eq(fl_tokenizer_encode(t, (const uint8_t *)"ab abc cab", 10,
                                         0, ids, 16, &n),
                     0);
    int32_t want[] = {263, 265, 261, 262, 263};
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(ids, want, sizeof want);
    fl_tokenizer_free(t);

    /* Ties are broken by the lowest (left, right) ids: x=259, y=260,
     * ' '=261; (x,y), (y,x) and (' ',y) all occur twice. */
    t = train("xy yx xy yx", 1000);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 265);
    assert_token(t, 259, "x", 0.0f);
    assert_token(t, 262, "xy", -1.0f);
    assert_token(t, 263, "yx", -2.0f);
    assert_token(t, 264, " yx", -3.0f);
    fl_tokenizer_free(t);

    /* The vocabulary size is a hard cap. */
    t = train("ab ab ab abc abc", 264);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 264);
    fl_tokenizer_free(t);
}
END_TEST

/* A synthetic corpus: words over a small alphabet with multi-byte
 * characters, so that merges are plentiful. */
static char *make_corpus(size_t words, uint64_t seed)
{
    static const char *const alpha[] = {
        "a", "b", "c", "d", "e", "é", "ü", "€", "t", "h", "\xf0\x9f\x98\x80"};
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    fl_buf_t b;
    fl_buf_init(&b, 1 << 26);
    for (size_t w = 0; w < words; w++) {
        size_t wl = 1 + fl_rng_below(&r, 6);
        for (size_t k = 0; k < wl; k++) {
            /* Zipf-ish: early letters are frequent. */
            size_t c = fl_rng_below(&r, 1 + fl_rng_below(&r, 11));
            fl_buf_append(&b, alpha[c], strlen(alpha[c]));
        }
        fl_buf_append(&b, fl_rng_below(&r, 10) ? " " : "\n", 1);
    }
    fl_buf_append_u8(&b, 0);
    return (char *)b.data;
}

START_TEST(test_bpe_roundtrip_any_bytes)
{
    char *corpus = make_corpus(20000, 1);
    fl_tokenizer_t *t = train(corpus, 600);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 600);
    ck_assert(fl_tokenizer_lossless(t));
    /* Trained text compresses. */
    size_t len = strlen(corpus);
    int32_t *ids = malloc((len + 3) * sizeof *ids);
    size_t n;
    ck_assert_int_eq(fl_tokenizer_encode(t, (const uint8_t *)corpus, len, 0,
                                         ids, len + 3, &n),
                     0);
    ck_assert_uint_lt(n, len / 2);
    free(ids);
    assert_roundtrip(t, (const uint8_t *)corpus, len, 0);
    assert_roundtrip(t, (const uint8_t *)corpus, len,
                     FL_TOKENIZER_DUMMY_PREFIX);
    /* Random bytes (mostly invalid UTF-8), truncated characters, text
     * with NULs, the empty string. */
    for (uint64_t s = 0; s < 50; s++) {
        uint8_t x[300];
        size_t xl = (size_t)(s * 6);
        fl_test_fill(x, xl, s);
        if (s % 2) /* mix real words with garbage */
            memcpy(x, corpus + s, xl / 2);
        assert_roundtrip(t, x, xl, 0);
        assert_roundtrip(t, x, xl, FL_TOKENIZER_DUMMY_PREFIX);
    }
    const char *tricky[] = {
        "\xe2\x82", "\xe2\x82\xac\xac", "\x80\x80\x80\x80\x80",
        "a\0b",     "\xf0\x9f\x98",     "\xc3\xa9\xc3",
        " "};
    size_t tricky_len[] = {2, 4, 5, 3, 3, 4, 1};
    for (size_t i = 0; i < FL_ARRAY_LEN(tricky); i++)
        assert_roundtrip(t, (const uint8_t *)tricky[i], tricky_len[i], 0);
    fl_tokenizer_free(t);
    free(corpus);
}
END_TEST

/* llama2.c's encoder as written there: quadratic, best score first,
 * leftmost on ties; the lookup excludes specials and <0xXX>. */
static int32_t naive_lookup(const fl_tokenizer_t *t, const uint8_t *s,
                            size_t len)
{
    for (int id = 3; id < fl_tokenizer_vocab_size(t); id++) {
        size_t tl;
        const uint8_t *p = fl_tokenizer_token(t, id, &tl, NULL);
        if (tl == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x')
            continue;
        if (tl == len && tl > 0 && memcmp(p, s, len) == 0)
            return id;
    }
    return -1;
}

static size_t naive_encode(const fl_tokenizer_t *t, const uint8_t *x,
                           size_t len, int32_t *ids)
{
    size_t *start = malloc((len + 1) * sizeof *start);
    size_t *tl = malloc((len + 1) * sizeof *tl);
    int *merge = malloc((len + 1) * sizeof *merge);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = 1;
        while (cl < 4 && i + cl < len && (x[i + cl] & 0xC0) == 0x80)
            cl++;
        int32_t id = naive_lookup(t, x + i, cl);
        if (id >= 0) {
            start[n] = i;
            tl[n] = cl;
            merge[n] = 1;
            ids[n++] = id;
        } else {
            for (size_t k = 0; k < cl; k++) {
                start[n] = i + k;
                tl[n] = 1;
                merge[n] = 0;
                ids[n++] = 3 + x[i + k];
            }
        }
        i += cl;
    }
    for (;;) {
        float best = -INFINITY;
        long bi = -1;
        int32_t bid = -1;
        for (size_t i = 0; i + 1 < n; i++) {
            if (!merge[i] || !merge[i + 1])
                continue;
            int32_t id = naive_lookup(t, x + start[i], tl[i] + tl[i + 1]);
            float sc;
            if (id < 0)
                continue;
            fl_tokenizer_token(t, id, NULL, &sc);
            if (sc > best) {
                best = sc;
                bi = (long)i;
                bid = id;
            }
        }
        if (bi < 0)
            break;
        ids[bi] = bid;
        tl[bi] += tl[bi + 1];
        for (size_t i = (size_t)bi + 1; i + 1 < n; i++) {
            ids[i] = ids[i + 1];
            start[i] = start[i + 1];
            tl[i] = tl[i + 1];
            merge[i] = merge[i + 1];
        }
        n--;
    }
    free(start);
    free(tl);
    free(merge);
    return n;
}

START_TEST(test_bpe_matches_llama2c_encoder)
{
    char *corpus = make_corpus(3000, 2);
    fl_tokenizer_t *t = train(corpus, 400);
    /* Scores that disagree with the ids' order, like sentencepiece's. */
    fl_buf_t file;
    fl_buf_init(&file, 1 << 24);
    ck_assert_int_eq(fl_tokenizer_save_buf(t, &file), 0);
    size_t pos = 4;
    fl_rng_t r;
    fl_rng_seed(&r, 3);
    for (int id = 0; id < fl_tokenizer_vocab_size(t); id++) {
        float s = (float)(fl_rng_below(&r, 50)) - 60.0f; /* many ties */
        uint32_t tlen;
        memcpy(file.data + pos, &s, 4);
        memcpy(&tlen, file.data + pos + 4, 4);
        pos += 8 + tlen;
    }
    fl_tokenizer_t *shuffled = NULL;
    ck_assert_int_eq(fl_tokenizer_load_buf(file.data, file.len, &shuffled), 0);
    const fl_tokenizer_t *toks[2] = {t, shuffled};
    int32_t got[400], want[400];
    for (int k = 0; k < 2; k++) {
        for (uint64_t s = 0; s < 40; s++) {
            const uint8_t *x = (const uint8_t *)corpus + s * 37;
            size_t len = 20 + s * 9, n;
            ck_assert_int_eq(
                fl_tokenizer_encode(toks[k], x, len, 0, got, 400, &n), 0);
            size_t wn = naive_encode(toks[k], x, len, want);
            ck_assert_uint_eq(n, wn);
            ck_assert_mem_eq(got, want, n * sizeof *got);
        }
    }
    fl_tokenizer_free(shuffled);
    fl_tokenizer_free(t);
    fl_buf_free(&file);
    free(corpus);
}
END_TEST

/* The trainer's merges, recomputed the slow way: every step recounts every
 * adjacent pair of every word and takes the most frequent (ties: lowest
 * (left, right) ids). Characters are taken from the trained vocabulary
 * (ids 259.. with score 0), words are cut as the header says. */
typedef struct {
    int32_t *s;
    size_t n;
} nword_t;

static int32_t find_text(const fl_tokenizer_t *t, const uint8_t *s, size_t len)
{
    for (int id = 259; id < fl_tokenizer_vocab_size(t); id++) {
        size_t tl;
        const uint8_t *p = fl_tokenizer_token(t, id, &tl, NULL);
        if (tl == len && memcmp(p, s, len) == 0)
            return id;
    }
    return -1;
}

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

START_TEST(test_bpe_matches_naive_trainer)
{
    char *corpus = make_corpus(4000, 6);
    const int vocab = 420;
    fl_tokenizer_t *t = train(corpus, vocab);
    int nchars = 0;
    for (int id = 259; id < vocab; id++) {
        float sc;
        fl_tokenizer_token(t, id, NULL, &sc);
        if (sc != 0.0f)
            break;
        nchars++;
    }
    ck_assert_int_gt(nchars, 5);
    /* Words as symbol ids. */
    size_t len = strlen(corpus), nw = 0;
    nword_t *w = calloc(len + 1, sizeof *w);
    for (size_t i = 0; i < len;) {
        size_t j = i;
        w[nw].s = malloc((len - i + 1) * sizeof(int32_t));
        do {
            size_t cl = 1;
            while (cl < 4 && j + cl < len &&
                   ((uint8_t)corpus[j + cl] & 0xC0) == 0x80)
                cl++;
            int32_t id = find_text(t, (const uint8_t *)corpus + j, cl);
            if (id < 0 || id >= 259 + nchars) {
                for (size_t b = 0; b < cl; b++)
                    w[nw].s[w[nw].n++] = 3 + (uint8_t)corpus[j + b];
            } else {
                w[nw].s[w[nw].n++] = id;
            }
            j += cl;
        } while (j < len && !is_ws((uint8_t)corpus[j]));
        nw++;
        i = j;
    }
    /* Token texts as the naive trainer builds them. */
    int ntok = 259 + nchars;
    char **text = calloc((size_t)vocab, sizeof *text);
    for (int id = 259; id < ntok; id++) {
        size_t tl;
        const uint8_t *p = fl_tokenizer_token(t, id, &tl, NULL);
        text[id] = strndup((const char *)p, tl);
    }
    long *cnt = malloc((size_t)vocab * vocab * sizeof *cnt);
    int merges = 0;
    while (ntok < vocab) {
        memset(cnt, 0, (size_t)vocab * vocab * sizeof *cnt);
        for (size_t k = 0; k < nw; k++)
            for (size_t i = 0; i + 1 < w[k].n; i++) {
                int32_t a = w[k].s[i], b = w[k].s[i + 1];
                if (a >= 259 && b >= 259 &&
                    strlen(text[a]) + strlen(text[b]) <= 64)
                    cnt[(size_t)a * vocab + b]++;
            }
        long best = 1;
        int ba = -1, bb = -1;
        for (int a = 259; a < ntok; a++)
            for (int b = 259; b < ntok; b++)
                if (cnt[(size_t)a * vocab + b] > best) {
                    best = cnt[(size_t)a * vocab + b];
                    ba = a;
                    bb = b;
                }
        if (ba < 0)
            break;
        size_t la = strlen(text[ba]), lb = strlen(text[bb]);
        char *cat = malloc(la + lb + 1);
        memcpy(cat, text[ba], la);
        memcpy(cat + la, text[bb], lb + 1);
        int c = -1;
        for (int id = 259; id < ntok; id++)
            if (strcmp(text[id], cat) == 0)
                c = id;
        if (c < 0) {
            c = ntok++;
            text[c] = cat;
            /* The trained vocabulary has the same token at the same id. */
            size_t tl;
            const uint8_t *p = fl_tokenizer_token(t, c, &tl, NULL);
            ck_assert_ptr_nonnull(p);
            ck_assert_uint_eq(tl, la + lb);
            ck_assert_mem_eq(p, cat, tl);
        } else {
            free(cat);
        }
        merges++;
        for (size_t k = 0; k < nw; k++) {
            size_t o = 0;
            for (size_t i = 0; i < w[k].n;) {
                if (i + 1 < w[k].n && w[k].s[i] == ba && w[k].s[i + 1] == bb) {
                    w[k].s[o++] = c;
                    i += 2;
                } else {
                    w[k].s[o++] = w[k].s[i++];
                }
            }
            w[k].n = o;
        }
    }
    ck_assert_int_eq(ntok, fl_tokenizer_vocab_size(t));
    ck_assert_int_gt(merges, 100);
    for (int id = 259; id < ntok; id++)
        free(text[id]);
    for (size_t k = 0; k < nw; k++)
        free(w[k].s);
    free(text);
    free(w);
    free(cnt);
    fl_tokenizer_free(t);
    free(corpus);
}
END_TEST

/* A tokenizer.bin as llama2.c writes it (sentencepiece scores, "\n<s>\n"
 * for BOS), built by hand: merges by score, not by id, byte fallback, the
 * dummy prefix. */
static void put_token(fl_buf_t *b, float score, const char *s)
{
    uint32_t len = (uint32_t)strlen(s);
    fl_buf_append(b, &score, 4);
    fl_buf_append(b, &len, 4);
    fl_buf_append(b, s, len);
}

static void llama_style_file(fl_buf_t *b)
{
    int32_t mtl = 7;
    fl_buf_append(b, &mtl, 4);
    put_token(b, 0, "<unk>");
    put_token(b, 0, "\n<s>\n");
    put_token(b, 0, "\n</s>\n");
    for (int i = 0; i < 256; i++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", i);
        put_token(b, 0, s);
    }
    put_token(b, -1.0f, " ");   /* 259 */
    put_token(b, -2.0f, "h");   /* 260 */
    put_token(b, -3.0f, "e");   /* 261 */
    put_token(b, -4.0f, "l");   /* 262 */
    put_token(b, -5.0f, "o");   /* 263 */
    put_token(b, -9.0f, "he");  /* 264: worse than "ll" */
    put_token(b, -6.0f, "ll");  /* 265 */
    put_token(b, -7.0f, "llo"); /* 266 */
    put_token(b, -8.0f, " he"); /* 267 */
    put_token(b, -1.5f, "€");   /* 268 */
}

START_TEST(test_llama2c_style_file)
{
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    llama_style_file(&b);
    fl_tokenizer_t *t = NULL;
    ck_assert_int_eq(fl_tokenizer_load_buf(b.data, b.len, &t), 0);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 269);
    ck_assert(fl_tokenizer_lossless(t));
    int32_t ids[32];
    size_t n;
    /* " hello€x": " ","h","e","l","l","o","€",<0x78>; ll (-6) first, then
     * llo (-7), then " he" needs "he" (-9) first: " " + "he" -> " he". */
    const char *x = "hello\xe2\x82\xacx";
    ck_assert_int_eq(
        fl_tokenizer_encode(t, (const uint8_t *)x, strlen(x),
                            FL_TOKENIZER_ADD_BOS | FL_TOKENIZER_DUMMY_PREFIX,
                            ids, 32, &n),
        0);
    int32_t want[] = {1, 267, 266, 268, 3 + 'x'};
    ck_assert_uint_eq(n, FL_ARRAY_LEN(want));
    ck_assert_mem_eq(ids, want, sizeof want);
    fl_buf_t out;
    fl_buf_init(&out, 1024);
    ck_assert_int_eq(
        fl_tokenizer_decode(t, ids, n, FL_TOKENIZER_DUMMY_PREFIX, &out), 0);
    ck_assert_uint_eq(out.len, strlen(x));
    ck_assert_mem_eq(out.data, x, out.len);
    /* Text that spells a special or a byte token stays text. */
    const char *spell = "<s><0x41>";
    ck_assert_int_eq(
        fl_tokenizer_encode(t, (const uint8_t *)spell, 9, 0, ids, 32, &n), 0);
    ck_assert_uint_eq(n, 9);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(ids[i], 3 + spell[i]);
    fl_buf_free(&out);
    fl_tokenizer_free(t);
    fl_buf_free(&b);
}
END_TEST

START_TEST(test_file_roundtrip_identical)
{
    char *corpus = make_corpus(5000, 4);
    fl_tokenizer_t *t = train(corpus, 500), *u = NULL, *bytes = NULL;
    char dir[256], path[512];
    fl_test_tmpdir(dir, sizeof dir);
    ck_assert_int_eq(fl_path_join(path, sizeof path, dir, "tokenizer.bin"), 0);
    ck_assert_int_eq(fl_tokenizer_save(t, path), 0);
    ck_assert_int_eq(fl_tokenizer_load(path, &u), 0);
    ck_assert_int_eq(fl_tokenizer_vocab_size(u), 500);
    for (int id = 0; id < 500; id++) {
        size_t la, lb;
        float sa, sb;
        const uint8_t *a = fl_tokenizer_token(t, id, &la, &sa);
        const uint8_t *b = fl_tokenizer_token(u, id, &lb, &sb);
        ck_assert_uint_eq(la, lb);
        ck_assert_mem_eq(a, b, la);
        ck_assert_float_eq(sa, sb);
    }
    fl_buf_t b1, b2;
    fl_buf_init(&b1, 1 << 24);
    fl_buf_init(&b2, 1 << 24);
    ck_assert_int_eq(fl_tokenizer_save_buf(t, &b1), 0);
    ck_assert_int_eq(fl_tokenizer_save_buf(u, &b2), 0);
    ck_assert_uint_eq(b1.len, b2.len);
    ck_assert_mem_eq(b1.data, b2.data, b1.len);
    /* The file on disk is that image. */
    uint8_t *disk;
    size_t dl;
    ck_assert_int_eq(fl_file_read_all(path, 1 << 24, &disk, &dl), 0);
    ck_assert_uint_eq(dl, b1.len);
    ck_assert_mem_eq(disk, b1.data, dl);
    fl_free(disk);
    /* The byte-level vocabulary loads back as byte-level. */
    ck_assert_int_eq(fl_tokenizer_new_bytes(&bytes), 0);
    fl_buf_reset(&b1);
    ck_assert_int_eq(fl_tokenizer_save_buf(bytes, &b1), 0);
    fl_tokenizer_free(bytes);
    ck_assert_int_eq(fl_tokenizer_load_buf(b1.data, b1.len, &bytes), 0);
    ck_assert_int_eq(fl_tokenizer_kind(bytes), FL_TOKENIZER_BYTES);
    fl_tokenizer_free(bytes);
    fl_buf_free(&b1);
    fl_buf_free(&b2);
    fl_tokenizer_free(t);
    fl_tokenizer_free(u);
    fl_test_rmtree(dir);
    free(corpus);
}
END_TEST

START_TEST(test_bad_files_refused)
{
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    llama_style_file(&b);
    fl_tokenizer_t *t = (fl_tokenizer_t *)&b; /* must be reset to NULL */
    /* Every cut inside the file is truncation, or a valid shorter file
     * when it falls between tokens. */
    size_t ok = 0;
    for (size_t cut = 0; cut < b.len; cut++) {
        int rc = fl_tokenizer_load_buf(b.data, cut, &t);
        if (rc == 0) {
            ok++;
            fl_tokenizer_free(t);
        } else {
            ck_assert_ptr_null(t);
            ck_assert(rc == FL_ETRUNC || (rc == FL_EFORMAT && cut < 40));
        }
    }
    ck_assert_uint_eq(ok, 269 - 3 + 1 - 1); /* 3 .. 268 whole tokens */
    uint8_t *d = b.data;
    int32_t v;
    /* Token longer than max_token_length; negative length. */
    v = 4;
    memcpy(d, &v, 4);
    ck_assert_int_eq(fl_tokenizer_load_buf(d, b.len, &t), FL_EFORMAT);
    v = 7;
    memcpy(d, &v, 4);
    v = -1;
    memcpy(d + 8, &v, 4);
    ck_assert_int_eq(fl_tokenizer_load_buf(d, b.len, &t), FL_EFORMAT);
    v = 5;
    memcpy(d + 8, &v, 4);
    ck_assert_int_eq(fl_tokenizer_load_buf(d, b.len, &t), 0);
    fl_tokenizer_free(t);
    /* Absurd max_token_length; a NaN score. */
    v = 1 << 30;
    memcpy(d, &v, 4);
    ck_assert_int_eq(fl_tokenizer_load_buf(d, b.len, &t), FL_EFORMAT);
    v = 7;
    memcpy(d, &v, 4);
    float nan = NAN;
    memcpy(d + 4, &nan, 4);
    ck_assert_int_eq(fl_tokenizer_load_buf(d, b.len, &t), FL_EFORMAT);
    /* Too short to hold the specials; nothing at all. */
    uint8_t two[4 + 2 * 8] = {0};
    ck_assert_int_eq(fl_tokenizer_load_buf(two, sizeof two, &t), FL_EFORMAT);
    ck_assert_int_eq(fl_tokenizer_load_buf(two, 0, &t), FL_ETRUNC);
    ck_assert_int_eq(fl_tokenizer_load("/nonexistent/tokenizer.bin", &t),
                     FL_ENOENT);
    ck_assert_ptr_null(t);
    fl_buf_free(&b);
}
END_TEST

/* Every allocation failure is reported, and leaks nothing (ASan). */
START_TEST(test_alloc_failures)
{
    char *corpus = make_corpus(500, 5);
    fl_tokenizer_train_opts_t o;
    fl_tokenizer_train_opts_init(&o);
    o.vocab_size = 300;
    int done = 0;
    for (long k = 1; k < 100000 && !done; k++) {
        fl_tokenizer_t *t = NULL;
        fl_alloc_fail_after(k);
        int rc = fl_tokenizer_train_bpe(&o, (const uint8_t *)corpus,
                                        strlen(corpus), &t);
        fl_alloc_fail_after(0);
        if (rc == 0) {
            done = 1;
            int32_t ids[64];
            size_t n;
            for (long j = 1; j < 20; j++) {
                fl_alloc_fail_after(j);
                rc = fl_tokenizer_encode(t, (const uint8_t *)corpus, 60, 0, ids,
                                         64, &n);
                fl_alloc_fail_after(0);
                ck_assert(rc == 0 || rc == FL_ENOMEM);
            }
        } else {
            ck_assert_int_eq(rc, FL_ENOMEM);
            ck_assert_ptr_null(t);
        }
        fl_tokenizer_free(t);
    }
    ck_assert(done);
    free(corpus);
}
END_TEST

/* Real text: a vocabulary trained on two fortunes files. */
START_TEST(test_train_on_fortunes)
{
    const char *files[] = {"/usr/share/games/fortunes/debian",
                           "/usr/share/games/fortunes/linux"};
    fl_buf_t corpus;
    fl_buf_init(&corpus, 1 << 24);
    for (size_t i = 0; i < 2; i++) {
        uint8_t *d;
        size_t l;
        if (fl_file_read_all(files[i], 1 << 22, &d, &l) != 0)
            continue; /* fortunes missing: the synthetic tests remain */
        fl_buf_append(&corpus, d, l);
        fl_free(d);
    }
    if (corpus.len == 0) {
        fl_buf_free(&corpus);
        return;
    }
    fl_tokenizer_train_opts_t o;
    fl_tokenizer_train_opts_init(&o);
    o.vocab_size = 1024;
    fl_tokenizer_t *t = NULL;
    ck_assert_int_eq(fl_tokenizer_train_bpe(&o, corpus.data, corpus.len, &t),
                     0);
    ck_assert_int_eq(fl_tokenizer_vocab_size(t), 1024);
    /* " the" is among the merges of English text. */
    int32_t ids[8];
    size_t n;
    ck_assert_int_eq(
        fl_tokenizer_encode(t, (const uint8_t *)" the", 4, 0, ids, 8, &n), 0);
    ck_assert_uint_eq(n, 1);
    int32_t *all = malloc((corpus.len + 3) * sizeof *all);
    ck_assert_int_eq(fl_tokenizer_encode(t, corpus.data, corpus.len, 0, all,
                                         corpus.len + 3, &n),
                     0);
    ck_assert_uint_lt(n, corpus.len / 2);
    free(all);
    assert_roundtrip(t, corpus.data, corpus.len, 0);
    fl_tokenizer_free(t);
    fl_buf_free(&corpus);
}
END_TEST

Suite *check_tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_byte_level_layout);
    tcase_add_test(tc, test_bpe_known_merges);
    tcase_add_test(tc, test_bpe_roundtrip_any_bytes);
    tcase_add_test(tc, test_bpe_matches_llama2c_encoder);
    tcase_add_test(tc, test_bpe_matches_naive_trainer);
    tcase_add_test(tc, test_llama2c_style_file);
    tcase_add_test(tc, test_file_roundtrip_identical);
    tcase_add_test(tc, test_bad_files_refused);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_train_on_fortunes);
    suite_add_tcase(s, tc);
    return s;
}
