/*
 * The escape battery (issue 11): each attempt a hostile tool or executor would make, run
 * for real inside a sandbox (src/sandbox) by the probe program (sandbox_probe.c), and
 * asserted denied with the value the denial gives. Where it is safe to try outside, the
 * same probe runs outside the sandbox first as the control: the attempt works there, so a
 * denial inside is the sandbox's doing and not a broken probe.
 *
 * The Postgres is the test harness's (its unix socket and TCP port); a listening TCP
 * socket of this process stands in for the API port. Needs bubblewrap with user namespaces:
 * when sandboxes cannot start on the machine every test fails with the reason.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox.h"
#include "strutil.h"
#include "testlib.h"

static struct sandbox *sb;
static char *tmp;       /* the test's host directory */
static char *workspace; /* tmp/ws */

static int group_setup(void **state)
{
        (void)state;
        char *error = NULL;
        if (sandbox_open(NULL, &sb, &error) < 0 || sandbox_check(sb, &error) < 0) {
                fprintf(stderr, "sandbox unavailable: %s\n", error ? error : "?");
                free(error);
                return -1;
        }
        tmp = test_tempdir("sandbox-escape");
        workspace = str_printf("%s/ws", tmp);
        assert_int_equal(sandbox_workspace_create(sb, workspace), 0);
        return 0;
}

static int group_teardown(void **state)
{
        (void)state;
        test_rm_rf(tmp);
        free(tmp);
        free(workspace);
        sandbox_free(sb);
        return 0;
}

/* Runs the probe in a sandbox (bound read-only at /probe) with args and limits. */
static struct sandbox_result probe_in(const char *const *args, const struct sandbox_limits *limits,
                                      const char *const *envp)
{
        const char *argv[16] = {"/probe"};
        size_t n = 1;
        for (; args[n - 1] && n < 15; n++)
                argv[n] = args[n - 1];
        argv[n] = NULL;
        static const char *const default_env[] = {"PATH=/usr/bin:/bin", "HOME=/workspace", NULL};
        struct sandbox_bind bind = {.host_path = SANDBOX_PROBE, .path = "/probe"};
        struct sandbox_spec spec = {
            .argv = argv,
            .envp = envp ? envp : default_env,
            .workspace = workspace,
            .binds = &bind,
            .n_binds = 1,
            .limits = limits ? *limits : sandbox_limits_default(),
        };
        if (!limits)
                spec.limits.wall_ms = 20000;
        struct sandbox_result r;
        char *error = NULL;
        int rc = sandbox_run(sb, &spec, &r, &error);
        if (rc < 0)
                fprintf(stderr, "sandbox_run: %s\n", error ? error : "?");
        free(error);
        assert_int_equal(rc, 0);
        if (r.sandbox_failed)
                fail_msg("the sandbox failed: %s", r.err);
        return r;
}

/* Runs the probe outside any sandbox (the control); returns its stdout (caller frees). */
static char *probe_out(const char *const *args)
{
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_int_not_equal(pid, -1);
        if (pid == 0) {
                const char *argv[16] = {SANDBOX_PROBE};
                size_t n = 1;
                for (; args[n - 1] && n < 15; n++)
                        argv[n] = args[n - 1];
                argv[n] = NULL;
                dup2(p[1], 1);
                close(p[0]);
                execv(SANDBOX_PROBE, (char *const *)argv);
                _exit(127);
        }
        close(p[1]);
        char buf[65536];
        size_t len = 0;
        ssize_t n;
        while ((n = read(p[0], buf + len, sizeof(buf) - 1 - len)) > 0)
                len += (size_t)n;
        buf[len] = '\0';
        close(p[0]);
        int status;
        waitpid(pid, &status, 0);
        assert_exit_code(status, 0);
        return strdup(buf);
}

/* The errno the probe reported for attempt `what` in its output. */
static int reported(const char *out, const char *what)
{
        char key[64];
        snprintf(key, sizeof(key), "%s ", what);
        for (const char *line = out; line && *line;) {
                if (strncmp(line, key, strlen(key)) == 0)
                        return (int)strtol(line + strlen(key), NULL, 10);
                line = strchr(line, '\n');
                if (line)
                        line++;
        }
        fail_msg("the probe did not report %s; it wrote: %s", what, out);
        return -1;
}

static int attempt_in(const char *const *args)
{
        struct sandbox_result r = probe_in(args, NULL, NULL);
        int e = reported(r.out, args[0]);
        sandbox_result_free(&r);
        return e;
}

static int attempt_out(const char *const *args)
{
        char *out = probe_out(args);
        int e = reported(out, args[0]);
        free(out);
        return e;
}

/* A listening TCP socket on 127.0.0.1 (the API port's stand-in); returns fd, sets *port. */
static int listen_tcp(int *port)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(fd, 8), 0);
        socklen_t len = sizeof(a);
        getsockname(fd, (struct sockaddr *)&a, &len);
        *port = ntohs(a.sin_port);
        return fd;
}

