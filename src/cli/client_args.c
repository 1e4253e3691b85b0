/*
 * Command-line parsing for the client commands, over the parser every command shares
 * (cli_args.c): the global flags are its shared table, accepted anywhere after the noun, and
 * --help output is generated from the same tables that parse.
 */
#include <errno.h>
#include <string.h>

#include "client.h"
#include "strutil.h"

static const struct cli_flag global_flags[] = {
    {"server", 0, "URL", "API address (env AGENTLY_SERVER; default " CLIENT_DEFAULT_SERVER ")"},
    {"token", 0, "TOKEN", "API token (env AGENTLY_TOKEN)"},
    {"data-dir", 0, "DIR", "use DIR/admin-token, the admin token `agently up` wrote"},
    {"output", 'o', "FORMAT", "table (default) or json"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

static void set_global(struct client_global *g, const char *name, const char *value)
{
        if (strcmp(name, "server") == 0)
                g->server = value;
        else if (strcmp(name, "token") == 0)
                g->token = value;
        else if (strcmp(name, "data-dir") == 0)
                g->data_dir = value;
        else if (strcmp(name, "output") == 0)
                g->output = value;
        else if (strcmp(name, "help") == 0)
                g->help = true;
}

bool client_global_takes_value(const char *token)
{
        if (strncmp(token, "--", 2) == 0) {
                const char *name = token + 2;
                if (strchr(name, '='))
                        return false;
                for (int i = 0; global_flags[i].name; i++)
                        if (strcmp(global_flags[i].name, name) == 0)
                                return global_flags[i].value_name != NULL;
                return false;
        }
        if (token[0] == '-' && token[1] && !token[2])
                for (int i = 0; global_flags[i].name; i++)
                        if (global_flags[i].short_name == token[1])
                                return global_flags[i].value_name != NULL;
        return false;
}

int client_args_parse(const struct client_command *cmd, int argc, char **argv,
                      struct cli_args *args, struct client_global *global, char *err,
                      size_t err_size)
{
        char who[128];
        int r;

        snprintf(who, sizeof(who), "agently %s %s", cmd->noun, cmd->verb);
        r = cli_args_parse(who, cmd->flags, global_flags, cmd->max_args, argc, argv, args, err,
                           err_size);
        if (r < 0)
                return r;
        for (int i = 0; global_flags[i].name; i++)
                if (args->shared[i])
                        set_global(global, global_flags[i].name, args->shared[i]);
        if (global->help)
                return 0;
        if (args->npositional < cmd->min_args) {
                snprintf(err, err_size, "agently %s %s: missing arguments; usage: agently %s %s %s",
                         cmd->noun, cmd->verb, cmd->noun, cmd->verb, cmd->usage);
                return -EINVAL;
        }
        return 0;
}

int client_flag_index(const struct client_command *cmd, const char *name)
{
        for (int i = 0; cmd->flags && cmd->flags[i].name; i++)
                if (strcmp(cmd->flags[i].name, name) == 0)
                        return i;
        return -1;
}

const char *client_arg(const struct client_ctx *ctx, const struct cli_args *args, const char *name)
{
        int i = client_flag_index(ctx->cmd, name);

        return i < 0 ? NULL : args->flag[i];
}

void client_global_help(FILE *out)
{
        fprintf(out, "\nglobal flags:\n");
        cli_flags_help(global_flags, out);
}

void client_command_help(const struct client_command *cmd, FILE *out)
{
        fprintf(out, "usage: agently %s %s%s%s\n\n%s\n", cmd->noun, cmd->verb,
                *cmd->usage ? " " : "", cmd->usage, cmd->summary);
        if (cmd->flags && cmd->flags[0].name) {
                fprintf(out, "\nflags:\n");
                cli_flags_help(cmd->flags, out);
        }
        client_global_help(out);
}

int client_flag_int(const struct client_ctx *ctx, const char *flag, const char *value, int64_t min,
                    int64_t max, int64_t *out)
{
        int64_t v;

        if (!value)
                return 0;
        if (str_to_int64(value, &v) < 0 || v < min || v > max)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "--%s must be an integer from %lld to %lld, not '%s'", flag,
                                   (long long)min, (long long)max, value);
        *out = v;
        return 0;
}
