/*
 * `agently worker` end to end on HTTP effects: a real worker process, the harness Postgres,
 * and a recording HTTP sink in this process. Shows that the minimal example runs to
 * completion (http then a durable sleep that releases the run), that every step is
 * checkpointed and logged, that retries back off without holding the run, that 429 with
 * Retry-After is honoured, and that per-node timeouts fail the node.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "fileio.h"
#include "testlib.h"
#include "worker_fixture.h"

/* One worker per test, w1 (lease 2 s, heartbeat 500 ms); it must drain cleanly at the end. */
static struct worker_fixture *setup(const char *name)
{
        struct worker_fixture *f = worker_fixture_new(name);

        worker_fixture_spawn(f, "w1", "2s", "500ms", NULL);
        return f;
}

static void teardown(struct worker_fixture *f)
{
        assert_exit_code(test_stop_process(f->workers[0], SIGTERM, 15000), 0);
        worker_fixture_free(f);
}

/* The issue's minimal shape, as written: http, then a sleep after it. */
static void test_minimal_http_then_sleep(void **state)
{
        struct worker_fixture *f = setup("wk_min");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"method\":\"POST\",\"url\":\"SINK/x\",\"body\":{}}},"
               "{\"id\":\"b\",\"type\":\"sleep\",\"duration\":\"1s\","
               "\"after\":[\"a\"]}]}");
        struct worker_sink_request req;
        char key[300];

        /* while it sleeps the run holds no lease and no worker */
        worker_fixture_wait_status(f, run, "waiting", 15000);
        assert_db_equal("true", f->db,
                        "SELECT (claimed_by IS NULL AND lease_expires_at IS "
                        "NULL AND run_at > now())::text FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        worker_fixture_wait_status(f, run, "completed", 15000);

        assert_int_equal(worker_sink_count(f->sink, "/x"), 1);
        assert_int_equal(worker_sink_get(f->sink, "/x", 0, &req), 0);
        assert_string_equal(req.method, "POST");
        snprintf(key, sizeof(key), "%s:a", run);
        assert_string_equal(req.idempotency_key, key);

        assert_db_equal("a=completed#1,b=completed#1", f->db,
                        "SELECT string_agg(node_id || '=' || status || '#' || "
                        "attempt, ',' ORDER BY node_id) FROM node_runs WHERE "
                        "workflow_run_id = '%s'",
                        run);
        /* the output of the http node is the response */
        assert_db_equal("200", f->db,
                        "SELECT output->'status' FROM node_runs WHERE "
                        "workflow_run_id = '%s' AND node_id = 'a'",
                        run);
        /* the sleep lasted (database time) */
        assert_int_ge(test_db_int(f->db,
                                  "SELECT (extract(epoch FROM max(finished_at) FILTER (WHERE "
                                  "node_id = 'b') - max(finished_at) FILTER (WHERE node_id = "
                                  "'a')) * 1000)::bigint FROM node_runs WHERE "
                                  "workflow_run_id = '%s'",
                                  run),
                      900);
        assert_int_equal(worker_fixture_count_events(f, run, "run.started"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "node.started"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "node.completed"), 2);
        assert_int_equal(worker_fixture_count_events(f, run, "run.waiting"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "run.resumed"), 1);
        assert_int_equal(worker_fixture_count_events(f, run, "run.completed"), 1);
        /* events are gap-free per run */
        assert_int_equal(test_db_int(f->db,
                                     "SELECT max(seq) - count(*) FROM logs WHERE "
                                     "workflow_run_id = '%s'",
                                     run),
                         0);
        free(run);
        teardown(f);
}

/* A sink that fails twice: two failed attempts, each followed by a release until the retry
 * time, then success; one idempotency key for all three sends. */
