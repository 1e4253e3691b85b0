/*
 * The agently CLI against a real `agently api` process on a fresh test database: the main
 * commands in table and JSON form are compared with expected outputs in tests/golden/
 * (after volatile fields — ids, tokens, timestamps, relative times, durations — are
 * normalised), and the documented exit codes are checked: unknown run 3, bad token 4,
 * conflict 5, server down 6, usage 2, --wait on a failed run 7. A second test follows a
 * run's events while the API is killed and restarted, and checks that every event arrives
 * exactly once, in order. Regenerate the goldens with AGENTLY_UPDATE_GOLDEN=1 (refused when CI
 * is set: CI only compares).
 */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "buf.h"
#include "cli.h"
#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "strutil.h"

struct fixture {
        char *dir;      /* temp dir; the CLI runs here, so ./.agently/admin-token is found */
        char *data_dir; /* <dir>/.agently */
        char *conninfo; /* owner (superuser) */
        char *server;
        char *listen;
        char *api_log;
        PGconn *db;
        pid_t api;
        int port;
};

struct cli_result {
        int exit;
        char *out, *err;
};

static void cli_result_free(struct cli_result *r)
{
        free(r->out);
        free(r->err);
        memset(r, 0, sizeof(*r));
}

static pid_t start_api(struct fixture *f)
{
        _cleanup_free_ char *env_db = str_printf("AGENTLY_DATABASE_URL=%s", f->conninfo);
        const char *args[] = {"api", "--listen", f->listen, "--data-dir", f->data_dir, NULL};
        const char *env[] = {env_db, NULL};
        _cleanup_free_ char *health = str_printf("%s/healthz", f->server);
        pid_t pid = test_spawn_agently(args, env, f->api_log);

        assert_int_gt(pid, 0);
        assert_true(test_wait_http_ok(health, 15000));
        return pid;
}

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));
        _cleanup_free_ char *token_path = NULL;
        int created = 0;

        f->dir = test_tempdir("cli-golden");
        f->data_dir = str_printf("%s/.agently", f->dir);
        assert_int_equal(dir_make_parents(f->data_dir, 0700), 0);
        f->conninfo = test_db_create("cli");
        f->db = test_db_connect(f->conninfo);
        assert_int_equal(bootstrap_admin(f->db, f->data_dir, &token_path, &created), 0);
        assert_int_equal(created, 1);
        f->port = test_free_port();
        f->listen = str_printf("127.0.0.1:%d", f->port);
        f->server = str_printf("http://127.0.0.1:%d", f->port);
        f->api_log = str_printf("%s/api.log", f->dir);
        f->api = start_api(f);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        if (f->api > 0)
                test_stop_process(f->api, SIGTERM, 10000);
        PQfinish(f->db);
        if (getenv("AGENTLY_TEST_KEEP")) /* debugging: keep api.log and the CLI's output */
                fprintf(stderr, "kept %s\n", f->dir);
        else
                test_rm_rf(f->dir);
        free(f->dir);
        free(f->data_dir);
        free(f->conninfo);
        free(f->server);
        free(f->listen);
        free(f->api_log);
        free(f);
        return 0;
}

static char *slurp(const char *path)
{
        char *data = NULL;
        size_t len;

        if (file_read_all(path, 16 << 20, &data, &len) < 0)
                return strdup("");
        return data;
}

/* Runs the agently binary with args (NULL-terminated) in f->dir, stdin from in (NULL:
 * /dev/null), AGENTLY_SERVER pointing at the test API and no token in the environment;
 * returns at once with the child's pid when background is set (output goes to files). */
