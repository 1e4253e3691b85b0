/*
 * src/llm's client (llm_client.h) against the scripted test server (llm_server.h): calls
 * driven by one runtime_http loop as the worker drives it, streamed and whole, on both
 * providers; tool calls split across chunks; text handed out while it forms, coalesced to
 * at most 10 pieces a second; retries after a 429 with Retry-After, a 5xx, a cut stream and
 * a refused connection; what is not retried (4xx, a wait past the total timeout); the total
 * timeout; aborting a call; and the API key in no error or result even when the server
 * echoes it.
 */
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "llm.h"
#include "llm_client.h"
#include "llm_server.h"
#include "runtime_http.h"
#include "strutil.h"

#define MAX_TEXTS 256

struct outcome {
        bool done;
        struct llm_result *result;
        json_t *error;
        struct llm_call_info info;
        int texts;
        int64_t text_at[MAX_TEXTS];
        int text_attempt;
        struct buf text; /* the pieces of the last attempt, joined */
        int retries;
        json_t *retry_errors;
        int64_t waits[8];
};

static void on_text(void *ud, const char *text, size_t len, int attempt)
{
        struct outcome *o = ud;

        assert_false(o->done);
        if (attempt != o->text_attempt) {
                buf_reset(&o->text);
                o->text_attempt = attempt;
        }
        assert_int_equal(buf_append(&o->text, text, len), 0);
        if (o->texts < MAX_TEXTS)
                o->text_at[o->texts] = runtime_http_now_ms();
        o->texts++;
}

static void on_retry(void *ud, const json_t *error, int attempt, int64_t wait_ms)
{
        struct outcome *o = ud;

        assert_int_equal(attempt, o->retries + 1);
        if (o->retries < 8)
                o->waits[o->retries] = wait_ms;
        json_array_append_new(o->retry_errors, json_deep_copy(error));
        o->retries++;
}

static void on_done(void *ud, struct llm_result *result, json_t *error,
                    const struct llm_call_info *info)
{
        struct outcome *o = ud;

        assert_false(o->done);
        assert_int_equal(result != NULL, error == NULL);
        o->done = true;
        o->result = result;
        o->error = error;
        o->info = *info;
}

static void outcome_init(struct outcome *o)
{
        memset(o, 0, sizeof(*o));
        buf_init(&o->text, 16 * 1024 * 1024);
        o->retry_errors = json_array();
}

static void outcome_free(struct outcome *o)
{
        if (o->result)
                llm_result_free(o->result);
        free(o->result);
        json_decref(o->error);
        json_decref(o->retry_errors);
        buf_free(&o->text);
        memset(o, 0, sizeof(*o));
}

struct fixture {
        struct llm_server *srv;
        struct runtime_http *h;
};

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        f->srv = llm_server_start();
        assert_int_equal(runtime_http_new("agently-test", &f->h), 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        runtime_http_free(f->h);
        llm_server_stop(f->srv);
        free(f);
        return 0;
}

/* Drives the loop until the call ends (or fails the test after timeout_ms). */
static void wait_done(struct fixture *f, struct outcome *o, int timeout_ms)
{
        int64_t until = runtime_http_now_ms() + timeout_ms;

        while (!o->done) {
                assert_int_lt(runtime_http_now_ms(), until);
                assert_int_ge(runtime_http_poll(f->h, 200, -1), 0);
        }
}

struct call_opts {
        const char *base_url; /* NULL: the server's */
        const char *key;
        int max_attempts;
        int64_t total_timeout_ms;
        bool no_text;
};

