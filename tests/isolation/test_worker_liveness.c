/*
 * Liveness of the queue around a worker that stops moving (src/worker/README.md, "Database
 * sessions"). A worker frozen with SIGSTOP in the middle of a loop turn holds its turn's
 * run rows locked, and SKIP LOCKED hides locked rows from every rescuer: the server must
 * end that session (idle_in_transaction_session_timeout, lease - heartbeat) so that another worker
 * rescues the runs once their leases expire — and the frozen worker, continued, must write
 * nothing. And the claim's own rules for liveness: a worker never rescues a run it still
 * holds; a database error while loading a claimed run's workflow leaves the run for a
 * retry instead of failing it.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

#define LEASE_MS 2000
#define RUNS     4

static pid_t spawn(struct worker_fixture *f, const char *id)
{
        return worker_fixture_spawn(f, id, "2s", "500ms", NULL);
}

/* Whether the worker id's log (DIR/ID.log) contains text. */
static bool log_has(struct worker_fixture *f, const char *id, const char *text)
{
        char path[1024], line[4096];
        bool found = false;
        FILE *in;

        snprintf(path, sizeof(path), "%s/%s.log", f->dir, id);
        in = fopen(path, "r");
        if (!in)
                return false;
        while (!found && fgets(line, sizeof(line), in))
                found = strstr(line, text) != NULL;
        fclose(in);
        return found;
}

/* Polls a count query until it reaches n; returns the ms it took, or fails after ms. */
static int64_t wait_count(struct worker_fixture *f, long long n, int ms, const char *sql)
{
        int64_t t0 = test_now_ms();
        while (test_db_int(f->db, "%s", sql) < n) {
                if (test_now_ms() - t0 > ms) {
                        worker_fixture_dump_logs(f);
                        fail_msg("%lld rows for %s after %d ms, wanted %lld",
                                 test_db_int(f->db, "%s", sql), sql, ms, n);
                }
                usleep(20 * 1000);
        }
        return test_now_ms() - t0;
}

/*
 * w1 claims four parent runs and starts a turn: it locks all four rows, then creates the
 * first one's child run — an INSERT the test makes wait (it holds an uncommitted run with
 * the same idempotency key). w1 is SIGSTOPped right there and the test lets the INSERT
 * through: w1's session now sits idle in its transaction, holding the four rows, with a
 * client that will not answer. The rows must be freed and the runs rescued by w2 within
 * the lease and a few seconds; w1, continued, writes nothing and sends nothing.
 */
