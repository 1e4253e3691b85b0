/*
 * The security model, checked in the catalog and by behaviour: every table with a user_id
 * has row-level security enabled AND forced; agently_api owns nothing and is neither
 * superuser nor BYPASSRLS; no SECURITY DEFINER function is executable by PUBLIC; no view
 * runs as its owner. Then, with rows of two users in EVERY user-owned table: agently_api
 * with no user set sees zero rows everywhere, and user B can neither see, update, delete
 * nor insert A's rows in any table — and A's rows are byte-for-byte unchanged afterwards.
 * Each write probe uses only columns agently_api is granted, so what refuses it is the
 * policy (asserted by row count or by the policy's own error), never a column privilege
 * checked before the policy is reached.
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
    "DECLARE wf uuid; run uuid; ar uuid; ap uuid; created timestamptz; n uuid; sch uuid;\n"
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
    "  INSERT INTO agent_runs (user_id, workflow_run_id, node_id, tokens_in) VALUES (u, run, "
    "'a', 1) RETURNING id INTO ar;\n"
    "  INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, request_sha256) "
    "VALUES (u, ar, 1, 'llm', '{}', encode(sha256('r'), 'hex'));\n"
    "  INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind) VALUES (created, "
    "run, 1, u, 'run.queued');\n"
    "  INSERT INTO signals (user_id, workflow_run_id, name) VALUES (u, run, 'go');\n"
    "  INSERT INTO approvals (user_id, workflow_run_id, node_id, title) VALUES (u, run, 'a', "
    "'ok?') RETURNING id INTO ap;\n"
    "  INSERT INTO approval_links (token_hash, approval_id, user_id, reviewer, decision, "
    "expires_at) VALUES (sha256(convert_to('link' || tag, 'UTF8')), ap, u, 'r', 'approve', "
    "now());\n"
    "  INSERT INTO notifications (user_id, channel, target) VALUES (u, 'email', 'a@example.com') "
    "RETURNING id INTO n;\n"
    "  INSERT INTO notification_attempts (notification_id, attempt, user_id, dispatcher) VALUES "
    "(n, 1, u, 'd');\n"
    "  INSERT INTO artifacts (user_id, workflow_run_id, name, size_bytes, sha256, inline_data) "
    "VALUES (u, run, 'f', 1, encode(sha256('f'), 'hex'), '\\x66');\n"
    "  INSERT INTO browser_sessions (user_id, workflow_run_id, provider) VALUES (u, run, "
    "'local');\n"
    "  INSERT INTO secrets (user_id, name, ciphertext, nonce, wrapped_key, key_version) VALUES (u, "
    "'key', '\\x00', '\\x000000000000000000000000000000000000000000000000', "
    "'\\x00000000000000000000000000000000', 1);\n"
    "  INSERT INTO schedules (user_id, workflow_name, cron) VALUES (u, 'wf', '* * * * *') "
    "RETURNING id INTO sch;\n"
    "  INSERT INTO schedule_ticks (schedule_id, tick, user_id) VALUES (sch, now(), u);\n"
    "  INSERT INTO triggers (user_id, workflow_name, secret_hash) VALUES (u, 'wf', "
    "sha256(convert_to(tag, 'UTF8')));\n"
    "  INSERT INTO api_idempotency (user_id, key, method, path, request_sha256) VALUES (u, 'k', "
    "'POST', '/v1/runs', encode(sha256('x'), 'hex'));\n"
    "  INSERT INTO web_sessions (user_id, token_id, secret_hash, csrf_token, expires_at) SELECT "
    "u, t.id, sha256(convert_to('session ' || tag, 'UTF8')), repeat('c', 43), now() + interval "
    "'1 day' FROM api_tokens t WHERE t.user_id = u;\n"
    "  INSERT INTO agently_watched_runs (run_id, user_id, expires_at) VALUES (run, u, now() + "
    "interval '1 minute');\n"
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
        assert_int_ge(PQntuples(res), 17);
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
        assert_int_ge(test_db_int(f->c, "SELECT count(*) FROM pg_class WHERE relispartition AND "
                                        "relname LIKE 'logs%%' AND relrowsecurity AND "
                                        "relforcerowsecurity"),
                      2);
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

        /* and each sets its own search_path (a CREATE OR REPLACE of one sets its settings
         * anew: a migration that restates one must set it again) */
        char *unpinned = test_db_value(
            f->c, "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p WHERE "
                  "p.prosecdef AND p.pronamespace = 'public'::regnamespace AND NOT EXISTS "
                  "(SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%%')");

        if (unpinned)
                fprintf(stderr, "SECURITY DEFINER functions without a search_path: %s\n", unpinned);
        assert_null(unpinned);
        if (definer)
                fprintf(stderr, "SECURITY DEFINER functions executable by PUBLIC: %s\n", definer);
        if (views)
                fprintf(stderr, "views without security_invoker: %s\n", views);
        assert_null(definer);
        assert_null(views);
}

