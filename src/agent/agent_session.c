/*
 * Agent sessions: the executor's pipes on one epoll descriptor, the protocol's lines, replay
 * from the journal, budgets, and the dispatch of live requests to the LLM and the tools.
 * Every call here comes from the worker's loop thread; nothing blocks on a pipe (both ends
 * are non-blocking, answers wait in a buffer until the executor reads them).
 */
#include "agent_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "duration.h"
#include "log.h"
#include "redact.h"
#include "runtime_http.h"
#include "strutil.h"

int64_t agent_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t agent_now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- redaction: the API key never leaves in anything but the request it authorises ---- */

static char *key_redact_text(const struct agent_session *s, const char *text)
{
        const char *key = s ? s->api_key : NULL;
        size_t klen = key ? strlen(key) : 0;
        _cleanup_buf_ struct buf b = {0};
        const char *p = text, *hit;

        if (!text)
                return NULL;
        if (klen < 4 || !strstr(text, key))
                return strdup(text);
        buf_init(&b, 2 * strlen(text) + 64);
        while ((hit = strstr(p, key))) {
                if (buf_append(&b, p, (size_t)(hit - p)) < 0 ||
                    buf_append_str(&b, "[redacted]") < 0)
                        return NULL;
                p = hit + klen;
        }
        if (buf_append_str(&b, p) < 0)
                return NULL;
        return buf_steal(&b);
}

static json_t *key_redact(const struct agent_session *s, const json_t *v)
{
        if (!v)
                return NULL;
        if (json_is_string(v)) {
                _cleanup_free_ char *t = key_redact_text(s, json_string_value(v));
                return t ? json_string(t) : NULL;
        }
        if (json_is_object(v)) {
                json_t *o = json_object(), *x;
                const char *k;
                if (!o)
                        return NULL;
                json_object_foreach ((json_t *)v, k, x) {
                        _cleanup_free_ char *rk = key_redact_text(s, k);
                        if (!rk || json_object_set_new(o, rk, key_redact(s, x)) < 0) {
                                json_decref(o);
                                return NULL;
                        }
                }
                return o;
        }
        if (json_is_array(v)) {
                json_t *a = json_array(), *x;
                size_t i;
                if (!a)
                        return NULL;
                json_array_foreach (v, i, x)
                        if (json_array_append_new(a, key_redact(s, x)) < 0) {
                                json_decref(a);
                                return NULL;
                        }
                return a;
        }
        return json_deep_copy(v);
}

/* The session's API key, then every secret this process knows (the choke point,
 * src/base/redact: the values tools resolved, a response that echoes one). */
char *agent_redact_text(const struct agent_session *s, const char *text)
{
        _cleanup_free_ char *t = key_redact_text(s, text);

        return t ? redact_strdup(t) : NULL;
}

json_t *agent_redact(const struct agent_session *s, const json_t *v)
{
        json_t *c = key_redact(s, v);

        if (c && redact_json(c) < 0) {
                json_decref(c);
                return NULL;
        }
        return c;
}

/* Why a session statement failed, for the node's error. */
static const char *db_why(int r)
{
        if (r == -ESTALE)
                return "the run's lease was lost";
        if (r == -ENOMEM)
                return "out of memory";
        return db_last_error_parts().message;
}

/* ---- lifetimes ---- */

static void session_free(struct agent_host *h, struct agent_session *s);
static void session_unlink(struct agent_host *h, struct agent_session *s);
static void host_quiet(struct agent_host *h);

static void pending_free(struct agent_host *h, struct agent_pending *p)
{
        if (!p)
                return;
        if (p->child) { /* the parent ends: so does the sub-agent it waited for */
                struct agent_session *c = p->child;
                p->child = NULL;
                c->ended = true;
                session_unlink(h, c);
                session_free(h, c);
        }
        if (p->transfer)
                runtime_http_abort(h->cfg.http, p->transfer);
        if (p->call)
                agent_llm_abort(p);
        agent_tool_job_free(h, p);
        json_decref(p->artifacts);
        json_decref(p->edited);
        free(p->id);
        json_decref(p->request);
        json_decref(p->blocked);
        free(p);
}

/* Stops the session's executor (if any): its pipes leave the epoll set, it is killed and
 * reaped, and what was buffered either way is dropped. A new serial, so an event of this
 * round for the old pipes finds no session. */
static void executor_stop(struct agent_session *s)
{
        struct agent_host *h = s->host;
        int *fds[3] = {&s->out_fd, &s->err_fd, &s->in_fd};

        for (int i = 0; i < 3; i++)
                if (*fds[i] >= 0) {
                        epoll_ctl(h->epfd, EPOLL_CTL_DEL, *fds[i], NULL);
                        close(*fds[i]);
                        *fds[i] = -1;
                }
        if (s->pid > 0) {
                /* its answer (if any) is written; nothing it says now is read */
                kill(s->pid, SIGKILL);
                while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
                        ;
        }
        s->pid = -1;
        s->in_watched = false;
        s->serial = ++h->serials;
        buf_reset(&s->to_executor);
        buf_reset(&s->from_executor);
        s->stderr_len = 0;
        s->stderr_tail[0] = '\0';
}

/* Forgets what one executor's replay knew: the journal as read, the occurrences, the
 * previous llm call (a new executor replays from the start). */
static int replay_reset(struct agent_session *s)
{
        for (size_t i = 0; i < s->njournal; i++) {
                free(s->journal[i].call_id);
                json_decref(s->journal[i].request);
                json_decref(s->journal[i].response);
        }
        free(s->journal);
        s->journal = NULL;
        s->njournal = s->unmatched = 0;
        agent_llm_base_reset(&s->llm_base);
        json_decref(s->last_messages);
        json_decref(s->last_assistant);
        s->last_messages = s->last_assistant = NULL;
        s->last_llm_seq = 0;
        json_decref(s->occurrences);
        s->occurrences = json_object();
        return s->occurrences ? 0 : -ENOMEM;
}

static void session_free(struct agent_host *h, struct agent_session *s)
{
        if (!s)
                return;
        agent_db_settle(s); /* its callback names s */
        json_decref(s->write.request);
        json_decref(s->write.response);
        while (s->pending) {
                struct agent_pending *p = s->pending;
                s->pending = p->next;
                pending_free(h, p);
        }
        executor_stop(s);
        if (s->api_key) {
                sodium_memzero(s->api_key, strlen(s->api_key));
                free(s->api_key);
        }
        replay_reset(s);
        llm_body_cache_free(s->body_cache);
        agent_db_hold_cancel(s);
        json_decref(s->held); /* not written: a replay records them again */
        agent_tools_session_free(s);
        json_decref(s->occurrences);
        json_decref(s->agent);
        json_decref(s->budget);
        buf_free(&s->to_executor);
        buf_free(&s->from_executor);
        free(s->node_id);
        free(s);
}

static void session_unlink(struct agent_host *h, struct agent_session *s)
{
        if (s->prev)
                s->prev->next = s->next;
        else if (h->sessions == s)
                h->sessions = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->prev = s->next = NULL;
        h->nsessions--;
}

static void child_done(struct agent_session *parent, struct agent_pending *p, json_t *output,
                       json_t *error);

/* Ends a session and reports it (once). Takes output and error. */
static void session_end(struct agent_session *s, json_t *output, json_t *error)
{
        struct agent_host *h = s->host;
        void *ud = s->userdata;

        if (s->ended) {
                json_decref(output);
                json_decref(error);
                return;
        }
        s->ended = true;
        agent_tools_session_end(s, error);
        if (s->parent) {
                struct agent_session *parent = s->parent;
                struct agent_pending *p = s->spawned;
                p->child = NULL;
                session_unlink(h, s);
                session_free(h, s);
                child_done(parent, p, output, error);
                return;
        }
        session_unlink(h, s);
        session_free(h, s);
        h->cfg.done(h->cfg.owner, ud, output, error);
}

