/*
 * Server-sent events for GET /v1/runs/{id}/events/stream, without holding a thread per
 * client. Each stream is an MHD callback response whose content reader hands out what is
 * buffered and, when the buffer is empty, suspends the connection and returns 0 (the
 * pattern microhttpd.h prescribes). One pump thread polls the logs table every 250 ms for
 * every open stream (one short transaction per stream, as that stream's user, so RLS
 * applies), appends new events, a `:` heartbeat after 15 s of silence, or the final `end`
 * event, and resumes the connection. A dead client is noticed when a heartbeat cannot be
 * written; MHD then closes the connection and the response's free callback marks the
 * stream closed so the pump forgets it. See README.md for why polling, not LISTEN.
 */
#include "api_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "strutil.h"

#define POLL_MS           250
#define HEARTBEAT_MS      15000
#define BATCH             200
#define MAX_BACKLOG       (256 * 1024) /* stop reading the database for a slow client */
#define STREAM_BUFFER_MAX (8 * 1024 * 1024)

struct sse_stream {
        struct sse_stream *next; /* hub list, under hub->lock */
        pthread_mutex_t lock;
        int refs; /* the hub's list and MHD's response */
        struct MHD_Connection *connection;
        char user_id[40];
        char run_id[40];
        int64_t last_seq;
        struct buf pending;
        size_t offset; /* bytes of pending already handed to MHD */
        int64_t last_write_ms;
        bool suspended, finished, closed;
};

struct api_sse_hub {
        struct api_server *server;
        pthread_t thread;
        pthread_mutex_t lock;
        struct sse_stream *streams;
        bool stopping, stopped;
};

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stream_unref(struct sse_stream *st)
{
        pthread_mutex_lock(&st->lock);
        int left = --st->refs;
        pthread_mutex_unlock(&st->lock);
        if (left == 0) {
                buf_free(&st->pending);
                pthread_mutex_destroy(&st->lock);
                free(st);
        }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
        struct sse_stream *st = cls;
        ssize_t n = 0;

        pthread_mutex_lock(&st->lock);
        if (st->offset < st->pending.len) {
                size_t left = st->pending.len - st->offset;
                n = (ssize_t)(left < max ? left : max);
                memcpy(out, st->pending.data + st->offset, (size_t)n);
                st->offset += (size_t)n;
                if (st->offset == st->pending.len) {
                        buf_reset(&st->pending);
                        st->offset = 0;
                }
                st->last_write_ms = now_ms();
        } else if (st->finished) {
                n = MHD_CONTENT_READER_END_OF_STREAM;
        } else {
                /* nothing to send: park the connection until the pump has something */
                st->suspended = true;
                MHD_suspend_connection(st->connection);
        }
        pthread_mutex_unlock(&st->lock);
        return n;
}

static void stream_free(void *cls)
{
        struct sse_stream *st = cls;

        pthread_mutex_lock(&st->lock);
        st->closed = true;
        st->suspended = false;
        pthread_mutex_unlock(&st->lock);
        stream_unref(st);
}

struct MHD_Response *api_sse_open(struct api_sse_hub *hub, struct MHD_Connection *connection,
                                  const char *user_id, const char *run_id, int64_t after)
{
        struct sse_stream *st = calloc(1, sizeof(*st));
        struct MHD_Response *mr;

        if (!st)
                return NULL;
        pthread_mutex_init(&st->lock, NULL);
        buf_init(&st->pending, STREAM_BUFFER_MAX);
        st->connection = connection;
        st->refs = 2;
        st->last_seq = after;
        st->last_write_ms = now_ms();
        str_copy(st->user_id, sizeof(st->user_id), user_id);
        str_copy(st->run_id, sizeof(st->run_id), run_id);
        /* tells EventSource how long to wait before reconnecting */
        buf_append_str(&st->pending, "retry: 2000\n\n");

        mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, st,
                                               stream_free);
        if (!mr) {
                buf_free(&st->pending);
                pthread_mutex_destroy(&st->lock);
                free(st);
                return NULL;
        }
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(mr, "X-Accel-Buffering", "no");
        pthread_mutex_lock(&hub->lock);
        if (hub->stopping)
                st->finished = true;
        st->next = hub->streams;
        hub->streams = st;
        pthread_mutex_unlock(&hub->lock);
        return mr;
}

