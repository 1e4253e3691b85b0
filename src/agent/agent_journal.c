/*
 * The statements of an agent session, on the worker loop's connection, each its own
 * transaction (never inside a loop turn's). Writes are fenced on the run's lease epoch:
 * agently_agent_write() (migrations/0027_agent_write.sql, latest 0043) writes what the session held
 * (events, the event and refusal stubs) and a call's journal row with its usage, the run's
 * totals and the events in one statement, or nothing when the lease is lost. The agent
 * run's totals and the user's counters take the journal rows' usage when the agent run
 * leaves running (its status, below) or every AGENT_USAGE_FLUSH_ROWS rows (0036).
 */
#include "agent_internal.h"
#include "pgjson.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "cleanup.h"
#include "db.h"
#include "runtime_http.h"
#include "secrets.h"
#include "strutil.h"

static char *dump(const json_t *v)
{
        return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

static int failed(char **error, int r, const char *what)
{
        if (error && !*error)
                *error = str_printf("could not %s: %s", what, db_last_error());
        return r < 0 ? r : -EIO;
}

/*
 * Finding or creating a session's agent run is fenced like every other write of the
 * session: on the run's record at this lease epoch, status running, locked in the same
 * statement (a rescue that moved the epoch on is waited for, and then nothing is found or
 * made). No row: the lease was lost. FENCE(run, epoch) names the parameters.
 */
#define FENCE(run, epoch)                                                                          \
        "fence AS (SELECT 1 FROM workflow_runs r WHERE r.id = $" #run                              \
        " AND r.lease_epoch = $" #epoch " AND r.status = 'running' FOR UPDATE)"

/* An agent run a (a row of agent_runs) with its totals as the budgets see them: its own
 * and the usage of its journal rows after usage_seq (agently_agent_unflushed, 0036: a
 * session that resumes after a crash counts every journaled call). */
#define AGENT_RUN_COLUMNS                                                                          \
        "a.id, a.status, a.tokens_in + u.tokens_in, a.tokens_out + u.tokens_out,"                  \
        " (a.cost_usd + u.cost_usd)::float8, a.llm_calls + u.llm_calls,"                           \
        " a.tool_calls + u.tool_calls, a.budget, (extract(epoch FROM a.started_at) * "             \
        "1000)::bigint,"                                                                           \
        " (extract(epoch FROM clock_timestamp()) * 1000)::bigint, a.usage_seq, u.last_seq"
#define AGENT_RUN_USAGE " LATERAL agently_agent_unflushed(a.id, a.usage_seq) u"

static const char OPEN_SQL[] = "WITH " FENCE(
    1, 7) ","
          " found AS ("
          "  SELECT a.* FROM agent_runs a"
          "  WHERE a.workflow_run_id = $1 AND a.node_id = $2 AND a.attempt = $3"
          "    AND a.parent_agent_run_id IS NULL AND EXISTS (SELECT 1 FROM fence)"
          "  ORDER BY a.started_at LIMIT 1),"
          " ins AS ("
          "  INSERT INTO agent_runs (user_id, workflow_run_id, node_id, attempt, model, budget)"
          "  SELECT $4, $1, $2, $3, left($5, 200), $6::jsonb"
          "  WHERE NOT EXISTS (SELECT 1 FROM found) AND EXISTS (SELECT 1 FROM fence)"
          "  RETURNING *)"
          " SELECT " AGENT_RUN_COLUMNS " FROM ("
          "  SELECT * FROM found UNION ALL SELECT * FROM ins) a," AGENT_RUN_USAGE;

static const char CHILD_NEW_SQL[] = "WITH " FENCE(
    1, 2) ", ins AS (INSERT INTO agent_runs (user_id, workflow_run_id, node_id, attempt,"
          " parent_agent_run_id, model, budget)"
          " SELECT p.user_id, p.workflow_run_id, p.node_id, p.attempt, p.id, p.model, p.budget"
          " FROM agent_runs p, fence WHERE p.id = $3 RETURNING *)"
          " SELECT " AGENT_RUN_COLUMNS " FROM ins a," AGENT_RUN_USAGE;

static const char CHILD_SQL[] =
    "WITH " FENCE(1, 2) " SELECT " AGENT_RUN_COLUMNS " FROM agent_runs a, fence," AGENT_RUN_USAGE
                        " WHERE a.id = $4 AND a.parent_agent_run_id = $3";

static const char RUNNING_SQL[] =
    "WITH " FENCE(1, 2) " UPDATE agent_runs a SET status = 'running', finished_at = NULL,"
                        " waiting_for = NULL FROM fence WHERE a.id = $3 AND a.status <> 'running'";

/* The agent run's row as read by the statements above (status running from here on). */
static int open_row(struct agent_session *s, PGresult *res, int r, char **error)
{
        _cleanup_pgresult_ PGresult *upd = NULL;
        json_error_t jerr;

        if (!res)
                return failed(error, r, "find or create the agent run");
        if (PQntuples(res) != 1) { /* the fence found no run at our epoch */
                if (error && !*error)
                        *error = strdup("the run's lease was lost");
                return -ESTALE;
        }
        str_copy(s->agent_run_id, sizeof(s->agent_run_id), PQgetvalue(res, 0, 0));
        s->tokens_in = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        s->tokens_out = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        s->cost_usd = strtod(PQgetvalue(res, 0, 4), NULL);
        s->llm_calls = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
        s->tool_calls = strtoll(PQgetvalue(res, 0, 6), NULL, 10);
        s->budget = pgjson_loads(PQgetvalue(res, 0, 7), 0, &jerr);
        s->started_at_ms = strtoll(PQgetvalue(res, 0, 8), NULL, 10);
        s->db_offset_ms = strtoll(PQgetvalue(res, 0, 9), NULL, 10) - agent_now_ms();
        s->usage_seq = (int)strtol(PQgetvalue(res, 0, 10), NULL, 10);
        s->last_seq = (int)strtol(PQgetvalue(res, 0, 11), NULL, 10);
        if (!s->budget)
                return -ENOMEM;
        if (strcmp(PQgetvalue(res, 0, 1), "running") != 0)
                return agent_db_set_running(s);
        return 0;
}

int agent_db_set_running(struct agent_session *s)
{
        char epoch[24];
        const char *params[] = {s->run_id, epoch, s->agent_run_id};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        res = db_query(s->host->cfg.db, RUNNING_SQL, 3, params, &r);
        if (!res)
                return r < 0 ? r : -EIO;
        return strcmp(PQcmdTuples(res), "1") == 0 ? 0 : -ESTALE;
}

int agent_db_open_run(struct agent_session *s, char **error)
{
        char attempt[16], epoch[24];
        json_t *budget = json_object_get(s->agent, "budget");
        _cleanup_free_ char *budget_text = dump(json_is_object(budget) ? budget : NULL);
        const char *params[] = {s->run_id,
                                s->node_id,
                                attempt,
                                s->user_id,
                                json_string_value(json_object_get(s->agent, "model")),
                                budget_text ? budget_text : "{}",
                                epoch};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        snprintf(attempt, sizeof(attempt), "%d", s->attempt);
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        res = db_query(s->host->cfg.db, OPEN_SQL, 7, params, &r);
        return open_row(s, res, r, error);
}

int agent_db_open_child(struct agent_session *s, const char *parent_id, const char *child_id,
                        char **error)
{
        char epoch[24];
        const char *params[] = {s->run_id, epoch, parent_id, child_id};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        res = db_query(s->host->cfg.db, child_id ? CHILD_SQL : CHILD_NEW_SQL, child_id ? 4 : 3,
                       params, &r);
        return open_row(s, res, r, error);
}

static const char JOURNAL_SQL[] =
    "SELECT seq, kind, request_sha256, request, response, stubs,"
    " coalesce(jsonb_array_length(stubs), 0), sum(coalesce(jsonb_array_length(stubs), 0)) OVER ()"
    " FROM agent_journal WHERE agent_run_id = $1 ORDER BY seq";

/* A row's stubs (0037) as entries of their own, before it (seq: the row's), each as the
 * stub row it stands for was: its request {"type": kind}, its response {}. */
static int load_stubs(struct agent_session *s, int seq, const char *text, size_t total)
{
        json_error_t jerr;
        _cleanup_json_ json_t *stubs = pgjson_loads(text, 0, &jerr);
        json_t *st;
        size_t i;

        if (!json_is_array(stubs))
                return -EINVAL;
        json_array_foreach (stubs, i, st) {
                struct agent_journal_entry *e = &s->journal[s->njournal];
                const char *kind = json_string_value(json_object_get(st, "kind"));
                const char *hash = json_string_value(json_object_get(st, "sha256"));
                if (!kind || !hash || s->njournal >= total)
                        return -EINVAL;
                e->seq = seq;
                str_copy(e->kind, sizeof(e->kind), kind);
                str_copy(e->hash, sizeof(e->hash), hash);
                e->request = json_pack("{s:s}", "type", kind);
                e->response = json_object();
                s->njournal++; /* freed with the session either way */
                if (!e->request || !e->response)
                        return -ENOMEM;
        }
        return 0;
}

int agent_db_load_journal(struct agent_session *s, char **error)
{
        const char *params[] = {s->agent_run_id};
        _cleanup_pgresult_ PGresult *res = NULL;
        json_error_t jerr;
        int r = 0, n;
        size_t total;

        res = db_query(s->host->cfg.db, JOURNAL_SQL, 1, params, &r);
        if (!res)
                return failed(error, r, "read the agent's journal");
        n = PQntuples(res);
        total = (size_t)n + (n > 0 ? strtoull(PQgetvalue(res, 0, 7), NULL, 10) : 0);
        s->journal = calloc(total > 0 ? total : 1, sizeof(*s->journal));
        if (!s->journal)
                return -ENOMEM;
        for (int i = 0; i < n; i++) {
                const char *call_id;
                int seq = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
                if (strtol(PQgetvalue(res, i, 6), NULL, 10) > 0 &&
                    (r = load_stubs(s, seq, PQgetvalue(res, i, 5), total)) < 0) {
                        if (r == -EINVAL && error && !*error)
                                *error = str_printf("journal row %d has bad stubs", seq);
                        return r;
                }
                if (s->njournal >= total)
                        return -EIO;
                struct agent_journal_entry *e = &s->journal[s->njournal];
                e->seq = seq;
                str_copy(e->kind, sizeof(e->kind), PQgetvalue(res, i, 1));
                str_copy(e->hash, sizeof(e->hash), PQgetvalue(res, i, 2));
                e->request = pgjson_loads(PQgetvalue(res, i, 3), 0, &jerr);
                if (!PQgetisnull(res, i, 4))
                        e->response = pgjson_loads(PQgetvalue(res, i, 4), JSON_DECODE_ANY, &jerr);
                if (!e->request || (!PQgetisnull(res, i, 4) && !e->response))
                        return -ENOMEM;
                call_id = json_string_value(json_object_get(e->request, "call_id"));
                if (call_id && !(e->call_id = strdup(call_id)))
                        return -ENOMEM;
                s->njournal++;
        }
        s->unmatched = s->njournal;
        return 0;
}

/* The agent's api_key_secret through the vault's resolver (src/secrets: secrets_resolve),
 * which also registers the key with the process's redaction choke point; an exact name
 * first, then its lower-case spelling (names were lower-case only before 0014). */
int agent_db_load_api_key(struct agent_session *s, const char *secret, char **error)
{
        struct secrets_kms kms;
        const char *value = NULL;
        size_t len = 0;
        int r;

        if (secrets_kms_init(&kms, s->host->cfg.secrets_dir) < 0)
                return -ENOMEM;
        r = secrets_resolve(s->host->cfg.db, &kms, s->user_id, secret, &value, &len, error);
        if (r == -ENOENT) {
                _cleanup_free_ char *lower = strdup(secret);
                for (char *c = lower; c && *c; c++)
                        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
                if (lower && strcmp(lower, secret) != 0) {
                        free(*error);
                        *error = NULL;
                        r = secrets_resolve(s->host->cfg.db, &kms, s->user_id, lower, &value, &len,
                                            error);
                }
        }
        secrets_kms_release(&kms);
        if (r == -ENOENT) {
                free(*error);
                *error = str_printf("the agent's api_key_secret '%s' is not a stored secret of "
                                    "this user; store it with: agently secret set %s",
                                    secret, secret);
        }
        if (r < 0)
                return r;
        /* the session owns its copy (wiped and freed with the session) */
        s->api_key = strndup(value, len);
        return s->api_key ? 0 : -ENOMEM;
}

json_t *agent_events_named(const struct agent_session *s, json_t *events)
{
        json_t *e;
        size_t i;

        if (!s->agent_run_id[0])
                return events;
        json_array_foreach (events, i, e) {
                json_t *data = json_object_get(e, "data");
                if (!json_is_object(data)) {
                        if (data) /* a non-object payload keeps its place under "value" */
                                data = json_pack("{s:O}", "value", data);
                        else
                                data = json_object();
                        if (!data || json_object_set_new(e, "data", data) < 0)
                                continue;
                }
                json_object_set_new(data, "agent_run_id", json_string(s->agent_run_id));
        }
        return events;
}

/*
 * Every journal write of a session is one agently_agent_write() (0027, latest 0043): the rows it
 * held since its last write first, then rows (taken; NULL: the held ones alone). Returns the seq of
 * the last new journal row (0 for none), -ESTALE when the lease was lost (nothing written). The
 * held rows are gone either way: written, or lost with the lease (a replay records them again).
 */
static const char WRITE_SQL[] = "SELECT agently_agent_write($1, $2, $3, $4, $5, $6::jsonb)";

/* Whether row is a record kept only so that a replay records its events once (0020): an
 * event, a refusal, a result (record_once in agent_session.c). */
static bool is_stub(const json_t *row)
{
        const char *kind = json_string_value(json_object_get(row, "kind"));

        return kind &&
               (!strcmp(kind, "event") || !strcmp(kind, "refusal") || !strcmp(kind, "result"));
}

/* The stubs the session held go into the first new journal row of rows, if any, as its
 * "stubs" (0037): one row for the call and the records before it, instead of a row each;
 * each held row keeps its events. agent_db_load_journal reads them back as entries. */
static int fold_stubs(json_t *held, json_t *rows)
{
        json_t *carrier = NULL, *row, *stubs;
        size_t i;

        json_array_foreach (rows, i, row)
                if (json_object_get(row, "kind")) {
                        carrier = row;
                        break;
                }
        if (!carrier)
                return 0;
        json_array_foreach (held, i, row) {
                if (!is_stub(row))
                        continue;
                stubs = json_object_get(carrier, "stubs");
                if (!stubs && json_object_set_new(carrier, "stubs", stubs = json_array()) < 0)
                        return -ENOMEM;
                if (json_array_append_new(stubs, json_pack("{s:O, s:O}", "kind",
                                                           json_object_get(row, "kind"), "sha256",
                                                           json_object_get(row, "sha256"))) < 0)
                        return -ENOMEM;
                json_object_del(row, "kind");
                json_object_del(row, "request");
                json_object_del(row, "response");
                json_object_del(row, "sha256");
        }
        return 0;
}

/* Sends the write of the held rows and rows (taken; NULL: the held ones alone); its result
 * is write_wait's. The held rows are gone either way: written, or lost with the lease or
 * the connection (a replay records them again). */
static void written(void *arg, PGresult *res, int error);

/* Sends the write (left in flight when defer); the write before it settled first, so its
 * outcome is in the session before this one's rows and usage mark are made. */
static int write_send(struct agent_session *s, json_t *rows, bool defer)
{
        char epoch[24], attempt[16];
        json_t *all;
        _cleanup_free_ char *text = NULL;

        agent_db_settle(s);
        all = s->held ? s->held : json_array();
        s->held = NULL;
        agent_db_hold_cancel(s);
        if (!all || (rows && (fold_stubs(all, rows) < 0 || json_array_extend(all, rows) < 0))) {
                json_decref(all);
                json_decref(rows);
                return -ENOMEM;
        }
        json_decref(rows);
        /* every AGENT_USAGE_FLUSH_ROWS journal rows, the usage they carry is added to the
         * agent run's totals with this write (0036); else when the agent run stops */
        s->usage_sent = s->agent_run_id[0] && s->last_seq - s->usage_seq >= AGENT_USAGE_FLUSH_ROWS;
        if (s->usage_sent && json_array_append_new(all, json_pack("{s:b}", "usage_flush", 1)) < 0) {
                json_decref(all);
                return -ENOMEM;
        }
        text = json_dumps(all, JSON_COMPACT);
        json_decref(all);
        if (!text)
                return -ENOMEM;
        const char *params[] = {s->run_id,  epoch,   s->agent_run_id[0] ? s->agent_run_id : NULL,
                                s->node_id, attempt, text};
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        snprintf(attempt, sizeof(attempt), "%d", s->attempt);
        if (!defer)
                return db_query_send(s->host->cfg.db, WRITE_SQL, 6, params);
        int r = db_query_defer(s->host->cfg.db, WRITE_SQL, 6, params, written, s);
        if (r < 0)
                return r;
        s->write.pending = true;
        agent_host_watch_db(s->host);
        return 0;
}

/* A write's result, once committed: the seq of the last new journal row (0 for none),
 * -ESTALE when the lease was lost (nothing written). Takes res. */
static int write_result(struct agent_session *s, PGresult *res_, int r)
{
        _cleanup_pgresult_ PGresult *res = res_;

        if (!res) {
                r = r < 0 ? r : -EIO;
                /* the connection lost, or a transient refusal (a serialization failure,
                 * a canceled statement): what was written is not known, and the session's
                 * failure could not be recorded either */
                s->db_lost = r == -ECONNRESET || r == -EIO || r == -EAGAIN || r == -ETIMEDOUT;
                return r;
        }
        if (PQgetisnull(res, 0, 0))
                return -ESTALE;
        int seq = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
        if (seq > 0) {
                s->last_seq = seq;
                if (s->usage_sent) /* its new rows were added to the totals */
                        s->usage_seq = seq;
        }
        s->usage_sent = false;
        return seq;
}

static int write_wait(struct agent_session *s)
{
        int r = 0;
        PGresult *res = db_query_result(s->host->cfg.db, &r);

        return write_result(s, res, r);
}

static void written(void *arg, PGresult *res, int error)
{
        struct agent_session *s = arg;

        s->write.pending = false;
        agent_host_unwatch_db(s->host);
        agent_session_written(s, write_result(s, res, error));
}

void agent_db_settle(struct agent_session *s)
{
        if (s->write.pending)
                db_settle(s->host->cfg.db);
}

/*
 * Every journal write of a session is one agently_agent_write() (0027, latest 0043): the
 * rows it held since its last write first, then rows (taken; NULL: the held ones alone).
 * Returns the seq of the last new journal row (0 for none), -ESTALE when the lease was
 * lost (nothing written).
 */
static int write_rows(struct agent_session *s, json_t *rows)
{
        int r = write_send(s, rows, false);

        return r < 0 ? r : write_wait(s);
}

/* Held rows are written at the latest within_ms after they were held (a viewer sees the
 * streamed text and the events while a long call is in flight). */
static void hold_due(void *userdata)
{
        struct agent_session *s = userdata;
        int r;

        s->held_timer = NULL; /* freed before the call */
        r = agent_db_flush(s);
        if (r < 0)
                agent_session_failed(s, "error", "could not record the agent's events: %s",
                                     r == -ESTALE ? "the run's lease was lost"
                                                  : db_last_error_parts().message);
}

void agent_db_hold_arm(struct agent_session *s, int64_t within_ms)
{
        int64_t due = agent_now_ms() + within_ms;

        if (s->held_timer && s->held_due_ms <= due)
                return;
        agent_db_hold_cancel(s);
        if (runtime_http_timer_start(s->host->cfg.http, within_ms, hold_due, s, &s->held_timer) ==
            0) /* else: the next write */
                s->held_due_ms = due;
}

void agent_db_hold_cancel(struct agent_session *s)
{
        runtime_http_timer_cancel(s->host->cfg.http, s->held_timer);
        s->held_timer = NULL;
}

int agent_db_flush(struct agent_session *s)
{
        int r;

        if (!s->held)
                return 0;
        r = write_rows(s, NULL);
        return r < 0 ? r : 0;
}

int agent_db_hold(struct agent_session *s, json_t *row, int64_t within_ms)
{
        json_t *events = json_object_get(row, "events");

        if (!row)
                return -ENOMEM;
        if (events)
                agent_events_named(s, events);
        if (!s->held && !(s->held = json_array())) {
                json_decref(row);
                return -ENOMEM;
        }
        if (json_array_append_new(s->held, row) < 0)
                return -ENOMEM;
        agent_db_hold_arm(s, within_ms);
        return 0;
}

json_t *agent_db_row(const char *kind, const json_t *request, const json_t *response,
                     const char *hash, const struct llm_usage *usage, double cost, int llm_calls,
                     int tool_calls, json_t *events)
{
        json_t *row = json_object();

        if (!row) {
                json_decref(events);
                return NULL;
        }
        if (events && json_object_set_new(row, "events", events) < 0) {
                json_decref(row);
                return NULL;
        }
        if (kind &&
            (json_object_set_new(row, "kind", json_string(kind)) < 0 ||
             json_object_set(row, "request", request ? (json_t *)request : json_null()) < 0 ||
             (response && json_object_set(row, "response", (json_t *)response) < 0) ||
             json_object_set_new(row, "sha256", json_string(hash ? hash : "")) < 0)) {
                json_decref(row);
                return NULL;
        }
        if (usage &&
            (json_object_set_new(row, "tokens_in", json_integer(usage->input_tokens)) < 0 ||
             json_object_set_new(row, "tokens_out", json_integer(usage->output_tokens)) < 0 ||
             json_object_set_new(row, "cached_in", json_integer(usage->cached_input_tokens)) < 0)) {
                json_decref(row);
                return NULL;
        }
        if ((cost != 0 && json_object_set_new(row, "cost", json_real(cost)) < 0) ||
            (llm_calls && json_object_set_new(row, "llm_calls", json_integer(llm_calls)) < 0) ||
            (tool_calls && json_object_set_new(row, "tool_calls", json_integer(tool_calls)) < 0)) {
                json_decref(row);
                return NULL;
        }
        return row;
}

int agent_db_write(struct agent_session *s, json_t *row)
{
        json_t *events = json_object_get(row, "events");

        if (!row)
                return -ENOMEM;
        if (events)
                agent_events_named(s, events);
        return write_rows(s, json_pack("[o]", row));
}

int agent_db_record_defer(struct agent_session *s, const char *kind, const json_t *request,
                          const json_t *response, const char *hash, const struct llm_usage *usage,
                          double cost, int llm_calls, int tool_calls, json_t *events)
{
        json_t *row =
            agent_db_row(kind, request, response, hash, usage, cost, llm_calls, tool_calls, events);

        if (!row)
                return -ENOMEM;
        agent_events_named(s, json_object_get(row, "events"));
        return write_send(s, json_pack("[o]", row), true);
}

int agent_db_record(struct agent_session *s, const char *kind, const json_t *request,
                    const json_t *response, const char *hash, const struct llm_usage *usage,
                    double cost, int llm_calls, int tool_calls, json_t *events)
{
        return agent_db_write(s, agent_db_row(kind, request, response, hash, usage, cost, llm_calls,
                                              tool_calls, events));
}

int agent_db_answer(struct agent_session *s, int seq, const json_t *response, json_t *events)
{
        json_t *row = json_pack("{s:i, s:O}", "answer_seq", seq, "response", response);

        if (!row || (events && json_object_set_new(row, "events", events) < 0)) {
                json_decref(row);
                if (!row)
                        json_decref(events);
                return -ENOMEM;
        }
        events = NULL;
        int r = agent_db_write(s, row);
        return r < 0 ? r : 0;
}

/* Leaving running adds the usage of the journal rows written since the last time to the
 * agent run's totals and the user's counters (the trigger agent_runs_usage_flush, 0036).
 * $2 is text in both its uses: assigned bare, it would take the column's domain
 * (agently_agent_status, 0039) and the IN below would not match that type. */
static const char STATUS_SQL[] =
    "UPDATE agent_runs a SET status = $2::text, waiting_for = $3::jsonb,"
    "  error = coalesce($4::jsonb, a.error),"
    "  finished_at = CASE WHEN $2 IN ('completed', 'failed', 'canceled') THEN now() END"
    " WHERE a.id = $1 AND EXISTS (SELECT 1 FROM workflow_runs r WHERE r.id = $5"
    "   AND r.lease_epoch = $6 AND r.status = 'running')";

int agent_db_set_status(struct agent_session *s, const char *status, const json_t *waiting_for,
                        const json_t *error)
{
        char epoch[24];
        _cleanup_free_ char *w = dump(waiting_for), *e = dump(error);
        const char *params[] = {s->agent_run_id, status, w, e, s->run_id, epoch};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        if (!s->agent_run_id[0])
                return 0;
        r = agent_db_flush(s); /* what it held goes before */
        if (r < 0)
                return r;
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        res = db_query(s->host->cfg.db, STATUS_SQL, 6, params, &r);
        if (!res)
                return r < 0 ? r : -EIO;
        return strcmp(PQcmdTuples(res), "1") == 0 ? 0 : -ESTALE;
}
