/*
 * model/tokenizer.c — byte-level and BPE tokenizers (see tokenizer.h).
 *
 * A vocabulary is one text arena with offsets (token i is
 * text[offs[i] .. offs[i+1])), a score per token, and an open-addressing
 * hash from text to id that holds only the tokens that can be looked up
 * (not the specials, not the <0xXX> byte tokens, not empty ones).
 *
 * The encoder gives the same ids as llama2.c's quadratic loop ("merge the
 * best-scoring adjacent pair, leftmost on ties, until none is left") in
 * O(n log n): symbols are a linked list over the text, candidate merges
 * sit in a max-heap keyed by (score, position), and a candidate popped
 * after one of its symbols changed is recognised by its span and skipped.
 * Since merged symbols never include byte tokens, a symbol's text is
 * always the slice of the input it covers, so a pair's text is a slice
 * too and needs no copying.
 */
#include "model/tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fl_tokenizer {
    fl_tokenizer_kind_t kind;
    int n;                /* tokens */
    int max_len;          /* longest token text */
    float *scores;        /* [n] */
    uint32_t *offs;       /* [n + 1] into text */
    uint8_t *text;        /* all token texts, concatenated */
    int16_t *byte_of;     /* [n]: the byte of a <0xXX> token, else -1 */
    int32_t byte_id[256]; /* id of <0xXX>, or -1 */
    int32_t *slots;       /* hash: id + 1, 0 = empty */
    size_t nslots;        /* power of two */
};

/* ---- little-endian fields -------------------------------------------------
 */
static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void wr_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static float u32_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_to_u32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- string hash -----------------------------------------------------------
 */
static uint64_t hash_bytes(const uint8_t *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

/* A set of ids keyed by their text, over a caller's arena. */
typedef struct {
    int32_t *slots; /* id + 1, 0 = empty */
    size_t cap;     /* power of two */
    size_t n;
} strmap_t;

static int strmap_init(strmap_t *m, size_t expect)
{
    size_t cap = 64;
    while (cap < 2 * expect + 2)
        cap *= 2;
    m->slots = fl_calloc(cap, sizeof *m->slots);
    m->cap = cap;
    m->n = 0;
    return m->slots ? 0 : FL_ENOMEM;
}

static void strmap_free(strmap_t *m)
{
    fl_free(m->slots);
    m->slots = NULL;
}

/* Returns the id whose text (arena[offs[id] .. + lens[id]]) equals s, or
 * -1; *slot receives where it is or where it would go. */
static int32_t strmap_find(const strmap_t *m, const uint8_t *arena,
                           const uint32_t *offs, const uint32_t *lens,
                           const uint8_t *s, size_t len, size_t *slot)
{
    size_t mask = m->cap - 1, i = (size_t)hash_bytes(s, len) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t v = m->slots[i];
        if (v == 0)
            break;
        int32_t id = v - 1;
        if (lens[id] == len && memcmp(arena + offs[id], s, len) == 0) {
            if (slot)
                *slot = i;
            return id;
        }
    }
    if (slot)
        *slot = i;
    return -1;
}

/* Inserts id (whose text must not be in the map yet); grows the table. */
static int strmap_insert(strmap_t *m, const uint8_t *arena,
                         const uint32_t *offs, const uint32_t *lens, int32_t id)
{
    if (2 * (m->n + 1) > m->cap) {
        strmap_t g;
        int rc = strmap_init(&g, m->cap);
        if (rc)
            return rc;
        for (size_t i = 0; i < m->cap; i++) {
            int32_t v = m->slots[i];
            if (!v)
                continue;
            size_t j = (size_t)hash_bytes(arena + offs[v - 1], lens[v - 1]) &
                       (g.cap - 1);
            while (g.slots[j])
                j = (j + 1) & (g.cap - 1);
            g.slots[j] = v;
        }
        g.n = m->n;
        strmap_free(m);
        *m = g;
    }
    size_t slot;
    (void)strmap_find(m, arena, offs, lens, arena + offs[id], lens[id], &slot);
    m->slots[slot] = id + 1;
    m->n++;
    return 0;
}

/* ---- building a tokenizer from parts ----------------------------------------
 */
