/*
 * /metrics tells an operator what happened, with real processes: a node that failed once
 * and was retried, a worker SIGKILLed with a run in flight (its lease expires and another
 * worker takes the run over: a lease loss), a run canceled by the API while it waited, a
 * run waiting for a signal. The totals come from counters kept as events are written, the
 * gauges from live runs only, so a scrape never scans history.
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth_token.h"
#include "worker_sink.h"

static const char WF[] =
    "{\"name\":\"m\",\"nodes\":["
    "{\"id\":\"a\",\"type\":\"http\",\"request\":{\"url\":\"SINK/a/${ run.id }?fail=1\"},"
    "\"retry\":{\"max_attempts\":2,\"initial_delay\":\"100ms\",\"jitter\":false}},"
    "{\"id\":\"b\",\"type\":\"http\",\"after\":[\"a\"],"
    "\"request\":{\"url\":\"SINK/b/${ run.id }?delay_ms=4000\"},\"timeout\":\"30s\"}]}";

static const char WF_WAIT[] = "{\"name\":\"w\",\"nodes\":[{\"id\":\"gate\",\"type\":"
                              "\"wait_event\",\"event\":\"go\"}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api;
        char base[64];
        char token[AUTH_TOKEN_LEN + 1];
} S;

/* The value of one sample line ("name{labels} value") of a scrape; fails if absent. */
static double sample(const char *body, const char *series)
{
        size_t n = strlen(series);

        for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
                if (strncmp(p, series, n) == 0 && p[n] == ' ')
                        return strtod(p + n + 1, NULL);
        fail_msg("no sample %s in:\n%s", series, body);
        return -1;
}

static char *scrape(void)
{
        char url[128], *body = NULL;

        snprintf(url, sizeof(url), "%s/metrics", S.base);
        assert_int_equal(test_http("GET", url, NULL, NULL, &body), 200);
        assert_non_null(body);
        return body;
}

static void metrics_count_retries_lease_losses_and_finishes(void **state)
{
        char log[512];

        (void)state;
        S.conninfo = test_db_create("metrics");
        S.db = test_db_connect(S.conninfo);
        S.dir = test_tempdir("metrics");
        S.sink = worker_sink_start();
        char *user = worker_test_user(S.db, "ana");
        char *def = worker_sink_expand(S.sink, WF);
        char *wf = worker_test_workflow(S.db, user, "m", 1, def);
        char *wf_wait = worker_test_workflow(S.db, user, "w", 1, WF_WAIT);
        worker_test_token(S.db, user, S.token);
        free(def);
        free(user);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));

        /* before anything ran: every series is there, at zero */
        char *body = scrape();
        assert_double_equal(sample(body, "agently_runs_finished_total{status=\"completed\"}"), 0);
        assert_double_equal(sample(body, "agently_lease_losses_total"), 0);
        free(body);

        char *run = worker_test_run(S.db, wf, NULL);
        char *waiting = worker_test_run(S.db, wf_wait, NULL);
        snprintf(log, sizeof(log), "%s/worker-1.log", S.dir);
        pid_t w1 = worker_test_spawn(S.conninfo, "metrics-w1", "2s", "500ms", NULL, log);

        /* a failed once and was retried; b is in flight when the worker dies */
        char prefix[128];
        snprintf(prefix, sizeof(prefix), "/b/%s", run);
        for (int64_t t0 = test_now_ms(); worker_sink_count(S.sink, prefix) < 1;) {
                assert_int_lt(test_now_ms() - t0, 20000);
                usleep(20 * 1000);
        }
        assert_true(worker_test_wait_status(S.db, waiting, "waiting", 10000));
        test_stop_process(w1, SIGKILL, 5000);

        body = scrape();
        assert_double_equal(sample(body, "agently_runs{status=\"waiting\"}"), 1);
        assert_double_equal(sample(body, "agently_runs{status=\"running\"}"), 1);
        free(body);

        /* the API cancels the waiting run itself (no worker holds it) */
        char cancel[256], auth[128], *out = NULL;
        const char *headers[] = {auth, NULL};
        snprintf(cancel, sizeof(cancel), "%s/v1/runs/%s/cancel", S.base, waiting);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        assert_int_equal(test_http("POST", cancel, headers, "{}", &out), 200);
        free(out);
        assert_db_equal("canceled", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'",
                        waiting);

        /* another worker takes the run over once the lease expires, and finishes it */
        snprintf(log, sizeof(log), "%s/worker-2.log", S.dir);
        pid_t w2 = worker_test_spawn(S.conninfo, "metrics-w2", "2s", "500ms", NULL, log);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        test_stop_process(w2, SIGTERM, 15000);

        body = scrape();
        assert_double_equal(sample(body, "agently_runs_finished_total{status=\"completed\"}"), 1);
        assert_double_equal(sample(body, "agently_runs_finished_total{status=\"canceled\"}"), 1);
        assert_double_equal(sample(body, "agently_runs_finished_total{status=\"failed\"}"), 0);
        assert_double_equal(sample(body, "agently_node_retries_total"), 1);
        assert_double_equal(sample(body, "agently_lease_losses_total"), 1);
        /* claims: the two first starts, the wake-up after a's retry delay, the rescue */
        assert_int_ge((long long)sample(body, "agently_run_claims_total"), 4);
        assert_double_equal(sample(body, "agently_runs{status=\"waiting\"}"), 0);
        assert_double_equal(sample(body, "agently_runs{status=\"running\"}"), 0);
        assert_double_equal(sample(body, "agently_queue_depth"), 0);
        /* the counters agree with the event log they summarise */
        long long events = test_db_int(S.db, "SELECT count(*) FROM logs WHERE kind IN "
                                             "('run.started', 'run.resumed', 'run.recovered')");
        assert_double_equal(sample(body, "agently_run_claims_total"), (double)events);
        free(body);

        test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(run);
        free(waiting);
        free(wf);
        free(wf_wait);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(metrics_count_retries_lease_losses_and_finishes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
