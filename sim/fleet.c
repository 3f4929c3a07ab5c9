/* sim/fleet.c — a simulated fleet: the real server and virtual devices
 * running the real client agent, on one loop, joined by in-process pipes
 * (transport inproc) or by TLS connections on loopback through net/, as
 * the daemon connects (transport tls). Either way a fault injector on the
 * device side drops devices at a phase, delays stragglers and churns. */
#include "sim/sim.h"
#include "sim/sim_internal.h"

#include "client/client.h"
#include "model/data.h"
#include "model/tokenizer.h"
#include "net/net.h"
#include "server/server.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- in-process pipes ---- */
typedef struct frame {
    struct frame *next;
    size_t len;
    uint8_t data[];
} frame_t;

typedef struct fleet fleet_t;
typedef struct device device_t;

typedef struct pipe {
    fleet_t *f;
    device_t *d;
    fl_server_peer_t *peer; /* NULL once the server side is closed */
    frame_t *to_srv, *to_srv_tail, *to_dev, *to_dev_tail;
    int closing;
    int dirty;
    struct pipe *next_dirty;
} pipe_t;

struct device {
    int idx;
    fleet_t *f;
    fl_client_agent_t *agent;
    fl_artifact_key_t *id;
    fl_data_t *data;
    pipe_t *pipe;        /* inproc: NULL while offline */
    fl_net_conn_t *conn; /* tls: the session, connecting or open */
    int conn_open;       /* tls: the agent knows of conn */
    int want_conn;       /* tls: waits for a connection slot */
    uint64_t session;    /* tls: counts sessions (late frames check it) */
    uint64_t down_mark;  /* bytes received up to its last round */
    int offline_rounds;  /* rounds left before rejoining */
    int drop_phase;      /* this round: 0 none, 1..4 the phase it drops at */
    int straggle;
    fl_rng_t rng;
};

/* What the devices said about one round. */
typedef struct {
    uint64_t round;
    int accepted, done; /* devices that accepted it, and that reported */
    int participants, survivors;
    double loss_sum;
    double up_sum, down_sum;
} round_acc_t;

struct fleet {
    const fl_sim_config_t *cfg;
    uv_loop_t *loop;
    fl_server_t *server;
    device_t *dev;
    int ndev;
    fl_tokenizer_t *tok;
    char tokref[FL_CLIENT_TOKREF_MAX]; /* its reference, in every model */
    fl_client_model_cache_t *cache;    /* one copy of each model version */
    pipe_t *dirty;
    uv_idle_t idle;
    int idle_on;
    uv_timer_t poll;
    uv_signal_t sigint, sigterm;
    uv_timer_t heartbeat; /* tls: the devices' heartbeats */
    fl_net_tls_t *tls;    /* tls: the devices' client context */
    int port;             /* tls: the server's bound port */
    int handshaking;      /* tls: connections not yet open */
    double wait_since;    /* tls: waiting for the devices' reports */
    uint8_t signing_pub[32];
    char tmp[1024]; /* device state directories */
    fl_sim_results_t *res;
    uint64_t rows_done; /* last round written */
    double t_last, t_start;
    round_acc_t acc[4]; /* ring of recent rounds */
    double initial_val, last_val;
    double up_total, down_total;
    int up_rounds;
    int stopping;
    int failed;
    char err[256];
};

static round_acc_t *acc_for(fleet_t *f, uint64_t round)
{
    round_acc_t *a = &f->acc[round % 4];
    if (a->round != round)
        *a = (round_acc_t){.round = round};
    return a;
}

static void schedule(fleet_t *f, pipe_t *p);

static int enqueue(frame_t **head, frame_t **tail, const uint8_t *b, size_t n)
{
    frame_t *fr = fl_malloc(sizeof *fr + n);
    if (!fr)
        return FL_ENOMEM;
    fr->next = NULL;
    fr->len = n;
    memcpy(fr->data, b, n);
    if (*tail)
        (*tail)->next = fr;
    else
        *head = fr;
    *tail = fr;
    return 0;
}

static void free_frames(frame_t *fr)
{
    while (fr) {
        frame_t *n = fr->next;
        fl_free(fr);
        fr = n;
    }
}

/* server -> device */
static int srv_send(void *ctx, const uint8_t *b, size_t n)
{
    pipe_t *p = ctx;
    if (p->closing)
        return FL_ECLOSED;
    int rc = enqueue(&p->to_dev, &p->to_dev_tail, b, n);
    schedule(p->f, p);
    return rc;
}

static void pipe_close(pipe_t *p)
{
    if (!p->closing) {
        p->closing = 1;
        schedule(p->f, p);
    }
}

static void srv_close(void *ctx)
{
    pipe_close(ctx);
}
static const fl_server_peer_ops_t srv_ops = {.send = srv_send,
                                             .close = srv_close};

/* A frame delivered late (a straggler): on the pipe it was sent on, or on
 * the TLS session it was sent in, if that is still the device's. */
typedef struct {
    uv_timer_t t;
    fleet_t *f;
    int dev;
    pipe_t *p;        /* inproc */
    uint64_t session; /* tls */
    size_t len;
    uint8_t data[];
} late_t;

static void late_free(uv_handle_t *h)
{
    fl_free(h->data);
}

static void on_late(uv_timer_t *t)
{
    late_t *l = t->data;
    device_t *d = &l->f->dev[l->dev];
    if (l->p) {
        if (d->pipe == l->p && !l->p->closing) {
            enqueue(&l->p->to_srv, &l->p->to_srv_tail, l->data, l->len);
            schedule(l->f, l->p);
        }
    } else if (d->conn && d->conn_open && d->session == l->session) {
        if (fl_net_send(d->conn, l->data, l->len) < 0)
            fl_net_conn_close(d->conn, FL_ECLOSED);
    }
    uv_close((uv_handle_t *)t, late_free);
}

