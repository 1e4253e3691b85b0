/*
 * The shell and run_code tools (src/sandbox/sandbox_tools.h) and the long-lived pipe mode
 * of the sandbox the agent executor uses, with real sandboxed processes: arguments, stdin,
 * files in the workspace, the files written, kept files copied out as artifacts (never
 * through a symlink the sandbox planted), the interpreters discovered rather than assumed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fileio.h"
#include "sandbox.h"
#include "sandbox_tools.h"
#include "strutil.h"
#include "testlib.h"

static struct sandbox *sb;
static struct sandbox_tools *tools;
static char *tmp;

static int group_setup(void **state)
{
        (void)state;
        char *error = NULL;
        if (sandbox_open(NULL, &sb, &error) < 0 || sandbox_check(sb, &error) < 0 ||
            sandbox_tools_open(sb, &tools, &error) < 0) {
                fprintf(stderr, "sandbox unavailable: %s\n", error ? error : "?");
                free(error);
                return -1;
        }
        tmp = test_tempdir("sandbox-tools");
        return 0;
}

static int group_teardown(void **state)
{
        (void)state;
        test_rm_rf(tmp);
        free(tmp);
        sandbox_tools_free(tools);
        sandbox_free(sb);
        return 0;
}

struct call {
        char *workspace;
        char *artifacts;
        struct sandbox_tool_call c;
};

static struct call *new_call(const char *name)
{
        struct call *call = calloc(1, sizeof(*call));
        call->workspace = str_printf("%s/%s-ws", tmp, name);
        call->artifacts = str_printf("%s/%s-artifacts", tmp, name);
        assert_int_equal(sandbox_workspace_create(sb, call->workspace), 0);
        call->c = (struct sandbox_tool_call){.workspace = call->workspace,
                                             .artifact_dir = call->artifacts,
                                             .limits = sandbox_limits_default()};
        call->c.limits.wall_ms = 30000;
        return call;
}

static void free_call(struct call *call)
{
        assert_int_equal(sandbox_workspace_remove(call->workspace), 0);
        free(call->workspace);
        free(call->artifacts);
        free(call);
}

static json_t *run_tool(struct call *call, const char *tool, const char *args_text)
{
        json_error_t jerr;
        json_t *args = json_loads(args_text, 0, &jerr);
        assert_non_null(args);
        json_t *result = NULL;
        char *error = NULL;
        int r = sandbox_tool_run(tools, &call->c, tool, args, &result, &error);
        if (r < 0)
                fail_msg("%s failed: %s", tool, error ? error : "?");
        free(error);
        json_decref(args);
        return result;
}

static int run_tool_error(struct call *call, const char *tool, const char *args_text, char **error)
{
        json_t *args = json_loads(args_text, 0, NULL);
        assert_non_null(args);
        json_t *result = NULL;
        int r = sandbox_tool_run(tools, &call->c, tool, args, &result, error);
        json_decref(args);
        assert_null(result);
        return r;
}

static const char *str_of(const json_t *o, const char *key)
{
        const char *s = json_string_value(json_object_get(o, key));
        assert_non_null(s);
        return s;
}

static void test_languages_discovered(void **state)
{
        (void)state;
        json_t *langs = sandbox_tools_languages(tools);
        bool python = false, node = false;
        size_t i;
        json_t *l;
        json_array_foreach (langs, i, l) {
                python |= strcmp(str_of(l, "language"), "python") == 0;
                node |= strcmp(str_of(l, "language"), "node") == 0;
                assert_int_gt(strlen(str_of(l, "version")), 0);
        }
        /* offered exactly when the host has them where the sandbox looks */
        bool host_python =
            access("/usr/bin/python3", X_OK) == 0 || access("/usr/local/bin/python3", X_OK) == 0;
        bool host_node = access("/usr/bin/node", X_OK) == 0 ||
                         access("/usr/local/bin/node", X_OK) == 0 ||
                         access("/usr/bin/nodejs", X_OK) == 0;
        assert_int_equal(python, host_python);
        assert_int_equal(node, host_node);
        json_t *schema = sandbox_tools_schema(tools, "run_code");
        assert_int_equal(
            json_array_size(json_object_get(
                json_object_get(json_object_get(schema, "properties"), "language"), "enum")),
            json_array_size(langs));
        json_decref(schema);
        json_decref(langs);
}

