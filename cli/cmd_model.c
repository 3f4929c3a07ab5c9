/* cli/cmd_model.c — flotilla model <verb>: init, train and eval live here;
 * generate, quantize and import are handed to the files that own them.
 *
 * The tokenizer of a model is named by the reference stored in model.bin:
 * "byte" (the byte-level tokenizer, nothing to load) or "bpe:<SHA-256 of
 * the tokenizer.bin>" (by default the tokenizer.bin beside the model). A
 * tokenizer given with --tokenizer must match that reference. */
#include "cli/cli.h"
#include "model/data.h"
#include "model/model.h"
#include "client/client.h"
#include "model/tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- shared helpers ------------------------------------------------------ */

/* name beside path: the directory part of path, then name. */
static int beside(char *out, size_t outlen, const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return fl_path_join(out, outlen, ".", name);
    int n = snprintf(out, outlen, "%.*s/%s", (int)(slash - path), path, name);
    return n < 0 || (size_t)n >= outlen ? FL_ETOOBIG : 0;
}

/* Opens the tokenizer: path if given ("byte" names the byte-level one),
 * else what the model's reference names (tokenizer.bin beside model_path
 * for "bpe:..."). When want_ref is given the tokenizer must match it. */
static int open_tokenizer(const char *cmd, const char *path,
                          const char *model_path, const char *want_ref,
                          fl_tokenizer_t **tok)
{
    char p[4096], ref[FL_MODEL_TOKREF_MAX];
    int rc;
    *tok = NULL;
    if (!path && (!want_ref || strcmp(want_ref, "byte") == 0))
        path = "byte";
    if (!path) {
        if (beside(p, sizeof p, model_path, "tokenizer.bin") < 0) {
            fl_cli_error(cmd, "path too long");
            return FL_ETOOBIG;
        }
        path = p;
    }
    if (strcmp(path, "byte") == 0)
        rc = fl_tokenizer_new_bytes(tok);
    else
        rc = fl_tokenizer_load(path, tok);
    if (rc < 0) {
        fl_cli_error(cmd, "tokenizer %s: %s", path, fl_strerror(rc));
        return rc;
    }
    if (want_ref) {
        if ((rc = fl_client_tokenizer_ref(*tok, ref, sizeof ref)) < 0) {
            fl_cli_error(cmd, "tokenizer %s: %s", path, fl_strerror(rc));
            goto fail;
        }
        if (strcmp(ref, want_ref) != 0) {
            fl_cli_error(cmd,
                         "tokenizer %s does not match the model (model "
                         "wants %s, this is %s)",
                         path, want_ref, ref);
            rc = FL_EHASH;
            goto fail;
        }
    }
    return 0;
fail:
    fl_tokenizer_free(*tok);
    *tok = NULL;
    return rc;
}

static int load_model(const char *cmd, const char *path, fl_model_t **m)
{
    int rc = fl_model_load(path, m);
    if (rc < 0)
        fl_cli_error(cmd, "%s: %s", path, fl_strerror(rc));
    return rc;
}

typedef struct {
    double loss;   /* mean cross-entropy, nats per token */
    size_t tokens; /* predicted positions */
} eval_result_t;

/* Mean loss over the first max_windows (0: all) non-overlapping windows of
 * a part, B windows per forward pass. */
static int evaluate(fl_model_t *m, const fl_data_t *d, fl_data_part_t part,
                    int B, int T, size_t max_windows, eval_result_t *res)
{
    size_t nw = fl_data_num_windows(d, part, T);
    if (max_windows && nw > max_windows)
        nw = max_windows;
    int32_t *buf = NULL, *tok = NULL, *tgt = NULL;
    double sum = 0;
    size_t count = 0;
    int rc = 0;
    res->loss = NAN;
    res->tokens = 0;
    if (nw == 0)
        return FL_ERANGE;
    buf = fl_malloc((size_t)(T + 1) * sizeof *buf);
    tok = fl_malloc((size_t)B * T * sizeof *tok);
    tgt = fl_malloc((size_t)B * T * sizeof *tgt);
    if (!buf || !tok || !tgt) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (size_t w = 0; w < nw;) {
        int nb = 0;
        for (; nb < B && w < nw; nb++, w++) {
            if ((rc = fl_data_window(d, part, w, T, buf)) < 0)
                goto out;
            memcpy(tok + (size_t)nb * T, buf, (size_t)T * sizeof *buf);
            memcpy(tgt + (size_t)nb * T, buf + 1, (size_t)T * sizeof *buf);
        }
        float l;
        if ((rc = fl_model_forward(m, tok, tgt, nb, T, &l)) < 0)
            goto out;
        sum += (double)l * nb * T;
        count += (size_t)nb * T;
    }
    res->loss = sum / (double)count;
    res->tokens = count;
out:
    fl_free(buf);
    fl_free(tok);
    fl_free(tgt);
    return rc;
}

