/*
 * Approvals and the inbox: listing and reading approvals (a user sees those of their own
 * runs and those naming them as a reviewer), deciding (the run's owner or a listed
 * reviewer; of concurrent decisions exactly one wins and the others get 409 with the
 * winning decision), reassigning, the signed one-click links of notifications (GET shows a
 * confirmation page and changes nothing; only POST decides), and /v1/inbox, every request
 * that waits for a person with its own answer form. Who may do what, quorum, self-approval
 * and the link rules live in SQL (migrations/0015_approvals.sql); this file maps outcomes to
 * HTTP.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "cleanup.h"
#include "db.h"
#include "json_schema.h"
#include "strutil.h"

#define APPROVAL_JSON                                                                              \
        "json_build_object('id', a.id, 'run_id', a.workflow_run_id, 'node_id', a.node_id, "        \
        "'node_attempt', a.node_attempt, 'status', a.status, 'title', a.title, 'request', "        \
        "a.request, 'reviewers', to_jsonb(a.reviewers), 'quorum', a.quorum, "                      \
        "'forbid_self_approval', a.forbid_self_approval, 'level', a.level, 'votes', a.votes, "     \
        "'decision', a.decision, 'decided_by', a.decided_by, 'decided_via', a.decided_via, "       \
        "'comment', a.comment, 'decided_at', a.decided_at, 'expires_at', a.expires_at, "           \
        "'created_at', a.created_at)"

#define LINK_TOKEN_LEN       64
#define EDITED_ARGUMENTS_MAX (256 * 1024) /* bytes of an edited tool call's arguments */

unsigned api_h_approvals_list(struct api_request *req, struct api_response *resp)
{
        static const char *const statuses[] = {"pending", "approved", "rejected", "expired",
                                               "canceled"};
        const char *status = api_query(req, "status");

        if (status) {
                bool ok = false;
                for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
                        ok |= strcmp(status, statuses[i]) == 0;
                if (!ok)
                        return api_errorf(resp, 400, "invalid_parameter", "invalid status",
                                          "one of pending, approved, rejected, expired, canceled",
                                          "status '%s'", status);
        }
        const char *filters[] = {status};
        return api_time_page(req, resp,
                             "SELECT " APPROVAL_JSON ", a.created_at::text || '|' || a.id "
                             "FROM approvals a WHERE ($1::text IS NULL OR a.status = $1) "
                             "AND ($2::timestamptz IS NULL OR (a.created_at, a.id) < "
                             "($2::timestamptz, $3::uuid)) "
                             "ORDER BY a.created_at DESC, a.id DESC LIMIT $4::integer",
                             1, filters);
}

unsigned api_h_approvals_get(struct api_request *req, struct api_response *resp)
{
        const char *params[] = {req->params[0]};

        if (!api_is_uuid(req->params[0]))
                return api_not_found(resp, "approval", req->params[0]);
        return api_respond_query(req, resp, 200,
                                 "SELECT " APPROVAL_JSON " FROM approvals a WHERE a.id = $1", 1,
                                 params, "approval", req->params[0]);
}

/* The approval as the caller may see it (NULL when they may not). */
static json_t *approval_json(struct api_request *req, const char *id)
{
        const char *params[] = {id};
        json_t *j = NULL;

        if (api_query_json(req, "SELECT " APPROVAL_JSON " FROM approvals a WHERE a.id = $1", 1,
                           params, &j) <= 0)
                return NULL;
        return j;
}

/* The HTTP answer to a vote's outcome (agently_approval_vote): 200 with the approval (its
 * status says whether this vote decided it or the quorum still waits), 409 with the approval
 * and its winning decision, 403, 404. approval may be NULL (a link's approval, which a
 * caller without a user cannot read: then it is read through the link function). */
