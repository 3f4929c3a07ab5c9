/* tests/fuzz/fuzz_util.h — what the fuzz targets with on-disk state share:
 * a working directory that outlives the inputs and is removed at exit, and
 * the log level. Header-only: each target is one file linked with the
 * library. */
#ifndef FL_TESTS_FUZZ_UTIL_H
#define FL_TESTS_FUZZ_UTIL_H

#include "common/common.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char fuzz_dir_[256];

static int fuzz_rm_entry_(const char *path, const struct stat *st, int flag,
                          struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fuzz_rm_dir_(void)
{
    nftw(fuzz_dir_, fuzz_rm_entry_, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory fuzz-<name>-XXXXXX for the process, removed at exit:
 * under TMPDIR, else on tmpfs when there is one (the targets' state is
 * synced to disk, which would dominate every input), else /tmp. NULL when
 * it cannot be made. Also sets the log level: silent, unless FUZZ_VERBOSE
 * is set (to follow one input). */
static const char *fuzz_workdir(const char *name)
{
    fl_log_set_level(getenv("FUZZ_VERBOSE") ? FL_LOG_DEBUG : FL_LOG_ERROR + 1);
    const char *tmp = getenv("TMPDIR");
    if (!tmp)
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/fuzz-%s-XXXXXX", tmp, name);
    if (!mkdtemp(fuzz_dir_))
        return NULL;
    atexit(fuzz_rm_dir_);
    return fuzz_dir_;
}

#endif