/* Starts a call of request (text) and waits for its end. */
static void call(struct fixture *f, enum llm_provider p, const char *request,
                 const struct call_opts *co, struct outcome *o)
{
        _cleanup_json_ json_t *req = json_loads(request, 0, NULL);
        _cleanup_free_ char *err = NULL;
        struct llm_call_params params = {
            .provider = p,
            .base_url = co && co->base_url ? co->base_url : llm_server_url(f->srv),
            .api_key = co && co->key ? co->key : "sk-test-key-0000",
            .request = req,
            .max_attempts = co ? co->max_attempts : 0,
            .total_timeout_ms = co ? co->total_timeout_ms : 0,
            .on_text = co && co->no_text ? NULL : on_text,
            .on_retry = on_retry,
            .on_done = on_done,
            .userdata = o,
        };
        struct llm_call *c = NULL;

        assert_non_null(req);
        outcome_init(o);
        if (llm_call_start(f->h, &params, &c, &err) < 0)
                fail_msg("llm_call_start: %s", err ? err : "?");
        assert_non_null(c);
        wait_done(f, o, 30000);
}

static const char request_fmt[] =
    "{\"model\": \"gpt-4o-mini\", \"system\": \"You call tools when asked.\", \"stream\": %s,"
    " \"tools\": [{\"name\": \"http_request\", \"parameters\": {\"type\": \"object\"}}],"
    " \"messages\": [{\"role\": \"user\", \"content\": \"Research ünïcode.\"}]}";

static char *request(bool stream)
{
        return str_printf(request_fmt, stream ? "true" : "false");
}

static const char tool_step[] =
    "{\"text\": \"Fetching both — 🌍 pages.\", \"chunk\": 3, \"write\": 7, "
    "\"tool_calls\": ["
    " {\"id\": \"call_1\", \"name\": \"http_request\", \"arguments\": "
    "  \"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://127.0.0.1/a?q=ü\\\"}\"},"
    " {\"id\": \"call_2\", \"name\": \"http_request\", \"arguments\": "
    "  \"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://127.0.0.1/b\\\"}\"}],"
    " \"usage\": {\"input\": 1200, \"output\": 80, \"cached\": 1000}}";

/* Both providers, streamed (3-byte deltas in 7-byte writes, so tool arguments arrive
 * split) and whole: the same result, one attempt, and the server saw the key header. */
static void both_providers(void **state)
{
        struct fixture *f = *state;

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                for (int streamed = 1; streamed >= 0; streamed--) {
                        _cleanup_free_ char *req = request(streamed);
                        _cleanup_free_ char *script = str_printf("[%s]", tool_step);
                        _cleanup_free_ char *key = str_printf("sk-both-%d-%d-abcdef", p, streamed);
                        struct call_opts co = {.key = key};
                        struct outcome o;
                        int before = llm_server_request_count(f->srv);

                        llm_server_script(f->srv, script);
                        call(f, (enum llm_provider)p, req, &co, &o);
                        if (o.error)
                                fail_msg("%s", json_dumps(o.error, 0));
                        assert_string_equal(o.result->text, "Fetching both — 🌍 pages.");
                        assert_int_equal(o.result->tool_call_count, 2);
                        assert_string_equal(o.result->tool_calls[0].id, "call_1");
                        assert_string_equal(o.result->tool_calls[0].arguments,
                                            "{\"method\":\"GET\",\"url\":"
                                            "\"http://127.0.0.1/a?q=ü\"}");
                        assert_string_equal(o.result->tool_calls[1].arguments,
                                            "{\"method\":\"GET\",\"url\":\"http://127.0.0.1/b\"}");
                        assert_int_equal(o.result->stop_reason, LLM_STOP_TOOL_CALLS);
                        assert_int_equal(o.result->usage.input_tokens, 1200);
                        assert_int_equal(o.result->usage.cached_input_tokens, 1000);
                        assert_int_equal(o.result->usage.output_tokens, 80);
                        assert_int_equal(o.info.attempts, 1);
                        assert_int_equal(o.retries, 0);
                        if (!streamed)
                                assert_int_equal(o.texts, 0);
                        assert_int_equal(llm_server_request_count(f->srv), before + 1);
                        _cleanup_json_ json_t *seen = llm_server_request(f->srv, before);
                        json_t *h = json_object_get(seen, "headers");
                        if (p == LLM_PROVIDER_OPENAI) {
                                _cleanup_free_ char *bearer = str_printf("Bearer %s", key);
                                assert_string_equal(
                                    json_string_value(json_object_get(h, "authorization")), bearer);
                                assert_string_equal(
                                    json_string_value(json_object_get(seen, "path")),
                                    "/v1/chat/completions");
                        } else {
                                assert_string_equal(
                                    json_string_value(json_object_get(h, "x-api-key")), key);
                                assert_string_equal(
                                    json_string_value(json_object_get(seen, "path")),
                                    "/v1/messages");
                        }
                        assert_int_equal(
                            json_is_true(json_object_get(json_object_get(seen, "body"), "stream")),
                            streamed);
                        outcome_free(&o);
                }
        }
}

