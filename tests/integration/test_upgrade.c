/*
 * Upgrade in place: a database migrated up to 0010 (the queue inside workflow_runs) holds
 * live runs in every state a running system has — queued, waiting on a timer, running under
 * a lease (one with its holder still alive, one whose holder died with a request in
 * flight), needs_input and paused — written by the SQL functions of that schema, as the old
 * workers wrote them. Then the pending migrations (0011_run_queue.sql and after) are applied
 * and today's workers run: every run goes on exactly where it was — the timer is kept, the
 * live lease still fences and renews under its epoch, the dead one is rescued and its
 * request re-sent under the same key, the person's answer and the resume bring theirs back.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "migrate.h"
#include "queue.h"
#include "testlib.h"
#include "worker_sink.h"

#define UPGRADE_FROM 10 /* the last migration before the narrow queue */

static const char WF_HTTP[] =
    "{\"name\":\"h\",\"nodes\":["
    "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":\"SINK/a\"}},"
    "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"SINK/b\"},\"after\":[\"a\"]}]}";
static const char WF_SLEEP[] =
    "{\"name\":\"s\",\"nodes\":["
    "{\"id\":\"z\",\"type\":\"sleep\",\"duration\":\"3s\"},"
    "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"SINK/b\"},\"after\":[\"z\"]}]}";

/* One run of workflow_id, claimed by the old schema's agently_claim_runs as `worker` with
 * `lease`; returns its epoch. */
static long long old_claim(PGconn *c, const char *worker, const char *lease)
{
        return test_db_int(c, "SELECT lease_epoch FROM agently_claim_runs('%s', '%s', 1)", worker,
                           lease);
}

/* The old schema's writes (0009's agently_apply_writes) for run at epoch. */
static void old_writes(PGconn *c, const char *worker, const char *writes)
{
        char *sql = NULL;

        assert_int_ge(
            asprintf(&sql, "SELECT count(*) FROM agently_apply_writes('%s', '%s')", worker, writes),
            0);
        assert_int_equal(test_db_int(c, "%s", sql), 0); /* nothing refused */
        free(sql);
}

static void wait_status(PGconn *c, const char *run, const char *status, int ms, const char *dir)
{
        if (!worker_test_wait_status(c, run, status, ms)) {
                char *cmd = NULL;
                assert_int_ge(asprintf(&cmd, "tail -n 30 %s/*.log >&2", dir), 0);
                if (system(cmd) < 0)
                        fprintf(stderr, "could not show the logs\n");
                free(cmd);
                fail_msg("run %s is not %s within %d ms", run, status, ms);
        }
}

