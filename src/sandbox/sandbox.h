/*
 * The sandbox: the one way agently runs an untrusted process (the agent executor, the shell
 * and run_code tools). A process runs under bubblewrap in fresh user, mount, pid, network,
 * ipc, uts and cgroup namespaces, sees only read-only system directories, a fresh /proc,
 * a small /tmp and one writable workspace, runs under a seccomp filter, rlimits and a wall
 * clock, and has no network at all. README.md states the threat model and what each layer
 * stops.
 *
 * Two ways to run:
 *   - SANDBOX_CAPTURE: stdin is the bytes of the spec, stdout and stderr are captured up to
 *     a cap each (the rest is read and dropped, and the result says so);
 *   - SANDBOX_PIPES: a long-lived process (the agent executor) whose stdin and stdout stay
 *     open pipes the caller drives; stderr is still captured with the cap.
 * Both are non-blocking: sandbox_spawn() returns at once, the caller polls the descriptors
 * sandbox_proc_poll_fds() names and calls sandbox_proc_step() when one is ready or the
 * timeout it gave passes. sandbox_run() is the blocking convenience for tests and tools
 * that may block.
 *
 * Errors are negative errno values; the functions that take `char **error` also give a
 * short malloc'd message (lower case, says what to fix) the caller frees. Nothing here logs.
 */
#pragma once

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The directory a spawn's workspace is bound to inside, and its working directory. */
#define SANDBOX_WORKSPACE "/workspace"

/* A context: the tools it found (bwrap, prlimit), the compiled seccomp filter and the user
 * the sandbox runs as. Opened once per process; read-only afterwards, so spawns from any
 * thread may share it. */
struct sandbox;

struct sandbox_config {
        const char *bwrap_path;   /* NULL: /usr/bin/bwrap */
        const char *prlimit_path; /* NULL: /usr/bin/prlimit (util-linux) */
        /* The unprivileged user and group the sandbox runs as when agently runs as root
         * (root's processes are exempt from RLIMIT_NPROC, so root never runs untrusted code,
         * even without capabilities). 0: 65534 (nobody/nogroup). Ignored when not root:
         * then the sandbox runs as the caller's own user inside its own user namespace. */
        uid_t uid;
        gid_t gid;
};

/* Opens a context. 0, or -ENOENT when bwrap or prlimit is missing, -errno otherwise; on
 * failure *out is NULL and *error says what is wrong. The caller frees with sandbox_free. */
int sandbox_open(const struct sandbox_config *config, struct sandbox **out, char **error);
void sandbox_free(struct sandbox *sb);

/* Runs `true` in a sandbox: 0 when sandboxes can start on this machine, else -errno and
 * *error (e.g. unprivileged user namespaces disabled). Blocks for a few milliseconds. */
int sandbox_check(const struct sandbox *sb, char **error);

/* The host uid and gid the sandboxed processes run as (the caller's when not root). */
uid_t sandbox_uid(const struct sandbox *sb);
gid_t sandbox_gid(const struct sandbox *sb);

/* memory_bytes = SANDBOX_UNLIMITED: no address-space limit (a sanitizer build's shadow
 * memory needs terabytes of address space; never for untrusted code). */
#define SANDBOX_UNLIMITED UINT64_MAX

struct sandbox_limits {
        uint32_t cpu_seconds;  /* RLIMIT_CPU of each process */
        uint64_t memory_bytes; /* RLIMIT_AS of each process, or SANDBOX_UNLIMITED */
        uint32_t processes;    /* RLIMIT_NPROC: processes of the sandbox user, counted inside
                                * the sandbox's own user namespace */
        uint64_t file_bytes;   /* RLIMIT_FSIZE: largest file it may write */
        uint32_t open_files;   /* RLIMIT_NOFILE */
        uint64_t tmp_bytes;    /* size of the /tmp and /dev/shm tmpfs each */
        int64_t wall_ms;       /* wall clock from spawn to kill; 0 = none (SANDBOX_PIPES) */
        size_t output_bytes;   /* cap on each captured stream (stdout, stderr) */
};

/* The defaults: 30 s CPU, 1 GiB address space, 64 processes, 64 MiB files, 256 open files,
 * 64 MiB /tmp, 60 s wall clock, 1 MiB per captured stream. */
struct sandbox_limits sandbox_limits_default(void);

/* A host path shown read-only inside at `path` (e.g. the agently binary for the executor).
 * The host path is opened by the caller's user before privileges are dropped. */
struct sandbox_bind {
        const char *host_path;
        const char *path;
};

/* Bytes shown as a read-only file inside at `path` (e.g. the code run_code runs). */
struct sandbox_file {
        const char *path;
        const void *data;
        size_t len;
};

struct sandbox_spec {
        /* argv[0]: an absolute path inside the sandbox, or a name looked up in the PATH of
         * envp. NULL-terminated. */
        const char *const *argv;
        /* The whole environment inside, "NAME=value" strings, NULL-terminated; NULL means
         * empty. Nothing of the caller's environment is passed on. */
        const char *const *envp;
        /* Host directory bound read-write at SANDBOX_WORKSPACE and used as the working
         * directory (create it with sandbox_workspace_create); NULL: none, cwd /tmp. */
        const char *workspace;
        const struct sandbox_bind *binds;
        size_t n_binds;
        const struct sandbox_file *files;
        size_t n_files;
        /* SANDBOX_CAPTURE: the bytes on stdin (at most 16 MiB); ignored with PIPES. */
        const void *stdin_data;
        size_t stdin_len;
        struct sandbox_limits limits;
};

