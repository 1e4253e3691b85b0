/*
 * The smaller nouns: `approval` (list, show, approve [with a tool call's edited arguments],
 * reject), `secret` (set, list, rm), `token` (create, list, revoke) and `user` (create, list; admin
 * only). Secret values are read from stdin only — never argv, where shell history and `ps` would
 * keep them — and are wiped from memory after sending. A new token is printed once, alone on
 * stdout, so `agently token create > file` captures exactly the token.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "client.h"
#include "strutil.h"

static const char *str_member(json_t *obj, const char *key)
{
        return json_string_value(json_object_get(obj, key));
}

/* GET path and print it as JSON, or hand the body to the caller to print. */
static int get_json(struct client_ctx *ctx, const char *path, json_t **out)
{
        int r = client_call(ctx, "GET", path, NULL, NULL, out);

        if (r == CLI_EXIT_OK && ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(*out, stdout);
                json_decref(*out);
                *out = NULL;
        }
        return r;
}

/* ---- approvals ---- */

static const struct cli_flag approval_list_flags[] = {
    {"status", 's', "STATUS", "pending, approved, rejected, expired or canceled"},
    {"limit", 'n', "N", "at most N approvals (1-200, default 50)"},
    {"cursor", 0, "CURSOR", "continue after a previous page"},
    {NULL, 0, NULL, NULL},
};

static const struct client_column approval_columns[] = {
    {"ID", "id", NULL},
    {"STATUS", "status", NULL},
    {"RUN", "run_id", NULL},
    {"NODE", "node_id", NULL},
    {"TITLE", "title", NULL},
    {"CREATED", "created_at", client_cell_reltime},
    {"EXPIRES", "expires_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int approval_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_filter filters[] = {{"status", "status"}, {NULL, NULL}};
        static const struct client_list list = {"/v1/approvals", filters, 200, 1, approval_columns};

        return client_list(ctx, args, &list);
}

static void print_approval(struct client_ctx *ctx, json_t *a)
{
        char created[32], decided[32], expires[32], buf[512];

        client_reltime_json(a, "created_at", created, sizeof(created));
        client_reltime_json(a, "decided_at", decided, sizeof(decided));
        client_reltime_json(a, "expires_at", expires, sizeof(expires));
        client_kv(stdout, "id", str_member(a, "id"));
        client_kv(stdout, "status", str_member(a, "status"));
        client_kv(stdout, "title", str_member(a, "title"));
        client_kv(stdout, "run", str_member(a, "run_id"));
        client_kv(stdout, "node", str_member(a, "node_id"));
        client_kv(stdout, "created", created);
        client_kv(stdout, "expires", expires);
        client_kv(stdout, "request",
                  client_json_cell(json_object_get(a, "request"), buf, sizeof(buf)));
        client_kv(stdout, "reviewers",
                  client_json_cell(json_object_get(a, "reviewers"), buf, sizeof(buf)));
        if (json_integer_value(json_object_get(a, "quorum")) > 1) {
                snprintf(buf, sizeof(buf), "%lld",
                         json_integer_value(json_object_get(a, "quorum")));
                client_kv(stdout, "quorum", buf);
        }
        if (json_array_size(json_object_get(a, "votes")) > 0)
                client_kv(stdout, "votes",
                          client_json_cell(json_object_get(a, "votes"), buf, sizeof(buf)));
        if (str_member(a, "decided_by")) {
                client_kv(stdout, "decided", decided);
                client_kv(stdout, "by", str_member(a, "decided_by"));
                client_kv(stdout, "via", str_member(a, "decided_via"));
                client_kv(stdout, "comment", str_member(a, "comment"));
        }
}

static int approval_show(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/approvals/%s", args->positional[0]);
        _cleanup_json_ json_t *a = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = get_json(ctx, path, &a);
        if (r == CLI_EXIT_OK && a)
                print_approval(ctx, a);
        return r;
}

static int decide(struct client_ctx *ctx, const struct cli_args *args, const char *decision)
{
        _cleanup_free_ char *path = client_path("/v1/approvals/%s/decide", args->positional[0]);
        _cleanup_json_ json_t *body = json_object(), *resp = NULL;
        const char *comment = client_arg(ctx, args, "comment");
        const char *arguments = client_arg(ctx, args, "arguments");
        char err[256];
        int r;

        if (!path || !body || json_object_set_new(body, "decision", json_string(decision)) < 0 ||
            json_object_set_new(body, "channel", json_string("cli")) < 0 ||
            (comment && json_object_set_new(body, "comment", json_string(comment)) < 0))
                return CLI_EXIT_FAILURE;
        if (arguments) { /* an agent's tool call, approved with corrected arguments */
                json_t *a = NULL;
                if (client_input_parse(arguments, "arguments", &a, err, sizeof(err)) < 0)
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL, "%s", err);
                if (!json_is_object(a)) {
                        json_decref(a);
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "--arguments must be a JSON object: the tool's "
                                           "arguments, e.g. '{\"method\": \"POST\", \"url\": "
                                           "\"https://example.com/\"}'");
                }
                json_object_set_new(body, "arguments", a);
        }
        r = client_call(ctx, "POST", path, body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(resp, stdout);
        else
                printf("approval %s: %s\n", args->positional[0], str_member(resp, "status"));
        return CLI_EXIT_OK;
}

