/* The batched writes of one worker loop turn; see queue.h and 0011_run_queue.sql. */
#include "queue.h"

#include <errno.h>
#include <stdlib.h>

#include "cleanup.h"
#include "db.h"
#include "redact.h"
#include "strutil.h"

static const char APPLY_WRITES_SQL[] =
    "SELECT lost_run_id FROM agently_apply_writes($1, $2::jsonb)";

struct queue_writes {
        json_t *ops;  /* the JSON array agently_apply_writes() takes */
        json_t *keys; /* "run node attempt" of every node write, for -EBUSY */
};

struct queue_writes *queue_writes_new(void)
{
        struct queue_writes *b = calloc(1, sizeof(*b));

        if (!b)
                return NULL;
        b->ops = json_array();
        b->keys = json_object();
        if (!b->ops || !b->keys) {
                queue_writes_free(b);
                return NULL;
        }
        return b;
}

void queue_writes_free(struct queue_writes *b)
{
        if (!b)
                return;
        json_decref(b->ops);
        json_decref(b->keys);
        free(b);
}

int queue_writes_count(const struct queue_writes *b)
{
        return (int)json_array_size(b->ops);
}

void queue_writes_clear(struct queue_writes *b)
{
        json_array_clear(b->ops);
        json_object_clear(b->keys);
}

/* Appends op (stolen) after giving it its position, the run and the epoch. */
static int append(struct queue_writes *b, json_t *op, const char *run_id, int64_t epoch)
{
        if (!op)
                return -ENOMEM;
        if (json_object_set_new(op, "i", json_integer((json_int_t)json_array_size(b->ops))) < 0 ||
            json_object_set_new(op, "run", json_string(run_id)) < 0 ||
            json_object_set_new(op, "epoch", json_integer(epoch)) < 0 ||
            json_array_append_new(b->ops, op) < 0) {
                json_decref(op);
                return -ENOMEM;
        }
        return 0;
}

int queue_writes_node(struct queue_writes *b, const char *run_id, int64_t epoch,
                      const struct queue_node_write *w)
{
        _cleanup_free_ char *key = str_printf("%s %s %d", run_id, w->node_id, w->attempt);

        if (!key)
                return -ENOMEM;
        if (json_object_get(b->keys, key))
                return -EBUSY;
        if (json_object_set_new(b->keys, key, json_true()) < 0)
                return -ENOMEM;
        return append(b,
                      json_pack("{s:s, s:s, s:i, s:s, s:O?, s:O?, s:O?, s:s?, s:s?, s:s?, s:O?}",
                                "op", "node", "node", w->node_id, "attempt", w->attempt, "status",
                                w->status, "input", w->input, "output", w->output, "error",
                                w->error, "key", w->idempotency_key, "kind", w->event_kind,
                                "message", w->event_message, "data", w->event_data),
                      run_id, epoch);
}

int queue_writes_event(struct queue_writes *b, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data)
{
        json_t *op = json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:O?}", "op", "event", "kind", kind,
                               "node", node_id, "level", level, "message", message, "data", data);

        if (op && attempt >= 0 && json_object_set_new(op, "attempt", json_integer(attempt)) < 0) {
                json_decref(op);
                return -ENOMEM;
        }
        return append(b, op, run_id, epoch);
}

int queue_writes_finish(struct queue_writes *b, const char *run_id, int64_t epoch,
                        const char *status, const json_t *output, const json_t *error)
{
        return append(b,
                      json_pack("{s:s, s:s, s:O?, s:O?}", "op", "finish", "status", status,
                                "output", output, "error", error),
                      run_id, epoch);
}

int queue_writes_release(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *status, int64_t run_at_ms, const char *wait_reason,
                         const json_t *error, int64_t deadline_ms)
{
        json_t *op = json_pack("{s:s, s:s, s:s?, s:O?}", "op", "release", "status", status,
                               "message", wait_reason, "error", error);

        if (op && ((run_at_ms >= 0 &&
                    json_object_set_new(op, "run_at_ms", json_integer(run_at_ms)) < 0) ||
                   (deadline_ms >= 0 &&
                    json_object_set_new(op, "deadline_ms", json_integer(deadline_ms)) < 0))) {
                json_decref(op);
                return -ENOMEM;
        }
        return append(b, op, run_id, epoch);
}

int queue_writes_consume(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *signal_id, const char *node_id)
{
        return append(
            b, json_pack("{s:s, s:s, s:s}", "op", "consume", "signal", signal_id, "node", node_id),
            run_id, epoch);
}

static int flush(PGconn *c, const char *worker, struct queue_writes *b,
                 void (*lost)(void *arg, const char *run_id), void *arg, const char *after)
{
        _cleanup_free_ char *writes = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        if (json_array_size(b->ops) == 0)
                return after ? db_exec(c, after) : 0;
        /* everything a worker stores (node inputs and outputs, errors, events) leaves in this
         * one statement: it passes the redaction choke point here (src/base/redact.h), on
         * every string and key — not on the JSON text, where masking could cut through its
         * syntax — so a value inside a JSON text inside a string is found too */
        if (redact_json(b->ops) < 0) {
                queue_writes_clear(b);
                return -ENOMEM;
        }
        writes = json_dumps(b->ops, JSON_COMPACT);
        queue_writes_clear(b);
        if (!writes)
                return -ENOMEM;
        const char *params[] = {worker, writes};
        /* prepared once per connection, as the claim (queue.c) */
        res = db_query_prepared_between(c, NULL, APPLY_WRITES_SQL, 2, params, after, &r);
        if (!res)
                return r;
        for (int i = 0; i < PQntuples(res); i++)
                lost(arg, PQgetvalue(res, i, 0));
        return 0;
}

int queue_writes_flush(PGconn *c, const char *worker, struct queue_writes *b,
                       void (*lost)(void *arg, const char *run_id), void *arg)
{
        return flush(c, worker, b, lost, arg, NULL);
}

int queue_writes_flush_commit(PGconn *c, const char *worker, struct queue_writes *b,
                              void (*lost)(void *arg, const char *run_id), void *arg)
{
        return flush(c, worker, b, lost, arg, "COMMIT");
}
