/*
 * KMS providers: who wraps a data key under a key version.
 *   local   — the version's key file: 64 hex characters, XChaCha20-Poly1305 with the
 *             context as associated data; wrapped = nonce (24) || sealed key (32 + 16).
 *   command — an external program (AGENTLY_KMS_COMMAND, run with /bin/sh -c) that gets one
 *             JSON request line on stdin and answers one JSON line on stdout; the protocol
 *             is in src/secrets/README.md. It holds the keys; agently never sees them.
 * Nothing here logs: errors are returned, with a message naming the provider.
 */
#include "secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "buf.h"
#include "cleanup.h"
#include "fileio.h"
#include "strutil.h"

#define KEK_BYTES        crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define AEAD_NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define AEAD_TAG_BYTES   crypto_aead_xchacha20poly1305_ietf_ABYTES
#define LOCAL_WRAPPED    (AEAD_NONCE_BYTES + SECRETS_DATA_KEY_BYTES + AEAD_TAG_BYTES)
#define KEY_FILE_MAX     4096
#define ANSWER_MAX       (16 * 1024)

extern char **environ;

static void set_error(char **error, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **error, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        if (!error)
                return;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        free(*error);
        *error = m;
}

int secrets_kms_init(struct secrets_kms *k, const char *data_dir)
{
        const char *file = getenv("AGENTLY_MASTER_KEY_FILE");
        const char *command = getenv("AGENTLY_KMS_COMMAND");

        *k = (struct secrets_kms){.timeout_ms = SECRETS_KMS_COMMAND_TIMEOUT_MS};
        k->key_file = file && *file ? strdup(file)
                                    : str_printf("%s/master.key", data_dir ? data_dir : ".agently");
        if (command && *command)
                k->command = strdup(command);
        if (!k->key_file || (command && *command && !k->command)) {
                secrets_kms_release(k);
                return -ENOMEM;
        }
        return 0;
}

void secrets_kms_release(struct secrets_kms *k)
{
        free(k->key_file);
        free(k->command);
        k->key_file = k->command = NULL;
}

const char *secrets_kms_new_provider(const struct secrets_kms *k)
{
        return k->command ? "command" : "local";
}

char *secrets_kms_key_path(const struct secrets_kms *k, int version)
{
        if (version == SECRETS_KEY_VERSION_LOCAL)
                return strdup(k->key_file);
        return str_printf("%s.%d", k->key_file, version);
}

/* ---- local: key files ---- */

/* Creates a key file with a fresh key (O_EXCL: two processes starting at once agree on one
 * key). 0 with key filled, -EEXIST when another process created it first, or an error. */
static int create_key_file(const char *path, unsigned char key[KEK_BYTES])
{
        unsigned char fresh[KEK_BYTES];
        char hex[2 * KEK_BYTES + 2];
        ssize_t w;
        int fd, fr;

        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        randombytes_buf(fresh, sizeof(fresh));
        sodium_bin2hex(hex, sizeof(hex), fresh, sizeof(fresh));
        hex[2 * KEK_BYTES] = '\n';
        hex[2 * KEK_BYTES + 1] = '\0';
        w = write(fd, hex, 2 * KEK_BYTES + 1);
        fr = fsync(fd);
        close(fd);
        sodium_memzero(hex, sizeof(hex));
        if (w != 2 * KEK_BYTES + 1 || fr < 0) {
                unlink(path);
                sodium_memzero(fresh, sizeof(fresh));
                return -EIO;
        }
        memcpy(key, fresh, KEK_BYTES);
        sodium_memzero(fresh, sizeof(fresh));
        return 0;
}

