/*
 * Agents end to end with real processes: a worker runs an `agent` node's executor, performs
 * its LLM calls against the scripted LLM test server (llm_server.h, both providers) and its
 * http_request calls against a sink, journaling each before answering. Shown here: the
 * three-tools-then-answer loop with tokens, cost and events; a worker SIGKILLed while the
 * third of four LLM calls is in flight (the next worker replays calls 1 and 2 from the
 * journal, sends 3 and 4, repeats no tool effect, gives the same output); ask_human waiting
 * in needs_input with no executor left, answered through the API; a cost budget that stops
 * the run before the call that would pass it, raised through the API. Every test searches
 * for its API key (a unique value) in the events, errors, journal, API responses and logs.
 * The cases that follow one flow (an agent node scripted, a run and a worker, a person's
 * turn or a kill in between, then the output and the calls counted) are the rows of
 * agent_cases, each a test of its own name (AGENT_TEST_FILTER=name runs one); the others
 * are functions of their own.
 */
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "agent_fixture.h"
#include "buf.h"
#include "cleanup.h"
#include "embedded_pg.h"
#include "fileio.h"
#include "llm_server.h"
#include "runtime_http.h"
#include "secrets.h"
#include "strutil.h"
#include "worker_sink.h"

static struct agent_fixture S;
static struct {
        char key[64];    /* this test's API key: must never be seen anywhere but the LLM server */
        char canary[64]; /* the secret CANARY the tools use: seen by the sink only */
} secret;

/* ---- helpers --------------------------------------------------------------------------- */

/* A stored secret of the test user. */
static void store_secret(const char *name, const char *value)
{
        struct secrets_sealed sealed = {0};
        char *id = test_db_value(S.db, "SELECT gen_random_uuid()");
        char *nonce, *cipher, *wrapped;
        size_t n1, n2, n3;

        struct secrets_kms kms;
        assert_int_equal(secrets_kms_init(&kms, S.dir), 0);
        assert_int_equal(secrets_seal(&kms, "local", SECRETS_KEY_VERSION_LOCAL, S.user, id, value,
                                      strlen(value), &sealed, NULL),
                         0);
        secrets_kms_release(&kms);
        nonce = (char *)PQescapeByteaConn(S.db, sealed.nonce, sizeof(sealed.nonce), &n1);
        cipher = (char *)PQescapeByteaConn(S.db, sealed.ciphertext, sealed.ciphertext_len, &n2);
        wrapped = (char *)PQescapeByteaConn(S.db, sealed.wrapped_key, sealed.wrapped_len, &n3);
        _cleanup_free_ char *sql =
            str_printf("INSERT INTO secrets (id, user_id, name, ciphertext, nonce, wrapped_key,"
                       " key_version) VALUES ('%s', '%s', '%s', '%s', '%s', '%s', %d)",
                       id, S.user, name, cipher, nonce, wrapped, sealed.key_version);
        PQclear(test_db_must(S.db, sql));
        PQfreemem(nonce);
        PQfreemem(cipher);
        PQfreemem(wrapped);
        secrets_sealed_free(&sealed);
        free(id);
}

static void store_key(void)
{
        snprintf(secret.key, sizeof(secret.key), "sk-canary-%08x%08x", (unsigned)random(),
                 (unsigned)getpid());
        store_secret("llmkey", secret.key);
        snprintf(secret.canary, sizeof(secret.canary), "tool-canary-%08x%08x", (unsigned)random(),
                 (unsigned)getpid());
        store_secret("CANARY", secret.canary);
}

static pid_t spawn_worker(const char *lease)
{
        return agent_fixture_spawn_worker(&S, "agent-w", lease, NULL);
}

/* The workflow of one agent node for provider, its LLM at the test server. */
static char *agent_workflow(const char *name, const char *provider, const char *model,
                            const char *tools, const char *budget)
{
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"%s\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"%s\",\"base_url\":\"%s\",\"model\":\"%s\","
            "\"api_key_secret\":\"LLMKEY\",\"system\":\"You call tools when asked.\","
            "\"prompt\":\"Research ${ input.topic } carefully.\",\"tools\":%s,"
            "\"allowed_hosts\":[\"127.0.0.1\"],\"budget\":%s}}]}",
            name, provider, llm_server_url(S.llm), model, tools,
            budget ? budget : "{\"max_tokens\":100000,\"max_cost_usd\":5}");
        return worker_test_workflow(S.db, S.user, name, 1, def);
}

/* The script of the three-tools loop: GET SINK/<tag>/a, b, c, then an answer. third_extra
 * goes into the third step; repeat_third scripts the third call a second time (as the
 * worker that resumes after a crash sends it). */
static void script_three_tools(const char *tag, const char *third_extra, bool repeat_third)
{
        _cleanup_free_ char *a = agent_fixture_tool_step(&S, tag, "a", NULL),
                            *b = agent_fixture_tool_step(&S, tag, "b", NULL),
                            *c = agent_fixture_tool_step(&S, tag, "c", third_extra),
                            *c2 = agent_fixture_tool_step(&S, tag, "c", NULL);
        _cleanup_free_ char *script =
            str_printf("[%s,%s,%s,%s%s{\"text\":\"The answer is abc.\",\"usage\":{"
                       "\"input\":2000,\"output\":50,\"cached\":500}}]",
                       a, b, c, repeat_third ? c2 : "", repeat_third ? "," : "");
        llm_server_script(S.llm, script);
}

/* The value must appear nowhere we can look: database rows, worker and API logs. */
static void assert_nowhere(const char *run, const char *value)
{
        const char *tables[] = {"logs", "agent_journal", "agent_runs", "node_runs",
                                "workflow_runs"};

        for (size_t i = 0; i < ELEMENTSOF(tables); i++)
                assert_db_equal("0", S.db, "SELECT count(*) FROM %s t WHERE t::text LIKE '%%%s%%'",
                                tables[i], value);
        DIR *d = opendir(S.dir);
        struct dirent *e;
        assert_non_null(d);
        while ((e = readdir(d))) {
                char path[1024];
                _cleanup_free_ char *text = NULL;
                size_t len;
                if (!strstr(e->d_name, ".log"))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", S.dir, e->d_name);
                if (file_read_all(path, 64 << 20, &text, &len) == 0 && text && strstr(text, value))
                        fail_msg("%s appears in %s", value, path);
        }
        closedir(d);
        /* and in what the API shows of the run and its events */
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};
        const char *routes[] = {"", "/events", "/nodes"};
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        for (size_t i = 0; i < ELEMENTSOF(routes); i++) {
                _cleanup_free_ char *out = NULL;
                snprintf(url, sizeof(url), "%s/v1/runs/%s%s", S.base, run, routes[i]);
                assert_int_equal(test_http("GET", url, headers, NULL, &out), 200);
                if (out && strstr(out, value))
                        fail_msg("%s appears in GET /v1/runs/{id}%s", value, routes[i]);
        }
}

static void assert_no_key_anywhere(const char *run)
{
        assert_nowhere(run, secret.key);
}

static long post_input(const char *run, const char *body)
{
        char url[256], auth[128];
        const char *headers[] = {auth, NULL};
        _cleanup_free_ char *out = NULL;

        snprintf(url, sizeof(url), "%s/v1/runs/%s/input", S.base, run);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", S.token);
        return test_http("POST", url, headers, body, &out);
}

