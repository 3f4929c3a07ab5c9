/*
 * model/layers.h — INTERNAL to model/ (and its own tests): the fp32 layer
 * kernels of the transformer, each a forward/backward pair.
 *
 * Conventions: outputs first; kernels never allocate, log or do I/O.
 * N = B * T positions; shapes in the comments. Backward kernels ADD into
 * parameter gradients (dw, dg) and into dinp where it says "+=", so several
 * branches can accumulate; a NULL gradient pointer skips that gradient
 * (frozen weights).
 */
#ifndef FL_MODEL_LAYERS_H
#define FL_MODEL_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* out [N, OC] (=, or += when acc) inp [N, IC] @ w [OC, IC]^T. blas selects
 * cblas_sgemm or the naive reference loops. */
void fl_model__matmul_fwd(float *out, const float *inp, const float *w, int N,
                          int IC, int OC, int acc, int blas);
/* dinp [N, IC] (+= when acc, else =) dout [N, OC] @ w; dw [OC, IC] +=
 * dout^T @ inp. Either output may be NULL. */
void fl_model__matmul_bwd(float *dinp, float *dw, const float *dout,
                          const float *inp, const float *w, int N, int IC,
                          int OC, int acc, int blas);

/* out [N, C] = inp * rstd * g; rstd [N] = 1 / sqrt(mean(inp^2) + eps).
 * vec: four lanes (sums in another order than the scalar reference). */
void fl_model__rmsnorm_fwd(float *out, float *rstd, const float *inp,
                           const float *g, int N, int C, float eps, int vec);
/* dinp [N, C] +=, dg [C] += (dg may be NULL). */
void fl_model__rmsnorm_bwd(float *dinp, float *dg, const float *dout,
                           const float *inp, const float *g, const float *rstd,
                           int N, int C, int vec);

/* Rotary embedding in place on x [B, T, nh * hs], rotating each pair
 * (2i, 2i+1) of every head by angle t * theta^(-2i/hs); cos_t, sin_t are
 * [seq_len, hs/2]. inverse = 1 rotates backwards (the backward pass of the
 * rotation, applied to gradients). */
void fl_model__rope(float *x, const float *cos_t, const float *sin_t, int B,
                    int T, int nh, int hs, int inverse);

/* Causal attention. q [B, T, nh*hs], k and v [B, T, nkv*hs] (head h reads
 * kv head h / (nh / nkv)); att [B, nh, T, T] receives the probabilities
 * (upper triangle zero); out [B, T, nh*hs]. */
void fl_model__attention_fwd(float *out, float *att, const float *q,
                             const float *k, const float *v, int B, int T,
                             int nh, int nkv, int hs, int blas);
/* dq (=), dk (=), dv (=) from dout [B, T, nh*hs]; scratch [T, T]. blas:
 * sgemm per head, else the naive loops. */
void fl_model__attention_bwd(float *dq, float *dk, float *dv, float *scratch,
                             const float *dout, const float *att,
                             const float *q, const float *k, const float *v,
                             int B, int T, int nh, int nkv, int hs, int blas);

/* out [n] = silu(h1) * h3; sig [n] keeps sigmoid(h1) for the backward.
 * vec: four lanes at a time (bitwise equal to the scalar reference,
 * vec = 0). */
void fl_model__swiglu_fwd(float *out, float *sig, const float *h1,
                          const float *h3, size_t n, int vec);
/* dh1 (=), dh3 (=); sig from the forward. */
void fl_model__swiglu_bwd(float *dh1, float *dh3, const float *dout,
                          const float *h1, const float *h3, const float *sig,
                          size_t n, int vec);

/* probs [N, V] = softmax(logits); returns the SUM of -log p[target] over
 * positions whose target is >= 0 and stores their number in *count. */
double fl_model__xent_fwd(float *probs, const float *logits,
                          const int32_t *targets, int N, int V, int *count);
/* dlogits [N, V] (=) = scale * (probs - onehot(target)); rows with target
 * -1 get zero. dlogits may be probs (in place). */
void fl_model__xent_bwd(float *dlogits, const float *probs,
                        const int32_t *targets, int N, int V, float scale);

#endif /* FL_MODEL_LAYERS_H */
