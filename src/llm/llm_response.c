/*
 * Responses: a provider's non-streaming body parsed into the neutral struct llm_result,
 * the stop-reason vocabulary, and the result's JSON form. Pure.
 */
#include "llm.h"
#include "llm_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "strutil.h"

void llm_result_free(struct llm_result *r)
{
        if (!r)
                return;
        free(r->id);
        free(r->model);
        free(r->text);
        free(r->stop_detail);
        for (size_t i = 0; i < r->tool_call_count; i++) {
                free(r->tool_calls[i].id);
                free(r->tool_calls[i].name);
                free(r->tool_calls[i].arguments);
        }
        free(r->tool_calls);
        memset(r, 0, sizeof(*r));
}

const char *llm_stop_reason_name(enum llm_stop_reason r)
{
        switch (r) {
        case LLM_STOP_END:
                return "end";
        case LLM_STOP_TOOL_CALLS:
                return "tool_calls";
        case LLM_STOP_MAX_TOKENS:
                return "max_tokens";
        case LLM_STOP_REFUSAL:
                return "refusal";
        case LLM_STOP_OTHER:
                return "other";
        case LLM_STOP_UNKNOWN:
                break;
        }
        return "unknown";
}

enum llm_stop_reason llm_stop_reason_of(enum llm_provider p, const char *word)
{
        static const struct {
                enum llm_provider provider;
                const char *word;
                enum llm_stop_reason reason;
        } words[] = {
            {LLM_PROVIDER_OPENAI, "stop", LLM_STOP_END},
            {LLM_PROVIDER_OPENAI, "tool_calls", LLM_STOP_TOOL_CALLS},
            {LLM_PROVIDER_OPENAI, "function_call", LLM_STOP_TOOL_CALLS},
            {LLM_PROVIDER_OPENAI, "length", LLM_STOP_MAX_TOKENS},
            {LLM_PROVIDER_OPENAI, "content_filter", LLM_STOP_REFUSAL},
            {LLM_PROVIDER_ANTHROPIC, "end_turn", LLM_STOP_END},
            {LLM_PROVIDER_ANTHROPIC, "stop_sequence", LLM_STOP_END},
            {LLM_PROVIDER_ANTHROPIC, "tool_use", LLM_STOP_TOOL_CALLS},
            {LLM_PROVIDER_ANTHROPIC, "max_tokens", LLM_STOP_MAX_TOKENS},
            {LLM_PROVIDER_ANTHROPIC, "refusal", LLM_STOP_REFUSAL},
        };

        if (!word)
                return LLM_STOP_UNKNOWN;
        for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
                if (words[i].provider == p && strcmp(words[i].word, word) == 0)
                        return words[i].reason;
        return LLM_STOP_OTHER;
}

json_t *llm_result_to_json(const struct llm_result *r)
{
        _cleanup_json_ json_t *o = NULL;
        json_t *calls = json_array();

        o = json_pack("{s:s?, s:s?, s:s%, s:o, s:s, s:s?}", "id", r->id, "model", r->model, "text",
                      r->text ? r->text : "", r->text ? r->text_len : 0, "tool_calls", calls,
                      "stop_reason", llm_stop_reason_name(r->stop_reason), "stop_detail",
                      r->stop_detail);
        if (!o)
                return NULL;
        for (size_t i = 0; i < r->tool_call_count; i++)
                if (json_array_append_new(calls,
                                          json_pack("{s:s, s:s, s:s}", "id", r->tool_calls[i].id,
                                                    "name", r->tool_calls[i].name, "arguments",
                                                    r->tool_calls[i].arguments)) < 0)
                        return NULL;
        if (json_object_set_new(
                o, "usage",
                r->has_usage ? json_pack("{s:I, s:I, s:I}", "input_tokens",
                                         (json_int_t)r->usage.input_tokens, "output_tokens",
                                         (json_int_t)r->usage.output_tokens, "cached_input_tokens",
                                         (json_int_t)r->usage.cached_input_tokens)
                             : json_null()) < 0)
                return NULL;
        return TAKE_PTR(o);
}

json_t *llm_result_message(const struct llm_result *r)
{
        _cleanup_json_ json_t *m =
            json_pack("{s:s, s:o}", "role", "assistant", "content",
                      r->text_len ? json_stringn(r->text, r->text_len) : json_null());
        json_t *calls;

        if (!m || r->tool_call_count == 0)
                return TAKE_PTR(m);
        calls = json_array();
        if (json_object_set_new(m, "tool_calls", calls) < 0)
                return NULL;
        for (size_t i = 0; i < r->tool_call_count; i++)
                if (json_array_append_new(calls,
                                          json_pack("{s:s, s:s, s:s}", "id", r->tool_calls[i].id,
                                                    "name", r->tool_calls[i].name, "arguments",
                                                    r->tool_calls[i].arguments)) < 0)
                        return NULL;
        return TAKE_PTR(m);
}

/* A copy of the string member key of o, or NULL (also when absent). */
static char *dup_member(const json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        return json_is_string(v) ? llm_strndup(json_string_value(v), json_string_length(v)) : NULL;
}