static void test_retry_with_backoff(void **state)
{
        struct worker_fixture *f = setup("wk_retry");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"url\":\"SINK/flaky?fail=2\"},"
               "\"retry\":{\"max_attempts\":3,\"backoff\":\"fixed\","
               "\"initial_delay\":\"400ms\",\"jitter\":false}}]}");
        struct worker_sink_request r0, r1, r2;

        worker_fixture_wait_status(f, run, "completed", 20000);
        assert_int_equal(worker_sink_count(f->sink, "/flaky"), 3);
        assert_int_equal(worker_sink_distinct_keys(f->sink, "/flaky"), 1);
        assert_int_equal(worker_sink_get(f->sink, "/flaky", 0, &r0), 0);
        assert_int_equal(worker_sink_get(f->sink, "/flaky", 1, &r1), 0);
        assert_int_equal(worker_sink_get(f->sink, "/flaky", 2, &r2), 0);
        assert_int_equal(r0.status, 500);
        assert_int_equal(r2.status, 200);
        assert_int_ge(r1.at_ms - r0.at_ms, 350);
        assert_int_ge(r2.at_ms - r1.at_ms, 350);
        assert_db_equal("failed#1,failed#2,completed#3", f->db,
                        "SELECT string_agg(status || '#' || attempt, ',' ORDER "
                        "BY attempt) FROM node_runs WHERE workflow_run_id = "
                        "'%s'",
                        run);
        assert_db_equal("http_5xx 500", f->db,
                        "SELECT error->>'class' || ' ' || (error->>'status') "
                        "FROM node_runs WHERE workflow_run_id = '%s' AND "
                        "attempt = 1",
                        run);
        assert_int_equal(worker_fixture_count_events(f, run, "node.retry_scheduled"), 2);
        /* between attempts the run waited without a worker */
        assert_int_ge(worker_fixture_count_events(f, run, "run.waiting"), 2);
        free(run);
        teardown(f);
}

/* 429 with Retry-After: 2 is honoured even though the policy's own delay is 100ms. */
static void test_429_retry_after(void **state)
{
        struct worker_fixture *f = setup("wk_429");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"url\":\"SINK/limited?fail=1&status=429&"
               "retry_after=2\"},\"retry\":{\"max_attempts\":2,"
               "\"initial_delay\":\"100ms\",\"jitter\":false}}]}");
        struct worker_sink_request r0, r1;

        worker_fixture_wait_status(f, run, "completed", 20000);
        assert_int_equal(worker_sink_count(f->sink, "/limited"), 2);
        assert_int_equal(worker_sink_get(f->sink, "/limited", 0, &r0), 0);
        assert_int_equal(worker_sink_get(f->sink, "/limited", 1, &r1), 0);
        assert_int_equal(r0.status, 429);
        assert_int_ge(r1.at_ms - r0.at_ms, 1800);
        assert_int_equal(test_db_int(f->db,
                                     "SELECT (error->>'retry_after_ms')::int FROM node_runs "
                                     "WHERE workflow_run_id = '%s' AND attempt = 1",
                                     run),
                         2000);
        free(run);
        teardown(f);
}

/* A node timeout aborts the request and, with no retry left, fails the run. */
static void test_node_timeout_fails_run(void **state)
{
        struct worker_fixture *f = setup("wk_timeout");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\","
               "\"request\":{\"url\":\"SINK/slow?delay_ms=4000\"},"
               "\"timeout\":\"500ms\",\"retry\":{\"max_attempts\":1}}]}");
        int64_t t0 = test_now_ms();

        worker_fixture_wait_status(f, run, "failed", 15000);
        assert_int_lt(test_now_ms() - t0, 3500);
        assert_db_equal("timeout", f->db,
                        "SELECT error->>'class' FROM node_runs WHERE "
                        "workflow_run_id = '%s' AND node_id = 'a'",
                        run);
        assert_int_equal(worker_fixture_count_events(f, run, "run.failed"), 1);
        free(run);
        teardown(f);
}

/*
 * A request answered within its timeout succeeds though the worker's turn waits for the
 * database meanwhile: libcurl goes on while the turn's writes run (db_set_wait_hook). The
 * test holds node a's row locked, so the turn that writes a's result waits 4 s; b is
 * answered at 1 s, its timeout is 2 s. Before, the waiting worker read b's answer only
 * after the turn, and libcurl then failed it as a timeout.
 */
