/*
 * The logs insert path every hot write shares (0035_logs_writes.sql): one statement trigger
 * per INSERT into logs, and no per-row work, where there were a foreign-key check per row
 * and two statement triggers. And what the key logs.user_id → users guarded is still
 * guarded: an event naming no user is refused (SQLSTATE 23503, whether inserted or updated
 * to it, as the worker or as the owner), deleting a user deletes its events — also those a
 * transaction in flight was writing when the deletion began —, a user's id cannot change
 * while events name it. The trigger's other two jobs are checked beside: the /metrics
 * counters count the same kinds, and only watched runs are NOTIFYed.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
        char *owner;
        PGconn *c;      /* the owner */
        PGconn *worker; /* agently_worker, as the worker's writes */
        char *user_a;
        char *user_b;
        char *run_a; /* a run of user_a */
        char *run_b; /* a run of user_b */
} S;

/* A run of user u (returns its id; caller frees). */
static char *new_run(const char *u)
{
        char *wf = test_db_value(S.c,
                                 "INSERT INTO workflows (user_id, name, version, definition, "
                                 "definition_sha256) VALUES ('%s', 'wf', 1, "
                                 "'{\"name\":\"wf\",\"nodes\":[]}', encode(sha256('w'), 'hex')) "
                                 "ON CONFLICT (user_id, name, version) DO UPDATE SET name = "
                                 "EXCLUDED.name RETURNING id",
                                 u);
        char *run = test_db_value(S.c,
                                  "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                                  "workflow_version) VALUES ('%s', '%s', 'wf', 1) RETURNING id",
                                  u, wf);
        free(wf);
        return run;
}

/* The INSERT of n events of run (kind each), seq from first, as SQL text. */
static void events_sql(char *sql, size_t size, const char *run, const char *user, int first, int n,
                       const char *kind)
{
        snprintf(sql, size,
                 "INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind) "
                 "SELECT r.created_at, r.id, g, '%s', '%s' FROM workflow_runs r, "
                 "generate_series(%d, %d) g WHERE r.id = '%s'",
                 user, kind, first, first + n - 1, run);
}

static int setup(void **state)
{
        (void)state;
        S.owner = test_db_create("logs_writes");
        S.c = test_db_connect(S.owner);
        char *w = test_db_conninfo_as(S.owner, "agently_worker");
        S.worker = test_db_connect(w);
        free(w);
        S.user_a = test_db_value(S.c, "INSERT INTO users (name) VALUES ('a') RETURNING id");
        S.user_b = test_db_value(S.c, "INSERT INTO users (name) VALUES ('b') RETURNING id");
        S.run_a = new_run(S.user_a);
        S.run_b = new_run(S.user_b);
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
        free(S.run_a);
        free(S.run_b);
        return 0;
}

/* A 7-row insert (a 5-step run's turn) fires one trigger once: no per-row check. Before
 * 0035 it fired 9 (7 checks of the key and the two statement triggers). */
static void one_trigger_call_per_insert(void **state)
{
        (void)state;
        char sql[1024];

        events_sql(sql, sizeof(sql), S.run_a, S.user_a, 100, 7, "node.completed");
        char *calls = test_db_trigger_calls(S.worker, sql);
        printf("# %s\n", calls);
        assert_string_equal(calls, "logs_written:1");
        free(calls);
}

/* An event that names no user is refused with the key's SQLSTATE, and the statement writes
 * nothing, however it is written: inserted by the worker (alone, or among good rows) or by
 * the owner, or updated to it. */
static void an_event_of_no_user_is_refused(void **state)
{
        (void)state;
        char sql[1024];
        const char *nobody = "00000000-0000-4000-8000-000000000001";

        events_sql(sql, sizeof(sql), S.run_a, nobody, 200, 1, "node.completed");
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        /* one row of a real user and one of nobody in one statement */
        snprintf(sql, sizeof(sql),
                 "INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind) "
                 "SELECT r.created_at, r.id, 200 + g, CASE g WHEN 1 THEN r.user_id ELSE "
                 "'%s' END, 'node.completed' FROM workflow_runs r, generate_series(1, 2) g "
                 "WHERE r.id = '%s'",
                 nobody, S.run_a);
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE seq > 200"), 0);

        /* the check stands for the key on updates too (only the owner may update logs) */
        events_sql(sql, sizeof(sql), S.run_a, S.user_a, 300, 1, "node.completed");
        PQclear(test_db_must(S.c, sql));
        snprintf(sql, sizeof(sql),
                 "UPDATE logs SET user_id = '%s' WHERE workflow_run_id = '%s' AND seq = 300",
                 nobody, S.run_a);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        char *u = test_db_value(S.c, "SELECT user_id FROM logs WHERE seq = 300");
        assert_string_equal(u, S.user_a);
        free(u);
}

