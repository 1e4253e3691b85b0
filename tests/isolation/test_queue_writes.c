/*
 * A loop turn's writes buffer (queue_writes_*, src/queue/queue_writes.c), driven by hand
 * against the real agently_apply_writes: the values reach the rows exactly as jansson
 * would have written them (escapes, reals, nesting, absent values as NULL); the statement's
 * own words are not masked, so a secret whose value is one of them ("completed", "epoch")
 * no longer breaks the turn, while the data around it is still masked; an operation that
 * cannot be written is taken back whole; -EBUSY still guards a (run, node, attempt)
 * written twice, over a buffer of many writes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "queue.h"
#include "redact.h"
#include "strutil.h"
#include "testlib.h"
#include "worker_sink.h"

struct fixture {
        char *owner_conninfo;
        PGconn *owner;
        PGconn *worker;
        char *user;
        char *workflow;
        char *run;
        struct queue_claim q;
};

/* A run claimed by "A" on the worker's session, inside its open transaction. */
static struct fixture *fixture_new(const char *name)
{
        struct fixture *f = calloc(1, sizeof(*f));
        _cleanup_free_ char *worker = NULL;
        int n = 0;

        f->owner_conninfo = test_db_create(name);
        worker = test_db_conninfo_as(f->owner_conninfo, "agently_worker");
        f->owner = test_db_connect(f->owner_conninfo);
        f->worker = test_db_connect(worker);
        f->user = worker_test_user(f->owner, "alice");
        f->workflow = worker_test_workflow(f->owner, f->user, "w", 1,
                                           "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\","
                                           "\"type\":\"noop\"}]}");
        f->run = worker_test_run(f->owner, f->workflow, NULL);
        assert_int_equal(queue_begin_claim_runs(f->worker, "A", 30000, 1, NULL, 0, &f->q, &n), 0);
        assert_int_equal(n, 1);
        queue_claims_clear(&f->q, n);
        return f;
}

static void fixture_free(struct fixture *f)
{
        PQfinish(f->owner);
        PQfinish(f->worker);
        free(f->owner_conninfo);
        free(f->user);
        free(f->workflow);
        free(f->run);
        free(f);
}

static void no_lost(void *arg, const char *run_id)
{
        (void)arg;
        fail_msg("run %s refused by the fence", run_id);
}

/* Asserts that the jsonb the query returns equals want as jansson writes it (the text the
 * writes statement was made of before it was written directly). */
static void assert_stored(PGconn *c, const char *query, const json_t *want)
{
        _cleanup_free_ char *text = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
        _cleanup_free_ char *sql = str_printf("SELECT ((%s) = $1::jsonb)::text", query);
        const char *params[] = {text};
        PGresult *res = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);

        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        assert_string_equal(PQgetisnull(res, 0, 0) ? "null" : PQgetvalue(res, 0, 0), "true");
        PQclear(res);
}

