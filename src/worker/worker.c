/*
 * The worker's event loop. One thread owns every claimed run (a small state machine each),
 * one database connection for claims, snapshots and checkpoints, and the libcurl multi
 * handle all HTTP effects share; a heartbeat thread owns a second connection that renews
 * every held lease in one statement per interval and LISTENs for wake-up hints. The two
 * meet in a mutex-protected mailbox. Every write for a run is fenced on its lease epoch
 * (src/queue); a run whose lease is lost is dropped at once, its effects aborted, nothing
 * more written.
 *
 * Commits are batched: each turn of the loop opens one transaction, writes everything the
 * turn decided for every run it touches (claim events, finished effects, planned steps, the
 * START marks of effects about to leave, releases, finishes) in run-id order, commits, and
 * only then acts on it (sends requests, forgets finished runs). So many runs' checkpoints
 * share one commit, and nothing leaves the process before the write that allows it is
 * durable. See src/worker/README.md.
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
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "buf.h"
#include "cleanup.h"
#include "db.h"
#include "engine.h"
#include "log.h"
#include "pgjson.h"
#include "queue.h"
#include "runtime_http.h"
#include "strutil.h"
#include "worker_secrets.h"
#include "worker_trace.h"

#define CLAIM_BATCH_MAX 256
#define BATCH_RUNS_MAX  256 /* runs written per transaction (per loop turn) */
#define WF_CACHE_MAX    256
#define PLAN_ROUNDS_MAX 256 /* plan/apply rounds per run per loop turn (fairness) */
#define DB_RETRY_MS     1000
#define WRITES_FLUSH_AT 4096 /* buffered writes sent in one statement, at most */

struct run;

/* One effect in flight: an HTTP request, or an agent session (src/agent), for one node
 * attempt. */
struct effect {
        struct effect *next;
        struct run *run;
        char *node;
        int attempt;
        struct runtime_http_transfer *transfer;
        struct agent_session *agent;
};

/* A finished effect whose result is not yet checkpointed. */
struct completion {
        struct completion *next;
        char *node;
        int attempt;
        json_t *output, *error;
};

/* What the open batch decided for a run; applied after the commit. */
enum fate { FATE_HELD, FATE_DONE, FATE_LOST };

struct run {
        struct run *prev, *next;
        char id[QUEUE_UUID_LEN + 1];
        char user_id[QUEUE_UUID_LEN + 1];
        char workflow_id[QUEUE_UUID_LEN + 1];
        int64_t epoch;
        const struct wf_workflow *wf;
        struct effect *effects;
        bool needs_plan;
        bool abandon;           /* an agent's journal lost the database: left to lease expiry */
        int64_t plan_at;        /* monotonic ms: re-plan then (0 = not scheduled) */
        int64_t lease_deadline; /* monotonic ms: our lease surely ends by then */
        int64_t last_turn;      /* monotonic ms of its last loop turn (0: none yet) */
        bool lease_wait;        /* planning waits for a renewal to confirm the lease (read_mail) */
        struct completion *completions;
        json_t *to_start;     /* execute actions whose START mark is in the open batch */
        const char *announce; /* claim event still to write (run.started, ...) */
        json_t *announce_data;
        enum fate fate;
        const char *lost_where;
        json_t *preload; /* snapshot read for the whole batch at once */
        bool preload_cancel, preload_pause;
        json_t *kept; /* its snapshot after its last turn, with that turn's writes (held runs stay
                         in memory, see snapshot_keep); NULL: the next turn reads it whole */
        struct wf_plan_cache *plan_cache; /* its maps' item states between plans (engine.h) */
        int64_t deadline_ms; /* database ms: the workflow's timeout ends the run then; -1 none */
        bool fresh; /* claimed in the open turn's transaction: its rows are locked by the claim,
                       and it is not renewed before that transaction commits (held_publish) */
        double time_scale; /* the run's (wf_time_scaled_ms): its retry back-off is divided by it */
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
        char *conninfo; /* cfg->conninfo with the session limits (worker_conninfo) */
        PGconn *db;
        struct runtime_http *http;
        struct agent_host *agents; /* the agent sessions' executors and calls */
        int loop_fd;               /* epoll: the signalfd and the agents' pipes */
        struct run *runs;
        int nruns;
        struct wf_cache_entry cache[WF_CACHE_MAX];
        int ncache;
        bool draining;
        bool abandon; /* a run is to be abandoned (abandon_runs) */
        int64_t drain_deadline;
        int64_t next_claim; /* monotonic ms: the next poll's claim (claim_wanted) */
        bool claim_more;    /* the last claim came back full: more runs are likely due */
        struct run **batch; /* runs of the open transaction, sorted by id */
        struct run **held_scratch;
        struct queue_lease *claim_held; /* runs held, for the claim (never rescue our own) */
        int nbatch;
        int batch_error;             /* a statement failed: the transaction is lost */
        int64_t turn_began;          /* monotonic ms before the turn's BEGIN was sent */
        struct queue_writes *writes; /* the open batch's writes not yet sent */
        struct secrets_kms kms;      /* how secrets are opened (worker_secrets.c) */
        struct worker_trace trace;   /* AGENTLY_TRACE_TURNS=1: phases to stderr */
        bool held_stale;             /* runs were dropped since the last held_publish */

        /* shared with the heartbeat thread, under lock */
        pthread_mutex_t lock;
        struct queue_lease *held; /* what to renew (ids point into held_ids) */
        char (*held_ids)[QUEUE_UUID_LEN + 1];
        int nheld;
        struct mail *mail;
        int nmail, mail_cap;
        bool claim_hint;
        int64_t hint_at; /* worker_trace_now_us() of the notification behind claim_hint */
        bool stop;
};

static int batch_flush(struct worker *w);
static PGresult *batch_query(struct worker *w, const char *sql, int nparams,
                             const char *const *params, int *error);

/* The loop's clock. CLOCK_BOOTTIME, not CLOCK_MONOTONIC: it keeps counting while the
 * machine is suspended, so a worker that wakes from a suspend knows its lease deadlines
 * have passed instead of believing it still holds its runs. */
static int64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_BOOTTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t random64(void)
{
        return ((uint64_t)random() << 33) ^ ((uint64_t)random() << 11) ^ (uint64_t)random();
}

/* ---- held set, shared with the heartbeat ------------------------------------------- */

/* Rebuilds the list the heartbeat renews: when a turn's claims settle, and once per loop
 * turn after runs were dropped (held_stale; rebuilding it at each drop made a turn that
 * finished n of its runs O(n * held)). Until then the list may still name a dropped run:
 * its renewal finds the run no longer held at that epoch, and the heartbeat's report of
 * it matches no run in memory (mail is matched by id and epoch). A run claimed in the open
 * turn's transaction is left out until it commits: its claim holds its rows locked out of
 * the id order, so a renewal waiting for them while holding the rows of lower ids could
 * deadlock with the turn's lock statement (and there is nothing to renew before the claim
 * is committed). */
static void held_publish(struct worker *w)
{
        int i = 0;

        w->held_stale = false;
        pthread_mutex_lock(&w->lock);
        for (struct run *r = w->runs; r && i < w->cfg->concurrency; r = r->next) {
                if (r->fresh)
                        continue;
                str_copy(w->held_ids[i], sizeof(w->held_ids[i]), r->id);
                w->held[i].run_id = w->held_ids[i];
                w->held[i].epoch = r->epoch;
                i++;
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
                if (e->agent)
                        agent_session_abort(w->agents, e->agent);
                else
                        runtime_http_abort(w->http, e->transfer);
                free(e->node);
                free(e);
        }
}

static void completions_free(struct run *r)
{
        while (r->completions) {
                struct completion *c = r->completions;
                r->completions = c->next;
                free(c->node);
                json_decref(c->output);
                json_decref(c->error);
                free(c);
        }
}

/* Forgets a run: aborts its effects and stops renewing its lease. Nothing is written. */
static void run_drop(struct worker *w, struct run *r)
{
        effects_abort(w, r);
        completions_free(r);
        json_decref(r->to_start);
        json_decref(r->announce_data);
        json_decref(r->preload);
        json_decref(r->kept);
        wf_plan_cache_free(r->plan_cache);
        if (r->prev)
                r->prev->next = r->next;
        else
                w->runs = r->next;
        if (r->next)
                r->next->prev = r->prev;
        w->nruns--;
        free(r);
        w->held_stale = true;
}

/* Says that the run's lease was found lost (where: by what); log only: we may not write to
 * a run we no longer hold. */
static void log_lease_lost(const struct run *r, const char *where)
{
        log_warn("lease.lost run %s epoch %lld (%s): stopping it, another worker owns it now",
                 r->id, (long long)r->epoch, where);
}

static void run_lost(struct worker *w, struct run *r, const char *where)
{
        log_lease_lost(r, where);
        run_drop(w, r);
}

/* A database failure: the outcome of the last writes is unknown (or they were rolled
 * back), so the run is abandoned: forgotten and no longer renewed. Its lease expires and
 * whoever claims it next — this worker included — resumes from the checkpoint. */
static void run_abandon(struct worker *w, struct run *r, int err, const char *what)
{
        log_error("could not %s for run %s: %s (%s); leaving it to lease expiry", what, r->id,
                  db_last_error(), strerror(-err));
        run_drop(w, r);
        held_publish(w); /* at once: the recovery may take a while, renewing it meanwhile
                            would hold its lease longer */
}

static void db_recover(struct worker *w)
{
        db_settle(w->db); /* an agent's write in flight hears its outcome first */
        if (PQstatus(w->db) != CONNECTION_OK)
                PQreset(w->db);
        else if (PQtransactionStatus(w->db) != PQTRANS_IDLE)
                db_rollback(w->db);
}

/* Inside a batch: what to do with the run once the transaction is over. */
static void mark_done(struct run *r)
{
        if (r->fate == FATE_HELD)
                r->fate = FATE_DONE;
}

