/*
 * Durability of the database itself (issue 8): Postgres with fsync, synchronous_commit and
 * full_page_writes ON — the settings of `agently up`'s embedded cluster, not the harness's —
 * is SIGKILLed, postmaster and backends at once, under load, and started again (crash
 * recovery), twice. The load: a client thread starting runs through the API, another
 * sending each run its signal (both retry with an Idempotency-Key until acknowledged, as a
 * careful client does), and two workers executing runs of `a` (http) → `go` (wait for the
 * signal) → `b` (http) against an idempotent sink in this process.
 *
 * Just before each kill the test reads every completed checkpoint (node_runs) from the
 * database. Afterwards it asserts what a user would notice: every acknowledged run and
 * signal is there, every checkpoint seen before a kill is still there and still completed,
 * every run completes, and each http step reached the sink under exactly one idempotency
 * key, <run id>:<node id>.
 *
 * AGENTLY_TEST_PG_FAST=1 runs the same test on a cluster with the harness's settings (fsync,
 * synchronous_commit, full_page_writes off), where the kills lose acknowledged writes: the
 * proof that the checks can fail.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "bootstrap.h"
#include "chaos_sink.h"
#include "cleanup.h"
#include "db.h"
#include "embedded_pg.h"
#include "migrate.h"
#include "strutil.h"
#include "testlib.h"
#include "worker_sink.h"

#define MAX_RUNS 1000
#define NNODES   2
#define NWORKERS 2
#define CRASHES  2
#define LOAD_MS  2500 /* of load before each kill */
#define DOWN_MS  1000 /* Postgres stays down this long */
#define SETTLE_S 60

static const char *const NODES[NNODES] = {"a", "b"};

struct acked {
        char *run_id;
        char *signal_id; /* NULL until the signal was acknowledged */
};

struct load {
        char base[64];
        char auth[256];
        pthread_t poster, signaller;
        volatile int stop;        /* no new runs */
        volatile int poster_done; /* set after the poster ended: nothing more to signal */
        pthread_mutex_t lock;
        struct acked runs[MAX_RUNS]; /* by n */
        int nacked, post_retries, signal_retries;
};

/* checkpoints seen committed just before a kill */
struct checkpoint {
        char *run_id, *node_id;
        int attempt;
};

static struct embedded_pg *current_pg;
static pid_t api_pid;

static void stop_everything_at_exit(void)
{
        if (api_pid > 0)
                test_stop_process(api_pid, SIGKILL, 5000);
        if (current_pg)
                embedded_pg_stop(current_pg);
}

/* POSTs until the API acknowledges (200/201), with the same Idempotency-Key each time, and
 * returns the answer, which has an "id" (caller decrefs); NULL on 404 (the run is gone: the
 * checks report it). Any other client error, or no answer for a minute, ends the test: from
 * a load thread, through exit() so the atexit clean-up still runs. */
static json_t *post_until_acknowledged(struct load *l, const char *url, const char *key,
                                       const char *body, int *retries)
{
        char key_header[128];
        const char *headers[] = {l->auth, key_header, "Content-Type: application/json", NULL};
        int64_t give_up = test_now_ms() + 60000;

        snprintf(key_header, sizeof(key_header), "Idempotency-Key: %s", key);
        for (;;) {
                char *resp = NULL;
                long status = test_http("POST", url, headers, body, &resp);
                json_t *j =
                    (status == 200 || status == 201) && resp ? json_loads(resp, 0, NULL) : NULL;
                if (j && json_string_value(json_object_get(j, "id"))) {
                        free(resp);
                        return j;
                }
                json_decref(j);
                if (status == 404) {
                        free(resp);
                        return NULL;
                }
                if ((status >= 200 && status < 300) || (status >= 400 && status < 500) ||
                    test_now_ms() > give_up) {
                        fprintf(stderr, "pg crash: POST %s answered %ld: %s\n", url, status,
                                resp ? resp : "");
                        exit(1);
                }
                free(resp);
                (*retries)++;
                usleep(50 * 1000);
        }
}

