/*
 * The planner: from a parsed workflow and a snapshot of one run's state, decide the next
 * actions. Pure and deterministic: the same snapshot always yields the same actions, in
 * topological (then index) order, and nothing here reads a clock or keeps state between
 * calls. One plan is O(static nodes + dependencies + items of active maps), with hash
 * lookups into the snapshot; a loop finds its current iteration by binary search.
 * src/engine/README.md states the contract with the worker.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "duration.h"
#include "strutil.h"

enum state {
        ST_PENDING,   /* not reached yet (waiting for dependencies) */
        ST_ACTIVE,    /* in progress, or acted on by this plan */
        ST_DONE,      /* completed (snapshot) */
        ST_SKIPPED,   /* skipped (snapshot, or decided by this plan) */
        ST_TOLERATED, /* failed for good, on_failure continue */
        ST_FAILED,    /* failed for good, on_failure fail */
        ST_ESCALATED, /* failed for good, on_failure escalate */
};

struct wf_plan_ctx {
        const struct wf_workflow *wf;
        const json_t *nodes; /* snapshot records */
        const json_t *signals;
        const json_t *children;
        const json_t *approvals; /* {"<node id>": the node's latest approval} */
        const json_t *agents;    /* the stored agents the run pinned (engine.h) */
        json_t *in_flight;       /* set: {"<id>": true} */
        json_t *consumed;        /* {"<event>": n signals taken by this plan} */
        json_t *run;             /* {"id": ...} */
        const char *run_id;
        int64_t now;
        double scale; /* the run's time scale (time_scale.c): every wait is divided by it */
        int64_t wake;
        bool has_wake;
        json_t *actions;
        struct wf_scope scope;
        int error; /* first -ENOMEM */
        /* the first failing / escalated node (for finish / needs_input) */
        char *escalated_id; /* malloc'd */
        const json_t *escalated_error;
        json_t **then; /* wf_plan_then: the wait that follows executes alone (or NULL) */
        struct wf_plan_cache *cache; /* wf_plan_then_cached: the maps' item states, or NULL */
};

/* ---- small helpers ---- */

/* A duration the run waits, in the run's time (time_scale.c). */
static int64_t span(const struct wf_plan_ctx *p, int64_t ms)
{
        return wf_time_scaled_ms(ms, p->scale);
}

/* A waited duration for messages: "2d", or "2d (2s at time_scale 86400)". */
static void span_text(const struct wf_plan_ctx *p, int64_t ms, char *out, size_t size)
{
        char d[32], scaled[32];

        duration_format(ms, d, sizeof(d));
        if (span(p, ms) == ms) {
                snprintf(out, size, "%s", d);
                return;
        }
        duration_format(span(p, ms), scaled, sizeof(scaled));
        snprintf(out, size, "%s (%s at time_scale %g)", d, scaled, p->scale);
}

static void timer(struct wf_plan_ctx *p, int64_t at)
{
        if (!p->has_wake || at < p->wake) {
                p->wake = at;
                p->has_wake = true;
        }
}

static int emit(struct wf_plan_ctx *p, json_t *action)
{
        if (!action || json_array_append_new(p->actions, action) < 0) {
                p->error = -ENOMEM;
                return -ENOMEM;
        }
        return 0;
}

static const char *rec_status(const json_t *rec)
{
        const char *s = rec ? json_string_value(json_object_get(rec, "status")) : NULL;
        return s ? s : "";
}

static int rec_attempt(const json_t *rec)
{
        json_t *a = rec ? json_object_get(rec, "attempt") : NULL;
        return json_is_integer(a) && json_integer_value(a) >= 1 && json_integer_value(a) <= 1000000
                   ? (int)json_integer_value(a)
                   : 1;
}

static bool rec_ms(const json_t *rec, const char *key, int64_t *out)
{
        json_t *v = rec ? json_object_get(rec, key) : NULL;
        if (!json_is_integer(v))
                return false;
        *out = json_integer_value(v);
        return true;
}

static json_t *rec_get(const json_t *rec, const char *key)
{
        json_t *v = rec ? json_object_get(rec, key) : NULL;
        return v ? v : json_null();
}

static bool is_failed_status(const char *s)
{
        return !strcmp(s, "failed") || !strcmp(s, "interrupted") || !strcmp(s, "canceled");
}

static json_t *error_json(const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static json_t *error_json(const char *klass, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;
        json_t *e;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (!m)
                return NULL;
        e = json_pack("{s:s,s:s}", "class", klass, "message", m);
        free(m);
        return e;
}

static int emit_fail(struct wf_plan_ctx *p, const char *id, int attempt, json_t *error)
{
        if (!error) {
                p->error = -ENOMEM;
                return -ENOMEM;
        }
        return emit(p, json_pack("{s:s,s:s,s:i,s:o}", "action", "fail_node", "node", id, "attempt",
                                 attempt, "error", error));
}

static int emit_complete(struct wf_plan_ctx *p, const char *id, json_t *output)
{
        if (!output) {
                p->error = -ENOMEM;
                return -ENOMEM;
        }
        return emit(p,
                    json_pack("{s:s,s:s,s:o}", "action", "complete", "node", id, "output", output));
}

/*
 * Renders the node's template t in scope into *out (a new reference). A template that does
 * not render fails the attempt ("could not render <what><field> at column N: ..."), the one
 * wording every kind uses. Returns 1 with *out set; otherwise what the kind hook returns: 0
 * (the failure was emitted) or a negative errno (p->error set).
 */
static int render_or_fail(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                          const struct wf_tmpl *t, const struct wf_scope *scope, const char *what,
                          json_t **out)
{
        struct wf_expr_error err = {0};
        _cleanup_free_ char *path = NULL;
        int r = wf_tmpl_render(t, scope, out, &err, &path);

        if (r == -EINVAL)
                r = emit_fail(p, l->id, attempt,
                              error_json("error", "could not render %s%s at column %d: %s", what,
                                         path ? path : "", err.column,
                                         err.message ? err.message : "error"));
        else if (r < 0)
                p->error = r;
        else
                r = 1;
        wf_expr_error_clear(&err);
        return r;
}

/*
 * Evaluates the expression e in scope into *out (a new reference). An expression that does
 * not evaluate fails node id's attempt ("could not evaluate <what> at column N: ..."), the
 * one wording of `if`, `until`, `items` and `when`. Returns as render_or_fail: 1 with *out
 * set, 0 (the failure was emitted) or a negative errno (p->error set).
 */
static int eval_or_fail(struct wf_plan_ctx *p, const char *id, int attempt, const struct wf_expr *e,
                        const struct wf_scope *scope, const char *what, json_t **out)
{
        struct wf_expr_error err = {0};
        int r = wf_expr_eval_scope(e, scope, out, &err);

        if (r == -EINVAL)
                r = emit_fail(p, id, attempt,
                              error_json("error", "could not evaluate %s at column %d: %s", what,
                                         err.column, err.message ? err.message : "error"));
        else if (r < 0)
                p->error = r;
        else
                r = 1;
        wf_expr_error_clear(&err);
        return r;
}

/* The execute action of an effect node's attempt (engine.h): input is borrowed. NULL when
 * out of memory. */
static json_t *execute_action(const struct wf_leaf *l, int attempt, json_t *input, const char *key,
                              bool reexecution)
{
        const struct wf_node *n = l->node;

        return json_pack("{s:s,s:s,s:i,s:s,s:O,s:o,s:s,s:s,s:b}", "action", "execute", "node",
                         l->id, "attempt", attempt, "kind", n->kind->name, "input", input,
                         "timeout_ms", n->timeout_ms ? json_integer(n->timeout_ms) : json_null(),
                         "delivery",
                         n->delivery == WF_AT_MOST_ONCE ? "at_most_once" : "at_least_once",
                         "idempotency_key", key, "reexecution", reexecution);
}

/* ---- kind hooks ---- */

int wf_plan_noop_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                       bool reexecution)
{
        return emit_complete(p, l->id, json_null());
}