/* The harness Postgres: its socket directory and TCP port. */
static void harness_pg(char **socket_dir, char **port)
{
        char *conninfo = test_db_create("sbx");
        PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (strcmp(o->keyword, "host") == 0)
                        *socket_dir = strdup(o->val);
                if (strcmp(o->keyword, "port") == 0)
                        *port = strdup(o->val);
        }
        PQconninfoFree(opts);
        free(conninfo);
        assert_non_null(*socket_dir);
        assert_non_null(*port);
}

static void test_tcp_denied(void **state)
{
        (void)state;
        int api_port;
        int api = listen_tcp(&api_port);
        char api_text[16];
        snprintf(api_text, sizeof(api_text), "%d", api_port);
        char *socket_dir = NULL, *pg_port = NULL;
        harness_pg(&socket_dir, &pg_port);

        /* controls: both ports answer outside */
        assert_int_equal(attempt_out((const char *[]){"connect", "127.0.0.1", api_text, NULL}), 0);
        assert_int_equal(attempt_out((const char *[]){"connect", "127.0.0.1", pg_port, NULL}), 0);

        assert_int_equal(attempt_in((const char *[]){"connect", "127.0.0.1", api_text, NULL}),
                         EPERM);
        assert_int_equal(attempt_in((const char *[]){"connect", "127.0.0.1", pg_port, NULL}),
                         EPERM);
        assert_int_equal(attempt_in((const char *[]){"connect", "1.1.1.1", "443", NULL}), EPERM);
        /* every socket family but AF_UNIX */
        assert_int_equal(attempt_in((const char *[]){"socket", "10", NULL}), EPERM); /* AF_INET6 */
        assert_int_equal(attempt_in((const char *[]){"socket", "16", NULL}),
                         EPERM); /* AF_NETLINK */
        assert_int_equal(attempt_in((const char *[]){"socket", "17", NULL}), EPERM); /* AF_PACKET */
        assert_int_equal(attempt_in((const char *[]){"socket", "40", NULL}), EPERM); /* AF_VSOCK */
        assert_int_equal(attempt_in((const char *[]){"socket", "1", NULL}), 0);      /* AF_UNIX */
        close(api);
        free(socket_dir);
        free(pg_port);
}

static void test_unix_sockets_invisible(void **state)
{
        (void)state;
        char *socket_dir = NULL, *pg_port = NULL;
        harness_pg(&socket_dir, &pg_port);
        char *pg_socket = str_printf("%s/.s.PGSQL.%s", socket_dir, pg_port);
        assert_int_equal(attempt_out((const char *[]){"unix", pg_socket, NULL}), 0);
        assert_int_equal(attempt_in((const char *[]){"unix", pg_socket, NULL}), ENOENT);

        /* a listening socket in a host directory */
        char *path = str_printf("%s/host.sock", tmp);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        str_copy(a.sun_path, sizeof(a.sun_path), path);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(fd, 4), 0);
        assert_int_equal(attempt_out((const char *[]){"unix", path, NULL}), 0);
        assert_int_equal(attempt_in((const char *[]){"unix", path, NULL}), ENOENT);
        close(fd);

        /* the database's files */
        const char *pg_dir = getenv("AGENTLY_TEST_PG_DIR");
        assert_non_null(pg_dir);
        char *version = str_printf("%s/postgres.json", pg_dir);
        struct stat st;
        if (stat(version, &st) == 0)
                assert_int_equal(attempt_in((const char *[]){"read", version, NULL}), ENOENT);
        assert_int_equal(attempt_in((const char *[]){"read", pg_dir, NULL}), ENOENT);
        free(version);
        free(path);
        free(pg_socket);
        free(socket_dir);
        free(pg_port);
}

static void test_environment_invisible(void **state)
{
        (void)state;
        char canary[64];
        snprintf(canary, sizeof(canary), "canary-%d-%lld", (int)getpid(), (long long)test_now_ms());
        setenv("AGENTLY_SANDBOX_CANARY", canary, 1);
        char *out = probe_out((const char *[]){"environ", NULL});
        assert_non_null(strstr(out, canary)); /* control: the probe does see an environment */
        free(out);

        const char *const env[] = {"PATH=/usr/bin:/bin", "ONLY=passed", NULL};
        struct sandbox_result r = probe_in((const char *[]){"environ", NULL}, NULL, env);
        assert_non_null(strstr(r.out, "ONLY=passed"));
        assert_null(strstr(r.out, canary));
        assert_null(strstr(r.err, canary));
        /* /proc/1 is the sandbox's own init: the same environment, nothing of the host */
        assert_non_null(strstr(r.out, "init "));
        assert_null(strstr(r.out, "init unreadable"));
        sandbox_result_free(&r);

        /* the test process's own environ is not reachable by its host pid */
        char *proc = str_printf("/proc/%d/environ", (int)getpid());
        r = probe_in((const char *[]){"read", proc, NULL}, NULL, NULL);
        assert_null(strstr(r.out, canary));
        sandbox_result_free(&r);
        free(proc);
        unsetenv("AGENTLY_SANDBOX_CANARY");
}

