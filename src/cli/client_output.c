/*
 * Human output for the client: tables whose columns are as wide as their widest cell,
 * relative times ("3m ago", "in 2h"), compact durations, status colours, and the pretty,
 * key-sorted JSON of -o json. Colour is decided once per invocation (a TTY and no
 * NO_COLOR) and passed in, so the functions here stay pure and unit-testable.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "client.h"
#include "strutil.h"

#define CELL_MAX_WIDTH 64
#define ANSI_RESET     "\033[0m"
#define ANSI_BOLD      "\033[1m"

size_t client_display_width(const char *s)
{
        size_t w = 0;

        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (*p == 0x1b) { /* skip an ANSI CSI sequence */
                        if (p[1] == '[') {
                                p += 2;
                                while (*p && !(*p >= 0x40 && *p <= 0x7e))
                                        p++;
                                if (!*p)
                                        break;
                        }
                        continue;
                }
                if ((*p & 0xc0) != 0x80) /* count code points, not continuation bytes */
                        w++;
        }
        return w;
}

void client_table_init(struct client_table *t, int status_col, const char *const *headers)
{
        memset(t, 0, sizeof(*t));
        t->status_col = status_col;
        while (headers[t->ncols] && t->ncols < ELEMENTSOF(t->headers)) {
                t->headers[t->ncols] = headers[t->ncols];
                t->ncols++;
        }
}

/* A copy of s fit for one table cell: control characters become spaces (a newline would
 * break the alignment, an escape sequence could repaint the terminal) and the cell is cut
 * to CELL_MAX_WIDTH code points with an ellipsis. */
static char *cell_copy(const char *s)
{
        size_t len = strlen(s), w = 0, i;
        char *out = malloc(len + 4);

        if (!out)
                return NULL;
        for (i = 0; i < len; i++) {
                unsigned char ch = (unsigned char)s[i];
                if ((ch & 0xc0) != 0x80) {
                        if (w == CELL_MAX_WIDTH - 1 && client_display_width(s + i) > 1) {
                                memcpy(out + i, "\xe2\x80\xa6", 4); /* … */
                                return out;
                        }
                        w++;
                }
                out[i] = (char)(ch < 0x20 || ch == 0x7f ? ' ' : ch);
        }
        out[i] = '\0';
        return out;
}

int client_table_add(struct client_table *t, const char *const *cells)
{
        if (t->nrows == t->cap) {
                size_t ncap = t->cap ? t->cap * 2 : 16;
                char **n = realloc(t->cells, ncap * t->ncols * sizeof(char *));
                if (!n)
                        return -ENOMEM;
                t->cells = n;
                t->cap = ncap;
        }
        for (size_t c = 0; c < t->ncols; c++) {
                char *v = cell_copy(cells[c] && *cells[c] ? cells[c] : "-");
                if (!v) {
                        for (size_t k = 0; k < c; k++)
                                free(t->cells[t->nrows * t->ncols + k]);
                        return -ENOMEM;
                }
                t->cells[t->nrows * t->ncols + c] = v;
        }
        t->nrows++;
        return 0;
}

static void print_cell(FILE *out, const char *s, size_t width, bool pad, const char *color)
{
        if (color && *color)
                fprintf(out, "%s%s%s", color, s, ANSI_RESET);
        else
                fputs(s, out);
        if (pad)
                for (size_t w = client_display_width(s); w < width; w++)
                        fputc(' ', out);
}

