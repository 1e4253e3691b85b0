/*
 * Cron schedules fired by dispatchers: two dispatchers on one every-2-seconds schedule
 * (six-field cron) start exactly one run per tick — no tick twice, none skipped — and
 * with AGENTLY_SCHEDULE_FULL=1 the issue's own check, an every-minute schedule for 3
 * minutes giving exactly 3 runs. Next fire times across daylight-saving changes come from
 * Postgres' zone rules; missed ticks are skipped or caught up once.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "notify.h"
#include "notify_receiver.h"
#include "testlib.h"
#include "worker_fixture.h"

static char *next_after(PGconn *c, const char *cron, const char *zone, const char *after)
{
        char err[256] = "", *next = NULL;
        int r = notify_schedule_next(c, cron, zone, after, &next, err, sizeof(err));

        if (r < 0)
                fail_msg("%s in %s after %s: %d %s", cron, zone, after, r, err);
        /* in UTC, to compare */
        char *utc = test_db_value(c,
                                  "SELECT to_char('%s'::timestamptz AT TIME ZONE 'UTC', "
                                  "'YYYY-MM-DD HH24:MI:SS')",
                                  next);
        free(next);
        return utc;
}

static void next_fire_times_follow_the_zone(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("sched_tz");
        char err[256];
        char *s, *next = NULL;

        /* New York springs forward on 2026-03-08 at 02:00 (to 03:00 EDT, UTC-4): 02:30 does
         * not exist that night and fires at 03:30 EDT */
        s = next_after(f->db, "30 2 * * *", "America/New_York", "2026-03-07 12:00:00+00");
        assert_string_equal(s, "2026-03-08 07:30:00");
        free(s);
        s = next_after(f->db, "30 2 * * *", "America/New_York", "2026-03-08 08:00:00+00");
        assert_string_equal(s, "2026-03-09 06:30:00"); /* 02:30 EDT */
        free(s);
        /* it falls back on 2026-11-01 at 02:00 EDT (to 01:00 EST): 01:30 happens twice and
         * fires once; the next is the next day's */
        s = next_after(f->db, "30 1 * * *", "America/New_York", "2026-11-01 04:00:00+00");
        char *again = next_after(f->db, "30 1 * * *", "America/New_York", s);
        assert_string_equal(again, "2026-11-02 06:30:00");
        free(again);
        free(s);
        /* every hour across the spring gap: 01:00 EST then 03:00 EDT, one hour apart */
        s = next_after(f->db, "0 * * * *", "America/New_York", "2026-03-08 06:00:00+00");
        assert_string_equal(s, "2026-03-08 07:00:00");
        free(s);
        /* a zone east of UTC, and UTC */
        s = next_after(f->db, "0 9 * * MON", "Asia/Tokyo", "2026-11-30 00:00:00+00");
        assert_string_equal(s, "2026-12-07 00:00:00");
        free(s);
        assert_int_equal(
            notify_schedule_next(f->db, "0 9 * * *", "Mars/Olympus", NULL, &next, err, sizeof(err)),
            -EINVAL);
        assert_non_null(strstr(err, "unknown time zone"));
        assert_int_equal(
            notify_schedule_next(f->db, "0 9 * *", "UTC", NULL, &next, err, sizeof(err)), -EINVAL);
        worker_fixture_free(f);
}

/* A schedule of workflow "tick" for alice, due at its first tick. */
static char *schedule(struct worker_fixture *f, const char *cron, const char *missed,
                      const char *next_run_at)
{
        return test_db_value(f->db,
                             "INSERT INTO schedules (user_id, workflow_name, cron, timezone, "
                             "missed, next_run_at) VALUES ('%s', 'tick', '%s', 'Europe/Paris', "
                             "'%s', %s) RETURNING id",
                             f->user, cron, missed, next_run_at);
}

static void run_dispatchers(struct worker_fixture *f, struct notify_receiver *rcv, int seconds)
{
        char log[700];
        pid_t d[2];

        snprintf(log, sizeof(log), "%s/dispatch.log", f->dir);
        d[0] = notify_spawn_dispatcher(f->conninfo, rcv, "d0", NULL, log);
        d[1] = notify_spawn_dispatcher(f->conninfo, rcv, "d1", NULL, log);
        sleep((unsigned)seconds);
        test_stop_process(d[0], SIGTERM, 10000);
        test_stop_process(d[1], SIGTERM, 10000);
}

