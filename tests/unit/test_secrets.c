/* Unit tests for src/secrets: the vault's seal/open round trip, what the associated data
 * binds, tampering refused, and the key file's creation and format. No database. */
#include "testlib.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "fileio.h"
#include "secrets.h"
#include "strutil.h"

#define USER   "0b0e0d6a-1111-4c3b-9a6e-000000000001"
#define SECRET "0b0e0d6a-2222-4c3b-9a6e-000000000002"
#define VALUE  "sk-canary-4f1d2b"

struct vault {
        char *dir;
        struct secrets_sealed sealed;
};

static int vault_setup(void **state)
{
        struct vault *v = calloc(1, sizeof(*v));

        assert_non_null(v);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
        v->dir = test_tempdir("secrets");
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, VALUE, strlen(VALUE), &v->sealed), 0);
        *state = v;
        return 0;
}

static int vault_teardown(void **state)
{
        struct vault *v = *state;

        secrets_sealed_free(&v->sealed);
        test_rm_rf(v->dir);
        free(v->dir);
        free(v);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
        return 0;
}

/* Opens v's sealed value as (user, secret, version) with the given ciphertext and key. */
static int open_as(struct vault *v, const char *user, const char *secret, int version,
                   const unsigned char *ciphertext, const unsigned char *wrapped_key, char **out)
{
        return secrets_open(v->dir, user, secret, v->sealed.nonce, sizeof(v->sealed.nonce),
                            ciphertext, v->sealed.ciphertext_len, wrapped_key,
                            sizeof(v->sealed.wrapped_key), version, out);
}

static void seal_then_open_gives_the_value(void **state)
{
        struct vault *v = *state;
        char *value = NULL;

        assert_int_equal(v->sealed.key_version, SECRETS_KEY_VERSION_LOCAL);
        assert_int_equal(v->sealed.ciphertext_len, strlen(VALUE) + 16);
        assert_null(memmem(v->sealed.ciphertext, v->sealed.ciphertext_len, VALUE, strlen(VALUE)));
        assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL, v->sealed.ciphertext,
                                 v->sealed.wrapped_key, &value),
                         0);
        assert_string_equal(value, VALUE);
        secrets_value_free(value);

        /* the same value sealed twice gives different ciphertexts (fresh data key, nonce) */
        struct secrets_sealed again = {0};
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, VALUE, strlen(VALUE), &again), 0);
        assert_int_equal(again.ciphertext_len, v->sealed.ciphertext_len);
        assert_int_not_equal(memcmp(again.ciphertext, v->sealed.ciphertext, again.ciphertext_len),
                             0);
        secrets_sealed_free(&again);

        /* the empty value is a value */
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, "", 0, &again), 0);
        assert_int_equal(secrets_open(v->dir, USER, SECRET, again.nonce, sizeof(again.nonce),
                                      again.ciphertext, again.ciphertext_len, again.wrapped_key,
                                      sizeof(again.wrapped_key), again.key_version, &value),
                         0);
        assert_string_equal(value, "");
        secrets_value_free(value);
        secrets_sealed_free(&again);
}

static void wrong_associated_data_is_refused(void **state)
{
        struct vault *v = *state;
        char *value = (char *)"untouched";

        /* another user, another secret id, another key version: each refused, nothing out */
        assert_int_equal(open_as(v, "0b0e0d6a-1111-4c3b-9a6e-000000000009", SECRET,
                                 SECRETS_KEY_VERSION_LOCAL, v->sealed.ciphertext,
                                 v->sealed.wrapped_key, &value),
                         -EBADMSG);
        assert_null(value);
        assert_int_equal(open_as(v, USER, "0b0e0d6a-2222-4c3b-9a6e-000000000009",
                                 SECRETS_KEY_VERSION_LOCAL, v->sealed.ciphertext,
                                 v->sealed.wrapped_key, &value),
                         -EBADMSG);
        assert_null(value);
        assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL + 1,
                                 v->sealed.ciphertext, v->sealed.wrapped_key, &value),
                         -EBADMSG);
        assert_null(value);

        /* a wrapped key moved from another secret's row does not open this ciphertext */
        struct secrets_sealed other = {0};
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, VALUE, strlen(VALUE), &other), 0);
        assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL, v->sealed.ciphertext,
                                 other.wrapped_key, &value),
                         -EBADMSG);
        assert_null(value);
        secrets_sealed_free(&other);
}

