/*
 * model/infer.h — text generation: the decoder's forward pass with a KV
 * cache, in fp32 (OpenBLAS sgemm/sgemv on the fp32 weights) or in int8
 * (model/kernels.h on a quantized model, activations quantized on the fly).
 *
 * One fl_infer_t is one conversation: it owns the KV cache
 * ([n_layers, seq_len, kv_dim] keys and values, fp32) and scratch for up
 * to max_batch tokens per matrix product. fl_infer_forward runs a block of
 * tokens at consecutive positions — a prompt in one go (int8 GEMM /
 * sgemm), then one token per call while generating (GEMV / sgemv); every
 * token attends to the cache up to its own position. Blocks longer than
 * max_batch are processed in pieces.
 *
 * Ownership: the model passed to _new is borrowed and must outlive the
 * state; nothing else is kept. A state is used by one thread at a time;
 * several states may share one model. Never logs.
 */
#ifndef FL_MODEL_INFER_H
#define FL_MODEL_INFER_H

#include "common/common.h"
#include "model/model.h"
#include "model/quant.h"

typedef struct fl_infer fl_infer_t;

/* fp32 path on m's base weights. FL_EINVAL when m has LoRA adapters
 * (merge them first: fl_model_lora_merge) or max_batch < 1. *out returned
 * owned. */
int fl_infer_new_fp32(fl_model_t *m, int max_batch, fl_infer_t **out);
/* int8 path on q. */
int fl_infer_new_q8(const fl_q8_model_t *q, int max_batch, fl_infer_t **out);
void fl_infer_free(fl_infer_t *s); /* NULL is a no-op */

const fl_model_config_t *fl_infer_config(const fl_infer_t *s);
/* 1 for the int8 path. */
int fl_infer_is_int8(const fl_infer_t *s);
/* Bytes of the cache and scratch this state allocated (the KV cache is
 * zero pages until positions are used, so resident memory is less). */
size_t fl_infer_state_bytes(const fl_infer_t *s);

/* Runs tokens [n] at positions pos .. pos + n - 1; the cache must hold
 * positions 0 .. pos - 1 from earlier calls (a new conversation starts at
 * pos 0). Writes logits [n, vocab] when all_logits, else only the last
 * token's [vocab]. FL_ERANGE for a token outside the vocabulary or a
 * position beyond seq_len; FL_EINVAL for n < 1 or pos < 0. */
int fl_infer_forward(fl_infer_t *s, const int32_t *tokens, int n, int pos,
                     float *logits, int all_logits);

#endif /* FL_MODEL_INFER_H */
