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

static const struct api_versioned agents_table = {.table = "agents",
                                                  .alias = "a",
                                                  .what = "agent",
                                                  .row_json = AGENT_JSON,
                                                  .summary_json = AGENT_SUMMARY_JSON};

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
        if (json_object_get(def, "ref")) { /* a node's reference, not a definition */
                *errors = json_pack("[{s:s,s:s}]", "field", "/ref", "message",
                                    "an agent definition cannot reference another agent; give "
                                    "its provider and model (and a node references it by name)");
                return *errors ? -EINVAL : -ENOMEM;
        }
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
        if (r == -EINVAL)
                return api_definition_invalid(
                    resp, "agent",
                    "fix every error listed in errors (docs/workflows.md, \"agent\")", errors);
        if (r < 0)
                return api_error(resp, 500, "internal", "could not validate the agent", NULL, NULL);
        return api_apply_versioned(req, resp, &agents_table, name, def, NULL);
}

unsigned api_h_agents_list(struct api_request *req, struct api_response *resp)
{
        return api_versioned_list(req, resp, &agents_table);
}

unsigned api_h_agents_get(struct api_request *req, struct api_response *resp)
{
        return api_versioned_get(req, resp, &agents_table);
}

unsigned api_h_agents_versions(struct api_request *req, struct api_response *resp)
{
        return api_versioned_versions(req, resp, &agents_table);
}

/* Per reference: the latest version of its name, the version it resolves to (the one it
 * names, or that latest) and whether that definition has a prompt. Row-level security
 * makes it the request's user's agents only: another user's agent of that name is not
 * found, as if it did not exist. */
static const char REFS_CHECK_SQL[] =
    "SELECT json_agg(json_build_object('latest', l.latest, 'found', d.version IS NOT NULL, "
    "'prompt', coalesce(d.definition ? 'prompt', false)) ORDER BY r.i) "
    "FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY r(ref, i) "
    "LEFT JOIN LATERAL (SELECT max(version) AS latest FROM agents "
    "                   WHERE name = r.ref->>'name') l ON true "
    "LEFT JOIN LATERAL (SELECT version, definition FROM agents WHERE name = r.ref->>'name' "
    "                   AND (jsonb_typeof(r.ref->'version') IS DISTINCT FROM 'number' "
    "                        OR version = (r.ref->>'version')::integer) "
    "                   ORDER BY version DESC LIMIT 1) d ON true";

int api_agent_refs_check(struct api_request *req, const json_t *refs, json_t **errors)
{
        _cleanup_free_ char *text = NULL;
        _cleanup_json_ json_t *found = NULL, *list = NULL;
        const json_t *ref;
        size_t i;
        int r;

        if (json_array_size(refs) == 0)
                return 0;
        if (!(text = json_dumps(refs, JSON_COMPACT)) || !(list = json_array()))
                return -ENOMEM;
        const char *params[] = {text};
        r = api_query_json(req, REFS_CHECK_SQL, 1, params, &found);
        if (r < 0)
                return r;
        json_array_foreach (refs, i, ref) {
                const json_t *f = json_array_get(found, i);
                const char *name = json_string_value(json_object_get(ref, "name"));
                const char *field = json_string_value(json_object_get(ref, "field"));
                const json_t *node = json_object_get(ref, "node");
                json_int_t latest = json_integer_value(json_object_get(f, "latest"));
                _cleanup_free_ char *msg = NULL, *agent_field = NULL;

                if (!json_is_integer(json_object_get(f, "latest"))) {
                        msg = str_printf("no agent named '%s'; apply it first (agently agent "
                                         "apply FILE, with \"name\": \"%s\"), or name one of "
                                         "yours (agently agent list)",
                                         name, name);
                } else if (!json_is_true(json_object_get(f, "found"))) {
                        msg = str_printf(
                            "agent '%s' has no version %lld (its latest is %lld); "
                            "name one it has (agently agent show %s), or drop "
                            "'version' to use the latest",
                            name, (long long)json_integer_value(json_object_get(ref, "version")),
                            (long long)latest, name);
                } else if (!json_is_true(json_object_get(f, "prompt")) &&
                           !json_is_true(json_object_get(ref, "prompt"))) {
                        /* the field of the agent object, not of its "ref" */
                        agent_field = strdup(field ? field : "");
                        size_t n = agent_field ? strlen(agent_field) : 0;
                        if (n >= 4 && !strcmp(agent_field + n - 4, "/ref"))
                                agent_field[n - 4] = '\0';
                        field = agent_field;
                        msg = str_printf("agent '%s' has no prompt and this node gives none; "
                                         "write the node's agent as {\"ref\": \"%s\", "
                                         "\"prompt\": \"...\"}, or give the agent a prompt",
                                         name, name);
                } else {
                        continue;
                }
                if (!msg || !field ||
                    json_array_append_new(list, json_pack("{s:O,s:s,s:s}", "node", node, "field",
                                                          field, "message", msg)) < 0)
                        return -ENOMEM;
        }
        if (json_array_size(list) == 0)
                return 0;
        if (json_is_array(*errors)) {
                if (json_array_extend(*errors, list) < 0)
                        return -ENOMEM;
        } else {
                json_decref(*errors);
                *errors = json_incref(list);
        }
        return 1;
}
