/*
 * A map of http items through a real worker, which keeps the run in memory between its loop
 * turns and plans the map from the item states its plan cache kept (src/engine,
 * wf_plan_then_cached): what a user sees must not depend on that. Items are started in
 * index order and never more than the concurrency at once; an item answered 503 once is
 * retried after its delay with the same key and completes; an item answered 404 fails for
 * good and, on_failure continue, is null in the fan-in; the fan-in holds every item's
 * result in item order; the events say each of these once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>

#include "buf.h"
#include "testlib.h"
#include "worker_fixture.h"

#define ITEMS       150
#define CONCURRENCY 7

static const char WF[] =
    "{\"name\":\"m\",\"nodes\":["
    "{\"id\":\"fan\",\"type\":\"map\",\"items\":\"input.items\",\"concurrency\":7,"
    "\"node\":{\"type\":\"http\",\"request\":{\"method\":\"POST\","
    "\"url\":\"SINK/m/${ index }?${ item }\",\"body\":{\"i\":\"${ index }\"}},"
    "\"retry\":{\"max_attempts\":2,\"initial_delay\":\"20ms\"},\"on_failure\":\"continue\"}},"
    "{\"id\":\"sum\",\"type\":\"transform\",\"after\":[\"fan\"],"
    "\"output\":\"${ len(nodes.fan.output) }\"}]}";

/* What the sink answers item i: 404 always, 503 to the first request, or 200. */
enum fate { OK, RETRIED, REJECTED };

static enum fate item_fate(int i)
{
        return i % 17 == 5 ? REJECTED : i % 10 == 3 ? RETRIED : OK;
}

static void test_map_results_order_failures_and_retries(void **state)
{
        struct worker_fixture *f = worker_fixture_new("wk_map");
        _cleanup_buf_ struct buf input, order, outputs, latest;
        int nretried = 0, nrejected = 0;

        (void)state;
        buf_init(&input, 1 << 20);
        buf_init(&order, 1 << 20);
        buf_init(&outputs, 1 << 20);
        buf_init(&latest, 1 << 20);
        buf_append_str(&input, "{\"items\":[");
        for (int i = 0; i < ITEMS; i++) {
                enum fate fate = item_fate(i);
                static const char *const query[] = {"ok=1", "fail=1&status=503",
                                                    "fail=9&status=404"};
                buf_printf(&input, "%s\"%s\"", i ? "," : "", query[fate]);
                buf_printf(&order, "%sfan[%d]", i ? "," : "", i);
                buf_printf(&outputs, "%s%s", i ? "," : "",
                           fate == REJECTED  ? "null"
                           : fate == RETRIED ? "2"
                                             : "1");
                buf_printf(&latest, "%sfan[%d]=%s#%d", i ? "," : "", i,
                           fate == REJECTED ? "failed" : "completed", fate == RETRIED ? 2 : 1);
                nretried += fate == RETRIED;
                nrejected += fate == REJECTED;
        }
        buf_append_str(&input, "]}");

        char *wf = worker_fixture_workflow(f, "m", WF);
        char *run = worker_test_run(f->db, wf, input.data);
        worker_fixture_spawn(f, "w1", "5s", "1s", NULL);
        worker_fixture_wait_status(f, run, "completed", 60000);

        /* every item started in index order (their first attempts' START marks) */
        assert_db_equal(order.data, f->db,
                        "SELECT string_agg(node_id, ',' ORDER BY seq) FROM logs "
                        "WHERE workflow_run_id = '%s' AND kind = 'node.started' AND attempt = 1 "
                        "AND node_id LIKE 'fan[%%'",
                        run);
        /* each item's latest attempt: retried ones completed at their second, rejected ones
         * failed at their first */
        assert_db_equal(latest.data, f->db,
                        "SELECT string_agg(node_id || '=' || status || '#' || attempt, ',' "
                        "ORDER BY (regexp_match(node_id, '\\[(\\d+)\\]'))[1]::integer) "
                        "FROM agently_node_latest "
                        "WHERE workflow_run_id = '%s' AND node_id LIKE 'fan[%%'",
                        run);
        /* the fan-in, in item order: the sink's count of requests to that item's path (2
         * after a retry), null for a rejected item */
        assert_db_equal(outputs.data, f->db,
                        "SELECT string_agg(coalesce(e -> 'body' ->> 'n', 'null'), ',' ORDER BY o) "
                        "FROM node_runs, jsonb_array_elements(output) WITH ORDINALITY AS t(e, o) "
                        "WHERE workflow_run_id = '%s' AND node_id = 'fan'",
                        run);
        assert_db_equal("150", f->db, "SELECT output ->> 'sum' FROM workflow_runs WHERE id = '%s'",
                        run);
        /* never more than the concurrency running at once: at each attempt's start, the
         * attempts started and not finished */
        assert_int_le(test_db_int(f->db,
                                  "SELECT max((SELECT count(*) FROM node_runs y WHERE "
                                  "y.workflow_run_id = x.workflow_run_id AND y.node_id LIKE "
                                  "'fan[%%' AND y.started_at <= x.started_at AND "
                                  "(y.finished_at IS NULL OR y.finished_at > x.started_at))) "
                                  "FROM node_runs x WHERE x.workflow_run_id = '%s' AND "
                                  "x.node_id LIKE 'fan[%%'",
                                  run),
                      CONCURRENCY);

        /* what the sink saw: each item's path once, twice when retried; one key per item */
        assert_int_equal(worker_sink_count(f->sink, "/m/"), ITEMS + nretried);
        assert_int_equal(worker_sink_distinct_keys(f->sink, "/m/"), ITEMS);
        /* the events, each once */
        assert_int_equal(worker_fixture_count_events(f, run, "node.started"), ITEMS + nretried);
        assert_int_equal(worker_fixture_count_events(f, run, "node.retry_scheduled"), nretried);
        assert_int_equal(worker_fixture_count_events(f, run, "node.failed"), nretried + nrejected);
        /* the items that completed, the map and the transform */
        assert_int_equal(worker_fixture_count_events(f, run, "node.completed"),
                         ITEMS - nrejected + 2);
        assert_int_equal(worker_fixture_count_events(f, run, "run.completed"), 1);

        free(run);
        free(wf);
        worker_fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_map_results_order_failures_and_retries),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
