/*
 * The dashboard's side of the API against a real Postgres and a real `agently api`: sign-in
 * exchanges a token for an HttpOnly, SameSite=Lax session cookie; the cookie authenticates
 * reads and the event stream; every state-changing request it authenticates needs the
 * session's CSRF token and an Origin of this host (the bearer API needs neither); sign-out,
 * revocation, a revoked token and expiry end a session; another user's session cannot be
 * touched. And the dashboard's files: the entry page (no-cache, CSP), hashed assets
 * (immutable, gzip when accepted, ETag/304), an app route answered with the entry page,
 * no way out of the directory, JSON 404s under /v1/ and for a missing asset.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "auth_token.h"
#include "testlib.h"

struct server {
        char *conninfo;
        char *data_dir;
        char *web_dir;
        char base[64];
        char host[64];
        pid_t pid;
        PGconn *db;
        char token[AUTH_TOKEN_LEN + 1];
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

/* One request with the given headers (NULL-terminated list, may be NULL). */
static struct reply http(const char *method, const char *path, const char *body,
                         const char *const *headers)
{
        struct reply r = {0};
        struct curl_slist *h = NULL;
        char url[512];
        CURL *c = curl_easy_init();

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        for (size_t i = 0; headers && headers[i]; i++)
                h = curl_slist_append(h, headers[i]);
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

static void assert_error(struct reply *r, long status, const char *code)
{
        if (r->status != status)
                fprintf(stderr, "unexpected %ld: %s\n", r->status, r->body ? r->body : "");
        assert_int_equal(r->status, status);
        assert_non_null(r->json);
        assert_string_equal(jstr(json_object_get(r->json, "error"), "code"), code);
}

/* A response header's value (malloc'd), or NULL. */
static char *header(const struct reply *r, const char *name)
{
        size_t n = strlen(name);

        for (const char *p = r->headers; p && *p;) {
                const char *end = strstr(p, "\r\n");
                if (!end)
                        break;
                if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
                        const char *v = p + n + 1;
                        while (*v == ' ')
                                v++;
                        return strndup(v, (size_t)(end - v));
                }
                p = end + 2;
        }
        return NULL;
}

static void write_file(const char *dir, const char *rel, const char *text)
{
        char path[512];

        snprintf(path, sizeof(path), "%s/%s", dir, rel);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

/* A stand-in for the dashboard's build: an entry page and a hashed asset (with its .gz). */
static void make_web_dir(void)
{
        char path[512], cmd[1024];

        S.web_dir = test_tempdir("web");
        snprintf(path, sizeof(path), "%s/assets", S.web_dir);
        assert_int_equal(mkdir(path, 0755), 0);
        write_file(S.web_dir, "index.html", "<!doctype html><title>agently</title><div id=app>");
        write_file(S.web_dir, "assets/index-abc123.js", "console.log('the app')\n");
        snprintf(cmd, sizeof(cmd), "gzip -k %s/assets/index-abc123.js", S.web_dir);
        assert_int_equal(system(cmd), 0);
        write_file(S.web_dir, "../web-test-outside.txt", "SECRET-CONTENT");
}

static void start_server(void)
{
        char listen[64], hash_hex[2 + 64 + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1], sql[512];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        static char env_db[4096];

        S.conninfo = test_db_create("session");
        S.db = test_db_connect(S.conninfo);
        S.data_dir = test_tempdir("session");
        make_web_dir();
        assert_int_equal(auth_token_generate(S.token, hash, shown), 0);
        auth_token_hash_hex(hash, hash_hex);
        char *admin = test_db_value(S.db, "INSERT INTO users (name, is_admin) VALUES ('root', "
                                          "true) RETURNING id");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) VALUES "
                 "('%s', 'test', '%s'::bytea, '%s')",
                 admin, hash_hex, shown);
        PQclear(test_db_must(S.db, sql));
        free(admin);
        int port = test_free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(S.base, sizeof(S.base), "http://127.0.0.1:%d", port);
        snprintf(S.host, sizeof(S.host), "127.0.0.1:%d", port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", S.conninfo);
        const char *args[] = {"api",      "--listen",  listen,    "--data-dir",
                              S.data_dir, "--web-dir", S.web_dir, NULL};
        const char *env[] = {env_db, NULL};
        char log[512], url[128];
        snprintf(log, sizeof(log), "%s/api.log", S.data_dir);
        S.pid = test_spawn_agently(args, env, log);
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
        char outside[512];

        if (S.pid > 0)
                test_stop_process(S.pid, SIGTERM, 10000);
        PQfinish(S.db);
        snprintf(outside, sizeof(outside), "%s/../web-test-outside.txt", S.web_dir);
        unlink(outside);
        test_rm_rf(S.web_dir);
        test_rm_rf(S.data_dir);
        free(S.web_dir);
        free(S.data_dir);
        free(S.conninfo);
        return 0;
}

