/*
 * The HTTP server: libmicrohttpd with an epoll thread pool, request limits (headers, body,
 * JSON depth), routing, authentication, one database transaction per request, the
 * Idempotency-Key protocol, JSON errors, in-process latency metrics, and a clean shutdown
 * on SIGTERM/SIGINT. The route handlers are in api_routes.c, SSE in api_sse.c.
 */
#include "api_internal.h"
#include "pgjson.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "auth_token.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "redact.h"
#include "strutil.h"

#define POOL_WAIT_MS      3000
#define RECONNECT_BACKOFF 1000

struct pool_slot {
        PGconn *c;
        bool in_use;
};

struct api_server {
        const struct api_options *options;
        char *conninfo;
        pthread_mutex_t lock;
        pthread_cond_t freed;
        struct pool_slot *slots;
        unsigned nslots;
        int64_t last_connect_failure_ms;
        struct api_sse_hub *sse;
        atomic_uint open_connections; /* the whole daemon's (on_connection, accept_policy) */
};

/* One HTTP exchange (MHD's con_cls): lives from the first call of the access handler to
 * the completion notification. */
struct exchange {
        struct buf body;
        bool body_too_large;
        int64_t started_ns;
        int route_index; /* -1 unmatched */
        char method[12];
        unsigned status;
};

static int64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void api_options_default(struct api_options *o)
{
        *o = (struct api_options){
            .listen = "127.0.0.1:8080",
            .data_dir = NULL,
            .threads = 4,
            .db_pool_size = 8,
            .max_connections = 1024,
            .per_ip_connections = 512,
            .connection_timeout_s = 30,
            .statement_timeout_ms = 15000,
            .max_body = 1024 * 1024,
        };
}

const char *api_server_data_dir(struct api_server *server)
{
        return server->options->data_dir ? server->options->data_dir : ".agently";
}

const struct api_options *api_server_options(struct api_server *server)
{
        return server->options;
}

struct api_sse_hub *api_server_sse(struct api_server *server)
{
        return server->sse;
}

unsigned api_server_statement_timeout_ms(struct api_server *server)
{
        return server->options->statement_timeout_ms;
}

/* ---- database pool ---------------------------------------------------------------- */

/* jit = off: a request's statements are short, and JIT compiling costs 0.1-0.3 s each time.
 * The planner turns it on by estimated cost, and estimates overshoot on large runs (the
 * rows of a partial index: GET /v1/runs/{id} of a 20,000-node run spent 330 ms of its
 * 412 ms compiling). */
static int pool_connect(struct api_server *s, PGconn **out)
{
        _cleanup_free_ char *setup = str_printf("SET statement_timeout = %u; SET TimeZone = 'UTC'; "
                                                "SET idle_in_transaction_session_timeout = '60s'; "
                                                "SET jit = off",
                                                s->options->statement_timeout_ms);
        PGconn *c = NULL;
        int r;

        if (!setup)
                return -ENOMEM;
        r = db_connect(s->conninfo, &c);
        if (r < 0)
                return r;
        r = db_exec(c, setup);
        if (r < 0) {
                PQfinish(c);
                return r;
        }
        *out = c;
        return 0;
}

int api_db_connect(struct api_server *s, PGconn **out)
{
        return pool_connect(s, out);
}

PGconn *api_pool_acquire(struct api_server *s, int *r)
{
        struct timespec deadline;
        struct pool_slot *slot = NULL;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += POOL_WAIT_MS / 1000;
        pthread_mutex_lock(&s->lock);
        for (;;) {
                for (unsigned i = 0; i < s->nslots && !slot; i++)
                        if (!s->slots[i].in_use)
                                slot = &s->slots[i];
                if (slot)
                        break;
                if (pthread_cond_timedwait(&s->freed, &s->lock, &deadline) == ETIMEDOUT) {
                        pthread_mutex_unlock(&s->lock);
                        *r = -EAGAIN;
                        return NULL;
                }
        }
        slot->in_use = true;
        if (slot->c && PQstatus(slot->c) != CONNECTION_OK) {
                PQfinish(slot->c);
                slot->c = NULL;
        }
        if (!slot->c && mono_ns() / 1000000 - s->last_connect_failure_ms < RECONNECT_BACKOFF) {
                /* the database was unreachable a moment ago: fail fast instead of piling
                 * connection attempts onto a database that is restarting */
                slot->in_use = false;
                pthread_cond_signal(&s->freed);
                pthread_mutex_unlock(&s->lock);
                *r = -ECONNREFUSED;
                return NULL;
        }
        pthread_mutex_unlock(&s->lock);
        if (!slot->c) {
                int k = pool_connect(s, &slot->c);
                if (k < 0) {
                        pthread_mutex_lock(&s->lock);
                        s->last_connect_failure_ms = mono_ns() / 1000000;
                        slot->in_use = false;
                        pthread_cond_signal(&s->freed);
                        pthread_mutex_unlock(&s->lock);
                        log_warn("could not connect to the database: %s", db_last_error());
                        *r = -ECONNREFUSED;
                        return NULL;
                }
        }
        return slot->c;
}

void api_pool_release(struct api_server *s, PGconn *c, bool broken)
{
        if (!c)
                return;
        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < s->nslots; i++)
                if (s->slots[i].c == c) {
                        if (broken || PQstatus(c) != CONNECTION_OK ||
                            PQtransactionStatus(c) != PQTRANS_IDLE) {
                                PQfinish(c);
                                s->slots[i].c = NULL;
                        }
                        s->slots[i].in_use = false;
                        break;
                }
        pthread_cond_signal(&s->freed);
        pthread_mutex_unlock(&s->lock);
}

