/*
 * Unit tests for the stream parsers of src/llm (llm_stream_*): recorded-shape streams of
 * both providers (tests/unit/llm/) give the same result however their bytes are split
 * (at every boundary, one byte at a time, at random, with CRLF or CR line ends), text
 * arrives as it streams, every buffer stops at its cap, and malformed or cut streams fail
 * with a message that names what was wrong.
 */
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "fileio.h"
#include "llm.h"
#include "strutil.h"

static char *fixture(const char *name, size_t *len)
{
        char path[512];
        char *data = NULL;

        snprintf(path, sizeof(path), "%s/tests/unit/llm/%s", AGENTLY_SOURCE_DIR, name);
        assert_int_equal(file_read_all(path, 1 << 20, &data, len), 0);
        return data;
}

/* Feeds data cut at the given offsets (ascending, within len) and returns the result as
 * JSON; fails the test on any error. */
static json_t *parse_split(enum llm_provider p, const char *data, size_t len, const size_t *cuts,
                           size_t ncuts)
{
        struct llm_stream *s;
        struct llm_result r;
        _cleanup_free_ char *err = NULL;
        size_t at = 0;
        json_t *j;

        assert_int_equal(llm_stream_new(p, &s), 0);
        for (size_t i = 0; i <= ncuts; i++) {
                size_t to = i < ncuts ? cuts[i] : len;
                int rc = llm_stream_feed(s, data + at, to - at, &err);
                if (rc < 0)
                        fail_msg("feed failed at %zu: %s", at, err ? err : "?");
                at = to;
        }
        if (llm_stream_finish(s, &r, &err) < 0)
                fail_msg("finish failed: %s", err ? err : "?");
        j = llm_result_to_json(&r);
        assert_non_null(j);
        llm_result_free(&r);
        llm_stream_free(s);
        return j;
}

static json_t *parse_whole(enum llm_provider p, const char *data, size_t len)
{
        return parse_split(p, data, len, NULL, 0);
}

/* A copy of data with every "\n" replaced by eol ("\r\n" or "\r"). */
static char *with_line_ends(const char *data, size_t len, const char *eol, size_t *out_len)
{
        struct buf b;

        buf_init(&b, 4 * len + 1);
        for (size_t i = 0; i < len; i++)
                assert_int_equal(
                    data[i] == '\n' ? buf_append_str(&b, eol) : buf_append(&b, data + i, 1), 0);
        *out_len = b.len;
        return buf_steal(&b);
}

static void openai_recorded_stream(void **state)
{
        size_t len;
        _cleanup_free_ char *data = fixture("openai_stream_tool_calls.sse", &len);
        _cleanup_json_ json_t *got = parse_whole(LLM_PROVIDER_OPENAI, data, len);
        _cleanup_json_ json_t *want = json_pack(
            "{s:s, s:s, s:s, s:[{s:s, s:s, s:s}, {s:s, s:s, s:s}], s:s, s:s, s:{s:i, s:i, s:i}}",
            "id", "chatcmpl-BX8Lz0q9mY3kTf2", "model", "gpt-4o-mini-2024-07-18", "text",
            "Let me check both cities — ☀️ or 🌧?", "tool_calls", "id",
            "call_8mJ3Qe1pZ4xKq", "name", "get_weather", "arguments", "{\"city\": \"Paris\"}", "id",
            "call_Q7vWb2nRt0", "name", "get_weather", "arguments", "{\"city\": \"Zürich\"}",
            "stop_reason", "tool_calls", "stop_detail", "tool_calls", "usage", "input_tokens", 94,
            "output_tokens", 52, "cached_input_tokens", 64);

        assert_json_equal(got, want);
}

