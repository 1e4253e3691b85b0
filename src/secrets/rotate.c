/*
 * Key rotation (`agently secret rotate-key`) while the system runs: a new key version,
 * every data key re-wrapped under it in small locked batches, the old versions retired
 * once no row uses them (the rules that make retirement safe against concurrent writers
 * are in migrations/0014_secrets_vault.sql), their local key files deleted last. Readers
 * that read a row just before it moved read it again (secrets_resolve), so runs in flight
 * keep working.
 */
#include "secrets.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "strutil.h"

#define PASSES_MAX 1000

static void set_error(char **error, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **error, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        if (!error)
                return;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        free(*error);
        *error = m;
}

static char *bytea_hex(const unsigned char *p, size_t n)
{
        char *out = malloc(2 + 2 * n + 1);

        if (out) {
                out[0] = '\\';
                out[1] = 'x';
                str_hex(p, n, out + 2);
        }
        return out;
}

static int db_fail(PGconn *db, int r, char **error, const char *what)
{
        set_error(error, "%s: %s", what, db_last_error() ? db_last_error() : strerror(-r));
        (void)db_exec(db, "ROLLBACK");
        return r;
}

/* Proves the provider can wrap and unwrap under the new version before anything changes
 * (and creates the local key file of that version). */
static int check_provider(const struct secrets_kms *k, const char *provider, int version,
                          char **error)
{
        unsigned char dek[SECRETS_DATA_KEY_BYTES], back[SECRETS_DATA_KEY_BYTES];
        _cleanup_free_ char *context = str_printf("agently-rotate-check|%d", version);
        _cleanup_free_ unsigned char *w = NULL;
        size_t wl = 0;
        int r;

        if (!context)
                return -ENOMEM;
        randombytes_buf(dek, sizeof(dek));
        r = secrets_kms_wrap(k, provider, version, context, dek, true, &w, &wl, error);
        if (r == 0)
                r = secrets_kms_unwrap(k, provider, version, context, w, wl, back, error);
        if (r == 0 && sodium_memcmp(dek, back, sizeof(dek)) != 0) {
                set_error(error, "kms provider '%s' unwrapped a different key than it wrapped",
                          provider);
                r = -EIO;
        }
        sodium_memzero(dek, sizeof(dek));
        sodium_memzero(back, sizeof(back));
        return r;
}

/* One batch: up to 100 rows under older versions, locked, moved, committed.
 * Returns how many rows moved, or a negative errno. */
