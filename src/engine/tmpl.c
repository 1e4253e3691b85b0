/*
 * Templates: JSON values whose strings may contain `${ expr }`. They are compiled once (at
 * validation) into a tree that keeps constant subtrees as literals and each templated
 * string as a list of text and expression parts, so rendering one map item of a 10,000
 * item fan-out costs an evaluation, not a parse. A string that is exactly one `${ expr }`
 * yields the raw value; "$${" is a literal "${".
 */
#include "expr_internal.h"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "strutil.h"

#define TMPL_MAX_DEPTH 128

enum tmpl_kind { T_LITERAL, T_OBJECT, T_ARRAY, T_STRING };

struct tmpl_part {
        char *text; /* literal text (may be empty) preceding e, or trailing text */
        size_t text_len;
        struct wf_expr *e; /* NULL for the trailing text part */
        int offset;        /* of the expression in the string, for columns */
};

struct wf_tmpl {
        enum tmpl_kind kind;
        json_t *literal;
        size_t n_kids;
        char **keys; /* T_OBJECT */
        struct wf_tmpl **kids;
        struct tmpl_part *parts;
        size_t n_parts;
        bool raw; /* the string is exactly one ${ expr } */
};

void wf_tmpl_free(struct wf_tmpl *t)
{
        if (!t)
                return;
        if (t->literal)
                json_decref(t->literal);
        for (size_t i = 0; i < t->n_kids; i++) {
                if (t->keys)
                        free(t->keys[i]);
                wf_tmpl_free(t->kids[i]);
        }
        free(t->keys);
        free(t->kids);
        for (size_t i = 0; i < t->n_parts; i++) {
                free(t->parts[i].text);
                wf_expr_free(t->parts[i].e);
        }
        free(t->parts);
        free(t);
}

bool wf_tmpl_is_constant(const struct wf_tmpl *t)
{
        return t->kind == T_LITERAL;
}

struct compile {
        wf_tmpl_error_cb cb;
        void *userdata;
        bool failed;
        bool oom;
        struct buf path;
};

static void report(struct compile *c, const char *message, int column)
{
        c->failed = true;
        if (c->cb)
                c->cb(c->userdata, c->path.data ? c->path.data : "", message, column);
}

static int push_key(struct buf *path, const char *key)
{
        if (buf_append_str(path, "/") < 0)
                return -ENOMEM;
        for (const char *k = key; *k; k++) {
                int r = *k == '~'   ? buf_append_str(path, "~0")
                        : *k == '/' ? buf_append_str(path, "~1")
                                    : buf_append(path, k, 1);
                if (r < 0)
                        return -ENOMEM;
        }
        return 0;
}

static int add_part(struct wf_tmpl *t, struct buf *text, struct wf_expr *e, int offset)
{
        struct tmpl_part *parts = realloc(t->parts, (t->n_parts + 1) * sizeof(*parts));
        if (!parts)
                return -ENOMEM;
        t->parts = parts;
        parts[t->n_parts].text_len = text->len;
        parts[t->n_parts].text = text->len ? buf_steal(text) : NULL;
        if (text->len == 0 && !parts[t->n_parts].text)
                buf_reset(text);
        parts[t->n_parts].e = e;
        parts[t->n_parts].offset = offset;
        t->n_parts++;
        return 0;
}

