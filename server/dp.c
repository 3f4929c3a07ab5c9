/* server/dp.c — Gaussian noise from a CSPRNG and the RDP accountant of the
 * sampled Gaussian mechanism. */
#include "server/dp.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <string.h>

/* ---- noise ---- */

#define NOISE_BUF_WORDS 256

struct fl_dp_noise {
    uint8_t key[crypto_stream_chacha20_KEYBYTES];
    uint64_t block;                /* next 64-byte keystream block */
    uint64_t buf[NOISE_BUF_WORDS]; /* keystream not yet used */
    size_t pos;                    /* next unused word of buf */
    double spare;                  /* second Box–Muller output */
    int has_spare;
};

fl_dp_noise_t *fl_dp_noise_new(const uint8_t *seed)
{
    if (sodium_init() < 0)
        return NULL;
    /* sodium_malloc: guarded pages, wiped by sodium_free. The key decides
     * the noise, and whoever knows the noise can remove it. */
    fl_dp_noise_t *n = sodium_malloc(sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    if (seed)
        memcpy(n->key, seed, sizeof n->key);
    else
        randombytes_buf(n->key, sizeof n->key);
    n->pos = NOISE_BUF_WORDS;
    return n;
}

void fl_dp_noise_free(fl_dp_noise_t *n)
{
    if (n)
        sodium_free(n); /* zeroes the whole allocation */
}

static uint64_t noise_word(fl_dp_noise_t *n)
{
    if (n->pos == NOISE_BUF_WORDS) {
        static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];
        memset(n->buf, 0, sizeof n->buf);
        crypto_stream_chacha20_xor_ic((uint8_t *)n->buf, (uint8_t *)n->buf,
                                      sizeof n->buf, nonce, n->block, n->key);
        n->block += sizeof n->buf / 64;
        n->pos = 0;
    }
    uint64_t w = n->buf[n->pos];
    n->buf[n->pos++] = 0;
    return w;
}

/* Uniform in (0, 1] with 53 random bits: never 0, so log() is finite. */
static double noise_uniform(fl_dp_noise_t *n)
{
    return (double)((noise_word(n) >> 11) + 1) * 0x1.0p-53;
}

double fl_dp_noise_normal(fl_dp_noise_t *n)
{
    if (n->has_spare) {
        n->has_spare = 0;
        return n->spare;
    }
    double r = sqrt(-2.0 * log(noise_uniform(n)));
    double t = 2.0 * M_PI * noise_uniform(n);
    n->spare = r * sin(t);
    n->has_spare = 1;
    return r * cos(t);
}

int fl_dp_noised_mean(fl_dp_noise_t *n, float *out, const float *sum, size_t d,
                      double sigma, double expected_cohort)
{
    if (!n || (d && (!out || !sum)) || !(sigma >= 0) || !isfinite(sigma) ||
        !(expected_cohort > 0) || !isfinite(expected_cohort))
        return FL_EINVAL;
    for (size_t i = 0; i < d; i++) {
        double v = (double)sum[i];
        if (sigma > 0)
            v += sigma * fl_dp_noise_normal(n);
        out[i] = (float)(v / expected_cohort);
    }
    return 0;
}

/* ---- RDP of the sampled Gaussian ----
 * A_alpha = E_{x ~ N(0, z^2)} [ ((1 - q) + q exp((2x - 1) / (2 z^2)))^alpha ]
 * and RDP(alpha) = log(A_alpha) / (alpha - 1) (Mironov et al. 2019). All
 * sums run in log space: terms reach exp(10^5) at alpha = 1024. */

/* log(e^a + e^b) */
static double log_add(double a, double b)
{
    double lo = FL_MIN(a, b), hi = FL_MAX(a, b);
    if (lo == -INFINITY)
        return hi;
    return hi + log1p(exp(lo - hi));
}

/* log |Gamma(x)|, reentrant (lgamma writes the global signgam). */
static double log_gamma(double x)
{
    int sign;
    return lgamma_r(x, &sign);
}

/* log |binomial(n, k)| for real n, integer-valued k. For fractional n and
 * k > n + 1 the generalized coefficient alternates in sign; the series
 * below sums magnitudes, which bounds A_alpha from above (and is what
 * dp_accounting does). */
static double log_binom(double n, double k)
{
    return log_gamma(n + 1) - log_gamma(k + 1) - log_gamma(n - k + 1);
}

