/* cli/cmd_model_import.c — flotilla model import: a llama2.c checkpoint and
 * its tokenizer.bin become a flotilla model.bin with a tokenizer.bin beside
 * it (referenced from model.bin by its SHA-256). */
#include "cli/cli.h"
#include "client/client.h"
#include "model/llama2.h"
#include "model/model.h"
#include "model/tokenizer.h"

#include <jansson.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    char *checkpoint;
    char *tokenizer;
    char *out;
    char *tokenizer_out;
    int json;
} import_opts_t;

static const fl_cfg_opt_t import_opts[] = {
    {"checkpoint", FL_CFG_STRING, offsetof(import_opts_t, checkpoint), NULL, 1,
     0, NULL, NULL, "llama2.c checkpoint (version 0 fp32, 1, or 2 Q8_0)"},
    {"tokenizer", FL_CFG_STRING, offsetof(import_opts_t, tokenizer), NULL, 1, 0,
     NULL, NULL, "its tokenizer.bin (llama2.c layout)"},
    {"out", FL_CFG_STRING, offsetof(import_opts_t, out), "model.bin", 1, 0,
     NULL, NULL, "flotilla model file to write"},
    {"tokenizer-out", FL_CFG_STRING, offsetof(import_opts_t, tokenizer_out),
     NULL, 1, 0, NULL, NULL,
     "where to write the tokenizer (default: tokenizer.bin beside --out)"},
    {"json", FL_CFG_BOOL, offsetof(import_opts_t, json), "0", 1, 0, NULL, NULL,
     "print the result as JSON"},
};

static const fl_cfg_table_t import_table = {
    import_opts, FL_ARRAY_LEN(import_opts), "import"};

/* tokenizer.bin beside path: the directory part of path, then the name. */
static int beside(char *out, size_t outlen, const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return fl_path_join(out, outlen, ".", name);
    int n = snprintf(out, outlen, "%.*s/%s", (int)(slash - path), path, name);
    return n < 0 || (size_t)n >= outlen ? FL_ETOOBIG : 0;
}

int fl_cmd_model_import(int argc, char **argv)
{
    static const char *const cmd = "model import";
    import_opts_t o;
    fl_model_t *m = NULL;
    fl_tokenizer_t *tok = NULL;
    fl_llama2_info_t info;
    fl_buf_t tokbin;
    char why[512] = "", tokpath[4096], ref[FL_MODEL_TOKREF_MAX];
    int rest, status = FL_EXIT_FAIL, rc;

    memset(&o, 0, sizeof o);
    fl_buf_init(&tokbin, FL_TOKENIZER_MAX_FILE);
    rc = fl_cli_parse(cmd,
                      "model import --checkpoint FILE --tokenizer FILE "
                      "[--out model.bin] [options]",
                      &import_table, &o, argc, argv, &rest);
    if (rc >= 0) {
        status = rc;
        goto out;
    }
    if (!o.checkpoint || !o.tokenizer || rest != argc) {
        fl_cli_error(cmd, "--checkpoint and --tokenizer are required, and "
                          "nothing else (try --help)");
        status = FL_EXIT_USAGE;
        goto out;
    }
    if (o.tokenizer_out)
        rc = strlen(o.tokenizer_out) < sizeof tokpath
                 ? (snprintf(tokpath, sizeof tokpath, "%s", o.tokenizer_out), 0)
                 : FL_ETOOBIG;
    else
        rc = beside(tokpath, sizeof tokpath, o.out, "tokenizer.bin");
    if (rc) {
        fl_cli_error(cmd, "output path too long");
        status = FL_EXIT_USAGE;
        goto out;
    }
    rc = fl_llama2_import(o.checkpoint, o.tokenizer, &m, &tok, &info, why,
                          sizeof why);
    if (rc) {
        fl_cli_error(cmd, "%s", why[0] ? why : fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_tokenizer_save_buf(tok, &tokbin)) != 0 ||
        (rc = fl_client_tokenizer_ref(tok, ref, sizeof ref)) != 0) {
        fl_cli_error(cmd, "tokenizer: %s", fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_model_set_tokenizer_ref(m, ref)) != 0 ||
        (rc = fl_file_write_atomic(tokpath, tokbin.data, tokbin.len, 0644)) !=
            0) {
        fl_cli_error(cmd, "%s: %s", tokpath, fl_strerror(rc));
        goto out;
    }
    if ((rc = fl_model_save(m, o.out, 0)) != 0) {
        fl_cli_error(cmd, "%s: %s", o.out, fl_strerror(rc));
        goto out;
    }
    const fl_model_config_t *c = fl_model_config(m);
    size_t nparams = fl_model_num_params(m);
    if (o.json) {
        json_t *j = json_pack(
            "{s:s, s:s, s:s, s:i, s:b, s:i, s:{s:i, s:i, s:i, s:i, s:i, s:i, "
            "s:i}, s:I, s:s}",
            "model", o.out, "tokenizer", tokpath, "tokenizer_ref", ref,
            "llama2c_version", info.version, "shared_classifier",
            info.shared_classifier, "group_size", info.group_size, "config",
            "dim", c->dim, "hidden_dim", c->hidden_dim, "n_layers", c->n_layers,
            "n_heads", c->n_heads, "n_kv_heads", c->n_kv_heads, "vocab_size",
            c->vocab_size, "seq_len", c->seq_len, "params", (json_int_t)nparams,
            "checkpoint", o.checkpoint);
        if (!j) {
            fl_cli_error(cmd, "out of memory");
            goto out;
        }
        json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    } else {
        printf("imported %s (llama2.c version %d%s): dim %d, hidden %d, "
               "%d layers, %d heads (%d kv), vocabulary %d, context %d, "
               "%zu parameters\n",
               o.checkpoint, info.version,
               info.version == 2 ? ", Q8_0 dequantized" : "", c->dim,
               c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
               c->vocab_size, c->seq_len, nparams);
        printf("wrote %s and %s\n", o.out, tokpath);
    }
    status = FL_EXIT_OK;
out:
    fl_buf_free(&tokbin);
    fl_model_free(m);
    fl_tokenizer_free(tok);
    fl_cfg_free(&import_table, &o);
    return status;
}
