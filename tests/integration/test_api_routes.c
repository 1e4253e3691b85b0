/*
 * The API against a real Postgres and a real `agently api` process: every route, tenant
 * isolation (user B on user A's objects gets 404 and changes nothing), Idempotency-Key,
 * SSE resume with Last-Event-ID (every event exactly once, in order), limits (413, 431,
 * 400 with position, 404/405), 200 idle connections not blocking a client, a statement past
 * statement_timeout answered 503 `timeout` (not `database_unavailable`) with Retry-After,
 * secrets encrypted at rest, and a clean SIGTERM with a stream open.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "api_internal.h"
#include "auth_token.h"
#include "cleanup.h"
#include "secrets.h"
#include "testlib.h"

struct server {
        char *conninfo; /* superuser */
        char *data_dir;
        char base[64];
        int port;
        pid_t pid;
        PGconn *db;
        char admin_token[AUTH_TOKEN_LEN + 1];
};

static struct server S;

struct reply {
        long status;
        char *body;
        char *headers;
        json_t *json;
};

static void reply_free(struct reply *r)
{
        free(r->body);
        free(r->headers);
        if (r->json)
                json_decref(r->json);
        *r = (struct reply){0};
}

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
        char **s = ud;
        size_t old = *s ? strlen(*s) : 0, add = size * n;
        char *x = realloc(*s, old + add + 1);

        assert_non_null(x);
        memcpy(x + old, p, add);
        x[old + add] = '\0';
        *s = x;
        return add;
}

