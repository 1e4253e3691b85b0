/*
 * Unit tests for the client's building blocks that need no server: argument parsing and
 * its usage errors, table alignment, relative times and durations, timestamp parsing,
 * --input parsing (@file, @-), secret reading from a pipe, and the server-sent events
 * parser across chunk boundaries.
 */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "client.h"
#include "strutil.h"

/* Not inlined: GCC 12 at -O2 takes open_memstream's stored &data for a dangling pointer. */
static __attribute__((noinline)) char *capture_table(const struct client_table *t, bool color)
{
        char *data = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&data, &len);

        assert_non_null(f);
        client_table_print(t, f, color);
        fclose(f);
        return data;
}

static void table_columns_fit_their_widest_cell(void **state)
{
        struct client_table t;
        char *out;

        client_table_init(&t, 1, (const char *[]){"NAME", "STATUS", "NOTE", NULL});
        assert_int_equal(client_table_add(&t, (const char *[]){"a", "running", "x"}), 0);
        assert_int_equal(client_table_add(&t, (const char *[]){"longer-name", "failed", NULL}), 0);
        assert_int_equal(client_table_add(&t, (const char *[]){"été", "completed", "y\nz"}), 0);
        out = capture_table(&t, false);
        assert_string_equal(out, "NAME         STATUS     NOTE\n"
                                 "a            running    x\n"
                                 "longer-name  failed     -\n"
                                 "été          completed  y z\n");
        free(out);

        /* colour codes do not count towards the width, and the header is bold */
        out = capture_table(&t, true);
        assert_non_null(strstr(out, "\033[1mNAME\033[0m         "));
        assert_non_null(strstr(out, "\033[31mfailed\033[0m     -\n"));
        free(out);
        client_table_free(&t);
}

static void table_cuts_long_cells(void **state)
{
        struct client_table t;
        char long_cell[200];
        char *out;

        memset(long_cell, 'x', sizeof(long_cell) - 1);
        long_cell[sizeof(long_cell) - 1] = '\0';
        client_table_init(&t, -1, (const char *[]){"A", NULL});
        assert_int_equal(client_table_add(&t, (const char *[]){long_cell}), 0);
        out = capture_table(&t, false);
        assert_int_equal(client_display_width(strchr(out, '\n') + 1), 64 + 1 /* newline */);
        assert_non_null(strstr(out, "x\xe2\x80\xa6\n"));
        free(out);
        client_table_free(&t);
}

static void relative_times_read_like_a_person_says_them(void **state)
{
        const int64_t now = 1790000000000;
        char out[32];

        client_reltime(now - 300, now, out, sizeof(out));
        assert_string_equal(out, "just now");
        client_reltime(now - 42 * 1000, now, out, sizeof(out));
        assert_string_equal(out, "42s ago");
        client_reltime(now - 3 * 60 * 1000 - 5000, now, out, sizeof(out));
        assert_string_equal(out, "3m ago");
        client_reltime(now + 2 * 3600 * 1000 + 1000, now, out, sizeof(out));
        assert_string_equal(out, "in 2h");
        client_reltime(now - 47LL * 3600 * 1000, now, out, sizeof(out));
        assert_string_equal(out, "47h ago");
        client_reltime(now - 3LL * 86400 * 1000, now, out, sizeof(out));
        assert_string_equal(out, "3d ago");
        client_reltime(1700000000000, now, out, sizeof(out));
        assert_string_equal(out, "2023-11-14");
}

static void durations_are_compact(void **state)
{
        char out[32];

        client_duration(250, out, sizeof(out));
        assert_string_equal(out, "250ms");
        client_duration(12345, out, sizeof(out));
        assert_string_equal(out, "12.3s");
        client_duration(4 * 60000 + 5000, out, sizeof(out));
        assert_string_equal(out, "4m5s");
        client_duration(90 * 60000, out, sizeof(out));
        assert_string_equal(out, "1h30m");
        client_duration(51LL * 3600000, out, sizeof(out));
        assert_string_equal(out, "2d3h");
        client_duration(-5, out, sizeof(out));
        assert_string_equal(out, "0ms");
}

static void timestamps_parse_in_api_and_postgres_forms(void **state)
{
        int64_t a, b, c;

        assert_int_equal(client_time_parse("2026-11-22T05:53:47.123Z", &a), 0);
        assert_int_equal(a, 1795326827123);
        assert_int_equal(client_time_parse("2026-11-22 06:53:47.123456+01", &b), 0);
        assert_int_equal(b, a);
        assert_int_equal(client_time_parse("2026-11-22T00:23:47.123-05:30", &c), 0);
        assert_int_equal(c, a);
        assert_int_equal(client_time_parse("2026-11-22T05:53:47", &a), -EINVAL); /* no zone */
        assert_int_equal(client_time_parse("yesterday", &a), -EINVAL);
        assert_int_equal(client_time_parse("2026-13-22T05:53:47Z", &a), -EINVAL);
}

