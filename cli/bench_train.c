/* cli/bench_train.c — the local-training half of flotilla bench model:
 * tokens/s of one training step (forward, backward, AdamW) of the tiny
 * configuration, the same step in PyTorch measured in the same run (same
 * config, batch and thread count), and the peak RSS of the training. Each
 * side runs in its own child process so that its peak RSS is its own. */
#include "cli/cli.h"
#include "model/model.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The shape of a client's local step: 2 windows of 128 tokens. */
enum { BENCH_B = 2, BENCH_T = 128, BENCH_WARMUP = 2, BENCH_ROUNDS = 3 };
#define BENCH_SECONDS 1.0

/* The PyTorch side: the same architecture in float32 with torch.optim.AdamW.
 * argv: dim hidden layers heads kv_heads vocab B T threads seconds.
 * Prints tokens/s. */
static const char torch_script[] =
    "import sys, time, math, torch\n"
    "import torch.nn.functional as F\n"
    "C,H,L,NH,NKV,V,B,T,TH = map(int, sys.argv[1:10]); SEC = "
    "float(sys.argv[10])\n"
    "torch.set_num_threads(TH); torch.manual_seed(0)\n"
    "hs = C // NH; KV = hs * NKV; g = NH // NKV\n"
    "P = lambda *s: torch.nn.Parameter(torch.randn(*s) * 0.02)\n"
    "emb = P(V, C)\n"
    "layers = [dict(ra=torch.nn.Parameter(torch.ones(C)), wq=P(C, C), "
    "wk=P(KV, C), wv=P(KV, C), wo=P(C, C), rf=torch.nn.Parameter("
    "torch.ones(C)), w1=P(H, C), w2=P(C, H), w3=P(H, C)) for _ in range(L)]\n"
    "rfin = torch.nn.Parameter(torch.ones(C))\n"
    "params = [emb, rfin] + [p for l in layers for p in l.values()]\n"
    "i = torch.arange(0, hs, 2, dtype=torch.float64)\n"
    "ang = torch.arange(T, dtype=torch.float64)[:, None] * 10000.0 ** (-i / "
    "hs)\n"
    "cos = torch.cos(ang).float()[None, :, None, :]; sin = "
    "torch.sin(ang).float()[None, :, None, :]\n"
    "def rms(x, w): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) "
    "+ 1e-5) * w\n"
    "def rope(x):\n"
    "    a, b = x[..., 0::2], x[..., 1::2]\n"
    "    return torch.stack([a * cos - b * sin, a * sin + b * cos], "
    "-1).flatten(-2)\n"
    "mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)\n"
    "def fwd(tok):\n"
    "    x = emb[tok]\n"
    "    for l in layers:\n"
    "        h = rms(x, l['ra'])\n"
    "        q = rope((h @ l['wq'].T).view(B, T, NH, hs))\n"
    "        k = rope((h @ l['wk'].T).view(B, T, NKV, hs))\n"
    "        v = (h @ l['wv'].T).view(B, T, NKV, hs)\n"
    "        k = k.repeat_interleave(g, 2); v = v.repeat_interleave(g, 2)\n"
    "        q, k, v = (t.transpose(1, 2) for t in (q, k, v))\n"
    "        a = (q @ k.transpose(-1, -2)) / math.sqrt(hs)\n"
    "        a = a.masked_fill(mask, float('-inf')).softmax(-1)\n"
    "        x = x + (a @ v).transpose(1, 2).reshape(B, T, C) @ l['wo'].T\n"
    "        h = rms(x, l['rf'])\n"
    "        x = x + (F.silu(h @ l['w1'].T) * (h @ l['w3'].T)) @ l['w2'].T\n"
    "    return rms(x, rfin) @ emb.T\n"
    "opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), "
    "weight_decay=0.0)\n"
    "tok = torch.randint(0, V, (B, T)); tgt = torch.randint(0, V, (B, T))\n"
    "def step():\n"
    "    opt.zero_grad(set_to_none=False)\n"
    "    loss = F.cross_entropy(fwd(tok).view(-1, V), tgt.view(-1))\n"
    "    loss.backward()\n"
    "    torch.nn.utils.clip_grad_norm_(params, 1.0)\n"
    "    opt.step()\n"
    "for _ in range(2): step()\n"
    "n = 0; t0 = time.perf_counter(); c0 = time.process_time()\n"
    "while n < 3 or time.perf_counter() - t0 < SEC:\n"
    "    step(); n += 1\n"
    "print(B * T * n / (time.perf_counter() - t0), B * T * n / "
    "(time.process_time() - c0))\n";

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Our side, in the child: tokens per wall second and per CPU second,
 * written to fd. */
