/*
 * Reading runs through a real `agently api`:
 *  - a run written after node_runs was last analyzed (statistics of a few rows per run) is
 *    read with its first inline nodes probed one by one: the plan of the API's own statement
 *    (EXPLAIN ANALYZE) compares no rows in a join filter, where the anti-join it replaced
 *    compared every node with every other kept;
 *  - a run larger than GET /v1/runs/{id} shows inline: the first 1,000 nodes in order of
 *    first start, each at its latest attempt (a retried item keeps its place, shows its
 *    retry); `maps` aggregates every item of each map, counts per status, open while an item
 *    is; GET .../nodes?map=ID pages through one map's items, ?items=false through the rest;
 *  - what the dashboard reads first: the run with ?items=false (its nodes that are not map
 *    items, the items aggregated in `maps`), no read carrying a map's own output (its items'
 *    outputs: output_omitted) but the unfiltered nodes list, and the last events
 *    (events?last=N) without knowing the last seq;
 *  - the live fan-out survives losing its LISTEN connection: with the listening backend
 *    terminated (pg_terminate_backend), a connected event stream still gets a later event
 *    within the polling bound, and the hub LISTENs again (a new listener backend, and an
 *    event then arrives sooner than the 2 s poll that runs while LISTEN is up could bring it).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "api_routes.h"
#include "auth_token.h"
#include "testlib.h"

#define ITEMS 1203 /* more than the 1,000 nodes GET /v1/runs/{id} shows inline */

static struct {
        char *conninfo; /* superuser */
        char *data_dir;
        char base[64];
        pid_t pid;
        PGconn *db;
        char token[AUTH_TOKEN_LEN + 1];
        char auth[AUTH_TOKEN_LEN + 32];
        char *user_id;
} S;

static int setup(void **state)
{
        char listen[64], hex[2 + 64 + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1], log[512], url[128];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        static char env_db[4096];
        (void)state;

        curl_global_init(CURL_GLOBAL_ALL);
        S.conninfo = test_db_create("runread");
        S.db = test_db_connect(S.conninfo);
        S.data_dir = test_tempdir("runread");
        assert_int_equal(auth_token_generate(S.token, hash, shown), 0);
        auth_token_hash_hex(hash, hex);
        snprintf(S.auth, sizeof(S.auth), "Authorization: Bearer %s", S.token);
        S.user_id = test_db_value(S.db, "INSERT INTO users (name) VALUES ('reader') RETURNING id");
        PQclear(test_db_must(S.db, "SELECT 1"));
        char *sql = NULL;
        assert_int_gt(asprintf(&sql,
                               "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) "
                               "VALUES ('%s', 't', '%s'::bytea, '%s'); INSERT INTO workflows "
                               "(user_id, name, version, definition, definition_sha256) VALUES "
                               "('%s', 'wf', 1, '{\"name\": \"wf\", \"nodes\": []}', "
                               "encode(sha256('wf'), 'hex'))",
                               S.user_id, hex, shown, S.user_id),
                      0);
        PQclear(test_db_must(S.db, sql));
        free(sql);
        int port = test_free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        snprintf(S.base, sizeof(S.base), "http://127.0.0.1:%d", port);
        snprintf(env_db, sizeof(env_db), "AGENTLY_DATABASE_URL=%s", S.conninfo);
        const char *args[] = {"api", "--listen", listen, "--data-dir", S.data_dir, NULL};
        const char *env[] = {env_db, "AGENTLY_WEB_DIR=/nonexistent", NULL};
        snprintf(log, sizeof(log), "%s/api.log", S.data_dir);
        S.pid = test_spawn_agently(args, env, log);
        snprintf(url, sizeof(url), "%s/healthz", S.base);
        assert_true(test_wait_http_ok(url, 15000));
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        if (S.pid > 0)
                test_stop_process(S.pid, SIGTERM, 10000);
        PQfinish(S.db);
        test_rm_rf(S.data_dir);
        free(S.data_dir);
        free(S.conninfo);
        free(S.user_id);
        return 0;
}