/* The provider's error object as one message: "rate_limit_error: Number of requests ...". */
static int server_error(enum llm_provider p, const json_t *err, char **error)
{
        const char *type = json_string_value(json_object_get(err, "type"));
        const char *message = json_string_value(json_object_get(err, "message"));

        if (json_is_string(err))
                message = json_string_value(err);
        return llm_fail(error, -EBADMSG, "%s: the server answered an error: %s%s%.500s",
                        llm_provider_name(p), type ? type : "", type ? ": " : "",
                        message ? message : "(no message)");
}

int llm_result_add_tool_call(struct llm_result *r, const char *where, const char *id,
                             const char *name, const char *arguments, size_t arguments_len,
                             char **error)
{
        struct llm_tool_call *c;

        if (!name || !*name)
                return llm_fail(error, -EBADMSG, "%s: tool call without a name", where);
        if (strlen(name) > LLM_MAX_NAME)
                return llm_fail(error, -EBADMSG, "%s: tool name longer than %d bytes", where,
                                LLM_MAX_NAME);
        if (id && strlen(id) > LLM_MAX_ID)
                return llm_fail(error, -EBADMSG, "%s: tool call id longer than %d bytes", where,
                                LLM_MAX_ID);
        if (arguments_len > LLM_MAX_ARGUMENTS_BYTES)
                return llm_fail(error, -ENOBUFS, "%s: tool call arguments over %d bytes", where,
                                LLM_MAX_ARGUMENTS_BYTES);
        if (r->tool_call_count >= LLM_MAX_TOOL_CALLS)
                return llm_fail(error, -ENOBUFS, "%s: more than %d tool calls", where,
                                LLM_MAX_TOOL_CALLS);
        c = realloc(r->tool_calls, (r->tool_call_count + 1) * sizeof(*c));
        if (!c)
                return llm_fail(error, -ENOMEM, "out of memory");
        r->tool_calls = c;
        c += r->tool_call_count;
        c->id =
            id && *id ? llm_strndup(id, strlen(id)) : str_printf("call_%zu", r->tool_call_count);
        c->name = llm_strndup(name, strlen(name));
        c->arguments = arguments_len ? llm_strndup(arguments, arguments_len) : llm_strndup("{}", 2);
        r->tool_call_count++;
        if (!c->id || !c->name || !c->arguments)
                return llm_fail(error, -ENOMEM, "out of memory");
        return 0;
}

int llm_result_set_text(struct llm_result *r, struct buf *text)
{
        if (!text->data && buf_append(text, "", 0) < 0)
                return -ENOMEM;
        r->text_len = text->len;
        r->text = buf_steal(text);
        return r->text ? 0 : -ENOMEM;
}

static int openai_response(const json_t *root, struct llm_result *r, char **error)
{
        json_t *choices = json_object_get(root, "choices"), *message, *calls, *c, *usage;
        _cleanup_buf_ struct buf text;
        size_t i;
        int rc;

        buf_init(&text, LLM_MAX_TEXT_BYTES);
        if (!json_is_array(choices) || json_array_size(choices) == 0)
                return llm_fail(error, -EBADMSG, "openai: response has no choices");
        message = json_object_get(json_array_get(choices, 0), "message");
        if (!json_is_object(message))
                return llm_fail(error, -EBADMSG, "openai: choices[0] has no message");
        r->id = dup_member(root, "id");
        r->model = dup_member(root, "model");
        r->stop_detail = dup_member(json_array_get(choices, 0), "finish_reason");
        r->stop_reason = llm_stop_reason_of(LLM_PROVIDER_OPENAI, r->stop_detail);
        c = json_object_get(message, "content");
        if (json_is_string(c) &&
            (rc = buf_append(&text, json_string_value(c), json_string_length(c))) < 0)
                return llm_fail(error, rc, "openai: message content over %d bytes",
                                LLM_MAX_TEXT_BYTES);
        else if (c && !json_is_string(c) && !json_is_null(c))
                return llm_fail(error, -EBADMSG, "openai: message content is not a string");
        calls = json_object_get(message, "tool_calls");
        if (calls && !json_is_array(calls) && !json_is_null(calls))
                return llm_fail(error, -EBADMSG, "openai: message tool_calls is not an array");
        json_array_foreach (calls, i, c) {
                json_t *fn = json_object_get(c, "function");
                json_t *args = json_object_get(fn, "arguments");
                char where[48];
                snprintf(where, sizeof(where), "openai: tool_calls[%zu]", i);
                if (args && !json_is_string(args))
                        return llm_fail(error, -EBADMSG, "%s: arguments is not a string", where);
                if ((rc = llm_result_add_tool_call(
                         r, where, json_string_value(json_object_get(c, "id")),
                         json_string_value(json_object_get(fn, "name")), json_string_value(args),
                         json_string_length(args), error)) < 0)
                        return rc;
        }
        usage = json_object_get(root, "usage");
        if (json_is_object(usage)) {
                r->has_usage = true;
                r->usage.input_tokens = llm_json_count(usage, "prompt_tokens");
                r->usage.output_tokens = llm_json_count(usage, "completion_tokens");
                r->usage.cached_input_tokens = llm_json_count(
                    json_object_get(usage, "prompt_tokens_details"), "cached_tokens");
        }
        return llm_result_set_text(r, &text) < 0 ? llm_fail(error, -ENOMEM, "out of memory") : 0;
}

