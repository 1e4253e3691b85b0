/*
 * `agently up` brings its Postgres back (issue 12, item 8). Under load — runs being started
 * through the API and executing (an http step, a one-second sleep, another http step
 * against an idempotent sink in this process) — the embedded postmaster is SIGKILLed. With
 * nobody touching `up`: /readyz answers 200 again within 30 s, every run whose
 * POST /v1/runs was acknowledged completes, each step's effect reached the sink under one
 * idempotency key, and /metrics counts the restart.
 */
#include "testlib.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "chaos_sink.h"
#include "cleanup.h"
#include "embedded_pg.h"
#include "fileio.h"
#include "strutil.h"

#define MAX_RUNS        2000
#define NNODES          2
#define READY_WITHIN_MS 30000

static const char *const NODES[NNODES] = {"a", "b"};

struct load {
        const char *base;
        const char *auth; /* "Authorization: Bearer ..." */
        pthread_t thread;
        volatile int stop;
        pthread_mutex_t lock;
        char *acked[MAX_RUNS]; /* run ids whose POST answered 201 */
        int nacked, attempts, refused;
};

static pid_t up_pid;

/* A failed assertion leaves `up` running: stop it the way a user would, so it stops its
 * Postgres too. */
static void stop_up_at_exit(void)
{
        if (up_pid > 0)
                test_stop_process(up_pid, SIGTERM, 60000);
}

/* Starts runs one after another until told to stop; each attempt gets its own n, so a
 * run committed without an answer (the database died under it) has a sink cell of its own. */
static void *post_runs(void *arg)
{
        struct load *l = arg;
        const char *headers[] = {l->auth, "Content-Type: application/json", NULL};
        _cleanup_free_ char *url = str_printf("%s/v1/runs", l->base);

        while (!l->stop && l->attempts < MAX_RUNS) {
                char body[128], *resp = NULL;
                json_t *j;
                long status;

                snprintf(body, sizeof(body), "{\"workflow\":\"crash\",\"input\":{\"n\":%d}}",
                         l->attempts++);
                status = test_http("POST", url, headers, body, &resp);
                j = status == 201 && resp ? json_loads(resp, 0, NULL) : NULL;
                pthread_mutex_lock(&l->lock);
                if (j && json_string_value(json_object_get(j, "id")))
                        l->acked[l->nacked++] = strdup(json_string_value(json_object_get(j, "id")));
                else
                        l->refused++;
                pthread_mutex_unlock(&l->lock);
                json_decref(j);
                free(resp);
                usleep(40 * 1000);
        }
        return NULL;
}

static char *definition(const char *sink)
{
        return str_printf(
            "{\"name\":\"crash\",\"nodes\":["
            "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"%s/c/${input.n}/a\"},\"timeout\":\"10s\","
            "\"retry\":{\"max_attempts\":20,\"initial_delay\":\"100ms\",\"max_delay\":\"1s\"}},"
            "{\"id\":\"nap\",\"type\":\"sleep\",\"duration\":\"1s\",\"after\":[\"a\"]},"
            "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"%s/c/${input.n}/b\"},\"timeout\":\"10s\",\"after\":[\"nap\"],"
            "\"retry\":{\"max_attempts\":20,\"initial_delay\":\"100ms\",\"max_delay\":\"1s\"}}]}",
            sink, sink);
}

static void show_log(const char *path)
{
        char *log = NULL;

        if (file_read_all(path, 1 << 22, &log, NULL) == 0)
                fprintf(stderr, "agently up's log:\n%s\n", log);
        free(log);
}