/* One request; extra is a NULL-terminated header list (may be NULL). */
static struct reply http(const char *method, const char *path, const char *token, const char *body,
                         const char *const *extra)
{
        struct reply r = {0};
        struct curl_slist *h = NULL;
        char url[512], auth[128];
        CURL *c = curl_easy_init();

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (token) {
                snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
                h = curl_slist_append(h, auth);
        }
        for (size_t i = 0; extra && extra[i]; i++)
                h = curl_slist_append(h, extra[i]);
        if (body) {
                h = curl_slist_append(h, "Content-Type: application/json");
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        curl_easy_cleanup(c);
        curl_slist_free_all(h);
        if (r.body && *r.body)
                r.json = json_loads(r.body, JSON_DECODE_ANY, NULL);
        return r;
}

static const char *jstr(json_t *j, const char *key)
{
        return json_string_value(json_object_get(j, key));
}

/* Asserts the error shape and code. */
static void assert_error(struct reply *r, long status, const char *code)
{
        if (r->status != status)
                fprintf(stderr, "unexpected %ld: %s\n", r->status, r->body ? r->body : "");
        assert_int_equal(r->status, status);
        assert_non_null(r->json);
        json_t *e = json_object_get(r->json, "error");
        assert_non_null(e);
        assert_string_equal(jstr(e, "code"), code);
        assert_non_null(jstr(e, "message"));
        assert_non_null(json_object_get(e, "detail"));
        assert_non_null(json_object_get(e, "hint"));
}

/* Sends one request and asserts the error it is answered with. */
static void assert_refused(const char *method, const char *path, const char *token,
                           const char *body, long status, const char *code)
{
        struct reply r = http(method, path, token, body, NULL);

        if (r.status != status || !json_is_object(r.json) ||
            !jstr(json_object_get(r.json, "error"), "code") ||
            strcmp(jstr(json_object_get(r.json, "error"), "code"), code) != 0)
                fprintf(stderr, "%s %s: expected %ld %s\n", method, path, status, code);
        assert_error(&r, status, code);
        reply_free(&r);
}

/* Applies a definition (POST path) as the admin and asserts the answer's status (201 a new
 * version, 200 unchanged) and version. */
static void assert_applied(const char *path, const char *definition, long status, long long version)
{
        struct reply r = http("POST", path, S.admin_token, definition, NULL);

        assert_int_equal(r.status, status);
        assert_int_equal(json_integer_value(json_object_get(r.json, "version")), version);
        reply_free(&r);
}

/* Applies a definition (POST path) as the admin and asserts it is refused as invalid (422)
 * with an error that says what. */
static void assert_invalid(const char *path, const char *definition, const char *says)
{
        struct reply r = http("POST", path, S.admin_token, definition, NULL);

        assert_error(&r, 422, "validation_failed");
        if (!strstr(r.body, says))
                fail_msg("no \"%s\" in: %s", says, r.body);
        reply_free(&r);
}

static void start_server(void)
{
        char listen[64], token_hash_hex[2 + 64 + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        static char env_db[4096];

        S.conninfo = test_db_create("api");
        S.db = test_db_connect(S.conninfo);
        S.data_dir = test_tempdir("api");
        assert_int_equal(auth_token_generate(S.admin_token, hash, shown), 0);
        auth_token_hash_hex(hash, token_hash_hex);
        char *admin = test_db_value(S.db, "INSERT INTO users (name, is_admin) VALUES ('root', "
                                          "true) RETURNING id");
        PQclear(test_db_must(S.db, "SELECT 1")); /* connection sanity */
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) VALUES "
                 "('%s', 'test', '%s'::bytea, '%s')",
                 admin, token_hash_hex, shown);
        PQclear(test_db_must(S.db, sql));
        free(admin);
        S.port = test_free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", S.port);
        snprintf(S.base, sizeof(S.base), "http://127.0.0.1:%d", S.port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", S.conninfo);
        const char *args[] = {"api",      "--listen",  listen, "--data-dir",
                              S.data_dir, "--timeout", "20",   NULL};
        /* no dashboard here: / is the page saying where things are (tests/web has the
         * dashboard's files) */
        const char *env[] = {env_db, "AGENTLY_WEB_DIR=/nonexistent", NULL};
        char log[512];
        snprintf(log, sizeof(log), "%s/api.log", S.data_dir);
        S.pid = test_spawn_agently(args, env, log);
        char url[128];
        snprintf(url, sizeof(url), "%s/healthz", S.base);
        assert_true(test_wait_http_ok(url, 15000));
}

static int setup(void **state)
{
        curl_global_init(CURL_GLOBAL_ALL);
        start_server();
        return 0;
}

static int teardown(void **state)
{
        if (S.pid > 0)
                test_stop_process(S.pid, SIGTERM, 10000);
        PQfinish(S.db);
        test_rm_rf(S.data_dir);
        free(S.data_dir);
        free(S.conninfo);
        return 0;
}

/* Creates a user through the admin route and a token for it; returns the token. */
static char *make_user(const char *name)
{
        char body[256];
        struct reply r;

        snprintf(body, sizeof(body), "{\"name\": \"%s\"}", name);
        r = http("POST", "/v1/users", S.admin_token, body, NULL);
        assert_int_equal(r.status, 201);
        assert_string_equal(jstr(r.json, "name"), name);
        reply_free(&r);
        snprintf(body, sizeof(body), "{\"name\": \"t\", \"user\": \"%s\"}", name);
        r = http("POST", "/v1/tokens", S.admin_token, body, NULL);
        assert_int_equal(r.status, 201);
        char *tok = strdup(jstr(r.json, "token"));
        reply_free(&r);
        return tok;
}

static const char *WF =
    "{\"name\": \"etl\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", \"output\": {}},"
    " {\"id\": \"b\", \"type\": \"transform\", \"output\": {}, \"after\": [\"a\"]},"
    " {\"id\": \"c\", \"type\": \"transform\", \"output\": {}, \"after\": [\"b\"]}]}";

static char *start_run(const char *token)
{
        struct reply r =
            http("POST", "/v1/runs", token, "{\"workflow\": \"etl\", \"input\": {\"x\": 1}}", NULL);
        assert_int_equal(r.status, 201);
        char *id = strdup(jstr(r.json, "id"));
        reply_free(&r);
        return id;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_auth_and_ops(void **state)
{
        struct reply r = http("GET", "/v1/me", NULL, NULL, NULL);
        assert_error(&r, 401, "unauthorized");
        assert_non_null(strcasestr(r.headers, "WWW-Authenticate: Bearer"));
        reply_free(&r);
        assert_refused("GET", "/v1/me", "agt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL,
                       401, "unauthorized");
        assert_refused("GET", "/v1/me", "not-a-token", NULL, 401, "unauthorized");
        r = http("GET", "/v1/me", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "name"), "root");
        assert_true(json_is_true(json_object_get(r.json, "is_admin")));
        reply_free(&r);
        /* the 401 hint names where the first token is: `agently token create` needs one */
        r = http("GET", "/v1/me", NULL, NULL, NULL);
        assert_non_null(strstr(jstr(json_object_get(r.json, "error"), "hint"), "admin-token"));
        reply_free(&r);
        /* / says where things are (a page, not a JSON 404), until the dashboard is there */
        r = http("GET", "/", NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strcasestr(r.headers, "Content-Type: text/plain"));
        assert_non_null(strstr(r.body, "/healthz"));
        assert_non_null(strstr(r.body, "/v1/"));
        assert_non_null(strstr(r.body, "docs/api.md"));
        reply_free(&r);
        const char *browser[] = {"Accept: text/html,application/xhtml+xml", NULL};
        r = http("GET", "/", NULL, NULL, browser);
        assert_int_equal(r.status, 200);
        assert_non_null(strcasestr(r.headers, "Content-Type: text/html"));
        assert_non_null(strstr(r.body, "<a href=\"/readyz\">"));
        reply_free(&r);
        r = http("GET", "/healthz", NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        r = http("GET", "/readyz", NULL, NULL, NULL);
        if (r.status != 200)
                fprintf(stderr, "readyz: %s\n", r.body);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        r = http("GET", "/metrics", NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "agently_runs{status=\"queued\"}"));
        assert_non_null(strstr(r.body, "agently_queue_depth"));
        assert_non_null(
            strstr(r.body, "agently_http_request_duration_seconds_bucket{route=\"/v1/me\""));
        reply_free(&r);
}

static void test_workflows(void **state)
{
        struct reply r = http("POST", "/v1/workflows", S.admin_token, WF, NULL);
        assert_int_equal(r.status, 201);
        assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 1);
        reply_free(&r);
        /* same definition, other key order and spacing: unchanged, 200 */
        assert_applied(
            "/v1/workflows",
            "{\"nodes\":[{\"type\":\"transform\",\"output\":{},\"id\":\"a\"},{\"id\":\"b\","
            "\"after\":[\"a\"],"
            "\"type\":\"transform\",\"output\":{}},{\"id\":\"c\",\"type\":\"transform\","
            "\"output\":{},\"after\":[\"b\"]}],"
            "\"name\":\"etl\"}",
            200, 1);
        assert_applied("/v1/workflows",
                       "{\"name\": \"etl2\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                       "\"output\": {}}]}",
                       201, 1);
        /* a changed definition is a new version */
        assert_applied("/v1/workflows",
                       "{\"name\": \"etl2\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                       "\"output\": {\"v\": 2}}]}",
                       201, 2);
        /* a field the engine does not know is refused, by name, and makes no version */
        assert_invalid("/v1/workflows",
                       "{\"name\": \"etl2\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                       "\"output\": {}, \"x\": 1}]}",
                       "unknown field 'x'");
        assert_int_equal(
            test_db_int(S.db, "SELECT max(version) FROM workflows WHERE name = 'etl2'"), 2);
        assert_invalid("/v1/workflows",
                       "{\"name\": \"bad\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                       "\"output\": {}, "
                       "\"after\": [\"zz\"]}]}",
                       "after");
        r = http("GET", "/v1/workflows", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_ge(json_array_size(json_object_get(r.json, "data")), 2);
        reply_free(&r);
        r = http("GET", "/v1/workflows/etl?version=1", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(json_object_get(r.json, "definition"), "name"), "etl");
        reply_free(&r);
        assert_refused("GET", "/v1/workflows/etl?version=9", S.admin_token, NULL, 404, "not_found");
        r = http("GET", "/v1/workflows/etl/versions", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
        reply_free(&r);
}

static const char *AGENT =
    "{\"name\": \"researcher\", \"description\": \"reads pages\", \"provider\": \"openai\", "
    "\"base_url\": \"http://127.0.0.1:9/v1\", \"model\": \"gpt-4o-mini\", "
    "\"api_key_secret\": \"LLMKEY\", \"system\": \"You call tools when asked.\", "
    "\"tools\": [\"http_request\"], \"allowed_hosts\": [\"127.0.0.1\"], "
    "\"budget\": {\"max_tokens\": 100000, \"max_cost_usd\": 5}}";

/* Agent definitions: versioned like workflows, validated by the agent node's rules. */
static void test_agents(void **state)
{
        struct reply r = http("POST", "/v1/agents", S.admin_token, AGENT, NULL);
        assert_int_equal(r.status, 201);
        assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 1);
        assert_string_equal(jstr(json_object_get(r.json, "definition"), "model"), "gpt-4o-mini");
        reply_free(&r);
        /* the same again (other key order): unchanged */
        assert_applied("/v1/agents",
                       "{\"model\": \"gpt-4o-mini\", \"provider\": \"openai\", \"name\": "
                       "\"researcher\", \"description\": \"reads pages\", \"base_url\": "
                       "\"http://127.0.0.1:9/v1\", \"api_key_secret\": \"LLMKEY\", \"system\": "
                       "\"You call tools when asked.\", \"tools\": [\"http_request\"], "
                       "\"allowed_hosts\": [\"127.0.0.1\"], \"budget\": {\"max_cost_usd\": 5, "
                       "\"max_tokens\": 100000}}",
                       200, 1);
        /* a change is a new version; version 1 stays as it was */
        assert_applied("/v1/agents",
                       "{\"name\": \"researcher\", \"provider\": \"anthropic\", \"model\": "
                       "\"claude-sonnet-4-5\", \"prompt\": \"Research ${ input.topic }.\"}",
                       201, 2);
        /* the agent node's rules, with the field named relative to the definition */
        r = http("POST", "/v1/agents", S.admin_token,
                 "{\"name\": \"researcher\", \"provider\": \"openai\", \"model\": \"m\", "
                 "\"budget\": {\"max_cost_usd\": -1}}",
                 NULL);
        assert_error(&r, 422, "validation_failed");
        assert_non_null(strstr(r.body, "max_cost_usd"));
        assert_null(strstr(r.body, "/nodes/0"));
        reply_free(&r);
        assert_invalid("/v1/agents",
                       "{\"name\": \"researcher\", \"provider\": \"gemini\", \"model\": \"m\"}",
                       "unknown provider 'gemini'");
        assert_invalid("/v1/agents",
                       "{\"name\": \"researcher\", \"provider\": \"openai\", \"model\": \"m\", "
                       "\"api_key\": \"sk-123\"}",
                       "api_key");
        assert_refused("POST", "/v1/agents", S.admin_token,
                       "{\"name\": \"Bad Name\", \"provider\": \"openai\", \"model\": \"m\"}", 400,
                       "invalid_field");
        r = http("POST", "/v1/agents", S.admin_token,
                 "{\"name\": \"x\", \"description\": 5, \"provider\": \"openai\", "
                 "\"model\": \"m\"}",
                 NULL);
        assert_error(&r, 400, "invalid_field");
        reply_free(&r);
        assert_int_equal(
            test_db_int(S.db, "SELECT max(version) FROM agents WHERE name = 'researcher'"), 2);
        r = http("POST", "/v1/agents", S.admin_token,
                 "{\"name\": \"writer\", \"provider\": \"anthropic\", \"model\": \"m\"}", NULL);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        /* list: the latest of each, by name, paged */
        r = http("GET", "/v1/agents?limit=1", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        json_t *first = json_array_get(json_object_get(r.json, "data"), 0);
        assert_string_equal(jstr(first, "name"), "researcher");
        assert_int_equal(json_integer_value(json_object_get(first, "version")), 2);
        assert_string_equal(jstr(first, "provider"), "anthropic");
        assert_non_null(jstr(r.json, "next_cursor"));
        char path[256];
        snprintf(path, sizeof(path), "/v1/agents?limit=1&cursor=%s", jstr(r.json, "next_cursor"));
        reply_free(&r);
        r = http("GET", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(json_array_get(json_object_get(r.json, "data"), 0), "name"),
                            "writer");
        assert_true(json_is_null(json_object_get(r.json, "next_cursor")));
        reply_free(&r);
        r = http("GET", "/v1/agents/researcher?version=1", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(json_object_get(r.json, "definition"), "api_key_secret"),
                            "LLMKEY");
        reply_free(&r);
        r = http("GET", "/v1/agents/researcher", S.admin_token, NULL, NULL);
        assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
        reply_free(&r);
        assert_refused("GET", "/v1/agents/researcher?version=0", S.admin_token, NULL, 400,
                       "invalid_parameter");
        assert_refused("GET", "/v1/agents/researcher?version=9", S.admin_token, NULL, 404,
                       "not_found");
        r = http("GET", "/v1/agents/researcher/versions", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 2);
        assert_int_equal(json_integer_value(json_object_get(
                             json_array_get(json_object_get(r.json, "data"), 0), "version")),
                         2);
        reply_free(&r);
        assert_refused("GET", "/v1/agents/nobody/versions", S.admin_token, NULL, 404, "not_found");
}

static void test_runs(void **state)
{
        struct reply r;
        char path[256], sql[512];

        assert_refused("POST", "/v1/runs", S.admin_token, "{\"workflow\": \"nope\"}", 404,
                       "not_found");
        r = http("POST", "/v1/runs", S.admin_token, "{\"workflow\": \"etl\", \"input\": [1]}",
                 NULL);
        assert_error(&r, 400, "invalid_field");
        reply_free(&r);
        r = http("POST", "/v1/runs", S.admin_token,
                 "{\"workflow\": \"etl\", \"input\": {\"k\": 2}}", NULL);
        assert_int_equal(r.status, 201);
        assert_string_equal(jstr(r.json, "status"), "queued");
        assert_int_equal(json_integer_value(json_object_get(r.json, "workflow_version")), 1);
        char *id = strdup(jstr(r.json, "id"));
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        r = http("GET", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(r.json, "input"), "k")),
                         2);
        assert_true(json_is_array(json_object_get(r.json, "nodes")));
        reply_free(&r);

        /* pagination: 3 more runs, pages of 2, every run once */
        char *more[3];
        for (int i = 0; i < 3; i++)
                more[i] = start_run(S.admin_token);
        r = http("GET", "/v1/runs?limit=2&workflow=etl", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 2);
        const char *cursor = jstr(r.json, "next_cursor");
        assert_non_null(cursor);
        snprintf(path, sizeof(path), "/v1/runs?limit=2&workflow=etl&cursor=%s", cursor);
        struct reply r2 = http("GET", path, S.admin_token, NULL, NULL);
        assert_int_equal(r2.status, 200);
        assert_int_equal(json_array_size(json_object_get(r2.json, "data")), 2);
        assert_true(json_is_null(json_object_get(r2.json, "next_cursor")));
        for (int i = 0; i < 2; i++)
                for (int k = 0; k < 2; k++)
                        assert_string_not_equal(
                            jstr(json_array_get(json_object_get(r.json, "data"), i), "id"),
                            jstr(json_array_get(json_object_get(r2.json, "data"), k), "id"));
        reply_free(&r);
        reply_free(&r2);
        assert_refused("GET", "/v1/runs?status=bogus", S.admin_token, NULL, 400,
                       "invalid_parameter");
        assert_refused("GET", "/v1/runs?cursor=!!", S.admin_token, NULL, 400, "invalid_cursor");
        r = http("GET", "/v1/runs?status=queued&created_after=2000-01-01T00:00:00Z", S.admin_token,
                 NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 4);
        reply_free(&r);

        /* pause, resume, cancel a run nobody holds */
        snprintf(path, sizeof(path), "/v1/runs/%s/pause", id);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "paused");
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/runs/%s/resume", id);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "queued");
        reply_free(&r);
        assert_refused("POST", path, S.admin_token, NULL, 409, "conflict");
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", id);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "canceled");
        assert_false(json_is_null(json_object_get(r.json, "finished_at")));
        reply_free(&r);
        assert_refused("POST", path, S.admin_token, NULL, 409, "conflict");

        /* a running run: the request flag is set, the status stays the worker's */
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET status = 'running', claimed_by = 'w1', "
                 "lease_expires_at = now() + interval '1 min', attempt = 1 WHERE id = '%s'",
                 more[0]);
        PQclear(test_db_must(S.db, sql));
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", more[0]);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "running");
        assert_true(json_is_true(json_object_get(r.json, "cancel_requested")));
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/runs/%s/pause", more[0]);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_true(json_is_true(json_object_get(r.json, "pause_requested")));
        reply_free(&r);

        /* signal: stored, run woken (waiting -> due now) */
        snprintf(sql, sizeof(sql), "id = '%s'", more[1]);
        test_run_move(S.db, sql, "waiting", "run_at = 'infinity'");
        snprintf(path, sizeof(path), "/v1/runs/%s/signals/go", more[1]);
        r = http("POST", path, S.admin_token, "{\"ok\": true}", NULL);
        assert_int_equal(r.status, 201);
        assert_string_equal(jstr(r.json, "name"), "go");
        reply_free(&r);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM signals WHERE workflow_run_id = '%s' "
                                     "AND payload = '{\"ok\": true}'",
                                     more[1]),
                         1);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT (run_at <= now() AND wake_requested)::int FROM "
                                     "workflow_runs WHERE id = '%s'",
                                     more[1]),
                         1);

        /* events page: control actions were logged, in seq order */
        snprintf(path, sizeof(path), "/v1/runs/%s/events?after=0&limit=2", id);
        r = http("GET", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        json_t *data = json_object_get(r.json, "data");
        assert_int_equal(json_array_size(data), 2);
        assert_string_equal(jstr(json_array_get(data, 0), "kind"), "run.created");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "seq")), 1);
        assert_false(json_is_true(json_object_get(r.json, "terminal")));
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/runs/%s/events?after=2", id);
        r = http("GET", path, S.admin_token, NULL, NULL);
        data = json_object_get(r.json, "data");
        assert_string_equal(jstr(json_array_get(data, json_array_size(data) - 1), "kind"),
                            "run.canceled");
        assert_true(json_is_true(json_object_get(r.json, "terminal")));
        reply_free(&r);

        /* rerun from b: a's recorded result is reused, b and c are not */
        snprintf(sql, sizeof(sql),
                 "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, "
                 "output, finished_at) SELECT user_id, id, n, 1, 'completed', '{\"v\": 1}', now() "
                 "FROM workflow_runs, unnest(ARRAY['a', 'b']) n WHERE id = '%s'",
                 id);
        PQclear(test_db_must(S.db, sql));
        snprintf(path, sizeof(path), "/v1/runs/%s/rerun", id);
        r = http("POST", path, S.admin_token, "{\"from_node\": \"b\"}", NULL);
        assert_int_equal(r.status, 201);
        assert_string_equal(jstr(r.json, "rerun_of"), id);
        assert_string_equal(jstr(r.json, "rerun_from_node"), "b");
        json_t *nodes = json_object_get(r.json, "nodes");
        assert_int_equal(json_array_size(nodes), 1);
        assert_string_equal(jstr(json_array_get(nodes, 0), "node_id"), "a");
        assert_string_equal(jstr(json_array_get(nodes, 0), "status"), "completed");
        reply_free(&r);
        assert_refused("POST", path, S.admin_token, "{\"from_node\": \"zz\"}", 400, "unknown_node");
        r = http("POST", path, S.admin_token, NULL, NULL); /* from the start */
        assert_int_equal(r.status, 201);
        assert_int_equal(json_array_size(json_object_get(r.json, "nodes")), 0);
        reply_free(&r);
        for (int i = 0; i < 3; i++)
                free(more[i]);
        free(id);
}