static void test_shell_files_and_artifacts(void **state)
{
        (void)state;
        struct call *call = new_call("shell");
        json_t *r = run_tool(call, "shell",
                             "{\"command\": \"tr a-z A-Z < in.txt > out.txt; mkdir -p d; echo 1 "
                             "> d/n; echo done; echo oops >&2; exit 3\", \"files\": {\"in.txt\": "
                             "\"hello\"}, \"keep\": [\"out.txt\", \"d/n\"]}");
        assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 3);
        assert_string_equal(str_of(r, "stdout"), "done\n");
        assert_string_equal(str_of(r, "stderr"), "oops\n");
        assert_false(json_is_true(json_object_get(r, "timed_out")));
        /* in.txt was written before the call: only what the command wrote is listed */
        json_t *expected = json_pack("[{s:s, s:i}, {s:s, s:i}]", "path", "d/n", "size", 2, "path",
                                     "out.txt", "size", 5);
        assert_json_equal(json_object_get(r, "files_written"), expected);
        json_decref(expected);
        json_t *artifacts = json_object_get(r, "artifacts");
        assert_int_equal(json_array_size(artifacts), 2);
        char *content = NULL;
        size_t len;
        assert_int_equal(
            file_read_all(str_of(json_array_get(artifacts, 0), "path"), 1024, &content, &len), 0);
        assert_string_equal(content, "HELLO");
        free(content);
        assert_int_equal(json_array_size(json_object_get(r, "artifact_errors")), 0);
        json_decref(r);

        /* stdin, and the environment the caller adds */
        const char *const env[] = {"GREETING=hi", NULL};
        call->c.envp = env;
        r = run_tool(call, "shell",
                     "{\"command\": \"printf '%s:' \\\"$GREETING\\\"; wc -c\", "
                     "\"stdin\": \"abc\"}");
        assert_string_equal(str_of(r, "stdout"), "hi:3\n");
        assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 0);
        json_decref(r);
        free_call(call);
}

static void test_run_code(void **state)
{
        (void)state;
        struct call *call = new_call("code");
        json_t *langs = sandbox_tools_languages(tools);
        size_t i;
        json_t *l;
        size_t ran = 0;
        json_array_foreach (langs, i, l) {
                const char *language = str_of(l, "language");
                json_t *r = NULL;
                if (strcmp(language, "python") == 0)
                        r = run_tool(call, "run_code",
                                     "{\"language\": \"python\", \"args\": [\"2\", \"40\"], "
                                     "\"code\": \"import sys\\nopen('py.txt', 'w').write('x')\\n"
                                     "print(sum(int(a) for a in sys.argv[1:]))\"}");
                else if (strcmp(language, "node") == 0)
                        r = run_tool(call, "run_code",
                                     "{\"language\": \"node\", \"args\": [\"2\", \"40\"], "
                                     "\"code\": \"require('fs').writeFileSync('js.txt', 'x'); "
                                     "console.log(process.argv.slice(2).map(Number).reduce((a, "
                                     "b) => a + b))\"}");
                if (!r)
                        continue;
                assert_string_equal(str_of(r, "stdout"), "42\n");
                assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 0);
                json_t *written = json_object_get(r, "files_written");
                assert_int_equal(json_array_size(written), 1);
                json_decref(r);
                ran++;
        }
        assert_int_equal(ran, json_array_size(langs));
        json_decref(langs);
        free_call(call);
}

