/*
 * The route table and its handlers. Every handler runs inside the request's transaction as
 * agently_api with agently.user_id set (api_server.c), so row-level security decides what
 * exists: another user's object is simply not found (404), never forbidden. Handlers build
 * their JSON in SQL (json_build_object) so that the database's types and time zone (UTC)
 * define the representation, and return the HTTP status; a status >= 400 rolls the
 * transaction back.
 */
#include "api_internal.h"
#include "api_triggers.h"
#include "pgjson.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth_token.h"
#include "cleanup.h"
#include "db.h"
#include "embedded_pg.h"
#include "engine.h"
#include "log.h"
#include "migrate.h"
#include "secrets.h"
#include "strutil.h"

#define PAGE_DEFAULT   50
#define PAGE_MAX       200
#define EVENTS_DEFAULT 100
#define EVENTS_MAX     1000
#define NODES_DEFAULT  100
#define NODES_MAX      1000
/* GET /v1/runs/{id} shows at most this many node states (in order of first start); a run
 * with more (a large map) says so, and GET /v1/runs/{id}/nodes pages through all of them. */
#define RUN_NODES_INLINE "1000"

/* The latest attempt of one node, n = a node_runs row. */
#define NODE_STATE_JSON                                                                            \
        "json_build_object('node_id', n.node_id, 'status', n.status, 'attempt', n.attempt, "       \
        "'output', n.output, 'error', n.error, 'started_at', n.started_at, 'finished_at', "        \
        "n.finished_at)"
/* Whether node n is a map: its item 0 (`map[0]`, src/engine/plan.c, item_record: a map
 * records its items in index order, so one that has any has item 0) — an index probe per
 * node (a scalar subquery: as EXISTS the planner may hash every node_runs row instead). */
#define NODE_IS_MAP                                                                                \
        "((SELECT 1 FROM node_runs i WHERE i.workflow_run_id = n.workflow_run_id AND i.node_id = " \
        "n.node_id || '[0]' LIMIT 1) IS NOT NULL)"
/* NODE_STATE_JSON as the reads that aggregate a run's maps give it (the run, nodes with
 * ?items=false): a map's own output is the array of its items' outputs (10,000 elements for
 * a 10,000-item map), so it is left out, and the map's state says so with output_omitted
 * (only a map's: 1,000 items would carry 24 KB of "false"); ?map=ID reads the items. n
 * carries is_map (NODE_IS_MAP). */
#define NODE_STATE_NO_MAP_OUTPUT_JSON                                                              \
        "CASE WHEN n.is_map THEN json_build_object('node_id', n.node_id, 'status', n.status, "     \
        "'attempt', n.attempt, 'output', NULL, 'output_omitted', true, 'error', n.error, "         \
        "'started_at', n.started_at, 'finished_at', n.finished_at) ELSE " NODE_STATE_JSON " END"

/* The agent runs of run r (sub-agents too), each with its own LLM totals: its row's and,
 * while it runs, the usage of its journal rows not yet added to them
 * (agently_agent_unflushed, 0036); the run's cost_usd, tokens_in and tokens_out are their
 * sums. */
#define AGENT_RUNS_JSON                                                                            \
        "COALESCE((SELECT json_agg(json_build_object('id', a.id, 'node_id', a.node_id, "           \
        "'attempt', a.attempt, 'parent_agent_run_id', a.parent_agent_run_id, 'status', "           \
        "a.status, 'model', a.model, 'tokens_in', a.tokens_in + COALESCE(u.tokens_in, 0), "        \
        "'tokens_out', a.tokens_out + COALESCE(u.tokens_out, 0), 'cached_tokens_in', "             \
        "a.cached_tokens_in + COALESCE(u.cached_tokens_in, 0), 'cost_usd', a.cost_usd + "          \
        "COALESCE(u.cost_usd, 0), 'llm_calls', a.llm_calls + COALESCE(u.llm_calls, 0), "           \
        "'tool_calls', a.tool_calls + COALESCE(u.tool_calls, 0), 'started_at', a.started_at, "     \
        "'finished_at', a.finished_at, 'error', a.error) ORDER BY a.started_at, a.id) FROM "       \
        "(SELECT * FROM agent_runs x WHERE x.workflow_run_id = r.id ORDER BY x.started_at, x.id "  \
        "LIMIT 1000) a LEFT JOIN LATERAL (SELECT * FROM agently_agent_unflushed(a.id, "            \
        "a.usage_seq) WHERE a.status = 'running') u ON true), '[]'::json)"

/* The run r without its node states (RUN_JSON_ALL or RUN_JSON_NOT_ITEMS add them). */
#define RUN_JSON_HEAD                                                                              \
        "json_build_object('id', r.id, 'workflow', r.workflow_name, 'workflow_version', "          \
        "r.workflow_version, 'workflow_id', r.workflow_id, 'status', r.status, 'input', r.input, " \
        "'output', r.output, 'error', r.error, 'wait_reason', r.wait_reason, 'attempt', "          \
        "r.attempt, 'cancel_requested', r.cancel_requested, 'pause_requested', "                   \
        "r.pause_requested, 'rerun_of', r.rerun_of, 'rerun_from_node', r.rerun_from_node, "        \
        "'parent_run_id', r.parent_run_id, 'created_at', r.created_at, 'started_at', "             \
        "r.started_at, 'finished_at', r.finished_at, 'updated_at', r.updated_at, 'run_at', "       \
        "r.run_at, 'timeout_at', r.timeout_at, 'time_scale', r.time_scale, 'cost_usd', "           \
        "r.cost_usd, 'tokens_in', "                                                                \
        "r.tokens_in, 'tokens_out', r.tokens_out, 'agents', " AGENT_RUNS_JSON ", "                 \
        "'agent_versions', r.agent_versions, 'last_event_seq', r.event_seq, 'nodes_total', "       \
        "nt.total, 'maps', nt.maps, "
/* The first RUN_NODES_INLINE nodes of run r in order of first start, latest attempt each:
 * node_runs_run_started_idx (0024) walked from the start, keeping each node's first attempt
 * (no attempt of it started before), so 1,000 nodes cost 1,000 rows, not the whole run.
 * That check is a scalar subquery, a probe per node on node_runs_run_node_attempt_key: as
 * NOT EXISTS it is an anti-join, which with statistics from before a large run was written
 * (its node_runs estimated at 3 rows) became a nested loop over the whole run materialized,
 * once per node kept — 20 M comparisons and 0.8–2.6 s for a 20,002-node run, 16–50 times
 * the read with fresh statistics (the ninth session's 15 s web_e2e read under ASan). The
 * LIMIT 1 keeps the latest-attempt lookup a probe per node too (without it the planner may
 * join the whole run's view instead). */
#define RUN_NODES_FIRST                                                                            \
        "COALESCE((SELECT json_agg(" NODE_STATE_NO_MAP_OUTPUT_JSON " ORDER BY f.started_at, "      \
        "f.node_id) FROM (SELECT f.node_id, f.started_at FROM node_runs f WHERE "                  \
        "f.workflow_run_id = r.id AND (SELECT 1 FROM node_runs e WHERE e.workflow_run_id = r.id "  \
        "AND e.node_id = f.node_id AND (e.started_at, e.attempt) < (f.started_at, f.attempt) "     \
        "LIMIT 1) IS NULL ORDER BY f.started_at, f.node_id LIMIT " RUN_NODES_INLINE                \
        ") f CROSS JOIN LATERAL (SELECT n.*, " NODE_IS_MAP " AS is_map FROM agently_node_latest "  \
        "n WHERE n.workflow_run_id = r.id AND n.node_id = f.node_id LIMIT 1) n), '[]'::json)"
/* ?items=false: the first RUN_NODES_INLINE nodes of run r that are not map items, in order
 * of first start. They are few even beside 100,000 items: node_runs_run_node_not_item_idx
 * (0024) holds only them, and only they are sorted. */
#define RUN_NODES_NOT_ITEMS                                                                        \
        "COALESCE((SELECT json_agg(" NODE_STATE_NO_MAP_OUTPUT_JSON " ORDER BY "                    \
        "n.first_started_at, n.node_id) FROM (SELECT n.*, " NODE_IS_MAP " AS is_map FROM "         \
        "agently_node_latest n WHERE n.workflow_run_id = r.id AND right(n.node_id, 1) <> ']' "     \
        "ORDER BY n.first_started_at, n.node_id LIMIT " RUN_NODES_INLINE ") n), '[]'::json)"
/* The run with its first node states (RUN_NODES_FIRST), or (?items=false) with its first
 * nodes that are not map items, the items being in `maps`. */
#define RUN_JSON_ALL                                                                               \
        RUN_JSON_HEAD "'nodes_truncated', nt.total > " RUN_NODES_INLINE                            \
                      ", 'nodes', " RUN_NODES_FIRST ")"
#define RUN_JSON_NOT_ITEMS                                                                         \
        RUN_JSON_HEAD "'nodes_truncated', nt.not_items > " RUN_NODES_INLINE                        \
                      ", 'nodes', " RUN_NODES_NOT_ITEMS ")"
/* FROM clause companion of RUN_JSON_*: in one pass over the latest attempts of run r (an
 * index walk, 0024), the number of distinct nodes and each map's items aggregated — count,
 * count per status, first start, last finish (null while one is open) — so a viewer of a
 * 10,000-item map needs neither 10,000 node states nor its events. An item is `map[i]`
 * (src/engine/plan.c, item_record). */
