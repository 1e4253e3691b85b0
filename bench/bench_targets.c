/*
 * The run-level targets of issue 3, each measured with real `agently worker` processes
 * (AGENTLY_BINARY) against the bench's durable Postgres, timed from database timestamps
 * (created_at, started_at, finished_at: the clock every commit is stamped with), and
 * printed next to its ratio of the commit baselines measured earlier in the same run:
 *
 *   runs_claimed_completed_per_s   no-op single-node runs, pre-enqueued, 2 workers
 *   step_checkpoints_per_s         runs in flight of a no-op chain (steps planned in memory)
 *   effect_step_checkpoints_per_s  runs in flight of a chain of http steps to a local
 *                                  receiver: each result committed before the next step
 *   workflow_5step_p50_ms          a 5-step no-op chain run alone, started -> the commit of
 *                                  the finishing transaction (commit timestamps);
 *                                  workflow_5step_commits: the same in single commits
 *   enqueue_to_start_p50/p99_ms    an idle worker, created_at -> started_at (raw INSERT),
 *                                  and through POST /v1/runs (the client's send -> started_at)
 *   map_http_items_per_s           a 10,000-item http map (concurrency 100) against the
 *                                  receiver, whose own capacity is measured beside it
 *   soak_*                         sustained throughput per 10 s window and per minute,
 *                                  beside the machine's speed, the host's share of its
 *                                  CPU (steal) and the page cache the kernel reclaimed
 *                                  each minute; claim index size
 *   latency_*host_steal_pct        the host's share of the CPU while the latency samples ran
 *
 * Parameters are printed as bench_* lines before each figure so a result is never read
 * without them.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth_token.h"
#include "embedded_pg.h"

#define WORKERS 2 /* one per core */

struct targets {
        const struct bench *b;
        struct embedded_pg *pg;
        PGconn *c;
        char *worker_conninfo;
        char user_id[40];
        struct bench_receiver *receiver;
        bool polls_prepared; /* wait_finished's two statements, on c */
};

static void die_sql(PGconn *c, const char *sql)
{
        fprintf(stderr, "bench: query failed: %s\n  %s\n", PQerrorMessage(c), sql);
        exit(1);
}

/* Runs a formatted query; returns its result (caller clears) or exits. */
static PGresult *q(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Statements q() has sent: each is a transaction of its own (runs_throughput subtracts the
 * bench's own from the database's commit count). */
static long q_sent;

static PGresult *q(PGconn *c, const char *fmt, ...)
{
        char sql[4096];
        va_list ap;
        PGresult *res;

        va_start(ap, fmt);
        vsnprintf(sql, sizeof(sql), fmt, ap);
        va_end(ap);
        res = PQexec(c, sql);
        q_sent++;
        if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
                die_sql(c, sql);
        return res;
}

static double qd(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static double qd(PGconn *c, const char *fmt, ...)
{
        char sql[4096];
        va_list ap;
        PGresult *res;
        double v;

        va_start(ap, fmt);
        vsnprintf(sql, sizeof(sql), fmt, ap);
        va_end(ap);
        res = PQexec(c, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
                die_sql(c, sql);
        v = PQgetisnull(res, 0, 0) ? 0.0 : strtod(PQgetvalue(res, 0, 0), NULL);
        PQclear(res);
        return v;
}

/* The machine's clock in us (the database's and the worker's traces' clock). */
static int64_t realtime_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int64_t ms)
{
        bench_sleep_ms(ms);
}

static pid_t spawn_worker(struct targets *t, int concurrency, const char *poll)
{
        return bench_spawn_worker(t->b, t->worker_conninfo, concurrency, poll, NULL, 0);
}

static void stop_worker(pid_t pid)
{
        bench_stop_worker(pid);
}

/* Stores a workflow definition; returns its id in out. */
static void store_workflow(struct targets *t, const char *name, const char *def, char *out,
                           size_t len)
{
        PGresult *res;
        const char *params[] = {t->user_id, name, def};
        res = PQexecParams(t->c,
                           "INSERT INTO workflows (user_id, name, version, definition, "
                           "definition_sha256) VALUES ($1, $2, 1, $3::jsonb, "
                           "encode(sha256(convert_to($3::text, 'UTF8')), 'hex')) RETURNING id",
                           3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
                die_sql(t->c, "INSERT INTO workflows");
        snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
}

/* A workflow whose nodes are a chain of `steps` nodes: no-op, or (url set) http POSTs to
 * url; returns its id in out. */
static void make_chain(struct targets *t, const char *name, int steps, const char *url, char *out,
                       size_t len)
{
        size_t cap = (size_t)steps * (url ? 256 : 64) + 128, off = 0;
        char *def = malloc(cap), node[256];

        if (!def)
                exit(1);
        off += (size_t)snprintf(def, cap, "{\"name\":\"%s\",\"nodes\":[", name);
        for (int i = 0; i < steps; i++) {
                if (url)
                        snprintf(node, sizeof(node),
                                 "\"type\":\"http\",\"request\":{\"method\":\"POST\","
                                 "\"url\":\"%s/step/%d\",\"body\":{\"i\":%d}}",
                                 url, i, i);
                else
                        snprintf(node, sizeof(node), "\"type\":\"noop\"");
                if (i == 0)
                        off += (size_t)snprintf(def + off, cap - off, "{\"id\":\"n0\",%s}", node);
                else
                        off += (size_t)snprintf(def + off, cap - off,
                                                ",{\"id\":\"n%d\",%s,\"after\":[\"n%d\"]}", i, node,
                                                i - 1);
        }
        snprintf(def + off, cap - off, "]}");
        store_workflow(t, name, def, out, len);
        free(def);
}

static void make_workflow(struct targets *t, const char *name, int steps, char *out, size_t len)
{
        make_chain(t, name, steps, NULL, out, len);
}

static void enqueue(struct targets *t, const char *wf, int n)
{
        PQclear(q(t->c,
                  "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                  "workflow_version, input) SELECT w.user_id, w.id, w.name, w.version, '{}' "
                  "FROM workflows w, generate_series(1, %d) WHERE w.id = '%s'",
                  n, wf));
}

/* One of the poll's prepared statements (prepared on first use): the poll runs every 5 ms
 * beside the runs it waits for, on the same two cores, and as text each was planned at
 * every call (0.18 and 0.06 ms; pg_stat_statements). Counted in q_sent as q()'s are (the
 * count of finished runs, sent through qd() until the twenty-fourth session, was not). */
static PGresult *poll(struct targets *t, const char *name, const char *wf)
{
        static const struct {
                const char *name, *sql;
        } polls[] = {
            {"bench_poll_live",
             "SELECT EXISTS (SELECT 1 FROM run_queue q WHERE (SELECT r.workflow_id FROM "
             "workflow_runs r WHERE r.id = q.run_id) = $1::uuid), extract(epoch FROM "
             "clock_timestamp())"},
            {"bench_poll_done", "SELECT count(*) FROM workflow_runs WHERE workflow_id = $1::uuid "
                                "AND finished_at IS NOT NULL"},
        };
        const char *params[1] = {wf};
        PGresult *res;

        for (size_t i = 0; !t->polls_prepared && i < sizeof(polls) / sizeof(*polls); i++) {
                res = PQprepare(t->c, polls[i].name, polls[i].sql, 1, NULL);
                q_sent++;
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        die_sql(t->c, polls[i].sql);
                PQclear(res);
        }
        t->polls_prepared = true;
        res = PQexecPrepared(t->c, name, 1, params, NULL, NULL, 0);
        q_sent++;
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
                die_sql(t->c, name);
        return res;
}

/* Waits until n runs of wf are finished; false after timeout_ms. *done_at (may be NULL):
 * the database clock (clock_timestamp(), epoch seconds) when the bench first saw them all
 * finished, at most one poll (5 ms) after the last commit. A batch of steps committed
 * together carries its transaction's START time in every row, so the end of a measurement
 * is taken from here, never from max(finished_at).
 *
 * The poll must not load the machine it measures: a count of the finished runs of wf reads
 * every run of wf (no index of the history holds its workflow), which every 5 ms took a
 * quarter of both cores from a no-op run measurement (docs/performance.md, "The bench's
 * own poll"). A run is live while it has its queue row, which its finish deletes in the
 * same transaction, so the poll asks whether any run of wf is still in the queue, the queue
 * driving (a run's workflow looked up per queue row, so the first of wf ends it; as a join
 * the planner walked the history instead), and counts the finished runs once, when none
 * is. */
static bool wait_finished_quiet(struct targets *t, const char *wf, int n, int64_t timeout_ms,
                                double *done_at, bool quiet)
{
        int64_t deadline = bench_now_us() + timeout_ms * 1000;

        while (bench_now_us() < deadline) {
                PGresult *res = poll(t, "bench_poll_live", wf);
                bool live = PQgetvalue(res, 0, 0)[0] == 't';
                double at = strtod(PQgetvalue(res, 0, 1), NULL);
                PQclear(res);
                if (!live) {
                        res = poll(t, "bench_poll_done", wf);
                        double done = strtod(PQgetvalue(res, 0, 0), NULL);
                        PQclear(res);
                        if (done >= n) {
                                if (done_at)
                                        *done_at = at;
                                return true;
                        }
                }
                sleep_ms(5);
        }
        if (!quiet)
                fprintf(stderr, "bench: runs of %s did not finish within %llds\n", wf,
                        (long long)timeout_ms / 1000);
        return false;
}

static bool wait_finished_at(struct targets *t, const char *wf, int n, int64_t timeout_ms,
                             double *done_at)
{
        return wait_finished_quiet(t, wf, n, timeout_ms, done_at, false);
}

static bool wait_finished(struct targets *t, const char *wf, int n, int64_t timeout_ms)
{
        return wait_finished_at(t, wf, n, timeout_ms, NULL);
}

static void check_all_completed(struct targets *t, const char *wf)
{
        double bad = qd(t->c,
                        "SELECT count(*) FROM workflow_runs WHERE workflow_id = '%s' AND status "
                        "<> 'completed'",
                        wf);
        if (bad > 0) {
                fprintf(stderr, "bench: %.0f runs of %s did not complete; see %s/bench-*.log\n",
                        bad, wf, t->b->dir);
                exit(1);
        }
}

/* ---- where a figure's time goes ----------------------------------------------------- */

/* What /proc/PID/stat says of a process's CPU: its own seconds (user + system), those of
 * the children it has waited for (exited and reaped), and its parent; false if unread. */
struct proc_cpu {
        double own, reaped;
        pid_t parent;
};

static bool proc_cpu_read(pid_t pid, struct proc_cpu *out)
{
        char path[64], buf[1024];
        unsigned long long ut = 0, st = 0;
        long long cut = 0, cst = 0;
        int parent = 0;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        f = fopen(path, "r");
        if (!f)
                return false;
        char *p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
        fclose(f);
        /* after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt
         * cmajflt utime stime cutime cstime */
        if (!p || sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld",
                         &parent, &ut, &st, &cut, &cst) != 5)
                return false;
        double hz = (double)sysconf(_SC_CLK_TCK);
        *out = (struct proc_cpu){.own = (double)(ut + st) / hz,
                                 .reaped = (double)(cut + cst) / hz,
                                 .parent = (pid_t)parent};
        return true;
}

/* CPU seconds (user + system) pid has used so far, or -1. */
static double cpu_s(pid_t pid)
{
        struct proc_cpu c;

        return proc_cpu_read(pid, &c) ? c.own : -1;
}

/* The CPU seconds of the WORKERS processes in w so far; -1 if one is unread. */
static double workers_cpu_s(const pid_t *w)
{
        double sum = 0;

        for (int i = 0; i < WORKERS; i++) {
                double v = cpu_s(w[i]);
                if (v < 0)
                        return -1;
                sum += v;
        }
        return sum;
}

/* The machine's CPU seconds since boot, all cores: busy (user, nice, system, irq, softirq,
 * steal), all (busy + idle + iowait) and steal (time the hypervisor gave this machine's
 * virtual CPUs to others: on a shared host it can be a third of "busy"), from /proc/stat's
 * first line; false if unread. */
static bool machine_cpu_s(double *busy, double *all, double *steal)
{
        unsigned long long v[8] = {0};
        FILE *f = fopen("/proc/stat", "r");
        int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                           &v[3], &v[4], &v[5], &v[6], &v[7])
                  : 0;

        if (f)
                fclose(f);
        if (n != 8)
                return false;
        double hz = (double)sysconf(_SC_CLK_TCK);
        *busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz;
        *all = *busy + (double)(v[3] + v[4]) / hz;
        *steal = (double)v[7] / hz;
        return true;
}

