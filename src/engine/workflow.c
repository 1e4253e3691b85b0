/*
 * Parsing and validation of workflow definitions. Validation collects EVERY problem (up
 * to WF_MAX_ERRORS) as {"node", "field", "message"} so a user fixes a definition in one
 * round trip: unknown fields (with a did-you-mean hint), type errors, bad durations,
 * expression syntax errors with columns, references to unknown nodes or to nodes that are
 * not upstream, duplicate ids, dependency cycles (named) and limits. The node kinds are a
 * table (kind name, fields, flags, parse and plan hooks) so new kinds plug in.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "duration.h"
#include "strutil.h"

#define DEFAULT_HTTP_TIMEOUT_MS  (60 * 1000)
#define DEFAULT_INITIAL_DELAY_MS 1000
#define DEFAULT_MAX_DELAY_MS     (5 * 60 * 1000)
#define MAX_HEADERS              100
#define MAX_DESCRIPTION          4096

/* Scope masks: which root names an expression may read. */
enum {
        SCOPE_INPUT = 1 << 0,
        SCOPE_NODES = 1 << 1,
        SCOPE_RUN = 1 << 2,
        SCOPE_ITEM = 1 << 3,    /* item, index */
        SCOPE_LOOP = 1 << 4,    /* iteration, last */
        SCOPE_SECRETS = 1 << 5, /* secrets: an http node's request only */
        SCOPE_BASE = SCOPE_INPUT | SCOPE_NODES | SCOPE_RUN,
};

struct pending_ref {
        size_t owner;  /* static node whose expression reads the target */
        size_t target; /* static node read */
        char *path;
        int column;
};

struct wf_parse_ctx {
        struct wf_workflow *wf;
        json_t *errors;
        size_t n_errors, dropped;
        bool oom;
        struct pending_ref *refs;
        size_t n_refs, cap_refs;
};

static void add_error(struct wf_parse_ctx *c, const char *node, const char *field, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
static void add_error(struct wf_parse_ctx *c, const char *node, const char *field, const char *fmt,
                      ...)
{
        va_list ap;
        char *m = NULL;
        json_t *e;

        if (c->n_errors >= WF_MAX_ERRORS) {
                c->dropped++;
                return;
        }
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (!m) {
                c->oom = true;
                return;
        }
        e = json_pack("{s:o,s:s,s:s}", "node", node ? json_string(node) : json_null(), "field",
                      field, "message", m);
        free(m);
        if (!e || json_array_append_new(c->errors, e) < 0) {
                c->oom = true;
                return;
        }
        c->n_errors++;
}

static char *path_join(const char *base, const char *field)
{
        return str_printf("%s/%s", base, field);
}

/* ---- helpers ---- */

static size_t edit_distance(const char *a, const char *b)
{
        size_t la = strlen(a), lb = strlen(b);
        size_t row[64];

        if (la >= 63 || lb >= 63)
                return 99;
        for (size_t j = 0; j <= lb; j++)
                row[j] = j;
        for (size_t i = 1; i <= la; i++) {
                size_t prev = row[0];
                row[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t cur = row[j];
                        size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
                        size_t best = prev + cost;
                        if (row[j] + 1 < best)
                                best = row[j] + 1;
                        if (row[j - 1] + 1 < best)
                                best = row[j - 1] + 1;
                        row[j] = best;
                        prev = cur;
                }
        }
        return row[lb];
}

static bool in_list(const char *const *list, const char *s)
{
        for (; list && *list; list++)
                if (!strcmp(*list, s))
                        return true;
        return false;
}

/* Reports fields of obj that are in none of the lists, suggesting the closest known one. */
static void check_fields(struct wf_parse_ctx *c, const char *node, const char *path,
                         const json_t *obj, const char *what, const char *const *a,
                         const char *const *b)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)obj, key, v) {
                if (in_list(a, key) || in_list(b, key))
                        continue;
                const char *best = NULL;
                size_t best_d = 3;
                _cleanup_buf_ struct buf known;
                buf_init(&known, 4096);
                for (int l = 0; l < 2; l++)
                        for (const char *const *f = l ? b : a; f && *f; f++) {
                                size_t d = edit_distance(key, *f);
                                if (d < best_d) {
                                        best_d = d;
                                        best = *f;
                                }
                                (void)buf_printf(&known, "%s%s", known.len ? ", " : "", *f);
                        }
                _cleanup_free_ char *field = path_join(path, key);
                if (best)
                        add_error(c, node, field ? field : path,
                                  "unknown field '%s' in %s; did you mean '%s'?", key, what, best);
                else
                        add_error(c, node, field ? field : path,
                                  "unknown field '%s' in %s; known fields: %s", key, what,
                                  known.data ? known.data : "none");
        }
}

static bool get_string(struct wf_parse_ctx *c, const char *node, const char *path,
                       const json_t *obj, const char *key, bool required, const char **out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);

        *out = NULL;
        if (!v) {
                if (required)
                        add_error(c, node, field ? field : path, "missing required field '%s'",
                                  key);
                return !required;
        }
        if (!json_is_string(v)) {
                add_error(c, node, field ? field : path, "'%s' must be a string", key);
                return false;
        }
        *out = json_string_value(v);
        return true;
}

static bool get_duration(struct wf_parse_ctx *c, const char *node, const char *path,
                         const json_t *obj, const char *key, int64_t *out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);
        int r;

        if (!v)
                return true;
        if (!json_is_string(v)) {
                add_error(c, node, field ? field : path,
                          "'%s' must be a duration string such as \"30s\", \"5m\", \"2h\" or "
                          "\"1w\"",
                          key);
                return false;
        }
        r = duration_parse_ms(json_string_value(v), out);
        if (r == -ERANGE) {
                add_error(c, node, field ? field : path,
                          "'%s' is too long: \"%s\" (limit: 10 years)", key, json_string_value(v));
                return false;
        }
        if (r < 0) {
                add_error(c, node, field ? field : path,
                          "'%s' is not a valid duration: \"%s\"; write e.g. \"250ms\", \"30s\", "
                          "\"5m\", \"1h30m\", \"2d\" or \"1w\"",
                          key, json_string_value(v));
                return false;
        }
        return true;
}

static bool get_int(struct wf_parse_ctx *c, const char *node, const char *path, const json_t *obj,
                    const char *key, int64_t lo, int64_t hi, int64_t *out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);

        if (!v)
                return true;
        if (!json_is_integer(v)) {
                add_error(c, node, field ? field : path, "'%s' must be an integer", key);
                return false;
        }
        if (json_integer_value(v) < lo || json_integer_value(v) > hi) {
                add_error(c, node, field ? field : path,
                          "'%s' must be between %lld and %lld (got %lld)", key, (long long)lo,
                          (long long)hi, (long long)json_integer_value(v));
                return false;
        }
        *out = json_integer_value(v);
        return true;
}

static bool is_alpha(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

/* ^[A-Za-z][A-Za-z0-9_-]{0,63}$ */
static bool valid_node_id(const char *s)
{
        size_t n = strlen(s);
        if (n < 1 || n > 64 || !is_alpha(s[0]))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '_' && s[i] != '-')
                        return false;
        return true;
}

/* ^[a-z0-9][a-z0-9_.-]{0,62}$ */
static bool valid_workflow_name(const char *s)
{
        size_t n = strlen(s);
        if (n < 1 || n > 63)
                return false;
        for (size_t i = 0; i < n; i++) {
                bool ok = (s[i] >= 'a' && s[i] <= 'z') || is_digit(s[i]) ||
                          (i > 0 && (s[i] == '_' || s[i] == '.' || s[i] == '-'));
                if (!ok)
                        return false;
        }
        return true;
}

/* ---- expressions and their references ---- */

struct ref_check {
        struct wf_parse_ctx *c;
        const char *node;
        const char *path;
        unsigned scope;
        size_t owner; /* SIZE_MAX: the workflow output (any node may be read) */
        int column_offset;
};

static const char *scope_names(unsigned scope)
{
        if (scope & SCOPE_ITEM && scope & SCOPE_LOOP)
                return "input, nodes, run, item, index, iteration, last";
        if (scope & SCOPE_ITEM)
                return "input, nodes, run, item, index";
        if (scope & SCOPE_LOOP)
                return "input, nodes, run, iteration, last";
        return "input, nodes, run";
}

static void known_nodes(struct wf_parse_ctx *c, struct buf *b)
{
        size_t shown = 0;
        for (size_t i = 0; i < c->wf->n_nodes && shown < 20; i++)
                if (c->wf->nodes[i].id) {
                        (void)buf_printf(b, "%s%s", shown ? ", " : "", c->wf->nodes[i].id);
                        shown++;
                }
        if (shown < c->wf->n_nodes)
                (void)buf_append_str(b, ", ...");
}

static int ref_cb(void *userdata, const char *root, const char *node_id, int column)
{
        struct ref_check *rc = userdata;
        struct wf_parse_ctx *c = rc->c;
        int col = column + rc->column_offset;
        unsigned need = 0;

        if (!strcmp(root, "input"))
                need = SCOPE_INPUT;
        else if (!strcmp(root, "nodes"))
                need = SCOPE_NODES;
        else if (!strcmp(root, "run"))
                need = SCOPE_RUN;
        else if (!strcmp(root, "item") || !strcmp(root, "index"))
                need = SCOPE_ITEM;
        else if (!strcmp(root, "iteration") || !strcmp(root, "last"))
                need = SCOPE_LOOP;
        else if (!strcmp(root, "secrets"))
                need = SCOPE_SECRETS;
        if (need == SCOPE_SECRETS) {
                /* resolved by the worker in the request that leaves, never stored */
                if (!(rc->scope & SCOPE_SECRETS))
                        add_error(c, rc->node, rc->path,
                                  "'secrets' at column %d can only be used in an http node's "
                                  "request (url, headers, body)",
                                  col);
                else if (!node_id)
                        add_error(c, rc->node, rc->path,
                                  "'secrets' at column %d must be followed by a literal name, "
                                  "e.g. secrets.OPENAI_API_KEY or secrets[\"my-key\"]",
                                  col);
                return 0;
        }
        if (!need) {
                add_error(c, rc->node, rc->path,
                          "unknown name '%s' at column %d; names available here: %s", root, col,
                          scope_names(rc->scope));
                return 0;
        }
        if (!(rc->scope & need)) {
                add_error(c, rc->node, rc->path,
                          "'%s' at column %d is only available %s; names available here: %s", root,
                          col,
                          need == SCOPE_ITEM ? "inside a map's node template"
                                             : "in a loop's until and node template",
                          scope_names(rc->scope));
                return 0;
        }
        if (need != SCOPE_NODES)
                return 0;
        if (!node_id) {
                add_error(c, rc->node, rc->path,
                          "'nodes' at column %d must be followed by a literal node id, e.g. "
                          "nodes.fetch.output or nodes[\"my-node\"].output",
                          col);
                return 0;
        }
        const struct wf_node *target = wf_find_node(c->wf, node_id);
        if (!target) {
                _cleanup_buf_ struct buf b;
                buf_init(&b, 4096);
                known_nodes(c, &b);
                add_error(c, rc->node, rc->path,
                          "expression refers to unknown node '%s' at column %d; known nodes: %s",
                          node_id, col, b.data ? b.data : "");
                return 0;
        }
        if (rc->owner == SIZE_MAX)
                return 0;
        if (c->n_refs == c->cap_refs) {
                size_t cap = c->cap_refs ? c->cap_refs * 2 : 16;
                struct pending_ref *r = realloc(c->refs, cap * sizeof(*r));
                if (!r) {
                        c->oom = true;
                        return -ENOMEM;
                }
                c->refs = r;
                c->cap_refs = cap;
        }
        c->refs[c->n_refs] = (struct pending_ref){
            .owner = rc->owner, .target = target->index, .path = strdup(rc->path), .column = col};
        if (!c->refs[c->n_refs].path) {
                c->oom = true;
                return -ENOMEM;
        }
        c->n_refs++;
        return 0;
}