/* A long answer streamed over ~1.5 s in small writes: the text comes in pieces while it
 * forms, never two within 100 ms, at most ~10 a second, and the pieces joined are a prefix
 * of the final text. */
static void text_is_coalesced(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(true);
        struct buf text;
        struct outcome o;

        buf_init(&text, 1 << 20);
        for (int i = 0; i < 150; i++)
                assert_int_equal(buf_printf(&text, "word%03d ", i), 0);
        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                _cleanup_free_ char *script = str_printf(
                    "[{\"text\": \"%s\", \"chunk\": 8, \"write\": 60, \"interval_ms\": 5}]",
                    text.data);
                int64_t t0 = runtime_http_now_ms(), elapsed;

                llm_server_script(f->srv, script);
                call(f, (enum llm_provider)p, req, NULL, &o);
                elapsed = runtime_http_now_ms() - t0;
                if (o.error)
                        fail_msg("%s", json_dumps(o.error, 0));
                assert_string_equal(o.result->text, text.data);
                assert_int_ge(elapsed, 800);
                /* many pieces, not one per delta (there are ~150 deltas) */
                assert_int_ge(o.texts, 4);
                assert_int_le(o.texts, elapsed / LLM_TEXT_INTERVAL_MS + 1);
                for (int i = 1; i < o.texts && i < MAX_TEXTS; i++)
                        assert_int_ge(o.text_at[i] - o.text_at[i - 1], LLM_TEXT_INTERVAL_MS);
                assert_int_le(o.text.len, o.result->text_len);
                assert_int_equal(memcmp(o.text.data, o.result->text, o.text.len), 0);
                assert_int_ge(o.text.len, o.result->text_len / 2);
                outcome_free(&o);
        }
        buf_free(&text);
}

/* 429 with Retry-After: 1, then an answer: two attempts, the second after >= 1 s. */
static void retry_after_429(void **state)
{
        struct fixture *f = *state;

        for (int streamed = 0; streamed <= 1; streamed++) {
                _cleanup_free_ char *req = request(streamed);
                int64_t t0 = runtime_http_now_ms();
                struct outcome o;

                llm_server_script(f->srv, "[{\"status\": 429, \"error\": \"slow down\", "
                                          "\"retry_after\": \"1\"}, {\"text\": \"ok\"}]");
                call(f, LLM_PROVIDER_ANTHROPIC, req, NULL, &o);
                if (o.error)
                        fail_msg("%s", json_dumps(o.error, 0));
                assert_string_equal(o.result->text, "ok");
                assert_int_equal(o.info.attempts, 2);
                assert_int_equal(o.retries, 1);
                assert_int_equal(o.waits[0], 1000);
                assert_int_ge(runtime_http_now_ms() - t0, 1000);
                json_t *e = json_array_get(o.retry_errors, 0);
                assert_string_equal(json_string_value(json_object_get(e, "class")), "http_429");
                assert_int_equal(json_integer_value(json_object_get(e, "status")), 429);
                assert_int_equal(json_integer_value(json_object_get(e, "retry_after_ms")), 1000);
                assert_non_null(
                    strstr(json_string_value(json_object_get(e, "message")), "slow down"));
                outcome_free(&o);
        }
}

