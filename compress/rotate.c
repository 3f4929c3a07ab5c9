/* compress/rotate.c — randomized Hadamard rotation: random signs from a
 * seed, then the fast Walsh–Hadamard transform down the columns of the
 * rotation space (see compress.h), normalized to be orthonormal. Spreads a
 * vector's mass evenly over the coordinates, so a narrower quantization range
 * fits them all.
 */
#include "compress/compress.h"

#include <math.h>
#include <string.h>

void fl_compress_hadamard_ref(float *x, size_t p)
{
    for (size_t h = 1; h < p; h <<= 1)
        for (size_t i = 0; i < p; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
}

/* Levels 1, 2 and 4 on one group of 8, written out. */
static inline void fwht8(float *x)
{
    float a0 = x[0] + x[1], a1 = x[0] - x[1];
    float a2 = x[2] + x[3], a3 = x[2] - x[3];
    float a4 = x[4] + x[5], a5 = x[4] - x[5];
    float a6 = x[6] + x[7], a7 = x[6] - x[7];
    float b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
    float b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
    x[0] = b0 + b4;
    x[4] = b0 - b4;
    x[1] = b1 + b5;
    x[5] = b1 - b5;
    x[2] = b2 + b6;
    x[6] = b2 - b6;
    x[3] = b3 + b7;
    x[7] = b3 - b7;
}

/* Two levels (h and 2h) in one sweep over the data: radix 4. The inner
 * loops run over h >= 8 contiguous floats and vectorize. */
static void levels2(float *x, size_t p, size_t h)
{
    for (size_t i = 0; i < p; i += 4 * h) {
        float *a = x + i, *b = a + h, *c = b + h, *e = c + h;
        for (size_t j = 0; j < h; j++) {
            float s0 = a[j] + b[j], d0 = a[j] - b[j];
            float s1 = c[j] + e[j], d1 = c[j] - e[j];
            a[j] = s0 + s1;
            c[j] = s0 - s1;
            b[j] = d0 + d1;
            e[j] = d0 - d1;
        }
    }
}

static void level1(float *x, size_t p, size_t h)
{
    for (size_t i = 0; i < p; i += 2 * h) {
        float *a = x + i, *b = a + h;
        for (size_t j = 0; j < h; j++) {
            float s = a[j] + b[j], d = a[j] - b[j];
            a[j] = s;
            b[j] = d;
        }
    }
}

/* Blocks of 2^13 floats (32 KiB) get every level below the block size
 * while they sit in L1/L2; the levels above are radix-4 sweeps. Every
 * butterfly is the same as in the reference, in an order that does not
 * change any result (each level's butterflies are independent). */
#define HBLOCK ((size_t)1 << 13)

static void hadamard_block(float *x, size_t p)
{
    if (p < 8) {
        fl_compress_hadamard_ref(x, p);
        return;
    }
    for (size_t i = 0; i < p; i += 8)
        fwht8(x + i);
    size_t h = 8;
    for (; 4 * h <= p; h *= 4)
        levels2(x, p, h);
    if (h < p)
        level1(x, p, h);
}

void fl_compress_hadamard(float *x, size_t p)
{
    FL_ASSERT(p >= 1 && (p & (p - 1)) == 0);
    size_t blk = FL_MIN(p, HBLOCK);
    for (size_t i = 0; i < p; i += blk)
        hadamard_block(x + i, blk);
    size_t h = blk;
    for (; 4 * h <= p; h *= 4)
        levels2(x, p, h);
    if (h < p)
        level1(x, p, h);
}

/* x[j] = -x[j] where bit j of the sign stream is set: a sign-bit XOR. */
static void apply_signs(float *x, size_t p, uint64_t seed)
{
    fl_rng_t rng;
    fl_rng_seed(&rng, seed);
    for (size_t base = 0; base < p; base += 64) {
        uint64_t w = fl_rng_next(&rng);
        size_t n = FL_MIN((size_t)64, p - base);
        uint32_t bits[64];
        memcpy(bits, x + base, n * sizeof(float));
        for (size_t j = 0; j < n; j++)
            bits[j] ^= (uint32_t)(w >> j & 1) << 31;
        memcpy(x + base, bits, n * sizeof(float));
    }
}

static void scale_by(float *x, size_t p, float f)
{
    for (size_t i = 0; i < p; i++)
        x[i] *= f;
}

/* Columns are transformed in tiles of CT adjacent columns: a tile of 4096
 * rows is 256 KiB and stays in L2 through all twelve levels, and each
 * butterfly is a contiguous run of CT floats that vectorizes. */
#define CT 16

static void cols_level2(float *x, size_t rows, size_t cols, size_t j0, size_t w,
                        size_t h)
{
    for (size_t i = 0; i < rows; i += 4 * h)
        for (size_t k = i; k < i + h; k++) {
            float *a = x + k * cols + j0, *b = a + h * cols;
            float *c = b + h * cols, *e = c + h * cols;
            for (size_t j = 0; j < w; j++) {
                float s0 = a[j] + b[j], d0 = a[j] - b[j];
                float s1 = c[j] + e[j], d1 = c[j] - e[j];
                a[j] = s0 + s1;
                c[j] = s0 - s1;
                b[j] = d0 + d1;
                e[j] = d0 - d1;
            }
        }
}

static void cols_level1(float *x, size_t rows, size_t cols, size_t j0, size_t w,
                        size_t h)
{
    for (size_t i = 0; i < rows; i += 2 * h)
        for (size_t k = i; k < i + h; k++) {
            float *a = x + k * cols + j0, *b = a + h * cols;
            for (size_t j = 0; j < w; j++) {
                float s = a[j] + b[j], d = a[j] - b[j];
                a[j] = s;
                b[j] = d;
            }
        }
}

void fl_compress_hadamard_columns(float *x, size_t rows, size_t cols)
{
    FL_ASSERT(rows >= 1 && (rows & (rows - 1)) == 0);
    if (cols == 1) {
        fl_compress_hadamard(x, rows);
        return;
    }
    for (size_t j0 = 0; j0 < cols; j0 += CT) {
        size_t w = FL_MIN((size_t)CT, cols - j0), h = 1;
        for (; 4 * h <= rows; h *= 4)
            cols_level2(x, rows, cols, j0, w, h);
        if (h < rows)
            cols_level1(x, rows, cols, j0, w, h);
    }
}

static size_t rows_of(size_t D)
{
    FL_ASSERT(D >= 1 && D <= FL_COMPRESS_MAX_PARAMS);
    FL_ASSERT(D % FL_COMPRESS_ROT_ROWS == 0 || (D & (D - 1)) == 0);
    return FL_MIN(D, (size_t)FL_COMPRESS_ROT_ROWS);
}

void fl_compress_rotate(float *x, size_t D, uint64_t seed)
{
    size_t rows = rows_of(D);
    apply_signs(x, D, seed);
    fl_compress_hadamard_columns(x, rows, D / rows);
    scale_by(x, D, (float)(1.0 / sqrt((double)rows)));
}

void fl_compress_unrotate(float *x, size_t D, uint64_t seed)
{
    size_t rows = rows_of(D);
    fl_compress_hadamard_columns(x, rows, D / rows);
    scale_by(x, D, (float)(1.0 / sqrt((double)rows)));
    apply_signs(x, D, seed);
}
