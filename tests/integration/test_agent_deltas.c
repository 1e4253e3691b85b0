/*
 * The form of an llm request does not change what replay matches (docs/executor-protocol.md,
 * "Optional features"): the native executor sends the messages added since its previous llm
 * request (`messages_from`), whole_executor (the native loop not offered the feature) sends
 * whole lists, and the worker rebuilds and hashes the whole request either way. A worker is
 * SIGKILLed while the third of four LLM calls is in flight with one form; the next worker
 * resumes with the other: calls 1 and 2 are answered from the journal (no nondeterminism),
 * the server receives calls 3 and 4 only — call 3 with the very body the killed one had,
 * the whole conversation — no tool effect is repeated, and the output is the same.
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_fixture.h"
#include "cleanup.h"
#include "llm_server.h"
#include "strutil.h"
#include "worker_sink.h"

static struct agent_fixture S;

static int setup(void **state)
{
        agent_fixture_setup(&S, "agentdelta", &(struct agent_fixture_options){.servers = true});
        *state = &S;
        return 0;
}

static pid_t spawn(const char *executor)
{
        const char *const extra[] = {"--executor", executor, NULL};

        return agent_fixture_spawn_worker(&S, "delta-w", "2s", executor ? extra : NULL);
}

/* first: the executor of the worker that is killed (NULL: the native one); then: the
 * resuming worker's. */
static void replays_across_forms(const char *tag, const char *first, const char *then)
{
        char prefix[64];
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *members =
            str_printf("\"system\":\"You call tools when asked.\",\"prompt\":\"Fetch a, b and c "
                       "from %s.\",\"tools\":[\"http_request\"],\"allowed_hosts\":[\"127.0.0.1\"]",
                       tag);
        _cleanup_free_ char *wf = agent_fixture_think_workflow(&S, tag, members);
        _cleanup_free_ char *a = agent_fixture_tool_step(&S, tag, "a", NULL),
                            *b = agent_fixture_tool_step(&S, tag, "b", NULL),
                            *c = agent_fixture_tool_step(&S, tag, "c", ",\"delay_ms\":8000"),
                            *c2 = agent_fixture_tool_step(&S, tag, "c", NULL);
        _cleanup_free_ char *script =
            str_printf("[%s,%s,%s,%s,{\"text\":\"The answer is abc.\",\"usage\":{\"input\":2000,"
                       "\"output\":50}}]",
                       a, b, c, c2);

        snprintf(prefix, sizeof(prefix), "/%s/", tag);
        llm_server_script(S.llm, script);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{}");
        pid_t w1 = spawn(first);
        int64_t end = test_now_ms() + 30000;
        while (llm_server_request_count(S.llm) < before + 3 && test_now_ms() < end)
                usleep(20000);
        if (llm_server_request_count(S.llm) != before + 3) {
                test_stop_process(w1, SIGTERM, 15000);
                agent_fixture_dump_log(&S);
                fail_msg("the third llm call was not sent; see %s", S.last_log);
        }
        assert_int_equal(worker_sink_count(S.sink, prefix), 2);
        test_stop_process(w1, SIGKILL, 5000);

        pid_t w2 = spawn(then);
        agent_fixture_wait_completed(&S, run, w2, 60000);
        assert_db_equal("The answer is abc.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        /* 3 before the kill, then calls 3 and 4 only: 1 and 2 matched their rows */
        assert_int_equal(llm_server_request_count(S.llm) - before, 5);
        _cleanup_json_ json_t *killed = llm_server_request(S.llm, before + 2);
        _cleanup_json_ json_t *again = llm_server_request(S.llm, before + 3);
        _cleanup_json_ json_t *last = llm_server_request(S.llm, before + 4);
        if (!json_equal(json_object_get(killed, "body"), json_object_get(again, "body"))) {
                _cleanup_free_ char *k = json_dumps(json_object_get(killed, "body"), 0);
                _cleanup_free_ char *g = json_dumps(json_object_get(again, "body"), 0);
                fail_msg("call 3 differs after the resume:\n  %s\n  %s", k, g);
        }
        /* the whole conversation reached the server: system, the prompt, three turns of an
         * assistant's call and its result */
        assert_int_equal(
            json_array_size(json_object_get(json_object_get(last, "body"), "messages")), 8);
        /* no tool effect repeated */
        for (const char *p = "abc"; *p; p++) {
                char path[80];
                snprintf(path, sizeof(path), "/%s/%c", tag, *p);
                assert_int_equal(worker_sink_count(S.sink, path), 1);
        }
        agent_fixture_assert_calls(&S, run, 4, 3);
}

static void a_whole_list_journal_replays_under_deltas(void **state)
{
        (void)state;
        replays_across_forms("whole-then-deltas", WHOLE_EXECUTOR, NULL);
}

static void a_delta_journal_replays_under_whole_lists(void **state)
{
        (void)state;
        replays_across_forms("deltas-then-whole", NULL, WHOLE_EXECUTOR);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(a_whole_list_journal_replays_under_deltas),
            cmocka_unit_test(a_delta_journal_replays_under_whole_lists),
        };
        return cmocka_run_group_tests(tests, setup, agent_fixture_group_teardown);
}
