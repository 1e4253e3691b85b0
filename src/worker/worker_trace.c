/* The loop turn's phases, for bench/run; see worker_trace.h. */
#include "worker_trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void worker_trace_init(struct worker_trace *t)
{
        const char *v = getenv("AGENTLY_TRACE_TURNS");

        memset(t, 0, sizeof(*t));
        t->on = v && strcmp(v, "1") == 0;
}

int64_t worker_trace_now_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void worker_trace_mark(struct worker_trace *t, enum worker_trace_mark m)
{
        if (t->on)
                t->at[m] = worker_trace_now_us();
}

void worker_trace_claim(struct worker_trace *t, int64_t sent_us, int n, const char *first)
{
        if (!t->on)
                return;
        fprintf(stderr, "trace claim hint_us=%lld claim_us=%lld runs=%d first=%s at=%lld\n",
                (long long)(t->hint_at ? sent_us - t->hint_at : -1),
                (long long)(worker_trace_now_us() - sent_us), n, first ? first : "-",
                (long long)sent_us);
        t->hint_at = 0;
}

void worker_trace_turn(struct worker_trace *t, int runs, const char *first)
{
        const int64_t *a = t->at;

        if (!t->on)
                return;
        fprintf(stderr,
                "trace turn runs=%d first=%s begin_us=%lld lock_us=%lld snapshot_us=%lld "
                "plan_us=%lld commit_us=%lld total_us=%lld t0=%lld\n",
                runs, first, (long long)(a[TRACE_BEGUN] - a[TRACE_BEGIN]),
                (long long)(a[TRACE_LOCKED] - a[TRACE_BEGUN]),
                (long long)(a[TRACE_SNAPSHOT] - a[TRACE_LOCKED]),
                (long long)(a[TRACE_PLANNED] - a[TRACE_SNAPSHOT]),
                (long long)(a[TRACE_COMMITTED] - a[TRACE_PLANNED]),
                (long long)(a[TRACE_COMMITTED] - a[TRACE_BEGIN]), (long long)a[TRACE_BEGIN]);
        memset(t->at, 0, sizeof(t->at));
}