static const struct cli_flag test_flags[] = {
    {"input", 'i', "JSON", "input"},
    {"wait", 'w', NULL, "wait"},
    {NULL, 0, NULL, NULL},
};

static const struct client_command test_cmd = {"run", "start", "WORKFLOW", "start",
                                               1,     1,       test_flags, NULL};

static int parse(struct cli_args *a, struct client_global *g, char *err, size_t n, ...)
{
        char *argv[16];
        int argc = 0;
        va_list ap;

        va_start(ap, n);
        for (char *s; (s = va_arg(ap, char *));)
                argv[argc++] = s;
        va_end(ap);
        memset(g, 0, sizeof(*g));
        return client_args_parse(&test_cmd, argc, argv, a, g, err, n);
}

static void arguments_parse_and_usage_errors_name_the_flag(void **state)
{
        struct cli_args a;
        struct client_global g;
        char err[256];

        assert_int_equal(parse(&a, &g, err, sizeof(err), "-o", "json", "wf", "--input={\"a\":1}",
                               "--server", "http://x:1", "-w", NULL),
                         0);
        assert_string_equal(a.positional[0], "wf");
        assert_string_equal(a.flag[0], "{\"a\":1}");
        assert_string_equal(a.flag[1], "");
        assert_string_equal(g.output, "json");
        assert_string_equal(g.server, "http://x:1");

        assert_int_equal(parse(&a, &g, err, sizeof(err), "wf", "-ojson", "-i", "@-", NULL), 0);
        assert_string_equal(g.output, "json");
        assert_string_equal(a.flag[0], "@-");

        assert_int_equal(parse(&a, &g, err, sizeof(err), "wf", "--inptu", "{}", NULL), -EINVAL);
        assert_string_equal(err, "agently run start: unknown flag --inptu");
        assert_int_equal(parse(&a, &g, err, sizeof(err), "wf", "--input", NULL), -EINVAL);
        assert_string_equal(err, "agently run start: flag --input needs JSON");
        assert_int_equal(parse(&a, &g, err, sizeof(err), "wf", "--wait=yes", NULL), -EINVAL);
        assert_string_equal(err, "agently run start: flag --wait takes no value");
        assert_int_equal(parse(&a, &g, err, sizeof(err), "wf", "other", NULL), -EINVAL);
        assert_string_equal(err, "agently run start: unexpected argument 'other'");
        assert_int_equal(parse(&a, &g, err, sizeof(err), NULL), -EINVAL);
        assert_non_null(strstr(err, "missing arguments"));
        /* --help wins over a missing argument; "--" ends the flags */
        assert_int_equal(parse(&a, &g, err, sizeof(err), "--help", NULL), 0);
        assert_true(g.help);
        assert_int_equal(parse(&a, &g, err, sizeof(err), "--", "-dash-name", NULL), 0);
        assert_string_equal(a.positional[0], "-dash-name");
}

/* The server roles parse with the same parser: same spellings, errors naming the role. */
static void server_roles_parse_with_the_same_parser(void **state)
{
        static const struct cli_flag role_flags[] = {
            {"port", 0, "PORT", "port"},
            {"check", 0, NULL, "check only"},
            {"help", 'h', NULL, "show this help"},
            {NULL, 0, NULL, NULL},
        };
        char *ok[] = {"up", "--port=9090", "--check", NULL};
        char *spaced[] = {"up", "--port", "9090", NULL};
        char *help[] = {"up", "-h", NULL};
        char *unknown[] = {"up", "--server", "http://x", NULL};
        char *extra[] = {"up", "stray", NULL};
        char *missing[] = {"up", "--port", NULL};
        struct cli_args a;
        int64_t port = 0;
        char err[256];

        (void)state;
        assert_int_equal(cli_role_args("up", "up [--port PORT]", "test", role_flags, 3, ok, &a),
                         -1);
        assert_string_equal(cli_args_get(role_flags, &a, "port"), "9090");
        assert_string_equal(cli_args_get(role_flags, &a, "check"), "");
        assert_null(cli_args_get(role_flags, &a, "help"));
        assert_int_equal(
            cli_flag_int("up", "port", cli_args_get(role_flags, &a, "port"), 1, 65535, &port), 0);
        assert_int_equal(port, 9090);
        assert_int_equal(cli_flag_int("up", "port", "0", 1, 65535, &port), CLI_EXIT_USAGE);
        assert_int_equal(cli_role_args("up", "up", "test", role_flags, 3, spaced, &a), -1);
        assert_string_equal(cli_args_get(role_flags, &a, "port"), "9090");
        assert_int_equal(cli_role_args("up", "up", "test", role_flags, 2, help, &a), CLI_EXIT_OK);
        /* a client's global flag is not a server role's */
        assert_int_equal(cli_role_args("up", "up", "test", role_flags, 3, unknown, &a),
                         CLI_EXIT_USAGE);
        assert_int_equal(cli_role_args("up", "up", "test", role_flags, 2, extra, &a),
                         CLI_EXIT_USAGE);
        assert_int_equal(
            cli_args_parse("agently up", role_flags, NULL, 0, 1, missing + 1, &a, err, sizeof(err)),
            -EINVAL);
        assert_string_equal(err, "agently up: flag --port needs PORT");
        assert_int_equal(
            cli_args_parse("agently up", role_flags, NULL, 0, 2, unknown + 1, &a, err, sizeof(err)),
            -EINVAL);
        assert_string_equal(err, "agently up: unknown flag --server");
}