/* The machine's CPU seconds so far, the busy ones and the host's part of them: what the host
 * took between two marks is its share of the time between them (host_share), what nobody
 * used its idle share (idle_share). Zeros when unread. */
struct host_mark {
        double all, busy, steal;
};

static struct host_mark host_mark_now(void)
{
        double busy, all, steal;

        if (!machine_cpu_s(&busy, &all, &steal))
                return (struct host_mark){0};
        return (struct host_mark){.all = all, .busy = busy, .steal = steal};
}

/* The share of the machine's CPU time from a to b that the host gave to others (steal),
 * 0..1; -1 when either mark is unread or no time passed. */
static double host_share(struct host_mark a, struct host_mark b)
{
        if (a.all <= 0 || b.all - a.all <= 0)
                return -1;
        return (b.steal - a.steal) / (b.all - a.all);
}

/* The share of the machine's CPU time from a to b that stayed idle (no process and not the
 * host), 0..1; -1 when either mark is unread or no time passed. */
static double idle_share(struct host_mark a, struct host_mark b)
{
        if (a.all <= 0 || b.all - a.all <= 0)
                return -1;
        return 1 - (b.busy - a.busy) / (b.all - a.all);
}

/* CPU seconds of the database sessions of the workers (application_name "agently worker
 * bench-*"), read from /proc: the bench and its cluster share the machine. */
static double worker_backends_cpu_s(struct targets *t)
{
        PGresult *res = q(t->c, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE "
                                "'agently worker bench-%%'");
        double sum = 0;

        for (int i = 0; i < PQntuples(res); i++) {
                double v = cpu_s((pid_t)strtol(PQgetvalue(res, i, 0), NULL, 10));
                if (v > 0)
                        sum += v;
        }
        PQclear(res);
        return sum;
}

/* CPU seconds of the cluster's own processes: the postmaster, every process of it that is
 * not a client's session (checkpointer, WAL writer, background writer, the autovacuum
 * launcher and its workers at work), and every child the postmaster has reaped — the
 * autovacuum workers that finished a table, and any session that ended. */
static double postgres_own_cpu_s(struct targets *t)
{
        /* the bench's own session is a client's, and its parent is the postmaster */
        PGresult *res = q(t->c, "SELECT pid, pid = pg_backend_pid() FROM pg_stat_activity "
                                "WHERE backend_type <> 'client backend' OR pid = pg_backend_pid()");
        double sum = 0;
        pid_t postmaster = 0;
        struct proc_cpu c;

        for (int i = 0; i < PQntuples(res); i++) {
                if (!proc_cpu_read((pid_t)strtol(PQgetvalue(res, i, 0), NULL, 10), &c))
                        continue;
                if (PQgetvalue(res, i, 1)[0] == 't')
                        postmaster = c.parent;
                else
                        sum += c.own;
        }
        PQclear(res);
        if (postmaster <= 0 || !proc_cpu_read(postmaster, &c))
                return -1;
        return sum + c.own + c.reaped;
}

/* ---- runs claimed and completed ----------------------------------------------------- */

/* The database's commit count at a moment, and how many statements the bench had sent by
 * then (each of q()'s is a transaction of its own). */
struct commits_mark {
        double commits;
        long own;
};

/* Marks now. A backend flushes its counts when it has been idle a second or exits;
 * pg_stat_force_next_flush makes the bench's own flush at that statement's end. */
static void commits_mark(struct targets *t, struct commits_mark *m)
{
        PQclear(q(t->c, "SELECT pg_stat_force_next_flush()"));
        m->own = q_sent;
        PQclear(q(t->c, "SELECT pg_stat_clear_snapshot()"));
        m->commits = qd(t->c, "SELECT xact_commit FROM pg_stat_database WHERE datname = "
                              "current_database()");
}

/* Transactions the workers committed since m: every commit but the bench's own. Read once
 * they have exited, so that their sessions have reported their counts. */
static double workers_commits_since(struct targets *t, const struct commits_mark *m)
{
        struct commits_mark now;

        commits_mark(t, &now);
        return now.commits - m->commits - (double)(now.own - m->own);
}

/* Runs of wf per second: from the first claim to the bench seeing all nruns committed
 * (database clock); 0 when they did not all finish. */
