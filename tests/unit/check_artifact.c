/* tests/unit/check_artifact.c — hashes and signatures against published
 * known answers, strict manifests, tamper detection, atomic publishing
 * with keep-last-N, and an independent verifier (python3-nacl). */
#include "artifact/artifact.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#include <sodium.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define P(buf, ...) snprintf((buf), sizeof(buf), __VA_ARGS__)

static void hex_to(uint8_t *out, size_t n, const char *hex)
{
    ck_assert_int_eq(fl_hex_decode(out, n, hex, strlen(hex)), 0);
}

static void write_file(const char *path, const void *data, size_t len,
                       unsigned mode)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    ck_assert_int_eq(chmod(path, mode), 0);
}

/* Flips one bit of the byte at offset off. */
static void flip(const char *path, long off)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, off, SEEK_SET), 0);
    int c = fgetc(f);
    ck_assert_int_ne(c, EOF);
    ck_assert_int_eq(fseek(f, off, SEEK_SET), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

/* ---- known answers ---- */

/* FIPS 180-2, Appendix B.1 and B.3: SHA-256("abc") and of one million 'a'
 * (streamed through the file path, across many read chunks). */
START_TEST(test_sha256_known_answers)
{
    uint8_t h[32], ref[32];
    ck_assert_int_eq(fl_artifact_sha256("abc", 3, h), 0);
    hex_to(ref, 32,
           "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ck_assert_mem_eq(h, ref, 32);
    ck_assert_int_eq(fl_artifact_sha256(NULL, 0, h), 0);
    hex_to(ref, 32,
           "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ck_assert_mem_eq(h, ref, 32);

    char dir[PATH_MAX], path[PATH_MAX + 16];
    fl_test_tmpdir(dir, sizeof dir);
    P(path, "%s/a", dir);
    char *a = fl_malloc(1000000);
    memset(a, 'a', 1000000);
    write_file(path, a, 1000000, 0644);
    uint64_t size = 0;
    ck_assert_int_eq(fl_artifact_sha256_file(path, h, &size), 0);
    ck_assert_uint_eq(size, 1000000);
    hex_to(ref, 32,
           "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    ck_assert_mem_eq(h, ref, 32);
    fl_free(a);
    ck_assert_int_eq(fl_artifact_sha256_file(dir, h, NULL), FL_EINVAL);
    P(path, "%s/none", dir);
    ck_assert_int_eq(fl_artifact_sha256_file(path, h, NULL), FL_ENOENT);
    fl_test_rmtree(dir);
}
END_TEST

/* RFC 8032 §7.1, TEST 1, 2 and 3, through our secret key file format. */
START_TEST(test_ed25519_rfc8032_through_key_files)
{
    static const struct {
        const char *sk, *pk, *msg, *sig;
    } v[] = {
        {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
         "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
         "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
         "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
        {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
         "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
         "72",
         "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
         "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
        {"c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
         "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
         "af82",
         "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
         "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
    };
    char dir[PATH_MAX], path[PATH_MAX + 16], text[256];
    fl_test_tmpdir(dir, sizeof dir);
    for (size_t i = 0; i < FL_ARRAY_LEN(v); i++) {
        uint8_t pk[32], ref_pk[32], sig[64], ref_sig[64], msg[8];
        size_t mlen = strlen(v[i].msg) / 2;
        hex_to(ref_pk, 32, v[i].pk);
        hex_to(ref_sig, 64, v[i].sig);
        if (mlen)
            hex_to(msg, mlen, v[i].msg);
        P(path, "%s/k%zu.key", dir, i);
        int n = P(text, "flotilla ed25519 secret key v1\n%s\n", v[i].sk);
        write_file(path, text, (size_t)n, 0600);
        fl_artifact_key_t *k = NULL;
        ck_assert_int_eq(fl_artifact_key_load(path, &k), 0);
        fl_artifact_key_public(k, pk);
        ck_assert_mem_eq(pk, ref_pk, 32);
        ck_assert_int_eq(fl_artifact_sign(k, msg, mlen, sig), 0);
        ck_assert_mem_eq(sig, ref_sig, 64);
        ck_assert_int_eq(fl_artifact_sig_verify(pk, msg, mlen, sig), 0);
        sig[0] ^= 1;
        ck_assert_int_eq(fl_artifact_sig_verify(pk, msg, mlen, sig),
                         FL_ESIGNATURE);
        /* The public key file round-trips. */
        P(path, "%s/k%zu.pub", dir, i);
        ck_assert_int_eq(fl_artifact_pub_save(path, pk), 0);
        memset(pk, 0, 32);
        ck_assert_int_eq(fl_artifact_pub_load(path, pk), 0);
        ck_assert_mem_eq(pk, ref_pk, 32);
        fl_artifact_key_free(k);
    }
    /* A key file others can read is refused; so is a malformed one. */
    P(path, "%s/open.key", dir);
    P(text, "flotilla ed25519 secret key v1\n%s\n", v[0].sk);
    write_file(path, text, strlen(text), 0640);
    fl_artifact_key_t *k = NULL;
    ck_assert_int_eq(fl_artifact_key_load(path, &k), FL_EDENIED);
    ck_assert_ptr_null(k);
    static const char *const bad[] = {
        "flotilla ed25519 secret key v1\n9d61",
        "flotilla ed25519 public key v1\n"
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n",
        "flotilla ed25519 secret key v1\n"
        "zz61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n",
        "flotilla ed25519 secret key v1\n"
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6000\n",
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++) {
        P(path, "%s/bad%zu.key", dir, i);
        write_file(path, bad[i], strlen(bad[i]), 0600);
        ck_assert_int_eq(fl_artifact_key_load(path, &k), FL_EFORMAT);
    }
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_keygen_files)
{
    char dir[PATH_MAX], prefix[PATH_MAX + 16], path[PATH_MAX + 32];
    fl_test_tmpdir(dir, sizeof dir);
    P(prefix, "%s/server", dir);
    fl_artifact_key_t *k = NULL, *k2 = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&k), 0);
    ck_assert_int_eq(fl_artifact_key_save(k, prefix), 0);
    struct stat st;
    P(path, "%s.key", prefix);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(fl_artifact_key_load(path, &k2), 0);
    uint8_t pk1[32], pk2[32], pkf[32], sig[64];
    fl_artifact_key_public(k, pk1);
    fl_artifact_key_public(k2, pk2);
    ck_assert_mem_eq(pk1, pk2, 32);
    P(path, "%s.pub", prefix);
    ck_assert_int_eq(fl_artifact_pub_load(path, pkf), 0);
    ck_assert_mem_eq(pk1, pkf, 32);
    ck_assert_int_eq(fl_artifact_sign(k2, "m", 1, sig), 0);
    ck_assert_int_eq(fl_artifact_sig_verify(pk1, "m", 1, sig), 0);
    /* Never overwritten. */
    ck_assert_int_eq(fl_artifact_key_save(k, prefix), FL_EEXIST);
    /* Two generated keys differ. */
    fl_artifact_key_t *k3 = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&k3), 0);
    fl_artifact_key_public(k3, pk2);
    ck_assert(memcmp(pk1, pk2, 32) != 0);
    fl_artifact_key_free(k);
    fl_artifact_key_free(k2);
    fl_artifact_key_free(k3);
    fl_artifact_key_free(NULL);
    fl_test_rmtree(dir);
}
END_TEST

/* ---- publishing and verifying ---- */

typedef struct {
    char dir[PATH_MAX];
    char root[PATH_MAX + 16];
    char src[PATH_MAX + 16];
    fl_artifact_key_t *key;
    uint8_t pk[32];
    uint8_t model[5000];
} fixture_t;

static void fixture_init(fixture_t *f)
{
    fl_test_tmpdir(f->dir, sizeof f->dir);
    P(f->root, "%s/models", f->dir);
    P(f->src, "%s/q8.src", f->dir);
    uint8_t seed[32];
    memset(seed, 7, sizeof seed);
    ck_assert_int_eq(fl_artifact_key_from_seed(seed, &f->key), 0);
    fl_artifact_key_public(f->key, f->pk);
    fl_test_fill(f->model, sizeof f->model, 1);
    uint8_t q8[777];
    fl_test_fill(q8, sizeof q8, 2);
    write_file(f->src, q8, sizeof q8, 0644);
}

static void fixture_free(fixture_t *f)
{
    fl_artifact_key_free(f->key);
    fl_test_rmtree(f->dir);
}

static int publish(fixture_t *f, uint64_t version, unsigned keep)
{
    fl_artifact_input_t in[2] = {
        {"model.bin", NULL, f->model, sizeof f->model},
        {"model.q8", f->src, NULL, 0},
    };
    fl_artifact_meta_t meta = {
        .version = version,
        .round = 10 * version,
        .epsilon = 0.5 * (double)version,
        .delta = 1e-5,
        .config_json = "{\"arch\":{\"layers\":4,\"dim\":128,\"tok\":\"byte\","
                       "\"neg\":-1},\"codec\":\"q8\"}",
        .created_ms = 1700000000000ull + version,
    };
    char why[256] = "";
    int rc = fl_artifact_publish(f->root, f->key, &meta, in, 2, keep, why,
                                 sizeof why);
    ck_assert_msg(rc == 0 || why[0], "error without a reason");
    return rc;
}

static void version_dir(fixture_t *f, uint64_t v, char *out, size_t outlen)
{
    char name[32];
    ck_assert_int_eq(fl_artifact_version_name(v, name, sizeof name), 0);
    ck_assert_int_eq(fl_path_join(out, outlen, f->root, name), 0);
}

START_TEST(test_publish_verify_round_trip)
{
    fixture_t f;
    fixture_init(&f);
    ck_assert_int_eq(fl_artifact_current(f.root, NULL, 0, NULL), FL_ENOENT);
    ck_assert_int_eq(publish(&f, 1, 5), 0);
    char cur[PATH_MAX], v1[PATH_MAX], why[256];
    uint64_t version = 0;
    ck_assert_int_eq(fl_artifact_current(f.root, cur, sizeof cur, &version), 0);
    ck_assert_uint_eq(version, 1);
    version_dir(&f, 1, v1, sizeof v1);
    ck_assert_str_eq(cur, v1);
    fl_artifact_manifest_t *m = NULL;
    ck_assert_int_eq(fl_artifact_verify_dir(cur, f.pk, &m, why, sizeof why), 0);
    ck_assert_uint_eq(m->version, 1);
    ck_assert_uint_eq(m->round, 10);
    ck_assert(m->epsilon == 0.5 && m->delta == 1e-5);
    ck_assert_uint_eq(m->created_ms, 1700000000001ull);
    ck_assert_int_eq(m->has_parent, 0);
    ck_assert_str_eq(m->config_json,
                     "{\"arch\":{\"layers\":4,\"dim\":128,\"tok\":\"byte\","
                     "\"neg\":-1},\"codec\":\"q8\"}");
    /* Values of the config, by section and key. */
    uint64_t u = 0;
    char str[8];
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "arch", "dim", &u), 0);
    ck_assert_uint_eq(u, 128);
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "arch", "nope", &u),
                     FL_ENOENT);
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "none", "dim", &u),
                     FL_ENOENT);
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "arch", "tok", &u),
                     FL_EFORMAT);
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "arch", "neg", &u),
                     FL_EFORMAT);
    ck_assert_int_eq(fl_artifact_manifest_config_u64(m, "codec", "x", &u),
                     FL_ENOENT); /* codec is a string, not a section */
    ck_assert_int_eq(
        fl_artifact_manifest_config_str(m, "arch", "tok", str, sizeof str), 0);
    ck_assert_str_eq(str, "byte");
    ck_assert_int_eq(fl_artifact_manifest_config_str(m, "arch", "tok", str, 4),
                     FL_EFORMAT); /* does not fit */
    ck_assert_int_eq(
        fl_artifact_manifest_config_str(m, "arch", "dim", str, sizeof str),
        FL_EFORMAT);
    ck_assert_uint_eq(m->nfiles, 2);
    const fl_artifact_file_t *mb = fl_artifact_manifest_file(m, "model.bin");
    ck_assert_ptr_nonnull(mb);
    uint8_t h[32];
    fl_artifact_sha256(f.model, sizeof f.model, h);
    ck_assert_mem_eq(mb->sha256, h, 32);
    ck_assert_uint_eq(mb->size, sizeof f.model);
    ck_assert_uint_eq(fl_artifact_manifest_file(m, "model.q8")->size, 777);
    ck_assert_ptr_null(fl_artifact_manifest_file(m, "other"));
    fl_artifact_manifest_free(m);

    /* Version 2 chains to version 1's manifest. */
    ck_assert_int_eq(publish(&f, 2, 5), 0);
    char v2[PATH_MAX], mpath[PATH_MAX + 32];
    version_dir(&f, 2, v2, sizeof v2);
    ck_assert_int_eq(fl_artifact_verify_dir(v2, f.pk, &m, why, sizeof why), 0);
    ck_assert_int_eq(m->has_parent, 1);
    P(mpath, "%s/manifest.json", v1);
    ck_assert_int_eq(fl_artifact_sha256_file(mpath, h, NULL), 0);
    ck_assert_mem_eq(m->parent_sha256, h, 32);
    ck_assert(m->epsilon == 1.0);
    fl_artifact_manifest_free(m);
    /* Files are world-readable, the directory too. */
    struct stat st;
    ck_assert_int_eq(stat(v2, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0755);
    fixture_free(&f);
}
END_TEST

