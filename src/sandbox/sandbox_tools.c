/*
 * The shell and run_code tools (sandbox_tools.h): arguments checked and turned into a
 * sandbox spec, the workspace compared before and after to list the files written, kept
 * files copied out without following anything the sandbox planted, and the result as the
 * JSON the model reads.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "duration.h"
#include "fileio.h"
#include "sandbox_internal.h"
#include "sandbox_tools.h"
#include "strutil.h"

#define CODE_DIR    "/run/agently"
#define MAX_FILES   100   /* "files" and "keep" entries */
#define MAX_ARGS    100   /* run_code "args" */
#define MAX_ENTRIES 10000 /* workspace entries compared */
#define MAX_DEPTH   16
/* the disk cap's look at the workspace: how often while a call runs, and how far */
#define DISK_CHECK_MS    200
#define DISK_MAX_ENTRIES 100000
#define DISK_MAX_DEPTH   256

struct language_def {
        const char *language;
        const char *const candidates[3];
        const char *file;
};

static const struct language_def language_defs[] = {
    {"python", {"python3", NULL}, CODE_DIR "/main.py"},
    {"node", {"node", "nodejs", NULL}, CODE_DIR "/main.js"},
};

/* What the sandbox sees of the host's binaries: /usr, and /bin as its link into /usr. */
static const char *const search_dirs[] = {"/usr/local/bin", "/usr/bin"};

struct language {
        const struct language_def *def;
        char *interpreter;
        char *version;
};

struct sandbox_tools {
        const struct sandbox *sb;
        struct language langs[sizeof(language_defs) / sizeof(language_defs[0])];
        size_t n_langs;
};

static void set_error(char **error, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **error, const char *fmt, ...)
{
        if (!error)
                return;
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        free(*error);
        *error = strdup(tmp);
}

static const char *const tool_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin",
                                       "HOME=" SANDBOX_WORKSPACE, "LANG=C.UTF-8", "TMPDIR=/tmp",
                                       NULL};

/* The interpreter's first line of `--version` inside a sandbox, or NULL when it does not
 * run there. */
static char *interpreter_version(const struct sandbox *sb, const char *path)
{
        const char *const argv[] = {path, "--version", NULL};
        struct sandbox_spec spec = {
            .argv = argv, .envp = tool_env, .limits = sandbox_limits_default()};
        spec.limits.wall_ms = 20000;
        struct sandbox_result r;
        if (sandbox_run(sb, &spec, &r, NULL) < 0)
                return NULL;
        char *version = NULL;
        if (r.exit_status == 0) {
                const char *text = r.out && r.out[0] ? r.out : r.err;
                size_t n = strcspn(text ? text : "", "\n");
                version = n > 0 ? strndup(text, n) : NULL;
        }
        sandbox_result_free(&r);
        return version;
}

int sandbox_tools_open(const struct sandbox *sb, struct sandbox_tools **out, char **error)
{
        *out = NULL;
        struct sandbox_tools *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->sb = sb;
        for (size_t i = 0; i < sizeof(language_defs) / sizeof(language_defs[0]); i++) {
                const struct language_def *def = &language_defs[i];
                for (size_t c = 0; def->candidates[c] && !t->langs[t->n_langs].def; c++) {
                        for (size_t d = 0; d < sizeof(search_dirs) / sizeof(search_dirs[0]); d++) {
                                char *path =
                                    str_printf("%s/%s", search_dirs[d], def->candidates[c]);
                                struct stat st;
                                if (!path) {
                                        sandbox_tools_free(t);
                                        return -ENOMEM;
                                }
                                char *version = NULL;
                                if (stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
                                    access(path, X_OK) == 0)
                                        version = interpreter_version(sb, path);
                                if (version) {
                                        t->langs[t->n_langs] = (struct language){
                                            .def = def, .interpreter = path, .version = version};
                                        break;
                                }
                                free(path);
                        }
                }
                if (t->langs[t->n_langs].def)
                        t->n_langs++;
        }
        (void)error;
        *out = t;
        return 0;
}

void sandbox_tools_free(struct sandbox_tools *t)
{
        if (!t)
                return;
        for (size_t i = 0; i < t->n_langs; i++) {
                free(t->langs[i].interpreter);
                free(t->langs[i].version);
        }
        free(t);
}