/* The run list finds a run of every status, though no index of workflow_runs holds the
 * status (0046): a live run through its queue row, a failed or canceled one through its
 * error, a completed one newest first. One run of each status for a user of its own; a
 * needs_input run without an error is still found (through the queue). */
static void test_run_list_by_status(void **state)
{
        static const char *const statuses[] = {"queued", "running",   "waiting", "needs_input",
                                               "paused", "completed", "failed",  "canceled"};
        char *tok = make_user("lister");
        char *user = test_db_value(S.db, "SELECT id FROM users WHERE name = 'lister'");
        char path[256], sql[1024];
        struct reply r;

        (void)state;
        r = http("POST", "/v1/workflows", tok, WF, NULL);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        char *wf = test_db_value(S.db, "SELECT id FROM workflows WHERE user_id = '%s'", user);
        for (size_t i = 0; i < ELEMENTSOF(statuses); i++) {
                const char *st = statuses[i];
                bool ended =
                    !strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "canceled");
                bool has_error = !strcmp(st, "failed") || !strcmp(st, "canceled");
                snprintf(
                    sql, sizeof(sql),
                    "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                    "workflow_version, status, error, finished_at, claimed_by, lease_expires_at, "
                    "idempotency_key) VALUES ('%s', '%s', 'etl', 1, '%s', %s, %s, %s, %s, '%s')",
                    user, wf, st, has_error ? "'{\"message\": \"no\"}'" : "NULL",
                    ended ? "now()" : "NULL", !strcmp(st, "running") ? "'w'" : "NULL",
                    !strcmp(st, "running") ? "now() + interval '1 hour'" : "NULL", st);
                PQclear(test_db_must(S.db, sql));
        }
        for (size_t i = 0; i < ELEMENTSOF(statuses); i++) {
                snprintf(path, sizeof(path), "/v1/runs?status=%s", statuses[i]);
                r = http("GET", path, tok, NULL, NULL);
                assert_int_equal(r.status, 200);
                json_t *data = json_object_get(r.json, "data");
                assert_int_equal(json_array_size(data), 1);
                assert_string_equal(jstr(json_array_get(data, 0), "status"), statuses[i]);
                char *id = test_db_value(S.db,
                                         "SELECT id FROM workflow_runs WHERE user_id = '%s' AND "
                                         "idempotency_key = '%s'",
                                         user, statuses[i]);
                assert_string_equal(jstr(json_array_get(data, 0), "id"), id);
                free(id);
                reply_free(&r);
        }
        r = http("GET", "/v1/runs", tok, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), ELEMENTSOF(statuses));
        reply_free(&r);
        free(wf);
        free(user);
        free(tok);
}