static void test_worker_frozen_mid_turn_is_rescued(void **state)
{
        struct worker_fixture *f = worker_fixture_new("frozen");
        char *child = worker_fixture_workflow(
            f, "child",
            "{\"name\":\"child\",\"nodes\":[{\"id\":\"x\",\"type\":\"http\","
            "\"request\":{\"url\":\"SINK/child\"}}]}");
        char *parent = worker_fixture_workflow(
            f, "parent",
            "{\"name\":\"parent\",\"nodes\":["
            "{\"id\":\"sub\",\"type\":\"subworkflow\",\"workflow\":\"child\"},"
            "{\"id\":\"after\",\"type\":\"http\",\"request\":{\"url\":"
            "\"SINK/after\"},\"after\":[\"sub\"]}]}");
        char *blocked, *state_now, *takeover;
        pid_t w1, w2;
        int64_t stopped_at, rescue_ms, resumed_ms;
        struct worker_sink_request req;

        /* another session watches: the test's own sits in the transaction that blocks w1 */
        PGconn *holder = test_db_connect(f->conninfo);

        /* the runs, and (uncommitted) a run holding each child's idempotency key */
        free(test_db_value(f->db,
                           "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                           "workflow_version) SELECT user_id, id, name, version FROM workflows, "
                           "generate_series(1, %d) WHERE id = '%s' RETURNING id",
                           RUNS, parent));
        PQclear(test_db_must(holder, "BEGIN"));
        PQclear(test_db_must(holder, "INSERT INTO workflow_runs (user_id, workflow_id, "
                                     "workflow_name, workflow_version, idempotency_key) "
                                     "SELECT c.user_id, c.id, c.name, c.version, 'child:' || p.id "
                                     "|| ':sub:1' FROM workflows c, workflow_runs p "
                                     "WHERE c.name = 'child' AND p.workflow_name = 'parent'"));

        w1 = spawn(f, "w1");
        /* w1's turn waits for the test's transaction: it holds the four rows by now */
        for (int i = 0;; i++) {
                blocked = test_db_value(f->db,
                                        "SELECT pid FROM pg_stat_activity WHERE %d = ANY "
                                        "(pg_blocking_pids(pid)) LIMIT 1",
                                        PQbackendPID(holder));
                if (blocked)
                        break;
                if (i > 750) {
                        worker_fixture_dump_logs(f);
                        fail_msg("w1 never reached the child run's insert");
                }
                usleep(20 * 1000);
        }
        kill(w1, SIGSTOP);
        stopped_at = test_now_ms();
        PQclear(test_db_must(holder, "ROLLBACK"));
        PQfinish(holder);
        w2 = spawn(f, "w2");

        /* the window: w1's session is idle in its transaction and holds every run */
        for (int i = 0;; i++) {
                state_now = test_db_value(
                    f->db, "SELECT state FROM pg_stat_activity WHERE pid = %s", blocked);
                if (state_now && strcmp(state_now, "idle in transaction") == 0)
                        break;
                assert_int_lt(i, 100);
                free(state_now);
                usleep(5 * 1000);
        }
        free(state_now);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM (SELECT 1 FROM workflow_runs WHERE "
                                     "workflow_name = 'parent' FOR UPDATE SKIP LOCKED) x"),
                         0);

        /* rescued: every run taken over by w2, within the lease and a few seconds. w1 was
         * frozen in the turn that claimed the runs, so its claim was never committed: the
         * session's end rolled it back with the rest of the turn, and w2 starts the runs
         * afresh (run.started, from queued) instead of recovering them */
        wait_count(f, RUNS, LEASE_MS + 4000,
                   "SELECT count(*) FROM logs WHERE kind = 'run.started' AND data->>'worker' = "
                   "'w2'");
        rescue_ms = test_now_ms() - stopped_at;
        printf("# runs rescued %lld ms after w1 was stopped (lease %d ms)\n", (long long)rescue_ms,
               LEASE_MS);
        assert_int_lt(rescue_ms, LEASE_MS + 4000);
        wait_count(f, RUNS, 20000,
                   "SELECT count(*) FROM workflow_runs WHERE workflow_name = 'parent' AND "
                   "status = 'completed'");
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind = "
                                            "'run.started'"),
                         2 * RUNS); /* the parents' and the children's */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE data->>'worker' = "
                                            "'w1'"),
                         0);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE "
                                            "workflow_name = 'child'"),
                         RUNS);
        assert_int_equal(worker_sink_count(f->sink, "/child"), RUNS);
        assert_int_equal(worker_sink_count(f->sink, "/after"), RUNS);

        /* w1, continued, is fenced: nothing from it after the takeover */
        takeover = test_db_value(f->db, "SELECT min(created_at) FROM logs WHERE kind = "
                                        "'run.started'");
        resumed_ms = test_now_ms();
        kill(w1, SIGCONT);
        usleep(2500 * 1000);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM node_runs WHERE worker = 'w1' AND "
                                     "coalesce(finished_at, started_at) >= '%s'",
                                     takeover),
                         0);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM node_runs WHERE worker = 'w1'"),
                         0);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE "
                                            "workflow_name = 'child'"),
                         RUNS);
        for (int i = 0; worker_sink_get(f->sink, "", i, &req) == 0; i++)
                if (strstr(req.user_agent, "/w1"))
                        assert_int_lt(req.at_ms, resumed_ms);
        /* alive, and it drains cleanly */
        assert_int_equal(waitpid(w1, NULL, WNOHANG), 0);
        assert_exit_code(test_stop_process(w1, SIGTERM, 15000), 0);
        assert_exit_code(test_stop_process(w2, SIGTERM, 15000), 0);
        free(takeover);
        free(blocked);
        free(child);
        free(parent);
        worker_fixture_free(f);
}

