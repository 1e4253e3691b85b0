/*
 * The one `NOUN list` of the client: its flags become the query (filters, then --limit and
 * --cursor for a paged list), one GET, and the page printed as JSON or as a table whose
 * columns a noun describes with struct client_column; the next page's command goes to
 * stderr. A list that prints its rows its own way (`run nodes`) uses the first half alone,
 * client_list_page.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "client.h"

int client_list_page(struct client_ctx *ctx, const struct cli_args *args, const char *path,
                     const struct client_filter *filters, int64_t limit_max, json_t **page)
{
        _cleanup_free_ char *url = strdup(path);
        int64_t limit;
        int r;

        *page = NULL;
        if (limit_max > 0) {
                r = client_flag_int(ctx, "limit", client_arg(ctx, args, "limit"), 1, limit_max,
                                    &limit);
                if (r)
                        return r;
        }
        if (!url)
                return CLI_EXIT_FAILURE;
        for (const struct client_filter *f = filters; f && f->flag; f++)
                if (client_query_add(&url, f->param, client_arg(ctx, args, f->flag)) < 0)
                        return CLI_EXIT_FAILURE;
        if (limit_max > 0 &&
            (client_query_add(&url, "limit", client_arg(ctx, args, "limit")) < 0 ||
             client_query_add(&url, "cursor", client_arg(ctx, args, "cursor")) < 0))
                return CLI_EXIT_FAILURE;
        r = client_call(ctx, "GET", url, NULL, NULL, page);
        if (r != CLI_EXIT_OK)
                return r;
        if (ctx->output == CLIENT_OUTPUT_JSON) {
                client_print_json(*page, stdout);
                json_decref(*page);
                *page = NULL;
        }
        return CLI_EXIT_OK;
}

int client_list(struct client_ctx *ctx, const struct cli_args *args, const struct client_list *list)
{
        const char *headers[CLIENT_LIST_COLUMNS_MAX + 1];
        _cleanup_json_ json_t *page = NULL;
        struct client_table t;
        size_t n = 0, i;
        json_t *row;
        int r;

        while (n < CLIENT_LIST_COLUMNS_MAX && list->columns[n].header) {
                headers[n] = list->columns[n].header;
                n++;
        }
        headers[n] = NULL;
        r = client_list_page(ctx, args, list->path, list->filters, list->limit_max, &page);
        if (r != CLI_EXIT_OK || !page)
                return r;
        client_table_init(&t, list->status_col, headers);
        json_array_foreach (json_object_get(page, "data"), i, row) {
                char bufs[CLIENT_LIST_COLUMNS_MAX][CLIENT_LIST_CELL_MAX];
                const char *cells[CLIENT_LIST_COLUMNS_MAX];
                for (size_t c = 0; c < n; c++) {
                        const struct client_column *col = &list->columns[c];
                        cells[c] = col->cell ? col->cell(row, col->key, bufs[c], sizeof(bufs[c]))
                                             : json_string_value(json_object_get(row, col->key));
                }
                if (client_table_add(&t, cells) < 0) {
                        client_table_free(&t);
                        return client_fail(ctx, CLI_EXIT_FAILURE, "internal", NULL, NULL,
                                           "out of memory");
                }
        }
        client_table_print(&t, stdout, ctx->color);
        client_table_free(&t);
        client_more_hint(ctx, page);
        return CLI_EXIT_OK;
}

const char *client_cell_reltime(json_t *row, const char *key, char *buf, size_t size)
{
        client_reltime_json(row, key, buf, size);
        return buf;
}

const char *client_cell_version(json_t *row, const char *key, char *buf, size_t size)
{
        snprintf(buf, size, "v%lld", (long long)json_integer_value(json_object_get(row, key)));
        return buf;
}

const char *client_cell_integer(json_t *row, const char *key, char *buf, size_t size)
{
        snprintf(buf, size, "%lld", (long long)json_integer_value(json_object_get(row, key)));
        return buf;
}

const char *client_cell_yes_no(json_t *row, const char *key, char *buf, size_t size)
{
        (void)buf;
        (void)size;
        return json_is_true(json_object_get(row, key)) ? "yes" : "no";
}