json_t *sandbox_tools_languages(const struct sandbox_tools *t)
{
        json_t *a = json_array();
        for (size_t i = 0; a && i < t->n_langs; i++)
                json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "language",
                                                   t->langs[i].def->language, "interpreter",
                                                   t->langs[i].interpreter, "version",
                                                   t->langs[i].version));
        return a;
}

bool sandbox_tools_has(const char *tool)
{
        return tool && (strcmp(tool, "shell") == 0 || strcmp(tool, "run_code") == 0);
}

static json_t *common_properties(void)
{
        return json_pack(
            "{s:{s:s, s:s}, s:{s:s, s:{s:s}, s:s}, s:{s:s, s:{s:s}, s:s}, s:{s:s, s:s}}", "stdin",
            "type", "string", "description", "text given on standard input", "files", "type",
            "object", "additionalProperties", "type", "string", "description",
            "files to write into the workspace first: {relative path: text}", "keep", "type",
            "array", "items", "type", "string", "description",
            "workspace files to keep as artifacts of the run (relative paths)", "timeout", "type",
            "string", "description", "wall-clock limit such as \"30s\"");
}

json_t *sandbox_tools_schema(const struct sandbox_tools *t, const char *tool)
{
        json_t *props = common_properties();
        if (!props)
                return NULL;
        json_t *schema = NULL;
        if (tool && strcmp(tool, "shell") == 0) {
                json_object_set_new(props, "command",
                                    json_pack("{s:s, s:s}", "type", "string", "description",
                                              "a command line for /bin/sh, run in the workspace"));
                schema = json_pack("{s:s, s:o, s:[s], s:b}", "type", "object", "properties", props,
                                   "required", "command", "additionalProperties", 0);
        } else if (tool && strcmp(tool, "run_code") == 0) {
                json_t *languages = json_array();
                for (size_t i = 0; i < t->n_langs; i++)
                        json_array_append_new(languages, json_string(t->langs[i].def->language));
                json_object_set_new(props, "language",
                                    json_pack("{s:s, s:o}", "type", "string", "enum", languages));
                json_object_set_new(
                    props, "code",
                    json_pack("{s:s, s:s}", "type", "string", "description",
                              "the program; the workspace is its working directory"));
                json_object_set_new(
                    props, "args",
                    json_pack("{s:s, s:{s:s}}", "type", "array", "items", "type", "string"));
                schema =
                    json_pack("{s:s, s:o, s:[s, s], s:b}", "type", "object", "properties", props,
                              "required", "language", "code", "additionalProperties", 0);
        } else {
                json_decref(props);
        }
        return schema;
}

/* ---- the workspace before and after -------------------------------------------------- */

struct entry {
        char *path;
        long long size;
        long long mtime_ns;
        unsigned long long ino;
};

struct snapshot {
        struct entry *v;
        size_t n, cap;
        bool truncated;
};

static void snapshot_free(struct snapshot *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i].path);
        free(s->v);
        *s = (struct snapshot){0};
}

