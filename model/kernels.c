/*
 * model/kernels.c — int8 kernels: packing, quantization, the naive
 * reference, the portable C kernels and the run-time choice of ISA.
 */
#include "model/kernels.h"
#include "model/kernels_isa.h"
#include "common/common.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#endif

/* ---- shapes and packing ------------------------------------------------ */

int fl_q8_shape_check(int n, int k, int gs)
{
    if (n < 1 || n > (1 << 24) || k < 1 || k > FL_Q8_MAX_K || gs < 4 ||
        gs % 4 != 0 || k % gs != 0)
        return FL_EINVAL;
    return 0;
}

void fl_q8_matrix_free(fl_q8_matrix_t *m)
{
    fl_free(m->w);
    fl_free(m->scale);
    fl_free(m->bias);
    m->w = NULL;
    m->scale = NULL;
    m->bias = NULL;
}

int fl_q8_matrix_init(fl_q8_matrix_t *m, int n, int k, int gs)
{
    memset(m, 0, sizeof *m);
    if (fl_q8_shape_check(n, k, gs) < 0)
        return FL_EINVAL;
    int np = (n + FL_Q8_PANEL - 1) / FL_Q8_PANEL;
    size_t rows = (size_t)np * FL_Q8_PANEL, groups = (size_t)(k / gs);
    m->n = n;
    m->k = k;
    m->gs = gs;
    m->npanels = np;
    m->w = fl_aligned_alloc(64, rows * (size_t)k);
    m->scale = fl_aligned_alloc(64, rows * groups * sizeof(float));
    m->bias = fl_aligned_alloc(64, rows * groups * sizeof(int32_t));
    if (!m->w || !m->scale || !m->bias) {
        fl_q8_matrix_free(m);
        return FL_ENOMEM;
    }
    return 0;
}

/* Index of w[j][kk] in the packed layout. */
static inline size_t packed_index(const fl_q8_matrix_t *m, int j, int kk)
{
    return (((size_t)(j / FL_Q8_PANEL) * (size_t)(m->k / 4) + (size_t)kk / 4) *
                FL_Q8_PANEL +
            (size_t)(j % FL_Q8_PANEL)) *
               4 +
           (size_t)kk % 4;
}

/* Index of (row j, group g) in scale and bias. */
static inline size_t group_index(const fl_q8_matrix_t *m, int j, int g)
{
    return ((size_t)(j / FL_Q8_PANEL) * (size_t)(m->k / m->gs) + (size_t)g) *
               FL_Q8_PANEL +
           (size_t)(j % FL_Q8_PANEL);
}

void fl_q8_matrix_pack(fl_q8_matrix_t *m, const int8_t *q, const float *s)
{
    int G = m->k / m->gs;
    for (int j = 0; j < m->n; j++) {
        const int8_t *row = q + (size_t)j * m->k;
        for (int kk = 0; kk < m->k; kk++)
            m->w[packed_index(m, j, kk)] = row[kk];
        for (int g = 0; g < G; g++) {
            int32_t sum = 0;
            for (int t = 0; t < m->gs; t++)
                sum += row[g * m->gs + t];
            m->scale[group_index(m, j, g)] = s[(size_t)j * G + g];
            m->bias[group_index(m, j, g)] = -FL_Q8_ACT_BIAS * sum;
        }
    }
}

void fl_q8_matrix_unpack_row(const fl_q8_matrix_t *m, int j, int8_t *q,
                             float *s)
{
    for (int kk = 0; kk < m->k; kk++)
        q[kk] = m->w[packed_index(m, j, kk)];
    for (int g = 0; g < m->k / m->gs; g++)
        s[g] = m->scale[group_index(m, j, g)];
}

/* ---- quantization ---------------------------------------------------------
 * Every implementation computes inv = 127 / amax in float and rounds
 * x * inv to nearest-even, so that all ISAs produce identical bytes. */

