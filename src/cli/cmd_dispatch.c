/*
 * `agently dispatch`: housekeeping that must happen whether or not anyone is looking.
 * Today: create the monthly log partitions ahead of time (so no event ever lands in the
 * default partition), expire idempotency keys older than their retention, and fail runs
 * whose workflow timeout passed while nobody worked on them (paused, or waiting for a
 * person: agently_fail_overdue_runs) every --interval; and every --poll, deliver the
 * notification outbox and fire due cron schedules (src/notify). Every task is idempotent or
 * claims its rows with SKIP LOCKED, so any number of dispatchers may run; a failed round is
 * retried at the next tick.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_db.h"
#include "duration.h"
#include "log.h"
#include "notify.h"
#include "strutil.h"

#define PARTITION_MONTHS_AHEAD "3"
#define IDEMPOTENCY_RETENTION  "24 hours"
#define OVERDUE_PER_ROUND      "1000"

static volatile sig_atomic_t dispatch_stop;

static int64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_stop(int sig)
{
        (void)sig;
        dispatch_stop = 1;
}

static const struct cli_flag dispatch_flags[] = {
    {"data-dir", 0, "DIR", "embedded Postgres of `agently up` (default ./.agently)"},
    {"interval", 0, "DURATION", "time between housekeeping rounds (default 60s, at least 100ms)"},
    {"poll", 0, "DURATION", "time between outbox and schedule rounds (default 1s)"},
    {"id", 0, "NAME", "this dispatcher's name in delivery attempts (default dispatch-<pid>)"},
    {"notify-timeout", 0, "DURATION", "one delivery's time limit (default 30s)"},
    {"notify-lease", 0, "DURATION", "how long a claimed notification stays ours (default 60s)"},
    {"notify-batch", 0, "N", "notifications claimed and delivered at once (default 50)"},
    {"schedule-grace", 0, "DURATION", "a tick later than this is missed (default 60s)"},
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

/* Delivers the outbox (until a round claims nothing) and fires due schedules. */
static void notify_round(PGconn *c, const struct notify_config *cfg, int64_t grace_ms)
{
        int n, sent, failed;

        do {
                n = notify_deliver_round(c, cfg, &sent, &failed);
                if (n < 0)
                        log_warn("could not deliver notifications: %s", db_last_error());
                else if (n > 0)
                        log_info("delivered %d notification(s), %d failed attempt(s)", sent,
                                 failed);
        } while (n > 0 && !dispatch_stop);
        n = notify_schedules_round(c, grace_ms);
        if (n < 0)
                log_warn("could not fire schedules: %s", db_last_error());
        else if (n > 0)
                log_info("started %d scheduled run(s)", n);
}

/* A duration flag into *ms (unchanged when absent); false after printing the usage error. */
static bool duration_flag(const struct cli_args *args, const char *name, int64_t min_ms,
                          int64_t *ms)
{
        const char *v = cli_args_get(dispatch_flags, args, name);

        if (v && (duration_parse_ms(v, ms) < 0 || *ms < min_ms)) {
                fprintf(stderr,
                        "agently dispatch: --%s must be a duration of at least %lldms (e.g. "
                        "30s), got '%s'\n",
                        name, (long long)min_ms, v);
                return false;
        }
        return true;
}

int cmd_dispatch(int argc, char **argv)
{
        const char *data_dir, *interval;
        int64_t interval_ms = 60000, poll_ms = 1000, grace_ms = 60000;
        int64_t last_housekeeping = -1;
        struct notify_config ncfg;
        char id_buf[64];
        struct cli_args args;
        PGconn *c = NULL;
        int r = cli_role_args("dispatch", "dispatch [--data-dir DIR] [--interval DURATION]",
                              "Runs housekeeping every interval (log partitions ahead,\n"
                              "idempotency-key expiry, overdue runs) and, every poll, delivers\n"
                              "the notification outbox and fires cron schedules. Any number\n"
                              "may run at once. E-mail: AGENTLY_SMTP_URL, AGENTLY_SMTP_FROM,\n"
                              "AGENTLY_SMTP_USER, AGENTLY_SMTP_PASSWORD (or\n"
                              "AGENTLY_SMTP_PASSWORD_SECRET, a vault secret's name),\n"
                              "AGENTLY_SMTP_TLS, AGENTLY_SMTP_CA_FILE;\n"
                              "links: AGENTLY_PUBLIC_URL (docs/notifications.md).",
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
        notify_config_from_env(&ncfg);
        ncfg.data_dir = data_dir;
        snprintf(id_buf, sizeof(id_buf), "dispatch-%d", (int)getpid());
        ncfg.dispatcher_id = cli_args_get(dispatch_flags, &args, "id");
        if (!ncfg.dispatcher_id)
                ncfg.dispatcher_id = id_buf;
        if (!duration_flag(&args, "poll", 50, &poll_ms) ||
            !duration_flag(&args, "notify-timeout", 100, &ncfg.timeout_ms) ||
            !duration_flag(&args, "notify-lease", 200, &ncfg.lease_ms) ||
            !duration_flag(&args, "schedule-grace", 0, &grace_ms))
                return CLI_EXIT_USAGE;
        const char *batch = cli_args_get(dispatch_flags, &args, "notify-batch");
        if (batch && (str_to_int(batch, &ncfg.batch) < 0 || ncfg.batch < 1 || ncfg.batch > 1000)) {
                fprintf(stderr, "agently dispatch: --notify-batch must be 1 to 1000, got '%s'\n",
                        batch);
                return CLI_EXIT_USAGE;
        }
        if (ncfg.lease_ms <= ncfg.timeout_ms) {
                fprintf(stderr, "agently dispatch: --notify-lease must be longer than "
                                "--notify-timeout (a delivery must end before another "
                                "dispatcher may take it over)\n");
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
                if (c && (last_housekeeping < 0 || mono_ms() - last_housekeeping >= interval_ms)) {
                        last_housekeeping = mono_ms();
                        dispatch_round(c);
                }
                if (c)
                        notify_round(c, &ncfg, grace_ms);
                /* sleep in small steps so SIGTERM is honoured promptly */
                for (int64_t slept = 0; slept < poll_ms && !dispatch_stop; slept += 50) {
                        struct timespec ts = {0, 50 * 1000 * 1000};
                        nanosleep(&ts, NULL);
                }
        }
        if (c)
                PQfinish(c);
        log_info("dispatcher stopped");
        return CLI_EXIT_OK;
}
