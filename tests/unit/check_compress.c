/* tests/unit/check_compress.c — the update codecs: clipping, stochastic
 * rounding, the ring and its headroom rule, supports and their wire form,
 * the Hadamard rotation, error feedback and the whole client/server
 * pipelines. */
#include "common/bitpack.h"
#include "common/common.h"
#include "compress/compress.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Heavy-tailed test data: Laplace(0, 1) through the inverse CDF. */
static void fill_laplace(float *x, size_t n, uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        double u = fl_rng_uniform(&r) - 0.5;
        double a = 1.0 - 2.0 * fabs(u);
        if (a < 1e-300)
            a = 1e-300;
        x[i] = (float)(u < 0 ? log(a) : -log(a));
    }
}

/* Asserts cond (which may use i) for every i < n with one Check call: in
 * fork mode each ck_assert writes to a pipe, and millions of them take
 * seconds. Reports the first index that fails. */
#define ASSERT_ALL(n, cond)                                                    \
    do {                                                                       \
        size_t bad_ = (size_t)-1;                                              \
        for (size_t i = 0; i < (n); i++)                                       \
            if (!(cond)) {                                                     \
                bad_ = i;                                                      \
                break;                                                         \
            }                                                                  \
        ck_assert_msg(bad_ == (size_t)-1, "%s fails at index %zu", #cond,      \
                      bad_);                                                   \
    } while (0)

