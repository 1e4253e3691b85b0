/*
 * Request bodies: a provider-neutral request (llm.h) checked member by member and turned
 * into an OpenAI chat completions body or an Anthropic Messages body, plus the endpoint
 * path and the headers each provider expects. Pure: JSON in, JSON out.
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

int llm_fail(char **error, int code, const char *fmt, ...)
{
        va_list ap;

        if (error && !*error) {
                char *m = NULL;
                va_start(ap, fmt);
                if (vasprintf(&m, fmt, ap) < 0)
                        m = NULL;
                va_end(ap);
                *error = m;
        }
        return code;
}

char *llm_strndup(const char *s, size_t len)
{
        char *p = malloc(len + 1);

        if (!p)
                return NULL;
        if (len)
                memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

int64_t llm_json_count(const json_t *o, const char *key)
{
        json_t *v = json_is_object(o) ? json_object_get(o, key) : NULL;

        return json_is_integer(v) && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
}

int llm_provider_from_name(const char *name, enum llm_provider *out)
{
        if (name && strcmp(name, "openai") == 0)
                *out = LLM_PROVIDER_OPENAI;
        else if (name && strcmp(name, "anthropic") == 0)
                *out = LLM_PROVIDER_ANTHROPIC;
        else
                return -EINVAL;
        return 0;
}

const char *llm_provider_name(enum llm_provider p)
{
        return p == LLM_PROVIDER_ANTHROPIC ? "anthropic" : "openai";
}

const char *llm_endpoint_path(enum llm_provider p)
{
        return p == LLM_PROVIDER_ANTHROPIC ? "/messages" : "/chat/completions";
}

void llm_headers_free(char **headers)
{
        if (!headers)
                return;
        for (char **h = headers; *h; h++)
                free(*h);
        free(headers);
}

char **llm_request_headers(enum llm_provider p, const char *api_key)
{
        char **h = calloc(3, sizeof(*h));
        size_t n = 0;
        bool key = api_key && *api_key;

        if (!h)
                return NULL;
        if (key && strpbrk(api_key, "\r\n")) {
                free(h);
                return NULL;
        }
        if (p == LLM_PROVIDER_ANTHROPIC) {
                if (key && !(h[n++] = str_printf("x-api-key: %s", api_key)))
                        goto fail;
                if (!(h[n++] = str_printf("anthropic-version: 2023-06-01")))
                        goto fail;
        } else if (key && !(h[n++] = str_printf("Authorization: Bearer %s", api_key))) {
                goto fail;
        }
        return h;
fail:
        llm_headers_free(h);
        return NULL;
}

/* ---- the neutral request, checked --------------------------------------------------- */

/* The members an object may have; anything else is refused, naming it. */
static int only_members(const json_t *o, const char *where, const char *const *allowed,
                        char **error)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)o, key, v) {
                bool ok = false;
                for (const char *const *a = allowed; *a && !ok; a++)
                        ok = strcmp(*a, key) == 0;
                if (!ok)
                        return llm_fail(error, -EINVAL, "%s%s%s: unknown member", where,
                                        *where ? "." : "", key);
        }
        return 0;
}

static bool valid_tool_name(const char *s)
{
        size_t n = strlen(s);

        if (n == 0 || n > LLM_MAX_NAME)
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
                        return false;
        return true;
}

static int want_string(const json_t *o, const char *key, const char *where, bool required,
                       const char **out, char **error)
{
        json_t *v = json_object_get(o, key);

        *out = NULL;
        if (!v || (json_is_null(v) && !required))
                return required ? llm_fail(error, -EINVAL, "%s.%s: missing", where, key) : 0;
        if (!json_is_string(v))
                return llm_fail(error, -EINVAL, "%s.%s: expected a string", where, key);
        *out = json_string_value(v);
        return 0;
}

static int check_tool_name(const char *name, const char *where, char **error)
{
        if (!valid_tool_name(name))
                return llm_fail(error, -EINVAL,
                                "%s: tool name \"%.80s\" must be 1 to %d letters, digits, _ or -",
                                where, name, LLM_MAX_NAME);
        return 0;
}

