/*
 * The secrets vault end to end, with real processes (an `agently api`, two workers, the
 * rotate-key command) and a local server that plays the outside world:
 *
 * canary — four secrets with unique values are used by 100 runs through headers, the URL
 *   and the body of an http node; 40 of them go down a failing path (the server answers
 *   500 with the token in its body) and every one gets an answer that echoes what it was
 *   sent. The values did leave (the server saw each of them), and afterwards none of them
 *   is in any table (pg_dump, also hex-encoded), any log of agently or Postgres, or any
 *   API answer about the runs; what is stored shows [secret:NAME].
 *
 * rotation — with 2,000 secrets in the vault, runs that use secrets keep being started and
 *   keep completing while `agently secret rotate-key` re-wraps everything; afterwards every
 *   secret is under the new key version only, the old version is retired and its key file
 *   gone, and everything still opens. A second rotation moves the vault to the command KMS
 *   provider (tests/support/kms-test-provider) and runs still complete.
 */
#include "testlib.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <microhttpd.h>
#include <sodium.h>

#include "auth_token.h"
#include "embedded_pg.h"
#include "fileio.h"
#include "secrets.h"
#include "strutil.h"
#include "worker_sink.h"

#define NSECRETS 4
#define NRUNS    100
#define NFAIL    40
#define NFILLER  2000

static const char *const names[NSECRETS] = {"LLMKEY", "canary-b", "CANARY_URL", "JSON_Q"};

static struct {
        char *conninfo;
        PGconn *db;
        char *dir;
        char *user;
        char token[AUTH_TOKEN_LEN + 1];
        char base[64];
        pid_t api, workers[2];
        struct MHD_Daemon *echo;
        int echo_port;
        char values[NSECRETS][80];
        char escaped[NSECRETS][120]; /* each value as it appears inside a JSON string */
        atomic_int requests, carried, mismatched;
} S;

/* ---- the outside world: echoes what it was sent, or refuses with it ---- */

struct upload {
        char *data;
        size_t len;
};

static enum MHD_Result echo_handler(void *cls, struct MHD_Connection *c, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_size, void **con_cls)
{
        struct upload *u = *con_cls;

        if (!u) {
                *con_cls = calloc(1, sizeof(struct upload));
                return *con_cls ? MHD_YES : MHD_NO;
        }
        if (*upload_size) {
                char *grown = realloc(u->data, u->len + *upload_size + 1);
                if (!grown)
                        return MHD_NO;
                memcpy(grown + u->len, upload_data, *upload_size);
                u->data = grown;
                u->len += *upload_size;
                u->data[u->len] = '\0';
                *upload_size = 0;
                return MHD_YES;
        }
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        const char *xb = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-B");
        const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
        const char *body = u->data ? u->data : "";
        char want_auth[128];

        atomic_fetch_add(&S.requests, 1);
        snprintf(want_auth, sizeof(want_auth), "Bearer %s", S.values[0]);
        if (auth && !strcmp(auth, want_auth))
                atomic_fetch_add(&S.carried, 1);
        if (!auth || strcmp(auth, want_auth) || !xb || strcmp(xb, S.values[1]) || !key ||
            strcmp(key, S.values[2]) || !strstr(body, S.escaped[3]))
                atomic_fetch_add(&S.mismatched, 1);

        bool fail = str_has_prefix(url, "/fail");
        json_t *seen = json_pack("{s:s?, s:s?, s:s?, s:s}", "authorization", auth, "x_b", xb, "key",
                                 key, "body", body);
        char *text = NULL;
        if (fail) {
                text = str_printf("denied: token %s is not accepted (x-b %s, key %s, body %s)",
                                  auth ? auth : "", xb ? xb : "", key ? key : "", body);
        } else {
                json_t *answer = json_pack("{s:o, s:s}", "seen", seen, "echo", body);
                seen = NULL;
                text = json_dumps(answer, JSON_COMPACT);
                json_decref(answer);
        }
        json_decref(seen);
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "Content-Type", fail ? "text/plain" : "application/json");
        enum MHD_Result ret = MHD_queue_response(c, fail ? 500 : 200, r);
        MHD_destroy_response(r);
        return ret;
}

