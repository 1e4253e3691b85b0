/*
 * Reaching Postgres: connection strings per role, connecting, running statements, and
 * mapping SQLSTATEs to negative errno values. The module never logs; a failed call leaves a
 * message in a thread-local buffer that db_last_error() returns until the next call.
 *
 * Roles: the owner runs migrations; `agently_api` serves users under row-level security;
 * `agently_worker` is the trusted data plane. See docs/data-model.md.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <libpq-fe.h>

#include "cleanup.h"

enum db_role {
        DB_ROLE_OWNER,
        DB_ROLE_API,
        DB_ROLE_WORKER,
};

const char *db_role_name(enum db_role role);

/*
 * Resolves the connection string for role into a malloc'd *out:
 *  - AGENTLY_DATABASE_URL set: that URL is the owner's; the api and worker use
 *    AGENTLY_API_DATABASE_URL / AGENTLY_WORKER_DATABASE_URL when set, otherwise the owner's
 *    URL with `options=-c role=agently_api` (or agently_worker), so RLS applies to them;
 *  - otherwise the embedded Postgres under data_dir (default ./.agently), which must have
 *    been started by `agently up` (or the test harness).
 * Returns -ENOENT with a hint in db_last_error() when neither is available.
 */
int db_conninfo_for_role(const char *data_dir, enum db_role role, char **out);

/*
 * Limits for a connection whose transactions take row locks that others wait for, so a
 * client that freezes (SIGSTOP, a long pause) or is cut off (a partition) cannot keep them
 * for long. (No statement_timeout: a running statement is the server's own work, and its
 * locks go when it ends.) Each is a server setting sent at connect time (options=-c ...), so it
 * survives PQreset(); a zero field leaves that setting at the server's or the conninfo's value.
 */
struct db_session_limits {
        int64_t idle_in_transaction_ms; /* the server ends a session idle that long in a
                                         * transaction (its locks go with it) */
        int64_t keepalive_ms;           /* TCP keepalive, both ends: probe after this much
                                         * silence, then every keepalive_ms; 3 unanswered
                                         * probes end the connection */
        int64_t tcp_user_timeout_ms;    /* both ends: data unacknowledged this long ends it */
        const char *application_name;   /* fallback_application_name (pg_stat_activity) */
};

/* conninfo with limits applied, into a malloc'd *out. Settings the conninfo already makes
 * (its own keepalives_*, its own -c options) win over limits. 0 or a negative errno. */
int db_conninfo_with_limits(const char *conninfo, const struct db_session_limits *limits,
                            char **out);

/* Connects (blocking). On failure returns a negative errno and the reason is in
 * db_last_error(); *out is NULL. */
int db_connect(const char *conninfo, PGconn **out);

/* Records a message for db_last_error(); for the modules of src/db. */
void db_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The last error message of this thread (never NULL). */
const char *db_last_error(void);
/* The last SQLSTATE of this thread, "" when the error was not from the server. */
const char *db_last_sqlstate(void);

/*
 * The last error of this thread in parts, for a message a person reads (db_last_error() is
 * the whole report for a log: "ERROR:", DETAIL and CONTEXT lines, the SQL function and its
 * line). message is the primary message alone; detail and hint are the DETAIL and HINT
 * fields ("" when none). raised is true when a RAISE in a SQL function wrote the message,
 * so the text is the project's own words (migrations/), not Postgres'. For an error that
 * did not come from the server, sqlstate is "", message is db_last_error() and raised is
 * false. The strings live until this thread's next db call.
 */
struct db_error {
        const char *sqlstate;
        const char *message;
        const char *detail;
        const char *hint;
        bool raised;
};
struct db_error db_last_error_parts(void);

/* Maps a failed result to a negative errno: -EEXIST unique violation, -EACCES privilege,
 * -EAGAIN serialization/deadlock, -EINVAL data/constraint errors, -ETIMEDOUT a statement
 * canceled (statement_timeout or a cancel request: the connection stays usable),
 * -ECONNRESET lost connection, -EIO anything else; also records db_last_error(). */
int db_result_error(PGconn *c, const PGresult *res);

/* Runs one or more statements without parameters; 0 or a negative errno. */
int db_exec(PGconn *c, const char *sql);

