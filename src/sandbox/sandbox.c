/*
 * Spawning and driving sandboxed processes: builds the bwrap command line (namespaces,
 * read-only system directories, fresh /proc, /dev, /tmp, the workspace, the seccomp filter)
 * and the prlimit(1) trampoline that sets the rlimits inside the sandbox's own user
 * namespace, forks a child that only moves descriptors, drops root and executes bwrap, and
 * then drives the process without blocking: captured output with caps, the wall clock,
 * reaping through a pidfd.
 *
 * Why prlimit inside rather than setrlimit before bwrap: RLIMIT_NPROC counts the processes
 * of a user in each user namespace up the chain, so a limit set before bwrap creates the
 * sandbox's namespace would also count every other process of the caller's user (the
 * worker's threads, other sandboxes); set inside, it counts the sandbox's own processes.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "sandbox.h"
#include "sandbox_internal.h"
#include "strutil.h"

/* The ids the process has inside its user namespace (mapped to sandbox_uid/gid outside). */
#define INSIDE_UID 1000
#define INSIDE_GID 1000
#define STDIN_MAX  ((size_t)16 << 20)
#define NOBODY     65534

/* Where the child stages bind sources as root: its own tmpfs over /tmp in a private mount
 * namespace (the host's /tmp is untouched). */
#define STAGE_DIR "/tmp"

static const char *const top_dirs[4] = {"/bin", "/lib", "/lib64", "/sbin"};

/* ---- a NULL-terminated vector of malloc'd strings -------------------------------------- */

struct strv {
        char **v;
        size_t n, cap;
        bool failed;
};

static void strv_add(struct strv *s, const char *str)
{
        if (s->failed)
                return;
        if (s->n + 2 > s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 64;
                char **v = realloc(s->v, cap * sizeof(*v));
                if (!v) {
                        s->failed = true;
                        return;
                }
                s->v = v;
                s->cap = cap;
        }
        s->v[s->n] = str ? strdup(str) : NULL;
        if (!s->v[s->n]) {
                s->failed = true;
                return;
        }
        s->n++;
        s->v[s->n] = NULL;
}

static void strv_addf(struct strv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void strv_addf(struct strv *s, const char *fmt, ...)
{
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= sizeof(tmp)) {
                s->failed = true;
                return;
        }
        strv_add(s, tmp);
}

static void strv_free(struct strv *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        free(s->v);
        *s = (struct strv){0};
}

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_error(char **error, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **error, const char *fmt, ...)
{
        if (!error)
                return;
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        free(*error);
        *error = strdup(tmp);
}

/* ---- the context --------------------------------------------------------------------- */

struct sandbox_limits sandbox_limits_default(void)
{
        return (struct sandbox_limits){
            .cpu_seconds = 30,
            .memory_bytes = (uint64_t)1 << 30,
            .processes = 64,
            .file_bytes = (uint64_t)64 << 20,
            .open_files = 256,
            .tmp_bytes = (uint64_t)64 << 20,
            .wall_ms = 60000,
            .output_bytes = (size_t)1 << 20,
        };
}

void sandbox_free(struct sandbox *sb)
{
        if (!sb)
                return;
        free(sb->bwrap_path);
        free(sb->prlimit_path);
        free(sb->seccomp);
        for (size_t i = 0; i < 4; i++)
                free(sb->top_links[i]);
        free(sb);
}

