/*
 * `agently dispatch`: housekeeping that must happen whether or not anyone is looking.
 * Today: create the monthly log partitions ahead of time (so no event ever lands in the
 * default partition), expire idempotency keys older than their retention, and fail runs
 * whose workflow timeout passed while nobody worked on them (paused, or waiting for a
 * person: agently_fail_overdue_runs). Later issues
 * add the notification outbox and cron schedules here. Every task is idempotent, so any
 * number of dispatchers may run; a failed round is retried at the next tick.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_db.h"
#include "duration.h"
#include "log.h"
#include "strutil.h"

#define PARTITION_MONTHS_AHEAD "3"
#define IDEMPOTENCY_RETENTION  "24 hours"
#define OVERDUE_PER_ROUND      "1000"

static volatile sig_atomic_t dispatch_stop;

static void on_stop(int sig)
{
        (void)sig;
        dispatch_stop = 1;
}

static const struct cli_flag dispatch_flags[] = {
    {"data-dir", 0, "DIR", "embedded Postgres of `agently up` (default ./.agently)"},
    {"interval", 0, "DURATION", "time between rounds (default 60s, at least 100ms)"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

/* One round of every task; returns 0 or the first failure (the others still ran). */
static int dispatch_round(PGconn *c)
{
        int r, first = 0;
        _cleanup_pgresult_ PGresult *parts = db_query(
            c, "SELECT agently_ensure_log_partitions(" PARTITION_MONTHS_AHEAD ")", 0, NULL, &r);

        if (!parts) {
                log_warn("could not create log partitions: %s", db_last_error());
                first = r;
        } else if (strcmp(PQgetvalue(parts, 0, 0), "0") != 0) {
                log_info("created %s log partition(s)", PQgetvalue(parts, 0, 0));
        }
        _cleanup_pgresult_ PGresult *purged = db_query(
            c, "SELECT agently_purge_api_idempotency(interval '" IDEMPOTENCY_RETENTION "')", 0,
            NULL, &r);
        if (!purged) {
                log_warn("could not expire idempotency keys: %s", db_last_error());
                if (!first)
                        first = r;
        }
        _cleanup_pgresult_ PGresult *overdue =
            db_query(c, "SELECT agently_fail_overdue_runs(" OVERDUE_PER_ROUND ")", 0, NULL, &r);
        if (!overdue) {
                log_warn("could not fail overdue runs: %s", db_last_error());
                if (!first)
                        first = r;
        } else if (strcmp(PQgetvalue(overdue, 0, 0), "0") != 0) {
                log_info("failed %s run(s) past their timeout", PQgetvalue(overdue, 0, 0));
        }
        return first;
}

int cmd_dispatch(int argc, char **argv)
{
        const char *data_dir, *interval;
        int64_t interval_ms = 60000;
        struct cli_args args;
        PGconn *c = NULL;
        int r = cli_role_args("dispatch", "dispatch [--data-dir DIR] [--interval DURATION]",
                              "Runs housekeeping every interval: log partitions ahead,\n"
                              "idempotency-key expiry. Any number may run at once.",
                              dispatch_flags, argc, argv, &args);

        if (r >= 0)
                return r;
        data_dir = cli_args_get(dispatch_flags, &args, "data-dir");
        interval = cli_args_get(dispatch_flags, &args, "interval");
        if (interval && (duration_parse_ms(interval, &interval_ms) < 0 || interval_ms < 100)) {
                fprintf(stderr,
                        "agently dispatch: --interval must be a duration of at least 100ms (e.g. "
                        "30s), got '%s'\n",
                        interval);
                return CLI_EXIT_USAGE;
        }
        signal(SIGTERM, on_stop);
        signal(SIGINT, on_stop);
        log_info("dispatcher started (every %lldms)", (long long)interval_ms);
        while (!dispatch_stop) {
                if (!c || PQstatus(c) != CONNECTION_OK) {
                        if (c)
                                PQfinish(c);
                        c = NULL;
                        if (cli_db_connect(data_dir, DB_ROLE_WORKER, &c) < 0)
                                log_warn("%s; retrying", db_last_error());
                }
                if (c)
                        dispatch_round(c);
                /* sleep in small steps so SIGTERM is honoured promptly */
                for (int64_t slept = 0; slept < interval_ms && !dispatch_stop; slept += 100) {
                        struct timespec ts = {0, 100 * 1000 * 1000};
                        nanosleep(&ts, NULL);
                }
        }
        if (c)
                PQfinish(c);
        log_info("dispatcher stopped");
        return CLI_EXIT_OK;
}