static void test_answer_in_time_while_a_turn_waits(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_turnwait");
        PGconn *holder = test_db_connect(f->conninfo);
        char *run, *locked_at;

        (void)state;
        worker_fixture_spawn(f, "w1", "10s", "2s", NULL);
        run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":\"SINK/a?delay_ms=500\"}},"
               "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"SINK/b?delay_ms=1000\"},"
               "\"timeout\":\"2s\",\"retry\":{\"max_attempts\":1}}]}");
        /* both START marks committed, a's answer not yet written: lock a's row */
        for (int i = 0; test_db_int(f->db,
                                    "SELECT count(*) FROM node_runs WHERE workflow_run_id = "
                                    "'%s' AND status = 'started'",
                                    run) < 2;
             i++) {
                assert_int_lt(i, 500);
                usleep(5 * 1000);
        }
        PQclear(test_db_must(holder, "BEGIN"));
        char sql[300];
        snprintf(sql, sizeof(sql),
                 "SELECT 1 FROM node_runs WHERE workflow_run_id = '%s' AND node_id = 'a' "
                 "AND status = 'started' FOR UPDATE",
                 run);
        PGresult *res = test_db_must(holder, sql);
        /* a's result was not written first (else this test proves nothing) */
        assert_int_equal(PQntuples(res), 1);
        PQclear(res);
        locked_at = test_db_value(holder, "SELECT clock_timestamp()::text");
        usleep(4000 * 1000);
        PQclear(test_db_must(holder, "COMMIT"));

        worker_fixture_wait_status(f, run, "completed|failed", 15000);
        /* the turn did wait for the lock: a's result came after it */
        assert_db_equal("t", f->db,
                        "SELECT finished_at > '%s' FROM node_runs WHERE workflow_run_id = '%s' "
                        "AND node_id = 'a'",
                        locked_at, run);
        assert_db_equal("a=completed#1,b=completed#1", f->db,
                        "SELECT string_agg(node_id || '=' || status || '#' || attempt, ',' "
                        "ORDER BY node_id) FROM node_runs WHERE workflow_run_id = '%s'",
                        run);
        assert_db_equal("completed", f->db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        run);
        free(locked_at);
        free(run);
        PQfinish(holder);
        assert_exit_code(test_stop_process(f->workers[0], SIGTERM, 15000), 0);
        worker_fixture_free(f);
}

/* The first request the sink got on path (fails the test when there is none). */
static struct worker_sink_request sink_request(struct worker_fixture *f, const char *path)
{
        struct worker_sink_request req;

        if (worker_sink_get(f->sink, path, 0, &req) != 0) {
                fprintf(stderr, "no request on %s\n", path);
                fail();
        }
        return req;
}

/* A definition's own Idempotency-Key (any header-name case) leaves as written and is the
 * key recorded; a node without one gets "<run id>:<node id>". */
static void test_own_idempotency_key(void **state)
{
        struct worker_fixture *f = setup("wk_ownkey");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"own\",\"type\":\"http\",\"request\":{\"method\":"
               "\"POST\",\"url\":\"SINK/own\",\"headers\":{\"idempotency-KEY\":"
               "\"order-42\"},\"body\":{}}},"
               "{\"id\":\"derived\",\"type\":\"http\",\"request\":{"
               "\"method\":\"POST\",\"url\":\"SINK/derived\",\"body\":{}}}]}");
        char derived[300];

        worker_fixture_wait_status(f, run, "completed", 15000);
        assert_int_equal(worker_sink_count(f->sink, "/own"), 1);
        assert_string_equal(sink_request(f, "/own").idempotency_key, "order-42");
        snprintf(derived, sizeof(derived), "%s:derived", run);
        assert_string_equal(sink_request(f, "/derived").idempotency_key, derived);
        assert_db_equal("order-42", f->db,
                        "SELECT idempotency_key FROM node_runs WHERE workflow_run_id = '%s' "
                        "AND node_id = 'own'",
                        run);
        free(run);
        teardown(f);
}