struct session {
        char cookie[128]; /* "Cookie: agently_session=..." */
        char csrf[128];   /* "X-CSRF-Token: ..." */
        char origin[128]; /* "Origin: http://127.0.0.1:PORT" */
        char id[40];
};

/* Signs in with token as user `name`; asserts the cookie's attributes. */
static struct session sign_in_as(const char *token, const char *name)
{
        struct session s;
        char body[256];

        snprintf(body, sizeof(body), "{\"token\": \"%s\"}", token);
        struct reply r = http("POST", "/v1/sessions", body, NULL);
        assert_int_equal(r.status, 201);
        char *set = header(&r, "Set-Cookie");
        assert_non_null(set);
        assert_int_equal(strncmp(set, "agently_session=ags_", 20), 0);
        assert_non_null(strstr(set, "; HttpOnly"));
        assert_non_null(strstr(set, "; SameSite=Lax"));
        assert_non_null(strstr(set, "; Path=/"));
        assert_non_null(strstr(set, "; Max-Age=604800"));
        *strchr(set, ';') = '\0';
        snprintf(s.cookie, sizeof(s.cookie), "Cookie: %s", set);
        free(set);
        const char *csrf = jstr(r.json, "csrf_token");
        assert_non_null(csrf);
        assert_int_equal(strlen(csrf), 43);
        snprintf(s.csrf, sizeof(s.csrf), "X-CSRF-Token: %s", csrf);
        snprintf(s.origin, sizeof(s.origin), "Origin: %s", S.base);
        snprintf(s.id, sizeof(s.id), "%s", jstr(r.json, "id"));
        assert_string_equal(jstr(json_object_get(r.json, "user"), "name"), name);
        reply_free(&r);
        return s;
}

static struct session sign_in(const char *token)
{
        return sign_in_as(token, "root");
}

static const char *WF = "{\"name\": \"wf\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
                        "\"output\": {}}]}";

static void test_sign_in_and_csrf(void **state)
{
        /* a token that is not valid gets no session */
        struct reply r =
            http("POST", "/v1/sessions",
                 "{\"token\": \"agt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}", NULL);
        assert_error(&r, 401, "unauthorized");
        assert_null(header(&r, "Set-Cookie"));
        reply_free(&r);
        r = http("POST", "/v1/sessions", "{\"token\": \"nope\"}", NULL);
        assert_error(&r, 401, "unauthorized");
        reply_free(&r);
        /* sign-in from another site's page is refused (login CSRF) */
        char body[128];
        snprintf(body, sizeof(body), "{\"token\": \"%s\"}", S.token);
        const char *evil[] = {"Origin: http://evil.example", NULL};
        r = http("POST", "/v1/sessions", body, evil);
        assert_error(&r, 403, "csrf_failed");
        reply_free(&r);

        struct session s = sign_in(S.token);
        /* reads need only the cookie */
        const char *read[] = {s.cookie, NULL};
        r = http("GET", "/v1/me", NULL, read);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "name"), "root");
        reply_free(&r);
        r = http("GET", "/v1/session", NULL, read);
        assert_int_equal(r.status, 200);
        assert_true(json_is_true(json_object_get(r.json, "signed_in")));
        assert_string_equal(jstr(json_object_get(r.json, "session"), "csrf_token"),
                            s.csrf + strlen("X-CSRF-Token: "));
        reply_free(&r);

        /* a change needs the CSRF token, the right one, from this origin */
        const char *no_token[] = {s.cookie, s.origin, NULL};
        r = http("POST", "/v1/workflows", WF, no_token);
        assert_error(&r, 403, "csrf_failed");
        reply_free(&r);
        const char *wrong[] = {s.cookie, s.origin,
                               "X-CSRF-Token: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL};
        r = http("POST", "/v1/workflows", WF, wrong);
        assert_error(&r, 403, "csrf_failed");
        reply_free(&r);
        const char *cross[] = {s.cookie, s.csrf, "Origin: http://evil.example", NULL};
        r = http("POST", "/v1/workflows", WF, cross);
        assert_error(&r, 403, "csrf_failed");
        reply_free(&r);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM workflows"), 0);
        const char *good[] = {s.cookie, s.csrf, s.origin, NULL};
        r = http("POST", "/v1/workflows", WF, good);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        const char *no_origin[] = {s.cookie, s.csrf, NULL}; /* a non-browser client */
        r = http("DELETE", "/v1/secrets/none", NULL, no_origin);
        assert_error(&r, 404, "not_found");
        reply_free(&r);

        /* the bearer API is as it was: no CSRF token, no cookie */
        char auth[128];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        const char *bearer[] = {auth, NULL};
        r = http("POST", "/v1/runs", "{\"workflow\": \"wf\"}", bearer);
        assert_int_equal(r.status, 201);
        char *run = strdup(jstr(r.json, "id"));
        reply_free(&r);
        r = http("GET", "/v1/session", NULL, bearer);
        assert_int_equal(r.status, 200);
        assert_true(json_is_false(json_object_get(r.json, "signed_in")));
        reply_free(&r);

        /* the event stream authenticates by the cookie */
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s/events/stream", run);
        struct reply stream = {0};
        {
                CURL *c = curl_easy_init();
                struct curl_slist *h = curl_slist_append(NULL, s.cookie);
                char url[256];
                snprintf(url, sizeof(url), "%s%s", S.base, path);
                curl_easy_setopt(c, CURLOPT_URL, url);
                curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
                curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
                curl_easy_setopt(c, CURLOPT_WRITEDATA, &stream.body);
                curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1500L);
                curl_easy_perform(c); /* the run is queued (no worker): the stream stays open */
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &stream.status);
                curl_easy_cleanup(c);
                curl_slist_free_all(h);
        }
        assert_int_equal(stream.status, 200);
        assert_non_null(stream.body);
        assert_non_null(strstr(stream.body, "event: run.created"));
        reply_free(&stream);
        free(run);
}