static const struct cli_flag decide_flags[] = {
    {"comment", 'c', "TEXT", "a note kept with the decision"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_flag approve_flags[] = {
    {"comment", 'c', "TEXT", "a note kept with the decision"},
    {"arguments", 'a', "JSON",
     "an agent's tool call: run it with these arguments instead of the proposed ones (inline "
     "JSON, @file or @-)"},
    {NULL, 0, NULL, NULL},
};

static int approval_approve(struct client_ctx *ctx, const struct cli_args *args)
{
        return decide(ctx, args, "approve");
}

static int approval_reject(struct client_ctx *ctx, const struct cli_args *args)
{
        return decide(ctx, args, "reject");
}

static const struct cli_flag reassign_flags[] = {
    {"to", 't', "WHO", "the new reviewer: a user name or an e-mail address (required)"},
    {"from", 'f', "WHO", "the reviewer to replace (the owner only; default: yourself)"},
    {"comment", 'c', "TEXT", "a note kept with the change"},
    {NULL, 0, NULL, NULL},
};

static int approval_reassign(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/approvals/%s/reassign", args->positional[0]);
        _cleanup_json_ json_t *body = json_object(), *resp = NULL;
        const char *to = client_arg(ctx, args, "to"), *from = client_arg(ctx, args, "from");
        const char *comment = client_arg(ctx, args, "comment");
        int r;

        if (!to)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "agently approval reassign: --to is required (the new "
                                   "reviewer)");
        if (!path || !body || json_object_set_new(body, "to", json_string(to)) < 0 ||
            (from && json_object_set_new(body, "from", json_string(from)) < 0) ||
            (comment && json_object_set_new(body, "comment", json_string(comment)) < 0))
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", path, body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(resp, stdout);
        else
                print_approval(ctx, resp);
        return CLI_EXIT_OK;
}

const struct client_command client_approval_commands[] = {
    {"approval", "list", "[--status S]", "list approvals, newest first", 0, 0, approval_list_flags,
     approval_list},
    {"approval", "show", "ID", "show an approval and what it asks", 1, 1, NULL, approval_show},
    {"approval", "approve", "ID [--comment C] [--arguments JSON]",
     "approve: the waiting run continues (a tool call: with corrected arguments)", 1, 1,
     approve_flags, approval_approve},
    {"approval", "reject", "ID [--comment C]", "reject: the node fails (its on_failure decides)", 1,
     1, decide_flags, approval_reject},
    {"approval", "reassign", "ID --to WHO [--from WHO]",
     "hand a reviewer's place to someone else (they are notified)", 1, 1, reassign_flags,
     approval_reassign},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};

/* ---- secrets ---- */

static const struct cli_flag secret_set_flags[] = {
    {"file", 'f', "PATH", "read the value from this file (one trailing newline dropped)"},
    {NULL, 0, NULL, NULL},
};

static int secret_set(struct client_ctx *ctx, const struct cli_args *args)
{
        const char *name = args->positional[0];
        const char *file = cli_args_get(secret_set_flags, args, "file");
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *path = client_path("/v1/secrets/%s", name);
        _cleanup_json_ json_t *body = NULL, *resp = NULL;
        char *value = NULL;
        size_t len = 0;
        long status = 0;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        if (file) {
                fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "could not open %s: %s", file, strerror(errno));
        }
        r = client_read_secret(fd >= 0 ? fd : STDIN_FILENO, name, &value, &len);
        if (r == -ENODATA)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "the value is empty; pipe it on stdin, e.g. `printf %%s "
                                   "\"$KEY\" | agently secret set %s`, or use --file PATH",
                                   name);
        if (r == -EFBIG)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "the value is larger than %d KiB", CLIENT_INPUT_MAX >> 10);
        if (r == -EINVAL)
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "the value contains a NUL byte; encode binary values (e.g. "
                                   "base64) first");
        if (r < 0)
                return client_fail(ctx, CLI_EXIT_FAILURE, "input_unreadable", NULL, NULL,
                                   "could not read the value from %s: %s", file ? file : "stdin",
                                   strerror(-r));
        body = json_object();
        if (!body || json_object_set_new(body, "value", json_stringn(value, len)) < 0) {
                explicit_bzero(value, len);
                free(value);
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "the value is not valid UTF-8 text");
        }
        explicit_bzero(value, len);
        free(value);
        r = client_call_status(ctx, "PUT", path, body, NULL, NULL, &resp, &status);
        /* jansson keeps its own copy of the string; wipe it before it is freed */
        json_t *v = json_object_get(body, "value");
        if (v)
                explicit_bzero((char *)json_string_value(v), json_string_length(v));
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON)
                client_print_json(resp, stdout);
        else
                printf("secret %s %s\n", name, status == 201 ? "created" : "replaced");
        return CLI_EXIT_OK;
}