static void anthropic_recorded_stream(void **state)
{
        size_t len;
        _cleanup_free_ char *data = fixture("anthropic_stream_tool_use.sse", &len);
        _cleanup_json_ json_t *got = parse_whole(LLM_PROVIDER_ANTHROPIC, data, len);
        _cleanup_json_ json_t *want =
            json_pack("{s:s, s:s, s:s, s:[{s:s, s:s, s:s}], s:s, s:s, s:{s:i, s:i, s:i}}", "id",
                      "msg_01XFDUDYJgAACzvnptvVoYEL", "model", "claude-sonnet-4-20250514", "text",
                      "Okay, let me check the weather in Zürich ☀️.", "tool_calls", "id",
                      "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name", "get_weather", "arguments",
                      "{\"city\": \"Zürich\", \"unit\": \"celsius\"}", "stop_reason", "tool_calls",
                      "stop_detail", "tool_use", "usage", "input_tokens", 472 + 1024,
                      "output_tokens", 89, "cached_input_tokens", 1024);

        assert_json_equal(got, want);
}

/* The same bytes split at every boundary, one byte at a time, and at random give the
 * same result; so do the same events with CRLF and CR line ends. */
static void splits_do_not_matter(enum llm_provider p, const char *name)
{
        size_t len, n;
        _cleanup_free_ char *data = fixture(name, &len);
        _cleanup_json_ json_t *want = parse_whole(p, data, len);
        size_t *cuts = calloc(2 * len + 2, sizeof(*cuts)); /* CRLF doubles the line ends */

        assert_non_null(cuts);
        for (size_t k = 0; k <= len; k++) {
                json_t *got = parse_split(p, data, len, &k, 1);
                assert_json_equal(got, want);
                json_decref(got);
        }
        for (size_t i = 0; i + 1 < len; i++)
                cuts[i] = i + 1;
        json_t *bytewise = parse_split(p, data, len, cuts, len - 1);
        assert_json_equal(bytewise, want);
        json_decref(bytewise);
        srandom(20261130);
        for (int round = 0; round < 300; round++) {
                n = 0;
                for (size_t at = (size_t)(random() % 40); at < len;
                     at += 1 + (size_t)(random() % 40))
                        cuts[n++] = at;
                json_t *got = parse_split(p, data, len, cuts, n);
                assert_json_equal(got, want);
                json_decref(got);
        }
        static const char *const ends[] = {"\r\n", "\r"};
        for (size_t e = 0; e < 2; e++) {
                size_t elen;
                _cleanup_free_ char *other = with_line_ends(data, len, ends[e], &elen);
                json_t *got = parse_whole(p, other, elen);
                assert_json_equal(got, want);
                json_decref(got);
                /* a CRLF split between its CR and its LF is one line end, not two */
                for (size_t i = 0; i + 1 < elen; i++)
                        cuts[i] = i + 1;
                got = parse_split(p, other, elen, cuts, elen - 1);
                assert_json_equal(got, want);
                json_decref(got);
        }
        free(cuts);
}

static void openai_splits(void **state)
{
        splits_do_not_matter(LLM_PROVIDER_OPENAI, "openai_stream_tool_calls.sse");
}

static void anthropic_splits(void **state)
{
        splits_do_not_matter(LLM_PROVIDER_ANTHROPIC, "anthropic_stream_tool_use.sse");
}

/* Where needle starts in text; fails the test when it is not there. */
__attribute__((noinline)) static size_t text_offset(const char *text, const char *needle)
{
        const char *at = strstr(text, needle);

        assert_non_null(at);
        return (size_t)(at - text);
}

/* Text is there to take as soon as its event is complete, not at the end; the pieces
 * taken add up to the final text. */
