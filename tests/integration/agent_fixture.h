/*
 * The fixture of the agent tests (test_agent.c, test_tool_approvals.c,
 * test_agent_sandbox.c): a fresh database with user "ada", a temp directory (workers' logs
 * and data), and with servers also the recording sink (worker_sink.h), the scripted LLM
 * server (llm_server.h), a token of ada's and an API process. The helpers are the waits
 * and checks those tests share; each fails the test on error, showing the end of the last
 * worker's log first.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <libpq-fe.h>

#include "auth_token.h"

struct agent_fixture {
        char *conninfo; /* the database's owner (superuser) */
        PGconn *db;     /* connected as the owner */
        struct worker_sink *sink;
        struct llm_server *llm;
        char *dir;  /* logs (DIR/ID.log per worker) and the workers' data */
        char *user; /* ada's id */
        pid_t api;
        char base[64]; /* the API's "http://127.0.0.1:PORT" */
        char token[AUTH_TOKEN_LEN + 1];
        int nworkers;
        char last_log[512]; /* the last spawned worker's log */
};

struct agent_fixture_options {
        bool servers; /* also the sink, the LLM server, ada's token and the API */
        /* with servers: runs after ada and her token exist, before the API starts (what the
         * API must inherit, such as the environment); may be NULL */
        void (*before_api)(struct agent_fixture *f);
};

/* Fills f (zeroed first); name prefixes the database and the directory. Fails the test on
 * error. Undo with agent_fixture_teardown. */
void agent_fixture_setup(struct agent_fixture *f, const char *name,
                         const struct agent_fixture_options *options);

/* Stops the API and the servers, drops the directory, frees what setup made. */
void agent_fixture_teardown(struct agent_fixture *f);

/* A cmocka group teardown: agent_fixture_teardown of *state (the group setup stores the
 * fixture there). */
int agent_fixture_group_teardown(void **state);

/* Workflow name (version 1, ada's) of one agent node "think" with gpt-4o-mini at the scripted
 * LLM server; members are the agent's other members (JSON object members without the
 * braces). Returns its id (caller frees). */
char *agent_fixture_think_workflow(const struct agent_fixture *f, const char *name,
                                   const char *members);

/* One scripted LLM answer: some text and an http_request GET of SINK/<tag>/<path> (extra:
 * more members of the step, with their leading comma; may be NULL). Caller frees. */
char *agent_fixture_tool_step(const struct agent_fixture *f, const char *tag, const char *path,
                              const char *extra);

/* Spawns worker "<prefix><n>" (n counts the fixture's workers) with lease, a 500ms heartbeat
 * and extra (NULL-terminated, may be NULL), logging to DIR/<id>.log (now f->last_log). */
pid_t agent_fixture_spawn_worker(struct agent_fixture *f, const char *prefix, const char *lease,
                                 const char *const *extra);

/* The end of the last worker's log, to stderr (a test that fails shows why). */
void agent_fixture_dump_log(const struct agent_fixture *f);

/* Asserts that the run completed without an error (showing the log first when not). */
void agent_fixture_assert_completed(const struct agent_fixture *f, const char *run);

/* Asserts the LLM and tool calls its agent run counted. */
void agent_fixture_assert_calls(const struct agent_fixture *f, const char *run, int llm_calls,
                                int tool_calls);

/* Waits up to ms for the run to complete or fail (when it does not, stops worker w and fails
 * the test), then stops w, asserting that it exits 0 (under ASan: clean), and asserts that
 * the run completed. */
void agent_fixture_wait_completed(const struct agent_fixture *f, const char *run, pid_t w, int ms);

/* Waits up to ms until the run waits for a tool call's approval; returns the approval's id
 * (caller frees). When it does not, stops worker and fails the test with the run's state. */
char *agent_fixture_waiting_tool_approval(const struct agent_fixture *f, const char *run,
                                          pid_t worker, int ms);

/* method path (body may be NULL) through the API as ada; the status, the answer's body into
 * *out (caller frees; may be NULL). */
long agent_fixture_http(const struct agent_fixture *f, const char *method, const char *path,
                        const char *body, char **out);

/* POST /v1/approvals/{id}/decide with body as ada; the status, the answer's body into *out
 * (caller frees; may be NULL). */
long agent_fixture_decide(const struct agent_fixture *f, const char *approval, const char *body,
                          char **out);

/* The last LLM request's body, as text (what the agent saw last; caller frees). */
char *agent_fixture_last_llm_body(const struct agent_fixture *f);