/* Runs tool with args (a JSON object this takes); the result, or fails the test. */
static json_t *run_tool_args(struct call *call, const char *tool, json_t *args)
{
        char *text = json_dumps(args, JSON_COMPACT);
        json_decref(args);
        assert_non_null(text);
        json_t *r = run_tool(call, tool, text);
        free(text);
        return r;
}

static void assert_ran(json_t *r, const char *stdout_expected)
{
        if (json_integer_value(json_object_get(r, "exit_status")) != 0)
                fail_msg("exit status %lld, stderr: %s",
                         (long long)json_integer_value(json_object_get(r, "exit_status")),
                         str_of(r, "stderr"));
        assert_string_equal(str_of(r, "stdout"), stdout_expected);
}

/* What the runtimes do under the seccomp allowlist beyond printing: the shell with
 * coreutils, a fifo, archives, timers; python3 with a subprocess, threads, a process pool
 * (fork, POSIX semaphores in /dev/shm, pipes), a unix socketpair and select; node with a
 * child process, a worker thread, the libuv thread pool (fs.promises), zlib, crypto and a
 * unix-socket server. And from inside a real tool call, a syscall that is harmless but not
 * on the list (ioprio_get, through python's ctypes) is refused with EPERM. */
static void test_runtimes_work_under_the_allowlist(void **state)
{
        (void)state;
        struct call *call = new_call("runtimes");
        /* a node worker thread reserves its own code range: more than the 1 GiB default */
        call->c.limits.memory_bytes = (uint64_t)2 << 30;
        json_t *r = run_tool_args(
            call, "shell",
            json_pack("{s:s}", "command",
                      "set -e; mkdir -p d/e; echo hello > d/e/f; cp -a d d2; mv d2 d3; "
                      "ln -s d3 l; ls -la l/e > /dev/null; find . -name f | sort | xargs cat; "
                      "printf 'b\\na\\n' | sort | tr '\\n' ' '; echo; "
                      "sha256sum d/e/f | cut -c1-8; tar czf t.tgz d; tar tzf t.tgz | wc -l; "
                      "mkfifo p; (echo fifo > p &); cat p; "
                      "timeout 0.2 sleep 5 || echo timeout $?; "
                      "seq 3 | awk '{s += $1} END {print s}'; sed 's/h/H/' d/e/f; "
                      "stat -c %s d/e/f; id -u; date +%Y > /dev/null; df . > /dev/null; "
                      "du -s d > /dev/null; head -c 4 /dev/urandom | wc -c; echo $((6 * 7))"));
        assert_ran(r, "hello\nhello\na b \n5891b5b5\n3\nfifo\ntimeout 124\n6\nHello\n6\n1000\n4\n"
                      "42\n");
        json_decref(r);

        json_t *langs = sandbox_tools_languages(tools);
        size_t i;
        json_t *l;
        json_array_foreach (langs, i, l) {
                const char *language = str_of(l, "language");
                if (strcmp(language, "python") == 0) {
                        r = run_tool_args(
                            call, "run_code",
                            json_pack(
                                "{s:s, s:s}", "language", "python", "code",
                                "import ctypes, hashlib, multiprocessing, os, select, socket\n"
                                "import subprocess, tempfile, threading\n"
                                "sub = subprocess.run(['sh', '-c', 'echo sub'], "
                                "capture_output=True, text=True).stdout.strip()\n"
                                "got = []\n"
                                "t = threading.Thread(target=lambda: got.append(sum(range(10))))\n"
                                "t.start(); t.join()\n"
                                "with multiprocessing.Pool(2) as pool:\n"
                                "    pooled = pool.map(abs, [-1, -2])\n"
                                "a, b = socket.socketpair(); a.sendall(b'ping')\n"
                                "select.select([b], [], [], 5)\n"
                                "with tempfile.NamedTemporaryFile(dir='.') as f:\n"
                                "    f.write(b'x')\n"
                                "libc = ctypes.CDLL(None, use_errno=True)\n"
                                "ioprio = libc.syscall(252, 1, 0)  # ioprio_get, x86_64\n"
                                "print(sub, got[0], pooled, b.recv(4).decode(), "
                                "hashlib.sha256(b'').hexdigest()[:8], len(os.urandom(8)))\n"
                                "print('ioprio_get', ctypes.get_errno() if ioprio < 0 else 0)\n"));
                        assert_ran(r, "sub 45 [1, 2] ping e3b0c442 8\nioprio_get 1\n");
                } else if (strcmp(language, "node") == 0) {
                        r = run_tool_args(
                            call, "run_code",
                            json_pack(
                                "{s:s, s:s}", "language", "node", "code",
                                "const cp = require('child_process'), fs = require('fs');\n"
                                "const crypto = require('crypto'), net = require('net');\n"
                                "const zlib = require('zlib');\n"
                                "const { Worker } = require('worker_threads');\n"
                                "const sub = cp.execSync('echo sub').toString().trim();\n"
                                "const w = new Worker('require(\"worker_threads\").parentPort"
                                ".postMessage(6 * 7)', { eval: true });\n"
                                "w.on('message', async (m) => {\n"
                                "  await fs.promises.writeFile('n.txt', 'x');\n"
                                "  const back = await fs.promises.readFile('n.txt', 'utf8');\n"
                                "  const z = zlib.gunzipSync(zlib.gzipSync('zip')).toString();\n"
                                "  const hash = crypto.createHash('sha256').update('')"
                                ".digest('hex').slice(0, 8);\n"
                                "  const server = net.createServer((c) => c.end('pong'));\n"
                                "  server.listen('/tmp/s.sock', () => {\n"
                                "    net.connect('/tmp/s.sock').on('data', (d) => {\n"
                                "      console.log(sub, m, back, z, hash, "
                                "crypto.randomBytes(8).length, d.toString());\n"
                                "      server.close(); w.terminate();\n"
                                "    });\n"
                                "  });\n"
                                "});\n"));
                        assert_ran(r, "sub 42 x zip e3b0c442 8 pong\n");
                } else {
                        continue;
                }
                json_decref(r);
        }
        json_decref(langs);
        free_call(call);
}