static double runs_rate(struct targets *t, const char *wf, int nruns)
{
        double done_at = 0;

        if (!wait_finished_at(t, wf, nruns, 600000, &done_at))
                return 0;
        check_all_completed(t, wf);
        return qd(t->c,
                  "SELECT count(*) / (%f - extract(epoch FROM min(started_at))) FROM "
                  "workflow_runs WHERE workflow_id = '%s'",
                  done_at, wf);
}

/* Where the machine's CPU went, in seconds so far: the workers' processes, their database
 * sessions, and the machine as a whole (busy, all, and the steal counted in busy). */
struct cpu_split {
        double workers, sessions, postgres, busy, all, steal;
};

static void cpu_split_read(struct targets *t, const pid_t *w, struct cpu_split *out)
{
        out->workers = workers_cpu_s(w);
        out->sessions = worker_backends_cpu_s(t);
        out->postgres = postgres_own_cpu_s(t);
        if (!machine_cpu_s(&out->busy, &out->all, &out->steal))
                out->busy = out->all = out->steal = 0;
}

/* nruns pre-enqueued no-op runs through new workers. Then (*warm_rate) as many again
 * through the same workers, their connections warm by then (a new backend is slow for its
 * first seconds: bench_baseline.c), in the same shape: the workers stopped (SIGSTOP) while
 * the runs are enqueued and the first batch's dead queue entries vacuumed away, then let
 * go. */
static double runs_throughput(struct targets *t, const char *name, int nruns, const char *poll,
                              double *warm_rate)
{
        char wf[40], wf2[40], name2[64];
        pid_t w[WORKERS];
        double rate;
        struct commits_mark before;

        make_workflow(t, name, 1, wf, sizeof(wf));
        snprintf(name2, sizeof(name2), "%s-warm", name);
        make_workflow(t, name2, 1, wf2, sizeof(wf2));
        enqueue(t, wf, nruns);
        PQclear(q(t->c, "ANALYZE workflow_runs"));
        commits_mark(t, &before);
        for (int i = 0; i < WORKERS; i++)
                w[i] = spawn_worker(t, 500, poll);
        rate = runs_rate(t, wf, nruns);
        *warm_rate = 0;
        if (rate > 0) {
                for (int i = 0; i < WORKERS; i++)
                        kill(w[i], SIGSTOP);
                enqueue(t, wf2, nruns);
                PQclear(q(t->c, "VACUUM ANALYZE run_queue"));
                PQclear(q(t->c, "ANALYZE workflow_runs"));
                struct cpu_split at0, at1;
                cpu_split_read(t, w, &at0);
                for (int i = 0; i < WORKERS; i++)
                        kill(w[i], SIGCONT);
                *warm_rate = runs_rate(t, wf2, nruns);
                cpu_split_read(t, w, &at1);
                double per = 1e6 / nruns;
                double rest = (at1.busy - at0.busy) - (at1.steal - at0.steal) -
                              (at1.workers - at0.workers) - (at1.sessions - at0.sessions);
                double own =
                    at0.postgres >= 0 && at1.postgres >= 0 ? at1.postgres - at0.postgres : 0;
                bench_report("runs_warm_cpu_us_per_run",
                             "workers %.1f, their database sessions %.1f, the rest of the "
                             "machine %.1f (Postgres's own processes %.1f: its autovacuum, "
                             "checkpointer, WAL writer; the bench's polls and the kernel %.1f), "
                             "stolen by the host %.1f, idle %.1f: CPU microseconds per run of "
                             "the warm measurement, %d cores",
                             (at1.workers - at0.workers) * per, (at1.sessions - at0.sessions) * per,
                             rest * per, own * per, (rest - own) * per,
                             (at1.steal - at0.steal) * per,
                             ((at1.all - at0.all) - (at1.busy - at0.busy)) * per,
                             (int)sysconf(_SC_NPROCESSORS_ONLN));
        }
        for (int i = 0; i < WORKERS; i++)
                stop_worker(w[i]);
        if (rate <= 0)
                return 0;
        sleep_ms(600); /* let the exited workers' statistics arrive */
        bench_report("runs_transactions_per_run",
                     "%.2f (the workers' commits, incl. read-only ones, per run of both "
                     "measurements)",
                     workers_commits_since(t, &before) / (*warm_rate > 0 ? 2 * nruns : nruns));
        return rate;
}

/* ---- step checkpoints ---------------------------------------------------------------- */

static double checkpoints(struct targets *t, const char *name, int nruns, int steps,
                          const char *url)
{
        char wf[40];
        pid_t w[WORKERS];

        make_chain(t, name, steps, url, wf, sizeof(wf));
        enqueue(t, wf, nruns);
        struct commits_mark before;
        commits_mark(t, &before);
        for (int i = 0; i < WORKERS; i++)
                w[i] = spawn_worker(t, nruns, "10ms");
        double done_at = 0;
        bool ok = wait_finished_at(t, wf, nruns, 600000, &done_at);
        for (int i = 0; i < WORKERS; i++)
                stop_worker(w[i]);
        if (!ok)
                return 0;
        check_all_completed(t, wf);
        sleep_ms(600); /* let the exited workers' statistics arrive */
        bench_report(url ? "effect_steps_transactions_per_step" : "steps_transactions_per_step",
                     "%.2f (the workers' commits, incl. read-only ones)",
                     workers_commits_since(t, &before) / ((double)nruns * steps));
        return qd(t->c,
                  "SELECT count(*) / (%f - extract(epoch FROM min(r.started_at))) FROM node_runs "
                  "n JOIN workflow_runs r ON r.id = n.workflow_run_id WHERE r.workflow_id = "
                  "'%s' AND n.status = 'completed'",
                  done_at, wf);
}

/* ---- latency: one run at a time on an idle worker ------------------------------------ */

/* The API (`agently api` of the same build) with a token for the bench's user; its base
 * URL into base. */
static pid_t spawn_api(struct targets *t, char *base, size_t len, char *token)
{
        char env_url[2048], log[1024], dir[1024], listen[64], url[128], hex[2 + 64 + 1];
        char shown[AUTH_TOKEN_SHOWN_CHARS + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        int port = 20000 + (int)(getpid() % 20000);
        pid_t pid;

        if (auth_token_generate(token, hash, shown) < 0)
                exit(1);
        auth_token_hash_hex(hash, hex);
        PQclear(q(t->c,
                  "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) VALUES "
                  "('%s', 'bench', '%s'::bytea, '%s')",
                  t->user_id, hex, shown));
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(base, len, "http://127.0.0.1:%d", port);
        snprintf(dir, sizeof(dir), "%s/api", t->b->dir);
        snprintf(log, sizeof(log), "%s/api.log", t->b->dir);
        snprintf(env_url, sizeof(env_url), "AGENTLY_DATABASE_URL=%s", t->b->owner_conninfo);
        mkdir(dir, 0700);
        pid = fork();
        if (pid < 0)
                exit(1);
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                putenv(env_url);
                putenv("AGENTLY_LOG_LEVEL=warn");
                execl(AGENTLY_BINARY, AGENTLY_BINARY, "api", "--listen", listen, "--data-dir", dir,
                      (char *)NULL);
                _exit(127);
        }
        snprintf(url, sizeof(url), "%s/v1/runs", base);
        for (int i = 0; i < 200; i++) {
                char out[512];
                /* an empty body: 400 once the server answers (nothing is created) */
                if (bench_http_post(url, token, "{}", out, sizeof(out)) > 0)
                        return pid;
                sleep_ms(50);
        }
        fprintf(stderr, "bench: agently api did not answer on %s; see %s\n", base, log);
        exit(1);
}

/* The phases of the traced runs of wf (worker_trace.h lines in the worker's log), joined
 * with the database's timestamps of each run (created_at, its enqueueing commit, started_at,
 * its finishing commit), printed as medians: where enqueue_to_start and the 5-step run's
 * milliseconds go. */
