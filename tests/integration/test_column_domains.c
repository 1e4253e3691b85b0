/*
 * The single-column limits of the hot tables as domains (0039_column_domains.sql).
 *
 * every_limit_still_refuses: each limit of workflow_runs, run_queue, node_runs, agent_runs,
 * agent_journal and logs (and of agently_event_counters, 0059) refuses a value just past it with
 * SQLSTATE 23514 (check_violation) and takes the value at it (or NULL where NULL was allowed). It
 * holds on the schema before 0039 as after: it guards the refusals, whichever object states them.
 *
 * the_rewritten_rules_refuse_what_the_regexes_refused: the two domains whose rule was a
 * regular expression with a bounded repeat (0043 states them as a length and a negated
 * class) take exactly the values the expression takes, at and past each edge (on 0039 as
 * after 0043).
 *
 * the_upgrade_rewrites_no_table: a database migrated to 0038 with rows in every one of those
 * tables is upgraded; no table (logs' partitions included) and no index gets a new file but
 * the partial indexes that name a changed column, the single-column CHECKs left are the ones
 * 0039 keeps, and the views and triggers it dropped and made again read and fire as before.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "worker_sink.h"

static const char WF[] = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"sleep\","
                         "\"duration\":\"1s\"}]}";

/* The six tables 0039 changes. */
#define HOT_TABLES                                                                                 \
        "('workflow_runs'::regclass, 'run_queue'::regclass, 'node_runs'::regclass, "               \
        "'agent_runs'::regclass, 'agent_journal'::regclass, 'logs'::regclass)"

/* One row of each hot table for user ada: a running run (its queue row claimed), a node
 * row, an agent run with one journal entry and a log event. */
static void one_row_each(PGconn *db)
{
        char *user = worker_test_user(db, "ada");
        /* named as the edge of its limit that every_limit_still_refuses sets the run's
         * workflow_name to: since 0048 a run carries its version's name */
        char *wf = worker_test_workflow(db, user, "a.b-c_9", 1, WF);
        char *run = worker_test_run(db, wf, NULL);

        test_run_move(db, "true", "running", NULL);
        PQclear(test_db_must(db, "UPDATE run_queue SET claimed_by = 'test', lease_expires_at = "
                                 "now() + interval '1 minute'"));
        PQclear(test_db_must(db, "INSERT INTO node_runs (user_id, workflow_run_id, node_id, "
                                 "attempt, status) SELECT user_id, id, 'a', 1, 'started' FROM "
                                 "workflow_runs"));
        PQclear(test_db_must(db, "INSERT INTO agent_runs (user_id, workflow_run_id, node_id) "
                                 "SELECT user_id, id, 'a' FROM workflow_runs"));
        PQclear(test_db_must(db, "INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, "
                                 "request, request_sha256) SELECT user_id, id, 1, 'llm', '{}', "
                                 "repeat('a', 64) FROM agent_runs"));
        PQclear(test_db_must(db, "INSERT INTO logs (run_created_at, workflow_run_id, user_id, "
                                 "seq, kind, node_id, attempt, message) SELECT created_at, id, "
                                 "user_id, 1, 'node.started', 'a', 1, 'started' FROM "
                                 "workflow_runs"));
        free(user);
        free(wf);
        free(run);
}

/* A limit: `sql` with %s replaced by `good` must succeed, by `bad` fail with 23514. */
struct limit_case {
        const char *limit;
        const char *sql;
        const char *good;
        const char *bad;
};

#define RUN_SET "UPDATE workflow_runs SET "
#define RUN_INSERT(col)                                                                            \
        "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, " col   \
        ") SELECT user_id, id, name, version, %s FROM workflows"
/* A counters row of a backend that does not exist; each counter is not a hot table's but is
 * written in every turn (a domain since 0059). */
#define COUNTER_INSERT(col)                                                                        \
        "INSERT INTO agently_event_counters (backend_pid, " col ") VALUES (-1, %s)"
#define LOG_INSERT(col)                                                                            \
        "INSERT INTO logs (run_created_at, workflow_run_id, user_id, seq, kind, " col ") SELECT "  \
        "created_at, id, user_id, 2, 'k', %s FROM workflow_runs"

