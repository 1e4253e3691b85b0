/*
 * A worker's turn without two per-row costs (0045_turn_writes.sql), and what each of them
 * guarded, still guarded:
 *   - node_runs' key to its run (workflow_run_id, user_id) is checked once per INSERT
 *     statement, by one trigger call: a node row naming no run of its user is refused
 *     (SQLSTATE 23503, alone or among good rows, inserted or updated to it); deleting a run
 *     (or its user) deletes its node rows, also those a transaction in flight was writing
 *     when the deletion began; a run's key cannot change while node rows name it; TRUNCATE
 *     of the runs takes their node rows along;
 *   - agently_apply_writes reads its operations once, still finishes and releases runs as
 *     before, and still refuses the whole statement for one operation it cannot write,
 *     before anything is written;
 *   - and (0054_turn_dequeues.sql) it deletes and updates its own runs' queue rows in its
 *     statement, the queue-follow trigger left for every other change.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
        char *owner;
        PGconn *c;      /* the owner */
        PGconn *worker; /* agently_worker, as the worker's writes */
        char *user_a;
        char *user_b;
        char *workflow_a;
        char *run_a; /* a run of user_a */
} S;

/* A new run of user u of workflow wf (returns its id; caller frees). */
static char *new_run(const char *u, const char *wf)
{
        return test_db_value(S.c,
                             "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                             "workflow_version) VALUES ('%s', '%s', 'wf', 1) RETURNING id",
                             u, wf);
}

/* A pending signal "go" of run (a run of user_a; returns its id; caller frees). */
static char *new_signal(const char *run)
{
        return test_db_value(S.c,
                             "INSERT INTO signals (user_id, workflow_run_id, name) VALUES ('%s', "
                             "'%s', 'go') RETURNING id",
                             S.user_a, run);
}

static char *new_workflow(const char *u)
{
        return test_db_value(S.c,
                             "INSERT INTO workflows (user_id, name, version, definition, "
                             "definition_sha256) VALUES ('%s', 'wf', 1, "
                             "'{\"name\":\"wf\",\"nodes\":[]}', encode(sha256('w'), 'hex')) "
                             "ON CONFLICT (user_id, name, version) DO UPDATE SET name = "
                             "EXCLUDED.name RETURNING id",
                             u);
}

/* The INSERT of n node rows (n0, n1, ...) of run for user, as SQL text. */
static void nodes_sql(char *sql, size_t size, const char *run, const char *user, int n)
{
        snprintf(sql, size,
                 "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status) "
                 "SELECT '%s', '%s', 'n' || g, 1, 'started' FROM generate_series(0, %d) g",
                 user, run, n - 1);
}

static long long nodes_of(const char *run)
{
        return test_db_int(S.c, "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s'", run);
}

static int setup(void **state)
{
        (void)state;
        S.owner = test_db_create("turn_writes");
        S.c = test_db_connect(S.owner);
        char *w = test_db_conninfo_as(S.owner, "agently_worker");
        S.worker = test_db_connect(w);
        free(w);
        S.user_a = test_db_value(S.c, "INSERT INTO users (name) VALUES ('a') RETURNING id");
        S.user_b = test_db_value(S.c, "INSERT INTO users (name) VALUES ('b') RETURNING id");
        S.workflow_a = new_workflow(S.user_a);
        S.run_a = new_run(S.user_a, S.workflow_a);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        PQfinish(S.worker);
        PQfinish(S.c);
        free(S.owner);
        free(S.user_a);
        free(S.user_b);
        free(S.workflow_a);
        free(S.run_a);
        return 0;
}

/* A 7-row insert fires one trigger once. Before 0045 the key fired its check 7 times. */
static void one_trigger_call_per_node_insert(void **state)
{
        (void)state;
        char sql[1024];

        nodes_sql(sql, sizeof(sql), S.run_a, S.user_a, 7);
        char *calls = test_db_trigger_calls(S.worker, sql);
        printf("# %s\n", calls);
        assert_string_equal(calls, "node_runs_written:1");
        free(calls);
}