/*
 * Runs a parameterised statement (text parameters, NULL = SQL NULL). Returns the result on
 * success (PGRES_COMMAND_OK or PGRES_TUPLES_OK), the caller owns it; NULL on failure with
 * *error (if non-NULL) set to a negative errno.
 */
PGresult *db_query(PGconn *c, const char *sql, int nparams, const char *const *params, int *error);

/*
 * db_query's statement with `before` and/or `after` (parameterless statements, either may
 * be NULL) in one round trip (libpq's pipeline mode): BEGIN and a transaction's first
 * statement, or its last statement and COMMIT. Returns sql's result as db_query does; NULL
 * with *error set if any of the three failed. The statements after a failed one are not
 * run, and a transaction the failure happened in is left failed: roll it back.
 */
PGresult *db_query_between(PGconn *c, const char *before, const char *sql, int nparams,
                           const char *const *params, const char *after, int *error);

/*
 * db_query_between (before and after may both be NULL) with sql as a statement prepared on
 * c: the first call on a connection prepares it in the same round trip, later ones only
 * bind and execute it, so the server parses, analyses and plans it once per session instead
 * of on every call (for the worker's claim and writes, which call functions whose own plans
 * are kept, that was most of what the server did besides the work). sql is told apart by
 * its address: pass a string constant, never a text built per call. Up to 16 statements per
 * connection are prepared; further ones are sent as db_query_between sends them.
 */
PGresult *db_query_prepared_between(PGconn *c, const char *before, const char *sql, int nparams,
                                    const char *const *params, const char *after, int *error);

/*
 * db_query in two halves, to do something while the statement runs: db_query_send sends it
 * (all of it: 0, or a negative errno with db_last_error() set), db_query_result waits for
 * its result and returns it as db_query does. Between the two nothing else may use c.
 * sql is sent as a statement prepared on c, as db_query_prepared_between does (its first
 * call on a connection prepares it, in a round trip of its own): pass a string constant.
 * A prepared statement gone stale fails its one call, as there.
 */
int db_query_send(PGconn *c, const char *sql, int nparams, const char *const *params);
PGresult *db_query_result(PGconn *c, int *error);

/*
 * A statement left in flight, for a caller with other work to do until its result (src/agent:
 * an LLM call's journal write while the next request is read). db_query_defer sends it as
 * db_query_send does and returns; its result goes to done(arg, res, error) — res as
 * db_query_result gives it (done owns it), or NULL and a negative errno — once it is read:
 * by db_settle(c), which every statement of this module on c sends first (so nothing is
 * ever sent behind it unread, nor before it), or by db_poll_deferred once the socket is
 * readable. One per thread at a time: another one settles it first. done runs inside
 * whatever call settles it, so it must not use c; it may only take note. Settle before
 * PQreset or PQfinish.
 */
int db_query_defer(PGconn *c, const char *sql, int nparams, const char *const *params,
                   void (*done)(void *arg, PGresult *res, int error), void *arg);
/* Whether c has a statement of db_query_defer in flight. */
bool db_deferred(const PGconn *c);
/* Waits for c's statement in flight (the wait hook's way) and hands its result over; nothing
 * when there is none. */
void db_settle(PGconn *c);
/* Reads what arrived on c and settles its statement in flight once its result is whole;
 * never blocks. */
void db_poll_deferred(PGconn *c);

/*
 * This thread's wait hook (NULL: none): while db_query_between waits for the server, it
 * calls wait(arg, fd) with the connection's socket instead of blocking, again until a
 * result is there. wait returns when fd is readable or sooner (it may do other work of the
 * thread meanwhile, but no statement on that connection). The worker's loop drives its
 * HTTP transfers this way while its turn's writes and COMMIT run.
 */
void db_set_wait_hook(void (*wait)(void *arg, int fd), void *arg);

int db_begin(PGconn *c);
int db_commit(PGconn *c);
void db_rollback(PGconn *c);

/* Sets the tenant for the current transaction: set_config('agently.user_id', id, true). */
int db_set_user(PGconn *c, const char *user_id);

static inline void db_clearp(PGresult **r)
{
        if (*r)
                PQclear(*r);
}
static inline void db_finishp(PGconn **c)
{
        if (*c)
                PQfinish(*c);
}
#define _cleanup_pgresult_ _cleanup_(db_clearp)
#define _cleanup_pgconn_   _cleanup_(db_finishp)
