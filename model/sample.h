/*
 * model/sample.h — choosing the next token from logits: greedy, or
 * temperature with optional top-k and top-p (nucleus) filtering, from a
 * seeded generator so that a seed reproduces a generation exactly.
 *
 * Top-k keeps the k most probable tokens; top-p then keeps the smallest
 * prefix of those (by decreasing probability, renormalized) whose mass
 * reaches p. Ties are broken by the lower token id.
 *
 * Ownership: a sampler owns its scratch ([vocab] entries). One thread at a
 * time. Never logs.
 */
#ifndef FL_MODEL_SAMPLE_H
#define FL_MODEL_SAMPLE_H

#include "common/common.h"

typedef struct {
    float temperature; /* 0: greedy (argmax); otherwise > 0 */
    int top_k;         /* 0: off */
    float top_p;       /* in (0, 1]; 1: off */
    uint64_t seed;
} fl_sample_opts_t;

/* temperature 1, top_k 0, top_p 1, seed 0. */
void fl_sample_opts_init(fl_sample_opts_t *o);

typedef struct fl_sampler fl_sampler_t;

/* FL_EINVAL for vocab < 1, a negative temperature or top_k, top_p outside
 * (0, 1]. *out returned owned. */
int fl_sampler_new(const fl_sample_opts_t *o, int vocab, fl_sampler_t **out);
void fl_sampler_free(fl_sampler_t *s); /* NULL is a no-op */
/* The next token for logits [vocab]; logits is overwritten (it becomes
 * the probabilities). */
int fl_sampler_next(fl_sampler_t *s, float *logits);

/* Index of the largest value (the first one on ties). */
int fl_sample_argmax(const float *x, int n);
/* In place: x = softmax(x), computed stably. */
void fl_sample_softmax(float *x, int n);

#endif /* FL_MODEL_SAMPLE_H */
