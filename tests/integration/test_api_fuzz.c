/*
 * Hostile input against a live `agently api` over a real Postgres: request paths, query
 * strings, headers and bodies that are not valid UTF-8 (raw and percent-encoded), huge,
 * NUL-bearing, of the wrong JSON type or nested deeply, with odd methods. Every answer must
 * be below 500, every 4xx must carry the JSON error shape, and the server must still be
 * alive and answering afterwards.
 *
 * The requests are written to a raw socket (a client library would refuse or re-encode
 * most of them). The mutation fuzz is seeded (AGENTLY_FUZZ_SEED, printed on failure) and
 * bounded in count and time (AGENTLY_FUZZ_SECONDS, default 3 s), so it is cheap in CI and
 * can be run longer by hand.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth_token.h"
#include "buf.h"
#include "cleanup.h"
#include "testlib.h"
#include "worker_sink.h"

#define FUZZ_MAX_REQUESTS 4000

static struct {
        char *conninfo;
        char *dir;
        PGconn *db;
        pid_t api;
        char base[64];
        int port;
        char token[AUTH_TOKEN_LEN + 1];
        char run_id[64];      /* a canceled run: its stream ends at once */
        char approval_id[64]; /* a pending approval of that run */
} F;

struct raw_reply {
        int status;
        char content_type[128];
        char *head; /* status line and headers */
        char *body;
        size_t body_len;
};

static void raw_reply_free(struct raw_reply *r)
{
        free(r->head);
        free(r->body);
        *r = (struct raw_reply){0};
}

/* Sends the n bytes of req on a fresh connection and reads the reply until the server
 * closes it (every request says Connection: close). Fails the test when the server does
 * not answer within 20 s. */
static void raw_send(const char *req, size_t n, struct raw_reply *out)
{
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F.port)};
        struct timeval tv = {.tv_sec = 20};
        _cleanup_buf_ struct buf in;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        char chunk[16384];

        *out = (struct raw_reply){0};
        buf_init(&in, 64 * 1024 * 1024);
        assert_int_ge(fd, 0);
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
        assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        for (size_t off = 0; off < n;) {
                ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
                if (w <= 0)
                        break; /* the server may answer (413, 431) before reading it all */
                off += (size_t)w;
        }
        for (;;) {
                ssize_t k = recv(fd, chunk, sizeof(chunk), 0);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        fail_msg("no answer within 20 s to: %.200s", req);
                if (k <= 0)
                        break;
                assert_int_equal(buf_append(&in, chunk, (size_t)k), 0);
        }
        close(fd);
        assert_int_gt(in.len, 12);
        const char *data = in.data;
        const char *end = memmem(data, in.len, "\r\n\r\n", 4);
        assert_non_null(end);
        out->head = strndup(data, (size_t)(end - data));
        out->status = (int)strtol(data + 9, NULL, 10);
        out->body_len = in.len - (size_t)(end + 4 - data);
        out->body = malloc(out->body_len + 1);
        memcpy(out->body, end + 4, out->body_len);
        out->body[out->body_len] = '\0';
        const char *ct = strcasestr(out->head, "\r\nContent-Type:");
        if (ct) {
                ct += strlen("\r\nContent-Type:");
                while (*ct == ' ')
                        ct++;
                size_t len = strcspn(ct, "\r\n");
                snprintf(out->content_type, sizeof(out->content_type), "%.*s", (int)len, ct);
        }
}

/* Builds and sends one request; path is sent as given (raw bytes), extra headers are
 * complete "Name: value" lines without CRLF, NULL-terminated. body may be NULL. */
static void raw_request(const char *method, const char *path, size_t path_len,
                        const char *const *extra, const char *body, size_t body_len,
                        struct raw_reply *out)
{
        _cleanup_buf_ struct buf b;

