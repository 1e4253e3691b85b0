/*
 * shell and run_code as agent tools: each call runs in its own sandbox (src/sandbox:
 * sandbox_tools.h) over the agent run's workspace, driven from the worker's loop through
 * the host's epoll (the job's descriptors, and one timerfd for the wall clocks and the disk
 * cap's looks) — never blocking it. The result is journaled like every tool's before the
 * executor gets it, and the files the agent keeps become `artifacts` rows of the run in the
 * same statement (agently_agent_record_artifacts, migrations/0021).
 */
#include "agent_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "redact.h"
#include "sandbox.h"
#include "sandbox_tools.h"
#include "strutil.h"

#define AGENT_WORKSPACE_BYTES  ((uint64_t)256 << 20) /* the disk cap of a workspace */
#define AGENT_TOOL_OUTPUT_MAX  (8 * 1024)            /* stdout, stderr each, as captured */
#define AGENT_TOOL_ENV_MAX     32
#define AGENT_TOOL_ENV_NAMELEN 64

/* ---- the host's data dir, tools and workspaces ---- */

static const char *data_dir(struct agent_host *h, char **error)
{
        const char *dir = h->cfg.secrets_dir ? h->cfg.secrets_dir : ".agently";
        char real[PATH_MAX];
        int r;

        if (h->data_dir)
                return h->data_dir;
        if ((r = dir_make_parents(dir, 0700)) < 0 || !realpath(dir, real)) {
                *error = str_printf("could not use the data dir %s: %s", dir,
                                    strerror(r < 0 ? -r : errno));
                return NULL;
        }
        h->data_dir = strdup(real);
        return h->data_dir;
}

static struct sandbox_tools *host_tools(struct agent_host *h, char **error)
{
        _cleanup_free_ char *why = NULL;
        int r;

        if (h->tools)
                return h->tools;
        r = agent_host_sandbox(h, &why);
        if (r == 0)
                r = sandbox_tools_open(h->sandbox, &h->tools, &why);
        if (r < 0) {
                *error = str_printf("shell and run_code run in a sandbox, which cannot start on "
                                    "this machine: %s",
                                    why ? why : strerror(-r));
                return NULL;
        }
        return h->tools;
}

/* The agent run's workspace: <data dir>/workspaces/<agent run id>. A session that resumes
 * on this machine finds what the last one left (removed when the agent run ends). */
static const char *session_workspace(struct agent_session *s, char **error)
{
        const char *dir = data_dir(s->host, error);
        _cleanup_free_ char *path = NULL;
        int r;

        if (s->workspace)
                return s->workspace;
        if (!dir)
                return NULL;
        path = str_printf("%s/workspaces/%s", dir, s->agent_run_id);
        if (!path)
                return NULL;
        if ((r = sandbox_workspace_create(s->host->sandbox, path)) < 0) {
                *error = str_printf("could not create the workspace %s: %s", path, strerror(-r));
                return NULL;
        }
        s->workspace = TAKE_PTR(path);
        return s->workspace;
}

void agent_tools_session_end(struct agent_session *s, const json_t *error)
{
        const char *klass = json_string_value(json_object_get(error, "class"));

        for (struct agent_pending *p = s->pending; p; p = p->next)
                agent_tool_job_free(s->host, p); /* nothing writes there any more */
        if (s->workspace && !(klass && !strcmp(klass, "needs_input"))) {
                (void)sandbox_workspace_remove(s->workspace);
                free(s->workspace);
                s->workspace = NULL;
        }
}

void agent_tools_session_free(struct agent_session *s)
{
        free(s->workspace); /* an aborted session's stays for the session that resumes */
        s->workspace = NULL;
}

void agent_tools_host_free(struct agent_host *h)
{
        sandbox_tools_free(h->tools);
        h->tools = NULL;
        if (h->has_timer)
                close(h->timerfd);
        h->has_timer = false;
        free(h->data_dir);
        h->data_dir = NULL;
}

/* ---- definitions ---- */

