/* JSON text that Postgres wrote, read with jansson; see pgjson.h. */
#include "pgjson.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"

/* True when the integer token t (n bytes: an optional '-', then digits without leading
 * zeros, as JSON writes them) is beyond an int64. */
static bool beyond_int64(const char *t, size_t n)
{
        bool negative = t[0] == '-';
        const char *d = t + negative;
        size_t digits = n - negative;

        if (digits != 19)
                return digits > 19;
        return memcmp(d, negative ? "9223372036854775808" : "9223372036854775807", 19) > 0;
}

/* text with every integer token outside strings that may overflow an int64 made a real;
 * NULL when out of memory. The caller frees it. */
static char *reals_for_big_integers(const char *text)
{
        size_t n = strlen(text);
        struct buf out;
        bool in_string = false;
        size_t i = 0;

        buf_init(&out, n + n / 2 + 16);
        while (i < n) {
                char c = text[i];
                if (in_string) {
                        size_t start = i;
                        while (i < n && text[i] != '"' && text[i] != '\\')
                                i++;
                        if (i < n && text[i] == '\\')
                                i += i + 1 < n ? 2 : 1;
                        else if (i < n) {
                                in_string = false;
                                i++;
                        }
                        if (buf_append(&out, text + start, i - start) < 0)
                                goto fail;
                        continue;
                }
                if (c == '"') {
                        in_string = true;
                } else if (c == '-' || (c >= '0' && c <= '9')) {
                        size_t start = i;
                        bool integer = true;
                        if (c == '-')
                                i++;
                        while (i < n && text[i] != '\0' && strchr("0123456789.eE+-", text[i])) {
                                if (text[i] < '0' || text[i] > '9')
                                        integer = false;
                                i++;
                        }
                        /* written with ".0" after it, jansson reads it as a real (strtod:
                         * the nearest double) */
                        if (buf_append(&out, text + start, i - start) < 0 ||
                            (integer && beyond_int64(text + start, i - start) &&
                             buf_append(&out, ".0", 2) < 0))
                                goto fail;
                        continue;
                }
                if (buf_append(&out, &c, 1) < 0)
                        goto fail;
                i++;
        }
        return out.data ? buf_steal(&out) : strdup("");
fail:
        buf_free(&out);
        return NULL;
}

json_t *pgjson_loads(const char *text, size_t flags, json_error_t *err)
{
        json_error_t first;
        json_t *v = json_loads(text, flags, &first);
        _cleanup_free_ char *again = NULL;

        if (v || json_error_code(&first) != json_error_numeric_overflow) {
                if (err)
                        *err = first;
                return v;
        }
        again = reals_for_big_integers(text);
        if (!again) {
                if (err)
                        *err = first;
                return NULL;
        }
        return json_loads(again, flags, err);
}
