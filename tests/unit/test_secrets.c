/* Unit tests for src/secrets: the vault's seal/open round trip, what the associated data
 * binds, tampering refused, the key file's creation and format, the command KMS provider
 * (tests/support/kms-test-provider) and how it fails, re-wrapping under a new key version,
 * secret names. No database. */
#include "testlib.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* The local provider of dir (or of AGENTLY_MASTER_KEY_FILE), as each process builds it. */
static int seal_in(const char *dir, const char *user, const char *secret, const char *value,
                   size_t len, struct secrets_sealed *out)
{
        struct secrets_kms k;
        int r;

        unsetenv("AGENTLY_KMS_COMMAND");
        assert_int_equal(secrets_kms_init(&k, dir), 0);
        r = secrets_seal(&k, "local", SECRETS_KEY_VERSION_LOCAL, user, secret, value, len, out,
                         NULL);
        secrets_kms_release(&k);
        return r;
}

static int open_in(const char *dir, const char *user, const char *secret,
                   const unsigned char *nonce, size_t nonce_len, const unsigned char *ciphertext,
                   size_t len, const unsigned char *wrapped, size_t wrapped_len, int version,
                   char **value)
{
        struct secrets_kms k;
        int r;

        assert_int_equal(secrets_kms_init(&k, dir), 0);
        r = secrets_open(&k, "local", user, secret, nonce, nonce_len, ciphertext, len, wrapped,
                         wrapped_len, version, value, NULL, NULL);
        secrets_kms_release(&k);
        return r;
}

static int vault_setup(void **state)
{
        struct vault *v = calloc(1, sizeof(*v));

        assert_non_null(v);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
        v->dir = test_tempdir("secrets");
        assert_int_equal(seal_in(v->dir, USER, SECRET, VALUE, strlen(VALUE), &v->sealed), 0);
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
        return open_in(v->dir, user, secret, v->sealed.nonce, sizeof(v->sealed.nonce), ciphertext,
                       v->sealed.ciphertext_len, wrapped_key, v->sealed.wrapped_len, version, out);
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
        assert_int_equal(seal_in(v->dir, USER, SECRET, VALUE, strlen(VALUE), &again), 0);
        assert_int_equal(again.ciphertext_len, v->sealed.ciphertext_len);
        assert_int_not_equal(memcmp(again.ciphertext, v->sealed.ciphertext, again.ciphertext_len),
                             0);
        secrets_sealed_free(&again);

        /* the empty value is a value */
        assert_int_equal(seal_in(v->dir, USER, SECRET, "", 0, &again), 0);
        assert_int_equal(open_in(v->dir, USER, SECRET, again.nonce, sizeof(again.nonce),
                                 again.ciphertext, again.ciphertext_len, again.wrapped_key,
                                 again.wrapped_len, again.key_version, &value),
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
        /* version 2 is another key file; with the same key in it, the bound version alone
         * refuses */
        _cleanup_free_ char *one = str_printf("%s/master.key", v->dir);
        _cleanup_free_ char *two = str_printf("%s/master.key.2", v->dir);
        _cleanup_free_ char *key = NULL;
        size_t key_len = 0;
        assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL + 1,
                                 v->sealed.ciphertext, v->sealed.wrapped_key, &value),
                         -ENOENT);
        assert_int_equal(file_read_all(one, 4096, &key, &key_len), 0);
        assert_int_equal(file_write_atomic(two, key, key_len, 0600), 0);
        assert_int_equal(open_as(v, USER, SECRET, SECRETS_KEY_VERSION_LOCAL + 1,
                                 v->sealed.ciphertext, v->sealed.wrapped_key, &value),
                         -EBADMSG);
        assert_null(value);

        /* a wrapped key moved from another secret's row does not open this ciphertext */
        struct secrets_sealed other = {0};
        assert_int_equal(seal_in(v->dir, USER, SECRET, VALUE, strlen(VALUE), &other), 0);
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
        unsigned char wrapped[72];
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
        assert_int_equal(open_in(v->dir, USER, SECRET, nonce, sizeof(nonce), v->sealed.ciphertext,
                                 n, v->sealed.wrapped_key, v->sealed.wrapped_len, 1, &value),
                         -EBADMSG);
        assert_int_equal(open_in(v->dir, USER, SECRET, v->sealed.nonce, sizeof(v->sealed.nonce),
                                 v->sealed.ciphertext, n - 1, v->sealed.wrapped_key,
                                 v->sealed.wrapped_len, 1, &value),
                         -EBADMSG);
        assert_int_equal(open_in(v->dir, USER, SECRET, v->sealed.nonce, 12, v->sealed.ciphertext, n,
                                 v->sealed.wrapped_key, v->sealed.wrapped_len, 1, &value),
                         -EBADMSG);
        assert_int_equal(open_in(v->dir, USER, SECRET, v->sealed.nonce, sizeof(v->sealed.nonce),
                                 v->sealed.ciphertext, 15, v->sealed.wrapped_key,
                                 v->sealed.wrapped_len, 1, &value),
                         -EBADMSG);
        assert_int_equal(open_in(v->dir, USER, SECRET, v->sealed.nonce, sizeof(v->sealed.nonce),
                                 v->sealed.ciphertext, n, v->sealed.wrapped_key,
                                 v->sealed.wrapped_len - 1, 1, &value),
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
        assert_int_equal(seal_in(NULL, USER, SECRET, "x", 1, &fresh), 0);
        secrets_sealed_free(&fresh);
        assert_int_equal(
            open_as(v, USER, SECRET, 1, v->sealed.ciphertext, v->sealed.wrapped_key, &value),
            -EBADMSG);
        assert_null(value);

        /* a key file that is not 64 hex characters is refused, not used */
        assert_int_equal(file_write_atomic(other_key, "not-a-key\n", 10, 0600), 0);
        assert_int_equal(seal_in(NULL, USER, SECRET, "x", 1, &fresh), -EBADMSG);
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
        assert_int_equal(seal_in(v->dir, USER, SECRET, big, SECRETS_MAX_VALUE + 1, &out), -EFBIG);
        assert_null(out.ciphertext);
        assert_int_equal(seal_in(v->dir, USER, SECRET, big, SECRETS_MAX_VALUE, &out), 0);
        assert_int_equal(out.ciphertext_len, SECRETS_MAX_VALUE + 16);
        secrets_sealed_free(&out);
        free(big);
}