/* ---- responses -------------------------------------------------------------------- */

unsigned api_json(struct api_response *resp, unsigned status, json_t *obj)
{
        if (resp->json)
                json_decref(resp->json);
        resp->json = obj;
        resp->status = status;
        return status;
}

/* Error texts often quote what a client sent (a path, a parameter, a header), so they are
 * made valid UTF-8 here, where the JSON is built: a JSON string refuses anything else. */
static json_t *error_text(const char *s)
{
        _cleanup_free_ char *printable = NULL;

        if (!s)
                return json_null();
        printable = str_utf8_printable(s, API_ERROR_TEXT_MAX);
        return printable ? json_string(printable) : NULL;
}

unsigned api_error(struct api_response *resp, unsigned status, const char *code,
                   const char *message, const char *detail, const char *hint)
{
        json_t *e = json_object(), *inner = json_object();

        if (!e || !inner || json_object_set_new(inner, "code", error_text(code)) < 0 ||
            json_object_set_new(inner, "message", error_text(message)) < 0 ||
            json_object_set_new(inner, "detail", error_text(detail)) < 0 ||
            json_object_set_new(inner, "hint", error_text(hint)) < 0 ||
            json_object_set_new(e, "error", TAKE_PTR(inner)) < 0) {
                json_decref(inner);
                json_decref(e);
                e = NULL; /* send_response answers 500: only memory can be short here */
        }
        return api_json(resp, status, e);
}

unsigned api_errorf(struct api_response *resp, unsigned status, const char *code,
                    const char *message, const char *hint, const char *detail_fmt, ...)
{
        char detail[1024];
        va_list ap;

        va_start(ap, detail_fmt);
        vsnprintf(detail, sizeof(detail), detail_fmt, ap);
        va_end(ap);
        return api_error(resp, status, code, message, detail, hint);
}

/*
 * What a user sees of a failed database call: its SQLSTATE picks the status, the code and
 * a message; a message that a RAISE in one of our SQL functions wrote (the project's own
 * words) is the detail, with its HINT; Postgres' own text never leaves this function (it is
 * logged when a person must act). A handler's cases come first: it knows what a SQLSTATE of
 * its statement means. sqlstate is exact, or a two-character class.
 */
static const struct api_db_error_case db_error_cases[] = {
    {"23505", 409, "conflict", "the object already exists", NULL},
    {"42501", 403, "forbidden", "permission denied", NULL},
    {"P0002", 404, "not_found", "not found", NULL},
    {"55000", 409, "conflict", "the object's state does not allow this",
     "look at it again (GET) and retry if it changed"},
    {"57014", 503, "timeout", "the request took too long",
     "retry, or narrow the request (filters, a smaller limit)"},
    {"40001", 503, "busy", "the server is busy", "retry in a few seconds"},
    {"40P01", 503, "busy", "the server is busy", "retry in a few seconds"},
    {"55P03", 503, "busy", "the server is busy", "retry in a few seconds"},
    {"22021", 400, "invalid_value", "a text value is not valid UTF-8", "send UTF-8 text"},
    {"22", 400, "invalid_value", "a value was refused",
     "check the request against docs/openapi.yaml"},
    {"23", 400, "invalid_value", "a value was refused",
     "check the request against docs/openapi.yaml"},
    {"P0001", 400, "invalid_value", "a value was refused",
     "check the request against docs/openapi.yaml"},
    {NULL, 0, NULL, NULL, NULL},
};

static const struct api_db_error_case *db_error_case(const struct api_db_error_case *cases,
                                                     const char *state)
{
        for (size_t i = 0; cases && cases[i].sqlstate; i++) {
                const char *want = cases[i].sqlstate;
                if (strlen(want) == 2 ? strncmp(state, want, 2) == 0 : strcmp(state, want) == 0)
                        return &cases[i];
        }
        return NULL;
}

static unsigned db_error_answer(struct api_response *resp, int r,
                                const struct api_db_error_case *cases)
{
        struct db_error e = db_last_error_parts();
        const struct api_db_error_case *c = NULL;

        if (r == -ECONNRESET || r == -ECONNREFUSED || str_has_prefix(e.sqlstate, "08") ||
            strcmp(e.sqlstate, "57P01") == 0)
                return api_error(resp, 503, "database_unavailable", "the database is unavailable",
                                 NULL, "retry in a few seconds");
        if (r == -EAGAIN) /* the pool, a serialization failure, a deadlock, a lock timeout */
                return api_error(resp, 503, "busy", "the server is busy", NULL,
                                 "retry in a few seconds");
        if (r == -ENOMEM)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        if (*e.sqlstate)
                c = db_error_case(cases, e.sqlstate);
        if (!c && *e.sqlstate)
                c = db_error_case(db_error_cases, e.sqlstate);
        if (!c) {
                log_error("database error: %s", db_last_error());
                return api_error(resp, 500, "internal", "internal error", NULL,
                                 "retry; if it persists, the server log says more");
        }
        if (!e.raised)
                return api_error(resp, c->status, c->code, c->message,
                                 strcmp(c->code, "timeout") == 0
                                     ? "the database statement timeout was reached"
                                     : NULL,
                                 c->hint);
        _cleanup_free_ char *detail =
            *e.detail ? str_printf("%s (%s)", e.message, e.detail) : strdup(e.message);
        return api_error(resp, c->status, c->code, c->message, detail ? detail : e.message,
                         *e.hint ? e.hint : c->hint);
}

