/*
 * Reusable agent definitions: /v1/agents. An agent is named and versioned like a workflow:
 * applying a definition that differs from the latest version makes a new version (201),
 * applying the same one again changes nothing (200), and a version never changes once
 * written (a run that used it keeps meaning the same thing). The definition is the `agent`
 * object of the agent node (docs/workflows.md, "agent") plus a name and a description;
 * `prompt` is optional here, since the node that uses the agent usually gives it. It is
 * validated by the engine's own rules for that object, so the two can never disagree.
 */
#include "api_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "engine.h"
#include "strutil.h"

#define AGENT_JSON                                                                                 \
        "json_build_object('id', a.id, 'name', a.name, 'version', a.version, 'definition', "       \
        "a.definition, 'definition_sha256', a.definition_sha256, 'created_at', a.created_at)"

#define AGENT_SUMMARY_JSON                                                                         \
        "json_build_object('id', a.id, 'name', a.name, 'version', a.version, 'description', "      \
        "a.definition->'description', 'provider', a.definition->'provider', 'model', "             \
        "a.definition->'model', 'definition_sha256', a.definition_sha256, 'created_at', "          \
        "a.created_at)"

static const struct api_versioned agents_table = {
    .table = "agents", .alias = "a", .what = "agent", .row_json = AGENT_JSON};

/* The agent node's check, as a one-node workflow: its errors with their field relative to
 * the definition ("/budget/max_cost_usd"). 0, -EINVAL with *errors, -ENOMEM. */
static int agent_check(const json_t *def, json_t **errors)
{
        static const char prefix[] = "/nodes/0/agent";
        _cleanup_json_ json_t *agent = json_deep_copy(def), *wf = NULL;
        json_t *e;
        size_t i;
        int r;

        *errors = NULL;
        if (!agent)
                return -ENOMEM;
        json_object_del(agent, "name");
        json_object_del(agent, "description");
        if (!json_object_get(agent, "prompt")) /* the node gives it */
                json_object_set_new(agent, "prompt", json_string("-"));
        wf = json_pack("{s:s, s:[{s:s, s:s, s:O}]}", "name", "agent-check", "nodes", "id", "agent",
                       "type", "agent", "agent", agent);
        if (!wf)
                return -ENOMEM;
        r = wf_validate(wf, errors);
        json_array_foreach (*errors, i, e) {
                const char *f = json_string_value(json_object_get(e, "field"));
                json_object_del(e, "node");
                if (f && str_has_prefix(f, prefix))
                        json_object_set_new(
                            e, "field",
                            json_string(f[sizeof(prefix) - 1] ? f + sizeof(prefix) - 1 : "/"));
        }
        return r;
}

unsigned api_h_agents_apply(struct api_request *req, struct api_response *resp)
{
        json_t *def = api_body_object(req, resp, false);
        _cleanup_json_ json_t *errors = NULL;
        json_t *desc;
        int r;

        if (!def)
                return resp->status;
        const char *name = json_string_value(json_object_get(def, "name"));
        if (!name || !api_is_name(name))
                return api_error(resp, 400, "invalid_field", "invalid agent name", "field 'name'",
                                 "use 1-63 of a-z 0-9 _ . -, starting with a letter or digit");
        desc = json_object_get(def, "description");
        if (desc && !json_is_string(desc))
                return api_error(resp, 400, "invalid_field", "description must be a string",
                                 "field 'description'", NULL);
        r = agent_check(def, &errors);
        if (r == -EINVAL) {
                json_t *first = json_array_get(errors, 0);
                const char *field = json_string_value(json_object_get(first, "field"));
                const char *msg = json_string_value(json_object_get(first, "message"));
                api_errorf(resp, 422, "validation_failed", "the agent definition is invalid",
                           "fix every error listed in errors (docs/workflows.md, \"agent\")",
                           "%s: %s", field ? field : "/", msg ? msg : "invalid");
                json_t *inner = json_object_get(resp->json, "error");
                if (field)
                        json_object_set_new(inner, "field", json_string(field));
                json_object_set(inner, "errors", errors);
                return 422;
        }
        if (r < 0)
                return api_error(resp, 500, "internal", "could not validate the agent", NULL, NULL);
        return api_apply_versioned(req, resp, &agents_table, name, def);
}

unsigned api_h_agents_list(struct api_request *req, struct api_response *resp)
{
        _cleanup_free_ char *cursor = NULL, *limit_s = NULL;
        unsigned st;
        int limit;

        if ((st = api_page_begin_name(req, resp, &limit, &cursor)))
                return st;
        limit_s = str_printf("%d", limit + 1);
        const char *params[] = {cursor, limit_s};
        return api_page_query(req, resp,
                              "SELECT " AGENT_SUMMARY_JSON ", a.name FROM (SELECT DISTINCT ON "
                              "(name) * FROM agents WHERE ($1::text IS NULL OR name > $1) "
                              "ORDER BY name, version DESC) a ORDER BY a.name LIMIT $2::integer",
                              2, params, limit);
}

unsigned api_h_agents_get(struct api_request *req, struct api_response *resp)
{
        const char *name = req->params[0], *v = api_query(req, "version");
        int version;

        if (v && (str_to_int(v, &version) < 0 || version < 1))
                return api_errorf(resp, 400, "invalid_parameter", "invalid version", NULL,
                                  "version must be a positive integer, got '%s'", v);
        const char *params[] = {name, v};
        return api_respond_query(req, resp, 200,
                                 "SELECT " AGENT_JSON " FROM agents a WHERE a.name = $1 AND "
                                 "($2::integer IS NULL OR a.version = $2::integer) "
                                 "ORDER BY a.version DESC LIMIT 1",
                                 2, params, "agent", name);
}

unsigned api_h_agents_versions(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->params[0]};
        json_t *j = NULL;
        int r = api_query_json(req,
                               "SELECT json_build_object('data', json_agg(" AGENT_SUMMARY_JSON
                               " ORDER BY a.version DESC)) FROM agents a WHERE a.name = $1 "
                               "HAVING count(*) > 0",
                               1, params, &j);

        if (r < 0)
                return api_db_error(resp, r);
        if (!j)
                return api_not_found(resp, "agent", req->params[0]);
        return api_json(resp, 200, j);
}
