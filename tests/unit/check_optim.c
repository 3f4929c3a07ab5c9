/* tests/unit/check_optim.c — the server optimizers against closed forms
 * (Reddi et al. 2021, Algorithm 2; heavy-ball momentum), and their state
 * saved and restored. */
#include "common/common.h"
#include "server/optim.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <string.h>

#define ck_assert_close(x, ref, tol)                                           \
    ck_assert_msg(fabs((double)(x) - (double)(ref)) <= (tol),                  \
                  "%s = %.9g, expected %.9g (tol %g)", #x, (double)(x),        \
                  (double)(ref), (double)(tol))

static fl_optim_t *make(fl_optim_kind_t kind, double lr, size_t d)
{
    fl_optim_config_t c;
    fl_optim_config_init(&c, kind);
    c.lr = lr;
    fl_optim_t *o = NULL;
    ck_assert_int_eq(fl_optim_new(&c, d, &o), 0);
    return o;
}

START_TEST(test_fedavg_plain)
{
    fl_optim_t *o = make(FL_OPTIM_FEDAVG, 0.5, 3);
    float x[3] = {1, 2, 3};
    const float g[3] = {0.5f, -1, 0.25f};
    ck_assert_int_eq(fl_optim_step(o, x, g), 0);
    ck_assert(x[0] == 1.25f && x[1] == 1.5f && x[2] == 3.125f);
    ck_assert_ptr_null(fl_optim_v(o));
    ck_assert_uint_eq(fl_optim_steps(o), 1);
    fl_optim_free(o);
    /* lr 1, no momentum: the new model is the mean of the local models. */
    o = make(FL_OPTIM_FEDAVG, 1.0, 2);
    float y[2] = {0.75f, -4};
    const float h[2] = {0.25f, 1};
    fl_optim_step(o, y, h);
    ck_assert(y[0] == 1.0f && y[1] == -3.0f);
    fl_optim_free(o);
}
END_TEST

/* Constant g with momentum beta: m_t = g (1 - beta^t) / (1 - beta), so
 * x_T = x_0 + lr g / (1 - beta) (T - beta (1 - beta^T) / (1 - beta)). */
START_TEST(test_fedavg_momentum_closed_form)
{
    fl_optim_config_t c;
    fl_optim_config_init(&c, FL_OPTIM_FEDAVG);
    c.lr = 0.1;
    c.momentum = 0.9;
    fl_optim_t *o = NULL;
    ck_assert_int_eq(fl_optim_new(&c, 2, &o), 0);
    float x[2] = {0, 1};
    const float g[2] = {1, -0.5f};
    const int T = 10;
    for (int t = 0; t < T; t++)
        fl_optim_step(o, x, g);
    double b = 0.9, s = (T - b * (1 - pow(b, T)) / (1 - b)) / (1 - b);
    ck_assert_close(x[0], 0 + 0.1 * 1.0 * s, 1e-5);
    ck_assert_close(x[1], 1 + 0.1 * -0.5 * s, 1e-5);
    ck_assert_close(fl_optim_m(o)[0], (1 - pow(b, T)) / (1 - b), 1e-5);
    fl_optim_free(o);
}
END_TEST

/* One step by hand: tau 0.1, beta1 0.9, beta2 0.99, lr 1, v_0 = tau^2,
 * g = (1, -2, 0).
 *   Adam: v = 0.99 * 0.01 + 0.01 g^2 = (0.0199, 0.0499, 0.0099)
 *         dx = 0.1 g / (sqrt(v) + 0.1) = (0.414821816, -0.618461549, 0)
 *   Yogi: v = 0.01 - 0.01 g^2 sign(0.01 - g^2) = (0.02, 0.05, 0.01)
 *         dx = (0.1 / (sqrt(0.02) + 0.1), -0.2 / (sqrt(0.05) + 0.1), 0)
 *            = (sqrt(2) - 1, -(sqrt(5) - 1) / 2, 0). */
