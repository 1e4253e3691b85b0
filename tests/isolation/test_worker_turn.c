/*
 * The statements of a worker's loop turn besides the claim (0030_worker_turn.sql), driven
 * by hand: the snapshot read (agently_snapshots, a function, so its plan is made once per
 * session) returns what the planner needs, fenced on the queue row's epoch, whole (the
 * run's nodes and input) or partial (for a run held in memory); a run's finishing write
 * calls the notification trigger only when its workflow version has subscriptions; the
 * claim that opens a turn returns each claimed run's whole snapshot (0033_claim_turn.sql),
 * the same the read would return, without the lookups that cannot find anything for a run
 * no turn has worked on (0051_fresh_snapshot.sql), written as JSON text by concatenation
 * (0053_snapshot_text.sql); a new run's queue row and wake-up hint come from one statement
 * trigger (0038_run_inserted.sql).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "queue.h"
#include "strutil.h"
#include "testlib.h"
#include "worker_sink.h"

struct fixture {
        char *owner_conninfo;
        PGconn *owner;
        PGconn *worker;
        char *user;
        char *workflow;
};

static struct fixture *fixture_new(const char *name)
{
        struct fixture *f = calloc(1, sizeof(*f));
        _cleanup_free_ char *worker = NULL;

        f->owner_conninfo = test_db_create(name);
        worker = test_db_conninfo_as(f->owner_conninfo, "agently_worker");
        f->owner = test_db_connect(f->owner_conninfo);
        f->worker = test_db_connect(worker);
        f->user = worker_test_user(f->owner, "alice");
        f->workflow = worker_test_workflow(f->owner, f->user, "w", 1,
                                           "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\","
                                           "\"type\":\"noop\"},{\"id\":\"b\",\"type\":\"noop\","
                                           "\"after\":[\"a\"]}]}");
        return f;
}

static void fixture_free(struct fixture *f)
{
        PQfinish(f->owner);
        PQfinish(f->worker);
        free(f->owner_conninfo);
        free(f->user);
        free(f->workflow);
        free(f);
}

/* Asserts the value at path of the snapshot agently_snapshots returns for one run, as text
 * (want NULL: the path is absent). */
static void assert_snapshot(PGconn *c, const char *run, int64_t epoch, bool whole, const char *path,
                            const char *want)
{
        char *v = test_db_value(
            c,
            "SELECT s.snapshot::jsonb #>> '%s' FROM agently_snapshots(jsonb_build_array("
            "jsonb_build_object('id', '%s', 'epoch', %lld, 'whole', %s))) s",
            path, run, (long long)epoch, whole ? "true" : "false");

        if (want)
                assert_string_equal(v, want);
        else
                assert_null(v);
        free(v);
}

/* Whole: the run's input and the latest attempt of every node; partial: neither, the rest
 * as read now; a run not held at that epoch: no row (the worker takes it as lost). */
static void test_snapshot_whole_partial_fenced(void **state)
{
        struct fixture *f = fixture_new("snap");
        char *run = worker_test_run(f->owner, f->workflow, "{\"x\": 7}");
        struct queue_claim q;
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        _cleanup_json_ json_t *out = json_pack("{s:i}", "y", 2);
        int n = 0;

        (void)state;
        nw.output = out;
        assert_int_equal(queue_claim_runs(f->worker, "A", 30000, 1, NULL, 0, &q, &n), 0);
        assert_int_equal(n, 1);
        PQclear(test_db_must(f->owner,
                             "INSERT INTO signals (user_id, workflow_run_id, name, payload) "
                             "SELECT user_id, id, 'go', '{\"k\": 1}' FROM workflow_runs"));

        /* a fresh claim: no nodes yet (left out, 0057), its input, the signal */
        assert_snapshot(f->worker, run, q.epoch, true, "{nodes}", NULL);
        assert_snapshot(f->worker, run, q.epoch, true, "{input,x}", "7");
        assert_snapshot(f->worker, run, q.epoch, true, "{signals,go,0,payload,k}", "1");

        /* a node written: the whole read has it, the partial read has neither nodes nor
         * input (the worker keeps its own) but what others may change */
        assert_int_equal(queue_checkpoint_node(f->worker, q.id, q.epoch, &nw), 1);
        assert_snapshot(f->worker, run, q.epoch, true, "{nodes,a,status}", "completed");
        assert_snapshot(f->worker, run, q.epoch, true, "{nodes,a,output,y}", "2");
        assert_snapshot(f->worker, run, q.epoch, false, "{nodes}", NULL);
        assert_snapshot(f->worker, run, q.epoch, false, "{input}", NULL);
        assert_snapshot(f->worker, run, q.epoch, false, "{signals,go,0,payload,k}", "1");

        /* fenced: another epoch is not held */
        assert_int_equal(test_db_int(f->worker,
                                     "SELECT count(*) FROM agently_snapshots(jsonb_build_array("
                                     "jsonb_build_object('id', '%s', 'epoch', %lld, 'whole', "
                                     "true)))",
                                     run, (long long)q.epoch + 1),
                         0);
        free(run);
        fixture_free(f);
}