static pid_t cli_spawn(struct fixture *f, const char *in, const char *const *args,
                       const char *out_path, const char *err_path)
{
        pid_t pid = fork();

        assert_int_ge(pid, 0);
        if (pid == 0) {
                const char *argv[32] = {"agently"};
                int n = 1, fd;

                for (; args[n - 1] && n < 31; n++)
                        argv[n] = args[n - 1];
                argv[n] = NULL;
                if (chdir(f->dir) < 0)
                        _exit(125);
                setenv("AGENTLY_SERVER", f->server, 1);
                setenv("TZ", "UTC", 1);
                unsetenv("AGENTLY_TOKEN");
                unsetenv("AGENTLY_DATA_DIR");
                unsetenv("NO_COLOR");
                if (in) {
                        int p[2];
                        if (pipe(p) < 0)
                                _exit(125);
                        if (write(p[1], in, strlen(in)) < 0)
                                _exit(125);
                        close(p[1]);
                        fd = p[0];
                } else
                        fd = open("/dev/null", O_RDONLY);
                dup2(fd, STDIN_FILENO);
                fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                dup2(fd, STDOUT_FILENO);
                fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                dup2(fd, STDERR_FILENO);
                execv(AGENTLY_BINARY, (char *const *)argv);
                _exit(127);
        }
        return pid;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
        int64_t deadline = test_now_ms() + timeout_ms;
        int status;

        for (;;) {
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (test_now_ms() > deadline) {
                        kill(pid, SIGKILL);
                        waitpid(pid, &status, 0);
                        fail_msg("the CLI did not exit within %d ms", timeout_ms);
                }
                usleep(20 * 1000);
        }
}

static struct cli_result cli_run(struct fixture *f, const char *in, const char *const *args)
{
        _cleanup_free_ char *out = str_printf("%s/cli.out", f->dir);
        _cleanup_free_ char *err = str_printf("%s/cli.err", f->dir);
        struct cli_result r;

        r.exit = wait_exit(cli_spawn(f, in, args, out, err), 60000);
        r.out = slurp(out);
        r.err = slurp(err);
        return r;
}

/* Replaces every match of pattern in *s by replacement, where \\1..\\9 stand for groups. */
static void replace_all(char **s, const char *pattern, const char *replacement)
{
        regex_t re;
        regmatch_t m[10];
        _cleanup_buf_ struct buf b;
        const char *p = *s;

        assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE), 0);
        buf_init(&b, 64 << 20);
        while (*p && regexec(&re, p, 10, m, p == *s || p[-1] == '\n' ? 0 : REG_NOTBOL) == 0) {
                assert_int_equal(buf_append(&b, p, (size_t)m[0].rm_so), 0);
                for (const char *r = replacement; *r; r++) {
                        if (r[0] == '\\' && r[1] >= '1' && r[1] <= '9') {
                                regmatch_t g = m[r[1] - '0'];
                                if (g.rm_so >= 0)
                                        assert_int_equal(buf_append(&b, p + g.rm_so,
                                                                    (size_t)(g.rm_eo - g.rm_so)),
                                                         0);
                                r++;
                        } else
                                assert_int_equal(buf_append(&b, r, 1), 0);
                }
                if (m[0].rm_eo == 0) { /* an empty match: copy one byte and move on */
                        assert_int_equal(buf_append(&b, p, 1), 0);
                        p++;
                } else
                        p += m[0].rm_eo;
        }
        assert_int_equal(buf_append_str(&b, p), 0);
        regfree(&re);
        free(*s);
        *s = buf_steal(&b);
}

/* Volatile fields out, so the same command gives the same text on every run. Runs of
 * spaces collapse to two because relative times and durations change column widths
 * (alignment itself is checked by assert_aligned and the unit tests). */
static char *normalise(const char *text)
{
        char *s = strdup(text);

        replace_all(&s, "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<ID>");
        replace_all(&s, "agt_[A-Za-z0-9_-]{43}", "<TOKEN>");
        replace_all(&s, "agt_[A-Za-z0-9_-]{6}", "<PREFIX>");
        replace_all(&s, "[0-9a-f]{64}", "<SHA256>");
        replace_all(&s, "(^|[^0-9a-f])[0-9a-f]{12}([^0-9a-f]|$)", "\\1<SHA>\\2");
        replace_all(&s,
                    "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?"
                    "(Z|[+-][0-9]{2}(:?[0-9]{2})?)?",
                    "<TIME>");
        replace_all(&s, "[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}", "<CLOCK>");
        replace_all(&s, "just now|[0-9]+[smhd] ago|in [0-9]+[smhd]", "<AGO>");
        replace_all(
            &s, "(^|[ (])([0-9]+ms|[0-9]+\\.[0-9]s|[0-9]+m[0-9]+s|[0-9]+h[0-9]+m|[0-9]+d[0-9]+h)",
            "\\1<DUR>");
        /* relative times, durations and timestamps vary in width and so shift the columns
         * after them: there, runs of spaces collapse to two */
        if (strstr(s, "<AGO>") || strstr(s, "<DUR>") || strstr(s, "<CLOCK>"))
                replace_all(&s, "([^ \n])  +", "\\1  ");
        replace_all(&s, " +\n", "\n");
        return s;
}