/* Compiles one string; *out is NULL when it holds no expression (a literal). */
static int compile_string(struct compile *c, const json_t *j, struct wf_tmpl **out)
{
        const char *s = json_string_value(j);
        size_t len = json_string_length(j), i = 0;
        _cleanup_buf_ struct buf text = {.max = WF_EXPR_MAX_STRING};
        struct wf_tmpl *t = NULL;
        bool any = false;

        *out = NULL;
        if (!memmem(s, len, "${", 2))
                return 0;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->kind = T_STRING;
        while (i < len) {
                if (s[i] == '$' && i + 2 < len && s[i + 1] == '$' && s[i + 2] == '{') {
                        if (buf_append(&text, "${", 2) < 0)
                                goto nomem;
                        i += 3;
                        continue;
                }
                if (s[i] == '$' && i + 1 < len && s[i + 1] == '{') {
                        struct wf_expr_error err = {0};
                        struct wf_expr *e;
                        size_t end;
                        int r = wf_expr_parse_n(s + i + 2, len - i - 2, true, &end, &e, &err);
                        if (r == -ENOMEM) {
                                wf_expr_error_clear(&err);
                                goto nomem;
                        }
                        if (r < 0) {
                                report(c, err.message ? err.message : "invalid expression",
                                       (int)(i + 2) + err.column);
                                wf_expr_error_clear(&err);
                                wf_tmpl_free(t);
                                return 0;
                        }
                        if (add_part(t, &text, e, (int)(i + 2)) < 0) {
                                wf_expr_free(e);
                                goto nomem;
                        }
                        any = true;
                        i += 2 + end + 1;
                        continue;
                }
                if (buf_append(&text, s + i, 1) < 0)
                        goto nomem;
                i++;
        }
        if (text.len && add_part(t, &text, NULL, 0) < 0)
                goto nomem;
        if (!any) { /* only $${ escapes: a literal with them unescaped */
                const char *txt = t->n_parts ? t->parts[0].text : "";
                t->kind = T_LITERAL;
                t->literal = json_stringn(txt ? txt : "", t->n_parts ? t->parts[0].text_len : 0);
                if (!t->literal)
                        goto nomem;
        }
        t->raw =
            any && t->n_parts == 1 && t->parts[0].text_len == 0 && s[0] == '$' && s[len - 1] == '}';
        *out = t;
        return 0;
nomem:
        wf_tmpl_free(t);
        return -ENOMEM;
}

static int compile_value(struct compile *c, const json_t *j, int depth, struct wf_tmpl **out)
{
        struct wf_tmpl *t;
        int r;

        *out = NULL;
        if (depth > TMPL_MAX_DEPTH) {
                report(c, "value nested too deeply (limit 128 levels)", 0);
                return 0;
        }
        if (json_is_string(j))
                return compile_string(c, j, out);
        if (!json_is_object(j) && !json_is_array(j))
                return 0;

        size_t n = json_is_object(j) ? json_object_size(j) : json_array_size(j);
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->kind = json_is_object(j) ? T_OBJECT : T_ARRAY;
        t->kids = calloc(n ? n : 1, sizeof(*t->kids));
        if (t->kind == T_OBJECT)
                t->keys = calloc(n ? n : 1, sizeof(*t->keys));
        if (!t->kids || (t->kind == T_OBJECT && !t->keys)) {
                wf_tmpl_free(t);
                return -ENOMEM;
        }
        bool all_constant = true;
        size_t saved = c->path.len;
        if (t->kind == T_OBJECT) {
                const char *key;
                json_t *v;
                json_object_foreach ((json_t *)j, key, v) {
                        c->path.len = saved;
                        c->path.data[saved] = '\0';
                        if (push_key(&c->path, key) < 0)
                                goto nomem;
                        t->keys[t->n_kids] = strdup(key);
                        if (!t->keys[t->n_kids])
                                goto nomem;
                        r = compile_value(c, v, depth + 1, &t->kids[t->n_kids]);
                        t->n_kids++;
                        if (r < 0)
                                goto nomem;
                        if (t->kids[t->n_kids - 1])
                                all_constant = false;
                }
        } else {
                for (size_t i = 0; i < n; i++) {
                        char idx[32];
                        c->path.len = saved;
                        c->path.data[saved] = '\0';
                        snprintf(idx, sizeof(idx), "%zu", i);
                        if (push_key(&c->path, idx) < 0)
                                goto nomem;
                        r = compile_value(c, json_array_get(j, i), depth + 1, &t->kids[i]);
                        t->n_kids++;
                        if (r < 0)
                                goto nomem;
                        if (t->kids[i])
                                all_constant = false;
                }
        }
        if (c->path.data) {
                c->path.len = saved;
                c->path.data[saved] = '\0';
        }
        if (all_constant) {
                wf_tmpl_free(t);
                return 0;
        }
        *out = t;
        return 0;
nomem:
        wf_tmpl_free(t);
        return -ENOMEM;
}