void llm_anthropic_usage(const json_t *usage, struct llm_result *r)
{
        static const char *const input[] = {"input_tokens", "cache_read_input_tokens",
                                            "cache_creation_input_tokens"};
        bool any_input = false;

        if (!json_is_object(usage))
                return;
        r->has_usage = true;
        for (size_t i = 0; i < 3; i++)
                any_input |= json_is_integer(json_object_get(usage, input[i]));
        /* message_delta repeats the cumulative counts it has; absent ones stay as they were */
        if (any_input) {
                r->usage.input_tokens = llm_json_count(usage, "input_tokens") +
                                        llm_json_count(usage, "cache_read_input_tokens") +
                                        llm_json_count(usage, "cache_creation_input_tokens");
                r->usage.cached_input_tokens = llm_json_count(usage, "cache_read_input_tokens");
        }
        if (json_is_integer(json_object_get(usage, "output_tokens")))
                r->usage.output_tokens = llm_json_count(usage, "output_tokens");
}

static int anthropic_response(const json_t *root, struct llm_result *r, char **error)
{
        json_t *content = json_object_get(root, "content"), *b;
        _cleanup_buf_ struct buf text;
        size_t i;
        int rc;

        buf_init(&text, LLM_MAX_TEXT_BYTES);
        if (!json_is_array(content))
                return llm_fail(error, -EBADMSG, "anthropic: response has no content array");
        r->id = dup_member(root, "id");
        r->model = dup_member(root, "model");
        r->stop_detail = dup_member(root, "stop_reason");
        r->stop_reason = llm_stop_reason_of(LLM_PROVIDER_ANTHROPIC, r->stop_detail);
        json_array_foreach (content, i, b) {
                const char *type = json_string_value(json_object_get(b, "type"));
                char where[48];
                snprintf(where, sizeof(where), "anthropic: content[%zu]", i);
                if (!type)
                        return llm_fail(error, -EBADMSG, "%s: block without a type", where);
                if (strcmp(type, "text") == 0) {
                        json_t *t = json_object_get(b, "text");
                        if (!json_is_string(t))
                                return llm_fail(error, -EBADMSG, "%s: text is not a string", where);
                        if ((rc = buf_append(&text, json_string_value(t), json_string_length(t))) <
                            0)
                                return llm_fail(error, rc, "anthropic: text over %d bytes",
                                                LLM_MAX_TEXT_BYTES);
                } else if (strcmp(type, "tool_use") == 0) {
                        json_t *input = json_object_get(b, "input");
                        _cleanup_free_ char *args =
                            input ? json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
                        if (!json_is_object(input))
                                return llm_fail(error, -EBADMSG,
                                                "%s: tool_use input is not an "
                                                "object",
                                                where);
                        if (!args)
                                return llm_fail(error, -ENOMEM, "out of memory");
                        if ((rc = llm_result_add_tool_call(
                                 r, where, json_string_value(json_object_get(b, "id")),
                                 json_string_value(json_object_get(b, "name")), args, strlen(args),
                                 error)) < 0)
                                return rc;
                } /* thinking and other block types carry nothing the result keeps */
        }
        llm_anthropic_usage(json_object_get(root, "usage"), r);
        return llm_result_set_text(r, &text) < 0 ? llm_fail(error, -ENOMEM, "out of memory") : 0;
}

int llm_parse_response(enum llm_provider p, const char *body, size_t len, struct llm_result *out,
                       char **error)
{
        _cleanup_json_ json_t *root = NULL;
        json_error_t jerr;
        json_t *err;
        int r;

        memset(out, 0, sizeof(*out));
        if (len > LLM_MAX_RESPONSE_BYTES)
                return llm_fail(error, -ENOBUFS, "%s: response over %d bytes", llm_provider_name(p),
                                LLM_MAX_RESPONSE_BYTES);
        root = json_loadb(body, len, 0, &jerr);
        if (!root)
                return llm_fail(error, -EBADMSG,
                                "%s: response is not JSON: %s at line %d column %d",
                                llm_provider_name(p), jerr.text, jerr.line, jerr.column);
        if (!json_is_object(root))
                return llm_fail(error, -EBADMSG, "%s: response is not a JSON object",
                                llm_provider_name(p));
        err = json_object_get(root, "error");
        if (err && !json_is_null(err))
                return server_error(p, err, error);
        r = p == LLM_PROVIDER_ANTHROPIC ? anthropic_response(root, out, error)
                                        : openai_response(root, out, error);
        return r;
}

int llm_server_error(enum llm_provider p, const json_t *err, char **error)
{
        return server_error(p, err, error);
}
