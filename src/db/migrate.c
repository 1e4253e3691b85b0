/* Embedded schema migrations; see migrate.h. */
#include "migrate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "strutil.h"

/* An arbitrary constant: the advisory lock key all migrators agree on ("agently" in hex-ish). */
#define MIGRATE_LOCK_KEY "7293847561"

static const char create_table_sql[] = "CREATE TABLE IF NOT EXISTS agently_schema_migrations ("
                                       " version int PRIMARY KEY,"
                                       " name text NOT NULL,"
                                       " checksum text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";

static const struct db_migration *find_migration(int version)
{
        for (size_t i = 0; i < db_migrations_count; i++)
                if (db_migrations[i].version == version)
                        return &db_migrations[i];
        return NULL;
}

/* Compares what the database recorded with the embedded files; counts pending ones. */
static int verify_applied(PGconn *c, int *pending)
{
        int r, applied_known = 0;
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_pgresult_ PGresult *exists =
            db_query(c, "SELECT to_regclass('agently_schema_migrations') IS NOT NULL", 0, NULL, &r);

        if (!exists)
                return r;
        if (strcmp(PQgetvalue(exists, 0, 0), "t") != 0) {
                *pending = (int)db_migrations_count;
                return 0;
        }
        res = db_query(c,
                       "SELECT version, name, checksum FROM agently_schema_migrations "
                       "ORDER BY version",
                       0, NULL, &r);
        if (!res)
                return r;
        for (int i = 0; i < PQntuples(res); i++) {
                int version;
                const char *name = PQgetvalue(res, i, 1), *sum = PQgetvalue(res, i, 2);
                const struct db_migration *m;

                if (str_to_int(PQgetvalue(res, i, 0), &version) < 0)
                        return -EIO;
                m = find_migration(version);
                if (!m) {
                        db_set_error("the database has migration %s, which this agently does not "
                                     "know: it was migrated by a newer version; upgrade agently",
                                     name);
                        return -EPROTO;
                }
                if (strcmp(m->sha256, sum) != 0) {
                        db_set_error("migration %s was changed after it was applied (recorded "
                                     "checksum %.12s, file now %.12s); restore the original file "
                                     "and put the change in a new migration",
                                     m->name, sum, m->sha256);
                        return -EBADMSG;
                }
                applied_known++;
        }
        *pending = (int)db_migrations_count - applied_known;
        return 0;
}

int db_migrations_check(PGconn *c)
{
        int pending = 0;
        int r = verify_applied(c, &pending);

        if (r < 0)
                return r;
        if (pending > 0) {
                db_set_error("%d migration(s) pending; run `agently migrate`", pending);
                return -ESTALE;
        }
        return 0;
}

static int apply_one(PGconn *c, const struct db_migration *m)
{
        _cleanup_free_ char *version = str_printf("%d", m->version);
        const char *params[] = {version, m->name, m->sha256};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        if (!version)
                return -ENOMEM;
        r = db_begin(c);
        if (r < 0)
                return r;
        r = db_exec(c, m->sql);
        if (r < 0) {
                char reason[1024];
                str_copy(reason, sizeof(reason), db_last_error());
                db_rollback(c);
                db_set_error("migration %s failed: %s", m->name, reason);
                return r;
        }
        res = db_query(c,
                       "INSERT INTO agently_schema_migrations (version, name, checksum) "
                       "VALUES ($1, $2, $3)",
                       3, params, &r);
        if (!res) {
                db_rollback(c);
                return r;
        }
        return db_commit(c);
}

int db_migrate(PGconn *c, int *applied)
{
        int r, pending = 0, done = 0;

        if (applied)
                *applied = 0;
        r = db_exec(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")");
        if (r < 0)
                return r;
        r = db_exec(c, create_table_sql);
        if (r == 0)
                r = verify_applied(c, &pending);
        for (size_t i = 0; r == 0 && pending > 0 && i < db_migrations_count; i++) {
                const struct db_migration *m = &db_migrations[i];
                const char *params[1];
                _cleanup_free_ char *version = str_printf("%d", m->version);
                _cleanup_pgresult_ PGresult *res = NULL;

                if (!version) {
                        r = -ENOMEM;
                        break;
                }
                params[0] = version;
                res = db_query(c, "SELECT 1 FROM agently_schema_migrations WHERE version = $1", 1,
                               params, &r);
                if (!res)
                        break;
                if (PQntuples(res) > 0)
                        continue;
                r = apply_one(c, m);
                if (r == 0)
                        done++;
        }
        /* unlock even after a failure; the session lock also dies with the connection */
        PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
        if (applied)
                *applied = done;
        return r;
}
