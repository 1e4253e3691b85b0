/*
 * Test support: fresh databases cloned from the harness's migrated template, spawning and
 * signalling real agently processes, and a small HTTP client. Every comparison in a test
 * prints both operands when it fails: cmocka's value assertions (assert_int_equal,
 * assert_string_equal, ...) or the ones below, never assert_true(a == b) (scripts/lint
 * refuses that).
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

/* Applies the embedded migrations first..last to c as `agently migrate` of the release that
 * ended at last did: each in its own transaction, recorded in agently_schema_migrations
 * (created when first is 1). For upgrade tests on a test_db_create_empty database. */
void test_db_migrate_range(PGconn *c, int first, int last);

/* conninfo of the same database as another role ("agently_api", "agently_worker"). */
char *test_db_conninfo_as(const char *owner_conninfo, const char *role);

/* Connects or fails the test. */
PGconn *test_db_connect(const char *conninfo);

/* Runs SQL (no parameters) and fails the test on error; returns the result (caller clears). */
PGresult *test_db_must(PGconn *c, const char *sql);

/*
 * For fixtures that play a worker with SQL: moves the runs matching `where` (an SQL
 * condition on workflow_runs) to `status` through the transitions a worker would make (a
 * claim to 'running' first when they are queued or waiting, since only a lease holder may
 * finish or release a run: 0009_run_status.sql), then sets `status` with the lease dropped,
 * finished_at for a final status, and `extra` (more "col = value" assignments, or NULL).
 * Fails the test on error.
 */
void test_run_move(PGconn *c, const char *where, const char *status, const char *extra);

/* Runs SQL and returns the first column of the first row as a malloc'd string (NULL if no
 * row or SQL NULL); fails the test on error. */
char *test_db_value(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like test_db_value but returns the first row's first column as an integer. */
long long test_db_int(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Runs sql on c; returns its SQLSTATE, "" when it succeeded (a static buffer: valid until
 * the next call). For a statement a test expects to be refused. */
const char *test_db_sqlstate(PGconn *c, const char *sql);

/* Sends sql on c without waiting for it, and waits (up to 10 s, watching from observer)
 * until c's backend waits on a lock: for a statement a test expects to wait for another
 * transaction. Fails the test when it does not come to wait. Read its outcome with
 * test_db_sent_sqlstate once the other transaction ended. */
void test_db_send_blocked(PGconn *c, PGconn *observer, const char *sql);

/* Reads every result of the statement sent on c; returns its SQLSTATE, "" when it succeeded
 * (a static buffer, as test_db_sqlstate's). */
const char *test_db_sent_sqlstate(PGconn *c);

/* The triggers sql fires, as "name:calls" joined by spaces in EXPLAIN's order: sql is run
 * under EXPLAIN ANALYZE in a transaction rolled back after. Caller frees. */
char *test_db_trigger_calls(PGconn *c, const char *sql);

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

/* ---- comparisons that print both operands -------------------------------------------
 * cmocka 1.1 has equality for integers and strings, and an unsigned assert_in_range that
 * shows a negative number as a huge one; these order signed integers, doubles and strings. */

enum test_cmp { TEST_LT, TEST_LE, TEST_GT, TEST_GE };

void test_assert_int_cmp(long long a, enum test_cmp op, long long b, const char *a_text,
                         const char *b_text, const char *file, int line);
void test_assert_double_equal(double a, double b, const char *a_text, const char *b_text,
                              const char *file, int line);
void test_assert_string_cmp(const char *a, enum test_cmp op, const char *b, const char *a_text,
                            const char *b_text, const char *file, int line);
void test_assert_json_equal(const json_t *a, const json_t *b, const char *a_text,
                            const char *b_text, const char *file, int line);
void test_assert_exit(int status, int code, const char *status_text, const char *file, int line);

#define assert_int_lt(a, b)                                                                        \
        test_assert_int_cmp((long long)(a), TEST_LT, (long long)(b), #a, #b, __FILE__, __LINE__)
#define assert_int_le(a, b)                                                                        \
        test_assert_int_cmp((long long)(a), TEST_LE, (long long)(b), #a, #b, __FILE__, __LINE__)
#define assert_int_gt(a, b)                                                                        \
        test_assert_int_cmp((long long)(a), TEST_GT, (long long)(b), #a, #b, __FILE__, __LINE__)
#define assert_int_ge(a, b)                                                                        \
        test_assert_int_cmp((long long)(a), TEST_GE, (long long)(b), #a, #b, __FILE__, __LINE__)
/* Exact: for values that are whole numbers or copies, not for computed fractions. */
#define assert_double_equal(a, b) test_assert_double_equal((a), (b), #a, #b, __FILE__, __LINE__)
/* A test's own JSON text parsed (any value, not only objects and arrays); the test fails,
 * naming the line and the text, when it does not parse. The caller owns the value. */
json_t *test_json(const char *text);

/* Equal JSON values (json_equal); prints both, keys sorted. */
#define assert_json_equal(a, b) test_assert_json_equal((a), (b), #a, #b, __FILE__, __LINE__)
/* strcmp order (both non-NULL). */
#define assert_string_gt(a, b) test_assert_string_cmp((a), TEST_GT, (b), #a, #b, __FILE__, __LINE__)
/* A wait status (test_stop_process, waitpid) of a process that exited with code; otherwise
 * says what happened instead (killed by signal N, not reaped in time). */
#define assert_exit_code(status, code)                                                             \
        test_assert_exit((status), (code), #status, __FILE__, __LINE__)
