/*
 * The agently client: the `workflow`, `run`, `approval`, `secret`, `token` and `user`
 * commands, which talk to a running `agently api` over its REST API and never touch the
 * database. This header holds what every client command shares: the command table types,
 * the resolved configuration (server, token, output mode) and the request helper that turns
 * every failure into a printed message and an exit code (enum cli_exit in cli.h).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

#include "cli.h"
#include "cli_args.h"

#define CLIENT_DEFAULT_SERVER   "http://127.0.0.1:8080"
#define CLIENT_DEFAULT_DATA_DIR ".agently"

enum client_output {
        CLIENT_OUTPUT_TABLE,
        CLIENT_OUTPUT_JSON,
};

/* Global options, accepted by every client command anywhere after the noun. */
struct client_global {
        const char *server;
        const char *token;
        const char *data_dir;
        const char *output;
        bool help;
};

struct client_command;

/* Resolved configuration for one invocation. Owns server, token and token_source. */
struct client_ctx {
        char *server; /* base URL, no trailing slash */
        char *token;  /* NULL: requests go without Authorization */
        char *token_source;
        enum client_output output;
        bool color;                       /* stdout is a TTY and NO_COLOR is unset */
        const char *name;                 /* "run list", for messages */
        const struct client_command *cmd; /* the command being run */
        void *curl;                       /* CURL *, created on first request */
        long timeout_ms;                  /* whole-request timeout for ordinary calls */
        long retry_ms; /* GETs retry an unreachable server this long (0: fail at once) */
        bool replayed; /* the last answer carried Idempotent-Replayed: true */
};

struct client_command {
        const char *noun;
        const char *verb;
        const char *usage; /* positionals and flags after "agently NOUN VERB" */
        const char *summary;
        int min_args, max_args;
        const struct cli_flag *flags; /* terminated by an entry with name NULL */
        int (*run)(struct client_ctx *ctx, const struct cli_args *args);
};

/* The command tables of each noun (client_workflow.c, client_run.c, client_admin.c,
 * client_agent.c). */
extern const struct client_command client_workflow_commands[];
extern const struct client_command client_run_commands[];
extern const struct client_command client_approval_commands[];
extern const struct client_command client_secret_commands[];
extern const struct client_command client_token_commands[];
extern const struct client_command client_user_commands[];
extern const struct client_command client_schedule_commands[];
extern const struct client_command client_trigger_commands[];
extern const struct client_command client_agent_commands[];

/* `NOUN apply FILE` (client_workflow.c): POSTs the JSON definition in FILE (- for stdin) to
 * api_path and prints "NOUN NAME: created vN" or "unchanged (vN)"; its flags are
 * client_apply_flags. */
int client_apply_file(struct client_ctx *ctx, const struct cli_args *args, const char *api_path,
                      const char *noun);
extern const struct cli_flag client_apply_flags[];
/* `NOUN show NAME [--version N]` (client_workflow.c): GETs api_path/NAME (?version=N) and
 * prints the answer whole with -o json; else the version's name, number, time, digest and
 * description, then what show_definition prints of its definition (borrowed). Its flags are
 * client_show_flags. */
int client_show_definition(struct client_ctx *ctx, const struct cli_args *args,
                           const char *api_path,
                           int (*show_definition)(struct client_ctx *ctx, json_t *definition));
extern const struct cli_flag client_show_flags[];

/* ---- list commands (client_list.c) ---- */

#define CLIENT_LIST_COLUMNS_MAX 12  /* as struct client_table's headers */
#define CLIENT_LIST_CELL_MAX    256 /* the buffer a column's cell function writes into */

/* A column of a list's table: its header and the cell it shows for a row (a JSON object of
 * the page's data). cell NULL shows the row's string member key; otherwise cell makes the
 * text from the row (key is its argument), into buf of size bytes or pointing into the row.
 * A NULL or empty cell prints as "-". */
