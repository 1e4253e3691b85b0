/*
 * Schema migrations. The SQL files of migrations/ are embedded in the binary at build time
 * with their SHA-256 (cmake/generate_migrations.cmake). `agently migrate` applies the pending
 * ones in order, each in its own transaction, under a session advisory lock so concurrent
 * migrators queue instead of racing, and records version, name and checksum in
 * agently_schema_migrations. A recorded checksum that differs from the embedded file means an
 * applied migration was edited: that is refused, never silently re-applied.
 */
#pragma once

#include <stddef.h>
#include <libpq-fe.h>

struct db_migration {
        int version;
        const char *name;
        const char *sha256; /* lower-case hex */
        const char *sql;
        size_t len;
};

extern const struct db_migration db_migrations[];
extern const size_t db_migrations_count;

/*
 * Applies every pending migration over c (the owner's connection). *applied (if non-NULL)
 * receives how many were applied. Errors (db_last_error() says which and how to fix):
 * -EBADMSG an applied migration was changed; -EPROTO the database is newer than this binary;
 * other negative errno from Postgres. A failed migration leaves nothing of itself behind.
 */
int db_migrate(PGconn *c, int *applied);

/* 0 when the database has exactly the embedded migrations, -ESTALE when some are pending,
 * -EBADMSG / -EPROTO as above. Cheap enough for /readyz. */
int db_migrations_check(PGconn *c);
