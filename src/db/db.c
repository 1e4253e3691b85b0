/* Connections, statements and error mapping; see db.h. */
#include "db.h"

#include <errno.h>
#include <libpq-events.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "embedded_pg.h"
#include "strutil.h"

static __thread char last_error[1024];
static __thread void (*wait_hook)(void *arg, int fd);
static __thread void *wait_hook_arg;
static __thread char last_sqlstate[6];
static __thread char last_message[512];
static __thread char last_detail[512];
static __thread char last_hint[256];
static __thread bool last_raised;

/* The statement this thread left in flight (db_query_defer), if any. */
static __thread struct {
        PGconn *conn;
        void (*done)(void *arg, PGresult *res, int error);
        void *arg;
} deferred;

static void set_error(const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(const char *sqlstate, const char *fmt, ...)
{
        va_list ap;
        size_t n;

        va_start(ap, fmt);
        vsnprintf(last_error, sizeof(last_error), fmt, ap);
        va_end(ap);
        n = strlen(last_error);
        while (n > 0 && (last_error[n - 1] == '\n' || last_error[n - 1] == ' '))
                last_error[--n] = '\0';
        str_copy(last_sqlstate, sizeof(last_sqlstate), sqlstate ? sqlstate : "");
        str_copy(last_message, sizeof(last_message), last_error);
        last_detail[0] = last_hint[0] = '\0';
        last_raised = false;
}

const char *db_last_error(void)
{
        return last_error;
}

const char *db_last_sqlstate(void)
{
        return last_sqlstate;
}

struct db_error db_last_error_parts(void)
{
        return (struct db_error){.sqlstate = last_sqlstate,
                                 .message = last_message,
                                 .detail = last_detail,
                                 .hint = last_hint,
                                 .raised = last_raised};
}

const char *db_role_name(enum db_role role)
{
        switch (role) {
        case DB_ROLE_API:
                return "agently_api";
        case DB_ROLE_WORKER:
                return "agently_worker";
        case DB_ROLE_OWNER:
        default:
                return "owner";
        }
}

/* Appends keyword='value' to b, quoted per libpq's conninfo rules. */
static int conninfo_append(struct buf *b, const char *keyword, const char *value)
{
        int r = buf_printf(b, "%s%s='", b->len ? " " : "", keyword);

        for (const char *p = value; r == 0 && *p; p++) {
                if (*p == '\'' || *p == '\\')
                        r = buf_append(b, "\\", 1);
                if (r == 0)
                        r = buf_append(b, p, 1);
        }
        return r < 0 ? r : buf_append(b, "'", 1);
}

/* The owner URL plus a startup option switching to the role: RLS then applies to it. */
static int conninfo_with_role(const char *url, const char *role, char **out)
{
        _cleanup_buf_ struct buf b;
        _cleanup_free_ char *role_option = str_printf("-c role=%s", role);
        char *err = NULL;
        PQconninfoOption *opts = PQconninfoParse(url, &err);
        bool had_options = false;
        int r = 0;

        buf_init(&b, 64 * 1024);
        if (!opts) {
                set_error(NULL, "AGENTLY_DATABASE_URL is not a valid connection string: %s",
                          err ? err : "parse error");
                PQfreemem(err);
                return -EINVAL;
        }
        if (!role_option)
                r = -ENOMEM;
        for (PQconninfoOption *o = opts; r == 0 && o->keyword; o++) {
                if (strcmp(o->keyword, "options") == 0) {
                        _cleanup_free_ char *merged =
                            str_printf("%s %s", o->val ? o->val : "", role_option);
                        had_options = true;
                        r = merged ? conninfo_append(&b, "options", merged) : -ENOMEM;
                } else if (o->val) {
                        r = conninfo_append(&b, o->keyword, o->val);
                }
        }
        if (r == 0 && !had_options)
                r = conninfo_append(&b, "options", role_option);
        PQconninfoFree(opts);
        if (r < 0)
                return r;
        *out = buf_steal(&b);
        return 0;
}

static bool conninfo_has(const PQconninfoOption *opts, const char *keyword)
{
        for (const PQconninfoOption *o = opts; o->keyword; o++)
                if (o->val && strcmp(o->keyword, keyword) == 0)
                        return true;
        return false;
}

int db_conninfo_with_limits(const char *conninfo, const struct db_session_limits *limits,
                            char **out)
{
        _cleanup_buf_ struct buf b, server;
        char *err = NULL;
        PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
        const char *user_options = NULL;
        int64_t keepalive_s = (limits->keepalive_ms + 999) / 1000;
        int r = 0;

        buf_init(&b, 64 * 1024);
        buf_init(&server, 4096);
        if (!opts) {
                set_error(NULL, "not a valid connection string: %s", err ? err : "parse error");
                PQfreemem(err);
                return -EINVAL;
        }
        /* the server's end: its own settings, ours first so an explicit -c of the
         * conninfo (later on the command line) wins */
        if (limits->idle_in_transaction_ms > 0)
                r = buf_printf(&server, " -c idle_in_transaction_session_timeout=%lld",
                               (long long)limits->idle_in_transaction_ms);
        if (r == 0 && keepalive_s > 0)
                r = buf_printf(&server,
                               " -c tcp_keepalives_idle=%lld -c tcp_keepalives_interval=%lld"
                               " -c tcp_keepalives_count=3",
                               (long long)keepalive_s, (long long)keepalive_s);
        if (r == 0 && limits->tcp_user_timeout_ms > 0)
                r = buf_printf(&server, " -c tcp_user_timeout=%lld",
                               (long long)limits->tcp_user_timeout_ms);
        for (PQconninfoOption *o = opts; r == 0 && o->keyword; o++) {
                if (strcmp(o->keyword, "options") == 0)
                        user_options = o->val;
                else if (o->val)
                        r = conninfo_append(&b, o->keyword, o->val);
        }
        if (r == 0 && (server.len || user_options)) {
                _cleanup_free_ char *merged = str_printf("%s %s", server.len ? server.data + 1 : "",
                                                         user_options ? user_options : "");
                r = merged ? conninfo_append(&b, "options", merged) : -ENOMEM;
        }
        /* the client's end: libpq's own keepalives, unless the conninfo sets them */
        struct {
                const char *keyword;
                long long value;
        } client[] = {
            {"keepalives", keepalive_s > 0},
            {"keepalives_idle", keepalive_s},
            {"keepalives_interval", keepalive_s},
            {"keepalives_count", 3},
            {"tcp_user_timeout", limits->tcp_user_timeout_ms},
        };
        for (size_t i = 0; r == 0 && i < sizeof(client) / sizeof(client[0]); i++) {
                char value[24];
                if (client[i].value <= 0 || (i > 0 && i < 4 && keepalive_s <= 0) ||
                    conninfo_has(opts, client[i].keyword))
                        continue;
                snprintf(value, sizeof(value), "%lld", client[i].value);
                r = conninfo_append(&b, client[i].keyword, value);
        }
        if (r == 0 && limits->application_name && !conninfo_has(opts, "fallback_application_name"))
                r = conninfo_append(&b, "fallback_application_name", limits->application_name);
        PQconninfoFree(opts);
        if (r < 0)
                return r;
        *out = buf_steal(&b);
        return 0;
}

int db_conninfo_for_role(const char *data_dir, enum db_role role, char **out)
{
        const char *url = getenv("AGENTLY_DATABASE_URL");

        if (!str_is_empty(url)) {
                const char *specific = NULL;
                if (role == DB_ROLE_OWNER) {
                        *out = strdup(url);
                        return *out ? 0 : -ENOMEM;
                }
                specific = getenv(role == DB_ROLE_API ? "AGENTLY_API_DATABASE_URL"
                                                      : "AGENTLY_WORKER_DATABASE_URL");
                if (!str_is_empty(specific)) {
                        *out = strdup(specific);
                        return *out ? 0 : -ENOMEM;
                }
                return conninfo_with_role(url, db_role_name(role), out);
        }

        struct embedded_pg *pg = NULL;
        int r = embedded_pg_open(data_dir, &pg);
        if (r < 0)
                return r; /* embedded_pg_open set a message */
        if (!embedded_pg_initialized(pg)) {
                set_error(NULL,
                          "no database: %s holds no embedded Postgres and AGENTLY_DATABASE_URL "
                          "is not set; run `agently up --data-dir %s` first or set "
                          "AGENTLY_DATABASE_URL",
                          embedded_pg_data_dir(pg), embedded_pg_data_dir(pg));
                embedded_pg_free(pg);
                return -ENOENT;
        }
        *out = embedded_pg_conninfo(
            pg, role == DB_ROLE_OWNER ? EMBEDDED_PG_SUPERUSER : db_role_name(role),
            EMBEDDED_PG_DATABASE);
        embedded_pg_free(pg);
        return *out ? 0 : -ENOMEM;
}

void db_set_error(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(last_error, sizeof(last_error), fmt, ap);
        va_end(ap);
        last_sqlstate[0] = '\0';
        str_copy(last_message, sizeof(last_message), last_error);
        last_detail[0] = last_hint[0] = '\0';
        last_raised = false;
}

int db_connect(const char *conninfo, PGconn **out)
{
        PGconn *c = PQconnectdb(conninfo);

        *out = NULL;
        if (!c) {
                set_error(NULL, "could not allocate a database connection");
                return -ENOMEM;
        }
        if (PQstatus(c) != CONNECTION_OK) {
                set_error(NULL, "could not connect to the database: %s", PQerrorMessage(c));
                PQfinish(c);
                return -ECONNREFUSED;
        }
        *out = c;
        return 0;
}

int db_result_error(PGconn *c, const PGresult *res)
{
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = res ? PQresultErrorMessage(res) : NULL;

        if (!msg || !*msg)
                msg = PQerrorMessage(c);
        set_error(state, "%s", msg);
        if (state) { /* the parts a person may read (db_last_error_parts) */
                const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
                const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
                const char *source = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
                str_copy(last_message, sizeof(last_message), primary ? primary : "");
                str_copy(last_detail, sizeof(last_detail), detail ? detail : "");
                str_copy(last_hint, sizeof(last_hint), hint ? hint : "");
                /* PL/pgSQL's RAISE is reported from exec_stmt_raise (pl_exec.c) in every
                 * Postgres version; Postgres' own errors come from elsewhere */
                last_raised = source && strcmp(source, "exec_stmt_raise") == 0;
        }
        if (PQstatus(c) == CONNECTION_BAD)
                return -ECONNRESET;
        if (!state)
                return -EIO;
        if (strcmp(state, "23505") == 0)
                return -EEXIST;
        if (strcmp(state, "42501") == 0)
                return -EACCES;
        if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
            strcmp(state, "55P03") == 0)
                return -EAGAIN;
        if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
            strcmp(state, "P0001") == 0)
                return -EINVAL;
        /* 57014 (query_canceled: statement_timeout, or a cancel request) leaves the
         * connection usable; the rest of class 57 (shutdown, crash, a dropped database) and
         * class 08 mean it is going or gone */
        if (strcmp(state, "57014") == 0)
                return -ETIMEDOUT;
        if (strncmp(state, "08", 2) == 0 || strncmp(state, "57", 2) == 0)
                return -ECONNRESET;
        return -EIO;
}

