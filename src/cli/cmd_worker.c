/*
 * `agently worker`: the data plane. Parses and validates the flags, resolves the worker
 * role's database, routes SIGTERM/SIGINT to a signalfd the event loop watches (so a drain
 * starts from the loop, never from a signal handler), and runs src/worker.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_db.h"
#include "duration.h"
#include "embedded_pg.h"
#include "log.h"
#include "strutil.h"
#include "worker.h"

static const struct cli_flag worker_flags[] = {
    {"data-dir", 0, "DIR", "embedded Postgres of `agently up` (default ./.agently)"},
    {"concurrency", 0, "N", "runs held at once (default 100)"},
    {"lease", 0, "DURATION", "lease length (default 30s, 1s-1h)"},
    {"heartbeat", 0, "DURATION", "renewal interval (default lease/3; at most lease/2)"},
    {"drain-grace", 0, "DURATION", "on SIGTERM, how long running effects may finish (10s)"},
    {"poll", 0, "DURATION", "claim polling fallback (default 500ms, 10ms-1s)"},
    {"id", 0, "NAME", "worker id recorded on claimed runs (default <hostname>:<pid>)"},
    {"llm-prices", 0, "FILE",
     "LLM price overrides by model, JSON (default: AGENTLY_LLM_PRICES, else the shipped list)"},
    {"executor", 0, "PATH",
     "program run (sandboxed) for each agent step (default: this binary's `executor`)"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

/* A duration flag within [min_ms, max_ms] into *out (left alone when the flag is absent). */
static int parse_duration_flag(const struct cli_args *args, const char *flag, int64_t min_ms,
                               int64_t max_ms, int64_t *out)
{
        const char *value = cli_args_get(worker_flags, args, flag);
        char lo[32], hi[32];

        if (!value)
                return 0;
        if (duration_parse_ms(value, out) < 0 || *out < min_ms || *out > max_ms) {
                duration_format(min_ms, lo, sizeof(lo));
                duration_format(max_ms, hi, sizeof(hi));
                fprintf(stderr,
                        "agently worker: --%s must be a duration between %s and %s (e.g. "
                        "\"30s\", \"500ms\"), got '%s'\n",
                        flag, lo, hi, value);
                return -EINVAL;
        }
        return 0;
}

int cmd_worker(int argc, char **argv)
{
        struct worker_config cfg = {
            .concurrency = 100,
            .lease_ms = 30000,
            .heartbeat_ms = 0,
            .drain_grace_ms = 10000,
            .poll_ms = 500,
            .signal_fd = -1,
        };
        const char *data_dir, *id, *concurrency;
        _cleanup_free_ char *conninfo = NULL, *default_id = NULL;
        _cleanup_close_ int sfd = -1;
        char host[128] = "worker";
        struct cli_args args;
        sigset_t mask;
        int r;

        log_setup("worker");
        r = cli_role_args("worker",
                          "worker [--data-dir DIR] [--concurrency N] [--lease DURATION] [options]",
                          "Claims runs from the queue and executes them until SIGTERM (drain) "
                          "or SIGINT.\nAGENTLY_DATABASE_URL, when set, overrides --data-dir.",
                          worker_flags, argc, argv, &args);
        if (r >= 0)
                return r;
        data_dir = cli_args_get(worker_flags, &args, "data-dir");
        id = cli_args_get(worker_flags, &args, "id");
        concurrency = cli_args_get(worker_flags, &args, "concurrency");
        if (concurrency && (str_to_int(concurrency, &cfg.concurrency) < 0 || cfg.concurrency < 1 ||
                            cfg.concurrency > WORKER_MAX_CONCURRENCY)) {
                fprintf(stderr, "agently worker: --concurrency must be 1-%d, got '%s'\n",
                        WORKER_MAX_CONCURRENCY, concurrency);
                return CLI_EXIT_USAGE;
        }
        if (parse_duration_flag(&args, "lease", 1000, 3600 * 1000, &cfg.lease_ms) < 0 ||
            parse_duration_flag(&args, "heartbeat", 100, 1800 * 1000, &cfg.heartbeat_ms) < 0 ||
            parse_duration_flag(&args, "drain-grace", 0, 3600 * 1000, &cfg.drain_grace_ms) < 0 ||
            parse_duration_flag(&args, "poll", 10, 1000, &cfg.poll_ms) < 0)
                return CLI_EXIT_USAGE;
        if (id && (str_is_empty(id) || strlen(id) > 200)) {
                fprintf(stderr, "agently worker: --id must be 1-200 characters\n");
                return CLI_EXIT_USAGE;
        }
        if (cfg.heartbeat_ms == 0)
                cfg.heartbeat_ms = cfg.lease_ms / 3;
        if (cfg.heartbeat_ms * 2 > cfg.lease_ms) {
                char hb[32], lease[32];
                duration_format(cfg.heartbeat_ms, hb, sizeof(hb));
                duration_format(cfg.lease_ms, lease, sizeof(lease));
                fprintf(stderr,
                        "agently worker: --heartbeat %s is too long for --lease %s: it must be at "
                        "most half the lease (about a third is best) so a missed beat does not "
                        "lose the lease\n",
                        hb, lease);
                return CLI_EXIT_USAGE;
        }
        if (!id) {
                gethostname(host, sizeof(host) - 1);
                default_id = str_printf("%.150s:%d", host, (int)getpid());
                if (!default_id)
                        return CLI_EXIT_FAILURE;
                id = default_id;
        }
        cfg.id = id;
        _cleanup_json_ json_t *prices = NULL;
        if (cli_llm_prices_load("worker", cli_args_get(worker_flags, &args, "llm-prices"),
                                &prices) < 0)
                return CLI_EXIT_USAGE;
        cfg.llm_prices = prices;
        cfg.executor_path = cli_args_get(worker_flags, &args, "executor");

        if (str_is_empty(data_dir))
                data_dir = getenv("AGENTLY_DATA_DIR");
        r = db_conninfo_for_role(str_is_empty(data_dir) ? EMBEDDED_PG_DEFAULT_DATA_DIR : data_dir,
                                 DB_ROLE_WORKER, &conninfo);
        if (r < 0)
                return cli_db_fail("could not find the database", r);
        cfg.conninfo = conninfo;
        cfg.public_url = getenv("AGENTLY_PUBLIC_URL");
        cfg.data_dir = str_is_empty(data_dir) ? NULL : data_dir;
        /* a worker holds decrypted secrets: no core dump, no ptrace by same-uid processes */
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                log_warn("could not make the worker non-dumpable: %s", strerror(errno));

        /* Blocked here, before any thread starts, so every thread inherits the mask and
         * only the signalfd sees these signals. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0)
                return CLI_EXIT_FAILURE;
        sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        if (sfd < 0) {
                log_errno(-errno, "could not create a signalfd");
                return CLI_EXIT_FAILURE;
        }
        signal(SIGPIPE, SIG_IGN);
        cfg.signal_fd = sfd;

        r = worker_run(&cfg);
        if (r == -ECONNREFUSED)
                return CLI_EXIT_UNAVAILABLE;
        return r < 0 ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
