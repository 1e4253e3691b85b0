/*
 * Streamed responses: a server-sent-events reader (the WHATWG event-stream grammar: lines
 * ending in CRLF, LF or CR, "field: value", blank line dispatches, ':' comments, a leading
 * BOM) that accepts its input split anywhere, and the two providers' event handlers on top
 * of it, accumulating text, tool calls (by index, arguments split across events), the stop
 * reason and usage. Every buffer is capped (llm.h); malformed input fails the stream with a
 * message naming the event and what was wrong. No Debian package offers an SSE parser for
 * C, and the grammar is small, so it is here.
 */
#include "llm.h"
#include "llm_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"

#define SSE_MAX_EVENT_NAME 64
#define MAX_SLOTS          LLM_MAX_CONTENT_BLOCKS

enum slot_kind { SLOT_OTHER, SLOT_TEXT, SLOT_TOOL };

/* An OpenAI tool call (by its index) or an Anthropic content block (by its index). */
struct slot {
        enum slot_kind kind;
        bool stopped;
        char id[LLM_MAX_ID + 1];
        char name[LLM_MAX_NAME + 1];
        struct buf arguments;
        char *initial_input; /* anthropic: the tool_use block's start input, when not {} */
};

struct llm_stream {
        enum llm_provider provider;
        /* the event-stream reader */
        struct buf line;
        struct buf data;
        char event[SSE_MAX_EVENT_NAME + 1];
        bool has_data;
        bool last_cr;
        bool first_line;
        size_t events; /* dispatched so far, for messages */
        /* the response */
        bool done;
        bool finished;
        int failed;
        char *failure;
        bool server_error; /* the failure is an error event the server sent */
        struct buf text;
        size_t text_taken;
        size_t result_bytes; /* text and arguments together, for LLM_MAX_RESULT_BYTES */
        struct llm_result result;
        struct slot *slots[MAX_SLOTS];
};

int llm_stream_new(enum llm_provider p, struct llm_stream **out)
{
        struct llm_stream *s = calloc(1, sizeof(*s));

        *out = NULL;
        if (!s)
                return -ENOMEM;
        s->provider = p;
        buf_init(&s->line, LLM_MAX_SSE_LINE);
        buf_init(&s->data, LLM_MAX_SSE_EVENT);
        buf_init(&s->text, LLM_MAX_TEXT_BYTES);
        s->first_line = true;
        *out = s;
        return 0;
}

void llm_stream_free(struct llm_stream *s)
{
        if (!s)
                return;
        buf_free(&s->line);
        buf_free(&s->data);
        buf_free(&s->text);
        free(s->failure);
        llm_result_free(&s->result);
        for (size_t i = 0; i < MAX_SLOTS; i++) {
                if (!s->slots[i])
                        continue;
                buf_free(&s->slots[i]->arguments);
                free(s->slots[i]->initial_input);
                free(s->slots[i]);
        }
        free(s);
}

bool llm_stream_server_failed(const struct llm_stream *s)
{
        return s->failed && s->server_error;
}

bool llm_stream_done(const struct llm_stream *s)
{
        return s->done;
}

bool llm_stream_take_text(struct llm_stream *s, const char **text, size_t *len)
{
        *text = s->text.data ? s->text.data + s->text_taken : "";
        *len = s->text.len - s->text_taken;
        s->text_taken = s->text.len;
        return *len > 0;
}