        buf_init(&b, 64 * 1024 * 1024);
        assert_int_equal(buf_printf(&b, "%s ", method), 0);
        assert_int_equal(buf_append(&b, path, path_len), 0);
        assert_int_equal(buf_printf(&b, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"),
                         0);
        for (size_t i = 0; extra && extra[i]; i++)
                assert_int_equal(buf_printf(&b, "%s\r\n", extra[i]), 0);
        if (body)
                assert_int_equal(buf_printf(&b,
                                            "Content-Type: application/json\r\nContent-Length: "
                                            "%zu\r\n",
                                            body_len),
                                 0);
        assert_int_equal(buf_append(&b, "\r\n", 2), 0);
        if (body)
                assert_int_equal(buf_append(&b, body, body_len), 0);
        raw_send(b.data, b.len, out);
}

/* The contract for bad input: never a 5xx, and a 4xx is a JSON error naming the problem. */
static void assert_contract(const struct raw_reply *r, const char *method, const char *what)
{
        if (r->status >= 500 || r->status < 100)
                fail_msg("%s %s: %d %s", method, what, r->status, r->body);
        if (r->status < 400 || strcmp(method, "HEAD") == 0)
                return;
        if (strncmp(r->content_type, "application/json", 16) != 0)
                fail_msg("%s %s: %d with Content-Type '%s': %s", method, what, r->status,
                         r->content_type, r->body);
        json_error_t err;
        json_t *j = json_loadb(r->body, r->body_len, 0, &err);
        if (!j)
                fail_msg("%s %s: %d body is not JSON (%s): %s", method, what, r->status, err.text,
                         r->body);
        json_t *e = json_object_get(j, "error");
        if (!json_is_string(json_object_get(e, "code")) ||
            !json_is_string(json_object_get(e, "message")) || !json_object_get(e, "detail") ||
            !json_object_get(e, "hint"))
                fail_msg("%s %s: %d without the error shape: %s", method, what, r->status, r->body);
        json_decref(j);
}

/* Sends one request with the admin token and returns the error code of a 4xx (malloc'd;
 * NULL for any other status), after checking the contract. */
static char *request_code(const char *method, const char *path, size_t path_len,
                          const char *const *extra, const char *body, int *status)
{
        char auth[128];
        const char *headers[16];
        size_t n = 0;
        struct raw_reply r;
        char *code = NULL;

        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", F.token);
        headers[n++] = auth;
        for (size_t i = 0; extra && extra[i] && n < 15; i++)
                headers[n++] = extra[i];
        headers[n] = NULL;
        raw_request(method, path, path_len, headers, body, body ? strlen(body) : 0, &r);
        assert_contract(&r, method, path);
        *status = r.status;
        if (r.status >= 400) {
                json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
                code =
                    strdup(json_string_value(json_object_get(json_object_get(j, "error"), "code")));
                json_decref(j);
        }
        raw_reply_free(&r);
        return code;
}

static void expect(const char *method, const char *path, const char *const *extra, const char *body,
                   int status, const char *code)
{
        int got = 0;
        _cleanup_free_ char *c = request_code(method, path, strlen(path), extra, body, &got);

        if (got != status || !c || strcmp(c, code) != 0)
                fail_msg("%s %s: expected %d %s, got %d %s", method, path, status, code, got,
                         c ? c : "(none)");
}

static int setup(void **state)
{
        struct raw_reply r;
        char path[256], sql[1024];

        F.conninfo = test_db_create("fuzz");
        F.db = test_db_connect(F.conninfo);
        F.dir = test_tempdir("fuzz");
        _cleanup_free_ char *user = worker_test_user(F.db, "fuzzer");
        worker_test_token(F.db, user, F.token);
        F.api = worker_test_spawn_api(F.conninfo, F.dir, F.base, sizeof(F.base));
        F.port = (int)strtol(strrchr(F.base, ':') + 1, NULL, 10);
        _cleanup_free_ char *wf = worker_test_workflow(
            F.db, user, "fz", 1,
            "{\"name\": \"fz\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", "
            "\"output\": {}}, {\"id\": \"b\", \"type\": \"transform\", \"output\": {}, "
            "\"after\": [\"a\"]}]}");
        _cleanup_free_ char *run = worker_test_run(F.db, wf, NULL);
        snprintf(F.run_id, sizeof(F.run_id), "%s", run);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO approvals (user_id, workflow_run_id, node_id, title) VALUES "
                 "('%s', '%s', 'a', 't') RETURNING id",
                 user, run);
        _cleanup_free_ char *approval = test_db_value(F.db, "%s", sql);
        snprintf(F.approval_id, sizeof(F.approval_id), "%s", approval);
        PQclear(test_db_must(F.db, "UPDATE workflow_runs SET status = 'canceled', finished_at "
                                   "= now() WHERE true"));
        snprintf(path, sizeof(path), "/v1/runs/%s", F.run_id);
        char auth[128];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", F.token);
        const char *h[] = {auth, NULL};
        raw_request("GET", path, strlen(path), h, NULL, 0, &r);
        assert_int_equal(r.status, 200);
        raw_reply_free(&r);
        return 0;
}

