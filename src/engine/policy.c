/*
 * The failure policy: after a failed attempt, retry (when attempts remain and the failure
 * class is one the node retries on) at a time computed from the backoff, or settle the
 * node for good according to on_failure. Randomness for the jitter comes in as a
 * parameter, so this stays pure and testable.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "duration.h"

static unsigned failure_bit(const json_t *error)
{
        const char *klass = json_string_value(json_object_get(error, "class"));
        json_t *status = json_object_get(error, "status");

        if (!klass)
                return WF_RETRY_ERROR;
        if (!strcmp(klass, "network"))
                return WF_RETRY_NETWORK;
        if (!strcmp(klass, "timeout"))
                return WF_RETRY_TIMEOUT;
        if (!strcmp(klass, "interrupted"))
                return WF_RETRY_INTERRUPTED;
        if (!strcmp(klass, "http_status")) {
                json_int_t s = json_is_integer(status) ? json_integer_value(status) : 0;
                if (s == 429)
                        return WF_RETRY_HTTP_429;
                if (s >= 500 && s <= 599)
                        return WF_RETRY_HTTP_5XX;
                return 0; /* other statuses (4xx) are not retried: the request is wrong */
        }
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
        const struct wf_node *n;
        unsigned bit;

        *decision = NULL;
        if (!wf || !node_id)
                return -EINVAL;
        n = wf_resolve_node(wf, node_id);
        if (!n)
                return -ENOENT;
        if (attempt < 1 || (error && !json_is_object(error)))
                return -EINVAL;
        bit = error ? failure_bit(error) : WF_RETRY_ERROR;
        if (attempt < n->retry.max_attempts && (n->retry.retry_on & bit)) {
                int64_t delay = backoff_delay(&n->retry, attempt + 1, random);
                json_t *ra = error ? json_object_get(error, "retry_after_ms") : NULL;
                if (bit == WF_RETRY_HTTP_429 && json_is_integer(ra) &&
                    json_integer_value(ra) > delay)
                        delay = json_integer_value(ra) > DURATION_MAX_MS ? DURATION_MAX_MS
                                                                         : json_integer_value(ra);
                *decision = json_pack("{s:I,s:i,s:I}", "retry_at_ms", (json_int_t)(now_ms + delay),
                                      "attempt", attempt + 1, "delay_ms", (json_int_t)delay);
                return *decision ? 0 : -ENOMEM;
        }
        const char *final = n->on_failure == WF_ON_FAILURE_CONTINUE   ? "continue"
                            : n->on_failure == WF_ON_FAILURE_ESCALATE ? "escalate"
                                                                      : "fail";
        *decision = json_pack("{s:s}", "final", final);
        return *decision ? 0 : -ENOMEM;
}