static void latency_breakdown(struct targets *t, const char *wf, const char *log)
{
        FILE *f = fopen(log, "r");
        char line[1024];

        if (!f)
                return;
        PQclear(q(t->c, "CREATE TABLE IF NOT EXISTS bench_claim (run_id uuid PRIMARY KEY, hint_us "
                        "bigint, at_us bigint, claim_us bigint)"));
        PQclear(q(t->c, "CREATE TABLE IF NOT EXISTS bench_turn (run_id uuid PRIMARY KEY, t0 "
                        "bigint, begin_us bigint, lock_us bigint, snapshot_us bigint, plan_us "
                        "bigint, commit_us bigint, total_us bigint)"));
        while (fgets(line, sizeof(line), f)) {
                char id[40];
                long long h, c, at, b, l, s, p, cm, tot, t0;
                int n;
                if (sscanf(line,
                           "trace claim hint_us=%lld claim_us=%lld runs=%d first=%36s at=%lld", &h,
                           &c, &n, id, &at) == 5 &&
                    n == 1 && h >= 0)
                        PQclear(q(t->c,
                                  "INSERT INTO bench_claim VALUES ('%s', %lld, %lld, %lld) ON "
                                  "CONFLICT DO NOTHING",
                                  id, h, at, c));
                else if (sscanf(line,
                                "trace turn runs=%d first=%36s begin_us=%lld lock_us=%lld "
                                "snapshot_us=%lld plan_us=%lld commit_us=%lld total_us=%lld "
                                "t0=%lld",
                                &n, id, &b, &l, &s, &p, &cm, &tot, &t0) == 9 &&
                         n == 1)
                        PQclear(q(t->c,
                                  "INSERT INTO bench_turn VALUES ('%s', %lld, %lld, %lld, %lld, "
                                  "%lld, %lld, %lld) ON CONFLICT DO NOTHING",
                                  id, t0, b, l, s, p, cm, tot));
        }
        fclose(f);
        /* medians, ms; "us" columns are the worker's clock (CLOCK_REALTIME, the machine's, as
         * the database's) */
        PGresult *res =
            q(t->c,
              "SELECT count(*), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
              "pg_xact_commit_timestamp(e.xid::text::xid) - r.created_at) * 1000), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY (c.at_us - c.hint_us) / 1000.0 - "
              "extract(epoch FROM pg_xact_commit_timestamp(e.xid::text::xid)) * 1000), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY c.hint_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY c.claim_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY (u.t0 - c.at_us - c.claim_us) / "
              "1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY u.begin_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY u.lock_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY u.snapshot_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY u.plan_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY u.commit_us / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
              "pg_xact_commit_timestamp(r.xmin)) * 1000 - (u.t0 + u.total_us) / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at) * "
              "1000 - u.t0 / 1000.0), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY e.returned_us / 1000.0 - "
              "extract(epoch FROM pg_xact_commit_timestamp(e.xid::text::xid)) * 1000), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY (c.at_us - c.hint_us - e.returned_us) "
              "/ 1000.0) "
              "FROM workflow_runs r JOIN bench_enq e ON e.run_id = r.id "
              "JOIN bench_claim c ON c.run_id = r.id JOIN bench_turn u ON u.run_id = r.id "
              "WHERE r.workflow_id = '%s'",
              wf);
        double v[15];
        for (int i = 0; i < 15; i++)
                v[i] = strtod(PQgetvalue(res, 0, i), NULL);
        PQclear(res);
        bench_report("latency_breakdown_samples",
                     "%.0f (runs woken by NOTIFY, claimed alone, "
                     "done in one turn)",
                     v[0]);
        /* the claim opens the turn's transaction (BEGIN and the claim in one round trip, no
         * commit of its own): the turn's BEGIN is the claim's (v[5], claim sent -> BEGIN
         * sent, is minus the claim now, not printed) */
        bench_report("enqueue_to_start_breakdown_p50_ms",
                     "enqueue commit %.2f | commit -> NOTIFY read %.2f | -> BEGIN + claim sent "
                     "%.2f | (BEGIN + claim %.2f, in the turn)",
                     v[1], v[2], v[3], v[4]);
        /* the NOTIFY beside the COMMIT's answer to the enqueueing client: both leave the
         * enqueue's backend after its commit record is flushed */
        bench_report("enqueue_commit_breakdown_p50_ms",
                     "commit timestamp -> the client sees the COMMIT %.2f | the client sees it "
                     "-> NOTIFY read %+.2f",
                     v[13], v[14]);
        bench_report("workflow_5step_breakdown_p50_ms",
                     "BEGIN + claim %.2f | lock %.2f | snapshot %.2f | plan and apply %.2f | "
                     "writes + COMMIT %.2f (commit timestamp %+.2f from the client's end; "
                     "started_at %+.2f from BEGIN sent)",
                     v[6], v[7], v[8], v[9], v[10], v[11], v[12]);
        /* The tail, over every raw INSERT sample: a run is claimable only once its enqueue's
         * commit is on disk (synchronous_commit: the NOTIFY and the run's visibility both
         * wait for that flush), so the start's p99 is read beside the p99 of that flush in
         * the same samples, and of the start less it, per sample: the disk's share of the
         * tail and the rest's. The percentiles of the parts do not add up to the whole's. */
        res = q(t->c,
                "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY e2s), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY work), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY flush), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY e2s - flush), "
                "count(*) FILTER (WHERE flush > e2s / 2) * 100.0 / greatest(count(*), 1) "
                "FROM (SELECT extract(epoch FROM r.started_at - r.created_at) * 1000 e2s, "
                "extract(epoch FROM pg_xact_commit_timestamp(e.xid::text::xid) - r.created_at) "
                "* 1000 work, e.returned_us / 1000.0 - extract(epoch FROM "
                "pg_xact_commit_timestamp(e.xid::text::xid)) * 1000 flush "
                "FROM workflow_runs r JOIN bench_enq e ON e.run_id = r.id "
                "WHERE r.workflow_id = '%s' AND e.returned_us IS NOT NULL) x",
                wf);
        for (int i = 0; i < 5; i++)
                v[i] = strtod(PQgetvalue(res, 0, i), NULL);
        PQclear(res);
        bench_report("enqueue_to_start_tail_p99_ms",
                     "start %.2f | the enqueue's work (created_at -> its commit timestamp) %.2f | "
                     "its commit's flush (-> the client sees the COMMIT) %.2f | the start less "
                     "that flush, per sample, %.2f (the flush is over half the start in %.0f %% "
                     "of the samples)",
                     v[0], v[1], v[2], v[3], v[4]);
}

/* Inserts `samples` runs of a `steps`-node chain one at a time (a raw INSERT, or through
 * POST /v1/runs when api is set), each after the previous one finished and a random pause
 * (so the worker is idle), and reports percentiles of the start (started_at - created_at
 * for an INSERT; started_at - the moment the client sent the request, same machine clock,
 * for the API) and of the run (started_at -> the commit of the transaction that finished it:
 * pg_xact_commit_timestamp of the finished row version). *naive_p50: the old formula,
 * finished_at - started_at, whose end is the finishing transaction's start. */
