/*
 * Tool calls that need a person: an agent whose definition gates a tool (by name or by its
 * effect class, `approve_tools`) asks for an approval — the approval node's machinery of
 * migrations/0015_approvals.sql: reviewers, quorum, channels through the notification
 * outbox, signed links, the deadline's on_timeout — before such a call runs, and the run
 * waits for it holding nothing. The call's journal row is written without an answer with
 * its approval in one statement (agently_request_tool_approval, 0022); a resumed session
 * that replays that row reads the approval: still pending, it waits again (nobody is asked
 * twice); approved, the call is marked started (once, committed before the request leaves)
 * and runs (with the reviewer's arguments when they edited them: the model is told which
 * ran); rejected, the agent gets the reviewer's comment as the tool's result. A call
 * found started without an answer (the worker died while it ran) is never sent again.
 */
#include "agent_internal.h"
#include "pgjson.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "redact.h"
#include "strutil.h"

#define CONTEXT_MESSAGES        6    /* recent messages shown to the reviewer */
#define CONTEXT_MESSAGE_MAX     2000 /* bytes of each */
#define PROPOSED_ACTION_MAX     300
#define EDIT_NOTE_ARGUMENTS_MAX 2000 /* bytes of each argument set the model reads */

static bool list_has(const json_t *list, const char *s)
{
        const json_t *v;
        size_t i;

        json_array_foreach (list, i, v)
                if (json_is_string(v) && !strcmp(json_string_value(v), s))
                        return true;
        return false;
}

bool agent_approval_gates(const struct agent_session *s, const json_t *body)
{
        const json_t *at = json_object_get(s->agent, "approve_tools");
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *effect = agent_tool_effect(name, json_object_get(body, "arguments"));

        if (!at || !name || !effect) /* an unknown tool is refused, not asked about */
                return false;
        if (json_is_array(at)) /* the short spelling: tool names and effect classes */
                return list_has(at, name) || list_has(at, effect);
        return list_has(json_object_get(at, "tools"), name) ||
               list_has(json_object_get(at, "effects"), effect);
}

/* A copy of v as it may be shown: the session's API key and every registered secret
 * masked. */
static json_t *shown(const struct agent_session *s, const json_t *v)
{
        json_t *c = agent_redact(s, v);

        if (c && redact_json(c) < 0) {
                json_decref(c);
                return NULL;
        }
        return c;
}

static char *capped_text(const char *text, size_t max)
{
        size_t n = strlen(text);

        if (n <= max)
                return strdup(text);
        while (n > 0 && (n > max || ((unsigned char)text[n] & 0xC0) == 0x80))
                n--;
        return str_printf("%.*s…", (int)n, text);
}

/* The conversation's last messages (the model's proposal last), each capped. */
static json_t *recent_messages(const struct agent_session *s)
{
        json_t *all = json_array(), *out = json_array(), *m;
        size_t i, n;

        if (!all || !out) {
                json_decref(all);
                json_decref(out);
                return NULL;
        }
        json_array_foreach (s->last_messages, i, m)
                json_array_append(all, m);
        if (s->last_assistant)
                json_array_append(all, s->last_assistant);
        n = json_array_size(all);
        for (i = n > CONTEXT_MESSAGES ? n - CONTEXT_MESSAGES : 0; i < n; i++) {
                json_t *c = json_deep_copy(json_array_get(all, i));
                const char *text = json_string_value(json_object_get(c, "content"));
                if (c && text) {
                        _cleanup_free_ char *t = capped_text(text, CONTEXT_MESSAGE_MAX);
                        json_object_set_new(c, "content", t ? json_string(t) : json_null());
                }
                json_array_append_new(out, c);
        }
        json_decref(all);
        return out;
}

/* "http_request POST https://…" or the tool's name with its arguments, capped. */
static char *proposed_action(const char *name, const json_t *args)
{
        const char *method = json_string_value(json_object_get(args, "method"));
        const char *url = json_string_value(json_object_get(args, "url"));
        _cleanup_free_ char *text = NULL, *a = NULL;

        if (method && url)
                text = str_printf("%s %s %s", name, method, url);
        else {
                a = json_dumps(args, JSON_COMPACT | JSON_SORT_KEYS);
                text = str_printf("%s %s", name, a ? a : "{}");
        }
        return text ? capped_text(text, PROPOSED_ACTION_MAX) : NULL;
}

/* The approval's spec: the agent's approve_tools policy (the approval node's fields, as the
 * engine normalised them) with this call's title, context and proposed action. */