/* Reads (or, when create is set and there is none, creates) a version's key file. */
static int load_key(const struct secrets_kms *k, int version, bool create,
                    unsigned char key[KEK_BYTES], char **error)
{
        _cleanup_free_ char *path = secrets_kms_key_path(k, version);
        _cleanup_free_ char *text = NULL;
        size_t len = 0, bin_len = 0;
        int r;

        if (!path)
                return -ENOMEM;
        r = file_read_all(path, KEY_FILE_MAX, &text, &len);
        if (r == -ENOENT && create) {
                r = create_key_file(path, key);
                if (r != -EEXIST) {
                        if (r < 0)
                                set_error(error, "kms provider 'local': could not create %s: %s",
                                          path, strerror(-r));
                        return r;
                }
                r = file_read_all(path, KEY_FILE_MAX, &text, &len);
        }
        if (r < 0) {
                set_error(error,
                          "kms provider 'local': could not read the key file of key "
                          "version %d (%s): %s",
                          version, path, strerror(-r));
                return r;
        }
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
                len--;
        r = sodium_hex2bin(key, KEK_BYTES, text, len, NULL, &bin_len, NULL);
        sodium_memzero(text, len);
        if (r != 0 || bin_len != KEK_BYTES) {
                sodium_memzero(key, KEK_BYTES);
                set_error(error, "kms provider 'local': the key file %s is not 64 hex characters",
                          path);
                return -EBADMSG;
        }
        return 0;
}

static int local_wrap(const struct secrets_kms *k, int version, const char *context,
                      const unsigned char dek[SECRETS_DATA_KEY_BYTES], bool create,
                      unsigned char **out, size_t *out_len, char **error)
{
        unsigned char kek[KEK_BYTES];
        unsigned long long n = 0;
        unsigned char *w;
        int r = load_key(k, version, create, kek, error);

        if (r < 0)
                return r;
        w = malloc(LOCAL_WRAPPED);
        if (!w) {
                sodium_memzero(kek, sizeof(kek));
                return -ENOMEM;
        }
        randombytes_buf(w, AEAD_NONCE_BYTES);
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            w + AEAD_NONCE_BYTES, &n, dek, SECRETS_DATA_KEY_BYTES, (const unsigned char *)context,
            strlen(context), NULL, w, kek);
        sodium_memzero(kek, sizeof(kek));
        *out = w;
        *out_len = LOCAL_WRAPPED;
        return 0;
}

static int local_unwrap(const struct secrets_kms *k, int version, const char *context,
                        const unsigned char *wrapped, size_t len,
                        unsigned char dek[SECRETS_DATA_KEY_BYTES], char **error)
{
        unsigned char kek[KEK_BYTES];
        unsigned long long n = 0;
        int r;

        if (len != LOCAL_WRAPPED)
                return -EBADMSG;
        r = load_key(k, version, false, kek, error);
        if (r < 0)
                return r;
        r = crypto_aead_xchacha20poly1305_ietf_decrypt(
            dek, &n, NULL, wrapped + AEAD_NONCE_BYTES, SECRETS_DATA_KEY_BYTES + AEAD_TAG_BYTES,
            (const unsigned char *)context, strlen(context), wrapped, kek);
        sodium_memzero(kek, sizeof(kek));
        return r == 0 ? 0 : -EBADMSG;
}

/* ---- command: one JSON line in, one JSON line out ---- */

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The last line of what the program wrote on stderr, printable, for the error message. */
static char *stderr_tail(const struct buf *err)
{
        size_t end = err->len;
        while (end > 0 && (err->data[end - 1] == '\n' || err->data[end - 1] == '\r'))
                end--;
        size_t start = end;
        while (start > 0 && err->data[start - 1] != '\n')
                start--;
        if (end == start)
                return NULL;
        _cleanup_free_ char *line = strndup(err->data + start, end - start);
        return line ? str_utf8_printable(line, 300) : NULL;
}

/*
 * Runs the command with request (one line) on its stdin; *answer receives the first line
 * of its stdout (malloc'd). 0, or -EIO with *error. The program gets its own process group
 * (killed whole on timeout), default signal dispositions and an empty signal mask, and
 * none of this process's descriptors beyond 0-2.
 */
