/*
 * The native agent loop over the executor protocol. Blocking stdio is right here: the
 * executor is its own process with one conversation, and the worker drives its pipes from
 * an event loop. Requests that can run together (the tool calls of one LLM answer, several
 * sub-agents) are all written before any answer is read, so the worker may run them in
 * parallel; answers are matched by id.
 */
#include "executor.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "strutil.h"

struct session {
        FILE *in, *out, *err;
        unsigned long next_id;
        json_t *answers; /* {"id": answer} read while waiting for another id */
        json_t *unread;  /* {"id": true}: requests whose answers are dropped when they come */
        bool deltas;     /* the worker offers llm_messages_from */
        size_t sent;     /* messages in the previous llm request */
        char *line;
        size_t line_cap;
};

static int fail(struct session *s, const char *what)
{
        fprintf(s->err, "agently executor: %s\n", what);
        return -EPROTO;
}

/* Writes req (given its v and id here; the id is returned in idbuf). */
static int send_request(struct session *s, json_t *req, char idbuf[32])
{
        _cleanup_free_ char *text = NULL;

        snprintf(idbuf, 32, "%lu", ++s->next_id);
        if (json_object_set_new(req, "v", json_integer(1)) < 0 ||
            json_object_set_new(req, "id", json_string(idbuf)) < 0)
                return -ENOMEM;
        text = json_dumps(req, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (!text)
                return -ENOMEM;
        size_t n = strlen(text);
        if (n >= EXECUTOR_MAX_LINE)
                return fail(s, "a request is longer than the protocol's line limit");
        /* the line and its end in one write: the worker wakes once per request */
        char *line = realloc(text, n + 2);
        if (!line)
                return -ENOMEM;
        text = line;
        text[n] = '\n';
        text[n + 1] = '\0';
        if (fwrite(text, 1, n + 1, s->out) != n + 1 || fflush(s->out) != 0)
                return fail(s, "could not write to the worker");
        return 0;
}

/* Reads one line as a JSON object of version 1. */
static int read_message(struct session *s, json_t **out)
{
        json_error_t jerr;
        ssize_t n = getline(&s->line, &s->line_cap, s->in);

        if (n < 0)
                return fail(s, "the worker closed the session");
        if (n >= EXECUTOR_MAX_LINE)
                return fail(s, "a line from the worker is longer than the protocol's limit");
        *out = json_loadb(s->line, (size_t)n, 0, &jerr);
        if (!*out || !json_is_object(*out))
                return fail(s, "a line from the worker is not a JSON object");
        if (json_integer_value(json_object_get(*out, "v")) != 1) {
                json_decref(*out);
                *out = NULL;
                return fail(s, "the worker speaks another protocol version than 1");
        }
        return 0;
}

/* The answer to request id (a new reference in *out), reading and keeping others. */
static int wait_answer(struct session *s, const char *id, json_t **out)
{
        for (;;) {
                json_t *a = json_object_get(s->answers, id);
                json_t *m = NULL;
                const char *mid;
                int r;

                if (a) {
                        *out = json_incref(a);
                        json_object_del(s->answers, id);
                        return 0;
                }
                r = read_message(s, &m);
                if (r < 0)
                        return r;
                mid = json_string_value(json_object_get(m, "id"));
                if (!mid) {
                        json_decref(m);
                        return fail(s, "an answer from the worker has no id");
                }
                if (json_object_get(s->unread, mid)) { /* an event's: it carries nothing */
                        json_object_del(s->unread, mid);
                        json_decref(m);
                        continue;
                }
                r = json_object_set_new(s->answers, mid, m);
                if (r < 0)
                        return -ENOMEM;
        }
}

/* Sends one request and waits for its answer. Takes req. */
static int call(struct session *s, json_t *req, json_t **answer)
{
        char id[32];
        int r = send_request(s, req, id);

        json_decref(req);
        return r < 0 ? r : wait_answer(s, id, answer);
}

/* Ends the session with an error request. */
static int give_up(struct session *s, const char *klass, const char *message)
{
        _cleanup_json_ json_t *ans = NULL;
        json_t *req =
            json_pack("{s:s, s:s, s:s}", "type", "error", "class", klass, "message", message);

        if (!req)
                return -ENOMEM;
        return call(s, req, &ans);
}

static int finish(struct session *s, json_t *output)
{
        _cleanup_json_ json_t *ans = NULL;
        json_t *req = json_pack("{s:s, s:O}", "type", "result", "output", output);

        if (!req)
                return -ENOMEM;
        return call(s, req, &ans);
}

/* The tools as the neutral LLM request wants them: {name, description, parameters}. */
static json_t *llm_tools(const json_t *tools)
{
        json_t *out = json_array(), *t;
        size_t i;

        if (!out)
                return NULL;
        json_array_foreach (tools, i, t) {
                json_t *d = json_pack("{s:O, s:O?, s:O}", "name", json_object_get(t, "name"),
                                      "description", json_object_get(t, "description"),
                                      "parameters", json_object_get(t, "parameters"));
                if (!d || json_array_append_new(out, d) < 0) {
                        json_decref(out);
                        return NULL;
                }
        }
        return out;
}

/* What a tool call asks of the worker, or NULL and *local (a tool message the model gets
 * back at once) when the call cannot be sent (arguments that are not JSON). */
static json_t *tool_request(const json_t *call, json_t **local)
{
        const char *name = json_string_value(json_object_get(call, "name"));
        const char *id = json_string_value(json_object_get(call, "id"));
        const char *text = json_string_value(json_object_get(call, "arguments"));
        json_error_t jerr;
        _cleanup_json_ json_t *args = text ? json_loads(text, 0, &jerr) : NULL;

        *local = NULL;
        if (!name)
                name = "";
        if (!json_is_object(args)) {
                _cleanup_free_ char *m = str_printf(
                    "the arguments of %s are not a JSON object; call it again with an object",
                    name);
                *local = json_pack("{s:s, s:s?, s:s, s:b}", "role", "tool", "tool_call_id", id,
                                   "content", m ? m : "invalid arguments", "is_error", 1);
                return NULL;
        }
        if (!strcmp(name, "ask_human")) {
                const char *q = json_string_value(json_object_get(args, "question"));
                return json_pack("{s:s, s:s?, s:s}", "type", "ask_human", "call_id", id, "question",
                                 q ? q : "");
        }
        if (!strcmp(name, "spawn_agent"))
                return json_pack("{s:s, s:s?, s:O?, s:O?}", "type", "spawn", "call_id", id,
                                 "prompt", json_object_get(args, "prompt"), "input",
                                 json_object_get(args, "input"));
        return json_pack("{s:s, s:s?, s:s, s:O}", "type", "tool", "call_id", id, "name", name,
                         "arguments", args);
}

/* JSON as the text a tool message carries: strings as they are, anything else as JSON. */
static char *as_text(const json_t *v)
{
        if (json_is_string(v))
                return strdup(json_string_value(v));
        if (!v)
                return strdup("null");
        return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/*
 * The tool message for one answered call. A refusal the model can act on (a tool it was not
 * given, a host outside its allowed list, arguments of the wrong shape) goes back to it as
 * an error result; any other failure ends the session (*fatal).
 */
static json_t *tool_message(const char *type, const char *call_id, const json_t *answer,
                            const json_t **fatal)
{
        const json_t *res = json_object_get(answer, "result");
        _cleanup_free_ char *content = NULL;
        bool is_error = false;

        *fatal = NULL;
        if (!json_is_true(json_object_get(answer, "ok"))) {
                const json_t *e = json_object_get(answer, "error");
                const char *klass = json_string_value(json_object_get(e, "class"));
                if (!klass || (strcmp(klass, "not_allowed") && strcmp(klass, "unknown_tool") &&
                               strcmp(klass, "invalid_request"))) {
                        *fatal = e;
                        return NULL;
                }
                content = str_printf("%s: %s", klass,
                                     json_string_value(json_object_get(e, "message"))
                                         ? json_string_value(json_object_get(e, "message"))
                                         : "refused");
                is_error = true;
        } else if (!strcmp(type, "tool")) {
                content = as_text(json_object_get(res, "content"));
                is_error = json_is_true(json_object_get(res, "is_error"));
        } else if (!strcmp(type, "ask_human")) {
                content = as_text(json_object_get(res, "answer"));
        } else {
                content = as_text(json_object_get(res, "output"));
        }
        if (!content)
                return NULL;
        return json_pack("{s:s, s:s?, s:s, s:b}", "role", "tool", "tool_call_id", call_id,
                         "content", content, "is_error", is_error);
}

/* Runs the calls of one LLM answer: every request first, then every answer, in call order
 * into messages. 1 when a finish call ended the session, 0 to go on, < 0 to stop. */
static int run_calls(struct session *s, const json_t *calls, json_t *messages)
{
        size_t n = json_array_size(calls), i;
        _cleanup_free_ char(*ids)[32] = calloc(n ? n : 1, sizeof(*ids));
        _cleanup_json_ json_t *locals = json_array(), *types = json_array();
        const json_t *call;
        int r;

        if (!ids || !locals || !types)
                return -ENOMEM;
        /* finish wins: its answer is the agent's, whatever else was asked alongside */
        json_array_foreach (calls, i, call) {
                if (strcmp(json_string_value(json_object_get(call, "name")) ?: "", "finish"))
                        continue;
                const char *text = json_string_value(json_object_get(call, "arguments"));
                json_error_t jerr;
                _cleanup_json_ json_t *args = text ? json_loads(text, 0, &jerr) : NULL;
                json_t *answer = json_object_get(args, "answer");
                r = finish(s, answer ? answer : args ? args : json_null());
                return r < 0 ? r : 1;
        }
        json_array_foreach (calls, i, call) {
                json_t *local = NULL, *req = tool_request(call, &local);
                if (req) {
                        json_array_append_new(
                            types, json_string(json_string_value(json_object_get(req, "type"))));
                        r = send_request(s, req, ids[i]);
                        json_decref(req);
                        if (r < 0)
                                return r;
                        json_array_append_new(locals, json_null());
                } else if (local) {
                        json_array_append_new(types, json_null());
                        json_array_append_new(locals, local);
                } else {
                        return -ENOMEM;
                }
        }
        json_array_foreach (calls, i, call) {
                json_t *local = json_array_get(locals, i), *msg;
                _cleanup_json_ json_t *answer = NULL;
                const json_t *fatal;
                if (!json_is_null(local)) {
                        if (json_array_append(messages, local) < 0)
                                return -ENOMEM;
                        continue;
                }
                r = wait_answer(s, ids[i], &answer);
                if (r < 0)
                        return r;
                msg = tool_message(json_string_value(json_array_get(types, i)),
                                   json_string_value(json_object_get(call, "id")), answer, &fatal);
                if (fatal) {
                        const char *klass = json_string_value(json_object_get(fatal, "class"));
                        const char *m = json_string_value(json_object_get(fatal, "message"));
                        r = give_up(s, klass ? klass : "tool", m ? m : "a tool call failed");
                        return r < 0 ? r : 1;
                }
                if (!msg || json_array_append_new(messages, msg) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* The final answer of a reply without tool calls: its text, or the JSON it holds when the
 * agent has an output schema. 1 when the session ended, < 0 on failure. */
static int answer_with_text(struct session *s, const json_t *agent, const char *text)
{
        json_error_t jerr;
        _cleanup_json_ json_t *v = NULL;

        if (!json_is_object(json_object_get(agent, "output_schema"))) {
                _cleanup_json_ json_t *t = json_string(text);
                int r = t ? finish(s, t) : -ENOMEM;
                return r < 0 ? r : 1;
        }
        v = json_loads(text, JSON_DECODE_ANY, &jerr);
        if (!v) {
                int r = give_up(s, "invalid_output",
                                "the agent has an output schema but its answer is not JSON");
                return r < 0 ? r : 1;
        }
        int r = finish(s, v);
        return r < 0 ? r : 1;
}

/* Sends an event without waiting for its answer, which carries nothing (dropped when it
 * comes): the next request follows at once, one round trip fewer per turn. */
static int event(struct session *s, const char *kind, const char *message)
{
        _cleanup_json_ json_t *req = NULL;
        size_t n = strlen(message);
        char id[32];
        int r;

        if (n > 4096) { /* the protocol's limit, cut on a character boundary */
                n = 4096;
                while (n > 0 && ((unsigned char)message[n] & 0xC0) == 0x80)
                        n--;
        }
        req = json_pack("{s:s, s:s, s:s%}", "type", "event", "kind", kind, "message", message, n);
        if (!req)
                return -ENOMEM;
        r = send_request(s, req, id);
        if (r < 0)
                return r;
        return json_object_set_new(s->unread, id, json_true()) < 0 ? -ENOMEM : 0;
}

/* Whether the start message offers an optional protocol feature (docs/executor-protocol.md,
 * "Optional features"). */
static bool offered(const json_t *start, const char *feature)
{
        const json_t *f;
        size_t i;

        json_array_foreach (json_object_get(start, "features"), i, f)
                if (json_is_string(f) && !strcmp(json_string_value(f), feature))
                        return true;
        return false;
}

/*
 * The llm request of this turn. With llm_messages_from offered, only the messages added
 * since the previous llm request go (the worker keeps the rest: the conversation is not
 * written, parsed and hashed whole on every call); the first request, and any without the
 * feature, carries the whole list. messages only grows.
 */
static json_t *llm_request(struct session *s, const json_t *agent, json_t *messages, json_t *tools)
{
        size_t n = json_array_size(messages), from = s->deltas && s->sent <= n ? s->sent : 0;
        json_t *list = json_array(), *req;

        for (size_t i = from; list && i < n; i++)
                if (json_array_append(list, json_array_get(messages, i)) < 0) {
                        json_decref(list);
                        list = NULL;
                }
        if (!list)
                return NULL;
        req = json_pack("{s:s, s:{s:o, s:O, s:s}}", "type", "llm", "request", "messages", list,
                        "tools", tools, "tool_choice", "auto");
        if (!req)
                return NULL;
        if (from > 0 &&
            json_object_set_new(req, "messages_from", json_integer((json_int_t)from)) < 0) {
                json_decref(req);
                return NULL;
        }
        if (json_is_string(json_object_get(agent, "system")))
                json_object_set(json_object_get(req, "request"), "system",
                                json_object_get(agent, "system"));
        if (json_array_size(tools) == 0) {
                json_object_del(json_object_get(req, "request"), "tools");
                json_object_del(json_object_get(req, "request"), "tool_choice");
        }
        s->sent = n;
        return req;
}

/* The first user message: the prompt, and the input when there is one to show. */
static json_t *first_message(const json_t *agent, const json_t *input)
{
        const char *prompt = json_string_value(json_object_get(agent, "prompt"));
        _cleanup_free_ char *in = NULL, *text = NULL;

        if (input && !json_is_null(input) &&
            !(json_is_object(input) && json_object_size(input) == 0))
                in = json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        text = in ? str_printf("%s\n\nInput: %s", prompt ? prompt : "", in)
                  : strdup(prompt ? prompt : "");
        return text ? json_pack("{s:s, s:s}", "role", "user", "content", text) : NULL;
}

static int loop(struct session *s, const json_t *start)
{
        const json_t *agent = json_object_get(start, "agent");
        json_int_t max_turns = json_integer_value(json_object_get(agent, "max_turns"));
        _cleanup_json_ json_t *messages = json_array(), *tools = NULL;
        int r;

        if (!json_is_object(agent) || !json_is_string(json_object_get(agent, "prompt")))
                return fail(s, "the start message has no agent with a prompt");
        if (max_turns <= 0)
                max_turns = EXECUTOR_DEFAULT_MAX_TURNS;
        s->deltas = offered(start, "llm_messages_from");
        tools = llm_tools(json_object_get(agent, "tools"));
        if (!messages || !tools ||
            json_array_append_new(messages, first_message(agent, json_object_get(start, "input"))) <
                0)
                return -ENOMEM;

        for (json_int_t turn = 0; turn < max_turns; turn++) {
                _cleanup_json_ json_t *answer = NULL;
                json_t *req = llm_request(s, agent, messages, tools);
                if (!req)
                        return -ENOMEM;
                r = call(s, req, &answer);
                if (r < 0)
                        return r;
                if (!json_is_true(json_object_get(answer, "ok"))) {
                        const json_t *e = json_object_get(answer, "error");
                        const char *m = json_string_value(json_object_get(e, "message"));
                        const char *klass = json_string_value(json_object_get(e, "class"));
                        return give_up(s, klass ? klass : "llm", m ? m : "the llm call failed");
                }
                const json_t *res = json_object_get(answer, "result");
                const char *text = json_string_value(json_object_get(res, "text"));
                const json_t *calls = json_object_get(res, "tool_calls");
                if (!text)
                        text = "";
                if (json_array_size(calls) == 0)
                        return answer_with_text(s, agent, text) < 0 ? -EIO : 0;
                if (*text && (r = event(s, "reasoning", text)) < 0)
                        return r;
                json_t *assistant = json_pack("{s:s, s:s?, s:O}", "role", "assistant", "content",
                                              *text ? text : NULL, "tool_calls", calls);
                if (!assistant || json_array_append_new(messages, assistant) < 0)
                        return -ENOMEM;
                r = run_calls(s, calls, messages);
                if (r != 0)
                        return r < 0 ? r : 0;
        }
        _cleanup_free_ char *m =
            str_printf("%lld llm calls without a final answer (max_turns)", (long long)max_turns);
        return give_up(s, "limit", m ? m : "too many llm calls");
}

int executor_run(FILE *in, FILE *out, FILE *err)
{
        struct session s = {
            .in = in, .out = out, .err = err, .answers = json_object(), .unread = json_object()};
        _cleanup_json_ json_t *start = NULL;
        int r;

        if (!s.answers || !s.unread) {
                json_decref(s.answers);
                json_decref(s.unread);
                return 1;
        }
        /* unbuffered: a request is one fwrite of its whole line, so one write(2) (a buffered
         * stream writes a long line in pieces, and the worker wakes for each) */
        if (fileno(out) >= 0)
                setvbuf(out, NULL, _IONBF, 0);
        r = read_message(&s, &start);
        if (r == 0 && strcmp(json_string_value(json_object_get(start, "type")) ?: "", "start"))
                r = fail(&s, "the first message is not a start message");
        if (r == 0)
                r = loop(&s, start);
        if (r == -ENOMEM)
                fail(&s, "out of memory");
        free(s.line);
        json_decref(s.answers);
        json_decref(s.unread);
        return r < 0 ? 1 : 0;
}
