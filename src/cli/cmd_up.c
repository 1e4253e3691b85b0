/*
 * `agently up`: the embedded default. Starts (or reuses) a private Postgres under the data
 * directory unless AGENTLY_DATABASE_URL is set, migrates, bootstraps the admin user and
 * token, then supervises the api, N workers and the dispatcher as child processes of this
 * binary. A child that dies is restarted with exponential backoff (reset after it stays up
 * for a while). SIGINT/SIGTERM stop the children (workers drain on SIGTERM), then Postgres.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "cleanup.h"
#include "cli.h"
#include "cli_db.h"
#include "embedded_pg.h"
#include "fileio.h"
#include "log.h"
#include "migrate.h"
#include "strutil.h"

#define MAX_CHILDREN       66
#define RESTART_MIN_MS     500
#define RESTART_MAX_MS     30000
#define HEALTHY_AFTER_MS   30000
#define STOP_GRACE_SECONDS 30

struct child {
        const char *role; /* "api", "worker", "dispatch" */
        char *argv[12];
        pid_t pid;
        int64_t started_ms;
        int64_t restart_at_ms; /* when dead: time to start again */
        int64_t backoff_ms;
};

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void up_usage(FILE *out)
{
        fprintf(out, "usage: agently up [--data-dir DIR] [--port PORT] [--workers N]\n\n"
                     "Runs agently on this machine: an embedded Postgres under DIR (unless\n"
                     "AGENTLY_DATABASE_URL is set), the API on 127.0.0.1:PORT, N workers and the\n"
                     "dispatcher. Stop with Ctrl-C; data is kept in DIR for the next start.\n\n"
                     "  --data-dir DIR  data directory (default ./.agently, or AGENTLY_DATA_DIR)\n"
                     "  --port PORT     API and dashboard port (default 8080)\n"
                     "  --listen ADDR   API listen address (default 127.0.0.1)\n"
                     "  --workers N     worker processes (default 2; 0 runs none)\n");
}

static pid_t spawn_child(struct child *ch, const char *self)
{
        pid_t pid = fork();

        if (pid < 0)
                return -errno;
        if (pid == 0) {
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                /* a child must not outlive a supervisor killed with SIGKILL */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() == 1)
                        _exit(1);
                execv(self, ch->argv);
                fprintf(stderr, "agently up: could not start %s: %s\n", ch->role, strerror(errno));
                _exit(127);
        }
        ch->pid = pid;
        ch->started_ms = now_ms();
        return pid;
}

static bool wait_for_port(const char *host, int port, int timeout_ms)
{
        int64_t deadline = now_ms() + timeout_ms;
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};

        if (inet_pton(AF_INET, strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host, &addr.sin_addr) !=
            1)
                return false;
        while (now_ms() < deadline) {
                _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
                        return true;
                usleep(100 * 1000);
        }
        return false;
}

static void stop_children(struct child *children, size_t n)
{
        int64_t deadline = now_ms() + STOP_GRACE_SECONDS * 1000;
        size_t alive = 0;

        for (size_t i = 0; i < n; i++)
                if (children[i].pid > 0) {
                        kill(children[i].pid, SIGTERM);
                        alive++;
                }
        while (alive > 0) {
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);
                if (pid > 0) {
                        for (size_t i = 0; i < n; i++)
                                if (children[i].pid == pid) {
                                        children[i].pid = 0;
                                        alive--;
                                }
                        continue;
                }
                if (pid < 0 && errno == ECHILD)
                        break;
                if (now_ms() > deadline) {
                        log_warn("children did not stop within %ds; killing them",
                                 STOP_GRACE_SECONDS);
                        for (size_t i = 0; i < n; i++)
                                if (children[i].pid > 0)
                                        kill(children[i].pid, SIGKILL);
                        deadline = now_ms() + 5000;
                }
                usleep(50 * 1000);
        }
}

