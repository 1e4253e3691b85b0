/*
 * Starting an executor: the one place a process is spawned for an agent, so that the
 * sandbox (src/sandbox, issue 11: bubblewrap, seccomp, rlimits) wraps exactly this. The
 * child gets the three pipes, an empty environment and nothing else open.
 */
#include "agent_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

static void close_pair(int p[2])
{
        if (p[0] >= 0)
                close(p[0]);
        if (p[1] >= 0)
                close(p[1]);
}

int agent_executor_spawn(const char *executor_path, pid_t *pid, int *in_fd, int *out_fd,
                         int *err_fd)
{
        int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
        char *const argv[] = {(char *)executor_path, (char *)"executor", NULL};
        char *const envp[] = {NULL};
        posix_spawn_file_actions_t fa;
        int r;

        if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
                r = -errno;
                goto fail;
        }
        r = -posix_spawn_file_actions_init(&fa);
        if (r < 0)
                goto fail;
        /* dup2 clears close-on-exec on the child's 0, 1, 2 */
        r = -posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        if (r == 0)
                r = -posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        if (r == 0)
                r = -posix_spawn_file_actions_adddup2(&fa, err[1], 2);
        if (r == 0)
                r = -posix_spawn(pid, executor_path, &fa, NULL, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        if (r < 0)
                goto fail;
        close(in[0]);
        close(out[1]);
        close(err[1]);
        fcntl(in[1], F_SETFL, O_NONBLOCK);
        fcntl(out[0], F_SETFL, O_NONBLOCK);
        fcntl(err[0], F_SETFL, O_NONBLOCK);
        *in_fd = in[1];
        *out_fd = out[0];
        *err_fd = err[0];
        return 0;
fail:
        close_pair(in);
        close_pair(out);
        close_pair(err);
        return r;
}
