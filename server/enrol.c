/* server/enrol.c — the allow-list of device identity keys, and the check of
 * a ClientHello against it. */
#include "server/server.h"

#include "artifact/artifact.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/file.h>
#include <unistd.h>

#define ENROL_FILE_MAX (FL_SERVER_ENROL_MAX * 140u)

typedef struct {
    uint8_t key[FL_SERVER_KEY_LEN];
    char name[FL_SERVER_NAME_MAX + 1];
} enrol_entry_t;

/* Entries sorted by key, so lookups are a binary search. */
struct fl_server_enrol {
    enrol_entry_t *v;
    size_t n, cap;
};

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FL_SERVER_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && !strchr("._:@-", ch))
            return 0;
    }
    return 1;
}

int fl_server_enrol_new(fl_server_enrol_t **out)
{
    fl_server_enrol_t *e = fl_calloc(1, sizeof *e);
    if (!e)
        return FL_ENOMEM;
    *out = e;
    return 0;
}

void fl_server_enrol_free(fl_server_enrol_t *e)
{
    if (!e)
        return;
    fl_free(e->v);
    fl_free(e);
}

static long find(const fl_server_enrol_t *e, const uint8_t key[32])
{
    size_t lo = 0, hi = e->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(e->v[mid].key, key, FL_SERVER_KEY_LEN);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1; /* insertion point, encoded */
}

int fl_server_enrol_contains(const fl_server_enrol_t *e, const uint8_t key[32])
{
    return e && find(e, key) >= 0;
}

size_t fl_server_enrol_count(const fl_server_enrol_t *e)
{
    return e ? e->n : 0;
}

int fl_server_enrol_get(const fl_server_enrol_t *e, size_t i, uint8_t key[32],
                        const char **name)
{
    if (!e || i >= e->n)
        return FL_ERANGE;
    memcpy(key, e->v[i].key, FL_SERVER_KEY_LEN);
    if (name)
        *name = e->v[i].name;
    return 0;
}

int fl_server_enrol_add(fl_server_enrol_t *e, const uint8_t key[32],
                        const char *name)
{
    if (name && name[0] && !name_ok(name))
        return FL_EINVAL;
    long at = find(e, key);
    if (at >= 0)
        return FL_EEXIST;
    size_t pos = (size_t)(-at - 1);
    if (e->n >= FL_SERVER_ENROL_MAX)
        return FL_ETOOBIG;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        enrol_entry_t *v = fl_realloc(e->v, cap * sizeof *v);
        if (!v)
            return FL_ENOMEM;
        e->v = v;
        e->cap = cap;
    }
    memmove(&e->v[pos + 1], &e->v[pos], (e->n - pos) * sizeof *e->v);
    memset(&e->v[pos], 0, sizeof e->v[pos]);
    memcpy(e->v[pos].key, key, FL_SERVER_KEY_LEN);
    if (name)
        snprintf(e->v[pos].name, sizeof e->v[pos].name, "%s", name);
    e->n++;
    return 0;
}

int fl_server_enrol_remove(fl_server_enrol_t *e, const uint8_t key[32])
{
    long at = find(e, key);
    if (at < 0)
        return FL_ENOENT;
    size_t pos = (size_t)at;
    memmove(&e->v[pos], &e->v[pos + 1], (e->n - pos - 1) * sizeof *e->v);
    e->n--;
    return 0;
}

/* Parses one line (without its newline). Empty and comment lines give 0
 * and leave *have at 0. */
static int parse_line(char *line, uint8_t key[32], char *name, int *have,
                      const char **why)
{
    *have = 0;
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    char *words[3] = {NULL, NULL, NULL};
    int nw = 0;
    char *p = line;
    while (*p) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        if (nw == 3) {
            *why = "too many words (expected '<key> [name]')";
            return FL_EFORMAT;
        }
        words[nw++] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = '\0';
    }
    if (nw == 0)
        return 0;
    if (nw > 2) {
        *why = "too many words (expected '<key> [name]')";
        return FL_EFORMAT;
    }
    if (strlen(words[0]) != 2 * FL_SERVER_KEY_LEN ||
        fl_hex_decode(key, FL_SERVER_KEY_LEN, words[0], strlen(words[0])) < 0) {
        *why = "the key is not 64 hex digits";
        return FL_EFORMAT;
    }
    name[0] = '\0';
    if (nw == 2) {
        if (!name_ok(words[1])) {
            *why = "the name must be 1..64 characters of [A-Za-z0-9._:@-]";
            return FL_EFORMAT;
        }
        snprintf(name, FL_SERVER_NAME_MAX + 1, "%s", words[1]);
    }
    *have = 1;
    return 0;
}