/* Reads the events after st->last_seq into out; *terminal_status set (malloc'd) when the
 * run is finished and every event has been read. Returns 0, -ENOENT when the run is gone,
 * or a negative errno from the database. */
static int poll_stream(PGconn *c, const char *user_id, const char *run_id, int64_t after,
                       struct buf *out, int64_t *last_seq, char **terminal_status)
{
        _cleanup_free_ char *after_s = str_printf("%lld", (long long)after);
        _cleanup_free_ char *limit_s = str_printf("%d", BATCH);
        const char *params[] = {run_id, after_s, limit_s};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r, n;

        if (!after_s || !limit_s)
                return -ENOMEM;
        r = db_begin(c);
        if (r < 0)
                return r;
        r = db_set_user(c, user_id);
        if (r < 0)
                goto fail;
        /* one statement, one snapshot: a terminal status implies that every event written
         * before it is visible in the same read */
        res = db_query(c,
                       "SELECT r.status, e.seq, e.kind, e.body FROM "
                       "  (SELECT status FROM workflow_runs WHERE id = $1) r "
                       "LEFT JOIN LATERAL (SELECT seq, kind, " API_EVENT_JSON " AS body "
                       "  FROM logs WHERE workflow_run_id = $1 AND seq > $2::bigint "
                       "  ORDER BY seq LIMIT $3::integer) e ON true "
                       "ORDER BY e.seq",
                       3, params, &r);
        if (!res)
                goto fail;
        db_commit(c);
        n = PQntuples(res);
        if (n == 0)
                return -ENOENT;
        int events = 0;
        for (int i = 0; i < n; i++) {
                if (PQgetisnull(res, i, 1))
                        continue;
                int64_t seq;
                if (str_to_int64(PQgetvalue(res, i, 1), &seq) < 0)
                        continue;
                char kind[128];
                str_copy(kind, sizeof(kind), PQgetvalue(res, i, 2));
                for (char *p = kind; *p; p++)
                        if (*p == '\n' || *p == '\r')
                                *p = ' ';
                r = buf_printf(out, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)seq, kind,
                               PQgetvalue(res, i, 3));
                if (r < 0)
                        return r;
                *last_seq = seq;
                events++;
        }
        const char *status = PQgetvalue(res, 0, 0);
        if (events < BATCH && (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
                               strcmp(status, "canceled") == 0)) {
                *terminal_status = strdup(status);
                if (!*terminal_status)
                        return -ENOMEM;
        }
        return 0;
fail:
        db_rollback(c);
        return r;
}

static void pump_once(struct api_sse_hub *hub, bool stopping)
{
        struct sse_stream **list = NULL;
        size_t n = 0, cap = 0;
        PGconn *c = NULL;
        bool db_failed = false;

        /* take a reference to every open stream; drop the closed ones from the list */
        pthread_mutex_lock(&hub->lock);
        for (struct sse_stream **pp = &hub->streams; *pp;) {
                struct sse_stream *st = *pp;
                pthread_mutex_lock(&st->lock);
                bool closed = st->closed;
                if (!closed)
                        st->refs++;
                pthread_mutex_unlock(&st->lock);
                if (closed) {
                        *pp = st->next;
                        stream_unref(st);
                        continue;
                }
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        struct sse_stream **nl = realloc(list, ncap * sizeof(*nl));
                        if (!nl) {
                                stream_unref(st);
                                break;
                        }
                        list = nl;
                        cap = ncap;
                }
                list[n++] = st;
                pp = &st->next;
        }
        pthread_mutex_unlock(&hub->lock);

        for (size_t i = 0; i < n; i++) {
                struct sse_stream *st = list[i];
                _cleanup_buf_ struct buf fresh;
                _cleanup_free_ char *terminal = NULL;
                int64_t last_seq;
                bool want_poll;
                int r = 0;

                buf_init(&fresh, STREAM_BUFFER_MAX / 2);
                pthread_mutex_lock(&st->lock);
                last_seq = st->last_seq;
                want_poll =
                    !st->finished && !stopping && st->pending.len - st->offset < MAX_BACKLOG;
                pthread_mutex_unlock(&st->lock);

                if (want_poll && !db_failed) {
                        if (!c) {
                                c = api_pool_acquire(hub->server, &r);
                                if (!c)
                                        db_failed = true;
                        }
                        if (c) {
                                r = poll_stream(c, st->user_id, st->run_id, last_seq, &fresh,
                                                &last_seq, &terminal);
                                if (r < 0 && r != -ENOENT && PQstatus(c) != CONNECTION_OK) {
                                        api_pool_release(hub->server, c, true);
                                        c = NULL;
                                        db_failed = true; /* retry next tick; keep streams */
                                }
                        }
                }

                pthread_mutex_lock(&st->lock);
                if (fresh.len && buf_append(&st->pending, fresh.data, fresh.len) == 0)
                        st->last_seq = last_seq;
                if (r == -ENOENT && !st->finished) {
                        buf_printf(&st->pending,
                                   "event: end\ndata: {\"run_id\":\"%s\","
                                   "\"status\":null}\n\n",
                                   st->run_id);
                        st->finished = true;
                } else if (terminal && !st->finished && st->last_seq == last_seq) {
                        buf_printf(&st->pending,
                                   "event: end\ndata: {\"run_id\":\"%s\",\"status\":\"%s\"}\n\n",
                                   st->run_id, terminal);
                        st->finished = true;
                }
                if (stopping && !st->finished) {
                        buf_append_str(&st->pending, ": server shutting down; reconnect with "
                                                     "Last-Event-ID\n\n");
                        st->finished = true;
                }
                if (st->pending.len == st->offset && !st->finished &&
                    now_ms() - st->last_write_ms >= HEARTBEAT_MS) {
                        buf_append_str(&st->pending, ": keep-alive\n\n");
                        st->last_write_ms = now_ms();
                }
                if (st->suspended && !st->closed &&
                    (st->pending.len > st->offset || st->finished)) {
                        st->suspended = false;
                        MHD_resume_connection(st->connection);
                }
                pthread_mutex_unlock(&st->lock);
                stream_unref(st);
        }
        if (c)
                api_pool_release(hub->server, c, false);
        free(list);
}

