/*
 * `agently migrate` against real databases: a fresh database gets every migration once,
 * re-running is a no-op, concurrent migrators do not race, and an applied migration that
 * was changed is refused with a message that says which and what to do.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate.h"
#include "strutil.h"

/* Runs `agently migrate [extra]` against conninfo; returns the exit code, output in *out. */
static int run_migrate(const char *conninfo, const char *extra, char **out)
{
        char *log = test_tempdir("migrate");
        char *path = str_printf("%s/out", log);
        char *env = str_printf("AGENTLY_DATABASE_URL=%s", conninfo);
        const char *args[] = {"migrate", extra, NULL};
        const char *envv[] = {env, NULL};
        pid_t pid = test_spawn_agently(args, envv, path);
        int status = test_stop_process(pid, 0, 60000);
        size_t len = 0;
        FILE *f = fopen(path, "r");

        *out = calloc(1, 8192);
        if (f) {
                len = fread(*out, 1, 8191, f);
                fclose(f);
        }
        (*out)[len] = '\0';
        test_rm_rf(log);
        free(log);
        free(path);
        free(env);
        if (status == -1 || !WIFEXITED(status))
                fail_msg("agently migrate did not exit within 60 s (wait status %d): %s", status,
                         *out);
        return WEXITSTATUS(status);
}

static void fresh_database_gets_every_migration_once(void **state)
{
        char *conninfo = test_db_create_empty("migfresh");
        PGconn *c = test_db_connect(conninfo);
        char *out = NULL;

        assert_int_equal(run_migrate(conninfo, NULL, &out), 0);
        assert_non_null(strstr(out, "applied"));
        free(out);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM agently_schema_migrations"),
                         (long long)db_migrations_count);
        char *applied_at =
            test_db_value(c, "SELECT max(applied_at)::text FROM agently_schema_migrations");

        /* re-running is a no-op: nothing applied, nothing rewritten */
        assert_int_equal(run_migrate(conninfo, NULL, &out), 0);
        assert_non_null(strstr(out, "up to date"));
        free(out);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM agently_schema_migrations"),
                         (long long)db_migrations_count);
        char *again =
            test_db_value(c, "SELECT max(applied_at)::text FROM agently_schema_migrations");
        assert_string_equal(applied_at, again);
        assert_int_equal(run_migrate(conninfo, "--check", &out), 0);
        free(out);
        free(applied_at);
        free(again);
        PQfinish(c);
        free(conninfo);
}

static void concurrent_migrators_queue_instead_of_racing(void **state)
{
        char *conninfo = test_db_create_empty("migrace");
        char *env = str_printf("AGENTLY_DATABASE_URL=%s", conninfo);
        const char *args[] = {"migrate", NULL};
        const char *envv[] = {env, NULL};
        pid_t pids[4];

        for (int i = 0; i < 4; i++)
                pids[i] = test_spawn_agently(args, envv, "/dev/null");
        for (int i = 0; i < 4; i++) {
                assert_exit_code(test_stop_process(pids[i], 0, 60000), 0);
        }
        PGconn *c = test_db_connect(conninfo);
        assert_int_equal(test_db_int(c, "SELECT count(*) FROM agently_schema_migrations"),
                         (long long)db_migrations_count);
        PQfinish(c);
        free(env);
        free(conninfo);
}

static void changed_applied_migration_is_refused(void **state)
{
        char *conninfo = test_db_create("migchanged");
        PGconn *c = test_db_connect(conninfo);
        char *out = NULL;
        const char *name = db_migrations[db_migrations_count > 1 ? 1 : 0].name;

        /* the same as editing the file after it was applied: the checksums now differ */
        PQclear(test_db_must(c,
                             "UPDATE agently_schema_migrations SET checksum = "
                             "'0000000000000000000000000000000000000000000000000000000000000000' "
                             "WHERE version = 2"));
        assert_int_equal(run_migrate(conninfo, NULL, &out), 1);
        assert_non_null(strstr(out, name));
        assert_non_null(strstr(out, "was changed after it was applied"));
        assert_non_null(strstr(out, "new migration"));
        free(out);
        assert_int_equal(run_migrate(conninfo, "--check", &out), 1);
        free(out);

        /* a database migrated by a newer agently is refused too */
        PQclear(test_db_must(c, "INSERT INTO agently_schema_migrations (version, name, checksum) "
                                "VALUES (9999, '9999_future.sql', 'x')"));
        PQclear(test_db_must(c, "DELETE FROM agently_schema_migrations WHERE version = 2"));
        assert_int_equal(run_migrate(conninfo, NULL, &out), 1);
        assert_non_null(strstr(out, "newer version"));
        free(out);
        PQfinish(c);
        free(conninfo);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(fresh_database_gets_every_migration_once),
            cmocka_unit_test(concurrent_migrators_queue_instead_of_racing),
            cmocka_unit_test(changed_applied_migration_is_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