static const struct limit_case limits[] = {
    {"workflow_runs.workflow_name", RUN_SET "workflow_name = %s", "'a.b-c_9'", "'Bad'"},
    {"workflow_runs.workflow_version", RUN_SET "workflow_version = %s", "1", "0"},
    {"workflow_runs.status", RUN_INSERT("status"), "'queued'", "'bogus'"},
    {"workflow_runs.priority", RUN_SET "priority = %s", "-1000", "-1001"},
    {"workflow_runs.priority", RUN_SET "priority = %s", "1000", "1001"},
    {"workflow_runs.claimed_by", RUN_SET "claimed_by = %s", "repeat('w', 200)", "repeat('w', 201)"},
    {"workflow_runs.lease_epoch", RUN_SET "lease_epoch = %s", "0", "-1"},
    {"workflow_runs.attempt", RUN_SET "attempt = %s", "0", "-1"},
    {"workflow_runs.idempotency_key", RUN_SET "idempotency_key = %s", "repeat('k', 255)", "''"},
    {"workflow_runs.idempotency_key", RUN_SET "idempotency_key = %s", "NULL", "repeat('k', 256)"},
    {"workflow_runs.input", RUN_SET "input = %s", "'{}'", "'[]'"},
    {"workflow_runs.engine_state", RUN_SET "engine_state = %s", "'{\"a\":1}'", "'1'"},
    {"workflow_runs.event_seq", RUN_SET "event_seq = %s", "0", "-1"},
    {"workflow_runs.wait_reason", RUN_SET "wait_reason = %s", "repeat('x', 1000)",
     "repeat('x', 1001)"},
    {"workflow_runs.wait_reason", RUN_SET "wait_reason = %s", "NULL", "repeat('x', 1001)"},
    {"workflow_runs.parent_node_id", RUN_SET "parent_run_id = id, parent_node_id = %s",
     "repeat('n', 200)", "''"},
    {"workflow_runs.rerun_from_node", RUN_SET "rerun_of = id, rerun_from_node = %s", "'n'",
     "repeat('n', 201)"},
    {"workflow_runs.budgets", RUN_SET "budgets = %s", "'{}'", "'\"x\"'"},
    {"workflow_runs.cost_usd", RUN_SET "cost_usd = %s", "0", "-0.000001"},
    {"workflow_runs.tokens_in", RUN_SET "tokens_in = %s", "0", "-1"},
    {"workflow_runs.tokens_out", RUN_SET "tokens_out = %s", "0", "-1"},
    {"workflow_runs.agent_versions", RUN_SET "agent_versions = %s", "'{}'", "'null'"},
    {"workflow_runs.time_scale", RUN_SET "time_scale = %s", "0.001", "0.0009"},
    {"workflow_runs.time_scale", RUN_SET "time_scale = %s", "1000000", "1000000.5"},
    {"run_queue.claimed_by", "UPDATE run_queue SET claimed_by = %s", "repeat('w', 200)",
     "repeat('w', 201)"},
    {"run_queue.lease_epoch", "UPDATE run_queue SET lease_epoch = %s", "0", "-1"},
    {"run_queue.attempt", "UPDATE run_queue SET attempt = %s", "0", "-1"},
    {"agently_event_counters.claims", COUNTER_INSERT("claims"), "0", "-1"},
    {"agently_event_counters.rescues", COUNTER_INSERT("rescues"), "0", "-1"},
    {"agently_event_counters.retries", COUNTER_INSERT("retries"), "0", "-1"},
    {"agently_event_counters.completed", COUNTER_INSERT("completed"), "0", "-1"},
    {"agently_event_counters.failed", COUNTER_INSERT("failed"), "0", "-1"},
    {"agently_event_counters.canceled", COUNTER_INSERT("canceled"), "0", "-1"},
    {"node_runs.node_id", "UPDATE node_runs SET node_id = %s", "repeat('n', 200)", "''"},
    {"node_runs.node_id", "UPDATE node_runs SET node_id = %s", "'a'", "repeat('n', 201)"},
    {"node_runs.attempt", "UPDATE node_runs SET attempt = %s", "1", "0"},
    {"node_runs.status", "UPDATE node_runs SET finished_at = now(), status = %s", "'completed'",
     "'bogus'"},
    {"node_runs.worker", "UPDATE node_runs SET worker = %s", "repeat('w', 200)",
     "repeat('w', 201)"},
    {"node_runs.lease_epoch", "UPDATE node_runs SET lease_epoch = %s", "NULL", "-1"},
    {"node_runs.idempotency_key", "UPDATE node_runs SET idempotency_key = %s", "''",
     "repeat('k', 256)"},
    {"agent_runs.node_id", "UPDATE agent_runs SET node_id = %s", "repeat('n', 200)", "''"},
    {"agent_runs.attempt", "UPDATE agent_runs SET attempt = %s", "1", "0"},
    {"agent_runs.status", "UPDATE agent_runs SET finished_at = now(), status = %s", "'completed'",
     "'bogus'"},
    {"agent_runs.model", "UPDATE agent_runs SET model = %s", "repeat('m', 200)",
     "repeat('m', 201)"},
    {"agent_runs.tokens_in", "UPDATE agent_runs SET tokens_in = %s", "0", "-1"},
    {"agent_runs.tokens_out", "UPDATE agent_runs SET tokens_out = %s", "0", "-1"},
    {"agent_runs.cached_tokens_in", "UPDATE agent_runs SET cached_tokens_in = %s", "0", "-1"},
    {"agent_runs.cost_usd", "UPDATE agent_runs SET cost_usd = %s", "0", "-1"},
    {"agent_runs.tool_calls", "UPDATE agent_runs SET tool_calls = %s", "0", "-1"},
    {"agent_runs.llm_calls", "UPDATE agent_runs SET llm_calls = %s", "0", "-1"},
    {"agent_runs.budget", "UPDATE agent_runs SET budget = %s", "'{}'", "'[]'"},
    {"agent_journal.seq", "UPDATE agent_journal SET seq = %s", "2", "0"},
    {"agent_journal.kind", "UPDATE agent_journal SET kind = %s", "'result'", "'bogus'"},
    {"agent_journal.request_sha256", "UPDATE agent_journal SET request_sha256 = %s",
     "repeat('0', 64)", "repeat('A', 64)"},
    {"logs.seq",
     "INSERT INTO logs (run_created_at, workflow_run_id, user_id, kind, seq) SELECT "
     "created_at, id, user_id, 'k', %s FROM workflow_runs",
     "2", "0"},
    {"logs.kind",
     "INSERT INTO logs (run_created_at, workflow_run_id, user_id, seq, kind) SELECT "
     "created_at, id, user_id, 2, %s FROM workflow_runs",
     "repeat('k', 100)", "''"},
    {"logs.kind",
     "INSERT INTO logs (run_created_at, workflow_run_id, user_id, seq, kind) SELECT "
     "created_at, id, user_id, 2, %s FROM workflow_runs",
     "'k'", "repeat('k', 101)"},
    {"logs.node_id", LOG_INSERT("node_id"), "''", "repeat('n', 201)"},
    {"logs.attempt", LOG_INSERT("attempt"), "0", "-1"},
    {"logs.level", LOG_INSERT("level"), "'warn'", "'fatal'"},
    {"logs.message", LOG_INSERT("message"), "repeat('m', 65536)", "repeat('m', 65537)"},
    {"logs.blob_ref", LOG_INSERT("blob_ref"), "NULL", "repeat('b', 2001)"},
};

