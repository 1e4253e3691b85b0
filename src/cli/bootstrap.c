/* First-start set-up: admin user and token, login roles for the embedded cluster. */
#include "bootstrap.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "auth_token.h"
#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "strutil.h"

int bootstrap_embedded_roles(PGconn *c)
{
        return db_exec(c, "ALTER ROLE agently_api LOGIN; ALTER ROLE agently_worker LOGIN");
}

int bootstrap_admin(PGconn *c, const char *data_dir, char **token_path, int *created)
{
        _cleanup_free_ char *path = str_printf("%s/admin-token", data_dir);
        _cleanup_pgresult_ PGresult *user = NULL, *tok = NULL;
        char token[AUTH_TOKEN_LEN + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char hash_hex[2 + 2 * AUTH_TOKEN_HASH_BYTES + 1];
        int r;

        *created = 0;
        if (!path)
                return -ENOMEM;
        r = db_begin(c);
        if (r < 0)
                return r;
        user = db_query(c,
                        "WITH ins AS (INSERT INTO users (name, is_admin) VALUES ('admin', true) "
                        "ON CONFLICT (name) DO NOTHING RETURNING id) "
                        "SELECT id FROM ins UNION ALL SELECT id FROM users WHERE name = 'admin'",
                        0, NULL, &r);
        if (!user || PQntuples(user) < 1)
                goto fail;
        if (access(path, F_OK) == 0) {
                r = db_commit(c);
                *token_path = TAKE_PTR(path);
                return r;
        }
        r = auth_token_generate(token, hash, shown);
        if (r < 0)
                goto fail;
        auth_token_hash_hex(hash, hash_hex);
        const char *params[] = {PQgetvalue(user, 0, 0), hash_hex, shown};
        tok = db_query(c,
                       "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) "
                       "VALUES ($1, 'admin (agently up)', $2::bytea, $3)",
                       3, params, &r);
        if (!tok)
                goto fail;
        /* write the file before committing: a crash in between leaves an unused row, never
         * a token nobody can read */
        char line[AUTH_TOKEN_LEN + 2];
        snprintf(line, sizeof(line), "%s\n", token);
        r = file_write_atomic(path, line, strlen(line), 0600);
        if (r < 0) {
                db_set_error("could not write %s: %s", path, strerror(-r));
                goto fail;
        }
        r = db_commit(c);
        if (r < 0) {
                unlink(path);
                return r;
        }
        *created = 1;
        *token_path = TAKE_PTR(path);
        return 0;
fail:
        db_rollback(c);
        return r < 0 ? r : -EIO;
}
