/*
 * The fixture of a worker test, once for every suite: a fresh database (a copy of the
 * migrated template) with user "alice", a recording sink (worker_sink.h), a temp directory
 * for logs, and the `agently worker` processes a test spawns into it (each logging to
 * DIR/ID.log). Every helper fails the test on error and, where a wait times out, shows the
 * workers' logs first.
 */
#pragma once

#include <sys/types.h>
#include <libpq-fe.h>

#include "worker_sink.h"

#define WORKER_FIXTURE_MAX_WORKERS 16

struct worker_fixture {
        char *conninfo; /* the database's owner (superuser) */
        PGconn *db;     /* connected as the owner */
        char *user;     /* alice's id */
        struct worker_sink *sink;
        char *dir; /* logs: DIR/ID.log per worker */
        pid_t workers[WORKER_FIXTURE_MAX_WORKERS];
        int nworkers;
};

/* A new fixture; name prefixes the database and the directory. Free with
 * worker_fixture_free. */
struct worker_fixture *worker_fixture_new(const char *name);

/* Stops every worker still running (SIGTERM, then waits; a worker a test already stopped
 * is skipped), stops the sink, drops the directory, frees f. */
void worker_fixture_free(struct worker_fixture *f);

/* Spawns `agently worker --id ID --lease L --heartbeat H [extra...]` logging to DIR/ID.log;
 * extra is NULL-terminated (may be NULL). */
pid_t worker_fixture_spawn(struct worker_fixture *f, const char *id, const char *lease,
                           const char *heartbeat, const char *const *extra);

/* The last lines of every worker log, to stderr. */
void worker_fixture_dump_logs(struct worker_fixture *f);

/* Workflow `name` version 1 of alice from definition, every "SINK" replaced by the sink's
 * URL; returns its id (caller frees). */
char *worker_fixture_workflow(struct worker_fixture *f, const char *name, const char *definition);

/* A queued run (input {}) of a new workflow "w" from definition; returns its id. */
char *worker_fixture_start_run(struct worker_fixture *f, const char *definition);

/* Waits until the run's status is one of the '|'-separated statuses; fails the test (after
 * the logs) when it is not within ms. */
void worker_fixture_wait_status(struct worker_fixture *f, const char *run, const char *statuses,
                                int ms);

/* Waits until the sink has n requests whose path starts with prefix; fails the test (after
 * the logs) when it has not within ms. */
void worker_fixture_wait_sink(struct worker_fixture *f, const char *prefix, int n, int ms);

/* Events of kind in the run's log. */
long long worker_fixture_count_events(struct worker_fixture *f, const char *run, const char *kind);
