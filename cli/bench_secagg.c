/*
 * cli/bench_secagg.c — flotilla bench secagg: one whole secure-aggregation
 * round in one process, virtual clients and real cryptography, no network.
 *
 * The dropped clients leave after sharing keys and before sending their
 * input, the worst case for the server (it must rebuild their pairwise
 * masks). Client time is measured per client (all four phases of one
 * client) and averaged over the survivors; the clients run one after the
 * other, so the wall time of the run is about n times that. Inputs are
 * generated per client on the fly and summed into a check vector, so the
 * bench itself stays O(d) in memory like the server. Times are the thread's
 * CPU time (the machine is shared); wall_s is the whole run.
 */
#include "cli/cli.h"
#include "common/bitpack.h"
#include "proto/proto.h"
#include "secagg/secagg.h"

#include <jansson.h>
#include <pthread.h>
#include <math.h>
#include <sodium.h>
#include <stddef.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    int64_t clients;
    int64_t dim;
    double dropout;
    int graph; /* 0 full, 1 harary */
    int64_t bits;
    int prg; /* 0 aes, 1 chacha20 */
    double corrupt;
    int64_t seed;
    int64_t threads;
    int json;
} bench_opts_t;

static const fl_cfg_opt_t bench_opts[] = {
    {"clients", FL_CFG_INT, offsetof(bench_opts_t, clients), "500", 3,
     FL_SECAGG_MAX_CLIENTS, NULL, NULL, "cohort size n"},
    {"dim", FL_CFG_INT, offsetof(bench_opts_t, dim), "100000", 1,
     FL_SECAGG_MAX_DIM, NULL, NULL, "vector length d"},
    {"dropout", FL_CFG_DOUBLE, offsetof(bench_opts_t, dropout), "0.1", 0, 0.5,
     NULL, NULL, "fraction leaving after key sharing"},
    {"graph", FL_CFG_ENUM, offsetof(bench_opts_t, graph), "harary", 1, 0,
     "full|harary", NULL, "neighbour graph"},
    {"bits", FL_CFG_INT, offsetof(bench_opts_t, bits), "24", 1, 32, NULL, NULL,
     "ring bits r"},
    {"prg", FL_CFG_ENUM, offsetof(bench_opts_t, prg), "aes", 1, 0,
     "aes|chacha20", NULL, "mask generator"},
    {"corrupt", FL_CFG_DOUBLE, offsetof(bench_opts_t, corrupt), "0.05", 0, 0.5,
     NULL, NULL, "corrupt fraction for the parameter finder"},
    {"seed", FL_CFG_INT, offsetof(bench_opts_t, seed), "1", 0, 1e15, NULL, NULL,
     "seed of the inputs and the dropouts"},
    {"threads", FL_CFG_INT, offsetof(bench_opts_t, threads), "1", 1,
     FL_SECAGG_MAX_PARTS, NULL, NULL,
     "threads for the unmasking (its parts run on worker threads)"},
    {"json", FL_CFG_BOOL, offsetof(bench_opts_t, json), "0", 1, 0, NULL, NULL,
     "print JSON (always on; accepted for uniformity)"},
};

static const fl_cfg_table_t bench_table = {bench_opts, FL_ARRAY_LEN(bench_opts),
                                           "bench-secagg"};

/* Bytes of the frame that would carry m: 4-byte header + Envelope. */
static size_t frame_bytes(Flotilla__Envelope__BodyCase body, void *m)
{
    Flotilla__Envelope env = FLOTILLA__ENVELOPE__INIT;
    env.protocol_version = FL_PROTOCOL_VERSION;
    env.body_case = body;
    switch (body) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        env.advertise_keys = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST:
        env.share_keys_request = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        env.share_keys_response = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST:
        env.masked_input_request = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        env.masked_input_response = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST:
        env.unmasking_request = m;
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        env.unmasking_response = m;
        break;
    default:
        return 0;
    }
    return 4 + protobuf_c_message_get_packed_size(&env.base);
}

