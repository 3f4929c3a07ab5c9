/* tests/unit/check_int8.c — the int8 kernels: packing, quantization error
 * bounds, every compiled kernel set against the naive reference (exact
 * integer results), run-time dispatch, and the aarch64 NEON kernels under
 * qemu-user. */
#include "model/kernels.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* n, k, gs, m: odd row counts (padding), k from one block to the model's
 * hidden size, groups from 4 to whole rows, m across the 4-token tile. */
static const int shapes[][4] = {
    {16, 4, 4, 1},      {17, 8, 4, 3},      {33, 96, 32, 5},
    {50, 96, 96, 9},    {288, 288, 96, 4},  {100, 768, 768, 7},
    {768, 288, 288, 2}, {130, 288, 32, 13},
};

typedef struct {
    int n, k, gs, m, G;
    int8_t *q;
    float *s, *xs, *y, *ref;
    uint8_t *xq;
    fl_q8_matrix_t w;
} mats_t;

static void mats_new(mats_t *t, int n, int k, int gs, int m)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    t->k = k;
    t->gs = gs;
    t->m = m;
    t->G = k / gs;
    t->q = malloc((size_t)n * k);
    t->s = malloc(sizeof(float) * n * t->G);
    t->xq = malloc((size_t)m * k);
    t->xs = malloc(sizeof(float) * m * t->G);
    t->y = malloc(sizeof(float) * m * n);
    t->ref = malloc(sizeof(float) * m * n);
    ck_assert(t->q && t->s && t->xq && t->xs && t->y && t->ref);
    ck_assert_int_eq(fl_q8_matrix_init(&t->w, n, k, gs), 0);
}

static void mats_free(mats_t *t)
{
    fl_q8_matrix_free(&t->w);
    free(t->q);
    free(t->s);
    free(t->xq);
    free(t->xs);
    free(t->y);
    free(t->ref);
}

/* Full-range values; unit scales when exact (every result is an integer
 * below 2^24, so any summation order gives the same float). */
static void mats_fill(mats_t *t, fl_rng_t *r, int exact)
{
    for (long i = 0; i < (long)t->n * t->k; i++)
        t->q[i] = (int8_t)((int)fl_rng_below(r, 255) - 127);
    for (long i = 0; i < (long)t->m * t->k; i++)
        t->xq[i] = (uint8_t)(1 + fl_rng_below(r, 255));
    for (long i = 0; i < (long)t->n * t->G; i++)
        t->s[i] = exact ? 1.0f : (float)(fl_rng_uniform(r) * 0.01);
    for (long i = 0; i < (long)t->m * t->G; i++)
        t->xs[i] = exact ? 1.0f : (float)(fl_rng_uniform(r) * 0.1);
    fl_q8_matrix_pack(&t->w, t->q, t->s);
}

START_TEST(test_reference_is_int_dot)
{
    /* The reference against a direct int64 dot product on row-major data. */
    fl_rng_t r;
    fl_rng_seed(&r, 1);
    for (size_t si = 0; si < FL_ARRAY_LEN(shapes); si++) {
        mats_t t;
        mats_new(&t, shapes[si][0], shapes[si][1], shapes[si][2],
                 shapes[si][3]);
        mats_fill(&t, &r, 1);
        fl_q8_gemm_ref(t.ref, t.xq, t.xs, t.m, &t.w);
        for (int i = 0; i < t.m; i++)
            for (int j = 0; j < t.n; j++) {
                int64_t d = 0;
                for (int kk = 0; kk < t.k; kk++)
                    d += (int64_t)((int)t.xq[(size_t)i * t.k + kk] - 128) *
                         t.q[(size_t)j * t.k + kk];
                ck_assert_int_eq((int64_t)t.ref[(size_t)i * t.n + j], d);
            }
        mats_free(&t);
    }
}
END_TEST

