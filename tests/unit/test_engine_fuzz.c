/* Fuzz-style robustness tests for src/engine: mutated definitions (byte edits of the JSON
 * text, and structural edits of valid definitions), random expressions and random
 * snapshots must never crash the parser, the evaluator or the planner; they either work or
 * fail with an error. Deterministic (a fixed PRNG seed) so a failure reproduces; CI runs it
 * under ASan+UBSan. AGENTLY_FUZZ_ITERATIONS scales the run. */
#include "testlib.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "engine.h"
#include "expr.h"
#include "strutil.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
        /* xorshift64* */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t pick(size_t n)
{
        return n ? (size_t)(rnd() % n) : 0;
}

static int iterations(int dflt)
{
        const char *s = getenv("AGENTLY_FUZZ_ITERATIONS");
        int n;
        if (s && str_to_int(s, &n) == 0 && n > 0)
                return n;
        return dflt;
}

static const char *const seeds[] = {
    "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":"
    "\"POST\",\"url\":\"http://127.0.0.1:9/x\",\"body\":{}}},{\"id\":\"b\",\"type\":\"sleep\","
    "\"duration\":\"2s\",\"after\":[\"a\"]}]}",

    "{\"name\":\"all\",\"timeout\":\"2h\",\"output\":{\"n\":\"${ len(nodes.fan.output) }\"},"
    "\"nodes\":[{\"id\":\"get\",\"type\":\"http\",\"request\":{\"url\":\"https://e/${ "
    "input.p }\",\"headers\":{\"X\":\"${ run.id }\"}},\"expect_status\":[200,\"3xx\"],"
    "\"retry\":{\"max_attempts\":3,\"retry_on\":[\"network\"]},\"on_failure\":\"continue\"},"
    "{\"id\":\"c\",\"type\":\"condition\",\"if\":\"nodes.get.status == 'completed'\","
    "\"after\":[\"get\"],\"then\":[\"fan\"],\"else\":[\"t\"]},"
    "{\"id\":\"fan\",\"type\":\"map\",\"items\":\"default(input.list, [])\",\"concurrency\":2,"
    "\"node\":{\"type\":\"transform\",\"output\":{\"i\":\"${ index }\",\"v\":\"${ item }\"}}},"
    "{\"id\":\"poll\",\"type\":\"loop\",\"max_iterations\":4,\"until\":\"iteration >= 2\","
    "\"node\":{\"type\":\"noop\"}},"
    "{\"id\":\"w\",\"type\":\"wait_event\",\"event\":\"go\",\"timeout\":\"1m\"},"
    "{\"id\":\"s\",\"type\":\"subworkflow\",\"workflow\":\"kid\",\"input\":{\"a\":\"${ input "
    "}\"}},"
    "{\"id\":\"z\",\"type\":\"sleep\",\"until\":\"input.at\"},"
    "{\"id\":\"t\",\"type\":\"transform\",\"output\":\"${ nodes.get.output }\"},"
    "{\"id\":\"end\",\"type\":\"noop\",\"when\":\"input.go\",\"after\":[\"t\",\"fan\","
    "\"poll\",\"w\",\"s\",\"z\"]}]}",
};

static const char *const fragments[] = {
    "${",
    "}",
    "${ input }",
    "\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "null",
    "true",
    "0",
    "-1",
    "1e308",
    "\"after\":[\"a\"]",
    "\"type\":\"map\"",
    "\\u0000",
    "${ nodes.a.output }",
    "((((",
    "!!!!",
    "'",
    "\\",
    "$${",
    "99999999999999999999",
    "\"id\":\"a\"",
};

static void mutate_text(char *buf, size_t *len, size_t cap)
{
        int edits = 1 + (int)pick(4);
        for (int k = 0; k < edits; k++) {
                size_t at = pick(*len + 1);
                switch (pick(4)) {
                case 0: /* flip a byte */
                        if (*len)
                                buf[pick(*len)] = (char)(rnd() & 0xff);
                        break;
                case 1: { /* delete a span */
                        size_t n = pick(16);
                        if (at + n > *len)
                                n = *len - at;
                        memmove(buf + at, buf + at + n, *len - at - n);
                        *len -= n;
                        break;
                }
                case 2: { /* insert a fragment */
                        const char *f = fragments[pick(sizeof(fragments) / sizeof(*fragments))];
                        size_t n = strlen(f);
                        if (*len + n >= cap)
                                break;
                        memmove(buf + at + n, buf + at, *len - at);
                        memcpy(buf + at, f, n);
                        *len += n;
                        break;
                }
                default: { /* duplicate a span */
                        size_t from = pick(*len), n = pick(32);
                        if (from + n > *len)
                                n = *len - from;
                        if (*len + n >= cap)
                                break;
                        char tmp[32];
                        memcpy(tmp, buf + from, n);
                        memmove(buf + at + n, buf + at, *len - at);
                        memcpy(buf + at, tmp, n);
                        *len += n;
                }
                }
        }
}