int db_exec(PGconn *c, const char *sql)
{
        db_settle(c);
        _cleanup_pgresult_ PGresult *res = PQexec(c, sql);
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY)
                return 0;
        return db_result_error(c, res);
}

/*
 * The statements prepared on a connection (db_query_prepared_between, db_query_send), by the
 * address of their text (a constant of the caller's): the instance data of a libpq event procedure,
 * so it lives and dies with the connection and is emptied when libpq resets it (a new session has
 * none).
 */
#define PREPARED_MAX 16

struct prepared {
        const char *sql[PREPARED_MAX];
        int n;
        int generation; /* part of the names: a new one after a statement went stale */
};

static int prepared_event(PGEventId id, void *info, void *pass)
{
        (void)pass;
        if (id == PGEVT_CONNRESET) {
                PGconn *c = ((PGEventConnReset *)info)->conn;
                struct prepared *p = PQinstanceData(c, prepared_event);
                if (p)
                        p->n = 0;
        } else if (id == PGEVT_CONNDESTROY) {
                PGconn *c = ((PGEventConnDestroy *)info)->conn;
                free(PQinstanceData(c, prepared_event));
        }
        return 1;
}

/* This connection's list, made on first use; NULL when it cannot be (then nothing is
 * prepared: the statement is sent as db_query_between sends it). */