int fl_server_enrol_parse(const char *text, size_t len, const char *name,
                          fl_server_enrol_t **out, char *err, size_t errlen)
{
    char *copy = NULL;
    fl_server_enrol_t *e = NULL;
    int rc = fl_server_enrol_new(&e);
    if (rc < 0)
        goto out;
    if (len > ENROL_FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %u bytes", name,
                 (unsigned)ENROL_FILE_MAX);
        rc = FL_ETOOBIG;
        goto out;
    }
    if (memchr(text, '\0', len)) {
        snprintf(err, errlen, "%s: contains a NUL byte", name);
        rc = FL_EFORMAT;
        goto out;
    }
    copy = fl_malloc(len + 1);
    if (!copy) {
        rc = FL_ENOMEM;
        goto out;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    char *p = copy, *end = copy + len;
    for (int lineno = 1; p < end; lineno++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *stop = nl ? nl : end;
        *stop = '\0';
        uint8_t key[FL_SERVER_KEY_LEN];
        char nm[FL_SERVER_NAME_MAX + 1];
        int have = 0;
        const char *why = "";
        rc = parse_line(p, key, nm, &have, &why);
        if (rc < 0) {
            snprintf(err, errlen, "%s:%d: %s", name, lineno, why);
            goto out;
        }
        if (have) {
            rc = fl_server_enrol_add(e, key, nm);
            if (rc == FL_EEXIST) {
                snprintf(err, errlen, "%s:%d: key enrolled twice", name,
                         lineno);
                rc = FL_EFORMAT;
            } else if (rc < 0) {
                snprintf(err, errlen, "%s:%d: %s", name, lineno,
                         fl_strerror(rc));
            }
            if (rc < 0)
                goto out;
        }
        p = stop + 1;
    }
out:
    fl_free(copy);
    if (rc < 0) {
        fl_server_enrol_free(e);
        e = NULL;
    }
    *out = e;
    return rc;
}

int fl_server_enrol_load(const char *path, fl_server_enrol_t **out, char *err,
                         size_t errlen)
{
    uint8_t *data = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fl_file_read_all(path, ENROL_FILE_MAX, &data, &len);
    if (rc == FL_ENOENT)
        return fl_server_enrol_new(out);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", path, fl_strerror(rc));
        return rc;
    }
    rc = fl_server_enrol_parse((const char *)data, len, path, out, err, errlen);
    fl_free(data);
    return rc;
}

int fl_server_enrol_save(const fl_server_enrol_t *e, const char *path)
{
    fl_buf_t b;
    fl_buf_init(&b, (size_t)ENROL_FILE_MAX + 4096);
    int rc = fl_buf_printf(&b, "# flotilla enrolled devices: "
                               "<ed25519 public key, hex> [name]\n");
    for (size_t i = 0; rc == 0 && i < e->n; i++) {
        char hex[2 * FL_SERVER_KEY_LEN + 1];
        fl_hex_encode(hex, e->v[i].key, FL_SERVER_KEY_LEN);
        rc = e->v[i].name[0] ? fl_buf_printf(&b, "%s %s\n", hex, e->v[i].name)
                             : fl_buf_printf(&b, "%s\n", hex);
    }
    if (rc == 0)
        rc = fl_file_write_atomic(path, b.data, b.len, 0600);
    fl_buf_free(&b);
    return rc;
}

int fl_server_key_parse(const char *arg, uint8_t key[32])
{
    size_t n = strlen(arg);
    if (n == 2 * FL_SERVER_KEY_LEN &&
        fl_hex_decode(key, FL_SERVER_KEY_LEN, arg, n) == 0)
        return 0;
    /* A public key file of `flotilla keygen`, or any file whose first word
     * is the key in hex. */
    if (fl_artifact_pub_load(arg, key) == 0)
        return 0;
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = fl_file_read_all(arg, 4096, &data, &len);
    if (rc < 0)
        return rc == FL_ENOENT ? FL_EFORMAT : rc;
    size_t i = 0;
    while (i < len && isspace(data[i]))
        i++;
    size_t j = i;
    while (j < len && isxdigit(data[j]))
        j++;
    rc = FL_EFORMAT;
    if (j - i == 2 * FL_SERVER_KEY_LEN && (j == len || isspace(data[j])))
        rc = fl_hex_decode(key, FL_SERVER_KEY_LEN, (const char *)data + i,
                           j - i);
    fl_free(data);
    return rc;
}

