/*
 * `agently secret`: the client verbs (set, list, delete — over the REST API, cmd_client)
 * and `agently secret rotate-key`, which runs server-side like `migrate`: it needs the
 * database owner's connection (every user's secrets) and the KMS keys (src/secrets/rotate.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_db.h"
#include "secrets.h"
#include "strutil.h"

#define ROTATE_DESCRIPTION                                                                         \
        "Adds a new key version (the command KMS provider when AGENTLY_KMS_COMMAND is set,\n"      \
        "else a new local key file), re-wraps every secret's data key under it while the\n"        \
        "system runs, and retires the old versions once nothing uses them (their local key\n"      \
        "files are deleted). Runs where the database owner's URL (AGENTLY_DATABASE_URL, or the\n"  \
        "embedded Postgres under --data-dir) and the keys are, like `agently migrate`."

static const struct cli_flag rotate_flags[] = {
    {"data-dir", 0, "DIR", "the data directory (embedded Postgres, master.key)"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rotate_key(int argc, char **argv)
{
        _cleanup_pgconn_ PGconn *c = NULL;
        _cleanup_free_ char *error = NULL;
        struct secrets_rotation rep;
        struct secrets_kms kms;
        struct cli_args args;
        const char *data_dir;
        double began;
        int r;

        r = cli_role_args("secret rotate-key", "secret rotate-key [--data-dir DIR]",
                          ROTATE_DESCRIPTION, rotate_flags, argc, argv, &args);
        if (r >= 0)
                return r;
        data_dir = cli_args_get(rotate_flags, &args, "data-dir");
        if (str_is_empty(data_dir))
                data_dir = getenv("AGENTLY_DATA_DIR");
        r = cli_db_connect(data_dir, DB_ROLE_OWNER, &c);
        if (r < 0)
                return cli_db_fail("could not reach the database", r);
        if (secrets_kms_init(&kms, data_dir && *data_dir ? data_dir : NULL) < 0) {
                fprintf(stderr, "agently secret rotate-key: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        /* the KMS command may exit before reading: its exit status says why, not SIGPIPE */
        signal(SIGPIPE, SIG_IGN);
        began = now_s();
        r = secrets_rotate(c, &kms, &rep, &error);
        secrets_kms_release(&kms);
        if (r < 0) {
                fprintf(stderr, "agently secret rotate-key: %s\n",
                        error ? error : "could not rotate the key");
                return CLI_EXIT_FAILURE;
        }
        printf("key version %d (%s) is live: re-wrapped %ld secret(s), retired %d old "
               "version(s) in %.2f s\n",
               rep.new_version, rep.provider, rep.rewrapped, rep.retired, now_s() - began);
        return CLI_EXIT_OK;
}

int cmd_secret(int argc, char **argv)
{
        for (int i = 1; i < argc; i++) {
                if (argv[i][0] == '-')
                        continue;
                if (strcmp(argv[i], "rotate-key") == 0)
                        return rotate_key(argc - i, argv + i);
                break;
        }
        return cmd_client(argc, argv);
}
