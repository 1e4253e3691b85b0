/*
 * Cron schedules. The next fire time is found in the schedule's wall-clock time by
 * src/base/cron.c and made an instant by Postgres' time-zone rules
 * (agently_schedule_local_to_instant), so daylight-saving changes follow the zone database
 * the server has: a time skipped by spring-forward fires at the first instant after the
 * gap, a time repeated by fall-back fires once. A tick is fired in one transaction that
 * locks the schedule (SKIP LOCKED), records the tick — its primary key (schedule, tick) is
 * what stops two dispatchers from firing it twice — starts the run and moves next_run_at
 * (agently_schedule_fire).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "cron.h"
#include "db.h"
#include "notify.h"
#include "strutil.h"

#define SCHEDULES_PER_ROUND 100

int notify_schedule_next(PGconn *c, const char *cron_text, const char *zone, const char *after,
                         char **next, char *err, size_t errlen)
{
        struct cron cr;
        int64_t local, nxt;
        int r;

        *next = NULL;
        if (cron_parse(cron_text, &cr, err, errlen) < 0)
                return -EINVAL;
        const char *p1[] = {zone, after};
        _cleanup_pgresult_ PGresult *now = db_query(
            c,
            "SELECT extract(epoch FROM (coalesce($2::timestamptz, now()) AT TIME ZONE z.name))"
            "::bigint FROM pg_timezone_names z WHERE z.name = $1",
            2, p1, &r);
        if (!now)
                return r;
        if (PQntuples(now) == 0) {
                if (err && errlen)
                        snprintf(err, errlen,
                                 "unknown time zone '%s'; use an IANA name such as "
                                 "Europe/Paris, America/New_York or UTC",
                                 zone);
                return -EINVAL;
        }
        if (str_to_int64(PQgetvalue(now, 0, 0), &local) < 0)
                return -EIO;
        /* a wall-clock time repeated by a fall-back change maps to one instant; when that
         * instant is not after `after`, look further */
        for (int tries = 0; tries < 4; tries++) {
                char localbuf[32];
                if (cron_next(&cr, local, &nxt) < 0) {
                        if (err && errlen)
                                snprintf(err, errlen, "the cron expression '%s' never fires",
                                         cron_text);
                        return -ERANGE;
                }
                snprintf(localbuf, sizeof(localbuf), "%lld", (long long)nxt);
                const char *p2[] = {localbuf, zone, after};
                _cleanup_pgresult_ PGresult *res = db_query(
                    c,
                    "SELECT t, t > coalesce($3::timestamptz, now()) FROM "
                    "agently_schedule_local_to_instant(to_timestamp($1::bigint) AT TIME ZONE "
                    "'UTC', $2) AS t",
                    3, p2, &r);
                if (!res)
                        return r;
                if (!strcmp(PQgetvalue(res, 0, 1), "t")) {
                        *next = strdup(PQgetvalue(res, 0, 0));
                        return *next ? 0 : -ENOMEM;
                }
                local = nxt;
        }
        if (err && errlen)
                snprintf(err, errlen, "no fire time of '%s' after now in %s", cron_text, zone);
        return -ERANGE;
}

/* Fires or skips one due schedule inside the caller's transaction; 1 (a run started), 0, or
 * a negative errno. */
static int fire_one(PGconn *c, const char *id, const char *cron_text, const char *zone,
                    const char *tick, bool missed, bool catch_up)
{
        char err[256];
        _cleanup_free_ char *next = NULL;
        int r = notify_schedule_next(c, cron_text, zone, NULL, &next, err, sizeof(err));

        if (r == -EINVAL || r == -ERANGE) {
                /* the expression or the zone went bad (a zone removed from tzdata): stop and
                 * say why, rather than failing every round */
                const char *p[] = {id, err};
                _cleanup_pgresult_ PGresult *res = db_query(
                    c, "UPDATE schedules SET enabled = false, last_error = $2 WHERE id = $1", 2, p,
                    &r);
                return res ? 0 : r;
        }
        if (r < 0)
                return r;
        const char *p[] = {id, tick, (!missed || catch_up) ? "t" : "f", missed ? "t" : "f", next};
        _cleanup_pgresult_ PGresult *res = db_query(
            c, "SELECT agently_schedule_fire($1, $2::timestamptz, $3, $4, $5::timestamptz)", 5, p,
            &r);
        if (!res)
                return r;
        return PQgetisnull(res, 0, 0) ? 0 : 1;
}

int notify_schedules_round(PGconn *c, int64_t grace_ms)
{
        int fired = 0, r;
        char grace[48];

        snprintf(grace, sizeof(grace), "%lld milliseconds", (long long)grace_ms);
        for (int i = 0; i < SCHEDULES_PER_ROUND; i++) {
                const char *p[] = {grace};
                if ((r = db_begin(c)) < 0)
                        return r;
                _cleanup_pgresult_ PGresult *due = db_query(
                    c,
                    "SELECT id, cron, timezone, next_run_at, next_run_at < now() - $1::interval, "
                    "missed = 'catch_up_one' FROM schedules "
                    "WHERE enabled AND next_run_at <= now() ORDER BY next_run_at LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED",
                    1, p, &r);
                if (!due) {
                        db_rollback(c);
                        return r;
                }
                if (PQntuples(due) == 0) {
                        db_rollback(c);
                        break;
                }
                int one =
                    fire_one(c, PQgetvalue(due, 0, 0), PQgetvalue(due, 0, 1), PQgetvalue(due, 0, 2),
                             PQgetvalue(due, 0, 3), !strcmp(PQgetvalue(due, 0, 4), "t"),
                             !strcmp(PQgetvalue(due, 0, 5), "t"));
                if (one < 0) {
                        db_rollback(c);
                        return one;
                }
                if ((r = db_commit(c)) < 0)
                        return r;
                fired += one;
        }
        return fired;
}
