/* common/alloc.c — allocation wrappers with failure injection for tests. */
#include "common/common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown; /* 0: off; n: the n-th allocation fails */

void fl_alloc_fail_after(long countdown)
{
    atomic_store(&fail_countdown, countdown);
}

/* Returns 1 when this allocation must fail. */
static int injected_failure(void)
{
    long c = atomic_load(&fail_countdown);
    while (c > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &c, c - 1))
            return c == 1;
    }
    return 0;
}

int fl_mul_size(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return FL_ETOOBIG;
    *out = a * b;
    return 0;
}

void *fl_malloc(size_t n)
{
    if (injected_failure())
        return NULL;
    return malloc(n ? n : 1);
}

void *fl_calloc(size_t count, size_t size)
{
    size_t n;
    if (fl_mul_size(count, size, &n) < 0 || injected_failure())
        return NULL;
    return calloc(n ? n : 1, 1);
}

void *fl_realloc(void *p, size_t n)
{
    if (injected_failure())
        return NULL;
    return realloc(p, n ? n : 1);
}

void *fl_aligned_alloc(size_t alignment, size_t n)
{
    if (injected_failure())
        return NULL;
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX - alignment)
        return NULL;
    n = (n + alignment - 1) / alignment * alignment;
    void *p = aligned_alloc(alignment, n);
    if (p)
        memset(p, 0, n);
    return p;
}

char *fl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = fl_malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

void fl_free(void *p)
{
    free(p);
}