struct client_column {
        const char *header;
        const char *key;
        const char *(*cell)(json_t *row, const char *key, char *buf, size_t size);
};

/* Cells made from the row's member key: a relative time ("3m ago", "-"), "v<integer>", an
 * integer, "yes"/"no" for a boolean. */
const char *client_cell_reltime(json_t *row, const char *key, char *buf, size_t size);
const char *client_cell_version(json_t *row, const char *key, char *buf, size_t size);
const char *client_cell_integer(json_t *row, const char *key, char *buf, size_t size);
const char *client_cell_yes_no(json_t *row, const char *key, char *buf, size_t size);

/* A flag of a list command sent, when given, as a query parameter. */
struct client_filter {
        const char *flag;  /* "created-after" */
        const char *param; /* "created_after" */
};

/* A `NOUN list` command. All static data. */
struct client_list {
        const char *path;                    /* "/v1/agents" */
        const struct client_filter *filters; /* NULL, or ending with a NULL flag */
        int64_t limit_max;                   /* --limit's most (with --cursor: a paged list); 0: the
                                              * command has neither flag */
        int status_col;                      /* the column coloured as a status, -1 for none */
        const struct client_column *columns; /* ends with a NULL header */
};

/*
 * Fetches a list's page: the command's filters (NULL, or ending with a NULL flag) and, when
 * limit_max > 0, --limit (checked to be 1..limit_max) and --cursor
 * become path's query; one GET. With -o json the page is printed and *page is NULL;
 * otherwise *page is the page for the caller to print (caller decrefs). Returns CLI_EXIT_OK
 * or the exit code of a failure already reported.
 */
int client_list_page(struct client_ctx *ctx, const struct cli_args *args, const char *path,
                     const struct client_filter *filters, int64_t limit_max, json_t **page);

/* A list command whole: client_list_page, then the page's data as a table of list's columns
 * and, when the page has a next_cursor, the command for the next page on stderr. Returns a
 * cli_exit code. */
int client_list(struct client_ctx *ctx, const struct cli_args *args,
                const struct client_list *list);

/* ---- argument parsing (client_args.c) ---- */

/*
 * Parses argv (the tokens after "agently NOUN VERB") against the command's flags and the
 * global flags. On a usage error writes "agently NOUN VERB: <what>" into err and returns
 * -EINVAL; nothing else is allocated.
 */
int client_args_parse(const struct client_command *cmd, int argc, char **argv,
                      struct cli_args *args, struct client_global *global, char *err,
                      size_t err_size);

/* Index of flag `name` in cmd->flags, or -1. */
int client_flag_index(const struct client_command *cmd, const char *name);

/* The value of flag `name` of the running command (NULL when not given). */
const char *client_arg(const struct client_ctx *ctx, const struct cli_args *args, const char *name);

/* Parses an integer flag value within [min, max]; on failure prints a usage error naming
 * the flag and returns CLI_EXIT_USAGE. value NULL leaves *out untouched and returns 0. */
int client_flag_int(const struct client_ctx *ctx, const char *flag, const char *value, int64_t min,
                    int64_t max, int64_t *out);

/* Prints the help of one command (usage, flags, global flags). */
void client_command_help(const struct client_command *cmd, FILE *out);

/* Prints the global flags block shared by every help page. */
void client_global_help(FILE *out);

/* True when token is a global flag that takes a value (so the next token is not a verb). */
bool client_global_takes_value(const char *token);

/* ---- configuration (client_config.c) ---- */

/*
 * Resolves server, token and output from the global flags and the environment:
 * server: --server, AGENTLY_SERVER, http://127.0.0.1:8080;
 * token: --token, <--data-dir>/admin-token, AGENTLY_TOKEN, <AGENTLY_DATA_DIR>/admin-token,
 * ./.agently/admin-token. Returns 0 or a cli_exit code after printing why.
 */
int client_ctx_init(struct client_ctx *ctx, const struct client_global *global, const char *name);
void client_ctx_done(struct client_ctx *ctx);

