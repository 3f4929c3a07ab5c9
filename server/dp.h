/*
 * server/dp.h — central differential privacy for the aggregation server
 * (DESIGN.md §3 step 7, §4 "Differential privacy").
 *
 * Three parts:
 *   1. The sensitivity S' of one client's contribution to the unmasked
 *      integer sum is the codec's (fl_compress_sensitivity: clip norm,
 *      quantization scale and bits, values sent after support and
 *      rotation padding), not only the clip norm.
 *   2. Gaussian noise N(0, (z S')^2) per coordinate from a CSPRNG (ChaCha20
 *      keystream keyed from the kernel, or from an explicit seed for tests),
 *      and the division by the FIXED expected cohort size.
 *   3. An RDP accountant for the Poisson-sampled Gaussian mechanism
 *      (user-level DP, add-or-remove-one adjacency, q = cohort / population,
 *      one composition step per round) over the pinned orders
 *      {1.1, 1.2, ..., 10.9} ∪ {11, ..., 63} ∪ {128, 256, 512, 1024}, with
 *      the improved RDP → (ε, δ) conversion of Balle et al. (2020, Prop. 12
 *      of arXiv:2004.00010v4), computed the way Google's dp_accounting
 *      library computes it, so the two agree to floating-point rounding.
 *      The analysis is that of Poisson sampling (each device joins a round
 *      independently with probability q); a fixed-size cohort is the usual
 *      approximation (DP-FedAvg, McMahan et al. 2018). q must count every
 *      client whose update can enter the sum: with over-selection, either
 *      aggregate at most `cohort` survivors or use q = invited / population.
 *
 * One round on the server, in this order:
 *     fl_dp_accountant_check(acc, q, z, delta, budget, NULL)  -> stop if
 *                                                   FL_EBUDGET
 *     ... secure aggregation; decode the integer sum: sum[i] = int / scale
 *     fl_dp_noised_mean(noise, mean, sum, d, z * S', cohort)
 *     fl_optim_step(opt, params, mean)              (server/optim.h)
 *     fl_dp_accountant_compose(acc, q, z, 1)
 *     fl_dp_accountant_epsilon(acc, delta, &eps)    -> the manifest
 *     fl_dp_accountant_save / fl_optim_save         -> the checkpoint
 *     fl_artifact_publish(...)                      (artifact/artifact.h)
 * The accountant is saved before the model is published, so that a crash
 * never leaves a released model the accountant has not counted.
 *
 * Nothing here logs or does I/O. Ownership: pointer arguments are borrowed
 * unless stated. Thread-safety: the free functions are reentrant; a handle
 * (noise source, accountant) must not be used from two threads at once.
 */
#ifndef FL_SERVER_DP_H
#define FL_SERVER_DP_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

/* ---- sensitivity after quantization ----
 * S' is fl_compress_sensitivity (compress/compress.h), which states the
 * bound and why it holds; the codec that quantizes is the one place that
 * knows it. server/engine.c calibrates sigma = z S' from it. */

/* ---- noise ----
 * A Gaussian source over a ChaCha20 keystream. Box–Muller on 53-bit
 * uniforms. (A floating-point Gaussian is what DP-SGD and DP-FedAvg
 * deployments use; a discrete Gaussian in the ring is a later option.) */
typedef struct fl_dp_noise fl_dp_noise_t;

#define FL_DP_SEED_BYTES 32

/* seed: NULL = a fresh key from the kernel CSPRNG (production); otherwise
 * FL_DP_SEED_BYTES bytes that make the stream reproducible (tests, and the
 * server's seeded mode for the integration test). Returned owned; NULL when
 * out of memory or when the CSPRNG fails. */
fl_dp_noise_t *fl_dp_noise_new(const uint8_t *seed);
void fl_dp_noise_free(fl_dp_noise_t *n); /* wipes the key; NULL is a no-op */
/* One standard normal sample. */
double fl_dp_noise_normal(fl_dp_noise_t *n);

/* The noised mean of step 7:
 *     out[i] = (sum[i] + N(0, sigma^2)) / expected_cohort,   i < d
 * out may equal sum. sigma = z * S' (0 switches noise off); expected_cohort
 * is the configured cohort size, not the number of survivors, so one
 * client's influence on the mean is at most S' / expected_cohort whoever
 * drops. out: [d], sum: [d]. FL_EINVAL on sigma < 0, cohort <= 0. */
