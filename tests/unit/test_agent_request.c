/*
 * An llm request as the worker takes it (src/agent/agent_request.c): whichever form the
 * executor sent — the whole message list, or only the messages after `messages_from` of
 * its previous llm request — the worker rebuilds the same whole request, and its hash is
 * the SHA-256 of that request's canonical JSON, computed here independently (the hash a
 * journal written by either form, or by a worker before deltas existed, holds). A
 * messages_from beyond the previous request's messages is refused and changes nothing.
 */
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "agent_internal.h"
#include "cleanup.h"
#include "strutil.h"

/* A conversation: user, assistant with a tool call, its result, text with what canonical
 * JSON must get right (escapes, non-ASCII, numbers), and more turns. */
static const char *const conversation[] = {
    "{\"role\":\"user\",\"content\":\"Research durable execution. Input: {\\\"n\\\":1.5}\"}",
    "{\"tool_calls\":[{\"name\":\"http_request\",\"id\":\"c1\",\"arguments\":"
    "\"{\\\"url\\\":\\\"http://127.0.0.1:9/a\\\",\\\"method\\\":\\\"GET\\\"}\"}],"
    "\"role\":\"assistant\",\"content\":\"Let me look \\u00e9\\u4e2d \\ud83d\\ude00.\"}",
    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"is_error\":false,\"content\":"
    "\"{\\\"status\\\":200,\\\"body\\\":\\\"alpha\\\\n\\\\\\\"quoted\\\\\\\"\\\"}\"}",
    "{\"role\":\"assistant\",\"content\":\"Next.\",\"tool_calls\":[{\"id\":\"c2\",\"name\":"
    "\"http_request\",\"arguments\":\"{}\"}]}",
    "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":\"beta\",\"is_error\":true}",
    "{\"role\":\"user\",\"content\":\"\\t and a tab, 1e300, -0, 12345678901234567\"}",
    "{\"role\":\"assistant\",\"content\":\"Done.\"}",
};
#define NMSG (sizeof(conversation) / sizeof(conversation[0]))

/* The messages [from, to) of the conversation, parsed anew each time (as a worker reads
 * them from a line). */
static json_t *messages(size_t from, size_t to)
{
        json_t *a = json_array();

        for (size_t i = from; i < to; i++)
                assert_int_equal(json_array_append_new(a, test_json(conversation[i])), 0);
        return a;
}

/* The request members besides messages: what every request of the session repeats (extra:
 * more members, JSON object text, or NULL). */
static json_t *members(const char *extra)
{
        json_t *o = test_json("{\"tool_choice\":\"auto\",\"system\":\"You call tools.\",\"tools\":"
                              "[{\"name\":\"http_request\",\"description\":\"Send it\","
                              "\"parameters\":{\"type\":\"object\",\"required\":[\"url\"]}}]}");

        if (extra) {
                _cleanup_json_ json_t *x = test_json(extra);
                assert_int_equal(json_object_update(o, x), 0);
        }
        return o;
}

/* The protocol message: {"v":1,"id":id,"type":"llm","request":{members, messages}} with
 * messages_from when from >= 0; top: more top-level members (JSON object text) or NULL. */
static json_t *line(const char *id, json_t *msgs, long from, const char *extra, const char *top)
{
        json_t *req = members(extra);
        json_t *m =
            json_pack("{s:i, s:s, s:s, s:o}", "v", 1, "id", id, "type", "llm", "request", req);

        assert_int_equal(json_object_set_new(req, "messages", msgs), 0);
        if (from >= 0)
                assert_int_equal(json_object_set_new(m, "messages_from", json_integer(from)), 0);
        if (top) {
                _cleanup_json_ json_t *x = test_json(top);
                assert_int_equal(json_object_update(m, x), 0);
        }
        return m;
}

/* The whole request the worker must see for messages [0, n): the hashed body. */
static json_t *whole(size_t n, const char *extra, const char *top)
{
        json_t *m = line("ignored", messages(0, n), -1, extra, top);

        json_object_del(m, "v");
        json_object_del(m, "id");
        return m;
}

