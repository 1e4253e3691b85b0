/*
 * The workflow engine: a PURE library (no database, no network, no clock, no I/O) that
 * parses and validates workflow definitions and, given a JSON snapshot of a run's state,
 * plans what happens next. The worker owns every effect: it builds the snapshot from
 * Postgres (with database time in "now_ms"), calls wf_plan(), applies the returned actions
 * (checkpointing each, fenced on its lease), and plans again. The API calls wf_parse() /
 * wf_validate() on `workflow apply`. See src/engine/README.md for the planner contract and
 * docs/workflows.md for the user-facing format.
 *
 * Interface stability: this header is published; changes are additive only. Every function
 * returns 0 or a negative errno; JSON passed in is never modified or stolen; JSON returned
 * through an out parameter is a new reference the caller owns (json_decref) and may share
 * immutable sub-values with the workflow: do not mutate it in place.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* ---- Limits (every size a user controls has one) ---------------------------------- */
#define WF_MAX_NODES            10000  /* static nodes per workflow */
#define WF_MAX_MAP_ITEMS        100000 /* items a map expression may yield */
#define WF_MAX_MAP_CONCURRENCY  1000
#define WF_MAX_LOOP_ITERATIONS  10000
#define WF_MAX_ATTEMPTS         100
#define WF_MAX_IDEMPOTENCY_KEY  255  /* characters of an Idempotency-Key a definition sets */
#define WF_EXPR_MAX_LEN         4096 /* bytes of one expression */
#define WF_EXPR_MAX_DEPTH       64   /* nesting of one expression */
#define WF_MAX_ERRORS           200  /* validation errors reported (then one "and N more") */
#define WF_MAX_DEFINITION_BYTES (8 * 1024 * 1024) /* wf_parse_text input */

/* A parsed, validated, immutable workflow. Safe to share between threads for reading
 * (wf_plan and friends never modify it). */
struct wf_workflow;

/* ---- Definitions ------------------------------------------------------------------ */

/*
 * Validates `definition` and builds a workflow. The definition is deep-copied; the caller
 * keeps ownership of its argument.
 * Returns 0 with *out set and *errors NULL; -EINVAL with *out NULL and *errors a new array
 * of every problem found (at most WF_MAX_ERRORS):
 *   [{"node": "<node id>" | null, "field": "/nodes/2/retry/max_attempts", "message": "..."}]
 * or -ENOMEM (both NULL). errors may be NULL if the caller does not want them.
 */
int wf_parse(const json_t *definition, struct wf_workflow **out, json_t **errors);

/* Same as wf_parse() from JSON text (at most WF_MAX_DEFINITION_BYTES); a JSON syntax error
 * is reported as one error {"node": null, "field": "", "message": "invalid JSON at line L
 * column C: ..."}. */
int wf_parse_text(const char *text, size_t len, struct wf_workflow **out, json_t **errors);

/* wf_parse() without keeping the result: 0 if valid, else -EINVAL with *errors. */
int wf_validate(const json_t *definition, json_t **errors);

/* Accepts NULL. */
void wf_free(struct wf_workflow *wf);
static inline void wf_freep(struct wf_workflow **wf)
{
        wf_free(*wf);
}
#define _cleanup_wf_ __attribute__((cleanup(wf_freep)))

/* Borrowed strings/values, valid while wf lives. description is NULL when absent;
 * timeout is 0 when the workflow has none. wf_definition() is the validated copy. */
const char *wf_name(const struct wf_workflow *wf);
const char *wf_description(const struct wf_workflow *wf);
int64_t wf_timeout_ms(const struct wf_workflow *wf);
size_t wf_node_count(const struct wf_workflow *wf);
const json_t *wf_definition(const struct wf_workflow *wf);

/* The node kind ("http", "sleep", ...) of a static node id or of a dynamic one
 * ("fanout[12]" is the map's template kind, "poll#3" the loop body's kind); NULL if the
 * id names no node. Borrowed static string. */
const char *wf_node_kind(const struct wf_workflow *wf, const char *node_id);

/* The canonical text of a definition, as the API compares definitions: jansson's dump
 * with JSON_SORT_KEYS | JSON_COMPACT. Returns a malloc'd string (caller frees) or NULL on
 * allocation failure. */
char *wf_canonical_json(const json_t *definition);

/* ---- Stored agents ---------------------------------------------------------------- */

/*
 * The references to stored agents (/v1/agents) of wf's agent nodes, map and loop templates
 * included, in definition order: *refs is a new array of
 *   {"node": "<node id>", "field": "/nodes/2/agent/ref", "name": "researcher",
 *    "version": n | null (null: the latest when a run is created),
 *    "prompt": bool (the node gives its own prompt)}
 * The API checks them against the user's agents on apply and stores them with the version
 * (workflows.agent_refs), from which each run pins the versions it uses when it is created
 * (workflow_runs.agent_versions). Returns 0 or -ENOMEM.
 */
