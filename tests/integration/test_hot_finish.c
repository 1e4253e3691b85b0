/*
 * A run's finish as a HOT update (0046_hot_finish.sql), the queue row's key (0047), the
 * run's keys to its workflow version and its user (0048, 0049), and what each change took
 * over, still answered:
 *   - a worker's turn that finishes a hundred runs enqueued together writes (nearly) each
 *     finished version on its own page, with no index entry (a HOT update);
 *   - the deadline sweep finds a parked run past its deadline through its queue row: the
 *     release to needs_input (or a pause) sets the queue row's deadline, a resume clears
 *     it, and the sweep fails the run;
 *   - the live gauges of /metrics read the live queue: a run whose record still carries an
 *     old lease (the holder's last write) but whose queue row was renewed is not counted as
 *     expired, and one whose queue lease lapsed is;
 *   - a claim after a burst reads the queue by its due index, not its kept pages (0061);
 *   - an install upgraded with parked runs keeps their deadlines (the sweep finds them);
 *   - run_queue's key to its run, no foreign key since 0047_queue_key.sql: a run's deletion
 *     (or its user's) and TRUNCATE take its queue row, a live run's id cannot change, and
 *     only the owner's trigger writes a queue row's run_id and user_id;
 *   - workflow_runs' key to its workflow version, no foreign key since 0048: checked by the
 *     trigger that pins the run's agents, and NO ACTION from the versions' side;
 *   - workflow_runs' key to its user, no foreign key since 0049: implied by the version's,
 *     and its cascade done by the users' triggers (this test runs last: it empties users).
 * The run list by status is test_api_routes' test_run_list_by_status.
 */
#include "testlib.h"
#include "worker_sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char WF[] = "{\"name\":\"wf\",\"nodes\":[]}";

static struct {
        char *owner;
        PGconn *c;      /* the owner */
        PGconn *worker; /* agently_worker, as the worker's writes */
        char *user;
        char *workflow;
} S;

static char *new_run(void)
{
        return test_db_value(S.c,
                             "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                             "workflow_version) VALUES ('%s', '%s', 'wf', 1) RETURNING id",
                             S.user, S.workflow);
}

/* Inserts n runs of version workflow, named name, for user, in one statement as the owner;
 * its SQLSTATE, "" when it succeeded. NO_SUCH_ID names no user and no version. */
#define NO_SUCH_ID "00000000-0000-4000-8000-0000000000ff"
static const char *insert_runs(const char *user, const char *workflow, const char *name, int n)
{
        char sql[512];

        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version) SELECT '%s', '%s', '%s', 1 FROM generate_series(1, %d)",
                 user, workflow, name, n);
        return test_db_sqlstate(S.c, sql);
}

static int setup(void **state)
{
        (void)state;
        S.owner = test_db_create("hot_finish");
        S.c = test_db_connect(S.owner);
        char *w = test_db_conninfo_as(S.owner, "agently_worker");
        S.worker = test_db_connect(w);
        free(w);
        S.user = worker_test_user(S.c, "a");
        S.workflow = worker_test_workflow(S.c, S.user, "wf", 1, WF);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        PQfinish(S.worker);
        PQfinish(S.c);
        free(S.owner);
        free(S.user);
        free(S.workflow);
        return 0;
}

/* The worker claims every due run in the transaction open on its connection. */
static long long claim_all(void)
{
        return test_db_int(S.worker,
                           "SELECT count(*) FROM agently_claim_runs('W', '30 seconds', 1000)");
}

/* agently_apply_writes of writes; the number of runs it refused. */
static long long apply(const char *writes)
{
        return test_db_int(S.worker, "SELECT count(*) FROM agently_apply_writes('W', '%s')",
                           writes);
}

/* 100 runs enqueued in one statement fill their pages together; one turn claims them and
 * finishes each (queued -> completed, as a no-op run's first turn does). Every update of
 * workflow_runs in that transaction is HOT. Before 0046 none was (the status was indexed);
 * with the indexes gone but the pages filled to 80 % about one in five, at 50 % all but the
 * last of nearly every page (0068: each left a dead pointer on its page, and a vacuum of the
 * history passed over all its indexes to free them). */
