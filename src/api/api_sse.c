/*
 * Server-sent events for GET /v1/runs/{id}/events/stream, without holding a thread per
 * client, and with database work that grows with the runs being watched, not with the
 * viewers. Each stream is an MHD callback response whose content reader hands out what is
 * buffered and, when the buffer is empty, suspends the connection and returns 0 (the
 * pattern microhttpd.h prescribes). One pump thread serves every stream:
 *
 *  - streams of the same run share a *watch*; a watched run is registered in
 *    agently_watched_runs (0018), and every commit that writes events for it NOTIFYs
 *    agently_events with its id; the pump LISTENs on its own connection and sleeps in
 *    poll() until a notification (or a new stream, or the next tick) wakes it;
 *  - a notified run is read once, after the lowest position of its streams, and the new
 *    events go to each of its streams; the reads of all due runs of one user are one
 *    statement (one snapshot);
 *  - polling is the fallback: every watched run is read at least every 2 s, and every
 *    250 ms while the LISTEN connection is down (it is reopened every few seconds);
 *  - a `:` heartbeat after 15 s of silence detects dead clients (MHD then closes the
 *    connection and the response's free callback marks the stream closed), and a run that
 *    is finished and read to its end gets `event: end`.
 * See README.md, "SSE: shared reads, woken by NOTIFY".
 */
#include "api_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "strutil.h"

#define TICK_MS           250   /* the longest sleep: heartbeats, closed streams */
#define FALLBACK_MS       2000  /* a watched run is read at least this often */
#define REGISTER_MS       20000 /* registrations are refreshed this often (they last 60 s) */
#define RECONNECT_MS      3000  /* between attempts to reopen the LISTEN connection */
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

/* A run with open streams; owned by the pump thread alone. */
struct watch {
        struct watch *next;
        char user_id[40];
        char run_id[40];
        int64_t last_read_ms;
        int64_t registered_ms; /* 0: not registered (yet, or the database failed) */
        bool notified;
        int streams; /* open streams seen this tick */
};

/* One event read for a watch, formatted once for all its streams. */
struct sse_event {
        int64_t seq;
        size_t offset, len; /* in the batch's text */
};

struct watch_read {
        struct watch *w;
        int64_t after;
        struct buf text;
        struct sse_event *events;
        size_t nevents, cap;
        bool full;         /* BATCH events: more may follow at once */
        char terminal[16]; /* the run's final status when read to its end, else "" */
        bool gone;         /* the run does not exist (for this user) any more */
        bool done;         /* the read succeeded */
};

struct api_sse_hub {
        struct api_server *server;
        pthread_t thread;
        pthread_mutex_t lock;
        struct sse_stream *streams;
        bool stopping;
        int wake_fd; /* eventfd: a new stream or the stop */
        /* pump thread only */
        PGconn *listen; /* LISTEN agently_events; also runs the reads */
        int64_t listen_retry_ms;
        struct watch *watches;
};

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hub_wake(struct api_sse_hub *hub)
{
        uint64_t one = 1;

        if (write(hub->wake_fd, &one, sizeof(one)) < 0) {
                /* the counter is saturated: the pump is awake anyway */
        }
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
        hub_wake(hub); /* its first read now, not at the next tick */
        return mr;
}

/* ---- the LISTEN connection ---------------------------------------------------------- */

static void listen_close(struct api_sse_hub *hub)
{
        if (hub->listen)
                PQfinish(hub->listen);
        hub->listen = NULL;
        hub->listen_retry_ms = now_ms() + RECONNECT_MS;
        for (struct watch *w = hub->watches; w; w = w->next)
                w->registered_ms = 0; /* register again on the next connection */
}

static void listen_open(struct api_sse_hub *hub)
{
        PGconn *c = NULL;

        if (hub->listen || now_ms() < hub->listen_retry_ms)
                return;
        /* named, so pg_stat_activity tells the hub's listener from the pool's connections */
        if (api_db_connect(hub->server, &c) < 0 ||
            db_exec(c, "SET application_name = 'agently api events'; LISTEN agently_events") < 0) {
                if (c)
                        PQfinish(c);
                hub->listen_retry_ms = now_ms() + RECONNECT_MS;
                return;
        }
        hub->listen = c;
}

