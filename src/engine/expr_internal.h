/*
 * Engine-internal side of the expression language: the evaluation scope as a struct (so
 * the planner can point at snapshot values without building a scope object per node),
 * compiled templates, and the walk that lets validation check which names and node ids an
 * expression refers to. Not part of the published interface.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#include "expr.h"

/* Largest string an evaluation may build (concatenation, string(), templates). */
#define WF_EXPR_MAX_STRING (1024 * 1024)

/* Values in scope; NULL means the name is not in scope (it then evaluates to null). All
 * borrowed. */
struct wf_scope {
        const json_t *input;
        const json_t *nodes; /* {"<id>": {"status","output","error",...}} */
        const json_t *run;   /* {"id": "..."} */
        const json_t *item;
        const json_t *index;
        const json_t *iteration;
        const json_t *last;
        const json_t *secrets; /* an http request's: {"NAME": "[secret:NAME]"} */
};

/* An evaluation or compilation problem: message (malloc'd) and 1-based column (0 if none). */
struct wf_expr_error {
        char *message;
        int column;
};
void wf_expr_error_clear(struct wf_expr_error *err);

/* Parses the expression at src[0..len). With in_template, parsing stops at the first
 * top-level '}' and *end is set to its offset (which must exist); otherwise the whole
 * range must be one expression. */
int wf_expr_parse_n(const char *src, size_t len, bool in_template, size_t *end,
                    struct wf_expr **out, struct wf_expr_error *err);

int wf_expr_eval_scope(const struct wf_expr *e, const struct wf_scope *scope, json_t **out,
                       struct wf_expr_error *err);

/* Calls cb for every name an expression reads: root is "input", "nodes", "item", ...;
 * node_id is the node named by nodes.<id> / nodes["<id>"], or the secret named by
 * secrets.<NAME> / secrets["<NAME>"] (NULL for other roots, and for a nodes or secrets
 * reference whose name is not a literal: the callback should reject that). Stops and
 * returns the first negative value cb returns. */
typedef int (*wf_expr_ref_cb)(void *userdata, const char *root, const char *node_id, int column);
int wf_expr_walk_refs(const struct wf_expr *e, wf_expr_ref_cb cb, void *userdata);

/* Converts a value to text as string() and template interpolation do (null is ""). */
char *wf_expr_to_text(const json_t *v);

/* ---- Compiled templates ---- */
struct wf_tmpl;

/* Reports one template problem: path is a JSON-pointer-like path inside the template
 * (relative, "" for the root). */
typedef void (*wf_tmpl_error_cb)(void *userdata, const char *path, const char *message, int column);

/* Compiles tmpl (deep-copying literals). Every syntax error is reported through cb (when
 * not NULL); returns -EINVAL if there was any, -ENOMEM, or 0. */
int wf_tmpl_compile(const json_t *tmpl, wf_tmpl_error_cb cb, void *userdata, struct wf_tmpl **out);
void wf_tmpl_free(struct wf_tmpl *t);
bool wf_tmpl_is_constant(const struct wf_tmpl *t);

/* Renders t; on -EINVAL err is set and *err_path (malloc'd) names where. */
int wf_tmpl_render(const struct wf_tmpl *t, const struct wf_scope *scope, json_t **out,
                   struct wf_expr_error *err, char **err_path);

/* wf_expr_walk_refs over every expression of the template. */
int wf_tmpl_walk_refs(const struct wf_tmpl *t, wf_expr_ref_cb cb, void *userdata);