static const struct client_column secret_columns[] = {
    {"NAME", "name", NULL},
    {"KEY VERSION", "key_version", client_cell_integer},
    {"UPDATED", "updated_at", client_cell_reltime},
    {"CREATED", "created_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int secret_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/secrets", NULL, 0, -1, secret_columns};

        return client_list(ctx, args, &list);
}

static int secret_rm(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/secrets/%s", args->positional[0]);
        _cleanup_json_ json_t *resp = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "DELETE", path, NULL, NULL, &resp);
        if (r == CLI_EXIT_OK && ctx->output == CLIENT_OUTPUT_TABLE)
                printf("secret %s removed\n", args->positional[0]);
        else if (r == CLI_EXIT_OK)
                printf("{}\n");
        return r;
}

const struct client_command client_secret_commands[] = {
    {"secret", "set", "NAME [--file PATH]",
     "create or replace a secret; the value is read from stdin (a terminal: not echoed) or "
     "--file, never from the command line",
     1, 1, secret_set_flags, secret_set},
    {"secret", "list", "", "list secret names (values are never shown)", 0, 0, NULL, secret_list},
    {"secret", "delete", "NAME", "delete a secret", 1, 1, NULL, secret_rm},
    {"secret", "rm", "NAME", "delete a secret (same as delete)", 1, 1, NULL, secret_rm},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};

/* ---- tokens ---- */

static const struct cli_flag token_create_flags[] = {
    {"name", 0, "NAME", "a label to recognise the token by (default \"cli\")"},
    {"user", 'u', "USER", "admin: mint the token for this user instead of yourself"},
    {NULL, 0, NULL, NULL},
};