#define RUN_NODES_TOTAL                                                                            \
        " CROSS JOIN LATERAL (SELECT COALESCE(sum(g.n), 0) AS total, COALESCE(sum(g.n) FILTER "    \
        "(WHERE g.map IS NULL), 0) AS not_items, COALESCE(json_agg("                               \
        "json_build_object('node_id', g.map, 'items', g.n, 'counts', json_strip_nulls("            \
        "json_build_object('started', NULLIF(g.started, 0), 'waiting', NULLIF(g.waiting, 0), "     \
        "'completed', NULLIF(g.completed, 0), 'failed', NULLIF(g.failed, 0), 'skipped', "          \
        "NULLIF(g.skipped, 0), 'interrupted', NULLIF(g.interrupted, 0), 'canceled', "              \
        "NULLIF(g.canceled, 0))), 'started_at', g.s, 'finished_at', g.f) ORDER BY g.s, g.map) "    \
        "FILTER (WHERE g.map IS NOT NULL), '[]'::json) AS maps FROM (SELECT CASE WHEN "            \
        "right(l.node_id, 1) = ']' THEN split_part(l.node_id, '[', 1) END AS map, count(*) AS n, " \
        "count(*) FILTER (WHERE l.status = 'started') AS started, count(*) FILTER (WHERE "         \
        "l.status = 'waiting') AS waiting, count(*) FILTER (WHERE l.status = 'completed') AS "     \
        "completed, count(*) FILTER (WHERE l.status = 'failed') AS failed, count(*) FILTER "       \
        "(WHERE l.status = 'skipped') AS skipped, count(*) FILTER (WHERE l.status = "              \
        "'interrupted') AS interrupted, count(*) FILTER (WHERE l.status = 'canceled') AS "         \
        "canceled, min(l.started_at) AS s, CASE WHEN bool_or(l.finished_at IS NULL) THEN NULL "    \
        "ELSE max(l.finished_at) END AS f FROM agently_node_latest l WHERE l.workflow_run_id = "   \
        "r.id GROUP BY 1) g) nt"

#define RUN_SUMMARY_JSON                                                                           \
        "json_build_object('id', r.id, 'workflow', r.workflow_name, 'workflow_version', "          \
        "r.workflow_version, 'status', r.status, 'attempt', r.attempt, 'created_at', "             \
        "r.created_at, 'started_at', r.started_at, 'finished_at', r.finished_at, 'cost_usd', "     \
        "r.cost_usd, 'rerun_of', r.rerun_of)"

#define WORKFLOW_JSON                                                                              \
        "json_build_object('id', w.id, 'name', w.name, 'version', w.version, 'definition', "       \
        "w.definition, 'definition_sha256', w.definition_sha256, 'created_at', w.created_at)"

#define WORKFLOW_VERSION_JSON                                                                      \
        "json_build_object('id', w.id, 'name', w.name, 'version', w.version, "                     \
        "'definition_sha256', w.definition_sha256, 'created_at', w.created_at)"

#define SECRET_JSON                                                                                \
        "json_build_object('name', s.name, 'key_version', s.key_version, 'created_at', "           \
        "s.created_at, 'updated_at', s.updated_at)"

#define TOKEN_JSON                                                                                 \
        "json_build_object('id', t.id, 'name', t.name, 'prefix', t.token_prefix, 'user_id', "      \
        "t.user_id, 'created_at', t.created_at, 'last_used_at', t.last_used_at, 'expires_at', "    \
        "t.expires_at, 'revoked_at', t.revoked_at)"

/* The run list's statuses, each with what narrows the list to an index that finds its runs:
 * no index of workflow_runs holds the status (0046: so that a finish is a HOT update). A live
 * run has a queue row; a failed or canceled one carries its error (workflow_runs_user_error_idx);
 * completed runs are most of the history, found newest first by workflow_runs_user_created_idx. */
#define RUNS_LIVE       " AND r.id IN (SELECT q.run_id FROM run_queue q)"
#define RUNS_WITH_ERROR " AND r.error IS NOT NULL"
static const struct {
        const char *name;
        const char *narrow;
} run_statuses[] = {
    {"queued", RUNS_LIVE},       {"running", RUNS_LIVE},        {"waiting", RUNS_LIVE},
    {"needs_input", RUNS_LIVE},  {"paused", RUNS_LIVE},         {"completed", ""},
    {"failed", RUNS_WITH_ERROR}, {"canceled", RUNS_WITH_ERROR},
};

/* ---- small helpers ---------------------------------------------------------------- */

bool api_is_uuid(const char *s)
{
        static const char shape[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

        if (strlen(s) != sizeof(shape) - 1)
                return false;
        for (size_t i = 0; shape[i]; i++) {
                char ch = s[i];
                if (shape[i] == '-' ? ch != '-'
                                    : !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                                        (ch >= 'A' && ch <= 'F')))
                        return false;
        }
        return true;
}

bool api_is_name(const char *s)
{
        size_t n = strlen(s);

        if (n < 1 || n > 63)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
                if (!alnum && (i == 0 || (ch != '_' && ch != '.' && ch != '-')))
                        return false;
        }
        return true;
}

static bool is_terminal(const char *status)
{
        return strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
               strcmp(status, "canceled") == 0;
}

unsigned api_not_found(struct api_response *resp, const char *what, const char *id)
{
        return api_errorf(resp, 404, "not_found", "not found", NULL, "%s '%s' does not exist", what,
                          id);
}

/* The body as a JSON object (an empty body is {} when allow_empty). */
json_t *api_body_object(struct api_request *req, struct api_response *resp, bool allow_empty)
{
        json_t *j;

        if (allow_empty && req->body_len == 0) {
                req->json = json_object();
                return req->json;
        }
        j = api_request_json(req, resp);
        if (j && !json_is_object(j)) {
                api_error(resp, 400, "invalid_body", "the request body must be a JSON object", NULL,
                          "see docs/openapi.yaml for the shape");
                return NULL;
        }
        return j;
}

/* 400 when obj has a key not in allowed (NULL-terminated). */
unsigned api_reject_unknown_keys(json_t *obj, const char *const *allowed, struct api_response *resp)
{
        const char *key;
        json_t *v;

        json_object_foreach (obj, key, v) {
                bool ok = false;
                for (size_t i = 0; allowed[i]; i++)
                        ok |= strcmp(key, allowed[i]) == 0;
                if (!ok)
                        return api_errorf(resp, 400, "unknown_field", "unknown field",
                                          "remove it; see docs/openapi.yaml", "field '%s'", key);
        }
        return 0;
}

bool api_begin_body(struct api_request *req, struct api_response *resp, const char *what,
                    const char *const *keys, bool allow_empty, json_t **body)
{
        *body = NULL;
        if (what && !api_is_uuid(req->params[0])) {
                api_not_found(resp, what, req->params[0]);
                return false;
        }
        json_t *b = api_body_object(req, resp, allow_empty);
        if (!b || api_reject_unknown_keys(b, keys, resp))
                return false;
        *body = b;
        return true;
}

/* Parses ?limit= into 1..max (default def); 0 or a 400 status. */
static unsigned parse_limit(struct api_request *req, struct api_response *resp, int def, int max,
                            int *out)
{
        const char *s = api_query(req, "limit");

        *out = def;
        if (!s)
                return 0;
        if (str_to_int(s, out) < 0 || *out < 1 || *out > max)
                return api_errorf(resp, 400, "invalid_parameter", "invalid limit", NULL,
                                  "limit must be an integer from 1 to %d, got '%s'", max, s);
        return 0;
}

