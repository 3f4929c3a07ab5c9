/*
 * secagg/graph.c — the neighbour graph (complete, or a random Harary graph
 * as in SecAgg+) and the finder of its degree and threshold.
 */
#include "secagg/secagg_int.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration check ----------------------------------------------------
 */

int fl_secagg_config_check(const Flotilla__SecAggConfig *c)
{
    if (c == NULL)
        return FL_EINVAL;
    size_t n = c->n_participants;
    if (n < 3 || n > FL_SECAGG_MAX_CLIENTS)
        return FL_ERANGE;
    if (c->ring_bits < 1 || c->ring_bits > 32)
        return FL_ERANGE;
    if (c->prg != FLOTILLA__MASK_PRG__MASK_PRG_AES256_CTR &&
        c->prg != FLOTILLA__MASK_PRG__MASK_PRG_CHACHA20)
        return FL_EINVAL;
    if (c->graph == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE) {
        if (c->degree != n - 1)
            return FL_EINVAL;
    } else if (c->graph == FLOTILLA__GRAPH_KIND__GRAPH_HARARY) {
        if (c->degree < 2 || c->degree > n - 2 || c->degree % 2 != 0)
            return FL_EINVAL;
    } else {
        return FL_EINVAL;
    }
    if (c->threshold < 2 || c->threshold > c->degree)
        return FL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (c->participants[i] == 0)
            return FL_EINVAL;
    return 0; /* duplicates are found by sa_graph_init */
}

/* ---- the graph
 * ------------------------------------------------------------------ */

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A ChaCha20 keystream of 32-bit words, for the shuffle. */
typedef struct {
    uint8_t key[32];
    uint8_t block[64];
    uint32_t counter;
    unsigned used;
} word_stream_t;

static uint32_t next_word(word_stream_t *w)
{
    static const uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {0};
    if (w->used == 64) {
        memset(w->block, 0, sizeof w->block);
        crypto_stream_chacha20_ietf_xor_ic(w->block, w->block, 64, nonce,
                                           w->counter++, w->key);
        w->used = 0;
    }
    uint32_t v = (uint32_t)w->block[w->used] |
                 (uint32_t)w->block[w->used + 1] << 8 |
                 (uint32_t)w->block[w->used + 2] << 16 |
                 (uint32_t)w->block[w->used + 3] << 24;
    w->used += 4;
    return v;
}

static uint32_t uniform_below(word_stream_t *w, uint32_t bound) /* bound>0 */
{
    uint64_t lim = (1ull << 32) - ((1ull << 32) % bound);
    for (;;) {
        uint32_t v = next_word(w);
        if (v < lim)
            return v % bound;
    }
}

int sa_graph_init(sa_graph_t *g, const Flotilla__SecAggConfig *c)
{
    int rc;
    memset(g, 0, sizeof *g);
    if ((rc = fl_secagg_config_check(c)) != 0)
        return rc;
    if ((rc = sa_ensure_sodium()) != 0)
        return rc;
    g->n = (uint32_t)c->n_participants;
    g->k = c->degree;
    g->kind = c->graph;
    g->ids = fl_calloc(g->n, sizeof *g->ids);
    g->lookup = fl_calloc(g->n, sizeof *g->lookup);
    if (g->ids == NULL || g->lookup == NULL) {
        rc = FL_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < g->n; i++) {
        g->ids[i] = c->participants[i];
        g->lookup[i] = (uint64_t)c->participants[i] << 32 | i;
    }
    qsort(g->lookup, g->n, sizeof *g->lookup, u64_cmp);
    for (uint32_t i = 1; i < g->n; i++)
        if (g->lookup[i] >> 32 == g->lookup[i - 1] >> 32) {
            rc = FL_EDUPLICATE;
            goto out;
        }
    if (g->kind == FLOTILLA__GRAPH_KIND__GRAPH_HARARY) {
        static const char label[] = "flotilla-secagg-graph-v1";
        word_stream_t w;
        uint8_t seed[8];
        g->ring = fl_calloc(g->n, sizeof *g->ring);
        g->pos = fl_calloc(g->n, sizeof *g->pos);
        if (g->ring == NULL || g->pos == NULL) {
            rc = FL_ENOMEM;
            goto out;
        }
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, 32);
        crypto_generichash_update(&st, (const uint8_t *)label,
                                  sizeof label - 1);
        sa_be64(seed, c->graph_seed);
        crypto_generichash_update(&st, seed, 8);
        crypto_generichash_final(&st, w.key, 32);
        w.counter = 0;
        w.used = 64;
        for (uint32_t i = 0; i < g->n; i++)
            g->ring[i] = i;
        for (uint32_t i = g->n - 1; i > 0; i--) {
            uint32_t j = uniform_below(&w, i + 1);
            uint32_t tmp = g->ring[i];
            g->ring[i] = g->ring[j];
            g->ring[j] = tmp;
        }
        for (uint32_t p = 0; p < g->n; p++)
            g->pos[g->ring[p]] = p;
    }
    rc = 0;