static void two_dispatchers_fire_each_tick_once(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("sched_fire");
        struct notify_receiver rcv;
        bool full = getenv("AGENTLY_SCHEDULE_FULL") != NULL;

        notify_receiver_start(&rcv, NULL);
        free(worker_fixture_workflow(f, "tick",
                                     "{\"name\":\"tick\",\"nodes\":[{\"id\":\"a\","
                                     "\"type\":\"noop\"}]}"));
        char *full_id = NULL;
        if (full) /* the first whole minute from now */
                full_id = schedule(f, "* * * * *", "skip",
                                   "date_trunc('minute', now()) + interval '1 minute'");
        /* due at the next even second, the schedule's first tick */
        char *id = schedule(f, "*/2 * * * * *", "skip",
                            "to_timestamp((floor(extract(epoch FROM now()) / 2) + 1) * 2)");
        run_dispatchers(f, &rcv, full ? 181 : 11);
        long long ticks = test_db_int(f->db,
                                      "SELECT count(*) FROM schedule_ticks WHERE "
                                      "schedule_id = '%s'",
                                      id);
        long long runs = test_db_int(f->db,
                                     "SELECT count(*) FROM workflow_runs WHERE "
                                     "idempotency_key LIKE 'schedule:%s:%%'",
                                     id);
        /* 10 s of a 2 s schedule: 5 ticks (6 when the edges fall right) */
        assert_int_ge(ticks, full ? 89 : 5);
        assert_int_le(ticks, full ? 91 : 6);
        assert_int_equal(runs, ticks);
        /* consecutive, 2 s apart: none skipped */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM (SELECT tick - lag(tick) OVER (ORDER "
                                     "BY tick) AS gap FROM schedule_ticks WHERE schedule_id = "
                                     "'%s') g WHERE gap <> interval '2 seconds'",
                                     id),
                         0);
        /* and the schedule shows its next fire time, in the future */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM schedules WHERE id = '%s' AND "
                                     "next_run_at > now() - interval '3 seconds' AND "
                                     "last_run_id IS NOT NULL",
                                     id),
                         1);
        if (full) {
                assert_int_equal(test_db_int(f->db,
                                             "SELECT count(*) FROM workflow_runs WHERE "
                                             "idempotency_key LIKE 'schedule:%s:%%'",
                                             full_id),
                                 3);
                free(full_id);
        }
        free(id);
        notify_receiver_stop(&rcv);
        worker_fixture_free(f);
}

static void missed_ticks_are_skipped_or_caught_up_once(void **state)
{
        (void)state;
        struct worker_fixture *f = worker_fixture_new("sched_missed");
        struct notify_receiver rcv;

        notify_receiver_start(&rcv, NULL);
        free(worker_fixture_workflow(f, "tick",
                                     "{\"name\":\"tick\",\"nodes\":[{\"id\":\"a\","
                                     "\"type\":\"noop\"}]}"));
        /* every ten minutes of the last hour but one, due since its start: all six of its
         * ticks were missed while no dispatcher ran, and none falls in the dispatch window
         * (an every-ten-minutes cron would, once every ten minutes of wall-clock time) */
        char *hour = test_db_value(f->db, "SELECT extract(hour FROM (now() - interval '1 hour') "
                                          "AT TIME ZONE 'Europe/Paris')::int");
        char cron[64];
        const char *due = "date_trunc('hour', now() - interval '1 hour')";

        snprintf(cron, sizeof(cron), "*/10 %s * * *", hour);
        free(hour);
        char *skip = schedule(f, cron, "skip", due);
        char *catch_up = schedule(f, cron, "catch_up_one", due);
        run_dispatchers(f, &rcv, 3);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM workflow_runs WHERE "
                                     "idempotency_key LIKE 'schedule:%s:%%'",
                                     skip),
                         0);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM workflow_runs WHERE "
                                     "idempotency_key LIKE 'schedule:%s:%%'",
                                     catch_up),
                         1);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM schedule_ticks WHERE "
                                     "schedule_id = '%s' AND caught_up",
                                     catch_up),
                         1);
        /* both moved on to their next tick in the future */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM schedules WHERE next_run_at > "
                                            "now()"),
                         2);
        free(skip);
        free(catch_up);
        notify_receiver_stop(&rcv);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(next_fire_times_follow_the_zone),
            cmocka_unit_test(two_dispatchers_fire_each_tick_once),
            cmocka_unit_test(missed_ticks_are_skipped_or_caught_up_once),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
