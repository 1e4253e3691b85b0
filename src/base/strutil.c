/* String helpers; see strutil.h. */
#include "strutil.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int str_to_int64(const char *s, int64_t *out)
{
        char *end;
        long long v;

        if (!s || !*s)
                return -EINVAL;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (*end != '\0' || end == s)
                return -EINVAL;
        *out = v;
        return 0;
}

int str_to_int(const char *s, int *out)
{
        int64_t v;
        int r = str_to_int64(s, &v);

        if (r < 0)
                return r;
        if (v < INT_MIN || v > INT_MAX)
                return -ERANGE;
        *out = (int)v;
        return 0;
}

char *str_printf(const char *fmt, ...)
{
        va_list ap;
        char *s = NULL;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&s, fmt, ap);
        va_end(ap);
        return n < 0 ? NULL : s;
}

bool str_has_prefix(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool str_is_empty(const char *s)
{
        return !s || !*s;
}

int str_copy(char *dst, size_t n, const char *src)
{
        size_t len = strlen(src);

        if (n == 0)
                return -ENAMETOOLONG;
        if (len >= n) {
                memcpy(dst, src, n - 1);
                dst[n - 1] = '\0';
                return -ENAMETOOLONG;
        }
        memcpy(dst, src, len + 1);
        return 0;
}

bool str_equal_ct(const void *a, const void *b, size_t n)
{
        const unsigned char *x = a, *y = b;
        unsigned char d = 0;

        for (size_t i = 0; i < n; i++)
                d |= x[i] ^ y[i];
        return d == 0;
}

void str_hex(const unsigned char *in, size_t n, char *out)
{
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[in[i] >> 4];
                out[2 * i + 1] = digits[in[i] & 0xf];
        }
        out[2 * n] = '\0';
}