/* The phase a device message belongs to (1..4), or 0. */
static int phase_of(int body)
{
    switch (body) {
    case FLOTILLA__ENVELOPE__BODY_ADVERTISE_KEYS:
        return 1;
    case FLOTILLA__ENVELOPE__BODY_SHARE_KEYS_RESPONSE:
        return 2;
    case FLOTILLA__ENVELOPE__BODY_MASKED_INPUT_RESPONSE:
        return 3;
    case FLOTILLA__ENVELOPE__BODY_UNMASKING_RESPONSE:
        return 4;
    default:
        return 0;
    }
}

/* What the fault injector does with a device's frame. */
enum { FAULT_PASS = 0, FAULT_DROP, FAULT_LATE };

/* Decides one device -> server frame's fate; for FAULT_LATE the frame is
 * already queued on a timer (p: the pipe it goes on, NULL for TLS). */
static int fault(fleet_t *f, device_t *d, pipe_t *p, const uint8_t *b, size_t n)
{
    fl_envelope_t *e = NULL;
    if (fl_proto_decode(b, n, 1u << 30, &e) < 0)
        return FAULT_PASS;
    int body = (int)e->body_case;
    if (body == FLOTILLA__ENVELOPE__BODY_ROUND_ACCEPT &&
        e->round_accept->accept) {
        /* This round's fate: the phase it drops at, if any. */
        acc_for(f, e->round_accept->round)->accepted++;
        d->drop_phase = 0;
        int last = f->cfg->secagg ? 4 : 3;
        for (int ph = f->cfg->secagg ? 1 : 3; ph <= last; ph++)
            if (fl_rng_uniform(&d->rng) < f->cfg->dropout) {
                d->drop_phase = ph;
                break;
            }
        d->straggle = fl_rng_uniform(&d->rng) < f->cfg->straggler;
    }
    int ph = phase_of(body);
    fl_proto_free(e);
    if (ph && ph == d->drop_phase) {
        d->drop_phase = 0;
        return FAULT_DROP; /* the device vanished before sending */
    }
    if (ph == 3 && d->straggle) {
        d->straggle = 0;
        late_t *l = fl_malloc(sizeof *l + n);
        if (l) {
            l->f = f;
            l->dev = d->idx;
            l->p = p;
            l->session = d->session;
            l->len = n;
            memcpy(l->data, b, n);
            uv_timer_init(f->loop, &l->t);
            l->t.data = l;
            uv_timer_start(&l->t, on_late, (uint64_t)f->cfg->phase_ms * 3 + 500,
                           0);
            return FAULT_LATE;
        }
    }
    return FAULT_PASS;
}

/* device -> server, through the fault injector */
static int dev_send(void *io, const uint8_t *b, size_t n)
{
    pipe_t *p = io;
    fleet_t *f = p->f;
    if (p->closing)
        return FL_ECLOSED;
    switch (fault(f, p->d, p, b, n)) {
    case FAULT_DROP:
        pipe_close(p);
        return FL_ECLOSED;
    case FAULT_LATE:
        return 0;
    default:
        break;
    }
    int rc = enqueue(&p->to_srv, &p->to_srv_tail, b, n);
    schedule(f, p);
    return rc;
}

static void dev_close(void *io, int reason)
{
    (void)reason;
    pipe_close(io);
}

static const fl_client_io_t dev_io = {dev_send, dev_close};

static void on_idle(uv_idle_t *h);

static void schedule(fleet_t *f, pipe_t *p)
{
    if (!p->dirty) {
        p->dirty = 1;
        p->next_dirty = f->dirty;
        f->dirty = p;
    }
    if (!f->idle_on) {
        f->idle_on = 1;
        uv_idle_start(&f->idle, on_idle);
    }
}

static void pipe_finish(pipe_t *p)
{
    device_t *d = p->d;
    free_frames(p->to_srv);
    free_frames(p->to_dev);
    if (p->peer)
        fl_server_peer_closed(p->peer);
    if (d->pipe == p) {
        d->pipe = NULL;
        fl_client_agent_disconnected(d->agent);
    }
    fl_free(p);
}

/* Delivers what is queued on the pipes that were dirty when it started. */
static void on_idle(uv_idle_t *h)
{
    fleet_t *f = h->data;
    pipe_t *list = f->dirty;
    f->dirty = NULL;
    while (list) {
        pipe_t *p = list;
        list = p->next_dirty;
        p->dirty = 0;
        while (!p->closing && (p->to_srv || p->to_dev)) {
            frame_t *fr;
            if ((fr = p->to_srv)) {
                p->to_srv = fr->next;
                if (!p->to_srv)
                    p->to_srv_tail = NULL;
                if (p->peer)
                    fl_server_peer_frame(p->peer, fr->data, fr->len);
                fl_free(fr);
            }
            if (!p->closing && (fr = p->to_dev)) {
                p->to_dev = fr->next;
                if (!p->to_dev)
                    p->to_dev_tail = NULL;
                fl_client_agent_on_frame(p->d->agent, fr->data, fr->len);
                fl_free(fr);
            }
        }
        if (p->closing && !p->dirty)
            pipe_finish(p);
    }
    if (!f->dirty && f->idle_on) {
        f->idle_on = 0;
        uv_idle_stop(&f->idle);
    }
}

/* ---- TLS sessions through net/, as the daemon has them ---- */

/* Connections being set up at once: the rest wait for a slot, so that a
 * large fleet does not overrun the listen backlog and handshake deadlines. */
#define TLS_CONNECTING_MAX 64
#define HEARTBEAT_MS       30000

static int tls_send(void *io, const uint8_t *b, size_t n)
{
    fl_net_conn_t *c = io;
    device_t *d = fl_net_conn_data(c);
    switch (fault(d->f, d, NULL, b, n)) {
    case FAULT_DROP:
        fl_net_conn_close(c, FL_ECLOSED); /* vanished before sending */
        return FL_ECLOSED;
    case FAULT_LATE:
        return 0;
    default:
        break;
    }
    int rc = fl_net_send(c, b, n);
    return rc < 0 ? rc : 0;
}

static void tls_close(void *io, int reason)
{
    fl_net_conn_close(io, reason < 0 ? reason : 0);
}

static const fl_client_io_t tls_io = {tls_send, tls_close};

static void tls_pump(fleet_t *f);

