/* sim/partition.c — cutting a corpus into records and records into
 * virtual clients (by topic, or Dirichlet over clients per topic). */
#include "sim/sim.h"

#include <math.h>
#include <string.h>

void fl_sim_corpus_init(fl_sim_corpus_t *c, size_t max_bytes)
{
    memset(c, 0, sizeof *c);
    fl_buf_init(&c->text, max_bytes);
}

void fl_sim_corpus_free(fl_sim_corpus_t *c)
{
    if (!c)
        return;
    fl_buf_free(&c->text);
    fl_free(c->records);
    for (int i = 0; i < c->n_topics; i++)
        fl_free(c->topics[i]);
    fl_free(c->topics);
    memset(c, 0, sizeof *c);
}

static int add_record(fl_sim_corpus_t *c, const char *p, size_t n, int topic)
{
    /* Trim blank lines around the record. */
    while (n > 0 && (p[0] == '\n' || p[0] == '\r'))
        p++, n--;
    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    if (n == 0)
        return 0;
    if (c->n_records == c->cap_records) {
        size_t cap = c->cap_records ? 2 * c->cap_records : 256;
        fl_sim_record_t *r = fl_realloc(c->records, cap * sizeof *r);
        if (!r)
            return FL_ENOMEM;
        c->records = r;
        c->cap_records = cap;
    }
    size_t off = c->text.len;
    int rc = fl_buf_append(&c->text, p, n);
    if (rc == 0)
        rc = fl_buf_append_u8(&c->text, '\n');
    if (rc < 0)
        return rc;
    c->records[c->n_records++] = (fl_sim_record_t){off, n + 1, topic};
    return 0;
}

/* Is the line [p, p+n) a separator in this mode? */
static int is_separator(const char *p, size_t n, int percent_mode)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    return percent_mode ? (n == 1 && p[0] == '%') : n == 0;
}

int fl_sim_corpus_add_topic(fl_sim_corpus_t *c, const char *name,
                            const char *text, size_t len)
{
    char **t = fl_realloc(c->topics, (size_t)(c->n_topics + 1) * sizeof *t);
    if (!t)
        return FL_ENOMEM;
    c->topics = t;
    if (!(c->topics[c->n_topics] = fl_strdup(name)))
        return FL_ENOMEM;
    int topic = c->n_topics++;

    /* The fortune format when any line is a lone '%'. */
    int percent = 0;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        if (is_separator(text + i, e - i, 1)) {
            percent = 1;
            break;
        }
        i = e + 1;
    }
    size_t start = 0;
    for (size_t i = 0; i <= len;) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        int sep = is_separator(text + i, e - i, percent);
        if (e >= len || sep) {
            size_t end = sep ? i : len;
            int rc = add_record(c, text + start, end - start, topic);
            if (rc < 0)
                return rc;
            start = e + 1;
        }
        i = e + 1;
    }
    return 0;
}