static void fill_input(uint32_t *x, size_t d, unsigned b, uint64_t seed)
{
    fl_rng_t rng;
    fl_rng_seed(&rng, seed);
    for (size_t j = 0; j < d; j++) /* b-bit values, lifted into the ring */
        x[j] = (uint32_t)(fl_rng_next(&rng) & ((1ull << b) - 1));
}

/* CPU time of this thread: the machine is shared, and wall time would
 * count the other processes' turns on the core. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct {
    fl_secagg_server_t *srv;
    unsigned part, nparts;
    int stage; /* 0 derive, 1 unmask */
    int rc;
} part_t;

static void *part_main(void *arg)
{
    part_t *p = arg;
    p->rc = p->stage == 0
                ? fl_secagg_server_derive_part(p->srv, p->part, p->nparts)
                : fl_secagg_server_unmask_part(p->srv, p->part, p->nparts);
    return NULL;
}

/* The unmasking on K threads, as the server runs it on its pool. */
static int unmask_threads(fl_secagg_server_t *srv, unsigned K)
{
    pthread_t th[FL_SECAGG_MAX_PARTS];
    part_t parts[FL_SECAGG_MAX_PARTS];
    for (int stage = 0; stage < 2; stage++) {
        unsigned started = 0;
        int rc = 0;
        for (unsigned k = 0; k < K; k++) {
            parts[k] = (part_t){srv, k, K, stage, 0};
            if (pthread_create(&th[k], NULL, part_main, &parts[k]) != 0) {
                rc = FL_EINTERNAL;
                break;
            }
            started++;
        }
        for (unsigned k = 0; k < started; k++) {
            pthread_join(th[k], NULL);
            if (rc == 0)
                rc = parts[k].rc;
        }
        if (rc != 0)
            return rc;
    }
    return fl_secagg_server_unmask_finish(srv);
}

#define T0()    uint64_t t0_ = cpu_ns()
#define TADD(v) (v) += cpu_ns() - t0_

