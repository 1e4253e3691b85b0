/*
 * Issue 10's figures, with real `agently worker` processes (their executors in the sandbox)
 * against a scripted local LLM server that lives here, in the bench (bench-only code: it
 * speaks just enough of OpenAI's streaming chat completions for these two figures).
 *
 *   agent_llm_call_*          journal overhead: one agent run makes CALLS sequential LLM
 *                             calls (each answer is some text and an http_request to a host
 *                             the agent may not call: refused, not journaled, so each turn
 *                             is exactly one LLM call); the server stamps each request's
 *                             arrival, and a call's cycle is the time between two arrivals.
 *                             The same cycle calling the same server directly (src/llm's
 *                             client on one loop, the agent's own requests sent again: the
 *                             same bytes to read, the same answers) is printed beside it, and
 *                             the server's own work per request in each; the overhead is the
 *                             difference of the p50s. The measured run is a worker's fourth:
 *                             its connection warm, as a worker's is; the first run's overhead,
 *                             a new connection's, is printed apart. Commits per call:
 *                             transactions that wrote (xids assigned) during the run, divided
 *                             by the calls.
 *   agent_density_*           N agent runs (--agents, default 1000; 100 with --quick) in one
 *                             worker (--concurrency N), each in one streaming LLM call of
 *                             10 chunks 500 ms apart; sampled while they stream: live
 *                             executors, the worker's database connections, the PSS of the
 *                             executors' process trees (bwrap, prlimit, the executor) per
 *                             live executor, and the worker's own.
 */
#include "bench.h"

#include <ctype.h>
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "cleanup.h"
#include "embedded_pg.h"
#include "llm.h"
#include "llm_client.h"
#include "runtime_http.h"
#include "strutil.h"

#define DENSITY_CHUNKS   10
#define DENSITY_CHUNK_MS 500
#define MAX_STAMPS       100000

/* ---- the scripted LLM server ----------------------------------------------------------- */

struct llm_bench_server {
        struct MHD_Daemon *daemon;
        char url[64];
        int turns; /* tool-call answers before the final text (per conversation) */
        pthread_mutex_t lock;
        int64_t *stamps; /* arrival of each request (bench_now_us), in order */
        int nstamps;
        int64_t body_bytes; /* of every request */
        int streams_open;   /* density streams being answered now */
        char **bodies;      /* the first MAX_BODIES requests' bodies, replayed by the direct
                               calls */
        int64_t *handled;   /* per request: its arrival -> its answer queued (the server's
                               own work: counting its tool results, making the answer) */
};

#define MAX_BODIES 1024

struct upload {
        char *data;
        size_t len;
};

struct stream_state {
        struct llm_bench_server *s;
        int sent;
        char buf[512];
};

static ssize_t density_reader(void *cls, uint64_t pos, char *out, size_t max)
{
        struct stream_state *st = cls;
        int n;

        (void)pos;
        if (st->sent > DENSITY_CHUNKS)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->sent > 0)
                usleep(DENSITY_CHUNK_MS * 1000); /* a thread per connection: sleeping is the
                                                    stream */
        if (st->sent == DENSITY_CHUNKS)
                n = snprintf(st->buf, sizeof(st->buf),
                             "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                             "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{"
                             "\"prompt_tokens\":10,\"completion_tokens\":10}}\n\ndata: [DONE]\n\n");
        else
                n = snprintf(st->buf, sizeof(st->buf),
                             "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                             "\"delta\":{\"content\":\"word%d \"}}]}\n\n",
                             st->sent);
        st->sent++;
        if (n < 0 || (size_t)n > max)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        memcpy(out, st->buf, (size_t)n);
        return n;
}

static void density_free(void *cls)
{
        struct stream_state *st = cls;

        pthread_mutex_lock(&st->s->lock);
        st->s->streams_open--;
        pthread_mutex_unlock(&st->s->lock);
        free(st);
}

