/*
 * The baseline every target is a ratio of: how many single-row INSERT + COMMIT
 * transactions per second this Postgres does right now, with prepared statements, over 1
 * and over 32 connections.
 *
 * A new connection's backend runs at about half speed for its first ~15 s of such load on
 * this VM: it faults in Postgres's shared memory (the WAL buffers, the buffer pool) 4 KB at
 * a time, one page table per process (docs/performance.md, "Fresh connections at half
 * speed"). baseline_commit_* measure fresh connections, as the targets' fresh workers are;
 * the warm figure lets the soak, whose connections are long warm, be read against the same.
 */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct baseline_load {
        const struct bench *b;
        int connections;
        pthread_t *threads;
        atomic_int stop;
        atomic_long commits;
        atomic_int failed;
};

static void *baseline_thread(void *arg)
{
        struct baseline_load *l = arg;
        PGconn *c = bench_connect(l->b);
        PGresult *res = PQprepare(c, "ins", "INSERT INTO bench_baseline (v) VALUES ($1)", 1, NULL);

        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                atomic_store(&l->failed, 1);
        PQclear(res);
        while (!atomic_load(&l->failed) && !atomic_load(&l->stop)) {
                const char *params[] = {"1"};
                res = PQexecPrepared(c, "ins", 1, params, NULL, NULL, 0);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                        atomic_store(&l->failed, 1);
                else
                        atomic_fetch_add(&l->commits, 1);
                PQclear(res);
        }
        PQfinish(c);
        return NULL;
}

static void ensure_table(const struct bench *b)
{
        PGconn *c = bench_connect(b);

        PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, "
                          "v int NOT NULL, at timestamptz NOT NULL DEFAULT now())"));
        PQfinish(c);
}

/* Starts `connections` threads inserting until load_stop (each connects first, inside
 * the caller's clock). */
static struct baseline_load *load_start(const struct bench *b, int connections)
{
        struct baseline_load *l = calloc(1, sizeof(*l));

        if (!l || !(l->threads = calloc((size_t)connections, sizeof(*l->threads))))
                exit(1);
        l->b = b;
        l->connections = connections;
        for (int i = 0; i < connections; i++)
                pthread_create(&l->threads[i], NULL, baseline_thread, l);
        return l;
}

static void load_stop(struct baseline_load *l)
{
        atomic_store(&l->stop, 1);
        for (int i = 0; i < l->connections; i++)
                pthread_join(l->threads[i], NULL);
        if (atomic_load(&l->failed)) {
                fprintf(stderr, "bench: baseline insert failed\n");
                exit(1);
        }
        free(l->threads);
        free(l);
}

double bench_baseline_commits(const struct bench *b, int connections)
{
        ensure_table(b);
        int64_t start = bench_now_us();
        struct baseline_load *l = load_start(b, connections);

        bench_sleep_ms(b->duration_ms);
        long n = atomic_load(&l->commits);
        int64_t end = bench_now_us();
        load_stop(l);
        return (double)n / ((double)(end - start) / 1e6);
}

double bench_baseline_commits_warm(const struct bench *b, int connections, int64_t warm_ms)
{
        ensure_table(b);
        struct baseline_load *l = load_start(b, connections);

        bench_sleep_ms(warm_ms);
        long n0 = atomic_load(&l->commits);
        int64_t t0 = bench_now_us();
        bench_sleep_ms(b->duration_ms);
        long n1 = atomic_load(&l->commits);
        int64_t t1 = bench_now_us();
        load_stop(l);
        return (double)(n1 - n0) / ((double)(t1 - t0) / 1e6);
}

/* ---- the baseline as a soak ------------------------------------------------------------
 *
 * The soak's target (every one-minute window within +-10 % of the mean) asks as much of the
 * machine as of agently. This runs the 32-connection baseline itself for the soak's length,
 * counting its commits per 10 s, so that the machine's own minute-to-minute spread under
 * the simplest durable load can be read beside the soak's (docs/performance.md, "The
 * baseline as a soak"). */

void bench_baseline_soak(const struct bench *b, int64_t soak_ms)
{
        enum { CONNECTIONS = 32, WINDOW_S = 10 };
        int nwin = (int)(soak_ms / 1000 / WINDOW_S);
        double *win = calloc((size_t)nwin + 1, sizeof(*win));
        struct bench_spread windows = {0}, minutes = {0};

        if (!win || nwin < 1) {
                fprintf(stderr, "bench: baseline soak of %lld ms is too short\n",
                        (long long)soak_ms);
                exit(1);
        }
        bench_report("bench_baseline_soak",
                     "duration=%ds window=%ds connections=%d (single-row INSERT + COMMIT, "
                     "as baseline_commit_32c)",
                     nwin * WINDOW_S, WINDOW_S, CONNECTIONS);
        ensure_table(b);
        struct baseline_load *l = load_start(b, CONNECTIONS);
        int64_t at = bench_now_us();
        long last = atomic_load(&l->commits);
        for (int w = 0; w < nwin; w++) {
                int64_t next = at + (int64_t)WINDOW_S * 1000000;
                int64_t now = bench_now_us();
                if (next > now)
                        bench_sleep_ms((next - now) / 1000);
                now = bench_now_us();
                long n = atomic_load(&l->commits);
                win[w] = (double)(n - last) / ((double)(now - at) / 1e6);
                last = n;
                at = now;
                char key[64];
                snprintf(key, sizeof(key), "baseline_soak_window_%03d_commits_per_s", w);
                bench_report(key, "%.0f", win[w]);
                if (w > 0) /* the first, as the soak's, is the load's start */
                        bench_spread_add(&windows, win[w]);
        }
        load_stop(l);
        /* one-minute windows from the second on, as the soak's (soak_minute_spread) */
        for (int m = 1; (m + 1) * 6 <= nwin; m++) {
                double sum = 0;
                for (int k = 0; k < 6; k++)
                        sum += win[m * 6 + k];
                bench_spread_add(&minutes, sum / 6);
                char key[64];
                snprintf(key, sizeof(key), "baseline_soak_minute_%02d_commits_per_s", m + 1);
                bench_report(key, "%.0f", sum / 6);
        }
        bench_spread_report("baseline_soak_window_spread", &windows, "10 s windows 2..");
        char note[96];
        snprintf(note, sizeof(note), "one-minute windows 2..%d; compare soak_minute_spread",
                 minutes.n + 1);
        bench_spread_report("baseline_soak_minute_spread", &minutes, note);
        free(win);
}
