/* common/buf.c — growable byte buffer with a hard maximum. */
#include "common/common.h"

#include <string.h>

void fl_buf_init(fl_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void fl_buf_free(fl_buf_t *b)
{
    fl_free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void fl_buf_reset(fl_buf_t *b)
{
    b->len = 0;
}

int fl_buf_reserve(fl_buf_t *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return FL_ETOOBIG;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max)
        cap = b->max;
    uint8_t *p = fl_realloc(b->data, cap);
    if (!p)
        return FL_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int fl_buf_append(fl_buf_t *b, const void *p, size_t n)
{
    int rc = fl_buf_reserve(b, n);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int fl_buf_append_u8(fl_buf_t *b, uint8_t v)
{
    return fl_buf_append(b, &v, 1);
}

int fl_buf_append_be32(fl_buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8),
                    (uint8_t)v};
    return fl_buf_append(b, x, 4);
}

int fl_buf_printf(fl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return FL_EINVAL;
    int rc = fl_buf_reserve(b, (size_t)n + 1);
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void fl_buf_consume(fl_buf_t *b, size_t n)
{
    FL_ASSERT(n <= b->len);
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}