/* log(erfc(x)), accurate where erfc underflows: for large x the asymptotic
 * expansion erfc(x) = exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4)
 * - 15/(8x^6) + 105/(16x^8)); at x >= 20 the first dropped term is below
 * 1e-13 relative. */
static double log_erfc(double x)
{
    if (x < 20)
        return log(erfc(x));
    double y = 1.0 / (2.0 * x * x);
    double series = 1 - y * (1 - 3 * y * (1 - 5 * y * (1 - 7 * y)));
    return -x * x - log(x) - 0.5 * log(M_PI) + log(series);
}

static double log_a_int(double q, double z, int alpha)
{
    double acc = -INFINITY, lq = log(q), l1mq = log1p(-q);
    for (int i = 0; i <= alpha; i++) {
        double term = log_binom(alpha, i) + i * lq + (alpha - i) * l1mq +
                      ((double)i * i - i) / (2 * z * z);
        acc = log_add(acc, term);
    }
    return acc;
}

#define FRAC_MAX_TERMS 1000

/* Fractional alpha (Mironov et al. 2019, Sec. 3.3): split the integral at
 * z0, where q e^{(2x-1)/(2z^2)} = 1 - q, expand ((1-q) + q e^{...})^alpha
 * binomially in the small ratio on each side, and integrate each term in
 * closed form (a Gaussian tail, hence erfc). Stops when both halves'
 * terms decrease and are below e^-30 of the total; +INFINITY if that has
 * not happened after FRAC_MAX_TERMS terms. */
static double log_a_frac(double q, double z, double alpha)
{
    double a0 = -INFINITY, a1 = -INFINITY;
    double prev0 = -INFINITY, prev1 = -INFINITY;
    double z0 = z * z * log(1 / q - 1) + 0.5;
    double lq = log(q), l1mq = log1p(-q), ss = 2 * z * z;
    for (int i = 0; i < FRAC_MAX_TERMS; i++) {
        double c = log_binom(alpha, i), j = alpha - i;
        double t0 = c + i * lq + j * l1mq;
        double t1 = c + j * lq + i * l1mq;
        double e0 = log(0.5) + log_erfc((i - z0) / (M_SQRT2 * z));
        double e1 = log(0.5) + log_erfc((z0 - j) / (M_SQRT2 * z));
        double s0 = t0 + ((double)i * i - i) / ss + e0;
        double s1 = t1 + (j * j - j) / ss + e1;
        a0 = log_add(a0, s0);
        a1 = log_add(a1, s1);
        double total = log_add(a0, a1);
        if (s0 < prev0 && s1 < prev1 && FL_MAX(s0, s1) < total - 30)
            return total;
        prev0 = s0;
        prev1 = s1;
    }
    return INFINITY;
}

double fl_dp_rdp_sampled_gaussian(double q, double z, double alpha)
{
    if (!(q >= 0 && q <= 1) || !(z >= 0) || !(alpha >= 1))
        return NAN;
    if (q == 0)
        return 0;
    if (isinf(alpha) || z == 0)
        return INFINITY;
    if (q == 1)
        return alpha / (2 * z * z); /* the Gaussian; alpha = 1 is the KL */
    if (alpha == 1)
        return NAN; /* the series below needs alpha > 1 */
    double la;
    if (alpha == floor(alpha) && alpha <= 1e6)
        la = log_a_int(q, z, (int)alpha);
    else
        la = log_a_frac(q, z, alpha);
    return la / (alpha - 1);
}

/* ---- RDP → (ε, δ) ----
 * Balle et al. (2020), Prop. 12 (arXiv:2004.00010v4), also Asoodeh et al.
 * (2020), eq. 20: (alpha, r)-RDP implies (ε, δ)-DP with
 *     ε = r + log1p(-1/alpha) - (log δ + log alpha) / (alpha - 1).
 * It is unstable as alpha → 1, so only orders above 1.01 use it; for all
 * orders the KL bound δ <= sqrt(1 - e^{-r}) gives ε = 0 when it already
 * meets δ. Ties go to the first order, as in dp_accounting. */
