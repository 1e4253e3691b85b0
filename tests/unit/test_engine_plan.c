/* Unit tests for the planner (src/engine/plan.c) and the failure policy: whole runs are
 * driven through a small in-memory stand-in for the worker that applies each action the
 * way the planner contract says (README.md), so every scenario checks what a user would
 * see: which effects leave, in which order, with which keys, and how the run ends. */
#include "testlib.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "engine.h"
#include "strutil.h"

#define RUN_ID "11111111-2222-3333-4444-555555555555"
#define T0     INT64_C(1700000000000)

static struct wf_workflow *parse(const char *text)
{
        _cleanup_json_ json_t *def = test_json(text);
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;
        if (wf_parse(def, &wf, &errors) < 0) {
                char *d = json_dumps(errors, JSON_INDENT(2));
                fail_msg("definition rejected: %s", d);
        }
        return wf;
}

static json_t *new_snapshot(const char *input)
{
        return json_pack("{s:s,s:o,s:I,s:I,s:{},s:[],s:{},s:{}}", "run_id", RUN_ID, "input",
                         input ? test_json(input) : json_object(), "now_ms", (json_int_t)T0,
                         "started_at_ms", (json_int_t)T0, "nodes", "in_flight", "signals",
                         "children");
}

static json_t *plan(const struct wf_workflow *wf, const json_t *snap)
{
        json_t *actions = NULL;
        assert_int_equal(wf_plan(wf, snap, &actions), 0);
        assert_non_null(actions);
        /* determinism: planning the same snapshot again gives the same actions */
        json_t *again = NULL;
        assert_int_equal(wf_plan(wf, snap, &again), 0);
        assert_json_equal(actions, again);
        json_decref(again);
        return actions;
}

static void advance(json_t *snap, int64_t ms)
{
        json_int_t now = json_integer_value(json_object_get(snap, "now_ms"));
        json_object_set_new(snap, "now_ms", json_integer(now + ms));
}

static int64_t now_of(const json_t *snap)
{
        return json_integer_value(json_object_get(snap, "now_ms"));
}

static json_t *nodes_of(json_t *snap)
{
        return json_object_get(snap, "nodes");
}

static const char *status_of(json_t *snap, const char *id)
{
        return json_string_value(json_object_get(json_object_get(nodes_of(snap), id), "status"));
}

static void in_flight_remove(json_t *snap, const char *id)
{
        json_t *f = json_object_get(snap, "in_flight");
        for (size_t i = 0; i < json_array_size(f); i++)
                if (!strcmp(json_string_value(json_array_get(f, i)), id)) {
                        json_array_remove(f, i);
                        return;
                }
}

static int attempt_of(json_t *snap, const char *id)
{
        json_t *a = json_object_get(json_object_get(nodes_of(snap), id), "attempt");
        return a ? (int)json_integer_value(a) : 1;
}

/* The worker's reaction to a failed attempt (execute failure or fail_node). */
static void fail_attempt(const struct wf_workflow *wf, json_t *snap, const char *id, int attempt,
                         json_t *error, uint64_t random)
{
        json_t *decision = NULL;
        assert_int_equal(
            wf_on_node_failure(wf, id, attempt, error, now_of(snap), random, &decision), 0);
        json_t *rec = json_pack("{s:s,s:i,s:O}", "status",
                                json_string_value(json_object_get(decision, "status")), "attempt",
                                attempt, "error", error);
        json_t *at = json_object_get(decision, "retry_at_ms");
        if (at)
                json_object_set(rec, "retry_at_ms", at);
        json_object_set_new(nodes_of(snap), id, rec);
        in_flight_remove(snap, id);
        json_decref(decision);
}

/* Applies one plan's actions as the worker would. Returns the number of execute actions. */
static int apply(const struct wf_workflow *wf, json_t *snap, const json_t *actions)
{
        size_t i;
        json_t *a;
        int executes = 0;

        json_array_foreach (actions, i, a) {
                const char *act = json_string_value(json_object_get(a, "action"));
                const char *id = json_string_value(json_object_get(a, "node"));
                if (!strcmp(act, "execute")) {
                        json_object_set_new(nodes_of(snap), id,
                                            json_pack("{s:s,s:O,s:I}", "status", "started",
                                                      "attempt", json_object_get(a, "attempt"),
                                                      "started_at_ms", (json_int_t)now_of(snap)));
                        in_flight_remove(snap, id);
                        json_array_append_new(json_object_get(snap, "in_flight"), json_string(id));
                        executes++;
                } else if (!strcmp(act, "complete")) {
                        json_object_set_new(nodes_of(snap), id,
                                            json_pack("{s:s,s:i,s:O}", "status", "completed",
                                                      "attempt", attempt_of(snap, id), "output",
                                                      json_object_get(a, "output")));
                        json_t *sig = json_object_get(a, "signal_id");
                        if (sig) { /* consume it */
                                const char *k;
                                json_t *list;
                                json_object_foreach (json_object_get(snap, "signals"), k, list)
                                        for (size_t j = 0; j < json_array_size(list); j++)
                                                if (json_equal(json_object_get(
                                                                   json_array_get(list, j), "id"),
                                                               sig))
                                                        json_array_remove(list, j);
                        }
                } else if (!strcmp(act, "skip")) {
                        json_object_set_new(
                            nodes_of(snap), id,
                            json_pack("{s:s,s:i}", "status", "skipped", "attempt", 1));
                } else if (!strcmp(act, "sleep")) {
                        json_object_set_new(nodes_of(snap), id,
                                            json_pack("{s:s,s:i,s:O}", "status", "waiting",
                                                      "attempt", 1, "wake_at_ms",
                                                      json_object_get(a, "wake_at_ms")));
                } else if (!strcmp(act, "wait_signal")) {
                        json_t *rec = json_pack("{s:s,s:i,s:I}", "status", "waiting", "attempt", 1,
                                                "started_at_ms", (json_int_t)now_of(snap));
                        json_t *t = json_object_get(a, "timeout_at_ms");
                        if (json_is_integer(t))
                                json_object_set(rec, "wake_at_ms", t);
                        json_object_set_new(nodes_of(snap), id, rec);
                } else if (!strcmp(act, "start_child")) {
                        json_object_set_new(nodes_of(snap), id,
                                            json_pack("{s:s,s:O,s:I}", "status", "waiting",
                                                      "attempt", json_object_get(a, "attempt"),
                                                      "started_at_ms", (json_int_t)now_of(snap)));
                        json_object_set_new(json_object_get(snap, "children"), id,
                                            json_pack("{s:s,s:O}", "status", "running", "attempt",
                                                      json_object_get(a, "attempt")));
                } else if (!strcmp(act, "fail_node")) {
                        fail_attempt(wf, snap, id,
                                     (int)json_integer_value(json_object_get(a, "attempt")),
                                     json_object_get(a, "error"), 0);
                } else {
                        fail_msg("apply: unexpected action %s", act);
                }
        }
        return executes;
}

static bool is_terminal_plan(const json_t *actions)
{
        const char *act = json_string_value(json_object_get(json_array_get(actions, 0), "action"));
        return json_array_size(actions) == 1 &&
               (!strcmp(act, "wait") || !strcmp(act, "finish") || !strcmp(act, "needs_input"));
}

/* Plans and applies until the plan is a lone wait, finish or needs_input; returns it. */
static json_t *settle(const struct wf_workflow *wf, json_t *snap)
{
        for (int round = 0; round < 100000; round++) {
                json_t *actions = plan(wf, snap);
                if (is_terminal_plan(actions))
                        return actions;
                apply(wf, snap, actions);
                json_decref(actions);
        }
        fail_msg("the plan never settled");
        return NULL;
}

static void finish_execute(json_t *snap, const char *id, const char *output)
{
        assert_string_equal(status_of(snap, id), "started");
        json_object_set_new(nodes_of(snap), id,
                            json_pack("{s:s,s:i,s:o}", "status", "completed", "attempt",
                                      attempt_of(snap, id), "output",
                                      output ? test_json(output) : json_null()));
        in_flight_remove(snap, id);
}

/* 12 for "m[12]" */
static int item_index(const char *id)
{
        int n = -1;
        const char *b = strchr(id, '[');
        assert_non_null(b);
        assert_int_equal(sscanf(b, "[%d]", &n), 1);
        return n;
}

static const char *action_name(const json_t *a)
{
        return json_string_value(json_object_get(a, "action"));
}

static const json_t *find_action(const json_t *actions, const char *act, const char *node)
{
        size_t i;
        json_t *a;
        json_array_foreach (actions, i, a)
                if (!strcmp(action_name(a), act) &&
                    (!node || !strcmp(json_string_value(json_object_get(a, "node")), node)))
                        return a;
        return NULL;
}

static void expect_lone(const json_t *actions, const char *act)
{
        if (json_array_size(actions) != 1 || strcmp(action_name(json_array_get(actions, 0)), act)) {
                char *d = json_dumps(actions, JSON_INDENT(2));
                fail_msg("expected a lone %s, got %s", act, d);
        }
}

static void expect_json(const json_t *v, const char *expected)
{
        _cleanup_json_ json_t *e = test_json(expected);
        if (!json_equal((json_t *)v, e)) {
                char *d = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
                fail_msg("expected %s, got %s", expected, d);
        }
}

/* ---- scenarios ---- */

