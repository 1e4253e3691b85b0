/*
 * The wire formats of the two LLM provider families agently speaks, as pure functions (no
 * I/O, no clock, no global state): OpenAI-compatible chat completions (OpenAI, Ollama,
 * vLLM, llama.cpp's server) and Anthropic Messages. A provider-neutral request (JSON, the
 * shape the executor protocol carries) becomes a provider's request body; a provider's
 * response — a whole body, or a server-sent-event stream fed in arbitrary byte chunks —
 * becomes a provider-neutral struct llm_result; usage becomes a cost through a pricing
 * table. Who sends the bytes (libcurl, a test) is the caller's business. See
 * src/llm/README.md for the neutral shapes, the limits and what each provider field maps to.
 *
 * Conventions: functions return 0 or a negative errno (-EINVAL for a request that cannot
 * be built, -EBADMSG for a response that cannot be understood, -ENOBUFS past a limit,
 * -ENOMEM); on failure *error (when error is non-NULL) receives a malloc'd, lower-case
 * message naming what was wrong, which the caller frees. JSON passed in is never modified
 * or stolen.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* ---- Limits (every buffer a server or a request controls has one) ------------------- */
#define LLM_MAX_MESSAGES        10000              /* messages in one request */
#define LLM_MAX_TOOLS           128                /* tool definitions in one request */
#define LLM_MAX_TOOL_CALLS      128                /* tool calls in one response */
#define LLM_MAX_NAME            64                 /* bytes of a tool name */
#define LLM_MAX_ID              256                /* bytes of a tool call id */
#define LLM_MAX_TEXT_BYTES      (4 * 1024 * 1024)  /* text of one response */
#define LLM_MAX_ARGUMENTS_BYTES (1024 * 1024)      /* arguments of one tool call */
#define LLM_MAX_RESULT_BYTES    (8 * 1024 * 1024)  /* a stream's text and arguments together */
#define LLM_MAX_RESPONSE_BYTES  (16 * 1024 * 1024) /* a non-streaming body */
#define LLM_MAX_SSE_LINE        (1024 * 1024)      /* one line of an event stream */
#define LLM_MAX_SSE_EVENT       (1024 * 1024)      /* the data of one event */
#define LLM_MAX_CONTENT_BLOCKS  256                /* Anthropic content blocks in one message */
#define LLM_DEFAULT_MAX_TOKENS  4096 /* Anthropic requires max_tokens; used when unset */
#define LLM_MAX_BODY_CACHE      (16 * 1024 * 1024) /* messages' text an llm_body_cache keeps */

enum llm_provider {
        LLM_PROVIDER_OPENAI,    /* OpenAI-compatible chat completions */
        LLM_PROVIDER_ANTHROPIC, /* Anthropic Messages */
};

/* "openai" or "anthropic" → *out; -EINVAL for any other name. */
int llm_provider_from_name(const char *name, enum llm_provider *out);
/* The provider's name ("openai", "anthropic"); a static string. */
const char *llm_provider_name(enum llm_provider p);

/* Why the model stopped, in one vocabulary for both providers. */
enum llm_stop_reason {
        LLM_STOP_UNKNOWN = 0, /* the response did not say */
        LLM_STOP_END,         /* openai "stop"; anthropic "end_turn", "stop_sequence" */
        LLM_STOP_TOOL_CALLS,  /* openai "tool_calls", "function_call"; anthropic "tool_use" */
        LLM_STOP_MAX_TOKENS,  /* openai "length"; anthropic "max_tokens" */
        LLM_STOP_REFUSAL,     /* openai "content_filter"; anthropic "refusal" */
        LLM_STOP_OTHER,       /* any other word (kept in stop_detail) */
};

/* "end", "tool_calls", "max_tokens", "refusal", "other", "unknown"; a static string. */
const char *llm_stop_reason_name(enum llm_stop_reason r);

/*
 * Tokens of one call. input_tokens counts every prompt token, cached ones included;
 * cached_input_tokens is the part of them read from the provider's prompt cache (openai
 * usage.prompt_tokens_details.cached_tokens; anthropic cache_read_input_tokens, with
 * input_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens).
 */