static void text_arrives_as_it_streams(void **state)
{
        size_t len, pieces = 0;
        _cleanup_free_ char *data = fixture("anthropic_stream_tool_use.sse", &len);
        const char *t;
        size_t tlen;
        struct llm_stream *s;
        struct llm_result r;
        struct buf all;

        buf_init(&all, 4096);
        assert_int_equal(llm_stream_new(LLM_PROVIDER_ANTHROPIC, &s), 0);
        /* up to the blank line that ends the first text delta's event (offsets, not
         * pointers into data: an optimising gcc cannot tell data outlives them) */
        size_t first_delta = text_offset(data, "Okay, let me");
        size_t end = first_delta + text_offset(data + first_delta, "\n\n") + 2;
        assert_int_equal(llm_stream_feed(s, data, end - 1, NULL), 0);
        assert_false(llm_stream_take_text(s, &t, &tlen)); /* the event is not complete yet */
        assert_int_equal(llm_stream_feed(s, data + end - 1, 1, NULL), 0);
        assert_true(llm_stream_take_text(s, &t, &tlen));
        assert_int_equal(tlen, strlen("Okay, let me check the weather in Zürich"));
        assert_memory_equal(t, "Okay, let me check the weather in Zürich", tlen);
        assert_int_equal(buf_append(&all, t, tlen), 0);
        pieces++;
        for (size_t i = end; i < len; i++) {
                assert_int_equal(llm_stream_feed(s, data + i, 1, NULL), 0);
                if (llm_stream_take_text(s, &t, &tlen)) {
                        assert_int_equal(buf_append(&all, t, tlen), 0);
                        pieces++;
                }
        }
        assert_true(llm_stream_done(s));
        assert_int_equal(llm_stream_finish(s, &r, NULL), 0);
        assert_int_equal(pieces, 2);
        assert_string_equal(all.data, r.text);
        llm_result_free(&r);
        llm_stream_free(s);
        buf_free(&all);
}

/* Feeds text and expects the stream to fail with code and a message containing needle,
 * at the feed or at finish. */
static void expect_failure(enum llm_provider p, const char *text, int code, const char *needle)
{
        struct llm_stream *s;
        struct llm_result r;
        _cleanup_free_ char *err = NULL;
        int rc;

        assert_int_equal(llm_stream_new(p, &s), 0);
        rc = llm_stream_feed(s, text, strlen(text), &err);
        if (rc == 0)
                rc = llm_stream_finish(s, &r, &err);
        else {
                /* dead from then on: the same failure again */
                _cleanup_free_ char *again = NULL;
                assert_int_equal(llm_stream_feed(s, "data: [DONE]\n\n", 14, &again), rc);
                assert_non_null(again);
                assert_string_equal(again, err);
                assert_int_equal(llm_stream_finish(s, &r, NULL), rc);
        }
        assert_int_equal(rc, code);
        assert_non_null(err);
        if (!strstr(err, needle))
                fail_msg("error \"%s\" does not contain \"%s\"", err, needle);
        llm_result_free(&r);
        llm_stream_free(s);
}

#define OA_CHUNK(delta) "data: {\"choices\":[{\"index\":0,\"delta\":" delta "}]}\n\n"