/* The tool results in an OpenAI chat completions body (its messages whose "role" is
 * "tool"): the turn the conversation is at. Counted in the text, not parsed: the server's
 * parse of a ~34 KB conversation sat inside every measured cycle and, on two cores, beside
 * the journal write the cycle is compared with (a provider parses on its own machine).
 * Every body is parsed after the run (neutral_of, for the direct calls), which refuses one
 * that is not such JSON. In JSON text a quote inside a string is escaped, so an unescaped
 * "role" is always a key. */
static int tool_results(const char *body)
{
        static const char key[] = "\"role\"", value[] = "\"tool\"";
        int n = 0;

        for (const char *p = body; p && (p = strstr(p, key));) {
                p += sizeof(key) - 1;
                p += strspn(p, " \t\r\n");
                if (*p != ':')
                        continue;
                p++;
                p += strspn(p, " \t\r\n");
                if (!strncmp(p, value, sizeof(value) - 1))
                        n++;
        }
        return n;
}

/* A whole streamed answer: some text and an http_request call (turn < turns), or a final
 * text. */
static char *turn_answer(int turn, bool tool)
{
        if (tool)
                return str_printf(
                    "data: {\"id\":\"c%d\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                    "\"delta\":{\"role\":\"assistant\",\"content\":\"Step %d: "
                    "looking it up.\"}}]}\n\n"
                    "data: {\"id\":\"c%d\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                    "\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t%d\",\"type\":"
                    "\"function\",\"function\":{\"name\":\"http_request\",\"arguments\":"
                    "\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://elsewhere.test/"
                    "%d\\\"}\"}}]}}]}\n\n"
                    "data: {\"id\":\"c%d\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                    "\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":{"
                    "\"prompt_tokens\":100,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n",
                    turn, turn, turn, turn, turn, turn);
        return str_printf(
            "data: {\"id\":\"c%d\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{"
            "\"role\":\"assistant\",\"content\":\"Done after %d steps.\"},"
            "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":100,"
            "\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
            turn, turn);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
        struct llm_bench_server *s = cls;
        struct upload *u = *con_cls;
        struct MHD_Response *r;
        enum MHD_Result ret;

        (void)url, (void)method, (void)version;
        if (!u) {
                u = calloc(1, sizeof(*u));
                *con_cls = u;
                return u ? MHD_YES : MHD_NO;
        }
        if (*upload_size) {
                char *p = realloc(u->data, u->len + *upload_size + 1);
                if (!p)
                        return MHD_NO;
                memcpy(p + u->len, upload, *upload_size);
                u->data = p;
                u->len += *upload_size;
                u->data[u->len] = '\0';
                *upload_size = 0;
                return MHD_YES;
        }
        int64_t now = bench_now_us();
        bool density = u->data && strstr(u->data, "DENSITY");

        pthread_mutex_lock(&s->lock);
        int k = s->nstamps;
        if (s->nstamps < MAX_STAMPS)
                s->stamps[s->nstamps++] = now;
        if (k < MAX_BODIES && !density) {
                free(s->bodies[k]);
                s->bodies[k] = u->data ? strdup(u->data) : NULL;
        }
        s->body_bytes += (int64_t)u->len;
        if (density)
                s->streams_open++;
        pthread_mutex_unlock(&s->lock);

        if (density) {
                struct stream_state *st = calloc(1, sizeof(*st));
                if (!st)
                        return MHD_NO;
                st->s = s;
                r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, density_reader, st,
                                                      density_free);
        } else {
                int turn = tool_results(u->data);
                char *text = turn_answer(turn + 1, turn < s->turns);
                if (!text)
                        return MHD_NO;
                r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        }
        if (!r)
                return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        if (k < MAX_STAMPS && !density)
                s->handled[k] = bench_now_us() - now;
        return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        struct upload *u = *con_cls;

        (void)cls, (void)c, (void)toe;
        if (u) {
                free(u->data);
                free(u);
                *con_cls = NULL;
        }
}

static struct llm_bench_server *server_start(int turns)
{
        struct llm_bench_server *s = calloc(1, sizeof(*s));
        const union MHD_DaemonInfo *info;