struct llm_usage {
        int64_t input_tokens;
        int64_t output_tokens;
        int64_t cached_input_tokens;
};

struct llm_tool_call {
        char *id;        /* the provider's call id (the tool result names it) */
        char *name;      /* the tool's name */
        char *arguments; /* JSON text as the model wrote it ("{}" when empty); an OpenAI
                          * model may write invalid JSON: the caller checks */
};

/* A provider-neutral response. Every pointer is owned by the result (llm_result_free). */
struct llm_result {
        char *id;    /* the provider's response id, or NULL */
        char *model; /* the model that answered, as the provider named it, or NULL */
        char *text;  /* all text content, "" when none (never NULL in a parsed result) */
        size_t text_len;
        struct llm_tool_call *tool_calls;
        size_t tool_call_count;
        enum llm_stop_reason stop_reason;
        char *stop_detail; /* the provider's own word, or NULL */
        struct llm_usage usage;
        bool has_usage; /* false when the provider reported no usage */
};

/* Frees what r owns and zeroes it; accepts a zeroed or half-built result. */
void llm_result_free(struct llm_result *r);

/* {"id","model","text","tool_calls":[{"id","name","arguments"}],"stop_reason",
 * "stop_detail","usage":{"input_tokens","output_tokens","cached_input_tokens"} or null}
 * (absent values null); a new reference, or NULL when memory runs out. */
json_t *llm_result_to_json(const struct llm_result *r);

/* The assistant message of the neutral request shape (llm_build_request) that carries r
 * into the next request: {"role": "assistant", "content": text or null, "tool_calls":
 * [{"id", "name", "arguments"}]} (tool_calls only when there are some). A new reference, or
 * NULL when memory runs out. */
json_t *llm_result_message(const struct llm_result *r);

/* ---- Requests ------------------------------------------------------------------------ */

/*
 * Builds the body of a provider's request from a provider-neutral one:
 *   {"model": "m",                                          required
 *    "system": "text",                                      optional
 *    "messages": [                                          required, at least one
 *      {"role": "user", "content": "text"},
 *      {"role": "assistant", "content": "text" | null,
 *       "tool_calls": [{"id": "c1", "name": "f", "arguments": "{json text}"}]},
 *      {"role": "tool", "tool_call_id": "c1", "content": "text", "is_error": false}],
 *    "tools": [{"name": "f", "description": "text", "parameters": {JSON Schema}}],
 *    "tool_choice": "auto" | "none" | "required" | {"name": "f"},
 *    "max_tokens": N, "stream": true | false}
 * Unknown members are refused (a typo must not be silently dropped). On success *body is a
 * new reference the caller owns. -EINVAL with *error naming the member
 * ("messages[2].role: ...") when the request is not of that shape or breaks a limit.
 */
int llm_build_request(enum llm_provider p, const json_t *request, json_t **body, char **error);

/*
 * A conversation's body text kept between the calls of one conversation, so that a request
 * whose first messages are the previous request's (the same objects, or equal ones) checks
 * and serialises only the messages after them: the cost of a call's body no longer grows
 * with the conversation but for one copy of its text. Only OpenAI-compatible bodies (an
 * Anthropic body merges consecutive turns, so its last message changes; built whole). A
 * message must not be changed in place once a request with it was built (a changed message
 * is a new object). One per conversation, owned by the caller; not thread-safe.
 */
struct llm_body_cache;
/* A new empty cache, or NULL when memory runs out. */
struct llm_body_cache *llm_body_cache_new(void);
/* Frees it and drops its references; accepts NULL. */
void llm_body_cache_free(struct llm_body_cache *c);
/*
 * The body of request for provider p as compact JSON text (*text malloc'd, *len its
 * length): the same JSON as llm_build_request's (member order aside), its messages' part
 * from c and c updated (c NULL, an Anthropic request, or a conversation past
 * LLM_MAX_BODY_CACHE: built whole). Errors as llm_build_request; a refused request
 * leaves c as it was or empty.
 */
int llm_build_request_text(enum llm_provider p, const json_t *request, struct llm_body_cache *c,
                           char **text, size_t *len, char **error);

/* The path below the base URL a request goes to: "/chat/completions" (the base URL ends
 * in /v1) or "/messages". A static string. */