static float *fvec(size_t n)
{
    float *p = fl_calloc(n ? n : 1, sizeof(float));
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- clipping -------------------------------------------------------------
 */

START_TEST(test_clip_bounds_norm)
{
    static const size_t lens[] = {1, 3, 100, 4097};
    static const double S[] = {1e-3, 0.5, 1.0, 30.0};
    for (size_t li = 0; li < FL_ARRAY_LEN(lens); li++)
        for (size_t si = 0; si < FL_ARRAY_LEN(S); si++) {
            size_t n = lens[li];
            float *x = fvec(n);
            fill_laplace(x, n, 10 * li + si);
            double before = fl_compress_l2_norm(x, n);
            double ret = fl_compress_clip(x, n, S[si]);
            double after = fl_compress_l2_norm(x, n);
            ck_assert_double_eq_tol(ret, before, 1e-12 * before);
            ck_assert_double_le(after, S[si]);
            if (before > S[si])
                ck_assert_double_ge(after, S[si] * (1 - 1e-5));
            else
                ck_assert_double_eq(after, before); /* untouched */
            fl_free(x);
        }
    /* Per layer: every slice within its own budget, the rest untouched. */
    float x[100];
    fill_laplace(x, 100, 7);
    float keep = x[99];
    fl_compress_slice_t sl[3] = {{0, 10}, {10, 50}, {60, 39}};
    float budget[3] = {0.1f, 2.0f, 1000.0f};
    double nb[3];
    double n2 = fl_compress_l2_norm(x + 60, 39);
    ck_assert_int_eq(fl_compress_clip_layers(x, 100, sl, 3, budget, nb), 0);
    ck_assert_double_le(fl_compress_l2_norm(x, 10), 0.1);
    ck_assert_double_le(fl_compress_l2_norm(x + 10, 50), 2.0);
    ck_assert_double_eq_tol(fl_compress_l2_norm(x + 60, 39), n2, 1e-9);
    ck_assert_double_eq_tol(nb[2], n2, 1e-9);
    ck_assert_double_gt(nb[0], 0.1);
    ck_assert_float_eq(x[99], keep);
    /* Overlapping or out-of-range slices are refused before any change. */
    fl_compress_slice_t bad[2] = {{0, 10}, {5, 10}};
    ck_assert_int_eq(fl_compress_clip_layers(x, 100, bad, 2, budget, NULL),
                     FL_EINVAL);
    fl_compress_slice_t out[1] = {{95, 10}};
    ck_assert_int_eq(fl_compress_clip_layers(x, 100, out, 1, budget, NULL),
                     FL_EINVAL);
}
END_TEST

/* ---- stochastic rounding ---------------------------------------------------
 * For a value y (grid units) between f and f + step, q = f + step with
 * probability p = (y - f) / step. Over T independent trials the mean error
 * has standard error sqrt(p (1 - p) / T) * step; we allow 5 of them (plus
 * the 2^-24 resolution of the uniforms). The variance of q is
 * p (1 - p) step^2; its estimate has standard error
 * sqrt((mu4 - sigma^4) / T), mu4 = p (1 - p) (1 - 3p + 3p^2) step^4. */
START_TEST(test_quantize_unbiased_and_variance)
{
    const size_t T = 200000;
    int32_t *q = fl_malloc(T * sizeof *q);
    float *x = fvec(T);
    static const unsigned bits[] = {1, 2, 4, 8, 16};
    static const double fracs[] = {0.0, 0.03, 0.25, 0.5, 0.9, 0.999};
    const float scale = 3.0f;
    fl_rng_t rng;
    fl_rng_seed(&rng, 42);
    for (size_t bi = 0; bi < FL_ARRAY_LEN(bits); bi++) {
        unsigned b = bits[bi];
        int32_t qmax = fl_compress_qmax(b);
        double step = b == 1 ? 2.0 : 1.0;
        for (size_t fi = 0; fi < FL_ARRAY_LEN(fracs); fi++) {
            /* A grid point near the middle of the range, negative side for
             * odd cases, plus the fraction. */
            double lo = b == 1 ? -1.0 : (fi & 1 ? -qmax / 2 - 1 : qmax / 3);
            double y = lo + fracs[fi] * step;
            float xv = (float)(y / scale);
            double yv = (double)(xv * scale); /* what the kernel sees */
            for (size_t i = 0; i < T; i++)
                x[i] = xv;
            fl_compress_quantize(q, x, T, scale, b, &rng);
            double s = 0, s2 = 0;
            ASSERT_ALL(T, abs(q[i]) <= qmax);
            for (size_t i = 0; i < T; i++) {
                s += q[i];
                s2 += (double)q[i] * q[i];
            }
            double mean = s / T, var = s2 / T - mean * mean;
            double p = (yv - lo) / step;
            double se = sqrt(p * (1 - p) / T) * step;
            ck_assert_msg(fabs(mean - yv) <= 5 * se + step * 0x1p-23,
                          "b=%u y=%g mean=%g se=%g", b, yv, mean, se);
            double vth = p * (1 - p) * step * step;
            double mu4 = p * (1 - p) * (1 - 3 * p + 3 * p * p) * pow(step, 4);
            double sev = sqrt(fmax(mu4 - vth * vth, 0) / T);
            /* plus the bias of the plug-in mean, (5 se)^2 at most */
            ck_assert_msg(fabs(var - vth) <= 5 * sev + 25 * se * se + 1e-9,
                          "b=%u y=%g var=%g theory=%g", b, yv, var, vth);
        }
    }
    /* Values beyond the grid are clamped to its edges. */
    float edge[4] = {1e6f, -1e6f, 127.0f / scale, -127.0f / scale};
    int32_t qe[4];
    fl_compress_quantize(qe, edge, 4, scale, 8, &rng);
    ck_assert_int_eq(qe[0], 127);
    ck_assert_int_eq(qe[1], -127);
    ck_assert_int_eq(qe[2], 127);
    ck_assert_int_eq(qe[3], -127);
    fl_free(q);
    fl_free(x);
}
END_TEST

START_TEST(test_quantize_fast_matches_ref)
{
    /* Same random stream, same output, for every b and odd lengths. */
    const size_t n = 2049;
    float *x = fvec(n);
    int32_t *a = fl_malloc(n * sizeof *a), *r = fl_malloc(n * sizeof *r);
    fill_laplace(x, n, 3);
    x[5] = 0.0f;
    x[6] = -0.0f;
    for (unsigned b = 1; b <= 16; b++) {
        float scale = (float)fl_compress_qmax(b) / 4.0f; /* some clamping */
        fl_rng_t g1, g2;
        fl_rng_seed(&g1, b);
        fl_rng_seed(&g2, b);
        fl_compress_quantize(a, x, n, scale, b, &g1);
        fl_compress_quantize_ref(r, x, n, scale, b, &g2);
        ck_assert_mem_eq(a, r, n * sizeof *a);
        ck_assert_mem_eq(&g1, &g2, sizeof g1); /* same draws consumed */
    }
    fl_free(x);
    fl_free(a);
    fl_free(r);
}
END_TEST

/* ---- the ring -------------------------------------------------------------
 */

START_TEST(test_ring_pack_every_width)
{
    /* Lifted values of every width round-trip through r-bit packing, for
     * lengths that are not multiples of 8 or 32. */
    static const size_t lens[] = {1, 5, 7, 9, 31, 33, 63, 65, 1003};
    int32_t q[1003], back[1003];
    uint32_t ring[1003], un[1003];
    uint8_t packed[4 * 1003 + 8];
    fl_rng_t rng;
    fl_rng_seed(&rng, 9);
    for (unsigned r = 1; r <= 32; r++)
        for (size_t li = 0; li < FL_ARRAY_LEN(lens); li++) {
            size_t n = lens[li];
            int64_t half = (int64_t)1 << (r - 1);
            for (size_t i = 0; i < n; i++)
                q[i] = (int32_t)((int64_t)fl_rng_below(&rng, 2 * half) - half);
            q[0] = (int32_t)(half - 1);
            q[n - 1] = (int32_t)-half;
            fl_compress_lift(ring, q, n, r);
            memset(packed, 0x5a, sizeof packed);
            fl_bitpack(packed, ring, n, r);
            ck_assert_uint_eq(fl_bitpack_bytes(n, r), (n * r + 7) / 8);
            ck_assert_uint_eq(packed[fl_bitpack_bytes(n, r)], 0x5a);
            fl_bitunpack(un, packed, n, r);
            ck_assert_mem_eq(un, ring, n * sizeof *un);
            fl_compress_unlift(back, un, n, r);
            ck_assert_mem_eq(back, q, n * sizeof *q);
        }
}
END_TEST

/* n clients all at +qmax (then all at -qmax, then alternating), n the
 * largest cohort the headroom rule allows for (b, r): the decoded ring sum
 * is the exact integer sum. */
START_TEST(test_ring_sum_exact_at_headroom_limit)
{
    static const struct {
        unsigned b, r;
    } cases[] = {{1, 3}, {2, 4}, {8, 12}, {8, 16}, {4, 20}, {16, 32}};
    const size_t m = 5;
    for (size_t ci = 0; ci < FL_ARRAY_LEN(cases); ci++) {
        unsigned b = cases[ci].b, r = cases[ci].r;
        uint64_t n = (uint64_t)1 << (r - b - 1);
        ck_assert_uint_eq(fl_compress_ring_bits_min(b, n), r);
        ck_assert_uint_eq(fl_compress_ring_bits_min(b, n + 1), r + 1);
        int32_t qmax = fl_compress_qmax(b);
        for (int pattern = 0; pattern < 3; pattern++) {
            uint32_t acc[5] = {0}, ring[5];
            int64_t want[5] = {0};
            int32_t q[5], got[5];
            for (uint64_t c = 0; c < n; c++) {
                for (size_t i = 0; i < m; i++) {
                    int sgn = pattern == 0   ? 1
                              : pattern == 1 ? -1
                                             : ((c + i) & 1 ? 1 : -1);
                    q[i] = sgn * qmax;
                    want[i] += q[i];
                }
                fl_compress_lift(ring, q, m, r);
                fl_compress_ring_add(acc, ring, m, r);
            }
            fl_compress_unlift(got, acc, m, r);
            for (size_t i = 0; i < m; i++)
                ck_assert_int_eq(got[i], want[i]);
        }
        /* The configuration check: n allowed, n + 1 refused. */
        fl_compress_config_t cfg;
        fl_compress_config_init(&cfg);
        cfg.quant_bits = b;
        cfg.ring_bits = r;
        cfg.max_summands = (uint32_t)n;
        ck_assert_int_eq(fl_compress_config_check(&cfg, 10), 0);
        cfg.max_summands = (uint32_t)n + 1;
        ck_assert_int_eq(fl_compress_config_check(&cfg, 10), FL_ECONFIG);
        fl_compress_t *c = (fl_compress_t *)1;
        ck_assert_int_eq(fl_compress_new(&c, &cfg, 10), FL_ECONFIG);
        ck_assert_ptr_null(c);
    }
}
END_TEST

/* The same through the codec: n clients whose every value clamps at +qmax,
 * summed in the ring at the limit n = 2^(r-b-1), decode to n * qmax /
 * (scale * denom) on every coordinate. */
START_TEST(test_codec_ring_sum_at_limit)
{
    static const struct {
        unsigned b, r;
    } cases[] = {{8, 12}, {16, 32}, {1, 8}};
    const size_t d = 4;
    for (size_t ci = 0; ci < FL_ARRAY_LEN(cases); ci++) {
        unsigned b = cases[ci].b, r = cases[ci].r;
        uint32_t n = 1u << (r - b - 1);
        fl_compress_config_t cfg;
        fl_compress_config_init(&cfg);
        cfg.quant_bits = b;
        cfg.ring_bits = r;
        cfg.max_summands = n;
        cfg.clip_norm = 2.0f;
        cfg.scale = 1000.0f * fl_compress_qmax(b); /* every value clamps */
        fl_compress_t *c;
        ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
        float delta[4] = {1, 1, 1, 1}, out[4];
        uint32_t ring[4], acc[4] = {0};
        fl_rng_t rng;
        fl_rng_seed(&rng, 1);
        for (uint32_t k = 0; k < n; k++) {
            ck_assert_int_eq(
                fl_compress_encode_ring(c, ring, delta, NULL, &rng, NULL), 0);
            ASSERT_ALL(d, ring[i] == (uint32_t)fl_compress_qmax(b));
            fl_compress_ring_add(acc, ring, d, r);
        }
        /* Through the wire at r bits, as secure aggregation sends it. */
        uint8_t packed[16];
        uint32_t back[4];
        fl_bitpack(packed, acc, d, r);
        fl_bitunpack(back, packed, d, r);
        double denom = 3.0;
        ck_assert_int_eq(fl_compress_decode_ring_sum(c, out, back, denom), 0);
        double want = (double)n * fl_compress_qmax(b) / (cfg.scale * denom);
        for (size_t i = 0; i < d; i++)
            ck_assert_double_eq_tol(out[i], want, 1e-6 * want);
        fl_compress_free(c);
    }
}
END_TEST

/* A cohort through the ring: n clients with the same public support and
 * rotation (each its own residual and rounding), summed mod 2^r, decode to
 * the mean of what each alone decodes to; the integer sums are exact. */
START_TEST(test_cohort_ring_sum_is_sum_of_decodes)
{
    const size_t d = 3000, n = 20;
    fl_compress_config_t cfg;
    fl_compress_config_init(&cfg);
    cfg.support = FL_COMPRESS_SUPPORT_RANDOM_K;
    cfg.support_size = 1000;
    cfg.support_seed = 11;
    cfg.rotate = 1;
    cfg.rotation_seed = 12;
    cfg.quant_bits = 6;
    cfg.max_summands = (uint32_t)n;
    cfg.ring_bits = fl_compress_ring_bits_min(6, n);
    fl_compress_t *c;
    ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
    size_t m = (size_t)fl_compress_value_count(c);
    uint32_t *ring = fl_malloc(m * 4), *acc = fl_calloc(m, 4);
    int32_t *q = fl_malloc(m * 4);
    int64_t *isum = fl_calloc(m, sizeof *isum);
    float *delta = fvec(d), *res = fvec(d), *one = fvec(d), *all = fvec(d);
    double *mean = fl_calloc(d, sizeof *mean);
    fl_rng_t rng;
    fl_rng_seed(&rng, 3);
    for (size_t k = 0; k < n; k++) {
        fill_laplace(delta, d, 500 + k);
        memset(res, 0, d * sizeof *res);
        ck_assert_int_eq(
            fl_compress_encode_ring(c, ring, delta, res, &rng, NULL), 0);
        fl_compress_unlift(q, ring, m, cfg.ring_bits);
        for (size_t j = 0; j < m; j++)
            isum[j] += q[j];
        fl_compress_ring_add(acc, ring, m, cfg.ring_bits);
        ck_assert_int_eq(fl_compress_decode_ring_sum(c, one, ring, 1.0), 0);
        for (size_t i = 0; i < d; i++)
            mean[i] += one[i] / (double)n;
    }
    fl_compress_unlift(q, acc, m, cfg.ring_bits);
    ASSERT_ALL(m, q[i] == isum[i]);
    ck_assert_int_eq(fl_compress_decode_ring_sum(c, all, acc, (double)n), 0);
    ASSERT_ALL(d, fabs(all[i] - mean[i]) <= 1e-5 * (1 + fabs(mean[i])));
    fl_free(ring);
    fl_free(acc);
    fl_free(q);
    fl_free(isum);
    fl_free(delta);
    fl_free(res);
    fl_free(one);
    fl_free(all);
    fl_free(mean);
    fl_compress_free(c);
}
END_TEST

START_TEST(test_config_rules)
{
    fl_compress_config_t cfg;
    fl_compress_config_init(&cfg);
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), 0);
    ck_assert_uint_eq(cfg.ring_bits, 9);
    ck_assert_uint_eq(fl_compress_ring_bits_min(8, 100), 16);
    ck_assert_uint_eq(fl_compress_ring_bits_min(8, 128), 16);
    ck_assert_uint_eq(fl_compress_ring_bits_min(8, 129), 17);
    /* Top-k and fp32 are refused with secure aggregation. */
    cfg.support = FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG;
    cfg.support_size = 10;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    cfg.secagg = 0;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), 0);
    cfg.secagg = 1;
    cfg.support = FL_COMPRESS_SUPPORT_DENSE;
    cfg.quant_bits = 0;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    cfg.quant_bits = 17;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    cfg.quant_bits = 8;
    cfg.ring_bits = 33;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    cfg.ring_bits = 10;
    cfg.clip_norm = 0;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    cfg.clip_norm = 1;
    cfg.support = FL_COMPRESS_SUPPORT_RANDOM_K;
    cfg.support_size = 1001;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ERANGE);
    cfg.rotate = 1; /* the transmit space is 1024 */
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), 0);
    cfg.rotate = 0;
    uint32_t unsorted[3] = {1, 5, 5};
    cfg.support = FL_COMPRESS_SUPPORT_EXPLICIT;
    cfg.support_indices = unsorted;
    cfg.support_size = 3;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    unsorted[2] = 1000;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), FL_ECONFIG);
    unsorted[2] = 999;
    ck_assert_int_eq(fl_compress_config_check(&cfg, 1000), 0);
    ck_assert_int_eq(fl_compress_config_check(&cfg, 0), FL_ERANGE);

    /* Bytes on the wire. */
    uint64_t bytes;
    int exact;
    fl_compress_config_init(&cfg);
    cfg.ring_bits = 16;
    cfg.max_summands = 100;
    ck_assert_int_eq(fl_compress_wire_bytes(&cfg, 1000001, &bytes, &exact), 0);
    ck_assert_uint_eq(bytes, 2000002);
    ck_assert_int_eq(exact, 1);
    cfg.secagg = 0;
    ck_assert_int_eq(fl_compress_wire_bytes(&cfg, 1000001, &bytes, &exact), 0);
    ck_assert_uint_eq(bytes, 1000001);
    cfg.quant_bits = 3;
    ck_assert_int_eq(fl_compress_wire_bytes(&cfg, 1001, &bytes, NULL), 0);
    ck_assert_uint_eq(bytes, 376); /* ceil(3003 / 8) */
    cfg.quant_bits = 0;
    cfg.rotate = 1;
    ck_assert_int_eq(fl_compress_wire_bytes(&cfg, 1000, &bytes, NULL), 0);
    ck_assert_uint_eq(bytes, 4096);
    cfg.rotate = 0;
    cfg.quant_bits = 8;
    cfg.support = FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG;
    cfg.support_size = 10;
    ck_assert_int_eq(fl_compress_wire_bytes(&cfg, 1000, &bytes, &exact), 0);
    ck_assert_int_eq(exact, 0);
    ck_assert_uint_eq(bytes, 10 + 1 + 2 + 1 + 10 * 2);
    /* Scale: qmax / min(S, gamma S / sqrt(D)). */
    fl_compress_config_init(&cfg);
    cfg.clip_norm = 2.0f;
    cfg.range_factor = 4.0f;
    ck_assert_double_eq_tol(fl_compress_scale(&cfg, 10000),
                            127.0 / (4.0 * 2.0 / 100.0), 1e-9);
    cfg.range_factor = 0; /* auto: 1/4 + b/2 = 4.25 */
    ck_assert_double_eq_tol(fl_compress_scale(&cfg, 10000),
                            127.0 / (4.25 * 2.0 / 100.0), 1e-9);
    ck_assert_double_eq_tol(fl_compress_scale(&cfg, 4), 127.0 / 2.0, 1e-9);
}
END_TEST

