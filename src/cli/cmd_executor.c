/* `agently executor`: one agent session over the executor protocol on stdin/stdout
 * (docs/executor-protocol.md). Started by a worker; takes no arguments. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "executor.h"

int cmd_executor(int argc, char **argv)
{
        if (argc > 1) {
                fprintf(stderr, "usage: agently executor\n"
                                "runs one agent step: the worker starts it and speaks the executor "
                                "protocol on its stdin and stdout (docs/executor-protocol.md)\n");
                return strcmp(argv[1], "--help") == 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
        }
        return executor_run(stdin, stdout, stderr) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
