/* File and directory helpers; see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "strutil.h"

int fd_read_all(int fd, size_t max, char **out, size_t *out_len)
{
        size_t cap = 4096, len = 0;
        char *data = malloc(cap);

        if (!data)
                return -ENOMEM;
        for (;;) {
                ssize_t n;

                if (len + 1 >= cap) {
                        char *p;
                        if (cap > max + 1) {
                                free(data);
                                return -EFBIG;
                        }
                        cap *= 2;
                        p = realloc(data, cap);
                        if (!p) {
                                free(data);
                                return -ENOMEM;
                        }
                        data = p;
                }
                n = read(fd, data + len, cap - len - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        int r = -errno;
                        free(data);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > max) {
                        free(data);
                        return -EFBIG;
                }
        }
        data[len] = '\0';
        *out = data;
        if (out_len)
                *out_len = len;
        return 0;
}

int file_read_all(const char *path, size_t max, char **out, size_t *out_len)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        return fd_read_all(fd, max, out, out_len);
}

int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
        _cleanup_free_ char *tmp = str_printf("%s.tmp.%d", path, (int)getpid());
        const char *p = data;
        int fd;

        if (!tmp)
                return -ENOMEM;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        if (fd < 0)
                return -errno;
        if (fchmod(fd, mode) < 0)
                goto fail;
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        goto fail;
                }
                p += n;
                len -= (size_t)n;
        }
        if (fsync(fd) < 0)
                goto fail;
        close(fd);
        if (rename(tmp, path) < 0) {
                int r = -errno;
                unlink(tmp);
                return r;
        }
        return 0;
fail : {
        int r = -errno;
        close(fd);
        unlink(tmp);
        return r;
}
}

int dir_make_parents(const char *path, mode_t mode)
{
        char buf[PATH_MAX];

        if (str_copy(buf, sizeof(buf), path) < 0)
                return -ENAMETOOLONG;
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int path_absolute(const char *path, char **out)
{
        char cwd[PATH_MAX];
        char *joined;

        if (path[0] == '/') {
                joined = strdup(path);
        } else {
                if (!getcwd(cwd, sizeof(cwd)))
                        return -errno;
                if (strcmp(path, ".") == 0)
                        joined = strdup(cwd);
                else
                        joined =
                            str_printf("%s/%s", cwd, str_has_prefix(path, "./") ? path + 2 : path);
        }
        if (!joined)
                return -ENOMEM;
        /* drop a trailing slash so paths compare and join cleanly */
        size_t n = strlen(joined);
        while (n > 1 && joined[n - 1] == '/')
                joined[--n] = '\0';
        *out = joined;
        return 0;
}
