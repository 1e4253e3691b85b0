/*
 * The failure policy: after a failed attempt, retry (when attempts remain and the failure
 * class is one the node retries on) at a time computed from the backoff, or settle the
 * node for good according to on_failure. Randomness for the jitter comes in as a
 * parameter, so this stays pure and testable. Also the one table of failure classes.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "duration.h"
#include "strutil.h"

/*
 * The failure classes: what errors carry in "class", what retry_on names, and what
 * expressions compare (nodes.x.error.class). docs/workflows.md documents this table; the
 * runtime and the planner produce only these names (canceled, which ends a node and its
 * run without the policy being asked, is not in retry_on).
 */
static const struct {
        const char *name;
        unsigned bit;
} classes[] = {
    {"connect", WF_RETRY_CONNECT},
    {"network", WF_RETRY_NETWORK},
    {"timeout", WF_RETRY_TIMEOUT},
    {"http_429", WF_RETRY_HTTP_429},
    {"http_4xx", WF_RETRY_HTTP_4XX},
    {"http_5xx", WF_RETRY_HTTP_5XX},
    {"http_status", WF_RETRY_HTTP_STATUS},
    {"too_large", WF_RETRY_TOO_LARGE},
    {"error", WF_RETRY_ERROR},
    {"interrupted", WF_RETRY_INTERRUPTED},
};

const char *wf_retry_on_names(void)
{
        return "connect, network, timeout, http_429, http_4xx, http_5xx, http_status, "
               "too_large, error, interrupted";
}

unsigned wf_retry_on_bits(const char *name)
{
        for (size_t i = 0; name && i < sizeof(classes) / sizeof(classes[0]); i++)
                if (!strcmp(classes[i].name, name))
                        return classes[i].bit == WF_RETRY_NETWORK
                                   ? WF_RETRY_NETWORK | WF_RETRY_CONNECT
                                   : classes[i].bit;
        return 0;
}

/* The class of an error: its bit and name; anything unknown is an "error". */
static unsigned failure_bit(const json_t *error, const char **name)
{
        const char *klass = json_string_value(json_object_get(error, "class"));

        for (size_t i = 0; klass && i < sizeof(classes) / sizeof(classes[0]); i++)
                if (!strcmp(classes[i].name, klass)) {
                        *name = classes[i].name;
                        return classes[i].bit;
                }
        *name = "error";
        return WF_RETRY_ERROR;
}

/* The delay before attempt `next` (>= 2). */
static int64_t backoff_delay(const struct wf_retry *r, int next, uint64_t random)
{
        int64_t cap = r->initial_ms;

        if (r->backoff == WF_BACKOFF_EXPONENTIAL) {
                for (int i = 2; i < next && cap < r->max_ms; i++)
                        cap = cap > r->max_ms / 2 ? r->max_ms : cap * 2;
                if (cap > r->max_ms)
                        cap = r->max_ms;
                if (!r->jitter)
                        return cap;
                /* full jitter, floored at the initial delay */
                if (cap <= r->initial_ms)
                        return cap;
                return r->initial_ms + (int64_t)(random % (uint64_t)(cap - r->initial_ms + 1));
        }
        if (!r->jitter || cap < 2)
                return cap;
        /* fixed with jitter: uniformly in [delay/2, delay] */
        return cap / 2 + (int64_t)(random % (uint64_t)(cap - cap / 2 + 1));
}

int wf_on_node_failure(const struct wf_workflow *wf, const char *node_id, int attempt,
                       const json_t *error, int64_t now_ms, uint64_t random, json_t **decision)
{
        return wf_on_node_failure_scaled(wf, node_id, attempt, error, now_ms, 1.0, random,
                                         decision);
}