/* The tool calls of an assistant message, checked. */
static int check_tool_calls(const json_t *calls, const char *where, char **error)
{
        static const char *const members[] = {"id", "name", "arguments", NULL};
        size_t i;
        json_t *c;
        char at[96];
        int r;

        if (!json_is_array(calls))
                return llm_fail(error, -EINVAL, "%s.tool_calls: expected an array", where);
        if (json_array_size(calls) > LLM_MAX_TOOL_CALLS)
                return llm_fail(error, -EINVAL, "%s.tool_calls: more than %d calls", where,
                                LLM_MAX_TOOL_CALLS);
        json_array_foreach (calls, i, c) {
                const char *id, *name, *args;
                snprintf(at, sizeof(at), "%s.tool_calls[%zu]", where, i);
                if (!json_is_object(c))
                        return llm_fail(error, -EINVAL, "%s: expected an object", at);
                if ((r = only_members(c, at, members, error)) < 0 ||
                    (r = want_string(c, "id", at, true, &id, error)) < 0 ||
                    (r = want_string(c, "name", at, true, &name, error)) < 0 ||
                    (r = want_string(c, "arguments", at, true, &args, error)) < 0)
                        return r;
                if (*id == '\0' || strlen(id) > LLM_MAX_ID)
                        return llm_fail(error, -EINVAL, "%s.id: must be 1 to %d bytes", at,
                                        LLM_MAX_ID);
                if ((r = check_tool_name(name, at, error)) < 0)
                        return r;
        }
        return 0;
}

static int check_message(const json_t *m, size_t i, char **error)
{
        static const char *const user[] = {"role", "content", NULL};
        static const char *const assistant[] = {"role", "content", "tool_calls", NULL};
        static const char *const tool[] = {"role", "tool_call_id", "content", "is_error", NULL};
        const char *role, *s;
        char at[32];
        json_t *v;
        int r;

        snprintf(at, sizeof(at), "messages[%zu]", i);
        if (!json_is_object(m))
                return llm_fail(error, -EINVAL, "%s: expected an object", at);
        if ((r = want_string(m, "role", at, true, &role, error)) < 0)
                return r;
        if (strcmp(role, "user") == 0) {
                if ((r = only_members(m, at, user, error)) < 0 ||
                    (r = want_string(m, "content", at, true, &s, error)) < 0)
                        return r;
        } else if (strcmp(role, "assistant") == 0) {
                if ((r = only_members(m, at, assistant, error)) < 0 ||
                    (r = want_string(m, "content", at, false, &s, error)) < 0)
                        return r;
                v = json_object_get(m, "tool_calls");
                if (v && (r = check_tool_calls(v, at, error)) < 0)
                        return r;
                if ((!s || !*s) && json_array_size(v) == 0)
                        return llm_fail(error, -EINVAL,
                                        "%s: an assistant message needs content "
                                        "or tool_calls",
                                        at);
        } else if (strcmp(role, "tool") == 0) {
                if ((r = only_members(m, at, tool, error)) < 0 ||
                    (r = want_string(m, "tool_call_id", at, true, &s, error)) < 0 ||
                    (r = want_string(m, "content", at, true, &s, error)) < 0)
                        return r;
                v = json_object_get(m, "is_error");
                if (v && !json_is_boolean(v))
                        return llm_fail(error, -EINVAL, "%s.is_error: expected true or false", at);
        } else if (strcmp(role, "system") == 0) {
                return llm_fail(error, -EINVAL,
                                "%s.role: system text goes in the request's \"system\"", at);
        } else {
                return llm_fail(error, -EINVAL, "%s.role: \"%.40s\" is not user, assistant or tool",
                                at, role);
        }
        return 0;
}

/* Checks req; its messages from index `from` on (those before were checked when they were
 * first seen: llm_body_cache). */
