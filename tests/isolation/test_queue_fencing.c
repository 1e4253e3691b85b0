/*
 * The queue's concurrency invariants, driven by hand with several libpq sessions against
 * the real functions of migrations/0011_run_queue.sql (through src/queue; the lease lives in
 * run_queue, the run's record in workflow_runs): the rescuer race (a
 * run that completes between a reclaimer's read and its write is never reverted or re-run),
 * fencing (a worker whose lease was taken over gets every write refused), exactly one owner
 * under concurrent batched claimers, absolute, idempotent renewal, and a vacuum that never
 * takes the queue's exclusive lock.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "queue.h"
#include "testlib.h"
#include "worker_sink.h"

struct fixture {
        char *owner_conninfo;
        char *worker_conninfo;
        PGconn *owner;
        char *user;
        char *workflow;
};

static struct fixture *fixture_new(const char *name)
{
        struct fixture *f = calloc(1, sizeof(*f));

        f->owner_conninfo = test_db_create(name);
        f->worker_conninfo = test_db_conninfo_as(f->owner_conninfo, "agently_worker");
        f->owner = test_db_connect(f->owner_conninfo);
        f->user = worker_test_user(f->owner, "alice");
        f->workflow = worker_test_workflow(f->owner, f->user, "w", 1,
                                           "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\","
                                           "\"type\":\"noop\"}]}");
        return f;
}

static void fixture_free(struct fixture *f)
{
        PQfinish(f->owner);
        free(f->owner_conninfo);
        free(f->worker_conninfo);
        free(f->user);
        free(f->workflow);
        free(f);
}

static int claim_one(PGconn *c, const char *worker, int64_t lease_ms, struct queue_claim *out)
{
        int n = 0;
        assert_int_equal(queue_claim_runs(c, worker, lease_ms, 1, NULL, 0, out, &n), 0);
        return n;
}

/* A completes the run inside a transaction it holds open; B, reading the run as an expired
 * lease, tries to rescue it; A commits. B must never own, revert or re-run it. */
static void test_rescuer_race_completion_wins(void **state)
{
        struct fixture *f = fixture_new("rescuer");
        char *run = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        PGconn *b = test_db_connect(f->worker_conninfo);
        PGconn *rr = test_db_connect(f->worker_conninfo);
        struct queue_claim qa, qb;
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        _cleanup_json_ json_t *out = json_pack("{s:i}", "answer", 42);
        PGresult *res;
        int n = 0;

        assert_int_equal(claim_one(a, "A", 300, &qa), 1);
        assert_int_equal(qa.epoch, 1);
        usleep(500 * 1000); /* A's lease has expired: the run looks abandoned */

        /* a repeatable-read reclaimer takes its snapshot now, while the run looks abandoned */
        PQclear(test_db_must(rr, "BEGIN ISOLATION LEVEL REPEATABLE READ"));
        assert_int_equal(test_db_int(rr, "SELECT count(*) FROM run_queue WHERE claimed_by IS "
                                         "NOT NULL AND lease_expires_at < now()"),
                         1);

        /* A completes, transaction still open (row locked, not yet visible) */
        PQclear(test_db_must(a, "BEGIN"));
        assert_int_equal(queue_checkpoint_node(a, qa.id, qa.epoch, &nw), 1);
        assert_int_equal(queue_finish_run(a, qa.id, qa.epoch, "completed", out, NULL), 1);

        /* B reads the run as abandoned and claims: SKIP LOCKED passes it by */
        PQclear(test_db_must(b, "BEGIN"));
        assert_int_equal(test_db_int(b, "SELECT count(*) FROM run_queue WHERE claimed_by IS "
                                        "NOT NULL AND lease_expires_at < now()"),
                         1);
        assert_int_equal(queue_claim_runs(b, "B", 30000, 10, NULL, 0, &qb, &n), 0);
        assert_int_equal(n, 0);

        PQclear(test_db_must(a, "COMMIT"));

        /* after the commit, B (read committed) still gets nothing: the run is completed */
        assert_int_equal(queue_claim_runs(b, "B", 30000, 10, NULL, 0, &qb, &n), 0);
        assert_int_equal(n, 0);
        PQclear(test_db_must(b, "COMMIT"));

        /* the repeatable-read reclaimer, whose snapshot predates the completion, is refused
         * (serialization failure) or finds nothing: never a revert */
        res = PQexec(rr, "SELECT * FROM agently_claim_runs('RR', '30 seconds', 10)");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
                assert_int_equal(PQntuples(res), 0);
        else
                assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "40001");
        PQclear(res);
        PQclear(PQexec(rr, "ROLLBACK"));

        /* the run is exactly as A left it */
        assert_db_equal("completed 1 1 {\"answer\": 42} true", f->owner,
                        "SELECT status || ' ' || lease_epoch || ' ' "
                        "|| attempt || ' ' || output::text || ' ' || "
                        "(claimed_by IS NULL)::text FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s'",
                                     run),
                         1);
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' "
                                     "AND kind = 'run.completed'",
                                     run),
                         1);
        /* and nobody can claim it later */
        assert_int_equal(queue_claim_runs(b, "B", 30000, 10, NULL, 0, &qb, &n), 0);
        assert_int_equal(n, 0);

        PQfinish(a);
        PQfinish(b);
        PQfinish(rr);
        free(run);
        fixture_free(f);
}