/* ---- partition ---- */
static void shuffle(size_t *a, size_t n, fl_rng_t *r)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fl_rng_below(r, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* Gamma(shape, 1) by Marsaglia and Tsang; shape < 1 through the boost
 * Gamma(a) = Gamma(a + 1) * U^(1/a). */
static double gamma_draw(fl_rng_t *r, double shape)
{
    if (shape < 1.0) {
        double u = fl_rng_uniform(r);
        return gamma_draw(r, shape + 1.0) *
               pow(u > 0 ? u : 1e-300, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = fl_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0)
            continue;
        v = v * v * v;
        double u = fl_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x)
            return d * v;
        if (log(u > 0 ? u : 1e-300) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v;
    }
}

void fl_sim_partition_free(fl_sim_partition_t *p)
{
    if (!p)
        return;
    fl_free(p->train_off);
    fl_free(p->train_idx);
    fl_free(p->val_off);
    fl_free(p->val_idx);
    fl_free(p->client_topic);
    fl_free(p->public_idx);
    fl_free(p->public_topics);
    memset(p, 0, sizeof *p);
}

/* Records of each topic, shuffled: by_topic[t] has count[t] entries. */
typedef struct {
    size_t **idx;
    size_t *count;
} topic_lists_t;

static void topic_lists_free(topic_lists_t *tl, int n)
{
    if (tl->idx)
        for (int t = 0; t < n; t++)
            fl_free(tl->idx[t]);
    fl_free(tl->idx);
    fl_free(tl->count);
}

int fl_sim_partition(const fl_sim_corpus_t *c, const fl_sim_split_t *cfg,
                     fl_sim_partition_t *out)
{
    int rc = 0, nt = c->n_topics, n = cfg->n_clients;
    fl_rng_t rng;
    topic_lists_t tl = {0};
    int *order = NULL, *is_public = NULL;
    size_t **cl = NULL, *cl_len = NULL, *cl_cap = NULL;
    double *share = NULL;
    memset(out, 0, sizeof *out);

    if (n < 1 || nt < 1 || cfg->n_public_topics < 0 ||
        cfg->n_public_topics >= nt || cfg->val_fraction < 0 ||
        cfg->val_fraction > 0.9 ||
        (cfg->mode == FL_SIM_SPLIT_DIRICHLET && !(cfg->alpha > 0)) ||
        (cfg->mode != FL_SIM_SPLIT_TOPIC &&
         cfg->mode != FL_SIM_SPLIT_DIRICHLET))
        return FL_EINVAL;
    fl_rng_seed(&rng, cfg->seed);

    tl.idx = fl_calloc((size_t)nt, sizeof *tl.idx);
    tl.count = fl_calloc((size_t)nt, sizeof *tl.count);
    order = fl_calloc((size_t)nt, sizeof *order);
    is_public = fl_calloc((size_t)nt, sizeof *is_public);
    cl = fl_calloc((size_t)n, sizeof *cl);
    cl_len = fl_calloc((size_t)n, sizeof *cl_len);
    cl_cap = fl_calloc((size_t)n, sizeof *cl_cap);
    share = fl_calloc((size_t)n, sizeof *share);
    out->n_clients = n;
    out->client_topic = fl_calloc((size_t)n, sizeof *out->client_topic);
    out->public_topics = fl_calloc((size_t)nt, sizeof *out->public_topics);
    out->public_idx = fl_calloc(c->n_records + 1, sizeof *out->public_idx);
    if (!tl.idx || !tl.count || !order || !is_public || !cl || !cl_len ||
        !cl_cap || !share || !out->client_topic || !out->public_topics ||
        !out->public_idx) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < c->n_records; i++)
        tl.count[c->records[i].topic]++;
    for (int t = 0; t < nt; t++) {
        tl.idx[t] = fl_calloc(tl.count[t] + 1, sizeof(size_t));
        if (!tl.idx[t]) {
            rc = FL_ENOMEM;
            goto out;
        }
        tl.count[t] = 0;
    }
    for (size_t i = 0; i < c->n_records; i++) {
        int t = c->records[i].topic;
        tl.idx[t][tl.count[t]++] = i;
    }
    for (int t = 0; t < nt; t++)
        shuffle(tl.idx[t], tl.count[t], &rng);

    /* Public topics: a seeded choice among the topics. */
    for (int t = 0; t < nt; t++)
        order[t] = t;
    for (int i = nt; i > 1; i--) {
        int j = (int)fl_rng_below(&rng, (uint64_t)i), tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
    for (int k = 0; k < cfg->n_public_topics; k++) {
        int t = order[k];
        is_public[t] = 1;
        out->public_topics[out->n_public_topics++] = t;
        memcpy(out->public_idx + out->n_public, tl.idx[t],
               tl.count[t] * sizeof(size_t));
        out->n_public += tl.count[t];
    }

    /* Records to clients. */
    for (int i = 0; i < n; i++)
        out->client_topic[i] = -1;
#define PUSH(client, rec)                                                      \
    do {                                                                       \
        int cc_ = (client);                                                    \
        if (cl_len[cc_] == cl_cap[cc_]) {                                      \
            size_t nc_ = cl_cap[cc_] ? 2 * cl_cap[cc_] : 16;                   \
            size_t *p_ = fl_realloc(cl[cc_], nc_ * sizeof *p_);                \
            if (!p_) {                                                         \
                rc = FL_ENOMEM;                                                \
                goto out;                                                      \
            }                                                                  \
            cl[cc_] = p_;                                                      \
            cl_cap[cc_] = nc_;                                                 \
        }                                                                      \
        cl[cc_][cl_len[cc_]++] = (rec);                                        \
    } while (0)

    if (cfg->mode == FL_SIM_SPLIT_TOPIC) {
        /* Clients go to the private topics in proportion to their records
         * (largest remainder), at least one per topic while clients last;
         * a topic's records are dealt evenly among its clients. */
        int np = nt - cfg->n_public_topics, *per = NULL;
        size_t total = 0;
        per = fl_calloc((size_t)nt, sizeof *per);
        if (!per) {
            rc = FL_ENOMEM;
            goto out;
        }
        for (int t = 0; t < nt; t++)
            if (!is_public[t])
                total += tl.count[t];
        int given = 0;
        if (n >= np) {
            for (int t = 0; t < nt; t++)
                if (!is_public[t] && tl.count[t] > 0)
                    per[t] = 1, given++;
        }
        while (given < n) { /* next client to the most records per client */
            int best = -1;
            double best_load = -1;
            for (int t = 0; t < nt; t++) {
                if (is_public[t] || tl.count[t] == 0)
                    continue;
                double load = (double)tl.count[t] / (per[t] + 1);
                if (load > best_load)
                    best_load = load, best = t;
            }
            if (best < 0)
                break;
            per[best]++;
            given++;
        }
        (void)total;
        int client = 0;
        for (int t = 0; t < nt && client < n; t++) {
            if (per[t] == 0)
                continue;
            for (size_t k = 0; k < tl.count[t]; k++)
                PUSH(client + (int)(k % (size_t)per[t]), tl.idx[t][k]);
            for (int k = 0; k < per[t]; k++)
                out->client_topic[client + k] = t;
            client += per[t];
        }
        fl_free(per);
    } else {
        /* Hsu et al. (2019): for each topic, shares q ~ Dir(alpha * 1_n)
         * over the clients; the topic's records are dealt by q. */
        for (int t = 0; t < nt; t++) {
            if (is_public[t] || tl.count[t] == 0)
                continue;
            double sum = 0;
            for (int i = 0; i < n; i++)
                sum += share[i] = gamma_draw(&rng, cfg->alpha);
            if (!(sum > 0)) {
                for (int i = 0; i < n; i++)
                    share[i] = 1.0;
                sum = n;
            }
            /* Cumulative boundaries, so the counts sum exactly. */
            double acc = 0;
            size_t k = 0;
            for (int i = 0; i < n; i++) {
                acc += share[i] / sum;
                size_t upto =
                    i == n - 1 ? tl.count[t] : (size_t)floor(acc * tl.count[t]);
                for (; k < upto && k < tl.count[t]; k++)
                    PUSH(i, tl.idx[t][k]);
            }
        }
    }
#undef PUSH

    /* Each client's records: shuffled, the last val_fraction for
     * validation (at least one when the client has two or more). */
    out->train_off = fl_calloc((size_t)n + 1, sizeof(size_t));
    out->val_off = fl_calloc((size_t)n + 1, sizeof(size_t));
    out->train_idx = fl_calloc(c->n_records + 1, sizeof(size_t));
    out->val_idx = fl_calloc(c->n_records + 1, sizeof(size_t));
    if (!out->train_off || !out->val_off || !out->train_idx || !out->val_idx) {
        rc = FL_ENOMEM;
        goto out;
    }
    size_t nt_off = 0, nv_off = 0;
    for (int i = 0; i < n; i++) {
        shuffle(cl[i], cl_len[i], &rng);
        size_t nv = (size_t)ceil(cfg->val_fraction * (double)cl_len[i]);
        if (cfg->val_fraction > 0 && nv == 0 && cl_len[i] >= 2)
            nv = 1;
        if (nv >= cl_len[i] && cl_len[i] > 0)
            nv = cl_len[i] - 1;
        size_t ntr = cl_len[i] - nv;
        if (ntr)
            memcpy(out->train_idx + nt_off, cl[i], ntr * sizeof(size_t));
        if (nv)
            memcpy(out->val_idx + nv_off, cl[i] + ntr, nv * sizeof(size_t));
        nt_off += ntr;
        nv_off += nv;
        out->train_off[i + 1] = nt_off;
        out->val_off[i + 1] = nv_off;
    }
out:
    if (cl)
        for (int i = 0; i < n; i++)
            fl_free(cl[i]);
    fl_free(cl);
    fl_free(cl_len);
    fl_free(cl_cap);
    fl_free(share);
    fl_free(order);
    fl_free(is_public);
    topic_lists_free(&tl, nt);
    if (rc < 0)
        fl_sim_partition_free(out);
    return rc;
}