/* A node row that names no run of its user is refused with the key's SQLSTATE and the
 * statement writes nothing: a run that does not exist, another user's run, one such row
 * among good ones; as the worker or the owner; inserted, or updated to it. */
static void a_node_row_of_no_run_is_refused(void **state)
{
        (void)state;
        char sql[1024];
        const char *nowhere = "00000000-0000-4000-8000-000000000001";

        nodes_sql(sql, sizeof(sql), nowhere, S.user_a, 1);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        nodes_sql(sql, sizeof(sql), S.run_a, S.user_b, 1); /* the run, another user */
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status) "
                 "SELECT '%s', CASE g WHEN 1 THEN '%s'::uuid ELSE '%s' END, 'm' || g, 1, "
                 "'started' FROM generate_series(1, 3) g",
                 S.user_a, nowhere, S.run_a);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        assert_int_equal(nodes_of(S.run_a), 0);

        nodes_sql(sql, sizeof(sql), S.run_a, S.user_a, 2);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "");
        snprintf(sql, sizeof(sql),
                 "UPDATE node_runs SET workflow_run_id = '%s' WHERE workflow_run_id = '%s' "
                 "AND node_id = 'n0'",
                 nowhere, S.run_a);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        snprintf(sql, sizeof(sql),
                 "UPDATE node_runs SET user_id = '%s' WHERE workflow_run_id = '%s'", S.user_b,
                 S.run_a);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        assert_int_equal(nodes_of(S.run_a), 2);
        /* an update that leaves the key alone is not checked and passes */
        snprintf(sql, sizeof(sql),
                 "UPDATE node_runs SET status = 'completed', finished_at = now() "
                 "WHERE workflow_run_id = '%s'",
                 S.run_a);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "");
}

/* Deleting a run deletes its node rows and nobody else's; deleting a user deletes its runs'
 * node rows through the runs (the key's ON DELETE CASCADE, now the runs' trigger). */
static void deleting_a_run_deletes_its_node_rows(void **state)
{
        (void)state;
        char sql[1024];
        char *gone = new_run(S.user_a, S.workflow_a);
        char *kept = new_run(S.user_a, S.workflow_a);

        nodes_sql(sql, sizeof(sql), gone, S.user_a, 4);
        PQclear(test_db_must(S.worker, sql));
        nodes_sql(sql, sizeof(sql), kept, S.user_a, 3);
        PQclear(test_db_must(S.worker, sql));
        snprintf(sql, sizeof(sql), "DELETE FROM workflow_runs WHERE id = '%s'", gone);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(nodes_of(gone), 0);
        assert_int_equal(nodes_of(kept), 3);

        char *u = test_db_value(S.c, "INSERT INTO users (name) VALUES ('gone') RETURNING id");
        char *wf = new_workflow(u);
        char *r1 = new_run(u, wf), *r2 = new_run(u, wf);
        nodes_sql(sql, sizeof(sql), r1, u, 2);
        PQclear(test_db_must(S.worker, sql));
        nodes_sql(sql, sizeof(sql), r2, u, 5);
        PQclear(test_db_must(S.worker, sql));
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", u);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM node_runs WHERE user_id = '%s'", u),
                         0);
        assert_int_equal(nodes_of(kept), 3);
        free(gone);
        free(kept);
        free(u);
        free(wf);
        free(r1);
        free(r2);
}

/* A run deleted while a transaction writes its node rows: the deletion waits for that
 * transaction and then deletes what it wrote. A node row written while a deletion of its
 * run is in flight waits for it and is refused. No node row outlives its run. */
