/*
 * The rules of a run's status (migrations/0009_run_status.sql), end to end with real
 * processes: the transition list is enforced on every writer; a run that ends — through its
 * worker, the API's cancel, a person's "stop" or its deadline — wakes its parent, cancels
 * its live children and leaves no node shown waiting; a subworkflow attempt that ends
 * without its child cancels that child before the node is retried; a workflow timeout is
 * enforced while the run is paused.
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_token.h"
#include "strutil.h"
#include "worker_sink.h"

/* waits for a signal that never comes */
static const char CHILD_WAITS[] = "{\"name\":\"child-waits\",\"nodes\":["
                                  "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"never\"}]}";
/* escalates at once: its only node fails and asks a person */
static const char CHILD_ESCALATES[] =
    "{\"name\":\"child-escalates\",\"nodes\":["
    "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
    "\"url\":\"SINK/esc?fail=100\"},\"retry\":{\"max_attempts\":1},\"on_failure\":\"escalate\"}]}";
/* a parent of one child, no timeout anywhere: only the child's end can wake it */
static const char PARENT[] = "{\"name\":\"parent\",\"nodes\":["
                             "{\"id\":\"sub\",\"type\":\"subworkflow\",\"workflow\":\"WF\"}]}";
/* a parent whose own deadline passes while its child waits */
static const char PARENT_TIMEOUT[] =
    "{\"name\":\"parent-timeout\",\"timeout\":\"2s\",\"nodes\":["
    "{\"id\":\"sub\",\"type\":\"subworkflow\",\"workflow\":\"child-waits\"},"
    "{\"id\":\"also\",\"type\":\"wait_event\",\"event\":\"never\"}]}";
/* a subworkflow node that times out and is retried once */
static const char PARENT_RETRY[] =
    "{\"name\":\"parent-retry\",\"nodes\":["
    "{\"id\":\"sub\",\"type\":\"subworkflow\",\"workflow\":\"child-waits\",\"timeout\":\"1s\","
    "\"retry\":{\"max_attempts\":2,\"initial_delay\":\"100ms\",\"retry_on\":[\"timeout\"]}}]}";
/* waits for a signal, with a deadline */
static const char PAUSABLE[] = "{\"name\":\"pausable\",\"timeout\":\"3s\",\"nodes\":["
                               "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"go\"}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api, worker, dispatcher;
        char base[64];
        char token[AUTH_TOKEN_LEN + 1];
        char *user;
} S;

static char *workflow(const char *name, const char *def, const char *child)
{
        char *expanded = worker_sink_expand(S.sink, def);
        char *wf = NULL;

        assert_non_null(expanded);
        if (child) {
                char *at = strstr(expanded, "\"WF\"");
                assert_non_null(at);
                char *with =
                    str_printf("%.*s\"%s\"%s", (int)(at - expanded), expanded, child, at + 4);
                free(expanded);
                expanded = with;
        }
        wf = worker_test_workflow(S.db, S.user, name, 1, expanded);
        free(expanded);
        return wf;
}

static long api_post(const char *path, const char *body, char **out)
{
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        return test_http("POST", url, headers, body, out);
}

static int setup(void **state)
{
        char log[512], env_url[1024];

        (void)state;
        S.conninfo = test_db_create("run_status");
        S.db = test_db_connect(S.conninfo);
        S.sink = worker_sink_start();
        S.dir = test_tempdir("run_status");
        S.user = worker_test_user(S.db, "ana");
        worker_test_token(S.db, S.user, S.token);
        free(workflow("child-waits", CHILD_WAITS, NULL));
        free(workflow("child-escalates", CHILD_ESCALATES, NULL));

        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        snprintf(log, sizeof(log), "%s/worker.log", S.dir);
        S.worker = worker_test_spawn(S.conninfo, "status-w", "5s", "1s", NULL, log);
        snprintf(log, sizeof(log), "%s/dispatch.log", S.dir);
        snprintf(env_url, sizeof(env_url), "AGENTLY_DATABASE_URL=%s", S.conninfo);
        const char *args[] = {"dispatch", "--interval", "200ms", NULL};
        const char *env[] = {env_url, NULL};
        S.dispatcher = test_spawn_agently(args, env, log);
        assert_int_gt(S.dispatcher, 0);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        test_stop_process(S.dispatcher, SIGTERM, 10000);
        test_stop_process(S.worker, SIGTERM, 15000);
        test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(S.user);
        return 0;
}