static void linear_chain_runs_in_order_with_stable_keys(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"chain\",\"nodes\":["
                  "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\",\"url\":"
                  "\"http://127.0.0.1:9/a\",\"body\":{\"q\":\"${ input.q }\",\"raw\":\"${ input.n "
                  "}\"}}},"
                  "{\"id\":\"b\",\"type\":\"http\",\"after\":[\"a\"],\"request\":{\"url\":"
                  "\"http://127.0.0.1:9/b/${ nodes.a.output.id }\"}},"
                  "{\"id\":\"c\",\"type\":\"transform\",\"after\":[\"b\"],\"output\":{\"sum\":\"${ "
                  "nodes.a.output.id + nodes.b.output.id }\"}}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"q\":\"hello\",\"n\":7}");

        json_t *p1 = plan(wf, snap);
        assert_int_equal(json_array_size(p1), 1);
        const json_t *ex = find_action(p1, "execute", "a");
        assert_non_null(ex);
        expect_json(json_object_get(ex, "input"),
                    "{\"method\":\"POST\",\"url\":\"http://127.0.0.1:9/a\",\"body\":{\"q\":"
                    "\"hello\",\"raw\":7},\"headers\":{\"Idempotency-Key\":\"" RUN_ID ":a\"},"
                    "\"expect_status\":[[200,299]]}");
        assert_int_equal(json_integer_value(json_object_get(ex, "attempt")), 1);
        assert_int_equal(json_integer_value(json_object_get(ex, "timeout_ms")), 60000);
        assert_string_equal(json_string_value(json_object_get(ex, "delivery")), "at_least_once");
        assert_string_equal(json_string_value(json_object_get(ex, "idempotency_key")), RUN_ID ":a");
        assert_false(json_is_true(json_object_get(ex, "reexecution")));
        apply(wf, snap, p1);
        json_decref(p1);

        /* a is in flight: nothing to do but wait for it (no timer) */
        json_t *p2 = plan(wf, snap);
        expect_lone(p2, "wait");
        assert_true(json_is_null(json_object_get(json_array_get(p2, 0), "wake_at_ms")));
        json_decref(p2);

        finish_execute(snap, "a", "{\"id\":40}");
        json_t *p3 = plan(wf, snap);
        ex = find_action(p3, "execute", "b");
        assert_non_null(ex);
        assert_string_equal(json_string_value(json_object_get(json_object_get(ex, "input"), "url")),
                            "http://127.0.0.1:9/b/40");
        assert_string_equal(json_string_value(json_object_get(ex, "idempotency_key")), RUN_ID ":b");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(ex, "input"), "method")), "GET");
        apply(wf, snap, p3);
        json_decref(p3);
        finish_execute(snap, "b", "{\"id\":2}");

        json_t *end = settle(wf, snap);
        expect_lone(end, "finish");
        const json_t *fin = json_array_get(end, 0);
        assert_string_equal(json_string_value(json_object_get(fin, "status")), "completed");
        /* without an output template the run's output is the leaf nodes' outputs */
        expect_json(json_object_get(fin, "output"), "{\"c\":{\"sum\":42}}");
        json_decref(end);
        wf_free(wf);
}

static void fan_out_and_fan_in(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"fan\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},"
                  "{\"id\":\"b\",\"type\":\"http\",\"after\":[\"a\"],\"request\":{\"url\":\"http://"
                  "x/b\"}},"
                  "{\"id\":\"c\",\"type\":\"http\",\"after\":[\"a\"],\"request\":{\"url\":\"http://"
                  "x/c\"}},"
                  "{\"id\":\"d\",\"type\":\"transform\",\"after\":[\"b\",\"c\"],\"output\":\"${ "
                  "nodes.b.output + nodes.c.output }\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);

        json_t *p = settle(wf, snap); /* a completes, b and c start together */
        expect_lone(p, "wait");
        json_decref(p);
        assert_string_equal(status_of(snap, "b"), "started");
        assert_string_equal(status_of(snap, "c"), "started");
        assert_null(status_of(snap, "d"));

        finish_execute(snap, "c", "3");
        p = settle(wf, snap); /* d still waits for b */
        expect_lone(p, "wait");
        json_decref(p);
        assert_null(status_of(snap, "d"));

        finish_execute(snap, "b", "4");
        p = settle(wf, snap);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"d\":7}");
        json_decref(p);
        wf_free(wf);
}

static void when_false_skips_and_skips_propagate(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"skips\",\"nodes\":[{\"id\":\"x\",\"type\":\"noop\"},"
                  "{\"id\":\"a\",\"type\":\"noop\",\"when\":\"input.go\"},"
                  "{\"id\":\"b\",\"type\":\"noop\",\"after\":[\"a\"]},"
                  "{\"id\":\"b2\",\"type\":\"noop\",\"after\":[\"b\"]},"
                  "{\"id\":\"c\",\"type\":\"transform\",\"after\":[\"b2\",\"x\"],\"output\":\"${ "
                  "nodes.b2.status }\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"go\":false}");

        json_t *p = plan(wf, snap);
        /* a is skipped because of when; b and b2 are skipped in the same plan because all
         * their dependencies are skipped; c runs later because x did not skip */
        const json_t *s = find_action(p, "skip", "a");
        assert_non_null(s);
        assert_string_equal(json_string_value(json_object_get(s, "reason")), "when was false");
        s = find_action(p, "skip", "b");
        assert_non_null(s);
        assert_string_equal(json_string_value(json_object_get(s, "reason")), "dependency skipped");
        assert_non_null(find_action(p, "skip", "b2"));
        assert_non_null(find_action(p, "complete", "x"));
        assert_null(find_action(p, "complete", "c"));
        json_decref(p);

        p = settle(wf, snap);
        expect_lone(p, "finish");
        assert_string_equal(status_of(snap, "c"), "completed");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"c\":\"skipped\"}");
        json_decref(p);
        wf_free(wf);
}

static void condition_branches(void **state)
{
        const char *def =
            "{\"name\":\"branch\",\"nodes\":["
            "{\"id\":\"c\",\"type\":\"condition\",\"if\":\"input.n > 10\",\"then\":[\"big\"],"
            "\"else\":[\"small\"]},"
            "{\"id\":\"big\",\"type\":\"transform\",\"output\":\"big\"},"
            "{\"id\":\"big2\",\"type\":\"transform\",\"after\":[\"big\"],\"output\":\"big2\"},"
            "{\"id\":\"small\",\"type\":\"transform\",\"output\":\"small\"},"
            "{\"id\":\"join\",\"type\":\"transform\",\"after\":[\"big2\",\"small\"],"
            "\"output\":\"${ default(nodes.big2.output, nodes.small.output) }\"}]}";
        struct wf_workflow *wf = parse(def);
        _cleanup_json_ json_t *snap = new_snapshot("{\"n\":50}");

        json_t *p = settle(wf, snap);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"join\":\"big2\"}");
        assert_string_equal(status_of(snap, "small"), "skipped");
        expect_json(json_object_get(json_object_get(nodes_of(snap), "c"), "output"),
                    "{\"branch\":\"then\",\"value\":true}");
        json_decref(p);

        _cleanup_json_ json_t *snap2 = new_snapshot("{\"n\":5}");
        p = settle(wf, snap2);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"join\":\"small\"}");
        /* big is off the branch; big2 depends only on skipped nodes */
        assert_string_equal(status_of(snap2, "big"), "skipped");
        assert_string_equal(status_of(snap2, "big2"), "skipped");
        json_decref(p);
        wf_free(wf);
}