START_TEST(test_adaptive_one_step_by_hand)
{
    for (int yogi = 0; yogi < 2; yogi++) {
        fl_optim_config_t c;
        fl_optim_config_init(&c, yogi ? FL_OPTIM_FEDYOGI : FL_OPTIM_FEDADAM);
        c.lr = 1;
        c.tau = 0.1;
        fl_optim_t *o = NULL;
        ck_assert_int_eq(fl_optim_new(&c, 3, &o), 0);
        ck_assert_close(fl_optim_v(o)[2], 0.01, 1e-9);
        float x[3] = {0, 0, 5};
        const float g[3] = {1, -2, 0};
        ck_assert_int_eq(fl_optim_step(o, x, g), 0);
        if (yogi) {
            ck_assert_close(x[0], sqrt(2.0) - 1, 1e-6);
            ck_assert_close(x[1], -(sqrt(5.0) - 1) / 2, 1e-6);
            ck_assert_close(fl_optim_v(o)[0], 0.02, 1e-8);
            ck_assert_close(fl_optim_v(o)[2], 0.01, 1e-8);
        } else {
            ck_assert_close(x[0], 0.414821816, 1e-6);
            ck_assert_close(x[1], -0.618461549, 1e-6);
            ck_assert_close(fl_optim_v(o)[2], 0.0099, 1e-8);
        }
        ck_assert(x[2] == 5.0f);
        ck_assert_close(fl_optim_m(o)[1], -0.2, 1e-7);
        fl_optim_free(o);
    }
}
END_TEST

/* Constant g for T rounds.
 *   Adam: m_t = g (1 - b1^t), v_t = tau^2 b2^t + g^2 (1 - b2^t).
 *   Yogi: while v < g^2 every step adds (1 - b2) g^2:
 *         v_t = tau^2 + t (1 - b2) g^2.
 * x_T = x_0 + lr sum_t m_t / (sqrt(v_t) + tau). */
START_TEST(test_adaptive_closed_form)
{
    const double b1 = 0.9, b2 = 0.99, tau = 1e-3, lr = 0.01, g = 0.1;
    const int T = 30;
    for (int yogi = 0; yogi < 2; yogi++) {
        fl_optim_t *o = make(yogi ? FL_OPTIM_FEDYOGI : FL_OPTIM_FEDADAM, lr, 4);
        float x[4] = {0, 0, 0, 0};
        const float gv[4] = {(float)g, (float)-g, (float)g, (float)-g};
        double ref = 0;
        for (int t = 1; t <= T; t++) {
            fl_optim_step(o, x, gv);
            double gf = (double)(float)g;
            double m = gf * (1 - pow(b1, t));
            double v =
                yogi ? tau * tau + t * (1 - b2) * gf * gf
                     : tau * tau * pow(b2, t) + gf * gf * (1 - pow(b2, t));
            ref += lr * m / (sqrt(v) + tau);
            ck_assert_close(fl_optim_v(o)[1], v, 1e-6 * v);
        }
        ck_assert_close(x[0], ref, 1e-5 * ref);
        ck_assert_close(x[1], -ref, 1e-5 * ref);
        fl_optim_free(o);
    }
    /* Yogi once v > g^2: v falls by (1 - b2) g^2 per step, Adam's decays
     * geometrically towards g^2. */
    fl_optim_t *y = make(FL_OPTIM_FEDYOGI, 0.01, 1);
    fl_optim_t *a = make(FL_OPTIM_FEDADAM, 0.01, 1);
    float xy = 0, xa = 0, big = 1.0f, small = 0.1f;
    fl_optim_step(y, &xy, &big); /* v = 1e-6 + 0.01 */
    fl_optim_step(a, &xa, &big);
    double vy = fl_optim_v(y)[0], va = fl_optim_v(a)[0];
    fl_optim_step(y, &xy, &small);
    fl_optim_step(a, &xa, &small);
    ck_assert_close(fl_optim_v(y)[0], vy - 0.01 * 0.01, 1e-8);
    ck_assert_close(fl_optim_v(a)[0], 0.99 * va + 0.01 * 0.01, 1e-8);
    fl_optim_free(y);
    fl_optim_free(a);
}
END_TEST

