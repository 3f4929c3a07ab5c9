/* artifact/manifest.c — manifest.json: the canonical encoding and the
 * strict parser (jansson).
 *
 *   {
 *     "format": "flotilla-model-manifest/1",
 *     "version": 12,
 *     "round": 40,
 *     "parent_sha256": "<64 hex>" | null,
 *     "created_ms": 1763712000000,
 *     "privacy": {"epsilon": 2.1 | null, "delta": 1e-05},
 *     "config": { ...the caller's object... },
 *     "files": [{"name": "model.bin", "size": 123, "sha256": "<64 hex>"}]
 *   }
 *
 * Every key is required, no other key is allowed, integers are JSON
 * integers >= 0, hashes are 64 lowercase hex digits. */
#include "artifact/artifact.h"
#include "artifact/internal.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#define FORMAT_TAG "flotilla-model-manifest/1"

static void set_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_why(char *why, size_t whylen, const char *fmt, ...)
{
    if (!why || whylen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

void fl_artifact_manifest_free(fl_artifact_manifest_t *m)
{
    if (!m)
        return;
    fl_free(m->config_json);
    fl_free(m);
}

const fl_artifact_file_t *
fl_artifact_manifest_file(const fl_artifact_manifest_t *m, const char *name)
{
    for (size_t i = 0; i < m->nfiles; i++)
        if (strcmp(m->files[i].name, name) == 0)
            return &m->files[i];
    return NULL;
}

/* config.<section>.<key> of m: *v borrowed from *config, which the
 * caller releases (json_decref) whatever the result. */
static int config_value(const fl_artifact_manifest_t *m, const char *section,
                        const char *key, json_t **config, json_t **v)
{
    *config = NULL;
    if (!m || !m->config_json || !section || !key)
        return FL_EINVAL;
    json_error_t err;
    *config = json_loads(m->config_json, JSON_REJECT_DUPLICATES, &err);
    if (!*config)
        return FL_EFORMAT;
    *v = json_object_get(json_object_get(*config, section), key);
    return *v ? 0 : FL_ENOENT;
}

int fl_artifact_manifest_config_u64(const fl_artifact_manifest_t *m,
                                    const char *section, const char *key,
                                    uint64_t *out)
{
    json_t *config = NULL, *v;
    int rc = out ? config_value(m, section, key, &config, &v) : FL_EINVAL;
    if (rc == 0) {
        rc = FL_EFORMAT;
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            *out = (uint64_t)json_integer_value(v);
            rc = 0;
        }
    }
    json_decref(config);
    return rc;
}

int fl_artifact_manifest_config_str(const fl_artifact_manifest_t *m,
                                    const char *section, const char *key,
                                    char *out, size_t outlen)
{
    json_t *config = NULL, *v;
    int rc =
        out && outlen ? config_value(m, section, key, &config, &v) : FL_EINVAL;
    if (rc == 0) {
        rc = FL_EFORMAT;
        if (json_is_string(v) && json_string_length(v) < outlen &&
            strlen(json_string_value(v)) == json_string_length(v)) {
            memcpy(out, json_string_value(v), json_string_length(v) + 1);
            rc = 0;
        }
    }
    json_decref(config);
    return rc;
}

int fl_artifact__name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= FL_ARTIFACT_NAME_MAX || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return strcmp(name, FL_ARTIFACT_MANIFEST) != 0 &&
           strcmp(name, FL_ARTIFACT_SIGNATURE) != 0;
}

/* ---- encoding ---- */

static json_t *hex_json(const uint8_t *b, size_t n)
{
    char hex[2 * FL_ARTIFACT_HASH_BYTES + 1];
    fl_hex_encode(hex, b, n);
    return json_string(hex);
}

