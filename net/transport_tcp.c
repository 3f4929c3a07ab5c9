/* net/transport_tcp.c — the plain TCP transport: socket bytes are the
 * frames. For tests, the simulator and deployments behind a TLS proxy. */
#include "net/net_internal.h"

#include <string.h>

static int tcp_start(fl_net_conn_t *c)
{
    fl_net__conn_opened(c);
    return 0;
}

static int tcp_input(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    return fl_net__conn_deliver(c, p, n);
}

static int tcp_send(fl_net_conn_t *c, const uint8_t hdr[FL_FRAME_HEADER_LEN],
                    const uint8_t *p, size_t n, uint8_t *owned)
{
    fl_net_wreq_t *w = NULL;
    if (owned) {
        /* Zero copy: the header rides in the request, the payload is
         * written from the caller's buffer. */
        w = fl_net__wreq_new(FL_FRAME_HEADER_LEN);
        if (!w) {
            fl_free(owned);
            return FL_ENOMEM;
        }
        memcpy(w->data, hdr, FL_FRAME_HEADER_LEN);
        return fl_net__conn_write_wire(c, w, owned, n, owned);
    }
    w = fl_net__wreq_new(FL_FRAME_HEADER_LEN + n);
    if (!w)
        return FL_ENOMEM;
    memcpy(w->data, hdr, FL_FRAME_HEADER_LEN);
    memcpy(w->data + FL_FRAME_HEADER_LEN, p, n);
    return fl_net__conn_write_wire(c, w, NULL, 0, NULL);
}

const fl_net_transport_t fl_net__tcp = {
    .name = "tcp",
    .start = tcp_start,
    .input = tcp_input,
    .send = tcp_send,
    .shutdown = NULL,
    .destroy = NULL,
};