int wf_agent_refs(const struct wf_workflow *wf, json_t **refs);

/* The key of a reference in a run's pins and in snapshot.agents: "researcher" (the latest
 * at run creation) or "researcher@3". Malloc'd; NULL on allocation failure. */
char *wf_agent_ref_key(const char *name, int64_t version);

/* ---- Notification channels (channel.c) -------------------------------------------- */

/* The most subscriptions a workflow's "notifications" list may hold. */
#define WF_MAX_SUBSCRIPTIONS 20

/*
 * Checks a notification channel as a definition writes it ({"kind": "email", "to": ...},
 * {"kind": "slack", "url": ...}, {"kind": "webhook", "url": ..., "secret"?: vault name};
 * docs/notifications.md). Returns 0, or -EINVAL with a message for people in msg (len
 * bytes) and *field set to the JSON path of the problem below the channel ("" or "/to").
 */
int wf_channel_check(const json_t *channel, char *msg, size_t len, const char **field);

/* Checks one entry of a workflow's "notifications" list ({"on": [events], "channel"}; the
 * channel itself is checked by wf_channel_check()). Same contract. */
int wf_subscription_check(const json_t *subscription, char *msg, size_t len, const char **field);

/* ---- Time scale (time_scale.c) ---------------------------------------------------- */

/*
 * A run may be started with a time scale (docs/workflows.md, "Dry runs: time_scale"):
 * every duration the run WAITS — sleep, wait_event, subworkflow and workflow timeouts,
 * retry back-off, approval deadlines and escalation steps — is divided by it, so
 * time_scale 86400 turns a day into a second. Durations that bound work (an http
 * attempt's timeout, an agent's budget) are not scaled. The scale is recorded with the
 * run and reaches the planner as snapshot.time_scale; these functions are its one home.
 */
#define WF_TIME_SCALE_MIN 0.001
#define WF_TIME_SCALE_MAX 1000000.0

/* Checks a time scale as a client sends it (a JSON number, WF_TIME_SCALE_MIN to
 * WF_TIME_SCALE_MAX). 0 with *scale set, or -EINVAL with a message for people in msg. */
int wf_time_scale_check(const json_t *value, double *scale, char *msg, size_t len);

/* ms divided by scale, rounded up (a positive duration stays at least 1 ms); ms itself
 * when scale is 1 or not a valid scale. */
int64_t wf_time_scaled_ms(int64_t ms, double scale);

/* The snapshot's "time_scale" (a number; absent or invalid: 1). */
double wf_snapshot_time_scale(const json_t *snapshot);

/* When the run's own timeout passes, in database ms: started_at_ms + the workflow's
 * timeout scaled by the snapshot's time scale; -1 when the workflow has no timeout or the
 * snapshot no start. */
int64_t wf_run_deadline_ms(const struct wf_workflow *wf, const json_t *snapshot);

/* ---- Planning --------------------------------------------------------------------- */

