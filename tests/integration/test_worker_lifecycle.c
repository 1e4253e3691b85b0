/*
 * The worker's own lifecycle and the run outcomes that do not come from one step: SIGTERM
 * drains (results of effects that finish within the grace are kept; everything still held
 * goes back to the queue at once, so another worker starts it without waiting for a lease
 * to expire), on_failure escalate parks the run in needs_input holding nothing, a run
 * deadline fails a run that sleeps past it, and bad flags are refused with a clear error.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

static int stop_worker(pid_t pid, int sig, int ms)
{
        int st = test_stop_process(pid, sig, ms);
        if (st == -1 || !WIFEXITED(st))
                fail_msg("worker %d did not exit within %d ms (wait status %d)", (int)pid, ms, st);
        return WEXITSTATUS(st);
}

/* SIGTERM with a request still running past the grace: the worker exits 0 quickly and the
 * run is back in the queue at once; a worker with a 30 s lease picks it up immediately. */
static void test_drain_releases_held_runs(void **state)
{
        static const char *const grace[] = {"--drain-grace", "300ms", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_drain");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"url\":\"SINK/hang?delay_ms=15000\"},"
               "\"timeout\":\"60s\"}]}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "30s", "10s", grace), w2;
        int64_t t0;

        worker_fixture_wait_sink(f, "/hang", 1, 15000);
        /* the registry shows the live worker (for people and metrics)... */
        for (int i = 0; i < 40 && test_db_int(f->db, "SELECT count(*) FROM agently_workers "
                                                     "WHERE id = 'w1' AND concurrency = 100") == 0;
             i++)
                usleep(50 * 1000);
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM agently_workers WHERE id = "
                                            "'w1' AND concurrency = 100"),
                         1);
        t0 = test_now_ms();
        assert_int_equal(stop_worker(w1, SIGTERM, 10000), 0);
        assert_int_lt(test_now_ms() - t0, 3000);
        /* ...and forgets it when it stops */
        assert_int_equal(test_db_int(f->db, "SELECT count(*) FROM agently_workers"), 0);
        assert_db_equal("queued true", f->db,
                        "SELECT status || ' ' || (claimed_by IS NULL AND lease_expires_at IS "
                        "NULL AND run_at <= now())::text FROM workflow_runs WHERE id = '%s'",
                        run);

        t0 = test_now_ms();
        w2 = worker_fixture_spawn(f, "w2", "30s", "10s", NULL);
        worker_fixture_wait_sink(f, "/hang", 2, 5000);
        assert_int_lt(test_now_ms() - t0, 4000); /* not the 30 s lease */
        assert_int_equal(worker_sink_distinct_keys(f->sink, "/hang"), 1);
        PQclear(test_db_must(f->db, "UPDATE workflow_runs SET cancel_requested = true"));
        worker_fixture_wait_status(f, run, "canceled", 15000);
        assert_int_equal(stop_worker(w2, SIGTERM, 10000), 0);
        free(run);
        worker_fixture_free(f);
}

/* SIGTERM while a short request runs: it finishes within the grace and its result is
 * checkpointed; the next step is not started but handed back to the queue. */
