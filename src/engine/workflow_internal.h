/*
 * Engine-internal model of a parsed workflow, shared by the parser (workflow.c), the node
 * kind table (kinds.c) and the planner (plan.c). A struct wf_workflow owns everything
 * reachable from it and is immutable after wf_parse() returns.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "engine.h"
#include "expr_internal.h"

enum wf_on_failure { WF_ON_FAILURE_FAIL, WF_ON_FAILURE_CONTINUE, WF_ON_FAILURE_ESCALATE };
enum wf_delivery { WF_AT_LEAST_ONCE, WF_AT_MOST_ONCE };
enum wf_backoff { WF_BACKOFF_EXPONENTIAL, WF_BACKOFF_FIXED };

/* One bit per failure class (the vocabulary: policy.c's table, docs/workflows.md). */
enum {
        WF_RETRY_NETWORK = 1 << 0,
        WF_RETRY_TIMEOUT = 1 << 1,
        WF_RETRY_HTTP_5XX = 1 << 2,
        WF_RETRY_HTTP_429 = 1 << 3,
        WF_RETRY_ERROR = 1 << 4,
        WF_RETRY_INTERRUPTED = 1 << 5,
        WF_RETRY_CONNECT = 1 << 6,
        WF_RETRY_HTTP_4XX = 1 << 7,
        WF_RETRY_HTTP_STATUS = 1 << 8,
        WF_RETRY_TOO_LARGE = 1 << 9,
};
#define WF_RETRY_DEFAULT_ON                                                                        \
        (WF_RETRY_CONNECT | WF_RETRY_NETWORK | WF_RETRY_TIMEOUT | WF_RETRY_HTTP_5XX |              \
         WF_RETRY_HTTP_429)
/* at_most_once: only failures where the request surely did not take effect */
#define WF_RETRY_DEFAULT_ON_AT_MOST_ONCE (WF_RETRY_CONNECT | WF_RETRY_HTTP_429)
/* the classes after which an at_most_once request may have been acted on */
#define WF_RETRY_AMBIGUOUS (WF_RETRY_NETWORK | WF_RETRY_TIMEOUT | WF_RETRY_HTTP_5XX)

/* The bits a retry_on entry stands for (0: not a class retry_on accepts); "network" also
 * covers "connect", so lists written before "connect" existed keep their meaning. */
unsigned wf_retry_on_bits(const char *name);
/* "connect, network, ..." — every name wf_retry_on_bits() accepts, for error messages. */
const char *wf_retry_on_names(void);

struct wf_retry {
        int max_attempts;
        enum wf_backoff backoff;
        int64_t initial_ms;
        int64_t max_ms;
        bool jitter;
        unsigned retry_on;
        bool retry_on_given; /* the definition wrote retry_on (else the default applies) */
};

struct wf_status_range {
        int lo, hi;
};

struct wf_kind;

struct wf_node {
        char *id;     /* NULL for a map/loop template */
        size_t index; /* position in nodes[] */
        const struct wf_kind *kind;
        struct wf_node *parent; /* the map/loop owning this template */

        size_t *deps; /* after + implicit condition dependencies, deduplicated */
        size_t n_deps;
        size_t *dependents;
        size_t n_dependents;
        struct wf_gate {
                size_t condition;
                bool then_branch;
        } * gates; /* conditions whose then/else list this node */
        size_t n_gates;

        struct wf_expr *when;
        struct wf_retry retry;
        int64_t timeout_ms; /* 0: none */
        enum wf_on_failure on_failure;
        enum wf_delivery delivery;

        /* http */
        char *method;
        struct wf_tmpl *request; /* {url, headers, body} */
        struct wf_status_range *expect;
        size_t n_expect;
        /* sleep */
        int64_t duration_ms;
        struct wf_expr *until; /* sleep: time; loop: stop condition */
        /* wait_event */
        char *event;
        /* condition */
        struct wf_expr *condition;
        size_t *then_nodes, n_then, *else_nodes, n_else;
        /* map */
        struct wf_expr *items;
        int concurrency;
        /* map and loop */
        struct wf_node *body;
        int max_iterations;
        /* subworkflow */
        char *workflow;
        int64_t version; /* 0: latest */
        struct wf_tmpl *input;
        /* transform */
        struct wf_tmpl *output;
        /* agent: the agent object (provider, model, prompt, tools, budget, ...); for a
         * reference to a stored agent (agent_ref set), the node's overrides only */
        struct wf_tmpl *agent;
        char *agent_ref;           /* the stored agent's name, or NULL (inline) */
        int64_t agent_ref_version; /* 0: the latest when the run was created */
        char *agent_ref_field;     /* where the definition names it ("/nodes/2/agent/ref") */
        bool agent_ref_prompt;     /* the node gives its own prompt */
        /* approval: {title, context, proposed_action} rendered when the node is reached, and
         * the validated policy {reviewers, channels, quorum, forbid_self_approval,
         * on_timeout, escalation: [{contacts, timeout_ms}]} */
        struct wf_tmpl *approval;
        json_t *approval_policy;
        /* notify: {"channel", "title", "text", "links"} (the channel literal, the rest
         * templates) */
        struct wf_tmpl *notify;
};