int cmd_up(int argc, char **argv)
{
        static const struct option options[] = {
            {"data-dir", required_argument, NULL, 'd'}, {"port", required_argument, NULL, 'p'},
            {"listen", required_argument, NULL, 'l'},   {"workers", required_argument, NULL, 'w'},
            {"help", no_argument, NULL, 'h'},           {0},
        };
        const char *data_dir_arg = NULL, *listen_host = "127.0.0.1";
        _cleanup_free_ char *data_dir = NULL, *token_path = NULL, *listen = NULL;
        _cleanup_free_ char *self = NULL;
        struct embedded_pg *pg = NULL;
        _cleanup_pgconn_ PGconn *c = NULL;
        struct child children[MAX_CHILDREN];
        size_t nchildren = 0;
        int port = 8080, workers = 2, opt, r, created = 0, applied = 0, exit_code = CLI_EXIT_OK;
        bool embedded = str_is_empty(getenv("AGENTLY_DATABASE_URL"));
        sigset_t mask;

        while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
                switch (opt) {
                case 'd':
                        data_dir_arg = optarg;
                        break;
                case 'p':
                        if (str_to_int(optarg, &port) < 0 || port < 1 || port > 65535) {
                                fprintf(stderr, "agently up: --port must be 1-65535, got '%s'\n",
                                        optarg);
                                return CLI_EXIT_USAGE;
                        }
                        break;
                case 'l':
                        listen_host = optarg;
                        break;
                case 'w':
                        if (str_to_int(optarg, &workers) < 0 || workers < 0 || workers > 64) {
                                fprintf(stderr, "agently up: --workers must be 0-64, got '%s'\n",
                                        optarg);
                                return CLI_EXIT_USAGE;
                        }
                        break;
                case 'h':
                        up_usage(stdout);
                        return CLI_EXIT_OK;
                default:
                        up_usage(stderr);
                        return CLI_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "agently up: unexpected argument '%s'\n", argv[optind]);
                return CLI_EXIT_USAGE;
        }
        if (str_is_empty(data_dir_arg))
                data_dir_arg = getenv("AGENTLY_DATA_DIR");
        r = path_absolute(str_is_empty(data_dir_arg) ? EMBEDDED_PG_DEFAULT_DATA_DIR : data_dir_arg,
                          &data_dir);
        if (r < 0)
                return log_errno(r, "could not resolve the data directory"), CLI_EXIT_FAILURE;
        r = dir_make_parents(data_dir, 0700);
        if (r < 0)
                return log_errno(r, "could not create %s", data_dir), CLI_EXIT_FAILURE;

        /* Block the stop signals now: they are taken synchronously in the loop below. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);

        if (embedded) {
                r = embedded_pg_open(data_dir, &pg);
                if (r == 0 && !embedded_pg_initialized(pg)) {
                        log_info("creating the embedded Postgres under %s (first start)", data_dir);
                        r = embedded_pg_init(pg, 0);
                }
                if (r == 0) {
                        log_info("starting Postgres");
                        r = embedded_pg_start(pg);
                }
                if (r < 0) {
                        exit_code = cli_db_fail("could not start the embedded Postgres", r);
                        goto out;
                }
        }
        r = cli_db_connect(data_dir, DB_ROLE_OWNER, &c);
        if (r == 0)
                r = db_migrate(c, &applied);
        if (r == 0 && embedded)
                r = bootstrap_embedded_roles(c);
        if (r == 0)
                r = bootstrap_admin(c, data_dir, &token_path, &created);
        if (r < 0) {
                exit_code = cli_db_fail("could not prepare the database", r);
                goto out;
        }
        if (applied > 0)
                log_info("applied %d migration(s)", applied);
        PQfinish(TAKE_PTR(c));

        self = strdup("/proc/self/exe");
        listen = str_printf("%s:%d", listen_host, port);
        if (!self || !listen) {
                exit_code = CLI_EXIT_FAILURE;
                goto out;
        }
        {
                struct child api = {
                    .role = "api",
                    .argv = {"agently", "api", "--listen", listen, "--data-dir", data_dir, NULL}};
                struct child dispatch = {
                    .role = "dispatch",
                    .argv = {"agently", "dispatch", "--data-dir", data_dir, NULL}};
                children[nchildren++] = api;
                for (int i = 0; i < workers; i++) {
                        struct child w = {
                            .role = "worker",
                            .argv = {"agently", "worker", "--data-dir", data_dir, NULL}};
                        children[nchildren++] = w;
                }
                children[nchildren++] = dispatch;
        }
        for (size_t i = 0; i < nchildren; i++) {
                children[i].backoff_ms = RESTART_MIN_MS;
                if (spawn_child(&children[i], self) < 0) {
                        log_error("could not start %s: %s", children[i].role, strerror(errno));
                        exit_code = CLI_EXIT_FAILURE;
                        goto stop;
                }
        }

        bool api_up = wait_for_port(listen_host, port, 15000);
        printf("\nagently is %s\n"
               "  dashboard & API   http://%s:%d/\n"
               "  admin token       %s%s\n"
               "  use the CLI       export AGENTLY_TOKEN=$(cat %s) AGENTLY_SERVER=http://%s:%d\n",
               api_up ? "up" : "starting (the API is not answering yet)",
               strcmp(listen_host, "0.0.0.0") == 0 ? "127.0.0.1" : listen_host, port, token_path,
               created ? " (new)" : "", token_path,
               strcmp(listen_host, "0.0.0.0") == 0 ? "127.0.0.1" : listen_host, port);
        if (embedded)
                printf("  database          embedded Postgres, %s (127.0.0.1:%d)\n",
                       embedded_pg_cluster_dir(pg), embedded_pg_port(pg));
        else
                printf("  database          AGENTLY_DATABASE_URL\n");
        printf("  workers           %d\n\nPress Ctrl-C to stop; your data stays in %s.\n\n",
               workers, data_dir);
        fflush(stdout);

        for (;;) {
                struct timespec tick = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000};
                siginfo_t info;
                int sig = sigtimedwait(&mask, &info, &tick);

                if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
                        log_info("received %s; stopping", strsignal(sig));
                        break;
                }
                /* reap any dead children and schedule their restart */
                for (;;) {
                        int status;
                        pid_t pid = waitpid(-1, &status, WNOHANG);
                        if (pid <= 0)
                                break;
                        for (size_t i = 0; i < nchildren; i++) {
                                struct child *ch = &children[i];
                                if (ch->pid != pid)
                                        continue;
                                int64_t ran = now_ms() - ch->started_ms;
                                if (ran > HEALTHY_AFTER_MS)
                                        ch->backoff_ms = RESTART_MIN_MS;
                                ch->pid = 0;
                                ch->restart_at_ms = now_ms() + ch->backoff_ms;
                                if (WIFSIGNALED(status))
                                        log_warn(
                                            "%s (pid %d) was killed by %s; restarting in %lldms",
                                            ch->role, pid, strsignal(WTERMSIG(status)),
                                            (long long)ch->backoff_ms);
                                else
                                        log_warn("%s (pid %d) exited with %d; restarting in %lldms",
                                                 ch->role, pid, WEXITSTATUS(status),
                                                 (long long)ch->backoff_ms);
                                ch->backoff_ms *= 2;
                                if (ch->backoff_ms > RESTART_MAX_MS)
                                        ch->backoff_ms = RESTART_MAX_MS;
                        }
                }
                for (size_t i = 0; i < nchildren; i++)
                        if (children[i].pid == 0 && now_ms() >= children[i].restart_at_ms &&
                            spawn_child(&children[i], self) < 0)
                                children[i].restart_at_ms = now_ms() + children[i].backoff_ms;
        }
stop:
        stop_children(children, nchildren);
out:
        if (pg) {
                if (embedded_pg_running(pg)) {
                        log_info("stopping Postgres");
                        if (embedded_pg_stop(pg) < 0)
                                log_error("%s", db_last_error());
                }
                embedded_pg_free(pg);
        }
        return exit_code;
}
