/* client/state.c — the residual and the journal in the state directory. */
#include "client/client.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define RESID_MAGIC "FLRESID1"
#define RESID_HDR   24 /* magic, n, version */

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int fl_client_residual_save(const char *path, const float *r, size_t n,
                            uint64_t version)
{
    size_t bytes;
    if (fl_mul_size(n, sizeof(float), &bytes) < 0 ||
        bytes > SIZE_MAX - RESID_HDR - 8)
        return FL_ETOOBIG;
    size_t total = RESID_HDR + bytes + 8;
    uint8_t *buf = fl_malloc(total);
    if (!buf)
        return FL_ENOMEM;
    memcpy(buf, RESID_MAGIC, 8);
    put_le64(buf + 8, n);
    put_le64(buf + 16, version);
    memcpy(buf + RESID_HDR, r, bytes); /* little-endian hosts only */
    put_le64(buf + RESID_HDR + bytes, fnv1a64(buf, RESID_HDR + bytes));
    int rc = fl_file_write_atomic(path, buf, total, 0600);
    fl_free(buf);
    return rc;
}

int fl_client_residual_load(const char *path, size_t max_n, float **out,
                            size_t *n, uint64_t *version)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;
    *out = NULL;
    *n = 0;
    size_t max_bytes = max_n > (SIZE_MAX - RESID_HDR - 8) / sizeof(float)
                           ? SIZE_MAX
                           : RESID_HDR + max_n * sizeof(float) + 8;
    if ((rc = fl_file_read_all(path, max_bytes, &buf, &len)) < 0)
        return rc;
    if (len < RESID_HDR + 8) {
        rc = FL_ETRUNC;
        goto out;
    }
    if (memcmp(buf, RESID_MAGIC, 8) != 0) {
        rc = FL_EMAGIC;
        goto out;
    }
    uint64_t count = get_le64(buf + 8);
    if (count > max_n) {
        rc = FL_ETOOBIG;
        goto out;
    }
    if (len != RESID_HDR + count * sizeof(float) + 8) {
        rc = FL_ETRUNC;
        goto out;
    }
    size_t body = RESID_HDR + (size_t)count * sizeof(float);
    if (get_le64(buf + body) != fnv1a64(buf, body)) {
        rc = FL_EFORMAT;
        goto out;
    }
    float *r = fl_malloc(count ? (size_t)count * sizeof(float) : 1);
    if (!r) {
        rc = FL_ENOMEM;
        goto out;
    }
    memcpy(r, buf + RESID_HDR, (size_t)count * sizeof(float));
    *out = r;
    *n = (size_t)count;
    *version = get_le64(buf + 16);
out:
    fl_free(buf);
    return rc;
}

/* ---- journal ---- */
#define JOURNAL_MAX_FILE (1u << 20)

static json_t *entry_json(const fl_client_journal_entry_t *e)
{
    return json_pack(
        "{s:I, s:I, s:i, s:f, s:f, s:I, s:I}", "round", (json_int_t)e->round,
        "model_version", (json_int_t)e->model_version, "status", e->status,
        "loss_before", (double)e->loss_before, "loss_after",
        (double)e->loss_after, "num_examples", (json_int_t)e->num_examples,
        "time_ms", (json_int_t)e->time_ms);
}

static int entry_parse(const char *line, size_t len,
                       fl_client_journal_entry_t *e)
{
    json_error_t err;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return FL_EFORMAT;
    json_int_t round, ver, ex, t;
    int status;
    double lb, la;
    int rc =
        json_unpack(j, "{s:I, s:I, s:i, s:F, s:F, s:I, s:I}", "round", &round,
                    "model_version", &ver, "status", &status, "loss_before",
                    &lb, "loss_after", &la, "num_examples", &ex, "time_ms", &t);
    json_decref(j);
    if (rc != 0 || round < 0 || ver < 0 || ex < 0 || ex > UINT32_MAX || t < 0)
        return FL_EFORMAT;
    *e = (fl_client_journal_entry_t){
        (uint64_t)round, (uint64_t)ver, status,     (float)lb,
        (float)la,       (uint32_t)ex,  (uint64_t)t};
    return 0;
}

int fl_client_journal_read(const char *path, fl_client_journal_entry_t *out,
                           size_t max, size_t *n, size_t *bad)
{
    uint8_t *buf = NULL;
    size_t len = 0, count = 0, nbad = 0;
    *n = 0;
    if (bad)
        *bad = 0;
    int rc = fl_file_read_all(path, JOURNAL_MAX_FILE, &buf, &len);
    if (rc < 0)
        return rc;
    /* Keep the newest max entries: count lines first. */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    size_t skip = lines > max ? lines - max : 0, idx = 0;
    const char *p = (const char *)buf, *end = p + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (l > 0 && idx++ >= skip && count < max) {
            if (entry_parse(p, l, &out[count]) == 0)
                count++;
            else
                nbad++;
        }
        p += l + 1;
    }
    fl_free(buf);
    *n = count;
    if (bad)
        *bad = nbad;
    return 0;
}

int fl_client_journal_append(const char *path,
                             const fl_client_journal_entry_t *e)
{
    fl_client_journal_entry_t *old = NULL;
    size_t n = 0;
    fl_buf_t b;
    json_t *j = NULL;
    int rc;
    fl_buf_init(&b, JOURNAL_MAX_FILE);
    old = fl_calloc(FL_CLIENT_JOURNAL_KEEP, sizeof *old);
    if (!old)
        return FL_ENOMEM;
    rc =
        fl_client_journal_read(path, old, FL_CLIENT_JOURNAL_KEEP - 1, &n, NULL);
    if (rc == FL_ENOENT)
        rc = 0, n = 0;
    if (rc < 0)
        goto out;
    old[n++] = *e;
    for (size_t i = 0; i < n && rc == 0; i++) {
        j = entry_json(&old[i]);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        j = NULL;
        if (!s) {
            rc = FL_ENOMEM;
            break;
        }
        rc = fl_buf_printf(&b, "%s\n", s);
        free(s);
    }
    if (rc == 0)
        rc = fl_file_write_atomic(path, b.data, b.len, 0600);
out:
    fl_buf_free(&b);
    fl_free(old);
    return rc;
}
