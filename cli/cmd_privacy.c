/* cli/cmd_privacy.c — flotilla privacy: (ε, δ) of a DP training plan, or
 * the noise multiplier a target ε needs (server/dp.h does the math). */
#include "cli/cli.h"
#include "server/dp.h"

#include <jansson.h>
#include <math.h>

typedef struct {
    double q;
    double noise;
    int64_t rounds;
    double delta;
    double target_epsilon;
    int json;
} privacy_opts_t;

#define OPT(f) offsetof(privacy_opts_t, f)
static const fl_cfg_opt_t opts[] = {
    {"q", FL_CFG_DOUBLE, OPT(q), NULL, 0, 1, NULL, NULL,
     "sampling rate per round: cohort / population (required)"},
    {"noise", FL_CFG_DOUBLE, OPT(noise), NULL, 0, 1e6, NULL, NULL,
     "noise multiplier z = noise std / sensitivity S'"},
    {"rounds", FL_CFG_INT, OPT(rounds), NULL, 1, 1e12, NULL, NULL,
     "number of rounds (required)"},
    {"delta", FL_CFG_DOUBLE, OPT(delta), NULL, 0, 1, NULL, NULL,
     "target delta, in (0, 1) (required)"},
    {"target-epsilon", FL_CFG_DOUBLE, OPT(target_epsilon), NULL, 0, 1e9, NULL,
     NULL, "print the noise multiplier that reaches this epsilon instead"},
    {"json", FL_CFG_BOOL, OPT(json), "false", 1, 0, NULL, NULL,
     "print one JSON object"},
};
#undef OPT
static const fl_cfg_table_t table = {opts, FL_ARRAY_LEN(opts), "privacy"};

static const char usage[] =
    "privacy --q Q --rounds T --delta D (--noise Z | --target-epsilon E) "
    "[--json]\n\n"
    "Differential privacy of T rounds of the Poisson-sampled Gaussian\n"
    "mechanism (user-level, q = cohort / population) by RDP accounting over\n"
    "the orders 1.1..10.9, 11..63, 128..1024 with the conversion of Balle et\n"
    "al. (2020), as in Google's dp_accounting.";

static json_t *json_num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

int fl_cmd_privacy(int argc, char **argv)
{
    privacy_opts_t o = {0};
    int rest,
        rc = fl_cli_parse("privacy", usage, &table, &o, argc, argv, &rest);
    if (rc >= 0)
        return rc;
    const char *missing = !(o.q > 0)     ? "--q (in (0, 1])"
                          : o.rounds < 1 ? "--rounds"
                          : !(o.delta > 0 && o.delta < 1)
                              ? "--delta (in (0, 1))"
                          : (o.noise > 0) == (o.target_epsilon > 0)
                              ? "exactly one of --noise and --target-epsilon"
                              : NULL;
    if (missing || rest < argc) {
        if (missing)
            fl_cli_error("privacy", "needs %s", missing);
        else
            fl_cli_error("privacy", "unexpected argument '%s'", argv[rest]);
        fprintf(stderr, "try 'flotilla privacy --help'\n");
        return FL_EXIT_USAGE;
    }
    double z = o.noise, eps = 0, order = 0;
    if (o.target_epsilon > 0) {
        rc = fl_dp_noise_for_epsilon(o.q, (uint64_t)o.rounds, o.delta,
                                     o.target_epsilon, &z);
        if (rc < 0) {
            fl_cli_error("privacy",
                         "no noise multiplier up to 1e6 reaches "
                         "epsilon %g: %s",
                         o.target_epsilon, fl_strerror(rc));
            return FL_EXIT_FAIL;
        }
    }
    rc = fl_dp_epsilon(o.q, z, (uint64_t)o.rounds, o.delta, &eps, &order);
    if (rc < 0) {
        fl_cli_error("privacy", "%s", fl_strerror(rc));
        return FL_EXIT_FAIL;
    }
    if (o.json) {
        json_t *j = json_object();
        if (!j)
            return FL_EXIT_FAIL;
        json_object_set_new(j, "q", json_real(o.q));
        json_object_set_new(j, "noise_multiplier", json_real(z));
        json_object_set_new(j, "rounds", json_integer(o.rounds));
        json_object_set_new(j, "delta", json_real(o.delta));
        json_object_set_new(j, "epsilon", json_num(eps));
        json_object_set_new(j, "order", json_real(order));
        if (o.target_epsilon > 0)
            json_object_set_new(j, "target_epsilon",
                                json_real(o.target_epsilon));
        rc = json_dumpf(j, stdout, JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(j);
        return rc == 0 ? FL_EXIT_OK : FL_EXIT_FAIL;
    }
    if (o.target_epsilon > 0)
        printf("noise multiplier %.6g reaches epsilon %.4g (target %g)\n", z,
               eps, o.target_epsilon);
    printf("epsilon = %.4g at delta = %g after %lld rounds (q = %g, noise "
           "multiplier = %g; best RDP order %g)\n",
           eps, o.delta, (long long)o.rounds, o.q, z, order);
    return FL_EXIT_OK;
}