static void write_file(const char *path, const char *data)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        assert_int_ge(fd, 0);
        assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
        close(fd);
}

/* Replaces stdin with a pipe holding data; returns the saved stdin. */
static int stdin_from(const char *data)
{
        int p[2], saved = dup(STDIN_FILENO);

        assert_int_equal(pipe(p), 0);
        assert_int_equal(write(p[1], data, strlen(data)), (ssize_t)strlen(data));
        close(p[1]);
        dup2(p[0], STDIN_FILENO);
        close(p[0]);
        return saved;
}

static void stdin_restore(int saved)
{
        dup2(saved, STDIN_FILENO);
        close(saved);
}

static void input_comes_inline_from_a_file_or_stdin(void **state)
{
        _cleanup_free_ char *dir = test_tempdir("cli-input");
        _cleanup_free_ char *file = str_printf("%s/in.json", dir);
        char err[256];
        json_t *j;
        int saved;

        assert_int_equal(
            client_input_parse("{\"url\": \"https://e.x\"}", "input", &j, err, sizeof(err)), 0);
        assert_string_equal(json_string_value(json_object_get(j, "url")), "https://e.x");
        json_decref(j);

        write_file(file, "{\"n\": 3}\n");
        _cleanup_free_ char *at = str_printf("@%s", file);
        assert_int_equal(client_input_parse(at, "input", &j, err, sizeof(err)), 0);
        assert_int_equal(json_integer_value(json_object_get(j, "n")), 3);
        json_decref(j);

        saved = stdin_from("[1, 2]");
        assert_int_equal(client_input_parse("@-", "data", &j, err, sizeof(err)), 0);
        stdin_restore(saved);
        assert_int_equal(json_array_size(j), 2);
        json_decref(j);

        assert_int_equal(client_input_parse("{\"a\": }", "input", &j, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "--input: the value is not valid JSON"));
        assert_non_null(strstr(err, "line 1, column"));
        assert_non_null(strstr(err, "use @FILE"));

        _cleanup_free_ char *missing = str_printf("@%s/nope.json", dir);
        assert_int_equal(client_input_parse(missing, "input", &j, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "could not read"));
        assert_null(j);
        test_rm_rf(dir);
}

static void secrets_come_from_stdin_and_empty_is_refused(void **state)
{
        char *value = NULL;
        size_t len = 0;
        int saved;

        saved = stdin_from("s3cr3t\n");
        assert_int_equal(client_read_secret(STDIN_FILENO, "k", &value, &len), 0);
        stdin_restore(saved);
        assert_string_equal(value, "s3cr3t");
        assert_int_equal(len, 6);
        free(value);

        saved = stdin_from("line1\nline2");
        assert_int_equal(client_read_secret(STDIN_FILENO, "k", &value, &len), 0);
        stdin_restore(saved);
        assert_string_equal(value, "line1\nline2");
        free(value);

        saved = stdin_from("");
        assert_int_equal(client_read_secret(STDIN_FILENO, "k", &value, &len), -ENODATA);
        stdin_restore(saved);
        saved = stdin_from("\n");
        assert_int_equal(client_read_secret(STDIN_FILENO, "k", &value, &len), -ENODATA);
        stdin_restore(saved);
        assert_null(value);
}

struct collected {
        char text[1024];
        int count;
        int stop_after;
};

static int collect(const struct client_sse_event *ev, void *userdata)
{
        struct collected *c = userdata;
        size_t used = strlen(c->text);

        snprintf(c->text + used, sizeof(c->text) - used, "[%s|%s|%s]", ev->id ? ev->id : "-",
                 ev->event, ev->data);
        c->count++;
        return c->stop_after && c->count >= c->stop_after ? 1 : 0;
}

