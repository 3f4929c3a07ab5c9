/*
 * artifact/artifact.h — signed model versions (DESIGN.md §3 steps 2 and 8,
 * §4 "Model artifacts").
 *
 * A model version is a directory:
 *
 *     v000000000012/
 *         model.bin      fp32 weights (and any other files the server adds)
 *         model.q8       int8 export
 *         manifest.json  version, round, parent hash, SHA-256 and size of
 *                        every file, the caller's config object, cumulative
 *                        (epsilon, delta), creation time
 *         manifest.sig   64 bytes: the Ed25519 signature of the exact bytes
 *                        of manifest.json
 *
 * and a publishing root holds the last N versions plus `current`, a symlink
 * to the newest, replaced atomically. The parent hash is the SHA-256 of the
 * previous version's manifest.json, so versions form a signed chain.
 *
 * Verification reads manifest.json (at most FL_ARTIFACT_MANIFEST_MAX
 * bytes), checks its signature against a given public key BEFORE parsing
 * anything in it, then parses it strictly (unknown, missing or mistyped
 * fields are refused) and checks every listed file's size and SHA-256.
 *
 * Key files are text. The secret key file holds the 32-byte Ed25519 seed
 * (RFC 8032's secret key) in hex, has mode 0600, and is refused when group
 * or others can access it:
 *
 *     flotilla ed25519 secret key v1
 *     <64 hex digits>
 *
 * The public key file is the same with "public" and the 32-byte key.
 * Secret keys live in sodium_malloc memory and are wiped on every path.
 *
 * Library rules: nothing here logs. Functions return 0 or a negative FL_E*
 * code; those taking (why, whylen) also write one line saying what failed
 * ("model.bin: SHA-256 mismatch"); why may be NULL. Ownership: pointer
 * arguments are borrowed unless stated. Thread-safety: everything is
 * reentrant; a key may be used from several threads at once (read-only);
 * two processes must not publish into the same root at once.
 */
#ifndef FL_ARTIFACT_H
#define FL_ARTIFACT_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

#define FL_ARTIFACT_PUBLIC_BYTES 32
#define FL_ARTIFACT_SEED_BYTES   32
#define FL_ARTIFACT_SIG_BYTES    64
#define FL_ARTIFACT_HASH_BYTES   32
#define FL_ARTIFACT_MANIFEST_MAX (256 * 1024) /* bytes of manifest.json */
#define FL_ARTIFACT_FILES_MAX    32           /* files in one version */
#define FL_ARTIFACT_NAME_MAX     64 /* file name bytes, with the NUL */
#define FL_ARTIFACT_MANIFEST     "manifest.json"
#define FL_ARTIFACT_SIGNATURE    "manifest.sig"
#define FL_ARTIFACT_CURRENT      "current"

/* ---- hashing ---- */

/* SHA-256 (OpenSSL EVP). */
int fl_artifact_sha256(const void *data, size_t len,
                       uint8_t out[FL_ARTIFACT_HASH_BYTES]);
/* SHA-256 of a regular file, streamed; *size (may be NULL) receives its
 * length. Does not follow a symlink in the last component. */
int fl_artifact_sha256_file(const char *path,
                            uint8_t out[FL_ARTIFACT_HASH_BYTES],
                            uint64_t *size);

/* ---- keys ---- */

typedef struct fl_artifact_key fl_artifact_key_t;

/* A fresh key pair from the kernel CSPRNG. *out returned owned. */
int fl_artifact_key_generate(fl_artifact_key_t **out);
/* The key pair of a given seed (RFC 8032 secret key). */
int fl_artifact_key_from_seed(const uint8_t seed[FL_ARTIFACT_SEED_BYTES],
                              fl_artifact_key_t **out);
/* Wipes and frees; NULL is a no-op. */
void fl_artifact_key_free(fl_artifact_key_t *k);
void fl_artifact_key_public(const fl_artifact_key_t *k,
                            uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES]);
/* Copies the 64-byte libsodium secret key (seed || public key) into sk,
 * for an engine that signs with it itself (secure aggregation's
 * advertisements). The caller keeps sk in stack or guarded memory and
 * wipes it with sodium_memzero. */
#define FL_ARTIFACT_SECRET_BYTES 64
void fl_artifact_key_secret(const fl_artifact_key_t *k,
                            uint8_t sk[FL_ARTIFACT_SECRET_BYTES]);
/* Writes PREFIX.key (mode 0600) and PREFIX.pub (0644), each atomically.
 * FL_EEXIST when either exists: keys are never overwritten. */
int fl_artifact_key_save(const fl_artifact_key_t *k, const char *prefix);
/* Reads a secret key file. FL_EDENIED when group or others may access it,
 * FL_EFORMAT when it is not a key file. */
int fl_artifact_key_load(const char *path, fl_artifact_key_t **out);
int fl_artifact_pub_save(const char *path,
                         const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES]);
int fl_artifact_pub_load(const char *path,
                         uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES]);

/* Detached Ed25519 signature of msg. */
int fl_artifact_sign(const fl_artifact_key_t *k, const void *msg, size_t len,
                     uint8_t sig[FL_ARTIFACT_SIG_BYTES]);
/* 0 when sig is pk's signature of msg, FL_ESIGNATURE otherwise. */
int fl_artifact_sig_verify(const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES],
                           const void *msg, size_t len,
                           const uint8_t sig[FL_ARTIFACT_SIG_BYTES]);

/* ---- manifests ---- */

typedef struct {
    char name[FL_ARTIFACT_NAME_MAX]; /* [A-Za-z0-9._-]+, not starting '.',
                                        not manifest.json / manifest.sig */
    uint64_t size;
    uint8_t sha256[FL_ARTIFACT_HASH_BYTES];
} fl_artifact_file_t;