static json_t *random_value(int depth)
{
        switch (pick(depth > 2 ? 6 : 8)) {
        case 0:
                return json_null();
        case 1:
                return json_boolean(pick(2));
        case 2:
                return json_integer((json_int_t)(rnd() % 20001) - 10000);
        case 3:
                return json_real((double)(rnd() % 1000) / 7.0);
        case 4:
                return json_string(fragments[pick(sizeof(fragments) / sizeof(*fragments))]);
        case 5: {
                static const char *const words[] = {"a",   "b",    "fan", "get", "2s",       "http",
                                                    "map", "loop", "x",   "1h",  "${ item }"};
                return json_string(words[pick(sizeof(words) / sizeof(*words))]);
        }
        case 6: {
                json_t *a = json_array();
                for (size_t i = pick(4); i > 0; i--)
                        json_array_append_new(a, random_value(depth + 1));
                return a;
        }
        default: {
                json_t *o = json_object();
                static const char *const keys[] = {"id",   "type",  "after", "when",
                                                   "node", "items", "until", "request",
                                                   "url",  "retry", "zz"};
                for (size_t i = pick(4); i > 0; i--)
                        json_object_set_new(o, keys[pick(sizeof(keys) / sizeof(*keys))],
                                            random_value(depth + 1));
                return o;
        }
        }
}

/* Replaces, deletes or adds one member somewhere in v. */
static void mutate_tree(json_t *v, int depth)
{
        if (json_is_object(v) && json_object_size(v) > 0) {
                size_t target = pick(json_object_size(v)), i = 0;
                const char *key;
                json_t *child;
                json_object_foreach (v, key, child) {
                        if (i++ != target)
                                continue;
                        size_t what = pick(depth < 4 ? 4 : 3);
                        if (what == 0)
                                json_object_set_new(v, key, random_value(0));
                        else if (what == 1)
                                json_object_del(v, key);
                        else if (what == 2)
                                json_object_set_new(v, "extra", random_value(0));
                        else
                                mutate_tree(child, depth + 1);
                        return;
                }
        } else if (json_is_array(v) && json_array_size(v) > 0) {
                size_t i = pick(json_array_size(v));
                size_t what = pick(depth < 4 ? 4 : 3);
                if (what == 0)
                        json_array_set_new(v, i, random_value(0));
                else if (what == 1)
                        json_array_remove(v, i);
                else if (what == 2)
                        json_array_append(v, json_array_get(v, i)); /* duplicate */
                else
                        mutate_tree(json_array_get(v, i), depth + 1);
        }
}

/* Plans a few rounds over a random-ish snapshot, completing whatever is asked. */
static void exercise_planner(const struct wf_workflow *wf)
{
        _cleanup_json_ json_t *snap =
            json_pack("{s:s,s:o,s:I,s:I,s:{},s:[],s:{s:[{s:s,s:o}]},s:{}}", "run_id", "r", "input",
                      random_value(0), "now_ms", (json_int_t)1700000000000, "started_at_ms",
                      (json_int_t)1700000000000, "nodes", "in_flight", "signals", "go", "id", "s1",
                      "payload", random_value(0), "children");
        for (int round = 0; round < 20; round++) {
                json_t *actions = NULL;
                int r = wf_plan(wf, snap, &actions);
                assert_int_equal(r, 0);
                size_t i;
                json_t *a;
                bool progress = false;
                json_array_foreach (actions, i, a) {
                        const char *act = json_string_value(json_object_get(a, "action"));
                        const char *id = json_string_value(json_object_get(a, "node"));
                        assert_non_null(act);
                        if (!id)
                                continue;
                        const char *status = "completed";
                        if (!strcmp(act, "skip"))
                                status = "skipped";
                        else if (!strcmp(act, "fail_node") || pick(8) == 0)
                                status = "failed";
                        json_t *rec = json_pack("{s:s,s:i,s:o}", "status", status, "attempt", 1,
                                                "output", random_value(0));
                        if (!strcmp(act, "fail_node") || !strcmp(status, "failed")) {
                                json_t *d = NULL;
                                assert_int_equal(wf_on_node_failure(wf, id, 1,
                                                                    json_object_get(a, "error"), 0,
                                                                    rnd(), &d),
                                                 0);
                                json_decref(d);
                        }
                        json_object_set_new(json_object_get(snap, "nodes"), id, rec);
                        progress = true;
                }
                json_decref(actions);
                if (!progress)
                        break;
                json_object_set_new(snap, "now_ms",
                                    json_integer(1700000000000 + (json_int_t)round * 60000));
        }
}