/* A string body is text (text/plain; charset=utf-8), anything else JSON; a Content-Type the
 * definition sets always wins. */
static void test_body_content_types(void **state)
{
        struct worker_fixture *f = setup("wk_bodies");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"text\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/text\",\"body\":\"h\u00e9llo\"}},"
               "{\"id\":\"json\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/json\",\"body\":{\"a\":[1,\"x\"]}}},"
               "{\"id\":\"list\",\"type\":\"http\",\"request\":{\"method\":\"PUT\","
               "\"url\":\"SINK/list\",\"body\":[1,2]}},"
               "{\"id\":\"form\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/form\",\"headers\":{\"content-type\":"
               "\"application/x-www-form-urlencoded\"},\"body\":\"a=1&b=2\"}},"
               "{\"id\":\"typed\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
               "\"url\":\"SINK/typed\",\"headers\":{\"Content-Type\":"
               "\"application/vnd.api+json\"},\"body\":{\"b\":true}}}]}");
        struct worker_sink_request req;

        worker_fixture_wait_status(f, run, "completed", 15000);
        req = sink_request(f, "/text");
        assert_string_equal(req.content_type, "text/plain; charset=utf-8");
        assert_string_equal(req.body, "h\xc3\xa9llo");
        req = sink_request(f, "/json");
        assert_string_equal(req.content_type, "application/json");
        assert_string_equal(req.body, "{\"a\":[1,\"x\"]}");
        req = sink_request(f, "/list");
        assert_string_equal(req.content_type, "application/json");
        assert_string_equal(req.body, "[1,2]");
        req = sink_request(f, "/form");
        assert_string_equal(req.content_type, "application/x-www-form-urlencoded");
        assert_string_equal(req.body, "a=1&b=2");
        req = sink_request(f, "/typed");
        assert_string_equal(req.content_type, "application/vnd.api+json");
        assert_string_equal(req.body, "{\"b\":true}");
        free(run);
        teardown(f);
}

/* One after the other, so each request goes out on the handle of the one before it
 * (runtime_http keeps finished transfers' handles): nothing of a request carries over to
 * the next — a HEAD's "no body", a body, a key the request set, a Content-Type. */
static void test_requests_in_a_row_share_nothing(void **state)
{
        struct worker_fixture *f = setup("wk_reuse");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"head\",\"type\":\"http\",\"request\":{\"method\":\"HEAD\","
               "\"url\":\"SINK/head\"}},"
               "{\"id\":\"post\",\"type\":\"http\",\"after\":[\"head\"],\"request\":{"
               "\"method\":\"POST\",\"url\":\"SINK/post\",\"headers\":{\"Idempotency-Key\":"
               "\"k-1\",\"Content-Type\":\"application/x-custom\"},\"body\":\"first\"}},"
               "{\"id\":\"get\",\"type\":\"http\",\"after\":[\"post\"],\"request\":{"
               "\"method\":\"GET\",\"url\":\"SINK/get\"}},"
               "{\"id\":\"last\",\"type\":\"http\",\"after\":[\"get\"],\"request\":{"
               "\"method\":\"POST\",\"url\":\"SINK/last\",\"body\":{\"n\":2}}}]}");
        struct worker_sink_request req;
        char key[300];

        worker_fixture_wait_status(f, run, "completed", 15000);
        assert_string_equal(sink_request(f, "/head").method, "HEAD");
        req = sink_request(f, "/post");
        assert_string_equal(req.method, "POST");
        assert_string_equal(req.body, "first");
        assert_string_equal(req.idempotency_key, "k-1");
        assert_string_equal(req.content_type, "application/x-custom");
        req = sink_request(f, "/get");
        assert_string_equal(req.method, "GET");
        assert_string_equal(req.body, "");
        assert_string_equal(req.content_type, "");
        snprintf(key, sizeof(key), "%s:get", run);
        assert_string_equal(req.idempotency_key, key);
        req = sink_request(f, "/last");
        assert_string_equal(req.method, "POST");
        assert_string_equal(req.body, "{\"n\":2}");
        assert_string_equal(req.content_type, "application/json");
        assert_db_equal("get=completed#1,head=completed#1,last=completed#1,post=completed#1", f->db,
                        "SELECT string_agg(node_id || '=' || status || '#' || attempt, ',' "
                        "ORDER BY node_id) FROM node_runs WHERE workflow_run_id = '%s'",
                        run);
        free(run);
        teardown(f);
}

