/* The scripted LLM test server; see llm_server.h. */
#include "llm_server.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "testlib.h"

#define MAX_BODY (8 * 1024 * 1024)

struct llm_server {
        struct MHD_Daemon *daemon;
        char url[64];
        pthread_mutex_t lock;
        json_t *steps;    /* the script's steps not yet used */
        json_t *requests; /* every request received */
        int responses;    /* answered so far, for ids */
};

struct upload {
        char *data;
        size_t len;
};

/* The body being sent for one response: all of it is built first, then written in pieces. */
struct reply {
        char *data;
        size_t len;
        size_t sent;
        json_t *pieces; /* streaming: the boundaries (offsets) of the writes */
        size_t piece;
        int interval_ms;
        size_t cut_after; /* 0: none */
};

static int step_int(const json_t *step, const char *key, int def)
{
        json_t *v = json_object_get(step, key);

        return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

/* ---- the providers' formats, encoded ----------------------------------------------- */

/* Offsets splitting s into pieces of about n bytes, never inside a UTF-8 sequence. */
static size_t next_cut(const char *s, size_t len, size_t at, size_t n)
{
        size_t to = at + n < len ? at + n : len;

        while (to < len && ((unsigned char)s[to] & 0xc0) == 0x80)
                to++;
        return to;
}

static const char *stop_word(bool anthropic, const json_t *step)
{
        const char *stop = json_string_value(json_object_get(step, "stop"));

        if (!stop)
                stop = json_array_size(json_object_get(step, "tool_calls")) ? "tool_calls" : "end";
        if (strcmp(stop, "tool_calls") == 0)
                return anthropic ? "tool_use" : "tool_calls";
        if (strcmp(stop, "max_tokens") == 0)
                return anthropic ? "max_tokens" : "length";
        return anthropic ? "end_turn" : "stop";
}

struct usage {
        json_int_t input, output, cached;
};

static struct usage usage_of(const json_t *step)
{
        json_t *u = json_object_get(step, "usage");
        struct usage r = {json_integer_value(json_object_get(u, "input")),
                          json_integer_value(json_object_get(u, "output")),
                          json_integer_value(json_object_get(u, "cached"))};
        return r;
}

/* Appends "data: <json>\n\n" (openai) or "event: <type>\ndata: <json>\n\n" (anthropic) and
 * records the write boundary after it. Steals ev. */
static void emit(struct reply *r, const char *event, json_t *ev)
{
        char *text = json_dumps(ev, JSON_COMPACT);
        char *line = NULL;
        int n;

        assert_non_null(text);
        n = event ? asprintf(&line, "event: %s\ndata: %s\n\n", event, text)
                  : asprintf(&line, "data: %s\n\n", text);
        assert_int_ge(n, 0);
        r->data = realloc(r->data, r->len + (size_t)n + 1);
        assert_non_null(r->data);
        memcpy(r->data + r->len, line, (size_t)n + 1);
        r->len += (size_t)n;
        json_array_append_new(r->pieces, json_integer((json_int_t)r->len));
        free(line);
        free(text);
        json_decref(ev);
}

static json_t *openai_chunk(const char *id, const char *model, json_t *delta, const char *finish,
                            bool with_usage)
{
        json_t *c = json_pack("{s:s, s:s, s:i, s:s, s:s, s:[{s:i, s:o, s:n, s:o}]}", "id", id,
                              "object", "chat.completion.chunk", "created", 1764460800, "model",
                              model, "system_fingerprint", "fp_agently_test", "choices", "index", 0,
                              "delta", delta, "logprobs", "finish_reason",
                              finish ? json_string(finish) : json_null());
        assert_non_null(c);
        if (with_usage)
                json_object_set_new(c, "usage", json_null());
        return c;
}

static void openai_stream(struct reply *r, const json_t *step, const json_t *request,
                          const char *id, const char *model)
{
        const char *text = json_string_value(json_object_get(step, "text"));
        size_t chunk = (size_t)step_int(step, "chunk", 4), len, at;
        bool with_usage = json_is_true(
            json_object_get(json_object_get(request, "stream_options"), "include_usage"));
        struct usage u = usage_of(step);
        json_t *call;
        size_t i;

        emit(r, NULL,
             openai_chunk(
                 id, model,
                 json_pack("{s:s, s:s, s:n}", "role", "assistant", "content", "", "refusal"), NULL,
                 with_usage));
        len = text ? strlen(text) : 0;
        for (at = 0; at < len;) {
                size_t to = next_cut(text, len, at, chunk);
                emit(r, NULL,
                     openai_chunk(id, model, json_pack("{s:s%}", "content", text + at, to - at),
                                  NULL, with_usage));
                at = to;
        }
        if (json_is_string(json_object_get(step, "stream_error"))) {
                emit(r, NULL,
                     json_pack("{s:{s:O, s:s, s:n, s:n}}", "error", "message",
                               json_object_get(step, "stream_error"), "type", "server_error",
                               "param", "code"));
                return;
        }
        json_array_foreach (json_object_get(step, "tool_calls"), i, call) {
                const char *args = json_string_value(json_object_get(call, "arguments"));
                emit(r, NULL,
                     openai_chunk(id, model,
                                  json_pack("{s:[{s:i, s:O, s:s, s:{s:O, s:s}}]}", "tool_calls",
                                            "index", (int)i, "id", json_object_get(call, "id"),
                                            "type", "function", "function", "name",
                                            json_object_get(call, "name"), "arguments", ""),
                                  NULL, with_usage));
                len = args ? strlen(args) : 0;
                for (at = 0; at < len;) {
                        size_t to = next_cut(args, len, at, chunk);
                        emit(r, NULL,
                             openai_chunk(id, model,
                                          json_pack("{s:[{s:i, s:{s:s%}}]}", "tool_calls", "index",
                                                    (int)i, "function", "arguments", args + at,
                                                    to - at),
                                          NULL, with_usage));
                        at = to;
                }
        }
        emit(r, NULL, openai_chunk(id, model, json_object(), stop_word(false, step), with_usage));
        if (with_usage)
                emit(r, NULL,
                     json_pack("{s:s, s:s, s:i, s:s, s:[], s:{s:I, s:I, s:I, s:{s:I}}}", "id", id,
                               "object", "chat.completion.chunk", "created", 1764460800, "model",
                               model, "choices", "usage", "prompt_tokens", u.input,
                               "completion_tokens", u.output, "total_tokens", u.input + u.output,
                               "prompt_tokens_details", "cached_tokens", u.cached));
        r->data = realloc(r->data, r->len + sizeof("data: [DONE]\n\n"));
        memcpy(r->data + r->len, "data: [DONE]\n\n", sizeof("data: [DONE]\n\n"));
        r->len += strlen("data: [DONE]\n\n");
        json_array_append_new(r->pieces, json_integer((json_int_t)r->len));
}

static json_t *openai_whole(const json_t *step, const char *id, const char *model)
{
        json_t *text = json_object_get(step, "text"), *calls = json_array(), *call;
        struct usage u = usage_of(step);
        json_t *message = json_pack("{s:s, s:O, s:n}", "role", "assistant", "content",
                                    text ? text : json_null(), "refusal");
        size_t i;

        json_array_foreach (json_object_get(step, "tool_calls"), i, call) {
                json_array_append_new(calls,
                                      json_pack("{s:O, s:s, s:{s:O, s:O}}", "id",
                                                json_object_get(call, "id"), "type", "function",
                                                "function", "name", json_object_get(call, "name"),
                                                "arguments", json_object_get(call, "arguments")));
        }
        if (json_array_size(calls))
                json_object_set_new(message, "tool_calls", calls);
        else
                json_decref(calls);
        return json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:o, s:n, s:s}], s:{s:I, s:I, s:I, "
                         "s:{s:I}}}",
                         "id", id, "object", "chat.completion", "created", 1764460800, "model",
                         model, "choices", "index", 0, "message", message, "logprobs",
                         "finish_reason", stop_word(false, step), "usage", "prompt_tokens", u.input,
                         "completion_tokens", u.output, "total_tokens", u.input + u.output,
                         "prompt_tokens_details", "cached_tokens", u.cached);
}