static char *cursor_encode(const char *text)
{
        size_t n = strlen(text);
        size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        char *out = malloc(cap);

        if (out)
                sodium_bin2base64(out, cap, (const unsigned char *)text, n,
                                  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        return out;
}

/* Decodes ?cursor= into a malloc'd string (NULL when absent); 400 on garbage. */
static unsigned cursor_decode(struct api_request *req, struct api_response *resp, char **out)
{
        const char *s = api_query(req, "cursor");
        size_t n, len = 0;
        char *buf;

        *out = NULL;
        if (!s || !*s)
                return 0;
        n = strlen(s);
        if (n > 1024)
                goto bad;
        buf = calloc(1, n + 1);
        if (!buf)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        if (sodium_base642bin((unsigned char *)buf, n, s, n, NULL, &len, NULL,
                              sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
            memchr(buf, '\0', len)) {
                free(buf);
                goto bad;
        }
        buf[len] = '\0';
        *out = buf;
        return 0;
bad:
        return api_error(resp, 400, "invalid_cursor", "the cursor is not valid", NULL,
                         "pass next_cursor from the previous page unchanged");
}

/*
 * Runs a page query whose rows are (item json, cursor key text) with LIMIT limit + 1, and
 * answers {"data": [...], "next_cursor": ...}.
 */
unsigned api_page_query(struct api_request *req, struct api_response *resp, const char *sql, int n,
                        const char *const *params, int limit)
{
        int r = 0;
        _cleanup_pgresult_ PGresult *res = db_query(req->db, sql, n, params, &r);
        json_t *data, *page;

        if (!res)
                return api_db_error(resp, r);
        data = json_array();
        page = json_pack("{s:o}", "data", data);
        if (!page)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        int rows = PQntuples(res);
        for (int i = 0; i < rows && i < limit; i++) {
                json_t *item = pgjson_loads(PQgetvalue(res, i, 0), JSON_DECODE_ANY, NULL);
                if (item)
                        json_array_append_new(data, item);
        }
        if (rows > limit) {
                _cleanup_free_ char *c = cursor_encode(PQgetvalue(res, limit - 1, 1));
                json_object_set_new(page, "next_cursor", c ? json_string(c) : json_null());
        } else
                json_object_set_new(page, "next_cursor", json_null());
        return api_json(resp, 200, page);
}

/* Splits a "<timestamp>|<uuid>" cursor in place. */
static unsigned split_time_cursor(char *cursor, const char **ts, const char **id,
                                  struct api_response *resp)
{
        char *bar = cursor ? strrchr(cursor, '|') : NULL;

        *ts = *id = NULL;
        if (!cursor)
                return 0;
        if (!bar || !api_is_uuid(bar + 1))
                return api_error(resp, 400, "invalid_cursor", "the cursor is not valid", NULL,
                                 "pass next_cursor from the previous page unchanged");
        *bar = '\0';
        *ts = cursor;
        *id = bar + 1;
        return 0;
}

/* api_respond_query's answer to its query's outcome (r and j as api_query_json gives them). */
static unsigned respond_queried(struct api_response *resp, unsigned status, int r, json_t *j,
                                const char *what, const char *id)
{
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0 || !j)
                return api_not_found(resp, what, id);
        return api_json(resp, status, j);
}

unsigned api_respond_query(struct api_request *req, struct api_response *resp, unsigned status,
                           const char *sql, int n, const char *const *params, const char *what,
                           const char *id)
{
        json_t *j = NULL;
        int r = api_query_json(req, sql, n, params, &j);

        return respond_queried(resp, status, r, j, what, id);
}

/* The run as GET /v1/runs/{id} answers it; items: whether `nodes` holds map items too
 * (?items=false: not, they are in `maps`). Prepared: planning this read every time was most
 * of its time. */
static unsigned respond_run_read(struct api_request *req, struct api_response *resp,
                                 unsigned status, const char *id, bool items)
{
        const char *params[] = {id};
        json_t *j = NULL;
        int r = api_query_json_prepared(req, api_run_read_sql(items), 1, params, &j);

        return respond_queried(resp, status, r, j, "run", id);
}

const char *api_run_read_sql(bool items)
{
#define RUN_READ_FROM " FROM workflow_runs r" RUN_NODES_TOTAL " WHERE r.id = $1"
        return items ? "SELECT " RUN_JSON_ALL RUN_READ_FROM
                     : "SELECT " RUN_JSON_NOT_ITEMS RUN_READ_FROM;
#undef RUN_READ_FROM
}

static unsigned respond_run(struct api_request *req, struct api_response *resp, unsigned status,
                            const char *id)
{
        return respond_run_read(req, resp, status, id, true);
}

/* ?items=true|false (default true) into *items; 0, or the 400 answered. */
static unsigned parse_items(struct api_request *req, struct api_response *resp, bool *items)
{
        const char *s = api_query(req, "items");

        *items = !s || strcmp(s, "true") == 0;
        if (s && strcmp(s, "true") != 0 && strcmp(s, "false") != 0)
                return api_errorf(resp, 400, "invalid_parameter", "invalid items", NULL,
                                  "items must be true or false, got '%s'", s);
        return 0;
}

/* ---- ops -------------------------------------------------------------------------- */

/* GET /: the dashboard for a browser (api_static.c); where things are for everyone else
 * (`agently up` and --help point people at this address), and for a browser when the
 * dashboard is not built. */
static unsigned h_root(struct api_request *req, struct api_response *resp)
{
        static const char text[] =
            "agently API\n"
            "\n"
            "The dashboard: open this address in a browser and sign in with an API token.\n"
            "\n"
            "  API         /v1/...  (Authorization: Bearer <token>; the first token is the\n"
            "              admin token `agently up` wrote to .agently/admin-token)\n"
            "  CLI         agently --help  (agently workflow|run|approval|secret|token|user)\n"
            "  docs        docs/api.md, docs/openapi.yaml and docs/cli.md in the repository\n"
            "  health      /healthz  (process up), /readyz  (database and migrations)\n"
            "  metrics     /metrics  (Prometheus)\n";
        static const char html[] =
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>agently</title></head>\n<body>\n<h1>agently API</h1>\n"
            "<p>The dashboard is not built on this server (scripts/build builds it, "
            "<code>--web-dir</code> or <code>AGENTLY_WEB_DIR</code> names it); this address is "
            "the API.</p>\n<ul>\n"
            "<li>API: <code>/v1/...</code> with <code>Authorization: Bearer &lt;token&gt;</code>; "
            "the first token is the admin token <code>agently up</code> wrote to "
            "<code>.agently/admin-token</code></li>\n"
            "<li>CLI: <code>agently --help</code></li>\n"
            "<li>Docs: <code>docs/api.md</code>, <code>docs/openapi.yaml</code> and "
            "<code>docs/cli.md</code> in the repository</li>\n"
            "<li>Health: <a href=\"/healthz\">/healthz</a> (process up), <a "
            "href=\"/readyz\">/readyz</a> (database and migrations)</li>\n"
            "<li>Metrics: <a href=\"/metrics\">/metrics</a> (Prometheus)</li>\n"
            "</ul>\n</body></html>\n";
        const char *accept = api_header(req, MHD_HTTP_HEADER_ACCEPT);
        bool browser = accept && strstr(accept, "text/html");

        if (browser &&
            api_static_serve(api_server_options(req->server), req->connection, "/", resp))
                return resp->status; /* the dashboard */

        resp->text = strdup(browser ? html : text);
        if (!resp->text)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        resp->content_type = browser ? "text/html; charset=utf-8" : "text/plain; charset=utf-8";
        resp->status = 200;
        return 200;
}

static unsigned h_healthz(struct api_request *req, struct api_response *resp)
{
        return api_json(resp, 200, json_pack("{s:s}", "status", "ok"));
}

static unsigned h_readyz(struct api_request *req, struct api_response *resp)
{
        int r = 0;
        PGconn *c = api_pool_acquire(req->server, &r);

        if (!c)
                return api_error(resp, 503, "database_unavailable", "the database is unreachable",
                                 NULL, "check that Postgres is running");
        r = db_migrations_check(c);
        api_pool_release(req->server, c, PQstatus(c) != CONNECTION_OK);
        if (r == -ESTALE || r == -EBADMSG || r == -EPROTO)
                return api_error(resp, 503, "migrations_not_current",
                                 "the database schema is not current", db_last_error(),
                                 "run `agently migrate`");
        if (r < 0)
                return api_error(resp, 503, "database_unavailable", "the database is unreachable",
                                 NULL, "check that Postgres is running");
        return api_json(resp, 200,
                        json_pack("{s:s, s:s, s:s}", "status", "ready", "database", "ok",
                                  "migrations", "current"));
}

static unsigned h_metrics(struct api_request *req, struct api_response *resp)
{
        _cleanup_buf_ struct buf b;
        int r = 0;
        bool db_up = false;
        long long restarts = 0;
        PGconn *c = api_pool_acquire(req->server, &r);

        buf_init(&b, 4 * 1024 * 1024);
        if (c) {
                /* the run and queue samples, then the LLM usage ones (0013) */
                _cleanup_pgresult_ PGresult *res =
                    db_query(c,
                             "SELECT name, kind, help, labels, value FROM (SELECT 1 AS part, "
                             "m.* FROM agently_api_metrics() WITH ORDINALITY m UNION ALL "
                             "SELECT 2, l.* FROM agently_api_llm_metrics() WITH ORDINALITY l) "
                             "s ORDER BY part, ordinality",
                             0, NULL, &r);
                if (res) {
                        const char *last = "";
                        db_up = true;
                        for (int i = 0; i < PQntuples(res); i++) {
                                const char *name = PQgetvalue(res, i, 0);
                                if (strcmp(name, last) != 0)
                                        buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", name,
                                                   PQgetvalue(res, i, 2), name,
                                                   PQgetvalue(res, i, 1));
                                last = name;
                                const char *labels = PQgetvalue(res, i, 3);
                                buf_printf(&b, "%s%s%s%s %s\n", name, *labels ? "{" : "", labels,
                                           *labels ? "}" : "", PQgetvalue(res, i, 4));
                        }
                }
                api_pool_release(req->server, c, PQstatus(c) != CONNECTION_OK);
        }
        buf_printf(&b,
                   "# HELP agently_database_up 1 when the metrics query reached the "
                   "database.\n# TYPE agently_database_up gauge\nagently_database_up %d\n",
                   db_up ? 1 : 0);
        /* from the data directory, not the database: readable while Postgres is down */
        if (str_is_empty(getenv("AGENTLY_DATABASE_URL")) &&
            embedded_pg_read_restarts(api_server_data_dir(req->server), &restarts) == 0)
                buf_printf(&b,
                           "# HELP agently_postgres_restarts_total times agently up restarted "
                           "the embedded Postgres after it died.\n"
                           "# TYPE agently_postgres_restarts_total counter\n"
                           "agently_postgres_restarts_total %lld\n",
                           restarts);
        api_metrics_render_http(&b);
        resp->text = buf_steal(&b);
        resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
        resp->status = 200;
        return 200;
}

/* ---- users ------------------------------------------------------------------------ */

static unsigned h_me(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->user_id};

        return api_respond_query(req, resp, 200,
                                 "SELECT json_build_object('id', u.id, 'name', u.name, 'is_admin', "
                                 "u.is_admin, 'created_at', u.created_at, 'usage', "
                                 "(SELECT to_json(g) FROM agently_user_llm_usage(u.id) g)) "
                                 "FROM users u WHERE u.id = $1",
                                 1, params, "user", req->user_id);
}