int fl_dp_rdp_to_epsilon(const double *orders, const double *rdp, size_t n,
                         double delta, double *eps, double *order)
{
    if (!orders || !rdp || n == 0 || !eps || !(delta > 0 && delta < 1))
        return FL_EINVAL;
    double best = INFINITY, best_order = orders[0];
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i], e;
        if (!(a >= 1) || isnan(r))
            return FL_EINVAL;
        if (r < 0)
            e = 0; /* rounding below zero: nothing leaks at this order */
        else if (delta * delta + expm1(-r) > 0)
            e = 0;
        else if (a > 1.01)
            e = r + log1p(-1 / a) - log(delta * a) / (a - 1);
        else
            e = INFINITY;
        if (e < best) {
            best = e;
            best_order = a;
        }
    }
    *eps = FL_MAX(0.0, best);
    if (order)
        *order = best_order;
    return 0;
}

int fl_dp_rdp_to_delta(const double *orders, const double *rdp, size_t n,
                       double eps, double *delta, double *order)
{
    if (!orders || !rdp || n == 0 || !delta || !(eps >= 0))
        return FL_EINVAL;
    double best = INFINITY, best_order = orders[0];
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i], ld;
        if (!(a >= 1) || isnan(r))
            return FL_EINVAL;
        if (r <= 0)
            ld = -INFINITY;
        else
            ld = 0.5 * log1p(-exp(-r)); /* KL bound */
        if (a > 1.01) {
            double b = (a - 1) * (r - eps + log1p(-1 / a)) - log(a);
            ld = FL_MIN(ld, b);
        }
        if (ld < best || i == 0) {
            best = ld;
            best_order = a;
        }
    }
    *delta = FL_MIN(exp(best), 1.0);
    if (order)
        *order = best_order;
    return 0;
}

/* ---- pinned orders ---- */

#define N_ORDERS (99 + 53 + 4)

static double pinned[N_ORDERS];
static pthread_once_t pinned_once = PTHREAD_ONCE_INIT;

static void orders_fill(void)
{
    size_t k = 0;
    for (int i = 1; i <= 99; i++)
        pinned[k++] = 1 + i / 10.0;
    for (int i = 11; i <= 63; i++)
        pinned[k++] = i;
    for (int p = 128; p <= 1024; p *= 2)
        pinned[k++] = p;
    FL_ASSERT(k == N_ORDERS);
}

/* Written once, read-only after. */
static void orders_init(void)
{
    pthread_once(&pinned_once, orders_fill);
}

size_t fl_dp_orders(const double **orders)
{
    orders_init();
    *orders = pinned;
    return N_ORDERS;
}

static int rdp_step(double q, double z, double *rdp)
{
    if (!(q >= 0 && q <= 1) || !(z >= 0) || !isfinite(z))
        return FL_EINVAL;
    orders_init();
    for (size_t i = 0; i < N_ORDERS; i++)
        rdp[i] = fl_dp_rdp_sampled_gaussian(q, z, pinned[i]);
    return 0;
}

int fl_dp_epsilon(double q, double z, uint64_t rounds, double delta,
                  double *eps, double *order)
{
    double rdp[N_ORDERS];
    int rc = rdp_step(q, z, rdp);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < N_ORDERS; i++)
        rdp[i] *= (double)rounds;
    return fl_dp_rdp_to_epsilon(pinned, rdp, N_ORDERS, delta, eps, order);
}

int fl_dp_noise_for_epsilon(double q, uint64_t rounds, double delta,
                            double target_eps, double *z)
{
    if (!z || !(target_eps > 0) || !isfinite(target_eps))
        return FL_EINVAL;
    double eps, lo = 0, hi = 1;
    int rc;
#define EPS_AT(zz)                                                             \
    do {                                                                       \
        rc = fl_dp_epsilon(q, (zz), rounds, delta, &eps, NULL);                \
        if (rc < 0)                                                            \
            return rc;                                                         \
    } while (0)
    EPS_AT(hi);
    if (eps > target_eps) {
        for (;;) { /* grow until the target is met */
            lo = hi;
            hi *= 2;
            if (hi > 1e6)
                return FL_ERANGE;
            EPS_AT(hi);
            if (eps <= target_eps)
                break;
        }
    } else {
        for (;;) { /* shrink while the target is still met */
            if (hi < 1e-6) {
                *z = hi;
                return 0;
            }
            EPS_AT(hi / 2);
            if (eps > target_eps) {
                lo = hi / 2;
                break;
            }
            hi /= 2;
        }
    }
    /* Invariant: eps(lo) > target >= eps(hi). */
    while (hi - lo > 1e-6 * hi) {
        double mid = 0.5 * (lo + hi);
        EPS_AT(mid);
        if (eps <= target_eps)
            hi = mid;
        else
            lo = mid;
    }
#undef EPS_AT
    *z = hi;
    return 0;
}

