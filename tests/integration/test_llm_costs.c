/*
 * What LLM calls cost, totalled (0013_llm_costs.sql, 0036_agent_usage_on_stop.sql): each
 * call's usage goes to the run's totals at once and into its journal row, which is added to
 * its agent run's totals and the user's counters when the agent run stops; every reader adds
 * what is not added yet. Shown through the API: the run view (the run's totals and each
 * agent run's, sub-agents included), /v1/me (the caller's totals, never another user's) and
 * /metrics (per user).
 */
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/wait.h>
#include <unistd.h>

#include "auth_token.h"
#include "cleanup.h"
#include "fileio.h"
#include "llm_server.h"
#include "strutil.h"
#include "worker_sink.h"

static const char WF[] = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}]}";

static double sample(const char *body, const char *series)
{
        size_t n = strlen(series);

        for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
                if (strncmp(p, series, n) == 0 && p[n] == ' ')
                        return strtod(p + n + 1, NULL);
        fail_msg("no sample %s in:\n%s", series, body);
        return -1;
}

static json_t *get(const char *base, const char *token, const char *path)
{
        char url[256], auth[128], *body = NULL;
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s%s", base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        assert_int_equal(test_http("GET", url, token ? headers : NULL, NULL, &body), 200);
        json_t *j = json_loads(body, JSON_DECODE_ANY, NULL);
        if (!j)
                fail_msg("not JSON: %s", body);
        free(body);
        return j;
}

/* An agent run of run (as the owner, the way the worker creates them). */
static char *agent_run(PGconn *owner, const char *run, const char *parent)
{
        return test_db_value(owner,
                             "INSERT INTO agent_runs (user_id, workflow_run_id, node_id, attempt, "
                             "parent_agent_run_id, model) SELECT user_id, id, 'a', 1, %s%s%s, "
                             "'gpt-4o-mini' FROM workflow_runs WHERE id = '%s' RETURNING id",
                             parent ? "'" : "", parent ? parent : "NULL", parent ? "'" : "", run);
}

/* One LLM call's usage recorded on an agent run as the worker records it (its own role):
 * through agently_agent_write() (0029), fenced on the run's lease (held() below). */
static void record_call(PGconn *worker, const char *agent, long in, long out, const char *cost,
                        int tools)
{
        assert_db_equal("0", worker,
                        "SELECT agently_agent_write(a.workflow_run_id, 1, a.id, 'a', 1,"
                        " jsonb_build_array(jsonb_build_object('tokens_in', %ld, 'tokens_out', %ld,"
                        " 'cost', %s, 'tool_calls', %d))) FROM agent_runs a WHERE a.id = '%s'",
                        in, out, cost, tools, agent);
}

/* The runs held by a worker's lease at epoch 1 (running), or released (queued). */
static void held(PGconn *owner, bool running, const char *run, const char *other,
                 const char *bo_run)
{
        _cleanup_free_ char *sql =
            str_printf(running ? "UPDATE workflow_runs SET status = 'running', claimed_by = 'test',"
                                 " lease_expires_at = now() + interval '1 hour', lease_epoch = 1,"
                                 " started_at = now() WHERE id IN ('%s', '%s', '%s')"
                               : "UPDATE workflow_runs SET status = 'queued', claimed_by = NULL,"
                                 " lease_expires_at = NULL WHERE id IN ('%s', '%s', '%s')",
                       run, other, bo_run);
        PQclear(test_db_must(owner, sql));
}