static unsigned h_users_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"name", "is_admin", NULL};
        json_t *b, *j = NULL;
        int r;

        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *admin = json_object_get(b, "is_admin");
        if (!name)
                return api_error(resp, 400, "invalid_field", "name is required", "field 'name'",
                                 "send {\"name\": \"alice\"}");
        if (admin && !json_is_boolean(admin))
                return api_error(resp, 400, "invalid_field", "is_admin must be a boolean",
                                 "field 'is_admin'", NULL);
        const char *params[] = {req->user_id, name, json_is_true(admin) ? "true" : "false"};
        _cleanup_pgresult_ PGresult *created = db_query(
            req->db, "SELECT agently_admin_create_user($1, $2, $3::boolean)", 3, params, &r);
        if (!created) {
                if (r == -EACCES)
                        return api_error(resp, 403, "forbidden",
                                         "only an administrator can create users", NULL,
                                         "ask an administrator");
                if (r == -EEXIST)
                        return api_errorf(resp, 409, "conflict", "the user already exists", NULL,
                                          "user '%s'", name);
                if (r == -EINVAL)
                        return api_errorf(resp, 400, "invalid_field", "invalid user name",
                                          "use 1-63 of a-z 0-9 _ . @ -, starting with a letter "
                                          "or digit",
                                          "name '%s'", name);
                return api_db_error(resp, r);
        }
        /* a second statement: the listing must see the row the first one created */
        const char *p2[] = {req->user_id, PQgetvalue(created, 0, 0)};
        r = api_query_json(req,
                           "SELECT json_build_object('id', u.id, 'name', u.name, 'is_admin', "
                           "u.is_admin, 'created_at', u.created_at) "
                           "FROM agently_admin_list_users($1) u WHERE u.id = $2",
                           2, p2, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (!j) /* created but not listed: cannot happen within one transaction */
                return api_error(resp, 500, "internal", "could not read the new user", NULL, NULL);
        return api_json(resp, 201, j);
}

static unsigned h_users_list(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->user_id};
        json_t *j = NULL;
        int r = api_query_json(req,
                               "SELECT json_build_object('data', COALESCE(json_agg("
                               "json_build_object('id', u.id, 'name', u.name, 'is_admin', "
                               "u.is_admin, 'created_at', u.created_at) ORDER BY u.name), "
                               "'[]'::json)) FROM agently_admin_list_users($1) u",
                               1, params, &j);

        if (r == -EACCES)
                return api_error(resp, 403, "forbidden", "only an administrator can list users",
                                 NULL, NULL);
        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 200, j);
}

/* ---- workflows -------------------------------------------------------------------- */

static const struct api_versioned workflows_table = {.table = "workflows",
                                                     .alias = "w",
                                                     .what = "workflow",
                                                     .row_json = WORKFLOW_JSON,
                                                     .summary_json = WORKFLOW_VERSION_JSON,
                                                     .derived_column = "agent_refs"};

static unsigned h_workflows_apply(struct api_request *req, struct api_response *resp)
{
        json_t *def = api_body_object(req, resp, false);
        _cleanup_json_ json_t *errors = NULL, *refs = NULL;
        struct wf_workflow *wf = NULL;
        int r;

        if (!def)
                return resp->status;
        const char *name = json_string_value(json_object_get(def, "name"));
        if (!name || !api_is_name(name))
                return api_error(resp, 400, "invalid_field", "invalid workflow name",
                                 "field 'name'",
                                 "use 1-63 of a-z 0-9 _ . -, starting with a letter or digit");
        r = wf_parse(def, &wf, &errors);
        /* the engine's rules first, then whether the stored agents its nodes name exist */
        if (r == 0 && (r = wf_agent_refs(wf, &refs)) == 0) {
                int found = api_agent_refs_check(req, refs, &errors);
                if (found < 0) {
                        wf_free(wf);
                        return api_db_error(resp, found);
                }
                if (found > 0)
                        r = -EINVAL;
        }
        wf_free(wf);
        if (r == -EINVAL)
                return api_definition_invalid(resp, "workflow", "fix every error listed in errors",
                                              errors);
        if (r < 0)
                return api_error(resp, 500, "internal", "could not validate the workflow", NULL,
                                 NULL);
        return api_apply_versioned(req, resp, &workflows_table, name, def, refs);
}

static unsigned h_workflows_list(struct api_request *req, struct api_response *resp)
{
        return api_versioned_list(req, resp, &workflows_table);
}

static unsigned h_workflows_get(struct api_request *req, struct api_response *resp)
{
        return api_versioned_get(req, resp, &workflows_table);
}

static unsigned h_workflows_versions(struct api_request *req, struct api_response *resp)
{
        return api_versioned_versions(req, resp, &workflows_table);
}

/* ---- runs ------------------------------------------------------------------------- */

/* The run's time_scale member (engine: wf_time_scale_check) as SQL text into *out (NULL
 * when absent: real time). 0, or the 400 response's status. */
static unsigned run_time_scale(const json_t *body, struct api_response *resp, char **out)
{
        const json_t *v = json_object_get(body, "time_scale");
        char msg[256];
        double scale;

        *out = NULL;
        if (!v || json_is_null(v))
                return 0;
        if (wf_time_scale_check(v, &scale, msg, sizeof(msg)) < 0)
                return api_error(resp, 400, "invalid_field", msg, "field 'time_scale'",
                                 "leave it out for real time; e.g. 86400 to rehearse a "
                                 "3-day flow in 3 seconds");
        *out = str_printf("%.17g", scale);
        return *out ? 0 : api_error(resp, 500, "internal", "out of memory", NULL, NULL);
}

static unsigned h_runs_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"workflow", "version", "input", "time_scale", NULL};
        _cleanup_free_ char *input = NULL, *version_s = NULL, *scale_s = NULL;
        unsigned st;
        json_t *b;
        int r = 0;

        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        const char *name = json_string_value(json_object_get(b, "workflow"));
        json_t *version = json_object_get(b, "version"), *in = json_object_get(b, "input");
        if (!name)
                return api_error(resp, 400, "invalid_field", "workflow is required",
                                 "field 'workflow'", "send {\"workflow\": NAME, \"input\": {}}");
        if (version && (!json_is_integer(version) || json_integer_value(version) < 1))
                return api_error(resp, 400, "invalid_field", "version must be a positive integer",
                                 "field 'version'", NULL);
        if (in && !json_is_object(in))
                return api_error(resp, 400, "invalid_field", "input must be a JSON object",
                                 "field 'input'", "wrap values in an object: {\"input\": {...}}");
        if ((st = run_time_scale(b, resp, &scale_s)))
                return st;
        if (version)
                version_s = str_printf("%lld", (long long)json_integer_value(version));
        input = in ? json_dumps(in, JSON_COMPACT) : strdup("{}");
        if (!input)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);

        /* one statement: the workflow version, the run and its run.created event
         * (agently_create_run, 0032), answered as GET /v1/runs/{id} reads it (the run the
         * function returns stands for the table's row); the COMMIT goes with it */
        const char *params[] = {name, version_s, input, api_header(req, "Idempotency-Key"),
                                scale_s};
        json_t *j = NULL;
        r = api_query_json_last(req,
                                "SELECT " RUN_JSON_ALL
                                " FROM agently_create_run($1, $2::integer, $3::jsonb, $4, "
                                "$5::double precision) r" RUN_NODES_TOTAL,
                                5, params, &j);
        if (r == -EEXIST)
                return api_error(
                    resp, 409, "conflict", "a run with this Idempotency-Key already exists",
                    "its stored response has expired (keys are kept 24 h)", "use a new key");
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0) {
                if (version_s)
                        return api_errorf(resp, 404, "not_found", "workflow version not found",
                                          "`agently workflow show NAME` shows the latest "
                                          "version (GET /v1/workflows/{name}/versions lists all)",
                                          "workflow '%s' version %s", name, version_s);
                return api_errorf(resp, 404, "not_found", "workflow not found",
                                  "apply it first: `agently workflow apply FILE`", "workflow '%s'",
                                  name);
        }
        return api_json(resp, 201, j);
}

static unsigned h_runs_list(struct api_request *req, struct api_response *resp)
{
        const char *status = api_query(req, "status"), *workflow = api_query(req, "workflow");
        const char *after = api_query(req, "created_after");
        const char *before = api_query(req, "created_before");
        const char *narrow = "";
        _cleanup_free_ char *sql = NULL;
        unsigned st;

        if (status) {
                bool ok = false;
                for (size_t i = 0; i < ELEMENTSOF(run_statuses); i++)
                        if (strcmp(status, run_statuses[i].name) == 0) {
                                ok = true;
                                narrow = run_statuses[i].narrow;
                        }
                if (!ok)
                        return api_errorf(resp, 400, "invalid_parameter", "invalid status",
                                          "one of queued, running, waiting, needs_input, paused, "
                                          "completed, failed, canceled",
                                          "status '%s'", status);
        }
        const char *filters[] = {status, workflow, after, before};
        sql = str_printf("SELECT " RUN_SUMMARY_JSON ", r.created_at::text || '|' || r.id "
                         "FROM workflow_runs r WHERE ($1::text IS NULL OR r.status = $1)%s "
                         "AND ($2::text IS NULL OR r.workflow_name = $2) "
                         "AND ($3::timestamptz IS NULL OR r.created_at > $3::timestamptz) "
                         "AND ($4::timestamptz IS NULL OR r.created_at < $4::timestamptz) "
                         "AND ($5::timestamptz IS NULL OR (r.created_at, r.id) < "
                         "($5::timestamptz, $6::uuid)) "
                         "ORDER BY r.created_at DESC, r.id DESC LIMIT $7::integer",
                         narrow);
        if (!sql)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        st = api_time_page(req, resp, sql, 4, filters);
        const char *code =
            json_string_value(json_object_get(json_object_get(resp->json, "error"), "code"));
        if (st == 400 && code && !strcmp(code, "invalid_value")) /* a timestamp Postgres refused */
                api_errorf(resp, 400, "invalid_parameter", "invalid created_after/created_before",
                           "use RFC 3339, e.g. 2026-11-22T05:53:47Z",
                           "created_after '%s', created_before '%s'", after ? after : "",
                           before ? before : "");
        return st;
}