        if (!s || !(s->stamps = calloc(MAX_STAMPS, sizeof(*s->stamps))) ||
            !(s->handled = calloc(MAX_STAMPS, sizeof(*s->handled))) ||
            !(s->bodies = calloc(MAX_BODIES, sizeof(*s->bodies))))
                exit(1);
        s->turns = turns;
        pthread_mutex_init(&s->lock, NULL);
        s->daemon = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL,
            NULL, handle, s, MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_CONNECTION_LIMIT,
            8000u, MHD_OPTION_THREAD_STACK_SIZE, (size_t)(128 * 1024),
            MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u,
            MHD_OPTION_END);
        info = s->daemon ? MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
        if (!info) {
                fprintf(stderr, "bench: could not start the scripted LLM server\n");
                exit(1);
        }
        snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u/v1", (unsigned)info->port);
        return s;
}

static void server_stop(struct llm_bench_server *s)
{
        MHD_stop_daemon(s->daemon);
        pthread_mutex_destroy(&s->lock);
        free(s->stamps);
        free(s->handled);
        for (int i = 0; i < MAX_BODIES; i++)
                free(s->bodies[i]);
        free(s->bodies);
        free(s);
}

static void server_reset(struct llm_bench_server *s)
{
        pthread_mutex_lock(&s->lock);
        s->nstamps = 0;
        s->body_bytes = 0;
        pthread_mutex_unlock(&s->lock);
}

/* ---- helpers --------------------------------------------------------------------------- */

static PGresult *qx(PGconn *c, const char *sql)
{
        PGresult *res = PQexec(c, sql);

        if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
                fprintf(stderr, "bench: query failed: %s\n  %s\n", PQerrorMessage(c), sql);
                exit(1);
        }
        return res;
}

static double qnum(PGconn *c, const char *sql)
{
        PGresult *res = qx(c, sql);
        double v =
            PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) ? strtod(PQgetvalue(res, 0, 0), NULL) : 0;
        PQclear(res);
        return v;
}

/* A one-node agent workflow; its id into out. */
static void agent_workflow(PGconn *c, const char *user, const char *name, const char *agent,
                           char *out, size_t len)
{
        char def[2048];
        snprintf(def, sizeof(def),
                 "{\"name\":\"%s\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":%s}]}",
                 name, agent);
        const char *params[] = {user, name, def};
        PGresult *res = PQexecParams(
            c,
            "INSERT INTO workflows (user_id, name, version, definition, definition_sha256) "
            "VALUES ($1, $2, 1, $3::jsonb, encode(sha256(convert_to($3::text, 'UTF8')), 'hex')) "
            "RETURNING id",
            3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                fprintf(stderr, "bench: could not store %s: %s", name, PQerrorMessage(c));
                exit(1);
        }
        snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
}

static void enqueue(PGconn *c, const char *wf, int n)
{
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version, input) SELECT w.user_id, w.id, w.name, w.version, "
                 "jsonb_build_object('i', g) FROM workflows w, generate_series(1, %d) g "
                 "WHERE w.id = '%s'",
                 n, wf);
        PQclear(qx(c, sql));
}

/* Runs of wf finished (any status); *completed those that completed. Polled every 20 ms
 * beside the figure: no index of the history holds a run's workflow version, and a filter
 * on it alone read every run of the earlier phases (a parallel scan of a million runs
 * after the soak, both cores for most of each 20 ms: the journal overhead of a full
 * `bench/run` was 3.5 ms where the phase alone gave 0.6). The version's user and name, as
 * constants the planner weighs (the agents' user has only this bench's runs), lead the
 * listing index workflow_runs_user_workflow_idx. */
static int finished(PGconn *c, const char *wf, int *completed)
{
        char sql[512];

        snprintf(sql, sizeof(sql),
                 "SELECT user_id, quote_literal(name) FROM workflows WHERE id = '%s'", wf);
        PGresult *res = qx(c, sql);
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL), count(*) FILTER (WHERE "
                 "status = 'completed') FROM workflow_runs WHERE user_id = '%s' AND "
                 "workflow_name = %s AND workflow_id = '%s'",
                 PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), wf);
        PQclear(res);
        res = qx(c, sql);
        int n = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
        *completed = (int)strtol(PQgetvalue(res, 0, 1), NULL, 10);
        PQclear(res);
        return n;
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return x < y ? -1 : x > y;
}