static int run(const bench_opts_t *o, json_t **out)
{
    uint32_t n = (uint32_t)o->clients;
    size_t d = (size_t)o->dim;
    unsigned r = (unsigned)o->bits;
    int rc = 0;
    fl_secagg_params_t par;
    Flotilla__SecAggConfig cfg = FLOTILLA__SEC_AGG_CONFIG__INIT;
    fl_secagg_round_t round = {0};
    fl_secagg_server_t *srv = NULL;
    fl_secagg_client_t **cl = NULL;
    uint32_t *ids = NULL, *x = NULL, *expect = NULL, *sum = NULL;
    uint8_t(*idpk)[32] = NULL, (*idsk)[64] = NULL;
    uint8_t *dropped = NULL;
    uint64_t *cns = NULL; /* per-client ns */
    uint64_t *up = NULL, *down = NULL;
    uint64_t srv_ns = 0, unmask_ns = 0, close_unmask_ns = 0;

    uint64_t wall0 = fl_time_mono_ns();
    if (sodium_init() < 0)
        return FL_ECRYPTO;
    /* b: the quantization width this ring carries (DESIGN.md section 4) */
    int logn = (int)ceil(log2((double)n));
    int b = (int)r - logn - 1;
    if (b < 1)
        b = 1;
    if (o->graph == 1) {
        rc = fl_secagg_params_harary(n, o->corrupt, o->dropout, &par);
        if (rc != 0)
            return rc;
    } else {
        par.graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
        par.degree = n - 1;
        par.threshold = FL_MAX(2u, (n - 1) / 2 + 1);
    }
    ids = fl_calloc(n, sizeof *ids);
    idpk = fl_calloc(n, 32);
    idsk = fl_calloc(n, 64);
    cl = fl_calloc(n, sizeof *cl);
    dropped = fl_calloc(n, 1);
    cns = fl_calloc(n, sizeof *cns);
    up = fl_calloc(n, sizeof *up);
    down = fl_calloc(n, sizeof *down);
    x = fl_aligned_alloc(64, d * sizeof *x);
    expect = fl_aligned_alloc(64, d * sizeof *expect);
    sum = fl_aligned_alloc(64, d * sizeof *sum);
    if (!ids || !idpk || !idsk || !cl || !dropped || !cns || !up || !down ||
        !x || !expect || !sum) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = i + 1;
        crypto_sign_keypair(idpk[i], idsk[i]);
    }
    /* the dropped set: a random fraction, by a seeded shuffle */
    {
        fl_rng_t rng;
        fl_rng_seed(&rng, (uint64_t)o->seed);
        uint32_t ndrop = (uint32_t)floor(o->dropout * n + 0.5);
        uint32_t *perm = fl_calloc(n, sizeof *perm);
        if (perm == NULL) {
            rc = FL_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < n; i++)
            perm[i] = i;
        for (uint32_t i = n - 1; i > 0; i--) {
            uint32_t j = (uint32_t)fl_rng_below(&rng, i + 1), tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
        for (uint32_t i = 0; i < ndrop; i++)
            dropped[perm[i]] = 1;
        fl_free(perm);
    }
    cfg.enabled = 1;
    cfg.threshold = par.threshold;
    cfg.degree = par.degree;
    cfg.ring_bits = r;
    cfg.prg = o->prg ? FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20
                     : FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR;
    cfg.graph = par.graph;
    randombytes_buf(&cfg.graph_seed, sizeof cfg.graph_seed);
    cfg.n_participants = n;
    cfg.participants = ids;
    round.round = 1;
    randombytes_buf(round.round_nonce, sizeof round.round_nonce);
    round.dim = d;
    round.config = &cfg;

    {
        T0();
        rc = fl_secagg_server_new(&round, (const uint8_t(*)[32])idpk, &srv);
        TADD(srv_ns);
    }
    if (rc != 0)
        goto out;
    for (uint32_t i = 0; i < n; i++)
        if ((rc = fl_secagg_client_new(&round, ids[i], idsk[i], &cl[i])) != 0)
            goto out;

    /* 0: advertise */
    for (uint32_t i = 0; i < n; i++) {
        Flotilla__AdvertiseKeys *m = NULL;
        {
            T0();
            rc = fl_secagg_client_advertise(cl[i], &m);
            TADD(cns[i]);
        }
        if (rc != 0)
            goto out;
        up[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS, m);
        {
            T0();
            rc = fl_secagg_server_handle_advertise(srv, ids[i], m);
            TADD(srv_ns);
        }
        fl_secagg_msg_free(m);
        if (rc != 0)
            goto out;
    }
    {
        T0();
        rc = fl_secagg_server_advertise_close(srv);
        TADD(srv_ns);
    }
    if (rc != 0)
        goto out;

    /* 1: share keys */
    for (uint32_t i = 0; i < n; i++) {
        Flotilla__ShareKeysRequest *q = NULL;
        Flotilla__ShareKeysResponse *m = NULL;
        {
            T0();
            rc = fl_secagg_server_share_keys_request(srv, ids[i], &q);
            TADD(srv_ns);
        }
        if (rc != 0)
            goto out;
        down[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_REQUEST, q);
        {
            T0();
            rc = fl_secagg_client_share_keys(cl[i], q, &m);
            TADD(cns[i]);
        }
        fl_secagg_msg_free(q);
        if (rc != 0)
            goto out;
        up[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE, m);
        {
            T0();
            rc = fl_secagg_server_handle_share_keys(srv, ids[i], m);
            TADD(srv_ns);
        }
        fl_secagg_msg_free(m);
        if (rc != 0)
            goto out;
    }
    {
        T0();
        rc = fl_secagg_server_share_keys_close(srv);
        TADD(srv_ns);
    }
    if (rc != 0)
        goto out;

    /* 2: masked input; the dropped clients leave here */
    memset(expect, 0, d * sizeof *expect);
    for (uint32_t i = 0; i < n; i++) {
        if (dropped[i])
            continue;
        Flotilla__MaskedInputRequest *q = NULL;
        Flotilla__MaskedInputResponse *m = NULL;
        {
            T0();
            rc = fl_secagg_server_masked_input_request(srv, ids[i], &q);
            TADD(srv_ns);
        }
        if (rc != 0)
            goto out;
        down[i] +=
            frame_bytes(FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_REQUEST, q);
        fill_input(x, d, (unsigned)b, (uint64_t)o->seed * 7919 + i);
        for (size_t j = 0; j < d; j++)
            expect[j] += x[j];
        {
            T0();
            rc = fl_secagg_client_masked_input(cl[i], q, x, &m);
            TADD(cns[i]);
        }
        fl_secagg_msg_free(q);
        if (rc != 0)
            goto out;
        up[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE, m);
        {
            T0();
            rc = fl_secagg_server_handle_masked_input(srv, ids[i], m);
            TADD(srv_ns);
        }
        fl_secagg_msg_free(m);
        if (rc != 0)
            goto out;
    }
    {
        T0();
        rc = fl_secagg_server_masked_input_close(srv);
        TADD(srv_ns);
    }
    if (rc != 0)
        goto out;

    /* 3: unmasking */
    for (uint32_t i = 0; i < n; i++) {
        if (dropped[i])
            continue;
        Flotilla__UnmaskingRequest *q = NULL;
        Flotilla__UnmaskingResponse *m = NULL;
        {
            T0();
            rc = fl_secagg_server_unmasking_request(srv, ids[i], &q);
            TADD(srv_ns);
        }
        if (rc != 0)
            goto out;
        down[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_UNMASKING_REQUEST, q);
        {
            T0();
            rc = fl_secagg_client_unmask(cl[i], q, &m);
            TADD(cns[i]);
        }
        fl_secagg_msg_free(q);
        if (rc != 0)
            goto out;
        up[i] += frame_bytes(FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE, m);
        {
            T0();
            rc = fl_secagg_server_handle_unmasking(srv, ids[i], m);
            TADD(srv_ns);
        }
        fl_secagg_msg_free(m);
        if (rc != 0)
            goto out;
    }
    {
        T0();
        rc = fl_secagg_server_unmasking_close(srv);
        TADD(close_unmask_ns);
    }
    if (rc != 0)
        goto out;
    uint64_t unmask_wall = fl_time_mono_ns();
    if (o->threads <= 1) {
        T0();
        rc = fl_secagg_server_unmask(srv);
        TADD(unmask_ns);
    } else { /* CPU time of all threads */
        uint64_t p0 = process_cpu_ns();
        rc = unmask_threads(srv, (unsigned)o->threads);
        unmask_ns += process_cpu_ns() - p0;
    }
    unmask_wall = fl_time_mono_ns() - unmask_wall;
    if (rc != 0)
        goto out;
    srv_ns += close_unmask_ns + unmask_ns;
    size_t nsurv = 0;
    if ((rc = fl_secagg_server_result(srv, sum, d, NULL, &nsurv)) != 0)
        goto out;
    int ok = 1;
    uint32_t mask = r == 32 ? ~0u : (1u << r) - 1;
    for (size_t j = 0; j < d; j++)
        ok &= sum[j] == (expect[j] & mask);

    double cms = 0, upb = 0, downb = 0;
    for (uint32_t i = 0; i < n; i++)
        if (!dropped[i]) {
            cms += (double)cns[i] / 1e6;
            upb += (double)up[i];
            downb += (double)down[i];
        }
    cms /= (double)nsurv;
    upb /= (double)nsurv;
    downb /= (double)nsurv;
    double plain = ceil((double)d * b / 8.0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double bon_server_ms = 62000, bon_client_ms = 850;
    json_t *j = json_object();
    json_object_set_new(j, "bench", json_string("secagg"));
    json_object_set_new(j, "clients", json_integer(n));
    json_object_set_new(j, "dim", json_integer((json_int_t)d));
    json_object_set_new(j, "dropout", json_real(o->dropout));
    json_object_set_new(j, "survivors", json_integer((json_int_t)nsurv));
    json_object_set_new(j, "graph", json_string(o->graph ? "harary" : "full"));
    json_object_set_new(j, "degree", json_integer(par.degree));
    json_object_set_new(j, "threshold", json_integer(par.threshold));
    json_object_set_new(j, "ring_bits", json_integer(r));
    json_object_set_new(j, "quant_bits", json_integer(b));
    json_object_set_new(j, "prg",
                        json_string(o->prg ? "chacha20" : "aes-256-ctr"));
    json_object_set_new(j, "client_ms", json_real(cms));
    json_object_set_new(j, "server_ms", json_real((double)srv_ns / 1e6));
    json_object_set_new(j, "server_reconstruct_ms",
                        json_real((double)close_unmask_ns / 1e6));
    json_object_set_new(j, "server_unmask_ms",
                        json_real((double)unmask_ns / 1e6));
    json_object_set_new(j, "upload_bytes_per_client", json_real(upb));
    json_object_set_new(j, "download_bytes_per_client", json_real(downb));
    json_object_set_new(j, "plain_bytes", json_real(plain));
    json_object_set_new(j, "expansion_vs_plain", json_real(upb / plain));
    json_object_set_new(j, "peak_rss_mb",
                        json_real((double)ru.ru_maxrss / 1024.0));
    json_object_set_new(j, "sum_ok", json_boolean(ok));
    json_object_set_new(j, "threads", json_integer(o->threads));
    json_object_set_new(j, "server_unmask_wall_ms",
                        json_real((double)unmask_wall / 1e6));
    json_object_set_new(j, "timing", json_string("thread CPU time"));
    json_object_set_new(j, "wall_s",
                        json_real((double)(fl_time_mono_ns() - wall0) / 1e9));
    json_t *ref = json_object();
    json_object_set_new(ref, "source",
                        json_string("Bonawitz et al., CCS 2017: n=500, "
                                    "d=100000, 10% dropout"));
    json_object_set_new(ref, "server_ms", json_real(bon_server_ms));
    json_object_set_new(ref, "client_ms", json_real(bon_client_ms));
    json_object_set_new(j, "bonawitz2017", ref);
    json_object_set_new(j, "server_speedup_vs_bonawitz",
                        json_real(bon_server_ms / ((double)srv_ns / 1e6)));
    json_object_set_new(j, "client_speedup_vs_bonawitz",
                        json_real(bon_client_ms / cms));
    *out = j;
    if (!ok)
        rc = FL_EINTERNAL;
out:
    if (cl != NULL)
        for (uint32_t i = 0; i < n; i++)
            fl_secagg_client_free(cl[i]);
    fl_secagg_server_free(srv);
    fl_free(cl);
    fl_free(ids);
    fl_free(idpk);
    if (idsk != NULL) {
        sodium_memzero(idsk, (size_t)n * 64);
        fl_free(idsk);
    }
    fl_free(dropped);
    fl_free(cns);
    fl_free(up);
    fl_free(down);
    fl_free(x);
    fl_free(expect);
    fl_free(sum);
    return rc;
}

int fl_bench_secagg(int argc, char **argv)
{
    bench_opts_t o;
    int rest = 0;
    int prc = fl_cli_parse(
        "bench secagg",
        "bench secagg [--clients N] [--dim D] [--dropout P] "
        "[--graph full|harary] [--bits R] [--prg aes|chacha20] [--threads K] "
        "--json",
        &bench_table, &o, argc, argv, &rest);
    if (prc >= 0)
        return prc;
    json_t *j = NULL;
    int rc = run(&o, &j);
    fl_cfg_free(&bench_table, &o);
    if (j != NULL) {
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
        fputc('\n', stdout);
        json_decref(j);
    }
    if (rc != 0) {
        fl_cli_error("bench secagg", "%s", fl_strerror(rc));
        return FL_EXIT_FAIL;
    }
    return FL_EXIT_OK;
}
