/* server/engine.c — the engines seam of this build (fl_server_engine_t).
 *
 * What each hook will call once the engine is on main:
 *   begin          compress: fl_compress_new from RoundConfig.codec and d,
 *                  num_values = fl_compress_value_count; secagg: the server
 *                  state machine for RoundConfig.secagg and the n invitees.
 *   advertise ..   secagg: the server engine's message handlers and the
 *   unmask         per-client requests it produces.
 *   input          secagg on: the engine's masked-input accumulator;
 *                  off: fl_compress_accumulate_payload into a float sum.
 *   finish         (thread pool) secagg unmask -> ring sum;
 *                  fl_compress_decode_ring_sum / fl_compress_finish with
 *                  denominator 1; dp: fl_dp_noised_mean with sigma =
 *                  z * fl_dp_sensitivity and the fixed cohort;
 *                  fl_dp_accountant_compose + _epsilon + _save into
 *                  f->state; optim: the server optimizer step;
 *                  model: fl_model_save of the new params; artifact: the
 *                  signed version directory, pruning to keep-versions;
 *                  then fl_server_state_save of f->state.
 *   budget         dp: fl_dp_accountant_check with q = cohort/population.
 * Until then a round fails cleanly at `begin` with FL_ENOTSUP and is
 * aborted (ABORT_INTERNAL); the rest of the server works. */
#include "server/internal.h"

static int default_begin(void *ctx, const Flotilla__RoundConfig *rc, uint32_t n,
                         void **round_ctx, uint64_t *num_values)
{
    (void)ctx;
    (void)rc;
    (void)n;
    *round_ctx = NULL;
    *num_values = 0;
    return FL_ENOTSUP;
}

static int default_input(void *round_ctx,
                         const Flotilla__MaskedInputResponse *m)
{
    (void)round_ctx;
    (void)m;
    return FL_ENOTSUP;
}

static int default_finish(void *round_ctx, fl_server_finish_t *f)
{
    (void)round_ctx;
    snprintf(f->err, sizeof f->err, "the aggregation engines are not built");
    return FL_ENOTSUP;
}

const fl_server_engine_t fl_server_engine_default = {
    .begin = default_begin,
    .input = default_input,
    .finish = default_finish,
};
