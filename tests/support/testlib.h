/*
 * Test support: fresh databases cloned from the harness's migrated template, spawning and
 * signalling real agently processes, and a small HTTP client. Assertion helpers abort the
 * test with both operands printed (cmocka's assert_* do that too; use either).
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <sys/types.h>
#include <cmocka.h>
#include <libpq-fe.h>
#include <jansson.h>

/* A fresh database for this test (named after prefix, pid and a counter), a copy of the
 * migrated template. Returns the owner's (superuser's) conninfo; caller frees. */
char *test_db_create(const char *prefix);

/* A fresh EMPTY database (from template0, nothing migrated). */
char *test_db_create_empty(const char *prefix);

/* conninfo of the same database as another role ("agently_api", "agently_worker"). */
char *test_db_conninfo_as(const char *owner_conninfo, const char *role);

/* Connects or fails the test. */
PGconn *test_db_connect(const char *conninfo);

/* Runs SQL (no parameters) and fails the test on error; returns the result (caller clears). */
PGresult *test_db_must(PGconn *c, const char *sql);

/* Runs SQL and returns the first column of the first row as a malloc'd string (NULL if no
 * row or SQL NULL); fails the test on error. */
char *test_db_value(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like test_db_value but returns the first row's first column as an integer. */
long long test_db_int(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Spawns the agently binary with args (NULL-terminated) and extra env entries "K=V"
 * (NULL-terminated, may be NULL); output to log_path (or inherited when NULL). */
pid_t test_spawn_agently(const char *const *args, const char *const *env, const char *log_path);

/* Sends sig to pid and waits for it up to timeout_ms; returns the wait status or -1. */
int test_stop_process(pid_t pid, int sig, int timeout_ms);

/* A free TCP port on 127.0.0.1. */
int test_free_port(void);

/* Milliseconds from a monotonic clock. */
int64_t test_now_ms(void);

/* HTTP request; body may be NULL. Returns the status code (0 if the request failed) and
 * the response body in *response (malloc'd, may be NULL). headers: NULL-terminated
 * "Name: value" list or NULL. */
long test_http(const char *method, const char *url, const char *const *headers, const char *body,
               char **response);

/* Polls url until it answers 200 or timeout_ms passes. */
bool test_wait_http_ok(const char *url, int timeout_ms);

/* A temp directory (removed by test_rm_rf); caller frees the path. */
char *test_tempdir(const char *prefix);
void test_rm_rf(const char *path);
