/* cli/bench_train.c — the local-training half of flotilla bench model. */
#include "cli/cli.h"

int fl_bench_model_train(struct json_t *obj, int threads)
{
    (void)obj;
    (void)threads;
    return FL_ENOTSUP;
}