static int ours(int fd, int threads)
{
    fl_model_config_t c;
    fl_model_t *m = NULL;
    fl_model_optim_t o;
    int32_t tok[BENCH_B * BENCH_T], tgt[BENCH_B * BENCH_T];
    fl_model_config_default(&c);
    fl_model_set_threads(threads);
    if (fl_model_new(&c, &m) < 0)
        return 1;
    fl_model_init_weights(m, 1);
    fl_model_optim_default(&o);
    fl_rng_t r;
    fl_rng_seed(&r, 2);
    for (int i = 0; i < BENCH_B * BENCH_T; i++) {
        tok[i] = (int32_t)fl_rng_below(&r, (uint64_t)c.vocab_size);
        tgt[i] = (int32_t)fl_rng_below(&r, (uint64_t)c.vocab_size);
    }
    for (int i = 0; i < BENCH_WARMUP; i++)
        fl_model_train_step(m, &o, tok, tgt, BENCH_B, BENCH_T, NULL);
    int n = 0;
    double t0 = fl_time_mono_s(), c0 = cpu_seconds(), dt;
    do {
        if (fl_model_train_step(m, &o, tok, tgt, BENCH_B, BENCH_T, NULL) < 0)
            return 1;
        n++;
        dt = fl_time_mono_s() - t0;
    } while (n < 3 || dt < BENCH_SECONDS);
    double tokens = (double)BENCH_B * BENCH_T * n;
    double rates[2] = {tokens / dt, tokens / (cpu_seconds() - c0)};
    fl_model_free(m);
    return write(fd, rates, sizeof rates) == sizeof rates ? 0 : 1;
}

/* Runs ours() in a child; rates[0] tokens per wall second, rates[1] per
 * CPU second. */
static int run_ours(int threads, double rates[2])
{
    int p[2];
    if (pipe(p) < 0)
        return FL_EIO;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return FL_EIO;
    }
    if (pid == 0) {
        close(p[0]);
        _exit(ours(p[1], threads));
    }
    close(p[1]);
    ssize_t got = read(p[0], rates, 2 * sizeof *rates);
    close(p[0]);
    int st = 0;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
        got != (ssize_t)(2 * sizeof *rates))
        return FL_EINTERNAL;
    return 0;
}

/* Runs this binary with args, stdout and stderr to /dev/null; 0 when it
 * exits 0. *rss_mb (may be NULL) receives its peak RSS. */
static int run_self(char *const args[], double *rss_mb)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return FL_EIO;
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout) ||
            !freopen("/dev/null", "w", stderr))
            _exit(127);
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return FL_EINTERNAL;
    if (rss_mb)
        *rss_mb = (double)ru.ru_maxrss / 1024.0;
    return 0;
}

/* The peak RSS of a real local-training process: `flotilla model train`
 * of the tiny default, 10 steps of 2 x 128 tokens on 64 KiB of text, in a
 * fresh process (a forked child would carry the benchmark's own memory). */
static int train_process_rss(int threads, double *rss_mb)
{
    char dir[] = "/tmp/flotilla-bench-XXXXXX", data[64], text[96], model[96],
         th[16];
    char *buf = NULL;
    int rc = FL_EIO;
    if (!mkdtemp(dir))
        return FL_EIO;
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(text, sizeof text, "%s/text.txt", data);
    snprintf(model, sizeof model, "%s/model.bin", dir);
    snprintf(th, sizeof th, "%d", threads);
    size_t len = 64 << 10;
    buf = fl_malloc(len);
    if (!buf || fl_mkdir_p(data, 0700) < 0)
        goto out;
    fl_rng_t r;
    fl_rng_seed(&r, 3);
    for (size_t i = 0; i < len; i++) /* lines of words of letters */
        buf[i] = (i % 61 == 60) ? '\n'
                 : fl_rng_below(&r, 6) == 0
                     ? ' '
                     : (char)('a' + fl_rng_below(&r, 26));
    if (fl_file_write_atomic(text, buf, len, 0600) < 0)
        goto out;
    char *init[] = {"flotilla", "model", "init", "--out", model, NULL};
    char *train[] = {"flotilla", "model",          "train", "--model",
                     model,      "--data",         data,    "--steps",
                     "10",       "--batch",        "2",     "--eval-every",
                     "0",        "--eval-windows", "1",     "--threads",
                     th,         "--json",         NULL};
    if ((rc = run_self(init, NULL)) == 0)
        rc = run_self(train, rss_mb);
out:
    fl_free(buf);
    unlink(text);
    rmdir(data);
    unlink(model);
    rmdir(dir);
    return rc;
}

