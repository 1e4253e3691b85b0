/*
 * The escape battery's probe: one attempt per invocation, run inside a sandbox by
 * test_sandbox_escape.c (and outside it as the control that shows the attempt works when
 * nothing stops it). It prints one line, "<attempt> <errno>" (0: the attempt succeeded),
 * plus what the attempt saw where the test needs it, and exits 0 — a denial is an answer,
 * not a crash.
 *
 *   connect HOST PORT     TCP connect
 *   unix PATH             connect to a unix socket
 *   environ               prints its own environment and /proc/1/environ
 *   read PATH             open for reading; prints the first bytes
 *   write PATH            create and write a file
 *   ptrace                PTRACE_ATTACH to a child of its own
 *   mount                 mount a tmpfs
 *   bpf                   BPF_MAP_CREATE
 *   io_uring              io_uring_setup
 *   userns                unshare(CLONE_NEWUSER)
 *   clone_userns          clone(CLONE_NEWUSER)
 *   tiocsti               push a byte into its own terminal (a pty it opens)
 *   tiocsti_high          the same with bits above the low 32 set in the request (the
 *                         kernel ignores them)
 *   unlisted              ioprio_get of itself: harmless (it only reads), and needed by
 *                         nothing the sandbox runs, so not on the seccomp allowlist
 *   newer                 mseal (Linux 6.10) on a page of its own: newer than libseccomp
 *                         2.5 knows
 *   socket FAMILY         socket(FAMILY, SOCK_STREAM, 0)
 *   forkbomb              forks until refused; prints how many it got
 *   memory MIB            touches MIB MiB; prints how much it got
 *   spin BEAT             starts two children that append to BEAT every 20 ms, then spins
 *   output BYTES          writes BYTES bytes to stdout
 *   fsize PATH MIB        writes MIB MiB to PATH (SIGXFSZ ignored, so the limit is an errno)
 *   nofile                opens /dev/null until refused; prints how many it got
 *   cpu                   spins on the CPU, no children
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int report(const char *what, int err)
{
        printf("%s %d\n", what, err);
        return 0;
}

static int result(const char *what, long r)
{
        return report(what, r < 0 ? errno : 0);
}

static void print_environ(const char *label, const char *path)
{
        FILE *f = fopen(path, "r");
        if (!f) {
                printf("%s unreadable %d\n", label, errno);
                return;
        }
        char buf[8192];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++)
                if (buf[i] == '\0')
                        buf[i] = ' ';
        buf[n] = '\0';
        printf("%s %s\n", label, buf);
}

static int child_sleeper(void)
{
        pid_t pid = fork();
        if (pid == 0) {
                pause();
                _exit(0);
        }
        return pid;
}

/* TIOCSTI on a pty made its controlling terminal, in a session of its own: the kernel
 * allows that to an unprivileged process unless dev.tty.legacy_tiocsti is 0 (then EIO);
 * the filter says EPERM. The request goes through syscall() so that high bits reach the
 * kernel as given. */
