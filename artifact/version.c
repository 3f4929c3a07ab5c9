/* artifact/version.c — one model version directory (verify, sign) and the
 * publishing root (atomic publish, the `current` pointer, keep-last-N). */
#include "artifact/artifact.h"
#include "artifact/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static int join(char *out, const char *a, const char *b)
{
    return fl_path_join(out, PATH_MAX, a, b);
}

/* ---- checking files against a manifest ---- */

static int check_files(const char *dir, const fl_artifact_manifest_t *m,
                       char *why, size_t whylen)
{
    int rc = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        set_why(why, whylen, "%s: cannot open", dir);
        return fl_err_from_errno(errno);
    }
    for (size_t i = 0; i < m->nfiles && rc == 0; i++) {
        const fl_artifact_file_t *f = &m->files[i];
        uint8_t h[FL_ARTIFACT_HASH_BYTES];
        uint64_t size = 0;
        struct stat st;
        int fd = openat(dfd, f->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            set_why(why, whylen, "%s: missing (or a symlink)", f->name);
            rc = FL_EHASH;
            break;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            set_why(why, whylen, "%s: not a regular file", f->name);
            rc = FL_EHASH;
        } else if ((uint64_t)st.st_size != f->size) {
            set_why(why, whylen,
                    "%s: %" PRIu64 " bytes, manifest says %" PRIu64, f->name,
                    (uint64_t)st.st_size, f->size);
            rc = FL_EHASH;
        } else if ((rc = fl_artifact__sha256_fd(fd, h, &size)) < 0) {
            set_why(why, whylen, "%s: %s", f->name, fl_strerror(rc));
        } else if (size != f->size || memcmp(h, f->sha256, sizeof h) != 0) {
            set_why(why, whylen, "%s: SHA-256 mismatch", f->name);
            rc = FL_EHASH;
        }
        close(fd);
    }
    close(dfd);
    return rc;
}

int fl_artifact_verify_dir(const char *dir,
                           const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES],
                           fl_artifact_manifest_t **out, char *why,
                           size_t whylen)
{
    char mpath[PATH_MAX], spath[PATH_MAX];
    uint8_t *mbytes = NULL, *sig = NULL;
    size_t mlen = 0, slen = 0;
    fl_artifact_manifest_t *m = NULL;
    int rc;

    if (out)
        *out = NULL;
    if (!dir || !pk)
        return FL_EINVAL;
    if ((rc = join(mpath, dir, FL_ARTIFACT_MANIFEST)) < 0 ||
        (rc = join(spath, dir, FL_ARTIFACT_SIGNATURE)) < 0)
        return rc;
    rc = fl_file_read_all(mpath, FL_ARTIFACT_MANIFEST_MAX, &mbytes, &mlen);
    if (rc < 0) {
        set_why(why, whylen, "%s: %s", FL_ARTIFACT_MANIFEST,
                rc == FL_ETOOBIG ? "larger than the limit" : fl_strerror(rc));
        goto out;
    }
    rc = fl_file_read_all(spath, FL_ARTIFACT_SIG_BYTES, &sig, &slen);
    if (rc < 0 || slen != FL_ARTIFACT_SIG_BYTES) {
        set_why(why, whylen, "%s: %s", FL_ARTIFACT_SIGNATURE,
                rc == FL_ENOENT ? "missing (unsigned model)"
                                : "not a 64-byte Ed25519 signature");
        rc = FL_ESIGNATURE;
        goto out;
    }
    /* The signature first: nothing in an unauthenticated manifest is
     * looked at, not even its syntax. */
    rc = fl_artifact_sig_verify(pk, mbytes, mlen, sig);
    if (rc < 0) {
        set_why(why, whylen,
                "%s: signature does not verify with this public key",
                FL_ARTIFACT_SIGNATURE);
        goto out;
    }
    rc = fl_artifact_manifest_parse(mbytes, mlen, &m, why, whylen);
    if (rc < 0)
        goto out;
    rc = check_files(dir, m, why, whylen);
    if (rc < 0)
        goto out;
    if (out) {
        *out = m;
        m = NULL;
    }
out:
    fl_artifact_manifest_free(m);
    fl_free(sig);
    fl_free(mbytes);
    return rc;
}

/* ---- signing a directory in place ---- */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const fl_artifact_file_t *)a)->name,
                  ((const fl_artifact_file_t *)b)->name);
}