/* Children of pid (executors a worker runs). */
static int children_of(pid_t pid)
{
        DIR *d = opendir("/proc");
        struct dirent *e;
        int n = 0;

        assert_non_null(d);
        while ((e = readdir(d))) {
                char path[300];
                _cleanup_free_ char *stat = NULL;
                size_t len;
                if (e->d_name[0] < '0' || e->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
                if (file_read_all(path, 4096, &stat, &len) != 0 || !stat)
                        continue;
                char *close = strrchr(stat, ')');
                int ppid = 0;
                char state;
                if (close && sscanf(close + 2, "%c %d", &state, &ppid) == 2 && ppid == pid &&
                    state != 'Z')
                        n++;
        }
        closedir(d);
        return n;
}

static void wait_llm_requests(int n, int ms)
{
        int64_t end = test_now_ms() + ms;

        while (llm_server_request_count(S.llm) < n && test_now_ms() < end)
                usleep(20000);
        assert_int_equal(llm_server_request_count(S.llm), n);
}

/* Waits until pid has n live children (executors); asserts it. */
static void wait_children(pid_t pid, int n, int ms)
{
        int64_t end = test_now_ms() + ms;

        while (children_of(pid) != n && test_now_ms() < end)
                usleep(20000);
        assert_int_equal(children_of(pid), n);
}

/* Waits up to ms for the run to reach one of statuses (a|b); when it does not, stops worker
 * w and fails the test with what, showing the end of the worker's log. */
static void wait_run(pid_t w, const char *run, const char *statuses, int ms, const char *what)
{
        if (!worker_test_wait_status(S.db, run, statuses, ms)) {
                test_stop_process(w, SIGTERM, 15000);
                agent_fixture_dump_log(&S);
                fail_msg("%s; see %s", what, S.last_log);
        }
}

/* Events of kind in the run's log. */
static long long events_of(const char *run, const char *kind)
{
        return test_db_int(S.db,
                           "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = '%s'",
                           run, kind);
}

/* The journal of run's agent runs as "calls|events|refusals|results": its llm and tool
 * calls, then the records kept so that a replay records their events once — rows of their
 * own or, since 0037, the stubs of the row they were written with (malloc'd). */
static char *journal_records(const char *run)
{
        return test_db_value(
            S.db,
            "SELECT count(*) FILTER (WHERE k IN ('llm', 'tool')) || '|' || count(*) FILTER"
            " (WHERE k = 'event') || '|' || count(*) FILTER (WHERE k = 'refusal') || '|' ||"
            " count(*) FILTER (WHERE k = 'result') FROM (SELECT j.kind AS k FROM agent_journal"
            " j JOIN agent_runs a ON a.id = j.agent_run_id WHERE a.workflow_run_id = '%s'"
            " UNION ALL SELECT st->>'kind' FROM agent_journal j JOIN agent_runs a ON a.id ="
            " j.agent_run_id, jsonb_array_elements(coalesce(j.stubs, '[]')) st"
            " WHERE a.workflow_run_id = '%s') q",
            run, run);
}

/* The rows of the journal of run's agent runs. */
static long long journal_rows(const char *run)
{
        return test_db_int(S.db,
                           "SELECT count(*) FROM agent_journal j JOIN agent_runs a ON"
                           " a.id = j.agent_run_id WHERE a.workflow_run_id = '%s'",
                           run);
}

/* The root agent run of run (malloc'd). */
static char *root_agent_run(const char *run)
{
        return test_db_value(S.db,
                             "SELECT id FROM agent_runs WHERE workflow_run_id = '%s' AND"
                             " parent_agent_run_id IS NULL",
                             run);
}

/* GET /v1/inbox as the test's user; malloc'd body. */
static char *get_inbox(void)
{
        char *out = NULL;

        assert_int_equal(agent_fixture_http(&S, "GET", "/v1/inbox", NULL, &out), 200);
        return out;
}

/* ---- fixture ------------------------------------------------------------------------- */

/* Before the API starts: the master key file the worker and the API inherit, and the
 * test's secrets sealed with it. */
static void store_keys(struct agent_fixture *f)
{
        char keyfile[600];

        snprintf(keyfile, sizeof(keyfile), "%s/master.key", f->dir);
        setenv("AGENTLY_MASTER_KEY_FILE", keyfile, 1); /* the worker inherits it */
        store_key();
}

static int setup(void **state)
{
        srandom((unsigned)(getpid() ^ test_now_ms()));
        agent_fixture_setup(
            &S, "agent",
            &(struct agent_fixture_options){.servers = true, .before_api = store_keys});
        (void)state; /* no group state: a case of the table gets its row as its state */
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        agent_fixture_teardown(&S);
        return 0;
}

/* ---- the agent loop's cases, as a table ------------------------------------------------- */

struct agent_case;

/* A case as it runs: what its hooks read and change (a hook that kills the worker starts
 * the next one and leaves it in worker). */
struct case_run {
        const struct agent_case *c;
        char *run;
        pid_t worker;
        int before; /* the LLM server's requests before the case */
};

/*
 * A case of the agent loop: one agent node "think" (agent_workflow(tag, provider, model,
 * tools, budget)), the LLM server scripted (script, each @SINK@ in it the sink's URL; or
 * scripts), a run with input and a worker with lease. When waits_for is set the run
 * reaches that status first (a person's turn). Then meanwhile (checks, answers through the
 * API, kills), and the run must complete with output; the LLM server must have had
 * llm_calls requests and the sink sink_calls under /<tag>/. Then then, more checks; last,
 * the API key must be nowhere. The special cases (a run that fails, stored agents, gated
 * calls, run_code, the commit count, the lease fence) are their own functions below.
 */
struct agent_case {
        const char *name; /* the test's name (AGENT_TEST_FILTER) */
        const char *tag;  /* the workflow's name, and the sink's path /<tag>/ */
        const char *provider, *model, *tools, *budget;
        const char *script;
        void (*scripts)(const struct agent_case *c); /* when script is NULL */
        const char *input;
        const char *lease;
        const char *waits_for;
        void (*meanwhile)(struct case_run *r);
        const char *output;
        int llm_calls;
        int sink_calls;
        void (*then)(struct case_run *r);
};

/* script with each @SINK@ in it the sink's URL (malloc'd). */
static char *with_sink_url(const char *script)
{
        const char *p = script, *at;
        struct buf b;

        buf_init(&b, 1 << 20);
        for (; (at = strstr(p, "@SINK@")); p = at + strlen("@SINK@")) {
                assert_int_equal(buf_append(&b, p, (size_t)(at - p)), 0);
                assert_int_equal(buf_append_str(&b, worker_sink_url(S.sink)), 0);
        }
        assert_int_equal(buf_append_str(&b, p), 0);
        return buf_steal(&b);
}

/* Asserts that the run, waiting for a person, holds nothing: no executor, no lease. */
static void assert_holds_nothing(struct case_run *r)
{
        usleep(300 * 1000);
        assert_int_equal(children_of(r->worker), 0);
        assert_db_equal("t", S.db,
                        "SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM "
                        "workflow_runs WHERE id = '%s'",
                        r->run);
}

/* SIGKILLs the worker and starts the next. */
static void kill_worker(struct case_run *r)
{
        kill(r->worker, SIGKILL);
        test_stop_process(r->worker, SIGKILL, 5000);
        r->worker = spawn_worker(r->c->lease);
}

/* The case's LLM request number call (0: its first) carries text. */
static void llm_request_contains(struct case_run *r, int call, const char *text)
{
        _cleanup_json_ json_t *req = llm_server_request(S.llm, r->before + call);
        _cleanup_free_ char *body = json_dumps(json_object_get(req, "body"), JSON_COMPACT);
        assert_non_null(body);
        if (!strstr(body, text))
                fail_msg("LLM request %d does not carry '%s'", call, text);
}

/* -- the three-tools loop: GET SINK/<tag>/a, b, c, then an answer -- */

static void three_tools_script(const struct agent_case *c)
{
        script_three_tools(c->tag, NULL, false);
}

/* Each call carried the key; the last the three results; tokens, cost, journal, events. */
static void three_tools_checks(struct case_run *r)
{
        _cleanup_free_ char *prefix = str_printf("/%s/", r->c->tag);

        for (int i = r->before; i < r->before + 4; i++) {
                _cleanup_json_ json_t *req = llm_server_request(S.llm, i);
                const json_t *h = json_object_get(req, "headers");
                const char *auth = json_string_value(json_object_get(
                    h, strcmp(r->c->provider, "openai") == 0 ? "authorization" : "x-api-key"));
                assert_non_null(auth);
                assert_non_null(strstr(auth, secret.key));
        }
        llm_request_contains(r, 3, "Research durable agents carefully.");
        llm_request_contains(r, 3, "call_c");
        /* each tool effect once, with a stable idempotency key */
        assert_int_equal(worker_sink_distinct_keys(S.sink, prefix), 3);
        /* tokens and cost */
        assert_db_equal("4|3|5000|350|true", S.db,
                        "SELECT llm_calls || '|' || tool_calls || '|' || tokens_in || '|' ||"
                        " tokens_out || '|' || (cost_usd > 0) FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        r->run);
        /* the journal: 4 llm and 3 tool calls; the 3 reasoning events and the answer's
         * (kept so that a replay records none of them again) */
        _cleanup_free_ char *records = journal_records(r->run);
        assert_string_equal(records, "7|3|0|1");
        /* the events show the reasoning, each call and its result */
        assert_db_equal("4|3|3|3|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'agent.llm') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.reasoning') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_call') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_result') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.finished')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        r->run);
        assert_db_equal("5000", S.db,
                        "SELECT sum((data->>'input_tokens')::int) FROM logs WHERE"
                        " workflow_run_id = '%s' AND kind = 'agent.llm'",
                        r->run);
        assert_db_equal("read_only", S.db,
                        "SELECT min(data->>'effect') FROM logs WHERE workflow_run_id = '%s'"
                        " AND kind = 'agent.tool_call'",
                        r->run);
}

/* -- a SIGKILL while the third of four LLM calls is in flight -- */

/* LLM usage: calls and tokens. */
struct usage {
        long long calls, in, out;
};

/* The test user's usage as /v1/me shows it. */
static struct usage my_usage(void)
{
        _cleanup_free_ char *out = NULL;

        assert_int_equal(agent_fixture_http(&S, "GET", "/v1/me", NULL, &out), 200);
        _cleanup_json_ json_t *me = json_loads(out, 0, NULL);
        json_t *u = json_object_get(me, "usage");
        assert_non_null(u);
        return (struct usage){json_integer_value(json_object_get(u, "llm_calls")),
                              json_integer_value(json_object_get(u, "tokens_in")),
                              json_integer_value(json_object_get(u, "tokens_out"))};
}

/* "calls|in|out" of usage (malloc'd). */
static char *usage_text(struct usage u)
{
        return str_printf("%lld|%lld|%lld", u.calls, u.in, u.out);
}

/* "calls|in|out" of the journaled LLM calls of run, from their agent.llm events (written
 * with each call's journal row; malloc'd). */
static char *journaled_usage(const char *run)
{
        return test_db_value(S.db,
                             "SELECT count(*) || '|' || coalesce(sum((data->>'input_tokens')::int),"
                             " 0) || '|' || coalesce(sum((data->>'output_tokens')::int), 0)"
                             " FROM logs WHERE workflow_run_id = '%s' AND kind = 'agent.llm'",
                             run);
}

/* "calls|in|out" of the run's only agent run as the run view shows it (malloc'd). */
static char *viewed_usage(const char *run)
{
        _cleanup_free_ char *path = str_printf("/v1/runs/%s", run), *out = NULL;

        assert_int_equal(agent_fixture_http(&S, "GET", path, NULL, &out), 200);
        _cleanup_json_ json_t *view = json_loads(out, 0, NULL);
        json_t *agents = json_object_get(view, "agents");
        assert_int_equal(json_array_size(agents), 1);
        json_t *a = json_array_get(agents, 0);
        return usage_text((struct usage){json_integer_value(json_object_get(a, "llm_calls")),
                                         json_integer_value(json_object_get(a, "tokens_in")),
                                         json_integer_value(json_object_get(a, "tokens_out"))});
}

/* The user's usage before the crash case's run. */
static struct usage usage_before_the_crash;

static void crash_script(const struct agent_case *c)
{
        usage_before_the_crash = my_usage();
        script_three_tools(c->tag, ",\"delay_ms\":8000", true);
}

/* The user's usage since the crash case's run started, as /v1/me shows it (malloc'd). */
static char *crash_usage(void)
{
        struct usage now = my_usage(), b = usage_before_the_crash;

        return usage_text((struct usage){now.calls - b.calls, now.in - b.in, now.out - b.out});
}

/* While the third call is in flight, the two journaled calls count everywhere (the run
 * view, /v1/me) though their write did not touch the agent run's row (0036: their usage is
 * in their journal rows until the agent run stops); then the SIGKILL. */
static void kill_during_the_third_call(struct case_run *r)
{
        wait_llm_requests(r->before + 3, 30000); /* the third is in flight (delayed) */
        assert_int_equal(worker_sink_count(S.sink, "/crash/"), 2);
        _cleanup_free_ char *journaled = journaled_usage(r->run);
        _cleanup_free_ char *viewed = viewed_usage(r->run), *mine = crash_usage();
        assert_string_equal(journaled, "2|2000|200");
        assert_db_equal("0|0|0|0", S.db,
                        "SELECT llm_calls || '|' || tokens_in || '|' || tokens_out || '|' ||"
                        " usage_seq FROM agent_runs WHERE workflow_run_id = '%s'",
                        r->run);
        assert_string_equal(viewed, journaled);
        assert_string_equal(mine, journaled);
        kill_worker(r);
}

/* Calls 3 and 4 only after the kill (the third sent again as it was); no tool effect
 * repeated. */
static void crash_checks(struct case_run *r)
{
        _cleanup_json_ json_t *killed = llm_server_request(S.llm, r->before + 2);
        _cleanup_json_ json_t *again = llm_server_request(S.llm, r->before + 3);
        assert_true(json_equal(json_object_get(killed, "body"), json_object_get(again, "body")));
        assert_int_equal(worker_sink_count(S.sink, "/crash/a"), 1);
        assert_int_equal(worker_sink_count(S.sink, "/crash/b"), 1);
        assert_int_equal(worker_sink_count(S.sink, "/crash/c"), 1);
        agent_fixture_assert_calls(&S, r->run, 4, 3);
        /* the totals per agent run (added when it completed), per run and per user are the
         * sums of the journaled calls: the SIGKILL lost none and counted none twice */
        _cleanup_free_ char *journaled = journaled_usage(r->run), *mine = crash_usage();
        assert_string_equal(journaled, "4|5000|350");
        assert_db_equal(journaled, S.db,
                        "SELECT llm_calls || '|' || tokens_in || '|' || tokens_out FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        r->run);
        assert_db_equal("t", S.db,
                        "SELECT a.usage_seq = max(j.seq) FROM agent_runs a JOIN agent_journal j"
                        " ON j.agent_run_id = a.id WHERE a.workflow_run_id = '%s' GROUP BY a.id",
                        r->run);
        assert_db_equal("5000|350", S.db,
                        "SELECT tokens_in || '|' || tokens_out FROM workflow_runs WHERE id = '%s'",
                        r->run);
        assert_string_equal(mine, journaled);
        /* the reasoning events replayed from their records, in the tool calls' rows, are
         * recorded once */
        _cleanup_free_ char *records = journal_records(r->run);
        assert_string_equal(records, "7|3|0|1");
        assert_int_equal(events_of(r->run, "agent.reasoning"), 3);
}

/* -- ask_human: needs_input holding nothing, answered through the API -- */

static void answer_blue(struct case_run *r)
{
        assert_holds_nothing(r);
        assert_db_equal("waiting|Which colour?", S.db,
                        "SELECT status || '|' || (waiting_for->>'question') FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        r->run);
        assert_int_equal(llm_server_request_count(S.llm) - r->before, 1);
        assert_int_equal(post_input(r->run, "{\"answer\":\"blue\"}"), 200);
        assert_int_equal(post_input(r->run, "{\"answer\":\"red\"}"), 409); /* answered already */
}

/* call 1 came from the journal: the second is the one that carries the answer */
static void blue_reached_the_agent(struct case_run *r)
{
        llm_request_contains(r, 1, "blue");
}

/* -- max_cost_usd: stops before the call that would pass it; raised through the API -- */

static void raise_the_cost_budget(struct case_run *r)
{
        /* one call made ($0.15); the second would pass $0.25 */
        assert_int_equal(llm_server_request_count(S.llm) - r->before, 1);
        assert_int_equal(worker_sink_count(S.sink, "/budget/"), 1);
        assert_db_equal(
            "max_cost_usd", S.db,
            "SELECT waiting_for->>'budget' FROM agent_runs WHERE workflow_run_id = '%s'", r->run);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM workflow_runs WHERE id = '%s' AND"
                        " error->>'message' LIKE 'budget exhausted%%'",
                        r->run);
        assert_holds_nothing(r);
        assert_int_equal(post_input(r->run, "{\"budget\":{\"max_cost_usd\":1}}"), 200);
}

static void cost_is_both_calls(struct case_run *r)
{
        assert_db_equal("0.300000", S.db,
                        "SELECT cost_usd FROM agent_runs WHERE workflow_run_id = '%s'", r->run);
}

/* -- sub-agents -- */

/* root, both children, both leaves: the leaves' calls are in flight together, and only
 * their two executors run (the root and the children wait holding none); then the kill */
static void kill_while_the_leaves_call(struct case_run *r)
{
        wait_llm_requests(r->before + 5, 30000);
        wait_children(r->worker, 2, 5000);
        assert_db_equal("3", S.db,
                        "SELECT count(*) FROM agent_runs WHERE workflow_run_id = '%s' AND"
                        " status = 'waiting' AND waiting_for->>'kind' = 'sub_agents'",
                        r->run);
        kill_worker(r);
}

/* the tree: a root, two children under it, a leaf under each child */
static void the_tree_completed(struct case_run *r)
{
        assert_int_equal(llm_server_steps_left(S.llm), 0);
        assert_db_equal(
            "1|2|2|5", S.db,
            "SELECT count(*) FILTER (WHERE a.parent_agent_run_id IS NULL) || '|' ||"
            " count(*) FILTER (WHERE p.id IS NOT NULL AND p.parent_agent_run_id IS NULL) || '|' ||"
            " count(*) FILTER (WHERE p.parent_agent_run_id IS NOT NULL) || '|' ||"
            " count(*) FILTER (WHERE a.status = 'completed')"
            " FROM agent_runs a LEFT JOIN agent_runs p ON p.id = a.parent_agent_run_id"
            " WHERE a.workflow_run_id = '%s'",
            r->run);
}

/* both children's calls in flight: their two executors run, the parent's does not */
static void the_parent_waits_for_both(struct case_run *r)
{
        wait_llm_requests(r->before + 3, 30000);
        wait_children(r->worker, 2, 2500);
        _cleanup_free_ char *root = root_agent_run(r->run);
        assert_non_null(root);
        assert_db_equal("waiting|sub_agents|2", S.db,
                        "SELECT status || '|' || (waiting_for->>'kind') || '|' ||"
                        " jsonb_array_length(waiting_for->'agent_run_ids') FROM agent_runs"
                        " WHERE id = '%s'",
                        root);
}

/* each sub-agent's answer and its agent.spawn_result event: one transaction */
static void each_answer_one_commit(struct case_run *r)
{
        assert_db_equal("2", S.db,
                        "SELECT count(*) FROM agent_journal j JOIN agent_runs a ON"
                        " a.id = j.agent_run_id JOIN logs l ON l.workflow_run_id ="
                        " a.workflow_run_id AND l.kind = 'agent.spawn_result' AND"
                        " l.data->>'call_id' = j.request->>'call_id' AND l.xmin = j.xmin"
                        " WHERE a.workflow_run_id = '%s' AND j.kind = 'spawn'",
                        r->run);
        assert_int_equal(llm_server_steps_left(S.llm), 0);
        assert_db_equal("3", S.db,
                        "SELECT count(*) FROM agent_runs WHERE workflow_run_id = '%s' AND"
                        " status = 'completed'",
                        r->run);
}

/* the fast child's answer is journaled in the parent's spawn row, the slow one's call in
 * flight, the parent waits with no executor: then the kill */
static void kill_between_the_answer_and_the_wake(struct case_run *r)
{
        wait_llm_requests(r->before + 3, 30000);
        _cleanup_free_ char *root = root_agent_run(r->run);
        assert_non_null(root);
        int64_t end = test_now_ms() + 10000;
        while (test_now_ms() < end &&
               test_db_int(S.db,
                           "SELECT count(*) FROM agent_journal WHERE agent_run_id = '%s' AND"
                           " kind = 'spawn' AND response IS NOT NULL",
                           root) < 1)
                usleep(20000);
        wait_children(r->worker, 1, 2500); /* the slow child's executor only */
        assert_db_equal("waiting|1", S.db,
                        "SELECT a.status || '|' || (SELECT count(*) FROM agent_journal j WHERE"
                        " j.agent_run_id = a.id AND j.kind = 'spawn' AND j.response IS NOT NULL)"
                        " FROM agent_runs a WHERE a.id = '%s'",
                        root);
        kill_worker(r);
}

/* the parent answered once, with both */
static void the_parent_answered_once(struct case_run *r)
{
        assert_int_equal(llm_server_steps_left(S.llm), 0);
        assert_db_equal("1|2", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'agent.finished' AND data->>"
                        "'llm_calls' = '2') || '|' || count(*) FILTER (WHERE kind ="
                        " 'agent.spawn_result') FROM logs WHERE workflow_run_id = '%s'",
                        r->run);
}

/* The sub-agent of the run (malloc'd). */
static char *child_agent_run(const char *run)
{
        char *child = test_db_value(S.db,
                                    "SELECT id FROM agent_runs WHERE workflow_run_id = '%s' AND"
                                    " parent_agent_run_id IS NOT NULL",
                                    run);
        assert_non_null(child);
        return child;
}

/* the sub-agent's question, named in the run's error and the inbox; then the answer */
static void answer_the_sub_agent(struct case_run *r)
{
        assert_holds_nothing(r); /* neither the child's executor nor the root's */
        _cleanup_free_ char *child = child_agent_run(r->run);
        assert_db_equal("waiting|Which colour, child?|waiting|sub_agents", S.db,
                        "SELECT c.status || '|' || (c.waiting_for->>'question') || '|' ||"
                        " p.status || '|' || (p.waiting_for->>'kind') FROM agent_runs c"
                        " JOIN agent_runs p ON p.id = c.parent_agent_run_id WHERE c.id = '%s'",
                        child);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM workflow_runs WHERE id = '%s' AND"
                        " error->'waiting_for'->>'agent_run_id' = '%s' AND"
                        " error->'waiting_for'->>'question' = 'Which colour, child?' AND"
                        " (error->'waiting_for'->'sub_agent'->>'depth')::int = 1 AND"
                        " error->>'message' LIKE 'a sub-agent (agent run %s, depth 1) waits:%%'",
                        r->run, child, child);
        _cleanup_free_ char *inbox = get_inbox();
        assert_non_null(strstr(inbox, "Which colour, child?"));
        assert_non_null(strstr(inbox, child));
        assert_int_equal(llm_server_request_count(S.llm) - r->before, 2);
        assert_int_equal(post_input(r->run, "{\"answer\":\"teal\"}"), 200);
}

/* the root's and the child's first calls came from their journals */
static void no_step_left(struct case_run *r)
{
        (void)r;
        assert_int_equal(llm_server_steps_left(S.llm), 0);
}

/* the sub-agent's refused call waits as a "budget" request naming it; then the raise */
static void raise_the_sub_agents_budget(struct case_run *r)
{
        assert_holds_nothing(r);
        assert_int_equal(worker_sink_count(S.sink, "/thrifty/"), 0); /* refused before leaving */
        _cleanup_free_ char *child = child_agent_run(r->run);
        assert_db_equal("budget|max_tool_calls|1", S.db,
                        "SELECT (error->'waiting_for'->>'kind') || '|' ||"
                        " (error->'waiting_for'->>'budget') || '|' ||"
                        " (error->'waiting_for'->'sub_agent'->>'depth') FROM workflow_runs"
                        " WHERE id = '%s' AND error->'waiting_for'->>'agent_run_id' = '%s'",
                        r->run, child);
        _cleanup_free_ char *inbox = get_inbox();
        assert_non_null(strstr(inbox, "\"kind\":\"budget\""));
        assert_non_null(strstr(inbox, child));
        assert_int_equal(post_input(r->run, "{\"budget\":{\"max_tool_calls\":1}}"), 200);
}

/* the sub-agent's budget was raised, the root's was not */
static void only_the_sub_agents_budget_raised(struct case_run *r)
{
        _cleanup_free_ char *child = child_agent_run(r->run);

        assert_int_equal(llm_server_steps_left(S.llm), 0);
        assert_db_equal("1|0", S.db,
                        "SELECT (c.budget->>'max_tool_calls') || '|' || (p.budget->>"
                        "'max_tool_calls') FROM agent_runs c JOIN agent_runs p ON"
                        " p.id = c.parent_agent_run_id WHERE c.id = '%s'",
                        child);
}

/* -- events sent again by a replay are recorded once -- */

/* the slow GET is in flight, the reasoning and the refusal recorded: then the kill */
static void kill_after_the_events(struct case_run *r)
{
        int64_t end = test_now_ms() + 30000;
        while (test_now_ms() < end && (worker_sink_count(S.sink, "/evdup/") < 1 ||
                                       events_of(r->run, "agent.tool_refused") < 1 ||
                                       events_of(r->run, "agent.reasoning") < 1))
                usleep(20000);
        if (worker_sink_count(S.sink, "/evdup/") != 1)
                agent_fixture_dump_log(&S);
        assert_int_equal(worker_sink_count(S.sink, "/evdup/"), 1);
        assert_int_equal(events_of(r->run, "agent.reasoning"), 1);
        assert_int_equal(events_of(r->run, "agent.tool_refused"), 1);
        kill_worker(r);
}

/* the GET in flight at the kill was sent again (same key); no event twice */
static void no_event_twice(struct case_run *r)
{
        assert_int_equal(worker_sink_distinct_keys(S.sink, "/evdup/"), 1);
        assert_int_equal(events_of(r->run, "agent.reasoning"), 1);
        assert_int_equal(events_of(r->run, "agent.tool_refused"), 1);
        assert_int_equal(events_of(r->run, "agent.llm"), 2);
        assert_int_equal(events_of(r->run, "agent.finished"), 1);
}

#define HTTP_REQUEST "[\"http_request\"]"
#define SPAWN_AGENT  "[\"spawn_agent\"]"

static const struct agent_case agent_cases[] = {
    /* the three-tools-then-answer loop with tokens, cost and events, on both providers */
    {.name = "openai_agent_calls_three_tools_then_answers",
     .tag = "e2e-openai",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = HTTP_REQUEST,
     .scripts = three_tools_script,
     .input = "{\"topic\":\"durable agents\"}",
     .lease = "5s",
     .output = "The answer is abc.",
     .llm_calls = 4,
     .sink_calls = 3,
     .then = three_tools_checks},
    {.name = "anthropic_agent_calls_three_tools_then_answers",
     .tag = "e2e-anthropic",
     .provider = "anthropic",
     .model = "claude-3-5-haiku",
     .tools = HTTP_REQUEST,
     .scripts = three_tools_script,
     .input = "{\"topic\":\"durable agents\"}",
     .lease = "5s",
     .output = "The answer is abc.",
     .llm_calls = 4,
     .sink_calls = 3,
     .then = three_tools_checks},
    /* the worker SIGKILLed while the third LLM call is in flight: the next replays calls 1
     * and 2 and tools a and b from the journal, sends calls 3 and 4 only */
    {.name = "crash_mid_loop_replays_the_journal",
     .tag = "crash",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = HTTP_REQUEST,
     .scripts = crash_script,
     .input = "{\"topic\":\"crashes\"}",
     .lease = "2s",
     .meanwhile = kill_during_the_third_call,
     .output = "The answer is abc.",
     .llm_calls = 5,
     .sink_calls = 3,
     .then = crash_checks},
    /* ask_human: needs_input with no executor left, answered through the API, no LLM call
     * repeated */
    {.name = "ask_human_waits_holding_nothing",
     .tag = "ask",
     .provider = "anthropic",
     .model = "claude-3-5-haiku",
     .tools = "[\"ask_human\"]",
     .script = "[{\"text\":\"\",\"tool_calls\":[{\"id\":\"q1\",\"name\":\"ask_human\","
               "\"arguments\":\"{\\\"question\\\":\\\"Which colour?\\\"}\"}],\"usage\":{\"input\":"
               "10,\"output\":5}},{\"text\":\"You chose blue.\",\"usage\":{\"input\":20,"
               "\"output\":5}}]",
     .input = "{\"topic\":\"colours\"}",
     .lease = "5s",
     .waits_for = "needs_input",
     .meanwhile = answer_blue,
     .output = "You chose blue.",
     .llm_calls = 2,
     .then = blue_reached_the_agent},
    /* max_cost_usd stops the run before the call that would pass it (gpt-4o-mini: $0.15 per
     * million input tokens, each call below $0.15); raised, it goes on where it stopped */
    {.name = "cost_budget_stops_and_is_raised",
     .tag = "budget",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = HTTP_REQUEST,
     .budget = "{\"max_cost_usd\":0.25}",
     .script =
         "[{\"text\":\"\",\"tool_calls\":[{\"id\":\"b1\",\"name\":\"http_request\","
         "\"arguments\":\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"@SINK@/budget/1\\\"}\"}],"
         "\"usage\":{\"input\":1000000,\"output\":0}},"
         "{\"text\":\"Done within budget.\",\"usage\":{\"input\":1000000,\"output\":0}}]",
     .input = "{\"topic\":\"money\"}",
     .lease = "5s",
     .waits_for = "needs_input",
     .meanwhile = raise_the_cost_budget,
     .output = "Done within budget.",
     .llm_calls = 2,
     .sink_calls = 1, /* not repeated */
     .then = cost_is_both_calls},
    /* a sub-agent tree of depth 2 (two children, a leaf each), the worker SIGKILLed while
     * both leaves call: the next replays the root and the children, runs the leaves again */
    {.name = "subagent_tree_resumes_after_a_kill",
     .tag = "tree",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = SPAWN_AGENT,
     .script =
         "[{\"match\":\"Research tree\",\"text\":\"Two helpers.\",\"tool_calls\":["
         "{\"id\":\"s1\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":\\\"CHILD-A "
         "go\\\"}\"},{\"id\":\"s2\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":"
         "\\\"CHILD-B go\\\"}\"}],\"usage\":{\"input\":10,\"output\":5}},"
         "{\"match\":\"CHILD-A go\",\"tool_calls\":[{\"id\":\"g1\",\"name\":\"spawn_agent\","
         "\"arguments\":\"{\\\"prompt\\\":\\\"LEAF-A go\\\"}\"}],\"usage\":{\"input\":10,"
         "\"output\":5}},"
         "{\"match\":\"CHILD-B go\",\"tool_calls\":[{\"id\":\"g2\",\"name\":\"spawn_agent\","
         "\"arguments\":\"{\\\"prompt\\\":\\\"LEAF-B go\\\"}\"}],\"usage\":{\"input\":10,"
         "\"output\":5}},"
         "{\"match\":\"LEAF-A go\",\"text\":\"LA-DONE\",\"delay_ms\":8000},"
         "{\"match\":\"LEAF-B go\",\"text\":\"LB-DONE\",\"delay_ms\":8000},"
         "{\"match\":\"LEAF-A go\",\"text\":\"LA-DONE\"},"
         "{\"match\":\"LEAF-B go\",\"text\":\"LB-DONE\"},"
         "{\"match\":\"LA-DONE\",\"text\":\"CA-DONE\"},"
         "{\"match\":\"LB-DONE\",\"text\":\"CB-DONE\"},"
         "{\"match\":\"CB-DONE\",\"text\":\"ROOT: CA-DONE + CB-DONE\"}]",
     .input = "{\"topic\":\"tree\"}",
     .lease = "2s",
     .meanwhile = kill_while_the_leaves_call,
     .output = "ROOT: CA-DONE + CB-DONE",
     /* 5 before the kill; after it only the leaves again, the children's and the root's
      * last calls */
     .llm_calls = 10,
     .then = the_tree_completed},
    /* a parent that can only wait for its sub-agents holds no executor and is started again
     * when they answer: nobody has to wake it */
    {.name = "a_parent_waiting_for_sub_agents_holds_no_executor",
     .tag = "wake",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = SPAWN_AGENT,
     .script = "[{\"match\":\"Research wake\",\"text\":\"Two helpers.\",\"tool_calls\":["
               "{\"id\":\"w1\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":\\\"KID-A "
               "go\\\"}\"},{\"id\":\"w2\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":"
               "\\\"KID-B go\\\"}\"}],\"usage\":{\"input\":10,\"output\":5}},"
               "{\"match\":\"KID-A go\",\"text\":\"KA-DONE\",\"delay_ms\":3000},"
               "{\"match\":\"KID-B go\",\"text\":\"KB-DONE\",\"delay_ms\":3000},"
               "{\"match\":\"KB-DONE\",\"text\":\"ROOT: KA-DONE + KB-DONE\"}]",
     .input = "{\"topic\":\"wake\"}",
     .lease = "5s",
     .meanwhile = the_parent_waits_for_both,
     .output = "ROOT: KA-DONE + KB-DONE",
     .llm_calls = 4,
     .then = each_answer_one_commit},
    /* the worker dies between a fast sub-agent's answer and its parent's wake, a slow one
     * in flight: the wake is not lost, nobody answers twice */
    {.name = "a_kill_between_a_sub_agents_answer_and_the_wake",
     .tag = "halfway",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = SPAWN_AGENT,
     .script = "[{\"match\":\"Research halfway\",\"tool_calls\":["
               "{\"id\":\"h1\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":\\\"FAST "
               "go\\\"}\"},{\"id\":\"h2\",\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":"
               "\\\"SLOW go\\\"}\"}],\"usage\":{\"input\":10,\"output\":5}},"
               "{\"match\":\"FAST go\",\"text\":\"F-DONE\"},"
               "{\"match\":\"SLOW go\",\"text\":\"S-DONE\",\"delay_ms\":8000},"
               "{\"match\":\"SLOW go\",\"text\":\"S-DONE\"},"
               "{\"match\":\"S-DONE\",\"text\":\"ROOT: F-DONE + S-DONE\"}]",
     .input = "{\"topic\":\"halfway\"}",
     .lease = "2s",
     .meanwhile = kill_between_the_answer_and_the_wake,
     .output = "ROOT: F-DONE + S-DONE",
     /* root, fast, slow before the kill; slow again and the root's answer after it */
     .llm_calls = 5,
     .then = the_parent_answered_once},
    /* a sub-agent's ask_human waits instead of failing its spawn, holding nothing; the
     * answer resumes the sub-agent, then the parent, each from its journal */
    {.name = "a_sub_agent_asking_a_person_waits_holding_nothing",
     .tag = "subask",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = "[\"spawn_agent\",\"ask_human\"]",
     .script = "[{\"match\":\"Research subask\",\"tool_calls\":[{\"id\":\"k1\",\"name\":"
               "\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":\\\"ASKER go\\\"}\"}],"
               "\"usage\":{\"input\":10,\"output\":5}},"
               "{\"match\":\"ASKER go\",\"tool_calls\":[{\"id\":\"k2\",\"name\":\"ask_human\","
               "\"arguments\":\"{\\\"question\\\":\\\"Which colour, child?\\\"}\"}],"
               "\"usage\":{\"input\":10,\"output\":5}},"
               "{\"match\":\"CHILD: teal\",\"text\":\"ROOT: CHILD: teal\"},"
               "{\"match\":\"teal\",\"text\":\"CHILD: teal\"}]",
     .input = "{\"topic\":\"subask\"}",
     .lease = "5s",
     .waits_for = "needs_input",
     .meanwhile = answer_the_sub_agent,
     .output = "ROOT: CHILD: teal",
     .llm_calls = 4,
     .then = no_step_left},
    /* a sub-agent's exhausted budget (the tree's max_tool_calls 0; a spawn is not a tool
     * call) waits for a raise naming the sub-agent, holding nothing; the raise is the
     * sub-agent's */
    {.name = "a_sub_agents_exhausted_budget_waits_for_a_raise",
     .tag = "thrifty",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = "[\"spawn_agent\",\"http_request\"]",
     .budget = "{\"max_tool_calls\":0}",
     .script = "[{\"tool_calls\":[{\"id\":\"t1\",\"name\":\"spawn_agent\",\"arguments\":"
               "\"{\\\"prompt\\\":\\\"THRIFTY go\\\"}\"}],\"usage\":{\"input\":10,\"output\":5}},"
               "{\"tool_calls\":[{\"id\":\"t2\",\"name\":\"http_request\",\"arguments\":"
               "\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"@SINK@/thrifty/1\\\"}\"}],"
               "\"usage\":{\"input\":10,\"output\":5}},"
               "{\"text\":\"THRIFTY-DONE\",\"usage\":{\"input\":10,\"output\":5}},"
               "{\"text\":\"ROOT: THRIFTY-DONE\",\"usage\":{\"input\":10,\"output\":5}}]",
     .input = "{\"topic\":\"thrift\"}",
     .lease = "5s",
     .waits_for = "needs_input",
     .meanwhile = raise_the_sub_agents_budget,
     .output = "ROOT: THRIFTY-DONE",
     .llm_calls = 4,
     .sink_calls = 1,
     .then = only_the_sub_agents_budget_raised},
    /* events an executor sent after its last journaled answer (a reasoning event, a refused
     * call's) are recorded once, though the replay after a SIGKILL sends them again */
    {.name = "events_are_recorded_once_across_a_crash",
     .tag = "evdup",
     .provider = "openai",
     .model = "gpt-4o-mini",
     .tools = HTTP_REQUEST,
     .script = "[{\"text\":\"Looking once.\",\"tool_calls\":[{\"id\":\"e1\",\"name\":"
               "\"http_request\",\"arguments\":\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":"
               "\\\"http://elsewhere.test/x\\\"}\"},{\"id\":\"e2\",\"name\":\"http_request\","
               "\"arguments\":\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"@SINK@/evdup/"
               "a?delay_ms=6000\\\"}\"}],\"usage\":{\"input\":10,\"output\":5}},"
               "{\"text\":\"Seen once.\",\"usage\":{\"input\":20,\"output\":5}}]",
     .input = "{\"topic\":\"echoes\"}",
     .lease = "2s",
     .meanwhile = kill_after_the_events,
     .output = "Seen once.",
     .llm_calls = 2,
     .sink_calls = 2,
     .then = no_event_twice},
};

static void run_agent_case(void **state)
{
        const struct agent_case *c = *state;
        struct case_run r = {.c = c, .before = llm_server_request_count(S.llm)};
        _cleanup_free_ char *wf =
            agent_workflow(c->tag, c->provider, c->model, c->tools, c->budget);
        _cleanup_free_ char *prefix = str_printf("/%s/", c->tag);

        if (c->script) {
                _cleanup_free_ char *script = with_sink_url(c->script);
                llm_server_script(S.llm, script);
        } else
                c->scripts(c);
        r.run = worker_test_run(S.db, wf, c->input);
        r.worker = spawn_worker(c->lease);
        if (c->waits_for)
                wait_run(r.worker, r.run, c->waits_for, 30000, "the run did not stop for a person");
        if (c->meanwhile)
                c->meanwhile(&r);
        wait_run(r.worker, r.run, "completed|failed", 60000, "the run did not end");
        test_stop_process(r.worker, SIGTERM, 15000);
        agent_fixture_assert_completed(&S, r.run);
        assert_db_equal(c->output, S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", r.run);
        assert_int_equal(llm_server_request_count(S.llm) - r.before, c->llm_calls);
        assert_int_equal(worker_sink_count(S.sink, prefix), c->sink_calls);
        if (c->then)
                c->then(&r);
        assert_no_key_anywhere(r.run);
        free(r.run);
}

/* ---- the special cases ------------------------------------------------------------------ */

/*
 * Replay that finds the executor asking something else than its journal holds is a
 * recorded nondeterminism error showing both requests, never silent divergence. (The
 * journal row's hash is altered while the run waits for a person, as if the agent had
 * asked something else in its first session.)
 */
static void a_journal_mismatch_is_a_nondeterminism_error(void **state)
{
        (void)state;
        _cleanup_free_ char *wf =
            agent_workflow("nondet", "openai", "gpt-4o-mini", "[\"ask_human\"]", NULL);
        llm_server_script(S.llm,
                          "[{\"text\":\"\",\"tool_calls\":[{\"id\":\"q1\",\"name\":\"ask_human\","
                          "\"arguments\":\"{\\\"question\\\":\\\"Go on?\\\"}\"}],"
                          "\"usage\":{\"input\":10,\"output\":5}}]");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"chance\"}");
        pid_t w = spawn_worker("5s");

        wait_run(w, run, "needs_input", 30000, "the run did not wait for a person");
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *sql = str_printf(
            "UPDATE agent_journal j SET request_sha256 = repeat('0', 64) FROM agent_runs a"
            " WHERE a.id = j.agent_run_id AND a.workflow_run_id = '%s' AND j.kind = 'llm'",
            run);
        PQclear(test_db_must(S.db, sql));
        assert_int_equal(post_input(run, "{\"answer\":\"yes\"}"), 200);
        wait_run(w, run, "completed|failed", 30000, "the run did not end");
        test_stop_process(w, SIGTERM, 15000);
        assert_db_equal("failed|nondeterminism", S.db,
                        "SELECT status || '|' || (error->'error'->>'class') FROM workflow_runs"
                        " WHERE id = '%s'",
                        run);
        /* both requests shown: the journaled one and the new one, both the first llm call */
        assert_db_equal(
            "llm|llm", S.db,
            "SELECT (error->'journaled'->>'type') || '|' || (error->'requested'->>'type')"
            " FROM agent_runs WHERE workflow_run_id = '%s'",
            run);
        assert_int_equal(llm_server_request_count(S.llm), before); /* nothing went live */
        assert_no_key_anywhere(run);
}

/* ---- stored agents referenced by name (docs/workflows.md, "Stored agents") ------------ */

/* method path (body) through the API as token's user (NULL: this test's user); the status,
 * the answer in *out (caller frees) when out is not NULL. */
static long api_call(const char *token, const char *method, const char *path, const char *body,
                     json_t **out)
{
        char url[512], auth[128];
        const char *headers[] = {auth, NULL};
        _cleanup_free_ char *text = NULL;

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token ? token : S.token);
        long st = test_http(method, url, headers, body, &text);
        if (out)
                *out = text ? json_loads(text, 0, NULL) : NULL;
        return st;
}

/* Applies stored agent name (its other members in rest) with its LLM at the test server. */
static void apply_agent(const char *name, const char *rest, int status)
{
        _cleanup_free_ char *body =
            str_printf("{\"name\":\"%s\",\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":"
                       "\"gpt-4o-mini\",\"api_key_secret\":\"LLMKEY\",%s}",
                       name, llm_server_url(S.llm), rest);
        _cleanup_json_ json_t *out = NULL;
        long st = api_call(NULL, "POST", "/v1/agents", body, &out);
        if (status ? st != status : st != 200 && st != 201)
                fail_msg("apply agent %s: %ld", name, st);
}

/* The stored agent "researcher", version 1 (status 0: applied now or already). */
static void apply_researcher(int status)
{
        apply_agent("researcher",
                    "\"system\":\"You are the stored researcher.\",\"prompt\":\"Research ${ "
                    "input.topic } carefully.\",\"tools\":[\"http_request\"],\"allowed_hosts\":"
                    "[\"127.0.0.1\"],\"budget\":{\"max_tokens\":100000,\"max_cost_usd\":5}",
                    status);
}

/* Applies a workflow of one agent node whose "agent" is agent (JSON text). */
static void apply_ref_workflow(const char *name, const char *agent)
{
        _cleanup_free_ char *body = str_printf(
            "{\"name\":\"%s\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":%s}]}",
            name, agent);
        _cleanup_json_ json_t *out = NULL;
        long st = api_call(NULL, "POST", "/v1/workflows", body, &out);
        if (st != 201) {
                _cleanup_free_ char *t = out ? json_dumps(out, 0) : NULL;
                fail_msg("apply %s: %ld %s", name, st, t ? t : "");
        }
}

