/* Helpers shared by the files of src/llm; not part of the module's contract (llm.h). */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llm.h"

/* Sets *error (when error is non-NULL and *error is NULL) to a malloc'd formatted message
 * and returns code: `return llm_fail(error, -EINVAL, "messages[%zu]: ...", i);`. */
int llm_fail(char **error, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A malloc'd copy of the len bytes at s (NUL-terminated), or NULL. */
char *llm_strndup(const char *s, size_t len);

/* The stop reason of a provider's word (NULL gives LLM_STOP_UNKNOWN). */
enum llm_stop_reason llm_stop_reason_of(enum llm_provider p, const char *word);

/* The non-negative integer member key of o, or 0 when absent or not one. */
int64_t llm_json_count(const json_t *o, const char *key);

struct buf;

/* Appends a tool call to r (id NULL or "": "call_<n>"; arguments empty: "{}"); where names
 * the place for an error. 0, -EBADMSG (no name, name or id too long), -ENOBUFS, -ENOMEM. */
int llm_result_add_tool_call(struct llm_result *r, const char *where, const char *id,
                             const char *name, const char *arguments, size_t arguments_len,
                             char **error);

/* Moves text (emptied) into r->text / text_len; "" when empty. 0 or -ENOMEM. */
int llm_result_set_text(struct llm_result *r, struct buf *text);

/* Takes the counts an Anthropic usage object has into r (message_start, message_delta, a
 * whole response). */
void llm_anthropic_usage(const json_t *usage, struct llm_result *r);

/* -EBADMSG with the provider's error object (or string) as the message. */
int llm_server_error(enum llm_provider p, const json_t *err, char **error);

/* Whether a stream failed because the server sent an error event (an overloaded provider
 * mid-answer), not because it was malformed or too large. */
bool llm_stream_server_failed(const struct llm_stream *s);
