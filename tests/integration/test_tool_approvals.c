/*
 * Gated tool calls (an agent's approve_tools) decided by a person, end to end with real
 * processes: a worker runs the agent against the scripted LLM server (llm_server.h) and its
 * http_request calls against a recording sink; decisions go through the API. Shown here:
 * a call approved with the reviewer's corrected arguments runs with those and never with
 * the proposed ones, across a worker killed while the run waited, with both argument sets
 * recorded and the agent told (also when the worker died while the edited call was out:
 * it is not sent again); edits the approval cannot take are refused with the field
 * named and change nothing; and a sub-agent's gated call waits for its approval and
 * continues the tree when approved. (Approve, reject, timeout and a kill mid-call:
 * test_agent.c.)
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
#include "llm_server.h"
#include "strutil.h"
#include "worker_sink.h"

static struct agent_fixture S;

/* ---- helpers --------------------------------------------------------------------------- */

/* A worker that can run sandboxed tools (its data directory holds the workspaces). */
static pid_t spawn_worker(void)
{
        const char *extra[] = {"--data-dir", S.dir, NULL};

        return agent_fixture_spawn_worker(&S, "tool-w", "2s", extra);
}

/* Asserts a 422 whose error names field and whose message contains text. */
static void assert_refused(const char *approval, const char *body, const char *field,
                           const char *text)
{
        _cleanup_free_ char *out = NULL;
        json_error_t jerr;

        assert_int_equal(agent_fixture_decide(&S, approval, body, &out), 422);
        _cleanup_json_ json_t *j = json_loads(out, 0, &jerr);
        const json_t *e = json_object_get(j, "error");
        const char *got = json_string_value(json_object_get(e, "field"));
        _cleanup_free_ char *all = json_dumps(e, JSON_COMPACT);
        if (field && (!got || strcmp(got, field) != 0))
                fail_msg("expected the field %s in %s", field, out ? out : "(nothing)");
        if (!all || !strstr(all, text))
                fail_msg("expected \"%s\" in %s", text, all ? all : "(no error)");
}

/* ---- fixture ------------------------------------------------------------------------- */

static int setup(void **state)
{
        agent_fixture_setup(&S, "toolapprovals", &(struct agent_fixture_options){.servers = true});
        *state = &S;
        return 0;
}

/* ---- tests --------------------------------------------------------------------------- */

/*
 * The agent proposes a POST of a draft to everyone; the reviewer corrects it to a POST of
 * another body to another path. Edits the approval cannot take are refused first, naming
 * the field, and leave it pending with no vote. A worker is SIGKILLed while the run waits.
 * Approved with the edited arguments, the call runs once with them (the receiver never
 * sees the proposed request), the agent's next LLM request says which arguments ran, and
 * the decision, the journal and the events keep both argument sets; the first LLM call is
 * answered from the journal, so nobody and nothing is asked twice.
 */