/* The command provider: a value sealed through tests/support/kms-test-provider opens again
 * through it; the program saw exactly one wrap and one unwrap, under the version asked. */
static void the_command_provider_round_trips(void **state)
{
        struct vault *v = *state;
        _cleanup_free_ char *keyfile = str_printf("%s/test-kms.key", v->dir);
        _cleanup_free_ char *logfile = str_printf("%s/test-kms.log", v->dir);
        _cleanup_free_ char *cmd =
            str_printf("%s/tests/support/kms-test-provider", AGENTLY_SOURCE_DIR);
        _cleanup_free_ char *seen = NULL;
        struct secrets_sealed s = {0};
        struct secrets_kms k;
        char *value = NULL, *error = NULL;
        size_t len = 0;

        setenv("KMS_TEST_KEY_FILE", keyfile, 1);
        setenv("KMS_TEST_LOG", logfile, 1);
        setenv("AGENTLY_KMS_COMMAND", cmd, 1);
        assert_int_equal(secrets_kms_init(&k, v->dir), 0);
        assert_string_equal(secrets_kms_new_provider(&k), "command");
        assert_int_equal(
            secrets_seal(&k, "command", 7, USER, SECRET, VALUE, strlen(VALUE), &s, &error), 0);
        assert_null(error);
        assert_int_equal(s.key_version, 7);
        assert_int_equal(s.wrapped_len, 16 + 32 + 32); /* the script's nonce, key, tag */
        assert_int_equal(secrets_open(&k, "command", USER, SECRET, s.nonce, sizeof(s.nonce),
                                      s.ciphertext, s.ciphertext_len, s.wrapped_key, s.wrapped_len,
                                      7, &value, &len, &error),
                         0);
        assert_string_equal(value, VALUE);
        assert_int_equal(len, strlen(VALUE));
        secrets_value_free(value);
        assert_int_equal(file_read_all(logfile, 4096, &seen, &len), 0);
        assert_string_equal(seen, "wrap 7\nunwrap 7\n");

        /* the context binds: another secret id does not open (the program refuses) */
        assert_int_equal(secrets_open(&k, "command", USER, "0b0e0d6a-2222-4c3b-9a6e-000000000009",
                                      s.nonce, sizeof(s.nonce), s.ciphertext, s.ciphertext_len,
                                      s.wrapped_key, s.wrapped_len, 7, &value, NULL, &error),
                         -EBADMSG);
        assert_null(value);
        assert_non_null(strstr(error, "kms provider 'command'"));
        assert_non_null(strstr(error, "does not open under key version 7"));
        free(error);
        error = NULL;

        /* re-wrapping never creates a key file (rotation makes the version's key first):
         * without one nothing changes */
        _cleanup_free_ char *two = str_printf("%s/master.key.2", v->dir);
        assert_int_equal(secrets_rewrap(&k, USER, SECRET, "command", "local", 2, &s, &error),
                         -ENOENT);
        assert_int_equal(s.key_version, 7);
        assert_int_equal(access(two, F_OK), -1);
        free(error);
        error = NULL;
        unsigned char dek[SECRETS_DATA_KEY_BYTES] = {0}, *w = NULL;
        size_t wl = 0;
        assert_int_equal(secrets_kms_wrap(&k, "local", 2, "make the key", dek, true, &w, &wl, NULL),
                         0);
        free(w);
        /* with it, the value moves to the local key file, version 2, and still opens */
        assert_int_equal(secrets_rewrap(&k, USER, SECRET, "command", "local", 2, &s, &error), 0);
        assert_int_equal(s.key_version, 2);
        assert_int_equal(s.wrapped_len, 72);
        assert_int_equal(open_in(v->dir, USER, SECRET, s.nonce, sizeof(s.nonce), s.ciphertext,
                                 s.ciphertext_len, s.wrapped_key, s.wrapped_len, 2, &value),
                         0);
        assert_string_equal(value, VALUE);
        secrets_value_free(value);
        secrets_sealed_free(&s);
        secrets_kms_release(&k);
        unsetenv("AGENTLY_KMS_COMMAND");
        unsetenv("KMS_TEST_LOG");
}