START_TEST(test_pack_roundtrip)
{
    fl_rng_t r;
    fl_rng_seed(&r, 2);
    mats_t t;
    mats_new(&t, 37, 96, 32, 1);
    mats_fill(&t, &r, 0);
    int8_t row[96];
    float s[3];
    for (int j = 0; j < t.n; j++) {
        fl_q8_matrix_unpack_row(&t.w, j, row, s);
        ck_assert_mem_eq(row, t.q + (size_t)j * 96, 96);
        ck_assert_mem_eq(s, t.s + (size_t)j * 3, sizeof s);
    }
    /* Padding rows are zero, with zero scale. */
    ck_assert_int_eq(t.w.npanels, 3);
    for (int kk = 0; kk < 96; kk++)
        ck_assert_int_eq(t.w.w[(2 * 24 + kk / 4) * 64 + 15 * 4 + kk % 4], 0);
    mats_free(&t);
    fl_q8_matrix_t bad;
    ck_assert_int_eq(fl_q8_matrix_init(&bad, 16, 96, 36), FL_EINVAL);
    ck_assert_int_eq(fl_q8_matrix_init(&bad, 16, 96, 0), FL_EINVAL);
    ck_assert_int_eq(fl_q8_matrix_init(&bad, 0, 96, 32), FL_EINVAL);
    ck_assert_int_eq(fl_q8_matrix_init(&bad, 16, 100, 8), FL_EINVAL);
    fl_q8_matrix_free(&bad);
    fl_alloc_fail_after(2);
    ck_assert_int_eq(fl_q8_matrix_init(&bad, 16, 96, 32), FL_ENOMEM);
    fl_alloc_fail_after(0);
    fl_q8_matrix_free(&bad);
}
END_TEST

START_TEST(test_every_kernel_exact)
{
    const char *const *names = fl_q8_kernels_names();
    int tested = 0;
    for (int ni = 0; names[ni]; ni++) {
        const fl_q8_kernels_t *ks = fl_q8_kernels_by_name(names[ni]);
        if (!ks)
            continue;
        tested++;
        fl_rng_t r;
        fl_rng_seed(&r, 3);
        for (size_t si = 0; si < FL_ARRAY_LEN(shapes); si++) {
            mats_t t;
            mats_new(&t, shapes[si][0], shapes[si][1], shapes[si][2],
                     shapes[si][3]);
            for (int exact = 1; exact >= 0; exact--) {
                mats_fill(&t, &r, exact);
                fl_q8_gemm_ref(t.ref, t.xq, t.xs, t.m, &t.w);
                ks->gemm(t.y, t.xq, t.xs, t.m, &t.w);
                for (long i = 0; i < (long)t.m * t.n; i++) {
                    double tol = exact ? 0 : 1e-5 * (1 + fabs(t.ref[i]));
                    if (fabs(t.y[i] - t.ref[i]) > tol)
                        ck_abort_msg("%s gemm %dx%dx%d gs %d at %ld: %g vs %g",
                                     ks->name, t.m, t.n, t.k, t.gs, i, t.y[i],
                                     t.ref[i]);
                }
                ks->gemv(t.y, t.xq, t.xs, &t.w);
                for (int j = 0; j < t.n; j++) {
                    double tol = exact ? 0 : 1e-5 * (1 + fabs(t.ref[j]));
                    if (fabs(t.y[j] - t.ref[j]) > tol)
                        ck_abort_msg("%s gemv %dx%d gs %d at %d: %g vs %g",
                                     ks->name, t.n, t.k, t.gs, j, t.y[j],
                                     t.ref[j]);
                }
            }
            mats_free(&t);
        }
    }
#if defined(__x86_64__)
    /* portable, avx2 and avx512vnni on the machines this runs on. */
    ck_assert_int_ge(tested, __builtin_cpu_supports("avx2") ? 2 : 1);
#else
    ck_assert_int_ge(tested, 1);
#endif
}
END_TEST