static void latency(struct targets *t, const char *name, int steps, int samples, const char *api,
                    const char *token, double *e2s_p50, double *e2s_p99, double *run_p50,
                    double *run_p99, double *naive_p50, double *stolen)
{
        char wf[40], body[256], out[1024], url[256];
        pid_t w;

        char log[1024];
        struct {
                char id[40];
                char xid[24];  /* the enqueue's transaction (its commit's timestamp) */
                int64_t at_us; /* CLOCK_REALTIME: the enqueue's COMMIT returned to the client */
        } *enq = calloc((size_t)samples, sizeof(*enq));

        if (!enq)
                exit(1);
        make_workflow(t, name, steps, wf, sizeof(wf));
        PQclear(q(t->c, "CREATE TABLE IF NOT EXISTS bench_sent (run_id uuid PRIMARY KEY, "
                        "sent_at timestamptz NOT NULL)"));
        PQclear(q(t->c, "CREATE TABLE IF NOT EXISTS bench_enq (run_id uuid PRIMARY KEY, "
                        "xid bigint NOT NULL, returned_us bigint)"));
        /* the raw inserts' worker writes its phases (worker_trace.h) for the breakdown */
        if (!api)
                setenv("AGENTLY_TRACE_TURNS", "1", 1);
        /* default poll: the NOTIFY hint must do the work */
        w = bench_spawn_worker(t->b, t->worker_conninfo, 100, "500ms", log, sizeof(log));
        unsetenv("AGENTLY_TRACE_TURNS");
        sleep_ms(1000); /* started and LISTENing */
        /* the raw insert prepared, as a client that inserts runs again and again has it (and
         * as the API's is): what is timed is agently's work, not the statement's planning */
        if (!api) {
                static const char sql[] =
                    "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                    "workflow_version, input) SELECT w.user_id, w.id, w.name, w.version, '{}' "
                    "FROM workflows w WHERE w.id = $1::uuid RETURNING id, txid_current()";
                PGresult *res = PQprepare(t->c, "bench_enqueue", sql, 1, NULL);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        die_sql(t->c, sql);
                PQclear(res);
        }
        snprintf(url, sizeof(url), "%s/v1/runs", api ? api : "");
        snprintf(body, sizeof(body), "{\"workflow\":\"%s\",\"input\":{}}", name);
        /* the share of the machine's CPU the host took while the samples ran: a run alone
         * waits for every core it is given, so a host that steals shows in these figures
         * first */
        struct host_mark before = host_mark_now();
        for (int i = 0; i < samples; i++) {
                if (api) {
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        int st = bench_http_post(url, token, body, out, sizeof(out));
                        const char *id = strstr(out, "\"id\":\"");
                        if (st != 201 && st != 202 && st != 200) {
                                fprintf(stderr, "bench: POST /v1/runs answered %d: %s\n", st, out);
                                exit(1);
                        }
                        if (!id) {
                                fprintf(stderr, "bench: no run id in %s\n", out);
                                exit(1);
                        }
                        PQclear(
                            q(t->c,
                              "INSERT INTO bench_sent VALUES ('%.36s', to_timestamp(%lld.%06ld))",
                              id + 6, (long long)ts.tv_sec, ts.tv_nsec / 1000));
                } else {
                        /* one run, and its transaction's id (its commit's timestamp); both
                         * and when the client saw it committed are kept until the end: the
                         * bench's own rows are not the enqueue's work, and a statement now
                         * would compete with the worker's claim */
                        const char *params[1] = {wf};
                        PGresult *res =
                            PQexecPrepared(t->c, "bench_enqueue", 1, params, NULL, NULL, 0);
                        enq[i].at_us = realtime_us();
                        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
                                die_sql(t->c, "EXECUTE bench_enqueue");
                        snprintf(enq[i].id, sizeof(enq[i].id), "%s", PQgetvalue(res, 0, 0));
                        snprintf(enq[i].xid, sizeof(enq[i].xid), "%s", PQgetvalue(res, 0, 1));
                        PQclear(res);
                }
                if (!wait_finished(t, wf, i + 1, 10000))
                        exit(1);
                sleep_ms(20 + rand() % 30);
        }
        double share = host_share(before, host_mark_now());
        *stolen = share >= 0 ? 100 * share : -1;
        stop_worker(w);
        check_all_completed(t, wf);
        for (int i = 0; !api && i < samples; i++)
                PQclear(q(t->c, "INSERT INTO bench_enq VALUES ('%s', %s, %lld)", enq[i].id,
                          enq[i].xid, (long long)enq[i].at_us));
        free(enq);
        if (!api)
                latency_breakdown(t, wf, log);
        PGresult *res =
            q(t->c,
              "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY e2s), "
              "percentile_cont(0.99) WITHIN GROUP (ORDER BY e2s), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY run), "
              "percentile_cont(0.99) WITHIN GROUP (ORDER BY run), "
              "percentile_cont(0.5) WITHIN GROUP (ORDER BY naive) FROM (SELECT "
              "extract(epoch FROM r.started_at - coalesce(s.sent_at, r.created_at)) * 1000 e2s, "
              "extract(epoch FROM pg_xact_commit_timestamp(r.xmin) - r.started_at) * 1000 run, "
              "extract(epoch FROM r.finished_at - r.started_at) * 1000 naive "
              "FROM workflow_runs r LEFT JOIN bench_sent s ON s.run_id = r.id "
              "WHERE r.workflow_id = '%s') x",
              wf);
        *e2s_p50 = strtod(PQgetvalue(res, 0, 0), NULL);
        *e2s_p99 = strtod(PQgetvalue(res, 0, 1), NULL);
        *run_p50 = strtod(PQgetvalue(res, 0, 2), NULL);
        *run_p99 = strtod(PQgetvalue(res, 0, 3), NULL);
        *naive_p50 = strtod(PQgetvalue(res, 0, 4), NULL);
        PQclear(res);
}

/* ---- one run with a big http map ------------------------------------------------------ */

/* One run whose map of `items` http items (concurrency `conc`) POSTs to the receiver;
 * items per second from the run's start to the bench seeing it finished. */
static double map_http(struct targets *t, int items, int conc)
{
        char wf[40], def[512];
        pid_t w;

        snprintf(def, sizeof(def),
                 "{\"name\":\"bench-map\",\"nodes\":[{\"id\":\"fan\",\"type\":\"map\","
                 "\"items\":\"input.items\",\"concurrency\":%d,\"node\":{\"type\":\"http\","
                 "\"request\":{\"method\":\"POST\",\"url\":\"%s/item/${ index }\","
                 "\"body\":{\"i\":\"${ item }\"}}}}]}",
                 conc, bench_receiver_url(t->receiver));
        store_workflow(t, "bench-map", def, wf, sizeof(wf));
        PQclear(q(t->c,
                  "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                  "workflow_version, input) SELECT w.user_id, w.id, w.name, w.version, "
                  "jsonb_build_object('items', (SELECT jsonb_agg(i) FROM generate_series(1, %d) "
                  "i)) FROM workflows w WHERE w.id = '%s'",
                  items, wf));
        w = spawn_worker(t, 10, "10ms");
        int64_t t0 = bench_now_us();
        double done_at = 0, db_cpu = 0;
        bool ok = false;
        /* the backends' CPU is read while they live: just before the run ends */
        while (!(ok = wait_finished_quiet(t, wf, 1, 250, &done_at, true)) &&
               bench_now_us() - t0 < 600 * 1000000LL)
                db_cpu = worker_backends_cpu_s(t);
        double wall = (double)(bench_now_us() - t0) / 1e6, worker_cpu = cpu_s(w);
        stop_worker(w);
        bench_report("map_http_cpu",
                     "worker %.2f s, its database sessions %.2f s, of %.2f s wall (the rest: "
                     "waiting on round trips, commits and the machine)",
                     worker_cpu, db_cpu, wall);
        if (!ok)
                return 0;
        check_all_completed(t, wf);
        return qd(t->c,
                  "SELECT %d / (%f - extract(epoch FROM min(started_at))) FROM workflow_runs WHERE "
                  "workflow_id = '%s'",
                  items, done_at, wf);
}

/* ---- soak ---------------------------------------------------------------------------- */

/* "due=N lease=M" bytes of the two partial claim indexes (caller-sized buffer). */
static void claim_index_split(struct targets *t, char *out, size_t len)
{
        PGresult *res = q(t->c, "SELECT pg_relation_size('run_queue_due_idx'), "
                                "pg_relation_size('run_queue_lease_idx')");
        snprintf(out, len, "due=%s lease=%s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
        PQclear(res);
}

static double claim_index_bytes(struct targets *t)
{
        return qd(t->c, "SELECT pg_relation_size('run_queue_due_idx') + "
                        "pg_relation_size('run_queue_lease_idx')");
}

/* The machine's speed, probed once a second during the soak: the CPU time (of this thread,
 * so waiting for a core is not counted) of a fixed loop of integer arithmetic over 512 KiB.
 * On this shared VM it moves by a fifth or more from minute to minute with the host's load
 * (docs/performance.md, "The machine's speed under the soak"), and a minute whose probe ran
 * slow is one whose every process ran slow: the soak's windows are printed beside it, and
 * again at the soak's median speed, so the machine's swings and the system's own can be told
 * apart. ~4 ms of CPU a second. */
struct probe_sample {
        double at;             /* epoch seconds, the machine's clock (as finished_at) */
        double cpu_ms;         /* the loop's thread CPU time */
        struct host_mark host; /* the machine's CPU time so far and the host's part */
        double reclaimed_mib;  /* page_cache_reclaimed_mib() */
        double workers_cpu_s;  /* the workers' processes' CPU seconds so far; -1 if unread */
        int feeder_checks;     /* the feeder's looks at the queue so far */
        int feeder_dry;        /* ... of them, those that found no unclaimed run in it */
};

/* MiB the kernel has taken back from cached pages since boot, by kswapd or by a process
 * that needed memory (/proc/vmstat's pgsteal_kswapd + pgsteal_direct); -1 if unread. The
 * soak writes ~1.7 KB of history a run, this machine's 24 GB of RAM in ~20 minutes at its
 * rate: the minute the page cache runs full, reclaim starts, and its minutes say when. */
static double page_cache_reclaimed_mib(void)
{
        char line[128];
        unsigned long long v, pages = 0;
        int found = 0;
        FILE *f = fopen("/proc/vmstat", "r");

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "pgsteal_kswapd %llu", &v) == 1 ||
                    sscanf(line, "pgsteal_direct %llu", &v) == 1) {
                        pages += v;
                        found++;
                }
        fclose(f);
        return found == 2 ? (double)pages * (double)sysconf(_SC_PAGESIZE) / (1 << 20) : -1;
}

