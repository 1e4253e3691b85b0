/*
 * `agently run ...`: start, list, show, follow and control runs over /v1/runs. `start`
 * prints the run id the moment the server has queued the run (the user may close the
 * laptop); `--wait` then polls the run until it is terminal. `logs --follow` tails the
 * server-sent event stream and, when the connection breaks, reconnects with Last-Event-ID
 * so every event is printed exactly once and in seq order.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "client.h"
#include "pgjson.h"
#include "strutil.h"

#define RUN_FOLLOW_RETRY_MS (5L * 60 * 1000)
#define RUN_EVENT_DATA_MAX  300

static const char *str_member(json_t *obj, const char *key)
{
        return json_string_value(json_object_get(obj, key));
}

static bool status_is_terminal(const char *status)
{
        return status && (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
                          strcmp(status, "canceled") == 0);
}

static int exit_for_final_status(const char *status)
{
        return status && strcmp(status, "completed") == 0 ? CLI_EXIT_OK : CLI_EXIT_RUN_FAILED;
}

static const char *colored(const struct client_ctx *ctx, const char *status, char *buf, size_t size)
{
        const char *c = client_status_color(status);

        if (!ctx->color || !*c || !status)
                return status;
        snprintf(buf, size, "%s%s\033[0m", c, status);
        return buf;
}

/* A short, one-line rendering of an error value: its message when it has one. */
static const char *error_text(json_t *err, char *buf, size_t size)
{
        const char *m = str_member(err, "message");

        if (m)
                return m;
        return client_json_cell(err, buf, size);
}

static char *idempotency_header(const char *key)
{
        return key ? str_printf("Idempotency-Key: %s", key) : NULL;
}

/* Polls the run until it is terminal; prints status changes on stderr. */
static int wait_for_run(struct client_ctx *ctx, const char *id, json_t **final)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s", id);
        _cleanup_free_ char *last = NULL;
        long delay = 200;
        int r;

        *final = NULL;
        if (!path)
                return CLI_EXIT_FAILURE;
        ctx->retry_ms = RUN_FOLLOW_RETRY_MS;
        for (;;) {
                json_t *run = NULL;
                r = client_call(ctx, "GET", path, NULL, NULL, &run);
                if (r != CLI_EXIT_OK)
                        return r;
                const char *status = str_member(run, "status");
                if (status && (!last || strcmp(last, status) != 0)) {
                        const char *reason = str_member(run, "wait_reason");
                        if (ctx->output == CLIENT_OUTPUT_TABLE)
                                fprintf(stderr, "%s%s%s\n", status, reason ? ": " : "",
                                        reason ? reason : "");
                        free(last);
                        last = strdup(status);
                }
                if (status_is_terminal(status)) {
                        *final = run;
                        return exit_for_final_status(status);
                }
                json_decref(run);
                client_sleep_ms(delay);
                delay = delay * 3 / 2 > 2000 ? 2000 : delay * 3 / 2;
        }
}

static void print_final(struct client_ctx *ctx, json_t *run)
{
        char dur[32];

        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(run, stdout);
                return;
        }
        client_duration_json(run, "started_at", "finished_at", dur, sizeof(dur));
        fprintf(stderr, "run %s %s after %s\n", str_member(run, "id"), str_member(run, "status"),
                dur);
        json_t *err = json_object_get(run, "error");
        if (err && !json_is_null(err)) {
                char buf[512];
                fprintf(stderr, "error: %s\n", error_text(err, buf, sizeof(buf)));
        }
}

static const struct cli_flag start_flags[] = {
    {"input", 'i', "JSON", "run input: a JSON object, @FILE, or @- for stdin (default {})"},
    {"version", 0, "N", "start version N instead of the latest"},
    {"idempotency-key", 0, "KEY", "retry-safe start: the same key returns the same run"},
    {"time-scale", 0, "N", "dry run: every wait of the run divided by N (86400: a day = 1 s)"},
    {"wait", 'w', NULL, "wait until the run ends (exit 0 completed, 7 failed or canceled)"},
    {NULL, 0, NULL, NULL},
};

