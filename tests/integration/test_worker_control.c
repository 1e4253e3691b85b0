/*
 * `agently worker` and the things that change a run from outside: signals (sent before the
 * wait_event node is reached, and while it waits), cancel and pause/resume of a running
 * run, subworkflows (the parent waits without a worker and wakes when the child finishes),
 * and an at_most_once request interrupted by SIGKILL (never sent twice). The control
 * plane's writes are done here in SQL exactly as the API does them: flags on a running
 * run, status changes on a run nobody holds, signals plus agently_wake_run().
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"
#include "worker_fixture.h"

/* One worker per test, w1 (lease 2 s, heartbeat 500 ms); the one running at the end (w1, or
 * the w2 that replaced it) must drain cleanly. */
static struct worker_fixture *setup(const char *name)
{
        struct worker_fixture *f = worker_fixture_new(name);

        worker_fixture_spawn(f, "w1", "2s", "500ms", NULL);
        return f;
}

static void teardown(struct worker_fixture *f)
{
        assert_exit_code(test_stop_process(f->workers[f->nworkers - 1], SIGTERM, 15000), 0);
        worker_fixture_free(f);
}

static char *workflow(struct worker_fixture *f, const char *name, const char *definition)
{
        return worker_fixture_workflow(f, name, definition);
}

static const char SIGNAL_WF[] =
    "{\"name\":\"sig\",\"nodes\":["
    "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":\"SINK/a\"}},"
    "{\"id\":\"b\",\"type\":\"wait_event\",\"event\":\"go\",\"after\":[\"a\"]},"
    "{\"id\":\"c\",\"type\":\"http\",\"request\":{\"url\":\"SINK/c\"},\"after\":[\"b\"]}]}";

/* A signal sent before the run reaches its wait_event node is kept and consumed there. */
static void test_signal_sent_early(void **state)
{
        struct worker_fixture *f = setup("wk_sig_early");
        char *wf = workflow(f, "sig", SIGNAL_WF);
        char *run;

        /* the run and its signal appear together: the worker cannot reach b first */
        PQclear(test_db_must(f->db, "BEGIN"));
        run = worker_test_run(f->db, wf, NULL);
        free(test_db_value(f->db,
                           "INSERT INTO signals (user_id, workflow_run_id, name, payload) SELECT "
                           "user_id, id, 'go', '{\"v\": 7}' FROM workflow_runs WHERE id = '%s' "
                           "RETURNING id",
                           run));
        PQclear(test_db_must(f->db, "COMMIT"));

        worker_fixture_wait_status(f, run, "completed", 15000);
        assert_int_equal(worker_sink_count(f->sink, "/c"), 1);
        assert_db_equal("b", f->db,
                        "SELECT consumed_by_node FROM signals WHERE "
                        "workflow_run_id = '%s'",
                        run);
        assert_db_equal("completed", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = "
                        "'%s' AND node_id = 'b'",
                        run);
        free(run);
        free(wf);
        teardown(f);
}

/* A run waiting for a signal holds nothing; the signal (plus wake-up) resumes it. */
static void test_signal_wakes_waiting_run(void **state)
{
        struct worker_fixture *f = setup("wk_sig_late");
        char *wf = workflow(f, "sig", SIGNAL_WF);
        char *run = worker_test_run(f->db, wf, NULL);

        worker_fixture_wait_status(f, run, "waiting", 15000);
        assert_db_equal("true", f->db,
                        "SELECT (claimed_by IS NULL AND run_at = 'infinity')"
                        "::text FROM workflow_runs WHERE id = '%s'",
                        run);
        /* people see what it waits for */
        assert_db_equal("signal 'go' (node b)", f->db,
                        "SELECT wait_reason FROM workflow_runs WHERE id = '%s'", run);
        usleep(500 * 1000);
        assert_int_equal(worker_sink_count(f->sink, "/c"), 0);
        PQclear(test_db_must(f->db, "BEGIN"));
        free(test_db_value(f->db,
                           "INSERT INTO signals (user_id, workflow_run_id, name, payload) SELECT "
                           "user_id, id, 'go', '{}' FROM workflow_runs WHERE id = '%s' RETURNING "
                           "id",
                           run));
        free(test_db_value(f->db, "SELECT agently_wake_run('%s')", run));
        PQclear(test_db_must(f->db, "COMMIT"));
        worker_fixture_wait_status(f, run, "completed", 10000);
        assert_int_equal(worker_sink_count(f->sink, "/c"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "run.resumed"), 1);
        free(run);
        free(wf);
        teardown(f);
}