/* Every 503 of a database failure (unreachable, busy, a statement over statement_timeout)
 * asks to be retried: its Retry-After says when, so a client need not guess. */
unsigned api_db_error_with(struct api_response *resp, int r, const struct api_db_error_case *cases)
{
        unsigned status = db_error_answer(resp, r, cases);

        if (status == 503)
                resp->retry_after_s = API_RETRY_AFTER_S;
        return status;
}

unsigned api_db_error(struct api_response *resp, int r)
{
        return api_db_error_with(resp, r, NULL);
}

/* ---- request helpers -------------------------------------------------------------- */

const char *api_query(struct api_request *req, const char *name)
{
        return MHD_lookup_connection_value(req->connection, MHD_GET_ARGUMENT_KIND, name);
}

const char *api_header(struct api_request *req, const char *name)
{
        return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

/* The deepest nesting of arrays and objects in JSON text (strings skipped). */
static int json_depth(const char *s, size_t n)
{
        int depth = 0, max = 0;
        bool in_string = false;

        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (in_string) {
                        if (ch == '\\')
                                i++;
                        else if (ch == '"')
                                in_string = false;
                        continue;
                }
                if (ch == '"')
                        in_string = true;
                else if (ch == '[' || ch == '{') {
                        if (++depth > max)
                                max = depth;
                        if (max > API_MAX_JSON_DEPTH)
                                return max;
                } else if (ch == ']' || ch == '}')
                        depth--;
        }
        return max;
}

json_t *api_request_json(struct api_request *req, struct api_response *resp)
{
        json_error_t err;

        if (req->json)
                return req->json;
        if (req->body_len == 0) {
                api_error(resp, 400, "invalid_json", "the request body is empty",
                          "this route takes a JSON body", "send a JSON document");
                return NULL;
        }
        if (json_depth(req->body, req->body_len) > API_MAX_JSON_DEPTH) {
                api_errorf(resp, 400, "json_too_deep", "the JSON document is nested too deeply",
                           "flatten the document", "more than %d levels of arrays and objects",
                           API_MAX_JSON_DEPTH);
                return NULL;
        }
        req->json =
            json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
        if (!req->json) {
                char detail[300];
                snprintf(detail, sizeof(detail), "line %d, column %d (byte %d): %s", err.line,
                         err.column, err.position, err.text);
                api_error(resp, 400, "invalid_json", "the request body is not valid JSON", detail,
                          "fix the JSON at the position given");
                json_t *inner = json_object_get(resp->json, "error");
                json_object_set_new(inner, "line", json_integer(err.line));
                json_object_set_new(inner, "column", json_integer(err.column));
                json_object_set_new(inner, "position", json_integer(err.position));
                return NULL;
        }
        return req->json;
}

static int query_json(struct api_request *req, const char *sql, int n, const char *const *params,
                      const char *after, bool prepared, json_t **out)
{
        int r = 0;
        _cleanup_pgresult_ PGresult *res =
            prepared ? db_query_prepared_between(req->db, NULL, sql, n, params, after, &r)
                     : db_query_between(req->db, NULL, sql, n, params, after, &r);
        json_error_t err;

        *out = NULL;
        if (!res)
                return r;
        if (PQntuples(res) == 0)
                return 0;
        if (PQgetisnull(res, 0, 0))
                return 1;
        *out = pgjson_loads(PQgetvalue(res, 0, 0), JSON_DECODE_ANY, &err);
        if (!*out) {
                db_set_error("could not parse the database's JSON: %s", err.text);
                return -EIO;
        }
        return 1;
}

int api_query_json(struct api_request *req, const char *sql, int n, const char *const *params,
                   json_t **out)
{
        return query_json(req, sql, n, params, NULL, false, out);
}

int api_query_json_prepared(struct api_request *req, const char *sql, int n,
                            const char *const *params, json_t **out)
{
        return query_json(req, sql, n, params, NULL, true, out);
}

int api_query_json_last(struct api_request *req, const char *sql, int n, const char *const *params,
                        json_t **out)
{
        int r = query_json(req, sql, n, params, req->may_commit ? "COMMIT" : NULL, true, out);

        req->committed = req->may_commit && r >= 0;
        return r;
}

/* A text answer with every secret value this process knows masked (src/base/redact.h).
 * Takes text; NULL when out of memory. JSON is masked as values (redact_json), never as
 * text, where masking could cut through its syntax. */
static char *redacted_answer(char *text)
{
        char *masked = NULL;
        int r;

        if (!text)
                return NULL;
        r = redact_text(text, strlen(text), &masked, NULL);
        if (r == 0)
                return text;
        free(text);
        return r == 1 ? masked : NULL;
}

int api_append_event(struct api_request *req, const char *run_id, const char *kind,
                     const char *message, json_t *data)
{
        /* an event is stored for good: masked (src/base/redact.h) before it is written; data
         * is masked in place */
        int r = data ? redact_json(data) : 0;
        _cleanup_free_ char *text =
            data && r >= 0 ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        _cleanup_free_ char *said = message ? redact_strdup(message) : NULL;

        if ((data && !text) || (message && !said))
                return -ENOMEM;
        r = 0;
        const char *params[] = {run_id, kind, said, text};
        /* control-plane events carry no lease: the seq comes from the run's counter under
         * its row lock, interleaved with the worker's fenced events (0003_queue.sql) */
        _cleanup_pgresult_ PGresult *res = db_query(
            req->db,
            "SELECT agently_append_event_unfenced($1, $2, NULL, NULL, 'info', $3, $4::jsonb)", 4,
            params, &r);
        return res ? 0 : r;
}

