/*
 * The durable queue as C calls: thin wrappers over the SQL functions of
 * migrations/0011_run_queue.sql (claim, renew, checkpoint, event, finish, release). Every
 * write for a run carries the lease epoch it was claimed with; the database refuses it
 * when the epoch moved on (another worker claimed the run) or the run is no longer
 * running. The wrappers report that as 0 ("lease lost"), distinct from errors (negative
 * errno, message in db_last_error()): a caller that sees 0 must stop the run at once and
 * write nothing more for it. Times are the database's; these functions take durations and
 * database timestamps only. See src/queue/README.md.
 *
 * Not thread-safe per connection (libpq): one connection per thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <libpq-fe.h>

#define QUEUE_UUID_LEN  36
#define QUEUE_MAX_CLAIM 10000

struct queue_claim {
        char id[QUEUE_UUID_LEN + 1];
        char user_id[QUEUE_UUID_LEN + 1];
        char workflow_id[QUEUE_UUID_LEN + 1];
        int64_t epoch;
        int attempt;            /* number of claims so far, this one included */
        char status_before[16]; /* queued | waiting | running (rescued from a lost worker) */
        /* queue_begin_claim_runs only: the run's whole snapshot, read in the claim's statement
         * (what agently_run_snapshot() of 0053 returns: the planner's input, src/worker/README.md),
         * owned by the caller (queue_claims_clear); NULL when not read. And the control
         * plane's requests found with it. */
        json_t *snapshot;
        bool cancel_requested, pause_requested;
};

struct queue_lease {
        const char *run_id;
        int64_t epoch;
};

/*
 * Claims up to max (1..QUEUE_MAX_CLAIM) due runs in one statement for worker, each with a
 * lease of lease_ms. held[0..nheld) are the runs the worker still holds (NULL, 0 for
 * none): an expired lease among them is not "rescued" from itself (its renewal takes it
 * back). Fills out[0..*n). Returns 0 or a negative errno (nothing claimed: the statement is
 * atomic).
 */
int queue_claim_runs(PGconn *c, const char *worker, int64_t lease_ms, int max,
                     const struct queue_lease *held, int nheld, struct queue_claim *out, int *n);

/*
 * The same claim as the first statement of a new transaction, with each claimed run's whole
 * snapshot: BEGIN and the claim in one round trip (db_query_between; agently_claim_turn of
 * migrations/0033_claim_turn.sql reads the snapshots after the claim, in the same call). The
 * claimed runs' queue rows and records stay locked until the caller's COMMIT, which is also
 * when the claim becomes durable and visible; a ROLLBACK undoes it (the runs are due again
 * at once). The caller owns out[0..*n).snapshot (queue_claims_clear). On an error nothing is
 * returned, and the transaction is left open and failed: roll it back.
 */
int queue_begin_claim_runs(PGconn *c, const char *worker, int64_t lease_ms, int max,
                           const struct queue_lease *held, int nheld, struct queue_claim *out,
                           int *n);

/* Releases the snapshots of claims[0..n) that the caller has not taken (NULL them to take
 * one). */
void queue_claims_clear(struct queue_claim *claims, int n);

struct queue_renewal {
        char id[QUEUE_UUID_LEN + 1];
        bool cancel_requested;
        bool pause_requested;
};

/*
 * Renews every lease in held[0..n) in one statement (absolute: now() + lease_ms). out must
 * have room for n entries; *nout receives the runs still held with their control-plane
 * requests. A run of held missing from out is lost. Returns 0 or a negative errno (then
 * nothing is known: the caller keeps its runs and tries at the next beat).
 */
int queue_renew_leases(PGconn *c, const char *worker, const struct queue_lease *held, int n,
                       int64_t lease_ms, struct queue_renewal *out, int *nout);

/* One node_runs write (an agently_apply_writes "node" op); NULL members are SQL NULL. */
struct queue_node_write {
        const char *node_id;
        int attempt;
        const char *status; /* started | waiting | completed | failed | skipped | interrupted |
                               canceled */
        const json_t *input, *output, *error;
        const char *worker;
        const char *idempotency_key;
        const char *event_kind; /* NULL: node.<status> */
        const char *event_message;
        const json_t *event_data;
};