/*
 * Plans the next step of a run. `snapshot` (read only, never kept):
 *   {"run_id": "<uuid>", "input": <run input>, "now_ms": <database now, ms since epoch>,
 *    "started_at_ms": <run start>, "engine_state": {} (reserved, may be absent),
 *    "time_scale": <the run's time scale> (optional, default 1: every duration the plan
 *    waits is divided by it, see wf_time_scaled_ms),
 *    "nodes": {"<node id>": {"status": "started|waiting|completed|failed|skipped|
 *                                        interrupted|canceled",
 *                            "attempt": n, "output": ..., "error": ...,
 *                            "wake_at_ms": n, "retry_at_ms": n, "started_at_ms": n}, ...},
 *    "in_flight": ["<node id>", ...],   (nodes THIS worker is executing right now)
 *    "signals": {"<event>": [{"id": "...", "payload": ...}, ...]}, (unconsumed, oldest first)
 *    "children": {"<node id>": {"status": "...", "output": ..., "error": ...,
 *                               "attempt": n (the node attempt that started this child)}},
 *    "approvals": {"<node id>": {"id": "<uuid>", "attempt": n (the node attempt that asked),
 *                                "status": "pending|approved|rejected|expired|canceled",
 *                                "decision": {...} | null, "expires_at_ms": n | null}},
 *      (the latest approval of each approval node; may be absent)
 *    "agents": {"<wf_agent_ref_key()>": {"version": n, "definition": {...}}}}
 *      (the stored agents this run pinned when it was created; may be absent. An agent
 *      node whose reference is missing here fails its attempt and says so)
 * "nodes" holds the LATEST attempt of each node that has a record, static ids and dynamic
 * ones ("fanout[12]" for map item 12, "poll#3" for loop iteration 3). A node with no record
 * has not been reached. Every part but "run_id", "input" and "now_ms" may be absent, and an
 * absent part reads as empty (the database leaves empty parts out: 0057).
 *
 * On success *actions is a new JSON array, in a deterministic order; planning the same
 * snapshot twice yields equal arrays. Action shapes:
 *   {"action":"execute","node":id,"attempt":n,"kind":"http","input":<resolved input>,
 *    "timeout_ms":n|null,"delivery":"at_least_once|at_most_once","idempotency_key":"...",
 *    "reexecution":bool[,"secrets":["NAME",...]]}
 *       do the effect; record the node "started" (attempt n) BEFORE the effect for
 *       at_most_once, and keep the node in "in_flight" while executing. For http, input is
 *       {"method","url","headers","body","expect_status":[[lo,hi],...]} and headers already
 *       carry "Idempotency-Key": the definition's own (any header-name case, sent as given;
 *       then idempotency_key is that value too) or wf_idempotency_key(). reexecution=true:
 *       the same attempt re-run after a crash. secrets (present when the request names
 *       any with `${ secrets.NAME }`): input holds "[secret:NAME]" where each was used —
 *       record it so — and only for the names listed here, the executor puts the secret's
 *       value in the request that leaves (src/secrets: secrets_expand_json()).
 *   {"action":"complete","node":id,"output":any[,"signal_id":"..."]}
 *       record the node completed; consume the signal if signal_id is present.
 *   {"action":"skip","node":id,"reason":"when was false|branch not taken|dependency skipped"}
 *   {"action":"sleep","node":id,"wake_at_ms":n}     record "waiting" with wake_at_ms
 *   {"action":"wait_signal","node":id,"event":"...","timeout_at_ms":n|null}
 *       record "waiting" with wake_at_ms = timeout_at_ms (absent if null)
 *   {"action":"start_child","node":id,"attempt":n,"workflow":"name","version":n|null,
 *    "input":any,"idempotency_key":"..."}
 *       create the child run (idempotently on the key) and record the node "waiting",
 *       in one transaction
 *   {"action":"fail_node","node":id,"attempt":n,"error":{"class":...,"message":...}}
 *       this attempt failed: apply wf_on_node_failure() exactly as for a failed execute
 *   {"action":"request_approval","node":id,"attempt":n,"approval":{"title","context":{...},
 *    "proposed_action","reviewers":[...],"channels":[...],"quorum":n,
 *    "forbid_self_approval":bool,"timeout_ms":n|null,"on_timeout":"reject|approve|escalate|
 *    fail","escalation":[{"contacts":[...],"timeout_ms":n}]?}}
 *       create the node attempt's approval once (idempotently: a re-execution finds it),
 *       with its notifications, and record the node "waiting"; the decision arrives in
 *       snapshot.approvals (approved: the node completes with the decision as its output;
 *       rejected: it fails with class "rejected"; expired: class "timeout")
 *   {"action":"approval_timeout","node":id,"approval_id":"<uuid>"}
 *       the approval's deadline passed while pending: apply its on_timeout (decide it, or
 *       escalate to the next level with a new deadline) unless a person decided first, then
 *       plan again from a fresh snapshot
 *   {"action":"finish","status":"completed","output":any}
 *   {"action":"finish","status":"failed","error":{"node":id|null,"class":...,"message":...}}
 *   {"action":"needs_input","node":id,"error":{...}}   (on_failure escalate)
 *   {"action":"wait","wake_at_ms":n|null}
 * finish, needs_input and wait always come alone. The worker loops: plan, apply every
 * action, plan again, until the plan is a single finish, needs_input or wait. On wait with
 * executions still in flight, it keeps the run and re-plans when one ends or at wake_at_ms;
 * with none in flight it releases the run (run_at = wake_at_ms; null: only a signal, a
 * child or a person wakes it).
 *
 * Returns 0, -EINVAL if the snapshot is malformed (*actions NULL), -ENOMEM.
 */
int wf_plan(const struct wf_workflow *wf, const json_t *snapshot, json_t **actions);

/*
 * wf_plan, and *then (a new reference, or NULL): when every action is an execute of an
 * http or agent node, the plan that would follow once they are all started and in flight
 * — always {"action":"wait","wake_at_ms":n|null} — so that a worker need not plan a big
 * run (a 10,000-item map) a second time in the same turn only to learn that it waits.
 * NULL whenever planning again could find more to do.
 */
int wf_plan_then(const struct wf_workflow *wf, const json_t *snapshot, json_t **actions,
                 json_t **then);

