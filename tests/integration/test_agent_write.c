/*
 * agently_agent_write() (0027, latest 0043), the statement of every journal write: what
 * it writes for the rows the worker sends, called as the worker calls it.
 *
 * events_and_journal_rows_keep_their_order: a write of mixed rows (events alone, new
 * journal rows with and without events, rows with neither, empty event lists) numbers its
 * events after the run's last event and its journal rows after the agent run's last row,
 * each in the order the rows give, and the next write goes on from there. It holds before
 * 0043 as after: 0043 numbers them by their place in a JSON path instead of a window.
 *
 * a_row_that_is_not_an_object_is_refused: a row that is not a JSON object is refused
 * (22023) and nothing is written; before 0043 such a row was skipped.
 *
 * the_write_is_prepared_once_per_session: the worker's statement, sent as src/agent sends it
 * (db_query_defer), is prepared on its connection's first write and only bound and run after
 * that; a session that lost it (DISCARD ALL) fails one write and prepares it again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "strutil.h"
#include "testlib.h"
#include "worker_sink.h"

static const char WF[] = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"}]}";

/* A test's database: the owner's connection and the worker's (agently_worker, as the
 * worker calls the write), and a run held by a worker's lease at epoch 1 with an agent run
 * (run, agent: their ids). */
struct held {
        char *conninfo, *run, *agent;
        PGconn *db, *worker;
};

static void held_open(struct held *h)
{
        h->conninfo = test_db_create("awrite");
        h->db = test_db_connect(h->conninfo);
        _cleanup_free_ char *worker_ci = test_db_conninfo_as(h->conninfo, "agently_worker");
        h->worker = test_db_connect(worker_ci);
        _cleanup_free_ char *user = worker_test_user(h->db, "ana");
        _cleanup_free_ char *wf = worker_test_workflow(h->db, user, "w", 1, WF);

        h->run = worker_test_run(h->db, wf, NULL);
        PQclear(test_db_must(h->db, "UPDATE workflow_runs SET status = 'running', claimed_by = "
                                    "'test', lease_expires_at = now() + interval '1 hour', "
                                    "lease_epoch = 1, started_at = now()"));
        h->agent = test_db_value(h->db,
                                 "INSERT INTO agent_runs (user_id, workflow_run_id, node_id, "
                                 "attempt) SELECT user_id, id, 'a', 1 FROM workflow_runs WHERE "
                                 "id = '%s' RETURNING id",
                                 h->run);
}

static void held_close(struct held *h)
{
        PQfinish(h->worker);
        PQfinish(h->db);
        free(h->agent);
        free(h->run);
        free(h->conninfo);
}

/* A request's hash, as the worker writes it. */
#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Events alone, a new journal row with an event, a row with nothing, an empty event list,
 * a row with no kind and no events, a new journal row without events, two events. */
static const char MIXED[] =
    "[{\"events\": [{\"kind\": \"e1\"}, {\"kind\": \"e2\"}]},"
    " {\"kind\": \"llm\", \"request\": {\"n\": 1}, \"sha256\": \"" SHA "\","
    " \"events\": [{\"kind\": \"e3\"}]},"
    " {}, {\"events\": []}, {\"usage_flush\": false},"
    " {\"kind\": \"tool\", \"request\": {\"n\": 2}, \"sha256\": \"" SHA "\"},"
    " {\"events\": [{\"kind\": \"e4\", \"level\": \"warn\"}, {\"kind\": \"e5\"}]}]";

/* One new journal row (request {"n": 3}) with one event. */
static const char NEXT[] = "[{\"kind\": \"llm\", \"request\": {\"n\": 3}, \"sha256\": \"" SHA "\","
                           " \"events\": [{\"kind\": \"e6\"}]}]";

