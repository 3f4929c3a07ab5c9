/* artifact/crypto.c — SHA-256 of bytes and files (OpenSSL EVP), Ed25519
 * key pairs and their files, signatures (libsodium). */
#include "artifact/artifact.h"
#include "artifact/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 ---- */

int fl_artifact_sha256(const void *data, size_t len,
                       uint8_t out[FL_ARTIFACT_HASH_BYTES])
{
    unsigned int n = 0;
    if (!data && len)
        return FL_EINVAL;
    if (EVP_Digest(data ? data : "", len, out, &n, EVP_sha256(), NULL) != 1 ||
        n != FL_ARTIFACT_HASH_BYTES)
        return FL_ECRYPTO;
    return 0;
}

int fl_artifact__sha256_fd(int fd, uint8_t *out, uint64_t *size)
{
    return fl_artifact__sha256_copy_fd(fd, -1, out, size);
}

int fl_artifact__sha256_copy_fd(int fd, int dst, uint8_t *out, uint64_t *size)
{
    enum { CHUNK = 1 << 16 };
    int rc = 0;
    uint8_t *buf = fl_malloc(CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint64_t total = 0;
    unsigned int n = 0;
    if (!buf || !ctx) {
        rc = FL_ENOMEM;
        goto out;
    }
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = FL_ECRYPTO;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf, CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fl_err_from_errno(errno);
            goto out;
        }
        if (r == 0)
            break;
        if (EVP_DigestUpdate(ctx, buf, (size_t)r) != 1) {
            rc = FL_ECRYPTO;
            goto out;
        }
        if (dst >= 0 && (rc = fl_fd_write_all(dst, buf, (size_t)r)) < 0)
            goto out;
        total += (uint64_t)r;
    }
    if (EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != FL_ARTIFACT_HASH_BYTES) {
        rc = FL_ECRYPTO;
        goto out;
    }
    if (size)
        *size = total;
out:
    EVP_MD_CTX_free(ctx);
    fl_free(buf);
    return rc;
}

int fl_artifact_sha256_file(const char *path,
                            uint8_t out[FL_ARTIFACT_HASH_BYTES], uint64_t *size)
{
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return fl_err_from_errno(errno);
    struct stat st;
    if (fstat(fd, &st) < 0)
        rc = fl_err_from_errno(errno);
    else if (!S_ISREG(st.st_mode))
        rc = FL_EINVAL;
    else
        rc = fl_artifact__sha256_fd(fd, out, size);
    close(fd);
    return rc;
}

/* ---- keys ---- */

struct fl_artifact_key {
    uint8_t sk[crypto_sign_SECRETKEYBYTES]; /* seed || public key */
    uint8_t pk[crypto_sign_PUBLICKEYBYTES];
};

static const char secret_header[] = "flotilla ed25519 secret key v1\n";
static const char public_header[] = "flotilla ed25519 public key v1\n";

static fl_artifact_key_t *key_alloc(void)
{
    if (sodium_init() < 0)
        return NULL;
    /* Guarded pages; made read-only once the key is in (a stray write
     * faults), wiped by sodium_free. */
    fl_artifact_key_t *k = sodium_malloc(sizeof *k);
    if (k)
        memset(k, 0, sizeof *k);
    return k;
}

void fl_artifact_key_free(fl_artifact_key_t *k)
{
    if (k)
        sodium_free(k); /* wipes */
}

int fl_artifact_key_from_seed(const uint8_t seed[FL_ARTIFACT_SEED_BYTES],
                              fl_artifact_key_t **out)
{
    *out = NULL;
    fl_artifact_key_t *k = key_alloc();
    if (!k)
        return FL_ENOMEM;
    if (crypto_sign_seed_keypair(k->pk, k->sk, seed) != 0) {
        fl_artifact_key_free(k);
        return FL_ECRYPTO;
    }
    sodium_mprotect_readonly(k);
    *out = k;
    return 0;
}

int fl_artifact_key_generate(fl_artifact_key_t **out)
{
    *out = NULL;
    fl_artifact_key_t *k = key_alloc();
    if (!k)
        return FL_ENOMEM;
    if (crypto_sign_keypair(k->pk, k->sk) != 0) {
        fl_artifact_key_free(k);
        return FL_ECRYPTO;
    }
    sodium_mprotect_readonly(k);
    *out = k;
    return 0;
}

void fl_artifact_key_public(const fl_artifact_key_t *k,
                            uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES])
{
    memcpy(pk, k->pk, FL_ARTIFACT_PUBLIC_BYTES);
}

void fl_artifact_key_secret(const fl_artifact_key_t *k,
                            uint8_t sk[FL_ARTIFACT_SECRET_BYTES])
{
    _Static_assert(FL_ARTIFACT_SECRET_BYTES == crypto_sign_SECRETKEYBYTES,
                   "libsodium's Ed25519 secret key layout");
    memcpy(sk, k->sk, FL_ARTIFACT_SECRET_BYTES);
}