/* Finishes run (claimed by the owner's session c) in a transaction that counts PL/pgSQL
 * calls; returns how many times agently_run_notify was called. */
static long long finish_counting_notify(PGconn *c, const char *run)
{
        struct queue_claim q;
        long long calls;
        int n = 0;

        assert_int_equal(queue_claim_runs(c, "A", 30000, 1, NULL, 0, &q, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(q.id, run);
        PQclear(test_db_must(c, "BEGIN"));
        PQclear(test_db_must(c, "SET LOCAL track_functions = 'pl'"));
        assert_int_equal(queue_finish_run(c, q.id, q.epoch, "completed", NULL, NULL), 1);
        calls = test_db_int(c, "SELECT coalesce(pg_stat_get_xact_function_calls("
                               "'agently_run_notify'::regproc), 0)");
        PQclear(test_db_must(c, "COMMIT"));
        return calls;
}

/* A run of a workflow without notifications finishes without a call of the notification
 * trigger (before 0030 each finishing run called it, and it found nothing to send); one
 * whose workflow subscribes still gets its notification. */
static void test_notify_only_with_subscriptions(void **state)
{
        struct fixture *f = fixture_new("notifies");
        char *quiet = worker_test_run(f->owner, f->workflow, NULL);
        char *wf =
            worker_test_workflow(f->owner, f->user, "n", 1,
                                 "{\"name\":\"n\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}],"
                                 "\"notifications\":[{\"on\":[\"completed\"],\"channel\":{\"kind\":"
                                 "\"webhook\",\"url\":\"http://127.0.0.1:9/hook\"}}]}");
        char *loud;

        (void)state;
        assert_db_equal("f", f->owner, "SELECT notifies FROM workflow_runs WHERE id = '%s'", quiet);
        assert_int_equal(finish_counting_notify(f->owner, quiet), 0);
        assert_db_equal("completed", f->owner, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        quiet);
        assert_int_equal(test_db_int(f->owner, "SELECT count(*) FROM notifications"), 0);

        loud = worker_test_run(f->owner, wf, NULL);
        assert_db_equal("t", f->owner, "SELECT notifies FROM workflow_runs WHERE id = '%s'", loud);
        assert_int_equal(finish_counting_notify(f->owner, loud), 1);
        assert_int_equal(
            test_db_int(f->owner,
                        "SELECT count(*) FROM notifications WHERE workflow_run_id = '%s' "
                        "AND event = 'run.completed'",
                        loud),
            1);
        free(quiet);
        free(loud);
        free(wf);
        fixture_free(f);
}

/* What agently_snapshots reads whole for the run at epoch, parsed. */
static json_t *whole_read(PGconn *c, const char *run, int64_t epoch)
{
        _cleanup_free_ char *text = test_db_value(
            c,
            "SELECT s.snapshot FROM agently_snapshots(jsonb_build_array(jsonb_build_object('id', "
            "'%s', 'epoch', %lld, 'whole', true))) s",
            run, (long long)epoch);

        assert_non_null(text);
        return test_json(text);
}

/* The claim that opens a turn (queue_begin_claim_runs: BEGIN and agently_claim_turn) returns
 * each claimed run's snapshot: what the turn's own read would return right after it, for a
 * queued run (its input, a signal, no nodes) and for one rescued from a lost worker (the
 * nodes that worker wrote). */
static void test_claim_returns_the_snapshot(void **state)
{
        struct fixture *f = fixture_new("claim_snap");
        char *run = worker_test_run(f->owner, f->workflow, "{\"x\": 7}"), *run2 = NULL;
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        struct queue_claim q[2];
        int n = 0;

        (void)state;
        PQclear(test_db_must(f->owner,
                             "INSERT INTO signals (user_id, workflow_run_id, name, payload) "
                             "SELECT user_id, id, 'go', '{\"k\": 1}' FROM workflow_runs"));
        assert_int_equal(queue_begin_claim_runs(f->worker, "A", 30000, 2, NULL, 0, q, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(q[0].status_before, "queued");
        assert_non_null(q[0].snapshot);
        {
                _cleanup_json_ json_t *read = whole_read(f->worker, run, q[0].epoch);
                assert_json_equal(q[0].snapshot, read);
        }
        assert_int_equal(
            json_integer_value(json_object_get(json_object_get(q[0].snapshot, "input"), "x")), 7);
        assert_int_equal(json_object_size(json_object_get(q[0].snapshot, "nodes")), 0);
        assert_int_equal(
            json_array_size(json_object_get(json_object_get(q[0].snapshot, "signals"), "go")), 1);
        assert_false(q[0].cancel_requested);
        queue_claims_clear(q, n);
        PQclear(test_db_must(f->worker, "COMMIT"));

        /* its holder wrote a node and was lost (its lease lapsed): the rescue reads it, in
         * the same claim as a fresh run (0058: the fresh runs' snapshots and the worked-on
         * ones' are two statements; each run gets its own) */
        assert_int_equal(queue_checkpoint_node(f->worker, run, q[0].epoch, &nw), 1);
        PQclear(test_db_must(f->owner, "UPDATE run_queue SET lease_expires_at = now() - "
                                       "interval '1 second'"));
        run2 = worker_test_run(f->owner, f->workflow, "{\"y\": 2}");
        assert_int_equal(queue_begin_claim_runs(f->worker, "B", 30000, 2, NULL, 0, q, &n), 0);
        assert_int_equal(n, 2);
        for (int i = 0; i < n; i++) {
                bool rescued = strcmp(q[i].id, run) == 0;
                _cleanup_json_ json_t *read = whole_read(f->worker, q[i].id, q[i].epoch);

                assert_json_equal(q[i].snapshot, read);
                if (!rescued) {
                        assert_string_equal(q[i].id, run2);
                        assert_string_equal(q[i].status_before, "queued");
                        assert_null(json_object_get(q[i].snapshot, "nodes"));
                        assert_int_equal(json_integer_value(json_object_get(
                                             json_object_get(q[i].snapshot, "input"), "y")),
                                         2);
                        continue;
                }
                assert_string_equal(q[i].status_before, "running");
                assert_int_equal(q[i].epoch, 2);
                assert_string_equal(
                    json_string_value(json_object_get(
                        json_object_get(json_object_get(q[i].snapshot, "nodes"), "a"), "status")),
                    "completed");
        }
        queue_claims_clear(q, n);
        PQclear(test_db_must(f->worker, "ROLLBACK"));
        free(run);
        free(run2);
        fixture_free(f);
}

/* A bare run (0062_bare_fresh_claim.sql: fresh, with nothing but its input and the clock in
 * its snapshot) is claimed with its input in place of the snapshot's text, and the worker
 * makes the document (queue.c); a fresh run with any other part — a signal waiting, an
 * engine state, a clock at another speed, pinned agents, a wake asked for — comes as text. Both
 * documents equal the turn's own read of the same run. */
static void test_bare_claim_is_the_snapshot(void **state)
{
        struct fixture *f = fixture_new("bare_claim");
        static const char *const inputs[] = {
            "{}", "{\"x\": [1, \"\\u00e9\"]}", "{}", "{}", "{}", "{}", "{}"};
        /* what each run has beyond its input (the owner's statement): the first two have
         * nothing and are bare, each of the others is not */
        static const char *const extra[] = {
            NULL, NULL,
            "INSERT INTO signals (user_id, workflow_run_id, name, payload) SELECT user_id, id, "
            "'go', '{}' FROM workflow_runs",
            "UPDATE workflow_runs SET engine_state = '{\"k\": 1}'",
            "UPDATE workflow_runs SET time_scale = 0.5",
            "UPDATE workflow_runs SET agent_versions = '{\"helper\": 1}'",
            /* woken (a signal stored and its wake: the claim's own look for the signal may
             * not see it, the next statement does) */
            "UPDATE workflow_runs SET wake_requested = true"};
        enum { N = sizeof(inputs) / sizeof(inputs[0]) };
        char *runs[N];
        struct queue_claim q[N];
        int n = 0;

        (void)state;
        for (int i = 0; i < N; i++) {
                runs[i] = worker_test_run(f->owner, f->workflow, inputs[i]);
                if (extra[i])
                        free(test_db_value(f->owner, "%s WHERE id = '%s' RETURNING id", extra[i],
                                           runs[i]));
        }
        /* which come bare: the claim's own columns (rolled back: the runs stay due) */
        PQclear(test_db_must(f->worker, "BEGIN"));
        for (int i = 0; i < N; i++) {
                char *bare = test_db_value(
                    f->worker,
                    "SELECT CASE WHEN bool_and(snapshot IS NULL AND input IS NOT NULL AND "
                    "now_ms > 0) THEN 'bare' WHEN bool_and(snapshot IS NOT NULL AND input IS "
                    "NULL AND now_ms IS NULL) THEN 'text' END FROM agently_claim_turn('A', "
                    "'30 seconds', %d) WHERE id = '%s'",
                    N, runs[i]);
                assert_string_equal(bare, i < 2 ? "bare" : "text");
                free(bare);
                PQclear(test_db_must(f->worker, "ROLLBACK"));
                PQclear(test_db_must(f->worker, "BEGIN"));
        }
        PQclear(test_db_must(f->worker, "ROLLBACK"));

        assert_int_equal(queue_begin_claim_runs(f->worker, "A", 30000, N, NULL, 0, q, &n), 0);
        assert_int_equal(n, N);
        for (int i = 0; i < n; i++) {
                _cleanup_json_ json_t *read = whole_read(f->worker, q[i].id, q[i].epoch);

                assert_non_null(q[i].snapshot);
                assert_json_equal(q[i].snapshot, read);
                assert_false(q[i].cancel_requested);
                assert_false(q[i].pause_requested);
        }
        queue_claims_clear(q, n);
        PQclear(test_db_must(f->worker, "ROLLBACK"));
        for (int i = 0; i < N; i++)
                free(runs[i]);
        fixture_free(f);
}

/* The snapshot is JSON text written by concatenation (0053_snapshot_text.sql): whatever a
 * run's documents hold — quotes, backslashes, control characters, non-ASCII text, in its
 * input, a signal's payload, a node's id and output — it parses, and to the document that
 * jsonb_build_object makes of the same columns (the form before 0053), for the claim's
 * fresh read and for a worked-on run's whole and partial reads. */
static void test_snapshot_text_is_the_document(void **state)
{
        struct fixture *f = fixture_new("snap_text");
        char *run = worker_test_run(f->owner, f->workflow,
                                    "{\"s\": \"q\\\"b\\\\n\\n\\t\\u0001 \u00e9\u6f22\", "
                                    "\"n\": [1.5, -0, null, true, 12345678901234567]}");
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        _cleanup_json_ json_t *out = json_pack("{s:s}", "o", "\"}{\\");
        struct queue_claim q[2];
        int n = 0;
        /* the old document of the same columns, less the clock's two fields and its empty
         * parts (0057: an empty object, a time scale of 1) */
        static const char SAME_SQL[] =
            "SELECT ((s.snapshot::jsonb - 'now_ms' - 'started_at_ms') = (SELECT "
            "jsonb_object_agg(d.key, d.value) FROM jsonb_each(jsonb_build_object("
            "'run_id', r.id, 'input', CASE WHEN %s THEN r.input END, 'engine_state', "
            "r.engine_state, 'time_scale', r.time_scale, 'nodes', CASE WHEN NOT %s THEN NULL "
            "ELSE (SELECT coalesce(jsonb_object_agg(n.node_id, jsonb_build_object('status', "
            "n.status, 'attempt', n.attempt, 'output', n.output, 'error', n.error, "
            "'started_at_ms', (extract(epoch FROM n.started_at) * 1000)::bigint)), '{}') FROM "
            "node_runs n WHERE n.workflow_run_id = r.id) END, 'signals', (SELECT "
            "jsonb_build_object('go', jsonb_agg(jsonb_build_object('id', g.id, 'payload', "
            "g.payload))) FROM signals g WHERE g.workflow_run_id = r.id), 'children', '{}'::jsonb, "
            "'approvals', '{}'::jsonb, 'agents', '{}'::jsonb)::text::jsonb) d WHERE d.value <> "
            "'{}' AND NOT (d.key = 'time_scale' AND d.value = '1')) "
            "AND (s.snapshot::jsonb ->> 'now_ms')::bigint > 0 "
            "AND (s.snapshot::jsonb ->> 'started_at_ms')::bigint > 0)::int "
            "FROM agently_snapshots(jsonb_build_array(jsonb_build_object('id', '%s', 'epoch', "
            "%lld, 'whole', %s))) s JOIN workflow_runs r ON r.id = s.id";

        (void)state;
        nw.output = out;
        PQclear(test_db_must(f->owner,
                             "UPDATE workflow_runs SET time_scale = 0.125, engine_state = "
                             "'{\"k\": \"\\\"\"}'"));
        PQclear(test_db_must(f->owner,
                             "INSERT INTO signals (user_id, workflow_run_id, name, payload) "
                             "SELECT user_id, id, 'go', '{\"k\": \"\\\\\\\"\\u2028\"}' "
                             "FROM workflow_runs"));
        assert_int_equal(queue_begin_claim_runs(f->worker, "A", 30000, 2, NULL, 0, q, &n), 0);
        assert_int_equal(n, 1);
        assert_non_null(q[0].snapshot); /* it parsed */
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(q[0].snapshot, "input"), "s")),
            "q\"b\\n\n\t\001 \u00e9\u6f22");
        assert_double_equal(json_real_value(json_object_get(q[0].snapshot, "time_scale")), 0.125);
        assert_int_equal(
            test_db_int(f->worker, SAME_SQL, "true", "true", run, (long long)q[0].epoch, "true"),
            1);
        queue_claims_clear(q, n);

        /* worked on: a node whose output needs escaping, read whole and partial */
        assert_int_equal(queue_checkpoint_node(f->worker, run, q[0].epoch, &nw), 1);
        assert_int_equal(
            test_db_int(f->worker, SAME_SQL, "true", "true", run, (long long)q[0].epoch, "true"),
            1);
        assert_int_equal(
            test_db_int(f->worker, SAME_SQL, "false", "false", run, (long long)q[0].epoch, "false"),
            1);
        PQclear(test_db_must(f->worker, "COMMIT"));
        free(run);
        fixture_free(f);
}

/* Index scans of the node rows, the approvals and the child runs' index in this
 * transaction: the snapshot's three lookups. */
static const char LOOKUPS_SQL[] =
    "SELECT sum(pg_stat_get_xact_numscans(indexrelid)) FROM pg_index WHERE indrelid IN "
    "('node_runs'::regclass, 'approvals'::regclass) OR indexrelid = "
    "'workflow_runs_parent_idx'::regclass";

/* A run no turn has worked on (started_at NULL, no rerun_of) is read without looking for
 * its node rows, child runs and approvals (0051_fresh_snapshot.sql): it can have none. The
 * lookups stay for a rerun, whose node results were copied before it started, and for a
 * run a turn has worked on; and a turn's first write sets started_at, the fact the
 * shortcut stands on. */
static void test_fresh_snapshot(void **state)
{
        struct fixture *f = fixture_new("fresh_snap");
        char *run = worker_test_run(f->owner, f->workflow, "{}");
        char *rerun = test_db_value(
            f->owner,
            "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, "
            "input, rerun_of) SELECT user_id, workflow_id, workflow_name, workflow_version, '{}', "
            "id FROM workflow_runs WHERE id = '%s' RETURNING id",
            run);
        struct queue_claim q[2];
        int n = 0;

        (void)state;
        /* the rerun's node result, as agently_api_copy_node_runs copies it */
        free(test_db_value(f->worker,
                           "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, "
                           "status, output, finished_at) SELECT user_id, id, 'a', 1, "
                           "'completed', '{\"y\": 3}', now() FROM workflow_runs WHERE id = "
                           "'%s' RETURNING node_id",
                           rerun));
        assert_int_equal(queue_claim_runs(f->worker, "A", 30000, 2, NULL, 0, q, &n), 0);
        assert_int_equal(n, 2);
        struct queue_claim *fresh = strcmp(q[0].id, run) == 0 ? &q[0] : &q[1];
        struct queue_claim *again = fresh == &q[0] ? &q[1] : &q[0];
        PQclear(test_db_must(f->worker, "BEGIN"));
        /* its snapshot: only what it has (0057: the empty parts left out) */
        char *keys = test_db_value(
            f->worker,
            "SELECT string_agg(k, ' ' ORDER BY k) FROM agently_snapshots(jsonb_build_array("
            "jsonb_build_object('id', '%s', 'epoch', %lld, 'whole', true))) s, "
            "jsonb_object_keys(s.snapshot::jsonb) k",
            run, (long long)fresh->epoch);
        assert_string_equal(keys, "input now_ms run_id started_at_ms");
        free(keys);
        assert_int_equal(test_db_int(f->worker, LOOKUPS_SQL), 0); /* not looked for */
        PQclear(test_db_must(f->worker, "COMMIT"));
        assert_snapshot(f->worker, rerun, again->epoch, true, "{nodes,a,output,y}", "3");

        /* a turn's first write, whatever it is, marks the run started */
        assert_int_equal(queue_append_event(f->worker, run, fresh->epoch, "step.note", NULL, 0,
                                            "info", "first", NULL),
                         1);
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM workflow_runs WHERE id = '%s' AND "
                                     "started_at IS NOT NULL",
                                     run),
                         1);
        /* what a worked-on run's turn may have made is read again */
        char *child = test_db_value(
            f->worker,
            "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, "
            "input, parent_run_id, parent_node_id, idempotency_key) SELECT user_id, workflow_id, "
            "workflow_name, workflow_version, '{}', id, 'b', 'child:' || id || ':b:1' FROM "
            "workflow_runs WHERE id = '%s' RETURNING id",
            run);
        free(test_db_value(f->owner,
                           "INSERT INTO approvals (user_id, workflow_run_id, node_id, title) "
                           "SELECT user_id, id, 'a', 'ship it?' FROM workflow_runs WHERE id = "
                           "'%s' RETURNING id",
                           run));
        PQclear(test_db_must(f->worker, "BEGIN"));
        assert_snapshot(f->worker, run, fresh->epoch, true, "{children,b,run_id}", child);
        assert_snapshot(f->worker, run, fresh->epoch, true, "{approvals,a,status}", "pending");
        assert_int_ge(test_db_int(f->worker, LOOKUPS_SQL), 1);
        PQclear(test_db_must(f->worker, "COMMIT"));
        queue_claims_clear(q, n);
        free(child);
        free(rerun);
        free(run);
        fixture_free(f);
}