static void retries_back_off_within_bounds(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"retry\",\"nodes\":[{\"id\":\"h\",\"type\":\"http\",\"request\":{"
                  "\"url\":\"http://x\"},\"retry\":{\"max_attempts\":6,\"initial_delay\":\"1s\","
                  "\"max_delay\":\"5s\"}},"
                  "{\"id\":\"f\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"},\"retry\":{"
                  "\"max_attempts\":3,\"backoff\":\"fixed\",\"initial_delay\":\"10s\",\"jitter\":"
                  "false,\"retry_on\":[\"error\"]},\"on_failure\":\"continue\"},"
                  "{\"id\":\"m\",\"type\":\"map\",\"items\":\"input.xs\",\"node\":{\"type\":"
                  "\"http\",\"request\":{\"url\":\"http://x\"},\"retry\":{\"max_attempts\":2}}}]}");
        _cleanup_json_ json_t *e503 = json_pack("{s:s,s:i,s:s}", "class", "http_5xx", "status", 503,
                                                "message", "unavailable");
        json_t *d = NULL;

        /* exponential with full jitter: attempt n waits between initial and
         * min(max, initial * 2^(n-2)) */
        static const struct {
                int attempt;
                int64_t lo, hi;
        } bounds[] = {
            {1, 1000, 1000}, {2, 1000, 2000}, {3, 1000, 4000}, {4, 1000, 5000}, {5, 1000, 5000}};
        for (size_t k = 0; k < sizeof(bounds) / sizeof(bounds[0]); k++)
                for (uint64_t rnd = 0; rnd < 5000; rnd += 37) {
                        assert_int_equal(wf_on_node_failure(wf, "h", bounds[k].attempt, e503, T0,
                                                            rnd * 7919, &d),
                                         0);
                        int64_t at = json_integer_value(json_object_get(d, "retry_at_ms"));
                        assert_in_range(at - T0, bounds[k].lo, bounds[k].hi);
                        assert_int_equal(json_integer_value(json_object_get(d, "attempt")),
                                         bounds[k].attempt + 1);
                        json_decref(d);
                }
        /* the jitter actually varies */
        assert_int_equal(wf_on_node_failure(wf, "h", 3, e503, T0, 0, &d), 0);
        int64_t a0 = json_integer_value(json_object_get(d, "retry_at_ms"));
        json_decref(d);
        assert_int_equal(wf_on_node_failure(wf, "h", 3, e503, T0, 2999, &d), 0);
        assert_int_not_equal(json_integer_value(json_object_get(d, "retry_at_ms")), a0);
        json_decref(d);
        /* attempts exhausted: the node's on_failure decides */
        assert_int_equal(wf_on_node_failure(wf, "h", 6, e503, T0, 0, &d), 0);
        expect_json(d, "{\"final\":\"fail\",\"max_attempts\":6,\"status\":\"failed\","
                       "\"reason\":\"all 6 attempts used\"}");
        json_decref(d);
        /* 429 honours Retry-After */
        _cleanup_json_ json_t *e429 =
            json_pack("{s:s,s:i,s:i}", "class", "http_429", "status", 429, "retry_after_ms", 30000);
        assert_int_equal(wf_on_node_failure(wf, "h", 1, e429, T0, 0, &d), 0);
        assert_int_equal(json_integer_value(json_object_get(d, "retry_at_ms")), T0 + 30000);
        json_decref(d);
        /* a 404 is not retried: the request itself is wrong */
        _cleanup_json_ json_t *e404 = json_pack("{s:s,s:i}", "class", "http_4xx", "status", 404);
        assert_int_equal(wf_on_node_failure(wf, "h", 1, e404, T0, 0, &d), 0);
        expect_json(d, "{\"final\":\"fail\",\"max_attempts\":6,\"status\":\"failed\","
                       "\"reason\":\"http_4xx is not in retry_on\"}");
        json_decref(d);
        /* fixed backoff without jitter; retry_on limits the classes */
        _cleanup_json_ json_t *eerr = json_pack("{s:s}", "class", "error");
        assert_int_equal(wf_on_node_failure(wf, "f", 2, eerr, T0, 12345, &d), 0);
        assert_int_equal(json_integer_value(json_object_get(d, "retry_at_ms")), T0 + 10000);
        json_decref(d);
        assert_int_equal(wf_on_node_failure(wf, "f", 1, e503, T0, 0, &d), 0);
        expect_json(d, "{\"final\":\"continue\",\"max_attempts\":3,\"status\":\"failed\","
                       "\"reason\":\"http_5xx is not in retry_on\"}");
        json_decref(d);
        /* map items use their template's policy */
        assert_int_equal(wf_on_node_failure(wf, "m[42]", 1, e503, T0, 0, &d), 0);
        assert_non_null(json_object_get(d, "retry_at_ms"));
        json_decref(d);
        assert_int_equal(wf_on_node_failure(wf, "m[42]", 2, e503, T0, 0, &d), 0);
        assert_string_equal(json_string_value(json_object_get(d, "final")), "fail");
        json_decref(d);
        assert_int_equal(wf_on_node_failure(wf, "nope", 1, e503, T0, 0, &d), -ENOENT);

        /* in a run: the failed attempt waits (holding nothing) until its retry time, then
         * the next attempt goes out with the same idempotency key */
        _cleanup_json_ json_t *snap = new_snapshot("{\"xs\":[]}");
        json_t *p = settle(wf, snap);
        json_decref(p);
        fail_attempt(wf, snap, "h", 1, e503, 0);
        int64_t retry_at = json_integer_value(
            json_object_get(json_object_get(nodes_of(snap), "h"), "retry_at_ms"));
        p = plan(wf, snap);
        expect_lone(p, "wait");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(p, 0), "wake_at_ms")),
                         retry_at);
        json_decref(p);
        advance(snap, retry_at - now_of(snap));
        p = plan(wf, snap);
        const json_t *ex = find_action(p, "execute", "h");
        assert_non_null(ex);
        assert_int_equal(json_integer_value(json_object_get(ex, "attempt")), 2);
        assert_string_equal(json_string_value(json_object_get(ex, "idempotency_key")), RUN_ID ":h");
        json_decref(p);
        wf_free(wf);
}

/* ${ secrets.NAME } renders as [secret:NAME] (what is recorded) and the action lists the
 * names, once each, for the worker to put the values into the request that leaves. */
static void secrets_render_as_placeholders_and_are_listed(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"s\",\"nodes\":[{\"id\":\"h\",\"type\":\"http\",\"request\":{"
                  "\"method\":\"POST\",\"url\":\"http://x/?k=${ secrets.K }\",\"headers\":{"
                  "\"Authorization\":\"Bearer ${ secrets.OPENAI_API_KEY }\"},\"body\":{\"a\":"
                  "\"${ secrets[\\\"my-key\\\"] }\",\"b\":\"${ secrets.K }\"}}},"
                  "{\"id\":\"plain\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"}}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{}");
        json_t *p = plan(wf, snap);
        const json_t *ex = find_action(p, "execute", "h");
        assert_non_null(ex);
        _cleanup_json_ json_t *names = json_loads("[\"K\",\"OPENAI_API_KEY\",\"my-key\"]", 0, NULL);
        assert_json_equal(json_object_get(ex, "secrets"), names);
        const json_t *in = json_object_get(ex, "input");
        assert_string_equal(json_string_value(json_object_get(in, "url")),
                            "http://x/?k=[secret:K]");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(in, "headers"), "Authorization")),
            "Bearer [secret:OPENAI_API_KEY]");
        assert_string_equal(json_string_value(json_object_get(json_object_get(in, "body"), "a")),
                            "[secret:my-key]");
        /* a request that names none has no list */
        assert_null(json_object_get(find_action(p, "execute", "plain"), "secrets"));
        json_decref(p);
        wf_free(wf);
}

/* A definition's own Idempotency-Key header (any case) is the key that leaves and the one
 * recorded; one that renders empty or over 255 characters fails the attempt instead. */
static void own_idempotency_key_wins(void **state)
{
        struct wf_workflow *wf = parse(
            "{\"name\":\"k\",\"nodes\":[{\"id\":\"own\",\"type\":\"http\",\"request\":{"
            "\"url\":\"http://x\",\"headers\":{\"idempotency-KEY\":\"order-${ input.id }\"}}},"
            "{\"id\":\"empty\",\"type\":\"http\",\"request\":{\"url\":\"http://x\","
            "\"headers\":{\"Idempotency-Key\":\"${ input.none }\"}}},"
            "{\"id\":\"long\",\"type\":\"http\",\"request\":{\"url\":\"http://x\","
            "\"headers\":{\"Idempotency-Key\":\"${ input.long }\"}}},"
            "{\"id\":\"derived\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"}}]}");
        char input[400];
        memset(input, 0, sizeof(input));
        snprintf(input, sizeof(input), "{\"id\":42,\"long\":\"%0256d\"}", 0);
        _cleanup_json_ json_t *snap = new_snapshot(input);
        json_t *p = plan(wf, snap);

        const json_t *a = find_action(p, "execute", "own");
        assert_non_null(a);
        assert_string_equal(json_string_value(json_object_get(a, "idempotency_key")), "order-42");
        json_t *headers = json_object_get(json_object_get(a, "input"), "headers");
        assert_int_equal(json_object_size(headers), 1);
        assert_string_equal(json_string_value(json_object_get(headers, "idempotency-KEY")),
                            "order-42");
        a = find_action(p, "execute", "derived");
        assert_string_equal(json_string_value(json_object_get(a, "idempotency_key")),
                            RUN_ID ":derived");
        assert_string_equal(
            json_string_value(json_object_get(
                json_object_get(json_object_get(a, "input"), "headers"), "Idempotency-Key")),
            RUN_ID ":derived");
        for (int i = 0; i < 2; i++) {
                a = find_action(p, "fail_node", i ? "long" : "empty");
                assert_non_null(a);
                assert_null(find_action(p, "execute", i ? "long" : "empty"));
                assert_string_equal(
                    json_string_value(json_object_get(json_object_get(a, "error"), "message")),
                    i ? "the Idempotency-Key header must be 1 to 255 characters after rendering "
                        "(got 256)"
                      : "the Idempotency-Key header must be 1 to 255 characters after rendering "
                        "(got 0)");
        }
        json_decref(p);
        wf_free(wf);
}

/* at_most_once: a failure after which the request may have been acted on (timeout,
 * network after sending, 5xx) ends the attempt interrupted and is not sent again unless
 * retry_on names the class; failures where nothing took effect (connect, 429) are retried
 * as usual. at_least_once retries them all by default. */
static void at_most_once_does_not_resend_an_ambiguous_failure(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"amo\",\"nodes\":[{\"id\":\"most\",\"type\":\"http\",\"delivery\":"
                  "\"at_most_once\",\"request\":{\"url\":\"http://x\"}},"
                  "{\"id\":\"listed\",\"type\":\"http\",\"delivery\":\"at_most_once\",\"request\":{"
                  "\"url\":\"http://x\"},\"retry\":{\"retry_on\":[\"timeout\",\"network\"]}},"
                  "{\"id\":\"least\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"}}]}");
        static const char *const ambiguous[] = {"timeout", "network", "http_5xx"};
        json_t *d = NULL;

        for (size_t i = 0; i < 3; i++) {
                _cleanup_json_ json_t *e =
                    json_pack("{s:s,s:s}", "class", ambiguous[i], "message", "m");
                _cleanup_free_ char *reason = NULL;
                assert_int_equal(wf_on_node_failure(wf, "most", 1, e, T0, 0, &d), 0);
                assert_null(json_object_get(d, "retry_at_ms"));
                assert_string_equal(json_string_value(json_object_get(d, "final")), "fail");
                assert_string_equal(json_string_value(json_object_get(d, "status")), "interrupted");
                assert_non_null(reason = strdup(json_string_value(json_object_get(d, "reason"))));
                assert_non_null(strstr(reason, "delivery is at_most_once"));
                assert_non_null(strstr(reason, ambiguous[i]));
                json_decref(d);
                /* at_least_once: the same failure is retried */
                assert_int_equal(wf_on_node_failure(wf, "least", 1, e, T0, 0, &d), 0);
                assert_non_null(json_object_get(d, "retry_at_ms"));
                assert_string_equal(json_string_value(json_object_get(d, "status")), "failed");
                json_decref(d);
        }
        /* listed explicitly: sent again, the attempt still recorded as interrupted */
        _cleanup_json_ json_t *timeout = json_pack("{s:s}", "class", "timeout");
        assert_int_equal(wf_on_node_failure(wf, "listed", 1, timeout, T0, 0, &d), 0);
        assert_non_null(json_object_get(d, "retry_at_ms"));
        assert_string_equal(json_string_value(json_object_get(d, "status")), "interrupted");
        json_decref(d);
        _cleanup_json_ json_t *e5xx = json_pack("{s:s,s:i}", "class", "http_5xx", "status", 503);
        assert_int_equal(wf_on_node_failure(wf, "listed", 1, e5xx, T0, 0, &d), 0);
        assert_null(json_object_get(d, "retry_at_ms"));
        json_decref(d);
        /* nothing left the worker, or the server refused it: retried by default */
        _cleanup_json_ json_t *connect = json_pack("{s:s}", "class", "connect");
        _cleanup_json_ json_t *e429 = json_pack("{s:s,s:i}", "class", "http_429", "status", 429);
        assert_int_equal(wf_on_node_failure(wf, "most", 1, connect, T0, 0, &d), 0);
        assert_non_null(json_object_get(d, "retry_at_ms"));
        assert_string_equal(json_string_value(json_object_get(d, "status")), "failed");
        json_decref(d);
        assert_int_equal(wf_on_node_failure(wf, "most", 2, e429, T0, 0, &d), 0);
        assert_non_null(json_object_get(d, "retry_at_ms"));
        json_decref(d);
        /* "network" in retry_on covers connect too */
        assert_int_equal(wf_on_node_failure(wf, "listed", 1, connect, T0, 0, &d), 0);
        assert_non_null(json_object_get(d, "retry_at_ms"));
        json_decref(d);
        wf_free(wf);
}

