/*
 * A conversation's body text kept between calls (llm.h: llm_body_cache,
 * llm_build_request_text): as the conversation grows call by call — the same message
 * objects, or equal ones parsed anew, a history rewritten, the system prompt or the tools
 * changed, a bad message refused — the text is always the JSON llm_build_request builds for
 * the same request; Anthropic bodies are built whole and are the same too.
 */
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "llm.h"

static const char *const conversation[] = {
    "{\"role\":\"user\",\"content\":\"Research it. \\u00e9\\u4e2d \\\"quoted\\\"\"}",
    "{\"role\":\"assistant\",\"content\":\"Looking.\",\"tool_calls\":[{\"id\":\"c1\",\"name\":"
    "\"http_request\",\"arguments\":\"{\\\"url\\\":\\\"http://h/a\\\"}\"}]}",
    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"alpha\",\"is_error\":false}",
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c2\",\"name\":"
    "\"http_request\",\"arguments\":\"{}\"}]}",
    "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":\"beta\",\"is_error\":true}",
    "{\"role\":\"user\",\"content\":\"And then?\"}",
    "{\"role\":\"assistant\",\"content\":\"Done.\"}",
};
#define NMSG (sizeof(conversation) / sizeof(conversation[0]))

/* A request over msgs (borrowed) with the members in rest (JSON object text). */
static json_t *request(json_t *msgs, const char *rest)
{
        json_t *r = test_json(rest);

        assert_int_equal(json_object_set(r, "messages", msgs), 0);
        return r;
}

/* The text for req with cache c must be the JSON llm_build_request builds. */
static void same_body(enum llm_provider p, struct llm_body_cache *c, const json_t *req)
{
        _cleanup_json_ json_t *want = NULL, *got = NULL;
        _cleanup_free_ char *text = NULL, *error = NULL, *e2 = NULL;
        size_t len = 0;

        assert_int_equal(llm_build_request(p, req, &want, &e2), 0);
        assert_int_equal(llm_build_request_text(p, req, c, &text, &len, &error), 0);
        assert_int_equal(strlen(text), len);
        got = json_loadb(text, len, 0, NULL);
        if (!got || !json_equal(got, want)) {
                _cleanup_free_ char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
                fail_msg("the kept text\n  %s\nis not the body\n  %s", text, w);
        }
}

static const char openai_rest[] =
    "{\"model\":\"m\",\"system\":\"You call tools.\",\"stream\":true,\"max_tokens\":50,"
    "\"tools\":[{\"name\":\"http_request\",\"description\":\"d\",\"parameters\":{\"type\":"
    "\"object\"}}],\"tool_choice\":{\"name\":\"http_request\"}}";

static void a_growing_conversation_is_the_same_body(void **state)
{
        (void)state;
        struct llm_body_cache *c = llm_body_cache_new();
        _cleanup_json_ json_t *msgs = json_array();

        assert_non_null(c);
        /* the same objects, one more each call (as an agent's session shares them) */
        for (size_t k = 0; k < NMSG; k++) {
                assert_int_equal(json_array_append_new(msgs, test_json(conversation[k])), 0);
                _cleanup_json_ json_t *req = request(msgs, openai_rest);
                same_body(LLM_PROVIDER_OPENAI, c, req);
        }
        /* equal messages parsed anew (an executor that sends whole lists) */
        for (size_t k = 1; k <= NMSG; k++) {
                _cleanup_json_ json_t *fresh = json_array();
                for (size_t i = 0; i < k; i++)
                        assert_int_equal(json_array_append_new(fresh, test_json(conversation[i])),
                                         0);
                _cleanup_json_ json_t *req = request(fresh, openai_rest);
                same_body(LLM_PROVIDER_OPENAI, c, req);
        }
        /* a rewritten history, no system, no tools, plain members */
        _cleanup_json_ json_t *other = json_array();
        assert_int_equal(
            json_array_append_new(other, test_json("{\"role\":\"user\",\"content\":\"x\"}")), 0);
        assert_int_equal(json_array_append(other, json_array_get(msgs, 1)), 0);
        _cleanup_json_ json_t *plain = request(other, "{\"model\":\"m\"}");
        same_body(LLM_PROVIDER_OPENAI, c, plain);
        _cleanup_json_ json_t *sys = request(other, "{\"model\":\"m\",\"system\":\"New.\"}");
        same_body(LLM_PROVIDER_OPENAI, c, sys);
        llm_body_cache_free(c);
}

static void a_bad_new_message_is_refused_by_its_index(void **state)
{
        (void)state;
        struct llm_body_cache *c = llm_body_cache_new();
        _cleanup_json_ json_t *msgs = json_array();
        _cleanup_free_ char *text = NULL, *error = NULL;
        size_t len;

        for (size_t k = 0; k < 3; k++)
                assert_int_equal(json_array_append_new(msgs, test_json(conversation[k])), 0);
        _cleanup_json_ json_t *good = request(msgs, openai_rest);
        same_body(LLM_PROVIDER_OPENAI, c, good);
        assert_int_equal(
            json_array_append_new(msgs, test_json("{\"role\":\"robot\",\"content\":\"x\"}")), 0);
        _cleanup_json_ json_t *bad = request(msgs, openai_rest);
        assert_int_equal(llm_build_request_text(LLM_PROVIDER_OPENAI, bad, c, &text, &len, &error),
                         -EINVAL);
        assert_null(text);
        assert_non_null(error);
        if (!strstr(error, "messages[3].role"))
                fail_msg("'%s' does not name messages[3].role", error);
        /* the cache still serves the conversation without it */
        assert_int_equal(json_array_remove(msgs, 3), 0);
        assert_int_equal(json_array_append_new(msgs, test_json(conversation[3])), 0);
        _cleanup_json_ json_t *again = request(msgs, openai_rest);
        same_body(LLM_PROVIDER_OPENAI, c, again);
        llm_body_cache_free(c);
}

static void anthropic_bodies_are_built_whole(void **state)
{
        (void)state;
        struct llm_body_cache *c = llm_body_cache_new();
        _cleanup_json_ json_t *msgs = json_array();

        for (size_t k = 0; k < NMSG; k++) {
                assert_int_equal(json_array_append_new(msgs, test_json(conversation[k])), 0);
                _cleanup_json_ json_t *req = request(msgs, openai_rest);
                same_body(LLM_PROVIDER_ANTHROPIC, c, req);
        }
        _cleanup_json_ json_t *whole = request(msgs, openai_rest);
        same_body(LLM_PROVIDER_ANTHROPIC, NULL, whole);
        same_body(LLM_PROVIDER_OPENAI, NULL, whole);
        llm_body_cache_free(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(a_growing_conversation_is_the_same_body),
            cmocka_unit_test(a_bad_new_message_is_refused_by_its_index),
            cmocka_unit_test(anthropic_bodies_are_built_whole),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