static unsigned vote_answer(struct api_response *resp, const char *outcome, const char *reason,
                            const char *id, json_t *approval)
{
        if (!strcmp(outcome, "decided") || !strcmp(outcome, "recorded")) {
                if (!approval)
                        return api_error(resp, 500, "internal", "could not read the approval", NULL,
                                         NULL);
                return api_json(resp, 200, json_incref(approval));
        }
        if (!strcmp(outcome, "conflict") || !strcmp(outcome, "already_voted")) {
                api_error(resp, 409, "conflict",
                          !strcmp(outcome, "conflict") ? "the approval was already decided"
                                                       : "you already voted on this approval",
                          reason, "the approval in this answer shows the decision");
                if (approval && resp->json)
                        json_object_set(resp->json, "approval", approval);
                return 409;
        }
        if (!strcmp(outcome, "forbidden"))
                return api_error(resp, 403, "forbidden", "you may not decide this approval", reason,
                                 "only the listed reviewers or the run's owner may decide");
        return api_not_found(resp, "approval", id);
}

/* An edited call's arguments against the tool's JSON Schema, which the agent kept in the
 * approval's request (request.context.parameters; an approval asked before 0026 has none:
 * then only the object itself is checked, in SQL). 0, or the 422 it answered. */
static unsigned edit_check(struct api_response *resp, const json_t *approval,
                           const json_t *arguments)
{
        const json_t *context = json_object_get(json_object_get(approval, "request"), "context");
        const char *tool = json_string_value(json_object_get(context, "tool"));
        char error[512];
        int r;

        r = json_schema_check(json_object_get(context, "parameters"), arguments, "arguments", error,
                              sizeof(error));
        if (r == 0)
                return 0;
        api_errorf(resp, 422, "invalid_arguments", "the edited arguments do not fit the tool",
                   "correct the field named in detail; the tool's JSON Schema is "
                   "request.context.parameters of the approval",
                   "%s (tool %s)", error, tool ? tool : "?");
        /* the path the message starts with ("arguments.url must be ...") */
        json_object_set_new(json_object_get(resp->json, "error"), "field",
                            json_stringn(error, strcspn(error, " ")));
        return 422;
}

unsigned api_h_approvals_decide(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"decision", "comment", "channel", "arguments", NULL};
        static const char *const channels[] = {"api", "cli", "web", "slack", NULL};
        const char *id = req->params[0];
        _cleanup_json_ json_t *approval = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_free_ char *arguments_text = NULL;
        json_t *b;
        unsigned st;
        int r = 0;

        if (!api_begin_body(req, resp, "approval", keys, false, &b))
                return resp->status;
        const char *decision = json_string_value(json_object_get(b, "decision"));
        json_t *comment_j = json_object_get(b, "comment");
        json_t *channel_j = json_object_get(b, "channel");
        json_t *arguments = json_object_get(b, "arguments");
        if (!decision || (strcmp(decision, "approve") != 0 && strcmp(decision, "reject") != 0))
                return api_error(resp, 400, "invalid_field",
                                 "decision must be \"approve\" or \"reject\"", "field 'decision'",
                                 NULL);
        if (comment_j && !json_is_null(comment_j) &&
            (!json_is_string(comment_j) || strlen(json_string_value(comment_j)) > 10000))
                return api_error(resp, 400, "invalid_field",
                                 "comment must be a string of at most 10000 characters",
                                 "field 'comment'", NULL);
        const char *channel = json_string_value(channel_j);
        bool known = false;
        for (size_t i = 0; channel && channels[i]; i++)
                known |= strcmp(channel, channels[i]) == 0;
        if (channel_j && !known)
                return api_error(resp, 400, "invalid_field",
                                 "channel must be \"api\", \"cli\", \"web\" or \"slack\"",
                                 "field 'channel'", NULL);
        if (arguments && !json_is_null(arguments)) {
                arguments_text = json_dumps(arguments, JSON_COMPACT | JSON_ENCODE_ANY);
                if (!arguments_text)
                        return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
                if (strlen(arguments_text) > EDITED_ARGUMENTS_MAX)
                        return api_errorf(resp, 422, "invalid_arguments",
                                          "the edited arguments are too large", NULL,
                                          "field 'arguments': at most %d bytes of JSON",
                                          EDITED_ARGUMENTS_MAX);
        }
        const char *params[] = {id, decision, json_string_value(comment_j),
                                channel ? channel : "api", arguments_text};
        res = db_query(req->db,
                       "SELECT outcome, reason FROM agently_decide_approval($1::uuid, $2, $3, $4,"
                       " $5::jsonb)",
                       5, params, &r);
        if (!res)
                return api_db_error(resp, r);
        const char *outcome = PQgetvalue(res, 0, 0);
        const char *reason = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
        if (!strcmp(outcome, "invalid")) {
                api_error(resp, 422, "invalid_arguments", reason, "field 'arguments'", NULL);
                json_object_set_new(json_object_get(resp->json, "error"), "field",
                                    json_string("arguments"));
                return 422;
        }
        approval = approval_json(req, id);
        /* checked after the vote, which says first whether this approval may be edited at
         * all; a misfit answers 422 and the request's transaction (the vote) rolls back */
        if (arguments_text && !strcmp(outcome, "decided") &&
            (st = edit_check(resp, approval, arguments)))
                return st;
        return vote_answer(resp, outcome, reason, id, approval);
}