/* A failed attempt's event: the cause, the attempt, and the next one or why none. */
static void failure_events_say_what_failed_and_what_next(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"ev\",\"nodes\":[{\"id\":\"h\",\"type\":\"http\",\"request\":{"
                  "\"url\":\"http://x\"},\"retry\":{\"backoff\":\"fixed\",\"jitter\":false,"
                  "\"initial_delay\":\"1500ms\"}},{\"id\":\"w\",\"type\":\"wait_event\",\"event\":"
                  "\"go\"}]}");
        _cleanup_json_ json_t *e503 =
            json_pack("{s:s,s:s,s:i,s:i}", "class", "http_5xx", "message",
                      "unexpected http status 503", "status", 503, "duration_ms", 1200);
        _cleanup_json_ json_t *etimeout =
            json_pack("{s:s,s:s}", "class", "timeout", "message", "no 'go' signal arrived");
        json_t *d = NULL, *data = NULL;
        char *message = NULL;

        assert_int_equal(wf_on_node_failure(wf, "h", 1, e503, T0, 0, &d), 0);
        assert_int_equal(wf_failure_event(e503, 1, d, &message, &data), 0);
        assert_string_equal(message, "http_5xx: unexpected http status 503 (attempt 1 of 3, "
                                     "1s); attempt 2 in 1s");
        expect_json(data, "{\"class\":\"http_5xx\",\"status\":503,\"duration_ms\":1200,"
                          "\"attempt\":1,\"max_attempts\":3,\"next_attempt\":2,"
                          "\"retry_at_ms\":1700000001500,\"delay_ms\":1500}");
        free(message);
        json_decref(data);
        json_decref(d);

        assert_int_equal(wf_on_node_failure(wf, "h", 3, e503, T0, 0, &d), 0);
        assert_int_equal(wf_failure_event(e503, 3, d, &message, &data), 0);
        assert_string_equal(message, "http_5xx: unexpected http status 503 (attempt 3 of 3, "
                                     "1s); no further attempt: all 3 attempts used");
        expect_json(data, "{\"class\":\"http_5xx\",\"status\":503,\"duration_ms\":1200,"
                          "\"attempt\":3,\"max_attempts\":3,\"next_attempt\":null,"
                          "\"retry_at_ms\":null,\"final\":\"fail\","
                          "\"reason\":\"all 3 attempts used\"}");
        free(message);
        json_decref(data);
        json_decref(d);

        /* no request, no duration */
        assert_int_equal(wf_on_node_failure(wf, "w", 1, etimeout, T0, 0, &d), 0);
        assert_int_equal(wf_failure_event(etimeout, 1, d, &message, &data), 0);
        assert_string_equal(message, "timeout: no 'go' signal arrived (attempt 1 of 1); no "
                                     "further attempt: it has 1 attempt (retry.max_attempts)");
        assert_null(json_object_get(data, "duration_ms"));
        free(message);
        json_decref(data);
        json_decref(d);
        wf_free(wf);
}

static void crash_recovery_depends_on_delivery(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"crash\",\"nodes\":[{\"id\":\"least\",\"type\":\"http\",\"request\":{"
                  "\"url\":\"http://x\"}},{\"id\":\"most\",\"type\":\"http\",\"request\":{\"url\":"
                  "\"http://x\"},\"delivery\":\"at_most_once\"},"
                  "{\"id\":\"most2\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"},"
                  "\"delivery\":\"at_most_once\",\"retry\":{\"retry_on\":[\"interrupted\"]}}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);

        json_t *p = settle(wf, snap);
        json_decref(p);
        /* in flight on this worker: nothing is re-emitted */
        p = plan(wf, snap);
        expect_lone(p, "wait");
        json_decref(p);

        /* the worker died: a new owner has nothing in flight */
        json_array_clear(json_object_get(snap, "in_flight"));
        p = plan(wf, snap);
        const json_t *a = find_action(p, "execute", "least");
        assert_non_null(a); /* at_least_once: the same attempt again, same key */
        assert_int_equal(json_integer_value(json_object_get(a, "attempt")), 1);
        assert_true(json_is_true(json_object_get(a, "reexecution")));
        assert_string_equal(json_string_value(json_object_get(a, "idempotency_key")),
                            RUN_ID ":least");
        a = find_action(p, "fail_node", "most"); /* at_most_once: not sent again */
        assert_non_null(a);
        assert_null(find_action(p, "execute", "most"));
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(a, "error"), "class")),
            "interrupted");
        apply(wf, snap, p);
        json_decref(p);
        /* interrupted is not retried by default: the run fails, naming the node */
        assert_string_equal(status_of(snap, "most"), "interrupted");
        assert_null(json_object_get(json_object_get(nodes_of(snap), "most"), "retry_at_ms"));
        /* ... unless retry_on says so */
        assert_non_null(json_object_get(json_object_get(nodes_of(snap), "most2"), "retry_at_ms"));
        p = plan(wf, snap);
        expect_lone(p, "finish");
        const json_t *fin = json_array_get(p, 0);
        assert_string_equal(json_string_value(json_object_get(fin, "status")), "failed");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(fin, "error"), "node")), "most");
        json_decref(p);
        wf_free(wf);
}

/* wf_plan_then: a plan of executes alone hands out the plan after them (the worker then
 * plans a big map once per turn, not twice); a plan that completes a node does not. */
static void executes_alone_hand_out_the_wait_that_follows(void **state)
{
        (void)state;
        struct wf_workflow *wf =
            parse("{\"name\":\"m\",\"nodes\":[{\"id\":\"m\",\"type\":\"map\",\"items\":"
                  "\"input.xs\",\"concurrency\":3,\"node\":{\"type\":\"http\",\"request\":{"
                  "\"method\":\"POST\",\"url\":\"http://x/${ index }\"}}},"
                  "{\"id\":\"nap\",\"type\":\"sleep\",\"duration\":\"5s\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"xs\":[1,2,3,4,5]}");
        json_t *actions = NULL, *then = NULL;

        /* the sleep first: it is recorded waiting, nothing else changes: no then */
        assert_int_equal(wf_plan_then(wf, snap, &actions, &then), 0);
        assert_non_null(find_action(actions, "execute", "m[0]"));
        assert_non_null(find_action(actions, "sleep", "nap"));
        assert_null(then);
        apply(wf, snap, actions);
        json_decref(actions);

        finish_execute(snap, "m[1]", "\"r1\"");
        assert_int_equal(wf_plan_then(wf, snap, &actions, &then), 0);
        assert_int_equal(json_array_size(actions), 1);
        assert_non_null(find_action(actions, "execute", "m[3]"));
        assert_non_null(then);
        apply(wf, snap, actions);
        /* exactly what planning again gives: the wait, with the sleep's timer */
        json_t *next = plan(wf, snap);
        expect_lone(next, "wait");
        assert_json_equal(json_array_get(next, 0), then);
        assert_int_equal(json_integer_value(json_object_get(then, "wake_at_ms")), T0 + 5000);
        json_decref(next);
        json_decref(then);
        json_decref(actions);
        wf_free(wf);
}

static void map_respects_concurrency_and_fans_in(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"map\",\"nodes\":[{\"id\":\"m\",\"type\":\"map\",\"items\":"
                  "\"input.xs\",\"concurrency\":10,\"node\":{\"type\":\"http\",\"request\":{"
                  "\"method\":\"POST\",\"url\":\"http://x/${ index }\",\"body\":\"${ item }\"}}},"
                  "{\"id\":\"after\",\"type\":\"transform\",\"after\":[\"m\"],\"output\":\"${ "
                  "len(nodes.m.output) }\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);
        json_t *xs = json_array();
        for (int i = 0; i < 25; i++)
                json_array_append_new(xs, json_pack("{s:i}", "v", i));
        json_object_set_new(json_object_get(snap, "input"), "xs", xs);

        json_t *p = plan(wf, snap);
        assert_int_equal(json_array_size(p), 10);
        for (int i = 0; i < 10; i++) {
                char id[16];
                snprintf(id, sizeof(id), "m[%d]", i);
                const json_t *ex = find_action(p, "execute", id);
                assert_non_null(ex);
                char key[80];
                snprintf(key, sizeof(key), RUN_ID ":m[%d]", i);
                assert_string_equal(json_string_value(json_object_get(ex, "idempotency_key")), key);
                assert_int_equal(json_integer_value(json_object_get(
                                     json_object_get(json_object_get(ex, "input"), "body"), "v")),
                                 i);
        }
        apply(wf, snap, p);
        json_decref(p);
        p = plan(wf, snap);
        expect_lone(p, "wait"); /* 10 in flight: no room */
        json_decref(p);
        finish_execute(snap, "m[3]", "\"r3\"");
        finish_execute(snap, "m[7]", "\"r7\"");
        p = plan(wf, snap);
        assert_int_equal(json_array_size(p), 2);
        assert_non_null(find_action(p, "execute", "m[10]"));
        assert_non_null(find_action(p, "execute", "m[11]"));
        apply(wf, snap, p);
        json_decref(p);

        /* finish everything, checking the limit is never exceeded */
        for (int round = 0; round < 100; round++) {
                json_t *f = json_object_get(snap, "in_flight");
                assert_int_le(json_array_size(f), 10);
                while (json_array_size(f) > 0) {
                        const char *id = json_string_value(json_array_get(f, 0));
                        char out[32];
                        snprintf(out, sizeof(out), "\"r%d\"", item_index(id));
                        finish_execute(snap, id, out);
                }
                p = settle(wf, snap);
                if (!strcmp(action_name(json_array_get(p, 0)), "finish"))
                        break;
                json_decref(p);
        }
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"after\":25}");
        json_t *out = json_object_get(json_object_get(nodes_of(snap), "m"), "output");
        assert_int_equal(json_array_size(out), 25);
        for (int i = 0; i < 25; i++) {
                char want[16];
                snprintf(want, sizeof(want), "r%d", i);
                assert_string_equal(json_string_value(json_array_get(out, i)), want);
        }
        json_decref(p);
        wf_free(wf);
}