/* The issue's reproduction: at_most_once, timeout 1s, a server that answers in 3s. The
 * request may have been acted on, so it is sent once: the node ends interrupted (class
 * timeout) and, with the default on_failure, the run fails naming it. */
static void test_at_most_once_timeout_is_sent_once(void **state)
{
        struct worker_fixture *f = setup("wk_amo_timeout");
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":[{\"id\":\"pay\",\"type\":\"http\","
               "\"delivery\":\"at_most_once\",\"timeout\":\"1s\",\"request\":{"
               "\"method\":\"POST\",\"url\":\"SINK/pay?delay_ms=3000\","
               "\"body\":{\"amount\":5}}}]}");

        worker_fixture_wait_status(f, run, "failed", 20000);
        usleep(500 * 1000);
        assert_int_equal(worker_sink_count(f->sink, "/pay"), 1);
        assert_db_equal("interrupted#1 timeout", f->db,
                        "SELECT string_agg(status || '#' || attempt || ' ' || (error->>'class'), "
                        "',') FROM node_runs WHERE workflow_run_id = '%s'",
                        run);
        assert_db_equal("pay timeout", f->db,
                        "SELECT (error->>'node') || ' ' || (error->>'class') FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        free(run);
        teardown(f);
}

/* at_most_once after a 5xx or a connection cut after sending: one request each, the node
 * interrupted, and (on_failure continue) the run goes on; a connection that was never made
 * is retried as usual. The classes are the documented ones, readable in expressions —
 * nodes.x.error.class == 'http_5xx' holds for a 503 of either delivery. */
static void test_at_most_once_ambiguous_failures(void **state)
{
        struct worker_fixture *f = setup("wk_amo_classes");
        char def[4096];
        char *run;

        snprintf(def, sizeof(def),
                 "{\"name\":\"w\",\"nodes\":["
                 "{\"id\":\"five\",\"type\":\"http\",\"delivery\":\"at_most_once\","
                 "\"on_failure\":\"continue\",\"request\":{\"method\":\"POST\","
                 "\"url\":\"SINK/five?fail=9&status=503\",\"body\":{}}},"
                 "{\"id\":\"cut\",\"type\":\"http\",\"delivery\":\"at_most_once\","
                 "\"on_failure\":\"continue\",\"request\":{\"method\":\"POST\","
                 "\"url\":\"SINK/cut?drop=1\",\"body\":{}}},"
                 "{\"id\":\"refused\",\"type\":\"http\",\"delivery\":\"at_most_once\","
                 "\"on_failure\":\"continue\",\"request\":{\"method\":\"POST\","
                 "\"url\":\"http://127.0.0.1:%d/x\",\"body\":{}},"
                 "\"retry\":{\"max_attempts\":2,\"initial_delay\":\"100ms\","
                 "\"retry_on\":[\"connect\"]}},"
                 "{\"id\":\"least\",\"type\":\"http\",\"on_failure\":\"continue\","
                 "\"retry\":{\"max_attempts\":1},\"request\":{\"url\":"
                 "\"SINK/least?fail=9&status=503\"}},"
                 "{\"id\":\"gone\",\"type\":\"http\",\"on_failure\":\"continue\","
                 "\"request\":{\"url\":\"SINK/gone?fail=9&status=404\"}},"
                 "{\"id\":\"check\",\"type\":\"transform\","
                 "\"after\":[\"five\",\"cut\",\"refused\",\"least\",\"gone\"],"
                 "\"output\":{\"a\":\"${ nodes.five.error.class == 'http_5xx' }\","
                 "\"b\":\"${ nodes.least.error.class == 'http_5xx' }\","
                 "\"c\":\"${ nodes.five.status } ${ nodes.cut.status } ${ nodes.cut.error.class "
                 "} ${ nodes.refused.error.class } ${ nodes.gone.error.class }\"}}]}",
                 test_free_port());
        run = worker_fixture_start_run(f, def);
        worker_fixture_wait_status(f, run, "completed", 20000);
        usleep(300 * 1000);
        assert_int_equal(worker_sink_count(f->sink, "/five"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/cut"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/least"), 1);
        assert_int_equal(worker_sink_count(f->sink, "/gone"), 1);
        assert_db_equal("cut=interrupted#1 network,five=interrupted#1 http_5xx,"
                        "gone=failed#1 http_4xx,least=failed#1 http_5xx,"
                        "refused=failed#1 connect,refused=failed#2 connect",
                        f->db,
                        "SELECT string_agg(node_id || '=' || status || '#' || attempt || ' ' || "
                        "(error->>'class'), ',' ORDER BY node_id, attempt) FROM node_runs "
                        "WHERE workflow_run_id = '%s' AND node_id <> 'check'",
                        run);
        assert_db_equal("true true interrupted interrupted network connect http_4xx", f->db,
                        "SELECT concat_ws(' ', output->>'a', output->>'b', output->>'c') FROM "
                        "node_runs WHERE workflow_run_id = '%s' AND node_id = 'check'",
                        run);
        free(run);
        teardown(f);
}

