/*
 * model/quant.h — the int8 export of a model (model.q8): quantization of
 * the fp32 weights, the file format and its loader.
 *
 * Every matrix (the projections of each layer and the output head, tied or
 * not) is quantized symmetrically per group of gs inputs with one fp32
 * scale per (row, group) — see model/kernels.h — and kept packed for the
 * kernels. The token embedding is kept row-major (int8 + scales) for the
 * lookup; with a tied head the packed head is made from the same bytes.
 * RMSNorm gains stay fp32.
 *
 * model.q8, little-endian. Header (FL_Q8_HEADER_SIZE bytes):
 *   0  magic "FLQ8MDL1"                8  u32 version (1)
 *   12 u32 header size (512)           16 u32 flags (bit 0: tied head)
 *   20 i32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 *      seq_len, group_size             52 f32 rope_theta, norm_eps
 *   60 u32 tokenizer reference length  64 reference bytes (255 max)
 *   320 u64 payload bytes              328..512 zero
 * then, fp32: rms_att [L, dim], rms_ffn [L, dim], rms_final [dim];
 * then the int8 tensors, each as int8 values [rows, cols] (in [-127, 127])
 * followed by fp32 scales [rows, cols / gs] (finite, >= 0):
 *   token_embedding; wq, wk, wv, wo, w1, w2, w3 (each for layer 0..L-1);
 *   wcls when the head is not tied.
 * The loader computes the exact length from the header and refuses the
 * file (before allocating) if it differs.
 *
 * Ownership: pointer arguments are borrowed; handles returned through
 * `out` are returned owned (free with fl_q8_model_free). A model is
 * read-only after creation and may be shared by threads. Never logs.
 */
#ifndef FL_MODEL_QUANT_H
#define FL_MODEL_QUANT_H

#include "common/common.h"
#include "model/kernels.h"
#include "model/model.h"

#define FL_Q8_MAGIC       "FLQ8MDL1"
#define FL_Q8_VERSION     1
#define FL_Q8_HEADER_SIZE 512
#define FL_Q8_MAX_FILE    ((size_t)1 << 33)

typedef struct fl_q8_model fl_q8_model_t;

/* Views into a quantized model; L = n_layers. */
typedef struct {
    const float *rms_att;          /* [L, dim] */
    const float *rms_ffn;          /* [L, dim] */
    const float *rms_final;        /* [dim] */
    const int8_t *emb_q;           /* [vocab, dim] row-major */
    const float *emb_s;            /* [vocab, dim / gs] */
    const fl_q8_matrix_t *wq, *wk; /* [L] each: (dim|kv_dim) x dim */
    const fl_q8_matrix_t *wv, *wo; /* [L]: kv_dim x dim, dim x dim */
    const fl_q8_matrix_t *w1, *w3; /* [L]: hidden x dim */
    const fl_q8_matrix_t *w2;      /* [L]: dim x hidden */
    const fl_q8_matrix_t *wcls;    /* vocab x dim */
} fl_q8_weights_t;

/* The group size used when none is asked for: the largest multiple of 4,
 * at most 128, that divides both dim and hidden_dim; 0 if there is none. */
int fl_q8_default_group_size(const fl_model_config_t *cfg);

/* Quantizes fp32 weights (llama2.c order, model/model.h views) with group
 * size gs (0: the default). cfg->lora_rank must be 0 (merge adapters
 * first: fl_model_lora_merge). FL_EINVAL for a group size that does not
 * divide dim and hidden_dim, FL_ERANGE for a bad config, FL_ENOMEM. */
int fl_q8_model_quantize(const fl_model_config_t *cfg,
                         const fl_model_weights_t *w, int gs,
                         fl_q8_model_t **out);
/* Same from a model handle (its tokenizer reference is kept). */
int fl_q8_model_from_model(fl_model_t *m, int gs, fl_q8_model_t **out);
void fl_q8_model_free(fl_q8_model_t *q); /* NULL is a no-op */

const fl_model_config_t *fl_q8_model_config(const fl_q8_model_t *q);
int fl_q8_model_group_size(const fl_q8_model_t *q);
const fl_q8_weights_t *fl_q8_model_weights(const fl_q8_model_t *q);
const char *fl_q8_model_tokenizer_ref(const fl_q8_model_t *q);
/* Copied; FL_ETOOBIG beyond 255 bytes. */
int fl_q8_model_set_tokenizer_ref(fl_q8_model_t *q, const char *ref);
/* Bytes of weights held (packed matrices, embedding, norms). */
size_t fl_q8_model_bytes(const fl_q8_model_t *q);

/* Serialises into out (appended) / writes path atomically. */
int fl_q8_model_save_buf(const fl_q8_model_t *q, fl_buf_t *out);
int fl_q8_model_save(const fl_q8_model_t *q, const char *path);
/* Parses an image: FL_ETRUNC (shorter than the header says), FL_EMAGIC,
 * FL_EVERSION, FL_EFORMAT (bad header size, flags, padding, trailing
 * bytes, an int8 value of -128, a negative or non-finite scale or gain),
 * FL_ERANGE (dimensions outside model.h's limits or inconsistent),
 * FL_EINVAL (bad group size), FL_ENOMEM. */
int fl_q8_model_load_buf(const uint8_t *data, size_t len, fl_q8_model_t **out);
/* Reads path (at most FL_Q8_MAX_FILE bytes) and parses it. */
int fl_q8_model_load(const char *path, fl_q8_model_t **out);

#endif /* FL_MODEL_QUANT_H */
