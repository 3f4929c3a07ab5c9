/*
 * model/llama2.h — import of llama2.c checkpoints (karpathy/llama2.c's
 * run.c / runq.c files) into flotilla's model, so that models trained
 * elsewhere (the TinyStories checkpoints) can be fine-tuned here.
 *
 * Layouts, all little-endian, matrices (out, in) row-major, L = n_layers,
 * D = dim, H = hidden_dim, KV = D * n_kv_heads / n_heads, V = vocab, S = seq:
 *
 *   version 0 ("legacy", run.c): 7 int32 dim, hidden_dim, n_layers,
 *     n_heads, n_kv_heads, vocab_size, seq_len (vocab_size < 0: the
 *     classifier is separate, |vocab_size| is the vocabulary); then fp32
 *     token_embedding [V,D], rms_att [L,D], wq [L,D,D], wk [L,KV,D],
 *     wv [L,KV,D], wo [L,D,D], rms_ffn [L,D], w1 [L,H,D], w2 [L,D,H],
 *     w3 [L,H,D], rms_final [D], RoPE tables 2 x [S, D/n_heads/2]
 *     (skipped: flotilla computes them), wcls [V,D] if separate.
 *   version 1: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the same
 *     7 int32 (vocab_size positive), uint8 shared classifier, zero padding
 *     to 256 bytes; then fp32 rms_att, rms_ffn, rms_final, token_embedding,
 *     wq, wk, wv, wo, w1, w2, w3, wcls if not shared.
 *   version 2 (Q8_0, runq.c): magic, int32 version 2, the 7 int32, uint8
 *     shared classifier, int32 group size (at byte 37), padding to 256;
 *     fp32 rms_att, rms_ffn, rms_final; then, per tensor, int8 values
 *     followed by one fp32 scale per group: token_embedding, then L
 *     tensors each of wq, wk, wv, wo, w1, w2, w3 (one per layer), then
 *     wcls if not shared. Imported weights are dequantized (q * scale).
 *
 * Every size is computed from the header (within flotilla's model
 * limits) and must equal the file's length before anything is read or
 * allocated. Errors: FL_ETRUNC (shorter than the header says),
 * FL_EFORMAT (longer: trailing bytes), FL_ERANGE (dimensions out of
 * range or inconsistent, bad group size), FL_EVERSION ("ak42" with a
 * version other than 1 or 2), FL_ENOMEM; why receives a sentence.
 *
 * Ownership: models and tokenizers are returned owned; other pointers are
 * borrowed. Thread-safety: no shared state.
 */
#ifndef FL_MODEL_LLAMA2_H
#define FL_MODEL_LLAMA2_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "model/model.h"
#include "model/tokenizer.h"

#define FL_LLAMA2_MAGIC       0x616b3432u
#define FL_LLAMA2_HEADER_SIZE 256 /* versions 1 and 2 */
#define FL_LLAMA2_MAX_FILE    ((size_t)1 << 34)

typedef struct {
    int version;           /* 0, 1 or 2 */
    int shared_classifier; /* 1: the output head is the embedding */
    int group_size;        /* version 2; else 0 */
    size_t file_size;      /* bytes the header implies (= the file's) */
    fl_model_config_t cfg; /* flotilla's configuration for it */
} fl_llama2_info_t;

/* Reads and checks the header and the file length; allocates nothing.
 * info may be NULL; why may be NULL. */
int fl_llama2_probe(const uint8_t *buf, size_t len, fl_llama2_info_t *info,
                    char *why, size_t whylen);

/* Parses a checkpoint image into a new model (fp32, LoRA off, tokenizer
 * reference "byte" until the caller sets it). info may be NULL. */
int fl_llama2_import_buf(const uint8_t *buf, size_t len, fl_model_t **out,
                         fl_llama2_info_t *info, char *why, size_t whylen);
/* Same from a file (mapped, at most FL_LLAMA2_MAX_FILE bytes). */
int fl_llama2_import_file(const char *path, fl_model_t **out,
                          fl_llama2_info_t *info, char *why, size_t whylen);

/* A checkpoint with its tokenizer.bin: both are loaded and their
 * vocabularies must agree (FL_EFORMAT otherwise). tok may be NULL when
 * only the check is wanted. */
int fl_llama2_import(const char *checkpoint, const char *tokenizer,
                     fl_model_t **model, fl_tokenizer_t **tok,
                     fl_llama2_info_t *info, char *why, size_t whylen);

#endif /* FL_MODEL_LLAMA2_H */