static json_t *anthropic_usage(const json_t *step, bool start)
{
        struct usage u = usage_of(step);

        return json_pack("{s:I, s:I, s:I, s:I}", "input_tokens", u.input - u.cached,
                         "cache_creation_input_tokens", (json_int_t)0, "cache_read_input_tokens",
                         u.cached, "output_tokens", start ? (json_int_t)1 : u.output);
}

static void anthropic_stream(struct reply *r, const json_t *step, const char *id, const char *model)
{
        const char *text = json_string_value(json_object_get(step, "text"));
        size_t chunk = (size_t)step_int(step, "chunk", 4), len, at;
        int block = 0;
        json_t *call;
        size_t i;

        emit(r, "message_start",
             json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:o}}", "type",
                       "message_start", "message", "id", id, "type", "message", "role", "assistant",
                       "model", model, "content", "stop_reason", "stop_sequence", "usage",
                       anthropic_usage(step, true)));
        len = text ? strlen(text) : 0;
        if (len) {
                emit(r, "content_block_start",
                     json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start", "index",
                               block, "content_block", "type", "text", "text", ""));
                emit(r, "ping", json_pack("{s:s}", "type", "ping"));
                for (at = 0; at < len;) {
                        size_t to = next_cut(text, len, at, chunk);
                        emit(r, "content_block_delta",
                             json_pack("{s:s, s:i, s:{s:s, s:s%}}", "type", "content_block_delta",
                                       "index", block, "delta", "type", "text_delta", "text",
                                       text + at, to - at));
                        at = to;
                }
                emit(r, "content_block_stop",
                     json_pack("{s:s, s:i}", "type", "content_block_stop", "index", block));
                block++;
        }
        if (json_is_string(json_object_get(step, "stream_error"))) {
                emit(r, "error",
                     json_pack("{s:s, s:{s:s, s:O}}", "type", "error", "error", "type",
                               "overloaded_error", "message",
                               json_object_get(step, "stream_error")));
                return;
        }
        json_array_foreach (json_object_get(step, "tool_calls"), i, call) {
                const char *args = json_string_value(json_object_get(call, "arguments"));
                emit(r, "content_block_start",
                     json_pack("{s:s, s:i, s:{s:s, s:O, s:O, s:{}}}", "type", "content_block_start",
                               "index", block, "content_block", "type", "tool_use", "id",
                               json_object_get(call, "id"), "name", json_object_get(call, "name"),
                               "input"));
                emit(r, "content_block_delta",
                     json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index",
                               block, "delta", "type", "input_json_delta", "partial_json", ""));
                len = args ? strlen(args) : 0;
                for (at = 0; at < len;) {
                        size_t to = next_cut(args, len, at, chunk);
                        emit(r, "content_block_delta",
                             json_pack("{s:s, s:i, s:{s:s, s:s%}}", "type", "content_block_delta",
                                       "index", block, "delta", "type", "input_json_delta",
                                       "partial_json", args + at, to - at));
                        at = to;
                }
                emit(r, "content_block_stop",
                     json_pack("{s:s, s:i}", "type", "content_block_stop", "index", block));
                block++;
        }
        emit(r, "message_delta",
             json_pack("{s:s, s:{s:s, s:n}, s:{s:I}}", "type", "message_delta", "delta",
                       "stop_reason", stop_word(true, step), "stop_sequence", "usage",
                       "output_tokens", usage_of(step).output));
        emit(r, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

static json_t *anthropic_whole(const json_t *step, const char *id, const char *model)
{
        const char *text = json_string_value(json_object_get(step, "text"));
        json_t *content = json_array(), *call;
        size_t i;

        if (text && *text)
                json_array_append_new(content,
                                      json_pack("{s:s, s:s}", "type", "text", "text", text));
        json_array_foreach (json_object_get(step, "tool_calls"), i, call) {
                json_t *input =
                    json_loads(json_string_value(json_object_get(call, "arguments")), 0, NULL);
                json_array_append_new(content, json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use",
                                                         "id", json_object_get(call, "id"), "name",
                                                         json_object_get(call, "name"), "input",
                                                         input ? input : json_object()));
        }
        return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:n, s:o}", "id", id, "type", "message",
                         "role", "assistant", "model", model, "content", content, "stop_reason",
                         stop_word(true, step), "stop_sequence", "usage",
                         anthropic_usage(step, false));
}