static void test_wrong_arguments(void **state)
{
        (void)state;
        struct call *call = new_call("wrong");
        char *error = NULL;
        assert_int_equal(
            run_tool_error(call, "run_code", "{\"language\": \"cobol\", \"code\": \"x\"}", &error),
            -EINVAL);
        assert_non_null(strstr(error, "\"language\" must be one of"));
        free(error);
        error = NULL;
        assert_int_equal(run_tool_error(call, "shell", "{}", &error), -EINVAL);
        assert_string_equal(error, "shell: \"command\" is required (a command line for /bin/sh)");
        free(error);
        error = NULL;
        assert_int_equal(run_tool_error(call, "shell",
                                        "{\"command\": \"true\", \"keep\": [\"../etc/passwd\"]}",
                                        &error),
                         -EINVAL);
        free(error);
        error = NULL;
        assert_int_equal(run_tool_error(call, "shell",
                                        "{\"command\": \"true\", \"files\": {\"/abs\": \"x\"}}",
                                        &error),
                         -EINVAL);
        free(error);
        error = NULL;
        assert_int_equal(
            run_tool_error(call, "shell", "{\"command\": \"true\", \"cwd\": \"/\"}", &error),
            -EINVAL);
        assert_string_equal(error, "shell has no argument \"cwd\"");
        free(error);
        free_call(call);
}

