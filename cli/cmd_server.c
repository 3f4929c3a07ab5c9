/* cli/cmd_server.c — flotilla server: the aggregation daemon, and the
 * enrolment list (enroll, revoke, list) and example configuration. */
#include "cli/cli.h"
#include "server/server.h"

#include <jansson.h>
#include <stddef.h>
#include <string.h>

#define SERVER_USAGE                                                           \
    "server [--config FILE] [options]\n"                                       \
    "       flotilla server enroll --state DIR [--name NAME] KEY\n"            \
    "       flotilla server revoke --state DIR KEY\n"                          \
    "       flotilla server list --state DIR [--json]\n"                       \
    "       flotilla server example-config\n\n"                                \
    "KEY is a device's Ed25519 public key: 64 hex digits, or a file that "     \
    "holds them.\nA running server re-reads the enrolment list on SIGHUP."

/* ---- enroll / revoke / list ---------------------------------------------*/

typedef struct {
    char *state;
    char *enrol_file;
    char *name;
    int json;
} enrol_opts_t;

static const fl_cfg_opt_t enrol_opt_list[] = {
    {"state", FL_CFG_STRING, offsetof(enrol_opts_t, state), NULL, 1, 0, NULL,
     NULL, "the server's state directory"},
    {"enrol-file", FL_CFG_STRING, offsetof(enrol_opts_t, enrol_file), NULL, 1,
     0, NULL, NULL, "the allow-list (default <state>/enrolled)"},
    {"name", FL_CFG_STRING, offsetof(enrol_opts_t, name), NULL, 1, 0, NULL,
     NULL, "enroll: a name for the device ([A-Za-z0-9._:@-], 64 at most)"},
    {"json", FL_CFG_BOOL, offsetof(enrol_opts_t, json), "false", 1, 0, NULL,
     NULL, "list: JSON on stdout"},
};
static const fl_cfg_table_t enrol_table = {
    enrol_opt_list, FL_ARRAY_LEN(enrol_opt_list), "server"};

static int enrol_path(const enrol_opts_t *o, const char *cmd, char *out,
                      size_t outlen)
{
    if (o->enrol_file) {
        snprintf(out, outlen, "%s", o->enrol_file);
        return 0;
    }
    if (!o->state) {
        fl_cli_error(cmd, "--state DIR is required");
        return -1;
    }
    if (fl_path_join(out, outlen, o->state, FL_SERVER_ENROL_FILE) < 0) {
        fl_cli_error(cmd, "path too long");
        return -1;
    }
    return 0;
}

