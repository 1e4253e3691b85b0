/*
 * agently-bench: benchmarks that print `key=value` lines, each target a ratio against a
 * baseline measured in the same run on the same Postgres (the machine is shared and noisy:
 * only comparisons within one run mean anything). The harness starts its own durable
 * cluster (fsync on, synchronous_commit on), like `agently up` does.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <libpq-fe.h>

#include "llm_client.h"

struct bench {
        char *dir;            /* temp data dir of the cluster */
        char *owner_conninfo; /* superuser on the bench database */
        int64_t duration_ms;  /* per measurement */
        int quick;            /* smaller sizes, for a smoke run */
        int64_t soak_ms;      /* soak length (0 = default: 60s, 20s with --quick) */
        const char *only;     /* --only: comma-separated figures to measure (NULL: all) */
        int agents;           /* --agents N: concurrent agent runs of the density bench */
        int runs;             /* --runs N: no-op runs of each runs measurement (0: default) */
};

/* Whether the figure group `name` is to be measured (--only). */
bool bench_want(const struct bench *b, const char *name);

int64_t bench_now_us(void);

/* Prints one result line and flushes, so partial results survive an interrupted run. */
void bench_report(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The median of v[0..n) (sorts v); 0 when n is 0. */
double bench_median(double *v, int n);

/* A series of figures' spread (the soaks' windows): the least, the greatest and the mean,
 * added one figure at a time. Zeroed is empty. */
struct bench_spread {
        double lo, hi, sum;
        int n;
};
void bench_spread_add(struct bench_spread *s, double v);
double bench_spread_mean(const struct bench_spread *s);
/* Reports key as "min L max H mean M: -x% / +y% (note)", each extreme against the mean;
 * nothing for an empty series. */
void bench_spread_report(const char *key, const struct bench_spread *s, const char *note);

PGconn *bench_connect(const struct bench *b);

void bench_sleep_ms(int64_t ms);

/* Before a latency figure: the earlier phases' writes out of its way. A CHECKPOINT (their
 * dirty pages written now, not spread over the next minutes under the figure's own
 * commits), up to 60 s until no autovacuum worker is at work, then single commits until
 * they run at half of base1c's rate or better (the disk done with what it was handed),
 * the whole at most 60 s; prints how long each part took (settle_before). */
void bench_settle(const struct bench *b, const char *phase, double base1c);

/* `agently worker` (AGENTLY_BINARY) against conninfo, --concurrency concurrency --poll poll,
 * its output in <dir>/bench-N.log (its path into log[len] when log is not NULL;
 * AGENTLY_LOG_LEVEL=warn unless set). */
pid_t bench_spawn_worker(const struct bench *b, const char *conninfo, int concurrency,
                         const char *poll, char *log, size_t len);
/* SIGTERM, then SIGKILL after 30 s; reaps it (a worker, or an API from bench_start_api). */
void bench_stop_worker(pid_t pid);
/* `agently api` (AGENTLY_BINARY) on a free port of 127.0.0.1 (into *port) against b's
 * database as its owner, with b->dir as its data dir, AGENTLY_LOG_LEVEL=warn and the extra
 * arguments (NULL-terminated, or NULL); returns its pid once GET /readyz answers 200, exits
 * the bench when it has not within 30 s. */
pid_t bench_start_api(const struct bench *b, const char *const *extra, int *port);

struct embedded_pg;

/* The targets of docs/performance.md (runs, checkpoints, latency), printed as ratios of the
 * baselines measured just before. */
void bench_run_targets(const struct bench *b, struct embedded_pg *pg, double base1c,
                       double base32c);

/* Issue 10's figures (bench_agents.c): the journal's overhead per LLM call and the density
 * of agent runs in one worker, against a scripted local LLM server. */
void bench_run_agents(const struct bench *b, struct embedded_pg *pg, double base1c, double base32c);

/* A local HTTP receiver for the http steps (answers 200 at once); NULL on failure. */
struct bench_receiver;
struct bench_receiver *bench_receiver_start(void);
const char *bench_receiver_url(const struct bench_receiver *r);
void bench_receiver_stop(struct bench_receiver *r);
/* The receiver's own capacity: `requests` POSTs over `concurrency` keep-alive connections,
 * per second. */
double bench_receiver_capacity(const struct bench_receiver *r, int concurrency, int requests);
/* POSTs body with a bearer token; the answer into out (NUL-terminated, truncated to len).
 * Returns the HTTP status or -1. */
int bench_http_post(const char *url, const char *token, const char *body, char *out, size_t len);

/* Single-row INSERT + COMMIT per second with prepared statements over `connections` new
 * connections (one thread each) for b->duration_ms, their connecting included. */
double bench_baseline_commits(const struct bench *b, int connections);
/* The same over connections that have run that load for warm_ms first (a new backend runs
 * at about half speed for its first seconds: bench_baseline.c). BENCH_WARM_MS is the
 * warm-up every warm figure uses: past the ~15 s a new backend takes here. */
#define BENCH_WARM_MS 20000
double bench_baseline_commits_warm(const struct bench *b, int connections, int64_t warm_ms);
/* The 32-connection baseline run for soak_ms, its commits per 10 s and per minute printed
 * with their spread, beside which the soak's own spread is read (--only baseline_soak). */
void bench_baseline_soak(const struct bench *b, int64_t soak_ms);

/* A count of LLM calls made through src/llm's client (bench_llm.c): pass
 * bench_llm_tally_done (and bench_llm_tally_text) with the tally as userdata. A call whose
 * result stopped for `expected` counts in ok, any other (an error, another stop reason) in
 * failed; texts counts the streamed text deltas. */
struct bench_llm_tally {
        enum llm_stop_reason expected;
        int ok, failed, texts;
};
void bench_llm_tally_done(void *tally, struct llm_result *result, json_t *error,
                          const struct llm_call_info *info);
void bench_llm_tally_text(void *tally, const char *text, size_t len, int attempt);

/* LLM call density (bench_llm.c): `calls` concurrent ~5 s streaming calls through src/llm's
 * client on one loop against a local streaming server; prints completions, wall time, peak
 * sockets and the client's memory. Needs no database. */
void bench_llm_density(int calls);

/* The live fan-out (bench_sse.c): 1,000 event streams over 100 runs against a real
 * `agently api`; prints the delay from commit to client (p50, p99) and the API's database
 * transactions per second while the streams are idle. */
void bench_sse(const struct bench *b);

/* Reading a large run (bench_run_read.c): GET /v1/runs/{id} of a run of 20,005 events and
 * two 10,000-item maps against the same route for a small run, plus the rest of the run
 * page's first load, through a real `agently api`. */
void bench_run_read(const struct bench *b);