static void a_turns_finishes_are_hot_updates(void **state)
{
        (void)state;
        PQclear(test_db_must(S.c, "DELETE FROM workflow_runs"));
        assert_string_equal(insert_runs(S.user, S.workflow, "wf", 100), "");

        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim_all(), 100);
        assert_int_equal(
            test_db_int(S.worker,
                        "SELECT count(*) FROM agently_apply_writes('W', (SELECT jsonb_agg("
                        "jsonb_build_object('i', n, 'op', 'finish', 'run', run_id, 'epoch', "
                        "lease_epoch, 'status', 'completed', 'output', '{}'::jsonb)) FROM "
                        "(SELECT run_id, lease_epoch, row_number() OVER (ORDER BY run_id) AS n "
                        "FROM run_queue WHERE claimed_by = 'W') q))"),
            0);
        long long updated = test_db_int(
            S.worker, "SELECT pg_stat_get_xact_tuples_updated('workflow_runs'::regclass)");
        long long hot = test_db_int(
            S.worker, "SELECT pg_stat_get_xact_tuples_hot_updated('workflow_runs'::regclass)");
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_int_equal(updated, 100);
        /* a finished version is larger than the queued one (~253 against ~217 bytes here):
         * the room 0068 leaves holds it for every run of a page; 0 before 0046, ~22 at fill
         * factor 80, 95 at 50 */
        assert_int_equal(hot, 100);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM workflow_runs WHERE status = "
                                          "'completed'"),
                         100);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM run_queue"), 0);
}

/* The queue row's deadline, as the sweep reads it: "deadline" or "none". */
static char *deadline_of(const char *run)
{
        return test_db_value(S.c,
                             "SELECT coalesce(to_char(deadline AT TIME ZONE 'UTC', "
                             "'YYYY-MM-DD\"T\"HH24:MI:SS'), 'none') FROM run_queue WHERE run_id "
                             "= '%s'",
                             run);
}

/* A run released to needs_input with a deadline carries it in its queue row; a paused run
 * too; resumed, it has none (a worker enforces a claimable run's deadline). The sweep fails
 * the one past its deadline, and only it. */
static void the_sweep_finds_parked_runs_through_the_queue(void **state)
{
        (void)state;
        char writes[1024], sql[256];
        char *asked = new_run(), *paused = new_run();

        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim_all(), 2);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":"
                 "\"needs_input\",\"message\":\"a question\",\"deadline_ms\":946684800000},"
                 "{\"i\":2,\"op\":\"release\",\"run\":\"%s\",\"epoch\":1,\"status\":\"paused\","
                 "\"message\":\"paused\",\"deadline_ms\":4102444800000}]",
                 asked, paused);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));

        char *d = deadline_of(asked);
        assert_string_equal(d, "2000-01-01T00:00:00");
        free(d);
        d = deadline_of(paused);
        assert_string_equal(d, "2100-01-01T00:00:00");
        free(d);

        assert_int_equal(test_db_int(S.worker, "SELECT agently_fail_overdue_runs(10)"), 1);
        char *st = test_db_value(S.c,
                                 "SELECT status || ' ' || (error ->> 'class') FROM "
                                 "workflow_runs WHERE id = '%s'",
                                 asked);
        assert_string_equal(st, "failed timeout");
        free(st);
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", asked), 0);

        /* resumed: queued again, no deadline in its queue row */
        snprintf(sql, sizeof(sql), "SELECT agently_resume_run('%s', 'back', NULL)", paused);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");
        d = deadline_of(paused);
        assert_string_equal(d, "none");
        free(d);
        assert_int_equal(test_db_int(S.worker, "SELECT agently_fail_overdue_runs(10)"), 0);
        free(asked);
        free(paused);
}

static double metric(const char *name)
{
        char *v =
            test_db_value(S.c, "SELECT value FROM agently_api_metrics() WHERE name = '%s'", name);
        double d = atof(v);
        free(v);
        return d;
}

/* The lease-expired gauge reads the live lease (the queue row's, renewed there), not the
 * record's copy of it as of the holder's last write. */