/* A run of workflow `name` (stored as the owner, unchecked) whose nodes in ids (SQL array
 * text) completed; returns the run id. */
static char *run_with_records(const char *name, const char *definition, const char *ids)
{
        char sql[2048];

        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflows (user_id, name, version, definition, definition_sha256) "
                 "SELECT id, '%s', 1, '%s'::jsonb, encode(sha256('%s'::bytea), 'hex') FROM users "
                 "WHERE name = 'root' "
                 "RETURNING id",
                 name, definition, name);
        char *wf = test_db_value(S.db, "%s", sql);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version, status, finished_at) SELECT user_id, id, name, 1, "
                 "'completed', now() FROM workflows WHERE id = '%s' RETURNING id",
                 wf);
        char *run = test_db_value(S.db, "%s", sql);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, "
                 "output, finished_at) SELECT user_id, id, n, 1, 'completed', '{}', now() "
                 "FROM workflow_runs, unnest(%s::text[]) n WHERE id = '%s'",
                 ids, run);
        PQclear(test_db_must(S.db, sql));
        free(wf);
        return run;
}

/* The node ids of a run's node list, sorted, comma-separated (malloc'd). */
static char *reused_nodes(json_t *run)
{
        char *nodes = json_dumps(json_object_get(run, "nodes"), JSON_COMPACT);
        char *out = test_db_value(S.db,
                                  "SELECT coalesce(string_agg(n->>'node_id', ',' ORDER BY "
                                  "n->>'node_id'), '') FROM json_array_elements('%s'::json) n",
                                  nodes);
        free(nodes);
        return out;
}

/* a literal (not a variable) so that -Wformat-nonliteral holds at -O0 too */
#define RERUN_GRAPH                                                                                \
        "{\"name\": \"%s\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "                 \
        "\"output\": {}}, {\"id\": \"c\", \"type\": \"condition\", \"after\": "                    \
        "[\"a\"], \"if\": \"true\", \"then\": [\"b\"]}, {\"id\": \"b\", \"type\": "                \
        "\"transform\", \"output\": {}}%s]}"