static void map_of_ten_thousand_items_completes_fast(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"bigmap\",\"nodes\":[{\"id\":\"m\",\"type\":\"map\",\"items\":"
                  "\"input.xs\",\"concurrency\":100,\"node\":{\"type\":\"http\",\"request\":{"
                  "\"url\":\"http://x/${ item }\"}}}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);
        json_t *xs = json_array();
        for (int i = 0; i < 10000; i++)
                json_array_append_new(xs, json_integer(i));
        json_object_set_new(json_object_get(snap, "input"), "xs", xs);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);

        int plans = 0;
        json_t *p = NULL;
        for (;;) {
                json_t *actions = NULL;
                assert_int_equal(wf_plan(wf, snap, &actions), 0);
                plans++;
                if (is_terminal_plan(actions) &&
                    strcmp(action_name(json_array_get(actions, 0)), "wait") != 0) {
                        p = actions;
                        break;
                }
                apply(wf, snap, actions);
                json_decref(actions);
                /* every execute finishes at once, echoing its item */
                json_t *f = json_object_get(snap, "in_flight");
                while (json_array_size(f) > 0) {
                        const char *id = json_string_value(json_array_get(f, 0));
                        char out[16];
                        snprintf(out, sizeof(out), "%d", item_index(id));
                        finish_execute(snap, id, out);
                }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        print_message("10,000-item map: %d plans in %.2fs\n", plans, secs);
        assert_int_lt((long long)(secs * 1000), 20000); /* ms */
        expect_lone(p, "finish");
        json_t *out = json_object_get(json_object_get(nodes_of(snap), "m"), "output");
        assert_int_equal(json_array_size(out), 10000);
        for (int i = 0; i < 10000; i += 997)
                assert_int_equal(json_integer_value(json_array_get(out, i)), i);
        json_decref(p);
        wf_free(wf);
}

/* One step of a_plan_cache_plans_as_without_it: plans snap without and with the cache and
 * asserts both give the same actions and the same `then`; returns the actions. */
static json_t *plan_both(const struct wf_workflow *wf, const json_t *snap,
                         struct wf_plan_cache *cache)
{
        json_t *actions = NULL, *then = NULL, *cached = NULL, *cached_then = NULL;

        assert_int_equal(wf_plan_then(wf, snap, &actions, &then), 0);
        assert_int_equal(wf_plan_then_cached(wf, snap, cache, &cached, &cached_then), 0);
        assert_json_equal(cached, actions);
        if (then || cached_then) {
                assert_non_null(then);
                assert_non_null(cached_then);
                assert_json_equal(cached_then, then);
        }
        json_decref(cached);
        json_decref(then);
        json_decref(cached_then);
        return actions;
}

static uint64_t lcg(uint64_t *seed)
{
        *seed = *seed * 6364136223846793005ULL + 1442695040888963407ULL;
        return *seed >> 33;
}

/*
 * A run kept in memory is planned through a plan cache (the worker's held runs): every
 * plan must equal the plan without it, whatever happens to the items — finished out of
 * order, failed and retried, failed for good under each on_failure, the snapshot read
 * again (a new nodes object) in between. Every record the stand-in sets is noted, as the
 * worker's are.
 */
static void a_plan_cache_plans_as_without_it(void **state)
{
        static const char *const policies[] = {"continue", "fail", "escalate"};

        for (size_t k = 0; k < 3; k++) {
                char def[1024];
                snprintf(
                    def, sizeof(def),
                    "{\"name\":\"cache\",\"nodes\":["
                    "{\"id\":\"a\",\"type\":\"map\",\"items\":\"input.xs\",\"concurrency\":13,"
                    "\"node\":{\"type\":\"http\",\"request\":{\"url\":\"http://x/${ index }\"},"
                    "\"retry\":{\"max_attempts\":3,\"initial_delay\":\"1s\"},"
                    "\"on_failure\":\"%s\"}},"
                    "{\"id\":\"b\",\"type\":\"map\",\"items\":\"input.ys\",\"concurrency\":4,"
                    "\"after\":[\"a\"],\"node\":{\"type\":\"http\",\"request\":{"
                    "\"url\":\"http://y/${ item }\"},\"on_failure\":\"continue\"}},"
                    "{\"id\":\"n\",\"type\":\"transform\",\"after\":[\"b\"],"
                    "\"output\":\"${ len(nodes.a.output) + len(nodes.b.output) }\"}]}",
                    policies[k]);
                struct wf_workflow *wf = parse(def);
                struct wf_plan_cache *cache = wf_plan_cache_new();
                _cleanup_json_ json_t *snap = new_snapshot(NULL);
                _cleanup_json_ json_t *e503 =
                    json_pack("{s:s,s:i}", "class", "http_5xx", "status", 503);
                _cleanup_json_ json_t *e404 =
                    json_pack("{s:s,s:i}", "class", "http_4xx", "status", 404);
                json_t *xs = json_array(), *ys = json_array();
                uint64_t seed = 42 + k;
                int steps = 0, failed_for_good = 0;
                const char *end = NULL;

                assert_non_null(cache);
                for (int i = 0; i < 300; i++)
                        json_array_append_new(xs, json_integer(i));
                for (int i = 0; i < 30; i++)
                        json_array_append_new(ys, json_integer(i * 7));
                json_object_set_new(json_object_get(snap, "input"), "xs", xs);
                json_object_set_new(json_object_get(snap, "input"), "ys", ys);
                for (; steps < 20000 && !end; steps++) {
                        json_t *actions = plan_both(wf, snap, cache);
                        const char *first = action_name(json_array_get(actions, 0));
                        size_t i;
                        json_t *a;

                        if (is_terminal_plan(actions) && strcmp(first, "wait") != 0) {
                                end = !strcmp(first, "finish") ? "finish" : "needs_input";
                                json_decref(actions);
                                break;
                        }
                        if (strcmp(first, "wait") != 0)
                                apply(wf, snap, actions);
                        json_array_foreach (actions, i, a)
                                wf_plan_cache_note(cache,
                                                   json_string_value(json_object_get(a, "node")));
                        json_decref(actions);

                        /* some requests end, in any order: most complete, some fail */
                        json_t *f = json_object_get(snap, "in_flight");
                        for (size_t n = lcg(&seed) % 6; n > 0 && json_array_size(f) > 0; n--) {
                                char id[32];
                                uint64_t roll = lcg(&seed) % 100;
                                snprintf(id, sizeof(id), "%s",
                                         json_string_value(
                                             json_array_get(f, lcg(&seed) % json_array_size(f))));
                                if (roll < 10) {
                                        fail_attempt(wf, snap, id, attempt_of(snap, id), e503,
                                                     lcg(&seed));
                                } else if (roll < 12 && steps > 60 && failed_for_good < 3) {
                                        fail_attempt(wf, snap, id, attempt_of(snap, id), e404, 0);
                                        failed_for_good++;
                                } else {
                                        finish_execute(snap, id, "\"ok\"");
                                }
                                wf_plan_cache_note(cache, id);
                        }
                        advance(snap, (int64_t)(lcg(&seed) % 700));
                        /* now and then the snapshot is read again: a new nodes object */
                        if (lcg(&seed) % 17 == 0)
                                json_object_set_new(snap, "nodes",
                                                    json_deep_copy(json_object_get(snap, "nodes")));
                }
                assert_non_null(end);
                if (k == 0)
                        assert_string_equal(end, "finish");
                assert_int_gt(steps, 60);
                wf_plan_cache_free(cache);
                wf_free(wf);
        }
}

