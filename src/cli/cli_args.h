/*
 * One flag parser for every agently command: the server roles (up, api, worker, dispatch,
 * migrate) and the client commands (workflow, run, ...). Table-driven rather than getopt:
 * the table that parses also prints --help, a usage error names the command and the exact
 * flag ("agently run list: unknown flag --stat"), and `--flag v`, `--flag=v`, `-o v`, `-ov`
 * and `--` mean the same everywhere.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_MAX_FLAGS       12 /* per table */
#define CLI_MAX_POSITIONALS 4

/* One flag of a command. value_name NULL means a boolean flag. */
struct cli_flag {
        const char *name; /* long name without the dashes */
        char short_name;  /* 0 if none */
        const char *value_name;
        const char *help;
};

/* A command line after parsing: positionals, then the value of each flag by its index in
 * the command's table (flag) and in the shared table (shared), NULL when not given, "" for a
 * boolean flag that was given. Points into argv; owns nothing. */
struct cli_args {
        const char *positional[CLI_MAX_POSITIONALS];
        int npositional;
        const char *flag[CLI_MAX_FLAGS];
        const char *shared[CLI_MAX_FLAGS];
};

/*
 * Parses argv (the tokens after the command's name) against flags and, when not NULL,
 * shared (flags every command of a family accepts, anywhere). Both tables end with an entry
 * whose name is NULL. At most max_args positionals. On a usage error writes
 * "<who>: <what>" into err and returns -EINVAL.
 */
int cli_args_parse(const char *who, const struct cli_flag *flags, const struct cli_flag *shared,
                   int max_args, int argc, char **argv, struct cli_args *args, char *err,
                   size_t err_size);

/* The value of flag `name` of table flags in args (NULL when not given or not in the table). */
const char *cli_args_get(const struct cli_flag *flags, const struct cli_args *args,
                         const char *name);

/* Prints a flags table as help lines. */
void cli_flags_help(const struct cli_flag *flags, FILE *out);

/*
 * For a server role (`agently up`, `api`, ...): parses argv (argv[0] is the role) against
 * flags, which hold {"help", 'h', NULL, ...}. --help prints "usage: agently <usage>", the
 * description and the generated flags to stdout; a usage error goes to stderr with the same
 * usage line. Returns -1 to go on, or the exit code to leave with (CLI_EXIT_OK after
 * --help, CLI_EXIT_USAGE).
 */
int cli_role_args(const char *role, const char *usage, const char *description,
                  const struct cli_flag *flags, int argc, char **argv, struct cli_args *args);

/* An integer flag value within [min, max]; on failure prints "agently <command>: --<flag>
 * must be an integer from <min> to <max>, not '<value>'" and returns CLI_EXIT_USAGE. value
 * NULL leaves *out untouched and returns 0. */
int cli_flag_int(const char *command, const char *flag, const char *value, int64_t min, int64_t max,
                 int64_t *out);