/* The turn's two statements, the claim (with its BEGIN) and the writes (with its COMMIT), are
 * prepared once per session (db_query_prepared_between): the server parses and plans each
 * once, not on every turn; a session that lost them (DISCARD ALL) prepares them again after
 * one failed call. */
static const char PREPARED_SQL[] =
    "SELECT string_agg(CASE WHEN statement LIKE '%%agently_claim_turn%%' THEN 'claim' "
    "WHEN statement LIKE '%%agently_apply_write_rows%%' THEN 'writes' ELSE statement END, ' ' "
    "ORDER BY statement) FROM pg_prepared_statements WHERE NOT from_sql";

static void test_turn_statements_are_prepared_once(void **state)
{
        struct fixture *f = fixture_new("prepared");
        char *runs[3];
        struct queue_claim q[1];
        int n = 0;

        (void)state;
        for (int i = 0; i < 3; i++)
                runs[i] = worker_test_run(f->owner, f->workflow, NULL);
        for (int i = 0; i < 3; i++) {
                struct queue_writes *w = queue_writes_new();

                if (i == 2) {
                        /* the session loses its prepared statements */
                        PQclear(test_db_must(f->worker, "DISCARD ALL"));
                        assert_int_equal(
                            queue_begin_claim_runs(f->worker, "A", 30000, 1, NULL, 0, q, &n), -EIO);
                        PQclear(test_db_must(f->worker, "ROLLBACK"));
                }
                assert_int_equal(queue_begin_claim_runs(f->worker, "A", 30000, 1, NULL, 0, q, &n),
                                 0);
                assert_int_equal(n, 1);
                assert_non_null(w);
                assert_int_equal(
                    queue_writes_finish(w, q[0].id, q[0].epoch, "completed", NULL, NULL), 0);
                assert_int_equal(queue_writes_flush_commit(f->worker, "A", w, NULL, NULL), 0);
                queue_writes_free(w);
                queue_claims_clear(q, n);
                assert_db_equal("claim writes", f->worker, PREPARED_SQL);
        }
        assert_db_equal("3", f->owner,
                        "SELECT count(*) FROM workflow_runs WHERE status = 'completed'");
        for (int i = 0; i < 3; i++)
                free(runs[i]);
        fixture_free(f);
}