static double probe_machine(void)
{
        static uint64_t buf[1 << 16];
        struct timespec a, b;
        uint64_t x = 1;

        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        for (int r = 0; r < 40; r++)
                for (uint32_t i = 0; i < (1u << 16); i++) {
                        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                        buf[(i * 2654435761u) & ((1u << 16) - 1)] += x;
                }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        __asm__ volatile("" : : "r"(buf) : "memory"); /* the stores are kept */
        return (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

/* The median probe time of the samples in [from, to); 0 when none. */
static double probe_median(const struct probe_sample *ps, int n, double from, double to)
{
        double *v = calloc((size_t)n + 1, sizeof(*v));
        int k = 0;

        if (!v)
                exit(1);
        for (int i = 0; i < n; i++)
                if (ps[i].at >= from && ps[i].at < to)
                        v[k++] = ps[i].cpu_ms;
        double m = bench_median(v, k);
        free(v);
        return m;
}

/* The first and the last probe sample in [from, to); false when there is none. */
static bool samples_within(const struct probe_sample *ps, int n, double from, double to,
                           const struct probe_sample **first, const struct probe_sample **last)
{
        *first = *last = NULL;
        for (int i = 0; i < n; i++)
                if (ps[i].at >= from && ps[i].at < to) {
                        if (!*first)
                                *first = &ps[i];
                        *last = &ps[i];
                }
        return *first != NULL;
}

/* The share of the machine's CPU time in [from, to) that the host gave to others (steal);
 * -1 when unknown. */
static double steal_share(const struct probe_sample *ps, int n, double from, double to)
{
        const struct probe_sample *a, *b;

        return samples_within(ps, n, from, to, &a, &b) ? host_share(a->host, b->host) : -1;
}

/* MiB of page cache the kernel reclaimed in [from, to); -1 when unknown. */
static double reclaimed_in(const struct probe_sample *ps, int n, double from, double to)
{
        const struct probe_sample *a, *b;

        if (!samples_within(ps, n, from, to, &a, &b) || a->reclaimed_mib < 0 ||
            b->reclaimed_mib < 0)
                return -1;
        return b->reclaimed_mib - a->reclaimed_mib;
}

/* The share of the machine's CPU that stayed idle in [from, to); -1 when unknown. The soak
 * gives the workers more runs than they can take, so what stays idle is what they waited
 * for: the feeder, a commit's flush, or each other. */
static double idle_in(const struct probe_sample *ps, int n, double from, double to)
{
        const struct probe_sample *a, *b;

        return samples_within(ps, n, from, to, &a, &b) ? idle_share(a->host, b->host) : -1;
}

/* How many of the feeder's looks at the queue in [from, to) found it without an unclaimed
 * run (*dry), of how many (*checks): a worker that finds the queue empty waits for its poll */
static void feeder_in(const struct probe_sample *ps, int n, double from, double to, int *dry,
                      int *checks)
{
        const struct probe_sample *a, *b;

        *dry = *checks = 0;
        if (samples_within(ps, n, from, to, &a, &b)) {
                *dry = b->feeder_dry - a->feeder_dry;
                *checks = b->feeder_checks - a->feeder_checks;
        }
}

/* The workers' own CPU microseconds per run in [from, to), at rate runs a second; -1 when
 * unknown. The workers run the same code for every run of the soak, so when this rises the
 * machine ran slower: a second, independent measure of its speed beside the probe. */
static double workers_us_per_run(const struct probe_sample *ps, int n, double from, double to,
                                 double rate)
{
        const struct probe_sample *a, *b;

        if (!samples_within(ps, n, from, to, &a, &b) || a == b || a->workers_cpu_s < 0 ||
            b->workers_cpu_s < 0 || rate <= 0)
                return -1;
        return 1e6 * (b->workers_cpu_s - a->workers_cpu_s) / (rate * (b->at - a->at));
}

/* "HH:MM:SS" (UTC) of the epoch second at; the minutes' lines carry it so that a slow minute
 * can be found in the Postgres log (its lines are stamped in UTC) */
static void utc_clock(double at, char out[9])
{
        time_t s = (time_t)at;
        struct tm tm;

        if (!gmtime_r(&s, &tm) || strftime(out, 9, "%H:%M:%S", &tm) == 0)
                snprintf(out, 9, "?");
}

/* The issue's own measure: completions per one-minute window (the first minute, when the
 * workers start, left out), each against their mean. */
static void soak_minutes(struct targets *t, const char *wf, double t0, double t1,
                         const struct probe_sample *ps, int nps)
{
        int full = (int)((t1 - t0) / 60);
        if (full < 3)
                return;
        PGresult *res = q(t->c,
                          "SELECT floor((extract(epoch FROM finished_at) - %f) / 60)::int wi, "
                          "count(*) FROM workflow_runs WHERE workflow_id = '%s' AND status = "
                          "'completed' AND extract(epoch FROM finished_at) BETWEEN %f AND %f "
                          "GROUP BY 1 ORDER BY 1",
                          t0, wf, t0, t0 + 60.0 * full);
        /* the probe's median over minutes 2.. is the speed the normalized rates are at */
        double speed = probe_median(ps, nps, t0 + 60, t0 + 60.0 * full);
        /* the share the host took over minutes 2..: the CPU the other normalized rates are at */
        double stolen = steal_share(ps, nps, t0 + 60, t0 + 60.0 * full);
        /* the minutes' rates; the same at the median speed; the minutes' probes; the same
         * rates with the host taking its overall share; the workers' CPU per run */
        struct bench_spread rates = {0}, at_speed = {0}, probes = {0}, at_steal = {0};
        struct bench_spread worker_us = {0}, at_workers_speed = {0};
        /* each counted minute's workers' CPU per run, and its rate times it: the rate at the
         * workers' median speed once the median is known */
        int nmin = 0;
        double *min_wus = calloc((size_t)PQntuples(res) + 1, sizeof(*min_wus));
        double *min_rate_wus = calloc((size_t)PQntuples(res) + 1, sizeof(*min_rate_wus));
        if (!min_wus || !min_rate_wus)
                exit(1);
        for (int i = 0; i < PQntuples(res); i++) {
                int wi = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
                double rate = strtod(PQgetvalue(res, i, 1), NULL) / 60;
                double probe = probe_median(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1));
                char key[64];
                if (wi < 1 || wi >= full)
                        continue;
                double steal = steal_share(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1));
                double reclaimed = reclaimed_in(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1));
                double wus =
                    workers_us_per_run(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1), rate);
                double idle = idle_in(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1));
                int dry, checks;
                feeder_in(ps, nps, t0 + 60.0 * wi, t0 + 60.0 * (wi + 1), &dry, &checks);
                char from[9];
                snprintf(key, sizeof(key), "soak_minute_%02d_runs_per_s", wi + 1);
                utc_clock(t0 + 60.0 * wi, from);
                if (probe > 0 && speed > 0) {
                        /* runs per second had the machine run at its median speed */
                        double at_median = rate * probe / speed;
                        bench_report(key,
                                     "%.0f (from %s UTC; probe %.2f ms; at the median speed: "
                                     "%.0f; the workers' own CPU %.1f us a run; the host took "
                                     "%.1f%% of the CPU; the kernel reclaimed %.0f MiB of page "
                                     "cache; the cores idle %.1f%%; the feeder found the queue "
                                     "empty %d times of %d)",
                                     rate, from, probe, at_median, wus,
                                     steal >= 0 ? 100 * steal : 0.0,
                                     reclaimed >= 0 ? reclaimed : 0.0, idle >= 0 ? 100 * idle : 0.0,
                                     dry, checks);
                        bench_spread_add(&at_speed, at_median);
                        bench_spread_add(&probes, probe);
                } else {
                        bench_report(key, "%.0f (from %s UTC)", rate, from);
                }
                if (steal >= 0 && stolen >= 0 && steal < 1)
                        /* runs per second had the host taken its share of the whole soak */
                        bench_spread_add(&at_steal, rate * (1 - stolen) / (1 - steal));
                bench_spread_add(&rates, rate);
                if (wus > 0) {
                        bench_spread_add(&worker_us, wus);
                        min_rate_wus[nmin] = rate * wus;
                        min_wus[nmin++] = wus;
                }
        }
        PQclear(res);
        double wus_median = bench_median(min_wus, nmin); /* sorts min_wus */
        for (int i = 0; i < nmin; i++)
                /* runs per second had the workers' code run at its median speed */
                bench_spread_add(&at_workers_speed, min_rate_wus[i] / wus_median);
        free(min_wus);
        free(min_rate_wus);
        if (rates.n == 0)
                return;
        char note[96];
        snprintf(note, sizeof(note), "target: every one-minute window within +-10%%, minutes 2..%d",
                 full);
        bench_spread_report("soak_minute_spread", &rates, note);
        if (at_speed.n == rates.n && speed > 0) {
                /* against the median probe, not the minutes' mean */
                bench_report("soak_probe_ms",
                             "median %.2f, minutes' medians %.2f..%.2f: %+.1f%% / "
                             "%+.1f%% (the machine's speed, lower is faster)",
                             speed, probes.lo, probes.hi, 100 * (probes.lo - speed) / speed,
                             100 * (probes.hi - speed) / speed);
                bench_spread_report("soak_minute_spread_at_median_speed", &at_speed,
                                    "each minute's runs/s times its probe over the median probe");
        }
        if (worker_us.n == rates.n) {
                double m = bench_spread_mean(&worker_us);
                bench_report("soak_workers_us_per_run",
                             "min %.1f max %.1f mean %.1f: %+.1f%% / %+.1f%% (the workers' own "
                             "CPU per run, minute by minute: the same code each run, so its "
                             "swings are the machine's speed)",
                             worker_us.lo, worker_us.hi, m, 100 * (worker_us.lo - m) / m,
                             100 * (worker_us.hi - m) / m);
                if (at_workers_speed.n == rates.n)
                        bench_spread_report("soak_minute_spread_at_workers_speed",
                                            &at_workers_speed,
                                            "each minute's runs/s times its workers' CPU per "
                                            "run over their median");
        }
        if (at_steal.n == rates.n && stolen >= 0) {
                char steal_note[160];
                snprintf(steal_note, sizeof(steal_note),
                         "each minute's runs/s had the host taken its share of the whole soak, "
                         "%.1f%% of the CPU, and not that minute's",
                         100 * stolen);
                bench_spread_report("soak_minute_spread_at_soak_steal", &at_steal, steal_note);
        }
}