int fl_artifact_manifest_encode(const fl_artifact_manifest_t *m, fl_buf_t *out)
{
    int rc = FL_ENOMEM;
    json_t *root = NULL, *config = NULL;
    char *text = NULL;
    if (!m || !out || m->nfiles > FL_ARTIFACT_FILES_MAX ||
        m->version > INT64_MAX || m->round > INT64_MAX ||
        m->created_ms > INT64_MAX || !(m->delta >= 0 && m->delta <= 1) ||
        !(m->epsilon >= 0))
        return FL_EINVAL;
    if (m->config_json) {
        json_error_t err;
        config = json_loads(m->config_json, JSON_REJECT_DUPLICATES, &err);
        if (!config || !json_is_object(config)) {
            rc = FL_EINVAL;
            goto out;
        }
    } else {
        config = json_object();
    }
    json_t *files = json_array();
    root = json_object();
    json_t *privacy = json_object();
    if (!root || !files || !privacy || !config) {
        json_decref(files);
        json_decref(privacy);
        goto out;
    }
    /* set_new takes the references, whatever happens. */
    int bad = 0;
    bad |= json_object_set_new(root, "format", json_string(FORMAT_TAG));
    bad |= json_object_set_new(root, "version",
                               json_integer((json_int_t)m->version));
    bad |=
        json_object_set_new(root, "round", json_integer((json_int_t)m->round));
    bad |= json_object_set_new(
        root, "parent_sha256",
        m->has_parent ? hex_json(m->parent_sha256, FL_ARTIFACT_HASH_BYTES)
                      : json_null());
    bad |= json_object_set_new(root, "created_ms",
                               json_integer((json_int_t)m->created_ms));
    bad |= json_object_set_new(privacy, "epsilon",
                               isfinite(m->epsilon) ? json_real(m->epsilon)
                                                    : json_null());
    bad |= json_object_set_new(privacy, "delta", json_real(m->delta));
    bad |= json_object_set_new(root, "privacy", privacy);
    bad |= json_object_set(root, "config", config);
    for (size_t i = 0; i < m->nfiles; i++) {
        const fl_artifact_file_t *f = &m->files[i];
        if (!fl_artifact__name_ok(f->name) || f->size > INT64_MAX) {
            bad = 1;
            rc = FL_EINVAL;
            break;
        }
        json_t *jf = json_object();
        bad |= json_object_set_new(jf, "name", json_string(f->name));
        bad |=
            json_object_set_new(jf, "size", json_integer((json_int_t)f->size));
        bad |= json_object_set_new(jf, "sha256",
                                   hex_json(f->sha256, FL_ARTIFACT_HASH_BYTES));
        bad |= json_array_append_new(files, jf);
    }
    bad |= json_object_set_new(root, "files", files);
    if (bad)
        goto out;
    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                JSON_REAL_PRECISION(17));
    if (!text)
        goto out;
    size_t before = out->len;
    rc = fl_buf_append(out, text, strlen(text));
    if (rc == 0)
        rc = fl_buf_append_u8(out, '\n');
    if (rc < 0)
        out->len = before;
out:
    free(text); /* jansson allocates with malloc */
    json_decref(config);
    json_decref(root);
    return rc;
}

/* ---- strict parsing ---- */

/* Only the keys in `allowed` (NULL-terminated), each present. */
static int exact_keys(json_t *obj, const char *const *allowed,
                      const char *where, char *why, size_t whylen)
{
    const char *key;
    json_t *v;
    size_t want = 0;
    while (allowed[want])
        want++;
    json_object_foreach(obj, key, v)
    {
        int known = 0;
        for (size_t i = 0; i < want; i++)
            known |= strcmp(key, allowed[i]) == 0;
        if (!known) {
            set_why(why, whylen, "%s: unknown field '%.40s'", where, key);
            return FL_EFORMAT;
        }
    }
    for (size_t i = 0; i < want; i++)
        if (!json_object_get(obj, allowed[i])) {
            set_why(why, whylen, "%s: missing field '%s'", where, allowed[i]);
            return FL_EFORMAT;
        }
    return 0;
}

static int get_uint(json_t *obj, const char *key, uint64_t *out,
                    const char *where, char *why, size_t whylen)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        set_why(why, whylen, "%s: '%s' must be an integer >= 0", where, key);
        return FL_EFORMAT;
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_hash(json_t *v, uint8_t out[FL_ARTIFACT_HASH_BYTES])
{
    const char *s = json_string_value(v);
    if (!s || json_string_length(v) != 2 * FL_ARTIFACT_HASH_BYTES)
        return FL_EFORMAT;
    for (size_t i = 0; i < 2 * FL_ARTIFACT_HASH_BYTES; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return FL_EFORMAT; /* canonical: lowercase only */
    return fl_hex_decode(out, FL_ARTIFACT_HASH_BYTES, s,
                         2 * FL_ARTIFACT_HASH_BYTES);
}

static int parse_files(json_t *files, fl_artifact_manifest_t *m, char *why,
                       size_t whylen)
{
    static const char *const file_keys[] = {"name", "size", "sha256", NULL};
    if (!json_is_array(files) || json_array_size(files) == 0 ||
        json_array_size(files) > FL_ARTIFACT_FILES_MAX) {
        set_why(why, whylen, "'files' must be an array of 1 to %d files",
                FL_ARTIFACT_FILES_MAX);
        return FL_EFORMAT;
    }
    size_t i;
    json_t *jf;
    json_array_foreach(files, i, jf)
    {
        fl_artifact_file_t *f = &m->files[i];
        char where[32];
        snprintf(where, sizeof where, "files[%zu]", i);
        if (!json_is_object(jf)) {
            set_why(why, whylen, "%s: not an object", where);
            return FL_EFORMAT;
        }
        int rc = exact_keys(jf, file_keys, where, why, whylen);
        if (rc < 0)
            return rc;
        json_t *name = json_object_get(jf, "name");
        const char *s = json_string_value(name);
        if (!s || strlen(s) != json_string_length(name) ||
            !fl_artifact__name_ok(s)) {
            set_why(why, whylen, "%s: bad file name", where);
            return FL_EFORMAT;
        }
        memcpy(f->name, s, strlen(s) + 1);
        if ((rc = get_uint(jf, "size", &f->size, where, why, whylen)) < 0)
            return rc;
        if (get_hash(json_object_get(jf, "sha256"), f->sha256) < 0) {
            set_why(why, whylen, "%s: 'sha256' must be 64 lowercase hex digits",
                    where);
            return FL_EFORMAT;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->files[j].name, f->name) == 0) {
                set_why(why, whylen, "%s: duplicate file '%s'", where, f->name);
                return FL_EFORMAT;
            }
        m->nfiles = i + 1;
    }
    return 0;
}

