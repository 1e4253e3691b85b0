/*
 * The secrets vault: envelope encryption of secret values (libsodium, XChaCha20-Poly1305
 * IETF), each value under its own data key, each data key wrapped by a key-encryption key
 * (a key version) that a KMS provider holds: the local key files or an external command.
 * The API seals a value when a user stores it; the worker (and the agent runtime) resolves
 * `${ secrets.NAME }` at the moment a request leaves; `agently secret rotate-key` re-wraps
 * every data key under a new key version while the system runs. Every value this process
 * opens or seals is registered with the redaction choke point (src/base/redact.h).
 * Invariants, the command protocol and the key files: src/secrets/README.md.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>
#include <jansson.h>

/* The largest value the vault seals (bytes); the API refuses longer ones with a 400. */
#define SECRETS_MAX_VALUE (64 * 1024)
/* The key version every secret stored before key versions existed uses (the local key
 * file, <data-dir>/master.key). */
#define SECRETS_KEY_VERSION_LOCAL 1
#define SECRETS_NONCE_BYTES       24
#define SECRETS_DATA_KEY_BYTES    32
/* a wrapped data key is at most this long (the column's limit) */
#define SECRETS_WRAPPED_MAX 1024
/* how long the command provider may take for one request */
#define SECRETS_KMS_COMMAND_TIMEOUT_MS (30 * 1000)
/* distinct values one process keeps open (and masks) at once */
#define SECRETS_KNOWN_MAX 1024

/* ---- KMS providers -------------------------------------------------------------------- */

/* A process's KMS configuration (from the environment; see README "Configuration"). */
struct secrets_kms {
        char *key_file; /* version 1's key file; version N's is "<key_file>.N" */
        char *command;  /* AGENTLY_KMS_COMMAND, or NULL: no command provider */
        int timeout_ms;
};

/*
 * Fills k from the environment: the key file is AGENTLY_MASTER_KEY_FILE, else
 * <data_dir>/master.key (".agently" when data_dir is NULL); the command is
 * AGENTLY_KMS_COMMAND. 0 or -ENOMEM. Release with secrets_kms_release().
 */
int secrets_kms_init(struct secrets_kms *k, const char *data_dir);
void secrets_kms_release(struct secrets_kms *k);

/* The provider a new key version gets: "command" when a command is configured, else
 * "local". */
const char *secrets_kms_new_provider(const struct secrets_kms *k);

/* The local key file of a version (malloc'd; NULL when out of memory). */
char *secrets_kms_key_path(const struct secrets_kms *k, int version);

/*
 * Wraps a data key under key version `version` of provider ("local" or "command"), bound to
 * context (the associated data). create: the local provider may create the version's key
 * file (0600, O_EXCL) when there is none. Returns 0 with *out (malloc'd, *out_len bytes, at
 * most SECRETS_WRAPPED_MAX), or a negative errno with *error (malloc'd) saying what failed
 * and naming the provider: -ENOENT no key file, -EBADMSG a key file that is not 64 hex
 * characters, -EIO the command failed (exit status, timeout, a bad answer), -EINVAL an
 * unknown provider or a provider that is not configured here.
 */
int secrets_kms_wrap(const struct secrets_kms *k, const char *provider, int version,
                     const char *context, const unsigned char dek[SECRETS_DATA_KEY_BYTES],
                     bool create, unsigned char **out, size_t *out_len, char **error);

/* The inverse; -EBADMSG when the wrapped key does not open under that version and context. */
int secrets_kms_unwrap(const struct secrets_kms *k, const char *provider, int version,
                       const char *context, const unsigned char *wrapped, size_t len,
                       unsigned char dek[SECRETS_DATA_KEY_BYTES], char **error);

/* ---- seal and open ---------------------------------------------------------------------- */

/* One sealed value as the secrets table stores it. */
struct secrets_sealed {
        unsigned char nonce[SECRETS_NONCE_BYTES];
        unsigned char *ciphertext; /* owned: malloc'd, ciphertext_len bytes */
        size_t ciphertext_len;
        unsigned char *wrapped_key; /* owned: malloc'd, wrapped_len bytes */
        size_t wrapped_len;
        int key_version;
};

/*
 * Encrypts value (len bytes, at most SECRETS_MAX_VALUE) for the secret secret_id of user_id
 * under a fresh data key, wrapped under key_version of provider (see secrets_kms_wrap;
 * the local key file is created on first use). The associated data of both seals is
 * "agently-secret|v1|<user id>|<secret id>|<key version>". Returns 0 and fills *out (free
 * with secrets_sealed_free()), or a negative errno (-EFBIG for a value too long, else as
 * secrets_kms_wrap) with *error when error is not NULL; on failure *out owns nothing.
 */
int secrets_seal(const struct secrets_kms *k, const char *provider, int key_version,
                 const char *user_id, const char *secret_id, const char *value, size_t len,
                 struct secrets_sealed *out, char **error);

