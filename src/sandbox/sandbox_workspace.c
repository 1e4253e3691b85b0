/*
 * Workspaces: the one writable directory of a sandbox. They belong to the sandbox user (so
 * a sandbox run by root as nobody can write them), and everything the caller does inside
 * one after a sandbox ran there treats its contents as hostile: no path is followed through
 * a symlink the sandbox may have planted.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fileio.h"
#include "sandbox.h"
#include "sandbox_internal.h"
#include "strutil.h"

int sandbox_workspace_create(const struct sandbox *sb, const char *path)
{
        int r = dir_make_parents(path, 0700);
        if (r < 0)
                return r;
        struct stat st;
        if (lstat(path, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        if (chmod(path, 0700) < 0)
                return -errno;
        if (sb->drop_privileges && lchown(path, sb->uid, sb->gid) < 0)
                return -errno;
        return 0;
}

int sandbox_open_beneath(int dirfd, const char *name, int flags, mode_t mode)
{
        struct open_how how = {
            .flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
            .mode = (flags & O_CREAT) ? mode : 0,
            .resolve =
                RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        };
        long fd = syscall(SYS_openat2, dirfd, name, &how, sizeof(how));
        return fd < 0 ? -errno : (int)fd;
}

bool sandbox_valid_name(const char *name)
{
        if (!name || !name[0] || name[0] == '/' || strlen(name) > 1024)
                return false;
        const char *p = name;
        while (*p) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t)(slash - p) : strlen(p);
                if (len == 0 || (len == 1 && p[0] == '.') ||
                    (len == 2 && p[0] == '.' && p[1] == '.'))
                        return false;
                if (!slash)
                        break;
                p = slash + 1;
                if (!*p)
                        return false;
        }
        return true;
}

int sandbox_workspace_write(const struct sandbox *sb, const char *workspace, const char *name,
                            const void *data, size_t len)
{
        if (!sandbox_valid_name(name))
                return -EINVAL;
        int dirfd = open(workspace, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
        if (dirfd < 0)
                return -errno;
        /* create the directories on the way, each opened beneath the last */
        char *copy = strdup(name);
        if (!copy) {
                close(dirfd);
                return -ENOMEM;
        }
        int r = 0;
        char *p = copy;
        for (char *slash; r == 0 && (slash = strchr(p, '/')); p = slash + 1) {
                *slash = '\0';
                if (mkdirat(dirfd, p, 0700) == 0) {
                        if (sb->drop_privileges &&
                            fchownat(dirfd, p, sb->uid, sb->gid, AT_SYMLINK_NOFOLLOW) < 0)
                                r = -errno;
                } else if (errno != EEXIST) {
                        r = -errno;
                }
                if (r == 0) {
                        int next = sandbox_open_beneath(dirfd, p, O_DIRECTORY | O_RDONLY, 0);
                        if (next < 0)
                                r = next;
                        else {
                                close(dirfd);
                                dirfd = next;
                        }
                }
        }
        int fd = r == 0 ? sandbox_open_beneath(dirfd, p, O_WRONLY | O_CREAT | O_TRUNC, 0600) : r;
        free(copy);
        close(dirfd);
        if (fd < 0)
                return fd;
        const char *d = data;
        while (len > 0) {
                ssize_t w = write(fd, d, len);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                d += w;
                len -= (size_t)w;
        }
        if (r == 0 && sb->drop_privileges && fchown(fd, sb->uid, sb->gid) < 0)
                r = -errno;
        close(fd);
        return r;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        if (remove(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

int sandbox_workspace_remove(const char *path)
{
        int r = nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        if (r < 0 && errno == ENOENT)
                return 0;
        return r > 0 ? -EIO : r < 0 ? (r == -1 ? -errno : r) : 0;
}