json_t *agent_sandbox_tool_definition(struct agent_session *s, const char *name, char **error)
{
        struct sandbox_tools *t = host_tools(s->host, error);
        _cleanup_json_ json_t *schema = NULL, *langs = NULL;
        _cleanup_free_ char *hint = NULL, *desc = NULL, *list = NULL;
        json_t *props;

        if (!t || !(schema = sandbox_tools_schema(t, name)))
                return NULL;
        props = json_object_get(schema, "properties");
        json_object_set_new(
            props, "env",
            json_pack("{s:s, s:{s:s}, s:s}", "type", "object", "additionalProperties", "type",
                      "string", "description",
                      "environment variables for the process: {\"NAME\": \"value\"}"));
        hint = agent_secrets_hint(s, "in env values");
        if (!strcmp(name, "shell")) {
                desc = str_printf(
                    "Run a command line with /bin/sh in a sandbox without network access. Its "
                    "working directory is this step's workspace, whose files stay between calls. "
                    "Answers the exit status, stdout, stderr and the files written; the files "
                    "named in keep become artifacts of the run.%s%s",
                    hint ? " " : "", hint ? hint : "");
        } else {
                _cleanup_buf_ struct buf b = {0};
                json_t *l;
                size_t i;
                buf_init(&b, 4096);
                langs = sandbox_tools_languages(t);
                json_array_foreach (langs, i, l)
                        (void)buf_printf(&b, "%s%s (%s)", i ? ", " : "",
                                         json_string_value(json_object_get(l, "language")),
                                         json_string_value(json_object_get(l, "version"))
                                             ?: "version unknown");
                list = buf_steal(&b);
                desc = str_printf("Run a program in a sandbox without network access; languages "
                                  "here: %s. Its working directory is this step's workspace, "
                                  "whose files stay between calls. Answers the exit status, "
                                  "stdout, stderr and the files written; the files named in "
                                  "keep become artifacts of the run.%s%s",
                                  list && *list ? list : "none", hint ? " " : "", hint ? hint : "");
        }
        if (!desc)
                return NULL;
        return json_pack("{s:s, s:s, s:s, s:O}", "name", name, "description", desc, "effect",
                         agent_tool_effect(name, NULL), "parameters", schema);
}

/* ---- the job in the host's epoll ---- */

static void job_unwatch(struct agent_host *h, struct agent_pending *p)
{
        for (int i = 0; i < p->njob_fds; i++)
                epoll_ctl(h->epfd, EPOLL_CTL_DEL, p->job_fds[i], NULL);
        p->njob_fds = 0;
}

static void job_watch(struct agent_host *h, struct agent_session *s, struct agent_pending *p)
{
        struct pollfd fds[SANDBOX_POLL_MAX];
        int timeout, n = sandbox_tool_job_poll_fds(p->job, fds, &timeout);

        for (int i = 0; i < n && p->njob_fds < (int)ELEMENTSOF(p->job_fds); i++) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = s->serial << 2 | 3};
                if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fds[i].fd, &ev) == 0)
                        p->job_fds[p->njob_fds++] = fds[i].fd;
        }
}

/* Arms the host's timer at the nearest deadline of its jobs (or disarms it). */
static void timer_arm(struct agent_host *h)
{
        struct itimerspec its = {0};
        int64_t next = -1;

        for (struct agent_session *s = h->sessions; s; s = s->next)
                for (struct agent_pending *p = s->pending; p; p = p->next) {
                        struct pollfd fds[SANDBOX_POLL_MAX];
                        int t;
                        if (!p->job)
                                continue;
                        (void)sandbox_tool_job_poll_fds(p->job, fds, &t);
                        if (t >= 0 && (next < 0 || t < next))
                                next = t;
                }
        if (!h->has_timer) {
                if (next < 0)
                        return;
                h->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
                if (h->timerfd < 0)
                        return; /* the jobs' own descriptors still end them */
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 3}; /* serial 0 */
                if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->timerfd, &ev) < 0) {
                        close(h->timerfd);
                        return;
                }
                h->has_timer = true;
        }
        if (next >= 0) {
                if (next == 0)
                        next = 1; /* a zero it_value disarms */
                its.it_value.tv_sec = next / 1000;
                its.it_value.tv_nsec = (long)(next % 1000) * 1000000L;
        }
        (void)timerfd_settime(h->timerfd, 0, &its, NULL);
}

/* The job of p ended (r: sandbox_tool_job_step's 1, or its error): the result is built and
 * the call journaled and answered (agent_tool_finished; p is freed, the session may end). */