static void test_drain_keeps_finished_effects(void **state)
{
        static const char *const grace[] = {"--drain-grace", "5s", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_drain2");
        char *run =
            worker_fixture_start_run(f, "{\"name\":\"w\",\"nodes\":["
                                        "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                                        "\"SINK/quick?delay_ms=800\"}},"
                                        "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":"
                                        "\"SINK/next\"},\"after\":[\"a\"]}]}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "30s", "10s", grace);

        worker_fixture_wait_sink(f, "/quick", 1, 15000);
        assert_int_equal(stop_worker(w1, SIGTERM, 10000), 0);
        assert_db_equal("completed", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = '%s' AND node_id = "
                        "'a'",
                        run);
        assert_int_equal(worker_sink_count(f->sink, "/next"), 0);
        assert_db_equal("queued", f->db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        free(run);
        worker_fixture_free(f);
}

/* SIGTERM while an at_most_once and an at_least_once request are in flight, and the run
 * then wants to start another (e finishes during the drain; d follows it). The drain
 * starts nothing new and aborts nothing: a and b finish within the grace and are
 * checkpointed, then the run goes back to the queue, and another worker runs d. Each
 * request reached the server exactly once, and the run completes. */
static void test_drain_lets_requests_in_flight_finish(void **state)
{
        static const char *const grace[] = {"--drain-grace", "10s", NULL};
        struct worker_fixture *f = worker_fixture_new("wk_drain3");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"a\",\"type\":\"http\",\"delivery\":\"at_most_once\","
               "\"timeout\":\"30s\",\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/amo?delay_ms=3000\"}},"
               "{\"id\":\"b\",\"type\":\"http\",\"timeout\":\"30s\","
               "\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/alo?delay_ms=3000\"}},"
               "{\"id\":\"e\",\"type\":\"http\",\"request\":{\"url\":"
               "\"SINK/e?delay_ms=1000\"}},"
               "{\"id\":\"d\",\"type\":\"http\",\"request\":{\"url\":"
               "\"SINK/d\"},\"after\":[\"e\"]}]}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "30s", "10s", grace), w2;

        worker_fixture_wait_sink(f, "/amo", 1, 15000);
        worker_fixture_wait_sink(f, "/alo", 1, 5000);
        worker_fixture_wait_sink(f, "/e", 1, 5000);
        assert_int_equal(stop_worker(w1, SIGTERM, 15000), 0);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' "
                                     "AND status = 'completed' AND worker = 'w1'",
                                     run),
                         3);
        assert_int_equal(worker_sink_count(f->sink, "/d"), 0);
        assert_db_equal("queued", f->db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);

        w2 = worker_fixture_spawn(f, "w2", "30s", "10s", NULL);
        worker_fixture_wait_status(f, run, "completed", 15000);
        assert_int_equal(worker_sink_count(f->sink, "/amo"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/alo"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/e"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/d"), 1);
        assert_int_equal(stop_worker(w2, SIGTERM, 10000), 0);
        free(run);
        worker_fixture_free(f);
}

/* on_failure escalate: the run waits in needs_input, holding nothing, with the error. */
static void test_escalate_to_needs_input(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_escalate");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"url\":\"SINK/bad?fail=9&status=500\"},"
               "\"retry\":{\"max_attempts\":1},\"on_failure\":\"escalate\"}]}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "2s", "500ms", NULL);

        worker_fixture_wait_status(f, run, "needs_input", 15000);
        assert_db_equal("true", f->db,
                        "SELECT (claimed_by IS NULL AND error IS NOT NULL)::text FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        assert_db_equal("1", f->db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'run.escalated' AND node_id = 'a'",
                        run);
        usleep(1000 * 1000); /* it stays there: nobody claims a needs_input run */
        assert_db_equal("needs_input", f->db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(worker_sink_count(f->sink, "/bad"), 1);
        assert_int_equal(stop_worker(w1, SIGTERM, 10000), 0);
        free(run);
        worker_fixture_free(f);
}

/* A run deadline (database time) fails a run sleeping past it. */
static void test_run_timeout(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_deadline");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"timeout\":\"1s\",\"nodes\":[{\"id\":\"nap\","
               "\"type\":\"sleep\",\"duration\":\"1h\"}]}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "2s", "500ms", NULL);
        int64_t t0 = test_now_ms();

        worker_fixture_wait_status(f, run, "failed", 10000);
        assert_int_lt(test_now_ms() - t0, 5000);
        assert_db_equal("timeout", f->db,
                        "SELECT error->>'class' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(stop_worker(w1, SIGTERM, 10000), 0);
        free(run);
        worker_fixture_free(f);
}

/* Postgres writes a number of a JSON document in plain digits: a real such as 1e20, which
 * jansson reads as a real, comes back from a jsonb column as 100000000000000000000, an
 * integer too big for jansson. A run whose input, a node's output or its own output holds
 * one is read, planned and finished like any other (before, its snapshot did not parse,
 * and the worker's claim of it failed on every turn, with every run claimed beside it). */
static void test_numbers_postgres_writes_in_digits(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_digits");
        char *wf = worker_fixture_workflow(
            f, "w",
            "{\"name\":\"w\",\"nodes\":[{\"id\":\"echo\",\"type\":\"transform\",\"output\":"
            "{\"big\":\"${ input.big }\",\"huge\":\"${ input.huge }\"}},{\"id\":\"again\","
            "\"type\":\"transform\",\"after\":[\"echo\"],\"output\":\"${ nodes.echo.output }\"}],"
            "\"output\":\"${ nodes.again.output }\"}");
        char *run = worker_test_run(f->db, wf,
                                    "{\"big\": 1e20, \"huge\": -1.5e300, \"tiny\": 1e-7, \"max\": "
                                    "9223372036854775807}");
        char *plain = worker_test_run(f->db, wf, "{\"big\": 1, \"huge\": 2}");
        pid_t w1 = worker_fixture_spawn(f, "w1", "10s", "500ms", NULL);

        (void)state;
        worker_fixture_wait_status(f, run, "completed", 20000);
        worker_fixture_wait_status(f, plain, "completed", 20000);
        /* the same doubles (jansson writes a real with 17 digits: -1.5000000000000001e+300) */
        assert_db_equal("t t", f->db,
                        "SELECT concat_ws(' ', (output->>'big')::float8 = 1e20, "
                        "(output->>'huge')::float8 = -1.5e300) FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(stop_worker(w1, SIGTERM, 10000), 0);
        free(plain);
        free(run);
        free(wf);
        worker_fixture_free(f);
}

static void expect_usage_error(struct worker_fixture *f, const char *const *args,
                               const char *message)
{
        char log[600], text[4096];
        FILE *out;
        size_t n;
        pid_t pid;
        int st;

        snprintf(log, sizeof(log), "%s/usage.log", f->dir);
        unlink(log);
        pid = test_spawn_agently(args, NULL, log);
        st = test_stop_process(pid, 0, 5000);
        assert_exit_code(st, 2);
        out = fopen(log, "r");
        assert_non_null(out);
        n = fread(text, 1, sizeof(text) - 1, out);
        text[n] = '\0';
        fclose(out);
        if (!strstr(text, message))
                fail_msg("expected '%s' in the output, got: %s", message, text);
}

static void test_flags_are_validated(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_flags");
        const char *a1[] = {"worker", "--lease", "3s", "--heartbeat", "2s", NULL};
        const char *a2[] = {"worker", "--concurrency", "0", NULL};
        const char *a3[] = {"worker", "--lease", "soon", NULL};
        const char *a4[] = {"worker", "--poll", "5s", NULL};

        expect_usage_error(f, a1, "must be at most half the lease");
        expect_usage_error(f, a2, "--concurrency must be 1-10000, got '0'");
        expect_usage_error(f, a3, "--lease must be a duration between 1s and 1h");
        expect_usage_error(f, a4, "--poll must be a duration between 10ms and 1s");
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_drain_releases_held_runs),
            cmocka_unit_test(test_drain_keeps_finished_effects),
            cmocka_unit_test(test_drain_lets_requests_in_flight_finish),
            cmocka_unit_test(test_escalate_to_needs_input),
            cmocka_unit_test(test_run_timeout),
            cmocka_unit_test(test_numbers_postgres_writes_in_digits),
            cmocka_unit_test(test_flags_are_validated),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