/* --time-scale N as the body's "time_scale" number; the server checks its range. */
static int time_scale_member(struct client_ctx *ctx, const char *text, json_t *body)
{
        char *end = NULL;
        double scale;

        if (!text)
                return CLI_EXIT_OK;
        errno = 0;
        scale = strtod(text, &end);
        if (errno || end == text || *end || !(scale > 0))
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "--time-scale must be a number greater than 0, e.g. 86400 "
                                   "(a day of the workflow's waits takes a second)");
        if (json_object_set_new(body, "time_scale", json_real(scale)) < 0)
                return CLI_EXIT_FAILURE;
        return CLI_EXIT_OK;
}

static int run_start(struct client_ctx *ctx, const struct cli_args *args)
{
        const char *input = client_arg(ctx, args, "input");
        const char *version = client_arg(ctx, args, "version");
        _cleanup_free_ char *idem = idempotency_header(client_arg(ctx, args, "idempotency-key"));
        _cleanup_json_ json_t *body = json_object(), *resp = NULL, *final = NULL;
        const char *headers[2] = {idem, NULL};
        int64_t v = 0;
        char err[512];
        int r;

        if (!body)
                return CLI_EXIT_FAILURE;
        r = client_flag_int(ctx, "version", version, 1, INT32_MAX, &v);
        if (r)
                return r;
        if (json_object_set_new(body, "workflow", json_string(args->positional[0])) < 0)
                return CLI_EXIT_FAILURE;
        if (version && json_object_set_new(body, "version", json_integer(v)) < 0)
                return CLI_EXIT_FAILURE;
        if ((r = time_scale_member(ctx, client_arg(ctx, args, "time-scale"), body)))
                return r;
        if (input) {
                json_t *in = NULL;
                if (client_input_parse(input, "input", &in, err, sizeof(err)) < 0) {
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL, "%s", err);
                }
                if (!json_is_object(in)) {
                        json_decref(in);
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "--input must be a JSON object, e.g. '{\"url\": "
                                           "\"https://example.com\"}'");
                }
                json_object_set_new(body, "input", in);
        }
        r = client_call(ctx, "POST", "/v1/runs", body, idem ? headers : NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        const char *id = str_member(resp, "id");
        if (!id)
                return client_fail(ctx, CLI_EXIT_FAILURE, "invalid_response", NULL, NULL,
                                   "the server's answer has no run id");
        if (ctx->output == CLIENT_OUTPUT_TABLE) {
                printf("%s\n", id); /* alone on its line: `id=$(agently run start wf)` */
                fflush(stdout);
                if (ctx->replayed)
                        fprintf(stderr, "note: Idempotency-Key reused; this is the run it started "
                                        "before\n");
        } else if (!client_arg(ctx, args, "wait")) {
                client_print_json(resp, stdout);
        }
        if (!client_arg(ctx, args, "wait"))
                return CLI_EXIT_OK;
        r = wait_for_run(ctx, id, &final);
        if (final)
                print_final(ctx, final);
        return r;
}

static const struct cli_flag list_flags[] = {
    {"status", 's', "STATUS", "only runs with this status (queued, running, ..., canceled)"},
    {"workflow", 0, "NAME", "only runs of this workflow"},
    {"created-after", 0, "TIME", "only runs created after TIME (RFC 3339)"},
    {"created-before", 0, "TIME", "only runs created before TIME (RFC 3339)"},
    {"limit", 'n', "N", "at most N runs (1-200, default 50)"},
    {"cursor", 0, "CURSOR", "continue after a previous page"},
    {NULL, 0, NULL, NULL},
};

/* "NAME vN": the workflow and the version the run started with. */
static const char *workflow_cell(json_t *run, const char *key, char *buf, size_t size)
{
        snprintf(buf, size, "%s v%lld", str_member(run, key),
                 (long long)json_integer_value(json_object_get(run, "workflow_version")));
        return buf;
}

static const char *duration_cell(json_t *run, const char *key, char *buf, size_t size)
{
        (void)key;
        client_duration_json(run, "started_at", "finished_at", buf, size);
        return buf;
}

static const char *cost_cell(json_t *run, const char *key, char *buf, size_t size)
{
        snprintf(buf, size, "$%.4f", json_number_value(json_object_get(run, key)));
        return buf;
}

static const struct client_column run_columns[] = {
    {"ID", "id", NULL},
    {"WORKFLOW", "workflow", workflow_cell},
    {"STATUS", "status", NULL},
    {"CREATED", "created_at", client_cell_reltime},
    {"DURATION", NULL, duration_cell},
    {"COST", "cost_usd", cost_cell},
    {NULL, NULL, NULL},
};

