/* Unit tests for the expression language and templates (src/engine/expr.c, tmpl.c): what
 * expressions evaluate to, how missing paths and type errors behave, that syntax errors
 * carry the right column, and that every size a user controls is bounded. */
#include "testlib.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "engine.h"
#include "expr.h"

static json_t *scope(void)
{
        json_error_t jerr;
        json_t *s = json_loads(
            "{\"input\":{\"name\":\"ann\",\"n\":7,\"xs\":[10,20,30],\"obj\":{\"k-1\":true},"
            "\"half\":0.5,\"text\":\"[1,2]\",\"empty\":\"\"},"
            "\"nodes\":{\"fetch\":{\"status\":\"completed\",\"output\":{\"items\":[{\"id\":"
            "\"a\"},{\"id\":\"b\"}]}},\"my-node\":{\"status\":\"skipped\",\"output\":null}},"
            "\"run\":{\"id\":\"r-1\"},\"item\":{\"v\":3},\"index\":4}",
            0, &jerr);
        assert_non_null(s);
        return s;
}

/* Evaluates src and compares with the expected JSON text. */
static void eval_is(const char *src, const char *expected)
{
        _cleanup_json_ json_t *s = scope(), *err = NULL, *out = NULL;
        struct wf_expr *e = NULL;
        json_error_t jerr;
        _cleanup_json_ json_t *want = json_loads(expected, JSON_DECODE_ANY, &jerr);

        assert_non_null(want);
        if (wf_expr_parse(src, &e, &err) < 0)
                fail_msg("%s: parse error %s", src,
                         json_string_value(json_object_get(err, "message")));
        if (wf_expr_eval(e, s, &out, &err) < 0)
                fail_msg("%s: eval error %s", src,
                         json_string_value(json_object_get(err, "message")));
        if (!json_equal(out, want)) {
                _cleanup_free_ char *got = json_dumps(out, JSON_ENCODE_ANY | JSON_COMPACT);
                fail_msg("%s: expected %s, got %s", src, expected, got);
        }
        assert_string_equal(wf_expr_source(e), src);
        wf_expr_free(e);
}

static void eval_fails(const char *src, const char *needle, int column)
{
        _cleanup_json_ json_t *s = scope(), *err = NULL, *out = NULL;
        struct wf_expr *e = NULL;

        assert_int_equal(wf_expr_parse(src, &e, &err), 0);
        assert_int_equal(wf_expr_eval(e, s, &out, &err), -EINVAL);
        assert_null(out);
        const char *m = json_string_value(json_object_get(err, "message"));
        if (!m || !strstr(m, needle))
                fail_msg("%s: expected an error containing \"%s\", got \"%s\"", src, needle,
                         m ? m : "(none)");
        assert_int_equal(json_integer_value(json_object_get(err, "column")), column);
        wf_expr_free(e);
}

static void parse_fails(const char *src, const char *needle, int column)
{
        struct wf_expr *e = NULL;
        _cleanup_json_ json_t *err = NULL;

        assert_int_equal(wf_expr_parse(src, &e, &err), -EINVAL);
        assert_null(e);
        const char *m = json_string_value(json_object_get(err, "message"));
        if (!m || !strstr(m, needle))
                fail_msg("%s: expected a parse error containing \"%s\", got \"%s\"", src, needle,
                         m ? m : "(none)");
        if (json_integer_value(json_object_get(err, "column")) != column)
                fail_msg("%s: expected column %d, got %lld (%s)", src, column,
                         (long long)json_integer_value(json_object_get(err, "column")), m);
}

static void paths_literals_and_missing_values(void **state)
{
        eval_is("input.name", "\"ann\"");
        eval_is("input.xs[1]", "20");
        eval_is("input[\"name\"]", "\"ann\"");
        eval_is("input.obj['k-1']", "true");
        eval_is("nodes.fetch.output.items[1].id", "\"b\"");
        eval_is("nodes[\"my-node\"].status", "\"skipped\"");
        eval_is("run.id", "\"r-1\"");
        eval_is("item.v * index", "12");
        /* missing paths are null, never an error */
        eval_is("input.nope", "null");
        eval_is("input.nope.deeper[3].x", "null");
        eval_is("input.xs[99]", "null");
        eval_is("input.n.field", "null");
        eval_is("iteration", "null"); /* not in this scope */
        eval_is("42", "42");
        eval_is("-1.5", "-1.5");
        eval_is("'it\\'s' + \"\\n\"", "\"it's\\n\"");
        eval_is("\"caf\\u00e9\"", "\"café\"");
        eval_is("true && null", "false");
        eval_is("null", "null");
}