/* The static node an expression of n belongs to (templates belong to their map/loop). */
static size_t owner_of(const struct wf_node *n)
{
        while (n->parent)
                n = n->parent;
        return n->index;
}

static unsigned scope_of(const struct wf_node *n)
{
        unsigned s = SCOPE_BASE;
        if (n->parent && !strcmp(n->parent->kind->name, "map"))
                s |= SCOPE_ITEM;
        if (n->parent && !strcmp(n->parent->kind->name, "loop"))
                s |= SCOPE_LOOP;
        return s;
}

/* Parses the expression at obj[key] (a bare expression; "${ expr }" is accepted too). */
static bool parse_expr_field(struct wf_parse_ctx *c, const struct wf_node *n, const char *path,
                             const json_t *obj, const char *key, bool required,
                             unsigned extra_scope, struct wf_expr **out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);
        const char *node = n->id ? n->id : (n->parent ? n->parent->id : NULL);
        struct wf_expr_error err = {0};
        const char *src;
        size_t len;
        int offset = 0;

        *out = NULL;
        if (!field) {
                c->oom = true;
                return false;
        }
        if (!v) {
                if (required)
                        add_error(c, node, field, "missing required field '%s' (an expression)",
                                  key);
                return !required;
        }
        if (!json_is_string(v)) {
                add_error(c, node, field,
                          "'%s' must be an expression string, e.g. \"input.count > 0\"", key);
                return false;
        }
        src = json_string_value(v);
        len = json_string_length(v);
        if (len >= 3 && src[0] == '$' && src[1] == '{' && src[len - 1] == '}' &&
            !memchr(src + 2, '$', len - 3)) {
                src += 2;
                len -= 3;
                offset = 2;
        }
        if (len > WF_EXPR_MAX_LEN) {
                add_error(c, node, field, "expression too long (%zu bytes; limit %d)", len,
                          WF_EXPR_MAX_LEN);
                return false;
        }
        int r = wf_expr_parse_n(src, len, false, NULL, out, &err);
        if (r == -ENOMEM) {
                c->oom = true;
                wf_expr_error_clear(&err);
                return false;
        }
        if (r < 0) {
                add_error(c, node, field, "invalid expression at column %d: %s",
                          err.column + offset, err.message ? err.message : "syntax error");
                wf_expr_error_clear(&err);
                return false;
        }
        struct ref_check rc = {.c = c,
                               .node = node,
                               .path = field,
                               .scope = scope_of(n) | extra_scope,
                               .owner = owner_of(n),
                               .column_offset = offset};
        (void)wf_expr_walk_refs(*out, ref_cb, &rc);
        return true;
}

struct tmpl_err_ctx {
        struct wf_parse_ctx *c;
        const char *node;
        const char *base;
};

static void tmpl_error(void *userdata, const char *path, const char *message, int column)
{
        struct tmpl_err_ctx *t = userdata;
        _cleanup_free_ char *field = str_printf("%s%s", t->base, path);

        add_error(t->c, t->node, field ? field : t->base, "invalid template at column %d: %s",
                  column, message);
}

static bool parse_template(struct wf_parse_ctx *c, const struct wf_node *n, const char *field,
                           const json_t *v, unsigned scope, size_t owner, struct wf_tmpl **out)
{
        const char *node = n ? (n->id ? n->id : (n->parent ? n->parent->id : NULL)) : NULL;
        struct tmpl_err_ctx tc = {.c = c, .node = node, .base = field};
        int r = wf_tmpl_compile(v, tmpl_error, &tc, out);

        if (r == -ENOMEM) {
                c->oom = true;
                return false;
        }
        if (r < 0)
                return false;
        struct ref_check rc = {.c = c, .node = node, .path = field, .scope = scope, .owner = owner};
        (void)wf_tmpl_walk_refs(*out, ref_cb, &rc);
        return true;
}

/* ---- kinds ---- */

static const char *const http_fields[] = {"request", "expect_status", NULL};
static const char *const request_fields[] = {"method", "url", "headers", "body", NULL};
static const char *const sleep_fields[] = {"duration", "until", NULL};
static const char *const wait_event_fields[] = {"event", NULL};
static const char *const condition_fields[] = {"if", "then", "else", NULL};
static const char *const map_fields[] = {"items", "concurrency", "node", NULL};
static const char *const loop_fields[] = {"node", "until", "max_iterations", NULL};
static const char *const subworkflow_fields[] = {"workflow", "version", "input", NULL};
static const char *const transform_fields[] = {"output", NULL};
static const char *const agent_fields[] = {"agent", NULL};
static const char *const approval_fields[] = {
    "title",      "reviewers",  "channels", "quorum",          "forbid_self_approval",
    "on_timeout", "escalation", "context",  "proposed_action", NULL};
static const char *const notify_fields[] = {"channel", "title", "text", "links", NULL};
static const char *const no_fields[] = {NULL};

static const char *node_name(const struct wf_node *n)
{
        return n->id ? n->id : (n->parent ? n->parent->id : NULL);
}

/* ---- agent ---- */

static const char *const agent_def_fields[] = {
    "provider",  "base_url",   "model",         "api_key_secret", "system",
    "prompt",    "tools",      "allowed_hosts", "budget",         "output_schema",
    "max_turns", "max_tokens", "approve_tools", "secrets",        NULL};
/* What a node that references a stored agent may set over its definition (docs/workflows.md,
 * "Stored agents"); budget merges key by key, the others replace the definition's value. */
static const char *const agent_ref_fields[] = {
    "ref",    "version",   "system",        "prompt",
    "model",  "tools",     "allowed_hosts", "output_schema",
    "budget", "max_turns", "max_tokens",    "approve_tools",
    NULL};
/* ...and what only the definition says: where its calls go, with which key, and which
 * stored secrets its tools may use. */
static const char *const agent_ref_fixed_fields[] = {"provider", "base_url", "api_key_secret",
                                                     "secrets", NULL};
static const char *const agent_budget_fields[] = {
    "max_tokens", "max_cost_usd", "max_wall_clock", "max_llm_calls", "max_tool_calls", NULL};
static const char *const agent_tool_names[] = {"http_request", "ask_human", "spawn_agent", "finish",
                                               "shell",        "run_code",  NULL};

static json_t *parse_agent_approve_tools(struct wf_parse_ctx *c, const struct wf_node *n,
                                         const char *path, const json_t *v);
/* A node's reference to a stored agent: its name (checked where field says) and version (0:
 * the latest when the run is created). Whether the agent exists is the API's check at
 * apply time (the engine sees no database); which version a run uses is pinned when the
 * run is created (migrations/0019_agent_refs.sql). */
static void parse_agent_ref(struct wf_parse_ctx *c, struct wf_node *n, const char *field,
                            const char *name, int64_t version)
{
        if (!valid_workflow_name(name)) {
                add_error(c, node_name(n), field,
                          "invalid agent name '%s'; names are 1-63 characters of a-z, 0-9, _, . "
                          "and -, starting with a letter or digit",
                          name);
                return;
        }
        free(n->agent_ref);
        free(n->agent_ref_field);
        n->agent_ref = strdup(name);
        n->agent_ref_field = strdup(field);
        n->agent_ref_version = version;
        if (!n->agent_ref || !n->agent_ref_field)
                c->oom = true;
}

/* One string member of an agent (or a list of strings), without ${ } in names that the
 * worker must know before rendering. */
static void parse_agent_budget(struct wf_parse_ctx *c, const char *node, const char *path,
                               const json_t *b)
{
        const char *k;
        json_t *v;

        if (!json_is_object(b)) {
                add_error(c, node, path,
                          "'budget' must be an object such as {\"max_tokens\": 100000, "
                          "\"max_cost_usd\": 5}");
                return;
        }
        check_fields(c, node, path, b, "an agent budget", agent_budget_fields, NULL);
        json_object_foreach ((json_t *)b, k, v) {
                _cleanup_free_ char *f = path_join(path, k);
                if (!strcmp(k, "max_wall_clock")) {
                        int64_t ms;
                        (void)get_duration(c, node, path, b, k, &ms);
                } else if (!strcmp(k, "max_cost_usd")) {
                        if (!json_is_number(v) || json_number_value(v) < 0)
                                add_error(c, node, f ? f : path,
                                          "'max_cost_usd' must be a number of US dollars >= 0");
                } else if (in_list(agent_budget_fields, k)) {
                        int64_t n;
                        (void)get_int(c, node, path, b, k, 0, INT64_C(1) << 50, &n);
                }
        }
}