/* The approval a reviewer just handed their place in (me) to `to`, as they saw it before
 * (they may no longer read it): the same with its reviewers as they are now. New reference. */
static json_t *handed_over(const json_t *before, const char *me, const char *to)
{
        json_t *j = json_deep_copy(before), *reviewers = json_array(), *v;
        char lower[256];
        size_t i, k;

        if (!j || !reviewers) {
                json_decref(j);
                json_decref(reviewers);
                return NULL;
        }
        json_array_foreach (json_object_get(before, "reviewers"), i, v)
                if (json_is_string(v) && strcmp(json_string_value(v), me) != 0)
                        json_array_append(reviewers, v);
        for (k = 0; to[k] && k < sizeof(lower) - 1; k++)
                lower[k] = (char)(to[k] >= 'A' && to[k] <= 'Z' ? to[k] - 'A' + 'a' : to[k]);
        lower[k] = '\0';
        json_array_append_new(reviewers, json_string(lower));
        json_object_set_new(j, "reviewers", reviewers);
        return j;
}

unsigned api_h_approvals_reassign(struct api_request *req, struct api_response *resp)
{
        static const char *const keys[] = {"to", "from", "comment", NULL};
        const char *id = req->params[0];
        _cleanup_pgresult_ PGresult *res = NULL;
        json_t *b;
        int r = 0;

        if (!api_begin_body(req, resp, "approval", keys, false, &b))
                return resp->status;
        const char *to = json_string_value(json_object_get(b, "to"));
        json_t *from_j = json_object_get(b, "from"), *comment_j = json_object_get(b, "comment");
        if (!to)
                return api_error(resp, 400, "invalid_field",
                                 "to must name the new reviewer (a user name or an e-mail address)",
                                 "field 'to'", NULL);
        if ((from_j && !json_is_null(from_j) && !json_is_string(from_j)) ||
            (comment_j && !json_is_null(comment_j) &&
             (!json_is_string(comment_j) || strlen(json_string_value(comment_j)) > 10000)))
                return api_error(resp, 400, "invalid_field",
                                 "from must be a reviewer and comment a string of at most 10000 "
                                 "characters",
                                 NULL, NULL);
        const char *params[] = {id, json_string_value(from_j), to, json_string_value(comment_j)};
        /* as the caller saw it: a reviewer who hands over their own place cannot read it after */
        _cleanup_json_ json_t *before = approval_json(req, id);
        res = db_query(
            req->db, "SELECT outcome, reason FROM agently_reassign_approval($1::uuid, $2, $3, $4)",
            4, params, &r);
        if (!res)
                return api_db_error(resp, r);
        const char *outcome = PQgetvalue(res, 0, 0);
        const char *reason = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
        if (!strcmp(outcome, "done")) {
                json_t *j = approval_json(req, id);
                if (!j && before)
                        j = handed_over(before, req->user_name, to);
                return j ? api_json(resp, 200, j)
                         : api_error(resp, 500, "internal", "could not read the approval", NULL,
                                     NULL);
        }
        if (!strcmp(outcome, "conflict"))
                return api_error(resp, 409, "conflict", "the approval was already decided", reason,
                                 NULL);
        if (!strcmp(outcome, "forbidden"))
                return api_error(resp, 403, "forbidden", "you may not reassign this approval",
                                 reason, "a reviewer hands over only their own place");
        if (!strcmp(outcome, "invalid"))
                return api_error(resp, 400, "invalid_field", "cannot reassign this approval",
                                 reason, NULL);
        return api_not_found(resp, "approval", id);
}

