/* server/round.c — the round orchestrator (DESIGN.md §3, docs/PROTOCOL.md
 * §5): selection with over-selection, RoundConfig, phases with deadlines,
 * dropouts, abort below the threshold, the heavy end on the thread pool,
 * RoundResult to the participants, the checkpoint.
 *
 * A state machine on the loop thread. States and what ends them:
 *   IDLE       round timer -> select and invite            -> INVITE
 *   INVITE     every invitee answered, or accept_ms        -> ADVERTISE
 *                                                             (MASKED without
 *                                                             secagg)
 *   ADVERTISE  every survivor advertised, or advertise_ms  -> SHARE
 *   SHARE      every survivor answered, or share_ms        -> MASKED
 *   MASKED     every survivor sent its input, or
 *              train_ms + masked_input_ms                  -> UNMASK (FINISH
 *                                                             without secagg)
 *   UNMASK     every survivor answered, or unmask_ms       -> FINISH
 *   FINISH     the thread-pool job returned                -> IDLE
 * Leaving a phase with fewer survivors than needed aborts the round
 * (Abort + RoundResult{success=false}); the next round is scheduled anyway.
 * The engines are reached only through fl_server_engine_t. */
#include "server/internal.h"

#include <math.h>
#include <sodium.h>
#include <string.h>

enum {
    RS_IDLE = 0,
    RS_INVITE,
    RS_ADVERTISE,
    RS_SHARE,
    RS_MASKED,
    RS_UNMASK,
    RS_FINISH
};

static const int phase_of_state[] = {
    [RS_IDLE] = -1,
    [RS_INVITE] = FL_SERVER_PHASE_INVITE,
    [RS_ADVERTISE] = FL_SERVER_PHASE_ADVERTISE,
    [RS_SHARE] = FL_SERVER_PHASE_SHARE,
    [RS_MASKED] = FL_SERVER_PHASE_MASKED_INPUT,
    [RS_UNMASK] = FL_SERVER_PHASE_UNMASK,
    [RS_FINISH] = FL_SERVER_PHASE_FINISH,
};

typedef struct {
    fl_server_peer_t *peer; /* NULL once the client dropped */
    uint32_t id;            /* 1..n, the round-local id */
    int answered;           /* answered in the current phase */
    int early; /* already answered the phase after the invitation: its
                  first message may follow its acceptance at once */
    int accepted;
    int in_sum;   /* its input is in the accumulator */
    int reported; /* sent its TrainingReport */
} participant_t;

struct fl_server_round {
    fl_server_t *s;
    int state;
    uint64_t round;
    uint8_t nonce[32];
    participant_t *parts;
    uint32_t n;          /* invited */
    uint32_t threshold;  /* survivors needed to go on (min-clients); the
                            secagg threshold t is the engine's to enforce */
    uint32_t sa_t, sa_k; /* secagg t and degree as the engine fixed them */
    uint64_t num_values;
    void *ectx; /* the engine's round context */
    uv_timer_t deadline;
    int timer_init;
    double phase_start;
    int shutting_down;
    int warned_waiting; /* "rounds wait" logged once */
    double loss_sum[2]; /* TrainingReports of this round: before, after */
    uint32_t nreports;
    int busy; /* inside a loop over participants: dropouts only counted */
    uv_work_t work;
    fl_server_finish_t fin;
    int fin_rc;
    /* The parallel stages before finish (engine->parallel). */
    struct part_work {
        uv_work_t w;
        fl_server_round_t *r;
        unsigned part;
        int rc;
    } pw[FL_SERVER_PARALLEL_PARTS];
    unsigned stage, pending;
};

static void deadline_cb(uv_timer_t *t);

int fl_server_round_new(fl_server_t *s, fl_server_round_t **out)
{
    fl_server_round_t *r = fl_calloc(1, sizeof *r);
    if (!r)
        return FL_ENOMEM;
    r->s = s;
    *out = r;
    return 0;
}

/* The deadline timer is closed by fl_server_round_shutdown, which
 * fl_server_stop calls before the loop runs out. */
void fl_server_round_free(fl_server_round_t *r)
{
    if (!r)
        return;
    FL_ASSERT(!r->timer_init || uv_is_closing((uv_handle_t *)&r->deadline));
    if (r->ectx && r->s->engine->end)
        r->s->engine->end(r->ectx);
    fl_free(r->parts);
    fl_free(r);
}

static void close_timer(fl_server_round_t *r)
{
    if (r->timer_init && !uv_is_closing((uv_handle_t *)&r->deadline)) {
        uv_timer_stop(&r->deadline);
        uv_close((uv_handle_t *)&r->deadline, NULL);
    }
}