/* Columns of a table start where the header's columns start. */
static void assert_aligned(const char *table)
{
        const char *nl = strchr(table, '\n');
        size_t starts[16], n = 0, hlen;

        assert_non_null(nl);
        hlen = (size_t)(nl - table);
        for (size_t i = 1; i < hlen && n < 16; i++)
                if (table[i] != ' ' && table[i - 1] == ' ' && i >= 2 && table[i - 2] == ' ')
                        starts[n++] = i;
        for (const char *line = nl + 1; *line; line = strchr(line, '\n') + 1) {
                const char *end = strchr(line, '\n');
                assert_non_null(end);
                for (size_t k = 0; k < n; k++)
                        if ((size_t)(end - line) <= starts[k] || line[starts[k] - 1] != ' ' ||
                            line[starts[k] - 2] != ' ' || line[starts[k]] == ' ')
                                fail_msg("column %zu does not start at byte %zu of the line "
                                         "\"%.*s\" in:\n%s",
                                         k, starts[k], (int)(end - line), line, table);
        }
}

static char *transcript(const char *const *args, const struct cli_result *r)
{
        _cleanup_buf_ struct buf b;
        _cleanup_free_ char *out = normalise(r->out), *err = normalise(r->err);

        buf_init(&b, 16 << 20);
        _cleanup_buf_ struct buf cmd;
        buf_init(&cmd, 1 << 16);
        assert_int_equal(buf_append_str(&cmd, "$ agently"), 0);
        for (size_t i = 0; args[i]; i++)
                assert_int_equal(buf_printf(&cmd, " %s", args[i]), 0);
        _cleanup_free_ char *line = normalise(cmd.data);
        assert_int_equal(buf_printf(&b, "%s\n--- exit %d\n--- stdout\n%s--- stderr\n%s", line,
                                    r->exit, out, err),
                         0);
        return buf_steal(&b);
}