static void the_gauges_read_the_live_queue(void **state)
{
        (void)state;
        char writes[512], sql[512];
        PQclear(test_db_must(S.c, "DELETE FROM workflow_runs"));
        char *run = new_run();

        assert_int_equal(metric("agently_queue_depth"), 1);
        PQclear(test_db_must(S.worker, "BEGIN"));
        assert_int_equal(claim_all(), 1);
        snprintf(writes, sizeof(writes),
                 "[{\"i\":1,\"op\":\"event\",\"run\":\"%s\",\"epoch\":1,\"kind\":\"run.started\"}]",
                 run);
        assert_int_equal(apply(writes), 0);
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_int_equal(metric("agently_queue_depth"), 0);

        /* the record's lease long past (as after a renewal-only hour), the queue's current */
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET lease_expires_at = now() - interval '1 hour' WHERE "
                 "id = '%s'",
                 run);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(metric("agently_runs_lease_expired"), 0);
        char *live = test_db_value(S.c, "SELECT value FROM agently_api_metrics() WHERE name = "
                                        "'agently_runs' AND labels = 'status=\"running\"'");
        assert_string_equal(live, "1");
        free(live);

        /* the queue's lease lapses: counted */
        snprintf(sql, sizeof(sql),
                 "UPDATE run_queue SET lease_expires_at = now() - interval '1 second' WHERE "
                 "run_id = '%s'",
                 run);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(metric("agently_runs_lease_expired"), 1);
        free(run);
}

static long long queue_rows_of(const char *run)
{
        return test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE run_id = '%s'", run);
}

/* run_queue's key to its run is no foreign key since 0047; what it guaranteed still holds.
 * Deleting a run, or its user, deletes its queue row; a live run's id or user cannot change;
 * TRUNCATE of the runs empties the queue. */
static void a_queue_row_goes_with_its_run(void **state)
{
        (void)state;
        char sql[512];
        char *gone = new_run(), *kept = new_run(), *named = new_run();

        snprintf(sql, sizeof(sql), "DELETE FROM workflow_runs WHERE id = '%s'", gone);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(queue_rows_of(gone), 0);
        assert_int_equal(queue_rows_of(kept), 1);

        char *u = worker_test_user(S.c, "gone");
        char *wf = worker_test_workflow(S.c, u, "wf", 1, WF);
        assert_string_equal(insert_runs(u, wf, "wf", 3), "");
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE user_id = '%s'", u),
                         3);
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", u);
        PQclear(test_db_must(S.c, sql));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM run_queue WHERE user_id = '%s'", u),
                         0);
        assert_int_equal(queue_rows_of(kept), 1);

        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET id = '00000000-0000-4000-8000-000000000004' WHERE id "
                 "= '%s'",
                 named);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        assert_int_equal(queue_rows_of(named), 1);

        PQclear(test_db_must(S.c, "TRUNCATE workflow_runs CASCADE"));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM run_queue"), 0);
        free(gone);
        free(kept);
        free(named);
        free(u);
        free(wf);
}

/* Only the owner's trigger writes a queue row's key: the worker may update the claim and
 * due-time columns but not run_id or user_id, and neither it nor the API may insert. */
static void only_the_trigger_writes_a_queue_rows_key(void **state)
{
        (void)state;
        char sql[512];
        char *run = new_run();
        char *a = test_db_conninfo_as(S.owner, "agently_api");
        PGconn *api = test_db_connect(a);

        snprintf(sql, sizeof(sql),
                 "UPDATE run_queue SET run_id = '00000000-0000-4000-8000-000000000005' WHERE "
                 "run_id = '%s'",
                 run);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "42501");
        snprintf(sql, sizeof(sql),
                 "UPDATE run_queue SET user_id = '00000000-0000-4000-8000-000000000005' WHERE "
                 "run_id = '%s'",
                 run);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "42501");
        snprintf(sql, sizeof(sql), "UPDATE run_queue SET priority = 5 WHERE run_id = '%s'", run);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO run_queue (run_id, user_id, run_at) VALUES "
                 "('00000000-0000-4000-8000-000000000006', '%s', now())",
                 S.user);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "42501");
        assert_string_equal(test_db_sqlstate(api, sql), "42501");
        PQfinish(api);
        free(a);
        free(run);
}

/* workflow_runs' key to its workflow version, no foreign key since 0048: a run naming no
 * version of its user, or another name than its version's, is refused; a version that runs name
 * cannot be deleted, truncated or have its key or name changed; a user's deletion takes runs and
 * versions together. */