/* The child run that `parent`'s node `sub` started, once it is in one of `statuses`. */
static char *child_of(const char *parent, const char *statuses)
{
        char *child = NULL;

        for (int i = 0; i < 300 && !child; i++) {
                child = test_db_value(S.db,
                                      "SELECT id FROM workflow_runs WHERE parent_run_id = '%s' "
                                      "ORDER BY created_at DESC LIMIT 1",
                                      parent);
                if (!child)
                        usleep(100 * 1000);
        }
        assert_non_null(child);
        assert_true(worker_test_wait_status(S.db, child, statuses, 30000));
        return child;
}

static const char *const STATUSES[] = {"queued",      "running",   "waiting", "paused",
                                       "needs_input", "completed", "failed",  "canceled"};

static bool allowed(const char *from, const char *to)
{
        static const char *const list[] = {
            "queued>running",       "queued>paused",      "queued>canceled",
            "waiting>running",      "waiting>paused",     "waiting>canceled",
            "running>queued",       "running>waiting",    "running>paused",
            "running>needs_input",  "running>completed",  "running>failed",
            "running>canceled",     "paused>queued",      "paused>canceled",
            "paused>failed",        "needs_input>queued", "needs_input>paused",
            "needs_input>canceled", "needs_input>failed"};
        char key[64];

        snprintf(key, sizeof(key), "%s>%s", from, to);
        for (size_t i = 0; i < sizeof(list) / sizeof(list[0]); i++)
                if (strcmp(list[i], key) == 0)
                        return true;
        return false;
}

/* The columns a run in `status` must have (a lease when running, finished_at when final). */
static const char *columns_for(const char *status)
{
        if (strcmp(status, "running") == 0)
                return "claimed_by = 'probe', lease_expires_at = now() + interval '1 minute', "
                       "finished_at = NULL";
        if (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
            strcmp(status, "canceled") == 0)
                return "claimed_by = NULL, lease_expires_at = NULL, finished_at = now()";
        return "claimed_by = NULL, lease_expires_at = NULL, finished_at = NULL";
}

/* Puts run in status `from` without the guard (this session only), then writes `to` with
 * (bump) or without a new lease_epoch; 1 when the write went through, 0 when the guard
 * refused it with SQLSTATE 55000. */
static int try_change(const char *run, const char *from, const char *to, bool bump)
{
        char sql[512];
        int went = -1;

        snprintf(sql, sizeof(sql),
                 "SET session_replication_role = replica; UPDATE workflow_runs "
                 "SET status = '%s', %s WHERE id = '%s'; SET "
                 "session_replication_role = origin",
                 from, columns_for(from), run);
        PQclear(test_db_must(S.db, sql));
        snprintf(sql, sizeof(sql), "UPDATE workflow_runs SET status = '%s', %s%s WHERE id = '%s'",
                 to, columns_for(to), bump ? ", lease_epoch = lease_epoch + 1" : "", run);
        PGresult *res = PQexec(S.db, sql);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
                went = 1;
        } else {
                const char *state_code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                if (!state_code || strcmp(state_code, "55000") != 0 ||
                    !strstr(PQresultErrorMessage(res), "cannot go from"))
                        fprintf(stderr, "%s -> %s: %s", from, to, PQresultErrorMessage(res));
                else
                        went = 0;
        }
        PQclear(res);
        assert_int_not_equal(went, -1);
        return went;
}

/* A change with a new lease_epoch (only a worker's claim makes one) is checked as the two
 * changes it stands for (0011): OLD -> running, the claim, and running -> NEW, what the
 * claim's first turn did. */
static bool allowed_with_new_epoch(const char *from, const char *to)
{
        return allowed(from, to) || (allowed(from, "running") && allowed("running", to));
}

/* Walks a paused run of a fresh workflow through every pair of statuses (with a new epoch
 * when new_epoch is set), checks each against what the list allows, and that `passed` of
 * the 56 went through. */
