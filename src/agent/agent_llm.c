/*
 * An agent's LLM calls through src/llm's client (llm_call_start: streaming, retries with
 * Retry-After, timeouts, coalesced text) on the worker's multi handle. The request is the
 * executor's neutral request with the agent's model filled in and streaming on; the text
 * that streams in reaches the run's events as agent.text (at most 10 a second per call,
 * the client's coalescing).
 */
#include "agent_internal.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "llm_client.h"
#include "strutil.h"

static void on_text(void *userdata, const char *text, size_t len, int attempt)
{
        struct agent_pending *p = userdata;
        json_t *events;
        _cleanup_free_ char *piece = strndup(text, len);
        _cleanup_free_ char *clean = agent_redact_text(p->session, piece);

        if (!clean)
                return;
        events = json_pack("[{s:s, s:s, s:{s:s, s:i}}]", "kind", "agent.text", "message",
                           "the answer forms", "data", "text", clean, "attempt", attempt);
        /* written with the call's journal row, or by the hold's timer while it streams; a
         * missed piece of live text is harmless */
        if (events)
                (void)agent_db_hold(p->session, json_pack("{s:o}", "events", events),
                                    AGENT_HOLD_TEXT_MS);
}

static void on_done(void *userdata, struct llm_result *result, json_t *error,
                    const struct llm_call_info *info)
{
        struct agent_pending *p = userdata;

        p->call = NULL; /* freed by the client before this call */
        agent_llm_done(p, result, error, info ? info->duration_ms : 0);
}

int agent_llm_start(struct agent_session *s, struct agent_pending *p, char **error)
{
        const json_t *asked = json_object_get(p->request, "request");
        const char *model = json_string_value(json_object_get(s->agent, "model"));
        const char *asked_model = json_string_value(json_object_get(asked, "model"));
        const char *base = json_string_value(json_object_get(s->agent, "base_url"));
        _cleanup_json_ json_t *req = NULL;

        *error = NULL;
        if (!json_is_object(asked)) {
                *error = strdup("an llm request needs a request object (src/llm's neutral shape)");
                return -EINVAL;
        }
        if (asked_model && model && strcmp(asked_model, model) != 0) {
                *error = str_printf("this agent calls model %s, not %s", model, asked_model);
                return -EINVAL;
        }
        if (json_object_get(asked, "stream")) {
                *error = strdup("stream is the worker's choice; leave it out");
                return -EINVAL;
        }
        req = json_copy((json_t *)asked); /* members added here; the messages are shared */
        if (!req || json_object_set_new(req, "model", json_string(model ? model : "")) < 0 ||
            json_object_set_new(req, "stream", json_true()) < 0)
                return -ENOMEM;
        if (!json_object_get(req, "max_tokens") && json_object_get(s->agent, "max_tokens"))
                json_object_set(req, "max_tokens", json_object_get(s->agent, "max_tokens"));
        if (!base)
                base = s->provider == LLM_PROVIDER_ANTHROPIC ? "https://api.anthropic.com/v1"
                                                             : "https://api.openai.com/v1";
        if (!s->body_cache) /* NULL (no memory): the body is built whole */
                s->body_cache = llm_body_cache_new();
        struct llm_call_params params = {
            .provider = s->provider,
            .body_cache = s->body_cache,
            .base_url = base,
            .api_key = s->api_key,
            .request = req,
            .total_timeout_ms = AGENT_LLM_TIMEOUT_MS,
            .on_text = on_text,
            .on_done = on_done,
            .userdata = p,
            /* the previous answer's commit still in flight: its end follows it */
            .hold = s->write.pending,
        };
        return llm_call_start(s->host->cfg.http, &params, &p->call, error);
}

void agent_llm_release(struct agent_pending *p)
{
        llm_call_release(p->call);
}

void agent_llm_abort(struct agent_pending *p)
{
        llm_call_abort(p->call);
        p->call = NULL;
}