static void echo_done(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        struct upload *u = *con_cls;

        if (u) {
                free(u->data);
                free(u);
        }
        *con_cls = NULL;
}

/* ---- helpers ---- */

static void exec_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void exec_sql(const char *fmt, ...)
{
        va_list ap;
        char *sql = NULL;

        va_start(ap, fmt);
        assert_int_ge(vasprintf(&sql, fmt, ap), 0);
        va_end(ap);
        PQclear(test_db_must(S.db, sql));
        free(sql);
}

static long api(const char *method, const char *path, const char *body, char **out)
{
        char url[512], auth[128];
        const char *headers[] = {auth, "Content-Type: application/json", NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        return test_http(method, url, headers, body, out);
}

static void put_secret(const char *name, const char *value)
{
        char path[128];
        json_t *b = json_pack("{s:s}", "value", value);
        char *body = json_dumps(b, JSON_COMPACT), *out = NULL;
        long st;

        snprintf(path, sizeof(path), "/v1/secrets/%s", name);
        st = api("PUT", path, body, &out);
        if (st != 201 && st != 200)
                fail_msg("PUT %s answered %ld: %s", path, st, out ? out : "");
        free(out);
        free(body);
        json_decref(b);
}

static pid_t spawn_worker(int i)
{
        char id[32], log[600];
        const char *extra[] = {"--data-dir", S.dir, "--concurrency", "50", NULL};

        snprintf(id, sizeof(id), "vault-w%d", i);
        snprintf(log, sizeof(log), "%s/%s.log", S.dir, id);
        return worker_test_spawn(S.conninfo, id, "5s", "1s", extra, log);
}

/* Stops and starts the workers and the API (after the environment changed). */
static void restart_processes(void)
{
        for (int i = 0; i < 2; i++)
                test_stop_process(S.workers[i], SIGTERM, 15000);
        test_stop_process(S.api, SIGTERM, 10000);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        for (int i = 0; i < 2; i++)
                S.workers[i] = spawn_worker(i);
}

static int setup(void **state)
{
        S.conninfo = test_db_create("vault");
        S.db = test_db_connect(S.conninfo);
        S.dir = test_tempdir("vault");
        S.user = worker_test_user(S.db, "ana");
        worker_test_token(S.db, S.user, S.token);
        unsetenv("AGENTLY_MASTER_KEY_FILE");
        unsetenv("AGENTLY_KMS_COMMAND");

        S.echo_port = test_free_port();
        S.echo = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                  (uint16_t)S.echo_port, NULL, NULL, echo_handler, NULL,
                                  MHD_OPTION_NOTIFY_COMPLETED, echo_done, NULL, MHD_OPTION_END);
        assert_non_null(S.echo);

        /* unique values; the last has characters JSON escapes */
        for (int i = 0; i < NSECRETS; i++) {
                unsigned char raw[12];
                char hex[25];
                randombytes_buf(raw, sizeof(raw));
                str_hex(raw, sizeof(raw), hex);
                if (i == 3)
                        snprintf(S.values[i], sizeof(S.values[i]), "cnry-\"%s\"\\q", hex);
                else
                        snprintf(S.values[i], sizeof(S.values[i]), "cnry%d-%s", i, hex);
                json_t *s = json_string(S.values[i]);
                char *t = json_dumps(s, JSON_ENCODE_ANY);
                snprintf(S.escaped[i], sizeof(S.escaped[i]), "%.*s", (int)strlen(t) - 2, t + 1);
                free(t);
                json_decref(s);
        }
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        for (int i = 0; i < NSECRETS; i++)
                put_secret(names[i], S.values[i]);
        for (int i = 0; i < 2; i++)
                S.workers[i] = spawn_worker(i);
        return 0;
}

static int teardown(void **state)
{
        for (int i = 0; i < 2; i++)
                test_stop_process(S.workers[i], SIGTERM, 15000);
        test_stop_process(S.api, SIGTERM, 10000);
        MHD_stop_daemon(S.echo);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.user);
        free(S.conninfo);
        return 0;
}

