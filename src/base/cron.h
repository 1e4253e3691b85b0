/*
 * Cron expressions: parsed here, evaluated on wall-clock time. No Debian package offers a
 * C cron library (cronie and vixie-cron carry their parser inside the daemon), so this is
 * a small one, tested in tests/unit/test_cron.c. Time zones are not its business: it walks
 * a zone's wall-clock time as plain calendar arithmetic, and the caller turns wall-clock
 * times into instants with the zone's rules (Postgres does that for schedules:
 * src/notify/notify_schedule.c).
 *
 * Syntax (docs/triggers.md): five fields "minute hour day-of-month month day-of-week", or six
 * with seconds first; each field "*", "N", "N-M", a step "*" "/S", "N-M/S" or "N/S" (N to the
 * end), or a comma list of those; month names JAN-DEC and day names SUN-SAT (any case); 0 and
 * 7 are Sunday. Macros: @yearly (@annually), @monthly, @weekly, @daily (@midnight),
 * @hourly. As in Vixie cron, when both day fields are restricted a day matching either
 * one matches; when one is "*", the other alone decides.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRON_MAX_TEXT 200

struct cron {
        uint64_t seconds; /* bit s: second s (0-59) */
        uint64_t minutes; /* bit m (0-59) */
        uint32_t hours;   /* bit h (0-23) */
        uint32_t days;    /* bit d (1-31) */
        uint16_t months;  /* bit m (1-12) */
        uint8_t weekdays; /* bit w (0-6, 0 = Sunday) */
        bool days_star;   /* day-of-month was "*" (or a step over all of it) */
        bool weekdays_star;
        bool has_seconds; /* six fields */
};

/*
 * Parses text into *out. Returns 0, or -EINVAL with a message for people in err (errlen
 * bytes; may be NULL) naming the field and what was wrong; *out is then unspecified.
 */
int cron_parse(const char *text, struct cron *out, char *err, size_t errlen);

/*
 * The first time strictly after `after` that c matches, both as wall-clock seconds since
 * 1970-01-01 00:00:00 of the zone (a "local epoch": calendar arithmetic, no time-zone
 * rules). Five-field expressions match at second 0. Returns 0 with *next set, or -ERANGE
 * when nothing matches within 8 years (e.g. "0 0 30 2 *", February 30th).
 */
int cron_next(const struct cron *c, int64_t after, int64_t *next);