static void up_restarts_a_killed_postgres(void **state)
{
        char *dir = test_tempdir("uprestart"), *log = str_printf("%s.log", dir);
        char base[64], port_text[16], *token = NULL,
                                      *token_path = str_printf("%s/admin-token", dir);
        char *auth, *url, *resp = NULL, *conninfo;
        int port = test_free_port();
        struct load *l = calloc(1, sizeof(*l));
        struct chaos_sink *sink = chaos_sink_start(MAX_RUNS, NODES, NNODES, 100);
        struct embedded_pg *pg = NULL;
        const char *args[] = {"up", "--data-dir", dir, "--port", port_text, "--workers", "2", NULL};

        (void)state;
        assert_non_null(l);
        snprintf(port_text, sizeof(port_text), "%d", port);
        snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
        up_pid = test_spawn_agently(args, (const char *[]){"AGENTLY_DATABASE_URL=", NULL}, log);
        url = str_printf("%s/readyz", base);
        if (!test_wait_http_ok(url, 90000)) {
                show_log(log);
                fail_msg("agently up never became ready");
        }
        assert_int_equal(file_read_all(token_path, 4096, &token, NULL), 0);
        token[strcspn(token, "\n")] = '\0';
        auth = str_printf("Authorization: Bearer %s", token);
        const char *headers[] = {auth, "Content-Type: application/json", NULL};

        char *def = definition(chaos_sink_url(sink));
        free(url);
        url = str_printf("%s/v1/workflows", base);
        assert_int_equal(test_http("POST", url, headers, def, NULL), 201);

        /* the load runs through the crash */
        l->base = base;
        l->auth = auth;
        pthread_mutex_init(&l->lock, NULL);
        assert_int_equal(pthread_create(&l->thread, NULL, post_runs, l), 0);
        usleep(3000 * 1000);

        assert_int_equal(embedded_pg_open(dir, &pg), 0);
        pid_t postmaster = embedded_pg_postmaster_pid(pg);
        assert_int_gt(postmaster, 0);
        pthread_mutex_lock(&l->lock);
        int acked_before = l->nacked;
        pthread_mutex_unlock(&l->lock);
        assert_int_gt(acked_before, 0);
        assert_int_equal(kill(postmaster, SIGKILL), 0);
        int64_t killed_at = test_now_ms();

        free(url);
        url = str_printf("%s/readyz", base);
        usleep(200 * 1000);
        bool ready = test_wait_http_ok(url, READY_WITHIN_MS);
        int64_t ready_ms = test_now_ms() - killed_at;
        printf("pg restart: killed postmaster %d with %d runs acknowledged; /readyz %s after "
               "%lld ms\n",
               (int)postmaster, acked_before, ready ? "200 again" : "still not 200",
               (long long)ready_ms);
        fflush(stdout);
        if (!ready) {
                show_log(log);
                fail_msg("/readyz did not answer 200 within %d ms of the kill", READY_WITHIN_MS);
        }
        /* the same server keeps starting runs after the restart */
        usleep(2000 * 1000);
        l->stop = 1;
        pthread_join(l->thread, NULL);
        pthread_mutex_lock(&l->lock);
        assert_int_gt(l->nacked, acked_before);
        pthread_mutex_unlock(&l->lock);

        /* every acknowledged run completes (the lease of a run its worker abandoned when the
         * database went away is 30 s in `up`) */
        embedded_pg_free(pg);
        assert_int_equal(embedded_pg_open(dir, &pg), 0);
        conninfo = embedded_pg_conninfo(pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        PGconn *db = test_db_connect(conninfo);
        int64_t deadline = test_now_ms() + 120000;
        long long unfinished = 0;
        while (test_now_ms() < deadline) {
                unfinished = test_db_int(db, "SELECT count(*) FROM workflow_runs WHERE status "
                                             "<> 'completed'");
                if (unfinished == 0)
                        break;
                usleep(250 * 1000);
        }
        printf("pg restart: runs attempted=%d acknowledged=%d refused=%d in the database=%lld "
               "unfinished=%lld, all done %lld ms after the kill\n",
               l->attempts, l->nacked, l->refused,
               test_db_int(db, "SELECT count(*) FROM workflow_runs"), unfinished,
               (long long)(test_now_ms() - killed_at));
        fflush(stdout);
        if (unfinished)
                show_log(log);
        assert_int_equal(unfinished, 0);
        for (int i = 0; i < l->nacked; i++)
                assert_int_equal(test_db_int(db,
                                             "SELECT count(*) FROM workflow_runs WHERE id = '%s' "
                                             "AND status = 'completed'",
                                             l->acked[i]),
                                 1);

        /* one effect per step at the sink, for every run in the database */
        PGresult *res = test_db_must(db, "SELECT (input->>'n')::integer FROM workflow_runs");
        for (int row = 0; row < PQntuples(res); row++) {
                int n = (int)strtol(PQgetvalue(res, row, 0), NULL, 10);
                for (int i = 0; i < NNODES; i++) {
                        struct chaos_sink_cell cell;
                        assert_int_equal(chaos_sink_cell(sink, n, i, &cell), 0);
                        assert_int_equal(cell.distinct_keys, 1);
                }
        }
        PQclear(res);
        PQfinish(db);

        /* the restart is counted where a scrape sees it */
        free(url);
        url = str_printf("%s/metrics", base);
        assert_int_equal(test_http("GET", url, NULL, NULL, &resp), 200);
        if (!strstr(resp, "\nagently_postgres_restarts_total 1\n"))
                fail_msg("/metrics does not count the restart:\n%s", resp);

        int status = test_stop_process(up_pid, SIGTERM, 90000);
        up_pid = 0;
        assert_exit_code(status, 0);
        assert_false(embedded_pg_running(pg));

        embedded_pg_free(pg);
        chaos_sink_stop(sink);
        for (int i = 0; i < l->nacked; i++)
                free(l->acked[i]);
        pthread_mutex_destroy(&l->lock);
        free(l);
        test_rm_rf(dir);
        unlink(log);
        free(conninfo);
        free(def);
        free(resp);
        free(url);
        free(auth);
        free(token);
        free(token_path);
        free(log);
        free(dir);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(up_restarts_a_killed_postgres),
        };

        curl_global_init(CURL_GLOBAL_ALL); /* before the load thread's first request */
        atexit(stop_up_at_exit);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