static void session_fail(struct agent_session *s, const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void session_fail(struct agent_session *s, const char *klass, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;
        _cleanup_free_ char *clean = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        clean = agent_redact_text(s, m ? m : "the agent session failed");
        free(m);
        json_t *e;
        /* a journal write lost the database: the failure is the database's, not the
         * agent's — nothing is recorded, the worker leaves the run to its lease, and it
         * resumes from its journal (worker.c, agent_done) */
        if (s->db_lost) {
                e = json_pack("{s:s, s:s+}", "class", "database", "message",
                              "the agent's journal lost the database: ",
                              clean ? clean : "the agent session failed");
        } else {
                e = json_pack("{s:s, s:s}", "class", klass, "message",
                              clean ? clean : "the agent session failed");
                (void)agent_db_set_status(s, "failed", NULL, e);
        }
        session_end(s, NULL, e);
}

/* ---- writing to the executor ---- */

static void flush_to_executor(struct agent_session *s)
{
        while (s->to_executor.len > 0) {
                ssize_t n = write(s->in_fd, s->to_executor.data, s->to_executor.len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        if (!s->in_watched) {
                                struct epoll_event ev = {.events = EPOLLOUT,
                                                         .data.u64 = s->serial << 2 | 2};
                                if (epoll_ctl(s->host->epfd, EPOLL_CTL_ADD, s->in_fd, &ev) == 0)
                                        s->in_watched = true;
                        }
                        return;
                }
                if (n <= 0)
                        return; /* the executor is gone: its stdout's end says so */
                memmove(s->to_executor.data, s->to_executor.data + n,
                        s->to_executor.len - (size_t)n);
                s->to_executor.len -= (size_t)n;
        }
        if (s->in_watched) {
                epoll_ctl(s->host->epfd, EPOLL_CTL_DEL, s->in_fd, NULL);
                s->in_watched = false;
        }
}

static int send_message(struct agent_session *s, json_t *m)
{
        _cleanup_free_ char *text = NULL;

        if (!m)
                return -ENOMEM;
        json_object_set_new(m, "v", json_integer(1));
        text = json_dumps(m, JSON_COMPACT);
        json_decref(m);
        if (s->pid <= 0) /* stopped: its replay will ask again */
                return 0;
        if (!text || buf_append_str(&s->to_executor, text) < 0 ||
            buf_append(&s->to_executor, "\n", 1) < 0)
                return -ENOBUFS;
        s->last_io_ms = agent_now_ms();
        flush_to_executor(s);
        return 0;
}

static int answer_ok(struct agent_session *s, const char *id, const json_t *result)
{
        /* "o" takes the new empty object; a caller's result is borrowed (a reference added) */
        return send_message(s, json_pack("{s:s, s:b, s:o}", "id", id, "ok", 1, "result",
                                         result ? json_incref((json_t *)result) : json_object()));
}

static int answer_error(struct agent_session *s, const char *id, const char *klass,
                        const char *message)
{
        _cleanup_free_ char *clean = agent_redact_text(s, message);
        return send_message(s, json_pack("{s:s, s:b, s:{s:s, s:s}}", "id", id, "ok", 0, "error",
                                         "class", klass, "message", clean ? clean : "refused"));
}

/* ---- the journal: hashes, occurrences, replay ---- */

/* The n-th journal entry of (kind, hash), or NULL. */
static struct agent_journal_entry *journal_find(struct agent_session *s, const char *kind,
                                                const char *hash, int n)
{
        for (size_t i = 0; i < s->njournal; i++) {
                struct agent_journal_entry *e = &s->journal[i];
                if (!strcmp(e->kind, kind) && !strcmp(e->hash, hash) && --n == 0)
                        return e;
        }
        return NULL;
}

/*
 * A request that matches no journal entry diverges when the journal still holds an
 * unmatched entry it should have matched: for llm any unmatched llm call (the loop asks
 * them one after another); for the others an unmatched entry of the same kind answering
 * the same model call id (parallel tool calls may arrive in any order).
 */
static struct agent_journal_entry *journal_diverged(struct agent_session *s, const char *kind,
                                                    const char *call_id)
{
        for (size_t i = 0; i < s->njournal; i++) {
                struct agent_journal_entry *e = &s->journal[i];
                if (e->matched || strcmp(e->kind, kind))
                        continue;
                if (!strcmp(kind, "llm"))
                        return e;
                if (call_id && e->call_id && !strcmp(call_id, e->call_id))
                        return e;
        }
        return NULL;
}

/* The messages of an llm request as journaled: the ones after the previous call's when
 * that call's messages are a prefix (the conversation is stored once). */
static json_t *llm_request_stored(struct agent_session *s, const json_t *body)
{
        const json_t *req = json_object_get(body, "request");
        const json_t *msgs = json_object_get(req, "messages");
        size_t prev = json_array_size(s->last_messages);
        /* copies of the two objects changed here; the messages are shared, not copied */
        json_t *stored = json_copy((json_t *)body), *sreq = json_copy((json_t *)req);

        if (!stored || !sreq) {
                json_decref(stored);
                json_decref(sreq);
                return NULL;
        }
        if (json_object_set_new(stored, "request", sreq) < 0) { /* takes sreq either way */
                json_decref(stored);
                return NULL;
        }
        if (s->last_llm_seq > 0 && prev > 0 && prev <= json_array_size(msgs)) {
                bool prefix = true;
                for (size_t i = 0; i < prev && prefix; i++)
                        prefix = json_equal(json_array_get(msgs, i),
                                            json_array_get(s->last_messages, i));
                if (prefix) {
                        json_t *tail = json_array();
                        for (size_t i = prev; tail && i < json_array_size(msgs); i++) {
                                json_t *m = json_array_get(msgs, i);
                                /* the previous answer is in its row already: named, not
                                 * stored twice */
                                if (i == prev && json_equal(m, s->last_assistant))
                                        json_array_append_new(
                                            tail,
                                            json_pack("{s:i}", "answer_of_seq", s->last_llm_seq));
                                else
                                        json_array_append(tail, m);
                        }
                        json_object_set_new(sreq, "messages", tail ? tail : json_array());
                        json_object_set_new(sreq, "messages_after_seq",
                                            json_integer(s->last_llm_seq));
                        json_object_set_new(sreq, "messages_after_count",
                                            json_integer((json_int_t)prev));
                }
        }
        /* tools and system repeat on every call: kept once, in the first */
        if (s->last_llm_seq > 0) {
                json_object_del(sreq, "tools");
                json_object_del(sreq, "system");
        }
        return stored;
}

/* After an llm call (live or replayed): its messages, its row, and the assistant message
 * its answer becomes in the next request (as the executor writes it), which the next row
 * then names instead of storing it again. */
static void remember_messages(struct agent_session *s, const json_t *body, int seq,
                              const json_t *result)
{
        const char *text = json_string_value(json_object_get(result, "text"));
        const json_t *calls = json_object_get(result, "tool_calls");

        json_decref(s->last_messages);
        s->last_messages =
            json_incref(json_object_get(json_object_get(body, "request"), "messages"));
        s->last_llm_seq = seq;
        json_decref(s->last_assistant);
        s->last_assistant =
            json_pack("{s:s, s:s?}", "role", "assistant", "content", text && *text ? text : NULL);
        if (s->last_assistant && json_array_size(calls) > 0)
                json_object_set(s->last_assistant, "tool_calls", (json_t *)calls);
}

/* ---- budgets ---- */

static double budget_number(const struct agent_session *s, const char *key, bool *set)
{
        json_t *v = json_object_get(s->budget, key);
        *set = json_is_number(v);
        return *set ? json_number_value(v) : 0;
}

/*
 * The budget a live call of kind would break, or NULL. Cost: the call is refused when the
 * cost so far plus the last LLM call's cost (the next one is rarely cheaper: its context
 * only grows) would pass the limit, so a run stops before the call that would exceed it
 * rather than after.
 */
static const char *budget_exhausted(struct agent_session *s, const char *kind, char **why)
{
        bool set;
        double v;

        v = budget_number(s, "max_tokens", &set);
        if (set && (double)(s->tokens_in + s->tokens_out) >= v) {
                *why = str_printf("%lld tokens used of max_tokens %.0f",
                                  (long long)(s->tokens_in + s->tokens_out), v);
                return "max_tokens";
        }
        v = budget_number(s, "max_cost_usd", &set);
        if (set && !strcmp(kind, "llm") && s->cost_usd + s->last_call_cost > v) {
                *why = str_printf("$%.6f spent, the next llm call (about $%.6f) would pass "
                                  "max_cost_usd $%.6f",
                                  s->cost_usd, s->last_call_cost, v);
                return "max_cost_usd";
        }
        v = budget_number(s, "max_llm_calls", &set);
        if (set && !strcmp(kind, "llm") && (double)s->llm_calls >= v) {
                *why = str_printf("%lld llm calls made of max_llm_calls %.0f",
                                  (long long)s->llm_calls, v);
                return "max_llm_calls";
        }
        v = budget_number(s, "max_tool_calls", &set);
        if (set && !strcmp(kind, "tool") && (double)s->tool_calls >= v) {
                *why = str_printf("%lld tool calls made of max_tool_calls %.0f",
                                  (long long)s->tool_calls, v);
                return "max_tool_calls";
        }
        const char *wall = json_string_value(json_object_get(s->budget, "max_wall_clock"));
        int64_t limit;
        if (wall && duration_parse_ms(wall, &limit) == 0) {
                int64_t elapsed = agent_now_ms() + s->db_offset_ms - s->started_at_ms;
                if (elapsed >= limit) {
                        *why = str_printf("%llds since the agent started, max_wall_clock %s",
                                          (long long)(elapsed / 1000), wall);
                        return "max_wall_clock";
                }
        }
        return NULL;
}

/* The agent waits for a person: the question (ask_human) or the budget it exhausted. */
/*
 * The agent waits for a person: the question (ask_human) or the budget it exhausted. The
 * waiting_for names the agent run that asks (a person's answer goes to it); a sub-agent's
 * also its depth and prompt, and the message says a sub-agent asks: its parents wait for it
 * holding nothing, and the run goes to needs_input once nothing else of the tree can go on
 * (session_stuck).
 */
static void session_needs_input(struct agent_session *s, json_t *waiting_for, const char *message)
{
        json_t *e;
        _cleanup_free_ char *msg = NULL;
        int r;

        if (!waiting_for ||
            json_object_set_new(waiting_for, "agent_run_id", json_string(s->agent_run_id)) < 0) {
                json_decref(waiting_for);
                session_fail(s, "error", "out of memory");
                return;
        }
        if (s->depth > 0) {
                const char *prompt = json_string_value(json_object_get(s->agent, "prompt"));
                size_t n = prompt ? strnlen(prompt, 200) : 0;
                while (n > 0 && prompt[n] && ((unsigned char)prompt[n] & 0xC0) == 0x80)
                        n--; /* cut between characters */
                json_object_set_new(waiting_for, "sub_agent",
                                    json_pack("{s:i, s:s%, s:s?}", "depth", s->depth, "prompt",
                                              prompt ? prompt : "", n, "parent_agent_run_id",
                                              s->parent ? s->parent->agent_run_id : NULL));
                msg = str_printf("a sub-agent (agent run %s, depth %d) waits: %s", s->agent_run_id,
                                 s->depth, message);
        }
        r = agent_db_set_status(s, "waiting", waiting_for, NULL);
        if (r < 0) {
                json_decref(waiting_for);
                session_fail(s, "error", "could not record that the agent waits: %s", db_why(r));
                return;
        }
        _cleanup_free_ char *clean = agent_redact_text(s, msg ? msg : message);
        e = json_pack("{s:s, s:s, s:o}", "class", "needs_input", "message", clean ? clean : message,
                      "waiting_for", waiting_for);
        session_end(s, NULL, e);
}

/* ---- requests ---- */

static int64_t occurrence_next(struct agent_session *s, const char *kind, const char *hash)
{
        _cleanup_free_ char *key = str_printf("%s:%s", kind, hash);
        json_int_t n;

        if (!key)
                return -ENOMEM;
        n = json_integer_value(json_object_get(s->occurrences, key)) + 1;
        json_object_set_new(s->occurrences, key, json_integer(n));
        return n;
}

/*
 * Whether a worker-side record of kind (event, refusal, result: journal rows without an
 * effect) was made for this request by an earlier session: the n-th (kind, hash) of this
 * session against the journal's. Marks the row matched. Such records are written with their
 * row in one statement, so after a crash a replayed request finds its row and records
 * nothing twice.
 */
static bool journal_seen(struct agent_session *s, const char *kind, const char *hash)
{
        int64_t n = occurrence_next(s, kind, hash);
        struct agent_journal_entry *e = n > 0 ? journal_find(s, kind, hash, (int)n) : NULL;

        if (!e)
                return false;
        if (!e->matched) {
                e->matched = true;
                s->unmatched--;
        }
        return true;
}

/*
 * Records events with a journal row of kind (its request a small stub: the content is in
 * the events; the hash and occurrence are what replay matches). Takes events. Held (an
 * event, a refusal): the row goes with the session's next journal write, in its statement
 * (agent_db_hold) — its answer carries nothing the executor acts on, so it is given at
 * once; a crash before the write loses the row with no later row written without it, and
 * the replay records it then.
 */
static int record_once(struct agent_session *s, const char *kind, const char *hash, json_t *events,
                       bool hold)
{
        _cleanup_json_ json_t *stub = json_pack("{s:s}", "type", kind), *none = json_object();
        json_t *row =
            stub && none ? agent_db_row(kind, stub, none, hash, NULL, 0, 0, 0, events) : NULL;

        if (!row) {
                if (!stub || !none)
                        json_decref(events);
                return -ENOMEM;
        }
        return hold ? agent_db_hold(s, row, AGENT_HOLD_MS) : agent_db_write(s, row);
}

static void event_request(struct agent_session *s, const char *id, const json_t *m)
{
        const char *kind = json_string_value(json_object_get(m, "kind"));
        const char *message = json_string_value(json_object_get(m, "message"));
        const json_t *data = json_object_get(m, "data");
        _cleanup_json_ json_t *events = NULL, *clean = NULL, *body = json_deep_copy(m);
        char hash[65];
        int r;

        if (!kind || (strcmp(kind, "reasoning") && strcmp(kind, "trace")) || !message ||
            strlen(message) > 4096) {
                answer_error(s, id, "invalid_request",
                             "an event needs kind reasoning or trace and a message of at most "
                             "4 KiB");
                return;
        }
        if (!body ||
            agent_request_hash((json_object_del(body, "v"), json_object_del(body, "id"), body),
                               hash) < 0) {
                session_fail(s, "error", "out of memory");
                return;
        }
        /* recorded by an earlier session (journaled with its event); or, while a journal of
         * before events were journaled still replays, recorded then */
        if (journal_seen(s, "event", hash) || s->unmatched > 0) {
                answer_ok(s, id, NULL);
                return;
        }
        clean = agent_redact(s, data);
        events = json_pack("[{s:s+, s:s, s:O?}]", "kind", "agent.", kind, "message", message,
                           "data", clean);
        r = events ? record_once(s, "event", hash, TAKE_PTR(events), true) : -ENOMEM;
        if (r < 0) {
                session_fail(s, "error", "could not record an event: %s", db_why(r));
                return;
        }
        answer_ok(s, id, NULL);
}

static void pending_add(struct agent_session *s, struct agent_pending *p)
{
        p->next = s->pending;
        s->pending = p;
}

static void pending_remove(struct agent_session *s, struct agent_pending *p)
{
        for (struct agent_pending **q = &s->pending; *q; q = &(*q)->next)
                if (*q == p) {
                        *q = p->next;
                        return;
                }
}

/* A live llm or tool request. Takes body. */
static void live_request(struct agent_session *s, const char *id, const char *kind,
                         const char *hash, json_t *body)
{
        struct agent_pending *p;
        _cleanup_free_ char *why = NULL, *err = NULL;
        const char *budget = budget_exhausted(s, kind, &why);
        int r;

        if (budget) {
                _cleanup_free_ char *m =
                    str_printf("budget exhausted: %s; raise it to continue", why ? why : budget);
                json_decref(body);
                session_needs_input(s,
                                    json_pack("{s:s, s:s, s:s?}", "kind", "budget", "budget",
                                              budget, "detail", why),
                                    m ? m : "budget exhausted");
                return;
        }
        if (!strcmp(kind, "tool") && agent_approval_gates(s, body)) { /* a person decides */
                agent_approval_request(s, hash, body);
                return;
        }
        p = calloc(1, sizeof(*p));
        if (!p || !(p->id = strdup(id))) {
                free(p);
                json_decref(body);
                session_fail(s, "error", "out of memory");
                return;
        }
        p->session = s;
        p->is_pending_marker = true;
        str_copy(p->kind, sizeof(p->kind), kind);
        memcpy(p->hash, hash, 65);
        p->request = body;
        p->started_ms = agent_now_ms();
        if (!strcmp(kind, "llm")) {
                p->trace_read_us = s->trace_line_us;
                r = agent_llm_start(s, p, &err);
                if (s->host->trace)
                        p->trace_started_us = agent_now_us();
                if (r < 0) {
                        answer_error(s, id, r == -EINVAL ? "invalid_request" : "llm",
                                     err ? err : "could not start the llm call");
                        pending_free(s->host, p);
                        return;
                }
        } else {
                json_t *refusal = NULL;
                r = agent_tool_start(s, p, &refusal);
                if (r < 0) {
                        const char *klass = json_string_value(json_object_get(refusal, "class"));
                        const char *reason = json_string_value(json_object_get(refusal, "message"));
                        /* shown, not journaled: the same request is refused the same way */
                        _cleanup_json_ json_t *data = agent_redact(s, p->request);
                        json_t *events =
                            json_pack("[{s:s, s:s, s:s, s:{s:s?, s:s?, s:O?}}]", "kind",
                                      "agent.tool_refused", "level", "warn", "message",
                                      reason ? reason : "refused", "data", "class", klass, "name",
                                      json_string_value(json_object_get(p->request, "name")),
                                      "request", data);
                        if (events && journal_seen(s, "refusal", p->hash))
                                json_decref(events); /* shown by an earlier session */
                        else if (events)
                                (void)record_once(s, "refusal", p->hash, events, true);
                        answer_error(s, id, klass ? klass : "invalid_request",
                                     reason ? reason : "the tool call was refused");
                        json_decref(refusal);
                        pending_free(s->host, p);
                        return;
                }
        }
        pending_add(s, p);
}

static int child_start(struct agent_session *parent, struct agent_pending *p, const char *child_id,
                       char **error);

/*
 * A sub-agent: live (e NULL) it gets a new agent run and the spawn is journaled without an
 * answer, naming it; resumed (e: such a row) the same agent run goes on from its own
 * journal. Its answer is journaled into the row when it ends (child_done). Takes body.
 */
static void spawn_request(struct agent_session *s, const char *id, const char *hash, json_t *body,
                          const struct agent_journal_entry *e)
{
        struct agent_pending *p = calloc(1, sizeof(*p));
        _cleanup_free_ char *err = NULL;
        const char *child_id =
            e ? json_string_value(json_object_get(e->request, "child_agent_run_id")) : NULL;
        int r;

        if (!p || !(p->id = strdup(id))) {
                free(p);
                json_decref(body);
                session_fail(s, "error", "out of memory");
                return;
        }
        p->session = s;
        p->is_pending_marker = true;
        str_copy(p->kind, sizeof(p->kind), "spawn");
        memcpy(p->hash, hash, 65);
        p->request = body;
        p->started_ms = agent_now_ms();
        if (!e && s->depth >= AGENT_MAX_DEPTH) {
                answer_error(s, id, "not_allowed", "sub-agents may nest at most 3 deep");
                pending_free(s->host, p);
                return;
        }
        if (e && !child_id) {
                pending_free(s->host, p);
                session_fail(s, "error", "a journaled spawn names no sub-agent");
                return;
        }
        pending_add(s, p);
        r = child_start(s, p, child_id, &err);
        if (r < 0) {
                pending_remove(s, p);
                answer_error(s, id, "spawn", err ? err : "could not start the sub-agent");
                pending_free(s->host, p);
                return;
        }
        if (e) {
                p->spawn_seq = e->seq;
                return;
        }
        _cleanup_json_ json_t *stored = json_deep_copy(body);
        json_t *events =
            json_pack("[{s:s, s:s, s:{s:s?, s:s, s:O?}}]", "kind", "agent.spawn", "message",
                      "a sub-agent starts", "data", "call_id",
                      json_string_value(json_object_get(body, "call_id")), "child_agent_run_id",
                      p->child->agent_run_id, "prompt", json_object_get(body, "prompt"));
        if (!stored || !events ||
            json_object_set_new(stored, "child_agent_run_id", json_string(p->child->agent_run_id)) <
                0) {
                json_decref(events);
                session_fail(s, "error", "out of memory");
                return;
        }
        _cleanup_json_ json_t *clean = agent_redact(s, stored);
        r = agent_db_record(s, "spawn", clean, NULL, hash, NULL, 0, 0, 0, events);
        if (r < 0) {
                session_fail(s, "error", "could not journal a sub-agent: %s", db_why(r));
                return;
        }
        p->spawn_seq = r;
}

static void parent_check(struct agent_session *s);

static bool is_needs_input(const json_t *error)
{
        const char *klass = json_string_value(json_object_get(error, "class"));
        return klass && !strcmp(klass, "needs_input");
}

/*
 * A sub-agent ended. Waiting for a person, it stays the parent's pending spawn (blocked:
 * the parent waits with it). Otherwise its answer — the output, or the failure — is
 * journaled into the parent's spawn row (fenced, once: the row must still have none), then
 * given to the parent's executor if it has one (a stopped parent reads it from the journal
 * when it is started again).
 */
static void child_done(struct agent_session *parent, struct agent_pending *p, json_t *output,
                       json_t *error)
{
        struct agent_host *h = parent->host;
        _cleanup_json_ json_t *out = output, *err = error, *response = NULL, *events = NULL;
        int r;

        if (!out && is_needs_input(err)) {
                json_decref(p->blocked);
                p->blocked = TAKE_PTR(err);
                parent_check(parent);
                return;
        }
        pending_remove(parent, p);
        if (out) {
                response = json_pack("{s:O}", "output", out);
                events = json_pack("[{s:s, s:s, s:{s:s?, s:O}}]", "kind", "agent.spawn_result",
                                   "message", "a sub-agent answered", "data", "call_id",
                                   json_string_value(json_object_get(p->request, "call_id")),
                                   "output", out);
        } else {
                const char *m = json_string_value(json_object_get(err, "message"));
                _cleanup_free_ char *msg = str_printf("the sub-agent failed: %s", m ? m : "");
                response = json_pack("{s:{s:s, s:s}}", "error", "class", "spawn", "message",
                                     msg ? msg : "the sub-agent failed");
                events = json_pack(
                    "[{s:s, s:s, s:s, s:{s:s?, s:O?}}]", "kind", "agent.spawn_result", "level",
                    "warn", "message", msg ? msg : "the sub-agent failed", "data", "call_id",
                    json_string_value(json_object_get(p->request, "call_id")), "error", err);
        }
        /* the answer and its agent.spawn_result event: one statement */
        r = response && events ? agent_db_answer(parent, p->spawn_seq, response, TAKE_PTR(events))
                               : -ENOMEM;
        if (r < 0) {
                pending_free(h, p);
                session_fail(parent, "error", "could not journal a sub-agent's answer: %s",
                             db_why(r));
                return;
        }
        if (out)
                answer_ok(parent, p->id, response);
        else
                answer_error(parent, p->id, "spawn",
                             json_string_value(
                                 json_object_get(json_object_get(response, "error"), "message")));
        pending_free(h, p);
        parent_check(parent);
}

/* The request without v and id (an llm request made whole: agent_request.c) and its hash;
 * NULL when it was answered (refused) or the session failed. */
static json_t *effect_body(struct agent_session *s, const char *id, const char *type,
                           const json_t *m, char hash[65])
{
        json_t *body = NULL;
        int r;

        if (!strcmp(type, "llm")) {
                _cleanup_free_ char *why = NULL;
                r = agent_llm_request_take(&s->llm_base, m, &body, hash, &why);
                if (r == -EINVAL) {
                        answer_error(s, id, "invalid_request", why ? why : "bad messages_from");
                        return NULL;
                }
        } else {
                body = json_deep_copy(m);
                r = body ? 0 : -ENOMEM;
                if (body) {
                        json_object_del(body, "v");
                        json_object_del(body, "id");
                        r = agent_request_hash(body, hash);
                }
        }
        if (r < 0) {
                json_decref(body);
                session_fail(s, "error", "out of memory");
                return NULL;
        }
        return body;
}

static void effect_request(struct agent_session *s, const char *id, const char *type, json_t *m)
{
        char hash[65];
        _cleanup_json_ json_t *body = effect_body(s, id, type, m, hash);
        struct agent_journal_entry *e;
        const char *call_id = json_string_value(json_object_get(m, "call_id"));
        int64_t n;

        if (!body)
                return;
        if ((n = occurrence_next(s, type, hash)) < 0) {
                session_fail(s, "error", "out of memory");
                return;
        }
        e = journal_find(s, type, hash, (int)n);
        if (e) {
                if (!e->matched) {
                        e->matched = true;
                        s->unmatched--;
                }
                if (!strcmp(type, "llm"))
                        remember_messages(s, body, e->seq, e->response);
                if (!e->response && !strcmp(type, "tool")) { /* gated: its approval says */
                        agent_approval_resume(s, id, e, hash, TAKE_PTR(body));
                        return;
                }
                if (!e->response && !strcmp(type, "spawn")) { /* a sub-agent still at work */
                        spawn_request(s, id, hash, TAKE_PTR(body), e);
                        return;
                }
                if (!e->response) { /* an ask_human nobody answered yet */
                        const char *q = json_string_value(json_object_get(m, "question"));
                        _cleanup_free_ char *msg =
                            str_printf("the agent asks: %s", q ? q : "(no question)");
                        session_needs_input(
                            s, json_pack("{s:s, s:s?}", "kind", "ask_human", "question", q),
                            msg ? msg : "the agent asks a question");
                        return;
                }
                if (!strcmp(type, "llm")) {
                        s->last_call_cost =
                            json_number_value(json_object_get(e->response, "cost_usd"));
                }
                const json_t *failed = json_object_get(e->response, "error");
                if (!strcmp(type, "spawn") && failed) { /* the sub-agent failed */
                        answer_error(s, id, "spawn",
                                     json_string_value(json_object_get(failed, "message")));
                        return;
                }
                answer_ok(s, id, e->response);
                return;
        }
        struct agent_journal_entry *d = journal_diverged(s, type, call_id);
        if (d) {
                _cleanup_json_ json_t *error = json_pack(
                    "{s:s, s:s, s:O, s:O}", "class", "nondeterminism", "message",
                    "the executor asked for something else than its journal holds at this "
                    "point: the agent cannot be resumed",
                    "journaled", d->request, "requested", body);
                json_t *clean = agent_redact(s, error);
                (void)agent_db_set_status(s, "failed", NULL, clean);
                session_end(s, NULL, clean);
                return;
        }
        if (!strcmp(type, "ask_human")) {
                const char *q = json_string_value(json_object_get(m, "question"));
                _cleanup_json_ json_t *events =
                    json_pack("[{s:s, s:s, s:{s:s?, s:s?}}]", "kind", "agent.ask_human", "message",
                              "the agent asks a person", "data", "question", q, "call_id", call_id);
                int r = agent_db_record(s, "ask_human", body, NULL, hash, NULL, 0, 0, 0,
                                        TAKE_PTR(events));
                if (r < 0) {
                        session_fail(s, "error", "could not journal a question: %s", db_why(r));
                        return;
                }
                _cleanup_free_ char *msg = str_printf("the agent asks: %s", q ? q : "");
                session_needs_input(s, json_pack("{s:s, s:s?}", "kind", "ask_human", "question", q),
                                    msg ? msg : "the agent asks a question");
                return;
        }
        if (!strcmp(type, "spawn")) {
                spawn_request(s, id, hash, TAKE_PTR(body), NULL);
                return;
        }
        live_request(s, id, type, hash, TAKE_PTR(body));
}

static void result_request(struct agent_session *s, const char *id, const json_t *m)
{
        json_t *out = json_object_get(m, "output");
        _cleanup_json_ json_t *events = NULL;

        if (!out) {
                answer_error(s, id, "invalid_request", "a result needs an output");
                return;
        }
        _cleanup_json_ json_t *body = json_deep_copy(m);
        char hash[65];
        if (!body ||
            agent_request_hash((json_object_del(body, "v"), json_object_del(body, "id"), body),
                               hash) < 0) {
                session_fail(s, "error", "out of memory");
                return;
        }
        answer_ok(s, id, NULL);
        events = json_pack("[{s:s, s:s, s:{s:I, s:I, s:f, s:I, s:I}}]", "kind", "agent.finished",
                           "message", "the agent answered", "data", "tokens_in",
                           (json_int_t)s->tokens_in, "tokens_out", (json_int_t)s->tokens_out,
                           "cost_usd", s->cost_usd, "llm_calls", (json_int_t)s->llm_calls,
                           "tool_calls", (json_int_t)s->tool_calls);
        if (!journal_seen(s, "result", hash) && s->unmatched == 0 && events)
                (void)record_once(s, "result", hash, TAKE_PTR(events), false);
        (void)agent_db_set_status(s, "completed", NULL, NULL);
        session_end(s, agent_redact(s, out), NULL);
}

static void error_request(struct agent_session *s, const char *id, const json_t *m)
{
        const char *klass = json_string_value(json_object_get(m, "class"));
        const char *message = json_string_value(json_object_get(m, "message"));

        answer_ok(s, id, NULL);
        session_fail(s, klass && *klass ? klass : "agent", "%s",
                     message ? message : "the agent gave up");
}

static void handle_line(struct agent_session *s, const char *line, size_t len)
{
        json_error_t jerr;
        _cleanup_json_ json_t *m = json_loadb(line, len, 0, &jerr);
        const char *id, *type;

        if (!json_is_object(m) || json_integer_value(json_object_get(m, "v")) != 1) {
                session_fail(s, "executor",
                             "the executor wrote a line that is not a version 1 protocol message");
                return;
        }
        id = json_string_value(json_object_get(m, "id"));
        type = json_string_value(json_object_get(m, "type"));
        if (s->host->trace)
                s->trace_line_us = agent_now_us();
        if (!id || !*id || strlen(id) > 64 || !type) {
                session_fail(s, "executor", "the executor sent a request without id or type");
                return;
        }
        /* while the last answer's write is in flight, only what leaves nothing before its
         * commit acts at once: an event, a tool call (refused, or its effect behind
         * agent_effect_barrier), an llm request (held); the rest waits for the commit */
        if (s->write.pending && strcmp(type, "event") && strcmp(type, "tool") &&
            strcmp(type, "llm"))
                agent_db_settle(s);
        if (!strcmp(type, "event"))
                event_request(s, id, m);
        else if (!strcmp(type, "llm") || !strcmp(type, "tool") || !strcmp(type, "ask_human") ||
                 !strcmp(type, "spawn"))
                effect_request(s, id, type, m);
        else if (!strcmp(type, "result"))
                result_request(s, id, m);
        else if (!strcmp(type, "error"))
                error_request(s, id, m);
        else
                session_fail(s, "executor", "the executor sent an unknown request type '%.64s'",
                             type);
}

/* ---- HTTP completions ---- */

/*
 * AGENTLY_TRACE_TURNS=1 (bench/bench_agents.c reads it): where a live LLM call's cycle goes,
 * one line when its write is confirmed — exec: the previous answer handed to the executor ->
 * this request read (the executor's turn and the requests in between); start: read -> the
 * call started (held while the previous write is in flight); call: started -> the answer
 * in (worker -> server -> worker, the wait for the previous commit included); prep: its
 * journal row made; write: its journal write sent -> its commit confirmed (the executor has
 * the answer meanwhile); answer: the write sent -> the answer handed to the executor.
 * started_at: the call's start on CLOCK_MONOTONIC (the bench's server stamps arrivals on the
 * same clock). t: exec, started, done, write sent, answered (us).
 */
static void trace_llm(const int64_t t[6], int64_t written_us)
{
        fprintf(stderr,
                "trace agent_llm exec_us=%lld start_us=%lld call_us=%lld prep_us=%lld "
                "write_us=%lld answer_us=%lld started_at_us=%lld\n",
                (long long)t[0], (long long)(t[1] - t[5]), (long long)(t[2] - t[1]),
                (long long)(t[3] - t[2]), (long long)(written_us - t[3]), (long long)(t[4] - t[3]),
                (long long)t[1]);
}

/*
 * An answered LLM call: its journal row written, the answer to the executor. Externally
 * synchronous (src/agent/README.md, "Answered while the commit is in flight"): the
 * statement is sent and left in flight, the answer handed over, and the loop goes on. What
 * the executor says meanwhile is read and acted on only where nothing leaves: an event or a
 * refused call is held for the next write and answered; an llm request goes out but for the
 * last byte of its body, which follows once the commit is confirmed (agent_session_written);
 * a statement settles the write first (src/db), and any other effect waits for it
 * (agent_effect_barrier). A write that fails fails the session, which kills the executor;
 * a worker killed meanwhile takes it along (PR_SET_PDEATHSIG).
 */
static void llm_done(struct agent_session *s, struct agent_pending *p, struct llm_result *res,
                     const json_t *error, int64_t took)
{
        int64_t done_us = s->host->trace ? agent_now_us() : 0, write_us = 0;
        _cleanup_json_ json_t *result = NULL, *stored = NULL, *events = NULL;
        const char *model = json_string_value(json_object_get(s->agent, "model"));
        int r;

        /* the previous call's row is remembered first: this one's stored delta names it */
        agent_db_settle(s);
        if (s->write.failed)
                return;
        if (!res) {
                const char *klass = json_string_value(json_object_get(error, "class"));
                const char *m = json_string_value(json_object_get(error, "message"));
                _cleanup_free_ char *msg =
                    str_printf("the llm call failed (%s): %s", klass ? klass : "error", m ? m : "");
                answer_error(s, p->id, "llm", msg ? msg : "the llm call failed");
                return;
        }
        struct llm_cost cost =
            llm_cost(s->host->cfg.llm_prices, res->model ? res->model : model, &res->usage);
        result = llm_result_to_json(res);
        if (result)
                json_object_set_new(result, "cost_usd", json_real(cost.usd));
        stored = llm_request_stored(s, p->request);
        events = json_pack(
            "[{s:s, s:s, s:{s:s?, s:I, s:I, s:I, s:f, s:b, s:I, s:s, s:I, s:I}}]", "kind",
            "agent.llm", "message", "llm call", "data", "model", res->model ? res->model : model,
            "input_tokens", (json_int_t)res->usage.input_tokens, "output_tokens",
            (json_int_t)res->usage.output_tokens, "cached_input_tokens",
            (json_int_t)res->usage.cached_input_tokens, "cost_usd", cost.usd, "price_known",
            cost.known, "duration_ms", (json_int_t)took, "stop_reason",
            llm_stop_reason_name(res->stop_reason), "tool_calls", (json_int_t)res->tool_call_count,
            "call", (json_int_t)(s->llm_calls + 1));
        if (!result || !stored || !events) {
                session_fail(s, "error", "out of memory");
                return;
        }
        json_t *clean_result = agent_redact(s, result);
        _cleanup_json_ json_t *clean_stored = agent_redact(s, stored);
        struct llm_usage usage = res->usage;
        if (done_us)
                write_us = agent_now_us();
        r = clean_result ? agent_db_record_defer(s, "llm", clean_stored, clean_result, p->hash,
                                                 &usage, cost.usd, 1, 0, TAKE_PTR(events))
                         : -ENOMEM;
        if (r < 0) { /* kills the executor: it has not had the answer */
                json_decref(clean_result);
                session_fail(s, "error", "could not journal an llm call: %s", db_why(r));
                return;
        }
        answer_ok(s, p->id, clean_result);
        /* counted now: the budgets of a request read before the commit see this call */
        s->tokens_in += usage.input_tokens;
        s->tokens_out += usage.output_tokens;
        s->cost_usd += cost.usd;
        s->last_call_cost = cost.usd;
        s->llm_calls++;
        json_decref(s->write.request);
        json_decref(s->write.response);
        s->write.request = json_incref(p->request);
        s->write.response = clean_result;
        if (done_us) {
                int64_t *t = s->write.trace;
                t[0] = s->trace_answered_us ? p->trace_read_us - s->trace_answered_us : -1;
                t[1] = p->trace_started_us;
                t[2] = done_us;
                t[3] = write_us;
                t[4] = s->trace_answered_us = agent_now_us(); /* the answer handed over */
                t[5] = p->trace_read_us;
        }
}

void agent_session_written(struct agent_session *s, int r)
{
        if (r < 0) {
                s->write.failed = r;
                s->host->any_failed = true;
                return;
        }
        remember_messages(s, s->write.request, r, s->write.response);
        json_decref(s->write.request);
        json_decref(s->write.response);
        s->write.request = s->write.response = NULL;
        /* the requests read meanwhile may reach their server now */
        for (struct agent_pending *p = s->pending; p; p = p->next)
                if (p->call)
                        agent_llm_release(p);
        if (s->write.trace[2]) {
                trace_llm(s->write.trace, agent_now_us());
                s->write.trace[2] = 0;
        }
}

int agent_effect_barrier(struct agent_session *s)
{
        agent_db_settle(s);
        return s->write.failed;
}

/* The writes that failed while in flight end their sessions (not where they were settled:
 * that may be inside another statement). */
static void fail_unwritten(struct agent_host *h)
{
        struct agent_session *s;

        if (!h->any_failed)
                return;
        h->any_failed = false;
        do { /* session_fail unlinks s: the list is walked again */
                for (s = h->sessions; s && !s->write.failed; s = s->next)
                        ;
                if (s) {
                        int r = s->write.failed;
                        s->write.failed = 0;
                        session_fail(s, "error", "could not journal an llm call: %s", db_why(r));
                }
        } while (s);
}

void agent_llm_done(struct agent_pending *p, struct llm_result *result, json_t *error,
                    int64_t duration_ms)
{
        struct agent_session *s = p->session;
        struct agent_host *h = s->host;

        pending_remove(s, p);
        llm_done(s, p, result, error, duration_ms);
        /* s may be gone now (a failure ended it); p is ours */
        pending_free(h, p);
        if (result) {
                llm_result_free(result);
                free(result);
        }
        json_decref(error);
}

static void tool_done(struct agent_session *s, struct agent_pending *p, const json_t *output,
                      const json_t *error)
{
        if (p->approval_seq > 0) { /* an approved gated call: its journal row has waited */
                agent_approval_tool_done(s, p, output, error);
                return;
        }
        _cleanup_json_ json_t *events = json_array();
        _cleanup_json_ json_t *result = agent_tool_result(s, p, output, error, events);
        _cleanup_json_ json_t *clean = NULL;
        int r;

        if (!result || !events) {
                session_fail(s, "error", "out of memory");
                return;
        }
        clean = agent_redact(s, result);
        _cleanup_json_ json_t *request = agent_redact(s, p->request);
        r = clean && request ? agent_db_record_tool(s, p, request, clean, TAKE_PTR(events))
                             : -ENOMEM;
        if (r < 0) {
                session_fail(s, "error", "could not journal a tool call: %s", db_why(r));
                return;
        }
        s->tool_calls++;
        answer_ok(s, p->id, clean);
}

bool agent_host_http_done(struct agent_host *h, void *userdata, json_t *output, json_t *error)
{
        struct agent_pending *p = NULL;

        for (struct agent_session *s = h->sessions; s && !p; s = s->next)
                for (struct agent_pending *q = s->pending; q; q = q->next)
                        if ((void *)q == userdata) {
                                p = q;
                                break;
                        }
        if (!p)
                return false;
        p->transfer = NULL; /* finished: runtime freed it */
        agent_tool_finished(p, output, error);
        return true;
}

void agent_tool_finished(struct agent_pending *p, json_t *output, json_t *error)
{
        struct agent_session *s = p->session;
        struct agent_host *h = s->host;

        pending_remove(s, p);
        tool_done(s, p, output, error);
        /* s may be gone now (a failure ended it), p is ours */
        pending_free(h, p);
        json_decref(output);
        json_decref(error);
        host_quiet(h);
}

/* ---- pipes ---- */

static void read_stderr(struct agent_session *s);

static void read_stdout(struct agent_session *s)
{
        char chunk[65536];

        for (;;) {
                ssize_t n = read(s->out_fd, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        if (s->err_fd >= 0)
                                read_stderr(s); /* its last words say why */
                        session_fail(s, "executor", "the executor ended without a result%s%s",
                                     s->stderr_len ? ": " : "", s->stderr_tail);
                        return;
                }
                if (buf_append(&s->from_executor, chunk, (size_t)n) < 0) {
                        session_fail(s, "executor", "the executor wrote a line longer than 8 MiB");
                        return;
                }
                /* every whole line; a handler may end the session */
                for (;;) {
                        char *nl = memchr(s->from_executor.data, '\n', s->from_executor.len);
                        if (!nl)
                                break;
                        size_t len = (size_t)(nl - s->from_executor.data);
                        _cleanup_free_ char *line = strndup(s->from_executor.data, len);
                        memmove(s->from_executor.data, nl + 1, s->from_executor.len - len - 1);
                        s->from_executor.len -= len + 1;
                        s->from_executor.data[s->from_executor.len] = '\0';
                        if (!line) {
                                session_fail(s, "error", "out of memory");
                                return;
                        }
                        struct agent_host *h = s->host;
                        bool alive = false;
                        s->last_io_ms = agent_now_ms();
                        handle_line(s, line, len);
                        for (struct agent_session *x = h->sessions; x; x = x->next)
                                alive |= x == s;
                        if (!alive)
                                return;
                }
        }
}

static void read_stderr(struct agent_session *s)
{
        char chunk[4096];

        for (;;) {
                ssize_t n = read(s->err_fd, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        if (n == 0) {
                                epoll_ctl(s->host->epfd, EPOLL_CTL_DEL, s->err_fd, NULL);
                                close(s->err_fd);
                                s->err_fd = -1;
                        }
                        return;
                }
                /* keep the tail: the end says why it stopped */
                size_t keep = (size_t)n > AGENT_STDERR_TAIL ? AGENT_STDERR_TAIL : (size_t)n;
                const char *from = chunk + n - keep;
                if (s->stderr_len + keep > AGENT_STDERR_TAIL) {
                        size_t drop = s->stderr_len + keep - AGENT_STDERR_TAIL;
                        memmove(s->stderr_tail, s->stderr_tail + drop, s->stderr_len - drop);
                        s->stderr_len -= drop;
                }
                memcpy(s->stderr_tail + s->stderr_len, from, keep);
                s->stderr_len += keep;
                s->stderr_tail[s->stderr_len] = '\0';
                while (s->stderr_len > 0 && s->stderr_tail[s->stderr_len - 1] == '\n')
                        s->stderr_tail[--s->stderr_len] = '\0';
        }
}

/* The epoll event of the loop connection's socket (no session's: serials are far smaller) */
#define AGENT_EV_DB UINT64_MAX

void agent_host_watch_db(struct agent_host *h)
{
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = AGENT_EV_DB};
        int fd = PQsocket(h->cfg.db);

        /* without it the write is still settled: by the next statement, or the next poll */
        if (!h->db_watched && fd >= 0 && epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
                h->db_watched = true;
}

void agent_host_unwatch_db(struct agent_host *h)
{
        int fd = PQsocket(h->cfg.db);

        if (h->db_watched && fd >= 0)
                epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL);
        h->db_watched = false;
}