/* Starts a run of workflow through the API; returns its id. */
static char *start_run(const char *workflow, const char *input)
{
        _cleanup_free_ char *body =
            str_printf("{\"workflow\":\"%s\",\"input\":%s}", workflow, input);
        _cleanup_json_ json_t *out = NULL;
        assert_int_equal(api_call(NULL, "POST", "/v1/runs", body, &out), 201);
        assert_non_null(json_string_value(json_object_get(out, "id")));
        /* the answer carries the pins the INSERT's statement trigger wrote (0052), as a read
         * of the run does */
        _cleanup_free_ char *path =
            str_printf("/v1/runs/%s", json_string_value(json_object_get(out, "id")));
        _cleanup_json_ json_t *read = NULL;
        assert_int_equal(api_call(NULL, "GET", path, NULL, &read), 200);
        assert_json_equal(json_object_get(out, "agent_versions"),
                          json_object_get(read, "agent_versions"));
        return strdup(json_string_value(json_object_get(out, "id")));
}

/* The version of the stored agent reference key the run pinned, as GET /v1/runs/{id} says. */
static json_int_t run_agent_version(const char *run, const char *key)
{
        char path[128];
        _cleanup_json_ json_t *out = NULL;

        snprintf(path, sizeof(path), "/v1/runs/%s", run);
        assert_int_equal(api_call(NULL, "GET", path, NULL, &out), 200);
        json_t *v = json_object_get(json_object_get(out, "agent_versions"), key);
        assert_true(json_is_integer(v));
        return json_integer_value(v);
}