/* Records the stream's first failure (later ones only repeat it) and returns its code. */
static int stream_fail(struct llm_stream *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int stream_fail(struct llm_stream *s, int code, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        if (s->failed)
                return s->failed;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        s->failed = code;
        s->failure = m;
        return code;
}

/* Hands the recorded failure to the caller. */
static int report(struct llm_stream *s, char **error)
{
        if (error && !*error)
                *error = s->failure ? strdup(s->failure) : NULL;
        return s->failed;
}

static int append_text(struct llm_stream *s, const char *t, size_t n)
{
        if (s->result_bytes + n > LLM_MAX_RESULT_BYTES || buf_append(&s->text, t, n) < 0)
                return stream_fail(s, -ENOBUFS, "%s stream: text over %d bytes",
                                   llm_provider_name(s->provider), LLM_MAX_TEXT_BYTES);
        s->result_bytes += n;
        return 0;
}

static int append_arguments(struct llm_stream *s, struct slot *slot, size_t index, const char *t,
                            size_t n)
{
        if (s->result_bytes + n > LLM_MAX_RESULT_BYTES || buf_append(&slot->arguments, t, n) < 0)
                return stream_fail(s, -ENOBUFS,
                                   "%s stream: tool call %zu: arguments over %d bytes (or the "
                                   "response over %d)",
                                   llm_provider_name(s->provider), index, LLM_MAX_ARGUMENTS_BYTES,
                                   LLM_MAX_RESULT_BYTES);
        s->result_bytes += n;
        return 0;
}

static struct slot *slot_get(struct llm_stream *s, size_t index, bool create)
{
        if (index >= MAX_SLOTS)
                return NULL;
        if (!s->slots[index] && create) {
                s->slots[index] = calloc(1, sizeof(struct slot));
                if (s->slots[index])
                        buf_init(&s->slots[index]->arguments, LLM_MAX_ARGUMENTS_BYTES);
        }
        return s->slots[index];
}

/* Copies a provider's string into a fixed field of a slot; false when it is too long. */
static bool set_field(char *field, size_t size, const char *value)
{
        if (!value)
                return true;
        if (strlen(value) >= size)
                return false;
        memcpy(field, value, strlen(value) + 1);
        return true;
}

static void keep_string(char **field, const json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        if (!*field && json_is_string(v))
                *field = llm_strndup(json_string_value(v), json_string_length(v));
}

/* ---- OpenAI chat completion chunks ------------------------------------------------- */

static int openai_tool_delta(struct llm_stream *s, const json_t *d, size_t i)
{
        json_t *index = json_object_get(d, "index"), *fn = json_object_get(d, "function");
        json_t *args = json_object_get(fn, "arguments");
        const char *id = json_string_value(json_object_get(d, "id"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        struct slot *slot;
        size_t n;

        if (!json_is_integer(index) || json_integer_value(index) < 0)
                return stream_fail(s, -EBADMSG,
                                   "openai stream: event %zu: tool_calls[%zu] has no index",
                                   s->events, i);
        if (json_integer_value(index) >= LLM_MAX_TOOL_CALLS)
                return stream_fail(s, -ENOBUFS,
                                   "openai stream: event %zu: tool call index %lld (at most %d "
                                   "tool calls)",
                                   s->events, (long long)json_integer_value(index),
                                   LLM_MAX_TOOL_CALLS);
        n = (size_t)json_integer_value(index);
        if (!(slot = slot_get(s, n, true)))
                return stream_fail(s, -ENOMEM, "out of memory");
        slot->kind = SLOT_TOOL;
        /* the id and the name come whole in the call's first delta; later ones repeat or
         * omit them */
        if (id && *id && !slot->id[0] && !set_field(slot->id, sizeof(slot->id), id))
                return stream_fail(s, -EBADMSG, "openai stream: tool call %zu: id over %d bytes", n,
                                   LLM_MAX_ID);
        if (name && *name && !slot->name[0] && !set_field(slot->name, sizeof(slot->name), name))
                return stream_fail(s, -EBADMSG, "openai stream: tool call %zu: name over %d bytes",
                                   n, LLM_MAX_NAME);
        if (args && !json_is_string(args) && !json_is_null(args))
                return stream_fail(s, -EBADMSG,
                                   "openai stream: event %zu: tool call %zu: arguments is not a "
                                   "string",
                                   s->events, n);
        return json_is_string(args)
                   ? append_arguments(s, slot, n, json_string_value(args), json_string_length(args))
                   : 0;
}

static int openai_chunk(struct llm_stream *s, const json_t *chunk)
{
        json_t *choices = json_object_get(chunk, "choices"), *choice, *delta, *v, *usage;
        size_t i;
        int r;

        if (json_object_get(chunk, "error") && !json_is_null(json_object_get(chunk, "error"))) {
                _cleanup_free_ char *m = NULL;
                llm_server_error(s->provider, json_object_get(chunk, "error"), &m);
                s->server_error = !s->failed;
                return stream_fail(s, -EBADMSG, "%s", m ? m : "openai stream: server error");
        }
        keep_string(&s->result.id, chunk, "id");
        keep_string(&s->result.model, chunk, "model");
        if (choices && !json_is_array(choices) && !json_is_null(choices))
                return stream_fail(s, -EBADMSG, "openai stream: event %zu: choices is not an array",
                                   s->events);
        json_array_foreach (choices, i, choice) {
                /* one completion per request (n = 1): choice 0 */
                if (json_integer_value(json_object_get(choice, "index")) != 0)
                        continue;
                delta = json_object_get(choice, "delta");
                v = json_object_get(delta, "content");
                if (json_is_string(v) &&
                    (r = append_text(s, json_string_value(v), json_string_length(v))) < 0)
                        return r;
                v = json_object_get(delta, "tool_calls");
                if (v && !json_is_array(v) && !json_is_null(v))
                        return stream_fail(s, -EBADMSG,
                                           "openai stream: event %zu: delta.tool_calls is not an "
                                           "array",
                                           s->events);
                for (size_t j = 0; j < json_array_size(v); j++)
                        if ((r = openai_tool_delta(s, json_array_get(v, j), j)) < 0)
                                return r;
                v = json_object_get(choice, "finish_reason");
                if (json_is_string(v)) {
                        free(s->result.stop_detail);
                        s->result.stop_detail =
                            llm_strndup(json_string_value(v), json_string_length(v));
                }
        }
        usage = json_object_get(chunk, "usage");
        if (json_is_object(usage)) {
                s->result.has_usage = true;
                s->result.usage.input_tokens = llm_json_count(usage, "prompt_tokens");
                s->result.usage.output_tokens = llm_json_count(usage, "completion_tokens");
                s->result.usage.cached_input_tokens = llm_json_count(
                    json_object_get(usage, "prompt_tokens_details"), "cached_tokens");
        }
        return 0;
}

/* ---- Anthropic message events ------------------------------------------------------- */

/* The started block an event names by its "index"; NULL after failing the stream. */
static struct slot *anthropic_block(struct llm_stream *s, const json_t *ev, const char *type)
{
        json_t *index = json_object_get(ev, "index");
        struct slot *slot;

        if (!json_is_integer(index) || json_integer_value(index) < 0 ||
            json_integer_value(index) >= MAX_SLOTS) {
                stream_fail(s, -EBADMSG,
                            "anthropic stream: event %zu: %s without a valid index (0 to %d)",
                            s->events, type, MAX_SLOTS - 1);
                return NULL;
        }
        slot = slot_get(s, (size_t)json_integer_value(index), false);
        if (!slot || slot->stopped) {
                stream_fail(s, -EBADMSG, "anthropic stream: event %zu: %s for block %lld, which %s",
                            s->events, type, (long long)json_integer_value(index),
                            slot ? "was stopped" : "was not started");
                return NULL;
        }
        return slot;
}

static int anthropic_message_start(struct llm_stream *s, const json_t *ev)
{
        json_t *message = json_object_get(ev, "message");

        if (!json_is_object(message))
                return stream_fail(s, -EBADMSG,
                                   "anthropic stream: message_start without a message");
        keep_string(&s->result.id, message, "id");
        keep_string(&s->result.model, message, "model");
        llm_anthropic_usage(json_object_get(message, "usage"), &s->result);
        return 0;
}

static int anthropic_block_start(struct llm_stream *s, const json_t *ev)
{
        json_t *index = json_object_get(ev, "index"), *block = json_object_get(ev, "content_block");
        const char *type = json_string_value(json_object_get(block, "type"));
        struct slot *slot;
        size_t n;

        if (!json_is_integer(index) || json_integer_value(index) < 0)
                return stream_fail(s, -EBADMSG,
                                   "anthropic stream: event %zu: content_block_start without an "
                                   "index",
                                   s->events);
        if (json_integer_value(index) >= MAX_SLOTS)
                return stream_fail(s, -ENOBUFS,
                                   "anthropic stream: event %zu: block index %lld (at most %d "
                                   "blocks)",
                                   s->events, (long long)json_integer_value(index), MAX_SLOTS);
        n = (size_t)json_integer_value(index);
        if (!type)
                return stream_fail(s, -EBADMSG,
                                   "anthropic stream: event %zu: content_block_start without a "
                                   "content_block type",
                                   s->events);
        if (slot_get(s, n, false))
                return stream_fail(s, -EBADMSG,
                                   "anthropic stream: event %zu: block %zu started twice",
                                   s->events, n);
        if (!(slot = slot_get(s, n, true)))
                return stream_fail(s, -ENOMEM, "out of memory");
        if (strcmp(type, "text") == 0) {
                json_t *t = json_object_get(block, "text");
                slot->kind = SLOT_TEXT;
                return json_is_string(t)
                           ? append_text(s, json_string_value(t), json_string_length(t))
                           : 0;
        }
        if (strcmp(type, "tool_use") == 0) {
                json_t *input = json_object_get(block, "input");
                slot->kind = SLOT_TOOL;
                if (!set_field(slot->id, sizeof(slot->id),
                               json_string_value(json_object_get(block, "id"))) ||
                    !set_field(slot->name, sizeof(slot->name),
                               json_string_value(json_object_get(block, "name"))))
                        return stream_fail(s, -EBADMSG,
                                           "anthropic stream: block %zu: tool_use id over %d or "
                                           "name over %d bytes",
                                           n, LLM_MAX_ID, LLM_MAX_NAME);
                if (json_object_size(input) > 0 &&
                    !(slot->initial_input = json_dumps(input, JSON_COMPACT)))
                        return stream_fail(s, -ENOMEM, "out of memory");
        }
        return 0; /* thinking and other blocks carry nothing the result keeps */
}

static int anthropic_block_delta(struct llm_stream *s, const json_t *ev)
{
        struct slot *slot = anthropic_block(s, ev, "content_block_delta");
        json_t *delta = json_object_get(ev, "delta"), *v;
        const char *type = json_string_value(json_object_get(delta, "type"));

        if (!slot)
                return s->failed;
        if (!type)
                return stream_fail(s, -EBADMSG,
                                   "anthropic stream: event %zu: content_block_delta without a "
                                   "delta type",
                                   s->events);
        if (strcmp(type, "text_delta") == 0) {
                v = json_object_get(delta, "text");
                if (slot->kind != SLOT_TEXT || !json_is_string(v))
                        return stream_fail(s, -EBADMSG,
                                           "anthropic stream: event %zu: text_delta %s", s->events,
                                           slot->kind != SLOT_TEXT ? "for a block that is not text"
                                                                   : "without text");
                return append_text(s, json_string_value(v), json_string_length(v));
        }
        if (strcmp(type, "input_json_delta") == 0) {
                v = json_object_get(delta, "partial_json");
                if (slot->kind != SLOT_TOOL || !json_is_string(v))
                        return stream_fail(
                            s, -EBADMSG, "anthropic stream: event %zu: input_json_delta %s",
                            s->events,
                            slot->kind != SLOT_TOOL ? "for a block that is not tool_use"
                                                    : "without partial_json");
                return append_arguments(s, slot,
                                        (size_t)json_integer_value(json_object_get(ev, "index")),
                                        json_string_value(v), json_string_length(v));
        }
        return 0; /* thinking_delta, signature_delta, citations_delta: not kept */
}

static int anthropic_block_stop(struct llm_stream *s, const json_t *ev)
{
        struct slot *slot = anthropic_block(s, ev, "content_block_stop");

        if (!slot)
                return s->failed;
        slot->stopped = true;
        return 0;
}

static int anthropic_message_delta(struct llm_stream *s, const json_t *ev)
{
        json_t *v = json_object_get(json_object_get(ev, "delta"), "stop_reason");

        if (json_is_string(v)) {
                free(s->result.stop_detail);
                s->result.stop_detail = llm_strndup(json_string_value(v), json_string_length(v));
        }
        llm_anthropic_usage(json_object_get(ev, "usage"), &s->result);
        return 0;
}

static int anthropic_message_stop(struct llm_stream *s, const json_t *ev)
{
        s->done = true;
        return 0;
}

static int anthropic_error(struct llm_stream *s, const json_t *ev)
{
        _cleanup_free_ char *m = NULL;

        llm_server_error(s->provider, json_object_get(ev, "error"), &m);
        s->server_error = !s->failed;
        return stream_fail(s, -EBADMSG, "%s", m ? m : "anthropic stream: server error");
}

static int anthropic_event(struct llm_stream *s, const json_t *ev)
{
        static const struct {
                const char *type;
                int (*handle)(struct llm_stream *s, const json_t *ev);
        } handlers[] = {
            {"message_start", anthropic_message_start},
            {"content_block_start", anthropic_block_start},
            {"content_block_delta", anthropic_block_delta},
            {"content_block_stop", anthropic_block_stop},
            {"message_delta", anthropic_message_delta},
            {"message_stop", anthropic_message_stop},
            {"error", anthropic_error},
        };
        const char *type = json_string_value(json_object_get(ev, "type"));

        if (!type)
                return stream_fail(s, -EBADMSG, "anthropic stream: event %zu has no type",
                                   s->events);
        for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++)
                if (strcmp(handlers[i].type, type) == 0)
                        return handlers[i].handle(s, ev);
        return 0; /* ping, and event types added later: ignored, as the API asks */
}

/* ---- the event stream --------------------------------------------------------------- */

static int dispatch(struct llm_stream *s)
{
        _cleanup_json_ json_t *ev = NULL;
        const char *data = s->data.data ? s->data.data : "";
        json_error_t jerr;

        s->events++;
        if (s->done) /* nothing counts after the last event */
                return 0;
        if (s->provider == LLM_PROVIDER_OPENAI && strcmp(data, "[DONE]") == 0) {
                s->done = true;
                return 0;
        }
        ev = json_loadb(data, s->data.len, 0, &jerr);
        if (!ev)
                return stream_fail(s, -EBADMSG, "%s stream: event %zu is not JSON: %s (column %d)",
                                   llm_provider_name(s->provider), s->events, jerr.text,
                                   jerr.column);
        if (!json_is_object(ev))
                return stream_fail(s, -EBADMSG, "%s stream: event %zu is not a JSON object",
                                   llm_provider_name(s->provider), s->events);
        return s->provider == LLM_PROVIDER_ANTHROPIC ? anthropic_event(s, ev) : openai_chunk(s, ev);
}

/* One complete line (without its end). */
static int process_line(struct llm_stream *s, const char *line, size_t n)
{
        const char *colon, *value;
        size_t name_len, value_len;
        int r;

        if (s->first_line && n >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
                line += 3;
                n -= 3;
        }
        s->first_line = false;
        if (n == 0) { /* a blank line ends the event */
                r = s->has_data ? dispatch(s) : 0;
                buf_reset(&s->data);
                s->has_data = false;
                s->event[0] = '\0';
                return r;
        }
        if (line[0] == ':') /* a comment (keep-alive) */
                return 0;
        colon = memchr(line, ':', n);
        name_len = colon ? (size_t)(colon - line) : n;
        value = colon ? colon + 1 : line + n;
        value_len = n - (size_t)(value - line);
        if (value_len && value[0] == ' ') {
                value++;
                value_len--;
        }
        if (name_len == 4 && memcmp(line, "data", 4) == 0) {
                if ((s->has_data && buf_append(&s->data, "\n", 1) < 0) ||
                    buf_append(&s->data, value, value_len) < 0)
                        return stream_fail(s, -ENOBUFS, "%s stream: event %zu over %d bytes",
                                           llm_provider_name(s->provider), s->events + 1,
                                           LLM_MAX_SSE_EVENT);
                s->has_data = true;
        } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
                if (value_len > SSE_MAX_EVENT_NAME)
                        return stream_fail(
                            s, -EBADMSG, "%s stream: event %zu: event name over %d bytes",
                            llm_provider_name(s->provider), s->events + 1, SSE_MAX_EVENT_NAME);
                memcpy(s->event, value, value_len);
                s->event[value_len] = '\0';
        } /* id, retry and unknown fields: nothing a response needs */
        return 0;
}

int llm_stream_feed(struct llm_stream *s, const void *data, size_t len, char **error)
{
        const char *p = data, *end = p + len;
        int r;

        if (s->failed)
                return report(s, error);
        if (s->finished)
                return llm_fail(error, -EINVAL, "stream already finished");
        while (p < end) {
                const char *eol = p;
                if (s->last_cr && *p == '\n') { /* the LF of a CRLF split across chunks */
                        s->last_cr = false;
                        p++;
                        continue;
                }
                s->last_cr = false;
                while (eol < end && *eol != '\n' && *eol != '\r')
                        eol++;
                if (buf_append(&s->line, p, (size_t)(eol - p)) < 0) {
                        stream_fail(s, -ENOBUFS, "%s stream: a line over %d bytes",
                                    llm_provider_name(s->provider), LLM_MAX_SSE_LINE);
                        return report(s, error);
                }
                if (eol == end)
                        break;
                s->last_cr = *eol == '\r';
                r = process_line(s, s->line.data ? s->line.data : "", s->line.len);
                buf_reset(&s->line);
                if (r < 0)
                        return report(s, error);
                p = eol + 1;
        }
        return 0;
}

int llm_stream_finish(struct llm_stream *s, struct llm_result *out, char **error)
{
        const char *name = llm_provider_name(s->provider);
        int r;

        memset(out, 0, sizeof(*out));
        if (s->finished)
                return llm_fail(error, -EINVAL, "stream already finished");
        s->finished = true;
        /* an event the body ended before its blank line is discarded, as the event-stream
         * grammar says: a cut connection, reported below when the last event is missing */
        if (s->failed)
                return report(s, error);
        if (!s->done)
                return llm_fail(
                    error, -EBADMSG,
                    "%s stream: ended before its last event (%s) after %zu events: "
                    "the connection was cut",
                    name, s->provider == LLM_PROVIDER_OPENAI ? "data: [DONE]" : "message_stop",
                    s->events);
        for (size_t i = 0; i < MAX_SLOTS; i++) {
                struct slot *slot = s->slots[i];
                char where[48];
                const char *args;
                size_t args_len;
                if (!slot || slot->kind != SLOT_TOOL)
                        continue;
                snprintf(where, sizeof(where), "%s stream: tool call %zu", name, i);
                args = slot->arguments.data;
                args_len = slot->arguments.len;
                if (!args_len && slot->initial_input) {
                        args = slot->initial_input;
                        args_len = strlen(args);
                }
                if ((r = llm_result_add_tool_call(&s->result, where, slot->id, slot->name, args,
                                                  args_len, error)) < 0)
                        return r;
        }
        if (llm_result_set_text(&s->result, &s->text) < 0)
                return llm_fail(error, -ENOMEM, "out of memory");
        s->text_taken = 0;
        s->result.stop_reason = llm_stop_reason_of(s->provider, s->result.stop_detail);
        *out = s->result;
        memset(&s->result, 0, sizeof(s->result));
        return 0;
}