static void costs_add_up_per_agent_run_run_and_user(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmcost");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *worker_ci = test_db_conninfo_as(conninfo, "agently_worker");
        PGconn *worker = test_db_connect(worker_ci);
        _cleanup_free_ char *dir = test_tempdir("llmcost");
        _cleanup_free_ char *ana = worker_test_user(db, "ana");
        _cleanup_free_ char *bo = worker_test_user(db, "bo");
        _cleanup_free_ char *wf = worker_test_workflow(db, ana, "w", 1, WF);
        _cleanup_free_ char *wf_bo = worker_test_workflow(db, bo, "w", 1, WF);
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *other = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *bo_run = worker_test_run(db, wf_bo, NULL);
        char token[AUTH_TOKEN_LEN + 1], token_bo[AUTH_TOKEN_LEN + 1], base[64], path[128];

        worker_test_token(db, ana, token);
        worker_test_token(db, bo, token_bo);

        /* a parent agent with two calls and a sub-agent with one; another run; bo's run */
        _cleanup_free_ char *parent = agent_run(db, run, NULL);
        _cleanup_free_ char *child = agent_run(db, run, parent);
        _cleanup_free_ char *elsewhere = agent_run(db, other, NULL);
        _cleanup_free_ char *bos = agent_run(db, bo_run, NULL);
        held(db, true, run, other, bo_run);
        record_call(worker, parent, 1000, 100, "0.0012", 1);
        record_call(worker, parent, 1500, 200, "0.0020", 2);
        record_call(worker, child, 300, 30, "0.0003", 0);
        record_call(worker, elsewhere, 10, 1, "0.000010", 0);
        record_call(worker, bos, 5000, 500, "0.5", 0);
        held(db, false, run, other, bo_run);
        /* a status change alone counts nothing */
        PQclear(test_db_must(worker, "UPDATE agent_runs SET status = 'waiting'"));

        /* the run's totals are the sums of its agent runs, sub-agent included */
        assert_db_equal("0.003500|2800|330", db,
                        "SELECT cost_usd::text || '|' || tokens_in || '|' || tokens_out FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        assert_db_equal("0.000010|10|1", db,
                        "SELECT cost_usd::text || '|' || tokens_in || '|' || tokens_out FROM "
                        "workflow_runs WHERE id = '%s'",
                        other);

        pid_t api = worker_test_spawn_api(conninfo, dir, base, sizeof(base));

        /* the run view: the totals and each agent run's own */
        snprintf(path, sizeof(path), "/v1/runs/%s", run);
        json_t *view = get(base, token, path);
        assert_double_equal(json_number_value(json_object_get(view, "cost_usd")), 0.0035);
        assert_int_equal(json_integer_value(json_object_get(view, "tokens_in")), 2800);
        assert_int_equal(json_integer_value(json_object_get(view, "tokens_out")), 330);
        json_t *agents = json_object_get(view, "agents");
        assert_int_equal(json_array_size(agents), 2);
        json_t *a0 = json_array_get(agents, 0), *a1 = json_array_get(agents, 1);
        if (json_is_string(json_object_get(a0, "parent_agent_run_id"))) {
                json_t *t = a0;
                a0 = a1;
                a1 = t;
        }
        assert_string_equal(json_string_value(json_object_get(a0, "id")), parent);
        assert_double_equal(json_number_value(json_object_get(a0, "cost_usd")), 0.0032);
        assert_int_equal(json_integer_value(json_object_get(a0, "tokens_in")), 2500);
        assert_int_equal(json_integer_value(json_object_get(a0, "tool_calls")), 3);
        assert_string_equal(json_string_value(json_object_get(a0, "model")), "gpt-4o-mini");
        assert_string_equal(json_string_value(json_object_get(a1, "parent_agent_run_id")), parent);
        assert_double_equal(json_number_value(json_object_get(a1, "cost_usd")), 0.0003);
        json_decref(view);

        /* /v1/me: the caller's totals only */
        json_t *me = get(base, token, "/v1/me");
        json_t *usage = json_object_get(me, "usage");
        assert_double_equal(json_number_value(json_object_get(usage, "cost_usd")), 0.00351);
        assert_int_equal(json_integer_value(json_object_get(usage, "tokens_in")), 2810);
        assert_int_equal(json_integer_value(json_object_get(usage, "tokens_out")), 331);
        assert_int_equal(json_integer_value(json_object_get(usage, "tool_calls")), 3);
        json_decref(me);
        me = get(base, token_bo, "/v1/me");
        assert_double_equal(
            json_number_value(json_object_get(json_object_get(me, "usage"), "cost_usd")), 0.5);
        json_decref(me);

        /* /metrics: per user */
        char url[128], *body = NULL;
        snprintf(url, sizeof(url), "%s/metrics", base);
        assert_int_equal(test_http("GET", url, NULL, NULL, &body), 200);
        assert_double_equal(sample(body, "agently_llm_cost_usd_total{user=\"ana\"}"), 0.00351);
        assert_double_equal(sample(body, "agently_llm_cost_usd_total{user=\"bo\"}"), 0.5);
        assert_double_equal(sample(body, "agently_llm_tokens_total{user=\"ana\",kind=\"input\"}"),
                            2810);
        assert_double_equal(sample(body, "agently_llm_tokens_total{user=\"ana\",kind=\"output\"}"),
                            331);
        assert_double_equal(sample(body, "agently_agent_tool_calls_total{user=\"ana\"}"), 3);
        assert_non_null(strstr(body, "# TYPE agently_llm_cost_usd_total counter"));
        /* the run samples are still there */
        assert_double_equal(sample(body, "agently_runs{status=\"queued\"}"), 3);
        free(body);

        test_stop_process(api, SIGTERM, 10000);
        PQfinish(worker);
        PQfinish(db);
        test_rm_rf(dir);
}