/* A waiting run of workflow wf (no worker runs here); its id. */
static char *new_run(void)
{
        return test_db_value(S.db,
                             "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                             "workflow_version, status, run_at) SELECT user_id, id, name, 1, "
                             "'waiting', 'infinity' FROM workflows WHERE name = 'wf' RETURNING id");
}

/* GET path → parsed JSON (asserts the status). */
static json_t *get(const char *path, long want)
{
        char url[512], *body = NULL;
        const char *headers[] = {S.auth, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        long st = test_http("GET", url, headers, NULL, &body);
        if (st != want)
                fprintf(stderr, "GET %s: %ld %s\n", path, st, body ? body : "");
        assert_int_equal(st, want);
        json_t *j = json_loads(body ? body : "", JSON_DECODE_ANY, NULL);
        free(body);
        assert_non_null(j);
        return j;
}

static const char *str_at(const json_t *arr, size_t i, const char *key)
{
        return json_string_value(json_object_get(json_array_get(arr, i), key));
}

/* The sum of "Rows Removed by Join Filter" over every node of an EXPLAIN (ANALYZE, FORMAT
 * JSON) plan: how many row pairs its joins compared and threw away. */
static long long rows_removed_by_join_filter(const json_t *node)
{
        long long n = json_integer_value(json_object_get(node, "Rows Removed by Join Filter"));
        const json_t *child;
        size_t i;

        json_array_foreach (json_object_get(node, "Plans"), i, child)
                n += rows_removed_by_join_filter(child);
        return n;
}

/* Nodes n1..nN of run, one attempt each, completed, started 1 ms apart in that order. */
static void add_nodes(const char *run, int n)
{
        char sql[1024];

        snprintf(sql, sizeof(sql),
                 "INSERT INTO node_runs (workflow_run_id, user_id, node_id, attempt, status, "
                 "started_at, finished_at) SELECT r.id, r.user_id, 'n' || i, 1, 'completed', "
                 "now() + i * interval '1 ms', now() + i * interval '1 ms' FROM workflow_runs r, "
                 "generate_series(1, %d) i WHERE r.id = '%s'",
                 n, run);
        PQclear(test_db_must(S.db, sql));
}

#define STALE_NODES 3000

/* A run written after the last ANALYZE of node_runs (autovacuum's comes later: the
 * ninth session's web_e2e read of a 20,002-node run just committed) is read with a plan
 * made for the few rows the statistics promise. Its first inline nodes were kept by a
 * NOT EXISTS that such a plan ran as a nested loop over the whole run, once per node kept:
 * 1,000 x 3,000 rows compared here, 20 M for 20,002 nodes (0.8-2.6 s; 15 s under ASan).
 * As a probe per node it compares none. Run first, when node_runs holds only what it makes. */
static void run_read_probes_per_node_with_stale_statistics(void **state)
{
        (void)state;
        char *small = new_run(), *big = new_run(), sql[256];

        add_nodes(small, 3);
        PQclear(test_db_must(S.db, "ANALYZE node_runs"));
        PQclear(test_db_must(S.db, "ANALYZE workflow_runs"));
        add_nodes(big, STALE_NODES);

        /* the API's own statement, as the API runs it: its role, its user */
        PQclear(test_db_must(S.db, "BEGIN"));
        PQclear(test_db_must(S.db, "SET LOCAL ROLE agently_api"));
        snprintf(sql, sizeof(sql), "SELECT set_config('agently.user_id', '%s', true)", S.user_id);
        PQclear(test_db_must(S.db, sql));
        char *explain = NULL;
        assert_int_gt(
            asprintf(&explain, "EXPLAIN (ANALYZE, FORMAT JSON) %s", api_run_read_sql(true)), 0);
        const char *params[] = {big};
        PGresult *res = PQexecParams(S.db, explain, 1, NULL, params, NULL, NULL, 0);
        free(explain);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
                fprintf(stderr, "EXPLAIN: %s", PQerrorMessage(S.db));
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        json_t *plan = test_json(PQgetvalue(res, 0, 0));
        PQclear(res);
        PQclear(test_db_must(S.db, "ROLLBACK"));
        long long removed =
            rows_removed_by_join_filter(json_object_get(json_array_get(plan, 0), "Plan"));
        printf("# rows removed by join filters: %lld\n", removed);
        assert_int_equal(removed, 0);
        json_decref(plan);

        /* and the API answers it whole */
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s", big);
        json_t *run = get(path, 200);
        assert_int_equal(json_integer_value(json_object_get(run, "nodes_total")), STALE_NODES);
        assert_int_equal(json_array_size(json_object_get(run, "nodes")), 1000);
        assert_string_equal(str_at(json_object_get(run, "nodes"), 0, "node_id"), "n1");
        json_decref(run);

        snprintf(sql, sizeof(sql), "DELETE FROM workflow_runs WHERE id IN ('%s', '%s')", small,
                 big);
        PQclear(test_db_must(S.db, sql));
        free(small);
        free(big);
}

/* Pages GET path (a nodes query) to its end; the node ids in order, comma-joined. */
static size_t page_all(const char *run, const char *query, char **ids)
{
        char path[512], *cursor = NULL;
        size_t n = 0, len = 0;

        *ids = calloc(1, 1);
        for (;;) {
                snprintf(path, sizeof(path), "/v1/runs/%s/nodes?limit=1000&%s%s%s", run, query,
                         cursor ? "&cursor=" : "", cursor ? cursor : "");
                json_t *j = get(path, 200), *data = json_object_get(j, "data");
                for (size_t i = 0; i < json_array_size(data); i++, n++) {
                        const char *id = str_at(data, i, "node_id");
                        size_t add = strlen(id) + 2;
                        *ids = realloc(*ids, len + add);
                        len += (size_t)snprintf(*ids + len, add, "%s%s", len ? "," : "", id);
                }
                free(cursor);
                const char *next = json_string_value(json_object_get(j, "next_cursor"));
                cursor = next ? strdup(next) : NULL;
                json_decref(j);
                if (!cursor)
                        return n;
        }
}

static void run_larger_than_its_inline_nodes(void **state)
{
        (void)state;
        char *run = new_run(), *sql = NULL, path[256];

        /* start (t), the map fan (t+1 s), its items fan[i] (t+2 s+i ms) — fan[3] failed and
         * its retry runs (t+20 s), fan[4] failed for good — and end (t+10 s), which started
         * after every item: it is not among the first 1,000 by start */
        assert_int_gt(
            asprintf(&sql,
                     "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, "
                     "output, error, started_at, finished_at) SELECT '%s', '%s', x.node_id, "
                     "x.attempt, x.status, x.output, x.error, x.s, CASE WHEN x.status IN "
                     "('started', 'waiting') THEN NULL ELSE x.s END FROM (SELECT 'start' AS "
                     "node_id, 1 AS attempt, 'completed' AS status, '{}'::jsonb AS output, "
                     "NULL::jsonb AS error, timestamptz '2026-01-01' AS s UNION ALL SELECT 'fan', "
                     "1, 'started', NULL, NULL, timestamptz '2026-01-01' + interval '1 s' UNION "
                     "ALL SELECT 'fan[' || i || ']', 1, CASE WHEN i IN (3, 4) THEN 'failed' ELSE "
                     "'completed' END, jsonb_build_object('i', i), NULL, timestamptz "
                     "'2026-01-01' + interval '2 s' + i * interval '1 ms' FROM "
                     "generate_series(0, %d - 1) i UNION ALL SELECT 'fan[3]', 2, 'started', "
                     "NULL, NULL, timestamptz '2026-01-01' + interval '20 s' UNION ALL SELECT "
                     "'end', 1, 'waiting', NULL, NULL, timestamptz '2026-01-01' + interval "
                     "'10 s') x",
                     S.user_id, run, ITEMS),
            0);
        PQclear(test_db_must(S.db, sql));
        free(sql);

        snprintf(path, sizeof(path), "/v1/runs/%s", run);
        json_t *r = get(path, 200), *nodes = json_object_get(r, "nodes");
        assert_int_equal(json_integer_value(json_object_get(r, "nodes_total")), ITEMS + 3);
        assert_true(json_is_true(json_object_get(r, "nodes_truncated")));
        assert_int_equal(json_array_size(nodes), 1000);
        assert_string_equal(str_at(nodes, 0, "node_id"), "start");
        assert_string_equal(str_at(nodes, 1, "node_id"), "fan");
        for (size_t i = 2; i < 1000; i++) { /* the items in order of first start */
                char want[32];
                snprintf(want, sizeof(want), "fan[%zu]", i - 2);
                assert_string_equal(str_at(nodes, i, "node_id"), want);
        }
        /* the retried item keeps its place and shows its latest attempt */
        assert_string_equal(str_at(nodes, 5, "status"), "started");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(nodes, 5), "attempt")),
                         2);
        assert_string_equal(str_at(nodes, 6, "status"), "failed");
        /* every item, aggregated */
        json_t *maps = json_object_get(r, "maps");
        assert_int_equal(json_array_size(maps), 1);
        json_t *m = json_array_get(maps, 0);
        json_t *want =
            json_pack("{s:s, s:i, s:{s:i, s:i, s:i}, s:n}", "node_id", "fan", "items", ITEMS,
                      "counts", "completed", ITEMS - 2, "failed", 1, "started", 1, "finished_at");
        json_t *got =
            json_pack("{s:O, s:O, s:O, s:O}", "node_id", json_object_get(m, "node_id"), "items",
                      json_object_get(m, "items"), "counts", json_object_get(m, "counts"),
                      "finished_at", json_object_get(m, "finished_at"));
        assert_json_equal(got, want);
        assert_non_null(
            strstr(json_string_value(json_object_get(m, "started_at")), "2026-01-01T00:00:02"));
        json_decref(got);
        json_decref(want);
        json_decref(r);

        /* the same run without its items: its three other nodes, in order of first start */
        snprintf(path, sizeof(path), "/v1/runs/%s?items=false", run);
        r = get(path, 200);
        nodes = json_object_get(r, "nodes");
        assert_int_equal(json_integer_value(json_object_get(r, "nodes_total")), ITEMS + 3);
        assert_false(json_is_true(json_object_get(r, "nodes_truncated")));
        assert_int_equal(json_array_size(nodes), 3);
        assert_string_equal(str_at(nodes, 0, "node_id"), "start");
        assert_string_equal(str_at(nodes, 1, "node_id"), "fan");
        assert_string_equal(str_at(nodes, 2, "node_id"), "end");
        assert_int_equal(json_array_size(json_object_get(r, "maps")), 1);
        json_decref(r);

        /* the rest of the nodes, and one map's items, each paged to its end */
        char *ids = NULL;
        assert_int_equal(page_all(run, "items=false", &ids), 3);
        assert_string_equal(ids, "end,fan,start");
        free(ids);
        assert_int_equal(page_all(run, "map=fan", &ids), ITEMS);
        assert_non_null(strstr(ids, "fan[0],"));
        assert_non_null(strstr(ids, "fan[1202]"));
        assert_null(strstr(ids, "start"));
        free(ids);
        assert_int_equal(page_all(run, "map=fa", &ids), 0);
        free(ids);
        assert_int_equal(page_all(run, "items=true", &ids), ITEMS + 3);
        free(ids);
        snprintf(path, sizeof(path), "/v1/runs/%s/nodes?map=fan%%5B1%%5D", run);
        json_decref(get(path, 400));
        snprintf(path, sizeof(path), "/v1/runs/%s/nodes?items=maybe", run);
        json_decref(get(path, 400));

        /* a run with no map: no aggregate */
        char *plain = new_run();
        snprintf(path, sizeof(path), "/v1/runs/%s", plain);
        r = get(path, 200);
        assert_int_equal(json_array_size(json_object_get(r, "maps")), 0);
        assert_int_equal(json_integer_value(json_object_get(r, "nodes_total")), 0);
        json_decref(r);
        free(plain);
        free(run);
}

