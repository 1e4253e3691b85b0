/*
 * The vault over the database: sealing for storage under the live key version, and the one
 * resolver that opens a user's secret at the moment a request needs it. Every value this
 * process opens or seals is kept in a table of known values (locked memory) and registered
 * with the redaction choke point, so that whatever this process sends out afterwards —
 * a response that echoes the value included — has it masked as [secret:NAME].
 */
#include "secrets.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "buf.h"
#include "cleanup.h"
#include "db.h"
#include "redact.h"
#include "strutil.h"

#define RESOLVE_ATTEMPTS 3

bool secrets_name_valid(const char *name)
{
        size_t n = name ? strlen(name) : 0;

        if (n < 1 || n > 63)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = name[i];
                bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                            (c >= '0' && c <= '9') || c == '_';
                if (!word && (i == 0 || (c != '.' && c != '-')))
                        return false;
        }
        return true;
}

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

/* ---- the values this process knows ---- */

struct known {
        char *value; /* sodium_malloc'd, NUL-terminated */
        size_t len;
        char *escaped; /* the value as it appears inside a JSON string, when different */
        size_t escaped_len;
};

static pthread_mutex_t known_lock = PTHREAD_MUTEX_INITIALIZER;
static struct known known_values[SECRETS_KNOWN_MAX];
static size_t known_n;

/* A copy of s (n bytes) in locked memory. */
static char *locked_copy(const char *s, size_t n)
{
        char *c = sodium_malloc(n + 1);
        if (c) {
                memcpy(c, s, n);
                c[n] = '\0';
        }
        return c;
}

/* The value's JSON string form without the quotes, in locked memory; NULL when it is the
 * same as the value (or out of memory: the raw form is still masked). */
static char *json_escaped(const char *value, size_t len, size_t *out_len)
{
        json_t *s = json_stringn_nocheck(value, len);
        char *text = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        char *out = NULL;

        if (s)
                sodium_memzero((char *)json_string_value(s), len);
        json_decref(s);
        if (!text)
                return NULL;
        size_t tl = strlen(text);
        if (tl >= 2 && (tl - 2 != len || memcmp(text + 1, value, len) != 0)) {
                out = locked_copy(text + 1, tl - 2);
                *out_len = tl - 2;
        }
        sodium_memzero(text, tl);
        free(text);
        return out;
}

/*
 * Keeps value (len bytes) as a known value of secret name and registers it for masking.
 * *kept (optional) borrows the kept copy. Takes ownership of value (sodium_malloc'd) in
 * every case. 0 or -ENOSPC / -ENOMEM.
 */
static int know_value(const char *name, char *value, size_t len, const char **kept)
{
        int r = 0;

        pthread_mutex_lock(&known_lock);
        for (size_t i = 0; i < known_n; i++)
                if (known_values[i].len == len &&
                    sodium_memcmp(known_values[i].value, value, len) == 0) {
                        sodium_free(value);
                        if (kept)
                                *kept = known_values[i].value;
                        goto out;
                }
        if (known_n == SECRETS_KNOWN_MAX) {
                sodium_free(value);
                r = -ENOSPC;
                goto out;
        }
        struct known *k = &known_values[known_n];
        *k = (struct known){.value = value, .len = len};
        k->escaped = json_escaped(value, len, &k->escaped_len);
        /* shorter than REDACT_MIN_LEN cannot be masked (README "Limits"); -ENOSPC of the
         * masker cannot happen: it holds twice SECRETS_KNOWN_MAX patterns */
        r = redact_register(name, value, len);
        if (r >= 0 && k->escaped)
                r = redact_register(name, k->escaped, k->escaped_len);
        if (r == -ENOMEM) {
                redact_unregister(value);
                sodium_free(k->escaped);
                sodium_free(value);
                goto out;
        }
        r = 0;
        known_n++;
        if (kept)
                *kept = value;
out:
        pthread_mutex_unlock(&known_lock);
        return r;
}

/* ---- sealing for storage ---- */

int secrets_seal_for_store(PGconn *db, const struct secrets_kms *k, const char *user_id,
                           const char *secret_id, const char *name, const char *value, size_t len,
                           struct secrets_sealed *out, char **error)
{
        int r = 0, version = 0;
        _cleanup_pgresult_ PGresult *res =
            db_query(db, "SELECT version, provider FROM agently_secret_key_active()", 0, NULL, &r);