static int teardown(void **state)
{
        if (F.api > 0)
                test_stop_process(F.api, SIGTERM, 10000);
        PQfinish(F.db);
        test_rm_rf(F.dir);
        free(F.dir);
        free(F.conninfo);
        return 0;
}

/* The server process is alive and answers a normal request. */
static void assert_alive(void)
{
        int status = 0;
        assert_int_equal(waitpid(F.api, &status, WNOHANG), 0);
        expect("GET", "/v1/nope", NULL, NULL, 404, "not_found");
        int got = 0;
        _cleanup_free_ char *c = request_code("GET", "/v1/me", 6, NULL, NULL, &got);
        assert_int_equal(got, 200);
}

/* Text that is not UTF-8 anywhere a user can put it: a 400 or 404 that names it. */
static void test_invalid_utf8(void **state)
{
        char path[512];

        /* issue 8 defect 6: every route, the unknown one included, answered 500 */
        expect("GET", "/v1/me\xff\xfe", NULL, NULL, 400, "invalid_path");
        expect("GET", "/v1/me%FF%FE", NULL, NULL, 400, "invalid_path");
        expect("GET", "/v1/nothing\xc3", NULL, NULL, 400, "invalid_path");
        expect("GET", "/v1/runs/\xed\xa0\x80", NULL, NULL, 400, "invalid_path");  /* surrogate */
        expect("GET", "/v1/workflows/\xc0\xaf", NULL, NULL, 400, "invalid_path"); /* overlong */
        expect("DELETE", "/v1/secrets/%FF", NULL, NULL, 400, "invalid_path");
        snprintf(path, sizeof(path), "/v1/runs/%s/signals/%%FFgo", F.run_id);
        expect("POST", path, NULL, "{}", 400, "invalid_path");
        /* valid UTF-8 that is not a known name is still an ordinary 404 */
        expect("GET", "/v1/workflows/%C3%A9t%C3%A9", NULL, NULL, 404, "not_found");
        expect("GET", "/v1/caf\xc3\xa9", NULL, NULL, 404, "not_found");

        expect("GET", "/v1/runs?status=%FF", NULL, NULL, 400, "invalid_parameter");
        expect("GET", "/v1/runs?workflow=\xff\xfe", NULL, NULL, 400, "invalid_parameter");
        expect("GET", "/v1/runs?%FF=1", NULL, NULL, 400, "invalid_parameter");
        expect("GET", "/v1/runs?limit=%FF", NULL, NULL, 400, "invalid_parameter");
        expect("GET", "/v1/workflows?cursor=%FF", NULL, NULL, 400, "invalid_parameter");

        const char *key[] = {"Idempotency-Key: k\xff", NULL};
        expect("POST", "/v1/runs", key, "{\"workflow\": \"fz\"}", 400, "invalid_header");
        const char *last[] = {"Last-Event-ID: 1\xff", NULL};
        snprintf(path, sizeof(path), "/v1/runs/%s/events/stream", F.run_id);
        expect("GET", path, last, NULL, 400, "invalid_header");

        expect("POST", "/v1/runs", NULL, "{\"workflow\": \"fz\xff\"}", 400, "invalid_json");
        snprintf(path, sizeof(path), "/v1/runs/%s/signals/go", F.run_id);
        expect("POST", path, NULL, "\"\xc3\x28\"", 400, "invalid_json");
        assert_alive();
}

