/* `agently api`: parse options, block the shutdown signals, run the server (src/api). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "api.h"
#include "cli.h"
#include "strutil.h"

static void api_usage(FILE *out)
{
        fprintf(out, "usage: agently api [--listen ADDR:PORT] [--data-dir DIR] [options]\n\n"
                     "Serves the REST + SSE API (docs/api.md) against the database named by\n"
                     "AGENTLY_DATABASE_URL, or the embedded Postgres under --data-dir.\n"
                     "SIGTERM or SIGINT stop it cleanly.\n\n"
                     "  --listen ADDR:PORT      address to listen on (default 127.0.0.1:8080)\n"
                     "  --data-dir DIR          data directory (embedded Postgres, master.key)\n"
                     "  --threads N             HTTP worker threads (default 4)\n"
                     "  --db-pool N             database connections (default 8)\n"
                     "  --max-connections N     open connections in all (default 1024)\n"
                     "  --per-ip-connections N  open connections per client address (default 512)\n"
                     "  --timeout SECONDS       idle connection timeout (default 30)\n"
                     "  --max-body BYTES        request body limit (default 1048576)\n");
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
        int64_t v;

        if (str_to_int64(s, &v) < 0 || v < min || v > max)
                return -1;
        *out = (unsigned)v;
        return 0;
}

int cmd_api(int argc, char **argv)
{
        static const struct option options[] = {
            {"listen", required_argument, NULL, 'l'},
            {"data-dir", required_argument, NULL, 'd'},
            {"threads", required_argument, NULL, 't'},
            {"db-pool", required_argument, NULL, 'p'},
            {"max-connections", required_argument, NULL, 'c'},
            {"per-ip-connections", required_argument, NULL, 'i'},
            {"timeout", required_argument, NULL, 'T'},
            {"max-body", required_argument, NULL, 'b'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        struct api_options o;
        unsigned body = 0;
        int index = 0;
        sigset_t set;
        int opt, bad = 0;

        api_options_default(&o);
        if (getenv("AGENTLY_DATA_DIR"))
                o.data_dir = getenv("AGENTLY_DATA_DIR");
        while ((opt = getopt_long(argc, argv, "h", options, &index)) != -1) {
                switch (opt) {
                case 'l':
                        o.listen = optarg;
                        break;
                case 'd':
                        o.data_dir = optarg;
                        break;
                case 't':
                        bad |= parse_uint(optarg, 1, 256, &o.threads);
                        break;
                case 'p':
                        bad |= parse_uint(optarg, 1, 256, &o.db_pool_size);
                        break;
                case 'c':
                        bad |= parse_uint(optarg, 1, 100000, &o.max_connections);
                        break;
                case 'i':
                        bad |= parse_uint(optarg, 1, 100000, &o.per_ip_connections);
                        break;
                case 'T':
                        bad |= parse_uint(optarg, 1, 3600, &o.connection_timeout_s);
                        break;
                case 'b':
                        bad |= parse_uint(optarg, 1024, 64u << 20, &body);
                        o.max_body = body;
                        break;
                case 'h':
                        api_usage(stdout);
                        return CLI_EXIT_OK;
                default:
                        api_usage(stderr);
                        return CLI_EXIT_USAGE;
                }
                if (bad) {
                        fprintf(stderr, "agently api: invalid value '%s' for --%s\n", optarg,
                                options[index].name);
                        return CLI_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                api_usage(stderr);
                return CLI_EXIT_USAGE;
        }
        /* every thread the server starts inherits this mask, so only api_run's sigwait()
         * sees the shutdown signals; SIGPIPE from a vanished client must not kill us */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);
        return api_run(&o) < 0 ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
