/* server/serve.c — model distribution: the signed manifest of the current
 * version, and its files in chunks by offset, so an interrupted download
 * resumes where it stopped. Only plain file names inside the current
 * version's directory are served. */
#include "server/internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX (64u << 10) /* docs/PROTOCOL.md §4 */

static int send_error(fl_server_peer_t *p, int code, const char *msg)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Error er = FLOTILLA__ERROR__INIT;
    er.code = (uint32_t)-code;
    er.message = (char *)msg;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ERROR;
    e.error = &er;
    return fl_server_peer_send(p, &e);
}

static int plain_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 64 || n[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)n[i]) && !strchr("._-", n[i]))
            return 0;
    return 1;
}

static int version_path(const fl_server_t *s, const char *file, char *out,
                        size_t outlen)
{
    char dir[4096];
    if (!s->state.model_version || !s->state.model_dir[0])
        return FL_ENOENT;
    int rc =
        fl_path_join(dir, sizeof dir, s->cfg.state_dir, s->state.model_dir);
    return rc ? rc : fl_path_join(out, outlen, dir, file);
}

int fl_server_serve_manifest(fl_server_peer_t *p,
                             const Flotilla__ManifestRequest *m)
{
    fl_server_t *s = p->srv;
    char path[4096];
    uint8_t *js = NULL, *sig = NULL, raw[64];
    size_t jlen = 0, slen = 0;
    if (m->version && m->version != s->state.model_version)
        return send_error(p, FL_ENOENT, "only the current version is served");
    int rc = version_path(s, "manifest.json", path, sizeof path);
    if (rc == 0)
        rc = fl_file_read_all(path, MANIFEST_MAX, &js, &jlen);
    if (rc == 0)
        rc = version_path(s, "manifest.sig", path, sizeof path);
    if (rc == 0)
        rc = fl_file_read_all(path, 1024, &sig, &slen);
    if (rc == 0) {
        /* raw 64 bytes, or 128 hex digits and optional whitespace */
        if (slen == 64) {
            memcpy(raw, sig, 64);
        } else {
            while (slen && isspace(sig[slen - 1]))
                slen--;
            if (slen != 128 ||
                fl_hex_decode(raw, 64, (const char *)sig, slen) < 0)
                rc = FL_EFORMAT;
        }
    }
    if (rc < 0) {
        if (rc != FL_ENOENT)
            FL_ERROR("serving the manifest of version %llu: %s",
                     (unsigned long long)s->state.model_version,
                     fl_strerror(rc));
        rc = send_error(p, rc, "no model version available");
        goto out;
    }
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__ManifestResponse r = FLOTILLA__MANIFEST_RESPONSE__INIT;
    r.version = s->state.model_version;
    r.manifest_json.data = js;
    r.manifest_json.len = jlen;
    r.signature.data = raw;
    r.signature.len = 64;
    e.body_case = FLOTILLA__ENVELOPE__BODY_MANIFEST_RESPONSE;
    e.manifest_response = &r;
    rc = fl_server_peer_send(p, &e);
out:
    fl_free(js);
    fl_free(sig);
    return rc;
}

int fl_server_serve_chunk(fl_server_peer_t *p, const Flotilla__ChunkRequest *m)
{
    fl_server_t *s = p->srv;
    char path[4096];
    uint8_t *buf = NULL;
    int fd = -1, rc;
    struct stat st;
    if (m->version != s->state.model_version)
        return send_error(p, FL_ENOENT, "only the current version is served");
    if (!m->file || !plain_name(m->file) ||
        strcmp(m->file, "manifest.sig") == 0)
        return FL_EPROTO; /* a path outside the version: hostile */
    size_t want = m->length ? m->length : (size_t)s->cfg.chunk_size;
    if (want > (size_t)s->cfg.chunk_size)
        want = (size_t)s->cfg.chunk_size;
    rc = version_path(s, m->file, path, sizeof path);
    if (rc < 0)
        return send_error(p, rc, "no such file");
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = send_error(p, FL_ENOENT, "no such file");
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (m->offset > size) {
        rc = send_error(p, FL_ERANGE, "offset past the end of the file");
        goto out;
    }
    if (want > size - m->offset)
        want = (size_t)(size - m->offset);
    buf = fl_malloc(want ? want : 1);
    if (!buf) {
        rc = FL_ENOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(m->offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Chunk c = FLOTILLA__CHUNK__INIT;
    c.version = s->state.model_version;
    c.file = m->file;
    c.offset = m->offset;
    c.data.data = buf;
    c.data.len = got;
    c.total_size = size;
    e.body_case = FLOTILLA__ENVELOPE__BODY_CHUNK;
    e.chunk = &c;
    rc = fl_server_peer_send(p, &e);
out:
    fl_free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}