void agent_host_poll(struct agent_host *h)
{
        struct epoll_event evs[64];
        int n;

        /* a write in flight whose result came (or was read by another statement's wait) */
        db_poll_deferred(h->cfg.db);
        do {
                n = epoll_wait(h->epfd, evs, (int)ELEMENTSOF(evs), 0);
                for (int i = 0; i < n; i++) {
                        if (evs[i].data.u64 == AGENT_EV_DB) {
                                db_poll_deferred(h->cfg.db);
                                continue;
                        }
                        /* an earlier event of this round may have ended the session: it is
                         * found by its serial, never through a pointer it owned */
                        uint64_t serial = evs[i].data.u64 >> 2;
                        int which = (int)(evs[i].data.u64 & 3);
                        if (which == 3) { /* a tool call's sandbox, or their timer */
                                agent_tool_jobs_poll(h, serial);
                                continue;
                        }
                        struct agent_session *s = h->sessions;
                        while (s && s->serial != serial)
                                s = s->next;
                        if (!s)
                                continue;
                        if (which == 0)
                                read_stdout(s);
                        else if (which == 1)
                                read_stderr(s);
                        else
                                flush_to_executor(s);
                }
        } while (n == (int)ELEMENTSOF(evs));
        fail_unwritten(h);
        host_quiet(h);
}