static void walk_every_change(const char *name, bool new_epoch, int passed_expected)
{
        char def[128];
        snprintf(def, sizeof(def), "{\"name\":\"%s\",\"nodes\":[{\"id\":\"n\",\"type\":\"noop\"}]}",
                 name);
        char *wf = workflow(name, def, NULL);
        char *run = test_db_value(S.db,
                                  "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                                  "workflow_version, status, run_at) SELECT user_id, id, name, "
                                  "version, 'paused', 'infinity' FROM workflows WHERE id = '%s' "
                                  "RETURNING id",
                                  wf);
        int refused = 0, passed = 0;

        assert_non_null(run);
        for (size_t f = 0; f < 8; f++) {
                for (size_t t = 0; t < 8; t++) {
                        if (f == t)
                                continue;
                        bool expect = new_epoch ? allowed_with_new_epoch(STATUSES[f], STATUSES[t])
                                                : allowed(STATUSES[f], STATUSES[t]);
                        int went = try_change(run, STATUSES[f], STATUSES[t], new_epoch);
                        if (went != (int)expect)
                                fprintf(stderr, "%s -> %s%s: %s\n", STATUSES[f], STATUSES[t],
                                        new_epoch ? " with a new epoch" : "",
                                        went ? "allowed" : "refused");
                        assert_int_equal(went, (int)expect);
                        if (went)
                                passed++;
                        else
                                refused++;
                }
        }
        assert_int_equal(passed, passed_expected);
        assert_int_equal(refused, 56 - passed_expected);
        free(run);
        free(wf);
}

/* Every pair of statuses, from any writer (here the owner): the listed changes go through,
 * every other one is refused with SQLSTATE 55000 and changes nothing. */
static void every_change_of_status_is_checked_against_the_list(void **state)
{
        (void)state;
        assert_db_equal("20", S.db, "SELECT count(*) FROM agently_run_transitions");
        walk_every_change("probe", false, 20);
}

/* A write that carries a new lease_epoch is checked as the claim and its outcome, so
 * queued -> completed goes through in one row version, and what neither path allows is
 * still refused. */
static void a_claims_first_write_is_checked_as_the_claim_and_its_outcome(void **state)
{
        (void)state;
        walk_every_change("probe-epoch", true, 28);
}

/* How many constants the guard's function holds, and whether they are what
 * agently_run_transition_guard_create() makes of the list (0058, 0060): the list itself, the
 * statuses it lets go to running, the statuses it lets running go to. */
static const char GUARD_CONSTANTS[] =
    "SELECT count(*) || '|' || coalesce(bool_and(c.v = CASE c.i "
    "WHEN 1 THEN l "
    "WHEN 2 THEN ARRAY(SELECT split_part(x, '>', 1) FROM unnest(l) x "
    "WHERE split_part(x, '>', 2) = 'running' ORDER BY 1) "
    "WHEN 3 THEN ARRAY(SELECT split_part(x, '>', 2) FROM unnest(l) x "
    "WHERE split_part(x, '>', 1) = 'running' ORDER BY 1) END)::text, 'none') "
    "FROM (SELECT r.m[1]::text[] AS v, r.i FROM pg_proc p, regexp_matches("
    "p.prosrc, '''(\\{[^'']*\\})''::text\\[\\]', 'g') "
    "WITH ORDINALITY AS r(m, i) WHERE p.oid = "
    "'agently_run_change_allowed(agently_run_status, agently_run_status, boolean)'"
    "::regprocedure) c, agently_run_transition_list() l";

/* The guard's WHEN clause calls agently_run_change_allowed, a PL/pgSQL function holding the
 * list as constants (0034, 0058, 0060): compiled once per session, where an SQL function
 * would be inlined (its text parsed) in every statement that writes a status.
 * agently_run_transition_guard_create() writes it from the list, and this is the check that
 * the two never differ: a migration that redefines agently_run_transition_list() and forgets
 * to call it fails here (shown in a transaction rolled back). */
