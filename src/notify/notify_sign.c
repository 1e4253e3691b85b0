/*
 * Standard Webhooks signatures (https://www.standardwebhooks.com): what the dispatcher puts
 * on a webhook delivery and what the API checks on a webhook trigger's request. One
 * implementation for both directions, so they cannot disagree.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "cleanup.h"
#include "notify.h"
#include "strutil.h"

#define PREFIX "whsec_"

/* The HMAC key of a secret; 0 or -EINVAL. */
static int secret_key(const char *secret, unsigned char *key, size_t cap, size_t *len)
{
        if (str_has_prefix(secret, PREFIX)) {
                const char *b64 = secret + strlen(PREFIX);
                if (sodium_base642bin(key, cap, b64, strlen(b64), NULL, len, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0 ||
                    *len == 0)
                        return -EINVAL;
                return 0;
        }
        *len = strlen(secret);
        if (*len == 0 || *len > cap)
                return -EINVAL;
        memcpy(key, secret, *len);
        return 0;
}

static int mac(const char *secret, const char *id, const char *timestamp, const char *body,
               size_t len, unsigned char out[crypto_auth_hmacsha256_BYTES])
{
        unsigned char key[256];
        size_t klen;
        crypto_auth_hmacsha256_state st;

        if (secret_key(secret, key, sizeof(key), &klen) < 0)
                return -EINVAL;
        if (sodium_init() < 0)
                return -ENOMEM;
        crypto_auth_hmacsha256_init(&st, key, klen);
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)id, strlen(id));
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)".", 1);
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)timestamp, strlen(timestamp));
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)".", 1);
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)body, len);
        crypto_auth_hmacsha256_final(&st, out);
        sodium_memzero(key, sizeof(key));
        return 0;
}

char *notify_webhook_sign(const char *secret, const char *id, int64_t timestamp, const char *body,
                          size_t len)
{
        unsigned char m[crypto_auth_hmacsha256_BYTES];
        char b64[sodium_base64_ENCODED_LEN(crypto_auth_hmacsha256_BYTES,
                                           sodium_base64_VARIANT_ORIGINAL)];
        _cleanup_free_ char *ts = str_printf("%lld", (long long)timestamp);

        if (!ts || mac(secret, id, ts, body, len, m) < 0)
                return NULL;
        sodium_bin2base64(b64, sizeof(b64), m, sizeof(m), sodium_base64_VARIANT_ORIGINAL);
        return str_printf("v1,%s", b64);
}

int notify_webhook_verify(const char *secret, const char *id, const char *timestamp,
                          const char *signatures, const char *body, size_t len, int64_t now_s,
                          int64_t tolerance_s)
{
        unsigned char want[crypto_auth_hmacsha256_BYTES];
        int64_t ts;

        if (!id || !*id || !timestamp || !signatures || str_to_int64(timestamp, &ts) < 0)
                return -EINVAL;
        if (ts < now_s - tolerance_s || ts > now_s + tolerance_s)
                return -ETIME;
        if (mac(secret, id, timestamp, body, len, want) < 0)
                return -EINVAL;
        /* "v1,<b64> v1,<b64> ...": any one matching is enough (a sender rotating secrets
         * signs with both) */
        for (const char *p = signatures; *p;) {
                const char *end = strchr(p, ' ');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                if (n > 3 && strncmp(p, "v1,", 3) == 0) {
                        unsigned char got[crypto_auth_hmacsha256_BYTES];
                        size_t glen = 0;
                        if (sodium_base642bin(got, sizeof(got), p + 3, n - 3, NULL, &glen, NULL,
                                              sodium_base64_VARIANT_ORIGINAL) == 0 &&
                            glen == sizeof(got) && sodium_memcmp(got, want, sizeof(got)) == 0)
                                return 0;
                }
                p += n;
                while (*p == ' ')
                        p++;
        }
        return -EBADMSG;
}

char *notify_webhook_new_secret(void)
{
        unsigned char key[32];
        char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];

        if (sodium_init() < 0)
                return NULL;
        randombytes_buf(key, sizeof(key));
        sodium_bin2base64(b64, sizeof(b64), key, sizeof(key), sodium_base64_VARIANT_ORIGINAL);
        sodium_memzero(key, sizeof(key));
        return str_printf(PREFIX "%s", b64);
}
