/*
 * model/model_internal.h — INTERNAL to model/: the layout of fl_model_t,
 * shared by model.c (forward/backward), optim.c and modelfile.c.
 */
#ifndef FL_MODEL_INTERNAL_H
#define FL_MODEL_INTERNAL_H

#include "model/model.h"

/* Views into the one activation allocation for the last (B, T); N = B * T,
 * L layers, r = LoRA rank. */
typedef struct {
    float *res;     /* [L+1, N, C] residual stream entering each layer */
    float *res_mid; /* [L, N, C] after the attention residual */
    float *xn1;     /* [L, N, C] rmsnorm before attention */
    float *xn2;     /* [L, N, C] rmsnorm before the MLP */
    float *rstd1;   /* [L, N] */
    float *rstd2;   /* [L, N] */
    float *q;       /* [L, N, C] after RoPE */
    float *k;       /* [L, N, kv_dim] after RoPE */
    float *v;       /* [L, N, kv_dim] */
    float *att;     /* [L, B, nh, T, T] attention probabilities */
    float *atty;    /* [L, N, C] attention output before wo */
    float *h1;      /* [L, N, H] gate pre-activation */
    float *h3;      /* [L, N, H] up projection */
    float *hg;      /* [L, N, H] silu(h1) * h3 */
    float *sig;     /* [L, N, H] sigmoid(h1) */
    float *xnf;     /* [N, C] final rmsnorm */
    float *rstdf;   /* [N] */
    float *logits;  /* [N, V] */
    float *lh;      /* [L, NPROJ, N, r] scaled LoRA hidden s * (x A^T) */
    /* backward scratch, reused across layers */
    float *dres, *dxn, *datty, *dq; /* [N, C] */
    float *dk, *dv;                 /* [N, kv_dim] */
    float *dhg, *dh1, *dh3;         /* [N, H] */
    float *dlogits; /* [N, V] softmax from the forward, then its gradient */
    float *dlh;     /* [N, r] */
    float *datt;    /* [T, T] attention backward scratch */
} fl_model_acts_t;

struct fl_model {
    fl_model_config_t cfg;
    float *base; /* [n_base] one allocation, views in w */
    size_t n_base;
    fl_model_weights_t w;
    float *adapters; /* [n_lora] or NULL, views in lv */
    size_t n_lora;
    fl_model_lora_t lv;
    float *grads;          /* [num_params] gradient of the trainable vector */
    fl_model_weights_t gw; /* views into grads (full training) or NULLs */
    fl_model_lora_t gl;    /* views into grads (LoRA) or NULLs */
    float *opt;            /* [2, num_params] optimizer moments, or NULL */
    int64_t step;
    float *rope_cos, *rope_sin; /* [seq_len, hs/2] each, one allocation */
    float *acts;                /* activations, one allocation */
    size_t acts_cap;
    fl_model_acts_t a;
    int32_t *tok; /* [2, N] tokens and targets of the last forward */
    size_t tok_cap;
    int B, T, count, have_targets;
    float loss;
    int use_blas;
    char tokref[FL_MODEL_TOKREF_MAX];
};

/* in/out widths of projection p. */
void fl_model__proj_shape(const fl_model_config_t *c, int p, int *in, int *out);

#endif /* FL_MODEL_INTERNAL_H */
