/*
 * An LLM call's answer goes to the executor while the call's journal write commits
 * (externally synchronous: src/agent/README.md, "Answered while the commit is in flight"),
 * and nothing the executor says is acted on before that commit is confirmed.
 *
 * The test holds the write: it locks the agent run's row while the first LLM call is in
 * flight, so the call's one statement waits for the lock. Meanwhile the executor has read
 * the answer (its /proc/PID/io counts the bytes; before, the answer waited for the commit),
 * and the tool call the answer asks for has not reached the sink. Then the worker is
 * SIGKILLed, and the write either never commits (its backend terminated) or commits after
 * the worker's death (the lock released). Either way the next worker finishes the run as if
 * nothing had been answered early: the lost call is made again, or the committed one is
 * answered from the journal, and the tool's effect happens exactly once. The same hold shows
 * an LLM request read meanwhile not whole at its server until the commit, and a write lost
 * in flight (its backend terminated) taking that request along and leaving the run to
 * resume from its journal.
 */
#include "testlib.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_fixture.h"
#include "cleanup.h"
#include "db.h"
#include "fileio.h"
#include "llm_server.h"
#include "strutil.h"
#include "worker_sink.h"

static struct agent_fixture S;

static int setup(void **state)
{
        agent_fixture_setup(&S, "agentcommit", &(struct agent_fixture_options){.servers = true});
        *state = &S;
        return 0;
}

/* The parent of pid, or -1. */
static pid_t parent_of(pid_t pid)
{
        char path[64];
        _cleanup_free_ char *stat = NULL;
        size_t len;
        int ppid;
        char state;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        if (file_read_all(path, 4096, &stat, &len) != 0 || !stat)
                return -1;
        char *close = strrchr(stat, ')');
        if (!close || sscanf(close + 2, "%c %d", &state, &ppid) != 2 || state == 'Z')
                return -1;
        return ppid;
}

/* The executor ("/agently executor") under worker w, or -1. */
static pid_t executor_of(pid_t w)
{
        DIR *d = opendir("/proc");
        struct dirent *e;
        pid_t found = -1;

        assert_non_null(d);
        while (found < 0 && (e = readdir(d))) {
                char path[300];
                _cleanup_free_ char *cmd = NULL;
                size_t len;
                pid_t pid = (pid_t)strtol(e->d_name, NULL, 10);
                if (pid <= 0)
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
                if (file_read_all(path, 4096, &cmd, &len) != 0 || !cmd ||
                    len != sizeof("/agently\0executor") ||
                    memcmp(cmd, "/agently\0executor", len) != 0)
                        continue;
                for (pid_t p = parent_of(pid); p > 1; p = parent_of(p))
                        if (p == w) {
                                found = pid;
                                break;
                        }
        }
        closedir(d);
        return found;
}

/* Bytes the process has read (rchar of /proc/PID/io). */
static long long bytes_read(pid_t pid)
{
        char path[64];
        _cleanup_free_ char *io = NULL;
        size_t len;
        long long n = -1;

        snprintf(path, sizeof(path), "/proc/%d/io", (int)pid);
        if (file_read_all(path, 4096, &io, &len) != 0 || !io || sscanf(io, "rchar: %lld", &n) != 1)
                fail_msg("could not read %s", path);
        return n;
}

/* The backend of the worker's journal write while it waits for a lock, or 0. */
static long long waiting_write(void)
{
        return test_db_int(S.db, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity"
                                 " WHERE wait_event_type = 'Lock'"
                                 "   AND query LIKE 'SELECT agently_agent_write(%%'");
}

/*
 * Holds the journal write of the run's first LLM call (worker w, its call at the server):
 * locks the agent run's row, waits for the write to wait for the lock and for the executor
 * to have read the answer meanwhile. Returns the write's backend; *lock holds the lock.
 */
static long long hold_the_write(const char *run, pid_t w, PGconn **lock)
{
        pid_t exec = executor_of(w);
        assert_int_gt(exec, 0);
        long long read_before = bytes_read(exec);
        *lock = PQconnectdb(S.conninfo);
        assert_int_equal(PQstatus(*lock), CONNECTION_OK);
        PQclear(PQexec(*lock, "BEGIN"));
        _cleanup_free_ char *sql =
            str_printf("SELECT 1 FROM agent_runs WHERE workflow_run_id = '%s' FOR UPDATE", run);
        _cleanup_pgresult_ PGresult *locked = PQexec(*lock, sql);
        assert_int_equal(PQntuples(locked), 1);
        long long backend = 0;
        int64_t end = test_now_ms() + 30000;
        while (!(backend = waiting_write()) && test_now_ms() < end)
                usleep(20000);
        if (!backend) {
                test_stop_process(w, SIGTERM, 15000);
                agent_fixture_dump_log(&S);
                fail_msg("the llm call's write did not wait for the lock; see %s", S.last_log);
        }
        /* the executor has the answer (before: it waited for the commit) */
        end = test_now_ms() + 10000;
        while (bytes_read(exec) == read_before && test_now_ms() < end)
                usleep(20000);
        assert_int_gt(bytes_read(exec), read_before);
        usleep(300000); /* time for what it asks next to arrive, were it not held */
        return backend;
}

