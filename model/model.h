/*
 * model/model.h — the on-device transformer: configuration, the flat
 * parameter vector with named views, fp32 forward and backward, optimizers,
 * LoRA adapters and the model.bin file format.
 *
 * The architecture is a Llama-style decoder: token embedding, per layer
 * RMSNorm -> causal multi-head attention with rotary position embeddings
 * (grouped-query heads when n_kv_heads < n_heads) -> residual, RMSNorm ->
 * SwiGLU MLP -> residual; a final RMSNorm and an output head that is tied
 * to the embedding or separate. Weights are laid out as in llama2.c's
 * checkpoints (same order, same shapes, matrices stored (out, in)
 * row-major), so importing those files and exporting int8 copies are plain
 * memcpy's.
 *
 * The rest of flotilla sees the trainable model as ONE flat float vector
 * (fl_model_params / fl_model_num_params): the base weights, or the LoRA
 * adapters when LoRA is on (then the base stays frozen). Parameters,
 * gradients and optimizer state each live in one allocation.
 *
 * Ownership: pointer arguments are borrowed unless marked "taken" or
 * "returned owned". Pointers returned by accessors point into the model
 * and stay valid until fl_model_free (or fl_model_lora_* changes the
 * layout). Thread-safety: one model is used by one thread at a time;
 * distinct models are independent, except fl_model_set_threads, which sets
 * the process-wide OpenBLAS thread count. Nothing here logs or prints.
 */
#ifndef FL_MODEL_H
#define FL_MODEL_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

/* ---- configuration --------------------------------------------------------
 * The default "tiny" configuration (fl_model_config_default) is
 *   dim 128, hidden 384, 4 layers, 4 heads (2 kv heads), vocab 259 (the
 *   byte-level tokenizer), seq_len 128, tied output head: 820,736 params.
 * Chosen by measurement (one AdamW step, 1 thread, CPU time, on the 2-core
 * AVX-512 x86 VM the project is developed on; B x T = 2 x 128 tokens):
 *   dim  96, 3 layers, 0.33 M params: ~10 ms/step
 *   dim 128, 4 layers, 0.82 M params: ~21 ms/step
 *   dim 192, 4 layers, 1.62 M params: ~38 ms/step
 *   dim 256, 4 layers, 2.97 M params: ~63 ms/step
 * A client's local round (10 steps of 256 tokens) thus takes ~0.2 s of CPU
 * here; edge ARM boards are 5-10x slower than this core, the machine is
 * shared with the client's other work, and `flotilla sim` runs many
 * clients on one machine, so this keeps a round at "a few seconds" on a
 * device. Smaller models stop paying off: dim 128 brings the fortunes
 * validation loss far below the unigram baseline within a few hundred
 * steps (2.11 vs 3.33 nats after 600 steps of 8 x 128, about 60 s of CPU),
 * and its shapes suit the int8 kernels (multiples of 32). */
typedef struct {
    int32_t dim;        /* model width */
    int32_t hidden_dim; /* SwiGLU inner width */
    int32_t n_layers;
    int32_t n_heads;     /* dim % n_heads == 0 */
    int32_t n_kv_heads;  /* n_heads % n_kv_heads == 0; < n_heads: GQA */
    int32_t vocab_size;  /* 259 for the byte-level tokenizer */
    int32_t seq_len;     /* longest context (RoPE positions) */
    int32_t tied_output; /* 1: the output head is token_embedding */
    int32_t lora_rank;   /* 0: full training; > 0: LoRA adapters */
    float lora_alpha;    /* adapter scale is lora_alpha / lora_rank */
    float rope_theta;    /* 10000 */
    float norm_eps;      /* RMSNorm epsilon, 1e-5 */
} fl_model_config_t;

