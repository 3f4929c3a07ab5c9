/* server/config.c — the option table of `flotilla server` and the checks
 * that span several options. */
#include "server/server.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define OFF(f) offsetof(fl_server_config_t, f)
#define NOB    1, 0 /* no bounds */

static int validate_port(const void *field, char *why, size_t whylen)
{
    int64_t v;
    memcpy(&v, field, sizeof v);
    if (v < 0 || v > 65535) {
        snprintf(why, whylen, "%lld is not a port (0..65535)", (long long)v);
        return FL_ERANGE;
    }
    return 0;
}

static int validate_server_name(const void *field, char *why, size_t whylen)
{
    const char *v;
    memcpy(&v, field, sizeof v);
    if (v && strlen(v) > 255) {
        snprintf(why, whylen, "at most 255 bytes");
        return FL_ERANGE;
    }
    return 0;
}

static int validate_delta(const void *field, char *why, size_t whylen)
{
    double v;
    memcpy(&v, field, sizeof v);
    if (!(v > 0 && v < 1)) {
        snprintf(why, whylen, "delta must be in (0, 1)");
        return FL_ERANGE;
    }
    return 0;
}

/* The table. Names are the long flags and the INI keys. */
static const fl_cfg_opt_t server_opts[] = {
    /* network */
    {"listen", FL_CFG_STRING, OFF(listen), "0.0.0.0", NOB, NULL, NULL,
     "address devices connect to"},
    {"port", FL_CFG_INT, OFF(port), "7443", NOB, NULL, validate_port,
     "device port (0 = any free port)"},
    {"transport", FL_CFG_ENUM, OFF(transport), "tls", NOB, "tls|tcp", NULL,
     "tls (TLS 1.3) or tcp (plain, for tests and the simulator only)"},
    {"tls-cert", FL_CFG_STRING, OFF(tls_cert), NULL, NOB, NULL, NULL,
     "server certificate chain (PEM)"},
    {"tls-key", FL_CFG_STRING, OFF(tls_key), NULL, NOB, NULL, NULL,
     "server private key (PEM)"},
    {"tls-ca", FL_CFG_STRING, OFF(tls_ca), NULL, NOB, NULL, NULL,
     "CA bundle that signs device certificates (PEM), for --mtls"},
    {"mtls", FL_CFG_BOOL, OFF(mtls), "false", NOB, NULL, NULL,
     "require a client certificate signed by --tls-ca"},
    {"server-name", FL_CFG_STRING, OFF(server_name), "flotilla", NOB, NULL,
     validate_server_name, "name sent to devices in the server hello"},
    {"idle-timeout-ms", FL_CFG_INT, OFF(idle_timeout_ms), "120000", 1000,
     86400000, NULL, NULL, "close a connection silent for this long"},
    {"hello-timeout-ms", FL_CFG_INT, OFF(hello_timeout_ms), "10000", 100,
     600000, NULL, NULL,
     "close a connection whose hello is not accepted within this long of "
     "its TLS handshake (until then its frames are limited to 4 KiB)"},
    {"max-frame", FL_CFG_INT, OFF(max_frame), "67108864", 1024, 1073741824,
     NULL, NULL, "largest frame accepted from a device, bytes"},
    {"max-connections", FL_CFG_INT, OFF(max_connections), "10000", 1, 1000000,
     NULL, NULL, "connections held at once"},
    {"max-handshakes", FL_CFG_INT, OFF(max_handshakes), "256", 1, 100000, NULL,
     NULL, "TLS handshakes in progress at once"},
    {"max-handshakes-per-source", FL_CFG_INT, OFF(max_handshakes_per_source),
     "16", 0, 100000, NULL, NULL,
     "TLS handshakes in progress from one IPv4 address or IPv6 /64 "
     "(0 = no limit)"},
    {"chunk-size", FL_CFG_INT, OFF(chunk_size), "1048576", 1024, 16777216, NULL,
     NULL, "largest model chunk served per request, bytes"},
    /* files */
    {"state", FL_CFG_STRING, OFF(state_dir), NULL, NOB, NULL, NULL,
     "state directory: round, accountant, enrolment, model versions"},
    {"signing-key", FL_CFG_STRING, OFF(signing_key), NULL, NOB, NULL, NULL,
     "Ed25519 secret key that signs model versions"},
    {"enrol-file", FL_CFG_STRING, OFF(enrol_file), NULL, NOB, NULL, NULL,
     "allow-list of device keys (default <state>/enrolled)"},
    {"init-model", FL_CFG_STRING, OFF(init_model), NULL, NOB, NULL, NULL,
     "model file published as version 1 when none exists yet"},
    /* metrics */
    {"metrics", FL_CFG_BOOL, OFF(metrics), "true", NOB, NULL, NULL,
     "serve GET /metrics and GET /healthz"},
    {"metrics-listen", FL_CFG_STRING, OFF(metrics_listen), "127.0.0.1", NOB,
     NULL, NULL, "address of the metrics endpoint"},
    {"metrics-port", FL_CFG_INT, OFF(metrics_port), "9464", NOB, NULL,
     validate_port, "port of the metrics endpoint (0 = any free port)"},
    /* rounds */
    {"cohort", FL_CFG_INT, OFF(cohort), "10", 1, 100000, NULL, NULL,
     "expected cohort size; the fixed denominator of the mean"},
    {"over-selection", FL_CFG_DOUBLE, OFF(over_selection), "1.3", 1.0, 10.0,
     NULL, NULL, "invite ceil(cohort x over-selection) devices"},
    {"min-clients", FL_CFG_INT, OFF(min_clients), "3", 1, 100000, NULL, NULL,
     "abort a round when fewer devices survive"},
    {"population", FL_CFG_INT, OFF(population), "0", 0, 1e12, NULL, NULL,
     "devices sampled from: the accountant's q is invitees / population (0 = "
     "the enrolled count)"},
    {"rounds", FL_CFG_INT, OFF(rounds), "0", 0, 1e12, NULL, NULL,
     "stop after this many completed rounds (0 = run until stopped)"},
    {"round-interval-ms", FL_CFG_INT, OFF(round_interval_ms), "10000", 0,
     86400000, NULL, NULL, "pause between rounds"},
    {"accept-ms", FL_CFG_INT, OFF(accept_ms), "30000", 1, 86400000, NULL, NULL,
     "deadline to accept an invitation"},
    {"train-ms", FL_CFG_INT, OFF(train_ms), "600000", 1, 86400000, NULL, NULL,
     "deadline for local training"},
    {"advertise-ms", FL_CFG_INT, OFF(advertise_ms), "30000", 1, 86400000, NULL,
     NULL, "deadline of the AdvertiseKeys phase"},
    {"share-ms", FL_CFG_INT, OFF(share_ms), "30000", 1, 86400000, NULL, NULL,
     "deadline of the ShareKeys phase"},
    {"masked-input-ms", FL_CFG_INT, OFF(masked_input_ms), "60000", 1, 86400000,
     NULL, NULL, "deadline of the MaskedInput phase, after training"},
    {"unmask-ms", FL_CFG_INT, OFF(unmask_ms), "30000", 1, 86400000, NULL, NULL,
     "deadline of the Unmasking phase"},
    /* differential privacy */
    {"noise-multiplier", FL_CFG_DOUBLE, OFF(noise_multiplier), "1.0", 0, 1e6,
     NULL, NULL, "z: noise standard deviation over the sensitivity"},
    {"clip-norm", FL_CFG_DOUBLE, OFF(clip_norm), "1.0", 1e-9, 1e9, NULL, NULL,
     "S: L2 norm each device clips its delta to"},
    {"epsilon-budget", FL_CFG_DOUBLE, OFF(epsilon_budget), "0", 0, 1e9, NULL,
     NULL, "stop before epsilon would exceed this (0 = no budget)"},
    {"delta", FL_CFG_DOUBLE, OFF(delta), "1e-5", NOB, NULL, validate_delta,
     "delta of the (epsilon, delta) guarantee"},
    {"noise-seed", FL_CFG_INT, OFF(noise_seed), "0", NOB, NULL, NULL,
     "0 = noise from the kernel CSPRNG; other values make the noise "
     "reproducible and are for tests only"},
    /* codec */
    {"quant-bits", FL_CFG_INT, OFF(quant_bits), "8", 0, 16, NULL, NULL,
     "b: bits per quantized value (0 = fp32, secure aggregation off only)"},
    {"support", FL_CFG_ENUM, OFF(support), "dense", NOB, "dense|random-k|top-k",
     NULL,
     "coordinates sent: all, a seeded random k shared by the round, or "
     "per-client top-k (secure aggregation off only)"},
    {"support-size", FL_CFG_INT, OFF(support_size), "0", 0, 1e12, NULL, NULL,
     "k (0 = every coordinate)"},
    {"rotate", FL_CFG_BOOL, OFF(rotate), "false", NOB, NULL, NULL,
     "randomized Hadamard rotation before quantizing"},
    {"error-feedback", FL_CFG_BOOL, OFF(error_feedback), "true", NOB, NULL,
     NULL, "devices keep what was not sent for the next round"},
    {"ring-bits", FL_CFG_INT, OFF(ring_bits), "0", 0, 32, NULL, NULL,
     "r (0 = b + ceil(log2 invitees) + 1)"},
    /* secure aggregation */
    {"secagg", FL_CFG_BOOL, OFF(secagg), "true", NOB, NULL, NULL,
     "secure aggregation (off only for experiments)"},
    {"graph", FL_CFG_ENUM, OFF(graph), "complete", NOB, "complete|harary", NULL,
     "masking graph: complete (Bonawitz) or Harary (SecAgg+)"},
    {"degree", FL_CFG_INT, OFF(degree), "0", 0, 100000, NULL, NULL,
     "neighbours per device in a Harary graph (0 = automatic)"},
    {"threshold", FL_CFG_INT, OFF(threshold), "0", 0, 100000, NULL, NULL,
     "t: neighbours' shares needed to unmask a client (0 = a majority of its "
     "neighbours)"},
    {"secagg-corrupt", FL_CFG_DOUBLE, OFF(secagg_corrupt), "0.05", 0, 0.49,
     NULL, NULL,
     "Harary graph with degree 0: fraction of devices assumed corrupt when "
     "choosing degree and threshold"},
    {"secagg-dropout", FL_CFG_DOUBLE, OFF(secagg_dropout), "0.2", 0, 0.85, NULL,
     NULL, "Harary graph with degree 0: fraction of invitees expected to drop"},
    {"prg", FL_CFG_ENUM, OFF(prg), "aes256-ctr", NOB, "aes256-ctr|chacha20",
     NULL, "mask generator"},
    /* local training */
    {"local-steps", FL_CFG_INT, OFF(local_steps), "20", 1, 1000000, NULL, NULL,
     "optimizer steps per device per round"},
    {"batch-size", FL_CFG_INT, OFF(batch_size), "8", 1, 65536, NULL, NULL,
     "windows per step"},
    {"seq-len", FL_CFG_INT, OFF(seq_len), "128", 1, 65536, NULL, NULL,
     "tokens per window"},
    {"client-lr", FL_CFG_DOUBLE, OFF(client_lr), "1e-3", 0, 10, NULL, NULL,
     "device learning rate"},
    {"client-optimizer", FL_CFG_ENUM, OFF(client_optimizer), "adamw", NOB,
     "adamw|sgd", NULL, "device optimizer"},
    {"weight-decay", FL_CFG_DOUBLE, OFF(weight_decay), "0", 0, 10, NULL, NULL,
     "device weight decay"},
    {"momentum", FL_CFG_DOUBLE, OFF(momentum), "0", 0, 1, NULL, NULL,
     "device SGD momentum"},
    {"grad-clip", FL_CFG_DOUBLE, OFF(grad_clip), "1.0", 0, 1e9, NULL, NULL,
     "device per-step gradient-norm clip (0 = off)"},
    /* server optimizer */
    {"server-optimizer", FL_CFG_ENUM, OFF(server_optimizer), "fedavg", NOB,
     "fedavg|fedadam|fedyogi", NULL, "how the mean update is applied"},
    {"server-lr", FL_CFG_DOUBLE, OFF(server_lr), "0", 0, 1e3, NULL, NULL,
     "server learning rate (0 = the optimizer's default: 1 for FedAvg, "
     "0.01 for FedAdam and FedYogi)"},
    {"server-momentum", FL_CFG_DOUBLE, OFF(server_momentum), "0", 0, 0.999,
     NULL, NULL, "FedAvg server momentum (0 = plain FedAvg)"},
    {"server-beta1", FL_CFG_DOUBLE, OFF(server_beta1), "0.9", 0, 1, NULL, NULL,
     "FedAdam/FedYogi first-moment decay"},
    {"server-beta2", FL_CFG_DOUBLE, OFF(server_beta2), "0.99", 0, 1, NULL, NULL,
     "FedAdam/FedYogi second-moment decay"},
    {"server-tau", FL_CFG_DOUBLE, OFF(server_tau), "1e-3", 1e-12, 10, NULL,
     NULL, "FedAdam/FedYogi adaptivity"},
    {"keep-versions", FL_CFG_INT, OFF(keep_versions), "5", 2, 100000, NULL,
     NULL, "model versions kept on disk"},
    {"announce", FL_CFG_BOOL, OFF(announce), "true", NOB, NULL, NULL,
     "tell every connected device when a new version is published (else "
     "devices learn of it when invited, from a round result or when they "
     "reconnect)"},
    {"announce-spread-ms", FL_CFG_INT, OFF(announce_spread_ms), "600000", 0,
     3600000, NULL, NULL,
     "spread those announcements evenly over this long, so that the fleet "
     "does not download a new version all at once (0 = all at once)"},
    /* logs */
    {"log-level", FL_CFG_ENUM, OFF(log_level), "info", NOB,
     "debug|info|warn|error", NULL, "least severe level logged"},
    {"log-json", FL_CFG_BOOL, OFF(log_json), "false", NOB, NULL, NULL,
     "one JSON object per log line"},
};

