/*
 * A growable byte buffer with a hard cap (after curl's dynbuf): every append that would
 * grow past `max` fails with -ENOBUFS and leaves the buffer as it was. The data is always
 * NUL-terminated so it can be used as a C string. The buffer owns `data`.
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>

struct buf {
        char *data;
        size_t len;
        size_t cap;
        size_t max;
};

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);

/* 0 on success; -ENOBUFS past the cap or -ENOMEM; on failure the contents are unchanged. */
int buf_append(struct buf *b, const void *data, size_t len);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);

/* Hands the NUL-terminated data to the caller (who frees it) and empties the buffer. */
char *buf_steal(struct buf *b);

static inline void buf_freep(struct buf *b)
{
        buf_free(b);
}
#define _cleanup_buf_ __attribute__((cleanup(buf_freep)))
