/*
 * Reading a large run (`agently-bench --run-read`): what the dashboard asks for when it opens
 * a run of 20,005 events and 20,002 nodes (two 10,000-item maps, the shape the browser test
 * builds), against a real `agently api` on the bench's Postgres.
 *
 * The run is written straight into the tables (node_runs, logs and the run row exactly as a
 * worker leaves them for this workflow), so the figure does not wait for 20,000 steps. Each
 * request is timed over one keep-alive connection (as a browser holds one), median of
 * SAMPLES, interleaved with the baselines so load on the shared machine hits all alike:
 *   - the baseline: GET /v1/runs/{id} of a small run (3 nodes, 5 events) — the same route,
 *     the same JSON, the same auth and transaction, only the run's size differs;
 *   - GET /v1/runs/{id} of the large run, and its ratio to the baseline (the target);
 *   - the rest of the run page's first load: the last 1,000 events
 *     (GET .../events?after=N-1000&limit=1000) and the nodes that are not map items
 *     (GET .../nodes?items=false);
 *   - what the dashboard reads first since issue 14's second pass, both at once: the run
 *     without its map items (GET /v1/runs/{id}?items=false), its ratio to the small run's
 *     same read (the target), and the last 200 events (GET .../events?last=200).
 * Also printed: a `SELECT 1` round trip, for scale, and each answer's size.
 */
#include "bench.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "auth_token.h"

#define ITEMS   10000 /* per map; two maps */
#define SAMPLES 15

static void must(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);

        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
                fprintf(stderr, "bench: run-read: %s\n%s", sql, PQerrorMessage(c));
                exit(1);
        }
        PQclear(r);
}

static char *value(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);
        char *v;

        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                fprintf(stderr, "bench: run-read: %s\n%s", sql, PQerrorMessage(c));
                exit(1);
        }
        v = strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
        return v;
}

/* A run of workflow `wf` with `items` items per map (0: the small run of three transform
 * nodes), completed, written as a worker leaves it. Returns the run id. */
static char *make_run(PGconn *c, const char *user, const char *wf, int items)
{
        char sql[4096];

        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, "
                 "workflow_version, input, run_at) SELECT '%s', w.id, w.name, 1, "
                 "jsonb_build_object('items', (SELECT COALESCE(jsonb_agg(i), '[]') FROM "
                 "generate_series(0, %d - 1) i)), 'infinity' FROM workflows w WHERE w.name = "
                 "'%s' RETURNING id",
                 user, items, wf);
        char *run = value(c, sql);
        if (items > 0) {
                /* the items, each map's own row (its output: every item's, in order) */
                snprintf(sql, sizeof(sql),
                         "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, "
                         "status, output, worker, lease_epoch, started_at, finished_at) SELECT "
                         "'%s', '%s', m || '[' || i || ']', 1, 'completed', "
                         "jsonb_build_object('i', i), 'bench', 1, now() + (CASE m WHEN 'one' "
                         "THEN 0 ELSE 1 END) * interval '1 s', now() + (CASE m WHEN 'one' "
                         "THEN 0 ELSE 1 END) * interval '1 s' FROM unnest(ARRAY['one', 'two']) "
                         "m, generate_series(0, %d - 1) i",
                         user, run, items);
                must(c, sql);
                snprintf(sql, sizeof(sql),
                         "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, "
                         "status, output, worker, lease_epoch, started_at, finished_at) SELECT "
                         "'%s', '%s', m, 1, 'completed', (SELECT jsonb_agg(jsonb_build_object("
                         "'i', i) ORDER BY i) FROM generate_series(0, %d - 1) i), 'bench', 1, "
                         "now() + k * interval '1 s', now() + k * interval '1 s' FROM "
                         "(VALUES ('one', 0), ('two', 1)) v(m, k)",
                         user, run, items);
                must(c, sql);
        } else {
                snprintf(sql, sizeof(sql),
                         "INSERT INTO node_runs (user_id, workflow_run_id, node_id, attempt, "
                         "status, output, worker, lease_epoch, started_at, finished_at) SELECT "
                         "'%s', '%s', n, 1, 'completed', '{}', 'bench', 1, now(), now() FROM "
                         "unnest(ARRAY['a', 'b', 'c']) n",
                         user, run);
                must(c, sql);
        }
        /* the events: run.created, run.started, node.completed per node in the order the
         * worker wrote them (a map's items, then the map), run.completed */
        snprintf(sql, sizeof(sql),
                 "INSERT INTO logs (run_created_at, workflow_run_id, seq, user_id, kind, "
                 "node_id, attempt, level, message, data) SELECT r.created_at, r.id, e.seq, "
                 "r.user_id, e.kind, e.node_id, e.attempt, 'info', e.message, e.data FROM "
                 "workflow_runs r, (SELECT row_number() OVER (ORDER BY o) AS seq, kind, "
                 "node_id, attempt, message, data FROM (SELECT 0 AS o, 'run.created' AS kind, "
                 "NULL AS node_id, NULL::integer AS attempt, 'run created' AS message, "
                 "NULL::jsonb AS data UNION ALL SELECT 1, 'run.started', NULL, NULL, NULL, "
                 "'{\"from\": \"queued\", \"claim\": 1, \"worker\": \"bench\"}' UNION ALL "
                 "SELECT 2 + row_number() OVER (ORDER BY n.started_at, right(n.node_id, 1) "
                 "<> ']', n.node_id), 'node.completed', n.node_id, 1, NULL, NULL FROM "
                 "node_runs n WHERE n.workflow_run_id = '%s' UNION ALL SELECT 1e9, "
                 "'run.completed', NULL, NULL, NULL, NULL) x) e WHERE r.id = '%s'",
                 run, run);
        must(c, sql);
        /* claimed, then finished by its lease holder (the only way the schema allows) */
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET status = 'running', claimed_by = 'bench', "
                 "lease_expires_at = now() + interval '1 minute', lease_epoch = lease_epoch + 1, "
                 "attempt = attempt + 1, started_at = now() WHERE id = '%s'",
                 run);
        must(c, sql);
        snprintf(sql, sizeof(sql),
                 "UPDATE workflow_runs SET status = 'completed', claimed_by = NULL, "
                 "lease_expires_at = NULL, finished_at = now(), output = '{}', event_seq = "
                 "(SELECT max(seq) FROM logs WHERE workflow_run_id = '%s') WHERE id = '%s'",
                 run, run);
        must(c, sql);
        return run;
}