static int run_command(const struct secrets_kms *k, const char *request, char **answer,
                       char **error)
{
        int in_sv[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, dflt;
        pid_t pid = -1;
        struct buf out, err;
        int r = -EIO, status = 0;
        bool fa_ok = false, attr_ok = false;
        char *argv[] = {(char *)"/bin/sh", (char *)"-c", k->command, NULL};

        *answer = NULL;
        buf_init(&out, ANSWER_MAX);
        buf_init(&err, 64 * 1024);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_sv) < 0 ||
            pipe2(out_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0) {
                set_error(error, "kms provider 'command': could not create pipes: %s",
                          strerror(errno));
                goto done;
        }
        if (posix_spawn_file_actions_init(&fa) != 0)
                goto done;
        fa_ok = true;
        if (posix_spawnattr_init(&attr) != 0)
                goto done;
        attr_ok = true;
        sigemptyset(&none);
        sigemptyset(&dflt);
        sigaddset(&dflt, SIGPIPE);
        sigaddset(&dflt, SIGTERM);
        sigaddset(&dflt, SIGINT);
        sigaddset(&dflt, SIGCHLD);
        if (posix_spawn_file_actions_adddup2(&fa, in_sv[1], 0) != 0 ||
            posix_spawn_file_actions_adddup2(&fa, out_p[1], 1) != 0 ||
            posix_spawn_file_actions_adddup2(&fa, err_p[1], 2) != 0 ||
            posix_spawn_file_actions_addclosefrom_np(&fa, 3) != 0 ||
            posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                POSIX_SPAWN_SETSIGDEF) != 0 ||
            posix_spawnattr_setpgroup(&attr, 0) != 0 ||
            posix_spawnattr_setsigmask(&attr, &none) != 0 ||
            posix_spawnattr_setsigdefault(&attr, &dflt) != 0)
                goto done;
        int sr = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
        if (sr != 0) {
                pid = -1;
                set_error(error, "kms provider 'command': could not start `%s`: %s", k->command,
                          strerror(sr));
                goto done;
        }
        close(in_sv[1]);
        close(out_p[1]);
        close(err_p[1]);
        in_sv[1] = out_p[1] = err_p[1] = -1;

        /* the request is small (< 1 KiB): it fits the socket buffer, no need to interleave */
        size_t len = strlen(request), sent = 0;
        while (sent < len) {
                ssize_t n = send(in_sv[0], request + sent, len - sent, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* the program went away without reading: its exit says why */
                sent += (size_t)n;
        }
        close(in_sv[0]);
        in_sv[0] = -1;

        int64_t deadline = now_ms() + k->timeout_ms;
        bool out_open = true, err_open = true, timed_out = false;
        while (out_open || err_open) {
                struct pollfd p[2] = {{.fd = out_open ? out_p[0] : -1, .events = POLLIN},
                                      {.fd = err_open ? err_p[0] : -1, .events = POLLIN}};
                int64_t left = deadline - now_ms();
                if (left <= 0) {
                        timed_out = true;
                        break;
                }
                int pr = poll(p, 2, (int)left);
                if (pr < 0 && errno == EINTR)
                        continue;
                if (pr < 0)
                        break;
                for (int i = 0; i < 2; i++) {
                        if (!p[i].revents)
                                continue;
                        char chunk[4096];
                        ssize_t n = read(p[i].fd, chunk, sizeof(chunk));
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0) {
                                if (i == 0)
                                        out_open = false;
                                else
                                        err_open = false;
                                continue;
                        }
                        struct buf *b = i == 0 ? &out : &err;
                        if (buf_append(b, chunk, (size_t)n) < 0 && i == 0) {
                                sodium_memzero(chunk, sizeof(chunk));
                                set_error(error,
                                          "kms provider 'command': `%s` answered more than %d "
                                          "bytes",
                                          k->command, ANSWER_MAX);
                                kill(-pid, SIGKILL);
                                goto reap;
                        }
                        sodium_memzero(chunk, sizeof(chunk));
                }
        }
        if (timed_out) {
                kill(-pid, SIGKILL);
                set_error(error, "kms provider 'command': `%s` did not answer within %d s",
                          k->command, k->timeout_ms / 1000);
                goto reap;
        }
        r = 0;