static void an_edited_call_runs_the_reviewers_arguments(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        const char *sink = worker_sink_url(S.sink);
        _cleanup_free_ char *wf = agent_fixture_think_workflow(
            &S, "edit",
            "\"prompt\":\"Send the ${ input.topic } draft.\",\"tools\":[\"http_request\"],"
            "\"allowed_hosts\":[\"127.0.0.1\"],\"approve_tools\":{\"tools\":[\"http_request\"],"
            "\"reviewers\":[\"ada\"],\"timeout\":\"1h\",\"on_timeout\":\"reject\"}");
        _cleanup_free_ char *script = str_printf(
            "[{\"text\":\"I will send the draft to everyone.\",\"tool_calls\":[{\"id\":"
            "\"call_send\",\"name\":\"http_request\",\"arguments\":\"{\\\"method\\\":\\\"POST\\\","
            "\\\"url\\\":\\\"%s/edit/everyone\\\",\\\"body\\\":\\\"draft v1\\\"}\"}],"
            "\"usage\":{\"input\":100,\"output\":10}},{\"text\":\"Sent as the reviewer "
            "asked.\"}]",
            sink);
        llm_server_script(S.llm, script);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"budget\"}");
        pid_t w0 = spawn_worker();
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w0, 60000);

        /* the reviewer is shown the tool's schema, which an edit is checked against */
        assert_db_equal("object|string", S.db,
                        "SELECT (request->'context'->'parameters'->>'type') || '|' ||"
                        " (request->'context'->'parameters'->'properties'->'url'->>'type')"
                        " FROM approvals WHERE id = '%s'",
                        approval);
        /* and the inbox's answer form names the field */
        {
                _cleanup_free_ char *inbox = NULL;
                assert_int_equal(
                    agent_fixture_http(&S, "GET", "/v1/inbox?kind=approval", NULL, &inbox), 200);
                assert_non_null(strstr(inbox, "\"arguments\":\"object (optional, with approve)"));
        }

        /* edits the approval cannot take: 422 naming the field; nothing changes */
        assert_refused(approval,
                       "{\"decision\":\"approve\",\"arguments\":{\"method\":\"POST\",\"url\":5}}",
                       "arguments.url", "arguments.url must be a string");
        assert_refused(approval,
                       "{\"decision\":\"approve\",\"arguments\":{\"method\":\"SEND\","
                       "\"url\":\"http://127.0.0.1/\"}}",
                       "arguments.method", "arguments.method must be one of");
        assert_refused(approval, "{\"decision\":\"approve\",\"arguments\":{\"method\":\"POST\"}}",
                       "arguments.url", "arguments.url is required");
        assert_refused(approval, "{\"decision\":\"approve\",\"arguments\":[1]}", "arguments",
                       "arguments must be a JSON object");
        assert_refused(approval,
                       "{\"decision\":\"reject\",\"arguments\":{\"method\":\"GET\","
                       "\"url\":\"http://127.0.0.1/\"}}",
                       "arguments", "a rejected call does not run");
        assert_db_equal("pending|[]|0", S.db,
                        "SELECT a.status || '|' || a.votes::text || '|' || (SELECT count(*) FROM"
                        " logs l WHERE l.workflow_run_id = a.workflow_run_id AND l.kind ="
                        " 'approval.decided') FROM approvals a WHERE a.id = '%s'",
                        approval);

        /* a kill while the run waits loses nothing */
        kill(w0, SIGKILL);
        test_stop_process(w0, SIGKILL, 5000);
        pid_t w1 = spawn_worker();
        usleep(1000 * 1000);

        /* decided with the CLI (a misfit is refused there too, exit 1) */
        _cleanup_free_ char *edited =
            str_printf("{\"method\":\"POST\",\"url\":\"%s/edit/legal\",\"body\":\"draft v2\","
                       "\"headers\":{\"X-Reviewed\":\"ada\"}}",
                       sink);
        char log[600];
        snprintf(log, sizeof(log), "%s/cli.log", S.dir);
        const char *misfit[] = {
            "approval", "approve", approval,  "--arguments", "{\"method\":\"POST\",\"url\":5}",
            "--server", S.base,    "--token", S.token,       NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(misfit, NULL, log), 0, 30000), 1);
        const char *cli[] = {"approval",      "approve",     approval, "--comment",
                             "only to legal", "--arguments", edited,   "--server",
                             S.base,          "--token",     S.token,  NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(cli, NULL, log), 0, 30000), 0);
        agent_fixture_wait_completed(&S, run, w1, 90000);
        assert_db_equal("Sent as the reviewer asked.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);

        /* the receiver got the edited request, once, and never the proposed one */
        assert_int_equal(worker_sink_count(S.sink, "/edit/legal"), 1);
        assert_int_equal(worker_sink_count(S.sink, "/edit/everyone"), 0);
        struct worker_sink_request got;
        assert_int_equal(worker_sink_get(S.sink, "/edit/legal", 0, &got), 0);
        assert_string_equal(got.method, "POST");
        assert_string_equal(got.body, "draft v2");

        /* the agent was told which arguments ran (and continued from its journal: 2 calls) */
        assert_int_equal(llm_server_request_count(S.llm) - before, 2);
        assert_int_equal(llm_server_steps_left(S.llm), 0);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "the reviewer ada approved this call with edited arguments"));
        assert_non_null(strstr(seen, "/edit/legal"));

        /* the decision keeps both argument sets, and who */
        assert_db_equal("approved|ada|cli|only to legal|draft v2|draft v1", S.db,
                        "SELECT status || '|' || decided_by || '|' || decided_via || '|' ||"
                        " comment || '|' ||"
                        " (decision->'arguments'->>'body') || '|' ||"
                        " (decision->'proposed_arguments'->>'body') FROM approvals WHERE id = '%s'",
                        approval);
        /* the journal row: the proposed request (its hash is what the agent asked), the
         * answer with what ran */
        assert_db_equal("draft v1|draft v2|ada", S.db,
                        "SELECT (j.request->'arguments'->>'body') || '|' ||"
                        " (j.response->'edited'->'arguments'->>'body') || '|' ||"
                        " (j.response->'edited'->>'by') FROM agent_journal j JOIN agent_runs a ON"
                        " a.id = j.agent_run_id WHERE a.workflow_run_id = '%s' AND j.kind = 'tool'",
                        run);
        /* the events: asked once, decided with both sets, the call made with the edited */
        assert_db_equal("1|1|1|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'approval.requested') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'approval.decided' AND"
                        "  (data->>'edited')::boolean AND data->'arguments'->>'body' = 'draft v2'"
                        "  AND data->'proposed_arguments'->>'body' = 'draft v1'"
                        "  AND data->>'by' = 'ada') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_approved' AND"
                        "  (data->>'edited')::boolean AND data->'arguments'->>'body' = 'draft v2'"
                        "  AND data->'proposed_arguments'->>'body' = 'draft v1') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_call' AND"
                        "  data->'arguments'->>'url' LIKE '%%/edit/legal')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run);
        /* a decided approval takes no second edit */
        _cleanup_free_ char *again = NULL,
                            *body =
                                str_printf("{\"decision\":\"approve\",\"arguments\":%s}", edited);
        assert_int_equal(agent_fixture_decide(&S, approval, body, &again), 409);
}