void fl_q8_quantize_rows(int8_t *q, float *s, const float *x, int rows, int k,
                         int gs)
{
    int G = k / gs;
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)r * k + (size_t)g * gs;
            int8_t *qg = q + (size_t)r * k + (size_t)g * gs;
            float amax = 0.0f;
            for (int t = 0; t < gs; t++)
                amax = fmaxf(amax, fabsf(xg[t]));
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            s[(size_t)r * G + g] = amax / 127.0f;
            for (int t = 0; t < gs; t++) {
                float v = nearbyintf(xg[t] * inv);
                v = fminf(127.0f, fmaxf(-127.0f, v));
                qg[t] = (int8_t)v;
            }
        }
    }
}

void fl_q8_dequantize_row(float *x, const int8_t *q, const float *s, int k,
                          int gs)
{
    for (int kk = 0; kk < k; kk++)
        x[kk] = (float)q[kk] * s[kk / gs];
}

void fl_q8_quantize_act_portable_(uint8_t *xq, float *xs, const float *x, int m,
                                  int k, int gs)
{
    int G = k / gs;
    for (int r = 0; r < m; r++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)r * k + (size_t)g * gs;
            uint8_t *qg = xq + (size_t)r * k + (size_t)g * gs;
            float amax = 0.0f;
            for (int t = 0; t < gs; t++)
                amax = fmaxf(amax, fabsf(xg[t]));
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xs[(size_t)r * G + g] = amax / 127.0f;
            for (int t = 0; t < gs; t++) {
                float v = nearbyintf(xg[t] * inv);
                v = fminf(127.0f, fmaxf(-127.0f, v));
                qg[t] = (uint8_t)((int)v + FL_Q8_ACT_BIAS);
            }
        }
    }
}

/* ---- the naive reference ----------------------------------------------- */

void fl_q8_gemm_ref(float *y, const uint8_t *xq, const float *xs, int m,
                    const fl_q8_matrix_t *w)
{
    int G = w->k / w->gs;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < w->n; j++) {
            float sum = 0.0f;
            for (int g = 0; g < G; g++) {
                int32_t acc = 0;
                for (int t = 0; t < w->gs; t++) {
                    int kk = g * w->gs + t;
                    int a = (int)xq[(size_t)i * w->k + kk] - FL_Q8_ACT_BIAS;
                    acc += a * w->w[packed_index(w, j, kk)];
                }
                float sc =
                    xs[(size_t)i * G + g] * w->scale[group_index(w, j, g)];
                sum += sc * (float)acc;
            }
            y[(size_t)i * w->n + j] = sum;
        }
    }
}

/* ---- portable C -----------------------------------------------------------
 * The reference reorganized to walk the packed layout in order, with the
 * bias trick, so that the compiler can vectorize the 16-row inner loop. */

static void portable_panel(float *out, const uint8_t *x, const float *xs,
                           const fl_q8_matrix_t *w, int p)
{
    int G = w->k / w->gs, gs4 = w->gs / 4;
    const int8_t *wp = w->w + (size_t)p * (size_t)(w->k / 4) * 64;
    const float *sp = w->scale + (size_t)p * G * FL_Q8_PANEL;
    const int32_t *bp = w->bias + (size_t)p * G * FL_Q8_PANEL;
    float facc[FL_Q8_PANEL] = {0};
    for (int g = 0; g < G; g++) {
        int32_t acc[FL_Q8_PANEL];
        memcpy(acc, bp + (size_t)g * FL_Q8_PANEL, sizeof acc);
        for (int b = 0; b < gs4; b++) {
            const uint8_t *xb = x + (size_t)g * w->gs + (size_t)b * 4;
            const int8_t *wb = wp + ((size_t)g * gs4 + b) * 64;
            const int32_t x0 = xb[0], x1 = xb[1], x2 = xb[2], x3 = xb[3];
            for (int r = 0; r < FL_Q8_PANEL; r++)
                acc[r] += x0 * wb[r * 4] + x1 * wb[r * 4 + 1] +
                          x2 * wb[r * 4 + 2] + x3 * wb[r * 4 + 3];
        }
        for (int r = 0; r < FL_Q8_PANEL; r++)
            facc[r] += xs[g] * sp[g * FL_Q8_PANEL + r] * (float)acc[r];
    }
    memcpy(out, facc, sizeof facc);
}

