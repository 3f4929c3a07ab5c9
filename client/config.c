/* client/config.c — the one option table of `flotilla client`. */
#include "client/client.h"

#include <stddef.h>

#define OPT(name, type, field, def, lo, hi, help)                              \
    {                                                                          \
        name, type, offsetof(fl_client_config_t, field), def, lo, hi, NULL,    \
            NULL, help                                                         \
    }

static int check_windows(const void *field, char *why, size_t whylen)
{
    const char *const *s = field;
    fl_client_windows_t w;
    if (fl_client_windows_parse(*s, &w) < 0) {
        snprintf(why, whylen, "expected HH:MM-HH:MM[,HH:MM-HH:MM...]");
        return FL_EFORMAT;
    }
    return 0;
}

static const fl_cfg_opt_t client_opts[] = {
    OPT("server", FL_CFG_STRING, server, "127.0.0.1:7443", 1, 0,
        "aggregation server, host:port"),
    OPT("ca-file", FL_CFG_STRING, ca_file, "", 1, 0,
        "CA certificate that signed the server's certificate (PEM)"),
    OPT("pin-sha256", FL_CFG_STRING, pin_sha256, "", 1, 0,
        "pinned SHA-256 fingerprint of the server certificate (hex)"),
    OPT("signing-pub", FL_CFG_STRING, signing_pub, "", 1, 0,
        "the server's model-signing public key file"),
    OPT("identity-key", FL_CFG_STRING, identity_key, "", 1, 0,
        "this device's Ed25519 key (default: <state>/identity.key, made on "
        "first start)"),
    OPT("client-cert", FL_CFG_STRING, client_cert, "", 1, 0,
        "client certificate for mutual TLS (PEM)"),
    OPT("client-key", FL_CFG_STRING, client_key, "", 1, 0,
        "client certificate's key (PEM)"),
    OPT("data", FL_CFG_STRING, data_dir, "/var/lib/flotilla-client/data", 1, 0,
        "directory of the device's UTF-8 text files"),
    OPT("tokenizer", FL_CFG_STRING, tokenizer, "", 1, 0,
        "the fleet's tokenizer.bin (\"\" = byte-level); models of another "
        "vocabulary are refused"),
    OPT("state", FL_CFG_STRING, state_dir, "/var/lib/flotilla-client", 1, 0,
        "state directory"),
    OPT("socket", FL_CFG_STRING, socket_path, "/run/flotilla/infer.sock", 1, 0,
        "local inference socket (\"\" for none)"),
    OPT("threads", FL_CFG_INT, threads, "1", 1, 256, "training threads"),
    OPT("memory-mb", FL_CFG_INT, memory_mb, "512", 16, 1 << 20,
        "memory cap for local training, MiB"),
    OPT("nice", FL_CFG_INT, nice, "10", 0, 19,
        "scheduling niceness of training"),
    {"windows", FL_CFG_STRING, offsetof(fl_client_config_t, windows), "", 1, 0,
     NULL, check_windows,
     "local time windows for training, e.g. 22:00-06:00 (\"\" = any time)"},
    OPT("ac-only", FL_CFG_BOOL, ac_only, "false", 1, 0,
        "take part only on mains power"),
    OPT("require-secagg", FL_CFG_BOOL, require_secagg, "true", 1, 0,
        "decline rounds without secure aggregation (the server would see "
        "this device's update)"),
    OPT("min-participants", FL_CFG_INT, min_participants, "3", 3, 1000000,
        "decline rounds with fewer invitees"),
    OPT("max-load", FL_CFG_DOUBLE, max_load, "4", 0, 1024,
        "decline rounds above this 1-minute load average"),
    {"log-level", FL_CFG_STRING, offsetof(fl_client_config_t, log_level),
     "info", 1, 0, NULL, NULL, "debug, info, warn or error"},
    OPT("log-json", FL_CFG_BOOL, log_json, "false", 1, 0,
        "log one JSON object per line"),
};

const fl_cfg_table_t fl_client_config_table = {
    client_opts, sizeof client_opts / sizeof client_opts[0], "client"};