/* Runs sql with value in a transaction rolled back; returns the SQLSTATE of its failure, or
 * "" when it succeeded (malloc'd). */
static char *try_value(PGconn *db, const char *sql, const char *value)
{
        char *text = NULL;
        PGresult *res;
        char *state;

        const char *hole = strstr(sql, "%s");

        assert_non_null(hole);
        assert_int_ge(asprintf(&text, "%.*s%s%s", (int)(hole - sql), sql, value, hole + 2), 0);
        PQclear(test_db_must(db, "BEGIN"));
        res = PQexec(db, text);
        if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK)
                state = strdup("");
        else {
                state = strdup(PQresultErrorField(res, PG_DIAG_SQLSTATE));
                if (strcmp(state, "23514") != 0)
                        fprintf(stderr, "%s: %s", text, PQresultErrorMessage(res));
        }
        PQclear(res);
        PQclear(test_db_must(db, "ROLLBACK"));
        free(text);
        assert_non_null(state);
        return state;
}

static void every_limit_still_refuses(void **state)
{
        char *conninfo = test_db_create("limits");
        PGconn *db = test_db_connect(conninfo);

        (void)state;
        one_row_each(db);
        for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
                char *good = try_value(db, limits[i].sql, limits[i].good);
                char *bad = try_value(db, limits[i].sql, limits[i].bad);

                if (strcmp(good, "") != 0 || strcmp(bad, "23514") != 0)
                        fail_msg("%s: %s gives '%s' (want success), %s gives '%s' (want 23514)",
                                 limits[i].limit, limits[i].good, good, limits[i].bad, bad);
                free(good);
                free(bad);
        }
        PQfinish(db);
        free(conninfo);
}

/* The two domains whose rule was a regular expression with a bounded repeat (0039), stated
 * since 0043 as a length and a negated class: each must take exactly the values the
 * regular expression takes (NULL passes), at and past every edge. */
struct regex_rule {
        const char *domain;
        const char *regex;
        const char *const *values;
};