static json_t *error_body(bool anthropic, int status, const char *message)
{
        if (anthropic)
                return json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                                 status == 429   ? "rate_limit_error"
                                 : status == 529 ? "overloaded_error"
                                                 : "api_error",
                                 "message", message);
        return json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", message, "type",
                         status == 429 ? "rate_limit_exceeded" : "server_error", "param", "code");
}

/* ---- HTTP ------------------------------------------------------------------------- */

static ssize_t write_reply(void *cls, uint64_t pos, char *out, size_t max)
{
        struct reply *r = cls;
        size_t end = r->len, n;

        if (r->sent >= r->len)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (r->cut_after && r->sent >= r->cut_after)
                return MHD_CONTENT_READER_END_WITH_ERROR; /* closes the connection */
        if (r->piece < json_array_size(r->pieces)) {
                end = (size_t)json_integer_value(json_array_get(r->pieces, r->piece));
                if (r->piece > 0 && r->interval_ms > 0)
                        usleep((useconds_t)r->interval_ms * 1000);
                r->piece++;
        }
        if (r->cut_after && end > r->cut_after)
                end = r->cut_after;
        n = end - r->sent < max ? end - r->sent : max;
        memcpy(out, r->data + r->sent, n);
        r->sent += n;
        return (ssize_t)n;
}