/* Marks the watches the notifications name; false when the connection broke. */
static bool listen_drain(struct api_sse_hub *hub)
{
        PGnotify *n;

        if (!hub->listen)
                return true;
        if (!PQconsumeInput(hub->listen))
                return false;
        while ((n = PQnotifies(hub->listen))) {
                for (struct watch *w = hub->watches; w; w = w->next)
                        if (strcmp(w->run_id, n->extra) == 0)
                                w->notified = true;
                PQfreemem(n);
        }
        return true;
}

/* ---- watches ----------------------------------------------------------------------- */

static struct watch *watch_find(struct api_sse_hub *hub, const char *user_id, const char *run_id,
                                bool create)
{
        struct watch *w;

        for (w = hub->watches; w; w = w->next)
                if (strcmp(w->run_id, run_id) == 0 && strcmp(w->user_id, user_id) == 0)
                        return w;
        if (!create || !(w = calloc(1, sizeof(*w))))
                return NULL;
        str_copy(w->user_id, sizeof(w->user_id), user_id);
        str_copy(w->run_id, sizeof(w->run_id), run_id);
        w->notified = true; /* read at once */
        w->next = hub->watches;
        hub->watches = w;
        return w;
}

/* Registers (or refreshes, or with drop removes) w in agently_watched_runs, committed. */
static int watch_register(PGconn *c, struct watch *w, bool drop)
{
        const char *params[] = {w->run_id};
        int r = db_begin(c);

        if (r == 0)
                r = db_set_user(c, w->user_id);
        /* visible at commit is all the trigger needs; losing one in a crash costs nothing, so
         * the pump does not wait for the WAL flush (100 refreshes must not stall it) */
        if (r == 0)
                r = db_exec(c, "SET LOCAL synchronous_commit = off");
        if (r == 0) {
                _cleanup_pgresult_ PGresult *res = db_query(
                    c,
                    drop ? "DELETE FROM agently_watched_runs WHERE run_id = $1::uuid"
                         : "INSERT INTO agently_watched_runs (run_id, user_id, expires_at) "
                           "SELECT id, user_id, now() + interval '60 seconds' FROM workflow_runs "
                           "WHERE id = $1::uuid ON CONFLICT (run_id) DO UPDATE "
                           "SET expires_at = EXCLUDED.expires_at",
                    1, params, &r);
                if (res)
                        r = 0;
        }
        if (r == 0)
                return db_commit(c);
        db_rollback(c);
        return r;
}

/* Forgets the watches without streams (unregistering them) and registers the new ones. */
static void watches_maintain(struct api_sse_hub *hub, bool stopping)
{
        int64_t now = now_ms();

        for (struct watch **pp = &hub->watches; *pp;) {
                struct watch *w = *pp;
                if (w->streams == 0 || stopping) {
                        if (hub->listen && w->registered_ms &&
                            watch_register(hub->listen, w, true) < 0 &&
                            PQstatus(hub->listen) != CONNECTION_OK)
                                listen_close(hub);
                        *pp = w->next;
                        free(w);
                        continue;
                }
                if (hub->listen && (!w->registered_ms || now - w->registered_ms >= REGISTER_MS)) {
                        if (watch_register(hub->listen, w, false) == 0) {
                                w->registered_ms = now;
                        } else if (PQstatus(hub->listen) != CONNECTION_OK) {
                                listen_close(hub);
                        }
                }
                pp = &w->next;
        }
}

/* ---- reads ------------------------------------------------------------------------- */

