/*
 * The run viewer's reads besides the run and its events (src/api/api_run_extras.c), through
 * a real `agently api`: an agent run's journal in pages after a seq, only under its own
 * run; a run's artifacts listed with where they are stored, an inline one downloaded as its
 * bytes, a file a tool kept under the data dir the API shares with the worker downloaded
 * when it lies in the run's own directory, any other refused with 409; and another user
 * sees none of it (404).
 */
#include "testlib.h"
#include "worker_sink.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cleanup.h"
#include "fileio.h"
#include "strutil.h"

static struct {
        char *conninfo, *dir, *ada, *bob;
        PGconn *db;
        pid_t api;
        char base[64];
        char ada_token[128], bob_token[128];
} S;

static int setup(void **state)
{
        (void)state;
        S.conninfo = test_db_create("extras");
        S.db = test_db_connect(S.conninfo);
        S.dir = test_tempdir("extras");
        S.ada = worker_test_user(S.db, "ada");
        S.bob = worker_test_user(S.db, "bob");
        worker_test_token(S.db, S.ada, S.ada_token);
        worker_test_token(S.db, S.bob, S.bob_token);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        test_stop_process(S.api, SIGTERM, 10000);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.ada);
        free(S.bob);
        free(S.conninfo);
        return 0;
}

/* GET path as the holder of token; the status, the body in *out (caller frees). */
static long get(const char *token, const char *path, char **out)
{
        char url[512], auth[200];
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        *out = NULL;
        return test_http("GET", url, headers, NULL, out);
}

static json_t *get_json(const char *token, const char *path, long want)
{
        _cleanup_free_ char *out = NULL;
        json_error_t err;

        assert_int_equal(get(token, path, &out), want);
        json_t *j = json_loads(out ? out : "", 0, &err);
        assert_non_null(j);
        return j;
}

/* A run of ada's with an agent run of three journal entries and two artifacts. */
static void seed(char **run, char **agent, char **inline_id, char **external_id)
{
        _cleanup_free_ char *wf =
            worker_test_workflow(S.db, S.ada, "extras", 1,
                                 "{\"name\":\"extras\",\"nodes\":[{\"id\":\"a\",\"type\":"
                                 "\"transform\",\"output\":{}}]}");
        *run = worker_test_run(S.db, wf, NULL);
        *agent = test_db_value(S.db,
                               "INSERT INTO agent_runs (user_id, workflow_run_id, node_id, model)"
                               " VALUES ('%s', '%s', 'think', 'm') RETURNING id",
                               S.ada, *run);
        _cleanup_free_ char *sql = str_printf(
            "INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, response,"
            " request_sha256) VALUES"
            " ('%s', '%s', 1, 'llm', '{\"request\":{\"messages\":[{\"role\":\"user\","
            "\"content\":\"hi\"}]}}', '{\"text\":\"calling\"}', repeat('a', 64)),"
            " ('%s', '%s', 2, 'tool', '{\"name\":\"http_request\",\"call_id\":\"c1\"}',"
            " '{\"content\":\"ok\"}', repeat('b', 64)),"
            " ('%s', '%s', 3, 'llm', '{\"request\":{}}', NULL, repeat('c', 64))",
            S.ada, *agent, S.ada, *agent, S.ada, *agent);
        PQclear(test_db_must(S.db, sql));
        *inline_id = test_db_value(
            S.db,
            "INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, content_type,"
            " size_bytes, sha256, inline_data) VALUES ('%s', '%s', 'a', 'report \"q\".txt',"
            " 'text/plain', 12, repeat('d', 64), 'hello, world') RETURNING id",
            S.ada, *run);
        *external_id = test_db_value(
            S.db,
            "INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, size_bytes, sha256,"
            " storage_uri) VALUES ('%s', '%s', 'a', 'big.bin', 5000000, repeat('e', 64),"
            " 's3://bucket/big.bin') RETURNING id",
            S.ada, *run);
}