/*
 * An LLM call's journal write (agently_agent_write, 0029, 0036) updates one row: the run's
 * (the fence's update takes the event seqs and adds the call's usage to the run's totals).
 * Until 0029 a row trigger on agent_runs updated it a second time in the same transaction;
 * until 0036 the write also updated the agent run's totals and the user's counters row.
 * Now the call's usage stays in its journal row until the agent run stops, and every reader
 * adds it. The rows a transaction wrote are counted in pg_stat_xact_user_tables.
 */
static void an_llm_calls_write_updates_the_run_row_only(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmonce");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *worker_ci = test_db_conninfo_as(conninfo, "agently_worker");
        PGconn *worker = test_db_connect(worker_ci);
        _cleanup_free_ char *ana = worker_test_user(db, "ana");
        _cleanup_free_ char *wf = worker_test_workflow(db, ana, "w", 1, WF);
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *other = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *third = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *agent = agent_run(db, run, NULL);

        held(db, true, run, other, third);
        PQclear(test_db_must(worker, "BEGIN"));
        assert_db_equal("1", worker,
                        "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '[{\"kind\": \"llm\","
                        " \"request\": {}, \"response\": {}, \"sha256\": \"%064d\","
                        " \"tokens_in\": 100, \"tokens_out\": 20, \"cost\": 0.001,"
                        " \"llm_calls\": 1, \"events\": [{\"kind\": \"agent.llm\","
                        " \"message\": \"llm call\"}]}]')",
                        run, agent, 0);
        assert_db_equal("1|0|0", worker,
                        "SELECT coalesce(sum(n_tup_upd) FILTER (WHERE relname = 'workflow_runs'),"
                        " 0) || '|' || coalesce(sum(n_tup_upd) FILTER (WHERE relname ="
                        " 'agent_runs'), 0) || '|' || coalesce(sum(n_tup_ins + n_tup_upd)"
                        " FILTER (WHERE relname = 'agently_llm_usage_counters'), 0)"
                        " FROM pg_stat_xact_user_tables");
        PQclear(test_db_must(worker, "COMMIT"));
        /* the run's totals, the call's usage in its journal row, the agent run's row as it
         * was */
        assert_db_equal("0.001000|100|20|1", db,
                        "SELECT r.cost_usd::text || '|' || r.tokens_in || '|' || r.tokens_out"
                        " || '|' || r.event_seq FROM workflow_runs r WHERE r.id = '%s'",
                        run);
        assert_db_equal("0.001000|100|20|1", db,
                        "SELECT cost_usd::text || '|' || tokens_in || '|' || tokens_out || '|' ||"
                        " llm_calls FROM agently_agent_unflushed('%s', 0)",
                        agent);
        assert_db_equal("0|0|0|0", db,
                        "SELECT cost_usd::int || '|' || tokens_in || '|' || llm_calls || '|' ||"
                        " usage_seq FROM agent_runs WHERE id = '%s'",
                        agent);
        assert_db_equal("0", db, "SELECT count(*) FROM agently_llm_usage_counters");
        PQfinish(worker);
        PQfinish(db);
}