static void tampering_is_refused(void **state)
{
        struct vault *v = *state;
        size_t n = v->sealed.ciphertext_len;
        unsigned char *ciphertext = malloc(n);
        unsigned char wrapped[SECRETS_WRAPPED_KEY_BYTES];
        char *value = NULL;

        assert_non_null(ciphertext);
        /* one flipped bit anywhere in the ciphertext (value or tag) */
        for (size_t i = 0; i < n; i++) {
                memcpy(ciphertext, v->sealed.ciphertext, n);
                ciphertext[i] ^= 0x01;
                assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL, ciphertext,
                                         v->sealed.wrapped_key, &value),
                                 -EBADMSG);
                assert_null(value);
        }
        /* one flipped bit anywhere in the wrapped key (its nonce, the sealed key, the tag) */
        for (size_t i = 0; i < sizeof(wrapped); i++) {
                memcpy(wrapped, v->sealed.wrapped_key, sizeof(wrapped));
                wrapped[i] ^= 0x80;
                assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL,
                                         v->sealed.ciphertext, wrapped, &value),
                                 -EBADMSG);
        }
        /* a flipped nonce, a truncated ciphertext, wrong sizes */
        unsigned char nonce[SECRETS_NONCE_BYTES];
        memcpy(nonce, v->sealed.nonce, sizeof(nonce));
        nonce[0] ^= 0x01;
        assert_int_equal(secrets_open(v->dir, USER, SECRET, nonce, sizeof(nonce),
                                      v->sealed.ciphertext, n, v->sealed.wrapped_key,
                                      sizeof(v->sealed.wrapped_key), 1, &value),
                         -EBADMSG);
        assert_int_equal(secrets_open(v->dir, USER, SECRET, v->sealed.nonce,
                                      sizeof(v->sealed.nonce), v->sealed.ciphertext, n - 1,
                                      v->sealed.wrapped_key, sizeof(v->sealed.wrapped_key), 1,
                                      &value),
                         -EBADMSG);
        assert_int_equal(secrets_open(v->dir, USER, SECRET, v->sealed.nonce, 12,
                                      v->sealed.ciphertext, n, v->sealed.wrapped_key,
                                      sizeof(v->sealed.wrapped_key), 1, &value),
                         -EBADMSG);
        assert_int_equal(secrets_open(v->dir, USER, SECRET, v->sealed.nonce,
                                      sizeof(v->sealed.nonce), v->sealed.ciphertext, 15,
                                      v->sealed.wrapped_key, sizeof(v->sealed.wrapped_key), 1,
                                      &value),
                         -EBADMSG);
        assert_int_equal(secrets_open(v->dir, USER, SECRET, v->sealed.nonce,
                                      sizeof(v->sealed.nonce), v->sealed.ciphertext, n,
                                      v->sealed.wrapped_key, sizeof(v->sealed.wrapped_key) - 1, 1,
                                      &value),
                         -EBADMSG);
        assert_null(value);
        free(ciphertext);
}

static void the_key_file_is_created_once_and_private(void **state)
{
        struct vault *v = *state;
        _cleanup_free_ char *path = str_printf("%s/master.key", v->dir);
        _cleanup_free_ char *text = NULL;
        struct stat st;
        size_t len = 0;
        char *value = NULL;

        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_int_equal(file_read_all(path, 4096, &text, &len), 0);
        assert_int_equal(len, 65);
        assert_int_equal(strspn(text, "0123456789abcdef"), 64);

        /* another key file: what the first key sealed does not open */
        _cleanup_free_ char *other_dir = test_tempdir("secrets-other");
        _cleanup_free_ char *other_key = str_printf("%s/master.key", other_dir);
        setenv("AGENTLY_MASTER_KEY_FILE", other_key, 1);
        assert_int_equal(
            open_as(v, USER, SECRET, 1, v->sealed.ciphertext, v->sealed.wrapped_key, &value),
            -ENOENT); /* opening never creates a key */
        struct secrets_sealed fresh = {0};
        assert_int_equal(secrets_seal(NULL, USER, SECRET, "x", 1, &fresh), 0);
        secrets_sealed_free(&fresh);
        assert_int_equal(
            open_as(v, USER, SECRET, 1, v->sealed.ciphertext, v->sealed.wrapped_key, &value),
            -EBADMSG);
        assert_null(value);

        /* a key file that is not 64 hex characters is refused, not used */
        assert_int_equal(file_write_atomic(other_key, "not-a-key\n", 10, 0600), 0);
        assert_int_equal(secrets_seal(NULL, USER, SECRET, "x", 1, &fresh), -EBADMSG);
        assert_null(fresh.ciphertext);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
        test_rm_rf(other_dir);

        /* the original key still opens the original value */
        assert_int_equal(
            open_as(v, USER, SECRET, 1, v->sealed.ciphertext, v->sealed.wrapped_key, &value), 0);
        assert_string_equal(value, VALUE);
        secrets_value_free(value);
}

static void a_value_too_long_is_refused(void **state)
{
        struct vault *v = *state;
        struct secrets_sealed out = {0};
        char *big = malloc(SECRETS_MAX_VALUE + 1);

        assert_non_null(big);
        memset(big, 'a', SECRETS_MAX_VALUE + 1);
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, big, SECRETS_MAX_VALUE + 1, &out),
                         -EFBIG);
        assert_null(out.ciphertext);
        assert_int_equal(secrets_seal(v->dir, USER, SECRET, big, SECRETS_MAX_VALUE, &out), 0);
        assert_int_equal(out.ciphertext_len, SECRETS_MAX_VALUE + 16);
        secrets_sealed_free(&out);
        free(big);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(seal_then_open_gives_the_value, vault_setup,
                                            vault_teardown),
            cmocka_unit_test_setup_teardown(wrong_associated_data_is_refused, vault_setup,
                                            vault_teardown),
            cmocka_unit_test_setup_teardown(tampering_is_refused, vault_setup, vault_teardown),
            cmocka_unit_test_setup_teardown(the_key_file_is_created_once_and_private, vault_setup,
                                            vault_teardown),
            cmocka_unit_test_setup_teardown(a_value_too_long_is_refused, vault_setup,
                                            vault_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