/* ---- metrics ---------------------------------------------------------------------- */

static const double latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NBUCKETS   (sizeof(latency_buckets) / sizeof(latency_buckets[0]))
#define MAX_ROUTES 64

struct route_stats {
        uint64_t buckets[NBUCKETS];
        uint64_t count;
        double sum;
        uint64_t by_class[6]; /* 1xx..5xx */
};
static struct route_stats route_stats[MAX_ROUTES + 1]; /* last: unmatched */
static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;

void api_metrics_observe(size_t route_index, const char *method, unsigned status, double seconds)
{
        struct route_stats *st;

        (void)method;
        if (route_index >= api_routes_count || route_index >= MAX_ROUTES)
                route_index = MAX_ROUTES;
        st = &route_stats[route_index];
        pthread_mutex_lock(&metrics_lock);
        for (size_t i = 0; i < NBUCKETS; i++)
                if (seconds <= latency_buckets[i])
                        st->buckets[i]++;
        st->count++;
        st->sum += seconds;
        if (status >= 100 && status < 600)
                st->by_class[status / 100]++;
        pthread_mutex_unlock(&metrics_lock);
}

int api_metrics_render_http(struct buf *b)
{
        int r = buf_append_str(b, "# HELP agently_http_request_duration_seconds HTTP request "
                                  "latency by route.\n"
                                  "# TYPE agently_http_request_duration_seconds histogram\n");
        struct route_stats copy[MAX_ROUTES + 1];

        pthread_mutex_lock(&metrics_lock);
        memcpy(copy, route_stats, sizeof(copy));
        pthread_mutex_unlock(&metrics_lock);
        for (size_t i = 0; r == 0 && i <= MAX_ROUTES; i++) {
                const char *route = i == MAX_ROUTES ? "unmatched" : NULL, *method = "";
                if (i < MAX_ROUTES && i < api_routes_count) {
                        route = api_routes[i].pattern;
                        method = api_routes[i].method;
                } else if (i < MAX_ROUTES)
                        continue;
                if (copy[i].count == 0)
                        continue;
                for (size_t k = 0; r == 0 && k < NBUCKETS; k++)
                        r = buf_printf(b,
                                       "agently_http_request_duration_seconds_bucket{route=\"%s\","
                                       "method=\"%s\",le=\"%g\"} %llu\n",
                                       route, method, latency_buckets[k],
                                       (unsigned long long)copy[i].buckets[k]);
                if (r == 0)
                        r = buf_printf(b,
                                       "agently_http_request_duration_seconds_bucket{route=\"%s\","
                                       "method=\"%s\",le=\"+Inf\"} %llu\n"
                                       "agently_http_request_duration_seconds_sum{route=\"%s\","
                                       "method=\"%s\"} %.6f\n"
                                       "agently_http_request_duration_seconds_count{route=\"%s\","
                                       "method=\"%s\"} %llu\n",
                                       route, method, (unsigned long long)copy[i].count, route,
                                       method, copy[i].sum, route, method,
                                       (unsigned long long)copy[i].count);
        }
        if (r == 0)
                r = buf_append_str(b, "# HELP agently_http_responses_total HTTP responses by "
                                      "route and status class.\n"
                                      "# TYPE agently_http_responses_total counter\n");
        for (size_t i = 0; r == 0 && i <= MAX_ROUTES; i++) {
                if (i < MAX_ROUTES && i >= api_routes_count)
                        continue;
                const char *route = i == MAX_ROUTES ? "unmatched" : api_routes[i].pattern;
                const char *method = i == MAX_ROUTES ? "" : api_routes[i].method;
                for (int k = 1; r == 0 && k < 6; k++)
                        if (copy[i].by_class[k])
                                r = buf_printf(b,
                                               "agently_http_responses_total{route=\"%s\","
                                               "method=\"%s\",code=\"%dxx\"} %llu\n",
                                               route, method, k,
                                               (unsigned long long)copy[i].by_class[k]);
        }
        return r;
}

/* ---- the exchange ----------------------------------------------------------------- */

static enum MHD_Result send_response(struct MHD_Connection *conn, struct exchange *ex,
                                     struct api_response *resp)
{
        struct MHD_Response *mr;
        enum MHD_Result ret;