/* Lists the regular files of dir (sorted, manifest.* and dot files left
 * out) into m->files with their sizes and hashes. */
static int scan_dir(const char *dir, fl_artifact_manifest_t *m, char *why,
                    size_t whylen)
{
    int rc = 0;
    DIR *d = opendir(dir);
    if (!d) {
        set_why(why, whylen, "%s: cannot open", dir);
        return fl_err_from_errno(errno);
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        struct stat st;
        if (n[0] == '.' || strcmp(n, FL_ARTIFACT_MANIFEST) == 0 ||
            strcmp(n, FL_ARTIFACT_SIGNATURE) == 0)
            continue;
        if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = fl_err_from_errno(errno);
            break;
        }
        if (!S_ISREG(st.st_mode))
            continue;
        if (!fl_artifact__name_ok(n)) {
            set_why(why, whylen, "'%.80s': name not allowed in a manifest", n);
            rc = FL_EINVAL;
            break;
        }
        if (m->nfiles == FL_ARTIFACT_FILES_MAX) {
            set_why(why, whylen, "more than %d files", FL_ARTIFACT_FILES_MAX);
            rc = FL_ETOOBIG;
            break;
        }
        memcpy(m->files[m->nfiles++].name, n, strlen(n) + 1);
    }
    closedir(d);
    if (rc < 0)
        return rc;
    if (m->nfiles == 0) {
        set_why(why, whylen, "%s: no files to sign", dir);
        return FL_ENOENT;
    }
    qsort(m->files, m->nfiles, sizeof m->files[0], name_cmp);
    for (size_t i = 0; i < m->nfiles; i++) {
        char p[PATH_MAX];
        fl_artifact_file_t *f = &m->files[i];
        if ((rc = join(p, dir, f->name)) < 0 ||
            (rc = fl_artifact_sha256_file(p, f->sha256, &f->size)) < 0) {
            set_why(why, whylen, "%s: %s", f->name, fl_strerror(rc));
            return rc;
        }
    }
    return 0;
}

static int write_signature(const char *dir, const fl_artifact_key_t *k,
                           const uint8_t *mbytes, size_t mlen, char *why,
                           size_t whylen)
{
    char spath[PATH_MAX];
    uint8_t sig[FL_ARTIFACT_SIG_BYTES];
    int rc = join(spath, dir, FL_ARTIFACT_SIGNATURE);
    if (rc == 0)
        rc = fl_artifact_sign(k, mbytes, mlen, sig);
    if (rc == 0)
        rc = fl_file_write_atomic(spath, sig, sizeof sig, 0644);
    if (rc < 0)
        set_why(why, whylen, "%s: %s", FL_ARTIFACT_SIGNATURE, fl_strerror(rc));
    return rc;
}

int fl_artifact_sign_dir(const char *dir, const fl_artifact_key_t *k,
                         const fl_artifact_meta_t *meta, char *why,
                         size_t whylen)
{
    char mpath[PATH_MAX];
    uint8_t *mbytes = NULL;
    size_t mlen = 0;
    fl_artifact_manifest_t *m = NULL;
    fl_buf_t buf;
    int rc;

    fl_buf_init(&buf, FL_ARTIFACT_MANIFEST_MAX);
    if (!dir || !k)
        return FL_EINVAL;
    if ((rc = join(mpath, dir, FL_ARTIFACT_MANIFEST)) < 0)
        return rc;
    rc = fl_file_read_all(mpath, FL_ARTIFACT_MANIFEST_MAX, &mbytes, &mlen);
    if (rc == 0) {
        /* Sign what is there, after making sure it is true. */
        rc = fl_artifact_manifest_parse(mbytes, mlen, &m, why, whylen);
        if (rc == 0)
            rc = check_files(dir, m, why, whylen);
        if (rc == 0)
            rc = write_signature(dir, k, mbytes, mlen, why, whylen);
        goto out;
    }
    if (rc != FL_ENOENT) {
        set_why(why, whylen, "%s: %s", FL_ARTIFACT_MANIFEST, fl_strerror(rc));
        goto out;
    }
    if (!meta) {
        set_why(why, whylen, "no %s, and nothing to build one from",
                FL_ARTIFACT_MANIFEST);
        rc = FL_EINVAL;
        goto out;
    }
    m = fl_calloc(1, sizeof *m);
    if (!m) {
        rc = FL_ENOMEM;
        goto out;
    }
    m->version = meta->version;
    m->round = meta->round;
    m->epsilon = meta->epsilon;
    m->delta = meta->delta;
    m->created_ms = meta->created_ms ? meta->created_ms : fl_time_wall_ms();
    m->config_json = (char *)meta->config_json; /* borrowed for encoding */
    rc = scan_dir(dir, m, why, whylen);
    if (rc == 0)
        rc = fl_artifact_manifest_encode(m, &buf);
    m->config_json = NULL;
    if (rc < 0) {
        if (rc == FL_EINVAL)
            set_why(why, whylen,
                    "bad version, privacy or config for the "
                    "manifest");
        goto out;
    }
    rc = fl_file_write_atomic(mpath, buf.data, buf.len, 0644);
    if (rc == 0)
        rc = write_signature(dir, k, buf.data, buf.len, why, whylen);
out:
    fl_buf_free(&buf);
    fl_artifact_manifest_free(m);
    fl_free(mbytes);
    return rc;
}