static void arm_deadline(fl_server_round_t *r, uint64_t ms)
{
    if (!r->timer_init) {
        uv_timer_init(r->s->loop, &r->deadline);
        r->deadline.data = r;
        r->timer_init = 1;
    }
    uv_timer_start(&r->deadline, deadline_cb, ms, 0);
}

static void schedule_next(fl_server_round_t *r, uint64_t ms)
{
    fl_server_schedule_round(r->s, ms);
}

static uint32_t alive(const fl_server_round_t *r)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++)
        k += r->parts[i].peer != NULL;
    return k;
}

/* Every participant still there has answered in this phase. */
static int all_answered(const fl_server_round_t *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        if (r->parts[i].peer && !r->parts[i].answered)
            return 0;
    return 1;
}

static void enter(fl_server_round_t *r, int state)
{
    fl_server_metrics_t *m = &r->s->metrics;
    double now = fl_time_mono_s();
    int ph = phase_of_state[r->state];
    if (ph >= 0) {
        m->phase_seconds[ph] += now - r->phase_start;
        m->phase_count[ph]++;
    }
    r->state = state;
    r->phase_start = now;
    for (uint32_t i = 0; i < r->n; i++) {
        r->parts[i].answered = r->parts[i].early;
        r->parts[i].early = 0;
    }
}

/* Detaches p from the round without counting a dropout. */
static void release(fl_server_round_t *r, participant_t *pt)
{
    if (pt->peer)
        pt->peer->round_slot = 0;
    pt->peer = NULL;
}

static void drop(fl_server_round_t *r, participant_t *pt)
{
    int ph = phase_of_state[r->state];
    if (ph >= 0)
        r->s->metrics.dropouts[ph]++;
    release(r, pt);
}

static void send_result(fl_server_round_t *r, participant_t *pt, int success,
                        uint32_t survivors)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__RoundResult rr = FLOTILLA__ROUND_RESULT__INIT;
    rr.round = r->round;
    rr.success = success;
    rr.new_model_version = r->s->state.model_version;
    rr.survivors = survivors;
    rr.epsilon = r->s->state.epsilon;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_RESULT;
    e.round_result = &rr;
    if (success)
        pt->peer->told_version = rr.new_model_version;
    fl_server_peer_send(pt->peer, &e);
}

static void send_abort(fl_server_round_t *r, participant_t *pt, int reason,
                       const char *why)
{
    Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
    Flotilla__Abort a = FLOTILLA__ABORT__INIT;
    a.round = r->round;
    a.reason = (Flotilla__AbortReason)reason;
    a.message = (char *)why;
    e.body_case = FLOTILLA__ENVELOPE__BODY_ABORT;
    e.abort = &a;
    fl_server_peer_send(pt->peer, &e);
}

static void round_end(fl_server_round_t *r)
{
    if (r->nreports) {
        r->s->metrics.loss_before = r->loss_sum[0] / r->nreports;
        r->s->metrics.loss_after = r->loss_sum[1] / r->nreports;
    }
    r->nreports = 0;
    r->loss_sum[0] = r->loss_sum[1] = 0;
    if (r->ectx && r->s->engine->end)
        r->s->engine->end(r->ectx);
    r->ectx = NULL;
    for (uint32_t i = 0; i < r->n; i++)
        release(r, &r->parts[i]);
    fl_free(r->parts);
    r->parts = NULL;
    r->n = 0;
    if (r->timer_init)
        uv_timer_stop(&r->deadline);
    enter(r, RS_IDLE);
}

static void abort_round(fl_server_round_t *r, int reason, const char *why)
{
    fl_server_t *s = r->s;
    r->busy++;
    FL_WARN("round %llu aborted: %s", (unsigned long long)r->round, why);
    for (uint32_t i = 0; i < r->n; i++) {
        participant_t *pt = &r->parts[i];
        if (!pt->peer)
            continue;
        send_abort(r, pt, reason, why);
        if (pt->peer)
            send_result(r, pt, 0, 0);
    }
    /* Round numbers are never reused, aborted or not. */
    s->state.round = r->round;
    s->state.rounds_aborted++;
    s->metrics.rounds_aborted = s->state.rounds_aborted;
    int rc = fl_server_state_save(s->cfg.state_dir, &s->state);
    if (rc < 0)
        FL_ERROR("saving the state after round %llu: %s",
                 (unsigned long long)r->round, fl_strerror(rc));
    r->busy--;
    round_end(r);
    schedule_next(r, (uint64_t)s->cfg.round_interval_ms);
}

/* ---- starting a round ---------------------------------------------------- */