/* One LLM call's journal row (kind llm) with its usage, written as the worker writes it;
 * flush: the write also asks for the usage to be added to the agent run's totals. Returns
 * the row's seq. */
static int journal_call(PGconn *worker, const char *run, const char *agent, int n, long in,
                        long out, const char *cost, bool flush)
{
        return (int)test_db_int(worker,
                                "SELECT agently_agent_write('%s', 1, '%s', 'a', 1,"
                                " jsonb_build_array(jsonb_build_object('kind', 'llm', 'request',"
                                " '{}'::jsonb, 'response', '{}'::jsonb, 'sha256', '%064d',"
                                " 'tokens_in', %ld, 'tokens_out', %ld, 'cached_in', 1, 'cost', %s,"
                                " 'llm_calls', 1, 'events', '[{\"kind\": \"agent.llm\","
                                " \"message\": \"llm call\"}]'::jsonb)%s))",
                                run, agent, n, in, out, cost,
                                flush ? ", '{\"usage_flush\": true}'::jsonb" : "");
}

/* The agent run's status set to status (an SQL expression, and more assignments), as the
 * worker sets it. */
static void set_status(PGconn *worker, const char *agent, const char *status)
{
        _cleanup_free_ char *sql =
            str_printf("UPDATE agent_runs SET status = %s WHERE id = '%s'", status, agent);
        PQclear(test_db_must(worker, sql));
}

/* "calls|in|out|tools" of the agent run as the run view shows it, and of ana through /v1/me
 * and /metrics: all three the same (malloc'd) */
static char *shown_usage(const char *base, const char *token, const char *run)
{
        char path[128], url[128], *body = NULL;

        snprintf(path, sizeof(path), "/v1/runs/%s", run);
        json_t *view = get(base, token, path);
        json_t *a = json_array_get(json_object_get(view, "agents"), 0);
        char *viewed = str_printf("%lld|%lld|%lld|%lld",
                                  (long long)json_integer_value(json_object_get(a, "llm_calls")),
                                  (long long)json_integer_value(json_object_get(a, "tokens_in")),
                                  (long long)json_integer_value(json_object_get(a, "tokens_out")),
                                  (long long)json_integer_value(json_object_get(a, "tool_calls")));
        json_decref(view);
        json_t *me = get(base, token, "/v1/me");
        json_t *u = json_object_get(me, "usage");
        _cleanup_free_ char *mine = str_printf(
            "%lld|%lld|%lld|%lld", (long long)json_integer_value(json_object_get(u, "llm_calls")),
            (long long)json_integer_value(json_object_get(u, "tokens_in")),
            (long long)json_integer_value(json_object_get(u, "tokens_out")),
            (long long)json_integer_value(json_object_get(u, "tool_calls")));
        json_decref(me);
        snprintf(url, sizeof(url), "%s/metrics", base);
        assert_int_equal(test_http("GET", url, NULL, NULL, &body), 200);
        _cleanup_free_ char *metrics =
            str_printf("%.0f|%.0f|%.0f|%.0f", sample(body, "agently_llm_calls_total{user=\"ana\"}"),
                       sample(body, "agently_llm_tokens_total{user=\"ana\",kind=\"input\"}"),
                       sample(body, "agently_llm_tokens_total{user=\"ana\",kind=\"output\"}"),
                       sample(body, "agently_agent_tool_calls_total{user=\"ana\"}"));
        free(body);
        assert_string_equal(mine, viewed);
        assert_string_equal(metrics, viewed);
        return viewed;
}

/*
 * 0036: the usage of an agent run's journal rows is added to its totals and to the user's
 * counters when the agent run leaves running (and when a write asks for it), exactly once;
 * meanwhile the run view, /v1/me and /metrics add what is not added yet, and a status
 * change that does not leave running adds nothing.
 */