static void operators(void **state)
{
        eval_is("1 + 2 * 3", "7");
        eval_is("(1 + 2) * 3", "9");
        eval_is("7 / 2", "3.5");
        eval_is("8 / 2", "4");
        eval_is("7 % 3", "1");
        eval_is("input.n - 10", "-3");
        eval_is("input.half + 1", "1.5");
        eval_is("'a' + 'b'", "\"ab\"");
        eval_is("input.n == 7", "true");
        eval_is("input.n == 7.0", "true");
        eval_is("input.n != 7", "false");
        eval_is("input.n >= 7 && input.n < 8", "true");
        eval_is("'abc' < 'abd'", "true");
        eval_is("!input.empty", "true");
        eval_is("input.nope || 'fallback'", "true");
        eval_is("input.xs == json('[10, 20, 30]')", "true");
        eval_is("nodes.fetch.output == nodes.fetch.output", "true");
        eval_is("!(input.n > 3) || false", "false");
        eval_is("9223372036854775807 + 1", "9223372036854775808.0");
}

static void functions(void **state)
{
        eval_is("len(input.xs)", "3");
        eval_is("len(input.name)", "3");
        eval_is("len('café')", "4");
        eval_is("len(input.obj)", "1");
        eval_is("len(input.nope)", "0");
        eval_is("default(input.nope, 5)", "5");
        eval_is("default(input.n, 5)", "7");
        eval_is("string(input.n) + '!'", "\"7!\"");
        eval_is("string(input.half)", "\"0.5\"");
        eval_is("string(input.xs)", "\"[10,20,30]\"");
        eval_is("string(null)", "\"\"");
        eval_is("json(input.text)[1]", "2");
        eval_is("json('{\"a\": 1}').a", "1");
}

static void evaluation_errors_name_the_column(void **state)
{
        eval_fails("input.name - 1", "cannot apply '-' to string and number", 12);
        eval_fails("1 + input.name", "convert with string()", 3);
        eval_fails("input.n / 0", "division by zero", 9);
        eval_fails("input.n < 'x'", "cannot compare number with string", 9);
        eval_fails("len(input.n)", "len() needs a string, array or object", 1);
        eval_fails("json(input.name)", "json() could not parse", 1);
        eval_fails("input.xs[true]", "cannot index with a boolean", 9);
        eval_fails("-input.name", "cannot negate a string", 1);
        eval_fails("input.half % 2", "% needs two integers", 12);
}

static void syntax_errors_name_the_column(void **state)
{
        parse_fails("", "empty expression", 1);
        parse_fails("input.", "expected a name after '.'", 7);
        parse_fails("input.n ==", "expression ends too early", 11);
        parse_fails("input.n = 1", "use == to compare", 9);
        parse_fails("a & b", "use &&", 3);
        parse_fails("(1 + 2", "expected ')' to close '('", 7);
        parse_fails("input.xs[1", "expected ']'", 11);
        parse_fails("'abc", "unterminated string", 1);
        parse_fails("input.n 3", "is an operator missing?", 9);
        parse_fails("foo(1)", "unknown function 'foo'", 1);
        parse_fails("default(1)", "default() takes 2 arguments, got 1", 1);
        parse_fails("len(1 2)", "expected ')' or ',' in the argument list", 7);
        parse_fails("12abc", "malformed number", 1);
        parse_fails("'\\q'", "unknown escape", 2);
        parse_fails("input # x", "unexpected character '#'", 7);
        parse_fails("a }", "unexpected '}'", 3);
}

static void nesting_limits(void **state)
{
        struct wf_expr *e = NULL;
        _cleanup_json_ json_t *err = NULL;
        char buf[1200];
        size_t n = 0;

        for (int i = 0; i < 100; i++)
                buf[n++] = '(';
        buf[n++] = '1';
        for (int i = 0; i < 100; i++)
                buf[n++] = ')';
        buf[n] = '\0';
        assert_int_equal(wf_expr_parse(buf, &e, &err), -EINVAL);
        assert_non_null(strstr(json_string_value(json_object_get(err, "message")),
                               "nested too deeply (limit 64 levels)"));
        json_decref(err);
        err = NULL;

        n = 0;
        for (int i = 0; i < 200; i++)
                buf[n++] = '!';
        buf[n++] = '1';
        buf[n] = '\0';
        assert_int_equal(wf_expr_parse(buf, &e, &err), -EINVAL);
        json_decref(err);
        err = NULL;

        n = 0;
        buf[n++] = '1';
        for (int i = 0; i < 300; i++) {
                buf[n++] = '+';
                buf[n++] = '1';
        }
        buf[n] = '\0';
        assert_int_equal(wf_expr_parse(buf, &e, &err), -EINVAL);
        json_decref(err);
        err = NULL;

        /* length */
        _cleanup_free_ char *long_src = malloc(WF_EXPR_MAX_LEN + 2);
        memset(long_src, '1', WF_EXPR_MAX_LEN + 1);
        long_src[WF_EXPR_MAX_LEN + 1] = '\0';
        assert_int_equal(wf_expr_parse(long_src, &e, &err), -EINVAL);
        assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "too long"));
        json_decref(err);
        err = NULL;

        /* a reasonable expression is well inside the limits */
        assert_int_equal(wf_expr_parse("((input.a + 1) * 2 > 3 && !(input.b == 'x')) || "
                                       "default(input.c, len(input.d)) >= 4",
                                       &e, &err),
                         0);
        wf_expr_free(e);
}