/* Rerun from a node reuses exactly the nodes the engine puts before it: a condition's
 * branches are downstream of it although they do not list it in `after`. A version the
 * engine refuses (stored before a rule it breaks) cannot be rerun from a node: the old
 * fallback walked `after` alone and would have reused the branch `b` here. */
static void test_rerun_follows_the_engine(void **state)
{
        char text[1024], path[256];
        struct reply r;

        snprintf(text, sizeof(text), RERUN_GRAPH, "branchy", "");
        char *run = run_with_records("branchy", text, "ARRAY['a', 'c', 'b']");
        snprintf(path, sizeof(path), "/v1/runs/%s/rerun", run);
        r = http("POST", path, S.admin_token, "{\"from_node\": \"c\"}", NULL);
        assert_int_equal(r.status, 201);
        char *reused = reused_nodes(r.json);
        assert_string_equal(reused, "a");
        free(reused);
        reply_free(&r);
        free(run);

        /* the same graph and a node type this engine does not know */
        snprintf(text, sizeof(text), RERUN_GRAPH, "legacy",
                 ", {\"id\": \"z\", \"type\": \"teleport\", \"after\": [\"a\"]}");
        run = run_with_records("legacy", text, "ARRAY['a', 'c', 'b', 'z']");
        snprintf(path, sizeof(path), "/v1/runs/%s/rerun", run);
        r = http("POST", path, S.admin_token, "{\"from_node\": \"c\"}", NULL);
        assert_error(&r, 409, "conflict");
        assert_non_null(strstr(r.body, "teleport"));
        reply_free(&r);
        assert_int_equal(
            test_db_int(S.db, "SELECT count(*) FROM workflow_runs WHERE rerun_of = '%s'", run), 0);
        free(run);
}

/* Nothing of Postgres' own report reaches a user: no "ERROR:"/"DETAIL:"/"CONTEXT:" lines,
 * no SQL function names. */
static void assert_no_database_text(const struct reply *r)
{
        static const char *const leaks[] = {
            "ERROR:",       "DETAIL:", "CONTEXT:", "PL/pgSQL", "agently_", "invalid input syntax",
            "SQL statement"};

        for (size_t i = 0; i < sizeof(leaks) / sizeof(leaks[0]); i++)
                if (strstr(r->body, leaks[i]))
                        fail_msg("database text '%s' in: %s", leaks[i], r->body);
}

/* Issue 12 item 6: a SQL function's RAISE reaches users as its message alone, under a code
 * chosen by its SQLSTATE; Postgres' own messages not at all. */
static void test_database_errors_in_own_words(void **state)
{
        char path[256], detail[256];
        char *id = start_run(S.admin_token);
        struct reply r;

        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", id);
        r = http("POST", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/runs/%s/resolve", id);
        r = http("POST", path, S.admin_token, "{\"action\": \"retry\"}", NULL);
        assert_error(&r, 409, "conflict");
        assert_no_database_text(&r);
        json_t *e = json_object_get(r.json, "error");
        snprintf(detail, sizeof(detail), "run %s is canceled, not waiting for a person", id);
        assert_string_equal(jstr(e, "detail"), detail);
        assert_string_equal(jstr(e, "message"), "the run is not waiting for a person");
        reply_free(&r);

        /* another SQLSTATE of the same function: no_data_found is a 404 */
        r = http("POST", "/v1/runs/00000000-0000-4000-8000-000000000000/resolve", S.admin_token,
                 "{\"action\": \"stop\"}", NULL);
        assert_error(&r, 404, "not_found");
        assert_no_database_text(&r);
        assert_string_equal(jstr(json_object_get(r.json, "error"), "detail"),
                            "run 00000000-0000-4000-8000-000000000000 not found");
        reply_free(&r);

        /* Postgres' own error (a timestamp it cannot read): the project's words only */
        r = http("GET", "/v1/runs?created_after=yesterday-ish", S.admin_token, NULL, NULL);
        assert_error(&r, 400, "invalid_parameter");
        assert_no_database_text(&r);
        assert_non_null(strstr(r.body, "yesterday-ish"));
        reply_free(&r);
        free(id);
}

static void test_idempotency(void **state)
{
        const char *k1[] = {"Idempotency-Key: key-1", NULL};
        const char *body = "{\"workflow\": \"etl\", \"input\": {\"n\": 7}}";
        struct reply a = http("POST", "/v1/runs", S.admin_token, body, k1);
        struct reply b = http("POST", "/v1/runs", S.admin_token, body, k1);

        assert_int_equal(a.status, 201);
        assert_int_equal(b.status, 201);
        assert_string_equal(jstr(a.json, "id"), jstr(b.json, "id"));
        assert_null(strcasestr(a.headers, "Idempotent-Replayed"));
        assert_non_null(strcasestr(b.headers, "Idempotent-Replayed: true"));
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM workflow_runs WHERE input = "
                                           "'{\"n\": 7}'"),
                         1);
        struct reply c = http("POST", "/v1/runs", S.admin_token,
                              "{\"workflow\": \"etl\", \"input\": {\"n\": 8}}", k1);
        assert_error(&c, 422, "idempotency_key_reused");
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM workflow_runs WHERE input = "
                                           "'{\"n\": 8}'"),
                         0);
        /* a failed request does not burn its key */
        const char *k2[] = {"Idempotency-Key: key-2", NULL};
        struct reply d = http("POST", "/v1/runs", S.admin_token, "{\"workflow\": \"missing\"}", k2);
        assert_int_equal(d.status, 404);
        struct reply e = http("POST", "/v1/runs", S.admin_token, body, k2);
        assert_int_equal(e.status, 201);
        assert_string_not_equal(jstr(e.json, "id"), jstr(a.json, "id"));
        const char *k3[] = {"Idempotency-Key: key-3", NULL};
        struct reply f = http("POST", "/v1/tokens", S.admin_token, "{\"name\": \"x\"}", k3);
        assert_error(&f, 400, "idempotency_not_supported");
        reply_free(&a);
        reply_free(&b);
        reply_free(&c);
        reply_free(&d);
        reply_free(&e);
        reply_free(&f);
}

