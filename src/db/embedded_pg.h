/*
 * The embedded default: a private Postgres cluster that `agently up` (and the test harness)
 * creates and runs under a data directory, so a user needs no database of their own.
 *
 * Layout: <data-dir>/postgres.json records where the cluster lives; the cluster's home (owned
 * by the user Postgres runs as, mode 0700) holds data/ (PGDATA), run/ (the unix socket) and
 * postgres.log. The home is <data-dir>/postgres unless the Postgres user cannot reach the data
 * directory (root running in /root, say), in which case it is /var/lib/agently/clusters/<id>.
 *
 * Postgres refuses to run as root: when started as root, every Postgres program runs as the
 * unprivileged system user `agently` (created on first use) or AGENTLY_PG_USER.
 *
 * Authentication: trust on the unix socket, whose directory only the Postgres user (and
 * root) can enter; scram-sha-256 over TCP on 127.0.0.1 with the superuser password in
 * <data-dir>/postgres-password (mode 0600).
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#define EMBEDDED_PG_SUPERUSER        "agently"
#define EMBEDDED_PG_DATABASE         "agently"
#define EMBEDDED_PG_DEFAULT_DATA_DIR ".agently"

enum embedded_pg_flags {
        /* fsync, synchronous_commit and full_page_writes off: throwaway test clusters only */
        EMBEDDED_PG_FAST = 1 << 0,
};

struct embedded_pg;

/* Opens the description of the embedded cluster under data_dir (NULL = AGENTLY_DATA_DIR or
 * ./.agently); nothing is created. Caller frees with embedded_pg_free(). */
int embedded_pg_open(const char *data_dir, struct embedded_pg **out);
void embedded_pg_free(struct embedded_pg *pg);

bool embedded_pg_initialized(const struct embedded_pg *pg);
const char *embedded_pg_data_dir(const struct embedded_pg *pg);
const char *embedded_pg_cluster_dir(const struct embedded_pg *pg);
int embedded_pg_port(const struct embedded_pg *pg);

/* Creates the data directory and the cluster (initdb) when missing; a no-op otherwise. */
int embedded_pg_init(struct embedded_pg *pg, unsigned flags);

/* Starts the cluster unless it is already running, waits until it accepts connections
 * (after crash recovery, if the server died) and creates the `agently` database if
 * missing. It keeps the port of the last start while that port is free, so connection
 * strings handed out before stay valid; otherwise it picks a free loopback port. */
int embedded_pg_start(struct embedded_pg *pg);

/* Fast shutdown; waits for it. A cluster that is not running is not an error. */
int embedded_pg_stop(struct embedded_pg *pg);
/* Stops a cluster that is thrown away next (the test harness): `-m immediate`, no shutdown
 * checkpoint to wait for — on a busy disk that alone can take minutes. Returns as
 * embedded_pg_stop. */
int embedded_pg_stop_discarding(struct embedded_pg *pg);

bool embedded_pg_running(const struct embedded_pg *pg);

/* The postmaster's pid from PGDATA/postmaster.pid, or 0 when there is none. The file can
 * outlive a killed server: check that the process is alive before trusting it. */
pid_t embedded_pg_postmaster_pid(const struct embedded_pg *pg);

/* Crash restarts: `agently up` counts each time it brought a dead Postgres back, in
 * postgres.json ("restarts"), so any process with the data directory (the API's /metrics)
 * can read the figure without a database. The count covers the life of the cluster. */
int embedded_pg_count_restart(struct embedded_pg *pg);
long long embedded_pg_restarts(const struct embedded_pg *pg);

/* Reads the count from <data_dir>/postgres.json without opening the cluster (no user
 * look-ups, safe in a threaded server); -ENOENT when the directory has no embedded cluster. */
int embedded_pg_read_restarts(const char *data_dir, long long *out);

/* A malloc'd libpq connection string for user and dbname over the unix socket. */
char *embedded_pg_conninfo(const struct embedded_pg *pg, const char *user, const char *dbname);

/* The directory of the Postgres programs: AGENTLY_PG_BINDIR, else the newest
 * /usr/lib/postgresql/N/bin. */
int embedded_pg_bindir(char **out);
