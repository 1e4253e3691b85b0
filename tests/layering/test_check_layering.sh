#!/usr/bin/env bash
# Self-test of scripts/check-layering: the tree as it is passes, and each planted violation
# of src/modules.txt is refused with a line naming the file and the rule. Runs on a copy.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0

fresh_copy() {
        rm -rf "$tmp/tree"
        mkdir -p "$tmp/tree"
        cp -r "$root/src" "$root/docs" "$tmp/tree/"
}

# expect_refused <what> <expected text in the report>
expect_refused() {
        if "$root/scripts/check-layering" "$tmp/tree" 2>"$tmp/out"; then
                echo "FAIL: $1: accepted" >&2
                failures=$((failures + 1))
        elif ! grep -qF -- "$2" "$tmp/out"; then
                echo "FAIL: $1: refused, but the report lacks '$2':" >&2
                cat "$tmp/out" >&2
                failures=$((failures + 1))
        else
                echo "ok: $1: $(head -1 "$tmp/out")"
        fi
}

fresh_copy
if ! "$root/scripts/check-layering" "$tmp/tree"; then
        echo "FAIL: the unchanged tree is refused" >&2
        exit 1
fi
echo "ok: the unchanged tree passes"

# engine is pure: no database header, directly or through queue
fresh_copy
printf '#include "db.h"\n' >>"$tmp/tree/src/engine/plan.c"
expect_refused "engine includes db.h (where)" 'src/engine/plan.c:'
expect_refused "engine includes db.h (rule)" 'engine may not use db (#include "db.h")'

fresh_copy
printf '#include "queue.h"\n' >>"$tmp/tree/src/engine/expr.h"
expect_refused "engine header includes queue.h" 'src/engine/expr.h:'

# a library header in a system directory, which the build cannot hide
fresh_copy
printf '#include <curl/curl.h>\n' >>"$tmp/tree/src/engine/plan.c"
expect_refused "engine includes curl" 'engine may not use libcurl (#include <curl/curl.h>)'

fresh_copy
printf '#include <libpq-fe.h>\n' >>"$tmp/tree/src/engine/plan.c"
expect_refused "engine includes libpq" 'engine may not use libpq'

# never api <-> worker, never runtime -> queue
fresh_copy
printf '#include "worker.h"\n' >>"$tmp/tree/src/api/api_routes.c"
expect_refused "api includes worker.h" 'api may not use worker'

fresh_copy
printf '#include "api.h"\n' >>"$tmp/tree/src/worker/worker.c"
expect_refused "worker includes api.h" 'worker may not use api'

fresh_copy
printf '#include "queue.h"\n' >>"$tmp/tree/src/runtime/runtime_http.c"
expect_refused "runtime includes queue.h" 'runtime may not use queue'

# a module without a line, and a table that names a module not above it
fresh_copy
mkdir "$tmp/tree/src/sneaky"
expect_refused "module without a line" 'src/sneaky: no line in src/modules.txt'

fresh_copy
sed -i 's/^module engine  | base /module engine  | cli /' "$tmp/tree/src/modules.txt"
expect_refused "engine uses a module above it" 'engine uses cli, which is not a module above it'

# the docs show the table
fresh_copy
sed -i 's/^| `engine` | \(.*\) | `base` |$/| `engine` | \1 | `base`, `queue` |/' "$tmp/tree/docs/ARCHITECTURE.md"
expect_refused "docs table drifts" 'docs/ARCHITECTURE.md: the module table differs'

# each module's README says what it may use, as the table does
fresh_copy
sed -i 's/^\*\*May use:\*\* `base`$/**May use:** `base`, `db`/' "$tmp/tree/src/engine/README.md"
expect_refused "engine README drifts" "src/engine/README.md: needs the line '**May use:** \`base\`'"

# an allowed include stays allowed (worker may use db through queue)
fresh_copy
printf '#include "db.h"\n' >>"$tmp/tree/src/worker/worker.c"
if ! "$root/scripts/check-layering" "$tmp/tree"; then
        echo "FAIL: worker including db.h (allowed through queue) is refused" >&2
        failures=$((failures + 1))
else
        echo "ok: worker may include db.h"
fi

exit $((failures > 0))