static int run_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const char *const statuses[] = {"queued", "running",   "waiting", "needs_input",
                                               "paused", "completed", "failed",  "canceled"};
        static const struct client_filter filters[] = {
            {"status", "status"},
            {"workflow", "workflow"},
            {"created-after", "created_after"},
            {"created-before", "created_before"},
            {NULL, NULL},
        };
        static const struct client_list list = {"/v1/runs", filters, 200, 2, run_columns};
        const char *status = client_arg(ctx, args, "status");

        if (status) {
                bool ok = false;
                for (size_t i = 0; i < ELEMENTSOF(statuses); i++)
                        ok = ok || strcmp(status, statuses[i]) == 0;
                if (!ok)
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "bad --status '%s'; use queued, running, waiting, "
                                           "needs_input, paused, completed, failed or canceled",
                                           status);
        }
        return client_list(ctx, args, &list);
}

/* One row per node state (its latest attempt). */
static void print_nodes(struct client_ctx *ctx, json_t *nodes)
{
        struct client_table t;
        size_t i;
        json_t *node;

        client_table_init(
            &t, 1,
            (const char *[]){"NODE", "STATUS", "ATTEMPT", "STARTED", "DURATION", "ERROR", NULL});
        json_array_foreach (nodes, i, node) {
                char attempt[32], nstarted[32], ndur[32], ebuf[256];
                json_t *e = json_object_get(node, "error");
                snprintf(attempt, sizeof(attempt), "%lld",
                         (long long)json_integer_value(json_object_get(node, "attempt")));
                client_reltime_json(node, "started_at", nstarted, sizeof(nstarted));
                client_duration_json(node, "started_at", "finished_at", ndur, sizeof(ndur));
                if (client_table_add(&t, (const char *[]){str_member(node, "node_id"),
                                                          str_member(node, "status"), attempt,
                                                          nstarted, ndur,
                                                          e && !json_is_null(e)
                                                              ? error_text(e, ebuf, sizeof(ebuf))
                                                              : NULL}) < 0)
                        break;
        }
        client_table_print(&t, stdout, ctx->color);
        client_table_free(&t);
}

static void print_run_detail(struct client_ctx *ctx, json_t *run)
{
        char buf[512], created[32], started[32], finished[32], dur[32], line[1024];
        const char *status = str_member(run, "status"), *reason = str_member(run, "wait_reason");
        json_t *v;

        client_kv(stdout, "id", str_member(run, "id"));
        snprintf(line, sizeof(line), "%s v%lld", str_member(run, "workflow"),
                 (long long)json_integer_value(json_object_get(run, "workflow_version")));
        client_kv(stdout, "workflow", line);
        snprintf(line, sizeof(line), "%s%s%s%s%s", colored(ctx, status, buf, sizeof(buf)),
                 reason ? " (" : "", reason ? reason : "", reason ? ")" : "",
                 json_is_true(json_object_get(run, "cancel_requested")) &&
                         !status_is_terminal(status)
                     ? ", cancel requested"
                 : json_is_true(json_object_get(run, "pause_requested")) ? ", pause requested"
                                                                         : "");
        client_kv(stdout, "status", line);
        snprintf(line, sizeof(line), "%lld",
                 (long long)json_integer_value(json_object_get(run, "attempt")));
        client_kv(stdout, "attempt", line);
        client_reltime_json(run, "created_at", created, sizeof(created));
        client_reltime_json(run, "started_at", started, sizeof(started));
        client_reltime_json(run, "finished_at", finished, sizeof(finished));
        client_kv(stdout, "created", created);
        client_kv(stdout, "started", started);
        client_kv(stdout, "finished", finished);
        if (json_is_string(json_object_get(run, "started_at")))
                client_duration_json(run, "started_at", "finished_at", dur, sizeof(dur));
        else
                snprintf(dur, sizeof(dur), "-");
        client_kv(stdout, "duration", dur);
        snprintf(line, sizeof(line), "$%.4f (%lld tokens in, %lld out)",
                 json_number_value(json_object_get(run, "cost_usd")),
                 (long long)json_integer_value(json_object_get(run, "tokens_in")),
                 (long long)json_integer_value(json_object_get(run, "tokens_out")));
        client_kv(stdout, "cost", line);
        if (str_member(run, "rerun_of")) {
                snprintf(line, sizeof(line), "%s%s%s", str_member(run, "rerun_of"),
                         str_member(run, "rerun_from_node") ? " from node " : "",
                         str_member(run, "rerun_from_node") ? str_member(run, "rerun_from_node")
                                                            : "");
                client_kv(stdout, "rerun of", line);
        }
        if (str_member(run, "parent_run_id"))
                client_kv(stdout, "parent", str_member(run, "parent_run_id"));
        v = json_object_get(run, "time_scale");
        if (json_is_number(v) && json_number_value(v) != 1.0) {
                snprintf(line, sizeof(line), "%g (every wait divided by it)", json_number_value(v));
                client_kv(stdout, "time scale", line);
        }
        v = json_object_get(run, "error");
        if (v && !json_is_null(v))
                client_kv(stdout, "error", error_text(v, buf, sizeof(buf)));
        v = json_object_get(run, "output");
        if (v && !json_is_null(v))
                client_kv(stdout, "output", client_json_cell(v, buf, sizeof(buf)));

        if (json_array_size(json_object_get(run, "nodes")) == 0)
                return;
        printf("\n");
        print_nodes(ctx, json_object_get(run, "nodes"));
        if (json_is_true(json_object_get(run, "nodes_truncated")))
                printf("(%zu of %lld nodes shown; all of them: agently run nodes %s)\n",
                       json_array_size(json_object_get(run, "nodes")),
                       (long long)json_integer_value(json_object_get(run, "nodes_total")),
                       str_member(run, "id"));
}