static long long append_event(const char *run)
{
        return test_db_int(S.db,
                           "SELECT agently_append_event_unfenced('%s', 'test.tick', NULL, NULL, "
                           "'info', 'tick', NULL)",
                           run);
}

/* The node state named id in a nodes array. */
static json_t *node_named(json_t *nodes, const char *id)
{
        for (size_t i = 0; i < json_array_size(nodes); i++)
                if (strcmp(str_at(nodes, i, "node_id"), id) == 0)
                        return json_array_get(nodes, i);
        fail_msg("no node %s", id);
        return NULL;
}

/* A completed map `fan` of 3 items beside a node `start`, and 5 events. */
static void first_reads_leave_map_outputs_out(void **state)
{
        (void)state;
        char *run = new_run(), *sql = NULL, path[256];
        assert_int_gt(
            asprintf(&sql,
                     "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, status, "
                     "output, started_at, finished_at) SELECT '%s', '%s', x.node_id, 1, "
                     "'completed', x.output, x.s, x.s FROM (SELECT 'start' AS node_id, "
                     "'{\"a\": 1}'::jsonb AS output, timestamptz '2026-01-01' AS s UNION ALL "
                     "SELECT 'fan', '[{\"i\": 0}, {\"i\": 1}, {\"i\": 2}]', timestamptz "
                     "'2026-01-01' + interval '1 s' UNION ALL SELECT 'fan[' || i || ']', "
                     "jsonb_build_object('i', i), timestamptz '2026-01-01' + interval '2 s' FROM "
                     "generate_series(0, 2) i) x",
                     S.user_id, run),
            0);
        PQclear(test_db_must(S.db, sql));
        free(sql);
        for (int i = 0; i < 5; i++)
                append_event(run);

        /* the run read: every node, the map's own output left out, its items' kept */
        snprintf(path, sizeof(path), "/v1/runs/%s", run);
        json_t *r = get(path, 200), *nodes = json_object_get(r, "nodes");
        assert_int_equal(json_array_size(nodes), 5);
        json_t *fan = node_named(nodes, "fan"), *start = node_named(nodes, "start");
        assert_true(json_is_null(json_object_get(fan, "output")));
        assert_true(json_is_true(json_object_get(fan, "output_omitted")));
        assert_int_equal(json_integer_value(json_object_get(json_object_get(start, "output"), "a")),
                         1);
        assert_null(json_object_get(start, "output_omitted")); /* said by a map's state only */
        assert_int_equal(json_integer_value(json_object_get(
                             json_object_get(node_named(nodes, "fan[2]"), "output"), "i")),
                         2);
        json_decref(r);

        /* ?items=false: the two nodes that are not items, the items in `maps` */
        snprintf(path, sizeof(path), "/v1/runs/%s?items=false", run);
        r = get(path, 200);
        nodes = json_object_get(r, "nodes");
        assert_int_equal(json_array_size(nodes), 2);
        assert_string_equal(str_at(nodes, 0, "node_id"), "start");
        assert_string_equal(str_at(nodes, 1, "node_id"), "fan");
        assert_true(json_is_null(json_object_get(json_array_get(nodes, 1), "output")));
        assert_true(json_is_true(json_object_get(json_array_get(nodes, 1), "output_omitted")));
        assert_int_equal(json_integer_value(json_object_get(r, "nodes_total")), 5);
        assert_false(json_is_true(json_object_get(r, "nodes_truncated")));
        assert_int_equal(json_integer_value(json_object_get(
                             json_array_get(json_object_get(r, "maps"), 0), "items")),
                         3);
        json_decref(r);
        snprintf(path, sizeof(path), "/v1/runs/%s?items=maybe", run);
        json_decref(get(path, 400));

        /* the nodes list: without the items, the map's output is left out; with them, not */
        snprintf(path, sizeof(path), "/v1/runs/%s/nodes?items=false", run);
        r = get(path, 200);
        fan = node_named(json_object_get(r, "data"), "fan");
        assert_true(json_is_null(json_object_get(fan, "output")));
        assert_true(json_is_true(json_object_get(fan, "output_omitted")));
        json_decref(r);
        snprintf(path, sizeof(path), "/v1/runs/%s/nodes", run);
        r = get(path, 200);
        fan = node_named(json_object_get(r, "data"), "fan");
        assert_int_equal(json_array_size(json_object_get(fan, "output")), 3);
        json_decref(r);

        /* the last events, in order, without knowing the last seq */
        snprintf(path, sizeof(path), "/v1/runs/%s/events?last=2", run);
        r = get(path, 200);
        json_t *data = json_object_get(r, "data");
        assert_int_equal(json_array_size(data), 2);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "seq")), 4);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 1), "seq")), 5);
        assert_int_equal(json_integer_value(json_object_get(r, "next_after")), 5);
        assert_false(json_is_true(json_object_get(r, "terminal"))); /* the run is waiting */
        json_decref(r);
        snprintf(path, sizeof(path), "/v1/runs/%s/events?last=1000", run);
        r = get(path, 200);
        assert_int_equal(json_array_size(json_object_get(r, "data")), 5);
        json_decref(r);
        snprintf(path, sizeof(path), "/v1/runs/%s/events?last=2&after=1", run);
        json_decref(get(path, 400));
        snprintf(path, sizeof(path), "/v1/runs/%s/events?last=0", run);
        json_decref(get(path, 400));
        free(run);
}