START_TEST(test_state_round_trip)
{
    static const fl_optim_kind_t kinds[] = {FL_OPTIM_FEDAVG, FL_OPTIM_FEDADAM,
                                            FL_OPTIM_FEDYOGI};
    enum { D = 257 };
    float g[D], xa[D], xb[D];
    for (size_t k = 0; k < FL_ARRAY_LEN(kinds); k++) {
        fl_optim_config_t c;
        fl_optim_config_init(&c, kinds[k]);
        c.momentum = kinds[k] == FL_OPTIM_FEDAVG ? 0.5 : 0;
        fl_optim_t *a = NULL, *b = NULL;
        ck_assert_int_eq(fl_optim_new(&c, D, &a), 0);
        ck_assert_int_eq(fl_optim_new(&c, D, &b), 0);
        fl_rng_t r;
        fl_rng_seed(&r, 3);
        for (int i = 0; i < D; i++)
            xa[i] = (float)fl_rng_normal(&r);
        for (int t = 0; t < 3; t++) {
            for (int i = 0; i < D; i++)
                g[i] = (float)(0.1 * fl_rng_normal(&r));
            fl_optim_step(a, xa, g);
        }
        fl_buf_t buf;
        fl_buf_init(&buf, 1 << 20);
        ck_assert_int_eq(fl_optim_save(a, &buf), 0);
        ck_assert_int_eq(fl_optim_load(b, buf.data, buf.len), 0);
        ck_assert_uint_eq(fl_optim_steps(b), 3);
        memcpy(xb, xa, sizeof xa);
        for (int t = 0; t < 2; t++) {
            for (int i = 0; i < D; i++)
                g[i] = (float)(0.1 * fl_rng_normal(&r));
            fl_optim_step(a, xa, g);
            fl_optim_step(b, xb, g);
        }
        ck_assert_mem_eq(xa, xb, sizeof xa); /* bit for bit */
        /* Damaged or foreign records are refused and change nothing. */
        ck_assert_int_eq(fl_optim_load(b, buf.data, buf.len - 1), FL_EFORMAT);
        ck_assert_int_eq(fl_optim_load(b, buf.data, 10), FL_ETRUNC);
        buf.data[0] ^= 1;
        ck_assert_int_eq(fl_optim_load(b, buf.data, buf.len), FL_EMAGIC);
        buf.data[0] ^= 1;
        buf.data[12] = (uint8_t)((kinds[k] + 1) % 3); /* another kind */
        ck_assert_int_eq(fl_optim_load(b, buf.data, buf.len), FL_EFORMAT);
        buf.data[12] = (uint8_t)kinds[k];
        memset(buf.data + buf.len - 4, 0xff, 4); /* a NaN in the state */
        ck_assert_int_eq(fl_optim_load(b, buf.data, buf.len), FL_EFORMAT);
        ck_assert_uint_eq(fl_optim_steps(b), 5);
        fl_optim_t *other = NULL;
        ck_assert_int_eq(fl_optim_new(&c, D + 1, &other), 0);
        buf.len = 0;
        fl_optim_save(a, &buf);
        ck_assert_int_eq(fl_optim_load(other, buf.data, buf.len), FL_EFORMAT);
        fl_optim_free(other);
        fl_buf_free(&buf);
        fl_optim_free(a);
        fl_optim_free(b);
    }
}
END_TEST

START_TEST(test_bad_input)
{
    fl_optim_config_t c;
    fl_optim_t *o = NULL;
    fl_optim_config_init(&c, FL_OPTIM_FEDADAM);
    c.tau = 0;
    ck_assert_int_eq(fl_optim_new(&c, 4, &o), FL_EINVAL);
    fl_optim_config_init(&c, FL_OPTIM_FEDAVG);
    c.momentum = 1;
    ck_assert_int_eq(fl_optim_new(&c, 4, &o), FL_EINVAL);
    c.momentum = 0;
    ck_assert_int_eq(fl_optim_new(&c, 0, &o), FL_EINVAL);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(fl_optim_new(&c, 2, &o), 0);
    float x[2] = {1, 2}, g[2] = {NAN, 0};
    ck_assert_int_eq(fl_optim_step(o, x, g), FL_EINVAL);
    ck_assert(x[0] == 1 && x[1] == 2 && fl_optim_steps(o) == 0);
    fl_optim_free(o);
    fl_optim_free(NULL);
    fl_optim_kind_t k;
    ck_assert_int_eq(fl_optim_kind_parse("fedyogi", &k), 0);
    ck_assert_int_eq(k, FL_OPTIM_FEDYOGI);
    ck_assert_str_eq(fl_optim_kind_name(FL_OPTIM_FEDADAM), "fedadam");
    ck_assert_int_eq(fl_optim_kind_parse("sgd", &k), FL_EINVAL);
    /* Out of memory: a clean error. */
    fl_alloc_fail_after(2);
    ck_assert_int_eq(fl_optim_new(&c, 2, &o), FL_ENOMEM);
    fl_alloc_fail_after(0);
    ck_assert_ptr_null(o);
}
END_TEST

Suite *check_optim_suite(void)
{
    Suite *s = suite_create("optim");
    TCase *t = tcase_create("optim");
    tcase_add_test(t, test_fedavg_plain);
    tcase_add_test(t, test_fedavg_momentum_closed_form);
    tcase_add_test(t, test_adaptive_one_step_by_hand);
    tcase_add_test(t, test_adaptive_closed_form);
    tcase_add_test(t, test_state_round_trip);
    tcase_add_test(t, test_bad_input);
    suite_add_tcase(s, t);
    return s;
}