/* ---- supports -------------------------------------------------------------
 */

START_TEST(test_random_k_public_support)
{
    const size_t D = 1000, k = 100;
    uint32_t a[100], b[100], c[100];
    uint64_t scratch[16];
    ck_assert_int_eq(fl_compress_support_random_k(a, scratch, k, D, 77), 0);
    for (int rep = 0; rep < 5; rep++) {
        ck_assert_int_eq(fl_compress_support_random_k(b, scratch, k, D, 77), 0);
        ck_assert_mem_eq(a, b, sizeof a);
    }
    for (size_t i = 0; i < k; i++) {
        ck_assert_uint_lt(a[i], D);
        if (i)
            ck_assert_uint_gt(a[i], a[i - 1]);
    }
    ck_assert_int_eq(fl_compress_support_random_k(c, scratch, k, D, 78), 0);
    ck_assert_mem_ne(a, c, sizeof a);
    /* Edges: k = 0, k = D (everything), k > D refused. */
    uint32_t all[64];
    ck_assert_int_eq(fl_compress_support_random_k(all, scratch, 64, 64, 5), 0);
    for (uint32_t i = 0; i < 64; i++)
        ck_assert_uint_eq(all[i], i);
    ck_assert_int_eq(fl_compress_support_random_k(all, scratch, 0, 64, 5), 0);
    ck_assert_int_eq(fl_compress_support_random_k(all, scratch, 65, 64, 5),
                     FL_EINVAL);
    /* Uniform-ish: coordinate counts over 4000 seeds, k = 5 of D = 50,
     * chi-square with 49 degrees of freedom below its 0.999 quantile. */
    long counts[50] = {0};
    for (uint64_t s = 0; s < 4000; s++) {
        uint32_t idx[5];
        ck_assert_int_eq(fl_compress_support_random_k(idx, scratch, 5, 50, s),
                         0);
        for (int i = 0; i < 5; i++)
            counts[idx[i]]++;
    }
    double e = 4000.0 * 5 / 50, chi = 0;
    for (int i = 0; i < 50; i++)
        chi += (counts[i] - e) * (counts[i] - e) / e;
    ck_assert_double_lt(chi, 85.35);
    /* Every handle made from the config derives the same support. */
    fl_compress_config_t cfg;
    fl_compress_config_init(&cfg);
    cfg.support = FL_COMPRESS_SUPPORT_RANDOM_K;
    cfg.support_seed = 77;
    cfg.support_size = k;
    cfg.scale = 100.0f;
    fl_compress_t *h1, *h2;
    ck_assert_int_eq(fl_compress_new(&h1, &cfg, D), 0);
    ck_assert_int_eq(fl_compress_new(&h2, &cfg, D), 0);
    float delta[1000];
    for (size_t i = 0; i < D; i++)
        delta[i] = (float)i * 1e-5f; /* a value that names its index */
    uint32_t r1[100];
    fl_rng_t rng;
    fl_rng_seed(&rng, 1);
    ck_assert_int_eq(fl_compress_encode_ring(h1, r1, delta, NULL, &rng, NULL),
                     0);
    int32_t q[100];
    fl_compress_unlift(q, r1, k, cfg.ring_bits);
    for (size_t i = 0; i < k; i++) /* q = round(a[i] * 1e-3): near a[i]/1000 */
        ck_assert_int_le(abs(q[i] - (int32_t)(a[i] / 1000)), 1);
    uint32_t r2[100];
    fl_rng_seed(&rng, 1);
    ck_assert_int_eq(fl_compress_encode_ring(h2, r2, delta, NULL, &rng, NULL),
                     0);
    ck_assert_mem_eq(r1, r2, sizeof r1);
    fl_compress_free(h1);
    fl_compress_free(h2);
}
END_TEST

