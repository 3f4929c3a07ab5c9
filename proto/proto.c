/* proto/proto.c — Envelope encoding and decoding. */
#include "proto/proto.h"

int fl_proto_decode(const uint8_t *payload, size_t len, size_t max_len,
                    fl_envelope_t **out)
{
    *out = NULL;
    if (len > max_len)
        return FL_ETOOBIG;
    fl_envelope_t *e = flotilla__envelope__unpack(NULL, len, payload);
    if (!e)
        return FL_EFORMAT;
    if (e->body_case == FLOTILLA__ENVELOPE__BODY__NOT_SET) {
        flotilla__envelope__free_unpacked(e, NULL);
        return FL_EFORMAT;
    }
    if (e->protocol_version != FL_PROTOCOL_VERSION) {
        flotilla__envelope__free_unpacked(e, NULL);
        return FL_EVERSION;
    }
    *out = e;
    return 0;
}

void fl_proto_free(fl_envelope_t *e)
{
    if (e)
        flotilla__envelope__free_unpacked(e, NULL);
}

int fl_proto_encode_frame(fl_envelope_t *e, fl_buf_t *out, size_t max_len)
{
    e->protocol_version = FL_PROTOCOL_VERSION;
    size_t n = flotilla__envelope__get_packed_size(e);
    if (n == 0 || n > max_len || n > UINT32_MAX)
        return n == 0 ? FL_EINVAL : FL_ETOOBIG;
    int rc = fl_buf_reserve(out, n + FL_FRAME_HEADER_LEN);
    if (rc < 0)
        return rc;
    fl_buf_append_be32(out, (uint32_t)n);
    size_t w = flotilla__envelope__pack(e, out->data + out->len);
    FL_ASSERT(w == n);
    out->len += n;
    return 0;
}

const char *fl_proto_body_name(const fl_envelope_t *e)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
        &flotilla__envelope__descriptor, (unsigned)e->body_case);
    return f ? f->name : "none";
}