static void mark_lost(struct run *r, const char *where)
{
        r->fate = FATE_LOST;
        r->lost_where = where;
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
        def = pgjson_loads(PQgetvalue(res, 0, 0), 0, NULL);
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

/* Snapshots of the runs $1 = [{"id", "epoch", "whole"}, ...] still held (fenced on the
 * queue row: a run not returned is lost). "nodes" — O(nodes) rows — and "input" (which
 * never changes: a 10,000-item map's items) only where whole is true; a run held in memory
 * gets the rest (what others may change: signals, children, the control requests) and
 * keeps its own nodes and input (snapshot_keep). A function (0030_worker_turn.sql):
 * its plan is made once per session, not on every turn. */
static const char SNAPSHOT_SQL[] =
    "SELECT id, snapshot, cancel_requested, pause_requested, lease_epoch"
    " FROM agently_snapshots($1::jsonb)";

/* Adds what only this process knows: the nodes it is executing; notes the run's deadline
 * (recorded with each release, so it is kept while nobody holds the run). */
static int snapshot_finish(struct run *run, json_t *s)
{
        json_t *inflight = json_array();

        if (!inflight)
                return -ENOMEM;
        run->deadline_ms = wf_run_deadline_ms(run->wf, s);
        run->time_scale = wf_snapshot_time_scale(s);
        for (struct effect *e = run->effects; e; e = e->next)
                json_array_append_new(inflight, json_string(e->node));
        for (size_t i = 0; i < json_array_size(run->to_start); i++)
                json_array_append(inflight,
                                  json_object_get(json_array_get(run->to_start, i), "node"));
        return json_object_set_new(s, "in_flight", inflight) < 0 ? -ENOMEM : 0;
}

/* [{"id", "epoch", "whole"}] of runs[0..n), for the batched statements; whole: the
 * snapshot must be read whole (the run has none in memory). */
static char *runs_param(struct run *const *runs, int n)
{
        _cleanup_json_ json_t *list = json_array();

        for (int i = 0; list && i < n; i++)
                if (json_array_append_new(list, json_pack("{s:s, s:I, s:b}", "id", runs[i]->id,
                                                          "epoch", (json_int_t)runs[i]->epoch,
                                                          "whole", !runs[i]->kept)) < 0)
                        return NULL;
        return list ? json_dumps(list, JSON_COMPACT) : NULL;
}

/*
 * Held runs stay in memory between loop turns. A run's node records change only through
 * its holder's writes while it is held (the control plane changes them only for a run
 * nobody holds, the database's end-of-run rules only for a run that ended), so the snapshot
 * a turn leaves — updated with every write of that turn (snapshot_note) — is what the
 * database holds, and the next turn reads only what others may change (signals, children,
 * control requests, now) instead of O(nodes) rows. A write the snapshot does not mirror
 * (a failure, a child run) drops it and the next turn reads it whole.
 */
static void snapshot_keep(struct run *run, json_t *snapshot)
{
        json_decref(run->kept);
        run->kept = snapshot;
}

static void snapshot_forget(struct run *run)
{
        snapshot_keep(run, NULL);
}

/* A turn's partial read s (no nodes, no input) completed with the run's nodes and input
 * kept in memory (a kept snapshot without "nodes": the run has none, 0057). */
static int snapshot_merge(struct run *run, json_t *s)
{
        json_t *nodes = json_object_get(run->kept, "nodes");
        int r = 0;

        if (nodes)
                r = json_object_set(s, "nodes", nodes);
        else
                json_object_del(s, "nodes"); /* the read's null ("not read") */

        if (r == 0)
                r = json_object_set(s, "input", json_object_get(run->kept, "input"));

        snapshot_forget(run);
        return r < 0 ? -ENOMEM : 0;
}

/* Loads the run's snapshot. 1 loaded, 0 lease lost, negative errno. */
static int snapshot_load(struct worker *w, struct run *run, json_t **snapshot, bool *cancel,
                         bool *pause)
{
        _cleanup_free_ char *param = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        json_t *s;
        int r = 0;

        snapshot_forget(run); /* read whole */
        param = runs_param(&run, 1);
        const char *params[] = {param};

        if (!param)
                return -ENOMEM;
        res = batch_query(w, SNAPSHOT_SQL, 1, params, &r);
        if (!res)
                return r;
        if (PQntuples(res) != 1)
                return 0;
        s = pgjson_loads(PQgetvalue(res, 0, 1), 0, NULL);
        if (!s)
                return -EIO;
        if ((r = snapshot_finish(run, s)) < 0) {
                json_decref(s);
                return r;
        }
        *cancel = PQgetvalue(res, 0, 2)[0] == 't';
        *pause = PQgetvalue(res, 0, 3)[0] == 't';
        *snapshot = s;
        return 1;
}

/* ---- applying actions -------------------------------------------------------------- */
/*
 * Everything below runs inside the loop turn's open transaction. A write returns 1
 * (written), 0 (lease lost: nothing written for this run, the transaction goes on for the
 * others) or a negative errno (the statement failed and the transaction with it).
 */

static const char *jstr(const json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

static int jint(const json_t *o, const char *key, int def)
{
        const json_t *v = json_object_get(o, key);
        return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

/* The outcome of a buffered write (sent with the batch, see batch_flush): 1, or 0 when an
 * earlier flush found the lease lost, or the negative errno of buffering it. */
static int buffered(const struct run *run, int r)
{
        if (r < 0)
                return r;
        return run->fate == FATE_LOST ? 0 : 1;
}

/* Buffers one node_runs write (with its event) into the open batch. */
static int checkpoint_write(struct worker *w, struct run *run, const struct queue_node_write *nw)
{
        int r = queue_writes_node(w->writes, run->id, run->epoch, nw);

        if (r == -EBUSY && (r = batch_flush(w)) == 0)
                r = queue_writes_node(w->writes, run->id, run->epoch, nw);
        if (r == 0 && queue_writes_count(w->writes) >= WRITES_FLUSH_AT)
                r = batch_flush(w); /* bounded memory: a 10,000-item map is many statements */
        return buffered(run, r);
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
        return checkpoint_write(w, run, &nw);
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
        /* consumed in the same statement as the node's checkpoint: the signal is either
         * consumed and recorded, or neither */
        if (r > 0 && signal_id)
                r = buffered(run,
                             queue_writes_consume(w->writes, run->id, run->epoch, signal_id, node));
        return r;
}

/* Records a failed attempt and what the node's policy decided: retry (the attempt carries
 * retry_at_ms; the next plan waits until then) or final. Database time: the transaction's
 * now(). */
static int apply_failure(struct worker *w, struct run *run, const char *node, int attempt,
                         const json_t *error)
{
        _cleanup_json_ json_t *decision = NULL, *recorded = NULL, *data = NULL, *event = NULL;
        _cleanup_free_ char *message = NULL;
        int64_t now = queue_db_now_ms(w->db);
        const char *final, *status, *klass = jstr(error, "class");
        int r;

        if (now < 0)
                return (int)now;
        r = wf_on_node_failure_scaled(run->wf, node, attempt, error, now, run->time_scale,
                                      random64(), &decision);
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

        /* the policy says interrupted when the outcome is unknown (an at_most_once request
         * that may have been acted on) */
        status = jstr(decision, "status");
        if (!status)
                status = klass && strcmp(klass, "interrupted") == 0 ? "interrupted" : "failed";
        /* the event says what failed and what happens next, so `run logs` shows each cause */
        r = wf_failure_event(recorded, attempt, decision, &message, &event);
        if (r < 0)
                return r;
        r = checkpoint_write(w, run,
                             &(struct queue_node_write){.node_id = node,
                                                        .attempt = attempt < 1 ? 1 : attempt,
                                                        .status = status,
                                                        .error = recorded,
                                                        .worker = w->cfg->id,
                                                        .event_kind = "node.failed",
                                                        .event_message = message,
                                                        .event_data = event});
        if (r > 0 && !final) {
                data = json_pack("{s:O, s:O, s:O}", "retry_at_ms",
                                 json_object_get(decision, "retry_at_ms"), "next_attempt",
                                 json_object_get(decision, "attempt"), "delay_ms",
                                 json_object_get(decision, "delay_ms"));
                r = buffered(run, queue_writes_event(w->writes, run->id, run->epoch,
                                                     "node.retry_scheduled", node, attempt, "warn",
                                                     NULL, data));
        }
        return r;
}

static int apply_notify(struct worker *w, struct run *run, const json_t *a);

/* Commits to an effect: the START mark goes into the open transaction, the request itself
 * leaves only after the commit (batch_finish). */
static int plan_effect(struct worker *w, struct run *run, json_t *a)
{
        const char *node = jstr(a, "node");
        const char *kind = jstr(a, "kind");
        int attempt = jint(a, "attempt", 1);
        int r;

        for (struct effect *e = run->effects; e; e = e->next)
                if (strcmp(e->node, node) == 0)
                        return 1; /* already running here */
        for (size_t i = 0; i < json_array_size(run->to_start); i++)
                if (strcmp(jstr(json_array_get(run->to_start, i), "node"), node) == 0)
                        return 1;

        if (kind && strcmp(kind, "notify") == 0)
                return apply_notify(w, run, a); /* no effect leaves the worker: the outbox */
        if (!kind || (strcmp(kind, "http") != 0 && strcmp(kind, "agent") != 0)) {
                _cleanup_json_ json_t *err =
                    json_pack("{s:s, s:s++}", "class", "error", "message", "node kind ",
                              kind ? kind : "(none)", " is not supported by this worker");
                return apply_failure(w, run, node, attempt, err);
        }
        /* the START mark: durable before anything leaves, so after a crash an
         * at_most_once node is found started-but-unfinished and not sent again */
        r = checkpoint(w, run, node, attempt, "started", json_object_get(a, "input"), NULL, NULL,
                       jstr(a, "idempotency_key"), NULL, NULL);
        if (r <= 0)
                return r;
        if (!run->to_start && !(run->to_start = json_array()))
                return -ENOMEM;
        return json_array_append(run->to_start, a) < 0 ? -ENOMEM : 1;
}

/*
 * A notify node: the notification enters the outbox (agently_notify_enqueue, keyed on the
 * node's idempotency key, so a re-execution after a crash finds the first one) in the
 * turn's transaction, fenced on the lease like the node's checkpoint, and the node
 * completes with the notification's id. The dispatcher delivers it (src/notify).
 */
static int apply_notify(struct worker *w, struct run *run, const json_t *a)
{
        const char *node = jstr(a, "node");
        const json_t *in = json_object_get(a, "input");
        int attempt = jint(a, "attempt", 1), r = 0;
        _cleanup_free_ char *key = str_printf("notify:%s", jstr(a, "idempotency_key"));
        _cleanup_json_ json_t *message =
            json_pack("{s:s,s:O?,s:O?,s:O?,s:s}", "event", "notify", "title",
                      json_object_get(in, "title"), "text", json_object_get(in, "text"), "links",
                      json_object_get(in, "links"), "node_id", node);
        _cleanup_free_ char *channel = json_dumps(json_object_get(in, "channel"), JSON_COMPACT);
        _cleanup_free_ char *msg = message ? json_dumps(message, JSON_COMPACT) : NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        char epoch[24];

        if (!key || !channel || !msg)
                return -ENOMEM;
        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        const char *params[] = {run->id, epoch, channel, msg, key};
        res = batch_query(w,
                          "SELECT agently_notify_enqueue(p.user_id, p.id, $3::jsonb, $4::jsonb, $5)"
                          " FROM workflow_runs p WHERE p.id = $1 AND p.lease_epoch = $2::bigint",
                          5, params, &r);
        if (!res)
                return r;
        if (PQntuples(res) == 0)
                return 0; /* the lease is lost */
        _cleanup_json_ json_t *output =
            json_pack("{s:s}", "notification_id", PQgetvalue(res, 0, 0));
        if (!output)
                return -ENOMEM;
        return checkpoint(w, run, node, attempt, "completed", in, output, NULL,
                          jstr(a, "idempotency_key"), NULL, NULL);
}

/* Creates the child run idempotently and records the node waiting. */
static int apply_start_child(struct worker *w, struct run *run, const json_t *a)
{
        const char *node = jstr(a, "node");
        int attempt = jint(a, "attempt", 1);
        const json_t *input = json_object_get(a, "input");
        const json_t *version = json_object_get(a, "version");
        _cleanup_free_ char *key = str_printf("child:%s", jstr(a, "idempotency_key"));
        _cleanup_free_ char *inputs = NULL;
        _cleanup_pgresult_ PGresult *found = NULL, *res = NULL;
        char epoch[24], ver[24];
        int r = 0;

        if (!key)
                return -ENOMEM;
        if (input && !json_is_null(input) && !json_is_object(input)) {
                _cleanup_json_ json_t *err = json_pack("{s:s, s:s}", "class", "error", "message",
                                                       "subworkflow input must be an object");
                return apply_failure(w, run, node, attempt, err);
        }
        inputs = json_dumps(json_is_object(input) ? input : json_object(), JSON_COMPACT);
        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        snprintf(ver, sizeof(ver), "%lld", (long long)json_integer_value(version));
        const char *params[] = {
            run->id, epoch, jstr(a, "workflow"), json_is_integer(version) ? ver : NULL, inputs,
            node,    key};
        const char *lookup[] = {run->user_id, jstr(a, "workflow"),
                                json_is_integer(version) ? ver : NULL};

        found = batch_query(w,
                            "SELECT 1 FROM workflows WHERE user_id = $1 AND name = $2 "
                            "AND ($3::integer IS NULL OR version = $3::integer) LIMIT 1",
                            3, lookup, &r);
        if (!found)
                return r;
        if (PQntuples(found) == 0) {
                _cleanup_free_ char *msg =
                    str_printf("subworkflow '%s'%s not found", jstr(a, "workflow") ?: "(none)",
                               json_is_integer(version) ? " at that version" : "");
                _cleanup_json_ json_t *err =
                    json_pack("{s:s, s:s?}", "class", "error", "message", msg);
                return apply_failure(w, run, node, attempt, err);
        }

        r = checkpoint(w, run, node, attempt, "waiting", NULL, NULL, NULL, key, "node.waiting",
                       NULL);
        if (r <= 0)
                return r;
        /* ON CONFLICT: a retry of this step after a crash finds the child it created */
        res = batch_query(w,
                          "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name,"
                          "  workflow_version, input, parent_run_id, parent_node_id,"
                          "  idempotency_key, budgets)"
                          " SELECT p.user_id, wf.id, wf.name, wf.version, $5::jsonb, p.id, $6, $7,"
                          "  p.budgets"
                          " FROM workflow_runs p"
                          " CROSS JOIN LATERAL (SELECT * FROM workflows x"
                          "   WHERE x.user_id = p.user_id AND x.name = $3"
                          "     AND ($4::integer IS NULL OR x.version = $4::integer)"
                          "   ORDER BY x.version DESC LIMIT 1) wf"
                          " JOIN run_queue q ON q.run_id = p.id AND q.lease_epoch = $2::bigint"
                          " WHERE p.id = $1"
                          " ON CONFLICT (user_id, idempotency_key) DO NOTHING",
                          7, params, &r);
        return res ? 1 : r;
}

/* Cancel: stop what runs, record it, finish the run canceled. What a run's end implies
 * (its children canceled, its parent woken, its open nodes closed) is done by the
 * database for every way a run ends (0009_run_status.sql). */
static int apply_cancel(struct worker *w, struct run *run)
{
        _cleanup_json_ json_t *err =
            json_pack("{s:s, s:s}", "class", "canceled", "message", "canceled by request");
        int r = 1;

        for (struct effect *e = run->effects; r > 0 && e; e = e->next)
                r = checkpoint(w, run, e->node, e->attempt, "canceled", NULL, NULL, err, NULL, NULL,
                               NULL);
        for (size_t i = 0; r > 0 && i < json_array_size(run->to_start); i++) {
                json_t *a = json_array_get(run->to_start, i);
                r = checkpoint(w, run, jstr(a, "node"), jint(a, "attempt", 1), "canceled", NULL,
                               NULL, err, NULL, NULL, NULL);
        }
        effects_abort(w, run);
        json_array_clear(run->to_start);
        if (r > 0)
                r = buffered(run, queue_writes_finish(w->writes, run->id, run->epoch, "canceled",
                                                      NULL, err));
        if (r > 0)
                log_info("run %s canceled", run->id);
        return r;
}

/* Pause, once nothing is in flight (step_pause): release the run paused. */
static int apply_pause(struct worker *w, struct run *run)
{
        int r = buffered(run, queue_writes_release(w->writes, run->id, run->epoch, "paused", -1,
                                                   "paused by request", NULL, run->deadline_ms));
        if (r > 0)
                log_info("run %s paused", run->id);
        return r;
}

/* on_failure escalate: the error goes on the run, an event says why, and the run waits in
 * needs_input for a person. */
static int escalate(struct worker *w, struct run *run, const char *node, const json_t *error)
{
        _cleanup_free_ char *reason = str_printf(
            "node %s failed: a person must retry, skip or stop the run", node ? node : "?");
        _cleanup_json_ json_t *data = json_pack("{s:s?, s:O?}", "node", node, "error", error);
        int r;

        if (!reason)
                return -ENOMEM;
        r = queue_writes_event(w->writes, run->id, run->epoch, "run.escalated", node, -1, "warn",
                               reason, data);
        if (r == 0)
                r = queue_writes_release(w->writes, run->id, run->epoch, "needs_input", -1, reason,
                                         error, run->deadline_ms);
        return buffered(run, r);
}

/* The result of one step: keep planning, stop here for now, or the run leaves this worker
 * when the batch commits. */
enum step {
        STEP_AGAIN,
        STEP_IDLE,
        STEP_GONE,
        STEP_NEXT, /* only between an action handler and run_step: go on with the next action */
};

/* The outcome of a write that did not succeed: lease lost (only this run stops) or a
 * failed statement (the whole batch is lost). */
static enum step step_failed(struct worker *w, struct run *run, int r, const char *what)
{
        if (r == 0)
                mark_lost(run, what);
        else if (!w->batch_error)
                w->batch_error = r;
        return STEP_GONE;
}

/* Ends the run's time here with a fenced release (a wait, a drain). */
static enum step step_release(struct worker *w, struct run *run, const char *status, int64_t at_ms,
                              const char *reason)
{
        int r = buffered(run, queue_writes_release(w->writes, run->id, run->epoch, status, at_ms,
                                                   reason, NULL, run->deadline_ms));

        if (r <= 0)
                return step_failed(w, run, r, "release");
        mark_done(run);
        return STEP_GONE;
}

static bool has_effects(const struct run *run)
{
        return run->effects || json_array_size(run->to_start) > 0;
}

/* A pause takes effect at a step boundary: requests in flight finish and are checkpointed
 * (the run is planned again when one ends, and comes back here), nothing new starts; when
 * none is left, the run is released paused. So a pause never makes a request go twice. */
static enum step step_pause(struct worker *w, struct run *run)
{
        int r;

        if (has_effects(run))
                return STEP_IDLE;
        r = apply_pause(w, run);
        if (r <= 0)
                return step_failed(w, run, r, "pause");
        mark_done(run);
        return STEP_GONE;
}

/*
 * Records in the snapshot what this round just wrote, so the next round of the same turn
 * plans from memory instead of reading the run again (the database holds exactly this:
 * same transaction, same now()). Only the simple records are mirrored; anything else
 * (failures, child runs) makes the next round reload.
 */
static int snapshot_note(struct run *run, json_t *snapshot, const char *node, const char *status,
                         int attempt, json_t *output, const json_t *input)
{
        json_t *nodes = json_object_get(snapshot, "nodes");
        json_t *old = json_object_get(nodes, node);
        json_t *started = NULL, *rec;

        if (old && jint(old, "attempt", 0) == attempt)
                started = json_object_get(old, "started_at_ms");
        rec = json_pack("{s:s, s:i, s:O, s:n, s:O}", "status", status, "attempt", attempt, "output",
                        output ? output : json_null(), "error", "started_at_ms",
                        started ? started : json_object_get(snapshot, "now_ms"));
        if (!rec)
                return -ENOMEM;
        /* what SNAPSHOT_SQL takes from a waiting node's input */
        if (strcmp(status, "waiting") == 0) {
                json_t *v;
                if (json_is_integer(v = json_object_get(input, "wake_at_ms")))
                        json_object_set(rec, "wake_at_ms", v);
                if ((v = json_object_get(input, "event")))
                        json_object_set(rec, "event", v);
        }
        /* the plan cache reads this item again at the next plan (wf_plan_then_cached) */
        wf_plan_cache_note(run->plan_cache, node);
        /* a snapshot leaves out a part that is empty (0057): the run's first record */
        if (!nodes && (json_object_set_new(snapshot, "nodes", json_object()) < 0 ||
                       !(nodes = json_object_get(snapshot, "nodes")))) {
                json_decref(rec);
                return -ENOMEM;
        }
        return json_object_set_new(nodes, node, rec) < 0 ? -ENOMEM : 0;
}

/* Removes a consumed signal from the snapshot's lists. */
static void snapshot_consume(json_t *snapshot, const char *signal_id)
{
        const char *name;
        json_t *list;

        json_object_foreach (json_object_get(snapshot, "signals"), name, list) {
                for (size_t i = 0; i < json_array_size(list); i++)
                        if (strcmp(jstr(json_array_get(list, i), "id") ?: "", signal_id) == 0) {
                                json_array_remove(list, i);
                                return;
                        }
        }
}

/* What a run that releases itself to wait is waiting for, for people (wait_reason):
 * "signal 'approve' (node gate); sleep (node cool_down)". malloc'd; NULL on ENOMEM. */
static char *wait_reason(const json_t *snapshot)
{
        _cleanup_buf_ struct buf b;
        const char *node;
        json_t *rec;
        int listed = 0, more = 0;

        buf_init(&b, 1000);
        json_object_foreach (json_object_get(snapshot, "nodes"), node, rec) {
                const char *status = jstr(rec, "status") ?: "";
                const char *what = NULL;
                if (strcmp(status, "waiting") == 0)
                        what = jstr(rec, "event")                   ? "signal"
                               : json_object_get(rec, "wake_at_ms") ? "sleep"
                               : json_object_get(json_object_get(snapshot, "approvals"), node)
                                   ? "approval"
                                   : "subworkflow";
                else if (strcmp(status, "failed") == 0 && json_object_get(rec, "retry_at_ms"))
                        what = "retry delay";
                if (!what)
                        continue;
                if (listed == 3) {
                        more++;
                        continue;
                }
                if (strcmp(what, "signal") == 0)
                        buf_printf(&b, "%ssignal '%.100s' (node %.200s)", listed ? "; " : "",
                                   jstr(rec, "event"), node);
                else
                        buf_printf(&b, "%s%s (node %.200s)", listed ? "; " : "", what, node);
                listed++;
        }
        if (more)
                buf_printf(&b, "; and %d more", more);
        if (listed == 0)
                buf_append_str(&b, "waiting");
        return buf_steal(&b);
}

/* One plan/apply round in progress: the snapshot it plans from, and what its actions did. */
struct round {
        json_t *snapshot;
        bool progress; /* something was written: plan again */
        bool reload;   /* a write the snapshot does not mirror: read the run again */
};

/* Ends the run failed with a message of ours (the plan could not be made or applied). */
static enum step step_fail_run(struct worker *w, struct run *run, const char *message)
{
        _cleanup_json_ json_t *err = json_pack("{s:s, s:s}", "class", "error", "message", message);
        int r = err ? buffered(run, queue_writes_finish(w->writes, run->id, run->epoch, "failed",
                                                        NULL, err))
                    : -ENOMEM;

        if (r <= 0)
                return step_failed(w, run, r, "fail run");
        log_error("run %s failed: %s", run->id, message);
        mark_done(run);
        return STEP_GONE;
}

/*
 * The planner's actions (engine.h), one handler each. A handler applies one action inside
 * the open turn and answers STEP_NEXT to go on with the plan's next action, or how the
 * round ends (a failed write ends it through step_failed).
 */

/* complete / skip: the node's record (and the signal it consumed), mirrored in memory. */
static enum step act_complete(struct worker *w, struct run *run, struct round *rd, const char *act,
                              json_t *a)
{
        const char *node = jstr(a, "node");
        bool skip = strcmp(act, "skip") == 0;
        int r = apply_complete_or_skip(w, run, rd->snapshot, a);

        if (r <= 0)
                return step_failed(w, run, r, act);
        if (snapshot_note(run, rd->snapshot, node, skip ? "skipped" : "completed",
                          snapshot_attempt(rd->snapshot, node),
                          skip ? NULL : json_object_get(a, "output"), NULL) < 0)
                rd->reload = true;
        if (jstr(a, "signal_id"))
                snapshot_consume(rd->snapshot, jstr(a, "signal_id"));
        rd->progress = true;
        return STEP_NEXT;
}

/* execute: the START mark now, the request after the commit (plan_effect). */
static enum step act_execute(struct worker *w, struct run *run, struct round *rd, const char *act,
                             json_t *a)
{
        const char *node = jstr(a, "node");
        size_t n;
        int r;

        /* a drain starts nothing new but lets what runs finish (their results are
         * checkpointed; the run is planned again when one ends); with nothing in flight the
         * run goes back to the queue */
        if (w->draining)
                return has_effects(run) ? STEP_IDLE
                                        : step_release(w, run, "queued", -1, "worker draining");
        if (mono_ms() >= run->lease_deadline) {
                /* not sure we still hold it (e.g. we were stopped): no new effect until the
                 * heartbeat confirms — and no turn either (run_due), whose row lock would
                 * hold the renewal up */
                run->needs_plan = true;
                run->lease_wait = true;
                return STEP_IDLE;
        }
        r = plan_effect(w, run, a);
        if (r <= 0)
                return step_failed(w, run, r, act);
        n = json_array_size(run->to_start);
        if (n > 0 && strcmp(jstr(json_array_get(run->to_start, n - 1), "node"), node) == 0) {
                /* started here: mirror the START mark and in_flight */
                if (snapshot_note(run, rd->snapshot, node, "started", jint(a, "attempt", 1), NULL,
                                  NULL) < 0 ||
                    json_array_append_new(json_object_get(rd->snapshot, "in_flight"),
                                          json_string(node)) < 0)
                        rd->reload = true;
        } else {
                rd->reload = true; /* refused or failed: read it again */
        }
        rd->progress = true;
        return STEP_NEXT;
}

static enum step act_fail_node(struct worker *w, struct run *run, struct round *rd, const char *act,
                               json_t *a)
{
        int r = apply_failure(w, run, jstr(a, "node"), jint(a, "attempt", 1),
                              json_object_get(a, "error"));

        if (r <= 0)
                return step_failed(w, run, r, act);
        rd->reload = true;
        rd->progress = true;
        return STEP_NEXT;
}

/* sleep / wait_signal: the node recorded waiting (with its wake-up time), once. */
static enum step act_wait_node(struct worker *w, struct run *run, struct round *rd, const char *act,
                               json_t *a)
{
        const char *node = jstr(a, "node");
        const json_t *cur = json_object_get(json_object_get(rd->snapshot, "nodes"), node);
        json_t *at = json_object_get(a, strcmp(act, "sleep") == 0 ? "wake_at_ms" : "timeout_at_ms");
        _cleanup_json_ json_t *in = NULL;
        int attempt, r;

        if (cur && strcmp(jstr(cur, "status") ?: "", "waiting") == 0 &&
            json_equal(json_object_get(cur, "wake_at_ms"), at))
                return STEP_NEXT; /* already recorded */
        in = json_object();
        if (json_is_integer(at))
                json_object_set(in, "wake_at_ms", at);
        if (jstr(a, "event"))
                json_object_set(in, "event", json_object_get(a, "event"));
        attempt = snapshot_attempt(rd->snapshot, node);
        r = checkpoint(w, run, node, attempt, "waiting", in, NULL, NULL, NULL, "node.waiting",
                       NULL);
        if (r <= 0)
                return step_failed(w, run, r, act);
        if (snapshot_note(run, rd->snapshot, node, "waiting", attempt, NULL, in) < 0)
                rd->reload = true;
        rd->progress = true;
        return STEP_NEXT;
}

static enum step act_start_child(struct worker *w, struct run *run, struct round *rd,
                                 const char *act, json_t *a)
{
        int r = apply_start_child(w, run, a);

        if (r <= 0)
                return step_failed(w, run, r, act);
        rd->reload = true;
        rd->progress = true;
        return STEP_NEXT;
}

static enum step act_finish(struct worker *w, struct run *run, struct round *rd, const char *act,
                            json_t *a)
{
        const char *status = jstr(a, "status");
        int r;

        (void)rd;
        (void)act;
        effects_abort(w, run);
        json_array_clear(run->to_start);
        r = buffered(
            run, queue_writes_finish(w->writes, run->id, run->epoch, status ? status : "failed",
                                     json_object_get(a, "output"), json_object_get(a, "error")));
        if (r <= 0)
                return step_failed(w, run, r, "finish");
        log_info("run %s %s", run->id, status ? status : "failed");
        mark_done(run);
        return STEP_GONE;
}

static enum step act_needs_input(struct worker *w, struct run *run, struct round *rd,
                                 const char *act, json_t *a)
{
        int r;

        (void)rd;
        (void)act;
        effects_abort(w, run);
        json_array_clear(run->to_start);
        r = escalate(w, run, jstr(a, "node"), json_object_get(a, "error"));
        if (r <= 0)
                return step_failed(w, run, r, "escalate");
        mark_done(run);
        return STEP_GONE;
}

/* wait: with requests in flight keep the run (planned again when one ends, or at
 * wake_at_ms); otherwise release it until then. */
static enum step act_wait(struct worker *w, struct run *run, struct round *rd, const char *act,
                          json_t *a)
{
        const json_t *at = json_object_get(a, "wake_at_ms");
        _cleanup_free_ char *why = NULL;

        (void)act;
        if (has_effects(run)) {
                int64_t now = json_integer_value(json_object_get(rd->snapshot, "now_ms"));
                run->plan_at = json_is_integer(at) ? mono_ms() + (json_integer_value(at) - now) : 0;
                return STEP_IDLE;
        }
        why = wait_reason(rd->snapshot);
        return step_release(w, run, "waiting", json_is_integer(at) ? json_integer_value(at) : -1,
                            why ? why : "waiting");
}

/*
 * request_approval: the node attempt's approval, its links and notifications
 * (agently_request_approval, 0015_approvals.sql: idempotent per attempt, so a re-execution
 * after a crash asks nobody twice), then the node recorded waiting. The next round reads
 * the approval from a fresh snapshot.
 */
static enum step act_request_approval(struct worker *w, struct run *run, struct round *rd,
                                      const char *act, json_t *a)
{
        const char *node = jstr(a, "node");
        int attempt = jint(a, "attempt", 1);
        _cleanup_free_ char *spec = json_dumps(json_object_get(a, "approval"), JSON_COMPACT);
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_json_ json_t *in = NULL;
        char epoch[24], att[16];
        int r = 0;

        if (!spec)
                return step_failed(w, run, -ENOMEM, act);
        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        snprintf(att, sizeof(att), "%d", attempt);
        const char *params[] = {run->id, epoch, node, att, spec, w->cfg->public_url};
        res = batch_query(w,
                          "SELECT agently_request_approval($1::uuid, $2::bigint, $3, $4::integer,"
                          " $5::jsonb, $6)",
                          6, params, &r);
        if (!res)
                return step_failed(w, run, r, act);
        if (PQgetisnull(res, 0, 0))
                return step_failed(w, run, 0, act); /* lease lost */
        in = json_pack("{s:s}", "approval_id", PQgetvalue(res, 0, 0));
        r = in ? checkpoint(w, run, node, attempt, "waiting", in, NULL, NULL, NULL, "node.waiting",
                            NULL)
               : -ENOMEM;
        if (r <= 0)
                return step_failed(w, run, r, act);
        rd->reload = true;
        rd->progress = true;
        return STEP_NEXT;
}

/* approval_timeout: the database applies on_timeout unless a decision came first
 * (agently_approval_timeout); the next round reads the outcome. */
static enum step act_approval_timeout(struct worker *w, struct run *run, struct round *rd,
                                      const char *act, json_t *a)
{
        _cleanup_pgresult_ PGresult *res = NULL;
        char epoch[24];
        int r = 0;

        snprintf(epoch, sizeof(epoch), "%lld", (long long)run->epoch);
        const char *params[] = {run->id, epoch, jstr(a, "approval_id")};
        res = batch_query(w, "SELECT agently_approval_timeout($1::uuid, $2::bigint, $3::uuid)", 3,
                          params, &r);
        if (!res)
                return step_failed(w, run, r, act);
        if (PQgetisnull(res, 0, 0))
                return step_failed(w, run, 0, act); /* lease lost */
        rd->reload = true;
        rd->progress = true;
        return STEP_NEXT;
}

static const struct action {
        const char *name;
        enum step (*apply)(struct worker *w, struct run *run, struct round *rd, const char *act,
                           json_t *a);
} ACTIONS[] = {
    {"complete", act_complete},
    {"skip", act_complete},
    {"execute", act_execute},
    {"fail_node", act_fail_node},
    {"sleep", act_wait_node},
    {"wait_signal", act_wait_node},
    {"start_child", act_start_child},
    {"finish", act_finish},
    {"needs_input", act_needs_input},
    {"wait", act_wait},
    {"request_approval", act_request_approval},
    {"approval_timeout", act_approval_timeout},
};

static const struct action *action_find(const char *name)
{
        for (size_t i = 0; name && i < sizeof(ACTIONS) / sizeof(ACTIONS[0]); i++)
                if (strcmp(ACTIONS[i].name, name) == 0)
                        return &ACTIONS[i];
        return NULL;
}

/* One plan/apply round, from *snapp (loaded when NULL; set to NULL when the next round
 * must read the run again). */
static enum step run_step(struct worker *w, struct run *run, json_t **snapp)
{
        _cleanup_json_ json_t *actions = NULL, *then = NULL;
        bool cancel = false, pause = false;
        struct round rd = {0};
        size_t i;
        json_t *a;
        int r;

        if (!*snapp) {
                r = snapshot_load(w, run, snapp, &cancel, &pause);
                if (r <= 0)
                        return step_failed(w, run, r, "load snapshot");
        }
        rd.snapshot = *snapp;
        if (cancel) {
                r = apply_cancel(w, run);
                if (r <= 0)
                        return step_failed(w, run, r, "cancel");
                mark_done(run);
                return STEP_GONE;
        }
        if (pause)
                return step_pause(w, run);
        /* a held run's maps are planned from the item states its cache kept (O(items whose
         * record changed), not O(items)); without a cache it plans all the same */
        if (!run->plan_cache)
                run->plan_cache = wf_plan_cache_new();
        if (wf_plan_then_cached(run->wf, rd.snapshot, run->plan_cache, &actions, &then) < 0)
                return step_fail_run(w, run, "could not plan the run");

        json_array_foreach (actions, i, a) {
                const char *act = jstr(a, "action");
                const struct action *handler = action_find(act);
                enum step st;

                if (!handler) {
                        /* the planner and this worker are one program: an action it does not
                         * know is a bug, and ignoring it would leave the run half-done */
                        _cleanup_free_ char *msg =
                            str_printf("the planner asked for an unknown action '%.64s'",
                                       act ? act : "(none)");
                        return step_fail_run(w, run, msg ? msg : "unknown planner action");
                }
                st = handler->apply(w, run, &rd, act, a);
                if (st != STEP_NEXT) {
                        if (rd.reload) { /* what this round wrote is not all in the snapshot */
                                json_decref(*snapp);
                                *snapp = NULL;
                        }
                        return st;
                }
        }
        if (rd.reload) {
                json_decref(*snapp);
                *snapp = NULL;
        }
        /* executes alone, all started and mirrored: the next plan is known to be this wait
         * (wf_plan_then), so a big run is not planned twice per turn to learn it */
        if (rd.progress && then && *snapp)
                return act_wait(w, run, &rd, "wait", then);
        if (rd.progress)
                return STEP_AGAIN;
        /* a plan must end in finish, needs_input or wait; if it did not, look again later
         * rather than spin */
        log_warn("run %s: the plan made no progress; planning again in 1s", run->id);
        run->plan_at = mono_ms() + 1000;
        return STEP_IDLE;
}

/* Plans a run (already locked, its claim event and finished effects written, its snapshot
 * preloaded by batch_prepare) round after round until it waits. */
static void run_advance(struct worker *w, struct run *run)
{
        _cleanup_json_ json_t *snapshot = TAKE_PTR(run->preload);

        run->needs_plan = false;
        run->lease_wait = false;
        run->plan_at = 0;
        if (snapshot && run->preload_cancel) {
                int r = apply_cancel(w, run);
                if (r <= 0)
                        step_failed(w, run, r, "cancel");
                else
                        mark_done(run);
                return;
        }
        if (snapshot && run->preload_pause) {
                if (step_pause(w, run) == STEP_IDLE)
                        snapshot_keep(run, TAKE_PTR(snapshot));
                return;
        }
        for (int round = 0; round < PLAN_ROUNDS_MAX && !w->batch_error; round++) {
                enum step st = run_step(w, run, &snapshot);
                if (st == STEP_GONE)
                        return;
                if (st == STEP_IDLE) {
                        snapshot_keep(run, TAKE_PTR(snapshot)); /* NULL if it must be reread */
                        return;
                }
        }
        run->needs_plan = true; /* fairness: continue on the next loop turn */
        snapshot_keep(run, TAKE_PTR(snapshot));
}

/* ---- the batch: one transaction per loop turn ------------------------------------------ */

static bool run_due(const struct run *run, int64_t now)
{
        if (run->completions || run->announce)
                return true;
        if (run->lease_wait)
                return false;
        return run->needs_plan || (run->plan_at && now >= run->plan_at);
}

/* Since when a due run has waited for a turn: its planned time, or else its last turn
 * (whatever made it due — a finished request, a heartbeat's news — came after that). */
static int64_t run_due_since(const struct run *run)
{
        if (!run->needs_plan && !run->completions && !run->announce)
                return run->plan_at;
        return run->plan_at && run->plan_at < run->last_turn ? run->plan_at : run->last_turn;
}

static int run_due_cmp(const void *a, const void *b)
{
        int64_t x = run_due_since(*(struct run *const *)a);
        int64_t y = run_due_since(*(struct run *const *)b);
        return x < y ? -1 : x > y;
}

static int run_cmp(const void *a, const void *b)
{
        return strcmp((*(struct run *const *)a)->id, (*(struct run *const *)b)->id);
}

static int run_id_cmp(const void *key, const void *elem)
{
        return strcmp(key, (*(struct run *const *)elem)->id);
}

static int claim_cmp(const void *a, const void *b)
{
        return strcmp(((const struct queue_claim *)a)->id, ((const struct queue_claim *)b)->id);
}

static int claim_id_cmp(const void *key, const void *elem)
{
        return strcmp(key, ((const struct queue_claim *)elem)->id);
}

/* The batch's run with this id and epoch (the text of a lease_epoch column; NULL: any).
 * Matched on both: a row about another epoch of the run is not about this claim of it. */
static struct run *batch_find(struct worker *w, const char *id, const char *epoch)
{
        struct run **r = bsearch(id, w->batch, (size_t)w->nbatch, sizeof(*w->batch), run_id_cmp);
        int64_t e;

        if (!r)
                return NULL;
        if (epoch && (str_to_int64(epoch, &e) < 0 || e != (*r)->epoch))
                return NULL;
        return *r;
}

static void batch_lost(void *arg, const char *run_id)
{
        struct worker *w = arg;
        /* a refused write names the run only; the batch holds one epoch of each run (claim
         * drops an older copy of a run it claims again) */
        struct run *run = batch_find(w, run_id, NULL);

        if (run)
                mark_lost(run, "write");
}

/* Sends the turn's buffered writes in one statement: before any statement that must see
 * them, and before the commit. A run whose lease was lost is marked lost (nothing of it was
 * written); a failed statement dooms the transaction. */
static int batch_flush(struct worker *w)
{
        int r;

        if (w->batch_error)
                return w->batch_error;
        r = queue_writes_flush(w->db, w->cfg->id, w->writes, batch_lost, w);
        if (r < 0)
                w->batch_error = r;
        return r;
}

/* A statement of the open batch beside the buffered writes: they are sent first, so it
 * sees them and runs after them. */
static PGresult *batch_query(struct worker *w, const char *sql, int nparams,
                             const char *const *params, int *error)
{
        int r = batch_flush(w);

        if (r < 0) {
                *error = r;
                return NULL;
        }
        return db_query(w->db, sql, nparams, params, error);
}

/* An agent session that ended waiting for a person (its question, an exhausted budget). */
static bool agent_waits(const json_t *error)
{
        const char *klass = jstr(error, "class");
        return klass && strcmp(klass, "needs_input") == 0;
}

/* The agent waits for the approval of a tool call (src/agent/agent_approval.c): the run
 * waits like an approval node's (no error on it, its approval in the inbox), due at the
 * approval's deadline; a decision wakes it. */
static bool agent_waits_for_approval(const json_t *error)
{
        const char *kind = jstr(json_object_get(error, "waiting_for"), "kind");
        return kind && strcmp(kind, "tool_approval") == 0;
}

/* The node waits (the same attempt, executed again once a person answered: its journal
 * replays) and the run goes to needs_input (waiting, for a tool call's approval), holding
 * no executor and no lease. */
static int agent_needs_input(struct worker *w, struct run *run, const struct completion *c)
{
        const char *why = jstr(c->error, "message");
        bool approval = agent_waits_for_approval(c->error);
        json_int_t due = json_integer_value(
            json_object_get(json_object_get(c->error, "waiting_for"), "expires_at_ms"));
        int r = checkpoint_write(
            w, run,
            &(struct queue_node_write){.node_id = c->node,
                                       .attempt = c->attempt,
                                       .status = "waiting",
                                       .worker = w->cfg->id,
                                       .event_kind = "agent.needs_input",
                                       .event_message = why,
                                       .event_data = json_object_get(c->error, "waiting_for")});
        if (r > 0 && approval)
                r = buffered(run,
                             queue_writes_release(w->writes, run->id, run->epoch, "waiting",
                                                  due > 0 ? due : -1, why, NULL, run->deadline_ms));
        else if (r > 0)
                r = buffered(run,
                             queue_writes_release(w->writes, run->id, run->epoch, "needs_input", -1,
                                                  why, c->error, run->deadline_ms));
        if (r > 0) {
                effects_abort(w, run);
                mark_done(run);
        }
        return r;
}

/* Checkpoints a run's finished requests, in the order they ended. */
static void write_completions(struct worker *w, struct run *run)
{
        while (run->completions && !w->batch_error && run->fate == FATE_HELD) {
                struct completion *c = run->completions;
                int r = c->output ? checkpoint(w, run, c->node, c->attempt, "completed", NULL,
                                               c->output, NULL, NULL, NULL, NULL)
                        : agent_waits(c->error)
                            ? agent_needs_input(w, run, c)
                            : apply_failure(w, run, c->node, c->attempt, c->error);
                /* the snapshot in memory mirrors a success; a failure's record (retry time,
                 * final status) is read back */
                if (r <= 0 || !c->output ||
                    (run->kept &&
                     snapshot_note(run, run->kept, c->node, "completed",
                                   c->attempt < 1 ? 1 : c->attempt, c->output, NULL) < 0))
                        snapshot_forget(run);
                run->completions = c->next;
                free(c->node);
                json_decref(c->output);
                json_decref(c->error);
                free(c);
                if (r <= 0)
                        step_failed(w, run, r, "checkpoint effect");
        }
}

/* The turn's first statement: locks the runs of $1 = [{"id", "epoch"}, ...] still held at
 * that epoch (a run not returned is lost) — per run its record, then its queue row, in id
 * order: the lock order of 0011_run_queue.sql — and says how long each lease still runs. */
static const char BATCH_LOCK_SQL[] =
    "SELECT q.run_id, q.lease_epoch, (extract(epoch FROM q.lease_expires_at - now()) * "
    "1000)::bigint"
    " FROM jsonb_to_recordset($1::jsonb) AS h(id uuid, epoch bigint)"
    " JOIN workflow_runs r ON r.id = h.id"
    " JOIN run_queue q ON q.run_id = h.id AND q.lease_epoch = h.epoch"
    " WHERE q.claimed_by IS NOT NULL ORDER BY q.run_id FOR UPDATE OF r, q";

/*
 * The batch's first statements, a handful for all its runs: lock them in id order (a run
 * whose epoch moved on is lost; a run claimed in this transaction is locked by its claim
 * already), write the claim events, checkpoint finished requests, and read every snapshot
 * in one query.
 */
static void batch_prepare(struct worker *w)
{
        _cleanup_free_ char *param = NULL;
        _cleanup_pgresult_ PGresult *locked = NULL, *res = NULL;
        const char *params[1];
        bool reread = false;
        int r = 0, held = 0;

        for (int i = 0; i < w->nbatch; i++)
                if (!w->batch[i]->fresh)
                        w->held_scratch[held++] = w->batch[i];
        if (held > 0) {
                param = runs_param(w->held_scratch, held);
                if (!param) {
                        w->batch_error = -ENOMEM;
                        return;
                }
                params[0] = param;
                locked = db_query(w->db, BATCH_LOCK_SQL, 1, params, &r);
                if (!locked) {
                        w->batch_error = r;
                        return;
                }
                for (int i = 0; i < held; i++)
                        mark_lost(w->held_scratch[i], "lock");
        }
        worker_trace_mark(&w->trace, TRACE_LOCKED);
        held = 0;
        for (int i = 0; locked && i < PQntuples(locked); i++) {
                struct run *run = batch_find(w, PQgetvalue(locked, i, 0), PQgetvalue(locked, i, 1));
                int64_t left;
                if (!run)
                        continue;
                run->fate = FATE_HELD;
                /* the row says how long the lease still runs (database time, from the
                 * transaction's start, which came after turn_began): the lease surely holds
                 * until turn_began + that, renewal or not */
                if (str_to_int64(PQgetvalue(locked, i, 2), &left) == 0 &&
                    w->turn_began + left > run->lease_deadline)
                        run->lease_deadline = w->turn_began + left;
        }

        /* the claim events (run.started, ...): buffered, sent with the turn's other writes */
        for (int i = 0; i < w->nbatch; i++) {
                struct run *run = w->batch[i];
                if (run->fate == FATE_HELD && run->announce &&
                    (r = queue_writes_event(w->writes, run->id, run->epoch, run->announce, NULL, -1,
                                            "info", NULL, run->announce_data)) < 0) {
                        w->batch_error = r;
                        return;
                }
        }
        /* finished requests: checkpointed before the snapshots are read. Only a whole read
         * (a run with no snapshot in memory, or one a failure dropped) must see them: a run
         * held in memory has them mirrored there and its partial read reads no node, so
         * then they go with the turn's other writes, in its one statement */
        for (int i = 0; i < w->nbatch && !w->batch_error; i++) {
                bool had = w->batch[i]->completions != NULL;
                write_completions(w, w->batch[i]);
                if (had && w->batch[i]->fate == FATE_HELD && !w->batch[i]->kept)
                        reread = true;
        }
        if (reread)
                batch_flush(w);
        if (w->batch_error)
                return;

        /* one read for every snapshot; a held run missing from it is lost. A run claimed in
         * this turn has its snapshot from the claim: nothing was written for it since (its
         * claim event is buffered; a flush above writes its record's running state, which
         * reads the same: started_at is now() either way) and its rows are locked */
        for (int i = 0; i < w->nbatch; i++) {
                struct run *run = w->batch[i];
                if (run->fate != FATE_HELD)
                        continue;
                if (!(run->fresh && run->preload)) {
                        w->held_scratch[held++] = run;
                } else if (snapshot_finish(run, run->preload) < 0) {
                        w->batch_error = -ENOMEM;
                        return;
                }
        }
        free(param);
        param = runs_param(w->held_scratch, held);
        if (!param) {
                w->batch_error = -ENOMEM;
                return;
        }
        if (held == 0)
                return;
        params[0] = param;
        res = db_query(w->db, SNAPSHOT_SQL, 1, params, &r);
        if (!res) {
                w->batch_error = r;
                return;
        }
        for (int i = 0; i < held; i++)
                mark_lost(w->held_scratch[i], "load snapshot");
        for (int i = 0; i < PQntuples(res); i++) {
                struct run *run = batch_find(w, PQgetvalue(res, i, 0), PQgetvalue(res, i, 4));
                json_t *snap;
                if (!run || run->fate != FATE_LOST || strcmp(run->lost_where, "load snapshot"))
                        continue;
                snap = pgjson_loads(PQgetvalue(res, i, 1), 0, NULL);
                /* a run held in memory: its own nodes, the rest as read now */
                if (snap && run->kept && snapshot_merge(run, snap) < 0) {
                        json_decref(snap);
                        snap = NULL;
                }
                if (!snap || snapshot_finish(run, snap) < 0) {
                        json_decref(snap);
                        w->batch_error = -ENOMEM;
                        return;
                }
                run->fate = FATE_HELD;
                run->lost_where = NULL;
                json_decref(run->preload);
                run->preload = snap;
                run->preload_cancel = PQgetvalue(res, i, 2)[0] == 't';
                run->preload_pause = PQgetvalue(res, i, 3)[0] == 't';
        }
}

/* An agent node's session (src/agent): started or resumed from its journal. */
static int start_agent(struct worker *w, struct run *run, struct effect *e, const json_t *a,
                       char **why)
{
        struct agent_step step = {.run_id = run->id,
                                  .user_id = run->user_id,
                                  .epoch = run->epoch,
                                  .node_id = e->node,
                                  .attempt = e->attempt,
                                  .agent = json_object_get(a, "input")};

        return agent_session_start(w->agents, &step, e, &e->agent, why);
}

/*
 * Starts the requests whose START marks committed — only while the lease surely holds
 * (the loop's own deadline: last renewal sent + lease). A worker stopped between the
 * commit and here (SIGSTOP, a long pause) keeps them until the heartbeat confirms the
 * lease (read_mail), or forgets them when it reports the lease lost: a request leaves
 * after the lease was lost only if the worker stops in the moment between this check and
 * the request's first bytes, and then with the same key (src/queue/README.md).
 */
static void start_effects(struct worker *w, struct run *run)
{
        size_t i;
        json_t *a;

        if (json_array_size(run->to_start) == 0 || mono_ms() >= run->lease_deadline)
                return;

        json_array_foreach (run->to_start, i, a) {
                _cleanup_free_ char *why = NULL;
                struct effect *e = calloc(1, sizeof(*e));
                const char *delivery = jstr(a, "delivery");
                bool at_most_once = delivery && strcmp(delivery, "at_most_once") == 0;
                int r = -ENOMEM;

                if (e && (e->node = strdup(jstr(a, "node")))) {
                        _cleanup_json_ json_t *sent = NULL;
                        e->run = run;
                        e->attempt = jint(a, "attempt", 1);
                        if (strcmp(jstr(a, "kind"), "agent") == 0) {
                                r = start_agent(w, run, e, a, &why);
                        } else {
                                /* secrets go into the request that leaves only
                                 * (worker_secrets.c) */
                                r = worker_secrets_request(w->db, &w->kms, run->user_id, a, &sent,
                                                           &why);
                                if (r == 0)
                                        r = runtime_http_start(
                                            w->http, sent ? sent : json_object_get(a, "input"),
                                            jstr(a, "idempotency_key"),
                                            json_integer_value(json_object_get(a, "timeout_ms")),
                                            at_most_once, e, &e->transfer, &why);
                        }
                }
                if (r == 0) {
                        e->next = run->effects;
                        run->effects = e;
                        continue;
                }
                /* could not even start: a failed attempt, checkpointed next turn */
                struct completion *c = calloc(1, sizeof(*c));
                if (c && (c->node = strdup(jstr(a, "node")))) {
                        c->attempt = jint(a, "attempt", 1);
                        c->error = json_pack("{s:s, s:s}", "class", "error", "message",
                                             why ? why : "could not start the request");
                        c->next = run->completions;
                        run->completions = c;
                } else {
                        free(c);
                }
                if (e)
                        free(e->node);
                free(e);
        }
        json_array_clear(run->to_start);
}

static int claim(struct worker *w);

/* The open turn's claims are over: committed (the runs are held like any other now, and
 * renewed), or rolled back (nothing of them happened: forgotten, due again at once; the
 * next claim waits for the poll, so a failing turn is not retried in a tight loop). */
static void claims_settle(struct worker *w, bool committed)
{
        struct run *next;

        if (!committed)
                w->claim_more = false;

        for (struct run *run = w->runs; run; run = next) {
                next = run->next;
                if (!run->fresh)
                        continue;
                run->fresh = false;
                /* the claim's snapshot of a run the turn left out: its next turn reads it */
                json_decref(TAKE_PTR(run->preload));
                if (!committed)
                        run_drop(w, run);
        }
        held_publish(w);
}

/*
 * One loop turn: with claim_now, BEGIN and the claim first (one round trip, claim()); then
 * the due runs (at most BATCH_RUNS_MAX, in id order — the global lock order, so a batch
 * cannot deadlock with a renewal) in the same transaction, whose commit also commits the
 * claim, in the round trip of the turn's last writes. A run that finishes in its first turn
 * therefore costs one commit. After the commit: forget finished and lost runs, start the
 * requests. If anything failed, the transaction is rolled back: the runs claimed in it are
 * forgotten (they are due again), the others of the batch are abandoned to lease expiry.
 */
static void batch_run(struct worker *w, bool claim_now)
{
        int64_t now;
        int n = 0, r = 0;
        bool open = false;

        w->nbatch = 0;
        w->batch_error = 0;
        if (claim_now && w->nruns < w->cfg->concurrency) {
                w->turn_began = mono_ms();
                worker_trace_mark(&w->trace, TRACE_BEGIN);
                r = claim(w);
                worker_trace_mark(&w->trace, TRACE_BEGUN);
                if (r < 0) {
                        db_recover(w);
                        claims_settle(w, false);
                        return;
                }
                open = true;
        }
        now = mono_ms();
        for (struct run *run = w->runs; run && n < w->cfg->concurrency; run = run->next)
                if (run_due(run, now))
                        w->batch[n++] = run;
        if (n == 0) {
                if (open) {
                        r = db_commit(w->db);
                        if (r < 0) {
                                log_error("could not commit a claim: %s", db_last_error());
                                db_recover(w);
                        }
                        claims_settle(w, r == 0);
                }
                return;
        }
        if (n > BATCH_RUNS_MAX) {
                /* more due than one turn takes: those that have waited longest first, so
                 * under a sustained backlog every run gets its turn (a run claimed now and
                 * left out is committed as claimed and takes a later turn) */
                qsort(w->batch, (size_t)n, sizeof(*w->batch), run_due_cmp);
                n = BATCH_RUNS_MAX;
        }
        qsort(w->batch, (size_t)n, sizeof(*w->batch), run_cmp);
        w->nbatch = n;

        for (int i = 0; i < n; i++) {
                w->batch[i]->fate = FATE_HELD;
                w->batch[i]->last_turn = now;
        }
        if (!open) {
                w->turn_began = mono_ms();
                worker_trace_mark(&w->trace, TRACE_BEGIN);
                r = db_begin(w->db);
                worker_trace_mark(&w->trace, TRACE_BEGUN);
        }
        if (r == 0)
                batch_prepare(w);
        worker_trace_mark(&w->trace, TRACE_SNAPSHOT);
        for (int i = 0; r == 0 && i < n && !w->batch_error; i++) {
                struct run *run = w->batch[i];
                /* written (or lost): either way it is not announced again */
                run->announce = NULL;
                if (run->fate == FATE_HELD)
                        run_advance(w, run);
        }
        worker_trace_mark(&w->trace, TRACE_PLANNED);
        /* a failed statement dooms the transaction: nothing of the turn is committed, and
         * nothing it planned may leave (a START mark that was not committed permits
         * nothing) */
        if (r == 0)
                r = w->batch_error;
        if (r == 0)
                r = queue_writes_flush_commit(w->db, w->cfg->id, w->writes, batch_lost, w);
        worker_trace_mark(&w->trace, TRACE_COMMITTED);
        if (r == 0)
                worker_trace_turn(&w->trace, n, w->batch[0]->id);
        if (r < 0) {
                queue_writes_clear(w->writes);
                for (int i = 0; i < n; i++)
                        if (!w->batch[i]->fresh)
                                run_abandon(w, w->batch[i], r, "write a batch");
                db_recover(w);
                claims_settle(w, false);
                w->nbatch = 0;
                return;
        }
        claims_settle(w, true);
        for (int i = 0; i < n; i++) {
                struct run *run = w->batch[i];
                json_decref(run->announce_data);
                run->announce_data = NULL;
                if (run->fate == FATE_LOST)
                        run_lost(w, run, run->lost_where);
                else if (run->fate == FATE_DONE)
                        run_drop(w, run);
                else
                        start_effects(w, run);
        }
        w->nbatch = 0;
}

/* ---- effect completions ------------------------------------------------------------ */

/* Takes e out of its run's list of effects in flight. */
static void effect_unlink(struct effect *e)
{
        for (struct effect **p = &e->run->effects; *p; p = &(*p)->next)
                if (*p == e) {
                        *p = e->next;
                        return;
                }
}

/* A request ended: keep the result for the next batch (which checkpoints it before the
 * run is planned again). Takes ownership of output and error. */
static void effect_done(struct worker *w, struct effect *e, json_t *output, json_t *error)
{
        struct run *run = e->run;
        struct completion *c = calloc(1, sizeof(*c));

        effect_unlink(e);
        if (!c) {
                /* cannot keep the result: let the lease lapse, the step is re-run */
                json_decref(output);
                json_decref(error);
                free(e->node);
                free(e);
                run_abandon(w, run, -ENOMEM, "keep an effect's result");
                return;
        }
        c->node = e->node;
        c->attempt = e->attempt;
        c->output = output;
        c->error = error;
        free(e);
        /* appended, so results are checkpointed in the order they arrived */
        struct completion **tail = &run->completions;
        while (*tail)
                tail = &(*tail)->next;
        *tail = c;
        run->needs_plan = true;
}

/* An agent session ended (src/agent): its answer is the node's result, like a request's —
 * unless its journal lost the database (class "database"): nothing it did since can be
 * known to be durable, so the run is abandoned (at the loop's top level, not inside the
 * agent host that calls this) and resumed from its journal by whoever claims it next. */
static void agent_done(void *owner, void *userdata, json_t *output, json_t *error)
{
        struct worker *w = owner;
        struct effect *e = userdata;
        const char *klass = jstr(error, "class");

        e->agent = NULL; /* the session is gone */
        if (klass && strcmp(klass, "database") == 0) {
                log_error("run %s: %s", e->run->id, jstr(error, "message"));
                e->run->abandon = true;
                w->abandon = true;
                effect_unlink(e);
                json_decref(output);
                json_decref(error);
                free(e->node);
                free(e);
                return;
        }
        effect_done(owner, e, output, error);
}

/* The runs whose agents lost the database (agent_done): forgotten, their leases lapse. */
static void abandon_runs(struct worker *w)
{
        struct run *run = w->runs, *next;

        if (!w->abandon)
                return;
        w->abandon = false;
        for (; run; run = next) {
                next = run->next;
                if (run->abandon) {
                        log_warn("run %s: left to lease expiry; it resumes from its journal",
                                 run->id);
                        run_drop(w, run);
                }
        }
}

/* ---- claims ------------------------------------------------------------------------ */

/*
 * Whether this loop turn claims: on a NOTIFY hint, every --poll (counted from the last
 * claim sent), and at once after a claim that came back full, so a backlog is claimed as
 * fast as turns go rather than one batch per poll — while --concurrency leaves room and
 * the worker is not draining.
 */
static bool claim_wanted(struct worker *w, bool hint, int64_t now)
{
        if (w->draining || w->nruns >= w->cfg->concurrency)
                return false;
        return hint || w->claim_more || now >= w->next_claim;
}

/* How long the loop may sleep before its next claim (ms; the loop caps it): none after a
 * full claim, the rest of the poll otherwise, and no sooner than a poll from now when
 * there is no room (a run leaving makes the loop turn anyway). */
static int64_t claim_wait_ms(struct worker *w, int64_t now)
{
        if (w->nruns >= w->cfg->concurrency)
                return w->cfg->poll_ms;
        if (w->claim_more)
                return 0;
        return w->next_claim - now;
}

/*
 * Claims up to what --concurrency leaves room for, as the first statement of the turn's
 * transaction: BEGIN and the claim in one round trip. The claimed runs are `fresh` until
 * that transaction ends: locked by the claim, not renewed, committed (or rolled back) with
 * the turn (claims_settle). Returns 0, the transaction open, or a negative errno: a
 * statement failed, roll the transaction back.
 */
static int claim(struct worker *w)
{
        struct queue_claim claims[CLAIM_BATCH_MAX];
        int want = w->cfg->concurrency - w->nruns, n = 0, nheld = 0, r;
        int64_t sent = mono_ms(), sent_us = worker_trace_now_us();

        if (want > CLAIM_BATCH_MAX)
                want = CLAIM_BATCH_MAX;
        /* every run we hold: a lease of ours that expired (a turn that kept its row locked
         * past it, a slow renewal) is renewed by the heartbeat, never "rescued" from
         * ourselves into a second copy */
        for (struct run *x = w->runs; x && nheld < w->cfg->concurrency; x = x->next)
                w->claim_held[nheld++] = (struct queue_lease){.run_id = x->id, .epoch = x->epoch};
        /* with each claimed run's snapshot: the turn needs no read of its own for them */
        r = queue_begin_claim_runs(w->db, w->cfg->id, w->cfg->lease_ms, want, w->claim_held, nheld,
                                   claims, &n);
        /* the next poll counts from this claim, not from the end of the turn it opens; a
         * full claim leaves more due runs behind: the next turn claims again at once */
        w->next_claim = sent + w->cfg->poll_ms;
        w->claim_more = r == 0 && n == want;
        if (n > 0 || w->trace.hint_at)
                worker_trace_claim(&w->trace, sent_us, n, n > 0 ? claims[0].id : NULL);
        if (r < 0) {
                log_error("could not claim runs: %s", db_last_error());
                return r;
        }
        /* a copy in memory of a run claimed now, under an older epoch, is stale: the run
         * was released and claimed again, or taken over, since; it has lost its lease.
         * Found in one pass over the runs, the claims sorted by id (a search of the runs
         * per claim cost O(claims * runs)). */
        struct run *stale[CLAIM_BATCH_MAX] = {0};
        qsort(claims, (size_t)n, sizeof(*claims), claim_cmp);
        for (struct run *x = w->runs; x; x = x->next) {
                struct queue_claim *c =
                    bsearch(x->id, claims, (size_t)n, sizeof(*claims), claim_id_cmp);
                if (c)
                        stale[c - claims] = x;
        }
        for (int i = 0; i < n; i++) {
                struct run *run;
                _cleanup_json_ json_t *errors = NULL;

                if (stale[i])
                        run_lost(w, stale[i], "claimed again");
                run = calloc(1, sizeof(*run));
                if (!run) {
                        /* the claim is rolled back with the turn */
                        log_error("out of memory: could not take run %s", claims[i].id);
                        queue_claims_clear(claims, n);
                        return -ENOMEM;
                }
                str_copy(run->id, sizeof(run->id), claims[i].id);
                str_copy(run->user_id, sizeof(run->user_id), claims[i].user_id);
                str_copy(run->workflow_id, sizeof(run->workflow_id), claims[i].workflow_id);
                run->epoch = claims[i].epoch;
                run->fresh = true;
                /* read by the claim, as the turn's own read would have (batch_prepare) */
                run->preload = TAKE_PTR(claims[i].snapshot);
                run->preload_cancel = claims[i].cancel_requested;
                run->preload_pause = claims[i].pause_requested;
                run->deadline_ms = -1;
                /* the lease runs from the transaction's start, which came after `sent` */
                run->lease_deadline = sent + w->cfg->lease_ms;
                run->last_turn = sent;
                run->needs_plan = true;
                run->next = w->runs;
                if (w->runs)
                        w->runs->prev = run;
                w->runs = run;
                w->nruns++;
                run->announce = strcmp(claims[i].status_before, "queued") == 0    ? "run.started"
                                : strcmp(claims[i].status_before, "waiting") == 0 ? "run.resumed"
                                                                                  : "run.recovered";
                run->announce_data = json_pack("{s:s, s:i, s:s}", "worker", w->cfg->id, "claim",
                                               claims[i].attempt, "from", claims[i].status_before);

                r = wf_lookup(w, run->workflow_id, &run->wf, &errors);
                if (r < 0 && r != -ENOENT && r != -EINVAL) {
                        /* a database error (or memory): nothing is wrong with the run, so it
                         * is not failed; the turn is rolled back and the run claimed again */
                        log_error("could not load the workflow definition of run %s: %s", run->id,
                                  db_last_error());
                        queue_claims_clear(claims, n);
                        return r;
                }
                if (r < 0) {
                        _cleanup_json_ json_t *err = json_pack(
                            "{s:s, s:s, s:O?}", "class", "error", "message",
                            "the run's workflow definition cannot be loaded", "errors", errors);
                        r = queue_finish_run(w->db, run->id, run->epoch, "failed", NULL, err);
                        if (r < 0) {
                                queue_claims_clear(claims, n);
                                return r;
                        }
                        if (r == 0)
                                run_lost(w, run, "fail run");
                        else
                                run_drop(w, run);
                        continue;
                }
        }
        return 0;
}

/*
 * The loop thread's wait for its database (db_set_wait_hook): while a pipelined statement
 * runs (the turn's last writes and its COMMIT, a claim), libcurl goes on with the requests
 * in flight — sends, receives, and builds the outcome of each that finishes
 * (runtime_http_drive) — instead of the thread sitting idle; their completions are taken
 * after the turn, as before. Nothing new leaves here: a request starts only after the
 * commit of its START mark (start_effects), and no callback of the worker or of an agent
 * session runs (those would use the connection that is waiting).
 */
static void db_wait(void *arg, int fd)
{
        struct worker *w = arg;

        if (runtime_http_drive(w->http, 1000, fd) < 0) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                (void)poll(&p, 1, 1000);
        }
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

/* The worker registry (agently_workers) is for people and metrics only: liveness of a run
 * is decided by its lease. Failures here are logged and otherwise ignored. */
static void registry(PGconn *c, const struct worker_config *cfg, const char *sql, int nparams)
{
        char host[256] = "", pid[16], conc[16];
        const char *params[] = {cfg->id, host, pid, conc};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        gethostname(host, sizeof(host) - 1);
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        snprintf(conc, sizeof(conc), "%d", cfg->concurrency);
        res = db_query(c, sql, nparams, params, &r);
        if (!res)
                log_debug("worker registry: %s", db_last_error());
}

static const char REGISTER_SQL[] =
    "INSERT INTO agently_workers (id, hostname, pid, concurrency) "
    "VALUES ($1, $2, $3::integer, $4::integer) ON CONFLICT (id) DO UPDATE SET "
    "hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, concurrency = EXCLUDED.concurrency, "
    "started_at = now(), last_seen_at = now()";
static const char SEEN_SQL[] = "UPDATE agently_workers SET last_seen_at = now() WHERE id = $1";
static const char UNREGISTER_SQL[] = "DELETE FROM agently_workers WHERE id = $1";

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
                        if (db_connect(w->conninfo, &c) < 0 ||
                            db_exec(c, "LISTEN agently_runs") < 0) {
                                log_warn("heartbeat: could not connect: %s", db_last_error());
                                if (c)
                                        PQfinish(c);
                                c = NULL;
                                reconnect_at = now + 500;
                        } else {
                                registry(c, cfg, REGISTER_SQL, 4);
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
                        if (c)
                                registry(c, cfg, SEEN_SQL, 1);
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
                                int64_t at = worker_trace_now_us();
                                pthread_mutex_lock(&w->lock);
                                w->claim_hint = true;
                                if (!w->hint_at)
                                        w->hint_at = at;
                                pthread_mutex_unlock(&w->lock);
                                runtime_http_wakeup(w->http);
                        }
                }
        }
out:
        if (c) {
                registry(c, cfg, UNREGISTER_SQL, 1);
                PQfinish(c);
        }
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
        if (w->hint_at) {
                w->trace.hint_at = w->hint_at;
                w->hint_at = 0;
        }
        pthread_mutex_unlock(&w->lock);

        for (int i = 0; i < n; i++) {
                struct run *run = run_find(w, mail[i].id, mail[i].epoch);
                if (!run)
                        continue; /* released or finished since the beat was sent */
                if (mail[i].lost) {
                        run_lost(w, run, "heartbeat");
                        continue;
                }
                if (mail[i].renewed_at + w->cfg->lease_ms > run->lease_deadline)
                        run->lease_deadline = mail[i].renewed_at + w->cfg->lease_ms;
                run->lease_wait = false;
                /* requests held back for want of a confirmed lease leave now */
                start_effects(w, run);
                /* the next batch's snapshot carries the request and applies it */
                if (mail[i].cancel || mail[i].pause)
                        run->needs_plan = true;
        }
        free(mail);
}