/* Runs the torch script with the tiny config: the same two rates. */
static int run_torch(int threads, double rates[2])
{
    fl_model_config_t c;
    fl_model_config_default(&c);
    const char *py = getenv("FL_PYTHON");
    if (!py || !*py)
        py = "/usr/bin/python3";
    char script[] = "/tmp/flotilla-bench-XXXXXX";
    int fd = mkstemp(script);
    if (fd < 0)
        return FL_EIO;
    ssize_t len = (ssize_t)strlen(torch_script);
    int ok = write(fd, torch_script, (size_t)len) == len;
    close(fd);
    if (!ok) {
        unlink(script);
        return FL_EIO;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "'%s' %s %d %d %d %d %d %d %d %d %d %.1f 2>/dev/null", py, script,
             c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
             c.vocab_size, BENCH_B, BENCH_T, threads, BENCH_SECONDS);
    fflush(NULL);
    FILE *f = popen(cmd, "r");
    char line[256] = "";
    int rc = FL_EIO;
    if (f) {
        if (fgets(line, sizeof line, f)) {
            char *end, *end2;
            rates[0] = strtod(line, &end);
            rates[1] = strtod(end, &end2);
            if (end != line && end2 != end && rates[0] > 0 && rates[1] > 0)
                rc = 0;
        }
        if (pclose(f) != 0)
            rc = FL_EIO;
    }
    unlink(script);
    return rc;
}

/* Interleaved rounds, best of each: the machine may be shared, and the
 * best round is the one least disturbed. The ratio is taken over tokens
 * per CPU second, which other processes on the machine do not dilute
 * (equal to the wall-time ratio on an idle machine when threads = 1). */
int fl_bench_model_train(json_t *obj, int threads)
{
    double ours_best[2] = {0, 0}, torch_best[2] = {0, 0}, rss = -1;
    int torch_ok = 0;
    if (threads < 1)
        threads = 1;
    for (int round = 0; round < BENCH_ROUNDS; round++) {
        double r[2];
        int rc = run_ours(threads, r);
        if (rc < 0)
            return rc;
        for (int k = 0; k < 2; k++)
            ours_best[k] = FL_MAX(ours_best[k], r[k]);
        if (run_torch(threads, r) == 0) {
            torch_ok = 1;
            for (int k = 0; k < 2; k++)
                torch_best[k] = FL_MAX(torch_best[k], r[k]);
        }
    }
    json_object_set_new(obj, "train_tokens_per_s", json_real(ours_best[0]));
    json_object_set_new(obj, "train_tokens_per_cpu_s", json_real(ours_best[1]));
    if (train_process_rss(threads, &rss) == 0)
        json_object_set_new(obj, "train_peak_rss_mb", json_real(rss));
    else
        json_object_set_new(obj, "train_peak_rss_mb", json_null());
    json_object_set_new(
        obj, "train_peak_rss_method",
        json_string("peak RSS of a separate `flotilla model train` process: "
                    "the tiny default, 10 steps of 2 x 128 tokens"));
    json_object_set_new(obj, "train_batch",
                        json_pack("{s:i, s:i}", "B", BENCH_B, "T", BENCH_T));
    json_object_set_new(obj, "train_threads", json_integer(threads));
    if (torch_ok) {
        json_object_set_new(obj, "train_torch_tokens_per_s",
                            json_real(torch_best[0]));
        json_object_set_new(obj, "train_torch_tokens_per_cpu_s",
                            json_real(torch_best[1]));
        json_object_set_new(obj, "train_vs_torch",
                            json_real(ours_best[1] / torch_best[1]));
        json_object_set_new(obj, "train_vs_torch_wall",
                            json_real(ours_best[0] / torch_best[0]));
    } else {
        json_object_set_new(obj, "train_vs_torch", json_null());
    }
    return 0;
}