/* Cross-entropy of the validation ids under the training ids' unigram
 * frequencies (add-one smoothing): the baseline a model must beat. */
static double unigram_loss(const fl_data_t *d, int vocab)
{
    size_t ntr, nva;
    const int32_t *tr = fl_data_tokens(d, FL_DATA_TRAIN, &ntr);
    const int32_t *va = fl_data_tokens(d, FL_DATA_VAL, &nva);
    double *cnt = fl_calloc((size_t)vocab, sizeof *cnt);
    if (!cnt || nva == 0) {
        fl_free(cnt);
        return NAN;
    }
    for (size_t i = 0; i < ntr; i++)
        if (tr[i] >= 0 && tr[i] < vocab)
            cnt[tr[i]] += 1.0;
    double loss = 0;
    for (size_t i = 0; i < nva; i++) {
        double c = (va[i] >= 0 && va[i] < vocab) ? cnt[va[i]] : 0.0;
        loss -= log((c + 1.0) / ((double)ntr + vocab));
    }
    fl_free(cnt);
    return loss / (double)nva;
}

/* Options shared by train and eval that pick and split the data. */
#define DATA_OPTS(type)                                                        \
    {"data", FL_CFG_STRING, offsetof(type, data),           NULL, 1, 0,        \
     NULL,   NULL,          "directory of UTF-8 text files"},                  \
        {"tokenizer",                                                          \
         FL_CFG_STRING,                                                        \
         offsetof(type, tokenizer),                                            \
         NULL,                                                                 \
         1,                                                                    \
         0,                                                                    \
         NULL,                                                                 \
         NULL,                                                                 \
         "tokenizer.bin, or 'byte' (default: the one the model names)"},       \
        {"val-fraction",                                                       \
         FL_CFG_DOUBLE,                                                        \
         offsetof(type, val_fraction),                                         \
         "0.1",                                                                \
         0,                                                                    \
         0.5,                                                                  \
         NULL,                                                                 \
         NULL,                                                                 \
         "share of the text held out for validation"},                         \
        {"split",                                                              \
         FL_CFG_ENUM,                                                          \
         offsetof(type, split),                                                \
         "position",                                                           \
         1,                                                                    \
         0,                                                                    \
         "position|file",                                                      \
         NULL,                                                                 \
         "validation chunks of every file, or whole files"},                   \
        {"split-seed", FL_CFG_INT, offsetof(type, split_seed),                 \
         "0",          0,          9.007199254740992e15,                       \
         NULL,         NULL,       "seed of the train/val split"},             \
        {"max-mb", FL_CFG_INT, offsetof(type, max_mb),                         \
         "256",    1,          65536,                                          \
         NULL,     NULL,       "refuse more text than this (MiB)"},            \
        {"threads", FL_CFG_INT, offsetof(type, threads), "1", 1, 256,          \
         NULL,      NULL,       "OpenBLAS threads"},                           \
    {                                                                          \
        "json", FL_CFG_BOOL, offsetof(type, json), "0", 1, 0, NULL, NULL,      \
            "print the result as JSON"                                         \
    }

static int load_data(const char *cmd, const char *dir, double val_fraction,
                     int split, int64_t split_seed, int64_t max_mb,
                     const fl_tokenizer_t *tok, fl_data_t **d)
{
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.dir = dir;
    o.val_fraction = val_fraction;
    o.split = split ? FL_DATA_SPLIT_FILE : FL_DATA_SPLIT_POSITION;
    o.seed = (uint64_t)split_seed;
    o.max_bytes = (size_t)max_mb << 20;
    int rc = fl_data_load(&o, tok, d);
    if (rc < 0)
        fl_cli_error(cmd, "%s: %s", dir, fl_strerror(rc));
    return rc;
}

/* ---- init ---------------------------------------------------------------- */

typedef struct {
    char *out;
    char *tokenizer;
    int64_t dim, hidden_dim, layers, heads, kv_heads, vocab_size, seq_len;
    int64_t lora_rank, seed;
    double lora_alpha;
    int untied, force, json;
} init_opts_t;