struct wf_workflow {
        json_t *definition;
        char *name;
        char *description;
        int64_t timeout_ms;
        struct wf_tmpl *output;
        struct wf_node *nodes;
        size_t n_nodes;
        size_t *topo;  /* node indexes in a topological order (dependencies first) */
        json_t *by_id; /* {"<id>": index} */
};

/* Looks up a static node; NULL if absent. */
const struct wf_node *wf_find_node(const struct wf_workflow *wf, const char *id);

/* Resolves a static or dynamic id ("m[3]", "l#2") to the node whose policy applies (the
 * template for dynamic ids); NULL if unknown. */
const struct wf_node *wf_resolve_node(const struct wf_workflow *wf, const char *id);

/* ---- Node kinds: a small table; later issues add agent, approval, notify ---- */

enum {
        WF_KIND_EFFECT = 1 << 0,      /* the worker performs it (execute action) */
        WF_KIND_TEMPLATABLE = 1 << 1, /* may be a map/loop body */
        WF_KIND_RETRY = 1 << 2,       /* accepts retry and delivery */
        WF_KIND_TIMEOUT = 1 << 3,     /* accepts timeout */
};

struct wf_parse_ctx;
struct wf_plan_ctx;

/* One node occurrence being planned: a static node, a map item or a loop iteration. */
struct wf_leaf {
        const struct wf_node *node; /* the static node or the template */
        const char *id;             /* "a", "m[3]", "l#2" */
        const json_t *record;       /* the snapshot's latest record, or NULL */
        const struct wf_scope *scope;
};

struct wf_kind {
        const char *name;
        const char *const *fields; /* kind-specific fields, NULL-terminated */
        unsigned flags;
        int default_max_attempts;
        int64_t default_timeout_ms; /* 0: none */
        /* Reads the kind's fields of obj (at JSON path `path`) into n, reporting problems. */
        void (*parse)(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                      const char *path);
        /* Planner: the node is reached (no record) or re-run as `attempt`. */
        int (*start)(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt, bool reexecution);
        /* Planner: the record says "waiting" (sleep, signal, child, scheduled retry). */
        int (*resume)(struct wf_plan_ctx *p, const struct wf_leaf *l);
        /* Planner, map and loop only: drives the items while the node has no record. */
        int (*composite)(struct wf_plan_ctx *p, const struct wf_node *n);
};

const struct wf_kind *wf_kind_find(const char *name);

/* Planner hooks (plan.c) used by the kind table. */
int wf_plan_http_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                       bool reexecution);
int wf_plan_retry_resume(struct wf_plan_ctx *p, const struct wf_leaf *l);
int wf_plan_sleep_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                        bool reexecution);
int wf_plan_sleep_resume(struct wf_plan_ctx *p, const struct wf_leaf *l);
int wf_plan_wait_event_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                             bool reexecution);
int wf_plan_wait_event_resume(struct wf_plan_ctx *p, const struct wf_leaf *l);
int wf_plan_condition_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                            bool reexecution);
int wf_plan_subworkflow_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                              bool reexecution);
int wf_plan_subworkflow_resume(struct wf_plan_ctx *p, const struct wf_leaf *l);
int wf_plan_transform_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                            bool reexecution);
int wf_plan_notify_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                         bool reexecution);
int wf_plan_agent_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                        bool reexecution);
int wf_plan_approval_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                           bool reexecution);
int wf_plan_approval_resume(struct wf_plan_ctx *p, const struct wf_leaf *l);
int wf_plan_noop_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                       bool reexecution);
int wf_plan_map(struct wf_plan_ctx *p, const struct wf_node *n);

/* ---- The plan cache (plan_cache.c; engine.h, wf_plan_then_cached) ---- */

/* What a cache keeps of one map between plans: each item's state (plan.c's enum state) as
 * of the last plan, and the items noted since. */
struct wf_map_memo {
        const struct wf_node *node; /* the map */
        json_t *items;              /* the items array the states describe (held), or NULL */
        size_t count;
        unsigned char *states; /* per item */
        size_t counts[8];      /* items per state */
        size_t next_new;       /* no item below it is pending */
        size_t *dirty;         /* items noted since the last plan */
        size_t ndirty, dirty_cap;
        bool all_dirty; /* every item must be read again (new, or a note it could not keep) */
};

/* Whether c describes this very snapshot.nodes object of wf (its records were seen). */
bool wf_plan_cache_knows(const struct wf_plan_cache *c, const struct wf_workflow *wf,
                         const json_t *nodes);
/* Starts a plan with c over snapshot.nodes `nodes` (an object): unless c knows it, c starts
 * afresh, holding nodes. */
void wf_plan_cache_begin(struct wf_plan_cache *c, const struct wf_workflow *wf,
                         const json_t *nodes);
/* The memo of map n (empty when new); NULL on allocation failure. */
struct wf_map_memo *wf_plan_cache_map(struct wf_plan_cache *c, const struct wf_node *n);
/* Makes m describe `count` items of `items` (held), all still to be read. 0 or -ENOMEM. */
int wf_map_memo_reset(struct wf_map_memo *m, json_t *items, size_t count);
/* Frees what m holds (not m). */
void wf_map_memo_clear(struct wf_map_memo *m);
int wf_plan_loop(struct wf_plan_ctx *p, const struct wf_node *n);