START_TEST(test_tampering_is_refused)
{
    fixture_t f;
    fixture_init(&f);
    ck_assert_int_eq(publish(&f, 1, 5), 0);
    char v[PATH_MAX], p[PATH_MAX + 32], why[256];
    version_dir(&f, 1, v, sizeof v);

    /* One flipped bit in model.bin. */
    P(p, "%s/model.bin", v);
    flip(p, 1234);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_EHASH);
    ck_assert_str_eq(why, "model.bin: SHA-256 mismatch");
    flip(p, 1234);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why), 0);
    /* Truncated, or gone. */
    ck_assert_int_eq(truncate(p, 4999), 0);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_EHASH);
    ck_assert(strstr(why, "4999 bytes") != NULL);
    ck_assert_int_eq(unlink(p), 0);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_EHASH);
    ck_assert_str_eq(why, "model.bin: missing (or a symlink)");

    /* Another signer's key. */
    ck_assert_int_eq(publish(&f, 2, 5), 0);
    version_dir(&f, 2, v, sizeof v);
    uint8_t seed[32], other_pk[32];
    memset(seed, 8, sizeof seed);
    fl_artifact_key_t *other = NULL;
    ck_assert_int_eq(fl_artifact_key_from_seed(seed, &other), 0);
    fl_artifact_key_public(other, other_pk);
    ck_assert_int_eq(fl_artifact_verify_dir(v, other_pk, NULL, why, sizeof why),
                     FL_ESIGNATURE);
    /* Re-signed by that other key: refused against ours. */
    char mpath[PATH_MAX + 32], spath[PATH_MAX + 32];
    P(mpath, "%s/manifest.json", v);
    P(spath, "%s/manifest.sig", v);
    uint8_t *mb = NULL, sig[64];
    size_t ml = 0;
    ck_assert_int_eq(fl_file_read_all(mpath, 1 << 20, &mb, &ml), 0);
    ck_assert_int_eq(fl_artifact_sign(other, mb, ml, sig), 0);
    write_file(spath, sig, 64, 0644);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_ESIGNATURE);
    ck_assert_int_eq(fl_artifact_verify_dir(v, other_pk, NULL, why, sizeof why),
                     0);
    /* The manifest changed by one byte (its version digit). */
    ck_assert_int_eq(fl_artifact_sign(f.key, mb, ml, sig), 0);
    write_file(spath, sig, 64, 0644);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why), 0);
    char *at = strstr((char *)mb, "\"version\": 2");
    ck_assert_ptr_nonnull(at);
    at[11] = '9';
    write_file(mpath, mb, ml, 0644);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_ESIGNATURE);
    /* Correctly signed but not our schema (an extra field): refused too. */
    const char *extra = strstr((char *)mb, "\"round\"");
    ck_assert_ptr_nonnull(extra);
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    fl_buf_append(&b, mb, (size_t)(extra - (char *)mb));
    fl_buf_printf(&b, "\"extra\": 1,\n  ");
    fl_buf_append(&b, extra, ml - (size_t)(extra - (char *)mb));
    write_file(mpath, b.data, b.len, 0644);
    ck_assert_int_eq(fl_artifact_sign(f.key, b.data, b.len, sig), 0);
    write_file(spath, sig, 64, 0644);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_EFORMAT);
    ck_assert_str_eq(why, "manifest: unknown field 'extra'");
    /* No signature at all, or a short one. */
    write_file(spath, sig, 63, 0644);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_ESIGNATURE);
    ck_assert_int_eq(unlink(spath), 0);
    ck_assert_int_eq(fl_artifact_verify_dir(v, f.pk, NULL, why, sizeof why),
                     FL_ESIGNATURE);
    ck_assert(strstr(why, "unsigned") != NULL);
    fl_buf_free(&b);
    fl_free(mb);
    fl_artifact_key_free(other);
    fixture_free(&f);
}
END_TEST

