/*
 * on_failure: escalate, end to end with real processes: a node fails, the run waits in
 * needs_input holding nothing, and a person answers through the API — retry (the node runs
 * again with the same idempotency key, the run completes), skip (the run goes on without
 * it and the nodes that need it) or stop (the run fails). A second answer is a 409; another user
 * gets a 404.
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "auth_token.h"
#include "strutil.h"
#include "worker_sink.h"

static const char WF[] = "{\"name\":\"esc\",\"nodes\":["
                         "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
                         "\"url\":\"SINK/a/${ run.id }?fail=${ input.fail }\"},"
                         "\"retry\":{\"max_attempts\":1},\"on_failure\":\"escalate\"},"
                         "{\"id\":\"b\",\"type\":\"transform\",\"after\":[\"a\"],"
                         "\"output\":{\"a_was\":\"${ nodes.a.status }\"}}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api, worker;
        char base[64];
        char token[AUTH_TOKEN_LEN + 1];
        char other_token[AUTH_TOKEN_LEN + 1];
        char *workflow_id;
} S;

static long resolve(const char *token, const char *run, const char *body, char **out)
{
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s/v1/runs/%s/resolve", S.base, run);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        return test_http("POST", url, headers, body, out);
}

static int setup(void **state)
{
        char log[512];

        S.conninfo = test_db_create("escalation");
        S.db = test_db_connect(S.conninfo);
        S.sink = worker_sink_start();
        S.dir = test_tempdir("escalation");
        char *user = worker_test_user(S.db, "ana");
        char *other = worker_test_user(S.db, "bo");
        worker_test_token(S.db, user, S.token);
        worker_test_token(S.db, other, S.other_token);
        char *def = worker_sink_expand(S.sink, WF);
        S.workflow_id = worker_test_workflow(S.db, user, "esc", 1, def);
        free(def);
        free(user);
        free(other);

        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        snprintf(log, sizeof(log), "%s/worker.log", S.dir);
        S.worker = worker_test_spawn(S.conninfo, "esc-w", "5s", "1s", NULL, log);
        return 0;
}

static int teardown(void **state)
{
        test_stop_process(S.worker, SIGTERM, 15000);
        test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(S.workflow_id);
        return 0;
}

/* A run whose node a fails `fails` times, parked in needs_input. */
static char *escalated_run(int fails)
{
        char input[64];

        snprintf(input, sizeof(input), "{\"fail\": %d}", fails);
        char *run = worker_test_run(S.db, S.workflow_id, input);
        assert_true(worker_test_wait_status(S.db, run, "needs_input", 30000));
        /* waiting for a person holds nothing */
        assert_db_equal("t", S.db,
                        "SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        return run;
}

static void retry_runs_the_node_again_and_completes(void **state)
{
        char *run = escalated_run(1), *out = NULL;
        char prefix[128];

        assert_int_equal(
            resolve(S.token, run, "{\"action\":\"retry\",\"comment\":\"flaky\"}", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        /* two requests for node a, both with the one key of (run, a) */
        snprintf(prefix, sizeof(prefix), "/a/%s", run);
        assert_int_equal(worker_sink_count(S.sink, prefix), 2);
        assert_int_equal(worker_sink_distinct_keys(S.sink, prefix), 1);
        assert_db_equal("completed", S.db,
                        "SELECT output->'b'->>'a_was' FROM workflow_runs WHERE id = '%s'", run);
        assert_db_equal(
            "1", S.db,
            "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
            "'run.resolved' AND data->>'action' = 'retry' AND data->>'comment' = 'flaky'",
            run);

        /* a second answer finds nobody waiting */
        assert_int_equal(resolve(S.token, run, "{\"action\":\"retry\"}", &out), 409);
        free(out);
        free(run);
}

static void skip_lets_the_run_go_on_without_the_node(void **state)
{
        char *run = escalated_run(100);

        /* through the CLI this time */
        const char *args[] = {
            "run",      "resolve", run,       "skip",  "--comment", "not needed today",
            "--server", S.base,    "--token", S.token, NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(args, NULL, "/dev/null"), 0, 30000),
                         0);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        /* a is recorded skipped by a person; b, which depends only on a, is skipped with it
         * (the same rule as a `when` that is false) */
        assert_db_equal("skipped|skipped", S.db,
                        "SELECT string_agg(status, '|' ORDER BY node_id) FROM (SELECT DISTINCT "
                        "ON (node_id) node_id, status FROM node_runs WHERE workflow_run_id = '%s' "
                        "ORDER BY node_id, attempt DESC) n",
                        run);
        assert_db_equal("skipped_by_person", S.db,
                        "SELECT error->>'class' FROM node_runs WHERE workflow_run_id = '%s' AND "
                        "node_id = 'a' ORDER BY attempt DESC LIMIT 1",
                        run);
        free(run);
}

static void stop_fails_the_run_and_strangers_see_nothing(void **state)
{
        char *run = escalated_run(100), *out = NULL;

        /* another user: not found, and nothing changes */
        assert_int_equal(resolve(S.other_token, run, "{\"action\":\"stop\"}", &out), 404);
        free(out);
        assert_db_equal("needs_input", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        run);
        /* bad input is named */
        assert_int_equal(resolve(S.token, run, "{\"action\":\"maybe\"}", &out), 400);
        assert_non_null(strstr(out, "retry, skip or stop"));
        free(out);
        assert_int_equal(resolve(S.token, run, "{\"action\":\"retry\",\"node\":\"zz\"}", &out),
                         400);
        free(out);

        assert_int_equal(resolve(S.token, run, "{\"action\":\"stop\"}", &out), 200);
        assert_non_null(strstr(out, "\"failed\""));
        free(out);
        assert_db_equal("failed", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        assert_db_equal("t", S.db,
                        "SELECT error IS NOT NULL AND finished_at IS NOT NULL FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(retry_runs_the_node_again_and_completes),
            cmocka_unit_test(skip_lets_the_run_go_on_without_the_node),
            cmocka_unit_test(stop_fails_the_run_and_strangers_see_nothing),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
