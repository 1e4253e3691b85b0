/* Unit tests for src/base: capped buffers, strict number parsing, durations. */
#include "testlib.h"

#include <errno.h>
#include <string.h>

#include "buf.h"
#include "duration.h"
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

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(buf_respects_its_cap),
            cmocka_unit_test(str_to_int64_is_strict),
            cmocka_unit_test(durations_parse_as_users_write_them),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