static void usage_is_added_when_the_agent_run_stops(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmstop");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *worker_ci = test_db_conninfo_as(conninfo, "agently_worker");
        PGconn *worker = test_db_connect(worker_ci);
        _cleanup_free_ char *dir = test_tempdir("llmstop");
        _cleanup_free_ char *ana = worker_test_user(db, "ana");
        _cleanup_free_ char *wf = worker_test_workflow(db, ana, "w", 1, WF);
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *other = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *third = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *agent = agent_run(db, run, NULL);
        char token[AUTH_TOKEN_LEN + 1], base[64];

        worker_test_token(db, ana, token);
        pid_t api = worker_test_spawn_api(conninfo, dir, base, sizeof(base));
        held(db, true, run, other, third);

        /* two calls and a tool call: shown everywhere, in no total yet */
        assert_int_equal(journal_call(worker, run, agent, 1, 1000, 100, "0.0012", false), 1);
        assert_int_equal(journal_call(worker, run, agent, 2, 1500, 200, "0.0020", false), 2);
        assert_db_equal("3", worker,
                        "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '[{\"kind\": \"tool\","
                        " \"request\": {}, \"response\": {}, \"sha256\": \"%064d\","
                        " \"tool_calls\": 1}]')",
                        run, agent, 3);
        _cleanup_free_ char *shown = shown_usage(base, token, run);
        assert_string_equal(shown, "2|2500|300|1");
        assert_db_equal("0|0|0|0|0", db,
                        "SELECT llm_calls || '|' || tokens_in || '|' || tool_calls || '|' ||"
                        " usage_seq || '|' || (SELECT count(*) FROM agently_llm_usage_counters)"
                        " FROM agent_runs WHERE id = '%s'",
                        agent);

        /* a write that asks: every row so far added, once */
        assert_int_equal(journal_call(worker, run, agent, 4, 10, 1, "0.000010", true), 4);
        assert_db_equal("3|2510|301|1|4|3|0.003210", db,
                        "SELECT llm_calls || '|' || tokens_in || '|' || tokens_out || '|' ||"
                        " tool_calls || '|' || usage_seq || '|' || cached_tokens_in || '|' ||"
                        " cost_usd FROM agent_runs WHERE id = '%s'",
                        agent);
        assert_db_equal("3|2510|301|1|3|0.003210", db,
                        "SELECT sum(llm_calls) || '|' || sum(tokens_in) || '|' || sum(tokens_out)"
                        " || '|' || sum(tool_calls) || '|' || sum(cached_tokens_in) || '|' ||"
                        " sum(cost_usd) FROM agently_llm_usage_counters WHERE user_id = '%s'",
                        ana);
        free(shown);
        shown = shown_usage(base, token, run);
        assert_string_equal(shown, "3|2510|301|1");

        /* one more, then the agent run waits (for a person): added as it leaves running */
        assert_int_equal(journal_call(worker, run, agent, 5, 5, 5, "0.000001", false), 5);
        free(shown);
        shown = shown_usage(base, token, run);
        assert_string_equal(shown, "4|2515|306|1");
        set_status(worker, agent, "'waiting'");
        assert_db_equal("4|2515|306|5", db,
                        "SELECT llm_calls || '|' || tokens_in || '|' || tokens_out || '|' ||"
                        " usage_seq FROM agent_runs WHERE id = '%s'",
                        agent);
        free(shown);
        shown = shown_usage(base, token, run);
        assert_string_equal(shown, "4|2515|306|1");

        /* running again, then completed with nothing new: nothing added twice */
        set_status(worker, agent, "'running'");
        free(shown);
        shown = shown_usage(base, token, run);
        assert_string_equal(shown, "4|2515|306|1");
        set_status(worker, agent, "'completed', finished_at = now()");
        free(shown);
        shown = shown_usage(base, token, run);
        assert_string_equal(shown, "4|2515|306|1");
        assert_db_equal("4|2515|306|1", db,
                        "SELECT sum(llm_calls) || '|' || sum(tokens_in) || '|' || sum(tokens_out)"
                        " || '|' || sum(tool_calls) FROM agently_llm_usage_counters");
        /* the run's totals took every call as it came */
        assert_db_equal("0.003211|2515|306", db,
                        "SELECT cost_usd::text || '|' || tokens_in || '|' || tokens_out FROM"
                        " workflow_runs WHERE id = '%s'",
                        run);
        /* the mark never moves back */
        PGresult *back = PQexec(worker, "UPDATE agent_runs SET usage_seq = 1 WHERE id IS NOT NULL");
        assert_int_equal(PQresultStatus(back), PGRES_FATAL_ERROR);
        PQclear(back);

        held(db, false, run, other, third);
        test_stop_process(api, SIGTERM, 10000);
        PQfinish(worker);
        PQfinish(db);
        test_rm_rf(dir);
}