static const struct cli_flag nodes_flags[] = {
    {"limit", 'n', "N", "at most N nodes (1-1000, default 100)"},
    {"cursor", 0, "CURSOR", "continue after a previous page"},
    {NULL, 0, NULL, NULL},
};

/* Every node's latest attempt, a page at a time in node id order (for runs with more nodes
 * than `run show` lists). */
static int run_nodes(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s/nodes", args->positional[0]);
        _cleanup_json_ json_t *page = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_list_page(ctx, args, path, NULL, 1000, &page);
        if (r != CLI_EXIT_OK || !page)
                return r;
        print_nodes(ctx, json_object_get(page, "data"));
        const char *cursor = json_string_value(json_object_get(page, "next_cursor"));
        if (cursor && *cursor)
                fprintf(stderr, "(more: agently run nodes %s --cursor %s)\n", args->positional[0],
                        cursor);
        return CLI_EXIT_OK;
}

static int run_show(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s", args->positional[0]);
        _cleanup_json_ json_t *run = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "GET", path, NULL, NULL, &run);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(run, stdout);
        else
                print_run_detail(ctx, run);
        return CLI_EXIT_OK;
}

/* ---- logs ---- */

struct follow_state {
        struct client_ctx *ctx;
        int64_t last_seq;
        char *final_status; /* from the stream's `end` event */
        bool connected;
};

static void print_event(struct client_ctx *ctx, json_t *ev)
{
        char when[32] = "", node[160] = "-", data[RUN_EVENT_DATA_MAX + 8] = "";
        const char *level = str_member(ev, "level"), *kind = str_member(ev, "kind");
        const char *message = str_member(ev, "message"), *node_id = str_member(ev, "node_id");
        json_t *attempt = json_object_get(ev, "attempt"), *payload = json_object_get(ev, "data");
        int64_t ms;

        if (ctx->output == CLIENT_OUTPUT_JSON) {
                _cleanup_free_ char *s = json_dumps(ev, JSON_COMPACT | JSON_SORT_KEYS);
                printf("%s\n", s ? s : "{}");
                fflush(stdout);
                return;
        }
        if (client_time_parse(str_member(ev, "created_at"), &ms) == 0) {
                time_t t = (time_t)(ms / 1000);
                struct tm tm;
                localtime_r(&t, &tm);
                size_t n = strftime(when, sizeof(when), "%H:%M:%S", &tm);
                snprintf(when + n, sizeof(when) - n, ".%03d", (int)(ms % 1000));
        }
        if (node_id && json_is_integer(attempt))
                snprintf(node, sizeof(node), "%s#%lld", node_id,
                         (long long)json_integer_value(attempt));
        else if (node_id)
                snprintf(node, sizeof(node), "%s", node_id);
        if (payload && !json_is_null(payload) &&
            !(json_is_object(payload) && json_object_size(payload) == 0)) {
                _cleanup_free_ char *s =
                    json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
                if (s && strlen(s) > RUN_EVENT_DATA_MAX)
                        snprintf(data, sizeof(data), "%.*s...", RUN_EVENT_DATA_MAX, s);
                else if (s)
                        snprintf(data, sizeof(data), "%s", s);
        }
        const char *lc = level && strcmp(level, "error") == 0  ? "\033[31m"
                         : level && strcmp(level, "warn") == 0 ? "\033[33m"
                                                               : "";
        printf("%5lld  %s  %s%-5s%s  %-16s  %-18s  %s%s%s\n",
               (long long)json_integer_value(json_object_get(ev, "seq")), when,
               ctx->color ? lc : "", level ? level : "-", ctx->color && *lc ? "\033[0m" : "", node,
               kind ? kind : "-", message ? message : "", message && *data ? "  " : "", data);
        fflush(stdout);
}