static void malformed_streams_are_named(void **state)
{
        expect_failure(LLM_PROVIDER_OPENAI,
                       OA_CHUNK("{\"content\":\"hi\"}") "data: {\"choices\":[\n\n", -EBADMSG,
                       "openai stream: event 2 is not JSON");
        expect_failure(LLM_PROVIDER_OPENAI, OA_CHUNK("{\"content\":\"hi\"}"), -EBADMSG,
                       "ended before its last event (data: [DONE]) after 1 events");
        /* an event the body ends before its blank line does not count (a cut) */
        expect_failure(LLM_PROVIDER_OPENAI, OA_CHUNK("{\"content\":\"hi\"}") "data: [DONE]\n",
                       -EBADMSG, "ended before its last event (data: [DONE]) after 1 events");
        expect_failure(LLM_PROVIDER_OPENAI, "data: [1,2]\n\n", -EBADMSG,
                       "event 1 is not a JSON object");
        expect_failure(LLM_PROVIDER_OPENAI,
                       OA_CHUNK("{\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}"),
                       -EBADMSG, "tool_calls[0] has no index");
        expect_failure(LLM_PROVIDER_OPENAI,
                       OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}"
                                "]}") "data: [DONE]\n\n",
                       -EBADMSG, "openai stream: tool call 0: tool call without a name");
        expect_failure(
            LLM_PROVIDER_OPENAI,
            "data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\"}}\n\n",
            -EBADMSG, "openai: the server answered an error: requests: Rate limit reached");
        expect_failure(
            LLM_PROVIDER_ANTHROPIC,
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,"
            "\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
            -EBADMSG, "content_block_delta for block 3, which was not started");
        expect_failure(
            LLM_PROVIDER_ANTHROPIC,
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
            "\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n"
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
            "\"text_delta\",\"text\":\"x\"}}\n\n",
            -EBADMSG, "text_delta for a block that is not text");
        expect_failure(
            LLM_PROVIDER_ANTHROPIC,
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
            "\"text\",\"text\":\"\"}}\n\n"
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
            "\"text\",\"text\":\"\"}}\n\n",
            -EBADMSG, "block 0 started twice");
        expect_failure(
            LLM_PROVIDER_ANTHROPIC,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
            "\"message\":\"Overloaded\"}}\n\n",
            -EBADMSG, "anthropic: the server answered an error: overloaded_error: Overloaded");
        expect_failure(LLM_PROVIDER_ANTHROPIC, "data: {\"index\":0}\n\n", -EBADMSG,
                       "anthropic stream: event 1 has no type");
        expect_failure(
            LLM_PROVIDER_ANTHROPIC,
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
            "\"m\",\"usage\":{\"input_tokens\":3}}}\n\n",
            -EBADMSG, "ended before its last event (message_stop) after 1 events");
}

/* Comments, unknown fields, a BOM, multi-line data, an event split over data lines:
 * the event-stream grammar, not just the happy path. */
static void event_stream_grammar(void **state)
{
        static const char text[] = "\xef\xbb\xbf: keep-alive\n"
                                   "id: 7\nretry: 1000\nfoo: bar\n"
                                   "data: {\"choices\":[{\"index\":0,\n"
                                   "data: \"delta\":{\"content\":\"a\\nb\"}}]}\n\n"
                                   "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\"},"
                                   "\"finish_reason\":\"stop\"}]}\n\n"
                                   "data: [DONE]\n\n";
        static const char *const ends[] = {"\n", "\r\n", "\r"};
        size_t cuts[512];

        for (size_t e = 0; e < 3; e++) {
                size_t len;
                _cleanup_free_ char *data = with_line_ends(text, strlen(text), ends[e], &len);
                assert_int_lt(len, 512);
                for (size_t i = 0; i + 1 < len; i++)
                        cuts[i] = i + 1;
                /* whole, and one byte at a time (a CRLF split between CR and LF) */
                for (size_t ncuts = 0; ncuts < len; ncuts += len - 1) {
                        _cleanup_json_ json_t *got =
                            parse_split(LLM_PROVIDER_OPENAI, data, len, cuts, ncuts);
                        assert_string_equal(json_string_value(json_object_get(got, "text")),
                                            "a\nbc");
                        assert_string_equal(json_string_value(json_object_get(got, "stop_reason")),
                                            "end");
                        assert_true(json_is_null(json_object_get(got, "usage")));
                }
        }
}

/* Newer Anthropic streams repeat the cumulative counts in message_delta (input and cache
 * included); null counts there change nothing. */