int sandbox_open(const struct sandbox_config *config, struct sandbox **out, char **error)
{
        static const struct sandbox_config defaults = {0};
        if (!config)
                config = &defaults;
        *out = NULL;
        struct sandbox *sb = calloc(1, sizeof(*sb));
        if (!sb)
                return -ENOMEM;
        sb->bwrap_path = strdup(config->bwrap_path ? config->bwrap_path : "/usr/bin/bwrap");
        sb->prlimit_path = strdup(config->prlimit_path ? config->prlimit_path : "/usr/bin/prlimit");
        if (!sb->bwrap_path || !sb->prlimit_path) {
                sandbox_free(sb);
                return -ENOMEM;
        }
        if (access(sb->bwrap_path, X_OK) < 0) {
                int r = -errno;
                set_error(error, "cannot run %s (%s): install bubblewrap (scripts/install-deps)",
                          sb->bwrap_path, strerror(-r));
                sandbox_free(sb);
                return r;
        }
        if (access(sb->prlimit_path, X_OK) < 0) {
                int r = -errno;
                set_error(error, "cannot run %s (%s): install util-linux", sb->prlimit_path,
                          strerror(-r));
                sandbox_free(sb);
                return r;
        }
        if (geteuid() == 0) {
                sb->drop_privileges = true;
                sb->uid = config->uid ? config->uid : NOBODY;
                sb->gid = config->gid ? config->gid : NOBODY;
        } else {
                sb->uid = geteuid();
                sb->gid = getegid();
        }
        for (size_t i = 0; i < 4; i++) {
                struct stat st;
                if (lstat(top_dirs[i], &st) < 0)
                        continue;
                if (S_ISLNK(st.st_mode)) {
                        char target[PATH_MAX];
                        ssize_t n = readlink(top_dirs[i], target, sizeof(target) - 1);
                        if (n <= 0)
                                continue;
                        target[n] = '\0';
                        /* only a link into /usr keeps the view minimal; anything else is
                         * left out rather than bound */
                        if (!str_has_prefix(target, "usr/") && !str_has_prefix(target, "/usr/"))
                                continue;
                        sb->top_links[i] = strdup(target);
                        if (!sb->top_links[i]) {
                                sandbox_free(sb);
                                return -ENOMEM;
                        }
                        sb->top_present[i] = true;
                } else if (S_ISDIR(st.st_mode)) {
                        sb->top_present[i] = true;
                }
        }
        int r = sandbox_seccomp_compile(&sb->seccomp, &sb->seccomp_len);
        if (r < 0) {
                set_error(error, "could not compile the sandbox's seccomp filter: %s",
                          strerror(-r));
                sandbox_free(sb);
                return r;
        }
        *out = sb;
        return 0;
}

uid_t sandbox_uid(const struct sandbox *sb)
{
        return sb->uid;
}

gid_t sandbox_gid(const struct sandbox *sb)
{
        return sb->gid;
}

/* ---- spawning ------------------------------------------------------------------------- */

struct sandbox_proc {
        pid_t pid;
        int pidfd;
        int out_fd; /* captured stdout (CAPTURE) */
        int err_fd; /* captured stderr */
        int stdin_fd;
        int stdout_fd; /* PIPES */
        struct buf out, err;
        bool out_truncated, err_truncated;
        bool capture;
        int64_t started_ms, deadline_ms, drain_deadline_ms;
        bool killed, timed_out, reaped, done;
        int wait_status;
        int64_t ended_ms;
        struct sandbox_result result;
};

/* What the forked child needs, prepared before fork: after fork in a threaded process the
 * child may only make async-signal-safe calls (no malloc, no locks). */
struct child_plan {
        char **argv;
        int stdio[3];
        int fds[64]; /* moved to 3, 4, ... in this order */
        size_t n_fds;
        bool drop_privileges;
        int *stage_fd;
        char **stage_dst;
        bool *stage_dir;
        size_t n_stage;
        uid_t uid;
        gid_t gid;
        pid_t parent;
        const char *bwrap_path;
};

static void child_fail(const char *what)
{
        static const char prefix[] = "bwrap: the sandbox could not start: ";
        ssize_t ignored = write(2, prefix, sizeof(prefix) - 1);
        ignored = write(2, what, strlen(what));
        ignored = write(2, "\n", 1);
        (void)ignored;
        _exit(126);
}