static unsigned h_runs_get(struct api_request *req, struct api_response *resp)
{
        bool items;
        unsigned st;

        if (!api_is_uuid(req->params[0]))
                return api_not_found(resp, "run", req->params[0]);
        if ((st = parse_items(req, resp, &items)))
                return st;
        return respond_run_read(req, resp, 200, req->params[0], items);
}

/* Every node's latest attempt, a page at a time in node id order (keyset on node_id);
 * ?map=NAME keeps only that map's items (NAME[i]), ?items=false leaves every map item out
 * (what a viewer of a large map reads besides GET /v1/runs/{id}'s `maps` aggregate). */
static unsigned h_runs_nodes(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0], *map = api_query(req, "map");
        _cleanup_free_ char *cursor = NULL, *limit_s = NULL, *status = NULL;
        unsigned st;
        bool items;
        int limit;

        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        if ((st = parse_items(req, resp, &items)))
                return st;
        if (map && (!*map || strchr(map, '[')))
                return api_errorf(resp, 400, "invalid_parameter", "invalid map",
                                  "pass the map node's id, e.g. map=fanout for fanout[0], ...",
                                  "map '%s'", map);
        if ((st = parse_limit(req, resp, NODES_DEFAULT, NODES_MAX, &limit)) ||
            (st = cursor_decode(req, resp, &cursor)))
                return st;
        if ((st = api_run_status(req, resp, id, &status)))
                return st;
        limit_s = str_printf("%d", limit + 1);
        if (!limit_s)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {id, cursor, limit_s, map};
        /* an item is `map[i]` (src/engine/plan.c, item_record), as in RUN_NODES_TOTAL;
         * without the items, a map's own output (theirs) is left out too */
        if (!items)
                return api_page_query(req, resp,
                                      "SELECT " NODE_STATE_NO_MAP_OUTPUT_JSON ", n.node_id FROM "
                                      "(SELECT n.*, " NODE_IS_MAP " AS is_map FROM "
                                      "agently_node_latest n WHERE n.workflow_run_id = $1 AND "
                                      "($2::text IS NULL OR n.node_id > $2) AND ($4::text IS NULL "
                                      "OR starts_with(n.node_id, $4 || '[')) AND right(n.node_id, "
                                      "1) <> ']' ORDER BY n.node_id LIMIT $3::integer) n ORDER BY "
                                      "n.node_id",
                                      4, params, limit);
        return api_page_query(req, resp,
                              "SELECT " NODE_STATE_JSON ", n.node_id FROM agently_node_latest n "
                              "WHERE n.workflow_run_id = $1 AND ($2::text IS NULL OR n.node_id > "
                              "$2) AND ($4::text IS NULL OR (starts_with(n.node_id, $4 || '[') "
                              "AND right(n.node_id, 1) = ']')) ORDER BY n.node_id LIMIT "
                              "$3::integer",
                              4, params, limit);
}

/* Runs an UPDATE ... RETURNING; 1 when a row changed, 0 when none, or a negative errno. */
static int update_one(struct api_request *req, const char *sql, int n, const char *const *params)
{
        int r = 0;
        _cleanup_pgresult_ PGresult *res = db_query(req->db, sql, n, params, &r);

        if (!res)
                return r;
        return PQntuples(res) > 0 ? 1 : 0;
}

static int notify_control(struct api_request *req, const char *id)
{
        const char *params[] = {id};
        int r = 0;
        _cleanup_pgresult_ PGresult *res =
            db_query(req->db, "SELECT pg_notify('agently_control', $1)", 1, params, &r);
        return res ? 0 : r;
}

enum control { CONTROL_CANCEL, CONTROL_PAUSE, CONTROL_RESUME };

/*
 * cancel/pause/resume: one call each of agently_cancel_run / agently_pause_run /
 * agently_resume_run (0009_run_status.sql), which own the status change, its event and its
 * consequences. A run no worker holds changes at once; a running run gets a request its
 * worker applies (only the lease holder may end a running run).
 */
static unsigned run_control(struct api_request *req, struct api_response *resp, enum control op)
{
        static const char *const sql[] = {
            [CONTROL_CANCEL] = "SELECT agently_cancel_run($1::uuid, $2, $3::jsonb)",
            [CONTROL_PAUSE] = "SELECT agently_pause_run($1::uuid, $2, $3::jsonb)",
            [CONTROL_RESUME] = "SELECT agently_resume_run($1::uuid, $2, $3::jsonb)",
        };
        static const char *const verb[] = {"canceled", "paused", "resumed"};
        const char *id = req->params[0];
        _cleanup_json_ json_t *by = json_pack("{s:s}", "by", req->user_name);
        _cleanup_free_ char *data = by ? json_dumps(by, JSON_COMPACT) : NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        const char *outcome;
        int r = 0;

        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        if (!data)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {id, verb[op], data};
        res = db_query(req->db, sql[op], 3, params, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQgetisnull(res, 0, 0))
                return api_not_found(resp, "run", id);
        outcome = PQgetvalue(res, 0, 0);
        if (is_terminal(outcome))
                return api_errorf(resp, 409, "conflict", "the run has already finished",
                                  "a finished run can be re-run: agently run rerun ID "
                                  "(POST /v1/runs/{id}/rerun)",
                                  "run %s is %s", id, outcome);
        if (op == CONTROL_RESUME && strcmp(outcome, "done") != 0 &&
            strcmp(outcome, "requested") != 0 && strcmp(outcome, "running") != 0)
                return api_errorf(resp, 409, "conflict", "the run is not paused", NULL,
                                  "run %s is %s", id, outcome);
        return respond_run(req, resp, 200, id);
}

static unsigned h_runs_cancel(struct api_request *req, struct api_response *resp)
{
        return run_control(req, resp, CONTROL_CANCEL);
}

static unsigned h_runs_pause(struct api_request *req, struct api_response *resp)
{
        return run_control(req, resp, CONTROL_PAUSE);
}

static unsigned h_runs_resume(struct api_request *req, struct api_response *resp)
{
        return run_control(req, resp, CONTROL_RESUME);
}

static unsigned h_runs_rerun(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"from_node", NULL};
        const char *id = req->params[0];
        json_t *b;
        _cleanup_json_ json_t *def = NULL, *ids = NULL;
        _cleanup_free_ char *ids_text = NULL;
        _cleanup_pgresult_ PGresult *ins = NULL;
        int r = 0;

        if (!api_begin_body(req, resp, "run", keys, true, &b))
                return resp->status;
        json_t *from_j = json_object_get(b, "from_node");
        if (from_j && (!json_is_string(from_j) || !*json_string_value(from_j) ||
                       strlen(json_string_value(from_j)) > 200))
                return api_error(resp, 400, "invalid_field", "from_node must be a node id",
                                 "field 'from_node'", NULL);
        const char *from = json_string_value(from_j);
        const char *p1[] = {id};
        r = api_query_json(req,
                           "SELECT w.definition FROM workflow_runs r JOIN workflows w ON "
                           "w.id = r.workflow_id WHERE r.id = $1",
                           1, p1, &def);
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_not_found(resp, "run", id);
        if (from) {
                /* the engine is the one authority on the graph: the nodes it says come
                 * before from_node are exactly the ones reused */
                _cleanup_wf_ struct wf_workflow *wf = NULL;
                _cleanup_json_ json_t *errors = NULL;
                r = wf_parse(def, &wf, &errors);
                if (r == -EINVAL) { /* stored before a rule it breaks was made */
                        const char *why = json_string_value(
                            json_object_get(json_array_get(errors, 0), "message"));
                        return api_error(resp, 409, "conflict",
                                         "the run's workflow version is not valid", why,
                                         "apply a corrected workflow (`agently workflow apply "
                                         "FILE`) and start a new run");
                }
                if (r == 0)
                        r = wf_nodes_before(wf, from, &ids);
                if (r == -ENOENT)
                        return api_errorf(resp, 400, "unknown_node", "from_node names no node",
                                          "use a node id of the run's workflow version",
                                          "node '%s'", from);
                if (r < 0)
                        return api_error(resp, 500, "internal", "could not plan the rerun", NULL,
                                         NULL);
                ids_text = json_dumps(ids, JSON_COMPACT);
        }
        const char *p2[] = {id, from};
        ins = db_query(req->db,
                       "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                       "workflow_version, input, budgets, rerun_of, rerun_from_node) "
                       "SELECT agently_current_user_id(), workflow_id, workflow_name, "
                       "workflow_version, input, budgets, id, $2 FROM workflow_runs WHERE id = $1 "
                       "RETURNING id",
                       2, p2, &r);
        if (!ins)
                return api_db_error(resp, r);
        const char *new_id = PQgetvalue(ins, 0, 0);
        if (ids_text && json_array_size(ids) > 0) {
                const char *p3[] = {id, new_id, ids_text};
                _cleanup_pgresult_ PGresult *cp =
                    db_query(req->db,
                             "SELECT agently_api_copy_node_runs($1, $2, "
                             "ARRAY(SELECT jsonb_array_elements_text($3::jsonb)))",
                             3, p3, &r);
                if (!cp)
                        return api_db_error(resp, r);
        }
        _cleanup_json_ json_t *data =
            json_pack("{s:s, s:s?, s:O?}", "rerun_of", id, "from_node", from, "reused_nodes", ids);
        r = api_append_event(req, new_id, "run.created", "run created (rerun)", data);
        if (r < 0)
                return api_db_error(resp, r);
        return respond_run(req, resp, 201, new_id);
}