/*
 * An edited call that reached the receiver when the worker was SIGKILLed, before its
 * answer was journaled: the next worker does not send it again (the receiver sees the
 * edited request once, the proposed one never) and the agent is told it was interrupted and
 * which arguments it ran with.
 */
static void an_edited_call_interrupted_is_not_sent_again(void **state)
{
        (void)state;
        const char *sink = worker_sink_url(S.sink);
        _cleanup_free_ char *wf = agent_fixture_think_workflow(
            &S, "editkill",
            "\"prompt\":\"Send it.\",\"tools\":[\"http_request\"],"
            "\"allowed_hosts\":[\"127.0.0.1\"],\"approve_tools\":[\"http_request\"]");
        _cleanup_free_ char *script = str_printf(
            "[{\"text\":\"Sending.\",\"tool_calls\":[{\"id\":\"call_k\",\"name\":\"http_request\","
            "\"arguments\":\"{\\\"method\\\":\\\"POST\\\",\\\"url\\\":\\\"%s/editkill/proposed\\\"}"
            "\"}],\"usage\":{\"input\":100,\"output\":10}},{\"text\":\"Maybe sent.\"}]",
            sink);
        llm_server_script(S.llm, script);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w1 = spawn_worker();
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w1, 60000);
        _cleanup_free_ char *body =
            str_printf("{\"decision\":\"approve\",\"arguments\":{\"method\":\"POST\","
                       "\"url\":\"%s/editkill/edited?delay_ms=5000\"}}",
                       sink);

        assert_int_equal(agent_fixture_decide(&S, approval, body, NULL), 200);
        for (int i = 0; i < 300 && worker_sink_count(S.sink, "/editkill/") < 1; i++)
                usleep(100 * 1000);
        assert_int_equal(worker_sink_count(S.sink, "/editkill/edited"), 1); /* its answer waits */
        kill(w1, SIGKILL);
        test_stop_process(w1, SIGKILL, 5000);

        pid_t w2 = spawn_worker();
        agent_fixture_wait_completed(&S, run, w2, 90000);
        usleep(5500 * 1000); /* the receiver's delayed answer is over: nothing else came */
        assert_int_equal(worker_sink_count(S.sink, "/editkill/edited"), 1);
        assert_int_equal(worker_sink_count(S.sink, "/editkill/proposed"), 0);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "interrupted"));
        assert_non_null(strstr(seen, "approved this call with edited arguments"));
        assert_non_null(strstr(seen, "/editkill/edited?delay_ms=5000"));
        assert_db_equal("1|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'approval.requested') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_interrupted')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run);
}

/* Arguments belong to a tool call's approval: an approval node's refuses them (422, the
 * node still waits) and is then decided as usual. */
