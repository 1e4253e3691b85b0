/*
 * `agently workflow apply|list|show`: workflow definitions over /v1/workflows. Applying an
 * unchanged definition is not an error (the server answers 200 with the existing version),
 * so `apply` is safe to run from CI on every commit.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "client.h"
#include "fileio.h"
#include "strutil.h"

#define DEFINITION_FILE_MAX (4 << 20)

const struct cli_flag client_apply_flags[] = {
    {"idempotency-key", 0, "KEY", "retry-safe apply: the same key replays the first answer"},
    {NULL, 0, NULL, NULL},
};

int client_apply_file(struct client_ctx *ctx, const struct cli_args *args, const char *api_path,
                      const char *noun)
{
        const char *file = args->positional[0];
        _cleanup_free_ char *data = NULL, *idem = NULL;
        _cleanup_json_ json_t *def = NULL, *resp = NULL;
        const char *headers[2] = {NULL, NULL};
        const char *key = client_arg(ctx, args, "idempotency-key");
        json_error_t jerr;
        size_t len;
        long status;
        int r;

        r = strcmp(file, "-") == 0 ? fd_read_all(STDIN_FILENO, DEFINITION_FILE_MAX, &data, &len)
                                   : file_read_all(file, DEFINITION_FILE_MAX, &data, &len);
        if (r < 0)
                return client_fail(ctx, r == -ENOENT ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE,
                                   r == -ENOENT ? "usage" : "file_unreadable", NULL, NULL,
                                   "could not read %s: %s", file,
                                   r == -EFBIG ? "larger than 4 MiB" : strerror(-r));
        def = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!def) {
                bool yaml =
                    str_has_prefix(data, "name:") || strstr(file, ".yaml") || strstr(file, ".yml");
                return client_fail(ctx, CLI_EXIT_FAILURE, "invalid_json", NULL,
                                   yaml ? "definition files are JSON; convert YAML first "
                                          "(e.g. with yq -o json)"
                                        : NULL,
                                   "%s is not valid JSON: %s at line %d, column %d", file,
                                   jerr.text, jerr.line, jerr.column);
        }
        if (key) {
                idem = str_printf("Idempotency-Key: %s", key);
                if (!idem)
                        return CLI_EXIT_FAILURE;
                headers[0] = idem;
        }
        r = client_call_status(ctx, "POST", api_path, def, headers, NULL, &resp, &status);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(resp, stdout);
                return CLI_EXIT_OK;
        }
        const char *name = json_string_value(json_object_get(resp, "name"));
        long long version = json_integer_value(json_object_get(resp, "version"));
        if (status == 201)
                printf("%s %s: created v%lld\n", noun, name ? name : "?", version);
        else
                printf("%s %s: unchanged (v%lld)\n", noun, name ? name : "?", version);
        return CLI_EXIT_OK;
}

static int workflow_apply(struct client_ctx *ctx, const struct cli_args *args)
{
        return client_apply_file(ctx, args, "/v1/workflows", "workflow");
}

static const struct cli_flag list_flags[] = {
    {"limit", 0, "N", "at most N workflows (1-200, default 50)"},
    {"cursor", 0, "CURSOR", "continue after a previous page"},
    {NULL, 0, NULL, NULL},
};

/* The definition's digest, shortened as git shortens a commit's. */
static const char *digest_cell(json_t *row, const char *key, char *buf, size_t size)
{
        const char *digest = json_string_value(json_object_get(row, key));

        snprintf(buf, size, "%.12s", digest ? digest : "");
        return buf;
}

static const struct client_column workflow_columns[] = {
    {"NAME", "name", NULL},
    {"VERSION", "version", client_cell_version},
    {"CREATED", "created_at", client_cell_reltime},
    {"SHA256", "definition_sha256", digest_cell},
    {NULL, NULL, NULL},
};

static int workflow_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/workflows", NULL, 200, -1, workflow_columns};

        return client_list(ctx, args, &list);
}

const struct cli_flag client_show_flags[] = {
    {"version", 0, "N", "show version N instead of the latest"},
    {NULL, 0, NULL, NULL},
};

int client_show_definition(struct client_ctx *ctx, const struct cli_args *args,
                           const char *api_path,
                           int (*show_definition)(struct client_ctx *ctx, json_t *definition))
{
        const char *version = client_arg(ctx, args, "version");
        _cleanup_free_ char *name = client_path("%s", args->positional[0]);
        _cleanup_free_ char *path = name ? str_printf("%s/%s", api_path, name) : NULL;
        _cleanup_json_ json_t *resp = NULL;
        char created[32];
        int64_t v;
        int r;

        r = client_flag_int(ctx, "version", version, 1, INT32_MAX, &v);
        if (r)
                return r;
        if (!path || client_query_add(&path, "version", version) < 0)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "GET", path, NULL, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(resp, stdout);
                return CLI_EXIT_OK;
        }
        json_t *def = json_object_get(resp, "definition");
        const char *description = json_string_value(json_object_get(def, "description"));

        client_reltime_json(resp, "created_at", created, sizeof(created));
        client_kv(stdout, "name", json_string_value(json_object_get(resp, "name")));
        printf("%-10s v%lld\n",
               "version:", (long long)json_integer_value(json_object_get(resp, "version")));
        client_kv(stdout, "created", created);
        client_kv(stdout, "sha256", json_string_value(json_object_get(resp, "definition_sha256")));
        if (description)
                client_kv(stdout, "about", description);
        return show_definition(ctx, def);
}

/* A workflow's nodes as a table: id, kind, what each runs after. */
static int show_nodes(struct client_ctx *ctx, json_t *def)
{
        struct client_table t;
        size_t i;
        json_t *node;

        printf("\n");
        client_table_init(&t, -1, (const char *[]){"NODE", "KIND", "AFTER", NULL});
        json_array_foreach (json_object_get(def, "nodes"), i, node) {
                char after[256] = "", buf[64];
                size_t k, used = 0;
                json_t *dep;
                json_array_foreach (json_object_get(node, "after"), k, dep) {
                        const char *d = json_string_value(dep);
                        int n = snprintf(after + used, sizeof(after) - used, "%s%s", k ? ", " : "",
                                         d ? d : "?");
                        if (n < 0 || (size_t)n >= sizeof(after) - used)
                                break;
                        used += (size_t)n;
                }
                const char *kind =
                    client_json_cell(json_object_get(node, "kind"), buf, sizeof(buf));
                if (!kind)
                        kind = client_json_cell(json_object_get(node, "type"), buf, sizeof(buf));
                if (client_table_add(
                        &t, (const char *[]){json_string_value(json_object_get(node, "id")), kind,
                                             after}) < 0) {
                        client_table_free(&t);
                        return CLI_EXIT_FAILURE;
                }
        }
        client_table_print(&t, stdout, ctx->color);
        client_table_free(&t);
        return CLI_EXIT_OK;
}

static int workflow_show(struct client_ctx *ctx, const struct cli_args *args)
{
        return client_show_definition(ctx, args, "/v1/workflows", show_nodes);
}

const struct client_command client_workflow_commands[] = {
    {"workflow", "apply", "FILE",
     "create a new version of a workflow from a JSON file (- for stdin)", 1, 1, client_apply_flags,
     workflow_apply},
    {"workflow", "list", "[--limit N] [--cursor C]", "list workflows (latest version of each)", 0,
     0, list_flags, workflow_list},
    {"workflow", "show", "NAME [--version N]", "show a workflow version and its nodes", 1, 1,
     client_show_flags, workflow_show},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};
