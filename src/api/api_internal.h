/*
 * Internals shared by the files of src/api: the request and response of one HTTP exchange,
 * the route table, the database pool, JSON error helpers and SSE streams. Not used outside the
 * module (tests read the route table through api_routes.h).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>

#include "api.h"
#include "api_routes.h"
#include "buf.h"

#define API_MAX_PATH_PARAMS  4
#define API_MAX_HEADERS      100
#define API_MAX_HEADER_BYTES (32 * 1024)
#define API_MAX_JSON_DEPTH   64
#define API_MAX_URL_BYTES    4096
#define API_ERROR_TEXT_MAX   1024 /* bytes of one text of an error body */

/* Where a person without a working token gets one. `agently token create` itself needs a
 * token, so the first one is the admin token `agently up` wrote. */
#define API_HINT_TOKEN                                                                             \
        "use the admin token `agently up` wrote to its data directory: export "                    \
        "AGENTLY_TOKEN=$(cat .agently/admin-token) (or --data-dir DIR); with a working token, "    \
        "`agently token create` makes more"

/* One log event as the API shows it (docs/openapi.json "Event"); columns of logs. */
#define API_EVENT_JSON                                                                             \
        "json_build_object('seq', seq, 'kind', kind, 'level', level, 'node_id', node_id, "         \
        "'attempt', attempt, 'message', message, 'data', data, 'created_at', created_at)"

struct api_server;

struct api_request {
        struct api_server *server;
        struct MHD_Connection *connection;
        const struct api_route *route;
        const char *method;
        const char *path;
        const char *params[API_MAX_PATH_PARAMS]; /* path parameters, in pattern order */
        char *param_storage;                     /* owns params' strings */
        const char *body;                        /* NUL-terminated, may be "" */
        size_t body_len;
        json_t *json;     /* parsed body (owned), after api_request_json() */
        PGconn *db;       /* in a transaction with agently.user_id set (auth routes) */
        char user_id[40]; /* authenticated user */
        char user_name[80];
        bool is_admin;
        char session_id[40]; /* the dashboard session that authenticated it, or "" (bearer) */
        bool may_commit;     /* nothing is written after the handler: api_query_json_last */
        bool committed;      /* the handler's last statement committed the transaction */
};

struct api_response {
        unsigned status;
        json_t *json; /* body (owned) */
        char *text;   /* or a text body (owned), with content_type */
        const char *content_type;
        const char *allow;        /* Allow header for 405 */
        bool replayed;            /* Idempotent-Replayed: true */
        bool unauthorized;        /* add WWW-Authenticate */
        struct MHD_Response *raw; /* a ready response (SSE); status as given */
        char *set_cookie;         /* Set-Cookie value (owned), or NULL */
        unsigned retry_after_s;   /* Retry-After of a 503 that asks to be retried, or 0 */
};

/* The Retry-After (seconds) of a 503 a database failure answers: the pool's reconnect
 * backoff is 1 s, a busy or slow database needs a moment more. */
#define API_RETRY_AFTER_S 2

/* Sets an error response: {"error": {"code", "message", "detail", "hint"}}. detail and hint
 * may be NULL (JSON null). Returns status so handlers can `return api_error(...)`. */
unsigned api_error(struct api_response *resp, unsigned status, const char *code,
                   const char *message, const char *detail, const char *hint);