static int count_versions(const char *root)
{
    char cmd[PATH_MAX + 64];
    P(cmd, "ls -a '%s'", root);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, p))
        n += line[0] == 'v';
    pclose(p);
    return n;
}

START_TEST(test_keep_last_n_and_crash_leftovers)
{
    fixture_t f;
    fixture_init(&f);
    for (uint64_t v = 1; v <= 6; v++) {
        ck_assert_int_eq(publish(&f, v, 3), 0);
        ck_assert_int_eq(count_versions(f.root), (int)FL_MIN(v, 3));
    }
    char d[PATH_MAX], why[256];
    struct stat st;
    for (uint64_t v = 1; v <= 6; v++) {
        version_dir(&f, v, d, sizeof d);
        ck_assert_int_eq(stat(d, &st) == 0, v >= 4);
    }
    uint64_t cur;
    ck_assert_int_eq(fl_artifact_current(f.root, d, sizeof d, &cur), 0);
    ck_assert_uint_eq(cur, 6);
    ck_assert_int_eq(fl_artifact_verify_dir(d, f.pk, NULL, why, sizeof why), 0);
    /* Versions only go forward. */
    ck_assert_int_eq(publish(&f, 6, 3), FL_EEXIST);
    ck_assert_int_eq(publish(&f, 2, 3), FL_EEXIST);
    /* A crash left a temporary directory and a complete v7 that never became
     * current: the next publish of 7 replaces it and sweeps the rest. */
    char tmp[PATH_MAX + 64], junk[PATH_MAX + 96];
    P(tmp, "%s/.tmp-v000000000007-abcdef", f.root);
    ck_assert_int_eq(mkdir(tmp, 0700), 0);
    P(junk, "%s/model.bin", tmp);
    write_file(junk, "x", 1, 0644);
    version_dir(&f, 7, d, sizeof d);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    P(junk, "%s/model.bin", d);
    write_file(junk, "partial", 7, 0644);
    ck_assert_int_eq(publish(&f, 7, 3), 0);
    ck_assert_int_ne(stat(tmp, &st), 0);
    ck_assert_int_eq(fl_artifact_verify_dir(d, f.pk, NULL, why, sizeof why), 0);
    ck_assert_int_eq(count_versions(f.root), 3);
    /* keep = 1 leaves only the current one. */
    ck_assert_int_eq(publish(&f, 8, 1), 0);
    ck_assert_int_eq(count_versions(f.root), 1);
    /* An orphan above current (renamed, never linked) does not push the
     * previous version out: it is removed instead. */
    version_dir(&f, 12, d, sizeof d);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    ck_assert_int_eq(publish(&f, 9, 2), 0);
    ck_assert_int_ne(stat(d, &st), 0);
    version_dir(&f, 8, d, sizeof d);
    ck_assert_int_eq(stat(d, &st), 0);
    ck_assert_int_eq(count_versions(f.root), 2);
    /* Bad arguments. */
    fl_artifact_input_t in[2] = {{"model.bin", NULL, "a", 1},
                                 {"model.bin", NULL, "b", 1}};
    fl_artifact_meta_t meta = {.version = 10, .delta = 1e-5};
    ck_assert_int_eq(
        fl_artifact_publish(f.root, f.key, &meta, in, 2, 3, why, sizeof why),
        FL_EINVAL);
    in[1].name = "../escape";
    ck_assert_int_eq(
        fl_artifact_publish(f.root, f.key, &meta, in, 2, 3, why, sizeof why),
        FL_EINVAL);
    in[1].name = "manifest.json";
    ck_assert_int_eq(
        fl_artifact_publish(f.root, f.key, &meta, in, 2, 3, why, sizeof why),
        FL_EINVAL);
    ck_assert_int_eq(
        fl_artifact_publish(f.root, f.key, &meta, in, 1, 0, why, sizeof why),
        FL_EINVAL);
    /* Nothing published by the failures. */
    ck_assert_int_eq(fl_artifact_current(f.root, NULL, 0, &cur), 0);
    ck_assert_uint_eq(cur, 9);
    fixture_free(&f);
}
END_TEST