static int token_create(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_json_ json_t *body = json_object(), *resp = NULL;
        const char *name = client_arg(ctx, args, "name"), *user = client_arg(ctx, args, "user");
        int r;

        if (!body ||
            json_object_set_new(body, "name", json_string(name && *name ? name : "cli")) < 0 ||
            (user && json_object_set_new(body, "user", json_string(user)) < 0))
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", "/v1/tokens", body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(resp, stdout);
                return CLI_EXIT_OK;
        }
        printf("%s\n", str_member(resp, "token"));
        fprintf(stderr, "token %s (%s) created%s%s; it is shown only this once, store it now\n",
                str_member(resp, "id"), str_member(resp, "name"), user ? " for " : "",
                user ? user : "");
        return CLI_EXIT_OK;
}

/* active, revoked or expired */
static const char *token_state_cell(json_t *row, const char *key, char *buf, size_t size)
{
        int64_t expires;

        (void)key;
        (void)buf;
        (void)size;
        if (str_member(row, "revoked_at"))
                return "revoked";
        if (client_time_parse(str_member(row, "expires_at"), &expires) == 0 &&
            expires <= client_now_ms())
                return "expired";
        return "active";
}

static const struct client_column token_columns[] = {
    {"ID", "id", NULL},
    {"NAME", "name", NULL},
    {"PREFIX", "prefix", NULL},
    {"STATUS", NULL, token_state_cell},
    {"CREATED", "created_at", client_cell_reltime},
    {"LAST USED", "last_used_at", client_cell_reltime},
    {"EXPIRES", "expires_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int token_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/tokens", NULL, 0, 3, token_columns};

        return client_list(ctx, args, &list);
}

static int token_revoke(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_free_ char *path = client_path("/v1/tokens/%s", args->positional[0]);
        _cleanup_json_ json_t *resp = NULL;
        int r;

        if (!path)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "DELETE", path, NULL, NULL, &resp);
        if (r == CLI_EXIT_OK && ctx->output == CLIENT_OUTPUT_TABLE)
                printf("token %s revoked\n", args->positional[0]);
        else if (r == CLI_EXIT_OK)
                printf("{}\n");
        return r;
}

const struct client_command client_token_commands[] = {
    {"token", "create", "[--name N] [--user NAME]", "create an API token (printed once)", 0, 0,
     token_create_flags, token_create},
    {"token", "list", "", "list your tokens (prefixes only)", 0, 0, NULL, token_list},
    {"token", "revoke", "ID", "revoke a token; it stops working at once", 1, 1, NULL, token_revoke},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};

/* ---- users ---- */

static const struct cli_flag user_create_flags[] = {
    {"admin", 0, NULL, "the user may create users and tokens for others"},
    {NULL, 0, NULL, NULL},
};

static int user_create(struct client_ctx *ctx, const struct cli_args *args)
{
        _cleanup_json_ json_t *body = json_object(), *resp = NULL;
        const char *name = args->positional[0];
        int r;

        if (!body || json_object_set_new(body, "name", json_string(name)) < 0 ||
            json_object_set_new(body, "is_admin",
                                json_boolean(client_arg(ctx, args, "admin") != NULL)) < 0)
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "POST", "/v1/users", body, NULL, &resp);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(resp, stdout);
                return CLI_EXIT_OK;
        }
        printf("user %s created%s (id %s)\n", str_member(resp, "name"),
               json_is_true(json_object_get(resp, "is_admin")) ? " as an admin" : "",
               str_member(resp, "id"));
        fprintf(stderr, "next: agently token create --user %s\n", str_member(resp, "name"));
        return CLI_EXIT_OK;
}

static const struct client_column user_columns[] = {
    {"NAME", "name", NULL}, {"ADMIN", "is_admin", client_cell_yes_no},
    {"ID", "id", NULL},     {"CREATED", "created_at", client_cell_reltime},
    {NULL, NULL, NULL},
};

static int user_list(struct client_ctx *ctx, const struct cli_args *args)
{
        static const struct client_list list = {"/v1/users", NULL, 0, -1, user_columns};

        return client_list(ctx, args, &list);
}

const struct client_command client_user_commands[] = {
    {"user", "create", "NAME [--admin]", "create a user (admin only)", 1, 1, user_create_flags,
     user_create},
    {"user", "list", "", "list users (admin only)", 0, 0, NULL, user_list},
    {NULL, NULL, NULL, NULL, 0, 0, NULL, NULL},
};
