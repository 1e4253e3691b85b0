/*
 * Small string helpers that replace the banned libc calls (atoi, strcpy, strcat, sprintf,
 * strtok): strict number parsing that rejects trailing junk and overflow, and formatting
 * into freshly allocated strings.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a whole decimal integer; -EINVAL on junk or empty, -ERANGE on overflow. */
int str_to_int64(const char *s, int64_t *out);
int str_to_int(const char *s, int *out);

/* Returns a malloc'd formatted string, or NULL on allocation failure. */
char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

bool str_has_prefix(const char *s, const char *prefix);
bool str_is_empty(const char *s);

/* Copies src into dst of size n, always NUL-terminating; returns -ENAMETOOLONG if cut. */
int str_copy(char *dst, size_t n, const char *src);

/* Constant-time comparison of two equal-length byte strings. */
bool str_equal_ct(const void *a, const void *b, size_t n);

/* Lower-case hex encoding of n bytes into out (2n+1 bytes). */
void str_hex(const unsigned char *in, size_t n, char *out);

/* The length of the valid UTF-8 sequence at s (1 to 4 bytes), or 0 when the bytes there are
 * not one: stray or missing continuation bytes, overlong forms, surrogates (U+D800..DFFF)
 * and code points above U+10FFFF are refused, as JSON encoders and Postgres refuse them. */
size_t str_utf8_char_len(const char *s, size_t n);

/* True when the n bytes at s are valid UTF-8 (see str_utf8_char_len). */
bool str_is_utf8(const char *s, size_t n);

/*
 * A copy of s that is always valid UTF-8, for showing text of unknown origin: every byte
 * that is not part of a valid sequence becomes the four characters \xNN, and a copy longer
 * than max bytes is cut at a character boundary and ends with "...". Malloc'd (the caller
 * frees); NULL only when memory runs out. s NULL gives NULL.
 */
char *str_utf8_printable(const char *s, size_t max);