static void soak(struct targets *t, int64_t soak_ms, double base32c)
{
        char wf[40];
        pid_t w[WORKERS];
        /* the feeder keeps backlog unclaimed runs in the queue, enqueuing batch at a time */
        const int window_s = 10, backlog = 3000, batch = 1000;
        int64_t start, end;

        make_workflow(t, "bench-soak", 1, wf, sizeof(wf));
        bench_report("bench_soak",
                     "duration=%llds window=%ds workers=%d backlog=%d batch=%d "
                     "(no-op single-node runs, topped up continuously)",
                     (long long)soak_ms / 1000, window_s, WORKERS, backlog, batch);
        PQclear(q(t->c, "VACUUM ANALYZE workflow_runs"));
        enqueue(t, wf, backlog);
        for (int i = 0; i < WORKERS; i++)
                w[i] = spawn_worker(t, 500, "10ms");
        start = bench_now_us();
        end = start + soak_ms * 1000;
        PQclear(q(t->c, "SELECT now()"));
        double t0 = qd(t->c, "SELECT extract(epoch FROM clock_timestamp())");
        double idx_warm = -1;
        int64_t next_size_at = start + 60 * 1000000LL, next_probe_at = start;
        int nps = 0, cap = (int)(soak_ms / 1000) + 16, feeder_checks = 0, feeder_dry = 0;
        struct probe_sample *ps = calloc((size_t)cap, sizeof(*ps));
        if (!ps)
                exit(1);
        while (bench_now_us() < end) {
                if (bench_now_us() >= next_probe_at && nps < cap) {
                        struct timespec now;
                        double cpu_ms = probe_machine();
                        clock_gettime(CLOCK_REALTIME, &now);
                        ps[nps++] = (struct probe_sample){
                            .at = (double)now.tv_sec + (double)now.tv_nsec / 1e9,
                            .cpu_ms = cpu_ms,
                            .host = host_mark_now(),
                            .reclaimed_mib = page_cache_reclaimed_mib(),
                            .workers_cpu_s = workers_cpu_s(w),
                            .feeder_checks = feeder_checks,
                            .feeder_dry = feeder_dry};
                        next_probe_at += 1000000;
                }
                if (bench_now_us() >= next_size_at) {
                        char key[64], split[96];
                        claim_index_split(t, split, sizeof(split));
                        snprintf(key, sizeof(key), "soak_claim_index_bytes_%03ds",
                                 (int)((next_size_at - start) / 1000000));
                        bench_report(key, "%s (queue rows now: %.0f)", split,
                                     qd(t->c, "SELECT count(*) FROM run_queue"));
                        next_size_at += 60 * 1000000LL;
                }
                if (idx_warm < 0 && bench_now_us() >= start + (int64_t)window_s * 1000000) {
                        idx_warm = claim_index_bytes(t);
                        bench_report("soak_claim_index_bytes_warm",
                                     "%.0f (after the first "
                                     "window)",
                                     idx_warm);
                }
                /* keep the queue non-empty without flooding it: a batch whenever it holds less
                 * than the backlog, a pause only when it is full. Until the thirty-second
                 * session the feeder paused 100 ms after every look: the workers took ~1,200
                 * runs in that pause, found the queue empty in up to 41 % of the feeder's looks
                 * and left the cores idle 12-22 % of the soak (docs/performance.md, "Issue 9:
                 * the soak's feeder starved its workers"). The narrow queue holds live runs
                 * only, so the look stays cheap however many completed runs pile up. */
                double queued = qd(t->c, "SELECT count(*) FROM run_queue WHERE claimed_by IS NULL");
                feeder_checks++;
                feeder_dry += queued < 1;
                if (queued < backlog)
                        enqueue(t, wf, batch);
                else
                        sleep_ms(20);
        }
        double t1 = qd(t->c, "SELECT extract(epoch FROM clock_timestamp())");
        bench_report("soak_claim_index_bytes_end", "%.0f (under load, autovacuum only)",
                     claim_index_bytes(t));
        for (int i = 0; i < WORKERS; i++)
                stop_worker(w[i]);
        /* completions per window, from finished_at */
        PGresult *res = q(t->c,
                          "SELECT floor((extract(epoch FROM finished_at) - %f) / %d)::int wi, "
                          "count(*) FROM workflow_runs WHERE workflow_id = '%s' AND status = "
                          "'completed' AND extract(epoch FROM finished_at) BETWEEN %f AND %f "
                          "GROUP BY 1 ORDER BY 1",
                          t0, window_s, wf, t0, t1);
        struct bench_spread windows = {0};
        int full_windows = (int)((t1 - t0) / window_s);
        for (int i = 0; i < PQntuples(res); i++) {
                int wi = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
                double rate = strtod(PQgetvalue(res, i, 1), NULL) / window_s;
                char key[64];
                if (wi >= full_windows)
                        continue; /* the last, partial window */
                snprintf(key, sizeof(key), "soak_window_%02d_runs_per_s", wi);
                bench_report(key, "%.0f", rate);
                if (wi == 0)
                        continue; /* warm-up: workers start inside the first window */
                bench_spread_add(&windows, rate);
        }
        PQclear(res);
        double mean = bench_spread_mean(&windows);
        if (windows.n > 0) {
                bench_report("soak_runs_per_s_mean", "%.0f (%.2fx baseline_commit_32c)", mean,
                             mean / base32c);
                bench_spread_report("soak_window_spread", &windows, "10 s windows 2..");
        }
        soak_minutes(t, wf, t0, t1, ps, nps);
        free(ps);
        /* the soak's connections were warm for most of it; baseline_commit_32c's were new
         * (bench_baseline.c): the same load over warmed connections */
        double warm = bench_baseline_commits_warm(t->b, 32, BENCH_WARM_MS);
        bench_report("soak_baseline_commit_32c_warm",
                     "%.0f (after the soak: 32 connections warmed %d s; the soak's mean is "
                     "%.2fx of it)",
                     warm, BENCH_WARM_MS / 1000, mean / warm);
        PQclear(q(t->c, "VACUUM run_queue"));
        bench_report("soak_claim_index_bytes_after", "%.0f (after VACUUM; %0.f runs in the table)",
                     claim_index_bytes(t), qd(t->c, "SELECT count(*) FROM workflow_runs"));
}