/*
 * 0040: the user's counters are added to in one place, agently_llm_usage_add(), which its
 * three writers call: a write's usage that is not a new journal row (a gated call's
 * answer), an agent run inserted with usage in it, and the flush as an agent run stops.
 * Each still adds what it added before (main wrote the upsert out in all three).
 */
static void the_users_counters_have_one_writer(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmadd");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *worker_ci = test_db_conninfo_as(conninfo, "agently_worker");
        PGconn *worker = test_db_connect(worker_ci);
        _cleanup_free_ char *ana = worker_test_user(db, "ana");
        _cleanup_free_ char *wf = worker_test_workflow(db, ana, "w", 1, WF);
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *other = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *third = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *agent = agent_run(db, run, NULL);
        static const char COUNTED[] =
            "SELECT coalesce(sum(llm_calls), 0) || '|' || coalesce(sum(tokens_in), 0) || '|' ||"
            " coalesce(sum(tokens_out), 0) || '|' || coalesce(sum(cached_tokens_in), 0) || '|' ||"
            " coalesce(sum(tool_calls), 0) || '|' || coalesce(sum(cost_usd), 0)"
            " FROM agently_llm_usage_counters WHERE user_id = '%s'";

        assert_db_equal("agently_llm_usage_add", db,
                        "SELECT string_agg(proname, ' ' ORDER BY proname) FROM pg_proc"
                        " WHERE prosrc ILIKE '%%INSERT INTO agently_llm_usage_counters%%'");
        held(db, true, run, other, third);
        /* a write's usage without a new journal row: added at once */
        record_call(worker, agent, 7, 3, "0.000100", 2);
        assert_db_equal("0|7|3|0|2|0.000100", db, COUNTED, ana);
        /* an agent run inserted with usage in it */
        assert_db_equal("1", db,
                        "WITH a AS (INSERT INTO agent_runs (user_id, workflow_run_id, node_id,"
                        " attempt, model, tokens_in, tokens_out, cached_tokens_in, cost_usd,"
                        " llm_calls, tool_calls) SELECT user_id, id, 'b', 1, 'gpt-4o-mini', 50, 5,"
                        " 4, 0.002, 2, 1 FROM workflow_runs WHERE id = '%s' RETURNING 1)"
                        " SELECT count(*) FROM a",
                        run);
        assert_db_equal("2|57|8|4|3|0.002100", db, COUNTED, ana);
        /* a call's journal row, added as its agent run stops */
        assert_int_equal(journal_call(worker, run, agent, 1, 1000, 100, "0.0012", false), 1);
        assert_db_equal("2|57|8|4|3|0.002100", db, COUNTED, ana);
        set_status(worker, agent, "'completed', finished_at = now()");
        assert_db_equal("3|1057|108|5|3|0.003300", db, COUNTED, ana);
        held(db, false, run, other, third);
        PQfinish(worker);
        PQfinish(db);
}

/*
 * 0041: a journal row's only key is its agent run's (agent_run_id, user_id), which holds
 * what the dropped key to users held: a row of another user's agent run, or of no user, is
 * refused; deleting the user deletes its agent runs and their journal rows.
 */
