/* Duration parsing and formatting; see duration.h. */
#include "duration.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int unit_ms(const char *u, size_t n, int64_t *out)
{
        static const struct {
                const char *name;
                int64_t ms;
        } units[] = {
            {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {"w", 604800000},
        };
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
                if (strlen(units[i].name) == n && strncmp(u, units[i].name, n) == 0) {
                        *out = units[i].ms;
                        return 0;
                }
        return -EINVAL;
}

int duration_parse_ms(const char *s, int64_t *out_ms)
{
        int64_t total = 0;
        const char *p = s;

        if (!s || !*s)
                return -EINVAL;
        while (*p) {
                int64_t value = 0, mult;
                const char *unit;

                if (!isdigit((unsigned char)*p))
                        return -EINVAL;
                while (isdigit((unsigned char)*p)) {
                        value = value * 10 + (*p - '0');
                        if (value > DURATION_MAX_MS)
                                return -ERANGE;
                        p++;
                }
                unit = p;
                while (isalpha((unsigned char)*p))
                        p++;
                if (p == unit) {
                        /* a bare number is seconds, but only as the whole string */
                        if (unit != s + strspn(s, "0123456789") || *p)
                                return -EINVAL;
                        mult = 1000;
                } else if (unit_ms(unit, (size_t)(p - unit), &mult) < 0) {
                        return -EINVAL;
                }
                if (value > DURATION_MAX_MS / mult)
                        return -ERANGE;
                total += value * mult;
                if (total > DURATION_MAX_MS)
                        return -ERANGE;
        }
        *out_ms = total;
        return 0;
}

void duration_format(int64_t ms, char *out, unsigned size)
{
        static const struct {
                const char *name;
                int64_t ms;
        } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
        size_t used = 0;

        if (size == 0)
                return;
        out[0] = '\0';
        if (ms < 1000) {
                snprintf(out, size, "%lldms", (long long)ms);
                return;
        }
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && used < size; i++) {
                int64_t n = ms / units[i].ms;
                if (n == 0)
                        continue;
                ms -= n * units[i].ms;
                int w = snprintf(out + used, size - used, "%lld%s", (long long)n, units[i].name);
                if (w < 0)
                        return;
                used += (size_t)w;
        }
}
