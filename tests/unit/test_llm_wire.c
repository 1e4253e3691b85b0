/*
 * Unit tests for the request and response formats of src/llm: one provider-neutral request
 * becomes the exact OpenAI and Anthropic bodies, a bad one is refused naming the member,
 * recorded-shape responses (tests/unit/llm/) parse into the neutral result, a result carried
 * into the next request gives back the provider's own content (round trip), and usage
 * becomes cost from the pricing table.
 */
#include "testlib.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "fileio.h"
#include "llm.h"

static char *fixture(const char *name, size_t *len)
{
        char path[512];
        char *data = NULL;

        snprintf(path, sizeof(path), "%s/tests/unit/llm/%s", AGENTLY_SOURCE_DIR, name);
        assert_int_equal(file_read_all(path, 1 << 20, &data, len), 0);
        return data;
}

static const char neutral[] =
    "{\"model\": \"m1\", \"system\": \"You call tools when asked.\", \"max_tokens\": 512,"
    " \"stream\": true, \"tool_choice\": \"required\","
    " \"tools\": [{\"name\": \"get_weather\", \"description\": \"Weather of a city\","
    "   \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}},"
    "                  \"required\": [\"city\"]}}],"
    " \"messages\": ["
    "  {\"role\": \"user\", \"content\": \"Weather in Paris and Rome?\"},"
    "  {\"role\": \"assistant\", \"content\": \"Checking.\", \"tool_calls\": ["
    "    {\"id\": \"c1\", \"name\": \"get_weather\", \"arguments\": "
    "\"{\\\"city\\\":\\\"Paris\\\"}\"},"
    "    {\"id\": \"c2\", \"name\": \"get_weather\", \"arguments\": "
    "\"{\\\"city\\\":\\\"Rome\\\"}\"}]},"
    "  {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"18C\"},"
    "  {\"role\": \"tool\", \"tool_call_id\": \"c2\", \"content\": \"no data\", \"is_error\": "
    "true},"
    "  {\"role\": \"user\", \"content\": \"Thanks\"}]}";

static void openai_request_body(void **state)
{
        _cleanup_json_ json_t *req = test_json(neutral), *body = NULL;
        _cleanup_json_ json_t *want = test_json(
            "{\"model\": \"m1\", \"max_tokens\": 512, \"stream\": true,"
            " \"stream_options\": {\"include_usage\": true}, \"tool_choice\": \"required\","
            " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
            "   \"description\": \"Weather of a city\", \"parameters\": {\"type\": \"object\","
            "   \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}],"
            " \"messages\": ["
            "  {\"role\": \"system\", \"content\": \"You call tools when asked.\"},"
            "  {\"role\": \"user\", \"content\": \"Weather in Paris and Rome?\"},"
            "  {\"role\": \"assistant\", \"content\": \"Checking.\", \"tool_calls\": ["
            "    {\"id\": \"c1\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\","
            "     \"arguments\": \"{\\\"city\\\":\\\"Paris\\\"}\"}},"
            "    {\"id\": \"c2\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\","
            "     \"arguments\": \"{\\\"city\\\":\\\"Rome\\\"}\"}}]},"
            "  {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"18C\"},"
            "  {\"role\": \"tool\", \"tool_call_id\": \"c2\", \"content\": \"no data\"},"
            "  {\"role\": \"user\", \"content\": \"Thanks\"}]}");

        assert_int_equal(llm_build_request(LLM_PROVIDER_OPENAI, req, &body, NULL), 0);
        assert_json_equal(body, want);
}

/* Tool results are user turns of tool_result blocks; consecutive user turns merge so the
 * roles alternate; "required" is "any"; arguments become the input object. */