static void a_journal_rows_user_is_its_agent_runs(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmkey");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *ana = worker_test_user(db, "ana");
        _cleanup_free_ char *bo = worker_test_user(db, "bo");
        _cleanup_free_ char *wf = worker_test_workflow(db, ana, "w", 1, WF);
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        _cleanup_free_ char *agent = agent_run(db, run, NULL);
        static const char INSERT[] =
            "INSERT INTO agent_journal (user_id, agent_run_id, seq, kind, request, request_sha256)"
            " VALUES ('%s', '%s', %d, 'llm', '{}', '%064d')";

        assert_db_equal("agent_journal_agent_run_id_user_id_fkey", db,
                        "SELECT string_agg(conname, ' ' ORDER BY conname) FROM pg_constraint"
                        " WHERE conrelid = 'agent_journal'::regclass AND contype = 'f'");
        _cleanup_free_ char *mine = str_printf(INSERT, ana, agent, 1, 0);
        PQclear(test_db_must(db, mine));
        /* bo's user id on ana's agent run, and a user id no user has: both refused */
        _cleanup_free_ char *other = str_printf(INSERT, bo, agent, 2, 0);
        PGresult *res = PQexec(db, other);
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "23503");
        PQclear(res);
        _cleanup_free_ char *nobody =
            str_printf(INSERT, "00000000-0000-4000-8000-000000000000", agent, 2, 0);
        res = PQexec(db, nobody);
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "23503");
        PQclear(res);
        /* ana deleted: her journal rows with her agent runs */
        _cleanup_free_ char *gone = str_printf("DELETE FROM users WHERE id = '%s'", ana);
        PQclear(test_db_must(db, gone));
        assert_db_equal("0|0", db,
                        "SELECT (SELECT count(*) FROM agent_journal) || '|' ||"
                        " (SELECT count(*) FROM agent_runs)");
        PQfinish(db);
}

/* End to end: a worker started with --llm-prices prices an agent's LLM call of a model the
 * shipped list does not know from the file, and the call's cost reaches the agent run, the
 * run, the user's usage and /metrics. (Without the override the model costs 0.) */