out:
    if (rc != 0)
        sa_graph_free(g);
    return rc;
}

void sa_graph_free(sa_graph_t *g)
{
    fl_free(g->ids);
    fl_free(g->lookup);
    fl_free(g->ring);
    fl_free(g->pos);
    memset(g, 0, sizeof *g);
}

long sa_graph_index(const sa_graph_t *g, uint32_t id)
{
    size_t lo = 0, hi = g->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t v = (uint32_t)(g->lookup[mid] >> 32);
        if (v == id)
            return (long)(uint32_t)g->lookup[mid];
        if (v < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

uint32_t sa_graph_neighbors(const sa_graph_t *g, uint32_t a, uint32_t *out)
{
    if (g->kind == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE) {
        uint32_t m = 0;
        for (uint32_t b = 0; b < g->n; b++)
            if (b != a)
                out[m++] = b;
        return m;
    }
    uint32_t h = g->k / 2, p = g->pos[a];
    for (uint32_t i = 0; i < h; i++) {
        out[i] = g->ring[(p + 1 + i) % g->n];
        out[h + i] = g->ring[(p + g->n - 1 - i) % g->n];
    }
    return g->k;
}

long sa_graph_slot(const sa_graph_t *g, uint32_t a, uint32_t b)
{
    if (a == b || a >= g->n || b >= g->n)
        return -1;
    if (g->kind == FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE)
        return b < a ? (long)b : (long)b - 1;
    uint32_t h = g->k / 2;
    uint32_t d = (g->pos[b] + g->n - g->pos[a]) % g->n; /* 1..n-1 */
    if (d <= h)
        return (long)d - 1;
    if (g->n - d <= h)
        return (long)h + (long)(g->n - d) - 1;
    return -1;
}

int fl_secagg_graph_neighbors(const Flotilla__SecAggConfig *c, uint32_t id,
                              uint32_t *out, size_t outlen)
{
    sa_graph_t g;
    int rc = sa_graph_init(&g, c);
    if (rc != 0)
        return rc;
    long a = sa_graph_index(&g, id);
    if (a < 0) {
        rc = FL_ENOENT;
    } else if (outlen < g.k) {
        rc = FL_ETOOBIG;
    } else {
        uint32_t m = sa_graph_neighbors(&g, (uint32_t)a, out);
        for (uint32_t i = 0; i < m; i++)
            out[i] = g.ids[out[i]];
        rc = (int)m;
    }
    sa_graph_free(&g);
    return rc;
}

/* ---- the parameter finder
 * ------------------------------------------------------ */

#define SIGMA 40.0 /* statistical security */
#define ETA   20.0 /* correctness */
#define EPS   1e-14

static double lchoose(double n, double k)
{
    return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1);
}

/* log Pr[X = x] for X ~ Hypergeometric(population N, successes K, draws m). */
static double hyper_lpmf(uint32_t N, uint32_t K, uint32_t m, uint32_t x)
{
    if (x > K || x > m || m - x > N - K)
        return -INFINITY;
    return lchoose(K, x) + lchoose(N - K, m - x) - lchoose(N, m);
}

static double log_sum(double a, double b)
{
    if (a == -INFINITY)
        return b;
    if (b == -INFINITY)
        return a;
    double hi = FL_MAX(a, b), lo = FL_MIN(a, b);
    return hi + log1p(exp(lo - hi));
}

/* log Pr[the Harary ring H(n, k) loses connectivity among the good nodes]:
 * disconnecting it takes k/2 consecutive bad nodes in two disjoint places;
 * a union bound over the n(n-k-1)/2 pairs of places, each needing k given
 * nodes bad among `bad` bad ones drawn without replacement. */
static double log_p_disconnected(uint32_t n, uint32_t k, uint32_t bad)
{
    if (k > bad)
        return -INFINITY;
    double pairs = log((double)n) + log((double)(n - k - 1)) - log(2.0);
    return pairs + lgamma(bad + 1.0) + lgamma(n - k + 1.0) - lgamma(n + 1.0) -
           lgamma(bad - k + 1.0);
}

static int harary_check(uint32_t n, double gamma, double delta, uint32_t k,
                        uint32_t *t_out)
{
    uint32_t corrupt = (uint32_t)floor((gamma + EPS) * n);
    uint32_t dropped = (uint32_t)floor((delta + EPS) * n);
    uint32_t alive = (uint32_t)ceil((1.0 - delta - EPS) * n);
    const double ln2 = log(2.0);
    const double sec = -(SIGMA + 1) * ln2; /* sigma split over two events */
    if (log_p_disconnected(n, k, corrupt + dropped) >= sec)
        return 0;
    /* smallest t with Pr[#corrupt neighbours >= t] <= 2^-(sigma+1) / n */
    double lim_sec = sec - log((double)n);
    double lim_cor = -ETA * ln2 - log((double)n);
    uint32_t t_min = k + 1;
    double tail = -INFINITY; /* log Pr[X >= t], built from the top */
    for (uint32_t t = k + 1; t-- > 0;) {
        double tail_t = log_sum(tail, hyper_lpmf(n, corrupt, k, t));
        if (tail_t > lim_sec)
            break;
        tail = tail_t;
        t_min = t;
    }
    /* largest t with Pr[#surviving neighbours < t] <= 2^-eta / n */
    uint32_t t_max = 0;
    double head = -INFINITY; /* log Pr[Y < t] */
    for (uint32_t t = 1; t <= k; t++) {
        head = log_sum(head, hyper_lpmf(n, alive, k, t - 1));
        if (head > lim_cor)
            break;
        t_max = t;
    }
    uint32_t t = FL_MAX(t_min, 2u);
    if (t > t_max)
        return 0;
    *t_out = t;
    return 1;
}

static int rates_ok(uint32_t n, double gamma, double delta)
{
    return n >= 3 && n <= FL_SECAGG_MAX_CLIENTS && gamma >= 0 && gamma < 1 &&
           delta >= 0 && delta < 1 && gamma + delta <= 0.9;
}

int fl_secagg_params_harary(uint32_t n, double gamma, double delta,
                            fl_secagg_params_t *out)
{
    if (!rates_ok(n, gamma, delta))
        return FL_EINVAL;
    for (uint32_t k = 2; k <= n - 2; k += 2) {
        uint32_t t;
        if (harary_check(n, gamma, delta, k, &t)) {
            out->graph = FLOTILLA__GRAPH_KIND__GRAPH_HARARY;
            out->degree = k;
            out->threshold = t;
            return 0;
        }
    }
    return FL_ERANGE;
}

int fl_secagg_params_find(uint32_t n, double gamma, double delta,
                          fl_secagg_params_t *out)
{
    if (!rates_ok(n, gamma, delta))
        return FL_EINVAL;
    /* Small cohorts take the complete graph: a Harary graph saves little
     * there and its thresholds become tiny. */
    if (n > FL_SECAGG_SMALL_COHORT &&
        fl_secagg_params_harary(n, gamma, delta, out) == 0 &&
        out->degree < n / 2)
        return 0;
    /* The complete graph: a majority of the n - 1 neighbours. It hides the
     * secrets from the corrupt clients when gamma * n < t and reconstructs
     * when the survivors' neighbours number at least t. */
    uint32_t t = FL_MAX(2u, (n - 1) / 2 + 1);
    uint32_t corrupt = (uint32_t)floor((gamma + EPS) * n);
    uint32_t alive = (uint32_t)ceil((1.0 - delta - EPS) * n);
    if (corrupt >= t || alive < t + 1)
        return FL_ERANGE;
    out->graph = FLOTILLA__GRAPH_KIND__GRAPH_COMPLETE;
    out->degree = n - 1;
    out->threshold = t;
    return 0;
}
