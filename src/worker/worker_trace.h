/*
 * Where a loop turn's time goes, for `bench/run` (docs/performance.md, "latency
 * breakdown"): with AGENTLY_TRACE_TURNS=1 in its environment the worker writes one line per
 * claim and per turn to stderr, each phase's wall-clock time in microseconds. Off, every
 * call is a test of one flag. Not a log: no level, no redaction needed (ids and numbers only).
 *
 *   trace claim hint_us=H claim_us=C runs=N first=<run id> at=<epoch us>
 *       H: from the heartbeat thread reading the NOTIFY to the claim statement being sent
 *       (-1: the claim came from the poll timer); C: BEGIN and the claim statement, one
 *       round trip (the claim commits with the turn it opens); at: when it was sent
 *   trace turn runs=N first=<run id> begin_us=.. lock_us=.. snapshot_us=.. plan_us=..
 *       commit_us=.. total_us=.. t0=<epoch us>
 *       begin_us: BEGIN, with the claim in a turn that claims; lock_us: the lock statement
 *       of the runs held from before (0: none in the batch); snapshot_us: the finished
 *       requests' writes (when sent before it) and the snapshot read; plan_us: planning
 *       and applying (statements a round issues included); commit_us: the turn's last
 *       writes statement and the COMMIT, one round trip; t0: BEGIN sent
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

enum worker_trace_mark {
        TRACE_BEGIN,    /* before BEGIN is sent */
        TRACE_BEGUN,    /* BEGIN returned */
        TRACE_LOCKED,   /* the lock statement returned */
        TRACE_SNAPSHOT, /* the snapshots are read (finished requests written) */
        TRACE_PLANNED,  /* every run planned and applied */
        TRACE_COMMITTED,
        TRACE_MARKS
};

struct worker_trace {
        bool on;
        int64_t at[TRACE_MARKS]; /* CLOCK_REALTIME us */
        int64_t hint_at;         /* when the heartbeat read the NOTIFY that led to the next
                                    claim (0: none) */
};

void worker_trace_init(struct worker_trace *t);
static inline bool worker_trace_on(const struct worker_trace *t)
{
        return t->on;
}
int64_t worker_trace_now_us(void);
void worker_trace_mark(struct worker_trace *t, enum worker_trace_mark m);
/* A claim statement sent at sent_us returned n runs (first: the first of them, or NULL). */
void worker_trace_claim(struct worker_trace *t, int64_t sent_us, int n, const char *first);
/* The turn over runs (first: the lowest id) is over. */
void worker_trace_turn(struct worker_trace *t, int runs, const char *first);
