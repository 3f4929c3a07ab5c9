/* client/eligibility.c — may this device train now? Time windows, mains
 * power and load. */
#include "client/client.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "HH:MM" at p; advances p. */
static int parse_hhmm(const char **p, int *minutes)
{
    const char *s = *p;
    if (!(s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9' &&
          s[2] == ':' && s[3] >= '0' && s[3] <= '9' && s[4] >= '0' &&
          s[4] <= '9'))
        return FL_EFORMAT;
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 24 || m > 59 || (h == 24 && m != 0))
        return FL_EFORMAT;
    *minutes = h * 60 + m;
    *p = s + 5;
    return 0;
}

int fl_client_windows_parse(const char *s, fl_client_windows_t *out)
{
    memset(out, 0, sizeof *out);
    if (!s || !*s)
        return 0;
    const char *p = s;
    for (;;) {
        int a, b;
        while (*p == ' ')
            p++;
        if (parse_hhmm(&p, &a) < 0 || *p++ != '-' || parse_hhmm(&p, &b) < 0)
            return FL_EFORMAT;
        if (out->n == FL_CLIENT_MAX_WINDOWS)
            return FL_ETOOBIG;
        out->w[out->n].start = a;
        out->w[out->n].end = b;
        out->n++;
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return 0;
        if (*p++ != ',')
            return FL_EFORMAT;
    }
}

int fl_client_windows_contains(const fl_client_windows_t *w, int minute)
{
    if (w->n == 0)
        return 1;
    for (int i = 0; i < w->n; i++) {
        int a = w->w[i].start, b = w->w[i].end;
        if (a <= b ? (minute >= a && minute < b) : (minute >= a || minute < b))
            return 1;
    }
    return 0;
}

/* Reads a short sysfs attribute into buf (newline stripped). */
static int read_attr(const char *dir, const char *name, char *buf, size_t len)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return FL_ETOOBIG;
    FILE *f = fopen(path, "r");
    if (!f)
        return FL_ENOENT;
    if (!fgets(buf, (int)len, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

int fl_client_on_ac_power(const char *sysfs, int *on_ac)
{
    char base[PATH_MAX], dir[PATH_MAX], type[32], online[8];
    int have_battery = 0, mains_online = 0;
    if (snprintf(base, sizeof base, "%s/class/power_supply", sysfs) >=
        (int)sizeof base)
        return FL_ETOOBIG;
    DIR *d = opendir(base);
    if (!d) { /* no power-supply class: not a battery device */
        *on_ac = 1;
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (snprintf(dir, sizeof dir, "%s/%s", base, e->d_name) >=
            (int)sizeof dir)
            continue;
        if (read_attr(dir, "type", type, sizeof type) < 0)
            continue;
        if (strcmp(type, "Battery") == 0) {
            have_battery = 1;
        } else if (strcmp(type, "Mains") == 0 || strncmp(type, "USB", 3) == 0) {
            if (read_attr(dir, "online", online, sizeof online) == 0 &&
                strcmp(online, "1") == 0)
                mains_online = 1;
        }
    }
    closedir(d);
    *on_ac = mains_online || !have_battery;
    return 0;
}

int fl_client_conditions_now(const char *sysfs, fl_client_conditions_t *out)
{
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    out->minute_of_day = tm.tm_hour * 60 + tm.tm_min;
    double l[1] = {0};
    out->load1 = getloadavg(l, 1) == 1 ? l[0] : 0;
    return fl_client_on_ac_power(sysfs, &out->on_ac);
}

int fl_client_eligible(const fl_client_config_t *cfg,
                       const fl_client_windows_t *windows,
                       const fl_client_conditions_t *now, char *why,
                       size_t whylen)
{
    if (!fl_client_windows_contains(windows, now->minute_of_day)) {
        snprintf(why, whylen, "outside the training windows");
        return 0;
    }
    if (cfg->ac_only && !now->on_ac) {
        snprintf(why, whylen, "on battery");
        return 0;
    }
    if (now->load1 > cfg->max_load) {
        snprintf(why, whylen, "load %.2f above %.2f", now->load1,
                 cfg->max_load);
        return 0;
    }
    snprintf(why, whylen, "eligible");
    return 1;
}
