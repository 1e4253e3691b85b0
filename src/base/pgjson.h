/* JSON text that Postgres wrote, read with jansson. */
#pragma once

#include <jansson.h>
#include <stddef.h>

/*
 * Parses text as json_loads(text, flags, err) does, and also reads the numbers Postgres
 * writes in plain digits: jsonb keeps a number as a numeric and writes it without an
 * exponent, so a real such as 1e20 (which jansson reads and writes as a real) comes back
 * as 100000000000000000000, an integer too big for jansson, and the whole document would
 * not parse. An integer beyond an int64 is read as the real it stands for (the nearest
 * double); every other number is read as json_loads reads it. The first parse is
 * json_loads' own; only a document that failed on such a number is read a second time.
 * Returns a new reference (the caller's) or NULL with err filled.
 */
json_t *pgjson_loads(const char *text, size_t flags, json_error_t *err);