static char *llm_body(int i)
{
        _cleanup_json_ json_t *req = llm_server_request(S.llm, i);
        return json_dumps(json_object_get(req, "body"), JSON_COMPACT);
}

/* "agent": "researcher" runs the user's stored agent end to end: its model, system prompt,
 * prompt (with the run's input) and key reach the LLM, and the run shows the version. */
static void a_node_runs_a_stored_agent_by_name(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        apply_researcher(201);
        apply_ref_workflow("by-name", "\"researcher\"");
        llm_server_script(S.llm, "[{\"text\":\"Stored answer.\",\"usage\":{\"input\":10,"
                                 "\"output\":5}}]");
        _cleanup_free_ char *run = start_run("by-name", "{\"topic\":\"durable agents\"}");
        assert_int_equal(run_agent_version(run, "researcher"), 1);
        pid_t w = spawn_worker("5s");
        wait_run(w, run, "completed|failed", 30000, "the run did not end");
        test_stop_process(w, SIGTERM, 15000);
        agent_fixture_assert_completed(&S, run);
        assert_db_equal("Stored answer.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(llm_server_request_count(S.llm) - before, 1);
        _cleanup_free_ char *body = llm_body(before);
        assert_non_null(strstr(body, "You are the stored researcher."));
        assert_non_null(strstr(body, "Research durable agents carefully."));
        assert_non_null(strstr(body, "gpt-4o-mini"));
        /* the node's recorded input names the version it ran */
        assert_db_equal("researcher|1", S.db,
                        "SELECT (input->'ref'->>'name') || '|' || (input->'ref'->>'version')"
                        " FROM node_runs WHERE workflow_run_id = '%s' AND node_id = 'think'"
                        " ORDER BY attempt DESC LIMIT 1",
                        run);
        assert_no_key_anywhere(run);
}

/* Overrides merge over the stored definition: the node's prompt replaces the agent's, its
 * budget's max_tokens replaces that one key (max_cost_usd stays) and stops the run after a
 * call of 5,000 tokens, which the agent's own 100,000 would let go on. */
static void a_node_overrides_the_stored_agent(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        apply_researcher(0);
        apply_ref_workflow("override",
                           "{\"ref\":\"researcher\",\"prompt\":\"Summarise ${ input.topic } in "
                           "one line.\",\"budget\":{\"max_tokens\":1000}}");
        _cleanup_free_ char *script = str_printf(
            "[{\"text\":\"\",\"tool_calls\":[{\"id\":\"o1\",\"name\":\"http_request\","
            "\"arguments\":\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"%s/override/1\\\"}\"}],"
            "\"usage\":{\"input\":5000,\"output\":0}},"
            "{\"text\":\"One line.\",\"usage\":{\"input\":5000,\"output\":0}}]",
            worker_sink_url(S.sink));
        llm_server_script(S.llm, script);
        _cleanup_free_ char *run = start_run("override", "{\"topic\":\"budgets\"}");
        pid_t w = spawn_worker("5s");
        wait_run(w, run, "needs_input", 30000, "the overridden budget did not stop the run");
        assert_int_equal(llm_server_request_count(S.llm) - before, 1);
        _cleanup_free_ char *body = llm_body(before);
        assert_non_null(strstr(body, "Summarise budgets in one line."));
        assert_null(strstr(body, "carefully"));
        assert_non_null(strstr(body, "You are the stored researcher.")); /* not overridden */
        assert_db_equal("max_tokens|1000|5", S.db,
                        "SELECT (waiting_for->>'budget') || '|' || (budget->>'max_tokens') || '|'"
                        " || (budget->>'max_cost_usd') FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        run);
        assert_int_equal(post_input(run, "{\"budget\":{\"max_tokens\":100000}}"), 200);
        wait_run(w, run, "completed|failed", 30000, "the run did not continue");
        test_stop_process(w, SIGTERM, 15000);
        assert_db_equal("One line.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
}

/* A run pins the version it was created with: applying a new version while it waits for a
 * person changes neither what it resumes with nor its replay; a run created afterwards
 * uses the new version. */
static void a_new_version_does_not_change_a_waiting_run(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        apply_agent("asker",
                    "\"system\":\"SYSTEM-V1\",\"prompt\":\"Ask about ${ input.topic }.\","
                    "\"tools\":[\"ask_human\"]",
                    201);
        apply_ref_workflow("pinned", "\"asker\"");
        llm_server_script(
            S.llm, "[{\"match\":\"Ask about "
                   "colours.\",\"text\":\"\",\"tool_calls\":[{\"id\":\"q1\",\"name\":"
                   "\"ask_human\",\"arguments\":\"{\\\"question\\\":\\\"Which colour?\\\"}\"}],"
                   "\"usage\":{\"input\":10,\"output\":5}},"
                   "{\"match\":\"blue\",\"text\":\"V1 answered blue.\",\"usage\":{\"input\":20,"
                   "\"output\":5}},"
                   "{\"match\":\"Ask about shapes again.\",\"text\":\"V2 "
                   "answered.\",\"usage\":{\"input\":20,"
                   "\"output\":5}}]");
        _cleanup_free_ char *run = start_run("pinned", "{\"topic\":\"colours\"}");
        pid_t w = spawn_worker("5s");
        wait_run(w, run, "needs_input", 30000, "the run did not wait for a person");

        apply_agent("asker",
                    "\"system\":\"SYSTEM-V2\",\"prompt\":\"Ask about ${ input.topic } again.\","
                    "\"tools\":[\"ask_human\"]",
                    201);
        assert_int_equal(run_agent_version(run, "asker"), 1);
        assert_int_equal(post_input(run, "{\"answer\":\"blue\"}"), 200);
        wait_run(w, run, "completed|failed", 30000, "the run did not resume");
        agent_fixture_assert_completed(&S, run);
        assert_db_equal("V1 answered blue.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        /* the first call came from the journal (no nondeterminism): two calls, both v1 */
        assert_int_equal(llm_server_request_count(S.llm) - before, 2);
        _cleanup_free_ char *second = llm_body(before + 1);
        assert_non_null(strstr(second, "SYSTEM-V1"));
        assert_null(strstr(second, "SYSTEM-V2"));

        _cleanup_free_ char *fresh = start_run("pinned", "{\"topic\":\"shapes\"}");
        assert_int_equal(run_agent_version(fresh, "asker"), 2);
        wait_run(w, fresh, "completed|failed", 30000, "the new run did not end");
        test_stop_process(w, SIGTERM, 15000);
        assert_db_equal("V2 answered.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", fresh);
        _cleanup_free_ char *third = llm_body(before + 2);
        assert_non_null(strstr(third, "Ask about shapes again."));
}

/* A workflow naming a stored agent that does not exist, for its user, is refused when it
 * is applied, naming the node and the field and saying how to fix it. */
static void a_missing_agent_is_a_validation_error(void **state)
{
        (void)state;
        static const struct {
                const char *agent, *field, *says;
        } cases[] = {
            {"\"nobody\"", "/nodes/0/agent", "no agent named 'nobody'; apply it first"},
            {"{\"ref\":\"nobody\",\"prompt\":\"x\"}", "/nodes/0/agent/ref",
             "no agent named 'nobody'"},
            {"{\"ref\":\"researcher\",\"version\":9}", "/nodes/0/agent/ref",
             "agent 'researcher' has no version 9 (its latest is 1)"},
            {"{\"ref\":\"researcher\",\"provider\":\"anthropic\"}", "/nodes/0/agent/provider",
             "'provider' belongs to the stored agent"},
            {"{\"ref\":\"researcher\",\"promt\":\"x\"}", "/nodes/0/agent/promt",
             "did you mean 'prompt'?"},
            {"{\"ref\":\"researcher\",\"budget\":{\"max_cost_usd\":-1}}",
             "/nodes/0/agent/budget/max_cost_usd", "max_cost_usd"},
            {"\"Bad Name\"", "/nodes/0/agent", "invalid agent name"},
        };
        apply_researcher(0);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *body = str_printf(
                    "{\"name\":\"missing\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\","
                    "\"agent\":%s}]}",
                    cases[i].agent);
                _cleanup_json_ json_t *out = NULL;
                assert_int_equal(api_call(NULL, "POST", "/v1/workflows", body, &out), 422);
                json_t *e = json_object_get(out, "error");
                assert_string_equal(json_string_value(json_object_get(e, "code")),
                                    "validation_failed");
                assert_string_equal(json_string_value(json_object_get(e, "node")), "think");
                assert_string_equal(json_string_value(json_object_get(e, "field")), cases[i].field);
                const char *detail = json_string_value(json_object_get(e, "detail"));
                assert_non_null(detail);
                if (!strstr(detail, cases[i].says))
                        fail_msg("case %zu: '%s' does not say '%s'", i, detail, cases[i].says);
        }
        /* a definition is not a reference */
        _cleanup_json_ json_t *refd = NULL;
        assert_int_equal(api_call(NULL, "POST", "/v1/agents",
                                  "{\"name\":\"alias\",\"ref\":\"researcher\"}", &refd),
                         422);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(refd, "error"), "field")), "/ref");
        /* an agent with no prompt, referenced by a node that gives none */
        apply_agent("promptless", "\"system\":\"s\"", 201);
        _cleanup_json_ json_t *out = NULL;
        assert_int_equal(api_call(NULL, "POST", "/v1/workflows",
                                  "{\"name\":\"missing\",\"nodes\":[{\"id\":\"think\",\"type\":"
                                  "\"agent\",\"agent\":\"promptless\"}]}",
                                  &out),
                         422);
        assert_non_null(
            strstr(json_string_value(json_object_get(json_object_get(out, "error"), "detail")),
                   "has no prompt and this node gives none"));
        /* agents are per user: another user's "researcher" does not exist for bob */
        _cleanup_free_ char *bob = worker_test_user(S.db, "bob");
        char bob_token[AUTH_TOKEN_LEN + 1];
        worker_test_token(S.db, bob, bob_token);
        json_decref(out);
        out = NULL;
        assert_int_equal(api_call(bob_token, "POST", "/v1/workflows",
                                  "{\"name\":\"theirs\",\"nodes\":[{\"id\":\"think\",\"type\":"
                                  "\"agent\",\"agent\":\"researcher\"}]}",
                                  &out),
                         422);
        assert_non_null(
            strstr(json_string_value(json_object_get(json_object_get(out, "error"), "detail")),
                   "no agent named 'researcher'"));
        assert_db_equal("0", S.db,
                        "SELECT count(*) FROM workflows WHERE name IN "
                        "('missing', 'theirs')");
}