        if (resp->raw) {
                mr = resp->raw;
        } else {
                _cleanup_free_ char *text = NULL;
                /* every answer passes the redaction choke point (src/base/redact.h) */
                if (resp->text)
                        text = redacted_answer(TAKE_PTR(resp->text));
                else if (resp->json && redact_json(resp->json) >= 0)
                        text = json_dumps(resp->json, JSON_COMPACT | JSON_ENCODE_ANY);
                if (!text && resp->status != 204) {
                        resp->status = 500;
                        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of "
                                      "memory\",\"detail\":null,\"hint\":null}}");
                }
                size_t len = text ? strlen(text) : 0;
                mr = MHD_create_response_from_buffer(len, text ? text : (char *)"",
                                                     text ? MHD_RESPMEM_MUST_FREE
                                                          : MHD_RESPMEM_PERSISTENT);
                if (!mr)
                        return MHD_NO;
                TAKE_PTR(text);
                MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                        resp->content_type ? resp->content_type
                                                           : "application/json");
        }
        if (resp->allow)
                MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, resp->allow);
        if (resp->replayed)
                MHD_add_response_header(mr, "Idempotent-Replayed", "true");
        if (resp->unauthorized)
                MHD_add_response_header(mr, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                        "Bearer realm=\"agently\"");
        if (resp->retry_after_s && resp->status == 503) {
                char seconds[16];
                snprintf(seconds, sizeof(seconds), "%u", resp->retry_after_s);
                MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
        }
        if (resp->set_cookie)
                MHD_add_response_header(mr, MHD_HTTP_HEADER_SET_COOKIE, resp->set_cookie);
        ex->status = resp->status;
        ret = MHD_queue_response(conn, resp->status, mr);
        MHD_destroy_response(mr);
        return ret;
}

static void response_clear(struct api_response *resp)
{
        if (resp->json)
                json_decref(resp->json);
        free(resp->text);
        free(resp->set_cookie);
        *resp = (struct api_response){0};
}

struct header_tally {
        unsigned count;
        size_t bytes;
};

static enum MHD_Result tally_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
        struct header_tally *t = cls;

        t->count++;
        t->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
        return MHD_YES;
}

/*
 * Text the API reads from a request goes into JSON and into Postgres, and both refuse
 * anything but UTF-8. So the path, every query parameter and every header the API reads
 * are checked once, here, before routing: every route answers the same 400 naming the part
 * that is wrong, and no handler sees such bytes. (Other headers are not the API's business:
 * HTTP allows any octets in them.)
 */
static const char *const read_headers[] = {
    MHD_HTTP_HEADER_AUTHORIZATION, "Idempotency-Key", "Last-Event-ID",
    MHD_HTTP_HEADER_COOKIE,        API_CSRF_HEADER,   "Origin",
    MHD_HTTP_HEADER_HOST};

struct non_utf8 {
        const char *key;
        const char *value;
};

static enum MHD_Result find_non_utf8(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
        struct non_utf8 *bad = cls;

        (void)kind;
        if (!str_is_utf8(key, strlen(key)) || (value && !str_is_utf8(value, strlen(value)))) {
                bad->key = key;
                bad->value = value;
                return MHD_NO;
        }
        return MHD_YES;
}

/* 0 when the request's text is UTF-8, else the 400 it gets. */
static unsigned check_request_text(struct MHD_Connection *conn, const char *url,
                                   struct api_response *resp)
{
        struct non_utf8 bad = {0};

        if (!str_is_utf8(url, strlen(url)))
                return api_errorf(resp, 400, "invalid_path", "the request path is not valid UTF-8",
                                  "percent-encode the UTF-8 bytes of names in the path",
                                  "path '%s'", url);
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, find_non_utf8, &bad);
        if (bad.key)
                return api_errorf(resp, 400, "invalid_parameter",
                                  "a query parameter is not valid UTF-8",
                                  "percent-encode the UTF-8 bytes of the value",
                                  "parameter '%s' = '%s'", bad.key, bad.value ? bad.value : "");
        for (size_t i = 0; i < ELEMENTSOF(read_headers); i++) {
                const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, read_headers[i]);
                if (v && !str_is_utf8(v, strlen(v)))
                        return api_errorf(
                            resp, 400, "invalid_header", "a request header is not valid UTF-8",
                            "send ASCII or UTF-8 in this header", "header %s", read_headers[i]);
        }
        return 0;
}

/* Opens req's transaction and authenticates the request in it: BEGIN, the token's check and
 * the tenant's setting (agently.user_id) in one round trip. Returns 0, or a status to answer. */
static unsigned authenticate(struct api_request *req, struct api_response *resp)
{
        const char *h = api_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char hex[2 + 2 * AUTH_TOKEN_HASH_BYTES + 1];
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        if (!h && api_session_cookie(req)) /* the dashboard (api_session.c) */
                return api_session_authenticate(req, resp, api_session_cookie(req), "BEGIN");
        if (!h || strncasecmp(h, "Bearer ", 7) != 0 || auth_token_hash(h + 7, hash) < 0) {
                resp->unauthorized = true;
                return api_error(resp, 401, "unauthorized",
                                 h ? "the bearer token is malformed" : "authentication required",
                                 "send Authorization: Bearer agt_...", API_HINT_TOKEN);
        }
        auth_token_hash_hex(hash, hex);
        const char *params[] = {hex};
        /* the tenant is set by the statement that found the user (db_set_user's setting);
         * prepared once per pooled connection, as every request sends it */
        res = db_query_prepared_between(req->db, "BEGIN",
                                        "SELECT a.user_id, a.user_name, a.is_admin, "
                                        "set_config('agently.user_id', a.user_id::text, true) "
                                        "FROM agently_authenticate($1::bytea) a",
                                        1, params, NULL, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQntuples(res) != 1) {
                resp->unauthorized = true;
                return api_error(resp, 401, "unauthorized", "the token is not valid",
                                 "unknown, revoked or expired token, or a disabled user",
                                 API_HINT_TOKEN);
        }
        str_copy(req->user_id, sizeof(req->user_id), PQgetvalue(res, 0, 0));
        str_copy(req->user_name, sizeof(req->user_name), PQgetvalue(res, 0, 1));
        req->is_admin = PQgetvalue(res, 0, 2)[0] == 't';
        return 0;
}

