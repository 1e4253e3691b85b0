/*
 * Envelope encryption of secrets (libsodium, XChaCha20-Poly1305 IETF). Each secret gets a
 * fresh random 256-bit data key; the value is sealed with it, and the data key is sealed
 * ("wrapped") with the key-encryption key (KEK) read from <data-dir>/master.key or
 * AGENTLY_MASTER_KEY_FILE. Both seals use the same associated data,
 *   "agently-secret|v1|<user id>|<secret id>|<key version>",
 * so a ciphertext or wrapped key copied onto another row, user or key version does not
 * open. The key file holds 64 hex characters; it is created 0600 on first seal. Key
 * version 1 is the local file; rotation (re-wrapping data keys under a new KEK) is future
 * work and is why the version is stored and bound. Nothing here logs: errors are returned.
 */
#include "secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "cleanup.h"
#include "fileio.h"
#include "strutil.h"

#define KEK_BYTES        crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define DATA_KEY_BYTES   crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define AEAD_NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define AEAD_TAG_BYTES   crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KEY_FILE_MAX     4096

_Static_assert(SECRETS_NONCE_BYTES == AEAD_NONCE_BYTES, "nonce size");
_Static_assert(SECRETS_WRAPPED_KEY_BYTES == AEAD_NONCE_BYTES + DATA_KEY_BYTES + AEAD_TAG_BYTES,
               "wrapped key size");

static char *master_key_path(const char *data_dir)
{
        const char *env = getenv("AGENTLY_MASTER_KEY_FILE");

        if (env && *env)
                return strdup(env);
        return str_printf("%s/master.key", data_dir ? data_dir : ".agently");
}

/* Creates the key file with a fresh key (O_EXCL: two servers starting at once must agree on
 * one key). 0 with key filled, -EEXIST when another process created it first, or an error. */
static int create_master_key(const char *path, unsigned char key[KEK_BYTES])
{
        unsigned char fresh[KEK_BYTES];
        char hex[2 * KEK_BYTES + 2];
        ssize_t w;
        int fd, fr;

        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        randombytes_buf(fresh, sizeof(fresh));
        str_hex(fresh, sizeof(fresh), hex);
        hex[2 * KEK_BYTES] = '\n';
        hex[2 * KEK_BYTES + 1] = '\0';
        w = write(fd, hex, 2 * KEK_BYTES + 1);
        fr = fsync(fd);
        close(fd);
        sodium_memzero(hex, sizeof(hex));
        if (w != 2 * KEK_BYTES + 1 || fr < 0) {
                unlink(path);
                sodium_memzero(fresh, sizeof(fresh));
                return -EIO;
        }
        memcpy(key, fresh, KEK_BYTES);
        sodium_memzero(fresh, sizeof(fresh));
        return 0;
}

/* Reads (or, when create is set and there is none, creates) the key-encryption key. */
static int load_master_key(const char *data_dir, bool create, unsigned char key[KEK_BYTES])
{
        _cleanup_free_ char *path = master_key_path(data_dir);
        _cleanup_free_ char *text = NULL;
        size_t len = 0, bin_len = 0;
        int r;

        if (!path)
                return -ENOMEM;
        r = file_read_all(path, KEY_FILE_MAX, &text, &len);
        if (r == -ENOENT && create) {
                r = create_master_key(path, key);
                if (r != -EEXIST)
                        return r;
                r = file_read_all(path, KEY_FILE_MAX, &text, &len);
        }
        if (r < 0)
                return r;
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
                len--;
        r = sodium_hex2bin(key, KEK_BYTES, text, len, NULL, &bin_len, NULL);
        sodium_memzero(text, len);
        if (r != 0 || bin_len != KEK_BYTES) {
                sodium_memzero(key, KEK_BYTES);
                return -EBADMSG;
        }
        return 0;
}

static char *associated_data(const char *user_id, const char *secret_id, int key_version)
{
        return str_printf("agently-secret|v1|%s|%s|%d", user_id, secret_id, key_version);
}

void secrets_sealed_free(struct secrets_sealed *s)
{
        free(s->ciphertext);
        s->ciphertext = NULL;
        s->ciphertext_len = 0;
}