/* Notifications the listener's session has received (each statement it runs reads them). */
static int hints_received(PGconn *listener)
{
        PGnotify *nf;
        int n = 0;

        PQclear(test_db_must(listener, "SELECT 1"));
        while ((nf = PQnotifies(listener))) {
                if (strcmp(nf->relname, "agently_runs") == 0)
                        n++;
                PQfreemem(nf);
        }
        return n;
}

/* Inserts runs as sql (an INSERT INTO workflow_runs) in a transaction that counts calls of
 * PL/pgSQL functions (track_functions); returns the names of the trigger functions it
 * called, in name order. */
static char *insert_tracing_triggers(PGconn *c, const char *sql)
{
        char *called;

        PQclear(test_db_must(c, "BEGIN"));
        PQclear(test_db_must(c, "SET LOCAL track_functions = 'pl'"));
        PQclear(test_db_must(c, sql));
        called = test_db_value(c, "SELECT string_agg(p.proname, ' ' ORDER BY p.proname) "
                                  "FROM pg_proc p WHERE p.prorettype = 'trigger'::regtype "
                                  "AND pg_stat_get_xact_function_calls(p.oid) > 0");
        PQclear(test_db_must(c, "COMMIT"));
        assert_non_null(called);
        return called;
}

/* The trigger functions an insert of sql calls, as insert_tracing_triggers names them. */
#define assert_insert_triggers(c, sql, want)                                                       \
        do {                                                                                       \
                char *called_ = insert_tracing_triggers(c, sql);                                   \
                assert_string_equal(called_, want);                                                \
                free(called_);                                                                     \
        } while (0)