static void tls_on_open(fl_net_conn_t *c)
{
    device_t *d = fl_net_conn_data(c);
    if (d->conn != c)
        return;
    d->f->handshaking--;
    d->conn_open = 1;
    fl_client_agent_connected(d->agent, &tls_io, c);
    tls_pump(d->f);
}

static void tls_on_frame(fl_net_conn_t *c, const uint8_t *b, size_t n)
{
    device_t *d = fl_net_conn_data(c);
    if (d->conn == c && d->conn_open)
        fl_client_agent_on_frame(d->agent, b, n);
}

static void tls_on_close(fl_net_conn_t *c, int reason)
{
    device_t *d = fl_net_conn_data(c);
    (void)reason;
    if (d->conn != c) /* a device has one session at a time */
        return;
    d->conn = NULL;
    if (d->conn_open) {
        d->conn_open = 0;
        fl_client_agent_disconnected(d->agent);
    } else {
        d->f->handshaking--; /* never opened: its slot is free */
    }
    tls_pump(d->f);
}

/* Starts connections for the devices that want one, a few at a time. */
static void tls_pump(fleet_t *f)
{
    if (f->stopping)
        return;
    for (int i = 0; i < f->ndev && f->handshaking < TLS_CONNECTING_MAX; i++) {
        device_t *d = &f->dev[i];
        if (!d->want_conn || d->conn)
            continue;
        d->want_conn = 0;
        fl_net_connect_opts_t o;
        fl_net_connect_opts_init(&o);
        o.host = "127.0.0.1"; /* checked against the certificate's IP SAN */
        o.port = f->port;
        o.tls = f->tls;
        o.limits.handshake_ms = 60000;
        o.cb.on_open = tls_on_open;
        o.cb.on_frame = tls_on_frame;
        o.cb.on_close = tls_on_close;
        o.data = d;
        fl_net_conn_t *c = NULL;
        if (fl_net_connect(f->loop, &o, &c) < 0 || !c)
            continue; /* churn tries again after a round */
        d->conn = c;
        d->session++;
        f->handshaking++;
    }
}

static void on_heartbeat(uv_timer_t *t)
{
    fleet_t *f = t->data;
    for (int i = 0; i < f->ndev; i++)
        if (f->dev[i].conn_open)
            fl_client_agent_heartbeat(f->dev[i].agent);
}

static int online(const device_t *d)
{
    return d->pipe || d->conn || d->want_conn;
}

static void disconnect_device(device_t *d)
{
    if (d->pipe)
        pipe_close(d->pipe);
    if (d->conn) /* gracefully: leaving is not vanishing (see fault) */
        fl_net_conn_close(d->conn, 0);
    d->want_conn = 0;
}

static int connect_device(fleet_t *f, device_t *d)
{
    if (f->cfg->transport == FL_SIM_TRANSPORT_TLS) {
        d->want_conn = 1;
        tls_pump(f);
        return 0;
    }
    pipe_t *p = fl_calloc(1, sizeof *p);
    if (!p)
        return FL_ENOMEM;
    p->f = f;
    p->d = d;
    d->pipe = p;
    fl_client_agent_connected(d->agent, &dev_io, p);
    int rc = fl_server_peer_open(f->server, &srv_ops, p, &p->peer);
    if (rc < 0 && !p->peer) {
        d->pipe = NULL;
        fl_client_agent_disconnected(d->agent);
        fl_free(p);
    }
    return rc;
}

/* ---- evaluation and results ---- */

static int eval_global(fleet_t *f, const fl_model_t *cm, double *loss)
{
    fl_model_t *m = NULL;
    int rc = fl_model_clone(cm, &m);
    if (rc < 0)
        return rc;
    double total = 0;
    int n = 0;
    for (int i = 0; i < f->ndev; i++) {
        double l;
        if (fl_client_eval(m, f->dev[i].data, FL_DATA_VAL, (int)f->cfg->seq_len,
                           (size_t)f->cfg->eval_windows, &l) == 0) {
            total += l;
            n++;
        }
    }
    fl_model_free(m);
    if (n == 0)
        return FL_ERANGE;
    *loss = total / n;
    return 0;
}

static int eval_published(fleet_t *f, double *loss)
{
    const fl_server_state_t *st = fl_server_state(f->server);
    char path[PATH_MAX];
    fl_model_t *m = NULL;
    if (snprintf(path, sizeof path, "%s/server/%s/model.bin", f->tmp,
                 st->model_dir) >= (int)sizeof path)
        return FL_ETOOBIG;
    int rc = fl_model_load(path, &m);
    if (rc == 0)
        rc = eval_global(f, m, loss);
    fl_model_free(m);
    return rc;
}

/* The devices report through this one (ctx = the fleet; the device is
 * found from the event's round accumulators). */
typedef struct {
    fleet_t *f;
    int idx;
} devctx_t;

static void on_device_event(void *ctx, const fl_client_event_t *ev)
{
    devctx_t *dc = ctx;
    fleet_t *f = dc->f;
    if (ev->kind != FL_CLIENT_EV_ROUND_DONE)
        return;
    round_acc_t *a = acc_for(f, ev->round);
    a->done++;
    if (ev->stats.num_examples > 0) {
        a->participants++;
        a->loss_sum += ev->stats.loss_before;
    }
    if (ev->status == 0) {
        /* Down: all the device received since its last round, the model
         * downloads included; one served from the shared cache counts as
         * the bytes it would have taken. */
        device_t *d = &f->dev[dc->idx];
        uint64_t up, down;
        fl_client_agent_bytes(d->agent, &up, &down);
        down += fl_client_agent_bytes_cached(d->agent);
        a->survivors++;
        a->up_sum += (double)ev->bytes_up;
        a->down_sum += (double)(down - d->down_mark);
        d->down_mark = down;
    }
}

static void stop_fleet(fleet_t *f);

