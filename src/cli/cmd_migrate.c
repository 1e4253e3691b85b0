/* `agently migrate`: apply pending migrations (see src/db/migrate.h). */
#include <getopt.h>
#include <stdio.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_db.h"
#include "log.h"
#include "migrate.h"

static void migrate_usage(FILE *out)
{
        fprintf(out, "usage: agently migrate [--data-dir DIR] [--check]\n\n"
                     "Applies pending schema migrations to the database named by\n"
                     "AGENTLY_DATABASE_URL, or to the embedded Postgres under --data-dir\n"
                     "(default ./.agently). Re-running is a no-op.\n\n"
                     "  --data-dir DIR  the embedded default's data directory\n"
                     "  --check         only report; exit 1 if migrations are pending\n");
}

int cmd_migrate(int argc, char **argv)
{
        static const struct option options[] = {
            {"data-dir", required_argument, NULL, 'd'},
            {"check", no_argument, NULL, 'c'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        const char *data_dir = NULL;
        _cleanup_pgconn_ PGconn *c = NULL;
        int opt, r, applied = 0, check = 0;

        while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
                switch (opt) {
                case 'd':
                        data_dir = optarg;
                        break;
                case 'c':
                        check = 1;
                        break;
                case 'h':
                        migrate_usage(stdout);
                        return CLI_EXIT_OK;
                default:
                        migrate_usage(stderr);
                        return CLI_EXIT_USAGE;
                }
        }
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