static struct prepared *prepared_of(PGconn *c)
{
        struct prepared *p = PQinstanceData(c, prepared_event);

        if (p)
                return p;
        p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        if (!PQregisterEventProc(c, prepared_event, "agently prepared statements", NULL) ||
            !PQsetInstanceData(c, prepared_event, p)) {
                free(p);
                return NULL;
        }
        return p;
}

/* The statement's place in this connection's list (its name is "agently_<generation>_<place>"),
 * or -1 when it is not prepared. */
static int prepared_index(const struct prepared *p, const char *sql)
{
        for (int i = 0; p && i < p->n; i++)
                if (p->sql[i] == sql)
                        return i;
        return -1;
}

/* The rule for a prepared statement gone stale: its result is "cached plan must not change
 * result type" (0A000: a function it calls was replaced with another shape while the session
 * lived) or "prepared statement does not exist" (26000: DISCARD ALL). Such a result fails its
 * call once; the connection's list is emptied and the next calls prepare every statement
 * again, under new names. */
static void prepared_forget_if_stale(PGconn *c, const PGresult *res)
{
        struct prepared *p = PQinstanceData(c, prepared_event);
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

        if (p && state && (strcmp(state, "0A000") == 0 || strcmp(state, "26000") == 0)) {
                p->n = 0;
                p->generation++;
        }
}

