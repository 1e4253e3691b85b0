/*
 * The live fan-out (`agently-bench --sse`): a real `agently api` on the bench's Postgres,
 * 1,000 event streams (GET /v1/runs/{id}/events/stream) over 100 runs, 10 viewers each,
 * opened from one thread with raw sockets and epoll. A writer thread appends events to the
 * runs (agently_append_event_unfenced, one event per transaction, round-robin) and notes
 * when each COMMIT returned; the reader notes when each stream received it. Printed: the
 * delay from commit to client over every (event, viewer) pair, p50/p99/max, and the
 * database transactions per second the API spends while the 1,000 streams sit idle (the
 * work that must follow the runs watched, not the viewers).
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth_token.h"

#define RUNS       100
#define VIEWERS    10
#define STREAMS    (RUNS * VIEWERS)
#define MAX_EVENTS 20000 /* per run */

struct sse_client {
        int fd;
        int run;
        char buf[8192];
        size_t len;
        bool header_done;
};

struct sse_bench {
        const struct bench *b;
        char run_ids[RUNS][40];
        int64_t first_seq[RUNS];          /* seq of the first timed event */
        int64_t (*commit_us)[MAX_EVENTS]; /* [run][seq - first_seq]: COMMIT returned */
        int events_per_s;
        int64_t write_ms;
        volatile int writing_done;
        int64_t written;
        int64_t *delays_us;
        size_t ndelays, cap;
        pthread_mutex_t lock;
};

static void must(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);

        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
                fprintf(stderr, "bench: %s: %s", sql, PQerrorMessage(c));
                exit(1);
        }
        PQclear(r);
}

static void *writer_main(void *arg)
{
        struct sse_bench *s = arg;
        PGconn *c = bench_connect(s->b);
        int64_t start = bench_now_us(), interval = 1000000 / s->events_per_s;
        char sql[256];

        for (int64_t i = 0;; i++) {
                int64_t due = start + i * interval, now = bench_now_us();
                if (now - start >= s->write_ms * 1000)
                        break;
                if (due > now)
                        usleep((useconds_t)(due - now));
                int run = (int)(i % RUNS);
                snprintf(sql, sizeof(sql),
                         "SELECT agently_append_event_unfenced('%s', 'bench.tick', NULL, NULL, "
                         "'info', 'tick', NULL)",
                         s->run_ids[run]);
                must(c, "BEGIN");
                PGresult *r = PQexec(c, sql);
                int64_t seq = PQresultStatus(r) == PGRES_TUPLES_OK
                                  ? strtoll(PQgetvalue(r, 0, 0), NULL, 10)
                                  : -1;
                PQclear(r);
                must(c, "COMMIT");
                int64_t at = bench_now_us();
                int64_t k = seq - s->first_seq[run];
                if (seq > 0 && k >= 0 && k < MAX_EVENTS) {
                        __atomic_store_n(&s->commit_us[run][k], at, __ATOMIC_RELEASE);
                        s->written++;
                }
        }
        PQfinish(c);
        s->writing_done = 1;
        return NULL;
}

/* Parses what a stream received: every "id: N" line is an event; its delay is recorded. */
static void consume(struct sse_bench *s, struct sse_client *cl, int64_t now)
{
        char *p = cl->buf, *end = cl->buf + cl->len;

        if (!cl->header_done) {
                char *h = memmem(p, cl->len, "\r\n\r\n", 4);
                if (!h)
                        return;
                p = h + 4;
                cl->header_done = true;
        }
        for (;;) {
                char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl)
                        break;
                if (nl - p > 4 && strncmp(p, "id: ", 4) == 0) {
                        int64_t seq = strtoll(p + 4, NULL, 10);
                        int64_t k = seq - s->first_seq[cl->run];
                        if (k >= 0 && k < MAX_EVENTS) {
                                int64_t at =
                                    __atomic_load_n(&s->commit_us[cl->run][k], __ATOMIC_ACQUIRE);
                                /* a commit not noted yet: the writer is between COMMIT and its
                                 * clock read, so the delay is about 0 */
                                int64_t d = at ? now - at : 0;
                                if (s->ndelays == s->cap) {
                                        s->cap = s->cap ? s->cap * 2 : 65536;
                                        s->delays_us =
                                            realloc(s->delays_us, s->cap * sizeof(int64_t));
                                }
                                s->delays_us[s->ndelays++] = d < 0 ? 0 : d;
                        }
                }
                p = nl + 1;
        }
        cl->len = (size_t)(end - p);
        memmove(cl->buf, p, cl->len);
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

        return x < y ? -1 : x > y;
}

static double xacts(PGconn *c)
{
        PGresult *r = PQexec(c, "SELECT pg_stat_clear_snapshot(); SELECT xact_commit + "
                                "xact_rollback FROM pg_stat_database WHERE datname = "
                                "current_database()");
        double v = PQresultStatus(r) == PGRES_TUPLES_OK ? strtod(PQgetvalue(r, 0, 0), NULL) : 0;

        PQclear(r);
        return v;
}

