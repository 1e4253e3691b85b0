/*
 * Values the user hands the client: JSON arguments given inline, from a file (@file) or
 * from stdin (@-), and secret values, which are read from stdin only so they never show up
 * in argv, shell history or `ps`. Sizes are capped (CLIENT_INPUT_MAX).
 */
#include <errno.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cleanup.h"
#include "client.h"
#include "fileio.h"

int client_input_parse(const char *spec, const char *flag_name, json_t **out, char *err,
                       size_t err_size)
{
        _cleanup_free_ char *data = NULL;
        const char *text = spec, *origin = "the value";
        size_t len = strlen(spec);
        json_error_t jerr;
        json_t *j;
        int r;

        *out = NULL;
        if (spec[0] == '@') {
                if (strcmp(spec, "@-") == 0) {
                        r = fd_read_all(STDIN_FILENO, CLIENT_INPUT_MAX, &data, &len);
                        origin = "stdin";
                } else {
                        r = file_read_all(spec + 1, CLIENT_INPUT_MAX, &data, &len);
                        origin = spec + 1;
                }
                if (r < 0) {
                        if (r == -EFBIG)
                                snprintf(err, err_size, "--%s: %s is larger than %d KiB", flag_name,
                                         origin, CLIENT_INPUT_MAX >> 10);
                        else
                                snprintf(err, err_size, "--%s: could not read %s: %s", flag_name,
                                         origin, strerror(-r));
                        return r;
                }
                text = data;
        } else if (len > CLIENT_INPUT_MAX) {
                snprintf(err, err_size, "--%s: the value is larger than %d KiB", flag_name,
                         CLIENT_INPUT_MAX >> 10);
                return -EFBIG;
        }
        j = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (!j) {
                snprintf(err, err_size, "--%s: %s is not valid JSON: %s at line %d, column %d%s",
                         flag_name, origin, jerr.text, jerr.line, jerr.column,
                         spec[0] == '@' ? "" : " (use @FILE to read a file, @- for stdin)");
                return -EINVAL;
        }
        *out = j;
        return 0;
}

int client_read_secret(int fd, const char *name, char **out, size_t *out_len)
{
        _cleanup_free_ char *data = NULL;
        struct termios old, quiet;
        bool tty = isatty(fd);
        size_t len = 0;
        int r;

        *out = NULL;
        if (tty) {
                /* interactive: one line, not echoed */
                if (tcgetattr(fd, &old) < 0)
                        return -errno;
                quiet = old;
                quiet.c_lflag &= ~(tcflag_t)ECHO;
                quiet.c_lflag |= ECHONL;
                fprintf(stderr, "value for secret %s (input hidden): ", name);
                fflush(stderr);
                if (tcsetattr(fd, TCSAFLUSH, &quiet) < 0)
                        return -errno;
                data = malloc(CLIENT_INPUT_MAX + 1);
                r = data ? 0 : -ENOMEM;
                while (r == 0 && len < CLIENT_INPUT_MAX) {
                        ssize_t n = read(fd, data + len, 1);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0)
                                r = -errno;
                        if (n <= 0 || data[len] == '\n')
                                break;
                        len++;
                }
                (void)tcsetattr(fd, TCSAFLUSH, &old);
                if (r < 0) {
                        if (data)
                                explicit_bzero(data, len);
                        return r;
                }
                data[len] = '\0';
        } else {
                r = fd_read_all(fd, CLIENT_INPUT_MAX, &data, &len);
                if (r < 0)
                        return r;
                /* `echo value | agently secret set` adds one newline that is not the value */
                if (len > 0 && data[len - 1] == '\n')
                        data[--len] = '\0';
                if (len > 0 && data[len - 1] == '\r')
                        data[--len] = '\0';
        }
        if (len == 0)
                return -ENODATA;
        if (memchr(data, '\0', len)) {
                explicit_bzero(data, len);
                return -EINVAL;
        }
        *out = TAKE_PTR(data);
        *out_len = len;
        return 0;
}