static const fl_cfg_table_t server_table = {
    server_opts, FL_ARRAY_LEN(server_opts), "server"};

const fl_cfg_table_t *fl_server_config_table(void)
{
    return &server_table;
}

int fl_server_config_init(fl_server_config_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    return fl_cfg_defaults(&server_table, c, err, errlen);
}

void fl_server_config_free(fl_server_config_t *c)
{
    fl_cfg_free(&server_table, c);
}

int fl_server_config_copy(fl_server_config_t *dst,
                          const fl_server_config_t *src)
{
    *dst = *src;
    for (size_t i = 0; i < FL_ARRAY_LEN(server_opts); i++) {
        if (server_opts[i].type != FL_CFG_STRING)
            continue;
        char **f = (char **)((char *)dst + server_opts[i].offset);
        if (*f && !(*f = fl_strdup(*f))) {
            for (size_t j = i + 1; j < FL_ARRAY_LEN(server_opts); j++)
                if (server_opts[j].type == FL_CFG_STRING)
                    *(char **)((char *)dst + server_opts[j].offset) = NULL;
            fl_server_config_free(dst);
            return FL_ENOMEM;
        }
    }
    return 0;
}

static unsigned ceil_log2(uint64_t n)
{
    unsigned b = 0;
    while (((uint64_t)1 << b) < n)
        b++;
    return b;
}

