/*
 * Real `agently worker` processes competing for the same runs: each run has exactly one
 * live owner at a time (several workers, every effect sent once when nobody crashes); a
 * worker SIGKILLed mid-run loses nothing (its lease expires, another worker resumes from
 * the checkpoint: finished steps are not re-run); and a ZOMBIE worker, SIGSTOPped for twice
 * its lease and then continued, gets every write refused and stops the run: the database
 * and the sink show nothing from it after the new owner took over; told to stop the moment
 * it is continued, it still says which run it lost.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

static pid_t spawn(struct worker_fixture *f, const char *id)
{
        /* a small concurrency, so that no single worker can take every run at once */
        static const char *const extra[] = {"--concurrency", "8", NULL};
        return worker_fixture_spawn(f, id, "2s", "500ms", extra);
}

static char *workflow(struct worker_fixture *f, const char *definition)
{
        return worker_fixture_workflow(f, "w", definition);
}

static void wait_all(struct worker_fixture *f, const char *where, long long n, int ms)
{
        int64_t deadline = test_now_ms() + ms;
        while (test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE %s", where) < n) {
                if (test_now_ms() > deadline) {
                        worker_fixture_dump_logs(f);
                        fprintf(stderr, "%lld runs match %s, wanted %lld\n",
                                test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE %s",
                                            where),
                                where, n);
                        fail();
                }
                usleep(50 * 1000);
        }
}

#define RUNS 40

/* Three workers, 40 runs of three http steps: with nobody crashing, each step reaches the
 * sink exactly once, with one key per (run, node), and every node attempt was written by
 * the worker that held the run's lease at that epoch. */
static void test_several_workers_one_owner(void **state)
{
        struct worker_fixture *f = worker_fixture_new("owners");
        char *wf = workflow(f, "{\"name\":\"w\",\"nodes\":["
                               "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                               "\"SINK/s/a?delay_ms=20\"}},"
                               "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":"
                               "\"SINK/s/b?delay_ms=20\"},\"after\":[\"a\"]},"
                               "{\"id\":\"c\",\"type\":\"http\",\"request\":{\"url\":"
                               "\"SINK/s/c\"},\"after\":[\"b\"]}]}");
        char sql[512];

        spawn(f, "w1");
        spawn(f, "w2");
        spawn(f, "w3");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version) SELECT user_id, id, name, version FROM workflows, "
                 "generate_series(1, %d) WHERE id = '%s'",
                 RUNS, wf);
        PQclear(test_db_must(f->db, sql));
        wait_all(f, "status = 'completed'", RUNS, 45000);

        assert_int_equal(worker_sink_count(f->sink, "/s/"), RUNS * 3);
        assert_int_equal(worker_sink_distinct_keys(f->sink, "/s/"), RUNS * 3);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM node_runs WHERE status = "
                                            "'completed' AND attempt = 1"),
                         RUNS * 3);
        /* one claim per run: no run was taken from a live owner */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM workflow_runs WHERE "
                                            "lease_epoch <> 1"),
                         0);
        /* every worker did work (the test is about competition) */
        assert_int_equal(test_db_int(f->db, "SELECT count(DISTINCT worker) FROM node_runs"), 3);
        /* and each run's nodes were all written by its one owner */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM (SELECT workflow_run_id FROM "
                                            "node_runs GROUP BY 1 HAVING count(DISTINCT worker) "
                                            "> 1) x"),
                         0);
        free(wf);
        worker_fixture_free(f);
}

static const char THREE_STEPS[] = "{\"name\":\"w\",\"nodes\":["
                                  "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                                  "\"SINK/a\"}},"
                                  "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":"
                                  "\"SINK/b?delay_ms=1500\"},\"after\":[\"a\"]},"
                                  "{\"id\":\"c\",\"type\":\"http\",\"request\":{\"url\":"
                                  "\"SINK/c\"},\"after\":[\"b\"]}]}";

/* SIGKILL mid-step: the lease expires, another worker claims the run and resumes from the
 * checkpoint. a (committed) is not sent again; b (in flight, at_least_once) is re-sent with
 * the same key; c runs once. */