/* Limits that make a config (from a file or a peer) sane. */
#define FL_MODEL_MAX_DIM    8192
#define FL_MODEL_MAX_HIDDEN 32768
#define FL_MODEL_MAX_LAYERS 128
#define FL_MODEL_MAX_HEADS  256
#define FL_MODEL_MAX_VOCAB  (1 << 20)
#define FL_MODEL_MAX_SEQ    (1 << 16)
#define FL_MODEL_MAX_RANK   256
#define FL_MODEL_MAX_PARAMS ((size_t)1 << 31) /* floats, base + adapters */

/* Fills in the tiny default described above. */
void fl_model_config_default(fl_model_config_t *cfg);
/* 0, or FL_ERANGE for a dimension outside the limits or an inconsistent
 * shape (dim % n_heads, n_heads % n_kv_heads, odd head size, rank > dim).
 * why (may be NULL) receives a reason. */
int fl_model_config_check(const fl_model_config_t *cfg, char *why,
                          size_t whylen);
/* Number of base / adapter floats for a valid config. */
size_t fl_model_config_num_base(const fl_model_config_t *cfg);
size_t fl_model_config_num_lora(const fl_model_config_t *cfg);

/* ---- named views --------------------------------------------------------
 * Views into the base weights, in llama2.c order. L = n_layers,
 * kv_dim = dim * n_kv_heads / n_heads, matrices (out, in) row-major. */
typedef struct {
    float *token_embedding; /* [vocab, dim] */
    float *rms_att;         /* [L, dim] */
    float *wq;              /* [L, dim, dim] */
    float *wk;              /* [L, kv_dim, dim] */
    float *wv;              /* [L, kv_dim, dim] */
    float *wo;              /* [L, dim, dim] */
    float *rms_ffn;         /* [L, dim] */
    float *w1;              /* [L, hidden, dim] (gate) */
    float *w2;              /* [L, dim, hidden] (down) */
    float *w3;              /* [L, hidden, dim] (up) */
    float *rms_final;       /* [dim] */
    float *wcls; /* [vocab, dim]; == token_embedding when tied_output */
} fl_model_weights_t;

/* The projections that carry LoRA adapters. */
typedef enum {
    FL_MODEL_WQ = 0,
    FL_MODEL_WK,
    FL_MODEL_WV,
    FL_MODEL_WO,
    FL_MODEL_W1,
    FL_MODEL_W2,
    FL_MODEL_W3,
    FL_MODEL_NPROJ
} fl_model_proj_t;

/* Adapter views: W_eff = W + (alpha / rank) * B A, for each projection
 * W [L, out, in]: a[p] is A [L, rank, in], b[p] is B [L, out, rank].
 * Memory order: for p in FL_MODEL_WQ..W3: A then B. B starts at zero. */
typedef struct {
    float *a[FL_MODEL_NPROJ];
    float *b[FL_MODEL_NPROJ];
} fl_model_lora_t;

/* ---- the model handle ---------------------------------------------------- */
typedef struct fl_model fl_model_t;

/* Allocates a model for cfg (copied) with all weights zero. *out is
 * returned owned. FL_ERANGE for a bad config, FL_ENOMEM. */
int fl_model_new(const fl_model_config_t *cfg, fl_model_t **out);
void fl_model_free(fl_model_t *m); /* NULL is a no-op */
/* A deep copy: weights, adapters, optimizer state (not activations). */
int fl_model_clone(const fl_model_t *m, fl_model_t **out);

/* Random initialisation from seed, deterministic: matrices and embedding
 * N(0, 0.02), wo and w2 N(0, 0.02 / sqrt(2 L)), norms 1, LoRA A
 * N(0, 1/sqrt(in)), LoRA B 0. Resets the optimizer state. */
void fl_model_init_weights(fl_model_t *m, uint64_t seed);

const fl_model_config_t *fl_model_config(const fl_model_t *m);
/* Base weight views; writable (import, tests). With LoRA on these are the
 * frozen base. */
