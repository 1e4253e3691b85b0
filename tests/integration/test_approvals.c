/*
 * The approval node end to end with real processes (an API and a worker over a real
 * Postgres): a run waits for a person holding nothing, the approval carries its context,
 * and it is decided through the API, the CLI and a signed one-click link (GET only shows a
 * page; POST decides once; a used or expired link is refused; a stranger gets 404). 1,000
 * concurrent decisions on 100 approvals: exactly one wins each, the rest get 409 with the
 * winning decision. A quorum of 2, forbid_self_approval on and off, the timeout paths
 * (reject, escalate: notice written and deadline extended, fail), and a worker SIGKILLed
 * while a run waits: nothing is lost and nobody is asked twice.
 */
#include "testlib.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth_token.h"
#include "strutil.h"
#include "worker_sink.h"

/* The issue's minimal shape, as is, after a draft and before a node reading the decision. */
static const char WF_MIN[] =
    "{\"name\":\"minimal\",\"nodes\":["
    "{\"id\":\"draft\",\"type\":\"transform\",\"output\":{\"text\":\"please approve\"}},"
    "{\"id\":\"ok\",\"type\":\"approval\",\"after\":[\"draft\"],\"reviewers\":[\"ops@example.com\"]"
    ","
    "\"channels\":[{\"kind\":\"webhook\",\"url\":\"SINK/hook\"}],\"timeout\":\"3d\","
    "\"on_timeout\":\"escalate\"},"
    "{\"id\":\"done\",\"type\":\"transform\",\"after\":[\"ok\"],"
    "\"output\":{\"comment\":\"${ nodes.ok.output.comment }\",\"by\":\"${ nodes.ok.output.by "
    "}\"}}]}";

static const char WF_BOB[] =
    "{\"name\":\"bob\",\"nodes\":["
    "{\"id\":\"draft\",\"type\":\"transform\",\"output\":{\"text\":\"ship it\"}},"
    "{\"id\":\"ok\",\"type\":\"approval\",\"after\":[\"draft\"],\"reviewers\":[\"bob\"],"
    "\"title\":\"Ship ${ nodes.draft.output.text }?\",\"proposed_action\":\"send the draft\"},"
    "{\"id\":\"done\",\"type\":\"transform\",\"after\":[\"ok\"],"
    "\"output\":{\"comment\":\"${ nodes.ok.output.comment }\"}}]}";

static const char WF_OWNER[] = "{\"name\":\"owner\",\"nodes\":["
                               "{\"id\":\"ok\",\"type\":\"approval\"}]}";

static const char WF_QUORUM[] = "{\"name\":\"quorum\",\"nodes\":["
                                "{\"id\":\"ok\",\"type\":\"approval\",\"reviewers\":[\"alice\","
                                "\"bob\"],\"quorum\":2}]}";

static const char WF_SELF[] = "{\"name\":\"self\",\"nodes\":["
                              "{\"id\":\"ok\",\"type\":\"approval\",\"reviewers\":[\"bob\"],"
                              "\"forbid_self_approval\":true}]}";

static const char WF_T_REJECT[] = "{\"name\":\"treject\",\"nodes\":["
                                  "{\"id\":\"ok\",\"type\":\"approval\",\"timeout\":\"2s\","
                                  "\"on_timeout\":\"reject\"}]}";

static const char WF_T_FAIL[] = "{\"name\":\"tfail\",\"nodes\":["
                                "{\"id\":\"ok\",\"type\":\"approval\",\"timeout\":\"2s\","
                                "\"on_timeout\":\"fail\"}]}";

static const char WF_T_APPROVE[] = "{\"name\":\"tapprove\",\"nodes\":["
                                   "{\"id\":\"ok\",\"type\":\"approval\",\"timeout\":\"2s\","
                                   "\"on_timeout\":\"approve\"}]}";

static const char WF_T_ESCALATE[] =
    "{\"name\":\"tescalate\",\"nodes\":["
    "{\"id\":\"ok\",\"type\":\"approval\",\"reviewers\":[\"ops@example.com\"],"
    "\"timeout\":\"3s\",\"on_timeout\":\"escalate\","
    "\"escalation\":[{\"contacts\":[\"boss@example.com\"],\"timeout\":\"4s\"}]}]}";

static struct {
        char *conninfo;
        PGconn *db;
        struct worker_sink *sink;
        char *dir;
        pid_t api, worker;
        char base[64];
        char alice[AUTH_TOKEN_LEN + 1], bob[AUTH_TOKEN_LEN + 1], carol[AUTH_TOKEN_LEN + 1];
        char *alice_id;
} S;