static void test_values_stored_as_given(void **state)
{
        struct fixture *f = fixture_new("values");
        struct queue_writes *w = queue_writes_new();
        /* every escape jansson writes, characters of 2, 3 and 4 bytes, a DEL, reals,
         * the integer limits, empty and nested containers, keys that need escaping */
        _cleanup_json_ json_t *v = test_json(
            "{\"s\": \"q\\\" b\\\\ /s \\n\\t\\r\\b\\f \\u0001\\u001f \\u007f \\u00e9 \\u65e5 "
            "\\ud83d\\ude00 \\u2028\", \"k\\\"\\n\\u00e9\": [0.1, -2.5, 15000000000.0, 1e-07, "
            "9223372036854775807, -9223372036854775808, 0, -1], \"e\": {}, \"a\": [], \"n\": "
            "[true, false, null, {\"x\": [[{}]]}]}");
        _cleanup_json_ json_t *input = test_json("{\"url\": \"http://x/\\u00e9?a=1&b=\\\"2\\\"\"}");
        _cleanup_json_ json_t *data = test_json("{\"d\": \"line1\\nline2\"}");
        _cleanup_free_ char *msg = NULL;
        struct queue_node_write started = {.node_id = "a",
                                           .attempt = 1,
                                           .status = "started",
                                           .input = input,
                                           .idempotency_key = "k:\"a\"\n",
                                           .worker = "A"};
        struct queue_node_write done = {.node_id = "b\xc3\xa9",
                                        .attempt = 2,
                                        .status = "completed",
                                        .output = v,
                                        .error = v,
                                        .event_data = data,
                                        .worker = "A"};

        (void)state;
        assert_non_null(w);
        assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &started), 0);
        assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &done), 0);
        assert_int_equal(queue_writes_event(w, f->q.id, f->q.epoch, "x.test", "a", 1, "warn",
                                            "tab\there \"q\" \xe6\x97\xa5 \\", v),
                         0);
        assert_int_equal(queue_writes_count(w), 3);
        assert_int_equal(queue_writes_flush_commit(f->worker, "A", w, no_lost, NULL), 0);
        assert_int_equal(queue_writes_count(w), 0);

        /* the START: its input and key as given, the absent values NULL */
        assert_stored(f->owner, "SELECT input FROM node_runs WHERE node_id = 'a'", input);
        assert_db_equal("k:\"a\"\n", f->owner,
                        "SELECT idempotency_key FROM node_runs WHERE node_id = 'a'");
        assert_db_equal("started 1 true true", f->owner,
                        "SELECT status || ' ' || attempt || ' ' || (output IS NULL) || ' ' || "
                        "(error IS NULL) FROM node_runs WHERE node_id = 'a'");
        /* the result: output and error equal to jansson's own text of the value */
        assert_stored(f->owner, "SELECT output FROM node_runs WHERE node_id = 'b\xc3\xa9'", v);
        assert_stored(f->owner, "SELECT error FROM node_runs WHERE node_id = 'b\xc3\xa9'", v);
        assert_db_equal("completed 2", f->owner,
                        "SELECT status || ' ' || attempt FROM node_runs WHERE node_id = "
                        "'b\xc3\xa9'");
        assert_stored(f->owner,
                      "SELECT data FROM logs WHERE kind = 'node.completed' AND node_id = "
                      "'b\xc3\xa9'",
                      data);
        /* the event: kind, level, message and data */
        msg = test_db_value(f->owner, "SELECT message FROM logs WHERE kind = 'x.test'");
        assert_string_equal(msg, "tab\there \"q\" \xe6\x97\xa5 \\");
        assert_db_equal("warn a 1", f->owner,
                        "SELECT level || ' ' || node_id || ' ' || attempt FROM logs "
                        "WHERE kind = 'x.test'");
        assert_stored(f->owner, "SELECT data FROM logs WHERE kind = 'x.test'", v);
        queue_writes_free(w);
        fixture_free(f);
}

/* Borrowed by the redaction registry until unregistered: static. */
static const char WORD_STATUS[] = "completed";
static const char WORD_KEY[] = "epoch";

static void test_secret_that_is_a_word_of_the_statement(void **state)
{
        struct fixture *f = fixture_new("words");
        struct queue_writes *w = queue_writes_new();
        _cleanup_json_ json_t *out = test_json("{\"text\": \"the epoch was completed\"}");
        struct queue_node_write done = {.node_id = "a",
                                        .attempt = 1,
                                        .status = "completed",
                                        .output = out,
                                        .event_message = "completed at this epoch",
                                        .worker = "A"};

        (void)state;
        assert_int_equal(redact_register("done", WORD_STATUS, strlen(WORD_STATUS)), 1);
        assert_int_equal(redact_register("era", WORD_KEY, strlen(WORD_KEY)), 1);
        assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &done), 0);
        assert_int_equal(queue_writes_finish(w, f->q.id, f->q.epoch, "completed", out, NULL), 0);
        /* before, the op's key "epoch" and the status "completed" were masked too, and the
         * statement refused the writes */
        assert_int_equal(queue_writes_flush_commit(f->worker, "A", w, no_lost, NULL), 0);
        redact_unregister(WORD_STATUS);
        redact_unregister(WORD_KEY);

        assert_db_equal("completed", f->owner, "SELECT status FROM workflow_runs");
        assert_db_equal("completed the [secret:era] was [secret:done]", f->owner,
                        "SELECT status || ' ' || (output->>'text') FROM node_runs");
        assert_db_equal("[secret:done] at this [secret:era]", f->owner,
                        "SELECT message FROM logs WHERE kind = 'node.completed'");
        assert_db_equal("the [secret:era] was [secret:done]", f->owner,
                        "SELECT output->>'text' FROM workflow_runs");
        queue_writes_free(w);
        fixture_free(f);
}

