/*
 * model/kernels.h — int8 matrix kernels for inference.
 *
 * A weight matrix W [n, k] (n outputs, k inputs, the (out, in) order of
 * llama2.c) is quantized symmetrically per group of gs consecutive inputs:
 * one fp32 scale per (row, group), values in [-127, 127]. Activations are
 * quantized on the fly the same way, per (token, group), and stored biased
 * as uint8 = q + 128: AVX-512 VNNI multiplies unsigned by signed bytes
 * (vpdpbusd), so the bias is taken out once per group through a
 * precomputed -128 * sum(w) term instead of once per product. The other
 * kernels remove the bias from the activations as they load them.
 *
 *   y[i, j] = sum_g  xs[i, g] * ws[j, g] * sum_{k in g} (xq[i, k] - 128) * w[j,
 * k]
 *
 * The integer sums are exact int32 (|sum| <= k * 127 * 127 < 2^31 for
 * k < 133,000); only the per-group scaling is floating point.
 *
 * Packed weight layout, shared by every ISA: panels of 16 output rows
 * (n is padded with zero rows to a multiple of 16); inside a panel, for
 * each block of 4 inputs, the 16 rows' 4 bytes, one after the other:
 *     w[panel][k / 4][row % 16][k % 4]           (64 bytes per block)
 * That is one zmm for VNNI, two ymm for AVX2, four q-registers for NEON.
 *
 * Kernels take their outputs first, never allocate, never fail: shapes are
 * the caller's contract (checked with FL_ASSERT in the dispatching calls).
 * Every fast kernel has the naive reference fl_q8_gemm_ref beside it and is
 * tested against it for exact integer results.
 *
 * Thread-safety: all functions are reentrant; fl_q8_kernels_best() selects
 * the kernels once (thread-safe) from the CPU's features.
 */
#ifndef FL_MODEL_KERNELS_H
#define FL_MODEL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define FL_Q8_PANEL    16 /* output rows per packed panel */
#define FL_Q8_MAX_K    (1 << 17)
#define FL_Q8_ACT_BIAS 128 /* activations are stored as q + 128 */

/* A packed int8 weight matrix. Owns its three arrays (64-byte aligned). */
typedef struct {
    int n, k, gs;  /* rows (outputs), inputs, group size (gs | k, 4 | gs) */
    int npanels;   /* ceil(n / 16) */
    int8_t *w;     /* [npanels][k/4][16][4] */
    float *scale;  /* [npanels][k/gs][16]; 0 for padding rows */
    int32_t *bias; /* [npanels][k/gs][16]: -128 * sum of the group's w */
} fl_q8_matrix_t;

/* Checks a shape: n, k >= 1, gs >= 4, gs % 4 == 0, k % gs == 0, k <=
 * FL_Q8_MAX_K, n <= 2^24. Returns 0 or FL_EINVAL. */
int fl_q8_shape_check(int n, int k, int gs);

/* Allocates the arrays of m for the shape (zeroed). Returns 0, FL_EINVAL
 * or FL_ENOMEM (then m holds nothing to free). */
int fl_q8_matrix_init(fl_q8_matrix_t *m, int n, int k, int gs);
/* Releases the arrays; m may be zeroed or already released. */
void fl_q8_matrix_free(fl_q8_matrix_t *m);
/* Fills m (initialized for n, k, gs) from row-major int8 q [n][k] with
 * values in [-127, 127] and scales s [n][k/gs]. */
void fl_q8_matrix_pack(fl_q8_matrix_t *m, const int8_t *q, const float *s);
/* Reads row j back out (q [k], s [k/gs]). */
void fl_q8_matrix_unpack_row(const fl_q8_matrix_t *m, int j, int8_t *q,
                             float *s);

/* Symmetric per-group quantization of rows of fp32 values:
 * q [rows][k] in [-127, 127], s [rows][k/gs] = max|x| / 127 of the group
 * (0 for an all-zero group). */
void fl_q8_quantize_rows(int8_t *q, float *s, const float *x, int rows, int k,
                         int gs);
/* x [k] = q * s, one row. */
void fl_q8_dequantize_row(float *x, const int8_t *q, const float *s, int k,
                          int gs);
/* Activations: xq [m][k] biased uint8, xs [m][k/gs]. Uses the selected
 * ISA where it helps. */
void fl_q8_quantize_act(uint8_t *xq, float *xs, const float *x, int m, int k,
                        int gs);

/* The naive reference: y [m][n] for activations xq [m][k], xs [m][k/gs]. */
void fl_q8_gemm_ref(float *y, const uint8_t *xq, const float *xs, int m,
                    const fl_q8_matrix_t *w);

/* A set of kernels for one instruction set. gemm is for any m >= 1; gemv
 * is the m = 1 case (memory bound, organized differently). */
typedef struct {
    const char *name; /* "portable", "avx2", "avx512vnni", "neon", "neondot" */
    void (*gemm)(float *y, const uint8_t *xq, const float *xs, int m,
                 const fl_q8_matrix_t *w);
    void (*gemv)(float *y, const uint8_t *xq, const float *xs,
                 const fl_q8_matrix_t *w);
    void (*quantize_act)(uint8_t *xq, float *xs, const float *x, int m, int k,
                         int gs);
} fl_q8_kernels_t;

/* The fastest set this CPU runs (cpuid + xgetbv on x86-64, getauxval on
 * aarch64), chosen once. Never NULL (falls back to "portable"). */
const fl_q8_kernels_t *fl_q8_kernels_best(void);
/* A named set if it is compiled in and this CPU runs it, else NULL. */
const fl_q8_kernels_t *fl_q8_kernels_by_name(const char *name);
/* The names of every set compiled into this build, NULL-terminated. */
const char *const *fl_q8_kernels_names(void);

/* Convenience: y = W x through the best kernels; m == 1 uses gemv. */
void fl_q8_matmul(float *y, const uint8_t *xq, const float *xs, int m,
                  const fl_q8_matrix_t *w);

#endif /* FL_MODEL_KERNELS_H */