static void test_session_ends(void **state)
{
        struct session a = sign_in(S.token), b = sign_in(S.token);
        const char *read_a[] = {a.cookie, NULL}, *read_b[] = {b.cookie, NULL};
        struct reply r;

        /* the list shows both, this one marked; revoking b from a ends b at once */
        r = http("GET", "/v1/sessions", NULL, read_a);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 3);
        reply_free(&r);
        char path[128];
        snprintf(path, sizeof(path), "/v1/sessions/%s", b.id);
        const char *change_a[] = {a.cookie, a.csrf, a.origin, NULL};
        r = http("DELETE", path, NULL, change_a);
        assert_int_equal(r.status, 204);
        reply_free(&r);
        r = http("GET", "/v1/me", NULL, read_b);
        assert_error(&r, 401, "unauthorized");
        char *cleared = header(&r, "Set-Cookie");
        assert_non_null(cleared);
        assert_non_null(strstr(cleared, "agently_session=; Path=/; Max-Age=0"));
        free(cleared);
        reply_free(&r);
        r = http("GET", "/v1/session", NULL, read_b); /* 200, signed out, cookie cleared */
        assert_int_equal(r.status, 200);
        assert_true(json_is_false(json_object_get(r.json, "signed_in")));
        cleared = header(&r, "Set-Cookie");
        assert_non_null(cleared);
        free(cleared);
        reply_free(&r);

        /* sign-out ends a and clears its cookie */
        r = http("DELETE", "/v1/session", NULL, change_a);
        assert_int_equal(r.status, 204);
        cleared = header(&r, "Set-Cookie");
        assert_non_null(strstr(cleared, "Max-Age=0"));
        free(cleared);
        reply_free(&r);
        r = http("GET", "/v1/me", NULL, read_a);
        assert_error(&r, 401, "unauthorized");
        reply_free(&r);

        /* expiry */
        struct session c = sign_in(S.token);
        const char *read_c[] = {c.cookie, NULL};
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "UPDATE web_sessions SET expires_at = now() - interval '1 s' WHERE id = '%s'",
                 c.id);
        PQclear(test_db_must(S.db, sql));
        r = http("GET", "/v1/me", NULL, read_c);
        assert_error(&r, 401, "unauthorized");
        reply_free(&r);

        /* a session dies with its token: sign in with a second token, revoke the token */
        char auth[128];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        const char *bearer[] = {auth, NULL};
        r = http("POST", "/v1/tokens", "{\"name\": \"laptop\"}", bearer);
        assert_int_equal(r.status, 201);
        char *token = strdup(jstr(r.json, "token")), *token_id = strdup(jstr(r.json, "id"));
        reply_free(&r);
        struct session d = sign_in(token);
        const char *read_d[] = {d.cookie, NULL};
        r = http("GET", "/v1/me", NULL, read_d);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        snprintf(path, sizeof(path), "/v1/tokens/%s", token_id);
        r = http("DELETE", path, NULL, bearer);
        assert_int_equal(r.status, 204);
        reply_free(&r);
        r = http("GET", "/v1/me", NULL, read_d);
        assert_error(&r, 401, "unauthorized");
        reply_free(&r);
        free(token);
        free(token_id);

        /* another user cannot see or revoke root's sessions (404, nothing changes) */
        r = http("POST", "/v1/users", "{\"name\": \"bob\"}", bearer);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        r = http("POST", "/v1/tokens", "{\"name\": \"t\", \"user\": \"bob\"}", bearer);
        assert_int_equal(r.status, 201);
        struct session bob = sign_in_as(jstr(r.json, "token"), "bob");
        reply_free(&r);
        struct session e = sign_in(S.token);
        snprintf(path, sizeof(path), "/v1/sessions/%s", e.id);
        const char *change_bob[] = {bob.cookie, bob.csrf, bob.origin, NULL};
        r = http("DELETE", path, NULL, change_bob);
        assert_error(&r, 404, "not_found");
        reply_free(&r);
        const char *read_bob[] = {bob.cookie, NULL};
        r = http("GET", "/v1/sessions", NULL, read_bob);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
        reply_free(&r);
        const char *read_e[] = {e.cookie, NULL};
        r = http("GET", "/v1/me", NULL, read_e);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        /* only a hash of the cookie is stored */
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM web_sessions WHERE "
                                           "position(convert_to('ags_', 'UTF8') in secret_hash) "
                                           "> 0"),
                         0);
}