/* The held write ends after worker w's SIGKILL: committed (the lock released) or never (its
 * backend terminated first). */
static void kill_and_end_the_write(pid_t w, PGconn *lock, long long backend, bool commits)
{
        test_stop_process(w, SIGKILL, 5000);
        if (!commits)
                assert_int_equal(
                    test_db_int(S.db, "SELECT pg_terminate_backend(%lld)::int", backend), 1);
        PQclear(PQexec(lock, "ROLLBACK"));
        PQfinish(lock);
        int64_t end = test_now_ms() + 30000;
        while (test_db_int(S.db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %lld",
                           backend) > 0 &&
               test_now_ms() < end)
                usleep(20000);
}

static int llm_rows(const char *run)
{
        return test_db_int(S.db,
                           "SELECT count(*) FROM agent_journal j JOIN agent_runs a"
                           " ON a.id = j.agent_run_id"
                           " WHERE a.workflow_run_id = '%s' AND j.kind = 'llm'",
                           run);
}

/* A call's scripted answer: a tool call to a host the agent may not call (refused at once,
 * nothing leaves), extra appended to its members. */
#define REFUSED_STEP(extra)                                                                        \
        "{\"text\":\"I will fetch it.\",\"tool_calls\":[{\"id\":\"call_x\",\"name\":"              \
        "\"http_request\",\"arguments\":\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":"                \
        "\\\"http://not-allowed.invalid/a\\\"}\"}],\"usage\":{\"input\":1000,"                     \
        "\"output\":100}" extra "}"

/* Starts a run of an agent that may call 127.0.0.1 only, the server answering script, and a
 * worker (*w); returns the run once its first call is at the server (before + 1 requests). */
static char *first_call_at_the_server(const char *tag, const char *script, int before, pid_t *w)
{
        _cleanup_free_ char *members =
            str_printf("\"system\":\"You call tools when asked.\",\"prompt\":\"Fetch a from "
                       "%s.\",\"tools\":[\"http_request\"],\"allowed_hosts\":[\"127.0.0.1\"]",
                       tag);
        _cleanup_free_ char *wf = agent_fixture_think_workflow(&S, tag, members);

        llm_server_script(S.llm, script);
        char *run = worker_test_run(S.db, wf, "{}");
        *w = agent_fixture_spawn_worker(&S, "commit-w", "2s", NULL);
        int64_t end = test_now_ms() + 30000;
        while (llm_server_request_count(S.llm) < before + 1 && test_now_ms() < end)
                usleep(20000);
        assert_int_equal(llm_server_request_count(S.llm), before + 1);
        return run;
}

/* commits: whether the held write commits after the worker's death (the lock released) or
 * never (its backend terminated first). */