static void a_run_names_a_workflow_version_of_its_user(void **state)
{
        (void)state;
        char sql[512];
        char *other = worker_test_user(S.c, "o");
        char *bare = worker_test_workflow(S.c, S.user, "wf", 2, WF);

        assert_string_equal(insert_runs(S.user, NO_SUCH_ID, "wf", 1), "23503");
        assert_string_equal(insert_runs(other, S.workflow, "wf", 1), "23503");
        assert_string_equal(insert_runs(S.user, S.workflow, "not-its-name", 1), "23503");
        char *run = new_run();
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET workflow_id = gen_random_uuid() "
                 "WHERE id = '%s'",
                 run);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");

        snprintf(sql, sizeof(sql), "DELETE FROM workflows WHERE id = '%s'", S.workflow);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        snprintf(sql, sizeof(sql), "UPDATE workflows SET id = gen_random_uuid() WHERE id = '%s'",
                 S.workflow);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        snprintf(sql, sizeof(sql), "UPDATE workflows SET name = 'renamed' WHERE id = '%s'",
                 S.workflow);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        assert_string_equal(test_db_sqlstate(S.c, "TRUNCATE workflows CASCADE"), "23503");
        snprintf(sql, sizeof(sql), "DELETE FROM workflows WHERE id = '%s'", bare);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");

        /* a user's deletion: runs and versions go together */
        char *wf = worker_test_workflow(S.c, other, "wf", 1, WF);
        assert_string_equal(insert_runs(other, wf, "wf", 2), "");
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", other);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");
        assert_int_equal(
            test_db_int(S.c, "SELECT count(*) FROM workflow_runs WHERE user_id = '%s'", other), 0);
        free(run);
        free(wf);
        free(bare);
        free(other);
}

/* workflow_runs' key to its user, no foreign key since 0049: a run of no user is refused (it
 * names no workflow version of that user); a user's deletion takes their runs (with their
 * queue rows and node rows) and leaves others'; a user's id cannot change under runs;
 * TRUNCATE users takes the runs along. */
static void a_run_goes_with_its_user(void **state)
{
        (void)state;
        char sql[512];
        char *u = worker_test_user(S.c, "leaving");
        char *wf = worker_test_workflow(S.c, u, "wf", 1, WF);
        char *kept = new_run();

        assert_string_equal(insert_runs(NO_SUCH_ID, wf, "wf", 1), "23503");
        assert_string_equal(insert_runs(u, wf, "wf", 3), "");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status) "
                 "SELECT user_id, id, 'n', 1, 'started' FROM workflow_runs WHERE user_id = '%s'",
                 u);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");

        snprintf(sql, sizeof(sql), "UPDATE users SET id = gen_random_uuid() WHERE id = '%s'", u);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", u);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");
        char *left = test_db_value(
            S.c,
            "SELECT (SELECT count(*) FROM workflow_runs WHERE user_id = '%s') || ' ' || (SELECT "
            "count(*) FROM run_queue WHERE user_id = '%s') || ' ' || (SELECT count(*) FROM "
            "node_runs WHERE user_id = '%s') || ' ' || (SELECT count(*) FROM workflows WHERE "
            "user_id = '%s')",
            u, u, u, u);
        assert_string_equal(left, "0 0 0 0");
        free(left);
        assert_int_equal(queue_rows_of(kept), 1);

        PQclear(test_db_must(S.c, "TRUNCATE users CASCADE"));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM workflow_runs"), 0);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM run_queue"), 0);
        free(kept);
        free(wf);
        free(u);
}

/* After a burst the queue keeps its pages (its vacuums never truncate it: 0031), and its
 * last statistics can say every unclaimed row is due (taken while the burst waited): the
 * planner then priced the due scan's index under a scan of the whole table, and every claim
 * at idle read every page (0061, docs/performance.md). The claim reads the queue by its due
 * index whatever the statistics say: one claim reads a few of the table's pages. */