static void test_kept_symlinks_not_followed(void **state)
{
        (void)state;
        /* a host file the sandbox cannot see: a symlink to it, planted in the workspace,
         * must not make the worker copy it out */
        char *secret = str_printf("%s/host-secret", tmp);
        assert_int_equal(file_write_atomic(secret, "s3cret", 6, 0600), 0);
        struct call *call = new_call("links");
        char *args =
            str_printf("{\"command\": \"ln -s %s abs; ln -s ../../../../../../etc/hostname "
                       "rel; mkfifo fifo\", \"keep\": [\"abs\", \"rel\", \"fifo\"]}",
                       secret);
        json_t *r = run_tool(call, "shell", args);
        assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 0);
        assert_int_equal(json_array_size(json_object_get(r, "artifacts")), 0);
        json_t *errors = json_object_get(r, "artifact_errors");
        assert_int_equal(json_array_size(errors), 3);
        assert_string_equal(str_of(json_array_get(errors, 0), "error"), "a symlink (not followed)");
        assert_string_equal(str_of(json_array_get(errors, 1), "error"), "a symlink (not followed)");
        assert_string_equal(str_of(json_array_get(errors, 2), "error"), "not a regular file");
        char *copied = str_printf("%s/abs", call->artifacts);
        struct stat st;
        assert_int_equal(lstat(copied, &st), -1);
        json_decref(r);
        free(copied);
        free(args);
        free_call(call);
        free(secret);
}

static void test_timeout_argument(void **state)
{
        (void)state;
        struct call *call = new_call("timeout");
        json_t *r = run_tool(call, "shell",
                             "{\"command\": \"sleep 20 & sleep 20\", \"timeout\": \"500ms\"}");
        assert_true(json_is_true(json_object_get(r, "timed_out")));
        assert_int_lt(json_integer_value(json_object_get(r, "duration_ms")), 5000);
        json_decref(r);
        free_call(call);
}

/* Disk use of the workspace in bytes of blocks (as the cap counts it). */
static long long du_bytes(const char *dir)
{
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "du -s -B1 %s", dir);
        FILE *f = popen(cmd, "r");
        long long n = -1;
        assert_non_null(f);
        if (fscanf(f, "%lld", &n) != 1)
                n = -1;
        pclose(f);
        return n;
}

/*
 * The workspace's disk cap: a call writing many files, each well under the file size
 * limit, past a 4 MiB cap is killed and says why (workspace_full, error); the workspace
 * holds far less than what it meant to write (400 MiB). A workspace over the cap may still
 * shrink: the next call removes files and runs to its end.
 */
static void test_workspace_disk_cap(void **state)
{
        (void)state;
        struct call *call = new_call("disk");
        call->c.workspace_bytes = 4 << 20;
        json_t *r = run_tool(call, "shell",
                             "{\"command\": \"i=0; while [ $i -lt 400 ]; do head -c 1048576 "
                             "/dev/zero > f$i || exit 3; i=$((i+1)); done; echo wrote all\"}");
        assert_true(json_is_true(json_object_get(r, "workspace_full")));
        assert_non_null(strstr(str_of(r, "error"), "passed its disk cap of 4194304 bytes"));
        assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 137);
        assert_null(strstr(str_of(r, "stdout"), "wrote all"));
        long long used = du_bytes(call->workspace);
        printf("disk cap 4 MiB: the workspace holds %lld bytes when the call is stopped\n", used);
        assert_int_lt(used, 400LL << 20);
        json_decref(r);

        r = run_tool(call, "shell", "{\"command\": \"rm -f f*; echo cleaned\"}");
        assert_null(json_object_get(r, "workspace_full"));
        assert_int_equal(json_integer_value(json_object_get(r, "exit_status")), 0);
        assert_string_equal(str_of(r, "stdout"), "cleaned\n");
        json_decref(r);

        /* many empty files cost no blocks but are counted */
        r = run_tool(call, "shell",
                     "{\"command\": \"mkdir d && cd d && i=0; while [ $i -lt 200000 ]; do : > "
                     "$i; i=$((i+1)); done\", \"timeout\": \"50s\"}");
        assert_true(json_is_true(json_object_get(r, "workspace_full")));
        assert_non_null(strstr(str_of(r, "error"), "files and directories"));
        json_decref(r);
        free_call(call);
}

