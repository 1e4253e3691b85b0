/* The recording HTTP sink for worker tests; see worker_sink.h. */
#include "worker_sink.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "testlib.h"
#include "auth_token.h"

#define SINK_MAX_REQUESTS 20000

struct worker_sink {
        struct MHD_Daemon *daemon;
        char url[64];
        pthread_mutex_t lock;
        struct worker_sink_request *requests;
        int n;
};

struct upload {
        char body[512];
        size_t len;
};

static const char *query(struct MHD_Connection *c, const char *name)
{
        return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static int query_int(struct MHD_Connection *c, const char *name, int def)
{
        const char *v = query(c, name);
        return v ? (int)strtol(v, NULL, 10) : def;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
        struct worker_sink *s = cls;
        struct upload *u = *con_cls;
        struct worker_sink_request rec = {0};
        struct MHD_Response *resp;
        const char *key;
        char body[512];
        int same_path = 0, fail, status = 200, delay;
        enum MHD_Result ret;

        if (!u) {
                u = calloc(1, sizeof(*u));
                *con_cls = u;
                return MHD_YES;
        }
        if (*upload_size) {
                size_t room = sizeof(u->body) - 1 - u->len;
                size_t n = *upload_size < room ? *upload_size : room;
                memcpy(u->body + u->len, upload_data, n);
                u->len += n;
                *upload_size = 0;
                return MHD_YES;
        }

        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
        snprintf(rec.method, sizeof(rec.method), "%s", method);
        snprintf(rec.path, sizeof(rec.path), "%s", url);
        snprintf(rec.idempotency_key, sizeof(rec.idempotency_key), "%s", key ? key : "");
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "User-Agent");
        snprintf(rec.user_agent, sizeof(rec.user_agent), "%s", key ? key : "");
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        snprintf(rec.content_type, sizeof(rec.content_type), "%s", key ? key : "");
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        snprintf(rec.authorization, sizeof(rec.authorization), "%s", key ? key : "");
        memcpy(rec.body, u->body, u->len + 1);
        rec.at_ms = test_now_ms();

        fail = query_int(c, "fail", 0);
        delay = query_int(c, "delay_ms", 0);
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->n; i++)
                if (strcmp(s->requests[i].path, url) == 0)
                        same_path++;
        if (same_path < fail)
                status = query_int(c, "status", 500);
        rec.status = status;
        if (s->n < SINK_MAX_REQUESTS)
                s->requests[s->n++] = rec;
        pthread_mutex_unlock(&s->lock);

        if (delay > 0)
                usleep((useconds_t)delay * 1000);
        if (query_int(c, "drop", 0))
                return MHD_NO; /* closes the connection without an answer */
        /* ?echo_auth=1: the Authorization header comes back in the body (a server that
         * answers with a secret it was sent) */
        if (query_int(c, "echo_auth", 0))
                snprintf(body, sizeof(body), "{\"ok\":%s,\"n\":%d,\"auth\":\"%s\"}",
                         status == 200 ? "true" : "false", same_path + 1, rec.authorization);
        else
                snprintf(body, sizeof(body), "{\"ok\":%s,\"n\":%d}",
                         status == 200 ? "true" : "false", same_path + 1);
        resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
        MHD_add_response_header(resp, "Content-Type", "application/json");
        if (status != 200 && query(c, "retry_after"))
                MHD_add_response_header(resp, "Retry-After", query(c, "retry_after"));
        ret = MHD_queue_response(c, (unsigned)status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        free(*con_cls);
        *con_cls = NULL;
}

struct worker_sink *worker_sink_start(void)
{
        struct worker_sink *s = calloc(1, sizeof(*s));
        int port = test_free_port();

        assert_non_null(s);
        s->requests = calloc(SINK_MAX_REQUESTS, sizeof(*s->requests));
        assert_non_null(s->requests);
        pthread_mutex_init(&s->lock, NULL);
        s->daemon =
            MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                             (uint16_t)port, NULL, NULL, handle, s, MHD_OPTION_NOTIFY_COMPLETED,
                             completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
        assert_non_null(s->daemon);
        snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", port);
        return s;
}

