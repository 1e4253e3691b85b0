/*
 * `agently up`: the embedded default. Starts (or reuses) a private Postgres under the data
 * directory unless AGENTLY_DATABASE_URL is set, migrates, bootstraps the admin user and
 * token, then supervises the api, N workers and the dispatcher as child processes of this
 * binary — and the embedded Postgres itself. A child or a Postgres that dies is started
 * again with exponential back-off (reset after it stays up for a while); Postgres runs its
 * crash recovery on that start, and the others reconnect by themselves. SIGINT/SIGTERM stop
 * the children (workers drain on SIGTERM), then Postgres.
 */
#include <errno.h>
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
#include "cli_args.h"
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
#define TICK_MS            200

struct up_options {
        const char *data_dir_arg;
        const char *listen_host;
        int port;
        int workers;
        const char *api_max_connections;    /* passed to `agently api`, or NULL */
        const char *api_per_ip_connections; /* (it checks them) */
};

/* When a supervised process may be started again: exponential back-off from RESTART_MIN_MS
 * to RESTART_MAX_MS, back to the minimum once it stayed up HEALTHY_AFTER_MS. */
struct backoff {
        int64_t started_ms;
        int64_t restart_at_ms;
        int64_t delay_ms;
};

struct child {
        const char *role; /* "api", "worker", "dispatch" */
        char *argv[12];
        pid_t pid; /* 0 while dead */
        struct backoff backoff;
};

struct supervisor {
        const char *self; /* the binary the children run */
        sigset_t stop_signals;
        struct child children[MAX_CHILDREN];
        size_t nchildren;
        struct embedded_pg *pg; /* NULL with AGENTLY_DATABASE_URL */
        pid_t postmaster;       /* 0 while Postgres is down */
        struct backoff postgres;
};

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void backoff_started(struct backoff *b)
{
        if (b->delay_ms == 0)
                b->delay_ms = RESTART_MIN_MS;
        b->started_ms = now_ms();
}

/* The process died (or a start failed, with may_reset false): schedules the next start and
 * returns the delay until then. */
static int64_t backoff_schedule(struct backoff *b, bool may_reset)
{
        int64_t delay;

        if (may_reset && now_ms() - b->started_ms > HEALTHY_AFTER_MS)
                b->delay_ms = RESTART_MIN_MS;
        delay = b->delay_ms;
        b->restart_at_ms = now_ms() + delay;
        b->delay_ms = delay * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : delay * 2;
        return delay;
}

static bool backoff_due(const struct backoff *b)
{
        return now_ms() >= b->restart_at_ms;
}

/* Alive and not a zombie (a zombie's parent, if it is not us, may never reap it). */
static bool process_alive(pid_t pid)
{
        char path[64];
        _cleanup_free_ char *stat = NULL;
        const char *end;

        if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
                return false;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        if (file_read_all(path, 4096, &stat, NULL) < 0)
                return true;
        end = strrchr(stat, ')');
        return !(end && end[1] == ' ' && end[2] == 'Z');
}

