/* tests/unit/check_proto.c — the Envelope codec and the frame codec:
 * every message type round-trips, streams split at every byte decode the
 * same, and oversize, truncated and garbage input each give their error. */
#include "proto/proto.h"
#include "tests/unit/testutil.h"

#include <string.h>

/* ---- a generic filler: every field of every message set from its
 * descriptor, so that a message added to the .proto is covered at once. */
typedef struct {
    void *ptrs[4096];
    int n;
} arena_t;

static void *arena_alloc(arena_t *a, size_t n)
{
    ck_assert_int_lt(a->n, (int)FL_ARRAY_LEN(a->ptrs));
    void *p = fl_calloc(1, n ? n : 1);
    ck_assert_ptr_nonnull(p);
    a->ptrs[a->n++] = p;
    return p;
}

static void arena_free(arena_t *a)
{
    for (int i = 0; i < a->n; i++)
        fl_free(a->ptrs[i]);
    a->n = 0;
}

static size_t field_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    }
    return 0;
}

static void fill_message(arena_t *a, ProtobufCMessage *m,
                         const ProtobufCMessageDescriptor *d, int depth,
                         unsigned seed);

static void fill_value(arena_t *a, void *p, const ProtobufCFieldDescriptor *f,
                       int depth, unsigned seed)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        int32_t v = ed->values[seed % ed->n_values].value;
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: {
        int32_t v = -(int32_t)(seed * 7 + 1);
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        uint32_t v = seed * 2654435761u + 1;
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v = (uint64_t)seed * 0x9e3779b97f4a7c15ULL + 3;
        memcpy(p, &v, 8);
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        float v = 0.5f + (float)seed;
        memcpy(p, &v, sizeof v);
        break;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v = 0.25 + seed;
        memcpy(p, &v, sizeof v);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean v = 1;
        memcpy(p, &v, sizeof v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        char *s = arena_alloc(a, 16);
        snprintf(s, 16, "s%u", seed);
        memcpy(p, &s, sizeof s);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData b;
        b.len = 1 + seed % 40;
        b.data = arena_alloc(a, b.len);
        fl_test_fill(b.data, b.len, seed);
        memcpy(p, &b, sizeof b);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        ProtobufCMessage *sub = NULL;
        if (depth < 3) {
            sub = arena_alloc(a, md->sizeof_message);
            fill_message(a, sub, md, depth + 1, seed * 31 + 5);
        }
        memcpy(p, &sub, sizeof sub);
        break;
    }
    }
}

static void fill_message(arena_t *a, ProtobufCMessage *m,
                         const ProtobufCMessageDescriptor *d, int depth,
                         unsigned seed)
{
    protobuf_c_message_init(d, m);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            continue;
        void *p = (char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 2, es = field_size(f);
            char *arr = arena_alloc(a, n * es);
            for (size_t k = 0; k < n; k++)
                fill_value(a, arr + k * es, f, depth, seed + (unsigned)k + i);
            memcpy((char *)m + f->quantifier_offset, &n, sizeof n);
            memcpy(p, &arr, sizeof arr);
        } else {
            fill_value(a, p, f, depth, seed + i);
        }
    }
}