enum sandbox_stdio { SANDBOX_CAPTURE, SANDBOX_PIPES };

struct sandbox_result {
        /* The exit status as a shell reports it: the code, or 128 + the signal that killed
         * the command (SIGKILL at the wall clock or the CPU limit, SIGXCPU at the CPU
         * limit, SIGSEGV/SIGABRT when memory ran out). */
        int exit_status;
        bool timed_out;      /* killed at the wall clock (with every process it started) */
        bool sandbox_failed; /* bwrap itself failed (the reason is in err) */
        int64_t wall_ms;     /* from spawn to exit */
        char *out;           /* captured stdout (NUL-terminated; NULL with PIPES) */
        size_t out_len;
        bool out_truncated; /* stdout passed the cap: the rest was read and dropped */
        char *err;          /* captured stderr (NUL-terminated) */
        size_t err_len;
        bool err_truncated;
};

void sandbox_result_free(struct sandbox_result *r);

struct sandbox_proc;

/*
 * Starts spec in a sandbox. Returns at once: 0 and *out (the caller drives it with
 * sandbox_proc_step and frees it with sandbox_proc_free), or -errno and *error when it
 * could not start (nothing is left running). The spec and everything it points to may be
 * freed on return. Call it from a thread that outlives the process it starts: the
 * sandbox is killed when that thread ends (PR_SET_PDEATHSIG), as it is when the caller
 * dies.
 */
int sandbox_spawn(const struct sandbox *sb, const struct sandbox_spec *spec,
                  enum sandbox_stdio stdio, struct sandbox_proc **out, char **error);

/*
 * For a caller with its own event loop that drives the process itself (the agent module's
 * executor sessions, over epoll): starts spec like SANDBOX_PIPES and hands everything out.
 * *pid is bwrap, a child of the caller: SIGKILL to it ends the whole sandbox (its pid 1 and
 * with it every process inside); the caller reaps it with waitpid. The three pipes are
 * non-blocking and the caller's to close: write to *stdin_fd, read *stdout_fd and
 * *stderr_fd (uncapped: cap what you keep). No wall clock here (limits.wall_ms is
 * ignored): the caller's loop kills at its deadline. 0 or -errno and *error.
 */
int sandbox_spawn_fds(const struct sandbox *sb, const struct sandbox_spec *spec, pid_t *pid,
                      int *stdin_fd, int *stdout_fd, int *stderr_fd, char **error);

/* SANDBOX_PIPES: the write end of the process's stdin and the read end of its stdout, both
 * non-blocking and owned by the proc (valid until sandbox_proc_free, or until
 * sandbox_proc_close_stdin for stdin); -1 with SANDBOX_CAPTURE. */
int sandbox_proc_stdin_fd(const struct sandbox_proc *p);
int sandbox_proc_stdout_fd(const struct sandbox_proc *p);
void sandbox_proc_close_stdin(struct sandbox_proc *p);

/* The host pid of the bwrap process that holds the sandbox. */
pid_t sandbox_proc_pid(const struct sandbox_proc *p);

/* The descriptors the caller should poll for POLLIN (at most SANDBOX_POLL_MAX: captured
 * output and a pidfd that becomes readable at exit; not the PIPES stdin/stdout, which are
 * the caller's) and, in *timeout_ms, the milliseconds until the wall clock (-1: none).
 * Returns how many it filled. */
#define SANDBOX_POLL_MAX 3
int sandbox_proc_poll_fds(const struct sandbox_proc *p, struct pollfd *fds, int *timeout_ms);

/* Does what is due without blocking: reads captured output, kills at the wall clock, reaps.
 * 1 when the process has ended and its output is complete (see sandbox_proc_result), 0
 * while it runs, -errno on a failure of the caller's side (the process is killed). */
int sandbox_proc_step(struct sandbox_proc *p);

/* The result once sandbox_proc_step returned 1 (owned by the proc; NULL before). */
const struct sandbox_result *sandbox_proc_result(const struct sandbox_proc *p);

/* Kills every process of the sandbox (SIGKILL to bwrap; its pid 1 dies with it and the
 * kernel kills the rest of the pid namespace). Keep stepping to collect the result. */
void sandbox_proc_kill(struct sandbox_proc *p);

/* Kills the sandbox if it still runs, reaps it and frees everything. Accepts NULL. */
void sandbox_proc_free(struct sandbox_proc *p);

/* Blocking convenience: spawns with SANDBOX_CAPTURE, waits for the end, and moves the
 * result into *out (the caller frees it with sandbox_result_free). 0 or -errno (*error). */
int sandbox_run(const struct sandbox *sb, const struct sandbox_spec *spec,
                struct sandbox_result *out, char **error);

/* ---- workspaces --------------------------------------------------------------------- */

/* Creates the directory path (mode 0700, parents as needed) for use as a workspace and
 * hands it to the sandbox user. 0 or -errno. */
int sandbox_workspace_create(const struct sandbox *sb, const char *path);

/* Writes a file into a workspace at the relative path name (directories created as
 * needed, none followed through a symlink), owned by the sandbox user. -EINVAL for an
 * absolute name or one with "..". */
int sandbox_workspace_write(const struct sandbox *sb, const char *workspace, const char *name,
                            const void *data, size_t len);

/* Removes a workspace and everything in it without following any symlink in it. */
int sandbox_workspace_remove(const char *path);