static void a_price_override_prices_a_real_call(void **state)
{
        (void)state;
        _cleanup_free_ char *conninfo = test_db_create("llmprice");
        PGconn *db = test_db_connect(conninfo);
        _cleanup_free_ char *dir = test_tempdir("llmprice");
        _cleanup_free_ char *prices = str_printf("%s/prices.json", dir);
        _cleanup_free_ char *wlog = str_printf("%s/worker.log", dir);
        _cleanup_free_ char *user = worker_test_user(db, "cy");
        struct llm_server *llm = llm_server_start();
        char token[AUTH_TOKEN_LEN + 1], base[64];
        const char *price_text =
            "{\"house-model\": {\"input\": 10, \"output\": 20, \"cached_input\": 1}}";

        worker_test_token(db, user, token);
        assert_int_equal(file_write_atomic(prices, price_text, strlen(price_text), 0644), 0);
        _cleanup_free_ char *def =
            str_printf("{\"name\":\"priced\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\","
                       "\"agent\":{\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":"
                       "\"house-model\",\"prompt\":\"Say hi.\"}}]}",
                       llm_server_url(llm));
        _cleanup_free_ char *wf = worker_test_workflow(db, user, "priced", 1, def);
        llm_server_script(llm, "[{\"text\": \"hi\", \"usage\": {\"input\": 1000, \"output\": "
                               "100, \"cached\": 500}}]");
        _cleanup_free_ char *run = worker_test_run(db, wf, NULL);
        pid_t w = worker_test_spawn(conninfo, "price-w", "5s", "500ms",
                                    (const char *[]){"--llm-prices", prices, NULL}, wlog);
        bool ended = worker_test_wait_status(db, run, "completed|failed", 60000);
        test_stop_process(w, SIGTERM, 15000);
        if (!ended) {
                _cleanup_free_ char *text = NULL;
                file_read_all(wlog, 1 << 20, &text, &(size_t){0});
                fail_msg("the run did not end:\n%s", text ? text : "");
        }
        assert_db_equal("completed", db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        /* (1000 - 500) x $10 + 500 x $1 + 100 x $20 per million tokens */
        assert_db_equal("0.007500", db,
                        "SELECT cost_usd::text FROM agent_runs WHERE workflow_run_id = '%s'", run);
        assert_db_equal("0.007500|1000|100", db,
                        "SELECT cost_usd::text || '|' || tokens_in || '|' || tokens_out FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);

        pid_t api = worker_test_spawn_api(conninfo, dir, base, sizeof(base));
        json_t *me = get(base, token, "/v1/me");
        json_t *usage = json_object_get(me, "usage");
        assert_double_equal(json_number_value(json_object_get(usage, "cost_usd")), 0.0075);
        assert_int_equal(json_integer_value(json_object_get(usage, "cached_tokens_in")), 500);
        assert_int_equal(json_integer_value(json_object_get(usage, "llm_calls")), 1);
        json_decref(me);
        char url[128], *body = NULL;
        snprintf(url, sizeof(url), "%s/metrics", base);
        assert_int_equal(test_http("GET", url, NULL, NULL, &body), 200);
        assert_double_equal(sample(body, "agently_llm_cost_usd_total{user=\"cy\"}"), 0.0075);
        assert_double_equal(sample(body, "agently_llm_calls_total{user=\"cy\"}"), 1);
        assert_double_equal(
            sample(body, "agently_llm_tokens_total{user=\"cy\",kind=\"cached_input\"}"), 500);
        free(body);
        test_stop_process(api, SIGTERM, 10000);
        llm_server_stop(llm);
        PQfinish(db);
        test_rm_rf(dir);
}

/* Runs agently with args and env until it exits (at most 10 s); its exit code, *err its
 * stderr. */
static int run_agently(const char *const *args, const char *const *env, const char *dir, char **err)
{
        _cleanup_free_ char *log = str_printf("%s/out.log", dir);
        pid_t pid = test_spawn_agently(args, env, log);
        int status = -1;

        for (int64_t t0 = test_now_ms(); waitpid(pid, &status, WNOHANG) == 0;) {
                assert_int_lt(test_now_ms() - t0, 10000);
                usleep(20 * 1000);
        }
        assert_int_equal(file_read_all(log, 1 << 20, err, &(size_t){0}), 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Price overrides are checked when a worker (or up) starts: a bad file stops it with the
 * reason (the model and member), from the flag or from AGENTLY_LLM_PRICES. */
static void a_bad_price_file_stops_the_worker(void **state)
{
        (void)state;
        _cleanup_free_ char *dir = test_tempdir("llmprices");
        _cleanup_free_ char *file = str_printf("%s/prices.json", dir);
        _cleanup_free_ char *env_file = str_printf("AGENTLY_LLM_PRICES=%s", file);
        char *err = NULL;

        assert_int_equal(file_write_atomic(file, "{\"gpt-4o\": {\"input\": \"cheap\"}}", 30, 0644),
                         0);
        assert_int_equal(
            run_agently((const char *[]){"worker", "--llm-prices", file, NULL}, NULL, dir, &err),
            2);
        assert_non_null(strstr(err, "gpt-4o"));
        assert_non_null(strstr(err, "input"));
        free(err);
        assert_int_equal(file_write_atomic(file, "{\"m\": {\"input\": 1,", 18, 0644), 0);
        assert_int_equal(run_agently((const char *[]){"worker", NULL},
                                     (const char *[]){env_file, NULL}, dir, &err),
                         2);
        assert_non_null(strstr(err, "not valid JSON"));
        free(err);
        assert_int_equal(run_agently((const char *[]){"up", "--llm-prices", "/nonexistent/p.json",
                                                      "--data-dir", dir, NULL},
                                     NULL, dir, &err),
                         2);
        assert_non_null(strstr(err, "could not read the LLM prices /nonexistent/p.json"));
        free(err);
        test_rm_rf(dir);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(costs_add_up_per_agent_run_run_and_user),
            cmocka_unit_test(an_llm_calls_write_updates_the_run_row_only),
            cmocka_unit_test(usage_is_added_when_the_agent_run_stops),
            cmocka_unit_test(the_users_counters_have_one_writer),
            cmocka_unit_test(a_journal_rows_user_is_its_agent_runs),
            cmocka_unit_test(a_bad_price_file_stops_the_worker),
            cmocka_unit_test(a_price_override_prices_a_real_call),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
