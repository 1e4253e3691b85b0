/*
 * A run-level time_scale with real processes (an API and a worker over a real Postgres):
 * a flow whose waits add up to more than five days — a sleep, a wait_event timeout, a retry
 * back-off, an approval deadline and its escalation step, a subworkflow's own sleep, and a
 * 30-day workflow timeout — started with time_scale 86400 ends in seconds, each wait
 * divided by the scale in database time; the child run and a rerun keep the scale; a run's
 * own timeout fires scaled. The API and the CLI refuse a scale out of range with a clear
 * error, and the range's edges are accepted by the database too (its CHECK agrees).
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth_token.h"
#include "fileio.h"
#include "strutil.h"
#include "worker_sink.h"

#define SCALE "86400"

static const char WF_NAP[] = "{\"name\":\"nap\",\"nodes\":["
                             "{\"id\":\"z\",\"type\":\"sleep\",\"duration\":\"1d\"}]}";

/* Waits of 1d + 1d + 1h + (1d + 1d) + 1d at least; the run's own timeout is 30 days. */
static const char WF_LONG[] =
    "{\"name\":\"long\",\"timeout\":\"30d\",\"nodes\":["
    "{\"id\":\"s\",\"type\":\"sleep\",\"duration\":\"1d\"},"
    "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"never\",\"timeout\":\"1d\","
    "\"after\":[\"s\"],\"on_failure\":\"continue\"},"
    "{\"id\":\"r\",\"type\":\"http\",\"after\":[\"w\"],"
    "\"request\":{\"url\":\"SINK/flaky?fail=1&status=503\"},"
    "\"retry\":{\"max_attempts\":2,\"initial_delay\":\"1h\",\"jitter\":false}},"
    "{\"id\":\"ok\",\"type\":\"approval\",\"after\":[\"r\"],\"reviewers\":[\"ops@example.com\"],"
    "\"channels\":[{\"kind\":\"webhook\",\"url\":\"SINK/hook\"}],\"timeout\":\"1d\","
    "\"on_timeout\":\"escalate\",\"escalation\":[{\"contacts\":[\"boss@example.com\"],"
    "\"timeout\":\"1d\"}],\"on_failure\":\"continue\"},"
    "{\"id\":\"child\",\"type\":\"subworkflow\",\"after\":[\"ok\"],\"workflow\":\"nap\","
    "\"timeout\":\"2d\"}]}";

static const char WF_SHORT[] = "{\"name\":\"short\",\"timeout\":\"2d\",\"nodes\":["
                               "{\"id\":\"s\",\"type\":\"sleep\",\"duration\":\"3d\"}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api, worker;
        char base[64];
        char alice[AUTH_TOKEN_LEN + 1];
        char *alice_id;
} S;

static void workflow(const char *name, const char *def)
{
        char *expanded = worker_sink_expand(S.sink, def);
        free(worker_test_workflow(S.db, S.alice_id, name, 1, expanded));
        free(expanded);
}

static long api(const char *method, const char *path, const char *body, char **out)
{
        char url[512], auth[128];
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.alice);
        return test_http(method, url, headers, body, out);
}

/* POST /v1/runs of workflow with time_scale (JSON text, NULL: absent); the new run's id
 * when 201 (caller frees), else NULL with the answer in *out. */
static char *start(const char *workflow_name, const char *scale, long *status, char **out)
{
        char body[256];
        json_t *j;
        char *id = NULL;

        if (scale)
                snprintf(body, sizeof(body), "{\"workflow\":\"%s\",\"time_scale\":%s}",
                         workflow_name, scale);
        else
                snprintf(body, sizeof(body), "{\"workflow\":\"%s\"}", workflow_name);
        *status = api("POST", "/v1/runs", body, out);
        if (*status == 201 && (j = json_loads(*out, 0, NULL))) {
                id = strdup(json_string_value(json_object_get(j, "id")));
                json_decref(j);
        }
        return id;
}

static int setup(void **state)
{
        char log[512];

        (void)state;
        S.conninfo = test_db_create("timescale");
        S.db = test_db_connect(S.conninfo);
        S.sink = worker_sink_start();
        S.dir = test_tempdir("timescale");
        S.alice_id = worker_test_user(S.db, "alice");
        worker_test_token(S.db, S.alice_id, S.alice);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        snprintf(log, sizeof(log), "%s/worker.log", S.dir);
        S.worker = worker_test_spawn(S.conninfo, "ts-w", "5s", "1s", NULL, log);
        workflow("nap", WF_NAP);
        workflow("long", WF_LONG);
        workflow("short", WF_SHORT);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        if (S.worker > 0)
                test_stop_process(S.worker, SIGTERM, 15000);
        if (S.api > 0)
                test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(S.alice_id);
        return 0;
}

