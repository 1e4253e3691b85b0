/*
 * How a worker claims a backlog (src/worker/README.md, "Claims"). A claim that comes back
 * full leaves more due runs behind, so the next loop turn claims again at once: a backlog
 * goes as fast as the turns, not one claim batch per --poll. (Before, the next claim came a
 * whole poll after the end of the turn the last one opened: an idle gap per batch, ~10 % of
 * the no-op run throughput at the bench's 10 ms poll.)
 *
 * Each claim opens its turn's transaction, and every run claimed in it records that
 * transaction's start as its started_at: the runs' distinct started_at are the claims.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

#define RUNS        200
#define CONCURRENCY 50 /* --concurrency, so the claim size: 4 full claims for the backlog */

/* The longest time, in the worker's trace (AGENTLY_TRACE_TURNS=1, worker_trace.h), from
 * the end of a turn over CONCURRENCY runs to the start of the next turn. */
static long long longest_gap_ms(struct worker_fixture *f, const char *id)
{
        char path[600], line[512], first[40];
        long long b, l, sn, p, c, total, t0, end = 0, gap = 0;
        int runs;
        FILE *in;

        snprintf(path, sizeof(path), "%s/%s.log", f->dir, id);
        in = fopen(path, "r");
        assert_non_null(in);
        while (fgets(line, sizeof(line), in)) {
                if (sscanf(line,
                           "trace turn runs=%d first=%36s begin_us=%lld lock_us=%lld "
                           "snapshot_us=%lld plan_us=%lld commit_us=%lld total_us=%lld t0=%lld",
                           &runs, first, &b, &l, &sn, &p, &c, &total, &t0) != 9)
                        continue;
                if (end && t0 - end > gap)
                        gap = t0 - end;
                end = runs == CONCURRENCY ? t0 + total : 0;
        }
        fclose(in);
        return gap / 1000;
}

static void test_a_backlog_is_claimed_turn_after_turn(void **state)
{
        /* a poll far longer than a turn of 50 no-op runs, even on a loaded machine */
        static const char *const args[] = {"--poll", "1s", "--concurrency", "50", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_claims");
        char *wf = worker_fixture_workflow(f, "w",
                                           "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":"
                                           "\"noop\"}]}");
        long long gap_ms;

        (void)state;
        /* the backlog is there before the worker: no NOTIFY, its first claim finds it */
        assert_int_equal(test_db_int(f->db,
                                     "WITH r AS (INSERT INTO workflow_runs (user_id, workflow_id, "
                                     "workflow_name, workflow_version, input) SELECT user_id, id, "
                                     "name, version, '{}' FROM workflows, generate_series(1, %d) "
                                     "WHERE name = 'w' RETURNING 1) SELECT count(*) FROM r",
                                     RUNS),
                         RUNS);
        setenv("AGENTLY_TRACE_TURNS", "1", 1);
        worker_fixture_spawn(f, "w1", "30s", "10s", args);
        unsetenv("AGENTLY_TRACE_TURNS");
        for (int k = 0; k < 1200 && test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE "
                                                       "status <> 'completed'") > 0;
             k++)
                usleep(50 * 1000);
        if (test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE status <> 'completed'"))
                worker_fixture_dump_logs(f);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE status = "
                                            "'completed'"),
                         RUNS);

        /* one claim per CONCURRENCY runs, each done in the turn it opened */
        assert_int_equal(test_db_int(f->db, "SELECT count(DISTINCT started_at) FROM workflow_runs"),
                         RUNS / CONCURRENCY);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM (SELECT started_at FROM "
                                     "workflow_runs GROUP BY started_at HAVING count(*) "
                                     "<> %d) x",
                                     CONCURRENCY),
                         0);
        /* and each claim followed the end of the previous one's turn at once, not a poll
         * (1 s) later: from the worker's trace, whatever a turn takes on a loaded machine */
        gap_ms = longest_gap_ms(f, "w1");
        printf("claims: %d, the longest from a turn's end to the next claim: %lld ms (poll "
               "1000 ms)\n",
               RUNS / CONCURRENCY, gap_ms);
        assert_in_range(gap_ms, 0, 500);
        free(wf);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_a_backlog_is_claimed_turn_after_turn),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
