/*
 * The test suite's Postgres: `pg_harness start DIR` creates a throwaway cluster under DIR
 * (with the same code as `agently up`, so that code is tested too), starts it, migrates the
 * `agently` database that tests clone as a template, and lets the api and worker roles log
 * in. `pg_harness stop DIR` stops it and removes DIR. Run by ctest as the `pg` fixture.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "cleanup.h"
#include "db.h"
#include "embedded_pg.h"
#include "migrate.h"

static int fail(const char *what)
{
        fprintf(stderr, "pg_harness: %s: %s\n", what, db_last_error());
        return 1;
}

static void remove_tree(const char *dir)
{
        pid_t pid = fork();

        if (pid == 0) {
                execlp("rm", "rm", "-rf", "--", dir, (char *)NULL);
                _exit(127);
        }
        if (pid > 0)
                waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
        struct embedded_pg *pg = NULL;
        _cleanup_free_ char *conninfo = NULL;
        _cleanup_pgconn_ PGconn *c = NULL;
        int applied = 0;

        if (argc != 3 || (strcmp(argv[1], "start") != 0 && strcmp(argv[1], "stop") != 0)) {
                fprintf(stderr, "usage: pg_harness start|stop DIR\n");
                return 2;
        }
        if (strcmp(argv[1], "stop") == 0) {
                if (embedded_pg_open(argv[2], &pg) == 0) {
                        /* the cluster is removed next: nothing to checkpoint */
                        if (embedded_pg_stop_discarding(pg) < 0)
                                fprintf(stderr, "pg_harness: %s\n", db_last_error());
                        /* a relocated cluster home lives outside DIR */
                        if (embedded_pg_initialized(pg) &&
                            strncmp(embedded_pg_cluster_dir(pg), argv[2], strlen(argv[2])) != 0) {
                                char *home = strdup(embedded_pg_cluster_dir(pg));
                                char *slash = home ? strrchr(home, '/') : NULL;
                                if (slash) {
                                        *slash = '\0';
                                        remove_tree(home);
                                }
                                free(home);
                        }
                        embedded_pg_free(pg);
                }
                remove_tree(argv[2]);
                return 0;
        }

        /* a cluster left over by an interrupted earlier run is stopped and discarded */
        if (embedded_pg_open(argv[2], &pg) == 0) {
                embedded_pg_stop(pg);
                embedded_pg_free(pg);
                pg = NULL;
        }
        remove_tree(argv[2]);
        if (embedded_pg_open(argv[2], &pg) < 0)
                return fail("could not open");
        if (embedded_pg_init(pg, EMBEDDED_PG_FAST) < 0)
                return fail("could not create the cluster");
        if (embedded_pg_start(pg) < 0)
                return fail("could not start the cluster");
        conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        if (db_connect(conninfo, &c) < 0)
                return fail("could not connect");
        if (db_migrate(c, &applied) < 0)
                return fail("could not migrate the template");
        if (bootstrap_embedded_roles(c) < 0)
                return fail("could not enable the role logins");
        printf("pg_harness: cluster %s on port %d, %d migrations applied to the template\n",
               embedded_pg_cluster_dir(pg), embedded_pg_port(pg), applied);
        embedded_pg_free(pg);
        return 0;
}