/* ---- the loop ---------------------------------------------------------------------- */

/* Hands every run still held back to the queue, due now, in one transaction (id order). */
static void drain_finish(struct worker *w)
{
        int n = 0, r;

        for (struct run *run = w->runs; run; run = run->next) {
                effects_abort(w, run);
                w->batch[n++] = run;
        }
        qsort(w->batch, (size_t)n, sizeof(*w->batch), run_cmp);
        r = n > 0 ? db_begin(w->db) : 0;
        for (int i = 0; r == 0 && i < n; i++) {
                int k = queue_release_run(w->db, w->batch[i]->id, w->batch[i]->epoch, "queued", -1,
                                          "worker stopped");
                if (k < 0)
                        r = k;
                else if (k == 0) /* taken over before a heartbeat told us */
                        log_lease_lost(w->batch[i], "drain");
        }
        if (n > 0 && r == 0)
                r = db_commit(w->db);
        if (r < 0) {
                log_error("could not release %d runs: %s; they return to the queue when their "
                          "leases expire",
                          n, db_last_error());
                db_recover(w);
        }
        while (w->runs)
                run_drop(w, w->runs);
}

/*
 * The worker's connections, with limits that keep a frozen (SIGSTOP, a long pause) or
 * cut-off (a partition) worker from pinning the runs it holds. A loop turn holds its runs'
 * rows locked from its first statement to its commit, and SKIP LOCKED hides locked rows
 * from every rescuer; so without a limit, a worker frozen mid-turn keeps its runs forever,
 * lease or not. The numbers (src/worker/README.md, "Database sessions"):
 *  - idle in transaction: lease - heartbeat. The lease of a run lapses at the earliest one
 *    heartbeat interval less than a lease after the worker froze (its last renewal can be
 *    that old), and the server has ended the session by then: the rescue waits for the
 *    lease, not longer. No shorter: a turn over a big run (a 10,000-item map) plans for a
 *    while between two statements, and ending its session would abandon its runs.
 *  - no statement_timeout: a statement of a turn over a big run (its snapshot, a flush of
 *    4,096 writes) can take longer than a short lease on a loaded machine, and is the
 *    server's own work; cutting it would keep such a run from ever progressing.
 *  - TCP keepalives, both ends: probe after lease/6 of silence (1-30 s), every lease/6,
 *    three probes: a dead peer is noticed in about 2/3 of the lease (20 s by default).
 *  - tcp_user_timeout, both ends: lease/2 of unacknowledged data ends the connection.
 */
