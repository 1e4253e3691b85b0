/*
 * Entry point of the client commands (`agently workflow|run|approval|secret|token|user`):
 * finds the noun's verb table, parses the command line, resolves the configuration and
 * runs the verb. Every help page is generated from the verb tables, so a verb added to a
 * table is parsed, documented in --help and dispatched with no edit here.
 */
#include <string.h>

#include <curl/curl.h>

#include "cleanup.h"
#include "client.h"
#include "strutil.h"

static const struct {
        const char *noun;
        const struct client_command *commands;
        const char *summary;
} nouns[] = {
    {"workflow", client_workflow_commands, "apply, list and show workflow definitions"},
    {"agent", client_agent_commands, "apply, list and show agent definitions"},
    {"run", client_run_commands, "start, inspect, follow and control runs"},
    {"approval", client_approval_commands, "list and decide approvals"},
    {"secret", client_secret_commands, "set, list and remove secrets"},
    {"token", client_token_commands, "create, list and revoke API tokens"},
    {"user", client_user_commands, "create and list users (admin)"},
    {"schedule", client_schedule_commands, "start workflows on cron schedules"},
    {"trigger", client_trigger_commands, "start workflows from signed webhooks"},
};

static void noun_help(const char *noun, const struct client_command *cmds, const char *summary,
                      FILE *out)
{
        int width = 0;

        for (const struct client_command *c = cmds; c->verb; c++) {
                int w = (int)(strlen(c->verb) + 1 + strlen(c->usage));
                width = w > width ? w : width;
        }
        fprintf(out, "usage: agently %s <command> [flags]\n\n%s\n\ncommands:\n", noun, summary);
        for (const struct client_command *c = cmds; c->verb; c++) {
                char left[128];
                snprintf(left, sizeof(left), "%s %s", c->verb, c->usage);
                fprintf(out, "  %-*s  %s\n", width, left, c->summary);
        }
        client_global_help(out);
        fprintf(out,
                "\nRun `agently %s <command> --help` for a command's flags. Exit codes: "
                "docs/cli.md.\n",
                noun);
}

/* Whether the command line asks for -o json (-o json, -ojson, --output json, --output=json),
 * read before parsing so that an error in parsing itself is reported in that shape. */
static bool wants_json(int argc, char **argv)
{
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--") == 0)
                        break;
                if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < argc)
                        a = argv[++i];
                else if (strncmp(a, "--output=", 9) == 0)
                        a += 9;
                else if (strncmp(a, "-o", 2) == 0 && a[2])
                        a += 2;
                else
                        continue;
                if (strcmp(a, "json") == 0)
                        return true;
        }
        return false;
}

static bool is_help(const char *s)
{
        return strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0 || strcmp(s, "help") == 0;
}

int cmd_client(int argc, char **argv)
{
        const struct client_command *cmds = NULL, *cmd = NULL;
        const char *summary = NULL, *verb = NULL;
        struct client_global global = {0};
        struct cli_args args;
        struct client_ctx ctx;
        char err[512], name[64];
        int verb_at = -1, r;

        for (size_t i = 0; i < ELEMENTSOF(nouns); i++)
                if (strcmp(argv[0], nouns[i].noun) == 0) {
                        cmds = nouns[i].commands;
                        summary = nouns[i].summary;
                }
        if (!cmds) {
                fprintf(stderr, "agently: unknown command '%s'\n", argv[0]);
                return CLI_EXIT_USAGE;
        }
        /* the verb is the first token that is neither a flag nor a global flag's value */
        for (int i = 1; i < argc; i++) {
                if (is_help(argv[i]) && verb_at < 0) {
                        noun_help(argv[0], cmds, summary, stdout);
                        return CLI_EXIT_OK;
                }
                if (argv[i][0] != '-') {
                        verb_at = i;
                        break;
                }
                if (client_global_takes_value(argv[i]))
                        i++;
        }
        /* a context for reporting a usage error before the real one exists */
        struct client_ctx early = {.name = argv[0],
                                   .output = wants_json(argc, argv) ? CLIENT_OUTPUT_JSON
                                                                    : CLIENT_OUTPUT_TABLE};
        if (verb_at < 0) {
                if (early.output == CLIENT_OUTPUT_JSON)
                        return client_fail(&early, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "missing command (see `agently %s --help`)", argv[0]);
                fprintf(stderr, "agently %s: missing command\n\n", argv[0]);
                noun_help(argv[0], cmds, summary, stderr);
                return CLI_EXIT_USAGE;
        }
        verb = argv[verb_at];
        for (const struct client_command *c = cmds; c->verb; c++)
                if (strcmp(c->verb, verb) == 0)
                        cmd = c;
        if (!cmd) {
                if (early.output == CLIENT_OUTPUT_JSON)
                        return client_fail(&early, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "unknown command '%s' (see `agently %s --help`)", verb,
                                           argv[0]);
                fprintf(stderr, "agently %s: unknown command '%s'\n\n", argv[0], verb);
                noun_help(argv[0], cmds, summary, stderr);
                return CLI_EXIT_USAGE;
        }
        /* parse everything but the noun and the verb */
        _cleanup_free_ char **rest = calloc((size_t)argc, sizeof(char *));
        int nrest = 0;
        if (!rest) {
                fprintf(stderr, "error: out of memory\n");
                return CLI_EXIT_FAILURE;
        }
        for (int i = 1; i < argc; i++)
                if (i != verb_at)
                        rest[nrest++] = argv[i];
        snprintf(name, sizeof(name), "%s %s", cmd->noun, cmd->verb);
        if (client_args_parse(cmd, nrest, rest, &args, &global, err, sizeof(err)) < 0) {
                if (early.output == CLIENT_OUTPUT_JSON) {
                        /* the message without its "agently NOUN VERB: " prefix */
                        const char *msg = err;
                        size_t n = strlen("agently ") + strlen(name) + 2;
                        if (strncmp(err, "agently ", 8) == 0 && strlen(err) > n &&
                            strncmp(err + 8, name, strlen(name)) == 0)
                                msg = err + n;
                        early.name = name;
                        _cleanup_free_ char *hint = str_printf("see `agently %s --help`", name);
                        return client_fail(&early, CLI_EXIT_USAGE, "usage", NULL, hint, "%s", msg);
                }
                fprintf(stderr, "%s\nsee `agently %s %s --help`\n", err, cmd->noun, cmd->verb);
                return CLI_EXIT_USAGE;
        }
        if (global.help) {
                client_command_help(cmd, stdout);
                return CLI_EXIT_OK;
        }
        r = client_ctx_init(&ctx, &global, name);
        if (r != CLI_EXIT_OK) {
                client_ctx_done(&ctx);
                return r;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                fprintf(stderr, "error: could not initialise libcurl\n");
                client_ctx_done(&ctx);
                return CLI_EXIT_FAILURE;
        }
        ctx.cmd = cmd;
        r = cmd->run(&ctx, &args);
        fflush(stdout);
        client_ctx_done(&ctx);
        curl_global_cleanup();
        return r;
}