static void parse_agent(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                        const char *path)
{
        const char *node = node_name(n);
        json_t *a = json_object_get(obj, "agent");
        _cleanup_free_ char *apath = path_join(path, "agent");
        const char *s;
        json_t *v;
        size_t i;

        if (!apath) {
                c->oom = true;
                return;
        }
        if (!a) {
                add_error(c, node, apath,
                          "missing required field 'agent' ({\"provider\": \"openai\", \"model\": "
                          "\"...\", \"prompt\": \"...\"}, or the name of a stored agent)");
                return;
        }
        if (json_is_string(a)) { /* "agent": "researcher" */
                _cleanup_json_ json_t *none = json_object();
                if (!none) {
                        c->oom = true;
                        return;
                }
                parse_agent_ref(c, n, apath, json_string_value(a), 0);
                (void)parse_template(c, n, apath, none, scope_of(n), owner_of(n), &n->agent);
                return;
        }
        if (!json_is_object(a)) {
                add_error(c, node, apath,
                          "'agent' must be an object with provider, model and prompt, or the "
                          "name of a stored agent (\"agent\": \"researcher\")");
                return;
        }
        const json_t *ref = json_object_get(a, "ref");
        bool is_inline = !ref;
        if (ref) {
                _cleanup_free_ char *rpath = path_join(apath, "ref");
                int64_t version = 0;
                if (!rpath) {
                        c->oom = true;
                        return;
                }
                if (!json_is_string(ref))
                        add_error(c, node, rpath,
                                  "'ref' must be the name of a stored agent (agently agent list)");
                (void)get_int(c, node, apath, a, "version", 1, INT32_MAX, &version);
                if (json_is_string(ref))
                        parse_agent_ref(c, n, rpath, json_string_value(ref), version);
                for (const char *const *f = agent_ref_fixed_fields; *f; f++)
                        if (json_object_get(a, *f)) {
                                _cleanup_free_ char *fpath = path_join(apath, *f);
                                add_error(c, node, fpath ? fpath : apath,
                                          "'%s' belongs to the stored agent and a node cannot "
                                          "override it; apply a new version of the agent, or "
                                          "reference another one",
                                          *f);
                        }
                check_fields(c, node, apath, a, "an agent reference", agent_ref_fields,
                             agent_ref_fixed_fields);
        } else {
                check_fields(c, node, apath, a, "an agent", agent_def_fields, NULL);
        }
        if (get_string(c, node, apath, a, "provider", is_inline, &s) && s &&
            strcmp(s, "openai") != 0 && strcmp(s, "anthropic") != 0) {
                _cleanup_free_ char *f = path_join(apath, "provider");
                add_error(c, node, f ? f : apath,
                          "unknown provider '%s'; use openai (OpenAI-compatible chat "
                          "completions: OpenAI, Ollama, vLLM, llama.cpp) or anthropic",
                          s);
        }
        (void)get_string(c, node, apath, a, "model", is_inline, &s);
        if (get_string(c, node, apath, a, "prompt", is_inline, &s) && s)
                n->agent_ref_prompt = true;
        (void)get_string(c, node, apath, a, "system", false, &s);
        if (get_string(c, node, apath, a, "base_url", false, &s) && s && !strstr(s, "${") &&
            !str_has_prefix(s, "http://") && !str_has_prefix(s, "https://")) {
                _cleanup_free_ char *f = path_join(apath, "base_url");
                add_error(c, node, f ? f : apath,
                          "base_url must start with http:// or https:// (got \"%s\")", s);
        }
        if (get_string(c, node, apath, a, "api_key_secret", false, &s) && s && strstr(s, "${")) {
                _cleanup_free_ char *f = path_join(apath, "api_key_secret");
                add_error(c, node, f ? f : apath,
                          "api_key_secret names a stored secret; it cannot be an expression");
        }
        v = json_object_get(a, "tools");
        if (v) {
                _cleanup_free_ char *f = path_join(apath, "tools");
                json_t *t;
                if (!json_is_array(v))
                        add_error(c, node, f ? f : apath,
                                  "'tools' must be a list of tool names, e.g. [\"http_request\"]");
                else
                        json_array_foreach (v, i, t) {
                                if (!json_is_string(t) ||
                                    !in_list(agent_tool_names, json_string_value(t)))
                                        add_error(c, node, f ? f : apath,
                                                  "unknown tool %s%s%s; the built-in tools are "
                                                  "http_request, ask_human, spawn_agent, finish, "
                                                  "shell, run_code",
                                                  json_is_string(t) ? "'" : "",
                                                  json_is_string(t) ? json_string_value(t)
                                                                    : "(not a string)",
                                                  json_is_string(t) ? "'" : "");
                        }
        }
        v = json_object_get(a, "allowed_hosts");
        if (v) {
                _cleanup_free_ char *f = path_join(apath, "allowed_hosts");
                json_t *h;
                bool ok = json_is_array(v);
                json_array_foreach (v, i, h)
                        if (!json_is_string(h) || !*json_string_value(h) ||
                            strpbrk(json_string_value(h), "/:@ ${}"))
                                ok = false;
                if (!ok)
                        add_error(c, node, f ? f : apath,
                                  "'allowed_hosts' must be a list of host names, e.g. "
                                  "[\"api.example.com\", \"127.0.0.1\"]");
        }
        v = json_object_get(a, "secrets");
        if (v) { /* the stored secrets its tools may name as ${ secrets.NAME } (src/agent) */
                _cleanup_free_ char *f = path_join(apath, "secrets");
                json_t *h;
                bool ok = json_is_array(v);
                json_array_foreach (v, i, h)
                        if (!json_is_string(h) || !*json_string_value(h) ||
                            strpbrk(json_string_value(h), "${} /"))
                                ok = false; /* the name rule itself is src/secrets' */
                if (!ok)
                        add_error(c, node, f ? f : apath,
                                  "'secrets' must be a list of stored secret names its tools may "
                                  "use, e.g. [\"GITHUB_TOKEN\"]");
        }
        v = json_object_get(a, "budget");
        if (v) {
                _cleanup_free_ char *f = path_join(apath, "budget");
                parse_agent_budget(c, node, f ? f : apath, v);
        }
        v = json_object_get(a, "output_schema");
        if (v && !json_is_object(v)) {
                _cleanup_free_ char *f = path_join(apath, "output_schema");
                add_error(c, node, f ? f : apath, "'output_schema' must be a JSON Schema object");
        }
        int64_t num;
        (void)get_int(c, node, apath, a, "max_turns", 1, 1000, &num);
        (void)get_int(c, node, apath, a, "max_tokens", 1, 1000000, &num);
        /* approve_tools goes to the worker as the approval node's fields (durations in ms) */
        _cleanup_json_ json_t *copy = NULL, *gate = NULL;
        v = json_object_get(a, "approve_tools");
        if (v) {
                _cleanup_free_ char *f = path_join(apath, "approve_tools");
                gate = parse_agent_approve_tools(c, n, f ? f : apath, v);
                copy = json_deep_copy(a);
                if (!copy || (gate && json_object_set(copy, "approve_tools", gate) < 0)) {
                        c->oom = true;
                        return;
                }
        }
        if (is_inline) {
                (void)parse_template(c, n, apath, copy ? copy : a, scope_of(n), owner_of(n),
                                     &n->agent);
                return;
        }
        /* a reference: the template is the node's overrides only */
        if (!copy && !(copy = json_deep_copy(a))) {
                c->oom = true;
                return;
        }
        json_object_del(copy, "ref");
        json_object_del(copy, "version");
        (void)parse_template(c, n, apath, copy, scope_of(n), owner_of(n), &n->agent);
}

/* A notify node: a channel (literal, checked as a workflow's subscriptions are: channel.c)
 * and a message whose title, text and links may be templates. */
static void parse_notify(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                         const char *path)
{
        const char *node = node_name(n);
        const json_t *channel = json_object_get(obj, "channel");
        const json_t *links = json_object_get(obj, "links");
        const char *field = "", *s;
        char msg[256];
        _cleanup_free_ char *cpath = path_join(path, "channel");
        _cleanup_json_ json_t *message = NULL;

        if (!cpath) {
                c->oom = true;
                return;
        }
        if (!channel) {
                add_error(c, node, cpath,
                          "missing required field 'channel' (e.g. {\"kind\": \"email\", \"to\": "
                          "\"ops@example.com\"})");
        } else if (wf_channel_check(channel, msg, sizeof(msg), &field) < 0) {
                _cleanup_free_ char *f = str_printf("%s%s", cpath, field);
                add_error(c, node, f ? f : cpath, "%s", msg);
        }
        (void)get_string(c, node, path, obj, "title", true, &s);
        (void)get_string(c, node, path, obj, "text", false, &s);
        if (links) {
                bool ok = json_is_array(links) && json_array_size(links) <= 10;
                for (size_t i = 0; ok && i < json_array_size(links); i++) {
                        const json_t *l = json_array_get(links, i);
                        ok = json_is_string(json_object_get(l, "label")) &&
                             json_is_string(json_object_get(l, "url")) && json_object_size(l) == 2;
                }
                if (!ok) {
                        _cleanup_free_ char *f = path_join(path, "links");
                        add_error(c, node, f ? f : path,
                                  "'links' must be a list of at most 10 {\"label\", \"url\"}");
                }
        }
        message = json_pack("{s:O?,s:O?,s:O?,s:O?}", "channel", channel, "title",
                            json_object_get(obj, "title"), "text", json_object_get(obj, "text"),
                            "links", links);
        if (!message) {
                c->oom = true;
                return;
        }
        (void)parse_template(c, n, path, message, scope_of(n), owner_of(n), &n->notify);
}

static bool parse_status_spec(const json_t *v, struct wf_status_range *out)
{
        if (json_is_integer(v)) {
                json_int_t s = json_integer_value(v);
                if (s < 100 || s > 599)
                        return false;
                out->lo = out->hi = (int)s;
                return true;
        }
        if (!json_is_string(v))
                return false;
        const char *s = json_string_value(v);
        if (strlen(s) == 3 && s[0] >= '1' && s[0] <= '5' && (s[1] == 'x' || s[1] == 'X') &&
            (s[2] == 'x' || s[2] == 'X')) {
                out->lo = (s[0] - '0') * 100;
                out->hi = out->lo + 99;
                return true;
        }
        int lo, hi, used = 0;
        if (sscanf(s, "%3d-%3d%n", &lo, &hi, &used) == 2 && (size_t)used == strlen(s) &&
            lo >= 100 && hi <= 599 && lo <= hi) {
                out->lo = lo;
                out->hi = hi;
                return true;
        }
        int64_t one;
        if (str_to_int64(s, &one) == 0 && one >= 100 && one <= 599) {
                out->lo = out->hi = (int)one;
                return true;
        }
        return false;
}

static void parse_http(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                       const char *path)
{
        static const char *const methods[] = {"GET",    "POST", "PUT",     "PATCH",
                                              "DELETE", "HEAD", "OPTIONS", NULL};
        const char *node = node_name(n);
        json_t *req = json_object_get(obj, "request");
        _cleanup_free_ char *rpath = path_join(path, "request");

        if (!rpath) {
                c->oom = true;
                return;
        }
        if (!req) {
                add_error(c, node, rpath,
                          "missing required field 'request' ({\"method\": \"POST\", \"url\": "
                          "\"https://...\"})");
        } else if (!json_is_object(req)) {
                add_error(c, node, rpath, "'request' must be an object with method and url");
        } else {
                const char *method = NULL, *url = NULL;
                check_fields(c, node, rpath, req, "an http request", request_fields, NULL);
                if (get_string(c, node, rpath, req, "method", false, &method) && method) {
                        char up[16];
                        size_t i;
                        for (i = 0; method[i] && i < sizeof(up) - 1; i++)
                                up[i] = (char)(method[i] >= 'a' && method[i] <= 'z' ? method[i] - 32
                                                                                    : method[i]);
                        up[i] = '\0';
                        if (method[i] || !in_list(methods, up)) {
                                _cleanup_free_ char *f = path_join(rpath, "method");
                                add_error(c, node, f ? f : rpath,
                                          "unknown HTTP method '%s'; use one of GET, POST, PUT, "
                                          "PATCH, DELETE, HEAD, OPTIONS",
                                          method);
                        } else {
                                n->method = strdup(up);
                                if (!n->method)
                                        c->oom = true;
                        }
                } else if (!method && !json_object_get(req, "method")) {
                        n->method = strdup("GET");
                        if (!n->method)
                                c->oom = true;
                }
                if (get_string(c, node, rpath, req, "url", true, &url) && url) {
                        if (!strstr(url, "${") && !str_has_prefix(url, "http://") &&
                            !str_has_prefix(url, "https://")) {
                                _cleanup_free_ char *f = path_join(rpath, "url");
                                add_error(c, node, f ? f : rpath,
                                          "url must start with http:// or https:// (got \"%s\")",
                                          url);
                        }
                }
                json_t *headers = json_object_get(req, "headers");
                if (headers) {
                        _cleanup_free_ char *hp = path_join(rpath, "headers");
                        const char *k;
                        json_t *hv;
                        if (!json_is_object(headers)) {
                                add_error(c, node, hp ? hp : rpath,
                                          "headers must be an object of strings, e.g. "
                                          "{\"Authorization\": \"Bearer ...\"}");
                        } else if (json_object_size(headers) > MAX_HEADERS) {
                                add_error(c, node, hp ? hp : rpath,
                                          "too many headers (%zu; limit %d)",
                                          json_object_size(headers), MAX_HEADERS);
                        } else {
                                json_object_foreach (headers, k, hv) {
                                        _cleanup_free_ char *f = path_join(hp ? hp : rpath, k);
                                        if (!*k || strpbrk(k, " \t\r\n:()<>@,;\\\"/[]?={}"))
                                                add_error(c, node, f ? f : rpath,
                                                          "invalid header name '%s'", k);
                                        else if (!json_is_string(hv))
                                                add_error(c, node, f ? f : rpath,
                                                          "header '%s' must be a string", k);
                                        else if (strpbrk(json_string_value(hv), "\r\n"))
                                                add_error(c, node, f ? f : rpath,
                                                          "header '%s' must not contain line "
                                                          "breaks",
                                                          k);
                                }
                        }
                }
                _cleanup_json_ json_t *t = json_deep_copy(req);
                if (!t) {
                        c->oom = true;
                        return;
                }
                json_object_del(t, "method");
                (void)parse_template(c, n, rpath, t, scope_of(n) | SCOPE_SECRETS, owner_of(n),
                                     &n->request);
        }

        json_t *expect = json_object_get(obj, "expect_status");
        _cleanup_free_ char *epath = path_join(path, "expect_status");
        if (!expect) {
                n->expect = calloc(1, sizeof(*n->expect));
                if (!n->expect) {
                        c->oom = true;
                        return;
                }
                n->expect[0] = (struct wf_status_range){200, 299};
                n->n_expect = 1;
                return;
        }
        if (!json_is_array(expect) || json_array_size(expect) == 0 ||
            json_array_size(expect) > 100) {
                add_error(c, node, epath ? epath : path,
                          "expect_status must be a non-empty list (at most 100) of status codes "
                          "or ranges, e.g. [200, 201, \"3xx\", \"400-404\"]");
                return;
        }
        n->expect = calloc(json_array_size(expect), sizeof(*n->expect));
        if (!n->expect) {
                c->oom = true;
                return;
        }
        size_t i;
        json_t *v;
        json_array_foreach (expect, i, v) {
                if (!parse_status_spec(v, &n->expect[n->n_expect])) {
                        _cleanup_free_ char *f = str_printf("%s/%zu", epath ? epath : path, i);
                        add_error(c, node, f ? f : path,
                                  "invalid status '%s'; use a code 100-599, \"2xx\" or a range "
                                  "\"200-204\"",
                                  json_is_string(v) ? json_string_value(v) : "(not a string)");
                        continue;
                }
                n->n_expect++;
        }
}

