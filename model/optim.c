/*
 * model/optim.c — AdamW and SGD with momentum on the flat trainable vector,
 * gradient-norm clipping and the warmup + cosine learning-rate schedule.
 * The update rules follow torch.optim.AdamW / torch.optim.SGD and
 * torch.nn.utils.clip_grad_norm_, so that the parity tests can compare
 * whole training runs.
 */
#include "model/model.h"
#include "model/model_internal.h"

#include <math.h>
#include <string.h>

/* The AdamW update four lanes at a time (GCC/clang vector extensions and
 * the baseline square root of SSE or AArch64 NEON): the same operations in
 * the same order as the scalar loop, so the result is identical. */
typedef float f32x4 __attribute__((vector_size(16)));
#if defined(__SSE__)
#include <xmmintrin.h>
#define HAVE_VSQRT 1
static inline f32x4 v_sqrt(f32x4 x)
{
    return (f32x4)_mm_sqrt_ps((__m128)x);
}
#elif defined(__aarch64__)
#include <arm_neon.h>
#define HAVE_VSQRT 1
static inline f32x4 v_sqrt(f32x4 x)
{
    return (f32x4)vsqrtq_f32((float32x4_t)x);
}
#endif

/* Sum of squares in double, in eight independent partial sums (a single
 * running sum is one long dependency chain); the order is fixed, so the
 * result is deterministic. */