/*
 * A person's answer to a run waiting in needs_input (on_failure: escalate): retry the
 * node, skip it, or stop the run. The decision is one call of agently_resolve_escalation
 * (0005_escalation.sql), which checks the tenant and the state under the run's row lock.
 */
static const struct api_db_error_case resolve_errors[] = {
    {"55000", 409, "conflict", "the run is not waiting for a person",
     "only a run in needs_input (a node escalated) can be resolved: `agently run show ID`"},
    {"22023", 400, "unknown_node", "no such node to resolve",
     "omit node to answer for the escalated one"},
    {NULL, 0, NULL, NULL, NULL},
};

static unsigned h_runs_resolve(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"action", "node", "comment", NULL};
        const char *id = req->params[0];
        _cleanup_pgresult_ PGresult *res = NULL;
        json_t *b;
        int r = 0;

        if (!api_begin_body(req, resp, "run", keys, false, &b))
                return resp->status;
        const char *action = json_string_value(json_object_get(b, "action"));
        json_t *node_j = json_object_get(b, "node"), *comment_j = json_object_get(b, "comment");
        if (json_is_null(node_j)) /* null means "not given" */
                node_j = NULL;
        if (json_is_null(comment_j))
                comment_j = NULL;
        if (!action || (strcmp(action, "retry") != 0 && strcmp(action, "skip") != 0 &&
                        strcmp(action, "stop") != 0))
                return api_error(resp, 400, "invalid_field", "action must be retry, skip or stop",
                                 "field 'action'",
                                 "retry runs the node again, skip lets the run go on without "
                                 "it, stop fails the run");
        if (node_j && (!json_is_string(node_j) || !*json_string_value(node_j) ||
                       strlen(json_string_value(node_j)) > 200))
                return api_error(resp, 400, "invalid_field", "node must be a node id",
                                 "field 'node'", "omit it to answer for the escalated node");
        if (comment_j &&
            (!json_is_string(comment_j) || strlen(json_string_value(comment_j)) > 2000))
                return api_error(resp, 400, "invalid_field",
                                 "comment must be a string of at most 2000 characters",
                                 "field 'comment'", NULL);
        const char *params[] = {id, action, json_string_value(node_j),
                                json_string_value(comment_j)};
        res = db_query(req->db, "SELECT * FROM agently_resolve_escalation($1, $2, $3, $4)", 4,
                       params, &r);
        if (!res)
                return api_db_error_with(resp, r, resolve_errors);
        r = notify_control(req, id);
        if (r < 0)
                return api_db_error(resp, r);
        return respond_run(req, resp, 200, id);
}

/*
 * A person's input to a run whose agent waits (docs/executor-protocol.md): the answer to
 * its ask_human question, and/or budgets to raise after one was exhausted. One call of
 * agently_answer_run_input (0012_agent_journal.sql), which checks the tenant and the state
 * under the run's row lock and queues the run; the agent resumes by replaying its journal.
 */
static const struct api_db_error_case input_errors[] = {
    {"55000", 409, "conflict", "the run is not waiting for input",
     "only a run in needs_input whose agent asked a question or ran out of budget takes input: "
     "`agently run show ID`"},
    {"22023", 400, "invalid_field", "give an answer or a budget", NULL},
    {NULL, 0, NULL, NULL, NULL},
};

static unsigned h_runs_input(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"answer", "budget", NULL};
        const char *id = req->params[0];
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_free_ char *answer = NULL, *budget = NULL;
        json_t *b, *a, *bu;
        int r = 0;

        if (!api_begin_body(req, resp, "run", keys, false, &b))
                return resp->status;
        a = json_object_get(b, "answer");
        bu = json_object_get(b, "budget");
        if (!a && !bu)
                return api_error(resp, 400, "invalid_field", "give an answer or a budget",
                                 "fields 'answer', 'budget'",
                                 "{\"answer\": \"...\"} answers the agent's question; "
                                 "{\"budget\": {\"max_cost_usd\": 10}} raises its budget");
        if (bu && !json_is_object(bu))
                return api_error(resp, 400, "invalid_field", "budget must be an object",
                                 "field 'budget'",
                                 "max_tokens, max_cost_usd, max_wall_clock, max_llm_calls, "
                                 "max_tool_calls");
        if ((a && !(answer = json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY))) ||
            (bu && !(budget = json_dumps(bu, JSON_COMPACT))))
                return api_db_error(resp, -ENOMEM);
        const char *params[] = {id, answer, budget};
        res = db_query(req->db, "SELECT * FROM agently_answer_run_input($1, $2::jsonb, $3::jsonb)",
                       3, params, &r);
        if (!res)
                return api_db_error_with(resp, r, input_errors);
        r = notify_control(req, id);
        if (r < 0)
                return api_db_error(resp, r);
        return respond_run(req, resp, 200, id);
}

static unsigned h_runs_signal(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0], *name = req->params[1];
        _cleanup_free_ char *status = NULL, *payload = NULL;
        json_t *sig = NULL;
        unsigned st;
        int r;

        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        if (strlen(name) > 200)
                return api_error(resp, 400, "invalid_parameter", "signal name too long",
                                 "at most 200 characters", NULL);
        if (req->body_len > 0) {
                json_t *j = api_request_json(req, resp);
                if (!j)
                        return resp->status;
                payload = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        } else
                payload = strdup("{}");
        if (!payload)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        if ((st = api_run_status(req, resp, id, &status)))
                return st;
        if (is_terminal(status))
                return api_errorf(resp, 409, "conflict", "the run has already finished",
                                  "a finished run takes no signals; start a new one: `agently run "
                                  "rerun ID`",
                                  "run %s is %s", id, status);
        const char *params[] = {id, name, payload};
        r = api_query_json(req,
                           "WITH s AS (INSERT INTO signals (user_id, workflow_run_id, name, "
                           "payload) VALUES (agently_current_user_id(), $1, $2, $3::jsonb) "
                           "RETURNING *) SELECT json_build_object('id', s.id, 'run_id', "
                           "s.workflow_run_id, 'name', s.name, 'payload', s.payload, "
                           "'created_at', s.created_at) FROM s",
                           3, params, &sig);
        if (r < 0)
                return api_db_error(resp, r);
        api_json(resp, 201, sig);
        /* wake it: a waiting run becomes claimable now; wake_requested closes the race with
         * a worker that is just deciding to wait (0003_queue.sql: agently_wake_run) */
        r = update_one(req, "SELECT 1 FROM agently_wake_run($1)", 1, params);
        if (r < 0)
                return api_db_error(resp, r);
        _cleanup_json_ json_t *data =
            json_pack("{s:s, s:O}", "name", name, "signal_id", json_object_get(sig, "id"));
        r = api_append_event(req, id, "signal.received", "signal received", data);
        if (r == 0)
                r = notify_control(req, id);
        if (r < 0)
                return api_db_error(resp, r);
        return 201;
}

/* ---- events ----------------------------------------------------------------------- */

static unsigned parse_after(const char *s, struct api_response *resp, int64_t *out)
{
        *out = 0;
        if (!s || !*s)
                return 0;
        if (str_to_int64(s, out) < 0 || *out < 0)
                return api_errorf(resp, 400, "invalid_parameter", "invalid event position",
                                  "pass the seq of the last event received", "'%s'", s);
        return 0;
}

/* The events of run r after seq $2 (at most $3), or (?last=N) its last $3: one statement,
 * so the status and the events come from one snapshot and "terminal" is only true when no
 * event can follow the ones returned; run_created_at prunes the read to the run's own
 * partition of logs. */
#define EVENTS_PAGE_SQL(events)                                                                    \
        "SELECT json_build_object('data', COALESCE(json_agg(e.body ORDER BY e.seq) FILTER (WHERE " \
        "e.seq IS NOT NULL), '[]'::json), 'next_after', COALESCE(max(e.seq), $2::bigint), "        \
        "'run_status', r.status, 'terminal', r.status IN ('completed', 'failed', 'canceled') AND " \
        "($4::boolean OR count(e.seq) < $3::integer)) FROM workflow_runs r LEFT JOIN LATERAL "     \
        "(SELECT seq, " API_EVENT_JSON " AS body FROM logs WHERE workflow_run_id = r.id AND "      \
        "run_created_at = r.created_at " events ") e ON true WHERE r.id = $1 GROUP BY r.status"

static unsigned h_events_list(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0], *last = api_query(req, "last");
        _cleanup_free_ char *after_s = NULL, *limit_s = NULL;
        int64_t after;
        unsigned st;
        int limit, r;
        json_t *j = NULL;

        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        if ((st = parse_after(api_query(req, "after"), resp, &after)) ||
            (st = parse_limit(req, resp, EVENTS_DEFAULT, EVENTS_MAX, &limit)))
                return st;
        if (last && (api_query(req, "after") || api_query(req, "limit")))
                return api_error(resp, 400, "invalid_parameter", "last cannot be combined",
                                 "pass last=N alone for the last N events, or after and limit",
                                 NULL);
        if (last && (str_to_int(last, &limit) < 0 || limit < 1 || limit > EVENTS_MAX))
                return api_errorf(resp, 400, "invalid_parameter", "invalid last", NULL,
                                  "last must be an integer from 1 to %d, got '%s'", EVENTS_MAX,
                                  last);
        after_s = str_printf("%lld", (long long)after);
        limit_s = str_printf("%d", limit);
        if (!after_s || !limit_s)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *params[] = {id, after_s, limit_s, last ? "true" : "false"};
        /* the last N: the partition's (run, seq) index walked backwards, N rows */
        r = api_query_json(req,
                           last ? EVENTS_PAGE_SQL("ORDER BY seq DESC LIMIT $3::integer")
                                : EVENTS_PAGE_SQL("AND seq > $2::bigint ORDER BY seq LIMIT "
                                                  "$3::integer"),
                           4, params, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (!j)
                return api_not_found(resp, "run", id);
        return api_json(resp, 200, j);
}