/* A compiled node for a constant value: every kid slot that compile_value() left NULL is
 * a constant too; the render looks them up in the source value kept by the parent. To keep
 * rendering self-contained, fill those slots with literal nodes now. */
static int fill_literals(struct wf_tmpl *t, const json_t *j)
{
        if (!t)
                return 0;
        if (t->kind == T_LITERAL || t->kind == T_STRING)
                return 0;
        for (size_t i = 0; i < t->n_kids; i++) {
                json_t *v =
                    t->kind == T_OBJECT ? json_object_get(j, t->keys[i]) : json_array_get(j, i);
                if (t->kids[i]) {
                        if (fill_literals(t->kids[i], v) < 0)
                                return -ENOMEM;
                        continue;
                }
                t->kids[i] = calloc(1, sizeof(struct wf_tmpl));
                if (!t->kids[i])
                        return -ENOMEM;
                t->kids[i]->kind = T_LITERAL;
                t->kids[i]->literal = json_deep_copy(v);
                if (!t->kids[i]->literal)
                        return -ENOMEM;
        }
        return 0;
}

int wf_tmpl_compile(const json_t *tmpl, wf_tmpl_error_cb cb, void *userdata, struct wf_tmpl **out)
{
        struct compile c = {.cb = cb, .userdata = userdata};
        struct wf_tmpl *t = NULL;
        int r;

        *out = NULL;
        buf_init(&c.path, 64 * 1024);
        if (buf_append_str(&c.path, "") < 0) {
                buf_free(&c.path);
                return -ENOMEM;
        }
        r = compile_value(&c, tmpl, 0, &t);
        buf_free(&c.path);
        if (r < 0) {
                wf_tmpl_free(t);
                return r;
        }
        if (c.failed) {
                wf_tmpl_free(t);
                return -EINVAL;
        }
        if (!t) {
                t = calloc(1, sizeof(*t));
                if (!t)
                        return -ENOMEM;
                t->kind = T_LITERAL;
                t->literal = json_deep_copy(tmpl);
                if (!t->literal) {
                        wf_tmpl_free(t);
                        return -ENOMEM;
                }
        } else if (fill_literals(t, tmpl) < 0) {
                wf_tmpl_free(t);
                return -ENOMEM;
        }
        *out = t;
        return 0;
}

static int render(const struct wf_tmpl *t, const struct wf_scope *scope, struct buf *path,
                  json_t **out, struct wf_expr_error *err)
{
        int r;

        *out = NULL;
        switch (t->kind) {
        case T_LITERAL:
                *out = json_deep_copy(t->literal);
                return *out ? 0 : -ENOMEM;
        case T_STRING: {
                if (t->raw)
                        return wf_expr_eval_scope(t->parts[0].e, scope, out, err);
                _cleanup_buf_ struct buf s;
                buf_init(&s, WF_EXPR_MAX_STRING);
                for (size_t i = 0; i < t->n_parts; i++) {
                        if (t->parts[i].text_len &&
                            buf_append(&s, t->parts[i].text, t->parts[i].text_len) < 0)
                                goto too_long;
                        if (!t->parts[i].e)
                                continue;
                        _cleanup_json_ json_t *v = NULL;
                        r = wf_expr_eval_scope(t->parts[i].e, scope, &v, err);
                        if (r < 0)
                                return r;
                        if (json_is_string(v)) {
                                if (buf_append(&s, json_string_value(v), json_string_length(v)) < 0)
                                        goto too_long;
                        } else {
                                _cleanup_free_ char *txt = wf_expr_to_text(v);
                                if (!txt)
                                        return -ENOMEM;
                                if (buf_append_str(&s, txt) < 0)
                                        goto too_long;
                        }
                }
                *out = json_stringn_nocheck(s.data ? s.data : "", s.len);
                return *out ? 0 : -ENOMEM;
        too_long:
                if (err && !err->message) {
                        err->message = str_printf("rendered string too long (limit %d bytes)",
                                                  WF_EXPR_MAX_STRING);
                        err->column = 0;
                }
                return -EINVAL;
        }
        case T_OBJECT:
        case T_ARRAY: {
                _cleanup_json_ json_t *o = t->kind == T_OBJECT ? json_object() : json_array();
                size_t saved = path->len;
                if (!o)
                        return -ENOMEM;
                for (size_t i = 0; i < t->n_kids; i++) {
                        json_t *v;
                        char idx[32];
                        path->len = saved;
                        path->data[saved] = '\0';
                        snprintf(idx, sizeof(idx), "%zu", i);
                        if (push_key(path, t->kind == T_OBJECT ? t->keys[i] : idx) < 0)
                                return -ENOMEM;
                        r = render(t->kids[i], scope, path, &v, err);
                        if (r < 0)
                                return r;
                        r = t->kind == T_OBJECT ? json_object_set_new(o, t->keys[i], v)
                                                : json_array_append_new(o, v);
                        if (r < 0)
                                return -ENOMEM;
                }
                path->len = saved;
                path->data[saved] = '\0';
                *out = TAKE_PTR(o);
                return 0;
        }
        }
        return -EINVAL;
}

