/*
 * An idempotent HTTP sink for the chaos and timer tests: the outside world of many runs at
 * once. Requests go to /c/<n>/<node> (n = the run's index in the test, node = one of the
 * node ids given at start) with an Idempotency-Key header. The sink keeps, per (n, node),
 * every distinct key it saw and how many requests carried it, and answers like a real
 * idempotent API: the first request with a key performs the "effect" (gets a new effect id),
 * every later request with the same key gets the very same response, and is counted as a
 * re-execution, never as a second effect. A different key for the same (n, node) would be
 * a second effect, which is exactly the bug the tests look for.
 *
 * Requests that match no (n, node) are counted as strays. Thread-safe; one mutex.
 */
#pragma once

#include <stdint.h>

#define CHAOS_SINK_MAX_KEYS 4 /* distinct keys remembered per (n, node); more are counted */

struct chaos_sink;

struct chaos_sink_cell {
        int requests;                       /* all requests for (n, node) */
        int distinct_keys;                  /* how many different Idempotency-Key values */
        char keys[CHAOS_SINK_MAX_KEYS][96]; /* the first ones, in arrival order */
        int64_t effect_id;                  /* effect id answered for keys[0] (0 = none) */
        int64_t first_at_ms;                /* test_now_ms() of the first request */
};

/* Starts a sink for runs 0..nruns-1 and the given node ids (copied). Each answer is delayed
 * by a random 0..max_delay_ms (widens the window in which a worker can die mid-effect).
 * Aborts the test on failure. */
struct chaos_sink *chaos_sink_start(int nruns, const char *const *nodes, int nnodes,
                                    int max_delay_ms);
void chaos_sink_stop(struct chaos_sink *s);

/* "http://127.0.0.1:PORT" (owned by the sink). */
const char *chaos_sink_url(const struct chaos_sink *s);

/* A copy of (n, node_index)'s record; -1 when out of range. */
int chaos_sink_cell(struct chaos_sink *s, int n, int node_index, struct chaos_sink_cell *out);

struct chaos_sink_totals {
        int64_t requests;       /* every request that matched a cell */
        int64_t effects;        /* distinct (cell, key) pairs: effects actually performed */
        int64_t reexecs;        /* requests beyond the first per key (answered idempotently) */
        int64_t strays;         /* requests matching no cell (bad path or n out of range) */
        int max_per_key;        /* most requests seen for one key */
        int64_t reexec_hist[8]; /* cells with 1, 2, ..., 7, >=8 requests for their first key */
};

void chaos_sink_totals(struct chaos_sink *s, struct chaos_sink_totals *out);
