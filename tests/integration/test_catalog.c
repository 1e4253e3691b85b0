/*
 * The security model, checked in the catalog and by behaviour: every table with a user_id
 * has row-level security enabled AND forced; agently_api owns nothing and is neither
 * superuser nor BYPASSRLS; no SECURITY DEFINER function is executable by PUBLIC; no view
 * runs as its owner. Then, with rows of two users in EVERY user-owned table: agently_api
 * with no user set sees zero rows everywhere, and user B can neither see, update, delete
 * nor insert A's rows in any table — and A's rows are byte-for-byte unchanged afterwards.
 *
 * Tables are discovered from the catalog, so a table added later is covered automatically;
 * the seed below must give it rows (the test says so when it does not).
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strutil.h"

static const char seed_sql[] =
    "CREATE FUNCTION test_seed(u uuid, tag text) RETURNS void LANGUAGE plpgsql AS $$\n"
    "DECLARE wf uuid; run uuid; ar uuid; created timestamptz;\n"
    "BEGIN\n"
    "  INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) VALUES (u, 't', "
    "sha256(convert_to(tag, 'UTF8')), 'agt_x');\n"
    "  INSERT INTO agents (user_id, name, version, definition, definition_sha256) VALUES (u, "
    "'agent', 1, '{}', encode(sha256('a'), 'hex'));\n"
    "  INSERT INTO workflows (user_id, name, version, definition, definition_sha256) VALUES (u, "
    "'wf', 1, '{\"name\":\"wf\",\"nodes\":[]}', encode(sha256('w'), 'hex')) RETURNING id INTO wf;\n"
    "  INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version) VALUES "
    "(u, wf, 'wf', 1) RETURNING id, created_at INTO run, created;\n"
    "  INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status) VALUES (u, run, "
    "'a', 1, 'started');\n"
    "  INSERT INTO agent_runs (user_id, workflow_run_id, node_id) VALUES (u, run, 'a') RETURNING "
    "id INTO ar;\n"
    "  INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, request_sha256) "
    "VALUES (u, ar, 1, 'llm', '{}', encode(sha256('r'), 'hex'));\n"
    "  INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind) VALUES (created, "
    "run, 1, u, 'run.queued');\n"
    "  INSERT INTO signals (user_id, workflow_run_id, name) VALUES (u, run, 'go');\n"
    "  INSERT INTO approvals (user_id, workflow_run_id, node_id, title) VALUES (u, run, 'a', "
    "'ok?');\n"
    "  INSERT INTO notifications (user_id, channel, target) VALUES (u, 'email', 'a@example.com');\n"
    "  INSERT INTO artifacts (user_id, workflow_run_id, name, size_bytes, sha256, inline_data) "
    "VALUES (u, run, 'f', 1, encode(sha256('f'), 'hex'), '\\x66');\n"
    "  INSERT INTO browser_sessions (user_id, workflow_run_id, provider) VALUES (u, run, "
    "'local');\n"
    "  INSERT INTO secrets (user_id, name, ciphertext, nonce, wrapped_key, key_version) VALUES (u, "
    "'key', '\\x00', '\\x000000000000000000000000000000000000000000000000', "
    "'\\x00000000000000000000000000000000', 1);\n"
    "  INSERT INTO schedules (user_id, workflow_name, cron) VALUES (u, 'wf', '* * * * *');\n"
    "  INSERT INTO triggers (user_id, workflow_name, secret_hash) VALUES (u, 'wf', "
    "sha256(convert_to(tag, 'UTF8')));\n"
    "  INSERT INTO api_idempotency (user_id, key, method, path, request_sha256) VALUES (u, 'k', "
    "'POST', '/v1/runs', encode(sha256('x'), 'hex'));\n"
    "END $$;\n";

/* user-owned tables: those with a user_id column, plus users itself; no partitions */
static const char user_tables_sql[] =
    "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
    "AND c.relkind IN ('r','p') AND NOT c.relispartition AND (c.relname = 'users' OR "
    "EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = "
    "'user_id' AND NOT a.attisdropped)) ORDER BY 1";