static const char *const sha256_values[] = {"repeat('0', 64)",
                                            "repeat('f', 64)",
                                            "repeat('0123456789abcdef', 4)",
                                            "NULL",
                                            "''",
                                            "repeat('a', 63)",
                                            "repeat('a', 65)",
                                            "repeat('a', 63) || 'g'",
                                            "repeat('a', 63) || 'A'",
                                            "repeat('a', 63) || '/'",
                                            "repeat('a', 63) || ':'",
                                            "repeat('a', 63) || '`'",
                                            "repeat('a', 63) || ' '",
                                            "repeat('a', 63) || E'\\n'",
                                            "repeat('a', 64) || E'\\n'",
                                            "E'\\n' || repeat('a', 64)",
                                            "repeat('a', 63) || 'é'",
                                            "repeat('a', 62) || 'é'",
                                            "'A' || repeat('a', 63)",
                                            NULL};

static const char *const name_values[] = {"'a'",
                                          "'0'",
                                          "'z9'",
                                          "'a.-_'",
                                          "'a' || repeat('_', 62)",
                                          "repeat('a', 63)",
                                          "repeat('9', 63)",
                                          "NULL",
                                          "''",
                                          "repeat('a', 64)",
                                          "'_a'",
                                          "'.a'",
                                          "'-a'",
                                          "'_' || repeat('a', 62)",
                                          "'A'",
                                          "'aB'",
                                          "'a b'",
                                          "' a'",
                                          "E'a\\n'",
                                          "E'\\na'",
                                          "'é'",
                                          "'aé'",
                                          "'a/'",
                                          "'a,'",
                                          "'a:'",
                                          "'a`'",
                                          "'a{'",
                                          "'a$'",
                                          "'a^'",
                                          "'a+'",
                                          "'a' || repeat('b', 62) || '-'",
                                          "'a' || repeat('b', 62) || 'c'",
                                          NULL};

static const struct regex_rule regex_rules[] = {
    {"agently_sha256_hex", "^[0-9a-f]{64}$", sha256_values},
    {"agently_definition_name", "^[a-z0-9][a-z0-9_.-]{0,62}$", name_values},
};

static void the_rewritten_rules_refuse_what_the_regexes_refused(void **state)
{
        char *conninfo = test_db_create("regexes");
        PGconn *db = test_db_connect(conninfo);

        (void)state;
        for (size_t i = 0; i < sizeof(regex_rules) / sizeof(regex_rules[0]); i++) {
                const struct regex_rule *r = &regex_rules[i];
                char *cast = NULL;

                assert_int_ge(asprintf(&cast, "SELECT (%%s)::%s", r->domain), 0);
                for (const char *const *v = r->values; *v; v++) {
                        char *matches =
                            test_db_value(db, "SELECT coalesce((%s) ~ '%s', true)", *v, r->regex);
                        char *got = try_value(db, cast, *v);

                        assert_non_null(matches);
                        if (strcmp(got, strcmp(matches, "t") == 0 ? "" : "23514") != 0)
                                fail_msg("%s: %s %s '%s' but the domain gives '%s'", r->domain, *v,
                                         strcmp(matches, "t") == 0 ? "matches" : "does not match",
                                         r->regex, got);
                        free(matches);
                        free(got);
                }
                free(cast);
        }
        PQfinish(db);
        free(conninfo);
}

/* The hot tables' non-internal triggers, with their WHEN clauses as the catalog prints them
 * (a domain's column prints with a cast to its base type: the text is compared with the
 * casts taken out) and whether they are enabled. */
static const char TRIGGERS[] =
    "SELECT string_agg(tgrelid::regclass || '.' || tgname || ' ' || tgenabled::text || ' ' || "
    "regexp_replace(pg_get_triggerdef(oid), "
    "'\\(((new|old)\\.[a-z_]+)\\)::(bigint|integer|numeric|text)', "
    "'\\1', 'g'), "
    "E'\\n' ORDER BY tgrelid::regclass::text, tgname) FROM pg_trigger WHERE NOT tgisinternal "
    "AND tgrelid IN " HOT_TABLES;

