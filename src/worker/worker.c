/*
 * The worker's event loop. One thread owns every claimed run (a small state machine each),
 * one database connection for claims, snapshots and checkpoints, and the libcurl multi
 * handle all HTTP effects share; a heartbeat thread owns a second connection that renews
 * every held lease in one statement per interval and LISTENs for wake-up hints. The two
 * meet in a mutex-protected mailbox. Every write for a run is fenced on its lease epoch
 * (src/queue); a run whose lease is lost is dropped at once, its effects aborted, nothing
 * more written. See src/worker/README.md.
 */
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "db.h"
#include "engine.h"
#include "log.h"
#include "queue.h"
#include "runtime_http.h"
#include "strutil.h"

#define CLAIM_BATCH_MAX 64
#define WF_CACHE_MAX    256
#define PLAN_ROUNDS_MAX 256 /* plan/apply rounds per run per loop turn (fairness) */
#define DB_RETRY_MS     1000

struct run;

/* One effect in flight: an HTTP request for one node attempt. */
struct effect {
        struct effect *next;
        struct run *run;
        char *node;
        int attempt;
        struct runtime_http_transfer *transfer;
};

struct run {
        struct run *prev, *next;
        char id[QUEUE_UUID_LEN + 1];
        char user_id[QUEUE_UUID_LEN + 1];
        char workflow_id[QUEUE_UUID_LEN + 1];
        int64_t epoch;
        const struct wf_workflow *wf;
        struct effect *effects;
        bool needs_plan;
        int64_t plan_at;        /* monotonic ms: re-plan then (0 = not scheduled) */
        int64_t lease_deadline; /* monotonic ms: our lease surely ends by then */
};

struct wf_cache_entry {
        char id[QUEUE_UUID_LEN + 1];
        struct wf_workflow *wf;
};

/* What the heartbeat thread learned about one run. */
struct mail {
        char id[QUEUE_UUID_LEN + 1];
        int64_t epoch;
        bool lost, cancel, pause;
        int64_t renewed_at; /* monotonic ms when the renewal statement was sent */
};

struct worker {
        const struct worker_config *cfg;
        PGconn *db;
        struct runtime_http *http;
        struct run *runs;
        int nruns;
        struct wf_cache_entry cache[WF_CACHE_MAX];
        int ncache;
        bool draining;
        int64_t drain_deadline;
        int64_t next_claim;
        struct ready_run {
                char run_id[QUEUE_UUID_LEN + 1];
                int64_t epoch;
        } * ready;

        /* shared with the heartbeat thread, under lock */
        pthread_mutex_t lock;
        struct queue_lease *held; /* what to renew (ids point into held_ids) */
        char (*held_ids)[QUEUE_UUID_LEN + 1];
        int nheld;
        bool held_dirty;
        struct mail *mail;
        int nmail, mail_cap;
        bool claim_hint;
        bool stop;
};

static int64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t random64(void)
{
        return ((uint64_t)random() << 33) ^ ((uint64_t)random() << 11) ^ (uint64_t)random();
}

/* ---- held set, shared with the heartbeat ------------------------------------------- */

/* Rebuilds the list the heartbeat renews; called whenever runs are added or removed. */
static void held_publish(struct worker *w)
{
        int i = 0;

        pthread_mutex_lock(&w->lock);
        for (struct run *r = w->runs; r && i < w->cfg->concurrency; r = r->next, i++) {
                str_copy(w->held_ids[i], sizeof(w->held_ids[i]), r->id);
                w->held[i].run_id = w->held_ids[i];
                w->held[i].epoch = r->epoch;
        }
        w->nheld = i;
        pthread_mutex_unlock(&w->lock);
}

static struct run *run_find(struct worker *w, const char *id, int64_t epoch)
{
        for (struct run *r = w->runs; r; r = r->next)
                if (r->epoch == epoch && strcmp(r->id, id) == 0)
                        return r;
        return NULL;
}

static void effects_abort(struct worker *w, struct run *r)
{
        while (r->effects) {
                struct effect *e = r->effects;
                r->effects = e->next;
                runtime_http_abort(w->http, e->transfer);
                free(e->node);
                free(e);
        }
}

/* Forgets a run: aborts its effects and stops renewing its lease. Nothing is written. */
static void run_drop(struct worker *w, struct run *r)
{
        effects_abort(w, r);
        if (r->prev)
                r->prev->next = r->next;
        else
                w->runs = r->next;
        if (r->next)
                r->next->prev = r->prev;
        w->nruns--;
        free(r);
        held_publish(w);
}

static void run_lost(struct worker *w, struct run *r, const char *where)
{
        /* log only: we may not write to a run we no longer hold */
        log_warn("lease.lost run %s epoch %lld (%s): stopping it, another worker owns it now",
                 r->id, (long long)r->epoch, where);
        run_drop(w, r);
}

/* A database failure in the middle of a step: the outcome of the last write is unknown, so
 * the run is abandoned (its lease stops being renewed) and recovered from its checkpoint
 * after the lease expires, by any worker. */
static void run_abandon(struct worker *w, struct run *r, int err, const char *what)
{
        log_error("could not %s for run %s: %s (%s); leaving it to lease expiry", what, r->id,
                  db_last_error(), strerror(-err));
        run_drop(w, r);
        if (PQstatus(w->db) != CONNECTION_OK)
                PQreset(w->db);
}

/* ---- workflow definitions ---------------------------------------------------------- */

/* Definitions are immutable per id (a change is a new version row), so the cache never
 * needs invalidation; it is bounded and evicts the oldest entry. */
