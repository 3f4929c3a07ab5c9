/* tests/fuzz/fuzz_frame.c — the frame codec and Envelope decoding on
 * arbitrary bytes, split where the input's first byte says. */
#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = 1 + data[0] % 37;
    data++;
    size--;
    fl_frame_decoder_t d;
    fl_frame_decoder_init(&d, 4096);
    size_t pos = 0;
    while (pos < size) {
        size_t len = FL_MIN(step, size - pos), used;
        const uint8_t *fr;
        size_t fl;
        int rc = fl_frame_decoder_feed(&d, data + pos, len, &used, &fr, &fl);
        if (used > len)
            __builtin_trap();
        pos += used;
        if (rc < 0)
            break;
        if (rc == 1) {
            fl_envelope_t *e = NULL;
            if (fl_proto_decode(fr, fl, 4096, &e) == 0) {
                fl_buf_t out;
                fl_buf_init(&out, 1 << 20);
                if (fl_proto_encode_frame(e, &out, 1 << 20) != 0)
                    __builtin_trap();
                fl_buf_free(&out);
                (void)fl_proto_body_name(e);
                fl_proto_free(e);
            }
        } else if (used != len) {
            __builtin_trap();
        }
    }
    (void)fl_frame_decoder_finish(&d);
    fl_frame_decoder_free(&d);
    return 0;
}
