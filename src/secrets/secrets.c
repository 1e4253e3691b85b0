/*
 * Envelope encryption of secrets (libsodium, XChaCha20-Poly1305 IETF). Each seal makes a
 * fresh random 256-bit data key; the value is sealed with it, and the data key is wrapped
 * by a KMS provider under a key version (kms.c). The value's seal and the local provider's
 * wrap use the same associated data,
 *   "agently-secret|v1|<user id>|<secret id>|<key version>",
 * so a ciphertext or wrapped key copied onto another row, user or key version does not
 * open. Because the version is bound, rotation re-seals the value too (same data key, new
 * nonce) when it re-wraps the data key. Plaintext is decrypted straight into locked memory
 * (sodium_malloc). Nothing here logs: errors are returned.
 */
#include "secrets.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cleanup.h"
#include "strutil.h"

#define AEAD_TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES

_Static_assert(SECRETS_NONCE_BYTES == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, "nonce size");
_Static_assert(SECRETS_DATA_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "data key size");

static char *associated_data(const char *user_id, const char *secret_id, int key_version)
{
        return str_printf("agently-secret|v1|%s|%s|%d", user_id, secret_id, key_version);
}

void secrets_sealed_free(struct secrets_sealed *s)
{
        free(s->ciphertext);
        free(s->wrapped_key);
        s->ciphertext = s->wrapped_key = NULL;
        s->ciphertext_len = s->wrapped_len = 0;
}

void secrets_value_free(char *value)
{
        /* sodium_free wipes the whole allocation before unmapping it */
        sodium_free(value);
}

/* Seals len bytes of value with dek under ad into *out (nonce and ciphertext). */
static int seal_value(const unsigned char dek[SECRETS_DATA_KEY_BYTES], const char *ad,
                      const char *value, size_t len, struct secrets_sealed *out)
{
        unsigned long long n = 0;

        out->ciphertext = malloc(len + AEAD_TAG_BYTES);
        if (!out->ciphertext)
                return -ENOMEM;
        randombytes_buf(out->nonce, sizeof(out->nonce));
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            out->ciphertext, &n, (const unsigned char *)value, len, (const unsigned char *)ad,
            strlen(ad), NULL, out->nonce, dek);
        out->ciphertext_len = (size_t)n;
        return 0;
}

int secrets_seal(const struct secrets_kms *k, const char *provider, int key_version,
                 const char *user_id, const char *secret_id, const char *value, size_t len,
                 struct secrets_sealed *out, char **error)
{
        unsigned char dek[SECRETS_DATA_KEY_BYTES];
        _cleanup_free_ char *ad = NULL;
        int r;

        *out = (struct secrets_sealed){.key_version = key_version};
        if (len > SECRETS_MAX_VALUE)
                return -EFBIG;
        if (sodium_init() < 0)
                return -EIO;
        ad = associated_data(user_id, secret_id, key_version);
        if (!ad)
                return -ENOMEM;
        crypto_aead_xchacha20poly1305_ietf_keygen(dek);
        r = secrets_kms_wrap(k, provider, key_version, ad, dek, true, &out->wrapped_key,
                             &out->wrapped_len, error);
        if (r == 0)
                r = seal_value(dek, ad, value, len, out);
        sodium_memzero(dek, sizeof(dek));
        if (r < 0)
                secrets_sealed_free(out);
        return r;
}

/* Opens ciphertext with dek under ad into locked memory. */
static int open_value(const unsigned char dek[SECRETS_DATA_KEY_BYTES], const char *ad,
                      const unsigned char *nonce, const unsigned char *ciphertext, size_t len,
                      char **value, size_t *value_len)
{
        unsigned long long n = 0;
        char *out = sodium_malloc(len - AEAD_TAG_BYTES + 1);

        if (!out)
                return -ENOMEM;
        if (crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)out, &n, NULL, ciphertext,
                                                       len, (const unsigned char *)ad, strlen(ad),
                                                       nonce, dek) != 0) {
                sodium_free(out);
                return -EBADMSG;
        }
        out[n] = '\0';
        *value = out;
        if (value_len)
                *value_len = (size_t)n;
        return 0;
}

int secrets_open(const struct secrets_kms *k, const char *provider, const char *user_id,
                 const char *secret_id, const unsigned char *nonce, size_t nonce_len,
                 const unsigned char *ciphertext, size_t len, const unsigned char *wrapped_key,
                 size_t wrapped_len, int key_version, char **value, size_t *value_len, char **error)
{
        unsigned char dek[SECRETS_DATA_KEY_BYTES];
        _cleanup_free_ char *ad = NULL;
        int r;

        *value = NULL;
        if (value_len)
                *value_len = 0;
        if (nonce_len != SECRETS_NONCE_BYTES || wrapped_len == 0 ||
            wrapped_len > SECRETS_WRAPPED_MAX || len < AEAD_TAG_BYTES ||
            len > SECRETS_MAX_VALUE + AEAD_TAG_BYTES || key_version < 1)
                return -EBADMSG;
        if (sodium_init() < 0)
                return -EIO;
        ad = associated_data(user_id, secret_id, key_version);
        if (!ad)
                return -ENOMEM;
        r = secrets_kms_unwrap(k, provider, key_version, ad, wrapped_key, wrapped_len, dek, error);
        if (r == 0)
                r = open_value(dek, ad, nonce, ciphertext, len, value, value_len);
        sodium_memzero(dek, sizeof(dek));
        return r;
}

int secrets_rewrap(const struct secrets_kms *k, const char *user_id, const char *secret_id,
                   const char *old_provider, const char *new_provider, int new_version,
                   struct secrets_sealed *sealed, char **error)
{
        unsigned char dek[SECRETS_DATA_KEY_BYTES];
        _cleanup_free_ char *old_ad = associated_data(user_id, secret_id, sealed->key_version);
        _cleanup_free_ char *new_ad = associated_data(user_id, secret_id, new_version);
        struct secrets_sealed next = {.key_version = new_version};
        char *value = NULL;
        size_t len = 0;
        int r;

        if (!old_ad || !new_ad)
                return -ENOMEM;
        if (sealed->ciphertext_len < AEAD_TAG_BYTES)
                return -EBADMSG;
        r = secrets_kms_unwrap(k, old_provider, sealed->key_version, old_ad, sealed->wrapped_key,
                               sealed->wrapped_len, dek, error);
        if (r == 0)
                r = open_value(dek, old_ad, sealed->nonce, sealed->ciphertext,
                               sealed->ciphertext_len, &value, &len);
        if (r == 0)
                r = secrets_kms_wrap(k, new_provider, new_version, new_ad, dek, false,
                                     &next.wrapped_key, &next.wrapped_len, error);
        if (r == 0)
                r = seal_value(dek, new_ad, value, len, &next);
        sodium_memzero(dek, sizeof(dek));
        secrets_value_free(value);
        if (r < 0) {
                secrets_sealed_free(&next);
                return r;
        }
        secrets_sealed_free(sealed);
        *sealed = next;
        return 0;
}