/* Churn between rounds: some devices leave, the absent come back. */
static void churn(fleet_t *f)
{
    for (int i = 0; i < f->ndev; i++) {
        device_t *d = &f->dev[i];
        if (online(d)) {
            if (fl_rng_uniform(&d->rng) < f->cfg->churn) {
                d->offline_rounds = 1 + (int)fl_rng_below(&d->rng, 3);
                disconnect_device(d);
            }
        } else if (d->offline_rounds > 0 && --d->offline_rounds == 0) {
            connect_device(f, d);
        } else if (d->offline_rounds == 0) {
            connect_device(f, d); /* dropped in a round: back at once */
        }
    }
}

static void on_poll(uv_timer_t *t)
{
    fleet_t *f = t->data;
    if (f->stopping)
        return;
    /* Frames still in the pipes may carry a round's results to its
     * devices: a row is written only once they have been delivered, so that
     * every device's report of the round is in it. */
    if (f->dirty || f->idle_on)
        return;
    const fl_server_state_t *st = fl_server_state(f->server);
    while (f->rows_done < st->round) {
        uint64_t r = f->rows_done + 1;
        double now = fl_time_mono_s(), val = f->last_val;
        /* Over TLS the round's last frames may still be in the sockets:
         * wait (a little) for every device that accepted to report. */
        round_acc_t *w = acc_for(f, r);
        if (f->cfg->transport == FL_SIM_TRANSPORT_TLS &&
            w->done < w->accepted) {
            if (f->wait_since == 0)
                f->wait_since = now;
            if (now - f->wait_since < 2.0)
                return;
        }
        f->wait_since = 0;
        f->rows_done = r;
        if (r == st->round)
            eval_published(f, &val);
        f->last_val = val;
        round_acc_t *a = acc_for(f, r);
        fl_sim_round_row_t row = {
            .round = (int)r,
            .train_loss = a->participants ? a->loss_sum / a->participants : 0,
            .val_loss = val,
            .val_ppl = exp(val),
            .participants = a->participants,
            .survivors = a->survivors,
            .bytes_up = a->survivors ? a->up_sum / a->survivors : 0,
            .bytes_down = a->survivors ? a->down_sum / a->survivors : 0,
            .round_s = now - f->t_last,
            .epsilon = st->epsilon,
        };
        if (a->survivors) {
            f->up_total += row.bytes_up;
            f->down_total += row.bytes_down;
            f->up_rounds++;
        }
        f->t_last = now;
        fl_sim_results_add(f->res, &row);
        if (f->cfg->quiet || !isatty(STDOUT_FILENO))
            FL_INFO("round %llu: val loss %.4f, %d participants, %d "
                    "survivors, %.0f bytes up per device, epsilon %.3f",
                    (unsigned long long)r, val, a->participants, a->survivors,
                    row.bytes_up, st->epsilon);
        else
            fl_sim_progress(stdout, (int)r, (int)f->cfg->rounds, val,
                            now - f->t_start);
        churn(f);
    }
    if (st->round >= (uint64_t)f->cfg->rounds)
        stop_fleet(f);
}

static void stop_fleet(fleet_t *f)
{
    if (f->stopping)
        return;
    f->stopping = 1;
    uv_timer_stop(&f->poll);
    uv_close((uv_handle_t *)&f->poll, NULL);
    uv_close((uv_handle_t *)&f->sigint, NULL);
    uv_close((uv_handle_t *)&f->sigterm, NULL);
    if (f->cfg->transport == FL_SIM_TRANSPORT_TLS)
        uv_close((uv_handle_t *)&f->heartbeat, NULL);
    fl_server_stop(f->server);
    for (int i = 0; i < f->ndev; i++)
        disconnect_device(&f->dev[i]);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    fleet_t *f = h->data;
    FL_WARN("signal %d: stopping the simulation", signum);
    f->failed = 1;
    stop_fleet(f);
}

/* The process's peak resident memory (VmHWM) in MiB, 0 when unknown. */
static double peak_rss_mb(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    if (!fp)
        return 0;
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtod(line + 6, NULL);
            break;
        }
    fclose(fp);
    return kb / 1024.0;
}