static void live_runs_continue_across_the_upgrade(void **state)
{
        char *conninfo = test_db_create_empty("upgrade");
        char *dir = test_tempdir("upgrade");
        PGconn *db = test_db_connect(conninfo);
        struct worker_sink *sink = worker_sink_start();
        char *user, *wf_http, *wf_sleep, *def, *queued, *timer, *held, *dead, *asks, *paused;
        char writes[2048], log[1024];
        long long e_held, e_dead, wake_at_ms;
        pid_t w1, w2;

        (void)state;
        test_db_migrate_range(db, 1, UPGRADE_FROM);
        assert_int_equal(test_db_int(db, "SELECT count(*) FROM agently_schema_migrations"),
                         UPGRADE_FROM);
        user = worker_test_user(db, "alice");
        def = worker_sink_expand(sink, WF_HTTP);
        wf_http = worker_test_workflow(db, user, "h", 1, def);
        free(def);
        def = worker_sink_expand(sink, WF_SLEEP);
        wf_sleep = worker_test_workflow(db, user, "s", 1, def);
        free(def);

        /* running, its holder alive: claimed with a long lease, node a started */
        held = worker_test_run(db, wf_http, NULL);
        e_held = old_claim(db, "old-live", "1 hour");
        snprintf(
            writes, sizeof(writes),
            "[{\"i\":0,\"op\":\"event\",\"run\":\"%s\",\"epoch\":%lld,\"kind\":\"run.started\"},"
            "{\"i\":1,\"op\":\"node\",\"run\":\"%s\",\"epoch\":%lld,\"node\":\"a\","
            "\"attempt\":1,\"status\":\"started\",\"key\":\"%s:a\"}]",
            held, e_held, held, e_held, held);
        old_writes(db, "old-live", writes);

        /* running, its holder dead with request a in flight: a lease of 2 s */
        dead = worker_test_run(db, wf_http, NULL);
        e_dead = old_claim(db, "old-dead", "2 seconds");
        snprintf(
            writes, sizeof(writes),
            "[{\"i\":0,\"op\":\"event\",\"run\":\"%s\",\"epoch\":%lld,\"kind\":\"run.started\"},"
            "{\"i\":1,\"op\":\"node\",\"run\":\"%s\",\"epoch\":%lld,\"node\":\"a\","
            "\"attempt\":1,\"status\":\"started\",\"key\":\"%s:a\"}]",
            dead, e_dead, dead, e_dead, dead);
        old_writes(db, "old-dead", writes);

        /* waiting on a timer 3 s from now: node z waiting, the run released until then */
        timer = worker_test_run(db, wf_sleep, NULL);
        long long e = old_claim(db, "old", "1 minute");
        wake_at_ms = test_db_int(db, "SELECT (extract(epoch FROM now()) * 1000)::bigint + 3000");
        snprintf(
            writes, sizeof(writes),
            "[{\"i\":0,\"op\":\"event\",\"run\":\"%s\",\"epoch\":%lld,\"kind\":\"run.started\"},"
            "{\"i\":1,\"op\":\"node\",\"run\":\"%s\",\"epoch\":%lld,\"node\":\"z\","
            "\"attempt\":1,\"status\":\"waiting\",\"input\":{\"wake_at_ms\":%lld},"
            "\"kind\":\"node.waiting\"},"
            "{\"i\":2,\"op\":\"release\",\"run\":\"%s\",\"epoch\":%lld,\"status\":\"waiting\","
            "\"run_at_ms\":%lld,\"message\":\"sleep (node z)\"}]",
            timer, e, timer, e, wake_at_ms, timer, e, wake_at_ms);
        old_writes(db, "old", writes);

        /* needs_input: node a failed and the run escalated to a person */
        asks = worker_test_run(db, wf_http, NULL);
        e = old_claim(db, "old", "1 minute");
        snprintf(writes, sizeof(writes),
                 "[{\"i\":0,\"op\":\"node\",\"run\":\"%s\",\"epoch\":%lld,\"node\":\"a\","
                 "\"attempt\":1,\"status\":\"failed\",\"error\":{\"class\":\"http\","
                 "\"message\":\"503\",\"final\":\"escalate\"},\"kind\":\"node.failed\"},"
                 "{\"i\":1,\"op\":\"release\",\"run\":\"%s\",\"epoch\":%lld,"
                 "\"status\":\"needs_input\",\"message\":\"node a failed\","
                 "\"error\":{\"class\":\"http\",\"message\":\"503\"}}]",
                 asks, e, asks, e);
        old_writes(db, "old", writes);

        /* paused, and queued */
        paused = worker_test_run(db, wf_http, NULL);
        assert_db_equal("done", db, "SELECT agently_pause_run('%s', 'upgrade', NULL)", paused);
        queued = worker_test_run(db, wf_http, NULL);

        /* the upgrade */
        assert_int_equal(db_migrate(db, NULL), 0);
        assert_int_equal(db_migrations_check(db), 0);
        /* every live run has its queue row, with its lease where it had one */
        assert_db_equal("6", db, "SELECT count(*) FROM run_queue");
        assert_db_equal("old-live 1 t", db,
                        "SELECT claimed_by || ' ' || lease_epoch || ' ' || "
                        "(lease_expires_at > now() + interval '50 minutes')::text::char "
                        "FROM run_queue WHERE run_id = '%s'",
                        held);
        assert_db_equal("t", db,
                        "SELECT (run_at = to_timestamp(%lld / 1000.0) AND claimed_by IS NULL)"
                        "::text::char FROM run_queue WHERE run_id = '%s'",
                        wake_at_ms, timer);
        assert_db_equal("infinity infinity", db,
                        "SELECT string_agg(run_at::text, ' ') FROM run_queue WHERE run_id IN "
                        "('%s', '%s')",
                        asks, paused);

        /* today's workers */
        snprintf(log, sizeof(log), "%s/w1.log", dir);
        w1 = worker_test_spawn(conninfo, "w1", "2s", "500ms", NULL, log);
        snprintf(log, sizeof(log), "%s/w2.log", dir);
        w2 = worker_test_spawn(conninfo, "w2", "2s", "500ms", NULL, log);

        wait_status(db, queued, "completed", 15000, dir);
        /* the dead holder's run: rescued after its lease, a re-sent under its key */
        wait_status(db, dead, "completed", 15000, dir);
        assert_db_equal("2", db, "SELECT lease_epoch FROM workflow_runs WHERE id = '%s'", dead);
        assert_int_equal(test_db_int(db,
                                     "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND "
                                     "kind = 'run.recovered'",
                                     dead),
                         1);
        /* the timer: kept, never early */
        wait_status(db, timer, "completed", 15000, dir);
        assert_int_equal(test_db_int(db,
                                     "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' "
                                     "AND node_id = 'z' AND status = 'completed' AND "
                                     "finished_at >= to_timestamp(%lld / 1000.0)",
                                     timer, wake_at_ms),
                         1);
        /* the person's answer and the resume bring theirs back */
        assert_db_equal("needs_input", db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        asks);
        assert_db_equal("paused", db, "SELECT status FROM workflow_runs WHERE id = '%s'", paused);
        PQclear(test_db_must(db, "BEGIN"));
        free(test_db_value(db, "SELECT set_config('agently.user_id', '%s', true)", user));
        assert_db_equal("queued", db,
                        "SELECT run_status FROM agently_resolve_escalation('%s', 'retry', 'a', "
                        "'after the upgrade')",
                        asks);
        PQclear(test_db_must(db, "COMMIT"));
        assert_db_equal("done", db, "SELECT agently_resume_run('%s', 'upgrade', NULL)", paused);
        wait_status(db, asks, "completed", 15000, dir);
        wait_status(db, paused, "completed", 15000, dir);

        /* the live holder kept its lease across the upgrade: nobody took it, its renewal
         * and its writes go through under its epoch, and it finishes the run */
        {
                PGconn *old = test_db_connect(conninfo);
                struct queue_lease lease = {.run_id = held, .epoch = e_held};
                struct queue_renewal renewed[1];
                struct queue_node_write nw = {
                    .node_id = "a", .attempt = 1, .status = "completed", .worker = "old-live"};
                int n = 0;

                assert_db_equal("running", db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                                held);
                assert_int_equal(queue_renew_leases(old, "old-live", &lease, 1, 60000, renewed, &n),
                                 0);
                assert_int_equal(n, 1);
                assert_int_equal(queue_checkpoint_node(old, held, e_held, &nw), 1);
                nw.node_id = "b";
                assert_int_equal(queue_checkpoint_node(old, held, e_held, &nw), 1);
                assert_int_equal(queue_finish_run(old, held, e_held, "completed", NULL, NULL), 1);
                assert_db_equal("completed 1", db,
                                "SELECT status || ' ' || lease_epoch FROM workflow_runs WHERE "
                                "id = '%s'",
                                held);
                PQfinish(old);
        }

        /* every effect once per key (the dead holder's a: sent again with its key), no
         * queue row left, nothing but completed runs */
        assert_int_equal(worker_sink_distinct_keys(sink, "/a"), worker_sink_count(sink, "/a"));
        assert_db_equal("0", db, "SELECT count(*) FROM run_queue");
        assert_db_equal("6", db, "SELECT count(*) FROM workflow_runs WHERE status = 'completed'");
        assert_exit_code(test_stop_process(w1, SIGTERM, 15000), 0);
        assert_exit_code(test_stop_process(w2, SIGTERM, 15000), 0);
        worker_sink_stop(sink);
        PQfinish(db);
        free(user);
        free(wf_http);
        free(wf_sleep);
        free(queued);
        free(timer);
        free(held);
        free(dead);
        free(asks);
        free(paused);
        test_rm_rf(dir); /* passed: the workers' logs are not needed (a failure keeps them) */
        free(dir);
        free(conninfo);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(live_runs_continue_across_the_upgrade),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
