/* server/engine.c — the engines seam of this build (fl_server_engine_t).
 * Until the engines are built in, a round fails cleanly at `begin` with
 * FL_ENOTSUP and is aborted (ABORT_INTERNAL); the rest of the server
 * works. */
#include "server/internal.h"

static int stub_begin(void *ctx, const Flotilla__RoundConfig *rc, uint32_t n,
                      const uint8_t (*keys)[32], void **round_ctx,
                      uint64_t *num_values)
{
    (void)ctx;
    (void)rc;
    (void)n;
    (void)keys;
    *round_ctx = NULL;
    *num_values = 0;
    return FL_ENOTSUP;
}

static int stub_handle(void *round_ctx, uint32_t sender, const fl_envelope_t *e)
{
    return FL_ENOTSUP;
}

static int stub_finish(void *round_ctx, fl_server_finish_t *f)
{
    snprintf(f->err, sizeof f->err, "the aggregation engines are not built");
    return FL_ENOTSUP;
}

const fl_server_engine_t fl_server_engine_default = {
    .begin = stub_begin,
    .handle = stub_handle,
    .finish = stub_finish,
};
