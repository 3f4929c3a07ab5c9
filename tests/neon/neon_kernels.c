/*
 * tests/neon/neon_kernels.c — the int8 kernels of an aarch64 build against
 * the naive reference. Cross-compiled with gcc-aarch64-linux-gnu (static)
 * by model/module.mk and run under qemu-aarch64 by check_int8.c: Debian's
 * Check library is not installed for the target, so this is a plain
 * program that exits 0 when every comparison holds.
 *
 *   neon_kernels [--expect-best NAME] [--require NAME]...
 */
#include "model/kernels.h"
#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            failures++;                                                        \
        }                                                                      \
    } while (0)

/* Full-range int8 weights and activations with unit scales: every result
 * is an integer below 2^24, so all kernels must agree exactly. Then random
 * scales: agreement to float rounding. */
static void check_set(const fl_q8_kernels_t *ks, int n, int k, int gs, int m,
                      uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    int G = k / gs;
    int8_t *q = malloc((size_t)n * k);
    float *s = malloc(sizeof(float) * n * G);
    uint8_t *xq = malloc((size_t)m * k);
    float *xs = malloc(sizeof(float) * m * G);
    float *y = malloc(sizeof(float) * m * n),
          *ref = malloc(sizeof(float) * m * n);
    fl_q8_matrix_t w;
    if (!q || !s || !xq || !xs || !y || !ref ||
        fl_q8_matrix_init(&w, n, k, gs)) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int pass = 0; pass < 2; pass++) {
        for (long i = 0; i < (long)n * k; i++)
            q[i] = (int8_t)((int)fl_rng_below(&r, 255) - 127);
        for (long i = 0; i < (long)m * k; i++)
            xq[i] = (uint8_t)(1 + fl_rng_below(&r, 255));
        for (long i = 0; i < (long)n * G; i++)
            s[i] = pass ? (float)(fl_rng_uniform(&r) * 0.01) : 1.0f;
        for (long i = 0; i < (long)m * G; i++)
            xs[i] = pass ? (float)(fl_rng_uniform(&r) * 0.1) : 1.0f;
        fl_q8_matrix_pack(&w, q, s);
        fl_q8_gemm_ref(ref, xq, xs, m, &w);
        memset(y, 0, sizeof(float) * m * n);
        ks->gemm(y, xq, xs, m, &w);
        for (long i = 0; i < (long)m * n; i++) {
            float tol =
                pass ? 1e-5f * (1.0f + (ref[i] < 0 ? -ref[i] : ref[i])) : 0.0f;
            float d = y[i] - ref[i];
            if (d < 0)
                d = -d;
            if (d > tol) {
                EXPECT(0, "%s gemm n=%d k=%d gs=%d m=%d [%ld]: %g != %g",
                       ks->name, n, k, gs, m, i, y[i], ref[i]);
                break;
            }
        }
        ks->gemv(y, xq, xs, &w);
        for (int j = 0; j < n; j++) {
            float tol =
                pass ? 1e-5f * (1.0f + (ref[j] < 0 ? -ref[j] : ref[j])) : 0.0f;
            float d = y[j] - ref[j];
            if (d < 0)
                d = -d;
            if (d > tol) {
                EXPECT(0, "%s gemv n=%d k=%d gs=%d [%d]: %g != %g", ks->name, n,
                       k, gs, j, y[j], ref[j]);
                break;
            }
        }
    }
    /* The activation quantizer writes the same bytes as the portable one. */
    float *x = malloc(sizeof(float) * m * k);
    uint8_t *xq2 = malloc((size_t)m * k);
    float *xs2 = malloc(sizeof(float) * m * G);
    for (long i = 0; i < (long)m * k; i++)
        x[i] = (float)fl_rng_normal(&r);
    ks->quantize_act(xq, xs, x, m, k, gs);
    fl_q8_kernels_by_name("portable")->quantize_act(xq2, xs2, x, m, k, gs);
    EXPECT(memcmp(xq, xq2, (size_t)m * k) == 0, "%s quantize_act bytes",
           ks->name);
    EXPECT(memcmp(xs, xs2, sizeof(float) * m * G) == 0,
           "%s quantize_act scales", ks->name);
    free(x);
    free(xq2);
    free(xs2);
    fl_q8_matrix_free(&w);
    free(q);
    free(s);
    free(xq);
    free(xs);
    free(y);
    free(ref);
}

int main(int argc, char **argv)
{
    static const int shapes[][4] = {
        /* n, k, gs, m */
        {16, 4, 4, 1},     {17, 8, 4, 3},      {33, 96, 32, 5},
        {288, 288, 96, 4}, {100, 768, 768, 7}, {768, 288, 288, 2},
    };
    const char *expect_best = NULL;
    int required = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-best") == 0 && i + 1 < argc) {
            expect_best = argv[++i];
        } else if (strcmp(argv[i], "--require") == 0 && i + 1 < argc) {
            const char *name = argv[++i];
            EXPECT(fl_q8_kernels_by_name(name) != NULL,
                   "kernel set %s not available", name);
            required++;
        }
    }
    const char *const *names = fl_q8_kernels_names();
    int tested = 0;
    for (int i = 0; names[i]; i++) {
        const fl_q8_kernels_t *ks = fl_q8_kernels_by_name(names[i]);
        if (!ks)
            continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            check_set(ks, shapes[s][0], shapes[s][1], shapes[s][2],
                      shapes[s][3], 1000 + s);
        printf("%s: checked\n", ks->name);
        tested++;
    }
    const char *best = fl_q8_kernels_best()->name;
    printf("best: %s\n", best);
    if (expect_best)
        EXPECT(strcmp(best, expect_best) == 0, "best is %s, expected %s", best,
               expect_best);
    EXPECT(tested >= 1 + required, "too few kernel sets tested (%d)", tested);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
