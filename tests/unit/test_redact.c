/*
 * The redaction choke point (src/base/redact.c): registered values are masked as
 * [secret:NAME] in text, in JSON strings and keys, in log lines (whole, before the logger
 * cuts them), the longest pattern wins, short values are refused, and unregistering stops
 * the masking.
 */
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "redact.h"

static const char canary[] = "sk-canary-0123456789";
static const char canary_long[] = "sk-canary-0123456789-and-more";

static int setup(void **state)
{
        assert_int_equal(redact_register("OPENAI_API_KEY", canary, strlen(canary)), 1);
        assert_int_equal(redact_register("LONGER", canary_long, strlen(canary_long)), 1);
        return 0;
}

static int teardown(void **state)
{
        redact_unregister(canary);
        redact_unregister(canary_long);
        assert_int_equal(redact_count(), 0);
        return 0;
}

static void masks_text(void **state)
{
        char *out = NULL;
        size_t n = 0;
        const char *in = "Authorization: Bearer sk-canary-0123456789 and sk-canary-0123456789!";

        assert_int_equal(redact_text(in, strlen(in), &out, &n), 1);
        assert_string_equal(out, "Authorization: Bearer [secret:OPENAI_API_KEY] and "
                                 "[secret:OPENAI_API_KEY]!");
        assert_int_equal(n, strlen(out));
        free(out);

        /* the longest pattern at a position wins */
        in = "x sk-canary-0123456789-and-more y";
        assert_int_equal(redact_text(in, strlen(in), &out, NULL), 1);
        assert_string_equal(out, "x [secret:LONGER] y");
        free(out);

        /* nothing to mask: no copy */
        in = "sk-canary-012345678 (one character short)";
        assert_int_equal(redact_text(in, strlen(in), &out, NULL), 0);
        assert_null(out);

        /* the whole text being the value, and bytes after a NUL are scanned too */
        char raw[64];
        size_t len = strlen(canary);
        raw[0] = '\0';
        memcpy(raw + 1, canary, len);
        assert_int_equal(redact_text(raw, len + 1, &out, &n), 1);
        assert_int_equal(n, 1 + strlen("[secret:OPENAI_API_KEY]"));
        assert_memory_equal(out + 1, "[secret:OPENAI_API_KEY]", n - 1);
        free(out);

        char *copy = redact_strdup(canary);
        assert_string_equal(copy, "[secret:OPENAI_API_KEY]");
        free(copy);
}

static void masks_json_strings_and_keys(void **state)
{
        json_error_t err;
        json_t *v =
            json_loads("{\"body\": \"echo sk-canary-0123456789\", \"sk-canary-0123456789\": "
                       "[1, \"sk-canary-0123456789-and-more\"], \"n\": 3}",
                       0, &err);
        assert_non_null(v);
        assert_int_equal(redact_json(v), 1);
        char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        assert_string_equal(text, "{\"[secret:OPENAI_API_KEY]\":[1,\"[secret:LONGER]\"],"
                                  "\"body\":\"echo [secret:OPENAI_API_KEY]\",\"n\":3}");
        free(text);
        assert_int_equal(redact_json(v), 0);
        json_decref(v);
}

static void refuses_short_values_and_counts_once(void **state)
{
        assert_int_equal(redact_register("SHORT", "abc", 3), -EINVAL);
        assert_int_equal(redact_register("", "abcdef", 6), -EINVAL);
        /* the same bytes twice: known already */
        char again[sizeof(canary)];
        memcpy(again, canary, sizeof(canary));
        assert_int_equal(redact_register("OTHER", again, strlen(again)), 0);
        assert_int_equal(redact_count(), 2);
}

static void unregister_stops_masking(void **state)
{
        static const char temp[] = "temporary-value";
        char *out = NULL;

        assert_int_equal(redact_register("TEMP", temp, strlen(temp)), 1);
        assert_int_equal(redact_text(temp, strlen(temp), &out, NULL), 1);
        assert_string_equal(out, "[secret:TEMP]");
        free(out);
        out = NULL;
        redact_unregister(temp);
        assert_int_equal(redact_text(temp, strlen(temp), &out, NULL), 0);
        /* the others still are masked */
        assert_int_equal(redact_text(canary, strlen(canary), &out, NULL), 1);
        free(out);
}

/* A log line is masked whole: a value straddling the logger's 4 KiB cut leaves no prefix. */
static void log_lines_are_masked_before_the_cut(void **state)
{
        char path[] = "/tmp/test_redact_XXXXXX";
        int fd = mkstemp(path);
        int saved = dup(STDERR_FILENO);
        char pad[4090];

        assert_int_ge(fd, 0);
        memset(pad, 'x', sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = '\0';
        log_setup("test");
        dup2(fd, STDERR_FILENO);
        log_error("%s%s", pad, canary);
        log_errno(-EIO, "could not send %s", canary);
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);

        char buf[16384];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        assert_int_gt(n, 0);
        buf[n] = '\0';
        close(fd);
        unlink(path);
        assert_null(strstr(buf, "sk-can"));
        assert_non_null(strstr(buf, "could not send [secret:OPENAI_API_KEY]: Input/output error"));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(masks_text, setup, teardown),
            cmocka_unit_test_setup_teardown(masks_json_strings_and_keys, setup, teardown),
            cmocka_unit_test_setup_teardown(refuses_short_values_and_counts_once, setup, teardown),
            cmocka_unit_test_setup_teardown(unregister_stops_masking, setup, teardown),
            cmocka_unit_test_setup_teardown(log_lines_are_masked_before_the_cut, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
