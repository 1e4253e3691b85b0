/* `agently worker`: placeholder until its module lands. */
#include <stdio.h>

#include "cli.h"

int cmd_worker(int argc, char **argv)
{
        (void)argc;
        fprintf(stderr, "agently %s: not implemented yet\n", argv[0]);
        return CLI_EXIT_FAILURE;
}