const char *llm_endpoint_path(enum llm_provider p);

/*
 * The headers a request carries besides Content-Type: openai "Authorization: Bearer KEY";
 * anthropic "x-api-key: KEY" and "anthropic-version: 2023-06-01". api_key may be NULL or
 * "" (a local server without auth): no key header then. Returns a NULL-terminated array of
 * malloc'd "Name: value" strings (free with llm_headers_free), or NULL when memory runs out
 * or the key holds a CR, LF or NUL byte (it would end the header).
 */
char **llm_request_headers(enum llm_provider p, const char *api_key);
void llm_headers_free(char **headers);

/* ---- Responses ----------------------------------------------------------------------- */

/*
 * Parses a non-streaming response body (at most LLM_MAX_RESPONSE_BYTES) into *out (zeroed
 * first; the caller frees it with llm_result_free, also after a failure). A body that is an
 * error object ({"error": {...}}) fails with -EBADMSG and the provider's message.
 */
int llm_parse_response(enum llm_provider p, const char *body, size_t len, struct llm_result *out,
                       char **error);

/* ---- Streams ------------------------------------------------------------------------- */

/*
 * An incremental parser of one streamed response (server-sent events): feed it the body's
 * bytes as they arrive, in chunks split anywhere (inside a line, an event or a UTF-8
 * sequence). Every buffer it keeps has a cap (the LLM_MAX_* above). The caller owns it.
 */
struct llm_stream;

/* -ENOMEM or 0 with *out set. */
int llm_stream_new(enum llm_provider p, struct llm_stream **out);
/* Accepts NULL. */
void llm_stream_free(struct llm_stream *s);

/*
 * Consumes len bytes. 0, or -EBADMSG / -ENOBUFS / -ENOMEM with *error when the stream is
 * malformed, breaks a limit or is an error the server sent; after a failure the stream is
 * dead and every later call fails with the same code (and message).
 */
int llm_stream_feed(struct llm_stream *s, const void *data, size_t len, char **error);

/*
 * The text that arrived since the last call (for live events): *text points into the
 * stream's own buffer (valid until the next feed or free), *len its length; returns true
 * when there is any. Text deltas are whole JSON strings, so always whole UTF-8 characters.
 */
bool llm_stream_take_text(struct llm_stream *s, const char **text, size_t *len);

/* True once the stream's last event arrived (openai "data: [DONE]", anthropic
 * "message_stop"). */
bool llm_stream_done(const struct llm_stream *s);

/*
 * Ends the stream (the body is complete) and moves the result into *out (zeroed first;
 * an event not ended by its blank line is discarded, as the event-stream grammar says;
 * the caller frees it with llm_result_free, also after a failure). -EBADMSG when the
 * stream ended before its last event (a cut connection), had failed before, or holds a
 * tool call without a name. Call at most once.
 */
int llm_stream_finish(struct llm_stream *s, struct llm_result *out, char **error);

/* ---- Cost ---------------------------------------------------------------------------- */

/* Prices in US dollars per million tokens. */
struct llm_price {
        double input;
        double output;
        double cached_input;
};

/*
 * The price of model: from overrides when it names the model ({"model": {"input": 2.5,
 * "output": 10, "cached_input": 1.25}}, NULL for none), else from the shipped defaults
 * (src/llm/llm_pricing.c, the one place they live). A dated name ("gpt-4o-2024-08-06",
 * "claude-sonnet-4-20250514") is looked up as is, then without its date. Returns true and
 * fills *out when known; false (and zeroes) for an unknown model.
 */
bool llm_price_lookup(const json_t *overrides, const char *model, struct llm_price *out);

/* Checks a pricing override object (the shape above; cached_input optional, defaulting to
 * input): 0 or -EINVAL with *error naming the model and member. */
int llm_pricing_validate(const json_t *overrides, char **error);

struct llm_cost {
        double usd;
        bool known; /* false: the model has no price; usd is 0 (flag it, do not guess) */
};

/* The cost of usage on model: (input - cached) at the input price, cached at the cached
 * price, output at the output price. */
struct llm_cost llm_cost(const json_t *overrides, const char *model, const struct llm_usage *u);
