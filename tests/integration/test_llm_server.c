/*
 * src/llm end to end over HTTP: libcurl sends the bodies src/llm builds to the scripted
 * test server (llm_server.h), which answers in each provider's real wire format, and the
 * answer goes back through src/llm's parsers, streamed in pieces or whole. Shows what was
 * sent (the API key header, the body), that tool calls split across chunks and writes come
 * back whole, that streamed text arrives before the end, and what a 429 with Retry-After,
 * a 500, a delay and a cut connection look like from the client's side.
 */
#include "testlib.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cleanup.h"
#include "llm.h"
#include "llm_server.h"
#include "strutil.h"

struct call {
        CURL *curl;
        enum llm_provider provider;
        bool stream;
        struct llm_stream *parser;
        char *body; /* the whole body when not streaming */
        size_t len;
        int deltas;        /* pieces of text taken while the body was arriving */
        int stream_failed; /* llm_stream_feed's code */
        char *retry_after;
};

static size_t on_body(char *data, size_t size, size_t n, void *cls)
{
        struct call *c = cls;
        const char *t;
        size_t tlen;
        long status = 0;

        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
        if (c->stream && status == 200) { /* an error's body is JSON, not events */
                if (c->stream_failed)
                        return 0;
                c->stream_failed = llm_stream_feed(c->parser, data, size * n, NULL);
                if (llm_stream_take_text(c->parser, &t, &tlen))
                        c->deltas++;
                return size * n;
        }
        c->body = realloc(c->body, c->len + size * n + 1);
        assert_non_null(c->body);
        memcpy(c->body + c->len, data, size * n);
        c->len += size * n;
        c->body[c->len] = '\0';
        return size * n;
}

static size_t on_header(char *data, size_t size, size_t n, void *cls)
{
        struct call *c = cls;

        if (size * n > 13 && strncasecmp(data, "Retry-After: ", 13) == 0) {
                free(c->retry_after);
                c->retry_after = strndup(data + 13, strcspn(data + 13, "\r\n"));
        }
        return size * n;
}

/*
 * One call: builds the body from the neutral request, POSTs it with the provider's headers,
 * parses the answer. Returns the HTTP status (0 when the transfer failed: *curl_code says
 * why); *result is parsed when the status is 200, *error says what went wrong otherwise.
 */
static long call(struct llm_server *srv, enum llm_provider p, const char *api_key,
                 const char *request, struct llm_result *result, char **error, CURLcode *curl_code,
                 struct call *info)
{
        _cleanup_json_ json_t *req = json_loads(request, 0, NULL), *body = NULL;
        _cleanup_free_ char *text = NULL, *url = NULL;
        struct curl_slist *headers = NULL;
        char **h;
        long status = 0;
        CURL *curl = curl_easy_init();

        assert_non_null(req);
        assert_non_null(curl);
        memset(result, 0, sizeof(*result));
        memset(info, 0, sizeof(*info));
        info->provider = p;
        info->curl = curl;
        info->stream = json_is_true(json_object_get(req, "stream"));
        assert_int_equal(llm_build_request(p, req, &body, NULL), 0);
        text = json_dumps(body, JSON_COMPACT);
        url = str_printf("%s%s", llm_server_url(srv), llm_endpoint_path(p));
        h = llm_request_headers(p, api_key);
        assert_non_null(h);
        for (char **x = h; *x; x++)
                headers = curl_slist_append(headers, *x);
        headers = curl_slist_append(headers, "Content-Type: application/json");
        llm_headers_free(h);
        if (info->stream)
                assert_int_equal(llm_stream_new(p, &info->parser), 0);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, info);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, info);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20000L);
        *curl_code = curl_easy_perform(curl);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200 && info->stream)
                llm_stream_finish(info->parser, result, error);
        else if (status == 200)
                llm_parse_response(p, info->body ? info->body : "", info->len, result, error);
        else if (info->body) /* an error body: the provider's message */
                llm_parse_response(p, info->body, info->len, result, error);
        llm_stream_free(info->parser);
        info->parser = NULL;
        free(info->body);
        info->body = NULL;
        curl_slist_free_all(headers);
        curl_easy_cleanup(curl);
        return *curl_code == CURLE_OK ? status : 0;
}

static const char request_fmt[] =
    "{\"model\": \"gpt-4o-mini\", \"system\": \"You call tools when asked.\", \"stream\": %s,"
    " \"tools\": [{\"name\": \"http_request\", \"parameters\": {\"type\": \"object\"}}],"
    " \"messages\": [{\"role\": \"user\", \"content\": \"Research ünïcode.\"}]}";

static const char step[] =
    "{\"text\": \"Fetching both — 🌍 pages.\", \"chunk\": 3, \"write\": 7, "
    "\"tool_calls\": ["
    " {\"id\": \"call_1\", \"name\": \"http_request\", \"arguments\": "
    "  \"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://127.0.0.1/a?q=ü\\\"}\"},"
    " {\"id\": \"call_2\", \"name\": \"http_request\", \"arguments\": "
    "  \"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://127.0.0.1/b\\\"}\"}],"
    " \"usage\": {\"input\": 1200, \"output\": 80, \"cached\": 1000}}";