static void test_loader_variables_stay_inside(void **state)
{
        (void)state;
        /* bwrap itself runs outside with an empty environment: an LD_PRELOAD passed for the
         * sandbox must not be loaded by it (it would run on the host) */
        char *fake = str_printf("%s/not-elf.so", tmp);
        int fd = open(fake, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        assert_int_not_equal(fd, -1);
        assert_int_equal(write(fd, "text", 4), 4);
        close(fd);
        char *preload = str_printf("LD_PRELOAD=%s", fake);
        const char *const env[] = {"PATH=/usr/bin:/bin", preload, NULL};
        struct sandbox_result r = probe_in((const char *[]){"environ", NULL}, NULL, env);
        /* outside the loader would read the file and refuse its header; inside the path
         * does not exist */
        assert_null(strstr(r.err, "invalid ELF header"));
        assert_non_null(strstr(r.out, preload));
        sandbox_result_free(&r);
        free(preload);
        free(fake);
}

static void test_writes_outside_workspace_denied(void **state)
{
        (void)state;
        assert_int_equal(attempt_in((const char *[]){"write", "/usr/escaped", NULL}), EROFS);
        assert_int_equal(attempt_in((const char *[]){"write", "/etc/escaped", NULL}), EROFS);
        assert_int_equal(attempt_in((const char *[]){"write", "/escaped", NULL}), EROFS);
        assert_int_equal(attempt_in((const char *[]){"write", "/dev/escaped", NULL}), EROFS);
        char *host = str_printf("%s/escaped", tmp);
        assert_int_equal(attempt_in((const char *[]){"write", host, NULL}), ENOENT);
        struct stat st;
        assert_int_equal(stat(host, &st), -1);

        /* the workspace and a private /tmp are writable; /tmp is not the host's */
        assert_int_equal(attempt_in((const char *[]){"write", "/workspace/kept", NULL}), 0);
        char *kept = str_printf("%s/kept", workspace);
        assert_int_equal(stat(kept, &st), 0);
        assert_int_equal(st.st_uid, sandbox_uid(sb));
        char *private_tmp = str_printf("/tmp/agently-sandbox-private-%d", (int)getpid());
        assert_int_equal(attempt_in((const char *[]){"write", private_tmp, NULL}), 0);
        assert_int_equal(stat(private_tmp, &st), -1);
        free(private_tmp);
        free(kept);
        free(host);
}

static void test_dangerous_syscalls_denied(void **state)
{
        (void)state;
        /* control: a process may trace its own child when nothing stops it */
        assert_int_equal(attempt_out((const char *[]){"ptrace", NULL}), 0);
        assert_int_equal(attempt_in((const char *[]){"ptrace", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"mount", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"bpf", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"io_uring", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"userns", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"clone_userns", NULL}), EPERM);
        /* control: outside, TIOCSTI on its own terminal is allowed (0) or refused by the
         * kernel's dev.tty.legacy_tiocsti=0 (EIO); never EPERM */
        assert_int_not_equal(attempt_out((const char *[]){"tiocsti", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"tiocsti", NULL}), EPERM);
}

/* The seccomp filter is an allowlist, not a deny list of the dangerous calls: a syscall
 * that is harmless but on no list of ours (ioprio_get only reads its own I/O priority) works
 * outside and is refused inside. A syscall newer than the filter (mseal, Linux 6.10, which
 * libseccomp 2.5 has no name for) is not refused as forbidden: it answers ENOSYS, as on a
 * kernel without it, so that libc and runtimes fall back — or works, with a libseccomp that
 * knows it (it is on the list). And a refused ioctl cannot slip past with high bits set in
 * its request, which the kernel ignores. */
static void test_seccomp_is_an_allowlist(void **state)
{
        (void)state;
        assert_int_equal(attempt_out((const char *[]){"unlisted", NULL}), 0);
        assert_int_equal(attempt_in((const char *[]){"unlisted", NULL}), EPERM);

        int newer = attempt_in((const char *[]){"newer", NULL});
        if (newer != 0)
                assert_int_equal(newer, ENOSYS);

        assert_int_not_equal(attempt_out((const char *[]){"tiocsti_high", NULL}), EPERM);
        assert_int_equal(attempt_in((const char *[]){"tiocsti_high", NULL}), EPERM);
}

static void test_fork_bomb_bounded(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.processes = 32;
        l.wall_ms = 30000;
        struct sandbox_result r = probe_in((const char *[]){"forkbomb", NULL}, &l, NULL);
        assert_int_equal(reported(r.out, "forkbomb"), EAGAIN);
        const char *forked = strstr(r.out, "forked ");
        assert_non_null(forked);
        long n = strtol(forked + 7, NULL, 10);
        assert_int_lt(n, 32);
        assert_int_gt(n, 0);
        /* the children paused forever; they ended with the probe, not at the wall clock */
        assert_false(r.timed_out);
        assert_int_equal(r.exit_status, 0);
        sandbox_result_free(&r);
}

static void test_memory_capped(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.memory_bytes = (uint64_t)256 << 20;
        struct sandbox_result r = probe_in((const char *[]){"memory", "2048", NULL}, &l, NULL);
        assert_int_equal(reported(r.out, "memory"), ENOMEM);
        const char *got = strstr(r.out, "allocated ");
        assert_non_null(got);
        assert_int_lt(strtol(got + 10, NULL, 10), 256);
        sandbox_result_free(&r);
}

static void test_wall_clock_kills_everything(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.wall_ms = 3000; /* time for the children to start beating on a loaded machine */
        struct sandbox_result r =
            probe_in((const char *[]){"spin", "/workspace/beat", NULL}, &l, NULL);
        assert_true(r.timed_out);
        assert_int_equal(r.exit_status, 128 + SIGKILL);
        assert_int_ge(r.wall_ms, 3000);
        assert_int_lt(r.wall_ms, 8000);
        sandbox_result_free(&r);

        /* the children (in sessions of their own) were beating; after the kill nobody is */
        char *beat = str_printf("%s/beat", workspace);
        struct stat before, after;
        assert_int_equal(stat(beat, &before), 0);
        assert_int_gt(before.st_size, 0);
        usleep(300 * 1000);
        assert_int_equal(stat(beat, &after), 0);
        assert_int_equal(after.st_size, before.st_size);
        free(beat);
}

static void test_output_capped(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.output_bytes = 65536;
        struct sandbox_result r = probe_in((const char *[]){"output", "10000000", NULL}, &l, NULL);
        assert_int_equal(r.exit_status, 0);
        assert_int_equal(r.out_len, 65536);
        assert_true(r.out_truncated);
        assert_int_equal(strlen(r.out), 65536);
        assert_false(r.err_truncated);
        sandbox_result_free(&r);
}

static void test_file_size_and_descriptors_capped(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.file_bytes = (uint64_t)4 << 20;
        l.open_files = 64;
        struct sandbox_result r =
            probe_in((const char *[]){"fsize", "/workspace/big", "16", NULL}, &l, NULL);
        assert_int_equal(reported(r.out, "fsize"), EFBIG);
        assert_non_null(strstr(r.out, "wrote 4\n"));
        sandbox_result_free(&r);
        char *big = str_printf("%s/big", workspace);
        struct stat st;
        assert_int_equal(stat(big, &st), 0);
        assert_int_equal(st.st_size, 4 << 20);
        unlink(big);
        free(big);

        r = probe_in((const char *[]){"nofile", NULL}, &l, NULL);
        assert_int_equal(reported(r.out, "nofile"), EMFILE);
        const char *opened = strstr(r.out, "opened ");
        assert_non_null(opened);
        assert_int_lt(strtol(opened + 7, NULL, 10), 64);
        sandbox_result_free(&r);
}

static void test_cpu_capped(void **state)
{
        (void)state;
        struct sandbox_limits l = sandbox_limits_default();
        l.cpu_seconds = 1;
        l.wall_ms = 60000;
        struct sandbox_result r = probe_in((const char *[]){"cpu", NULL}, &l, NULL);
        /* SIGXCPU at the limit (soft = hard, so SIGKILL if it were caught) */
        assert_false(r.timed_out);
        if (r.exit_status != 128 + SIGKILL)
                assert_int_equal(r.exit_status, 128 + SIGXCPU);
        assert_int_lt(r.wall_ms, 60000);
        sandbox_result_free(&r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_tcp_denied),
            cmocka_unit_test(test_unix_sockets_invisible),
            cmocka_unit_test(test_environment_invisible),
            cmocka_unit_test(test_loader_variables_stay_inside),
            cmocka_unit_test(test_writes_outside_workspace_denied),
            cmocka_unit_test(test_dangerous_syscalls_denied),
            cmocka_unit_test(test_seccomp_is_an_allowlist),
            cmocka_unit_test(test_fork_bomb_bounded),
            cmocka_unit_test(test_memory_capped),
            cmocka_unit_test(test_wall_clock_kills_everything),
            cmocka_unit_test(test_output_capped),
            cmocka_unit_test(test_file_size_and_descriptors_capped),
            cmocka_unit_test(test_cpu_capped),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