/*
 * Idempotency-Key, Stripe semantics: the key row is inserted in the request's transaction
 * before the handler runs, so a concurrent retry blocks on it until the first commits, and
 * then replays. The stored response is written in the same transaction as the object it
 * describes; a failed request rolls its key back, so it may be retried with the same key.
 * Returns 0 to go on (*key_owned set when this request owns the key), else a status.
 */
static unsigned idempotency_begin(struct api_request *req, struct api_response *resp,
                                  const char *key, bool *key_owned)
{
        unsigned char digest[crypto_hash_sha256_BYTES];
        char hex[2 * crypto_hash_sha256_BYTES + 1];
        crypto_hash_sha256_state st;
        _cleanup_pgresult_ PGresult *ins = NULL, *old = NULL;
        int r = 0;

        *key_owned = false;
        if (strlen(key) < 1 || strlen(key) > 255)
                return api_error(resp, 400, "invalid_idempotency_key",
                                 "the Idempotency-Key header must be 1 to 255 characters", NULL,
                                 "use a UUID");
        crypto_hash_sha256_init(&st);
        crypto_hash_sha256_update(&st, (const unsigned char *)req->method, strlen(req->method));
        crypto_hash_sha256_update(&st, (const unsigned char *)"\n", 1);
        crypto_hash_sha256_update(&st, (const unsigned char *)req->path, strlen(req->path));
        crypto_hash_sha256_update(&st, (const unsigned char *)"\n", 1);
        crypto_hash_sha256_update(&st, (const unsigned char *)req->body, req->body_len);
        crypto_hash_sha256_final(&st, digest);
        str_hex(digest, sizeof(digest), hex);

        const char *params[] = {key, req->method, req->path, hex};
        ins = db_query(req->db,
                       "INSERT INTO api_idempotency (user_id, key, method, path, request_sha256) "
                       "VALUES (agently_current_user_id(), $1, $2, $3, $4) "
                       "ON CONFLICT (user_id, key) DO NOTHING RETURNING 1",
                       4, params, &r);
        if (!ins)
                return api_db_error(resp, r);
        if (PQntuples(ins) == 1) {
                *key_owned = true;
                return 0;
        }
        old = db_query(req->db,
                       "SELECT request_sha256, status_code, response FROM api_idempotency "
                       "WHERE user_id = agently_current_user_id() AND key = $1",
                       1, params, &r);
        if (!old)
                return api_db_error(resp, r);
        if (PQntuples(old) != 1 || PQgetisnull(old, 0, 1))
                return api_error(resp, 409, "idempotency_in_progress",
                                 "a request with this Idempotency-Key is still in progress", NULL,
                                 "retry in a moment");
        if (strcmp(PQgetvalue(old, 0, 0), hex) != 0)
                return api_error(resp, 422, "idempotency_key_reused",
                                 "this Idempotency-Key was used with a different request",
                                 "the method, path or body differ from the first request",
                                 "use a new key for a new request");
        json_t *stored = pgjson_loads(PQgetvalue(old, 0, 2), JSON_DECODE_ANY, NULL);
        if (!stored)
                return api_error(resp, 500, "internal", "could not read the stored response", NULL,
                                 NULL);
        int code = 0;
        str_to_int(PQgetvalue(old, 0, 1), &code);
        resp->replayed = true;
        return api_json(resp, (unsigned)code, stored);
}

/* Stores the response for the request's Idempotency-Key and commits, in one round trip. */
static int idempotency_store_commit(struct api_request *req, struct api_response *resp,
                                    const char *key)
{
        /* the stored answer is an answer: masked like the one sent (src/base/redact.h) */
        _cleanup_free_ char *text = redact_json(resp->json) >= 0
                                        ? json_dumps(resp->json, JSON_COMPACT | JSON_ENCODE_ANY)
                                        : NULL;
        _cleanup_free_ char *code = str_printf("%u", resp->status);
        const char *params[] = {key, code, text};
        int r = 0;

        if (!text || !code)
                return -ENOMEM;
        _cleanup_pgresult_ PGresult *res =
            db_query_between(req->db, NULL,
                             "UPDATE api_idempotency SET status_code = $2::integer, "
                             "response = $3::jsonb "
                             "WHERE user_id = agently_current_user_id() AND key = $1",
                             3, params, "COMMIT", &r);
        return res ? 0 : r;
}

/* Opens the request's transaction: BEGIN, with the authentication of a route that needs one
 * in the same round trip. A connection that died while idle in the pool (the database
 * restarted) is replaced once, transparently. 0, or the status answered; req->db is NULL
 * when no connection could be had. */
static unsigned open_transaction(struct api_request *req, struct api_response *resp)
{
        bool public = req->route->flags & API_ROUTE_PUBLIC;

        for (int tries = 0;; tries++) {
                int r = 0;
                unsigned st = 0;
                if (!public)
                        st = authenticate(req, resp);
                else if ((r = db_begin(req->db)) < 0)
                        st = api_db_error(resp, r);
                if (st == 0 || tries > 0 || PQstatus(req->db) == CONNECTION_OK)
                        return st;
                response_clear(resp);
                api_pool_release(req->server, req->db, true);
                req->db = api_pool_acquire(req->server, &r);
                if (!req->db)
                        return api_db_error(resp, r);
        }
}