static void parse_sleep(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                        const char *path)
{
        bool has_d = json_object_get(obj, "duration"), has_u = json_object_get(obj, "until");

        if (has_d == has_u) {
                add_error(c, node_name(n), path,
                          "a sleep node needs exactly one of 'duration' (e.g. \"2h\") or 'until' "
                          "(an expression giving an RFC 3339 time)");
                return;
        }
        if (has_d)
                (void)get_duration(c, node_name(n), path, obj, "duration", &n->duration_ms);
        else
                (void)parse_expr_field(c, n, path, obj, "until", true, 0, &n->until);
}

static void parse_wait_event(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                             const char *path)
{
        const char *event;

        if (get_string(c, node_name(n), path, obj, "event", true, &event) && event) {
                _cleanup_free_ char *f = path_join(path, "event");
                if (!*event || strlen(event) > 200)
                        add_error(c, node_name(n), f ? f : path,
                                  "event name must be 1 to 200 characters");
                else if (!(n->event = strdup(event)))
                        c->oom = true;
        }
}

static bool parse_id_list(struct wf_parse_ctx *c, const struct wf_node *n, const char *path,
                          const json_t *obj, const char *key, size_t **out, size_t *n_out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);
        size_t i;
        json_t *e;

        *out = NULL;
        *n_out = 0;
        if (!v)
                return true;
        if (!json_is_array(v)) {
                add_error(c, node_name(n), field ? field : path,
                          "'%s' must be an array of node ids, e.g. [\"a\", \"b\"]", key);
                return false;
        }
        *out = calloc(json_array_size(v) + 1, sizeof(size_t));
        if (!*out) {
                c->oom = true;
                return false;
        }
        json_array_foreach (v, i, e) {
                _cleanup_free_ char *f = str_printf("%s/%zu", field ? field : path, i);
                const struct wf_node *t;
                if (!json_is_string(e)) {
                        add_error(c, node_name(n), f ? f : path, "'%s' entries must be node ids",
                                  key);
                        continue;
                }
                t = wf_find_node(c->wf, json_string_value(e));
                if (!t) {
                        _cleanup_buf_ struct buf b;
                        buf_init(&b, 4096);
                        known_nodes(c, &b);
                        add_error(c, node_name(n), f ? f : path,
                                  "%s refers to unknown node '%s'; known nodes: %s", key,
                                  json_string_value(e), b.data ? b.data : "");
                        continue;
                }
                if (t == n) {
                        add_error(c, node_name(n), f ? f : path, "a node cannot list itself in %s",
                                  key);
                        continue;
                }
                bool dup = false;
                for (size_t k = 0; k < *n_out; k++)
                        dup |= (*out)[k] == t->index;
                if (dup) {
                        add_error(c, node_name(n), f ? f : path, "'%s' is listed twice in %s",
                                  t->id, key);
                        continue;
                }
                (*out)[(*n_out)++] = t->index;
        }
        return true;
}

static void parse_condition(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                            const char *path)
{
        (void)parse_expr_field(c, n, path, obj, "if", true, 0, &n->condition);
        (void)parse_id_list(c, n, path, obj, "then", &n->then_nodes, &n->n_then);
        (void)parse_id_list(c, n, path, obj, "else", &n->else_nodes, &n->n_else);
        for (size_t i = 0; i < n->n_then; i++)
                for (size_t j = 0; j < n->n_else; j++)
                        if (n->then_nodes[i] == n->else_nodes[j]) {
                                _cleanup_free_ char *f = path_join(path, "else");
                                add_error(c, n->id, f ? f : path,
                                          "node '%s' is in both then and else",
                                          c->wf->nodes[n->then_nodes[i]].id);
                        }
}

static void parse_node_common(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                              const char *path, bool is_template);

static void parse_body(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                       const char *path)
{
        json_t *t = json_object_get(obj, "node");
        _cleanup_free_ char *tpath = path_join(path, "node");

        if (!tpath) {
                c->oom = true;
                return;
        }
        if (!t) {
                add_error(c, n->id, tpath,
                          "missing required field 'node' (the node template, e.g. {\"type\": "
                          "\"http\", \"request\": {...}})");
                return;
        }
        if (!json_is_object(t)) {
                add_error(c, n->id, tpath, "'node' must be an object (a node template)");
                return;
        }
        n->body = calloc(1, sizeof(*n->body));
        if (!n->body) {
                c->oom = true;
                return;
        }
        n->body->parent = n;
        n->body->index = n->index;
        parse_node_common(c, n->body, t, tpath, true);
}

static void parse_map(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                      const char *path)
{
        int64_t conc = 10;

        (void)parse_expr_field(c, n, path, obj, "items", true, 0, &n->items);
        (void)get_int(c, n->id, path, obj, "concurrency", 1, WF_MAX_MAP_CONCURRENCY, &conc);
        n->concurrency = (int)conc;
        parse_body(c, n, obj, path);
}

static void parse_loop(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                       const char *path)
{
        int64_t max = 0;
        _cleanup_free_ char *mpath = path_join(path, "max_iterations");

        parse_body(c, n, obj, path);
        (void)parse_expr_field(c, n, path, obj, "until", true, SCOPE_LOOP, &n->until);
        if (!json_object_get(obj, "max_iterations"))
                add_error(c, n->id, mpath ? mpath : path,
                          "missing required field 'max_iterations' (1 to %d): a loop must be "
                          "bounded",
                          WF_MAX_LOOP_ITERATIONS);
        else
                (void)get_int(c, n->id, path, obj, "max_iterations", 1, WF_MAX_LOOP_ITERATIONS,
                              &max);
        n->max_iterations = (int)max;
}

static void parse_subworkflow(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                              const char *path)
{
        const char *name;
        int64_t version = 0;

        if (get_string(c, node_name(n), path, obj, "workflow", true, &name) && name) {
                _cleanup_free_ char *f = path_join(path, "workflow");
                if (!valid_workflow_name(name))
                        add_error(c, node_name(n), f ? f : path,
                                  "invalid workflow name '%s'; names are 1-63 characters of "
                                  "a-z, 0-9, _, . and -, starting with a letter or digit",
                                  name);
                else if (!(n->workflow = strdup(name)))
                        c->oom = true;
        }
        (void)get_int(c, node_name(n), path, obj, "version", 1, INT32_MAX, &version);
        n->version = version;
        json_t *input = json_object_get(obj, "input");
        _cleanup_json_ json_t *empty = json_object();
        _cleanup_free_ char *ipath = path_join(path, "input");
        if (!empty || !ipath) {
                c->oom = true;
                return;
        }
        (void)parse_template(c, n, ipath, input ? input : empty, scope_of(n), owner_of(n),
                             &n->input);
}

static void parse_transform(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                            const char *path)
{
        json_t *output = json_object_get(obj, "output");
        _cleanup_free_ char *opath = path_join(path, "output");

        if (!opath) {
                c->oom = true;
                return;
        }
        if (!output) {
                add_error(c, node_name(n), opath,
                          "missing required field 'output' (a template, e.g. {\"total\": "
                          "\"${ nodes.a.output.count }\"})");
                return;
        }
        (void)parse_template(c, n, opath, output, scope_of(n), owner_of(n), &n->output);
}

/* ---- approval ---- */

#define APPROVAL_MAX_CONTACTS 100
#define APPROVAL_MAX_CHANNELS 10
#define APPROVAL_MAX_LEVELS   10

/* A reviewer or contact: a user name or an e-mail address, 1-254 characters of letters,
 * digits and _ . @ + -, starting with a letter or digit. */
static bool valid_contact(const char *s)
{
        size_t n = strlen(s);

        if (n < 1 || n > 254 || !(is_alpha(s[0]) || is_digit(s[0])))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_alpha(s[i]) && !is_digit(s[i]) && !strchr("_.@+-", s[i]))
                        return false;
        return true;
}

/* obj[key]: a list of contacts (lower-cased into *out, a new array); false after an error. */
static bool parse_contacts(struct wf_parse_ctx *c, const struct wf_node *n, const char *path,
                           const json_t *obj, const char *key, bool required, json_t **out)
{
        json_t *v = json_object_get(obj, key);
        _cleanup_free_ char *field = path_join(path, key);
        size_t i;
        json_t *e;

        *out = NULL;
        if (!v) {
                if (required)
                        add_error(c, node_name(n), field ? field : path,
                                  "missing required field '%s' (a list of user names or e-mail "
                                  "addresses)",
                                  key);
                return !required;
        }
        if (!json_is_array(v) || json_array_size(v) > APPROVAL_MAX_CONTACTS ||
            (required && json_array_size(v) == 0)) {
                add_error(c, node_name(n), field ? field : path,
                          "'%s' must be a list of %d to %d user names or e-mail addresses, e.g. "
                          "[\"ops@example.com\", \"alice\"]",
                          key, required ? 1 : 0, APPROVAL_MAX_CONTACTS);
                return false;
        }
        if (!(*out = json_array())) {
                c->oom = true;
                return false;
        }
        json_array_foreach (v, i, e) {
                const char *s = json_string_value(e);
                char lower[256];
                if (!s || !valid_contact(s)) {
                        _cleanup_free_ char *f = str_printf("%s/%zu", field ? field : path, i);
                        add_error(c, node_name(n), f ? f : path,
                                  "invalid reviewer %s%s%s: use a user name or an e-mail address",
                                  s ? "'" : "", s ? s : "(not a string)", s ? "'" : "");
                        continue;
                }
                size_t k;
                for (k = 0; s[k]; k++)
                        lower[k] = (s[k] >= 'A' && s[k] <= 'Z') ? (char)(s[k] - 'A' + 'a') : s[k];
                lower[k] = '\0';
                if (json_array_append_new(*out, json_string(lower)) < 0)
                        c->oom = true;
        }
        return true;
}

static void parse_approval_channels(struct wf_parse_ctx *c, const struct wf_node *n,
                                    const char *path, const json_t *obj, json_t *policy)
{
        static const char *const channel_fields[] = {"kind", "url", NULL};
        json_t *v = json_object_get(obj, "channels");
        _cleanup_free_ char *field = path_join(path, "channels");
        size_t i;
        json_t *ch;

        if (!v)
                return;
        if (!json_is_array(v) || json_array_size(v) > APPROVAL_MAX_CHANNELS) {
                add_error(c, node_name(n), field ? field : path,
                          "channels must be a list of at most %d channels, e.g. [{\"kind\": "
                          "\"email\"}, {\"kind\": \"webhook\", \"url\": \"https://...\"}]",
                          APPROVAL_MAX_CHANNELS);
                return;
        }
        json_array_foreach (v, i, ch) {
                _cleanup_free_ char *f = str_printf("%s/%zu", field ? field : path, i);
                const char *kind, *url;
                if (!f) {
                        c->oom = true;
                        return;
                }
                if (!json_is_object(ch)) {
                        add_error(c, node_name(n), f, "a channel must be an object with 'kind'");
                        continue;
                }
                check_fields(c, node_name(n), f, ch, "a channel", channel_fields, NULL);
                if (!get_string(c, node_name(n), f, ch, "kind", true, &kind) || !kind)
                        continue;
                if (strcmp(kind, "email") && strcmp(kind, "slack") && strcmp(kind, "webhook")) {
                        _cleanup_free_ char *kf = path_join(f, "kind");
                        add_error(c, node_name(n), kf ? kf : f,
                                  "channel kind must be \"email\", \"slack\" or \"webhook\" (got "
                                  "\"%s\")",
                                  kind);
                        continue;
                }
                if (!get_string(c, node_name(n), f, ch, "url", strcmp(kind, "email") != 0, &url))
                        continue;
                if (url && !str_has_prefix(url, "http://") && !str_has_prefix(url, "https://")) {
                        _cleanup_free_ char *uf = path_join(f, "url");
                        add_error(c, node_name(n), uf ? uf : f,
                                  "a channel url must start with http:// or https://");
                        continue;
                }
        }
        if (json_object_set(policy, "channels", v) < 0)
                c->oom = true;
}