static void events_and_journal_rows_keep_their_order(void **state)
{
        (void)state;
        struct held h;

        held_open(&h);
        PGconn *db = h.db, *worker = h.worker;
        const char *run = h.run, *agent = h.agent;
        /* the run's own events before the agent's */
        PQclear(test_db_must(db, "UPDATE workflow_runs SET event_seq = 2"));
        assert_db_equal("2", worker, "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '%s')", run,
                        agent, MIXED);
        assert_db_equal("3:e1:info 4:e2:info 5:e3:info 6:e4:warn 7:e5:info", db,
                        "SELECT string_agg(seq || ':' || kind || ':' || level, ' ' ORDER BY seq) "
                        "FROM logs WHERE workflow_run_id = '%s'",
                        run);
        assert_db_equal("7", db, "SELECT event_seq FROM workflow_runs WHERE id = '%s'", run);
        assert_db_equal("1:llm:1 2:tool:2", db,
                        "SELECT string_agg(seq || ':' || kind || ':' || (request ->> 'n'), ' ' "
                        "ORDER BY seq) FROM agent_journal WHERE agent_run_id = '%s'",
                        agent);
        /* the next write goes on from there */
        assert_db_equal("3", worker, "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '%s')", run,
                        agent, NEXT);
        assert_db_equal("8:e6 3:llm:3", db,
                        "SELECT (SELECT string_agg(seq || ':' || kind, ' ') FROM logs WHERE "
                        "workflow_run_id = '%s' AND seq > 7) || ' ' || (SELECT string_agg(seq || "
                        "':' || kind || ':' || (request ->> 'n'), ' ') FROM agent_journal WHERE "
                        "agent_run_id = '%s' AND seq > 2)",
                        run, agent);
        /* events alone: no journal row, 0 */
        assert_db_equal("0", worker,
                        "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '[{\"events\": "
                        "[{\"kind\": \"e7\"}]}]')",
                        run, agent);
        assert_db_equal("9|3", db,
                        "SELECT (SELECT max(seq) FROM logs WHERE workflow_run_id = '%s') || '|' "
                        "|| (SELECT max(seq) FROM agent_journal WHERE agent_run_id = '%s')",
                        run, agent);
        /* a lost lease: nothing written, NULL */
        assert_db_equal("none", worker,
                        "SELECT coalesce(agently_agent_write('%s', 2, '%s', 'a', 1, '%s')::text, "
                        "'none')",
                        run, agent, NEXT);
        assert_db_equal("9|3", db,
                        "SELECT (SELECT max(seq) FROM logs WHERE workflow_run_id = '%s') || '|' "
                        "|| (SELECT max(seq) FROM agent_journal WHERE agent_run_id = '%s')",
                        run, agent);
        held_close(&h);
}

static void a_row_that_is_not_an_object_is_refused(void **state)
{
        (void)state;
        struct held h;
        /* a number, JSON null, a string and arrays (with a kind inside) */
        static const char *const not_objects[] = {"1", "null", "\"kind\"", "[\"kind\"]",
                                                  "[{\"kind\": \"llm\"}]"};

        held_open(&h);
        PGconn *db = h.db, *worker = h.worker;
        const char *run = h.run, *agent = h.agent;
        for (size_t i = 0; i < sizeof(not_objects) / sizeof(not_objects[0]); i++) {
                _cleanup_free_ char *sql = str_printf(
                    "SELECT agently_agent_write('%s', 1, '%s', 'a', 1, '[{\"events\": [{\"kind\": "
                    "\"e1\"}]}, %s]')",
                    run, agent, not_objects[i]);
                PGresult *res = PQexec(worker, sql);
                const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);

                /* the row in the message when it was not refused */
                assert_string_equal(sqlstate ? sqlstate : not_objects[i], "22023");
                PQclear(res);
        }
        assert_db_equal("0|0|0", db,
                        "SELECT (SELECT count(*) FROM logs) || '|' || (SELECT count(*) FROM "
                        "agent_journal) || '|' || (SELECT event_seq FROM workflow_runs)");
        held_close(&h);
}

/* The statement of src/agent/agent_journal.c, sent the same way. */
static const char WRITE_SQL[] = "SELECT agently_agent_write($1, $2, $3, $4, $5, $6::jsonb)";

/* The statements prepared on the connection that asks, as name:statement. */
static const char PREPARED_SQL[] =
    "SELECT coalesce(string_agg(name || ':' || statement, ' ' ORDER BY name), 'none') FROM "
    "pg_prepared_statements WHERE NOT from_sql";

struct written {
        int error;
        char seq[16];
};

static void written(void *arg, PGresult *res, int error)
{
        struct written *w = arg;

        w->error = error;
        snprintf(w->seq, sizeof(w->seq), "%s", res ? PQgetvalue(res, 0, 0) : "");
        PQclear(res);
}

static void the_write_is_prepared_once_per_session(void **state)
{
        (void)state;
        struct held h;
        static const char *const expected[] = {"1", "2", "", "3"};

        held_open(&h);
        PGconn *db = h.db, *worker = h.worker;
        const char *run = h.run, *agent = h.agent;
        for (int i = 0; i < 4; i++) {
                const char *params[] = {run, "1", agent, "a", "1", NEXT};
                struct written w = {.error = 1};

                if (i == 2) /* the session loses its prepared statements */
                        PQclear(test_db_must(worker, "DISCARD ALL"));
                assert_int_equal(db_query_defer(worker, WRITE_SQL, 6, params, written, &w), 0);
                db_settle(worker);
                assert_int_equal(w.error, i == 2 ? -EIO : 0);
                assert_string_equal(w.seq, expected[i]);
                /* prepared once, under a new name after it was lost */
                assert_db_equal(i < 2    ? "agently_0_0:SELECT agently_agent_write($1, $2, $3, $4, "
                                           "$5, $6::jsonb)"
                                : i == 2 ? "none"
                                         : "agently_1_0:SELECT agently_agent_write($1, $2, $3, "
                                           "$4, $5, $6::jsonb)",
                                worker, PREPARED_SQL);
        }
        assert_db_equal("3", db, "SELECT count(*) FROM agent_journal WHERE agent_run_id = '%s'",
                        agent);
        held_close(&h);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(events_and_journal_rows_keep_their_order),
            cmocka_unit_test(a_row_that_is_not_an_object_is_refused),
            cmocka_unit_test(the_write_is_prepared_once_per_session),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