static int read_add_event(struct watch_read *rd, int64_t seq, const char *kind, const char *body)
{
        char clean[128];
        size_t start = rd->text.len;
        int r;

        str_copy(clean, sizeof(clean), kind);
        for (char *p = clean; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
        r = buf_printf(&rd->text, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)seq, clean, body);
        if (r < 0)
                return r;
        if (rd->nevents == rd->cap) {
                size_t ncap = rd->cap ? rd->cap * 2 : 16;
                struct sse_event *ne = realloc(rd->events, ncap * sizeof(*ne));
                if (!ne)
                        return -ENOMEM;
                rd->events = ne;
                rd->cap = ncap;
        }
        rd->events[rd->nevents++] = (struct sse_event){seq, start, rd->text.len - start};
        return 0;
}

/*
 * Reads, in one statement (one snapshot) as user_id, the events after rd[i].after of every
 * run of rd[0..n) (all that user's), at most BATCH each, with each run's status: a final
 * status with fewer than BATCH events means the run was read to its end. 0 or -errno.
 */
static int read_runs(PGconn *c, const char *user_id, struct watch_read *rd, size_t n)
{
        _cleanup_buf_ struct buf ids, afters;
        _cleanup_pgresult_ PGresult *res = NULL;
        char batch[16];
        int r;

        buf_init(&ids, 64 * 1024);
        buf_init(&afters, 64 * 1024);
        buf_append_str(&ids, "{");
        buf_append_str(&afters, "{");
        for (size_t i = 0; i < n; i++) {
                buf_printf(&ids, "%s%s", i ? "," : "", rd[i].w->run_id);
                buf_printf(&afters, "%s%lld", i ? "," : "", (long long)rd[i].after);
        }
        buf_append_str(&ids, "}");
        if (buf_append_str(&afters, "}") < 0 || !ids.data)
                return -ENOMEM;
        snprintf(batch, sizeof(batch), "%d", BATCH);
        const char *params[] = {ids.data, afters.data, batch};
        r = db_begin(c);
        if (r < 0)
                return r;
        r = db_set_user(c, user_id);
        if (r == 0)
                res = db_query(c,
                               "SELECT w.ord, r.status, e.seq, e.kind, e.body FROM "
                               "unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY "
                               "  AS w(run_id, after, ord) "
                               "JOIN workflow_runs r ON r.id = w.run_id "
                               "LEFT JOIN LATERAL (SELECT seq, kind, " API_EVENT_JSON " AS body "
                               "  FROM logs WHERE workflow_run_id = w.run_id AND seq > w.after "
                               "  ORDER BY seq LIMIT $3::integer) e ON true "
                               "ORDER BY w.ord, e.seq",
                               3, params, &r);
        if (!res) {
                db_rollback(c);
                return r;
        }
        r = db_commit(c);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                rd[i].gone = true; /* unless a row says otherwise */
        for (int row = 0; row < PQntuples(res); row++) {
                int64_t ord, seq;
                if (str_to_int64(PQgetvalue(res, row, 0), &ord) < 0 || ord < 1 || (size_t)ord > n)
                        continue;
                struct watch_read *x = &rd[ord - 1];
                x->gone = false;
                str_copy(x->terminal, sizeof(x->terminal), PQgetvalue(res, row, 1));
                if (PQgetisnull(res, row, 2) || str_to_int64(PQgetvalue(res, row, 2), &seq) < 0)
                        continue;
                r = read_add_event(x, seq, PQgetvalue(res, row, 3), PQgetvalue(res, row, 4));
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < n; i++) {
                struct watch_read *x = &rd[i];
                bool final = strcmp(x->terminal, "completed") == 0 ||
                             strcmp(x->terminal, "failed") == 0 ||
                             strcmp(x->terminal, "canceled") == 0;
                x->full = x->nevents >= BATCH;
                if (!final || x->full)
                        x->terminal[0] = '\0';
                x->done = true;
        }
        return 0;
}

/* ---- the pump ---------------------------------------------------------------------- */

/* What the pump saw of one stream this tick. */
struct stream_view {
        struct sse_stream *st;
        struct watch *w;
        int64_t last_seq;
        bool wants; /* open, not finished, not backlogged */
};

