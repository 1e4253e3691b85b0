/*
 * The sandbox's seccomp filter, compiled once with libseccomp and handed to bwrap as a
 * classic BPF program (`--seccomp FD`); bwrap loads it as the last step before it executes
 * the command, after PR_SET_NO_NEW_PRIVS, so everything the command and its children do
 * is filtered and nothing of bwrap's own setup is.
 *
 * Default allow, with a deny list: an interpreter (python3, node, a shell and whatever they
 * start) needs hundreds of ordinary syscalls that change between libc and kernel versions,
 * and an allowlist that breaks them on the next upgrade would be switched off. What is
 * denied is what reaches past the namespaces: the kernel's large attack surfaces (bpf,
 * io_uring, perf, user namespaces, keyrings, userfaultfd), what inspects or controls other
 * processes (ptrace and friends), what changes the mount table or the machine, terminal
 * injection, and every socket family but AF_UNIX. Other architectures' syscall ABIs (i386
 * via int 0x80, x32) kill the process. README.md explains each group.
 */
#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox_internal.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080 /* unshare only: in clone flags these bits are the exit signal */
#endif

/* Denied with EPERM whatever their arguments. Names libseccomp does not know on this
 * architecture are skipped (e.g. the i386-only ones on x86_64). */
static const char *const denied_syscalls[] = {
    /* other processes: read or control their memory and state */
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    /* the mount table and the root */
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    /* large kernel attack surfaces */
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    /* namespaces: entering one (creating one is filtered by flags below) */
    "setns",
    /* the machine */
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "modify_ldt",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "vhangup",
    "syslog",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "fanotify_init",
    /* files by handle, past every path check */
    "name_to_handle_at",
    "open_by_handle_at",
};

/* The namespace flags of clone and unshare: creating a user namespace is how most kernel
 * exploits gain the capabilities they need; the others would let the process rebuild its
 * view of the system. (bwrap has already created the sandbox's own namespaces.) */
static const unsigned long clone_namespace_flags[] = {
    CLONE_NEWUSER, CLONE_NEWNS,  CLONE_NEWPID,    CLONE_NEWNET,
    CLONE_NEWIPC,  CLONE_NEWUTS, CLONE_NEWCGROUP,
};

/* personality() bits that weaken the address space (no ASLR, executable data, page 0). */
static const unsigned long personality_bits[] = {
    ADDR_NO_RANDOMIZE,
    READ_IMPLIES_EXEC,
    MMAP_PAGE_ZERO,
    ADDR_COMPAT_LAYOUT,
};

static int deny(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n,
                const struct scmp_arg_cmp *cmp)
{
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR)
                return 0;
        return seccomp_rule_add_array(ctx, action, nr, n, cmp);
}

int sandbox_seccomp_compile(void **out, size_t *out_len)
{
        *out = NULL;
        *out_len = 0;
        scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
        if (!ctx)
                return -ENOMEM;
        const uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
        int r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);

        for (size_t i = 0; r == 0 && i < sizeof(denied_syscalls) / sizeof(denied_syscalls[0]); i++)
                r = deny(ctx, eperm, denied_syscalls[i], 0, NULL);

        /* clone: flags are the first argument on x86_64 and arm64. clone3 passes them in a
         * struct a filter cannot read, so it answers ENOSYS and libc falls back to clone. */
        for (size_t i = 0;
             r == 0 && i < sizeof(clone_namespace_flags) / sizeof(clone_namespace_flags[0]); i++) {
                struct scmp_arg_cmp flag =
                    SCMP_A0(SCMP_CMP_MASKED_EQ, clone_namespace_flags[i], clone_namespace_flags[i]);
                r = deny(ctx, eperm, "clone", 1, &flag);
                if (r == 0)
                        r = deny(ctx, eperm, "unshare", 1, &flag);
        }
        if (r == 0) {
                struct scmp_arg_cmp flag =
                    SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWTIME, CLONE_NEWTIME);
                r = deny(ctx, eperm, "unshare", 1, &flag);
        }
        if (r == 0)
                r = deny(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL);

        /* Terminal injection: TIOCSTI pushes input into a terminal, TIOCLINUX selects and
         * pastes on a virtual console. The request is an int: compare the low 32 bits only,
         * so high garbage bits cannot slip past. */
        const unsigned long ioctls[] = {TIOCSTI, TIOCLINUX};
        for (size_t i = 0; r == 0 && i < sizeof(ioctls) / sizeof(ioctls[0]); i++) {
                struct scmp_arg_cmp request = SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, ioctls[i]);
                r = deny(ctx, eperm, "ioctl", 1, &request);
        }

        /* Sockets: AF_UNIX only (pipes between the sandbox's own processes; it sees no host
         * socket file, and abstract names live in its own network namespace). Every other
         * family is refused even though the network namespace has no route: AF_INET and
         * AF_INET6 as a second wall, AF_VSOCK (not namespaced: it reaches the hypervisor),
         * AF_NETLINK, AF_PACKET and the rest as attack surface. */
        if (r == 0) {
                struct scmp_arg_cmp family = SCMP_A0(SCMP_CMP_NE, AF_UNIX);
                r = deny(ctx, eperm, "socket", 1, &family);
                if (r == 0)
                        r = deny(ctx, eperm, "socketpair", 1, &family);
        }

        for (size_t i = 0; r == 0 && i < sizeof(personality_bits) / sizeof(personality_bits[0]);
             i++) {
                struct scmp_arg_cmp bit =
                    SCMP_A0(SCMP_CMP_MASKED_EQ, personality_bits[i], personality_bits[i]);
                r = deny(ctx, eperm, "personality", 1, &bit);
        }

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
