/* Shared between the files of src/agent (not part of its interface). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <jansson.h>
#include <sodium.h>

#include "agent.h"
#include "buf.h"
#include "llm.h"

#define AGENT_MAX_LINE         (8 * 1024 * 1024) /* docs/executor-protocol.md, Transport */
#define AGENT_STDERR_TAIL      2048              /* bytes of an executor's stderr kept */
#define AGENT_TOOL_CONTENT_MAX (32 * 1024)       /* a tool result as the model sees it */
#define AGENT_LLM_TIMEOUT_MS   (10 * 60 * 1000)  /* one call, retries included */
#define AGENT_TOOL_TIMEOUT_MS  (30 * 1000)
#define AGENT_ID_LEN           36
#define AGENT_MAX_DEPTH        3 /* sub-agents of sub-agents: a deeper one gets no spawn_agent */
/* An executor whose every pending request is a spawn, with no line either way for this
 * long, can only wait: it is stopped until its sub-agents end (README: Sub-agents). */
#define AGENT_QUIET_MS 200
/* held rows are written with the next journal write, or this late at the latest: the
 * streamed text (a viewer watches it form), the event and refusal stubs */
#define AGENT_HOLD_TEXT_MS 100
#define AGENT_HOLD_MS      1000
/* an agent run's usage stays in its journal rows until it stops, or until this many rows
 * were written since the last time it was added to its totals (0036) */
#define AGENT_USAGE_FLUSH_ROWS 64

struct runtime_http_transfer;
struct sandbox;
struct sandbox_tools;
struct sandbox_tool_job;
struct llm_call;
struct runtime_http_timer;

/* A journaled call, as read when the session started. */
struct agent_journal_entry {
        int seq;
        char kind[16];
        char hash[65];
        char *call_id;    /* tool/spawn/ask_human: the model's call id, or NULL */
        json_t *request;  /* as stored (an llm request's messages as a delta) */
        json_t *response; /* NULL: no answer yet (an ask_human question waiting) */
        bool matched;
};

/*
 * The previous llm request an executor sent, as the worker rebuilt it (agent_request.c): an
 * llm request with messages_from continues its messages, and its hash continues from the
 * SHA-256 state kept here. One per executor: a new executor's first request is whole.
 */
struct agent_llm_base {
        json_t *messages;               /* its whole message list, or NULL */
        char *head;                     /* its canonical text before the first message */
        crypto_hash_sha256_state state; /* head and every message absorbed (joined by ",") */
};

/* A request being performed live. */
struct agent_pending {
        struct agent_pending *next;
        struct agent_session *session;
        char *id;      /* the protocol id */
        char kind[16]; /* llm, tool */
        char hash[65];
        json_t *request;                        /* the executor's request without v and id */
        struct runtime_http_transfer *transfer; /* a tool's request */
        struct llm_call *call;                  /* an llm call */
        int64_t started_ms;
        const char *effect;          /* tool: its effect class */
        int spawn_seq;               /* spawn: the journal row the sub-agent's answer goes to */
        int approval_seq;            /* an approved gated tool call: its journal row */
        json_t *edited;              /* ... run with a reviewer's arguments: {"by", "arguments",
                                        "proposed_arguments"} (owned), else NULL */
        struct agent_session *child; /* spawn: the sub-agent */
        json_t *blocked; /* spawn: the needs_input error of a sub-agent waiting for a person */
        bool is_pending_marker;       /* always true: agent_host_http_done checks it */
        struct sandbox_tool_job *job; /* shell/run_code: the call in its sandbox */
        int job_fds[3];               /* ... the descriptors of it in the host's epoll */
        int njob_fds;
        json_t *artifacts; /* ... the artifacts rows its journal entry adds, or NULL */
        int64_t trace_read_us, trace_started_us; /* llm, traced: request read, call started */
};

struct agent_session {
        struct agent_session *prev, *next;
        struct agent_host *host;
        void *userdata;
        char run_id[AGENT_ID_LEN + 1], user_id[AGENT_ID_LEN + 1], agent_run_id[AGENT_ID_LEN + 1];
        char *node_id;
        int64_t epoch;
        int attempt;
        json_t *agent; /* the rendered agent object */
        enum llm_provider provider;
        char *api_key; /* wiped when freed; never written anywhere but the request leaving */

        pid_t pid;
        int in_fd, out_fd, err_fd;
        uint64_t serial;    /* epoll events name the session by it: 0 stdout, 1 stderr, 2 stdin */
        bool in_watched;    /* stdin registered for EPOLLOUT (answers waiting) */
        bool suspended;     /* no executor: it waits for its sub-agents (pending spawns only) */
        int64_t last_io_ms; /* the last line read from or written to the executor */
        struct buf to_executor;
        struct buf from_executor;
        char stderr_tail[AGENT_STDERR_TAIL + 1];
        size_t stderr_len;

