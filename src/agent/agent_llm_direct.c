/*
 * THE TEMPORARY LLM CALL PATH: one non-streaming request per call through the worker's
 * libcurl multi handle, built and parsed by src/llm's wire formats. No retries, no
 * streaming, no coalesced text events: those are src/llm's client (issue 10, the provider
 * half), which replaces these two functions when it lands. Nothing else in src/agent sends
 * an LLM request.
 */
#include "agent_internal.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "runtime_http.h"
#include "strutil.h"

static const char *default_base_url(enum llm_provider p)
{
        return p == LLM_PROVIDER_ANTHROPIC ? "https://api.anthropic.com/v1"
                                           : "https://api.openai.com/v1";
}

int agent_llm_call_direct(struct agent_session *s, struct agent_pending *p, char **error)
{
        const json_t *asked = json_object_get(p->request, "request");
        const char *model = json_string_value(json_object_get(s->agent, "model"));
        const char *asked_model = json_string_value(json_object_get(asked, "model"));
        const char *base = json_string_value(json_object_get(s->agent, "base_url"));
        _cleanup_json_ json_t *req = NULL, *body = NULL, *http = NULL, *headers = NULL;
        _cleanup_free_ char *url = NULL;
        char **lines = NULL;
        int r;

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
        req = json_deep_copy(asked);
        if (!req || json_object_set_new(req, "model", json_string(model ? model : "")) < 0 ||
            json_object_set_new(req, "stream", json_false()) < 0)
                return -ENOMEM;
        if (!json_object_get(req, "max_tokens") && json_object_get(s->agent, "max_tokens"))
                json_object_set(req, "max_tokens", json_object_get(s->agent, "max_tokens"));
        r = llm_build_request(s->provider, req, &body, error);
        if (r < 0)
                return r;
        if (!base)
                base = default_base_url(s->provider);
        size_t blen = strlen(base);
        while (blen > 0 && base[blen - 1] == '/')
                blen--;
        url = str_printf("%.*s%s", (int)blen, base, llm_endpoint_path(s->provider));
        lines = llm_request_headers(s->provider, s->api_key);
        headers = json_object();
        if (!url || !lines || !headers) {
                llm_headers_free(lines);
                return -ENOMEM;
        }
        for (char **l = lines; *l; l++) {
                char *colon = strchr(*l, ':');
                if (!colon)
                        continue;
                *colon = '\0';
                json_object_set_new(headers, *l, json_string(colon + 1 + (colon[1] == ' ')));
        }
        llm_headers_free(lines);
        http = json_pack("{s:s, s:s, s:O, s:O}", "method", "POST", "url", url, "headers", headers,
                         "body", body);
        if (!http)
                return -ENOMEM;
        r = runtime_http_start(s->host->cfg.http, http, NULL, AGENT_LLM_TIMEOUT_MS, false, p,
                               &p->transfer, error);
        if (headers) /* the key leaves with the request only: wipe our copy of the header */
                json_object_clear(headers);
        return r;
}

int agent_llm_result_direct(struct agent_session *s, const json_t *output, const json_t *error,
                            struct llm_result *out, char **message)
{
        const json_t *body = json_object_get(output, "body");
        _cleanup_free_ char *text = NULL;

        if (!output) {
                const char *klass = json_string_value(json_object_get(error, "class"));
                const char *m = json_string_value(json_object_get(error, "message"));
                _cleanup_free_ char *raw =
                    str_printf("the llm call failed (%s): %s", klass ? klass : "error", m ? m : "");
                *message = agent_redact_text(s, raw ? raw : "the llm call failed");
                return -EIO;
        }
        if (json_is_string(body))
                text = strdup(json_string_value(body));
        else
                text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
                return -ENOMEM;
        char *err = NULL;
        int r = llm_parse_response(s->provider, text, strlen(text), out, &err);
        if (r < 0) {
                *message = agent_redact_text(s, err ? err : "the llm answer could not be read");
                free(err);
        }
        return r;
}