/* p-th percentile (0..1) of v[0..n) in ms, sorting v. */
static double pct_ms(int64_t *v, int n, double p)
{
        if (n <= 0)
                return 0;
        qsort(v, (size_t)n, sizeof(*v), cmp_i64);
        int i = (int)(p * (n - 1) + 0.5);
        return (double)v[i] / 1000.0;
}

/* The cycles (arrival i+1 - arrival i) of the server's stamps [from, to). */
static int cycles(struct llm_bench_server *s, int from, int to, int64_t *out)
{
        int n = 0;
        pthread_mutex_lock(&s->lock);
        for (int i = from + 1; i < to && i < s->nstamps; i++)
                out[n++] = s->stamps[i] - s->stamps[i - 1];
        pthread_mutex_unlock(&s->lock);
        return n;
}

/* ---- journal overhead ------------------------------------------------------------------ */

/* An OpenAI chat completions body as the neutral request src/llm's client takes (the
 * executor's shape): the system message and the tools unwrapped, an assistant's tool calls
 * without their "function" wrapper. NULL when the body is not such JSON. */
static json_t *neutral_of(const char *text)
{
        _cleanup_json_ json_t *wire = text ? json_loads(text, 0, NULL) : NULL;
        json_t *req, *msgs = json_array(), *m;
        size_t i;

        if (!wire || !msgs || !json_is_array(json_object_get(wire, "messages"))) {
                json_decref(msgs);
                return NULL;
        }
        req = json_pack("{s:O, s:b, s:o}", "model", json_object_get(wire, "model"), "stream", 1,
                        "messages", msgs);
        if (!req)
                return NULL;
        json_array_foreach (json_object_get(wire, "messages"), i, m) {
                const char *role = json_string_value(json_object_get(m, "role"));
                const json_t *calls = json_object_get(m, "tool_calls"), *c;
                size_t j;
                if (role && !strcmp(role, "system")) {
                        json_object_set(req, "system", json_object_get(m, "content"));
                        continue;
                }
                json_t *n = json_deep_copy(m);
                if (n && calls) {
                        json_t *list = json_array();
                        json_array_foreach (calls, j, c) {
                                const json_t *fn = json_object_get(c, "function");
                                json_array_append_new(
                                    list,
                                    json_pack("{s:O, s:O, s:O}", "id", json_object_get(c, "id"),
                                              "name", json_object_get(fn, "name"), "arguments",
                                              json_object_get(fn, "arguments")));
                        }
                        json_object_set_new(n, "tool_calls", list);
                }
                json_array_append_new(msgs, n);
        }
        if (json_is_array(json_object_get(wire, "tools"))) {
                json_t *tools = json_array(), *t;
                json_array_foreach (json_object_get(wire, "tools"), i, t)
                        json_array_append(tools, json_object_get(t, "function"));
                json_object_set_new(req, "tools", tools);
        }
        return req;
}

/* The agent's own requests (the server kept their bodies) sent again, one after another,
 * through src/llm's client straight to the server — the same bytes for the server to read
 * and parse, the same answers, the body kept between calls as the agent's session keeps
 * it; returns the calls that ended well. */
