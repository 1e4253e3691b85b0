/*
 * The sandbox's seccomp filter, compiled once with libseccomp and handed to bwrap as a
 * classic BPF program (`--seccomp FD`); bwrap loads it as the last step before it executes
 * the command, after PR_SET_NO_NEW_PRIVS, so everything the command and its children do
 * is filtered and nothing of bwrap's own setup is.
 *
 * An allowlist: what a shell, coreutils, python3, node and agently's own executor use on
 * glibc, in the spirit of Docker's default profile but smaller (no ptrace, no SysV IPC or
 * POSIX message queues, no Linux AIO, no NUMA policy, nothing that needs a capability the
 * sandbox does not have). Every other syscall this machine's libseccomp knows answers
 * EPERM. Four are filtered by their arguments: clone (no namespace flags), socket and
 * socketpair (AF_UNIX only), ioctl (no terminal injection) and personality (the default
 * persona, or a query). Two kinds answer ENOSYS instead, so that libc falls back as it
 * would on an older kernel: clone3 (its flags live in a struct a filter cannot read; glibc
 * then uses clone, whose flags it can), and every syscall number above the highest this
 * libseccomp names — a syscall newer than the filter, which a future libc or runtime tries
 * first and must not see refused as if forbidden. Other architectures' syscall ABIs (i386 via
 * int 0x80, x32) kill the process. README.md says why each group is in or out.
 */
#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox_internal.h"

/* Allowed whatever their arguments. Names libseccomp does not know on this architecture
 * are skipped (the 32-bit-only ones on x86_64; the newest ones on an older libseccomp,
 * which then answer ENOSYS like every nameless number). */
static const char *const allowed_syscalls[] = {
    /* memory */
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "msync",
    "mlock",
    "mlock2",
    "munlock",
    "membarrier",
    "memfd_create",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "mseal",
    /* files and directories (the mount namespace decides what they can reach) */
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "getdents",
    "getdents64",
    "getcwd",
    "chdir",
    "fchdir",
    "mkdir",
    "mkdirat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "symlink",
    "symlinkat",
    "readlink",
    "readlinkat",
    "mknod",
    "mknodat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "fchown",
    "fchownat",
    "lchown",
    "umask",
    "truncate",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "readahead",
    "utime",
    "utimes",
    "utimensat",
    "futimesat",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "flock",
    "copy_file_range",
    "sendfile",
    "splice",
    "tee",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    /* descriptors, pipes, waiting on them */
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    /* sockets between the sandbox's own processes (socket() itself is filtered below) */
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    /* processes and threads (clone is filtered below) */
    "fork",
    "vfork",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "arch_prctl",
    "prctl",
    "futex",
    "futex_waitv",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "restart_syscall",
    /* credentials: reading them, and the set calls a user namespace without capabilities
     * turns into no-ops or EPERM */
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "capget",
    /* signals */
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "pause",
    /* time (the vDSO answers most without a syscall) */
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "gettimeofday",
    "time",
    "nanosleep",
    "alarm",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "times",
    /* limits, scheduling, what the machine is */
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "getpriority",
    "setpriority",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "getcpu",
    "uname",
    "sysinfo",
    "getrandom",
};

/* The namespace flags of clone: creating a user namespace is how most kernel exploits gain
 * the capabilities they need; the others would let the process rebuild its view of the
 * system. (bwrap has already created the sandbox's own namespaces.) CLONE_NEWTIME only
 * exists for unshare and clone3, neither of which is allowed. */
#define CLONE_NAMESPACE_FLAGS                                                                      \
        (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | \
         CLONE_NEWCGROUP)

/* ioctl requests refused (the rest of ioctl is allowed): TIOCSTI pushes input into a
 * terminal, TIOCLINUX selects and pastes on a virtual console. */
static const uint32_t denied_ioctls[] = {TIOCSTI, TIOCLINUX};

/* Syscall numbers up to here are looked at (x86_64's table ends in the 400s); a number
 * above the highest libseccomp names answers ENOSYS, the rest of the range EPERM. */
#define SYSCALL_NUMBERS 1024

/* Adds one rule for name; a name unknown on this architecture is skipped. */
static int rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n,
                const struct scmp_arg_cmp *cmp)
{
        int nr = seccomp_syscall_resolve_name(name);
        if (nr < 0) /* __NR_SCMP_ERROR, or another architecture's pseudo-number */
                return 0;
        return seccomp_rule_add_array(ctx, action, nr, n, cmp);
}

/* Allows ioctl unless the low 32 bits of its request (the kernel reads an unsigned int, so
 * higher bits are ignored and must not help a request slip past) are one of denied_ioctls.
 * libseccomp has no "masked not-equal", and an unconditional allow would override any
 * conditional refusal on the same syscall; so the allowed requests are written as the
 * complement of the denied ones: walking each denied value's bits from the top, the
 * prefix that leaves it at that bit (and leads to no other denied value) is allowed, one
 * masked-equal rule each — 32 rules per denied value at most, fewer where they share bits. */