/* Both providers, streamed (split into 3-byte deltas and 7-byte writes) and whole: the
 * same result, and the server saw the key, the version header and the body we built. */
static void both_providers_round_trip(void **state)
{
        struct llm_server *srv = llm_server_start();

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                _cleanup_json_ json_t *whole_json = NULL;
                for (int streamed = 1; streamed >= 0; streamed--) {
                        _cleanup_free_ char *request =
                            str_printf(request_fmt, streamed ? "true" : "false");
                        _cleanup_free_ char *key = str_printf("sk-test-%d-%d", p, streamed);
                        _cleanup_free_ char *err = NULL;
                        struct llm_result r;
                        struct call info;
                        CURLcode cc;
                        int before = llm_server_request_count(srv);

                        {
                                _cleanup_free_ char *script = str_printf("[%s]", step);
                                llm_server_script(srv, script);
                        }
                        assert_int_equal(call(srv, p, key, request, &r, &err, &cc, &info), 200);
                        if (err)
                                fail_msg("%s", err);
                        assert_string_equal(r.text, "Fetching both — 🌍 pages.");
                        assert_int_equal(r.tool_call_count, 2);
                        assert_string_equal(r.tool_calls[0].id, "call_1");
                        assert_string_equal(r.tool_calls[0].name, "http_request");
                        assert_string_equal(r.tool_calls[0].arguments,
                                            "{\"method\":\"GET\",\"url\":"
                                            "\"http://127.0.0.1/a?q=ü\"}");
                        assert_string_equal(r.tool_calls[1].id, "call_2");
                        assert_int_equal(r.stop_reason, LLM_STOP_TOOL_CALLS);
                        assert_true(r.has_usage);
                        assert_int_equal(r.usage.input_tokens, 1200);
                        assert_int_equal(r.usage.cached_input_tokens, 1000);
                        assert_int_equal(r.usage.output_tokens, 80);
                        struct llm_cost cost = llm_cost(NULL, "gpt-4o-mini", &r.usage);
                        assert_true(cost.known);
                        assert_int_equal(llround(cost.usd * 1e9),
                                         llround((200 * 0.15 + 1000 * 0.075 + 80 * 0.6) * 1e3));
                        if (streamed) /* text came in pieces, before the end */
                                assert_int_ge(info.deltas, 3);
                        /* what the server received */
                        assert_int_equal(llm_server_request_count(srv), before + 1);
                        _cleanup_json_ json_t *seen = llm_server_request(srv, before);
                        json_t *h = json_object_get(seen, "headers");
                        assert_string_equal(json_string_value(json_object_get(seen, "path")),
                                            p == LLM_PROVIDER_OPENAI ? "/v1/chat/completions"
                                                                     : "/v1/messages");
                        if (p == LLM_PROVIDER_OPENAI) {
                                _cleanup_free_ char *bearer = str_printf("Bearer %s", key);
                                assert_string_equal(
                                    json_string_value(json_object_get(h, "authorization")), bearer);
                                assert_int_equal(json_is_true(json_object_get(
                                                     json_object_get(json_object_get(seen, "body"),
                                                                     "stream_options"),
                                                     "include_usage")),
                                                 streamed);
                        } else {
                                assert_string_equal(
                                    json_string_value(json_object_get(h, "x-api-key")), key);
                                assert_string_equal(
                                    json_string_value(json_object_get(h, "anthropic-version")),
                                    "2023-06-01");
                                assert_null(json_object_get(h, "authorization"));
                        }
                        _cleanup_json_ json_t *req = json_loads(request, 0, NULL), *built = NULL;
                        assert_int_equal(llm_build_request(p, req, &built, NULL), 0);
                        assert_json_equal(json_object_get(seen, "body"), built);
                        /* streamed and whole give the same result (but the ids) */
                        json_t *j = llm_result_to_json(&r);
                        json_object_del(j, "id");
                        if (whole_json)
                                assert_json_equal(j, whole_json);
                        json_decref(whole_json);
                        whole_json = j;
                        llm_result_free(&r);
                }
        }
        assert_int_equal(llm_server_steps_left(srv), 0);
        llm_server_stop(srv);
}

/* 429 with Retry-After and 500: the status, the header and the provider's message reach the
 * caller; a step runs out of script: 500 saying so. */
