/*
 * No hard caps: one run with a 10,000-item map, end to end with real processes. Each item
 * is an http request to a local sink. The worker is SIGKILLed while the map is partly done
 * and a new one finishes the run from its checkpoints; every item is recorded completed
 * exactly once and reached the sink under exactly one idempotency key of its own; the
 * fan-in holds all 10,000 outputs in item order; and the run's events (more than 10,000)
 * are read through the API in bounded pages, each seq exactly once, the last page marked
 * terminal.
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth_token.h"
#include "buf.h"
#include "worker_sink.h"

#define ITEMS     10000
#define PAGE      1000
#define KILL_AT   2000 /* items completed when the first worker is killed */
#define SETTLE_MS 240000

static const char WF[] =
    "{\"name\":\"big\",\"nodes\":["
    "{\"id\":\"fan\",\"type\":\"map\",\"items\":\"input.items\",\"concurrency\":200,"
    "\"node\":{\"type\":\"http\",\"request\":{\"method\":\"POST\","
    "\"url\":\"SINK/item/${ index }\",\"body\":{\"double\":\"${ item * 2 }\"}}}},"
    "{\"id\":\"sum\",\"type\":\"transform\",\"after\":[\"fan\"],"
    "\"output\":{\"n\":\"${ len(nodes.fan.output) }\","
    "\"last\":\"${ nodes.fan.output[9999].status }\"}}]}";

/* Pure items: the whole map is planned and checkpointed in memory-sized batches. */
static const char WF_PURE[] =
    "{\"name\":\"big-pure\",\"nodes\":["
    "{\"id\":\"fan\",\"type\":\"map\",\"items\":\"input.items\",\"concurrency\":1000,"
    "\"node\":{\"type\":\"transform\",\"output\":\"${ item * 2 }\"}}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api;
        char base[64];
        char token[AUTH_TOKEN_LEN + 1];
        char *workflow_id, *pure_id;
} S;

static int setup(void **state)
{
        (void)state;
        S.conninfo = test_db_create("bigmap");
        S.db = test_db_connect(S.conninfo);
        S.dir = test_tempdir("bigmap");
        char *user = worker_test_user(S.db, "ana");
        S.sink = worker_sink_start();
        char *def = worker_sink_expand(S.sink, WF);
        S.workflow_id = worker_test_workflow(S.db, user, "big", 1, def);
        free(def);
        S.pure_id = worker_test_workflow(S.db, user, "big-pure", 1, WF_PURE);
        worker_test_token(S.db, user, S.token);
        free(user);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(S.workflow_id);
        free(S.pure_id);
        return 0;
}

static long long items_completed(const char *run)
{
        return test_db_int(S.db,
                           "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' AND "
                           "node_id LIKE 'fan[%%' AND status = 'completed'",
                           run);
}

/* Reads every event of the run through the API, PAGE at a time; checks each page's bound
 * and that seqs run 1..n without a gap or a repeat. Returns n. */
static long long read_events_paged(const char *run, int *pages)
{
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};
        long long next = 0, seen = 0;
        bool terminal = false;

        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        *pages = 0;
        while (!terminal) {
                char *body = NULL;
                json_error_t err;
                snprintf(url, sizeof(url), "%s/v1/runs/%s/events?after=%lld&limit=%d", S.base, run,
                         next, PAGE);
                assert_int_equal(test_http("GET", url, headers, NULL, &body), 200);
                json_t *page = json_loads(body, 0, &err);
                free(body);
                assert_non_null(page);
                json_t *data = json_object_get(page, "data");
                size_t i;
                json_t *ev;
                assert_int_le(json_array_size(data), PAGE);
                json_array_foreach (data, i, ev) {
                        long long seq = json_integer_value(json_object_get(ev, "seq"));
                        assert_int_equal(seq, seen + 1); /* no gap, no repeat, in order */
                        seen = seq;
                }
                next = json_integer_value(json_object_get(page, "next_after"));
                assert_int_equal(next, seen);
                terminal = json_is_true(json_object_get(page, "terminal"));
                if (!terminal) /* a page before the end is never empty */
                        assert_int_gt(json_array_size(data), 0);
                json_decref(page);
                (*pages)++;
                assert_int_le(*pages, 10 * ITEMS / PAGE + 10);
        }
        return seen;
}

