/*
 * Where the client talks to and as whom. Flags beat the environment, and an explicit token
 * beats the admin token file, so a user who exported AGENTLY_TOKEN can still act as someone
 * else for one command. Zero configuration works against `agently up` started in the same
 * directory: the default server is its default address and ./.agently/admin-token its
 * token file.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cleanup.h"
#include "client.h"
#include "fileio.h"
#include "strutil.h"

#define CLIENT_TOKEN_FILE_MAX 4096

/* Reads <dir>/admin-token; 0 with *token set, or a negative errno. */
static int read_token_file(const char *dir, char **token, char **source)
{
        _cleanup_free_ char *path = str_printf("%s/admin-token", dir);
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r;

        if (!path)
                return -ENOMEM;
        r = file_read_all(path, CLIENT_TOKEN_FILE_MAX, &data, &len);
        if (r < 0)
                return r;
        while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' '))
                data[--len] = '\0';
        if (len == 0)
                return -ENODATA;
        *token = TAKE_PTR(data);
        *source = TAKE_PTR(path);
        return 0;
}

int client_ctx_init(struct client_ctx *ctx, const struct client_global *global, const char *name)
{
        const char *server = global->server, *env;
        int r;

        memset(ctx, 0, sizeof(*ctx));
        ctx->name = name;
        ctx->timeout_ms = 60000;

        if (!global->output || strcmp(global->output, "table") == 0)
                ctx->output = CLIENT_OUTPUT_TABLE;
        else if (strcmp(global->output, "json") == 0)
                ctx->output = CLIENT_OUTPUT_JSON;
        else {
                /* the output it asked for is unknown, so the error comes as text */
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "bad value for -o/--output: '%s' (use table or json)",
                                   global->output);
        }
        env = getenv("NO_COLOR");
        ctx->color = isatty(STDOUT_FILENO) && str_is_empty(env) &&
                     !(getenv("TERM") && strcmp(getenv("TERM"), "dumb") == 0);

        if (str_is_empty(server))
                server = getenv("AGENTLY_SERVER");
        if (str_is_empty(server))
                server = CLIENT_DEFAULT_SERVER;
        if (!str_has_prefix(server, "http://") && !str_has_prefix(server, "https://")) {
                return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                   "bad server address '%s': it must start with http:// or "
                                   "https:// (e.g. " CLIENT_DEFAULT_SERVER ")",
                                   server);
        }
        ctx->server = strdup(server);
        if (!ctx->server)
                return CLI_EXIT_FAILURE;
        for (size_t n = strlen(ctx->server); n > 0 && ctx->server[n - 1] == '/'; n--)
                ctx->server[n - 1] = '\0';

        if (global->token) {
                if (str_is_empty(global->token)) {
                        return client_fail(ctx, CLI_EXIT_USAGE, "usage", NULL, NULL,
                                           "--token is empty");
                }
                ctx->token = strdup(global->token);
                ctx->token_source = strdup("--token");
        } else if (global->data_dir) {
                r = read_token_file(global->data_dir, &ctx->token, &ctx->token_source);
                if (r < 0)
                        return client_fail(
                            ctx, CLI_EXIT_USAGE, "usage", NULL,
                            "--data-dir must be the directory `agently up` uses (default "
                            "./.agently)",
                            "could not read %s/admin-token: %s", global->data_dir,
                            r == -ENODATA ? "the file is empty" : strerror(-r));
        } else if (!str_is_empty(env = getenv("AGENTLY_TOKEN"))) {
                ctx->token = strdup(env);
                ctx->token_source = strdup("AGENTLY_TOKEN");
        } else if (!str_is_empty(env = getenv("AGENTLY_DATA_DIR")) &&
                   read_token_file(env, &ctx->token, &ctx->token_source) == 0) {
                /* the data dir `agently up` uses when the same variable is set */
        } else {
                (void)read_token_file(CLIENT_DEFAULT_DATA_DIR, &ctx->token, &ctx->token_source);
        }
        if (ctx->token && !ctx->token_source)
                return CLI_EXIT_FAILURE;
        return CLI_EXIT_OK;
}

void client_ctx_done(struct client_ctx *ctx)
{
        if (ctx->curl)
                curl_easy_cleanup(ctx->curl);
        if (ctx->token) {
                explicit_bzero(ctx->token, strlen(ctx->token));
                free(ctx->token);
        }
        free(ctx->token_source);
        free(ctx->server);
        memset(ctx, 0, sizeof(*ctx));
}