static void fill_config(const fl_server_round_t *r, Flotilla__RoundConfig *rc,
                        Flotilla__TrainingConfig *tc, Flotilla__CodecConfig *cc,
                        Flotilla__SecAggConfig *sc, Flotilla__Deadlines *dl,
                        uint32_t *ids, uint64_t seeds[5])
{
    const fl_server_t *s = r->s;
    const fl_server_config_t *c = &s->cfg;
    uint32_t ring = fl_server_config_ring_bits(c);
    rc->round = r->round;
    rc->round_nonce.data = (uint8_t *)r->nonce;
    rc->round_nonce.len = sizeof r->nonce;
    rc->model_version = s->state.model_version;
    rc->model_hash.data = (uint8_t *)s->state.model_hash;
    rc->model_hash.len = sizeof s->state.model_hash;
    rc->num_params = s->num_params;
    rc->expected_cohort = (uint32_t)c->cohort;

    tc->local_steps = (uint32_t)c->local_steps;
    tc->batch_size = (uint32_t)c->batch_size;
    tc->seq_len = (uint32_t)c->seq_len;
    tc->learning_rate = (float)c->client_lr;
    tc->optimizer = c->client_optimizer == FL_SERVER_CLIENT_SGD
                        ? FLOTILLA__OPTIMIZER__OPTIMIZER_SGD
                        : FLOTILLA__OPTIMIZER__OPTIMIZER_ADAMW;
    tc->weight_decay = (float)c->weight_decay;
    tc->momentum = (float)c->momentum;
    tc->grad_clip = (float)c->grad_clip;
    tc->seed = seeds[0];
    rc->training = tc;

    cc->support = c->support == FL_SERVER_SUPPORT_DENSE
                      ? FLOTILLA__SUPPORT_KIND__SUPPORT_DENSE
                  : c->support == FL_SERVER_SUPPORT_TOP_K
                      ? FLOTILLA__SUPPORT_KIND__SUPPORT_TOP_K
                      : FLOTILLA__SUPPORT_KIND__SUPPORT_RANDOM_K;
    cc->support_seed = seeds[1];
    cc->support_size = (uint64_t)c->support_size;
    cc->quant_bits = (uint32_t)c->quant_bits;
    cc->rotate = c->rotate;
    cc->rotation_seed = seeds[2];
    cc->clip_norm = (float)c->clip_norm;
    cc->ring_bits = c->secagg ? ring : 0;
    cc->error_feedback = c->error_feedback;
    cc->scale = 0; /* derived by the codec from the other fields */
    cc->quant_seed = seeds[3];
    rc->codec = cc;

    sc->enabled = c->secagg;
    sc->threshold = fl_server_config_threshold(c, r->n);
    sc->degree = c->graph == FL_SERVER_GRAPH_COMPLETE || !c->degree
                     ? r->n - 1
                     : (uint32_t)c->degree;
    sc->ring_bits = ring;
    sc->prg = c->prg == FL_SERVER_PRG_CHACHA20
                  ? FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20
                  : FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR;
    sc->graph = c->graph == FL_SERVER_GRAPH_HARARY
                    ? FLOTILLA__GRAPH_KIND__GRAPH_HARARY
                    : FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
    sc->graph_seed = seeds[4];
    for (uint32_t i = 0; i < r->n; i++)
        ids[i] = r->parts[i].id;
    sc->participants = ids;
    sc->n_participants = r->n;
    rc->secagg = sc;

    dl->train_ms = (uint32_t)c->train_ms;
    dl->advertise_ms = (uint32_t)c->advertise_ms;
    dl->share_ms = (uint32_t)c->share_ms;
    dl->masked_input_ms = (uint32_t)c->masked_input_ms;
    dl->unmask_ms = (uint32_t)c->unmask_ms;
    rc->deadlines = dl;
}

/* Eligible: an accepted hello, not closing, not in a round. */
static int eligible(const fl_server_peer_t *p)
{
    return p->hello_ok && !p->closing && !p->round_slot;
}

static uint64_t population(const fl_server_t *s)
{
    return s->cfg.population ? (uint64_t)s->cfg.population
                             : fl_server_enrol_count(s->enrol);
}