static const fl_cfg_opt_t init_opts[] = {
    {"out", FL_CFG_STRING, offsetof(init_opts_t, out), "model.bin", 1, 0, NULL,
     NULL, "model file to write"},
    {"tokenizer", FL_CFG_STRING, offsetof(init_opts_t, tokenizer), "byte", 1, 0,
     NULL, NULL, "tokenizer.bin the model will use, or 'byte'"},
    {"dim", FL_CFG_INT, offsetof(init_opts_t, dim), "128", 2, FL_MODEL_MAX_DIM,
     NULL, NULL, "model width"},
    {"hidden-dim", FL_CFG_INT, offsetof(init_opts_t, hidden_dim), "384", 1,
     FL_MODEL_MAX_HIDDEN, NULL, NULL, "SwiGLU inner width"},
    {"layers", FL_CFG_INT, offsetof(init_opts_t, layers), "4", 1,
     FL_MODEL_MAX_LAYERS, NULL, NULL, "transformer blocks"},
    {"heads", FL_CFG_INT, offsetof(init_opts_t, heads), "4", 1,
     FL_MODEL_MAX_HEADS, NULL, NULL, "attention heads"},
    {"kv-heads", FL_CFG_INT, offsetof(init_opts_t, kv_heads), "2", 1,
     FL_MODEL_MAX_HEADS, NULL, NULL,
     "key/value heads (fewer than heads: grouped-query attention)"},
    {"vocab-size", FL_CFG_INT, offsetof(init_opts_t, vocab_size), "0", 0,
     FL_MODEL_MAX_VOCAB, NULL, NULL, "0: the tokenizer's vocabulary size"},
    {"seq-len", FL_CFG_INT, offsetof(init_opts_t, seq_len), "128", 1,
     FL_MODEL_MAX_SEQ, NULL, NULL, "longest context"},
    {"untied", FL_CFG_BOOL, offsetof(init_opts_t, untied), "0", 1, 0, NULL,
     NULL, "separate output head instead of the tied embedding"},
    {"lora-rank", FL_CFG_INT, offsetof(init_opts_t, lora_rank), "0", 0,
     FL_MODEL_MAX_RANK, NULL, NULL, "LoRA adapters of this rank (0: none)"},
    {"lora-alpha", FL_CFG_DOUBLE, offsetof(init_opts_t, lora_alpha), "16", 1e-6,
     1e5, NULL, NULL, "LoRA scale numerator (scale = alpha / rank)"},
    {"seed", FL_CFG_INT, offsetof(init_opts_t, seed), "1", 0,
     9.007199254740992e15, NULL, NULL, "initialisation seed"},
    {"force", FL_CFG_BOOL, offsetof(init_opts_t, force), "0", 1, 0, NULL, NULL,
     "overwrite an existing file"},
    {"json", FL_CFG_BOOL, offsetof(init_opts_t, json), "0", 1, 0, NULL, NULL,
     "print the result as JSON"},
};
static const fl_cfg_table_t init_table = {init_opts, FL_ARRAY_LEN(init_opts),
                                          "init"};