static int direct_calls(json_t *const *requests, int calls, const char *url)
{
        struct runtime_http *h = NULL;
        struct llm_body_cache *cache = llm_body_cache_new();
        struct bench_llm_tally d = {.expected = LLM_STOP_TOOL_CALLS};

        if (runtime_http_new("agently-bench", &h) < 0)
                exit(1);
        for (int i = 0; i < calls; i++) {
                struct llm_call *c;
                int before = d.ok + d.failed;
                struct llm_call_params p = {.provider = LLM_PROVIDER_OPENAI,
                                            .base_url = url,
                                            .request = requests[i],
                                            .body_cache = cache,
                                            .max_attempts = 1,
                                            .on_done = bench_llm_tally_done,
                                            .userdata = &d};
                if (!requests[i] || llm_call_start(h, &p, &c, NULL) < 0) {
                        d.failed++;
                        continue;
                }
                while (d.ok + d.failed == before)
                        runtime_http_poll(h, 100, -1);
        }
        llm_body_cache_free(cache);
        runtime_http_free(h);
        return d.ok;
}

/* The server's own work per request (arrival -> answer queued), p50 of requests from..to. */
static double handled_p50_ms(struct llm_bench_server *s, int from, int to)
{
        int64_t *v = calloc(MAX_STAMPS, sizeof(*v));
        int n = 0;
        double p;

        if (!v)
                exit(1);
        pthread_mutex_lock(&s->lock);
        for (int i = from; i < to && i < s->nstamps; i++)
                v[n++] = s->handled[i];
        pthread_mutex_unlock(&s->lock);
        p = pct_ms(v, n, 0.5);
        free(v);
        return p;
}

/* The worker's "trace agent_llm" lines (src/agent/agent_session.c: trace_llm), the k-th the
 * k-th call the server stamped: medians of where a call's cycle goes. */
static void breakdown(struct llm_bench_server *s, const char *log, int skip)
{
        enum { PHASES = 7 };
        static const char *const names[PHASES] = {
            "executor's turn (answer -> its next llm request read; the event and the refused "
            "call between, answered while the answer's commit is in flight)",
            "request -> call started",
            "call started -> request at the server (its last byte held until the previous "
            "answer's commit)",
            "at the server -> answer in the worker",
            "journal row made",
            "journal write (one commit; the executor has the answer and goes on meanwhile)",
            "write sent -> answer handed over"};
        int64_t *v[PHASES];
        int n = 0, k = 0;
        char line[512];
        FILE *f = fopen(log, "r");

        if (!f)
                return;
        for (int i = 0; i < PHASES; i++)
                if (!(v[i] = calloc(MAX_STAMPS, sizeof(int64_t))))
                        exit(1);
        pthread_mutex_lock(&s->lock);
        while (n < MAX_STAMPS && fgets(line, sizeof(line), f)) {
                long long x[7];
                if (sscanf(line,
                           "trace agent_llm exec_us=%lld start_us=%lld call_us=%lld prep_us=%lld "
                           "write_us=%lld answer_us=%lld started_at_us=%lld",
                           &x[0], &x[1], &x[2], &x[3], &x[4], &x[5], &x[6]) != 7)
                        continue;
                if (skip > 0) { /* a warm-up run's call */
                        skip--;
                        continue;
                }
                if (k >= s->nstamps)
                        break;
                int64_t at = s->stamps[k++];
                if (x[0] < 0) /* the first call: no answer before it */
                        continue;
                v[0][n] = x[0];
                v[1][n] = x[1];
                v[2][n] = at - x[6];
                v[3][n] = x[6] + x[2] - at;
                v[4][n] = x[3];
                v[5][n] = x[4];
                v[6][n] = x[5];
                n++;
        }
        pthread_mutex_unlock(&s->lock);
        fclose(f);
        char out[1024];
        size_t len = 0;
        for (int i = 0; i < PHASES && len < sizeof(out); i++) {
                int w = snprintf(out + len, sizeof(out) - len, "%s%s %.2f", i ? " | " : "",
                                 names[i], pct_ms(v[i], n, 0.5));
                if (w > 0)
                        len += (size_t)w;
        }
        for (int i = 0; i < PHASES; i++)
                free(v[i]);
        if (n > 0)
                bench_report("agent_llm_call_breakdown_p50_ms", "%s (%d calls)", out, n);
}