/* Each table's autovacuum cadence (reloptions): run_queue, small and rewritten by every
 * claim, is vacuumed after a fixed count of dead rows and never truncated (0011, 0031);
 * workflow_runs, the ever-growing run history, at Postgres's default cadence (0042) — a
 * fixed count there meant a pass over all its indexes every few seconds, whose cost grows
 * with the history (docs/performance.md, "The run history's vacuum cadence"); its pages
 * filled to 40 %, so every finish of a turn is a HOT update (0046, 0068). */
static void vacuum_cadence_per_table(void **state)
{
        struct fixture *f = *state;
#define RELOPTIONS(t)                                                                              \
        "SELECT array_to_string(array(SELECT o FROM unnest(reloptions) o ORDER BY o), ',') FROM "  \
        "pg_class WHERE oid = '" t "'::regclass"
        char *history = test_db_value(f->c, RELOPTIONS("workflow_runs"));
        char *queue = test_db_value(f->c, RELOPTIONS("run_queue"));
#undef RELOPTIONS

        assert_string_equal(history, "fillfactor=40");
        assert_string_equal(queue, "autovacuum_vacuum_cost_delay=0,autovacuum_vacuum_insert_"
                                   "scale_factor=0,autovacuum_vacuum_insert_threshold=1000,"
                                   "autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_"
                                   "threshold=1000,fillfactor=70,vacuum_truncate=false");
        free(history);
        free(queue);
}

/* The run history's ANALYZE samples 300 rows per unit of the highest statistics target
 * among its columns, in one transaction whose snapshot every vacuum must respect, run_queue's
 * too; 0044 holds the three history tables, and every logs partition, to a target of 10
 * (3,000 rows). A column added without its target, or a month's partition created without
 * logs' targets, would bring back ANALYZEs ten times as long. */
static void history_tables_sample_small(void **state)
{
        struct fixture *f = *state;
#define HISTORY_COLUMNS_OFF_TARGET                                                                 \
        "SELECT coalesce(string_agg(a.attrelid::regclass || '.' || a.attname || '=' || "           \
        "a.attstattarget, ', ' ORDER BY a.attrelid::regclass::text, a.attnum), '') "               \
        "FROM pg_attribute a WHERE a.attnum > 0 AND NOT a.attisdropped "                           \
        "AND a.attstattarget IS DISTINCT FROM 10 AND a.attrelid IN ("                              \
        "SELECT 'workflow_runs'::regclass UNION ALL SELECT 'node_runs'::regclass UNION ALL "       \
        "SELECT 'logs'::regclass UNION ALL "                                                       \
        "SELECT inhrelid FROM pg_inherits WHERE inhparent = 'logs'::regclass)"
        char *before = test_db_value(f->c, HISTORY_COLUMNS_OFF_TARGET);
        long long partitions = test_db_int(f->c, "SELECT count(*) FROM pg_inherits WHERE "
                                                 "inhparent = 'logs'::regclass");
        /* the dispatcher's maintenance, as agently_worker: two years of months to come */
        char *worker_conninfo = test_db_conninfo_as(f->owner, "agently_worker");
        PGconn *worker = test_db_connect(worker_conninfo);
        long long created = test_db_int(worker, "SELECT agently_ensure_log_partitions(24)");
        char *after = test_db_value(f->c, HISTORY_COLUMNS_OFF_TARGET);
#undef HISTORY_COLUMNS_OFF_TARGET

        assert_string_equal(before, "");
        assert_int_ge(partitions, 2); /* logs_default and this month's at least */
        assert_int_ge(created, 20);
        assert_string_equal(after, "");
        PQfinish(worker);
        free(worker_conninfo);
        free(before);
        free(after);
}

