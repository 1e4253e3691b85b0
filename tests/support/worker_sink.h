/*
 * A tiny HTTP server inside a test process that plays the outside world for workers: it
 * records every request (method, path, Idempotency-Key, Content-Type, body, arrival time)
 * and answers as the query string tells it, so one sink serves every scenario:
 *   ?fail=N&status=S     the first N requests to this path answer S (default 500)
 *   &retry_after=SEC     ... with a Retry-After header
 *   ?delay_ms=N          answer after N ms (a thread per connection, so others go on)
 *   ?drop=1              close the connection without answering (after any delay)
 * Everything else answers 200 {"ok":true,"n":<requests so far to this path>}.
 */
#pragma once

#include <stdint.h>

struct worker_sink;

struct worker_sink_request {
        char method[16];
        char path[256];
        char idempotency_key[256];
        char body[512];
        char user_agent[256];
        char content_type[128];
        char authorization[256]; /* the Authorization header */
        int64_t at_ms;           /* test_now_ms() at arrival */
        int status;              /* what the sink answered */
};

/* Starts a sink on 127.0.0.1 (a free port); aborts the test on failure. */
struct worker_sink *worker_sink_start(void);
void worker_sink_stop(struct worker_sink *s);

/* "http://127.0.0.1:PORT" (owned by the sink). */
const char *worker_sink_url(const struct worker_sink *s);

/* A copy of text with every "SINK" replaced by the sink's base URL (caller frees). */
char *worker_sink_expand(const struct worker_sink *s, const char *text);

/* Requests whose path starts with prefix ("" for all). */
int worker_sink_count(struct worker_sink *s, const char *prefix);

/* Distinct Idempotency-Key values among requests whose path starts with prefix. */
int worker_sink_distinct_keys(struct worker_sink *s, const char *prefix);

/* Copies the i-th request (in arrival order) whose path starts with prefix; 0 or -1. */
int worker_sink_get(struct worker_sink *s, const char *prefix, int i,
                    struct worker_sink_request *out);

/* ---- worker test helpers (owner connection; abort the test on failure) ------------- */

#include <stdbool.h>
#include <sys/types.h>
#include <libpq-fe.h>

/* A user named name; returns its id (malloc'd). */
char *worker_test_user(PGconn *owner, const char *name);

/* Workflow version `version` of `name` for user_id from JSON text; returns its id. */
char *worker_test_workflow(PGconn *owner, const char *user_id, const char *name, int version,
                           const char *definition);

/* A queued run of workflow_id with input (JSON object text, NULL for {}); returns its id. */
char *worker_test_run(PGconn *owner, const char *workflow_id, const char *input);

/* Waits until the run's status is one of the '|'-separated statuses; returns true when it
 * is, false after timeout_ms. */
bool worker_test_wait_status(PGconn *c, const char *run_id, const char *statuses, int timeout_ms);

/* An API token for user_id, inserted as the owner; the token itself is written to token,
 * which has room for AUTH_TOKEN_LEN + 1 bytes (src/api/auth_token.h). */
void worker_test_token(PGconn *owner, const char *user_id, char *token);

/* Starts `agently api` on a free loopback port against the database of owner_conninfo
 * (data dir dir, log dir/api.log) and waits until /healthz answers; base (len >= 64)
 * receives "http://127.0.0.1:PORT". Like the workers below, it is killed when the test
 * program exits if it still runs then (a failed assertion skips a test's teardown). */
pid_t worker_test_spawn_api(const char *owner_conninfo, const char *dir, char *base, size_t len);

/* Spawns `agently worker --id ID --lease L --heartbeat H [extra...]` against the database
 * of owner_conninfo, logging to log_path. extra is NULL-terminated (may be NULL). */
pid_t worker_test_spawn(const char *owner_conninfo, const char *id, const char *lease,
                        const char *heartbeat, const char *const *extra, const char *log_path);

/* Waits until the worker --id ID has registered (agently_workers; its first beat), at most
 * timeout_ms, and fails the test if it has not. By then its SIGTERM and SIGINT go to its
 * loop (a drain); a worker signalled sooner, still starting, dies of the signal instead. */
void worker_test_wait_registered(PGconn *owner, const char *id, int timeout_ms);

/* Asserts that the first value of a query (test_db_value's arguments) equals expected, and
 * frees it. */
#define assert_db_equal(expected, ...)                                                             \
        do {                                                                                       \
                char *_value = test_db_value(__VA_ARGS__);                                         \
                assert_non_null(_value);                                                           \
                assert_string_equal(_value, expected);                                             \
                free(_value);                                                                      \
        } while (0)