/* Journal bytes of the llm rows up to the n-th llm call of the agent run. */
static long long journal_bytes(const char *run, int n)
{
        return test_db_int(S.db,
                           "SELECT coalesce(sum(octet_length(j.request::text) +"
                           " octet_length(coalesce(j.response::text, '')) +"
                           " octet_length(coalesce(j.stubs::text, ''))), 0)"
                           " FROM agent_journal j JOIN agent_runs a ON a.id = j.agent_run_id"
                           " WHERE a.workflow_run_id = '%s' AND j.seq <= (SELECT seq FROM"
                           " agent_journal x WHERE x.agent_run_id = a.id AND x.kind = 'llm'"
                           " ORDER BY seq OFFSET %d LIMIT 1)",
                           run, n - 1);
}

/*
 * The conversation is stored once: a 200-turn conversation (each turn adds ~2 KB: the
 * model's text and its refused tool call) journals at most 2x the bytes of its distinct
 * messages (the last request's), where storing each call's whole request would be ~100x
 * at turn 200. Prints the journal bytes per turn at turns 50, 100 and 200.
 */
static void journal_grows_with_the_conversation(void **state)
{
        enum { TURNS = 200 };
        (void)state;
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"long\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Talk for a long time.\",\"tools\":"
            "[\"http_request\"],\"max_turns\":%d}}]}",
            llm_server_url(S.llm), TURNS + 5);
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, "long", 1, def);
        char pad[2001];
        memset(pad, 'x', sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = '\0';
        struct buf script;
        buf_init(&script, 8 << 20);
        assert_int_equal(buf_append_str(&script, "["), 0);
        for (int i = 1; i <= TURNS; i++)
                assert_int_equal(
                    buf_printf(&script,
                               "{\"text\":\"turn %d %s\",\"tool_calls\":[{\"id\":\"t%d\","
                               "\"name\":\"http_request\",\"arguments\":\"{\\\"method\\\":"
                               "\\\"GET\\\",\\\"url\\\":\\\"http://elsewhere.test/%d\\\"}\"}],"
                               "\"usage\":{\"input\":10,\"output\":10}},",
                               i, pad, i, i),
                    0);
        assert_int_equal(buf_append_str(&script, "{\"text\":\"Enough.\"}]"), 0);
        llm_server_script(S.llm, script.data);
        buf_free(&script);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_worker("5s");

        wait_run(w, run, "completed|failed", 240000, "the long conversation did not end");
        test_stop_process(w, SIGTERM, 15000);
        agent_fixture_assert_completed(&S, run);
        assert_int_equal(llm_server_request_count(S.llm) - before, TURNS + 1);

        const int at[] = {50, 100, 200};
        for (size_t k = 0; k < ELEMENTSOF(at); k++) {
                /* the distinct messages of the conversation so far: the call's whole list */
                _cleanup_json_ json_t *req = llm_server_request(S.llm, before + at[k] - 1);
                _cleanup_free_ char *msgs = json_dumps(
                    json_object_get(json_object_get(req, "body"), "messages"), JSON_COMPACT);
                long long journal = journal_bytes(run, at[k]);
                double ratio = (double)journal / (double)strlen(msgs);
                printf("journal growth: turn %d: %lld journal bytes (%lld per turn), %zu bytes "
                       "of distinct messages, ratio %.2f\n",
                       at[k], journal, journal / at[k], strlen(msgs), ratio);
                assert_int_le(journal, 2 * (long long)strlen(msgs));
        }
}

