/*
 * `agently schedule ...` and `agently trigger ...`: cron schedules and webhook triggers over
 * /v1/schedules and /v1/triggers (docs/triggers.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "cli.h"
#include "cli_args.h"
#include "client.h"
#include "strutil.h"

static const char *member(json_t *obj, const char *key)
{
        const char *s = json_string_value(json_object_get(obj, key));

        return s ? s : "-";
}

static int print_or_json(struct client_ctx *ctx, json_t *obj, void (*show)(json_t *))
{
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(obj, stdout);
        else
                show(obj);
        return CLI_EXIT_OK;
}

/* ---- schedules ---- */

static const struct cli_flag schedule_create_flags[] = {
    {"cron", 'c', "EXPR", "when: 5 fields (minute hour day month weekday) or 6 (seconds first)"},
    {"timezone", 'z', "ZONE", "an IANA time zone, e.g. Europe/Paris (default UTC)"},
    {"input", 'i', "JSON", "the runs' input: JSON, @file or @- (default {})"},
    {"missed", 0, "POLICY", "ticks missed while no dispatcher ran: skip (default) or catch_up_one"},
    {"description", 'd', "TEXT", "what it is for"},
    {"disabled", 0, NULL, "create it disabled"},
    {NULL, 0, NULL, NULL},
};

static void schedule_show_one(json_t *s)
{
        char next[64], last[64];

        client_reltime_json(s, "next_run_at", next, sizeof(next));
        client_reltime_json(s, "last_run_at", last, sizeof(last));
        client_kv(stdout, "id", member(s, "id"));
        client_kv(stdout, "workflow", member(s, "workflow"));
        client_kv(stdout, "cron", member(s, "cron"));
        client_kv(stdout, "timezone", member(s, "timezone"));
        client_kv(stdout, "enabled", json_is_true(json_object_get(s, "enabled")) ? "yes" : "no");
        client_kv(stdout, "missed", member(s, "missed"));
        client_kv(stdout, "next run",
                  json_is_true(json_object_get(s, "enabled")) ? member(s, "next_run_at")
                                                              : "- (disabled)");
        client_kv(stdout, "next run in", json_is_true(json_object_get(s, "enabled")) ? next : "-");
        client_kv(stdout, "last run", member(s, "last_run_at"));
        client_kv(stdout, "last run id", member(s, "last_run_id"));
        if (json_string_value(json_object_get(s, "last_error")))
                client_kv(stdout, "last error", member(s, "last_error"));
}

static int schedule_create(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_json_ json_t *body = json_object(), *resp = NULL, *input = NULL;
        const char *cron = client_arg(ctx, args, "cron"), *in = client_arg(ctx, args, "input");
        const char *zone = client_arg(ctx, args, "timezone");
        const char *missed = client_arg(ctx, args, "missed");
        const char *description = client_arg(ctx, args, "description");
        char err[512];
        int r;

        if (!cron)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL,
                                   "e.g. --cron '0 9 * * MON-FRI' --timezone Europe/Paris",
                                   "--cron is required");
        if (in && client_input_parse(in, "--input", &input, err, sizeof(err)) < 0)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL, "%s", err);
        if (!body || json_object_set_new(body, "workflow", json_string(args->positional[0])) < 0 ||
            json_object_set_new(body, "cron", json_string(cron)) < 0 ||
            (zone && json_object_set_new(body, "timezone", json_string(zone)) < 0) ||
            (missed && json_object_set_new(body, "missed", json_string(missed)) < 0) ||
            (description &&
             json_object_set_new(body, "description", json_string(description)) < 0) ||
            (input && json_object_set(body, "input", input) < 0) ||
            json_object_set_new(body, "enabled", json_boolean(!client_arg(ctx, args, "disabled"))) <
                0)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", "/v1/schedules", body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        return print_or_json(ctx, resp, schedule_show_one);
}

/* The next fire time, "-" while the schedule is disabled. */
static const char *next_run_cell(json_t *row, const char *key, char *buf, size_t size)
{
        if (!json_is_true(json_object_get(row, "enabled")))
                return "-";
        return client_cell_reltime(row, key, buf, size);
}

static const struct client_column schedule_columns[] = {
    {"ID", "id", NULL},
    {"WORKFLOW", "workflow", NULL},
    {"CRON", "cron", NULL},
    {"TIMEZONE", "timezone", NULL},
    {"ENABLED", "enabled", client_cell_yes_no},
    {"NEXT RUN", "next_run_at", next_run_cell},
    {"LAST RUN", "last_run_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int schedule_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/schedules", NULL, 0, -1, schedule_columns};

        return client_list(ctx, args, &list);
}