static int parse_byte_token(const uint8_t *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>')
        return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        int c = s[k], d = -1;
        if (c >= 'a' && c <= 'f')
            c -= 'a' - 'A';
        for (int h = 0; h < 16; h++)
            if (hex[h] == c)
                d = h;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Takes text, offs and scores (owned, freed on failure too) and builds
 * the lookup structures. */
static int tokenizer_build(uint8_t *text, uint32_t *offs, float *scores, int n,
                           fl_tokenizer_t **out)
{
    int rc = FL_ENOMEM;
    fl_tokenizer_t *t = NULL;
    uint32_t *lens = NULL;
    strmap_t m = {0};

    *out = NULL;
    t = fl_calloc(1, sizeof *t);
    lens = fl_calloc((size_t)n, sizeof *lens);
    if (!t || !lens)
        goto out;
    t->text = text;
    t->offs = offs;
    t->scores = scores;
    text = NULL;
    offs = NULL;
    scores = NULL;
    t->n = n;
    t->byte_of = fl_malloc((size_t)n * sizeof *t->byte_of);
    if (!t->byte_of)
        goto out;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    if ((rc = strmap_init(&m, (size_t)n)) != 0)
        goto out;
    for (int i = 0; i < n; i++) {
        lens[i] = t->offs[i + 1] - t->offs[i];
        if ((int)lens[i] > t->max_len)
            t->max_len = (int)lens[i];
        const uint8_t *s = t->text + t->offs[i];
        int b = parse_byte_token(s, lens[i]);
        t->byte_of[i] = (int16_t)b;
        if (b >= 0 && t->byte_id[b] < 0)
            t->byte_id[b] = i;
        if (i < FL_TOKENIZER_BYTE0 || b >= 0 || lens[i] == 0)
            continue;
        if (strmap_find(&m, t->text, t->offs, lens, s, lens[i], NULL) >= 0)
            continue; /* a duplicate: the lower id keeps the text */
        if ((rc = strmap_insert(&m, t->text, t->offs, lens, i)) != 0)
            goto out;
    }
    t->slots = m.slots;
    t->nslots = m.cap;
    m.slots = NULL;
    t->kind = FL_TOKENIZER_BPE;
    if (n == FL_TOKENIZER_BYTE_VOCAB) {
        int plain = 1;
        for (int b = 0; b < 256; b++)
            if (t->byte_id[b] != FL_TOKENIZER_BYTE0 + b)
                plain = 0;
        if (plain)
            t->kind = FL_TOKENIZER_BYTES;
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    strmap_free(&m);
    fl_free(lens);
    fl_tokenizer_free(t);
    fl_free(text);
    fl_free(offs);
    fl_free(scores);
    return rc;
}

/* Looks up a slice of text among the mergeable tokens; -1 if absent. */
static int32_t tok_lookup(const fl_tokenizer_t *t, const uint8_t *s, size_t len)
{
    size_t mask = t->nslots - 1, i = (size_t)hash_bytes(s, len) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t v = t->slots[i];
        if (v == 0)
            return -1;
        int32_t id = v - 1;
        if (t->offs[id + 1] - t->offs[id] == len &&
            memcmp(t->text + t->offs[id], s, len) == 0)
            return id;
    }
}

/* The texts of ids 0 .. 258 in flotilla's vocabularies. */
static int base_vocab(fl_buf_t *text, uint32_t *offs, float *scores)
{
    static const char *const special[3] = {"<unk>", "<s>", "</s>"};
    static const char hex[] = "0123456789ABCDEF";
    int rc;
    for (int i = 0; i < FL_TOKENIZER_BYTE_VOCAB; i++) {
        offs[i] = (uint32_t)text->len;
        scores[i] = 0.0f;
        if (i < FL_TOKENIZER_BYTE0) {
            rc = fl_buf_append(text, special[i], strlen(special[i]));
        } else {
            int b = i - FL_TOKENIZER_BYTE0;
            char s[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            rc = fl_buf_append(text, s, sizeof s);
        }
        if (rc)
            return rc;
    }
    offs[FL_TOKENIZER_BYTE_VOCAB] = (uint32_t)text->len;
    return 0;
}

int fl_tokenizer_new_bytes(fl_tokenizer_t **out)
{
    fl_buf_t text;
    fl_buf_init(&text, 1 << 20);
    uint32_t *offs = fl_malloc((FL_TOKENIZER_BYTE_VOCAB + 1) * sizeof *offs);
    float *scores = fl_malloc(FL_TOKENIZER_BYTE_VOCAB * sizeof *scores);
    int rc = FL_ENOMEM;
    *out = NULL;
    if (!offs || !scores)
        goto fail;
    if ((rc = base_vocab(&text, offs, scores)) != 0)
        goto fail;
    return tokenizer_build(text.data, offs, scores, FL_TOKENIZER_BYTE_VOCAB,
                           out);
fail:
    fl_buf_free(&text);
    fl_free(offs);
    fl_free(scores);
    return rc;
}

void fl_tokenizer_free(fl_tokenizer_t *t)
{
    if (!t)
        return;
    fl_free(t->scores);
    fl_free(t->offs);
    fl_free(t->text);
    fl_free(t->byte_of);
    fl_free(t->slots);
    fl_free(t);
}

/* ---- files
 * ------------------------------------------------------------------- */
int fl_tokenizer_load_buf(const uint8_t *buf, size_t len, fl_tokenizer_t **out)
{
    *out = NULL;
    if (len > FL_TOKENIZER_MAX_FILE)
        return FL_ETOOBIG;
    if (len < 4)
        return FL_ETRUNC;
    uint32_t mtl = rd_u32(buf);
    if (mtl > FL_TOKENIZER_MAX_TOKEN_LEN) /* also catches negative values */
        return FL_EFORMAT;
    /* First pass: validate and count, allocate nothing. */
    size_t pos = 4, n = 0, textlen = 0;
    while (pos < len) {
        if (len - pos < 8)
            return FL_ETRUNC;
        float score = u32_to_float(rd_u32(buf + pos));
        uint32_t tl = rd_u32(buf + pos + 4);
        if (!isfinite(score) || tl > mtl)
            return FL_EFORMAT;
        pos += 8;
        if (len - pos < tl)
            return FL_ETRUNC;
        pos += tl;
        textlen += tl;
        if (++n > FL_TOKENIZER_MAX_VOCAB)
            return FL_ETOOBIG;
    }
    if (n < FL_TOKENIZER_BYTE0)
        return FL_EFORMAT;
    uint8_t *text = fl_malloc(textlen + 1);
    uint32_t *offs = fl_malloc((n + 1) * sizeof *offs);
    float *scores = fl_malloc(n * sizeof *scores);
    if (!text || !offs || !scores) {
        fl_free(text);
        fl_free(offs);
        fl_free(scores);
        return FL_ENOMEM;
    }
    pos = 4;
    size_t tp = 0;
    for (size_t i = 0; i < n; i++) {
        scores[i] = u32_to_float(rd_u32(buf + pos));
        uint32_t tl = rd_u32(buf + pos + 4);
        pos += 8;
        offs[i] = (uint32_t)tp;
        memcpy(text + tp, buf + pos, tl);
        tp += tl;
        pos += tl;
    }
    offs[n] = (uint32_t)tp;
    return tokenizer_build(text, offs, scores, (int)n, out);
}

int fl_tokenizer_load(const char *path, fl_tokenizer_t **out)
{
    uint8_t *data = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fl_file_read_all(path, FL_TOKENIZER_MAX_FILE, &data, &len);
    if (rc == 0)
        rc = fl_tokenizer_load_buf(data, len, out);
    fl_free(data);
    return rc;
}

int fl_tokenizer_save_buf(const fl_tokenizer_t *t, fl_buf_t *b)
{
    size_t start = b->len;
    uint8_t hdr[8];
    int rc;
    wr_u32(hdr, (uint32_t)t->max_len);
    if ((rc = fl_buf_append(b, hdr, 4)) != 0)
        goto out;
    for (int i = 0; i < t->n; i++) {
        uint32_t tl = t->offs[i + 1] - t->offs[i];
        wr_u32(hdr, float_to_u32(t->scores[i]));
        wr_u32(hdr + 4, tl);
        if ((rc = fl_buf_append(b, hdr, 8)) != 0 ||
            (rc = fl_buf_append(b, t->text + t->offs[i], tl)) != 0)
            goto out;
    }
out:
    if (rc)
        b->len = start;
    return rc;
}

int fl_tokenizer_save(const fl_tokenizer_t *t, const char *path)
{
    fl_buf_t b;
    fl_buf_init(&b, (size_t)FL_TOKENIZER_MAX_FILE);
    int rc = fl_tokenizer_save_buf(t, &b);
    if (rc == 0)
        rc = fl_file_write_atomic(path, b.data, b.len, 0644);
    fl_buf_free(&b);
    return rc;
}

/* ---- queries
 * -------------------------------------------------------------------- */
fl_tokenizer_kind_t fl_tokenizer_kind(const fl_tokenizer_t *t)
{
    return t->kind;
}

int fl_tokenizer_vocab_size(const fl_tokenizer_t *t)
{
    return t->n;
}

const uint8_t *fl_tokenizer_token(const fl_tokenizer_t *t, int id, size_t *len,
                                  float *score)
{
    if (id < 0 || id >= t->n)
        return NULL;
    if (len)
        *len = t->offs[id + 1] - t->offs[id];
    if (score)
        *score = t->scores[id];
    return t->text + t->offs[id];
}

int fl_tokenizer_lossless(const fl_tokenizer_t *t)
{
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0)
            return 0;
    return 1;
}

/* ---- encoding
 * -------------------------------------------------------------------- */
/* Length of the character at s[0..len): the byte and up to three
 * continuation bytes after it (llama2.c's grouping; no other validation). */
static size_t char_len(const uint8_t *s, size_t len)
{
    size_t k = 1;
    while (k < 4 && k < len && (s[k] & 0xC0) == 0x80)
        k++;
    return k;
}

typedef struct {
    float score;
    uint32_t pos;  /* start of the left symbol in the text */
    uint32_t span; /* bytes covered by the pair */
    int32_t left;  /* symbol index */
    int32_t id;    /* the merged token */
} cand_t;

/* Max-heap order: higher score first, then the leftmost. */
static int cand_before(const cand_t *a, const cand_t *b)
{
    if (a->score != b->score)
        return a->score > b->score;
    return a->pos < b->pos;
}

static void heap_push(cand_t *h, size_t *n, cand_t c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand_t heap_pop(cand_t *h, size_t *n)
{
    cand_t top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const cand_t *bv = &last;
        if (l < *n && cand_before(&h[l], bv)) {
            best = l;
            bv = &h[l];
        }
        if (r < *n && cand_before(&h[r], bv))
            best = r;
        if (best == i)
            break;
        h[i] = h[best];
        i = best;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

typedef struct {
    uint32_t *start, *len;
    int32_t *id, *prev, *next;
    uint8_t *mergeable;
    cand_t *heap;
    size_t nheap;
} symbols_t;

static void try_pair(const fl_tokenizer_t *t, symbols_t *s, const uint8_t *text,
                     int32_t a)
{
    if (a < 0)
        return;
    int32_t b = s->next[a];
    if (b < 0 || !s->mergeable[a] || !s->mergeable[b])
        return;
    uint32_t span = s->len[a] + s->len[b];
    if (span > (uint32_t)t->max_len)
        return;
    int32_t id = tok_lookup(t, text + s->start[a], span);
    if (id < 0)
        return;
    cand_t c = {t->scores[id], s->start[a], span, a, id};
    heap_push(s->heap, &s->nheap, c);
}

static int encode_bpe(const fl_tokenizer_t *t, const uint8_t *text, size_t len,
                      int32_t *ids, size_t cap, size_t *n)
{
    int rc = FL_ENOMEM;
    symbols_t s = {0};
    size_t m = 0;
    if (len > UINT32_MAX / 4)
        return FL_ETOOBIG;
    s.start = fl_malloc((len + 1) * sizeof *s.start);
    s.len = fl_malloc((len + 1) * sizeof *s.len);
    s.id = fl_malloc((len + 1) * sizeof *s.id);
    s.prev = fl_malloc((len + 1) * sizeof *s.prev);
    s.next = fl_malloc((len + 1) * sizeof *s.next);
    s.mergeable = fl_malloc(len + 1);
    s.heap = fl_malloc((3 * len + 1) * sizeof *s.heap);
    if (!s.start || !s.len || !s.id || !s.prev || !s.next || !s.mergeable ||
        !s.heap)
        goto out;
    for (size_t i = 0; i < len;) {
        size_t cl = char_len(text + i, len - i);
        int32_t id = tok_lookup(t, text + i, cl);
        if (id >= 0) {
            s.start[m] = (uint32_t)i;
            s.len[m] = (uint32_t)cl;
            s.id[m] = id;
            s.mergeable[m++] = 1;
        } else {
            for (size_t k = 0; k < cl; k++) {
                id = t->byte_id[text[i + k]];
                if (id < 0) {
                    rc = FL_ENOTSUP;
                    goto out;
                }
                s.start[m] = (uint32_t)(i + k);
                s.len[m] = 1;
                s.id[m] = id;
                s.mergeable[m++] = 0;
            }
        }
        i += cl;
    }
    for (size_t i = 0; i < m; i++) {
        s.prev[i] = (int32_t)i - 1;
        s.next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < m; i++)
        try_pair(t, &s, text, (int32_t)i);
    size_t alive = m;
    while (s.nheap > 0) {
        cand_t c = heap_pop(s.heap, &s.nheap);
        int32_t a = c.left, b = s.next[a];
        /* Stale unless a still starts the same span with its neighbour
         * (the same span is the same text, so the same merge). */
        if (s.len[a] == 0 || b < 0 || s.len[a] + s.len[b] != c.span)
            continue;
        s.id[a] = c.id;
        s.len[a] = c.span;
        s.len[b] = 0; /* dead */
        s.next[a] = s.next[b];
        if (s.next[b] >= 0)
            s.prev[s.next[b]] = a;
        alive--;
        try_pair(t, &s, text, s.prev[a]);
        try_pair(t, &s, text, a);
    }
    if (alive > cap) {
        rc = FL_ETOOBIG;
        goto out;
    }
    size_t k = 0;
    for (int32_t i = m ? 0 : -1; i >= 0; i = s.next[i])
        ids[k++] = s.id[i];
    *n = k;
    rc = 0;
out:
    fl_free(s.start);
    fl_free(s.len);
    fl_free(s.id);
    fl_free(s.prev);
    fl_free(s.next);
    fl_free(s.mergeable);
    fl_free(s.heap);
    return rc;
}

int fl_tokenizer_encode(const fl_tokenizer_t *t, const uint8_t *text,
                        size_t len, unsigned flags, int32_t *ids, size_t cap,
                        size_t *n)
{
    int rc = 0;
    size_t k = 0, body;
    uint8_t *copy = NULL;
    *n = 0;
    if (flags & FL_TOKENIZER_ADD_BOS) {
        if (cap < 1)
            return FL_ETOOBIG;
        ids[k++] = FL_TOKENIZER_BOS;
    }
    if ((flags & FL_TOKENIZER_DUMMY_PREFIX) && len > 0) {
        copy = fl_malloc(len + 1);
        if (!copy)
            return FL_ENOMEM;
        copy[0] = ' ';
        memcpy(copy + 1, text, len);
        text = copy;
        len++;
    }
    if (t->kind == FL_TOKENIZER_BYTES) {
        if (cap - k < len) {
            rc = FL_ETOOBIG;
            goto out;
        }
        for (size_t i = 0; i < len; i++)
            ids[k + i] = FL_TOKENIZER_BYTE0 + text[i];
        body = len;
    } else if ((rc = encode_bpe(t, text, len, ids + k, cap - k, &body)) != 0) {
        goto out;
    }
    k += body;
    if (flags & FL_TOKENIZER_ADD_EOS) {
        if (k >= cap) {
            rc = FL_ETOOBIG;
            goto out;
        }
        ids[k++] = FL_TOKENIZER_EOS;
    }
    *n = k;
out:
    fl_free(copy);
    return rc;
}

int fl_tokenizer_decode(const fl_tokenizer_t *t, const int32_t *ids, size_t n,
                        unsigned flags, fl_buf_t *out)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n)
            return FL_ERANGE;
    size_t start = out->len;
    int strip = (flags & FL_TOKENIZER_DUMMY_PREFIX) != 0, rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int32_t id = ids[i];
        const uint8_t *p;
        uint8_t byte;
        size_t pl;
        if (id < FL_TOKENIZER_BYTE0)
            continue;
        if (t->byte_of[id] >= 0) {
            byte = (uint8_t)t->byte_of[id];
            p = &byte;
            pl = 1;
        } else {
            p = t->text + t->offs[id];
            pl = t->offs[id + 1] - t->offs[id];
        }
        if (strip && pl > 0) {
            if (p[0] == ' ') {
                p++;
                pl--;
            }
            strip = 0;
        }
        rc = fl_buf_append(out, p, pl);
    }
    if (rc)
        out->len = start;
    return rc;
}