/* ---- tool calls that need a person (approve_tools) ---------------------------------- */

/* An agent whose http_request calls a person approves (ada, who owns the run), notified by
 * webhook, with a deadline that rejects. */
static char *gated_workflow(const char *name, const char *timeout)
{
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"%s\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Send the ${ input.topic } report.\","
            "\"tools\":[\"http_request\"],\"allowed_hosts\":[\"127.0.0.1\"],"
            "\"approve_tools\":{\"tools\":[\"http_request\"],\"reviewers\":[\"ada\"],\"channels\":["
            "{\"kind\":"
            "\"webhook\",\"url\":\"%s/hook\"}],\"timeout\":\"%s\",\"on_timeout\":\"reject\"}}}]}",
            name, llm_server_url(S.llm), worker_sink_url(S.sink), timeout);
        return worker_test_workflow(S.db, S.user, name, 1, def);
}

/* The script: a POST to SINK/<tag>/send<query> (the call a person decides on), then the
 * agent's answer once it has the call's result (whatever it is). */
static void script_gated(const char *tag, const char *query, const char *answer)
{
        _cleanup_free_ char *script = str_printf(
            "[{\"text\":\"I will send the report to the archive.\",\"tool_calls\":[{\"id\":"
            "\"call_send\",\"name\":\"http_request\",\"arguments\":\"{\\\"method\\\":\\\"POST\\\","
            "\\\"url\\\":\\\"%s/%s/send%s\\\",\\\"body\\\":\\\"the report\\\"}\"}],"
            "\"usage\":{\"input\":100,\"output\":10}},{\"text\":\"%s\"}]",
            worker_sink_url(S.sink), tag, query ? query : "", answer);
        llm_server_script(S.llm, script);
}

/*
 * Approved: while the person decides, the run waits holding nothing (no executor, no
 * lease) and the approval shows the call, its arguments and the agent's reasoning, in the
 * inbox and in a webhook notice; approved, the call runs once and the agent continues from
 * its journal (its first LLM call is not paid again).
 */
static void gated_tool_call_approved_runs_once(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *wf = gated_workflow("gated-yes", "1h");
        script_gated("gated-yes", NULL, "Sent.");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"quarterly\"}");
        pid_t w = spawn_worker("5s");
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w, 30000);

        usleep(300 * 1000);
        assert_int_equal(children_of(w), 0); /* no executor process while a person decides */
        assert_db_equal("t", S.db,
                        "SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM "
                        "workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(worker_sink_count(S.sink, "/gated-yes/"), 0);
        /* what the reviewer sees: the tool, its arguments, the reasoning, the action */
        assert_db_equal("http_request|POST|the report|I will send the report to the archive.", S.db,
                        "SELECT (request->'context'->>'tool') || '|' ||"
                        " (request->'context'->'arguments'->>'method') || '|' ||"
                        " (request->'context'->'arguments'->>'body') || '|' ||"
                        " (request->'context'->>'reasoning') FROM approvals WHERE id = '%s'",
                        approval);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM approvals WHERE id = '%s' AND request->>"
                        "'proposed_action' LIKE 'http_request POST %%/gated-yes/send'",
                        approval);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM notifications WHERE workflow_run_id = '%s' AND "
                        "channel = 'webhook' AND payload->>'event' = 'approval.requested'",
                        run);
        _cleanup_free_ char *inbox = NULL;
        assert_int_equal(agent_fixture_http(&S, "GET", "/v1/inbox", NULL, &inbox), 200);
        assert_non_null(strstr(inbox, approval));
        assert_non_null(strstr(inbox, "\"tool\":\"http_request\""));
        assert_null(strstr(inbox, "\"kind\":\"question\"")); /* one entry: the approval */
        assert_db_equal("waiting|tool_approval", S.db,
                        "SELECT status || '|' || (waiting_for->>'kind') FROM agent_runs"
                        " WHERE workflow_run_id = '%s'",
                        run);

        assert_int_equal(agent_fixture_decide(
                             &S, approval, "{\"decision\":\"approve\",\"comment\":\"go\"}", NULL),
                         200);
        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_db_equal("Sent.", S.db, "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_int_equal(worker_sink_count(S.sink, "/gated-yes/send"), 1);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "\\\"ok\\\":true")); /* the receiver's answer */
        /* the first call came from the journal: 2 in all */
        assert_int_equal(llm_server_request_count(S.llm) - before, 2);
        assert_db_equal("1|1|1|1|1|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'agent.tool_approval') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'approval.requested') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'approval.decided') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_approved') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_call') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_result')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run);
        agent_fixture_assert_calls(&S, run, 2, 1);
        assert_no_key_anywhere(run);
}

/*
 * A worker SIGKILLed while the run waits, then one SIGKILLed right after the approved call
 * reached the receiver and before its answer was journaled: the next worker does not send
 * it again (the receiver sees it once) and tells the agent the call was interrupted; nobody
 * is asked twice.
 */
static void gated_tool_call_not_repeated_after_a_kill(void **state)
{
        (void)state;
        _cleanup_free_ char *wf = gated_workflow("gated-kill", "1h");
        script_gated("gated-kill", "?delay_ms=5000", "Maybe sent.");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"monthly\"}");
        pid_t w0 = spawn_worker("2s");
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w0, 30000);

        /* a kill while the run waits loses nothing: the next worker holds nothing either */
        kill(w0, SIGKILL);
        test_stop_process(w0, SIGKILL, 5000);
        pid_t w1 = spawn_worker("2s");
        usleep(1500 * 1000);
        assert_db_equal("waiting|pending", S.db,
                        "SELECT r.status || '|' || a.status FROM workflow_runs r JOIN approvals a"
                        " ON a.workflow_run_id = r.id WHERE a.id = '%s'",
                        approval);
        assert_int_equal(children_of(w1), 0);

        assert_int_equal(agent_fixture_decide(&S, approval, "{\"decision\":\"approve\"}", NULL),
                         200);
        for (int i = 0; i < 300 && worker_sink_count(S.sink, "/gated-kill/") < 1; i++)
                usleep(100 * 1000);
        assert_int_equal(worker_sink_count(S.sink, "/gated-kill/"), 1); /* its answer waits */
        kill(w1, SIGKILL);
        test_stop_process(w1, SIGKILL, 5000);

        pid_t w2 = spawn_worker("2s");
        agent_fixture_wait_completed(&S, run, w2, 60000);
        usleep(5500 * 1000); /* the receiver's delayed answer is over: nothing else came */
        assert_int_equal(worker_sink_count(S.sink, "/gated-kill/send"), 1);
        assert_db_equal("Maybe sent.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "interrupted"));
        /* asked once: one approval, one request event, one notice */
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM notifications WHERE workflow_run_id = '%s'", run);
        assert_db_equal("1|1|1", S.db,
                        "SELECT (SELECT count(*) FROM approvals WHERE workflow_run_id = '%s')"
                        " || '|' || count(*) FILTER (WHERE kind = 'approval.requested') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_interrupted')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run, run);
        assert_no_key_anywhere(run);
}

/* Rejected: the call never runs, the agent's next LLM request carries the rejection and
 * the reviewer's comment, and the agent finishes differently. */
static void gated_tool_call_rejected_reaches_the_agent(void **state)
{
        (void)state;
        _cleanup_free_ char *wf = gated_workflow("gated-no", "1h");
        script_gated("gated-no", NULL, "Not sent: rejected.");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"weekly\"}");
        pid_t w = spawn_worker("5s");
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w, 30000);

        assert_int_equal(
            agent_fixture_decide(
                &S, approval,
                "{\"decision\":\"reject\",\"comment\":\"not to the archive, ask legal\"}", NULL),
            200);
        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_db_equal("Not sent: rejected.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(worker_sink_count(S.sink, "/gated-no/"), 0);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "rejected by ada"));
        assert_non_null(strstr(seen, "not to the archive, ask legal"));
        assert_db_equal("1|1", S.db,
                        "SELECT count(*) FILTER (WHERE kind = 'approval.decided') || '|' ||"
                        " count(*) FILTER (WHERE kind = 'agent.tool_rejected')"
                        " FROM logs WHERE workflow_run_id = '%s'",
                        run);
        assert_no_key_anywhere(run);
}

/* Nobody decides: at the deadline on_timeout reject applies (the run was due then, holding
 * nothing before), the call never runs and the agent is told why. */
static void gated_tool_call_times_out_rejected(void **state)
{
        (void)state;
        _cleanup_free_ char *wf = gated_workflow("gated-late", "2s");
        script_gated("gated-late", NULL, "Not sent: nobody answered.");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"yearly\"}");
        pid_t w = spawn_worker("5s");
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w, 30000);

        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_db_equal("rejected|timeout", S.db,
                        "SELECT status || '|' || decided_by FROM approvals WHERE id = '%s'",
                        approval);
        assert_int_equal(worker_sink_count(S.sink, "/gated-late/"), 0);
        _cleanup_free_ char *seen = agent_fixture_last_llm_body(&S);
        assert_non_null(strstr(seen, "on_timeout reject"));
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'approval.timed_out'",
                        run);
}

/* ---- shell and run_code ------------------------------------------------------------ */

static pid_t spawn_tools_worker(void)
{
        const char *extra[] = {"--data-dir", S.dir, NULL};

        return agent_fixture_spawn_worker(&S, "agent-w", "2s", extra);
}

/* One scripted LLM answer calling tool with args (taken); delay_ms > 0 delays it. */
static json_t *call_step(const char *text, const char *id, const char *tool, json_t *args,
                         int delay_ms)
{
        _cleanup_free_ char *a = json_dumps(args, JSON_COMPACT);
        json_t *step =
            json_pack("{s:s, s:[{s:s, s:s, s:s}], s:{s:i, s:i}}", "text", text, "tool_calls", "id",
                      id, "name", tool, "arguments", a, "usage", "input", 100, "output", 10);

        json_decref(args);
        assert_non_null(step);
        if (delay_ms > 0)
                json_object_set_new(step, "delay_ms", json_integer(delay_ms));
        return step;
}

