/*
 * Envelope encryption of secrets (libsodium, XChaCha20-Poly1305 IETF). Each secret gets a
 * fresh random 256-bit data key; the value is sealed with it, and the data key is sealed
 * ("wrapped") with the key-encryption key (KEK) read from <data-dir>/master.key or
 * AGENTLY_MASTER_KEY_FILE. Both seals use the same associated data,
 *   "agently-secret|v1|<user id>|<secret id>|<key version>",
 * so a ciphertext or wrapped key copied onto another row, user or key version does not
 * open. The key file holds 64 hex characters; it is created 0600 on first use. Key
 * version 1 is the local file; rotation (re-wrapping data keys under a new KEK) is future
 * work and is why the version is stored and bound.
 */
#include "api_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "cleanup.h"
#include "fileio.h"
#include "strutil.h"

#define KEY_VERSION_LOCAL 1

static char *master_key_path(const char *data_dir)
{
        const char *env = getenv("AGENTLY_MASTER_KEY_FILE");

        if (env && *env)
                return strdup(env);
        return str_printf("%s/master.key", data_dir ? data_dir : ".agently");
}

/* Reads (or, the first time, creates) the 32-byte key-encryption key. */
static int load_master_key(const char *data_dir, unsigned char key[32])
{
        _cleanup_free_ char *path = master_key_path(data_dir);
        _cleanup_free_ char *text = NULL;
        size_t len = 0, bin_len = 0;
        int r;

        if (!path)
                return -ENOMEM;
        r = file_read_all(path, 4096, &text, &len);
        if (r == -ENOENT) {
                unsigned char fresh[32];
                char hex[65 + 1];
                int fd;

                randombytes_buf(fresh, sizeof(fresh));
                str_hex(fresh, sizeof(fresh), hex);
                hex[64] = '\n';
                hex[65] = '\0';
                /* O_EXCL: two servers starting at once must agree on one key */
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                if (fd >= 0) {
                        ssize_t w = write(fd, hex, 65);
                        int fr = fsync(fd);
                        close(fd);
                        sodium_memzero(hex, sizeof(hex));
                        if (w != 65 || fr < 0) {
                                unlink(path);
                                sodium_memzero(fresh, sizeof(fresh));
                                return -EIO;
                        }
                        memcpy(key, fresh, 32);
                        sodium_memzero(fresh, sizeof(fresh));
                        return 0;
                }
                sodium_memzero(fresh, sizeof(fresh));
                if (errno != EEXIST)
                        return -errno;
                r = file_read_all(path, 4096, &text, &len);
        }
        if (r < 0)
                return r;
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
                len--;
        r = sodium_hex2bin(key, 32, text, len, NULL, &bin_len, NULL);
        sodium_memzero(text, len);
        if (r != 0 || bin_len != 32)
                return -EBADMSG;
        return 0;
}

static char *associated_data(const char *user_id, const char *secret_id, int key_version)
{
        return str_printf("agently-secret|v1|%s|%s|%d", user_id, secret_id, key_version);
}

void api_sealed_secret_free(struct api_sealed_secret *s)
{
        free(s->ciphertext);
        s->ciphertext = NULL;
}

int api_secret_seal(const char *data_dir, const char *user_id, const char *secret_id,
                    const char *value, size_t len, struct api_sealed_secret *out)
{
        unsigned char kek[32], dek[32];
        _cleanup_free_ char *ad = associated_data(user_id, secret_id, KEY_VERSION_LOCAL);
        unsigned long long n = 0;
        int r;

        *out = (struct api_sealed_secret){.key_version = KEY_VERSION_LOCAL};
        if (!ad)
                return -ENOMEM;
        if (len > API_SECRET_MAX_VALUE)
                return -EFBIG;
        r = load_master_key(data_dir, kek);
        if (r < 0)
                return r;
        out->ciphertext = malloc(len + crypto_aead_xchacha20poly1305_ietf_ABYTES);
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
        /* wrapped key = nonce (24) || seal(dek) (32 + 16) */
        randombytes_buf(out->wrapped_key, 24);
        crypto_aead_xchacha20poly1305_ietf_encrypt(out->wrapped_key + 24, &n, dek, sizeof(dek),
                                                   (const unsigned char *)ad, strlen(ad), NULL,
                                                   out->wrapped_key, kek);
        sodium_memzero(dek, sizeof(dek));
        sodium_memzero(kek, sizeof(kek));
        return 0;
}

int api_secret_open(const char *data_dir, const char *user_id, const char *secret_id,
                    const unsigned char *nonce, const unsigned char *ciphertext, size_t len,
                    const unsigned char *wrapped_key, size_t wrapped_len, int key_version,
                    char **value)
{
        unsigned char kek[32], dek[32];
        _cleanup_free_ char *ad = associated_data(user_id, secret_id, key_version);
        unsigned long long n = 0;
        char *out;
        int r;

        *value = NULL;
        if (!ad)
                return -ENOMEM;
        if (key_version != KEY_VERSION_LOCAL || wrapped_len != 24 + 32 + 16 ||
            len < crypto_aead_xchacha20poly1305_ietf_ABYTES)
                return -EBADMSG;
        r = load_master_key(data_dir, kek);
        if (r < 0)
                return r;
        r = crypto_aead_xchacha20poly1305_ietf_decrypt(dek, &n, NULL, wrapped_key + 24, 32 + 16,
                                                       (const unsigned char *)ad, strlen(ad),
                                                       wrapped_key, kek);
        sodium_memzero(kek, sizeof(kek));
        if (r != 0)
                return -EBADMSG;
        out = malloc(len - crypto_aead_xchacha20poly1305_ietf_ABYTES + 1);
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
