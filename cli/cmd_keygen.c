/* cli/cmd_keygen.c — flotilla keygen: a new Ed25519 key pair for signing
 * model versions (artifact/artifact.h has the file formats). */
#include "artifact/artifact.h"
#include "cli/cli.h"

#include <jansson.h>

typedef struct {
    char *out;
    int json;
} keygen_opts_t;

static const fl_cfg_opt_t opts[] = {
    {"out", FL_CFG_STRING, offsetof(keygen_opts_t, out), NULL, 1, 0, NULL, NULL,
     "write PREFIX.key (secret, mode 0600) and PREFIX.pub (required)"},
    {"json", FL_CFG_BOOL, offsetof(keygen_opts_t, json), "false", 1, 0, NULL,
     NULL, "print one JSON object"},
};
static const fl_cfg_table_t table = {opts, FL_ARRAY_LEN(opts), "keygen"};

static const char usage[] =
    "keygen --out PREFIX [--json]\n\n"
    "Creates an Ed25519 key pair: PREFIX.key holds the secret seed (mode\n"
    "0600; keep it on the server only), PREFIX.pub the public key that\n"
    "devices are configured with. Existing files are never overwritten.";

int fl_cmd_keygen(int argc, char **argv)
{
    keygen_opts_t o = {0};
    fl_artifact_key_t *k = NULL;
    int status = FL_EXIT_FAIL, rest;
    int rc = fl_cli_parse("keygen", usage, &table, &o, argc, argv, &rest);
    if (rc >= 0) {
        fl_cfg_free(&table, &o);
        return rc;
    }
    if (!o.out || !*o.out || rest < argc) {
        fl_cli_error("keygen", "needs --out PREFIX and no other argument");
        status = FL_EXIT_USAGE;
        goto out;
    }
    if ((rc = fl_artifact_key_generate(&k)) < 0 ||
        (rc = fl_artifact_key_save(k, o.out)) < 0) {
        fl_cli_error("keygen", "%s.key / %s.pub: %s", o.out, o.out,
                     rc == FL_EEXIST ? "already exists (not overwritten)"
                                     : fl_strerror(rc));
        goto out;
    }
    uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES];
    char hex[2 * FL_ARTIFACT_PUBLIC_BYTES + 1];
    fl_artifact_key_public(k, pk);
    fl_hex_encode(hex, pk, sizeof pk);
    if (o.json) {
        json_t *j =
            json_pack("{s:s+, s:s+, s:s}", "secret_key", o.out, ".key",
                      "public_key_file", o.out, ".pub", "public_key", hex);
        if (!j || json_dumpf(j, stdout, JSON_PRESERVE_ORDER) < 0) {
            json_decref(j);
            goto out;
        }
        fputc('\n', stdout);
        json_decref(j);
    } else {
        printf("secret key: %s.key (mode 0600)\npublic key: %s.pub\n%s\n",
               o.out, o.out, hex);
    }
    status = FL_EXIT_OK;
out:
    fl_artifact_key_free(k);
    fl_cfg_free(&table, &o);
    return status;
}
