/* server/state.c — the state directory's checkpoint.
 *
 * A checked file is: 8-byte magic, be32 format version, be64 payload
 * length, 32-byte BLAKE2b of the payload, payload. The state file's payload
 * is JSON; the server optimizer's moments, which can be as large as the
 * model twice over, go to a sidecar "optim-<round>.bin" in the same format,
 * written first and named (with its checksum) by the state file, so the
 * rename of the state file is the one commit point of a round. */
#include "server/server.h"

#include <dirent.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_MAGIC    "FLSTATE\0"
#define OPTIM_MAGIC    "FLOPTIM\0"
#define CHECKED_HDR    (8 + 4 + 8 + 32)
#define STATE_VERSION  1u
#define OPTIM_FILE_MAX (8ull << 30)

void fl_server_state_init(fl_server_state_t *st)
{
    memset(st, 0, sizeof *st);
}

void fl_server_state_clear(fl_server_state_t *st)
{
    fl_free(st->accountant);
    fl_free(st->optimizer);
    fl_server_state_init(st);
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Wraps payload in the checked format; *out returned owned. */
static int checked_wrap(const char *magic, const uint8_t *payload, size_t len,
                        uint8_t **out, size_t *outlen)
{
    if (len > SIZE_MAX - CHECKED_HDR)
        return FL_ETOOBIG;
    uint8_t *b = fl_malloc(CHECKED_HDR + len);
    if (!b)
        return FL_ENOMEM;
    memcpy(b, magic, 8);
    put_be(b + 8, STATE_VERSION, 4);
    put_be(b + 12, len, 8);
    crypto_generichash(b + 20, 32, payload, len, NULL, 0);
    if (len)
        memcpy(b + CHECKED_HDR, payload, len);
    *out = b;
    *outlen = CHECKED_HDR + len;
    return 0;
}

/* Checks the wrapping; *payload points into in. */
static int checked_open(const char *magic, const uint8_t *in, size_t len,
                        const uint8_t **payload, size_t *plen)
{
    if (len < 8 || memcmp(in, magic, 8) != 0)
        return FL_EMAGIC;
    if (len < CHECKED_HDR)
        return FL_ETRUNC;
    if (get_be(in + 8, 4) != STATE_VERSION)
        return FL_EVERSION;
    uint64_t n = get_be(in + 12, 8);
    if (n != len - CHECKED_HDR)
        return n > len - CHECKED_HDR ? FL_ETRUNC : FL_EFORMAT;
    uint8_t h[32];
    crypto_generichash(h, 32, in + CHECKED_HDR, (size_t)n, NULL, 0);
    if (sodium_memcmp(h, in + 20, 32) != 0)
        return FL_EHASH;
    *payload = in + CHECKED_HDR;
    *plen = (size_t)n;
    return 0;
}

static char *hex_dup(const uint8_t *p, size_t n)
{
    char *s = fl_malloc(2 * n + 1);
    if (s)
        fl_hex_encode(s, p, n);
    return s;
}

/* The JSON document of the state; optim names the sidecar (may be NULL). */
static int state_json(const fl_server_state_t *st, const char *optim,
                      const uint8_t optim_hash[32], char **out)
{
    int rc = FL_ENOMEM;
    char *acc = NULL, *oh = NULL, hash[65];
    json_t *o = json_object();
    if (!o)
        goto out;
    fl_hex_encode(hash, st->model_hash, 32);
    acc = hex_dup(st->accountant, st->accountant_len);
    if (!acc)
        goto out;
    if (json_object_set_new(o, "round", json_integer((json_int_t)st->round)) ||
        json_object_set_new(o, "round_started",
                            json_integer((json_int_t)st->round_started)) ||
        json_object_set_new(o, "rounds_completed",
                            json_integer((json_int_t)st->rounds_completed)) ||
        json_object_set_new(o, "rounds_aborted",
                            json_integer((json_int_t)st->rounds_aborted)) ||
        json_object_set_new(o, "model_version",
                            json_integer((json_int_t)st->model_version)) ||
        json_object_set_new(o, "model_dir", json_string(st->model_dir)) ||
        json_object_set_new(o, "model_hash", json_string(hash)) ||
        /* No DP (noise multiplier 0) spends an infinite epsilon, which
         * JSON cannot hold: null stands for it. */
        json_object_set_new(o, "epsilon",
                            isfinite(st->epsilon) ? json_real(st->epsilon)
                                                  : json_null()) ||
        json_object_set_new(o, "accountant", json_string(acc)))
        goto out;
    if (optim) {
        oh = hex_dup(optim_hash, 32);
        if (!oh ||
            json_object_set_new(o, "optimizer_file", json_string(optim)) ||
            json_object_set_new(o, "optimizer_hash", json_string(oh)))
            goto out;
    }
    *out = json_dumps(o, JSON_INDENT(1) | JSON_SORT_KEYS);
    rc = *out ? 0 : FL_ENOMEM;
out:
    fl_free(oh);
    fl_free(acc);
    json_decref(o);
    return rc;
}

static int encode_with(const fl_server_state_t *st, const char *optim,
                       const uint8_t optim_hash[32], uint8_t **out, size_t *len)
{
    char *js = NULL;
    int rc = state_json(st, optim, optim_hash, &js);
    if (rc < 0)
        return rc;
    rc = checked_wrap(STATE_MAGIC, (const uint8_t *)js, strlen(js), out, len);
    free(js); /* jansson's allocator */
    return rc;
}

int fl_server_state_encode(const fl_server_state_t *st, uint8_t **out,
                           size_t *len)
{
    return encode_with(st, NULL, NULL, out, len);
}

static int get_u64(json_t *o, const char *k, uint64_t *v)
{
    json_t *j = json_object_get(o, k);
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return FL_EFORMAT;
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

static int get_hex(json_t *o, const char *k, uint8_t **out, size_t *len,
                   size_t exact)
{
    json_t *j = json_object_get(o, k);
    if (!json_is_string(j))
        return FL_EFORMAT;
    size_t n = json_string_length(j);
    if (n % 2 || (exact && n != 2 * exact))
        return FL_EFORMAT;
    uint8_t *b = fl_malloc(n / 2 + 1);
    if (!b)
        return FL_ENOMEM;
    if (fl_hex_decode(b, n / 2, json_string_value(j), n) < 0) {
        fl_free(b);
        return FL_EFORMAT;
    }
    *out = b;
    *len = n / 2;
    return 0;
}

/* Decodes the payload; the optimizer sidecar's name and hash, if any, go
 * to optim/optim_hash. */
static int decode_with(const uint8_t *in, size_t len, fl_server_state_t *st,
                       char *optim, size_t optimlen, uint8_t optim_hash[32])
{
    const uint8_t *p;
    size_t plen;
    json_t *o = NULL;
    uint8_t *hash = NULL;
    size_t hlen = 0;
    fl_server_state_t s;
    fl_server_state_init(&s);
    int rc = checked_open(STATE_MAGIC, in, len, &p, &plen);
    if (rc < 0)
        return rc;
    rc = FL_EFORMAT;
    o = json_loadb((const char *)p, plen, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o))
        goto out;
    json_t *md = json_object_get(o, "model_dir");
    json_t *eps = json_object_get(o, "epsilon");
    if (get_u64(o, "round", &s.round) < 0 ||
        get_u64(o, "rounds_completed", &s.rounds_completed) < 0 ||
        get_u64(o, "rounds_aborted", &s.rounds_aborted) < 0 ||
        get_u64(o, "model_version", &s.model_version) < 0 ||
        get_u64(o, "round_started", &s.round_started) < 0 ||
        !json_is_string(md) || json_string_length(md) >= sizeof s.model_dir ||
        strstr(json_string_value(md), "..") ||
        !(json_is_null(eps) ||
          (json_is_number(eps) && json_number_value(eps) >= 0)))
        goto out;
    snprintf(s.model_dir, sizeof s.model_dir, "%s", json_string_value(md));
    s.epsilon = json_is_null(eps) ? INFINITY : json_number_value(eps);
    rc = get_hex(o, "model_hash", &hash, &hlen, 32);
    if (rc < 0)
        goto out;
    memcpy(s.model_hash, hash, 32);
    rc = get_hex(o, "accountant", &s.accountant, &s.accountant_len, 0);
    if (rc < 0)
        goto out;
    json_t *of = json_object_get(o, "optimizer_file");
    if (optim)
        optim[0] = '\0';
    if (of) {
        uint8_t *oh = NULL;
        size_t ohl = 0;
        const char *name = json_string_value(of);
        rc = FL_EFORMAT;
        if (!name || strchr(name, '/') || !optim || strlen(name) >= optimlen)
            goto out;
        rc = get_hex(o, "optimizer_hash", &oh, &ohl, 32);
        if (rc < 0)
            goto out;
        memcpy(optim_hash, oh, 32);
        fl_free(oh);
        snprintf(optim, optimlen, "%s", name);
    }
    rc = 0;
out:
    fl_free(hash);
    json_decref(o);
    if (rc < 0) {
        fl_server_state_clear(&s);
        return rc;
    }
    fl_server_state_clear(st);
    *st = s;
    return 0;
}

int fl_server_state_decode(const uint8_t *in, size_t len, fl_server_state_t *st)
{
    char optim[128];
    uint8_t oh[32];
    return decode_with(in, len, st, optim, sizeof optim, oh);
}

/* Removes optim-*.bin files other than keep. */
static void prune_sidecars(const char *dir, const char *keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "optim-", 6) != 0 ||
            (keep && strcmp(de->d_name, keep) == 0))
            continue;
        char path[4096];
        if (fl_path_join(path, sizeof path, dir, de->d_name) == 0)
            unlink(path);
    }
    closedir(d);
}