/* The whole text of the body of the server's i-th request. */
static char *llm_body_text(int i)
{
        _cleanup_json_ json_t *req = llm_server_request(S.llm, i);
        return json_dumps(json_object_get(req, "body"), JSON_COMPACT);
}

/* Every table's dump (pg_dump): the value must not be in it. */
static void assert_not_in_pg_dump(const char *value)
{
        _cleanup_free_ char *bindir = NULL, *cmd = NULL;
        struct buf dump;
        char chunk[65536];
        size_t n;

        assert_int_equal(embedded_pg_bindir(&bindir), 0);
        cmd = str_printf("'%s/pg_dump' --no-owner '%s'", bindir, S.conninfo);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        buf_init(&dump, (size_t)1 << 30);
        while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
                assert_int_equal(buf_append(&dump, chunk, n), 0);
        assert_int_equal(pclose(p), 0);
        assert_non_null(dump.data);
        assert_non_null(strstr(dump.data, "CREATE TABLE")); /* a dump was read */
        if (strstr(dump.data, value))
                fail_msg("%s appears in pg_dump", value);
        buf_free(&dump);
}

/*
 * An agent calls run_code (python3): the code writes report.txt, which it keeps, appends a
 * line to runs.log in the workspace (the count of its runs) and prints the secret CANARY it
 * gets in its environment; then shell counts the runs; then http_request sends CANARY in an
 * Authorization header to a server that echoes it back; then the agent answers. With crash,
 * the worker is SIGKILLed once the run_code result is journaled and while the next LLM call
 * is in flight. Returns the run_code result as the model saw it, without its duration.
 */
static json_t *run_code_keeps_a_file(const char *tag, bool crash)
{
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"%s\",\"nodes\":[{\"id\":\"compute\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Compute and report.\","
            "\"tools\":[\"run_code\",\"shell\",\"http_request\"],\"secrets\":[\"CANARY\"],"
            "\"allowed_hosts\":[\"127.0.0.1\"]}}]}",
            tag, llm_server_url(S.llm));
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, tag, 1, def);
        _cleanup_free_ char *url =
            str_printf("%s/%s/report?echo_auth=1", worker_sink_url(S.sink), tag);
        _cleanup_free_ char *prefix = str_printf("/%s/report", tag);
        const char *code = "import os\n"
                           "open('report.txt', 'w').write('hello artifact\\n')\n"
                           "open('runs.log', 'a').write('run\\n')\n"
                           "print('token is', os.environ['TOKEN'])\n";
        json_t *script = json_array();

        json_array_append_new(
            script,
            call_step("I will compute.", "c1", "run_code",
                      json_pack("{s:s, s:s, s:[s], s:{s:s}}", "language", "python", "code", code,
                                "keep", "report.txt", "env", "TOKEN", "${ secrets.CANARY }"),
                      0));
        json_t *count = json_pack("{s:s}", "command", "echo runs=$(wc -l < runs.log)");
        json_array_append_new(script, call_step("Let me count.", "c2", "shell",
                                                json_deep_copy(count), crash ? 8000 : 0));
        if (crash) /* sent again by the worker that resumes */
                json_array_append_new(
                    script, call_step("Let me count.", "c2", "shell", json_deep_copy(count), 0));
        json_decref(count);
        json_array_append_new(
            script, call_step("Now I report.", "c3", "http_request",
                              json_pack("{s:s, s:s, s:{s:s}, s:s}", "method", "POST", "url", url,
                                        "headers", "Authorization", "Bearer ${ secrets.CANARY }",
                                        "body", "the report"),
                              0));
        json_array_append_new(script,
                              json_pack("{s:s, s:{s:i, s:i}}", "text", "Done: report.txt written.",
                                        "usage", "input", 100, "output", 10));
        _cleanup_free_ char *script_text = json_dumps(script, JSON_COMPACT);
        json_decref(script);
        llm_server_script(S.llm, script_text);

        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_tools_worker();
        if (crash) {
                wait_llm_requests(before + 2, 60000); /* the second call is in flight */
                /* run_code's result was journaled before that call was sent */
                assert_db_equal("1", S.db,
                                "SELECT count(*) FROM agent_journal j JOIN agent_runs a ON a.id ="
                                " j.agent_run_id WHERE a.workflow_run_id = '%s' AND j.kind = "
                                "'tool' AND j.request->>'name' = 'run_code'",
                                run);
                kill(w, SIGKILL);
                test_stop_process(w, SIGKILL, 5000);
                w = spawn_tools_worker();
        }
        wait_run(w, run, "completed|failed", 90000, "the run did not end");
        assert_exit_code(test_stop_process(w, SIGTERM, 15000), 0); /* ASan: clean */
        agent_fixture_assert_completed(&S, run);
        assert_db_equal("Done: report.txt written.", S.db,
                        "SELECT output->>'compute' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(llm_server_request_count(S.llm) - before, crash ? 5 : 4);

        /* the code ran once: shell, after the resume, counts one run in the workspace */
        _cleanup_free_ char *after_shell = llm_body_text(before + (crash ? 3 : 2));
        /* "runs=1\n" in stdout, in the content, in the body: escaped twice */
        assert_non_null(strstr(after_shell, "runs=1\\\\n"));
        /* the model saw the secret's name, never its value; and the kept file */
        _cleanup_free_ char *after_code = llm_body_text(before + 1);
        assert_non_null(strstr(after_code, "token is [secret:CANARY]"));
        assert_null(strstr(after_code, secret.canary));

        /* one artifact row, its file under the data dir with the content */
        assert_db_equal("report.txt|15|text/plain|1", S.db,
                        "SELECT name || '|' || size_bytes || '|' || content_type || '|' ||"
                        " (sha256 = encode(sha256(convert_to('hello artifact' || chr(10),"
                        " 'UTF8')), 'hex'))::int FROM artifacts WHERE workflow_run_id = '%s'",
                        run);
        _cleanup_free_ char *uri = test_db_value(
            S.db, "SELECT storage_uri FROM artifacts WHERE workflow_run_id = '%s'", run);
        assert_true(str_has_prefix(uri, "file://"));
        assert_true(str_has_prefix(uri + 7, S.dir));
        _cleanup_free_ char *content = NULL;
        size_t len = 0;
        assert_int_equal(file_read_all(uri + 7, 1 << 20, &content, &len), 0);
        assert_string_equal(content, "hello artifact\n");

        /* the effects, their classes and the journal's unexpanded references */
        assert_db_equal("1|1|1", S.db,
                        "SELECT count(*) FILTER (WHERE data->>'name' = 'run_code' AND"
                        " data->>'effect' = 'irreversible') || '|' || count(*) FILTER (WHERE"
                        " data->>'name' = 'shell' AND data->>'effect' = 'irreversible') || '|'"
                        " || count(*) FILTER (WHERE data->>'name' = 'http_request')"
                        " FROM logs WHERE workflow_run_id = '%s' AND kind = 'agent.tool_call'",
                        run);
        assert_db_equal("3|2", S.db,
                        "SELECT a.tool_calls || '|' || count(*) FILTER (WHERE j.request::text"
                        " LIKE '%%${ secrets.CANARY }%%') FROM agent_runs a JOIN agent_journal j"
                        " ON j.agent_run_id = a.id WHERE a.workflow_run_id = '%s'"
                        " GROUP BY a.tool_calls",
                        run);
        /* the request that left carried the value; its echo came back masked */
        struct worker_sink_request rec;
        assert_int_equal(worker_sink_count(S.sink, prefix), 1);
        assert_int_equal(worker_sink_get(S.sink, prefix, 0, &rec), 0);
        _cleanup_free_ char *bearer = str_printf("Bearer %s", secret.canary);
        assert_string_equal(rec.authorization, bearer);
        _cleanup_free_ char *after_http = llm_body_text(before + (crash ? 4 : 3));
        assert_non_null(strstr(after_http, "Bearer [secret:CANARY]"));

        /* the workspace went with the agent run */
        _cleanup_free_ char *agent_run =
            test_db_value(S.db, "SELECT id FROM agent_runs WHERE workflow_run_id = '%s'", run);
        _cleanup_free_ char *ws = str_printf("%s/workspaces/%s", S.dir, agent_run);
        struct stat st;
        assert_int_equal(stat(ws, &st), -1);

        assert_nowhere(run, secret.canary);
        assert_nowhere(run, secret.key);
        assert_not_in_pg_dump(secret.canary);

        /* what the model saw of run_code, for the comparison with another run */
        _cleanup_free_ char *seen_text = test_db_value(
            S.db,
            "SELECT j.response->>'content' FROM agent_journal j JOIN agent_runs a ON a.id ="
            " j.agent_run_id WHERE a.workflow_run_id = '%s' AND j.request->>'name' = "
            "'run_code'",
            run);
        json_t *seen = json_loads(seen_text, 0, NULL);
        assert_non_null(seen);
        json_object_del(seen, "duration_ms");
        return seen;
}

/* A secret the agent was not given (here its own API key's) is refused: the request never
 * leaves, the model is told why, and the value is nowhere. */
static void a_secret_not_listed_is_refused(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"unlisted\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\","
            "\"agent\":{\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Fetch.\",\"tools\":[\"http_request\"],"
            "\"allowed_hosts\":[\"127.0.0.1\"],\"secrets\":[\"CANARY\"]}}]}",
            llm_server_url(S.llm));
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, "unlisted", 1, def);
        _cleanup_free_ char *url = str_printf("%s/unlisted/x", worker_sink_url(S.sink));
        json_t *script = json_array();
        json_array_append_new(
            script, call_step("I will fetch.", "u1", "http_request",
                              json_pack("{s:s, s:s, s:{s:s}}", "method", "GET", "url", url,
                                        "headers", "Authorization", "Bearer ${ secrets.llmkey }"),
                              0));
        json_array_append_new(script, json_pack("{s:s}", "text", "Refused."));
        _cleanup_free_ char *script_text = json_dumps(script, JSON_COMPACT);
        json_decref(script);
        llm_server_script(S.llm, script_text);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_tools_worker();

        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_int_equal(llm_server_request_count(S.llm) - before, 2);
        assert_int_equal(worker_sink_count(S.sink, "/unlisted/"), 0);
        assert_db_equal("not_allowed", S.db,
                        "SELECT data->>'class' FROM logs WHERE workflow_run_id = '%s' AND kind ="
                        " 'agent.tool_refused'",
                        run);
        _cleanup_free_ char *seen = llm_body_text(before + 1);
        assert_non_null(strstr(seen, "the secret llmkey is not one of this agent's secrets"));
        assert_no_key_anywhere(run);
}

/* A gated run_code call (approve_tools): once approved it runs, and the file it keeps is an
 * artifact of the run, written with the call's answer. */
static void gated_run_code_keeps_its_file(void **state)
{
        (void)state;
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"gated-code\",\"nodes\":[{\"id\":\"compute\",\"type\":\"agent\","
            "\"agent\":{\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Compute.\",\"tools\":[\"run_code\"],"
            "\"approve_tools\":{\"effects\":[\"irreversible\"],\"reviewers\":[\"ada\"],"
            "\"channels\":[{\"kind\":\"webhook\",\"url\":\"%s/hook\"}],\"timeout\":\"1h\"}}}]}",
            llm_server_url(S.llm), worker_sink_url(S.sink));
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, "gated-code", 1, def);
        json_t *script = json_array();
        json_array_append_new(
            script, call_step("I will compute.", "g1", "run_code",
                              json_pack("{s:s, s:s, s:[s]}", "language", "python", "code",
                                        "open('gated.txt', 'w').write('approved output')\n", "keep",
                                        "gated.txt"),
                              0));
        json_array_append_new(script, json_pack("{s:s}", "text", "Computed."));
        _cleanup_free_ char *script_text = json_dumps(script, JSON_COMPACT);
        json_decref(script);
        llm_server_script(S.llm, script_text);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);
        pid_t w = spawn_tools_worker();
        _cleanup_free_ char *approval = agent_fixture_waiting_tool_approval(&S, run, w, 30000);

        assert_db_equal("0", S.db, "SELECT count(*) FROM artifacts WHERE workflow_run_id = '%s'",
                        run);
        assert_int_equal(agent_fixture_decide(&S, approval, "{\"decision\":\"approve\"}", NULL),
                         200);
        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_db_equal("gated.txt|15", S.db,
                        "SELECT name || '|' || size_bytes FROM artifacts WHERE workflow_run_id ="
                        " '%s'",
                        run);
        _cleanup_free_ char *uri = test_db_value(
            S.db, "SELECT storage_uri FROM artifacts WHERE workflow_run_id = '%s'", run);
        _cleanup_free_ char *content = NULL;
        size_t len = 0;
        assert_true(str_has_prefix(uri, "file://"));
        assert_int_equal(file_read_all(uri + 7, 1 << 20, &content, &len), 0);
        assert_string_equal(content, "approved output");
        assert_no_key_anywhere(run);
}