/* ---- the strict parser ---- */

#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define GOOD_FILES                                                             \
    "\"files\": [{\"name\": \"model.bin\", \"size\": 3, \"sha256\": \"" H64    \
    "\"}]"
#define HEAD                                                                   \
    "\"format\": \"flotilla-model-manifest/1\", \"version\": 2, \"round\": "   \
    "5, "
#define TAIL_NO_FILES                                                          \
    "\"parent_sha256\": null, \"created_ms\": 1, \"privacy\": {\"epsilon\": "  \
    "1.5, \"delta\": 1e-5}, \"config\": {}, "

START_TEST(test_manifest_strict_schema)
{
    const char *good = "{" HEAD TAIL_NO_FILES GOOD_FILES "}";
    fl_artifact_manifest_t *m = NULL;
    char why[256];
    ck_assert_int_eq(
        fl_artifact_manifest_parse(good, strlen(good), &m, why, sizeof why), 0);
    ck_assert_uint_eq(m->version, 2);
    ck_assert(m->epsilon == 1.5);
    /* The encoding is canonical: encode(parse(encode(m))) is stable. */
    fl_buf_t a, b;
    fl_buf_init(&a, 1 << 20);
    fl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(fl_artifact_manifest_encode(m, &a), 0);
    fl_artifact_manifest_t *m2 = NULL;
    ck_assert_int_eq(
        fl_artifact_manifest_parse(a.data, a.len, &m2, why, sizeof why), 0);
    ck_assert_int_eq(fl_artifact_manifest_encode(m2, &b), 0);
    ck_assert_uint_eq(a.len, b.len);
    ck_assert_mem_eq(a.data, b.data, a.len);
    fl_artifact_manifest_free(m2);
    fl_artifact_manifest_free(m);

    static const struct {
        const char *json, *why;
    } bad[] = {
        {"[]", "not a JSON object"},
        {"{" HEAD TAIL_NO_FILES GOOD_FILES ", \"x\": 1}", "unknown field 'x'"},
        {"{" HEAD TAIL_NO_FILES "\"filez\": []}", "unknown field 'filez'"},
        {"{\"format\": \"flotilla-model-manifest/1\", \"round\": "
         "5, " TAIL_NO_FILES GOOD_FILES "}",
         "missing field 'version'"},
        {"{\"format\": \"flotilla-model-manifest/2\", \"version\": 2, "
         "\"round\": 5, " TAIL_NO_FILES GOOD_FILES "}",
         "'format'"},
        {"{\"format\": \"flotilla-model-manifest/1\", \"version\": \"2\", "
         "\"round\": 5, " TAIL_NO_FILES GOOD_FILES "}",
         "'version' must be an integer"},
        {"{\"format\": \"flotilla-model-manifest/1\", \"version\": 2.0, "
         "\"round\": 5, " TAIL_NO_FILES GOOD_FILES "}",
         "'version' must be an integer"},
        {"{\"format\": \"flotilla-model-manifest/1\", \"version\": 2, "
         "\"round\": -5, " TAIL_NO_FILES GOOD_FILES "}",
         "'round' must be an integer"},
        {"{\"format\": \"flotilla-model-manifest/1\", \"version\": 0, "
         "\"round\": 5, " TAIL_NO_FILES GOOD_FILES "}",
         "'version' must be >= 1"},
        {"{" HEAD "\"version\": 3, " TAIL_NO_FILES GOOD_FILES "}", "not JSON"},
        {"{" HEAD "\"parent_sha256\": \"" H64 "0\", \"created_ms\": 1, "
         "\"privacy\": {\"epsilon\": 1, \"delta\": 0}, \"config\": "
         "{}, " GOOD_FILES "}",
         "'parent_sha256'"},
        {"{" HEAD "\"parent_sha256\": null, \"created_ms\": 1, "
         "\"privacy\": {\"epsilon\": -1, \"delta\": 0}, \"config\": "
         "{}, " GOOD_FILES "}",
         "'privacy.epsilon'"},
        {"{" HEAD "\"parent_sha256\": null, \"created_ms\": 1, "
         "\"privacy\": {\"epsilon\": 1, \"delta\": 2}, \"config\": "
         "{}, " GOOD_FILES "}",
         "'privacy.delta'"},
        {"{" HEAD "\"parent_sha256\": null, \"created_ms\": 1, "
         "\"privacy\": {\"epsilon\": 1}, \"config\": {}, " GOOD_FILES "}",
         "privacy: missing field 'delta'"},
        {"{" HEAD "\"parent_sha256\": null, \"created_ms\": 1, "
         "\"privacy\": {\"epsilon\": 1, \"delta\": 0}, \"config\": "
         "[], " GOOD_FILES "}",
         "'config' must be an object"},
        {"{" HEAD TAIL_NO_FILES "\"files\": []}", "'files' must be an array"},
        {"{" HEAD TAIL_NO_FILES "\"files\": [{\"name\": \"../x\", \"size\": "
         "3, \"sha256\": \"" H64 "\"}]}",
         "bad file name"},
        {"{" HEAD TAIL_NO_FILES "\"files\": [{\"name\": \"manifest.sig\", "
         "\"size\": 3, \"sha256\": \"" H64 "\"}]}",
         "bad file name"},
        {"{" HEAD TAIL_NO_FILES "\"files\": [{\"name\": \"a\", \"size\": 3, "
         "\"sha256\": \"" H64 "\"}, {\"name\": \"a\", \"size\": 3, "
         "\"sha256\": \"" H64 "\"}]}",
         "duplicate file 'a'"},
        {"{" HEAD TAIL_NO_FILES "\"files\": [{\"name\": \"a\", \"size\": 3, "
         "\"sha256\": \"0123456789ABCDEF0123456789abcdef0123456789abcdef0123"
         "456789abcdef\"}]}",
         "lowercase"},
        {"{" HEAD TAIL_NO_FILES "\"files\": [{\"name\": \"a\", \"size\": 3}]}",
         "missing field 'sha256'"},
        {"{" HEAD TAIL_NO_FILES GOOD_FILES "} trailing", "not JSON"},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++) {
        why[0] = '\0';
        int rc = fl_artifact_manifest_parse(bad[i].json, strlen(bad[i].json),
                                            &m, why, sizeof why);
        ck_assert_msg(rc == FL_EFORMAT, "case %zu: rc %d", i, rc);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(why, bad[i].why) != NULL,
                      "case %zu: reason '%s' lacks '%s'", i, why, bad[i].why);
    }
    /* Size limit before parsing. */
    size_t big = FL_ARTIFACT_MANIFEST_MAX + 1;
    char *huge = fl_malloc(big);
    memset(huge, ' ', big);
    ck_assert_int_eq(fl_artifact_manifest_parse(huge, big, &m, why, sizeof why),
                     FL_ETOOBIG);
    fl_free(huge);
    /* Too many files. */
    fl_buf_t many;
    fl_buf_init(&many, 1 << 20);
    fl_buf_printf(&many, "{" HEAD TAIL_NO_FILES "\"files\": [");
    for (int i = 0; i <= FL_ARTIFACT_FILES_MAX; i++)
        fl_buf_printf(&many,
                      "%s{\"name\": \"f%d\", \"size\": 1, \"sha256\": \"" H64
                      "\"}",
                      i ? ", " : "", i);
    fl_buf_printf(&many, "]}");
    ck_assert_int_eq(
        fl_artifact_manifest_parse(many.data, many.len, &m, why, sizeof why),
        FL_EFORMAT);
    fl_buf_free(&many);
    fl_buf_free(&a);
    fl_buf_free(&b);
}
END_TEST