static void free_reply(void *cls)
{
        struct reply *r = cls;

        free(r->data);
        json_decref(r->pieces);
        free(r);
}

static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
        char name[128];
        size_t i;

        for (i = 0; key[i] && i + 1 < sizeof(name); i++)
                name[i] = (char)(key[i] >= 'A' && key[i] <= 'Z' ? key[i] + 32 : key[i]);
        name[i] = '\0';
        json_object_set_new(cls, name, json_string(value ? value : ""));
        return MHD_YES;
}

/* Splits r's events into writes of `write` bytes each (when set). */
static void rewrite_pieces(struct reply *r, int write)
{
        if (write <= 0)
                return;
        json_array_clear(r->pieces);
        for (size_t at = (size_t)write; at < r->len + (size_t)write; at += (size_t)write)
                json_array_append_new(r->pieces,
                                      json_integer((json_int_t)(at < r->len ? at : r->len)));
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
        struct llm_server *s = cls;
        struct upload *u = *con_cls;
        json_t *record, *headers, *body, *step = NULL;
        bool anthropic, openai, stream;
        int status = 200, n;
        struct reply *r;
        struct MHD_Response *resp;
        const char *model;
        char id[64];
        enum MHD_Result ret;

        if (!u) {
                *con_cls = u = calloc(1, sizeof(*u));
                return u ? MHD_YES : MHD_NO;
        }
        if (*upload_size) {
                if (u->len + *upload_size <= MAX_BODY) {
                        u->data = realloc(u->data, u->len + *upload_size + 1);
                        memcpy(u->data + u->len, upload_data, *upload_size);
                        u->len += *upload_size;
                        u->data[u->len] = '\0';
                }
                *upload_size = 0;
                return MHD_YES;
        }
        headers = json_object();
        MHD_get_connection_values(c, MHD_HEADER_KIND, add_header, headers);
        body = u->data ? json_loadb(u->data, u->len, 0, NULL) : NULL;
        if (!body)
                body = json_stringn(u->data ? u->data : "", u->len);
        record = json_pack("{s:s, s:s, s:o, s:o}", "method", method, "path", url, "headers",
                           headers, "body", body);
        openai = strlen(url) >= 17 && strcmp(url + strlen(url) - 17, "/chat/completions") == 0;
        anthropic = strlen(url) >= 9 && strcmp(url + strlen(url) - 9, "/messages") == 0;
        stream = json_is_true(json_object_get(body, "stream"));
        model = json_string_value(json_object_get(body, "model"));

        pthread_mutex_lock(&s->lock);
        if ((openai || anthropic) && strcmp(method, "POST") == 0 && json_array_size(s->steps)) {
                /* the first step whose "match" (if any) is in the request's last message */
                json_t *msgs = json_object_get(body, "messages");
                char *last = json_dumps(json_array_get(msgs, json_array_size(msgs) - 1),
                                        JSON_COMPACT | JSON_ENCODE_ANY);
                for (size_t i = 0; i < json_array_size(s->steps); i++) {
                        const char *m = json_string_value(
                            json_object_get(json_array_get(s->steps, i), "match"));
                        if (m && !(last && strstr(last, m)))
                                continue;
                        step = json_incref(json_array_get(s->steps, i));
                        json_array_remove(s->steps, i);
                        break;
                }
                free(last);
        }
        n = ++s->responses;
        json_array_append_new(s->requests, record);
        pthread_mutex_unlock(&s->lock);

        r = calloc(1, sizeof(*r));
        assert_non_null(r);
        r->pieces = json_array();
        if (json_object_get(step, "model"))
                model = json_string_value(json_object_get(step, "model"));
        if (!model)
                model = "unknown";
        snprintf(id, sizeof(id), anthropic ? "msg_test%04d" : "chatcmpl-test%04d", n);
        if (!openai && !anthropic) {
                status = 404;
                r->data = strdup("{\"error\":{\"message\":\"no such endpoint\"}}");
        } else if (!step) {
                status = 500;
                json_t *e = error_body(anthropic, 500, "no scripted response left");
                r->data = json_dumps(e, JSON_COMPACT);
                json_decref(e);
        } else if (json_object_get(step, "status")) {
                status = step_int(step, "status", 500);
                json_t *e = error_body(anthropic, status,
                                       json_string_value(json_object_get(step, "error"))
                                           ? json_string_value(json_object_get(step, "error"))
                                           : "scripted failure");
                r->data = json_dumps(e, JSON_COMPACT);
                json_decref(e);
        } else if (stream) {
                if (anthropic)
                        anthropic_stream(r, step, id, model);
                else
                        openai_stream(r, step, body, id, model);
                rewrite_pieces(r, step_int(step, "write", 0));
                r->interval_ms = step_int(step, "interval_ms", 0);
        } else {
                json_t *whole =
                    anthropic ? anthropic_whole(step, id, model) : openai_whole(step, id, model);
                r->data = json_dumps(whole, JSON_COMPACT);
                json_decref(whole);
        }
        if (!r->len)
                r->len = strlen(r->data);
        r->cut_after = (size_t)step_int(step, "cut_after", 0);
        pthread_mutex_lock(&s->lock);
        json_object_set_new(record, "status", json_integer(status));
        pthread_mutex_unlock(&s->lock);
        if (step_int(step, "delay_ms", 0) > 0)
                usleep((useconds_t)step_int(step, "delay_ms", 0) * 1000);

        resp = MHD_create_response_from_callback(stream && status == 200 ? MHD_SIZE_UNKNOWN
                                                                         : (uint64_t)r->len,
                                                 64 * 1024, write_reply, r, free_reply);
        MHD_add_response_header(resp, "Content-Type",
                                stream && status == 200 ? "text/event-stream" : "application/json");
        if (json_is_string(json_object_get(step, "retry_after")))
                MHD_add_response_header(resp, "Retry-After",
                                        json_string_value(json_object_get(step, "retry_after")));
        ret = MHD_queue_response(c, (unsigned)status, resp);
        MHD_destroy_response(resp);
        json_decref(step);
        return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        struct upload *u = *con_cls;

        if (u)
                free(u->data);
        free(u);
        *con_cls = NULL;
}

