/* agently: one binary, many roles; see src/cli/README.md for the command table. */
#include "cli.h"

int main(int argc, char **argv)
{
        return cli_main(argc, argv);
}
