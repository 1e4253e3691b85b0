/*
 * Durable timers under worker restarts: many runs sleep (durations spread over 2s..5.5s,
 * eight workflows of one sleep node `s` then one http node `p` to an idempotent sink) while
 * two real workers are SIGKILLed and restarted ten times. A sleeping run holds no lease and
 * no worker, so the timers must survive every restart and fire exactly once.
 *
 * Asserts: every run completed (0 lost); each sleep recorded its wake time and completed
 * once (one node_runs row, one node.completed event); no timer fired early: the wake time
 * is the sleep's start plus its duration to the millisecond, and the sleep completed and the
 * next node started at or after it (database clock); the post-sleep node ran exactly once
 * (one completed attempt, one node.completed event) and its effect reached the sink under
 * its one key. Prints the lateness (sleep completion −
 * wake time, database timestamps) p50/p99/max and any re-executions of the post-sleep
 * effect (an at-least-once node re-sent after a kill mid-request).
 *
 * Size: 1,000 runs and 10 restarts by default; AGENTLY_TIMERS_RUNS=N changes the run count.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chaos_sink.h"
#include "testlib.h"
#include "worker_sink.h"

#define NWORKERS 2
#define NWF      8
#define RESTARTS 10
#define STEP_MS  500 /* sleep of workflow k: 2000 + k * STEP_MS */

static const char *const NODES[] = {"p"};

/* Workers alive, so a failed assertion (cmocka longjmps out) leaves none behind. */
static pid_t alive[NWORKERS];

static void kill_workers_at_exit(void)
{
        for (int i = 0; i < NWORKERS; i++)
                if (alive[i] > 0)
                        kill(alive[i], SIGKILL);
}

static pid_t spawn(const char *conninfo, const char *dir, int slot, int gen)
{
        char id[32], log[600];
        const char *extra[] = {"--concurrency", "500", NULL};

        snprintf(id, sizeof(id), "t%d.%d", slot, gen);
        snprintf(log, sizeof(log), "%s/%s.log", dir, id);
        return worker_test_spawn(conninfo, id, "2s", "500ms", extra, log);
}

static long long check(PGconn *db, const char *what, const char *sql)
{
        long long n = test_db_int(db, "%s", sql);
        printf("check %-62s %s (%lld)\n", what, n ? "FAILED" : "ok", n);
        return n;
}

