/*
 * model/data.c — text files to token streams, with a seeded split
 * (see data.h).
 */
#include "model/data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_MAX_BYTES ((size_t)256 << 20)
#define MAX_CHUNK_TOKENS  (1 << 24)

/* ---- files ----------------------------------------------------------------
 */
static int has_suffix(const char *s, const char *suf)
{
    size_t ls = strlen(s), lf = strlen(suf);
    return ls >= lf && strcmp(s + ls - lf, suf) == 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void fl_data_names_free(char **names, size_t n)
{
    if (!names)
        return;
    for (size_t i = 0; i < n; i++)
        fl_free(names[i]);
    fl_free(names);
}

int fl_data_list_files(const char *dir, char ***names, size_t *n)
{
    int rc = 0;
    DIR *d = NULL;
    char **list = NULL;
    size_t cnt = 0, cap = 0;

    *names = NULL;
    *n = 0;
    d = opendir(dir);
    if (!d)
        return fl_err_from_errno(errno);
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno)
                rc = fl_err_from_errno(errno);
            break;
        }
        const char *nm = e->d_name;
        if (nm[0] == '.' || has_suffix(nm, ".dat") || has_suffix(nm, ".u8"))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), nm, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue; /* symbolic links, directories, vanished files */
        if (cnt == FL_DATA_MAX_FILES) {
            rc = FL_ETOOBIG;
            break;
        }
        if (cnt == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            char **nl = fl_realloc(list, ncap * sizeof *nl);
            if (!nl) {
                rc = FL_ENOMEM;
                break;
            }
            list = nl;
            cap = ncap;
        }
        if (!(list[cnt] = fl_strdup(nm))) {
            rc = FL_ENOMEM;
            break;
        }
        cnt++;
    }
    closedir(d);
    if (rc) {
        fl_data_names_free(list, cnt);
        return rc;
    }
    if (cnt)
        qsort(list, cnt, sizeof *list, name_cmp);
    *names = list;
    *n = cnt;
    return 0;
}

/* Reads dir/name into *out (owned) if it is a regular file (never through
 * a symbolic link) of at most budget bytes; FL_ETOOBIG otherwise. */
static int read_file(const char *dir, const char *name, size_t budget,
                     uint8_t **out, size_t *len)
{
    char path[4096];
    int rc;
    *out = NULL;
    *len = 0;
    if (strchr(name, '/'))
        return FL_EINVAL;
    if ((rc = fl_path_join(path, sizeof path, dir, name)) != 0)
        return rc;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fl_err_from_errno(errno);
    rc = fl_file_read_fd(fd, budget, out, len);
    close(fd);
    return rc;
}

static int is_text(const uint8_t *p, size_t len)
{
    return memchr(p, 0, len) == NULL;
}

int fl_data_read_corpus(const char *dir, char *const *names, size_t nnames,
                        size_t max_bytes, uint8_t **out, size_t *len)
{
    char **own = NULL;
    size_t nown = 0;
    fl_buf_t b;
    int rc = 0;

    *out = NULL;
    *len = 0;
    fl_buf_init(&b, max_bytes < SIZE_MAX ? max_bytes + 1 : max_bytes);
    if (!names) {
        if ((rc = fl_data_list_files(dir, &own, &nown)) != 0)
            return rc;
        names = own;
        nnames = nown;
    }
    for (size_t i = 0; i < nnames && rc == 0; i++) {
        uint8_t *d;
        size_t dl;
        rc = read_file(dir, names[i], max_bytes - b.len, &d, &dl);
        if (rc == 0 && is_text(d, dl)) {
            if (dl >= max_bytes - b.len)
                rc = FL_ETOOBIG; /* no room for the newline */
            else if ((rc = fl_buf_append(&b, d, dl)) == 0)
                rc = fl_buf_append_u8(&b, '\n');
        }
        fl_free(d);
    }
    if (rc == 0)
        rc = fl_buf_append_u8(&b, 0); /* the promised NUL */
    fl_data_names_free(own, nown);
    if (rc) {
        fl_buf_free(&b);
        return rc;
    }
    *out = b.data;
    *len = b.len - 1;
    return 0;
}

/* ---- token streams ----------------------------------------------------------
 */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} ids_t;

struct fl_data {
    ids_t part[2]; /* FL_DATA_TRAIN, FL_DATA_VAL */
    size_t nfiles, nbytes;
};