/* A new run's pins (its stored agents' versions, whether it notifies: 0052) are written by
 * the INSERT's statement trigger into the runs of versions that have any, and nothing more
 * is written for the others: an insert of three runs of a version without agents or
 * subscriptions updates no row, one of a version with subscriptions updates each run once,
 * and every run of it notifies. */
static void test_pins_written_per_statement(void **state)
{
        struct fixture *f = fixture_new("pins");
        char *wf =
            worker_test_workflow(f->owner, f->user, "n", 1,
                                 "{\"name\":\"n\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}],"
                                 "\"notifications\":[{\"on\":[\"completed\"],\"channel\":{\"kind\":"
                                 "\"webhook\",\"url\":\"http://127.0.0.1:9/hook\"}}]}");
        const char *versions[][3] = {{f->workflow, "w", "0 false"}, {wf, "n", "3 true"}};

        (void)state;
        for (size_t i = 0; i < 2; i++) {
                PQclear(test_db_must(f->owner, "BEGIN"));
                free(
                    test_db_value(f->owner,
                                  "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                                  "workflow_version, input) SELECT '%s', '%s', '%s', 1, '{}' FROM "
                                  "generate_series(1, 3) RETURNING id",
                                  f->user, versions[i][0], versions[i][1]));
                assert_db_equal(versions[i][2], f->owner,
                                "SELECT pg_stat_get_xact_tuples_updated('workflow_runs'::regclass) "
                                "|| ' ' || bool_and(notifies) FROM workflow_runs WHERE "
                                "workflow_id = '%s'",
                                versions[i][0]);
                PQclear(test_db_must(f->owner, "COMMIT"));
        }
        free(wf);
        fixture_free(f);
}