/* ---- training
 * ------------------------------------------------------------------- Words are
 * slices of the corpus, counted once each; every distinct word keeps its
 * current symbols. A hash table holds each adjacent pair's count (over word
 * counts) and the words it occurs in; a lazy max-heap of (count, pair) finds
 * the next merge: an entry whose count is out of date is pushed again with the
 * current count, so every pair always has an entry at or above its count.
 * Merging (a, b) -> c visits only the words on (a, b)'s list: their old pairs
 * are subtracted and their new ones added, and the new pairs (those with c) get
 * heap entries. */

#define TRAIN_MAX_VOCAB 65536

void fl_tokenizer_train_opts_init(fl_tokenizer_train_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->vocab_size = 1024;
    o->char_coverage = 0.9995;
    o->max_token_len = 64;
    o->max_corpus_bytes = (size_t)1 << 30;
}

typedef struct {
    uint64_t key; /* left << 32 | right; 0 = empty slot */
    int64_t count;
    int32_t *words;
    uint32_t nwords, capwords;
    uint32_t pushed; /* merge step of the last push of a new pair */
} pair_t;

typedef struct {
    int64_t count;
    uint64_t key;
} hent_t;

typedef struct {
    /* vocabulary being built */
    fl_buf_t text;
    uint32_t *offs, *lens; /* [TRAIN_MAX_VOCAB + 1] */
    float *scores;
    int n, max_len;
    strmap_t vmap;
    /* distinct words: slices of the corpus */
    const uint8_t *corpus;
    uint32_t *woff, *wlen, *soff, *slen, *stamp;
    int64_t *wcount;
    size_t nwords, capwords;
    strmap_t wmap;
    int32_t *syms;
    /* pairs */
    pair_t *pairs;
    size_t pcap, pn;
    hent_t *heap;
    size_t nheap, capheap;
    uint64_t *fresh; /* keys of pairs that contain the new token */
    size_t nfresh, capfresh;
} trainer_t;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* The pair's entry, created if absent; NULL only when out of memory.
 * Creating may move every entry: do not keep pointers across calls. */