/* ---- the LISTEN connection lost --------------------------------------------------- */

struct stream {
        const char *run;
        pthread_mutex_t lock;
        char buf[65536];
        size_t len;
        int64_t arrived_ms[64]; /* by seq */
        bool connected;
        volatile bool stop;
};

static size_t stream_write(char *p, size_t size, size_t n, void *ud)
{
        struct stream *s = ud;
        size_t add = size * n;
        int64_t now = test_now_ms();

        pthread_mutex_lock(&s->lock);
        s->connected = true;
        if (s->len + add >= sizeof(s->buf))
                add = sizeof(s->buf) - s->len - 1;
        memcpy(s->buf + s->len, p, add);
        s->len += add;
        s->buf[s->len] = '\0';
        char *start = s->buf, *end;
        while ((end = strstr(start, "\n\n"))) {
                *end = '\0';
                if (strncmp(start, "id: ", 4) == 0) {
                        long long seq = strtoll(start + 4, NULL, 10);
                        if (seq > 0 && seq < 64 && !s->arrived_ms[seq])
                                s->arrived_ms[seq] = now;
                }
                start = end + 2;
        }
        memmove(s->buf, start, strlen(start) + 1);
        s->len = strlen(s->buf);
        pthread_mutex_unlock(&s->lock);
        return s->stop ? 0 : size * n;
}

