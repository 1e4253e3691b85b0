/*
 * The baseline every target is a ratio of: how many single-row INSERT + COMMIT
 * transactions per second this Postgres does right now, with prepared statements, over 1
 * and over 32 connections.
 */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct baseline_thread {
        const struct bench *b;
        int64_t deadline_us;
        long commits;
        int failed;
};

static void *baseline_thread(void *arg)
{
        struct baseline_thread *t = arg;
        PGconn *c = bench_connect(t->b);
        PGresult *res = PQprepare(c, "ins", "INSERT INTO bench_baseline (v) VALUES ($1)", 1, NULL);

        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                t->failed = 1;
        PQclear(res);
        while (!t->failed && bench_now_us() < t->deadline_us) {
                const char *params[] = {"1"};
                res = PQexecPrepared(c, "ins", 1, params, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        t->failed = 1;
                else
                        t->commits++;
                PQclear(res);
        }
        PQfinish(c);
        return NULL;
}

double bench_baseline_commits(const struct bench *b, int connections)
{
        pthread_t *threads = calloc((size_t)connections, sizeof(*threads));
        struct baseline_thread *ts = calloc((size_t)connections, sizeof(*ts));
        PGconn *c = bench_connect(b);
        int64_t start, end;
        long total = 0;

        PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, "
                          "v int NOT NULL, at timestamptz NOT NULL DEFAULT now())"));
        PQfinish(c);
        start = bench_now_us();
        for (int i = 0; i < connections; i++) {
                ts[i].b = b;
                ts[i].deadline_us = start + b->duration_ms * 1000;
                pthread_create(&threads[i], NULL, baseline_thread, &ts[i]);
        }
        for (int i = 0; i < connections; i++) {
                pthread_join(threads[i], NULL);
                if (ts[i].failed) {
                        fprintf(stderr, "bench: baseline insert failed\n");
                        exit(1);
                }
                total += ts[i].commits;
        }
        end = bench_now_us();
        free(threads);
        free(ts);
        return (double)total / ((double)(end - start) / 1e6);
}

/* ---- the baseline as a soak ------------------------------------------------------------
 *
 * The soak's target (every one-minute window within +-10 % of the mean) asks as much of the
 * machine as of agently. This runs the 32-connection baseline itself for the soak's length,
 * counting its commits per 10 s, so that the machine's own minute-to-minute spread under
 * the simplest durable load can be read beside the soak's (docs/performance.md, "The
 * baseline as a soak"). */

struct soak_thread {
        const struct bench *b;
        const atomic_int *stop;
        atomic_long *commits;
        int failed;
};

static void *soak_thread(void *arg)
{
        struct soak_thread *t = arg;
        PGconn *c = bench_connect(t->b);
        PGresult *res = PQprepare(c, "ins", "INSERT INTO bench_baseline (v) VALUES ($1)", 1, NULL);

        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                t->failed = 1;
        PQclear(res);
        while (!t->failed && !atomic_load(t->stop)) {
                const char *params[] = {"1"};
                res = PQexecPrepared(c, "ins", 1, params, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        t->failed = 1;
                else
                        atomic_fetch_add(t->commits, 1);
                PQclear(res);
        }
        PQfinish(c);
        return NULL;
}

/* min, max and mean of v[0..n) into *lo, *hi, *mean */
static void spread_of(const double *v, int n, double *lo, double *hi, double *mean)
{
        double sum = 0;

        *lo = *hi = v[0];
        for (int i = 0; i < n; i++) {
                *lo = v[i] < *lo ? v[i] : *lo;
                *hi = v[i] > *hi ? v[i] : *hi;
                sum += v[i];
        }
        *mean = sum / n;
}

void bench_baseline_soak(const struct bench *b, int64_t soak_ms)
{
        enum { CONNECTIONS = 32, WINDOW_S = 10 };
        int nwin = (int)(soak_ms / 1000 / WINDOW_S);
        pthread_t threads[CONNECTIONS];
        struct soak_thread ts[CONNECTIONS];
        atomic_int stop = 0;
        atomic_long commits = 0;
        double *win = calloc((size_t)nwin + 1, sizeof(*win));
        double *minute = calloc((size_t)nwin / 6 + 1, sizeof(*minute));

        if (!win || !minute || nwin < 1) {
                fprintf(stderr, "bench: baseline soak of %lld ms is too short\n",
                        (long long)soak_ms);
                exit(1);
        }
        bench_report("bench_baseline_soak",
                     "duration=%ds window=%ds connections=%d (single-row INSERT + COMMIT, "
                     "as baseline_commit_32c)",
                     nwin * WINDOW_S, WINDOW_S, CONNECTIONS);
        for (int i = 0; i < CONNECTIONS; i++) {
                ts[i] = (struct soak_thread){.b = b, .stop = &stop, .commits = &commits};
                pthread_create(&threads[i], NULL, soak_thread, &ts[i]);
        }
        int64_t at = bench_now_us();
        long last = atomic_load(&commits);
        for (int w = 0; w < nwin; w++) {
                int64_t next = at + (int64_t)WINDOW_S * 1000000;
                int64_t now = bench_now_us();
                if (next > now)
                        bench_sleep_ms((next - now) / 1000);
                now = bench_now_us();
                long n = atomic_load(&commits);
                win[w] = (double)(n - last) / ((double)(now - at) / 1e6);
                last = n;
                at = now;
                char key[64];
                snprintf(key, sizeof(key), "baseline_soak_window_%03d_commits_per_s", w);
                bench_report(key, "%.0f", win[w]);
        }
        atomic_store(&stop, 1);
        for (int i = 0; i < CONNECTIONS; i++) {
                pthread_join(threads[i], NULL);
                if (ts[i].failed) {
                        fprintf(stderr, "bench: baseline insert failed\n");
                        exit(1);
                }
        }
        /* one-minute windows from the second on, as the soak's (soak_minute_spread) */
        int nmin = 0;
        for (int m = 1; (m + 1) * 6 <= nwin; m++) {
                double sum = 0;
                for (int k = 0; k < 6; k++)
                        sum += win[m * 6 + k];
                minute[nmin++] = sum / 6;
                char key[64];
                snprintf(key, sizeof(key), "baseline_soak_minute_%02d_commits_per_s", m + 1);
                bench_report(key, "%.0f", sum / 6);
        }
        double lo, hi, mean;
        if (nwin > 1) {
                spread_of(win + 1, nwin - 1, &lo, &hi, &mean);
                bench_report("baseline_soak_window_spread",
                             "min %.0f max %.0f mean %.0f: %+.1f%% / %+.1f%% (10 s windows 2..)",
                             lo, hi, mean, 100 * (lo - mean) / mean, 100 * (hi - mean) / mean);
        }
        if (nmin > 0) {
                spread_of(minute, nmin, &lo, &hi, &mean);
                bench_report("baseline_soak_minute_spread",
                             "min %.0f max %.0f mean %.0f: %+.1f%% / %+.1f%% (one-minute "
                             "windows 2..%d; compare soak_minute_spread)",
                             lo, hi, mean, 100 * (lo - mean) / mean, 100 * (hi - mean) / mean,
                             nmin + 1);
        }
        free(win);
        free(minute);
}