static void a_run_deleted_while_its_node_rows_are_written(void **state)
{
        (void)state;
        char sql[1024];
        char *run = new_run(S.user_a, S.workflow_a);
        PGconn *deleter = test_db_connect(S.owner);

        PQclear(test_db_must(S.worker, "BEGIN"));
        nodes_sql(sql, sizeof(sql), run, S.user_a, 3);
        PQclear(test_db_must(S.worker, sql));
        snprintf(sql, sizeof(sql), "DELETE FROM workflow_runs WHERE id = '%s'", run);
        test_db_send_blocked(deleter, S.c, sql); /* waits for the writer */
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_string_equal(test_db_sent_sqlstate(deleter), "");
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM workflow_runs WHERE id = '%s'", run), 0);
        assert_int_equal(nodes_of(run), 0);
        free(run);

        /* the other order: the deletion is in flight when the node rows are written */
        run = new_run(S.user_a, S.workflow_a);
        PQclear(test_db_must(deleter, "BEGIN"));
        snprintf(sql, sizeof(sql), "DELETE FROM workflow_runs WHERE id = '%s'", run);
        PQclear(test_db_must(deleter, sql));
        nodes_sql(sql, sizeof(sql), run, S.user_a, 2);
        test_db_send_blocked(S.worker, S.c, sql); /* waits for the deletion */
        PQclear(test_db_must(deleter, "COMMIT"));
        assert_string_equal(test_db_sent_sqlstate(S.worker), "23503");
        assert_int_equal(nodes_of(run), 0);
        PQfinish(deleter);
        free(run);
}

/* A run's id or user cannot change while node rows name it (the key's NO ACTION); a run
 * without node rows can change. Runs that ended, so that the queue row's key does not
 * refuse first. */
static void a_run_key_named_by_node_rows_cannot_change(void **state)
{
        (void)state;
        char sql[1024];
        char *named = new_run(S.user_a, S.workflow_a);
        char *bare = new_run(S.user_a, S.workflow_a);

        nodes_sql(sql, sizeof(sql), named, S.user_a, 2);
        PQclear(test_db_must(S.worker, sql));
        snprintf(sql, sizeof(sql),
                 "SELECT agently_cancel_run(id, 'for the test', NULL) FROM workflow_runs WHERE "
                 "id IN ('%s', '%s')",
                 named, bare);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(test_db_int(S.c,
                                     "SELECT count(*) FROM run_queue WHERE run_id IN "
                                     "('%s', '%s')",
                                     named, bare),
                         0);

        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET id = '00000000-0000-4000-8000-000000000002' "
                 "WHERE id = '%s'",
                 named);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        assert_int_equal(nodes_of(named), 2);
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET id = '00000000-0000-4000-8000-000000000003' "
                 "WHERE id = '%s'",
                 bare);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");
        free(named);
        free(bare);
}

/* The worker claims every due run (in the transaction open on its connection, if any);
 * the epoch it holds run at, or -1 when it holds no claim of it. */
static long long claim(const char *run)
{
        PQclear(test_db_must(S.worker,
                             "SELECT count(*) FROM agently_claim_runs('W', '30 seconds', 100)"));
        return test_db_int(S.worker,
                           "SELECT coalesce((SELECT lease_epoch FROM run_queue WHERE run_id = "
                           "'%s' AND claimed_by = 'W'), -1)",
                           run);
}

/* agently_apply_writes of writes; the number of runs it refused. */
static long long apply(const char *writes)
{
        return test_db_int(S.worker, "SELECT count(*) FROM agently_apply_writes('W', '%s')",
                           writes);
}

/* A child run of parent (its node "sub"), due at run_at (SQL), for user_a. */
static char *child_run(const char *parent, const char *run_at)
{
        return test_db_value(S.c,
                             "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                             "workflow_version, parent_run_id, parent_node_id, run_at) VALUES "
                             "('%s', '%s', 'wf', 1, '%s', 'sub', %s) RETURNING id",
                             S.user_a, S.workflow_a, parent, run_at);
}

/* The queue row of run as "run_at deadline claimed_by" ("-" for none). */
static char *queue_row(const char *run)
{
        return test_db_value(S.c,
                             "SELECT coalesce((SELECT concat_ws(' ', CASE WHEN run_at = "
                             "'infinity' THEN 'never' WHEN run_at <= now() THEN 'due' ELSE "
                             "to_char(run_at AT TIME ZONE 'UTC', 'YYYY') END, coalesce(to_char("
                             "deadline AT TIME ZONE 'UTC', 'YYYY'), '-'), coalesce(claimed_by, "
                             "'-')) FROM run_queue WHERE run_id = '%s'), 'gone')",
                             run);
}