static pair_t *pair_get(trainer_t *tr, uint64_t key)
{
    if (2 * (tr->pn + 1) > tr->pcap) {
        size_t ncap = tr->pcap ? 2 * tr->pcap : 1024;
        pair_t *np = fl_calloc(ncap, sizeof *np);
        if (!np)
            return NULL;
        for (size_t i = 0; i < tr->pcap; i++) {
            if (!tr->pairs[i].key)
                continue;
            size_t j = (size_t)mix64(tr->pairs[i].key) & (ncap - 1);
            while (np[j].key)
                j = (j + 1) & (ncap - 1);
            np[j] = tr->pairs[i];
        }
        fl_free(tr->pairs);
        tr->pairs = np;
        tr->pcap = ncap;
    }
    size_t mask = tr->pcap - 1, i = (size_t)mix64(key) & mask;
    while (tr->pairs[i].key && tr->pairs[i].key != key)
        i = (i + 1) & mask;
    if (!tr->pairs[i].key) {
        tr->pairs[i].key = key;
        tr->pn++;
    }
    return &tr->pairs[i];
}

static int heap_push_pair(trainer_t *tr, int64_t count, uint64_t key)
{
    if (tr->nheap == tr->capheap) {
        size_t ncap = tr->capheap ? 2 * tr->capheap : 1024;
        hent_t *nh = fl_realloc(tr->heap, ncap * sizeof *nh);
        if (!nh)
            return FL_ENOMEM;
        tr->heap = nh;
        tr->capheap = ncap;
    }
    hent_t e = {count, key};
    size_t i = tr->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        const hent_t *q = &tr->heap[p];
        if (q->count > e.count || (q->count == e.count && q->key < e.key))
            break;
        tr->heap[i] = *q;
        i = p;
    }
    tr->heap[i] = e;
    return 0;
}