fl_model_weights_t *fl_model_weights(fl_model_t *m);
/* Adapter views, or NULL when lora_rank == 0. */
fl_model_lora_t *fl_model_lora(fl_model_t *m);

/* The trainable vector and its gradient, both [fl_model_num_params(m)]. */
float *fl_model_params(fl_model_t *m);
float *fl_model_grads(fl_model_t *m);
size_t fl_model_num_params(const fl_model_t *m);
/* The base weights as one vector [fl_model_config_num_base(cfg)]. */
float *fl_model_base_params(fl_model_t *m);

/* Turns LoRA on for a model without adapters (e.g. an imported base):
 * rank in 1..min(dim, hidden), adapters initialised from seed. The
 * trainable vector becomes the adapters; optimizer state is reset. */
int fl_model_lora_add(fl_model_t *m, int rank, float alpha, uint64_t seed);
/* Folds the adapters into the base weights and turns LoRA off (for export
 * and int8 quantization). No-op without adapters. */
int fl_model_lora_merge(fl_model_t *m);

/* Tokenizer reference stored in model.bin: "byte" for the byte-level
 * tokenizer, otherwise e.g. "bpe:<sha256 of tokenizer.bin>". At most
 * FL_MODEL_TOKREF_MAX - 1 bytes; longer strings give FL_ETOOBIG. */
#define FL_MODEL_TOKREF_MAX 256
int fl_model_set_tokenizer_ref(fl_model_t *m, const char *ref);
const char *fl_model_tokenizer_ref(const fl_model_t *m);

/* ---- forward and backward -----------------------------------------------
 * tokens and targets are [B, T] row-major, every id in [0, vocab) and
 * T <= seq_len (else FL_ERANGE). Activations are allocated on the first
 * call for a larger B*T and kept. forward computes the logits; with
 * targets != NULL also the mean cross-entropy over the B*T positions
 * (*loss may be NULL). A target of -1 is ignored (not counted in the
 * mean). */
int fl_model_forward(fl_model_t *m, const int32_t *tokens,
                     const int32_t *targets, int B, int T, float *loss);
/* Logits of the last forward: [B, T, vocab]. */
const float *fl_model_logits(const fl_model_t *m);
/* Sets the trainable gradient to zero. */
void fl_model_zero_grad(fl_model_t *m);
/* Gradient of the last forward's mean loss, ADDED to fl_model_grads
 * (so it accumulates over micro-batches). Needs a forward with targets
 * (FL_ESTATE otherwise). */
int fl_model_backward(fl_model_t *m);

/* Selects the kernels: 1 = the fast ones (OpenBLAS sgemm, vectorised
 * elementwise loops; the default), 0 = the naive reference loops (for
 * tests). */
void fl_model_set_use_blas(fl_model_t *m, int on);
/* Process-wide OpenBLAS thread count. flotilla uses no OpenMP, so these
 * are the only compute threads. The default is 1: unless this was called
 * before, the first fl_model_new sets 1 (OpenBLAS would otherwise start
 * one thread per core, which fights the other processes of a device). */
void fl_model_set_threads(int n);

/* ---- optimizers -------------------------------------------------------- */
typedef enum { FL_MODEL_ADAMW = 0, FL_MODEL_SGD = 1 } fl_model_optim_kind_t;

typedef struct {
    int kind;           /* fl_model_optim_kind_t */
    float lr;           /* peak learning rate */
    float min_lr;       /* end of the cosine decay */
    int64_t warmup;     /* steps of linear warmup from lr / warmup */
    int64_t total;      /* steps of the schedule; <= 0: constant after warmup */
    float beta1, beta2; /* AdamW */
    float eps;          /* AdamW */
    float momentum;     /* SGD (heavy ball; 0 = plain SGD) */
    float weight_decay; /* decoupled (AdamW) or L2 (SGD); matrices and
                           embeddings and adapters only, never norm gains */
    float grad_clip;    /* clip the global grad L2 norm to this; 0 = off */
} fl_model_optim_t;