/* Cancel of a running run: the request in flight is stopped, the node recorded canceled,
 * the run finished canceled, nothing after it runs. */
static void test_cancel_running_run(void **state)
{
        struct worker_fixture *f = setup("wk_cancel");
        char *wf = workflow(f, "cancel",
                            "{\"name\":\"cancel\",\"nodes\":["
                            "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":"
                            "\"SINK/hang?delay_ms=8000\"},\"timeout\":\"60s\"},"
                            "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"SINK/b\"},"
                            "\"after\":[\"a\"]}]}");
        char *run = worker_test_run(f->db, wf, NULL);
        int64_t t0;

        worker_fixture_wait_sink(f, "/hang", 1, 15000);
        t0 = test_now_ms();
        PQclear(test_db_must(f->db, "UPDATE workflow_runs SET cancel_requested = true"));
        worker_fixture_wait_status(f, run, "canceled", 5000);
        assert_int_lt(test_now_ms() - t0, 3000); /* a heartbeat, not the request's 8 s */
        assert_db_equal("canceled", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = "
                        "'%s' AND node_id = 'a'",
                        run);
        assert_int_equal(worker_fixture_count_events(f, run, "run.canceled"), 1);
        usleep(500 * 1000);
        assert_int_equal(worker_sink_count(f->sink, "/b"), 0);
        free(run);
        free(wf);
        teardown(f);
}

/* A pause takes effect at the next step boundary: the request in flight — an at_most_once
 * POST that takes 5 s — finishes and is checkpointed, nothing after it starts, and only
 * then is the run released paused; resume (the API re-queues it) goes on from there. The
 * POST reached the server exactly once: a pause never makes a request go twice. */