/* ---- independent verifier ---- */

/* python3-nacl (libsodium through its own bindings) verifies manifest.sig
 * over the bytes of manifest.json with the key from our .pub file; and
 * refuses the same signature over a manifest changed by one byte. */
START_TEST(test_python_nacl_verifies)
{
    fixture_t f;
    fixture_init(&f);
    ck_assert_int_eq(publish(&f, 1, 3), 0);
    char v[PATH_MAX], pub[PATH_MAX + 16], copy[PATH_MAX + 32];
    version_dir(&f, 1, v, sizeof v);
    P(pub, "%s/srv.pub", f.dir);
    ck_assert_int_eq(fl_artifact_pub_save(pub, f.pk), 0);
    static const char *const py =
        "import sys, nacl.signing\n"
        "pub = open(sys.argv[1]).read().split()[-1]\n"
        "vk = nacl.signing.VerifyKey(bytes.fromhex(pub))\n"
        "vk.verify(open(sys.argv[2], 'rb').read(), "
        "open(sys.argv[3], 'rb').read())\n";
    char script[PATH_MAX + 16];
    P(script, "%s/verify.py", f.dir);
    write_file(script, py, strlen(py), 0644);
    ck_assert_int_eq(fl_test_system("'%s' '%s' '%s' '%s/manifest.json' "
                                    "'%s/manifest.sig'",
                                    fl_test_python(), script, pub, v, v),
                     0);
    P(copy, "%s/tampered.json", f.dir);
    ck_assert_int_eq(fl_test_system("cp '%s/manifest.json' '%s'", v, copy), 0);
    flip(copy, 20);
    ck_assert_int_ne(fl_test_system("'%s' '%s' '%s' '%s' '%s/manifest.sig' "
                                    "2>/dev/null",
                                    fl_test_python(), script, pub, copy, v),
                     0);
    /* flotilla verify on the publishing root checks its current version. */
    char bin[PATH_MAX];
    fl_test_flotilla(bin, sizeof bin);
    ck_assert_int_eq(fl_test_system("%s verify --pub '%s' '%s' >/dev/null", bin,
                                    pub, f.root),
                     0);
    char p[PATH_MAX + 32];
    P(p, "%s/model.q8", v);
    flip(p, 3);
    ck_assert_int_eq(fl_test_system("%s verify --pub '%s' '%s' 2>/dev/null",
                                    bin, pub, f.root),
                     1);
    fixture_free(&f);
}
END_TEST