uint32_t fl_server_config_invitees(const fl_server_config_t *c)
{
    double n = ceil((double)c->cohort * c->over_selection - 1e-9);
    return n < (double)c->cohort ? (uint32_t)c->cohort : (uint32_t)n;
}

uint32_t fl_server_config_ring_bits(const fl_server_config_t *c)
{
    if (c->ring_bits)
        return (uint32_t)c->ring_bits;
    return (uint32_t)c->quant_bits + ceil_log2(fl_server_config_invitees(c)) +
           1;
}

uint32_t fl_server_config_threshold(const fl_server_config_t *c, uint32_t n)
{
    if (c->threshold)
        return (uint32_t)c->threshold;
    /* Shares are held by a client's neighbours: a majority of them. */
    uint32_t deg = c->graph == FL_SERVER_GRAPH_HARARY && c->degree
                       ? (uint32_t)c->degree
                       : n - 1;
    uint32_t t = deg / 2 + 1;
    return t < 2 ? 2 : t;
}

#define FAIL(...)                                                              \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        return FL_ECONFIG;                                                     \
    } while (0)

int fl_server_config_check(const fl_server_config_t *c, char *err,
                           size_t errlen)
{
    if (!c->state_dir || !c->state_dir[0])
        FAIL("state (the state directory) is required");
    if (c->min_clients > c->cohort)
        FAIL("min-clients (%lld) is larger than cohort (%lld)",
             (long long)c->min_clients, (long long)c->cohort);
    if (c->transport == FL_SERVER_TRANSPORT_TLS &&
        (!c->tls_cert || !c->tls_key))
        FAIL("transport tls needs tls-cert and tls-key");
    if (c->mtls && c->transport != FL_SERVER_TRANSPORT_TLS)
        FAIL("mtls needs transport tls");
    if (c->mtls && !c->tls_ca)
        FAIL("mtls needs tls-ca");
    if (c->secagg && c->support == FL_SERVER_SUPPORT_TOP_K)
        FAIL("support top-k reveals each device's coordinates; it is "
             "allowed only with secagg off");
    if (c->secagg && c->quant_bits == 0)
        FAIL("quant-bits 0 (fp32) is allowed only with secagg off");
    if (c->support == FL_SERVER_SUPPORT_DENSE && c->support_size)
        FAIL("support-size is set but support is dense");
    if (c->support != FL_SERVER_SUPPORT_DENSE && c->support_size == 0)
        FAIL("support %s needs support-size (k)",
             c->support == FL_SERVER_SUPPORT_TOP_K ? "top-k" : "random-k");
    uint32_t n = fl_server_config_invitees(c);
    if (n > 100000)
        FAIL("cohort x over-selection invites %u devices, more than 100000", n);
    if (c->quant_bits) {
        uint32_t need = (uint32_t)c->quant_bits + ceil_log2(n) + 1;
        if (c->ring_bits == 0 && need > 32)
            FAIL("quant-bits %lld with %u invitees needs a %u-bit ring; at "
                 "most 32",
                 (long long)c->quant_bits, n, need);
        if (c->ring_bits && (uint32_t)c->ring_bits < need)
            FAIL("ring-bits %lld cannot hold the sum of %u values of %lld "
                 "bits (needs %u)",
                 (long long)c->ring_bits, n, (long long)c->quant_bits, need);
    }
    if (c->secagg && n < 3)
        FAIL("secure aggregation needs at least 3 invitees (cohort x "
             "over-selection is %u)",
             n);
    if (c->secagg && c->threshold && (uint32_t)c->threshold >= n)
        FAIL("threshold %lld must be below the %u invitees (shares are held "
             "by a client's neighbours)",
             (long long)c->threshold, n);
    if (c->secagg && c->threshold == 1)
        FAIL("threshold 1 would let any single neighbour unmask a client");
    if (c->secagg_corrupt + c->secagg_dropout > 0.9)
        FAIL("secagg-corrupt + secagg-dropout must be at most 0.9");
    if (c->graph == FL_SERVER_GRAPH_HARARY && c->degree &&
        (uint32_t)c->degree >= n)
        FAIL("degree %lld must be below the %u invitees", (long long)c->degree,
             n);
    if (c->metrics && c->metrics_port != 0 && c->port != 0 &&
        c->metrics_port == c->port &&
        strcmp(c->metrics_listen ? c->metrics_listen : "",
               c->listen ? c->listen : "") == 0)
        FAIL("metrics-port and port are the same");
    return 0;
}
