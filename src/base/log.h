/*
 * Process logging. Libraries do not log: they return negative errno values and the caller
 * that decides what to do logs once. Lines go to stderr as
 *   2026-11-22T05:53:47.123Z info  worker: message
 * or, with AGENTLY_LOG_FORMAT=json, one JSON object per line.
 */
#pragma once

#include <stdarg.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the role name printed on every line ("api", "worker", ...) and the minimum level
 * (from AGENTLY_LOG_LEVEL when present). The string must outlive all logging. */
void log_setup(const char *role);
void log_set_level(enum log_level level);
int log_level_from_string(const char *s, enum log_level *out);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs and returns r (a negative errno), so callers can write `return log_errno(r, ...)`. */
int log_errno(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
