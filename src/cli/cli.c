/* Subcommand dispatch and top-level help. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

struct command {
        const char *name;
        int (*run)(int argc, char **argv);
        const char *summary;
};

static const struct command commands[] = {
    {"up", cmd_up, "run everything: embedded Postgres, API, workers and dispatcher"},
    {"migrate", cmd_migrate, "apply pending database migrations"},
    {"api", cmd_api, "serve the REST + SSE API and the dashboard"},
    {"worker", cmd_worker, "claim and execute runs"},
    {"dispatch", cmd_dispatch, "deliver notifications, fire schedules, sweep timers"},
    {"executor", cmd_executor, "run one agent step (spawned by a worker)"},
    {"workflow", cmd_client, "apply, list and show workflow definitions"},
    {"agent", cmd_client, "apply, list and show agent definitions"},
    {"run", cmd_client, "start, inspect, follow and control runs"},
    {"approval", cmd_client, "list and decide approvals"},
    {"secret", cmd_secret, "set, list and delete secrets; rotate the key"},
    {"token", cmd_client, "create, list and revoke API tokens"},
    {"user", cmd_client, "create and list users (admin)"},
    {"schedule", cmd_client, "start workflows on cron schedules"},
    {"trigger", cmd_client, "start workflows from signed webhooks"},
};

static void usage(FILE *out)
{
        fprintf(out, "agently — durable execution for long-running AI agent workflows\n\n"
                     "usage: agently <command> [options]\n\ncommands:\n");
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
        fprintf(out, "\nRun `agently <command> --help` for a command's options.\n"
                     "Environment: AGENTLY_DATABASE_URL, AGENTLY_DATA_DIR, AGENTLY_SERVER, "
                     "AGENTLY_TOKEN, AGENTLY_LOG_LEVEL.\n");
}

int cli_main(int argc, char **argv)
{
        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
            strcmp(argv[1], "help") == 0) {
                usage(stdout);
                return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
        }
        if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
                printf("agently %s\n", AGENTLY_VERSION);
                return CLI_EXIT_OK;
        }
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(argv[1], commands[i].name) == 0) {
                        log_setup(commands[i].name);
                        return commands[i].run(argc - 1, argv + 1);
                }
        fprintf(stderr, "agently: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return CLI_EXIT_USAGE;
}