int wf_tmpl_render(const struct wf_tmpl *t, const struct wf_scope *scope, json_t **out,
                   struct wf_expr_error *err, char **err_path)
{
        _cleanup_buf_ struct buf path;
        int r;

        if (err_path)
                *err_path = NULL;
        buf_init(&path, 64 * 1024);
        if (buf_append_str(&path, "") < 0)
                return -ENOMEM;
        r = render(t, scope, &path, out, err);
        if (r == -EINVAL && err_path)
                *err_path = buf_steal(&path);
        return r;
}

struct shifted {
        wf_expr_ref_cb cb;
        void *userdata;
        int offset;
};

static int shifted_cb(void *userdata, const char *root, const char *node_id, int column)
{
        struct shifted *s = userdata;
        return s->cb(s->userdata, root, node_id, column + s->offset);
}

int wf_tmpl_walk_refs(const struct wf_tmpl *t, wf_expr_ref_cb cb, void *userdata)
{
        int r;

        if (!t)
                return 0;
        for (size_t i = 0; i < t->n_parts; i++)
                if (t->parts[i].e) {
                        struct shifted s = {cb, userdata, t->parts[i].offset};
                        r = wf_expr_walk_refs(t->parts[i].e, shifted_cb, &s);
                        if (r < 0)
                                return r;
                }
        for (size_t i = 0; i < t->n_kids; i++) {
                r = wf_tmpl_walk_refs(t->kids[i], cb, userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void collect_first_error(void *userdata, const char *path, const char *message, int column)
{
        json_t **error = userdata;

        if (*error)
                return;
        *error = json_pack("{s:s,s:i,s:s}", "message", message, "column", column, "path", path);
}

int wf_template_render(const json_t *tmpl, const json_t *scope, json_t **out, json_t **error)
{
        struct wf_tmpl *t = NULL;
        struct wf_expr_error err = {0};
        struct wf_scope s = {0};
        _cleanup_free_ char *path = NULL;
        json_t *first = NULL;
        int r;

        *out = NULL;
        if (error)
                *error = NULL;
        r = wf_tmpl_compile(tmpl, collect_first_error, &first, &t);
        if (r < 0) {
                if (error)
                        *error = first;
                else if (first)
                        json_decref(first);
                return r;
        }
        if (json_is_object(scope)) {
                s.input = json_object_get(scope, "input");
                s.nodes = json_object_get(scope, "nodes");
                s.run = json_object_get(scope, "run");
                s.item = json_object_get(scope, "item");
                s.index = json_object_get(scope, "index");
                s.iteration = json_object_get(scope, "iteration");
                s.last = json_object_get(scope, "last");
        }
        r = wf_tmpl_render(t, &s, out, &err, &path);
        if (r == -EINVAL && error)
                *error =
                    json_pack("{s:s,s:i,s:s}", "message", err.message ? err.message : "invalid",
                              "column", err.column, "path", path ? path : "");
        wf_expr_error_clear(&err);
        wf_tmpl_free(t);
        return r;
}