void client_table_print(const struct client_table *t, FILE *out, bool color)
{
        size_t width[ELEMENTSOF(t->headers)] = {0};

        for (size_t c = 0; c < t->ncols; c++) {
                width[c] = client_display_width(t->headers[c]);
                for (size_t r = 0; r < t->nrows; r++) {
                        size_t w = client_display_width(t->cells[r * t->ncols + c]);
                        if (w > width[c])
                                width[c] = w;
                }
        }
        for (size_t c = 0; c < t->ncols; c++) {
                if (c)
                        fputs("  ", out);
                print_cell(out, t->headers[c], width[c], c + 1 < t->ncols,
                           color ? ANSI_BOLD : NULL);
        }
        fputc('\n', out);
        for (size_t r = 0; r < t->nrows; r++) {
                for (size_t c = 0; c < t->ncols; c++) {
                        const char *v = t->cells[r * t->ncols + c];
                        if (c)
                                fputs("  ", out);
                        print_cell(out, v, width[c], c + 1 < t->ncols,
                                   color && (int)c == t->status_col ? client_status_color(v)
                                                                    : NULL);
                }
                fputc('\n', out);
        }
}

void client_table_free(struct client_table *t)
{
        for (size_t i = 0; i < t->nrows * t->ncols; i++)
                free(t->cells[i]);
        free(t->cells);
        memset(t, 0, sizeof(*t));
}

const char *client_status_color(const char *status)
{
        static const struct {
                const char *status, *color;
        } map[] = {
            {"completed", "\033[32m"}, {"approved", "\033[32m"}, {"active", "\033[32m"},
            {"failed", "\033[31m"},    {"rejected", "\033[31m"}, {"revoked", "\033[90m"},
            {"canceled", "\033[90m"},  {"skipped", "\033[90m"},  {"expired", "\033[90m"},
            {"running", "\033[36m"},   {"queued", "\033[33m"},   {"waiting", "\033[33m"},
            {"pending", "\033[33m"},   {"paused", "\033[35m"},   {"needs_input", "\033[35m"},
        };

        for (size_t i = 0; status && i < ELEMENTSOF(map); i++)
                if (strcmp(status, map[i].status) == 0)
                        return map[i].color;
        return "";
}

static int digits(const char **p, int n, int *out)
{
        int v = 0;

        for (int i = 0; i < n; i++, (*p)++) {
                if (**p < '0' || **p > '9')
                        return -EINVAL;
                v = v * 10 + (**p - '0');
        }
        *out = v;
        return 0;
}

