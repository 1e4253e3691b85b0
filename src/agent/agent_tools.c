/*
 * The built-in tools: one JSON Schema each (the same object serves both LLM providers, see
 * src/llm), the effect class each declares, and http_request performed through the
 * worker's libcurl multi handle — only to the agent's allowed_hosts, with a stable
 * idempotency key, its response capped, `${ secrets.NAME }` in it expanded only in the
 * request that leaves. shell and run_code: agent_tools_sandbox.c.
 */
#include "agent_internal.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "runtime_http.h"
#include "sandbox_tools.h"
#include "strutil.h"

static const char HTTP_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"method\":{\"type\":\"string\",\"enum\":[\"GET\",\"POST\",\"PUT\",\"PATCH\",\"DELETE\","
    "\"HEAD\",\"OPTIONS\"]},"
    "\"url\":{\"type\":\"string\",\"description\":\"http:// or https:// URL\"},"
    "\"headers\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}},"
    "\"body\":{\"type\":\"string\"}},\"required\":[\"method\",\"url\"]}";
static const char ASK_SCHEMA[] = "{\"type\":\"object\",\"properties\":{\"question\":{\"type\":"
                                 "\"string\"}},\"required\":[\"question\"]}";
static const char SPAWN_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"prompt\":{\"type\":\"string\"},\"input\":{}},"
    "\"required\":[\"prompt\"]}";
static const char FINISH_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"answer\":{\"description\":\"the final answer\"}},"
    "\"required\":[\"answer\"]}";

static const struct tool {
        const char *name, *description, *schema, *effect;
} TOOLS[] = {
    {"http_request",
     "Send an HTTP request and get its status and body. Only some hosts are allowed.", HTTP_SCHEMA,
     "idempotent"},
    {"ask_human", "Ask a person a question and wait for the answer.", ASK_SCHEMA, "read_only"},
    {"spawn_agent", "Start a sub-agent with its own prompt and wait for its answer.", SPAWN_SCHEMA,
     "idempotent"},
    {"finish", "Give the final answer and stop.", FINISH_SCHEMA, "read_only"},
    /* their schemas and descriptions: agent_tools_sandbox.c (the languages found here) */
    {"shell", NULL, NULL, "irreversible"},
    {"run_code", NULL, NULL, "irreversible"},
};

static const struct tool *tool_find(const char *name)
{
        for (size_t i = 0; name && i < ELEMENTSOF(TOOLS); i++)
                if (!strcmp(TOOLS[i].name, name))
                        return &TOOLS[i];
        return NULL;
}

const char *agent_tool_effect(const char *tool, const json_t *arguments)
{
        const struct tool *t = tool_find(tool);
        const char *method = json_string_value(json_object_get(arguments, "method"));

        if (!t)
                return NULL;
        if (!strcmp(tool, "http_request") && method &&
            (!strcasecmp(method, "GET") || !strcasecmp(method, "HEAD") ||
             !strcasecmp(method, "OPTIONS")))
                return "read_only";
        return t->effect;
}

static json_t *definition(const struct agent_session *s, const struct tool *t)
{
        json_error_t jerr;
        json_t *schema = json_loads(t->schema, 0, &jerr);
        _cleanup_free_ char *hint = s && !strcmp(t->name, "http_request")
                                        ? agent_secrets_hint(s, "in the url, headers or body")
                                        : NULL;

        return schema ? json_pack("{s:s, s:s++, s:s, s:o}", "name", t->name, "description",
                                  t->description, hint ? " " : "", hint ? hint : "", "effect",
                                  t->effect, "parameters", schema)
                      : NULL;
}

json_t *agent_tool_definitions(struct agent_session *s, const json_t *names)
{
        json_t *out = json_array(), *n;
        size_t i;
        bool finish = false;

        if (!out)
                return NULL;
        json_array_foreach (names, i, n) {
                const struct tool *t = tool_find(json_string_value(n));
                if (!t)
                        continue; /* the engine refused unknown names already */
                finish |= !strcmp(t->name, "finish");
                if (sandbox_tools_has(t->name)) {
                        /* not offered when no sandbox can start here: a call would fail */
                        _cleanup_free_ char *why = NULL;
                        json_t *d = agent_sandbox_tool_definition(s, t->name, &why);
                        if (d)
                                json_array_append_new(out, d);
                        continue;
                }
                json_array_append_new(out, definition(s, t));
        }
        if (!finish)
                json_array_append_new(out, definition(s, tool_find("finish")));
        return out;
}