void worker_sink_stop(struct worker_sink *s)
{
        if (!s)
                return;
        MHD_stop_daemon(s->daemon);
        free(s->requests);
        free(s);
}

const char *worker_sink_url(const struct worker_sink *s)
{
        return s->url;
}

char *worker_sink_expand(const struct worker_sink *s, const char *text)
{
        size_t ulen = strlen(s->url), n = 0;
        char *out, *o;

        for (const char *p = strstr(text, "SINK"); p; p = strstr(p + 4, "SINK"))
                n++;
        out = malloc(strlen(text) + n * ulen + 1);
        assert_non_null(out);
        o = out;
        for (const char *p = text; *p;) {
                if (strncmp(p, "SINK", 4) == 0) {
                        memcpy(o, s->url, ulen);
                        o += ulen;
                        p += 4;
                } else {
                        *o++ = *p++;
                }
        }
        *o = '\0';
        return out;
}

int worker_sink_count(struct worker_sink *s, const char *prefix)
{
        int n = 0;

        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->n; i++)
                if (strncmp(s->requests[i].path, prefix, strlen(prefix)) == 0)
                        n++;
        pthread_mutex_unlock(&s->lock);
        return n;
}

int worker_sink_distinct_keys(struct worker_sink *s, const char *prefix)
{
        int n = 0;

        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->n; i++) {
                bool seen = false;
                if (strncmp(s->requests[i].path, prefix, strlen(prefix)) != 0)
                        continue;
                for (int j = 0; j < i && !seen; j++)
                        seen = strncmp(s->requests[j].path, prefix, strlen(prefix)) == 0 &&
                               strcmp(s->requests[j].idempotency_key,
                                      s->requests[i].idempotency_key) == 0;
                if (!seen)
                        n++;
        }
        pthread_mutex_unlock(&s->lock);
        return n;
}

int worker_sink_get(struct worker_sink *s, const char *prefix, int i,
                    struct worker_sink_request *out)
{
        int seen = 0, r = -1;