/* The descriptor the loop waits on besides libcurl's: the signalfd and the agent sessions'
 * pipes (an epoll set inside an epoll set is readable when one of its own is). */
static int loop_fd_open(struct worker *w)
{
        int fds[2] = {w->cfg->signal_fd, agent_host_fd(w->agents)};

        w->loop_fd = epoll_create1(EPOLL_CLOEXEC);
        if (w->loop_fd < 0)
                return -errno;
        for (int i = 0; i < 2; i++) {
                struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
                if (fds[i] >= 0 && epoll_ctl(w->loop_fd, EPOLL_CTL_ADD, fds[i], &ev) < 0)
                        return -errno;
        }
        return 0;
}

static int worker_conninfo(const struct worker_config *cfg, char **out)
{
        _cleanup_free_ char *name = str_printf("agently worker %s", cfg->id);
        int64_t keepalive = cfg->lease_ms / 6;
        struct db_session_limits limits = {
            .idle_in_transaction_ms = cfg->lease_ms - cfg->heartbeat_ms,
            .keepalive_ms = keepalive < 1000    ? 1000
                            : keepalive > 30000 ? 30000
                                                : keepalive,
            .tcp_user_timeout_ms = cfg->lease_ms / 2,
            .application_name = name,
        };

        if (!name)
                return -ENOMEM;
        return db_conninfo_with_limits(cfg->conninfo, &limits, out);
}