int client_time_parse(const char *s, int64_t *out_ms)
{
        struct tm tm = {0};
        int year, mon, day, hour, min, sec, ms = 0, off_h = 0, off_m = 0, sign = 0;
        const char *p = s;
        time_t t;

        if (!s)
                return -EINVAL;
        if (digits(&p, 4, &year) < 0 || *p++ != '-' || digits(&p, 2, &mon) < 0 || *p++ != '-' ||
            digits(&p, 2, &day) < 0 || (*p != 'T' && *p != 't' && *p != ' '))
                return -EINVAL;
        p++;
        if (digits(&p, 2, &hour) < 0 || *p++ != ':' || digits(&p, 2, &min) < 0 || *p++ != ':' ||
            digits(&p, 2, &sec) < 0)
                return -EINVAL;
        if (*p == '.') {
                int scale = 100;
                p++;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
                        ms += (*p - '0') * scale;
        }
        if (*p == 'Z' || *p == 'z')
                p++;
        else if (*p == '+' || *p == '-') {
                sign = *p++ == '-' ? -1 : 1;
                if (digits(&p, 2, &off_h) < 0)
                        return -EINVAL;
                if (*p == ':')
                        p++;
                if (*p && digits(&p, 2, &off_m) < 0)
                        return -EINVAL;
        } else
                return -EINVAL;
        if (*p || mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
                return -EINVAL;
        tm.tm_year = year - 1900;
        tm.tm_mon = mon - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        t = timegm(&tm);
        *out_ms = ((int64_t)t - (int64_t)sign * (off_h * 3600 + off_m * 60)) * 1000 + ms;
        return 0;
}

int64_t client_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void client_reltime(int64_t when_ms, int64_t now_ms, char *out, size_t size)
{
        int64_t d = now_ms - when_ms, a = d < 0 ? -d : d, s = a / 1000;
        const char *unit;
        int64_t n;

        if (s < 1) {
                snprintf(out, size, "just now");
                return;
        }
        if (s >= 30 * 86400) {
                time_t t = (time_t)(when_ms / 1000);
                struct tm tm;
                gmtime_r(&t, &tm);
                strftime(out, size, "%Y-%m-%d", &tm);
                return;
        }
        if (s < 60)
                n = s, unit = "s";
        else if (s < 3600)
                n = s / 60, unit = "m";
        else if (s < 2 * 86400)
                n = s / 3600, unit = "h";
        else
                n = s / 86400, unit = "d";
        if (d < 0)
                snprintf(out, size, "in %lld%s", (long long)n, unit);
        else
                snprintf(out, size, "%lld%s ago", (long long)n, unit);
}

void client_duration(int64_t ms, char *out, size_t size)
{
        if (ms < 0)
                ms = 0;
        if (ms < 1000)
                snprintf(out, size, "%lldms", (long long)ms);
        else if (ms < 60000)
                snprintf(out, size, "%lld.%llds", (long long)(ms / 1000),
                         (long long)(ms % 1000 / 100));
        else if (ms < 3600000)
                snprintf(out, size, "%lldm%llds", (long long)(ms / 60000),
                         (long long)(ms % 60000 / 1000));
        else if (ms < 86400000)
                snprintf(out, size, "%lldh%lldm", (long long)(ms / 3600000),
                         (long long)(ms % 3600000 / 60000));
        else
                snprintf(out, size, "%lldd%lldh", (long long)(ms / 86400000),
                         (long long)(ms % 86400000 / 3600000));
}

void client_reltime_json(json_t *obj, const char *key, char *out, size_t size)
{
        json_t *v = json_object_get(obj, key);
        int64_t ms;

        if (!json_is_string(v) || client_time_parse(json_string_value(v), &ms) < 0) {
                snprintf(out, size, "-");
                return;
        }
        client_reltime(ms, client_now_ms(), out, size);
}

void client_duration_json(json_t *obj, const char *from_key, const char *to_key, char *out,
                          size_t size)
{
        json_t *from = json_object_get(obj, from_key), *to = json_object_get(obj, to_key);
        int64_t a, b;

        if (!json_is_string(from) || client_time_parse(json_string_value(from), &a) < 0) {
                snprintf(out, size, "-");
                return;
        }
        if (!json_is_string(to) || client_time_parse(json_string_value(to), &b) < 0)
                b = client_now_ms();
        client_duration(b - a, out, size);
}

void client_print_json(json_t *j, FILE *out)
{
        _cleanup_free_ char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENCODE_ANY |
                                                   JSON_REAL_PRECISION(10));

        if (s)
                fprintf(out, "%s\n", s);
        else
                fprintf(out, "null\n");
}

const char *client_json_cell(json_t *v, char *buf, size_t size)
{
        if (!v)
                return NULL;
        switch (json_typeof(v)) {
        case JSON_STRING:
                return json_string_value(v);
        case JSON_INTEGER:
                snprintf(buf, size, "%lld", (long long)json_integer_value(v));
                return buf;
        case JSON_REAL:
                snprintf(buf, size, "%.4g", json_real_value(v));
                return buf;
        case JSON_TRUE:
                return "yes";
        case JSON_FALSE:
                return "no";
        case JSON_OBJECT:
        case JSON_ARRAY: {
                _cleanup_free_ char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
                snprintf(buf, size, "%s", s ? s : "");
                return buf;
        }
        default:
                return NULL;
        }
}

void client_kv(FILE *out, const char *key, const char *value)
{
        char k[64];

        snprintf(k, sizeof(k), "%s:", key);
        fprintf(out, "%-10s %s\n", k, value && *value ? value : "-");
}

void client_more_hint(const struct client_ctx *ctx, json_t *page)
{
        const char *cursor = json_string_value(json_object_get(page, "next_cursor"));

        if (cursor && *cursor)
                fprintf(stderr, "(more: agently %s --cursor %s)\n", ctx->name, cursor);
}
