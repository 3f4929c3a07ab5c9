/* common/error.c — the error table, and assertions. */
#include "common/common.h"

#include <errno.h>
#include <stdlib.h>

const char *fl_strerror(int err)
{
    switch (err) {
    case FL_OK:
        return "success";
#define FL_ERR_MSG(name, msg)                                                  \
    case FL_E##name:                                                           \
        return msg;
        FL_ERRNO_MAP(FL_ERR_MSG)
#undef FL_ERR_MSG
    default:
        return "unknown error";
    }
}

const char *fl_err_name(int err)
{
    switch (err) {
    case FL_OK:
        return "FL_OK";
#define FL_ERR_NAME(name, msg)                                                 \
    case FL_E##name:                                                           \
        return "FL_E" #name;
        FL_ERRNO_MAP(FL_ERR_NAME)
#undef FL_ERR_NAME
    default:
        return "FL_E?";
    }
}

int fl_err_from_errno(int e)
{
    switch (e) {
    case 0:
        return FL_OK;
    case ENOMEM:
        return FL_ENOMEM;
    case ENOENT:
        return FL_ENOENT;
    case EEXIST:
        return FL_EEXIST;
    case EINVAL:
        return FL_EINVAL;
    case EACCES:
    case EPERM:
        return FL_EDENIED;
    case EFBIG:
    case ENAMETOOLONG:
        return FL_ETOOBIG;
    case EAGAIN:
        return FL_EAGAIN;
    case ETIMEDOUT:
        return FL_ETIMEOUT;
    case EPIPE:
    case ECONNRESET:
        return FL_ECLOSED;
    default:
        return FL_EIO;
    }
}

_Noreturn void fl_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "flotilla: assertion failed: %s (%s:%d)\n", expr, file,
            line);
    abort();
}