        struct agent_journal_entry *journal;
        size_t njournal, unmatched;
        json_t *occurrences; /* {"kind:hash": n} of this session */
        struct agent_pending *pending;

        /* totals the budgets are checked against (agent_runs' with the usage of the journal
         * rows after its usage_seq, kept current) */
        json_t *budget;
        int64_t tokens_in, tokens_out, llm_calls, tool_calls;
        double cost_usd, last_call_cost;
        int usage_seq;         /* agent_runs.usage_seq: the journal rows in its totals */
        int last_seq;          /* the last journal row written (or read) */
        bool usage_sent;       /* the write in flight moves usage_seq to its last row */
        int64_t started_at_ms; /* database time the agent run started */
        int64_t db_offset_ms;  /* database ms - monotonic ms at start */

        struct agent_session *parent;  /* a sub-agent's: the session that spawned it */
        struct agent_pending *spawned; /* ... and the parent's request it answers */
        int depth;                     /* 0 for a node's agent */

        struct agent_llm_base llm_base;    /* the executor's previous llm request */
        struct llm_body_cache *body_cache; /* the provider body's kept text (agent_llm.c) */
        json_t *last_messages;     /* the previous llm row's messages (for the stored delta) */
        int last_llm_seq;          /* its journal seq, 0 for none */
        json_t *last_assistant;    /* its answer as the next request's assistant message */
        int64_t trace_line_us;     /* traced: the last line read from the executor */
        int64_t trace_answered_us; /* ... the last llm answer handed to it */
        json_t *held;              /* rows for the next journal write (agent_db_hold), or NULL */
        struct runtime_http_timer *held_timer; /* ... written by then at the latest */
        int64_t held_due_ms;                   /* ... when it fires */
        bool ended;
        bool db_lost;    /* a journal write failed with the database, not the lease: on failing,
                          * the run is left to resume from the journal (session_fail) */
        char *workspace; /* shell/run_code: the agent run's workspace once one was made */

        /*
         * An answered LLM call's journal write in flight (agent_db_record_defer; README.md,
         * "Answered while the commit is in flight"). Until its commit is confirmed an llm
         * request goes out held (all but its body's last byte) and nothing else leaves: a
         * statement settles it first (src/db), an effect waits (agent_effect_barrier).
         */
        struct {
                bool pending;
                int failed;       /* settled with this error (< 0): the session fails */
                json_t *request;  /* the call's request and answer, remembered once written */
                json_t *response; /* (remember_messages needs the row's seq) */
                int64_t trace[6]; /* traced: agent_session.c, trace_llm */
        } write;
};

struct agent_host {
        struct agent_host_config cfg;
        int epfd;
        struct agent_session *sessions;
        unsigned nsessions;
        uint64_t serials;
        struct sandbox *sandbox;     /* agent_spawn.c: executors run in it (opened at the first) */
        struct sandbox_tools *tools; /* shell/run_code (opened at the first agent using them) */
        char *data_dir;              /* absolute: workspaces and artifacts live under it */
        int timerfd;                 /* the tool calls' next deadline (valid with has_timer) */
        bool has_timer;
        struct runtime_http_timer *quiet_timer; /* when the next executor may be stopped */
        bool trace; /* AGENTLY_TRACE_TURNS=1: a "trace agent_llm" line per live llm call */
        int64_t quiet_at;
        bool db_watched; /* the loop connection's socket is in epfd (a write in flight) */
        bool any_failed; /* a session's write in flight failed: agent_host_poll fails it */
};

/* Names the agent run in every event's data (data.agent_run_id): sub-agents share their
 * node, and the run viewer shows each agent run's events under it. Returns events. */
json_t *agent_events_named(const struct agent_session *s, json_t *events);

/* ---- agent_journal.c: the session's statements ---- */
int agent_db_open_run(struct agent_session *s, char **error);
/* A sub-agent's row: created under the parent's (child_id NULL) or read again by id. Both
 * opens are fenced on the run's lease epoch: -ESTALE (nothing found or made) when it is
 * lost. */
int agent_db_open_child(struct agent_session *s, const char *parent_id, const char *child_id,
                        char **error);
/* The agent run's status back to running (fenced; -ESTALE when the lease is lost). */
int agent_db_set_running(struct agent_session *s);
/* The answer of a journal row written without one (a spawn), fenced. */
int agent_db_answer(struct agent_session *s, int seq, const json_t *response, json_t *events);
int agent_db_load_journal(struct agent_session *s, char **error);
int agent_db_load_api_key(struct agent_session *s, const char *secret, char **error);
/* One answered call (kind NULL: only events). Returns the seq (>= 0), -ESTALE when the
 * lease is lost, or a negative errno. */