static int cmd_init(int argc, char **argv)
{
    static const char *const cmd = "model init";
    init_opts_t o;
    fl_tokenizer_t *tok = NULL;
    fl_model_t *m = NULL;
    char ref[FL_MODEL_TOKREF_MAX], why[256];
    int rest, status = FL_EXIT_FAIL, rc;
    memset(&o, 0, sizeof o);
    rc = fl_cli_parse(cmd, "model init [--out model.bin] [options]",
                      &init_table, &o, argc, argv, &rest);
    if (rc >= 0) {
        status = rc;
        goto out;
    }
    if (rest != argc) {
        fl_cli_error(cmd, "unexpected argument '%s'", argv[rest]);
        status = FL_EXIT_USAGE;
        goto out;
    }
    if (!o.force && access(o.out, F_OK) == 0) {
        fl_cli_error(cmd, "%s exists (use --force to overwrite)", o.out);
        goto out;
    }
    if (open_tokenizer(cmd, o.tokenizer, o.out, NULL, &tok) < 0 ||
        fl_client_tokenizer_ref(tok, ref, sizeof ref) < 0)
        goto out;
    fl_model_config_t c;
    fl_model_config_default(&c);
    c.dim = (int32_t)o.dim;
    c.hidden_dim = (int32_t)o.hidden_dim;
    c.n_layers = (int32_t)o.layers;
    c.n_heads = (int32_t)o.heads;
    c.n_kv_heads = (int32_t)o.kv_heads;
    c.vocab_size =
        o.vocab_size ? (int32_t)o.vocab_size : fl_tokenizer_vocab_size(tok);
    c.seq_len = (int32_t)o.seq_len;
    c.tied_output = !o.untied;
    c.lora_rank = (int32_t)o.lora_rank;
    c.lora_alpha = (float)o.lora_alpha;
    if (c.vocab_size < fl_tokenizer_vocab_size(tok)) {
        fl_cli_error(cmd, "vocab-size %d is smaller than the tokenizer's %d",
                     c.vocab_size, fl_tokenizer_vocab_size(tok));
        status = FL_EXIT_USAGE;
        goto out;
    }
    if (fl_model_config_check(&c, why, sizeof why) < 0) {
        fl_cli_error(cmd, "bad configuration: %s", why);
        status = FL_EXIT_USAGE;
        goto out;
    }
    if ((rc = fl_model_new(&c, &m)) < 0) {
        fl_cli_error(cmd, "%s", fl_strerror(rc));
        goto out;
    }
    fl_model_init_weights(m, (uint64_t)o.seed);
    fl_model_set_tokenizer_ref(m, ref);
    if ((rc = fl_model_save(m, o.out, 0)) < 0) {
        fl_cli_error(cmd, "%s: %s", o.out, fl_strerror(rc));
        goto out;
    }
    if (o.json) {
        json_t *j = json_pack(
            "{s:s, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:i}, "
            "s:I, s:I}",
            "model", o.out, "tokenizer_ref", ref, "config", "dim", c.dim,
            "hidden_dim", c.hidden_dim, "n_layers", c.n_layers, "n_heads",
            c.n_heads, "n_kv_heads", c.n_kv_heads, "vocab_size", c.vocab_size,
            "seq_len", c.seq_len, "tied_output", c.tied_output, "lora_rank",
            c.lora_rank, "params", (json_int_t)fl_model_num_params(m),
            "base_params", (json_int_t)fl_model_config_num_base(&c));
        if (j)
            json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    } else {
        printf("%s: %zu trainable parameters (dim %d, %d layers, %d/%d "
               "heads, vocab %d, context %d, tokenizer %s)\n",
               o.out, fl_model_num_params(m), c.dim, c.n_layers, c.n_heads,
               c.n_kv_heads, c.vocab_size, c.seq_len, ref);
    }
    status = FL_EXIT_OK;
out:
    fl_model_free(m);
    fl_tokenizer_free(tok);
    fl_cfg_free(&init_table, &o);
    return status;
}

/* ---- train --------------------------------------------------------------- */

/* SIGINT/SIGTERM during training: finish the step, save, stop. */
static volatile sig_atomic_t train_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    train_stop = 1;
}

typedef struct {
    char *model, *out, *data, *tokenizer;
    double val_fraction, lr, min_lr, weight_decay, grad_clip, momentum, beta1,
        beta2, lora_alpha;
    int split, optimizer, json, save_optim;
    int64_t split_seed, max_mb, threads, steps, batch, seq_len, warmup;
    int64_t eval_every, eval_windows, checkpoint_every, seed, lora_rank;
} train_opts_t;