        pthread_mutex_lock(&s->lock);
        for (int k = 0; k < s->n; k++) {
                if (strncmp(s->requests[k].path, prefix, strlen(prefix)) != 0)
                        continue;
                if (seen++ == i) {
                        *out = s->requests[k];
                        r = 0;
                        break;
                }
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* ---- worker test helpers ----------------------------------------------------------- */

static char *must_value(PGconn *c, const char *sql, int n, const char *const *params)
{
        PGresult *res = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
        char *v = NULL;

        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                fprintf(stderr, "SQL failed: %s\n  %s\n", sql, PQresultErrorMessage(res));
                fail();
        }
        v = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        return v;
}

void worker_test_token(PGconn *owner, const char *user_id, char *token)
{
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char hex[2 + 64 + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1];
        const char *params[] = {user_id, hex, shown};

        assert_int_equal(auth_token_generate(token, hash, shown), 0);
        auth_token_hash_hex(hash, hex);
        free(must_value(owner,
                        "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) "
                        "VALUES ($1, 'test', $2::bytea, $3) RETURNING id",
                        3, params));
}

/* Every worker and api a test spawned. A failed assertion skips the test's teardown, so whatever
 * is still alive when the test program exits is killed here rather than left running. */
static pid_t spawned[256];
static int nspawned;

static void kill_spawned(void)
{
        for (int i = 0; i < nspawned; i++)
                if (spawned[i] > 0 && waitpid(spawned[i], NULL, WNOHANG) == 0) {
                        kill(spawned[i], SIGKILL);
                        waitpid(spawned[i], NULL, 0);
                }
}

static void remember_spawned(pid_t pid)
{
        if (nspawned == 0)
                atexit(kill_spawned);
        if (nspawned < (int)(sizeof(spawned) / sizeof(spawned[0])))
                spawned[nspawned++] = pid;
}

pid_t worker_test_spawn_api(const char *owner_conninfo, const char *dir, char *base, size_t len)
{
        char listen[64], env_db[4096], log[4096], url[128];
        int port = test_free_port();
        pid_t pid;

        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(base, len, "http://127.0.0.1:%d", port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", owner_conninfo);
        snprintf(log, sizeof(log), "%s/api.log", dir);
        const char *args[] = {"api", "--listen", listen, "--data-dir", dir, NULL};
        const char *env[] = {env_db, NULL};
        pid = test_spawn_agently(args, env, log);
        assert_int_gt(pid, 0);
        remember_spawned(pid); /* killed at exit if a failed assertion skips the teardown */
        snprintf(url, sizeof(url), "%s/healthz", base);
        if (!test_wait_http_ok(url, 15000))
                fail_msg("agently api did not answer %s within 15 s (log: %s)", url, log);
        return pid;
}

char *worker_test_user(PGconn *owner, const char *name)
{
        const char *params[] = {name};
        return must_value(owner, "INSERT INTO users (name) VALUES ($1) RETURNING id", 1, params);
}

char *worker_test_workflow(PGconn *owner, const char *user_id, const char *name, int version,
                           const char *definition)
{
        char v[16];
        const char *params[] = {user_id, name, v, definition};

        snprintf(v, sizeof(v), "%d", version);
        return must_value(owner,
                          "INSERT INTO workflows (user_id, name, version, definition, "
                          "definition_sha256) VALUES ($1, $2, $3::integer, $4::jsonb, "
                          "encode(sha256(convert_to($4::text, 'UTF8')), 'hex')) RETURNING id",
                          4, params);
}

char *worker_test_run(PGconn *owner, const char *workflow_id, const char *input)
{
        const char *params[] = {workflow_id, input ? input : "{}"};
        return must_value(owner,
                          "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                          "workflow_version, input) SELECT user_id, id, name, version, $2::jsonb "
                          "FROM workflows WHERE id = $1 RETURNING id",
                          2, params);
}

bool worker_test_wait_status(PGconn *c, const char *run_id, const char *statuses, int timeout_ms)
{
        int64_t deadline = test_now_ms() + timeout_ms;
        const char *params[] = {run_id, statuses};

        for (;;) {
                char *v = must_value(c,
                                     "SELECT (status = ANY (string_to_array($2, '|')))::text "
                                     "FROM workflow_runs WHERE id = $1",
                                     2, params);
                bool ok = strcmp(v, "true") == 0;
                free(v);
                if (ok)
                        return true;
                if (test_now_ms() > deadline) {
                        /* say where it stopped, so the failing assertion need not */
                        v = must_value(
                            c,
                            "SELECT status || coalesce(' ' || left(error::text, 500), '') "
                            "FROM workflow_runs WHERE id = $1",
                            1, params);
                        fprintf(stderr, "run %s is %s after %d ms, not %s\n", run_id, v, timeout_ms,
                                statuses);
                        free(v);
                        return false;
                }
                usleep(50 * 1000);
        }
}

pid_t worker_test_spawn(const char *owner_conninfo, const char *id, const char *lease,
                        const char *heartbeat, const char *const *extra, const char *log_path)
{
        const char *args[32] = {"worker",      "--id",    id,       "--lease", lease,
                                "--heartbeat", heartbeat, "--poll", "100ms"};
        int n = 9;
        char env_url[1024];
        const char *env[] = {env_url, NULL};
        pid_t pid;

        for (int i = 0; extra && extra[i] && n < 30; i++)
                args[n++] = extra[i];
        args[n] = NULL;
        snprintf(env_url, sizeof(env_url), "AGENTLY_DATABASE_URL=%s", owner_conninfo);
        pid = test_spawn_agently(args, env, log_path);
        assert_int_gt(pid, 0);
        remember_spawned(pid);
        return pid;
}

void worker_test_wait_registered(PGconn *owner, const char *id, int timeout_ms)
{
        int64_t t0 = test_now_ms();

        /* ids are the test's own ("w1", "t0.3"): no quoting needed */
        while (test_db_int(owner, "SELECT count(*) FROM agently_workers WHERE id = '%s'", id) ==
                   0 &&
               test_now_ms() - t0 < timeout_ms)
                usleep(20 * 1000);
        assert_int_equal(
            test_db_int(owner, "SELECT count(*) FROM agently_workers WHERE id = '%s'", id), 1);
}
