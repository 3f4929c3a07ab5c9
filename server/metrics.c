/* server/metrics.c — the Prometheus text exposition of the server's
 * counters (format 0.0.4: HELP and TYPE lines, then `name{labels} value`). */
#include "server/server.h"

#include <inttypes.h>
#include <math.h>

static const char *const phase_names[FL_SERVER_PHASE_COUNT] = {
    "invite", "advertise", "share", "masked_input", "unmask", "finish"};

const char *fl_server_phase_name(int phase)
{
    if (phase < 0 || phase >= FL_SERVER_PHASE_COUNT)
        return "none";
    return phase_names[phase];
}

static int head(fl_buf_t *o, const char *name, const char *type,
                const char *help)
{
    return fl_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                         type);
}

static int u64(fl_buf_t *o, const char *name, const char *type,
               const char *help, uint64_t v)
{
    int rc = head(o, name, type, help);
    return rc ? rc : fl_buf_printf(o, "%s %" PRIu64 "\n", name, v);
}

/* Prometheus spells the special values +Inf, -Inf and NaN (an epsilon is
 * infinite when the server adds no noise). */
static int dbl(fl_buf_t *o, const char *name, const char *help, double v)
{
    int rc = head(o, name, "gauge", help);
    if (rc)
        return rc;
    if (isnan(v))
        return fl_buf_printf(o, "%s NaN\n", name);
    if (isinf(v))
        return fl_buf_printf(o, "%s %sInf\n", name, v > 0 ? "+" : "-");
    return fl_buf_printf(o, "%s %.17g\n", name, v);
}

int fl_server_metrics_render(const fl_server_metrics_t *m, fl_buf_t *o)
{
    int rc = 0;
#define TRY(x)                                                                 \
    do {                                                                       \
        if ((rc = (x)) < 0)                                                    \
            return rc;                                                         \
    } while (0)
    TRY(u64(o, "flotilla_connected_clients", "gauge",
            "Devices connected with an accepted hello.", m->connected));
    TRY(u64(o, "flotilla_connections", "gauge",
            "Open device connections, hello or not.", m->connections));
    TRY(u64(o, "flotilla_enrolled_clients", "gauge",
            "Device keys on the allow-list.", m->enrolled));
    TRY(u64(o, "flotilla_rounds_completed_total", "counter",
            "Rounds that published a model version.", m->rounds_completed));
    TRY(u64(o, "flotilla_rounds_aborted_total", "counter",
            "Rounds aborted (too few survivors, deadline, shutdown).",
            m->rounds_aborted));
    TRY(u64(o, "flotilla_round", "gauge", "The round running or last run.",
            m->round));
    TRY(u64(o, "flotilla_model_version", "gauge",
            "Version of the current global model.", m->model_version));
    TRY(u64(o, "flotilla_bytes_received_total", "counter",
            "Frame bytes received from devices.", m->bytes_in));
    TRY(u64(o, "flotilla_bytes_sent_total", "counter",
            "Frame bytes sent to devices.", m->bytes_out));
    TRY(u64(o, "flotilla_connections_refused_total", "counter",
            "Connections closed at accept by a limit (connections, "
            "handshakes, handshakes per source).",
            m->connections_refused));
    TRY(u64(o, "flotilla_model_announcements_total", "counter",
            "New versions announced to connected devices (ModelAvailable).",
            m->announcements));
    TRY(u64(o, "flotilla_hellos_refused_total", "counter",
            "Hellos refused (not enrolled, bad signature, version).",
            m->hellos_refused));
    TRY(head(o, "flotilla_dropouts_total", "counter",
             "Selected devices lost, by the phase they were lost in."));
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++)
        TRY(fl_buf_printf(o,
                          "flotilla_dropouts_total{phase=\"%s\"} %" PRIu64 "\n",
                          phase_names[p], m->dropouts[p]));
    TRY(head(o, "flotilla_secagg_left_out_total", "counter",
             "Devices secure aggregation left out of a phase, too few of "
             "their neighbours still taking part (each is sent an Abort)."));
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++)
        TRY(fl_buf_printf(o,
                          "flotilla_secagg_left_out_total{phase=\"%s\"} "
                          "%" PRIu64 "\n",
                          phase_names[p], m->left_out[p]));
    TRY(head(o, "flotilla_phase_duration_seconds", "summary",
             "Wall time of each round phase."));
    for (int p = 0; p < FL_SERVER_PHASE_COUNT; p++) {
        TRY(fl_buf_printf(o,
                          "flotilla_phase_duration_seconds_sum{phase=\"%s\"} "
                          "%.9g\n",
                          phase_names[p], m->phase_seconds[p]));
        TRY(fl_buf_printf(o,
                          "flotilla_phase_duration_seconds_count{phase=\"%s\"}"
                          " %" PRIu64 "\n",
                          phase_names[p], m->phase_count[p]));
    }
    TRY(dbl(o, "flotilla_epsilon", "Privacy spent so far (epsilon).",
            m->epsilon));
    TRY(dbl(o, "flotilla_epsilon_budget",
            "Configured epsilon budget (0 = none).", m->epsilon_budget));
    TRY(u64(o, "flotilla_budget_spent", "gauge",
            "1 when the privacy budget has stopped training.",
            (uint64_t)(m->budget_spent != 0)));
    TRY(u64(o, "flotilla_training_reports_total", "counter",
            "Training reports received from devices.", m->training_reports));
    TRY(u64(o, "flotilla_training_examples_total", "counter",
            "Examples devices reported training on.", m->training_examples));
    TRY(dbl(o, "flotilla_round_loss_before",
            "Mean local loss before training, last round with reports.",
            m->loss_before));
    TRY(dbl(o, "flotilla_round_loss_after",
            "Mean local loss after training, last round with reports.",
            m->loss_after));
#undef TRY
    return rc;
}
