/*
 * Versioning end to end through the REST API with a real worker: runs started on v1 finish
 * on v1 after v2 is applied, and new runs use v2.
 *
 * v1 is  a (http /v1/a) -> w (wait_event "go") -> b (http /v1/b)
 * v2 is  x (http /v2/x) -> w (wait_event "go") -> c (http /v2/c)
 *
 * Three v1 runs reach their wait; the worker is stopped and a fourth v1 run is created but
 * not started (it snapshots its version at creation, not at its first claim); v2 is
 * applied (a new version; applying it again is not); the worker comes back, every run is
 * signalled. The four v1 runs execute exactly v1's nodes and effects, the run created after
 * v2 executes v2's.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth_token.h"
#include "testlib.h"
#include "worker_sink.h"

struct env {
        char *conninfo, *worker_conninfo, *dir;
        PGconn *db;
        char base[64], auth[128];
        pid_t api, worker;
        struct worker_sink *sink;
        int worker_gen;
};

static struct env E;

/* A failed assertion longjmps out of the test: leave no process behind. */
static void kill_children_at_exit(void)
{
        if (E.worker > 0)
                kill(E.worker, SIGKILL);
        if (E.api > 0)
                kill(E.api, SIGKILL);
}

/* A request to the API; returns the parsed JSON body (caller decrefs) and the status. */
static json_t *api(const char *method, const char *path, const char *body, long *status)
{
        char url[512], *resp = NULL;
        const char *headers[] = {E.auth, "Content-Type: application/json", NULL};
        json_t *j;

        snprintf(url, sizeof(url), "%s%s", E.base, path);
        *status = test_http(method, url, headers, body, &resp);
        j = resp ? json_loads(resp, JSON_DECODE_ANY, NULL) : NULL;
        if (*status < 200 || *status > 299)
                fprintf(stderr, "versioning: %s %s -> %ld %s\n", method, path, *status,
                        resp ? resp : "");
        free(resp);
        return j;
}

static void start_api(void)
{
        char token[AUTH_TOKEN_LEN + 1];
        char *user = worker_test_user(E.db, "vera");

        worker_test_token(E.db, user, token);
        free(user);
        snprintf(E.auth, sizeof(E.auth), "Authorization: Bearer %s", token);
        E.api = worker_test_spawn_api(E.conninfo, E.dir, E.base, sizeof(E.base));
}

static void start_worker(void)
{
        char id[16], log[600];

        snprintf(id, sizeof(id), "v%d", E.worker_gen++);
        snprintf(log, sizeof(log), "%s/worker-%s.log", E.dir, id);
        E.worker = worker_test_spawn(E.worker_conninfo, id, "5s", "1s", NULL, log);
}

static void stop_worker(void)
{
        int st = test_stop_process(E.worker, SIGTERM, 20000);
        E.worker = 0;
        assert_exit_code(st, 0);
}

/* Applies a definition; returns the version the API answered, and its status. */
static int apply(const char *definition, long *status)
{
        char *def = worker_sink_expand(E.sink, definition);
        json_t *j = api("POST", "/v1/workflows", def, status);
        int version;

        free(def);
        assert_non_null(j);
        version = (int)json_integer_value(json_object_get(j, "version"));
        json_decref(j);
        return version;
}

static char *start_run(int i)
{
        char body[128];
        long status;
        json_t *j;
        char *id;

        snprintf(body, sizeof(body), "{\"workflow\":\"ver\",\"input\":{\"i\":%d}}", i);
        j = api("POST", "/v1/runs", body, &status);
        assert_int_equal(status, 201);
        id = strdup(json_string_value(json_object_get(j, "id")));
        json_decref(j);
        return id;
}

static void signal_run(const char *id)
{
        char path[128];
        long status;

        snprintf(path, sizeof(path), "/v1/runs/%s/signals/go", id);
        json_decref(api("POST", path, "{\"ok\":true}", &status));
        assert_int_equal(status, 201);
}

static void wait_status(const char *id, const char *statuses)
{
        if (!worker_test_wait_status(E.db, id, statuses, 20000)) {
                fprintf(stderr, "versioning: run %s is %s, wanted %s\n", id,
                        test_db_value(E.db, "SELECT status FROM workflow_runs WHERE id = '%s'", id),
                        statuses);
                fail();
        }
}

/* GET /v1/runs/{id}: status and workflow_version. */
static void assert_run(const char *id, const char *status, int version)
{
        char path[128];
        long http;
        json_t *j;

        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        j = api("GET", path, NULL, &http);
        assert_int_equal(http, 200);
        assert_string_equal(json_string_value(json_object_get(j, "status")), status);
        assert_int_equal(json_integer_value(json_object_get(j, "workflow_version")), version);
        json_decref(j);
}