void fl_server_round_tick(fl_server_round_t *r)
{
    fl_server_t *s = r->s;
    const fl_server_config_t *c = &s->cfg;
    uint32_t *ids = NULL;
    fl_server_peer_t **pool = NULL;
    if (r->state != RS_IDLE || s->stopping)
        return;
    if (c->rounds && s->state.rounds_completed >= (uint64_t)c->rounds) {
        FL_INFO("%lld rounds completed; stopping", (long long)c->rounds);
        fl_server_stop(s);
        return;
    }
    char why[256] = "";
    if (s->engine->ready &&
        s->engine->ready(s->engine_ctx, why, sizeof why) < 0) {
        if (!r->warned_waiting)
            FL_WARN("rounds cannot run: %s", why);
        r->warned_waiting = 1;
        schedule_next(r, (uint64_t)c->round_interval_ms);
        return;
    }
    if (!s->params) {
        if (!r->warned_waiting)
            FL_WARN("no global model yet (set init-model); waiting");
        r->warned_waiting = 1;
        schedule_next(r, (uint64_t)c->round_interval_ms);
        return;
    }
    if (s->engine->budget && s->engine->budget(s->engine_ctx, c, &s->state,
                                               population(s)) == FL_EBUDGET) {
        FL_WARN("the privacy budget (epsilon %g) allows no further round; "
                "training stops, models are still served",
                c->epsilon_budget);
        s->metrics.budget_spent = 1;
        return; /* no timer: training is over */
    }
    r->warned_waiting = 0;
    /* Candidates, then a uniform random choice of up to the invitees. */
    uint32_t want = fl_server_config_invitees(c), have = 0;
    for (fl_server_peer_t *p = s->peers; p; p = p->next)
        have += eligible(p);
    uint32_t need = (uint32_t)c->min_clients;
    /* Secure aggregation takes 3 participants at least
     * (fl_secagg_config_check): with fewer, wait rather than start a
     * round the engine must refuse. */
    if (c->secagg && need < 3)
        need = 3;
    if (have < need || have == 0) {
        FL_DEBUG("%u devices eligible, %u needed; waiting", have, need);
        schedule_next(r, (uint64_t)c->round_interval_ms);
        return;
    }
    pool = fl_calloc(have, sizeof *pool);
    if (!pool)
        goto retry;
    uint32_t k = 0;
    for (fl_server_peer_t *p = s->peers; p; p = p->next)
        if (eligible(p))
            pool[k++] = p;
    uint32_t n = FL_MIN(want, have);
    for (uint32_t i = 0; i < n; i++) { /* partial Fisher-Yates */
        uint32_t j = i + randombytes_uniform(have - i);
        fl_server_peer_t *t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
    }
    r->parts = fl_calloc(n, sizeof *r->parts);
    ids = fl_calloc(n, sizeof *ids);
    if (!r->parts || !ids)
        goto retry;
    r->n = n;
    r->round = FL_MAX(s->state.round, s->state.round_started) + 1;
    /* Recorded before anything goes out: a round number is never reused,
     * not even after a crash. */
    s->state.round_started = r->round;
    int src = fl_server_state_save(c->state_dir, &s->state);
    if (src < 0) {
        FL_ERROR("saving the state before round %llu: %s",
                 (unsigned long long)r->round, fl_strerror(src));
        goto retry;
    }
    r->threshold = (uint32_t)c->min_clients;
    randombytes_buf(r->nonce, sizeof r->nonce);
    for (uint32_t i = 0; i < n; i++) {
        r->parts[i].peer = pool[i];
        r->parts[i].id = i + 1;
        pool[i]->round_slot = i + 1;
    }
    uint64_t seeds[5];
    randombytes_buf(seeds, sizeof seeds);
    Flotilla__RoundConfig rc = FLOTILLA__ROUND_CONFIG__INIT;
    Flotilla__TrainingConfig tc = FLOTILLA__TRAINING_CONFIG__INIT;
    Flotilla__CodecConfig cc = FLOTILLA__CODEC_CONFIG__INIT;
    Flotilla__SecAggConfig sc = FLOTILLA__SEC_AGG_CONFIG__INIT;
    Flotilla__Deadlines dl = FLOTILLA__DEADLINES__INIT;
    fill_config(r, &rc, &tc, &cc, &sc, &dl, ids, seeds);
    s->metrics.round = r->round;
    enter(r, RS_INVITE);
    int erc = FL_ENOMEM;
    uint8_t(*keys)[32] = fl_calloc(n, sizeof *keys);
    if (keys) {
        for (uint32_t i = 0; i < n; i++)
            memcpy(keys[i], pool[i]->key, 32);
        erc =
            s->engine->begin(s->engine_ctx, &rc, n, (const uint8_t(*)[32])keys,
                             &r->ectx, &r->num_values);
        fl_free(keys);
    }
    if (erc < 0) {
        FL_ERROR("round %llu: the engines refused the round configuration: "
                 "%s",
                 (unsigned long long)r->round, fl_strerror(erc));
        abort_round(r, FLOTILLA__ABORT_REASON__ABORT_INTERNAL,
                    "server engine unavailable");
        goto out;
    }
    r->sa_t = sc.threshold; /* for the log: begin may have changed them */
    r->sa_k = sc.degree;
    FL_INFO("round %llu: inviting %u of %u eligible devices (cohort %lld, "
            "%u survivors needed)",
            (unsigned long long)r->round, n, have, (long long)c->cohort,
            r->threshold);
    r->busy++;
    for (uint32_t i = 0; i < n; i++) {
        Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
        Flotilla__RoundInvite inv = FLOTILLA__ROUND_INVITE__INIT;
        rc.client_id = r->parts[i].id;
        inv.config = &rc;
        e.body_case = FLOTILLA__ENVELOPE__BODY_ROUND_INVITE;
        e.round_invite = &inv;
        if (r->parts[i].peer)
            fl_server_peer_send(r->parts[i].peer, &e);
    }
    r->busy--;
    arm_deadline(r, (uint64_t)c->accept_ms);
    goto out;
retry:
    fl_free(r->parts);
    r->parts = NULL;
    r->n = 0;
    schedule_next(r, (uint64_t)c->round_interval_ms);
out:
    fl_free(pool);
    fl_free(ids);
}