static char *workflow(const char *name, const char *def)
{
        char *expanded = worker_sink_expand(S.sink, def);
        char *id = worker_test_workflow(S.db, S.alice_id, name, 1, expanded);
        free(expanded);
        return id;
}

static long api(const char *method, const char *token, const char *path, const char *body,
                char **out)
{
        char url[512], auth[128];
        const char *headers[] = {auth, NULL};

        snprintf(url, sizeof(url), "%s%s", S.base, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        return test_http(method, url, token ? headers : NULL, body, out);
}

static long decide(const char *token, const char *approval, const char *body, char **out)
{
        char path[256];

        snprintf(path, sizeof(path), "/v1/approvals/%s/decide", approval);
        return api("POST", token, path, body, out);
}

static void spawn_worker(void)
{
        char log[512];

        snprintf(log, sizeof(log), "%s/worker.log", S.dir);
        S.worker = worker_test_spawn(S.conninfo, "ap-w", "5s", "1s", NULL, log);
}

static int setup(void **state)
{
        (void)state;
        S.conninfo = test_db_create("approvals");
        S.db = test_db_connect(S.conninfo);
        S.sink = worker_sink_start();
        S.dir = test_tempdir("approvals");
        S.alice_id = worker_test_user(S.db, "alice");
        char *bob = worker_test_user(S.db, "bob");
        char *carol = worker_test_user(S.db, "carol");
        worker_test_token(S.db, S.alice_id, S.alice);
        worker_test_token(S.db, bob, S.bob);
        worker_test_token(S.db, carol, S.carol);
        free(bob);
        free(carol);
        S.api = worker_test_spawn_api(S.conninfo, S.dir, S.base, sizeof(S.base));
        spawn_worker();
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        if (S.worker > 0)
                test_stop_process(S.worker, SIGTERM, 15000);
        if (S.api > 0)
                test_stop_process(S.api, SIGTERM, 10000);
        worker_sink_stop(S.sink);
        PQfinish(S.db);
        test_rm_rf(S.dir);
        free(S.dir);
        free(S.conninfo);
        free(S.alice_id);
        return 0;
}

/* Starts a run of workflow_id and waits until it waits for its approval; returns the
 * approval's id (the run's id in *run). */
static char *waiting_approval(const char *workflow_id, char **run)
{
        *run = worker_test_run(S.db, workflow_id, NULL);
        for (int i = 0; i < 300; i++) {
                char *id = test_db_value(S.db,
                                         "SELECT a.id FROM approvals a JOIN workflow_runs r ON "
                                         "r.id = a.workflow_run_id WHERE a.workflow_run_id = '%s' "
                                         "AND a.status = 'pending' AND r.status = 'waiting'",
                                         *run);
                if (id)
                        return id;
                usleep(100 * 1000);
        }
        fail_msg("run %s never waited for an approval", *run);
        return NULL;
}

static void api_round_trip_by_a_reviewer(void **state)
{
        char *wf = workflow("bob", WF_BOB), *run, *out = NULL, path[256];
        char *approval = waiting_approval(wf, &run);
        (void)state;

        /* waiting holds nothing */
        assert_db_equal("t", S.db,
                        "SELECT claimed_by IS NULL AND lease_expires_at IS NULL FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        /* the approval carries what the reviewer needs */
        assert_db_equal("Ship ship it?", S.db, "SELECT title FROM approvals WHERE id = '%s'",
                        approval);
        assert_db_equal(
            "ship it", S.db,
            "SELECT request->'context'->'draft'->>'text' FROM approvals WHERE id = '%s'", approval);
        assert_db_equal("send the draft", S.db,
                        "SELECT request->>'proposed_action' FROM approvals WHERE id = '%s'",
                        approval);

        /* bob (a reviewer, another user) sees it pending; carol sees nothing */
        assert_int_equal(api("GET", S.bob, "/v1/approvals?status=pending", NULL, &out), 200);
        assert_non_null(strstr(out, approval));
        free(out);
        assert_int_equal(api("GET", S.bob, "/v1/inbox", NULL, &out), 200);
        assert_non_null(strstr(out, approval));
        assert_non_null(strstr(out, "\"kind\":\"approval\""));
        free(out);
        snprintf(path, sizeof(path), "/v1/approvals/%s", approval);
        assert_int_equal(api("GET", S.carol, path, NULL, &out), 404);
        free(out);
        assert_int_equal(decide(S.carol, approval, "{\"decision\":\"approve\"}", &out), 404);
        free(out);

        assert_int_equal(
            decide(S.bob, approval, "{\"decision\":\"approve\",\"comment\":\"looks good\"}", &out),
            200);
        assert_non_null(strstr(out, "\"status\":\"approved\""));
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        /* the node's output is the decision: a later node read the comment */
        assert_db_equal("looks good", S.db,
                        "SELECT output->'done'->>'comment' FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'approval.decided' AND data->>'by' = 'bob' AND data->>'via' = 'api'",
                        run);
        /* a second decision (the owner's) is a 409 with the winning decision */
        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"reject\"}", &out), 409);
        assert_non_null(strstr(out, "\"decided_by\":\"bob\""));
        free(out);
        free(approval);
        free(run);
        free(wf);
}

