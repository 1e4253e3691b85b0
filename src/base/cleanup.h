/*
 * Scope-bound cleanup, after systemd's _cleanup_ helpers. A variable declared with one of
 * these attributes is released when it leaves scope; every destructor accepts NULL so a
 * half-built object is always safe to abandon. Use TAKE_PTR() to hand ownership out.
 */
#pragma once

#include <stdlib.h>
#include <unistd.h>
#include <stdio.h>
#include <jansson.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void cleanup_freep(void *p)
{
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(cleanup_freep)

static inline void cleanup_jsonp(json_t **p)
{
        if (*p)
                json_decref(*p);
}
#define _cleanup_json_ _cleanup_(cleanup_jsonp)

static inline void cleanup_closep(int *fd)
{
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_close_ _cleanup_(cleanup_closep)

static inline void cleanup_fclosep(FILE **f)
{
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(cleanup_fclosep)

/* Returns *p and sets it to NULL: ownership leaves the cleanup scope. */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                __typeof__(p) _taken = (p);                                                        \
                (p) = NULL;                                                                        \
                _taken;                                                                            \
        })

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))
