/* common/util.c — time, hex, files and randomness. */
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- time ---- */
uint64_t fl_time_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double fl_time_mono_s(void)
{
    return (double)fl_time_mono_ns() * 1e-9;
}

uint64_t fl_time_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- hex ---- */
void fl_hex_encode(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fl_hex_decode(uint8_t *out, size_t n, const char *in, size_t inlen)
{
    if (inlen != 2 * n)
        return FL_EFORMAT;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(in[2 * i]), lo = hex_val(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return FL_EFORMAT;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* ---- files ---- */
int fl_path_join(char *out, size_t outlen, const char *a, const char *b)
{
    size_t al = strlen(a);
    int slash = al > 0 && a[al - 1] != '/';
    int n = snprintf(out, outlen, "%s%s%s", a, slash ? "/" : "", b);
    return (n < 0 || (size_t)n >= outlen) ? FL_ETOOBIG : 0;
}

int fl_dir_sync(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fl_err_from_errno(errno);
    int rc = fsync(fd) < 0 ? fl_err_from_errno(errno) : 0;
    close(fd);
    return rc;
}

int fl_mkdir_p(const char *path, unsigned mode)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return FL_ETOOBIG;
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char save = *p;
            *p = '\0';
            if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
                return fl_err_from_errno(errno);
            *p = save;
            if (save == '\0')
                break;
        }
    }
    return 0;
}

int fl_fd_write_all(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fl_err_from_errno(errno);
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int fl_file_write_atomic(const char *path, const void *data, size_t len,
                         unsigned mode)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    uint8_t rnd[6];
    char suffix[13];
    int fd = -1, rc;
    if (fl_random_bytes(rnd, sizeof rnd) < 0)
        return FL_EIO;
    fl_hex_encode(suffix, rnd, sizeof rnd);
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%s", path, suffix) >= (int)sizeof tmp)
        return FL_ETOOBIG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return fl_err_from_errno(errno);
    rc = fl_fd_write_all(fd, data, len);
    if (rc == 0 && fsync(fd) < 0)
        rc = fl_err_from_errno(errno);
    if (close(fd) < 0 && rc == 0)
        rc = fl_err_from_errno(errno);
    if (rc == 0 && rename(tmp, path) < 0)
        rc = fl_err_from_errno(errno);
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    return fl_dir_sync(dir);
}

int fl_file_read_fd(int fd, size_t max, uint8_t **out, size_t *len)
{
    int rc = 0;
    uint8_t *buf = NULL;
    struct stat st;
    *out = NULL;
    *len = 0;
    if (fstat(fd, &st) < 0)
        return fl_err_from_errno(errno);
    if (!S_ISREG(st.st_mode))
        return FL_EINVAL;
    if ((uint64_t)st.st_size > max)
        return FL_ETOOBIG;
    size_t size = (size_t)st.st_size, got = 0;
    buf = fl_malloc(size + 1);
    if (!buf)
        return FL_ENOMEM;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fl_err_from_errno(errno);
            fl_free(buf);
            return rc;
        }
        if (r == 0)
            break; /* the file shrank: take what is there */
        got += (size_t)r;
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

int fl_file_read_all(const char *path, size_t max, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fl_err_from_errno(errno);
    int rc = fl_file_read_fd(fd, max, out, len);
    close(fd);
    return rc;
}

/* ---- randomness ---- */
int fl_random_bytes(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return FL_EIO;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

uint64_t fl_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fl_rng_seed(fl_rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = fl_splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t fl_rng_next(fl_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double fl_rng_uniform(fl_rng_t *r)
{
    return (double)(fl_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t fl_rng_below(fl_rng_t *r, uint64_t bound)
{
    FL_ASSERT(bound > 0);
    /* Lemire's multiply-shift with rejection: unbiased. */
    unsigned __int128 m = (unsigned __int128)fl_rng_next(r) * bound;
    uint64_t lo = (uint64_t)m;
    if (lo < bound) {
        uint64_t t = -bound % bound;
        while (lo < t) {
            m = (unsigned __int128)fl_rng_next(r) * bound;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double fl_rng_normal(fl_rng_t *r)
{
    double u1 = fl_rng_uniform(r), u2 = fl_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