struct sink {
        size_t bytes;
};

static size_t count_bytes(char *p, size_t size, size_t n, void *ud)
{
        (void)p;
        ((struct sink *)ud)->bytes += size * n;
        return size * n;
}

/* One GET over the handle's keep-alive connection; its time in ms (-1 unless 200). */
static double timed_get(CURL *h, const char *url, size_t *bytes)
{
        struct sink s = {0};
        long status = 0;
        int64_t t0;

        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
        t0 = bench_now_us();
        if (curl_easy_perform(h) != CURLE_OK)
                return -1;
        double ms = (double)(bench_now_us() - t0) / 1000.0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (bytes)
                *bytes = s.bytes;
        return status == 200 ? ms : -1;
}

void bench_run_read(const struct bench *b)
{
        char token[AUTH_TOKEN_LEN + 1], shown[AUTH_TOKEN_SHOWN_CHARS + 1], hex[2 + 64 + 1];
        unsigned char hash[AUTH_TOKEN_HASH_BYTES];
        char sql[1024], base[64], auth[AUTH_TOKEN_LEN + 32];
        char u_small[256], u_big[256], u_events[256], u_nodes[256];
        char u_small_lean[256], u_lean[256], u_last[256];
        double small[SAMPLES], big[SAMPLES], events[SAMPLES], nodes[SAMPLES], select1[SAMPLES];
        double small_lean[SAMPLES], lean[SAMPLES], last_events[SAMPLES];
        size_t big_bytes = 0, events_bytes = 0, lean_bytes = 0, last_bytes = 0;
        PGconn *c = bench_connect(b);

        auth_token_generate(token, hash, shown);
        auth_token_hash_hex(hash, hex);
        char *user = value(c, "INSERT INTO users (name, is_admin) VALUES ('run-read-bench', "
                              "false) RETURNING id");
        snprintf(sql, sizeof(sql),
                 "INSERT INTO api_tokens (user_id, name, token_hash, token_prefix) VALUES "
                 "('%s', 'bench', '%s'::bytea, '%s')",
                 user, hex, shown);
        must(c, sql);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO workflows (user_id, name, version, definition, definition_sha256) "
                 "VALUES ('%s', 'big', 1, '{\"name\": \"big\", \"nodes\": [{\"id\": \"one\", "
                 "\"type\": \"map\", \"items\": \"input.items\", \"node\": {\"type\": "
                 "\"transform\", \"output\": {\"i\": \"${ index }\"}}}, {\"id\": \"two\", "
                 "\"type\": \"map\", \"after\": [\"one\"], \"items\": \"input.items\", "
                 "\"node\": {\"type\": \"transform\", \"output\": {\"i\": \"${ index }\"}}}]}', "
                 "encode(sha256('big'), 'hex')), ('%s', 'small', 1, '{\"name\": \"small\", "
                 "\"nodes\": []}', encode(sha256('small'), 'hex'))",
                 user, user);
        must(c, sql);
        int64_t t0 = bench_now_us();
        char *small_run = make_run(c, user, "small", 0);
        char *big_run = make_run(c, user, "big", ITEMS);
        must(c, "ANALYZE node_runs");
        must(c, "ANALYZE workflow_runs");
        char *last = value(c, "SELECT max(event_seq) FROM workflow_runs");
        bench_report("run_read_events", "%s (written in %.1f s)", last,
                     (double)(bench_now_us() - t0) / 1e6);

        int port;
        pid_t api = bench_start_api(b, NULL, &port);
        snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);

        CURL *h = curl_easy_init();
        struct curl_slist *hdr = NULL;
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdr = curl_slist_append(hdr, auth);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, count_bytes);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
        snprintf(u_small, sizeof(u_small), "%s/v1/runs/%s", base, small_run);
        snprintf(u_big, sizeof(u_big), "%s/v1/runs/%s", base, big_run);
        snprintf(u_events, sizeof(u_events), "%s/v1/runs/%s/events?after=%lld&limit=1000", base,
                 big_run, strtoll(last, NULL, 10) - 1000);
        snprintf(u_nodes, sizeof(u_nodes), "%s/v1/runs/%s/nodes?items=false&limit=1000", base,
                 big_run);
        snprintf(u_small_lean, sizeof(u_small_lean), "%s/v1/runs/%s?items=false", base, small_run);
        snprintf(u_lean, sizeof(u_lean), "%s/v1/runs/%s?items=false", base, big_run);
        snprintf(u_last, sizeof(u_last), "%s/v1/runs/%s/events?last=200", base, big_run);
        if (timed_get(h, u_small, NULL) < 0) {
                fprintf(stderr, "bench: run-read: agently api did not answer on %s\n", base);
                exit(1);
        }
        /* warm: plans, caches, the pool's connections */
        for (int i = 0; i < 3; i++) {
                timed_get(h, u_big, NULL);
                timed_get(h, u_events, NULL);
        }
        for (int i = 0; i < SAMPLES; i++) {
                small[i] = timed_get(h, u_small, NULL);
                big[i] = timed_get(h, u_big, &big_bytes);
                events[i] = timed_get(h, u_events, &events_bytes);
                nodes[i] = timed_get(h, u_nodes, NULL);
                small_lean[i] = timed_get(h, u_small_lean, NULL);
                lean[i] = timed_get(h, u_lean, &lean_bytes);
                last_events[i] = timed_get(h, u_last, &last_bytes);
                int64_t s0 = bench_now_us();
                PQclear(PQexec(c, "SELECT 1"));
                select1[i] = (double)(bench_now_us() - s0) / 1000.0;
                if (small[i] < 0 || big[i] < 0 || events[i] < 0 || nodes[i] < 0 ||
                    small_lean[i] < 0 || lean[i] < 0 || last_events[i] < 0) {
                        fprintf(stderr, "bench: run-read: a request failed\n");
                        exit(1);
                }
        }
        double m_small = bench_median(small, SAMPLES), m_big = bench_median(big, SAMPLES);
        bench_report("run_read_select1_ms", "%.2f", bench_median(select1, SAMPLES));
        bench_report("run_read_small_run_get_ms", "%.1f", m_small);
        bench_report("run_read_get_ms", "%.1f (%zu bytes)", m_big, big_bytes);
        bench_report("run_read_get_vs_small_run", "%.1fx", m_big / m_small);
        bench_report("run_read_last_1000_events_ms", "%.1f (%zu bytes)",
                     bench_median(events, SAMPLES), events_bytes);
        bench_report("run_read_nodes_not_items_ms", "%.1f", bench_median(nodes, SAMPLES));
        double m_small_lean = bench_median(small_lean, SAMPLES),
               m_lean = bench_median(lean, SAMPLES);
        bench_report("run_read_first_small_run_ms", "%.1f", m_small_lean);
        bench_report("run_read_first_ms", "%.1f (%zu bytes)", m_lean, lean_bytes);
        bench_report("run_read_first_vs_small_run", "%.1fx", m_lean / m_small_lean);
        bench_report("run_read_last_200_events_ms", "%.1f (%zu bytes)",
                     bench_median(last_events, SAMPLES), last_bytes);

        curl_slist_free_all(hdr);
        curl_easy_cleanup(h);
        bench_stop_worker(api);
        free(user);
        free(small_run);
        free(big_run);
        free(last);
        PQfinish(c);
}