/* A new run's queue row, the wake-up hint and its pins come from one statement trigger call
 * (0038, 0052): an insert calls one trigger function, agently_run_inserted (before 0038
 * three: the queue row's and the hint's were calls of their own; before 0052 the agents'
 * pin was a row trigger's, a call per run). The queue rows and the hints are the same: a
 * queue row per run that is not final, due at run_at when queued or waiting and at
 * 'infinity' otherwise; one hint per statement that inserted a run due now, none for runs
 * due later or parked. */
#define TRIGGERS "agently_run_inserted"

static void test_enqueue_one_trigger(void **state)
{
        struct fixture *f = fixture_new("enqueue");
        PGconn *listener = test_db_connect(f->owner_conninfo);
        _cleanup_free_ char *one = NULL, *three = NULL, *later = NULL, *parked = NULL;

        (void)state;
        PQclear(test_db_must(listener, "LISTEN agently_runs"));
        one = str_printf("INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                         "workflow_version, input) VALUES ('%s', '%s', 'w', 1, '{\"n\": 1}')",
                         f->user, f->workflow);
        three = str_printf("INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                           "workflow_version, input) SELECT '%s', '%s', 'w', 1, "
                           "jsonb_build_object('n', 10 + i) FROM generate_series(1, 3) i",
                           f->user, f->workflow);
        later = str_printf("INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                           "workflow_version, input, run_at) VALUES ('%s', '%s', 'w', 1, "
                           "'{\"n\": 2}', now() + interval '1 hour')",
                           f->user, f->workflow);
        parked = str_printf("INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                            "workflow_version, input, status) VALUES ('%s', '%s', 'w', 1, "
                            "'{\"n\": 3}', 'paused'), ('%s', '%s', 'w', 1, '{\"n\": 4}', "
                            "'needs_input')",
                            f->user, f->workflow, f->user, f->workflow);
        assert_non_null(one);
        assert_non_null(three);
        assert_non_null(later);
        assert_non_null(parked);

        assert_int_equal(hints_received(listener), 0);
        assert_insert_triggers(f->owner, one, TRIGGERS);
        assert_int_equal(hints_received(listener), 1);
        assert_insert_triggers(f->owner, three, TRIGGERS);
        assert_int_equal(hints_received(listener), 1);
        assert_insert_triggers(f->owner, later, TRIGGERS);
        assert_int_equal(hints_received(listener), 0);
        assert_insert_triggers(f->owner, parked, TRIGGERS);
        assert_int_equal(hints_received(listener), 0);

        /* every run has its queue row, unclaimed at epoch 0, due as its status says */
        assert_db_equal("1 2 3 4 11 12 13", f->owner,
                        "SELECT string_agg((r.input->>'n'), ' ' ORDER BY (r.input->>'n')::int) "
                        "FROM workflow_runs r JOIN run_queue q ON q.run_id = r.id "
                        "WHERE q.user_id = r.user_id AND q.claimed_by IS NULL "
                        "AND q.lease_epoch = 0 AND q.attempt = 0 AND q.run_at = CASE WHEN "
                        "r.status IN ('queued', 'waiting') THEN r.run_at ELSE 'infinity' END "
                        "AND (r.status = 'queued') = ((r.input->>'n')::int NOT IN (3, 4))");
        assert_db_equal("3", f->owner,
                        "SELECT count(*) FROM run_queue WHERE run_at = 'infinity' OR run_at > "
                        "now() + interval '59 minutes'");
        PQfinish(listener);
        fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_snapshot_whole_partial_fenced),
            cmocka_unit_test(test_claim_returns_the_snapshot),
            cmocka_unit_test(test_fresh_snapshot),
            cmocka_unit_test(test_bare_claim_is_the_snapshot),
            cmocka_unit_test(test_snapshot_text_is_the_document),
            cmocka_unit_test(test_notify_only_with_subscriptions),
            cmocka_unit_test(test_turn_statements_are_prepared_once),
            cmocka_unit_test(test_enqueue_one_trigger),
            cmocka_unit_test(test_pins_written_per_statement),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
