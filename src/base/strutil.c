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

size_t str_utf8_char_len(const char *s, size_t n)
{
        const unsigned char *u = (const unsigned char *)s;
        size_t len;
        uint32_t cp;

        if (n == 0)
                return 0;
        if (u[0] < 0x80)
                return 1;
        if (u[0] >= 0xc2 && u[0] <= 0xdf) {
                len = 2;
                cp = u[0] & 0x1f;
        } else if (u[0] >= 0xe0 && u[0] <= 0xef) {
                len = 3;
                cp = u[0] & 0x0f;
        } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
                len = 4;
                cp = u[0] & 0x07;
        } else
                return 0; /* a continuation byte, 0xc0/0xc1 (always overlong) or > 0xf4 */
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((u[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (u[i] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

bool str_is_utf8(const char *s, size_t n)
{
        for (size_t i = 0; i < n;) {
                size_t k = str_utf8_char_len(s + i, n - i);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

char *str_utf8_printable(const char *s, size_t max)
{
        static const char digits[] = "0123456789abcdef";
        size_t n, out = 0;
        char *copy;

        if (!s)
                return NULL;
        n = strlen(s);
        copy = malloc((n < max ? n : max) * 4 + 4);
        if (!copy)
                return NULL;
        for (size_t i = 0; i < n;) {
                size_t k = str_utf8_char_len(s + i, n - i);
                size_t width = k ? k : 4;
                if (out + width > max) {
                        memcpy(copy + out, "...", 3);
                        out += 3;
                        break;
                }
                if (k) {
                        memcpy(copy + out, s + i, k);
                        i += k;
                } else {
                        unsigned char b = (unsigned char)s[i++];
                        copy[out++] = '\\';
                        copy[out++] = 'x';
                        copy[out++] = digits[b >> 4];
                        copy[out++] = digits[b & 0xf];
                        continue;
                }
                out += k;
        }
        copy[out] = '\0';
        return copy;
}