/* Deleting a user deletes its events and nobody else's (the key's ON DELETE CASCADE). */
static void deleting_a_user_deletes_its_events(void **state)
{
        (void)state;
        char sql[1024];
        char *u = test_db_value(S.c, "INSERT INTO users (name) VALUES ('gone') RETURNING id");
        char *run = new_run(u);

        events_sql(sql, sizeof(sql), run, u, 1, 5, "node.completed");
        PQclear(test_db_must(S.worker, sql));
        events_sql(sql, sizeof(sql), S.run_b, S.user_b, 400, 3, "node.completed");
        PQclear(test_db_must(S.worker, sql));
        long long others = test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id <> '%s'", u);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id = '%s'", u), 5);

        PQclear(test_db_must(S.c, "BEGIN"));
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", u);
        PQclear(test_db_must(S.c, sql));
        PQclear(test_db_must(S.c, "COMMIT"));
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id = '%s'", u), 0);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id <> '%s'", u),
                         others);
        free(run);
        free(u);
}

/* A user deleted while a transaction writes its events: the deletion waits for that
 * transaction and then deletes what it wrote; an event written after the deletion is
 * refused. No event outlives its user. */
static void a_user_deleted_while_its_events_are_written(void **state)
{
        (void)state;
        char sql[1024];
        char *u = test_db_value(S.c, "INSERT INTO users (name) VALUES ('racing') RETURNING id");
        char *run = new_run(u);
        PGconn *deleter = test_db_connect(S.owner);

        PQclear(test_db_must(S.worker, "BEGIN"));
        events_sql(sql, sizeof(sql), run, u, 1, 3, "node.completed");
        PQclear(test_db_must(S.worker, sql));

        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", u);
        test_db_send_blocked(deleter, S.c, sql); /* waits for the writer */
        PQclear(test_db_must(S.worker, "COMMIT"));
        assert_string_equal(test_db_sent_sqlstate(deleter), "");
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM users WHERE id = '%s'", u), 0);
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id = '%s'", u), 0);

        /* the run went with its user; an event naming the user now has no user to name */
        events_sql(sql, sizeof(sql), S.run_a, u, 500, 1, "node.completed");
        assert_string_equal(test_db_sqlstate(S.worker, sql), "23503");

        /* the other order: the deletion is in flight when the events are written; the
         * writer waits for it and is then refused */
        char *v = test_db_value(S.c, "INSERT INTO users (name) VALUES ('racing-2') RETURNING id");
        PQclear(test_db_must(deleter, "BEGIN"));
        snprintf(sql, sizeof(sql), "DELETE FROM users WHERE id = '%s'", v);
        PQclear(test_db_must(deleter, sql));
        events_sql(sql, sizeof(sql), S.run_a, v, 510, 2, "node.completed");
        test_db_send_blocked(S.worker, S.c, sql); /* waits for the deletion */
        PQclear(test_db_must(deleter, "COMMIT"));
        assert_string_equal(test_db_sent_sqlstate(S.worker), "23503");
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM logs WHERE user_id = '%s'", v), 0);
        PQfinish(deleter);
        free(run);
        free(u);
        free(v);
}

/* A user's id cannot change while events name it (the key's NO ACTION); one without
 * events can. */
