/*
 * Command-line parsing for the client commands. Table-driven rather than getopt so that a
 * usage error can name the command and the exact bad flag ("agently run list: unknown flag
 * --stat"), global flags are accepted anywhere after the noun, and --help output is
 * generated from the same table that parses.
 */
#include <errno.h>
#include <string.h>

#include "client.h"
#include "strutil.h"

static const struct client_flag global_flags[] = {
    {"server", 0, "URL", "API address (env AGENTLY_SERVER; default " CLIENT_DEFAULT_SERVER ")"},
    {"token", 0, "TOKEN", "API token (env AGENTLY_TOKEN)"},
    {"data-dir", 0, "DIR", "use DIR/admin-token, the admin token `agently up` wrote"},
    {"output", 'o', "FORMAT", "table (default) or json"},
    {"help", 'h', NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

static const struct client_flag *find_flag(const struct client_flag *flags, const char *name,
                                           size_t name_len, char short_name, int *index)
{
        for (int i = 0; flags && flags[i].name; i++) {
                if (short_name ? flags[i].short_name == short_name
                               : strlen(flags[i].name) == name_len &&
                                     strncmp(flags[i].name, name, name_len) == 0) {
                        *index = i;
                        return &flags[i];
                }
        }
        return NULL;
}

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
        int index;

        if (strncmp(token, "--", 2) == 0) {
                const char *name = token + 2;
                if (strchr(name, '='))
                        return false;
                const struct client_flag *f =
                    find_flag(global_flags, name, strlen(name), 0, &index);
                return f && f->value_name;
        }
        if (token[0] == '-' && token[1] && !token[2]) {
                const struct client_flag *f = find_flag(global_flags, NULL, 0, token[1], &index);
                return f && f->value_name;
        }
        return false;
}

int client_args_parse(const struct client_command *cmd, int argc, char **argv,
                      struct client_args *args, struct client_global *global, char *err,
                      size_t err_size)
{
        bool flags_done = false;

        memset(args, 0, sizeof(*args));
        for (int i = 0; i < argc; i++) {
                const char *tok = argv[i];
                const struct client_flag *f;
                const char *value = NULL, *name;
                size_t name_len;
                char short_name = 0;
                int index;
                bool is_global = false;

                if (flags_done || tok[0] != '-' || strcmp(tok, "-") == 0) {
                        if (args->npositional >= CLIENT_MAX_POSITIONALS ||
                            args->npositional >= cmd->max_args) {
                                snprintf(err, err_size, "agently %s %s: unexpected argument '%s'",
                                         cmd->noun, cmd->verb, tok);
                                return -EINVAL;
                        }
                        args->positional[args->npositional++] = tok;
                        continue;
                }
                if (strcmp(tok, "--") == 0) {
                        flags_done = true;
                        continue;
                }
                if (tok[1] == '-') {
                        name = tok + 2;
                        const char *eq = strchr(name, '=');
                        name_len = eq ? (size_t)(eq - name) : strlen(name);
                        if (eq)
                                value = eq + 1;
                } else {
                        name = tok + 1;
                        short_name = tok[1];
                        name_len = 1;
                        if (tok[2])
                                value = tok + 2; /* -ojson */
                }
                f = find_flag(cmd->flags, name, name_len, short_name, &index);
                if (!f) {
                        f = find_flag(global_flags, name, name_len, short_name, &index);
                        is_global = true;
                }
                if (!f) {
                        snprintf(err, err_size, "agently %s %s: unknown flag %s", cmd->noun,
                                 cmd->verb, tok);
                        return -EINVAL;
                }
                if (f->value_name && !value) {
                        if (i + 1 >= argc) {
                                snprintf(err, err_size, "agently %s %s: flag --%s needs %s",
                                         cmd->noun, cmd->verb, f->name, f->value_name);
                                return -EINVAL;
                        }
                        value = argv[++i];
                } else if (!f->value_name && value) {
                        snprintf(err, err_size, "agently %s %s: flag --%s takes no value",
                                 cmd->noun, cmd->verb, f->name);
                        return -EINVAL;
                }
                if (is_global)
                        set_global(global, f->name, value ? value : "");
                else
                        args->flag[index] = value ? value : "";
        }
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

const char *client_arg(const struct client_ctx *ctx, const struct client_args *args,
                       const char *name)
{
        int i = client_flag_index(ctx->cmd, name);

        return i < 0 ? NULL : args->flag[i];
}

static void print_flags(const struct client_flag *flags, FILE *out)
{
        for (int i = 0; flags && flags[i].name; i++) {
                char left[64];

                if (flags[i].short_name)
                        snprintf(left, sizeof(left), "-%c, --%s%s%s", flags[i].short_name,
                                 flags[i].name, flags[i].value_name ? " " : "",
                                 flags[i].value_name ? flags[i].value_name : "");
                else
                        snprintf(left, sizeof(left), "    --%s%s%s", flags[i].name,
                                 flags[i].value_name ? " " : "",
                                 flags[i].value_name ? flags[i].value_name : "");
                fprintf(out, "  %-26s %s\n", left, flags[i].help);
        }
}

void client_global_help(FILE *out)
{
        fprintf(out, "\nglobal flags:\n");
        print_flags(global_flags, out);
}

void client_command_help(const struct client_command *cmd, FILE *out)
{
        fprintf(out, "usage: agently %s %s%s%s\n\n%s\n", cmd->noun, cmd->verb,
                *cmd->usage ? " " : "", cmd->usage, cmd->summary);
        if (cmd->flags && cmd->flags[0].name) {
                fprintf(out, "\nflags:\n");
                print_flags(cmd->flags, out);
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
