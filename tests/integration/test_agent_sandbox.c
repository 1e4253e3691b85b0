/*
 * The agent executor runs in the sandbox (src/agent/agent_spawn.c, issue 11): a worker
 * started with `--executor` runs net_executor, a hostile executor that tries a TCP
 * connection to the database's port and a connection to its unix socket, and reports what
 * happened in an `agent.trace` event and its result. Run by the worker, both attempts fail
 * (seccomp refuses the inet socket; the socket's path does not exist inside); run directly,
 * the same program connects to both (the control: the attempts are real).
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_fixture.h"
#include "cleanup.h"
#include "fileio.h"
#include "strutil.h"
#include "worker_sink.h"

static struct agent_fixture S;
static char prompt[300]; /* "tcp <port> unix <path>": net_executor's targets */

static int setup(void **state)
{
        agent_fixture_setup(&S, "agentsb", &(struct agent_fixture_options){.servers = false});
        *state = &S;
        assert_int_equal(PQhost(S.db)[0], '/'); /* the harness connects over its socket */
        snprintf(prompt, sizeof(prompt), "tcp %s unix %s/.s.PGSQL.%s", PQport(S.db), PQhost(S.db),
                 PQport(S.db));
        return 0;
}

/* The control: net_executor outside any sandbox reaches both. */
static void test_unsandboxed_the_attempts_connect(void **state)
{
        (void)state;
        _cleanup_free_ char *in = str_printf("%s/start.json", S.dir);
        _cleanup_free_ char *start =
            str_printf("{\"v\":1,\"type\":\"start\",\"agent\":{\"prompt\":\"%s\"}}\n", prompt);
        assert_int_equal(file_write_atomic(in, start, strlen(start), 0600), 0);
        _cleanup_free_ char *cmd = str_printf("%s < %s", NET_EXECUTOR, in);
        FILE *f = popen(cmd, "r");
        char line[4096];
        assert_non_null(f);
        assert_non_null(fgets(line, sizeof(line), f)); /* the event */
        assert_non_null(fgets(line, sizeof(line), f)); /* the result */
        assert_int_equal(pclose(f), 0);
        _cleanup_json_ json_t *result = json_loads(line, 0, NULL);
        json_t *out = json_object_get(result, "output");
        assert_string_equal(json_string_value(json_object_get(out, "tcp")), "connected");
        assert_string_equal(json_string_value(json_object_get(out, "unix")), "connected");
}

static void test_sandboxed_executor_reaches_neither(void **state)
{
        (void)state;
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"net\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"http://127.0.0.1:9\",\"model\":\"m\","
            "\"prompt\":\"%s\",\"tools\":[],\"output_schema\":{\"type\":\"object\"}}}]}",
            prompt);
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, "net", 1, def);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        _cleanup_free_ char *log = str_printf("%s/worker.log", S.dir);
        const char *const extra[] = {"--executor", NET_EXECUTOR, NULL};
        pid_t w = worker_test_spawn(S.conninfo, "sb-w1", "5s", "500ms", extra, log);
        bool ended = worker_test_wait_status(S.db, run, "completed|failed", 60000);
        test_stop_process(w, SIGTERM, 15000);
        _cleanup_free_ char *st =
            test_db_value(S.db,
                          "SELECT status || ' ' || coalesce(error::text, '') FROM workflow_runs"
                          " WHERE id = '%s'",
                          run);
        if (!ended || !st || strcmp(st, "completed ") != 0) {
                _cleanup_free_ char *text = NULL;
                size_t len = 0;
                if (file_read_all(log, 1 << 20, &text, &len) == 0 && text)
                        fprintf(stderr, "%s\n", text);
                fail_msg("run %s: %s", run, st ? st : "(none)");
        }
        /* seccomp refuses every socket family but AF_UNIX; the socket is not there inside */
        assert_db_equal("socket: Operation not permitted", S.db,
                        "SELECT output->'think'->>'tcp' FROM workflow_runs WHERE id = '%s'", run);
        assert_db_equal("connect: No such file or directory", S.db,
                        "SELECT output->'think'->>'unix' FROM workflow_runs WHERE id = '%s'", run);
        /* and the attempts are recorded in the run's events */
        assert_db_equal("socket: Operation not permitted|connect: No such file or directory", S.db,
                        "SELECT data->>'tcp' || '|' || (data->>'unix') FROM logs WHERE"
                        " workflow_run_id = '%s' AND kind = 'agent.trace'",
                        run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_unsandboxed_the_attempts_connect),
            cmocka_unit_test(test_sandboxed_executor_reaches_neither),
        };
        return cmocka_run_group_tests(tests, setup, agent_fixture_group_teardown);
}
