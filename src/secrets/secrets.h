/*
 * The secrets vault: envelope encryption of secret values (libsodium, XChaCha20-Poly1305
 * IETF) under a key-encryption key read from a key file. Used by the API to store a value
 * and by the worker to open one at the moment a step needs it. Invariants and the key
 * file's life: src/secrets/README.md.
 */
#pragma once

#include <stddef.h>

/* The largest value the vault seals (bytes); the API refuses longer ones with a 400. */
#define SECRETS_MAX_VALUE (64 * 1024)
/* The key version of the local key file; the version is stored and bound so that rotation
 * (re-wrapping data keys under a new key) can add versions without a format change. */
#define SECRETS_KEY_VERSION_LOCAL 1
#define SECRETS_NONCE_BYTES       24
/* wrapped key = nonce (24) || sealed data key (32 + 16) */
#define SECRETS_WRAPPED_KEY_BYTES (24 + 32 + 16)

/* One sealed value as the secrets table stores it (nonce, ciphertext, wrapped_key,
 * key_version). */
struct secrets_sealed {
        unsigned char nonce[SECRETS_NONCE_BYTES];
        unsigned char *ciphertext; /* owned: malloc'd, ciphertext_len bytes */
        size_t ciphertext_len;
        unsigned char wrapped_key[SECRETS_WRAPPED_KEY_BYTES];
        int key_version;
};

/*
 * Encrypts value (len bytes, at most SECRETS_MAX_VALUE) for the secret secret_id of user_id
 * under a fresh random data key, and wraps the data key with the key-encryption key: the
 * file AGENTLY_MASTER_KEY_FILE names, else <data_dir>/master.key (".agently" when data_dir
 * is NULL), created 0600 with a random key on first use. Returns 0 and fills *out (free it
 * with secrets_sealed_free()), or a negative errno: -EFBIG for a value too long, -EBADMSG
 * for a key file that is not 64 hex characters, the file's errno when it cannot be read or
 * created; on failure *out owns nothing.
 */
int secrets_seal(const char *data_dir, const char *user_id, const char *secret_id,
                 const char *value, size_t len, struct secrets_sealed *out);

/*
 * The inverse: opens a value sealed by secrets_seal() for the same user_id, secret_id and
 * key_version, with the key-encryption key found as above (never created here). Returns 0
 * with *value malloc'd and NUL-terminated (the caller owns it and should wipe it with
 * sodium_memzero() or secrets_value_free() before freeing), or a negative errno with *value
 * NULL: -ENOENT when there is no key file, -EBADMSG when the nonce, the ciphertext, the wrapped
 * key, the user, the secret id, the key version or the key do not match (nothing says which, by
 * design).
 */
int secrets_open(const char *data_dir, const char *user_id, const char *secret_id,
                 const unsigned char *nonce, size_t nonce_len, const unsigned char *ciphertext,
                 size_t len, const unsigned char *wrapped_key, size_t wrapped_len, int key_version,
                 char **value);

/* Wipes (up to its terminating NUL) and frees a value from secrets_open(); NULL is fine. */
void secrets_value_free(char *value);

/* Frees what a sealed value owns and leaves it empty; an empty or half-built one is fine. */
void secrets_sealed_free(struct secrets_sealed *s);