static const struct cli_flag up_flags[] = {
    {"data-dir", 0, "DIR", "data directory (default ./.agently, or AGENTLY_DATA_DIR)"},
    {"port", 0, "PORT", "API and dashboard port (default 8080)"},
    {"listen", 0, "ADDR", "API listen address (default 127.0.0.1)"},
    {"workers", 0, "N", "worker processes (default 2; 0 runs none)"},
    {"llm-prices", 0, "FILE",
     "LLM price overrides by model, JSON, for the workers (default: AGENTLY_LLM_PRICES)"},
    {"api-max-connections", 0, "N", "the API's open connections in all (default 1024)"},
    {"api-per-ip-connections", 0, "N",
     "the API's open connections per client address (default 512; each live view is one)"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

/* Returns -1 to go on, or the exit code to leave with (--help, a usage error). */
static int up_parse_options(int argc, char **argv, struct up_options *o)
{
        struct cli_args args;
        int64_t port = 8080, workers = 2;
        int r = cli_role_args(
            "up", "up [--data-dir DIR] [--port PORT] [--listen ADDR] [--workers N] [options]",
            "Runs agently on this machine: an embedded Postgres under DIR (unless\n"
            "AGENTLY_DATABASE_URL is set), the API on 127.0.0.1:PORT, N workers and the\n"
            "dispatcher. Stop with Ctrl-C; data is kept in DIR for the next start.",
            up_flags, argc, argv, &args);

        if (r >= 0)
                return r;
        if ((r = cli_flag_int("up", "port", cli_args_get(up_flags, &args, "port"), 1, 65535,
                              &port)) ||
            (r = cli_flag_int("up", "workers", cli_args_get(up_flags, &args, "workers"), 0, 64,
                              &workers)))
                return r;
        /* checked here, so a bad file stops `up` at once; the workers read it again */
        const char *prices_file = cli_args_get(up_flags, &args, "llm-prices");
        _cleanup_json_ json_t *prices = NULL;
        if (cli_llm_prices_load("up", prices_file, &prices) < 0)
                return CLI_EXIT_USAGE;
        if (!str_is_empty(prices_file)) {
                _cleanup_free_ char *abs = realpath(prices_file, NULL);
                if (!abs || setenv("AGENTLY_LLM_PRICES", abs, 1) < 0)
                        return CLI_EXIT_FAILURE;
        }
        *o = (struct up_options){
            .data_dir_arg = cli_args_get(up_flags, &args, "data-dir"),
            .listen_host = cli_args_get(up_flags, &args, "listen"),
            .port = (int)port,
            .workers = (int)workers,
            .api_max_connections = cli_args_get(up_flags, &args, "api-max-connections"),
            .api_per_ip_connections = cli_args_get(up_flags, &args, "api-per-ip-connections"),
        };
        if (!o->listen_host)
                o->listen_host = "127.0.0.1";
        if (str_is_empty(o->data_dir_arg))
                o->data_dir_arg = getenv("AGENTLY_DATA_DIR");
        return -1;
}

/* Step 1: the embedded cluster, created on first start. *out is set whenever the cluster
 * could be opened, even when starting it failed, so the caller stops what did start. */
static int up_start_postgres(const char *data_dir, struct embedded_pg **out)
{
        int r = embedded_pg_open(data_dir, out);

        if (r == 0 && !embedded_pg_initialized(*out)) {
                log_info("creating the embedded Postgres under %s (first start)", data_dir);
                r = embedded_pg_init(*out, 0);
        }
        if (r == 0) {
                log_info("starting Postgres");
                r = embedded_pg_start(*out);
        }
        return r;
}

/* Step 2: migrate, let the role logins in (embedded), and the admin user and token. */
static int up_prepare_database(const char *data_dir, bool embedded, char **token_path, int *created)
{
        _cleanup_pgconn_ PGconn *c = NULL;
        int applied = 0;
        int r = cli_db_connect(data_dir, DB_ROLE_OWNER, &c);

        if (r == 0)
                r = db_migrate(c, &applied);
        if (r == 0 && embedded)
                r = bootstrap_embedded_roles(c);
        if (r == 0)
                r = bootstrap_admin(c, data_dir, token_path, created);
        if (r == 0 && applied > 0)
                log_info("applied %d migration(s)", applied);
        return r;
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
        backoff_started(&ch->backoff);
        return pid;
}

/* Step 3: the api, the workers and the dispatcher. The argv strings must outlive s. */
static int up_spawn_children(struct supervisor *s, const char *data_dir, const char *listen,
                             const struct up_options *o)
{
        struct child api = {.role = "api",
                            .argv = {"agently", "api", "--listen", (char *)listen, "--data-dir",
                                     (char *)data_dir, NULL}};
        size_t argc = 6;
        int workers = o->workers;

        /* the API's connection limits, checked by `agently api` itself */
        if (o->api_max_connections) {
                api.argv[argc++] = "--max-connections";
                api.argv[argc++] = (char *)o->api_max_connections;
        }
        if (o->api_per_ip_connections) {
                api.argv[argc++] = "--per-ip-connections";
                api.argv[argc++] = (char *)o->api_per_ip_connections;
        }
        struct child worker = {.role = "worker",
                               .argv = {"agently", "worker", "--data-dir", (char *)data_dir, NULL}};
        struct child dispatch = {
            .role = "dispatch",
            .argv = {"agently", "dispatch", "--data-dir", (char *)data_dir, NULL}};

        s->children[s->nchildren++] = api;
        for (int i = 0; i < workers; i++)
                s->children[s->nchildren++] = worker;
        s->children[s->nchildren++] = dispatch;
        for (size_t i = 0; i < s->nchildren; i++) {
                int r = spawn_child(&s->children[i], s->self);
                if (r < 0)
                        return log_errno(r, "could not start %s", s->children[i].role);
        }
        return 0;
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

static void up_print_banner(const struct up_options *o, const struct embedded_pg *pg,
                            const char *data_dir, const char *token_path, int created)
{
        const char *host = strcmp(o->listen_host, "0.0.0.0") == 0 ? "127.0.0.1" : o->listen_host;
        bool api_up = wait_for_port(o->listen_host, o->port, 15000);

        printf("\nagently is %s\n"
               "  dashboard & API   http://%s:%d/\n"
               "  admin token       %s%s\n"
               "  use the CLI       export AGENTLY_TOKEN=$(cat %s) AGENTLY_SERVER=http://%s:%d\n",
               api_up ? "up" : "starting (the API is not answering yet)", host, o->port, token_path,
               created ? " (new)" : "", token_path, host, o->port);
        if (pg)
                printf("  database          embedded Postgres, %s (127.0.0.1:%d)\n",
                       embedded_pg_cluster_dir(pg), embedded_pg_port(pg));
        else
                printf("  database          AGENTLY_DATABASE_URL\n");
        printf("  workers           %d\n\nPress Ctrl-C to stop; your data stays in %s.\n\n",
               o->workers, data_dir);
        fflush(stdout);
}

static void describe_exit(int status, char *out, size_t len)
{
        if (WIFSIGNALED(status))
                snprintf(out, len, "was killed by %s", strsignal(WTERMSIG(status)));
        else
                snprintf(out, len, "exited with %d", WEXITSTATUS(status));
}

static void child_died(struct child *ch, int status)
{
        char how[64];
        pid_t pid = ch->pid;
        int64_t delay = backoff_schedule(&ch->backoff, true);

        ch->pid = 0;
        describe_exit(status, how, sizeof(how));
        log_warn("%s (pid %d) %s; restarting in %lldms", ch->role, pid, how, (long long)delay);
}

/* how: what happened, for the log ("was killed by Killed", "is gone"). */
static void postgres_died(struct supervisor *s, const char *how)
{
        pid_t pid = s->postmaster;
        int64_t delay = backoff_schedule(&s->postgres, true);

        s->postmaster = 0;
        log_warn("Postgres (pid %d) %s; restarting it in %lldms (crash recovery runs on start)",
                 pid, how, (long long)delay);
}

/* Reaps every dead child: ours, the postmaster (ours as the child subreaper once pg_ctl
 * exits), and orphaned Postgres backends (ignored). */
static void up_reap(struct supervisor *s)
{
        for (;;) {
                int status;
                char how[64];
                pid_t pid = waitpid(-1, &status, WNOHANG);

                if (pid <= 0)
                        return;
                if (s->postmaster > 0 && pid == s->postmaster) {
                        describe_exit(status, how, sizeof(how));
                        postgres_died(s, how);
                        continue;
                }
                for (size_t i = 0; i < s->nchildren; i++)
                        if (s->children[i].pid == pid)
                                child_died(&s->children[i], status);
        }
}

/* Starts Postgres again when it is due. Blocks while Postgres recovers (pg_ctl start -w);
 * a stop signal that arrives meanwhile waits for the next turn of the loop. */
static void postgres_restart(struct supervisor *s)
{
        int old_port = embedded_pg_port(s->pg);
        int r;

        log_info("starting Postgres again");
        r = embedded_pg_start(s->pg);
        if (r < 0) {
                int64_t delay = backoff_schedule(&s->postgres, false);
                log_error("could not restart Postgres: %s; next try in %lldms", db_last_error(),
                          (long long)delay);
                return;
        }
        s->postmaster = embedded_pg_postmaster_pid(s->pg);
        backoff_started(&s->postgres);
        r = embedded_pg_count_restart(s->pg);
        if (r < 0)
                log_warn("could not count the restart in %s/postgres.json: %s",
                         embedded_pg_data_dir(s->pg), strerror(-r));
        log_warn("Postgres is back (pid %d, restart %lld of this cluster)", s->postmaster,
                 embedded_pg_restarts(s->pg));
        if (embedded_pg_port(s->pg) != old_port) {
                /* the children's connection strings name the old port */
                log_warn("Postgres moved from port %d to %d; restarting the children", old_port,
                         embedded_pg_port(s->pg));
                for (size_t i = 0; i < s->nchildren; i++)
                        if (s->children[i].pid > 0)
                                kill(s->children[i].pid, SIGTERM);
        }
}

/* Step 4: until a stop signal, reap and restart what died, Postgres included. */
static void up_supervise(struct supervisor *s)
{
        for (;;) {
                struct timespec tick = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000 * 1000};
                siginfo_t info;
                int sig = sigtimedwait(&s->stop_signals, &info, &tick);

                if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
                        log_info("received %s; stopping", strsignal(sig));
                        return;
                }
                up_reap(s);
                /* a postmaster we did not start (reused at start-up) is not our child */
                if (s->pg && s->postmaster > 0 && !process_alive(s->postmaster))
                        postgres_died(s, "is gone");
                if (s->pg && s->postmaster == 0 && backoff_due(&s->postgres))
                        postgres_restart(s);
                for (size_t i = 0; i < s->nchildren; i++) {
                        struct child *ch = &s->children[i];
                        if (ch->pid == 0 && backoff_due(&ch->backoff) &&
                            spawn_child(ch, s->self) < 0)
                                ch->backoff.restart_at_ms = now_ms() + ch->backoff.delay_ms;
                }
        }
}

/* Step 5: SIGTERM the children, SIGKILL what is left after STOP_GRACE_SECONDS. */
static void stop_children(struct supervisor *s)
{
        int64_t deadline = now_ms() + STOP_GRACE_SECONDS * 1000;
        size_t alive = 0;

        for (size_t i = 0; i < s->nchildren; i++)
                if (s->children[i].pid > 0) {
                        kill(s->children[i].pid, SIGTERM);
                        alive++;
                }
        while (alive > 0) {
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);
                if (pid > 0) {
                        for (size_t i = 0; i < s->nchildren; i++)
                                if (s->children[i].pid == pid) {
                                        s->children[i].pid = 0;
                                        alive--;
                                }
                        continue;
                }
                if (pid < 0 && errno == ECHILD)
                        break;
                if (now_ms() > deadline) {
                        log_warn("children did not stop within %ds; killing them",
                                 STOP_GRACE_SECONDS);
                        for (size_t i = 0; i < s->nchildren; i++)
                                if (s->children[i].pid > 0)
                                        kill(s->children[i].pid, SIGKILL);
                        deadline = now_ms() + 5000;
                }
                usleep(50 * 1000);
        }
}