static void *post_runs(void *arg)
{
        struct load *l = arg;
        _cleanup_free_ char *url = str_printf("%s/v1/runs", l->base);

        for (int n = 0; !l->stop && n < MAX_RUNS; n++) {
                char key[32], body[128];
                int retries = 0;

                snprintf(key, sizeof(key), "run-%d", n);
                snprintf(body, sizeof(body), "{\"workflow\":\"crash\",\"input\":{\"n\":%d}}", n);
                json_t *j = post_until_acknowledged(l, url, key, body, &retries);
                if (!j) {
                        fprintf(stderr, "pg crash: the workflow is gone\n");
                        exit(1);
                }
                pthread_mutex_lock(&l->lock);
                l->runs[n].run_id = strdup(json_string_value(json_object_get(j, "id")));
                l->nacked = n + 1;
                l->post_retries += retries;
                pthread_mutex_unlock(&l->lock);
                json_decref(j);
                usleep(25 * 1000);
        }
        return NULL;
}

/* Signals each acknowledged run in order, trailing the poster. */
static void *signal_runs(void *arg)
{
        struct load *l = arg;

        for (int n = 0;; n++) {
                char key[32], body[64], *url;
                int retries = 0, nacked;
                const char *run_id;

                for (;;) {
                        pthread_mutex_lock(&l->lock);
                        nacked = l->nacked;
                        run_id = n < nacked ? l->runs[n].run_id : NULL;
                        pthread_mutex_unlock(&l->lock);
                        if (run_id || (l->poster_done && n >= nacked))
                                break;
                        usleep(10 * 1000);
                }
                if (!run_id)
                        return NULL;
                snprintf(key, sizeof(key), "signal-%d", n);
                snprintf(body, sizeof(body), "{\"n\":%d}", n);
                url = str_printf("%s/v1/runs/%s/signals/go", l->base, run_id);
                json_t *j = post_until_acknowledged(l, url, key, body, &retries);
                pthread_mutex_lock(&l->lock);
                if (j)
                        l->runs[n].signal_id = strdup(json_string_value(json_object_get(j, "id")));
                l->signal_retries += retries;
                pthread_mutex_unlock(&l->lock);
                json_decref(j);
                free(url);
        }
}

static char *definition(const char *sink)
{
        return str_printf(
            "{\"name\":\"crash\",\"nodes\":["
            "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"%s/c/${input.n}/a\"},\"timeout\":\"10s\","
            "\"retry\":{\"max_attempts\":20,\"initial_delay\":\"100ms\",\"max_delay\":\"1s\"}},"
            "{\"id\":\"go\",\"type\":\"wait_event\",\"event\":\"go\",\"after\":[\"a\"]},"
            "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"method\":\"POST\","
            "\"url\":\"%s/c/${input.n}/b\"},\"timeout\":\"10s\","
            "\"after\":[\"go\"],"
            "\"retry\":{\"max_attempts\":20,\"initial_delay\":\"100ms\",\"max_delay\":\"1s\"}}]}",
            sink, sink);
}

/* Appends every completed checkpoint the database holds now to *cps. */
static void snapshot_checkpoints(PGconn *db, struct checkpoint **cps, int *ncps)
{
        PGresult *res = test_db_must(db, "SELECT workflow_run_id, node_id, attempt FROM node_runs "
                                         "WHERE status = 'completed'");

        *cps = realloc(*cps, sizeof(**cps) * (size_t)(*ncps + PQntuples(res)));
        assert_non_null(*cps);
        for (int i = 0; i < PQntuples(res); i++) {
                struct checkpoint *cp = &(*cps)[(*ncps)++];
                cp->run_id = strdup(PQgetvalue(res, i, 0));
                cp->node_id = strdup(PQgetvalue(res, i, 1));
                cp->attempt = (int)strtol(PQgetvalue(res, i, 2), NULL, 10);
        }
        PQclear(res);
}

/* SIGKILL the postmaster and every backend (its process group) and reap them. */
static void kill_postgres(struct embedded_pg *pg)
{
        pid_t pm = embedded_pg_postmaster_pid(pg);

        assert_int_gt(pm, 0);
        /* pg_ctl made the postmaster a session (and group) leader; never signal ours */
        assert_int_equal(getpgid(pm), pm);
        assert_int_not_equal(pm, getpgrp());
        assert_int_equal(kill(-pm, SIGKILL), 0);
        /* we are the subreaper: the postmaster and its orphaned backends are ours to reap */
        while (waitpid(-pm, NULL, 0) > 0 || errno == EINTR)
                ;
        assert_false(embedded_pg_running(pg));
}

