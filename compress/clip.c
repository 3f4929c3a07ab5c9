/* compress/clip.c — L2 norms and clipping, whole vector and per layer. */
#include "compress/compress.h"

#include <math.h>

double fl_compress_l2_norm(const float *x, size_t n)
{
    /* Four double accumulators: exact enough for d ~ 1e9 and lets the
     * compiler keep several additions in flight. */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * x[i];
    return sqrt((s0 + s1) + (s2 + s3));
}

double fl_compress_clip(float *x, size_t n, double S)
{
    double norm = fl_compress_l2_norm(x, n);
    if (isfinite(norm) && norm > S) {
        /* Aiming 1e-6 below S absorbs the float rounding of f and of
         * every product, so the result is within S, never just above. */
        float f = (float)(S / norm * (1.0 - 1e-6));
        for (size_t i = 0; i < n; i++)
            x[i] *= f;
    }
    return norm;
}

int fl_compress_clip_layers(float *x, size_t n,
                            const fl_compress_slice_t *slices, size_t nslices,
                            const float *S, double *norms_before)
{
    /* Validate every slice before touching x: in range, and no overlap
     * (checked pairwise; layer counts are small). */
    for (size_t i = 0; i < nslices; i++) {
        if (slices[i].offset > n || slices[i].len > n - slices[i].offset ||
            !(S[i] >= 0))
            return FL_EINVAL;
        for (size_t j = 0; j < i; j++) {
            size_t a0 = slices[i].offset, a1 = a0 + slices[i].len;
            size_t b0 = slices[j].offset, b1 = b0 + slices[j].len;
            if (a0 < b1 && b0 < a1)
                return FL_EINVAL;
        }
    }
    for (size_t i = 0; i < nslices; i++) {
        double nb = fl_compress_clip(x + slices[i].offset, slices[i].len, S[i]);
        if (norms_before)
            norms_before[i] = nb;
    }
    return 0;
}