/* ---- the mutation fuzz ------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
        uint64_t x = rng_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return rng_state = x;
}

static size_t pick(size_t n)
{
        return (size_t)(rnd() % n);
}

/* A route template: {run} {approval} {name} are filled in; body is a valid one or NULL. */
struct templ {
        const char *method, *path, *body;
};

static const struct templ templates[] = {
    {"GET", "/healthz", NULL},
    {"GET", "/readyz", NULL},
    {"GET", "/v1/me", NULL},
    {"POST", "/v1/workflows",
     "{\"name\": \"fz2\", \"nodes\": [{\"id\": \"a\", \"type\": \"transform\", \"output\": "
     "{\"x\": \"{{ input.x }}\"}}]}"},
    {"GET", "/v1/workflows?limit=2", NULL},
    {"GET", "/v1/workflows/{name}?version=1", NULL},
    {"GET", "/v1/workflows/{name}/versions", NULL},
    {"POST", "/v1/runs", "{\"workflow\": \"fz\", \"version\": 1, \"input\": {\"x\": 1}}"},
    {"GET", "/v1/runs?status=queued&workflow=fz&limit=3&created_after=2020-01-01T00:00:00Z", NULL},
    {"GET", "/v1/runs/{run}", NULL},
    {"POST", "/v1/runs/{run}/cancel", NULL},
    {"POST", "/v1/runs/{run}/pause", NULL},
    {"POST", "/v1/runs/{run}/resume", NULL},
    {"POST", "/v1/runs/{run}/rerun", "{\"from_node\": \"b\"}"},
    {"POST", "/v1/runs/{run}/resolve",
     "{\"action\": \"retry\", \"node\": \"a\", \"comment\": "
     "\"c\"}"},
    {"POST", "/v1/runs/{run}/signals/{name}", "{\"by\": \"ann\"}"},
    {"GET", "/v1/runs/{run}/nodes?limit=1", NULL},
    {"GET", "/v1/runs/{run}/events?after=0&limit=5", NULL},
    {"GET", "/v1/runs/{run}/events/stream?after=0", NULL},
    {"POST", "/v1/users", "{\"name\": \"u1\", \"is_admin\": false}"},
    {"GET", "/v1/users", NULL},
    {"GET", "/v1/approvals?status=pending&limit=1", NULL},
    {"GET", "/v1/approvals/{approval}", NULL},
    {"POST", "/v1/approvals/{approval}/decide", "{\"decision\": \"reject\", \"comment\": \"n\"}"},
    {"GET", "/v1/secrets", NULL},
    {"PUT", "/v1/secrets/{name}", "{\"value\": \"s3cret\"}"},
    {"DELETE", "/v1/secrets/{name}", NULL},
    {"POST", "/v1/tokens", "{\"name\": \"t\"}"},
    {"GET", "/v1/tokens", NULL},
    {"DELETE", "/v1/tokens/{run}", NULL},
};

/* Byte strings that break things when dropped into text. */
static const char *const poison[] = {
    "\xff",
    "\xfe\xff",
    "\xc3",
    "\xc0\xaf",
    "\xed\xa0\x80",
    "\xf4\x90\x80\x80",
    "%FF",
    "%C3",
    "%00",
    "%ED%A0%80",
    "\xe2\x82",
    "%",
    "%zz",
    "..",
    "/",
    "//",
    "'",
    "\"",
    "\\",
    "{{",
    "}}",
    "\\u0000",
    "-1",
    "0",
    "99999999999999999999",
    "1e999",
    "null",
    "[]",
    "{}",
    "true",
    "\xc3\xa9",
    "\xf0\x9f\x98\x80",
    "%F0%9F%98%80",
    " ",
};