static void assert_queue_row(const char *run, const char *want)
{
        char *got = queue_row(run);
        assert_string_equal(got, want);
        free(got);
}

/* The runs a turn ends or releases leave or return to the queue in the writes' own
 * statement (0054_turn_dequeues.sql): the queue-follow trigger is not called for them. It
 * still follows what the statement's own triggers do to other runs — a finished child wakes
 * its waiting parent, a failed parent cancels its queued child — and every change made
 * without the writes' flag: an operator ending a running run by hand. */
static void the_turn_keeps_its_own_queue_rows(void **state)
{
        (void)state;
        char writes[2048];
        char *parent = new_run(S.user_a, S.workflow_a);
        char *failing = new_run(S.user_a, S.workflow_a);
        char *child = child_run(parent, "now()");
        char *queued_child = child_run(failing, "'2100-01-01T00:00:00Z'"); /* not due */
        char *done = new_run(S.user_a, S.workflow_a);
        char *paused = new_run(S.user_a, S.workflow_a);
        char *waiting = new_run(S.user_a, S.workflow_a);
        char *by_hand = new_run(S.user_a, S.workflow_a);

        /* a first turn claims every due run: the parent waits for a timer far away, the
         * failing parent and the run an operator will end go on running */
        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim(parent), 1);
        assert_int_equal(claim(queued_child), -1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"waiting\","
                 "\"run_at_ms\":4102444800000},"
                 "{\"i\":2,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"run.started\"},"
                 "{\"i\":3,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"run.started\"}]",
                 parent, failing, by_hand);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_queue_row(parent, "2100 - -");

        /* the second turn (the claims of the first still held), its calls of the trigger
         * counted: the owner's session, which may count them */
        PQclear(test_db_must(S.c, "BEGIN"));
        PQclear(test_db_must(S.c, "SET LOCAL track_functions = 'pl'"));
        snprintf(writes, sizeof(writes),
                 "SELECT count(*) FROM agently_apply_writes('W', '["
                 "{\"i\":1,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"completed\"},"
                 "{\"i\":2,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"paused\","
                 "\"deadline_ms\":4133980800000},"
                 "{\"i\":3,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"waiting\","
                 "\"run_at_ms\":4102444800000},"
                 "{\"i\":4,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"completed\"},"
                 "{\"i\":5,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"failed\","
                 "\"error\":{\"message\":\"no\"}}]')",
                 done, paused, waiting, child, failing);
        assert_int_equal(test_db_int(S.c, "%s", writes), 0);
        /* two calls: the woken parent and the canceled child; none for the five runs the
         * statement wrote */
        assert_int_equal(test_db_int(S.c, "SELECT coalesce(pg_stat_get_xact_function_calls("
                                          "'agently_run_queue_follow'::regproc), 0)"),
                         2);
        char *flag = test_db_value(S.c, "SELECT current_setting('agently.turn_writes')");
        assert_string_equal(flag, "off");
        free(flag);
        PQclear(test_db_must(S.c, "COMMIT"));

        assert_queue_row(done, "gone");
        assert_queue_row(child, "gone");
        assert_queue_row(failing, "gone");
        assert_queue_row(paused, "never 2101 -");
        assert_queue_row(waiting, "2100 - -");
        assert_queue_row(parent, "due - -");    /* woken by its child's end */
        assert_queue_row(queued_child, "gone"); /* canceled by its parent's */
        char *st =
            test_db_value(S.c, "SELECT status FROM workflow_runs WHERE id = '%s'", queued_child);
        assert_string_equal(st, "canceled");
        free(st);

        /* an operator ends a running run by hand: no flag, the trigger deletes its row */
        assert_queue_row(by_hand, "due - W");
        snprintf(writes, sizeof(writes),
                 "UPDATE workflow_runs SET status = 'canceled', finished_at = now(), claimed_by "
                 "= NULL, lease_expires_at = NULL, error = '{\"m\": \"by hand\"}' WHERE id = '%s'",
                 by_hand);
        assert_string_equal(test_db_sqlstate(S.c, writes), "");
        assert_queue_row(by_hand, "gone");
        free(parent);
        free(failing);
        free(child);
        free(queued_child);
        free(done);
        free(paused);
        free(waiting);
        free(by_hand);
}