/* A 500 and a 503, then an answer: retried after a backoff (0.25-0.5 s, then 0.5-1 s). */
static void retry_5xx(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(true);
        struct outcome o;

        llm_server_script(f->srv, "[{\"status\": 500, \"error\": \"boom\"}, {\"status\": 503},"
                                  " {\"text\": \"fine now\"}]");
        call(f, LLM_PROVIDER_OPENAI, req, NULL, &o);
        if (o.error)
                fail_msg("%s", json_dumps(o.error, 0));
        assert_string_equal(o.result->text, "fine now");
        assert_int_equal(o.info.attempts, 3);
        assert_int_equal(o.retries, 2);
        assert_int_ge(o.waits[0], LLM_RETRY_BASE_MS / 2);
        assert_int_le(o.waits[0], LLM_RETRY_BASE_MS);
        assert_int_ge(o.waits[1], LLM_RETRY_BASE_MS);
        assert_int_le(o.waits[1], 2 * LLM_RETRY_BASE_MS);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(o.retry_errors, 0), "class")),
            "http_5xx");
        outcome_free(&o);

        /* with no attempt left, the 5xx is the call's error */
        llm_server_script(f->srv, "[{\"status\": 502, \"error\": \"bad gateway\"}]");
        call(f, LLM_PROVIDER_OPENAI, req, &(struct call_opts){.max_attempts = 1}, &o);
        assert_null(o.result);
        assert_string_equal(json_string_value(json_object_get(o.error, "class")), "http_5xx");
        assert_int_equal(json_integer_value(json_object_get(o.error, "attempts")), 1);
        assert_int_equal(json_integer_value(json_object_get(o.error, "status")), 502);
        outcome_free(&o);
}

/* A stream cut before its end is a lost connection, retried; the text of the cut attempt
 * is superseded (the attempt number changes). With one attempt it is the error. */
static void cut_stream(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(true);

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                struct outcome o;

                llm_server_script(f->srv,
                                  "[{\"text\": \"the first answer, never finished\", "
                                  "\"cut_after\": 300}, {\"text\": \"the second answer\"}]");
                call(f, (enum llm_provider)p, req, NULL, &o);
                if (o.error)
                        fail_msg("%s", json_dumps(o.error, 0));
                assert_string_equal(o.result->text, "the second answer");
                assert_int_equal(o.info.attempts, 2);
                assert_string_equal(
                    json_string_value(json_object_get(json_array_get(o.retry_errors, 0), "class")),
                    "network");
                outcome_free(&o);

                llm_server_script(f->srv, "[{\"text\": \"cut\", \"cut_after\": 200}]");
                call(f, (enum llm_provider)p, req, &(struct call_opts){.max_attempts = 1}, &o);
                assert_null(o.result);
                assert_string_equal(json_string_value(json_object_get(o.error, "class")),
                                    "network");
                outcome_free(&o);
        }
}

/* An error event mid-stream (an overloaded provider) is retried; its message is kept. */
static void stream_error_event(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(true);

        for (int p = LLM_PROVIDER_OPENAI; p <= LLM_PROVIDER_ANTHROPIC; p++) {
                struct outcome o;

                llm_server_script(f->srv, "[{\"text\": \"half an\", \"stream_error\": "
                                          "\"Overloaded\"}, {\"text\": \"a whole answer\"}]");
                call(f, (enum llm_provider)p, req, NULL, &o);
                if (o.error)
                        fail_msg("%s", json_dumps(o.error, 0));
                assert_string_equal(o.result->text, "a whole answer");
                assert_int_equal(o.info.attempts, 2);
                json_t *e = json_array_get(o.retry_errors, 0);
                assert_string_equal(json_string_value(json_object_get(e, "class")), "stream_error");
                assert_non_null(
                    strstr(json_string_value(json_object_get(e, "message")), "Overloaded"));
                outcome_free(&o);
        }
}