int wf_on_node_failure_scaled(const struct wf_workflow *wf, const char *node_id, int attempt,
                              const json_t *error, int64_t now_ms, double time_scale,
                              uint64_t random, json_t **decision)
{
        const struct wf_node *n;
        const char *klass = "error", *status;
        _cleanup_free_ char *reason = NULL;
        unsigned bit;
        bool ambiguous;

        *decision = NULL;
        if (!wf || !node_id)
                return -EINVAL;
        n = wf_resolve_node(wf, node_id);
        if (!n)
                return -ENOENT;
        if (attempt < 1 || (error && !json_is_object(error)))
                return -EINVAL;
        bit = error ? failure_bit(error, &klass) : WF_RETRY_ERROR;
        /* an at_most_once request that may have been acted on (timed out or cut off after
         * it left, or answered 5xx) ends like one a crash interrupted: its outcome is
         * unknown, and only a class retry_on names sends it again */
        ambiguous = n->delivery == WF_AT_MOST_ONCE && (bit & WF_RETRY_AMBIGUOUS);
        status = ambiguous || bit == WF_RETRY_INTERRUPTED ? "interrupted" : "failed";
        if (attempt < n->retry.max_attempts && (n->retry.retry_on & bit)) {
                /* the run's time scale shrinks the workflow's own back-off; a server's
                 * Retry-After is its own demand and is honoured as sent */
                int64_t delay =
                    wf_time_scaled_ms(backoff_delay(&n->retry, attempt + 1, random), time_scale);
                json_t *ra = error ? json_object_get(error, "retry_after_ms") : NULL;
                if (bit == WF_RETRY_HTTP_429 && json_is_integer(ra) &&
                    json_integer_value(ra) > delay)
                        delay = json_integer_value(ra) > DURATION_MAX_MS ? DURATION_MAX_MS
                                                                         : json_integer_value(ra);
                *decision =
                    json_pack("{s:I,s:i,s:I,s:i,s:s}", "retry_at_ms", (json_int_t)(now_ms + delay),
                              "attempt", attempt + 1, "delay_ms", (json_int_t)delay, "max_attempts",
                              n->retry.max_attempts, "status", status);
                return *decision ? 0 : -ENOMEM;
        }
        if (ambiguous && !(n->retry.retry_on & bit))
                reason = str_printf("delivery is at_most_once and the request may have been "
                                    "acted on, so it is not sent again; list \"%s\" in "
                                    "retry.retry_on to send it again anyway",
                                    klass);
        else if (!(n->retry.retry_on & bit))
                reason = str_printf("%s is not in retry_on", klass);
        else
                reason = n->retry.max_attempts == 1
                             ? strdup("it has 1 attempt (retry.max_attempts)")
                             : str_printf("all %d attempts used", n->retry.max_attempts);
        const char *final = n->on_failure == WF_ON_FAILURE_CONTINUE   ? "continue"
                            : n->on_failure == WF_ON_FAILURE_ESCALATE ? "escalate"
                                                                      : "fail";
        if (!reason)
                return -ENOMEM;
        *decision = json_pack("{s:s,s:i,s:s,s:s}", "final", final, "max_attempts",
                              n->retry.max_attempts, "status", status, "reason", reason);
        return *decision ? 0 : -ENOMEM;
}

int wf_failure_event(const json_t *error, int attempt, const json_t *decision, char **message,
                     json_t **data)
{
        const char *klass = json_string_value(json_object_get(error, "class"));
        const char *text = json_string_value(json_object_get(error, "message"));
        const char *reason = json_string_value(json_object_get(decision, "reason"));
        json_t *duration = json_object_get(error, "duration_ms");
        json_t *max = json_object_get(decision, "max_attempts");
        json_t *next = json_object_get(decision, "attempt");
        char took[32] = "", of[32] = "", delay[32] = "";

        *message = NULL;
        *data =
            json_pack("{s:s,s:O?,s:O?,s:i,s:O?,s:O?,s:O?,s:O?,s:O?,s:s?}", "class",
                      klass ? klass : "error", "status", json_object_get(error, "status"),
                      "duration_ms", duration, "attempt", attempt, "max_attempts", max,
                      "next_attempt", next, "retry_at_ms", json_object_get(decision, "retry_at_ms"),
                      "delay_ms", json_object_get(decision, "delay_ms"), "final",
                      json_object_get(decision, "final"), "reason", reason);
        if (!*data)
                return -ENOMEM;
        /* what does not apply is left out, except that null says "no further attempt" */
        static const char *const optional[] = {"status",   "duration_ms", "max_attempts",
                                               "delay_ms", "final",       "reason"};
        for (size_t i = 0; i < sizeof(optional) / sizeof(optional[0]); i++)
                if (json_is_null(json_object_get(*data, optional[i])))
                        json_object_del(*data, optional[i]);
        if (json_is_integer(max))
                snprintf(of, sizeof(of), " of %lld", (long long)json_integer_value(max));
        if (json_is_integer(duration)) {
                char d[24];
                duration_format(json_integer_value(duration), d, sizeof(d));
                snprintf(took, sizeof(took), ", %s", d);
        }
        if (next) {
                duration_format(json_integer_value(json_object_get(decision, "delay_ms")), delay,
                                sizeof(delay));
                *message = str_printf("%s: %s (attempt %d%s%s); attempt %lld in %s",
                                      klass ? klass : "error", text ? text : "no message", attempt,
                                      of, took, (long long)json_integer_value(next), delay);
        } else {
                *message = str_printf("%s: %s (attempt %d%s%s); no further attempt%s%s",
                                      klass ? klass : "error", text ? text : "no message", attempt,
                                      of, took, reason ? ": " : "", reason ? reason : "");
        }
        if (*message)
                return 0;
        json_decref(*data);
        *data = NULL;
        return -ENOMEM;
}