static const char *const odd_methods[] = {"GET",   "POST", "PUT",     "DELETE",   "PATCH",   "FOO",
                                          "TRACE", "HEAD", "OPTIONS", "PROPFIND", "M-SEARCH"};

static void append_poison(struct buf *b)
{
        switch (pick(6)) {
        case 0: { /* huge */
                size_t n = 1 + pick(6000);
                for (size_t i = 0; i < n; i++)
                        buf_append(b, (pick(50) == 0) ? "\xff" : "a", 1);
                break;
        }
        default:
                buf_append_str(b, poison[pick(ELEMENTSOF(poison))]);
        }
}

/* A copy of text (len n) with one to three mutations at random positions. */
static void mutate_text(const char *text, struct buf *out)
{
        size_t n = strlen(text);
        size_t at = n ? pick(n + 1) : 0;

        switch (pick(4)) {
        case 0: /* insert */
                buf_append(out, text, at);
                append_poison(out);
                buf_append_str(out, text + at);
                break;
        case 1: /* replace a run of bytes */
                buf_append(out, text, at);
                append_poison(out);
                if (at < n)
                        buf_append_str(out, text + at + 1 + pick(n - at));
                break;
        case 2: /* truncate */
                buf_append(out, text, at);
                break;
        default: /* append */
                buf_append_str(out, text);
                append_poison(out);
        }
}

/* A JSON value of a random wrong shape for a field. */
static void wrong_value(struct buf *b)
{
        switch (pick(9)) {
        case 0:
                buf_append_str(b, "null");
                break;
        case 1:
                buf_append_str(b, "12345678901234567890123");
                break;
        case 2:
                buf_append_str(b, "-0.5e308");
                break;
        case 3:
                buf_append_str(b, "[\"a\", 1, {}]");
                break;
        case 4:
                buf_append_str(b, "{\"k\": {\"k\": []}}");
                break;
        case 5: { /* deep nesting */
                size_t d = 1 + pick(200);
                for (size_t i = 0; i < d; i++)
                        buf_append_str(b, pick(2) ? "[" : "{\"k\":");
                buf_append_str(b, "1");
                /* closing is left to chance: an unbalanced document is fine too */
                for (size_t i = 0; i < d && pick(20); i++)
                        buf_append_str(b, "]");
                break;
        }
        case 6: { /* a huge string */
                size_t n = pick(200000);
                buf_append_str(b, "\"");
                for (size_t i = 0; i < n; i++)
                        buf_append(b, "x", 1);
                buf_append_str(b, "\"");
                break;
        }
        case 7:
                buf_append_str(b, "\"\\u0000\\ud800\"");
                break;
        default:
                buf_append_str(b, "true");
        }
}

/* A body derived from the template's: wrong types for its fields, or byte mutations. */
static void mutate_body(const char *body, struct buf *out)
{
        switch (pick(5)) {
        case 0:
                if (body && pick(2)) { /* every field of the object gets a wrong value */
                        json_t *j = json_loads(body, 0, NULL);
                        const char *key;
                        json_t *v;
                        bool first = true;
                        buf_append_str(out, "{");
                        json_object_foreach (j, key, v) {
                                buf_printf(out, "%s\"%s\": ", first ? "" : ", ", key);
                                if (pick(3))
                                        wrong_value(out);
                                else
                                        buf_append_str(out, "\"x\"");
                                first = false;
                        }
                        buf_append_str(out, "}");
                        json_decref(j);
                } else
                        wrong_value(out);
                break;
        case 1:
        case 2:
                mutate_text(body ? body : "{}", out);
                break;
        case 3:
                buf_append_str(out, body ? body : "{}");
                break;
        default:
                break; /* empty body */
        }
}

static void fill_template(const char *path, struct buf *out)
{
        for (const char *p = path; *p;) {
                if (strncmp(p, "{run}", 5) == 0) {
                        buf_append_str(out, F.run_id);
                        p += 5;
                } else if (strncmp(p, "{approval}", 10) == 0) {
                        buf_append_str(out, F.approval_id);
                        p += 10;
                } else if (strncmp(p, "{name}", 6) == 0) {
                        buf_append_str(out, "fz");
                        p += 6;
                } else
                        buf_append(out, p++, 1);
        }
}