static int schedule_call(struct client_ctx *ctx, const char *method, const char *id, json_t *body,
                         const char *done)
{
        _cleanup_free_ char *path = client_path("/v1/schedules/%s", id);
        _cleanup_json_ json_t *resp = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, method, path, body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (done && ctx->output == CLIENT_OUTPUT_TABLE) {
                printf("schedule %s %s\n", id, done);
                return CLI_EXIT_OK;
        }
        return print_or_json(ctx, resp, schedule_show_one);
}

static int schedule_show(struct client_ctx *ctx, const struct cli_args *args)
{
        return schedule_call(ctx, "GET", args->positional[0], NULL, NULL);
}

static int schedule_rm(struct client_ctx *ctx, const struct cli_args *args)
{
        return schedule_call(ctx, "DELETE", args->positional[0], NULL, "removed");
}

static int schedule_enable(struct client_ctx *ctx, const struct cli_args *args, bool on)
{
        _cleanup_json_ json_t *body = json_pack("{s:b}", "enabled", on);

        return body ? schedule_call(ctx, "PATCH", args->positional[0], body, NULL)
                    : CLI_EXIT_FAILURE;
}

static int schedule_pause(struct client_ctx *ctx, const struct cli_args *args)
{
        return schedule_enable(ctx, args, false);
}

static int schedule_resume(struct client_ctx *ctx, const struct cli_args *args)
{
        return schedule_enable(ctx, args, true);
}

const struct client_command client_schedule_commands[] = {
    {"schedule", "create", "WORKFLOW --cron EXPR [--timezone ZONE] [--input JSON] [--missed P]",
     "start WORKFLOW on a cron schedule", 1, 1, schedule_create_flags, schedule_create},
    {"schedule", "list", "", "list schedules with their next fire time", 0, 0, NULL, schedule_list},
    {"schedule", "show", "ID", "show a schedule", 1, 1, NULL, schedule_show},
    {"schedule", "pause", "ID", "stop firing (disable)", 1, 1, NULL, schedule_pause},
    {"schedule", "resume", "ID", "fire again from the next tick (enable)", 1, 1, NULL,
     schedule_resume},
    {"schedule", "rm", "ID", "delete a schedule", 1, 1, NULL, schedule_rm},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};

/* ---- webhook triggers ---- */

static const struct cli_flag trigger_create_flags[] = {
    {"description", 'd', "TEXT", "what it is for"},
    {NULL, 0, NULL, NULL},
};

static void trigger_show_one(json_t *t)
{
        client_kv(stdout, "id", member(t, "id"));
        client_kv(stdout, "workflow", member(t, "workflow"));
        client_kv(stdout, "url", member(t, "url"));
        client_kv(stdout, "enabled", json_is_true(json_object_get(t, "enabled")) ? "yes" : "no");
        client_kv(stdout, "last fired", member(t, "last_fired_at"));
        client_kv(stdout, "last run id", member(t, "last_run_id"));
        if (json_string_value(json_object_get(t, "secret"))) {
                client_kv(stdout, "secret", member(t, "secret"));
                fprintf(stderr, "the secret is shown once: give it to the sender now (deliveries "
                                "are signed with it, Standard Webhooks style)\n");
        }
}

static int trigger_create(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_json_ json_t *body = json_object(), *resp = NULL;
        const char *description = client_arg(ctx, args, "description");
        int r;

        if (!body || json_object_set_new(body, "workflow", json_string(args->positional[0])) < 0 ||
            (description && json_object_set_new(body, "description", json_string(description)) < 0))
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", "/v1/triggers", body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        /* the path made absolute with the server the CLI talks to */
        _cleanup_free_ char *url = str_printf("%s%s", ctx->server, member(resp, "url"));
        if (url)
                json_object_set_new(resp, "url", json_string(url));
        return print_or_json(ctx, resp, trigger_show_one);
}

static const struct client_column trigger_columns[] = {
    {"ID", "id", NULL},   {"WORKFLOW", "workflow", NULL},
    {"URL", "url", NULL}, {"LAST FIRED", "last_fired_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int trigger_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/triggers", NULL, 0, -1, trigger_columns};

        return client_list(ctx, args, &list);
}

static int trigger_rm(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/triggers/%s", args->positional[0]);
        _cleanup_json_ json_t *resp = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "DELETE", path, NULL, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(resp, stdout);
        else
                printf("trigger %s removed\n", args->positional[0]);
        return CLI_EXIT_OK;
}

const struct client_command client_trigger_commands[] = {
    {"trigger", "create", "WORKFLOW [--description TEXT]",
     "a webhook URL that starts WORKFLOW (its secret is printed once)", 1, 1, trigger_create_flags,
     trigger_create},
    {"trigger", "list", "", "list webhook triggers", 0, 0, NULL, trigger_list},
    {"trigger", "rm", "ID", "delete a webhook trigger", 1, 1, NULL, trigger_rm},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};
