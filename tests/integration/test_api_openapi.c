/*
 * Holds the server to docs/openapi.json (the canonical OpenAPI document; docs/openapi.yaml
 * is generated from it): every route of the server's table is documented and every
 * documented operation is served; and the main responses of a real `agently api` validate
 * against their documented schemas (a small checker for the subset the document uses:
 * $ref, type, required, properties, items, enum).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "api_routes.h"
#include "auth_token.h"
#include "testlib.h"

static json_t *doc;
static char *conninfo, *data_dir, base[64], token[AUTH_TOKEN_LEN + 1];
static pid_t pid;
static PGconn *db;

static const char *lower(const char *m, char *out, size_t n)
{
        size_t i = 0;
        for (; m[i] && i + 1 < n; i++)
                out[i] = (char)(m[i] >= 'A' && m[i] <= 'Z' ? m[i] + 32 : m[i]);
        out[i] = '\0';
        return out;
}

static void test_routes_match_document(void **state)
{
        json_t *paths = json_object_get(doc, "paths"), *item;
        const char *path;
        size_t documented = 0;
        char m[16];

        for (size_t i = 0; i < api_routes_count; i++) {
                json_t *op = json_object_get(json_object_get(paths, api_routes[i].pattern),
                                             lower(api_routes[i].method, m, sizeof(m)));
                if (!op)
                        fprintf(stderr, "undocumented route: %s %s\n", api_routes[i].method,
                                api_routes[i].pattern);
                assert_non_null(op);
        }
        json_object_foreach (paths, path, item) {
                const char *method;
                json_t *op;
                json_object_foreach (item, method, op) {
                        bool served = false;
                        for (size_t i = 0; i < api_routes_count; i++)
                                served |=
                                    strcmp(api_routes[i].pattern, path) == 0 &&
                                    strcmp(lower(api_routes[i].method, m, sizeof(m)), method) == 0;
                        if (!served)
                                fprintf(stderr, "documented but not served: %s %s\n", method, path);
                        assert_true(served);
                        documented++;
                }
        }
        assert_int_equal(documented, api_routes_count);
}

/* ---- schema checker --------------------------------------------------------------- */

static json_t *resolve(json_t *schema)
{
        const char *ref = json_string_value(json_object_get(schema, "$ref"));
        const char *prefix = "#/components/";

        while (ref) {
                if (strncmp(ref, prefix, strlen(prefix)) != 0)
                        fail_msg("$ref \"%s\" does not start with %s", ref, prefix);
                char kind[32], name[64];
                assert_int_equal(sscanf(ref + strlen(prefix), "%31[^/]/%63s", kind, name), 2);
                schema = json_object_get(json_object_get(json_object_get(doc, "components"), kind),
                                         name);
                assert_non_null(schema);
                ref = json_string_value(json_object_get(schema, "$ref"));
        }
        return schema;
}

static bool type_ok(const char *type, json_t *v)
{
        if (strcmp(type, "null") == 0)
                return json_is_null(v);
        if (strcmp(type, "string") == 0)
                return json_is_string(v);
        if (strcmp(type, "integer") == 0)
                return json_is_integer(v);
        if (strcmp(type, "number") == 0)
                return json_is_number(v);
        if (strcmp(type, "boolean") == 0)
                return json_is_boolean(v);
        if (strcmp(type, "object") == 0)
                return json_is_object(v);
        if (strcmp(type, "array") == 0)
                return json_is_array(v);
        return false;
}

static void validate(json_t *schema, json_t *v, const char *where)
{
        json_t *type, *x;
        size_t i;

        schema = resolve(schema);
        type = json_object_get(schema, "type");
        if (type) {
                bool ok = false;
                if (json_is_string(type))
                        ok = type_ok(json_string_value(type), v);
                json_array_foreach (type, i, x)
                        ok |= type_ok(json_string_value(x), v);
                if (!ok)
                        fprintf(stderr, "%s: wrong type\n", where);
                assert_true(ok);
        }
        if ((x = json_object_get(schema, "enum"))) {
                bool ok = false;
                json_t *e;
                json_array_foreach (x, i, e)
                        ok |= json_equal(e, v);
                if (!ok)
                        fprintf(stderr, "%s: value not in enum\n", where);
                assert_true(ok);
        }
        if (json_is_object(v)) {
                json_array_foreach (json_object_get(schema, "required"), i, x) {
                        if (!json_object_get(v, json_string_value(x)))
                                fprintf(stderr, "%s: missing required '%s'\n", where,
                                        json_string_value(x));
                        assert_non_null(json_object_get(v, json_string_value(x)));
                }
                const char *key;
                json_t *sub;
                json_object_foreach (json_object_get(schema, "properties"), key, sub) {
                        json_t *val = json_object_get(v, key);
                        char w[256];
                        snprintf(w, sizeof(w), "%s.%s", where, key);
                        if (val)
                                validate(sub, val, w);
                }
        }
        if (json_is_array(v) && (x = json_object_get(schema, "items"))) {
                json_t *e;
                json_array_foreach (v, i, e)
                        validate(x, e, where);
        }
}