json_t *agent_tool_parameters(struct agent_session *s, const char *name)
{
        const struct tool *t = tool_find(name);
        json_error_t jerr;

        if (!t)
                return NULL;
        if (sandbox_tools_has(t->name)) {
                _cleanup_free_ char *why = NULL;
                _cleanup_json_ json_t *d = agent_sandbox_tool_definition(s, t->name, &why);
                return json_incref(json_object_get(d, "parameters"));
        }
        return json_loads(t->schema, 0, &jerr);
}

static bool agent_has_tool(const struct agent_session *s, const char *name)
{
        json_t *n;
        size_t i;

        json_array_foreach (json_object_get(s->agent, "tools"), i, n)
                if (json_is_string(n) && !strcmp(json_string_value(n), name))
                        return true;
        return false;
}

/* The host of an http(s) URL into out; false when there is none or it has user info. */
static bool url_host(const char *url, char *out, size_t n)
{
        const char *p = strstr(url, "://"), *end;
        size_t len;

        if (!p || (!str_has_prefix(url, "http://") && !str_has_prefix(url, "https://")))
                return false;
        p += 3;
        end = p + strcspn(p, "/?#");
        if (memchr(p, '@', (size_t)(end - p)))
                return false;
        if (*p == '[') {
                const char *close = memchr(p, ']', (size_t)(end - p));
                if (!close)
                        return false;
                p++;
                len = (size_t)(close - p);
        } else {
                const char *colon = memchr(p, ':', (size_t)(end - p));
                len = (size_t)((colon ? colon : end) - p);
        }
        if (len == 0 || len >= n)
                return false;
        memcpy(out, p, len);
        out[len] = '\0';
        return true;
}

static bool host_allowed(const struct agent_session *s, const char *host)
{
        json_t *h;
        size_t i;

        json_array_foreach (json_object_get(s->agent, "allowed_hosts"), i, h)
                if (json_is_string(h) && !strcasecmp(json_string_value(h), host))
                        return true;
        return false;
}