static void journal_overhead(const struct bench *b, PGconn *c, const char *conninfo,
                             const char *user)
{
        int calls = b->quick ? 50 : 200;
        struct llm_bench_server *s = server_start(calls);
        char wf[40], agent[1024];
        int completed = 0;
        int64_t *cyc = calloc(MAX_STAMPS, sizeof(*cyc));

        if (!cyc)
                exit(1);
        snprintf(agent, sizeof(agent),
                 "{\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"m\","
                 "\"prompt\":\"Look things up, one at a time.\",\"tools\":[\"http_request\"],"
                 "\"allowed_hosts\":[\"127.0.0.1\"],\"max_turns\":%d}",
                 s->url, calls + 5);
        agent_workflow(c, user, "bench-agent-journal", agent, wf, sizeof(wf));
        bench_report("bench_agent_journal",
                     "one agent run, %d sequential LLM calls (streamed; each answer text and a "
                     "refused tool call), then the same server called directly %d times",
                     calls + 1, calls);

        char log[1024];
        /* the default poll (the NOTIFY hint claims the run); the worker traces each call's
         * phases (AGENTLY_TRACE_TURNS, src/agent: trace_llm) for the breakdown */
        setenv("AGENTLY_TRACE_TURNS", "1", 1);
        pid_t w = bench_spawn_worker(b, conninfo, 10, "500ms", log, sizeof(log));
        unsetenv("AGENTLY_TRACE_TURNS");
        bench_sleep_ms(1000);
        /* the worker's connection is new: its backend faults in Postgres's shared memory
         * for its first seconds of work (bench_baseline.c). A worker's connection lives as
         * long as the worker, so the figure is its steady state: the runs before the
         * measured one warm it, and the first of them, a new worker's, is printed apart */
        const int warmups = 3;
        double cold_p50 = -1;
        int64_t deadline = bench_now_us() + 300 * 1000000LL;
        for (int i = 0; i < warmups; i++) {
                enqueue(c, wf, 1);
                while (finished(c, wf, &completed) < i + 1 && bench_now_us() < deadline)
                        bench_sleep_ms(20);
                if (i == 0) {
                        int n0 = cycles(s, 1, s->nstamps, cyc);
                        cold_p50 = n0 > 0 ? pct_ms(cyc, n0, 0.5) : -1;
                }
                server_reset(s);
        }
        double xid0 = qnum(c, "SELECT txid_current()");
        enqueue(c, wf, 1);
        while (finished(c, wf, &completed) < warmups + 1 && bench_now_us() < deadline)
                bench_sleep_ms(20);
        double xid1 = qnum(c, "SELECT txid_current()");
        bench_stop_worker(w);
        int agent_calls = s->nstamps;
        if (completed < warmups + 1 || agent_calls != calls + 1) {
                fprintf(stderr,
                        "bench: the agent run did not complete with %d calls (%d seen); see "
                        "%s/bench-*.log\n",
                        calls + 1, agent_calls, b->dir);
                bench_report("agent_llm_call_overhead", "error: the agent run failed");
                server_stop(s);
                free(cyc);
                return;
        }
        breakdown(s, log, warmups * (calls + 1));
        /* the first cycle includes the executor's start: left out */
        int n = cycles(s, 1, agent_calls, cyc);
        double agent_p50 = pct_ms(cyc, n, 0.5), agent_p99 = pct_ms(cyc, n, 0.99);
        size_t mean_bytes = (size_t)(s->body_bytes / agent_calls);
        /* writing transactions: each assigned an xid; the two txid_current() calls take
         * one each */
        double commits = (xid1 - xid0 - 1) / agent_calls;
        double agent_handled = handled_p50_ms(s, 1, agent_calls);
        json_t **requests = calloc((size_t)calls, sizeof(*requests));
        if (!requests)
                exit(1);
        for (int i = 0; i < calls && i < MAX_BODIES; i++)
                requests[i] = neutral_of(s->bodies[i]);

        server_reset(s);
        int direct_ok = direct_calls(requests, calls, s->url);
        for (int i = 0; i < calls; i++)
                json_decref(requests[i]);
        free(requests);
        if (direct_ok != calls) {
                bench_report("agent_llm_call_overhead", "error: direct calls failed");
                server_stop(s);
                free(cyc);
                return;
        }
        n = cycles(s, 1, s->nstamps, cyc);
        double direct_p50 = pct_ms(cyc, n, 0.5), direct_p99 = pct_ms(cyc, n, 0.99);

        bench_report("agent_llm_call_direct_p50_ms",
                     "%.3f (p99 %.3f; src/llm's client straight to the server with the agent's "
                     "own %d requests, %zu bytes on average)",
                     direct_p50, direct_p99, calls, mean_bytes);
        bench_report("agent_llm_call_server_p50_ms",
                     "%.3f through the agent, %.3f direct (the server's own work per request: "
                     "its tool results counted, its answer made)",
                     agent_handled, handled_p50_ms(s, 1, s->nstamps));
        bench_report("agent_llm_call_p50_ms",
                     "%.3f (p99 %.3f; through the agent: executor, worker, journal)", agent_p50,
                     agent_p99);
        bench_report("agent_llm_call_overhead_p50_ms",
                     "%.3f (target <= 1 ms; a worker whose connection has done %d agent runs)",
                     agent_p50 - direct_p50, warmups);
        bench_report("agent_llm_call_overhead_cold_p50_ms",
                     "%.3f (the same, in a new worker's first agent run: its connection's "
                     "backend still faulting in shared memory)",
                     cold_p50 - direct_p50);
        bench_report("agent_llm_call_commits_per_call",
                     "%.2f (writing transactions during the run / its %d calls: one per call "
                     "plus %.0f for the run — claim, turns, its agent run; target <= 1)",
                     commits, agent_calls, commits * agent_calls - agent_calls);
        server_stop(s);
        free(cyc);
}

