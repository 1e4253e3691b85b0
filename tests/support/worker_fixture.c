/* The worker tests' fixture; see worker_fixture.h. */
#include "worker_fixture.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

struct worker_fixture *worker_fixture_new(const char *name)
{
        struct worker_fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        f->conninfo = test_db_create(name);
        f->db = test_db_connect(f->conninfo);
        f->user = worker_test_user(f->db, "alice");
        f->sink = worker_sink_start();
        f->dir = test_tempdir(name);
        return f;
}

void worker_fixture_free(struct worker_fixture *f)
{
        for (int i = 0; i < f->nworkers; i++)
                if (f->workers[i] > 0 && waitpid(f->workers[i], NULL, WNOHANG) == 0)
                        test_stop_process(f->workers[i], SIGTERM, 15000);
        worker_sink_stop(f->sink);
        PQfinish(f->db);
        test_rm_rf(f->dir);
        free(f->dir);
        free(f->user);
        free(f->conninfo);
        free(f);
}

pid_t worker_fixture_spawn(struct worker_fixture *f, const char *id, const char *lease,
                           const char *heartbeat, const char *const *extra)
{
        char log[600];
        pid_t pid;

        assert_int_lt(f->nworkers, WORKER_FIXTURE_MAX_WORKERS);
        snprintf(log, sizeof(log), "%s/%s.log", f->dir, id);
        pid = worker_test_spawn(f->conninfo, id, lease, heartbeat, extra, log);
        f->workers[f->nworkers++] = pid;
        return pid;
}

void worker_fixture_dump_logs(struct worker_fixture *f)
{
        char cmd[700];

        snprintf(cmd, sizeof(cmd), "tail -n 40 %s/*.log >&2", f->dir);
        if (system(cmd) != 0)
                fprintf(stderr, "(no worker log)\n");
}

char *worker_fixture_workflow(struct worker_fixture *f, const char *name, const char *definition)
{
        char *def = worker_sink_expand(f->sink, definition);
        char *wf = worker_test_workflow(f->db, f->user, name, 1, def);

        free(def);
        return wf;
}

char *worker_fixture_start_run(struct worker_fixture *f, const char *definition)
{
        char *wf = worker_fixture_workflow(f, "w", definition);
        char *run = worker_test_run(f->db, wf, NULL);

        free(wf);
        return run;
}

void worker_fixture_wait_status(struct worker_fixture *f, const char *run, const char *statuses,
                                int ms)
{
        if (!worker_test_wait_status(f->db, run, statuses, ms)) {
                worker_fixture_dump_logs(f);
                fail_msg("run %s did not reach %s within %d ms", run, statuses, ms);
        }
}

void worker_fixture_wait_sink(struct worker_fixture *f, const char *prefix, int n, int ms)
{
        int64_t deadline = test_now_ms() + ms;

        while (worker_sink_count(f->sink, prefix) < n) {
                if (test_now_ms() > deadline) {
                        worker_fixture_dump_logs(f);
                        fail_msg("sink: %d requests to %s within %d ms, wanted %d",
                                 worker_sink_count(f->sink, prefix), prefix, ms, n);
                }
                usleep(20 * 1000);
        }
}

long long worker_fixture_count_events(struct worker_fixture *f, const char *run, const char *kind)
{
        return test_db_int(f->db,
                           "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = '%s'",
                           run, kind);
}