/* Prints ev unless it was printed before (seq <= last): the no-duplicates rule of resume. */
static void print_new_event(struct follow_state *s, json_t *ev)
{
        json_t *seq = json_object_get(ev, "seq");

        if (json_is_integer(seq)) {
                if (json_integer_value(seq) <= s->last_seq)
                        return;
                s->last_seq = json_integer_value(seq);
        }
        print_event(s->ctx, ev);
}

static int on_stream_event(const struct client_sse_event *e, void *userdata)
{
        struct follow_state *s = userdata;
        /* the event's data is the database's own JSON text, relayed as it is (api_sse.c) */
        _cleanup_json_ json_t *ev = pgjson_loads(e->data, 0, NULL);

        s->connected = true;
        if (strcmp(e->event, "end") == 0) {
                const char *status = str_member(ev, "status");
                free(s->final_status);
                s->final_status = strdup(status ? status : "");
                return 1;
        }
        if (!json_is_object(ev)) {
                if (s->ctx->output == CLIENT_OUTPUT_TABLE)
                        printf("%s\n", e->data);
                return 0;
        }
        print_new_event(s, ev);
        return 0;
}

static int follow(struct client_ctx *ctx, const char *id, struct follow_state *s)
{
        long backoff = 200, waited = 0;
        bool ever_connected = false, warned = false;
        char reason[256];

        for (;;) {
                _cleanup_free_ char *path = client_path("/v1/runs/%s/events/stream", id);
                char last[32];
                int r;

                if (!path)
                        return CLI_EXIT_FAILURE;
                snprintf(last, sizeof(last), "%lld", (long long)s->last_seq);
                s->connected = false;
                r = client_stream(ctx, path, last, on_stream_event, s, reason, sizeof(reason));
                if (r == CLIENT_STREAM_STOPPED) {
                        if (warned && ctx->output == CLIENT_OUTPUT_TABLE)
                                fprintf(stderr, "note: reconnected\n");
                        fprintf(stderr, "run %s %s\n", id, s->final_status);
                        return exit_for_final_status(s->final_status);
                }
                if (r > 0)
                        return r; /* an API error, printed */
                if (s->connected) {
                        ever_connected = true;
                        waited = 0;
                        backoff = 200;
                }
                if (!ever_connected && r == CLIENT_STREAM_DROPPED && waited == 0 && !warned) {
                        client_print_unreachable(ctx, reason);
                        return CLI_EXIT_UNAVAILABLE;
                }
                if (waited >= RUN_FOLLOW_RETRY_MS) {
                        client_print_unreachable(ctx, reason[0] ? reason
                                                                : "the stream keeps "
                                                                  "closing");
                        return CLI_EXIT_UNAVAILABLE;
                }
                if (!warned) {
                        fprintf(stderr, "warning: event stream interrupted (%s); reconnecting\n",
                                r == CLIENT_STREAM_DROPPED ? reason : "closed by the server");
                        warned = true;
                }
                client_sleep_ms(backoff);
                waited += backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
        }
}

static const struct cli_flag logs_flags[] = {
    {"follow", 'f', NULL, "stream new events until the run ends (reconnects on its own)"},
    {"after", 0, "SEQ", "only events after seq SEQ"},
    {NULL, 0, NULL, NULL},
};