/* ---- the commands ---- */

START_TEST(test_cli_keygen_sign_verify)
{
    char dir[PATH_MAX], bin[PATH_MAX];
    fl_test_tmpdir(dir, sizeof dir);
    fl_test_flotilla(bin, sizeof bin);
    ck_assert_int_eq(
        fl_test_system("cd '%s' && %s keygen --out srv >/dev/null && "
                       "mkdir v && head -c 3000 /dev/urandom > v/model.bin && "
                       "echo q8 > v/model.q8",
                       dir, bin),
        0);
    /* Keys are not overwritten. */
    ck_assert_int_eq(fl_test_system("cd '%s' && %s keygen --out srv "
                                    "2>/dev/null",
                                    dir, bin),
                     1);
    ck_assert_int_eq(fl_test_system("cd '%s' && %s sign --key srv.key "
                                    "--version 4 --round 9 --epsilon 2.5 "
                                    "--delta 1e-5 v >/dev/null",
                                    dir, bin),
                     0);
    ck_assert_int_eq(fl_test_system("cd '%s' && %s verify --pub srv.pub v "
                                    ">/dev/null",
                                    dir, bin),
                     0);
    /* What it signed is what the library reads. */
    char v[PATH_MAX + 8], why[256];
    P(v, "%s/v", dir);
    uint8_t pk[32];
    char pub[PATH_MAX + 16];
    P(pub, "%s/srv.pub", dir);
    ck_assert_int_eq(fl_artifact_pub_load(pub, pk), 0);
    fl_artifact_manifest_t *m = NULL;
    ck_assert_int_eq(fl_artifact_verify_dir(v, pk, &m, why, sizeof why), 0);
    ck_assert_uint_eq(m->version, 4);
    ck_assert_uint_eq(m->nfiles, 2);
    ck_assert(m->epsilon == 2.5);
    fl_artifact_manifest_free(m);
    /* A flipped byte: exit 1, and re-signing refuses to bless it. */
    char p[PATH_MAX + 32];
    P(p, "%s/v/model.bin", dir);
    flip(p, 100);
    ck_assert_int_eq(fl_test_system("cd '%s' && %s verify --pub srv.pub v "
                                    "2>/dev/null",
                                    dir, bin),
                     1);
    ck_assert_int_eq(fl_test_system("cd '%s' && %s sign --key srv.key v "
                                    "2>/dev/null",
                                    dir, bin),
                     1);
    ck_assert_int_eq(
        fl_test_system("cd '%s' && %s verify v 2>/dev/null", dir, bin), 2);
    fl_test_rmtree(dir);
}
END_TEST