/* ---- density --------------------------------------------------------------------------- */

/* The parent pid of pid (from /proc/pid/stat), or -1. */
static pid_t parent_of(pid_t pid)
{
        char path[64], buf[512];
        FILE *f;
        pid_t ppid = -1;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        f = fopen(path, "r");
        if (!f)
                return -1;
        if (fgets(buf, sizeof(buf), f)) {
                char *p = strrchr(buf, ')');
                if (p)
                        sscanf(p + 1, " %*c %d", &ppid);
        }
        fclose(f);
        return ppid;
}

static long pss_kib(pid_t pid)
{
        char path[64], line[256];
        FILE *f;
        long v = -1;

        snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
        f = fopen(path, "r");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "Pss: %ld kB", &v) == 1)
                        break;
        fclose(f);
        return v;
}

/* Whether pid runs `agently executor` (the sandbox binds the binary at /agently). */
static bool is_executor(pid_t pid)
{
        char path[64], cmd[256];
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
        f = fopen(path, "r");
        if (!f)
                return false;
        n = fread(cmd, 1, sizeof(cmd) - 1, f);
        fclose(f);
        cmd[n] = '\0';
        /* argv[0] NUL argv[1] */
        return n > 0 && strlen(cmd) + 1 < n && strcmp(cmd + strlen(cmd) + 1, "executor") == 0;
}

struct tree_sample {
        int executors;
        long executors_pss_kib; /* every descendant of the worker */
        long worker_pss_kib;
        int processes;
};

/* The worker's descendants: their PSS summed, the executors among them counted. */
static void sample_tree(pid_t worker, struct tree_sample *t)
{
        DIR *d = opendir("/proc");
        struct dirent *e;

        memset(t, 0, sizeof(*t));
        t->worker_pss_kib = pss_kib(worker);
        if (!d)
                return;
        while ((e = readdir(d))) {
                if (!isdigit((unsigned char)e->d_name[0]))
                        continue;
                pid_t pid = (pid_t)strtol(e->d_name, NULL, 10), p = pid;
                int depth = 0;
                while (p > 1 && p != worker && depth++ < 16)
                        p = parent_of(p);
                if (p != worker || pid == worker)
                        continue;
                long k = pss_kib(pid);
                if (k > 0)
                        t->executors_pss_kib += k;
                t->processes++;
                if (is_executor(pid))
                        t->executors++;
        }
        closedir(d);
}