static void test_killed_worker_is_resumed_from_checkpoint(void **state)
{
        struct worker_fixture *f = worker_fixture_new("reclaim");
        char *wf = workflow(f, THREE_STEPS);
        pid_t w1 = spawn(f, "w1");
        char *run = worker_test_run(f->db, wf, NULL);

        worker_fixture_wait_sink(f, "/b", 1, 15000);
        test_stop_process(w1, SIGKILL, 5000);
        f->workers[0] = 0;
        spawn(f, "w2");
        if (!worker_test_wait_status(f->db, run, "completed", 20000)) {
                worker_fixture_dump_logs(f);
                fail();
        }
        assert_int_equal(worker_sink_count(f->sink, "/a"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/b"), 2);
        assert_int_equal(worker_sink_distinct_keys(f->sink, "/b"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/c"), 1);
        assert_int_equal(test_db_int(f->db, "SELECT lease_epoch FROM workflow_runs"), 2);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM logs WHERE kind = "
                                            "'run.recovered'"),
                         1);
        assert_db_equal("w2", f->db,
                        "SELECT worker FROM node_runs WHERE node_id = "
                        "'c'");
        free(run);
        free(wf);
        worker_fixture_free(f);
}

/* ZOMBIE: w1 is SIGSTOPped mid-step for twice its lease; w2 takes the run over and
 * finishes it; w1 is continued. w1's late response must be refused: nothing in the
 * database or at the sink comes from w1 after the takeover, and w1 drops the run. */
static void test_zombie_worker_is_fenced(void **state)
{
        struct worker_fixture *f = worker_fixture_new("zombie");
        char *wf = workflow(f, THREE_STEPS);
        pid_t w1 = spawn(f, "w1");
        char *run = worker_test_run(f->db, wf, NULL);
        char *takeover;
        int64_t resumed_ms;
        struct worker_sink_request req;
        char log[600], cmd[700];

        worker_fixture_wait_sink(f, "/b", 1, 15000);
        kill(w1, SIGSTOP);
        usleep(4200 * 1000); /* 2 x lease */
        spawn(f, "w2");
        if (!worker_test_wait_status(f->db, run, "completed", 20000)) {
                worker_fixture_dump_logs(f);
                fail();
        }
        takeover = test_db_value(f->db, "SELECT min(created_at) FROM logs WHERE kind = "
                                        "'run.recovered'");
        assert_non_null(takeover);

        resumed_ms = test_now_ms();
        kill(w1, SIGCONT);
        usleep(2500 * 1000); /* time for w1's pending response, heartbeat and retries */

        /* nothing from w1 after w2 took over */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM node_runs WHERE worker = 'w1' AND "
                                     "(node_id <> 'a' AND node_id <> 'b' OR lease_epoch <> 1)"),
                         0);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM node_runs WHERE worker = 'w1' AND "
                                     "coalesce(finished_at, started_at) >= '%s'",
                                     takeover),
                         0);
        assert_db_equal("completed 2", f->db,
                        "SELECT status || ' ' || lease_epoch FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        for (int i = 0; worker_sink_get(f->sink, "", i, &req) == 0; i++)
                if (strstr(req.user_agent, "/w1"))
                        assert_int_lt(req.at_ms, resumed_ms);
        assert_int_equal(worker_sink_count(f->sink, "/c"), 1);
        /* w1 is alive, said why it stopped the run, and drains cleanly */
        snprintf(log, sizeof(log), "%s/w1.log", f->dir);
        snprintf(cmd, sizeof(cmd), "grep -q 'lease.lost' %s", log);
        assert_int_equal(system(cmd), 0);
        assert_int_equal(waitpid(w1, NULL, WNOHANG), 0);
        free(takeover);
        free(run);
        free(wf);
        worker_fixture_free(f);
}

/* A zombie told to stop (SIGINT: drain without grace) at the moment it is continued, its
 * request still out (nothing to write that would meet the fence first), hands its runs back
 * in one fenced release, as a rule before its first heartbeat; the fence refuses the run
 * taken over meanwhile, the log still says that the run's lease was lost, and the worker
 * exits 0. */
static void test_zombie_drained_at_once_says_what_it_lost(void **state)
{
        struct worker_fixture *f = worker_fixture_new("zombie_drain");
        char *wf = workflow(f, "{\"name\":\"w\",\"nodes\":["
                               "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                               "\"SINK/a\"}},"
                               "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":"
                               "\"SINK/b?delay_ms=8000\"},\"after\":[\"a\"]}]}");
        pid_t w1 = spawn(f, "w1");
        char *run = worker_test_run(f->db, wf, NULL);
        char log[600], cmd[800];
        int st;

        worker_fixture_wait_sink(f, "/b", 1, 15000);
        kill(w1, SIGSTOP);
        usleep(4200 * 1000); /* 2 x lease */
        spawn(f, "w2");
        /* w2 has taken the run over, w1's request is still out (its answer is seconds away) */
        wait_all(f, "lease_epoch = 2", 1, 10000);
        kill(w1, SIGINT); /* pending when it wakes */
        kill(w1, SIGCONT);
        st = test_stop_process(w1, SIGINT, 10000);
        assert_exit_code(st, 0);
        if (!worker_test_wait_status(f->db, run, "completed", 20000)) {
                worker_fixture_dump_logs(f);
                fail();
        }
        snprintf(log, sizeof(log), "%s/w1.log", f->dir);
        snprintf(cmd, sizeof(cmd), "grep -q 'lease.lost run %s epoch 1 ' %s", run, log);
        if (system(cmd) != 0) {
                worker_fixture_dump_logs(f);
                fail_msg("w1 drained without saying that it lost run %s", run);
        }
        assert_db_equal("completed 2", f->db,
                        "SELECT status || ' ' || lease_epoch FROM workflow_runs WHERE id = '%s'",
                        run);
        free(run);
        free(wf);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_several_workers_one_owner),
            cmocka_unit_test(test_killed_worker_is_resumed_from_checkpoint),
            cmocka_unit_test(test_zombie_worker_is_fenced),
            cmocka_unit_test(test_zombie_drained_at_once_says_what_it_lost),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