static int check_request_from(const json_t *req, size_t from, char **error)
{
        static const char *const members[] = {"model",       "system",     "messages", "tools",
                                              "tool_choice", "max_tokens", "stream",   NULL};
        static const char *const tool_members[] = {"name", "description", "parameters", NULL};
        const char *s;
        json_t *v, *t;
        size_t i;
        char at[32];
        int r;

        if (!json_is_object(req))
                return llm_fail(error, -EINVAL, "request: expected an object");
        if ((r = only_members(req, "", members, error)) < 0 ||
            (r = want_string(req, "model", "request", true, &s, error)) < 0)
                return r;
        if (!*s)
                return llm_fail(error, -EINVAL, "model: must not be empty");
        if ((r = want_string(req, "system", "request", false, &s, error)) < 0)
                return r;
        v = json_object_get(req, "messages");
        if (!json_is_array(v) || json_array_size(v) == 0)
                return llm_fail(error, -EINVAL, "messages: expected a non-empty array");
        if (json_array_size(v) > LLM_MAX_MESSAGES)
                return llm_fail(error, -EINVAL, "messages: more than %d", LLM_MAX_MESSAGES);
        for (i = from; i < json_array_size(v); i++) {
                if ((r = check_message(json_array_get(v, i), i, error)) < 0)
                        return r;
        }
        v = json_object_get(req, "tools");
        if (v && !json_is_array(v))
                return llm_fail(error, -EINVAL, "tools: expected an array");
        if (json_array_size(v) > LLM_MAX_TOOLS)
                return llm_fail(error, -EINVAL, "tools: more than %d", LLM_MAX_TOOLS);
        json_array_foreach (v, i, t) {
                snprintf(at, sizeof(at), "tools[%zu]", i);
                if (!json_is_object(t))
                        return llm_fail(error, -EINVAL, "%s: expected an object", at);
                if ((r = only_members(t, at, tool_members, error)) < 0 ||
                    (r = want_string(t, "name", at, true, &s, error)) < 0 ||
                    (r = check_tool_name(s, at, error)) < 0 ||
                    (r = want_string(t, "description", at, false, &s, error)) < 0)
                        return r;
                for (size_t j = 0; j < i; j++)
                        if (strcmp(json_string_value(json_object_get(json_array_get(v, j), "name")),
                                   json_string_value(json_object_get(t, "name"))) == 0)
                                return llm_fail(error, -EINVAL, "%s.name: \"%s\" is defined twice",
                                                at, json_string_value(json_object_get(t, "name")));
                if (!json_is_object(json_object_get(t, "parameters")))
                        return llm_fail(error, -EINVAL,
                                        "%s.parameters: expected a JSON Schema object", at);
        }
        t = json_object_get(req, "tool_choice");
        if (t && json_is_string(t)) {
                s = json_string_value(t);
                if (strcmp(s, "auto") != 0 && strcmp(s, "none") != 0 && strcmp(s, "required") != 0)
                        return llm_fail(error, -EINVAL,
                                        "tool_choice: \"%.40s\" is not auto, none, required or "
                                        "{\"name\": ...}",
                                        s);
        } else if (t) {
                static const char *const choice[] = {"name", NULL};
                if (!json_is_object(t))
                        return llm_fail(error, -EINVAL,
                                        "tool_choice: expected a string or "
                                        "{\"name\": ...}");
                if ((r = only_members(t, "tool_choice", choice, error)) < 0 ||
                    (r = want_string(t, "name", "tool_choice", true, &s, error)) < 0)
                        return r;
                bool found = false;
                json_array_foreach (v, i, t) {
                        found |= strcmp(json_string_value(json_object_get(t, "name")), s) == 0;
                }
                if (!found)
                        return llm_fail(error, -EINVAL, "tool_choice.name: \"%.80s\" is not a tool",
                                        s);
        }
        v = json_object_get(req, "max_tokens");
        if (v && (!json_is_integer(v) || json_integer_value(v) < 1 ||
                  json_integer_value(v) > 10 * 1000 * 1000))
                return llm_fail(error, -EINVAL, "max_tokens: expected an integer from 1");
        v = json_object_get(req, "stream");
        if (v && !json_is_boolean(v))
                return llm_fail(error, -EINVAL, "stream: expected true or false");
        return 0;
}

static int check_request(const json_t *req, char **error)
{
        return check_request_from(req, 0, error);
}

/* ---- OpenAI chat completions -------------------------------------------------------- */

static json_t *openai_message(const json_t *m)
{
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        json_t *out, *calls, *c;
        size_t i;

        if (strcmp(role, "tool") == 0)
                return json_pack("{s:s, s:O, s:O}", "role", "tool", "tool_call_id",
                                 json_object_get(m, "tool_call_id"), "content", content);
        out = json_pack("{s:s, s:O}", "role", role, "content", content ? content : json_null());
        calls = json_object_get(m, "tool_calls");
        if (!out || json_array_size(calls) == 0)
                return out;
        json_t *list = json_array();
        json_object_set_new(out, "tool_calls", list);
        json_array_foreach (calls, i, c) {
                json_array_append_new(list,
                                      json_pack("{s:O, s:s, s:{s:O, s:O}}", "id",
                                                json_object_get(c, "id"), "type", "function",
                                                "function", "name", json_object_get(c, "name"),
                                                "arguments", json_object_get(c, "arguments")));
        }
        return json_array_size(list) == json_array_size(calls) ? out : (json_decref(out), NULL);
}

