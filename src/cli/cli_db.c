/* Database access for the server-side commands. */
#include "cli_db.h"

#include <errno.h>
#include <stdio.h>

#include "cleanup.h"
#include "cli.h"
#include "log.h"

int cli_db_fail(const char *what, int r)
{
        log_error("%s: %s", what, db_last_error());
        return r == -ECONNREFUSED || r == -ENOENT ? CLI_EXIT_UNAVAILABLE : CLI_EXIT_FAILURE;
}

int cli_db_connect(const char *data_dir, enum db_role role, PGconn **out)
{
        _cleanup_free_ char *conninfo = NULL;
        int r = db_conninfo_for_role(data_dir, role, &conninfo);

        if (r < 0)
                return r;
        return db_connect(conninfo, out);
}