static void test_cross_tenant(void **state)
{
        char *ta = make_user("alice"), *tb = make_user("bob");
        char path[256], sql[512];
        struct reply r;

        r = http("POST", "/v1/workflows", ta, WF, NULL);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        char *run = start_run(ta);
        r = http("PUT", "/v1/secrets/api-key", ta, "{\"value\": \"alice-secret\"}", NULL);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO approvals (user_id, workflow_run_id, node_id, title) SELECT "
                 "user_id, id, 'b', 'ship it?' FROM workflow_runs WHERE id = '%s' RETURNING id",
                 run);
        char *appr = test_db_value(S.db, "%s", sql);
        r = http("GET", "/v1/tokens", ta, NULL, NULL);
        char *tok_id = strdup(jstr(json_array_get(json_object_get(r.json, "data"), 0), "id"));
        reply_free(&r);

        /* no token: 401 everywhere */
        for (size_t i = 0; i < api_routes_count; i++)
                if (!(api_routes[i].flags & API_ROUTE_PUBLIC)) {
                        char p[256];
                        const char *pat = api_routes[i].pattern;
                        size_t w = 0;
                        for (const char *c = pat; *c && w < sizeof(p) - 40;) {
                                if (*c == '{') {
                                        w += (size_t)snprintf(p + w, sizeof(p) - w, "%s", run);
                                        c = strchr(c, '}') + 1;
                                } else
                                        p[w++] = *c++;
                        }
                        p[w] = '\0';
                        assert_refused(api_routes[i].method, p, NULL, "{}", 401, "unauthorized");
                }

        /* B on A's objects */
        const char *run_posts[] = {"cancel", "pause", "resume", "rerun", "signals/x"};
        for (size_t i = 0; i < ELEMENTSOF(run_posts); i++) {
                snprintf(path, sizeof(path), "/v1/runs/%s/%s", run, run_posts[i]);
                assert_refused("POST", path, tb, "{}", 404, "not_found");
        }
        const char *run_gets[] = {"", "/nodes", "/events", "/events/stream"};
        for (size_t i = 0; i < ELEMENTSOF(run_gets); i++) {
                snprintf(path, sizeof(path), "/v1/runs/%s%s", run, run_gets[i]);
                assert_refused("GET", path, tb, NULL, 404, "not_found");
        }
        assert_refused("POST", "/v1/runs", tb, "{\"workflow\": \"etl\"}", 404, "not_found");
        const char *empties[] = {"/v1/runs", "/v1/workflows", "/v1/approvals", "/v1/secrets",
                                 "/v1/agents"};
        for (size_t i = 0; i < ELEMENTSOF(empties); i++) {
                r = http("GET", empties[i], tb, NULL, NULL);
                assert_int_equal(r.status, 200);
                assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
                reply_free(&r);
        }
        r = http("GET", "/v1/tokens", tb, NULL, NULL);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1); /* only bob's */
        assert_string_not_equal(jstr(json_array_get(json_object_get(r.json, "data"), 0), "id"),
                                tok_id);
        reply_free(&r);
        assert_refused("GET", "/v1/workflows/etl", tb, NULL, 404, "not_found");
        assert_refused("GET", "/v1/workflows/etl/versions", tb, NULL, 404, "not_found");
        assert_refused("GET", "/v1/agents/researcher", tb, NULL, 404, "not_found");
        snprintf(path, sizeof(path), "/v1/approvals/%s", appr);
        assert_refused("GET", path, tb, NULL, 404, "not_found");
        snprintf(path, sizeof(path), "/v1/approvals/%s/decide", appr);
        assert_refused("POST", path, tb, "{\"decision\": \"approve\"}", 404, "not_found");
        assert_refused("DELETE", "/v1/secrets/api-key", tb, NULL, 404, "not_found");
        snprintf(path, sizeof(path), "/v1/tokens/%s", tok_id);
        assert_refused("DELETE", path, tb, NULL, 404, "not_found");
        assert_refused("GET", "/v1/users", tb, NULL, 403, "forbidden");
        assert_refused("POST", "/v1/users", tb, "{\"name\": \"mallory\"}", 403, "forbidden");
        assert_refused("POST", "/v1/tokens", tb, "{\"name\": \"x\", \"user\": \"alice\"}", 403,
                       "forbidden");
        /* bob's own secret of the same name is his, alice's is untouched */
        r = http("PUT", "/v1/secrets/api-key", tb, "{\"value\": \"bob\"}", NULL);
        assert_int_equal(r.status, 201);
        reply_free(&r);

        /* nothing of A's changed */
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE id = '%s' AND "
                                     "status = 'queued' AND NOT cancel_requested AND NOT "
                                     "pause_requested",
                                     run),
                         1);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM signals"), 1); /* test_runs' */
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM approvals WHERE status = "
                                     "'pending' AND id = '%s'",
                                     appr),
                         1);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE rerun_of = "
                                     "'%s'",
                                     run),
                         0);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM api_tokens WHERE id = '%s' AND "
                                     "revoked_at IS NULL",
                                     tok_id),
                         1);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM secrets WHERE name = 'api-key'"),
                         2);

        /* and A can still do everything */
        snprintf(path, sizeof(path), "/v1/approvals/%s/decide", appr);
        r = http("POST", path, ta, "{\"decision\": \"reject\", \"comment\": \"no\"}", NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "rejected");
        assert_string_equal(jstr(r.json, "decided_by"), "alice");
        reply_free(&r);
        assert_refused("POST", path, ta, "{\"decision\": \"approve\"}", 409, "conflict");
        r = http("GET", "/v1/approvals?status=rejected", ta, NULL, NULL);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
        reply_free(&r);
        free(ta);
        free(tb);
        free(run);
        free(appr);
        free(tok_id);
}