void secrets_value_free(char *value)
{
        if (!value)
                return;
        sodium_memzero(value, strlen(value));
        free(value);
}

int secrets_seal(const char *data_dir, const char *user_id, const char *secret_id,
                 const char *value, size_t len, struct secrets_sealed *out)
{
        unsigned char kek[KEK_BYTES], dek[DATA_KEY_BYTES];
        _cleanup_free_ char *ad = NULL;
        unsigned long long n = 0;
        int r;

        *out = (struct secrets_sealed){.key_version = SECRETS_KEY_VERSION_LOCAL};
        if (len > SECRETS_MAX_VALUE)
                return -EFBIG;
        if (sodium_init() < 0)
                return -EIO;
        ad = associated_data(user_id, secret_id, SECRETS_KEY_VERSION_LOCAL);
        if (!ad)
                return -ENOMEM;
        r = load_master_key(data_dir, true, kek);
        if (r < 0)
                return r;
        out->ciphertext = malloc(len + AEAD_TAG_BYTES);
        if (!out->ciphertext) {
                sodium_memzero(kek, sizeof(kek));
                return -ENOMEM;
        }
        crypto_aead_xchacha20poly1305_ietf_keygen(dek);
        randombytes_buf(out->nonce, sizeof(out->nonce));
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            out->ciphertext, &n, (const unsigned char *)value, len, (const unsigned char *)ad,
            strlen(ad), NULL, out->nonce, dek);
        out->ciphertext_len = (size_t)n;
        randombytes_buf(out->wrapped_key, AEAD_NONCE_BYTES);
        crypto_aead_xchacha20poly1305_ietf_encrypt(out->wrapped_key + AEAD_NONCE_BYTES, &n, dek,
                                                   sizeof(dek), (const unsigned char *)ad,
                                                   strlen(ad), NULL, out->wrapped_key, kek);
        sodium_memzero(dek, sizeof(dek));
        sodium_memzero(kek, sizeof(kek));
        return 0;
}

int secrets_open(const char *data_dir, const char *user_id, const char *secret_id,
                 const unsigned char *nonce, size_t nonce_len, const unsigned char *ciphertext,
                 size_t len, const unsigned char *wrapped_key, size_t wrapped_len, int key_version,
                 char **value)
{
        unsigned char kek[KEK_BYTES], dek[DATA_KEY_BYTES];
        _cleanup_free_ char *ad = NULL;
        unsigned long long n = 0;
        char *out;
        int r;

        *value = NULL;
        if (key_version != SECRETS_KEY_VERSION_LOCAL || nonce_len != SECRETS_NONCE_BYTES ||
            wrapped_len != SECRETS_WRAPPED_KEY_BYTES || len < AEAD_TAG_BYTES ||
            len > SECRETS_MAX_VALUE + AEAD_TAG_BYTES)
                return -EBADMSG;
        if (sodium_init() < 0)
                return -EIO;
        ad = associated_data(user_id, secret_id, key_version);
        if (!ad)
                return -ENOMEM;
        r = load_master_key(data_dir, false, kek);
        if (r < 0)
                return r;
        r = crypto_aead_xchacha20poly1305_ietf_decrypt(
            dek, &n, NULL, wrapped_key + AEAD_NONCE_BYTES, DATA_KEY_BYTES + AEAD_TAG_BYTES,
            (const unsigned char *)ad, strlen(ad), wrapped_key, kek);
        sodium_memzero(kek, sizeof(kek));
        if (r != 0)
                return -EBADMSG;
        out = malloc(len - AEAD_TAG_BYTES + 1);
        if (!out) {
                sodium_memzero(dek, sizeof(dek));
                return -ENOMEM;
        }
        r = crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)out, &n, NULL, ciphertext,
                                                       len, (const unsigned char *)ad, strlen(ad),
                                                       nonce, dek);
        sodium_memzero(dek, sizeof(dek));
        if (r != 0) {
                free(out);
                return -EBADMSG;
        }
        out[n] = '\0';
        *value = out;
        return 0;
}