static void anthropic_request_body(void **state)
{
        _cleanup_json_ json_t *req = test_json(neutral), *body = NULL;
        _cleanup_json_ json_t *want = test_json(
            "{\"model\": \"m1\", \"max_tokens\": 512, \"stream\": true,"
            " \"system\": \"You call tools when asked.\", \"tool_choice\": {\"type\": \"any\"},"
            " \"tools\": [{\"name\": \"get_weather\", \"description\": \"Weather of a city\","
            "   \"input_schema\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\":"
            "   \"string\"}}, \"required\": [\"city\"]}}],"
            " \"messages\": ["
            "  {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\":"
            "   \"Weather in Paris and Rome?\"}]},"
            "  {\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": "
            "\"Checking.\"},"
            "    {\"type\": \"tool_use\", \"id\": \"c1\", \"name\": \"get_weather\", \"input\":"
            "     {\"city\": \"Paris\"}},"
            "    {\"type\": \"tool_use\", \"id\": \"c2\", \"name\": \"get_weather\", \"input\":"
            "     {\"city\": \"Rome\"}}]},"
            "  {\"role\": \"user\", \"content\": ["
            "    {\"type\": \"tool_result\", \"tool_use_id\": \"c1\", \"content\": \"18C\"},"
            "    {\"type\": \"tool_result\", \"tool_use_id\": \"c2\", \"content\": \"no data\","
            "     \"is_error\": true},"
            "    {\"type\": \"text\", \"text\": \"Thanks\"}]}]}");

        assert_int_equal(llm_build_request(LLM_PROVIDER_ANTHROPIC, req, &body, NULL), 0);
        assert_json_equal(body, want);
}

/* Without max_tokens, stream or tools: Anthropic still gets max_tokens (it requires one),
 * OpenAI gets no stream_options; a named tool_choice maps to each provider's form. */
static void request_defaults_and_named_choice(void **state)
{
        _cleanup_json_ json_t *req = test_json(
            "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}],"
            " \"tools\": [{\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}],"
            " \"tool_choice\": {\"name\": \"f\"}}");
        _cleanup_json_ json_t *a = NULL, *o = NULL;

        assert_int_equal(llm_build_request(LLM_PROVIDER_ANTHROPIC, req, &a, NULL), 0);
        assert_int_equal(json_integer_value(json_object_get(a, "max_tokens")),
                         LLM_DEFAULT_MAX_TOKENS);
        assert_null(json_object_get(a, "stream"));
        _cleanup_json_ json_t *achoice = test_json("{\"type\": \"tool\", \"name\": \"f\"}");
        assert_json_equal(json_object_get(a, "tool_choice"), achoice);
        assert_int_equal(llm_build_request(LLM_PROVIDER_OPENAI, req, &o, NULL), 0);
        assert_null(json_object_get(o, "max_tokens"));
        assert_null(json_object_get(o, "stream_options"));
        _cleanup_json_ json_t *ochoice =
            test_json("{\"type\": \"function\", \"function\": {\"name\": \"f\"}}");
        assert_json_equal(json_object_get(o, "tool_choice"), ochoice);
}

static void bad_requests_name_the_member(void **state)
{
        static const struct {
                const char *request;
                const char *message;
        } cases[] = {
            {"[]", "request: expected an object"},
            {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
             "request.model: missing"},
            {"{\"model\": \"m\", \"messages\": []}", "messages: expected a non-empty array"},
            {"{\"model\": \"m\", \"temperature\": 1, \"messages\": [{\"role\": \"user\", "
             "\"content\": \"x\"}]}",
             "temperature: unknown member"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}, "
             "{\"role\": \"robot\", \"content\": \"x\"}]}",
             "messages[1].role: \"robot\" is not user, assistant or tool"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}",
             "messages[0].role: system text goes in the request's \"system\""},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"assistant\", \"content\": null}]}",
             "messages[0]: an assistant message needs content or tool_calls"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}",
             "messages[0].tool_call_id: missing"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"assistant\", \"tool_calls\": "
             "[{\"id\": "
             "\"c\", \"name\": \"bad name\", \"arguments\": \"{}\"}]}]}",
             "messages[0].tool_calls[0]: tool name \"bad name\" must be 1 to 64 letters"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"tools\": [{\"name\": \"f\"}]}",
             "tools[0].parameters: expected a JSON Schema object"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"tools\": [{\"name\": \"f\", \"parameters\": {}}, {\"name\": \"f\", \"parameters\": "
             "{}}]}",
             "tools[1].name: \"f\" is defined twice"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"tool_choice\": {\"name\": \"g\"}}",
             "tool_choice.name: \"g\" is not a tool"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"tool_choice\": \"any\"}",
             "tool_choice: \"any\" is not auto, none, required"},
            {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"max_tokens\": 0}",
             "max_tokens: expected an integer from 1"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                        _cleanup_json_ json_t *req = test_json(cases[i].request), *body = NULL;
                        _cleanup_free_ char *err = NULL;
                        assert_int_equal(llm_build_request(p, req, &body, &err), -EINVAL);
                        assert_null(body);
                        assert_non_null(err);
                        if (!strstr(err, cases[i].message))
                                fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, err,
                                         cases[i].message);
                }
        /* Anthropic's tool_use input must be an object */
        _cleanup_json_ json_t *req = test_json(
            "{\"model\": \"m\", \"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"id\": "
            "\"c\", \"name\": \"f\", \"arguments\": \"[1]\"}]}]}");
        _cleanup_json_ json_t *body = NULL;
        _cleanup_free_ char *err = NULL;
        assert_int_equal(llm_build_request(LLM_PROVIDER_ANTHROPIC, req, &body, &err), -EINVAL);
        assert_string_equal(err, "messages[0].tool_calls[0].arguments: expected the JSON text of "
                                 "an object");
}

