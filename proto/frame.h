/*
 * proto/frame.h — the frame codec: a 4-byte big-endian length, then that
 * many bytes of payload (one encoded Envelope).
 *
 * The decoder is incremental: bytes can arrive split at any position. The
 * declared length is checked against the configured maximum before any
 * memory is reserved for the payload, and the payload buffer grows only
 * as bytes actually arrive. This header knows nothing of protobuf, so the
 * transport (net/) can include it alone.
 *
 * Thread-safety: a decoder belongs to one connection and one thread.
 */
#ifndef FL_PROTO_FRAME_H
#define FL_PROTO_FRAME_H

#include "common/common.h"

#define FL_FRAME_HEADER_LEN  4
#define FL_FRAME_DEFAULT_MAX (64u << 20)

typedef struct {
    size_t max_len;
    uint8_t hdr[FL_FRAME_HEADER_LEN];
    size_t hdr_have;
    size_t want; /* payload length of the frame being read */
    fl_buf_t payload;
    int in_payload;
    int failed; /* a decoder that reported an error stays failed */
} fl_frame_decoder_t;

void fl_frame_decoder_init(fl_frame_decoder_t *d, size_t max_len);
void fl_frame_decoder_free(fl_frame_decoder_t *d);

/* Consumes input up to the end of at most one frame.
 * Returns 1 with frame and frame_len set when a frame is complete (the bytes
 * are valid until the next call), 0 when all input was consumed and more
 * is needed, or a negative error: FL_ETOOBIG (declared length above the
 * maximum), FL_EFORMAT (a zero-length frame). *consumed always says how
 * many input bytes were used. */
int fl_frame_decoder_feed(fl_frame_decoder_t *d, const uint8_t *in, size_t len,
                          size_t *consumed, const uint8_t **frame,
                          size_t *frame_len);

/* At the end of the stream: FL_ETRUNC if a frame was started and not
 * finished, 0 otherwise. */
int fl_frame_decoder_finish(const fl_frame_decoder_t *d);

/* Appends the 4-byte header and the payload to out. FL_ETOOBIG when the
 * payload is longer than max_len or than a 32-bit length can say. */
int fl_frame_encode(fl_buf_t *out, const uint8_t *payload, size_t len,
                    size_t max_len);

#endif