/* Runs the command and compares its normalised transcript with tests/golden/<name>.txt. */
static struct cli_result golden(struct fixture *f, const char *name, const char *in,
                                const char *const *args)
{
        struct cli_result r = cli_run(f, in, args);
        _cleanup_free_ char *got = transcript(args, &r);
        _cleanup_free_ char *path = str_printf("%s/tests/golden/%s.txt", AGENTLY_SOURCE_DIR, name);
        const char *update = getenv("AGENTLY_UPDATE_GOLDEN");
        const char *ci = getenv("CI");
        _cleanup_free_ char *want = NULL;
        size_t len;

        /* CI compares, never rewrites: a rewrite there would turn every golden into a pass */
        if (update && *update && ci && *ci && strcmp(ci, "false") != 0 && strcmp(ci, "0") != 0)
                fail_msg("AGENTLY_UPDATE_GOLDEN=%s is set under CI (CI=%s): goldens are compared "
                         "in CI, never rewritten; unset it and regenerate them locally",
                         update, ci);
        if (update && strcmp(update, "1") == 0) {
                _cleanup_free_ char *dir = str_printf("%s/tests/golden", AGENTLY_SOURCE_DIR);
                assert_int_equal(dir_make_parents(dir, 0755), 0);
                assert_int_equal(file_write_atomic(path, got, strlen(got), 0644), 0);
                return r;
        }
        if (file_read_all(path, 16 << 20, &want, &len) < 0)
                fail_msg("missing golden file %s; create it with AGENTLY_UPDATE_GOLDEN=1 and "
                         "review it. Output was:\n%s",
                         path, got);
        if (strcmp(got, want) != 0)
                fail_msg("output of `%s` differs from %s\n--- expected\n%s--- got\n%s", name, path,
                         want, got);
        return r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char *first_line(const char *s)
{
        const char *nl = strchr(s, '\n');
        return strndup(s, nl ? (size_t)(nl - s) : strlen(s));
}

static void write_text(const char *path, const char *text)
{
        assert_int_equal(file_write_atomic(path, text, strlen(text), 0644), 0);
}

static const char hello_wf[] =
    "{\"name\": \"hello\", \"description\": \"says hello\", \"nodes\": [\n"
    "  {\"id\": \"greet\", \"type\": \"transform\", \"output\": "
    "{\"text\": \"hello\"}},\n"
    "  {\"id\": \"nap\", \"type\": \"sleep\", \"duration\": \"1h\", "
    "\"after\": [\"greet\"]}\n]}\n";

static const char researcher_agent[] =
    "{\"name\": \"researcher\", \"description\": \"reads pages and sums them up\",\n"
    " \"provider\": \"anthropic\", \"base_url\": \"https://api.anthropic.com/v1\",\n"
    " \"model\": \"claude-sonnet-4-5\", \"api_key_secret\": \"ANTHROPIC_KEY\",\n"
    " \"system\": \"You call tools when asked.\", \"tools\": [\"http_request\", \"finish\"],\n"
    " \"allowed_hosts\": [\"example.com\"],\n"
    " \"budget\": {\"max_tokens\": 100000, \"max_cost_usd\": 5}, \"max_turns\": 20}\n";

static void cli_main_commands_match_their_goldens(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *wf = str_printf("%s/hello.json", f->dir);
        _cleanup_free_ char *run_id = NULL, *alice_token = NULL, *token_id = NULL;
        struct cli_result r;

        write_text(wf, hello_wf);

        /* users and tokens (the admin token comes from ./.agently/admin-token) */
        r = golden(f, "user_create", NULL, ARGS("user", "create", "alice"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "user_list", NULL, ARGS("user", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);
        r = golden(f, "user_list_json", NULL, ARGS("user", "list", "-o", "json"));
        cli_result_free(&r);
        r = golden(f, "token_create", NULL,
                   ARGS("token", "create", "--user", "alice", "--name", "ci"));
        assert_int_equal(r.exit, 0);
        alice_token = first_line(r.out);
        assert_true(str_has_prefix(alice_token, "agt_"));
        cli_result_free(&r);

        /* workflows: apply twice (created, then unchanged), list, show */
        r = golden(f, "workflow_apply", NULL, ARGS("workflow", "apply", "hello.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "workflow_apply_unchanged", NULL, ARGS("workflow", "apply", "hello.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "workflow_list", NULL, ARGS("workflow", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);
        r = golden(f, "workflow_list_json", NULL, ARGS("workflow", "list", "-o", "json"));
        cli_result_free(&r);
        r = golden(f, "workflow_show", NULL, ARGS("workflow", "show", "hello"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "workflow_show_json", NULL, ARGS("workflow", "show", "hello", "-o", "json"));
        cli_result_free(&r);
        _cleanup_free_ char *bad = str_printf("%s/bad.json", f->dir);
        write_text(bad, "{\"name\": \"bad\", \"nodes\": [{\"id\": \"a\", \"type\": "
                        "\"sleep\"}, {\"id\": \"b\", \"type\": \"teleport\", \"after\": "
                        "[\"zz\"]}]}");
        r = golden(f, "workflow_apply_invalid", NULL, ARGS("workflow", "apply", "bad.json"));
        assert_int_equal(r.exit, CLI_EXIT_FAILURE);
        cli_result_free(&r);
        write_text(bad, "{\"name\": \"bad\",\n  \"nodes\": [}\n");
        r = golden(f, "workflow_apply_bad_json", NULL, ARGS("workflow", "apply", "bad.json"));
        assert_int_equal(r.exit, CLI_EXIT_FAILURE);
        cli_result_free(&r);
        r = golden(f, "workflow_show_missing", NULL, ARGS("workflow", "show", "nope"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);

        /* agents: apply twice (created, then unchanged), list, show, an invalid one */
        _cleanup_free_ char *agent = str_printf("%s/researcher.json", f->dir);
        write_text(agent, researcher_agent);
        r = golden(f, "agent_apply", NULL, ARGS("agent", "apply", "researcher.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "agent_apply_unchanged", NULL, ARGS("agent", "apply", "researcher.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "agent_list", NULL, ARGS("agent", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);
        r = golden(f, "agent_show", NULL, ARGS("agent", "show", "researcher"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        write_text(bad, "{\"name\": \"bad\", \"provider\": \"gemini\", \"model\": \"m\", "
                        "\"tools\": [\"browser\"], \"budget\": {\"max_dollars\": 5}}");
        r = golden(f, "agent_apply_invalid", NULL, ARGS("agent", "apply", "bad.json"));
        assert_int_equal(r.exit, CLI_EXIT_FAILURE);
        cli_result_free(&r);
        r = golden(f, "agent_show_missing", NULL, ARGS("agent", "show", "nope"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);

        /* runs: start prints the id at once; no worker runs here, so it stays queued */
        r = cli_run(f, NULL, ARGS("run", "start", "hello", "--input", "{\"who\": \"world\"}"));
        assert_int_equal(r.exit, 0);
        run_id = first_line(r.out);
        assert_int_equal(strlen(run_id), 36);
        cli_result_free(&r);
        r = golden(f, "run_list", NULL, ARGS("run", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);
        r = golden(f, "run_list_json", NULL, ARGS("run", "list", "-o", "json"));
        cli_result_free(&r);
        r = golden(f, "run_list_filtered", NULL, ARGS("run", "list", "--status", "completed"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "run_show", NULL, ARGS("run", "show", run_id));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "run_show_json", NULL, ARGS("run", "show", run_id, "-o", "json"));
        cli_result_free(&r);
        r = golden(f, "run_cancel", NULL, ARGS("run", "cancel", run_id));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "run_cancel_again", NULL, ARGS("run", "cancel", run_id));
        assert_int_equal(r.exit, CLI_EXIT_CONFLICT);
        cli_result_free(&r);
        r = golden(f, "run_logs", NULL, ARGS("run", "logs", run_id));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "run_show_unknown", NULL,
                   ARGS("run", "show", "00000000-0000-4000-8000-000000000000"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);
        r = golden(f, "run_start_unknown_workflow", NULL, ARGS("run", "start", "nope"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);
        /* -o json: a failure is the API's error object on stdout, same exit code */
        r = golden(f, "run_show_unknown_json", NULL,
                   ARGS("run", "show", "00000000-0000-4000-8000-000000000000", "-o", "json"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        assert_string_equal(r.err, "");
        cli_result_free(&r);
        r = golden(f, "run_cancel_again_json", NULL, ARGS("run", "cancel", run_id, "-o", "json"));
        assert_int_equal(r.exit, CLI_EXIT_CONFLICT);
        cli_result_free(&r);

        /* the same Idempotency-Key returns the same run */
        r = cli_run(f, NULL, ARGS("run", "start", "hello", "--idempotency-key", "k1"));
        assert_int_equal(r.exit, 0);
        _cleanup_free_ char *first = first_line(r.out);
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("run", "start", "hello", "--idempotency-key", "k1"));
        assert_int_equal(r.exit, 0);
        _cleanup_free_ char *second = first_line(r.out);
        assert_string_equal(first, second);
        assert_non_null(strstr(r.err, "Idempotency-Key reused"));
        cli_result_free(&r);
        r = golden(f, "run_start_idempotency_conflict", NULL,
                   ARGS("run", "start", "hello", "--idempotency-key", "k1", "--input",
                        "{\"other\": true}"));
        assert_int_equal(r.exit, CLI_EXIT_CONFLICT);
        cli_result_free(&r);

        /* a run that went through its nodes (written as a worker would, with SQL): the
         * per-node table shows status, attempt and duration */
        test_run_move(f->db, "idempotency_key = 'k1'", "failed",
                      "attempt = 2, started_at = now() - interval '95 seconds', error = "
                      "'{\"message\": \"node nap failed\"}'");
        PQclear(test_db_must(
            f->db, "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, "
                   "output, error, started_at, finished_at) SELECT user_id, id, n.node, n.attempt, "
                   "n.status, n.output::jsonb, n.error::jsonb, now() - n.ago, now() - n.ago + "
                   "n.took FROM workflow_runs, (VALUES ('greet', 1, 'completed', "
                   "'{\"text\": \"hello\"}', NULL, interval '95 seconds', interval '1.5 "
                   "seconds'), ('nap', 1, 'failed', NULL, '{\"message\": \"timed out\"}', "
                   "interval '90 seconds', interval '60 seconds'), ('nap', 2, 'failed', NULL, "
                   "'{\"message\": \"timed out\"}', interval '30 seconds', interval '30 "
                   "seconds')) AS n(node, attempt, status, output, error, ago, took) WHERE "
                   "idempotency_key = 'k1'"));
        r = golden(f, "run_show_nodes", NULL, ARGS("run", "show", first));
        assert_int_equal(r.exit, 0);
        assert_aligned(strstr(r.out, "NODE"));
        cli_result_free(&r);
        r = golden(f, "run_show_nodes_json", NULL, ARGS("run", "show", first, "-o", "json"));
        cli_result_free(&r);
        /* the same nodes a page at a time, in node id order */
        r = golden(f, "run_nodes", NULL, ARGS("run", "nodes", first));
        assert_int_equal(r.exit, 0);
        assert_aligned(strstr(r.out, "NODE"));
        cli_result_free(&r);
        r = golden(f, "run_nodes_page_json", NULL,
                   ARGS("run", "nodes", first, "--limit", "1", "-o", "json"));
        assert_int_equal(r.exit, 0);
        assert_non_null(strstr(r.out, "\"next_cursor\": \""));
        cli_result_free(&r);
        r = golden(f, "run_nodes_page", NULL, ARGS("run", "nodes", first, "--limit", "1"));
        assert_non_null(strstr(r.err, "(more: agently run nodes "));
        cli_result_free(&r);

        /* secrets: the value comes from stdin and is never printed */
        r = golden(f, "secret_set", "sk-test-123\n", ARGS("secret", "set", "openai"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "secret_set_replace", "sk-test-456", ARGS("secret", "set", "openai"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "secret_set_empty", "", ARGS("secret", "set", "openai"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        r = golden(f, "secret_list", NULL, ARGS("secret", "list"));
        assert_int_equal(r.exit, 0);
        assert_null(strstr(r.out, "sk-test"));
        cli_result_free(&r);
        r = golden(f, "secret_list_json", NULL, ARGS("secret", "list", "-o", "json"));
        assert_null(strstr(r.out, "sk-test"));
        cli_result_free(&r);
        r = golden(f, "secret_rm", NULL, ARGS("secret", "rm", "openai"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "secret_rm_missing", NULL, ARGS("secret", "rm", "openai"));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);

        r = golden(f, "approval_list", NULL, ARGS("approval", "list"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);

        /* schedules and webhook triggers: a disabled schedule shows no next run */
        r = cli_run(f, NULL, ARGS("schedule", "create", "hello", "--cron", "0 9 * * *"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = cli_run(f, NULL,
                    ARGS("schedule", "create", "hello", "--cron", "0 9 * * *", "--timezone",
                         "Europe/Paris", "--disabled"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "schedule_list", NULL, ARGS("schedule", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("trigger", "create", "hello"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "trigger_list", NULL, ARGS("trigger", "list"));
        assert_int_equal(r.exit, 0);
        assert_aligned(r.out);
        cli_result_free(&r);

        /* alice sees her own (empty) world, not the admin's */
        r = golden(f, "run_list_other_user", NULL, ARGS("run", "list", "--token", alice_token));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("run", "show", run_id, "--token", alice_token));
        assert_int_equal(r.exit, CLI_EXIT_NOT_FOUND);
        cli_result_free(&r);
        r = golden(f, "user_list_not_admin", NULL, ARGS("user", "list", "--token", alice_token));
        assert_int_equal(r.exit, CLI_EXIT_UNAUTHORIZED);
        cli_result_free(&r);

        /* tokens: list, then revoke alice's; it stops working */
        r = golden(f, "token_list", NULL, ARGS("token", "list", "--token", alice_token));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        token_id = test_db_value(f->db, "SELECT t.id FROM api_tokens t JOIN users u ON "
                                        "u.id = t.user_id WHERE u.name = 'alice'");
        assert_non_null(token_id);
        r = golden(f, "token_revoke", NULL,
                   ARGS("token", "revoke", token_id, "--token", alice_token));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "bad_token", NULL, ARGS("run", "list", "--token", alice_token));
        assert_int_equal(r.exit, CLI_EXIT_UNAUTHORIZED);
        cli_result_free(&r);
}

static void cli_exit_codes_and_usage_errors(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *down = str_printf("http://127.0.0.1:%d", test_free_port());
        _cleanup_free_ char *other = test_tempdir("cli-other");
        struct cli_result r;

        r = golden(f, "help_run", NULL, ARGS("run", "--help"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "help_run_start", NULL, ARGS("run", "start", "--help"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = golden(f, "usage_unknown_flag", NULL, ARGS("run", "list", "--stat", "failed"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        r = golden(f, "usage_bad_limit", NULL, ARGS("run", "list", "--limit", "0"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        r = golden(f, "usage_bad_input", NULL, ARGS("run", "start", "hello", "--input", "{x"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        r = golden(f, "usage_missing_argument", NULL, ARGS("run", "show"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        /* -o json: a local usage error has the same shape, code "usage" */
        r = golden(f, "usage_bad_limit_json", NULL, ARGS("run", "list", "--limit", "0", "-ojson"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        assert_string_equal(r.err, "");
        cli_result_free(&r);
        r = golden(f, "usage_unknown_flag_json", NULL,
                   ARGS("run", "list", "--output=json", "--stat", "failed"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("run", "list", "-o", "yaml"));
        assert_int_equal(r.exit, CLI_EXIT_USAGE);
        assert_non_null(strstr(r.err, "-o/--output"));
        cli_result_free(&r);

        /* server down → 6 with the documented message */
        r = cli_run(f, NULL, ARGS("run", "list", "--server", down));
        assert_int_equal(r.exit, CLI_EXIT_UNAVAILABLE);
        assert_non_null(strstr(r.err, "could not reach agently at http://127.0.0.1:"));
        assert_non_null(strstr(r.err, "connection refused; is `agently up` running?"));
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("run", "list", "--server", down, "-o", "json"));
        assert_int_equal(r.exit, CLI_EXIT_UNAVAILABLE);
        assert_string_equal(r.err, "");
        json_t *doc = json_loads(r.out, 0, NULL), *e = json_object_get(doc, "error");
        assert_string_equal(json_string_value(json_object_get(e, "code")), "unreachable");
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                               "could not reach agently at http://127.0.0.1:"));
        json_decref(doc);
        cli_result_free(&r);

        /* no token anywhere → 4 with a hint; --data-dir finds the admin token */
        _cleanup_free_ char *other_dir = str_printf("--data-dir=%s", other);
        r = cli_run(f, NULL, ARGS("run", "list", other_dir));
        assert_int_equal(r.exit, CLI_EXIT_USAGE); /* no admin-token in that dir */
        cli_result_free(&r);
        _cleanup_free_ char *good_dir = str_printf("--data-dir=%s", f->data_dir);
        r = cli_run(f, NULL, ARGS("run", "list", good_dir, "-o", "json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        test_rm_rf(other);
}

/* --wait follows the run until it ends: 0 when it completed, 7 when it failed. */
static void cli_wait_exit_code_follows_the_run(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *wf = str_printf("%s/hello.json", f->dir);
        _cleanup_free_ char *out = str_printf("%s/wait.out", f->dir);
        _cleanup_free_ char *err = str_printf("%s/wait.err", f->dir);
        const char *outcomes[] = {"completed", "failed"};

        write_text(wf, hello_wf);
        struct cli_result r = cli_run(f, NULL, ARGS("workflow", "apply", "hello.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        for (size_t i = 0; i < 2; i++) {
                /* the previous round's output must not pass for this one's while the new CLI
                 * has not yet opened (truncated) the file */
                unlink(out);
                unlink(err);
                pid_t pid = cli_spawn(f, NULL, ARGS("run", "start", "hello", "--wait"), out, err);
                _cleanup_free_ char *id = NULL;
                int64_t deadline = test_now_ms() + 15000;

                /* the id is printed at once, before the run ends */
                while (!id || strlen(id) < 36) {
                        free(id);
                        id = slurp(out);
                        if (test_now_ms() >= deadline)
                                fail_msg("run start --wait printed no run id within 15 s: \"%s\"",
                                         id ? id : "");
                        usleep(20 * 1000);
                }
                id[36] = '\0';
                usleep(300 * 1000);
                assert_int_equal(waitpid(pid, NULL, WNOHANG), 0); /* still waiting */
                if (i == 0)
                        test_run_move(f->db, "status = 'queued'", "completed",
                                      "started_at = now() - interval '2 seconds', output = "
                                      "'{\"text\": \"hello\"}'");
                else
                        test_run_move(f->db, "status = 'queued'", "failed",
                                      "started_at = now(), error = '{\"message\": \"boom\"}'");
                int code = wait_exit(pid, 20000);
                _cleanup_free_ char *e = slurp(err);
                assert_int_equal(code, i == 0 ? CLI_EXIT_OK : CLI_EXIT_RUN_FAILED);
                assert_non_null(strstr(e, outcomes[i]));
        }
}

static void append_events(struct fixture *f, const char *run_id, int from, int to)
{
        for (int i = from; i <= to; i++) {
                _cleanup_free_ char *seq = test_db_value(
                    f->db,
                    "SELECT agently_append_event_unfenced('%s', 'test.tick', 'n1', 1, 'info', "
                    "'tick %d', '{\"i\": %d}')",
                    run_id, i, i);
                assert_non_null(seq);
        }
}

/* Counts lines of out that contain "tick N" for each N; all must be exactly 1. */
static int count_ticks(const char *out, int n)
{
        int seen = 0;

        for (int i = 1; i <= n; i++) {
                char needle[32];
                const char *p = out;
                int c = 0;
                snprintf(needle, sizeof(needle), "tick %d ", i);
                while ((p = strstr(p, needle))) {
                        c++;
                        p++;
                }
                if (c > 1)
                        fail_msg("event 'tick %d' printed %d times:\n%s", i, c, out);
                seen += c;
        }
        return seen;
}

static void wait_for_ticks(const char *path, int n, int timeout_ms)
{
        int64_t deadline = test_now_ms() + timeout_ms;

        for (;;) {
                _cleanup_free_ char *out = slurp(path);
                if (count_ticks(out, n) >= n)
                        return;
                if (test_now_ms() > deadline)
                        fail_msg("only %d of %d events after %d ms:\n%s", count_ticks(out, n), n,
                                 timeout_ms, out);
                usleep(50 * 1000);
        }
}

/* `run logs --follow` survives an API restart: it reconnects with Last-Event-ID and prints
 * every event once, in seq order, then exits when the run ends. */
static void cli_logs_follow_reconnects_without_gaps_or_duplicates(void **state)
{
        struct fixture *f = *state;
        _cleanup_free_ char *wf = str_printf("%s/hello.json", f->dir);
        _cleanup_free_ char *out = str_printf("%s/follow.out", f->dir);
        _cleanup_free_ char *err = str_printf("%s/follow.err", f->dir);
        _cleanup_free_ char *run_id = NULL;
        struct cli_result r;

        write_text(wf, hello_wf);
        r = cli_run(f, NULL, ARGS("workflow", "apply", "hello.json"));
        assert_int_equal(r.exit, 0);
        cli_result_free(&r);
        r = cli_run(f, NULL, ARGS("run", "start", "hello"));
        assert_int_equal(r.exit, 0);
        run_id = first_line(r.out);
        cli_result_free(&r);
        /* events of this run only from here on: base the count on ticks */
        pid_t pid = cli_spawn(f, NULL, ARGS("run", "logs", run_id, "--follow"), out, err);
        append_events(f, run_id, 1, 3);
        wait_for_ticks(out, 3, 10000);

        /* the API dies; events keep being written; a new API comes up on the same port */
        assert_int_ge(test_stop_process(f->api, SIGKILL, 5000), 0);
        f->api = -1;
        append_events(f, run_id, 4, 6);
        usleep(500 * 1000);
        f->api = start_api(f);
        append_events(f, run_id, 7, 8);
        wait_for_ticks(out, 8, 20000);
        assert_int_equal(waitpid(pid, NULL, WNOHANG), 0); /* still following */

        test_run_move(f->db, "status = 'queued'", "completed", "started_at = now()");
        int code = wait_exit(pid, 20000);
        _cleanup_free_ char *text = slurp(out);
        _cleanup_free_ char *errs = slurp(err);
        assert_int_equal(code, 0);
        assert_int_equal(count_ticks(text, 8), 8);
        /* in order */
        const char *p = text;
        for (int i = 1; i <= 8; i++) {
                char needle[32];
                snprintf(needle, sizeof(needle), "tick %d ", i);
                p = strstr(p, needle);
                if (!p)
                        fail_msg("tick %d out of order:\n%s", i, text);
        }
        assert_non_null(strstr(errs, "reconnecting"));
        assert_non_null(strstr(errs, "completed"));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(cli_main_commands_match_their_goldens, setup, teardown),
            cmocka_unit_test_setup_teardown(cli_exit_codes_and_usage_errors, setup, teardown),
            cmocka_unit_test_setup_teardown(cli_wait_exit_code_follows_the_run, setup, teardown),
            cmocka_unit_test_setup_teardown(cli_logs_follow_reconnects_without_gaps_or_duplicates,
                                            setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