/* What one statement did as agently_api: the rows it affected (or the count it selected),
 * or -1 and the error. */
struct probe {
        long rows;
        char sqlstate[6];
        char message[512];
};

/* Runs sql as agently_api in its own transaction, with user_id set when non-NULL. What got
 * through is committed when commit is set (it must then be visible afterwards), otherwise
 * rolled back (the probes that only show a statement gets past the policy). */
static struct probe api_exec(const char *api_conninfo, const char *user_id, const char *sql,
                             bool commit)
{
        PGconn *c = test_db_connect(api_conninfo);
        struct probe p = {.rows = -1};
        PGresult *res;

        PQclear(test_db_must(c, "BEGIN"));
        if (user_id) {
                char *set = str_printf("SELECT set_config('agently.user_id', '%s', true)", user_id);
                PQclear(test_db_must(c, set));
                free(set);
        }
        res = PQexec(c, sql);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && strncmp(sql, "SELECT", 6) == 0) {
                int64_t v = 0;
                p.rows = 0;
                if (PQntuples(res) > 0 && str_to_int64(PQgetvalue(res, 0, 0), &v) == 0)
                        p.rows = (long)v;
        } else if (PQresultStatus(res) == PGRES_COMMAND_OK ||
                   PQresultStatus(res) == PGRES_TUPLES_OK) {
                int64_t v = 0;
                str_to_int64(PQcmdTuples(res), &v);
                p.rows = (long)v;
        } else {
                const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                str_copy(p.sqlstate, sizeof(p.sqlstate), state ? state : "?????");
                str_copy(p.message, sizeof(p.message), message ? message : "");
        }
        PQclear(res);
        PQclear(PQexec(c, commit && p.rows >= 0 ? "COMMIT" : "ROLLBACK"));
        PQfinish(c);
        return p;
}

#define PROBE_FMT "%s: %s: %ld rows, error %s \"%s\""
#define PROBE_ARGS(t, what, p)                                                                     \
        t, what, (p)->rows, (p)->sqlstate[0] ? (p)->sqlstate : "none", (p)->message

/* The statement ran and touched (or counted) exactly rows rows. */
static void assert_rows(const char *t, const char *what, const struct probe *p, long rows)
{
        if (p->rows != rows)
                fail_msg(PROBE_FMT ", wanted %ld rows", PROBE_ARGS(t, what, p), rows);
}

/* The statement got past the row-level security policy: it ran on at least one row, or only
 * an integrity constraint checked after the policy (SQLSTATE class 23) stopped it. Shows that
 * the same statement aimed at another user's rows met the policy, not a missing privilege. */
static void assert_past_policy(const char *t, const char *what, const struct probe *p)
{
        if (p->rows < 1 && strncmp(p->sqlstate, "23", 2) != 0)
                fail_msg(PROBE_FMT ", wanted it to get past the policy", PROBE_ARGS(t, what, p));
}

/* The row-level security policy itself refused the statement (WITH CHECK). */
static void assert_refused_by_policy(const char *t, const char *what, const struct probe *p)
{
        if (p->rows != -1 || strcmp(p->sqlstate, "42501") != 0 ||
            !strstr(p->message, "row-level security policy"))
                fail_msg(PROBE_FMT ", wanted the row-level security policy to refuse it",
                         PROBE_ARGS(t, what, p));
}