/* agently_apply_writes, its operations read once, still finishes and releases: a finish in
 * the claim's first write and one in a later turn delete the queue row, a release sets its
 * due time and drops the claim; and a cancel of a queued run deletes it too. */
static void finishes_and_releases_are_written(void **state)
{
        (void)state;
        char writes[1024];
        char *done = new_run(S.user_a, S.workflow_a);
        char *parked = new_run(S.user_a, S.workflow_a);
        char *canceled = new_run(S.user_a, S.workflow_a);

        /* claimed and finished in one statement (the claim's first write: queued ->
         * completed) */
        PQclear(test_db_must(S.worker, "BEGIN"));
        long long e1 = claim(done);
        long long e2 = claim(parked);
        assert_int_equal(e1, 1);
        assert_int_equal(e2, 1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"run.started\"},"
                 "{\"i\":2,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"completed\","
                 "\"output\":{\"ok\":true}},"
                 "{\"i\":3,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"waiting\","
                 "\"run_at_ms\":4102444800000,\"message\":\"a timer\"}]",
                 done, done, parked);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));

        char *st = test_db_value(S.c, "SELECT status FROM workflow_runs WHERE id = '%s'", done);
        assert_string_equal(st, "completed");
        free(st);
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", done), 0);
        /* the release: due at the timer, claim dropped (the trigger) */
        char *q = test_db_value(S.c,
                                "SELECT concat_ws(' ', run_at = '2100-01-01T00:00:00Z', "
                                "claimed_by IS NULL, lease_expires_at IS NULL) FROM run_queue "
                                "WHERE run_id = '%s'",
                                parked);
        assert_string_equal(q, "t t t");
        free(q);

        /* a later turn of the same claim finishes it from running */
        PQclear(test_db_must(S.worker, "BEGIN"));
        long long e3 = claim(parked);
        assert_int_equal(e3, -1); /* not due: the timer is far away */
        PQclear(test_db_must(S.worker, "ROLLBACK"));
        snprintf(writes, sizeof(writes),
                 "UPDATE workflow_runs SET run_at = now() - interval '1 second' WHERE id = '%s'",
                 parked);
        assert_string_equal(test_db_sqlstate(S.c, writes), "");
        PQclear(test_db_must(S.worker, "BEGIN"));
        e3 = claim(parked);
        assert_int_equal(e3, 2);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"event\",\"run\":\"%s\",\"epoch\":2,\"kind\":\"run.resumed\"}]",
                 parked);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));
        st = test_db_value(S.c, "SELECT status FROM workflow_runs WHERE id = '%s'", parked);
        assert_string_equal(st, "running");
        free(st);
        PQclear(test_db_must(S.worker, "BEGIN"));
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":2,\"status\":\"failed\","
                 "\"error\":{\"message\":\"no\"}}]",
                 parked);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", parked), 0);

        /* a cancel of a queued run: the trigger deletes the row */
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", canceled), 1);
        snprintf(writes, sizeof(writes), "SELECT agently_cancel_run('%s', 'no longer', NULL)",
                 canceled);
        assert_string_equal(test_db_sqlstate(S.c, writes), "");
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", canceled), 0);
        free(done);
        free(parked);
        free(canceled);
}

/* A turn's release and consume are written by statements of their own, after the one that
 * fences (0063): only for the runs that passed the fence. A run whose epoch is not the one
 * the worker holds has nothing of its written, its signal stays pending and its queue row
 * claimed as it was; the other run's signal is consumed and its queue row released. */