static void test_pg_crash(void **state)
{
        bool fast = !str_is_empty(getenv("AGENTLY_TEST_PG_FAST"));
        char *dir = test_tempdir("pgcrash"), *conninfo, *user, *def, *workflow;
        char token[128], log[600];
        struct load *l = calloc(1, sizeof(*l));
        struct checkpoint *cps = NULL;
        int ncps = 0, applied = 0;
        PGconn *db;
        struct chaos_sink *sink = chaos_sink_start(MAX_RUNS, NODES, NNODES, 50);
        int64_t t0 = test_now_ms();

        (void)state;
        assert_non_null(l);
        printf("pg crash: fsync, synchronous_commit, full_page_writes %s\n", fast ? "OFF" : "on");

        /* a durable cluster of the test's own (the harness's is not) */
        assert_int_equal(embedded_pg_open(dir, &current_pg), 0);
        assert_int_equal(embedded_pg_init(current_pg, fast ? EMBEDDED_PG_FAST : 0), 0);
        if (embedded_pg_start(current_pg) < 0)
                fail_msg("could not start Postgres: %s", db_last_error());
        conninfo = embedded_pg_conninfo(current_pg, EMBEDDED_PG_SUPERUSER, EMBEDDED_PG_DATABASE);
        db = test_db_connect(conninfo);
        assert_int_equal(db_migrate(db, &applied), 0);
        assert_int_equal(bootstrap_embedded_roles(db), 0);
        assert_int_equal(
            test_db_int(db, "SELECT count(*) FROM pg_settings WHERE name IN ('fsync', "
                            "'synchronous_commit', 'full_page_writes') AND setting = 'on'"),
            fast ? 0 : 3);
        user = worker_test_user(db, "crash");
        worker_test_token(db, user, token);
        def = definition(chaos_sink_url(sink));
        workflow = worker_test_workflow(db, user, "crash", 1, def);

        api_pid = worker_test_spawn_api(conninfo, dir, l->base, sizeof(l->base));
        for (int i = 0; i < NWORKERS; i++) {
                char id[16];
                snprintf(id, sizeof(id), "w%d", i);
                snprintf(log, sizeof(log), "%s/%s.log", dir, id);
                worker_test_spawn(conninfo, id, "2s", "500ms", NULL, log);
        }
        snprintf(l->auth, sizeof(l->auth), "Authorization: Bearer %s", token);
        pthread_mutex_init(&l->lock, NULL);
        assert_int_equal(pthread_create(&l->poster, NULL, post_runs, l), 0);
        assert_int_equal(pthread_create(&l->signaller, NULL, signal_runs, l), 0);

        for (int crash = 0; crash < CRASHES; crash++) {
                usleep(LOAD_MS * 1000);
                snapshot_checkpoints(db, &cps, &ncps);
                kill_postgres(current_pg);
                int64_t killed = test_now_ms();
                usleep(DOWN_MS * 1000);
                if (embedded_pg_start(current_pg) < 0)
                        fail_msg("could not restart Postgres: %s", db_last_error());
                PQreset(db);
                assert_int_equal(PQstatus(db), CONNECTION_OK);
                printf("pg crash %d: %d runs acknowledged, %d checkpoints seen before the kill, "
                       "Postgres back after %lld ms\n",
                       crash + 1, l->nacked, ncps, (long long)(test_now_ms() - killed));
                fflush(stdout);
        }
        usleep(LOAD_MS * 1000);
        l->stop = 1;
        pthread_join(l->poster, NULL);
        /* only now: a run whose POST was in flight at the stop is acknowledged after it */
        l->poster_done = 1;
        pthread_join(l->signaller, NULL);

        /* every run completes */
        int64_t deadline = test_now_ms() + SETTLE_S * 1000;
        long long unfinished = 0;
        while (test_now_ms() < deadline) {
                unfinished = test_db_int(db, "SELECT count(*) FROM workflow_runs WHERE status "
                                             "<> 'completed'");
                if (unfinished == 0)
                        break;
                usleep(200 * 1000);
        }

        /* ---- checks ------------------------------------------------------------------- */
        long long lost_runs = 0, lost_signals = 0, lost_checkpoints = 0, bad_keys = 0;
        for (int n = 0; n < l->nacked; n++) {
                if (test_db_int(db, "SELECT count(*) FROM workflow_runs WHERE id = '%s'",
                                l->runs[n].run_id) != 1 &&
                    lost_runs++ < 5)
                        fprintf(stderr, "pg crash: acknowledged run %s (n=%d) is gone\n",
                                l->runs[n].run_id, n);
                if (!l->runs[n].signal_id)
                        continue; /* the run was gone when it was signalled */
                if (test_db_int(db, "SELECT count(*) FROM signals WHERE id = '%s'",
                                l->runs[n].signal_id) != 1 &&
                    lost_signals++ < 5)
                        fprintf(stderr, "pg crash: acknowledged signal %s (n=%d) is gone\n",
                                l->runs[n].signal_id, n);
                for (int i = 0; i < NNODES; i++) {
                        struct chaos_sink_cell cell;
                        char want[128];
                        assert_int_equal(chaos_sink_cell(sink, n, i, &cell), 0);
                        snprintf(want, sizeof(want), "%s:%s", l->runs[n].run_id, NODES[i]);
                        if ((cell.distinct_keys != 1 || strcmp(cell.keys[0], want) != 0) &&
                            bad_keys++ < 5)
                                fprintf(stderr,
                                        "pg crash: run %d node %s: %d requests under %d "
                                        "key(s) (%s), want one key %s\n",
                                        n, NODES[i], cell.requests, cell.distinct_keys,
                                        cell.keys[0], want);
                }
        }
        for (int i = 0; i < ncps; i++)
                if (test_db_int(db,
                                "SELECT count(*) FROM node_runs WHERE workflow_run_id = '%s' "
                                "AND node_id = '%s' AND attempt = %d AND status = 'completed'",
                                cps[i].run_id, cps[i].node_id, cps[i].attempt) != 1 &&
                    lost_checkpoints++ < 5)
                        fprintf(stderr, "pg crash: checkpoint %s/%s#%d is gone\n", cps[i].run_id,
                                cps[i].node_id, cps[i].attempt);
        struct chaos_sink_totals t;
        chaos_sink_totals(sink, &t);
        printf("pg crash: %d runs acknowledged (%lld in the database), %d POST retries, %d "
               "signal retries, %d checkpoints checked, sink effects=%lld re-executions=%lld, "
               "unfinished=%lld, %.1f s in all\n",
               l->nacked, test_db_int(db, "SELECT count(*) FROM workflow_runs"), l->post_retries,
               l->signal_retries, ncps, (long long)t.effects, (long long)t.reexecs, unfinished,
               (double)(test_now_ms() - t0) / 1000);
        printf("pg crash: lost runs=%lld signals=%lld checkpoints=%lld; wrong keys=%lld\n",
               lost_runs, lost_signals, lost_checkpoints, bad_keys);
        fflush(stdout);
        assert_int_equal(lost_runs, 0);
        assert_int_equal(lost_signals, 0);
        assert_int_equal(lost_checkpoints, 0);
        assert_int_equal(unfinished, 0);
        assert_int_equal(bad_keys, 0);
        assert_int_equal(test_db_int(db, "SELECT count(*) FROM workflow_runs"), l->nacked);
        assert_int_equal(t.strays, 0);
        /* the kills really landed under load */
        assert_int_gt(ncps, 0);
        assert_int_gt(l->post_retries, 0);

        PQfinish(db);
        test_stop_process(api_pid, SIGTERM, 10000);
        api_pid = 0;
        assert_int_equal(embedded_pg_stop(current_pg), 0);
        embedded_pg_free(current_pg);
        current_pg = NULL;
        chaos_sink_stop(sink);
        test_rm_rf(dir);
        for (int i = 0; i < ncps; i++) {
                free(cps[i].run_id);
                free(cps[i].node_id);
        }
        for (int n = 0; n < l->nacked; n++) {
                free(l->runs[n].run_id);
                free(l->runs[n].signal_id);
        }
        pthread_mutex_destroy(&l->lock);
        free(cps);
        free(l);
        free(workflow);
        free(def);
        free(user);
        free(conninfo);
        free(dir);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_pg_crash),
        };

        /* the postmaster pg_ctl leaves behind becomes our child, so we can reap it */
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        curl_global_init(CURL_GLOBAL_ALL);
        atexit(stop_everything_at_exit);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