/* The role has no privilege for the statement at all (no policy is reached). */
static void assert_no_privilege(const char *t, const char *what, const struct probe *p)
{
        if (p->rows != -1 || strcmp(p->sqlstate, "42501") != 0 ||
            !strstr(p->message, "permission denied"))
                fail_msg(PROBE_FMT ", wanted permission denied", PROBE_ARGS(t, what, p));
}

/* Whether agently_api holds privilege (SELECT, INSERT, UPDATE) on column col of table t. */
static bool api_may(struct fixture *f, const char *t, const char *col, const char *privilege)
{
        return test_db_int(f->c,
                           "SELECT has_column_privilege('agently_api', '%s', '%s', '%s')::int", t,
                           col, privilege) == 1;
}

/* The columns of t on which agently_api holds privilege, in table order, each with prefix
 * before it and ", " between them; NULL when there are none. */
static char *api_columns(struct fixture *f, const char *t, const char *privilege,
                         const char *prefix)
{
        return test_db_value(f->c,
                             "SELECT string_agg('%s' || quote_ident(attname), ', ' ORDER BY "
                             "attnum) FROM pg_attribute WHERE attrelid = '%s'::regclass AND "
                             "attnum > 0 AND NOT attisdropped AND attidentity = '' AND "
                             "attgenerated = '' AND has_column_privilege('agently_api', "
                             "attrelid, attnum, '%s')",
                             prefix, t, privilege);
}

