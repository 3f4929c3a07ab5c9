/* server/optim.c — FedAvg (with server momentum), FedAdam and FedYogi. */
#include "server/optim.h"

#include <math.h>
#include <string.h>

struct fl_optim {
    fl_optim_config_t cfg;
    size_t d;
    uint64_t steps;
    float *state; /* one allocation: m[d] then, if adaptive, v[d] */
    float *m;     /* view: state[0 .. d) */
    float *v;     /* view: state[d .. 2d), NULL for FedAvg */
};

static const char *const kind_names[] = {"fedavg", "fedadam", "fedyogi"};

void fl_optim_config_init(fl_optim_config_t *c, fl_optim_kind_t kind)
{
    memset(c, 0, sizeof *c);
    c->kind = kind;
    if (kind == FL_OPTIM_FEDAVG) {
        c->lr = 1.0;
        c->momentum = 0.0;
    } else {
        c->lr = 0.01;
        c->beta1 = 0.9;
        c->beta2 = 0.99;
        c->tau = 1e-3;
    }
}

int fl_optim_kind_parse(const char *name, fl_optim_kind_t *out)
{
    for (size_t i = 0; name && i < FL_ARRAY_LEN(kind_names); i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (fl_optim_kind_t)i;
            return 0;
        }
    return FL_EINVAL;
}

const char *fl_optim_kind_name(fl_optim_kind_t kind)
{
    if ((unsigned)kind < FL_ARRAY_LEN(kind_names))
        return kind_names[kind];
    return "unknown";
}

static int adaptive(fl_optim_kind_t k)
{
    return k == FL_OPTIM_FEDADAM || k == FL_OPTIM_FEDYOGI;
}

static int config_ok(const fl_optim_config_t *c)
{
    if ((unsigned)c->kind >= FL_ARRAY_LEN(kind_names))
        return 0;
    if (!(c->lr > 0) || !isfinite(c->lr))
        return 0;
    if (c->kind == FL_OPTIM_FEDAVG)
        return c->momentum >= 0 && c->momentum < 1;
    return c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 &&
           c->tau > 0 && isfinite(c->tau);
}

int fl_optim_new(const fl_optim_config_t *c, size_t d, fl_optim_t **out)
{
    size_t n;
    *out = NULL;
    if (!c || d == 0 || !config_ok(c))
        return FL_EINVAL;
    if (fl_mul_size(d, adaptive(c->kind) ? 2 * sizeof(float) : sizeof(float),
                    &n) < 0)
        return FL_ETOOBIG;
    fl_optim_t *o = fl_calloc(1, sizeof *o);
    if (!o)
        return FL_ENOMEM;
    o->state = fl_malloc(n);
    if (!o->state) {
        fl_free(o);
        return FL_ENOMEM;
    }
    o->cfg = *c;
    o->d = d;
    o->m = o->state;
    memset(o->m, 0, d * sizeof(float));
    if (adaptive(c->kind)) {
        o->v = o->state + d;
        float v0 = (float)(c->tau * c->tau);
        for (size_t i = 0; i < d; i++)
            o->v[i] = v0;
    }
    *out = o;
    return 0;
}

void fl_optim_free(fl_optim_t *o)
{
    if (!o)
        return;
    fl_free(o->state);
    fl_free(o);
}

size_t fl_optim_dim(const fl_optim_t *o)
{
    return o->d;
}

uint64_t fl_optim_steps(const fl_optim_t *o)
{
    return o->steps;
}

const float *fl_optim_m(const fl_optim_t *o)
{
    return o->m;
}

const float *fl_optim_v(const fl_optim_t *o)
{
    return o->v;
}