/* A 4xx is the caller's mistake: not retried, and the provider's message is in the error. */
static void no_retry_4xx(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(false);
        struct outcome o;

        llm_server_script(f->srv, "[{\"status\": 400, \"error\": \"model m does not exist\"}]");
        call(f, LLM_PROVIDER_ANTHROPIC, req, NULL, &o);
        assert_null(o.result);
        assert_string_equal(json_string_value(json_object_get(o.error, "class")), "http_4xx");
        assert_int_equal(json_integer_value(json_object_get(o.error, "attempts")), 1);
        assert_non_null(strstr(json_string_value(json_object_get(o.error, "message")),
                               "model m does not exist"));
        assert_int_equal(o.retries, 0);
        outcome_free(&o);
}

/* A server that never answers: the total timeout ends the call, not retried. A Retry-After
 * longer than the time left is not waited for. */
static void total_timeout(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(true);
        int64_t t0 = runtime_http_now_ms();
        struct outcome o;

        llm_server_script(f->srv, "[{\"text\": \"late\", \"delay_ms\": 3000}]");
        call(f, LLM_PROVIDER_OPENAI, req, &(struct call_opts){.total_timeout_ms = 500}, &o);
        assert_null(o.result);
        assert_string_equal(json_string_value(json_object_get(o.error, "class")), "timeout");
        assert_int_le(runtime_http_now_ms() - t0, 2500);
        /* libcurl's clock and ours round apart: 499 ms was seen */
        assert_int_ge(runtime_http_now_ms() - t0, 490);
        assert_int_equal(o.retries, 0);
        outcome_free(&o);

        llm_server_script(f->srv, "[{\"status\": 429, \"retry_after\": \"30\"}]");
        t0 = runtime_http_now_ms();
        call(f, LLM_PROVIDER_OPENAI, req, &(struct call_opts){.total_timeout_ms = 5000}, &o);
        assert_null(o.result);
        assert_string_equal(json_string_value(json_object_get(o.error, "class")), "http_429");
        assert_non_null(
            strstr(json_string_value(json_object_get(o.error, "message")), "total timeout"));
        assert_int_le(runtime_http_now_ms() - t0, 2000);
        assert_int_equal(o.retries, 0);
        outcome_free(&o);
        usleep(3200 * 1000); /* the delayed answer above is done before the next test */
}

/* Nobody listens: connect, retried, then the error with every attempt counted. */
static void connect_refused(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *req = request(false);
        _cleanup_free_ char *url = str_printf("http://127.0.0.1:%d/v1", test_free_port());
        struct outcome o;

        call(f, LLM_PROVIDER_OPENAI, req, &(struct call_opts){.base_url = url, .max_attempts = 2},
             &o);
        assert_null(o.result);
        assert_string_equal(json_string_value(json_object_get(o.error, "class")), "connect");
        assert_int_equal(json_integer_value(json_object_get(o.error, "attempts")), 2);
        assert_int_equal(o.retries, 1);
        outcome_free(&o);
}

/* The key is sent in its header and nowhere else: a server that echoes it in an error
 * message and in the answer's text and tool arguments has it replaced. */