static double sum_squares(const float *g, size_t n)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += (double)g[i + k] * g[i + k];
    for (; i < n; i++)
        acc[0] += (double)g[i] * g[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
           ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* x[0..n) *= k */
static void scale(float *x, size_t n, float k)
{
    size_t i = 0;
    const f32x4 vk = {k, k, k, k};
    for (; i + 4 <= n; i += 4) {
        f32x4 v;
        memcpy(&v, x + i, sizeof v);
        v *= vk;
        memcpy(x + i, &v, sizeof v);
    }
    for (; i < n; i++)
        x[i] *= k;
}

/* Returns how many leading elements it updated (a multiple of 4). */
static size_t adamw_vec(float *p, const float *g, float *m1, float *m2,
                        size_t n, float b1, float b2, float bc2s, float eps,
                        float step_size)
{
    size_t i = 0;
#ifdef HAVE_VSQRT
    const f32x4 vb1 = {b1, b1, b1, b1}, vb2 = {b2, b2, b2, b2};
    const float k1 = 1.0f - b1, k2 = 1.0f - b2;
    const f32x4 c1 = {k1, k1, k1, k1}, c2 = {k2, k2, k2, k2};
    const f32x4 vbc = {bc2s, bc2s, bc2s, bc2s}, veps = {eps, eps, eps, eps};
    const f32x4 vss = {step_size, step_size, step_size, step_size};
    for (; i + 4 <= n; i += 4) {
        f32x4 gv, a, b, pv;
        memcpy(&gv, g + i, sizeof gv);
        memcpy(&a, m1 + i, sizeof a);
        memcpy(&b, m2 + i, sizeof b);
        memcpy(&pv, p + i, sizeof pv);
        a = vb1 * a + c1 * gv;
        b = vb2 * b + c2 * gv * gv;
        f32x4 denom = v_sqrt(b) / vbc + veps;
        pv -= vss * a / denom;
        memcpy(m1 + i, &a, sizeof a);
        memcpy(m2 + i, &b, sizeof b);
        memcpy(p + i, &pv, sizeof pv);
    }
#else
    (void)p, (void)g, (void)m1, (void)m2, (void)n, (void)b1, (void)b2;
    (void)bc2s, (void)eps, (void)step_size;
#endif
    return i;
}

void fl_model_optim_default(fl_model_optim_t *o)
{
    memset(o, 0, sizeof *o);
    o->kind = FL_MODEL_ADAMW;
    o->lr = 1e-3f;
    o->min_lr = 1e-4f;
    o->warmup = 0;
    o->total = 0;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->eps = 1e-8f;
    o->momentum = 0.9f;
    o->weight_decay = 0.0f;
    o->grad_clip = 1.0f;
}

float fl_model_lr_at(const fl_model_optim_t *o, int64_t step)
{
    if (step < 0)
        step = 0;
    if (o->warmup > 0 && step < o->warmup)
        return o->lr * (float)(step + 1) / (float)o->warmup;
    if (o->total <= 0 || o->total <= o->warmup)
        return o->lr;
    if (step >= o->total)
        return o->min_lr;
    double frac = (double)(step - o->warmup) / (double)(o->total - o->warmup);
    double cosv = 0.5 * (1.0 + cos(M_PI * frac));
    return (float)(o->min_lr + (o->lr - o->min_lr) * cosv);
}

void fl_model_optim_reset(fl_model_t *m)
{
    fl_free(m->opt);
    m->opt = NULL;
    m->step = 0;
}

int64_t fl_model_step_count(const fl_model_t *m)
{
    return m->step;
}

/* The ranges of the trainable vector that get weight decay: everything but
 * the RMSNorm gains (full training); all of it with LoRA. Writes up to 4
 * [start, end) pairs of decayed ranges; returns how many. */
static int decay_ranges(const fl_model_t *m, size_t r[][2])
{
    size_t n = fl_model_num_params(m);
    if (m->cfg.lora_rank > 0) {
        r[0][0] = 0;
        r[0][1] = n;
        return 1;
    }
    size_t L = (size_t)m->cfg.n_layers, C = (size_t)m->cfg.dim;
    size_t att = (size_t)(m->w.rms_att - m->base);
    size_t ffn = (size_t)(m->w.rms_ffn - m->base);
    size_t fin = (size_t)(m->w.rms_final - m->base);
    r[0][0] = 0;
    r[0][1] = att;
    r[1][0] = att + L * C;
    r[1][1] = ffn;
    r[2][0] = ffn + L * C;
    r[2][1] = fin;
    r[3][0] = fin + C;
    r[3][1] = n;
    return 4;
}

int fl_model_step(fl_model_t *m, const fl_model_optim_t *o, float *grad_norm)
{
    size_t n = fl_model_num_params(m);
    float *p = fl_model_params(m), *g = m->grads;
    if (o->kind != FL_MODEL_ADAMW && o->kind != FL_MODEL_SGD)
        return FL_EINVAL;
    if (!m->opt) {
        m->opt = fl_aligned_alloc(64, (2 * n + 1) * sizeof(float));
        if (!m->opt)
            return FL_ENOMEM;
    }
    float norm = (float)sqrt(sum_squares(g, n));
    if (grad_norm)
        *grad_norm = norm;
    if (o->grad_clip > 0.0f) {
        float coef = o->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f)
            scale(g, n, coef);
    }
    float lr = fl_model_lr_at(o, m->step);
    m->step++;
    float *m1 = m->opt, *m2 = m->opt + n;
    size_t rng[4][2];
    int nr = decay_ranges(m, rng);
    if (o->kind == FL_MODEL_ADAMW) {
        float b1 = o->beta1, b2 = o->beta2;
        float bc1 = 1.0f - powf(b1, (float)m->step);
        float bc2 = 1.0f - powf(b2, (float)m->step);
        float step_size = lr / bc1, bc2s = sqrtf(bc2);
        if (o->weight_decay != 0.0f) {
            float keep = 1.0f - lr * o->weight_decay;
            for (int k = 0; k < nr; k++)
                scale(p + rng[k][0], rng[k][1] - rng[k][0], keep);
        }
        size_t i0 = m->use_blas ? adamw_vec(p, g, m1, m2, n, b1, b2, bc2s,
                                            o->eps, step_size)
                                : 0;
        for (size_t i = i0; i < n; i++) {
            m1[i] = b1 * m1[i] + (1.0f - b1) * g[i];
            m2[i] = b2 * m2[i] + (1.0f - b2) * g[i] * g[i];
            float denom = sqrtf(m2[i]) / bc2s + o->eps;
            p[i] -= step_size * m1[i] / denom;
        }
    } else {
        if (o->weight_decay != 0.0f)
            for (int k = 0; k < nr; k++)
                for (size_t i = rng[k][0]; i < rng[k][1]; i++)
                    g[i] += o->weight_decay * p[i];
        for (size_t i = 0; i < n; i++) {
            float b = g[i];
            if (o->momentum != 0.0f) {
                b = m->step == 1 ? g[i] : o->momentum * m1[i] + g[i];
                m1[i] = b;
            }
            p[i] -= lr * b;
        }
    }
    return 0;
}