int fl_artifact_manifest_parse(const void *data, size_t len,
                               fl_artifact_manifest_t **out, char *why,
                               size_t whylen)
{
    static const char *const top_keys[] = {
        "format", "version", "round", "parent_sha256", "created_ms", "privacy",
        "config", "files",   NULL};
    static const char *const privacy_keys[] = {"epsilon", "delta", NULL};
    json_t *root = NULL;
    fl_artifact_manifest_t *m = NULL;
    json_error_t err;
    int rc = FL_EFORMAT;

    *out = NULL;
    if (!data)
        return FL_EINVAL;
    if (len > FL_ARTIFACT_MANIFEST_MAX) {
        set_why(why, whylen, "manifest larger than %d bytes",
                FL_ARTIFACT_MANIFEST_MAX);
        return FL_ETOOBIG;
    }
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        set_why(why, whylen, "not JSON: line %d: %.80s", err.line, err.text);
        goto out;
    }
    if (!json_is_object(root)) {
        set_why(why, whylen, "not a JSON object");
        goto out;
    }
    if ((rc = exact_keys(root, top_keys, "manifest", why, whylen)) < 0)
        goto out;
    rc = FL_EFORMAT;
    const char *fmt = json_string_value(json_object_get(root, "format"));
    if (!fmt || strcmp(fmt, FORMAT_TAG) != 0) {
        set_why(why, whylen, "'format' is not \"%s\"", FORMAT_TAG);
        goto out;
    }
    m = fl_calloc(1, sizeof *m);
    if (!m) {
        rc = FL_ENOMEM;
        goto out;
    }
    if ((rc = get_uint(root, "version", &m->version, "manifest", why, whylen)) <
            0 ||
        (rc = get_uint(root, "round", &m->round, "manifest", why, whylen)) <
            0 ||
        (rc = get_uint(root, "created_ms", &m->created_ms, "manifest", why,
                       whylen)) < 0)
        goto out;
    rc = FL_EFORMAT;
    if (m->version < 1) {
        set_why(why, whylen, "'version' must be >= 1");
        goto out;
    }
    json_t *parent = json_object_get(root, "parent_sha256");
    if (!json_is_null(parent)) {
        if (get_hash(parent, m->parent_sha256) < 0) {
            set_why(why, whylen,
                    "'parent_sha256' must be null or 64 lowercase hex digits");
            goto out;
        }
        m->has_parent = 1;
    }
    json_t *privacy = json_object_get(root, "privacy");
    if (!json_is_object(privacy)) {
        set_why(why, whylen, "'privacy' must be an object");
        goto out;
    }
    if ((rc = exact_keys(privacy, privacy_keys, "privacy", why, whylen)) < 0)
        goto out;
    rc = FL_EFORMAT;
    json_t *eps = json_object_get(privacy, "epsilon");
    json_t *delta = json_object_get(privacy, "delta");
    if (json_is_null(eps)) {
        m->epsilon = INFINITY;
    } else if (json_is_number(eps) && json_number_value(eps) >= 0) {
        m->epsilon = json_number_value(eps);
    } else {
        set_why(why, whylen, "'privacy.epsilon' must be a number >= 0 or null");
        goto out;
    }
    if (!json_is_number(delta) || !(json_number_value(delta) >= 0) ||
        !(json_number_value(delta) <= 1)) {
        set_why(why, whylen, "'privacy.delta' must be a number in [0, 1]");
        goto out;
    }
    m->delta = json_number_value(delta);
    json_t *config = json_object_get(root, "config");
    if (!json_is_object(config)) {
        set_why(why, whylen, "'config' must be an object");
        goto out;
    }
    m->config_json = json_dumps(config, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                            JSON_REAL_PRECISION(17));
    if (!m->config_json) {
        rc = FL_ENOMEM;
        goto out;
    }
    /* json_dumps allocates with malloc; keep one allocator for the field. */
    char *copy = fl_strdup(m->config_json);
    free(m->config_json);
    m->config_json = copy;
    if (!copy) {
        rc = FL_ENOMEM;
        goto out;
    }
    if ((rc = parse_files(json_object_get(root, "files"), m, why, whylen)) < 0)
        goto out;
    *out = m;
    m = NULL;
    rc = 0;
out:
    fl_artifact_manifest_free(m);
    json_decref(root);
    return rc;
}