static unsigned h_events_stream(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0];
        const char *last = api_header(req, "Last-Event-ID");
        _cleanup_free_ char *status = NULL;
        int64_t after;
        unsigned st;

        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        st = parse_after(last && *last ? last : api_query(req, "after"), resp, &after);
        if (st)
                return st;
        if ((st = api_run_status(req, resp, id, &status)))
                return st;
        resp->raw =
            api_sse_open(api_server_sse(req->server), req->connection, req->user_id, id, after);
        if (!resp->raw)
                return api_error(resp, 500, "internal", "could not open the stream", NULL, NULL);
        resp->status = 200;
        return 200;
}

/* ---- secrets ---------------------------------------------------------------------- */

static unsigned h_secrets_list(struct api_request *req, struct api_response *resp)
{
        json_t *j = NULL;
        int r = api_query_json(req,
                               "SELECT json_build_object('data', COALESCE(json_agg(" SECRET_JSON
                               " ORDER BY s.name), '[]'::json)) FROM secrets s",
                               0, NULL, &j);

        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 200, j);
}

static char *bytea_hex(const unsigned char *p, size_t n)
{
        char *out = malloc(2 + 2 * n + 1);

        if (out) {
                out[0] = '\\';
                out[1] = 'x';
                str_hex(p, n, out + 2);
        }
        return out;
}

static unsigned h_secrets_put(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"value", NULL};
        const char *name = req->params[0];
        struct secrets_sealed sealed = {0};
        struct secrets_kms kms;
        _cleanup_free_ char *secret_id = NULL, *ct = NULL, *nonce = NULL, *wk = NULL, *kv = NULL;
        _cleanup_free_ char *why = NULL;
        _cleanup_pgresult_ PGresult *found = NULL;
        json_t *b, *j = NULL;
        int r = 0;
        bool exists;

        if (!secrets_name_valid(name))
                return api_errorf(resp, 400, "invalid_parameter", "invalid secret name",
                                  "use " SECRETS_NAME_RULE, "name '%s'", name);
        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        json_t *value = json_object_get(b, "value");
        if (!json_is_string(value))
                return api_error(resp, 400, "invalid_field", "value must be a string",
                                 "field 'value'", "send {\"value\": \"...\"}");
        if (json_string_length(value) > SECRETS_MAX_VALUE)
                return api_errorf(resp, 400, "invalid_field", "the secret value is too long", NULL,
                                  "at most %d bytes", SECRETS_MAX_VALUE);
        const char *p1[] = {name};
        _cleanup_pgresult_ PGresult *lock = db_query(
            req->db,
            "SELECT pg_advisory_xact_lock(hashtext('agently.secret:' || agently_current_user_id() "
            "|| ':' || $1))",
            1, p1, &r);
        if (!lock)
                return api_db_error(resp, r);
        found = db_query(req->db,
                         "SELECT id FROM secrets WHERE name = $1 UNION ALL "
                         "SELECT gen_random_uuid() LIMIT 1",
                         1, p1, &r);
        if (!found)
                return api_db_error(resp, r);
        secret_id = strdup(PQgetvalue(found, 0, 0));
        if (!secret_id)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        {
                const char *p[] = {name};
                _cleanup_pgresult_ PGresult *e =
                    db_query(req->db, "SELECT 1 FROM secrets WHERE name = $1", 1, p, &r);
                if (!e)
                        return api_db_error(resp, r);
                exists = PQntuples(e) > 0;
        }
        r = secrets_kms_init(&kms, api_server_data_dir(req->server));
        if (r == 0)
                r = secrets_seal_for_store(req->db, &kms, req->user_id, secret_id, name,
                                           json_string_value(value), json_string_length(value),
                                           &sealed, &why);
        secrets_kms_release(&kms);
        if (r < 0) {
                if (r == -EAGAIN || r == -ECONNRESET || r == -ETIMEDOUT)
                        return api_db_error(resp, r);
                log_error("could not encrypt a secret: %s", why ? why : strerror(-r));
                return api_error(resp, 500, "internal", "could not encrypt the secret",
                                 "the key-encryption key is unavailable",
                                 "the server log names the KMS provider and what failed");
        }
        ct = bytea_hex(sealed.ciphertext, sealed.ciphertext_len);
        nonce = bytea_hex(sealed.nonce, sizeof(sealed.nonce));
        wk = bytea_hex(sealed.wrapped_key, sealed.wrapped_len);
        kv = str_printf("%d", sealed.key_version);
        secrets_sealed_free(&sealed);
        if (!ct || !nonce || !wk || !kv)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        const char *p2[] = {secret_id, name, ct, nonce, wk, kv};
        r = api_query_json(req,
                           exists ? "WITH s AS (UPDATE secrets SET ciphertext = $3::bytea, nonce "
                                    "= $4::bytea, wrapped_key = $5::bytea, key_version = "
                                    "$6::integer, updated_at = now() WHERE id = $1 AND name = $2 "
                                    "RETURNING id, name, key_version, created_at, updated_at) "
                                    "SELECT " SECRET_JSON " FROM s"
                                  : "WITH s AS (INSERT INTO secrets (id, user_id, name, "
                                    "ciphertext, nonce, wrapped_key, key_version) VALUES ($1, "
                                    "agently_current_user_id(), $2, $3::bytea, $4::bytea, "
                                    "$5::bytea, $6::integer) RETURNING id, name, key_version, "
                                    "created_at, updated_at) SELECT " SECRET_JSON " FROM s",
                           6, p2, &j);
        if (r < 0)
                return api_db_error(resp, r);
        if (!j)
                return api_error(resp, 500, "internal", "could not store the secret", NULL, NULL);
        return api_json(resp, exists ? 200 : 201, j);
}

static unsigned h_secrets_delete(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->params[0]};
        int r = update_one(req, "DELETE FROM secrets WHERE name = $1 RETURNING id", 1, params);

        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_not_found(resp, "secret", req->params[0]);
        resp->status = 204;
        return 204;
}

/* ---- tokens ----------------------------------------------------------------------- */

static unsigned h_tokens_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"name", "user", NULL};
        char token[AUTH_TOKEN_LEN + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char hash_hex[2 + 2 * AUTH_TOKEN_HASH_BYTES + 1];
        _cleanup_free_ char *for_user = NULL;
        json_t *b, *j = NULL;
        int r = 0;

        if (api_header(req, "Idempotency-Key"))
                return api_error(resp, 400, "idempotency_not_supported",
                                 "Idempotency-Key is not accepted when creating a token",
                                 "replaying the response would require storing the token",
                                 "retry without the header; revoke a token you did not receive");
        if (!api_begin_body(req, resp, NULL, keys, false, &b))
                return resp->status;
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *user = json_object_get(b, "user");
        if (!name || !*name || strlen(name) > 100)
                return api_error(resp, 400, "invalid_field", "name is required (1-100 characters)",
                                 "field 'name'", "send {\"name\": \"laptop\"}");
        if (user && !json_is_string(user))
                return api_error(resp, 400, "invalid_field", "user must be a user name",
                                 "field 'user'", NULL);
        if (user && strcmp(json_string_value(user), req->user_name) != 0) {
                if (!req->is_admin)
                        return api_error(resp, 403, "forbidden",
                                         "only an administrator can create tokens for others", NULL,
                                         NULL);
                const char *p[] = {req->user_id, json_string_value(user)};
                _cleanup_pgresult_ PGresult *u =
                    db_query(req->db, "SELECT id FROM agently_admin_list_users($1) WHERE name = $2",
                             2, p, &r);
                if (!u)
                        return api_db_error(resp, r);
                if (PQntuples(u) == 0)
                        return api_not_found(resp, "user", json_string_value(user));
                for_user = strdup(PQgetvalue(u, 0, 0));
        } else
                for_user = strdup(req->user_id);
        if (!for_user)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        r = auth_token_generate(token, hash, shown);
        if (r < 0)
                return api_error(resp, 500, "internal", "could not generate a token", NULL, NULL);
        auth_token_hash_hex(hash, hash_hex);
        const char *params[] = {req->user_id, for_user, name, hash_hex, shown, token};
        r = api_query_json(req,
                           "SELECT json_build_object('id', t.id, 'name', $3::text, 'prefix', "
                           "$5::text, 'user_id', $2::uuid, 'created_at', now(), 'token', $6::text) "
                           "FROM (SELECT agently_admin_create_token($1, $2, $3, $4::bytea, $5, "
                           "NULL) AS id) t",
                           6, params, &j);
        sodium_memzero(token, sizeof(token));
        if (r == -EACCES)
                return api_error(resp, 403, "forbidden", "cannot create a token for that user",
                                 NULL, NULL);
        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 201, j);
}