static void job_end(struct agent_pending *p, int r)
{
        json_t *result = NULL, *error = NULL;
        _cleanup_free_ char *err = NULL;

        if (r == 1)
                r = sandbox_tool_job_finish(p->job, &result, &err);
        else
                err = str_printf("could not follow the tool's process: %s", strerror(-r));
        if (r < 0)
                error =
                    json_pack("{s:s, s:s}", "class", "tool", "message", err ? err : strerror(-r));
        sandbox_tool_job_free(p->job);
        p->job = NULL;
        agent_tool_finished(p, result, error);
}

void agent_tool_jobs_poll(struct agent_host *h, uint64_t serial)
{
        uint64_t ticks;

        if (serial == 0 && h->has_timer)
                while (read(h->timerfd, &ticks, sizeof(ticks)) < 0 && errno == EINTR)
                        ;
again:
        for (struct agent_session *s = h->sessions; s; s = s->next) {
                if (serial && s->serial != serial)
                        continue;
                for (struct agent_pending *p = s->pending; p; p = p->next) {
                        if (!p->job)
                                continue;
                        /* every descriptor is still open here: the step may close some */
                        job_unwatch(h, p);
                        int r = sandbox_tool_job_step(p->job);
                        if (r == 0) {
                                job_watch(h, s, p);
                                continue;
                        }
                        job_end(p, r); /* may end s: look again from the start */
                        goto again;
                }
        }
        timer_arm(h);
}

void agent_tool_job_free(struct agent_host *h, struct agent_pending *p)
{
        if (!p->job)
                return;
        job_unwatch(h, p);
        sandbox_tool_job_free(p->job); /* kills the sandbox if it still runs */
        p->job = NULL;
}

/* ---- a call ---- */

static int refuse(json_t **refusal, const char *klass, const char *message)
{
        *refusal = json_pack("{s:s, s:s}", "class", klass, "message", message ? message : klass);
        return -EPERM;
}

static bool env_name_valid(const char *k)
{
        size_t n = strlen(k);

        if (n == 0 || n > AGENT_TOOL_ENV_NAMELEN || (k[0] >= '0' && k[0] <= '9'))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((k[i] >= 'A' && k[i] <= 'Z') || (k[i] >= 'a' && k[i] <= 'z') ||
                      (k[i] >= '0' && k[i] <= '9') || k[i] == '_'))
                        return false;
        return true;
}

static void envp_free(char **envp)
{
        for (size_t i = 0; envp && envp[i]; i++) {
                sodium_memzero(envp[i], strlen(envp[i]));
                free(envp[i]);
        }
        free(envp);
}