struct fixture {
        char *owner;
        char *api;
        PGconn *c;
        char *user_a;
        char *user_b;
};

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        f->owner = test_db_create("catalog");
        f->api = test_db_conninfo_as(f->owner, "agently_api");
        f->c = test_db_connect(f->owner);
        PQclear(test_db_must(f->c, seed_sql));
        f->user_a = test_db_value(f->c, "INSERT INTO users (name) VALUES ('alice') RETURNING id");
        f->user_b = test_db_value(f->c, "INSERT INTO users (name) VALUES ('bob') RETURNING id");
        free(test_db_value(f->c, "SELECT test_seed('%s', 'a')", f->user_a));
        free(test_db_value(f->c, "SELECT test_seed('%s', 'b')", f->user_b));
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        PQfinish(f->c);
        free(f->owner);
        free(f->api);
        free(f->user_a);
        free(f->user_b);
        free(f);
        return 0;
}

static PGresult *user_tables(PGconn *c)
{
        PGresult *res = test_db_must(c, user_tables_sql);

        /* the data model of DESIGN.md has at least these 17 user-owned tables */
        assert_true(PQntuples(res) >= 17);
        return res;
}

static void every_user_table_has_forced_rls(void **state)
{
        struct fixture *f = *state;
        char *bad = test_db_value(
            f->c, "SELECT string_agg(c.oid::regclass::text, ', ') FROM pg_class c "
                  "WHERE c.relkind IN ('r','p') AND c.relnamespace = 'public'::regnamespace "
                  "AND (c.relname = 'users' OR EXISTS (SELECT 1 FROM pg_attribute a WHERE "
                  "a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)) "
                  "AND NOT (c.relrowsecurity AND c.relforcerowsecurity)");

        if (bad)
                fprintf(stderr, "tables without ENABLE+FORCE ROW LEVEL SECURITY: %s\n", bad);
        assert_null(bad);
        /* partitions of logs are covered too */
        assert_true(test_db_int(f->c, "SELECT count(*) FROM pg_class WHERE relispartition AND "
                                      "relname LIKE 'logs%%' AND relrowsecurity AND "
                                      "relforcerowsecurity") >= 2);
}

static void api_role_owns_nothing_and_is_unprivileged(void **state)
{
        struct fixture *f = *state;

        for (int i = 0; i < 2; i++) {
                const char *role = i == 0 ? "agently_api" : "agently_worker";
                assert_int_equal(test_db_int(f->c,
                                             "SELECT count(*) FROM pg_roles WHERE rolname = '%s' "
                                             "AND NOT rolsuper AND NOT rolbypassrls AND NOT "
                                             "rolcreaterole AND NOT rolcreatedb",
                                             role),
                                 1);
                assert_int_equal(
                    test_db_int(f->c,
                                "SELECT (SELECT count(*) FROM pg_class WHERE relowner = "
                                "'%1$s'::regrole) + (SELECT count(*) FROM pg_proc WHERE "
                                "proowner = '%1$s'::regrole) + (SELECT count(*) FROM "
                                "pg_namespace WHERE nspowner = '%1$s'::regrole) + (SELECT "
                                "count(*) FROM pg_type WHERE typowner = '%1$s'::regrole) + "
                                "(SELECT count(*) FROM pg_database WHERE datdba = "
                                "'%1$s'::regrole)",
                                role),
                    0);
                assert_int_equal(test_db_int(f->c,
                                             "SELECT count(*) FROM pg_namespace WHERE "
                                             "has_schema_privilege('%s', oid, 'CREATE') AND "
                                             "nspname = 'public'",
                                             role),
                                 0);
        }
}

