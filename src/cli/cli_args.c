/* The flag parser of every agently command; see cli_args.h. */
#include "cli_args.h"

#include <errno.h>
#include <string.h>

#include "cli.h"
#include "strutil.h"

static const struct cli_flag *find_flag(const struct cli_flag *flags, const char *name,
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

int cli_args_parse(const char *who, const struct cli_flag *flags, const struct cli_flag *shared,
                   int max_args, int argc, char **argv, struct cli_args *args, char *err,
                   size_t err_size)
{
        bool flags_done = false;

        memset(args, 0, sizeof(*args));
        for (int i = 0; i < argc; i++) {
                const char *tok = argv[i];
                const struct cli_flag *f;
                const char *value = NULL, *name;
                size_t name_len;
                char short_name = 0;
                int index;
                bool is_shared = false;

                if (flags_done || tok[0] != '-' || strcmp(tok, "-") == 0) {
                        if (args->npositional >= CLI_MAX_POSITIONALS ||
                            args->npositional >= max_args) {
                                snprintf(err, err_size, "%s: unexpected argument '%s'", who, tok);
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
                f = find_flag(flags, name, name_len, short_name, &index);
                if (!f) {
                        f = find_flag(shared, name, name_len, short_name, &index);
                        is_shared = true;
                }
                if (!f) {
                        snprintf(err, err_size, "%s: unknown flag %s", who, tok);
                        return -EINVAL;
                }
                if (f->value_name && !value) {
                        if (i + 1 >= argc) {
                                snprintf(err, err_size, "%s: flag --%s needs %s", who, f->name,
                                         f->value_name);
                                return -EINVAL;
                        }
                        value = argv[++i];
                } else if (!f->value_name && value) {
                        snprintf(err, err_size, "%s: flag --%s takes no value", who, f->name);
                        return -EINVAL;
                }
                if (index >= CLI_MAX_FLAGS) {
                        snprintf(err, err_size, "%s: flag --%s is beyond the parser's table", who,
                                 f->name);
                        return -EINVAL;
                }
                if (is_shared)
                        args->shared[index] = value ? value : "";
                else
                        args->flag[index] = value ? value : "";
        }
        return 0;
}

const char *cli_args_get(const struct cli_flag *flags, const struct cli_args *args,
                         const char *name)
{
        for (int i = 0; flags && flags[i].name && i < CLI_MAX_FLAGS; i++)
                if (strcmp(flags[i].name, name) == 0)
                        return args->flag[i];
        return NULL;
}

void cli_flags_help(const struct cli_flag *flags, FILE *out)
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

int cli_role_args(const char *role, const char *usage, const char *description,
                  const struct cli_flag *flags, int argc, char **argv, struct cli_args *args)
{
        char who[64], err[512];

        snprintf(who, sizeof(who), "agently %s", role);
        if (cli_args_parse(who, flags, NULL, 0, argc - 1, argv + 1, args, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\nusage: agently %s\nsee `agently %s --help`\n", err, usage,
                        role);
                return CLI_EXIT_USAGE;
        }
        if (cli_args_get(flags, args, "help")) {
                printf("usage: agently %s\n\n%s\n\nflags:\n", usage, description);
                cli_flags_help(flags, stdout);
                return CLI_EXIT_OK;
        }
        return -1;
}

int cli_flag_int(const char *command, const char *flag, const char *value, int64_t min, int64_t max,
                 int64_t *out)
{
        int64_t v;

        if (!value)
                return 0;
        if (str_to_int64(value, &v) < 0 || v < min || v > max) {
                fprintf(stderr, "agently %s: --%s must be an integer from %lld to %lld, not '%s'\n",
                        command, flag, (long long)min, (long long)max, value);
                return CLI_EXIT_USAGE;
        }
        *out = v;
        return 0;
}
