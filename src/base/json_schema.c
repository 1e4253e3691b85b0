/*
 * The JSON Schema subset of json_schema.h: enough to tell a person who edits a tool call's
 * arguments which field is wrong before anything runs (src/api, the decide route), with the
 * same schemas the model is given.
 */
#include "json_schema.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEPTH_MAX    32
#define PATH_MAX_LEN 256

static bool type_is(const char *type, const json_t *v)
{
        if (!strcmp(type, "object"))
                return json_is_object(v);
        if (!strcmp(type, "array"))
                return json_is_array(v);
        if (!strcmp(type, "string"))
                return json_is_string(v);
        if (!strcmp(type, "integer"))
                return json_is_integer(v);
        if (!strcmp(type, "number"))
                return json_is_number(v);
        if (!strcmp(type, "boolean"))
                return json_is_boolean(v);
        if (!strcmp(type, "null"))
                return json_is_null(v);
        return true; /* an unknown name checks nothing */
}

/* "a string", "an object", or "one of string, null". */
static void type_text(const json_t *type, char *out, size_t len)
{
        const json_t *t;
        size_t i, n = 0;

        if (json_is_string(type)) {
                const char *s = json_string_value(type);
                snprintf(out, len, "%s %s", strchr("aeiou", s[0]) ? "an" : "a", s);
                return;
        }
        n = (size_t)snprintf(out, len, "one of ");
        json_array_foreach (type, i, t)
                if (n < len)
                        n += (size_t)snprintf(out + n, len - n, "%s%s", i ? ", " : "",
                                              json_string_value(t) ? json_string_value(t) : "?");
}

static bool type_ok(const json_t *type, const json_t *v)
{
        const json_t *t;
        size_t i;

        if (json_is_string(type))
                return type_is(json_string_value(type), v);
        if (!json_is_array(type))
                return true;
        json_array_foreach (type, i, t)
                if (json_is_string(t) && type_is(json_string_value(t), v))
                        return true;
        return false;
}

/* "<at> <what> <detail>" into error; -EINVAL. */
static int fail(char *error, size_t len, const char *at, const char *what, const char *detail)
{
        if (len)
                snprintf(error, len, "%s %s%s%s", at, what, detail ? " " : "",
                         detail ? detail : "");
        return -EINVAL;
}

static int check(const json_t *schema, const json_t *v, const char *at, char *error, size_t len,
                 int depth)
{
        const json_t *type, *en, *props, *extra, *items, *x;
        const char *k;
        char path[PATH_MAX_LEN], text[128];
        size_t i;
        int r;

        if (!json_is_object(schema))
                return 0;
        if (depth > DEPTH_MAX) {
                if (len)
                        snprintf(error, len, "%s nests too deeply (at most %d levels)", at,
                                 DEPTH_MAX);
                return -E2BIG;
        }
        type = json_object_get(schema, "type");
        if (type && !type_ok(type, v)) {
                type_text(type, text, sizeof(text));
                return fail(error, len, at, "must be", text);
        }
        en = json_object_get(schema, "enum");
        if (json_is_array(en)) {
                bool found = false;
                json_array_foreach (en, i, x)
                        found |= json_equal(x, v) != 0;
                if (!found) {
                        char *list = json_dumps(en, JSON_COMPACT | JSON_ENCODE_ANY);
                        r = fail(error, len, at, "must be one of", list ? list : "the enum");
                        free(list);
                        return r;
                }
        }
        if (json_is_object(v)) {
                props = json_object_get(schema, "properties");
                extra = json_object_get(schema, "additionalProperties");
                json_array_foreach (json_object_get(schema, "required"), i, x) {
                        if (json_is_string(x) && !json_object_get(v, json_string_value(x))) {
                                snprintf(path, sizeof(path), "%s.%s", at, json_string_value(x));
                                return fail(error, len, path, "is required", NULL);
                        }
                }
                json_object_foreach ((json_t *)v, k, x) {
                        const json_t *sub = json_object_get(props, k);
                        snprintf(path, sizeof(path), "%s.%s", at, k);
                        if (!sub && json_is_false(extra))
                                return fail(error, len, path, "is not a field the schema allows",
                                            NULL);
                        if (!sub)
                                sub = extra;
                        if ((r = check(sub, x, path, error, len, depth + 1)) < 0)
                                return r;
                }
        }
        items = json_object_get(schema, "items");
        if (json_is_array(v) && json_is_object(items)) {
                json_array_foreach (v, i, x) {
                        snprintf(path, sizeof(path), "%s[%zu]", at, i);
                        if ((r = check(items, x, path, error, len, depth + 1)) < 0)
                                return r;
                }
        }
        return 0;
}

int json_schema_check(const json_t *schema, const json_t *value, const char *at, char *error,
                      size_t len)
{
        if (len)
                error[0] = '\0';
        return check(schema, value, at ? at : "value", error, len, 0);
}