static void map_edge_cases(void **state)
{
        struct wf_workflow *wf;
#define MAP_DEF(policy)                                                                            \
        "{\"name\":\"maps\",\"nodes\":[{\"id\":\"m\",\"type\":\"map\",\"items\":\"input.xs\","     \
        "\"node\":{\"type\":\"http\",\"request\":{\"url\":\"http://x\"},\"retry\":{"               \
        "\"max_attempts\":1},\"on_failure\":\"" policy "\"}}]}"
        _cleanup_json_ json_t *err = json_pack("{s:s,s:s}", "class", "network", "message", "down");

        /* an empty list completes at once with [] */
        wf = parse(MAP_DEF("fail"));
        _cleanup_json_ json_t *s0 = new_snapshot("{\"xs\":[]}");
        json_t *p = settle(wf, s0);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"m\":[]}");
        json_decref(p);

        /* not a list: the map fails with a message saying so */
        _cleanup_json_ json_t *s1 = new_snapshot("{\"xs\":{\"a\":1}}");
        p = plan(wf, s1);
        const json_t *a = find_action(p, "fail_node", "m");
        assert_non_null(a);
        assert_non_null(
            strstr(json_string_value(json_object_get(json_object_get(a, "error"), "message")),
                   "items must evaluate to an array (got an object)"));
        json_decref(p);

        /* an item failing for good fails the map, naming the item, and nothing else starts */
        _cleanup_json_ json_t *s2 = new_snapshot("{\"xs\":[1,2,3]}");
        p = settle(wf, s2);
        json_decref(p);
        fail_attempt(wf, s2, "m[1]", 1, err, 0);
        p = plan(wf, s2);
        expect_lone(p, "fail_node");
        expect_json(json_object_get(json_object_get(json_array_get(p, 0), "error"), "item"),
                    "\"m[1]\"");
        apply(wf, s2, p);
        json_decref(p);
        p = plan(wf, s2);
        expect_lone(p, "finish");
        assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "status")),
                            "failed");
        json_decref(p);
        wf_free(wf);

        /* continue: the failed item is null in the fan-in */
        wf = parse(MAP_DEF("continue"));
        _cleanup_json_ json_t *s3 = new_snapshot("{\"xs\":[1,2]}");
        p = settle(wf, s3);
        json_decref(p);
        fail_attempt(wf, s3, "m[0]", 1, err, 0);
        finish_execute(s3, "m[1]", "\"ok\"");
        p = settle(wf, s3);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"m\":[null,\"ok\"]}");
        json_decref(p);
        wf_free(wf);

        /* escalate: the run waits for a person on that item */
        wf = parse(MAP_DEF("escalate"));
        _cleanup_json_ json_t *s4 = new_snapshot("{\"xs\":[1,2]}");
        p = settle(wf, s4);
        json_decref(p);
        fail_attempt(wf, s4, "m[1]", 1, err, 0);
        p = plan(wf, s4);
        expect_lone(p, "needs_input");
        assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "node")),
                            "m[1]");
        json_decref(p);
        wf_free(wf);
}

/* An expression that parses but does not evaluate (here a division by zero) fails its node
 * with one wording wherever it stands: a condition's if, a sleep's until, a map's items, a
 * loop's until, a node's when. */
static void an_expression_that_does_not_evaluate_fails_its_node(void **state)
{
        static const struct {
                const char *nodes, *node, *message;
        } cases[] = {
            {"{\"id\":\"c\",\"type\":\"condition\",\"if\":\"1 / input.z\",\"then\":[\"a\"],"
             "\"else\":[\"b\"]},{\"id\":\"a\",\"type\":\"transform\",\"output\":1},"
             "{\"id\":\"b\",\"type\":\"transform\",\"output\":2}",
             "c", "could not evaluate if at column 3: division by zero"},
            {"{\"id\":\"s\",\"type\":\"sleep\",\"until\":\"1 / input.z\"}", "s",
             "could not evaluate until at column 3: division by zero"},
            {"{\"id\":\"m\",\"type\":\"map\",\"items\":\"1 / input.z\",\"node\":{\"type\":"
             "\"transform\",\"output\":1}}",
             "m", "could not evaluate items at column 3: division by zero"},
            {"{\"id\":\"l\",\"type\":\"loop\",\"max_iterations\":3,\"until\":\"1 / input.z\","
             "\"node\":{\"type\":\"transform\",\"output\":1}}",
             "l", "could not evaluate until at column 3: division by zero"},
            {"{\"id\":\"w\",\"type\":\"transform\",\"when\":\"1 / input.z\",\"output\":1}", "w",
             "could not evaluate when at column 3: division by zero"},
        };
        (void)state;
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                char def[1024];
                snprintf(def, sizeof(def), "{\"name\":\"bad\",\"nodes\":[%s]}", cases[k].nodes);
                struct wf_workflow *wf = parse(def);
                _cleanup_json_ json_t *snap = new_snapshot("{\"z\":0}");
                json_t *p = settle(wf, snap);
                expect_lone(p, "finish");
                assert_string_equal(
                    json_string_value(json_object_get(json_array_get(p, 0), "status")), "failed");
                assert_string_equal(status_of(snap, cases[k].node), "failed");
                json_t *rec = json_object_get(nodes_of(snap), cases[k].node);
                assert_string_equal(
                    json_string_value(json_object_get(json_object_get(rec, "error"), "message")),
                    cases[k].message);
                json_decref(p);
                wf_free(wf);
        }
}

static void loop_runs_until_its_condition(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"loop\",\"nodes\":[{\"id\":\"poll\",\"type\":\"loop\","
                  "\"max_iterations\":5,\"until\":\"last.n >= input.stop\",\"node\":{\"type\":"
                  "\"transform\",\"output\":{\"n\":\"${ iteration }\",\"prev\":\"${ last }\"}}}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"stop\":3}");

        json_t *p = settle(wf, snap);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"),
                    "{\"poll\":{\"iterations\":3,\"last\":{\"n\":3,\"prev\":{\"n\":2,\"prev\":{"
                    "\"n\":1,\"prev\":null}}}}}");
        assert_string_equal(status_of(snap, "poll#1"), "completed");
        assert_string_equal(status_of(snap, "poll#3"), "completed");
        assert_null(status_of(snap, "poll#4"));
        json_decref(p);

        /* never true: bounded by max_iterations, then the loop fails the run */
        _cleanup_json_ json_t *snap2 = new_snapshot("{\"stop\":99}");
        p = settle(wf, snap2);
        expect_lone(p, "finish");
        const json_t *fin = json_array_get(p, 0);
        assert_string_equal(json_string_value(json_object_get(fin, "status")), "failed");
        assert_non_null(
            strstr(json_string_value(json_object_get(json_object_get(fin, "error"), "message")),
                   "max_iterations (5)"));
        assert_string_equal(status_of(snap2, "poll#5"), "completed");
        assert_null(status_of(snap2, "poll#6"));
        json_decref(p);
        wf_free(wf);
}

static void sleep_for_a_duration_and_until_a_time(void **state)
{
        struct wf_workflow *wf = parse(
            "{\"name\":\"sleepy\",\"nodes\":[{\"id\":\"s\",\"type\":\"sleep\",\"duration\":"
            "\"2s\"},{\"id\":\"u\",\"type\":\"sleep\",\"until\":\"input.at\",\"after\":[\"s\"]}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"at\":\"2023-11-14T22:15:00.500+01:00\"}");
        /* T0 = 2023-11-14T22:13:20Z; the until time is 2023-11-14T21:15:00.5Z: already past */

        json_t *p = plan(wf, snap);
        const json_t *a = find_action(p, "sleep", "s");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "wake_at_ms")), T0 + 2000);
        apply(wf, snap, p);
        json_decref(p);
        p = plan(wf, snap);
        expect_lone(p, "wait");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(p, 0), "wake_at_ms")),
                         T0 + 2000);
        json_decref(p);
        advance(snap, 1999);
        p = plan(wf, snap);
        expect_lone(p, "wait");
        json_decref(p);
        advance(snap, 1);
        p = plan(wf, snap);
        assert_non_null(find_action(p, "complete", "s"));
        apply(wf, snap, p);
        json_decref(p);
        p = plan(wf, snap);
        a = find_action(p, "complete", "u"); /* until in the past: no sleep at all */
        assert_non_null(a);
        expect_json(json_object_get(a, "output"), "{\"wake_at_ms\":1699996500500}");
        json_decref(p);

        /* an until in the future sleeps until exactly then */
        json_object_set_new(json_object_get(snap, "input"), "at",
                            json_string("2023-11-15T00:00:00Z"));
        p = plan(wf, snap);
        a = find_action(p, "sleep", "u");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "wake_at_ms")), 1700006400000);
        json_decref(p);

        /* a malformed time fails the node with a clear message */
        json_object_set_new(json_object_get(snap, "input"), "at", json_string("tomorrow"));
        p = plan(wf, snap);
        a = find_action(p, "fail_node", "u");
        assert_non_null(a);
        assert_non_null(
            strstr(json_string_value(json_object_get(json_object_get(a, "error"), "message")),
                   "RFC 3339"));
        json_decref(p);
        wf_free(wf);
}

static void wait_event_keeps_early_signals_and_times_out(void **state)
{
        struct wf_workflow *wf = parse(
            "{\"name\":\"events\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"request\":{"
            "\"url\":\"http://x\"}},{\"id\":\"w\",\"type\":\"wait_event\",\"event\":"
            "\"approved\",\"after\":[\"a\"]},{\"id\":\"w2\",\"type\":\"wait_event\",\"event\":"
            "\"approved\",\"after\":[\"a\"],\"timeout\":\"1h\"},"
            "{\"id\":\"t\",\"type\":\"transform\",\"after\":[\"w\"],\"output\":\"${ "
            "nodes.w.output.by }\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);

        json_t *p = settle(wf, snap);
        json_decref(p);
        /* the signal arrives while a is still running, before w is reached: it is kept */
        json_object_set_new(json_object_get(snap, "signals"), "approved",
                            test_json("[{\"id\":\"sig-1\",\"payload\":{\"by\":\"ann\"}}]"));
        finish_execute(snap, "a", NULL);
        p = plan(wf, snap);
        const json_t *c = find_action(p, "complete", "w");
        assert_non_null(c);
        assert_string_equal(json_string_value(json_object_get(c, "signal_id")), "sig-1");
        expect_json(json_object_get(c, "output"), "{\"by\":\"ann\"}");
        /* one signal is consumed once: w2 waits for another, with its timeout */
        c = find_action(p, "wait_signal", "w2");
        assert_non_null(c);
        assert_int_equal(json_integer_value(json_object_get(c, "timeout_at_ms")), T0 + 3600000);
        apply(wf, snap, p);
        json_decref(p);

        p = settle(wf, snap);
        expect_lone(p, "wait");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(p, 0), "wake_at_ms")),
                         T0 + 3600000);
        json_decref(p);
        assert_string_equal(status_of(snap, "t"), "completed");

        advance(snap, 3600000);
        p = plan(wf, snap);
        c = find_action(p, "fail_node", "w2");
        assert_non_null(c);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(c, "error"), "class")), "timeout");
        apply(wf, snap, p);
        json_decref(p);
        p = plan(wf, snap);
        expect_lone(p, "finish");
        assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "status")),
                            "failed");
        json_decref(p);
        wf_free(wf);
}