static void anthropic_message_delta_usage(void **state)
{
        static const char text[] =
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\","
            "\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,"
            "\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n"
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
            "\"max_tokens\"},\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":30,"
            "\"cache_creation_input_tokens\":5,\"output_tokens\":40}}\n\n"
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":"
            "{\"input_tokens\":null,\"output_tokens\":null}}\n\n"
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        _cleanup_json_ json_t *got = parse_whole(LLM_PROVIDER_ANTHROPIC, text, strlen(text));
        _cleanup_json_ json_t *want = json_pack("{s:i, s:i, s:i}", "input_tokens", 12 + 30 + 5,
                                                "output_tokens", 40, "cached_input_tokens", 30);

        assert_json_equal(json_object_get(got, "usage"), want);
        assert_string_equal(json_string_value(json_object_get(got, "stop_reason")), "max_tokens");
        assert_string_equal(json_string_value(json_object_get(got, "text")), "");
}

/* Feeds chunk repeatedly (up to limit bytes in all) and expects -ENOBUFS with needle before
 * the limit is reached: the parser refuses to grow past its cap. */
static void expect_cap(enum llm_provider p, const char *prefix, const char *chunk, size_t limit,
                       const char *needle)
{
        struct llm_stream *s;
        _cleanup_free_ char *err = NULL;
        size_t fed = 0, n = strlen(chunk);
        int rc = 0;

        assert_int_equal(llm_stream_new(p, &s), 0);
        assert_int_equal(llm_stream_feed(s, prefix, strlen(prefix), NULL), 0);
        while (fed < limit && (rc = llm_stream_feed(s, chunk, n, &err)) == 0)
                fed += n;
        assert_int_equal(rc, -ENOBUFS);
        if (!strstr(err, needle))
                fail_msg("error \"%s\" does not contain \"%s\"", err, needle);
        llm_stream_free(s);
}

static void every_buffer_has_a_cap(void **state)
{
        static char big[64 * 1024 + 1];
        char *event;

        memset(big, 'a', sizeof(big) - 1);
        /* one endless line */
        expect_cap(LLM_PROVIDER_OPENAI, "", big, 2 * LLM_MAX_SSE_LINE, "a line over 1048576 bytes");
        /* one endless event of many data lines */
        event = str_printf("data: %.1000s\n", big);
        expect_cap(LLM_PROVIDER_ANTHROPIC, "", event, 2 * LLM_MAX_SSE_EVENT,
                   "event 1 over 1048576 bytes");
        free(event);
        /* endless text in valid events */
        event = str_printf(OA_CHUNK("{\"content\":\"%s\"}"), big);
        expect_cap(LLM_PROVIDER_OPENAI, "", event, 2 * LLM_MAX_TEXT_BYTES,
                   "openai stream: text over 4194304 bytes");
        free(event);
        /* endless arguments of one tool call */
        event =
            str_printf("data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                       "\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n",
                       big);
        expect_cap(
            LLM_PROVIDER_ANTHROPIC,
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
            "\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n",
            event, 2 * LLM_MAX_ARGUMENTS_BYTES, "tool call 0: arguments over 1048576");
        free(event);
        /* endless tool calls */
        expect_failure(
            LLM_PROVIDER_OPENAI,
            OA_CHUNK("{\"tool_calls\":[{\"index\":128,\"id\":\"c\",\"function\":{\"name\":"
                     "\"f\"}}]}"),
            -ENOBUFS, "tool call index 128 (at most 128 tool calls)");
        expect_failure(LLM_PROVIDER_ANTHROPIC,
                       "data: {\"type\":\"content_block_start\",\"index\":256,\"content_block\":{"
                       "\"type\":\"text\",\"text\":\"\"}}\n\n",
                       -ENOBUFS, "block index 256 (at most 256 blocks)");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(openai_recorded_stream),
            cmocka_unit_test(anthropic_recorded_stream),
            cmocka_unit_test(openai_splits),
            cmocka_unit_test(anthropic_splits),
            cmocka_unit_test(text_arrives_as_it_streams),
            cmocka_unit_test(malformed_streams_are_named),
            cmocka_unit_test(event_stream_grammar),
            cmocka_unit_test(anthropic_message_delta_usage),
            cmocka_unit_test(every_buffer_has_a_cap),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