int fl_dp_noised_mean(fl_dp_noise_t *n, float *out, const float *sum, size_t d,
                      double sigma, double expected_cohort);

/* ---- Rényi DP of the sampled Gaussian ----
 * RDP at order alpha > 1 (alpha >= 1 when q is 0 or 1) of ONE step of the
 * Poisson-sampled Gaussian mechanism with sampling rate q in [0, 1] and noise
 * multiplier z >= 0 (noise std / L2 sensitivity). +INFINITY when z = 0 or when
 * the series for a fractional order does not converge (that order is then
 * useless). Integer alpha: the finite binomial sum (Mironov et al. 2019,
 * Sec. 3.2); fractional alpha: the two-sided series split at z0 = z^2 log(1/q -
 * 1) + 1/2 (Sec. 3.3), summed in log space. NAN on arguments out of range. */
double fl_dp_rdp_sampled_gaussian(double q, double z, double alpha);

/* The improved conversion: the smallest ε over the orders such that the
 * mechanism with RDP rdp[i] at orders[i] is (ε, δ)-DP, and the order that
 * gives it (*order may be NULL). ε may be +INFINITY. FL_EINVAL on delta
 * outside (0, 1) or an order < 1. */
int fl_dp_rdp_to_epsilon(const double *orders, const double *rdp, size_t n,
                         double delta, double *eps, double *order);
/* The converse: the smallest δ for a given ε >= 0. */
int fl_dp_rdp_to_delta(const double *orders, const double *rdp, size_t n,
                       double eps, double *delta, double *order);

/* The pinned orders (156 of them), in increasing order. */
size_t fl_dp_orders(const double **orders);

/* ε after `rounds` rounds at (q, z), for δ, over the pinned orders. */
int fl_dp_epsilon(double q, double z, uint64_t rounds, double delta,
                  double *eps, double *order);
/* The smallest noise multiplier z (to a relative 1e-6, rounded up so the
 * result never exceeds the target) with fl_dp_epsilon(q, z, rounds, delta)
 * <= target_eps. FL_ERANGE when even z = 1e6 does not reach it. */
int fl_dp_noise_for_epsilon(double q, uint64_t rounds, double delta,
                            double target_eps, double *z);

/* ---- the accountant ----
 * Holds the total RDP at each pinned order over the rounds composed so far.
 * Rounds may have different (q, z) (the cohort or population may change). */
typedef struct fl_dp_accountant fl_dp_accountant_t;

fl_dp_accountant_t *fl_dp_accountant_new(void); /* returned owned */
void fl_dp_accountant_free(fl_dp_accountant_t *a);
/* Adds `steps` rounds at (q, z). */
int fl_dp_accountant_compose(fl_dp_accountant_t *a, double q, double z,
                             uint64_t steps);
uint64_t fl_dp_accountant_rounds(const fl_dp_accountant_t *a);
/* ε spent so far for δ (0 before any round), and its order (may be NULL). */
int fl_dp_accountant_epsilon(const fl_dp_accountant_t *a, double delta,
                             double *eps, double *order);
/* The budget check of step 7, made BEFORE a round starts: would one more
 * round at (q, z) bring ε (at δ) above budget? Returns 0 when the round
 * fits, FL_EBUDGET when it would exceed, FL_EINVAL on bad arguments.
 * *eps_after (may be NULL) receives ε after that round. */
int fl_dp_accountant_check(const fl_dp_accountant_t *a, double q, double z,
                           double delta, double budget, double *eps_after);
/* Serialization for the server's checkpoint: a versioned little-endian
 * record (magic, rounds, the orders and their RDP). save appends to out;
 * load returns an owned accountant; FL_EFORMAT/FL_EMAGIC/FL_EVERSION on a
 * bad record, which is rejected whole. */
int fl_dp_accountant_save(const fl_dp_accountant_t *a, fl_buf_t *out);
int fl_dp_accountant_load(const uint8_t *data, size_t len,
                          fl_dp_accountant_t **out);

#endif /* FL_SERVER_DP_H */