static int status_classes[6];

static void one_case(int i, struct buf *request_log)
{
        const struct templ *t = &templates[pick(ELEMENTSOF(templates))];
        _cleanup_buf_ struct buf path, body, hdr1, hdr2;
        const char *method = t->method;
        const char *extra[4] = {NULL};
        size_t nextra = 0;
        bool with_body = t->body != NULL;
        char auth[160];

        buf_init(&path, 1 << 20);
        buf_init(&body, 8 << 20);
        buf_init(&hdr1, 1 << 20);
        buf_init(&hdr2, 1 << 20);
        fill_template(t->path, &path);
        uint64_t what = rnd();
        if (what & 1) { /* the path or its query string */
                _cleanup_buf_ struct buf p2;
                buf_init(&p2, 1 << 20);
                buf_append(&p2, path.data, path.len);
                buf_reset(&path);
                mutate_text(p2.data, &path);
                /* request-target syntax the server must see: no spaces, CR or LF */
                for (size_t k = 0; k < path.len; k++)
                        if (path.data[k] == ' ' || path.data[k] == '\r' || path.data[k] == '\n' ||
                            path.data[k] == '\0')
                                path.data[k] = '_';
                if (path.len == 0 || path.data[0] != '/') {
                        _cleanup_buf_ struct buf p3;
                        buf_init(&p3, 1 << 20);
                        buf_append_str(&p3, "/");
                        buf_append(&p3, path.data, path.len);
                        buf_reset(&path);
                        buf_append(&path, p3.data, p3.len);
                }
        }
        if (what & 2) /* the body */
                mutate_body(t->body, &body), with_body = true;
        else if (t->body)
                buf_append_str(&body, t->body);
        if (what & 4) /* a header the API reads */
        {
                static const char *const names[] = {"Idempotency-Key", "Last-Event-ID",
                                                    "Authorization", "Content-Type"};
                const char *name = names[pick(ELEMENTSOF(names))];
                _cleanup_buf_ struct buf v;
                buf_init(&v, 1 << 20);
                mutate_text(strcmp(name, "Authorization") == 0 ? "Bearer agt_x" : "1", &v);
                buf_printf(&hdr1, "%s: ", name);
                for (size_t k = 0; k < v.len; k++) /* header syntax: no CR, LF or NUL */
                        buf_append(&hdr1,
                                   (v.data[k] == '\r' || v.data[k] == '\n' || v.data[k] == '\0')
                                       ? "_"
                                       : &v.data[k],
                                   1);
                extra[nextra++] = hdr1.data;
        }
        if (what & 8) /* an odd method */
                method = odd_methods[pick(ELEMENTSOF(odd_methods))];
        if ((what & 48) == 48) /* a huge or many-valued header of no meaning */
        {
                size_t n = 1 + pick(40000);
                buf_append_str(&hdr2, "X-Fuzz: ");
                for (size_t k = 0; k < n; k++)
                        buf_append(&hdr2, pick(30) ? "b" : "\xff", 1);
                extra[nextra++] = hdr2.data;
        }
        if ((what >> 6) % 8 != 0) { /* mostly authenticated, so the handlers are reached */
                snprintf(auth, sizeof(auth), "Authorization: Bearer %s", F.token);
                bool has_auth = nextra && strncmp(extra[0], "Authorization", 13) == 0;
                if (!has_auth)
                        extra[nextra++] = auth;
        }
        extra[nextra] = NULL;

        buf_reset(request_log);
        buf_printf(request_log, "#%d %s %.300s", i, method, path.data);
        struct raw_reply r;
        raw_request(method, path.data, path.len, extra, with_body ? body.data : NULL,
                    with_body ? body.len : 0, &r);
        assert_contract(&r, method, request_log->data);
        status_classes[r.status / 100 % 6]++;
        raw_reply_free(&r);
}