static int refuse(json_t **refusal, const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(json_t **refusal, const char *klass, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        *refusal = json_pack("{s:s, s:s}", "class", klass, "message", m ? m : klass);
        free(m);
        return -EPERM;
}

int agent_tool_start(struct agent_session *s, struct agent_pending *p, json_t **refusal)
{
        const char *name = json_string_value(json_object_get(p->request, "name"));
        const json_t *args = json_object_get(p->request, "arguments");
        const char *method, *url;
        char host[256];
        _cleanup_json_ json_t *req = NULL;
        _cleanup_free_ char *key = NULL, *err = NULL;
        int r;

        *refusal = NULL;
        if (!name || !tool_find(name) || !strcmp(name, "finish") || !strcmp(name, "ask_human") ||
            !strcmp(name, "spawn_agent"))
                return refuse(refusal, "unknown_tool",
                              "no tool named '%.64s' (finish, ask_human and spawn_agent have "
                              "requests of their own)",
                              name ? name : "");
        if (!agent_has_tool(s, name))
                return refuse(refusal, "not_allowed", "this agent was not given the tool %s", name);
        if (!json_is_object(args))
                return refuse(refusal, "invalid_request", "the arguments must be an object");
        if (sandbox_tools_has(name))
                return agent_sandbox_tool_start(s, p, refusal);
        method = json_string_value(json_object_get(args, "method"));
        url = json_string_value(json_object_get(args, "url"));
        if (!method || !url)
                return refuse(refusal, "invalid_request",
                              "http_request needs method and url, e.g. {\"method\": \"GET\", "
                              "\"url\": \"https://api.example.com/\"}");
        if (!url_host(url, host, sizeof(host)))
                return refuse(refusal, "invalid_request",
                              "the url must be http:// or https:// with a host and no user info");
        if (!host_allowed(s, host))
                return refuse(refusal, "not_allowed",
                              "the host %s is not in this agent's allowed_hosts", host);
        _cleanup_free_ char *why = NULL;
        _cleanup_json_ json_t *sent = NULL; /* with the secrets' values: sent, never kept */
        r = agent_secrets_check(s, args, &why);
        if (r < 0)
                return refuse(refusal, r == -EPERM ? "not_allowed" : "invalid_request", "%s",
                              why ? why : "a secret reference was refused");
        if (r > 0) {
                char sent_host[256];
                const char *sent_url;
                r = agent_secrets_expand(s, args, &sent, &why);
                if (r < 0)
                        return refuse(refusal, "secret", "%s",
                                      why ? why : "a secret could not be opened");
                sent_url = json_string_value(json_object_get(sent, "url"));
                /* a value must not move the request to another host (a "port" of
                 * "80@elsewhere") nor add header lines */
                if (!sent_url || !url_host(sent_url, sent_host, sizeof(sent_host)) ||
                    strcasecmp(sent_host, host) != 0)
                        return refuse(refusal, "not_allowed",
                                      "a secret in the url would change its host; put secrets "
                                      "in the path, the query, a header or the body");
                const char *hk;
                json_t *hv;
                json_object_foreach (json_object_get(sent, "headers"), hk, hv)
                        if (json_is_string(hv) && strpbrk(json_string_value(hv), "\r\n"))
                                return refuse(refusal, "invalid_request",
                                              "the header %s would hold a line break", hk);
                args = sent;
                url = sent_url;
        }
        p->effect = agent_tool_effect(name, args);
        /* the same for this call on every resume: the receiver can deduplicate */
        char okey[96];
        snprintf(okey, sizeof(okey), "tool:%s", p->hash);
        key = str_printf("%s:%.16s:%lld", s->agent_run_id, p->hash,
                         (long long)json_integer_value(json_object_get(s->occurrences, okey)));
        req = json_pack("{s:s, s:s, s:[[i,i]]}", "method", method, "url", url, "expect_status", 100,
                        599);
        if (!key || !req)
                return -ENOMEM;
        if (json_object_get(args, "headers"))
                json_object_set(req, "headers", json_object_get(args, "headers"));
        if (json_object_get(args, "body"))
                json_object_set(req, "body", json_object_get(args, "body"));
        if ((r = agent_effect_barrier(s)) < 0)
                return r;
        r = runtime_http_start(s->host->cfg.http, req, key, AGENT_TOOL_TIMEOUT_MS, false, p,
                               &p->transfer, &err);
        if (r == -EINVAL)
                return refuse(refusal, "invalid_request", "%s", err ? err : "invalid request");
        return r;
}

/* Text cut to at most max bytes on a character boundary, marked when cut. */
static char *capped(const char *text, size_t max)
{
        size_t n = strlen(text);

        if (n <= max)
                return strdup(text);
        while (n > 0 && (n > max || ((unsigned char)text[n] & 0xC0) == 0x80))
                n--;
        return str_printf("%.*s…[cut at %zu bytes]", (int)n, text, max);
}

json_t *agent_tool_result(struct agent_session *s, struct agent_pending *p, const json_t *output,
                          const json_t *error, json_t *events)
{
        const char *name = json_string_value(json_object_get(p->request, "name"));
        const char *call_id = json_string_value(json_object_get(p->request, "call_id"));
        _cleanup_free_ char *full = NULL, *content = NULL, *preview = NULL;
        json_int_t status = json_integer_value(json_object_get(output, "status"));
        bool is_error;
        _cleanup_json_ json_t *args = agent_redact(s, json_object_get(p->request, "arguments"));

        if (sandbox_tools_has(name))
                return agent_sandbox_tool_result(s, p, output, error, events);
        if (output) {
                _cleanup_json_ json_t *c = json_pack("{s:I, s:O?}", "status", status, "body",
                                                     json_object_get(output, "body"));
                full = c ? json_dumps(c, JSON_COMPACT) : NULL;
                is_error = status >= 400;
        } else {
                const char *klass = json_string_value(json_object_get(error, "class"));
                const char *m = json_string_value(json_object_get(error, "message"));
                full = str_printf("the request failed (%s): %s", klass ? klass : "error",
                                  m ? m : "no message");
                status = json_integer_value(json_object_get(error, "status"));
                is_error = true;
        }
        if (!full || !(content = capped(full, AGENT_TOOL_CONTENT_MAX)) ||
            !(preview = capped(content, 512)))
                return NULL;
        json_array_append_new(events, json_pack("{s:s, s:s+, s:{s:s?, s:s?, s:s?, s:O?}}", "kind",
                                                "agent.tool_call", "message", "tool call ",
                                                name ? name : "", "data", "name", name, "call_id",
                                                call_id, "effect", p->effect, "arguments", args));
        json_array_append_new(
            events, json_pack("{s:s, s:s+, s:{s:s?, s:s?, s:s?, s:b, s:I, s:I, s:s}}", "kind",
                              "agent.tool_result", "message", "tool result ", name ? name : "",
                              "data", "name", name, "call_id", call_id, "effect", p->effect,
                              "is_error", is_error, "status", status, "duration_ms",
                              (json_int_t)(agent_now_ms() - p->started_ms), "preview", preview));
        return json_pack("{s:s, s:b, s:s?}", "content", content, "is_error", is_error, "effect",
                         p->effect);
}