/* res when it is a statement's success, else NULL with res cleared and the error recorded
 * (db_last_error()); *error (may be NULL) is 0 or the negative errno. */
static PGresult *result_or_error(PGconn *c, PGresult *res, int *error)
{
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        int r = 0;

        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
                r = db_result_error(c, res);
                prepared_forget_if_stale(c, res);
                if (res)
                        PQclear(res);
                res = NULL;
        }
        if (error)
                *error = r;
        return res;
}

PGresult *db_query(PGconn *c, const char *sql, int nparams, const char *const *params, int *error)
{
        db_settle(c);
        return result_or_error(c, PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0),
                               error);
}

static void wait_result(PGconn *c);

/* The name sql is prepared under on c, prepared first when it is not yet (a round trip of
 * its own, once per session); NULL when it is not and cannot be (the list is full, or the
 * prepare failed: the statement then goes unnamed, and fails the same way if it must). */
static const char *prepared_name(PGconn *c, const char *sql, int nparams, char name[32])
{
        struct prepared *p = prepared_of(c);
        int index = prepared_index(p, sql);
        bool ok;

        if (!p || (index < 0 && p->n == PREPARED_MAX))
                return NULL;
        snprintf(name, 32, "agently_%d_%d", p->generation, index < 0 ? p->n : index);
        if (index >= 0)
                return name;
        if (!PQsendPrepare(c, name, sql, nparams, NULL))
                return NULL;
        wait_result(c);
        PGresult *res = PQgetResult(c), *more;
        ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        while ((more = PQgetResult(c)))
                PQclear(more);
        if (!ok)
                return NULL;
        /* a named statement outlives a failed transaction: it is there */
        p->sql[p->n++] = sql;
        return name;
}

int db_query_send(PGconn *c, const char *sql, int nparams, const char *const *params)
{
        char name[32];
        const char *prepared;

        db_settle(c);
        prepared = prepared_name(c, sql, nparams, name);
        /* PQflush: all of it leaves now (a blocking connection waits until it has) */
        if (!(prepared ? PQsendQueryPrepared(c, prepared, nparams, params, NULL, NULL, 0)
                       : PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0)) ||
            PQflush(c) != 0)
                return db_result_error(c, NULL);
        return 0;
}

PGresult *db_query_result(PGconn *c, int *error)
{
        PGresult *res = PQgetResult(c), *more;

        /* one statement, one result; reading to the end leaves c ready for the next */
        while ((more = PQgetResult(c)))
                PQclear(more);
        return result_or_error(c, res, error);
}

int db_query_defer(PGconn *c, const char *sql, int nparams, const char *const *params,
                   void (*done)(void *arg, PGresult *res, int error), void *arg)
{
        int r = db_query_send(c, sql, nparams, params); /* settles the one before */

        if (r < 0)
                return r;
        deferred.conn = c;
        deferred.done = done;
        deferred.arg = arg;
        return 0;
}

bool db_deferred(const PGconn *c)
{
        return c && deferred.conn == c;
}

void db_settle(PGconn *c)
{
        void (*done)(void *, PGresult *, int) = deferred.done;
        void *arg = deferred.arg;
        int r = 0;

        if (!c || deferred.conn != c)
                return;
        wait_result(c);
        PGresult *res = db_query_result(c, &r);
        /* emptied first: done may leave another statement in flight */
        deferred.conn = NULL;
        deferred.done = NULL;
        deferred.arg = NULL;
        done(arg, res, res ? 0 : r < 0 ? r : -EIO);
}

void db_poll_deferred(PGconn *c)
{
        if (!db_deferred(c))
                return;
        /* a connection that failed has its error to give at once */
        if (!PQconsumeInput(c) || !PQisBusy(c))
                db_settle(c);
}

void db_set_wait_hook(void (*wait)(void *arg, int fd), void *arg)
{
        wait_hook = wait;
        wait_hook_arg = arg;
}

/* Until PQgetResult would not block: the thread's wait hook, or nothing (PQgetResult then
 * blocks itself). */
static void wait_result(PGconn *c)
{
        while (wait_hook && PQisBusy(c)) {
                wait_hook(wait_hook_arg, PQsocket(c));
                if (!PQconsumeInput(c))
                        return; /* the connection failed: PQgetResult says how */
        }
}

