/*
 * The one redaction choke point. Every string a process sends out — a log line, an event,
 * an error, a journal entry, a node output, an API answer — passes redact_text() (or
 * redact_json()) on its way, which replaces each occurrence of a registered secret value
 * with "[secret:NAME]". The values are registered by the module that knows them
 * (src/secrets, when it opens or seals one); this module only masks. It lives in base so
 * that every writer, down to the logger, can reach it.
 *
 * Thread-safe: registration takes a write lock, masking a read lock. With nothing
 * registered, masking is one atomic load.
 */
#pragma once

#include <stddef.h>
#include <jansson.h>

/* Values shorter than this are not masked: masking "ab" would mangle ordinary text. */
#define REDACT_MIN_LEN 4
/* Patterns one process can know at once; registering more fails with -ENOSPC. */
#define REDACT_MAX_PATTERNS 4096

/*
 * Registers pattern (len bytes, any bytes but NUL-free in practice) as the value of the
 * secret name ("[secret:NAME]" replaces it). The pattern is BORROWED: it must stay valid
 * and unchanged until redact_unregister(pattern) (the secrets module keeps it in locked
 * memory); name is copied. Returns 1 when registered, 0 when the same bytes are already
 * registered (nothing changes), -EINVAL when shorter than REDACT_MIN_LEN or name is not
 * 1-63 bytes, -ENOSPC when REDACT_MAX_PATTERNS are registered, -ENOMEM.
 */
int redact_register(const char *name, const char *pattern, size_t len);

/* Forgets a pattern registered with exactly this pointer (no-op when unknown). */
void redact_unregister(const char *pattern);

/* How many patterns are registered now. */
size_t redact_count(void);

/*
 * Masks every registered pattern in in (len bytes). Returns 0 when there is nothing to
 * mask (*out NULL: in may be sent as is), 1 with *out a malloc'd NUL-terminated masked
 * copy (the caller frees it) and *out_len its length (out_len may be NULL), or -ENOMEM
 * (*out NULL: the caller must not send in). Overlapping matches: the longest pattern at the
 * leftmost position wins.
 */
int redact_text(const char *in, size_t len, char **out, size_t *out_len);

/* A masked copy of the NUL-terminated s (always a copy; the caller frees it); NULL when
 * out of memory — never the unmasked text. */
char *redact_strdup(const char *s);

/* Masks, in place, every string of v and every object key below it. Returns 1 when
 * something changed, 0 when nothing did, -ENOMEM (v may then be partly masked). */
int redact_json(json_t *v);