static int ids_append(ids_t *v, const int32_t *ids, size_t n)
{
    if (n > v->cap - v->n) {
        size_t ncap = FL_MAX(v->cap * 2, v->n + n);
        size_t bytes;
        if (fl_mul_size(ncap, sizeof *v->ids, &bytes) != 0)
            return FL_ETOOBIG;
        int32_t *p = fl_realloc(v->ids, bytes);
        if (!p)
            return FL_ENOMEM;
        v->ids = p;
        v->cap = ncap;
    }
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
    return 0;
}

void fl_data_opts_init(fl_data_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->max_bytes = DEFAULT_MAX_BYTES;
    o->val_fraction = 0.1;
    o->seed = 0;
    o->split = FL_DATA_SPLIT_POSITION;
    o->chunk_tokens = 256;
}

void fl_data_free(fl_data_t *d)
{
    if (!d)
        return;
    fl_free(d->part[0].ids);
    fl_free(d->part[1].ids);
    fl_free(d);
}

static int check_opts(const fl_data_opts_t *o)
{
    if (!(o->val_fraction >= 0.0 && o->val_fraction <= 0.5) ||
        o->chunk_tokens < 1 || o->chunk_tokens > MAX_CHUNK_TOKENS ||
        (o->split != FL_DATA_SPLIT_POSITION && o->split != FL_DATA_SPLIT_FILE))
        return FL_EINVAL;
    return 0;
}

/* How many of n units go to validation: round(frac * n), at least one
 * when frac > 0 and n >= 2, and never all of them. */
static size_t val_count(double frac, size_t n)
{
    if (n < 2 || frac <= 0.0)
        return 0;
    size_t k = (size_t)(frac * (double)n + 0.5);
    return FL_MIN(FL_MAX(k, 1), n - 1);
}

/* Marks k of n units (mark[i] = 1) by a partial Fisher-Yates shuffle. */
static int choose(uint64_t seed, size_t n, size_t k, uint8_t *mark)
{
    size_t *idx = fl_malloc((n + 1) * sizeof *idx);
    if (!idx)
        return FL_ENOMEM;
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        idx[i] = i;
        mark[i] = 0;
    }
    for (size_t i = 0; i < k; i++) {
        size_t j = i + (size_t)fl_rng_below(&r, n - i);
        size_t tmp = idx[i];
        idx[i] = idx[j];
        idx[j] = tmp;
        mark[idx[i]] = 1;
    }
    fl_free(idx);
    return 0;
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++) {
        h ^= (uint8_t)*p;
        h *= 0x100000001b3ull;
    }
    uint64_t s = seed ^ h;
    return fl_splitmix64(&s);
}

/* One file's tokens, before the split. */
typedef struct {
    int32_t *ids;
    size_t n;
    const char *name; /* borrowed */
} doc_t;

static int encode_doc(const fl_tokenizer_t *tok, const uint8_t *text,
                      size_t len, doc_t *doc)
{
    size_t cap = len + 3, bytes;
    if (fl_mul_size(cap, sizeof *doc->ids, &bytes) != 0)
        return FL_ETOOBIG;
    doc->ids = fl_malloc(bytes);
    if (!doc->ids)
        return FL_ENOMEM;
    return fl_tokenizer_encode(tok, text, len, FL_TOKENIZER_ADD_BOS, doc->ids,
                               cap, &doc->n);
}

/* Splits the documents into d's two parts. */
static int split_docs(const fl_data_opts_t *o, doc_t *docs, size_t ndocs,
                      fl_data_t *d)
{
    int rc = 0;
    uint8_t *mark = NULL;
    if (o->split == FL_DATA_SPLIT_FILE) {
        mark = fl_malloc(ndocs + 1);
        if (!mark)
            return FL_ENOMEM;
        uint64_t s = o->seed;
        rc = choose(fl_splitmix64(&s), ndocs, val_count(o->val_fraction, ndocs),
                    mark);
        for (size_t i = 0; i < ndocs && rc == 0; i++)
            rc = ids_append(&d->part[mark[i]], docs[i].ids, docs[i].n);
        fl_free(mark);
        return rc;
    }
    size_t ct = o->chunk_tokens;
    for (size_t i = 0; i < ndocs && rc == 0; i++) {
        size_t nch = (docs[i].n + ct - 1) / ct;
        uint8_t *m = fl_malloc(nch + 1);
        if (!m)
            return FL_ENOMEM;
        rc = choose(name_seed(o->seed, docs[i].name), nch,
                    val_count(o->val_fraction, nch), m);
        for (size_t c = 0; c < nch && rc == 0; c++) {
            size_t off = c * ct, len = FL_MIN(ct, docs[i].n - off);
            rc = ids_append(&d->part[m[c]], docs[i].ids + off, len);
        }
        fl_free(m);
    }
    return rc;
}

