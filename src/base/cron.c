/*
 * The cron parser and the search for the next matching wall-clock time (cron.h). The search
 * moves by the largest unit that does not match (month, day, hour, minute, second), so it
 * needs at most a few hundred steps for any expression that matches at all.
 */
#include "cron.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct field {
        const char *name;
        int lo, hi;
        const char *const *names; /* names of lo, lo+1, ... or NULL */
};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec", NULL};
static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static const struct field fields[] = {
    {"second", 0, 59, NULL},       {"minute", 0, 59, NULL},       {"hour", 0, 23, NULL},
    {"day-of-month", 1, 31, NULL}, {"month", 1, 12, month_names}, {"day-of-week", 0, 7, day_names},
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* A number or a name of f at *p (advanced); -1 when there is none. */
static int value(const struct field *f, const char **p)
{
        const char *s = *p;
        int v = 0, digits = 0;

        while (*s >= '0' && *s <= '9' && digits < 3) {
                v = v * 10 + (*s++ - '0');
                digits++;
        }
        if (digits) {
                if (*s >= '0' && *s <= '9')
                        return -1;
                *p = s;
                return v;
        }
        for (int i = 0; f->names && f->names[i]; i++)
                if (strncasecmp(s, f->names[i], 3) == 0 &&
                    !((s[3] >= 'a' && s[3] <= 'z') || (s[3] >= 'A' && s[3] <= 'Z'))) {
                        *p = s + 3;
                        return f->lo + i;
                }
        return -1;
}

/* One field's text (NUL-terminated) into bits; *star when it covers the whole range. */
static int parse_field(const struct field *f, const char *text, uint64_t *bits, bool *star,
                       char *err, size_t errlen)
{
        const char *p = text;

        *bits = 0;
        *star = false;
        for (;;) {
                int lo, hi, step = 1;
                bool all = false;
                if (*p == '*') {
                        lo = f->lo;
                        hi = f->hi == 7 ? 6 : f->hi;
                        all = true;
                        p++;
                } else {
                        if ((lo = value(f, &p)) < 0)
                                return fail(err, errlen,
                                            "%s field '%s': expected a number, a "
                                            "name, * or a range",
                                            f->name, text);
                        hi = lo;
                        if (*p == '-') {
                                p++;
                                if ((hi = value(f, &p)) < 0)
                                        return fail(err, errlen,
                                                    "%s field '%s': a range needs an end", f->name,
                                                    text);
                        }
                }
                if (*p == '/') {
                        const char *q = ++p;
                        step = 0;
                        while (*p >= '0' && *p <= '9' && step < 1000)
                                step = step * 10 + (*p++ - '0');
                        if (p == q || step < 1)
                                return fail(err, errlen,
                                            "%s field '%s': a step must be a "
                                            "positive number",
                                            f->name, text);
                        if (!all && hi == lo)
                                hi = f->hi == 7 ? 6 : f->hi; /* "N/S": from N to the end */
                }
                if (lo < f->lo || hi > f->hi || lo > hi)
                        return fail(err, errlen, "%s field '%s': out of range", f->name, text);
                for (int v = lo; v <= hi; v += step)
                        *bits |= UINT64_C(1) << (f->hi == 7 && v == 7 ? 0 : v);
                if (all && step == 1)
                        *star = true;
                if (*p == '\0')
                        return 0;
                if (*p != ',')
                        return fail(err, errlen, "%s field '%s': unexpected character", f->name,
                                    text);
                p++;
        }
}

int cron_parse(const char *text, struct cron *out, char *err, size_t errlen)
{
        static const struct {
                const char *name, *expansion;
        } macros[] = {
            {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
            {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
            {"@hourly", "0 * * * *"},
        };
        char copy[CRON_MAX_TEXT + 1];
        char *parts[7];
        int n = 0;

        memset(out, 0, sizeof(*out));
        if (!text || !*text || strlen(text) > CRON_MAX_TEXT)
                return fail(err, errlen, "a cron expression must be 1 to %d characters",
                            CRON_MAX_TEXT);
        while (*text == ' ' || *text == '\t')
                text++;
        if (*text == '@') {
                for (size_t i = 0; i < sizeof(macros) / sizeof(macros[0]); i++)
                        if (strcasecmp(text, macros[i].name) == 0)
                                return cron_parse(macros[i].expansion, out, err, errlen);
                return fail(err, errlen,
                            "unknown cron macro '%s'; use @yearly, @monthly, @weekly, @daily or "
                            "@hourly",
                            text);
        }
        snprintf(copy, sizeof(copy), "%s", text);
        for (char *p = copy; *p;) {
                while (*p == ' ' || *p == '\t')
                        *p++ = '\0';
                if (!*p)
                        break;
                if (n == 7)
                        break;
                parts[n++] = p;
                while (*p && *p != ' ' && *p != '\t')
                        p++;
        }
        if (n != 5 && n != 6)
                return fail(err, errlen,
                            "a cron expression has 5 fields (minute hour day-of-month month "
                            "day-of-week) or 6 (seconds first); got '%s'",
                            text);
        out->has_seconds = n == 6;
        for (int i = 0; i < n; i++) {
                const struct field *f = &fields[i + (n == 5 ? 1 : 0)];
                uint64_t bits;
                bool star;
                int r = parse_field(f, parts[i], &bits, &star, err, errlen);
                if (r < 0)
                        return r;
                switch (f - fields) {
                case 0:
                        out->seconds = bits;
                        break;
                case 1:
                        out->minutes = bits;
                        break;
                case 2:
                        out->hours = (uint32_t)bits;
                        break;
                case 3:
                        out->days = (uint32_t)bits;
                        out->days_star = star;
                        break;
                case 4:
                        out->months = (uint16_t)bits;
                        break;
                default:
                        out->weekdays = (uint8_t)bits;
                        out->weekdays_star = star;
                        break;
                }
        }
        if (n == 5)
                out->seconds = 1; /* second 0 */
        return 0;
}

static bool day_matches(const struct cron *c, const struct tm *t)
{
        bool dom = c->days & (UINT32_C(1) << t->tm_mday);
        bool dow = c->weekdays & (1u << t->tm_wday);

        if (c->days_star || c->weekdays_star)
                return (c->days_star || dom) && (c->weekdays_star || dow);
        return dom || dow;
}

int cron_next(const struct cron *c, int64_t after, int64_t *next)
{
        struct tm t;
        time_t cur = (time_t)after + 1;
        time_t limit = (time_t)after + (time_t)8 * 366 * 24 * 3600;

        if (!gmtime_r(&cur, &t))
                return -ERANGE;
        while (cur <= limit) {
                if (!(c->months & (1u << (t.tm_mon + 1)))) {
                        t.tm_mon++;
                        t.tm_mday = 1;
                        t.tm_hour = t.tm_min = t.tm_sec = 0;
                } else if (!day_matches(c, &t)) {
                        t.tm_mday++;
                        t.tm_hour = t.tm_min = t.tm_sec = 0;
                } else if (!(c->hours & (UINT32_C(1) << t.tm_hour))) {
                        t.tm_hour++;
                        t.tm_min = t.tm_sec = 0;
                } else if (!(c->minutes & (UINT64_C(1) << t.tm_min))) {
                        t.tm_min++;
                        t.tm_sec = 0;
                } else if (!(c->seconds & (UINT64_C(1) << t.tm_sec))) {
                        t.tm_sec++;
                } else {
                        *next = (int64_t)cur;
                        return 0;
                }
                t.tm_isdst = 0;
                cur = timegm(&t); /* normalises (day 32 -> next month) and sets tm_wday */
                if (cur == (time_t)-1 || !gmtime_r(&cur, &t))
                        return -ERANGE;
        }
        return -ERANGE;
}