static void parse_approval_escalation(struct wf_parse_ctx *c, const struct wf_node *n,
                                      const char *path, const json_t *obj, int64_t default_timeout,
                                      json_t *policy)
{
        static const char *const level_fields[] = {"contacts", "timeout", NULL};
        json_t *v = json_object_get(obj, "escalation");
        _cleanup_free_ char *field = path_join(path, "escalation");
        _cleanup_json_ json_t *ladder = json_array();
        size_t i;
        json_t *lv;

        if (!v)
                return;
        if (!ladder) {
                c->oom = true;
                return;
        }
        if (!json_is_array(v) || json_array_size(v) == 0 ||
            json_array_size(v) > APPROVAL_MAX_LEVELS) {
                add_error(c, node_name(n), field ? field : path,
                          "escalation must be a list of 1 to %d levels, e.g. [{\"contacts\": "
                          "[\"lead@example.com\"], \"timeout\": \"1d\"}]",
                          APPROVAL_MAX_LEVELS);
                return;
        }
        json_array_foreach (v, i, lv) {
                _cleanup_free_ char *f = str_printf("%s/%zu", field ? field : path, i);
                _cleanup_json_ json_t *contacts = NULL;
                int64_t timeout = default_timeout;
                if (!f) {
                        c->oom = true;
                        return;
                }
                if (!json_is_object(lv)) {
                        add_error(c, node_name(n), f,
                                  "an escalation level must be an object with 'contacts' and "
                                  "'timeout'");
                        continue;
                }
                check_fields(c, node_name(n), f, lv, "an escalation level", level_fields, NULL);
                if (!parse_contacts(c, n, f, lv, "contacts", true, &contacts) || !contacts)
                        continue;
                if (!get_duration(c, node_name(n), f, lv, "timeout", &timeout))
                        continue;
                if (timeout <= 0) {
                        add_error(c, node_name(n), f, "an escalation level needs a timeout");
                        continue;
                }
                if (json_array_append_new(ladder, json_pack("{s:O, s:I}", "contacts", contacts,
                                                            "timeout_ms", (json_int_t)timeout)) < 0)
                        c->oom = true;
        }
        if (json_object_set(policy, "escalation", ladder) < 0)
                c->oom = true;
}

static void parse_approval(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                           const char *path)
{
        static const char *const on_timeout_values[] = {"reject", "approve", "escalate", "fail",
                                                        NULL};
        const char *node = node_name(n);
        _cleanup_json_ json_t *reviewers = NULL, *tmpl = NULL;
        json_t *policy = json_object();
        const char *on_timeout = NULL, *title = NULL;
        int64_t quorum = 1;
        json_t *v;

        if (!policy) {
                c->oom = true;
                return;
        }
        n->approval_policy = policy;
        if (parse_contacts(c, n, path, obj, "reviewers", false, &reviewers) && reviewers)
                json_object_set(policy, "reviewers", reviewers);
        else if (!reviewers)
                json_object_set_new(policy, "reviewers", json_array());
        parse_approval_channels(c, n, path, obj, policy);

        size_t n_reviewers = json_array_size(json_object_get(policy, "reviewers"));
        if (get_int(c, node, path, obj, "quorum", 1, 100, &quorum) &&
            (size_t)quorum > (n_reviewers ? n_reviewers : 1)) {
                _cleanup_free_ char *f = path_join(path, "quorum");
                add_error(c, node, f ? f : path,
                          "quorum %lld is more than the %zu reviewer%s listed", (long long)quorum,
                          n_reviewers, n_reviewers == 1 ? "" : "s");
        }
        json_object_set_new(policy, "quorum", json_integer(quorum));

        v = json_object_get(obj, "forbid_self_approval");
        if (v && !json_is_boolean(v)) {
                _cleanup_free_ char *f = path_join(path, "forbid_self_approval");
                add_error(c, node, f ? f : path, "forbid_self_approval must be true or false");
        }
        json_object_set_new(policy, "forbid_self_approval", json_boolean(json_is_true(v)));

        if (get_string(c, node, path, obj, "on_timeout", false, &on_timeout) && on_timeout) {
                _cleanup_free_ char *f = path_join(path, "on_timeout");
                if (!in_list(on_timeout_values, on_timeout))
                        add_error(c, node, f ? f : path,
                                  "on_timeout must be \"reject\", \"approve\", \"escalate\" or "
                                  "\"fail\" (got \"%s\")",
                                  on_timeout);
                else if (n->timeout_ms <= 0)
                        add_error(c, node, f ? f : path,
                                  "on_timeout needs a timeout, e.g. \"timeout\": \"3d\"");
        }
        json_object_set_new(policy, "on_timeout", json_string(on_timeout ? on_timeout : "fail"));
        if (json_object_get(obj, "escalation")) {
                if (!on_timeout || strcmp(on_timeout, "escalate") != 0) {
                        _cleanup_free_ char *f = path_join(path, "escalation");
                        add_error(c, node, f ? f : path,
                                  "an escalation ladder needs \"on_timeout\": \"escalate\"");
                } else {
                        parse_approval_escalation(c, n, path, obj, n->timeout_ms, policy);
                }
        }

        /* what the reviewer reads, rendered when the node is reached: the title, the outputs
         * of the context nodes (default: the nodes it comes after) and the proposed action */
        tmpl = json_object();
        json_t *context = json_object();
        if (!tmpl || !context || json_object_set_new(tmpl, "context", context) < 0) {
                c->oom = true;
                return;
        }
        if (get_string(c, node, path, obj, "title", false, &title) && title) {
                if (strlen(title) > 500) {
                        _cleanup_free_ char *f = path_join(path, "title");
                        add_error(c, node, f ? f : path, "title too long (limit 500 bytes)");
                }
                json_object_set(tmpl, "title", json_object_get(obj, "title"));
        }
        v = json_object_get(obj, "proposed_action");
        if (v)
                json_object_set(tmpl, "proposed_action", v);
        json_t *ids = json_object_get(obj, "context");
        _cleanup_free_ char *cpath = path_join(path, "context");
        if (ids && (!json_is_array(ids) || json_array_size(ids) > 100)) {
                add_error(c, node, cpath ? cpath : path,
                          "context must be a list of at most 100 upstream node ids whose outputs "
                          "the reviewer sees, e.g. [\"draft\"]");
                ids = NULL;
        } else if (!ids) {
                ids = json_object_get(obj, "after");
                if (!json_is_array(ids))
                        ids = NULL;
        }
        size_t i;
        json_array_foreach (ids, i, v) {
                const char *id = json_string_value(v);
                if (!id || !valid_node_id(id) || !wf_find_node(c->wf, id)) {
                        if (json_object_get(obj, "context")) {
                                _cleanup_free_ char *f =
                                    str_printf("%s/%zu", cpath ? cpath : path, i);
                                add_error(c, node, f ? f : path,
                                          "context refers to unknown node '%s'",
                                          id ? id : "(not a string)");
                        }
                        continue;
                }
                _cleanup_free_ char *expr = str_printf("${ nodes[\"%s\"].output }", id);
                if (!expr || json_object_set_new(context, id, json_string(expr)) < 0) {
                        c->oom = true;
                        return;
                }
        }
        (void)parse_template(c, n, path, tmpl, scope_of(n), owner_of(n), &n->approval);
}

/*
 * An agent's approve_tools: the tool calls a person approves before they run
 * (src/agent/agent_approval.c). Either a list of tool names and effect classes, or an
 * object {"tools", "effects"} with the approval node's fields (reviewers, channels, quorum,
 * forbid_self_approval, timeout, on_timeout, escalation, title). Returns it normalised for
 * the worker: {"tools", "effects", "reviewers", "channels", "quorum",
 * "forbid_self_approval", "timeout_ms"?, "on_timeout", "escalation"?, "title"?}; NULL after
 * an error.
 */
static json_t *parse_agent_approve_tools(struct wf_parse_ctx *c, const struct wf_node *n,
                                         const char *path, const json_t *v)
{
        static const char *const fields[] = {
            "tools",   "effects",    "reviewers",  "channels", "quorum", "forbid_self_approval",
            "timeout", "on_timeout", "escalation", "title",    NULL};
        static const char *const effects[] = {"read_only", "idempotent", "irreversible", NULL};
        static const char *const gateable[] = {"http_request", "shell", "run_code", NULL};
        static const char *const on_timeout_values[] = {"reject", "approve", "escalate", "fail",
                                                        NULL};
        const char *node = node_name(n);
        const bool short_form = json_is_array(v);
        _cleanup_json_ json_t *out = json_pack("{s:[], s:[]}", "tools", "effects");
        _cleanup_json_ json_t *reviewers = NULL;
        int64_t quorum = 1, timeout = 0;
        const char *on_timeout = NULL, *title = NULL;
        size_t errors = c->n_errors + c->dropped;

        if (!out) {
                c->oom = true;
                return NULL;
        }
        if (!short_form && !json_is_object(v)) {
                add_error(c, node, path,
                          "'approve_tools' must be a list of tool names and effect classes "
                          "(e.g. [\"http_request\"] or [\"irreversible\"]) or an object "
                          "{\"tools\", \"effects\", \"reviewers\", \"timeout\", ...}");
                return NULL;
        }
        if (!short_form)
                check_fields(c, node, path, v, "approve_tools", fields, NULL);
        /* what is gated: tool names and effect classes (the short form mixes them) */
        for (int k = 0; k < 2; k++) {
                const char *key = k == 0 ? "tools" : "effects";
                const json_t *list = short_form ? v : json_object_get(v, key);
                _cleanup_free_ char *f = short_form ? strdup(path) : path_join(path, key);
                const json_t *e;
                size_t i;
                if (!list)
                        continue;
                if (!json_is_array(list)) {
                        add_error(c, node, f ? f : path, "'%s' must be a list", key);
                        continue;
                }
                json_array_foreach (list, i, e) {
                        const char *name = json_string_value(e);
                        bool tool = name && in_list(gateable, name);
                        bool effect = name && in_list(effects, name);
                        if ((short_form && (tool || effect)) || (!short_form && k == 0 && tool) ||
                            (!short_form && k == 1 && effect)) {
                                json_array_append(json_object_get(out, tool ? "tools" : "effects"),
                                                  (json_t *)e);
                                continue;
                        }
                        add_error(c, node, f ? f : path,
                                  "%s%s%s cannot be gated: name %s (read_only, idempotent, "
                                  "irreversible)",
                                  name ? "'" : "", name ? name : "(not a string)", name ? "'" : "",
                                  short_form ? "tools that run through the worker "
                                               "(http_request, shell, run_code) or effect classes"
                                  : k == 0   ? "tools that run through the worker (http_request, "
                                               "shell, run_code); "
                                               "gate by effect class with 'effects'"
                                             : "effect classes");
                }
        }
        if (json_array_size(json_object_get(out, "tools")) == 0 &&
            json_array_size(json_object_get(out, "effects")) == 0 &&
            c->n_errors + c->dropped == errors)
                add_error(c, node, path,
                          "'approve_tools' gates nothing: name tools (\"tools\": "
                          "[\"http_request\"]) or effect classes (\"effects\": "
                          "[\"irreversible\"])");
        /* who decides and how: the approval node's rules */
        if (short_form) {
                json_object_set_new(out, "reviewers", json_array());
                json_object_set_new(out, "quorum", json_integer(1));
                json_object_set_new(out, "forbid_self_approval", json_false());
                json_object_set_new(out, "on_timeout", json_string("fail"));
                return c->n_errors + c->dropped == errors ? TAKE_PTR(out) : NULL;
        }
        if (parse_contacts(c, n, path, v, "reviewers", false, &reviewers) && reviewers)
                json_object_set(out, "reviewers", reviewers);
        else
                json_object_set_new(out, "reviewers", json_array());
        parse_approval_channels(c, n, path, v, out);
        size_t n_reviewers = json_array_size(json_object_get(out, "reviewers"));
        if (get_int(c, node, path, v, "quorum", 1, 100, &quorum) &&
            (size_t)quorum > (n_reviewers ? n_reviewers : 1)) {
                _cleanup_free_ char *f = path_join(path, "quorum");
                add_error(c, node, f ? f : path,
                          "quorum %lld is more than the %zu reviewer%s listed", (long long)quorum,
                          n_reviewers, n_reviewers == 1 ? "" : "s");
        }
        json_object_set_new(out, "quorum", json_integer(quorum));
        const json_t *fsa = json_object_get(v, "forbid_self_approval");
        if (fsa && !json_is_boolean(fsa)) {
                _cleanup_free_ char *f = path_join(path, "forbid_self_approval");
                add_error(c, node, f ? f : path, "forbid_self_approval must be true or false");
        }
        json_object_set_new(out, "forbid_self_approval", json_boolean(json_is_true(fsa)));
        if (get_duration(c, node, path, v, "timeout", &timeout) && timeout > 0)
                json_object_set_new(out, "timeout_ms", json_integer(timeout));
        if (get_string(c, node, path, v, "on_timeout", false, &on_timeout) && on_timeout) {
                _cleanup_free_ char *f = path_join(path, "on_timeout");
                if (!in_list(on_timeout_values, on_timeout))
                        add_error(c, node, f ? f : path,
                                  "on_timeout must be \"reject\", \"approve\", \"escalate\" or "
                                  "\"fail\" (got \"%s\")",
                                  on_timeout);
                else if (timeout <= 0)
                        add_error(c, node, f ? f : path,
                                  "on_timeout needs a timeout, e.g. \"timeout\": \"1d\"");
        }
        json_object_set_new(out, "on_timeout", json_string(on_timeout ? on_timeout : "fail"));
        if (json_object_get(v, "escalation")) {
                if (!on_timeout || strcmp(on_timeout, "escalate") != 0) {
                        _cleanup_free_ char *f = path_join(path, "escalation");
                        add_error(c, node, f ? f : path,
                                  "an escalation ladder needs \"on_timeout\": \"escalate\"");
                } else {
                        parse_approval_escalation(c, n, path, v, timeout, out);
                }
        }
        if (get_string(c, node, path, v, "title", false, &title) && title) {
                if (strlen(title) > 500) {
                        _cleanup_free_ char *f = path_join(path, "title");
                        add_error(c, node, f ? f : path, "title too long (limit 500 bytes)");
                }
                json_object_set(out, "title", json_object_get(v, "title"));
        }
        return c->n_errors + c->dropped == errors ? TAKE_PTR(out) : NULL;
}

