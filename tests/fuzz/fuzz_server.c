/* tests/fuzz/fuzz_server.c — the server's own parsers on arbitrary bytes:
 * the state file, the enrolment list, the metrics endpoint's request head
 * and the server configuration with its cross-option checks. The first
 * byte picks the parser. */
#include "server/internal.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_metrics(void *ctx, fl_buf_t *out)
{
    return fl_buf_printf(out, "x 1\n");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int which = data[0] % 4;
    data++;
    size--;
    char err[512];
    switch (which) {
    case 0: { /* the state file: decoded, re-encoded, decoded the same */
        fl_server_state_t st, st2;
        fl_server_state_init(&st);
        fl_server_state_init(&st2);
        if (fl_server_state_decode(data, size, &st) == 0) {
            uint8_t *buf = NULL;
            size_t len = 0;
            if (fl_server_state_encode(&st, &buf, &len) != 0 ||
                fl_server_state_decode(buf, len, &st2) != 0 ||
                st2.round != st.round ||
                st2.model_version != st.model_version ||
                st2.accountant_len != st.accountant_len)
                __builtin_trap();
            fl_free(buf);
        }
        fl_server_state_clear(&st);
        fl_server_state_clear(&st2);
        break;
    }
    case 1: { /* the enrolment list */
        fl_server_enrol_t *e = NULL;
        if (fl_server_enrol_parse((const char *)data, size, "fuzz", &e, err,
                                  sizeof err) == 0) {
            for (size_t i = 0; i < fl_server_enrol_count(e); i++) {
                uint8_t key[32];
                const char *name = NULL;
                if (fl_server_enrol_get(e, i, key, &name) != 0 ||
                    !fl_server_enrol_contains(e, key))
                    __builtin_trap();
            }
        }
        fl_server_enrol_free(e);
        break;
    }
    case 2: { /* one request head at the metrics endpoint */
        fl_server_http_handler_t h = {fuzz_metrics, NULL, NULL};
        fl_buf_t out;
        fl_buf_init(&out, 1 << 20);
        if (fl_server_http_respond(&h, data, size, &out) != 0 || out.len < 12 ||
            memcmp(out.data, "HTTP/1.1 ", 9) != 0)
            __builtin_trap();
        fl_buf_free(&out);
        break;
    }
    default: { /* a configuration file, then the cross-option checks */
        fl_server_config_t c;
        if (fl_server_config_init(&c, err, sizeof err) != 0)
            __builtin_trap();
        if (fl_cfg_load_string(fl_server_config_table(), &c, (const char *)data,
                               size, "fuzz.ini", err, sizeof err) == 0 &&
            fl_server_config_check(&c, err, sizeof err) == 0) {
            (void)fl_server_config_invitees(&c);
            (void)fl_server_config_ring_bits(&c);
            (void)fl_server_config_threshold(&c, fl_server_config_invitees(&c));
        }
        fl_server_config_free(&c);
        break;
    }
    }
    return 0;
}
