/*
 * The workflow expression language (one syntax, documented in docs/workflows.md): bare
 * expressions in `when`, `if`, `until`, `items`, and `${ expr }` templates inside strings
 * of request/input/output templates. Expressions are parsed once at validation time
 * (errors carry a 1-based column) and evaluated against a scope of JSON values. Parsing
 * and evaluation are bounded: WF_EXPR_MAX_LEN bytes, WF_EXPR_MAX_DEPTH nesting, and a
 * cap on the size of strings an evaluation builds. Pure: no I/O, no clock.
 */
#pragma once

#include <jansson.h>

struct wf_expr;

/*
 * Parses src (NUL-terminated, at most WF_EXPR_MAX_LEN bytes) into *out (caller frees with
 * wf_expr_free). Only syntax, function names and arity are checked here; which names are
 * in scope is checked by wf_parse(). On -EINVAL, *error (if error is not NULL) is a new
 * object {"message": "...", "column": n}. -ENOMEM on allocation failure.
 */
int wf_expr_parse(const char *src, struct wf_expr **out, json_t **error);

/* Accepts NULL. */
void wf_expr_free(struct wf_expr *e);

/* The source text the expression was parsed from (borrowed). */
const char *wf_expr_source(const struct wf_expr *e);

/*
 * Evaluates e. scope is an object whose members are the names in scope: "input", "nodes"
 * ({"<id>": {"output","status","error"}}), "run" ({"id"}), and where they apply "item",
 * "index", "iteration", "last". A path that does not exist evaluates to null. On success
 * *out is a new reference. On -EINVAL (a type error such as "a" - 1, division by zero, a
 * result over the size cap) *error is a new {"message": "...", "column": n}.
 */
int wf_expr_eval(const struct wf_expr *e, const json_t *scope, json_t **out, json_t **error);

/* Truthiness used by `when`, `if` and `until`: false, null, 0, "", [] and {} are false;
 * everything else is true. */
int wf_expr_truthy(const json_t *v);

/*
 * Renders a template: a copy of tmpl where every string containing `${ expr }` has the
 * expressions replaced by their values (converted as by string()); a string that is
 * exactly one `${ expr }` becomes the raw JSON value. "$${" is a literal "${".
 * On -EINVAL *error is {"message": "...", "column": n, "path": "/body/x"}.
 */
int wf_template_render(const json_t *tmpl, const json_t *scope, json_t **out, json_t **error);