static void cli_round_trip(void **state)
{
        char *wf = workflow("owner", WF_OWNER), *run;
        char *approval = waiting_approval(wf, &run);
        char log[512];
        (void)state;

        snprintf(log, sizeof(log), "%s/cli.log", S.dir);
        const char *list[] = {"approval", "list",    "--status", "pending", "--server",
                              S.base,     "--token", S.alice,    NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(list, NULL, log), 0, 30000), 0);
        const char *args[] = {"approval", "reject", approval,  "--comment", "not today",
                              "--server", S.base,   "--token", S.alice,     NULL};
        assert_exit_code(test_stop_process(test_spawn_agently(args, NULL, log), 0, 30000), 0);
        /* rejected: the node fails (class rejected) and with it the run */
        assert_true(worker_test_wait_status(S.db, run, "failed", 30000));
        assert_db_equal("rejected cli alice", S.db,
                        "SELECT status || ' ' || decided_via || ' ' || decided_by FROM approvals "
                        "WHERE id = '%s'",
                        approval);
        assert_db_equal("rejected", S.db,
                        "SELECT error->>'class' FROM workflow_runs WHERE id = '%s'", run);
        free(approval);
        free(run);
        free(wf);
}

/* The link of a notification of approval `approval` for decision ("approve"/"reject"),
 * as the dispatcher would deliver it (the token part only). */
static char *link_token(const char *approval, const char *decision)
{
        char *url = test_db_value(S.db,
                                  "SELECT payload->'links'->>'%s' FROM notifications WHERE "
                                  "payload->>'approval_id' = '%s' ORDER BY created_at LIMIT 1",
                                  decision, approval);
        assert_non_null(url);
        char *slash = strrchr(url, '/');
        assert_non_null(slash);
        char *token = strdup(slash + 1);
        free(url);
        return token;
}

static long via_link(const char *method, const char *token, const char *accept, const char *body,
                     char **out)
{
        char url[512], h[128];
        /* a browser's form post */
        const char *headers[] = {h, "Content-Type: application/x-www-form-urlencoded", NULL};

        snprintf(url, sizeof(url), "%s/v1/approval-links/%s", S.base, token);
        snprintf(h, sizeof(h), "Accept: %s", accept);
        return test_http(method, url, headers, body, out);
}