int wf_plan_transform_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                            bool reexecution)
{
        json_t *out = NULL;
        int r = render_or_fail(p, l, attempt, l->node->output, l->scope, "output", &out);

        if (r <= 0)
                return r;
        return emit_complete(p, l->id, out);
}

int wf_plan_condition_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                            bool reexecution)
{
        _cleanup_json_ json_t *v = NULL;
        int r = eval_or_fail(p, l->id, attempt, l->node->condition, l->scope, "if", &v);

        if (r <= 0)
                return r;
        return emit_complete(
            p, l->id,
            json_pack("{s:s,s:O}", "branch", wf_expr_truthy(v) ? "then" : "else", "value", v));
}

/* The value of header name (any case) in a rendered headers object, or NULL. */
static const char *header_value(const json_t *headers, const char *name)
{
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)headers, k, v)
                if (!strcasecmp(k, name))
                        return json_string_value(v);
        return NULL;
}

static int collect_secret(void *userdata, const char *root, const char *name, int column)
{
        json_t *names = userdata;
        size_t i;
        json_t *v;

        if (strcmp(root, "secrets") != 0 || !name)
                return 0;
        json_array_foreach (names, i, v)
                if (!strcmp(json_string_value(v), name))
                        return 0;
        return json_array_append_new(names, json_string(name)) < 0 ? -ENOMEM : 0;
}

/*
 * The secrets an http request names (`${ secrets.NAME }`, literal names only: validation
 * refuses others) and the scope they render in: each one as the placeholder
 * "[secret:NAME]", which is what the START mark stores. The worker puts the value in only
 * the request that leaves, and only for the names listed in the action (src/secrets).
 */