static int load_docs(const fl_data_opts_t *o, const fl_tokenizer_t *tok,
                     const uint8_t *text, size_t len, const char *text_name,
                     fl_data_t **out)
{
    int rc;
    char **own = NULL;
    size_t nown = 0, ndocs = 0, budget;
    char *const *names = o->names;
    size_t nnames = o->nnames;
    doc_t *docs = NULL;
    fl_data_t *d = NULL;

    *out = NULL;
    if ((rc = check_opts(o)) != 0)
        return rc;
    budget = o->max_bytes ? o->max_bytes : DEFAULT_MAX_BYTES;
    if (!text && !names) {
        if (!o->dir)
            return FL_EINVAL;
        if ((rc = fl_data_list_files(o->dir, &own, &nown)) != 0)
            return rc;
        names = own;
        nnames = nown;
    }
    if (text)
        nnames = 1;
    rc = FL_ENOMEM;
    d = fl_calloc(1, sizeof *d);
    docs = fl_calloc(nnames + 1, sizeof *docs);
    if (!d || !docs)
        goto out;
    for (size_t i = 0; i < nnames; i++) {
        uint8_t *buf = NULL;
        size_t bl;
        if (text) {
            if (len > budget) {
                rc = FL_ETOOBIG;
                goto out;
            }
            docs[ndocs].name = text_name ? text_name : "";
            bl = len;
        } else {
            if (!o->dir) {
                rc = FL_EINVAL;
                goto out;
            }
            rc = read_file(o->dir, names[i], budget, &buf, &bl);
            if (rc)
                goto out;
            if (!is_text(buf, bl)) {
                fl_free(buf);
                continue;
            }
            docs[ndocs].name = names[i];
        }
        budget -= bl;
        d->nbytes += bl;
        rc = encode_doc(tok, text ? text : buf, bl, &docs[ndocs]);
        fl_free(buf);
        ndocs++;
        if (rc)
            goto out;
    }
    d->nfiles = ndocs;
    if ((rc = split_docs(o, docs, ndocs, d)) != 0)
        goto out;
    *out = d;
    d = NULL;
out:
    if (docs)
        for (size_t i = 0; i < ndocs; i++)
            fl_free(docs[i].ids);
    fl_free(docs);
    fl_data_free(d);
    fl_data_names_free(own, nown);
    return rc;
}

int fl_data_load(const fl_data_opts_t *o, const fl_tokenizer_t *tok,
                 fl_data_t **out)
{
    return load_docs(o, tok, NULL, 0, NULL, out);
}

int fl_data_load_text(const fl_data_opts_t *o, const fl_tokenizer_t *tok,
                      const uint8_t *text, size_t len, const char *name,
                      fl_data_t **out)
{
    static const uint8_t empty[1] = {0};
    return load_docs(o, tok, text ? text : empty, text ? len : 0, name, out);
}

const int32_t *fl_data_tokens(const fl_data_t *d, fl_data_part_t part,
                              size_t *n)
{
    const ids_t *v = &d->part[part == FL_DATA_VAL];
    *n = v->n;
    return v->ids;
}

size_t fl_data_num_files(const fl_data_t *d)
{
    return d->nfiles;
}

size_t fl_data_num_bytes(const fl_data_t *d)
{
    return d->nbytes;
}

int fl_data_batch(const fl_data_t *d, fl_data_part_t part, fl_rng_t *rng, int B,
                  int T, int32_t *out)
{
    const ids_t *v = &d->part[part == FL_DATA_VAL];
    if (B < 1 || T < 1)
        return FL_EINVAL;
    if (v->n < (size_t)T + 1)
        return FL_ERANGE;
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)fl_rng_below(rng, v->n - (size_t)T);
        memcpy(out + (size_t)b * ((size_t)T + 1), v->ids + start,
               ((size_t)T + 1) * sizeof *out);
    }
    return 0;
}

size_t fl_data_num_windows(const fl_data_t *d, fl_data_part_t part, int T)
{
    const ids_t *v = &d->part[part == FL_DATA_VAL];
    if (T < 1 || v->n < (size_t)T + 1)
        return 0;
    return (v->n - 1) / (size_t)T;
}

int fl_data_window(const fl_data_t *d, fl_data_part_t part, size_t i, int T,
                   int32_t *out)
{
    const ids_t *v = &d->part[part == FL_DATA_VAL];
    if (T < 1)
        return FL_EINVAL;
    if (i >= fl_data_num_windows(d, part, T))
        return FL_ERANGE;
    memcpy(out, v->ids + i * (size_t)T, ((size_t)T + 1) * sizeof *out);
    return 0;
}