/* ---- the publishing root ---- */

int fl_artifact_version_name(uint64_t version, char *name, size_t namelen)
{
    int n = snprintf(name, namelen, "v%012" PRIu64, version);
    return n < 0 || (size_t)n >= namelen ? FL_ETOOBIG : 0;
}

/* "v" and 12 to 20 digits. */
static int parse_version_name(const char *name, uint64_t *version)
{
    size_t n = strlen(name);
    if (n < 13 || n > 21 || name[0] != 'v')
        return FL_EFORMAT;
    uint64_t v = 0;
    for (size_t i = 1; i < n; i++) {
        if (name[i] < '0' || name[i] > '9')
            return FL_EFORMAT;
        unsigned digit = (unsigned)(name[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return FL_EFORMAT;
        v = v * 10 + digit;
    }
    *version = v;
    return 0;
}

int fl_artifact_current(const char *root, char *dir, size_t dirlen,
                        uint64_t *version)
{
    char link[PATH_MAX], target[256];
    uint64_t v;
    int rc = join(link, root, FL_ARTIFACT_CURRENT);
    if (rc < 0)
        return rc;
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return errno == EINVAL ? FL_EFORMAT : fl_err_from_errno(errno);
    target[n] = '\0';
    if (parse_version_name(target, &v) < 0)
        return FL_EFORMAT;
    if (dir && (rc = fl_path_join(dir, dirlen, root, target)) < 0)
        return rc;
    if (version)
        *version = v;
    return 0;
}

/* Removes a directory that holds only files (a version or a temporary). */
static int remove_flat_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return fl_err_from_errno(errno);
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) < 0 && rc == 0)
            rc = fl_err_from_errno(errno);
    }
    closedir(d);
    if (rmdir(path) < 0 && rc == 0)
        rc = fl_err_from_errno(errno);
    return rc;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Best effort: what cannot be removed now is tried again next time. */
static void prune(const char *root, unsigned keep, uint64_t current)
{
    enum { MAX_SEEN = 4096 };
    uint64_t *seen = fl_calloc(MAX_SEEN, sizeof(uint64_t));
    size_t n = 0;
    DIR *d = opendir(root);
    if (!d || !seen)
        goto out;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char p[PATH_MAX];
        uint64_t v;
        if (join(p, root, e->d_name) < 0)
            continue;
        if (strncmp(e->d_name, ".tmp-", 5) == 0)
            remove_flat_dir(p); /* a publish that crashed */
        else if (strncmp(e->d_name, ".current-", 9) == 0)
            unlink(p);
        else if (parse_version_name(e->d_name, &v) == 0 && n < MAX_SEEN)
            seen[n++] = v;
    }
    qsort(seen, n, sizeof seen[0], cmp_desc);
    /* Versions above current never became current (a crash between
     * rename and link): they go first, and do not count towards keep. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        char name[32], p[PATH_MAX];
        if (seen[i] == current || (seen[i] < current && kept < keep)) {
            kept++;
            continue;
        }
        /* Renamed out of sight first: a reader never sees a version
         * half removed, nor does one stay behind after a crash (a .tmp-
         * directory is removed above, next time). */
        char tmp[PATH_MAX], tname[48];
        if (fl_artifact_version_name(seen[i], name, sizeof name) == 0 &&
            join(p, root, name) == 0) {
            snprintf(tname, sizeof tname, ".tmp-prune-%s", name);
            if (join(tmp, root, tname) == 0 && rename(p, tmp) == 0)
                remove_flat_dir(tmp);
            else
                remove_flat_dir(p);
        }
    }
    fl_dir_sync(root);
