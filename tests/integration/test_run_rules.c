/*
 * The run record's four rules over several columns, BEFORE triggers whose WHEN is the rule
 * negated since 0050_run_rules_when_written.sql (CHECK constraints before): each still
 * refuses what it refused, on an insert and on an update of its columns, with SQLSTATE 23514
 * and the constraint's name; a row that keeps them passes.
 */
#include "testlib.h"
#include "worker_sink.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
        char *owner;
        PGconn *c; /* the owner */
        char *user;
        char *workflow;
} S;

static int setup(void **state)
{
        (void)state;
        S.owner = test_db_create("run_rules");
        S.c = test_db_connect(S.owner);
        S.user = worker_test_user(S.c, "a");
        S.workflow = worker_test_workflow(S.c, S.user, "wf", 1, "{\"name\":\"wf\",\"nodes\":[]}");
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        PQfinish(S.c);
        free(S.owner);
        free(S.user);
        free(S.workflow);
        return 0;
}

/* The SQLSTATE and constraint name of sql's refusal ("" and "" when it passed), rolled back
 * either way: "23514 workflow_runs_check". */
static char *refusal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *refusal(const char *fmt, ...)
{
        char sql[1024], out[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(sql, sizeof(sql), fmt, ap);
        va_end(ap);
        PQclear(test_db_must(S.c, "BEGIN"));
        PGresult *r = PQexec(S.c, sql);
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        const char *con = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
        snprintf(out, sizeof(out), "%s %s", st ? st : "", con ? con : "");
        PQclear(r);
        PQclear(test_db_must(S.c, "ROLLBACK"));
        return strdup(out);
}

#define INSERT_RUN                                                                                 \
        "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, "

static void expect(char *got, const char *want)
{
        assert_string_equal(got, want);
        free(got);
}

static void each_rule_refuses_on_insert(void **state)
{
        (void)state;
        const char *u = S.user, *w = S.workflow;

        expect(refusal(INSERT_RUN "status) VALUES ('%s', '%s', 'wf', 1, 'running')", u, w),
               "23514 workflow_runs_lease_matches_status");
        expect(refusal(INSERT_RUN "claimed_by, lease_expires_at) VALUES ('%s', '%s', 'wf', 1, "
                                  "'w', now())",
                       u, w),
               "23514 workflow_runs_lease_matches_status");
        expect(refusal(INSERT_RUN "status) VALUES ('%s', '%s', 'wf', 1, 'completed')", u, w),
               "23514 workflow_runs_finished_iff_terminal");
        expect(refusal(INSERT_RUN "finished_at) VALUES ('%s', '%s', 'wf', 1, now())", u, w),
               "23514 workflow_runs_finished_iff_terminal");
        expect(refusal(INSERT_RUN "parent_node_id) VALUES ('%s', '%s', 'wf', 1, 'n')", u, w),
               "23514 workflow_runs_check");
        expect(refusal(INSERT_RUN "rerun_from_node) VALUES ('%s', '%s', 'wf', 1, 'n')", u, w),
               "23514 workflow_runs_check1");
        /* rows that keep the rules */
        expect(refusal(INSERT_RUN "status, claimed_by, lease_expires_at) VALUES ('%s', '%s', "
                                  "'wf', 1, 'running', 'w', now())",
                       u, w),
               " ");
        expect(refusal(INSERT_RUN "status, finished_at) VALUES ('%s', '%s', 'wf', 1, "
                                  "'completed', now())",
                       u, w),
               " ");
}

static void each_rule_refuses_on_update(void **state)
{
        (void)state;
        char *run = test_db_value(S.c,
                                  INSERT_RUN "status, claimed_by, lease_expires_at) VALUES "
                                             "('%s', '%s', 'wf', 1, 'running', 'w', now()) "
                                             "RETURNING id",
                                  S.user, S.workflow);

        expect(refusal("UPDATE workflow_runs SET claimed_by = NULL WHERE id = '%s'", run),
               "23514 workflow_runs_lease_matches_status");
        expect(refusal("UPDATE workflow_runs SET lease_expires_at = NULL WHERE id = '%s'", run),
               "23514 workflow_runs_lease_matches_status");
        expect(refusal("UPDATE workflow_runs SET finished_at = now() WHERE id = '%s'", run),
               "23514 workflow_runs_finished_iff_terminal");
        expect(refusal("UPDATE workflow_runs SET parent_node_id = 'n' WHERE id = '%s'", run),
               "23514 workflow_runs_check");
        expect(refusal("UPDATE workflow_runs SET rerun_from_node = 'n' WHERE id = '%s'", run),
               "23514 workflow_runs_check1");
        /* the status with what it implies, in one statement: passes */
        expect(refusal("UPDATE workflow_runs SET status = 'completed', finished_at = now(), "
                       "claimed_by = NULL, lease_expires_at = NULL WHERE id = '%s'",
                       run),
               " ");
        /* a write of other columns (an LLM call's: event seq and totals) passes */
        expect(refusal("UPDATE workflow_runs SET event_seq = event_seq + 3, cost_usd = cost_usd "
                       "+ 0.5 WHERE id = '%s'",
                       run),
               " ");
        free(run);
}

/* The API, which may write finished_at but not the lease, meets the rules as the owner does:
 * the rule's refusal, not a missing privilege on the function that raises it. */
static void the_api_meets_the_rules_too(void **state)
{
        (void)state;
        char *run = test_db_value(S.c,
                                  INSERT_RUN "status) VALUES ('%s', '%s', 'wf', 1, 'queued') "
                                             "RETURNING id",
                                  S.user, S.workflow);
        char *conninfo = test_db_conninfo_as(S.owner, "agently_api");
        PGconn *api = test_db_connect(conninfo);
        char sql[512];

        snprintf(sql, sizeof(sql), "SET agently.user_id = '%s'", S.user);
        PQclear(test_db_must(api, sql));
        snprintf(sql, sizeof(sql), "UPDATE workflow_runs SET finished_at = now() WHERE id = '%s'",
                 run);
        assert_string_equal(test_db_sqlstate(api, sql), "23514");
        PQfinish(api);
        free(conninfo);
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(each_rule_refuses_on_insert),
            cmocka_unit_test(each_rule_refuses_on_update),
            cmocka_unit_test(the_api_meets_the_rules_too),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