int worker_run(const struct worker_config *cfg)
{
        struct worker w = {.cfg = cfg, .loop_fd = -1};
        pthread_t hb;
        bool hb_started = false;
        _cleanup_free_ char *ua = NULL;
        int r;

        if (cfg->concurrency < 1 || cfg->concurrency > WORKER_MAX_CONCURRENCY ||
            cfg->heartbeat_ms <= 0 || cfg->heartbeat_ms >= cfg->lease_ms)
                return -EINVAL;
        srandom((unsigned)(getpid() ^ mono_ms()));
        worker_trace_init(&w.trace);
        pthread_mutex_init(&w.lock, NULL);
        w.held = calloc((size_t)cfg->concurrency, sizeof(*w.held));
        w.held_ids = calloc((size_t)cfg->concurrency, sizeof(*w.held_ids));
        w.batch = calloc((size_t)cfg->concurrency, sizeof(*w.batch));
        w.held_scratch = calloc((size_t)cfg->concurrency, sizeof(*w.held_scratch));
        w.claim_held = calloc((size_t)cfg->concurrency, sizeof(*w.claim_held));
        w.writes = queue_writes_new();
        if (!w.held || !w.held_ids || !w.batch || !w.held_scratch || !w.claim_held || !w.writes ||
            secrets_kms_init(&w.kms, cfg->data_dir) < 0) {
                r = log_errno(-ENOMEM, "could not allocate the run table");
                goto out;
        }
        r = worker_conninfo(cfg, &w.conninfo);
        if (r < 0) {
                log_errno(r, "%s", db_last_error());
                goto out;
        }
        r = db_connect(w.conninfo, &w.db);
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
        r = agent_host_new(&(struct agent_host_config){.db = w.db,
                                                       .http = w.http,
                                                       .executor_path = cfg->executor_path
                                                                            ? cfg->executor_path
                                                                            : "/proc/self/exe",
                                                       .secrets_dir = cfg->data_dir,
                                                       .llm_prices = cfg->llm_prices,
                                                       .public_url = cfg->public_url,
                                                       .done = agent_done,
                                                       .owner = &w},
                           &w.agents);
        if (r == 0)
                r = loop_fd_open(&w);
        if (r < 0) {
                log_errno(r, "could not set up agent sessions");
                goto out;
        }
        r = -pthread_create(&hb, NULL, heartbeat_main, &w);
        if (r < 0) {
                log_errno(r, "could not start the heartbeat thread");
                goto out;
        }
        hb_started = true;
        /* while a turn's writes and COMMIT run, the requests in flight go on (db_wait) */
        db_set_wait_hook(db_wait, &w);
        log_info("worker %s started: concurrency %d, lease %lldms, heartbeat %lldms", cfg->id,
                 cfg->concurrency, (long long)cfg->lease_ms, (long long)cfg->heartbeat_ms);

        for (;;) {
                int64_t now = mono_ms(), timeout;
                bool hint = false;
                void *ud;
                json_t *output, *error;

                read_mail(&w, &hint);

                batch_run(&w, claim_wanted(&w, hint, now));
                if (w.held_stale)
                        held_publish(&w);

                if (w.draining &&
                    ((runtime_http_active(w.http) == 0 && agent_host_active(w.agents) == 0) ||
                     mono_ms() >= w.drain_deadline)) {
                        drain_finish(&w);
                        log_info("worker %s drained", cfg->id);
                        r = 0;
                        break;
                }

                now = mono_ms();
                timeout = w.draining ? 100 : claim_wait_ms(&w, now);
                for (struct run *run = w.runs; run; run = run->next) {
                        if (run->completions || run->announce)
                                timeout = 0;
                        else if (run->needs_plan && !run->lease_wait)
                                timeout = 0;
                        if (run->plan_at && run->plan_at - now < timeout)
                                timeout = run->plan_at - now;
                }
                if (timeout < 0)
                        timeout = 0;
                if (timeout > 1000)
                        timeout = 1000;
                r = runtime_http_poll(w.http, (int)timeout, w.loop_fd);
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
                agent_host_poll(w.agents);
                while (runtime_http_next_done(w.http, &ud, &output, &error)) {
                        if (!agent_host_http_done(w.agents, ud, output, error))
                                effect_done(&w, ud, output, error);
                }
                abandon_runs(&w);
        }

out:
        db_set_wait_hook(NULL, NULL);
        if (hb_started) {
                pthread_mutex_lock(&w.lock);
                w.stop = true;
                pthread_mutex_unlock(&w.lock);
                pthread_join(hb, NULL);
        }
        while (w.runs)
                run_drop(&w, w.runs);
        agent_host_free(w.agents);
        if (w.loop_fd >= 0)
                close(w.loop_fd);
        runtime_http_free(w.http);
        for (int i = 0; i < w.ncache; i++)
                wf_free(w.cache[i].wf);
        if (w.db)
                PQfinish(w.db);
        free(w.conninfo);
        free(w.held);
        free(w.held_ids);
        free(w.batch);
        free(w.held_scratch);
        free(w.claim_held);
        queue_writes_free(w.writes);
        secrets_kms_release(&w.kms);
        free(w.mail);
        pthread_mutex_destroy(&w.lock);
        return r;
}