/* ---- phases ---------------------------------------------------------------*/

static void advance(fl_server_round_t *r);

/* Sends each survivor the engine's request for the phase just entered. */
static int send_requests(fl_server_round_t *r)
{
    const fl_server_engine_t *en = r->s->engine;
    int rc = 0, phase = phase_of_state[r->state];
    r->busy++;
    for (uint32_t i = 0; i < r->n; i++) {
        participant_t *pt = &r->parts[i];
        if (!pt->peer)
            continue;
        Flotilla__Envelope e = FLOTILLA__ENVELOPE__INIT;
        rc = en->request ? en->request(r->ectx, phase, pt->id, &e) : FL_ENOTSUP;
        if (rc == FL_ENOENT) { /* the engine counts it as gone */
            /* It answered the last phase: secure aggregation left it out,
             * as it would refuse the request for lack of neighbours. It is
             * told, so that it stops waiting and wipes its round secrets;
             * it is not a dropout. */
            char why[160];
            snprintf(why, sizeof why,
                     "left out of the %s phase: fewer than t = %u of its "
                     "neighbours are still taking part",
                     fl_server_phase_name(phase), r->sa_t);
            FL_INFO("round %llu: client %u is %s", (unsigned long long)r->round,
                    pt->id, why);
            send_abort(r, pt, FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS,
                       why);
            r->s->metrics.left_out[phase]++;
            release(r, pt);
            rc = 0;
            continue;
        }
        if (rc < 0)
            break;
        fl_server_peer_send(pt->peer, &e);
        if (en->request_done)
            en->request_done(r->ectx, &e);
    }
    r->busy--;
    return rc;
}

static void finish_work(uv_work_t *w)
{
    fl_server_round_t *r = w->data;
    r->fin_rc = r->s->engine->finish(r->ectx, &r->fin);
}

static void finish_done(uv_work_t *w, int status)
{
    fl_server_round_t *r = w->data;
    fl_server_t *s = r->s;
    if (status < 0 && r->fin_rc == 0)
        r->fin_rc = FL_EINTERNAL;
    if (r->fin_rc < 0) {
        fl_server_state_clear(&r->fin.state);
        fl_free(r->fin.new_params);
        r->fin.new_params = NULL;
        FL_ERROR("round %llu: %s", (unsigned long long)r->round,
                 r->fin.err[0] ? r->fin.err : fl_strerror(r->fin_rc));
        abort_round(r, FLOTILLA__ABORT_REASON__ABORT_INTERNAL,
                    "the round could not be completed");
    } else {
        /* The job wrote the new state to disk; take it over. */
        fl_server_state_clear(&s->state);
        s->state = r->fin.state;
        fl_server_state_init(&r->fin.state);
        if (r->fin.new_params) {
            fl_free(s->params);
            s->params = r->fin.new_params;
            r->fin.new_params = NULL;
        }
        s->metrics.rounds_completed = s->state.rounds_completed;
        s->metrics.model_version = s->state.model_version;
        s->metrics.epsilon = s->state.epsilon;
        FL_INFO("round %llu completed: %u survivors, model version %llu, "
                "epsilon %.4g",
                (unsigned long long)r->round, r->fin.survivors,
                (unsigned long long)s->state.model_version, s->state.epsilon);
        r->busy++;
        for (uint32_t i = 0; i < r->n; i++)
            if (r->parts[i].peer && r->parts[i].in_sum)
                send_result(r, &r->parts[i], 1, r->fin.survivors);
        r->busy--;
        round_end(r);
        fl_server_announce(s);
        schedule_next(r, (uint64_t)s->cfg.round_interval_ms);
    }
    if (r->shutting_down) {
        close_timer(r);
        fl_server_stop_continue(s);
    }
}

/* Stage k < engine->parallel_stages: FL_SERVER_PARALLEL_PARTS calls of
 * engine->parallel on the thread pool at once; after the last stage, the
 * finish job. */