/* Runs one matched request: transaction, authentication, idempotency, handler, commit. */
static void run_request(struct api_request *req, struct api_response *resp)
{
        const struct api_route *route = req->route;
        const char *key = NULL;
        bool key_owned = false, broken = false;
        unsigned st;
        int r;

        if (route->flags & API_ROUTE_NO_DB) {
                route->handler(req, resp);
                return;
        }
        if (!(route->flags & API_ROUTE_PUBLIC)) {
                const char *h = api_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
                if (!h && !api_session_cookie(req)) { /* answer without the database */
                        resp->unauthorized = true;
                        api_error(resp, 401, "unauthorized", "authentication required",
                                  "send Authorization: Bearer agt_...", API_HINT_TOKEN);
                        return;
                }
        }
        req->db = api_pool_acquire(req->server, &r);
        if (!req->db) {
                api_db_error(resp, r);
                return;
        }
        /* a public route that uses the database (an approval link) has no user: it goes
         * through SECURITY DEFINER functions that check what the caller may do */
        st = open_transaction(req, resp);
        if (!req->db)
                return;
        if (st)
                goto rollback;
        key = (route->flags & API_ROUTE_IDEMPOTENT) ? api_header(req, "Idempotency-Key") : NULL;
        if (key) {
                st = idempotency_begin(req, resp, key, &key_owned);
                if (st)
                        goto rollback;
                if (!key_owned) { /* replay: nothing to write */
                        db_rollback(req->db);
                        goto out;
                }
        }
        /* nothing to store after the handler: its last statement may carry the COMMIT */
        req->may_commit = !key_owned;
        st = route->handler(req, resp);
        if (st >= 400)
                goto rollback;
        if (req->committed)
                goto out;
        r = key_owned && resp->json ? idempotency_store_commit(req, resp, key) : db_commit(req->db);
        if (r < 0) {
                if (resp->raw)
                        MHD_destroy_response(resp->raw);
                response_clear(resp);
                api_db_error(resp, r);
                broken = true;
                goto rollback;
        }
        goto out;
rollback:
        db_rollback(req->db);
out:
        if (req->db && PQstatus(req->db) != CONNECTION_OK)
                broken = true;
        api_pool_release(req->server, req->db, broken);
        req->db = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
        struct api_server *s = cls;
        struct exchange *ex = *con_cls;
        struct api_response resp = {0};
        enum MHD_Result ret;

        if (!ex) {
                struct header_tally t = {0};
                const char *cl;
                ex = calloc(1, sizeof(*ex));
                if (!ex)
                        return MHD_NO;
                buf_init(&ex->body, s->options->max_body);
                ex->started_ns = mono_ns();
                ex->route_index = -1;
                str_copy(ex->method, sizeof(ex->method), method);
                *con_cls = ex;
                MHD_get_connection_values(conn, MHD_HEADER_KIND, tally_header, &t);
                if (t.count > API_MAX_HEADERS || t.bytes > API_MAX_HEADER_BYTES) {
                        api_errorf(&resp, 431, "headers_too_large",
                                   "the request headers are too large",
                                   "send fewer or shorter headers",
                                   "%u headers, %zu bytes (limits: %d headers, %d bytes)", t.count,
                                   t.bytes, API_MAX_HEADERS, API_MAX_HEADER_BYTES);
                        goto early;
                }
                cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
                int64_t n;
                if (cl && str_to_int64(cl, &n) == 0 && (uint64_t)n > s->options->max_body) {
                        api_errorf(&resp, 413, "payload_too_large", "the request body is too large",
                                   "send a smaller body", "%lld bytes (limit %zu)", (long long)n,
                                   s->options->max_body);
                        goto early;
                }
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                if (!ex->body_too_large &&
                    buf_append(&ex->body, upload_data, *upload_data_size) < 0)
                        ex->body_too_large = true;
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (ex->body_too_large) {
                api_errorf(&resp, 413, "payload_too_large", "the request body is too large",
                           "send a smaller body", "limit %zu bytes", s->options->max_body);
                goto early;
        }
        if (strlen(url) > API_MAX_URL_BYTES) {
                api_error(&resp, 414, "uri_too_long", "the request URI is too long", NULL, NULL);
                goto early;
        }
        if (check_request_text(conn, url, &resp))
                goto early;

        struct api_request req = {
            .server = s,
            .connection = conn,
            .method = method,
            .path = url,
            .body = ex->body.data ? ex->body.data : "",
            .body_len = ex->body.len,
        };
        const char *allow = NULL;
        int idx = api_route_match(method, url, req.params, API_MAX_PATH_PARAMS, &req.param_storage,
                                  &allow);
        if (idx == -1 && strcmp(method, "GET") == 0 && !str_has_prefix(url, "/v1/") &&
            api_static_serve(s->options, conn, url, &resp)) {
                /* the dashboard (api_static.c) */
        } else if (idx == -1) {
                api_errorf(&resp, 404, "not_found", "no such route", "see docs/openapi.yaml",
                           "%s %s", method, url);
        } else if (idx == -2) {
                api_errorf(&resp, 405, "method_not_allowed", "method not allowed for this route",
                           NULL, "%s %s; allowed: %s", method, url, allow);
                resp.allow = allow;
        } else if (idx < 0) {
                api_error(&resp, 500, "internal", "out of memory", NULL, NULL);
        } else {
                ex->route_index = idx;
                req.route = &api_routes[idx];
                run_request(&req, &resp);
        }
        if (resp.status == 0)
                api_error(&resp, 500, "internal", "the handler gave no response", NULL, NULL);
        ret = send_response(conn, ex, &resp);
        if (req.json)
                json_decref(req.json);
        free(req.param_storage);
        response_clear(&resp);
        return ret;
early:
        ret = send_response(conn, ex, &resp);
        response_clear(&resp);
        return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct exchange *ex = *con_cls;

        if (!ex)
                return;
        if (ex->status)
                api_metrics_observe(ex->route_index < 0 ? SIZE_MAX : (size_t)ex->route_index,
                                    ex->method, ex->status,
                                    (double)(mono_ns() - ex->started_ns) / 1e9);
        buf_free(&ex->body);
        free(ex);
        *con_cls = NULL;
}

/*
 * The connection limit is the daemon's, not a pool thread's. MHD splits its own
 * MHD_OPTION_CONNECTION_LIMIT evenly among the pool's threads and closes what a thread
 * accepts past its share, and the threads race to accept: under load one thread took its
 * 256 of 1,024 while others were busy, and 600 connections from a client got 344 answers.
 * So MHD is given headroom (every thread may take the whole limit) and the limit itself is
 * counted here, for all threads; concurrent accepts can pass it by at most the threads - 1.
 */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
        struct api_server *s = cls;

        (void)conn, (void)socket_context;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED)
                atomic_fetch_add(&s->open_connections, 1);
        else if (toe == MHD_CONNECTION_NOTIFY_CLOSED)
                atomic_fetch_sub(&s->open_connections, 1);
}