/* Calls the server and validates the reply against the documented response. */
static json_t *call(const char *method, const char *pattern, const char *path, const char *body,
                    long expect)
{
        char url[512], auth[128], m[16], code[8], *resp = NULL;
        long status = 0;
        struct curl_slist *h = NULL;
        CURL *c = curl_easy_init();

        snprintf(url, sizeof(url), "%s%s", base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        if (body)
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        FILE *f = open_memstream(&resp, &(size_t){0});
        curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        fclose(f);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        curl_slist_free_all(h);
        if (status != expect)
                fprintf(stderr, "%s %s: %ld %s\n", method, path, status, resp);
        assert_int_equal(status, expect);
        json_t *op = json_object_get(json_object_get(json_object_get(doc, "paths"), pattern),
                                     lower(method, m, sizeof(m)));
        assert_non_null(op);
        snprintf(code, sizeof(code), "%ld", status);
        json_t *r = json_object_get(json_object_get(op, "responses"), code);
        if (!r)
                r = json_object_get(json_object_get(op, "responses"), "default");
        assert_non_null(r);
        r = resolve(r);
        json_t *schema = json_object_get(
            json_object_get(json_object_get(r, "content"), "application/json"), "schema");
        json_t *j = json_loads(resp, JSON_DECODE_ANY, NULL);
        if (schema) {
                char where[256];
                snprintf(where, sizeof(where), "%s %s %ld", method, pattern, status);
                assert_non_null(j);
                validate(schema, j, where);
        }
        free(resp);
        return j;
}

static void test_responses_match_schemas(void **state)
{
        char p[256];
        json_t *j;

        json_decref(call("GET", "/healthz", "/healthz", NULL, 200));
        json_decref(call("GET", "/readyz", "/readyz", NULL, 200));
        json_decref(call("GET", "/v1/me", "/v1/me", NULL, 200));
        json_decref(call("POST", "/v1/workflows", "/v1/workflows",
                         "{\"name\": \"w\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                         "\"output\": {}}, {\"id\": \"b\", \"type\": \"transform\", \"output\": "
                         "{}, \"after\": [\"a\"]}]}",
                         201));
        json_decref(call("POST", "/v1/workflows", "/v1/workflows",
                         "{\"name\": \"w\", \"nodes\": [{\"id\": \"a\", \"after\": [\"q\"]}]}",
                         422));
        json_decref(call("GET", "/v1/workflows", "/v1/workflows", NULL, 200));
        json_decref(call("GET", "/v1/workflows/{name}", "/v1/workflows/w", NULL, 200));
        json_decref(
            call("GET", "/v1/workflows/{name}/versions", "/v1/workflows/w/versions", NULL, 200));
        json_decref(call("POST", "/v1/agents", "/v1/agents",
                         "{\"name\": \"a\", \"description\": \"d\", \"provider\": "
                         "\"openai\", \"model\": \"m\", \"tools\": [\"http_request\"], "
                         "\"budget\": {\"max_cost_usd\": 1}}",
                         201));
        json_decref(call("POST", "/v1/agents", "/v1/agents",
                         "{\"name\": \"a\", \"provider\": \"x\", \"model\": \"m\"}", 422));
        json_decref(call("GET", "/v1/agents", "/v1/agents", NULL, 200));
        json_decref(call("GET", "/v1/agents/{name}", "/v1/agents/a", NULL, 200));
        json_decref(call("GET", "/v1/agents/{name}/versions", "/v1/agents/a/versions", NULL, 200));
        j = call("POST", "/v1/runs", "/v1/runs", "{\"workflow\": \"w\", \"input\": {\"a\": 1}}",
                 201);
        char *run = strdup(json_string_value(json_object_get(j, "id")));
        json_decref(j);
        json_decref(call("POST", "/v1/runs", "/v1/runs", "{\"workflow\": ", 400));
        json_decref(call("GET", "/v1/runs", "/v1/runs?limit=1", NULL, 200));
        snprintf(p, sizeof(p), "/v1/runs/%s", run);
        json_decref(call("GET", "/v1/runs/{id}", p, NULL, 200));
        snprintf(p, sizeof(p), "/v1/runs/%s/signals/go", run);
        json_decref(call("POST", "/v1/runs/{id}/signals/{name}", p, "{\"x\": 1}", 201));
        snprintf(p, sizeof(p), "/v1/runs/%s/pause", run);
        json_decref(call("POST", "/v1/runs/{id}/pause", p, NULL, 200));
        snprintf(p, sizeof(p), "/v1/runs/%s/resume", run);
        json_decref(call("POST", "/v1/runs/{id}/resume", p, NULL, 200));
        snprintf(p, sizeof(p), "/v1/runs/%s/cancel", run);
        json_decref(call("POST", "/v1/runs/{id}/cancel", p, NULL, 200));
        json_decref(call("POST", "/v1/runs/{id}/cancel", p, NULL, 409));
        snprintf(p, sizeof(p), "/v1/runs/%s/rerun", run);
        json_decref(call("POST", "/v1/runs/{id}/rerun", p, "{\"from_node\": \"b\"}", 201));
        snprintf(p, sizeof(p), "/v1/runs/%s/events", run);
        json_decref(call("GET", "/v1/runs/{id}/events", p, NULL, 200));
        json_decref(call("GET", "/v1/runs/{id}", "/v1/runs/00000000-0000-0000-0000-000000000000",
                         NULL, 404));
        json_decref(call("POST", "/v1/users", "/v1/users", "{\"name\": \"carol\"}", 201));
        json_decref(call("GET", "/v1/users", "/v1/users", NULL, 200));
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO approvals (user_id, workflow_run_id, node_id, title) SELECT "
                 "user_id, id, 'b', 'ok?' FROM workflow_runs WHERE id = '%s' RETURNING id",
                 run);
        char *appr = test_db_value(db, "%s", sql);
        json_decref(call("GET", "/v1/approvals", "/v1/approvals", NULL, 200));
        snprintf(p, sizeof(p), "/v1/approvals/%s", appr);
        json_decref(call("GET", "/v1/approvals/{id}", p, NULL, 200));
        snprintf(p, sizeof(p), "/v1/approvals/%s/decide", appr);
        json_decref(
            call("POST", "/v1/approvals/{id}/decide", p, "{\"decision\": \"approve\"}", 200));
        json_decref(call("PUT", "/v1/secrets/{name}", "/v1/secrets/k", "{\"value\": \"v\"}", 201));
        json_decref(call("PUT", "/v1/secrets/{name}", "/v1/secrets/k", "{\"value\": \"w\"}", 200));
        json_decref(call("GET", "/v1/secrets", "/v1/secrets", NULL, 200));
        j = call("POST", "/v1/tokens", "/v1/tokens", "{\"name\": \"ci\"}", 201);
        snprintf(p, sizeof(p), "/v1/tokens/%s", json_string_value(json_object_get(j, "id")));
        json_decref(j);
        json_decref(call("GET", "/v1/tokens", "/v1/tokens", NULL, 200));
        json_decref(call("DELETE", "/v1/tokens/{id}", p, NULL, 204));
        json_decref(call("DELETE", "/v1/secrets/{name}", "/v1/secrets/k", NULL, 204));
        free(appr);
        free(run);
}