static void string_growth_is_capped(void **state)
{
        /* doubling a string 30 times would be a gigabyte: evaluation stops at the cap */
        char src[1024];
        size_t n = 0;
        _cleanup_json_ json_t *s =
            json_pack("{s:{s:s}}", "input", "s",
                      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        struct wf_expr *e = NULL;
        _cleanup_json_ json_t *err = NULL, *out = NULL;

        /* json(string(x)) style re-growth is bounded too; build s+s+s+... as a chain */
        n += (size_t)snprintf(src + n, sizeof(src) - n, "input.s");
        for (int i = 0; i < 40; i++)
                n += (size_t)snprintf(src + n, sizeof(src) - n, "+input.s");
        assert_int_equal(wf_expr_parse(src, &e, &err), 0);
        assert_int_equal(wf_expr_eval(e, s, &out, &err), 0);
        assert_int_equal(json_string_length(out), 64 * 41);
        wf_expr_free(e);
        json_decref(out);
        out = NULL;

        /* a template repeating a 1 MiB-ish input many times is refused, not built */
        _cleanup_free_ char *big = malloc(600 * 1024 + 1);
        memset(big, 'y', 600 * 1024);
        big[600 * 1024] = '\0';
        json_object_set_new(json_object_get(s, "input"), "big", json_string(big));
        _cleanup_json_ json_t *tmpl = json_string("${ input.big }${ input.big }");
        assert_int_equal(wf_template_render(tmpl, s, &out, &err), -EINVAL);
        assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "too long"));
}

static void templates(void **state)
{
        _cleanup_json_ json_t *s = scope();
        json_error_t jerr;
        _cleanup_json_ json_t *tmpl = json_loads(
            "{\"url\":\"https://h/${ input.name }/${ index }\",\"raw\":\"${ input.xs }\","
            "\"spaced\":\"${input.n}\",\"mixed\":\"n=${ input.n }, ok=${ input.obj['k-1'] "
            "}\",\"missing\":\"[${ input.nope }]\",\"escaped\":\"$${ not } ${ 1 + 1 }\","
            "\"only_escape\":\"cost: $${x}\",\"const\":{\"a\":[1,\"two\",null]},"
            "\"list\":[\"${ item }\",\"${ '}' }\"]}",
            0, &jerr);
        _cleanup_json_ json_t *out = NULL, *err = NULL;

        assert_non_null(tmpl);
        assert_int_equal(wf_template_render(tmpl, s, &out, &err), 0);
        json_t *want = json_loads(
            "{\"url\":\"https://h/ann/4\",\"raw\":[10,20,30],\"spaced\":7,\"mixed\":\"n=7, "
            "ok=true\",\"missing\":\"[]\",\"escaped\":\"${ not } 2\",\"only_escape\":\"cost: "
            "${x}\",\"const\":{\"a\":[1,\"two\",null]},\"list\":[{\"v\":3},\"}\"]}",
            0, &jerr);
        if (!json_equal(out, want)) {
                _cleanup_free_ char *d = json_dumps(out, JSON_COMPACT);
                fail_msg("got %s", d);
        }
        json_decref(want);
        json_decref(out);
        out = NULL;

        /* an evaluation error names the path and the column */
        _cleanup_json_ json_t *bad = json_pack("{s:[s]}", "body", "x ${ input.name * 2 }");
        assert_int_equal(wf_template_render(bad, s, &out, &err), -EINVAL);
        assert_string_equal(json_string_value(json_object_get(err, "path")), "/body/0");
        assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "cannot apply"));
        json_decref(err);
        err = NULL;

        /* a syntax error inside ${ } is reported with its column in the string */
        _cleanup_json_ json_t *bad2 = json_string("abc ${ input. }");
        assert_int_equal(wf_template_render(bad2, s, &out, &err), -EINVAL);
        assert_int_equal(json_integer_value(json_object_get(err, "column")), 15);
        json_decref(err);
        err = NULL;
        _cleanup_json_ json_t *bad3 = json_string("abc ${ input.n ");
        assert_int_equal(wf_template_render(bad3, s, &out, &err), -EINVAL);
        assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "missing '}'"));
}

static void truthiness(void **state)
{
        _cleanup_json_ json_t *f = json_pack("[b,n,i,f,s,[],{}]", 0, 0, 0.0, "");
        _cleanup_json_ json_t *t = json_pack("[b,i,f,s,[i],{s:i}]", 1, -1, 0.1, "x", 0, "a", 0);
        size_t i;
        json_t *v;
        json_array_foreach (f, i, v)
                assert_false(wf_expr_truthy(v));
        json_array_foreach (t, i, v)
                assert_true(wf_expr_truthy(v));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(paths_literals_and_missing_values),
            cmocka_unit_test(operators),
            cmocka_unit_test(functions),
            cmocka_unit_test(evaluation_errors_name_the_column),
            cmocka_unit_test(syntax_errors_name_the_column),
            cmocka_unit_test(nesting_limits),
            cmocka_unit_test(string_growth_is_capped),
            cmocka_unit_test(templates),
            cmocka_unit_test(truthiness),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
