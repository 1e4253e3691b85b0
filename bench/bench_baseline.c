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