static void a_claim_after_a_burst_reads_the_queue_by_its_index(void **state)
{
        (void)state;
        PQclear(test_db_must(S.c, "DELETE FROM workflow_runs"));
        assert_string_equal("", insert_runs(S.user, S.workflow, "wf", 10000));
        PQclear(test_db_must(S.c, "ANALYZE run_queue"));
        PQclear(test_db_must(S.c, "DELETE FROM workflow_runs"));
        /* an ANALYZE of the empty table keeps the burst's statistics (it has no rows to
         * make others from), as autovacuum's did in the bench */
        PQclear(test_db_must(S.c, "VACUUM ANALYZE run_queue"));
        long long pages =
            test_db_int(S.c, "SELECT relpages FROM pg_class WHERE oid = 'run_queue'::regclass");
        assert_in_range(pages, 100, 100000); /* the pages are kept, nearly empty */
        char *run = new_run();

        /* a worker that starts now (as after a restart): its plans are made with these
         * statistics, not kept from before the burst */
        char *conninfo = test_db_conninfo_as(S.owner, "agently_worker");
        PGconn *w = test_db_connect(conninfo);
        /* the backend's counts not yet reported grow inside a transaction block only by
         * its own statements: the claim's is the difference */
        PQclear(test_db_must(w, "BEGIN"));
        PQclear(test_db_must(w, "CREATE TEMP TABLE fetched ON COMMIT DROP AS SELECT "
                                "pg_stat_get_xact_blocks_fetched('run_queue'::regclass) "
                                "AS n"));
        assert_db_equal("1", w, "SELECT count(*) FROM agently_claim_runs('W', '30 seconds', 1)");
        long long blocks =
            test_db_int(w, "SELECT pg_stat_get_xact_blocks_fetched('run_queue'::regclass) - n "
                           "FROM fetched");
        if (blocks >= 20)
                fprintf(stderr, "the claim read %lld of the queue's %lld pages\n", blocks, pages);
        assert_in_range(blocks, 1, 19);
        PQclear(test_db_must(w, "ROLLBACK"));
        PQfinish(w);
        free(conninfo);
        assert_int_equal(
            test_db_int(S.c,
                        "WITH d AS (DELETE FROM workflow_runs WHERE id = '%s' RETURNING 1) "
                        "SELECT count(*) FROM d",
                        run),
            1);
        free(run);
}

/* An install upgraded to 0046 with parked runs: a needs_input run past its deadline and a
 * paused one before it get their queue rows' deadline from their records, and the sweep
 * fails the first at once. */
static void an_upgrade_carries_the_parked_runs_deadlines(void **state)
{
        (void)state;
        char *conninfo = test_db_create_empty("hot_finish_upgrade");
        PGconn *db = test_db_connect(conninfo);
        test_db_migrate_range(db, 1, 45);
        char *user = worker_test_user(db, "u");
        char *wf = worker_test_workflow(db, user, "wf", 1, WF);
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version, idempotency_key) SELECT '%s', w.id, 'wf', 1, k FROM "
                 "workflows w, unnest(ARRAY['asked', 'paused', 'queued']) k",
                 user);
        PQclear(test_db_must(db, sql));
        test_run_move(db, "idempotency_key = 'asked'", "needs_input",
                      "timeout_at = now() - interval '1 minute'");
        test_run_move(db, "idempotency_key = 'paused'", "paused",
                      "timeout_at = now() + interval '1 day'");
        test_db_migrate_range(db, 46, 46);

        char *v = test_db_value(db, "SELECT string_agg(r.idempotency_key || ':' || "
                                    "coalesce((q.deadline = r.timeout_at)::text, 'none'), ' ' "
                                    "ORDER BY r.idempotency_key) FROM workflow_runs r JOIN "
                                    "run_queue q ON q.run_id = r.id");
        assert_string_equal(v, "asked:true paused:true queued:none");
        free(v);
        assert_int_equal(test_db_int(db, "SELECT agently_fail_overdue_runs(10)"), 1);
        v = test_db_value(db, "SELECT string_agg(idempotency_key || ':' || status, ' ' ORDER BY "
                              "idempotency_key) FROM workflow_runs");
        assert_string_equal(v, "asked:failed paused:paused queued:queued");
        free(v);
        PQfinish(db);
        free(wf);
        free(user);
        free(conninfo);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(a_turns_finishes_are_hot_updates),
            cmocka_unit_test(the_sweep_finds_parked_runs_through_the_queue),
            cmocka_unit_test(the_gauges_read_the_live_queue),
            cmocka_unit_test(a_queue_row_goes_with_its_run),
            cmocka_unit_test(only_the_trigger_writes_a_queue_rows_key),
            cmocka_unit_test(a_run_names_a_workflow_version_of_its_user),
            cmocka_unit_test(a_claim_after_a_burst_reads_the_queue_by_its_index),
            cmocka_unit_test(an_upgrade_carries_the_parked_runs_deadlines),
            cmocka_unit_test(a_run_goes_with_its_user),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