/* An operator edits the list as root while the server runs as its own
 * user: the files written get the owner of the directory they are in, so
 * the server can still read them (a SIGHUP reload would fail otherwise). */
static void keep_dir_owner(const char *path, const char *lock)
{
    char dir[4096];
    struct stat st;
    if (geteuid() != 0 ||
        snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    if (stat(dir, &st) < 0 || st.st_uid == 0)
        return;
    if (chown(path, st.st_uid, st.st_gid) < 0 ||
        chown(lock, st.st_uid, st.st_gid) < 0)
        return; /* best effort: the server says so when it cannot read */
}

int fl_server_enrol_edit(const char *path, const uint8_t key[32],
                         const char *name, int add, char *err, size_t errlen)
{
    char lock[4096];
    fl_server_enrol_t *e = NULL;
    int fd = -1, rc;
    if (snprintf(lock, sizeof lock, "%s.lock", path) >= (int)sizeof lock) {
        snprintf(err, errlen, "path too long");
        return FL_ETOOBIG;
    }
    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) < 0) {
        rc = fl_err_from_errno(errno);
        snprintf(err, errlen, "%s: %s", lock, fl_strerror(rc));
        goto out;
    }
    rc = fl_server_enrol_load(path, &e, err, errlen);
    if (rc < 0)
        goto out;
    rc = add ? fl_server_enrol_add(e, key, name)
             : fl_server_enrol_remove(e, key);
    if (rc < 0) {
        snprintf(err, errlen, "%s",
                 rc == FL_EEXIST   ? "the key is already enrolled"
                 : rc == FL_ENOENT ? "the key is not enrolled"
                 : rc == FL_EINVAL
                     ? "the name must be 1..64 characters of [A-Za-z0-9._:@-]"
                     : fl_strerror(rc));
        goto out;
    }
    rc = fl_server_enrol_save(e, path);
    if (rc < 0)
        snprintf(err, errlen, "%s: %s", path, fl_strerror(rc));
    else
        keep_dir_owner(path, lock);
out:
    fl_server_enrol_free(e);
    if (fd >= 0)
        close(fd); /* releases the lock */
    return rc;
}

void fl_server_hello_message(uint8_t out[FL_SERVER_HELLO_MSG_LEN],
                             const uint8_t nonce[32], const uint8_t key[32],
                             uint32_t version)
{
    memcpy(out, "flotilla-hello-v1", 17);
    memcpy(out + 17, nonce, 32);
    memcpy(out + 49, key, 32);
    out[81] = (uint8_t)(version >> 24);
    out[82] = (uint8_t)(version >> 16);
    out[83] = (uint8_t)(version >> 8);
    out[84] = (uint8_t)version;
}

int fl_server_hello_check(const fl_server_enrol_t *e, const uint8_t nonce[32],
                          const Flotilla__ClientHello *h)
{
    if (h->protocol_version != FL_PROTOCOL_VERSION)
        return FLOTILLA__ABORT_REASON__ABORT_VERSION;
    /* docs/PROTOCOL.md §3: at most 32 capabilities of at most 32 bytes, a
     * client version of at most 64. */
    if (h->n_capabilities > 32 ||
        (h->client_version && strlen(h->client_version) > 64))
        return FLOTILLA__ABORT_REASON__ABORT_PROTOCOL;
    for (size_t i = 0; i < h->n_capabilities; i++)
        if (strlen(h->capabilities[i]) > 32)
            return FLOTILLA__ABORT_REASON__ABORT_PROTOCOL;
    if (h->identity_key.len != FL_SERVER_KEY_LEN ||
        h->signature.len != crypto_sign_BYTES)
        return FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE;
    if (!fl_server_enrol_contains(e, h->identity_key.data))
        return FLOTILLA__ABORT_REASON__ABORT_NOT_ENROLLED;
    uint8_t msg[FL_SERVER_HELLO_MSG_LEN];
    fl_server_hello_message(msg, nonce, h->identity_key.data,
                            h->protocol_version);
    if (crypto_sign_verify_detached(h->signature.data, msg, sizeof msg,
                                    h->identity_key.data) != 0)
        return FLOTILLA__ABORT_REASON__ABORT_BAD_SIGNATURE;
    return 0;
}