static int secret_placeholders(const struct wf_node *n, json_t **names, json_t **placeholders)
{
        size_t i;
        json_t *v;

        *names = json_array();
        *placeholders = json_object();
        if (!*names || !*placeholders || wf_tmpl_walk_refs(n->request, collect_secret, *names) < 0)
                return -ENOMEM;
        json_array_foreach (*names, i, v) {
                _cleanup_free_ char *ph = str_printf("[secret:%s]", json_string_value(v));
                if (!ph ||
                    json_object_set_new(*placeholders, json_string_value(v), json_string(ph)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

int wf_plan_http_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                       bool reexecution)
{
        const struct wf_node *n = l->node;
        _cleanup_json_ json_t *req = NULL;
        _cleanup_free_ char *key = wf_idempotency_key(p->run_id, l->id);
        int r;

        _cleanup_json_ json_t *secrets = NULL, *placeholders = NULL;
        struct wf_scope scope = *l->scope;

        if (!key || secret_placeholders(n, &secrets, &placeholders) < 0)
                return p->error = -ENOMEM;
        scope.secrets = placeholders;
        if ((r = render_or_fail(p, l, attempt, n->request, &scope, "request", &req)) <= 0)
                return r;

        const char *url = json_string_value(json_object_get(req, "url"));
        if (!url || (!str_has_prefix(url, "http://") && !str_has_prefix(url, "https://")))
                return emit_fail(p, l->id, attempt,
                                 error_json("error",
                                            "request url must be a string starting with http:// "
                                            "or https:// (got %s)",
                                            url ? url : "a non-string"));
        json_t *headers = json_object_get(req, "headers");
        if (!headers) {
                headers = json_object();
                if (!headers || json_object_set_new(req, "headers", headers) < 0)
                        return p->error = -ENOMEM;
        }
        const char *hk;
        json_t *hv;
        json_object_foreach (headers, hk, hv) {
                if (!json_is_string(hv)) {
                        _cleanup_free_ char *s = wf_expr_to_text(hv);
                        if (!s || json_object_set_new(headers, hk, json_string(s)) < 0)
                                return p->error = -ENOMEM;
                        hv = json_object_get(headers, hk);
                }
                if (strpbrk(json_string_value(hv), "\r\n"))
                        return emit_fail(p, l->id, attempt,
                                         error_json("error",
                                                    "header '%s' contains a line break after "
                                                    "rendering",
                                                    hk));
        }
        /* a key the definition sets is the one that leaves (and is recorded): a key shared
         * across runs is how a service deduplicates them; the runtime sends it as given */
        const char *own_key = header_value(headers, "Idempotency-Key");
        if (own_key && (!*own_key || strlen(own_key) > WF_MAX_IDEMPOTENCY_KEY))
                return emit_fail(p, l->id, attempt,
                                 error_json("error",
                                            "the Idempotency-Key header must be 1 to %d "
                                            "characters after rendering (got %zu)",
                                            WF_MAX_IDEMPOTENCY_KEY, strlen(own_key)));
        if (own_key) {
                char *copy = strdup(own_key);
                if (!copy)
                        return p->error = -ENOMEM;
                free(key);
                key = copy;
        } else if (json_object_set_new(headers, "Idempotency-Key", json_string(key)) < 0) {
                return p->error = -ENOMEM;
        }
        json_t *expect = json_array();
        if (!expect || json_object_set_new(req, "expect_status", expect) < 0)
                return p->error = -ENOMEM;
        for (size_t i = 0; i < n->n_expect; i++)
                if (json_array_append_new(expect,
                                          json_pack("[i,i]", n->expect[i].lo, n->expect[i].hi)) < 0)
                        return p->error = -ENOMEM;
        if (json_object_set_new(req, "method", json_string(n->method ? n->method : "GET")) < 0)
                return p->error = -ENOMEM;

        json_t *action = execute_action(l, attempt, req, key, reexecution);
        if (action && json_array_size(secrets) > 0 &&
            json_object_set(action, "secrets", secrets) < 0) {
                json_decref(action);
                action = NULL;
        }
        return emit(p, action);
}

static int escalation_scale(const struct wf_plan_ctx *p, json_t *spec);

/*
 * The agent a node that references a stored agent runs: the definition the run pinned
 * (rendered in the node's scope, since a definition may say ${ input.topic }) without its
 * name and description, with the node's rendered overrides merged over it field by field
 * (budget key by key), and "ref": {"name", "version"} saying which version it was. Returns
 * 1 with *out set; 0 when the attempt was failed instead; a negative errno.
 */
static int agent_resolve(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                         const json_t *overrides, json_t **out)
{
        const struct wf_node *n = l->node;
        _cleanup_free_ char *key = wf_agent_ref_key(n->agent_ref, n->agent_ref_version);
        _cleanup_json_ json_t *rendered = NULL, *agent = NULL;
        const json_t *pinned, *def, *v;
        const char *k;
        int r;

        if (!key)
                return p->error = -ENOMEM;
        pinned = json_object_get(p->agents, key);
        def = json_object_get(pinned, "definition");
        if (!json_is_object(def)) {
                if (n->agent_ref_version)
                        return emit_fail(p, l->id, attempt,
                                         error_json("error",
                                                    "agent '%s' has no version %lld for this "
                                                    "run's owner; apply it (agently agent "
                                                    "apply) and start a new run",
                                                    n->agent_ref, (long long)n->agent_ref_version));
                return emit_fail(p, l->id, attempt,
                                 error_json("error",
                                            "no agent named '%s' existed for this run's owner "
                                            "when the run was created; apply it (agently agent "
                                            "apply) and start a new run",
                                            n->agent_ref));
        }
        /* the definition as an inline agent goes through the agent node's own parse, so it
         * is compiled and normalised (approve_tools) exactly as an inline one would be */
        bool has_prompt = json_object_get(def, "prompt") != NULL;
        _cleanup_json_ json_t *inline_agent = json_deep_copy(def), *one_def = NULL;
        _cleanup_wf_ struct wf_workflow *one = NULL;
        if (!inline_agent)
                return p->error = -ENOMEM;
        json_object_del(inline_agent, "name");
        json_object_del(inline_agent, "description");
        if (!has_prompt && json_object_set_new(inline_agent, "prompt", json_string("")) < 0)
                return p->error = -ENOMEM;
        one_def = json_pack("{s:s,s:[{s:s,s:s,s:O}]}", "name", "agent", "nodes", "id", "agent",
                            "type", "agent", "agent", inline_agent);
        if (!one_def)
                return p->error = -ENOMEM;
        r = wf_parse(one_def, &one, NULL);
        if (r == -EINVAL)
                return emit_fail(
                    p, l->id, attempt,
                    error_json("error",
                               "agent '%s' version %lld is not a valid agent "
                               "today; apply a new version of it",
                               n->agent_ref,
                               (long long)json_integer_value(json_object_get(pinned, "version"))));
        if (r < 0)
                return p->error = r;
        r = render_or_fail(p, l, attempt, one->nodes[0].agent, l->scope, "the stored agent",
                           &rendered);
        if (r <= 0)
                return r;
        agent = json_deep_copy(rendered); /* a render may share the template's values */
        if (!agent)
                return p->error = -ENOMEM;
        if (!has_prompt) /* the node gives it */
                json_object_del(agent, "prompt");
        json_object_foreach ((json_t *)overrides, k, v) {
                json_t *base = json_object_get(agent, k);
                if (!strcmp(k, "budget") && json_is_object(base) && json_is_object(v))
                        r = json_object_update(base, (json_t *)v);
                else /* a copy: the caller changes approve_tools in place */
                        r = json_object_set_new(agent, k, json_deep_copy(v));
                if (r < 0)
                        return p->error = -ENOMEM;
        }
        if (json_object_set_new(agent, "ref",
                                json_pack("{s:s,s:O?}", "name", n->agent_ref, "version",
                                          json_object_get(pinned, "version"))) < 0)
                return p->error = -ENOMEM;
        *out = json_incref(agent);
        return 1;
}

/* An agent step: the rendered agent object goes to the worker, which runs the session
 * (src/agent) and resumes it from its journal when this attempt is executed again. */
int wf_plan_agent_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                        bool reexecution)
{
        _cleanup_json_ json_t *agent = NULL;
        _cleanup_free_ char *key = wf_idempotency_key(p->run_id, l->id);
        int r;

        if (!key)
                return p->error = -ENOMEM;
        if ((r = render_or_fail(p, l, attempt, l->node->agent, l->scope, "agent", &agent)) <= 0)
                return r;
        if (l->node->agent_ref) {
                _cleanup_json_ json_t *overrides = agent;
                agent = NULL;
                if ((r = agent_resolve(p, l, attempt, overrides, &agent)) <= 0)
                        return r;
        }
        if (!json_is_string(json_object_get(agent, "prompt")))
                return emit_fail(p, l->id, attempt,
                                 error_json("error", "the agent's prompt must render to a string"));
        /* its tool calls' approvals wait in the run's time, like an approval node's */
        json_t *gate = json_object_get(agent, "approve_tools"), *t;
        if (json_is_object(gate) && (t = json_object_get(gate, "timeout_ms")) &&
            json_is_integer(t) &&
            (json_object_set_new(gate, "timeout_ms", json_integer(span(p, json_integer_value(t)))) <
                 0 ||
             escalation_scale(p, gate) < 0))
                return p->error = -ENOMEM;
        return emit(p, execute_action(l, attempt, agent, key, reexecution));
}

/* A notify node: the message rendered; the worker puts it in the notification outbox
 * (keyed on the node's idempotency key) and completes the node with its id. */
int wf_plan_notify_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                         bool reexecution)
{
        _cleanup_json_ json_t *message = NULL;
        _cleanup_free_ char *key = wf_idempotency_key(p->run_id, l->id);
        int r;

        if (!key)
                return p->error = -ENOMEM;
        r = render_or_fail(p, l, attempt, l->node->notify, l->scope, "the notification", &message);
        if (r <= 0)
                return r;
        const char *title = json_string_value(json_object_get(message, "title"));
        if (!title || !*title || strlen(title) > 998)
                return emit_fail(p, l->id, attempt,
                                 error_json("error", "the notification's title must render to a "
                                                     "string of 1 to 998 bytes"));
        json_t *text = json_object_get(message, "text");
        if (text && !json_is_string(text)) {
                _cleanup_free_ char *t = wf_expr_to_text(text);
                if (!t || json_object_set_new(message, "text", json_string(t)) < 0)
                        return p->error = -ENOMEM;
        }
        return emit(p, execute_action(l, attempt, message, key, reexecution));
}

/* A scheduled attempt ("waiting" with wake_at_ms) of an effect node. */
int wf_plan_retry_resume(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        int64_t at;

        if (rec_ms(l->record, "wake_at_ms", &at) && at > p->now) {
                timer(p, at);
                return 0;
        }
        return l->node->kind->start(p, l, rec_attempt(l->record), false);
}

/* RFC 3339 ("2026-11-22T10:00:00Z", fractions and offsets allowed) to ms since epoch. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
        y -= m <= 2;
        const int64_t era = (y >= 0 ? y : y - 399) / 400;
        const unsigned yoe = (unsigned)(y - era * 400);
        const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, int *out)
{
        int v = 0;
        for (int i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        *out = v;
        return true;
}

static bool parse_rfc3339(const char *s, int64_t *out)
{
        int y, mo, d, h, mi, sec, ms = 0, oh = 0, om = 0, sign = 0;
        size_t n = strlen(s), i = 19;

        if (n < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
            !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
            !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
            !digits(s + 17, 2, &sec))
                return false;
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
                return false;
        if (s[i] == '.') {
                int scale = 100;
                i++;
                if (i >= n || s[i] < '0' || s[i] > '9')
                        return false;
                while (i < n && s[i] >= '0' && s[i] <= '9') {
                        ms += (s[i] - '0') * scale;
                        scale /= 10;
                        i++;
                }
        }
        if (s[i] == 'Z' || s[i] == 'z') {
                i++;
        } else if (s[i] == '+' || s[i] == '-') {
                sign = s[i] == '+' ? 1 : -1;
                if (i + 6 > n || !digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
                    !digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
                        return false;
                i += 6;
        } else {
                return false;
        }
        if (i != n)
                return false;
        int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
        int64_t t = ((days * 24 + h) * 60 + mi) * 60 + (sec > 59 ? 59 : sec);
        t -= sign * (oh * 3600 + om * 60);
        *out = t * 1000 + ms;
        return true;
}

int wf_plan_sleep_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                        bool reexecution)
{
        const struct wf_node *n = l->node;
        int64_t wake;

        if (n->until) {
                _cleanup_json_ json_t *v = NULL;
                int r = eval_or_fail(p, l->id, attempt, n->until, l->scope, "until", &v);
                if (r <= 0)
                        return r;
                if (json_is_integer(v))
                        wake = json_integer_value(v);
                else if (!json_is_string(v) || !parse_rfc3339(json_string_value(v), &wake))
                        return emit_fail(
                            p, l->id, attempt,
                            error_json("error",
                                       "until must give an RFC 3339 time such as "
                                       "\"2026-01-31T09:00:00Z\" or milliseconds "
                                       "since the epoch (got %s)",
                                       json_is_string(v) ? json_string_value(v) : "a non-string"));
        } else {
                wake = p->now + n->duration_ms;
        }
        if (wake > p->now)
                wake = p->now + span(p, wake - p->now);
        if (wake <= p->now)
                return emit_complete(p, l->id, json_pack("{s:I}", "wake_at_ms", (json_int_t)wake));
        timer(p, wake);
        return emit(p, json_pack("{s:s,s:s,s:I}", "action", "sleep", "node", l->id, "wake_at_ms",
                                 (json_int_t)wake));
}

int wf_plan_sleep_resume(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        int64_t wake;

        if (!rec_ms(l->record, "wake_at_ms", &wake))
                return wf_plan_sleep_start(p, l, rec_attempt(l->record), false);
        if (wake > p->now) {
                timer(p, wake);
                return 0;
        }
        return emit_complete(p, l->id, json_pack("{s:I}", "wake_at_ms", (json_int_t)wake));
}

/* The next unconsumed signal of the node's event, or NULL. */
static json_t *take_signal(struct wf_plan_ctx *p, const char *event)
{
        json_t *list = json_is_object(p->signals) ? json_object_get(p->signals, event) : NULL;
        json_t *taken = json_object_get(p->consumed, event);
        size_t k = taken ? (size_t)json_integer_value(taken) : 0;
        json_t *sig = json_is_array(list) ? json_array_get(list, k) : NULL;

        if (!sig)
                return NULL;
        if (json_object_set_new(p->consumed, event, json_integer((json_int_t)k + 1)) < 0) {
                p->error = -ENOMEM;
                return NULL;
        }
        return sig;
}

static int complete_with_signal(struct wf_plan_ctx *p, const struct wf_leaf *l, json_t *sig)
{
        json_t *id = json_object_get(sig, "id");
        json_t *payload = json_object_get(sig, "payload");

        return emit(p,
                    json_pack("{s:s,s:s,s:O,s:O}", "action", "complete", "node", l->id, "output",
                              payload ? payload : json_null(), "signal_id", id ? id : json_null()));
}

int wf_plan_wait_event_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                             bool reexecution)
{
        json_t *sig = take_signal(p, l->node->event);

        if (sig)
                return complete_with_signal(p, l, sig);
        if (p->error)
                return p->error;
        json_t *timeout = json_null();
        if (l->node->timeout_ms) {
                timeout = json_integer(p->now + span(p, l->node->timeout_ms));
                timer(p, p->now + span(p, l->node->timeout_ms));
        }
        return emit(p, json_pack("{s:s,s:s,s:s,s:o}", "action", "wait_signal", "node", l->id,
                                 "event", l->node->event, "timeout_at_ms", timeout));
}

