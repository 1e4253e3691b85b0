/*
 * Agent sessions: one `agent` node attempt run as an executor child process (the executor
 * protocol, docs/executor-protocol.md) whose every request the worker performs, journals
 * (agent_journal, fenced on the run's lease epoch) and only then answers; on resume the
 * journal answers a new executor while its requests match. The worker's event loop drives
 * everything: the executors' pipes through one epoll descriptor (agent_host_fd), LLM and
 * tool HTTP through the worker's libcurl multi handle. No thread per session. Invariants,
 * lifetimes and the journal's shape: src/agent/README.md.
 *
 * Not thread-safe: every call comes from the worker's loop thread, outside its turn's
 * transaction (a session's statements commit on their own, one per answered call).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <libpq-fe.h>

struct runtime_http;
struct agent_host;
struct agent_session;

/*
 * How a session ends, reported once through agent_done_fn (never after agent_session_abort):
 * output (the agent's final answer) or error ({"class", "message", ...}); error class
 * "needs_input" means the agent waits for a person (its question or an exhausted budget is
 * in "question" / "budget"): the node stays waiting and the run goes to needs_input. The
 * callee owns output and error. The session is freed before the call.
 */
typedef void (*agent_done_fn)(void *owner, void *userdata, json_t *output, json_t *error);

struct agent_host_config {
        PGconn *db;                /* the loop's connection (borrowed) */
        struct runtime_http *http; /* the loop's multi handle (borrowed) */
        const char *executor_path; /* the agently binary ("executor" is its argument) */
        const char *secrets_dir;   /* data dir for secrets_open (NULL: the default) */
        const json_t *llm_prices;  /* price overrides by model for llm_cost, or NULL */
        const char *public_url;    /* where people reach the API (approval links), or NULL */
        agent_done_fn done;
        void *owner; /* passed to done */
};

/* 0 and *out, -ENOMEM, or the errno of creating the epoll descriptor. The caller owns it. */
int agent_host_new(const struct agent_host_config *cfg, struct agent_host **out);
/* Aborts every session (their executors are killed and reaped) and frees h; NULL is fine. */
void agent_host_free(struct agent_host *h);

/* A descriptor that is readable when an executor wrote something (or ended): poll it with
 * the loop's other descriptors and call agent_host_poll then. */
int agent_host_fd(const struct agent_host *h);
/* Reads what executors wrote and answers what can be answered, without blocking on a pipe.
 * May call done. */
void agent_host_poll(struct agent_host *h);
/* Number of live sessions. */
unsigned agent_host_active(const struct agent_host *h);

/*
 * A finished HTTP transfer the loop took from the multi handle: when userdata is one of the
 * host's (an LLM call or a tool's request), the host takes output and error and returns
 * true (it may call done); false otherwise, and nothing was taken. (Until src/llm's client
 * delivers completions by callback.)
 */
bool agent_host_http_done(struct agent_host *h, void *userdata, json_t *output, json_t *error);

/* One agent node attempt (strings are copied). */
struct agent_step {
        const char *run_id, *user_id;
        int64_t epoch;
        const char *node_id;
        int attempt;
        const json_t *agent; /* the node's rendered agent object (src/engine) */
};

/*
 * Starts (or resumes, replaying its journal) the session of step: finds or creates its
 * agent_runs row, reads the journal and the API key, spawns the executor. Returns 0 and the
 * session in *out (owned by h until it ends or is aborted; userdata comes back with done),
 * or a negative errno with *error (malloc'd, for the node's error) — nothing was started.
 */
int agent_session_start(struct agent_host *h, const struct agent_step *step, void *userdata,
                        struct agent_session **out, char **error);

/* Stops a session at once (cancel, lease lost, drain): kills its executor, aborts its
 * requests, frees it; done is never called. */
void agent_session_abort(struct agent_host *h, struct agent_session *s);

/* The effect class of a built-in tool ("read_only", "idempotent", "irreversible"), or NULL
 * for an unknown name. */
const char *agent_tool_effect(const char *tool, const json_t *arguments);