static void headers_carry_the_key(void **state)
{
        char **h = llm_request_headers(LLM_PROVIDER_OPENAI, "sk-test");

        assert_non_null(h);
        assert_string_equal(h[0], "Authorization: Bearer sk-test");
        assert_null(h[1]);
        llm_headers_free(h);
        h = llm_request_headers(LLM_PROVIDER_ANTHROPIC, "sk-ant");
        assert_string_equal(h[0], "x-api-key: sk-ant");
        assert_string_equal(h[1], "anthropic-version: 2023-06-01");
        assert_null(h[2]);
        llm_headers_free(h);
        h = llm_request_headers(LLM_PROVIDER_OPENAI, NULL); /* a local server without auth */
        assert_null(h[0]);
        llm_headers_free(h);
        assert_null(llm_request_headers(LLM_PROVIDER_OPENAI, "k\r\nX-Evil: 1"));
        assert_string_equal(llm_endpoint_path(LLM_PROVIDER_OPENAI), "/chat/completions");
        assert_string_equal(llm_endpoint_path(LLM_PROVIDER_ANTHROPIC), "/messages");
}

static void openai_recorded_response(void **state)
{
        size_t len;
        _cleanup_free_ char *body = fixture("openai_response_tool_calls.json", &len);
        struct llm_result r;
        _cleanup_json_ json_t *got = NULL;
        _cleanup_json_ json_t *want =
            test_json("{\"id\": \"chatcmpl-BX8Q1aZk3oPq\", \"model\": \"gpt-4o-2024-08-06\","
                      " \"text\": \"I'll look both up.\", \"stop_reason\": \"tool_calls\","
                      " \"stop_detail\": \"tool_calls\", \"tool_calls\": ["
                      "  {\"id\": \"call_abc123\", \"name\": \"get_weather\", \"arguments\":"
                      "   \"{\\\"city\\\":\\\"Paris\\\"}\"},"
                      "  {\"id\": \"call_def456\", \"name\": \"get_time\", \"arguments\":"
                      "   \"{\\\"tz\\\":\\\"Europe/Paris\\\"}\"}],"
                      " \"usage\": {\"input_tokens\": 1117, \"output_tokens\": 46,"
                      "   \"cached_input_tokens\": 1024}}");

        assert_int_equal(llm_parse_response(LLM_PROVIDER_OPENAI, body, len, &r, NULL), 0);
        got = llm_result_to_json(&r);
        assert_json_equal(got, want);
        llm_result_free(&r);
}

