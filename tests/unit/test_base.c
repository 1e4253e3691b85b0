/* Unit tests for src/base: capped buffers, strict number parsing, durations, the JSON Schema
 * subset, JSON text that Postgres wrote. */
#include "testlib.h"

#include <errno.h>
#include <string.h>

#include "buf.h"
#include "duration.h"
#include "json_schema.h"
#include "pgjson.h"
#include "strutil.h"

static void buf_respects_its_cap(void **state)
{
        struct buf b;

        buf_init(&b, 8);
        assert_int_equal(buf_append_str(&b, "12345"), 0);
        assert_int_equal(buf_append_str(&b, "6789"), -ENOBUFS);
        assert_string_equal(b.data, "12345"); /* unchanged after a refused append */
        assert_int_equal(buf_printf(&b, "%d", 678), 0);
        assert_string_equal(b.data, "12345678");
        assert_int_equal(buf_printf(&b, "x"), -ENOBUFS);
        buf_free(&b);
}

static void str_to_int64_is_strict(void **state)
{
        int64_t v;

        assert_int_equal(str_to_int64("42", &v), 0);
        assert_int_equal(v, 42);
        assert_int_equal(str_to_int64("-7", &v), 0);
        assert_int_equal(v, -7);
        assert_int_equal(str_to_int64("", &v), -EINVAL);
        assert_int_equal(str_to_int64("12x", &v), -EINVAL);
        assert_int_equal(str_to_int64("99999999999999999999", &v), -ERANGE);
}

/* What JSON and Postgres accept, exactly: the API checks request text with it. */
static void utf8_is_checked_strictly(void **state)
{
        static const char *const valid[] = {
            "", "ascii", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf"};
        static const char *const invalid[] = {"\xff",
                                              "\x80",
                                              "a\xc3",
                                              "\xc3\x28",
                                              "\xc0\xaf",
                                              "\xe0\x80\xaf",
                                              "\xed\xa0\x80",
                                              "\xf4\x90\x80\x80",
                                              "\xf0\x80\x80\xaf",
                                              "\xf8\x88\x80\x80\x80"};

        for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
                assert_true(str_is_utf8(valid[i], strlen(valid[i])));
        for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
                assert_false(str_is_utf8(invalid[i], strlen(invalid[i])));

        char *p = str_utf8_printable("/v1/me\xff\xfe", 100);
        assert_string_equal(p, "/v1/me\\xff\\xfe");
        free(p);
        p = str_utf8_printable("caf\xc3\xa9\xc3", 100);
        assert_string_equal(p, "caf\xc3\xa9\\xc3");
        free(p);
        /* cut at a character boundary, never inside one */
        p = str_utf8_printable("\xc3\xa9\xc3\xa9\xc3\xa9", 5);
        assert_string_equal(p, "\xc3\xa9\xc3\xa9...");
        free(p);
        p = str_utf8_printable("abc", 3);
        assert_string_equal(p, "abc");
        free(p);
}

static void durations_parse_as_users_write_them(void **state)
{
        int64_t ms;

        assert_int_equal(duration_parse_ms("2s", &ms), 0);
        assert_int_equal(ms, 2000);
        assert_int_equal(duration_parse_ms("250ms", &ms), 0);
        assert_int_equal(ms, 250);
        assert_int_equal(duration_parse_ms("1h30m", &ms), 0);
        assert_int_equal(ms, 5400000);
        assert_int_equal(duration_parse_ms("2w", &ms), 0);
        assert_int_equal(ms, 2 * 604800000LL);
        assert_int_equal(duration_parse_ms("90", &ms), 0);
        assert_int_equal(ms, 90000);
        assert_int_equal(duration_parse_ms("", &ms), -EINVAL);
        assert_int_equal(duration_parse_ms("5 s", &ms), -EINVAL);
        assert_int_equal(duration_parse_ms("3y", &ms), -EINVAL);
        assert_int_equal(duration_parse_ms("10s5", &ms), -EINVAL);
        assert_int_equal(duration_parse_ms("999999999w", &ms), -ERANGE);

        char out[32];
        duration_format(5400000, out, sizeof(out));
        assert_string_equal(out, "1h30m");
        duration_format(250, out, sizeof(out));
        assert_string_equal(out, "250ms");
}

/* The http_request tool's schema (src/agent/agent_tools.c) and a sandbox tool's shape. */
static const char TOOL_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"method\":{\"type\":\"string\",\"enum\":[\"GET\",\"POST\"]},"
    "\"url\":{\"type\":\"string\"},"
    "\"headers\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}},"
    "\"keep\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"n\":{\"type\":[\"integer\",\"null\"]}},"
    "\"required\":[\"method\",\"url\"],\"additionalProperties\":false}";

static void json_schema_names_the_wrong_field(void **state)
{
        static const struct {
                const char *value, *error; /* error NULL: accepted */
        } cases[] = {
            {"{\"method\":\"POST\",\"url\":\"http://x/\"}", NULL},
            {"{\"method\":\"GET\",\"url\":\"u\",\"headers\":{\"A\":\"b\"},\"keep\":[\"f\"],"
             "\"n\":null}",
             NULL},
            {"{\"method\":\"POST\",\"url\":\"u\",\"n\":3}", NULL},
            {"[]", "arguments must be an object"},
            {"{\"url\":\"u\"}", "arguments.method is required"},
            {"{\"method\":\"PUT\",\"url\":\"u\"}",
             "arguments.method must be one of [\"GET\",\"POST\"]"},
            {"{\"method\":\"GET\",\"url\":7}", "arguments.url must be a string"},
            {"{\"method\":\"GET\",\"url\":\"u\",\"headers\":{\"A\":1}}",
             "arguments.headers.A must be a string"},
            {"{\"method\":\"GET\",\"url\":\"u\",\"keep\":[\"a\",2]}",
             "arguments.keep[1] must be a string"},
            {"{\"method\":\"GET\",\"url\":\"u\",\"n\":1.5}",
             "arguments.n must be one of integer, null"},
            {"{\"method\":\"GET\",\"url\":\"u\",\"bogus\":1}",
             "arguments.bogus is not a field the schema allows"},
        };
        json_error_t jerr;
        json_t *schema = json_loads(TOOL_SCHEMA, 0, &jerr);
        char error[256];

        (void)state;
        assert_non_null(schema);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *v = json_loads(cases[i].value, 0, &jerr);
                assert_non_null(v);
                int r = json_schema_check(schema, v, "arguments", error, sizeof(error));
                if (!cases[i].error) {
                        assert_int_equal(r, 0);
                        assert_string_equal(error, "");
                } else {
                        assert_int_equal(r, -EINVAL);
                        assert_string_equal(error, cases[i].error);
                }
                json_decref(v);
        }
        /* no schema accepts anything */
        assert_int_equal(json_schema_check(NULL, schema, "arguments", error, sizeof(error)), 0);
        json_decref(schema);
}

