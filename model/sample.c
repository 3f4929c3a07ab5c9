/*
 * model/sample.c — next-token sampling: greedy, temperature, top-k, top-p.
 */
#include "model/sample.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float p;
    int32_t id;
} cand_t;

struct fl_sampler {
    fl_sample_opts_t o;
    int vocab;
    fl_rng_t rng;
    cand_t *cand; /* [vocab] */
};

void fl_sample_opts_init(fl_sample_opts_t *o)
{
    o->temperature = 1.0f;
    o->top_k = 0;
    o->top_p = 1.0f;
    o->seed = 0;
}

int fl_sampler_new(const fl_sample_opts_t *o, int vocab, fl_sampler_t **out)
{
    *out = NULL;
    if (vocab < 1 || !(o->temperature >= 0.0f) || o->top_k < 0 ||
        !(o->top_p > 0.0f && o->top_p <= 1.0f))
        return FL_EINVAL;
    fl_sampler_t *s = fl_calloc(1, sizeof *s);
    if (!s)
        return FL_ENOMEM;
    s->cand = fl_calloc((size_t)vocab, sizeof *s->cand);
    if (!s->cand) {
        fl_free(s);
        return FL_ENOMEM;
    }
    s->o = *o;
    s->vocab = vocab;
    fl_rng_seed(&s->rng, o->seed);
    *out = s;
    return 0;
}

void fl_sampler_free(fl_sampler_t *s)
{
    if (!s)
        return;
    fl_free(s->cand);
    fl_free(s);
}

int fl_sample_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

void fl_sample_softmax(float *x, int n)
{
    float mx = x[fl_sample_argmax(x, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

/* Decreasing probability, then increasing id: a total order, so qsort's
 * instability cannot change a seeded result. */
static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int fl_sampler_next(fl_sampler_t *s, float *logits)
{
    int n = s->vocab;
    if (s->o.temperature == 0.0f)
        return fl_sample_argmax(logits, n);
    float invt = 1.0f / s->o.temperature;
    for (int i = 0; i < n; i++)
        logits[i] *= invt;
    fl_sample_softmax(logits, n);
    double u = fl_rng_uniform(&s->rng);
    if (s->o.top_k == 0 && s->o.top_p >= 1.0f) {
        double c = 0.0;
        for (int i = 0; i < n; i++) {
            c += logits[i];
            if (u < c)
                return i;
        }
        return n - 1; /* rounding left u above the total */
    }
    /* Tokens below (1 - p) / (n - 1) cannot be in the nucleus (the rest
     * would not reach p without them); with top-k the k largest are
     * needed whatever their size. */
    float cutoff =
        (s->o.top_k == 0 && n > 1) ? (1.0f - s->o.top_p) / (float)(n - 1) : 0;
    int nc = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= cutoff) {
            s->cand[nc].p = logits[i];
            s->cand[nc].id = i;
            nc++;
        }
    qsort(s->cand, (size_t)nc, sizeof *s->cand, cand_cmp);
    if (s->o.top_k > 0 && nc > s->o.top_k)
        nc = s->o.top_k;
    double mass = 0.0;
    for (int i = 0; i < nc; i++)
        mass += s->cand[i].p;
    /* the nucleus: the shortest prefix with mass >= top_p of the kept */
    int last = nc - 1;
    double c = 0.0;
    for (int i = 0; i < nc; i++) {
        c += s->cand[i].p;
        if (c >= s->o.top_p * mass) {
            last = i;
            break;
        }
    }
    double r = u * c, acc = 0.0;
    for (int i = 0; i <= last; i++) {
        acc += s->cand[i].p;
        if (r < acc)
            return s->cand[i].id;
    }
    return s->cand[last].id;
}
