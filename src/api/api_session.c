/*
 * Dashboard sessions: an API token is exchanged once (POST /v1/sessions) for a session cookie
 * (`agently_session`, HttpOnly, SameSite=Lax), which then authenticates requests in place of
 * the bearer token. Every request that a cookie authenticates and that may change something
 * (any method but GET and HEAD) must also carry the session's CSRF token in X-CSRF-Token and,
 * when the browser sends one, an Origin of this very host: a page of another site can make
 * the browser send the cookie but can read neither the CSRF token nor forge the Origin. The
 * bearer API is unchanged (no cookie, no CSRF token). Sessions live in web_sessions
 * (0017_web_sessions.sql): only the cookie's sha256 is stored; they expire, die with their
 * token and user, and are revoked by sign-out or from the session list.
 */
#include "api_internal.h"
#include "pgjson.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "auth_token.h"
#include "cleanup.h"
#include "db.h"
#include "strutil.h"

#define SESSION_PREFIX   "ags_"
#define SESSION_LEN      (4 + 43)
#define CSRF_LEN         43
#define SESSION_LIFETIME "7 days"

#define SESSION_JSON                                                                               \
        "json_build_object('id', s.id, 'user_agent', s.user_agent, 'created_at', s.created_at, "   \
        "'last_used_at', s.last_used_at, 'expires_at', s.expires_at, 'revoked_at', "               \
        "s.revoked_at, 'current', s.id::text = $1)"