static const char WF[] =
    "{\"name\":\"canary\",\"nodes\":[{\"id\":\"call\",\"type\":\"http\",\"retry\":"
    "{\"max_attempts\":1},\"request\":{\"method\":\"POST\","
    "\"url\":\"http://127.0.0.1:PORT/${ input.path }/${ run.id }?key=${ secrets.CANARY_URL }\","
    "\"headers\":{\"Authorization\":\"Bearer ${ secrets.LLMKEY }\","
    "\"X-B\":\"${ secrets[\\\"canary-b\\\"] }\"},"
    "\"body\":{\"q\":\"${ secrets.JSON_Q }\",\"n\":\"${ input.n }\"}}}]}";

static char *canary_workflow(const char *name)
{
        char port[16];
        snprintf(port, sizeof(port), "%d", S.echo_port);
        char *def = strdup(WF);
        char *at = strstr(def, "PORT");
        char *full = str_printf("%.*s%s%s", (int)(at - def), def, port, at + 4);
        char *wf = worker_test_workflow(S.db, S.user, name, 1, full);
        free(def);
        free(full);
        return wf;
}

static char *start(const char *wf, const char *path, int n)
{
        char input[128];
        snprintf(input, sizeof(input), "{\"path\": \"%s\", \"n\": %d}", path, n);
        return worker_test_run(S.db, wf, input);
}

static void wait_all_finished(const char *where, int ms)
{
        int64_t deadline = test_now_ms() + ms;
        long long left = 0;

        while (test_now_ms() < deadline) {
                left = test_db_int(S.db,
                                   "SELECT count(*) FROM workflow_runs WHERE %s AND status "
                                   "NOT IN ('completed', 'failed', 'canceled')",
                                   where);
                if (left == 0)
                        return;
                usleep(100 * 1000);
        }
        fail_msg("%lld runs still not finished after %d ms", left, ms);
}

/* Fails the test when text (len bytes, from what) holds any secret value in any form. */
static void assert_no_value(const char *what, const char *text, size_t len)
{
        for (int i = 0; i < NSECRETS; i++) {
                char hex[2 * sizeof(S.values[i]) + 1];
                size_t vl = strlen(S.values[i]);
                str_hex((const unsigned char *)S.values[i], vl, hex);
                const char *forms[] = {S.values[i], S.escaped[i], hex, S.values[i] + 5};
                for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++)
                        if (memmem(text, len, forms[f], strlen(forms[f])))
                                fail_msg("%s holds the value of secret %s (form %zu)", what,
                                         names[i], f);
        }
}

static char *read_command(const char *cmd, size_t *len)
{
        FILE *p = popen(cmd, "r");
        char *out = NULL;
        size_t cap = 0;

        assert_non_null(p);
        *len = 0;
        for (;;) {
                if (*len + 65536 + 1 > cap) {
                        cap = cap ? cap * 2 : 1 << 20;
                        out = realloc(out, cap);
                        assert_non_null(out);
                }
                size_t n = fread(out + *len, 1, 65536, p);
                if (n == 0)
                        break;
                *len += n;
        }
        out[*len] = '\0';
        assert_int_equal(pclose(p), 0);
        return out;
}

static void assert_no_value_in_files(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        int seen = 0;

        if (!d)
                return;
        while ((e = readdir(d))) {
                char path[1024];
                size_t len = 0;
                char *text = NULL;
                if (!strstr(e->d_name, ".log") && !strstr(e->d_name, "postgres"))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                if (file_read_all(path, 256 << 20, &text, &len) == 0) {
                        assert_no_value(path, text, len);
                        seen++;
                }
                free(text);
        }
        closedir(d);
}

/* ---- the canary ---- */