/* Each way the program can fail gives an error that names the provider and says what
 * happened — never a crash, never a value. */
static void a_failing_command_provider_says_so(void **state)
{
        struct vault *v = *state;
        _cleanup_free_ char *keyfile = str_printf("%s/test-kms.key", v->dir);
        _cleanup_free_ char *cmd =
            str_printf("%s/tests/support/kms-test-provider", AGENTLY_SOURCE_DIR);
        static const struct {
                const char *mode;
                int r;
                const char *says;
        } cases[] = {
            {"exit", -EIO, "failed with exit status 3: kms-test-provider: the KMS is unreachable"},
            {"garbage", -EIO, "answered a line that is not a JSON object"},
            {"refuse", -EIO, "refused to wrap with key version 3: access denied"},
            {"hang", -EIO, "did not answer within 3 s"},
        };
        struct secrets_sealed s = {0};
        struct secrets_kms k;

        setenv("KMS_TEST_KEY_FILE", keyfile, 1);
        setenv("AGENTLY_KMS_COMMAND", cmd, 1);
        assert_int_equal(secrets_kms_init(&k, v->dir), 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *error = NULL;
                /* long enough for python3 to start on a loaded machine, except to hang */
                k.timeout_ms = strcmp(cases[i].mode, "hang") ? 60000 : 3000;
                setenv("KMS_TEST_FAIL", cases[i].mode, 1);
                assert_int_equal(
                    secrets_seal(&k, "command", 3, USER, SECRET, VALUE, strlen(VALUE), &s, &error),
                    cases[i].r);
                assert_null(s.ciphertext);
                assert_non_null(error);
                assert_non_null(strstr(error, "kms provider 'command'"));
                if (!strstr(error, cases[i].says))
                        fail_msg("mode %s: error '%s' does not say '%s'", cases[i].mode, error,
                                 cases[i].says);
                assert_null(strstr(error, VALUE));
                free(error);
        }
        unsetenv("KMS_TEST_FAIL");

        /* a program that does not exist */
        free(k.command);
        k.command = strdup("/nonexistent/kms-program");
        char *error = NULL;
        assert_int_equal(
            secrets_seal(&k, "command", 3, USER, SECRET, VALUE, strlen(VALUE), &s, &error), -EIO);
        assert_non_null(strstr(error, "`/nonexistent/kms-program` failed with exit status 127"));
        free(error);
        error = NULL;

        /* no command configured, an unknown provider */
        free(k.command);
        k.command = NULL;
        assert_int_equal(
            secrets_seal(&k, "command", 3, USER, SECRET, VALUE, strlen(VALUE), &s, &error),
            -EINVAL);
        assert_non_null(strstr(error, "set AGENTLY_KMS_COMMAND"));
        free(error);
        error = NULL;
        assert_int_equal(
            secrets_seal(&k, "vault", 3, USER, SECRET, VALUE, strlen(VALUE), &s, &error), -EINVAL);
        assert_string_equal(error, "unknown kms provider 'vault' (key version 3); known: local, "
                                   "command");
        free(error);
        secrets_kms_release(&k);
        unsetenv("AGENTLY_KMS_COMMAND");
}

static void names_follow_environment_variable_habits(void **state)
{
        const char *good[] = {"OPENAI_API_KEY",
                              "LLMKEY",
                              "openai",
                              "api-key",
                              "a.b",
                              "_X",
                              "9x",
                              "A123456789012345678901234567890123456789012345678901234567890bc"};
        const char *bad[] = {
            "",    "-x",
            ".x",  "has space",
            "x$",  "Ünïcode",
            "a/b", "A1234567890123456789012345678901234567890123456789012345678901bc"};

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                if (!secrets_name_valid(good[i]))
                        fail_msg("'%s' should be a valid name", good[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (secrets_name_valid(bad[i]))
                        fail_msg("'%s' should not be a valid name", bad[i]);
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
            cmocka_unit_test_setup_teardown(the_command_provider_round_trips, vault_setup,
                                            vault_teardown),
            cmocka_unit_test_setup_teardown(a_failing_command_provider_says_so, vault_setup,
                                            vault_teardown),
            cmocka_unit_test(names_follow_environment_variable_habits),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
