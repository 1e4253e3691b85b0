/*
 * LLM price overrides from configuration: a JSON file named by `--llm-prices FILE` (worker,
 * up) or AGENTLY_LLM_PRICES, of the shape src/llm checks (llm_pricing_validate):
 * {"model": {"input": 2.5, "output": 10, "cached_input": 1.25}} in US dollars per million
 * tokens. A model named there is priced from it; every other one from the shipped list
 * (src/llm/llm_pricing.c, the one home of default prices). A bad file stops the process at
 * start with the reason, rather than pricing calls wrong for its whole life.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "fileio.h"
#include "llm.h"
#include "strutil.h"

#define PRICES_FILE_MAX (1 << 20)

int cli_llm_prices_load(const char *role, const char *flag_value, json_t **out)
{
        const char *path = !str_is_empty(flag_value) ? flag_value : getenv("AGENTLY_LLM_PRICES");
        _cleanup_free_ char *data = NULL, *why = NULL;
        json_t *prices;
        json_error_t jerr;
        size_t len;
        int r;

        *out = NULL;
        if (str_is_empty(path))
                return 0;
        r = file_read_all(path, PRICES_FILE_MAX, &data, &len);
        if (r < 0) {
                fprintf(stderr, "agently %s: could not read the LLM prices %s: %s\n", role, path,
                        r == -EFBIG ? "larger than 1 MiB" : strerror(-r));
                return -EINVAL;
        }
        prices = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!prices) {
                fprintf(stderr,
                        "agently %s: the LLM prices %s are not valid JSON: %s at line %d, column "
                        "%d\n",
                        role, path, jerr.text, jerr.line, jerr.column);
                return -EINVAL;
        }
        if (llm_pricing_validate(prices, &why) < 0) {
                fprintf(stderr, "agently %s: the LLM prices %s: %s\n", role, path,
                        why ? why : "invalid prices");
                json_decref(prices);
                return -EINVAL;
        }
        *out = prices;
        return 0;
}
