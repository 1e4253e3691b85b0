/* Temporary compiling skeleton behind engine.h and expr.h: every entry point reports
 * -ENOSYS until the real parser, evaluator and planner land (replaced file by file). */
#include "engine.h"
#include "expr.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "strutil.h"

int wf_parse(const json_t *definition, struct wf_workflow **out, json_t **errors)
{
        *out = NULL;
        if (errors)
                *errors = NULL;
        return -ENOSYS;
}

int wf_parse_text(const char *text, size_t len, struct wf_workflow **out, json_t **errors)
{
        return wf_parse(NULL, out, errors);
}

int wf_validate(const json_t *definition, json_t **errors)
{
        struct wf_workflow *wf;
        return wf_parse(definition, &wf, errors);
}

void wf_free(struct wf_workflow *wf)
{
}

const char *wf_name(const struct wf_workflow *wf)
{
        return NULL;
}

const char *wf_description(const struct wf_workflow *wf)
{
        return NULL;
}

int64_t wf_timeout_ms(const struct wf_workflow *wf)
{
        return 0;
}

size_t wf_node_count(const struct wf_workflow *wf)
{
        return 0;
}

const json_t *wf_definition(const struct wf_workflow *wf)
{
        return NULL;
}

const char *wf_node_kind(const struct wf_workflow *wf, const char *node_id)
{
        return NULL;
}

char *wf_canonical_json(const json_t *definition)
{
        return json_dumps(definition, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
}

int wf_plan(const struct wf_workflow *wf, const json_t *snapshot, json_t **actions)
{
        *actions = NULL;
        return -ENOSYS;
}

int wf_on_node_failure(const struct wf_workflow *wf, const char *node_id, int attempt,
                       const json_t *error, int64_t now_ms, uint64_t random, json_t **decision)
{
        *decision = NULL;
        return -ENOSYS;
}

char *wf_idempotency_key(const char *run_id, const char *node_id)
{
        return str_printf("%s:%s", run_id, node_id);
}

int wf_nodes_before(const struct wf_workflow *wf, const char *from_node_id, json_t **ids)
{
        *ids = NULL;
        return -ENOSYS;
}

int wf_expr_parse(const char *src, struct wf_expr **out, json_t **error)
{
        *out = NULL;
        return -ENOSYS;
}

void wf_expr_free(struct wf_expr *e)
{
}

const char *wf_expr_source(const struct wf_expr *e)
{
        return NULL;
}

int wf_expr_eval(const struct wf_expr *e, const json_t *scope, json_t **out, json_t **error)
{
        *out = NULL;
        return -ENOSYS;
}

int wf_expr_truthy(const json_t *v)
{
        return 0;
}

int wf_template_render(const json_t *tmpl, const json_t *scope, json_t **out, json_t **error)
{
        *out = NULL;
        return -ENOSYS;
}