/* AdamW, lr 1e-3, min_lr 1e-4, warmup 0, total 0, betas 0.9/0.95,
 * eps 1e-8, weight decay 0.0, clip 1.0, momentum 0.9. */
void fl_model_optim_default(fl_model_optim_t *o);
/* Learning rate at step (0-based): linear warmup (step+1)/warmup * lr,
 * then cosine from lr down to min_lr over the remaining total - warmup
 * steps, min_lr after total. */
float fl_model_lr_at(const fl_model_optim_t *o, int64_t step);
/* One optimizer step on the trainable vector using fl_model_grads (which
 * it clips in place). *grad_norm (may be NULL) receives the norm before
 * clipping. Advances fl_model_step_count. */
int fl_model_step(fl_model_t *m, const fl_model_optim_t *o, float *grad_norm);
int64_t fl_model_step_count(const fl_model_t *m);
/* Drops optimizer state and the step count (e.g. when a new global model
 * arrives). */
void fl_model_optim_reset(fl_model_t *m);

/* zero_grad + forward + backward + step: one training step on a batch. */
int fl_model_train_step(fl_model_t *m, const fl_model_optim_t *o,
                        const int32_t *tokens, const int32_t *targets, int B,
                        int T, float *loss);

/* ---- model.bin ------------------------------------------------------------
 * Little-endian. Header (FL_MODEL_HEADER_SIZE bytes):
 *   0  magic "FLMODEL1" (8 bytes)      8  u32 version (1)
 *   12 u32 header size                 16 u32 flags (bit 0: tied output,
 *   20 i32 dim, hidden_dim, n_layers,      bit 1: optimizer state present)
 *      n_heads, n_kv_heads, vocab_size, seq_len, lora_rank
 *   52 f32 lora_alpha, rope_theta, norm_eps
 *   64 u32 tokenizer reference length; 68 reference bytes (255 max, padded)
 *   324 u64 number of base floats; 332 u64 number of adapter floats
 *   340 i64 optimizer step count; 348..512 zero
 * then the base floats, the adapter floats, and with bit 1 the optimizer
 * state (2 x trainable floats: first and second moments, or momentum and
 * zeros for SGD). */
#define FL_MODEL_MAGIC       "FLMODEL1"
#define FL_MODEL_VERSION     1
#define FL_MODEL_HEADER_SIZE 512
#define FL_MODEL_MAX_FILE    ((size_t)1 << 34)

enum { FL_MODEL_SAVE_OPTIM = 1 };

/* Serialises into out (appended). flags: FL_MODEL_SAVE_OPTIM. */
int fl_model_save_buf(const fl_model_t *m, int flags, fl_buf_t *out);
/* Writes path atomically. */
int fl_model_save(const fl_model_t *m, const char *path, int flags);
/* Parses a model.bin image. Every size is checked against len before
 * anything is read or allocated: FL_EMAGIC, FL_EVERSION, FL_ETRUNC (too
 * short), FL_EFORMAT (inconsistent header or trailing bytes), FL_ERANGE
 * (absurd dims), FL_ENOMEM. *out returned owned. */
int fl_model_load_buf(const uint8_t *data, size_t len, fl_model_t **out);
/* Reads and parses path (at most FL_MODEL_MAX_FILE bytes). */
int fl_model_load(const char *path, fl_model_t **out);

/* ---- reference kernels ----------------------------------------------------
 * Exposed for tests and for model-int8's comparisons. Outputs first; they
 * never allocate. out [N, OC] = inp [N, IC] @ w[OC, IC]^T (+= when
 * accumulate). */
void fl_model_matmul_ref(float *out, const float *inp, const float *w, int N,
                         int IC, int OC, int accumulate);
void fl_model_matmul_blas(float *out, const float *inp, const float *w, int N,
                          int IC, int OC, int accumulate);

#endif /* FL_MODEL_H */