/* The node.failed event of attempt `attempt` of node in the API's event list (a new
 * reference), or NULL. */
static json_t *failed_event(const char *base, const char *token, const char *run, const char *node,
                            int attempt)
{
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};
        char *body = NULL;
        json_t *list, *found = NULL, *e;
        size_t i;

        snprintf(url, sizeof(url), "%s/v1/runs/%s/events?limit=200", base, run);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        assert_int_equal(test_http("GET", url, headers, NULL, &body), 200);
        list = json_loads(body, 0, NULL);
        free(body);
        assert_non_null(list);
        json_array_foreach (json_object_get(list, "data"), i, e) {
                if (!strcmp(json_string_value(json_object_get(e, "kind")), "node.failed") &&
                    json_is_string(json_object_get(e, "node_id")) &&
                    !strcmp(json_string_value(json_object_get(e, "node_id")), node) &&
                    json_integer_value(json_object_get(e, "attempt")) == attempt)
                        found = json_incref(e);
        }
        json_decref(list);
        return found;
}

/* Whether one line of text holds "node.failed", a and b. */
static bool line_has(const char *text, const char *a, const char *b)
{
        for (const char *l = text; l && *l;) {
                const char *end = strchr(l, '\n');
                size_t n = end ? (size_t)(end - l) : strlen(l);
                char *line = strndup(l, n);
                bool ok = strstr(line, "node.failed") && strstr(line, a) && strstr(line, b);
                free(line);
                if (ok)
                        return true;
                l = end ? end + 1 : NULL;
        }
        fprintf(stderr, "no node.failed line with '%s' and '%s' in:\n%s\n", a, b, text);
        return false;
}

/* Every failed attempt's node.failed event says what failed (class, status or error text,
 * duration), which attempt it was, and when the next one is due or that none will be — in
 * the API's events and in `agently run logs`. */