static int allow_ioctl(scmp_filter_ctx ctx)
{
        const size_t n = sizeof(denied_ioctls) / sizeof(denied_ioctls[0]);
        for (unsigned len = 1; len <= 32; len++) {
                uint32_t mask = 0xffffffffu << (32 - len);
                for (size_t i = 0; i < n; i++) {
                        uint32_t sibling = (denied_ioctls[i] ^ (1u << (32 - len))) & mask;
                        bool leads_to_denied = false, seen = false;
                        for (size_t j = 0; j < n; j++) {
                                leads_to_denied |= (denied_ioctls[j] & mask) == sibling;
                                /* an earlier value with the same prefix emitted it already */
                                seen |=
                                    j < i && (denied_ioctls[j] & mask) == (denied_ioctls[i] & mask);
                        }
                        if (leads_to_denied || seen)
                                continue;
                        struct scmp_arg_cmp request = SCMP_A1(SCMP_CMP_MASKED_EQ, mask, sibling);
                        int r = rule(ctx, SCMP_ACT_ALLOW, "ioctl", 1, &request);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int build(scmp_filter_ctx ctx)
{
        int r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
        /* a binary tree of syscall numbers rather than one long chain of comparisons */
        if (r == 0)
                r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);

        for (size_t i = 0; r == 0 && i < sizeof(allowed_syscalls) / sizeof(allowed_syscalls[0]);
             i++)
                r = rule(ctx, SCMP_ACT_ALLOW, allowed_syscalls[i], 0, NULL);

        /* clone: flags are the first argument on x86_64 and arm64 (not on s390). */
        if (r == 0) {
                struct scmp_arg_cmp flags = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0);
                r = rule(ctx, SCMP_ACT_ALLOW, "clone", 1, &flags);
        }
        if (r == 0)
                r = rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL);

        /* Sockets: AF_UNIX only (pipes between the sandbox's own processes; it sees no host
         * socket file, and abstract names live in its own network namespace). Every other
         * family is refused even though the network namespace has no route: AF_INET and
         * AF_INET6 as a second wall, AF_VSOCK (not namespaced: it reaches the hypervisor),
         * AF_NETLINK, AF_PACKET and the rest as attack surface. The whole 64-bit argument
         * must equal AF_UNIX, so no high bits ride along. */
        if (r == 0) {
                struct scmp_arg_cmp family = SCMP_A0(SCMP_CMP_EQ, AF_UNIX);
                r = rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &family);
                if (r == 0)
                        r = rule(ctx, SCMP_ACT_ALLOW, "socketpair", 1, &family);
        }

        if (r == 0)
                r = allow_ioctl(ctx);

        /* personality: the default persona (PER_LINUX), or the query 0xffffffff that
         * sanitizers and setarch-like tools make; no bit that weakens the address space
         * (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, ...). The kernel reads an
         * unsigned int: the low 32 bits are compared. */
        const unsigned long personas[] = {0, 0xffffffffUL};
        for (size_t i = 0; r == 0 && i < sizeof(personas) / sizeof(personas[0]); i++) {
                struct scmp_arg_cmp persona =
                    SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffUL, personas[i]);
                r = rule(ctx, SCMP_ACT_ALLOW, "personality", 1, &persona);
        }

        /* A number above the highest this libseccomp names is a syscall newer than the
         * filter: ENOSYS, as from a kernel without it, so libc and runtimes use the older
         * call they would use there. (The default action, EPERM, covers everything else
         * not allowed: ptrace, mount, bpf, io_uring, keyrings, ...) */
        int highest = -1;
        for (int nr = 0; nr < SYSCALL_NUMBERS; nr++) {
                char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
                if (name)
                        highest = nr;
                free(name);
        }
        for (int nr = highest + 1; r == 0 && nr < SYSCALL_NUMBERS; nr++)
                r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0);
        return r;
}

int sandbox_seccomp_compile(void **out, size_t *out_len)
{
        *out = NULL;
        *out_len = 0;
        scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
        if (!ctx)
                return -ENOMEM;
        int r = build(ctx);
        if (r == 0) {
                /* export to a memfd: libseccomp writes the program to a descriptor */
                int fd = memfd_create("agently-seccomp", MFD_CLOEXEC);
                if (fd < 0) {
                        r = -errno;
                } else {
                        r = seccomp_export_bpf(ctx, fd);
                        off_t size = r == 0 ? lseek(fd, 0, SEEK_END) : -1;
                        if (r == 0 && size <= 0)
                                r = -EIO;
                        if (r == 0) {
                                char *data = malloc((size_t)size);
                                if (!data)
                                        r = -ENOMEM;
                                else if (pread(fd, data, (size_t)size, 0) != size) {
                                        free(data);
                                        r = -EIO;
                                } else {
                                        *out = data;
                                        *out_len = (size_t)size;
                                }
                        }
                        close(fd);
                }
        }
        seccomp_release(ctx);
        return r;
}