static void a_user_id_named_by_events_cannot_change(void **state)
{
        (void)state;
        char sql[1024];
        /* a user whose only rows are events, so that no other key refuses first */
        char *u = test_db_value(S.c, "INSERT INTO users (name) VALUES ('events-only') "
                                     "RETURNING id");

        events_sql(sql, sizeof(sql), S.run_a, u, 600, 2, "node.completed");
        PQclear(test_db_must(S.c, sql));
        snprintf(sql, sizeof(sql),
                 "UPDATE users SET id = '00000000-0000-4000-8000-000000000002' WHERE id = '%s'", u);
        assert_string_equal(test_db_sqlstate(S.c, sql), "23503");
        assert_int_equal(test_db_int(S.c, "SELECT count(*) FROM users WHERE id = '%s'", u), 1);

        char *free_user = test_db_value(S.c, "INSERT INTO users (name) VALUES ('no-events') "
                                             "RETURNING id");
        snprintf(sql, sizeof(sql),
                 "UPDATE users SET id = '00000000-0000-4000-8000-000000000003' WHERE id = '%s'",
                 free_user);
        assert_string_equal(test_db_sqlstate(S.c, sql), "");
        free(free_user);
        free(u);
}

/* The trigger's other jobs: the counters of 0008 count the same kinds, per backend; the
 * NOTIFY of 0018 goes out for watched runs only, once per run, at commit. */
static void counters_and_notifications(void **state)
{
        (void)state;
        char sql[1024];
        PGconn *listener = test_db_connect(S.owner);
        int pid = PQbackendPID(S.worker);

        PQclear(test_db_must(listener, "LISTEN agently_events"));
        snprintf(sql, sizeof(sql),
                 "INSERT INTO agently_watched_runs (run_id, user_id, expires_at) VALUES "
                 "('%s', '%s', now() + interval '1 minute')",
                 S.run_a, S.user_a);
        PQclear(test_db_must(S.c, sql));

        PQclear(test_db_must(S.worker, "BEGIN"));
        const char *kinds[] = {"run.started",   "run.recovered", "node.retry_scheduled",
                               "run.completed", "run.failed",    "run.canceled"};
        for (int i = 0; i < 6; i++) {
                events_sql(sql, sizeof(sql), i % 2 ? S.run_a : S.run_b, i % 2 ? S.user_a : S.user_b,
                           700 + i * 10, i + 1, kinds[i]);
                PQclear(test_db_must(S.worker, sql));
        }
        events_sql(sql, sizeof(sql), S.run_b, S.user_b, 800, 2, "node.completed");
        PQclear(test_db_must(S.worker, sql));
        /* one statement of counted and other kinds: 2 node.completed, 2 run.completed, 2
         * run.recovered (0043 counts them in a second pass, only for such a statement) */
        snprintf(sql, sizeof(sql),
                 "INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind) "
                 "SELECT r.created_at, r.id, g, '%s', (ARRAY['node.completed', 'run.completed', "
                 "'run.recovered'])[1 + g %% 3] FROM workflow_runs r, generate_series(900, 905) g "
                 "WHERE r.id = '%s'",
                 S.user_b, S.run_b);
        PQclear(test_db_must(S.worker, sql));
        PQclear(test_db_must(S.worker, "COMMIT"));

        char *counts = test_db_value(S.c,
                                     "SELECT concat_ws(' ', claims, rescues, retries, completed, "
                                     "failed, canceled) FROM agently_event_counters WHERE "
                                     "backend_pid = %d",
                                     pid);
        /* claims: 1 run.started + 2 + 2 run.recovered; rescues 2 + 2; retries 3; completed 4
         * + 2; 5; 6 */
        assert_string_equal(counts, "5 4 3 6 5 6");
        free(counts);

        /* three statements wrote events of the watched run: one notification at commit */
        int notified = 0;
        int64_t t0 = test_now_ms();
        while (test_now_ms() - t0 < 1000) {
                assert_int_equal(PQconsumeInput(listener), 1);
                PGnotify *n;
                while ((n = PQnotifies(listener))) {
                        assert_string_equal(n->relname, "agently_events");
                        assert_string_equal(n->extra, S.run_a);
                        notified++;
                        PQfreemem(n);
                }
                usleep(20 * 1000);
        }
        assert_int_equal(notified, 1);
        PQfinish(listener);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(one_trigger_call_per_insert),
            cmocka_unit_test(an_event_of_no_user_is_refused),
            cmocka_unit_test(deleting_a_user_deletes_its_events),
            cmocka_unit_test(a_user_deleted_while_its_events_are_written),
            cmocka_unit_test(a_user_id_named_by_events_cannot_change),
            cmocka_unit_test(counters_and_notifications),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