static void key_never_echoed(void **state)
{
        struct fixture *f = *state;
        const char *key = "sk-unique-7f3a9c1e5b";
        _cleanup_free_ char *req = request(false);
        _cleanup_free_ char *script = NULL;
        _cleanup_free_ char *dumped = NULL;
        struct outcome o;

        script = str_printf("[{\"status\": 401, \"error\": \"invalid key %s\"}]", key);
        llm_server_script(f->srv, script);
        call(f, LLM_PROVIDER_OPENAI, req, &(struct call_opts){.key = key}, &o);
        dumped = json_dumps(o.error, 0);
        assert_null(strstr(dumped, key));
        assert_non_null(strstr(dumped, "invalid key [redacted]"));
        outcome_free(&o);

        free(script);
        script = str_printf("[{\"text\": \"your key is %s.\", \"tool_calls\": [{\"id\": \"c\", "
                            "\"name\": \"f\", \"arguments\": \"{\\\"k\\\":\\\"%s\\\"}\"}]}]",
                            key, key);
        for (int streamed = 0; streamed <= 1; streamed++) {
                _cleanup_free_ char *r = request(streamed);
                llm_server_script(f->srv, script);
                call(f, LLM_PROVIDER_ANTHROPIC, r, &(struct call_opts){.key = key}, &o);
                if (o.error)
                        fail_msg("%s", json_dumps(o.error, 0));
                assert_string_equal(o.result->text, "your key is [redacted].");
                assert_string_equal(o.result->tool_calls[0].arguments, "{\"k\":\"[redacted]\"}");
                outcome_free(&o);
        }
}

/* A request that is not the neutral shape, or a bad base URL: refused at once, nothing
 * sent, no callback. */
static void refused_at_start(void **state)
{
        struct fixture *f = *state;
        _cleanup_json_ json_t *bad = json_loads("{\"model\": \"m\", \"mesages\": []}", 0, NULL);
        _cleanup_json_ json_t *good =
            json_loads("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", "
                       "\"content\": \"hi\"}]}",
                       0, NULL);
        struct outcome o;
        struct llm_call_params p = {.provider = LLM_PROVIDER_OPENAI,
                                    .base_url = llm_server_url(f->srv),
                                    .request = bad,
                                    .on_done = on_done,
                                    .userdata = &o};
        struct llm_call *c = NULL;
        char *err = NULL;
        int before = llm_server_request_count(f->srv);

        outcome_init(&o);
        assert_int_equal(llm_call_start(f->h, &p, &c, &err), -EINVAL);
        assert_non_null(strstr(err, "mesages"));
        free(err);
        err = NULL;
        p.request = good;
        p.base_url = "ftp://example.com";
        assert_int_equal(llm_call_start(f->h, &p, &c, &err), -EINVAL);
        assert_non_null(strstr(err, "base_url"));
        free(err);
        err = NULL;
        p.base_url = llm_server_url(f->srv);
        p.api_key = "sk-line\r\nX-Evil: 1";
        assert_int_equal(llm_call_start(f->h, &p, &c, &err), -EINVAL);
        assert_null(strstr(err, "sk-line"));
        free(err);
        assert_null(c);
        for (int i = 0; i < 3; i++)
                assert_int_ge(runtime_http_poll(f->h, 10, -1), 0);
        assert_false(o.done);
        assert_int_equal(llm_server_request_count(f->srv), before);
        outcome_free(&o);
}

/* Aborting a call in flight (and one waiting to retry): no callback, nothing left. */
static void abort_call(void **state)
{
        struct fixture *f = *state;
        _cleanup_json_ json_t *req =
            json_loads("{\"model\": \"m\", \"stream\": true, \"messages\": [{\"role\": \"user\", "
                       "\"content\": \"hi\"}]}",
                       0, NULL);
        struct outcome o;
        struct llm_call_params p = {.provider = LLM_PROVIDER_OPENAI,
                                    .base_url = llm_server_url(f->srv),
                                    .request = req,
                                    .on_done = on_done,
                                    .on_retry = on_retry,
                                    .userdata = &o};
        struct llm_call *c = NULL;

        outcome_init(&o);
        llm_server_script(f->srv, "[{\"text\": \"slow\", \"delay_ms\": 500}, "
                                  "{\"status\": 503, \"retry_after\": \"5\"}]");
        assert_int_equal(llm_call_start(f->h, &p, &c, NULL), 0);
        for (int i = 0; i < 3; i++)
                assert_int_ge(runtime_http_poll(f->h, 20, -1), 0);
        assert_int_equal(runtime_http_active(f->h), 1);
        llm_call_abort(c);
        assert_int_equal(runtime_http_active(f->h), 0);

        assert_int_equal(llm_call_start(f->h, &p, &c, NULL), 0);
        for (int64_t until = runtime_http_now_ms() + 5000; o.retries == 0;) {
                assert_int_lt(runtime_http_now_ms(), until);
                assert_int_ge(runtime_http_poll(f->h, 50, -1), 0);
        }
        assert_int_equal(runtime_http_active(f->h), 0); /* waiting: no transfer */
        llm_call_abort(c);
        for (int i = 0; i < 3; i++)
                assert_int_ge(runtime_http_poll(f->h, 20, -1), 0);
        assert_false(o.done);
        outcome_free(&o);
        usleep(600 * 1000);
}

