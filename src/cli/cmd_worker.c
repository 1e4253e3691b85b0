/*
 * `agently worker`: the data plane. Parses and validates the flags, resolves the worker
 * role's database, routes SIGTERM/SIGINT to a signalfd the event loop watches (so a drain
 * starts from the loop, never from a signal handler), and runs src/worker.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_db.h"
#include "duration.h"
#include "embedded_pg.h"
#include "log.h"
#include "strutil.h"
#include "worker.h"

static void worker_usage(FILE *out)
{
        fprintf(
            out,
            "usage: agently worker [--data-dir DIR] [--concurrency N] [--lease DURATION]\n"
            "                      [--heartbeat DURATION] [--drain-grace DURATION] [--id NAME]\n\n"
            "Claims runs from the queue and executes them until SIGTERM (drain) or SIGINT.\n\n"
            "  --data-dir DIR         embedded Postgres of `agently up` (default ./.agently);\n"
            "                         AGENTLY_DATABASE_URL overrides it\n"
            "  --concurrency N        runs held at once (default 100, 1-%d)\n"
            "  --lease DURATION       lease length (default 30s, 1s-1h)\n"
            "  --heartbeat DURATION   renewal interval (default lease/3; at most lease/2)\n"
            "  --drain-grace DURATION on SIGTERM, how long running effects may finish\n"
            "                         before their runs are released (default 10s)\n"
            "  --poll DURATION        claim polling fallback (default 500ms, 10ms-1s)\n"
            "  --id NAME              worker id recorded on claimed runs\n"
            "                         (default <hostname>:<pid>)\n",
            WORKER_MAX_CONCURRENCY);
}

static int parse_duration_flag(const char *flag, const char *value, int64_t min_ms, int64_t max_ms,
                               int64_t *out)
{
        char lo[32], hi[32];

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
        static const struct option options[] = {
            {"data-dir", required_argument, NULL, 'd'},
            {"concurrency", required_argument, NULL, 'c'},
            {"lease", required_argument, NULL, 'l'},
            {"heartbeat", required_argument, NULL, 'b'},
            {"drain-grace", required_argument, NULL, 'g'},
            {"poll", required_argument, NULL, 'p'},
            {"id", required_argument, NULL, 'i'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        struct worker_config cfg = {
            .concurrency = 100,
            .lease_ms = 30000,
            .heartbeat_ms = 0,
            .drain_grace_ms = 10000,
            .poll_ms = 500,
            .signal_fd = -1,
        };
        const char *data_dir = NULL, *id = NULL;
        _cleanup_free_ char *conninfo = NULL, *default_id = NULL;
        _cleanup_close_ int sfd = -1;
        char host[128] = "worker";
        sigset_t mask;
        int opt, r;

        log_setup("worker");
        optind = 1;
        while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
                switch (opt) {
                case 'd':
                        data_dir = optarg;
                        break;
                case 'c':
                        if (str_to_int(optarg, &cfg.concurrency) < 0 || cfg.concurrency < 1 ||
                            cfg.concurrency > WORKER_MAX_CONCURRENCY) {
                                fprintf(stderr,
                                        "agently worker: --concurrency must be 1-%d, got '%s'\n",
                                        WORKER_MAX_CONCURRENCY, optarg);
                                return CLI_EXIT_USAGE;
                        }
                        break;
                case 'l':
                        if (parse_duration_flag("lease", optarg, 1000, 3600 * 1000, &cfg.lease_ms) <
                            0)
                                return CLI_EXIT_USAGE;
                        break;
                case 'b':
                        if (parse_duration_flag("heartbeat", optarg, 100, 1800 * 1000,
                                                &cfg.heartbeat_ms) < 0)
                                return CLI_EXIT_USAGE;
                        break;
                case 'g':
                        if (parse_duration_flag("drain-grace", optarg, 0, 3600 * 1000,
                                                &cfg.drain_grace_ms) < 0)
                                return CLI_EXIT_USAGE;
                        break;
                case 'p':
                        if (parse_duration_flag("poll", optarg, 10, 1000, &cfg.poll_ms) < 0)
                                return CLI_EXIT_USAGE;
                        break;
                case 'i':
                        if (str_is_empty(optarg) || strlen(optarg) > 200) {
                                fprintf(stderr, "agently worker: --id must be 1-200 characters\n");
                                return CLI_EXIT_USAGE;
                        }
                        id = optarg;
                        break;
                case 'h':
                        worker_usage(stdout);
                        return CLI_EXIT_OK;
                default:
                        worker_usage(stderr);
                        return CLI_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "agently worker: unexpected argument '%s'\n", argv[optind]);
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

        if (str_is_empty(data_dir))
                data_dir = getenv("AGENTLY_DATA_DIR");
        r = db_conninfo_for_role(str_is_empty(data_dir) ? EMBEDDED_PG_DEFAULT_DATA_DIR : data_dir,
                                 DB_ROLE_WORKER, &conninfo);
        if (r < 0)
                return cli_db_fail("could not find the database", r);
        cfg.conninfo = conninfo;

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