static void an_approval_node_takes_no_arguments(void **state)
{
        (void)state;
        _cleanup_free_ char *wf = worker_test_workflow(
            S.db, S.user, "plain", 1,
            "{\"name\":\"plain\",\"nodes\":[{\"id\":\"ok\",\"type\":\"approval\","
            "\"reviewers\":[\"ada\"],\"timeout\":\"1h\",\"on_timeout\":\"reject\"}]}");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_worker();
        _cleanup_free_ char *approval = NULL;

        for (int i = 0; i < 300 && !approval; i++) {
                approval = test_db_value(
                    S.db,
                    "SELECT id FROM approvals WHERE workflow_run_id = '%s' AND status ="
                    " 'pending'",
                    run);
                if (!approval)
                        usleep(100 * 1000);
        }
        assert_non_null(approval);
        assert_refused(approval, "{\"decision\":\"approve\",\"arguments\":{\"a\":1}}", "arguments",
                       "arguments can only be edited on a tool call's approval");
        assert_db_equal("pending", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);
        assert_int_equal(agent_fixture_decide(
                             &S, approval, "{\"decision\":\"approve\",\"arguments\":null}", NULL),
                         200);
        agent_fixture_wait_completed(&S, run, w, 90000);
}

/*
 * A sub-agent's gated call: the root spawns a child whose shell call (effect irreversible)
 * needs a person. The approval names the child's agent run; while a person decides the run
 * waits holding nothing; approved, the call runs once in the child, the child answers the
 * root and the root finishes with it.
 */
static void a_sub_agents_gated_call_is_approved(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *wf = agent_fixture_think_workflow(
            &S, "subgate",
            "\"prompt\":\"ROOT go\",\"tools\":[\"spawn_agent\",\"shell\"],"
            "\"approve_tools\":{\"effects\":[\"irreversible\"],\"reviewers\":[\"ada\"],"
            "\"timeout\":\"1h\",\"on_timeout\":\"reject\"}");
        llm_server_script(
            S.llm,
            "[{\"match\":\"ROOT go\",\"tool_calls\":[{\"id\":\"s1\",\"name\":\"spawn_agent\","
            "\"arguments\":\"{\\\"prompt\\\":\\\"CHILD go\\\"}\"}],\"usage\":{\"input\":10,"
            "\"output\":5}},"
            "{\"match\":\"CHILD go\",\"text\":\"I will count.\",\"tool_calls\":[{\"id\":\"c1\","
            "\"name\":\"shell\",\"arguments\":\"{\\\"command\\\":\\\"echo "
            "counted-$((6*7))\\\"}\"}],"
            "\"usage\":{\"input\":10,\"output\":5}},"
            "{\"match\":\"counted-42\",\"text\":\"CHILD-DONE 42\"},"
            "{\"match\":\"CHILD-DONE 42\",\"text\":\"ROOT: CHILD-DONE 42\"}]");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_worker();
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w, 60000);

        /* the approval is the child's call */
        assert_db_equal("shell|true", S.db,
                        "SELECT (a.request->'context'->>'tool') || '|' ||"
                        " (r.parent_agent_run_id IS NOT NULL)::text FROM approvals a JOIN"
                        " agent_runs r ON r.id = a.agent_run_id WHERE a.id = '%s'",
                        approval);
        assert_db_equal("t", S.db,
                        "SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM"
                        " workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(agent_fixture_decide(&S, approval, "{\"decision\":\"approve\"}", NULL),
                         200);
        agent_fixture_wait_completed(&S, run, w, 90000);
        assert_db_equal("ROOT: CHILD-DONE 42", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(llm_server_steps_left(S.llm), 0);
        /* root, child, child after the call, root after the child: nothing asked twice */
        assert_int_equal(llm_server_request_count(S.llm) - before, 4);
        assert_db_equal("1|1|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'approval.requested') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_approved') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_result')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(an_edited_call_runs_the_reviewers_arguments),
            cmocka_unit_test(an_edited_call_interrupted_is_not_sent_again),
            cmocka_unit_test(an_approval_node_takes_no_arguments),
            cmocka_unit_test(a_sub_agents_gated_call_is_approved),
        };
        if (getenv("TOOL_TEST_FILTER")) /* one test while debugging */
                cmocka_set_test_filter(getenv("TOOL_TEST_FILTER"));
        return cmocka_run_group_tests(tests, setup, agent_fixture_group_teardown);
}