static void the_guard_is_the_list_as_a_constant(void **state)
{
        char *def = test_db_value(S.db, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE "
                                        "tgname = 'workflow_runs_transition_guard'");

        (void)state;
        assert_non_null(def);
        assert_non_null(strstr(def, "agently_run_change_allowed(old.status, new.status"));
        assert_null(strstr(def, "agently_run_transition_allowed"));
        assert_null(strstr(def, "agently_run_transition_list"));
        assert_db_equal("plpgsql|i", S.db,
                        "SELECT l.lanname || '|' || p.provolatile::text FROM pg_proc p JOIN "
                        "pg_language l ON l.oid = p.prolang WHERE p.proname = "
                        "'agently_run_change_allowed'");
        /* the list, and the two sets its claim test reads */
        assert_db_equal("3|true", S.db, GUARD_CONSTANTS);

        /* a later migration changes the list: the check sees it until the guard is remade */
        PQclear(test_db_must(S.db, "BEGIN"));
        PQclear(test_db_must(S.db, "CREATE OR REPLACE FUNCTION agently_run_transition_list() "
                                   "RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT "
                                   "ARRAY['queued>running', 'running>completed'] $$"));
        assert_db_equal("3|false", S.db, GUARD_CONSTANTS);
        PQclear(test_db_must(S.db, "SELECT agently_run_transition_guard_create()"));
        assert_db_equal("3|true", S.db, GUARD_CONSTANTS);
        PQclear(test_db_must(S.db, "ROLLBACK"));
        assert_db_equal("3|true", S.db, GUARD_CONSTANTS);
        free(def);
}

/* Defect 1: a child canceled through the API wakes its parent, which has no timer. */
static void a_child_canceled_by_the_api_wakes_its_parent(void **state)
{
        char *wf = workflow("parent-a", PARENT, "child-waits");
        char *parent = worker_test_run(S.db, wf, NULL);
        char *child = NULL, *out = NULL, path[128];

        (void)state;
        assert_true(worker_test_wait_status(S.db, parent, "waiting", 30000));
        child = child_of(parent, "waiting");
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", child);
        assert_int_equal(api_post(path, NULL, &out), 200);
        free(out);
        assert_db_equal("canceled", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        child);
        /* the parent's subworkflow node fails with its child, and the run with it */
        assert_true(worker_test_wait_status(S.db, parent, "failed", 15000));
        assert_db_equal("failed", S.db,
                        "SELECT status FROM agently_node_latest WHERE workflow_run_id = '%s' "
                        "AND node_id = 'sub'",
                        parent);
        free(child);
        free(parent);
        free(wf);
}

/* Defect 1, the other door: a person stops an escalated child; the parent wakes. The
 * child's error has the documented shape {node, class, message, error}. */
static void a_child_stopped_by_a_person_wakes_its_parent(void **state)
{
        char *wf = workflow("parent-b", PARENT, "child-escalates");
        char *parent = worker_test_run(S.db, wf, NULL);
        char *child = NULL, *out = NULL, path[128];

        (void)state;
        child = child_of(parent, "needs_input");
        snprintf(path, sizeof(path), "/v1/runs/%s/resolve", child);
        assert_int_equal(api_post(path, "{\"action\":\"stop\"}", &out), 200);
        free(out);
        assert_db_equal("a|true", S.db,
                        "SELECT concat_ws('|', error->>'node', (error->>'class' = "
                        "error->'error'->>'class' AND error->>'message' LIKE 'node ''a'' failed: "
                        "%%; a person stopped the run' AND error->'error' ? 'message')::text) FROM "
                        "workflow_runs WHERE id = '%s'",
                        child);
        assert_true(worker_test_wait_status(S.db, parent, "failed", 15000));
        free(child);
        free(parent);
        free(wf);
}

/* Defect 3: canceling a waiting parent through the API cancels its child (and the API's
 * cancel leaves no node of the parent shown waiting). */
static void canceling_a_parent_cancels_its_children(void **state)
{
        char *wf = workflow("parent-c", PARENT, "child-waits");
        char *parent = worker_test_run(S.db, wf, NULL);
        char *child = NULL, *out = NULL, path[128];

        (void)state;
        assert_true(worker_test_wait_status(S.db, parent, "waiting", 30000));
        child = child_of(parent, "waiting");
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", parent);
        assert_int_equal(api_post(path, NULL, &out), 200);
        free(out);
        assert_db_equal("canceled|canceled", S.db,
                        "SELECT p.status || '|' || c.status FROM workflow_runs p, workflow_runs c "
                        "WHERE p.id = '%s' AND c.id = '%s'",
                        parent, child);
        assert_db_equal("0", S.db,
                        "SELECT count(*) FROM node_runs WHERE workflow_run_id IN ('%s', '%s') AND "
                        "status IN ('waiting', 'started')",
                        parent, child);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'run.canceled' AND data->>'parent_run_id' = '%s'",
                        child, parent);
        free(child);
        free(parent);
        free(wf);
}