static int cmp_desc_mag(const void *a, const void *b, void *ctx)
{
    const float *x = ctx;
    float fa = fabsf(x[*(const uint32_t *)a]),
          fb = fabsf(x[*(const uint32_t *)b]);
    if (fa != fb)
        return fa < fb ? 1 : -1;
    uint32_t ia = *(const uint32_t *)a, ib = *(const uint32_t *)b;
    return ia < ib ? -1 : ia > ib;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

START_TEST(test_top_k_exact)
{
    const size_t D = 3001;
    float *x = fvec(D);
    uint32_t *ord = fl_malloc(D * sizeof *ord), *idx = fl_malloc(D * 4);
    for (int trial = 0; trial < 3; trial++) {
        fill_laplace(x, D, 100 + trial);
        if (trial == 1) /* many ties, including zeros */
            for (size_t i = 0; i < D; i++)
                x[i] = (float)((int)(x[i] * 2)) * 0.5f;
        if (trial == 2)
            memset(x, 0, D * sizeof *x);
        for (size_t i = 0; i < D; i++)
            ord[i] = (uint32_t)i;
        qsort_r(ord, D, sizeof *ord, cmp_desc_mag, x);
        static const size_t ks[] = {0, 1, 2, 30, 1500, 3000, 3001};
        for (size_t ki = 0; ki < FL_ARRAY_LEN(ks); ki++) {
            size_t k = ks[ki];
            ck_assert_int_eq(fl_compress_support_top_k(idx, x, D, k), 0);
            uint32_t *want = fl_malloc((k ? k : 1) * sizeof *want);
            memcpy(want, ord, k * sizeof *want);
            qsort(want, k, sizeof *want, cmp_u32);
            ck_assert_mem_eq(idx, want, k * sizeof *idx);
            fl_free(want);
        }
    }
    ck_assert_int_eq(fl_compress_support_top_k(idx, x, D, D + 1), FL_EINVAL);
    fl_free(x);
    fl_free(ord);
    fl_free(idx);
}
END_TEST

START_TEST(test_indices_roundtrip)
{
    static const size_t Ds[] = {1, 8, 9, 100, 5000, 100000};
    static const double dens[] = {0.0, 0.001, 0.05, 0.3, 0.9, 1.0};
    uint32_t *idx = fl_malloc(100000 * 4), *back = fl_malloc(100000 * 4);
    uint64_t *scratch = fl_malloc((100000 / 64 + 1) * 8);
    uint8_t *enc = fl_malloc(200000);
    int saw_gaps = 0, saw_bitmap = 0;
    for (size_t di = 0; di < FL_ARRAY_LEN(Ds); di++)
        for (size_t ei = 0; ei < FL_ARRAY_LEN(dens); ei++) {
            size_t D = Ds[di], k = (size_t)(dens[ei] * D), len, k2, D2;
            ck_assert_int_eq(
                fl_compress_support_random_k(idx, scratch, k, D, di * 10 + ei),
                0);
            size_t want = fl_compress_indices_bytes(idx, k, D);
            ck_assert_uint_le(want, fl_compress_indices_bytes_max(k, D));
            ck_assert_int_eq(
                fl_compress_indices_encode(enc, want - 1, &len, idx, k, D),
                FL_ETOOBIG);
            ck_assert_int_eq(
                fl_compress_indices_encode(enc, 200000, &len, idx, k, D), 0);
            ck_assert_uint_eq(len, want);
            saw_gaps |= enc[0] == FL_COMPRESS_INDEX_GAPS;
            saw_bitmap |= enc[0] == FL_COMPRESS_INDEX_BITMAP;
            size_t pd, pk, pl;
            ck_assert_int_eq(
                fl_compress_indices_peek(enc, len + 3, D, &pd, &pk, &pl), 0);
            ck_assert_uint_eq(pl, len);
            ck_assert_uint_eq(pk, k);
            ck_assert_int_eq(
                fl_compress_indices_decode(back, k, &k2, &D2, enc, len, D), 0);
            ck_assert_uint_eq(k2, k);
            ck_assert_uint_eq(D2, D);
            ck_assert_mem_eq(back, idx, k * sizeof *idx);
            /* Every truncation is refused; so is a trailing byte. */
            for (size_t cut = 0; cut < len && cut < 64; cut++)
                ck_assert_int_lt(
                    fl_compress_indices_decode(back, k, &k2, &D2, enc, cut, D),
                    0);
            ck_assert_int_eq(
                fl_compress_indices_decode(back, k, &k2, &D2, enc, len + 1, D),
                FL_EFORMAT);
            /* Limits: D above max_D, k above the caller's capacity. */
            if (D > 1)
                ck_assert_int_eq(fl_compress_indices_decode(back, k, &k2, &D2,
                                                            enc, len, D - 1),
                                 FL_ETOOBIG);
            if (k > 0)
                ck_assert_int_eq(fl_compress_indices_decode(back, k - 1, &k2,
                                                            &D2, enc, len, D),
                                 FL_ETOOBIG);
        }
    ck_assert(saw_gaps && saw_bitmap);
    /* Encoder refuses unsorted input. */
    uint32_t uns[3] = {3, 2, 9};
    size_t len;
    ck_assert_int_eq(fl_compress_indices_encode(enc, 100, &len, uns, 3, 10),
                     FL_EINVAL);
    fl_free(idx);
    fl_free(back);
    fl_free(scratch);
    fl_free(enc);
}
END_TEST

START_TEST(test_indices_malformed)
{
    uint32_t idx[16];
    size_t k, D;
    static const struct {
        uint8_t b[12];
        size_t n;
        int rc;
    } bad[] = {
        {{0x03, 10, 1, 0}, 4, FL_EFORMAT},         /* unknown tag */
        {{0x01, 0, 0}, 3, FL_ETOOBIG},             /* D = 0 */
        {{0x01, 10, 11}, 3, FL_EFORMAT},           /* k > D */
        {{0x01, 10, 2, 9, 0}, 5, FL_EFORMAT},      /* second index 10 */
        {{0x01, 10, 1, 10}, 4, FL_EFORMAT},        /* index = D */
        {{0x01, 0x8a, 0x00, 1, 0}, 5, FL_EFORMAT}, /* non-minimal D */
        {{0x01, 10, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 9, FL_EFORMAT},
        {{0x01, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0}, 8, FL_ETOOBIG}, /* D */
        {{0x02, 10, 1, 0x01, 0x04}, 5, FL_EFORMAT}, /* bit past D = 10 */
        {{0x02, 10, 2, 0x01, 0x00}, 5, FL_EFORMAT}, /* popcount 1 != 2 */
        {{0x02, 16, 1, 0x01}, 4, FL_ETRUNC},        /* bitmap cut short */
        {{0x01, 10}, 2, FL_ETRUNC},
    };
    for (size_t i = 0; i < FL_ARRAY_LEN(bad); i++) {
        int rc = fl_compress_indices_decode(idx, 16, &k, &D, bad[i].b, bad[i].n,
                                            1 << 20);
        ck_assert_msg(rc == bad[i].rc, "case %zu: %d", i, rc);
    }
    /* And a good one of each kind, by hand. */
    const uint8_t gaps[] = {0x01, 10, 3, 0, 1, 6}; /* {0, 2, 9} */
    ck_assert_int_eq(
        fl_compress_indices_decode(idx, 16, &k, &D, gaps, sizeof gaps, 10), 0);
    ck_assert_uint_eq(k, 3);
    ck_assert_uint_eq(idx[2], 9);
    const uint8_t bm[] = {0x02, 10, 2, 0x05, 0x00}; /* {0, 2} */
    ck_assert_int_eq(
        fl_compress_indices_decode(idx, 16, &k, &D, bm, sizeof bm, 10), 0);
    ck_assert_uint_eq(k, 2);
    ck_assert_uint_eq(idx[1], 2);
}
END_TEST

/* ---- rotation -------------------------------------------------------------
 */

START_TEST(test_hadamard_rotation)
{
    for (size_t p = 1; p <= ((size_t)1 << 17); p <<= 1) {
        float *x = fvec(p), *y = fvec(p), *z = fvec(p);
        fill_laplace(x, p, p);
        memcpy(y, x, p * sizeof *x);
        memcpy(z, x, p * sizeof *x);
        fl_compress_hadamard(y, p);
        fl_compress_hadamard_ref(z, p);
        ck_assert_mem_eq(y, z, p * sizeof *y); /* same butterflies */
        /* H H = p I. */
        fl_compress_hadamard(y, p);
        ASSERT_ALL(p,
                   fabsf(y[i] / (float)p - x[i]) <= 1e-5f * (1 + fabsf(x[i])));
        memcpy(y, x, p * sizeof *x);
        double n0 = fl_compress_l2_norm(x, p);
        fl_compress_rotate(y, p, 1234);
        ck_assert_double_eq_tol(fl_compress_l2_norm(y, p), n0, 1e-5 * n0);
        fl_compress_unrotate(y, p, 1234);
        ASSERT_ALL(p, fabsf(y[i] - x[i]) <= 1e-5f * (1 + fabsf(x[i])));
        fl_free(x);
        fl_free(y);
        fl_free(z);
    }
    /* The rotation spreads a spike: every coordinate gets 1/sqrt(p). */
    float e[1024] = {0};
    e[17] = 1.0f;
    fl_compress_rotate(e, 1024, 9);
    ASSERT_ALL(1024, fabsf(fabsf(e[i]) - 1.0f / 32) <= 1e-7f);
    /* The column transform is the reference transform of each column. */
    {
        const size_t rows = 64, cols = 37;
        float *m = fvec(rows * cols), *col = fvec(rows);
        fill_laplace(m, rows * cols, 5);
        float *orig = fvec(rows * cols);
        memcpy(orig, m, rows * cols * sizeof *m);
        fl_compress_hadamard_columns(m, rows, cols);
        for (size_t j = 0; j < cols; j++) {
            for (size_t i = 0; i < rows; i++)
                col[i] = orig[i * cols + j];
            fl_compress_hadamard_ref(col, rows);
            for (size_t i = 0; i < rows; i++)
                ck_assert_float_eq(m[i * cols + j], col[i]);
        }
        fl_free(m);
        fl_free(col);
        fl_free(orig);
    }
    /* Rotation spaces of several columns: 4096 x 3, 4096 x 201. */
    static const size_t spaces[] = {12288, 823296};
    for (size_t si = 0; si < FL_ARRAY_LEN(spaces); si++) {
        size_t D = spaces[si];
        float *x = fvec(D), *y = fvec(D);
        fill_laplace(x, D, D);
        memcpy(y, x, D * sizeof *x);
        double n0 = fl_compress_l2_norm(x, D);
        fl_compress_rotate(y, D, 77);
        ck_assert_double_eq_tol(fl_compress_l2_norm(y, D), n0, 1e-5 * n0);
        fl_compress_unrotate(y, D, 77);
        ASSERT_ALL(D, fabsf(y[i] - x[i]) <= 1e-5f * (1 + fabsf(x[i])));
        fl_free(x);
        fl_free(y);
    }
    /* A spike spreads over its column: every third coordinate of 12288. */
    float *sp = fvec(12288);
    sp[2500] = 1.0f;
    fl_compress_rotate(sp, 12288, 5);
    ASSERT_ALL(12288, fabsf(fabsf(sp[i]) -
                            (i % 3 == 2500 % 3 ? 1.0f / 64 : 0.0f)) <= 1e-7f);
    fl_free(sp);
    ck_assert_uint_eq(fl_compress_rotation_dim(1000), 1024);
    ck_assert_uint_eq(fl_compress_rotation_dim(1024), 1024);
    ck_assert_uint_eq(fl_compress_rotation_dim(1025), 2048);
    ck_assert_uint_eq(fl_compress_rotation_dim(3000), 4096);
    ck_assert_uint_eq(fl_compress_rotation_dim(5000), 8192);
    ck_assert_uint_eq(fl_compress_rotation_dim(8193), 12288);
    ck_assert_uint_eq(fl_compress_rotation_dim(820736), 823296);
    ck_assert_uint_eq(fl_compress_rotation_dim(1), 1);
    ck_assert_uint_eq(fl_compress_rotation_dim(3), 4);
}
END_TEST

/* ---- the pipelines --------------------------------------------------------
 */

typedef struct {
    fl_compress_support_t support;
    unsigned b;
    int rotate;
    int secagg;
} codec_case_t;

static void make_cfg(fl_compress_config_t *cfg, const codec_case_t *cc,
                     size_t d, const uint32_t *explicit_idx)
{
    fl_compress_config_init(cfg);
    cfg->support = cc->support;
    cfg->quant_bits = cc->b;
    cfg->rotate = cc->rotate;
    cfg->rotation_seed = 99;
    cfg->support_seed = 5;
    cfg->secagg = cc->secagg;
    cfg->clip_norm = 1.0f;
    cfg->max_summands = 16;
    cfg->ring_bits = cc->b ? fl_compress_ring_bits_min(cc->b, 16) : 0;
    size_t D = cc->rotate ? fl_compress_rotation_dim(d) : d;
    if (cc->support != FL_COMPRESS_SUPPORT_DENSE)
        cfg->support_size = D / 10;
    if (cc->support == FL_COMPRESS_SUPPORT_EXPLICIT)
        cfg->support_indices = explicit_idx;
}

/* Decodes one client's message (ring or payload) to floats, denom 1. */
static void send_and_decode(fl_compress_t *c, float *out, const float *delta,
                            float *residual, fl_rng_t *rng)
{
    const fl_compress_config_t *cfg = fl_compress_config(c);
    size_t m = (size_t)fl_compress_value_count(c);
    size_t D = (size_t)fl_compress_space_dim(c);
    if (cfg->secagg) {
        uint32_t *ring = fl_malloc(m * sizeof *ring);
        ck_assert_int_eq(
            fl_compress_encode_ring(c, ring, delta, residual, rng, NULL), 0);
        ck_assert_int_eq(fl_compress_decode_ring_sum(c, out, ring, 1.0), 0);
        fl_free(ring);
    } else {
        uint64_t cap;
        ck_assert_int_eq(
            fl_compress_wire_bytes(cfg, fl_compress_dim(c), &cap, NULL), 0);
        uint8_t *buf = fl_malloc(cap);
        size_t len;
        ck_assert_int_eq(fl_compress_encode_payload(c, buf, cap, &len, delta,
                                                    residual, rng, NULL),
                         0);
        ck_assert_uint_le(len, cap);
        float *acc = fvec(D);
        ck_assert_int_eq(fl_compress_accumulate_payload(c, acc, buf, len), 0);
        ck_assert_int_eq(fl_compress_finish(c, out, acc, 1.0), 0);
        fl_free(acc);
        fl_free(buf);
    }
}

static const codec_case_t pipeline_cases[] = {
    {FL_COMPRESS_SUPPORT_DENSE, 8, 0, 1},
    {FL_COMPRESS_SUPPORT_DENSE, 4, 1, 1},
    {FL_COMPRESS_SUPPORT_RANDOM_K, 8, 0, 1},
    {FL_COMPRESS_SUPPORT_RANDOM_K, 2, 1, 1},
    {FL_COMPRESS_SUPPORT_EXPLICIT, 8, 0, 1},
    {FL_COMPRESS_SUPPORT_DENSE, 1, 0, 0},
    {FL_COMPRESS_SUPPORT_DENSE, 0, 1, 0},
    {FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG, 8, 0, 0},
    {FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG, 0, 1, 0},
    {FL_COMPRESS_SUPPORT_RANDOM_K, 6, 0, 0},
};

/* With error feedback, what was sent plus the residual is exactly what was
 * fed in (to float accuracy), every round; the residual stays bounded over
 * many rounds while the cumulative sums grow; without error feedback the
 * gap between the sums keeps growing. */
START_TEST(test_error_feedback_tracks_sum)
{
    const size_t d = 300, rounds = 300;
    uint32_t expl[30];
    for (size_t ci = 0; ci < FL_ARRAY_LEN(pipeline_cases); ci++) {
        const codec_case_t *cc = &pipeline_cases[ci];
        fl_compress_config_t cfg;
        fl_compress_t *c = NULL;
        float *delta = fvec(d), *res = fvec(d), *out = fvec(d);
        double *truth = fl_calloc(d, sizeof(double));
        double *sent = fl_calloc(d, sizeof(double));
        double *sent_noef = fl_calloc(d, sizeof(double));
        fl_rng_t rng;
        fl_rng_seed(&rng, 1000 + ci);
        double max_res = 0, max_res_early = 0, max_res_late = 0, gap_noef;
        for (size_t t = 0; t < rounds; t++) {
            /* Every round has its own support and rotation, as the server
             * sets them in each RoundConfig. */
            for (size_t i = 0; i < 30; i++)
                expl[i] = (uint32_t)(i * 10 + t % 10);
            make_cfg(&cfg, cc, d, expl);
            cfg.support_seed = 1000 * ci + t;
            cfg.rotation_seed = 7000 * ci + t;
            fl_compress_free(c);
            ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
            /* A persistent direction plus noise, norm <= 0.3 < S: the
             * first clip leaves it alone, so truth is the plain sum. The
             * sent norm per round is at most S, on k of d coordinates:
             * a persistent signal above S sqrt(k/d) = 0.32 could not be
             * carried by any norm-bounded sparse codec. */
            fill_laplace(delta, d, t * 31 + ci);
            fl_compress_clip(delta, d, 0.15);
            for (size_t i = 0; i < d; i++)
                delta[i] += (i % 3 == 0 ? 0.15f : -0.15f) / sqrtf((float)d);
            send_and_decode(c, out, delta, res, &rng);
            for (size_t i = 0; i < d; i++) {
                truth[i] += delta[i];
                sent[i] += out[i];
            }
            double e2 = 0, r2 = 0;
            for (size_t i = 0; i < d; i++) {
                double e = truth[i] - sent[i] - res[i];
                e2 += e * e;
                r2 += (double)res[i] * res[i];
            }
            /* Sent + residual = truth, up to float rounding. */
            ck_assert_msg(sqrt(e2) < 2e-3 * (1 + t * 0.01), "case %zu t %zu %g",
                          ci, t, sqrt(e2));
            max_res = fmax(max_res, sqrt(r2));
            if (t < rounds / 2)
                max_res_early = fmax(max_res_early, sqrt(r2));
            else
                max_res_late = fmax(max_res_late, sqrt(r2));
            send_and_decode(c, out, delta, NULL, &rng);
            for (size_t i = 0; i < d; i++)
                sent_noef[i] += out[i];
        }
        double tn = 0, g = 0;
        for (size_t i = 0; i < d; i++) {
            tn += truth[i] * truth[i];
            g += (truth[i] - sent_noef[i]) * (truth[i] - sent_noef[i]);
        }
        gap_noef = sqrt(g);
        /* The cumulative sum reached ~ rounds * 0.15; the residual stays
         * within a few rounds' worth of deltas. */
        ck_assert_double_gt(sqrt(tn), 40.0);
        ck_assert_msg(max_res < 4.0, "case %zu residual %g", ci, max_res);
        /* No growth: the second half's largest residual is not above
         * twice the first half's. */
        ck_assert_msg(max_res_late <= 2 * max_res_early + 1e-6,
                      "case %zu: %g then %g", ci, max_res_early, max_res_late);
        if (cc->support != FL_COMPRESS_SUPPORT_DENSE || cc->b == 1)
            ck_assert_msg(gap_noef > 5 * max_res, "case %zu: %g vs %g", ci,
                          gap_noef, max_res);
        fl_free(delta);
        fl_free(res);
        fl_free(out);
        fl_free(truth);
        fl_free(sent);
        fl_free(sent_noef);
        fl_compress_free(c);
    }
}
END_TEST

/* One message decodes to the quantized vector: the dequantized values on
 * the support (unbiased for the clipped input), zeros elsewhere. Payload
 * sizes match fl_compress_wire_bytes. */
START_TEST(test_pipeline_roundtrip_and_sizes)
{
    const size_t d = 1000;
    uint32_t expl[100];
    for (size_t i = 0; i < 100; i++)
        expl[i] = (uint32_t)(i * 9 + 1);
    for (size_t ci = 0; ci < FL_ARRAY_LEN(pipeline_cases); ci++) {
        const codec_case_t *cc = &pipeline_cases[ci];
        fl_compress_config_t cfg;
        make_cfg(&cfg, cc, d, expl);
        fl_compress_t *c;
        ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
        float *delta = fvec(d), *out = fvec(d), *res = fvec(d);
        fill_laplace(delta, d, ci);
        fl_rng_t rng;
        fl_rng_seed(&rng, ci);
        double norm;
        /* Average many decodes of the same delta: with a dense support the
         * mean approaches the clipped delta (unbiased when nothing clamps,
         * i.e. with a range covering every value). */
        if (cc->support == FL_COMPRESS_SUPPORT_DENSE && cc->b > 0) {
            cfg.range_factor = 1e4f; /* R = S: no clamping */
            fl_compress_free(c);
            ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
            float *clipped = fvec(d);
            memcpy(clipped, delta, d * sizeof *delta);
            fl_compress_clip(clipped, d, 1.0);
            double *mean = fl_calloc(d, sizeof(double));
            const int T = 400;
            for (int t = 0; t < T; t++) {
                send_and_decode(c, out, delta, NULL, &rng);
                for (size_t i = 0; i < d; i++)
                    mean[i] += out[i] / (double)T;
            }
            double step = (cc->b == 1 ? 2.0 : 1.0) / fl_compress_scale_of(c);
            double e2 = 0;
            for (size_t i = 0; i < d; i++)
                e2 += (mean[i] - clipped[i]) * (mean[i] - clipped[i]);
            /* Each mean has standard error <= step / (2 sqrt(T)). */
            ck_assert_msg(sqrt(e2 / d) < 3 * step / (2 * sqrt(T)),
                          "case %zu: rms %g step %g", ci, sqrt(e2 / d), step);
            fl_free(mean);
            fl_free(clipped);
        }
        if (!cfg.secagg) {
            uint64_t cap;
            int exact;
            ck_assert_int_eq(fl_compress_wire_bytes(&cfg, d, &cap, &exact), 0);
            uint8_t *buf = fl_malloc(cap + 1);
            size_t len;
            ck_assert_int_eq(fl_compress_encode_payload(
                                 c, buf, cap, &len, delta, res, &rng, &norm),
                             0);
            ck_assert_double_eq_tol(norm, fl_compress_l2_norm(delta, d), 1e-9);
            if (exact)
                ck_assert_uint_eq(len, cap);
            else
                ck_assert_uint_le(len, cap);
            ck_assert_int_eq(fl_compress_encode_payload(c, buf, len - 1, &len,
                                                        delta, NULL, &rng,
                                                        NULL),
                             FL_ETOOBIG);
            ck_assert_int_eq(fl_compress_encode_payload(
                                 c, buf, cap, &len, delta, NULL, &rng, NULL),
                             0);
            /* Malformed payloads are refused and the sum is unchanged. */
            size_t D = (size_t)fl_compress_space_dim(c);
            float *acc = fvec(D), *zero = fvec(D);
            ck_assert_int_lt(
                fl_compress_accumulate_payload(c, acc, buf, len - 1), 0);
            buf[len] = 0;
            ck_assert_int_lt(
                fl_compress_accumulate_payload(c, acc, buf, len + 1), 0);
            ck_assert_int_lt(fl_compress_accumulate_payload(c, acc, buf, 0), 0);
            ck_assert_mem_eq(acc, zero, D * sizeof *acc);
            ck_assert_int_eq(fl_compress_accumulate_payload(c, acc, buf, len),
                             0);
            /* A value off the grid (-2^(b-1)) or a contribution above the
             * sensitivity bound is refused. */
            if (cc->b >= 2) {
                size_t vstart =
                    len -
                    fl_bitpack_bytes((size_t)fl_compress_value_count(c), cc->b);
                uint8_t *evil = fl_malloc(len);
                memcpy(evil, buf, len);
                memset(evil + vstart, 0, len - vstart);
                evil[vstart] = (uint8_t)(1u << (cc->b - 1)); /* -2^(b-1) */
                if (cc->b < 8)
                    evil[vstart] &= (uint8_t)((1u << cc->b) - 1);
                memcpy(acc, zero, D * sizeof *acc);
                ck_assert_int_eq(
                    fl_compress_accumulate_payload(c, acc, evil, len),
                    FL_ERANGE);
                /* All values at qmax = 0111..1 for every b: 0x7f pattern
                 * for b = 8, and for b = 6 any all-ones-but-sign packing;
                 * simplest: every value qmax, packed. */
                size_t m = (size_t)fl_compress_value_count(c);
                uint32_t *u = fl_malloc(m * sizeof *u);
                for (size_t j = 0; j < m; j++)
                    u[j] = (uint32_t)fl_compress_qmax(cc->b);
                fl_bitpack(evil + vstart, u, m, cc->b);
                ck_assert_int_eq(
                    fl_compress_accumulate_payload(c, acc, evil, len),
                    FL_ERANGE);
                ck_assert_mem_eq(acc, zero, D * sizeof *acc);
                fl_free(u);
                fl_free(evil);
            }
            if (cc->b == 0) { /* fp32: a NaN is refused */
                size_t vstart = len - 4 * (size_t)fl_compress_value_count(c);
                uint8_t save[4];
                memcpy(save, buf + vstart, 4);
                memcpy(buf + vstart, "\x00\x00\xc0\x7f", 4);
                ck_assert_int_eq(
                    fl_compress_accumulate_payload(c, acc, buf, len),
                    FL_ERANGE);
                memcpy(buf + vstart, save, 4);
            }
            fl_free(acc);
            fl_free(zero);
            fl_free(buf);
        }
        /* Non-finite deltas and residuals are refused. */
        delta[3] = NAN;
        uint32_t *ring = fl_malloc((size_t)fl_compress_value_count(c) * 4);
        uint8_t *pl = fl_malloc(8 * d + 64);
        size_t len;
        int rc = cfg.secagg
                     ? fl_compress_encode_ring(c, ring, delta, NULL, &rng, NULL)
                     : fl_compress_encode_payload(c, pl, 8 * d + 64, &len,
                                                  delta, NULL, &rng, NULL);
        ck_assert_int_eq(rc, FL_ERANGE);
        /* And the wrong entry point for the mode. */
        delta[3] = 0;
        rc = cfg.secagg
                 ? fl_compress_encode_payload(c, pl, 8 * d + 64, &len, delta,
                                              NULL, &rng, NULL)
                 : fl_compress_encode_ring(c, ring, delta, NULL, &rng, NULL);
        ck_assert_int_eq(rc, FL_ECONFIG);
        fl_free(ring);
        fl_free(pl);
        fl_free(delta);
        fl_free(out);
        fl_free(res);
        fl_compress_free(c);
    }
}
END_TEST

/* What one client contributes, dequantized, never exceeds the DP
 * sensitivity fl_compress_sensitivity reports, whatever the residual, the
 * clamping and the rounding do. */
START_TEST(test_sensitivity_bound)
{
    const size_t d = 500;
    static const struct {
        fl_compress_support_t support;
        unsigned b;
        int rotate;
        float gamma;
    } cases[] = {
        {FL_COMPRESS_SUPPORT_DENSE, 1, 0, 0},
        {FL_COMPRESS_SUPPORT_DENSE, 2, 1, 0.5f},
        {FL_COMPRESS_SUPPORT_DENSE, 4, 0, 0},
        {FL_COMPRESS_SUPPORT_DENSE, 8, 1, 100.0f},
        {FL_COMPRESS_SUPPORT_RANDOM_K, 3, 0, 0.5f},
        {FL_COMPRESS_SUPPORT_RANDOM_K, 16, 1, 0},
    };
    for (size_t ci = 0; ci < FL_ARRAY_LEN(cases); ci++) {
        fl_compress_config_t cfg;
        fl_compress_config_init(&cfg);
        cfg.support = cases[ci].support;
        cfg.quant_bits = cases[ci].b;
        cfg.rotate = cases[ci].rotate;
        cfg.range_factor = cases[ci].gamma;
        cfg.support_size = 50;
        cfg.clip_norm = 0.7f;
        cfg.ring_bits = 32;
        cfg.max_summands = 2;
        fl_compress_t *c;
        ck_assert_int_eq(fl_compress_new(&c, &cfg, d), 0);
        size_t m = (size_t)fl_compress_value_count(c);
        double bound = fl_compress_sensitivity(&cfg, d), worst = 0;
        float *delta = fvec(d), *res = fvec(d);
        uint32_t *ring = fl_malloc(m * sizeof *ring);
        int32_t *q = fl_malloc(m * sizeof *q);
        fl_rng_t rng;
        fl_rng_seed(&rng, ci);
        for (int t = 0; t < 200; t++) {
            fill_laplace(delta, d, 100 * ci + (size_t)t);
            ck_assert_int_eq(
                fl_compress_encode_ring(c, ring, delta, res, &rng, NULL), 0);
            fl_compress_unlift(q, ring, m, cfg.ring_bits);
            double n2 = 0, inv = 1.0 / fl_compress_scale_of(c);
            for (size_t j = 0; j < m; j++)
                n2 += (q[j] * inv) * (q[j] * inv);
            worst = fmax(worst, sqrt(n2));
        }
        ck_assert_msg(worst <= bound * (1 + 1e-6), "case %zu: %g > %g", ci,
                      worst, bound);
        fl_free(delta);
        fl_free(res);
        fl_free(ring);
        fl_free(q);
        fl_compress_free(c);
    }
}
END_TEST

START_TEST(test_new_alloc_failures)
{
    fl_compress_config_t cfg;
    fl_compress_config_init(&cfg);
    cfg.support = FL_COMPRESS_SUPPORT_RANDOM_K;
    cfg.support_size = 10;
    cfg.rotate = 1;
    int ok = 0;
    for (long k = 1; k < 20 && !ok; k++) {
        fl_compress_t *c = NULL;
        fl_alloc_fail_after(k);
        int rc = fl_compress_new(&c, &cfg, 100);
        fl_alloc_fail_after(0);
        if (rc == 0) {
            ok = 1;
            fl_compress_free(c);
        } else {
            ck_assert_int_eq(rc, FL_ENOMEM);
            ck_assert_ptr_null(c);
        }
    }
    ck_assert(ok);
    fl_compress_free(NULL);
}
END_TEST

Suite *check_compress_suite(void)
{
    Suite *s = suite_create("compress");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_clip_bounds_norm);
    tcase_add_test(tc, test_quantize_unbiased_and_variance);
    tcase_add_test(tc, test_quantize_fast_matches_ref);
    tcase_add_test(tc, test_ring_pack_every_width);
    tcase_add_test(tc, test_ring_sum_exact_at_headroom_limit);
    tcase_add_test(tc, test_codec_ring_sum_at_limit);
    tcase_add_test(tc, test_cohort_ring_sum_is_sum_of_decodes);
    tcase_add_test(tc, test_config_rules);
    tcase_add_test(tc, test_random_k_public_support);
    tcase_add_test(tc, test_top_k_exact);
    tcase_add_test(tc, test_indices_roundtrip);
    tcase_add_test(tc, test_indices_malformed);
    tcase_add_test(tc, test_hadamard_rotation);
    tcase_add_test(tc, test_error_feedback_tracks_sum);
    tcase_add_test(tc, test_pipeline_roundtrip_and_sizes);
    tcase_add_test(tc, test_sensitivity_bound);
    tcase_add_test(tc, test_new_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