reap:
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        pid = -1;
        if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                _cleanup_free_ char *tail = stderr_tail(&err);
                if (WIFEXITED(status))
                        set_error(
                            error, "kms provider 'command': `%s` failed with exit status %d%s%s",
                            k->command, WEXITSTATUS(status), tail ? ": " : "", tail ? tail : "");
                else
                        set_error(error, "kms provider 'command': `%s` was killed by signal %d",
                                  k->command, WTERMSIG(status));
                r = -EIO;
        } else if (r == 0) {
                char *nl = out.data ? memchr(out.data, '\n', out.len) : NULL;
                size_t line = nl ? (size_t)(nl - out.data) : out.len;
                *answer = out.data ? strndup(out.data, line) : NULL;
                if (!*answer || line == 0) {
                        free(*answer);
                        *answer = NULL;
                        set_error(error, "kms provider 'command': `%s` answered nothing on stdout",
                                  k->command);
                        r = -EIO;
                }
        } else {
                r = -EIO;
        }
done:
        if (pid > 0) {
                kill(-pid, SIGKILL);
                while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                        ;
        }
        for (int i = 0; i < 2; i++) {
                if (in_sv[i] >= 0)
                        close(in_sv[i]);
                if (out_p[i] >= 0)
                        close(out_p[i]);
                if (err_p[i] >= 0)
                        close(err_p[i]);
        }
        if (fa_ok)
                posix_spawn_file_actions_destroy(&fa);
        if (attr_ok)
                posix_spawnattr_destroy(&attr);
        if (out.data)
                sodium_memzero(out.data, out.len);
        buf_free(&out);
        buf_free(&err);
        if (r < 0 && error && !*error)
                set_error(error, "kms provider 'command': could not run `%s`", k->command);
        return r;
}

/* Sends {op, key_version, context, <field>: base64(data)} and decodes the answer's
 * <answer_field> into out (at most out_max bytes). */
static int command_call(const struct secrets_kms *k, const char *op, int version,
                        const char *context, const char *field, const unsigned char *data,
                        size_t len, const char *answer_field, unsigned char *out, size_t out_max,
                        size_t *out_len, char **error)
{
        size_t b64_len = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = sodium_malloc(b64_len);
        char *request = NULL, *answer = NULL;
        json_t *req = NULL, *ans = NULL;
        json_error_t jerr;
        int r = -ENOMEM;

        if (!k->command) {
                set_error(error,
                          "kms provider 'command' is not configured here: set "
                          "AGENTLY_KMS_COMMAND (key version %d was made by it)",
                          version);
                sodium_free(b64);
                return -EINVAL;
        }
        if (!b64)
                return -ENOMEM;
        sodium_bin2base64(b64, b64_len, data, len, sodium_base64_VARIANT_ORIGINAL);
        req = json_pack("{s:s, s:i, s:s, s:s}", "op", op, "key_version", version, "context",
                        context, field, b64);
        request = req ? json_dumps(req, JSON_COMPACT) : NULL;
        if (req) {
                json_t *f = json_object_get(req, field);
                sodium_memzero((char *)json_string_value(f), json_string_length(f));
        }
        json_decref(req);
        sodium_free(b64);
        if (!request)
                return -ENOMEM;
        size_t rl = strlen(request);
        char *line = realloc(request, rl + 2);
        if (!line) {
                sodium_memzero(request, rl);
                free(request);
                return -ENOMEM;
        }
        line[rl] = '\n';
        line[rl + 1] = '\0';
        r = run_command(k, line, &answer, error);
        sodium_memzero(line, rl + 1);
        free(line);
        if (r < 0)
                return r;
        ans = json_loads(answer, 0, &jerr);
        sodium_memzero(answer, strlen(answer));
        free(answer);
        r = -EIO;
        if (!json_is_object(ans)) {
                set_error(error,
                          "kms provider 'command': `%s` answered a line that is not a JSON "
                          "object",
                          k->command);
        } else if (json_is_string(json_object_get(ans, "error"))) {
                _cleanup_free_ char *msg =
                    str_utf8_printable(json_string_value(json_object_get(ans, "error")), 300);
                set_error(error,
                          "kms provider 'command': `%s` refused to %s with key version %d: %s",
                          k->command, op, version, msg ? msg : "error");
                r = op[0] == 'u' ? -EBADMSG : -EIO;
        } else {
                json_t *v = json_object_get(ans, answer_field);
                size_t n = 0;
                if (json_is_string(v) &&
                    sodium_base642bin(out, out_max, json_string_value(v), json_string_length(v),
                                      NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) == 0 &&
                    n > 0) {
                        *out_len = n;
                        r = 0;
                } else {
                        set_error(error,
                                  "kms provider 'command': `%s` answered no valid base64 \"%s\" "
                                  "(at most %zu bytes)",
                                  k->command, answer_field, out_max);
                }
                if (json_is_string(v))
                        sodium_memzero((char *)json_string_value(v), json_string_length(v));
        }
        json_decref(ans);
        return r;
}