/* {"items": [0, 1, ..., ITEMS - 1]} */
static char *items_input(void)
{
        struct buf input;

        buf_init(&input, 8 * ITEMS);
        buf_append_str(&input, "{\"items\":[");
        for (int i = 0; i < ITEMS; i++)
                buf_printf(&input, "%s%d", i ? "," : "", i);
        buf_append_str(&input, "]}");
        return buf_steal(&input);
}

static void ten_thousand_pure_items_fan_in_in_order(void **state)
{
        char *input = items_input();
        char *run = worker_test_run(S.db, S.pure_id, input);
        char wlog[512];
        int64_t t0 = test_now_ms();

        (void)state;
        free(input);
        snprintf(wlog, sizeof(wlog), "%s/worker-pure.log", S.dir);
        pid_t w = worker_test_spawn(S.conninfo, "big-pure", "5s", "1s", NULL, wlog);
        assert_true(worker_test_wait_status(S.db, run, "completed|failed", SETTLE_MS));
        printf("# %d pure items: run finished after %.1f s\n", ITEMS,
               (double)(test_now_ms() - t0) / 1000.0);
        test_stop_process(w, SIGTERM, 15000);
        assert_db_equal("completed", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(items_completed(run), ITEMS);
        /* output i is 2 * i: every item's own output, in item order */
        assert_db_equal("t", S.db,
                        "SELECT count(*) = %d AND bool_and(x.v::int = 2 * (x.i - 1)) FROM "
                        "node_runs n, jsonb_array_elements_text(n.output) WITH ORDINALITY AS "
                        "x(v, i) WHERE n.workflow_run_id = '%s' AND n.node_id = 'fan' AND "
                        "n.status = 'completed'",
                        ITEMS, run);
        free(run);
}

/* Pages through GET /v1/runs/{id}/nodes; checks page bounds and that node ids come in
 * strictly increasing order (so none twice). Returns how many. */
static long long read_nodes_paged(const char *run)
{
        char url[512], auth[128], last[256] = "";
        const char *headers[] = {auth, NULL};
        const char *cursor = NULL;
        json_t *page = NULL;
        long long n = 0;

        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        for (int pages = 0;; pages++) {
                char *body = NULL;
                assert_int_le(pages, ITEMS / PAGE + 2);
                snprintf(url, sizeof(url), "%s/v1/runs/%s/nodes?limit=%d%s%s", S.base, run, PAGE,
                         cursor ? "&cursor=" : "", cursor ? cursor : "");
                assert_int_equal(test_http("GET", url, headers, NULL, &body), 200);
                json_t *next = json_loads(body, 0, NULL);
                free(body);
                assert_non_null(next);
                json_decref(page);
                page = next;
                json_t *data = json_object_get(page, "data"), *node;
                size_t i;
                assert_int_le(json_array_size(data), PAGE);
                json_array_foreach (data, i, node) {
                        const char *id = json_string_value(json_object_get(node, "node_id"));
                        assert_non_null(id);
                        assert_string_gt(id, last);
                        snprintf(last, sizeof(last), "%s", id);
                        assert_string_equal(json_string_value(json_object_get(node, "status")),
                                            "completed");
                        n++;
                }
                cursor = json_string_value(json_object_get(page, "next_cursor"));
                if (!cursor)
                        break;
        }
        json_decref(page);
        return n;
}

static void ten_thousand_item_map_survives_a_kill_and_pages_its_events(void **state)
{
        char *input = items_input();
        char *run = worker_test_run(S.db, S.workflow_id, input);
        char wlog[512];
        int64_t t0;

        (void)state;
        free(input);

        t0 = test_now_ms();
        snprintf(wlog, sizeof(wlog), "%s/worker-1.log", S.dir);
        pid_t w1 = worker_test_spawn(S.conninfo, "big-w1", "2s", "500ms", NULL, wlog);
        while (items_completed(run) < KILL_AT) {
                assert_int_lt(test_now_ms() - t0, SETTLE_MS);
                usleep(20 * 1000);
        }
        long long at_kill = items_completed(run);
        test_stop_process(w1, SIGKILL, 5000);
        printf("# killed the worker with %lld of %d items completed\n", at_kill, ITEMS);

        snprintf(wlog, sizeof(wlog), "%s/worker-2.log", S.dir);
        pid_t w2 = worker_test_spawn(S.conninfo, "big-w2", "2s", "500ms", NULL, wlog);
        assert_true(worker_test_wait_status(S.db, run, "completed|failed", SETTLE_MS));
        printf("# run finished after %.1f s\n", (double)(test_now_ms() - t0) / 1000.0);
        test_stop_process(w2, SIGTERM, 15000);

        assert_db_equal("completed", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        /* every item completed exactly once, with its own output */
        assert_int_equal(items_completed(run), ITEMS);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(DISTINCT node_id) FROM node_runs WHERE "
                                     "workflow_run_id = '%s' AND node_id LIKE 'fan[%%'",
                                     run),
                         ITEMS);
        assert_db_equal("0", S.db,
                        "SELECT count(*) FROM (SELECT node_id FROM node_runs WHERE "
                        "workflow_run_id = '%s' AND status = 'completed' GROUP BY node_id "
                        "HAVING count(*) > 1) d",
                        run);
        /* each item's effect reached the sink under one key of its own; repeats (a request
         * in flight when the worker died) are counted, not hidden */
        int requests = worker_sink_count(S.sink, "/item/");
        printf("# sink: %d requests for %d items (%d re-executions)\n", requests, ITEMS,
               requests - ITEMS);
        assert_int_ge(requests, ITEMS);
        assert_int_equal(worker_sink_distinct_keys(S.sink, "/item/"), ITEMS);
        assert_db_equal("{\"double\": 14}", S.db,
                        "SELECT input->'body'::text FROM node_runs WHERE workflow_run_id = '%s' "
                        "AND node_id = 'fan[7]' AND status = 'completed'",
                        run);
        /* the fan-in: all outputs, in item order */
        assert_db_equal("10000|200", S.db,
                        "SELECT (output->>'n') || '|' || (output->>'last') FROM node_runs WHERE "
                        "workflow_run_id = '%s' AND node_id = 'sum' AND status = 'completed'",
                        run);
        assert_db_equal("t", S.db,
                        "SELECT (SELECT bool_and((x.v->>'status')::int = 200) FROM "
                        "jsonb_array_elements(output) AS x(v)) FROM "
                        "node_runs WHERE workflow_run_id = '%s' AND node_id = 'fan' AND status "
                        "= 'completed'",
                        run);

        /* events: more than the items, read in bounded pages, each exactly once */
        int pages;
        long long events = read_events_paged(run, &pages);
        long long seq =
            test_db_int(S.db, "SELECT event_seq FROM workflow_runs WHERE id = '%s'", run);
        printf("# %lld events read in %d pages of at most %d\n", events, pages, PAGE);
        assert_int_equal(events, seq);
        assert_int_gt(events, ITEMS);

        /* the run itself is an ordinary API object of bounded size; its node states are
         * paged like its events */
        char url[512], auth[128], *body = NULL;
        const char *headers[] = {auth, NULL};
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        snprintf(url, sizeof(url), "%s/v1/runs/%s", S.base, run);
        assert_int_equal(test_http("GET", url, headers, NULL, &body), 200);
        printf("# GET /v1/runs/{id}: %zu bytes\n", body ? strlen(body) : 0);
        json_t *j = json_loads(body, 0, NULL);
        free(body);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "nodes_total")), ITEMS + 2);
        assert_true(json_is_true(json_object_get(j, "nodes_truncated")));
        assert_int_equal(json_array_size(json_object_get(j, "nodes")), 1000);
        json_decref(j);
        assert_int_equal(read_nodes_paged(run), ITEMS + 2);
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(ten_thousand_pure_items_fan_in_in_order),
            cmocka_unit_test(ten_thousand_item_map_survives_a_kill_and_pages_its_events),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