int agent_sandbox_tool_start(struct agent_session *s, struct agent_pending *p, json_t **refusal)
{
        struct agent_host *h = s->host;
        const char *name = json_string_value(json_object_get(p->request, "name"));
        const json_t *args = json_object_get(p->request, "arguments");
        const json_t *env = json_object_get(args, "env");
        _cleanup_free_ char *err = NULL, *artifact_dir = NULL;
        _cleanup_json_ json_t *sent_env = NULL, *sargs = NULL;
        struct sandbox_tools *t = host_tools(h, &err);
        const char *ws, *dir, *k;
        char **envp = NULL;
        json_t *v;
        size_t n = 0;
        int r;

        if (!t)
                return refuse(refusal, "tool", err);
        if (env && (!json_is_object(env) || json_object_size(env) > AGENT_TOOL_ENV_MAX))
                return refuse(refusal, "invalid_request",
                              "\"env\" must be an object of at most 32 {\"NAME\": \"value\"}");
        json_object_foreach ((json_t *)env, k, v)
                if (!env_name_valid(k) || !json_is_string(v)) {
                        _cleanup_free_ char *m = str_printf(
                            "env: \"%.64s\" must be a name of A-Z a-z 0-9 _ (not starting with a "
                            "digit) with a string value",
                            k);
                        return refuse(refusal, "invalid_request", m);
                }
        r = agent_secrets_check(s, env, &err);
        if (r < 0)
                return refuse(refusal, r == -EPERM ? "not_allowed" : "invalid_request", err);
        if (r > 0 && agent_secrets_expand(s, env, &sent_env, &err) < 0)
                return refuse(refusal, "secret", err);
        if (!(ws = session_workspace(s, &err)) || !(dir = data_dir(h, &err)))
                return refuse(refusal, "tool", err);
        /* one directory per call, the same when a call is run again after a crash before
         * it was journaled (the copy is overwritten, not doubled) */
        char okey[96];
        snprintf(okey, sizeof(okey), "tool:%s", p->hash);
        artifact_dir =
            str_printf("%s/artifacts/%s/%s/%.16s-%lld", dir, s->run_id, s->agent_run_id, p->hash,
                       (long long)json_integer_value(json_object_get(s->occurrences, okey)));
        sargs = json_deep_copy(args);
        envp = calloc(json_object_size(env) + 1, sizeof(*envp));
        if (!artifact_dir || !sargs || !envp) {
                free(envp);
                return -ENOMEM;
        }
        json_object_del(sargs, "env");
        json_object_foreach (sent_env ? sent_env : (json_t *)env, k, v)
                if (!(envp[n++] = str_printf("%s=%s", k, json_string_value(v)))) {
                        envp_free(envp);
                        return -ENOMEM;
                }
        struct sandbox_tool_call call = {.workspace = ws,
                                         .artifact_dir = artifact_dir,
                                         .envp = (const char *const *)envp,
                                         .limits = sandbox_limits_default(),
                                         .workspace_bytes = AGENT_WORKSPACE_BYTES};
        call.limits.output_bytes = AGENT_TOOL_OUTPUT_MAX;
        r = agent_effect_barrier(s);
        if (r >= 0)
                r = sandbox_tool_start(t, &call, name, sargs, &p->job, &err);
        envp_free(envp);
        if (r == -EINVAL)
                return refuse(refusal, "invalid_request", err);
        if (r < 0) {
                _cleanup_free_ char *m =
                    str_printf("the tool's sandbox could not start: %s", err ? err : strerror(-r));
                return refuse(refusal, "tool", m);
        }
        p->effect = agent_tool_effect(name, args);
        job_watch(h, s, p);
        timer_arm(h);
        return 0;
}

/* ---- the result ---- */

static char *cap_text(const char *text, size_t max)
{
        size_t n = strlen(text);

        if (n <= max)
                return strdup(text);
        while (n > 0 && (n > max || ((unsigned char)text[n] & 0xC0) == 0x80))
                n--;
        return str_printf("%.*s…[cut at %zu bytes]", (int)n, text, max);
}

/* SHA-256 (hex) of a kept file's copy (the worker's own file under the data dir). */
static int file_sha256(const char *path, char out[65])
{
        crypto_hash_sha256_state st;
        unsigned char digest[crypto_hash_sha256_BYTES], chunk[65536];
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return -errno;
        crypto_hash_sha256_init(&st);
        while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int r = -errno;
                        close(fd);
                        return r;
                }
                crypto_hash_sha256_update(&st, chunk, (unsigned long long)n);
        }
        close(fd);
        crypto_hash_sha256_final(&st, digest);
        str_hex(digest, sizeof(digest), out);
        out[64] = '\0';
        return 0;
}

static const char *content_type(const char *name)
{
        static const struct {
                const char *ext, *type;
        } types[] = {
            {".txt", "text/plain"},        {".md", "text/markdown"},    {".csv", "text/csv"},
            {".json", "application/json"}, {".html", "text/html"},      {".xml", "application/xml"},
            {".png", "image/png"},         {".jpg", "image/jpeg"},      {".jpeg", "image/jpeg"},
            {".svg", "image/svg+xml"},     {".pdf", "application/pdf"}, {".py", "text/x-python"},
            {".js", "text/javascript"},    {".log", "text/plain"},
        };
        const char *dot = strrchr(name, '.');

        for (size_t i = 0; dot && i < ELEMENTSOF(types); i++)
                if (!strcasecmp(dot, types[i].ext))
                        return types[i].type;
        return "application/octet-stream";
}

