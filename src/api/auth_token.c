/* API token generation and hashing; see auth_token.h. */
#include "auth_token.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

#include "strutil.h"

int auth_token_generate(char *token, unsigned char *hash, char *shown_prefix)
{
        unsigned char secret[32];

        if (sodium_init() < 0)
                return -EIO;
        randombytes_buf(secret, sizeof(secret));
        memcpy(token, AUTH_TOKEN_PREFIX, strlen(AUTH_TOKEN_PREFIX));
        sodium_bin2base64(token + strlen(AUTH_TOKEN_PREFIX),
                          AUTH_TOKEN_LEN + 1 - strlen(AUTH_TOKEN_PREFIX), secret, sizeof(secret),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        sodium_memzero(secret, sizeof(secret));
        crypto_hash_sha256(hash, (const unsigned char *)token, strlen(token));
        memcpy(shown_prefix, token, AUTH_TOKEN_SHOWN_CHARS);
        shown_prefix[AUTH_TOKEN_SHOWN_CHARS] = '\0';
        return 0;
}

int auth_token_hash(const char *token, unsigned char *hash)
{
        size_t n = strlen(token);

        if (n != AUTH_TOKEN_LEN || !str_has_prefix(token, AUTH_TOKEN_PREFIX))
                return -EINVAL;
        for (size_t i = strlen(AUTH_TOKEN_PREFIX); i < n; i++) {
                char ch = token[i];
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
                        return -EINVAL;
        }
        if (sodium_init() < 0)
                return -EIO;
        crypto_hash_sha256(hash, (const unsigned char *)token, n);
        return 0;
}

void auth_token_hash_hex(const unsigned char *hash, char *out)
{
        out[0] = '\\';
        out[1] = 'x';
        str_hex(hash, AUTH_TOKEN_HASH_BYTES, out + 2);
}
