/*
 * Starting an executor: the one place a process is spawned for an agent, and it runs in
 * the sandbox (src/sandbox: bubblewrap, seccomp, rlimits, no network, no database socket,
 * no file of the worker's). The executor binary is bound read-only at /agently and started
 * as `/agently executor` over three pipes, with an empty environment. One sandbox context
 * per host (per worker), opened and checked at the first agent step; while sandboxes cannot
 * start on this machine every agent step fails with the reason: there is no unsandboxed
 * fallback.
 */
#include "agent_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"
#include "strutil.h"

/* Opens and checks the host's sandbox context at the first step; 0, or < 0 with the reason.
 * A failure is not kept: the next step tries again (a machine may be fixed meanwhile, and a
 * check may fail for a passing reason such as a fork refused under load). */
int agent_host_sandbox(struct agent_host *h, char **error)
{
        char *why = NULL;
        int r;

        if (h->sandbox)
                return 0;
        r = sandbox_open(NULL, &h->sandbox, &why);
        if (r == 0 && (r = sandbox_check(h->sandbox, &why)) < 0) {
                sandbox_free(h->sandbox);
                h->sandbox = NULL;
        }
        if (r < 0) {
                *error = str_printf("agent steps run their executor in a sandbox, which cannot "
                                    "start on this machine: %s",
                                    why ? why : strerror(-r));
                free(why);
        }
        return r;
}

void agent_sandbox_free(struct agent_host *h)
{
        agent_tools_host_free(h); /* the tools borrow the sandbox */
        sandbox_free(h->sandbox);
        h->sandbox = NULL;
}

int agent_executor_spawn(struct agent_host *h, pid_t *pid, int *in_fd, int *out_fd, int *err_fd,
                         char **error)
{
        const char *const argv[] = {"/agently", "executor", NULL};
#if defined(__SANITIZE_ADDRESS__)
        /* a sanitizer build of agently (the tests): its leak check stops the world with
         * ptrace, which the sandbox refuses */
        const char *const envp[] = {"ASAN_OPTIONS=detect_leaks=0", NULL};
#else
        const char *const envp[] = {NULL};
#endif
        char real[PATH_MAX];
        int r = agent_host_sandbox(h, error);

        if (r < 0)
                return r;
        /* /proc/self/exe (the default) names the worker's binary here, not inside */
        if (!realpath(h->cfg.executor_path, real)) {
                r = -errno;
                *error = str_printf("could not find the executor %s: %s", h->cfg.executor_path,
                                    strerror(errno));
                return r;
        }
        struct sandbox_bind bind = {.host_path = real, .path = "/agently"};
        struct sandbox_spec spec = {.argv = argv,
                                    .envp = envp,
                                    .binds = &bind,
                                    .n_binds = 1,
                                    .limits = sandbox_limits_default()};
#if defined(__SANITIZE_ADDRESS__)
        spec.limits.memory_bytes = SANDBOX_UNLIMITED; /* ASan's shadow memory */
#endif
        /* the session's own loop bounds its lifetime (budgets, abort, lease) */
        spec.limits.wall_ms = 0;
        /* an executor only waits on its pipes; a long agent run must not meet the CPU limit
         * of a tool call */
        spec.limits.cpu_seconds = 3600;
        char *why = NULL;
        r = sandbox_spawn_fds(h->sandbox, &spec, pid, in_fd, out_fd, err_fd, &why);
        if (r < 0) {
                *error = str_printf("could not start the executor in its sandbox: %s",
                                    why ? why : strerror(-r));
                free(why);
        }
        return r;
}