int fl_server_state_save(const char *dir, const fl_server_state_t *st)
{
    char path[4096], name[64];
    uint8_t *buf = NULL, hash[32];
    size_t len = 0;
    const char *optim = NULL;
    int rc;
    if (st->optimizer) {
        snprintf(name, sizeof name, "optim-%" PRIu64 ".bin", st->round);
        optim = name;
        rc = checked_wrap(OPTIM_MAGIC, st->optimizer, st->optimizer_len, &buf,
                          &len);
        if (rc < 0)
            goto out;
        memcpy(hash, buf + 20, 32);
        rc = fl_path_join(path, sizeof path, dir, name);
        if (rc == 0)
            rc = fl_file_write_atomic(path, buf, len, 0600);
        fl_free(buf);
        buf = NULL;
        if (rc < 0)
            goto out;
    }
    rc = encode_with(st, optim, hash, &buf, &len);
    if (rc < 0)
        goto out;
    rc = fl_path_join(path, sizeof path, dir, FL_SERVER_STATE_FILE);
    if (rc == 0)
        rc = fl_file_write_atomic(path, buf, len, 0600);
    if (rc == 0)
        prune_sidecars(dir, optim);
out:
    fl_free(buf);
    return rc;
}

static const char *why_of(int rc)
{
    switch (rc) {
    case FL_EMAGIC:
        return "not a flotilla state file (wrong magic)";
    case FL_ETRUNC:
        return "truncated (half-written?)";
    case FL_EHASH:
        return "checksum mismatch (corrupt)";
    case FL_EVERSION:
        return "written by an unsupported version";
    case FL_EFORMAT:
        return "malformed contents";
    default:
        return fl_strerror(rc);
    }
}

