/*
 * A scripted LLM server for tests (loopback, test-only): it speaks the real wire formats of
 * OpenAI-compatible chat completions (POST .../chat/completions) and Anthropic Messages
 * (POST .../messages), streaming (server-sent events, when the request says "stream": true)
 * and not, and answers each request with the next step of a script, whichever endpoint it
 * came to. It records every request it receives (path, headers, body) so a test can assert
 * what was sent, and that an API key header was there. Its encoder is written here from the
 * providers' documented formats, independently of src/llm, so a test that drives src/llm
 * against it checks one against the other.
 *
 * A script is a JSON array of steps:
 *   {"text": "Hello",                                   text content (may be "")
 *    "tool_calls": [{"id": "c1", "name": "f", "arguments": "{\"a\":1}"}],
 *    "usage": {"input": 10, "output": 5, "cached": 2},  cached is part of input
 *    "stop": "end" | "tool_calls" | "max_tokens",       default: tool_calls when any, else end
 *    "model": "m",                                      default: the request's model
 *    "chunk": N,          bytes of text or arguments per streamed delta (default 4; never
 *                         inside a UTF-8 sequence), so tool arguments arrive split
 *    "write": N,          streaming: bytes per write to the socket (default: one event)
 *    "interval_ms": N,    streaming: pause between writes
 *    "delay_ms": N,       wait before answering at all
 *    "status": S, "error": "message", "retry_after": "2"
 *                         answer S with the provider's error body (and Retry-After)
 *    "cut_after": N,      send only the first N bytes of the body, then close the connection
 *    "stream_error": "m", streaming: after the text, the provider's error event (anthropic
 *                         overloaded_error, openai an error chunk) instead of the rest
 *    "match": "text"}     only for a request whose last message (as compact JSON) contains
 *                         text: the first step that fits answers, so agents running in
 *                         parallel each get theirs
 * With no step left it answers 500 "no scripted response left".
 */
#pragma once

#include <jansson.h>

struct llm_server;

/* Starts a server on 127.0.0.1 (a free port); aborts the test on failure. */
struct llm_server *llm_server_start(void);
/* Stops it and frees everything; accepts NULL. */
void llm_server_stop(struct llm_server *s);

/* "http://127.0.0.1:PORT/v1", the base URL an agent names (owned by the server). */
const char *llm_server_url(const struct llm_server *s);

/* Appends the steps of script (a JSON array, text) to the queue; aborts the test when it is
 * not an array of objects. */
void llm_server_script(struct llm_server *s, const char *script);

/* Steps not yet used. */
int llm_server_steps_left(struct llm_server *s);

/* Requests received so far. */
int llm_server_request_count(struct llm_server *s);

/* The i-th request received: {"method", "path", "headers": {lower-case name: value},
 * "body": the JSON body (or its text when it is not JSON), "status": what was answered}. A
 * new reference (a copy), or NULL when there is no i-th request. */
json_t *llm_server_request(struct llm_server *s, int i);