/* ---- host and session lifetimes ---- */

int agent_host_new(const struct agent_host_config *cfg, struct agent_host **out)
{
        struct agent_host *h = calloc(1, sizeof(*h));

        *out = NULL;
        if (!h)
                return -ENOMEM;
        if (sodium_init() < 0) {
                free(h);
                return -EIO;
        }
        h->cfg = *cfg;
        h->trace = getenv("AGENTLY_TRACE_TURNS") && !strcmp(getenv("AGENTLY_TRACE_TURNS"), "1");
        h->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (h->epfd < 0) {
                int r = -errno;
                free(h);
                return r;
        }
        *out = h;
        return 0;
}

void agent_host_free(struct agent_host *h)
{
        if (!h)
                return;
        while (h->sessions) {
                struct agent_session *s = h->sessions;
                session_unlink(h, s);
                session_free(h, s);
        }
        runtime_http_timer_cancel(h->cfg.http, h->quiet_timer);
        close(h->epfd);
        agent_sandbox_free(h);
        free(h);
}

int agent_host_fd(const struct agent_host *h)
{
        return h->epfd;
}

unsigned agent_host_active(const struct agent_host *h)
{
        return h->nsessions;
}

void agent_session_abort(struct agent_host *h, struct agent_session *s)
{
        if (!s || s->ended)
                return;
        s->ended = true;
        session_unlink(h, s);
        session_free(h, s);
}

