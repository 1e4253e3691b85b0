/*
 * Cost: the shipped price list (the one place default prices live), per-model overrides
 * from configuration, and the cost of one call's usage. An unknown model costs 0 and says
 * so (struct llm_cost.known); it is never priced like some other model.
 */
#include "llm.h"
#include "llm_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/*
 * US dollars per million tokens: input, output, cached input (OpenAI's cached prompt
 * tokens; Anthropic's cache reads). The providers' published list prices when this table
 * was written; they change, so a deployment overrides them per model in configuration
 * rather than waiting for a release. Keyed by the name without a date suffix.
 */
static const struct {
        const char *model;
        struct llm_price price;
} default_prices[] = {
    {"gpt-4o", {2.50, 10.00, 1.25}},
    {"gpt-4o-mini", {0.15, 0.60, 0.075}},
    {"gpt-4.1", {2.00, 8.00, 0.50}},
    {"gpt-4.1-mini", {0.40, 1.60, 0.10}},
    {"gpt-4.1-nano", {0.10, 0.40, 0.025}},
    {"o3", {2.00, 8.00, 0.50}},
    {"o4-mini", {1.10, 4.40, 0.275}},
    {"claude-opus-4", {15.00, 75.00, 1.50}},
    {"claude-opus-4-1", {15.00, 75.00, 1.50}},
    {"claude-sonnet-4", {3.00, 15.00, 0.30}},
    {"claude-sonnet-4-5", {3.00, 15.00, 0.30}},
    {"claude-3-7-sonnet", {3.00, 15.00, 0.30}},
    {"claude-3-5-sonnet", {3.00, 15.00, 0.30}},
    {"claude-haiku-4-5", {1.00, 5.00, 0.10}},
    {"claude-3-5-haiku", {0.80, 4.00, 0.08}},
};

static bool all_digits(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

/* The length of name without a date suffix ("-20250514", "-2024-08-06") or "-latest". */
static size_t undated_length(const char *name)
{
        size_t n = strlen(name);

        if (n > 9 && name[n - 9] == '-' && all_digits(name + n - 8, 8))
                return n - 9;
        if (n > 11 && name[n - 11] == '-' && all_digits(name + n - 10, 4) && name[n - 6] == '-' &&
            all_digits(name + n - 5, 2) && name[n - 3] == '-' && all_digits(name + n - 2, 2))
                return n - 11;
        if (n > 7 && strcmp(name + n - 7, "-latest") == 0)
                return n - 7;
        return n;
}

static bool price_from_json(const json_t *o, struct llm_price *out)
{
        json_t *in = json_object_get(o, "input"), *outp = json_object_get(o, "output");
        json_t *cached = json_object_get(o, "cached_input");

        if (!json_is_number(in) || !json_is_number(outp) || (cached && !json_is_number(cached)))
                return false;
        out->input = json_number_value(in);
        out->output = json_number_value(outp);
        out->cached_input = cached ? json_number_value(cached) : out->input;
        return out->input >= 0 && out->output >= 0 && out->cached_input >= 0;
}

static bool lookup_exact(const json_t *overrides, const char *model, size_t len,
                         struct llm_price *out)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)overrides, key, v) {
                if (strlen(key) == len && strncmp(key, model, len) == 0 && price_from_json(v, out))
                        return true;
        }
        for (size_t i = 0; i < sizeof(default_prices) / sizeof(default_prices[0]); i++)
                if (strlen(default_prices[i].model) == len &&
                    strncmp(default_prices[i].model, model, len) == 0) {
                        *out = default_prices[i].price;
                        return true;
                }
        return false;
}

bool llm_price_lookup(const json_t *overrides, const char *model, struct llm_price *out)
{
        memset(out, 0, sizeof(*out));
        if (!model || !*model)
                return false;
        if (lookup_exact(overrides, model, strlen(model), out))
                return true;
        if (undated_length(model) != strlen(model) &&
            lookup_exact(overrides, model, undated_length(model), out))
                return true;
        memset(out, 0, sizeof(*out));
        return false;
}

int llm_pricing_validate(const json_t *overrides, char **error)
{
        const char *key;
        json_t *v;
        struct llm_price p;

        if (!json_is_object(overrides))
                return llm_fail(error, -EINVAL, "pricing: expected an object of models");
        json_object_foreach ((json_t *)overrides, key, v) {
                const char *k;
                json_t *m;
                if (!json_is_object(v))
                        return llm_fail(error, -EINVAL,
                                        "pricing.%s: expected {\"input\", "
                                        "\"output\", \"cached_input\"}",
                                        key);
                json_object_foreach (v, k, m) {
                        if (strcmp(k, "input") != 0 && strcmp(k, "output") != 0 &&
                            strcmp(k, "cached_input") != 0)
                                return llm_fail(error, -EINVAL, "pricing.%s.%s: unknown member",
                                                key, k);
                }
                if (!price_from_json(v, &p))
                        return llm_fail(error, -EINVAL,
                                        "pricing.%s: input and output (and cached_input) must be "
                                        "numbers >= 0, in US dollars per million tokens",
                                        key);
        }
        return 0;
}

struct llm_cost llm_cost(const json_t *overrides, const char *model, const struct llm_usage *u)
{
        struct llm_cost c = {0};
        struct llm_price p;
        int64_t cached = u->cached_input_tokens, uncached;

        if (!llm_price_lookup(overrides, model, &p))
                return c;
        if (cached > u->input_tokens)
                cached = u->input_tokens;
        uncached = u->input_tokens - cached;
        c.known = true;
        c.usd = ((double)uncached * p.input + (double)cached * p.cached_input +
                 (double)u->output_tokens * p.output) /
                1e6;
        return c;
}
