/* common/config.c — table-driven configuration: INI files (libinih) and
 * getopt_long flags share one table of options. */
#include "common/common.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CFG_MAX_FILE (1u << 20) /* configuration files are small */

/* Names match with '-' and '_' taken as the same character. */
static int name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x != y)
            return 0;
    }
    return *a == *b;
}

static const fl_cfg_opt_t *find_opt(const fl_cfg_table_t *t, const char *key)
{
    for (size_t i = 0; i < t->nopts; i++)
        if (name_eq(t->opts[i].name, key))
            return &t->opts[i];
    return NULL;
}

static int has_bounds(const fl_cfg_opt_t *o)
{
    return o->min <= o->max;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < FL_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return FL_EFORMAT;
}

/* Index of v among "a|b|c", or -1. */
static int enum_index(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    int idx = 0;
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, v, n) == 0)
            return idx;
        idx++;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* Parses value into the option's field. `why` gets a reason on failure. */
static int set_value(const fl_cfg_opt_t *o, void *obj, const char *value,
                     char *why, size_t whylen)
{
    char *field = (char *)obj + o->offset;
    char *end = NULL;
    switch (o->type) {
    case FL_CFG_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 0);
        if (errno || end == value || *end != '\0') {
            snprintf(why, whylen, "'%s' is not an integer", value);
            return FL_EFORMAT;
        }
        if (has_bounds(o) && ((double)v < o->min || (double)v > o->max)) {
            snprintf(why, whylen, "%lld is outside [%.17g, %.17g]", v, o->min,
                     o->max);
            return FL_ERANGE;
        }
        int64_t tmp = (int64_t)v;
        memcpy(field, &tmp, sizeof tmp);
        break;
    }
    case FL_CFG_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end != '\0' || !isfinite(v)) {
            snprintf(why, whylen, "'%s' is not a number", value);
            return FL_EFORMAT;
        }
        if (has_bounds(o) && (v < o->min || v > o->max)) {
            snprintf(why, whylen, "%g is outside [%g, %g]", v, o->min, o->max);
            return FL_ERANGE;
        }
        memcpy(field, &v, sizeof v);
        break;
    }
    case FL_CFG_BOOL: {
        int v;
        if (parse_bool(value, &v) < 0) {
            snprintf(why, whylen, "'%s' is not a boolean (true/false)", value);
            return FL_EFORMAT;
        }
        memcpy(field, &v, sizeof v);
        break;
    }
    case FL_CFG_STRING: {
        char *old;
        memcpy(&old, field, sizeof old);
        char *dup = fl_strdup(value);
        if (!dup) {
            snprintf(why, whylen, "out of memory");
            return FL_ENOMEM;
        }
        fl_free(old);
        memcpy(field, &dup, sizeof dup);
        break;
    }
    case FL_CFG_ENUM: {
        int v = enum_index(o->choices, value);
        if (v < 0) {
            snprintf(why, whylen, "'%s' is not one of %s", value, o->choices);
            return FL_ERANGE;
        }
        memcpy(field, &v, sizeof v);
        break;
    }
    default:
        FL_ASSERT(0);
    }
    if (o->validate) {
        int rc = o->validate(field, why, whylen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int fl_cfg_set(const fl_cfg_table_t *t, void *obj, const char *key,
               const char *value, char *err, size_t errlen)
{
    const fl_cfg_opt_t *o = find_opt(t, key);
    if (!o) {
        snprintf(err, errlen, "key '%s': unknown key", key);
        return FL_EUNKNOWN_KEY;
    }
    char why[256] = "";
    int rc = set_value(o, obj, value, why, sizeof why);
    if (rc < 0)
        snprintf(err, errlen, "key '%s': %s", o->name, why);
    return rc;
}

int fl_cfg_defaults(const fl_cfg_table_t *t, void *obj, char *err,
                    size_t errlen)
{
    for (size_t i = 0; i < t->nopts; i++) {
        const fl_cfg_opt_t *o = &t->opts[i];
        char *field = (char *)obj + o->offset;
        if (o->def) {
            char why[256] = "";
            int rc = set_value(o, obj, o->def, why, sizeof why);
            if (rc < 0) {
                snprintf(err, errlen, "default of '%s': %s", o->name, why);
                return rc;
            }
            continue;
        }
        switch (o->type) {
        case FL_CFG_INT:
            memset(field, 0, sizeof(int64_t));
            break;
        case FL_CFG_DOUBLE: {
            double z = 0;
            memcpy(field, &z, sizeof z);
            break;
        }
        case FL_CFG_BOOL:
        case FL_CFG_ENUM:
            memset(field, 0, sizeof(int));
            break;
        case FL_CFG_STRING: {
            char *old;
            memcpy(&old, field, sizeof old);
            fl_free(old);
            old = NULL;
            memcpy(field, &old, sizeof old);
            break;
        }
        }
    }
    return 0;
}

void fl_cfg_free(const fl_cfg_table_t *t, void *obj)
{
    for (size_t i = 0; i < t->nopts; i++) {
        if (t->opts[i].type != FL_CFG_STRING)
            continue;
        char *field = (char *)obj + t->opts[i].offset, *p;
        memcpy(&p, field, sizeof p);
        fl_free(p);
        p = NULL;
        memcpy(field, &p, sizeof p);
    }
}

/* ---- INI through libinih, with our own line reader so that every error
 * names its line, and lines too long for inih are refused, not split. */
typedef struct {
    const fl_cfg_table_t *t;
    void *obj;
    const char *name;
    const char *text;
    size_t len, pos;
    int line;     /* number of the line last handed to inih */
    int err_line; /* first error: its line, 0 if none */
    int rc;
    char *err;
    size_t errlen;
} ini_ctx_t;

static void ctx_error(ini_ctx_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ctx_error(ini_ctx_t *c, int rc, const char *fmt, ...)
{
    if (c->err_line)
        return;
    c->err_line = c->line;
    c->rc = rc;
    int n = snprintf(c->err, c->errlen, "%s:%d: ", c->name, c->line);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static char *ini_read_line(char *str, int num, void *stream)
{
    ini_ctx_t *c = stream;
    if (c->pos >= c->len || num < 2)
        return NULL;
    c->line++;
    size_t start = c->pos, end = start;
    while (end < c->len && c->text[end] != '\n')
        end++;
    size_t n = end - start;
    c->pos = end < c->len ? end + 1 : end;
    if (memchr(c->text + start, '\0', n)) {
        ctx_error(c, FL_EFORMAT, "malformed line (NUL byte)");
        n = 0;
    } else if (n + 2 > (size_t)num) {
        ctx_error(c, FL_ETOOBIG, "line longer than %d characters", num - 2);
        n = 0;
    }
    memcpy(str, c->text + start, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

static int on_ini_pair(void *user, const char *section, const char *key,
                       const char *value)
{
    ini_ctx_t *c = user;
    if (c->err_line)
        return 1;
    if (section[0] && !(c->t->section && strcmp(section, c->t->section) == 0)) {
        ctx_error(c, FL_EUNKNOWN_KEY, "key '%s': unknown section [%s]", key,
                  section);
        return 0;
    }
    const fl_cfg_opt_t *o = find_opt(c->t, key);
    if (!o) {
        ctx_error(c, FL_EUNKNOWN_KEY, "key '%s': unknown key", key);
        return 0;
    }
    char why[256] = "";
    int rc = set_value(o, c->obj, value, why, sizeof why);
    if (rc < 0) {
        ctx_error(c, rc, "key '%s': %s", o->name, why);
        return 0;
    }
    return 1;
}

int fl_cfg_load_string(const fl_cfg_table_t *t, void *obj, const char *text,
                       size_t len, const char *name, char *err, size_t errlen)
{
    if (len > CFG_MAX_FILE) {
        snprintf(err, errlen, "%s: larger than %u bytes", name, CFG_MAX_FILE);
        return FL_ETOOBIG;
    }
    ini_ctx_t c = {.t = t,
                   .obj = obj,
                   .name = name,
                   .text = text,
                   .len = len,
                   .err = err,
                   .errlen = errlen};
    int r = ini_parse_stream(ini_read_line, &c, on_ini_pair, &c);
    if (r > 0 && (!c.err_line || r < c.err_line)) {
        c.err_line = 0;
        c.line = r;
        ctx_error(&c, FL_EFORMAT,
                  "malformed line (expected 'key = value' or '[section]')");
    } else if (r < 0 && !c.err_line) {
        snprintf(err, errlen, "%s: cannot parse", name);
        return FL_EIO;
    }
    return c.err_line ? c.rc : 0;
}

int fl_cfg_load_file(const fl_cfg_table_t *t, void *obj, const char *path,
                     char *err, size_t errlen)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = fl_file_read_all(path, CFG_MAX_FILE, &data, &len);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", path, fl_strerror(rc));
        return rc;
    }
    rc = fl_cfg_load_string(t, obj, (const char *)data, len, path, err, errlen);
    fl_free(data);
    return rc;
}

/* ---- command line ---------------------------------------------------------*/
/* Option values start above every character, so that none equals the
 * ":" "?" or "h" getopt_long also returns. */
enum { OPT_HELP = 1, OPT_CONFIG = 2, OPT_BASE = 256 };

int fl_cfg_parse_args(const fl_cfg_table_t *t, void *obj, int argc, char **argv,
                      int *rest, int *help, char *err, size_t errlen)
{
    int rc = 0;
    struct option *lo = NULL;
    char **negs = NULL;
    *help = 0;
    *rest = argc;

    rc = fl_cfg_defaults(t, obj, err, errlen);
    if (rc < 0)
        return rc;

    /* The configuration file first, so that flags override it. */
    for (int i = 1; i < argc; i++) {
        const char *file = NULL;
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '--config' needs a file");
                return FL_EUSAGE;
            }
            file = argv[i + 1];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            file = argv[i] + 9;
        }
        if (file) {
            rc = fl_cfg_load_file(t, obj, file, err, errlen);
            if (rc < 0)
                return rc;
        }
    }

    size_t nlo = 2 * t->nopts + 3;
    lo = fl_calloc(nlo, sizeof *lo);
    negs = fl_calloc(t->nopts + 1, sizeof *negs);
    if (!lo || !negs) {
        rc = FL_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    size_t k = 0;
    lo[k++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    lo[k++] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
    for (size_t i = 0; i < t->nopts; i++) {
        int isbool = t->opts[i].type == FL_CFG_BOOL;
        lo[k++] = (struct option){
            t->opts[i].name, isbool ? optional_argument : required_argument,
            NULL, OPT_BASE + 2 * (int)i};
        if (isbool) {
            size_t n = strlen(t->opts[i].name) + 4;
            negs[i] = fl_malloc(n);
            if (!negs[i]) {
                rc = FL_ENOMEM;
                goto out;
            }
            snprintf(negs[i], n, "no-%s", t->opts[i].name);
            lo[k++] = (struct option){negs[i], no_argument, NULL,
                                      OPT_BASE + 2 * (int)i + 1};
        }
    }

    optind = 0; /* full re-initialisation of GNU getopt */
    opterr = 0;
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, "h", lo, &idx);
        if (c == -1)
            break;
        if (c == 'h' || c == OPT_HELP) {
            *help = 1;
            goto out;
        }
        if (c == OPT_CONFIG)
            continue;
        if (c == '?' || c == ':') {
            const char *bad = argv[optind - 1] ? argv[optind - 1] : "?";
            if (optopt && optopt < OPT_BASE)
                snprintf(err, errlen, "unknown option '-%c'", optopt);
            else if (c == ':' || (optopt >= OPT_BASE))
                snprintf(err, errlen, "option '%s' needs a value", bad);
            else
                snprintf(err, errlen, "unknown option '%s'", bad);
            rc = FL_EUSAGE;
            goto out;
        }
        size_t i = (size_t)(c - OPT_BASE) / 2;
        const fl_cfg_opt_t *o = &t->opts[i];
        const char *val = optarg;
        if (o->type == FL_CFG_BOOL)
            val = ((c - OPT_BASE) & 1) ? "false" : (optarg ? optarg : "true");
        char why[256] = "";
        rc = set_value(o, obj, val, why, sizeof why);
        if (rc < 0) {
            snprintf(err, errlen, "option '--%s': %s", o->name, why);
            goto out;
        }
    }
    *rest = optind;
out:
    if (negs)
        for (size_t i = 0; i < t->nopts; i++)
            fl_free(negs[i]);
    fl_free(negs);
    fl_free(lo);
    return rc;
}

void fl_cfg_print_help(const fl_cfg_table_t *t, FILE *out)
{
    fprintf(out,
            "Options (also accepted as 'name = value' in --config FILE):\n");
    fprintf(out, "  %-26s %s\n", "--config FILE",
            "read options from an INI file");
    fprintf(out, "  %-26s %s\n", "--help", "show this help");
    for (size_t i = 0; i < t->nopts; i++) {
        const fl_cfg_opt_t *o = &t->opts[i];
        char flag[64];
        const char *arg = o->type == FL_CFG_INT      ? " N"
                          : o->type == FL_CFG_DOUBLE ? " X"
                          : o->type == FL_CFG_BOOL   ? ""
                          : o->type == FL_CFG_ENUM   ? " CHOICE"
                                                     : " TEXT";
        snprintf(flag, sizeof flag, "--%s%s", o->name, arg);
        fprintf(out, "  %-26s %s", flag, o->help ? o->help : "");
        if (o->type == FL_CFG_ENUM)
            fprintf(out, " (%s)", o->choices);
        if (o->def)
            fprintf(out, " [default: %s]", o->def);
        fputc('\n', out);
    }
}