static int start_stage(fl_server_round_t *r, unsigned stage);

static void part_work(uv_work_t *w)
{
    struct part_work *pw = w->data;
    fl_server_round_t *r = pw->r;
    pw->rc = r->s->engine->parallel(r->ectx, r->stage, pw->part,
                                    FL_SERVER_PARALLEL_PARTS);
}

static void part_done(uv_work_t *w, int status)
{
    struct part_work *pw = w->data;
    fl_server_round_t *r = pw->r;
    if (status < 0 && pw->rc == 0)
        pw->rc = FL_EINTERNAL;
    if (--r->pending > 0)
        return;
    int rc = 0;
    for (unsigned i = 0; i < FL_SERVER_PARALLEL_PARTS; i++)
        if (r->pw[i].rc < 0 && rc == 0)
            rc = r->pw[i].rc;
    if (rc == 0)
        rc = start_stage(r, r->stage + 1);
    if (rc < 0) {
        r->fin_rc = rc;
        snprintf(r->fin.err, sizeof r->fin.err, "unmasking: %s",
                 fl_strerror(rc));
        finish_done(&r->work, 0);
    }
}

static int start_stage(fl_server_round_t *r, unsigned stage)
{
    const fl_server_engine_t *en = r->s->engine;
    r->stage = stage;
    if (!en->parallel || stage >= en->parallel_stages)
        return uv_queue_work(r->s->loop, &r->work, finish_work, finish_done) < 0
                   ? FL_EINTERNAL
                   : 0;
    r->pending = 0;
    for (unsigned i = 0; i < FL_SERVER_PARALLEL_PARTS; i++) {
        r->pw[i].r = r;
        r->pw[i].part = i;
        r->pw[i].rc = 0;
        r->pw[i].w.data = &r->pw[i];
    }
    for (unsigned i = 0; i < FL_SERVER_PARALLEL_PARTS; i++) {
        if (uv_queue_work(r->s->loop, &r->pw[i].w, part_work, part_done) < 0) {
            if (r->pending == 0)
                return FL_EINTERNAL;
            r->pw[i].rc = FL_EINTERNAL; /* the queued ones report */
            break;
        }
        r->pending++;
    }
    return 0;
}

static void start_finish(fl_server_round_t *r)
{
    fl_server_t *s = r->s;
    uint32_t survivors = 0;
    for (uint32_t i = 0; i < r->n; i++)
        survivors += r->parts[i].in_sum;
    memset(&r->fin, 0, sizeof r->fin);
    r->fin.round = r->round;
    r->fin.survivors = survivors;
    r->fin.secagg = s->cfg.secagg;
    r->fin.cfg = &s->cfg;
    r->fin.params = s->params;
    r->fin.num_params = s->num_params;
    r->fin.model = s->model;
    r->fin.population = population(s);
    /* A deep copy of the state: the job edits it on another thread. */
    int rc = 0;
    r->fin.state = s->state;
    r->fin.state.accountant = NULL;
    r->fin.state.optimizer = NULL;
    if (s->state.accountant_len) {
        r->fin.state.accountant = fl_malloc(s->state.accountant_len);
        if (!r->fin.state.accountant)
            rc = FL_ENOMEM;
        else
            memcpy(r->fin.state.accountant, s->state.accountant,
                   s->state.accountant_len);
    }
    if (rc == 0 && s->state.optimizer_len) {
        r->fin.state.optimizer = fl_malloc(s->state.optimizer_len);
        if (!r->fin.state.optimizer)
            rc = FL_ENOMEM;
        else
            memcpy(r->fin.state.optimizer, s->state.optimizer,
                   s->state.optimizer_len);
    }
    enter(r, RS_FINISH);
    r->work.data = r;
    if (rc == 0)
        rc = start_stage(r, 0);
    if (rc < 0) {
        fl_server_state_clear(&r->fin.state);
        abort_round(r, FLOTILLA__ABORT_REASON__ABORT_INTERNAL, "out of memory");
    }
}

/* Why secure aggregation cannot go on after phase ph, with `left`
 * devices: a device takes part only with t of its neighbours' keys and
 * shares, and every secret the unmasking needs has t holders among its
 * neighbours (secagg/secagg.h). */
static void secagg_shortfall(const fl_server_round_t *r, int ph, uint32_t left,
                             char *why, size_t len)
{
    const char *phase = fl_server_phase_name(ph);
    if (ph == FL_SERVER_PHASE_ADVERTISE || ph == FL_SERVER_PHASE_SHARE)
        snprintf(why, len,
                 "secure aggregation: after the %s phase no device has t = "
                 "%u of its %u neighbours still taking part (%u devices "
                 "left, each would refuse)",
                 phase, r->sa_t, r->sa_k, left);
    else
        snprintf(why, len,
                 "secure aggregation: after the %s phase a secret needed to "
                 "unmask the sum has fewer than t = %u holders among the "
                 "neighbours of its device that %s (%u devices left)",
                 phase, r->sa_t,
                 ph == FL_SERVER_PHASE_MASKED_INPUT ? "sent their inputs"
                                                    : "answered",
                 left);
}