/* ---- the accountant ---- */

struct fl_dp_accountant {
    uint64_t rounds;
    double rdp[N_ORDERS]; /* total RDP at pinned[i] */
};

fl_dp_accountant_t *fl_dp_accountant_new(void)
{
    orders_init();
    return fl_calloc(1, sizeof(fl_dp_accountant_t));
}

void fl_dp_accountant_free(fl_dp_accountant_t *a)
{
    fl_free(a);
}

int fl_dp_accountant_compose(fl_dp_accountant_t *a, double q, double z,
                             uint64_t steps)
{
    double step[N_ORDERS];
    if (!a)
        return FL_EINVAL;
    int rc = rdp_step(q, z, step);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < N_ORDERS; i++)
        a->rdp[i] += (double)steps * step[i];
    a->rounds += steps;
    return 0;
}

uint64_t fl_dp_accountant_rounds(const fl_dp_accountant_t *a)
{
    return a->rounds;
}

int fl_dp_accountant_epsilon(const fl_dp_accountant_t *a, double delta,
                             double *eps, double *order)
{
    if (!a)
        return FL_EINVAL;
    return fl_dp_rdp_to_epsilon(pinned, a->rdp, N_ORDERS, delta, eps, order);
}

int fl_dp_accountant_check(const fl_dp_accountant_t *a, double q, double z,
                           double delta, double budget, double *eps_after)
{
    double rdp[N_ORDERS], eps;
    if (!a || !(budget >= 0))
        return FL_EINVAL;
    int rc = rdp_step(q, z, rdp);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < N_ORDERS; i++)
        rdp[i] += a->rdp[i];
    rc = fl_dp_rdp_to_epsilon(pinned, rdp, N_ORDERS, delta, &eps, NULL);
    if (rc < 0)
        return rc;
    if (eps_after)
        *eps_after = eps;
    return eps > budget ? FL_EBUDGET : 0;
}

/* Record: "FLDPACC1" | u32 version | u32 n | u64 rounds | n x (f64 order,
 * f64 rdp), all little-endian. */
static const char acc_magic[8] = {'F', 'L', 'D', 'P', 'A', 'C', 'C', '1'};
#define ACC_VERSION 1u
#define ACC_HEADER  (8 + 4 + 4 + 8)

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

static uint64_t f64_bits(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static double bits_f64(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

int fl_dp_accountant_save(const fl_dp_accountant_t *a, fl_buf_t *out)
{
    uint8_t rec[ACC_HEADER + N_ORDERS * 16];
    if (!a || !out)
        return FL_EINVAL;
    memcpy(rec, acc_magic, 8);
    put_le(rec + 8, ACC_VERSION, 4);
    put_le(rec + 12, N_ORDERS, 4);
    put_le(rec + 16, a->rounds, 8);
    for (size_t i = 0; i < N_ORDERS; i++) {
        put_le(rec + ACC_HEADER + 16 * i, f64_bits(pinned[i]), 8);
        put_le(rec + ACC_HEADER + 16 * i + 8, f64_bits(a->rdp[i]), 8);
    }
    return fl_buf_append(out, rec, sizeof rec);
}

int fl_dp_accountant_load(const uint8_t *data, size_t len,
                          fl_dp_accountant_t **out)
{
    if (!out)
        return FL_EINVAL;
    *out = NULL;
    if (!data || len < ACC_HEADER)
        return FL_ETRUNC;
    if (memcmp(data, acc_magic, 8) != 0)
        return FL_EMAGIC;
    if (get_le(data + 8, 4) != ACC_VERSION)
        return FL_EVERSION;
    if (get_le(data + 12, 4) != N_ORDERS || len != ACC_HEADER + N_ORDERS * 16)
        return FL_EFORMAT;
    orders_init();
    fl_dp_accountant_t *a = fl_dp_accountant_new();
    if (!a)
        return FL_ENOMEM;
    a->rounds = get_le(data + 16, 8);
    for (size_t i = 0; i < N_ORDERS; i++) {
        const uint8_t *p = data + ACC_HEADER + 16 * i;
        double r = bits_f64(get_le(p + 8, 8));
        /* The orders are pinned: a record with other orders is not ours. */
        if (get_le(p, 8) != f64_bits(pinned[i]) || isnan(r) || r < 0) {
            fl_dp_accountant_free(a);
            return FL_EFORMAT;
        }
        a->rdp[i] = r;
    }
    *out = a;
    return 0;
}