/* The other order: B rescued the run first. Every write of A, the old owner, is refused;
 * B's writes go through; nothing A tried is visible. */
static void test_zombie_writes_are_refused(void **state)
{
        struct fixture *f = fixture_new("zombie_sql");
        char *run = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        PGconn *b = test_db_connect(f->worker_conninfo);
        struct queue_claim qa, qb;
        struct queue_lease lease;
        struct queue_renewal renewed[1];
        struct queue_node_write nw = {
            .node_id = "a", .attempt = 1, .status = "completed", .worker = "A"};
        int n = 0;

        assert_int_equal(claim_one(a, "A", 300, &qa), 1);
        usleep(500 * 1000);
        assert_int_equal(claim_one(b, "B", 30000, &qb), 1);
        assert_string_equal(qb.status_before, "running");
        assert_int_equal(qb.epoch, 2);

        lease.run_id = qa.id;
        lease.epoch = qa.epoch;
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 30000, renewed, &n), 0);
        assert_int_equal(n, 0); /* lost */
        assert_int_equal(queue_checkpoint_node(a, qa.id, qa.epoch, &nw), 0);
        assert_int_equal(
            queue_append_event(a, qa.id, qa.epoch, "node.started", "a", 1, "info", NULL, NULL), 0);
        assert_int_equal(queue_release_run(a, qa.id, qa.epoch, "waiting", -1, "x"), 0);
        assert_int_equal(queue_finish_run(a, qa.id, qa.epoch, "failed", NULL, NULL), 0);

        nw.worker = "B";
        assert_int_equal(queue_checkpoint_node(b, qb.id, qb.epoch, &nw), 1);
        assert_int_equal(queue_finish_run(b, qb.id, qb.epoch, "completed", NULL, NULL), 1);

        assert_db_equal("completed", f->owner, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' "
                                     "AND (worker = 'A' OR lease_epoch = 1)",
                                     run),
                         0);
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' "
                                     "AND kind IN ('node.started', 'run.waiting', 'run.failed')",
                                     run),
                         0);
        PQfinish(a);
        PQfinish(b);
        free(run);
        fixture_free(f);
}

#define CLAIMERS 4
#define RUNS     300

struct claimer {
        const char *conninfo;
        char name[16];
        char (*ids)[QUEUE_UUID_LEN + 1];
        int n;
};