static void answered_before_the_commit(const char *tag, bool commits)
{
        int before = llm_server_request_count(S.llm);
        char prefix[64];
        _cleanup_free_ char *first = agent_fixture_tool_step(&S, tag, "a", ",\"delay_ms\":1500"),
                            *again = agent_fixture_tool_step(&S, tag, "a", NULL);
        /* a lost call is made again: its step twice */
        _cleanup_free_ char *script = str_printf(
            "[%s,%s%s{\"text\":\"Fetched a.\",\"usage\":{\"input\":1500,\"output\":20}}]", first,
            commits ? "" : again, commits ? "" : ",");
        pid_t w1;

        snprintf(prefix, sizeof(prefix), "/%s/", tag);
        _cleanup_free_ char *run = first_call_at_the_server(tag, script, before, &w1);

        /* the first call is at the server (answering in 1.5 s): hold its write */
        PGconn *lock = NULL;
        long long backend = hold_the_write(run, w1, &lock);
        /* what the executor asks for next, an effect, waits for the commit */
        assert_int_equal(worker_sink_count(S.sink, prefix), 0);
        kill_and_end_the_write(w1, lock, backend, commits);
        assert_int_equal(llm_rows(run), commits ? 1 : 0);

        pid_t w2 = agent_fixture_spawn_worker(&S, "commit-w", "2s", NULL);
        agent_fixture_wait_completed(&S, run, w2, 60000);
        assert_db_equal("Fetched a.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        /* the first call, then (made again when its write was lost) the last */
        assert_int_equal(llm_server_request_count(S.llm) - before, commits ? 2 : 3);
        assert_int_equal(worker_sink_count(S.sink, prefix), 1);
        agent_fixture_assert_calls(&S, run, 2, 1);
}

/*
 * The executor's next LLM request, read while the answer before it is being written, goes
 * out but for its body's last byte: the server has no whole request to act on until the
 * commit. Here the first answer asks for a call the agent may not make (refused at once,
 * nothing leaves), so the executor's next request is an llm request, started while the
 * write is held. The server receives no second request then; the worker is killed, the
 * write commits after its death, and the next worker answers the first call from the
 * journal and makes the second once: two requests at the server in all (three, had the
 * first worker's second request reached it).
 */
static void an_llm_request_waits_for_the_commit_before_it(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        pid_t w1;
        _cleanup_free_ char *run = first_call_at_the_server(
            "held-llm",
            "[" REFUSED_STEP(",\"delay_ms\":1500") ",{\"text\":\"That host is not allowed.\","
                                                   "\"usage\":{\"input\":1500,\"output\":20}}]",
            before, &w1);

        PGconn *lock = NULL;
        long long backend = hold_the_write(run, w1, &lock);
        /* the refusal was answered and the next request started: the refusal's event is
         * held for the next write, the request's end for this one's commit */
        assert_int_equal(llm_server_request_count(S.llm), before + 1);
        kill_and_end_the_write(w1, lock, backend, true);
        assert_int_equal(llm_rows(run), 1);

        pid_t w2 = agent_fixture_spawn_worker(&S, "commit-w", "2s", NULL);
        agent_fixture_wait_completed(&S, run, w2, 60000);
        assert_db_equal("That host is not allowed.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(llm_server_request_count(S.llm) - before, 2);
        /* the second request as the server has it: whole, the refusal in it */
        _cleanup_json_ json_t *second = llm_server_request(S.llm, before + 1);
        _cleanup_free_ char *body = json_dumps(json_object_get(second, "body"), JSON_COMPACT);
        assert_non_null(strstr(body, "not-allowed.invalid"));
        assert_non_null(strstr(body, "not_allowed"));
        agent_fixture_assert_calls(&S, run, 2, 0);
}

static void a_held_write_that_commits_after_a_kill_is_replayed(void **state)
{
        (void)state;
        answered_before_the_commit("held-commits", true);
}

static void a_held_write_that_never_commits_is_made_again(void **state)
{
        (void)state;
        answered_before_the_commit("held-lost", false);
}

/*
 * The write of the first call fails while the executor's next LLM request waits, held, for
 * its commit: the test terminates the write's backend. The session fails and its held
 * request is aborted, never whole at the server; the run is left to its lease (nothing was
 * committed) and resumed, and the first call, whose answer was never durable, is made
 * again: three requests at the server in all — four, had the held one been let go.
 */
static void a_write_lost_in_flight_takes_its_held_request_along(void **state)
{
        (void)state;
        int before = llm_server_request_count(S.llm);
        pid_t w;
        _cleanup_free_ char *run = first_call_at_the_server(
            "lost-llm",
            "[" REFUSED_STEP(",\"delay_ms\":1500") "," REFUSED_STEP(
                "") ",{\"text\":\"That host is not allowed.\",\"usage\":{\"input\":1500,"
                    "\"output\":20}}]",
            before, &w);

        PGconn *lock = NULL;
        long long backend = hold_the_write(run, w, &lock);
        assert_int_equal(llm_server_request_count(S.llm), before + 1);
        assert_int_equal(test_db_int(S.db, "SELECT pg_terminate_backend(%lld)::int", backend), 1);
        PQclear(PQexec(lock, "ROLLBACK"));
        PQfinish(lock);

        agent_fixture_wait_completed(&S, run, w, 60000);
        assert_db_equal("That host is not allowed.", S.db,
                        "SELECT output->>'think' FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(llm_server_request_count(S.llm) - before, 3);
        agent_fixture_assert_calls(&S, run, 2, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(a_held_write_that_commits_after_a_kill_is_replayed),
            cmocka_unit_test(a_held_write_that_never_commits_is_made_again),
            cmocka_unit_test(an_llm_request_waits_for_the_commit_before_it),
            cmocka_unit_test(a_write_lost_in_flight_takes_its_held_request_along),
        };
        return cmocka_run_group_tests(tests, setup, agent_fixture_group_teardown);
}