/* Returns 1 when written, 0 when the lease is lost (nothing written), a negative errno on
 * failure. */
int queue_checkpoint_node(PGconn *c, const char *run_id, int64_t epoch,
                          const struct queue_node_write *w);

/* Appends one fenced event (attempt < 0: none). 1 written, 0 lease lost, negative errno. */
int queue_append_event(PGconn *c, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data);

/* Finishes the run (completed | failed | canceled) and drops the lease; wakes a parent run.
 * 1 written, 0 lease lost, negative errno. */
int queue_finish_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                     const json_t *output, const json_t *error);

/*
 * Releases the run without finishing it (queued | waiting | paused | needs_input) and drops
 * the lease. run_at_ms is a database timestamp in ms since the epoch, or < 0 for the
 * default (now for queued, 'infinity' otherwise: only a wake-up event brings it back).
 * 1 written, 0 lease lost, negative errno.
 */
int queue_release_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                      int64_t run_at_ms, const char *wait_reason);

/* Database now() in ms since the epoch, or a negative errno. */
int64_t queue_db_now_ms(PGconn *c);

/*
 * A loop turn's writes for many runs, sent in one statement (agently_apply_write_rows of
 * migrations/0055_write_rows.sql, 0011's agently_apply_writes read from rows) with the same fencing
 * as the calls above: per run, all its writes happen or, when its lease is lost, none. Operations
 * keep their order per run; a finish or release must be a run's last operation. Not thread-safe.
 */
struct queue_writes;

struct queue_writes *queue_writes_new(void);
void queue_writes_free(struct queue_writes *b);
/* Operations not yet sent. */
int queue_writes_count(const struct queue_writes *b);
/* Drops every operation not yet sent (after a rollback). */
void queue_writes_clear(struct queue_writes *b);

/* Appends a node_runs write. 0, -ENOMEM, -EILSEQ (a string that is not UTF-8: nothing of
 * the operation is kept, as for every append's failure), or -EBUSY when (run, node,
 * attempt) may already have a write in the buffer: flush first (one statement cannot upsert
 * a row twice; the check is a set of hashes, so rarely -EBUSY comes for a write that had
 * none, and the flush it asks for is then merely early). */
int queue_writes_node(struct queue_writes *b, const char *run_id, int64_t epoch,
                      const struct queue_node_write *w);
/* Appends an event (attempt < 0: none). 0, -ENOMEM or -EILSEQ. */
int queue_writes_event(struct queue_writes *b, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data);
/* Appends a finish (completed | failed | canceled). 0, -ENOMEM or -EILSEQ. */
int queue_writes_finish(struct queue_writes *b, const char *run_id, int64_t epoch,
                        const char *status, const json_t *output, const json_t *error);
/* Appends a release, as queue_release_run(); error (may be NULL) is recorded on the run;
 * deadline_ms (database time, < 0: unchanged) is the run's workflow deadline, kept while
 * nobody holds the run so that a paused or needs_input run still fails on time
 * (agently_fail_overdue_runs). 0, -ENOMEM or -EILSEQ. */
int queue_writes_release(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *status, int64_t run_at_ms, const char *wait_reason,
                         const json_t *error, int64_t deadline_ms);
/* Marks a signal consumed by node, together with the run's other writes. 0, -ENOMEM or -EILSEQ. */
int queue_writes_consume(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *signal_id, const char *node_id);

/*
 * Sends every buffered operation in one statement and empties the buffer. For each run
 * whose lease was lost (nothing of it written) calls lost(arg, run_id). Returns 0 or a
 * negative errno (the statement failed: nothing was written, the caller's transaction is
 * lost). An empty buffer sends nothing.
 */
int queue_writes_flush(PGconn *c, const char *worker, struct queue_writes *b,
                       void (*lost)(void *arg, const char *run_id), void *arg);
/* The same, and COMMIT of the caller's transaction, in one round trip (db_query_between);
 * an empty buffer sends the COMMIT alone. lost() is called for runs refused by the fence
 * (nothing of theirs was written; the others' writes are committed). On an error the
 * transaction is left failed or its outcome unknown: roll it back. */
int queue_writes_flush_commit(PGconn *c, const char *worker, struct queue_writes *b,
                              void (*lost)(void *arg, const char *run_id), void *arg);