void bench_sse(const struct bench *b)
{
        struct sse_bench s = {.b = b,
                              .events_per_s = b->quick ? 100 : 200,
                              .write_ms = b->quick ? 5000 : b->duration_ms * 2};
        char token[AUTH_TOKEN_LEN + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1], hex[2 + 64 + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char sql[1024];
        struct rlimit rl;
        PGconn *c = bench_connect(b);

        pthread_mutex_init(&s.lock, NULL);
        s.commit_us = calloc(RUNS, sizeof(*s.commit_us));
        /* 1,000 sockets here and 1,000 in the API (which inherits this limit) */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192) {
                rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        auth_token_generate(token, hash, shown);
        auth_token_hash_hex(hash, hex);
        must(c, "INSERT INTO users (name, is_admin) VALUES ('sse-bench', false)");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) SELECT id, "
                 "'bench', '%s'::bytea, '%s' FROM users WHERE name = 'sse-bench'",
                 hex, shown);
        must(c, sql);
        must(c, "INSERT INTO workflows (user_id, name, version, definition, definition_sha256) "
                "SELECT id, 'sse-bench', 1, '{\"name\": \"sse-bench\", \"nodes\": []}', "
                "encode(sha256('sse-bench'), 'hex') "
                "FROM users WHERE name = 'sse-bench'");
        PGresult *ids = PQexec(
            c, "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, "
               "status, run_at) SELECT w.user_id, w.id, w.name, 1, 'waiting', 'infinity' FROM "
               "workflows w, generate_series(1, 100) WHERE w.name = 'sse-bench' RETURNING id");
        if (PQresultStatus(ids) != PGRES_TUPLES_OK || PQntuples(ids) != RUNS) {
                fprintf(stderr, "bench: could not create the runs: %s", PQerrorMessage(c));
                exit(1);
        }
        for (int i = 0; i < RUNS; i++) {
                snprintf(s.run_ids[i], sizeof(s.run_ids[i]), "%s", PQgetvalue(ids, i, 0));
                s.first_seq[i] = 1;
        }
        PQclear(ids);

        int port;
        pid_t api = bench_start_api(
            b, (const char *[]){"--max-connections", "4000", "--per-ip-connections", "4000", NULL},
            &port);

        /* open the streams: 10 per run */
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct sse_client *cl = calloc(STREAMS, sizeof(*cl));
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int open = 0;
        for (int i = 0; i < STREAMS; i++) {
                char req[512];
                cl[i].run = i % RUNS;
                cl[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (cl[i].fd < 0 || connect(cl[i].fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                        fprintf(stderr, "bench: stream %d: %s\n", i, strerror(errno));
                        continue;
                }
                snprintf(req, sizeof(req),
                         "GET /v1/runs/%s/events/stream HTTP/1.0\r\nAuthorization: Bearer "
                         "%s\r\n\r\n",
                         s.run_ids[cl[i].run], token);
                if (write(cl[i].fd, req, strlen(req)) < 0)
                        continue;
                fcntl(cl[i].fd, F_SETFL, O_NONBLOCK);
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cl[i]};
                epoll_ctl(ep, EPOLL_CTL_ADD, cl[i].fd, &ev);
                open++;
        }
        bench_report("sse_streams", "%d", open);
        bench_report("sse_runs", "%d", RUNS);

        /* idle: what do 1,000 open streams cost the database? */
        struct epoll_event evs[256];
        int64_t idle_until = bench_now_us() + 3000000;
        while (bench_now_us() < idle_until) { /* settle: headers, registrations */
                int k = epoll_wait(ep, evs, 256, 100);
                for (int i = 0; i < k; i++) {
                        struct sse_client *x = evs[i].data.ptr;
                        ssize_t got = read(x->fd, x->buf + x->len, sizeof(x->buf) - 1 - x->len);
                        if (got > 0) {
                                x->len += (size_t)got;
                                consume(&s, x, bench_now_us());
                        }
                }
        }
        double x0 = xacts(c);
        int64_t t0 = bench_now_us();
        usleep(5000000);
        double x1 = xacts(c);
        double idle = (x1 - x0 - 1) / ((double)(bench_now_us() - t0) / 1e6);
        bench_report("sse_idle_db_xacts_per_s", "%.1f", idle < 0 ? 0 : idle);
        s.ndelays = 0;

        pthread_t writer;
        pthread_create(&writer, NULL, writer_main, &s);
        int64_t stop_at = 0;
        for (;;) {
                if (s.writing_done && !stop_at)
                        stop_at = bench_now_us() + 2000000; /* the last events' delivery */
                if (stop_at && bench_now_us() > stop_at)
                        break;
                int k = epoll_wait(ep, evs, 256, 50);
                int64_t now = bench_now_us();
                for (int i = 0; i < k; i++) {
                        struct sse_client *x = evs[i].data.ptr;
                        ssize_t got = read(x->fd, x->buf + x->len, sizeof(x->buf) - 1 - x->len);
                        if (got > 0) {
                                x->len += (size_t)got;
                                consume(&s, x, now);
                        } else if (got == 0) {
                                epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                        }
                }
        }
        pthread_join(writer, NULL);
        qsort(s.delays_us, s.ndelays, sizeof(int64_t), cmp_i64);
        bench_report("sse_events_written", "%lld", (long long)s.written);
        bench_report("sse_deliveries", "%zu (expected %lld)", s.ndelays,
                     (long long)s.written * VIEWERS);
        if (s.ndelays) {
                bench_report("sse_event_p50_ms", "%.1f", s.delays_us[s.ndelays / 2] / 1000.0);
                bench_report("sse_event_p99_ms", "%.1f",
                             s.delays_us[s.ndelays * 99 / 100] / 1000.0);
                bench_report("sse_event_max_ms", "%.1f", s.delays_us[s.ndelays - 1] / 1000.0);
        }
        for (int i = 0; i < STREAMS; i++)
                if (cl[i].fd > 0)
                        close(cl[i].fd);
        close(ep);
        bench_stop_worker(api);
        free(cl);
        free(s.delays_us);
        free(s.commit_us);
        PQfinish(c);
}