/* An Envelope whose body is the oneof member number `which`. */
static fl_envelope_t *make_envelope(arena_t *a, unsigned which)
{
    const ProtobufCMessageDescriptor *ed = &flotilla__envelope__descriptor;
    fl_envelope_t *e = arena_alloc(a, sizeof *e);
    flotilla__envelope__init(e);
    const ProtobufCFieldDescriptor *f = &ed->fields[which];
    ck_assert(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
    fill_value(a, (char *)e + f->offset, f, 0, which + 1);
    uint32_t c = f->id;
    memcpy((char *)e + f->quantifier_offset, &c, sizeof c);
    return e;
}

/* The oneof members of Envelope (every field except protocol_version). */
static unsigned body_fields(unsigned *idx, unsigned max)
{
    const ProtobufCMessageDescriptor *ed = &flotilla__envelope__descriptor;
    unsigned n = 0;
    for (unsigned i = 0; i < ed->n_fields && n < max; i++)
        if (ed->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            idx[n++] = i;
    return n;
}

START_TEST(test_roundtrip_every_message)
{
    unsigned idx[64];
    unsigned n = body_fields(idx, 64);
    ck_assert_uint_ge(n, 21);
    for (unsigned k = 0; k < n; k++) {
        arena_t a = {.n = 0};
        fl_envelope_t *e = make_envelope(&a, idx[k]);
        fl_buf_t b;
        fl_buf_init(&b, FL_FRAME_DEFAULT_MAX);
        ck_assert_int_eq(fl_proto_encode_frame(e, &b, FL_FRAME_DEFAULT_MAX), 0);
        fl_envelope_t *d = NULL;
        ck_assert_int_eq(
            fl_proto_decode(b.data + 4, b.len - 4, FL_FRAME_DEFAULT_MAX, &d),
            0);
        ck_assert_int_eq(d->body_case, e->body_case);
        ck_assert_str_eq(fl_proto_body_name(d), fl_proto_body_name(e));
        /* Re-encoding the decoded message gives the same bytes. */
        fl_buf_t b2;
        fl_buf_init(&b2, FL_FRAME_DEFAULT_MAX);
        ck_assert_int_eq(fl_proto_encode_frame(d, &b2, FL_FRAME_DEFAULT_MAX),
                         0);
        ck_assert_uint_eq(b.len, b2.len);
        ck_assert_mem_eq(b.data, b2.data, b.len);
        fl_proto_free(d);
        fl_buf_free(&b);
        fl_buf_free(&b2);
        arena_free(&a);
    }
}
END_TEST

START_TEST(test_roundtrip_fields)
{
    /* A RoundConfig with values we check one by one after decoding. */
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    Flotilla__CodecConfig codec = FLOTILLA__CODEC_CONFIG__INIT;
    Flotilla__SecAggConfig sa = FLOTILLA__SEC_AGG_CONFIG__INIT;
    uint32_t parts[3] = {1, 2, 3};
    rc.round = 77;
    rc.num_params = 123456;
    codec.quant_bits = 8;
    codec.ring_bits = 15;
    codec.clip_norm = 1.5f;
    codec.support = FLOTILLA__SUPPORT_KIND__SUPPORT_RANDOM_K;
    sa.threshold = 2;
    sa.n_participants = 3;
    sa.participants = parts;
    sa.prg = FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20;
    rc.codec = &codec;
    rc.secagg = &sa;
    Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
    inv.config = &rc;
    fl_envelope_t e = FLOTILLA__ENVELOPE__INIT;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
    e.round_invite = &inv;
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(fl_proto_encode_frame(&e, &b, 1 << 20), 0);
    fl_envelope_t *d;
    ck_assert_int_eq(fl_proto_decode(b.data + 4, b.len - 4, 1 << 20, &d), 0);
    Flotilla__RoundConfig *r = d->round_invite->config;
    ck_assert_uint_eq(r->round, 77);
    ck_assert_uint_eq(r->num_params, 123456);
    ck_assert_uint_eq(r->codec->quant_bits, 8);
    ck_assert_uint_eq(r->codec->ring_bits, 15);
    ck_assert_float_eq(r->codec->clip_norm, 1.5f);
    ck_assert_int_eq(r->codec->support,
                     FLOTILLA__SUPPORT_KIND__SUPPORT_RANDOM_K);
    ck_assert_uint_eq(r->secagg->n_participants, 3);
    ck_assert_uint_eq(r->secagg->participants[2], 3);
    ck_assert_int_eq(r->secagg->prg, FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20);
    fl_proto_free(d);
    fl_buf_free(&b);
}
END_TEST

/* Feeds `len` bytes through d, appending complete frames to out_frames
 * (each as a frame: header + payload). Returns the last feed result. */
static int feed_all(fl_frame_decoder_t *d, const uint8_t *p, size_t len,
                    fl_buf_t *out_frames, int *nframes)
{
    while (len > 0) {
        size_t used;
        const uint8_t *fr;
        size_t fl;
        int rc = fl_frame_decoder_feed(d, p, len, &used, &fr, &fl);
        ck_assert_uint_le(used, len);
        p += used;
        len -= used;
        if (rc < 0)
            return rc;
        if (rc == 1) {
            ck_assert_int_eq(fl_frame_encode(out_frames, fr, fl, 1 << 20), 0);
            (*nframes)++;
        } else {
            ck_assert_uint_eq(len, 0);
        }
    }
    return 0;
}

START_TEST(test_stream_split_everywhere)
{
    unsigned idx[64];
    unsigned n = body_fields(idx, 64);
    arena_t a = {.n = 0};
    fl_buf_t stream;
    fl_buf_init(&stream, 1 << 20);
    for (unsigned k = 0; k < n; k++)
        ck_assert_int_eq(
            fl_proto_encode_frame(make_envelope(&a, idx[k]), &stream, 1 << 20),
            0);

    for (size_t cut = 0; cut <= stream.len; cut++) {
        fl_frame_decoder_t d;
        fl_frame_decoder_init(&d, 1 << 20);
        fl_buf_t got;
        fl_buf_init(&got, 1 << 20);
        int nframes = 0;
        ck_assert_int_eq(feed_all(&d, stream.data, cut, &got, &nframes), 0);
        ck_assert_int_eq(
            feed_all(&d, stream.data + cut, stream.len - cut, &got, &nframes),
            0);
        ck_assert_int_eq(nframes, (int)n);
        ck_assert_int_eq(fl_frame_decoder_finish(&d), 0);
        ck_assert_uint_eq(got.len, stream.len);
        ck_assert_mem_eq(got.data, stream.data, stream.len);
        fl_buf_free(&got);
        fl_frame_decoder_free(&d);
    }
    /* One byte at a time, and every frame decodes to its envelope. */
    fl_frame_decoder_t d;
    fl_frame_decoder_init(&d, 1 << 20);
    size_t pos = 0;
    unsigned k = 0;
    while (pos < stream.len) {
        size_t used;
        const uint8_t *fr;
        size_t fl;
        int rc =
            fl_frame_decoder_feed(&d, stream.data + pos, 1, &used, &fr, &fl);
        ck_assert_int_ge(rc, 0);
        pos += used;
        if (rc == 1) {
            fl_envelope_t *e;
            ck_assert_int_eq(fl_proto_decode(fr, fl, 1 << 20, &e), 0);
            ck_assert_uint_eq(e->body_case,
                              flotilla__envelope__descriptor.fields[idx[k]].id);
            fl_proto_free(e);
            k++;
        }
    }
    ck_assert_uint_eq(k, n);
    fl_frame_decoder_free(&d);
    fl_buf_free(&stream);
    arena_free(&a);
}
END_TEST

START_TEST(test_oversize)
{
    fl_frame_decoder_t d;
    fl_frame_decoder_init(&d, 1000);
    uint8_t hdr[4] = {0, 0, 0x03, 0xe9}; /* 1001 */
    size_t used;
    const uint8_t *fr;
    size_t fl;
    ck_assert_int_eq(fl_frame_decoder_feed(&d, hdr, 4, &used, &fr, &fl),
                     FL_ETOOBIG);
    ck_assert_uint_eq(d.payload.cap, 0); /* refused before allocating */
    /* The decoder stays failed. */
    ck_assert_int_eq(fl_frame_decoder_feed(&d, hdr, 4, &used, &fr, &fl),
                     FL_ETOOBIG);
    fl_frame_decoder_free(&d);
    /* 4 GiB - 1 declared: refused just the same. */
    fl_frame_decoder_init(&d, FL_FRAME_DEFAULT_MAX);
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    ck_assert_int_eq(fl_frame_decoder_feed(&d, huge, 4, &used, &fr, &fl),
                     FL_ETOOBIG);
    fl_frame_decoder_free(&d);
    /* Encoding refuses too. */
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    uint8_t payload[10] = {0};
    ck_assert_int_eq(fl_frame_encode(&b, payload, 10, 9), FL_ETOOBIG);
    ck_assert_int_eq(fl_proto_decode(payload, 10, 9, &(fl_envelope_t *){0}),
                     FL_ETOOBIG);
    fl_buf_free(&b);
}
END_TEST

START_TEST(test_truncated)
{
    arena_t a = {.n = 0};
    fl_buf_t b;
    fl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(fl_proto_encode_frame(make_envelope(&a, 1), &b, 1 << 20),
                     0);
    for (size_t cut = 1; cut < b.len; cut++) {
        fl_frame_decoder_t d;
        fl_frame_decoder_init(&d, 1 << 20);
        size_t used;
        const uint8_t *fr;
        size_t fl;
        ck_assert_int_eq(
            fl_frame_decoder_feed(&d, b.data, cut, &used, &fr, &fl), 0);
        ck_assert_int_eq(fl_frame_decoder_finish(&d), FL_ETRUNC);
        fl_frame_decoder_free(&d);
        /* A truncated payload handed to the decoder is refused too. */
        if (cut > 4) {
            fl_envelope_t *e = NULL;
            int rc = fl_proto_decode(b.data + 4, cut - 4, 1 << 20, &e);
            if (rc == 0) /* a prefix can be a valid shorter message */
                fl_proto_free(e);
            else
                ck_assert_int_eq(rc, FL_EFORMAT);
        }
    }
    fl_buf_free(&b);
    arena_free(&a);
}
END_TEST

START_TEST(test_garbage)
{
    fl_envelope_t *e = NULL;
    uint8_t ff[16];
    memset(ff, 0xff, sizeof ff);
    ck_assert_int_eq(fl_proto_decode(ff, sizeof ff, 1 << 20, &e), FL_EFORMAT);
    ck_assert_ptr_null(e);
    /* A valid protobuf with no body. */
    uint8_t nobody[2] = {0x08, 0x01};
    ck_assert_int_eq(fl_proto_decode(nobody, 2, 1 << 20, &e), FL_EFORMAT);
    /* A body with the wrong protocol version. */
    Flotilla__Heartbeat hb = FLOTILLA__HEARTBEAT__INIT;
    fl_envelope_t env = FLOTILLA__ENVELOPE__INIT;
    env.body_case = FLOTILLA__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    env.protocol_version = 99;
    uint8_t buf[64];
    size_t n = flotilla__envelope__pack(&env, buf);
    ck_assert_int_eq(fl_proto_decode(buf, n, 1 << 20, &e), FL_EVERSION);
    /* A zero-length frame. */
    fl_frame_decoder_t d;
    fl_frame_decoder_init(&d, 1 << 20);
    uint8_t zero[4] = {0};
    size_t used;
    const uint8_t *fr;
    size_t fl;
    ck_assert_int_eq(fl_frame_decoder_feed(&d, zero, 4, &used, &fr, &fl),
                     FL_EFORMAT);
    fl_frame_decoder_free(&d);
    /* Random payloads never crash and never decode without a body. */
    for (unsigned s = 0; s < 2000; s++) {
        uint8_t r[64];
        size_t len = 1 + s % 64;
        fl_test_fill(r, len, s);
        int rc = fl_proto_decode(r, len, 1 << 20, &e);
        if (rc == 0) {
            ck_assert_int_ne(e->body_case, FLOTILLA__ENVELOPE__BODY__NOT_SET);
            fl_proto_free(e);
        } else {
            ck_assert(rc == FL_EFORMAT || rc == FL_EVERSION);
        }
    }
}
END_TEST

Suite *check_proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, test_roundtrip_every_message);
    tcase_add_test(tc, test_roundtrip_fields);
    tcase_add_test(tc, test_stream_split_everywhere);
    tcase_add_test(tc, test_oversize);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_garbage);
    suite_add_tcase(s, tc);
    return s;
}
