/* cli/cmd_client.c — flotilla client: the device daemon, its identity, and
 * local inference from the current verified model. */
#include "cli/cli.h"

#include "artifact/artifact.h"
#include "client/client.h"
#include "model/quant.h"
#include "model/tokenizer.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "client [--config FILE] [options]     run the device daemon\n"
    "       flotilla client id [--state DIR]     print this device's public "
    "key "
    "(to enrol it)\n"
    "       flotilla client infer --prompt TEXT [options]   generate text "
    "locally";

static int set_log(const fl_client_config_t *c)
{
    fl_log_level_t lv;
    if (fl_log_level_parse(c->log_level, &lv) < 0) {
        fl_cli_error("client",
                     "log-level: '%s' is not debug, info, warn or "
                     "error",
                     c->log_level);
        return -1;
    }
    fl_log_set_level(lv);
    fl_log_set_json(c->log_json);
    fl_log_set_role("client");
    return 0;
}

static int cmd_id(int argc, char **argv)
{
    fl_client_config_t c;
    memset(&c, 0, sizeof c);
    int rest, rc = fl_cli_parse("client id", "client id [--state DIR]",
                                &fl_client_config_table, &c, argc, argv, &rest);
    if (rc >= 0)
        return rc;
    fl_log_set_role("client");
    char err[512] = "";
    fl_artifact_key_t *k = NULL;
    int status = FL_EXIT_OK;
    if (fl_client_identity(&c, &k, err, sizeof err) < 0) {
        fl_cli_error("client id", "%s", err);
        status = FL_EXIT_FAIL;
    } else {
        uint8_t pk[32];
        char hex[65];
        fl_artifact_key_public(k, pk);
        fl_hex_encode(hex, pk, 32);
        printf("%s\n", hex);
    }
    fl_artifact_key_free(k);
    fl_cfg_free(&fl_client_config_table, &c);
    return status;
}

/* ---- client infer ---- */
typedef struct {
    char *state_dir;
    char *signing_pub;
    char *tokenizer;
    char *prompt;
    int64_t max_tokens;
    double temperature;
    double top_p;
    int64_t top_k;
    int64_t seed;
    int json;
} infer_opts_t;

#define IOPT(name, type, field, def, lo, hi, help)                             \
    {                                                                          \
        name, type, offsetof(infer_opts_t, field), def, lo, hi, NULL, NULL,    \
            help                                                               \
    }
static const fl_cfg_opt_t infer_table_opts[] = {
    IOPT("state", FL_CFG_STRING, state_dir, "/var/lib/flotilla-client", 1, 0,
         "the daemon's state directory (its current model is used)"),
    IOPT("signing-pub", FL_CFG_STRING, signing_pub, "", 1, 0,
         "the server's model-signing public key: the model is verified "
         "before use"),
    IOPT("tokenizer", FL_CFG_STRING, tokenizer, "", 1, 0,
         "the fleet's tokenizer.bin, as in the daemon's configuration (\"\" = "
         "byte-level)"),
    IOPT("prompt", FL_CFG_STRING, prompt, "", 1, 0, "text to continue"),
    IOPT("max-tokens", FL_CFG_INT, max_tokens, "64", 1,
         FL_CLIENT_INFER_MAX_TOKENS, "tokens to generate"),
    IOPT("temperature", FL_CFG_DOUBLE, temperature, "0.8", 0, 10,
         "sampling temperature (0: greedy)"),
    IOPT("top-p", FL_CFG_DOUBLE, top_p, "0.9", 1e-6, 1, "nucleus sampling"),
    IOPT("top-k", FL_CFG_INT, top_k, "0", 0, 1 << 20,
         "top-k sampling (0: off)"),
    IOPT("seed", FL_CFG_INT, seed, "1", 0, INT64_MAX, "sampling seed"),
    IOPT("json", FL_CFG_BOOL, json, "false", 1, 0, "print a JSON object"),
};
static const fl_cfg_table_t infer_table = {
    infer_table_opts, FL_ARRAY_LEN(infer_table_opts), "client"};