static void test_secrets_and_tokens(void **state)
{
        struct reply r = http("PUT", "/v1/secrets/openai", S.admin_token,
                              "{\"value\": \"sk-very-secret\"}", NULL);
        assert_int_equal(r.status, 201);
        assert_null(strstr(r.body, "sk-very"));
        reply_free(&r);
        r = http("PUT", "/v1/secrets/openai", S.admin_token, "{\"value\": \"sk-rotated\"}", NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        r = http("GET", "/v1/secrets", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_null(strstr(r.body, "sk-"));
        assert_string_equal(jstr(json_array_get(json_object_get(r.json, "data"), 0), "name"),
                            "openai");
        reply_free(&r);
        /* at rest: ciphertext only, and it opens with the master key for the right user */
        PGresult *row = test_db_must(S.db, "SELECT user_id, id, nonce, ciphertext, wrapped_key, "
                                           "key_version, position('sk-rotated'::bytea in "
                                           "ciphertext) FROM secrets "
                                           "s WHERE name = 'openai'");
        assert_int_equal(PQntuples(row), 1);
        assert_string_equal(PQgetvalue(row, 0, 6), "0");
        size_t nl, cl, wl;
        unsigned char *nonce = PQunescapeBytea((unsigned char *)PQgetvalue(row, 0, 2), &nl);
        unsigned char *ct = PQunescapeBytea((unsigned char *)PQgetvalue(row, 0, 3), &cl);
        unsigned char *wk = PQunescapeBytea((unsigned char *)PQgetvalue(row, 0, 4), &wl);
        char *value = NULL;
        struct secrets_kms kms;
        assert_int_equal(secrets_kms_init(&kms, S.data_dir), 0);
        assert_string_equal(PQgetvalue(row, 0, 5), "1");
        assert_int_equal(secrets_open(&kms, "local", PQgetvalue(row, 0, 0), PQgetvalue(row, 0, 1),
                                      nonce, nl, ct, cl, wk, wl, 1, &value, NULL, NULL),
                         0);
        assert_string_equal(value, "sk-rotated");
        secrets_value_free(value);
        /* bound to the user: another user id does not open it */
        assert_int_equal(secrets_open(&kms, "local", "00000000-0000-0000-0000-000000000000",
                                      PQgetvalue(row, 0, 1), nonce, nl, ct, cl, wk, wl, 1, &value,
                                      NULL, NULL),
                         -EBADMSG);
        secrets_kms_release(&kms);
        PQfreemem(nonce);
        PQfreemem(ct);
        PQfreemem(wk);
        PQclear(row);
        r = http("DELETE", "/v1/secrets/openai", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 204);
        reply_free(&r);
        assert_refused("DELETE", "/v1/secrets/openai", S.admin_token, NULL, 404, "not_found");
        r = http("PUT", "/v1/secrets/Bad%20Name", S.admin_token, "{\"value\": \"x\"}", NULL);
        assert_error(&r, 400, "invalid_parameter");
        assert_string_equal(jstr(json_object_get(r.json, "error"), "hint"),
                            "use 1-63 characters of A-Z a-z 0-9 _ . -, the first a letter, digit "
                            "or _ (e.g. OPENAI_API_KEY)");
        reply_free(&r);
        /* names with environment-variable habits */
        const char *env_names[] = {"OPENAI_API_KEY", "LLMKEY", "_lower_and_UPPER"};
        for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++) {
                char path[128];
                snprintf(path, sizeof(path), "/v1/secrets/%s", env_names[i]);
                r = http("PUT", path, S.admin_token, "{\"value\": \"sk-env\"}", NULL);
                assert_int_equal(r.status, 201);
                assert_string_equal(jstr(r.json, "name"), env_names[i]);
                reply_free(&r);
                r = http("DELETE", path, S.admin_token, NULL, NULL);
                assert_int_equal(r.status, 204);
                reply_free(&r);
        }

        /* tokens: shown once, listed by prefix, revocable */
        r = http("POST", "/v1/tokens", S.admin_token, "{\"name\": \"laptop\"}", NULL);
        assert_int_equal(r.status, 201);
        char *tok = strdup(jstr(r.json, "token")), *tid = strdup(jstr(r.json, "id"));
        reply_free(&r);
        r = http("GET", "/v1/me", tok, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        r = http("GET", "/v1/tokens", S.admin_token, NULL, NULL);
        assert_null(strstr(r.body, tok));
        assert_non_null(strstr(r.body, "\"laptop\""));
        reply_free(&r);
        char path[128];
        snprintf(path, sizeof(path), "/v1/tokens/%s", tid);
        r = http("DELETE", path, S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 204);
        reply_free(&r);
        assert_refused("GET", "/v1/me", tok, NULL, 401, "unauthorized");
        free(tok);
        free(tid);
}

/* ---- SSE -------------------------------------------------------------------------- */

struct sse_client {
        char *buf;
        int stop_after; /* events (with id) before aborting; 0 = until end */
        int64_t seqs[256];
        int n;
        bool ended;
};

static size_t sse_collect(char *p, size_t size, size_t nmemb, void *ud)
{
        struct sse_client *c = ud;
        collect(p, size, nmemb, &c->buf);
        /* parse complete events */
        char *start = c->buf, *end;
        while ((end = strstr(start, "\n\n"))) {
                *end = '\0';
                bool full = c->stop_after && c->n >= c->stop_after;
                if (!full && strncmp(start, "id: ", 4) == 0 && c->n < 256)
                        c->seqs[c->n++] = strtoll(start + 4, NULL, 10);
                if (strstr(start, "event: end"))
                        c->ended = true;
                start = end + 2;
        }
        memmove(c->buf, start, strlen(start) + 1);
        if ((c->stop_after && c->n >= c->stop_after) || c->ended)
                return 0; /* abort: disconnect mid-stream */
        return size * nmemb;
}

static void sse_read(const char *run, const char *last_event_id, struct sse_client *c)
{
        char url[256], auth[128], lei[64];
        struct curl_slist *h = NULL;
        CURL *e = curl_easy_init();

        snprintf(url, sizeof(url), "%s/v1/runs/%s/events/stream", S.base, run);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.admin_token);
        h = curl_slist_append(h, auth);
        if (last_event_id) {
                snprintf(lei, sizeof(lei), "Last-Event-ID: %s", last_event_id);
                h = curl_slist_append(h, lei);
        }
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sse_collect);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
        curl_easy_perform(e);
        curl_easy_cleanup(e);
        curl_slist_free_all(h);
        free(c->buf);
        c->buf = NULL;
}

struct writer_arg {
        const char *run;
        int events;
};

/* Appends events while a client streams (as a worker would), then finishes the run. */
static void *writer(void *arg)
{
        struct writer_arg *w = arg;
        PGconn *c = test_db_connect(S.conninfo);
        char sql[512];

        for (int i = 0; i < w->events; i++) {
                snprintf(sql, sizeof(sql),
                         "SELECT agently_append_event_unfenced('%s', 'node.progress', 'a', 1, "
                         "'info', 'step %d', '{\"i\": %d}')",
                         w->run, i, i);
                PQclear(test_db_must(c, sql));
                usleep(20 * 1000);
        }
        snprintf(sql, sizeof(sql), "id = '%s'", w->run);
        test_run_move(c, sql, "completed", NULL);
        PQfinish(c);
        return NULL;
}

static void test_sse_resume(void **state)
{
        char *run = start_run(S.admin_token); /* seq 1: run.created */
        struct writer_arg w = {run, 40};
        pthread_t t;
        struct sse_client a = {.stop_after = 10}, b = {0};
        char last[32];

        pthread_create(&t, NULL, writer, &w);
        sse_read(run, NULL, &a); /* disconnects after 10 events, mid-run */
        assert_int_equal(a.n, 10);
        usleep(100 * 1000); /* more events land while the client is away */
        snprintf(last, sizeof(last), "%lld", (long long)a.seqs[a.n - 1]);
        sse_read(run, last, &b); /* resumes, reads to the final event */
        pthread_join(t, NULL);
        assert_true(b.ended);
        int64_t total =
            test_db_int(S.db, "SELECT event_seq FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(a.n + b.n, total);
        for (int i = 0; i < a.n; i++)
                assert_int_equal(a.seqs[i], i + 1);
        for (int i = 0; i < b.n; i++)
                assert_int_equal(b.seqs[i], a.n + i + 1);
        /* ?after= works the same, and a finished run's stream ends at once */
        struct sse_client c = {0};
        char from[32];
        snprintf(from, sizeof(from), "%lld", (long long)(total - 5));
        sse_read(run, from, &c);
        assert_true(c.ended);
        assert_int_equal(c.n, 5);
        assert_int_equal(c.seqs[0], total - 4);
        free(run);
}

/* ---- robustness ------------------------------------------------------------------- */

static int connect_raw(void)
{
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.port)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
        assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
        return fd;
}