static int push_into_terminal(const char *what, unsigned long request)
{
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
                return report("tiocsti-setup", errno);
        pid_t pid = fork();
        if (pid == 0) {
                setsid();
                int slave = open(ptsname(master), O_RDWR);
                if (slave < 0)
                        _exit(100);
                ioctl(slave, TIOCSCTTY, 0);
                char c = 'x';
                long r = syscall(SYS_ioctl, slave, request, &c);
                _exit(r < 0 ? errno : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        return report(what, WIFEXITED(st) ? WEXITSTATUS(st) : 255);
}

static int stack_child(void *arg)
{
        (void)arg;
        return 0;
}

int main(int argc, char **argv)
{
        setvbuf(stdout, NULL, _IONBF, 0);
        const char *what = argc > 1 ? argv[1] : "";
        if (strcmp(what, "connect") == 0 && argc == 4) {
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                if (fd < 0)
                        return report(what, errno);
                struct sockaddr_in a = {.sin_family = AF_INET,
                                        .sin_port = htons((uint16_t)strtol(argv[3], NULL, 10))};
                inet_pton(AF_INET, argv[2], &a.sin_addr);
                struct timeval tv = {.tv_sec = 2};
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
                return result(what, connect(fd, (struct sockaddr *)&a, sizeof(a)));
        }
        if (strcmp(what, "unix") == 0 && argc == 3) {
                int fd = socket(AF_UNIX, SOCK_STREAM, 0);
                if (fd < 0)
                        return report(what, errno);
                struct sockaddr_un a = {.sun_family = AF_UNIX};
                snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[2]);
                return result(what, connect(fd, (struct sockaddr *)&a, sizeof(a)));
        }
        if (strcmp(what, "environ") == 0) {
                print_environ("self", "/proc/self/environ");
                print_environ("init", "/proc/1/environ");
                return report(what, 0);
        }
        if (strcmp(what, "read") == 0 && argc == 3) {
                int fd = open(argv[2], O_RDONLY);
                if (fd < 0)
                        return report(what, errno);
                char buf[256];
                ssize_t n = read(fd, buf, sizeof(buf) - 1);
                buf[n > 0 ? n : 0] = '\0';
                printf("content %s\n", buf);
                return report(what, n < 0 ? errno : 0);
        }
        if (strcmp(what, "write") == 0 && argc == 3) {
                int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd < 0)
                        return report(what, errno);
                return result(what, write(fd, "escaped\n", 8));
        }
        if (strcmp(what, "ptrace") == 0) {
                pid_t child = child_sleeper();
                long r = ptrace(PTRACE_ATTACH, child, NULL, NULL);
                int err = r < 0 ? errno : 0;
                kill(child, SIGKILL);
                waitpid(child, NULL, 0);
                return report(what, err);
        }
        if (strcmp(what, "mount") == 0)
                return result(what, mount("none", "/tmp", "tmpfs", 0, NULL));
        if (strcmp(what, "bpf") == 0) {
                union bpf_attr attr;
                memset(&attr, 0, sizeof(attr));
                attr.map_type = BPF_MAP_TYPE_ARRAY;
                attr.key_size = 4;
                attr.value_size = 4;
                attr.max_entries = 1;
                return result(what, syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr)));
        }
        if (strcmp(what, "io_uring") == 0) {
                struct io_uring_params p;
                memset(&p, 0, sizeof(p));
                return result(what, syscall(SYS_io_uring_setup, 4, &p));
        }
        if (strcmp(what, "userns") == 0)
                return result(what, unshare(CLONE_NEWUSER));
        if (strcmp(what, "clone_userns") == 0) {
                static char stack[65536];
                pid_t pid =
                    clone(stack_child, stack + sizeof(stack), CLONE_NEWUSER | SIGCHLD, NULL);
                if (pid > 0)
                        waitpid(pid, NULL, 0);
                return result(what, pid);
        }
        if (strcmp(what, "tiocsti") == 0)
                return push_into_terminal(what, TIOCSTI);
        if (strcmp(what, "tiocsti_high") == 0)
                return push_into_terminal(what, (1UL << 32) | TIOCSTI);
        if (strcmp(what, "unlisted") == 0)
                return result(what, syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0));
        if (strcmp(what, "newer") == 0) {
                void *page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (page == MAP_FAILED)
                        return report("newer-setup", errno);
                return result(what, syscall(462 /* mseal on x86_64 and arm64 */, page, 4096, 0));
        }
        if (strcmp(what, "socket") == 0 && argc == 3) {
                int family = (int)strtol(argv[2], NULL, 10);
                return result(what, socket(family, SOCK_STREAM, 0));
        }
        if (strcmp(what, "forkbomb") == 0) {
                int n = 0, err = 0;
                for (; n < 100000; n++) {
                        pid_t pid = fork();
                        if (pid < 0) {
                                err = errno;
                                break;
                        }
                        if (pid == 0) {
                                pause();
                                _exit(0);
                        }
                }
                printf("forked %d\n", n);
                return report(what, err);
        }
        if (strcmp(what, "memory") == 0 && argc == 3) {
                long want = strtol(argv[2], NULL, 10);
                long got = 0;
                int err = 0;
                for (; got < want; got += 16) {
                        char *p = malloc((size_t)16 << 20);
                        if (!p) {
                                err = errno;
                                break;
                        }
                        memset(p, 1, (size_t)16 << 20);
                }
                printf("allocated %ld\n", got);
                return report(what, err);
        }
        if (strcmp(what, "spin") == 0 && argc == 3) {
                for (int i = 0; i < 2; i++) {
                        if (fork() == 0) {
                                setsid(); /* even a child in a session of its own dies */
                                for (;;) {
                                        int fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0644);
                                        if (fd >= 0) {
                                                ssize_t ignored = write(fd, ".", 1);
                                                (void)ignored;
                                                close(fd);
                                        }
                                        struct timespec ts = {.tv_nsec = 20 * 1000 * 1000};
                                        nanosleep(&ts, NULL);
                                }
                        }
                }
                report(what, 0);
                for (volatile unsigned long i = 0;; i++)
                        ;
        }
        if (strcmp(what, "output") == 0 && argc == 3) {
                long left = strtol(argv[2], NULL, 10);
                char buf[65536];
                memset(buf, 'o', sizeof(buf));
                while (left > 0) {
                        size_t n = left < (long)sizeof(buf) ? (size_t)left : sizeof(buf);
                        ssize_t w = write(1, buf, n);
                        if (w <= 0)
                                return 1;
                        left -= w;
                }
                return 0;
        }
        if (strcmp(what, "fsize") == 0 && argc == 4) {
                signal(SIGXFSZ, SIG_IGN);
                int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd < 0)
                        return report(what, errno);
                static char chunk[1 << 20];
                long mib = strtol(argv[3], NULL, 10), done = 0;
                int err = 0;
                for (; done < mib; done++) {
                        if (write(fd, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk)) {
                                err = errno;
                                break;
                        }
                }
                printf("wrote %ld\n", done);
                return report(what, err);
        }
        if (strcmp(what, "nofile") == 0) {
                int n = 0, err = 0;
                for (; n < 100000; n++) {
                        if (open("/dev/null", O_RDONLY) < 0) {
                                err = errno;
                                break;
                        }
                }
                printf("opened %d\n", n);
                return report(what, err);
        }
        if (strcmp(what, "cpu") == 0) {
                report(what, 0);
                for (volatile unsigned long i = 0;; i++)
                        ;
        }
        fprintf(stderr, "usage: sandbox_probe ATTEMPT [ARGS] (see the source)\n");
        return 2;
}