static int rewrap_batch(PGconn *db, const struct secrets_kms *k, int nv, const char *provider,
                        char **error)
{
        _cleanup_free_ char *nvs = str_printf("%d", nv);
        int r = 0, moved = 0;

        if (!nvs)
                return -ENOMEM;
        if ((r = db_begin(db)) < 0)
                return db_fail(db, r, error, "could not begin a re-wrap batch");
        const char *p[] = {nvs};
        _cleanup_pgresult_ PGresult *rows = db_query(
            db,
            "SELECT s.id, s.user_id, s.nonce, s.ciphertext, s.wrapped_key, s.key_version, "
            "k.provider FROM secrets s JOIN secret_key_versions k ON k.version = s.key_version "
            "WHERE s.key_version <> $1::integer ORDER BY s.id LIMIT 100 FOR UPDATE OF s",
            1, p, &r);
        if (!rows)
                return db_fail(db, r, error, "could not read the secrets to re-wrap");
        for (int i = 0; i < PQntuples(rows); i++) {
                struct secrets_sealed s = {0};
                size_t nl = 0;
                unsigned char *nonce =
                    PQunescapeBytea((const unsigned char *)PQgetvalue(rows, i, 2), &nl);
                s.ciphertext = PQunescapeBytea((const unsigned char *)PQgetvalue(rows, i, 3),
                                               &s.ciphertext_len);
                s.wrapped_key =
                    PQunescapeBytea((const unsigned char *)PQgetvalue(rows, i, 4), &s.wrapped_len);
                (void)str_to_int(PQgetvalue(rows, i, 5), &s.key_version);
                r = nonce && s.ciphertext && s.wrapped_key ? 0 : -ENOMEM;
                if (r == 0 && nl != SECRETS_NONCE_BYTES)
                        r = -EBADMSG;
                if (r == 0) {
                        memcpy(s.nonce, nonce, nl);
                        /* PQunescapeBytea memory is PQfreemem'd: move into malloc'd copies */
                        unsigned char *ct = malloc(s.ciphertext_len ? s.ciphertext_len : 1);
                        unsigned char *wk = malloc(s.wrapped_len ? s.wrapped_len : 1);
                        if (ct && wk) {
                                memcpy(ct, s.ciphertext, s.ciphertext_len);
                                memcpy(wk, s.wrapped_key, s.wrapped_len);
                        }
                        PQfreemem(s.ciphertext);
                        PQfreemem(s.wrapped_key);
                        s.ciphertext = ct;
                        s.wrapped_key = wk;
                        r = ct && wk ? 0 : -ENOMEM;
                } else {
                        PQfreemem(s.ciphertext);
                        PQfreemem(s.wrapped_key);
                        s.ciphertext = s.wrapped_key = NULL;
                }
                PQfreemem(nonce);
                _cleanup_free_ char *why = NULL;
                if (r == 0)
                        r = secrets_rewrap(k, PQgetvalue(rows, i, 1), PQgetvalue(rows, i, 0),
                                           PQgetvalue(rows, i, 6), provider, nv, &s, &why);
                if (r < 0) {
                        secrets_sealed_free(&s);
                        set_error(error, "could not re-wrap secret %s (key version %s): %s",
                                  PQgetvalue(rows, i, 0), PQgetvalue(rows, i, 5),
                                  why             ? why
                                  : r == -EBADMSG ? "it does not decrypt under its key version"
                                                  : strerror(-r));
                        (void)db_exec(db, "ROLLBACK");
                        return r;
                }
                _cleanup_free_ char *nonce_hex = bytea_hex(s.nonce, sizeof(s.nonce));
                _cleanup_free_ char *ct_hex = bytea_hex(s.ciphertext, s.ciphertext_len);
                _cleanup_free_ char *wk_hex = bytea_hex(s.wrapped_key, s.wrapped_len);
                secrets_sealed_free(&s);
                if (!nonce_hex || !ct_hex || !wk_hex) {
                        (void)db_exec(db, "ROLLBACK");
                        return -ENOMEM;
                }
                const char *u[] = {PQgetvalue(rows, i, 0), nonce_hex, ct_hex, wk_hex, nvs};
                _cleanup_pgresult_ PGresult *up =
                    db_query(db,
                             "UPDATE secrets SET nonce = $2::bytea, ciphertext = $3::bytea, "
                             "wrapped_key = $4::bytea, key_version = $5::integer WHERE id = $1",
                             5, u, &r);
                if (!up)
                        return db_fail(db, r, error, "could not store a re-wrapped secret");
                moved++;
        }
        if ((r = db_commit(db)) < 0)
                return db_fail(db, r, error, "could not commit a re-wrap batch");
        return moved;
}

/* Retires every older live version no row uses. Returns how many are still in use (0:
 * done), or a negative errno. *retired counts the ones retired now. */
static int retire_old(PGconn *db, int nv, int *retired, char **error)
{
        _cleanup_free_ char *nvs = str_printf("%d", nv);
        int r = 0, busy = 0;

        if (!nvs)
                return -ENOMEM;
        const char *p[] = {nvs};
        _cleanup_pgresult_ PGresult *old = db_query(
            db,
            "SELECT version FROM secret_key_versions WHERE version < $1::integer AND retired_at "
            "IS NULL ORDER BY version",
            1, p, &r);
        if (!old)
                return db_fail(db, r, error, "could not list the old key versions");
        for (int i = 0; i < PQntuples(old); i++) {
                const char *v[] = {PQgetvalue(old, i, 0)};
                if ((r = db_begin(db)) < 0)
                        return db_fail(db, r, error, "could not begin retiring a key version");
                /* waits for every writer still holding the version (its KEY SHARE lock) */
                _cleanup_pgresult_ PGresult *lock = db_query(
                    db, "SELECT 1 FROM secret_key_versions WHERE version = $1::integer FOR UPDATE",
                    1, v, &r);
                if (!lock)
                        return db_fail(db, r, error, "could not lock an old key version");
                /* a new statement: it sees what those writers committed */
                _cleanup_pgresult_ PGresult *done = db_query(
                    db,
                    "UPDATE secret_key_versions SET retired_at = now() WHERE version = "
                    "$1::integer AND NOT EXISTS (SELECT 1 FROM secrets WHERE key_version = "
                    "$1::integer) RETURNING version",
                    1, v, &r);
                if (!done)
                        return db_fail(db, r, error, "could not retire an old key version");
                if ((r = db_commit(db)) < 0)
                        return db_fail(db, r, error, "could not commit retiring a key version");
                if (PQntuples(done) == 1)
                        (*retired)++;
                else
                        busy++;
        }
        return busy;
}

