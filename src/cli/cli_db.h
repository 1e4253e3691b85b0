/* Database access for the server-side commands (up, migrate, api, worker, dispatch). */
#pragma once

#include <libpq-fe.h>

#include "db.h"

/* Resolves and opens a connection for role; on failure prints why to stderr and returns a
 * negative errno. */
int cli_db_connect(const char *data_dir, enum db_role role, PGconn **out);

/* Prints "agently <cmd>: <message>" for a failed db call and returns CLI_EXIT_* fitting r. */
int cli_db_fail(const char *what, int r);