static void signed_link_round_trip(void **state)
{
        char *wf = workflow("minimal", WF_MIN), *run, *out = NULL;
        char *approval = waiting_approval(wf, &run);
        (void)state;

        /* the notification went to the outbox with the state change: one webhook notice for
         * the one reviewer, with links bound to the approval and the decision */
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM notifications WHERE workflow_run_id = '%s' AND "
                        "channel = 'webhook' AND payload->>'event' = 'approval.requested' AND "
                        "payload->>'to' = 'ops@example.com'",
                        run);
        char *yes = link_token(approval, "approve"), *no = link_token(approval, "reject");

        /* GET shows a page and decides nothing (a mail scanner following the link) */
        assert_int_equal(via_link("GET", yes, "text/html", NULL, &out), 200);
        assert_non_null(strstr(out, "<form method=\"post\">"));
        assert_non_null(strstr(out, "please approve")); /* the draft, as context */
        free(out);
        assert_int_equal(via_link("GET", yes, "text/html", NULL, &out), 200);
        free(out);
        assert_db_equal("pending", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);

        /* POST decides, as the reviewer the link was sent to */
        assert_int_equal(via_link("POST", yes, "text/html", "comment=fine+by+me%21", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        assert_db_equal("fine by me! ops@example.com", S.db,
                        "SELECT (output->'done'->>'comment') || ' ' || (output->'done'->>'by') "
                        "FROM workflow_runs WHERE id = '%s'",
                        run);
        assert_db_equal("link", S.db, "SELECT decided_via FROM approvals WHERE id = '%s'",
                        approval);
        /* reused: refused; the other link of the same reviewer: already decided */
        assert_int_equal(via_link("POST", yes, "application/json", NULL, &out), 410);
        free(out);
        assert_int_equal(via_link("GET", yes, "application/json", NULL, &out), 410);
        free(out);
        assert_int_equal(via_link("POST", no, "application/json", NULL, &out), 409);
        free(out);
        /* a token nobody issued */
        assert_int_equal(
            via_link("POST", "0000000000000000000000000000000000000000000000000000000000000000",
                     "application/json", NULL, &out),
            404);
        free(out);
        free(yes);
        free(no);
        free(approval);
        free(run);

        /* an expired link is refused too, and decides nothing */
        approval = waiting_approval(wf, &run);
        yes = link_token(approval, "approve");
        free(
            test_db_value(S.db,
                          "WITH u AS (UPDATE approval_links SET expires_at = now() - interval "
                          "'1 second' WHERE approval_id = '%s' RETURNING 1) SELECT count(*) FROM u",
                          approval));
        assert_int_equal(via_link("GET", yes, "application/json", NULL, &out), 410);
        free(out);
        assert_int_equal(via_link("POST", yes, "application/json", NULL, &out), 410);
        free(out);
        assert_db_equal("pending", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);
        /* a stranger cannot decide it by API either */
        assert_int_equal(decide(S.carol, approval, "{\"decision\":\"approve\"}", &out), 404);
        free(out);
        assert_int_equal(decide(S.bob, approval, "{\"decision\":\"approve\"}", &out), 404);
        free(out);
        assert_int_equal(api("POST", S.alice, "/v1/runs/x/cancel", NULL, &out), 404);
        free(out);
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", run);
        assert_int_equal(api("POST", S.alice, path, NULL, &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "canceled", 30000));
        assert_db_equal("canceled", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);
        free(yes);
        free(approval);
        free(run);
        free(wf);
}

/* ---- 1,000 concurrent decisions on 100 approvals ---- */

#define RACE_APPROVALS 100
#define RACE_PER       10
#define RACE_THREADS   20

static struct {
        char *approvals[RACE_APPROVALS];
        long status[RACE_APPROVALS * RACE_PER];
        char *body[RACE_APPROVALS * RACE_PER];
        int next;
        pthread_mutex_t lock;
} R;

static void *racer(void *arg)
{
        (void)arg;
        for (;;) {
                pthread_mutex_lock(&R.lock);
                int i = R.next++;
                pthread_mutex_unlock(&R.lock);
                if (i >= RACE_APPROVALS * RACE_PER)
                        return NULL;
                /* request i decides approval i % 100 (so the ten for one approval are spread
                 * over the whole race), half approve, half reject */
                R.status[i] = decide(S.alice, R.approvals[i % RACE_APPROVALS],
                                     (i / RACE_APPROVALS) % 2 ? "{\"decision\":\"reject\"}"
                                                              : "{\"decision\":\"approve\"}",
                                     &R.body[i]);
        }
}

static void concurrent_decisions_one_wins(void **state)
{
        char *wf = workflow("race", WF_OWNER), *runs[RACE_APPROVALS];
        pthread_t threads[RACE_THREADS];
        int ok = 0, conflict = 0;
        (void)state;

        memset(&R, 0, sizeof(R));
        pthread_mutex_init(&R.lock, NULL);
        for (int i = 0; i < RACE_APPROVALS; i++)
                runs[i] = worker_test_run(S.db, wf, NULL);
        for (int i = 0; i < RACE_APPROVALS; i++) {
                free(runs[i]);
                R.approvals[i] = waiting_approval(wf, &runs[i]) /* a fresh run each */;
        }
        for (int t = 0; t < RACE_THREADS; t++)
                assert_int_equal(pthread_create(&threads[t], NULL, racer, NULL), 0);
        for (int t = 0; t < RACE_THREADS; t++)
                pthread_join(threads[t], NULL);

        for (int i = 0; i < RACE_APPROVALS * RACE_PER; i++) {
                if (R.status[i] == 200)
                        ok++;
                else if (R.status[i] == 409)
                        conflict++;
                else
                        fail_msg("decision %d answered %ld: %s", i, R.status[i],
                                 R.body[i] ? R.body[i] : "");
        }
        assert_int_equal(ok, RACE_APPROVALS);
        assert_int_equal(conflict, RACE_APPROVALS * (RACE_PER - 1));
        for (int a = 0; a < RACE_APPROVALS; a++) {
                /* exactly one decision each, one vote, one event; every 409 names the winner */
                char *status = test_db_value(S.db,
                                             "SELECT status FROM approvals WHERE id = '%s' AND "
                                             "jsonb_array_length(votes) = 1",
                                             R.approvals[a]);
                assert_non_null(status);
                for (int k = 0; k < RACE_PER; k++) {
                        int i = k * RACE_APPROVALS + a;
                        if (R.status[i] == 409) {
                                char want[64];
                                snprintf(want, sizeof(want), "\"status\":\"%s\"", status);
                                assert_non_null(strstr(R.body[i], want));
                        }
                }
                free(status);
                assert_db_equal("1", S.db,
                                "SELECT count(*) FROM logs l JOIN approvals a ON "
                                "a.workflow_run_id = l.workflow_run_id WHERE a.id = '%s' AND "
                                "l.kind = 'approval.decided'",
                                R.approvals[a]);
        }
        for (int i = 0; i < RACE_APPROVALS; i++) {
                assert_true(worker_test_wait_status(S.db, runs[i], "completed|failed", 60000));
                free(runs[i]);
                free(R.approvals[i]);
        }
        for (int i = 0; i < RACE_APPROVALS * RACE_PER; i++)
                free(R.body[i]);
        pthread_mutex_destroy(&R.lock);
        free(wf);
}

static void quorum_of_two(void **state)
{
        char *wf = workflow("quorum", WF_QUORUM), *run, *out = NULL;
        char *approval = waiting_approval(wf, &run);
        (void)state;

        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"approve\"}", &out), 200);
        assert_non_null(strstr(out, "\"status\":\"pending\""));
        free(out);
        /* the same person twice does not make two */
        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"approve\"}", &out), 409);
        free(out);
        assert_db_equal("pending", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);
        assert_db_equal("waiting", S.db, "SELECT status FROM workflow_runs WHERE id = '%s'", run);
        assert_int_equal(decide(S.bob, approval, "{\"decision\":\"approve\"}", &out), 200);
        assert_non_null(strstr(out, "\"status\":\"approved\""));
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        assert_db_equal("2", S.db,
                        "SELECT jsonb_array_length(output->'ok'->'votes') FROM workflow_runs "
                        "WHERE id = '%s'",
                        run);
        free(approval);
        free(run);
        free(wf);
}