static void failures_reach_the_caller(void **state)
{
        struct llm_server *srv = llm_server_start();

        llm_server_script(srv, "[{\"status\": 429, \"retry_after\": \"2\", \"error\": \"slow "
                               "down\"}, {\"status\": 500, \"error\": \"boom\"}]");
        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                _cleanup_free_ char *request = str_printf(request_fmt, "true");
                _cleanup_free_ char *err = NULL, *err2 = NULL;
                struct llm_result r;
                struct call info;
                CURLcode cc;

                if (p == LLM_PROVIDER_ANTHROPIC)
                        llm_server_script(srv, "[{\"status\": 429, \"retry_after\": \"2\", "
                                               "\"error\": \"slow down\"}, {\"status\": 500, "
                                               "\"error\": \"boom\"}]");
                assert_int_equal(call(srv, p, "k", request, &r, &err, &cc, &info), 429);
                assert_non_null(info.retry_after);
                assert_string_equal(info.retry_after, "2");
                free(info.retry_after);
                assert_string_equal(err, p == LLM_PROVIDER_OPENAI
                                             ? "openai: the server answered an error: "
                                               "rate_limit_exceeded: slow down"
                                             : "anthropic: the server answered an error: "
                                               "rate_limit_error: slow down");
                llm_result_free(&r);
                assert_int_equal(call(srv, p, "k", request, &r, &err2, &cc, &info), 500);
                assert_null(info.retry_after);
                if (!strstr(err2, "boom"))
                        fail_msg("%s", err2);
                llm_result_free(&r);
        }
        _cleanup_free_ char *request = str_printf(request_fmt, "false");
        _cleanup_free_ char *err = NULL;
        struct llm_result r;
        struct call info;
        CURLcode cc;
        assert_int_equal(call(srv, LLM_PROVIDER_OPENAI, "k", request, &r, &err, &cc, &info), 500);
        assert_string_equal(err, "openai: the server answered an error: server_error: no "
                                 "scripted response left");
        llm_result_free(&r);
        llm_server_stop(srv);
}

/* A connection cut in the middle of a stream: the transfer fails and the parser says the
 * stream ended before its last event; a delayed answer takes its delay. */
static void cut_and_delayed(void **state)
{
        struct llm_server *srv = llm_server_start();

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                _cleanup_free_ char *request = str_printf(request_fmt, "true");
                _cleanup_free_ char *err = NULL;
                struct llm_result r;
                struct call info;
                CURLcode cc;
                int64_t t0;

                llm_server_script(srv, "[{\"text\": \"a long answer that is cut\", \"chunk\": 2, "
                                       "\"cut_after\": 300, \"write\": 50}]");
                assert_int_equal(call(srv, p, "k", request, &r, &err, &cc, &info), 0);
                assert_int_not_equal(cc, CURLE_OK);
                llm_result_free(&r);
                /* a slow server: the answer takes its delay */
                llm_server_script(srv, "[{\"text\": \"fine\", \"delay_ms\": 300}]");
                t0 = test_now_ms();
                assert_int_equal(call(srv, p, "k", request, &r, &err, &cc, &info), 200);
                assert_int_ge(test_now_ms() - t0, 300);
                assert_string_equal(r.text, "fine");
                llm_result_free(&r);
        }
        llm_server_stop(srv);
}

/* The parser's view of a cut stream: the bytes up to the cut, then the end of the body. */
static void cut_stream_is_an_error(void **state)
{
        struct llm_server *srv = llm_server_start();
        _cleanup_json_ json_t *req = json_loads(
            "{\"model\": \"m\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": "
            "\"hi\"}]}",
            0, NULL);

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                _cleanup_json_ json_t *body = NULL;
                _cleanup_free_ char *text = NULL, *url = NULL, *err = NULL;
                struct call info = {.provider = p, .stream = true};
                struct llm_result r;
                struct curl_slist *headers =
                    curl_slist_append(NULL, "Content-Type: application/json");
                CURL *curl = curl_easy_init();

                info.curl = curl;
                llm_server_script(srv, "[{\"text\": \"a long answer that is cut\", \"chunk\": 2, "
                                       "\"cut_after\": 300}]");
                assert_int_equal(llm_build_request(p, req, &body, NULL), 0);
                text = json_dumps(body, JSON_COMPACT);
                url = str_printf("%s%s", llm_server_url(srv), llm_endpoint_path(p));
                assert_int_equal(llm_stream_new(p, &info.parser), 0);
                curl_easy_setopt(curl, CURLOPT_URL, url);
                curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
                curl_easy_setopt(curl, CURLOPT_POSTFIELDS, text);
                curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
                curl_easy_setopt(curl, CURLOPT_WRITEDATA, &info);
                assert_int_not_equal(curl_easy_perform(curl), CURLE_OK);
                assert_int_equal(info.stream_failed, 0); /* what arrived was well formed */
                assert_int_equal(llm_stream_finish(info.parser, &r, &err), -EBADMSG);
                if (!strstr(err, "ended before its last event"))
                        fail_msg("%s", err);
                llm_result_free(&r);
                llm_stream_free(info.parser);
                curl_slist_free_all(headers);
                curl_easy_cleanup(curl);
        }
        llm_server_stop(srv);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(both_providers_round_trip),
            cmocka_unit_test(failures_reach_the_caller),
            cmocka_unit_test(cut_and_delayed),
            cmocka_unit_test(cut_stream_is_an_error),
        };
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        curl_global_cleanup();
        return r;
}