static hent_t heap_pop_pair(trainer_t *tr)
{
    hent_t top = tr->heap[0], last = tr->heap[--tr->nheap];
    size_t i = 0, n = tr->nheap;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        const hent_t *bv = &last;
        for (size_t c = l; c < l + 2 && c < n; c++) {
            const hent_t *q = &tr->heap[c];
            if (q->count > bv->count ||
                (q->count == bv->count && q->key < bv->key)) {
                best = c;
                bv = q;
            }
        }
        if (best == i)
            break;
        tr->heap[i] = tr->heap[best];
        i = best;
    }
    if (n > 0)
        tr->heap[i] = last;
    return top;
}

/* Adds delta to pair (x, y) of word w; with track, also records w in the
 * pair's list and the pair among the fresh ones. Pairs with a byte or
 * special token, or too long a text, are never counted. */
static int pair_add(trainer_t *tr, int32_t x, int32_t y, int64_t delta,
                    int32_t w, int track, int max_len)
{
    if (x < FL_TOKENIZER_BYTE_VOCAB || y < FL_TOKENIZER_BYTE_VOCAB ||
        tr->lens[x] + tr->lens[y] > (uint32_t)max_len)
        return 0;
    uint64_t key = (uint64_t)x << 32 | (uint32_t)y;
    pair_t *p = pair_get(tr, key);
    if (!p)
        return FL_ENOMEM;
    p->count += delta;
    if (!track)
        return 0;
    if (p->nwords == 0 || p->words[p->nwords - 1] != w) {
        if (p->nwords == p->capwords) {
            uint32_t ncap = p->capwords ? 2 * p->capwords : 4;
            int32_t *nw = fl_realloc(p->words, ncap * sizeof *nw);
            if (!nw)
                return FL_ENOMEM;
            p->words = nw;
            p->capwords = ncap;
        }
        p->words[p->nwords++] = w;
    }
    if (tr->nfresh == tr->capfresh) {
        size_t ncap = tr->capfresh ? 2 * tr->capfresh : 64;
        uint64_t *nf = fl_realloc(tr->fresh, ncap * sizeof *nf);
        if (!nf)
            return FL_ENOMEM;
        tr->fresh = nf;
        tr->capfresh = ncap;
    }
    tr->fresh[tr->nfresh++] = key;
    return 0;
}

