/*
 * Masking of known secret values (see redact.h). Patterns are ordered by their first byte
 * and, within one first byte, longest first, so a scan costs one table lookup per byte of
 * text and a memcmp only where a pattern could start.
 */
#include "redact.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "strutil.h"

struct pattern {
        const char *bytes; /* borrowed from the registrant */
        size_t len;
        char *mask; /* "[secret:NAME]" */
        size_t mask_len;
};

static pthread_rwlock_t redact_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct pattern redact_patterns[REDACT_MAX_PATTERNS];
static size_t redact_n;
static atomic_size_t redact_n_public;
/* indices into redact_patterns ordered by first byte, then longest first; the patterns
 * starting with byte b are redact_order[redact_start[b] .. redact_start[b] + redact_count_of[b]) */
static unsigned short redact_order[REDACT_MAX_PATTERNS];
static size_t redact_start[256], redact_count_of[256];

static bool valid_name(const char *name)
{
        size_t n = strlen(name);
        return n >= 1 && n <= 63;
}

static int order_cmp(const void *a, const void *b)
{
        const struct pattern *x = &redact_patterns[*(const unsigned short *)a];
        const struct pattern *y = &redact_patterns[*(const unsigned short *)b];
        unsigned char fx = (unsigned char)x->bytes[0], fy = (unsigned char)y->bytes[0];

        if (fx != fy)
                return fx < fy ? -1 : 1;
        return x->len > y->len ? -1 : x->len < y->len ? 1 : 0;
}

/* Rebuilds the lookup order (under the write lock); allocates nothing. */
static void rebuild_order(void)
{
        for (size_t i = 0; i < redact_n; i++)
                redact_order[i] = (unsigned short)i;
        qsort(redact_order, redact_n, sizeof(redact_order[0]), order_cmp);
        memset(redact_count_of, 0, sizeof(redact_count_of));
        for (size_t i = 0; i < redact_n; i++) {
                unsigned char b = (unsigned char)redact_patterns[redact_order[i]].bytes[0];
                if (redact_count_of[b]++ == 0)
                        redact_start[b] = i;
        }
        atomic_store(&redact_n_public, redact_n);
}

int redact_register(const char *name, const char *pattern, size_t len)
{
        int r = 1;

        if (!pattern || len < REDACT_MIN_LEN || !name || !valid_name(name))
                return -EINVAL;
        pthread_rwlock_wrlock(&redact_lock);
        for (size_t i = 0; i < redact_n; i++)
                if (redact_patterns[i].len == len &&
                    !memcmp(redact_patterns[i].bytes, pattern, len)) {
                        r = 0;
                        goto out;
                }
        if (redact_n == REDACT_MAX_PATTERNS) {
                r = -ENOSPC;
                goto out;
        }
        char *mask = str_printf("[secret:%s]", name);
        if (!mask) {
                r = -ENOMEM;
                goto out;
        }
        redact_patterns[redact_n++] =
            (struct pattern){.bytes = pattern, .len = len, .mask = mask, .mask_len = strlen(mask)};
        rebuild_order();
out:
        pthread_rwlock_unlock(&redact_lock);
        return r;
}

void redact_unregister(const char *pattern)
{
        pthread_rwlock_wrlock(&redact_lock);
        for (size_t i = 0; i < redact_n; i++) {
                if (redact_patterns[i].bytes != pattern)
                        continue;
                free(redact_patterns[i].mask);
                redact_patterns[i] = redact_patterns[--redact_n];
                rebuild_order();
                break;
        }
        pthread_rwlock_unlock(&redact_lock);
}

size_t redact_count(void)
{
        return atomic_load(&redact_n_public);
}

/* The pattern that matches at p (len bytes left), longest first; NULL for none. */
static const struct pattern *match_at(const char *p, size_t left)
{
        unsigned char b = (unsigned char)*p;

        for (size_t k = redact_start[b]; k < redact_start[b] + redact_count_of[b]; k++) {
                const struct pattern *pt = &redact_patterns[redact_order[k]];
                if (pt->len <= left && !memcmp(p, pt->bytes, pt->len))
                        return pt;
        }
        return NULL;
}

int redact_text(const char *in, size_t len, char **out, size_t *out_len)
{
        struct buf b;
        size_t i = 0, copied = 0;
        int r = 0;

        *out = NULL;
        if (out_len)
                *out_len = 0;
        if (atomic_load(&redact_n_public) == 0 || !in)
                return 0;
        buf_init(&b, SIZE_MAX / 2);
        pthread_rwlock_rdlock(&redact_lock);
        while (i < len) {
                const struct pattern *pt =
                    redact_count_of[(unsigned char)in[i]] ? match_at(in + i, len - i) : NULL;
                if (!pt) {
                        i++;
                        continue;
                }
                if (buf_append(&b, in + copied, i - copied) < 0 ||
                    buf_append(&b, pt->mask, pt->mask_len) < 0) {
                        r = -ENOMEM;
                        break;
                }
                i += pt->len;
                copied = i;
                r = 1;
        }
        pthread_rwlock_unlock(&redact_lock);
        if (r == 1 && buf_append(&b, in + copied, len - copied) < 0)
                r = -ENOMEM;
        if (r == 1 && !b.data && buf_append(&b, "", 0) < 0)
                r = -ENOMEM;
        if (r != 1) {
                buf_free(&b);
                return r;
        }
        if (out_len)
                *out_len = b.len;
        *out = buf_steal(&b);
        return *out ? 1 : -ENOMEM;
}

char *redact_strdup(const char *s)
{
        char *out = NULL;
        int r = redact_text(s, strlen(s), &out, NULL);

        if (r == 0)
                return strdup(s);
        return r == 1 ? out : NULL;
}

int redact_json(json_t *v)
{
        int changed = 0, r = 0;

        if (atomic_load(&redact_n_public) == 0)
                return 0;
        if (json_is_string(v)) {
                char *masked = NULL;
                size_t n = 0;
                r = redact_text(json_string_value(v), json_string_length(v), &masked, &n);
                if (r <= 0)
                        return r;
                r = json_string_setn_nocheck(v, masked, n);
                free(masked);
                return r < 0 ? -ENOMEM : 1;
        }
        if (json_is_array(v)) {
                size_t i;
                json_t *x;
                json_array_foreach (v, i, x) {
                        r = redact_json(x);
                        if (r < 0)
                                return r;
                        changed |= r;
                }
                return changed;
        }
        if (json_is_object(v)) {
                const char *k;
                json_t *x;
                void *tmp;
                json_t *renamed = NULL;
                json_object_foreach_safe(v, tmp, k, x)
                {
                        char *mk = NULL;
                        r = redact_json(x);
                        if (r < 0)
                                break;
                        changed |= r;
                        r = redact_text(k, strlen(k), &mk, NULL);
                        if (r < 0)
                                break;
                        if (r == 0)
                                continue;
                        if (!renamed)
                                renamed = json_object();
                        if (!renamed || json_object_set(renamed, mk, x) < 0) {
                                free(mk);
                                r = -ENOMEM;
                                break;
                        }
                        free(mk);
                        json_object_del(v, k);
                        changed = 1;
                }
                if (r >= 0 && renamed && json_object_update(v, renamed) < 0)
                        r = -ENOMEM;
                json_decref(renamed);
                return r < 0 ? r : changed;
        }
        return 0;
}
