/* cli/bench_model.c — flotilla bench model: the int8 kernels and inference,
 * measured side by side with the fp32 baseline in the same run, single
 * threaded, on the shapes of a dim 288 / 6 layer / 6 head / vocab 32000
 * model (llama2.c's "stories15M" shape); then the training half
 * (cli/bench_train.c) adds its keys. Prints one JSON object. */
#include "cli/cli.h"
#include "model/infer.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/sample.h"

#include <cblas.h>
#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int64_t threads;
    int64_t tokens;
    int64_t prefill;
    int64_t repeats;
    char *kernels;
    int json;
} bench_opts_t;

#define BOPT(name, type, field, def, lo, hi, help)                             \
    {                                                                          \
        name, type, offsetof(bench_opts_t, field), def, lo, hi, NULL, NULL,    \
            help                                                               \
    }
static const fl_cfg_opt_t bench_opts[] = {
    BOPT("threads", FL_CFG_INT, threads, "1", 1, 256,
         "threads for the training half (the int8 half is single-threaded)"),
    BOPT("tokens", FL_CFG_INT, tokens, "128", 8, 4096,
         "tokens generated per decode measurement"),
    BOPT("prefill", FL_CFG_INT, prefill, "256", 2, 4096,
         "tokens per GEMM (the prompt block size)"),
    BOPT("repeats", FL_CFG_INT, repeats, "20", 1, 1000,
         "measurements per figure; the best is kept (the machine is shared)"),
    BOPT("kernels", FL_CFG_STRING, kernels, "best", 1, 0,
         "int8 kernel set for the GEMM/GEMV figures: best, avx512vnni, avx2, "
         "neondot, neon or portable (decode always uses the best)"),
    BOPT("json", FL_CFG_BOOL, json, "true", 1, 0,
         "JSON output (the only format)"),
};
static const fl_cfg_table_t bench_table = {bench_opts, FL_ARRAY_LEN(bench_opts),
                                           "bench"};

/* ---- the clock and the int8 peak ------------------------------------------
 * Cycles are estimated, not read: in a VM rdtsc counts at the TSC rate, not
 * at the core's clock. A chain of dependent 64-bit adds runs at exactly one
 * add per cycle on every x86-64 core, so its rate is the core clock. The
 * int8 peak is measured as a rate: 12 independent vpdpbusd zmm chains (more
 * than latency x throughput). Both are the best of 200 bursts of well under
 * a millisecond, so that some bursts run without being preempted on a
 * shared machine; the peak fraction is the ratio of two rates and does not
 * depend on the clock estimate at all. */
#if defined(__x86_64__)
static double clock_hz(void)
{
    double best = 0;
    for (int rep = 0; rep < 200; rep++) {
        uint64_t n = 100000, x = 0;
        double t0 = fl_time_mono_s();
        for (uint64_t i = 0; i < n; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                             "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                             "add $1, %0\n\tadd $1, %0"
                             : "+r"(x));
        double hz = 8.0 * (double)n / (fl_time_mono_s() - t0);
        best = hz > best ? hz : best;
    }
    return best;
}

/* int8 MACs per second of back-to-back vpdpbusd zmm (64 MACs each). Only
 * called when the CPU has AVX-512 VNNI. */
static double vnni_macs_per_s(void)
{
    double best = 0;
    for (int rep = 0; rep < 200; rep++) {
        uint64_t n = 20000;
        double t0 = fl_time_mono_s();
        __asm__ volatile(
            "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
            "vmovdqa64 %%zmm0, %%zmm1\n\tvmovdqa64 %%zmm0, %%zmm2\n\t"
            "vmovdqa64 %%zmm0, %%zmm3\n\tvmovdqa64 %%zmm0, %%zmm4\n\t"
            "vmovdqa64 %%zmm0, %%zmm5\n\tvmovdqa64 %%zmm0, %%zmm6\n\t"
            "vmovdqa64 %%zmm0, %%zmm7\n\tvmovdqa64 %%zmm0, %%zmm8\n\t"
            "vmovdqa64 %%zmm0, %%zmm9\n\tvmovdqa64 %%zmm0, %%zmm10\n\t"
            "vmovdqa64 %%zmm0, %%zmm11\n\tvmovdqa64 %%zmm0, %%zmm14\n\t"
            "vmovdqa64 %%zmm0, %%zmm15\n\t"
            "1:\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm0\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm1\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm2\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm3\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm4\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm5\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm6\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm7\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm8\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm9\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm10\n\t"
            "vpdpbusd %%zmm14, %%zmm15, %%zmm11\n\t"
            "dec %0\n\tjnz 1b\n\t"
            "vzeroupper"
            : "+r"(n)
            :
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
              "xmm8", "xmm9", "xmm10", "xmm11", "xmm14", "xmm15", "cc");
        double r = 20000.0 * 12 * 64 / (fl_time_mono_s() - t0);
        best = r > best ? r : best;
    }
    return best;
}
#endif