static void canary_values_leave_in_requests_and_nowhere_else(void **state)
{
        char *wf = canary_workflow("canary");
        char *runs[NRUNS];

        for (int i = 0; i < NRUNS; i++)
                runs[i] = start(wf, i < NFAIL ? "fail" : "echo", i);
        /* a secret that does not exist fails its run with a clear error, and nothing else */
        char *missing_wf = worker_test_workflow(
            S.db, S.user, "missing", 1,
            "{\"name\":\"missing\",\"nodes\":[{\"id\":\"call\",\"type\":\"http\",\"retry\":"
            "{\"max_attempts\":1},\"request\":{\"url\":\"http://127.0.0.1:1/\",\"headers\":"
            "{\"Authorization\":\"${ secrets.NOT_THERE }\"}}}]}");
        char *missing = worker_test_run(S.db, missing_wf, NULL);
        wait_all_finished("true", 120000);

        /* the values did leave, exactly where the definition put them */
        assert_int_equal(atomic_load(&S.requests), NRUNS);
        assert_int_equal(atomic_load(&S.carried), NRUNS);
        assert_int_equal(atomic_load(&S.mismatched), 0);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE status = "
                                     "'completed' AND workflow_id = '%s'",
                                     wf),
                         NRUNS - NFAIL);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE status = "
                                     "'failed' AND workflow_id = '%s'",
                                     wf),
                         NFAIL);
        assert_db_equal("failed", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        missing);
        assert_int_equal(
            test_db_int(S.db,
                        "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' AND "
                        "error->>'message' LIKE 'secret ''NOT_THERE'' does not exist; create it "
                        "with `agently secret set NOT_THERE`'",
                        missing),
            1);

        /* what is stored shows [secret:NAME]: the request as sent, the echo, the refusal */
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM node_runs WHERE "
                                           "input->'headers'->>'Authorization' = 'Bearer "
                                           "[secret:LLMKEY]' AND input->>'url' LIKE "
                                           "'%%?key=[secret:CANARY_URL]'"),
                         NRUNS);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM node_runs WHERE status = "
                                           "'completed' AND output->'body'->'seen'->>'x_b' = "
                                           "'[secret:canary-b]' AND output->'body'->>'echo' LIKE "
                                           "'%%[secret:JSON_Q]%%'"),
                         NRUNS - NFAIL);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM node_runs WHERE status = 'failed' "
                                           "AND error->>'body' LIKE 'denied: token Bearer "
                                           "[secret:LLMKEY] is not accepted%%'"),
                         NFAIL);

        /* every table */
        char *bindir = NULL, cmd[4096];
        size_t len = 0;
        assert_int_equal(embedded_pg_bindir(&bindir), 0);
        snprintf(cmd, sizeof(cmd), "'%s/pg_dump' --no-owner '%s'", bindir, S.conninfo);
        char *dump = read_command(cmd, &len);
        assert_non_null(strstr(dump, "[secret:LLMKEY]"));
        assert_no_value("pg_dump", dump, len);
        free(dump);
        free(bindir);

        /* every API answer about the runs, from an API process that never saw the values (the
         * one that stored them masks them in its answers by itself) */
        test_stop_process(S.api, SIGTERM, 10000);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        int answers = 0;
        for (int i = 0; i < NRUNS; i++) {
                const char *tails[] = {"", "/nodes", "/events"};
                for (size_t p = 0; p < 3; p++) {
                        char path[256], *out = NULL;
                        snprintf(path, sizeof(path), "/v1/runs/%s%s", runs[i], tails[p]);
                        assert_int_equal(api("GET", path, NULL, &out), 200);
                        assert_no_value(path, out, strlen(out));
                        answers += strstr(out, "[secret:") != NULL;
                        free(out);
                }
        }
        assert_int_gt(answers, NRUNS);
        char *out = NULL;
        assert_int_equal(api("GET", "/v1/runs?limit=200", NULL, &out), 200);
        assert_no_value("GET /v1/runs", out, strlen(out));
        free(out);

        /* every log: agently's processes (their stdout and stderr) and the Postgres cluster */
        assert_no_value_in_files(S.dir);
        const char *pgdir = getenv("AGENTLY_TEST_PG_DIR");
        if (pgdir) {
                snprintf(cmd, sizeof(cmd),
                         "find '%s' -name '*.log' -type f -print0 | xargs -0 -r cat", pgdir);
                char *pglog = read_command(cmd, &len);
                assert_no_value("the Postgres logs", pglog, len);
                free(pglog);
        }
        for (int i = 0; i < NRUNS; i++)
                free(runs[i]);
        free(missing);
        free(missing_wf);
        free(wf);
}

/* ---- rotation under load ---- */

struct feeder {
        const char *wf;
        atomic_bool stop;
        atomic_int started;
};