static void test_pause_and_resume(void **state)
{
        struct worker_fixture *f = setup("wk_pause");
        char *wf = workflow(f, "pause",
                            "{\"name\":\"pause\",\"nodes\":["
                            "{\"id\":\"a\",\"type\":\"http\",\"delivery\":\"at_most_once\","
                            "\"timeout\":\"30s\",\"request\":{\"method\":\"POST\",\"url\":"
                            "\"SINK/slow?delay_ms=5000\"}},"
                            "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"SINK/b\"},"
                            "\"after\":[\"a\"]}]}");
        char *run = worker_test_run(f->db, wf, NULL);
        int64_t t0;

        worker_fixture_wait_sink(f, "/slow", 1, 15000);
        t0 = test_now_ms();
        PQclear(test_db_must(f->db, "UPDATE workflow_runs SET pause_requested = true"));
        usleep(1500 * 1000); /* a heartbeat has seen it: the run waits for its request */
        assert_db_equal("running started", f->db,
                        "SELECT r.status || ' ' || n.status FROM workflow_runs r JOIN node_runs n "
                        "ON n.workflow_run_id = r.id WHERE r.id = '%s' AND n.node_id = 'a'",
                        run);
        worker_fixture_wait_status(f, run, "paused", 10000);
        assert_int_ge(test_now_ms() - t0, 3000); /* the rest of the 5 s request */
        assert_db_equal("completed", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = '%s' AND node_id = "
                        "'a'",
                        run);
        assert_db_equal("true", f->db,
                        "SELECT (claimed_by IS NULL AND NOT pause_requested)"
                        "::text FROM workflow_runs WHERE id = '%s'",
                        run);
        usleep(1500 * 1000); /* paused means paused: nothing moves */
        assert_int_equal(worker_sink_count(f->sink, "/b"), 0);
        assert_db_equal("paused", f->db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);

        PQclear(test_db_must(f->db, "UPDATE workflow_runs SET status = 'queued', run_at = now() "
                                    "WHERE status = 'paused'"));
        worker_fixture_wait_status(f, run, "completed", 15000);
        assert_int_equal(worker_sink_count(f->sink, "/slow"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/b"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "run.paused"), 1);
        free(run);
        free(wf);
        teardown(f);
}

/* A subworkflow: one child run, created once; the parent waits without a worker and wakes
 * when the child finishes; the child's output is the node's output. */
static void test_subworkflow(void **state)
{
        struct worker_fixture *f = setup("wk_child");
        char *child = workflow(f, "child",
                               "{\"name\":\"child\",\"nodes\":[{\"id\":\"x\",\"type\":\"http\","
                               "\"request\":{\"url\":\"SINK/child\"}}]}");
        char *parent = workflow(f, "parent",
                                "{\"name\":\"parent\",\"nodes\":["
                                "{\"id\":\"sub\",\"type\":\"subworkflow\",\"workflow\":"
                                "\"child\",\"input\":{\"k\":1}},"
                                "{\"id\":\"after\",\"type\":\"http\",\"request\":{\"url\":"
                                "\"SINK/after\"},\"after\":[\"sub\"]}]}");
        char *run = worker_test_run(f->db, parent, NULL);

        worker_fixture_wait_status(f, run, "completed", 20000);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT count(*) FROM workflow_runs WHERE parent_run_id = "
                                     "'%s' AND parent_node_id = 'sub' AND status = 'completed' "
                                     "AND input = '{\"k\": 1}'",
                                     run),
                         1);
        assert_int_equal(worker_sink_count(f->sink, "/child"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/after"), 1);
        assert_int_ge(worker_fixture_count_events(f, run, "run.waiting"), 1);
        free(run);
        free(child);
        free(parent);
        teardown(f);
}

/* Canceling a parent cancels the child run it is waiting for (and stops the child's
 * request in flight). */
static void test_cancel_reaches_subworkflow(void **state)
{
        struct worker_fixture *f = setup("wk_child_cancel");
        char *child = workflow(f, "child",
                               "{\"name\":\"child\",\"nodes\":[{\"id\":\"x\",\"type\":\"http\","
                               "\"request\":{\"url\":\"SINK/hang?delay_ms=8000\"},"
                               "\"timeout\":\"60s\"}]}");
        char *parent = workflow(f, "parent",
                                "{\"name\":\"parent\",\"nodes\":[{\"id\":\"sub\",\"type\":"
                                "\"subworkflow\",\"workflow\":\"child\"}]}");
        char *run = worker_test_run(f->db, parent, NULL);
        char *kid;

        worker_fixture_wait_sink(f, "/hang", 1, 15000);
        worker_fixture_wait_status(f, run, "waiting", 5000);
        assert_db_equal("subworkflow (node sub)", f->db,
                        "SELECT wait_reason FROM workflow_runs WHERE id = '%s'", run);
        PQclear(test_db_must(f->db, "BEGIN"));
        free(test_db_value(f->db,
                           "UPDATE workflow_runs SET cancel_requested = true, run_at = now() "
                           "WHERE id = '%s' RETURNING id",
                           run));
        PQclear(test_db_must(f->db, "COMMIT"));
        worker_fixture_wait_status(f, run, "canceled", 10000);
        kid = test_db_value(f->db, "SELECT id FROM workflow_runs WHERE parent_run_id = '%s'", run);
        assert_non_null(kid);
        worker_fixture_wait_status(f, kid, "canceled", 10000);
        assert_db_equal("canceled", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = '%s' AND node_id = "
                        "'x'",
                        kid);
        free(kid);
        free(run);
        free(child);
        free(parent);
        teardown(f);
}

/* at_most_once: the START mark is committed before the request leaves. SIGKILL mid-request;
 * the next worker finds the node started-but-unfinished and fails it as interrupted instead
 * of sending again. */
static void test_at_most_once_interrupted(void **state)
{
        struct worker_fixture *f = setup("wk_amo");
        char *wf = workflow(f, "amo",
                            "{\"name\":\"amo\",\"nodes\":[{\"id\":\"pay\",\"type\":\"http\","
                            "\"delivery\":\"at_most_once\",\"request\":{\"method\":\"POST\","
                            "\"url\":\"SINK/pay?delay_ms=5000\"}}]}");
        char *run = worker_test_run(f->db, wf, NULL);
        worker_fixture_wait_sink(f, "/pay", 1, 15000);
        assert_db_equal("started", f->db,
                        "SELECT status FROM node_runs WHERE workflow_run_id = "
                        "'%s'",
                        run);
        test_stop_process(f->workers[0], SIGKILL, 5000);
        worker_fixture_spawn(f, "w2", "2s", "500ms", NULL);
        worker_fixture_wait_status(f, run, "failed", 15000);
        usleep(300 * 1000);
        assert_int_equal(worker_sink_count(f->sink, "/pay"), 1);
        assert_db_equal("interrupted", f->db,
                        "SELECT error->>'class' FROM node_runs WHERE "
                        "workflow_run_id = '%s' ORDER BY attempt DESC LIMIT 1",
                        run);
        free(run);
        free(wf);
        teardown(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_signal_sent_early),
            cmocka_unit_test(test_signal_wakes_waiting_run),
            cmocka_unit_test(test_cancel_running_run),
            cmocka_unit_test(test_pause_and_resume),
            cmocka_unit_test(test_subworkflow),
            cmocka_unit_test(test_cancel_reaches_subworkflow),
            cmocka_unit_test(test_at_most_once_interrupted),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