/* The code point of a well-formed UTF-8 character s[0..len), or -1. */
static int32_t utf8_decode(const uint8_t *s, size_t len)
{
    uint32_t c = s[0], need, min;
    if (c < 0x80)
        return len == 1 ? (int32_t)c : -1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        min = 0x80;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        min = 0x800;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return -1;
    }
    if (len != need)
        return -1;
    for (size_t k = 1; k < len; k++)
        c = c << 6 | (s[k] & 0x3F); /* continuation checked by char_len */
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return -1;
    return (int32_t)c;
}

static int is_space_char(const uint8_t *s, size_t cl)
{
    return cl == 1 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' ||
                       s[0] == '\r' || s[0] == '\v' || s[0] == '\f');
}

typedef struct {
    uint32_t count;
    int32_t cp;
} cpcount_t;

static int cpcount_cmp(const void *pa, const void *pb)
{
    const cpcount_t *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return (a->cp > b->cp) - (a->cp < b->cp);
}

/* Appends a new vocabulary entry with the given text (len bytes at s,
 * which may point into the arena). */
static int vocab_add(trainer_t *tr, const uint8_t *s, size_t len, float score)
{
    int rc = fl_buf_reserve(&tr->text, len);
    if (rc)
        return rc;
    size_t off = tr->text.len;
    memmove(tr->text.data + off, s, len); /* s may be in the arena */
    tr->text.len += len;
    tr->offs[tr->n] = (uint32_t)off;
    tr->lens[tr->n] = (uint32_t)len;
    tr->scores[tr->n] = score;
    if ((rc = strmap_insert(&tr->vmap, tr->text.data, tr->offs, tr->lens,
                            tr->n)) != 0) {
        tr->text.len = off;
        return rc;
    }
    tr->n++;
    tr->offs[tr->n] = (uint32_t)tr->text.len;
    if ((int)len > tr->max_len)
        tr->max_len = (int)len;
    return 0;
}

