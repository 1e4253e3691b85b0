/*
 * `agently agent apply|list|show`: reusable agent definitions over /v1/agents, versioned
 * like workflows (an unchanged definition applies as "unchanged", so CI may apply on every
 * commit). `show` prints what the agent calls and may spend; the API key is a secret's name,
 * never a key.
 */
#include <stdio.h>
#include <string.h>

#include "cleanup.h"
#include "client.h"
#include "strutil.h"

static int agent_apply(struct client_ctx *ctx, const struct cli_args *args)
{
        return client_apply_file(ctx, args, "/v1/agents", "agent");
}

static const struct cli_flag list_flags[] = {
    {"limit", 0, "N", "at most N agents (1-200, default 50)"},
    {"cursor", 0, "CURSOR", "continue after a previous page"},
    {NULL, 0, NULL, NULL},
};

static const struct client_column agent_columns[] = {
    {"NAME", "name", NULL},
    {"VERSION", "version", client_cell_version},
    {"PROVIDER", "provider", NULL},
    {"MODEL", "model", NULL},
    {"CREATED", "created_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int agent_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/agents", NULL, 200, -1, agent_columns};

        return client_list(ctx, args, &list);
}

/* The strings of a JSON array joined with ", " into out ("-" when none). */
static const char *joined(json_t *list, char *out, size_t size)
{
        size_t i, used = 0;
        json_t *v;

        out[0] = '\0';
        json_array_foreach (list, i, v) {
                char buf[64];
                const char *s = client_json_cell(v, buf, sizeof(buf));
                int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", s ? s : "?");
                if (n < 0 || (size_t)n >= size - used)
                        break;
                used += (size_t)n;
        }
        return out[0] ? out : "-";
}

/* The budget as "max_tokens 100000, max_cost_usd 5" in the order the definition gives. */
static const char *budget_text(json_t *budget, char *out, size_t size)
{
        const char *k;
        json_t *v;
        size_t used = 0;

        out[0] = '\0';
        json_object_foreach (budget, k, v) {
                char buf[64];
                const char *s = client_json_cell(v, buf, sizeof(buf));
                int n =
                    snprintf(out + used, size - used, "%s%s %s", used ? ", " : "", k, s ? s : "?");
                if (n < 0 || (size_t)n >= size - used)
                        break;
                used += (size_t)n;
        }
        return out[0] ? out : "none";
}

/* What an agent calls and may spend, then its prompts. */
static int show_agent(struct client_ctx *ctx, json_t *def)
{
        const char *secret = json_string_value(json_object_get(def, "api_key_secret"));
        _cleanup_free_ char *key = secret ? str_printf("secret %s", secret) : NULL;
        char list[512], num[64];

        (void)ctx;
        client_kv(stdout, "provider", json_string_value(json_object_get(def, "provider")));
        client_kv(stdout, "model", json_string_value(json_object_get(def, "model")));
        client_kv(stdout, "base_url", json_string_value(json_object_get(def, "base_url")));
        client_kv(stdout, "api key", key ? key : "none");
        client_kv(stdout, "tools", joined(json_object_get(def, "tools"), list, sizeof(list)));
        client_kv(stdout, "hosts",
                  joined(json_object_get(def, "allowed_hosts"), list, sizeof(list)));
        client_kv(stdout, "budget",
                  budget_text(json_object_get(def, "budget"), list, sizeof(list)));
        client_kv(stdout, "max turns",
                  client_json_cell(json_object_get(def, "max_turns"), num, sizeof(num)));
        client_kv(stdout, "output",
                  json_object_get(def, "output_schema") ? "JSON (output_schema)" : "text");
        if (json_is_string(json_object_get(def, "system"))) {
                printf("\nsystem:\n%s\n", json_string_value(json_object_get(def, "system")));
        }
        if (json_is_string(json_object_get(def, "prompt"))) {
                printf("\nprompt:\n%s\n", json_string_value(json_object_get(def, "prompt")));
        }
        return CLI_EXIT_OK;
}

static int agent_show(struct client_ctx *ctx, const struct cli_args *args)
{
        return client_show_definition(ctx, args, "/v1/agents", show_agent);
}

const struct client_command client_agent_commands[] = {
    {"agent", "apply", "FILE",
     "create a new version of an agent from a JSON file (- for stdin); unchanged: no version", 1, 1,
     client_apply_flags, agent_apply},
    {"agent", "list", "[--limit N] [--cursor C]", "list agents (latest version of each)", 0, 0,
     list_flags, agent_list},
    {"agent", "show", "NAME [--version N]",
     "show an agent version: provider, model, tools, hosts, budget, prompts", 1, 1,
     client_show_flags, agent_show},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};