/* ---- HTTP (client_http.c) ---- */

/*
 * One API call. path starts with "/v1/..." (already escaped, see client_path); body may be
 * NULL; headers is a NULL-terminated list of "Name: value" or NULL. On a 2xx answer returns
 * CLI_EXIT_OK and the parsed body in *out (NULL for an empty body; caller decrefs). On any
 * failure prints "error: ..." (and the API's hint) to stderr and returns the exit code:
 * 3 not found, 4 unauthorized, 5 conflict, 6 unreachable, 1 anything else.
 */
int client_call(struct client_ctx *ctx, const char *method, const char *path, json_t *body,
                const char *const *headers, json_t **out);

/* Like client_call, but also returns the HTTP status and leaves API errors unprinted for
 * statuses listed in quiet (0-terminated), handing the error body back in *out. */
int client_call_status(struct client_ctx *ctx, const char *method, const char *path, json_t *body,
                       const char *const *headers, const long *quiet, json_t **out, long *status);

/* Builds a path from fmt where each "%s" is replaced by the URL-escaped argument. Returns a
 * malloc'd string or NULL on allocation failure. Only %s is supported. */
char *client_path(const char *fmt, ...);

/* Appends "&name=value" (or "?name=value" first) with value escaped, to *url (realloc'd).
 * Returns 0 or -ENOMEM. value NULL is skipped. */
int client_query_add(char **url, const char *name, const char *value);

/* Prints "error: could not reach agently at URL: reason; is `agently up` running?" (with
 * -o json: the error object, code "unreachable", on stdout). */
void client_print_unreachable(struct client_ctx *ctx, const char *reason);

/*
 * Reports the command's failure, once, and returns exit_code. As text on stderr:
 * "agently NAME: MESSAGE" for a usage error (code "usage"), "error: MESSAGE" otherwise,
 * then "detail: ..." and "hint: ..." when given (either may be NULL). With -o json, the
 * API's error shape on stdout instead, {"error": {"code", "message", "detail", "hint"}}, so
 * a script reads a local failure and a server's the same way; the exit code is the same.
 */
