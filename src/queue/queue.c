/* C calls over the queue functions of migrations/0003_queue.sql; see queue.h. */
#include "queue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "db.h"
#include "strutil.h"

/* Serialises a JSON argument; *out stays NULL for NULL (SQL NULL). */
static int json_param(const json_t *v, char **out)
{
        *out = NULL;
        if (!v)
                return 0;
        *out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        return *out ? 0 : -ENOMEM;
}

/* Runs a fenced statement returning one bigint (seq) or NULL: 1, 0 (lease lost), < 0. */
static int fenced(PGconn *c, const char *sql, int nparams, const char *const *params)
{
        int r = 0;
        _cleanup_pgresult_ PGresult *res = db_query(c, sql, nparams, params, &r);

        if (!res)
                return r;
        if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
                return 0;
        return 1;
}

int queue_claim_runs(PGconn *c, const char *worker, int64_t lease_ms, int max,
                     struct queue_claim *out, int *n)
{
        char lease[48], maxs[16];
        const char *params[] = {worker, lease, maxs};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0, rows;

        *n = 0;
        if (max < 1 || max > QUEUE_MAX_CLAIM || lease_ms <= 0)
                return -EINVAL;
        snprintf(lease, sizeof(lease), "%lld milliseconds", (long long)lease_ms);
        snprintf(maxs, sizeof(maxs), "%d", max);
        res = db_query(c,
                       "SELECT id, user_id, workflow_id, lease_epoch, attempt, status_before "
                       "FROM agently_claim_runs($1, $2::interval, $3::integer)",
                       3, params, &r);
        if (!res)
                return r;
        rows = PQntuples(res);
        for (int i = 0; i < rows && i < max; i++) {
                struct queue_claim *q = &out[i];
                str_copy(q->id, sizeof(q->id), PQgetvalue(res, i, 0));
                str_copy(q->user_id, sizeof(q->user_id), PQgetvalue(res, i, 1));
                str_copy(q->workflow_id, sizeof(q->workflow_id), PQgetvalue(res, i, 2));
                str_to_int64(PQgetvalue(res, i, 3), &q->epoch);
                str_to_int(PQgetvalue(res, i, 4), &q->attempt);
                str_copy(q->status_before, sizeof(q->status_before), PQgetvalue(res, i, 5));
                (*n)++;
        }
        return 0;
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
        r = buf_append_str(&ids, "{");
        if (r == 0)
                r = buf_append_str(&epochs, "{");
        for (int i = 0; r == 0 && i < n; i++) {
                r = buf_printf(&ids, "%s%s", i ? "," : "", held[i].run_id);
                if (r == 0)
                        r = buf_printf(&epochs, "%s%lld", i ? "," : "", (long long)held[i].epoch);
        }
        if (r == 0)
                r = buf_append_str(&ids, "}");
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

int queue_checkpoint_node(PGconn *c, const char *run_id, int64_t epoch,
                          const struct queue_node_write *w)
{
        _cleanup_free_ char *input = NULL, *output = NULL, *error = NULL, *data = NULL;
        char epochs[24], attempt[16];
        int r;

        snprintf(epochs, sizeof(epochs), "%lld", (long long)epoch);
        snprintf(attempt, sizeof(attempt), "%d", w->attempt);
        if ((r = json_param(w->input, &input)) < 0 || (r = json_param(w->output, &output)) < 0 ||
            (r = json_param(w->error, &error)) < 0 || (r = json_param(w->event_data, &data)) < 0)
                return r;
        const char *params[] = {
            run_id, epochs,    w->node_id,         attempt,       w->status,        input, output,
            error,  w->worker, w->idempotency_key, w->event_kind, w->event_message, data};
        return fenced(c,
                      "SELECT agently_checkpoint_node($1::uuid, $2::bigint, $3, $4::integer, $5, "
                      "$6::jsonb, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13::jsonb, NULL)",
                      13, params);
}

int queue_append_event(PGconn *c, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data)
{
        _cleanup_free_ char *datas = NULL;
        char epochs[24], attempts[16];
        int r;

        snprintf(epochs, sizeof(epochs), "%lld", (long long)epoch);
        snprintf(attempts, sizeof(attempts), "%d", attempt);
        if ((r = json_param(data, &datas)) < 0)
                return r;
        const char *params[] = {run_id, epochs,  kind, node_id, attempt >= 0 ? attempts : NULL,
                                level,  message, datas};
        return fenced(c,
                      "SELECT agently_append_event($1::uuid, $2::bigint, $3, $4, $5::integer, "
                      "$6, $7, $8::jsonb)",
                      8, params);
}

int queue_finish_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                     const json_t *output, const json_t *error)
{
        _cleanup_free_ char *outs = NULL, *errs = NULL;
        char epochs[24];
        int r;

        snprintf(epochs, sizeof(epochs), "%lld", (long long)epoch);
        if ((r = json_param(output, &outs)) < 0 || (r = json_param(error, &errs)) < 0)
                return r;
        const char *params[] = {run_id, epochs, status, outs, errs};
        return fenced(c,
                      "SELECT agently_finish_run($1::uuid, $2::bigint, $3, $4::jsonb, $5::jsonb)",
                      5, params);
}

int queue_release_run(PGconn *c, const char *run_id, int64_t epoch, const char *status,
                      int64_t run_at_ms, const char *wait_reason)
{
        char epochs[24], at[24];

        snprintf(epochs, sizeof(epochs), "%lld", (long long)epoch);
        snprintf(at, sizeof(at), "%lld", (long long)run_at_ms);
        const char *params[] = {run_id, epochs, status, run_at_ms >= 0 ? at : NULL, wait_reason};
        return fenced(c,
                      "SELECT agently_release_run($1::uuid, $2::bigint, $3, "
                      "to_timestamp($4::bigint / 1000.0), $5, NULL)",
                      5, params);
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
