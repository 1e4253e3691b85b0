/*
 * The tools that run code for an agent, each call in its own sandbox (sandbox.h) over the
 * step's workspace:
 *
 *   shell     {"command": "...", "stdin"?, "files"?, "keep"?, "timeout"?}
 *             /bin/sh -c command
 *   run_code  {"language": "python"|"node", "code": "...", "args"?: [...], "stdin"?,
 *              "files"?, "keep"?, "timeout"?}
 *             the interpreter on the code, shown read-only at /run/agently/main.<ext>
 *
 * "files" {name: text} are written into the workspace first; "keep" [name] are files the
 * agent wants kept: copied out of the workspace into the call's artifact directory after
 * the run. "timeout" is a duration ("10s") no longer than the caller's wall clock.
 *
 * The result (a JSON object, the tool's answer to the model):
 *   {"exit_status", "timed_out", "duration_ms", "stdout", "stdout_truncated", "stderr",
 *    "stderr_truncated", "files_written": [{"path", "size"}],
 *    "artifacts": [{"name", "path", "size"}], "artifact_errors": [{"name", "error"}]}
 * and, when the call was killed at the workspace's disk cap, "workspace_full": true and
 * "error" (what happened and what to do).
 * stdout and stderr are shown as UTF-8 (other bytes as \xNN). files_written lists the
 * regular files of the workspace that are new or changed by this call. An artifact's path
 * is the host path of its copy; the agent module records the row (see README.md).
 *
 * The interpreters are discovered, not assumed: sandbox_tools_open looks for each known
 * language's interpreter in /usr/local/bin and /usr/bin (what the sandbox sees) and asks
 * it for its version inside a sandbox; only those that answer are offered.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "sandbox.h"

struct sandbox_tools;

/* Discovers the interpreters (one short sandbox each). The sandbox must outlive the
 * result. 0 or -errno (*error). The caller frees with sandbox_tools_free. */
int sandbox_tools_open(const struct sandbox *sb, struct sandbox_tools **out, char **error);
void sandbox_tools_free(struct sandbox_tools *t);

/* The languages run_code offers here: [{"language", "interpreter", "version"}] (new
 * reference). */
json_t *sandbox_tools_languages(const struct sandbox_tools *t);

/* The JSON schema of a tool's arguments ("shell" or "run_code"; run_code's language enum
 * lists the languages found), for the tool list an agent is given. New reference, or NULL
 * for another name. */
json_t *sandbox_tools_schema(const struct sandbox_tools *t, const char *tool);

/* True for the names of the tools here. */
bool sandbox_tools_has(const char *tool);

struct sandbox_tool_call {
        const char *workspace;    /* the step's workspace (sandbox_workspace_create) */
        const char *artifact_dir; /* where kept files go (created as needed); NULL: none */
        const char *const *envp;  /* more environment for the tool ("NAME=value"), or NULL */
        struct sandbox_limits limits;
        /* The disk cap of the whole workspace (bytes of blocks in use, all files and
         * directories): a call that takes it past the cap (and past what it used before the
         * call) is killed, and its result says so. 0: no cap. */
        uint64_t workspace_bytes;
};

struct sandbox_tool_job;

/*
 * Starts a call of tool with args (the object the model wrote). 0 and *out, or -EINVAL
 * with *error when the arguments are wrong (a message for the model: what to fix), or
 * another -errno when the sandbox could not start. Non-blocking: drive the job's process
 * with sandbox_proc_poll_fds/sandbox_proc_step on sandbox_tool_job_proc(), then call
 * sandbox_tool_job_finish.
 */
int sandbox_tool_start(const struct sandbox_tools *t, const struct sandbox_tool_call *call,
                       const char *tool, const json_t *args, struct sandbox_tool_job **out,
                       char **error);

struct sandbox_proc *sandbox_tool_job_proc(struct sandbox_tool_job *job);

/* What to poll for the job (as sandbox_proc_poll_fds, and the timeout also brings the next
 * look at the workspace's disk use while it runs) and the step to call when one is ready
 * or the timeout passed: sandbox_proc_step plus the disk cap (a call past it is killed).
 * Use these rather than the proc's own when the call has a workspace_bytes cap. */
int sandbox_tool_job_poll_fds(const struct sandbox_tool_job *job, struct pollfd *fds,
                              int *timeout_ms);
int sandbox_tool_job_step(struct sandbox_tool_job *job);

/* After sandbox_proc_step returned 1: lists the files written, copies the kept ones and
 * builds the result (new reference in *result). 0 or -errno. */
int sandbox_tool_job_finish(struct sandbox_tool_job *job, json_t **result, char **error);

/* Kills the job's process if it still runs and frees it. Accepts NULL. */
void sandbox_tool_job_free(struct sandbox_tool_job *job);

/* Blocking: start, wait, finish. */
int sandbox_tool_run(const struct sandbox_tools *t, const struct sandbox_tool_call *call,
                     const char *tool, const json_t *args, json_t **result, char **error);
