/* Process logging to stderr, one line per message; see log.h. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "redact.h"
#include "strutil.h"

static const char *log_role = "agently";
static enum log_level log_min_level = LOG_INFO;
static int log_json;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_from_string(const char *s, enum log_level *out)
{
        for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
                if (strcasecmp(s, level_names[i]) == 0) {
                        *out = (enum log_level)i;
                        return 0;
                }
        return -EINVAL;
}

void log_setup(const char *role)
{
        const char *level = getenv("AGENTLY_LOG_LEVEL");
        const char *format = getenv("AGENTLY_LOG_FORMAT");
        enum log_level parsed;

        log_role = role;
        if (level && log_level_from_string(level, &parsed) == 0)
                log_min_level = parsed;
        log_json = format && strcmp(format, "json") == 0;
}

void log_set_level(enum log_level level)
{
        log_min_level = level;
}

static void log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
        char message[4096];
        char stamp[64];
        struct timespec ts;
        struct tm tm;
        char *full = NULL, *masked = NULL;

        /* the whole message is masked before it is cut, so no prefix of a secret survives */
        if (vasprintf(&full, fmt, ap) < 0)
                full = NULL;
        if (full) {
                int m = redact_text(full, strlen(full), &masked, NULL);
                str_copy(message, sizeof(message),
                         m == 1   ? masked
                         : m == 0 ? full
                                  : "[message withheld: out of memory]");
                free(masked);
                free(full);
        } else {
                str_copy(message, sizeof(message), "[message withheld: out of memory]");
        }
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

        pthread_mutex_lock(&log_lock);
        if (log_json) {
                json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "ts", stamp, "level",
                                      level_names[level], "role", log_role, "msg", message);
                char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
                if (line)
                        fprintf(stderr, "%s\n", line);
                free(line);
                json_decref(o);
        } else {
                fprintf(stderr, "%s %-5s %s: %s\n", stamp, level_names[level], log_role, message);
        }
        pthread_mutex_unlock(&log_lock);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
        va_list ap;

        if (level < log_min_level)
                return;
        va_start(ap, fmt);
        log_vwrite(level, fmt, ap);
        va_end(ap);
}

int log_errno(int r, const char *fmt, ...)
{
        va_list ap;
        char *message = NULL;

        /* formatted whole (not cut) so that log_vwrite masks it before anything is cut */
        va_start(ap, fmt);
        if (vasprintf(&message, fmt, ap) < 0)
                message = NULL;
        va_end(ap);
        if (!message)
                log_msg(LOG_ERROR, "[message withheld: out of memory]");
        else if (r < 0)
                log_msg(LOG_ERROR, "%s: %s", message, strerror(-r));
        else
                log_msg(LOG_ERROR, "%s", message);
        free(message);
        return r;
}