        *out = (struct secrets_sealed){0};
        if (!res) {
                set_error(error, "could not read the live key version");
                return r;
        }
        if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0) ||
            str_to_int(PQgetvalue(res, 0, 0), &version) < 0) {
                set_error(error, "the database has no live key version: run `agently secret "
                                 "rotate-key`");
                return -ENOKEY;
        }
        r = secrets_seal(k, PQgetvalue(res, 0, 1), version, user_id, secret_id, value, len, out,
                         error);
        if (r < 0)
                return r;
        /* this process now knows the value: mask it in whatever it sends from now on */
        char *copy = locked_copy(value, len);
        if (copy)
                (void)know_value(name, copy, len, NULL);
        return 0;
}

/* ---- resolving ---- */

static unsigned char *unescape(const char *text, size_t *len)
{
        return PQunescapeBytea((const unsigned char *)text, len);
}

int secrets_resolve(PGconn *db, const struct secrets_kms *k, const char *user_id, const char *name,
                    const char **value, size_t *value_len, char **error)
{
        int last_version = -1, r = 0;

        *value = NULL;
        if (value_len)
                *value_len = 0;
        if (!secrets_name_valid(name)) {
                _cleanup_free_ char *shown = str_utf8_printable(name ? name : "", 80);
                set_error(error, "invalid secret name '%s': use " SECRETS_NAME_RULE,
                          shown ? shown : "");
                return -EINVAL;
        }
        for (int attempt = 0; attempt < RESOLVE_ATTEMPTS; attempt++) {
                const char *params[] = {user_id, name};
                _cleanup_pgresult_ PGresult *res = db_query(
                    db,
                    "SELECT s.id, s.nonce, s.ciphertext, s.wrapped_key, s.key_version, k.provider "
                    "FROM secrets s JOIN secret_key_versions k ON k.version = s.key_version "
                    "WHERE s.user_id = $1 AND s.name = $2",
                    2, params, &r);
                if (!res) {
                        set_error(error, "could not read secret '%s': %s", name,
                                  db_last_error() ? db_last_error() : strerror(-r));
                        return r;
                }
                if (PQntuples(res) == 0) {
                        set_error(error,
                                  "secret '%s' does not exist; create it with `agently secret set "
                                  "%s`",
                                  name, name);
                        return -ENOENT;
                }
                int version = 0;
                size_t nl = 0, cl = 0, wl = 0;
                (void)str_to_int(PQgetvalue(res, 0, 4), &version);
                if (version == last_version)
                        break; /* the same row failed the same way: not a rotation */
                last_version = version;
                unsigned char *nonce = unescape(PQgetvalue(res, 0, 1), &nl);
                unsigned char *ct = unescape(PQgetvalue(res, 0, 2), &cl);
                unsigned char *wk = unescape(PQgetvalue(res, 0, 3), &wl);
                char *plain = NULL;
                size_t plain_len = 0;
                _cleanup_free_ char *why = NULL;
                r = nonce && ct && wk
                        ? secrets_open(k, PQgetvalue(res, 0, 5), user_id, PQgetvalue(res, 0, 0),
                                       nonce, nl, ct, cl, wk, wl, version, &plain, &plain_len, &why)
                        : -ENOMEM;
                PQfreemem(nonce);
                PQfreemem(ct);
                PQfreemem(wk);
                if (r == 0) {
                        const char *kept = NULL;
                        r = know_value(name, plain, plain_len, &kept);
                        if (r == -ENOSPC) {
                                set_error(error,
                                          "could not open secret '%s': this process holds %d "
                                          "secret values already; restart it",
                                          name, SECRETS_KNOWN_MAX);
                                return r;
                        }
                        if (r < 0)
                                return r;
                        *value = kept;
                        if (value_len)
                                *value_len = plain_len;
                        return 0;
                }
                if (r == -EBADMSG)
                        set_error(error,
                                  "could not open secret '%s': it does not decrypt under key "
                                  "version %d (a wrong or replaced key?)",
                                  name, version);
                else
                        set_error(error, "could not open secret '%s': %s", name,
                                  why ? why : strerror(-r));
                /* a rotation may have re-wrapped the row and retired the version meanwhile:
                 * read it again (a version seen twice stops the loop) */
        }
        return r < 0 ? r : -EIO;
}