static unsigned h_tokens_list(struct api_request *req, struct api_response *resp)
{
        json_t *j = NULL;
        int r = api_query_json(req,
                               "SELECT json_build_object('data', COALESCE(json_agg(" TOKEN_JSON
                               " ORDER BY t.created_at DESC, t.id), '[]'::json)) FROM api_tokens t",
                               0, NULL, &j);

        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 200, j);
}

static unsigned h_tokens_revoke(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->params[0]};
        int r;

        if (!api_is_uuid(req->params[0]))
                return api_not_found(resp, "token", req->params[0]);
        r = update_one(req,
                       "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) "
                       "WHERE id = $1 RETURNING id",
                       1, params);
        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_not_found(resp, "token", req->params[0]);
        resp->status = 204;
        return 204;
}

/* ---- helpers the other route files share (api_internal.h) ---------------------------- */

unsigned api_time_page(struct api_request *req, struct api_response *resp, const char *sql, int n,
                       const char *const *filters)
{
        _cleanup_free_ char *cursor = NULL, *limit_s = NULL;
        const char *params[API_TIME_PAGE_FILTERS_MAX + 3];
        unsigned st;
        int limit;

        if (n < 0 || n > API_TIME_PAGE_FILTERS_MAX) /* a caller's mistake, not the user's */
                return api_error(resp, 500, "internal", "too many filters for a page", NULL, NULL);
        for (int i = 0; i < n; i++)
                params[i] = filters[i];
        if ((st = parse_limit(req, resp, PAGE_DEFAULT, PAGE_MAX, &limit)) ||
            (st = cursor_decode(req, resp, &cursor)) ||
            (st = split_time_cursor(cursor, &params[n], &params[n + 1], resp)))
                return st;
        limit_s = str_printf("%d", limit + 1);
        if (!limit_s)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        params[n + 2] = limit_s;
        return api_page_query(req, resp, sql, n + 3, params, limit);
}

unsigned api_run_status(struct api_request *req, struct api_response *resp, const char *id,
                        char **status)
{
        const char *params[] = {id};
        int r = 0;
        _cleanup_pgresult_ PGresult *res = NULL;

        if (status)
                *status = NULL;
        if (!api_is_uuid(id))
                return api_not_found(resp, "run", id);
        res = db_query(req->db, "SELECT status FROM workflow_runs WHERE id = $1", 1, params, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQntuples(res) == 0)
                return api_not_found(resp, "run", id);
        if (status && !(*status = strdup(PQgetvalue(res, 0, 0))))
                return api_db_error(resp, -ENOMEM);
        return 0;
}

unsigned api_page_begin_name(struct api_request *req, struct api_response *resp, int *limit,
                             char **cursor)
{
        unsigned st;

        *cursor = NULL;
        if ((st = parse_limit(req, resp, PAGE_DEFAULT, PAGE_MAX, limit)))
                return st;
        return cursor_decode(req, resp, cursor);
}

/* ---- the table -------------------------------------------------------------------- */

const struct api_route api_routes[] = {
    {"GET", "/", h_root, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/healthz", h_healthz, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/readyz", h_readyz, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/metrics", h_metrics, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/v1/me", h_me, 0},
    {"POST", "/v1/workflows", h_workflows_apply, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/workflows", h_workflows_list, 0},
    {"GET", "/v1/workflows/{name}", h_workflows_get, 0},
    {"GET", "/v1/workflows/{name}/versions", h_workflows_versions, 0},
    {"POST", "/v1/agents", api_h_agents_apply, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/agents", api_h_agents_list, 0},
    {"GET", "/v1/agents/{name}", api_h_agents_get, 0},
    {"GET", "/v1/agents/{name}/versions", api_h_agents_versions, 0},
    {"POST", "/v1/runs", h_runs_create, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/runs", h_runs_list, 0},
    {"GET", "/v1/runs/{id}", h_runs_get, 0},
    {"POST", "/v1/runs/{id}/cancel", h_runs_cancel, 0},
    {"POST", "/v1/runs/{id}/pause", h_runs_pause, 0},
    {"POST", "/v1/runs/{id}/resume", h_runs_resume, 0},
    {"POST", "/v1/runs/{id}/rerun", h_runs_rerun, API_ROUTE_IDEMPOTENT},
    {"POST", "/v1/runs/{id}/resolve", h_runs_resolve, 0},
    {"POST", "/v1/runs/{id}/input", h_runs_input, 0},
    {"POST", "/v1/runs/{id}/signals/{name}", h_runs_signal, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/runs/{id}/nodes", h_runs_nodes, 0},
    {"GET", "/v1/runs/{id}/events", h_events_list, 0},
    {"GET", "/v1/runs/{id}/events/stream", h_events_stream, API_ROUTE_STREAM},
    {"GET", "/v1/runs/{id}/agents/{agent_id}/journal", api_h_agent_journal, 0},
    {"GET", "/v1/runs/{id}/artifacts", api_h_artifacts_list, 0},
    {"GET", "/v1/runs/{id}/artifacts/{artifact_id}", api_h_artifact_get, 0},
    {"POST", "/v1/users", h_users_create, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/users", h_users_list, 0},
    {"GET", "/v1/approvals", api_h_approvals_list, 0},
    {"GET", "/v1/approvals/{id}", api_h_approvals_get, 0},
    {"POST", "/v1/approvals/{id}/decide", api_h_approvals_decide, 0},
    {"POST", "/v1/approvals/{id}/reassign", api_h_approvals_reassign, 0},
    {"GET", "/v1/approval-links/{token}", api_h_approval_link_show, API_ROUTE_PUBLIC},
    {"POST", "/v1/approval-links/{token}", api_h_approval_link_decide, API_ROUTE_PUBLIC},
    {"GET", "/v1/inbox", api_h_inbox, 0},
    {"POST", "/v1/schedules", api_schedules_create, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/schedules", api_schedules_list, 0},
    {"GET", "/v1/schedules/{id}", api_schedules_get, 0},
    {"PATCH", "/v1/schedules/{id}", api_schedules_update, 0},
    {"DELETE", "/v1/schedules/{id}", api_schedules_delete, 0},
    {"POST", "/v1/triggers", api_triggers_create, API_ROUTE_IDEMPOTENT},
    {"GET", "/v1/triggers", api_triggers_list, 0},
    {"GET", "/v1/triggers/{id}", api_triggers_get, 0},
    {"DELETE", "/v1/triggers/{id}", api_triggers_delete, 0},
    {"POST", "/v1/hooks/{id}", api_hooks_deliver, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/v1/secrets", h_secrets_list, 0},
    {"PUT", "/v1/secrets/{name}", h_secrets_put, 0},
    {"DELETE", "/v1/secrets/{name}", h_secrets_delete, 0},
    {"POST", "/v1/tokens", h_tokens_create, 0},
    {"GET", "/v1/tokens", h_tokens_list, 0},
    {"DELETE", "/v1/tokens/{id}", h_tokens_revoke, 0},
    {"POST", "/v1/sessions", api_h_session_create, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"GET", "/v1/sessions", api_h_sessions_list, 0},
    {"DELETE", "/v1/sessions/{id}", api_h_sessions_revoke, 0},
    {"GET", "/v1/session", api_h_session_get, API_ROUTE_PUBLIC | API_ROUTE_NO_DB},
    {"DELETE", "/v1/session", api_h_session_delete, 0},
};
const size_t api_routes_count = ELEMENTSOF(api_routes);

/* Matches path against pattern; on success copies the parameters into storage. */
static bool match_pattern(const char *pattern, const char *path, const char **params, size_t max,
                          char **storage)
{
        const char *p = pattern, *s = path;
        size_t nparams = 0;
        const char *starts[API_MAX_PATH_PARAMS];
        size_t lens[API_MAX_PATH_PARAMS];

        while (*p && *s) {
                if (*p == '{') {
                        const char *end = strchr(s, '/');
                        size_t len = end ? (size_t)(end - s) : strlen(s);
                        if (len == 0 || nparams >= max || nparams >= API_MAX_PATH_PARAMS)
                                return false;
                        starts[nparams] = s;
                        lens[nparams++] = len;
                        s += len;
                        p = strchr(p, '}');
                        if (!p)
                                return false;
                        p++;
                        continue;
                }
                if (*p != *s)
                        return false;
                p++;
                s++;
        }
        if (*p || *s)
                return false;
        if (!storage)
                return true;
        size_t total = 0;
        for (size_t i = 0; i < nparams; i++)
                total += lens[i] + 1;
        char *buf = malloc(total ? total : 1);
        if (!buf)
                return false;
        char *w = buf;
        for (size_t i = 0; i < nparams; i++) {
                memcpy(w, starts[i], lens[i]);
                w[lens[i]] = '\0';
                params[i] = w;
                w += lens[i] + 1;
        }
        *storage = buf;
        return true;
}

int api_route_match(const char *method, const char *path, const char **params, size_t max,
                    char **storage, const char **allow)
{
        static __thread char allow_buf[64];
        bool path_matched = false;

        *storage = NULL;
        allow_buf[0] = '\0';
        for (size_t i = 0; i < api_routes_count; i++) {
                if (!match_pattern(api_routes[i].pattern, path, NULL, max, NULL))
                        continue;
                if (strcmp(api_routes[i].method, method) == 0)
                        return match_pattern(api_routes[i].pattern, path, params, max, storage)
                                   ? (int)i
                                   : -3;
                path_matched = true;
                size_t n = strlen(allow_buf);
                snprintf(allow_buf + n, sizeof(allow_buf) - n, "%s%s", n ? ", " : "",
                         api_routes[i].method);
        }
        *allow = allow_buf;
        return path_matched ? -2 : -1;
}