static int wf_lookup(struct worker *w, const char *workflow_id, const struct wf_workflow **out,
                     json_t **errors)
{
        const char *params[] = {workflow_id};
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_json_ json_t *def = NULL;
        struct wf_workflow *wf = NULL;
        int r = 0;

        *errors = NULL;
        for (int i = 0; i < w->ncache; i++)
                if (strcmp(w->cache[i].id, workflow_id) == 0) {
                        *out = w->cache[i].wf;
                        return 0;
                }
        res = db_query(w->db, "SELECT definition FROM workflows WHERE id = $1", 1, params, &r);
        if (!res)
                return r;
        if (PQntuples(res) != 1)
                return -ENOENT;
        def = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
        if (!def)
                return -EINVAL;
        r = wf_parse(def, &wf, errors);
        if (r < 0)
                return r;
        if (w->ncache == WF_CACHE_MAX) {
                /* runs in flight may still point at the evicted entry: only evict one no
                 * held run uses */
                int victim = -1;
                for (int i = 0; i < w->ncache && victim < 0; i++) {
                        bool used = false;
                        for (struct run *x = w->runs; x && !used; x = x->next)
                                used = x->wf == w->cache[i].wf;
                        if (!used)
                                victim = i;
                }
                if (victim < 0) {
                        *out = wf; /* leaks one parse per overflow; bounded by concurrency */
                        return 0;
                }
                wf_free(w->cache[victim].wf);
                w->cache[victim] = w->cache[--w->ncache];
        }
        str_copy(w->cache[w->ncache].id, sizeof(w->cache[0].id), workflow_id);
        w->cache[w->ncache++].wf = wf;
        *out = wf;
        return 0;
}

/* ---- snapshot ---------------------------------------------------------------------- */

static const char SNAPSHOT_SQL[] =
    "SELECT jsonb_build_object("
    " 'run_id', r.id, 'input', r.input,"
    " 'now_ms', (extract(epoch FROM now()) * 1000)::bigint,"
    " 'started_at_ms', (extract(epoch FROM coalesce(r.started_at, now())) * 1000)::bigint,"
    " 'engine_state', r.engine_state,"
    " 'nodes', coalesce((SELECT jsonb_object_agg(n.node_id,"
    "     jsonb_build_object('status', n.status, 'attempt', n.attempt,"
    "                        'output', n.output, 'error', n.error,"
    "                        'started_at_ms',"
    "                        (extract(epoch FROM n.started_at) * 1000)::bigint)"
    "     || CASE WHEN n.status = 'waiting' AND n.input ? 'wake_at_ms'"
    "             THEN jsonb_build_object('wake_at_ms', n.input -> 'wake_at_ms')"
    "             ELSE '{}' END"
    "     || CASE WHEN jsonb_typeof(n.error) = 'object' AND n.error ? 'retry_at_ms'"
    "             THEN jsonb_build_object('retry_at_ms', n.error -> 'retry_at_ms')"
    "             ELSE '{}' END)"
    "   FROM (SELECT DISTINCT ON (node_id) * FROM node_runs"
    "         WHERE workflow_run_id = r.id ORDER BY node_id, attempt DESC) n), '{}'),"
    " 'signals', coalesce((SELECT jsonb_object_agg(s.name, s.list) FROM"
    "   (SELECT name, jsonb_agg(jsonb_build_object('id', id, 'payload', payload)"
    "                           ORDER BY created_at, id) AS list"
    "    FROM signals WHERE workflow_run_id = r.id AND consumed_at IS NULL"
    "    GROUP BY name) s), '{}'),"
    " 'children', coalesce((SELECT jsonb_object_agg(c.parent_node_id,"
    "     jsonb_build_object('run_id', c.id, 'status', c.status, 'output', c.output,"
    "                        'error', c.error, 'attempt',"
    "                        (regexp_match(c.idempotency_key, ':([0-9]+)$'))[1]::integer))"
    "   FROM (SELECT DISTINCT ON (parent_node_id) * FROM workflow_runs"
    "         WHERE parent_run_id = r.id AND parent_node_id IS NOT NULL"
    "         ORDER BY parent_node_id, created_at DESC) c), '{}')"
    "), r.cancel_requested, r.pause_requested"
    " FROM workflow_runs r"
    " WHERE r.id = $1 AND r.lease_epoch = $2 AND r.status = 'running'";

/* Loads the run's snapshot. 1 loaded, 0 lease lost, negative errno. */
static int snapshot_load(struct worker *w, struct run *run, json_t **snapshot, bool *cancel,
                         bool *pause)
{
        char epoch[24];
        const char *params[] = {run->id, epoch};
        _cleanup_pgresult_ PGresult *res = NULL;
        json_t *s, *inflight;
        int r = 0;

        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        res = db_query(w->db, SNAPSHOT_SQL, 2, params, &r);
        if (!res)
                return r;
        if (PQntuples(res) != 1)
                return 0;
        s = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
        if (!s)
                return -EIO;
        inflight = json_array();
        for (struct effect *e = run->effects; e; e = e->next)
                json_array_append_new(inflight, json_string(e->node));
        json_object_set_new(s, "in_flight", inflight);
        *cancel = PQgetvalue(res, 0, 1)[0] == 't';
        *pause = PQgetvalue(res, 0, 2)[0] == 't';
        *snapshot = s;
        return 1;
}

/* ---- transactions ------------------------------------------------------------------ */

static int tx_begin(struct worker *w)
{
        return db_begin(w->db);
}

/* Ends a transaction: commit when ok > 0, otherwise roll back. Returns ok, or the commit's
 * negative errno. */