static void test_pipes_mode(void **state)
{
        (void)state;
        /* the executor's mode: stdin and stdout stay open pipes the caller drives */
        const char *const argv[] = {"cat", NULL};
        const char *const envp[] = {"PATH=/usr/bin:/bin", NULL};
        struct sandbox_spec spec = {.argv = argv, .envp = envp, .limits = sandbox_limits_default()};
        spec.limits.wall_ms = 0;
        struct sandbox_proc *p;
        char *error = NULL;
        assert_int_equal(sandbox_spawn(sb, &spec, SANDBOX_PIPES, &p, &error), 0);
        char got[64] = {0};
        size_t have = 0;
        for (int round = 0; round < 2; round++) {
                const char *line = round == 0 ? "{\"v\":1}\n" : "second\n";
                assert_int_equal(write(sandbox_proc_stdin_fd(p), line, strlen(line)),
                                 (ssize_t)strlen(line));
                size_t want = have + strlen(line);
                int64_t deadline = test_now_ms() + 10000;
                while (have < want && test_now_ms() < deadline) {
                        struct pollfd fds[SANDBOX_POLL_MAX + 1];
                        int timeout;
                        int n = sandbox_proc_poll_fds(p, fds, &timeout);
                        fds[n++] =
                            (struct pollfd){.fd = sandbox_proc_stdout_fd(p), .events = POLLIN};
                        poll(fds, (nfds_t)n, 200);
                        ssize_t r =
                            read(sandbox_proc_stdout_fd(p), got + have, sizeof(got) - 1 - have);
                        if (r > 0)
                                have += (size_t)r;
                        assert_int_equal(sandbox_proc_step(p), 0);
                }
        }
        assert_string_equal(got, "{\"v\":1}\nsecond\n");
        sandbox_proc_close_stdin(p);
        int64_t deadline = test_now_ms() + 10000;
        int r;
        while ((r = sandbox_proc_step(p)) == 0 && test_now_ms() < deadline) {
                struct pollfd fds[SANDBOX_POLL_MAX];
                int timeout;
                int n = sandbox_proc_poll_fds(p, fds, &timeout);
                poll(fds, (nfds_t)n, timeout < 0 || timeout > 200 ? 200 : timeout);
        }
        assert_int_equal(r, 1);
        assert_int_equal(sandbox_proc_result(p)->exit_status, 0);
        assert_null(sandbox_proc_result(p)->out);
        sandbox_proc_free(p);
}

static void test_executor_runs_in_a_sandbox(void **state)
{
        (void)state;
        /* what the agent module does for each agent step: agently executor, bound read-only,
         * speaking the executor protocol over the pipes */
        const char *const argv[] = {"/agently", "executor", NULL};
        const char *const envp[] = {"PATH=/usr/bin:/bin", "AGENTLY_LOG_LEVEL=warn",
                                    /* a sanitizer build's leak check stops the world with
                                     * ptrace, which the sandbox refuses */
                                    "ASAN_OPTIONS=detect_leaks=0", NULL};
        struct sandbox_bind bind = {.host_path = AGENTLY_BINARY, .path = "/agently"};
        struct sandbox_spec spec = {.argv = argv,
                                    .envp = envp,
                                    .binds = &bind,
                                    .n_binds = 1,
                                    .limits = sandbox_limits_default()};
#if defined(__SANITIZE_ADDRESS__)
        spec.limits.memory_bytes = SANDBOX_UNLIMITED;
#endif
        spec.limits.wall_ms = 60000;
        struct sandbox_proc *p;
        char *error = NULL;
        assert_int_equal(sandbox_spawn(sb, &spec, SANDBOX_PIPES, &p, &error), 0);
        const char start[] =
            "{\"v\":1,\"type\":\"start\",\"agent\":{\"name\":\"a\",\"model\":\"m\","
            "\"system\":\"s\",\"prompt\":\"What is at /a?\",\"tools\":[],"
            "\"output_schema\":null,\"max_turns\":5},\"input\":{},\"depth\":0}\n";
        assert_int_equal(write(sandbox_proc_stdin_fd(p), start, strlen(start)),
                         (ssize_t)strlen(start));
        char line[65536];
        size_t have = 0;
        int64_t deadline = test_now_ms() + 30000;
        while (!memchr(line, '\n', have) && have < sizeof(line) - 1 && test_now_ms() < deadline) {
                struct pollfd fds[SANDBOX_POLL_MAX + 1];
                int timeout;
                int n = sandbox_proc_poll_fds(p, fds, &timeout);
                fds[n++] = (struct pollfd){.fd = sandbox_proc_stdout_fd(p), .events = POLLIN};
                poll(fds, (nfds_t)n, 200);
                ssize_t r = read(sandbox_proc_stdout_fd(p), line + have, sizeof(line) - 1 - have);
                if (r > 0)
                        have += (size_t)r;
                if (sandbox_proc_step(p) == 1)
                        fail_msg("the executor ended: %s", sandbox_proc_result(p)->err);
        }
        line[have] = '\0';
        json_t *request = json_loads(line, JSON_DISABLE_EOF_CHECK, NULL);
        if (!request)
                fail_msg("no request from the executor: %s", line);
        assert_string_equal(json_string_value(json_object_get(request, "type")), "llm");
        json_decref(request);
        sandbox_proc_free(p);
}