static int cmd_list(const enrol_opts_t *o, const char *path)
{
    char err[512] = "";
    fl_server_enrol_t *e = NULL;
    int rc = fl_server_enrol_load(path, &e, err, sizeof err);
    if (rc < 0) {
        fl_cli_error("server list", "%s", err);
        return FL_EXIT_FAIL;
    }
    json_t *arr = o->json ? json_array() : NULL;
    for (size_t i = 0; i < fl_server_enrol_count(e); i++) {
        uint8_t key[32];
        const char *name = "";
        char hex[65];
        fl_server_enrol_get(e, i, key, &name);
        fl_hex_encode(hex, key, 32);
        if (arr)
            json_array_append_new(
                arr, json_pack("{s:s,s:s}", "key", hex, "name", name));
        else
            printf("%s%s%s\n", hex, name[0] ? " " : "", name);
    }
    if (arr) {
        json_dumpf(arr, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(arr);
    }
    fl_server_enrol_free(e);
    return FL_EXIT_OK;
}

static int cmd_enrol(int argc, char **argv, const char *verb)
{
    char cmd[32], usage[128], path[4096], err[512] = "";
    enrol_opts_t o;
    int rest = 0, status;
    memset(&o, 0, sizeof o);
    snprintf(cmd, sizeof cmd, "server %s", verb);
    snprintf(usage, sizeof usage, "server %s --state DIR %s", verb,
             strcmp(verb, "list") == 0 ? "[--json]" : "[--name NAME] KEY");
    status = fl_cli_parse(cmd, usage, &enrol_table, &o, argc, argv, &rest);
    if (status >= 0)
        goto out;
    status = FL_EXIT_USAGE;
    if (enrol_path(&o, cmd, path, sizeof path) < 0)
        goto out;
    if (strcmp(verb, "list") == 0) {
        if (rest != argc) {
            fl_cli_error(cmd, "unexpected argument '%s'", argv[rest]);
            goto out;
        }
        status = cmd_list(&o, path);
        goto out;
    }
    if (argc - rest != 1) {
        fl_cli_error(cmd, "expected exactly one KEY");
        goto out;
    }
    uint8_t key[32];
    if (fl_server_key_parse(argv[rest], key) < 0) {
        fl_cli_error(cmd, "'%s' is neither 64 hex digits nor a key file",
                     argv[rest]);
        goto out;
    }
    if (o.state && fl_mkdir_p(o.state, 0700) < 0) {
        fl_cli_error(cmd, "cannot create %s", o.state);
        status = FL_EXIT_FAIL;
        goto out;
    }
    int add = strcmp(verb, "enroll") == 0;
    int rc = fl_server_enrol_edit(path, key, o.name, add, err, sizeof err);
    if (rc < 0) {
        fl_cli_error(cmd, "%s", err);
        status = FL_EXIT_FAIL;
        goto out;
    }
    char hex[65];
    fl_hex_encode(hex, key, 32);
    printf("%s %s\n", add ? "enrolled" : "revoked", hex);
    fprintf(stderr, "a running server applies this on SIGHUP "
                    "(systemctl reload flotilla-server)\n");
    status = FL_EXIT_OK;
out:
    fl_cfg_free(&enrol_table, &o);
    return status;
}

/* ---- example configuration ------------------------------------------------*/

static int cmd_example_config(void)
{
    const fl_cfg_table_t *t = fl_server_config_table();
    printf("# flotilla server configuration. Keys are the long flags of "
           "'flotilla server';\n# flags given on the command line override "
           "this file.\n[server]\n");
    for (size_t i = 0; i < t->nopts; i++) {
        const fl_cfg_opt_t *o = &t->opts[i];
        printf("\n# %s\n", o->help);
        if (o->type == FL_CFG_ENUM)
            printf("# one of: %s\n", o->choices);
        if (o->def)
            printf("%s = %s\n", o->name, o->def);
        else
            printf("# %s =\n", o->name);
    }
    return FL_EXIT_OK;
}

/* ---- the daemon
 * -------------------------------------------------------------*/

int fl_cmd_server(int argc, char **argv)
{
    if (argc >= 2) {
        const char *verb = argv[1];
        if (strcmp(verb, "enroll") == 0 || strcmp(verb, "revoke") == 0 ||
            strcmp(verb, "list") == 0)
            return cmd_enrol(argc - 1, argv + 1, verb);
        if (strcmp(verb, "example-config") == 0)
            return cmd_example_config();
    }
    fl_server_config_t cfg;
    char err[512] = "";
    int rest = 0;
    memset(&cfg, 0, sizeof cfg);
    const fl_cfg_table_t *t = fl_server_config_table();
    int status =
        fl_cli_parse("server", SERVER_USAGE, t, &cfg, argc, argv, &rest);
    if (status >= 0)
        goto out;
    status = FL_EXIT_USAGE;
    if (rest != argc) {
        fl_cli_error("server", "unexpected argument '%s'", argv[rest]);
        goto out;
    }
    if (fl_server_config_check(&cfg, err, sizeof err) < 0) {
        fl_cli_error("server", "%s", err);
        goto out;
    }
    fl_log_set_role("server");
    fl_log_set_level((fl_log_level_t)cfg.log_level);
    fl_log_set_json(cfg.log_json);
    status = fl_server_run(&cfg) < 0 ? FL_EXIT_FAIL : FL_EXIT_OK;
out:
    fl_server_config_free(&cfg);
    return status;
}
