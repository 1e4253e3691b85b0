/*
 * A value checked against a JSON Schema, the subset the built-in agent tools' schemas use
 * (src/agent/agent_tools.c, src/sandbox/sandbox_tools.c): `type` (a name or a list of
 * names), `enum`, `properties`, `required`, `additionalProperties` (false or a schema) and
 * `items`. Other keywords (description, format, ...) are accepted and not checked, so a
 * schema with more in it checks less, never more than it says.
 */
#pragma once

#include <jansson.h>
#include <stddef.h>

/*
 * 0 when value satisfies schema. -EINVAL when it does not: error (size len) receives a
 * short message that names the field by its path under `at` ("arguments.url must be a
 * string"). -E2BIG when value nests deeper than 32 levels. A schema that is not an object
 * (NULL included) accepts anything. Allocates nothing the caller owns.
 */
int json_schema_check(const json_t *schema, const json_t *value, const char *at, char *error,
                      size_t len);