static const fl_cfg_opt_t train_opts[] = {
    {"model", FL_CFG_STRING, offsetof(train_opts_t, model), "model.bin", 1, 0,
     NULL, NULL, "model to train (from flotilla model init or import)"},
    {"out", FL_CFG_STRING, offsetof(train_opts_t, out), NULL, 1, 0, NULL, NULL,
     "where to write the trained model and checkpoints (default: --model)"},
    DATA_OPTS(train_opts_t),
    {"steps", FL_CFG_INT, offsetof(train_opts_t, steps), "1000", 1, 1e9, NULL,
     NULL, "optimizer steps in total (a resumed run continues to this)"},
    {"batch", FL_CFG_INT, offsetof(train_opts_t, batch), "8", 1, 4096, NULL,
     NULL, "windows per step"},
    {"seq-len", FL_CFG_INT, offsetof(train_opts_t, seq_len), "0", 0,
     FL_MODEL_MAX_SEQ, NULL, NULL, "tokens per window (0: the model's)"},
    {"optimizer", FL_CFG_ENUM, offsetof(train_opts_t, optimizer), "adamw", 1, 0,
     "adamw|sgd", NULL, "AdamW or SGD with momentum"},
    {"lr", FL_CFG_DOUBLE, offsetof(train_opts_t, lr), "3e-3", 0, 10, NULL, NULL,
     "peak learning rate"},
    {"min-lr", FL_CFG_DOUBLE, offsetof(train_opts_t, min_lr), "3e-4", 0, 10,
     NULL, NULL, "learning rate at the end of the cosine decay"},
    {"warmup", FL_CFG_INT, offsetof(train_opts_t, warmup), "50", 0, 1e9, NULL,
     NULL, "steps of linear warmup"},
    {"weight-decay", FL_CFG_DOUBLE, offsetof(train_opts_t, weight_decay), "0.1",
     0, 10, NULL, NULL, "decoupled weight decay (not on norm gains)"},
    {"grad-clip", FL_CFG_DOUBLE, offsetof(train_opts_t, grad_clip), "1", 0, 1e6,
     NULL, NULL, "clip the gradient's L2 norm to this (0: off)"},
    {"momentum", FL_CFG_DOUBLE, offsetof(train_opts_t, momentum), "0.9", 0,
     0.9999, NULL, NULL, "SGD momentum"},
    {"beta1", FL_CFG_DOUBLE, offsetof(train_opts_t, beta1), "0.9", 0, 0.9999,
     NULL, NULL, "AdamW beta1"},
    {"beta2", FL_CFG_DOUBLE, offsetof(train_opts_t, beta2), "0.95", 0, 0.99999,
     NULL, NULL, "AdamW beta2"},
    {"eval-every", FL_CFG_INT, offsetof(train_opts_t, eval_every), "100", 0,
     1e9, NULL, NULL, "validation loss every this many steps (0: at the end)"},
    {"eval-windows", FL_CFG_INT, offsetof(train_opts_t, eval_windows), "64", 0,
     1e9, NULL, NULL, "validation windows per evaluation (0: all)"},
    {"checkpoint-every", FL_CFG_INT, offsetof(train_opts_t, checkpoint_every),
     "0", 0, 1e9, NULL, NULL,
     "write --out every this many steps (0: only at the end)"},
    {"save-optim", FL_CFG_BOOL, offsetof(train_opts_t, save_optim), "1", 1, 0,
     NULL, NULL, "keep the optimizer state in the file (to resume)"},
    {"lora-rank", FL_CFG_INT, offsetof(train_opts_t, lora_rank), "0", 0,
     FL_MODEL_MAX_RANK, NULL, NULL,
     "add LoRA adapters of this rank and train only them"},
    {"lora-alpha", FL_CFG_DOUBLE, offsetof(train_opts_t, lora_alpha), "16",
     1e-6, 1e5, NULL, NULL, "LoRA scale numerator"},
    {"seed", FL_CFG_INT, offsetof(train_opts_t, seed), "1", 0,
     9.007199254740992e15, NULL, NULL, "seed of the batch sampling"},
};
static const fl_cfg_table_t train_table = {train_opts, FL_ARRAY_LEN(train_opts),
                                           "train"};