/* Leaves the current phase: drops the silent, checks the survivors. */
static void advance(fl_server_round_t *r)
{
    const fl_server_config_t *c = &r->s->cfg;
    if (r->busy)
        return; /* the outer loop decides */
    for (uint32_t i = 0; i < r->n; i++) {
        participant_t *pt = &r->parts[i];
        if (pt->peer && !pt->answered)
            drop(r, pt);
        else if (pt->peer && r->state == RS_INVITE && !pt->accepted)
            release(r, pt); /* declined: not a dropout */
    }
    uint32_t left = alive(r);
    int ph = phase_of_state[r->state];
    if (r->state != RS_INVITE && r->s->engine->close && left >= r->threshold) {
        int crc = r->s->engine->close(r->ectx, ph);
        if (crc == FL_ETHRESHOLD) {
            /* Enough devices, but the neighbour graph is too thin where it
             * counts: say so rather than "0 devices left". */
            char why[256], detail[256] = "";
            secagg_shortfall(r, ph, left, why, sizeof why);
            if (r->s->engine->describe_close) {
                r->s->engine->describe_close(r->ectx, detail, sizeof detail);
                if (detail[0])
                    FL_WARN("round %llu: %s", (unsigned long long)r->round,
                            detail);
            }
            abort_round(r, FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS, why);
            return;
        } else if (crc < 0) {
            FL_ERROR("round %llu: closing the %s phase: %s",
                     (unsigned long long)r->round, fl_server_phase_name(ph),
                     fl_strerror(crc));
            abort_round(r, FLOTILLA__ABORT_REASON__ABORT_INTERNAL,
                        "aggregation failed");
            return;
        }
    }
    if (left < r->threshold || left == 0) {
        char why[128];
        snprintf(why, sizeof why,
                 "%u devices left after the %s phase, %u needed", left,
                 fl_server_phase_name(ph), r->threshold);
        abort_round(r, FLOTILLA__ABORT_REASON__ABORT_TOO_FEW_CLIENTS, why);
        return;
    }
    int next;
    uint64_t ms;
    switch (r->state) {
    case RS_INVITE:
        next = c->secagg ? RS_ADVERTISE : RS_MASKED;
        ms = c->secagg ? (uint64_t)c->advertise_ms
                       : (uint64_t)(c->train_ms + c->masked_input_ms);
        break;
    case RS_ADVERTISE:
        next = RS_SHARE;
        ms = (uint64_t)c->share_ms;
        break;
    case RS_SHARE:
        next = RS_MASKED;
        ms = (uint64_t)(c->train_ms + c->masked_input_ms);
        break;
    case RS_MASKED:
        if (!c->secagg) {
            start_finish(r);
            return;
        }
        next = RS_UNMASK;
        ms = (uint64_t)c->unmask_ms;
        break;
    case RS_UNMASK:
        start_finish(r);
        return;
    default:
        return;
    }
    enter(r, next);
    if (next == RS_SHARE || next == RS_UNMASK ||
        (next == RS_MASKED && c->secagg)) {
        int rc = send_requests(r);
        if (rc < 0) {
            FL_ERROR("round %llu: secure aggregation: %s",
                     (unsigned long long)r->round, fl_strerror(rc));
            abort_round(r, FLOTILLA__ABORT_REASON__ABORT_INTERNAL,
                        "secure aggregation failed");
            return;
        }
    }
    arm_deadline(r, ms);
}

static void deadline_cb(uv_timer_t *t)
{
    fl_server_round_t *r = t->data;
    if (r->state == RS_IDLE || r->state == RS_FINISH)
        return;
    FL_INFO("round %llu: %s deadline passed", (unsigned long long)r->round,
            fl_server_phase_name(phase_of_state[r->state]));
    advance(r);
}

static void maybe_advance(fl_server_round_t *r)
{
    if (r->state != RS_IDLE && r->state != RS_FINISH && all_answered(r))
        advance(r);
}

void fl_server_round_peer_gone(fl_server_round_t *r, fl_server_peer_t *p)
{
    if (!p->round_slot || p->round_slot > r->n)
        return;
    participant_t *pt = &r->parts[p->round_slot - 1];
    FL_ASSERT(pt->peer == p);
    if (r->state == RS_FINISH) {
        release(r, pt); /* its input is in; it just misses the result */
        return;
    }
    if (r->state == RS_INVITE && pt->answered && !pt->accepted)
        release(r, pt);
    else
        drop(r, pt);
    if (!r->busy)
        maybe_advance(r);
}