/* Same with a printf-formatted detail. */
unsigned api_errorf(struct api_response *resp, unsigned status, const char *code,
                    const char *message, const char *hint, const char *detail_fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The error for a failed database call r (negative errno), the one place that turns
 * database failures into what users read: 503 when the database is unreachable, busy or a
 * statement ran past statement_timeout (`timeout`), each with Retry-After,
 * 4xx by SQLSTATE with a RAISE message of our SQL functions as the detail, 500 otherwise;
 * never Postgres' own text (api_server.c). */
unsigned api_db_error(struct api_response *resp, int r);
/* A handler's own words for SQLSTATEs its statement raises, tried before the general table;
 * a list ended by {NULL}. */
struct api_db_error_case {
        const char *sqlstate; /* exact ("55000"), or a class ("22") */
        unsigned status;
        const char *code, *message, *hint;
};
unsigned api_db_error_with(struct api_response *resp, int r, const struct api_db_error_case *cases);
/* Sets a JSON body (steals obj). */
unsigned api_json(struct api_response *resp, unsigned status, json_t *obj);

/* Parses the request body as JSON with a depth limit; on failure sets a 400 response
 * (line, column, position) and returns NULL. The result is borrowed from req. */
json_t *api_request_json(struct api_request *req, struct api_response *resp);

/* Query-string argument or NULL. */
const char *api_query(struct api_request *req, const char *name);
/* Request header or NULL. */
const char *api_header(struct api_request *req, const char *name);

/*
 * Runs a statement in the request's transaction and parses its first row's first column
 * (json or jsonb text) into *out (new reference; NULL when no row or SQL NULL). Returns 1
 * for a row, 0 for none, a negative errno on failure (then api_db_error() fits).
 */
int api_query_json(struct api_request *req, const char *sql, int n, const char *const *params,
                   json_t **out);

/*
 * api_query_json with sql prepared on the pooled connection (src/db's
 * db_query_prepared_between): the server parses and plans it once per connection instead of
 * at every request. For the large reads, whose planning is most of their time (the run's
 * read: ~4.8 ms planned every time, ~0.4 ms prepared). sql is told apart by its address:
 * a string constant, never a text built per request.
 */
int api_query_json_prepared(struct api_request *req, const char *sql, int n,
                            const char *const *params, json_t **out);

/*
 * api_query_json_prepared for a handler's last statement, after which it writes nothing:
 * when the request has nothing to write after the handler either (no Idempotency-Key
 * response to store), the COMMIT goes in the same round trip (libpq's pipeline mode) and
 * req->committed is set. A failure of the statement or of the COMMIT returns a negative
 * errno, as api_query_json does. sql: a string constant, as there.
 */
int api_query_json_last(struct api_request *req, const char *sql, int n, const char *const *params,
                        json_t **out);

/* Appends an event to a run's log in the request's transaction (kind e.g. "run.cancel_
 * requested"); data may be NULL. 0 or a negative errno. */
int api_append_event(struct api_request *req, const char *run_id, const char *kind,
                     const char *message, json_t *data);

/* True when s has the shape of a UUID (api_routes.c). */
bool api_is_uuid(const char *s);

/* ---- dashboard sessions (api_session.c) ---- */
#define API_SESSION_COOKIE "agently_session"
#define API_CSRF_HEADER    "X-CSRF-Token"
/* The session cookie of the request, or NULL. */
const char *api_session_cookie(struct api_request *req);
/* Authenticates the request by its session cookie in req's transaction (user set, like a
 * bearer token) and, for a method other than GET and HEAD, checks its CSRF token and Origin.
 * begin: "BEGIN" to open the transaction in the same round trip, or NULL when it is open.
 * Returns 0, or the status it answered (401 clears the cookie, 403 csrf_failed). */
unsigned api_session_authenticate(struct api_request *req, struct api_response *resp,
                                  const char *cookie, const char *begin);
unsigned api_h_session_create(struct api_request *req, struct api_response *resp);
unsigned api_h_session_get(struct api_request *req, struct api_response *resp);
unsigned api_h_session_delete(struct api_request *req, struct api_response *resp);
unsigned api_h_sessions_list(struct api_request *req, struct api_response *resp);
unsigned api_h_sessions_revoke(struct api_request *req, struct api_response *resp);

/* ---- the dashboard's files (api_static.c) ---- */
/* Where the built dashboard is: o->web_dir, AGENTLY_WEB_DIR, or the build directory's web/
 * (NULL when none is known). */
const char *api_static_dir(const struct api_options *o);
/* Answers GET url from the dashboard's files (an app route gets index.html). Returns the
 * status with resp->raw set, or 0 when there is nothing to serve (no build, no such asset). */
unsigned api_static_serve(const struct api_options *o, struct MHD_Connection *conn, const char *url,
                          struct api_response *resp);

/* ---- route helpers (api_routes.c), shared by the route files ---- */
/* 404 "<what> '<id>' does not exist"; returns 404. */
unsigned api_not_found(struct api_response *resp, const char *what, const char *id);
/* The body as a JSON object, borrowed from req ({} for an empty body when allow_empty);
 * NULL with a 400 response set. */
json_t *api_body_object(struct api_request *req, struct api_response *resp, bool allow_empty);
/* 400 when obj has a key not in allowed (NULL-terminated); else 0. */
unsigned api_reject_unknown_keys(json_t *obj, const char *const *allowed,
                                 struct api_response *resp);
/* The start of a handler that takes a JSON object body. When what is not NULL, the route's
 * first parameter is an id that must have a UUID's shape (else 404 "<what> '<id>' does not
 * exist"); then the body must be a JSON object ({} for an empty body when allow_empty) with no
 * key outside keys (NULL-terminated), else 400. True with *body borrowed from req; false with
 * *body NULL and the error response set (the handler returns resp->status). */
bool api_begin_body(struct api_request *req, struct api_response *resp, const char *what,
                    const char *const *keys, bool allow_empty, json_t **body);
/* The most filters an api_time_page query takes before its keyset parameters. */
#define API_TIME_PAGE_FILTERS_MAX 8
/* A list newest or oldest first, a page at a time keyed by (created_at, id): reads ?limit=
 * (default 50, at most 200) and ?cursor= (a previous page's next_cursor, "<timestamp>|<id>"),
 * then runs sql with $1..$n the n filters (borrowed; NULL for SQL NULL), $n+1 the cursor's
 * timestamp and $n+2 its id (both NULL on the first page), $n+3 the limit + 1; its rows are
 * (item json, created_at::text || '|' || id). Answers {"data", "next_cursor"} and returns
 * its status; a 400 for a bad limit or cursor. n is at most API_TIME_PAGE_FILTERS_MAX. */
unsigned api_time_page(struct api_request *req, struct api_response *resp, const char *sql, int n,
                       const char *const *filters);
/* Whether run id exists for the request's user (row-level security: only their own runs):
 * 0, with its status into *status when status is not NULL (malloc'd, caller frees); else
 * the 404 (an id not shaped as a UUID too) or the database error is answered and its status
 * returned. */
unsigned api_run_status(struct api_request *req, struct api_response *resp, const char *id,
                        char **status);
/* Answers {"data", "next_cursor"} from rows (item json, cursor key text) of a query with
 * LIMIT limit + 1. */
unsigned api_page_query(struct api_request *req, struct api_response *resp, const char *sql, int n,
                        const char *const *params, int limit);
/* Answers the first row's JSON with status, or a 404 naming what and id. */
unsigned api_respond_query(struct api_request *req, struct api_response *resp, unsigned status,
                           const char *sql, int n, const char *const *params, const char *what,
                           const char *id);

/* ---- approvals and the inbox (api_approvals.c) ---- */
unsigned api_h_approvals_list(struct api_request *req, struct api_response *resp);
unsigned api_h_approvals_get(struct api_request *req, struct api_response *resp);
unsigned api_h_approvals_decide(struct api_request *req, struct api_response *resp);
unsigned api_h_approvals_reassign(struct api_request *req, struct api_response *resp);
unsigned api_h_approval_link_show(struct api_request *req, struct api_response *resp);
unsigned api_h_approval_link_decide(struct api_request *req, struct api_response *resp);
unsigned api_h_inbox(struct api_request *req, struct api_response *resp);
/* A name of a workflow or an agent: 1-63 of a-z 0-9 _ . -, starting with a letter or digit. */
bool api_is_name(const char *s);
/* A page keyed by name: ?limit= (default 50, at most 200) and ?cursor= decoded into *cursor
 * (the last name of the previous page; NULL without one; caller frees). 0 or a 400 status. */
unsigned api_page_begin_name(struct api_request *req, struct api_response *resp, int *limit,
                             char **cursor);

/* ---- versioned definitions (api_versioned.c) ---- */
/* A table of named, versioned definitions: columns user_id, name, version, definition,
 * definition_sha256 (workflows, agents). All static strings. */
struct api_versioned {
        const char *table;          /* "workflows" */
        const char *alias;          /* the row's alias in row_json: "w" */
        const char *what;           /* the advisory lock's namespace and a 404's noun:
                                     * "workflow" */
        const char *row_json;       /* the JSON answered for a version row, over alias */
        const char *summary_json;   /* a version in a list (no definition), over alias */
        const char *derived_column; /* NULL, or a jsonb column set to what the caller
                                     * derived from the definition (workflows.agent_refs) */
};
/* Applies def (already validated; borrowed) as the next version of name in t for the
 * request's user: 200 with the latest version when it has the same canonical text, else 201
 * with the new version max + 1 (its t->derived_column set to derived, borrowed; derived is
 * a function of def, so an unchanged def has it unchanged). Returns the status with the
 * response set (errors too). */
unsigned api_apply_versioned(struct api_request *req, struct api_response *resp,
                             const struct api_versioned *t, const char *name, const json_t *def,
                             const json_t *derived);

/* The 422 validation_failed answer to a definition the engine's rules refused: message
 * "the <what> definition is invalid", the first error's node, field and message as the
 * detail (and its node and field on the error), every error in "errors" (borrowed; a
 * reference is taken). Returns 422. */
unsigned api_definition_invalid(struct api_response *resp, const char *what, const char *hint,
                                json_t *errors);
/* GET of t's collection: the latest version of each name, a page at a time in name order
 * (?limit=, ?cursor=). Returns the status with the response set. */
unsigned api_versioned_list(struct api_request *req, struct api_response *resp,
                            const struct api_versioned *t);
/* GET of one name (the route's first parameter): the version ?version= names, else the
 * latest; 400 for a version that is not a positive integer, 404 when there is none. */
unsigned api_versioned_get(struct api_request *req, struct api_response *resp,
                           const struct api_versioned *t);
/* GET of a name's versions (the route's first parameter), newest first; 404 when the name
 * has none. */
unsigned api_versioned_versions(struct api_request *req, struct api_response *resp,
                                const struct api_versioned *t);

/* ---- agent definitions (api_agents.c) ---- */
unsigned api_h_agents_apply(struct api_request *req, struct api_response *resp);
unsigned api_h_agents_list(struct api_request *req, struct api_response *resp);
unsigned api_h_agents_get(struct api_request *req, struct api_response *resp);
unsigned api_h_agents_versions(struct api_request *req, struct api_response *resp);
/* Checks a workflow's references to stored agents (refs: wf_agent_refs()) against the
 * request's user's agents: each must name an agent of theirs, and a version it has, and a
 * prompt must come from the agent or the node. Returns 0 when all do; 1 with *errors a new
 * array of validation errors ({"node", "field", "message"}, as wf_parse's, appended to
 * *errors when it is an array already); a negative errno from the database. */
int api_agent_refs_check(struct api_request *req, const json_t *refs, json_t **errors);

/* ---- an agent run's journal, a run's artifacts (api_run_extras.c) ---- */
unsigned api_h_agent_journal(struct api_request *req, struct api_response *resp);
unsigned api_h_artifacts_list(struct api_request *req, struct api_response *resp);
unsigned api_h_artifact_get(struct api_request *req, struct api_response *resp);

/* ---- SSE (api_sse.c) ---- */
struct api_sse_hub;
int api_sse_hub_start(struct api_server *server, struct api_sse_hub **out);
/* Ends every stream (each client gets its remaining data, then EOF), resumes every
 * suspended connection and waits up to timeout_ms for them to close. */
void api_sse_hub_stop(struct api_sse_hub *hub, int timeout_ms);
/* Creates the streaming response for run_id after seq `after` (owned by MHD once queued). */
struct MHD_Response *api_sse_open(struct api_sse_hub *hub, struct MHD_Connection *connection,
                                  const char *user_id, const char *run_id, int64_t after);

/* ---- database pool (api_server.c) ---- */
/* Takes a connection (waits up to a few seconds); NULL with *r = -EAGAIN (pool busy) or
 * -ECONNREFUSED (database down). */
PGconn *api_pool_acquire(struct api_server *server, int *r);
/* Opens a connection of the pool's kind (role agently_api, timeouts, UTC) outside the
 * pool, for a thread that keeps one (the SSE hub's LISTEN). 0 or a negative errno. */
int api_db_connect(struct api_server *server, PGconn **out);
/* Returns a connection; broken ones (or broken=true) are closed and reopened later. */
void api_pool_release(struct api_server *server, PGconn *c, bool broken);
const char *api_server_data_dir(struct api_server *server);
const struct api_options *api_server_options(struct api_server *server);
struct api_sse_hub *api_server_sse(struct api_server *server);
unsigned api_server_statement_timeout_ms(struct api_server *server);

/* ---- metrics (api_server.c) ---- */
void api_metrics_observe(size_t route_index, const char *method, unsigned status, double seconds);
/* Appends the in-process metrics (latency histograms) in Prometheus text format. */
int api_metrics_render_http(struct buf *b);