static void mutated_definition_text_never_crashes(void **state)
{
        int n = iterations(6000);
        char buf[8192];
        int accepted = 0;

        for (int i = 0; i < n; i++) {
                const char *seed = seeds[pick(sizeof(seeds) / sizeof(*seeds))];
                size_t len = strlen(seed);
                memcpy(buf, seed, len);
                mutate_text(buf, &len, sizeof(buf));
                struct wf_workflow *wf = NULL;
                json_t *errors = NULL;
                int r = wf_parse_text(buf, len, &wf, &errors);
                if (r == 0) {
                        accepted++;
                        assert_null(errors);
                        exercise_planner(wf);
                        wf_free(wf);
                } else {
                        assert_int_equal(r, -EINVAL);
                        assert_int_gt(json_array_size(errors), 0);
                        json_decref(errors);
                }
        }
        print_message("%d of %d mutated texts were still valid\n", accepted, n);
}

static void mutated_definition_trees_never_crash(void **state)
{
        int n = iterations(6000);
        int accepted = 0;

        for (int i = 0; i < n; i++) {
                json_t *def = json_loads(seeds[pick(sizeof(seeds) / sizeof(*seeds))], 0, NULL);
                assert_non_null(def);
                for (int k = 1 + (int)pick(3); k > 0; k--)
                        mutate_tree(def, 0);
                struct wf_workflow *wf = NULL;
                json_t *errors = NULL;
                int r = wf_parse(def, &wf, &errors);
                if (r == 0) {
                        accepted++;
                        exercise_planner(wf);
                        wf_free(wf);
                } else {
                        assert_int_equal(r, -EINVAL);
                        /* every error names a field and says something */
                        size_t j;
                        json_t *e;
                        json_array_foreach (errors, j, e) {
                                assert_true(json_is_string(json_object_get(e, "field")));
                                assert_int_gt(json_string_length(json_object_get(e, "message")), 0);
                        }
                        json_decref(errors);
                }
                json_decref(def);
        }
        print_message("%d of %d mutated trees were still valid\n", accepted, n);
}

static void random_expressions_never_crash(void **state)
{
        static const char *const tokens[] = {
            "input", "nodes", "item",  ".",  "a", "[",  "]",   "(",       ")",      "0",
            "1.5",   "'s'",   "\"t\"", "+",  "-", "*",  "/",   "%",       "==",     "!=",
            "<",     ">=",    "&&",    "||", "!", ",",  "len", "default", "string", "json",
            "null",  "true",  " ",     "}",  "x", "\\", "'",   "9e999",
        };
        _cleanup_json_ json_t *scope =
            json_pack("{s:{s:[i,s,{s:n}],s:s},s:{s:{s:s,s:i}},s:i}", "input", "a", 1, "two", "k",
                      "s", "[1]", "nodes", "a", "status", "completed", "output", 3, "item", 5);
        int n = iterations(20000);

        for (int i = 0; i < n; i++) {
                char src[512];
                size_t len = 0;
                for (int k = 1 + (int)pick(24); k > 0; k--) {
                        const char *t = tokens[pick(sizeof(tokens) / sizeof(*tokens))];
                        size_t tl = strlen(t);
                        if (len + tl + 1 >= sizeof(src))
                                break;
                        memcpy(src + len, t, tl);
                        len += tl;
                }
                src[len] = '\0';
                struct wf_expr *e = NULL;
                json_t *err = NULL, *out = NULL;
                if (wf_expr_parse(src, &e, &err) == 0) {
                        int r = wf_expr_eval(e, scope, &out, &err);
                        if (r != 0 && r != -EINVAL)
                                fail_msg("wf_expr_eval(\"%s\") returned %d, wanted 0 or -EINVAL",
                                         src, r);
                        json_decref(out);
                        wf_expr_free(e);
                } else {
                        assert_int_ge(json_integer_value(json_object_get(err, "column")), 0);
                }
                json_decref(err);
                /* the same text as a template */
                json_t *tmpl = json_stringn_nocheck(src, len);
                json_t *rendered = NULL;
                err = NULL;
                int r = wf_template_render(tmpl, scope, &rendered, &err);
                if (r != 0 && r != -EINVAL)
                        fail_msg("wf_template_render returned %d, wanted 0 or -EINVAL", r);
                json_decref(rendered);
                json_decref(err);
                json_decref(tmpl);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(mutated_definition_text_never_crashes),
            cmocka_unit_test(mutated_definition_trees_never_crash),
            cmocka_unit_test(random_expressions_never_crash),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