static void test_failed_attempts_say_why(void **state)
{
        struct worker_fixture *f = setup("wk_why");
        char base[64], token[128], out[600], *logs = NULL;
        size_t len;
        pid_t api = worker_test_spawn_api(f->conninfo, f->dir, base, sizeof(base));
        char *run = worker_fixture_start_run(
            f, "{\"name\":\"w\",\"nodes\":["
               "{\"id\":\"flaky\",\"type\":\"http\",\"request\":{\"url\":"
               "\"SINK/flaky?fail=2&status=503\"},\"retry\":{\"max_attempts\":3,"
               "\"backoff\":\"fixed\",\"initial_delay\":\"300ms\",\"jitter\":false}},"
               "{\"id\":\"gone\",\"type\":\"http\",\"on_failure\":\"continue\","
               "\"request\":{\"url\":\"SINK/gone?fail=9&status=404\"}}]}");
        json_t *e, *d;

        worker_test_token(f->db, f->user, token);
        worker_fixture_wait_status(f, run, "completed", 20000);

        e = failed_event(base, token, run, "flaky", 1);
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "level")), "error");
        assert_non_null(json_string_value(json_object_get(e, "message")));
        d = json_object_get(e, "data");
        assert_true(json_is_object(d));
        assert_string_equal(json_string_value(json_object_get(d, "class")), "http_5xx");
        assert_int_equal(json_integer_value(json_object_get(d, "status")), 503);
        assert_true(json_is_integer(json_object_get(d, "duration_ms")));
        assert_int_equal(json_integer_value(json_object_get(d, "attempt")), 1);
        assert_int_equal(json_integer_value(json_object_get(d, "max_attempts")), 3);
        assert_int_equal(json_integer_value(json_object_get(d, "next_attempt")), 2);
        assert_int_equal(json_integer_value(json_object_get(d, "delay_ms")), 300);
        assert_true(json_is_integer(json_object_get(d, "retry_at_ms")));
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                               "http_5xx: unexpected http status 503 (attempt 1 of 3, "));
        assert_non_null(
            strstr(json_string_value(json_object_get(e, "message")), "); attempt 2 in 300ms"));
        json_decref(e);

        e = failed_event(base, token, run, "gone", 1);
        assert_non_null(e);
        d = json_object_get(e, "data");
        assert_true(json_is_object(d));
        assert_string_equal(json_string_value(json_object_get(d, "class")), "http_4xx");
        assert_int_equal(json_integer_value(json_object_get(d, "status")), 404);
        assert_true(json_is_null(json_object_get(d, "next_attempt")));
        assert_true(json_is_null(json_object_get(d, "retry_at_ms")));
        assert_string_equal(json_string_value(json_object_get(d, "final")), "continue");
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                               "; no further attempt: http_4xx is not in retry_on"));
        json_decref(e);

        /* and `agently run logs` prints it per attempt */
        snprintf(out, sizeof(out), "%s/logs.txt", f->dir);
        const char *args[] = {"run", "logs", run, "--server", base, "--token", token, NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(args, NULL, out), 0, 30000), 0);
        assert_int_equal(file_read_all(out, 1 << 20, &logs, &len), 0);
        assert_true(line_has(logs, "flaky#1",
                             "http_5xx: unexpected http status 503 (attempt 1 "
                             "of 3, "));
        assert_true(line_has(logs, "flaky#2", "(attempt 2 of 3, "));
        assert_true(line_has(logs, "flaky#2", "); attempt 3 in 300ms"));
        assert_true(line_has(logs, "gone#1",
                             "http_4xx: unexpected http status 404 (attempt 1 of "
                             "3, "));
        free(logs);
        assert_exit_code(test_stop_process(api, SIGTERM, 10000), 0);
        free(run);
        teardown(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_minimal_http_then_sleep),
            cmocka_unit_test(test_retry_with_backoff),
            cmocka_unit_test(test_429_retry_after),
            cmocka_unit_test(test_node_timeout_fails_run),
            cmocka_unit_test(test_answer_in_time_while_a_turn_waits),
            cmocka_unit_test(test_own_idempotency_key),
            cmocka_unit_test(test_body_content_types),
            cmocka_unit_test(test_requests_in_a_row_share_nothing),
            cmocka_unit_test(test_at_most_once_timeout_is_sent_once),
            cmocka_unit_test(test_at_most_once_ambiguous_failures),
            cmocka_unit_test(test_failed_attempts_say_why),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