void bench_run_targets(const struct bench *b, struct embedded_pg *pg, double base1c, double base32c)
{
        struct targets t = {.b = b, .pg = pg};
        int quick = b->quick;
        double e50, e99, r50, r99, rate;

        t.c = bench_connect(b);
        t.worker_conninfo = embedded_pg_conninfo(pg, "agently_worker", EMBEDDED_PG_DATABASE);
        PGresult *res = q(t.c, "INSERT INTO users (name) VALUES ('bench') RETURNING id");
        snprintf(t.user_id, sizeof(t.user_id), "%s", PQgetvalue(res, 0, 0));
        PQclear(res);

        /* 1. no-op runs claimed and completed: as many as these two cores finish in about the
         * baselines' --duration (10,000 a second of it), so that both figures are measured over
         * a like stretch of time; 10,000, the count until the twenty-seventh session, took
         * 0.5-0.9 s, where a 50 ms pause of anything on the machine moved the ratio by 5-10 % */
        int64_t seconds = b->duration_ms / 1000 < 1 ? 1 : b->duration_ms / 1000;
        int nruns = b->runs > 0 ? b->runs
                    : quick     ? 2000
                            : (int)(seconds < 100 ? seconds * 10000 : 1000000); /* --runs' bound */
        if (bench_want(b, "runs")) {
                bench_report("bench_runs",
                             "runs=%d (pre-enqueued, 1 noop node) workers=%d "
                             "concurrency=500 poll=10ms",
                             nruns, WORKERS);
                double warm_rate = 0;
                rate = runs_throughput(&t, "bench-runs", nruns, "10ms", &warm_rate);
                bench_report("runs_claimed_completed_per_s", "%.0f (new workers)", rate);
                bench_report("runs_claimed_completed_ratio",
                             "%.3f (target >= 1.0x baseline_commit_32c; both over new "
                             "connections)",
                             rate / base32c);
                /* the same pair over warm connections: without huge pages a new backend's
                 * first seconds are slow, and 32 new connections pay more of it than two
                 * workers' few (docs/performance.md, "Fresh connections at half speed") */
                double warm32c = bench_baseline_commits_warm(b, 32, BENCH_WARM_MS);
                bench_report("baseline_commit_32c_warm",
                             "%.0f (32 connections that ran the same load for %d s first)", warm32c,
                             BENCH_WARM_MS / 1000);
                bench_report("runs_claimed_completed_warm_per_s",
                             "%.0f (%d more, pre-enqueued the same way, through the same "
                             "workers)",
                             warm_rate, nruns);
                bench_report("runs_claimed_completed_warm_ratio",
                             "%.3f (target >= 1.0x baseline_commit_32c_warm)", warm_rate / warm32c);
        }

        /* 2. step checkpoints with >= 32 runs in flight: no-op steps (planned in memory,
         * ~100 per commit), then http steps (each result committed before the next) */
        int cruns = quick ? 64 : 256, steps = quick ? 50 : 200;
        if (bench_want(b, "steps")) {
                bench_report("bench_steps",
                             "runs=%d steps_per_run=%d (noop chain) workers=%d "
                             "concurrency=%d",
                             cruns, steps, WORKERS, cruns);
                rate = checkpoints(&t, "bench-steps", cruns, steps, NULL);
                bench_report("step_checkpoints_per_s", "%.0f", rate);
                bench_report("step_checkpoints_ratio", "%.3f (target >= 0.6x baseline_commit_32c)",
                             rate / base32c);
        }

        t.receiver = bench_receiver_start();
        if (!t.receiver) {
                fprintf(stderr, "bench: could not start the local receiver\n");
                exit(1);
        }
        int eruns = quick ? 32 : 128, esteps = quick ? 10 : 20;
        if (bench_want(b, "effects")) {
                bench_report("bench_effect_steps",
                             "runs=%d steps_per_run=%d (chain of http POSTs to a local receiver) "
                             "workers=%d concurrency=%d",
                             eruns, esteps, WORKERS, eruns);
                rate =
                    checkpoints(&t, "bench-effects", eruns, esteps, bench_receiver_url(t.receiver));
                bench_report("effect_step_checkpoints_per_s", "%.0f", rate);
                bench_report("effect_step_checkpoints_ratio", "%.3f (of baseline_commit_32c)",
                             rate / base32c);
        }

        /* 3. a 5-step workflow alone, and 4. enqueue-to-start on an idle worker: a raw
         * INSERT, then through POST /v1/runs */
        int samples = quick ? 30 : 200;
        double a50, a99, ar50, ar99, naive, stolen, api_stolen;
        char api[64], token[AUTH_TOKEN_LEN + 1];
        if (bench_want(b, "latency")) {
                bench_settle(b, "latency", base1c);
                bench_report("bench_latency",
                             "samples=%d one at a time, idle worker (poll 500ms: "
                             "NOTIFY wakes it)",
                             samples);
                latency(&t, "bench-5step", 5, samples, NULL, NULL, &e50, &e99, &r50, &r99, &naive,
                        &stolen);
                bench_report("latency_host_steal_pct",
                             "%.1f (the share of the machine's CPU the host gave to others while "
                             "the raw INSERT samples ran; 0 on a machine of its own)",
                             stolen);
                bench_report("workflow_5step_p50_ms", "%.2f (started_at -> commit of the finish)",
                             r50);
                bench_report("workflow_5step_p99_ms", "%.2f", r99);
                /* in units of this run's single-connection commit (1/baseline_commit_1c):
                 * what the machine and its disk make of one commit this minute */
                bench_report("workflow_5step_commits",
                             "p50 %.2f p99 %.2f (x the single-connection commit, %.3f ms)",
                             r50 * base1c / 1000, r99 * base1c / 1000, 1000 / base1c);
                bench_report(
                    "workflow_5step_finished_at_p50_ms",
                    "%.2f (the old formula, finished_at - started_at: ends at the finishing "
                    "transaction's start)",
                    naive);
                bench_report("enqueue_to_start_p50_ms", "%.2f (raw INSERT)", e50);
                bench_report("enqueue_to_start_p99_ms", "%.2f", e99);
                /* in units of this run's single-connection commit (1/baseline_commit_1c):
                 * what a disk that commits faster or slower does not change */
                bench_report("enqueue_to_start_commits",
                             "p50 %.2f p99 %.2f (x the single-connection commit, %.3f ms)",
                             e50 * base1c / 1000, e99 * base1c / 1000, 1000 / base1c);
                pid_t api_pid = spawn_api(&t, api, sizeof(api), token);
                latency(&t, "bench-5step-api", 5, samples, api, token, &a50, &a99, &ar50, &ar99,
                        &naive, &api_stolen);
                stop_worker(api_pid);
                bench_report("enqueue_to_start_api_p50_ms",
                             "%.2f (POST /v1/runs sent -> started_at, same clock)", a50);
                bench_report("enqueue_to_start_api_p99_ms", "%.2f", a99);
                bench_report("latency_api_host_steal_pct",
                             "%.1f (the same, while the POST samples ran)", api_stolen);
                bench_report("enqueue_to_start_api_commits",
                             "p50 %.2f p99 %.2f (x the single-connection commit)",
                             a50 * base1c / 1000, a99 * base1c / 1000);
                bench_report("latency_targets",
                             "5step p50 %s (<= 2ms), enqueue_to_start p50 %s (<= 2ms) "
                             "p99 %s (<= 5ms)",
                             r50 <= 2 ? "met" : "MISSED", e50 <= 2 ? "met" : "MISSED",
                             e99 <= 5 ? "met" : "MISSED");
        }

        /* 5. one run with a 10,000-item http map, beside the receiver's own capacity */
        int items = quick ? 2000 : 10000;
        if (bench_want(b, "map")) {
                double cap = bench_receiver_capacity(t.receiver, 100, items * 2);
                bench_report("bench_map",
                             "items=%d concurrency=100 (http POSTs to the local receiver), "
                             "1 worker",
                             items);
                bench_report("receiver_capacity_per_s", "%.0f (100 keep-alive connections)", cap);
                rate = map_http(&t, items, 100);
                bench_report("map_http_items_per_s", "%.0f", rate);
                bench_report("map_http_ratio", "%.3f (of receiver_capacity_per_s)", rate / cap);
        }

        /* 5. soak */
        if (bench_want(b, "soak"))
                soak(&t, b->soak_ms > 0 ? b->soak_ms : (quick ? 20000 : 60000), base32c);

        bench_receiver_stop(t.receiver);
        free(t.worker_conninfo);
        PQfinish(t.c);
}