static void sse_parser_handles_every_framing(void **state)
{
        static const char stream[] = ": heartbeat\n\n"
                                     "id: 1\nevent: node.started\ndata: {\"seq\":1}\n\n"
                                     "id: 2\r\ndata: line one\r\ndata: line two\r\n\r\n"
                                     "data:no-space\rid:3\r\r"
                                     "event: end\ndata: {\"status\":\"completed\"}\n\n"
                                     "event: ignored-without-data\n\n";
        const char *expect = "[1|node.started|{\"seq\":1}]"
                             "[2|message|line one\nline two]"
                             "[3|message|no-space]"
                             "[3|end|{\"status\":\"completed\"}]";

        /* every split point of the stream gives the same events */
        for (size_t split = 0; split <= sizeof(stream) - 1; split++) {
                struct client_sse_parser p;
                struct collected c = {0};

                client_sse_init(&p, collect, &c);
                assert_int_equal(client_sse_feed(&p, stream, split), 0);
                assert_int_equal(client_sse_feed(&p, stream + split, sizeof(stream) - 1 - split),
                                 0);
                client_sse_done(&p);
                assert_string_equal(c.text, expect);
        }

        /* a callback's non-zero value stops the parser and is returned */
        struct client_sse_parser p;
        struct collected c = {.stop_after = 1};
        client_sse_init(&p, collect, &c);
        assert_int_equal(client_sse_feed(&p, stream, sizeof(stream) - 1), 1);
        assert_int_equal(c.count, 1);
        client_sse_done(&p);
}

static void sse_parser_caps_an_event(void **state)
{
        struct client_sse_parser p;
        struct collected c = {0};
        static char big[(1 << 20) + 16];
        int r = 0;

        memset(big, 'a', sizeof(big));
        client_sse_init(&p, collect, &c);
        r = client_sse_feed(&p, "data: ", 6);
        assert_int_equal(r, 0);
        r = client_sse_feed(&p, big, sizeof(big));
        assert_int_equal(r, -ENOBUFS);
        client_sse_done(&p);
}

static void paths_escape_their_arguments(void **state)
{
        _cleanup_free_ char *p = client_path("/v1/runs/%s/signals/%s", "abc", "a b/c?");
        _cleanup_free_ char *q = strdup("/v1/runs");

        assert_string_equal(p, "/v1/runs/abc/signals/a%20b%2Fc%3F");
        assert_int_equal(client_query_add(&q, "status", "failed"), 0);
        assert_int_equal(client_query_add(&q, "workflow", NULL), 0);
        assert_int_equal(client_query_add(&q, "created_after", "2026-01-01T00:00:00+01:00"), 0);
        assert_string_equal(
            q, "/v1/runs?status=failed&created_after=2026-01-01T00%3A00%3A00%2B01%3A00");
}

static void http_statuses_map_to_exit_codes(void **state)
{
        assert_int_equal(client_exit_for_status(200), CLI_EXIT_OK);
        assert_int_equal(client_exit_for_status(401), CLI_EXIT_UNAUTHORIZED);
        assert_int_equal(client_exit_for_status(403), CLI_EXIT_UNAUTHORIZED);
        assert_int_equal(client_exit_for_status(404), CLI_EXIT_NOT_FOUND);
        assert_int_equal(client_exit_for_status(409), CLI_EXIT_CONFLICT);
        assert_int_equal(client_exit_for_status(503), CLI_EXIT_UNAVAILABLE);
        assert_int_equal(client_exit_for_status(400), CLI_EXIT_FAILURE);
        assert_int_equal(client_exit_for_status(500), CLI_EXIT_FAILURE);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(table_columns_fit_their_widest_cell),
            cmocka_unit_test(table_cuts_long_cells),
            cmocka_unit_test(relative_times_read_like_a_person_says_them),
            cmocka_unit_test(durations_are_compact),
            cmocka_unit_test(timestamps_parse_in_api_and_postgres_forms),
            cmocka_unit_test(arguments_parse_and_usage_errors_name_the_flag),
            cmocka_unit_test(input_comes_inline_from_a_file_or_stdin),
            cmocka_unit_test(secrets_come_from_stdin_and_empty_is_refused),
            cmocka_unit_test(sse_parser_handles_every_framing),
            cmocka_unit_test(sse_parser_caps_an_event),
            cmocka_unit_test(paths_escape_their_arguments),
            cmocka_unit_test(http_statuses_map_to_exit_codes),
            cmocka_unit_test(server_roles_parse_with_the_same_parser),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