static __attribute__((noreturn)) void child_exec(const struct child_plan *plan)
{
        int floor = (int)(3 + plan->n_fds + 3);
        int moved[3 + 64];
        size_t n = 0;
        for (size_t i = 0; i < 3; i++, n++)
                moved[n] = fcntl(plan->stdio[i], F_DUPFD, floor);
        for (size_t i = 0; i < plan->n_fds; i++, n++)
                moved[n] = fcntl(plan->fds[i], F_DUPFD, floor);
        for (size_t i = 0; i < n; i++)
                if (moved[i] < 0 || dup2(moved[i], (int)i) < 0)
                        child_fail("could not arrange its descriptors");
        if (syscall(SYS_close_range, (unsigned)n, ~0U, 0) < 0)
                for (int fd = (int)n; fd < 4096; fd++)
                        close(fd);

        /* signal state survives exec: start from the defaults */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        for (int sig = 1; sig < NSIG; sig++)
                sigaction(sig, &dfl, NULL);

        setpgid(0, 0);
        if (plan->drop_privileges && plan->n_stage > 0) {
                /* Clone each source's mount while still in the caller's mount namespace
                 * (open_tree works on mounts of the current one), then, in a private
                 * namespace with a tmpfs over /tmp, attach the clones where bwrap will look */
                int trees[64];
                for (size_t i = 0; i < plan->n_stage; i++) {
                        trees[i] = open_tree(plan->stage_fd[i], "",
                                             OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH |
                                                 AT_RECURSIVE);
                        if (trees[i] < 0)
                                child_fail("could not stage a bind (open_tree)");
                }
                if (unshare(CLONE_NEWNS) < 0 ||
                    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
                    mount("agently-stage", STAGE_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
                          "mode=0755,size=65536") < 0)
                        child_fail("could not stage the binds");
                for (size_t i = 0; i < plan->n_stage; i++) {
                        if (plan->stage_dir[i]) {
                                if (mkdir(plan->stage_dst[i], 0755) < 0)
                                        child_fail("could not stage a bind (mkdir)");
                        } else {
                                int fd =
                                    open(plan->stage_dst[i], O_WRONLY | O_CREAT | O_EXCL, 0644);
                                if (fd < 0)
                                        child_fail("could not stage a bind (create)");
                                close(fd);
                        }
                        if (move_mount(trees[i], "", AT_FDCWD, plan->stage_dst[i],
                                       MOVE_MOUNT_F_EMPTY_PATH) < 0)
                                child_fail("could not stage a bind (move_mount)");
                        close(trees[i]);
                }
        }
        if (plan->drop_privileges) {
                if (setgroups(0, NULL) < 0 || setresgid(plan->gid, plan->gid, plan->gid) < 0 ||
                    setresuid(plan->uid, plan->uid, plan->uid) < 0)
                        child_fail("could not switch to the sandbox user");
        }
        /* after the credential change, which clears it */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != plan->parent)
                _exit(126);
        if (chdir("/") < 0)
                child_fail("could not change to /");
        static char *const empty_env[] = {NULL};
        execve(plan->bwrap_path, plan->argv, empty_env);
        child_fail("could not execute bwrap");
        _exit(126);
}