static void out_of_range_is_refused(void **state)
{
        static const char *const bad[] = {"0", "-1", "0.0009", "1000001", "\"fast\"", "true"};
        char *out = NULL, *id;
        long st;
        (void)state;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                id = start("nap", bad[i], &st, &out);
                assert_null(id);
                assert_int_equal(st, 400);
                assert_non_null(strstr(out, "time_scale must be a number from 0.001 to 1000000"));
                assert_non_null(strstr(out, "field 'time_scale'"));
                free(out);
        }
        /* the edges are the database's too: its CHECK accepts what the API lets through */
        static const char *const edges[] = {"0.001", "1000000"};
        for (size_t i = 0; i < 2; i++) {
                id = start("nap", edges[i], &st, &out);
                assert_int_equal(st, 201);
                assert_non_null(id);
                assert_db_equal(edges[i], S.db,
                                "SELECT time_scale::text FROM workflow_runs WHERE id = '%s'", id);
                free(out);
                free(id);
        }
        /* absent: real time, shown as 1 */
        id = start("nap", NULL, &st, &out);
        assert_int_equal(st, 201);
        free(out);
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        assert_int_equal(api("GET", path, NULL, &out), 200);
        json_t *run = json_loads(out, 0, NULL);
        assert_non_null(run);
        assert_double_equal(json_number_value(json_object_get(run, "time_scale")), 1.0);
        json_decref(run);
        free(out);
        free(id);
        /* the database refuses any other writer's scale out of range */
        PGresult *res = PQexec(S.db, "UPDATE workflow_runs SET time_scale = 0 WHERE true");
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "23514");
        PQclear(res);
        PQclear(test_db_must(S.db, "UPDATE workflow_runs SET status = 'canceled', "
                                   "finished_at = now() WHERE status IN ('queued', 'waiting')"));
}

static void cli_starts_a_scaled_run(void **state)
{
        char log[512], *text = NULL;
        size_t len = 0;
        (void)state;

        snprintf(log, sizeof(log), "%s/cli-bad.log", S.dir);
        const char *bad[] = {"run",      "start", "nap",     "--time-scale", "fast",
                             "--server", S.base,  "--token", S.alice,        NULL};
        int st = test_stop_process(test_spawn_agently(bad, NULL, log), 0, 30000);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 2);
        assert_int_equal(file_read_all(log, 1 << 20, &text, &len), 0);
        assert_non_null(strstr(text, "--time-scale must be a number greater than 0"));
        free(text);

        snprintf(log, sizeof(log), "%s/cli-big.log", S.dir);
        const char *big[] = {"run",      "start", "nap",     "--time-scale", "2000000",
                             "--server", S.base,  "--token", S.alice,        NULL};
        st = test_stop_process(test_spawn_agently(big, NULL, log), 0, 30000);
        assert_true(WIFEXITED(st));
        assert_int_not_equal(WEXITSTATUS(st), 0);
        assert_int_equal(file_read_all(log, 1 << 20, &text, &len), 0);
        assert_non_null(strstr(text, "time_scale must be a number from 0.001 to 1000000"));
        free(text);

        /* a day's sleep in a second, waited for by the CLI */
        snprintf(log, sizeof(log), "%s/cli.log", S.dir);
        const char *ok[] = {"run",      "start", "nap",     "--time-scale", SCALE, "--wait",
                            "--server", S.base,  "--token", S.alice,        NULL};
        int64_t t0 = test_now_ms();
        st = test_stop_process(test_spawn_agently(ok, NULL, log), 0, 30000);
        assert_exit_code(st, 0);
        assert_int_lt(test_now_ms() - t0, 15000);
        assert_db_equal("86400 completed", S.db,
                        "SELECT time_scale || ' ' || status FROM workflow_runs WHERE "
                        "workflow_name = 'nap' ORDER BY created_at DESC LIMIT 1");
}