START_TEST(test_key_secret_signs_like_the_key)
{
    /* The exported secret key signs exactly as the handle does. */
    fl_artifact_key_t *k = NULL;
    ck_assert_int_eq(fl_artifact_key_generate(&k), 0);
    uint8_t sk[FL_ARTIFACT_SECRET_BYTES], pk[32], s1[64], s2[64];
    fl_artifact_key_secret(k, sk);
    fl_artifact_key_public(k, pk);
    ck_assert_mem_eq(sk + 32, pk, 32);
    ck_assert_int_eq(fl_artifact_sign(k, "msg", 3, s1), 0);
    ck_assert_int_eq(
        crypto_sign_detached(s2, NULL, (const unsigned char *)"msg", 3, sk), 0);
    ck_assert_mem_eq(s1, s2, 64);
    sodium_memzero(sk, sizeof sk);
    fl_artifact_key_free(k);
}
END_TEST

Suite *check_artifact_suite(void)
{
    Suite *s = suite_create("artifact");
    TCase *t = tcase_create("crypto");
    tcase_add_test(t, test_sha256_known_answers);
    tcase_add_test(t, test_key_secret_signs_like_the_key);
    tcase_add_test(t, test_ed25519_rfc8032_through_key_files);
    tcase_add_test(t, test_keygen_files);
    suite_add_tcase(s, t);
    t = tcase_create("versions");
    tcase_add_test(t, test_publish_verify_round_trip);
    tcase_add_test(t, test_tampering_is_refused);
    tcase_add_test(t, test_keep_last_n_and_crash_leftovers);
    tcase_add_test(t, test_manifest_strict_schema);
    tcase_add_test(t, test_python_nacl_verifies);
    tcase_add_test(t, test_cli_keygen_sign_verify);
    suite_add_tcase(s, t);
    return s;
}