/* The pipeline of db_query_between; with prepare, sql is sent as a prepared statement of
 * the connection (prepared in the same pipeline on its first use). */
static PGresult *query_between(PGconn *c, const char *before, const char *sql, int nparams,
                               const char *const *params, const char *after, bool prepare,
                               int *error)
{
        const char *stmts[] = {before, sql, after};
        PGresult *out = NULL, *res;
        int r = 0, sent = 0, index = -1;
        bool preparing = false;
        struct prepared *p = prepare ? prepared_of(c) : NULL;
        char name[32];

        if (p) {
                index = prepared_index(p, sql);
                if (index < 0 && p->n < PREPARED_MAX) {
                        index = p->n;
                        preparing = true;
                }
                snprintf(name, sizeof(name), "agently_%d_%d", p->generation, index);
        }
        if (index < 0 && !before && !after)
                return db_query(c, sql, nparams, params, error);
        db_settle(c);
        if (!PQenterPipelineMode(c)) {
                r = db_result_error(c, NULL);
                goto out;
        }
        for (int i = 0; i < 3; i++) {
                if (!stmts[i])
                        continue;
                if (i == 1 && preparing) {
                        if (!PQsendPrepare(c, name, sql, nparams, NULL))
                                break;
                        sent |= 1 << 3;
                }
                if (i == 1 && index >= 0
                        ? !PQsendQueryPrepared(c, name, nparams, params, NULL, NULL, 0)
                        : !PQsendQueryParams(c, stmts[i], i == 1 ? nparams : 0, NULL,
                                             i == 1 ? params : NULL, NULL, NULL, 0))
                        break;
                sent |= 1 << i;
        }
        if (!PQpipelineSync(c)) {
                /* nothing can be read back: the connection is gone */
                r = db_result_error(c, NULL);
                PQexitPipelineMode(c);
                goto out;
        }
        /* the results in the order sent: before, the prepare (3), sql, after */
        for (int k = 0; k < 4; k++) {
                int i = k == 0 ? 0 : k == 1 ? 3 : k - 1;
                if (!(sent & (1 << i)))
                        continue;
                wait_result(c);
                res = PQgetResult(c);
                bool got = res != NULL;
                ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
                if (i == 3 && st == PGRES_COMMAND_OK) {
                        /* a named statement outlives a failed transaction: it is there */
                        p->sql[p->n++] = sql;
                } else if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
                        if (i == 1 && r == 0) {
                                out = res;
                                res = NULL;
                        }
                } else if (st != PGRES_PIPELINE_ABORTED && r == 0) {
                        r = db_result_error(c, res);
                        if (i == 1 && index >= 0)
                                prepared_forget_if_stale(c, res);
                }
                if (res)
                        PQclear(res);
                /* each statement's results end with a NULL */
                while (got && (res = PQgetResult(c)))
                        PQclear(res);
        }
        /* the sync's own result, then the pipeline is empty */
        while ((res = PQgetResult(c))) {
                ExecStatusType st = PQresultStatus(res);
                PQclear(res);
                if (st == PGRES_PIPELINE_SYNC)
                        break;
        }
        if (!PQexitPipelineMode(c) && r == 0)
                r = db_result_error(c, NULL);
        if (r == 0 && (sent & 7) != ((before ? 1 : 0) | 2 | (after ? 4 : 0)))
                r = db_result_error(c, NULL);
out:
        if (r < 0 && out) {
                PQclear(out);
                out = NULL;
        }
        if (error)
                *error = r;
        return out;
}

PGresult *db_query_between(PGconn *c, const char *before, const char *sql, int nparams,
                           const char *const *params, const char *after, int *error)
{
        return query_between(c, before, sql, nparams, params, after, false, error);
}

PGresult *db_query_prepared_between(PGconn *c, const char *before, const char *sql, int nparams,
                                    const char *const *params, const char *after, int *error)
{
        return query_between(c, before, sql, nparams, params, after, true, error);
}

int db_begin(PGconn *c)
{
        return db_exec(c, "BEGIN");
}

int db_commit(PGconn *c)
{
        return db_exec(c, "COMMIT");
}

void db_rollback(PGconn *c)
{
        PGresult *res;

        db_settle(c);
        if (PQtransactionStatus(c) == PQTRANS_IDLE)
                return;
        res = PQexec(c, "ROLLBACK");
        if (res)
                PQclear(res);
}

int db_set_user(PGconn *c, const char *user_id)
{
        const char *params[] = {user_id};
        int r;
        _cleanup_pgresult_ PGresult *res =
            db_query(c, "SELECT set_config('agently.user_id', $1, true)", 1, params, &r);
        return res ? 0 : r;
}