static void subworkflow_waits_for_its_child(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"parent\",\"nodes\":[{\"id\":\"c\",\"type\":\"subworkflow\","
                  "\"workflow\":\"child-flow\",\"version\":3,\"input\":{\"x\":\"${ input.x }\"},"
                  "\"retry\":{\"max_attempts\":2,\"retry_on\":[\"error\"],\"initial_delay\":\"1s\","
                  "\"jitter\":false}}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"x\":5}");

        json_t *p = plan(wf, snap);
        const json_t *a = find_action(p, "start_child", "c");
        assert_non_null(a);
        assert_string_equal(json_string_value(json_object_get(a, "workflow")), "child-flow");
        assert_int_equal(json_integer_value(json_object_get(a, "version")), 3);
        expect_json(json_object_get(a, "input"), "{\"x\":5}");
        assert_string_equal(json_string_value(json_object_get(a, "idempotency_key")),
                            RUN_ID ":c:1");
        apply(wf, snap, p);
        json_decref(p);

        p = plan(wf, snap); /* the parent holds nothing while the child runs */
        expect_lone(p, "wait");
        assert_true(json_is_null(json_object_get(json_array_get(p, 0), "wake_at_ms")));
        json_decref(p);

        /* the child fails: the node fails, and its retry starts a new child */
        json_object_set_new(json_object_get(snap, "children"), "c",
                            test_json("{\"status\":\"failed\",\"attempt\":1,\"error\":{\"message\":"
                                      "\"boom\"}}"));
        p = plan(wf, snap);
        a = find_action(p, "fail_node", "c");
        assert_non_null(a);
        apply(wf, snap, p);
        json_decref(p);
        advance(snap, 1000);
        p = plan(wf, snap);
        a = find_action(p, "start_child", "c");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "attempt")), 2);
        assert_string_equal(json_string_value(json_object_get(a, "idempotency_key")),
                            RUN_ID ":c:2");
        apply(wf, snap, p);
        json_decref(p);
        /* the old child's failure is not mistaken for the new attempt's */
        p = plan(wf, snap);
        expect_lone(p, "wait");
        json_decref(p);
        json_object_set_new(
            json_object_get(snap, "children"), "c",
            test_json("{\"status\":\"completed\",\"attempt\":2,\"output\":{\"y\":6}}"));
        p = settle(wf, snap);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"), "{\"c\":{\"y\":6}}");
        json_decref(p);
        wf_free(wf);
}

/* A run's time_scale divides every duration it waits (time_scale.c), and nothing else. */
static void time_scale_divides_every_wait(void **state)
{
        (void)state;
        /* the rule: rounded up, a positive duration stays positive, 1 and invalid change
         * nothing */
        assert_int_equal(wf_time_scaled_ms(3600000, 86400), 42);
        assert_int_equal(wf_time_scaled_ms(86400000, 86400), 1000);
        assert_int_equal(wf_time_scaled_ms(1, 86400), 1);
        assert_int_equal(wf_time_scaled_ms(0, 86400), 0);
        assert_int_equal(wf_time_scaled_ms(1000, 1), 1000);
        assert_int_equal(wf_time_scaled_ms(1000, 0.5), 2000);    /* below 1 stretches */
        assert_int_equal(wf_time_scaled_ms(1000, 0.0001), 1000); /* out of range: ignored */
        assert_int_equal(wf_time_scaled_ms(1000, 0.001), 1000000);

        struct wf_workflow *wf = parse(
            "{\"name\":\"rehearsal\",\"timeout\":\"10d\",\"nodes\":["
            "{\"id\":\"s\",\"type\":\"sleep\",\"duration\":\"3d\"},"
            "{\"id\":\"u\",\"type\":\"sleep\",\"until\":\"input.at\"},"
            "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"doc\",\"timeout\":\"1d\"},"
            "{\"id\":\"h\",\"type\":\"http\",\"timeout\":\"30s\",\"request\":{\"url\":"
            "\"http://127.0.0.1:1/\"},\"retry\":{\"max_attempts\":3,\"initial_delay\":\"1h\","
            "\"jitter\":false}},"
            "{\"id\":\"ok\",\"type\":\"approval\",\"timeout\":\"2d\",\"on_timeout\":\"escalate\","
            "\"escalation\":[{\"contacts\":[\"boss@example.com\"],\"timeout\":\"1d\"}]},"
            "{\"id\":\"ag\",\"type\":\"agent\",\"agent\":{\"provider\":\"openai\",\"model\":\"m\","
            "\"prompt\":\"p\",\"approve_tools\":{\"tools\":[\"http_request\"],\"timeout\":\"3d\","
            "\"on_timeout\":\"escalate\",\"escalation\":[{\"contacts\":[\"boss\"],"
            "\"timeout\":\"1d\"}]}}}]}");
        /* an until one day ahead of now: reached one second after now */
        _cleanup_json_ json_t *snap = new_snapshot("{\"at\":1700086400000}");
        json_object_set_new(snap, "time_scale", json_real(86400));

        json_t *p = plan(wf, snap);
        const json_t *a = find_action(p, "sleep", "s");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "wake_at_ms")), T0 + 3000);
        a = find_action(p, "sleep", "u");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "wake_at_ms")), T0 + 1000);
        a = find_action(p, "wait_signal", "w");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "timeout_at_ms")), T0 + 1000);
        /* work is not a wait: an http attempt's own timeout stays as written */
        a = find_action(p, "execute", "h");
        assert_non_null(a);
        assert_int_equal(json_integer_value(json_object_get(a, "timeout_ms")), 30000);
        a = find_action(p, "request_approval", "ok");
        assert_non_null(a);
        expect_json(json_object_get(json_object_get(a, "approval"), "timeout_ms"), "2000");
        expect_json(json_object_get(json_object_get(a, "approval"), "escalation"),
                    "[{\"contacts\":[\"boss@example.com\"],\"timeout_ms\":1000}]");
        /* an agent's tool-call approvals too */
        a = find_action(p, "execute", "ag");
        assert_non_null(a);
        const json_t *gate = json_object_get(json_object_get(a, "input"), "approve_tools");
        expect_json(json_object_get(gate, "timeout_ms"), "3000");
        expect_json(json_object_get(gate, "escalation"),
                    "[{\"contacts\":[\"boss\"],\"timeout_ms\":1000}]");
        /* the workflow's own definition is untouched (the spec was a copy) */
        json_decref(p);
        json_object_del(snap, "time_scale");
        p = plan(wf, snap);
        a = find_action(p, "request_approval", "ok");
        expect_json(json_object_get(json_object_get(a, "approval"), "escalation"),
                    "[{\"contacts\":[\"boss@example.com\"],\"timeout_ms\":86400000}]");
        json_decref(p);
        json_object_set_new(snap, "time_scale", json_real(86400));

        /* the run's deadline: ten days after its start, in ten seconds */
        assert_int_equal(wf_run_deadline_ms(wf, snap), T0 + 10000);
        /* the retry back-off: an hour in 42 ms */
        _cleanup_json_ json_t *err = test_json("{\"class\":\"connect\",\"message\":\"refused\"}");
        json_t *d = NULL;
        assert_int_equal(wf_on_node_failure_scaled(wf, "h", 1, err, T0, 86400, 0, &d), 0);
        expect_json(json_object_get(d, "delay_ms"), "42");
        expect_json(json_object_get(d, "retry_at_ms"), "1700000000042");
        json_decref(d);
        /* a Retry-After is the server's, honoured as sent */
        _cleanup_json_ json_t *busy =
            test_json("{\"class\":\"http_429\",\"status\":429,\"retry_after_ms\":5000}");
        assert_int_equal(wf_on_node_failure_scaled(wf, "h", 1, busy, T0, 86400, 0, &d), 0);
        expect_json(json_object_get(d, "delay_ms"), "5000");
        json_decref(d);

        /* a waiting wait_event whose record has no deadline (resumed from its start): its
         * timeout passes one second after it began; the error says both durations */
        json_object_set_new(nodes_of(snap), "w",
                            json_pack("{s:s,s:i,s:I}", "status", "waiting", "attempt", 1,
                                      "started_at_ms", (json_int_t)T0));
        advance(snap, 999);
        p = plan(wf, snap);
        assert_null(find_action(p, "fail_node", "w"));
        json_decref(p);
        advance(snap, 1);
        p = plan(wf, snap);
        a = find_action(p, "fail_node", "w");
        assert_non_null(a);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(a, "error"), "message")),
            "no 'doc' signal arrived within 1d (1s at time_scale 86400)");
        json_decref(p);
        wf_free(wf);
}