int wf_plan_wait_event_resume(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        json_t *sig = take_signal(p, l->node->event);
        int64_t deadline = 0, started;
        bool has_deadline = false;

        if (sig)
                return complete_with_signal(p, l, sig);
        if (p->error)
                return p->error;
        if (rec_ms(l->record, "wake_at_ms", &deadline))
                has_deadline = true;
        else if (l->node->timeout_ms && rec_ms(l->record, "started_at_ms", &started)) {
                deadline = started + span(p, l->node->timeout_ms);
                has_deadline = true;
        }
        if (!has_deadline)
                return 0; /* only a signal wakes it */
        if (deadline <= p->now) {
                char d[96];
                span_text(p, l->node->timeout_ms, d, sizeof(d));
                return emit_fail(
                    p, l->id, rec_attempt(l->record),
                    error_json("timeout", "no '%s' signal arrived within %s", l->node->event, d));
        }
        timer(p, deadline);
        return 0;
}

int wf_plan_subworkflow_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                              bool reexecution)
{
        const struct wf_node *n = l->node;
        json_t *input = NULL;
        int r = render_or_fail(p, l, attempt, n->input, l->scope, "input", &input);

        if (r <= 0)
                return r;
        _cleanup_free_ char *key = str_printf("%s:%s:%d", p->run_id, l->id, attempt);
        if (!key) {
                json_decref(input);
                return p->error = -ENOMEM;
        }
        return emit(p, json_pack("{s:s,s:s,s:i,s:s,s:o,s:o,s:s}", "action", "start_child", "node",
                                 l->id, "attempt", attempt, "workflow", n->workflow, "version",
                                 n->version ? json_integer(n->version) : json_null(), "input",
                                 input, "idempotency_key", key));
}

int wf_plan_subworkflow_resume(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        const struct wf_node *n = l->node;
        int attempt = rec_attempt(l->record);
        json_t *child = json_is_object(p->children) ? json_object_get(p->children, l->id) : NULL;
        int64_t started;

        if (child && rec_attempt(child) != attempt)
                child = NULL; /* an earlier attempt's child */
        if (!child)
                return wf_plan_subworkflow_start(p, l, attempt, true);
        const char *status = rec_status(child);
        if (!strcmp(status, "completed"))
                return emit_complete(p, l->id, json_incref(rec_get(child, "output")));
        if (!strcmp(status, "failed") || !strcmp(status, "canceled")) {
                json_t *e =
                    error_json("error", "child run of workflow '%s' %s", n->workflow, status);
                if (e && json_object_set(e, "child_error", rec_get(child, "error")) < 0) {
                        json_decref(e);
                        e = NULL;
                }
                return emit_fail(p, l->id, attempt, e);
        }
        if (n->timeout_ms && rec_ms(l->record, "started_at_ms", &started)) {
                if (started + span(p, n->timeout_ms) <= p->now) {
                        char d[96];
                        span_text(p, n->timeout_ms, d, sizeof(d));
                        return emit_fail(p, l->id, attempt,
                                         error_json("timeout",
                                                    "child run of workflow '%s' did not finish "
                                                    "within %s",
                                                    n->workflow, d));
                }
                timer(p, started + span(p, n->timeout_ms));
        }
        return 0;
}

/* ---- approval ---- */