static int tx_end(struct worker *w, int ok)
{
        if (ok > 0) {
                int r = db_commit(w->db);
                return r < 0 ? r : ok;
        }
        db_rollback(w->db);
        return ok;
}

/* ---- applying actions -------------------------------------------------------------- */

static const char *jstr(const json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

static int jint(const json_t *o, const char *key, int def)
{
        const json_t *v = json_object_get(o, key);
        return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static int checkpoint(struct worker *w, struct run *run, const char *node, int attempt,
                      const char *status, const json_t *input, const json_t *output,
                      const json_t *error, const char *key, const char *event_kind,
                      const json_t *event_data)
{
        struct queue_node_write nw = {
            .node_id = node,
            .attempt = attempt < 1 ? 1 : attempt,
            .status = status,
            .input = input,
            .output = output,
            .error = error,
            .worker = w->cfg->id,
            .idempotency_key = key,
            .event_kind = event_kind,
            .event_data = event_data,
        };
        return queue_checkpoint_node(w->db, run->id, run->epoch, &nw);
}

/* The attempt a complete/skip action records: the latest recorded one, else 1. */
static int snapshot_attempt(const json_t *snapshot, const char *node)
{
        return jint(json_object_get(json_object_get(snapshot, "nodes"), node), "attempt", 1);
}

static int apply_complete_or_skip(struct worker *w, struct run *run, const json_t *snapshot,
                                  const json_t *a)
{
        const char *node = jstr(a, "node");
        const char *signal_id = jstr(a, "signal_id");
        bool skip = strcmp(jstr(a, "action"), "skip") == 0;
        int attempt = snapshot_attempt(snapshot, node);
        _cleanup_json_ json_t *reason = NULL;
        int r;

        if (skip)
                reason = json_pack("{s:s?}", "reason", jstr(a, "reason"));
        r = checkpoint(w, run, node, attempt, skip ? "skipped" : "completed", NULL,
                       skip ? NULL : json_object_get(a, "output"), NULL, NULL, NULL, reason);
        if (r > 0 && signal_id) {
                /* consumed in the same transaction as the node's checkpoint: the signal is
                 * either consumed and recorded, or neither */
                const char *params[] = {signal_id, node, run->id};
                _cleanup_pgresult_ PGresult *res =
                    db_query(w->db,
                             "UPDATE signals SET consumed_at = now(), consumed_by_node = $2 "
                             "WHERE id = $1 AND workflow_run_id = $3 AND consumed_at IS NULL",
                             3, params, &r);
                if (res)
                        r = 1;
        }
        return r;
}

/* Records a failed attempt and what the node's policy decided. 1, 0 lost, negative errno.
 * Opens its own transaction unless in_tx. */
static int apply_failure(struct worker *w, struct run *run, const char *node, int attempt,
                         const json_t *error)
{
        _cleanup_json_ json_t *decision = NULL, *recorded = NULL, *data = NULL;
        int64_t now = queue_db_now_ms(w->db);
        const char *final;
        int r;

        if (now < 0)
                return (int)now;
        r = wf_on_node_failure(run->wf, node, attempt, error, now, random64(), &decision);
        if (r < 0) {
                decision = json_pack("{s:s}", "final", "fail");
                if (!decision)
                        return -ENOMEM;
        }
        recorded = json_deep_copy(json_is_object(error) ? error : json_object());
        if (!recorded)
                return -ENOMEM;
        final = jstr(decision, "final");
        if (final)
                json_object_set_new(recorded, "final", json_string(final));
        else
                json_object_set(recorded, "retry_at_ms", json_object_get(decision, "retry_at_ms"));

        if ((r = tx_begin(w)) < 0)
                return r;
        r = checkpoint(w, run, node, attempt,
                       strcmp(jstr(error, "class") ? jstr(error, "class") : "", "interrupted") == 0
                           ? "interrupted"
                           : "failed",
                       NULL, NULL, recorded, NULL, "node.failed", NULL);
        if (r > 0 && !final) {
                data = json_pack("{s:O, s:O, s:O}", "retry_at_ms",
                                 json_object_get(decision, "retry_at_ms"), "next_attempt",
                                 json_object_get(decision, "attempt"), "delay_ms",
                                 json_object_get(decision, "delay_ms"));
                r = queue_append_event(w->db, run->id, run->epoch, "node.retry_scheduled", node,
                                       attempt, "warn", NULL, data);
        }
        return tx_end(w, r);
}

static int start_effect(struct worker *w, struct run *run, const json_t *a)
{
        const char *node = jstr(a, "node");
        const char *kind = jstr(a, "kind");
        const char *key = jstr(a, "idempotency_key");
        const json_t *input = json_object_get(a, "input");
        int attempt = jint(a, "attempt", 1);
        json_int_t timeout = json_integer_value(json_object_get(a, "timeout_ms"));
        _cleanup_free_ char *why = NULL;
        struct effect *e;
        int r;

        for (e = run->effects; e; e = e->next)
                if (strcmp(e->node, node) == 0)
                        return 1; /* already running here */

        if (!kind || strcmp(kind, "http") != 0) {
                _cleanup_json_ json_t *err =
                    json_pack("{s:s, s:s++}", "class", "error", "message", "node kind ",
                              kind ? kind : "(none)", " is not supported by this worker");
                return apply_failure(w, run, node, attempt, err);
        }
        /* the START mark: committed before anything leaves, so after a crash an
         * at_most_once node is found started-but-unfinished and not sent again */
        r = checkpoint(w, run, node, attempt, "started", input, NULL, NULL, key, NULL, NULL);
        if (r <= 0)
                return r;

        e = calloc(1, sizeof(*e));
        if (!e || !(e->node = strdup(node))) {
                free(e);
                return -ENOMEM;
        }
        e->run = run;
        e->attempt = attempt;
        r = runtime_http_start(w->http, input, key, timeout, e, &e->transfer, &why);
        if (r < 0) {
                _cleanup_json_ json_t *err = json_pack("{s:s, s:s}", "class", "error", "message",
                                                       why ? why : "could not start request");
                free(e->node);
                free(e);
                return apply_failure(w, run, node, attempt, err);
        }
        e->next = run->effects;
        run->effects = e;
        return 1;
}

/* Creates the child run idempotently and records the node waiting, in one transaction. */
static int apply_start_child(struct worker *w, struct run *run, const json_t *a)
{
        const char *node = jstr(a, "node");
        int attempt = jint(a, "attempt", 1);
        const json_t *input = json_object_get(a, "input");
        const json_t *version = json_object_get(a, "version");
        _cleanup_free_ char *key = str_printf("child:%s", jstr(a, "idempotency_key"));
        _cleanup_free_ char *inputs = NULL;
        char epoch[24], ver[24];
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        if (!key)
                return -ENOMEM;
        if (input && !json_is_object(input)) {
                _cleanup_json_ json_t *err = json_pack("{s:s, s:s}", "class", "error", "message",
                                                       "subworkflow input must be an object");
                return apply_failure(w, run, node, attempt, err);
        }
        inputs = json_dumps(input ? input : json_object(), JSON_COMPACT);
        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        snprintf(ver, sizeof(ver), "%lld", (long long)json_integer_value(version));
        const char *params[] = {
            run->id, epoch, jstr(a, "workflow"), json_is_integer(version) ? ver : NULL, inputs,
            node,    key};

        if ((r = tx_begin(w)) < 0)
                return r;
        r = checkpoint(w, run, node, attempt, "waiting", NULL, NULL, NULL, key, "node.waiting",
                       NULL);
        if (r > 0) {
                res = db_query(
                    w->db,
                    "WITH ins AS ("
                    " INSERT INTO workflow_runs (user_id, workflow_id, workflow_name,"
                    "  workflow_version, input, parent_run_id, parent_node_id,"
                    "  idempotency_key, budgets)"
                    " SELECT p.user_id, wf.id, wf.name, wf.version, $5::jsonb, p.id, $6, $7,"
                    "  p.budgets"
                    " FROM workflow_runs p"
                    " CROSS JOIN LATERAL (SELECT * FROM workflows x"
                    "   WHERE x.user_id = p.user_id AND x.name = $3"
                    "     AND ($4::integer IS NULL OR x.version = $4::integer)"
                    "   ORDER BY x.version DESC LIMIT 1) wf"
                    " WHERE p.id = $1 AND p.lease_epoch = $2::bigint"
                    " ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id)"
                    " SELECT id FROM ins UNION ALL"
                    " SELECT c.id FROM workflow_runs c JOIN workflow_runs p ON p.id = $1"
                    "  WHERE c.user_id = p.user_id AND c.idempotency_key = $7",
                    7, params, &r);
                if (res && PQntuples(res) == 0) {
                        tx_end(w, 0);
                        _cleanup_json_ json_t *err = json_pack(
                            "{s:s, s:s++}", "class", "error", "message",
                            "subworkflow not found: ", jstr(a, "workflow") ?: "(none)", "");
                        return apply_failure(w, run, node, attempt, err);
                }
                if (res)
                        r = 1;
        }
        return tx_end(w, r);
}

/* Cancel: stop what runs, record it, finish the run canceled. */
static void run_cancel(struct worker *w, struct run *run)
{
        _cleanup_json_ json_t *err =
            json_pack("{s:s, s:s}", "class", "canceled", "message", "canceled by request");
        int r = tx_begin(w);

        if (r == 0)
                r = 1;
        for (struct effect *e = run->effects; r > 0 && e; e = e->next)
                r = checkpoint(w, run, e->node, e->attempt, "canceled", NULL, NULL, err, NULL, NULL,
                               NULL);
        effects_abort(w, run);
        if (r > 0)
                r = queue_finish_run(w->db, run->id, run->epoch, "canceled", NULL, err);
        r = tx_end(w, r);
        if (r == 0)
                run_lost(w, run, "cancel");
        else if (r < 0)
                run_abandon(w, run, r, "cancel");
        else {
                log_info("run %s canceled", run->id);
                run_drop(w, run);
        }
}

/* Pause: abort effects at once (they run again on resume) and release the run paused. */
static void run_pause(struct worker *w, struct run *run)
{
        int r;

        effects_abort(w, run);
        r = queue_release_run(w->db, run->id, run->epoch, "paused", -1, "paused by request");
        if (r == 0)
                run_lost(w, run, "pause");
        else if (r < 0)
                run_abandon(w, run, r, "pause");
        else {
                log_info("run %s paused", run->id);
                run_drop(w, run);
        }
}

/* Lets go of a run (a wait, or a drain): it holds nothing while it waits. */
static void run_release(struct worker *w, struct run *run, const char *status, int64_t at_ms,
                        const char *reason)
{
        int r = queue_release_run(w->db, run->id, run->epoch, status, at_ms, reason);

        if (r == 0)
                run_lost(w, run, "release");
        else if (r < 0)
                run_abandon(w, run, r, "release");
        else
                run_drop(w, run);
}

/* on_failure escalate: the error goes on the run, an event says why, and the run waits in
 * needs_input for a person; one transaction. 1, 0 lost, negative errno. */
static int escalate(struct worker *w, struct run *run, const char *node, const json_t *error)
{
        _cleanup_free_ char *reason = str_printf(
            "node %s failed: a person must retry, skip or stop the run", node ? node : "?");
        _cleanup_json_ json_t *data = json_pack("{s:s?, s:O?}", "node", node, "error", error);
        _cleanup_free_ char *errs = error ? json_dumps(error, JSON_COMPACT) : NULL;
        char epoch[24];
        const char *params[] = {run->id, epoch, errs};
        int r = tx_begin(w);

        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        if (r < 0)
                return r;
        r = queue_append_event(w->db, run->id, run->epoch, "run.escalated", node, -1, "warn",
                               reason, data);
        if (r > 0) {
                _cleanup_pgresult_ PGresult *res =
                    db_query(w->db,
                             "UPDATE workflow_runs SET error = $3::jsonb WHERE id = $1 "
                             "AND lease_epoch = $2::bigint AND status = 'running'",
                             3, params, &r);
                if (res)
                        r = strcmp(PQcmdTuples(res), "1") == 0 ? 1 : 0;
        }
        if (r > 0)
                r = queue_release_run(w->db, run->id, run->epoch, "needs_input", -1, reason);
        return tx_end(w, r);
}

/* The result of one step: keep planning, stop here for now, or the run left this worker. */
enum step { STEP_AGAIN, STEP_IDLE, STEP_GONE };

static enum step fail_step(struct worker *w, struct run *run, int r, const char *what)
{
        if (r == 0)
                run_lost(w, run, what);
        else
                run_abandon(w, run, r, what);
        return STEP_GONE;
}

/* One plan/apply round. */
static enum step run_step(struct worker *w, struct run *run)
{
        _cleanup_json_ json_t *snapshot = NULL, *actions = NULL;
        bool cancel = false, pause = false, progress = false;
        size_t i;
        json_t *a;
        int r;

        r = snapshot_load(w, run, &snapshot, &cancel, &pause);
        if (r <= 0)
                return fail_step(w, run, r, "load snapshot");
        if (cancel) {
                run_cancel(w, run);
                return STEP_GONE;
        }
        if (pause) {
                run_pause(w, run);
                return STEP_GONE;
        }
        r = wf_plan(run->wf, snapshot, &actions);
        if (r < 0) {
                _cleanup_json_ json_t *err =
                    json_pack("{s:s, s:s}", "class", "error", "message", "could not plan the run");
                r = queue_finish_run(w->db, run->id, run->epoch, "failed", NULL, err);
                if (r <= 0)
                        return fail_step(w, run, r, "fail run");
                run_drop(w, run);
                return STEP_GONE;
        }

        /* Completions and skips of one plan share one commit. */
        if ((r = tx_begin(w)) < 0)
                return fail_step(w, run, r, "begin");
        json_array_foreach (actions, i, a) {
                const char *act = jstr(a, "action");
                if (!act)
                        continue;
                if (strcmp(act, "complete") == 0 || strcmp(act, "skip") == 0) {
                        r = apply_complete_or_skip(w, run, snapshot, a);
                        if (r <= 0) {
                                tx_end(w, 0);
                                return fail_step(w, run, r, "checkpoint");
                        }
                        progress = true;
                }
        }
        r = tx_end(w, 1);
        if (r <= 0)
                return fail_step(w, run, r, "commit");

        json_array_foreach (actions, i, a) {
                const char *act = jstr(a, "action");
                const char *node = jstr(a, "node");
                if (!act || strcmp(act, "complete") == 0 || strcmp(act, "skip") == 0)
                        continue;
                if (strcmp(act, "execute") == 0) {
                        if (w->draining) {
                                run_release(w, run, "queued", -1, "worker draining");
                                return STEP_GONE;
                        }
                        if (mono_ms() >= run->lease_deadline) {
                                /* not sure we still hold it (e.g. we were stopped): no new
                                 * effect until the heartbeat confirms */
                                run->needs_plan = true;
                                return STEP_IDLE;
                        }
                        r = start_effect(w, run, a);
                        progress = true;
                } else if (strcmp(act, "fail_node") == 0) {
                        r = apply_failure(w, run, node, jint(a, "attempt", 1),
                                          json_object_get(a, "error"));
                        progress = true;
                } else if (strcmp(act, "sleep") == 0 || strcmp(act, "wait_signal") == 0) {
                        const json_t *cur =
                            json_object_get(json_object_get(snapshot, "nodes"), node);
                        json_t *at = json_object_get(
                            a, strcmp(act, "sleep") == 0 ? "wake_at_ms" : "timeout_at_ms");
                        if (cur && strcmp(jstr(cur, "status") ?: "", "waiting") == 0 &&
                            json_equal(json_object_get(cur, "wake_at_ms"), at))
                                continue; /* already recorded */
                        _cleanup_json_ json_t *in = json_object();
                        if (json_is_integer(at))
                                json_object_set(in, "wake_at_ms", at);
                        if (jstr(a, "event"))
                                json_object_set(in, "event", json_object_get(a, "event"));
                        r = checkpoint(w, run, node, snapshot_attempt(snapshot, node), "waiting",
                                       in, NULL, NULL, NULL, "node.waiting", NULL);
                        progress = true;
                } else if (strcmp(act, "start_child") == 0) {
                        r = apply_start_child(w, run, a);
                        progress = true;
                } else if (strcmp(act, "finish") == 0) {
                        const char *status = jstr(a, "status");
                        if (run->effects)
                                effects_abort(w, run);
                        r = queue_finish_run(w->db, run->id, run->epoch, status ? status : "failed",
                                             json_object_get(a, "output"),
                                             json_object_get(a, "error"));
                        if (r <= 0)
                                return fail_step(w, run, r, "finish");
                        log_info("run %s %s", run->id, status ? status : "failed");
                        run_drop(w, run);
                        return STEP_GONE;
                } else if (strcmp(act, "needs_input") == 0) {
                        effects_abort(w, run);
                        r = escalate(w, run, node, json_object_get(a, "error"));
                        if (r <= 0)
                                return fail_step(w, run, r, "escalate");
                        run_drop(w, run);
                        return STEP_GONE;
                } else if (strcmp(act, "wait") == 0) {
                        const json_t *at = json_object_get(a, "wake_at_ms");
                        if (run->effects) {
                                int64_t now =
                                    json_integer_value(json_object_get(snapshot, "now_ms"));
                                run->plan_at = json_is_integer(at)
                                                   ? mono_ms() + (json_integer_value(at) - now)
                                                   : 0;
                                return STEP_IDLE;
                        }
                        run_release(w, run, "waiting",
                                    json_is_integer(at) ? json_integer_value(at) : -1,
                                    json_is_integer(at) ? "timer" : "event");
                        return STEP_GONE;
                } else {
                        log_warn("run %s: unknown planner action '%s' ignored", run->id, act);
                        continue;
                }
                if (r <= 0)
                        return fail_step(w, run, r, act);
        }
        if (progress)
                return STEP_AGAIN;
        /* a plan must end in finish, needs_input or wait; if it did not, look again later
         * rather than spin */
        log_warn("run %s: the plan made no progress; planning again in 1s", run->id);
        run->plan_at = mono_ms() + 1000;
        return STEP_IDLE;
}

static void run_advance(struct worker *w, struct run *run)
{
        run->needs_plan = false;
        run->plan_at = 0;
        for (int round = 0; round < PLAN_ROUNDS_MAX; round++) {
                enum step s = run_step(w, run);
                if (s == STEP_GONE || s == STEP_IDLE)
                        return;
        }
        run->needs_plan = true; /* fairness: continue on the next loop turn */
}

/* ---- effect completions ------------------------------------------------------------ */

static void effect_done(struct worker *w, struct effect *e, json_t *output, json_t *error)
{
        struct run *run = e->run;
        int r;

        /* unlink */
        for (struct effect **p = &run->effects; *p; p = &(*p)->next)
                if (*p == e) {
                        *p = e->next;
                        break;
                }
        if (output)
                r = checkpoint(w, run, e->node, e->attempt, "completed", NULL, output, NULL, NULL,
                               NULL, NULL);
        else
                r = apply_failure(w, run, e->node, e->attempt, error);
        free(e->node);
        free(e);
        if (r <= 0) {
                fail_step(w, run, r, "checkpoint effect");
                return;
        }
        run->needs_plan = true;
}

/* ---- claims ------------------------------------------------------------------------ */

static void claim(struct worker *w)
{
        struct queue_claim claims[CLAIM_BATCH_MAX];
        int want = w->cfg->concurrency - w->nruns, n = 0, r;
        int64_t sent = mono_ms();

        if (want <= 0)
                return;
        if (want > CLAIM_BATCH_MAX)
                want = CLAIM_BATCH_MAX;
        r = queue_claim_runs(w->db, w->cfg->id, w->cfg->lease_ms, want, claims, &n);
        if (r < 0) {
                log_error("could not claim runs: %s", db_last_error());
                if (PQstatus(w->db) != CONNECTION_OK)
                        PQreset(w->db);
                return;
        }
        for (int i = 0; i < n; i++) {
                struct run *run = calloc(1, sizeof(*run));
                const char *kind;
                _cleanup_json_ json_t *errors = NULL;

                if (!run) {
                        log_error("out of memory: run %s left to lease expiry", claims[i].id);
                        continue;
                }
                str_copy(run->id, sizeof(run->id), claims[i].id);
                str_copy(run->user_id, sizeof(run->user_id), claims[i].user_id);
                str_copy(run->workflow_id, sizeof(run->workflow_id), claims[i].workflow_id);
                run->epoch = claims[i].epoch;
                run->lease_deadline = sent + w->cfg->lease_ms;
                run->needs_plan = true;
                run->next = w->runs;
                if (w->runs)
                        w->runs->prev = run;
                w->runs = run;
                w->nruns++;

                kind = strcmp(claims[i].status_before, "queued") == 0    ? "run.started"
                       : strcmp(claims[i].status_before, "waiting") == 0 ? "run.resumed"
                                                                         : "run.recovered";
                _cleanup_json_ json_t *data =
                    json_pack("{s:s, s:i, s:s}", "worker", w->cfg->id, "claim", claims[i].attempt,
                              "from", claims[i].status_before);
                r = queue_append_event(w->db, run->id, run->epoch, kind, NULL, -1, "info", NULL,
                                       data);
                if (r <= 0) {
                        held_publish(w);
                        fail_step(w, run, r, "log claim");
                        continue;
                }
                r = wf_lookup(w, run->workflow_id, &run->wf, &errors);
                if (r < 0) {
                        _cleanup_json_ json_t *err = json_pack(
                            "{s:s, s:s, s:O?}", "class", "error", "message",
                            "the run's workflow definition cannot be loaded", "errors", errors);
                        held_publish(w);
                        r = queue_finish_run(w->db, run->id, run->epoch, "failed", NULL, err);
                        if (r <= 0)
                                fail_step(w, run, r, "fail run");
                        else
                                run_drop(w, run);
                        continue;
                }
        }
        if (n > 0)
                held_publish(w);
}

/* ---- heartbeat thread -------------------------------------------------------------- */

static void mail_post(struct worker *w, const struct mail *m)
{
        if (w->nmail == w->mail_cap) {
                int cap = w->mail_cap ? w->mail_cap * 2 : 64;
                struct mail *p = realloc(w->mail, (size_t)cap * sizeof(*p));
                if (!p)
                        return; /* the next beat reports it again */
                w->mail = p;
                w->mail_cap = cap;
        }
        w->mail[w->nmail++] = *m;
}

static void *heartbeat_main(void *arg)
{
        struct worker *w = arg;
        const struct worker_config *cfg = w->cfg;
        PGconn *c = NULL;
        int64_t next_beat = 0, reconnect_at = 0;
        struct queue_lease *held = calloc((size_t)cfg->concurrency, sizeof(*held));
        char(*ids)[QUEUE_UUID_LEN + 1] = calloc((size_t)cfg->concurrency, sizeof(*ids));
        struct queue_renewal *out = calloc((size_t)cfg->concurrency, sizeof(*out));

        if (!held || !ids || !out) {
                log_error("out of memory in the heartbeat thread");
                goto out;
        }
        for (;;) {
                struct pollfd pfd = {.fd = -1, .events = POLLIN};
                int64_t now = mono_ms(), wait;
                bool stop;

                pthread_mutex_lock(&w->lock);
                stop = w->stop;
                pthread_mutex_unlock(&w->lock);
                if (stop)
                        break;

                if (!c && now >= reconnect_at) {
                        if (db_connect(cfg->conninfo, &c) < 0 ||
                            db_exec(c, "LISTEN agently_runs") < 0) {
                                log_warn("heartbeat: could not connect: %s", db_last_error());
                                if (c)
                                        PQfinish(c);
                                c = NULL;
                                reconnect_at = now + 500;
                        }
                }

                if (c && now >= next_beat) {
                        int n, nout = 0, r;
                        int64_t sent = mono_ms();

                        pthread_mutex_lock(&w->lock);
                        n = w->nheld;
                        for (int i = 0; i < n; i++) {
                                str_copy(ids[i], sizeof(ids[i]), w->held[i].run_id);
                                held[i].run_id = ids[i];
                                held[i].epoch = w->held[i].epoch;
                        }
                        pthread_mutex_unlock(&w->lock);

                        r = queue_renew_leases(c, cfg->id, held, n, cfg->lease_ms, out, &nout);
                        if (r < 0) {
                                log_warn("heartbeat: could not renew %d leases: %s", n,
                                         db_last_error());
                                if (PQstatus(c) != CONNECTION_OK) {
                                        PQfinish(c);
                                        c = NULL;
                                }
                        } else if (n > 0) {
                                pthread_mutex_lock(&w->lock);
                                for (int i = 0; i < n; i++) {
                                        struct mail m = {.epoch = held[i].epoch,
                                                         .lost = true,
                                                         .renewed_at = sent};
                                        str_copy(m.id, sizeof(m.id), held[i].run_id);
                                        for (int j = 0; j < nout; j++)
                                                if (strcmp(out[j].id, m.id) == 0) {
                                                        m.lost = false;
                                                        m.cancel = out[j].cancel_requested;
                                                        m.pause = out[j].pause_requested;
                                                        break;
                                                }
                                        mail_post(w, &m);
                                }
                                pthread_mutex_unlock(&w->lock);
                                runtime_http_wakeup(w->http);
                        }
                        /* from now, not from the previous beat: a late beat is skipped,
                         * never queued up to fire twice */
                        next_beat = mono_ms() + cfg->heartbeat_ms;
                }

                if (c) {
                        pfd.fd = PQsocket(c);
                }
                now = mono_ms();
                wait = (c ? next_beat : reconnect_at) - now;
                if (wait > 200)
                        wait = 200; /* also how quickly a stop request is seen */
                if (wait < 0)
                        wait = 0;
                if (poll(&pfd, pfd.fd >= 0 ? 1 : 0, (int)wait) > 0 && c) {
                        PGnotify *nf;
                        bool hint = false;
                        if (!PQconsumeInput(c)) {
                                PQfinish(c);
                                c = NULL;
                                continue;
                        }
                        while ((nf = PQnotifies(c))) {
                                hint = true;
                                PQfreemem(nf);
                        }
                        if (hint) {
                                /* debounced: one flag, however many notifications */
                                pthread_mutex_lock(&w->lock);
                                w->claim_hint = true;
                                pthread_mutex_unlock(&w->lock);
                                runtime_http_wakeup(w->http);
                        }
                }
        }
out:
        if (c)
                PQfinish(c);
        free(held);
        free(ids);
        free(out);
        return NULL;
}

/* Applies what the heartbeat learned. */
static void read_mail(struct worker *w, bool *claim_hint)
{
        struct mail *mail;
        int n;

        pthread_mutex_lock(&w->lock);
        mail = w->mail;
        n = w->nmail;
        w->mail = NULL;
        w->nmail = w->mail_cap = 0;
        *claim_hint = w->claim_hint;
        w->claim_hint = false;
        pthread_mutex_unlock(&w->lock);

        for (int i = 0; i < n; i++) {
                struct run *run = run_find(w, mail[i].id, mail[i].epoch);
                if (!run)
                        continue; /* released or finished since the beat was sent */
                if (mail[i].lost) {
                        run_lost(w, run, "heartbeat");
                        continue;
                }
                run->lease_deadline = mail[i].renewed_at + w->cfg->lease_ms;
                if (mail[i].cancel)
                        run_cancel(w, run);
                else if (mail[i].pause)
                        run_pause(w, run);
        }
        free(mail);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void drain_finish(struct worker *w)
{
        while (w->runs) {
                struct run *run = w->runs;
                effects_abort(w, run);
                run_release(w, run, "queued", -1, "worker stopped");
        }
}

int worker_run(const struct worker_config *cfg)
{
        struct worker w = {.cfg = cfg};
        pthread_t hb;
        bool hb_started = false;
        _cleanup_free_ char *ua = NULL;
        int r;

        if (cfg->concurrency < 1 || cfg->concurrency > WORKER_MAX_CONCURRENCY ||
            cfg->heartbeat_ms <= 0 || cfg->heartbeat_ms >= cfg->lease_ms)
                return -EINVAL;
        srandom((unsigned)(getpid() ^ mono_ms()));
        pthread_mutex_init(&w.lock, NULL);
        w.held = calloc((size_t)cfg->concurrency, sizeof(*w.held));
        w.held_ids = calloc((size_t)cfg->concurrency, sizeof(*w.held_ids));
        w.ready = calloc((size_t)cfg->concurrency, sizeof(*w.ready));
        if (!w.held || !w.held_ids || !w.ready) {
                r = log_errno(-ENOMEM, "could not allocate the run table");
                goto out;
        }
        r = db_connect(cfg->conninfo, &w.db);
        if (r < 0) {
                log_errno(r, "%s", db_last_error());
                goto out;
        }
        ua = str_printf("agently-worker/%s", cfg->id);
        r = ua ? runtime_http_new(ua, &w.http) : -ENOMEM;
        if (r < 0) {
                log_errno(r, "could not set up HTTP");
                goto out;
        }
        r = -pthread_create(&hb, NULL, heartbeat_main, &w);
        if (r < 0) {
                log_errno(r, "could not start the heartbeat thread");
                goto out;
        }
        hb_started = true;
        log_info("worker %s started: concurrency %d, lease %lldms, heartbeat %lldms", cfg->id,
                 cfg->concurrency, (long long)cfg->lease_ms, (long long)cfg->heartbeat_ms);

        for (;;) {
                int64_t now = mono_ms(), timeout;
                bool hint = false;
                void *ud;
                json_t *output, *error;

                read_mail(&w, &hint);

                if (!w.draining && (hint || now >= w.next_claim)) {
                        claim(&w);
                        w.next_claim = mono_ms() + cfg->poll_ms;
                }

                /* runs may leave the table while others advance: pick first, then look
                 * each up again by (id, epoch) */
                int nready = 0;
                now = mono_ms();
                for (struct run *run = w.runs; run && nready < cfg->concurrency; run = run->next)
                        if (run->needs_plan || (run->plan_at && now >= run->plan_at)) {
                                str_copy(w.ready[nready].run_id, sizeof(w.ready[0].run_id),
                                         run->id);
                                w.ready[nready++].epoch = run->epoch;
                        }
                for (int i = 0; i < nready; i++) {
                        struct run *run = run_find(&w, w.ready[i].run_id, w.ready[i].epoch);
                        if (run)
                                run_advance(&w, run);
                }

                if (w.draining &&
                    (runtime_http_active(w.http) == 0 || mono_ms() >= w.drain_deadline)) {
                        drain_finish(&w);
                        log_info("worker %s drained", cfg->id);
                        r = 0;
                        break;
                }

                now = mono_ms();
                timeout = w.draining ? 100 : w.next_claim - now;
                for (struct run *run = w.runs; run; run = run->next) {
                        if (run->needs_plan)
                                timeout = run->lease_deadline > now ? 0 : 50;
                        if (run->plan_at && run->plan_at - now < timeout)
                                timeout = run->plan_at - now;
                }
                if (timeout < 0)
                        timeout = 0;
                if (timeout > 1000)
                        timeout = 1000;
                r = runtime_http_poll(w.http, (int)timeout, cfg->signal_fd);
                if (r < 0) {
                        log_errno(r, "could not drive HTTP transfers");
                        break;
                }
                if (r > 0) {
                        struct signalfd_siginfo si;
                        while (read(cfg->signal_fd, &si, sizeof(si)) == sizeof(si)) {
                                if (!w.draining) {
                                        log_info("signal %u: draining (up to %lldms for "
                                                 "running effects)",
                                                 si.ssi_signo, (long long)cfg->drain_grace_ms);
                                        w.draining = true;
                                        w.drain_deadline = mono_ms() + cfg->drain_grace_ms;
                                        if (si.ssi_signo == SIGINT)
                                                w.drain_deadline = mono_ms();
                                }
                        }
                }
                while (runtime_http_next_done(w.http, &ud, &output, &error)) {
                        effect_done(&w, ud, output, error);
                        json_decref(output);
                        json_decref(error);
                }
        }

out:
        if (hb_started) {
                pthread_mutex_lock(&w.lock);
                w.stop = true;
                pthread_mutex_unlock(&w.lock);
                pthread_join(hb, NULL);
        }
        while (w.runs)
                run_drop(&w, w.runs);
        runtime_http_free(w.http);
        for (int i = 0; i < w.ncache; i++)
                wf_free(w.cache[i].wf);
        if (w.db)
                PQfinish(w.db);
        free(w.held);
        free(w.held_ids);
        free(w.ready);
        free(w.mail);
        pthread_mutex_destroy(&w.lock);
        return r;
}