static void portable_gemm(float *y, const uint8_t *xq, const float *xs, int m,
                          const fl_q8_matrix_t *w)
{
    int G = w->k / w->gs;
    float out[FL_Q8_PANEL];
    for (int p = 0; p < w->npanels; p++) {
        int j0 = p * FL_Q8_PANEL, nv = FL_MIN(FL_Q8_PANEL, w->n - j0);
        for (int i = 0; i < m; i++) {
            portable_panel(out, xq + (size_t)i * w->k, xs + (size_t)i * G, w,
                           p);
            memcpy(y + (size_t)i * w->n + j0, out, (size_t)nv * sizeof(float));
        }
    }
}

static void portable_gemv(float *y, const uint8_t *xq, const float *xs,
                          const fl_q8_matrix_t *w)
{
    portable_gemm(y, xq, xs, 1, w);
}

/* ---- dispatch ------------------------------------------------------------ */

static const fl_q8_kernels_t portable_kernels = {
    "portable", portable_gemm, portable_gemv, fl_q8_quantize_act_portable_};

static const fl_q8_kernels_t *const compiled[] = {
#if defined(__x86_64__)
    &fl_q8_kernels_avx512vnni_,
    &fl_q8_kernels_avx2_,
#elif defined(__aarch64__)
    &fl_q8_kernels_neondot_,
    &fl_q8_kernels_neon_,
#endif
    &portable_kernels,
};

static int cpu_runs(const fl_q8_kernels_t *k)
{
    if (k == &portable_kernels)
        return 1;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
    if (!osxsave)
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    int ymm_os = (lo & 0x6) == 0x6, zmm_os = (lo & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1,
        avx512vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    if (k == &fl_q8_kernels_avx2_)
        return ymm_os && avx2 && fma;
    if (k == &fl_q8_kernels_avx512vnni_)
        return zmm_os && avx512f && avx512bw && avx512vl && vnni && fma;
#elif defined(__aarch64__)
    unsigned long hw = getauxval(AT_HWCAP);
    /* HWCAP_ASIMD is bit 1, HWCAP_ASIMDDP bit 20 (asm/hwcap.h). */
    if (k == &fl_q8_kernels_neon_)
        return (hw >> 1) & 1;
    if (k == &fl_q8_kernels_neondot_)
        return ((hw >> 1) & 1) && ((hw >> 20) & 1);
#endif
    return 0;
}

static const fl_q8_kernels_t *best;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void select_best(void)
{
    best = &portable_kernels;
    for (size_t i = 0; i < FL_ARRAY_LEN(compiled); i++) {
        if (cpu_runs(compiled[i])) {
            best = compiled[i];
            break;
        }
    }
}

const fl_q8_kernels_t *fl_q8_kernels_best(void)
{
    pthread_once(&best_once, select_best);
    return best;
}

const fl_q8_kernels_t *fl_q8_kernels_by_name(const char *name)
{
    for (size_t i = 0; i < FL_ARRAY_LEN(compiled); i++)
        if (strcmp(compiled[i]->name, name) == 0)
            return cpu_runs(compiled[i]) ? compiled[i] : NULL;
    return NULL;
}

const char *const *fl_q8_kernels_names(void)
{
    static const char *const names[] = {
#if defined(__x86_64__)
        "avx512vnni",
        "avx2",
#elif defined(__aarch64__)
        "neondot",
        "neon",
#endif
        "portable",
        NULL
    };
    return names;
}

void fl_q8_quantize_act(uint8_t *xq, float *xs, const float *x, int m, int k,
                        int gs)
{
    FL_ASSERT(m >= 1 && fl_q8_shape_check(1, k, gs) == 0);
    fl_q8_kernels_best()->quantize_act(xq, xs, x, m, k, gs);
}

void fl_q8_matmul(float *y, const uint8_t *xq, const float *xs, int m,
                  const fl_q8_matrix_t *w)
{
    FL_ASSERT(m >= 1 && w->w != NULL);
    const fl_q8_kernels_t *k = fl_q8_kernels_best();
    if (m == 1)
        k->gemv(y, xq, xs, w);
    else
        k->gemm(y, xq, xs, m, w);
}