int fl_artifact_sign(const fl_artifact_key_t *k, const void *msg, size_t len,
                     uint8_t sig[FL_ARTIFACT_SIG_BYTES])
{
    if (!k || (!msg && len))
        return FL_EINVAL;
    if (crypto_sign_detached(sig, NULL, msg ? msg : (const void *)"", len,
                             k->sk) != 0)
        return FL_ECRYPTO;
    return 0;
}

int fl_artifact_sig_verify(const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES],
                           const void *msg, size_t len,
                           const uint8_t sig[FL_ARTIFACT_SIG_BYTES])
{
    if (sodium_init() < 0)
        return FL_ECRYPTO;
    if (!msg && len)
        return FL_EINVAL;
    if (crypto_sign_verify_detached(sig, msg ? msg : (const void *)"", len,
                                    pk) != 0)
        return FL_ESIGNATURE;
    return 0;
}

/* ---- key files ---- */

/* header line, then 2n hex digits and a newline. text must hold
 * strlen(header) + 2n + 2 bytes. */
static size_t key_text(char *text, const char *header, const uint8_t *bytes,
                       size_t n)
{
    size_t h = strlen(header);
    memcpy(text, header, h);
    fl_hex_encode(text + h, bytes, n);
    text[h + 2 * n] = '\n';
    text[h + 2 * n + 1] = '\0';
    return h + 2 * n + 1;
}

/* Parses header + hex (+ optional newline) of exactly n bytes. */
static int key_parse(const char *text, size_t len, const char *header,
                     uint8_t *bytes, size_t n)
{
    size_t h = strlen(header);
    if (len < h || memcmp(text, header, h) != 0)
        return FL_EFORMAT;
    size_t rest = len - h;
    if (rest == 2 * n + 1 && text[h + 2 * n] == '\n')
        rest--;
    if (rest != 2 * n)
        return FL_EFORMAT;
    return fl_hex_decode(bytes, n, text + h, 2 * n);
}

static int path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 || errno != ENOENT;
}

int fl_artifact_pub_save(const char *path,
                         const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES])
{
    char text[sizeof public_header + 2 * FL_ARTIFACT_PUBLIC_BYTES + 2];
    size_t n = key_text(text, public_header, pk, FL_ARTIFACT_PUBLIC_BYTES);
    return fl_file_write_atomic(path, text, n, 0644);
}

int fl_artifact_pub_load(const char *path, uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES])
{
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = fl_file_read_all(path, 256, &text, &len);
    if (rc == FL_ETOOBIG)
        rc = FL_EFORMAT;
    if (rc < 0)
        return rc;
    rc = key_parse((const char *)text, len, public_header, pk,
                   FL_ARTIFACT_PUBLIC_BYTES);
    fl_free(text);
    return rc;
}

int fl_artifact_key_save(const fl_artifact_key_t *k, const char *prefix)
{
    char keypath[4096], pubpath[4096];
    char text[sizeof secret_header + 2 * FL_ARTIFACT_SEED_BYTES + 2];
    int rc;
    if (!k || !prefix)
        return FL_EINVAL;
    if (snprintf(keypath, sizeof keypath, "%s.key", prefix) >=
            (int)sizeof keypath ||
        snprintf(pubpath, sizeof pubpath, "%s.pub", prefix) >=
            (int)sizeof pubpath)
        return FL_ETOOBIG;
    if (path_exists(keypath) || path_exists(pubpath))
        return FL_EEXIST;
    /* The seed is the first half of libsodium's secret key. */
    size_t n = key_text(text, secret_header, k->sk, FL_ARTIFACT_SEED_BYTES);
    rc = fl_file_write_atomic(keypath, text, n, 0600);
    sodium_memzero(text, sizeof text);
    if (rc < 0)
        return rc;
    /* The umask may not take bits away from 0600, but make sure. */
    if (chmod(keypath, 0600) < 0)
        return fl_err_from_errno(errno);
    return fl_artifact_pub_save(pubpath, k->pk);
}

int fl_artifact_key_load(const char *path, fl_artifact_key_t **out)
{
    enum { MAX = 256 };
    char text[MAX + 1];
    uint8_t seed[FL_ARTIFACT_SEED_BYTES];
    size_t got = 0;
    int rc = 0;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return fl_err_from_errno(errno);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = fl_err_from_errno(errno);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = FL_EINVAL;
        goto out;
    }
    if (st.st_mode & 077) { /* like ssh: a readable secret is not secret */
        rc = FL_EDENIED;
        goto out;
    }
    while (got < MAX) {
        ssize_t r = read(fd, text + got, MAX - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fl_err_from_errno(errno);
            goto out;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    if (got == MAX) {
        rc = FL_EFORMAT;
        goto out;
    }
    rc = key_parse(text, got, secret_header, seed, sizeof seed);
    if (rc == 0)
        rc = fl_artifact_key_from_seed(seed, out);
out:
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed, sizeof seed);
    close(fd);
    return rc;
}