static void *claimer_main(void *arg)
{
        struct claimer *cl = arg;
        PGconn *c = PQconnectdb(cl->conninfo);
        struct queue_claim batch[7];
        int empty = 0;

        while (empty < 5) {
                int n = 0;
                if (queue_claim_runs(c, cl->name, 30000, 7, NULL, 0, batch, &n) < 0)
                        break;
                if (n == 0) {
                        empty++;
                        usleep(20 * 1000);
                        continue;
                }
                for (int i = 0; i < n; i++)
                        memcpy(cl->ids[cl->n++], batch[i].id, sizeof(batch[i].id));
        }
        PQfinish(c);
        return NULL;
}

/* Four sessions claim 300 due runs in batches at the same time: every run is claimed
 * exactly once (one owner), none is skipped. */
static void test_concurrent_claimers_one_owner(void **state)
{
        struct fixture *f = fixture_new("claimers");
        struct claimer cl[CLAIMERS];
        pthread_t th[CLAIMERS];
        char sql[512];
        int total = 0;

        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version) SELECT user_id, id, name, version FROM workflows, "
                 "generate_series(1, %d) WHERE id = '%s'",
                 RUNS, f->workflow);
        PQclear(test_db_must(f->owner, sql));
        for (int i = 0; i < CLAIMERS; i++) {
                cl[i].conninfo = f->worker_conninfo;
                snprintf(cl[i].name, sizeof(cl[i].name), "c%d", i);
                cl[i].ids = calloc(RUNS, sizeof(*cl[i].ids));
                cl[i].n = 0;
                pthread_create(&th[i], NULL, claimer_main, &cl[i]);
        }
        for (int i = 0; i < CLAIMERS; i++) {
                pthread_join(th[i], NULL);
                total += cl[i].n;
        }
        assert_int_equal(total, RUNS);
        /* no run in two claimers' hands */
        for (int i = 0; i < CLAIMERS; i++)
                for (int k = 0; k < cl[i].n; k++)
                        for (int j = i + 1; j < CLAIMERS; j++)
                                for (int m = 0; m < cl[j].n; m++)
                                        assert_string_not_equal(cl[i].ids[k], cl[j].ids[m]);
        assert_int_equal(test_db_int(f->owner, "SELECT count(*) FROM run_queue WHERE "
                                               "claimed_by IS NOT NULL AND lease_epoch = 1 AND "
                                               "attempt = 1"),
                         RUNS);
        for (int i = 0; i < CLAIMERS; i++)
                free(cl[i].ids);
        fixture_free(f);
}

/* Milliseconds until the run's lease expires, on the database clock (negative: expired). */
static long long lease_left_ms(struct fixture *f, const char *run)
{
        return test_db_int(f->owner,
                           "SELECT (extract(epoch FROM lease_expires_at - clock_timestamp()) * "
                           "1000)::bigint FROM run_queue WHERE run_id = '%s'",
                           run);
}

/* Renewal is absolute and idempotent; a beat that comes after the lease really expired
 * (database time), before anyone took the run, still renews (the epoch never moved, so
 * nobody else wrote); once another worker has taken the run, the same beat is refused. */