/* ---- the interface ---- */

int secrets_kms_wrap(const struct secrets_kms *k, const char *provider, int version,
                     const char *context, const unsigned char dek[SECRETS_DATA_KEY_BYTES],
                     bool create, unsigned char **out, size_t *out_len, char **error)
{
        *out = NULL;
        *out_len = 0;
        if (sodium_init() < 0)
                return -EIO;
        if (!strcmp(provider, "local"))
                return local_wrap(k, version, context, dek, create, out, out_len, error);
        if (!strcmp(provider, "command")) {
                unsigned char *w = malloc(SECRETS_WRAPPED_MAX);
                size_t n = 0;
                int r;
                if (!w)
                        return -ENOMEM;
                r = command_call(k, "wrap", version, context, "plaintext", dek,
                                 SECRETS_DATA_KEY_BYTES, "ciphertext", w, SECRETS_WRAPPED_MAX, &n,
                                 error);
                if (r < 0) {
                        free(w);
                        return r == -EBADMSG ? -EIO : r;
                }
                *out = w;
                *out_len = n;
                return 0;
        }
        set_error(error, "unknown kms provider '%s' (key version %d); known: local, command",
                  provider, version);
        return -EINVAL;
}

int secrets_kms_unwrap(const struct secrets_kms *k, const char *provider, int version,
                       const char *context, const unsigned char *wrapped, size_t len,
                       unsigned char dek[SECRETS_DATA_KEY_BYTES], char **error)
{
        if (sodium_init() < 0)
                return -EIO;
        if (!strcmp(provider, "local"))
                return local_unwrap(k, version, context, wrapped, len, dek, error);
        if (!strcmp(provider, "command")) {
                unsigned char tmp[SECRETS_DATA_KEY_BYTES + 1];
                size_t n = 0;
                int r = command_call(k, "unwrap", version, context, "ciphertext", wrapped, len,
                                     "plaintext", tmp, sizeof(tmp), &n, error);
                if (r == 0 && n != SECRETS_DATA_KEY_BYTES) {
                        set_error(error,
                                  "kms provider 'command': `%s` unwrapped %zu bytes, not a %d-byte "
                                  "data key",
                                  k->command, n, SECRETS_DATA_KEY_BYTES);
                        r = -EIO;
                }
                if (r == 0)
                        memcpy(dek, tmp, SECRETS_DATA_KEY_BYTES);
                sodium_memzero(tmp, sizeof(tmp));
                return r;
        }
        set_error(error, "unknown kms provider '%s' (key version %d); known: local, command",
                  provider, version);
        return -EINVAL;
}