static void journal_pages_and_artifacts(void **state)
{
        (void)state;
        _cleanup_free_ char *run = NULL, *agent = NULL, *in = NULL, *ext = NULL, *path = NULL;
        seed(&run, &agent, &in, &ext);

        /* the journal, two entries at a time */
        path = str_printf("/v1/runs/%s/agents/%s/journal?limit=2", run, agent);
        json_t *page = get_json(S.ada_token, path, 200);
        json_t *data = json_object_get(page, "data");
        assert_int_equal(json_array_size(data), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "kind")),
                            "llm");
        assert_string_equal(json_string_value(json_object_get(
                                json_object_get(json_array_get(data, 1), "request"), "name")),
                            "http_request");
        assert_int_equal(json_integer_value(json_object_get(page, "next_after")), 2);
        assert_true(json_is_true(json_object_get(page, "more")));
        json_decref(page);
        free(path);
        path = str_printf("/v1/runs/%s/agents/%s/journal?after=2&limit=2", run, agent);
        page = get_json(S.ada_token, path, 200);
        data = json_object_get(page, "data");
        assert_int_equal(json_array_size(data), 1);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "seq")), 3);
        assert_true(json_is_null(json_object_get(json_array_get(data, 0), "response")));
        assert_true(json_is_false(json_object_get(page, "more")));
        json_decref(page);

        /* a bad limit, an agent run under another run, another user */
        free(path);
        path = str_printf("/v1/runs/%s/agents/%s/journal?limit=201", run, agent);
        json_decref(get_json(S.ada_token, path, 400));
        _cleanup_free_ char *wf = worker_test_workflow(
            S.db, S.ada, "other", 1,
            "{\"name\":\"other\",\"nodes\":[{\"id\":\"a\",\"type\":\"transform\",\"output\":{}}]}");
        _cleanup_free_ char *other = worker_test_run(S.db, wf, NULL);
        free(path);
        path = str_printf("/v1/runs/%s/agents/%s/journal", other, agent);
        json_decref(get_json(S.ada_token, path, 404));
        free(path);
        path = str_printf("/v1/runs/%s/agents/%s/journal", run, agent);
        json_decref(get_json(S.bob_token, path, 404));

        /* the artifacts: both listed, oldest first, with where they are */
        free(path);
        path = str_printf("/v1/runs/%s/artifacts", run);
        json_t *list = get_json(S.ada_token, path, 200);
        data = json_object_get(list, "data");
        assert_int_equal(json_array_size(data), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "id")), in);
        assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "stored")),
                            "inline");
        assert_string_equal(json_string_value(json_object_get(json_array_get(data, 1), "stored")),
                            "external");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 1), "size_bytes")),
                         5000000);
        json_decref(list);
        json_decref(get_json(S.bob_token, path, 404));

        /* the inline one's bytes; the external one is not the API's to serve */
        _cleanup_free_ char *body = NULL;
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", run, in);
        assert_int_equal(get(S.ada_token, path, &body), 200);
        assert_string_equal(body, "hello, world");
        free(body);
        body = NULL;
        assert_int_equal(get(S.bob_token, path, &body), 404);
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", run, ext);
        json_t *refused = get_json(S.ada_token, path, 409);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(refused, "error"), "code")),
            "not_here");
        json_decref(refused);

        /* a file a tool kept under the data dir the API shares with the worker: served; the
         * same file named by another run's artifact, or a file outside the run's directory:
         * not */
        _cleanup_free_ char *kept_dir = str_printf("%s/artifacts/%s/agent/call", S.dir, run);
        _cleanup_free_ char *kept_file = str_printf("%s/out.txt", kept_dir);
        _cleanup_free_ char *outside_file = str_printf("%s/outside.txt", S.dir);
        assert_int_equal(dir_make_parents(kept_dir, 0700), 0);
        assert_int_equal(file_write_atomic(kept_file, "kept bytes", 10, 0600), 0);
        assert_int_equal(file_write_atomic(outside_file, "secret", 6, 0600), 0);
        _cleanup_free_ char *kept = test_db_value(
            S.db,
            "INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, size_bytes, sha256,"
            " storage_uri) VALUES ('%s', '%s', 'a', 'out.txt', 10, repeat('f', 64),"
            " 'file://%s/out.txt') RETURNING id",
            S.ada, run, kept_dir);
        _cleanup_free_ char *outside = test_db_value(
            S.db,
            "INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, size_bytes, sha256,"
            " storage_uri) VALUES ('%s', '%s', 'a', 'x.txt', 6, repeat('f', 64),"
            " 'file://%s/artifacts/%s/../../outside.txt') RETURNING id",
            S.ada, run, S.dir, run);
        _cleanup_free_ char *elsewhere = test_db_value(
            S.db,
            "INSERT INTO artifacts (user_id, workflow_run_id, node_id, name, size_bytes, sha256,"
            " storage_uri) VALUES ('%s', '%s', 'a', 'out.txt', 10, repeat('f', 64),"
            " 'file://%s/out.txt') RETURNING id",
            S.ada, other, kept_dir);
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", run, kept);
        free(body);
        body = NULL;
        assert_int_equal(get(S.ada_token, path, &body), 200);
        assert_string_equal(body, "kept bytes");
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", run, outside);
        json_decref(get_json(S.ada_token, path, 409));
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", other, elsewhere);
        json_decref(get_json(S.ada_token, path, 409));
        free(path);
        path = str_printf("/v1/runs/%s/artifacts/%s", other, in);
        json_decref(get_json(S.ada_token, path, 404));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(journal_pages_and_artifacts),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