/* Step 6: Postgres last, once nothing uses it. */
static void up_stop_postgres(struct embedded_pg *pg)
{
        if (!pg)
                return;
        if (embedded_pg_running(pg)) {
                log_info("stopping Postgres");
                if (embedded_pg_stop(pg) < 0)
                        log_error("%s", db_last_error());
        }
        embedded_pg_free(pg);
}

int cmd_up(int argc, char **argv)
{
        struct up_options o = {0};
        _cleanup_free_ char *data_dir = NULL, *token_path = NULL, *listen = NULL;
        struct supervisor s = {.self = "/proc/self/exe"};
        bool embedded = str_is_empty(getenv("AGENTLY_DATABASE_URL"));
        int r, created = 0, exit_code = CLI_EXIT_OK;

        r = up_parse_options(argc, argv, &o);
        if (r >= 0)
                return r;
        r = path_absolute(str_is_empty(o.data_dir_arg) ? EMBEDDED_PG_DEFAULT_DATA_DIR
                                                       : o.data_dir_arg,
                          &data_dir);
        if (r < 0)
                return log_errno(r, "could not resolve the data directory"), CLI_EXIT_FAILURE;
        r = dir_make_parents(data_dir, 0700);
        if (r < 0)
                return log_errno(r, "could not create %s", data_dir), CLI_EXIT_FAILURE;
        listen = str_printf("%s:%d", o.listen_host, o.port);
        if (!listen)
                return CLI_EXIT_FAILURE;

        /* The stop signals are taken synchronously by the loop; SIGCHLD only wakes it. */
        sigemptyset(&s.stop_signals);
        sigaddset(&s.stop_signals, SIGINT);
        sigaddset(&s.stop_signals, SIGTERM);
        sigaddset(&s.stop_signals, SIGCHLD);
        sigaddset(&s.stop_signals, SIGHUP);
        sigprocmask(SIG_BLOCK, &s.stop_signals, NULL);
        /* pg_ctl exits once the server is up: the postmaster it leaves behind becomes our
         * child, so its death reaches us like any child's */
        prctl(PR_SET_CHILD_SUBREAPER, 1);

        if (embedded) {
                r = up_start_postgres(data_dir, &s.pg);
                if (r < 0) {
                        exit_code = cli_db_fail("could not start the embedded Postgres", r);
                        goto out;
                }
                s.postmaster = embedded_pg_postmaster_pid(s.pg);
                backoff_started(&s.postgres);
        }
        r = up_prepare_database(data_dir, embedded, &token_path, &created);
        if (r < 0) {
                exit_code = cli_db_fail("could not prepare the database", r);
                goto out;
        }
        if (up_spawn_children(&s, data_dir, listen, &o) < 0) {
                exit_code = CLI_EXIT_FAILURE;
                goto stop;
        }
        up_print_banner(&o, s.pg, data_dir, token_path, created);
        up_supervise(&s);
stop:
        stop_children(&s);
out:
        up_stop_postgres(s.pg);
        return exit_code;
}