static void anthropic_recorded_response(void **state)
{
        size_t len;
        _cleanup_free_ char *body = fixture("anthropic_response_tool_use.json", &len);
        struct llm_result r;
        _cleanup_json_ json_t *got = NULL;
        _cleanup_json_ json_t *want = test_json(
            "{\"id\": \"msg_01Aq9w938a90dw8q\", \"model\": \"claude-3-5-haiku-20241022\","
            " \"text\": \"I'll check the current weather in San Francisco for you.\","
            " \"stop_reason\": \"tool_calls\", \"stop_detail\": \"tool_use\", \"tool_calls\": ["
            "  {\"id\": \"toolu_01A09q90qw90lq917835lq9\", \"name\": \"get_weather\", "
            "\"arguments\":"
            "   \"{\\\"location\\\":\\\"San Francisco, CA\\\",\\\"unit\\\":\\\"celsius\\\"}\"}],"
            " \"usage\": {\"input_tokens\": 2484, \"output_tokens\": 72,"
            "   \"cached_input_tokens\": 2000}}");

        assert_int_equal(llm_parse_response(LLM_PROVIDER_ANTHROPIC, body, len, &r, NULL), 0);
        got = llm_result_to_json(&r);
        assert_json_equal(got, want);
        llm_result_free(&r);
}

/* A response carried into the next request as the assistant turn gives back what the
 * provider sent: Anthropic's content blocks, OpenAI's message (content and tool_calls). */
static void round_trips(void **state)
{
        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                size_t len;
                _cleanup_free_ char *body =
                    fixture(p == LLM_PROVIDER_OPENAI ? "openai_response_tool_calls.json"
                                                     : "anthropic_response_tool_use.json",
                            &len);
                _cleanup_json_ json_t *original = test_json(body), *req = NULL, *next = NULL;
                struct llm_result r;
                json_t *sent, *received;

                assert_int_equal(llm_parse_response(p, body, len, &r, NULL), 0);
                req = json_pack("{s:s, s:[{s:s, s:s}, o]}", "model", "m", "messages", "role",
                                "user", "content", "hi", llm_result_message(&r));
                assert_non_null(req);
                assert_int_equal(llm_build_request(p, req, &next, NULL), 0);
                if (p == LLM_PROVIDER_OPENAI) {
                        sent = json_array_get(json_object_get(next, "messages"), 1);
                        received = json_object_get(
                            json_array_get(json_object_get(original, "choices"), 0), "message");
                        assert_json_equal(json_object_get(sent, "content"),
                                          json_object_get(received, "content"));
                        assert_json_equal(json_object_get(sent, "tool_calls"),
                                          json_object_get(received, "tool_calls"));
                } else {
                        sent = json_array_get(json_object_get(next, "messages"), 1);
                        received = json_object_get(original, "content");
                        assert_json_equal(json_object_get(sent, "content"), received);
                }
                llm_result_free(&r);
        }
}

static void error_bodies_and_junk(void **state)
{
        static const char rate[] = "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\","
                                   "\"message\":\"Number of request tokens has exceeded your "
                                   "per-minute rate limit\"}}";
        struct llm_result r;
        char *err = NULL;

        assert_int_equal(llm_parse_response(LLM_PROVIDER_ANTHROPIC, rate, strlen(rate), &r, &err),
                         -EBADMSG);
        assert_string_equal(err, "anthropic: the server answered an error: rate_limit_error: "
                                 "Number of request tokens has exceeded your per-minute rate "
                                 "limit");
        free(err), err = NULL;
        llm_result_free(&r);
        assert_int_equal(llm_parse_response(LLM_PROVIDER_OPENAI, "{\"choices\": [", 13, &r, &err),
                         -EBADMSG);
        if (!strstr(err, "openai: response is not JSON"))
                fail_msg("%s", err);
        free(err), err = NULL;
        llm_result_free(&r);
        assert_int_equal(llm_parse_response(LLM_PROVIDER_OPENAI, "{\"choices\": []}", 15, &r, &err),
                         -EBADMSG);
        assert_string_equal(err, "openai: response has no choices");
        free(err), err = NULL;
        llm_result_free(&r);
        static const char nameless[] = "{\"content\": [{\"type\": \"tool_use\", \"id\": \"t\", "
                                       "\"input\": {}}]}";
        assert_int_equal(
            llm_parse_response(LLM_PROVIDER_ANTHROPIC, nameless, strlen(nameless), &r, &err),
            -EBADMSG);
        assert_string_equal(err, "anthropic: content[0]: tool call without a name");
        free(err);
        llm_result_free(&r);
}