static int stream_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
        (void)a, (void)b, (void)c, (void)d;
        return ((struct stream *)ud)->stop ? 1 : 0;
}

static void *stream_main(void *arg)
{
        struct stream *s = arg;
        char url[256];
        struct curl_slist *h = curl_slist_append(NULL, S.auth);
        CURL *e = curl_easy_init();

        snprintf(url, sizeof(url), "%s/v1/runs/%s/events/stream", S.base, s->run);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, stream_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, stream_progress);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, s);
        curl_easy_perform(e);
        curl_easy_cleanup(e);
        curl_slist_free_all(h);
        return NULL;
}

/* Appends an event and returns how long the stream took to receive it (ms; -1: not within
 * 10 s). */
static int64_t delivery_ms(struct stream *s, const char *run)
{
        int64_t t0 = test_now_ms();
        long long seq = append_event(run);

        assert_int_lt(seq, 64);
        while (test_now_ms() - t0 < 10000) {
                pthread_mutex_lock(&s->lock);
                int64_t at = s->arrived_ms[seq];
                pthread_mutex_unlock(&s->lock);
                if (at)
                        return at - t0;
                usleep(5 * 1000);
        }
        return -1;
}

static char *listener_pid(void)
{
        return test_db_value(S.db, "SELECT COALESCE(string_agg(pid::text, ','), '') FROM "
                                   "pg_stat_activity WHERE application_name = 'agently api "
                                   "events' AND datname = current_database()");
}