START_TEST(test_quantization_bounds)
{
    fl_rng_t r;
    fl_rng_seed(&r, 4);
    enum { ROWS = 20, K = 192, GS = 32, G = K / GS };
    static float x[ROWS * K], back[K];
    static int8_t q[ROWS * K];
    static uint8_t xq[ROWS * K];
    static float s[ROWS * G], xs[ROWS * K / 4], xs2[ROWS * K / 4];
    for (int i = 0; i < ROWS * K; i++)
        x[i] = (float)(fl_rng_normal(&r) * (1 + i % 7));
    for (int i = 0; i < K; i++)
        x[i] = 0.0f; /* an all-zero row: scale 0, values 0 */
    fl_q8_quantize_rows(q, s, x, ROWS, K, GS);
    for (int rr = 0; rr < ROWS; rr++) {
        fl_q8_dequantize_row(back, q + rr * K, s + rr * G, K, GS);
        for (int g = 0; g < G; g++) {
            float amax = 0;
            for (int t = 0; t < GS; t++)
                amax = fmaxf(amax, fabsf(x[rr * K + g * GS + t]));
            ck_assert_float_eq(s[rr * G + g], amax / 127.0f);
            int hit = 0;
            for (int t = 0; t < GS; t++) {
                int kk = g * GS + t;
                /* round to nearest: error at most half a step */
                ck_assert_float_le(fabsf(back[kk] - x[rr * K + kk]),
                                   0.5f * s[rr * G + g] * 1.0001f + 1e-30f);
                ck_assert_int_le(abs(q[rr * K + kk]), 127);
                hit |= abs(q[rr * K + kk]) == 127;
            }
            ck_assert_int_eq(hit, amax > 0); /* the range is used fully */
        }
    }
    /* Activations: same numbers, biased by 128, same bytes from every
     * kernel set's quantizer. */
    fl_q8_kernels_by_name("portable")->quantize_act(xq, xs, x, ROWS, K, GS);
    for (int i = 0; i < ROWS * K; i++)
        ck_assert_int_eq((int)xq[i] - 128, q[i]);
    ck_assert_mem_eq(xs, s, sizeof s);

    const char *const *names = fl_q8_kernels_names();
    for (int ni = 0; names[ni]; ni++) {
        const fl_q8_kernels_t *ks = fl_q8_kernels_by_name(names[ni]);
        if (!ks)
            continue;
        static uint8_t xq2[ROWS * K];
        for (int gs = 4; gs <= K; gs *= 2) {
            if (K % gs)
                continue;
            ks->quantize_act(xq2, xs2, x, ROWS, K, gs);
            fl_q8_kernels_by_name("portable")
                ->quantize_act(xq, xs, x, ROWS, K, gs);
            ck_assert_mem_eq(xq2, xq, sizeof xq);
            ck_assert_mem_eq(xs2, xs, sizeof(float) * ROWS * (K / gs));
        }
    }
}
END_TEST

START_TEST(test_dispatch)
{
    const fl_q8_kernels_t *best = fl_q8_kernels_best();
    ck_assert_ptr_nonnull(best);
    ck_assert_ptr_eq(fl_q8_kernels_by_name(best->name), best);
    ck_assert_ptr_null(fl_q8_kernels_by_name("nonesuch"));
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        ck_assert_str_eq(best->name, "avx512vnni");
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        ck_assert_str_eq(best->name, "avx2");
#endif
    /* fl_q8_matmul goes through the best set: same as the reference. */
    fl_rng_t r;
    fl_rng_seed(&r, 5);
    mats_t t;
    mats_new(&t, 40, 64, 16, 3);
    mats_fill(&t, &r, 1);
    fl_q8_gemm_ref(t.ref, t.xq, t.xs, 3, &t.w);
    fl_q8_matmul(t.y, t.xq, t.xs, 3, &t.w);
    ck_assert_mem_eq(t.y, t.ref, sizeof(float) * 3 * 40);
    fl_q8_matmul(t.y, t.xq, t.xs, 1, &t.w);
    ck_assert_mem_eq(t.y, t.ref, sizeof(float) * 40);
    mats_free(&t);
}
END_TEST

#if defined(__x86_64__)
START_TEST(test_neon_under_qemu)
{
    /* The aarch64 build of the kernels (model/module.mk), on qemu's default
     * CPU (with the dot-product extension: neondot is chosen) and on a
     * Cortex-A53 (without: the baseline NEON kernels are chosen). */
    char bin[4096];
    fl_test_buildpath(bin, sizeof bin, "tests/neon/neon_kernels");
    ck_assert_int_eq(fl_test_system("test -x '%s'", bin), 0);
    ck_assert_int_eq(fl_test_system("qemu-aarch64 '%s' --require neon "
                                    "--require neondot --expect-best neondot "
                                    ">/dev/null",
                                    bin),
                     0);
    ck_assert_int_eq(fl_test_system("qemu-aarch64 -cpu cortex-a53 '%s' "
                                    "--require neon --expect-best neon "
                                    ">/dev/null",
                                    bin),
                     0);
}
END_TEST
#endif

Suite *check_int8_suite(void)
{
    Suite *s = suite_create("int8");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_reference_is_int_dot);
    tcase_add_test(tc, test_pack_roundtrip);
    tcase_add_test(tc, test_every_kernel_exact);
    tcase_add_test(tc, test_quantization_bounds);
    tcase_add_test(tc, test_dispatch);
#if defined(__x86_64__)
    tcase_add_test(tc, test_neon_under_qemu);
#endif
    suite_add_tcase(s, tc);
    return s;
}