/* ---- signed one-click links -------------------------------------------------------- */

static bool is_link_token(const char *s)
{
        size_t n = strlen(s);

        if (n != LINK_TOKEN_LEN)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

static bool wants_html(struct api_request *req)
{
        const char *accept = api_header(req, MHD_HTTP_HEADER_ACCEPT);
        return accept && strstr(accept, "text/html");
}

static void html_escape(struct buf *b, const char *s)
{
        for (; s && *s; s++) {
                switch (*s) {
                case '&':
                        buf_append_str(b, "&amp;");
                        break;
                case '<':
                        buf_append_str(b, "&lt;");
                        break;
                case '>':
                        buf_append_str(b, "&gt;");
                        break;
                case '"':
                        buf_append_str(b, "&quot;");
                        break;
                case '\'':
                        buf_append_str(b, "&#39;");
                        break;
                default:
                        buf_append(b, s, 1);
                }
        }
}

/* A small page: heading, a paragraph, and optionally the text of a JSON value. */
static unsigned html_page(struct api_response *resp, unsigned status, const char *heading,
                          const char *text, const char *pre, const char *form_decision)
{
        _cleanup_buf_ struct buf b;

        buf_init(&b, 1 << 20);
        buf_append_str(&b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                           "<meta name=\"robots\" content=\"noindex\">"
                           "<title>agently approval</title></head>\n<body>\n<h1>");
        html_escape(&b, heading);
        buf_append_str(&b, "</h1>\n<p>");
        html_escape(&b, text);
        buf_append_str(&b, "</p>\n");
        if (pre) {
                buf_append_str(&b, "<pre>");
                html_escape(&b, pre);
                buf_append_str(&b, "</pre>\n");
        }
        if (form_decision) {
                /* the link itself is the credential: the form posts back to the same URL */
                buf_append_str(&b, "<form method=\"post\">\n<label>Comment (optional)<br>"
                                   "<textarea name=\"comment\" rows=\"4\" cols=\"60\"></textarea>"
                                   "</label><br>\n<button type=\"submit\">");
                html_escape(&b, form_decision);
                buf_append_str(&b, "</button>\n</form>\n");
        }
        buf_append_str(&b, "</body></html>\n");
        resp->text = buf_steal(&b);
        if (!resp->text)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        resp->content_type = "text/html; charset=utf-8";
        resp->status = status;
        return status;
}

/* An error of a link route: a page for a browser, the usual JSON for anything else. */
static unsigned link_error(struct api_request *req, struct api_response *resp, unsigned status,
                           const char *code, const char *message, const char *detail)
{
        if (wants_html(req))
                return html_page(resp, status, message, detail ? detail : "", NULL, NULL);
        return api_error(resp, status, code, message, detail,
                         status == 410 ? "ask for a new link, or decide with agently approval"
                                       : NULL);
}

unsigned api_h_approval_link_show(struct api_request *req, struct api_response *resp)
{
        const char *token = req->params[0];
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_free_ char *heading = NULL, *text = NULL;
        int r = 0;

        if (!is_link_token(token))
                return link_error(req, resp, 404, "not_found", "unknown link", NULL);
        const char *params[] = {token};
        res = db_query(req->db,
                       "SELECT decision, reviewer, link_state, approval_status, title, run_id, "
                       "node_id, jsonb_pretty(request), expires_at FROM agently_approval_link($1)",
                       1, params, &r);
        if (!res)
                return api_db_error(resp, r);
        if (PQntuples(res) != 1)
                return link_error(req, resp, 404, "not_found", "unknown link", NULL);
        const char *decision = PQgetvalue(res, 0, 0), *state = PQgetvalue(res, 0, 2);
        const char *status = PQgetvalue(res, 0, 3);
        if (strcmp(state, "valid") != 0)
                return link_error(req, resp, 410, "link_gone",
                                  !strcmp(state, "used") ? "this link was already used"
                                                         : "this link has expired",
                                  NULL);
        if (strcmp(status, "pending") != 0) {
                _cleanup_free_ char *d = str_printf("the approval was already %s", status);
                return link_error(req, resp, 409, "conflict", "already decided", d);
        }
        heading = str_printf("%s: %s", !strcmp(decision, "approve") ? "Approve" : "Reject",
                             PQgetvalue(res, 0, 4));
        text = str_printf("Run %s is waiting at node %s. You (%s) are about to %s it; nothing "
                          "happens until you press the button. The link expires at %s.",
                          PQgetvalue(res, 0, 5), PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 1),
                          decision, PQgetvalue(res, 0, 8));
        if (!heading || !text)
                return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        return html_page(resp, 200, heading, text, PQgetvalue(res, 0, 7),
                         !strcmp(decision, "approve") ? "Approve" : "Reject");
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* The value of `name` in an application/x-www-form-urlencoded body, decoded (malloc'd), or
 * NULL when absent. */
static char *form_value(const char *body, size_t len, const char *name)
{
        size_t nl = strlen(name);
        const char *p = body, *end = body + len;

        while (p < end) {
                const char *amp = memchr(p, '&', (size_t)(end - p));
                const char *stop = amp ? amp : end;
                if ((size_t)(stop - p) > nl && !strncmp(p, name, nl) && p[nl] == '=') {
                        const char *v = p + nl + 1;
                        char *out = malloc((size_t)(stop - v) + 1), *w = out;
                        if (!out)
                                return NULL;
                        for (; v < stop; v++) {
                                int hi, lo;
                                if (*v == '+')
                                        *w++ = ' ';
                                else if (*v == '%' && stop - v >= 3 &&
                                         (hi = hex_value(v[1])) >= 0 &&
                                         (lo = hex_value(v[2])) >= 0) {
                                        *w++ = (char)(hi * 16 + lo);
                                        v += 2;
                                } else
                                        *w++ = *v;
                        }
                        *w = '\0';
                        return out;
                }
                p = stop + 1;
        }
        return NULL;
}

unsigned api_h_approval_link_decide(struct api_request *req, struct api_response *resp)
{
        const char *token = req->params[0];
        _cleanup_pgresult_ PGresult *res = NULL;
        _cleanup_free_ char *comment = NULL;
        int r = 0;

        if (!is_link_token(token))
                return link_error(req, resp, 404, "not_found", "unknown link", NULL);
        /* a JSON object from a program, else a browser's form (comment=...) */
        if (req->body_len > 0 && req->body[0] == '{') {
                json_t *b = api_body_object(req, resp, true);
                json_t *c;
                if (!b)
                        return resp->status;
                c = json_object_get(b, "comment");
                if (c && !json_is_string(c) && !json_is_null(c))
                        return api_error(resp, 400, "invalid_field", "comment must be a string",
                                         "field 'comment'", NULL);
                if (json_is_string(c) && !(comment = strdup(json_string_value(c))))
                        return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
        } else if (req->body_len > 0) {
                comment = form_value(req->body, req->body_len, "comment");
        }
        if (comment && (strlen(comment) > 10000 || !str_is_utf8(comment, strlen(comment))))
                return link_error(req, resp, 400, "invalid_field",
                                  "the comment must be UTF-8 text of at most 10000 characters",
                                  NULL);
        if (comment && !*comment) {
                free(comment);
                comment = NULL;
        }
        const char *params[] = {token, comment};
        res = db_query(req->db,
                       "SELECT outcome, reason, approval_status, approval_id, decision "
                       "FROM agently_approval_link_decide($1, $2)",
                       2, params, &r);
        if (!res)
                return api_db_error(resp, r);
        const char *outcome = PQgetvalue(res, 0, 0);
        const char *reason = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
        if (!strcmp(outcome, "used") || !strcmp(outcome, "expired"))
                return link_error(req, resp, 410, "link_gone", reason, NULL);
        if (!strcmp(outcome, "not_found"))
                return link_error(req, resp, 404, "not_found", "unknown link", NULL);
        if (!strcmp(outcome, "decided") || !strcmp(outcome, "recorded")) {
                const char *status = PQgetvalue(res, 0, 2);
                _cleanup_free_ char *text =
                    !strcmp(outcome, "decided")
                        ? str_printf("Thank you: the approval is now %s.", status)
                        : str_printf("Thank you: your %s was recorded; more approvals are needed.",
                                     PQgetvalue(res, 0, 4));
                if (!text)
                        return api_error(resp, 500, "internal", "out of memory", NULL, NULL);
                if (wants_html(req))
                        return html_page(resp, 200, "Recorded", text, NULL, NULL);
                return api_json(resp, 200,
                                json_pack("{s:s, s:s, s:s, s:s}", "outcome", outcome, "status",
                                          status, "approval_id", PQgetvalue(res, 0, 3), "decision",
                                          PQgetvalue(res, 0, 4)));
        }
        if (!strcmp(outcome, "conflict") || !strcmp(outcome, "already_voted")) {
                if (wants_html(req))
                        return html_page(resp, 409, "Already decided", reason ? reason : "", NULL,
                                         NULL);
                api_error(resp, 409, "conflict",
                          !strcmp(outcome, "conflict") ? "the approval was already decided"
                                                       : "this reviewer already voted",
                          reason, NULL);
                if (resp->json)
                        json_object_set_new(resp->json, "status",
                                            json_string(PQgetvalue(res, 0, 2)));
                return 409;
        }
        return link_error(req, resp, 403, "forbidden", "this link may not decide the approval",
                          reason);
}

/* ---- the inbox --------------------------------------------------------------------- */

unsigned api_h_inbox(struct api_request *req, struct api_response *resp)
{
        static const char *const kinds[] = {"approval", "escalation", "question",
                                            "budget",   "tool_call",  NULL};
        const char *kind = api_query(req, "kind");
        bool known = false;

        for (size_t i = 0; kind && kinds[i]; i++)
                known |= strcmp(kind, kinds[i]) == 0;
        if (kind && !known)
                return api_errorf(resp, 400, "invalid_parameter", "invalid kind",
                                  "one of approval, escalation, question, budget", "kind '%s'",
                                  kind);
        const char *filters[] = {kind};
        return api_time_page(
            req, resp,
            "SELECT json_build_object('kind', i.kind, 'id', i.id, 'run_id', i.run_id, 'node_id', "
            "i.node_id, 'title', i.title, 'created_at', i.created_at, 'expires_at', i.expires_at, "
            "'detail', i.detail, 'answer', i.answer), i.created_at::text || '|' || i.id "
            "FROM agently_inbox i WHERE ($1::text IS NULL OR i.kind = $1) "
            "AND ($2::timestamptz IS NULL OR (i.created_at, i.id) < ($2::timestamptz, $3::text)) "
            "ORDER BY i.created_at DESC, i.id DESC LIMIT $4::integer",
            1, filters);
}