static int by_user(const void *a, const void *b)
{
        const struct watch_read *x = a, *y = b;

        return strcmp(x->w->user_id, y->w->user_id);
}

/* One pass: reads what is due and feeds every stream. Returns true when a read came back
 * full (more events are waiting: no sleep before the next pass). */
static bool pump_once(struct api_sse_hub *hub, bool stopping)
{
        struct stream_view *views = NULL;
        struct watch_read *reads = NULL;
        size_t n = 0, cap = 0, nreads = 0;
        int64_t now = now_ms();
        bool more = false;

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
                        size_t ncap = cap ? cap * 2 : 64;
                        struct stream_view *nv = realloc(views, ncap * sizeof(*nv));
                        if (!nv) {
                                stream_unref(st);
                                break;
                        }
                        views = nv;
                        cap = ncap;
                }
                views[n++] = (struct stream_view){.st = st};
                pp = &st->next;
        }
        pthread_mutex_unlock(&hub->lock);

        for (struct watch *w = hub->watches; w; w = w->next)
                w->streams = 0;
        for (size_t i = 0; i < n; i++) {
                struct stream_view *v = &views[i];
                pthread_mutex_lock(&v->st->lock);
                v->last_seq = v->st->last_seq;
                v->wants = !v->st->finished && !stopping &&
                           v->st->pending.len - v->st->offset < MAX_BACKLOG;
                pthread_mutex_unlock(&v->st->lock);
                v->w = watch_find(hub, v->st->user_id, v->st->run_id, true);
                if (v->w)
                        v->w->streams++;
        }
        watches_maintain(hub, stopping);

        /* one read per due watch, after the lowest position of the streams that want one */
        size_t nwatches = 0;
        for (struct watch *w = hub->watches; w; w = w->next)
                nwatches++;
        reads = nwatches ? calloc(nwatches, sizeof(*reads)) : NULL;
        for (struct watch *w = hub->watches; reads && w; w = w->next) {
                bool due = w->notified || !hub->listen || now - w->last_read_ms >= FALLBACK_MS;
                int64_t after = INT64_MAX;
                for (size_t i = 0; i < n; i++)
                        if (views[i].w == w && views[i].wants && views[i].last_seq < after)
                                after = views[i].last_seq;
                if (!due || after == INT64_MAX)
                        continue;
                struct watch_read *rd = &reads[nreads++];
                rd->w = w;
                rd->after = after;
                buf_init(&rd->text, STREAM_BUFFER_MAX);
        }
        if (nreads) {
                /* the reads of one user are one statement */
                qsort(reads, nreads, sizeof(*reads), by_user);
                PGconn *c = hub->listen;
                int r = 0;
                if (!c)
                        c = api_pool_acquire(hub->server, &r);
                for (size_t i = 0; c && i < nreads;) {
                        size_t j = i + 1;
                        while (j < nreads && strcmp(reads[j].w->user_id, reads[i].w->user_id) == 0)
                                j++;
                        r = read_runs(c, reads[i].w->user_id, &reads[i], j - i);
                        if (r < 0 && PQstatus(c) != CONNECTION_OK)
                                break; /* retry next pass; the streams stay */
                        i = j;
                }
                if (c && c == hub->listen && PQstatus(c) != CONNECTION_OK)
                        listen_close(hub);
                else if (c && c != hub->listen)
                        api_pool_release(hub->server, c, PQstatus(c) != CONNECTION_OK);
                for (size_t i = 0; i < nreads; i++)
                        if (reads[i].done) {
                                reads[i].w->notified = false;
                                reads[i].w->last_read_ms = now;
                                more |= reads[i].full;
                        }
        }

        for (size_t i = 0; i < n; i++) {
                struct stream_view *v = &views[i];
                struct sse_stream *st = v->st;
                struct watch_read *rd = NULL;
                for (size_t k = 0; k < nreads && v->wants; k++)
                        if (reads[k].w == v->w && reads[k].done)
                                rd = &reads[k];

                pthread_mutex_lock(&st->lock);
                if (rd && !rd->gone) {
                        for (size_t k = 0; k < rd->nevents; k++) {
                                struct sse_event *e = &rd->events[k];
                                if (e->seq <= st->last_seq)
                                        continue;
                                if (buf_append(&st->pending, rd->text.data + e->offset, e->len) < 0)
                                        break; /* full: the rest on a later pass */
                                st->last_seq = e->seq;
                        }
                        int64_t end = rd->nevents ? rd->events[rd->nevents - 1].seq : rd->after;
                        if (rd->terminal[0] && !st->finished && st->last_seq >= end) {
                                buf_printf(&st->pending,
                                           "event: end\ndata: {\"run_id\":\"%s\","
                                           "\"status\":\"%s\"}\n\n",
                                           st->run_id, rd->terminal);
                                st->finished = true;
                        }
                } else if (rd && rd->gone && !st->finished) {
                        buf_printf(&st->pending,
                                   "event: end\ndata: {\"run_id\":\"%s\",\"status\":null}\n\n",
                                   st->run_id);
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
        for (size_t i = 0; i < nreads; i++) {
                buf_free(&reads[i].text);
                free(reads[i].events);
        }
        free(reads);
        free(views);
        return more;
}

/* Sleeps until a notification, a new stream, or timeout_ms. Notifications that arrived
 * while the pump ran its reads are already in libpq's buffer, where poll() cannot see
 * them: they are taken first, and then there is no sleep. */
static void pump_wait(struct api_sse_hub *hub, int timeout_ms)
{
        struct pollfd fds[2] = {{.fd = hub->wake_fd, .events = POLLIN}, {.fd = -1}};
        uint64_t count;

        if (hub->listen) {
                if (!listen_drain(hub)) {
                        listen_close(hub);
                } else {
                        for (struct watch *w = hub->watches; w; w = w->next)
                                if (w->notified)
                                        timeout_ms = 0;
                        fds[1] = (struct pollfd){.fd = PQsocket(hub->listen), .events = POLLIN};
                }
        }
        if (poll(fds, hub->listen ? 2 : 1, timeout_ms) > 0 && (fds[0].revents & POLLIN)) {
                if (read(hub->wake_fd, &count, sizeof(count)) < 0) {
                        /* EAGAIN: another pass took it */
                }
        }
}

static void *pump_main(void *arg)
{
        struct api_sse_hub *hub = arg;
        bool more = false;

        for (;;) {
                pthread_mutex_lock(&hub->lock);
                bool stopping = hub->stopping;
                bool empty = hub->streams == NULL;
                pthread_mutex_unlock(&hub->lock);
                if (stopping && empty)
                        break;
                if (!more)
                        pump_wait(hub, TICK_MS);
                if (!hub->listen)
                        listen_open(hub);
                if (!listen_drain(hub))
                        listen_close(hub);
                more = pump_once(hub, stopping);
        }
        watches_maintain(hub, true);
        if (hub->listen)
                PQfinish(hub->listen);
        hub->listen = NULL;
        return NULL;
}

int api_sse_hub_start(struct api_server *server, struct api_sse_hub **out)
{
        struct api_sse_hub *hub = calloc(1, sizeof(*hub));
        int r;

        if (!hub)
                return -ENOMEM;
        hub->server = server;
        hub->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (hub->wake_fd < 0) {
                r = -errno;
                free(hub);
                return r;
        }
        pthread_mutex_init(&hub->lock, NULL);
        r = pthread_create(&hub->thread, NULL, pump_main, hub);
        if (r != 0) {
                close(hub->wake_fd);
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
        hub_wake(hub);
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
        hub_wake(hub);
        pthread_join(hub->thread, NULL);
        for (struct sse_stream *st = hub->streams; st;) {
                struct sse_stream *next = st->next;
                stream_unref(st);
                st = next;
        }
        close(hub->wake_fd);
        pthread_mutex_destroy(&hub->lock);
        free(hub);
}