/* What jsonb writes for numbers that jansson writes as reals (1e20 -> 20 digits) is read
 * back as those reals; integers that fit stay integers, digits inside strings stay as they
 * are, and a document that is not JSON is still refused. */
static void pgjson_reads_what_postgres_writes(void **state)
{
        json_error_t err;
        json_t *v = pgjson_loads(
            "{\"big\": 100000000000000000000, \"neg\": -1500000000000000000000000, \"max\": "
            "9223372036854775807, \"min\": -9223372036854775808, \"small\": 123456789012345678, "
            "\"s\": \"1000000000000000000000 \\\" 99999999999999999999\", \"r\": 0.00001, "
            "\"a\": [100000000000000000000, {\"k\": 100000000000000000000}]}",
            0, &err);

        (void)state;
        assert_non_null(v);
        assert_true(json_is_real(json_object_get(v, "big")));
        assert_double_equal(json_real_value(json_object_get(v, "big")), 1e20);
        assert_double_equal(json_real_value(json_object_get(v, "neg")), -1.5e24);
        assert_int_equal(json_integer_value(json_object_get(v, "max")), INT64_MAX);
        assert_int_equal(json_integer_value(json_object_get(v, "min")), INT64_MIN);
        assert_int_equal(json_integer_value(json_object_get(v, "small")), 123456789012345678);
        assert_string_equal(json_string_value(json_object_get(v, "s")),
                            "1000000000000000000000 \" 99999999999999999999");
        assert_double_equal(json_real_value(json_object_get(v, "r")), 0.00001);
        assert_double_equal(json_real_value(json_array_get(json_object_get(v, "a"), 0)), 1e20);
        json_decref(v);
        /* plain json_loads refuses the same document */
        v = json_loads("[100000000000000000000]", 0, &err);
        assert_null(v);
        assert_int_equal(json_error_code(&err), json_error_numeric_overflow);
        /* still JSON only */
        assert_null(pgjson_loads("[100000000000000000000, oops]", 0, &err));
        assert_null(pgjson_loads("{\"a\": 1", 0, &err));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(buf_respects_its_cap),
            cmocka_unit_test(str_to_int64_is_strict),
            cmocka_unit_test(utf8_is_checked_strictly),
            cmocka_unit_test(durations_parse_as_users_write_them),
            cmocka_unit_test(json_schema_names_the_wrong_field),
            cmocka_unit_test(pgjson_reads_what_postgres_writes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