/*
 * A held call (params.hold) sends all but its body's last byte: the server has no whole
 * request until llm_call_release, then answers it as any other; a held call aborted
 * leaves the server a request cut short, which it never counts.
 */
static void a_held_call_waits_for_its_release(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *text = request(true);
        _cleanup_json_ json_t *req = json_loads(text, 0, NULL);
        struct outcome o;
        struct llm_call_params p = {.provider = LLM_PROVIDER_OPENAI,
                                    .base_url = llm_server_url(f->srv),
                                    .request = req,
                                    .on_done = on_done,
                                    .on_retry = on_retry,
                                    .userdata = &o,
                                    .hold = true};
        struct llm_call *c = NULL;
        int before = llm_server_request_count(f->srv);

        outcome_init(&o);
        llm_server_script(f->srv, "[{\"text\": \"Released.\"}, {\"text\": \"Never.\"}]");
        assert_int_equal(llm_call_start(f->h, &p, &c, NULL), 0);
        for (int64_t until = runtime_http_now_ms() + 400; runtime_http_now_ms() < until;)
                assert_int_ge(runtime_http_poll(f->h, 20, -1), 0);
        assert_false(o.done);
        assert_int_equal(llm_server_request_count(f->srv), before);
        llm_call_release(c);
        wait_done(f, &o, 10000);
        if (o.error)
                fail_msg("%s", json_dumps(o.error, 0));
        assert_string_equal(o.result->text, "Released.");
        assert_int_equal(llm_server_request_count(f->srv), before + 1);
        _cleanup_json_ json_t *seen = llm_server_request(f->srv, before);
        _cleanup_free_ char *body = json_dumps(json_object_get(seen, "body"), JSON_COMPACT);
        assert_non_null(strstr(body, "Research ünïcode."));
        outcome_free(&o);

        /* held, then aborted: the server never has the request */
        outcome_init(&o);
        assert_int_equal(llm_call_start(f->h, &p, &c, NULL), 0);
        for (int64_t until = runtime_http_now_ms() + 200; runtime_http_now_ms() < until;)
                assert_int_ge(runtime_http_poll(f->h, 20, -1), 0);
        llm_call_abort(c);
        usleep(300 * 1000);
        assert_false(o.done);
        assert_int_equal(llm_server_request_count(f->srv), before + 1);
        outcome_free(&o);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(both_providers),
            cmocka_unit_test(text_is_coalesced),
            cmocka_unit_test(retry_after_429),
            cmocka_unit_test(retry_5xx),
            cmocka_unit_test(cut_stream),
            cmocka_unit_test(stream_error_event),
            cmocka_unit_test(no_retry_4xx),
            cmocka_unit_test(total_timeout),
            cmocka_unit_test(connect_refused),
            cmocka_unit_test(key_never_echoed),
            cmocka_unit_test(refused_at_start),
            cmocka_unit_test(abort_call),
            cmocka_unit_test(a_held_call_waits_for_its_release),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