/* A sealed memfd holding data, for bwrap to read (--seccomp, --ro-bind-data). */
static int data_fd(const char *name, const void *data, size_t len)
{
        int fd = memfd_create(name, MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        const char *p = data;
        size_t left = len;
        while (left > 0) {
                ssize_t w = write(fd, p, left);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        int r = -errno;
                        close(fd);
                        return r;
                }
                p += w;
                left -= (size_t)w;
        }
        if (lseek(fd, 0, SEEK_SET) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

static bool valid_inside_path(const char *path)
{
        if (!path || path[0] != '/' || strstr(path, "/../") || strstr(path, "/./"))
                return false;
        size_t n = strlen(path);
        if (n >= 3 && strcmp(path + n - 3, "/..") == 0)
                return false;
        /* the places the sandbox's own layout owns */
        static const char *const reserved[] = {"/proc", "/dev", SANDBOX_WORKSPACE};
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
                size_t l = strlen(reserved[i]);
                if (strncmp(path, reserved[i], l) == 0 && (path[l] == '\0' || path[l] == '/'))
                        return false;
        }
        return n > 1;
}

struct fdset {
        int fds[64];
        size_t n;
        /* As root, the sources of the binds are staged first (see stage_binds) */
        int stage_fd[64]; /* the source's number in the child */
        char *stage_dst[64];
        bool stage_dir[64];
        size_t n_stage;
};

/* Records fd for the child and returns the number it will have there. */
static int fdset_add(struct fdset *s, int fd)
{
        if (s->n >= sizeof(s->fds) / sizeof(s->fds[0]))
                return -EMFILE;
        s->fds[s->n] = fd;
        return (int)(3 + s->n++);
}

static void fdset_close(struct fdset *s)
{
        for (size_t i = 0; i < s->n; i++)
                if (s->fds[i] >= 0)
                        close(s->fds[i]);
        s->n = 0;
        for (size_t i = 0; i < s->n_stage; i++) {
                free(s->stage_dst[i]);
        }
        s->n_stage = 0;
}

/*
 * Adds the bind of the open O_PATH descriptor fd (a directory or a file) at `path` inside:
 * `--bind-fd`/`--ro-bind-fd` when bwrap runs as the caller, who can reach the source. As
 * root the child becomes the sandbox user before bwrap runs, and bwrap resolves a source
 * by its path, through directories that user may not enter (a data dir under /root): so
 * the child, still root, bind-mounts each source at a staging path first.
 */
static int add_bind(const struct sandbox *sb, struct strv *argv, struct fdset *fds, int fd,
                    bool writable, bool dir, const char *path)
{
        int child_fd = fdset_add(fds, fd);
        if (child_fd < 0) {
                close(fd);
                return child_fd;
        }
        if (!sb->drop_privileges) {
                strv_add(argv, writable ? "--bind-fd" : "--ro-bind-fd");
                strv_addf(argv, "%d", child_fd);
                strv_add(argv, path);
                return 0;
        }
        size_t i = fds->n_stage;
        if (i >= sizeof(fds->stage_fd) / sizeof(fds->stage_fd[0]))
                return -E2BIG;
        fds->stage_fd[i] = child_fd;
        fds->stage_dst[i] = str_printf(STAGE_DIR "/agently-stage-%zu", i);
        fds->stage_dir[i] = dir;
        fds->n_stage++;
        if (!fds->stage_dst[i])
                return -ENOMEM;
        strv_add(argv, writable ? "--bind" : "--ro-bind");
        strv_add(argv, fds->stage_dst[i]);
        strv_add(argv, path);
        return 0;
}

static void close_fd(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

static void free_proc_fds(struct sandbox_proc *p)
{
        close_fd(&p->pidfd);
        close_fd(&p->out_fd);
        close_fd(&p->err_fd);
        close_fd(&p->stdin_fd);
        close_fd(&p->stdout_fd);
}

/* Builds the bwrap and prlimit command line into argv, the descriptors it names into fds. */
static int build_command(const struct sandbox *sb, const struct sandbox_spec *spec,
                         struct strv *argv, struct fdset *fds, char **error)
{
        const struct sandbox_limits *l = &spec->limits;
        strv_add(argv, sb->bwrap_path);
        strv_add(argv, "--unshare-all");
        strv_add(argv, "--unshare-user");
        strv_add(argv, "--disable-userns");
        strv_add(argv, "--die-with-parent");
        strv_add(argv, "--new-session");
        strv_add(argv, "--clearenv");
        strv_add(argv, "--uid");
        strv_addf(argv, "%d", INSIDE_UID);
        strv_add(argv, "--gid");
        strv_addf(argv, "%d", INSIDE_GID);
        strv_add(argv, "--hostname");
        strv_add(argv, "sandbox");

        /* the system: /usr read-only, the merged-/usr links (or the directories), and the
         * few pieces of /etc that programs read at start; nothing else of the host */
        strv_add(argv, "--ro-bind");
        strv_add(argv, "/usr");
        strv_add(argv, "/usr");
        for (size_t i = 0; i < 4; i++) {
                if (!sb->top_present[i])
                        continue;
                if (sb->top_links[i]) {
                        strv_add(argv, "--symlink");
                        strv_add(argv, sb->top_links[i]);
                        strv_add(argv, top_dirs[i]);
                } else {
                        strv_add(argv, "--ro-bind");
                        strv_add(argv, top_dirs[i]);
                        strv_add(argv, top_dirs[i]);
                }
        }
        static const char *const etc_files[] = {"/etc/ld.so.cache", "/etc/alternatives",
                                                "/etc/localtime"};
        for (size_t i = 0; i < sizeof(etc_files) / sizeof(etc_files[0]); i++) {
                strv_add(argv, "--ro-bind-try");
                strv_add(argv, etc_files[i]);
                strv_add(argv, etc_files[i]);
        }
        char passwd[256], group[128];
        snprintf(passwd, sizeof(passwd),
                 "sandbox:x:%d:%d:agently sandbox:" SANDBOX_WORKSPACE ":/bin/sh\n"
                 "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                 INSIDE_UID, INSIDE_GID);
        snprintf(group, sizeof(group), "sandbox:x:%d:\nnogroup:x:65534:\n", INSIDE_GID);
        int fd = data_fd("agently-passwd", passwd, strlen(passwd));
        if (fd >= 0) {
                strv_add(argv, "--ro-bind-data");
                strv_addf(argv, "%d", fdset_add(fds, fd));
                strv_add(argv, "/etc/passwd");
                fd = data_fd("agently-group", group, strlen(group));
        }
        if (fd >= 0) {
                strv_add(argv, "--ro-bind-data");
                strv_addf(argv, "%d", fdset_add(fds, fd));
                strv_add(argv, "/etc/group");
        }
        if (fd < 0) {
                set_error(error, "could not prepare the sandbox: %s", strerror(-fd));
                return fd;
        }

        strv_add(argv, "--proc");
        strv_add(argv, "/proc");
        strv_add(argv, "--dev");
        strv_add(argv, "/dev");
        strv_add(argv, "--size");
        strv_addf(argv, "%" PRIu64, l->tmp_bytes);
        strv_add(argv, "--tmpfs");
        strv_add(argv, "/dev/shm");
        strv_add(argv, "--size");
        strv_addf(argv, "%" PRIu64, l->tmp_bytes);
        strv_add(argv, "--tmpfs");
        strv_add(argv, "/tmp");

        if (spec->workspace) {
                fd = open(spec->workspace, O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (fd < 0) {
                        int r = -errno;
                        set_error(error, "cannot use %s as the workspace: %s", spec->workspace,
                                  strerror(-r));
                        return r;
                }
                int r = add_bind(sb, argv, fds, fd, true, true, SANDBOX_WORKSPACE);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < spec->n_binds; i++) {
                const struct sandbox_bind *b = &spec->binds[i];
                if (!valid_inside_path(b->path)) {
                        set_error(error,
                                  "cannot bind to %s inside the sandbox: give an absolute "
                                  "path outside /proc, /dev and " SANDBOX_WORKSPACE,
                                  b->path ? b->path : "(null)");
                        return -EINVAL;
                }
                fd = open(b->host_path, O_PATH | O_CLOEXEC);
                if (fd < 0) {
                        int r = -errno;
                        set_error(error, "cannot show %s in the sandbox: %s", b->host_path,
                                  strerror(-r));
                        return r;
                }
                struct stat st;
                int r = fstat(fd, &st) < 0 ? -errno : 0;
                if (r == 0)
                        r = add_bind(sb, argv, fds, fd, false, S_ISDIR(st.st_mode), b->path);
                else
                        close(fd);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < spec->n_files; i++) {
                const struct sandbox_file *f = &spec->files[i];
                if (!valid_inside_path(f->path)) {
                        set_error(error,
                                  "cannot place a file at %s inside the sandbox: give an "
                                  "absolute path outside /proc, /dev and " SANDBOX_WORKSPACE,
                                  f->path ? f->path : "(null)");
                        return -EINVAL;
                }
                fd = data_fd("agently-file", f->data, f->len);
                if (fd < 0) {
                        set_error(error, "could not prepare %s: %s", f->path, strerror(-fd));
                        return fd;
                }
                strv_add(argv, "--ro-bind-data");
                strv_addf(argv, "%d", fdset_add(fds, fd));
                strv_add(argv, f->path);
        }
        /* nothing else of the root is writable (it is a tmpfs: writes would cost memory) */
        strv_add(argv, "--remount-ro");
        strv_add(argv, "/dev");
        strv_add(argv, "--remount-ro");
        strv_add(argv, "/");
        strv_add(argv, "--chdir");
        strv_add(argv, spec->workspace ? SANDBOX_WORKSPACE : "/tmp");

        fd = data_fd("agently-seccomp", sb->seccomp, sb->seccomp_len);
        if (fd < 0) {
                set_error(error, "could not prepare the seccomp filter: %s", strerror(-fd));
                return fd;
        }
        strv_add(argv, "--seccomp");
        strv_addf(argv, "%d", fdset_add(fds, fd));

        for (const char *const *e = spec->envp; e && *e; e++) {
                const char *eq = strchr(*e, '=');
                if (!eq || eq == *e) {
                        set_error(error,
                                  "cannot pass \"%s\" to the sandbox's environment: "
                                  "write NAME=value",
                                  *e);
                        return -EINVAL;
                }
                char *name = strndup(*e, (size_t)(eq - *e));
                if (!name)
                        return -ENOMEM;
                strv_add(argv, "--setenv");
                strv_add(argv, name);
                strv_add(argv, eq + 1);
                free(name);
        }

        strv_add(argv, "--");
        strv_add(argv, sb->prlimit_path);
        strv_addf(argv, "--cpu=%" PRIu32 ":%" PRIu32, l->cpu_seconds, l->cpu_seconds);
        if (l->memory_bytes == SANDBOX_UNLIMITED)
                strv_add(argv, "--as=unlimited:unlimited");
        else
                strv_addf(argv, "--as=%" PRIu64 ":%" PRIu64, l->memory_bytes, l->memory_bytes);
        strv_addf(argv, "--nproc=%" PRIu32 ":%" PRIu32, l->processes, l->processes);
        strv_addf(argv, "--fsize=%" PRIu64 ":%" PRIu64, l->file_bytes, l->file_bytes);
        strv_addf(argv, "--nofile=%" PRIu32 ":%" PRIu32, l->open_files, l->open_files);
        strv_add(argv, "--core=0:0");
        strv_add(argv, "--");
        for (const char *const *a = spec->argv; *a; a++)
                strv_add(argv, *a);
        if (fds->n > 60) {
                set_error(error, "cannot prepare the sandbox: too many binds and files");
                return -E2BIG;
        }
        return argv->failed ? -ENOMEM : 0;
}

static int check_limits(const struct sandbox_limits *l, char **error)
{
        if (l->cpu_seconds == 0 || l->memory_bytes < ((uint64_t)16 << 20) || l->processes == 0 ||
            l->open_files < 16 || l->tmp_bytes == 0 || l->output_bytes == 0 || l->wall_ms < 0) {
                set_error(error, "cannot start a sandbox with these limits: start from "
                                 "sandbox_limits_default() (at least 1 s of CPU, 16 MiB of "
                                 "memory, 1 process, 16 files)");
                return -EINVAL;
        }
        return 0;
}

int sandbox_spawn(const struct sandbox *sb, const struct sandbox_spec *spec,
                  enum sandbox_stdio stdio, struct sandbox_proc **out, char **error)
{
        *out = NULL;
        if (!spec->argv || !spec->argv[0]) {
                set_error(error, "cannot start a sandbox without a command");
                return -EINVAL;
        }
        int r = check_limits(&spec->limits, error);
        if (r < 0)
                return r;
        if (stdio == SANDBOX_CAPTURE && spec->stdin_len > STDIN_MAX) {
                set_error(error, "cannot pass %zu bytes on stdin: at most %zu", spec->stdin_len,
                          STDIN_MAX);
                return -E2BIG;
        }
        struct sandbox_proc *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->pid = -1;
        p->pidfd = p->out_fd = p->err_fd = p->stdin_fd = p->stdout_fd = -1;
        p->capture = stdio == SANDBOX_CAPTURE;
        buf_init(&p->out, spec->limits.output_bytes);
        buf_init(&p->err, spec->limits.output_bytes);

        struct strv argv = {0};
        struct fdset fds = {0};
        int child_stdio[3] = {-1, -1, -1};
        r = build_command(sb, spec, &argv, &fds, error);

        int pipe_err[2] = {-1, -1}, pipe_out[2] = {-1, -1}, pipe_in[2] = {-1, -1};
        if (r == 0 && pipe2(pipe_err, O_CLOEXEC) < 0)
                r = -errno;
        if (r == 0 && pipe2(pipe_out, O_CLOEXEC) < 0)
                r = -errno;
        if (r == 0) {
                if (p->capture) {
                        int fd = data_fd("agently-stdin", spec->stdin_data ? spec->stdin_data : "",
                                         spec->stdin_data ? spec->stdin_len : 0);
                        if (fd < 0)
                                r = fd;
                        else
                                pipe_in[0] = fd;
                } else if (pipe2(pipe_in, O_CLOEXEC) < 0) {
                        r = -errno;
                }
        }
        if (r < 0) {
                if (error && !*error)
                        set_error(error, "could not prepare the sandbox: %s", strerror(-r));
                goto fail;
        }
        child_stdio[0] = pipe_in[0];
        child_stdio[1] = pipe_out[1];
        child_stdio[2] = pipe_err[1];

        struct child_plan plan = {
            .argv = argv.v,
            .stdio = {child_stdio[0], child_stdio[1], child_stdio[2]},
            .n_fds = fds.n,
            .drop_privileges = sb->drop_privileges,
            .stage_fd = fds.stage_fd,
            .stage_dst = fds.stage_dst,
            .stage_dir = fds.stage_dir,
            .n_stage = fds.n_stage,
            .uid = sb->uid,
            .gid = sb->gid,
            .parent = getpid(),
            .bwrap_path = sb->bwrap_path,
        };
        memcpy(plan.fds, fds.fds, fds.n * sizeof(int));

        p->started_ms = now_ms();
        pid_t pid = fork();
        if (pid < 0) {
                r = -errno;
                set_error(error, "could not start the sandbox: fork: %s", strerror(-r));
                goto fail;
        }
        if (pid == 0)
                child_exec(&plan);
        p->pid = pid;
        p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (p->deadline_ms == 0 && spec->limits.wall_ms > 0)
                p->deadline_ms = p->started_ms + spec->limits.wall_ms;

        /* the parent keeps its ends only */
        close_fd(&pipe_in[0]);
        close_fd(&pipe_out[1]);
        close_fd(&pipe_err[1]);
        fdset_close(&fds);
        strv_free(&argv);
        p->err_fd = pipe_err[0];
        if (p->capture) {
                p->out_fd = pipe_out[0];
        } else {
                p->stdout_fd = pipe_out[0];
                p->stdin_fd = pipe_in[1];
                fcntl(p->stdin_fd, F_SETFL, O_NONBLOCK);
                fcntl(p->stdout_fd, F_SETFL, O_NONBLOCK);
        }
        if (p->out_fd >= 0)
                fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
        fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
        *out = p;
        return 0;

fail:
        for (size_t i = 0; i < 2; i++) {
                close_fd(&pipe_in[i]);
                close_fd(&pipe_out[i]);
                close_fd(&pipe_err[i]);
        }
        fdset_close(&fds);
        strv_free(&argv);
        sandbox_proc_free(p);
        return r;
}

int sandbox_spawn_fds(const struct sandbox *sb, const struct sandbox_spec *spec, pid_t *pid,
                      int *stdin_fd, int *stdout_fd, int *stderr_fd, char **error)
{
        struct sandbox_spec copy = *spec;
        copy.limits.wall_ms = 0;
        struct sandbox_proc *p;
        int r = sandbox_spawn(sb, &copy, SANDBOX_PIPES, &p, error);
        if (r < 0)
                return r;
        *pid = p->pid;
        *stdin_fd = p->stdin_fd;
        *stdout_fd = p->stdout_fd;
        *stderr_fd = p->err_fd;
        /* the caller owns them now: nothing of the proc may touch them */
        p->stdin_fd = p->stdout_fd = p->err_fd = -1;
        p->pid = -1;
        sandbox_proc_free(p);
        return 0;
}

int sandbox_proc_stdin_fd(const struct sandbox_proc *p)
{
        return p->stdin_fd;
}

int sandbox_proc_stdout_fd(const struct sandbox_proc *p)
{
        return p->stdout_fd;
}

void sandbox_proc_close_stdin(struct sandbox_proc *p)
{
        close_fd(&p->stdin_fd);
}

pid_t sandbox_proc_pid(const struct sandbox_proc *p)
{
        return p->pid;
}

int sandbox_proc_poll_fds(const struct sandbox_proc *p, struct pollfd *fds, int *timeout_ms)
{
        int n = 0;
        if (p->out_fd >= 0)
                fds[n++] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
        if (p->err_fd >= 0)
                fds[n++] = (struct pollfd){.fd = p->err_fd, .events = POLLIN};
        if (!p->reaped && p->pidfd >= 0)
                fds[n++] = (struct pollfd){.fd = p->pidfd, .events = POLLIN};
        int64_t deadline = -1;
        if (!p->reaped && !p->killed && p->deadline_ms > 0)
                deadline = p->deadline_ms;
        else if (p->reaped && p->drain_deadline_ms > 0)
                deadline = p->drain_deadline_ms;
        if (!p->reaped && p->pidfd < 0) /* no pidfd: look again soon */
                deadline = deadline < 0 ? now_ms() + 50 : deadline;
        if (deadline < 0) {
                *timeout_ms = -1;
        } else {
                int64_t left = deadline - now_ms();
                *timeout_ms = left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
        }
        return n;
}

/* Reads what is available; keeps what fits under the cap and drops the rest. Returns 1 at
 * end of file (the descriptor is closed), 0 when more may come, -errno on error. */
static int drain(int *fd, struct buf *b, bool *truncated)
{
        char chunk[65536];
        for (;;) {
                ssize_t n = read(*fd, chunk, sizeof(chunk));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        int r = -errno;
                        close_fd(fd);
                        return r;
                }
                if (n == 0) {
                        close_fd(fd);
                        return 1;
                }
                size_t room = b->max > b->len ? b->max - b->len : 0;
                size_t keep = (size_t)n < room ? (size_t)n : room;
                if (keep > 0 && buf_append(b, chunk, keep) < 0)
                        *truncated = true;
                if (keep < (size_t)n)
                        *truncated = true;
        }
}

void sandbox_proc_kill(struct sandbox_proc *p)
{
        if (!p || p->reaped || p->pid <= 0)
                return;
        /* bwrap's pid 1 has PR_SET_PDEATHSIG = SIGKILL: when bwrap dies it dies, and with the
         * pid namespace's init every other process of the sandbox */
        kill(p->pid, SIGKILL);
        p->killed = true;
}

static void finish(struct sandbox_proc *p)
{
        struct sandbox_result *r = &p->result;
        int st = p->wait_status;
        r->exit_status = WIFEXITED(st)     ? WEXITSTATUS(st)
                         : WIFSIGNALED(st) ? 128 + WTERMSIG(st)
                                           : -1;
        r->timed_out = p->timed_out;
        r->wall_ms = p->ended_ms - p->started_ms;
        r->err_len = p->err.len;
        r->err = buf_steal(&p->err);
        r->err_truncated = p->err_truncated;
        if (p->capture) {
                r->out_len = p->out.len;
                r->out = buf_steal(&p->out);
                r->out_truncated = p->out_truncated;
        }
        /* bwrap reports its own failures on stderr with this prefix and exits 1 (126 from our
         * child before bwrap ran) */
        r->sandbox_failed = !p->timed_out && (r->exit_status == 1 || r->exit_status == 126) &&
                            r->err && str_has_prefix(r->err, "bwrap: ");
        p->done = true;
}

int sandbox_proc_step(struct sandbox_proc *p)
{
        if (p->done)
                return 1;
        int r = 0;
        if (p->out_fd >= 0 && (r = drain(&p->out_fd, &p->out, &p->out_truncated)) < 0)
                goto fail;
        if (p->err_fd >= 0 && (r = drain(&p->err_fd, &p->err, &p->err_truncated)) < 0)
                goto fail;
        int64_t now = now_ms();
        if (!p->reaped) {
                if (p->deadline_ms > 0 && now >= p->deadline_ms && !p->killed) {
                        p->timed_out = true;
                        sandbox_proc_kill(p);
                }
                int status;
                pid_t w = waitpid(p->pid, &status, WNOHANG);
                if (w == p->pid) {
                        p->reaped = true;
                        p->wait_status = status;
                        p->ended_ms = now;
                        /* every process of the sandbox dies with bwrap; allow a moment for
                         * the last output, then stop waiting for it */
                        p->drain_deadline_ms = now + 2000;
                        close_fd(&p->pidfd);
                } else if (w < 0 && errno != EINTR) {
                        r = -errno;
                        goto fail;
                }
        }
        if (p->reaped && (p->out_fd >= 0 || p->err_fd >= 0) && now >= p->drain_deadline_ms) {
                if (p->out_fd >= 0)
                        p->out_truncated = true;
                if (p->err_fd >= 0)
                        p->err_truncated = true;
                close_fd(&p->out_fd);
                close_fd(&p->err_fd);
        }
        if (p->reaped && p->out_fd < 0 && p->err_fd < 0) {
                finish(p);
                return 1;
        }
        return 0;
fail:
        sandbox_proc_kill(p);
        return r;
}

const struct sandbox_result *sandbox_proc_result(const struct sandbox_proc *p)
{
        return p->done ? &p->result : NULL;
}

void sandbox_result_free(struct sandbox_result *r)
{
        if (!r)
                return;
        free(r->out);
        free(r->err);
        *r = (struct sandbox_result){0};
}

void sandbox_proc_free(struct sandbox_proc *p)
{
        if (!p)
                return;
        if (p->pid > 0 && !p->reaped) {
                sandbox_proc_kill(p);
                while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
                        ;
        }
        free_proc_fds(p);
        buf_free(&p->out);
        buf_free(&p->err);
        sandbox_result_free(&p->result);
        free(p);
}

int sandbox_run(const struct sandbox *sb, const struct sandbox_spec *spec,
                struct sandbox_result *out, char **error)
{
        *out = (struct sandbox_result){0};
        struct sandbox_proc *p;
        int r = sandbox_spawn(sb, spec, SANDBOX_CAPTURE, &p, error);
        if (r < 0)
                return r;
        while ((r = sandbox_proc_step(p)) == 0) {
                struct pollfd fds[SANDBOX_POLL_MAX];
                int timeout;
                int n = sandbox_proc_poll_fds(p, fds, &timeout);
                if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
        }
        if (r < 0) {
                set_error(error, "could not follow the sandboxed process: %s", strerror(-r));
                sandbox_proc_free(p);
                return r;
        }
        *out = p->result;
        p->result = (struct sandbox_result){0};
        sandbox_proc_free(p);
        return 0;
}

int sandbox_check(const struct sandbox *sb, char **error)
{
        const char *const argv[] = {"true", NULL};
        const char *const envp[] = {"PATH=/usr/bin:/bin", NULL};
        struct sandbox_spec spec = {.argv = argv, .envp = envp, .limits = sandbox_limits_default()};
        spec.limits.wall_ms = 10000;
        struct sandbox_result res;
        int r = sandbox_run(sb, &spec, &res, error);
        if (r < 0)
                return r;
        if (res.exit_status != 0) {
                while (res.err && res.err_len > 0 && res.err[res.err_len - 1] == '\n')
                        res.err[--res.err_len] = '\0';
                set_error(error,
                          "cannot start a sandbox on this machine (exit %d): %s; bubblewrap "
                          "needs unprivileged user namespaces (sysctl "
                          "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)",
                          res.exit_status, res.err && res.err[0] ? res.err : "no message");
                r = -EPERM;
        }
        sandbox_result_free(&res);
        return r;
}