static void *pump_main(void *arg)
{
        struct api_sse_hub *hub = arg;

        for (;;) {
                pthread_mutex_lock(&hub->lock);
                bool stopping = hub->stopping;
                bool empty = hub->streams == NULL;
                pthread_mutex_unlock(&hub->lock);
                if (stopping && empty)
                        break;
                pump_once(hub, stopping);
                usleep(POLL_MS * 1000);
        }
        return NULL;
}

int api_sse_hub_start(struct api_server *server, struct api_sse_hub **out)
{
        struct api_sse_hub *hub = calloc(1, sizeof(*hub));
        int r;

        if (!hub)
                return -ENOMEM;
        hub->server = server;
        pthread_mutex_init(&hub->lock, NULL);
        r = pthread_create(&hub->thread, NULL, pump_main, hub);
        if (r != 0) {
                pthread_mutex_destroy(&hub->lock);
                free(hub);
                return -r;
        }
        *out = hub;
        return 0;
}

void api_sse_hub_stop(struct api_sse_hub *hub, int timeout_ms)
{
        int64_t deadline = now_ms() + timeout_ms;

        if (!hub)
                return;
        pthread_mutex_lock(&hub->lock);
        hub->stopping = true;
        pthread_mutex_unlock(&hub->lock);
        /* the pump ends every stream and resumes it; wait until MHD has closed them all */
        for (;;) {
                pthread_mutex_lock(&hub->lock);
                bool open = false;
                for (struct sse_stream *st = hub->streams; st; st = st->next) {
                        pthread_mutex_lock(&st->lock);
                        open |= !st->closed;
                        pthread_mutex_unlock(&st->lock);
                }
                pthread_mutex_unlock(&hub->lock);
                if (!open || now_ms() >= deadline)
                        break;
                usleep(50 * 1000);
        }
        /* streams MHD has not closed yet keep their response reference; the daemon's stop
         * closes them and the free callbacks release them */
        pthread_mutex_lock(&hub->lock);
        for (struct sse_stream *st = hub->streams; st;) {
                struct sse_stream *next = st->next;
                pthread_mutex_lock(&st->lock);
                st->closed = true; /* no resume from here on */
                pthread_mutex_unlock(&st->lock);
                st = next;
        }
        pthread_mutex_unlock(&hub->lock);
        pthread_join(hub->thread, NULL);
        for (struct sse_stream *st = hub->streams; st;) {
                struct sse_stream *next = st->next;
                stream_unref(st);
                st = next;
        }
        pthread_mutex_destroy(&hub->lock);
        free(hub);
}