static void test_a_write_that_fails_is_taken_back(void **state)
{
        struct fixture *f = fixture_new("takeback");
        struct queue_writes *w = queue_writes_new();
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        _cleanup_json_ json_t *bad = json_stringn_nocheck("x\xff", 2);

        (void)state;
        assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &nw), 0);
        /* bytes that are not UTF-8, in a message or inside a value: refused, and nothing of
         * the operation stays in the buffer */
        assert_int_equal(queue_writes_event(w, f->q.id, f->q.epoch, "x.bad", "a", 1, "info",
                                            "not utf-8 \xc3(", NULL),
                         -EILSEQ);
        assert_int_equal(queue_writes_finish(w, f->q.id, f->q.epoch, "failed", NULL, bad), -EILSEQ);
        assert_int_equal(queue_writes_count(w), 1);
        /* the same (run, node, attempt) twice in one statement */
        assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &nw), -EBUSY);
        assert_int_equal(queue_writes_count(w), 1);
        assert_int_equal(
            queue_writes_event(w, f->q.id, f->q.epoch, "x.good", "a", 1, "info", "fine", NULL), 0);
        assert_int_equal(queue_writes_flush_commit(f->worker, "A", w, no_lost, NULL), 0);
        assert_db_equal("node.completed x.good", f->owner,
                        "SELECT string_agg(kind, ' ' ORDER BY seq) FROM logs "
                        "WHERE kind LIKE 'node.%%' OR kind LIKE 'x.%%'");
        assert_db_equal("running", f->owner, "SELECT status FROM workflow_runs");
        queue_writes_free(w);
        fixture_free(f);
}

/* Many writes in one buffer (the set of written nodes grows): each (run, node, attempt)
 * is refused a second time until the flush, and taken again after it. */
static void test_many_writes_one_statement(void **state)
{
        struct fixture *f = fixture_new("many");
        struct queue_writes *w = queue_writes_new();
        enum { N = 3000 };
        char node[32];

        (void)state;
        for (int i = 0; i < N; i++) {
                struct queue_node_write nw = {
                    .node_id = node, .attempt = 1 + i % 3, .status = "started", .worker = "A"};
                snprintf(node, sizeof(node), "item-%d", i);
                assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &nw), 0);
        }
        for (int i = 0; i < N; i += 7) {
                struct queue_node_write nw = {
                    .node_id = node, .attempt = 1 + i % 3, .status = "completed", .worker = "A"};
                snprintf(node, sizeof(node), "item-%d", i);
                assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &nw), -EBUSY);
        }
        assert_int_equal(queue_writes_count(w), N);
        assert_int_equal(queue_writes_flush(f->worker, "A", w, no_lost, NULL), 0);
        for (int i = 0; i < N; i += 7) {
                struct queue_node_write nw = {
                    .node_id = node, .attempt = 1 + i % 3, .status = "completed", .worker = "A"};
                snprintf(node, sizeof(node), "item-%d", i);
                assert_int_equal(queue_writes_node(w, f->q.id, f->q.epoch, &nw), 0);
        }
        assert_int_equal(queue_writes_flush_commit(f->worker, "A", w, no_lost, NULL), 0);
        assert_db_equal("3000 429", f->owner,
                        "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'completed') "
                        "FROM node_runs");
        assert_db_equal("0", f->owner,
                        "SELECT count(*) FROM node_runs WHERE attempt <> 1 + "
                        "substr(node_id, 6)::int %% 3");
        queue_writes_free(w);
        fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_values_stored_as_given),
            cmocka_unit_test(test_secret_that_is_a_word_of_the_statement),
            cmocka_unit_test(test_a_write_that_fails_is_taken_back),
            cmocka_unit_test(test_many_writes_one_statement),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