int client_fail(const struct client_ctx *ctx, int exit_code, const char *code, const char *detail,
                const char *hint, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Sleeps ms milliseconds (restarting after signals). */
void client_sleep_ms(long ms);

/* Maps an HTTP status to an exit code. */
int client_exit_for_status(long status);

/* Prints an API error body ({"error": {...}}) as "error: message" / "hint: ..." on stderr;
 * with -o json, the body itself on stdout (a body without the error shape, e.g. a proxy's
 * page, becomes {"error": {"code": "http_error", ...}}). */
void client_print_api_error(struct client_ctx *ctx, long status, json_t *body);

/* Server-sent events: one parsed event. data is NUL-terminated; id may be NULL. */
struct client_sse_event {
        const char *id;
        const char *event;
        const char *data;
};

/* Incremental text/event-stream parser (the WHATWG rules: "field: value" lines, blank line
 * ends an event, ':' comments, multi-line data joined with '\n', CRLF/LF/CR endings). */
struct client_sse_parser {
        char *line;
        size_t line_len, line_cap;
        char *data;
        size_t data_len, data_cap;
        char id[128];
        bool has_id;
        char event[64];
        bool last_cr;
        /* return non-zero to stop parsing (the value is returned by feed) */
        int (*on_event)(const struct client_sse_event *ev, void *userdata);
        void *userdata;
};

void client_sse_init(struct client_sse_parser *p,
                     int (*on_event)(const struct client_sse_event *ev, void *userdata),
                     void *userdata);
/* Feeds bytes; returns 0, the callback's non-zero value, or -ENOBUFS past 1 MiB per event. */
int client_sse_feed(struct client_sse_parser *p, const char *data, size_t len);
void client_sse_done(struct client_sse_parser *p);

/* What client_stream returns besides a cli_exit code (positive, already printed). */
enum {
        CLIENT_STREAM_CLOSED = 0,     /* the server ended the stream */
        CLIENT_STREAM_STOPPED = -100, /* on_event returned non-zero */
        CLIENT_STREAM_DROPPED = -101, /* could not connect, or the connection broke */
};

/*
 * Streams GET path as server-sent events, calling on_event for each. last_event_id (may be
 * NULL) is sent as Last-Event-ID. A connection that stays silent for 45 s (the server sends
 * a heartbeat every 15 s) counts as dropped. On CLIENT_STREAM_DROPPED the reason is in
 * transport_error and nothing was printed, so the caller may reconnect; an HTTP error is
 * printed and returned as its exit code.
 */
int client_stream(struct client_ctx *ctx, const char *path, const char *last_event_id,
                  int (*on_event)(const struct client_sse_event *ev, void *userdata),
                  void *userdata, char *transport_error, size_t transport_error_size);

/* ---- output (client_output.c) ---- */

/* A table of strings printed with columns aligned to their widest cell. Owns its cells. */
struct client_table {
        size_t ncols;
        const char *headers[12];
        char **cells; /* nrows * ncols */
        size_t nrows, cap;
        int status_col; /* column coloured by run status, -1 for none */
};

void client_table_init(struct client_table *t, int status_col, const char *const *headers);
/* Adds a row of ncols strings (NULL prints as "-"); copies them. -ENOMEM on failure. */
int client_table_add(struct client_table *t, const char *const *cells);
void client_table_print(const struct client_table *t, FILE *out, bool color);
void client_table_free(struct client_table *t);

/* Display width of a UTF-8 string (code points; ESC sequences excluded). */
size_t client_display_width(const char *s);

/* Parses an RFC 3339 / Postgres timestamp into milliseconds since the epoch. */
int client_time_parse(const char *s, int64_t *out_ms);

/* "3m ago", "in 2h", "just now"; dates older than 30 days as "2026-01-02". */
void client_reltime(int64_t when_ms, int64_t now_ms, char *out, size_t size);

/* Compact durations: "250ms", "12.3s", "4m5s", "1h30m", "2d3h". */
void client_duration(int64_t ms, char *out, size_t size);

/* Milliseconds since the epoch from the real-time clock. */
int64_t client_now_ms(void);

/* Relative time of a JSON timestamp string member ("-" when absent or unparsable). */
void client_reltime_json(json_t *obj, const char *key, char *out, size_t size);

/* Duration between two timestamp members; to_key absent means "until now" (running). */
void client_duration_json(json_t *obj, const char *from_key, const char *to_key, char *out,
                          size_t size);

/* ANSI colour sequence for a run/node/approval status ("" when none applies). */
const char *client_status_color(const char *status);

/* "key:      value" lines of a detail view (value NULL prints "-"). */
void client_kv(FILE *out, const char *key, const char *value);

/* On a page with a next_cursor, tells on stderr how to get the next page. */
void client_more_hint(const struct client_ctx *ctx, json_t *page);

/* Pretty JSON with sorted keys and a trailing newline. */
void client_print_json(json_t *j, FILE *out);

/* A JSON value as a short string for a table cell: strings as-is, numbers formatted,
 * null/absent as NULL. Returns a pointer into buf or into the JSON. */
const char *client_json_cell(json_t *v, char *buf, size_t size);

/* ---- input (client_input.c) ---- */

#define CLIENT_INPUT_MAX (1 << 20)

/* Parses a JSON argument: inline JSON, "@file" (a file) or "@-" (stdin). On failure writes
 * why (with line and column for bad JSON) into err and returns -EINVAL/-errno. */
int client_input_parse(const char *spec, const char *flag_name, json_t **out, char *err,
                       size_t err_size);

/* Reads a secret value from fd: on a TTY prompts on stderr with echo off; strips one
 * trailing newline. Refuses an empty value (-ENODATA). Caller frees (and should wipe). */
int client_read_secret(int fd, const char *name, char **out, size_t *out_len);