out:
    if (d)
        closedir(d);
    fl_free(seen);
}

/* Writes one input into dfd/name (mode 0644), fsyncs it, and records its
 * size and SHA-256 in f. */
static int put_file(int dfd, const fl_artifact_input_t *in,
                    fl_artifact_file_t *f)
{
    int rc = 0, src = -1;
    int fd =
        openat(dfd, in->name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return fl_err_from_errno(errno);
    memcpy(f->name, in->name, strlen(in->name) + 1);
    if (!in->path) {
        rc = fl_artifact_sha256(in->data, in->len, f->sha256);
        if (rc == 0)
            rc = fl_fd_write_all(fd, in->data, in->len);
        f->size = in->len;
    } else {
        struct stat st;
        f->size = 0;
        src = open(in->path, O_RDONLY | O_CLOEXEC);
        if (src < 0) {
            rc = fl_err_from_errno(errno);
            goto out;
        }
        if (fstat(src, &st) < 0 || !S_ISREG(st.st_mode)) {
            rc = FL_EINVAL;
            goto out;
        }
        rc = fl_artifact__sha256_copy_fd(src, fd, f->sha256, &f->size);
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = fl_err_from_errno(errno);
out:
    if (close(fd) < 0 && rc == 0)
        rc = fl_err_from_errno(errno);
    if (src >= 0)
        close(src);
    return rc;
}

static int put_bytes(int dfd, const char *name, const void *data, size_t len)
{
    fl_artifact_input_t in = {name, NULL, data, len};
    fl_artifact_file_t f;
    return put_file(dfd, &in, &f);
}

/* Points root/current at name: a new symlink renamed over the old one. */
static int set_current(const char *root, const char *name)
{
    char tmp[PATH_MAX], link[PATH_MAX], suffix[32];
    uint8_t rnd[6];
    int rc = fl_random_bytes(rnd, sizeof rnd);
    if (rc < 0)
        return rc;
    char hex[13];
    fl_hex_encode(hex, rnd, sizeof rnd);
    snprintf(suffix, sizeof suffix, ".current-%s", hex);
    if ((rc = join(tmp, root, suffix)) < 0 ||
        (rc = join(link, root, FL_ARTIFACT_CURRENT)) < 0)
        return rc;
    if (symlink(name, tmp) < 0)
        return fl_err_from_errno(errno);
    if (rename(tmp, link) < 0) {
        rc = fl_err_from_errno(errno);
        unlink(tmp);
        return rc;
    }
    return fl_dir_sync(root);
}

int fl_artifact_publish(const char *root, const fl_artifact_key_t *k,
                        const fl_artifact_meta_t *meta,
                        const fl_artifact_input_t *files, size_t nfiles,
                        unsigned keep, char *why, size_t whylen)
{
    char tmp[PATH_MAX], final[PATH_MAX], curdir[PATH_MAX], p[PATH_MAX];
    char name[32];
    fl_artifact_manifest_t *m = NULL;
    fl_buf_t buf;
    uint8_t sig[FL_ARTIFACT_SIG_BYTES];
    uint64_t curver = 0;
    int rc, dfd = -1, have_tmp = 0, have_current;

    fl_buf_init(&buf, FL_ARTIFACT_MANIFEST_MAX);
    if (!root || !k || !meta || !files || nfiles == 0 ||
        nfiles > FL_ARTIFACT_FILES_MAX || keep < 1 || meta->version < 1) {
        set_why(why, whylen, "bad arguments");
        return FL_EINVAL;
    }
    for (size_t i = 0; i < nfiles; i++) {
        if (!files[i].name || !fl_artifact__name_ok(files[i].name) ||
            (!files[i].path && !files[i].data && files[i].len)) {
            set_why(why, whylen, "file %zu: bad name or contents", i);
            return FL_EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(files[i].name, files[j].name) == 0) {
                set_why(why, whylen, "file '%s' given twice", files[i].name);
                return FL_EINVAL;
            }
    }
    if ((rc = fl_artifact_version_name(meta->version, name, sizeof name)) < 0)
        return rc;
    if ((rc = fl_mkdir_p(root, 0755)) < 0) {
        set_why(why, whylen, "%s: cannot create", root);
        return rc;
    }
    m = fl_calloc(1, sizeof *m);
    if (!m) {
        rc = FL_ENOMEM;
        goto out;
    }
    /* The chain: the parent is the current version's manifest. */
    rc = fl_artifact_current(root, curdir, sizeof curdir, &curver);
    have_current = rc == 0;
    if (rc < 0 && rc != FL_ENOENT) {
        set_why(why, whylen, "%s/%s: %s", root, FL_ARTIFACT_CURRENT,
                fl_strerror(rc));
        goto out;
    }
    if (have_current) {
        if (meta->version <= curver) {
            set_why(why, whylen,
                    "version %" PRIu64
                    " is not newer than the current %" PRIu64,
                    meta->version, curver);
            rc = FL_EEXIST;
            goto out;
        }
        if ((rc = join(p, curdir, FL_ARTIFACT_MANIFEST)) < 0 ||
            (rc = fl_artifact_sha256_file(p, m->parent_sha256, NULL)) < 0) {
            set_why(why, whylen, "current version's manifest: %s",
                    fl_strerror(rc));
            goto out;
        }
        m->has_parent = 1;
    }
    /* 1. Everything into a temporary directory of root. */
    char tmpl[64];
    snprintf(tmpl, sizeof tmpl, ".tmp-%s-XXXXXX", name);
    if ((rc = join(tmp, root, tmpl)) < 0)
        goto out;
    if (!mkdtemp(tmp)) {
        rc = fl_err_from_errno(errno);
        set_why(why, whylen, "%s: cannot create a temporary directory", root);
        goto out;
    }
    have_tmp = 1;
    chmod(tmp, 0755); /* mkdtemp makes it 0700; clients may run as others */
    dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        rc = fl_err_from_errno(errno);
        goto out;
    }
    for (size_t i = 0; i < nfiles; i++) {
        rc = put_file(dfd, &files[i], &m->files[i]);
        if (rc < 0) {
            set_why(why, whylen, "%s: %s", files[i].name, fl_strerror(rc));
            goto out;
        }
    }
    m->nfiles = nfiles;
    m->version = meta->version;
    m->round = meta->round;
    m->epsilon = meta->epsilon;
    m->delta = meta->delta;
    m->created_ms = meta->created_ms ? meta->created_ms : fl_time_wall_ms();
    m->config_json = (char *)meta->config_json; /* borrowed for encoding */
    rc = fl_artifact_manifest_encode(m, &buf);
    m->config_json = NULL;
    if (rc < 0) {
        set_why(why, whylen,
                "cannot encode the manifest (privacy values or "
                "config not valid?)");
        goto out;
    }
    if ((rc = fl_artifact_sign(k, buf.data, buf.len, sig)) < 0 ||
        (rc = put_bytes(dfd, FL_ARTIFACT_MANIFEST, buf.data, buf.len)) < 0 ||
        (rc = put_bytes(dfd, FL_ARTIFACT_SIGNATURE, sig, sizeof sig)) < 0) {
        set_why(why, whylen, "manifest: %s", fl_strerror(rc));
        goto out;
    }
    if (fsync(dfd) < 0) {
        rc = fl_err_from_errno(errno);
        goto out;
    }
    /* 2. Into place. A directory with this number can only be left over
     * from a crash before step 3 (it is newer than current). */
    if ((rc = join(final, root, name)) < 0)
        goto out;
    struct stat st;
    if (lstat(final, &st) == 0 && (rc = remove_flat_dir(final)) < 0) {
        set_why(why, whylen, "%s: cannot replace a leftover", final);
        goto out;
    }
    if (rename(tmp, final) < 0) {
        rc = fl_err_from_errno(errno);
        set_why(why, whylen, "%s: rename failed", final);
        goto out;
    }
    have_tmp = 0;
    if ((rc = fl_dir_sync(root)) < 0)
        goto out;
    /* 3. The pointer. */
    if ((rc = set_current(root, name)) < 0) {
        set_why(why, whylen, "%s/%s: %s", root, FL_ARTIFACT_CURRENT,
                fl_strerror(rc));
        goto out;
    }
    /* 4. Keep the newest `keep`. */
    prune(root, keep, meta->version);
out:
    if (dfd >= 0)
        close(dfd);
    if (have_tmp)
        remove_flat_dir(tmp);
    fl_buf_free(&buf);
    fl_artifact_manifest_free(m);
    return rc;
}