static json_t *approval_spec(struct agent_session *s, const json_t *body, const char *effect)
{
        const json_t *at = json_object_get(s->agent, "approve_tools");
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *title = json_string_value(json_object_get(at, "title"));
        const json_t *reply =
            s->last_assistant ? json_object_get(s->last_assistant, "content") : NULL;
        _cleanup_json_ json_t *args = shown(s, json_object_get(body, "arguments"));
        _cleanup_json_ json_t *reasoning = reply ? shown(s, reply) : NULL;
        _cleanup_json_ json_t *messages = recent_messages(s);
        _cleanup_json_ json_t *conversation = messages ? shown(s, messages) : NULL;
        /* the tool's JSON Schema: a reviewer's edited arguments are checked against it */
        _cleanup_json_ json_t *parameters = agent_tool_parameters(s, name);
        _cleanup_json_ json_t *spec = json_is_object(at) ? json_deep_copy(at) : json_object();
        _cleanup_free_ char *action = proposed_action(name, args);
        _cleanup_free_ char *default_title = NULL;
        json_t *context;

        if (!spec || !args || !action)
                return NULL;
        json_object_del(spec, "tools");
        json_object_del(spec, "effects");
        default_title =
            str_printf("Approve %s (%s) for agent %s: %s", name, effect, s->node_id, action);
        if (!default_title)
                return NULL;
        context = json_pack("{s:s, s:s, s:O, s:s?, s:O?, s:O?, s:s, s:O?}", "tool", name, "effect",
                            effect, "arguments", args, "call_id",
                            json_string_value(json_object_get(body, "call_id")), "reasoning",
                            reasoning, "conversation", conversation, "agent_run_id",
                            s->agent_run_id, "parameters", parameters);
        if (!context || json_object_set_new(spec, "context", context) < 0 ||
            json_object_set_new(spec, "title",
                                json_string(title && *title ? title : default_title)) < 0 ||
            json_object_set_new(spec, "proposed_action", json_string(action)) < 0)
                return NULL;
        return TAKE_PTR(spec);
}

/* The run waits for approval_id: the agent run is marked waiting and the session ends
 * (its executor killed); the worker releases the run waiting, due at the deadline. */
static void wait_for_approval(struct agent_session *s, const char *approval_id, const char *tool,
                              int64_t expires_at_ms)
{
        json_t *waiting_for = json_pack("{s:s, s:s, s:s?}", "kind", "tool_approval", "approval_id",
                                        approval_id, "tool", tool);
        _cleanup_free_ char *msg =
            str_printf("waiting for a person to approve the agent's %s call", tool ? tool : "tool");
        int r;

        if (waiting_for && expires_at_ms > 0)
                json_object_set_new(waiting_for, "expires_at_ms", json_integer(expires_at_ms));
        r = waiting_for ? agent_db_set_status(s, "waiting", waiting_for, NULL) : -ENOMEM;
        if (r < 0) {
                json_decref(waiting_for);
                agent_session_failed(s, "error", "could not record that the agent waits: %s",
                                     r == -ESTALE ? "the run's lease was lost"
                                                  : db_last_error_parts().message);
                return;
        }
        agent_session_waits(s, json_pack("{s:s, s:s, s:o}", "class", "needs_input", "message",
                                         msg ? msg : "waiting for an approval", "waiting_for",
                                         waiting_for));
}

static const char REQUEST_SQL[] =
    "SELECT approval_id, journal_seq, expires_at_ms FROM agently_request_tool_approval("
    "$1::uuid, $2::bigint, $3::uuid, $4, $5::integer, $6::jsonb, $7, $8::jsonb, $9, $10::jsonb)";