static void test_mutation_fuzz(void **state)
{
        const char *seed_s = getenv("AGENTLY_FUZZ_SEED");
        const char *secs_s = getenv("AGENTLY_FUZZ_SECONDS");
        uint64_t seed = seed_s ? strtoull(seed_s, NULL, 10) : (uint64_t)time(NULL);
        double seconds = secs_s ? strtod(secs_s, NULL) : 3.0;
        int max = secs_s ? 1000000 : FUZZ_MAX_REQUESTS;
        int64_t deadline = test_now_ms() + (int64_t)(seconds * 1000);
        _cleanup_buf_ struct buf request_log;
        int n = 0;

        buf_init(&request_log, 4096);
        rng_state = seed ? seed : 1;
        fprintf(stderr, "api fuzz: seed %llu (AGENTLY_FUZZ_SEED to repeat)\n",
                (unsigned long long)seed);
        while (n < max && test_now_ms() < deadline)
                one_case(n++, &request_log);
        fprintf(stderr, "api fuzz: %d requests in %.1f s: %d 2xx, %d 3xx, %d 4xx\n", n, seconds,
                status_classes[2], status_classes[3], status_classes[4]);
        assert_int_gt(n, 0);
        assert_alive();
}

/* A kept-open connection to port that asked GET /healthz: its fd when answered 200, -1 when
 * the server closed it instead (or said nothing within 5 s). */
static int answered_connection(int port)
{
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        struct timeval tv = {.tv_sec = 5};
        static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        char got[256];
        size_t len = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        assert_int_ge(fd, 0);
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
        assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(req) - 1)) {
                close(fd);
                return -1;
        }
        while (len < 12) {
                ssize_t k = recv(fd, got + len, sizeof(got) - len, 0);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                len += (size_t)k;
        }
        if (len < 12 || memcmp(got, "HTTP/1.1 200", 12) != 0) {
                close(fd);
                return -1;
        }
        return fd;
}

/*
 * --max-connections is the daemon's: 8 with 4 threads answers 8 kept-open connections,
 * refuses the 9th, and answers again once they are closed. MHD alone splits its limit
 * among the pool's threads (2 each here) and closes a connection a thread accepts past its
 * share: which thread accepts is a race, so the 8 were not all answered.
 */
static void test_connection_limit_is_the_daemons(void **state)
{
        (void)state;
        char listen[64], env_db[4096], log[4096], url[128];
        int port = test_free_port(), fds[8];

        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", F.conninfo);
        snprintf(log, sizeof(log), "%s/api-limit.log", F.dir);
        const char *args[] = {"api", "--listen",          listen, "--data-dir", F.dir, "--threads",
                              "4",   "--max-connections", "8",    NULL};
        const char *env[] = {env_db, NULL};
        pid_t api = test_spawn_agently(args, env, log);
        assert_true(test_wait_http_ok(url, 15000));
        usleep(300 * 1000); /* the probe's connection closed and counted out */

        for (int round = 0; round < 2; round++) {
                for (int i = 0; i < 8; i++) {
                        fds[i] = answered_connection(port);
                        if (fds[i] < 0)
                                fail_msg("round %d: connection %d of 8 was not answered", round,
                                         i + 1);
                }
                assert_int_equal(answered_connection(port), -1); /* the 9th */
                for (int i = 0; i < 8; i++)
                        close(fds[i]);
                usleep(300 * 1000);
        }
        test_stop_process(api, SIGTERM, 10000);
}

/* After all of it, SIGTERM stops the server cleanly (under ASan: no leak, no error). */
static void test_clean_shutdown(void **state)
{
        int status = test_stop_process(F.api, SIGTERM, 15000);

        F.api = 0;
        assert_exit_code(status, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_invalid_utf8),
            cmocka_unit_test(test_mutation_fuzz),
            cmocka_unit_test(test_connection_limit_is_the_daemons),
            cmocka_unit_test(test_clean_shutdown),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