/*
 * Planning a run whose snapshot is kept between plans (plan_cache.c). A worker that keeps a
 * held run's snapshot in memory and updates it with its own writes (src/worker) plans a
 * map in O(items whose record changed) instead of O(items): the cache, one per run,
 * remembers the state of every map item as of the last plan over the same snapshot.nodes
 * object (the same json_t, held by the cache). The contract: between two plans with one
 * cache, every record set in that nodes object is noted with wf_plan_cache_note() (the
 * record must be an object, as in any snapshot); a snapshot with another nodes object
 * (read again) makes the cache start afresh, and so does another workflow. Planning with a
 * cache yields exactly the actions wf_plan_then() yields for the same snapshot.
 * The cache is the caller's: one run, one thread at a time.
 */
struct wf_plan_cache;

/* NULL on allocation failure. */
struct wf_plan_cache *wf_plan_cache_new(void);
/* Accepts NULL. */
void wf_plan_cache_free(struct wf_plan_cache *cache);
/* The record of node_id ("fan[12]", or any other id) in the cached snapshot.nodes changed.
 * Accepts a NULL cache. Never fails: a note it cannot keep makes the next plan read every
 * item of that map again. */
void wf_plan_cache_note(struct wf_plan_cache *cache, const char *node_id);
/* wf_plan_then() through cache (NULL: wf_plan_then() itself). */
int wf_plan_then_cached(const struct wf_workflow *wf, const json_t *snapshot,
                        struct wf_plan_cache *cache, json_t **actions, json_t **then);

/*
 * Decides what follows a failed attempt of node_id (static or dynamic id). error:
 *   {"class": one of the failure classes of docs/workflows.md (connect, network, timeout,
 *    http_429, http_4xx, http_5xx, http_status, too_large, error, interrupted; anything
 *    else counts as error), "status": n (http), "retry_after_ms": n (optional, e.g. from
 *    Retry-After), "message": "..."}
 * random: any uniformly random 64-bit value (the jitter source; pass a fixed value in
 * tests). On success *decision is one of
 *   {"retry_at_ms": n, "attempt": attempt+1, "delay_ms": d, "max_attempts": m,
 *    "status": "failed|interrupted"}
 *       record the failed attempt with "retry_at_ms" (or the next attempt as "waiting"
 *       with wake_at_ms) and release the run until then;
 *   {"final": "fail|continue|escalate", "max_attempts": m, "status": "failed|interrupted",
 *    "reason": "why no further attempt, for people"}
 *       record the node with "status" (final); the next plan finishes the run, lets
 *       dependents run, or asks for a person, respectively.
 * "status" is "interrupted" when the attempt's outcome is unknown: class interrupted, or
 * an at_most_once node failing with timeout, network or http_5xx (the request may have
 * been acted on). Such a failure is retried only when the node's retry_on names its class
 * (the at_most_once default retries only connect and http_429).
 * Returns 0, -ENOENT if node_id names no node, -EINVAL on a malformed error, -ENOMEM.
 */
int wf_on_node_failure(const struct wf_workflow *wf, const char *node_id, int attempt,
                       const json_t *error, int64_t now_ms, uint64_t random, json_t **decision);

/* wf_on_node_failure() for a run with a time scale (wf_time_scaled_ms): the back-off
 * delay is divided by time_scale (1.0: as wf_on_node_failure); a Retry-After is not. */
int wf_on_node_failure_scaled(const struct wf_workflow *wf, const char *node_id, int attempt,
                              const json_t *error, int64_t now_ms, double time_scale,
                              uint64_t random, json_t **decision);

/*
 * What a failed attempt's event says, from its error and wf_on_node_failure()'s decision:
 * *message for people ("timeout: no complete answer within 1000 ms (...) (attempt 1 of 3,
 * 1s); attempt 2 in 1s", or "...; no further attempt: <reason>") and *data
 * {"class","status"?,"duration_ms"?,"attempt","max_attempts","next_attempt": n|null,
 *  "retry_at_ms": n|null,"delay_ms"?,"final"?,"reason"?}. Both new (caller frees/decrefs).
 * Returns 0 or -ENOMEM (then both NULL).
 */
int wf_failure_event(const json_t *error, int attempt, const json_t *decision, char **message,
                     json_t **data);

/* The idempotency key of node_id's side effects in run_id: "<run_id>:<node_id>", the same
 * on every attempt and re-execution, different for every other node or run (at most 255
 * bytes for ids within the limits). Malloc'd; NULL on allocation failure. */
char *wf_idempotency_key(const char *run_id, const char *node_id);

/*
 * Rerun support: the static node ids (definition order) whose recorded outputs a rerun
 * from from_node_id may reuse: every node that is neither from_node_id nor downstream of
 * it (through after, or a condition's then/else). A reused map or loop node brings its
 * dynamic item records along. *ids is a new array. Returns 0 or -ENOENT (unknown node).
 */
int wf_nodes_before(const struct wf_workflow *wf, const char *from_node_id, json_t **ids);