static void api_with_no_user_sees_nothing(void **state)
{
        struct fixture *f = *state;
        PGresult *tables = user_tables(f->c);

        for (int i = 0; i < PQntuples(tables); i++) {
                const char *t = PQgetvalue(tables, i, 0);
                char *sql = str_printf("SELECT count(*) FROM %s", t);
                long owner_rows = test_db_int(f->c, "SELECT count(*) FROM %s", t);
                struct probe p = api_exec(f->api, NULL, sql, false);

                if (owner_rows < 2)
                        fprintf(stderr,
                                "table %s has no seed rows for both users: add them "
                                "to seed_sql in %s\n",
                                t, __FILE__);
                assert_int_ge(owner_rows, 2);
                /* zero rows where it may read, no SELECT privilege at all elsewhere */
                if (test_db_int(f->c,
                                "SELECT has_any_column_privilege('agently_api', '%s', "
                                "'SELECT')::int",
                                t))
                        assert_rows(t, "select with no user", &p, 0);
                else
                        assert_no_privilege(t, "select with no user", &p);
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

/* Every probe is aimed at the policy: it uses only columns agently_api holds the privilege
 * for, so a refusal comes from the policy and not from a column privilege checked before it;
 * the same statement aimed at B's own rows (rolled back) shows it would otherwise go through.
 * Where the role holds no privilege for a kind of statement, that refusal is asserted. */
static void tenants_cannot_see_or_touch_each_other(void **state)
{
        struct fixture *f = *state;
        PGresult *tables = user_tables(f->c);

        for (int i = 0; i < PQntuples(tables); i++) {
                const char *t = PQgetvalue(tables, i, 0);
                const char *key = strcmp(t, "users") == 0 ? "id" : "user_id";
                const char *a = f->user_a, *b = f->user_b;
                char *before = fingerprint(f, t), *after;
                struct probe p;
                char *sql;

                /* select: B cannot see A's rows, but does see its own */
                sql = str_printf("SELECT count(*) FROM %s WHERE %s = '%s'", t, key, a);
                p = api_exec(f->api, b, sql, false);
                free(sql);
                if (api_may(f, t, key, "SELECT")) {
                        assert_rows(t, "B selects A's rows", &p, 0);
                        sql = str_printf("SELECT count(*) FROM %s WHERE %s = '%s'", t, key, b);
                        p = api_exec(f->api, b, sql, false);
                        free(sql);
                        assert_past_policy(t, "B selects its own rows", &p);
                } else {
                        assert_no_privilege(t, "B selects A's rows", &p);
                }

                /* update: with a column the role may update, A's rows are not there for B
                 * (zero rows, no error), its own are; re-owning its row to A is refused */
                char *update_cols = api_columns(f, t, "UPDATE", "");
                if (update_cols) {
                        char *col = strndup(update_cols, strcspn(update_cols, ","));
                        sql = str_printf("UPDATE %s SET %s = %s WHERE %s = '%s'", t, col, col, key,
                                         a);
                        p = api_exec(f->api, b, sql, true);
                        free(sql);
                        assert_rows(t, "B updates A's rows", &p, 0);
                        sql = str_printf("UPDATE %s SET %s = %s WHERE %s = '%s'", t, col, col, key,
                                         b);
                        p = api_exec(f->api, b, sql, false);
                        free(sql);
                        assert_past_policy(t, "B updates its own rows", &p);
                        if (api_may(f, t, key, "UPDATE")) {
                                sql = str_printf("UPDATE %s SET %s = '%s' WHERE %s = '%s'", t, key,
                                                 a, key, b);
                                p = api_exec(f->api, b, sql, true);
                                free(sql);
                                assert_refused_by_policy(t, "B gives its rows to A", &p);
                        }
                        free(col);
                } else {
                        sql = str_printf("UPDATE %s SET %s = %s WHERE %s = '%s'", t, key, key, key,
                                         a);
                        p = api_exec(f->api, b, sql, true);
                        free(sql);
                        assert_no_privilege(t, "B updates A's rows", &p);
                }
                free(update_cols);

                /* delete: A's rows are not there for B, its own are */
                sql = str_printf("DELETE FROM %s WHERE %s = '%s'", t, key, a);
                p = api_exec(f->api, b, sql, true);
                free(sql);
                if (test_db_int(f->c,
                                "SELECT has_table_privilege('agently_api', '%s', "
                                "'DELETE')::int",
                                t)) {
                        assert_rows(t, "B deletes A's rows", &p, 0);
                        sql = str_printf("DELETE FROM %s WHERE %s = '%s'", t, key, b);
                        p = api_exec(f->api, b, sql, false);
                        free(sql);
                        assert_past_policy(t, "B deletes its own rows", &p);
                } else {
                        assert_no_privilege(t, "B deletes A's rows", &p);
                }

                /* insert: a copy of B's own row (the columns the role may insert), owned by A,
                 * is refused by the policy; the same copy owned by B gets past it */
                char *insert_cols = api_columns(f, t, "INSERT", "");
                if (insert_cols && api_may(f, t, key, "INSERT")) {
                        char *x_cols = api_columns(f, t, "INSERT", "x.");
                        for (int owner = 0; owner < 2; owner++) {
                                char *row = test_db_value(
                                    f->c,
                                    "SELECT quote_literal(to_jsonb(x) || jsonb_build_object('%s', "
                                    "'%s'::uuid, 'id', gen_random_uuid())) FROM %s x WHERE %s = "
                                    "'%s' LIMIT 1",
                                    key, owner ? b : a, t, key, b);
                                assert_non_null(row);
                                sql = str_printf("INSERT INTO %s (%s) SELECT %s FROM "
                                                 "jsonb_populate_record(NULL::%s, %s) x",
                                                 t, insert_cols, x_cols, t, row);
                                p = api_exec(f->api, b, sql, owner == 0);
                                free(sql);
                                free(row);
                                if (owner == 0)
                                        assert_refused_by_policy(t, "B inserts a row owned by A",
                                                                 &p);
                                else
                                        assert_past_policy(t, "B inserts a row of its own", &p);
                        }
                        free(x_cols);
                } else {
                        sql = str_printf("INSERT INTO %s (%s) VALUES ('%s')", t, key, a);
                        p = api_exec(f->api, b, sql, true);
                        free(sql);
                        assert_no_privilege(t, "B inserts a row owned by A", &p);
                }
                free(insert_cols);

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
            cmocka_unit_test(vacuum_cadence_per_table),
            cmocka_unit_test(api_with_no_user_sees_nothing),
            cmocka_unit_test(tenants_cannot_see_or_touch_each_other),
            cmocka_unit_test(history_tables_sample_small),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