/* Each escalation step's timeout_ms of spec in the run's time. */
static int escalation_scale(const struct wf_plan_ctx *p, json_t *spec)
{
        json_t *step;
        size_t i;

        json_array_foreach (json_object_get(spec, "escalation"), i, step) {
                json_t *t = json_object_get(step, "timeout_ms");
                if (json_is_integer(t) &&
                    json_object_set_new(step, "timeout_ms",
                                        json_integer(span(p, json_integer_value(t)))) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* The approval's deadlines in the run's time: its timeout and each escalation step's. */
static int approval_scale(const struct wf_plan_ctx *p, const struct wf_node *n, json_t *spec)
{
        if (json_object_set_new(spec, "timeout_ms",
                                n->timeout_ms ? json_integer(span(p, n->timeout_ms))
                                              : json_null()) < 0)
                return -ENOMEM;
        return escalation_scale(p, spec);
}

/* The request a reviewer reads and the policy the database applies (engine.h,
 * request_approval). */
int wf_plan_approval_start(struct wf_plan_ctx *p, const struct wf_leaf *l, int attempt,
                           bool reexecution)
{
        const struct wf_node *n = l->node;
        _cleanup_json_ json_t *shown = NULL;
        json_t *spec;
        int r = render_or_fail(p, l, attempt, n->approval, l->scope, "the approval", &shown);

        (void)reexecution;
        if (r <= 0)
                return r;
        spec = json_deep_copy(n->approval_policy);
        if (!spec || json_object_update(spec, shown) < 0) {
                json_decref(spec);
                return p->error = -ENOMEM;
        }
        if (!json_is_string(json_object_get(spec, "title"))) {
                _cleanup_free_ char *t = str_printf("Approve %s of %s", l->id, p->wf->name);
                if (!t || json_object_set_new(spec, "title", json_string(t)) < 0) {
                        json_decref(spec);
                        return p->error = -ENOMEM;
                }
        }
        if (!json_object_get(spec, "proposed_action")) {
                /* what happens on approval: the nodes that wait for this one */
                json_t *next = json_array();
                for (size_t i = 0; next && i < n->n_dependents; i++)
                        json_array_append_new(next, json_string(p->wf->nodes[n->dependents[i]].id));
                if (!next || json_object_set_new(spec, "proposed_action",
                                                 json_pack("{s:o}", "next", next)) < 0) {
                        json_decref(spec);
                        return p->error = -ENOMEM;
                }
        }
        if (approval_scale(p, n, spec) < 0) {
                json_decref(spec);
                return p->error = -ENOMEM;
        }
        return emit(p, json_pack("{s:s,s:s,s:i,s:o}", "action", "request_approval", "node", l->id,
                                 "attempt", attempt, "approval", spec));
}

/* The node waits for its approval (snapshot.approvals): the decision completes it
 * (approved: the decision is the output) or fails it (rejected, or no decision in time);
 * a pending approval past its deadline asks the worker to apply on_timeout. */
int wf_plan_approval_resume(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        int attempt = rec_attempt(l->record);
        json_t *a = json_is_object(p->approvals) ? json_object_get(p->approvals, l->id) : NULL;
        const char *status = rec_status(a);
        int64_t deadline;

        if (!a || rec_attempt(a) != attempt)
                return wf_plan_approval_start(p, l, attempt, true); /* not asked yet */
        if (!strcmp(status, "approved"))
                return emit_complete(p, l->id, json_incref(rec_get(a, "decision")));
        if (!strcmp(status, "rejected") || !strcmp(status, "expired") ||
            !strcmp(status, "canceled")) {
                json_t *decision = rec_get(a, "decision");
                const char *by = json_string_value(json_object_get(decision, "by"));
                const char *comment = json_string_value(json_object_get(decision, "comment"));
                json_t *e = !strcmp(status, "rejected")
                                ? error_json("rejected", "rejected by %s%s%s", by ? by : "?",
                                             comment ? ": " : "", comment ? comment : "")
                            : !strcmp(status, "expired")
                                ? error_json("timeout", "no decision within the deadline")
                                : error_json("error", "the approval was canceled");
                if (e && json_object_set(e, "decision", decision) < 0) {
                        json_decref(e);
                        e = NULL;
                }
                return emit_fail(p, l->id, attempt, e);
        }
        if (rec_ms(a, "expires_at_ms", &deadline)) {
                if (deadline <= p->now)
                        return emit(p, json_pack("{s:s,s:s,s:O}", "action", "approval_timeout",
                                                 "node", l->id, "approval_id", rec_get(a, "id")));
                timer(p, deadline);
        }
        return 0; /* only a decision wakes it */
}

/* ---- one leaf (static node, map item, loop iteration) ---- */

/* Classifies a leaf's record; drives it when in progress. Returns the state. */
static enum state leaf_state(const struct wf_node *n, const json_t *rec)
{
        const char *s = rec_status(rec);

        if (!rec)
                return ST_PENDING;
        if (!strcmp(s, "completed"))
                return ST_DONE;
        if (!strcmp(s, "skipped"))
                return ST_SKIPPED;
        if (is_failed_status(s) && !json_object_get(rec, "retry_at_ms")) {
                if (!strcmp(s, "canceled"))
                        return ST_FAILED;
                return n->on_failure == WF_ON_FAILURE_CONTINUE   ? ST_TOLERATED
                       : n->on_failure == WF_ON_FAILURE_ESCALATE ? ST_ESCALATED
                                                                 : ST_FAILED;
        }
        return ST_ACTIVE;
}

/* Drives an ACTIVE leaf: a started, waiting or retry-pending record. */
static int drive_leaf(struct wf_plan_ctx *p, const struct wf_leaf *l)
{
        const struct wf_node *n = l->node;
        const struct wf_kind *k = n->kind;
        const char *s = rec_status(l->record);
        int attempt = rec_attempt(l->record);

        if (is_failed_status(s)) { /* a retry is scheduled */
                int64_t at = 0;
                (void)rec_ms(l->record, "retry_at_ms", &at);
                if (at > p->now) {
                        timer(p, at);
                        return 0;
                }
                return k->start(p, l, attempt + 1, false);
        }
        if (!strcmp(s, "started")) {
                if (!(k->flags & WF_KIND_EFFECT))
                        return k->resume ? k->resume(p, l) : k->start(p, l, attempt, true);
                if (json_object_get(p->in_flight, l->id))
                        return 0;
                if (n->delivery == WF_AT_LEAST_ONCE)
                        return k->start(p, l, attempt, true);
                return emit_fail(p, l->id, attempt,
                                 error_json("interrupted",
                                            "attempt %d was interrupted (the worker stopped "
                                            "while it ran) and delivery is at_most_once, so "
                                            "it is not run again",
                                            attempt));
        }
        if (!strcmp(s, "waiting"))
                return k->resume ? k->resume(p, l) : k->start(p, l, attempt, false);
        /* an unknown status: treat like started, the safest reading */
        return k->resume ? k->resume(p, l) : k->start(p, l, attempt, true);
}

static int note_escalation(struct wf_plan_ctx *p, const char *id, const json_t *rec)
{
        if (p->escalated_id)
                return 0;
        p->escalated_id = strdup(id);
        if (!p->escalated_id)
                return p->error = -ENOMEM;
        p->escalated_error = rec_get(rec, "error");
        return 0;
}

/* ---- map and loop ---- */

static const json_t *item_record(struct wf_plan_ctx *p, char *buf, size_t size, const char *base,
                                 char sep, size_t i)
{
        if (sep == '[')
                snprintf(buf, size, "%s[%zu]", base, i);
        else
                snprintf(buf, size, "%s#%zu", base, i);
        return json_object_get(p->nodes, buf);
}

/* item_record() of a map item "<base>[i]" without printf: the id's first base bytes are
 * base_id's (base 0: print it whole), then the index. */
static const json_t *item_lookup(struct wf_plan_ctx *p, char *buf, size_t size, const char *base_id,
                                 size_t base, size_t i)
{
        char digits[24];
        size_t nd = 0;

        if (base == 0)
                return item_record(p, buf, size, base_id, '[', i);
        memcpy(buf, base_id, base);
        do {
                digits[nd++] = (char)('0' + i % 10);
                i /= 10;
        } while (i);
        buf[base] = '[';
        for (size_t k = 0; k < nd; k++)
                buf[base + 1 + k] = digits[nd - 1 - k];
        buf[base + 1 + nd] = ']';
        buf[base + 2 + nd] = '\0';
        return json_object_get(p->nodes, buf);
}

static int fail_composite(struct wf_plan_ctx *p, const struct wf_node *n, const char *item_id,
                          const json_t *rec)
{
        const json_t *ie = rec_get(rec, "error");
        const char *msg = json_string_value(json_object_get(ie, "message"));
        json_t *e = error_json("error", "%s failed: %s", item_id, msg ? msg : "error");

        if (e && json_object_set(e, "item_error", (json_t *)ie) < 0) {
                json_decref(e);
                e = NULL;
        }
        if (e && json_object_set_new(e, "item", json_string(item_id)) < 0) {
                json_decref(e);
                e = NULL;
        }
        return emit_fail(p, n->id, 1, e);
}

/* The state of map item i (its record read again), kept in m. */
static void map_classify(struct wf_plan_ctx *p, const struct wf_node *n, struct wf_map_memo *m,
                         size_t i, char *id, size_t size, size_t base)
{
        enum state st = leaf_state(n->body, item_lookup(p, id, size, n->id, base, i));

        m->counts[m->states[i]]--;
        m->states[i] = (unsigned char)st;
        m->counts[st]++;
        if (st == ST_PENDING && i < m->next_new)
                m->next_new = i;
}

/*
 * Pass 1 of a map: every item's state in m, its counts and the first pending item. Each
 * item is looked up once — or, with a plan cache over the same snapshot.nodes, only the
 * items noted since the last plan (a 10,000-item map is planned every loop turn of its
 * run, and a turn changes the records of the few items that finished or started).
 */
static int map_states(struct wf_plan_ctx *p, const struct wf_node *n, struct wf_map_memo *m,
                      json_t *items, size_t count, char *id, size_t size, size_t base)
{
        if (m->items != items || m->count != count || !m->states) {
                int r = wf_map_memo_reset(m, items, count);
                if (r < 0)
                        return r;
        }
        if (m->all_dirty) {
                memset(m->counts, 0, sizeof(m->counts));
                m->next_new = count;
                for (size_t i = 0; i < count; i++) {
                        enum state st =
                            leaf_state(n->body, item_lookup(p, id, size, n->id, base, i));
                        m->states[i] = (unsigned char)st;
                        m->counts[st]++;
                        if (st == ST_PENDING && m->next_new == count)
                                m->next_new = i;
                }
                m->all_dirty = false;
        } else {
                for (size_t k = 0; k < m->ndirty; k++)
                        map_classify(p, n, m, m->dirty[k], id, size, base);
                while (m->next_new < count && m->states[m->next_new] != ST_PENDING)
                        m->next_new++;
        }
        m->ndirty = 0;
        return 0;
}

/* Passes 2 and 3 of a map whose item states m holds: the first item failed for good (in
 * index order) fails it or asks for a person; all finished completes it with their
 * outputs; otherwise the running items are driven and new ones started up to the
 * concurrency. */
static int map_items(struct wf_plan_ctx *p, const struct wf_node *n, const struct wf_map_memo *m,
                     const json_t *items, char *id, size_t size, size_t base)
{
        const struct wf_node *t = n->body;
        size_t count = m->count;
        size_t running = m->counts[ST_ACTIVE];
        size_t finished = m->counts[ST_DONE] + m->counts[ST_SKIPPED] + m->counts[ST_TOLERATED];
        int r;

        if (m->counts[ST_FAILED] || m->counts[ST_ESCALATED]) {
                for (size_t i = 0; i < count; i++) {
                        if (m->states[i] != ST_FAILED && m->states[i] != ST_ESCALATED)
                                continue;
                        const json_t *rec = item_lookup(p, id, size, n->id, base, i);
                        return m->states[i] == ST_FAILED ? fail_composite(p, n, id, rec)
                                                         : note_escalation(p, id, rec);
                }
        }
        if (finished == count) {
                json_t *out = json_array();
                if (!out)
                        return p->error = -ENOMEM;
                for (size_t i = 0; i < count; i++) {
                        const json_t *rec = item_lookup(p, id, size, n->id, base, i);
                        json_t *o = !strcmp(rec_status(rec), "completed") ? rec_get(rec, "output")
                                                                          : json_null();
                        if (json_array_append(out, o) < 0) {
                                json_decref(out);
                                return p->error = -ENOMEM;
                        }
                }
                return emit_complete(p, n->id, out);
        }

        /* drive the running items and start new ones up to the concurrency: every item
         * below next_new has a record, so the first pending ones are the next to start */
        size_t slots = running < (size_t)n->concurrency ? (size_t)n->concurrency - running : 0;
        size_t seen = 0;
        for (size_t i = 0; i < count && !p->error; i++) {
                if (slots == 0 && seen == running)
                        break;
                enum state st = (enum state)m->states[i];
                if (st == ST_ACTIVE)
                        seen++;
                else if (st != ST_PENDING || slots == 0)
                        continue;
                const json_t *rec = item_lookup(p, id, size, n->id, base, i);
                _cleanup_json_ json_t *index = json_integer((json_int_t)i);
                if (!index)
                        return p->error = -ENOMEM;
                struct wf_scope s = p->scope;
                s.item = json_array_get(items, i);
                s.index = index;
                struct wf_leaf l = {.node = t, .id = id, .record = rec, .scope = &s};
                if (st == ST_ACTIVE) {
                        r = drive_leaf(p, &l);
                } else {
                        slots--;
                        r = t->kind->start(p, &l, 1, false);
                }
                if (r < 0 && p->error)
                        return p->error;
        }
        return p->error;
}

int wf_plan_map(struct wf_plan_ctx *p, const struct wf_node *n)
{
        _cleanup_json_ json_t *items = NULL;
        struct wf_map_memo local = {.node = n, .all_dirty = true}, *m = &local;
        char id[96];
        int r = eval_or_fail(p, n->id, 1, n->items, &p->scope, "items", &items);

        if (r <= 0)
                return r;
        if (!json_is_array(items))
                return emit_fail(p, n->id, 1,
                                 error_json("error", "items must evaluate to an array (got %s)",
                                            json_is_null(items)     ? "null"
                                            : json_is_object(items) ? "an object"
                                                                    : "a scalar"));
        size_t count = json_array_size(items);
        if (count > WF_MAX_MAP_ITEMS)
                return emit_fail(p, n->id, 1,
                                 error_json("error", "items has %zu entries; the limit is %d",
                                            count, WF_MAX_MAP_ITEMS));

        /* pass 1: classify (no actions), so a failed item stops the map before anything
         * else is started */
        size_t base = strlen(n->id);
        if (base + 24 > sizeof(id))
                base = 0; /* an id this long cannot have items; item_id() says so */
        if (p->cache && !(m = wf_plan_cache_map(p->cache, n)))
                return p->error = -ENOMEM;
        r = map_states(p, n, m, items, count, id, sizeof(id), base);
        if (r < 0) {
                wf_map_memo_clear(&local);
                return p->error = r;
        }
        r = map_items(p, n, m, items, id, sizeof(id), base);
        wf_map_memo_clear(&local);
        return r;
}

int wf_plan_loop(struct wf_plan_ctx *p, const struct wf_node *n)
{
        const struct wf_node *t = n->body;
        char id[96], prev_id[96];
        size_t lo = 0, hi;

        /* iterations 1..k have records, contiguously: find k by galloping + bisection */
        if (item_record(p, id, sizeof(id), n->id, '#', 1)) {
                lo = 1;
                hi = 2;
                while (hi <= (size_t)n->max_iterations &&
                       item_record(p, id, sizeof(id), n->id, '#', hi)) {
                        lo = hi;
                        hi *= 2;
                }
                if (hi > (size_t)n->max_iterations + 1)
                        hi = (size_t)n->max_iterations + 1;
                while (hi - lo > 1) { /* lo has a record, hi does not */
                        size_t mid = lo + (hi - lo) / 2;
                        if (item_record(p, id, sizeof(id), n->id, '#', mid))
                                lo = mid;
                        else
                                hi = mid;
                }
        }
        size_t k = lo;
        const json_t *prev =
            k > 1 ? item_record(p, prev_id, sizeof(prev_id), n->id, '#', k - 1) : NULL;
        _cleanup_json_ json_t *iteration = json_integer((json_int_t)(k ? k : 1));
        if (!iteration)
                return p->error = -ENOMEM;
        struct wf_scope s = p->scope;
        s.iteration = iteration;
        s.last =
            prev && !strcmp(rec_status(prev), "completed") ? rec_get(prev, "output") : json_null();
        if (k == 0) {
                item_record(p, id, sizeof(id), n->id, '#', 1);
                struct wf_leaf l = {.node = t, .id = id, .record = NULL, .scope = &s};
                return t->kind->start(p, &l, 1, false);
        }
        const json_t *rec = item_record(p, id, sizeof(id), n->id, '#', k);
        struct wf_leaf l = {.node = t, .id = id, .record = rec, .scope = &s};
        switch (leaf_state(t, rec)) {
        case ST_ACTIVE:
        case ST_PENDING:
                return drive_leaf(p, &l);
        case ST_FAILED:
                return fail_composite(p, n, id, rec);
        case ST_ESCALATED:
                return note_escalation(p, id, rec);
        default:
                break;
        }
        /* iteration k finished: evaluate until with iteration = k, last = its output */
        _cleanup_json_ json_t *v = NULL;
        json_t *last = !strcmp(rec_status(rec), "completed") ? rec_get(rec, "output") : json_null();
        s.last = last;
        int r = eval_or_fail(p, n->id, 1, n->until, &s, "until", &v);
        if (r <= 0)
                return r;
        if (wf_expr_truthy(v))
                return emit_complete(
                    p, n->id, json_pack("{s:I,s:O}", "iterations", (json_int_t)k, "last", last));
        if (k >= (size_t)n->max_iterations)
                return emit_fail(p, n->id, 1,
                                 error_json("error",
                                            "loop reached max_iterations (%d) before until "
                                            "became true",
                                            n->max_iterations));
        _cleanup_json_ json_t *next_iteration = json_integer((json_int_t)k + 1);
        if (!next_iteration)
                return p->error = -ENOMEM;
        s.iteration = next_iteration;
        item_record(p, id, sizeof(id), n->id, '#', k + 1);
        struct wf_leaf nl = {.node = t, .id = id, .record = NULL, .scope = &s};
        return t->kind->start(p, &nl, 1, false);
}

/* ---- the whole run ---- */

/* records: check every node record too (not when a plan cache already knows them) */
static bool snapshot_ok(const json_t *snap, bool records)
{
        const json_t *nodes = json_object_get(snap, "nodes");
        const char *k;
        json_t *v;

        if (!json_is_object(snap) || !json_is_integer(json_object_get(snap, "now_ms")) ||
            !json_is_string(json_object_get(snap, "run_id")))
                return false;
        if (nodes && !json_is_object(nodes))
                return false;
        if (!records)
                nodes = NULL;
        json_object_foreach ((json_t *)nodes, k, v)
                if (!json_is_object(v))
                        return false;
        const json_t *f = json_object_get(snap, "in_flight");
        if (f && !json_is_array(f) && !json_is_null(f))
                return false;
        return true;
}

static json_t *leaf_outputs(const struct wf_workflow *wf, const json_t *nodes)
{
        json_t *out = json_object();

        for (size_t i = 0; out && i < wf->n_nodes; i++) {
                const struct wf_node *n = &wf->nodes[i];
                const json_t *rec = json_object_get(nodes, n->id);
                if (n->n_dependents || strcmp(rec_status(rec), "completed") != 0)
                        continue;
                if (json_object_set(out, n->id, rec_get(rec, "output")) < 0) {
                        json_decref(out);
                        return NULL;
                }
        }
        return out;
}

/* What one plan learns about the static nodes, filled in topological order: a node's gates
 * and dependencies come before it, so their state is known when it is reached. */
struct run_walk {
        enum state *state; /* per node */
        bool *settled;     /* per node: completed, tolerated or skipped (lets dependents go) */
        const struct wf_node *failed; /* the first node failed for good (on_failure fail) */
};

/* How far a node not reached yet may go, from its branch gates and dependencies. */
enum readiness {
        READY,      /* every gate open and every dependency settled */
        NOT_YET,    /* a gate's condition or a dependency is still running */
        SKIP_GATED, /* on a branch that was not taken (or whose condition was skipped) */
        SKIP_DEPS,  /* every dependency was skipped */
};

static int emit_skip(struct wf_plan_ctx *p, const char *id, const char *reason)
{
        return emit(p, json_pack("{s:s,s:s,s:s}", "action", "skip", "node", id, "reason", reason));
}

/* Emits finish with status failed and error e (stolen), whose "node" is null: a failure of
 * the run as a whole. */
static int finish_run_failed(struct wf_plan_ctx *p, json_t *e)
{
        if (!e || json_object_set_new(e, "node", json_null()) < 0) {
                json_decref(e);
                return -ENOMEM;
        }
        return emit(p,
                    json_pack("{s:s,s:s,s:o}", "action", "finish", "status", "failed", "error", e));
}

/* Step 1: a workflow timeout that has passed fails the run; one still ahead sets a timer.
 * 1 when the run is finished, 0 to plan on, or -ENOMEM. */
static int plan_workflow_timeout(struct wf_plan_ctx *p, const json_t *snap)
{
        const struct wf_workflow *wf = p->wf;
        int64_t deadline = wf_run_deadline_ms(wf, snap);
        char d[96];

        if (deadline < 0)
                return 0;
        if (p->now < deadline) {
                timer(p, deadline);
                return 0;
        }
        span_text(p, wf->timeout_ms, d, sizeof(d));
        int r = finish_run_failed(p, error_json("timeout", "run exceeded its timeout of %s", d));
        return r < 0 ? r : 1;
}

/* Step 2a: a node's state from its snapshot record, acting on what is under way (a leaf in
 * progress is driven, an escalation noted, a failure remembered). true when the node still
 * has to be reached: not started yet, or a map/loop record left in progress. */
static bool walk_recorded(struct wf_plan_ctx *p, struct run_walk *w, size_t i)
{
        const struct wf_node *n = &p->wf->nodes[i];
        const json_t *rec = json_object_get(p->nodes, n->id);
        struct wf_leaf l = {.node = n, .id = n->id, .record = rec, .scope = &p->scope};

        w->state[i] = leaf_state(n, rec);
        if (rec && !strcmp(rec_status(rec), "skipped"))
                w->settled[i] = true;
        switch (w->state[i]) {
        case ST_DONE:
        case ST_TOLERATED:
                w->settled[i] = true;
                return false;
        case ST_SKIPPED:
                return false;
        case ST_FAILED:
                if (!w->failed)
                        w->failed = n;
                return false;
        case ST_ESCALATED:
                note_escalation(p, n->id, rec);
                return false;
        case ST_ACTIVE:
                if (n->kind->composite)
                        return true; /* drive it like a node being reached */
                (void)drive_leaf(p, &l);
                return false;
        case ST_PENDING:
                break;
        }
        return true;
}

/* Step 2b: may a node not reached yet go? Branch gates first (a branch not taken skips the
 * node even while another gate is open), then dependencies (all skipped skips it). */
static enum readiness node_readiness(const struct wf_plan_ctx *p, const struct run_walk *w,
                                     const struct wf_node *n)
{
        const struct wf_workflow *wf = p->wf;
        bool gated_off = false, gate_open = true, all_skipped = n->n_deps > 0, all_settled = true;

        for (size_t g = 0; g < n->n_gates; g++) {
                size_t c = n->gates[g].condition;
                if (w->state[c] == ST_SKIPPED || w->state[c] == ST_TOLERATED) {
                        gated_off = true;
                } else if (w->state[c] == ST_DONE) {
                        const json_t *crec = json_object_get(p->nodes, wf->nodes[c].id);
                        const char *branch =
                            json_string_value(json_object_get(rec_get(crec, "output"), "branch"));
                        bool took_then = branch && !strcmp(branch, "then");
                        if (took_then != n->gates[g].then_branch)
                                gated_off = true;
                } else {
                        gate_open = false;
                }
        }
        if (gated_off)
                return SKIP_GATED;
        for (size_t k = 0; k < n->n_deps; k++) {
                size_t d = n->deps[k];
                if (w->state[d] != ST_SKIPPED)
                        all_skipped = false;
                if (!w->settled[d])
                        all_settled = false;
        }
        if (all_skipped)
                return SKIP_DEPS;
        return all_settled && gate_open ? READY : NOT_YET;
}

/* Step 2c: a ready node's `when` (only before its first record). 1 when the node starts, 0
 * when it does not (skipped, or failed for an expression error: both emitted), or -ENOMEM. */
static int evaluate_when(struct wf_plan_ctx *p, struct run_walk *w, size_t i)
{
        const struct wf_node *n = &p->wf->nodes[i];
        _cleanup_json_ json_t *v = NULL;
        int r;

        if (!n->when || json_object_get(p->nodes, n->id))
                return 1;
        r = eval_or_fail(p, n->id, 1, n->when, &p->scope, "when", &v);
        if (r == 0)
                w->state[i] = ST_ACTIVE; /* failed for an expression error, emitted */
        if (r <= 0)
                return r;
        if (wf_expr_truthy(v))
                return 1;
        w->state[i] = ST_SKIPPED;
        emit_skip(p, n->id, "when was false");
        return 0;
}

/* Step 2: one static node, in topological order: its record, then (if it is still to be
 * reached) gates and dependencies, when, and its start. 0, or a negative errno that ends
 * the plan; emission failures are left in p->error. */
static int walk_node(struct wf_plan_ctx *p, struct run_walk *w, size_t i)
{
        const struct wf_node *n = &p->wf->nodes[i];
        int r;

        if (!walk_recorded(p, w, i))
                return 0;
        switch (node_readiness(p, w, n)) {
        case SKIP_GATED:
                w->state[i] = ST_SKIPPED;
                emit_skip(p, n->id, "branch not taken");
                return 0;
        case SKIP_DEPS:
                w->state[i] = ST_SKIPPED;
                emit_skip(p, n->id, "dependency skipped");
                return 0;
        case NOT_YET:
                return 0;
        case READY:
                break;
        }
        r = evaluate_when(p, w, i);
        if (r <= 0)
                return r;
        w->state[i] = ST_ACTIVE;
        if (n->kind->composite) {
                (void)n->kind->composite(p, n);
        } else {
                struct wf_leaf l = {.node = n,
                                    .id = n->id,
                                    .record = json_object_get(p->nodes, n->id),
                                    .scope = &p->scope};
                (void)n->kind->start(p, &l, 1, false);
        }
        return 0;
}

/* Step 3a: a node failed for good ends the run failed, replacing every other action. */
static int finish_node_failed(struct wf_plan_ctx *p, const struct wf_node *failed)
{
        const json_t *rec = json_object_get(p->nodes, failed->id);
        const json_t *ne = rec_get(rec, "error");
        const char *msg = json_string_value(json_object_get(ne, "message"));
        const char *klass = json_string_value(json_object_get(ne, "class"));
        json_t *e = error_json(klass ? klass : "error", "node '%s' failed: %s", failed->id,
                               msg ? msg : "no message");

        if (!e || json_object_set_new(e, "node", json_string(failed->id)) < 0 ||
            json_object_set(e, "error", (json_t *)ne) < 0) {
                json_decref(e);
                return -ENOMEM;
        }
        json_array_clear(p->actions);
        return emit(p,
                    json_pack("{s:s,s:s,s:o}", "action", "finish", "status", "failed", "error", e));
}

/* Step 3b: every node settled: the run completes with the workflow's output (rendered), or
 * the outputs of its leaves; an output that does not render fails the run. */
static int finish_completed(struct wf_plan_ctx *p)
{
        const struct wf_workflow *wf = p->wf;
        json_t *output;

        if (wf->output) {
                struct wf_expr_error err = {0};
                _cleanup_free_ char *path = NULL;
                int r = wf_tmpl_render(wf->output, &p->scope, &output, &err, &path);
                if (r == -EINVAL) {
                        json_t *e = error_json(
                            "error", "could not render the workflow output%s at column %d: %s",
                            path ? path : "", err.column, err.message ? err.message : "error");
                        wf_expr_error_clear(&err);
                        return finish_run_failed(p, e);
                }
                wf_expr_error_clear(&err);
                if (r < 0)
                        return r;
        } else {
                output = leaf_outputs(wf, p->nodes);
                if (!output)
                        return -ENOMEM;
        }
        return emit(p, json_pack("{s:s,s:s,s:o}", "action", "finish", "status", "completed",
                                 "output", output));
}

/* wf_plan_then: when every action is an execute of an effect that stays in flight (http,
 * agent), the plan after them is the wait this walk found — started, in flight, they
 * change nothing else and set no timer — so it is handed out now. A notify execute
 * completes at once (its dependents may follow): not then. */
static int plan_then(struct wf_plan_ctx *p)
{
        size_t i;
        json_t *a;

        if (!p->then)
                return 0;
        json_array_foreach (p->actions, i, a) {
                const char *act = json_string_value(json_object_get(a, "action"));
                const char *kind = json_string_value(json_object_get(a, "kind"));
                if (!act || strcmp(act, "execute") || !kind ||
                    (strcmp(kind, "http") && strcmp(kind, "agent")))
                        return 0;
        }
        *p->then = json_pack("{s:s,s:o}", "action", "wait", "wake_at_ms",
                             p->has_wake ? json_integer(p->wake) : json_null());
        return *p->then ? 0 : (p->error = -ENOMEM);
}

/* Step 3: what the run as a whole does after the walk, first match wins: a failed node
 * fails it, an escalation asks for input (both replace the walk's actions), all settled
 * completes it, actions go out as they are, and otherwise it waits for the next timer. */
static int plan_outcome(struct wf_plan_ctx *p, const struct run_walk *w)
{
        bool all_settled = true;

        if (w->failed)
                return finish_node_failed(p, w->failed);
        if (p->escalated_id) {
                json_array_clear(p->actions);
                return emit(p, json_pack("{s:s,s:s,s:O}", "action", "needs_input", "node",
                                         p->escalated_id, "error", (json_t *)p->escalated_error));
        }
        for (size_t i = 0; i < p->wf->n_nodes; i++)
                if (!w->settled[i])
                        all_settled = false;
        if (all_settled)
                return finish_completed(p);
        if (json_array_size(p->actions) > 0)
                return plan_then(p);
        return emit(p, json_pack("{s:s,s:o}", "action", "wait", "wake_at_ms",
                                 p->has_wake ? json_integer(p->wake) : json_null()));
}

/* The plan of one run: the workflow timeout, a walk over the static nodes in topological
 * order, then the run's outcome. */
static int plan_run(struct wf_plan_ctx *p, const json_t *snap)
{
        const struct wf_workflow *wf = p->wf;
        _cleanup_free_ enum state *state = calloc(wf->n_nodes, sizeof(enum state));
        _cleanup_free_ bool *settled = calloc(wf->n_nodes, sizeof(bool));
        struct run_walk w = {.state = state, .settled = settled};
        int r;

        if (!state || !settled)
                return -ENOMEM;
        r = plan_workflow_timeout(p, snap);
        if (r != 0)
                return r < 0 ? r : 0;
        for (size_t t = 0; t < wf->n_nodes && !p->error; t++) {
                r = walk_node(p, &w, wf->topo[t]);
                if (r < 0)
                        return r;
        }
        if (p->error)
                return p->error;
        return plan_outcome(p, &w);
}

int wf_plan(const struct wf_workflow *wf, const json_t *snapshot, json_t **actions)
{
        return wf_plan_then(wf, snapshot, actions, NULL);
}

int wf_plan_then(const struct wf_workflow *wf, const json_t *snapshot, json_t **actions,
                 json_t **then)
{
        return wf_plan_then_cached(wf, snapshot, NULL, actions, then);
}

int wf_plan_then_cached(const struct wf_workflow *wf, const json_t *snapshot,
                        struct wf_plan_cache *cache, json_t **actions, json_t **then)
{
        struct wf_plan_ctx p = {.wf = wf, .then = then};
        _cleanup_json_ json_t *empty = NULL;
        bool known = false;
        int r;

        *actions = NULL;
        if (then)
                *then = NULL;
        /* a cache over this very nodes object has seen its records (the caller notes every
         * one it sets): they are not all checked again */
        if (cache && json_is_object(snapshot))
                known = wf_plan_cache_knows(cache, wf, json_object_get(snapshot, "nodes"));
        if (!wf || !snapshot_ok(snapshot, !known))
                return -EINVAL;
        p.nodes = json_object_get(snapshot, "nodes");
        if (cache && p.nodes) {
                wf_plan_cache_begin(cache, wf, p.nodes);
                p.cache = cache;
        }
        if (!p.nodes) {
                empty = json_object();
                if (!empty)
                        return -ENOMEM;
                p.nodes = empty;
        }
        p.signals = json_object_get(snapshot, "signals");
        p.children = json_object_get(snapshot, "children");
        p.approvals = json_object_get(snapshot, "approvals");
        p.agents = json_object_get(snapshot, "agents");
        p.run_id = json_string_value(json_object_get(snapshot, "run_id"));
        p.now = json_integer_value(json_object_get(snapshot, "now_ms"));
        p.scale = wf_snapshot_time_scale(snapshot);
        p.actions = json_array();
        p.in_flight = json_object();
        p.consumed = json_object();
        p.run = json_pack("{s:s}", "id", p.run_id);
        if (!p.actions || !p.in_flight || !p.consumed || !p.run) {
                r = -ENOMEM;
                goto out;
        }
        size_t i;
        json_t *f;
        json_array_foreach (json_object_get(snapshot, "in_flight"), i, f)
                if (json_is_string(f) &&
                    json_object_set_new(p.in_flight, json_string_value(f), json_true()) < 0) {
                        r = -ENOMEM;
                        goto out;
                }
        p.scope = (struct wf_scope){
            .input = json_object_get(snapshot, "input"), .nodes = p.nodes, .run = p.run};
        r = plan_run(&p, snapshot);
        if (r == 0 && p.error)
                r = p.error;
        if (r == 0)
                *actions = TAKE_PTR(p.actions);
        else if (then) {
                json_decref(*then);
                *then = NULL;
        }
out:
        if (p.actions)
                json_decref(p.actions);
        if (p.in_flight)
                json_decref(p.in_flight);
        if (p.consumed)
                json_decref(p.consumed);
        if (p.run)
                json_decref(p.run);
        free(p.escalated_id);
        return r;
}