static void a_lost_run_has_no_release_or_consume_written(void **state)
{
        (void)state;
        char writes[2048];
        char *kept = new_run(S.user_a, S.workflow_a);
        char *lost = new_run(S.user_a, S.workflow_a);
        char *kept_signal = new_signal(kept);
        char *lost_signal = new_signal(lost);

        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim(kept), 1);
        assert_int_equal(claim(lost), 1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"consume\",\"run\":\"%s\",\"epoch\":1,\"signal\":\"%s\","
                 "\"node\":\"wait\"},"
                 "{\"i\":2,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"waiting\","
                 "\"run_at_ms\":4102444800000},"
                 "{\"i\":3,\"op\":\"consume\",\"run\":\"%s\",\"epoch\":7,\"signal\":\"%s\","
                 "\"node\":\"wait\"},"
                 "{\"i\":4,\"op\":\"release\",\"run\":\"%s\",\"epoch\":7,\"status\":\"waiting\","
                 "\"run_at_ms\":4102444800000}]",
                 kept, kept_signal, kept, lost, lost_signal, lost);
        assert_int_equal(apply(writes), 1);
        PQclear(test_db_must(S.worker, "COMMIT"));

        char *got = test_db_value(S.c,
                                  "SELECT string_agg(coalesce(consumed_by_node, 'pending'), ' ' "
                                  "ORDER BY workflow_run_id = '%s' DESC) FROM signals WHERE id "
                                  "IN ('%s', '%s')",
                                  kept, kept_signal, lost_signal);
        assert_string_equal(got, "wait pending");
        free(got);
        assert_queue_row(kept, "2100 - -");
        assert_queue_row(lost, "due - W");
        got = test_db_value(S.c, "SELECT status FROM workflow_runs WHERE id = '%s'", lost);
        assert_string_equal(got, "queued");
        free(got);
        free(kept);
        free(lost);
        free(kept_signal);
        free(lost_signal);
}

/* One operation that cannot be written refuses the whole statement, with its number, and
 * nothing of the statement is written (the operations are read once now). */
static void an_invalid_write_refuses_the_statement(void **state)
{
        (void)state;
        char writes[1024], sql[1400];
        char *run = new_run(S.user_a, S.workflow_a);
        long long events = test_db_int(S.c, "SELECT count(*) FROM logs");

        PQclear(test_db_must(S.worker, "BEGIN"));
        long long epoch = claim(run);
        assert_int_equal(epoch, 1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"run.started\"},"
                 "{\"i\":2,\"op\":\"node\",\"run\":\"%s\",\"epoch\":1,\"node\":\"a\",\"attempt\":1,"
                 "\"status\":\"completed\"},"
                 "{\"i\":3,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"running\"}]",
                 run, run, run);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM agently_apply_writes('W', '%s')", writes);
        PGresult *res = PQexec(S.worker, sql);
        assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "22023");
        printf("# %s", PQresultErrorMessage(res));
        assert_non_null(
            strstr(PQresultErrorMessage(res), "invalid write #3: op finish with status running"));
        PQclear(res);
        PQclear(test_db_must(S.worker, "ROLLBACK"));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs"), events);
        assert_int_equal(nodes_of(run), 0);
        char *st = test_db_value(S.c, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        assert_string_equal(st, "queued");
        free(st);

        /* an operation that lacks its run refuses as well (the claim above was rolled back) */
        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim(run), 1);
        res = PQexec(S.worker, "SELECT count(*) FROM agently_apply_writes('W', "
                               "'[{\"i\":1,\"op\":\"event\",\"epoch\":1,\"kind\":\"x\"}]')");
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "22023");
        assert_non_null(strstr(PQresultErrorMessage(res), "invalid write #1: op event"));
        PQclear(res);
        PQclear(test_db_must(S.worker, "ROLLBACK"));
        free(run);
}

/* Run's events as "kind kind ..." in seq order, and whether its seqs are gap-free and end
 * at its record's event_seq ("ok" or what is off). */