/* Nano-dollars, so the comparison is exact whatever the binary fractions do. */
static long long nano(double usd)
{
        return llround(usd * 1e9);
}

static void cost_from_the_price_table(void **state)
{
        struct llm_usage u = {
            .input_tokens = 1000000, .output_tokens = 200000, .cached_input_tokens = 400000};
        struct llm_cost c;
        struct llm_price p;

        /* gpt-4o-mini: 0.15 in, 0.60 out, 0.075 cached: 600k*0.15 + 400k*0.075 + 200k*0.6 */
        c = llm_cost(NULL, "gpt-4o-mini", &u);
        assert_true(c.known);
        assert_int_equal(nano(c.usd), nano(0.09 + 0.03 + 0.12));
        /* a dated name is priced as its model, both date spellings */
        c = llm_cost(NULL, "gpt-4o-mini-2024-07-18", &u);
        assert_int_equal(nano(c.usd), nano(0.24));
        assert_true(llm_price_lookup(NULL, "claude-sonnet-4-20250514", &p));
        assert_int_equal(nano(p.output), nano(15.0));
        /* not a prefix match: gpt-4o-mini-foo is not gpt-4o-mini, nor gpt-4o */
        c = llm_cost(NULL, "gpt-4o-mini-foo", &u);
        assert_false(c.known);
        assert_int_equal(nano(c.usd), 0);
        c = llm_cost(NULL, "llama3.1:8b", &u);
        assert_false(c.known);
        assert_int_equal(nano(c.usd), 0);
        /* overrides win over the defaults and price local models */
        _cleanup_json_ json_t *over = test_json("{\"llama3.1:8b\": {\"input\": 0.5, \"output\": 1},"
                                                " \"gpt-4o-mini\": {\"input\": 1, \"output\": 2,"
                                                "   \"cached_input\": 0}}");
        assert_int_equal(llm_pricing_validate(over, NULL), 0);
        c = llm_cost(over, "llama3.1:8b", &u); /* cached_input defaults to input */
        assert_true(c.known);
        assert_int_equal(nano(c.usd), nano(0.5 + 0.2));
        c = llm_cost(over, "gpt-4o-mini-2024-07-18", &u);
        assert_int_equal(nano(c.usd), nano(0.6 + 0.4));
        /* cached never counts more than the input it is part of */
        struct llm_usage odd = {.input_tokens = 10, .output_tokens = 0, .cached_input_tokens = 50};
        c = llm_cost(NULL, "gpt-4o", &odd);
        assert_int_equal(nano(c.usd), nano(10 * 1.25 / 1e6));
        /* bad overrides are named */
        _cleanup_json_ json_t *bad = test_json("{\"m\": {\"input\": -1, \"output\": 1}}");
        _cleanup_free_ char *err = NULL;
        assert_int_equal(llm_pricing_validate(bad, &err), -EINVAL);
        assert_string_equal(err, "pricing.m: input and output (and cached_input) must be numbers "
                                 ">= 0, in US dollars per million tokens");
        _cleanup_json_ json_t *typo =
            test_json("{\"m\": {\"input\": 1, \"output\": 1, \"cache\": 1}}");
        _cleanup_free_ char *err2 = NULL;
        assert_int_equal(llm_pricing_validate(typo, &err2), -EINVAL);
        assert_string_equal(err2, "pricing.m.cache: unknown member");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(openai_request_body),
            cmocka_unit_test(anthropic_request_body),
            cmocka_unit_test(request_defaults_and_named_choice),
            cmocka_unit_test(bad_requests_name_the_member),
            cmocka_unit_test(headers_carry_the_key),
            cmocka_unit_test(openai_recorded_response),
            cmocka_unit_test(anthropic_recorded_response),
            cmocka_unit_test(round_trips),
            cmocka_unit_test(error_bodies_and_junk),
            cmocka_unit_test(cost_from_the_price_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
