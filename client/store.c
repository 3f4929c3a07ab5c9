/* client/store.c — verified model versions in <state>/models, switched with
 * atomic renames so that a failed update can always roll back. */
#include "client/client.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int models_dir(const char *state, char *out, size_t len)
{
    return fl_path_join(out, len, state, "models");
}

static int version_dir(const char *state, uint64_t v, char *out, size_t len)
{
    char m[FL_CLIENT_STORE_PATH_MAX], name[32];
    int rc = models_dir(state, m, sizeof m);
    if (rc < 0)
        return rc;
    snprintf(name, sizeof name, "%" PRIu64, v);
    return fl_path_join(out, len, m, name);
}

/* Reads the version named by models/<which>. */
static int read_pointer(const char *state, const char *which, uint64_t *v)
{
    char m[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX];
    uint8_t *data = NULL;
    size_t len;
    int rc;
    if ((rc = models_dir(state, m, sizeof m)) < 0 ||
        (rc = fl_path_join(p, sizeof p, m, which)) < 0)
        return rc;
    if ((rc = fl_file_read_all(p, 64, &data, &len)) < 0)
        return rc;
    char *end;
    errno = 0;
    unsigned long long x = strtoull((char *)data, &end, 10);
    rc = (errno || end == (char *)data || (*end != '\n' && *end != '\0'))
             ? FL_EFORMAT
             : 0;
    fl_free(data);
    if (rc == 0)
        *v = x;
    return rc;
}

static int write_pointer(const char *state, const char *which, uint64_t v)
{
    char m[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX], text[32];
    int rc;
    if ((rc = models_dir(state, m, sizeof m)) < 0 ||
        (rc = fl_path_join(p, sizeof p, m, which)) < 0)
        return rc;
    int n = snprintf(text, sizeof text, "%" PRIu64 "\n", v);
    return fl_file_write_atomic(p, text, (size_t)n, 0600);
}

static int remove_pointer(const char *state, const char *which)
{
    char m[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX];
    int rc;
    if ((rc = models_dir(state, m, sizeof m)) < 0 ||
        (rc = fl_path_join(p, sizeof p, m, which)) < 0)
        return rc;
    if (unlink(p) < 0 && errno != ENOENT)
        return fl_err_from_errno(errno);
    return fl_dir_sync(m);
}

/* Removes a directory of plain files (model versions have no subdirs). */
static int remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : fl_err_from_errno(errno);
    struct dirent *e;
    char p[FL_CLIENT_STORE_PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (fl_path_join(p, sizeof p, dir, e->d_name) == 0)
            unlink(p);
    }
    closedir(d);
    return rmdir(dir) < 0 ? fl_err_from_errno(errno) : 0;
}

static int lookup(const char *state, const char *which, uint64_t *version,
                  char *dir, size_t dirlen)
{
    int rc = read_pointer(state, which, version);
    if (rc < 0)
        return rc;
    if ((rc = version_dir(state, *version, dir, dirlen)) < 0)
        return rc;
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : FL_ENOENT;
}

int fl_client_store_current(const char *state, uint64_t *version, char *dir,
                            size_t dirlen)
{
    return lookup(state, "current", version, dir, dirlen);
}

int fl_client_store_previous(const char *state, uint64_t *version, char *dir,
                             size_t dirlen)
{
    return lookup(state, "previous", version, dir, dirlen);
}

int fl_client_store_staging(const char *state, uint64_t version, char *dir,
                            size_t dirlen)
{
    char m[FL_CLIENT_STORE_PATH_MAX], name[48];
    int rc;
    if ((rc = models_dir(state, m, sizeof m)) < 0 ||
        (rc = fl_mkdir_p(m, 0700)) < 0)
        return rc;
    snprintf(name, sizeof name, ".staging-%" PRIu64, version);
    if ((rc = fl_path_join(dir, dirlen, m, name)) < 0)
        return rc;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return fl_err_from_errno(errno);
    return 0;
}

/* Removes every version directory and stale staging directory except
 * keep1 and keep2. */
static void prune(const char *state, uint64_t keep1, uint64_t keep2, int have2)
{
    char m[FL_CLIENT_STORE_PATH_MAX], p[FL_CLIENT_STORE_PATH_MAX];
    if (models_dir(state, m, sizeof m) < 0)
        return;
    DIR *d = opendir(m);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        int staging = strncmp(n, ".staging-", 9) == 0;
        const char *num = staging ? n + 9 : n;
        char *end;
        if (!*num || *num < '0' || *num > '9')
            continue;
        unsigned long long v = strtoull(num, &end, 10);
        if (*end)
            continue;
        if (!staging && (v == keep1 || (have2 && v == keep2)))
            continue;
        if (staging && v > keep1) /* a newer download in progress */
            continue;
        if (fl_path_join(p, sizeof p, m, n) == 0)
            remove_tree(p);
    }
    closedir(d);
    fl_dir_sync(m);
}

int fl_client_store_commit(const char *state, uint64_t version)
{
    char staging[FL_CLIENT_STORE_PATH_MAX], target[FL_CLIENT_STORE_PATH_MAX];
    char m[FL_CLIENT_STORE_PATH_MAX];
    uint64_t cur = 0;
    int rc, have_cur;
    if ((rc = fl_client_store_staging(state, version, staging,
                                      sizeof staging)) < 0 ||
        (rc = version_dir(state, version, target, sizeof target)) < 0 ||
        (rc = models_dir(state, m, sizeof m)) < 0)
        return rc;
    have_cur = read_pointer(state, "current", &cur) == 0;
    if (have_cur && cur == version)
        return FL_EEXIST;
    remove_tree(target); /* a leftover of a crash between rename and pointer */
    if (rename(staging, target) < 0)
        return fl_err_from_errno(errno);
    if ((rc = fl_dir_sync(m)) < 0)
        return rc;
    /* previous first: a crash between the two writes leaves the old
     * current in place, still valid. */
    if (have_cur && (rc = write_pointer(state, "previous", cur)) < 0)
        return rc;
    if ((rc = write_pointer(state, "current", version)) < 0)
        return rc;
    prune(state, version, cur, have_cur);
    return 0;
}

int fl_client_store_rollback(const char *state)
{
    uint64_t cur = 0, prev;
    char dir[FL_CLIENT_STORE_PATH_MAX];
    int rc = fl_client_store_previous(state, &prev, dir, sizeof dir);
    if (rc < 0)
        return rc;
    int have_cur = read_pointer(state, "current", &cur) == 0;
    if ((rc = write_pointer(state, "current", prev)) < 0)
        return rc;
    if ((rc = remove_pointer(state, "previous")) < 0)
        return rc;
    if (have_cur && cur != prev &&
        version_dir(state, cur, dir, sizeof dir) == 0)
        remove_tree(dir);
    return 0;
}