int fl_optim_step(fl_optim_t *o, float *params, const float *g)
{
    if (!o || !params || !g)
        return FL_EINVAL;
    const size_t d = o->d;
    /* A NaN from a broken update must not reach the model or the state. */
    for (size_t i = 0; i < d; i++)
        if (!isfinite(g[i]))
            return FL_EINVAL;
    const double lr = o->cfg.lr;
    float *m = o->m, *v = o->v;
    switch (o->cfg.kind) {
    case FL_OPTIM_FEDAVG: {
        const double beta = o->cfg.momentum;
        for (size_t i = 0; i < d; i++) {
            double mi = beta * m[i] + g[i];
            m[i] = (float)mi;
            params[i] = (float)(params[i] + lr * mi);
        }
        break;
    }
    case FL_OPTIM_FEDADAM:
    case FL_OPTIM_FEDYOGI: {
        const double b1 = o->cfg.beta1, b2 = o->cfg.beta2, tau = o->cfg.tau;
        const int yogi = o->cfg.kind == FL_OPTIM_FEDYOGI;
        for (size_t i = 0; i < d; i++) {
            double gi = g[i], g2 = gi * gi;
            double mi = b1 * m[i] + (1 - b1) * gi;
            double vi;
            if (yogi) {
                double diff = v[i] - g2;
                double sign = (diff > 0) - (diff < 0);
                vi = v[i] - (1 - b2) * g2 * sign;
            } else {
                vi = b2 * v[i] + (1 - b2) * g2;
            }
            m[i] = (float)mi;
            v[i] = (float)vi;
            params[i] = (float)(params[i] + lr * mi / (sqrt(vi) + tau));
        }
        break;
    }
    }
    o->steps++;
    return 0;
}

/* ---- state as bytes ---- */

static const char optim_magic[8] = {'F', 'L', 'O', 'P', 'T', 'I', 'M', '1'};
#define OPTIM_VERSION 1u
#define OPTIM_HEADER  (8 + 4 + 4 + 8 + 8)

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static size_t state_floats(const fl_optim_t *o)
{
    return o->v ? 2 * o->d : o->d;
}

int fl_optim_save(const fl_optim_t *o, fl_buf_t *out)
{
    uint8_t hdr[OPTIM_HEADER];
    if (!o || !out)
        return FL_EINVAL;
    size_t n = state_floats(o);
    memcpy(hdr, optim_magic, 8);
    put_le(hdr + 8, OPTIM_VERSION, 4);
    put_le(hdr + 12, (uint32_t)o->cfg.kind, 4);
    put_le(hdr + 16, o->d, 8);
    put_le(hdr + 24, o->steps, 8);
    int rc = fl_buf_reserve(out, sizeof hdr + 4 * n);
    if (rc < 0)
        return rc;
    uint8_t *w = out->data + out->len;
    memcpy(w, hdr, sizeof hdr);
    w += sizeof hdr;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &o->state[i], 4);
        put_le(w + 4 * i, u, 4);
    }
    out->len += sizeof hdr + 4 * n;
    return 0;
}

int fl_optim_load(fl_optim_t *o, const uint8_t *data, size_t len)
{
    if (!o || !data)
        return FL_EINVAL;
    if (len < OPTIM_HEADER)
        return FL_ETRUNC;
    if (memcmp(data, optim_magic, 8) != 0)
        return FL_EMAGIC;
    if (get_le(data + 8, 4) != OPTIM_VERSION)
        return FL_EVERSION;
    size_t n = state_floats(o);
    if (get_le(data + 12, 4) != (uint64_t)o->cfg.kind ||
        get_le(data + 16, 8) != (uint64_t)o->d ||
        (len - OPTIM_HEADER) / 4 != n || (len - OPTIM_HEADER) % 4 != 0)
        return FL_EFORMAT;
    const uint8_t *p = data + OPTIM_HEADER;
    /* Check everything before touching the state. */
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)get_le(p + 4 * i, 4);
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f) || (i >= o->d && o->v && f < 0))
            return FL_EFORMAT;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)get_le(p + 4 * i, 4);
        memcpy(&o->state[i], &u, 4);
    }
    o->steps = get_le(data + 24, 8);
    return 0;
}