static void forbid_self_approval(void **state)
{
        char *wf = workflow("self", WF_SELF), *run, *out = NULL;
        char *approval = waiting_approval(wf, &run);
        (void)state;

        /* on: the person who started the run (alice, its owner) cannot approve it */
        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"approve\"}", &out), 403);
        assert_non_null(strstr(out, "forbid_self_approval"));
        free(out);
        assert_int_equal(decide(S.bob, approval, "{\"decision\":\"approve\"}", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        free(approval);
        free(run);
        free(wf);

        /* off (the default): she can */
        wf = workflow("owner2", WF_OWNER);
        approval = waiting_approval(wf, &run);
        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"approve\"}", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        free(approval);
        free(run);
        free(wf);
}

static void timeout_paths(void **state)
{
        char *w_reject = workflow("treject", WF_T_REJECT), *w_fail = workflow("tfail", WF_T_FAIL);
        char *w_approve = workflow("tapprove", WF_T_APPROVE);
        char *w_esc = workflow("tescalate", WF_T_ESCALATE);
        char *r_reject, *r_fail, *r_approve, *r_esc;
        char *a_reject = waiting_approval(w_reject, &r_reject);
        char *a_fail = waiting_approval(w_fail, &r_fail);
        char *a_approve = waiting_approval(w_approve, &r_approve);
        char *a_esc = waiting_approval(w_esc, &r_esc);
        char *first_deadline =
            test_db_value(S.db, "SELECT expires_at FROM approvals WHERE id = '%s'", a_esc);
        (void)state;

        /* reject: the node fails as rejected by the timeout */
        assert_true(worker_test_wait_status(S.db, r_reject, "failed", 30000));
        assert_db_equal("rejected timeout", S.db,
                        "SELECT status || ' ' || decided_by FROM approvals WHERE id = '%s'",
                        a_reject);
        assert_db_equal("rejected", S.db,
                        "SELECT error->>'class' FROM workflow_runs WHERE id = '%s'", r_reject);
        /* fail: the node fails with class timeout */
        assert_true(worker_test_wait_status(S.db, r_fail, "failed", 30000));
        assert_db_equal("expired", S.db, "SELECT status FROM approvals WHERE id = '%s'", a_fail);
        assert_db_equal("timeout", S.db,
                        "SELECT error->>'class' FROM workflow_runs WHERE id = '%s'", r_fail);
        /* approve: the run goes on */
        assert_true(worker_test_wait_status(S.db, r_approve, "completed", 30000));

        /* escalate: the next level's contact is notified, may decide, and the deadline moved */
        for (int i = 0; i < 200; i++) {
                if (test_db_int(S.db, "SELECT level FROM approvals WHERE id = '%s'", a_esc) == 1)
                        break;
                usleep(100 * 1000);
        }
        assert_db_equal("1 pending", S.db,
                        "SELECT level || ' ' || status FROM approvals WHERE id = '%s'", a_esc);
        assert_db_equal("t", S.db,
                        "SELECT expires_at > '%s'::timestamptz FROM approvals WHERE id = '%s'",
                        first_deadline, a_esc);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM notifications WHERE payload->>'approval_id' = '%s' "
                        "AND payload->>'event' = 'approval.escalated' AND channel = 'email' AND "
                        "target = 'boss@example.com'",
                        a_esc);
        assert_db_equal("t", S.db,
                        "SELECT reviewers @> ARRAY['boss@example.com'] FROM approvals WHERE id = "
                        "'%s'",
                        a_esc);
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'approval.escalated'",
                        r_esc);
        /* the ladder's last level times out too: the node fails with class timeout */
        assert_true(worker_test_wait_status(S.db, r_esc, "failed", 30000));
        assert_db_equal("expired", S.db, "SELECT status FROM approvals WHERE id = '%s'", a_esc);

        char *all[] = {w_reject, w_fail,   w_approve, w_esc,     r_reject, r_fail,        r_approve,
                       r_esc,    a_reject, a_fail,    a_approve, a_esc,    first_deadline};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
                free(all[i]);
}