static int setup(void **state)
{
        char listen[64], hex[2 + 64 + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1], path[1024], url[128];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        static char env_db[4096];
        json_error_t err;

        snprintf(path, sizeof(path), "%s/docs/openapi.json", AGENTLY_SOURCE_DIR);
        doc = json_load_file(path, 0, &err);
        if (!doc)
                fprintf(stderr, "%s:%d: %s\n", path, err.line, err.text);
        assert_non_null(doc);
        curl_global_init(CURL_GLOBAL_ALL);
        conninfo = test_db_create("apidoc");
        db = test_db_connect(conninfo);
        data_dir = test_tempdir("apidoc");
        assert_int_equal(auth_token_generate(token, hash, shown), 0);
        auth_token_hash_hex(hash, hex);
        char *admin = test_db_value(
            db, "INSERT INTO users (name, is_admin) VALUES ('root', true) RETURNING id");
        free(test_db_value(db,
                           "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) "
                           "VALUES ('%s', 't', '%s'::bytea, '%s') RETURNING id",
                           admin, hex, shown));
        free(admin);
        int port = test_free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", conninfo);
        const char *args[] = {"api", "--listen", listen, "--data-dir", data_dir, NULL};
        const char *env[] = {env_db, NULL};
        pid = test_spawn_agently(args, env, NULL);
        snprintf(url, sizeof(url), "%s/healthz", base);
        assert_true(test_wait_http_ok(url, 15000));
        return 0;
}

static int teardown(void **state)
{
        if (pid > 0)
                test_stop_process(pid, SIGTERM, 10000);
        if (db)
                PQfinish(db);
        if (data_dir)
                test_rm_rf(data_dir);
        json_decref(doc);
        return 0;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_routes_match_document),
            cmocka_unit_test(test_responses_match_schemas),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
