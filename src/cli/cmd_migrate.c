/* `agently migrate`: apply pending migrations (see src/db/migrate.h). */
#include <stdbool.h>
#include <stdio.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_db.h"
#include "log.h"
#include "migrate.h"

#define MIGRATE_DESCRIPTION                                                                        \
        "Applies pending schema migrations to the database named by\n"                             \
        "AGENTLY_DATABASE_URL, or to the embedded Postgres under --data-dir\n"                     \
        "(default ./.agently). Re-running is a no-op."

static const struct cli_flag migrate_flags[] = {
    {"data-dir", 0, "DIR", "the embedded default's data directory"},
    {"check", 0, NULL, "only report; exit 1 if migrations are pending"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

int cmd_migrate(int argc, char **argv)
{
        const char *data_dir;
        _cleanup_pgconn_ PGconn *c = NULL;
        struct cli_args args;
        int r, applied = 0;
        bool check;

        r = cli_role_args("migrate", "migrate [--data-dir DIR] [--check]", MIGRATE_DESCRIPTION,
                          migrate_flags, argc, argv, &args);
        if (r >= 0)
                return r;
        data_dir = cli_args_get(migrate_flags, &args, "data-dir");
        check = cli_args_get(migrate_flags, &args, "check") != NULL;
        r = cli_db_connect(data_dir, DB_ROLE_OWNER, &c);
        if (r < 0)
                return cli_db_fail("could not reach the database", r);
        if (check) {
                r = db_migrations_check(c);
                if (r < 0)
                        return cli_db_fail("migrations are not current", r);
                printf("migrations current (%zu applied)\n", db_migrations_count);
                return CLI_EXIT_OK;
        }
        r = db_migrate(c, &applied);
        if (r < 0)
                return cli_db_fail("could not migrate", r);
        if (applied == 0)
                printf("database is up to date (%zu migrations)\n", db_migrations_count);
        else
                printf("applied %d migration(s); database is up to date\n", applied);
        return CLI_EXIT_OK;
}
