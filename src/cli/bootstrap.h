/* First-start set-up shared by `agently up` and the test harness. */
#pragma once

#include <libpq-fe.h>

/*
 * Makes sure an admin user exists and, when <data_dir>/admin-token is missing, mints a new
 * admin API token and writes it there (mode 0600). c is the owner's connection (superuser or
 * BYPASSRLS). *token_path receives the malloc'd file path; *created is 1 when a token was
 * written now. Returns 0 or a negative errno (message in db_last_error()).
 */
int bootstrap_admin(PGconn *c, const char *data_dir, char **token_path, int *created);

/* Embedded clusters only: lets agently_api and agently_worker log in over the private
 * socket (trust), so each role connects as itself rather than through SET ROLE. */
int bootstrap_embedded_roles(PGconn *c);
