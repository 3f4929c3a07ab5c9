/* cli/cmd_sign.c — flotilla sign: sign a model version directory. */
#include "artifact/artifact.h"
#include "cli/cli.h"

#include <math.h>

typedef struct {
    char *key;
    int64_t version;
    int64_t round;
    double epsilon;
    double delta;
    char *config;
} sign_opts_t;

#define OPT(f) offsetof(sign_opts_t, f)
static const fl_cfg_opt_t opts[] = {
    {"key", FL_CFG_STRING, OPT(key), NULL, 1, 0, NULL, NULL,
     "secret key file from 'flotilla keygen' (required)"},
    {"version", FL_CFG_INT, OPT(version), "1", 1, 9e15, NULL, NULL,
     "model version, when building the manifest"},
    {"round", FL_CFG_INT, OPT(round), "0", 0, 9e15, NULL, NULL,
     "training round, when building the manifest"},
    {"epsilon", FL_CFG_DOUBLE, OPT(epsilon), "-1", 1, 0, NULL, NULL,
     "cumulative epsilon, when building the manifest (-1: not private)"},
    {"delta", FL_CFG_DOUBLE, OPT(delta), "0", 0, 1, NULL, NULL,
     "delta, when building the manifest"},
    {"manifest-config", FL_CFG_STRING, OPT(config), NULL, 1, 0, NULL, NULL,
     "JSON file with an object for the manifest's 'config'"},
};
#undef OPT
static const fl_cfg_table_t table = {opts, FL_ARRAY_LEN(opts), "sign"};

static const char usage[] =
    "sign --key KEY [--version N --round R --epsilon E --delta D "
    "--manifest-config "
    "FILE] DIR\n\n"
    "Writes DIR/manifest.sig, the Ed25519 signature of DIR/manifest.json.\n"
    "If DIR/manifest.json exists, it is checked first (strict schema, and\n"
    "every file's size and SHA-256) and signed exactly as it is; the other\n"
    "options are ignored. Otherwise a manifest listing every regular file of\n"
    "DIR (except manifest.* and dot files) is built from the options, with\n"
    "no parent, and written first.";

int fl_cmd_sign(int argc, char **argv)
{
    sign_opts_t o = {0};
    fl_artifact_key_t *k = NULL;
    uint8_t *config = NULL;
    size_t config_len = 0;
    char why[512] = "";
    int status = FL_EXIT_FAIL, rest;
    int rc = fl_cli_parse("sign", usage, &table, &o, argc, argv, &rest);
    if (rc >= 0) {
        fl_cfg_free(&table, &o);
        return rc;
    }
    if (!o.key || rest != argc - 1 || (o.epsilon < 0 && o.epsilon != -1)) {
        fl_cli_error("sign", "needs --key KEY and one DIR (and epsilon >= 0 "
                             "or -1)");
        status = FL_EXIT_USAGE;
        goto out;
    }
    const char *dir = argv[rest];
    if ((rc = fl_artifact_key_load(o.key, &k)) < 0) {
        fl_cli_error("sign", "%s: %s", o.key,
                     rc == FL_EDENIED
                         ? "readable by group or others; chmod 600 it"
                         : fl_strerror(rc));
        goto out;
    }
    if (o.config &&
        (rc = fl_file_read_all(o.config, FL_ARTIFACT_MANIFEST_MAX / 2, &config,
                               &config_len)) < 0) {
        fl_cli_error("sign", "%s: %s", o.config, fl_strerror(rc));
        goto out;
    }
    fl_artifact_meta_t meta = {
        .version = (uint64_t)o.version,
        .round = (uint64_t)o.round,
        .epsilon = o.epsilon < 0 ? INFINITY : o.epsilon,
        .delta = o.delta,
        .config_json = (const char *)config,
    };
    rc = fl_artifact_sign_dir(dir, k, &meta, why, sizeof why);
    if (rc < 0) {
        fl_cli_error("sign", "%s: %s (%s)", dir, why[0] ? why : "failed",
                     fl_err_name(rc));
        goto out;
    }
    printf("%s: signed\n", dir);
    status = FL_EXIT_OK;
out:
    fl_free(config);
    fl_artifact_key_free(k);
    fl_cfg_free(&table, &o);
    return status;
}