static void test_timers_survive_restarts(void **state)
{
        const char *env_runs = getenv("AGENTLY_TIMERS_RUNS");
        int runs = env_runs && *env_runs ? (int)strtol(env_runs, NULL, 10) : 1000;
        char *conninfo = test_db_create("timers");
        char *worker_conninfo = test_db_conninfo_as(conninfo, "agently_worker");
        PGconn *db = test_db_connect(conninfo);
        char *dir = test_tempdir("timers");
        struct chaos_sink *sink = chaos_sink_start(runs, NODES, 1, 0);
        char *user = worker_test_user(db, "timers");
        char *wf[NWF];
        pid_t pids[NWORKERS];
        int gen[NWORKERS] = {0}, restarts = 0;
        long long completed = 0, bad = 0;
        int64_t t0;

        (void)state;
        assert_int_gt(runs, 0);
        for (int k = 0; k < NWF; k++) {
                char def[1024], name[16];
                snprintf(name, sizeof(name), "t%d", k);
                snprintf(def, sizeof(def),
                         "{\"name\":\"%s\",\"nodes\":[{\"id\":\"s\",\"type\":\"sleep\","
                         "\"duration\":\"%dms\"},{\"id\":\"p\",\"type\":\"http\",\"after\":[\"s\"],"
                         "\"request\":{\"method\":\"POST\",\"url\":\"%s/c/${input.n}/p\","
                         "\"body\":{}},\"retry\":{\"max_attempts\":10,\"initial_delay\":"
                         "\"100ms\"}}]}",
                         name, 2000 + k * STEP_MS, chaos_sink_url(sink));
                wf[k] = worker_test_workflow(db, user, name, 1, def);
        }
        for (int i = 0; i < NWORKERS; i++)
                alive[i] = pids[i] = spawn(worker_conninfo, dir, i, gen[i]++);

        /* all runs at once, round-robin over the eight durations */
        char sql[2048];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version, input) SELECT w.user_id, w.id, w.name, w.version, "
                 "jsonb_build_object('n', g) FROM generate_series(0, %d) g JOIN workflows w ON "
                 "w.name = 't' || (g %% %d)",
                 runs - 1, NWF);
        PQclear(test_db_must(db, sql));
        t0 = test_now_ms();

        /* ten restarts while the runs sleep: SIGKILL one worker, start a new one at once */
        for (restarts = 0; restarts < RESTARTS; restarts++) {
                int i = restarts % NWORKERS, st;
                usleep(700 * 1000);
                assert_int_equal(kill(pids[i], SIGKILL), 0);
                assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
                alive[i] = pids[i] = spawn(worker_conninfo, dir, i, gen[i]++);
        }
        long long sleeping_at_last_restart =
            test_db_int(db, "SELECT count(*) FROM workflow_runs WHERE status = 'waiting'");
        int64_t restart_window = test_now_ms() - t0;

        /* bounded: the longest sleep is 5.5s; everything must be done well within 120s */
        for (;;) {
                completed = test_db_int(db, "SELECT count(*) FROM workflow_runs WHERE status = "
                                            "'completed'");
                if (completed == runs || test_now_ms() - t0 > 120000)
                        break;
                usleep(200 * 1000);
        }
        int64_t elapsed = test_now_ms() - t0;
        for (int i = 0; i < NWORKERS; i++) {
                char id[32];
                /* the last one restarted may still be starting: let it reach its loop, so
                 * SIGTERM drains it rather than killing it */
                snprintf(id, sizeof(id), "t%d.%d", i, gen[i] - 1);
                worker_test_wait_registered(db, id, 20000);
                int st = test_stop_process(pids[i], SIGTERM, 20000);
                alive[i] = 0;
                assert_exit_code(st, 0);
        }

        struct chaos_sink_totals t;
        chaos_sink_totals(sink, &t);
        PGresult *lat = test_db_must(
            db, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l), min(l), count(*) "
                "FROM (SELECT extract(epoch FROM finished_at) * 1000 - "
                "(input->>'wake_at_ms')::double precision AS l FROM node_runs WHERE node_id = "
                "'s' AND status = 'completed') x");
        printf("timers: runs=%d completed=%lld restarts=%d (within the first %.1fs; %lld runs "
               "sleeping at the last one) elapsed_s=%.1f\n",
               runs, completed, restarts, (double)restart_window / 1000, sleeping_at_last_restart,
               (double)elapsed / 1000);
        printf("timers: lateness_ms (sleep completed - wake time, database clock) p50=%.1f "
               "p99=%.1f max=%.1f min=%.1f over %s timers\n",
               strtod(PQgetvalue(lat, 0, 0), NULL), strtod(PQgetvalue(lat, 0, 1), NULL),
               strtod(PQgetvalue(lat, 0, 2), NULL), strtod(PQgetvalue(lat, 0, 3), NULL),
               PQgetvalue(lat, 0, 4));
        /* how the wake time and the completion stand to the sleep's own start and duration
         * (database clock): wake - (start + duration), completion - (start + duration) */
        PGresult *due = test_db_must(
            db,
            "SELECT min(w), max(w), min(f), max(f) FROM (SELECT (n.input->>'wake_at_ms')::double "
            "precision - extract(epoch FROM n.started_at) * 1000 - d AS w, extract(epoch FROM "
            "n.finished_at - n.started_at) * 1000 - d AS f FROM node_runs n JOIN "
            "workflow_runs r ON r.id = n.workflow_run_id, LATERAL (SELECT 2000 + 500 * "
            "((r.input->>'n')::integer % 8) AS d) dd WHERE n.node_id = 's' AND n.status = "
            "'completed') x");
        printf("timers: wake - (start + duration) min=%.3f max=%.3f ms; completion - (start + "
               "duration) min=%.3f max=%.3f ms\n",
               strtod(PQgetvalue(due, 0, 0), NULL), strtod(PQgetvalue(due, 0, 1), NULL),
               strtod(PQgetvalue(due, 0, 2), NULL), strtod(PQgetvalue(due, 0, 3), NULL));
        PQclear(due);
        printf("timers: post-sleep effects=%lld requests=%lld re-executions=%lld "
               "(at-least-once re-sends after a kill mid-request) strays=%lld\n",
               (long long)t.effects, (long long)t.requests, (long long)t.reexecs,
               (long long)t.strays);
        PQclear(lat);

        bad += check(db, "every run completed (0 lost)",
                     "SELECT count(*) FROM workflow_runs WHERE status <> 'completed'");
        bad += check(db, "each sleep waited with its wake time recorded",
                     "SELECT count(*) FROM workflow_runs r WHERE NOT EXISTS (SELECT 1 FROM "
                     "node_runs n WHERE n.workflow_run_id = r.id AND n.node_id = 's' AND "
                     "n.status = 'completed' AND n.input ? 'wake_at_ms')");
        bad += check(db, "each sleep has one attempt and one node.completed event",
                     "SELECT count(*) FROM workflow_runs r WHERE (SELECT count(*) FROM "
                     "node_runs n WHERE n.workflow_run_id = r.id AND n.node_id = 's') <> 1 OR "
                     "(SELECT count(*) FROM logs l WHERE l.workflow_run_id = r.id AND "
                     "l.node_id = 's' AND l.kind = 'node.completed') <> 1");
        /* the due time is the sleep's start plus its duration, both on the database clock:
         * the planner's clock is the snapshot's now(), the start is written in the same turn
         * (measured: wake - (start + duration) within +-0.5 ms, the rounding to whole ms) */
        bad += check(db, "the wake time is the sleep's start + duration (+-1 ms)",
                     "SELECT count(*) FROM node_runs n JOIN workflow_runs r ON r.id = "
                     "n.workflow_run_id WHERE n.node_id = 's' AND abs((n.input->>'wake_at_ms')"
                     "::bigint - extract(epoch FROM n.started_at) * 1000 - (2000 + 500 * "
                     "((r.input->>'n')::integer % 8))) > 1");
        bad += check(db, "no timer fired before its due time (start + duration, -1 ms)",
                     "SELECT count(*) FROM node_runs n JOIN workflow_runs r ON r.id = "
                     "n.workflow_run_id WHERE n.node_id = 's' AND extract(epoch FROM "
                     "n.finished_at - n.started_at) * 1000 < (2000 + 500 * "
                     "((r.input->>'n')::integer % 8)) - 1");
        bad += check(db, "no timer fired before its wake time",
                     "SELECT count(*) FROM node_runs WHERE node_id = 's' AND "
                     "extract(epoch FROM finished_at) * 1000 < (input->>'wake_at_ms')::bigint");
        bad += check(db, "the post-sleep node started at/after the wake time",
                     "SELECT count(*) FROM node_runs p JOIN node_runs s ON s.workflow_run_id = "
                     "p.workflow_run_id AND s.node_id = 's' WHERE p.node_id = 'p' AND "
                     "extract(epoch FROM p.started_at) * 1000 < (s.input->>'wake_at_ms')::bigint");
        bad += check(db, "the post-sleep node ran once (one attempt, one completion)",
                     "SELECT count(*) FROM workflow_runs r WHERE (SELECT count(*) FROM "
                     "node_runs n WHERE n.workflow_run_id = r.id AND n.node_id = 'p' AND "
                     "n.status = 'completed') <> 1 OR (SELECT count(*) FROM node_runs n WHERE "
                     "n.workflow_run_id = r.id AND n.node_id = 'p') <> 1 OR (SELECT count(*) "
                     "FROM logs l WHERE l.workflow_run_id = r.id AND l.node_id = 'p' AND "
                     "l.kind = 'node.completed') <> 1");
        bad += check(db, "each run's log seqs are gap-free 1..event_seq",
                     "SELECT count(*) FROM workflow_runs r, LATERAL (SELECT count(*) n, "
                     "max(seq) hi FROM logs l WHERE l.workflow_run_id = r.id) s WHERE "
                     "s.n <> r.event_seq OR s.hi <> r.event_seq");

        /* the sink: every post-sleep effect arrived, under its run's one key */
        char **ids = calloc((size_t)runs, sizeof(*ids));
        PGresult *res = test_db_must(db, "SELECT (input->>'n')::integer, id FROM workflow_runs");
        for (int i = 0; i < PQntuples(res); i++)
                ids[strtol(PQgetvalue(res, i, 0), NULL, 10)] = strdup(PQgetvalue(res, i, 1));
        PQclear(res);
        long long sink_bad = t.strays;
        for (int n = 0; n < runs; n++) {
                struct chaos_sink_cell cell;
                char want[128];
                assert_int_equal(chaos_sink_cell(sink, n, 0, &cell), 0);
                snprintf(want, sizeof(want), "%s:p", ids[n] ? ids[n] : "?");
                if (cell.requests < 1 || cell.distinct_keys != 1 || strcmp(cell.keys[0], want)) {
                        if (sink_bad++ < 5)
                                fprintf(stderr, "timers: run %d: %d requests, %d keys (%s)\n", n,
                                        cell.requests, cell.distinct_keys, cell.keys[0]);
                }
                free(ids[n]);
        }
        free(ids);
        printf("check %-62s %s (%lld)\n", "every post-sleep effect reached the sink, one key",
               sink_bad ? "FAILED" : "ok", sink_bad);
        fflush(stdout);
        bad += sink_bad;

        if (bad)
                fprintf(stderr, "timers: worker logs kept in %s\n", dir);
        assert_int_equal(completed, runs);
        assert_int_equal(bad, 0);

        chaos_sink_stop(sink);
        for (int k = 0; k < NWF; k++)
                free(wf[k]);
        free(user);
        PQfinish(db);
        test_rm_rf(dir);
        free(dir);
        free(worker_conninfo);
        free(conninfo);
}

int main(void)
{
        atexit(kill_workers_at_exit);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_timers_survive_restarts),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