/* ---- setup ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Text of the given records, back to back. */
static int records_text(const fl_sim_corpus_t *c, const size_t *idx, size_t n,
                        fl_buf_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const fl_sim_record_t *r = &c->records[idx[i]];
        int rc = fl_buf_append(out, c->text.data + r->off, r->len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int load_corpus(const fl_sim_config_t *cfg, fl_sim_corpus_t *c,
                       char *err, size_t errlen)
{
    char **names = NULL;
    size_t n = 0;
    int rc = fl_data_list_files(cfg->data, &names, &n);
    if (rc < 0) {
        snprintf(err, errlen, "data %s: %s", cfg->data, fl_strerror(rc));
        return rc;
    }
    fl_sim_corpus_init(c, (size_t)cfg->max_mb << 20);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char path[PATH_MAX];
        uint8_t *text = NULL;
        size_t len = 0;
        if ((rc = fl_path_join(path, sizeof path, cfg->data, names[i])) < 0 ||
            (rc = fl_file_read_all(path, (size_t)cfg->max_mb << 20, &text,
                                   &len)) < 0) {
            snprintf(err, errlen, "%s: %s", names[i], fl_strerror(rc));
            break;
        }
        rc = fl_sim_corpus_add_topic(c, names[i], (char *)text, len);
        if (rc < 0)
            snprintf(err, errlen, "data: more than %lld MiB of text",
                     (long long)cfg->max_mb);
        fl_free(text);
    }
    fl_data_names_free(names, n);
    if (rc == 0 && c->n_topics <= cfg->public_topics) {
        snprintf(err, errlen,
                 "data %s: %d topics, need more than the %lld "
                 "public ones",
                 cfg->data, c->n_topics, (long long)cfg->public_topics);
        rc = FL_EINVAL;
    }
    return rc;
}

/* Central pre-training on the public topics: the initial global model. */
static int pretrain(const fl_sim_config_t *cfg, fl_tokenizer_t *tok,
                    const fl_buf_t *public_text, const char *path,
                    fl_model_t **out_model)
{
    fl_model_config_t mc;
    fl_model_config_default(&mc);
    mc.dim = (int32_t)cfg->dim;
    mc.hidden_dim = (int32_t)cfg->hidden;
    mc.n_layers = (int32_t)cfg->layers;
    mc.n_heads = (int32_t)cfg->heads;
    mc.n_kv_heads = (int32_t)cfg->heads;
    mc.seq_len = (int32_t)cfg->seq_len;
    mc.vocab_size = fl_tokenizer_vocab_size(tok);
    fl_model_t *m = NULL;
    fl_data_t *d = NULL;
    int32_t *win = NULL, *tk = NULL, *tg = NULL;
    const int B = 8, T = (int)cfg->seq_len;
    int rc = fl_model_new(&mc, &m);
    if (rc < 0)
        return rc;
    fl_model_init_weights(m, (uint64_t)cfg->seed);
    char ref[FL_CLIENT_TOKREF_MAX];
    if ((rc = fl_client_tokenizer_ref(tok, ref, sizeof ref)) < 0 ||
        (rc = fl_model_set_tokenizer_ref(m, ref)) < 0)
        goto out;
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.val_fraction = 0.05;
    o.seed = (uint64_t)cfg->seed;
    if ((rc = fl_data_load_text(&o, tok, public_text->data, public_text->len,
                                "public", &d)) < 0)
        goto out;
    win = fl_malloc((size_t)B * (T + 1) * sizeof *win);
    tk = fl_malloc((size_t)B * T * sizeof *tk);
    tg = fl_malloc((size_t)B * T * sizeof *tg);
    if (!win || !tk || !tg) {
        rc = FL_ENOMEM;
        goto out;
    }
    fl_model_optim_t opt;
    fl_model_optim_default(&opt);
    opt.lr = (float)cfg->pretrain_lr;
    opt.min_lr = opt.lr / 10;
    opt.warmup = cfg->pretrain_steps / 10;
    opt.total = cfg->pretrain_steps;
    opt.weight_decay = 0.01f;
    fl_rng_t rng;
    fl_rng_seed(&rng, (uint64_t)cfg->seed ^ 0x5eed);
    for (int64_t s = 0; s < cfg->pretrain_steps; s++) {
        float loss;
        if ((rc = fl_data_batch(d, FL_DATA_TRAIN, &rng, B, T, win)) < 0)
            goto out;
        for (int b = 0; b < B; b++) {
            memcpy(tk + b * T, win + b * (T + 1), (size_t)T * sizeof *tk);
            memcpy(tg + b * T, win + b * (T + 1) + 1, (size_t)T * sizeof *tg);
        }
        if ((rc = fl_model_train_step(m, &opt, tk, tg, B, T, &loss)) < 0)
            goto out;
    }
    fl_model_optim_reset(m);
    rc = fl_model_save(m, path, 0);
out:
    fl_free(win);
    fl_free(tk);
    fl_free(tg);
    fl_data_free(d);
    if (rc == 0)
        *out_model = m;
    else
        fl_model_free(m);
    return rc;
}

/* A CA and a server certificate for 127.0.0.1 in <tmp>/tls, made with
 * the openssl command as deploy/make-ca.sh makes them (ECDSA P-256). */
static int make_tls_files(const char *tmp, char *err, size_t errlen)
{
    char cmd[8192];
    if (strchr(tmp, '\'')) {
        snprintf(err, errlen, "temporary directory %s: a quote in the path",
                 tmp);
        return FL_EINVAL;
    }
    int n = snprintf(
        cmd, sizeof cmd,
        "set -e; mkdir -p '%s/tls'; cd '%s/tls'; umask 077; "
        "k() { openssl genpkey -algorithm EC -pkeyopt "
        "ec_paramgen_curve:P-256 -out \"$1\"; }; "
        "k ca.key; "
        "openssl req -new -x509 -key ca.key -sha256 -days 7 "
        "-subj '/CN=flotilla sim CA' "
        "-addext 'basicConstraints=critical,CA:TRUE' "
        "-addext 'keyUsage=critical,keyCertSign,cRLSign' -out ca.crt; "
        "k server.key; "
        "openssl req -new -key server.key -subj /CN=127.0.0.1 -out "
        "server.csr; "
        "printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,"
        "digitalSignature\\nextendedKeyUsage=serverAuth\\n"
        "subjectAltName=IP:127.0.0.1\\n' > server.ext; "
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
        "-CAcreateserial -sha256 -days 7 -extfile server.ext -out server.crt",
        tmp, tmp);
    if (n < 0 || (size_t)n >= sizeof cmd)
        return FL_ETOOBIG;
    char full[8400];
    snprintf(full, sizeof full, "( %s ) >/dev/null 2>&1", cmd);
    int st = system(full);
    if (st != 0) {
        snprintf(err, errlen,
                 "cannot make the TLS certificates with openssl "
                 "(is the openssl command installed?)");
        return FL_ECRYPTO;
    }
    return 0;
}

#define SET(key, ...)                                                          \
    do {                                                                       \
        char v_[PATH_MAX];                                                     \
        snprintf(v_, sizeof v_, __VA_ARGS__);                                  \
        if ((rc = fl_cfg_set(t, sc, key, v_, err, errlen)) < 0)                \
            return rc;                                                         \
    } while (0)

static int server_config(const fl_sim_config_t *cfg, const char *tmp, size_t d,
                         fl_server_config_t *sc, char *err, size_t errlen)
{
    const fl_cfg_table_t *t = fl_server_config_table();
    int rc = fl_server_config_init(sc, err, errlen);
    if (rc < 0)
        return rc;
    static const char *const opt_names[] = {"fedavg", "fedadam", "fedyogi"};
    int64_t n = cfg->cohort;
    SET("state", "%s/server", tmp);
    if (cfg->transport == FL_SIM_TRANSPORT_TLS) {
        /* Every device holds a connection; a few at a time handshake. */
        SET("transport", "tls");
        SET("tls-cert", "%s/tls/server.crt", tmp);
        SET("tls-key", "%s/tls/server.key", tmp);
        SET("max-connections", "%lld", (long long)cfg->clients + 64);
        SET("max-handshakes", "%d", 2 * TLS_CONNECTING_MAX);
        /* every virtual device connects from 127.0.0.1 */
        SET("max-handshakes-per-source", "0");
    } else {
        SET("transport", "tcp"); /* the listener is not used */
    }
    SET("listen", "127.0.0.1");
    SET("port", "0");
    SET("signing-key", "%s/sign.key", tmp);
    SET("init-model", "%s/init.bin", tmp);
    SET("metrics", "false");
    SET("cohort", "%lld", (long long)n);
    SET("over-selection", "1.3");
    SET("min-clients", "%lld", (long long)FL_MAX(3, n * 2 / 3));
    SET("population", "%lld", (long long)cfg->clients);
    SET("rounds", "%lld", (long long)cfg->rounds);
    SET("round-interval-ms", "20");
    SET("accept-ms", "%lld", (long long)cfg->phase_ms);
    SET("train-ms", "%lld", (long long)cfg->phase_ms * 3);
    SET("advertise-ms", "%lld", (long long)cfg->phase_ms);
    SET("share-ms", "%lld", (long long)cfg->phase_ms);
    SET("masked-input-ms", "%lld", (long long)cfg->phase_ms);
    SET("unmask-ms", "%lld", (long long)cfg->phase_ms);
    SET("noise-multiplier", "%.17g", cfg->noise_multiplier);
    SET("clip-norm", "%.17g", cfg->clip_norm);
    SET("delta", "%.17g", cfg->delta);
    SET("quant-bits", "%lld", (long long)cfg->quant_bits);
    SET("rotate", "%s", cfg->rotate ? "true" : "false");
    SET("error-feedback", "%s", cfg->error_feedback ? "true" : "false");
    SET("secagg", "%s", cfg->secagg ? "true" : "false");
    SET("graph", "%s", cfg->graph ? "harary" : "complete");
    SET("local-steps", "%lld", (long long)cfg->local_steps);
    SET("batch-size", "%lld", (long long)cfg->batch_size);
    SET("seq-len", "%lld", (long long)cfg->seq_len);
    SET("client-lr", "%.17g", cfg->client_lr);
    SET("server-optimizer", "%s", opt_names[cfg->server_optimizer]);
    SET("server-lr", "%.17g", cfg->server_lr);
    if (cfg->support == 1) {
        SET("support", "random-k");
        SET("support-size", "%lld",
            (long long)FL_MAX(1, (int64_t)(cfg->support_fraction * (double)d)));
    }
    SET("keep-versions", "2");
    SET("log-level", "warn");
    return fl_server_config_check(sc, err, errlen);
}

int fl_sim_run(const fl_sim_config_t *cfg, char *err, size_t errlen)
{
    fleet_t f;
    fl_sim_corpus_t corpus;
    fl_sim_partition_t part;
    fl_server_config_t sc;
    fl_model_t *init = NULL;
    devctx_t *dctx = NULL;
    int rc;
    char path[PATH_MAX];
    memset(&f, 0, sizeof f);
    memset(&part, 0, sizeof part);
    memset(&sc, 0, sizeof sc);
    fl_sim_corpus_init(&corpus, 0);
    if (cfg->mode == FL_SIM_MODE_CENTRALIZED)
        return fl_sim__central_run(cfg, err, errlen);
    f.cfg = cfg;
    f.loop = uv_default_loop();
    f.t_start = fl_time_mono_s();

    if (cfg->cohort > cfg->clients) {
        snprintf(err, errlen, "cohort %lld is larger than the fleet (%lld)",
                 (long long)cfg->cohort, (long long)cfg->clients);
        return FL_EINVAL;
    }
    snprintf(f.tmp, sizeof f.tmp, "%s/flotilla-sim-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(f.tmp)) {
        snprintf(err, errlen, "cannot make a temporary directory: %s",
                 strerror(errno));
        return FL_EIO;
    }
    /* The tokenizer, and the corpus split into devices and public
     * topics. */
    if ((rc = fl_sim__prepare(cfg, &f.tok, &corpus, &part, err, errlen)) < 0 ||
        (rc = fl_client_tokenizer_ref(f.tok, f.tokref, sizeof f.tokref)) < 0 ||
        (rc = fl_client_model_cache_new(&f.cache)) < 0)
        goto out;
    FL_INFO("data: %zu records in %d topics; %d devices, %d public topics "
            "(%zu records)",
            corpus.n_records, corpus.n_topics, part.n_clients,
            part.n_public_topics, part.n_public);

    /* Pre-training and the server's keys. */
    fl_buf_t pub;
    fl_buf_init(&pub, (size_t)cfg->max_mb << 20);
    rc = records_text(&corpus, part.public_idx, part.n_public, &pub);
    snprintf(path, sizeof path, "%s/init.bin", f.tmp);
    double t0 = fl_time_mono_s();
    if (rc == 0)
        rc = pretrain(cfg, f.tok, &pub, path, &init);
    fl_buf_free(&pub);
    if (rc < 0) {
        snprintf(err, errlen, "pre-training: %s", fl_strerror(rc));
        goto out;
    }
    FL_INFO("pre-trained the initial model on the public topics: %lld steps "
            "in %.1f s, %zu parameters",
            (long long)cfg->pretrain_steps, fl_time_mono_s() - t0,
            fl_model_num_params(init));
    fl_artifact_key_t *sign = NULL;
    char prefix[PATH_MAX];
    snprintf(prefix, sizeof prefix, "%s/sign", f.tmp);
    if ((rc = fl_artifact_key_generate(&sign)) < 0 ||
        (rc = fl_artifact_key_save(sign, prefix)) < 0) {
        fl_artifact_key_free(sign);
        snprintf(err, errlen, "signing key: %s", fl_strerror(rc));
        goto out;
    }
    fl_artifact_key_public(sign, f.signing_pub);
    fl_artifact_key_free(sign);

    /* Devices: identity, text, agent. */
    f.ndev = part.n_clients;
    f.dev = fl_calloc((size_t)f.ndev, sizeof *f.dev);
    dctx = fl_calloc((size_t)f.ndev, sizeof *dctx);
    fl_server_enrol_t *en = NULL;
    if (!f.dev || !dctx || (rc = fl_server_enrol_new(&en)) < 0) {
        rc = rc < 0 ? rc : FL_ENOMEM;
        goto out;
    }
    for (int i = 0; i < f.ndev && rc == 0; i++) {
        device_t *d = &f.dev[i];
        d->idx = i;
        d->f = &f;
        fl_rng_seed(&d->rng, (uint64_t)cfg->seed * 1000003u + (uint64_t)i);
        rc = fl_sim__device_data(cfg, &corpus, &part, i, f.tok, &d->data);
        uint8_t pk[32];
        if (rc == 0 && (rc = fl_artifact_key_generate(&d->id)) == 0) {
            fl_artifact_key_public(d->id, pk);
            rc = fl_server_enrol_add(en, pk, NULL);
        }
        if (rc == 0) {
            char state[PATH_MAX];
            snprintf(state, sizeof state, "%s/device-%d", f.tmp, i);
            dctx[i] = (devctx_t){&f, i};
            fl_client_agent_opts_t ao = {
                .loop = f.loop,
                .state_dir = state,
                .identity = d->id,
                .data = d->data,
                .seed = (uint64_t)cfg->seed + (uint64_t)i,
                .vocab_size = (uint32_t)fl_tokenizer_vocab_size(f.tok),
                .tokenizer_ref = f.tokref,
                .on_event = on_device_event,
                .ctx = &dctx[i],
                .model_cache = f.cache};
            memcpy(ao.signing_pub, f.signing_pub, 32);
            rc = fl_client_agent_new(&ao, &d->agent);
        }
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/server", f.tmp);
        if ((rc = fl_mkdir_p(path, 0700)) == 0) {
            snprintf(path, sizeof path, "%s/server/enrolled", f.tmp);
            rc = fl_server_enrol_save(en, path);
        }
    }
    fl_server_enrol_free(en);
    if (rc < 0) {
        if (!err[0])
            snprintf(err, errlen, "devices: %s", fl_strerror(rc));
        goto out;
    }
    if ((rc = eval_global(&f, init, &f.initial_val)) < 0) {
        snprintf(err, errlen, "the devices hold too little text to validate");
        goto out;
    }
    f.last_val = f.initial_val;

    /* Results and the round-0 row. */
    rm_tree(cfg->out);
    if ((rc = fl_sim_results_new(cfg->out, &f.res)) < 0) {
        snprintf(err, errlen, "%s: %s", cfg->out, fl_strerror(rc));
        goto out;
    }
    fl_sim_round_row_t row0 = {.round = 0,
                               .train_loss = f.initial_val,
                               .val_loss = f.initial_val,
                               .val_ppl = exp(f.initial_val)};
    fl_sim_results_add(f.res, &row0);

    /* The server, and every device connected. */
    if (cfg->transport == FL_SIM_TRANSPORT_TLS) {
        fl_net_tls_opts_t to;
        memset(&to, 0, sizeof to);
        snprintf(path, sizeof path, "%s/tls/ca.crt", f.tmp);
        to.ca_file = path;
        signal(SIGPIPE, SIG_IGN); /* net/ writes with write(2) */
        if ((rc = make_tls_files(f.tmp, err, errlen)) < 0)
            goto out;
        if ((rc = fl_net_tls_client_new(&to, &f.tls)) < 0) {
            snprintf(err, errlen, "TLS client context: %s", fl_strerror(rc));
            goto out;
        }
    }
    if ((rc = server_config(cfg, f.tmp, fl_model_num_params(init), &sc, err,
                            errlen)) < 0 ||
        (rc = fl_server_new(f.loop, &sc, &f.server, err, errlen)) < 0 ||
        (rc = fl_server_start(f.server, err, errlen)) < 0)
        goto out;
    f.port = fl_server_port(f.server);
    uv_idle_init(f.loop, &f.idle);
    f.idle.data = &f;
    if (cfg->transport == FL_SIM_TRANSPORT_TLS) {
        uv_timer_init(f.loop, &f.heartbeat);
        f.heartbeat.data = &f;
        uv_timer_start(&f.heartbeat, on_heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
    }
    for (int i = 0; i < f.ndev; i++)
        connect_device(&f, &f.dev[i]);
    uv_timer_init(f.loop, &f.poll);
    f.poll.data = &f;
    uv_signal_init(f.loop, &f.sigint);
    uv_signal_init(f.loop, &f.sigterm);
    f.sigint.data = f.sigterm.data = &f;
    uv_signal_start(&f.sigint, on_stop_signal, SIGINT);
    uv_signal_start(&f.sigterm, on_stop_signal, SIGTERM);
    uv_timer_start(&f.poll, on_poll, 20, 20);
    f.t_last = fl_time_mono_s();
    FL_INFO("fleet of %d devices, cohort %lld, %lld rounds: secure "
            "aggregation %s, %lld-bit codec, DP noise multiplier %g",
            f.ndev, (long long)cfg->cohort, (long long)cfg->rounds,
            cfg->secagg
                ? (cfg->graph ? "on (Harary graph)" : "on (complete graph)")
                : "off",
            (long long)cfg->quant_bits, cfg->noise_multiplier);
    uv_run(f.loop, UV_RUN_DEFAULT);

    /* Summary. */
    const fl_server_state_t *st = fl_server_state(f.server);
    double wall = fl_time_mono_s() - f.t_start;
    char *js = NULL;
    json_t *j = json_pack(
        "{s:s, s:I, s:i, s:I, s:f, s:f, s:o, s:f, s:b, s:f, s:f, s:I, s:I, "
        "s:s, s:I, s:f}",
        "name", cfg->name, "rounds", (json_int_t)st->round, "clients", f.ndev,
        "cohort", (json_int_t)cfg->cohort, "initial_val_loss", f.initial_val,
        "final_val_loss", f.last_val, "epsilon",
        /* no DP: an infinite epsilon, which JSON writes as null */
        isfinite(st->epsilon) ? json_real(st->epsilon) : json_null(), "delta",
        cfg->delta, "secagg", cfg->secagg, "upload_bytes_per_client_round",
        f.up_rounds ? f.up_total / f.up_rounds : 0.0, "wall_s", wall,
        "rounds_aborted", (json_int_t)st->rounds_aborted, "quant_bits",
        (json_int_t)cfg->quant_bits, "transport",
        cfg->transport ? "tls" : "inproc", "params",
        (json_int_t)fl_model_num_params(init), "noise_multiplier",
        cfg->noise_multiplier);
    if (j) {
        /* Memory: every device shares one copy of each model version
         * (its downloads are deduplicated in the process but counted at
         * their size); what each keeps is its residual and its text. */
        fl_client_model_cache_stats_t cs;
        fl_client_model_cache_stats(f.cache, &cs);
        size_t d = fl_model_num_params(init);
        json_object_set_new(j, "download_bytes",
                            json_string("deduplicated in process"));
        json_object_set_new(
            j, "download_bytes_per_client_round",
            json_real(f.up_rounds ? f.down_total / f.up_rounds : 0.0));
        json_object_set_new(j, "model_cache_hits", json_integer(cs.hits));
        json_object_set_new(j, "vocab_size",
                            json_integer(fl_tokenizer_vocab_size(f.tok)));
        json_object_set_new(j, "tokenizer", json_string(f.tokref));
        json_object_set_new(
            j, "residual_bytes_per_device",
            json_integer(cfg->error_feedback ? (json_int_t)(d * 4) : 0));
        json_object_set_new(j, "peak_rss_mb", json_real(peak_rss_mb()));
        js = json_dumps(j, JSON_INDENT(2));
    } else {
        FL_ERROR("cannot build summary.json");
    }
    json_decref(j);
    if (js) {
        size_t n = strlen(js);
        char *line = fl_malloc(n + 2);
        if (line) {
            memcpy(line, js, n);
            line[n] = '\n';
            line[n + 1] = '\0';
            fl_sim_results_summary(f.res, line);
            fl_free(line);
        }
        free(js);
    }
    snprintf(path, sizeof path, "%s/metrics.csv", cfg->out);
    const char *csv[1] = {path}, *names[1] = {cfg->name};
    int prc = fl_sim_plot(cfg->out, csv, names, 1);
    if (prc < 0)
        FL_WARN("no plots: %s", fl_strerror(prc));
    FL_INFO("done: %llu rounds in %.0f s, validation loss %.4f -> %.4f, "
            "epsilon %.3f, peak memory %.0f MiB",
            (unsigned long long)st->round, wall, f.initial_val, f.last_val,
            st->epsilon, peak_rss_mb());
    rc = f.failed ? FL_EABORTED : 0;
out:
    if (f.dev) {
        for (int i = 0; i < f.ndev; i++) {
            fl_client_agent_free(f.dev[i].agent);
            f.dev[i].agent = NULL;
        }
        uv_run(f.loop, UV_RUN_DEFAULT);
        for (int i = 0; i < f.ndev; i++) {
            fl_data_free(f.dev[i].data);
            fl_artifact_key_free(f.dev[i].id);
        }
    }
    fl_server_free(f.server);
    fl_server_config_free(&sc);
    if (uv_is_active((uv_handle_t *)&f.idle) || f.idle.loop)
        if (!uv_is_closing((uv_handle_t *)&f.idle) && f.idle.loop)
            uv_close((uv_handle_t *)&f.idle, NULL);
    uv_run(f.loop, UV_RUN_DEFAULT);
    fl_net_tls_free(f.tls);
    fl_sim_results_free(f.res);
    fl_free(f.dev);
    fl_free(dctx);
    fl_model_free(init);
    fl_sim_partition_free(&part);
    fl_sim_corpus_free(&corpus);
    fl_tokenizer_free(f.tok);
    fl_client_model_cache_free(f.cache); /* after the agents */
    rm_tree(f.tmp);
    return rc;
}

/* ---- shared with sim/central.c (sim/sim_internal.h) ---- */

int fl_sim__prepare(const fl_sim_config_t *cfg, fl_tokenizer_t **tok,
                    fl_sim_corpus_t *c, fl_sim_partition_t *part, char *err,
                    size_t errlen)
{
    int rc = fl_client_tokenizer(cfg->tokenizer, tok, err, errlen);
    if (rc < 0)
        return rc;
    fl_sim_corpus_free(c);
    if ((rc = load_corpus(cfg, c, err, errlen)) < 0)
        return rc;
    fl_sim_split_t split = {.mode = cfg->split,
                            .alpha = cfg->alpha,
                            .n_clients = (int)cfg->clients,
                            .n_public_topics = (int)cfg->public_topics,
                            .val_fraction = 0,
                            .seed = (uint64_t)cfg->seed};
    if ((rc = fl_sim_partition(c, &split, part)) < 0)
        snprintf(err, errlen, "cannot split the data into %lld devices",
                 (long long)cfg->clients);
    return rc;
}

int fl_sim__device_data(const fl_sim_config_t *cfg, const fl_sim_corpus_t *c,
                        const fl_sim_partition_t *part, int i,
                        const fl_tokenizer_t *tok, fl_data_t **out)
{
    fl_buf_t text;
    fl_buf_init(&text, (size_t)cfg->max_mb << 20);
    int rc = records_text(c, part->train_idx + part->train_off[i],
                          part->train_off[i + 1] - part->train_off[i], &text);
    fl_data_opts_t o;
    fl_data_opts_init(&o);
    o.val_fraction = cfg->val_fraction;
    o.seed = (uint64_t)cfg->seed;
    o.chunk_tokens = (size_t)cfg->seq_len * 2;
    char name[32];
    snprintf(name, sizeof name, "device-%d", i);
    if (rc == 0)
        rc = fl_data_load_text(&o, tok, text.data, text.len, name, out);
    fl_buf_free(&text);
    return rc;
}

int fl_sim__records_text(const fl_sim_corpus_t *c, const size_t *idx, size_t n,
                         fl_buf_t *out)
{
    return records_text(c, idx, n, out);
}

int fl_sim__pretrain(const fl_sim_config_t *cfg, fl_tokenizer_t *tok,
                     const fl_buf_t *public_text, const char *path,
                     fl_model_t **out_model)
{
    return pretrain(cfg, tok, public_text, path, out_model);
}