static const struct wf_kind kinds[] = {
    {"http", http_fields, WF_KIND_EFFECT | WF_KIND_TEMPLATABLE | WF_KIND_RETRY | WF_KIND_TIMEOUT, 3,
     DEFAULT_HTTP_TIMEOUT_MS, parse_http, wf_plan_http_start, wf_plan_retry_resume, NULL},
    {"sleep", sleep_fields, WF_KIND_TEMPLATABLE, 1, 0, parse_sleep, wf_plan_sleep_start,
     wf_plan_sleep_resume, NULL},
    {"wait_event", wait_event_fields, WF_KIND_TIMEOUT, 1, 0, parse_wait_event,
     wf_plan_wait_event_start, wf_plan_wait_event_resume, NULL},
    {"condition", condition_fields, 0, 1, 0, parse_condition, wf_plan_condition_start, NULL, NULL},
    {"map", map_fields, 0, 1, 0, parse_map, NULL, NULL, wf_plan_map},
    {"loop", loop_fields, 0, 1, 0, parse_loop, NULL, NULL, wf_plan_loop},
    {"subworkflow", subworkflow_fields, WF_KIND_TEMPLATABLE | WF_KIND_RETRY | WF_KIND_TIMEOUT, 1, 0,
     parse_subworkflow, wf_plan_subworkflow_start, wf_plan_subworkflow_resume, NULL},
    {"transform", transform_fields, WF_KIND_TEMPLATABLE, 1, 0, parse_transform,
     wf_plan_transform_start, NULL, NULL},
    {"noop", no_fields, WF_KIND_TEMPLATABLE, 1, 0, NULL, wf_plan_noop_start, NULL, NULL},
    /* an agent's LLM calls and tools are journaled and resumed by the worker; a failed
     * attempt is not retried unless retry says so (it starts the agent afresh) */
    {"agent", agent_fields, WF_KIND_EFFECT | WF_KIND_TEMPLATABLE | WF_KIND_RETRY | WF_KIND_TIMEOUT,
     1, 0, parse_agent, wf_plan_agent_start, wf_plan_retry_resume, NULL},
    {"approval", approval_fields, WF_KIND_TIMEOUT, 1, 0, parse_approval, wf_plan_approval_start,
     wf_plan_approval_resume, NULL},
    {"notify", notify_fields, WF_KIND_EFFECT | WF_KIND_RETRY, 3, 0, parse_notify,
     wf_plan_notify_start, wf_plan_retry_resume, NULL},
};

const struct wf_kind *wf_kind_find(const char *name)
{
        for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
                if (!strcmp(kinds[i].name, name))
                        return &kinds[i];
        return NULL;
}

static const char *kind_names(void)
{
        return "http, agent, sleep, wait_event, condition, map, loop, subworkflow, transform, "
               "noop, approval, notify";
}

/* ---- common node fields ---- */

static const char *const node_fields[] = {"id",    "type",    "description", "after",    "when",
                                          "retry", "timeout", "on_failure",  "delivery", NULL};
static const char *const template_fields[] = {"type",       "description", "retry", "timeout",
                                              "on_failure", "delivery",    NULL};
static const char *const retry_fields[] = {
    "max_attempts", "backoff", "initial_delay", "max_delay", "jitter", "retry_on", NULL};

static void parse_retry(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                        const char *path)
{
        json_t *r = json_object_get(obj, "retry");
        const char *node = node_name(n);
        _cleanup_free_ char *rpath = path_join(path, "retry");
        int64_t v;

        n->retry = (struct wf_retry){.max_attempts = n->kind->default_max_attempts,
                                     .backoff = WF_BACKOFF_EXPONENTIAL,
                                     .initial_ms = DEFAULT_INITIAL_DELAY_MS,
                                     .max_ms = DEFAULT_MAX_DELAY_MS,
                                     .jitter = true,
                                     .retry_on = WF_RETRY_DEFAULT_ON};
        if (!r || !rpath)
                return;
        if (!(n->kind->flags & WF_KIND_RETRY)) {
                add_error(c, node, rpath, "retry does not apply to %s nodes%s", n->kind->name,
                          !strcmp(n->kind->name, "map") || !strcmp(n->kind->name, "loop")
                              ? "; put retry on its node template"
                              : "");
                return;
        }
        if (!json_is_object(r)) {
                add_error(c, node, rpath, "retry must be an object, e.g. {\"max_attempts\": 5}");
                return;
        }
        check_fields(c, node, rpath, r, "retry", retry_fields, NULL);
        v = n->retry.max_attempts;
        (void)get_int(c, node, rpath, r, "max_attempts", 1, WF_MAX_ATTEMPTS, &v);
        n->retry.max_attempts = (int)v;
        const char *backoff;
        if (get_string(c, node, rpath, r, "backoff", false, &backoff) && backoff) {
                if (!strcmp(backoff, "fixed"))
                        n->retry.backoff = WF_BACKOFF_FIXED;
                else if (strcmp(backoff, "exponential") != 0) {
                        _cleanup_free_ char *f = path_join(rpath, "backoff");
                        add_error(c, node, f ? f : rpath,
                                  "backoff must be \"fixed\" or \"exponential\" (got \"%s\")",
                                  backoff);
                }
        }
        (void)get_duration(c, node, rpath, r, "initial_delay", &n->retry.initial_ms);
        (void)get_duration(c, node, rpath, r, "max_delay", &n->retry.max_ms);
        if (n->retry.max_ms < n->retry.initial_ms) {
                if (json_object_get(r, "max_delay")) {
                        _cleanup_free_ char *f = path_join(rpath, "max_delay");
                        add_error(c, node, f ? f : rpath,
                                  "max_delay must not be shorter than initial_delay");
                } else {
                        n->retry.max_ms = n->retry.initial_ms;
                }
        }
        json_t *jitter = json_object_get(r, "jitter");
        if (jitter) {
                if (!json_is_boolean(jitter)) {
                        _cleanup_free_ char *f = path_join(rpath, "jitter");
                        add_error(c, node, f ? f : rpath, "jitter must be true or false");
                } else {
                        n->retry.jitter = json_is_true(jitter);
                }
        }
        json_t *on = json_object_get(r, "retry_on");
        if (on) {
                _cleanup_free_ char *f = path_join(rpath, "retry_on");
                size_t i;
                json_t *e;
                if (!json_is_array(on)) {
                        add_error(c, node, f ? f : rpath, "retry_on must be a list of: %s",
                                  wf_retry_on_names());
                        return;
                }
                n->retry.retry_on = 0;
                n->retry.retry_on_given = true;
                json_array_foreach (on, i, e) {
                        unsigned bits = wf_retry_on_bits(json_string_value(e));
                        if (!bits) {
                                _cleanup_free_ char *ef = str_printf("%s/%zu", f ? f : rpath, i);
                                add_error(c, node, ef ? ef : rpath,
                                          "unknown failure class '%s' in retry_on; use %s",
                                          json_is_string(e) ? json_string_value(e) : "?",
                                          wf_retry_on_names());
                                continue;
                        }
                        n->retry.retry_on |= bits;
                }
        }
}

/* at_most_once: the default retries only what surely did not take effect, and a retry
 * block that allows more attempts must say on which failures (its meaning changed: it used
 * to re-send after timeouts, network failures and 5xx answers). */
static void check_at_most_once_retry(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                                     const char *path)
{
        _cleanup_free_ char *rpath = NULL;

        if (n->delivery != WF_AT_MOST_ONCE || n->retry.retry_on_given)
                return;
        n->retry.retry_on = WF_RETRY_DEFAULT_ON_AT_MOST_ONCE;
        if (!json_is_object(json_object_get(obj, "retry")) || n->retry.max_attempts <= 1)
                return;
        rpath = path_join(path, "retry");
        add_error(c, node_name(n), rpath ? rpath : path,
                  "delivery is at_most_once and retry allows %d attempts, so retry_on must say "
                  "which failures send the request again: [\"connect\", \"http_429\"] retries "
                  "only failures where it surely did not take effect; adding \"timeout\", "
                  "\"network\" or \"http_5xx\" accepts that it may arrive twice",
                  n->retry.max_attempts);
}

