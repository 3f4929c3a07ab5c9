/* tests/unit/testutil.c — helpers shared by the Check suites. */
#include "tests/unit/testutil.h"

#include "common/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <signal.h>

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return (v && *v) ? v : def;
}

const char *fl_test_srcpath(char *out, size_t outlen, const char *rel)
{
    snprintf(out, outlen, "%s/%s", env_or("FL_SRCDIR", "."), rel);
    return out;
}

const char *fl_test_buildpath(char *out, size_t outlen, const char *rel)
{
    snprintf(out, outlen, "%s/%s", env_or("FL_BUILD", "build"), rel);
    return out;
}

const char *fl_test_flotilla(char *out, size_t outlen)
{
    const char *w = getenv("FL_EXEC_WRAPPER");
    snprintf(out, outlen, "%s%s'%s/flotilla'", (w && *w) ? w : "",
             (w && *w) ? " " : "", env_or("FL_BUILD", "build"));
    return out;
}

void fl_test_exec_flotilla(char *const args[])
{
    char wrap[512] = "", bin[1024], *argv[64];
    int n = 0;
    const char *w = getenv("FL_EXEC_WRAPPER");
    char *save = NULL;
    snprintf(wrap, sizeof wrap, "%s", w ? w : "");
    for (char *t = strtok_r(wrap, " ", &save); t && n < 16;
         t = strtok_r(NULL, " ", &save))
        argv[n++] = t;
    snprintf(bin, sizeof bin, "%s/flotilla", env_or("FL_BUILD", "build"));
    argv[n++] = bin;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    execvp(argv[0], argv);
}

pid_t fl_test_spawn_flotilla(const char *log, const char *args)
{
    char bin[1024], cmd[8192];
    fl_test_flotilla(bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "exec %s %s >>'%s' 2>&1", bin, args, log);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

int fl_test_wait_exit(pid_t pid, double seconds)
{
    double t0 = fl_time_mono_s();
    int st = 0;
    while (fl_time_mono_s() - t0 < seconds) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -2;
}

int fl_test_emulated(void)
{
    const char *w = getenv("FL_EXEC_WRAPPER");
    return w && *w;
}

const char *fl_test_python(void)
{
    return env_or("FL_PYTHON", "/usr/bin/python3");
}

void fl_test_tmpdir(char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/fltest-XXXXXX", env_or("TMPDIR", "/tmp"));
    ck_assert_ptr_nonnull(mkdtemp(out));
}

void fl_test_rmtree(const char *path)
{
    if (path && strncmp(path, "/tmp/", 5) == 0 && !strstr(path, ".."))
        fl_test_system("rm -rf '%s'", path);
}

int fl_test_system(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st < 0 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

void fl_test_fill(uint8_t *buf, size_t n, uint64_t seed)
{
    fl_rng_t r;
    fl_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)fl_rng_next(&r);
}