/* Deletes the key files of retired local versions (those still there). */
static int delete_retired_files(PGconn *db, const struct secrets_kms *k, char **error)
{
        int r = 0;
        _cleanup_pgresult_ PGresult *res =
            db_query(db,
                     "SELECT version FROM secret_key_versions WHERE retired_at IS NOT NULL AND "
                     "provider = 'local'",
                     0, NULL, &r);

        if (!res)
                return db_fail(db, r, error, "could not list the retired key versions");
        for (int i = 0; i < PQntuples(res); i++) {
                int v = 0;
                (void)str_to_int(PQgetvalue(res, i, 0), &v);
                _cleanup_free_ char *path = secrets_kms_key_path(k, v);
                if (!path)
                        return -ENOMEM;
                if (unlink(path) < 0 && errno != ENOENT) {
                        set_error(error, "could not delete the retired key file %s: %s", path,
                                  strerror(errno));
                        return -errno;
                }
        }
        return 0;
}

int secrets_rotate(PGconn *db, const struct secrets_kms *k, struct secrets_rotation *report,
                   char **error)
{
        const char *provider = secrets_kms_new_provider(k);
        int r = 0, nv = 0;

        *report = (struct secrets_rotation){.provider = provider};
        _cleanup_pgresult_ PGresult *lock = db_query(
            db, "SELECT pg_advisory_lock(hashtext('agently.secrets.rotate'))", 0, NULL, &r);
        if (!lock)
                return db_fail(db, r, error, "could not take the rotation lock");
        {
                _cleanup_pgresult_ PGresult *next =
                    db_query(db, "SELECT COALESCE(max(version), 0) + 1 FROM secret_key_versions", 0,
                             NULL, &r);
                if (!next) {
                        r = db_fail(db, r, error, "could not read the key versions");
                        goto unlock;
                }
                (void)str_to_int(PQgetvalue(next, 0, 0), &nv);
        }
        r = check_provider(k, provider, nv, error);
        if (r < 0)
                goto unlock;
        {
                _cleanup_free_ char *nvs = str_printf("%d", nv);
                const char *p[] = {nvs, provider};
                _cleanup_pgresult_ PGresult *ins =
                    nvs ? db_query(db,
                                   "INSERT INTO secret_key_versions (version, provider) VALUES "
                                   "($1::integer, $2)",
                                   2, p, &r)
                        : NULL;
                if (!ins) {
                        r = nvs ? db_fail(db, r, error, "could not add the new key version")
                                : -ENOMEM;
                        goto unlock;
                }
        }
        report->new_version = nv;
        /* from here new seals use nv; move every row, then retire what nothing uses */
        for (report->passes = 1; report->passes <= PASSES_MAX; report->passes++) {
                int moved;
                while ((moved = rewrap_batch(db, k, nv, provider, error)) > 0)
                        report->rewrapped += moved;
                if (moved < 0) {
                        r = moved;
                        goto unlock;
                }
                r = retire_old(db, nv, &report->retired, error);
                if (r <= 0)
                        break;
        }
        if (r > 0) {
                set_error(error,
                          "old key versions are still being written after %d passes; run "
                          "rotate-key again",
                          PASSES_MAX);
                r = -EBUSY;
                goto unlock;
        }
        if (r == 0)
                r = delete_retired_files(db, k, error);
unlock:;
        _cleanup_pgresult_ PGresult *un = db_query(
            db, "SELECT pg_advisory_unlock(hashtext('agently.secrets.rotate'))", 0, NULL, NULL);
        return r;
}