static void run_timeout_finishes_the_run(void **state)
{
        struct wf_workflow *wf = parse(
            "{\"name\":\"slow\",\"timeout\":\"1h\",\"nodes\":[{\"id\":\"s\",\"type\":\"sleep\","
            "\"duration\":\"1d\"}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);

        json_t *p = settle(wf, snap);
        expect_lone(p, "wait"); /* wakes for the run deadline, before the sleep ends */
        assert_int_equal(json_integer_value(json_object_get(json_array_get(p, 0), "wake_at_ms")),
                         T0 + 3600000);
        json_decref(p);
        advance(snap, 3600000);
        p = plan(wf, snap);
        expect_lone(p, "finish");
        const json_t *fin = json_array_get(p, 0);
        assert_string_equal(json_string_value(json_object_get(fin, "status")), "failed");
        expect_json(json_object_get(fin, "error"),
                    "{\"node\":null,\"class\":\"timeout\",\"message\":\"run exceeded its timeout "
                    "of 1h\"}");
        json_decref(p);
        wf_free(wf);
}

static void failure_policies_continue_and_escalate(void **state)
{
        struct wf_workflow *wf = parse(
            "{\"name\":\"policies\",\"output\":{\"a\":\"${ nodes.a.status }\",\"b\":\"${ "
            "nodes.b.output }\"},\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"request\":{"
            "\"url\":\"http://x\"},\"on_failure\":\"continue\",\"retry\":{\"max_attempts\":1}},"
            "{\"id\":\"b\",\"type\":\"transform\",\"after\":[\"a\"],\"output\":\"${ "
            "nodes.a.error.message }\"},"
            "{\"id\":\"e\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"},"
            "\"on_failure\":\"escalate\",\"retry\":{\"max_attempts\":1}},"
            "{\"id\":\"after_e\",\"type\":\"noop\",\"after\":[\"e\"]}]}");
        _cleanup_json_ json_t *snap = new_snapshot(NULL);
        _cleanup_json_ json_t *err =
            json_pack("{s:s,s:s}", "class", "network", "message", "refused");

        json_t *p = settle(wf, snap);
        json_decref(p);
        fail_attempt(wf, snap, "a", 1, err, 0);
        p = settle(wf, snap); /* a tolerated: b runs and reads a's error */
        json_decref(p);
        assert_string_equal(status_of(snap, "b"), "completed");
        fail_attempt(wf, snap, "e", 1, err, 0);
        p = plan(wf, snap);
        expect_lone(p, "needs_input");
        assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "node")), "e");
        expect_json(json_object_get(json_array_get(p, 0), "error"),
                    "{\"class\":\"network\",\"message\":\"refused\"}");
        json_decref(p);
        assert_null(status_of(snap, "after_e"));

        /* a person retries e (a new attempt, due now): the run goes on */
        json_object_set_new(nodes_of(snap), "e",
                            json_pack("{s:s,s:i,s:I}", "status", "waiting", "attempt", 2,
                                      "wake_at_ms", (json_int_t)now_of(snap)));
        p = plan(wf, snap);
        const json_t *ex = find_action(p, "execute", "e");
        assert_non_null(ex);
        assert_int_equal(json_integer_value(json_object_get(ex, "attempt")), 2);
        apply(wf, snap, p);
        json_decref(p);
        finish_execute(snap, "e", NULL);
        p = settle(wf, snap);
        expect_lone(p, "finish");
        expect_json(json_object_get(json_array_get(p, 0), "output"),
                    "{\"a\":\"failed\",\"b\":\"refused\"}");
        json_decref(p);
        wf_free(wf);
}

static void malformed_snapshots_are_rejected(void **state)
{
        struct wf_workflow *wf =
            parse("{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}]}");
        json_t *actions = NULL;
        _cleanup_json_ json_t *s1 = test_json("{\"run_id\":\"r\"}");
        assert_int_equal(wf_plan(wf, s1, &actions), -EINVAL);
        assert_null(actions);
        _cleanup_json_ json_t *s2 =
            test_json("{\"run_id\":\"r\",\"now_ms\":1,\"nodes\":{\"a\":3}}");
        assert_int_equal(wf_plan(wf, s2, &actions), -EINVAL);
        _cleanup_json_ json_t *s3 = test_json("{\"run_id\":\"r\",\"now_ms\":1}"); /* minimal */
        assert_int_equal(wf_plan(wf, s3, &actions), 0);
        assert_non_null(find_action(actions, "complete", "a"));
        json_decref(actions);
        wf_free(wf);
}

/* A node that references a stored agent runs the definition the run pinned
 * (snapshot.agents), rendered in the node's scope, with the node's overrides merged over it:
 * budget key by key, other fields replaced; name and description dropped; the version that
 * ran named in "ref". A reference the run did not pin fails the attempt and says why. */
static void a_stored_agent_is_merged_with_the_node_overrides(void **state)
{
        (void)state;
        _cleanup_wf_ struct wf_workflow *wf =
            parse("{\"name\":\"w\",\"nodes\":["
                  "{\"id\":\"a\",\"type\":\"agent\",\"agent\":{\"ref\":\"researcher\","
                  "\"prompt\":\"Sum ${ input.topic }.\",\"budget\":{\"max_cost_usd\":1}}},"
                  "{\"id\":\"b\",\"type\":\"agent\",\"agent\":\"writer\"},"
                  "{\"id\":\"c\",\"type\":\"agent\",\"agent\":{\"ref\":\"researcher\","
                  "\"version\":1}}]}");
        _cleanup_json_ json_t *snap = new_snapshot("{\"topic\":\"tides\"}");
        json_object_set_new(
            snap, "agents",
            test_json("{\"researcher\":{\"version\":4,\"definition\":{\"name\":\"researcher\","
                      "\"description\":\"d\",\"provider\":\"openai\",\"model\":\"m\",\"system\":"
                      "\"About ${ input.topic }.\",\"prompt\":\"Long ${ input.topic }.\","
                      "\"budget\":{\"max_tokens\":100,\"max_cost_usd\":5}}},"
                      "\"researcher@1\":{\"version\":1,\"definition\":{\"name\":\"researcher\","
                      "\"provider\":\"anthropic\",\"model\":\"old\",\"prompt\":\"Old.\"}}}"));
        _cleanup_json_ json_t *actions = plan(wf, snap);
        _cleanup_json_ json_t *want_a = test_json(
            "{\"provider\":\"openai\",\"model\":\"m\",\"system\":\"About tides.\",\"prompt\":"
            "\"Sum tides.\",\"budget\":{\"max_tokens\":100,\"max_cost_usd\":1},"
            "\"ref\":{\"name\":\"researcher\",\"version\":4}}");
        _cleanup_json_ json_t *want_c =
            test_json("{\"provider\":\"anthropic\",\"model\":\"old\",\"prompt\":\"Old.\","
                      "\"ref\":{\"name\":\"researcher\",\"version\":1}}");
        json_t *act;
        size_t i;
        int seen = 0;
        json_array_foreach (actions, i, act) {
                const char *node = json_string_value(json_object_get(act, "node"));
                const char *what = json_string_value(json_object_get(act, "action"));
                if (!strcmp(node, "a")) {
                        assert_string_equal(what, "execute");
                        assert_json_equal(json_object_get(act, "input"), want_a);
                } else if (!strcmp(node, "c")) {
                        assert_string_equal(what, "execute");
                        assert_json_equal(json_object_get(act, "input"), want_c);
                } else {
                        assert_string_equal(node, "b");
                        assert_string_equal(what, "fail_node");
                        const char *msg = json_string_value(
                            json_object_get(json_object_get(act, "error"), "message"));
                        assert_non_null(strstr(msg, "no agent named 'writer'"));
                }
                seen++;
        }
        assert_int_equal(seen, 3);

        /* a stored agent's approve_tools is normalised as an inline agent's is */
        static const char gated[] = "\"provider\":\"openai\",\"model\":\"m\",\"prompt\":\"p\","
                                    "\"tools\":[\"http_request\"],\"approve_tools\":{\"tools\":"
                                    "[\"http_request\"],\"timeout\":\"1h\"}";
        _cleanup_free_ char *inline_text = str_printf(
            "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"agent\",\"agent\":{%s}}]}", gated);
        _cleanup_free_ char *stored =
            str_printf("{\"gated\":{\"version\":2,\"definition\":{\"name\":\"gated\",%s}}}", gated);
        _cleanup_wf_ struct wf_workflow *wf_inline = parse(inline_text);
        _cleanup_wf_ struct wf_workflow *wf_ref =
            parse("{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"agent\",\"agent\":"
                  "\"gated\"}]}");
        _cleanup_json_ json_t *snap2 = new_snapshot(NULL);
        json_object_set_new(snap2, "agents", test_json(stored));
        _cleanup_json_ json_t *by_inline = plan(wf_inline, snap2), *by_ref = plan(wf_ref, snap2);
        json_t *want = json_object_get(json_object_get(json_array_get(by_inline, 0), "input"),
                                       "approve_tools");
        assert_non_null(want);
        assert_json_equal(
            json_object_get(json_object_get(json_array_get(by_ref, 0), "input"), "approve_tools"),
            want);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(linear_chain_runs_in_order_with_stable_keys),
            cmocka_unit_test(fan_out_and_fan_in),
            cmocka_unit_test(when_false_skips_and_skips_propagate),
            cmocka_unit_test(condition_branches),
            cmocka_unit_test(retries_back_off_within_bounds),
            cmocka_unit_test(own_idempotency_key_wins),
            cmocka_unit_test(secrets_render_as_placeholders_and_are_listed),
            cmocka_unit_test(at_most_once_does_not_resend_an_ambiguous_failure),
            cmocka_unit_test(failure_events_say_what_failed_and_what_next),
            cmocka_unit_test(crash_recovery_depends_on_delivery),
            cmocka_unit_test(map_respects_concurrency_and_fans_in),
            cmocka_unit_test(executes_alone_hand_out_the_wait_that_follows),
            cmocka_unit_test(map_of_ten_thousand_items_completes_fast),
            cmocka_unit_test(map_edge_cases),
            cmocka_unit_test(a_plan_cache_plans_as_without_it),
            cmocka_unit_test(loop_runs_until_its_condition),
            cmocka_unit_test(sleep_for_a_duration_and_until_a_time),
            cmocka_unit_test(wait_event_keeps_early_signals_and_times_out),
            cmocka_unit_test(subworkflow_waits_for_its_child),
            cmocka_unit_test(run_timeout_finishes_the_run),
            cmocka_unit_test(time_scale_divides_every_wait),
            cmocka_unit_test(failure_policies_continue_and_escalate),
            cmocka_unit_test(malformed_snapshots_are_rejected),
            cmocka_unit_test(a_stored_agent_is_merged_with_the_node_overrides),
            cmocka_unit_test(an_expression_that_does_not_evaluate_fails_its_node),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