static int run_logs(struct client_ctx *ctx, const struct cli_args *args)
{
        const char *id = args->positional[0];
        struct follow_state s = {.ctx = ctx};
        int r;

        r = client_flag_int(ctx, "after", client_arg(ctx, args, "after"), 0, INT64_MAX,
                            &s.last_seq);
        if (r)
                return r;
        if (client_arg(ctx, args, "follow")) {
                r = follow(ctx, id, &s);
                free(s.final_status);
                return r;
        }
        for (;;) {
                _cleanup_free_ char *path = client_path("/v1/runs/%s/events", id);
                _cleanup_json_ json_t *page = NULL;
                char after[32];
                size_t i;
                json_t *ev;

                snprintf(after, sizeof(after), "%lld", (long long)s.last_seq);
                if (!path || client_query_add(&path, "after", after) < 0 ||
                    client_query_add(&path, "limit", "1000") < 0)
                        return CLI_EXIT_FAILURE;
                r = client_call(ctx, "GET", path, NULL, NULL, &page);
                if (r != CLI_EXIT_OK)
                        return r;
                json_t *data = json_object_get(page, "data");
                json_array_foreach (data, i, ev)
                        print_new_event(&s, ev);
                if (json_array_size(data) == 0 || json_is_true(json_object_get(page, "terminal")))
                        return CLI_EXIT_OK;
        }
}

/* ---- control ---- */

static int run_control(struct client_ctx *ctx, const struct cli_args *args, const char *verb)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s/", args->positional[0]);
        _cleanup_free_ char *full = path ? str_printf("%s%s", path, verb) : NULL;
        _cleanup_json_ json_t *run = NULL;
        char buf[64];
        int r;

        if (!full)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", full, NULL, NULL, &run);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(run, stdout);
                return CLI_EXIT_OK;
        }
        const char *status = str_member(run, "status");
        bool cancel = json_is_true(json_object_get(run, "cancel_requested"));
        bool pause = json_is_true(json_object_get(run, "pause_requested"));
        printf("run %s: %s%s\n", str_member(run, "id"), colored(ctx, status, buf, sizeof(buf)),
               strcmp(verb, "cancel") == 0 && cancel && !status_is_terminal(status)
                   ? " (cancel requested; the worker stops it at its next heartbeat)"
               : strcmp(verb, "pause") == 0 && pause && strcmp(status ? status : "", "paused") != 0
                   ? " (pause requested; the worker parks it at its next heartbeat)"
                   : "");
        return CLI_EXIT_OK;
}

static int run_cancel(struct client_ctx *ctx, const struct cli_args *args)
{
        return run_control(ctx, args, "cancel");
}

static int run_pause(struct client_ctx *ctx, const struct cli_args *args)
{
        return run_control(ctx, args, "pause");
}

static int run_resume(struct client_ctx *ctx, const struct cli_args *args)
{
        return run_control(ctx, args, "resume");
}

static const struct cli_flag rerun_flags[] = {
    {"from", 0, "NODE", "re-execute NODE and everything after it; reuse earlier outputs"},
    {"idempotency-key", 0, "KEY", "retry-safe rerun: the same key returns the same new run"},
    {"wait", 'w', NULL, "wait until the new run ends (exit 0 completed, 7 failed or canceled)"},
    {NULL, 0, NULL, NULL},
};

static int run_rerun(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s/rerun", args->positional[0]);
        _cleanup_free_ char *idem = idempotency_header(client_arg(ctx, args, "idempotency-key"));
        _cleanup_json_ json_t *body = json_object(), *resp = NULL, *final = NULL;
        const char *from = client_arg(ctx, args, "from"), *headers[2] = {idem, NULL};
        int r;

        if (!path || !body)
                return CLI_EXIT_FAILURE;
        if (from && json_object_set_new(body, "from_node", json_string(from)) < 0)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", path, body, idem ? headers : NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        const char *id = str_member(resp, "id");
        if (!id)
                return client_fail(ctx, CLI_EXIT_FAILURE, "invalid_response", NULL, NULL,
                                   "the server's answer has no run id");
        if (ctx->output == CLIENT_OUTPUT_TABLE) {
                printf("%s\n", id);
                fflush(stdout);
        } else if (!client_arg(ctx, args, "wait"))
                client_print_json(resp, stdout);
        if (!client_arg(ctx, args, "wait"))
                return CLI_EXIT_OK;
        r = wait_for_run(ctx, id, &final);
        if (final)
                print_final(ctx, final);
        return r;
}