static json_t *openai_body(const json_t *req)
{
        _cleanup_json_ json_t *body = json_object();
        json_t *messages = json_array(), *v, *m;
        size_t i;

        if (!body || !messages ||
            json_object_set_new(body, "model", json_deep_copy(json_object_get(req, "model"))) < 0)
                return json_decref(messages), NULL;
        json_object_set_new(body, "messages", messages);
        v = json_object_get(req, "system");
        if (json_is_string(v) &&
            json_array_append_new(messages,
                                  json_pack("{s:s, s:O}", "role", "system", "content", v)) < 0)
                return NULL;
        json_array_foreach (json_object_get(req, "messages"), i, m) {
                if (json_array_append_new(messages, openai_message(m)) < 0)
                        return NULL;
        }
        v = json_object_get(req, "tools");
        if (json_array_size(v)) {
                json_t *tools = json_array(), *t;
                json_object_set_new(body, "tools", tools);
                json_array_foreach (v, i, t) {
                        json_t *fn = json_pack("{s:O, s:O}", "name", json_object_get(t, "name"),
                                               "parameters", json_object_get(t, "parameters"));
                        if (fn && json_is_string(json_object_get(t, "description")))
                                json_object_set(fn, "description",
                                                json_object_get(t, "description"));
                        if (json_array_append_new(tools, json_pack("{s:s, s:o}", "type", "function",
                                                                   "function", fn)) < 0)
                                return NULL;
                }
        }
        v = json_object_get(req, "tool_choice");
        if (json_is_string(v))
                json_object_set(body, "tool_choice", v);
        else if (v)
                json_object_set_new(body, "tool_choice",
                                    json_pack("{s:s, s:{s:O}}", "type", "function", "function",
                                              "name", json_object_get(v, "name")));
        v = json_object_get(req, "max_tokens");
        if (v)
                json_object_set(body, "max_tokens", v);
        if (json_is_true(json_object_get(req, "stream"))) {
                json_object_set_new(body, "stream", json_true());
                json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
        }
        return TAKE_PTR(body);
}

/* ---- Anthropic Messages ------------------------------------------------------------- */

/* The content blocks of one neutral message; -EINVAL when tool call arguments are not a
 * JSON object (Anthropic's tool_use input must be one). */
