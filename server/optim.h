/*
 * server/optim.h — server optimizers (DESIGN.md §3 step 7): the global
 * model's update from the noised mean of the client deltas.
 *
 * Each round the server has the pseudo-gradient
 *     g[i] = mean over clients of (local[i] - global[i])   (noised, step 7)
 * and applies one of (Reddi et al. 2021, "Adaptive Federated
 * Optimization", Algorithm 2; Hsu et al. 2019 for server momentum):
 *
 *   FedAvg:   m = beta m + g            (beta = momentum; 0: m = g)
 *             x = x + lr m
 *   FedAdam:  m = b1 m + (1 - b1) g
 *             v = b2 v + (1 - b2) g^2
 *             x = x + lr m / (sqrt(v) + tau)
 *   FedYogi:  m = b1 m + (1 - b1) g
 *             v = v - (1 - b2) g^2 sign(v - g^2)
 *             x = x + lr m / (sqrt(v) + tau)
 *
 * with m = 0 and v = tau^2 before the first round (the paper's v_{-1} >=
 * tau^2) and no bias correction, as in the paper. Element-wise, in float
 * with double intermediates; x, g are float[d].
 *
 * The state (m, and v for the adaptive ones) is one allocation; it can be
 * saved as bytes into the server's checkpoint and restored.
 *
 * No I/O, no logging. Ownership: arguments are borrowed. Thread-safety: one
 * handle must not be used from two threads at once.
 */
#ifndef FL_SERVER_OPTIM_H
#define FL_SERVER_OPTIM_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    FL_OPTIM_FEDAVG = 0,
    FL_OPTIM_FEDADAM = 1,
    FL_OPTIM_FEDYOGI = 2,
} fl_optim_kind_t;

/* Names as in configuration files: "fedavg", "fedadam", "fedyogi" (the
 * order of this list is the enum's, for an FL_CFG_ENUM option). */
#define FL_OPTIM_CHOICES "fedavg|fedadam|fedyogi"

typedef struct {
    fl_optim_kind_t kind;
    double lr;       /* server learning rate, > 0 */
    double momentum; /* FedAvg only: heavy-ball beta in [0, 1) */
    double beta1;    /* adaptive: in [0, 1) */
    double beta2;    /* adaptive: in [0, 1) */
    double tau;      /* adaptive: > 0, the adaptivity floor */
} fl_optim_config_t;

/* Defaults: FedAvg lr 1, momentum 0 (plain FedAvg); FedAdam/FedYogi lr
 * 0.01, beta1 0.9, beta2 0.99, tau 1e-3 (the paper's grid centre). */
void fl_optim_config_init(fl_optim_config_t *c, fl_optim_kind_t kind);
/* Parses "fedavg" | "fedadam" | "fedyogi"; FL_EINVAL otherwise. */
int fl_optim_kind_parse(const char *name, fl_optim_kind_t *out);
const char *fl_optim_kind_name(fl_optim_kind_t kind);

typedef struct fl_optim fl_optim_t;

/* A new optimizer for d parameters; the config is copied. Returns 0 and
 * *out (returned owned), FL_EINVAL on a bad config or d = 0, FL_ENOMEM. */
int fl_optim_new(const fl_optim_config_t *c, size_t d, fl_optim_t **out);
void fl_optim_free(fl_optim_t *o); /* NULL is a no-op */

/* One server step: params[d] += update(g[d]). g is the mean client delta
 * (local - global, noised). params and g must not overlap. FL_EINVAL on a
 * non-finite g (nothing is changed then). */
int fl_optim_step(fl_optim_t *o, float *params, const float *g);

size_t fl_optim_dim(const fl_optim_t *o);
uint64_t fl_optim_steps(const fl_optim_t *o); /* rounds applied */
/* The state's views, for inspection and tests: m[d]; v[d] or NULL for
 * FedAvg. Borrowed from the handle. */
const float *fl_optim_m(const fl_optim_t *o);
const float *fl_optim_v(const fl_optim_t *o);

/* Appends the state to out: "FLOPTIM1", u32 version, u32 kind, u64 d,
 * u64 steps, then m (and v) as little-endian float32. */
int fl_optim_save(const fl_optim_t *o, fl_buf_t *out);
/* Restores a saved state into o, which must have the same kind and d
 * (FL_EFORMAT otherwise, and on any malformed record; o is unchanged on
 * error). The hyper-parameters come from o's config, not the record. */
int fl_optim_load(fl_optim_t *o, const uint8_t *data, size_t len);

#endif /* FL_SERVER_OPTIM_H */