struct llm_server *llm_server_start(void)
{
        struct llm_server *s = calloc(1, sizeof(*s));
        int port = test_free_port();

        assert_non_null(s);
        pthread_mutex_init(&s->lock, NULL);
        s->steps = json_array();
        s->requests = json_array();
        s->daemon =
            MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                             (uint16_t)port, NULL, NULL, handle, s, MHD_OPTION_NOTIFY_COMPLETED,
                             completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
        assert_non_null(s->daemon);
        snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d/v1", port);
        return s;
}

void llm_server_stop(struct llm_server *s)
{
        if (!s)
                return;
        MHD_stop_daemon(s->daemon);
        json_decref(s->steps);
        json_decref(s->requests);
        pthread_mutex_destroy(&s->lock);
        free(s);
}

const char *llm_server_url(const struct llm_server *s)
{
        return s->url;
}

void llm_server_script(struct llm_server *s, const char *script)
{
        json_error_t jerr;
        json_t *steps = json_loads(script, 0, &jerr), *step;
        size_t i;

        if (!json_is_array(steps))
                fail_msg("llm_server_script: not a JSON array: %s", jerr.text);
        json_array_foreach (steps, i, step) {
                if (!json_is_object(step))
                        fail_msg("llm_server_script: step %zu is not an object", i);
        }
        pthread_mutex_lock(&s->lock);
        json_array_extend(s->steps, steps);
        pthread_mutex_unlock(&s->lock);
        json_decref(steps);
}

int llm_server_steps_left(struct llm_server *s)
{
        int n;

        pthread_mutex_lock(&s->lock);
        n = (int)json_array_size(s->steps);
        pthread_mutex_unlock(&s->lock);
        return n;
}

int llm_server_request_count(struct llm_server *s)
{
        int n;

        pthread_mutex_lock(&s->lock);
        n = (int)json_array_size(s->requests);
        pthread_mutex_unlock(&s->lock);
        return n;
}

json_t *llm_server_request(struct llm_server *s, int i)
{
        json_t *copy;

        pthread_mutex_lock(&s->lock);
        copy = i >= 0 ? json_deep_copy(json_array_get(s->requests, (size_t)i)) : NULL;
        pthread_mutex_unlock(&s->lock);
        return copy;
}