/* run_code resumed after a SIGKILL gives what an uninterrupted run gives, the code run
 * once. */
static void run_code_is_journaled_and_not_run_again(void **state)
{
        (void)state;
        _cleanup_json_ json_t *straight = run_code_keeps_a_file("code-straight", false);
        _cleanup_json_ json_t *resumed = run_code_keeps_a_file("code-crash", true);
        _cleanup_free_ char *a = json_dumps(straight, JSON_COMPACT | JSON_SORT_KEYS);
        _cleanup_free_ char *b = json_dumps(resumed, JSON_COMPACT | JSON_SORT_KEYS);

        assert_string_equal(a, b);
        assert_non_null(strstr(a, "\"stdout\":\"token is [secret:CANARY]\\n\""));
        assert_non_null(strstr(a, "\"name\":\"report.txt\",\"sha256\""));
}

/*
 * An LLM call through an agent costs one commit: a 30-turn conversation (each turn the
 * model's text — streamed, an agent.text event —, the executor's reasoning event and a
 * refused tool call's event) writes its events and journal rows in at most one transaction
 * per LLM call and one for the final answer. The held events and stubs go with the next
 * call's journal row, in its statement (agently_agent_write, 0027); before, each was a
 * statement of its own (4 writing transactions per call). All of them are still recorded.
 */
static void an_llm_call_costs_one_commit(void **state)
{
        enum { TURNS = 30 };
        (void)state;
        int before = llm_server_request_count(S.llm);
        _cleanup_free_ char *def = str_printf(
            "{\"name\":\"commits\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"
            "\"provider\":\"openai\",\"base_url\":\"%s\",\"model\":\"gpt-4o-mini\","
            "\"api_key_secret\":\"LLMKEY\",\"prompt\":\"Look things up.\",\"tools\":"
            "[\"http_request\"],\"max_turns\":%d}}]}",
            llm_server_url(S.llm), TURNS + 5);
        _cleanup_free_ char *wf = worker_test_workflow(S.db, S.user, "commits", 1, def);
        struct buf script;
        buf_init(&script, 1 << 20);
        assert_int_equal(buf_append_str(&script, "["), 0);
        for (int i = 1; i <= TURNS; i++)
                assert_int_equal(
                    buf_printf(&script,
                               "{\"text\":\"Step %d: looking it up.\",\"tool_calls\":[{\"id\":"
                               "\"c%d\",\"name\":\"http_request\",\"arguments\":\"{\\\"method\\\":"
                               "\\\"GET\\\",\\\"url\\\":\\\"http://elsewhere.test/%d\\\"}\"}],"
                               "\"usage\":{\"input\":10,\"output\":10}},",
                               i, i, i),
                    0);
        assert_int_equal(buf_append_str(&script, "{\"text\":\"Done.\"}]"), 0);
        llm_server_script(S.llm, script.data);
        buf_free(&script);
        pid_t w = spawn_worker("30s");
        usleep(500 * 1000); /* the worker's start-up writes are not the run's */
        long long xid0 = test_db_int(S.db, "SELECT txid_current()");
        _cleanup_free_ char *run = worker_test_run(S.db, wf, NULL);

        wait_run(w, run, "completed|failed", 120000, "the conversation did not end");
        long long xid1 = test_db_int(S.db, "SELECT txid_current()");
        test_stop_process(w, SIGTERM, 15000);
        agent_fixture_assert_completed(&S, run);
        int calls = llm_server_request_count(S.llm) - before;
        assert_int_equal(calls, TURNS + 1);
        /* the transactions that wrote the agent's events and journal rows: one per call, and
         * the final answer's */
        long long agent_writes = test_db_int(
            S.db,
            "SELECT count(DISTINCT x) FROM (SELECT l.xmin::text AS x FROM logs l WHERE"
            " l.workflow_run_id = '%s' AND l.kind LIKE 'agent.%%' UNION ALL SELECT j.xmin::text"
            " FROM agent_journal j JOIN agent_runs a ON a.id = j.agent_run_id WHERE"
            " a.workflow_run_id = '%s') q",
            run, run);
        /* every writing transaction in between, shown (each took an xid; the run's insert and
         * the second txid_current() take one each): the run's own (claim, turns, its agent
         * run) and the lease renewals, as many as the run's wall clock allows, beside the
         * calls' */
        long long commits = xid1 - xid0 - 2;
        printf("commits: %lld writing transactions for %d llm calls (%.2f per call), %lld of "
               "them the agent's events and journal\n",
               commits, calls, (double)commits / calls, agent_writes);
        assert_int_le(agent_writes, calls + 1);
        assert_int_equal(events_of(run, "agent.llm"), TURNS + 1);
        assert_int_equal(events_of(run, "agent.reasoning"), TURNS);
        assert_int_equal(events_of(run, "agent.tool_refused"), TURNS);
        assert_int_equal(events_of(run, "agent.finished"), 1);
        assert_int_le(TURNS + 1, events_of(run, "agent.text"));
        /* each turn's reasoning event and refused call are recorded once; written with the
         * next call's row, they are its stubs, not rows of their own (0037) — unless the
         * streamed text's 100 ms hold wrote them first (a slow turn) */
        _cleanup_free_ char *records = journal_records(run);
        _cleanup_free_ char *want = str_printf("%d|%d|%d|1", TURNS + 1, TURNS, TURNS);
        long long rows = journal_rows(run);
        printf("journal: %lld rows for %d llm calls\n", rows, calls);
        assert_string_equal(records, want);
        /* most turns fold (before 0037: 3 rows a turn, 92 in all) */
        assert_int_le(rows, 2 * TURNS + 1);
        assert_no_key_anywhere(run);
}

static void fence_done(void *owner, void *userdata, json_t *output, json_t *error)
{
        (void)userdata;
        *(int *)owner = 1;
        json_decref(output);
        json_decref(error);
}

/*
 * agent_runs rows are created fenced on the run's lease, like every other write of a
 * worker: a session started at an epoch the run's record has moved past creates no agent
 * run, and a sub-agent spawned after the lease moved on creates none either. Driven here
 * without a worker, on a host of our own, so the epoch moves exactly between the root's
 * first journaled call and its spawn request.
 */
static void agent_runs_creation_is_fenced_on_the_lease(void **state)
{
        (void)state;
        _cleanup_free_ char *wf =
            agent_workflow("fence", "openai", "gpt-4o-mini", "[\"spawn_agent\"]", NULL);
        _cleanup_free_ char *run = worker_test_run(S.db, wf, "{\"topic\":\"fences\"}");
        _cleanup_free_ char *sql = str_printf(
            "UPDATE workflow_runs SET status = 'running', lease_epoch = 7, claimed_by = 'test',"
            " lease_expires_at = now() + interval '1 hour' WHERE id = '%s'",
            run);
        PQclear(test_db_must(S.db, sql));
        _cleanup_json_ json_t *agent =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:[s]}", "provider", "openai", "base_url",
                      llm_server_url(S.llm), "model", "gpt-4o-mini", "api_key_secret", "LLMKEY",
                      "prompt", "FENCE go", "tools", "spawn_agent");
        struct runtime_http *http = NULL;
        struct agent_host *h = NULL;
        struct agent_session *sess = NULL;
        int ended = 0;
        char *why = NULL;

        assert_int_equal(runtime_http_new("agently-test", &http), 0);
        assert_int_equal(agent_host_new(&(struct agent_host_config){.db = S.db,
                                                                    .http = http,
                                                                    .executor_path = AGENTLY_BINARY,
                                                                    .secrets_dir = S.dir,
                                                                    .done = fence_done,
                                                                    .owner = &ended},
                                        &h),
                         0);
        /* a worker whose lease ended (the record is at epoch 7) creates no agent run */
        struct agent_step step = {.run_id = run,
                                  .user_id = S.user,
                                  .epoch = 6,
                                  .node_id = "think",
                                  .attempt = 1,
                                  .agent = agent};
        assert_int_equal(agent_session_start(h, &step, NULL, &sess, &why), -ESTALE);
        assert_non_null(why);
        assert_string_equal(why, "the run's lease was lost");
        free(why);
        why = NULL;
        assert_db_equal("0", S.db, "SELECT count(*) FROM agent_runs WHERE workflow_run_id = '%s'",
                        run);

        /* at the record's epoch it starts; the epoch moves on once its first call is
         * journaled, before its spawn request is read: no sub-agent's run is created */
        llm_server_script(S.llm, "[{\"match\":\"FENCE go\",\"tool_calls\":[{\"id\":\"f1\","
                                 "\"name\":\"spawn_agent\",\"arguments\":\"{\\\"prompt\\\":"
                                 "\\\"FENCE-CHILD go\\\"}\"}],\"usage\":{\"input\":10,"
                                 "\"output\":5}},{\"match\":\"FENCE-CHILD go\",\"text\":\"no\"}]");
        step.epoch = 7;
        assert_int_equal(agent_session_start(h, &step, NULL, &sess, &why), 0);
        bool moved = false;
        int64_t end = test_now_ms() + 30000;
        while (!ended && test_now_ms() < end) {
                void *ud;
                json_t *out, *err;
                assert_in_range(runtime_http_poll(http, 50, agent_host_fd(h)), 0, 1);
                if (!moved && test_db_int(S.db,
                                          "SELECT count(*) FROM agent_journal j JOIN agent_runs a"
                                          " ON a.id = j.agent_run_id WHERE a.workflow_run_id ="
                                          " '%s' AND j.kind = 'llm'",
                                          run) == 1) {
                        _cleanup_free_ char *bump = str_printf(
                            "UPDATE workflow_runs SET lease_epoch = 8 WHERE id = '%s'", run);
                        PQclear(test_db_must(S.db, bump));
                        moved = true;
                }
                agent_host_poll(h);
                while (runtime_http_next_done(http, &ud, &out, &err))
                        if (!agent_host_http_done(h, ud, out, err)) {
                                json_decref(out);
                                json_decref(err);
                        }
        }
        assert_int_equal(ended, 1);
        assert_true(moved);
        agent_host_free(h);
        runtime_http_free(http);
        assert_db_equal("1|0", S.db,
                        "SELECT count(*) FILTER (WHERE parent_agent_run_id IS NULL) || '|' ||"
                        " count(*) FILTER (WHERE parent_agent_run_id IS NOT NULL)"
                        " FROM agent_runs WHERE workflow_run_id = '%s'",
                        run);
        /* no worker may pick the run up later */
        _cleanup_free_ char *cancel =
            str_printf("UPDATE workflow_runs SET status = 'canceled', claimed_by = NULL,"
                       " lease_expires_at = NULL, finished_at = now() WHERE id = '%s'",
                       run);
        PQclear(test_db_must(S.db, cancel));
        assert_no_key_anywhere(run);
}

int main(void)
{
        static const struct CMUnitTest special[] = {
            cmocka_unit_test(a_journal_mismatch_is_a_nondeterminism_error),
            cmocka_unit_test(journal_grows_with_the_conversation),
            cmocka_unit_test(gated_tool_call_approved_runs_once),
            cmocka_unit_test(gated_tool_call_not_repeated_after_a_kill),
            cmocka_unit_test(gated_tool_call_rejected_reaches_the_agent),
            cmocka_unit_test(gated_tool_call_times_out_rejected),
            cmocka_unit_test(run_code_is_journaled_and_not_run_again),
            cmocka_unit_test(gated_run_code_keeps_its_file),
            cmocka_unit_test(a_node_runs_a_stored_agent_by_name),
            cmocka_unit_test(a_node_overrides_the_stored_agent),
            cmocka_unit_test(a_new_version_does_not_change_a_waiting_run),
            cmocka_unit_test(a_missing_agent_is_a_validation_error),
            cmocka_unit_test(a_secret_not_listed_is_refused),
            cmocka_unit_test(agent_runs_creation_is_fenced_on_the_lease),
            cmocka_unit_test(an_llm_call_costs_one_commit),
        };
        /* the table's cases first, each a test named by its row, then the special ones */
        struct CMUnitTest tests[ELEMENTSOF(agent_cases) + ELEMENTSOF(special)];
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(agent_cases); i++)
                tests[n++] = (struct CMUnitTest){.name = agent_cases[i].name,
                                                 .test_func = run_agent_case,
                                                 .initial_state = (void *)&agent_cases[i]};
        for (size_t i = 0; i < ELEMENTSOF(special); i++)
                tests[n++] = special[i];
        if (getenv("AGENT_TEST_FILTER")) /* one test while debugging */
                cmocka_set_test_filter(getenv("AGENT_TEST_FILTER"));
        return cmocka_run_group_tests(tests, setup, teardown);
}