static const struct cli_flag signal_flags[] = {
    {"data", 'd', "JSON", "the signal's payload: JSON, @FILE or @- (default {})"},
    {"idempotency-key", 0, "KEY", "retry-safe send: the same key stores the signal once"},
    {NULL, 0, NULL, NULL},
};

static int run_signal(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path =
            client_path("/v1/runs/%s/signals/%s", args->positional[0], args->positional[1]);
        _cleanup_free_ char *idem = idempotency_header(client_arg(ctx, args, "idempotency-key"));
        _cleanup_json_ json_t *payload = NULL, *resp = NULL;
        const char *data = client_arg(ctx, args, "data"), *headers[2] = {idem, NULL};
        char err[512];
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        if (args->npositional > 2) { /* `run signal ID NAME '{"by": "ann"}'` */
                if (data) {
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "give the payload once: as the third argument or "
                                           "with --data, not both");
                }
                data = args->positional[2];
        }
        if (data) {
                if (client_input_parse(data, "data", &payload, err, sizeof(err)) < 0) {
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL, "%s", err);
                }
        } else if (!(payload = json_object()))
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", path, payload, idem ? headers : NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(resp, stdout);
        else
                printf("signal %s sent to run %s%s\n", args->positional[1], args->positional[0],
                       ctx->replayed ? " (already sent with this Idempotency-Key)" : "");
        return CLI_EXIT_OK;
}

static const struct cli_flag resolve_flags[] = {
    {"node", 0, "NODE", "the node to answer for (default: the one that escalated)"},
    {"comment", 'c', "TEXT", "why; kept in the run's events"},
    {NULL, 0, NULL, NULL},
};

/* `run resolve ID retry|skip|stop`: a person's answer to a run waiting in needs_input. */
static int run_resolve(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/runs/%s/resolve", args->positional[0]);
        _cleanup_json_ json_t *body = NULL, *resp = NULL;
        const char *action = args->positional[1];
        char buf[64];
        int r;

        if (strcmp(action, "retry") != 0 && strcmp(action, "skip") != 0 &&
            strcmp(action, "stop") != 0) {
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "the answer must be retry, skip or stop, not '%s'", action);
        }
        body =
            json_pack("{s:s, s:s?, s:s?}", "action", action, "node", client_arg(ctx, args, "node"),
                      "comment", client_arg(ctx, args, "comment"));
        if (!path || !body)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", path, body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(resp, stdout);
                return CLI_EXIT_OK;
        }
        printf("run %s: %s (%s)\n", args->positional[0],
               colored(ctx, str_member(resp, "status"), buf, sizeof(buf)), action);
        return CLI_EXIT_OK;
}

const struct client_command client_run_commands[] = {
    {"run", "start", "WORKFLOW [--input JSON|@FILE|@-] [--wait]",
     "start a run; prints its id at once", 1, 1, start_flags, run_start},
    {"run", "list", "[--status S] [--workflow W] [--limit N]", "list runs, newest first", 0, 0,
     list_flags, run_list},
    {"run", "show", "ID", "show a run: status, timing, cost and its nodes", 1, 1, NULL, run_show},
    {"run", "nodes", "ID [--limit N] [--cursor C]",
     "list every node of a run (latest attempt), in node id order", 1, 1, nodes_flags, run_nodes},
    {"run", "logs", "ID [--follow]", "print a run's events (--follow: until it ends)", 1, 1,
     logs_flags, run_logs},
    {"run", "cancel", "ID", "cancel a run", 1, 1, NULL, run_cancel},
    {"run", "pause", "ID", "pause a run (a running one parks at its next heartbeat)", 1, 1, NULL,
     run_pause},
    {"run", "resume", "ID", "resume a paused run", 1, 1, NULL, run_resume},
    {"run", "rerun", "ID [--from NODE]", "start a new run of the same workflow and input", 1, 1,
     rerun_flags, run_rerun},
    {"run", "signal", "ID NAME [PAYLOAD | --data JSON]", "send a signal to a run's wait_event node",
     2, 3, signal_flags, run_signal},
    {"run", "resolve", "ID retry|skip|stop [--node N] [--comment C]",
     "answer a run waiting for a person (a node escalated)", 2, 2, resolve_flags, run_resolve},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};