/* ---- expanding [secret:NAME] ---- */

static bool name_listed(const json_t *names, const char *name, size_t len)
{
        size_t i;
        json_t *n;

        json_array_foreach (names, i, n)
                if (json_is_string(n) && json_string_length(n) == len &&
                    !memcmp(json_string_value(n), name, len))
                        return true;
        return false;
}

struct expand {
        PGconn *db;
        const struct secrets_kms *k;
        const char *user_id;
        const json_t *names;
        char **error;
};

static int expand_string(struct expand *x, const char *s, size_t len, json_t **out)
{
        static const char open_tag[] = "[secret:";
        _cleanup_buf_ struct buf b;
        size_t i = 0, copied = 0;
        bool changed = false;

        buf_init(&b, 4 * SECRETS_MAX_VALUE + len);
        while (i < len) {
                const char *at = memmem(s + i, len - i, open_tag, sizeof(open_tag) - 1);
                if (!at)
                        break;
                const char *nm = at + sizeof(open_tag) - 1;
                const char *end = memchr(nm, ']', (size_t)(s + len - nm));
                if (!end) {
                        break;
                }
                size_t nl = (size_t)(end - nm);
                if (nl == 0 || nl > 63 || !name_listed(x->names, nm, nl)) {
                        i = (size_t)(nm - s);
                        continue;
                }
                char name[64];
                memcpy(name, nm, nl);
                name[nl] = '\0';
                const char *value = NULL;
                size_t vl = 0;
                int r = secrets_resolve(x->db, x->k, x->user_id, name, &value, &vl, x->error);
                if (r < 0)
                        return r;
                if (buf_append(&b, s + copied, (size_t)(at - s) - copied) < 0 ||
                    buf_append(&b, value, vl) < 0)
                        return -ENOMEM;
                i = copied = (size_t)(end + 1 - s);
                changed = true;
        }
        if (!changed) {
                *out = NULL;
                return 0;
        }
        if (buf_append(&b, s + copied, len - copied) < 0)
                return -ENOMEM;
        *out = json_stringn_nocheck(b.data, b.len);
        sodium_memzero(b.data, b.len);
        return *out ? 1 : -ENOMEM;
}

/* Expands v in place (v is our deep copy). */
static int expand_value(struct expand *x, json_t *v)
{
        int r;

        if (json_is_array(v)) {
                size_t i;
                json_t *e;
                json_array_foreach (v, i, e) {
                        json_t *rep = NULL;
                        if (json_is_string(e)) {
                                r = expand_string(x, json_string_value(e), json_string_length(e),
                                                  &rep);
                                if (r < 0)
                                        return r;
                                if (rep && json_array_set_new(v, i, rep) < 0)
                                        return -ENOMEM;
                        } else if ((r = expand_value(x, e)) < 0) {
                                return r;
                        }
                }
        } else if (json_is_object(v)) {
                const char *key;
                json_t *e;
                void *tmp;
                json_object_foreach_safe(v, tmp, key, e)
                {
                        json_t *rep = NULL;
                        if (json_is_string(e)) {
                                r = expand_string(x, json_string_value(e), json_string_length(e),
                                                  &rep);
                                if (r < 0)
                                        return r;
                                if (rep && json_object_set_new(v, key, rep) < 0)
                                        return -ENOMEM;
                        } else if ((r = expand_value(x, e)) < 0) {
                                return r;
                        }
                }
        }
        return 0;
}

int secrets_expand_json(PGconn *db, const struct secrets_kms *k, const char *user_id,
                        const json_t *in, const json_t *names, json_t **out, char **error)
{
        struct expand x = {.db = db, .k = k, .user_id = user_id, .names = names, .error = error};
        json_t *copy;
        int r;

        *out = NULL;
        if (json_is_string(in)) {
                json_t *rep = NULL;
                r = expand_string(&x, json_string_value(in), json_string_length(in), &rep);
                if (r < 0)
                        return r;
                *out = rep ? rep : json_copy((json_t *)in);
                return *out ? 0 : -ENOMEM;
        }
        copy = json_deep_copy(in);
        if (!copy)
                return -ENOMEM;
        r = expand_value(&x, copy);
        if (r < 0) {
                json_decref(copy);
                return r;
        }
        *out = copy;
        return 0;
}