static void parse_node_common(struct wf_parse_ctx *c, struct wf_node *n, const json_t *obj,
                              const char *path, bool is_template)
{
        const char *type;
        _cleanup_free_ char *tpath = path_join(path, "type");
        const char *node = node_name(n);

        if (!tpath) {
                c->oom = true;
                return;
        }
        if (!get_string(c, node, path, obj, "type", true, &type) || !type)
                return;
        n->kind = wf_kind_find(type);
        if (!n->kind) {
                add_error(c, node, tpath, "unknown node type '%s'; known types: %s", type,
                          kind_names());
                return;
        }
        if (is_template && !(n->kind->flags & WF_KIND_TEMPLATABLE)) {
                add_error(c, node, tpath,
                          "a %s node cannot be a %s template; use http, sleep, subworkflow, "
                          "transform or noop",
                          type, n->parent->kind->name);
                n->kind = NULL;
                return;
        }
        check_fields(c, node, path, obj, is_template ? "a node template" : "a node",
                     is_template ? template_fields : node_fields, n->kind->fields);

        /* common policy fields */
        parse_retry(c, n, obj, path);
        n->timeout_ms = n->kind->default_timeout_ms;
        if (json_object_get(obj, "timeout")) {
                _cleanup_free_ char *f = path_join(path, "timeout");
                if (!(n->kind->flags & WF_KIND_TIMEOUT))
                        add_error(c, node, f ? f : path,
                                  "timeout does not apply to %s nodes; it applies to http, agent, "
                                  "wait_event, subworkflow and approval nodes",
                                  type);
                else if (get_duration(c, node, path, obj, "timeout", &n->timeout_ms) &&
                         n->timeout_ms == 0)
                        add_error(c, node, f ? f : path, "timeout must be longer than 0");
        }
        const char *on_failure;
        n->on_failure = WF_ON_FAILURE_FAIL;
        if (get_string(c, node, path, obj, "on_failure", false, &on_failure) && on_failure) {
                if (!strcmp(on_failure, "continue"))
                        n->on_failure = WF_ON_FAILURE_CONTINUE;
                else if (!strcmp(on_failure, "escalate"))
                        n->on_failure = WF_ON_FAILURE_ESCALATE;
                else if (strcmp(on_failure, "fail") != 0) {
                        _cleanup_free_ char *f = path_join(path, "on_failure");
                        add_error(c, node, f ? f : path,
                                  "on_failure must be \"fail\", \"continue\" or \"escalate\" (got "
                                  "\"%s\")",
                                  on_failure);
                }
        }
        const char *delivery;
        n->delivery = WF_AT_LEAST_ONCE;
        if (get_string(c, node, path, obj, "delivery", false, &delivery) && delivery) {
                _cleanup_free_ char *f = path_join(path, "delivery");
                if (!(n->kind->flags & WF_KIND_EFFECT))
                        add_error(c, node, f ? f : path,
                                  "delivery does not apply to %s nodes; it applies to nodes "
                                  "with side effects (http)",
                                  type);
                else if (!strcmp(delivery, "at_most_once"))
                        n->delivery = WF_AT_MOST_ONCE;
                else if (strcmp(delivery, "at_least_once") != 0)
                        add_error(c, node, f ? f : path,
                                  "delivery must be \"at_least_once\" or \"at_most_once\" (got "
                                  "\"%s\")",
                                  delivery);
        }
        check_at_most_once_retry(c, n, obj, path);
        const char *description;
        if (get_string(c, node, path, obj, "description", false, &description) && description &&
            strlen(description) > MAX_DESCRIPTION) {
                _cleanup_free_ char *f = path_join(path, "description");
                add_error(c, node, f ? f : path, "description too long (limit %d bytes)",
                          MAX_DESCRIPTION);
        }
        if (!is_template)
                (void)parse_expr_field(c, n, path, obj, "when", false, 0, &n->when);
        if (n->kind->parse)
                n->kind->parse(c, n, obj, path);
}

/* ---- the whole workflow ---- */

const struct wf_node *wf_find_node(const struct wf_workflow *wf, const char *id)
{
        json_t *v = wf->by_id ? json_object_get(wf->by_id, id) : NULL;
        return v ? &wf->nodes[json_integer_value(v)] : NULL;
}

const struct wf_node *wf_resolve_node(const struct wf_workflow *wf, const char *id)
{
        const struct wf_node *n = wf_find_node(wf, id);
        char base[72];
        size_t len;

        if (n)
                return n;
        len = strcspn(id, "[#");
        if (!id[len] || len >= sizeof(base))
                return NULL;
        memcpy(base, id, len);
        base[len] = '\0';
        n = wf_find_node(wf, base);
        if (!n || !n->body)
                return NULL;
        if (id[len] == '[' && strcmp(n->kind->name, "map") != 0)
                return NULL;
        if (id[len] == '#' && strcmp(n->kind->name, "loop") != 0)
                return NULL;
        return n->body;
}

static void node_free(struct wf_node *n)
{
        free(n->id);
        free(n->deps);
        free(n->dependents);
        free(n->gates);
        wf_expr_free(n->when);
        free(n->method);
        wf_tmpl_free(n->request);
        free(n->expect);
        wf_expr_free(n->until);
        free(n->event);
        wf_expr_free(n->condition);
        free(n->then_nodes);
        free(n->else_nodes);
        wf_expr_free(n->items);
        if (n->body) {
                node_free(n->body);
                free(n->body);
        }
        free(n->workflow);
        wf_tmpl_free(n->input);
        wf_tmpl_free(n->output);
        wf_tmpl_free(n->agent);
        free(n->agent_ref);
        free(n->agent_ref_field);
        wf_tmpl_free(n->approval);
        if (n->approval_policy)
                json_decref(n->approval_policy);
        wf_tmpl_free(n->notify);
}

void wf_free(struct wf_workflow *wf)
{
        if (!wf)
                return;
        for (size_t i = 0; i < wf->n_nodes; i++)
                node_free(&wf->nodes[i]);
        free(wf->nodes);
        free(wf->topo);
        if (wf->by_id)
                json_decref(wf->by_id);
        if (wf->definition)
                json_decref(wf->definition);
        wf_tmpl_free(wf->output);
        free(wf->name);
        free(wf->description);
        free(wf);
}

static int add_dep(struct wf_node *n, size_t dep)
{
        for (size_t i = 0; i < n->n_deps; i++)
                if (n->deps[i] == dep)
                        return 0;
        size_t *d = realloc(n->deps, (n->n_deps + 1) * sizeof(*d));
        if (!d)
                return -ENOMEM;
        n->deps = d;
        n->deps[n->n_deps++] = dep;
        return 0;
}

/* Orders the nodes (Kahn); on a cycle, reports one cycle by name. */
static int order_nodes(struct wf_parse_ctx *c)
{
        struct wf_workflow *wf = c->wf;
        size_t n = wf->n_nodes, head = 0, tail = 0;
        _cleanup_free_ size_t *indegree = calloc(n, sizeof(size_t));

        wf->topo = calloc(n, sizeof(size_t));
        if (!indegree || !wf->topo)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                indegree[i] = wf->nodes[i].n_deps;
        for (size_t i = 0; i < n; i++)
                if (indegree[i] == 0)
                        wf->topo[tail++] = i;
        while (head < tail) {
                struct wf_node *x = &wf->nodes[wf->topo[head++]];
                for (size_t k = 0; k < x->n_dependents; k++)
                        if (--indegree[x->dependents[k]] == 0)
                                wf->topo[tail++] = x->dependents[k];
        }
        if (tail == n)
                return 0;

        /* Every remaining node has a remaining dependency: walk them until one repeats. */
        _cleanup_free_ size_t *seen_at = calloc(n, sizeof(size_t));
        _cleanup_free_ size_t *walk = calloc(n + 1, sizeof(size_t));
        if (!seen_at || !walk)
                return -ENOMEM;
        size_t start = 0;
        while (indegree[start] == 0)
                start++;
        size_t len = 0, cur = start;
        while (!seen_at[cur]) {
                seen_at[cur] = ++len;
                walk[len - 1] = cur;
                struct wf_node *x = &wf->nodes[cur];
                for (size_t k = 0; k < x->n_deps; k++)
                        if (indegree[x->deps[k]] > 0) {
                                cur = x->deps[k];
                                break;
                        }
        }
        /* the cycle is C = walk[s .. len-1] with C[0] = cur, each depending on the next
         * and the last on C[0]; in run order that is C[0] -> C[last] -> ... -> C[1] -> C[0] */
        size_t s = seen_at[cur] - 1;
        _cleanup_buf_ struct buf b;
        buf_init(&b, 64 * 1024);
        (void)buf_printf(&b, "%s", wf->nodes[cur].id);
        for (size_t i = len - 1; i > s; i--)
                (void)buf_printf(&b, " -> %s", wf->nodes[walk[i]].id);
        (void)buf_printf(&b, " -> %s", wf->nodes[cur].id);
        _cleanup_free_ char *field = str_printf("/nodes/%zu/after", cur);
        add_error(c, wf->nodes[cur].id, field ? field : "/nodes",
                  "dependency cycle: %s; remove one of these dependencies (a -> b means b runs "
                  "after a; the then/else nodes of a condition run after it)",
                  b.data ? b.data : "?");
        return -EINVAL;
}

static bool is_upstream(const struct wf_workflow *wf, size_t owner, size_t target, unsigned *stamp,
                        unsigned mark, size_t *stack)
{
        size_t top = 0;

        stack[top++] = owner;
        stamp[owner] = mark;
        while (top) {
                const struct wf_node *x = &wf->nodes[stack[--top]];
                for (size_t k = 0; k < x->n_deps; k++) {
                        size_t d = x->deps[k];
                        if (d == target)
                                return true;
                        if (stamp[d] != mark) {
                                stamp[d] = mark;
                                stack[top++] = d;
                        }
                }
        }
        return false;
}

static void check_upstream_refs(struct wf_parse_ctx *c)
{
        struct wf_workflow *wf = c->wf;
        _cleanup_free_ unsigned *stamp = calloc(wf->n_nodes, sizeof(unsigned));
        _cleanup_free_ size_t *stack = calloc(wf->n_nodes + 1, sizeof(size_t));

        if (!stamp || !stack) {
                c->oom = true;
                return;
        }
        for (size_t i = 0; i < c->n_refs; i++) {
                struct pending_ref *r = &c->refs[i];
                if (r->owner == r->target) {
                        add_error(c, wf->nodes[r->owner].id, r->path,
                                  "expression at column %d reads node '%s' itself; a node can "
                                  "only read nodes that ran before it%s",
                                  r->column, wf->nodes[r->target].id,
                                  wf->nodes[r->owner].body ? " (use item, iteration or last)" : "");
                        continue;
                }
                if (!is_upstream(wf, r->owner, r->target, stamp, (unsigned)i + 1, stack))
                        add_error(c, wf->nodes[r->owner].id, r->path,
                                  "expression at column %d reads node '%s', which is not "
                                  "upstream of '%s'; add \"%s\" to its after so the output "
                                  "exists when it runs",
                                  r->column, wf->nodes[r->target].id, wf->nodes[r->owner].id,
                                  wf->nodes[r->target].id);
        }
}

static const char *const workflow_fields[] = {"$schema", "name",   "description",   "timeout",
                                              "nodes",   "output", "notifications", NULL};

/* "notifications": who hears of the run's end, its need of a person and its approvals
 * (channel.c checks each entry; migrations/0016_notify.sql reads them). */
static void parse_notifications(struct wf_parse_ctx *c, const json_t *definition)
{
        const json_t *subs = json_object_get(definition, "notifications");
        char msg[256];

        if (!subs)
                return;
        if (!json_is_array(subs) || json_array_size(subs) > WF_MAX_SUBSCRIPTIONS) {
                add_error(c, NULL, "/notifications",
                          "'notifications' must be a list of at most %d subscriptions "
                          "[{\"on\": [\"failed\"], \"channel\": {...}}]",
                          WF_MAX_SUBSCRIPTIONS);
                return;
        }
        for (size_t i = 0; i < json_array_size(subs); i++) {
                const json_t *sub = json_array_get(subs, i);
                const char *field = "";
                if (wf_subscription_check(sub, msg, sizeof(msg), &field) < 0) {
                        _cleanup_free_ char *f = str_printf("/notifications/%zu%s", i, field);
                        add_error(c, NULL, f ? f : "/notifications", "%s", msg);
                } else if (wf_channel_check(json_object_get(sub, "channel"), msg, sizeof(msg),
                                            &field) < 0) {
                        _cleanup_free_ char *f =
                            str_printf("/notifications/%zu/channel%s", i, field);
                        add_error(c, NULL, f ? f : "/notifications", "%s", msg);
                }
        }
}

