/* proto/frame.c — incremental length-prefixed frame decoding. */
#include "proto/frame.h"

#include <string.h>

void fl_frame_decoder_init(fl_frame_decoder_t *d, size_t max_len)
{
    memset(d, 0, sizeof *d);
    d->max_len = max_len;
    fl_buf_init(&d->payload, max_len);
}

void fl_frame_decoder_free(fl_frame_decoder_t *d)
{
    if (!d)
        return;
    fl_buf_free(&d->payload);
}

int fl_frame_decoder_feed(fl_frame_decoder_t *d, const uint8_t *in, size_t len,
                          size_t *consumed, const uint8_t **frame,
                          size_t *frame_len)
{
    size_t used = 0;
    *consumed = 0;
    *frame = NULL;
    *frame_len = 0;
    if (d->failed)
        return d->failed;

    if (!d->in_payload) {
        size_t take = FL_MIN(FL_FRAME_HEADER_LEN - d->hdr_have, len);
        memcpy(d->hdr + d->hdr_have, in, take);
        d->hdr_have += take;
        used += take;
        if (d->hdr_have < FL_FRAME_HEADER_LEN) {
            *consumed = used;
            return 0;
        }
        uint32_t n = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
                     (uint32_t)d->hdr[2] << 8 | d->hdr[3];
        if (n == 0) {
            *consumed = used;
            return d->failed = FL_EFORMAT;
        }
        if (n > d->max_len) {
            *consumed = used;
            return d->failed = FL_ETOOBIG;
        }
        d->want = n;
        d->in_payload = 1;
        fl_buf_reset(&d->payload);
    }

    size_t take = FL_MIN(d->want - d->payload.len, len - used);
    int rc = fl_buf_append(&d->payload, in + used, take);
    if (rc < 0) {
        *consumed = used;
        return d->failed = rc;
    }
    used += take;
    *consumed = used;
    if (d->payload.len < d->want)
        return 0;

    d->in_payload = 0;
    d->hdr_have = 0;
    *frame = d->payload.data;
    *frame_len = d->payload.len;
    return 1;
}

int fl_frame_decoder_finish(const fl_frame_decoder_t *d)
{
    return (d->hdr_have > 0 || d->in_payload) ? FL_ETRUNC : 0;
}

int fl_frame_encode(fl_buf_t *out, const uint8_t *payload, size_t len,
                    size_t max_len)
{
    if (len == 0 || len > max_len || len > UINT32_MAX)
        return len == 0 ? FL_EINVAL : FL_ETOOBIG;
    int rc = fl_buf_reserve(out, len + FL_FRAME_HEADER_LEN);
    if (rc < 0)
        return rc;
    fl_buf_append_be32(out, (uint32_t)len);
    return fl_buf_append(out, payload, len);
}