static void test_renewal_absolute(void **state)
{
        struct fixture *f = fixture_new("renew");
        char *run = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        PGconn *b = test_db_connect(f->worker_conninfo);
        struct queue_claim qa, qb;
        struct queue_lease lease;
        struct queue_renewal renewed[1];
        long long left;
        int n = 0;

        (void)state;
        assert_int_equal(claim_one(a, "A", 10000, &qa), 1);
        lease.run_id = qa.id;
        lease.epoch = qa.epoch;
        /* absolute: three beats leave now() + 10 s, not 30 s */
        for (int i = 0; i < 3; i++) {
                assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 10000, renewed, &n), 0);
                assert_int_equal(n, 1);
        }
        left = lease_left_ms(f, run);
        assert_int_ge(left, 9000);
        assert_int_le(left, 10000);
        /* renewing with another worker name does not steal it */
        assert_int_equal(queue_renew_leases(a, "B", &lease, 1, 10000, renewed, &n), 0);
        assert_int_equal(n, 0);
        /* cancel/pause requests ride on the renewal */
        PQclear(test_db_must(f->owner, "UPDATE workflow_runs SET cancel_requested = true"));
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 10000, renewed, &n), 0);
        assert_int_equal(n, 1);
        assert_true(renewed[0].cancel_requested);
        assert_false(renewed[0].pause_requested);
        PQclear(test_db_must(f->owner, "UPDATE workflow_runs SET cancel_requested = false"));

        /* a short beat, then no beat until the lease has expired on the database clock */
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 200, renewed, &n), 0);
        assert_int_equal(n, 1);
        for (int64_t t0 = test_now_ms(); lease_left_ms(f, run) >= 0;) {
                assert_int_lt(test_now_ms() - t0, 5000);
                usleep(50 * 1000);
        }
        usleep(100 * 1000);
        assert_int_lt(lease_left_ms(f, run), 0);
        /* expired and untaken: the run looks abandoned to a rescuer ... */
        assert_int_equal(test_db_int(f->owner,
                                     "SELECT count(*) FROM run_queue WHERE run_id = '%s' AND "
                                     "claimed_by IS NOT NULL AND lease_expires_at < now()",
                                     run),
                         1);
        /* ... but the owner's late beat renews it, under the same epoch */
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 10000, renewed, &n), 0);
        assert_int_equal(n, 1);
        left = lease_left_ms(f, run);
        assert_int_ge(left, 9000);
        assert_int_le(left, 10000);
        assert_int_equal(
            test_db_int(f->owner, "SELECT lease_epoch FROM run_queue WHERE run_id = '%s'", run),
            qa.epoch);

        /* expired again and taken by B: now A's beat is refused, and B's lease stands */
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 200, renewed, &n), 0);
        assert_int_equal(n, 1);
        for (int64_t t0 = test_now_ms(); lease_left_ms(f, run) >= 0;) {
                assert_int_lt(test_now_ms() - t0, 5000);
                usleep(50 * 1000);
        }
        assert_int_equal(claim_one(b, "B", 10000, &qb), 1);
        assert_string_equal(qb.id, qa.id);
        assert_int_gt(qb.epoch, qa.epoch);
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 10000, renewed, &n), 0);
        assert_int_equal(n, 0);
        assert_db_equal("B", f->owner, "SELECT claimed_by FROM run_queue WHERE run_id = '%s'", run);
        PQfinish(a);
        PQfinish(b);
        free(run);
        fixture_free(f);
}

/* The run's xmin (the transaction that wrote its newest version) and its queue row. */
static char *record_xmin(struct fixture *f, const char *run)
{
        return test_db_value(f->owner, "SELECT xmin::text FROM workflow_runs WHERE id = '%s'", run);
}

/* Claims and renewals write only the narrow queue row (0011): the run's record keeps its
 * version until the worker's first write, which records the claim and — for a run done in
 * its first turn — its end, in one new version; the queue row goes with the finish. */