static void *feed_runs(void *arg)
{
        struct feeder *f = arg;
        PGconn *c = test_db_connect(S.conninfo);

        while (!atomic_load(&f->stop)) {
                char input[64];
                snprintf(input, sizeof(input), "{\"path\": \"echo\", \"n\": %d}",
                         atomic_load(&f->started));
                free(worker_test_run(c, f->wf, input));
                atomic_fetch_add(&f->started, 1);
                usleep(20 * 1000);
        }
        PQfinish(c);
        return NULL;
}

/* Runs `agently secret rotate-key` (env: extra NULL or "NAME=value"); returns its output. */
static char *rotate(const char *extra_env)
{
        char log[600], env_db[2048];
        const char *args[] = {"secret", "rotate-key", "--data-dir", S.dir, NULL};
        const char *env[] = {env_db, extra_env, NULL};
        int status = 0;
        size_t len = 0;
        char *out = NULL;

        snprintf(log, sizeof(log), "%s/rotate.out", S.dir);
        unlink(log);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", S.conninfo);
        pid_t pid = test_spawn_agently(args, env, log);
        assert_int_gt(pid, 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_int_equal(file_read_all(log, 1 << 20, &out, &len), 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail_msg("rotate-key failed: %s", out);
        return out;
}

/* Every secret opens under its stored version only, which is `version`. */
static void assert_all_open(int version, const char *provider)
{
        struct secrets_kms k;
        PGresult *rows = test_db_must(S.db, "SELECT user_id, id, nonce, ciphertext, wrapped_key, "
                                            "key_version, name FROM secrets ORDER BY name");

        assert_int_equal(secrets_kms_init(&k, S.dir), 0);
        for (int i = 0; i < PQntuples(rows); i++) {
                size_t nl, cl, wl;
                unsigned char *n = PQunescapeBytea((unsigned char *)PQgetvalue(rows, i, 2), &nl);
                unsigned char *c = PQunescapeBytea((unsigned char *)PQgetvalue(rows, i, 3), &cl);
                unsigned char *w = PQunescapeBytea((unsigned char *)PQgetvalue(rows, i, 4), &wl);
                char *value = NULL, *why = NULL;
                int kv = 0;
                assert_int_equal(str_to_int(PQgetvalue(rows, i, 5), &kv), 0);
                assert_int_equal(kv, version);
                int r = secrets_open(&k, provider, PQgetvalue(rows, i, 0), PQgetvalue(rows, i, 1),
                                     n, nl, c, cl, w, wl, kv, &value, NULL, &why);
                if (r != 0)
                        fail_msg("secret %s does not open: %s", PQgetvalue(rows, i, 6),
                                 why ? why : strerror(-r));
                for (int s = 0; s < NSECRETS; s++)
                        if (!strcmp(PQgetvalue(rows, i, 6), names[s]))
                                assert_string_equal(value, S.values[s]);
                secrets_value_free(value);
                PQfreemem(n);
                PQfreemem(c);
                PQfreemem(w);
        }
        secrets_kms_release(&k);
        PQclear(rows);
}

static void rotation_under_load_keeps_runs_working(void **state)
{
        char *wf = canary_workflow("rotating");
        struct secrets_kms k;
        pthread_t t;

        /* a vault big enough that re-wrapping takes a while: 2,000 more secrets */
        assert_int_equal(secrets_kms_init(&k, S.dir), 0);
        exec_sql("BEGIN");
        for (int i = 0; i < NFILLER; i++) {
                struct secrets_sealed s = {0};
                char name[32], id[64];
                snprintf(name, sizeof(name), "FILLER_%d", i);
                char *uuid = test_db_value(S.db, "SELECT gen_random_uuid()");
                str_copy(id, sizeof(id), uuid);
                free(uuid);
                assert_int_equal(
                    secrets_seal(&k, "local", 1, S.user, id, name, strlen(name), &s, NULL), 0);
                char *ct = malloc(2 * s.ciphertext_len + 1), *wk = malloc(2 * s.wrapped_len + 1);
                char nonce[2 * SECRETS_NONCE_BYTES + 1];
                str_hex(s.ciphertext, s.ciphertext_len, ct);
                str_hex(s.wrapped_key, s.wrapped_len, wk);
                str_hex(s.nonce, sizeof(s.nonce), nonce);
                exec_sql("INSERT INTO secrets (id, user_id, name, ciphertext, nonce, "
                         "wrapped_key, key_version) VALUES ('%s', '%s', '%s', "
                         "'\\x%s', '\\x%s', '\\x%s', 1)",
                         id, S.user, name, ct, nonce, wk);
                free(ct);
                free(wk);
                secrets_sealed_free(&s);
        }
        exec_sql("COMMIT");
        secrets_kms_release(&k);

        /* runs keep being started during the whole rotation */
        struct feeder f = {.wf = wf};
        pthread_create(&t, NULL, feed_runs, &f);
        while (atomic_load(&f.started) < 20)
                usleep(10 * 1000);
        int before = atomic_load(&f.started);
        int64_t began = test_now_ms();
        char *out = rotate(NULL);
        int64_t took = test_now_ms() - began;
        int during = atomic_load(&f.started) - before;
        usleep(500 * 1000);
        atomic_store(&f.stop, true);
        pthread_join(t, NULL);
        fprintf(stderr, "rotate-key: %s(%lld ms; %d runs started meanwhile)\n", out,
                (long long)took, during);
        assert_non_null(strstr(out, "key version 2 (local) is live: re-wrapped 2004 secret(s), "
                                    "retired 1 old version(s)"));
        free(out);
        assert_int_gt(during, 0);
        char where[128];
        snprintf(where, sizeof(where), "workflow_id = '%s'", wf);
        wait_all_finished(where, 120000);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE %s AND "
                                     "status <> 'completed'",
                                     where),
                         0);
        assert_int_equal(test_db_int(S.db, "SELECT count(*) FROM workflow_runs WHERE %s", where),
                         atomic_load(&f.started));

        /* the new version only; the old one retired and its key file gone */
        assert_db_equal("2", S.db,
                        "SELECT string_agg(DISTINCT key_version::text, ',') FROM secrets");
        assert_db_equal("1", S.db,
                        "SELECT string_agg(version::text, ',') FROM secret_key_versions WHERE "
                        "retired_at IS NOT NULL");
        char path[600];
        snprintf(path, sizeof(path), "%s/master.key", S.dir);
        assert_int_equal(access(path, F_OK), -1);
        snprintf(path, sizeof(path), "%s/master.key.2", S.dir);
        assert_int_equal(access(path, F_OK), 0);
        assert_all_open(2, "local");

        /* to the command provider: few secrets (a process per wrap), workers that know it */
        exec_sql("DELETE FROM secrets WHERE name LIKE 'FILLER_%%'");
        char keyfile[600], command[1024];
        snprintf(keyfile, sizeof(keyfile), "%s/test-kms.key", S.dir);
        snprintf(command, sizeof(command), "%s/tests/support/kms-test-provider",
                 AGENTLY_SOURCE_DIR);
        setenv("KMS_TEST_KEY_FILE", keyfile, 1);
        setenv("AGENTLY_KMS_COMMAND", command, 1);
        restart_processes();
        unsetenv("AGENTLY_KMS_COMMAND");
        char env_cmd[1100];
        snprintf(env_cmd, sizeof(env_cmd), "AGENTLY_KMS_COMMAND=%s", command);
        char *runs[5];
        for (int i = 0; i < 5; i++)
                runs[i] = start(wf, "echo", 1000 + i);
        out = rotate(env_cmd);
        assert_non_null(strstr(out, "key version 3 (command) is live: re-wrapped 4 secret(s)"));
        free(out);
        for (int i = 0; i < 5; i++)
                free(start(wf, "echo", 2000 + i));
        wait_all_finished(where, 120000);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM workflow_runs WHERE %s AND "
                                     "status <> 'completed'",
                                     where),
                         0);
        assert_db_equal("1,2", S.db,
                        "SELECT string_agg(version::text, ',' ORDER BY version) FROM "
                        "secret_key_versions WHERE retired_at IS NOT NULL");
        assert_int_equal(access(path, F_OK), -1); /* master.key.2 */
        setenv("AGENTLY_KMS_COMMAND", command, 1);
        assert_all_open(3, "command");
        unsetenv("AGENTLY_KMS_COMMAND");
        for (int i = 0; i < 5; i++)
                free(runs[i]);
        free(wf);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(canary_values_leave_in_requests_and_nowhere_else),
            cmocka_unit_test(rotation_under_load_keeps_runs_working),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
