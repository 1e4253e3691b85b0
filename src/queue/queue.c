/* C calls over the queue functions (migrations/0011_run_queue.sql and before); see queue.h. */
#include "queue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "db.h"
#include "pgjson.h"
#include "strutil.h"

/* '{id,id,...}' of held[0..n), a uuid[] literal. */
static int uuid_array(struct buf *b, const struct queue_lease *held, int n)
{
        int r = buf_append_str(b, "{");

        for (int i = 0; r == 0 && i < n; i++)
                r = buf_printf(b, "%s%s", i ? "," : "", held[i].run_id);
        return r < 0 ? r : buf_append_str(b, "}");
}

/* The claim alone (agently_claim_runs), or, opening a worker's turn, with each claimed
 * run's snapshot (agently_claim_turn: the same claim, then the snapshots). */
static const char CLAIM_SQL[] =
    "SELECT id, user_id, workflow_id, lease_epoch, attempt, "
    "status_before "
    "FROM agently_claim_runs($1, $2::interval, $3::integer, $4::uuid[])";
static const char CLAIM_TURN_SQL[] =
    "SELECT id, user_id, workflow_id, lease_epoch, attempt, status_before, snapshot, "
    "cancel_requested, pause_requested, input, now_ms "
    "FROM agently_claim_turn($1, $2::interval, $3::integer, $4::uuid[])";

/*
 * A bare run's snapshot (0062_bare_fresh_claim.sql: fresh, nothing in it but its input and
 * the clock), made of what the claim returned in place of the text: the document that
 * agently_run_snapshot() writes for such a run, {"run_id", "input", "now_ms",
 * "started_at_ms"}, the run's start being the claim's now (test_worker_turn holds the two
 * equal). The input "{}" of most runs is made without the parser. NULL when out of memory
 * or when the input does not parse (the database wrote it from jsonb: it does).
 */
static json_t *bare_snapshot(const char *run_id, const char *input, const char *now_ms)
{
        int64_t now = 0;
        json_t *in = strcmp(input, "{}") == 0 ? json_object() : pgjson_loads(input, 0, NULL);
        json_t *s = in && str_to_int64(now_ms, &now) == 0 ? json_object() : NULL;

        if (!s) {
                json_decref(in);
                return NULL;
        }
        /* each set takes its value's reference, on failure too */
        if (json_object_set_new(s, "input", in) < 0 ||
            json_object_set_new(s, "run_id", json_string(run_id)) < 0 ||
            json_object_set_new(s, "now_ms", json_integer(now)) < 0 ||
            json_object_set_new(s, "started_at_ms", json_integer(now)) < 0) {
                json_decref(s);
                return NULL;
        }
        return s;
}

void queue_claims_clear(struct queue_claim *claims, int n)
{
        for (int i = 0; i < n; i++) {
                json_decref(claims[i].snapshot);
                claims[i].snapshot = NULL;
        }
}

static int claim_runs(PGconn *c, const char *before, const char *worker, int64_t lease_ms, int max,
                      const struct queue_lease *held, int nheld, struct queue_claim *out, int *n)
{
        _cleanup_buf_ struct buf ids;
        char lease[48], maxs[16];
        const char *params[] = {worker, lease, maxs, NULL};
        _cleanup_pgresult_ PGresult *res = NULL;
        bool turn = before != NULL;
        int r = 0, rows;

        *n = 0;
        buf_init(&ids, (size_t)nheld * 40 + 16);
        if (max < 1 || max > QUEUE_MAX_CLAIM || lease_ms <= 0 || nheld < 0)
                return -EINVAL;
        if ((r = uuid_array(&ids, held, nheld)) < 0)
                return r;
        params[3] = ids.data;
        snprintf(lease, sizeof(lease), "%lld milliseconds", (long long)lease_ms);
        snprintf(maxs, sizeof(maxs), "%d", max);
        /* prepared once per connection: the server parses and plans the call once a session */
        res = db_query_prepared_between(c, before, turn ? CLAIM_TURN_SQL : CLAIM_SQL, 4, params,
                                        NULL, &r);
        if (!res)
                return r;
        rows = PQntuples(res);
        for (int i = 0; i < rows && i < max; i++) {
                struct queue_claim *q = &out[i];
                *q = (struct queue_claim){0};
                str_copy(q->id, sizeof(q->id), PQgetvalue(res, i, 0));
                str_copy(q->user_id, sizeof(q->user_id), PQgetvalue(res, i, 1));
                str_copy(q->workflow_id, sizeof(q->workflow_id), PQgetvalue(res, i, 2));
                str_to_int64(PQgetvalue(res, i, 3), &q->epoch);
                str_to_int(PQgetvalue(res, i, 4), &q->attempt);
                str_copy(q->status_before, sizeof(q->status_before), PQgetvalue(res, i, 5));
                (*n)++;
                if (!turn)
                        continue;
                if (!PQgetisnull(res, i, 6))
                        q->snapshot = pgjson_loads(PQgetvalue(res, i, 6), 0, NULL);
                else if (!PQgetisnull(res, i, 9))
                        q->snapshot =
                            bare_snapshot(q->id, PQgetvalue(res, i, 9), PQgetvalue(res, i, 10));
                else
                        continue;
                if (!q->snapshot) {
                        queue_claims_clear(out, *n);
                        *n = 0;
                        return -ENOMEM;
                }
                q->cancel_requested = PQgetvalue(res, i, 7)[0] == 't';
                q->pause_requested = PQgetvalue(res, i, 8)[0] == 't';
        }
        return 0;
}