static void test_dashboard_files(void **state)
{
        const char *browser[] = {"Accept: text/html,application/xhtml+xml", NULL};
        struct reply r = http("GET", "/", NULL, browser);
        char *v;

        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "<div id=app>"));
        v = header(&r, "Cache-Control");
        assert_string_equal(v, "no-cache");
        free(v);
        v = header(&r, "Content-Security-Policy");
        assert_non_null(v);
        assert_non_null(strstr(v, "default-src 'self'"));
        free(v);
        v = header(&r, "Content-Type");
        assert_string_equal(v, "text/html; charset=utf-8");
        free(v);
        char *etag = header(&r, "ETag");
        assert_non_null(etag);
        reply_free(&r);
        /* revalidation: unchanged */
        char inm[128];
        snprintf(inm, sizeof(inm), "If-None-Match: %s", etag);
        const char *again[] = {inm, NULL};
        r = http("GET", "/index.html", NULL, again);
        assert_int_equal(r.status, 304);
        reply_free(&r);
        free(etag);
        /* curl and other non-browsers still get the text page at / */
        r = http("GET", "/", NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "agently API"));
        reply_free(&r);

        /* a hashed asset: immutable, gzip when accepted */
        r = http("GET", "/assets/index-abc123.js", NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "console.log('the app')\n");
        v = header(&r, "Cache-Control");
        assert_string_equal(v, "public, max-age=31536000, immutable");
        free(v);
        v = header(&r, "Content-Type");
        assert_string_equal(v, "text/javascript; charset=utf-8");
        free(v);
        reply_free(&r);
        const char *gzip[] = {"Accept-Encoding: gzip", NULL};
        r = http("GET", "/assets/index-abc123.js", NULL, gzip);
        assert_int_equal(r.status, 200);
        v = header(&r, "Content-Encoding");
        assert_string_equal(v, "gzip");
        free(v);
        reply_free(&r);

        /* an app route is the entry page; a missing asset and unknown API paths are JSON 404s */
        r = http("GET", "/runs/01234567-89ab-cdef-0123-456789abcdef", NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "<div id=app>"));
        reply_free(&r);
        r = http("GET", "/assets/missing-0000.js", NULL, NULL);
        assert_error(&r, 404, "not_found");
        reply_free(&r);
        r = http("GET", "/v1/nothing", NULL, NULL);
        assert_error(&r, 404, "not_found");
        reply_free(&r);
        /* no way out of the directory (curl would normalise the path: --path-as-is) */
        CURL *c = curl_easy_init();
        char url[256], *body = NULL;
        long status = 0;
        snprintf(url, sizeof(url), "%s/assets/../../web-test-outside.txt", S.base);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        assert_int_equal(status, 404);
        assert_non_null(body);
        assert_null(strstr(body, "SECRET-CONTENT"));
        free(body);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_sign_in_and_csrf),
            cmocka_unit_test(test_session_ends),
            cmocka_unit_test(test_dashboard_files),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