static void stream_survives_losing_listen(void **state)
{
        (void)state;
        char *run = new_run();
        struct stream s = {.run = run};
        pthread_t t;

        pthread_mutex_init(&s.lock, NULL);
        pthread_create(&t, NULL, stream_main, &s);
        /* connected, registered, LISTENing: an event arrives on its NOTIFY */
        int64_t d = -1;
        for (int i = 0; i < 50 && d < 0; i++) {
                usleep(100 * 1000);
                pthread_mutex_lock(&s.lock);
                bool up = s.connected;
                pthread_mutex_unlock(&s.lock);
                if (up)
                        d = delivery_ms(&s, run);
        }
        assert_int_ge(d, 0);
        char *before = listener_pid();
        assert_true(*before && !strchr(before, ','));

        /* the listening backend dies right after a delivery: the stream still gets what is
         * written next, by the 250 ms poll the hub falls back to (bound: the poll plus slack
         * for a loaded machine; the 2 s poll of a hub that kept waiting for NOTIFY would
         * take about 2 s, as the delivery just restarted its clock) */
        char *killed = test_db_value(S.db, "SELECT pg_terminate_backend(%s)", before);
        assert_string_equal(killed, "t");
        free(killed);
        d = delivery_ms(&s, run);
        printf("# with LISTEN lost: delivered in %lld ms\n", (long long)d);
        assert_int_ge(d, 0);
        assert_int_lt(d, 1000);

        /* LISTEN again: a new listener backend within the 3 s reconnect interval (+ slack) */
        char *after = NULL;
        int64_t t0 = test_now_ms();
        for (;;) {
                free(after);
                after = listener_pid();
                if (*after && strcmp(after, before) != 0)
                        break;
                assert_int_lt(test_now_ms() - t0, 10000);
                usleep(50 * 1000);
        }
        printf("# listener %s replaced by %s after %lld ms\n", before, after,
               (long long)(test_now_ms() - t0));
        /* and it is woken by NOTIFY again: with LISTEN up the fallback poll runs every 2 s,
         * so an event appended right after a delivery (the poll's clock just restarted)
         * arrives well before that only through the notification */
        usleep(300 * 1000); /* the watch registered on the new connection */
        for (int i = 0; i < 3; i++) {
                d = delivery_ms(&s, run);
                printf("# LISTEN back: delivered in %lld ms\n", (long long)d);
                assert_int_ge(d, 0);
                assert_int_lt(d, 1000);
        }

        s.stop = true;
        append_event(run); /* wakes the stream's write callback, which ends the transfer */
        pthread_join(t, NULL);
        pthread_mutex_destroy(&s.lock);
        free(before);
        free(after);
        free(run);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(run_read_probes_per_node_with_stale_statistics),
            cmocka_unit_test(run_larger_than_its_inline_nodes),
            cmocka_unit_test(first_reads_leave_map_outputs_out),
            cmocka_unit_test(stream_survives_losing_listen),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