static void no_definer_function_for_public_and_no_owner_views(void **state)
{
        struct fixture *f = *state;
        char *definer =
            test_db_value(f->c, "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p "
                                "WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace AND "
                                "(p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a "
                                "WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))");
        char *views =
            test_db_value(f->c, "SELECT string_agg(relname, ', ') FROM pg_class WHERE relkind IN "
                                "('v','m') AND relnamespace = 'public'::regnamespace AND NOT "
                                "coalesce(reloptions @> '{security_invoker=true}' OR reloptions @> "
                                "'{security_invoker=on}', false)");

        if (definer)
                fprintf(stderr, "SECURITY DEFINER functions executable by PUBLIC: %s\n", definer);
        if (views)
                fprintf(stderr, "views without security_invoker: %s\n", views);
        assert_null(definer);
        assert_null(views);
}

/* Runs sql as agently_api in its own transaction, with user_id set when non-NULL.
 * Returns the rows affected/returned, or -1 with the SQLSTATE in state_out. */
static long api_exec(const char *api_conninfo, const char *user_id, const char *sql,
                     char *state_out)
{
        PGconn *c = test_db_connect(api_conninfo);
        PGresult *res;
        long n = -1;

        PQclear(test_db_must(c, "BEGIN"));
        if (user_id) {
                char *set = str_printf("SELECT set_config('agently.user_id', '%s', true)", user_id);
                PQclear(test_db_must(c, set));
                free(set);
        }
        res = PQexec(c, sql);
        state_out[0] = '\0';
        if (PQresultStatus(res) == PGRES_TUPLES_OK && strncmp(sql, "SELECT", 6) == 0) {
                n = 0;
                int64_t v = 0;
                if (PQntuples(res) > 0 && str_to_int64(PQgetvalue(res, 0, 0), &v) == 0)
                        n = (long)v;
        } else if (PQresultStatus(res) == PGRES_COMMAND_OK ||
                   PQresultStatus(res) == PGRES_TUPLES_OK) {
                int64_t v = 0;
                str_to_int64(PQcmdTuples(res), &v);
                n = (long)v;
        } else {
                const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                str_copy(state_out, 6, s ? s : "?????");
        }
        PQclear(res);
        /* commit what was allowed: anything that got through must be visible afterwards */
        PQclear(PQexec(c, n >= 0 ? "COMMIT" : "ROLLBACK"));
        PQfinish(c);
        return n;
}

static void api_with_no_user_sees_nothing(void **state)
{
        struct fixture *f = *state;
        PGresult *tables = user_tables(f->c);

        for (int i = 0; i < PQntuples(tables); i++) {
                const char *t = PQgetvalue(tables, i, 0);
                char sqlstate[6];
                char *sql = str_printf("SELECT count(*) FROM %s", t);
                long owner_rows = test_db_int(f->c, "SELECT count(*) FROM %s", t);
                long n = api_exec(f->api, NULL, sql, sqlstate);

                if (owner_rows < 2)
                        fprintf(stderr,
                                "table %s has no seed rows for both users: add them "
                                "to seed_sql in %s\n",
                                t, __FILE__);
                assert_true(owner_rows >= 2);
                if (n != 0)
                        fprintf(stderr, "%s: agently_api with no user saw %ld rows (%s)\n", t, n,
                                sqlstate);
                /* zero rows, or no SELECT privilege at all (42501) */
                assert_true(n == 0 || strcmp(sqlstate, "42501") == 0);
                free(sql);
        }
        PQclear(tables);
}

/* A fingerprint of everything user A owns in table t, read as the owner. */
static char *fingerprint(struct fixture *f, const char *t)
{
        const char *key = strcmp(t, "users") == 0 ? "id" : "user_id";

        return test_db_value(f->c,
                             "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' "
                             "ORDER BY x::text)), '') FROM %s x WHERE %s = '%s'",
                             t, key, f->user_a);
}