int agent_db_record(struct agent_session *s, const char *kind, const json_t *request,
                    const json_t *response, const char *hash, const struct llm_usage *usage,
                    double cost, int llm_calls, int tool_calls, json_t *events);
/* agent_db_record left in flight (externally synchronous: README.md, "Answered while the
 * commit is in flight"): sends the statement (0 or a negative errno) and returns; when its
 * result is read, agent_session_written(s, what agent_db_record returns) is called, from
 * wherever it was settled. */
int agent_db_record_defer(struct agent_session *s, const char *kind, const json_t *request,
                          const json_t *response, const char *hash, const struct llm_usage *usage,
                          double cost, int llm_calls, int tool_calls, json_t *events);
/* The loop connection's socket in the host's epoll set while a write is in flight. */
void agent_host_watch_db(struct agent_host *h);
void agent_host_unwatch_db(struct agent_host *h);
/* The session's write in flight, if any, waited for and settled. */
void agent_db_settle(struct agent_session *s);
/* agent_session.c: the write in flight settled (seq >= 0, or a negative errno). Called from
 * inside whatever statement settled it: takes note only, uses no connection. */
void agent_session_written(struct agent_session *s, int r);
/* Before an effect leaves (a tool's request, a sandbox): the session's write in flight
 * confirmed; < 0 when it failed (nothing may leave; the session fails). */
int agent_effect_barrier(struct agent_session *s);
json_t *agent_db_row(const char *kind, const json_t *request, const json_t *response,
                     const char *hash, const struct llm_usage *usage, double cost, int llm_calls,
                     int tool_calls, json_t *events);
int agent_db_write(struct agent_session *s, json_t *row);
int agent_db_hold(struct agent_session *s, json_t *row, int64_t within_ms);
int agent_db_flush(struct agent_session *s);
void agent_db_hold_arm(struct agent_session *s, int64_t within_ms);
void agent_db_hold_cancel(struct agent_session *s);
int agent_db_set_status(struct agent_session *s, const char *status, const json_t *waiting_for,
                        const json_t *error);

/* ---- agent_request.c: request hashes; an llm request as sent made whole ---- */
/* The SHA-256 of body's canonical JSON (keys sorted, compact) as 64 hex digits. */
int agent_request_hash(const json_t *body, char out[65]);
/*
 * The llm request m (a protocol message, borrowed) as the worker handles it: *body (a new
 * reference) is m without v, id and messages_from, its request's messages the whole list
 * (the base's first messages_from, then m's), and hash is its hash — the same whichever
 * form was sent. b becomes this request. 0; -EINVAL with *why (malloc'd) when
 * messages_from names more messages than the base has (b unchanged); -ENOMEM.
 */
int agent_llm_request_take(struct agent_llm_base *b, const json_t *m, json_t **body, char hash[65],
                           char **why);
/* Forgets the base (a new executor starts from whole lists). */
void agent_llm_base_reset(struct agent_llm_base *b);

/* ---- agent_tools.c ---- */
/* The start message's tools for the session's agent's list of names (finish always). */
json_t *agent_tool_definitions(struct agent_session *s, const json_t *names);
/* The JSON Schema of a tool's arguments, as the model is given it (new reference), or NULL
 * for an unknown tool. */
json_t *agent_tool_parameters(struct agent_session *s, const char *name);
/* Starts a live tool request; 0, or < 0 with *refusal set to an answer error object
 * ({"class", "message"}) the executor gets instead. */
int agent_tool_start(struct agent_session *s, struct agent_pending *p, json_t **refusal);
/* Turns a finished tool transfer into the tool's result ({content, is_error, effect}) and
 * its events. */
json_t *agent_tool_result(struct agent_session *s, struct agent_pending *p, const json_t *output,
                          const json_t *error, json_t *events);

/* ---- agent_tools_secrets.c: ${ secrets.NAME } in a tool call's arguments ---- */
/* Counts the references in the strings of v (object values, array items), each checked
 * against the agent's "secrets"; >= 0, or -EPERM / -EINVAL with *why (malloc'd, for the
 * model: a name the agent was not given, a malformed reference). */
int agent_secrets_check(const struct agent_session *s, const json_t *v, char **why);
/* A copy of v with every reference replaced by the secret's value, resolved now
 * (secrets_resolve: the value is registered with the redaction choke point). The copy only
 * goes into what leaves (a request, a sandbox's environment) and is dropped at once. 0, or
 * < 0 with *error naming the secret. */
int agent_secrets_expand(struct agent_session *s, const json_t *v, json_t **out, char **error);
/* The sentence for a tool's description naming the secrets it may use, or NULL. */
char *agent_secrets_hint(const struct agent_session *s, const char *where);