void agent_approval_request(struct agent_session *s, const char *hash, json_t *body)
{
        /* the conversation the reviewer is shown includes the answer still being written */
        agent_db_settle(s);
        _cleanup_json_ json_t *owned = body;
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *effect = agent_tool_effect(name, json_object_get(body, "arguments"));
        _cleanup_json_ json_t *spec = approval_spec(s, body, effect);
        _cleanup_json_ json_t *stored = shown(s, body);
        _cleanup_json_ json_t *events = json_pack(
            "[{s:s, s:s, s:{s:s, s:s?, s:s, s:O?}}]", "kind", "agent.tool_approval", "message",
            "the agent waits for a person to approve a tool call", "data", "name", name, "call_id",
            json_string_value(json_object_get(body, "call_id")), "effect", effect, "arguments",
            json_object_get(json_object_get(spec, "context"), "arguments"));
        _cleanup_free_ char *spec_text = NULL, *stored_text = NULL, *events_text = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        char epoch[24], attempt[16];
        int r = 0;

        if (!spec || !stored || !events || !(spec_text = json_dumps(spec, JSON_COMPACT)) ||
            !(stored_text = json_dumps(stored, JSON_COMPACT)) ||
            !(events_text = json_dumps(agent_events_named(s, events), JSON_COMPACT))) {
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        snprintf(attempt, sizeof(attempt), "%d", s->attempt);
        const char *params[] = {
            s->run_id, epoch,     s->agent_run_id,         s->node_id, attempt, stored_text,
            hash,      spec_text, s->host->cfg.public_url, events_text};
        r = agent_db_flush(s); /* what the session held goes first (0027) */
        res = r < 0 ? NULL : db_query(s->host->cfg.db, REQUEST_SQL, 10, params, &r);
        if (!res || PQntuples(res) != 1) {
                agent_session_failed(
                    s, "error", "could not ask for the approval of a tool call: %s",
                    res ? "the run's lease was lost" : db_last_error_parts().message);
                return;
        }
        wait_for_approval(s, PQgetvalue(res, 0, 0), name,
                          PQgetisnull(res, 0, 2) ? 0 : strtoll(PQgetvalue(res, 0, 2), NULL, 10));
}

/* ---- a resumed session meets its gated call ---- */

struct approval_state {
        char id[AGENT_ID_LEN + 1];
        char status[16];
        bool due, started;
        int64_t expires_at_ms;
        json_t *decision;
};

static const char STATE_SQL[] =
    "SELECT id, status, decision, (extract(epoch FROM expires_at) * 1000)::bigint,"
    " coalesce(expires_at <= now(), false), tool_started_at IS NOT NULL"
    " FROM approvals WHERE agent_run_id = $1 AND journal_seq = $2";

/* 1 and *a, 0 when the row has no approval, < 0 when the statement failed. */
static int approval_read(struct agent_session *s, int seq, struct approval_state *a)
{
        char seqs[16];
        const char *params[] = {s->agent_run_id, seqs};
        _cleanup_pgresult_ PGresult *res = NULL;
        json_error_t jerr;
        int r = 0;

        snprintf(seqs, sizeof(seqs), "%d", seq);
        res = db_query(s->host->cfg.db, STATE_SQL, 2, params, &r);
        if (!res)
                return r < 0 ? r : -EIO;
        if (PQntuples(res) != 1)
                return 0;
        str_copy(a->id, sizeof(a->id), PQgetvalue(res, 0, 0));
        str_copy(a->status, sizeof(a->status), PQgetvalue(res, 0, 1));
        json_decref(a->decision);
        a->decision = PQgetisnull(res, 0, 2) ? NULL : pgjson_loads(PQgetvalue(res, 0, 2), 0, &jerr);
        a->expires_at_ms = PQgetisnull(res, 0, 3) ? 0 : strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        a->due = PQgetvalue(res, 0, 4)[0] == 't';
        a->started = PQgetvalue(res, 0, 5)[0] == 't';
        return 1;
}

/* The deadline passed with nobody deciding: on_timeout (agently_approval_timeout, 0015). */
static int approval_timeout(struct agent_session *s, const char *approval_id)
{
        char epoch[24];
        const char *params[] = {s->run_id, epoch, approval_id};
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        res = db_query(s->host->cfg.db,
                       "SELECT agently_approval_timeout($1::uuid, $2::bigint, $3::uuid)", 3, params,
                       &r);
        if (!res)
                return r < 0 ? r : -EIO;
        return PQgetisnull(res, 0, 0) ? -ESTALE : 0;
}

/* The answer and, for a shell/run_code call that kept files, their artifacts rows
 * (agently_record_artifacts, 0025, as for an ungated call): one statement, the rows only
 * when the fenced answer was written. */
static const char ANSWER_SQL[] =
    "SELECT seq, CASE WHEN seq IS NOT NULL THEN agently_record_artifacts($1::uuid, $7, $10::jsonb)"
    " END FROM (SELECT agently_agent_answer_tool($1::uuid, $2::bigint, $3::uuid, $4::integer,"
    "   $5::jsonb, $6::integer, $7, $8::integer, $9::jsonb) AS seq OFFSET 0) a";

/* The gated call's answer into its journal row with its events (takes events), fenced;
 * then to the executor. */
static void answer_gated(struct agent_session *s, const char *id, int seq, const json_t *response,
                         int tool_calls, json_t *events, const json_t *artifacts)
{
        _cleanup_json_ json_t *ev = events, *clean = shown(s, response);
        int masked = ev ? redact_json(ev) : 0; /* a tool's output preview, its arguments */
        _cleanup_json_ json_t *kept = artifacts ? shown(s, artifacts) : NULL;
        _cleanup_free_ char *resp = clean ? json_dumps(clean, JSON_COMPACT) : NULL;
        _cleanup_free_ char *evs =
            ev && masked >= 0 ? json_dumps(agent_events_named(s, ev), JSON_COMPACT) : NULL;
        _cleanup_free_ char *arts = kept ? json_dumps(kept, JSON_COMPACT) : NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        char epoch[24], seqs[16], calls[16], attempt[16];
        const char *params[] = {s->run_id,  epoch,   s->agent_run_id,  seqs, resp, calls,
                                s->node_id, attempt, evs ? evs : "[]", arts};
        int r = 0;

        if (!resp || (ev && !evs) || (artifacts && !arts)) {
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        snprintf(seqs, sizeof(seqs), "%d", seq);
        snprintf(calls, sizeof(calls), "%d", tool_calls);
        snprintf(attempt, sizeof(attempt), "%d", s->attempt);
        r = agent_db_flush(s); /* what the session held goes first (0027) */
        res = r < 0 ? NULL : db_query(s->host->cfg.db, ANSWER_SQL, 10, params, &r);
        if (!res || PQgetisnull(res, 0, 0)) {
                agent_session_failed(s, "error", "could not journal a tool call: %s",
                                     res ? "the run's lease was lost"
                                         : db_last_error_parts().message);
                return;
        }
        s->tool_calls += tool_calls;
        agent_session_answer(s, id, clean);
}

/* Rejected (by a person or by on_timeout reject): the agent reads why, as the tool's
 * result, and may try something else. */
static void rejected(struct agent_session *s, const char *id, int seq, const json_t *body,
                     const struct approval_state *a)
{
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *by = json_string_value(json_object_get(a->decision, "by"));
        const char *comment = json_string_value(json_object_get(a->decision, "comment"));
        const char *effect = agent_tool_effect(name, json_object_get(body, "arguments"));
        _cleanup_free_ char *content =
            by && !strcmp(by, "timeout")
                ? strdup("nobody decided on the call within its deadline, so it was rejected "
                         "(on_timeout reject) and did not run")
                : str_printf("the call was rejected by %s and did not run%s%s",
                             by ? by : "a person", comment && *comment ? "; their comment: " : "",
                             comment && *comment ? comment : "");
        json_t *events = json_pack("[{s:s, s:s, s:s, s:{s:s?, s:s?, s:s, s:s?, s:s?}}]", "kind",
                                   "agent.tool_rejected", "level", "warn", "message",
                                   content ? content : "rejected", "data", "name", name, "call_id",
                                   json_string_value(json_object_get(body, "call_id")),
                                   "approval_id", a->id, "by", by, "comment", comment);
        _cleanup_json_ json_t *response = json_pack(
            "{s:s, s:b, s:s?, s:s, s:O?}", "content", content ? content : "rejected", "is_error", 1,
            "effect", effect, "approval", "rejected", "decision", a->decision);

        if (!response || !events) {
                json_decref(events);
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        answer_gated(s, id, seq, response, 0, events, NULL);
}

/* A result of a call a reviewer edited: the model reads first that the arguments changed
 * and which ran (it may adapt), and the journal's answer records them ("edited"), so a
 * replay answers the same. result is changed in place; 0 or -ENOMEM. */
static int note_edit(struct agent_session *s, const json_t *edited, json_t *result)
{
        const char *by = json_string_value(json_object_get(edited, "by"));
        const char *content = json_string_value(json_object_get(result, "content"));
        _cleanup_json_ json_t *clean = shown(s, edited);
        _cleanup_free_ char *ran = NULL, *proposed = NULL, *ran_c = NULL, *proposed_c = NULL,
                            *text = NULL;

        if (!clean ||
            !(ran = json_dumps(json_object_get(clean, "arguments"),
                               JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)) ||
            !(proposed = json_dumps(json_object_get(clean, "proposed_arguments"),
                                    JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)) ||
            !(ran_c = capped_text(ran, EDIT_NOTE_ARGUMENTS_MAX)) ||
            !(proposed_c = capped_text(proposed, EDIT_NOTE_ARGUMENTS_MAX)))
                return -ENOMEM;
        text = str_printf("the reviewer %s approved this call with edited arguments, so it ran "
                          "with %s instead of the proposed %s. Its result: %s",
                          by ? by : "(unknown)", ran_c, proposed_c, content ? content : "");
        if (!text || json_object_set_new(result, "content", json_string(text)) < 0 ||
            json_object_set(result, "edited", clean) < 0)
                return -ENOMEM;
        return 0;
}

/* The reviewer's edit of the call (body: the proposed request) when the decision carries
 * arguments: {"by", "arguments", "proposed_arguments"} (new reference), else NULL. */
static json_t *edit_of(const struct approval_state *a, const json_t *body)
{
        const json_t *edit = json_object_get(a->decision, "arguments");

        if (!json_is_object(edit))
                return NULL;
        return json_pack("{s:s?, s:O, s:O?}", "by",
                         json_string_value(json_object_get(a->decision, "by")), "arguments", edit,
                         "proposed_arguments", json_object_get(body, "arguments"));
}

/* Started before and never answered: the worker stopped while it ran. It may have taken
 * effect; it is not sent again. */
static void interrupted(struct agent_session *s, const char *id, int seq, const json_t *body,
                        const struct approval_state *a)
{
        _cleanup_json_ json_t *edited = edit_of(a, body);
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *effect = agent_tool_effect(name, json_object_get(body, "arguments"));
        static const char text[] = "the approved call was interrupted (the worker stopped while it "
                                   "ran): it may or may not have taken effect, and it is not "
                                   "sent again";
        json_t *events =
            json_pack("[{s:s, s:s, s:s, s:{s:s?, s:s?}}]", "kind", "agent.tool_interrupted",
                      "level", "warn", "message", text, "data", "name", name, "call_id",
                      json_string_value(json_object_get(body, "call_id")));
        _cleanup_json_ json_t *response =
            json_pack("{s:s, s:b, s:s?, s:s}", "content", text, "is_error", 1, "effect", effect,
                      "approval", "approved");

        if (!response || !events ||
            (json_is_object(json_object_get(a->decision, "arguments")) && !edited) ||
            (edited && note_edit(s, edited, response) < 0)) {
                json_decref(events);
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        answer_gated(s, id, seq, response, 1, events, NULL);
}

static const char START_SQL[] =
    "SELECT agently_tool_approval_start($1::uuid, $2::bigint, $3::uuid, $4, $5::integer,"
    " $6::jsonb)";

/* Approved: marked started (committed) before the request leaves, then run like any live
 * call — with the reviewer's arguments when they edited them (decision.arguments; the
 * journal row keeps the proposed request, whose hash the agent asked with) — and its answer
 * goes into the journal row (agent_approval_tool_done). Takes body. */
static void approved(struct agent_session *s, const char *id, int seq, const char *hash,
                     json_t *body, const struct approval_state *a)
{
        _cleanup_json_ json_t *owned = body;
        const char *name = json_string_value(json_object_get(body, "name"));
        const char *by = json_string_value(json_object_get(a->decision, "by"));
        const json_t *edit = json_object_get(a->decision, "arguments");
        _cleanup_json_ json_t *edited = edit_of(a, body);
        _cleanup_json_ json_t *edited_shown = edited ? shown(s, edited) : NULL;
        _cleanup_json_ json_t *events = json_pack(
            "[{s:s, s:s++, s:{s:s?, s:s?, s:s, s:s?, s:O?, s:b, s:O?, s:O?}}]", "kind",
            "agent.tool_approved", "message", "approved by ", by ? by : "a person",
            edited ? " with edited arguments" : "", "data", "name", name, "call_id",
            json_string_value(json_object_get(body, "call_id")), "approval_id", a->id, "by", by,
            "comment", json_object_get(a->decision, "comment"), "edited", edited != NULL,
            "proposed_arguments", json_object_get(edited_shown, "proposed_arguments"), "arguments",
            json_object_get(edited_shown, "arguments"));
        _cleanup_free_ char *events_text =
            events ? json_dumps(agent_events_named(s, events), JSON_COMPACT) : NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        char epoch[24], attempt[16];
        const char *params[] = {s->run_id, epoch, a->id, s->node_id, attempt, events_text};
        json_t *refusal = NULL;
        struct agent_pending *p;
        int r = 0;

        if (!events_text || (edit && (!edited || !edited_shown))) {
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
        snprintf(attempt, sizeof(attempt), "%d", s->attempt);
        r = agent_db_flush(s); /* what the session held goes first (0027) */
        res = r < 0 ? NULL : db_query(s->host->cfg.db, START_SQL, 6, params, &r);
        if (!res || PQgetisnull(res, 0, 0)) {
                agent_session_failed(s, "error", "could not start an approved tool call: %s",
                                     res ? "the run's lease was lost"
                                         : db_last_error_parts().message);
                return;
        }
        if (!strcmp(PQgetvalue(res, 0, 0), "already")) {
                interrupted(s, id, seq, body, a);
                return;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "started") != 0) {
                agent_session_failed(s, "error", "the tool call's approval is %s, not approved",
                                     a->status);
                return;
        }
        p = calloc(1, sizeof(*p));
        if (!p || !(p->id = strdup(id)) ||
            (edited && json_object_set_new(body, "arguments", json_deep_copy(edit)) < 0)) {
                if (p)
                        free(p->id);
                free(p);
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        p->session = s;
        p->is_pending_marker = true;
        str_copy(p->kind, sizeof(p->kind), "tool");
        memcpy(p->hash, hash, 65);
        p->request = TAKE_PTR(owned);
        p->edited = TAKE_PTR(edited);
        p->started_ms = agent_now_ms();
        p->approval_seq = seq;
        if (agent_tool_start(s, p, &refusal) < 0) {
                /* refused after all (a host not allowed, bad arguments): journaled as the
                 * call's result, so a replay answers it the same way */
                const char *reason = json_string_value(json_object_get(refusal, "message"));
                _cleanup_json_ json_t *response = json_pack(
                    "{s:s, s:b, s:s?}", "content", reason ? reason : "the tool call was refused",
                    "is_error", 1, "effect",
                    agent_tool_effect(name, json_object_get(p->request, "arguments")));
                json_decref(refusal);
                if (response && p->edited && note_edit(s, p->edited, response) < 0)
                        json_decref(TAKE_PTR(response));
                agent_pending_release(s->host, p);
                if (response)
                        answer_gated(s, id, seq, response, 0, NULL, NULL);
                else
                        agent_session_failed(s, "error", "out of memory");
                return;
        }
        agent_pending_add(s, p);
}

void agent_approval_resume(struct agent_session *s, const char *id,
                           const struct agent_journal_entry *e, const char *hash, json_t *body)
{
        _cleanup_json_ json_t *owned = body;
        struct approval_state a = {0};
        int r;

        r = approval_read(s, e->seq, &a);
        if (r > 0 && !strcmp(a.status, "pending") && a.due) {
                r = approval_timeout(s, a.id);
                if (r == 0)
                        r = approval_read(s, e->seq, &a);
        }
        if (r <= 0) {
                agent_session_failed(s, "error", "could not read a tool call's approval: %s",
                                     r == 0         ? "the journal row has none"
                                     : r == -ESTALE ? "the run's lease was lost"
                                                    : db_last_error_parts().message);
        } else if (!strcmp(a.status, "pending")) { /* woken early, or escalated: wait on */
                wait_for_approval(s, a.id, json_string_value(json_object_get(body, "name")),
                                  a.expires_at_ms);
        } else if (!strcmp(a.status, "approved")) {
                if (a.started)
                        interrupted(s, id, e->seq, body, &a);
                else
                        approved(s, id, e->seq, hash, TAKE_PTR(owned), &a);
        } else if (!strcmp(a.status, "rejected")) {
                rejected(s, id, e->seq, body, &a);
        } else if (!strcmp(a.status, "expired")) {
                agent_session_failed(s, "timeout",
                                     "nobody decided on the agent's %s call within its deadline "
                                     "(approve_tools on_timeout fail)",
                                     json_string_value(json_object_get(body, "name")) ?: "tool");
        } else {
                agent_session_failed(s, "canceled", "the approval of the agent's tool call was %s",
                                     a.status);
        }
        json_decref(a.decision);
}

void agent_approval_tool_done(struct agent_session *s, struct agent_pending *p,
                              const json_t *output, const json_t *error)
{
        json_t *events = json_array();
        _cleanup_json_ json_t *result =
            events ? agent_tool_result(s, p, output, error, events) : NULL;

        if (!result || (p->edited && note_edit(s, p->edited, result) < 0)) {
                json_decref(events);
                agent_session_failed(s, "error", "out of memory");
                return;
        }
        answer_gated(s, p->id, p->approval_seq, result, 1, events, p->artifacts);
}