/*
 * Opens a value sealed by secrets_seal() for the same user_id, secret_id, key_version and
 * provider. Returns 0 with *value in locked memory (sodium_malloc: mlocked, guard pages),
 * NUL-terminated, *value_len bytes (value_len may be NULL) — the caller frees it with
 * secrets_value_free() — or a negative errno with *value NULL (and *error when error is not
 * NULL): -EBADMSG when the nonce, ciphertext, wrapped key, user, secret id, key version or
 * key do not match (nothing says which, by design), else as secrets_kms_unwrap.
 */
int secrets_open(const struct secrets_kms *k, const char *provider, const char *user_id,
                 const char *secret_id, const unsigned char *nonce, size_t nonce_len,
                 const unsigned char *ciphertext, size_t len, const unsigned char *wrapped_key,
                 size_t wrapped_len, int key_version, char **value, size_t *value_len,
                 char **error);

/*
 * Rotation's step for one row: moves a sealed value from (old_provider, sealed->key_version)
 * to (new_provider, new_version) keeping its data key: the data key is unwrapped and wrapped
 * again, and the value re-sealed with a fresh nonce (the associated data names the
 * version). On success *sealed is replaced (its old buffers freed); on failure it is
 * unchanged. Errors as secrets_open / secrets_kms_wrap.
 */
int secrets_rewrap(const struct secrets_kms *k, const char *user_id, const char *secret_id,
                   const char *old_provider, const char *new_provider, int new_version,
                   struct secrets_sealed *sealed, char **error);

/* Wipes and frees a value from secrets_open(); NULL is fine. */
void secrets_value_free(char *value);

/* Frees what a sealed value owns and leaves it empty; an empty or half-built one is fine. */
void secrets_sealed_free(struct secrets_sealed *s);

/* ---- the vault over the database ------------------------------------------------------------ */

/*
 * Names: 1-63 characters of A-Z a-z 0-9 _ . -, the first a letter, digit or _ (the rule of
 * migrations/0014; OPENAI_API_KEY, LLMKEY and openai-key are names). SECRETS_NAME_RULE says
 * it in words for error messages.
 */
#define SECRETS_NAME_RULE                                                                          \
        "1-63 characters of A-Z a-z 0-9 _ . -, the first a letter, digit or _ (e.g. "              \
        "OPENAI_API_KEY)"
bool secrets_name_valid(const char *name);

/*
 * Seals value for storage under the newest live key version (agently_secret_key_active(),
 * read over db inside the caller's transaction) and registers the value with the redaction
 * choke point of this process. Returns as secrets_seal; -ENOKEY when the database has no
 * live key version.
 */
int secrets_seal_for_store(PGconn *db, const struct secrets_kms *k, const char *user_id,
                           const char *secret_id, const char *name, const char *value, size_t len,
                           struct secrets_sealed *out, char **error);

/*
 * THE resolver: the value of user_id's secret name, read over db (a role that may read the
 * secrets table: the worker's) and opened at this moment. The value stays in this
 * process's table of known values — locked memory, registered with the redaction choke
 * point, so every string this process sends out afterwards has it masked — and *value
 * borrows from there: valid for the life of the process; never copy it into anything that
 * is stored or logged. A row re-wrapped meanwhile by a rotation is read again (at most 3
 * times). Returns 0, or a negative errno with *error (malloc'd) saying which secret and
 * why: -ENOENT no such secret, -EINVAL a name that is not valid, -ENOSPC this process knows
 * SECRETS_KNOWN_MAX values already, else the database's or the KMS provider's error.
 * Thread-safe.
 */
int secrets_resolve(PGconn *db, const struct secrets_kms *k, const char *user_id, const char *name,
                    const char **value, size_t *value_len, char **error);

/*
 * Expands the placeholders "[secret:NAME]" in every string of in (not in object keys), for
 * the names listed in names (an array of strings; a placeholder of another name stays as
 * it is), with secrets_resolve(). *out is a new value the caller owns and must only send,
 * never store or log (json_decref it right after; the strings it holds are not wiped).
 * Returns 0, or a negative errno with *error as secrets_resolve.
 */
int secrets_expand_json(PGconn *db, const struct secrets_kms *k, const char *user_id,
                        const json_t *in, const json_t *names, json_t **out, char **error);

/* What a rotation did. */
struct secrets_rotation {
        int new_version;
        const char *provider; /* static string */
        long rewrapped;       /* rows moved to new_version */
        int retired;          /* old versions retired */
        int passes;
};

/*
 * `agently secret rotate-key`: over db (the owner's connection, outside a transaction),
 * adds key version max+1 with secrets_kms_new_provider(k) (checked first with a wrap and
 * unwrap), re-wraps every secret's data key under it in batches (each row locked while it
 * is re-wrapped, so concurrent writers and readers keep working), retires every older
 * version once no row uses it, and deletes the retired versions' local key files.
 * Concurrent rotations queue on an advisory lock. Returns 0 with *report filled, or a
 * negative errno with *error; a rotation stopped half-way leaves every row readable (each
 * under the old or the new version) and the next rotation finishes it.
 */
int secrets_rotate(PGconn *db, const struct secrets_kms *k, struct secrets_rotation *report,
                   char **error);
