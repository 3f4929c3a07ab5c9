/* common/log.c — leveled log lines with time, pid and role. */
#include "common/common.h"

#include <pthread.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int fl_log_level_ = FL_LOG_INFO;
static char log_role[32] = "flotilla";
static FILE *log_stream;
static int log_json;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error",
                                          "off"};

void fl_log_set_level(fl_log_level_t level)
{
    fl_log_level_ = (int)level;
}
void fl_log_set_stream(FILE *f)
{
    log_stream = f;
}
void fl_log_set_json(int on)
{
    log_json = on;
}

void fl_log_set_role(const char *role)
{
    snprintf(log_role, sizeof log_role, "%s", role);
}

int fl_log_level_parse(const char *s, fl_log_level_t *out)
{
    for (int i = 0; i < (int)FL_ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (fl_log_level_t)i;
            return 0;
        }
    }
    return FL_EINVAL;
}

/* Escapes a message for a JSON string. */
static void json_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void fl_log_write(fl_log_level_t level, const char *file, int line,
                  const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);

    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int lv = (int)level;
    if (lv < 0 || lv > FL_LOG_ERROR)
        lv = FL_LOG_ERROR;

    pthread_mutex_lock(&log_lock);
    FILE *f = log_stream ? log_stream : stderr;
    if (log_json) {
        fprintf(f,
                "{\"ts\":\"%s.%03ldZ\",\"pid\":%d,\"role\":\"%s\","
                "\"level\":\"%s\",\"src\":\"%s:%d\",\"msg\":\"",
                ts, (long)tv.tv_usec / 1000, (int)getpid(), log_role,
                level_names[lv], base, line);
        json_escape(f, msg);
        fputs("\"}\n", f);
    } else {
        fprintf(f, "%s.%03ldZ %d %s %-5s %s\n", ts, (long)tv.tv_usec / 1000,
                (int)getpid(), log_role, level_names[lv], msg);
    }
    fflush(f);
    pthread_mutex_unlock(&log_lock);
}