/* Defect 3 and issue 12 item 3: a parent that fails on its own deadline cancels its live
 * child, and every node of the finished run is in a final state, with the reason. */
static void a_parent_that_times_out_cancels_its_child_and_closes_its_nodes(void **state)
{
        char *wf = workflow("parent-timeout", PARENT_TIMEOUT, NULL);
        char *parent = worker_test_run(S.db, wf, NULL);
        char *child = NULL;

        (void)state;
        child = child_of(parent, "waiting|queued|running");
        assert_true(worker_test_wait_status(S.db, parent, "failed", 20000));
        assert_true(worker_test_wait_status(S.db, child, "canceled", 15000));
        assert_db_equal("also:canceled|sub:canceled", S.db,
                        "SELECT string_agg(node_id || ':' || status, '|' ORDER BY node_id) FROM "
                        "agently_node_latest WHERE workflow_run_id = '%s'",
                        parent);
        assert_db_equal("the run failed before this node finished", S.db,
                        "SELECT error->>'message' FROM agently_node_latest WHERE "
                        "workflow_run_id = '%s' AND node_id = 'also'",
                        parent);
        free(child);
        free(parent);
        free(wf);
}

/* Defect 3: a subworkflow node that times out and is retried never leaves its previous
 * child running beside the new one. */
static void a_retried_subworkflow_node_cancels_its_previous_child(void **state)
{
        char *wf = workflow("parent-retry", PARENT_RETRY, NULL);
        char *parent = worker_test_run(S.db, wf, NULL);

        (void)state;
        assert_true(worker_test_wait_status(S.db, parent, "failed", 30000));
        assert_db_equal("2", S.db, "SELECT count(*) FROM workflow_runs WHERE parent_run_id = '%s'",
                        parent);
        assert_db_equal("0", S.db,
                        "SELECT count(*) FROM workflow_runs WHERE parent_run_id = '%s' AND "
                        "status NOT IN ('completed', 'failed', 'canceled')",
                        parent);
        /* the first child was canceled when its attempt timed out, before the second began */
        assert_db_equal("t", S.db,
                        "SELECT c1.finished_at <= c2.created_at FROM workflow_runs c1, "
                        "workflow_runs c2 WHERE c1.parent_run_id = '%s' AND c2.parent_run_id = "
                        "c1.parent_run_id AND c1.created_at < c2.created_at",
                        parent);
        free(parent);
        free(wf);
}

/* A workflow timeout is enforced while the run is paused (nobody holds it). */
static void a_paused_run_still_fails_at_its_deadline(void **state)
{
        char *wf = workflow("pausable", PAUSABLE, NULL);
        char *run = worker_test_run(S.db, wf, NULL);
        char *out = NULL, path[128];

        (void)state;
        assert_true(worker_test_wait_status(S.db, run, "waiting", 30000));
        snprintf(path, sizeof(path), "/v1/runs/%s/pause", run);
        assert_int_equal(api_post(path, NULL, &out), 200);
        free(out);
        assert_db_equal("paused", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        assert_db_equal("t", S.db,
                        "SELECT abs(extract(epoch FROM timeout_at - started_at) - 3) < 0.002 "
                        "FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_true(worker_test_wait_status(S.db, run, "failed", 15000));
        assert_db_equal("timeout|true", S.db,
                        "SELECT error->>'class' || '|' || (finished_at >= timeout_at)::text "
                        "FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_db_equal("canceled", S.db,
                        "SELECT status FROM agently_node_latest WHERE workflow_run_id = '%s'", run);
        free(run);
        free(wf);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(every_change_of_status_is_checked_against_the_list),
            cmocka_unit_test(a_claims_first_write_is_checked_as_the_claim_and_its_outcome),
            cmocka_unit_test(the_guard_is_the_list_as_a_constant),
            cmocka_unit_test(a_child_canceled_by_the_api_wakes_its_parent),
            cmocka_unit_test(a_child_stopped_by_a_person_wakes_its_parent),
            cmocka_unit_test(canceling_a_parent_cancels_its_children),
            cmocka_unit_test(a_parent_that_times_out_cancels_its_child_and_closes_its_nodes),
            cmocka_unit_test(a_retried_subworkflow_node_cancels_its_previous_child),
            cmocka_unit_test(a_paused_run_still_fails_at_its_deadline),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