static void the_upgrade_rewrites_no_table(void **state)
{
        char *conninfo = test_db_create_empty("domains");
        PGconn *db = test_db_connect(conninfo);
        char *triggers_before, *triggers_after;

        (void)state;
        test_db_migrate_range(db, 1, 38);
        /* logs: this month's partition and the next, and the default one */
        free(test_db_value(db, "SELECT agently_ensure_log_partitions(1)"));
        one_row_each(db);
        PQclear(test_db_must(
            db, "CREATE TEMPORARY TABLE files_before AS SELECT c.oid::regclass::text AS rel, "
                "pg_relation_filenode(c.oid) AS file FROM pg_class c WHERE c.relkind IN ('r', "
                "'i', 't') AND (c.relnamespace = current_schema()::regnamespace OR c.oid IN "
                "(SELECT reltoastrelid FROM pg_class WHERE relnamespace = "
                "current_schema()::regnamespace))"));
        triggers_before = test_db_value(db, "%s", TRIGGERS);
        assert_non_null(triggers_before);

        test_db_migrate_range(db, 39, 39);

        /* every table and its toast keep their files; of the indexes, only the partial ones
         * over a column that changed type are built again */
        assert_db_equal("agent_runs_running_idx agent_runs_waiting_idx run_queue_due_idx "
                        "run_queue_lease_idx workflow_runs_parked_idx workflow_runs_timeout_idx",
                        db,
                        "SELECT coalesce(string_agg(rel, ' ' ORDER BY rel), 'none') FROM "
                        "files_before WHERE pg_relation_filenode(rel::regclass) IS DISTINCT "
                        "FROM file");
        assert_db_equal("0", db,
                        "SELECT count(*) FROM files_before f JOIN pg_class c ON c.oid = "
                        "f.rel::regclass WHERE c.relkind <> 'i' AND pg_relation_filenode(c.oid) "
                        "<> f.file");
        /* the single-column CHECKs 0039 keeps, and no more */
        assert_db_equal("agent_runs.agent_runs_node_id_check logs.logs_seq_check "
                        "node_runs.node_runs_attempt_check node_runs.node_runs_node_id_check "
                        "run_queue.run_queue_attempt_check run_queue.run_queue_lease_epoch_check",
                        db,
                        "SELECT string_agg(conrelid::regclass || '.' || conname, ' ' ORDER BY "
                        "conrelid::regclass::text, conname) FROM pg_constraint WHERE contype = "
                        "'c' AND cardinality(conkey) = 1 AND conrelid IN " HOT_TABLES);
        /* the rows, through the views made again, with their options and grants */
        assert_db_equal("1 1 1 1 1 1", db,
                        "SELECT (SELECT count(*) FROM workflow_runs) || ' ' || (SELECT count(*) "
                        "FROM run_queue) || ' ' || (SELECT count(*) FROM agently_node_latest) || "
                        "' ' || (SELECT count(*) FROM agent_runs) || ' ' || (SELECT count(*) "
                        "FROM agent_journal) || ' ' || (SELECT count(*) FROM logs)");
        assert_db_equal(
            "{security_invoker=true} {security_invoker=true} true true true false", db,
            "SELECT (SELECT reloptions::text FROM pg_class WHERE oid = "
            "'agently_inbox'::regclass) || ' ' || (SELECT reloptions::text FROM pg_class "
            "WHERE oid = 'agently_node_latest'::regclass) || ' ' || "
            "has_table_privilege('agently_api', 'agently_inbox', 'SELECT') || ' ' || "
            "has_table_privilege('agently_api', 'agently_node_latest', 'SELECT') || "
            "' ' || has_table_privilege('agently_worker', 'agently_node_latest', "
            "'SELECT') || ' ' || has_table_privilege('agently_worker', "
            "'agently_inbox', 'SELECT')");
        /* the triggers made again: the same, enabled, with the same conditions */
        triggers_after = test_db_value(db, "%s", TRIGGERS);
        assert_non_null(triggers_after);
        assert_string_equal(triggers_after, triggers_before);

        /* the months to come (CREATE TABLE ... LIKE logs) take the domains, and refuse */
        free(test_db_value(db, "SELECT agently_ensure_log_partitions(6)"));
        assert_db_equal("agently_log_level", db,
                        "SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = "
                        "format('logs_%%s', to_char(now() AT TIME ZONE 'UTC' + interval '6 "
                        "months', 'YYYYMM'))::regclass AND attname = 'level'");
        {
                PGresult *res = PQexec(db, "INSERT INTO logs (run_created_at, workflow_run_id, "
                                           "user_id, seq, kind, level) SELECT now() + interval "
                                           "'6 months', id, user_id, 1, 'k', 'fatal' FROM "
                                           "workflow_runs");
                assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "23514");
                PQclear(res);
        }
        free(triggers_before);
        free(triggers_after);
        PQfinish(db);
        free(conninfo);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(every_limit_still_refuses),
            cmocka_unit_test(the_rewritten_rules_refuse_what_the_regexes_refused),
            cmocka_unit_test(the_upgrade_rewrites_no_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