static void test_spawn_fds(void **state)
{
        (void)state;
        /* the caller drives everything: pipes, kill, reap */
        const char *const argv[] = {"sh", "-c",
                                    "read line; echo \"got $line\"; echo note >&2; "
                                    "sleep 60 & sleep 60",
                                    NULL};
        const char *const envp[] = {"PATH=/usr/bin:/bin", NULL};
        struct sandbox_spec spec = {.argv = argv, .envp = envp, .limits = sandbox_limits_default()};
        pid_t pid;
        int in, out, err;
        char *error = NULL;
        assert_int_equal(sandbox_spawn_fds(sb, &spec, &pid, &in, &out, &err, &error), 0);
        assert_int_equal(write(in, "x\n", 2), 2);
        char buf[64] = {0}, ebuf[64] = {0};
        size_t have = 0, ehave = 0;
        int64_t deadline = test_now_ms() + 20000;
        while ((!strchr(buf, '\n') || !strchr(ebuf, '\n')) && test_now_ms() < deadline) {
                struct pollfd fds[2] = {{.fd = out, .events = POLLIN},
                                        {.fd = err, .events = POLLIN}};
                poll(fds, 2, 200);
                ssize_t n = read(out, buf + have, sizeof(buf) - 1 - have);
                if (n > 0)
                        have += (size_t)n;
                n = read(err, ebuf + ehave, sizeof(ebuf) - 1 - ehave);
                if (n > 0)
                        ehave += (size_t)n;
        }
        assert_string_equal(buf, "got x\n");
        assert_string_equal(ebuf, "note\n");
        /* SIGKILL to bwrap ends everything inside: the pipes reach end of file at once */
        int64_t killed = test_now_ms();
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        struct pollfd fd = {.fd = out, .events = POLLIN};
        while (test_now_ms() < killed + 5000 && read(out, buf, sizeof(buf)) != 0)
                poll(&fd, 1, 100);
        assert_int_lt(test_now_ms() - killed, 5000);
        close(in);
        close(out);
        close(err);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_languages_discovered),
            cmocka_unit_test(test_shell_files_and_artifacts),
            cmocka_unit_test(test_run_code),
            cmocka_unit_test(test_runtimes_work_under_the_allowlist),
            cmocka_unit_test(test_wrong_arguments),
            cmocka_unit_test(test_kept_symlinks_not_followed),
            cmocka_unit_test(test_timeout_argument),
            cmocka_unit_test(test_workspace_disk_cap),
            cmocka_unit_test(test_pipes_mode),
            cmocka_unit_test(test_executor_runs_in_a_sandbox),
            cmocka_unit_test(test_spawn_fds),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