static int anthropic_blocks(const json_t *m, size_t i, json_t *blocks, char **error)
{
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content"), *c;
        size_t j;

        if (strcmp(role, "tool") == 0) {
                json_t *b = json_pack("{s:s, s:O, s:O}", "type", "tool_result", "tool_use_id",
                                      json_object_get(m, "tool_call_id"), "content", content);
                if (b && json_is_true(json_object_get(m, "is_error")))
                        json_object_set_new(b, "is_error", json_true());
                return json_array_append_new(blocks, b) < 0 ? -ENOMEM : 0;
        }
        /* Anthropic refuses empty text blocks; an assistant turn of tool calls only has none */
        if (json_is_string(content) && json_string_length(content) > 0 &&
            json_array_append_new(blocks,
                                  json_pack("{s:s, s:O}", "type", "text", "text", content)) < 0)
                return -ENOMEM;
        json_array_foreach (json_object_get(m, "tool_calls"), j, c) {
                const char *args = json_string_value(json_object_get(c, "arguments"));
                json_error_t jerr;
                json_t *input = *args ? json_loads(args, JSON_DECODE_ANY, &jerr) : json_object();
                if (!json_is_object(input)) {
                        json_decref(input);
                        return llm_fail(error, -EINVAL,
                                        "messages[%zu].tool_calls[%zu].arguments: expected the "
                                        "JSON text of an object",
                                        i, j);
                }
                if (json_array_append_new(
                        blocks, json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use", "id",
                                          json_object_get(c, "id"), "name",
                                          json_object_get(c, "name"), "input", input)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static int anthropic_body(const json_t *req, json_t **out, char **error)
{
        _cleanup_json_ json_t *body = json_object();
        json_t *messages = json_array(), *v, *m, *last = NULL;
        const char *last_role = NULL;
        size_t i;
        int r;

        if (!body || !messages)
                return json_decref(messages), -ENOMEM;
        json_object_set_new(body, "model", json_deep_copy(json_object_get(req, "model")));
        v = json_object_get(req, "max_tokens");
        json_object_set_new(body, "max_tokens",
                            v ? json_deep_copy(v) : json_integer(LLM_DEFAULT_MAX_TOKENS));
        v = json_object_get(req, "system");
        if (json_is_string(v) && json_string_length(v) > 0)
                json_object_set(body, "system", v);
        json_object_set_new(body, "messages", messages);
        /* Roles alternate: a tool result is a user turn, and consecutive turns of one role
         * (several tool results, a result then a user's note) become one message. */
        json_array_foreach (json_object_get(req, "messages"), i, m) {
                const char *role = json_string_value(json_object_get(m, "role"));
                const char *wire = strcmp(role, "assistant") == 0 ? "assistant" : "user";
                if (!last_role || strcmp(last_role, wire) != 0) {
                        last = json_pack("{s:s, s:[]}", "role", wire, "content");
                        if (json_array_append_new(messages, last) < 0)
                                return -ENOMEM;
                        last_role = wire;
                }
                if ((r = anthropic_blocks(m, i, json_object_get(last, "content"), error)) < 0)
                        return r;
                if (json_array_size(json_object_get(last, "content")) == 0)
                        return llm_fail(error, -EINVAL, "messages[%zu].content: must not be empty",
                                        i);
        }
        v = json_object_get(req, "tools");
        if (json_array_size(v)) {
                json_t *tools = json_array(), *t;
                json_object_set_new(body, "tools", tools);
                json_array_foreach (v, i, t) {
                        json_t *tool = json_pack("{s:O, s:O}", "name", json_object_get(t, "name"),
                                                 "input_schema", json_object_get(t, "parameters"));
                        if (tool && json_is_string(json_object_get(t, "description")))
                                json_object_set(tool, "description",
                                                json_object_get(t, "description"));
                        if (json_array_append_new(tools, tool) < 0)
                                return -ENOMEM;
                }
        }
        v = json_object_get(req, "tool_choice");
        if (json_is_string(v)) {
                const char *s = json_string_value(v);
                json_object_set_new(
                    body, "tool_choice",
                    json_pack("{s:s}", "type", strcmp(s, "required") == 0 ? "any" : s));
        } else if (v) {
                json_object_set_new(
                    body, "tool_choice",
                    json_pack("{s:s, s:O}", "type", "tool", "name", json_object_get(v, "name")));
        }
        if (json_is_true(json_object_get(req, "stream")))
                json_object_set_new(body, "stream", json_true());
        *out = TAKE_PTR(body);
        return 0;
}

int llm_build_request(enum llm_provider p, const json_t *request, json_t **body, char **error)
{
        int r;

        *body = NULL;
        if ((r = check_request(request, error)) < 0)
                return r;
        if (p == LLM_PROVIDER_ANTHROPIC)
                return anthropic_body(request, body, error);
        *body = openai_body(request);
        return *body ? 0 : llm_fail(error, -ENOMEM, "out of memory");
}

/* ---- a conversation's OpenAI body text, kept between calls -------------------------- */

struct llm_body_cache {
        json_t **messages; /* the neutral messages whose wire text is kept (references) */
        size_t n, cap;
        struct buf text; /* their OpenAI messages' JSON, joined by "," */
};

struct llm_body_cache *llm_body_cache_new(void)
{
        struct llm_body_cache *c = calloc(1, sizeof(*c));

        if (c)
                buf_init(&c->text, LLM_MAX_BODY_CACHE);
        return c;
}

static void cache_clear(struct llm_body_cache *c)
{
        for (size_t i = 0; i < c->n; i++)
                json_decref(c->messages[i]);
        c->n = 0;
        buf_reset(&c->text);
}

void llm_body_cache_free(struct llm_body_cache *c)
{
        if (!c)
                return;
        cache_clear(c);
        free(c->messages);
        buf_free(&c->text);
        free(c);
}

/* How many leading messages of msgs the cache holds the text of: all of its own when they
 * lead msgs (the same objects, or equal ones), else none. */
static size_t cache_prefix(const struct llm_body_cache *c, const json_t *msgs)
{
        if (c->n == 0 || c->n > json_array_size(msgs))
                return 0;
        for (size_t i = 0; i < c->n; i++) {
                const json_t *m = json_array_get(msgs, i);
                if (m != c->messages[i] && !json_equal(m, c->messages[i]))
                        return 0;
        }
        return c->n;
}

/* Appends message m (index i) to the cache. -ENOMEM, -ENOBUFS (past the cap). */
static int cache_append(struct llm_body_cache *c, json_t *m, size_t i)
{
        _cleanup_json_ json_t *wire = openai_message(m);
        _cleanup_free_ char *t = wire ? json_dumps(wire, JSON_COMPACT) : NULL;
        int r;

        if (!t)
                return -ENOMEM;
        if (c->n == c->cap) {
                size_t cap = c->cap ? 2 * c->cap : 64;
                json_t **grown = realloc(c->messages, cap * sizeof(*grown));
                if (!grown)
                        return -ENOMEM;
                c->messages = grown;
                c->cap = cap;
        }
        if ((i > 0 && (r = buf_append(&c->text, ",", 1)) < 0) ||
            (r = buf_append_str(&c->text, t)) < 0)
                return r;
        c->messages[c->n++] = json_incref(m);
        return 0;
}

/* The OpenAI body of req as text, the messages' part from the cache. */
static int openai_text(const json_t *req, struct llm_body_cache *c, char **text, size_t *len,
                       char **error)
{
        const json_t *msgs = json_object_get(req, "messages");
        size_t from = json_is_array(msgs) ? cache_prefix(c, msgs) : 0;
        _cleanup_json_ json_t *shell = NULL, *body = NULL;
        _cleanup_free_ char *sys = NULL, *rest = NULL;
        _cleanup_buf_ struct buf out = {0};
        int r;

        if (from == 0)
                cache_clear(c);
        if ((r = check_request_from(req, from, error)) < 0)
                return r;
        for (size_t i = from; i < json_array_size(msgs); i++)
                if ((r = cache_append(c, json_array_get(msgs, i), i)) < 0) {
                        cache_clear(c); /* a half-appended message must not stay */
                        return r;
                }
        /* everything but the messages: openai_body of the request without them */
        shell = json_copy((json_t *)req);
        if (!shell || json_object_set_new(shell, "messages", json_array()) < 0 ||
            !(body = openai_body(shell)))
                return -ENOMEM;
        json_t *head = json_array_get(json_object_get(body, "messages"), 0); /* the system */
        if (head && !(sys = json_dumps(head, JSON_COMPACT)))
                return -ENOMEM;
        json_object_del(body, "messages");
        if (!(rest = json_dumps(body, JSON_COMPACT)))
                return -ENOMEM;
        buf_init(&out, 2 * (size_t)LLM_MAX_BODY_CACHE);
        if (buf_append_str(&out, "{\"messages\":[") < 0 ||
            (sys && (buf_append_str(&out, sys) < 0 ||
                     (c->text.len > 0 && buf_append(&out, ",", 1) < 0))) ||
            (c->text.len > 0 && buf_append(&out, c->text.data, c->text.len) < 0) ||
            buf_append(&out, "]", 1) < 0 ||
            (strcmp(rest, "{}") != 0 &&
             (buf_append(&out, ",", 1) < 0 || buf_append_str(&out, rest + 1) < 0)) ||
            (strcmp(rest, "{}") == 0 && buf_append(&out, "}", 1) < 0))
                return -ENOMEM;
        *len = out.len;
        *text = buf_steal(&out);
        return *text ? 0 : -ENOMEM;
}

int llm_build_request_text(enum llm_provider p, const json_t *request, struct llm_body_cache *c,
                           char **text, size_t *len, char **error)
{
        _cleanup_json_ json_t *body = NULL;
        int r;

        *text = NULL;
        *len = 0;
        if (c && p == LLM_PROVIDER_OPENAI) {
                r = openai_text(request, c, text, len, error);
                if (r != -ENOBUFS) /* a conversation past the cache's cap: built whole */
                        return r == -ENOMEM ? llm_fail(error, r, "out of memory") : r;
        }
        if ((r = llm_build_request(p, request, &body, error)) < 0)
                return r;
        *text = json_dumps(body, JSON_COMPACT);
        if (!*text)
                return llm_fail(error, -ENOMEM, "out of memory");
        *len = strlen(*text);
        return 0;
}