static void tenants_cannot_see_or_touch_each_other(void **state)
{
        struct fixture *f = *state;
        PGresult *tables = user_tables(f->c);

        for (int i = 0; i < PQntuples(tables); i++) {
                const char *t = PQgetvalue(tables, i, 0);
                const char *key = strcmp(t, "users") == 0 ? "id" : "user_id";
                char *before = fingerprint(f, t), *after;
                char sqlstate[6];
                char *sql;
                long n;

                /* select: B cannot see A's rows, but does see its own */
                sql = str_printf("SELECT count(*) FROM %s WHERE %s = '%s'", t, key, f->user_a);
                n = api_exec(f->api, f->user_b, sql, sqlstate);
                assert_true(n == 0 || strcmp(sqlstate, "42501") == 0);
                free(sql);
                sql = str_printf("SELECT count(*) FROM %s WHERE %s = '%s'", t, key, f->user_b);
                n = api_exec(f->api, f->user_b, sql, sqlstate);
                if (n < 1)
                        fprintf(stderr, "%s: user B cannot see its own rows (%s)\n", t, sqlstate);
                assert_true(n >= 1 || strcmp(sqlstate, "42501") == 0);
                free(sql);

                /* update and delete: zero rows affected, or not permitted at all */
                sql = str_printf("UPDATE %s SET %s = %s WHERE %s = '%s'", t, key, key, key,
                                 f->user_a);
                n = api_exec(f->api, f->user_b, sql, sqlstate);
                assert_true(n == 0 || strcmp(sqlstate, "42501") == 0);
                free(sql);
                sql = str_printf("DELETE FROM %s WHERE %s = '%s'", t, key, f->user_a);
                n = api_exec(f->api, f->user_b, sql, sqlstate);
                assert_true(n == 0 || strcmp(sqlstate, "42501") == 0);
                free(sql);

                /* insert: a copy of B's own row, re-owned to A, is refused */
                if (strcmp(t, "users") != 0) {
                        char *cols = test_db_value(
                            f->c,
                            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) "
                            "FROM pg_attribute WHERE attrelid = '%s'::regclass AND attnum > 0 "
                            "AND NOT attisdropped AND attidentity = '' AND attgenerated = ''",
                            t);
                        sql = str_printf("INSERT INTO %1$s (%2$s) SELECT %2$s FROM "
                                         "jsonb_populate_record(NULL::%1$s, (SELECT to_jsonb(x) "
                                         "|| jsonb_build_object('user_id', '%3$s'::uuid, 'id', "
                                         "gen_random_uuid()) FROM %1$s x WHERE user_id = '%4$s' "
                                         "LIMIT 1))",
                                         t, cols, f->user_a, f->user_b);
                        n = api_exec(f->api, f->user_b, sql, sqlstate);
                        if (n >= 0)
                                fprintf(stderr, "%s: user B inserted a row owned by A\n", t);
                        assert_int_equal(n, -1);
                        assert_string_equal(sqlstate, "42501");
                        free(sql);
                        free(cols);
                } else {
                        n = api_exec(f->api, f->user_b,
                                     "INSERT INTO users (name) VALUES ('mallory')", sqlstate);
                        assert_int_equal(n, -1);
                        assert_string_equal(sqlstate, "42501");
                }

                after = fingerprint(f, t);
                if (strcmp(before, after) != 0)
                        fprintf(stderr, "%s: A's rows changed: %s -> %s\n", t, before, after);
                assert_string_equal(before, after);
                free(before);
                free(after);
        }
        PQclear(tables);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(every_user_table_has_forced_rls),
            cmocka_unit_test(api_role_owns_nothing_and_is_unprivileged),
            cmocka_unit_test(no_definer_function_for_public_and_no_owner_views),
            cmocka_unit_test(api_with_no_user_sees_nothing),
            cmocka_unit_test(tenants_cannot_see_or_touch_each_other),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