static int snapshot_add(struct snapshot *s, const char *path, const struct stat *st)
{
        if (s->n >= MAX_ENTRIES) {
                s->truncated = true;
                return 0;
        }
        if (s->n == s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 64;
                struct entry *v = realloc(s->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                s->v = v;
                s->cap = cap;
        }
        char *copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        s->v[s->n++] = (struct entry){
            .path = copy,
            .size = (long long)st->st_size,
            .mtime_ns = (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
            .ino = (unsigned long long)st->st_ino,
        };
        return 0;
}

/* Walks the directory dirfd (which it closes) without following symlinks: regular files
 * only, at most MAX_DEPTH deep. */
static int walk(int dirfd, const char *prefix, int depth, struct snapshot *s)
{
        DIR *d = fdopendir(dirfd);
        if (!d) {
                close(dirfd);
                return -errno;
        }
        int r = 0;
        struct dirent *de;
        while (r == 0 && (de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                struct stat st;
                if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue;
                char *path =
                    prefix[0] ? str_printf("%s/%s", prefix, de->d_name) : strdup(de->d_name);
                if (!path) {
                        r = -ENOMEM;
                        break;
                }
                if (S_ISREG(st.st_mode)) {
                        r = snapshot_add(s, path, &st);
                } else if (S_ISDIR(st.st_mode) && depth < MAX_DEPTH) {
                        int sub = openat(dirfd, de->d_name,
                                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (sub >= 0)
                                r = walk(sub, path, depth + 1, s);
                }
                free(path);
        }
        closedir(d);
        return r;
}

static int entry_cmp(const void *a, const void *b)
{
        return strcmp(((const struct entry *)a)->path, ((const struct entry *)b)->path);
}

static int snapshot_take(const char *workspace, struct snapshot *s)
{
        *s = (struct snapshot){0};
        int fd = open(workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = walk(fd, "", 0, s);
        if (r == 0 && s->n > 1)
                qsort(s->v, s->n, sizeof(*s->v), entry_cmp);
        return r;
}

/* The files of after that are not in before, or differ in size, time or inode. */
static json_t *files_written(const struct snapshot *before, const struct snapshot *after)
{
        json_t *list = json_array();
        for (size_t i = 0; list && i < after->n; i++) {
                const struct entry *e = &after->v[i];
                const struct entry *old =
                    before->n ? bsearch(e, before->v, before->n, sizeof(*e), entry_cmp) : NULL;
                if (old && old->size == e->size && old->mtime_ns == e->mtime_ns &&
                    old->ino == e->ino)
                        continue;
                json_array_append_new(
                    list, json_pack("{s:s, s:I}", "path", e->path, "size", (json_int_t)e->size));
        }
        return list;
}

/* ---- the disk cap -------------------------------------------------------------------- */

struct usage {
        uint64_t bytes;   /* blocks in use (st_blocks * 512) of every entry */
        uint64_t entries; /* files, directories, links, ... */
        bool too_deep;    /* nested deeper than DISK_MAX_DEPTH: not all was counted */
};

/* Adds what the directory dirfd (closed here) holds to u, without following symlinks; stops
 * early once u passes limit (0: none) or DISK_MAX_ENTRIES. */
static void usage_walk(int dirfd, int depth, uint64_t limit, struct usage *u)
{
        DIR *d = fdopendir(dirfd);
        if (!d) {
                close(dirfd);
                return;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                struct stat st;
                if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue;
                u->bytes += (uint64_t)st.st_blocks * 512;
                u->entries++;
                if ((limit && u->bytes > limit) || u->entries > DISK_MAX_ENTRIES)
                        break;
                if (!S_ISDIR(st.st_mode))
                        continue;
                if (depth >= DISK_MAX_DEPTH) {
                        u->too_deep = true;
                        break;
                }
                int sub =
                    openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0)
                        usage_walk(sub, depth + 1, limit, u);
                if ((limit && u->bytes > limit) || u->entries > DISK_MAX_ENTRIES || u->too_deep)
                        break;
        }
        closedir(d);
}

static struct usage workspace_usage(const char *workspace, uint64_t limit)
{
        struct usage u = {0};
        int fd = open(workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0)
                usage_walk(fd, 0, limit, &u);
        return u;
}

static int64_t mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- jobs --------------------------------------------------------------------------- */

struct sandbox_tool_job {
        const struct sandbox_tools *t;
        struct sandbox_proc *proc;
        char *workspace;
        char *artifact_dir;
        json_t *keep;
        uint64_t file_bytes;
        size_t output_bytes;
        struct snapshot before;
        uint64_t disk_cap;    /* the call's workspace_bytes: max(cap, use before the call) */
        uint64_t disk_limit;  /* the cap as asked (for the message) */
        int64_t next_disk_ms; /* the next look at the workspace while it runs */
        bool disk_full;       /* killed at the cap */
        struct usage disk;    /* what the look that found it full saw */
};

void sandbox_tool_job_free(struct sandbox_tool_job *job)
{
        if (!job)
                return;
        sandbox_proc_free(job->proc);
        free(job->workspace);
        free(job->artifact_dir);
        json_decref(job->keep);
        snapshot_free(&job->before);
        free(job);
}

struct sandbox_proc *sandbox_tool_job_proc(struct sandbox_tool_job *job)
{
        return job->proc;
}

static const struct language *find_language(const struct sandbox_tools *t, const char *name)
{
        for (size_t i = 0; i < t->n_langs; i++)
                if (strcmp(t->langs[i].def->language, name) == 0)
                        return &t->langs[i];
        return NULL;
}

static void list_languages(const struct sandbox_tools *t, char *out, size_t size)
{
        out[0] = '\0';
        size_t used = 0;
        for (size_t i = 0; i < t->n_langs && used < size; i++) {
                int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "",
                                 t->langs[i].def->language);
                if (n < 0)
                        break;
                used += (size_t)n;
        }
        if (t->n_langs == 0)
                str_copy(out, size, "none (no interpreter is installed)");
}

/* Checks the arguments both tools share and writes "files" into the workspace. */
static int common_arguments(const struct sandbox_tools *t, const struct sandbox_tool_call *call,
                            const json_t *args, const char *tool, int64_t *wall_ms, char **error)
{
        static const char *const known_shell[] = {"command", "stdin", "files", "keep", "timeout"};
        static const char *const known_code[] = {"language", "code", "args",   "stdin",
                                                 "files",    "keep", "timeout"};
        bool shell = strcmp(tool, "shell") == 0;
        const char *key;
        json_t *value;
        json_object_foreach ((json_t *)args, key, value) {
                const char *const *known = shell ? known_shell : known_code;
                size_t n = shell ? sizeof(known_shell) / sizeof(known_shell[0])
                                 : sizeof(known_code) / sizeof(known_code[0]);
                bool found = false;
                for (size_t i = 0; i < n && !found; i++)
                        found = strcmp(known[i], key) == 0;
                if (!found) {
                        set_error(error, "%s has no argument \"%s\"", tool, key);
                        return -EINVAL;
                }
        }
        json_t *stdin_json = json_object_get(args, "stdin");
        if (stdin_json && !json_is_string(stdin_json)) {
                set_error(error, "%s: \"stdin\" must be a string", tool);
                return -EINVAL;
        }
        json_t *files = json_object_get(args, "files");
        if (files && (!json_is_object(files) || json_object_size(files) > MAX_FILES)) {
                set_error(error, "%s: \"files\" must be an object of at most %d {path: text}", tool,
                          MAX_FILES);
                return -EINVAL;
        }
        json_object_foreach (files, key, value) {
                if (!json_is_string(value) || !sandbox_valid_name(key)) {
                        set_error(error,
                                  "%s: file \"%s\" must be a relative path without \"..\" "
                                  "with text content",
                                  tool, key);
                        return -EINVAL;
                }
        }
        json_t *keep = json_object_get(args, "keep");
        if (keep && (!json_is_array(keep) || json_array_size(keep) > MAX_FILES)) {
                set_error(error, "%s: \"keep\" must be an array of at most %d paths", tool,
                          MAX_FILES);
                return -EINVAL;
        }
        size_t i;
        json_array_foreach (keep, i, value) {
                if (!json_is_string(value) || !sandbox_valid_name(json_string_value(value))) {
                        set_error(error,
                                  "%s: \"keep\" entries must be relative paths in the "
                                  "workspace, without \"..\"",
                                  tool);
                        return -EINVAL;
                }
        }
        if (keep && json_array_size(keep) > 0 && !call->artifact_dir) {
                set_error(error, "%s: this step cannot keep files", tool);
                return -EINVAL;
        }
        *wall_ms = call->limits.wall_ms;
        json_t *timeout = json_object_get(args, "timeout");
        if (timeout) {
                int64_t ms;
                if (!json_is_string(timeout) ||
                    duration_parse_ms(json_string_value(timeout), &ms) < 0 || ms <= 0) {
                        set_error(error, "%s: \"timeout\" must be a duration such as \"30s\"",
                                  tool);
                        return -EINVAL;
                }
                if (*wall_ms == 0 || ms < *wall_ms)
                        *wall_ms = ms;
        }
        json_object_foreach (files, key, value) {
                int r =
                    sandbox_workspace_write(t->sb, call->workspace, key, json_string_value(value),
                                            json_string_length(value));
                if (r < 0) {
                        set_error(error, "%s: could not write \"%s\" into the workspace: %s", tool,
                                  key, strerror(-r));
                        return r;
                }
        }
        return 0;
}

int sandbox_tool_start(const struct sandbox_tools *t, const struct sandbox_tool_call *call,
                       const char *tool, const json_t *args, struct sandbox_tool_job **out,
                       char **error)
{
        *out = NULL;
        if (!sandbox_tools_has(tool)) {
                set_error(error, "no tool \"%s\" here: shell or run_code", tool ? tool : "");
                return -EINVAL;
        }
        if (!json_is_object(args)) {
                set_error(error, "%s: the arguments must be an object", tool);
                return -EINVAL;
        }
        const char *argv[MAX_ARGS + 3] = {0};
        struct sandbox_file code = {0};
        if (strcmp(tool, "shell") == 0) {
                const char *command = json_string_value(json_object_get(args, "command"));
                if (!command || !command[0]) {
                        set_error(error, "shell: \"command\" is required (a command line for "
                                         "/bin/sh)");
                        return -EINVAL;
                }
                argv[0] = "/bin/sh";
                argv[1] = "-c";
                argv[2] = command;
        } else {
                const char *name = json_string_value(json_object_get(args, "language"));
                const struct language *lang = name ? find_language(t, name) : NULL;
                if (!lang) {
                        char list[256];
                        list_languages(t, list, sizeof(list));
                        set_error(error, "run_code: \"language\" must be one of: %s", list);
                        return -EINVAL;
                }
                json_t *code_json = json_object_get(args, "code");
                if (!json_is_string(code_json)) {
                        set_error(error, "run_code: \"code\" is required (the program text)");
                        return -EINVAL;
                }
                json_t *extra = json_object_get(args, "args");
                if (extra && (!json_is_array(extra) || json_array_size(extra) > MAX_ARGS)) {
                        set_error(error,
                                  "run_code: \"args\" must be an array of at most %d strings",
                                  MAX_ARGS);
                        return -EINVAL;
                }
                argv[0] = lang->interpreter;
                argv[1] = lang->def->file;
                size_t i;
                json_t *value;
                json_array_foreach (extra, i, value) {
                        if (!json_is_string(value)) {
                                set_error(error, "run_code: \"args\" must be strings");
                                return -EINVAL;
                        }
                        argv[2 + i] = json_string_value(value);
                }
                code = (struct sandbox_file){.path = lang->def->file,
                                             .data = json_string_value(code_json),
                                             .len = json_string_length(code_json)};
        }
        int64_t wall_ms;
        int r = common_arguments(t, call, args, tool, &wall_ms, error);
        if (r < 0)
                return r;

        struct sandbox_tool_job *job = calloc(1, sizeof(*job));
        if (!job)
                return -ENOMEM;
        job->t = t;
        job->workspace = strdup(call->workspace);
        job->artifact_dir = call->artifact_dir ? strdup(call->artifact_dir) : NULL;
        job->keep = json_incref(json_object_get(args, "keep"));
        job->file_bytes = call->limits.file_bytes;
        job->output_bytes = call->limits.output_bytes;
        job->disk_limit = call->workspace_bytes;
        if (!job->workspace || (call->artifact_dir && !job->artifact_dir)) {
                sandbox_tool_job_free(job);
                return -ENOMEM;
        }
        r = snapshot_take(call->workspace, &job->before);
        if (r < 0) {
                set_error(error, "%s: cannot read the workspace %s: %s", tool, call->workspace,
                          strerror(-r));
                sandbox_tool_job_free(job);
                return r;
        }
        if (job->disk_limit) {
                /* a workspace over the cap already (a call killed at it) may still shrink:
                 * only growing past both is stopped */
                struct usage u = workspace_usage(call->workspace, 0);
                job->disk_cap = u.bytes > job->disk_limit ? u.bytes : job->disk_limit;
                job->next_disk_ms = mono_ms() + DISK_CHECK_MS;
        }

        /* the environment: the tools' base, then the caller's entries */
        const char *envp[64];
        size_t n_env = 0;
        for (const char *const *e = tool_env; *e; e++)
                envp[n_env++] = *e;
        for (const char *const *e = call->envp; e && *e && n_env < 63; e++)
                envp[n_env++] = *e;
        envp[n_env] = NULL;

        json_t *stdin_json = json_object_get(args, "stdin");
        struct sandbox_spec spec = {
            .argv = argv,
            .envp = envp,
            .workspace = call->workspace,
            .files = code.path ? &code : NULL,
            .n_files = code.path ? 1 : 0,
            .stdin_data = json_string_value(stdin_json),
            .stdin_len = stdin_json ? json_string_length(stdin_json) : 0,
            .limits = call->limits,
        };
        spec.limits.wall_ms = wall_ms;
        r = sandbox_spawn(t->sb, &spec, SANDBOX_CAPTURE, &job->proc, error);
        if (r < 0) {
                sandbox_tool_job_free(job);
                return r;
        }
        *out = job;
        return 0;
}

int sandbox_tool_job_poll_fds(const struct sandbox_tool_job *job, struct pollfd *fds,
                              int *timeout_ms)
{
        int n = sandbox_proc_poll_fds(job->proc, fds, timeout_ms);
        if (job->disk_cap && !job->disk_full && !sandbox_proc_result(job->proc)) {
                int64_t left = job->next_disk_ms - mono_ms();
                int t = left < 0 ? 0 : left > DISK_CHECK_MS ? DISK_CHECK_MS : (int)left;
                if (*timeout_ms < 0 || t < *timeout_ms)
                        *timeout_ms = t;
        }
        return n;
}

/* Whether the workspace is past the job's cap (then the job is marked and killed). */
static bool disk_check(struct sandbox_tool_job *job)
{
        struct usage u = workspace_usage(job->workspace, job->disk_cap);
        if (u.bytes <= job->disk_cap && u.entries <= DISK_MAX_ENTRIES && !u.too_deep)
                return false;
        job->disk_full = true;
        job->disk = u;
        return true;
}

int sandbox_tool_job_step(struct sandbox_tool_job *job)
{
        int r = sandbox_proc_step(job->proc);
        if (r != 0 || !job->disk_cap || job->disk_full)
                return r;
        if (mono_ms() >= job->next_disk_ms) {
                job->next_disk_ms = mono_ms() + DISK_CHECK_MS;
                if (disk_check(job)) {
                        sandbox_proc_kill(job->proc);
                        r = sandbox_proc_step(job->proc);
                }
        }
        return r;
}

/* Copies the workspace file name to artifact_dir/name; adds the artifact or the error. */
static int keep_file(struct sandbox_tool_job *job, int ws_fd, const char *name, json_t *artifacts,
                     json_t *errors)
{
        int in = sandbox_open_beneath(ws_fd, name, O_RDONLY | O_NONBLOCK, 0);
        const char *problem = NULL;
        struct stat st;
        if (in < 0)
                problem = in == -ENOENT  ? "no such file in the workspace"
                          : in == -ELOOP ? "a symlink (not followed)"
                          : in == -EXDEV ? "outside the workspace"
                                         : "cannot be opened";
        else if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode))
                problem = "not a regular file";
        else if ((uint64_t)st.st_size > job->file_bytes)
                problem = "larger than the file size limit";
        if (problem) {
                if (in >= 0)
                        close(in);
                json_array_append_new(errors,
                                      json_pack("{s:s, s:s}", "name", name, "error", problem));
                return 0;
        }
        char *dst = str_printf("%s/%s", job->artifact_dir, name);
        char *dir = dst ? strdup(dst) : NULL;
        int r = dst && dir ? 0 : -ENOMEM;
        if (r == 0) {
                char *slash = strrchr(dir, '/');
                *slash = '\0';
                r = dir_make_parents(dir, 0700);
        }
        int out = -1;
        if (r == 0) {
                out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
                if (out < 0)
                        r = -errno;
        }
        long long copied = 0;
        char chunk[65536];
        while (r == 0) {
                ssize_t n = read(in, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if (n == 0)
                        break;
                if ((uint64_t)(copied + n) > job->file_bytes) {
                        r = -EFBIG;
                        break;
                }
                if (write(out, chunk, (size_t)n) != n) {
                        r = -EIO;
                        break;
                }
                copied += n;
        }
        close(in);
        if (out >= 0 && close(out) < 0 && r == 0)
                r = -errno;
        if (r == 0)
                json_array_append_new(artifacts, json_pack("{s:s, s:s, s:I}", "name", name, "path",
                                                           dst, "size", (json_int_t)copied));
        else
                json_array_append_new(errors,
                                      json_pack("{s:s, s:s}", "name", name, "error", strerror(-r)));
        free(dir);
        free(dst);
        return 0;
}

int sandbox_tool_job_finish(struct sandbox_tool_job *job, json_t **result, char **error)
{
        *result = NULL;
        const struct sandbox_result *res = sandbox_proc_result(job->proc);
        if (!res) {
                set_error(error, "the tool has not finished");
                return -EBUSY;
        }
        /* a call that ended before the next look may have passed the cap too */
        if (job->disk_cap && !job->disk_full)
                (void)disk_check(job);
        struct snapshot after;
        int r = snapshot_take(job->workspace, &after);
        if (r < 0) {
                set_error(error, "cannot read the workspace %s: %s", job->workspace, strerror(-r));
                return r;
        }
        json_t *written = files_written(&job->before, &after);
        snapshot_free(&after);
        json_t *artifacts = json_array();
        json_t *artifact_errors = json_array();
        int ws_fd = open(job->workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        size_t i;
        json_t *value;
        json_array_foreach (job->keep, i, value) {
                if (ws_fd >= 0)
                        keep_file(job, ws_fd, json_string_value(value), artifacts, artifact_errors);
        }
        if (ws_fd >= 0)
                close(ws_fd);
        size_t shown_max = job->output_bytes * 4 + 16;
        char *out = str_utf8_printable(res->out ? res->out : "", shown_max);
        char *err = str_utf8_printable(res->err ? res->err : "", shown_max);
        if (res->sandbox_failed) {
                set_error(error, "the sandbox could not start: %s", res->err);
                r = -EIO;
        } else if (!out || !err || !written || !artifacts || !artifact_errors) {
                r = -ENOMEM;
        } else {
                *result = json_pack(
                    "{s:i, s:b, s:I, s:s, s:b, s:s, s:b, s:O, s:O, s:O}", "exit_status",
                    res->exit_status, "timed_out", res->timed_out, "duration_ms",
                    (json_int_t)res->wall_ms, "stdout", out, "stdout_truncated", res->out_truncated,
                    "stderr", err, "stderr_truncated", res->err_truncated, "files_written", written,
                    "artifacts", artifacts, "artifact_errors", artifact_errors);
                r = *result ? 0 : -ENOMEM;
        }
        if (r == 0 && job->disk_full) {
                char *why =
                    job->disk.entries > DISK_MAX_ENTRIES
                        ? str_printf("the workspace passed %d files and directories: the call "
                                     "was stopped; remove files before writing more",
                                     DISK_MAX_ENTRIES)
                    : job->disk.too_deep
                        ? str_printf("the workspace is nested deeper than %d directories: the "
                                     "call was stopped; remove them before writing more",
                                     DISK_MAX_DEPTH)
                        : str_printf("the workspace passed its disk cap of %llu bytes (%llu in "
                                     "use): the call was stopped; remove files or write less",
                                     (unsigned long long)job->disk_limit,
                                     (unsigned long long)job->disk.bytes);
                if (!why || json_object_set_new(*result, "workspace_full", json_true()) < 0 ||
                    json_object_set_new(*result, "error", json_string(why)) < 0) {
                        json_decref(*result);
                        *result = NULL;
                        r = -ENOMEM;
                }
                free(why);
        }
        free(out);
        free(err);
        json_decref(written);
        json_decref(artifacts);
        json_decref(artifact_errors);
        return r;
}

int sandbox_tool_run(const struct sandbox_tools *t, const struct sandbox_tool_call *call,
                     const char *tool, const json_t *args, json_t **result, char **error)
{
        *result = NULL;
        struct sandbox_tool_job *job;
        int r = sandbox_tool_start(t, call, tool, args, &job, error);
        if (r < 0)
                return r;
        while ((r = sandbox_tool_job_step(job)) == 0) {
                struct pollfd fds[SANDBOX_POLL_MAX];
                int timeout;
                int n = sandbox_tool_job_poll_fds(job, fds, &timeout);
                if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
        }
        if (r == 1)
                r = sandbox_tool_job_finish(job, result, error);
        else
                set_error(error, "could not follow the tool's process: %s", strerror(-r));
        sandbox_tool_job_free(job);
        return r;
}