static void cpu_name(char *out, size_t len)
{
    snprintf(out, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                c += 1 + (c[1] == ' ');
                c[strcspn(c, "\n")] = 0;
                snprintf(out, len, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

/* ---- the matrices of one model -------------------------------------------
 * Every weight matrix of the model, each product timed on its own (best of
 * N single calls), so that a short product is rarely preempted on a shared
 * machine. The output head (32000 rows) is timed in slices of SLICE rows:
 * the same arithmetic (panels are independent), in windows as short as
 * the layers' products (about a millisecond for sgemm), so that neither
 * side is favoured by being preempted less. */

enum { SLICE = 1024, MAXJOB = 7 * 16 + 64 };

typedef struct {
    const float *w32;  /* rows x cols, row-major */
    fl_q8_matrix_t w8; /* a view: its panels belong to the model */
    int rows, cols;
} job_t;

typedef struct {
    int njob;
    job_t job[MAXJOB];
} mats_t;

static void add_job(mats_t *m, const float *w32, const fl_q8_matrix_t *w8)
{
    int G = w8->k / w8->gs;
    for (int r0 = 0; r0 < w8->n && m->njob < MAXJOB; r0 += SLICE) {
        job_t *j = &m->job[m->njob++];
        int p0 = r0 / FL_Q8_PANEL;
        j->rows = FL_MIN(SLICE, w8->n - r0);
        j->cols = w8->k;
        j->w32 = w32 + (size_t)r0 * w8->k;
        j->w8 = *w8;
        j->w8.n = j->rows;
        j->w8.npanels = (j->rows + FL_Q8_PANEL - 1) / FL_Q8_PANEL;
        j->w8.w = w8->w + (size_t)p0 * (w8->k / 4) * 64;
        j->w8.scale = w8->scale + (size_t)p0 * G * FL_Q8_PANEL;
        j->w8.bias = w8->bias + (size_t)p0 * G * FL_Q8_PANEL;
    }
}

static void mats_from(mats_t *m, fl_model_t *fm, const fl_q8_model_t *q)
{
    const fl_model_config_t *c = fl_model_config(fm);
    fl_model_weights_t *w = fl_model_weights(fm);
    const fl_q8_weights_t *qw = fl_q8_model_weights(q);
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim,
           KV = D / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    m->njob = 0;
    for (int l = 0; l < c->n_layers && l < 16; l++) {
        add_job(m, w->wq + l * D * D, qw->wq + l);
        add_job(m, w->wk + l * KV * D, qw->wk + l);
        add_job(m, w->wv + l * KV * D, qw->wv + l);
        add_job(m, w->wo + l * D * D, qw->wo + l);
        add_job(m, w->w1 + l * H * D, qw->w1 + l);
        add_job(m, w->w2 + l * D * H, qw->w2 + l);
        add_job(m, w->w3 + l * H * D, qw->w3 + l);
    }
    add_job(m, w->wcls, qw->wcls);
}

typedef struct {
    const mats_t *m;
    const fl_q8_kernels_t *ks;
    int M, gs;
    float *x, *y; /* [M, wide], [M, SLICE] */
    uint8_t *xq;  /* [M, wide] */
    float *xs;
} work_t;

/* 0: OpenBLAS sgemm/sgemv; 1: int8 including the quantization of the
 * activations (as in inference); 2: the int8 kernel alone. */
static void run_job(const work_t *w, const job_t *j, int f)
{
    if (f == 0) {
        if (w->M == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, j->rows, j->cols, 1.0f,
                        j->w32, j->cols, w->x, 1, 0.0f, w->y, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, w->M, j->rows,
                        j->cols, 1.0f, w->x, j->cols, j->w32, j->cols, 0.0f,
                        w->y, j->rows);
        return;
    }
    if (f == 1)
        w->ks->quantize_act(w->xq, w->xs, w->x, w->M, j->cols, w->gs);
    if (w->M == 1)
        w->ks->gemv(w->y, w->xq, w->xs, &j->w8);
    else
        w->ks->gemm(w->y, w->xq, w->xs, w->M, &j->w8);
}

static double macs_of(const work_t *w)
{
    double s = 0;
    for (int i = 0; i < w->m->njob; i++)
        s += (double)w->M * w->m->job[i].rows * w->m->job[i].cols;
    return s;
}

/* Seconds for one pass over every matrix, for each of the three variants:
 * the sum over the matrices of the best of `repeats` single calls. The
 * variants are interleaved call by call so that they see the same load. */
static void time_passes(const work_t *w, int repeats, double total[3])
{
    total[0] = total[1] = total[2] = 0;
    for (int i = 0; i < w->m->njob; i++) {
        double best[3] = {1e30, 1e30, 1e30};
        for (int r = 0; r <= repeats; r++)
            for (int f = 0; f < 3; f++) {
                double t0 = fl_time_mono_s();
                run_job(w, &w->m->job[i], f);
                double t = fl_time_mono_s() - t0;
                if (r > 0 && t < best[f]) /* r == 0 warms up */
                    best[f] = t;
            }
        for (int f = 0; f < 3; f++)
            total[f] += best[f];
    }
}

/* One pass over every matrix in turn, as a decode step does (the weights
 * stream through the caches instead of staying hot): best of `repeats`
 * passes, for sgemv/sgemm (0) and int8 with quantization (1). */
static void time_stream(const work_t *w, int repeats, double best[2])
{
    best[0] = best[1] = 1e30;
    for (int r = 0; r <= repeats; r++)
        for (int f = 0; f < 2; f++) {
            double t0 = fl_time_mono_s();
            for (int i = 0; i < w->m->njob; i++)
                run_job(w, &w->m->job[i], f);
            double t = fl_time_mono_s() - t0;
            if (r > 0 && t < best[f])
                best[f] = t;
        }
}

/* ---- decode -------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Greedy generation: the prompt as one block, then `tokens` steps. The
 * speed is 1 / the median step time (robust to preemption on a shared
 * machine), best over the repeats; the prompt latency is the best. */
static int decode_speed(fl_infer_t *s, int prompt, int tokens, int repeats,
                        double *tps, double *first_s)
{
    const fl_model_config_t *c = fl_infer_config(s);
    float *logits = fl_malloc((size_t)c->vocab_size * sizeof(float));
    int32_t *ids = fl_malloc((size_t)prompt * sizeof(int32_t));
    double *step = fl_malloc((size_t)tokens * sizeof(double));
    int rc = 0;
    if (!logits || !ids || !step) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (int i = 0; i < prompt; i++)
        ids[i] = (int32_t)(1 + (i * 7919) % (c->vocab_size - 1));
    *tps = 0;
    *first_s = 1e30;
    for (int r = 0; r < repeats; r++) {
        double t0 = fl_time_mono_s();
        if ((rc = fl_infer_forward(s, ids, prompt, 0, logits, 0)) < 0)
            goto out;
        double t1 = fl_time_mono_s();
        if (t1 - t0 < *first_s)
            *first_s = t1 - t0;
        for (int t = 0; t < tokens; t++) {
            double ts = fl_time_mono_s();
            int32_t next = (int32_t)fl_sample_argmax(logits, c->vocab_size);
            if ((rc = fl_infer_forward(s, &next, 1, prompt + t, logits, 0)) < 0)
                goto out;
            step[t] = fl_time_mono_s() - ts;
        }
        qsort(step, (size_t)tokens, sizeof *step, cmp_double);
        double med = step[tokens / 2];
        if (1.0 / med > *tps)
            *tps = 1.0 / med;
    }
out:
    fl_free(logits);
    fl_free(ids);
    fl_free(step);
    return rc;
}

/* ---- peak memory of a real `flotilla model generate` --------------------- */

/* Runs this binary's generate on path in a fresh process and returns the
 * peak_rss_mb it reports (VmHWM of that process only). */
static double generate_peak_rss(const char *path, int tokens)
{
    char self[PATH_MAX], cmd[2 * PATH_MAX + 128];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = 0;
    snprintf(cmd, sizeof cmd,
             "'%s' model generate --model '%s' --steps %d --temperature 0 "
             "--json",
             self, path, tokens);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    json_error_t err;
    json_t *j = json_loadf(p, JSON_DISABLE_EOF_CHECK, &err);
    int st = pclose(p);
    double mb = -1;
    if (j && st == 0)
        mb = json_number_value(json_object_get(j, "peak_rss_mb"));
    json_decref(j);
    return mb;
}

static void set_ratio(json_t *o, const char *key, double v, double target,
                      json_t *targets)
{
    json_object_set_new(o, key, json_real(v));
    if (target > 0) {
        json_t *t = json_object();
        json_object_set_new(t, "target", json_real(target));
        json_object_set_new(t, "value", json_real(v));
        json_object_set_new(t, "met", json_boolean(v >= target));
        json_object_set_new(targets, key, t);
    }
}

int fl_bench_model(int argc, char **argv)
{
    const char *cmd = "bench model";
    bench_opts_t o;
    int rest, status = FL_EXIT_FAIL, rc;
    fl_model_t *m = NULL;
    fl_q8_model_t *q = NULL;
    fl_infer_t *s32 = NULL, *s8 = NULL;
    work_t w;
    json_t *obj = json_object(), *targets = json_object();
    char dir[] = "/tmp/flotilla-bench-XXXXXX", bin[128], q8[128];
    int have_dir = 0;
    memset(&o, 0, sizeof o);
    memset(&w, 0, sizeof w);
    rc = fl_cli_parse(cmd, "bench model [--threads N] --json", &bench_table, &o,
                      argc, argv, &rest);
    if (rc >= 0) {
        status = rc;
        goto out;
    }
    fl_model_set_threads(1);

    /* The model: stories15M's shape, random weights (speed only). */
    fl_model_config_t c;
    fl_model_config_default(&c);
    c.dim = 288;
    c.hidden_dim = 768;
    c.n_layers = 6;
    c.n_heads = 6;
    c.n_kv_heads = 6;
    c.vocab_size = 32000;
    c.seq_len = 256 + (int)o.tokens + (int)o.prefill;
    c.tied_output = 1;
    if ((rc = fl_model_new(&c, &m)) < 0)
        goto fail;
    fl_model_init_weights(m, 1);
    double tq0 = fl_time_mono_s();
    if ((rc = fl_q8_model_from_model(m, 0, &q)) < 0)
        goto fail;
    double quant_s = fl_time_mono_s() - tq0;

    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    const fl_q8_kernels_t *ks = strcmp(o.kernels, "best") == 0
                                    ? fl_q8_kernels_best()
                                    : fl_q8_kernels_by_name(o.kernels);
    if (!ks) {
        fl_cli_error(cmd, "kernel set '%s' is not available on this CPU",
                     o.kernels);
        status = FL_EXIT_USAGE;
        goto out;
    }
    json_object_set_new(obj, "cpu", json_string(cpu));
    json_object_set_new(obj, "int8_kernels", json_string(ks->name));
    json_object_set_new(obj, "openblas", json_string(openblas_get_config()));
    json_object_set_new(obj, "threads_int8_half", json_integer(1));
    json_t *shape = json_object();
    json_object_set_new(shape, "dim", json_integer(c.dim));
    json_object_set_new(shape, "hidden_dim", json_integer(c.hidden_dim));
    json_object_set_new(shape, "n_layers", json_integer(c.n_layers));
    json_object_set_new(shape, "n_heads", json_integer(c.n_heads));
    json_object_set_new(shape, "vocab_size", json_integer(c.vocab_size));
    json_object_set_new(shape, "group_size",
                        json_integer(fl_q8_model_group_size(q)));
    json_object_set_new(obj, "model", shape);

    /* Matrix products over every weight matrix of the model. */
    mats_t mats;
    mats_from(&mats, m, q);
    int wide = FL_MAX(c.dim, c.hidden_dim), M = (int)o.prefill;
    w.m = &mats;
    w.ks = ks;
    w.gs = fl_q8_model_group_size(q);
    w.x = fl_aligned_alloc(64, (size_t)M * wide * sizeof(float));
    w.y = fl_aligned_alloc(64, (size_t)M * SLICE * sizeof(float));
    w.xq = fl_aligned_alloc(64, (size_t)M * wide);
    w.xs = fl_aligned_alloc(64, (size_t)M * wide / 4 * sizeof(float));
    if (!w.x || !w.y || !w.xq || !w.xs) {
        rc = FL_ENOMEM;
        goto fail;
    }
    fl_rng_t rng;
    fl_rng_seed(&rng, 2);
    for (size_t i = 0; i < (size_t)M * wide; i++)
        w.x[i] = (float)fl_rng_normal(&rng);

    double t[3];
    w.M = M;
    ks->quantize_act(w.xq, w.xs, w.x, M, c.dim, w.gs);
    time_passes(&w, (int)o.repeats, t);
    double macs = macs_of(&w);
    json_t *gemm = json_object();
    json_object_set_new(gemm, "tokens", json_integer(M));
    json_object_set_new(gemm, "products", json_integer(mats.njob));
    json_object_set_new(gemm, "sgemm_gmacs", json_real(macs / t[0] / 1e9));
    json_object_set_new(gemm, "int8_gmacs", json_real(macs / t[1] / 1e9));
    json_object_set_new(gemm, "int8_kernel_only_gmacs",
                        json_real(macs / t[2] / 1e9));
    json_object_set_new(obj, "gemm", gemm);
    set_ratio(obj, "gemm_int8_vs_sgemm", t[0] / t[1], 3.5, targets);

#if defined(__x86_64__)
    double hz = clock_hz();
    json_object_set_new(obj, "clock_ghz_est", json_real(hz / 1e9));
    json_object_set_new(
        obj, "clock_method",
        json_string("rate of a chain of dependent 64-bit adds (1 cycle each), "
                    "best of 200 short bursts; rdtsc is not used because in a "
                    "VM it counts at the TSC rate, not the core clock"));
    if (strcmp(ks->name, "avx512vnni") == 0) {
        double peak_rate = vnni_macs_per_s(), peak = peak_rate / hz;
        json_object_set_new(obj, "peak_int8_macs_per_cycle", json_real(peak));
        json_object_set_new(
            obj, "peak_method",
            json_string("measured: 12 independent vpdpbusd zmm chains (64 "
                        "MACs each) per estimated cycle"));
        json_object_set_new(obj, "gemm_int8_macs_per_cycle",
                            json_real(macs / t[2] / hz));
        set_ratio(obj, "gemm_int8_peak_fraction", macs / t[2] / peak_rate, 0.8,
                  targets);
        set_ratio(obj, "gemm_int8_peak_fraction_with_quantization",
                  macs / t[1] / peak_rate, 0, targets);
    }
#endif

    w.M = 1;
    ks->quantize_act(w.xq, w.xs, w.x, 1, c.dim, w.gs);
    time_passes(&w, (int)o.repeats, t);
    macs = macs_of(&w);
    json_t *gemv = json_object();
    json_object_set_new(gemv, "products", json_integer(mats.njob));
    json_object_set_new(gemv, "sgemv_gmacs", json_real(macs / t[0] / 1e9));
    json_object_set_new(gemv, "int8_gmacs", json_real(macs / t[1] / 1e9));
    json_object_set_new(gemv, "fp32_weight_mb",
                        json_real(fl_model_config_num_base(&c) * 4.0 / 1e6));
    json_object_set_new(gemv, "int8_model_mb",
                        json_real(fl_q8_model_bytes(q) / 1e6));
    json_object_set_new(obj, "gemv", gemv);
    set_ratio(obj, "gemv_int8_vs_sgemv", t[0] / t[1], 3.0, targets);
    double ts[2];
    time_stream(&w, (int)o.repeats, ts);
    json_object_set_new(gemv, "streaming_sgemv_gmacs",
                        json_real(macs / ts[0] / 1e9));
    json_object_set_new(gemv, "streaming_int8_gmacs",
                        json_real(macs / ts[1] / 1e9));
    json_object_set_new(
        gemv, "method",
        json_string("gemv_int8_vs_sgemv: each matrix timed alone, best of "
                    "--repeats calls, so its weights are cache-hot for both; "
                    "gemv_int8_vs_sgemv_streaming: whole passes over the "
                    "model's matrices as in a decode step, where the int8 "
                    "weights fit the last-level cache and fp32 ones may not"));
    set_ratio(obj, "gemv_int8_vs_sgemv_streaming", ts[0] / ts[1], 0, targets);

    /* Decode: the whole model, greedy, after a 16-token prompt. */
    if ((rc = fl_infer_new_fp32(m, 64, &s32)) < 0 ||
        (rc = fl_infer_new_q8(q, 64, &s8)) < 0)
        goto fail;
    double tps32, tps8, first32, first8;
    int rep = (int)FL_MIN(o.repeats, 5);
    if ((rc = decode_speed(s32, 16, (int)o.tokens, rep, &tps32, &first32)) <
            0 ||
        (rc = decode_speed(s8, 16, (int)o.tokens, rep, &tps8, &first8)) < 0)
        goto fail;
    json_t *dec = json_object();
    json_object_set_new(dec, "fp32_tokens_per_s", json_real(tps32));
    json_object_set_new(dec, "int8_tokens_per_s", json_real(tps8));
    json_object_set_new(dec, "prompt_tokens", json_integer(16));
    json_object_set_new(dec, "fp32_first_token_ms", json_real(first32 * 1e3));
    json_object_set_new(dec, "int8_first_token_ms", json_real(first8 * 1e3));
    json_object_set_new(dec, "quantize_s", json_real(quant_s));
    json_object_set_new(obj, "decode", dec);
    set_ratio(obj, "decode_int8_vs_fp32", tps8 / tps32, 2.0, targets);
    fl_infer_free(s32);
    fl_infer_free(s8);
    s32 = s8 = NULL;

    /* Load time and peak memory of a real generate run on each file. */
    if (!mkdtemp(dir)) {
        rc = FL_EIO;
        goto fail;
    }
    have_dir = 1;
    snprintf(bin, sizeof bin, "%s/model.bin", dir);
    snprintf(q8, sizeof q8, "%s/model.q8", dir);
    if ((rc = fl_model_save(m, bin, 0)) < 0 ||
        (rc = fl_q8_model_save(q, q8)) < 0)
        goto fail;
    double tl0 = fl_time_mono_s();
    fl_q8_model_t *q2 = NULL;
    if ((rc = fl_q8_model_load(q8, &q2)) < 0)
        goto fail;
    double load_s = fl_time_mono_s() - tl0;
    fl_q8_model_free(q2);
    json_object_set_new(obj, "q8_load_ms", json_real(load_s * 1e3));
    double rss8 = generate_peak_rss(q8, 64), rss32 = generate_peak_rss(bin, 64);
    json_object_set_new(obj, "infer_peak_rss_mb", json_real(rss8));
    json_object_set_new(obj, "infer_fp32_peak_rss_mb", json_real(rss32));
    json_object_set_new(
        obj, "infer_peak_rss_method",
        json_string("VmHWM of a separate `flotilla model generate` process "
                    "(64 tokens) on the int8 export; the fp32 figure is the "
                    "same run on model.bin"));

    fl_model_free(m);
    fl_q8_model_free(q);
    m = NULL;
    q = NULL;
    /* The training half. */
    rc = fl_bench_model_train((struct json_t *)obj, (int)o.threads);
    if (rc == FL_ENOTSUP)
        json_object_set_new(obj, "train",
                            json_string("not available in this build"));
    else if (rc < 0)
        json_object_set_new(obj, "train_error", json_string(fl_strerror(rc)));
    json_object_set_new(obj, "targets", targets);
    targets = NULL;
    json_object_set_new(
        obj, "notes",
        json_string("single-threaded int8 half on a shared machine, so expect "
                    "noise: each matrix product is timed alone, best of "
                    "--repeats calls interleaved with its OpenBLAS baseline, "
                    "and the times are summed over the model's matrices; "
                    "decode speed is 1 / median step time; int8 timings "
                    "include the on-the-fly quantization of activations except "
                    "the kernel-only and peak figures"));
    char *out = json_dumps(obj, JSON_INDENT(2));
    if (out)
        printf("%s\n", out);
    free(out);
    status = FL_EXIT_OK;
    goto out;
fail:
    fl_cli_error(cmd, "%s", fl_strerror(rc));
out:
    if (have_dir) {
        unlink(bin);
        unlink(q8);
        rmdir(dir);
    }
    fl_free(w.x);
    fl_free(w.y);
    fl_free(w.xq);
    fl_free(w.xs);
    fl_infer_free(s32);
    fl_infer_free(s8);
    fl_q8_model_free(q);
    fl_model_free(m);
    json_decref(targets);
    json_decref(obj);
    fl_cfg_free(&bench_table, &o);
    return status;
}
