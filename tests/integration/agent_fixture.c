/*
 * The agent tests' shared fixture and helpers (agent_fixture.h): one copy of the setup,
 * teardown, waits and checks that test_agent.c, test_tool_approvals.c and
 * test_agent_sandbox.c each used to carry.
 */
#include "agent_fixture.h"

#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "fileio.h"
#include "llm_server.h"
#include "strutil.h"
#include "worker_sink.h"

void agent_fixture_setup(struct agent_fixture *f, const char *name,
                         const struct agent_fixture_options *options)
{
        memset(f, 0, sizeof(*f));
        f->conninfo = test_db_create(name);
        f->db = test_db_connect(f->conninfo);
        if (options->servers) {
                f->sink = worker_sink_start();
                f->llm = llm_server_start();
        }
        f->dir = test_tempdir(name);
        f->user = worker_test_user(f->db, "ada");
        if (!options->servers)
                return;
        worker_test_token(f->db, f->user, f->token);
        if (options->before_api)
                options->before_api(f);
        f->api = worker_test_spawn_api(f->conninfo, f->dir, f->base, sizeof(f->base));
}

void agent_fixture_teardown(struct agent_fixture *f)
{
        if (f->api > 0)
                test_stop_process(f->api, SIGTERM, 10000);
        worker_sink_stop(f->sink);
        llm_server_stop(f->llm);
        PQfinish(f->db);
        test_rm_rf(f->dir);
        free(f->dir);
        free(f->user);
        free(f->conninfo);
        memset(f, 0, sizeof(*f));
}

int agent_fixture_group_teardown(void **state)
{
        agent_fixture_teardown(*state);
        return 0;
}

char *agent_fixture_think_workflow(const struct agent_fixture *f, const char *name,
                                   const char *members)
{
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"%s\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\",%s}}]}",
            name, llm_server_url(f->llm), members);
        return worker_test_workflow(f->db, f->user, name, 1, def);
}

pid_t agent_fixture_spawn_worker(struct agent_fixture *f, const char *prefix, const char *lease,
                                 const char *const *extra)
{
        char id[32];

        snprintf(id, sizeof(id), "%s%d", prefix, ++f->nworkers);
        snprintf(f->last_log, sizeof(f->last_log), "%s/%s.log", f->dir, id);
        return worker_test_spawn(f->conninfo, id, lease, "500ms", extra, f->last_log);
}

void agent_fixture_dump_log(const struct agent_fixture *f)
{
        _cleanup_free_ char *text = NULL;
        size_t len = 0;

        if (file_read_all(f->last_log, 64 << 20, &text, &len) == 0 && text)
                fprintf(stderr, "---- %s (end) ----\n%s\n", f->last_log,
                        len > 6000 ? text + len - 6000 : text);
}

void agent_fixture_assert_completed(const struct agent_fixture *f, const char *run)
{
        _cleanup_free_ char *st =
            test_db_value(f->db,
                          "SELECT status || ' ' || coalesce(error::text, '') FROM"
                          " workflow_runs WHERE id = '%s'",
                          run);
        if (!st || strcmp(st, "completed ") != 0) {
                agent_fixture_dump_log(f);
                fail_msg("run %s: %s", run, st ? st : "(none)");
        }
}

void agent_fixture_wait_completed(const struct agent_fixture *f, const char *run, pid_t w, int ms)
{
        if (!worker_test_wait_status(f->db, run, "completed|failed", ms)) {
                test_stop_process(w, SIGTERM, 15000);
                agent_fixture_dump_log(f);
                fail_msg("run %s did not end; see %s", run, f->last_log);
        }
        assert_exit_code(test_stop_process(w, SIGTERM, 15000), 0);
        agent_fixture_assert_completed(f, run);
}

void agent_fixture_assert_calls(const struct agent_fixture *f, const char *run, int llm_calls,
                                int tool_calls)
{
        char want[32];

        snprintf(want, sizeof(want), "%d|%d", llm_calls, tool_calls);
        assert_db_equal(want, f->db,
                        "SELECT llm_calls || '|' || tool_calls FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        run);
}

char *agent_fixture_waiting_tool_approval(const struct agent_fixture *f, const char *run,
                                          pid_t worker, int ms)
{
        for (int i = 0; i < ms / 100; i++) {
                char *id = test_db_value(f->db,
                                         "SELECT a.id FROM approvals a JOIN workflow_runs r ON "
                                         "r.id = a.workflow_run_id WHERE r.id = '%s' AND "
                                         "a.status = 'pending' AND r.status = 'waiting'",
                                         run);
                if (id)
                        return id;
                usleep(100 * 1000);
        }
        _cleanup_free_ char *st = test_db_value(
            f->db,
            "SELECT status || ' ' || coalesce(error::text, '') || ' ' || coalesce((SELECT"
            " string_agg(status || ':' || coalesce(waiting_for::text, ''), ', ') FROM agent_runs"
            " WHERE workflow_run_id = '%s'), '') FROM workflow_runs WHERE id = '%s'",
            run, run);
        test_stop_process(worker, SIGTERM, 15000);
        agent_fixture_dump_log(f);
        fail_msg("run %s never waited for a tool call's approval: %s", run, st ? st : "?");
        return NULL;
}

long agent_fixture_http(const struct agent_fixture *f, const char *method, const char *path,
                        const char *body, char **out)
{
        char url[512], auth[128];
        const char *headers[] = {auth, NULL};
        char *ignored = NULL;
        long st;

        snprintf(url, sizeof(url), "%s%s", f->base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", f->token);
        st = test_http(method, url, headers, body, out ? out : &ignored);
        free(ignored);
        return st;
}

long agent_fixture_decide(const struct agent_fixture *f, const char *approval, const char *body,
                          char **out)
{
        char path[128];

        snprintf(path, sizeof(path), "/v1/approvals/%s/decide", approval);
        return agent_fixture_http(f, "POST", path, body, out);
}

char *agent_fixture_last_llm_body(const struct agent_fixture *f)
{
        _cleanup_json_ json_t *req =
            llm_server_request(f->llm, llm_server_request_count(f->llm) - 1);
        return json_dumps(json_object_get(req, "body"), JSON_COMPACT);
}

char *agent_fixture_tool_step(const struct agent_fixture *f, const char *tag, const char *path,
                              const char *extra)
{
        return str_printf("{\"text\":\"I will fetch %s.\",\"tool_calls\":[{\"id\":\"call_%s\","
                          "\"name\":\"http_request\",\"arguments\":\"{\\\"method\\\":\\\"GET\\\","
                          "\\\"url\\\":\\\"%s/%s/%s\\\"}\"}],\"usage\":{\"input\":1000,"
                          "\"output\":100}%s}",
                          path, path, worker_sink_url(f->sink), tag, path, extra ? extra : "");
}