static int cmd_train(int argc, char **argv)
{
    static const char *const cmd = "model train";
    train_opts_t o;
    fl_model_t *m = NULL;
    fl_tokenizer_t *tok = NULL;
    fl_data_t *d = NULL;
    int32_t *buf = NULL, *xt = NULL, *yt = NULL;
    json_t *hist = NULL;
    int rest, status = FL_EXIT_FAIL, rc;
    memset(&o, 0, sizeof o);
    rc = fl_cli_parse(cmd,
                      "model train --data DIR [--model model.bin] [options]",
                      &train_table, &o, argc, argv, &rest);
    if (rc >= 0) {
        status = rc;
        goto out;
    }
    if (!o.data || rest != argc) {
        fl_cli_error(cmd, "--data DIR is required, and nothing else "
                          "(try --help)");
        status = FL_EXIT_USAGE;
        goto out;
    }
    const char *outp = o.out ? o.out : o.model;
    fl_model_set_threads((int)o.threads);
    if (load_model(cmd, o.model, &m) < 0 ||
        open_tokenizer(cmd, o.tokenizer, o.model, fl_model_tokenizer_ref(m),
                       &tok) < 0)
        goto out;
    const fl_model_config_t *c = fl_model_config(m);
    if (fl_tokenizer_vocab_size(tok) > c->vocab_size) {
        fl_cli_error(cmd,
                     "the tokenizer's vocabulary (%d) exceeds the "
                     "model's (%d)",
                     fl_tokenizer_vocab_size(tok), c->vocab_size);
        goto out;
    }
    if (o.lora_rank > 0) {
        if (c->lora_rank > 0) {
            fl_cli_error(cmd, "the model already has LoRA adapters");
            status = FL_EXIT_USAGE;
            goto out;
        }
        if ((rc = fl_model_lora_add(m, (int)o.lora_rank, (float)o.lora_alpha,
                                    (uint64_t)o.seed)) < 0) {
            fl_cli_error(cmd, "LoRA: %s", fl_strerror(rc));
            goto out;
        }
    }
    int T = o.seq_len ? (int)o.seq_len : c->seq_len, B = (int)o.batch;
    if (T > c->seq_len) {
        fl_cli_error(cmd, "seq-len %d exceeds the model's context %d", T,
                     c->seq_len);
        status = FL_EXIT_USAGE;
        goto out;
    }
    if (load_data(cmd, o.data, o.val_fraction, o.split, o.split_seed, o.max_mb,
                  tok, &d) < 0)
        goto out;
    size_t ntr, nva;
    fl_data_tokens(d, FL_DATA_TRAIN, &ntr);
    fl_data_tokens(d, FL_DATA_VAL, &nva);
    if (ntr < (size_t)T + 1) {
        fl_cli_error(cmd,
                     "%s: only %zu training tokens, fewer than one "
                     "window of %d",
                     o.data, ntr, T + 1);
        goto out;
    }
    int have_val = nva >= (size_t)T + 1;
    double unigram = have_val ? unigram_loss(d, c->vocab_size) : NAN;

    fl_model_optim_t opt;
    fl_model_optim_default(&opt);
    opt.kind = o.optimizer == 1 ? FL_MODEL_SGD : FL_MODEL_ADAMW;
    opt.lr = (float)o.lr;
    opt.min_lr = (float)o.min_lr;
    opt.warmup = o.warmup;
    opt.total = o.steps;
    opt.weight_decay = (float)o.weight_decay;
    opt.grad_clip = (float)o.grad_clip;
    opt.momentum = (float)o.momentum;
    opt.beta1 = (float)o.beta1;
    opt.beta2 = (float)o.beta2;

    buf = fl_malloc((size_t)B * (T + 1) * sizeof *buf);
    xt = fl_malloc((size_t)B * T * sizeof *xt);
    yt = fl_malloc((size_t)B * T * sizeof *yt);
    hist = json_array();
    if (!buf || !xt || !yt || !hist) {
        fl_cli_error(cmd, "out of memory");
        goto out;
    }
    int64_t start = fl_model_step_count(m);
    if (!o.json)
        printf("training %zu parameters%s on %zu tokens (%zu validation) "
               "from %zu files; steps %lld..%lld, batch %d x %d; unigram "
               "baseline %.4f\n",
               fl_model_num_params(m),
               fl_model_config(m)->lora_rank ? " (LoRA adapters)" : "", ntr,
               nva, fl_data_num_files(d), (long long)start, (long long)o.steps,
               B, T, unigram);
    fl_rng_t rng;
    double t0 = fl_time_mono_s(), tlast = t0, loss_acc = 0;
    int nacc = 0, tty = !o.json && isatty(STDOUT_FILENO);
    eval_result_t ev = {NAN, 0};
    float loss = NAN;
    int64_t step = start;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    train_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    for (; step < o.steps && !train_stop; step++) {
        /* Each step's batch depends on (seed, step) only, so a resumed run
         * draws what the uninterrupted one would have drawn. */
        uint64_t sm = (uint64_t)o.seed * 0x9e3779b97f4a7c15ull + (uint64_t)step;
        fl_rng_seed(&rng, fl_splitmix64(&sm));
        if ((rc = fl_data_batch(d, FL_DATA_TRAIN, &rng, B, T, buf)) < 0)
            goto fail;
        for (int b = 0; b < B; b++) {
            memcpy(xt + (size_t)b * T, buf + (size_t)b * (T + 1),
                   (size_t)T * sizeof *buf);
            memcpy(yt + (size_t)b * T, buf + (size_t)b * (T + 1) + 1,
                   (size_t)T * sizeof *buf);
        }
        double ts = fl_time_mono_s();
        if ((rc = fl_model_train_step(m, &opt, xt, yt, B, T, &loss)) < 0)
            goto fail;
        if (!isfinite(loss)) {
            fl_cli_error(cmd, "step %lld: the loss is not finite (lower --lr)",
                         (long long)step);
            goto out;
        }
        loss_acc += loss;
        nacc++;
        int last = step + 1 == o.steps;
        if (last || (o.eval_every && (step + 1) % o.eval_every == 0)) {
            ev.loss = NAN;
            if (have_val && (rc = evaluate(m, d, FL_DATA_VAL, B, T,
                                           (size_t)o.eval_windows, &ev)) < 0)
                goto fail;
            double now = fl_time_mono_s();
            double tps = (double)nacc * B * T / (now - tlast);
            json_t *e = json_pack(
                "{s:I, s:f, s:f, s:f, s:f}", "step", (json_int_t)(step + 1),
                "train_loss", loss_acc / nacc, "val_loss", ev.loss, "lr",
                (double)fl_model_lr_at(&opt, step), "tokens_per_s", tps);
            if (e)
                json_array_append_new(hist, e);
            if (!o.json) {
                printf("%sstep %6lld/%lld  train %.4f  val %.4f  lr %.2e  "
                       "%.0f tok/s\n",
                       tty ? "\r" : "", (long long)(step + 1),
                       (long long)o.steps, loss_acc / nacc, ev.loss,
                       (double)fl_model_lr_at(&opt, step), tps);
                fflush(stdout);
            }
            loss_acc = 0;
            nacc = 0;
            tlast = fl_time_mono_s();
        }
        if (tty) /* a progress line, overwritten by the next */
            printf("\rstep %6lld/%lld  loss %.4f  %.0f tok/s ",
                   (long long)(step + 1), (long long)o.steps, loss,
                   (double)B * T / (fl_time_mono_s() - ts + 1e-9));
        if (!last && o.checkpoint_every &&
            (step + 1) % o.checkpoint_every == 0 &&
            (rc = fl_model_save(m, outp,
                                o.save_optim ? FL_MODEL_SAVE_OPTIM : 0)) < 0) {
            fl_cli_error(cmd, "%s: %s", outp, fl_strerror(rc));
            goto out;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (tty)
        printf("\r%60s\r", "");
    if ((rc = fl_model_save(m, outp, o.save_optim ? FL_MODEL_SAVE_OPTIM : 0)) <
        0) {
        fl_cli_error(cmd, "%s: %s", outp, fl_strerror(rc));
        goto out;
    }
    if (step < o.steps) {
        fl_cli_error(cmd,
                     "interrupted after step %lld; saved to %s (run again to "
                     "resume)",
                     (long long)step, outp);
        goto out;
    }
    double secs = fl_time_mono_s() - t0;
    if (o.json) {
        json_t *j = json_pack(
            "{s:s, s:I, s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:f, s:O}", "model",
            outp, "steps", (json_int_t)o.steps, "params",
            (json_int_t)fl_model_num_params(m), "train_loss", (double)loss,
            "val_loss", ev.loss, "val_perplexity", exp(ev.loss), "unigram_loss",
            unigram, "train_tokens", (json_int_t)ntr, "val_tokens",
            (json_int_t)nva, "seconds", secs, "history", hist);
        if (j)
            json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    } else {
        printf("wrote %s: val loss %.4f (perplexity %.2f), unigram baseline "
               "%.4f, %.1f s\n",
               outp, ev.loss, exp(ev.loss), unigram, secs);
    }
    status = FL_EXIT_OK;
    goto out;
fail:
    fl_cli_error(cmd, "%s", fl_strerror(rc));
out:
    json_decref(hist);
    fl_free(buf);
    fl_free(xt);
    fl_free(yt);
    fl_data_free(d);
    fl_tokenizer_free(tok);
    fl_model_free(m);
    fl_cfg_free(&train_table, &o);
    return status;
}

/* ---- eval ---------------------------------------------------------------- */

typedef struct {
    char *model, *data, *tokenizer;
    double val_fraction;
    int split, part, json;
    int64_t split_seed, max_mb, threads, batch, seq_len, max_windows;
} eval_opts_t;

static const fl_cfg_opt_t eval_opts[] = {
    {"model", FL_CFG_STRING, offsetof(eval_opts_t, model), "model.bin", 1, 0,
     NULL, NULL, "model to evaluate"},
    DATA_OPTS(eval_opts_t),
    {"part", FL_CFG_ENUM, offsetof(eval_opts_t, part), "val", 1, 0, "train|val",
     NULL, "which side of the split to evaluate"},
    {"batch", FL_CFG_INT, offsetof(eval_opts_t, batch), "8", 1, 4096, NULL,
     NULL, "windows per forward pass"},
    {"seq-len", FL_CFG_INT, offsetof(eval_opts_t, seq_len), "0", 0,
     FL_MODEL_MAX_SEQ, NULL, NULL, "tokens per window (0: the model's)"},
    {"max-windows", FL_CFG_INT, offsetof(eval_opts_t, max_windows), "0", 0,
     1e12, NULL, NULL, "evaluate at most this many windows (0: all)"},
};
static const fl_cfg_table_t eval_table = {eval_opts, FL_ARRAY_LEN(eval_opts),
                                          "eval"};

static int cmd_eval(int argc, char **argv)
{
    static const char *const cmd = "model eval";
    eval_opts_t o;
    fl_model_t *m = NULL;
    fl_tokenizer_t *tok = NULL;
    fl_data_t *d = NULL;
    int rest, status = FL_EXIT_FAIL, rc;
    memset(&o, 0, sizeof o);
    rc =
        fl_cli_parse(cmd, "model eval --data DIR [--model model.bin] [options]",
                     &eval_table, &o, argc, argv, &rest);
    if (rc >= 0) {
        status = rc;
        goto out;
    }
    if (!o.data || rest != argc) {
        fl_cli_error(cmd, "--data DIR is required, and nothing else "
                          "(try --help)");
        status = FL_EXIT_USAGE;
        goto out;
    }
    fl_model_set_threads((int)o.threads);
    if (load_model(cmd, o.model, &m) < 0 ||
        open_tokenizer(cmd, o.tokenizer, o.model, fl_model_tokenizer_ref(m),
                       &tok) < 0)
        goto out;
    const fl_model_config_t *c = fl_model_config(m);
    int T = o.seq_len ? (int)o.seq_len : c->seq_len;
    if (T > c->seq_len) {
        fl_cli_error(cmd, "seq-len %d exceeds the model's context %d", T,
                     c->seq_len);
        status = FL_EXIT_USAGE;
        goto out;
    }
    if (load_data(cmd, o.data, o.val_fraction, o.split, o.split_seed, o.max_mb,
                  tok, &d) < 0)
        goto out;
    fl_data_part_t part = o.part == 1 ? FL_DATA_VAL : FL_DATA_TRAIN;
    eval_result_t ev;
    double t0 = fl_time_mono_s();
    rc = evaluate(m, d, part, (int)o.batch, T, (size_t)o.max_windows, &ev);
    if (rc == FL_ERANGE) {
        fl_cli_error(cmd, "%s: fewer than %d tokens in the %s part", o.data,
                     T + 1, o.part == 1 ? "val" : "train");
        goto out;
    }
    if (rc < 0) {
        fl_cli_error(cmd, "%s", fl_strerror(rc));
        goto out;
    }
    double secs = fl_time_mono_s() - t0;
    double unigram = unigram_loss(d, c->vocab_size);
    if (o.json) {
        json_t *j = json_pack("{s:s, s:s, s:f, s:f, s:I, s:f, s:f}", "model",
                              o.model, "part", o.part == 1 ? "val" : "train",
                              "loss", ev.loss, "perplexity", exp(ev.loss),
                              "tokens", (json_int_t)ev.tokens, "unigram_loss",
                              unigram, "seconds", secs);
        if (j)
            json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    } else {
        printf("%s on %s (%s, %zu tokens): loss %.4f, perplexity %.3f; "
               "unigram baseline %.4f\n",
               o.model, o.data, o.part == 1 ? "val" : "train", ev.tokens,
               ev.loss, exp(ev.loss), unigram);
    }
    status = FL_EXIT_OK;
out:
    fl_data_free(d);
    fl_tokenizer_free(tok);
    fl_model_free(m);
    fl_cfg_free(&eval_table, &o);
    return status;
}

int fl_cmd_model(int argc, char **argv)
{
    if (argc >= 2) {
        if (strcmp(argv[1], "init") == 0)
            return cmd_init(argc - 1, argv + 1);
        if (strcmp(argv[1], "train") == 0)
            return cmd_train(argc - 1, argv + 1);
        if (strcmp(argv[1], "eval") == 0)
            return cmd_eval(argc - 1, argv + 1);
        if (strcmp(argv[1], "generate") == 0)
            return fl_cmd_model_generate(argc - 1, argv + 1);
        if (strcmp(argv[1], "quantize") == 0)
            return fl_cmd_model_quantize(argc - 1, argv + 1);
        if (strcmp(argv[1], "import") == 0)
            return fl_cmd_model_import(argc - 1, argv + 1);
    }
    fl_cli_error("model", "usage: flotilla model init|train|eval|generate|"
                          "quantize|import [options]");
    return FL_EXIT_USAGE;
}
