/* cli/cmd_verify.c — flotilla verify: check a model version directory's
 * signature and hashes. Exit 0: valid; 1: invalid (or unreadable). */
#include "artifact/artifact.h"
#include "cli/cli.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>

typedef struct {
    char *pub;
    int json;
} verify_opts_t;

static const fl_cfg_opt_t opts[] = {
    {"pub", FL_CFG_STRING, offsetof(verify_opts_t, pub), NULL, 1, 0, NULL, NULL,
     "public key file of the signer (required)"},
    {"json", FL_CFG_BOOL, offsetof(verify_opts_t, json), "false", 1, 0, NULL,
     NULL, "print one JSON object"},
};
static const fl_cfg_table_t table = {opts, FL_ARRAY_LEN(opts), "verify"};

static const char usage[] =
    "verify --pub PUB [--json] DIR\n\n"
    "Verifies DIR/manifest.sig against PUB, then every file's size and\n"
    "SHA-256 against DIR/manifest.json. DIR may also be a publishing root\n"
    "(with a 'current' link): its current version is verified. Exit status\n"
    "0 when valid, 1 when not.";

int fl_cmd_verify(int argc, char **argv)
{
    verify_opts_t o = {0};
    fl_artifact_manifest_t *m = NULL;
    uint8_t pk[FL_ARTIFACT_PUBLIC_BYTES];
    char why[512] = "", cur[PATH_MAX];
    int status = FL_EXIT_FAIL, rest;
    int rc = fl_cli_parse("verify", usage, &table, &o, argc, argv, &rest);
    if (rc >= 0) {
        fl_cfg_free(&table, &o);
        return rc;
    }
    if (!o.pub || rest != argc - 1) {
        fl_cli_error("verify", "needs --pub PUB and one DIR");
        status = FL_EXIT_USAGE;
        goto out;
    }
    const char *dir = argv[rest];
    if ((rc = fl_artifact_pub_load(o.pub, pk)) < 0) {
        fl_cli_error("verify", "%s: %s", o.pub, fl_strerror(rc));
        goto out;
    }
    if (fl_artifact_current(dir, cur, sizeof cur, NULL) == 0)
        dir = cur;
    rc = fl_artifact_verify_dir(dir, pk, &m, why, sizeof why);
    if (o.json) {
        json_t *j = json_object();
        json_object_set_new(j, "dir", json_string(dir));
        json_object_set_new(j, "valid", json_boolean(rc == 0));
        if (rc == 0) {
            json_object_set_new(j, "version",
                                json_integer((json_int_t)m->version));
            json_object_set_new(j, "round", json_integer((json_int_t)m->round));
            json_object_set_new(j, "epsilon",
                                isfinite(m->epsilon) ? json_real(m->epsilon)
                                                     : json_null());
            json_object_set_new(j, "delta", json_real(m->delta));
            json_object_set_new(j, "files",
                                json_integer((json_int_t)m->nfiles));
        } else {
            json_object_set_new(j, "error", json_string(fl_err_name(rc)));
            json_object_set_new(j, "reason", json_string(why));
        }
        json_dumpf(j, stdout, JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(j);
    } else if (rc == 0) {
        printf("%s: valid (version %llu, round %llu, %zu files)\n", dir,
               (unsigned long long)m->version, (unsigned long long)m->round,
               m->nfiles);
    } else {
        fprintf(stderr, "%s: INVALID: %s (%s)\n", dir,
                why[0] ? why : fl_strerror(rc), fl_err_name(rc));
    }
    status = rc == 0 ? FL_EXIT_OK : FL_EXIT_FAIL;
out:
    fl_artifact_manifest_free(m);
    fl_cfg_free(&table, &o);
    return status;
}