static void test_limits(void **state)
{
        struct reply r;
        size_t big = 2 * 1024 * 1024;
        char *body = malloc(big + 1);

        memset(body, ' ', big);
        body[0] = '{';
        body[big - 1] = '}';
        body[big] = '\0';
        assert_refused("POST", "/v1/runs", S.admin_token, body, 413, "payload_too_large");
        free(body);

        const char *many[160];
        char hdrs[150][32];
        for (int i = 0; i < 150; i++) {
                snprintf(hdrs[i], sizeof(hdrs[i]), "X-Filler-%d: %d", i, i);
                many[i] = hdrs[i];
        }
        many[150] = NULL;
        r = http("GET", "/v1/me", S.admin_token, NULL, many);
        assert_error(&r, 431, "headers_too_large");
        reply_free(&r);
        char *huge = malloc(48 * 1024);
        memcpy(huge, "X-Big: ", 7);
        memset(huge + 7, 'a', 48 * 1024 - 8);
        huge[48 * 1024 - 1] = '\0';
        const char *one[] = {huge, NULL};
        r = http("GET", "/v1/me", S.admin_token, NULL, one);
        assert_error(&r, 431, "headers_too_large");
        reply_free(&r);
        free(huge);

        r = http("POST", "/v1/runs", S.admin_token, "{\"workflow\": \n  \"etl\",, }", NULL);
        assert_error(&r, 400, "invalid_json");
        json_t *e = json_object_get(r.json, "error");
        assert_int_equal(json_integer_value(json_object_get(e, "line")), 2);
        assert_int_gt(json_integer_value(json_object_get(e, "position")), 0);
        reply_free(&r);
        char deep[300];
        memset(deep, '[', 100);
        memset(deep + 100, ']', 100);
        deep[200] = '\0';
        assert_refused("POST", "/v1/runs", S.admin_token, deep, 400, "json_too_deep");
        assert_refused("GET", "/v1/nothing-here", S.admin_token, NULL, 404, "not_found");
        r = http("DELETE", "/v1/runs", S.admin_token, NULL, NULL);
        assert_error(&r, 405, "method_not_allowed");
        assert_non_null(strcasestr(r.headers, "Allow: POST, GET"));
        reply_free(&r);
        assert_refused("POST", "/v1/runs", S.admin_token, "{\"workflow\": \"etl\", \"bogus\": 1}",
                       400, "unknown_field");

        /* 200 idle or half-sent connections do not stop a normal client */
        int fds[200];
        for (int i = 0; i < 200; i++) {
                fds[i] = connect_raw();
                if (i % 2)
                        assert_int_equal(write(fds[i], "GET /v1/me HTTP/1.1\r\nHost: x\r\n", 30),
                                         30);
        }
        int64_t t0 = test_now_ms();
        r = http("GET", "/v1/me", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_lt(test_now_ms() - t0, 2000);
        reply_free(&r);
        for (int i = 0; i < 200; i++)
                close(fds[i]);
}

struct pending_get {
        const char *path;
        struct reply r;
};

static void *get_in_thread(void *arg)
{
        struct pending_get *g = arg;
        g->r = http("GET", g->path, S.admin_token, NULL, NULL);
        return NULL;
}

/* A statement canceled by Postgres (statement_timeout, 57014; here a cancel request, the
 * same SQLSTATE, so the test need not wait 15 s) is a slow request on a live database: 503
 * `timeout` with its hint and Retry-After, never `database_unavailable` (a client told the
 * database is down gives up or pages someone), and the connection goes back to the pool
 * usable. */
static void test_statement_canceled_is_timeout(void **state)
{
        char *id = start_run(S.admin_token);
        char path[128];
        struct pending_get g = {.path = path};
        pthread_t t;

        snprintf(path, sizeof(path), "/v1/runs/%s", id);
        /* the read waits for this lock: the API's statement is in flight until canceled */
        PQclear(test_db_must(S.db, "BEGIN"));
        PQclear(test_db_must(S.db, "LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE"));
        pthread_create(&t, NULL, get_in_thread, &g);
        for (int64_t deadline = test_now_ms() + 10000;;) {
                if (test_db_int(S.db, "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                                      "WHERE pg_backend_pid() = ANY (pg_blocking_pids(pid))") > 0)
                        break;
                assert_int_lt(test_now_ms(), deadline);
                usleep(20 * 1000);
        }
        pthread_join(t, NULL);
        PQclear(test_db_must(S.db, "ROLLBACK"));
        assert_error(&g.r, 503, "timeout");
        assert_no_database_text(&g.r);
        assert_string_equal(jstr(json_object_get(g.r.json, "error"), "hint"),
                            "retry, or narrow the request (filters, a smaller limit)");
        assert_non_null(strcasestr(g.r.headers, "Retry-After: 2\r\n"));
        reply_free(&g.r);
        g.r = http("GET", path, S.admin_token, NULL, NULL);
        assert_int_equal(g.r.status, 200);
        reply_free(&g.r);
        free(id);
}

/* The database goes away: 503 with a clear error, and the API recovers when it is back. */
static void test_database_blip(void **state)
{
        char *dbname = test_db_value(S.db, "SELECT current_database()");
        char sql[256], other[4096];
        struct reply r;

        /* ALTER DATABASE needs a connection to another database */
        snprintf(other, sizeof(other), "%s dbname=postgres", S.conninfo);
        PGconn *admin = test_db_connect(other);

        snprintf(sql, sizeof(sql),
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s' "
                 "AND pid <> pg_backend_pid()",
                 dbname);
        PQclear(test_db_must(S.db, sql));
        /* the pool's connections died: the first request reconnects transparently */
        r = http("GET", "/v1/me", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        /* refuse new connections, kill the live ones: 503, never a hang or HTML */
        snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS false", dbname);
        PQclear(test_db_must(admin, sql));
        snprintf(sql, sizeof(sql),
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s' "
                 "AND pid <> pg_backend_pid()",
                 dbname);
        PQclear(test_db_must(S.db, sql));
        r = http("GET", "/v1/me", S.admin_token, NULL, NULL);
        assert_error(&r, 503, "database_unavailable");
        assert_non_null(strcasestr(r.headers, "Retry-After: 2\r\n"));
        reply_free(&r);
        r = http("GET", "/readyz", NULL, NULL, NULL);
        assert_int_equal(r.status, 503);
        reply_free(&r);
        r = http("GET", "/healthz", NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS true", dbname);
        PQclear(test_db_must(admin, sql));
        PQfinish(admin);
        usleep(1200 * 1000); /* past the reconnect backoff */
        r = http("GET", "/v1/me", S.admin_token, NULL, NULL);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        free(dbname);
}

struct open_stream {
        const char *run;
        struct sse_client c;
};

static void *stream_until_closed(void *arg)
{
        struct open_stream *o = arg;
        sse_read(o->run, NULL, &o->c);
        return NULL;
}

/* SIGTERM with an open (suspended) SSE stream: the stream ends and the process exits 0. */
static void test_sigterm_with_stream(void **state)
{
        char *run = start_run(S.admin_token);
        struct open_stream o = {.run = run};
        pthread_t t;

        pthread_create(&t, NULL, stream_until_closed, &o);
        usleep(800 * 1000);
        int64_t t0 = test_now_ms();
        int st = test_stop_process(S.pid, SIGTERM, 10000);
        S.pid = 0;
        pthread_join(t, NULL);
        assert_exit_code(st, 0);
        assert_int_lt(test_now_ms() - t0, 6000);
        assert_int_equal(o.c.n, 1); /* run.created, then the end of the stream */
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_auth_and_ops),
            cmocka_unit_test(test_workflows),
            cmocka_unit_test(test_agents),
            cmocka_unit_test(test_runs),
            cmocka_unit_test(test_run_list_by_status),
            cmocka_unit_test(test_database_errors_in_own_words),
            cmocka_unit_test(test_rerun_follows_the_engine),
            cmocka_unit_test(test_idempotency),
            cmocka_unit_test(test_cross_tenant),
            cmocka_unit_test(test_secrets_and_tokens),
            cmocka_unit_test(test_sse_resume),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_statement_canceled_is_timeout),
            cmocka_unit_test(test_database_blip),
            cmocka_unit_test(test_sigterm_with_stream),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