static void density(const struct bench *b, PGconn *c, const char *conninfo, const char *user)
{
        int n = b->agents > 0 ? b->agents : (b->quick ? 100 : 1000);
        struct llm_bench_server *s = server_start(0);
        char wf[40], agent[1024], sql[512];
        struct tree_sample peak = {0};
        int completed = 0, peak_conns = 0, peak_streams = 0;

        snprintf(agent, sizeof(agent),
                 "{\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"m\","
                 "\"prompt\":\"DENSITY ${ input.i }: count to ten.\",\"max_turns\":2}",
                 s->url);
        agent_workflow(c, user, "bench-agent-density", agent, wf, sizeof(wf));
        bench_report("bench_agent_density",
                     "agents=%d, one worker (--concurrency %d), each in one streaming LLM call "
                     "of %d chunks %d ms apart",
                     n, n, DENSITY_CHUNKS, DENSITY_CHUNK_MS);
        enqueue(c, wf, n);
        int64_t t0 = bench_now_us();
        pid_t w = bench_spawn_worker(b, conninfo, n, "100ms", NULL, 0);
        int64_t deadline = t0 + (300 + n / 5) * 1000000LL;
        while (finished(c, wf, &completed) < n && bench_now_us() < deadline) {
                struct tree_sample t;
                int open;
                snprintf(sql, sizeof(sql),
                         "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                         "'agently worker bench-%%'");
                int conns = (int)qnum(c, sql);
                pthread_mutex_lock(&s->lock);
                open = s->streams_open;
                pthread_mutex_unlock(&s->lock);
                sample_tree(w, &t);
                if (t.executors > peak.executors)
                        peak = t;
                if (conns > peak_conns)
                        peak_conns = conns;
                if (open > peak_streams)
                        peak_streams = open;
                bench_sleep_ms(200);
        }
        double wall = (double)(bench_now_us() - t0) / 1e6;
        bench_stop_worker(w);
        bench_report("agent_density_completed", "%d of %d in %.1f s (one call: %.1f s)", completed,
                     n, wall, DENSITY_CHUNKS * DENSITY_CHUNK_MS / 1000.0);
        bench_report("agent_density_peak_executors",
                     "%d live at once (%d streams open at the server at the peak)", peak.executors,
                     peak_streams);
        bench_report("agent_density_db_connections", "%d (the worker's, at the peak; target <= 8)",
                     peak_conns);
        bench_report("agent_density_pss_per_executor_mib",
                     "%.2f (its process tree: bwrap, prlimit, the executor; %d processes for "
                     "%d executors; target <= 2)",
                     peak.executors ? (double)peak.executors_pss_kib / 1024.0 / peak.executors : 0,
                     peak.processes, peak.executors);
        bench_report("agent_density_pss_total_mib",
                     "%.1f (executors %.1f + worker %.1f, at the peak)",
                     (double)(peak.executors_pss_kib + peak.worker_pss_kib) / 1024.0,
                     (double)peak.executors_pss_kib / 1024.0, (double)peak.worker_pss_kib / 1024.0);
        server_stop(s);
}

void bench_run_agents(const struct bench *b, struct embedded_pg *pg, double base1c, double base32c)
{
        bool journal = bench_want(b, "journal"), dense = bench_want(b, "density");
        char *conninfo, user[40];
        PGconn *c;

        (void)base32c;
        if (!journal && !dense)
                return;
        c = bench_connect(b);
        conninfo = embedded_pg_conninfo(pg, "agently_worker", EMBEDDED_PG_DATABASE);
        PGresult *res = qx(c, "INSERT INTO users (name) VALUES ('bench-agents') RETURNING id");
        snprintf(user, sizeof(user), "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        if (journal) {
                bench_settle(b, "journal", base1c);
                journal_overhead(b, c, conninfo, user);
        }
        if (dense)
                density(b, c, conninfo, user);
        free(conninfo);
        PQfinish(c);
}
