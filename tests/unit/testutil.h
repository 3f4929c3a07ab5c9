/*
 * tests/unit/testutil.h — helpers shared by the Check suites.
 *
 * make check sets FL_BUILD (the build directory, where the flotilla binary
 * is), FL_SRCDIR (the source tree) and FL_PYTHON (the interpreter with
 * PyTorch) in the environment.
 */
#ifndef FL_TESTUTIL_H
#define FL_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Path of a file in the source tree / build tree (static buffer per call
 * site is not safe: the result is written into out). */
const char *fl_test_srcpath(char *out, size_t outlen, const char *rel);
const char *fl_test_buildpath(char *out, size_t outlen, const char *rel);
const char *fl_test_python(void);
/* The shell command that runs the flotilla binary:
 * "<wrapper> '<build>/flotilla'", where the wrapper (FL_EXEC_WRAPPER, e.g.
 * qemu for cross builds) may be empty. Use it unquoted. */
const char *fl_test_flotilla(char *out, size_t outlen);
/* Replaces the process with flotilla (under the wrapper, if any) and the
 * NULL-terminated args; returns only when exec fails. */
void fl_test_exec_flotilla(char *const args[]);
/* Starts `flotilla <args>` (args: shell words, quoted by the caller) in a
 * child whose output is appended to log; returns its pid. */
pid_t fl_test_spawn_flotilla(const char *log, const char *args);
/* Waits at most seconds for pid: its exit status, -1 when a signal ended
 * it, -2 when it was still running (it is then killed). */
int fl_test_wait_exit(pid_t pid, double seconds);
/* 1 when the tests run under an emulator (FL_EXEC_WRAPPER set, as in
 * cross builds under qemu-user): suites that train models or run many
 * rounds then use smaller sizes, with the same assertions. */
int fl_test_emulated(void);
/* Creates a fresh temporary directory; out receives its path. */
void fl_test_tmpdir(char *out, size_t outlen);
/* rm -rf, for a directory made by fl_test_tmpdir. */
void fl_test_rmtree(const char *path);
/* Runs a shell command, returns its exit status (or -1). */
int fl_test_system(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Fills buf with reproducible bytes from seed. */
void fl_test_fill(uint8_t *buf, size_t n, uint64_t seed);

#endif