static int build(const json_t *definition, struct wf_parse_ctx *c)
{
        struct wf_workflow *wf = c->wf;
        json_t *nodes;
        const char *s;

        if (!json_is_object(definition)) {
                add_error(c, NULL, "",
                          "a workflow definition must be a JSON object with name "
                          "and nodes");
                return 0;
        }
        check_fields(c, NULL, "", definition, "the workflow", workflow_fields, NULL);
        parse_notifications(c, definition);
        if (get_string(c, NULL, "", definition, "name", true, &s) && s) {
                if (!valid_workflow_name(s))
                        add_error(c, NULL, "/name",
                                  "invalid workflow name '%s'; use 1-63 characters of a-z, 0-9, "
                                  "_, . and -, starting with a letter or digit",
                                  s);
                else if (!(wf->name = strdup(s)))
                        return -ENOMEM;
        }
        if (get_string(c, NULL, "", definition, "description", false, &s) && s) {
                if (strlen(s) > MAX_DESCRIPTION)
                        add_error(c, NULL, "/description", "description too long (limit %d bytes)",
                                  MAX_DESCRIPTION);
                else if (!(wf->description = strdup(s)))
                        return -ENOMEM;
        }
        if (get_duration(c, NULL, "", definition, "timeout", &wf->timeout_ms) &&
            json_object_get(definition, "timeout") && wf->timeout_ms == 0)
                add_error(c, NULL, "/timeout", "timeout must be longer than 0");

        nodes = json_object_get(definition, "nodes");
        if (!nodes) {
                add_error(c, NULL, "/nodes", "missing required field 'nodes' (a non-empty array)");
                return 0;
        }
        if (!json_is_array(nodes) || json_array_size(nodes) == 0) {
                add_error(c, NULL, "/nodes", "'nodes' must be a non-empty array of nodes");
                return 0;
        }
        if (json_array_size(nodes) > WF_MAX_NODES) {
                add_error(c, NULL, "/nodes",
                          "too many nodes (%zu; limit %d); use a map node "
                          "for large fan-outs",
                          json_array_size(nodes), WF_MAX_NODES);
                return 0;
        }
        wf->n_nodes = json_array_size(nodes);
        wf->nodes = calloc(wf->n_nodes, sizeof(*wf->nodes));
        wf->by_id = json_object();
        if (!wf->nodes || !wf->by_id)
                return -ENOMEM;

        /* pass 1: ids */
        for (size_t i = 0; i < wf->n_nodes; i++) {
                json_t *obj = json_array_get(nodes, i);
                char path[48];
                const char *id;
                wf->nodes[i].index = i;
                snprintf(path, sizeof(path), "/nodes/%zu", i);
                if (!json_is_object(obj)) {
                        add_error(c, NULL, path, "a node must be an object with id and type");
                        continue;
                }
                if (!get_string(c, NULL, path, obj, "id", true, &id) || !id)
                        continue;
                char idpath[56];
                snprintf(idpath, sizeof(idpath), "%s/id", path);
                if (!valid_node_id(id)) {
                        add_error(c, NULL, idpath,
                                  "invalid node id '%s'; ids are 1-64 characters of letters, "
                                  "digits, _ and -, starting with a letter",
                                  id);
                        continue;
                }
                json_t *prev = json_object_get(wf->by_id, id);
                if (prev) {
                        add_error(c, id, idpath, "duplicate node id '%s' (also /nodes/%lld/id)", id,
                                  (long long)json_integer_value(prev));
                        continue;
                }
                wf->nodes[i].id = strdup(id);
                if (!wf->nodes[i].id ||
                    json_object_set_new(wf->by_id, id, json_integer((json_int_t)i)) < 0)
                        return -ENOMEM;
        }

        /* pass 2: everything else */
        for (size_t i = 0; i < wf->n_nodes; i++) {
                json_t *obj = json_array_get(nodes, i);
                struct wf_node *n = &wf->nodes[i];
                char path[48];
                snprintf(path, sizeof(path), "/nodes/%zu", i);
                if (!json_is_object(obj))
                        continue;
                json_t *after = json_object_get(obj, "after");
                if (after) {
                        _cleanup_free_ size_t *ids = NULL;
                        size_t n_ids = 0;
                        struct wf_node tmp = {.id = n->id, .index = i};
                        (void)parse_id_list(c, n->id ? n : &tmp, path, obj, "after", &ids, &n_ids);
                        for (size_t k = 0; k < n_ids; k++)
                                if (add_dep(n, ids[k]) < 0)
                                        return -ENOMEM;
                }
                if (!n->id)
                        continue; /* its id was already reported; avoid noise */
                parse_node_common(c, n, obj, path, false);
                if (c->oom)
                        return -ENOMEM;
        }

        /* implicit dependencies of condition branches */
        for (size_t i = 0; i < wf->n_nodes; i++) {
                struct wf_node *n = &wf->nodes[i];
                for (int branch = 0; branch < 2; branch++) {
                        size_t *list = branch == 0 ? n->then_nodes : n->else_nodes;
                        size_t len = branch == 0 ? n->n_then : n->n_else;
                        for (size_t k = 0; k < len; k++) {
                                struct wf_node *t = &wf->nodes[list[k]];
                                struct wf_gate *g =
                                    realloc(t->gates, (t->n_gates + 1) * sizeof(*g));
                                if (!g)
                                        return -ENOMEM;
                                t->gates = g;
                                g[t->n_gates++] = (struct wf_gate){i, branch == 0};
                                if (add_dep(t, i) < 0)
                                        return -ENOMEM;
                        }
                }
        }
        for (size_t i = 0; i < wf->n_nodes; i++) {
                struct wf_node *n = &wf->nodes[i];
                for (size_t k = 0; k < n->n_deps; k++) {
                        struct wf_node *d = &wf->nodes[n->deps[k]];
                        size_t *x = realloc(d->dependents, (d->n_dependents + 1) * sizeof(*x));
                        if (!x)
                                return -ENOMEM;
                        d->dependents = x;
                        d->dependents[d->n_dependents++] = i;
                }
        }
        int r = order_nodes(c);
        if (r == -ENOMEM)
                return r;
        if (r == 0)
                check_upstream_refs(c);

        json_t *output = json_object_get(definition, "output");
        if (output)
                (void)parse_template(c, NULL, "/output", output, SCOPE_BASE, SIZE_MAX, &wf->output);
        return c->oom ? -ENOMEM : 0;
}

int wf_parse(const json_t *definition, struct wf_workflow **out, json_t **errors)
{
        struct wf_parse_ctx c = {0};
        struct wf_workflow *wf;
        int r;

        *out = NULL;
        if (errors)
                *errors = NULL;
        wf = calloc(1, sizeof(*wf));
        c.errors = json_array();
        if (!wf || !c.errors) {
                free(wf);
                if (c.errors)
                        json_decref(c.errors);
                return -ENOMEM;
        }
        c.wf = wf;
        r = build(definition, &c);
        for (size_t i = 0; i < c.n_refs; i++)
                free(c.refs[i].path);
        free(c.refs);
        if (r == 0 && c.oom)
                r = -ENOMEM;
        if (r == 0 && c.n_errors > 0) {
                if (c.dropped) {
                        c.n_errors--; /* room for the summary */
                        add_error(&c, NULL, "", "and %zu more errors", c.dropped);
                }
                r = -EINVAL;
        }
        if (r == 0) {
                wf->definition = json_deep_copy(definition);
                if (!wf->definition)
                        r = -ENOMEM;
        }
        if (r < 0) {
                wf_free(wf);
                if (r == -EINVAL && errors)
                        *errors = TAKE_PTR(c.errors);
                if (c.errors)
                        json_decref(c.errors);
                return r;
        }
        json_decref(c.errors);
        *out = wf;
        return 0;
}

int wf_parse_text(const char *text, size_t len, struct wf_workflow **out, json_t **errors)
{
        json_error_t jerr;
        _cleanup_json_ json_t *def = NULL;

        *out = NULL;
        if (errors)
                *errors = NULL;
        if (len > WF_MAX_DEFINITION_BYTES) {
                if (errors)
                        *errors = json_pack("[{s:n,s:s,s:s}]", "node", "field", "", "message",
                                            "definition too large (limit 8 MiB)");
                return -EINVAL;
        }
        def = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!def) {
                if (errors) {
                        _cleanup_free_ char *m = str_printf("invalid JSON at line %d column %d: %s",
                                                            jerr.line, jerr.column, jerr.text);
                        *errors = json_pack("[{s:n,s:s,s:s}]", "node", "field", "", "message",
                                            m ? m : "invalid JSON");
                }
                return -EINVAL;
        }
        return wf_parse(def, out, errors);
}

int wf_validate(const json_t *definition, json_t **errors)
{
        struct wf_workflow *wf = NULL;
        int r = wf_parse(definition, &wf, errors);

        wf_free(wf);
        return r;
}

const char *wf_name(const struct wf_workflow *wf)
{
        return wf->name;
}

const char *wf_description(const struct wf_workflow *wf)
{
        return wf->description;
}

int64_t wf_timeout_ms(const struct wf_workflow *wf)
{
        return wf->timeout_ms;
}

size_t wf_node_count(const struct wf_workflow *wf)
{
        return wf->n_nodes;
}

const json_t *wf_definition(const struct wf_workflow *wf)
{
        return wf->definition;
}

const char *wf_node_kind(const struct wf_workflow *wf, const char *node_id)
{
        const struct wf_node *n = wf_resolve_node(wf, node_id);
        return n && n->kind ? n->kind->name : NULL;
}

static int agent_refs_add(const struct wf_node *n, json_t *refs)
{
        if (n->agent_ref &&
            json_array_append_new(
                refs,
                json_pack("{s:s?,s:s,s:s,s:o,s:b}", "node", node_name(n), "field",
                          n->agent_ref_field, "name", n->agent_ref, "version",
                          n->agent_ref_version ? json_integer(n->agent_ref_version) : json_null(),
                          "prompt", n->agent_ref_prompt)) < 0)
                return -ENOMEM;
        return n->body ? agent_refs_add(n->body, refs) : 0;
}

int wf_agent_refs(const struct wf_workflow *wf, json_t **refs)
{
        _cleanup_json_ json_t *a = json_array();

        *refs = NULL;
        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < wf->n_nodes; i++)
                if (agent_refs_add(&wf->nodes[i], a) < 0)
                        return -ENOMEM;
        *refs = json_incref(a);
        return 0;
}

char *wf_agent_ref_key(const char *name, int64_t version)
{
        return version ? str_printf("%s@%lld", name, (long long)version) : strdup(name);
}

char *wf_canonical_json(const json_t *definition)
{
        return json_dumps(definition, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
}

char *wf_idempotency_key(const char *run_id, const char *node_id)
{
        return str_printf("%s:%s", run_id, node_id);
}

int wf_nodes_before(const struct wf_workflow *wf, const char *from_node_id, json_t **ids)
{
        const struct wf_node *from = wf_find_node(wf, from_node_id);
        _cleanup_free_ bool *down = NULL;
        _cleanup_json_ json_t *a = NULL;

        *ids = NULL;
        if (!from)
                return -ENOENT;
        down = calloc(wf->n_nodes, sizeof(bool));
        a = json_array();
        if (!down || !a)
                return -ENOMEM;
        /* topological order: a node is downstream iff one of its dependencies is */
        down[from->index] = true;
        for (size_t t = 0; t < wf->n_nodes; t++) {
                const struct wf_node *n = &wf->nodes[wf->topo[t]];
                for (size_t k = 0; k < n->n_deps && !down[n->index]; k++)
                        if (down[n->deps[k]])
                                down[n->index] = true;
        }
        for (size_t i = 0; i < wf->n_nodes; i++)
                if (!down[i] && json_array_append_new(a, json_string(wf->nodes[i].id)) < 0)
                        return -ENOMEM;
        *ids = TAKE_PTR(a);
        return 0;
}