static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
        struct api_server *s = cls;

        (void)addr, (void)addrlen;
        return atomic_load(&s->open_connections) < s->options->max_connections ? MHD_YES : MHD_NO;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        char line[512];

        vsnprintf(line, sizeof(line), fmt, ap);
        size_t n = strlen(line);
        while (n > 0 && line[n - 1] == '\n')
                line[--n] = '\0';
        log_debug("http: %s", line);
}

static int parse_listen(const char *listen, struct sockaddr_in *addr)
{
        _cleanup_free_ char *host = strdup(listen);
        char *colon = host ? strrchr(host, ':') : NULL;
        int port;

        if (!host)
                return -ENOMEM;
        if (!colon || str_to_int(colon + 1, &port) < 0 || port < 1 || port > 65535)
                return -EINVAL;
        *colon = '\0';
        *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, *host ? host : "0.0.0.0", &addr->sin_addr) != 1)
                return -EINVAL;
        return 0;
}

int api_run(const struct api_options *o)
{
        struct api_server s = {.options = o};
        struct sockaddr_in addr;
        struct MHD_Daemon *d;
        sigset_t set;
        int r, sig;

        r = parse_listen(o->listen, &addr);
        if (r < 0)
                return log_errno(r, "cannot listen on '%s': expected ADDR:PORT (IPv4)", o->listen);
        if (sodium_init() < 0)
                return log_errno(-EIO, "could not initialise libsodium");
        r = db_conninfo_for_role(o->data_dir, DB_ROLE_API, &s.conninfo);
        if (r < 0)
                return log_errno(r, "could not find the database: %s", db_last_error());
        pthread_mutex_init(&s.lock, NULL);
        pthread_cond_init(&s.freed, NULL);
        s.nslots = o->db_pool_size ? o->db_pool_size : 1;
        s.slots = calloc(s.nslots, sizeof(*s.slots));
        if (!s.slots) {
                free(s.conninfo);
                return log_errno(-ENOMEM, "out of memory");
        }
        r = api_sse_hub_start(&s, &s.sse);
        if (r < 0) {
                free(s.slots);
                free(s.conninfo);
                return log_errno(r, "could not start the event stream thread");
        }

        unsigned threads = o->threads ? o->threads : 1;
        d = MHD_start_daemon(
            MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
            accept_policy, &s, on_request, &s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
            MHD_OPTION_THREAD_POOL_SIZE, threads,
            /* per thread once MHD has split it: the limit is accept_policy's */
            MHD_OPTION_CONNECTION_LIMIT, (unsigned int)o->max_connections * threads,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, &s, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
            (unsigned int)o->per_ip_connections, MHD_OPTION_CONNECTION_TIMEOUT,
            (unsigned int)o->connection_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
            (size_t)(256 * 1024), MHD_OPTION_NOTIFY_COMPLETED, on_completed, &s,
            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_LISTEN_BACKLOG_SIZE,
            (unsigned int)511, MHD_OPTION_END);
        if (!d) {
                api_sse_hub_stop(s.sse, 0);
                free(s.slots);
                free(s.conninfo);
                return log_errno(-EADDRNOTAVAIL, "could not listen on %s", o->listen);
        }
        log_info("listening on http://%s", o->listen);

        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        do
                r = sigwait(&set, &sig);
        while (r != 0);
        log_info("%s received; shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");

        /* Stop accepting, end every stream (resuming suspended connections, which MHD
         * requires before it stops), then stop the daemon: in-flight requests finish. */
        MHD_quiesce_daemon(d);
        api_sse_hub_stop(s.sse, 3000);
        MHD_stop_daemon(d);
        for (unsigned i = 0; i < s.nslots; i++)
                if (s.slots[i].c)
                        PQfinish(s.slots[i].c);
        free(s.slots);
        free(s.conninfo);
        pthread_cond_destroy(&s.freed);
        pthread_mutex_destroy(&s.lock);
        log_info("stopped");
        return 0;
}