/* 32 random bytes as prefix + 43 base64url characters into out (len + 1 bytes). */
static void random_text(const char *prefix, char *out, size_t len)
{
        unsigned char secret[32];
        size_t p = strlen(prefix);

        randombytes_buf(secret, sizeof(secret));
        memcpy(out, prefix, p);
        sodium_bin2base64(out + p, len + 1 - p, secret, sizeof(secret),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        sodium_memzero(secret, sizeof(secret));
}

/* The cookie's value as a bytea hex literal of its sha256; -EINVAL for a malformed one. */
static int session_hash_hex(const char *cookie, char *hex)
{
        unsigned char hash[crypto_hash_sha256_BYTES];
        size_t n = strlen(cookie);

        if (n != SESSION_LEN || !str_has_prefix(cookie, SESSION_PREFIX))
                return -EINVAL;
        for (size_t i = strlen(SESSION_PREFIX); i < n; i++) {
                char ch = cookie[i];
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
                        return -EINVAL;
        }
        crypto_hash_sha256(hash, (const unsigned char *)cookie, n);
        auth_token_hash_hex(hash, hex);
        return 0;
}

const char *api_session_cookie(struct api_request *req)
{
        return MHD_lookup_connection_value(req->connection, MHD_COOKIE_KIND, API_SESSION_COOKIE);
}

/* True when the request has no Origin header or one naming this host (scheme ignored: the
 * server may sit behind a TLS proxy). A browser sends Origin with every cross-site POST,
 * PUT and DELETE, so another site's page cannot pass. */
static bool origin_is_ours(struct api_request *req)
{
        const char *origin = api_header(req, "Origin");
        const char *host = api_header(req, MHD_HTTP_HEADER_HOST);
        const char *p;

        if (!origin)
                return true;
        p = strstr(origin, "://");
        return p && host && strcasecmp(p + 3, host) == 0;
}

static bool is_safe_method(const char *method)
{
        return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* Adds the session cookie (max_age seconds; 0 clears it) to the response. */
static int set_cookie(struct api_request *req, struct api_response *resp, const char *value,
                      long long max_age)
{
        const char *origin = api_header(req, "Origin");
        const char *proto = api_header(req, "X-Forwarded-Proto");
        bool secure = (origin && str_has_prefix(origin, "https://")) ||
                      (proto && strcasecmp(proto, "https") == 0);

        free(resp->set_cookie);
        resp->set_cookie = str_printf("%s=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Lax%s",
                                      API_SESSION_COOKIE, value, max_age, secure ? "; Secure" : "");
        return resp->set_cookie ? 0 : -ENOMEM;
}

unsigned api_session_authenticate(struct api_request *req, struct api_response *resp,
                                  const char *cookie, const char *begin)
{
        char hex[2 + 2 * crypto_hash_sha256_BYTES + 1];
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        if (session_hash_hex(cookie, hex) < 0)
                goto expired;
        const char *params[] = {hex};
        /* the tenant is set by the statement that found the user (db_set_user's setting) */
        res = db_query_between(req->db, begin,
                               "SELECT user_id, user_name, is_admin, session_id, csrf_token, "
                               "set_config('agently.user_id', user_id::text, true) "
                               "FROM agently_session_authenticate($1::bytea)",
                               1, params, NULL, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQntuples(res) != 1)
                goto expired;
        if (!is_safe_method(req->method)) {
                const char *sent = api_header(req, API_CSRF_HEADER);
                const char *want = PQgetvalue(res, 0, 4);
                if (!sent || strlen(sent) != strlen(want) ||
                    !str_equal_ct(sent, want, strlen(want)) || !origin_is_ours(req))
                        return api_error(resp, 403, "csrf_failed",
                                         "the request lacks this session's CSRF token",
                                         "a request authenticated by the session cookie that "
                                         "changes something must send X-CSRF-Token from the same "
                                         "origin",
                                         "send the csrf_token of GET /v1/session in X-CSRF-Token");
        }
        str_copy(req->user_id, sizeof(req->user_id), PQgetvalue(res, 0, 0));
        str_copy(req->user_name, sizeof(req->user_name), PQgetvalue(res, 0, 1));
        req->is_admin = PQgetvalue(res, 0, 2)[0] == 't';
        str_copy(req->session_id, sizeof(req->session_id), PQgetvalue(res, 0, 3));
        return 0;
expired:
        resp->unauthorized = true;
        set_cookie(req, resp, "", 0);
        return api_error(resp, 401, "unauthorized", "the session is not valid",
                         "signed out, expired or revoked session, revoked token or disabled user",
                         "sign in again with an API token");
}

/* POST /v1/sessions {"token": "agt_..."}: public (the token is the credential), manages its
 * own transaction. */
unsigned api_h_session_create(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"token", NULL};
        char token_hex[2 + 2 * AUTH_TOKEN_HASH_BYTES + 1], secret_hex[sizeof(token_hex)];
        char secret[SESSION_LEN + 1], csrf[CSRF_LEN + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        _cleanup_pgresult_ PGresult *res = NULL;
        json_t *b, *token;
        PGconn *c;
        unsigned st;
        int r = 0;

        if (!origin_is_ours(req))
                return api_error(resp, 403, "csrf_failed", "sign-in from another site is refused",
                                 "the Origin header names another host",
                                 "sign in from the dashboard this server serves");
        b = api_request_json(req, resp);
        if (!b)
                return resp->status;
        if (!json_is_object(b))
                return api_error(resp, 400, "invalid_body",
                                 "the request body must be a JSON object", NULL,
                                 "send {\"token\": \"agt_...\"}");
        if ((st = api_reject_unknown_keys(b, keys, resp)))
                return st;
        token = json_object_get(b, "token");
        if (!json_is_string(token) || auth_token_hash(json_string_value(token), hash) < 0) {
                resp->unauthorized = true;
                return api_error(resp, 401, "unauthorized", "the token is malformed",
                                 "field 'token': expected agt_ and 43 more characters",
                                 API_HINT_TOKEN);
        }
        auth_token_hash_hex(hash, token_hex);
        random_text(SESSION_PREFIX, secret, SESSION_LEN);
        random_text("", csrf, CSRF_LEN);
        if (session_hash_hex(secret, secret_hex) < 0)
                return api_error(resp, 500, "internal", "could not make a session", NULL, NULL);

        c = api_pool_acquire(req->server, &r);
        if (!c)
                return api_db_error(resp, r);
        const char *agent = api_header(req, MHD_HTTP_HEADER_USER_AGENT);
        if (agent && !str_is_utf8(agent, strlen(agent))) /* any octets are allowed there */
                agent = NULL;
        const char *params[] = {token_hex, secret_hex, csrf, SESSION_LIFETIME, agent};
        r = db_begin(c);
        if (r == 0) {
                res = db_query(c,
                               "SELECT json_build_object('id', s.session_id, 'user', "
                               "json_build_object('id', s.user_id, 'name', s.user_name, "
                               "'is_admin', s.is_admin), 'expires_at', s.expires_at, "
                               "'csrf_token', $3::text), "
                               "GREATEST(0, extract(epoch FROM s.expires_at - now()))::bigint "
                               "FROM agently_session_open($1::bytea, $2::bytea, $3, "
                               "$4::interval, $5) s",
                               5, params, &r);
                if (res)
                        r = PQntuples(res) == 1 ? db_commit(c) : -ENOENT;
                if (r < 0)
                        db_rollback(c);
        }
        api_pool_release(req->server, c, r < 0 && r != -ENOENT);
        sodium_memzero(token_hex, sizeof(token_hex));
        if (r == -ENOENT) {
                resp->unauthorized = true;
                return api_error(resp, 401, "unauthorized", "the token is not valid",
                                 "unknown, revoked or expired token, or a disabled user",
                                 API_HINT_TOKEN);
        }
        if (r < 0)
                return api_db_error(resp, r);
        json_t *j = pgjson_loads(PQgetvalue(res, 0, 0), 0, NULL);
        int64_t max_age = 0;
        str_to_int64(PQgetvalue(res, 0, 1), &max_age);
        if (!j || set_cookie(req, resp, secret, (long long)max_age) < 0) {
                json_decref(j);
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        }
        sodium_memzero(secret, sizeof(secret));
        return api_json(resp, 201, j);
}

static unsigned no_session(struct api_response *resp)
{
        return api_error(resp, 404, "not_found", "no session",
                         "this request was authenticated by a bearer token, not a session cookie",
                         "sign in with POST /v1/sessions");
}

/* GET /v1/session: whether this browser is signed in and, if so, its session with the CSRF
 * token. Public, and 200 either way, so that the dashboard's first question never shows up
 * as a failed request: {"signed_in": false, "session": null} without a valid cookie (a stale
 * one is cleared). Manages its own transaction. */
unsigned api_h_session_get(struct api_request *req, struct api_response *resp)
{
        const char *cookie = api_session_cookie(req);
        json_t *j = NULL;
        unsigned st;
        int r = 0;

        if (!cookie)
                goto signed_out;
        req->db = api_pool_acquire(req->server, &r);
        if (!req->db)
                return api_db_error(resp, r);
        st = api_session_authenticate(req, resp, cookie, "BEGIN");
        if (st == 0) {
                const char *params[] = {req->session_id};
                r = api_query_json(req,
                                   "SELECT json_build_object('signed_in', true, 'session', "
                                   "json_build_object('id', s.id, 'user', json_build_object('id', "
                                   "u.id, 'name', u.name, 'is_admin', u.is_admin), 'expires_at', "
                                   "s.expires_at, 'csrf_token', s.csrf_token)) "
                                   "FROM web_sessions s JOIN users u ON u.id = s.user_id "
                                   "WHERE s.id = $1::uuid",
                                   1, params, &j);
                st = r < 0 ? api_db_error(resp, r) : 0;
        }
        db_rollback(req->db); /* read only (a last_used_at touch may go) */
        api_pool_release(req->server, req->db, PQstatus(req->db) != CONNECTION_OK);
        req->db = NULL;
        if (st == 401) { /* a stale cookie: cleared by the 401's Set-Cookie, kept here */
                char *clear = TAKE_PTR(resp->set_cookie);
                json_decref(resp->json);
                *resp = (struct api_response){.set_cookie = clear};
                goto signed_out;
        }
        if (st)
                return st;
        if (!j)
                goto signed_out;
        return api_json(resp, 200, j);
signed_out:
        return api_json(resp, 200, json_pack("{s:b, s:n}", "signed_in", 0, "session"));
}

/* Revokes session id (of this user); 1 revoked, 0 none, negative errno. */
static int session_revoke(struct api_request *req, const char *id)
{
        const char *params[] = {id};
        int r = 0;
        _cleanup_pgresult_ PGresult *res =
            db_query(req->db,
                     "UPDATE web_sessions SET revoked_at = COALESCE(revoked_at, now()) "
                     "WHERE id = $1::uuid RETURNING id",
                     1, params, &r);

        return res ? PQntuples(res) : r;
}

/* DELETE /v1/session: sign out (revoke this session, clear the cookie). */
unsigned api_h_session_delete(struct api_request *req, struct api_response *resp)
{
        int r;

        if (!req->session_id[0])
                return no_session(resp);
        r = session_revoke(req, req->session_id);
        if (r < 0)
                return api_db_error(resp, r);
        if (set_cookie(req, resp, "", 0) < 0)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        resp->status = 204;
        return 204;
}

/* GET /v1/sessions: this user's sessions, newest first (the last 100). */
unsigned api_h_sessions_list(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->session_id};
        json_t *j = NULL;
        int r = api_query_json(req,
                               "SELECT json_build_object('data', COALESCE(json_agg(" SESSION_JSON
                               " ORDER BY s.created_at DESC, s.id), '[]'::json)) FROM "
                               "(SELECT id, user_agent, created_at, last_used_at, expires_at, "
                               "revoked_at FROM web_sessions ORDER BY created_at DESC, id "
                               "LIMIT 100) s",
                               1, params, &j);

        if (r < 0)
                return api_db_error(resp, r);
        return api_json(resp, 200, j);
}

/* DELETE /v1/sessions/{id}: revoke one of this user's sessions. */
unsigned api_h_sessions_revoke(struct api_request *req, struct api_response *resp)
{
        const char *id = req->params[0];
        int r = api_is_uuid(id) ? session_revoke(req, id) : 0;

        if (r < 0)
                return api_db_error(resp, r);
        if (r == 0)
                return api_errorf(resp, 404, "not_found", "not found", NULL,
                                  "session '%s' does not exist", id);
        if (strcmp(id, req->session_id) == 0 && set_cookie(req, resp, "", 0) < 0)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        resp->status = 204;
        return 204;
}