/* The round number every round message carries. */
static uint64_t round_of(const fl_envelope_t *e)
{
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT:
        return e->round_accept->round;
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        return e->advertise_keys->round;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        return e->share_keys_response->round;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        return e->masked_input_response->round;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        return e->unmasking_response->round;
    case FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT:
        return e->training_report->round;
    default:
        return 0;
    }
}

static uint32_t client_id_of(const fl_envelope_t *e)
{
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        return e->advertise_keys->client_id;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        return e->share_keys_response->client_id;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        return e->masked_input_response->client_id;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        return e->unmasking_response->client_id;
    default:
        return 0;
    }
}

int fl_server_round_on_message(fl_server_round_t *r, fl_server_peer_t *p,
                               const fl_envelope_t *e)
{
    const fl_server_engine_t *en = r->s->engine;
    uint64_t round = round_of(e);
    /* Another round's message (late, replayed, or not for this device) is
     * not used; it closes nothing (docs/PROTOCOL.md §5). */
    if (r->state == RS_IDLE || round != r->round || !p->round_slot ||
        p->round_slot > r->n) {
        FL_DEBUG("%s for round %llu ignored (current round %llu)",
                 fl_proto_body_name(e), (unsigned long long)round,
                 (unsigned long long)r->round);
        return 0;
    }
    participant_t *pt = &r->parts[p->round_slot - 1];
    uint32_t cid = client_id_of(e);
    if (cid && cid != pt->id)
        return FL_EPROTO; /* speaking for another client */
    int rc = 0, expected;
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_TRAINING_REPORT: {
        const Flotilla__TrainingReport *t = e->training_report;
        FL_DEBUG("round %llu client %u: loss %.4f -> %.4f on %u examples in "
                 "%u ms",
                 (unsigned long long)round, pt->id, (double)t->loss_before,
                 (double)t->loss_after, t->num_examples, t->train_ms);
        if (pt->reported || !isfinite(t->loss_before) ||
            !isfinite(t->loss_after))
            return 0; /* one report per client; junk is not averaged */
        pt->reported = 1;
        r->s->metrics.training_reports++;
        r->s->metrics.training_examples += t->num_examples;
        r->loss_sum[0] += t->loss_before;
        r->loss_sum[1] += t->loss_after;
        r->nreports++;
        return 0;
    }
    case FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT:
        expected = RS_INVITE;
        break;
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        expected = RS_ADVERTISE;
        break;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        expected = RS_SHARE;
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        expected = RS_MASKED;
        break;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        expected = RS_UNMASK;
        break;
    default:
        return FL_EPROTO;
    }
    /* A client acts on its own in the phase after the invitation (it
     * advertises keys, or sends its input without secure aggregation), so
     * that message may arrive before the other invitees have answered. */
    int first = r->s->cfg.secagg ? RS_ADVERTISE : RS_MASKED;
    int early = r->state == RS_INVITE && expected == first && pt->accepted &&
                pt->answered;
    if (early && pt->early)
        return FL_EDUPLICATE;
    if (!early && (r->state != expected || pt->answered))
        return pt->answered ? FL_EDUPLICATE : FL_ESTATE;
    switch (e->body_case) {
    case FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT:
        pt->accepted = e->round_accept->accept;
        if (!pt->accepted)
            FL_DEBUG("round %llu: client %u declined (%s)",
                     (unsigned long long)round, pt->id,
                     e->round_accept->reason ? e->round_accept->reason : "");
        break;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        if (e->masked_input_response->num_values != r->num_values)
            rc = FL_EFORMAT;
        else
            rc = en->handle(r->ectx, pt->id, e);
        if (rc == 0)
            pt->in_sum = 1;
        break;
    default:
        rc = en->handle(r->ectx, pt->id, e);
        break;
    }
    if (rc < 0)
        return rc; /* the caller closes the peer, which drops it */
    if (early) {
        pt->early = 1;
        return 0;
    }
    pt->answered = 1;
    maybe_advance(r);
    return 0;
}

int fl_server_round_shutdown(fl_server_round_t *r)
{
    if (r->state == RS_FINISH) {
        FL_INFO("round %llu is finishing; stopping after it",
                (unsigned long long)r->round);
        r->shutting_down = 1;
        return 1;
    }
    if (r->state != RS_IDLE)
        abort_round(r, FLOTILLA__ABORT_REASON__ABORT_SHUTDOWN,
                    "the server is stopping");
    close_timer(r);
    return 0;
}