int queue_claim_runs(PGconn *c, const char *worker, int64_t lease_ms, int max,
                     const struct queue_lease *held, int nheld, struct queue_claim *out, int *n)
{
        return claim_runs(c, NULL, worker, lease_ms, max, held, nheld, out, n);
}

int queue_begin_claim_runs(PGconn *c, const char *worker, int64_t lease_ms, int max,
                           const struct queue_lease *held, int nheld, struct queue_claim *out,
                           int *n)
{
        return claim_runs(c, "BEGIN", worker, lease_ms, max, held, nheld, out, n);
}

int queue_renew_leases(PGconn *c, const char *worker, const struct queue_lease *held, int n,
                       int64_t lease_ms, struct queue_renewal *out, int *nout)
{
        _cleanup_buf_ struct buf ids, epochs;
        char lease[48];
        const char *params[4];
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        buf_init(&ids, (size_t)n * 40 + 16);
        buf_init(&epochs, (size_t)n * 24 + 16);
        *nout = 0;
        if (n == 0)
                return 0;
        r = uuid_array(&ids, held, n);
        if (r == 0)
                r = buf_append_str(&epochs, "{");
        for (int i = 0; r == 0 && i < n; i++)
                r = buf_printf(&epochs, "%s%lld", i ? "," : "", (long long)held[i].epoch);
        if (r == 0)
                r = buf_append_str(&epochs, "}");
        if (r < 0)
                return r;
        snprintf(lease, sizeof(lease), "%lld milliseconds", (long long)lease_ms);
        params[0] = worker;
        params[1] = ids.data;
        params[2] = epochs.data;
        params[3] = lease;
        res = db_query(c,
                       "SELECT id, cancel_requested, pause_requested FROM "
                       "agently_renew_leases($1, $2::uuid[], $3::bigint[], $4::interval)",
                       4, params, &r);
        if (!res)
                return r;
        for (int i = 0; i < PQntuples(res) && i < n; i++) {
                str_copy(out[i].id, sizeof(out[i].id), PQgetvalue(res, i, 0));
                out[i].cancel_requested = PQgetvalue(res, i, 1)[0] == 't';
                out[i].pause_requested = PQgetvalue(res, i, 2)[0] == 't';
                (*nout)++;
        }
        return 0;
}

/*
 * The per-row writes are one-operation batches: the same statement, fencing and rules as a
 * worker's loop turn (agently_apply_write_rows), so there is one definition of what a write
 * does. 1 written, 0 lease lost (nothing written), a negative errno on failure.
 */
static void one_lost(void *arg, const char *run_id)
{
        (void)run_id;
        *(bool *)arg = true;
}

static int one_write(PGconn *c, const char *worker, struct queue_writes *b, int r)
{
        bool lost = false;

        if (r == 0)
                r = queue_writes_flush(c, worker ? worker : "", b, one_lost, &lost);
        queue_writes_free(b);
        return r < 0 ? r : lost ? 0 : 1;
}

int queue_checkpoint_node(PGconn *c, const char *run_id, int64_t epoch,
                          const struct queue_node_write *w)
{
        struct queue_writes *b = queue_writes_new();

        if (!b)
                return -ENOMEM;
        return one_write(c, w->worker, b, queue_writes_node(b, run_id, epoch, w));
}

int queue_append_event(PGconn *c, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data)
{
        struct queue_writes *b = queue_writes_new();

        if (!b)
                return -ENOMEM;
        return one_write(
            c, NULL, b,
            queue_writes_event(b, run_id, epoch, kind, node_id, attempt, level, message, data));
}

int queue_finish_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                     const json_t *output, const json_t *error)
{
        struct queue_writes *b = queue_writes_new();

        if (!b)
                return -ENOMEM;
        return one_write(c, NULL, b, queue_writes_finish(b, run_id, epoch, status, output, error));
}

int queue_release_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                      int64_t run_at_ms, const char *wait_reason)
{
        struct queue_writes *b = queue_writes_new();

        if (!b)
                return -ENOMEM;
        return one_write(
            c, NULL, b,
            queue_writes_release(b, run_id, epoch, status, run_at_ms, wait_reason, NULL, -1));
}

int64_t queue_db_now_ms(PGconn *c)
{
        int r = 0;
        int64_t v = 0;
        _cleanup_pgresult_ PGresult *res =
            db_query(c, "SELECT (extract(epoch FROM now()) * 1000)::bigint", 0, NULL, &r);

        if (!res)
                return r;
        if (str_to_int64(PQgetvalue(res, 0, 0), &v) < 0)
                return -EIO;
        return v;
}