static void days_of_waits_in_seconds(void **state)
{
        char *out = NULL, path[128];
        long st;
        (void)state;

        int64_t t0 = test_now_ms();
        char *id = start("long", SCALE, &st, &out);
        assert_int_equal(st, 201);
        free(out);
        if (!worker_test_wait_status(S.db, id, "completed|failed|canceled", 60000))
                fail_msg("run %s did not end within 60 s (its waits were not scaled)", id);
        int64_t elapsed = test_now_ms() - t0;
        printf("a run of 5 days and 1 hour of waits took %.1f s at time_scale " SCALE "\n",
               elapsed / 1000.0);
        assert_db_equal("completed", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", id);

        /* recorded on the run and shown */
        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        assert_int_equal(api("GET", path, NULL, &out), 200);
        json_t *run = json_loads(out, 0, NULL);
        assert_non_null(run);
        assert_double_equal(json_number_value(json_object_get(run, "time_scale")), 86400.0);
        json_decref(run);
        free(out);

        /* the sleep: a day in a second (the wake time is its start plus 1000 ms) */
        assert_db_equal("t", S.db,
                        "SELECT (output->>'wake_at_ms')::bigint - "
                        "(extract(epoch FROM started_at) * 1000)::bigint BETWEEN 500 AND 1000 "
                        "FROM node_runs WHERE workflow_run_id = '%s' AND node_id = 's' "
                        "AND status = 'completed'",
                        id);
        assert_db_equal("t", S.db,
                        "SELECT finished_at - started_at BETWEEN interval '1 s' AND "
                        "interval '5 s' FROM node_runs WHERE workflow_run_id = '%s' AND "
                        "node_id = 's' AND status = 'completed'",
                        id);
        /* the signal's timeout, and what its error says */
        assert_db_equal("timeout: no 'never' signal arrived within 1d (1s at time_scale 86400)",
                        S.db,
                        "SELECT error->>'class' || ': ' || (error->>'message') FROM node_runs "
                        "WHERE workflow_run_id = '%s' AND node_id = 'w' ORDER BY attempt DESC "
                        "LIMIT 1",
                        id);
        /* the retry back-off: 1h / 86400 = 41.7 ms, rounded up */
        assert_db_equal("42", S.db,
                        "SELECT data->>'delay_ms' FROM logs WHERE workflow_run_id = '%s' AND "
                        "kind = 'node.retry_scheduled' AND node_id = 'r'",
                        id);
        /* the approval's deadline and its escalation step, each a second; it expired after
         * the escalation and the node failed with class timeout (on_failure continue) */
        assert_db_equal("1000 1000 expired", S.db,
                        "SELECT (policy->>'timeout_ms') || ' ' || "
                        "(policy->'escalation'->0->>'timeout_ms') || ' ' || status "
                        "FROM approvals WHERE workflow_run_id = '%s'",
                        id);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND "
                                     "kind = 'approval.escalated'",
                                     id),
                         1);
        /* the child run is part of the rehearsal: it keeps the scale */
        assert_db_equal("86400 completed", S.db,
                        "SELECT time_scale || ' ' || status FROM workflow_runs WHERE "
                        "parent_run_id = '%s'",
                        id);
        /* the run's own 30-day deadline, recorded while it waited: 30 s after its start */
        assert_db_equal("30", S.db,
                        "SELECT round(extract(epoch FROM timeout_at - started_at))::text FROM "
                        "workflow_runs WHERE id = '%s'",
                        id);
        /* five days and an hour of waits, in seconds */
        assert_int_lt(elapsed, 40000);

        /* a rerun repeats the rehearsal at the same scale */
        snprintf(path, sizeof(path), "/v1/runs/%s/rerun", id);
        assert_int_equal(api("POST", path, "{\"from_node\":\"child\"}", &out), 201);
        json_t *rerun = json_loads(out, 0, NULL);
        assert_non_null(rerun);
        assert_double_equal(json_number_value(json_object_get(rerun, "time_scale")), 86400.0);
        assert_true(worker_test_wait_status(S.db, json_string_value(json_object_get(rerun, "id")),
                                            "completed", 30000));
        json_decref(rerun);
        free(out);
        free(id);
}

static void the_run_timeout_is_scaled(void **state)
{
        char *out = NULL;
        long st;
        (void)state;

        char *id = start("short", SCALE, &st, &out);
        assert_int_equal(st, 201);
        free(out);
        assert_true(worker_test_wait_status(S.db, id, "failed", 30000));
        assert_db_equal("timeout: run exceeded its timeout of 2d (2s at time_scale 86400)", S.db,
                        "SELECT error->>'class' || ': ' || (error->>'message') FROM "
                        "workflow_runs WHERE id = '%s'",
                        id);
        free(id);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(out_of_range_is_refused),
            cmocka_unit_test(cli_starts_a_scaled_run),
            cmocka_unit_test(days_of_waits_in_seconds),
            cmocka_unit_test(the_run_timeout_is_scaled),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