static int watch(struct agent_session *s, int fd, int which)
{
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = s->serial << 2 | (uint64_t)which};

        return epoll_ctl(s->host->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* A session's memory (nothing started yet); agent is copied. */
static struct agent_session *session_new(struct agent_host *h, const char *run_id,
                                         const char *user_id, int64_t epoch, const char *node_id,
                                         int attempt, const json_t *agent, char **error)
{
        struct agent_session *s = calloc(1, sizeof(*s));
        const char *provider = json_string_value(json_object_get(agent, "provider"));

        if (!s)
                return NULL;
        s->host = h;
        s->pid = -1;
        s->in_fd = s->out_fd = s->err_fd = -1;
        buf_init(&s->to_executor, 4 * (size_t)AGENT_MAX_LINE);
        buf_init(&s->from_executor, AGENT_MAX_LINE);
        str_copy(s->run_id, sizeof(s->run_id), run_id);
        str_copy(s->user_id, sizeof(s->user_id), user_id);
        s->epoch = epoch;
        s->attempt = attempt;
        s->node_id = strdup(node_id);
        s->agent = json_deep_copy(agent);
        s->occurrences = json_object();
        if (!s->node_id || !s->agent || !s->occurrences) {
                session_free(h, s);
                return NULL;
        }
        if (!provider || llm_provider_from_name(provider, &s->provider) < 0) {
                *error = strdup("the agent's provider must be openai or anthropic");
                session_free(h, s);
                return NULL;
        }
        return s;
}

/* Reads the journal, spawns the executor, writes the start message (replay begins). On
 * failure the executor (if any) is stopped and *error says why; s itself stays. */
static int executor_start(struct agent_session *s, char **error)
{
        struct agent_host *h = s->host;
        json_t *start, *tools;
        int r;

        r = agent_db_flush(s); /* the journal read holds everything written */
        if (r < 0) {
                if (!*error)
                        *error = str_printf("could not record the agent's events: %s", db_why(r));
                return r;
        }
        r = agent_db_load_journal(s, error);
        if (r < 0)
                return r;
        r = agent_executor_spawn(h, &s->pid, &s->in_fd, &s->out_fd, &s->err_fd, error);
        if (r < 0)
                return r;
        s->serial = ++h->serials;
        if ((r = watch(s, s->out_fd, 0)) < 0 || (r = watch(s, s->err_fd, 1)) < 0) {
                *error = str_printf("could not watch the executor: %s", strerror(-r));
                executor_stop(s);
                return r;
        }

        int64_t max_turns = json_integer_value(json_object_get(s->agent, "max_turns"));
        tools = agent_tool_definitions(s, json_object_get(s->agent, "tools"));
        if (tools && s->depth >= AGENT_MAX_DEPTH) /* the deepest sub-agents spawn no more */
                for (size_t i = json_array_size(tools); i-- > 0;)
                        if (!strcmp(
                                json_string_value(json_object_get(json_array_get(tools, i), "name"))
                                    ?: "",
                                "spawn_agent"))
                                json_array_remove(tools, i);
        /* features: what this worker accepts beyond the protocol's base (docs/
         * executor-protocol.md, "Optional features"; the executor's first llm request is
         * whole: agent_llm_base starts empty) */
        start = json_pack(
            "{s:s, s:{s:s?, s:O?, s:O?, s:O, s:o, s:O?, s:I}, s:O?, s:i, s:[s]}", "type", "start",
            "agent", "name", s->node_id, "model", json_object_get(s->agent, "model"), "system",
            json_object_get(s->agent, "system"), "prompt", json_object_get(s->agent, "prompt"),
            "tools", tools, "output_schema", json_object_get(s->agent, "output_schema"),
            "max_turns", (json_int_t)(max_turns > 0 ? max_turns : 50), "input",
            json_object_get(s->agent, "input"), "depth", s->depth, "features", "llm_messages_from");
        r = send_message(s, start);
        if (r < 0) {
                *error = strdup("could not write the start message");
                executor_stop(s);
                return r;
        }
        return 0;
}

/* Reads the key, starts the executor, and adds s to the host's sessions. On failure s is
 * freed. */
static int session_launch(struct agent_session *s, char **error)
{
        struct agent_host *h = s->host;
        const char *secret = json_string_value(json_object_get(s->agent, "api_key_secret"));
        int r = 0;

        if (secret)
                r = agent_db_load_api_key(s, secret, error);
        if (r >= 0)
                r = executor_start(s, error);
        if (r < 0) {
                session_free(h, s);
                return r;
        }
        s->next = h->sessions;
        if (h->sessions)
                h->sessions->prev = s;
        h->sessions = s;
        h->nsessions++;
        return 0;
}

/* ---- a parent that can only wait for its sub-agents holds no executor ---- */

/* Every pending request a spawn (its sub-agent running or waiting for a person), and no
 * half line: all the executor can do now is wait. */
static bool waits_only_for_subagents(const struct agent_session *s)
{
        if (s->suspended || s->pid <= 0 || !s->pending || s->from_executor.len > 0)
                return false;
        for (const struct agent_pending *p = s->pending; p; p = p->next)
                if (strcmp(p->kind, "spawn") != 0)
                        return false;
        return true;
}

/*
 * Stops the executor of a session that can only wait for its sub-agents: the agent run is
 * marked waiting ({"kind": "sub_agents"}, fenced), the executor is killed and what its
 * replay knew is dropped. Its sub-agents go on; when none runs any more it is started
 * again (parent_check) and replays its journal, where their answers now are.
 */
static void session_suspend(struct agent_session *s)
{
        _cleanup_json_ json_t *ids = json_array(), *waiting_for = NULL;
        int r;

        for (struct agent_pending *p = s->pending; p && ids; p = p->next)
                json_array_append_new(ids, json_string(p->child ? p->child->agent_run_id : ""));
        waiting_for = json_pack("{s:s, s:O?}", "kind", "sub_agents", "agent_run_ids", ids);
        r = waiting_for ? agent_db_set_status(s, "waiting", waiting_for, NULL) : -ENOMEM;
        if (r < 0) {
                session_fail(s, "error", "could not record that the agent waits: %s", db_why(r));
                return;
        }
        executor_stop(s);
        if (replay_reset(s) < 0) {
                session_fail(s, "error", "out of memory");
                return;
        }
        s->suspended = true;
        parent_check(s);
}

/* A stopped parent whose sub-agents all wait for a person: it waits with them, reported to
 * its own parent, or as the node's needs_input (the first one's question). */
static void session_stuck(struct agent_session *s)
{
        json_t *e = NULL;

        for (struct agent_pending *p = s->pending; p && !e; p = p->next)
                e = p->blocked ? json_incref(p->blocked) : NULL;
        if (!e)
                e = json_pack("{s:s, s:s}", "class", "needs_input", "message",
                              "a sub-agent waits for a person");
        session_end(s, NULL, e);
}

/* After a stopped parent's sub-agent ended (or it was stopped): started again once none of
 * them runs; waiting for a person when every one left does. */
static void parent_check(struct agent_session *s)
{
        _cleanup_free_ char *err = NULL;
        int r;

        if (!s->suspended)
                return;
        for (struct agent_pending *p = s->pending; p; p = p->next)
                if (p->child)
                        return;
        if (s->pending) {
                session_stuck(s);
                return;
        }
        r = agent_db_set_running(s);
        if (r < 0) {
                session_fail(s, "error", "could not resume the agent: %s", db_why(r));
                return;
        }
        s->suspended = false;
        r = executor_start(s, &err);
        if (r < 0)
                session_fail(s, "error", "%s", err ? err : "could not start the executor again");
}

static void quiet_fired(void *userdata);

/* Stops every executor that can only wait and has been quiet for AGENT_QUIET_MS; arms the
 * timer for the next one that may. */
static void host_quiet(struct agent_host *h)
{
        int64_t now = agent_now_ms(), next = 0;
        bool again = true;

        while (again) { /* stopping one may end or start others: look again from the start */
                again = false;
                next = 0;
                for (struct agent_session *s = h->sessions; s; s = s->next) {
                        if (!waits_only_for_subagents(s))
                                continue;
                        if (now - s->last_io_ms >= AGENT_QUIET_MS) {
                                session_suspend(s);
                                again = true;
                                break;
                        }
                        if (!next || s->last_io_ms + AGENT_QUIET_MS < next)
                                next = s->last_io_ms + AGENT_QUIET_MS;
                }
        }
        if (next == h->quiet_at && (h->quiet_timer || !next))
                return;
        runtime_http_timer_cancel(h->cfg.http, h->quiet_timer);
        h->quiet_timer = NULL;
        h->quiet_at = next;
        if (next &&
            runtime_http_timer_start(h->cfg.http, next - now, quiet_fired, h, &h->quiet_timer) < 0)
                h->quiet_at = 0; /* looked at again at the next poll */
}

static void quiet_fired(void *userdata)
{
        struct agent_host *h = userdata;

        h->quiet_timer = NULL; /* freed before the call */
        h->quiet_at = 0;
        host_quiet(h);
}

int agent_session_start(struct agent_host *h, const struct agent_step *step, void *userdata,
                        struct agent_session **out, char **error)
{
        struct agent_session *s;
        int r;

        *out = NULL;
        *error = NULL;
        s = session_new(h, step->run_id, step->user_id, step->epoch, step->node_id, step->attempt,
                        step->agent, error);
        if (!s)
                return *error ? -EINVAL : -ENOMEM;
        s->userdata = userdata;
        r = agent_db_open_run(s, error);
        if (r < 0) {
                session_free(h, s);
                return r;
        }
        r = session_launch(s, error);
        if (r < 0)
                return r;
        *out = s;
        return 0;
}

/*
 * A sub-agent for the parent's spawn request p: child_id NULL creates its agent run (a live
 * spawn), else it resumes that one (a spawn journaled without an answer). The parent's
 * definition with the spawn's prompt and input; one level deeper.
 */
static int child_start(struct agent_session *parent, struct agent_pending *p, const char *child_id,
                       char **error)
{
        struct agent_host *h = parent->host;
        _cleanup_json_ json_t *agent = json_deep_copy(parent->agent);
        const json_t *prompt = json_object_get(p->request, "prompt");
        const json_t *input = json_object_get(p->request, "input");
        struct agent_session *s;
        int r;

        if (!agent)
                return -ENOMEM;
        json_object_set_new(agent, "prompt",
                            json_string(json_is_string(prompt) ? json_string_value(prompt) : ""));
        if (input)
                json_object_set_new(agent, "input", json_deep_copy(input));
        else
                json_object_del(agent, "input");
        s = session_new(h, parent->run_id, parent->user_id, parent->epoch, parent->node_id,
                        parent->attempt, agent, error);
        if (!s)
                return -ENOMEM;
        s->parent = parent;
        s->spawned = p;
        s->depth = parent->depth + 1;
        r = agent_db_open_child(s, parent->agent_run_id, child_id, error);
        if (r < 0) {
                session_free(h, s);
                return r;
        }
        r = session_launch(s, error);
        if (r < 0)
                return r;
        p->child = s;
        return 0;
}

/* ---- what agent_approval.c needs of a session (agent_internal.h) ---- */

int agent_session_answer(struct agent_session *s, const char *id, const json_t *result)
{
        return answer_ok(s, id, result);
}

void agent_session_failed(struct agent_session *s, const char *klass, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        session_fail(s, klass, "%s", m ? m : "the agent session failed");
        free(m);
}

void agent_session_waits(struct agent_session *s, json_t *error)
{
        session_end(s, NULL, error);
}

void agent_pending_add(struct agent_session *s, struct agent_pending *p)
{
        pending_add(s, p);
}

void agent_pending_release(struct agent_host *h, struct agent_pending *p)
{
        pending_free(h, p);
}
