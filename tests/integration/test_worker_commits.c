/*
 * What a run costs in commits. A run that finishes in its first turn is claimed inside that
 * turn's transaction (src/worker/README.md, "Claims"): its claim, its events and its end
 * are one commit, so the whole run is two writing transactions — its enqueue and that
 * turn — where a claim committed on its own made three.
 *
 * Counted with transaction ids: every transaction that writes takes one, and the next one
 * to be handed out is read without taking one (pg_snapshot_xmax of a snapshot). Nothing
 * else writes meanwhile: the worker's heartbeat is 20 s (it beat when it started), and the
 * test runs alone on the harness cluster (SERIAL in CMakeLists.txt: transaction ids are
 * the cluster's, every database's test would count).
 *
 * And what it costs in round trips: the turn that claims a run reads its snapshot with the
 * claim (agently_claim_turn, 0033), counted with the database's own count of function calls
 * (track_functions) of the worker's sessions.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

#define RUNS 20

static long long next_xid(PGconn *c)
{
        return test_db_int(c, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint");
}

static const char TWO_STEPS[] = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},"
                                "{\"id\":\"b\",\"type\":\"noop\",\"after\":[\"a\"]}]}";

/* Enqueues RUNS runs of "w", one at a time, each once the one before completed. */
static void run_one_at_a_time(struct worker_fixture *f)
{
        for (int i = 0; i < RUNS; i++) {
                PQclear(test_db_must(
                    f->db, "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                           "workflow_version, input) SELECT user_id, id, name, version, '{}' "
                           "FROM workflows WHERE name = 'w'"));
                for (int k = 0; k < 2000 && test_db_int(f->db, "SELECT count(*) FROM "
                                                               "workflow_runs WHERE status <> "
                                                               "'completed'") > 0;
                     k++)
                        usleep(5 * 1000);
                assert_int_equal(test_db_int(f->db,
                                             "SELECT count(*) FROM workflow_runs WHERE status <> "
                                             "'completed'"),
                                 0);
        }
}

static void test_single_turn_run_is_one_commit(void **state)
{
        static const char *const poll[] = {"--poll", "50ms", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_commits");
        char *wf = worker_fixture_workflow(f, "w", TWO_STEPS);
        pid_t w = worker_fixture_spawn(f, "w1", "60s", "20s", poll);
        long long before, spent;

        (void)w;
        /* started: registered (its first beat), idle */
        worker_test_wait_registered(f->db, "w1", 10000);
        usleep(200 * 1000);

        before = next_xid(f->db);
        run_one_at_a_time(f);
        spent = next_xid(f->db) - before;
        /* each run: its INSERT and the turn that claimed and finished it (a heartbeat's
         * registry write may fall in between) */
        printf("writing transactions for %d single-turn runs: %lld\n", RUNS, spent);
        assert_in_range(spent, 2 * RUNS, 2 * RUNS + 2);
        /* and each run's record was written once by the worker, queued -> completed, in
         * the transaction that also wrote its events (one xid for both) */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM workflow_runs r WHERE r.xmin::text "
                                     "<> (SELECT l.xmin::text FROM logs l WHERE "
                                     "l.workflow_run_id = r.id AND l.kind = 'run.started')"),
                         0);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM workflow_runs"), RUNS);
        free(wf);
        worker_fixture_free(f);
}

/* The calls of the PL/pgSQL function fn the database has counted (track_functions; a
 * session's counts are flushed at the latest when it ends). */
static long long function_calls(PGconn *c, const char *fn)
{
        PQclear(test_db_must(c, "SELECT pg_stat_clear_snapshot()"));
        return test_db_int(c,
                           "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE "
                           "funcname = '%s'",
                           fn);
}

/* And in round trips: a run claimed in a turn gets its snapshot with its claim
 * (agently_claim_turn), so the turn that claims and finishes it sends two statements —
 * BEGIN with the claim, the writes with the COMMIT — and reads no snapshot of its own. */
static void test_single_turn_run_is_read_with_its_claim(void **state)
{
        static const char *const poll[] = {"--poll", "50ms", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_reads");
        char *wf = worker_fixture_workflow(f, "w", TWO_STEPS);
        long long writes, claims, reads;
        pid_t w;

        (void)state;
        /* the worker's sessions, started after this, count their function calls */
        PQclear(test_db_must(f->db, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET "
                                    "track_functions = ''pl''', current_database()); END $$"));
        w = worker_fixture_spawn(f, "w1", "60s", "20s", poll);
        worker_test_wait_registered(f->db, "w1", 10000);
        run_one_at_a_time(f);
        assert_exit_code(test_stop_process(w, SIGTERM, 15000), 0);
        for (int k = 0; k < 100 && function_calls(f->db, "agently_apply_write_rows") < RUNS; k++)
                usleep(50 * 1000);
        usleep(200 * 1000); /* the rest of the ended sessions' counts */

        writes = function_calls(f->db, "agently_apply_write_rows");
        claims = function_calls(f->db, "agently_claim_turn");
        reads = function_calls(f->db, "agently_snapshots");
        printf("%d single-turn runs: %lld writes statements, %lld claims, %lld snapshot reads\n",
               RUNS, writes, claims, reads);
        /* one writes statement per run (with its COMMIT) */
        assert_int_equal(writes, RUNS);
        /* each run's snapshot was read by the claim that took it, in the claim's own
         * statement (agently_run_snapshot, inlined, 0053): the read of a held run,
         * agently_snapshots, was never called */
        assert_int_ge(claims, RUNS);
        assert_int_equal(reads, 0);
        free(wf);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_single_turn_run_is_one_commit),
            cmocka_unit_test(test_single_turn_run_is_read_with_its_claim),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
