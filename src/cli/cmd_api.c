/* `agently api`: parse options, block the shutdown signals, run the server (src/api). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "api.h"
#include "cli.h"
#include "cli_args.h"
#include "log.h"
#include "strutil.h"

static const struct cli_flag api_flags[] = {
    {"listen", 0, "ADDR:PORT", "address to listen on (default 127.0.0.1:8080)"},
    {"data-dir", 0, "DIR", "data directory (embedded Postgres, master.key)"},
    {"threads", 0, "N", "HTTP worker threads (default 4)"},
    {"db-pool", 0, "N", "database connections (default 8)"},
    {"max-connections", 0, "N", "open connections in all (default 1024)"},
    {"per-ip-connections", 0, "N", "open connections per client address (default 512)"},
    {"timeout", 0, "SECONDS", "idle connection timeout (default 30)"},
    {"max-body", 0, "BYTES", "request body limit (default 1048576)"},
    {"web-dir", 0, "DIR", "the built dashboard (default AGENTLY_WEB_DIR, else the build's web/)"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

/* An unsigned flag within [min, max] into *out (left alone when the flag is absent). */
static int unsigned_flag(const struct cli_args *args, const char *name, unsigned min, unsigned max,
                         unsigned *out)
{
        int64_t v = *out;
        int r = cli_flag_int("api", name, cli_args_get(api_flags, args, name), min, max, &v);

        *out = (unsigned)v;
        return r;
}

int cmd_api(int argc, char **argv)
{
        struct api_options o;
        struct cli_args args;
        unsigned body;
        sigset_t set;
        int r = cli_role_args("api", "api [--listen ADDR:PORT] [--data-dir DIR] [options]",
                              "Serves the REST + SSE API (docs/api.md) against the database "
                              "named by\nAGENTLY_DATABASE_URL, or the embedded Postgres under "
                              "--data-dir.\nSIGTERM or SIGINT stop it cleanly.",
                              api_flags, argc, argv, &args);

        if (r >= 0)
                return r;
        api_options_default(&o);
        if (getenv("AGENTLY_DATA_DIR"))
                o.data_dir = getenv("AGENTLY_DATA_DIR");
        if (cli_args_get(api_flags, &args, "listen"))
                o.listen = cli_args_get(api_flags, &args, "listen");
        if (cli_args_get(api_flags, &args, "data-dir"))
                o.data_dir = cli_args_get(api_flags, &args, "data-dir");
        if (cli_args_get(api_flags, &args, "web-dir"))
                o.web_dir = cli_args_get(api_flags, &args, "web-dir");
        body = (unsigned)o.max_body;
        if ((r = unsigned_flag(&args, "threads", 1, 256, &o.threads)) ||
            (r = unsigned_flag(&args, "db-pool", 1, 256, &o.db_pool_size)) ||
            (r = unsigned_flag(&args, "max-connections", 1, 100000, &o.max_connections)) ||
            (r = unsigned_flag(&args, "per-ip-connections", 1, 100000, &o.per_ip_connections)) ||
            (r = unsigned_flag(&args, "timeout", 1, 3600, &o.connection_timeout_s)) ||
            (r = unsigned_flag(&args, "max-body", 1024, 64u << 20, &body)))
                return r;
        o.max_body = body;
        /* every thread the server starts inherits this mask, so only api_run's sigwait()
         * sees the shutdown signals; SIGPIPE from a vanished client must not kill us */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);
        /* the API seals secret values it receives: no core dump of them */
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                log_warn("could not make the api non-dumpable: %s", strerror(errno));
        return api_run(&o) < 0 ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