json_t *agent_sandbox_tool_result(struct agent_session *s, struct agent_pending *p,
                                  const json_t *output, const json_t *error, json_t *events)
{
        const char *name = json_string_value(json_object_get(p->request, "name"));
        const char *call_id = json_string_value(json_object_get(p->request, "call_id"));
        _cleanup_json_ json_t *args = agent_redact(s, json_object_get(p->request, "arguments"));
        _cleanup_json_ json_t *shown = NULL, *rows = json_array(), *names = json_array();
        _cleanup_free_ char *full = NULL, *content = NULL, *preview = NULL;
        json_int_t exit_status = -1;
        bool is_error = true;

        if (!rows || !names)
                return NULL;
        if (output) {
                json_t *kept = json_array(), *errors, *a;
                size_t i;
                if (!kept || !(shown = json_deep_copy(output))) {
                        json_decref(kept);
                        return NULL;
                }
                errors = json_object_get(shown, "artifact_errors");
                json_array_foreach (json_object_get(output, "artifacts"), i, a) {
                        const char *an = json_string_value(json_object_get(a, "name"));
                        const char *path = json_string_value(json_object_get(a, "path"));
                        json_int_t size = json_integer_value(json_object_get(a, "size"));
                        char sha[65];
                        int r = an && path ? file_sha256(path, sha) : -EINVAL;
                        if (r < 0) {
                                json_array_append_new(errors,
                                                      json_pack("{s:s?, s:s}", "name", an, "error",
                                                                "its copy could not be read"));
                                continue;
                        }
                        json_array_append_new(rows, json_pack("{s:s, s:I, s:s, s:s+, s:s}", "name",
                                                              an, "size_bytes", size, "sha256", sha,
                                                              "storage_uri", "file://", path,
                                                              "content_type", content_type(an)));
                        /* the model sees no host path */
                        json_array_append_new(kept, json_pack("{s:s, s:I, s:s}", "name", an, "size",
                                                              size, "sha256", sha));
                        json_array_append_new(names, json_string(an));
                }
                json_object_set_new(shown, "artifacts", kept);
                exit_status = json_integer_value(json_object_get(output, "exit_status"));
                is_error = exit_status != 0 || json_is_true(json_object_get(output, "timed_out")) ||
                           json_is_true(json_object_get(output, "workspace_full"));
                full = json_dumps(shown, JSON_COMPACT);
                preview = cap_text(json_string_value(json_object_get(output, "stdout")) ?: "", 512);
        } else {
                const char *m = json_string_value(json_object_get(error, "message"));
                full = str_printf("the tool could not run: %s", m ? m : "no message");
                preview = full ? cap_text(full, 512) : NULL;
        }
        if (!full || !preview || !(content = cap_text(full, AGENT_TOOL_CONTENT_MAX)))
                return NULL;
        json_decref(p->artifacts);
        p->artifacts = json_array_size(rows) > 0 ? json_incref(rows) : NULL;
        json_array_append_new(events, json_pack("{s:s, s:s+, s:{s:s?, s:s?, s:s?, s:O?}}", "kind",
                                                "agent.tool_call", "message", "tool call ",
                                                name ? name : "", "data", "name", name, "call_id",
                                                call_id, "effect", p->effect, "arguments", args));
        json_array_append_new(
            events, json_pack("{s:s, s:s+, s:{s:s?, s:s?, s:s?, s:b, s:I, s:I, s:s, s:O}}", "kind",
                              "agent.tool_result", "message", "tool result ", name ? name : "",
                              "data", "name", name, "call_id", call_id, "effect", p->effect,
                              "is_error", is_error, "exit_status", exit_status, "duration_ms",
                              (json_int_t)(agent_now_ms() - p->started_ms), "preview", preview,
                              "artifacts", names));
        return json_pack("{s:s, s:b, s:s?}", "content", content, "is_error", is_error, "effect",
                         p->effect);
}

/* ---- the journal entry with its artifacts ---- */

/* The call's row with its artifacts rows: one agently_agent_write() (0027). */
int agent_db_record_tool(struct agent_session *s, struct agent_pending *p, const json_t *request,
                         const json_t *response, json_t *events)
{
        json_t *row;

        /* the events hold the arguments and a preview of the output: the choke point too */
        if (events && redact_json(events) < 0) {
                json_decref(events);
                return -ENOMEM;
        }
        row = agent_db_row("tool", request, response, p->hash, NULL, 0, 0, 1, events);
        if (row && p->artifacts &&
            (redact_json(p->artifacts) < 0 ||
             json_object_set(row, "artifacts", p->artifacts) < 0)) {
                json_decref(row);
                return -ENOMEM;
        }
        return agent_db_write(s, row);
}