int fl_server_state_load(const char *dir, fl_server_state_t *st, char *err,
                         size_t errlen)
{
    char path[4096], optim[128], opath[4096];
    uint8_t *buf = NULL, *obuf = NULL, ohash[32];
    size_t len = 0, olen = 0;
    int rc = fl_path_join(path, sizeof path, dir, FL_SERVER_STATE_FILE);
    if (rc < 0)
        goto out;
    rc = fl_file_read_all(path, FL_SERVER_STATE_MAX, &buf, &len);
    if (rc == FL_ENOENT)
        goto out;
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", path, fl_strerror(rc));
        goto out;
    }
    rc = decode_with(buf, len, st, optim, sizeof optim, ohash);
    if (rc < 0) {
        snprintf(err, errlen,
                 "%s: %s; refusing to start (restore the file from a backup "
                 "or move the state directory aside to start afresh)",
                 path, why_of(rc));
        goto out;
    }
    if (optim[0]) {
        const uint8_t *p;
        size_t plen;
        rc = fl_path_join(opath, sizeof opath, dir, optim);
        if (rc == 0)
            rc = fl_file_read_all(opath, OPTIM_FILE_MAX, &obuf, &olen);
        if (rc == 0)
            rc = checked_open(OPTIM_MAGIC, obuf, olen, &p, &plen);
        if (rc == 0 &&
            (olen < CHECKED_HDR || sodium_memcmp(obuf + 20, ohash, 32) != 0))
            rc = FL_EHASH;
        if (rc < 0) {
            snprintf(err, errlen, "%s: %s; refusing to start", opath,
                     why_of(rc));
            fl_server_state_clear(st);
            goto out;
        }
        st->optimizer = fl_malloc(plen ? plen : 1);
        if (!st->optimizer) {
            rc = FL_ENOMEM;
            fl_server_state_clear(st);
            goto out;
        }
        memcpy(st->optimizer, p, plen);
        st->optimizer_len = plen;
    }
out:
    fl_free(obuf);
    fl_free(buf);
    return rc;
}