static int cmd_infer(int argc, char **argv)
{
    const char *cmd = "client infer";
    infer_opts_t o;
    memset(&o, 0, sizeof o);
    int rest, rc = fl_cli_parse(cmd, "client infer --prompt TEXT [options]",
                                &infer_table, &o, argc, argv, &rest);
    if (rc >= 0)
        return rc;
    int status = FL_EXIT_FAIL;
    uint8_t pub[32];
    char dir[FL_CLIENT_STORE_PATH_MAX], q8[FL_CLIENT_STORE_PATH_MAX + 16],
        why[160] = "";
    uint64_t version;
    fl_model_t *m = NULL;
    fl_q8_model_t *q = NULL;
    fl_tokenizer_t *tok = NULL;
    fl_buf_t text;
    fl_buf_init(&text, 1 << 24);
    if (!o.signing_pub[0]) {
        fl_cli_error(cmd, "--signing-pub is required: no model is used "
                          "unverified");
        status = FL_EXIT_USAGE;
        goto out;
    }
    if ((rc = fl_artifact_pub_load(o.signing_pub, pub)) < 0) {
        fl_cli_error(cmd, "%s: %s", o.signing_pub, fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_client_store_current(o.state_dir, &version, dir, sizeof dir)) <
        0) {
        fl_cli_error(cmd, "%s: no model yet (%s)", o.state_dir,
                     fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_artifact_verify_dir(dir, pub, NULL, why, sizeof why)) < 0) {
        fl_cli_error(cmd, "model version %llu does not verify: %s",
                     (unsigned long long)version, why);
        goto out;
    }
    /* The published int8 export when there is one, else quantize now. */
    snprintf(q8, sizeof q8, "%s/model.q8", dir);
    if (fl_q8_model_load(q8, &q) < 0) {
        snprintf(q8, sizeof q8, "%s/model.bin", dir);
        if ((rc = fl_model_load(q8, &m)) < 0 ||
            (rc = fl_q8_model_from_model(
                 m, fl_q8_default_group_size(fl_model_config(m)), &q)) < 0) {
            fl_cli_error(cmd, "%s: %s", q8, fl_strerror(rc));
            goto out;
        }
    }
    char terr[512];
    if ((rc = fl_client_tokenizer(o.tokenizer, &tok, terr, sizeof terr)) < 0) {
        fl_cli_error(cmd, "%s", terr);
        goto out;
    }
    if (fl_tokenizer_vocab_size(tok) != fl_q8_model_config(q)->vocab_size) {
        rc = FL_EFORMAT;
        fl_cli_error(cmd,
                     "the model's vocabulary has %d tokens, the tokenizer's "
                     "%d (set tokenizer as in the daemon's configuration)",
                     fl_q8_model_config(q)->vocab_size,
                     fl_tokenizer_vocab_size(tok));
        goto out;
    }
    fl_client_gen_req_t req = {.prompt = o.prompt,
                               .max_tokens = (int)o.max_tokens,
                               .temperature = (float)o.temperature,
                               .top_p = (float)o.top_p,
                               .top_k = (int)o.top_k,
                               .seed = (uint64_t)o.seed};
    fl_client_gen_stats_t st;
    if ((rc = fl_client_generate(q, tok, &req, &text, &st)) < 0) {
        fl_cli_error(cmd, "generation failed: %s", fl_strerror(rc));
        goto out;
    }
    if (o.json) {
        json_t *j = json_pack("{s:s%, s:I, s:i, s:f, s:f}", "text",
                              text.len ? (const char *)text.data : "", text.len,
                              "model_version", (json_int_t)version, "tokens",
                              st.tokens, "first_token_ms", st.first_token_ms,
                              "total_ms", st.total_ms);
        if (!j) { /* not UTF-8: print the bytes escaped by jansson's rules */
            j = json_pack("{s:s, s:I}", "error", "output is not UTF-8",
                          "model_version", (json_int_t)version);
        }
        json_dumpf(j, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        json_decref(j);
    } else {
        fwrite(o.prompt, 1, strlen(o.prompt), stdout);
        fwrite(text.data, 1, text.len, stdout);
        fputc('\n', stdout);
    }
    status = FL_EXIT_OK;
out:
    fl_buf_free(&text);
    fl_tokenizer_free(tok);
    fl_q8_model_free(q);
    fl_model_free(m);
    fl_cfg_free(&infer_table, &o);
    return status;
}

int fl_cmd_client(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "id") == 0)
        return cmd_id(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "infer") == 0)
        return cmd_infer(argc - 1, argv + 1);
    fl_client_config_t c;
    memset(&c, 0, sizeof c);
    int rest, rc = fl_cli_parse("client", usage, &fl_client_config_table, &c,
                                argc, argv, &rest);
    if (rc >= 0)
        return rc;
    if (rest < argc) {
        fl_cli_error("client", "unexpected argument '%s'", argv[rest]);
        fl_cfg_free(&fl_client_config_table, &c);
        return FL_EXIT_USAGE;
    }
    if (set_log(&c) < 0) {
        fl_cfg_free(&fl_client_config_table, &c);
        return FL_EXIT_USAGE;
    }
    char err[512] = "";
    rc = fl_client_run(&c, err, sizeof err);
    if (rc < 0)
        fl_cli_error("client", "%s", err[0] ? err : fl_strerror(rc));
    fl_cfg_free(&fl_client_config_table, &c);
    return rc < 0 ? FL_EXIT_FAIL : FL_EXIT_OK;
}