static void test_claim_and_renewal_touch_only_the_queue(void **state)
{
        struct fixture *f = fixture_new("narrow");
        char *run = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        struct queue_claim qa;
        struct queue_lease lease;
        struct queue_renewal renewed[1];
        char *x0 = record_xmin(f, run), *x1, *x2, *x3;
        int n = 0;

        (void)state;
        assert_int_equal(claim_one(a, "A", 30000, &qa), 1);
        lease.run_id = qa.id;
        lease.epoch = qa.epoch;
        assert_int_equal(queue_renew_leases(a, "A", &lease, 1, 30000, renewed, &n), 0);
        assert_int_equal(n, 1);
        x1 = record_xmin(f, run);
        assert_string_equal(x1, x0);
        assert_db_equal("queued 0 1 A", f->owner,
                        "SELECT r.status || ' ' || r.lease_epoch || ' ' || q.lease_epoch || ' ' "
                        "|| q.claimed_by FROM workflow_runs r JOIN run_queue q ON q.run_id = r.id "
                        "WHERE r.id = '%s'",
                        run);

        /* the first write records the claim and the end at once: queued -> completed */
        PQclear(test_db_must(a, "BEGIN"));
        assert_int_equal(
            queue_append_event(a, qa.id, qa.epoch, "run.started", NULL, -1, "info", NULL, NULL), 1);
        assert_int_equal(queue_finish_run(a, qa.id, qa.epoch, "completed", NULL, NULL), 1);
        x2 = test_db_value(a, "SELECT txid_current()::text");
        PQclear(test_db_must(a, "COMMIT"));
        x3 = record_xmin(f, run);
        assert_string_equal(x3, x2);
        assert_db_equal("completed 1 1 true 0", f->owner,
                        "SELECT status || ' ' || lease_epoch || ' ' || attempt || ' ' || "
                        "(started_at IS NOT NULL AND claimed_by IS NULL)::text || ' ' || "
                        "(SELECT count(*) FROM run_queue) FROM workflow_runs WHERE id = '%s'",
                        run);
        /* what 0009 refuses stays refused for anyone who does not record a new claim */
        PQclear(test_db_must(f->owner, "INSERT INTO workflow_runs (user_id, workflow_id, "
                                       "workflow_name, workflow_version) SELECT user_id, id, "
                                       "name, version FROM workflows"));
        PGresult *res = PQexec(f->owner, "UPDATE workflow_runs SET status = 'completed', "
                                         "finished_at = now() WHERE status = 'queued'");
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "55000");
        PQclear(res);
        PQfinish(a);
        free(x0);
        free(x1);
        free(x2);
        free(x3);
        free(run);
        fixture_free(f);
}

/* A rescue of a run its lost holder had written records the new holder on the record at
 * once (the one claim that writes it), so a fence on the record (the agent journal's)
 * refuses the lost holder before the new one has written anything. */