/* ---- agent_tools_sandbox.c: shell and run_code ---- */
/* The definition of shell or run_code ({name, description, effect, parameters}), or NULL
 * when the tools cannot be offered (*error says why). */
json_t *agent_sandbox_tool_definition(struct agent_session *s, const char *name, char **error);
/* Starts a live call; as agent_tool_start. */
int agent_sandbox_tool_start(struct agent_session *s, struct agent_pending *p, json_t **refusal);
/* The tool's result ({content, is_error, effect}) and events from the sandbox tool's result
 * object (output) or error; sets p->artifacts. */
json_t *agent_sandbox_tool_result(struct agent_session *s, struct agent_pending *p,
                                  const json_t *output, const json_t *error, json_t *events);
/* Journals an answered tool call (request and response as stored) with p->artifacts. */
int agent_db_record_tool(struct agent_session *s, struct agent_pending *p, const json_t *request,
                         const json_t *response, json_t *events);
/* The host's epoll said a job's descriptor (serial: its session) or the timer (serial 0)
 * is ready: steps the jobs, ends those that finished (may end sessions). */
void agent_tool_jobs_poll(struct agent_host *h, uint64_t serial);
/* Kills and forgets p's job (a pending freed). */
void agent_tool_job_free(struct agent_host *h, struct agent_pending *p);
/* A session ends (error: how; NULL for an answer): its workspace is removed unless it waits
 * for a person (it goes on from there). */
void agent_tools_session_end(struct agent_session *s, const json_t *error);
void agent_tools_session_free(struct agent_session *s);
void agent_tools_host_free(struct agent_host *h);

/* ---- agent_session.c: a tool call finished (takes output and error; ends p) ---- */
void agent_tool_finished(struct agent_pending *p, json_t *output, json_t *error);

/* ---- agent_llm.c: the calls through src/llm's client ---- */
int agent_llm_start(struct agent_session *s, struct agent_pending *p, char **error);
/* A call started while the session's write was in flight: the rest of its request may go. */
void agent_llm_release(struct agent_pending *p);
void agent_llm_abort(struct agent_pending *p);
/* agent_session.c: a call ended (takes result and error; p is the session's pending). */
void agent_llm_done(struct agent_pending *p, struct llm_result *result, json_t *error,
                    int64_t duration_ms);

/* ---- agent_spawn.c: the executor, in the host's sandbox ---- */
/* Starts an executor (pid and three non-blocking pipes); 0, or < 0 with *error (malloc'd,
 * for the node's error: the sandbox that cannot start and why, or the spawn that failed). */
int agent_executor_spawn(struct agent_host *h, pid_t *pid, int *in_fd, int *out_fd, int *err_fd,
                         char **error);
void agent_sandbox_free(struct agent_host *h);
/* The host's sandbox, opened and checked at the first use; 0 or < 0 with *error. */
int agent_host_sandbox(struct agent_host *h, char **error);

/* ---- agent_approval.c: tool calls that need a person (approve_tools) ---- */
/* Whether the agent's approve_tools gates this tool request (by name or effect class). */
bool agent_approval_gates(const struct agent_session *s, const json_t *body);
/* A live gated call: journaled without an answer with its approval, then the session ends
 * waiting (the run waits holding nothing). Takes body. */
void agent_approval_request(struct agent_session *s, const char *hash, json_t *body);
/* A replayed gated call's journal row e (no answer yet): waits on, runs the approved call
 * (once), or answers the rejection. Takes body. */
void agent_approval_resume(struct agent_session *s, const char *id,
                           const struct agent_journal_entry *e, const char *hash, json_t *body);
/* An approved call's transfer ended (p->approval_seq set): its answer into its row. */
void agent_approval_tool_done(struct agent_session *s, struct agent_pending *p,
                              const json_t *output, const json_t *error);

/* ---- agent_session.c helpers used by the others ---- */
/* Answers request id with result (ok: true). */
int agent_session_answer(struct agent_session *s, const char *id, const json_t *result);
/* Fails the agent step (the session ends; s is freed). */
void agent_session_failed(struct agent_session *s, const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Ends the session waiting for a person: error has class needs_input and waiting_for
 * (taken; s is freed). */
void agent_session_waits(struct agent_session *s, json_t *error);
/* A live request joins the session's pending list (its end frees it) / is freed. */
void agent_pending_add(struct agent_session *s, struct agent_pending *p);
void agent_pending_release(struct agent_host *h, struct agent_pending *p);
/* A deep copy of v with every occurrence of the session's API key replaced. */
json_t *agent_redact(const struct agent_session *s, const json_t *v);
char *agent_redact_text(const struct agent_session *s, const char *text);
int64_t agent_now_ms(void);
int64_t agent_now_us(void);