static char *events_in_order(const char *run)
{
        return test_db_value(S.c,
                             "SELECT string_agg(l.kind, ' ' ORDER BY l.seq) || ' | ' || CASE "
                             "WHEN max(l.seq) - min(l.seq) + 1 = count(*) AND max(l.seq) = "
                             "max(r.event_seq) THEN 'ok' ELSE format('seqs %%s..%%s of %%s, "
                             "event_seq %%s', min(l.seq), max(l.seq), count(*), "
                             "max(r.event_seq)) END FROM logs l JOIN workflow_runs r ON r.id = "
                             "l.workflow_run_id WHERE l.workflow_run_id = '%s'",
                             run);
}

/* A turn's operations of several runs, interleaved, a consume among them: each run's events
 * take its next seqs in the order of its operations, gap-free, and its record's event_seq
 * ends at the last; the consume writes no event and marks its signal. */
static void events_are_numbered_in_the_order_of_their_operations(void **state)
{
        (void)state;
        char writes[4096];
        char *a = new_run(S.user_a, S.workflow_a);
        char *b = new_run(S.user_a, S.workflow_a);
        char *signal = new_signal(a);

        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim(a), 1);
        assert_int_equal(claim(b), 1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"a.1\"},"
                 "{\"i\":2,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"b.1\"},"
                 "{\"i\":3,\"op\":\"consume\",\"run\":\"%s\",\"epoch\":1,\"signal\":\"%s\","
                 "\"node\":\"n\"},"
                 "{\"i\":4,\"op\":\"node\",\"run\":\"%s\",\"epoch\":1,\"node\":\"n\",\"attempt\":1,"
                 "\"status\":\"completed\"},"
                 "{\"i\":5,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"b.2\"},"
                 "{\"i\":6,\"op\":\"finish\",\"run\":\"%s\",\"epoch\":1,\"status\":\"completed\"},"
                 "{\"i\":7,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"b.3\"},"
                 "{\"i\":8,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"b.4\"}]",
                 a, b, a, signal, a, b, a, b, b);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));

        char *got = events_in_order(a);
        assert_string_equal(got, "a.1 node.completed run.completed | ok");
        free(got);
        got = events_in_order(b);
        assert_string_equal(got, "b.1 b.2 b.3 b.4 | ok");
        free(got);
        got = test_db_value(S.c, "SELECT consumed_by_node FROM signals WHERE id = '%s'", signal);
        assert_string_equal(got, "n");
        free(got);
        free(a);
        free(b);
        free(signal);
}

/* TRUNCATE of the runs takes their node rows along (the key's cascade demanded it). Last:
 * it empties the database. */
static void truncating_the_runs_truncates_their_node_rows(void **state)
{
        (void)state;
        char sql[1024];
        char *run = new_run(S.user_a, S.workflow_a);

        nodes_sql(sql, sizeof(sql), run, S.user_a, 2);
        PQclear(test_db_must(S.worker, sql));
        assert_int_ge(test_db_int(S.c, "SELECT count(*) FROM node_runs"), 2);
        PQclear(test_db_must(S.c, "TRUNCATE workflow_runs CASCADE"));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM node_runs"), 0);
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(one_trigger_call_per_node_insert),
            cmocka_unit_test(a_node_row_of_no_run_is_refused),
            cmocka_unit_test(deleting_a_run_deletes_its_node_rows),
            cmocka_unit_test(a_run_deleted_while_its_node_rows_are_written),
            cmocka_unit_test(a_run_key_named_by_node_rows_cannot_change),
            cmocka_unit_test(finishes_and_releases_are_written),
            cmocka_unit_test(the_turn_keeps_its_own_queue_rows),
            cmocka_unit_test(a_lost_run_has_no_release_or_consume_written),
            cmocka_unit_test(an_invalid_write_refuses_the_statement),
            cmocka_unit_test(events_are_numbered_in_the_order_of_their_operations),
            cmocka_unit_test(truncating_the_runs_truncates_their_node_rows),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