static int train_chars(trainer_t *tr, const fl_tokenizer_train_opts_t *o,
                       const uint8_t *text, size_t len, uint32_t *cpid)
{
    cpcount_t *list = NULL;
    size_t nlist = 0;
    uint64_t total = 0;
    int rc = FL_ENOMEM;
    for (size_t i = 0; i < len;) {
        size_t cl = char_len(text + i, len - i);
        int32_t cp = utf8_decode(text + i, cl);
        if (cp >= 0) {
            if (cpid[cp]++ == 0)
                nlist++;
            total++;
        }
        i += cl;
    }
    list = fl_malloc((nlist + 1) * sizeof *list);
    if (!list)
        goto out;
    nlist = 0;
    for (int32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cpid[cp]) {
            list[nlist].count = cpid[cp];
            list[nlist++].cp = cp;
            cpid[cp] = 0;
        }
    }
    qsort(list, nlist, sizeof *list, cpcount_cmp);
    double want = o->char_coverage * (double)total;
    uint64_t cum = 0;
    for (size_t k = 0; k < nlist && tr->n < o->vocab_size; k++) {
        if (k > 0 && (double)cum >= want)
            break;
        uint8_t u[4];
        size_t ul;
        uint32_t c = (uint32_t)list[k].cp;
        if (c < 0x80) {
            u[0] = (uint8_t)c;
            ul = 1;
        } else if (c < 0x800) {
            u[0] = (uint8_t)(0xC0 | c >> 6);
            u[1] = (uint8_t)(0x80 | (c & 0x3F));
            ul = 2;
        } else if (c < 0x10000) {
            u[0] = (uint8_t)(0xE0 | c >> 12);
            u[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            u[2] = (uint8_t)(0x80 | (c & 0x3F));
            ul = 3;
        } else {
            u[0] = (uint8_t)(0xF0 | c >> 18);
            u[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
            u[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            u[3] = (uint8_t)(0x80 | (c & 0x3F));
            ul = 4;
        }
        cpid[c] = (uint32_t)tr->n;
        if ((rc = vocab_add(tr, u, ul, 0.0f)) != 0)
            goto out;
        cum += list[k].count;
    }
    rc = 0;
out:
    fl_free(list);
    return rc;
}

static int train_words(trainer_t *tr, const uint8_t *text, size_t len,
                       const uint32_t *cpid, int max_len)
{
    int rc;
    size_t nsyms = 0;
    if ((rc = strmap_init(&tr->wmap, 1024)) != 0)
        return rc;
    tr->corpus = text;
    for (size_t i = 0; i < len;) {
        /* A word: an optional whitespace character, then non-space. */
        size_t j = i + char_len(text + i, len - i);
        while (j < len) {
            size_t cl = char_len(text + j, len - j);
            if (is_space_char(text + j, cl))
                break;
            j += cl;
        }
        if (tr->nwords == tr->capwords) {
            size_t ncap = tr->capwords ? 2 * tr->capwords : 1024;
            uint32_t *a = fl_realloc(tr->woff, ncap * sizeof *a);
            if (a)
                tr->woff = a;
            uint32_t *b = fl_realloc(tr->wlen, ncap * sizeof *b);
            if (b)
                tr->wlen = b;
            int64_t *c = fl_realloc(tr->wcount, ncap * sizeof *c);
            if (c)
                tr->wcount = c;
            if (!a || !b || !c)
                return FL_ENOMEM;
            tr->capwords = ncap;
        }
        int32_t w = strmap_find(&tr->wmap, text, tr->woff, tr->wlen, text + i,
                                j - i, NULL);
        if (w >= 0) {
            tr->wcount[w]++;
        } else {
            w = (int32_t)tr->nwords;
            tr->woff[w] = (uint32_t)i;
            tr->wlen[w] = (uint32_t)(j - i);
            tr->wcount[w] = 1;
            if ((rc = strmap_insert(&tr->wmap, text, tr->woff, tr->wlen, w)) !=
                0)
                return rc;
            tr->nwords++;
            nsyms += j - i;
        }
        i = j;
    }
    tr->syms = fl_malloc((nsyms + 1) * sizeof *tr->syms);
    tr->soff = fl_malloc((tr->nwords + 1) * sizeof *tr->soff);
    tr->slen = fl_malloc((tr->nwords + 1) * sizeof *tr->slen);
    tr->stamp = fl_calloc(tr->nwords + 1, sizeof *tr->stamp);
    if (!tr->syms || !tr->soff || !tr->slen || !tr->stamp)
        return FL_ENOMEM;
    size_t k = 0;
    for (size_t w = 0; w < tr->nwords; w++) {
        const uint8_t *s = text + tr->woff[w];
        size_t wl = tr->wlen[w];
        tr->soff[w] = (uint32_t)k;
        for (size_t i = 0; i < wl;) {
            size_t cl = char_len(s + i, wl - i);
            int32_t cp = utf8_decode(s + i, cl);
            if (cp >= 0 && cpid[cp]) {
                tr->syms[k++] = (int32_t)cpid[cp];
            } else {
                for (size_t b = 0; b < cl; b++)
                    tr->syms[k++] = FL_TOKENIZER_BYTE0 + s[i + b];
            }
            i += cl;
        }
        tr->slen[w] = (uint32_t)(k - tr->soff[w]);
        const int32_t *sy = tr->syms + tr->soff[w];
        for (uint32_t i = 0; i + 1 < tr->slen[w]; i++)
            if ((rc = pair_add(tr, sy[i], sy[i + 1], tr->wcount[w], (int32_t)w,
                               1, max_len)) != 0)
                return rc;
    }
    for (size_t i = 0; i < tr->pcap; i++)
        if (tr->pairs[i].key && tr->pairs[i].count > 0 &&
            (rc = heap_push_pair(tr, tr->pairs[i].count, tr->pairs[i].key)) !=
                0)
            return rc;
    tr->nfresh = 0;
    return 0;
}

/* One merge of (a, b); returns 0, or an error. */
static int train_merge(trainer_t *tr, int32_t a, int32_t b, uint32_t step,
                       int max_len)
{
    int rc = 0;
    uint64_t key = (uint64_t)a << 32 | (uint32_t)b;
    /* The merged text; an existing token with that text is reused. */
    size_t la = tr->lens[a], lb = tr->lens[b];
    if ((rc = fl_buf_reserve(&tr->text, la + lb)) != 0)
        return rc;
    uint8_t *end = tr->text.data + tr->text.len;
    memcpy(end, tr->text.data + tr->offs[a], la);
    memcpy(end + la, tr->text.data + tr->offs[b], lb);
    int32_t c = strmap_find(&tr->vmap, tr->text.data, tr->offs, tr->lens, end,
                            la + lb, NULL);
    if (c < 0) {
        c = tr->n;
        if ((rc = vocab_add(tr, end, la + lb, -(float)step)) != 0)
            return rc;
    }
    pair_t *p = pair_get(tr, key);
    if (!p)
        return FL_ENOMEM;
    int32_t *words = p->words;
    uint32_t nw = p->nwords;
    p->words = NULL;
    p->nwords = p->capwords = 0;
    tr->nfresh = 0;
    for (uint32_t k = 0; k < nw && rc == 0; k++) {
        int32_t w = words[k];
        if (tr->stamp[w] == step)
            continue;
        tr->stamp[w] = step;
        int32_t *sy = tr->syms + tr->soff[w];
        uint32_t L = tr->slen[w], i, o;
        int64_t wc = tr->wcount[w];
        for (i = 0; i + 1 < L; i++)
            if (sy[i] == a && sy[i + 1] == b)
                break;
        if (i + 1 >= L)
            continue; /* stale entry in the list */
        for (i = 0; i + 1 < L && rc == 0; i++)
            rc = pair_add(tr, sy[i], sy[i + 1], -wc, w, 0, max_len);
        for (i = 0, o = 0; i < L;) {
            if (i + 1 < L && sy[i] == a && sy[i + 1] == b) {
                sy[o++] = c;
                i += 2;
            } else {
                sy[o++] = sy[i++];
            }
        }
        tr->slen[w] = L = o;
        for (i = 0; i + 1 < L && rc == 0; i++)
            rc = pair_add(tr, sy[i], sy[i + 1], wc, w,
                          sy[i] == c || sy[i + 1] == c, max_len);
    }
    fl_free(words);
    for (size_t k = 0; k < tr->nfresh && rc == 0; k++) {
        p = pair_get(tr, tr->fresh[k]);
        if (!p)
            return FL_ENOMEM;
        if (p->pushed != step && p->count > 0) {
            p->pushed = step;
            rc = heap_push_pair(tr, p->count, p->key);
        }
    }
    return rc;
}

int fl_tokenizer_train_bpe(const fl_tokenizer_train_opts_t *o,
                           const uint8_t *text, size_t len,
                           fl_tokenizer_t **out)
{
    trainer_t tr = {0};
    uint32_t *cpid = NULL;
    int rc = FL_EINVAL;
    int max_len = o->max_token_len ? o->max_token_len : 64;
    size_t max_corpus =
        o->max_corpus_bytes ? o->max_corpus_bytes : (size_t)1 << 30;

    *out = NULL;
    fl_buf_init(&tr.text, (size_t)UINT32_MAX);
    if (o->vocab_size < FL_TOKENIZER_BYTE_VOCAB ||
        o->vocab_size > TRAIN_MAX_VOCAB || !(o->char_coverage > 0.0) ||
        o->char_coverage > 1.0 || max_len < 1 ||
        max_len > FL_TOKENIZER_MAX_TOKEN_LEN)
        goto out;
    rc = FL_ETOOBIG;
    if (len > max_corpus || len >= UINT32_MAX)
        goto out;
    rc = FL_ENOMEM;
    tr.offs = fl_malloc((TRAIN_MAX_VOCAB + 1) * sizeof *tr.offs);
    tr.lens = fl_malloc((TRAIN_MAX_VOCAB + 1) * sizeof *tr.lens);
    tr.scores = fl_malloc(TRAIN_MAX_VOCAB * sizeof *tr.scores);
    cpid = fl_calloc(0x110000, sizeof *cpid);
    if (!tr.offs || !tr.lens || !tr.scores || !cpid)
        goto out;
    if ((rc = base_vocab(&tr.text, tr.offs, tr.scores)) != 0)
        goto out;
    tr.n = FL_TOKENIZER_BYTE_VOCAB;
    for (int i = 0; i < tr.n; i++)
        tr.lens[i] = tr.offs[i + 1] - tr.offs[i];
    tr.max_len = 6;
    /* Specials and byte tokens are never looked up: not in the map. */
    if ((rc = strmap_init(&tr.vmap, 4096)) != 0)
        goto out;
    if ((rc = train_chars(&tr, o, text, len, cpid)) != 0)
        goto out;
    if ((rc = train_words(&tr, text, len, cpid, max_len)) != 0)
        goto out;
    for (uint32_t step = 1; tr.n < o->vocab_size && tr.nheap > 0;) {
        hent_t top = heap_pop_pair(&tr);
        pair_t *p = pair_get(&tr, top.key);
        if (!p) {
            rc = FL_ENOMEM;
            goto out;
        }
        if (p->count != top.count) {
            if (p->count > 0 &&
                (rc = heap_push_pair(&tr, p->count, top.key)) != 0)
                goto out;
            continue;
        }
        if (top.count < 2)
            break;
        if ((rc = train_merge(&tr, (int32_t)(top.key >> 32),
                              (int32_t)(uint32_t)top.key, step, max_len)) != 0)
            goto out;
        step++;
    }
    {
        uint32_t *offs = fl_malloc(((size_t)tr.n + 1) * sizeof *offs);
        float *scores = fl_malloc((size_t)tr.n * sizeof *scores);
        if (!offs || !scores) {
            fl_free(offs);
            fl_free(scores);
            rc = FL_ENOMEM;
            goto out;
        }
        memcpy(offs, tr.offs, ((size_t)tr.n + 1) * sizeof *offs);
        memcpy(scores, tr.scores, (size_t)tr.n * sizeof *scores);
        uint8_t *t = tr.text.data;
        tr.text.data = NULL;
        rc = tokenizer_build(t, offs, scores, tr.n, out);
    }
out:
    fl_buf_free(&tr.text);
    fl_free(tr.offs);
    fl_free(tr.lens);
    fl_free(tr.scores);
    strmap_free(&tr.vmap);
    strmap_free(&tr.wmap);
    fl_free(tr.woff);
    fl_free(tr.wlen);
    fl_free(tr.wcount);
    fl_free(tr.soff);
    fl_free(tr.slen);
    fl_free(tr.stamp);
    fl_free(tr.syms);
    for (size_t i = 0; i < tr.pcap; i++)
        fl_free(tr.pairs[i].words);
    fl_free(tr.pairs);
    fl_free(tr.heap);
    fl_free(tr.fresh);
    fl_free(cpid);
    return rc;
}
