/* Roles filled in by later work; each prints a clear message until it exists. */
#include <stdio.h>

#include "cli.h"

static int not_yet(const char *name)
{
        fprintf(stderr, "agently %s: not implemented yet\n", name);
        return CLI_EXIT_FAILURE;
}

int cmd_executor(int argc, char **argv)
{
        (void)argc;
        return not_yet(argv[0]);
}

int cmd_api(int argc, char **argv)
{
        (void)argc;
        return not_yet(argv[0]);
}

int cmd_worker(int argc, char **argv)
{
        (void)argc;
        return not_yet(argv[0]);
}

int cmd_dispatch(int argc, char **argv)
{
        (void)argc;
        return not_yet(argv[0]);
}

int cmd_client(int argc, char **argv)
{
        (void)argc;
        return not_yet(argv[0]);
}
