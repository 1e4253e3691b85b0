/*
 * Whole-file helpers with size caps, and directory creation. Every read takes a maximum
 * size so a hostile or corrupt file cannot exhaust memory.
 */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Reads all of path into a NUL-terminated malloc'd buffer; -EFBIG past max bytes. */
int file_read_all(const char *path, size_t max, char **out, size_t *out_len);

/* Reads a whole stream (stdin, a pipe) the same way. */
int fd_read_all(int fd, size_t max, char **out, size_t *out_len);

/* Writes data to path atomically (temp file + fsync + rename) with the given mode. */
int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* mkdir -p with the given mode for directories it creates. */
int dir_make_parents(const char *path, mode_t mode);

/* Returns a malloc'd absolute, normalised path for path (which need not exist yet). */
int path_absolute(const char *path, char **out);
