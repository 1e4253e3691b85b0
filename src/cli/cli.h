/*
 * The agently command line: one binary, noun-verb subcommands. Server roles (up, migrate,
 * api, worker, dispatch, executor) and client commands (workflow, run, approval, secret,
 * token, user) share this entry point.
 */
#pragma once

#include <jansson.h>

int cli_main(int argc, char **argv);

/* Each command takes argv starting at its own name; returns the process exit code. */
int cmd_up(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_api(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_dispatch(int argc, char **argv);
int cmd_executor(int argc, char **argv);
int cmd_client(int argc, char **argv); /* workflow, run, approval, secret, token, user */
int cmd_secret(int argc, char **argv); /* secret rotate-key here, the other verbs: cmd_client */

/* LLM price overrides (cli_prices.c): the JSON file flag_value names, else the one
 * AGENTLY_LLM_PRICES names, else none (*out NULL); checked by llm_pricing_validate. 0, or
 * -EINVAL after telling stderr what is wrong ("agently ROLE: ..."). The caller owns *out. */
int cli_llm_prices_load(const char *role, const char *flag_value, json_t **out);

/* Exit codes, documented in docs/cli.md. */
enum cli_exit {
        CLI_EXIT_OK = 0,
        CLI_EXIT_FAILURE = 1, /* the operation failed */
        CLI_EXIT_USAGE = 2,   /* bad command line */
        CLI_EXIT_NOT_FOUND = 3,
        CLI_EXIT_UNAUTHORIZED = 4,
        CLI_EXIT_CONFLICT = 5,
        CLI_EXIT_UNAVAILABLE = 6, /* server or database unreachable */
        CLI_EXIT_RUN_FAILED = 7,  /* --wait: the run ended failed or canceled */
};
