/*
 * What the files of src/sandbox share and nobody else needs.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Compiles the seccomp filter (sandbox_seccomp.c) into a classic BPF program: *out is
 * malloc'd (the caller frees it). 0 or -errno. */
int sandbox_seccomp_compile(void **out, size_t *out_len);

struct sandbox {
        char *bwrap_path;
        char *prlimit_path;
        bool drop_privileges; /* running as root: the child becomes uid/gid first */
        uid_t uid;
        gid_t gid;
        void *seccomp;
        size_t seccomp_len;
        /* how the host lays out /bin, /lib, /lib64, /sbin: a symlink into /usr (merged /usr,
         * its target here) or a directory (NULL target, bound read-only) */
        char *top_links[4];
        bool top_present[4];
};

/* openat2 beneath dirfd without following any symlink (O_NOFOLLOW, RESOLVE_BENEATH,
 * RESOLVE_NO_SYMLINKS, no magic links, no other mount): the way to open anything a
 * sandbox may have touched. The descriptor (close-on-exec) or -errno. */
int sandbox_open_beneath(int dirfd, const char *name, int flags, mode_t mode);

/* A relative name of a workspace: no leading '/', no empty, "." or ".." component. */
bool sandbox_valid_name(const char *name);