/* The SHA-256 of body's canonical text, here and not through the code under test. */
static void expected_hash(const json_t *body, char out[65])
{
        _cleanup_free_ char *text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        unsigned char d[crypto_hash_sha256_BYTES];

        assert_non_null(text);
        crypto_hash_sha256(d, (const unsigned char *)text, strlen(text));
        for (size_t i = 0; i < sizeof(d); i++)
                snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Takes m (consumed) with base b: the body must be the whole request of messages [0, n)
 * and the hash its canonical hash. Returns the hash in out. */
static void takes_as_whole(struct agent_llm_base *b, json_t *m, size_t n, const char *extra,
                           const char *top, char out[65])
{
        _cleanup_json_ json_t *body = NULL, *want = whole(n, extra, top);
        _cleanup_free_ char *why = NULL;
        char want_hash[65];

        assert_int_equal(agent_llm_request_take(b, m, &body, out, &why), 0);
        json_decref(m);
        if (!json_equal(body, want)) {
                _cleanup_free_ char *got = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
                _cleanup_free_ char *exp = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
                fail_msg("rebuilt\n  %s\nwanted\n  %s", got, exp);
        }
        expected_hash(want, want_hash);
        assert_string_equal(out, want_hash);
}

static void a_whole_request_hashes_as_its_canonical_text(void **state)
{
        (void)state;
        struct agent_llm_base b = {0};
        char hash[65];

        /* members sorting before "messages" and before "request", and after both */
        takes_as_whole(&b,
                       line("1", messages(0, 3), -1, "{\"max_tokens\":100,\"message\":1}", NULL), 3,
                       "{\"max_tokens\":100,\"message\":1}", NULL, hash);
        takes_as_whole(&b,
                       line("2", messages(0, 4), -1, "{\"messagesA\":[1.25],\"model\":\"m\"}",
                            "{\"call_id\":\"x\",\"zeta\":{\"b\":1,\"a\":2}}"),
                       4, "{\"messagesA\":[1.25],\"model\":\"m\"}",
                       "{\"call_id\":\"x\",\"zeta\":{\"b\":1,\"a\":2}}", hash);
        /* and agent_request_hash says the same of the whole body */
        _cleanup_json_ json_t *w = whole(5, NULL, NULL);
        char a[65], e[65];
        assert_int_equal(agent_request_hash(w, a), 0);
        expected_hash(w, e);
        assert_string_equal(a, e);
        agent_llm_base_reset(&b);
}

/* The same conversation sent in deltas, as whole lists, and mixed: the same bodies and
 * hashes each time. */
static void deltas_rebuild_the_whole_request_and_its_hash(void **state)
{
        (void)state;
        struct agent_llm_base d = {0}, w = {0};
        char hd[65], hw[65];

        /* 1: the first request is whole in both */
        takes_as_whole(&d, line("1", messages(0, 1), -1, NULL, NULL), 1, NULL, NULL, hd);
        takes_as_whole(&w, line("1", messages(0, 1), -1, NULL, NULL), 1, NULL, NULL, hw);
        assert_string_equal(hd, hw);
        /* 2, 3: deltas against whole lists */
        takes_as_whole(&d, line("2", messages(1, 3), 1, NULL, NULL), 3, NULL, NULL, hd);
        takes_as_whole(&w, line("2", messages(0, 3), -1, NULL, NULL), 3, NULL, NULL, hw);
        assert_string_equal(hd, hw);
        takes_as_whole(&d, line("3", messages(3, 5), 3, NULL, NULL), 5, NULL, NULL, hd);
        takes_as_whole(&w, line("3", messages(0, 5), 0, NULL, NULL), 5, NULL, NULL, hw);
        assert_string_equal(hd, hw);
        /* 4: the delta executor sends a whole list once (a rewritten history), then goes on
         * with deltas from a point before its previous request's end */
        takes_as_whole(&d, line("4", messages(0, 6), -1, NULL, NULL), 6, NULL, NULL, hd);
        takes_as_whole(&d, line("5", messages(2, 7), 2, NULL, NULL), 7, NULL, NULL, hd);
        takes_as_whole(&w, line("5", messages(0, 7), -1, NULL, NULL), 7, NULL, NULL, hw);
        assert_string_equal(hd, hw);
        /* 6: a member before "messages" appears: the kept state does not cover it */
        takes_as_whole(&d, line("6", json_array(), 7, "{\"max_tokens\":9}", NULL), 7,
                       "{\"max_tokens\":9}", NULL, hd);
        takes_as_whole(&w, line("6", messages(0, 7), -1, "{\"max_tokens\":9}", NULL), 7,
                       "{\"max_tokens\":9}", NULL, hw);
        assert_string_equal(hd, hw);
        agent_llm_base_reset(&d);
        agent_llm_base_reset(&w);
}

static void refused(struct agent_llm_base *b, json_t *m, const char *needle)
{
        _cleanup_json_ json_t *body = NULL;
        _cleanup_free_ char *why = NULL;
        char hash[65];

        assert_int_equal(agent_llm_request_take(b, m, &body, hash, &why), -EINVAL);
        json_decref(m);
        assert_null(body);
        assert_non_null(why);
        if (!strstr(why, needle))
                fail_msg("'%s' does not say '%s'", why, needle);
}

static void a_delta_beyond_the_previous_request_is_refused(void **state)
{
        (void)state;
        struct agent_llm_base b = {0};
        char hash[65];

        /* no previous request in this session (a new executor) */
        refused(&b, line("1", messages(1, 2), 1, NULL, NULL), "at most 0");
        takes_as_whole(&b, line("2", messages(0, 2), -1, NULL, NULL), 2, NULL, NULL, hash);
        refused(&b, line("3", messages(2, 3), 3, NULL, NULL), "at most 2");
        refused(&b, line("4", messages(2, 3), -1, NULL, "{\"messages_from\":\"2\"}"), "at most 2");
        refused(&b, line("5", messages(2, 3), -1, NULL, "{\"messages_from\":-1}"), "at most 2");
        /* the refusals changed nothing: the previous request is still the one of 2 */
        takes_as_whole(&b, line("6", messages(2, 4), 2, NULL, NULL), 4, NULL, NULL, hash);
        agent_llm_base_reset(&b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(a_whole_request_hashes_as_its_canonical_text),
            cmocka_unit_test(deltas_rebuild_the_whole_request_and_its_hash),
            cmocka_unit_test(a_delta_beyond_the_previous_request_is_refused),
        };
        if (sodium_init() < 0)
                return 1;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