static void kill_while_waiting_loses_nothing(void **state)
{
        char *wf = workflow("killed", WF_MIN), *run, *out = NULL;
        char *approval = waiting_approval(wf, &run);
        long long notices;
        (void)state;

        notices = test_db_int(S.db,
                              "SELECT count(*) FROM notifications WHERE workflow_run_id = "
                              "'%s'",
                              run);
        assert_int_equal(notices, 1);
        assert_int_ge(test_stop_process(S.worker, SIGKILL, 10000), 0);
        /* the run is planned again by a new worker (made due now, as a wake-up would): it
         * finds its approval and asks nobody again */
        spawn_worker();
        long long claims = test_db_int(S.db,
                                       "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND "
                                       "kind IN ('run.started', 'run.resumed', 'run.recovered')",
                                       run);
        free(test_db_value(S.db,
                           "WITH u AS (UPDATE workflow_runs SET run_at = now() WHERE id = '%s' "
                           "RETURNING 1) SELECT count(*) FROM u",
                           run));
        for (int i = 0; i < 300; i++) {
                if (test_db_int(
                        S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind IN "
                        "('run.started', 'run.resumed', 'run.recovered')",
                        run) > claims)
                        break;
                usleep(100 * 1000);
        }
        assert_int_gt(test_db_int(S.db,
                                  "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND "
                                  "kind IN ('run.started', 'run.resumed', 'run.recovered')",
                                  run),
                      claims);
        assert_true(worker_test_wait_status(S.db, run, "waiting", 30000));
        assert_db_equal("1", S.db, "SELECT count(*) FROM approvals WHERE workflow_run_id = '%s'",
                        run);
        assert_int_equal(test_db_int(S.db,
                                     "SELECT count(*) FROM notifications WHERE workflow_run_id = "
                                     "'%s'",
                                     run),
                         notices);
        assert_int_equal(decide(S.alice, approval, "{\"decision\":\"approve\"}", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM logs WHERE workflow_run_id = '%s' AND kind = "
                        "'approval.requested'",
                        run);
        free(approval);
        free(run);
        free(wf);
}

/* The link sent to `to` about approval `approval` in a notification of event, for decision
 * (the token part only). */
static char *link_token_to(const char *approval, const char *event, const char *to,
                           const char *decision)
{
        char *url = test_db_value(S.db,
                                  "SELECT payload->'links'->>'%s' FROM notifications WHERE "
                                  "payload->>'approval_id' = '%s' AND payload->>'event' = '%s' "
                                  "AND payload->>'to' = '%s' ORDER BY created_at LIMIT 1",
                                  decision, approval, event, to);
        assert_non_null(url);
        char *token = strdup(strrchr(url, '/') + 1);
        free(url);
        return token;
}

/*
 * Reassignment: bob, the reviewer, hands his place to carol. Carol is notified (a notice of
 * her own in the outbox, with links bound to her), sees the approval in her inbox and may
 * decide; bob can no longer decide, by API or by the link he was sent; the handover is an
 * event of the run.
 */
static void reassigned_reviewer_decides_old_one_cannot(void **state)
{
        static const char WF_HANDOVER[] =
            "{\"name\":\"handover\",\"nodes\":["
            "{\"id\":\"ok\",\"type\":\"approval\",\"reviewers\":[\"bob\"],"
            "\"channels\":[{\"kind\":\"webhook\",\"url\":\"SINK/hook\"}]},"
            "{\"id\":\"done\",\"type\":\"transform\",\"after\":[\"ok\"],"
            "\"output\":{\"by\":\"${ nodes.ok.output.by }\"}}]}";
        char *wf = workflow("handover", WF_HANDOVER), *run, *out = NULL, path[256];
        char *approval = waiting_approval(wf, &run);
        char *bob_yes = link_token_to(approval, "approval.requested", "bob", "approve");
        (void)state;

        /* carol is no reviewer yet: she can neither take the place nor decide */
        snprintf(path, sizeof(path), "/v1/approvals/%s/reassign", approval);
        assert_int_equal(api("POST", S.carol, path, "{\"to\":\"carol\"}", &out), 404);
        free(out);
        assert_int_equal(
            api("POST", S.bob, path, "{\"to\":\"Carol\",\"comment\":\"on leave\"}", &out), 200);
        /* the answer shows the new reviewers, although bob may no longer read the approval */
        assert_non_null(strstr(out, "\"reviewers\":[\"carol\"]"));
        free(out);
        assert_db_equal("{carol}", S.db, "SELECT reviewers::text FROM approvals WHERE id = '%s'",
                        approval);
        /* the event: who handed whose place to whom, and why */
        assert_db_equal("bob|bob|carol|on leave", S.db,
                        "SELECT (data->>'by') || '|' || (data->>'from') || '|' || (data->>'to') "
                        "|| '|' || (data->>'comment') FROM logs WHERE workflow_run_id = '%s' AND "
                        "kind = 'approval.reassigned'",
                        run);
        /* carol's notice: in the outbox, for her, with links of her own */
        assert_db_equal("1", S.db,
                        "SELECT count(*) FROM notifications WHERE workflow_run_id = '%s' AND "
                        "channel = 'webhook' AND payload->>'event' = 'approval.reassigned' AND "
                        "payload->>'to' = 'carol'",
                        run);
        char *carol_no = link_token_to(approval, "approval.reassigned", "carol", "reject");
        assert_int_equal(api("GET", S.carol, "/v1/inbox", NULL, &out), 200);
        assert_non_null(strstr(out, approval));
        free(out);
        assert_int_equal(api("GET", S.bob, "/v1/inbox", NULL, &out), 200);
        assert_null(strstr(out, approval));
        free(out);

        /* bob cannot decide any more: not by API, not by the link he was sent */
        assert_int_equal(decide(S.bob, approval, "{\"decision\":\"approve\"}", &out), 404);
        free(out);
        assert_int_equal(via_link("POST", bob_yes, "application/json", NULL, &out), 410);
        free(out);
        assert_db_equal("pending", S.db, "SELECT status FROM approvals WHERE id = '%s'", approval);
        /* carol's link works: a GET shows her page (and decides nothing) */
        assert_int_equal(via_link("GET", carol_no, "application/json", NULL, &out), 200);
        free(out);

        /* carol decides */
        assert_int_equal(decide(S.carol, approval, "{\"decision\":\"approve\"}", &out), 200);
        free(out);
        assert_true(worker_test_wait_status(S.db, run, "completed", 30000));
        assert_db_equal("carol", S.db,
                        "SELECT output->'done'->>'by' FROM workflow_runs WHERE id = '%s'", run);
        free(carol_no);
        free(bob_yes);
        free(approval);
        free(run);
        free(wf);
}

/* One inbox: an approval, an escalated run and an agent's question (a run in needs_input as
 * the worker parks it for ask_human, 0012), each with its answer form; a stranger sees none
 * of them. */
static void inbox_lists_every_kind(void **state)
{
        static const char WF_ESC[] =
            "{\"name\":\"esc\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"request\":{"
            "\"method\":\"POST\",\"url\":\"SINK/a?fail=100\"},\"retry\":{\"max_attempts\":1},"
            "\"on_failure\":\"escalate\"}]}";
        char *w_ap = workflow("inbox", WF_OWNER), *w_esc = workflow("esc", WF_ESC);
        char *run_ap, *approval = waiting_approval(w_ap, &run_ap), *out = NULL;
        char *run_esc = worker_test_run(S.db, w_esc, NULL);
        (void)state;

        assert_true(worker_test_wait_status(S.db, run_esc, "needs_input", 30000));
        char *question = test_db_value(
            S.db,
            "INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, "
            "status, run_at, wait_reason, error) SELECT user_id, id, name, version, "
            "'needs_input', 'infinity', 'the agent asks: which source?', "
            "'{\"class\":\"needs_input\",\"message\":\"the agent asks: which source?\","
            "\"waiting_for\":{\"kind\":\"ask_human\",\"question\":\"Which source?\"}}' "
            "FROM workflows WHERE id = '%s' RETURNING id",
            w_ap);
        assert_non_null(question);

        assert_int_equal(api("GET", S.alice, "/v1/inbox", NULL, &out), 200);
        json_error_t jerr;
        json_t *page = json_loads(out, 0, &jerr), *item;
        assert_non_null(page);
        int seen = 0;
        size_t i;
        json_array_foreach (json_object_get(page, "data"), i, item) {
                const char *kind = json_string_value(json_object_get(item, "kind"));
                const char *id = json_string_value(json_object_get(item, "id"));
                const char *path =
                    json_string_value(json_object_get(json_object_get(item, "answer"), "path"));
                char want[256];
                if (!strcmp(kind, "approval") && !strcmp(id, approval)) {
                        snprintf(want, sizeof(want), "/v1/approvals/%s/decide", approval);
                        assert_string_equal(path, want);
                        seen |= 1;
                } else if (!strcmp(kind, "escalation") && !strcmp(id, run_esc)) {
                        snprintf(want, sizeof(want), "/v1/runs/%s/resolve", run_esc);
                        assert_string_equal(path, want);
                        assert_string_equal(json_string_value(json_object_get(item, "node_id")),
                                            "a");
                        seen |= 2;
                } else if (!strcmp(kind, "question") && !strcmp(id, question)) {
                        snprintf(want, sizeof(want), "/v1/runs/%s/input", question);
                        assert_string_equal(path, want);
                        seen |= 4;
                }
        }
        assert_int_equal(seen, 7);
        json_decref(page);
        free(out);
        assert_int_equal(api("GET", S.alice, "/v1/inbox?kind=question", NULL, &out), 200);
        assert_null(strstr(out, "\"kind\":\"approval\""));
        assert_non_null(strstr(out, question));
        free(out);
        assert_int_equal(api("GET", S.carol, "/v1/inbox", NULL, &out), 200);
        assert_non_null(strstr(out, "\"data\":[]"));
        free(out);

        /* a run that ends leaves nothing in the inbox */
        char path[128];
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", run_esc);
        assert_int_equal(api("POST", S.alice, path, NULL, &out), 200);
        free(out);
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", run_ap);
        assert_int_equal(api("POST", S.alice, path, NULL, &out), 200);
        free(out);
        assert_int_equal(api("GET", S.alice, "/v1/inbox", NULL, &out), 200);
        assert_null(strstr(out, approval));
        assert_null(strstr(out, run_esc));
        free(out);
        snprintf(path, sizeof(path), "/v1/runs/%s/cancel", question);
        assert_int_equal(api("POST", S.alice, path, NULL, &out), 200);
        free(out);
        free(question);
        free(approval);
        free(run_ap);
        free(run_esc);
        free(w_ap);
        free(w_esc);
}

/* Last: the API and the worker stop cleanly on SIGTERM (exit 0: under ASan, no leak and no
 * error in either process through everything above). */
static void processes_stop_cleanly(void **state)
{
        (void)state;
        assert_exit_code(test_stop_process(S.worker, SIGTERM, 30000), 0);
        S.worker = -1;
        assert_exit_code(test_stop_process(S.api, SIGTERM, 30000), 0);
        S.api = -1;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(api_round_trip_by_a_reviewer),
            cmocka_unit_test(cli_round_trip),
            cmocka_unit_test(signed_link_round_trip),
            cmocka_unit_test(concurrent_decisions_one_wins),
            cmocka_unit_test(quorum_of_two),
            cmocka_unit_test(forbid_self_approval),
            cmocka_unit_test(timeout_paths),
            cmocka_unit_test(kill_while_waiting_loses_nothing),
            cmocka_unit_test(reassigned_reviewer_decides_old_one_cannot),
            cmocka_unit_test(inbox_lists_every_kind),
            cmocka_unit_test(processes_stop_cleanly),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