/*
 * A worker's own lease on a run it is working on can lapse without anyone else involved
 * (a turn that kept the row locked past it, a renewal that came late). Its own claim must
 * not "rescue" the run from itself into a second copy (a new epoch, the first copy's
 * request aborted and sent again): the heartbeat renews the lease, the epoch stays. The
 * test makes the lapse happen over and over for 1.5 s (claims poll every 100 ms) while a
 * request is in flight.
 */
static void test_worker_never_rescues_its_own_run(void **state)
{
        struct worker_fixture *f = worker_fixture_new("selfrescue");
        char *wf = worker_fixture_workflow(f, "w",
                                           "{\"name\":\"w\",\"nodes\":["
                                           "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                                           "\"SINK/slow?delay_ms=3000\"}},"
                                           "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":"
                                           "\"SINK/b\"},\"after\":[\"a\"]}]}");
        char *run = worker_test_run(f->db, wf, NULL);
        pid_t w1 = spawn(f, "w1");

        wait_count(f, 1, 15000,
                   "SELECT count(*) FROM node_runs WHERE node_id = 'a' AND status = 'started'");
        for (int64_t t0 = test_now_ms(); test_now_ms() - t0 < 1500;) {
                PQclear(test_db_must(f->db, "UPDATE run_queue SET lease_expires_at = now() - "
                                            "interval '1 second' WHERE claimed_by IS NOT NULL"));
                usleep(20 * 1000);
        }
        if (!worker_test_wait_status(f->db, run, "completed", 15000)) {
                worker_fixture_dump_logs(f);
                fail_msg("run %s did not complete", run);
        }
        assert_int_equal(test_db_int(f->db, "SELECT lease_epoch FROM workflow_runs"), 1);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind = "
                                            "'run.recovered'"),
                         0);
        assert_int_equal(worker_sink_count(f->sink, "/slow"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/b"), 1);
        assert_exit_code(test_stop_process(w1, SIGTERM, 15000), 0);
        free(run);
        free(wf);
        worker_fixture_free(f);
}

/*
 * A database error while the worker looks up a claimed run's workflow definition says
 * nothing about the run: it must not be failed, but left for a retry. The claim is rolled
 * back with the turn it opened, so the run stays queued, due at once: claimed again at the
 * next poll, without waiting for a lease. The worker role is denied the workflows table
 * until the worker has tried.
 */
static void test_transient_error_loading_the_workflow_leaves_the_run(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wflookup");
        char *wf =
            worker_fixture_workflow(f, "w",
                                    "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
                                    "\"request\":{\"url\":\"SINK/a\"}}]}");
        char *run;
        pid_t w1;

        PQclear(test_db_must(f->db, "REVOKE SELECT ON workflows FROM agently_worker"));
        run = worker_test_run(f->db, wf, NULL);
        w1 = spawn(f, "w1");
        /* tried (its log says so); the run not failed, not claimed, nothing written */
        for (int i = 0; !log_has(f, "w1", "could not load the workflow definition"); i++) {
                if (i > 750) {
                        worker_fixture_dump_logs(f);
                        fail_msg("w1 never tried to load the workflow definition");
                }
                usleep(20 * 1000);
        }
        usleep(300 * 1000);
        assert_db_equal("queued 0", f->db,
                        "SELECT r.status || ' ' || q.lease_epoch FROM workflow_runs r JOIN "
                        "run_queue q ON q.run_id = r.id WHERE r.id = '%s'",
                        run);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind <> 'run.queued'"),
                         0);
        PQclear(test_db_must(f->db, "GRANT SELECT ON workflows TO agently_worker"));
        if (!worker_test_wait_status(f->db, run, "completed", LEASE_MS + 8000)) {
                worker_fixture_dump_logs(f);
                fail_msg("run %s did not complete", run);
        }
        assert_int_equal(worker_sink_count(f->sink, "/a"), 1);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind = "
                                            "'run.recovered'"),
                         0);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind = "
                                            "'run.started'"),
                         1);
        assert_exit_code(test_stop_process(w1, SIGTERM, 15000), 0);
        free(run);
        free(wf);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_worker_frozen_mid_turn_is_rescued),
            cmocka_unit_test(test_worker_never_rescues_its_own_run),
            cmocka_unit_test(test_transient_error_loading_the_workflow_leaves_the_run),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