/* The run's node_runs as "id=status,..." (sorted) and its output, compared to want. */
static void assert_executed(const char *id, const char *nodes, const char *output)
{
        char *got = test_db_value(E.db,
                                  "SELECT string_agg(node_id || '=' || status, ',' ORDER BY "
                                  "node_id) FROM node_runs WHERE workflow_run_id = '%s'",
                                  id);
        char *out =
            test_db_value(E.db, "SELECT output::text FROM workflow_runs WHERE id = '%s'", id);

        assert_non_null(got);
        assert_non_null(out);
        assert_string_equal(got, nodes);
        assert_string_equal(out, output);
        free(got);
        free(out);
}

static void test_inflight_runs_finish_on_their_version(void **state)
{
        static const char v1[] =
            "{\"name\":\"ver\",\"nodes\":["
            "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"SINK/v1/a\",\"body\":{\"i\":\"${ input.i }\"}}},"
            "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"go\",\"after\":[\"a\"]},"
            "{\"id\":\"b\",\"type\":\"http\",\"after\":[\"w\"],\"request\":{\"method\":\"POST\","
            "\"url\":\"SINK/v1/b\",\"body\":{}}}],"
            "\"output\":{\"version\":1}}";
        static const char v2[] =
            "{\"name\":\"ver\",\"nodes\":["
            "{\"id\":\"x\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"SINK/v2/x\",\"body\":{}}},"
            "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"go\",\"after\":[\"x\"]},"
            "{\"id\":\"c\",\"type\":\"http\",\"after\":[\"w\"],\"request\":{\"method\":\"POST\","
            "\"url\":\"SINK/v2/c\",\"body\":{}}}],"
            "\"output\":{\"version\":2}}";
        char *old[4], *fresh;
        long status;

        (void)state;
        E.conninfo = test_db_create("versioning");
        E.worker_conninfo = test_db_conninfo_as(E.conninfo, "agently_worker");
        E.db = test_db_connect(E.conninfo);
        E.dir = test_tempdir("versioning");
        E.sink = worker_sink_start();
        start_api();
        start_worker();

        assert_int_equal(apply(v1, &status), 1);
        assert_int_equal(status, 201);
        for (int i = 0; i < 3; i++)
                old[i] = start_run(i);
        for (int i = 0; i < 3; i++)
                wait_status(old[i], "waiting");
        assert_int_equal(worker_sink_count(E.sink, "/v1/a"), 3);

        /* a v1 run created while no worker runs: not started before v2 exists */
        stop_worker();
        old[3] = start_run(3);

        assert_int_equal(apply(v2, &status), 2);
        assert_int_equal(status, 201);
        /* the same definition again is not a new version */
        assert_int_equal(apply(v2, &status), 2);
        assert_int_equal(status, 200);
        fresh = start_run(99);

        start_worker();
        for (int i = 0; i < 4; i++)
                signal_run(old[i]);
        signal_run(fresh);
        for (int i = 0; i < 4; i++)
                wait_status(old[i], "completed|failed");
        wait_status(fresh, "completed|failed");

        for (int i = 0; i < 4; i++) {
                assert_run(old[i], "completed", 1);
                assert_executed(old[i], "a=completed,b=completed,w=completed", "{\"version\": 1}");
        }
        assert_run(fresh, "completed", 2);
        assert_executed(fresh, "c=completed,w=completed,x=completed", "{\"version\": 2}");

        /* the effects: exactly v1's for the old runs, v2's for the new one */
        assert_int_equal(worker_sink_count(E.sink, "/v1/a"), 4);
        assert_int_equal(worker_sink_count(E.sink, "/v1/b"), 4);
        assert_int_equal(worker_sink_distinct_keys(E.sink, "/v1/b"), 4);
        assert_int_equal(worker_sink_count(E.sink, "/v2/x"), 1);
        assert_int_equal(worker_sink_count(E.sink, "/v2/c"), 1);
        assert_int_equal(worker_sink_count(E.sink, "/"), 10);

        stop_worker();
        test_stop_process(E.api, SIGTERM, 10000);
        E.api = 0;
        worker_sink_stop(E.sink);
        PQfinish(E.db);
        test_rm_rf(E.dir);
        for (int i = 0; i < 4; i++)
                free(old[i]);
        free(fresh);
        free(E.dir);
        free(E.worker_conninfo);
        free(E.conninfo);
}

int main(void)
{
        atexit(kill_children_at_exit);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_inflight_runs_finish_on_their_version),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