/* A parsed manifest. Returned owned by the functions below, read-only for
 * the caller, freed with fl_artifact_manifest_free. */
typedef struct {
    uint64_t version; /* >= 1, increasing along the chain */
    uint64_t round;   /* the training round that produced it */
    int has_parent;   /* 0 for the first version */
    uint8_t parent_sha256[FL_ARTIFACT_HASH_BYTES];
    uint64_t created_ms; /* Unix time in milliseconds */
    double epsilon;      /* cumulative; INFINITY = no DP guarantee */
    double delta;
    char *config_json; /* the caller's config object, compact JSON */
    size_t nfiles;
    fl_artifact_file_t files[FL_ARTIFACT_FILES_MAX];
} fl_artifact_manifest_t;

void fl_artifact_manifest_free(fl_artifact_manifest_t *m);

/* Strict parse of manifest.json bytes (at most FL_ARTIFACT_MANIFEST_MAX).
 * FL_ETOOBIG, or FL_EFORMAT on anything else that is not exactly the
 * schema (duplicate keys and file names included). This does NOT check a
 * signature: use fl_artifact_verify_dir on anything from outside. */
int fl_artifact_manifest_parse(const void *json, size_t len,
                               fl_artifact_manifest_t **out, char *why,
                               size_t whylen);
/* The canonical JSON text of m (what gets signed), appended to out. */
int fl_artifact_manifest_encode(const fl_artifact_manifest_t *m, fl_buf_t *out);
/* Looks a file up by name; NULL when absent. */
const fl_artifact_file_t *
fl_artifact_manifest_file(const fl_artifact_manifest_t *m, const char *name);
/* The integer config.<section>.<key> of a manifest (e.g. "architecture",
 * "vocab_size"): 0 and *out set, FL_ENOENT when absent, FL_EFORMAT when it
 * is not an integer >= 0. */
int fl_artifact_manifest_config_u64(const fl_artifact_manifest_t *m,
                                    const char *section, const char *key,
                                    uint64_t *out);
/* The string config.<section>.<key>, copied with its NUL into out: 0,
 * FL_ENOENT when absent, FL_EFORMAT when not a string of fewer than outlen
 * bytes without NUL. */
int fl_artifact_manifest_config_str(const fl_artifact_manifest_t *m,
                                    const char *section, const char *key,
                                    char *out, size_t outlen);

/* ---- one model version ---- */

/* What the caller says about a version; the files' hashes are computed. */
typedef struct {
    uint64_t version;
    uint64_t round;
    double epsilon; /* INFINITY when training was not private */
    double delta;
    const char *config_json; /* a JSON object (architecture, codec...);
                                NULL = {} */
    uint64_t created_ms;     /* 0 = now */
} fl_artifact_meta_t;

/* A file to publish: `name` in the version directory, with the contents
 * of the file at `path`, or (path NULL) the `len` bytes at `data`. */
typedef struct {
    const char *name;
    const char *path;
    const void *data;
    size_t len;
} fl_artifact_input_t;

/* Verifies the version directory dir against pk: signature first, then the
 * strict schema, then every file's size and SHA-256. FL_ESIGNATURE (bad,
 * missing or other key's signature), FL_EFORMAT, FL_EHASH (a file's size or
 * hash differs, or it is missing), FL_ETOOBIG. On success and when out is
 * not NULL, *out receives the manifest (returned owned). */
int fl_artifact_verify_dir(const char *dir,
                           const uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES],
                           fl_artifact_manifest_t **out, char *why,
                           size_t whylen);

/* Signs a directory in place (flotilla sign). If dir/manifest.json exists
 * it is parsed strictly, every file is checked against it (FL_EHASH), and
 * its exact bytes are signed; meta is ignored. Otherwise a manifest is
 * built from meta (which must then not be NULL; no parent) listing every
 * regular file of dir except manifest.*, written atomically, and signed.
 * manifest.sig is written atomically. */
int fl_artifact_sign_dir(const char *dir, const fl_artifact_key_t *k,
                         const fl_artifact_meta_t *meta, char *why,
                         size_t whylen);

/* ---- the publishing root ---- */

/* Publishes a new version under root (created if missing):
 *   1. writes the files, manifest.json (parent = SHA-256 of the current
 *      version's manifest.json) and manifest.sig into a temporary
 *      directory in root, fsyncs each file and the directory;
 *   2. renames it to root/v<version, 12 digits>, fsyncs root;
 *   3. points root/current at it (new symlink renamed over the old one),
 *      fsyncs root;
 *   4. removes all but the newest `keep` (>= 1) versions, and what a
 *      crash left (temporary directories, versions above current).
 * A crash at any point leaves `current` at a complete, signed version.
 * meta->version must be above the current version's (FL_EEXIST
 * otherwise); a directory left with that number by a crash before step 3
 * is replaced. 1 <= nfiles <= FL_ARTIFACT_FILES_MAX, names unique.
 * Pruning is best effort (what cannot be removed now goes next time). */
int fl_artifact_publish(const char *root, const fl_artifact_key_t *k,
                        const fl_artifact_meta_t *meta,
                        const fl_artifact_input_t *files, size_t nfiles,
                        unsigned keep, char *why, size_t whylen);

/* The current version under root: its directory path into dir (dirlen
 * bytes) and its number into *version (may be NULL). FL_ENOENT when
 * nothing has been published. Does not verify it. */
int fl_artifact_current(const char *root, char *dir, size_t dirlen,
                        uint64_t *version);

/* The directory name of a version ("v000000000012") into name. */
int fl_artifact_version_name(uint64_t version, char *name, size_t namelen);

#endif /* FL_ARTIFACT_H */