static void test_rescue_records_the_new_holder(void **state)
{
        struct fixture *f = fixture_new("rescue_record");
        char *run = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        PGconn *b = test_db_connect(f->worker_conninfo);
        struct queue_claim qa, qb;

        (void)state;
        assert_int_equal(claim_one(a, "A", 300, &qa), 1);
        assert_int_equal(
            queue_append_event(a, qa.id, qa.epoch, "run.started", NULL, -1, "info", NULL, NULL), 1);
        assert_db_equal("running 1 A", f->owner,
                        "SELECT status || ' ' || lease_epoch || ' ' || claimed_by FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        usleep(500 * 1000);
        assert_int_equal(claim_one(b, "B", 30000, &qb), 1);
        assert_string_equal(qb.status_before, "running");
        assert_db_equal("running 2 B", f->owner,
                        "SELECT status || ' ' || lease_epoch || ' ' || claimed_by FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(
            queue_append_event(a, qa.id, qa.epoch, "node.started", "a", 1, "info", NULL, NULL), 0);
        assert_int_equal(queue_finish_run(b, qb.id, qb.epoch, "completed", NULL, NULL), 1);
        assert_db_equal("completed 2", f->owner,
                        "SELECT status || ' ' || lease_epoch FROM workflow_runs WHERE id = '%s'",
                        run);
        PQfinish(a);
        PQfinish(b);
        free(run);
        fixture_free(f);
}

/* A claim that opens a worker's turn (queue_begin_claim_runs, 0028): it takes the runs'
 * records as well as their queue rows, waiting for neither (a record somebody holds locked
 * is left for a later claim), and it is durable only with the transaction's commit: rolled
 * back, the run is due again at once. */
static void test_claim_in_a_transaction(void **state)
{
        struct fixture *f = fixture_new("claim_txn");
        char *x = worker_test_run(f->owner, f->workflow, NULL);
        char *y = worker_test_run(f->owner, f->workflow, NULL);
        PGconn *a = test_db_connect(f->worker_conninfo);
        PGconn *b = test_db_connect(f->worker_conninfo);
        PGconn *l = test_db_connect(f->owner_conninfo);
        struct queue_claim out[4];
        int n = 0;

        (void)state;
        /* a claim that waited for the locked record would fail here, not hang */
        PQclear(test_db_must(a, "SET statement_timeout = '5s'"));
        PQclear(test_db_must(l, "BEGIN"));
        assert_int_equal(
            test_db_int(l,
                        "SELECT count(*) FROM (SELECT 1 FROM workflow_runs WHERE id = '%s' "
                        "FOR UPDATE) x",
                        x),
            1);

        assert_int_equal(queue_begin_claim_runs(a, "A", 30000, 4, NULL, 0, out, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].id, y);
        queue_claims_clear(out, n);
        assert_int_equal(PQtransactionStatus(a), PQTRANS_INTRANS);
        /* not committed: invisible, and its rows stay locked */
        assert_db_equal("0", f->owner,
                        "SELECT count(*) FROM run_queue WHERE claimed_by IS NOT NULL");
        assert_int_equal(claim_one(b, "B", 30000, &out[1]), 0);
        /* rolled back: nothing happened, the run is due at once */
        PQclear(test_db_must(a, "ROLLBACK"));
        assert_int_equal(queue_claim_runs(b, "B", 30000, 4, NULL, 0, &out[1], &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(out[1].id, y);
        assert_int_equal(out[1].epoch, 1);
        /* the record's holder is done: claimed, committed with the transaction */
        PQclear(test_db_must(l, "COMMIT"));
        assert_int_equal(queue_begin_claim_runs(a, "A", 30000, 4, NULL, 0, out, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].id, x);
        queue_claims_clear(out, n);
        PQclear(test_db_must(a, "COMMIT"));
        assert_db_equal("A 1", f->owner,
                        "SELECT claimed_by || ' ' || lease_epoch FROM run_queue WHERE run_id = "
                        "'%s'",
                        x);
        PQfinish(a);
        PQfinish(b);
        PQfinish(l);
        free(x);
        free(y);
        fixture_free(f);
}

/* A vacuum of run_queue keeps the table's empty pages at its end instead of taking its
 * ACCESS EXCLUSIVE lock to cut them off (0031): under load that lock stalled every claim
 * and held the autovacuum worker for seconds (docs/performance.md, "The 30-minute soak"). */
static void test_vacuum_never_truncates_the_queue(void **state)
{
        struct fixture *f = fixture_new("vacuum_keep");
        long long before, after;

        (void)state;
        for (int i = 0; i < 300; i++)
                free(worker_test_run(f->owner, f->workflow, NULL));
        PQclear(test_db_must(f->owner, "DELETE FROM run_queue"));
        before = test_db_int(f->owner, "SELECT pg_relation_size('run_queue')");
        assert_in_range(before, 3 * 8192, 1 << 30); /* pages a truncation would cut off */
        PQclear(test_db_must(f->owner, "VACUUM run_queue"));
        after = test_db_int(f->owner, "SELECT pg_relation_size('run_queue')");
        assert_int_equal(after, before);
        fixture_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_rescuer_race_completion_wins),
            cmocka_unit_test(test_zombie_writes_are_refused),
            cmocka_unit_test(test_concurrent_claimers_one_owner),
            cmocka_unit_test(test_renewal_absolute),
            cmocka_unit_test(test_claim_and_renewal_touch_only_the_queue),
            cmocka_unit_test(test_rescue_records_the_new_holder),
            cmocka_unit_test(test_claim_in_a_transaction),
            cmocka_unit_test(test_vacuum_never_truncates_the_queue),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
