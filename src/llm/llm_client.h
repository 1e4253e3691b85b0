/*
 * Sending LLM calls: one call is a provider-neutral request (llm.h's shape) sent to a
 * provider's base URL with an API key, over the worker's libcurl multi handle
 * (runtime_http: no thread per call; the worker's loop drives it with runtime_http_poll).
 * A streamed answer is fed to the llm_stream parser as it arrives and its text handed out,
 * coalesced, while it forms; a whole answer is parsed at the end. Retries on connection
 * errors, cut streams, 429 and 5xx honour Retry-After, inside a connect timeout per
 * attempt and a total timeout for the call. See src/llm/README.md ("Sending a call").
 *
 * The API key is copied for the call's life, sent only in the Authorization / x-api-key
 * header of the requests that leave, zeroed when the call ends, and scrubbed from every
 * error message, as well as from the result's text and tool arguments should a server echo
 * it. Not thread-safe: use a call from the thread that polls its runtime_http.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "llm.h"

struct runtime_http;
struct llm_call;

#define LLM_DEFAULT_CONNECT_TIMEOUT_MS (10 * 1000)
#define LLM_DEFAULT_TOTAL_TIMEOUT_MS   (10 * 60 * 1000)
#define LLM_DEFAULT_MAX_ATTEMPTS       4
#define LLM_TEXT_INTERVAL_MS           100 /* text callbacks at most 10 per second per call */
#define LLM_RETRY_BASE_MS              500 /* backoff without Retry-After: 0.5 s, 1 s, 2 s... */
#define LLM_RETRY_MAX_MS               (30 * 1000) /* ... at most this long */

/* How one call ended, besides its result or error. */
struct llm_call_info {
        int attempts;        /* requests sent (1 when no retry was needed) */
        int64_t duration_ms; /* from llm_call_start to the end, retries and waits included */
};

struct llm_call_params {
        enum llm_provider provider;
        const char *base_url;  /* "http://127.0.0.1:8080/v1"; the endpoint path is appended */
        const char *api_key;   /* NULL or "": no key header (a local server) */
        const json_t *request; /* the neutral request; "stream": true streams the answer */
        /* the conversation's kept body text (llm.h, llm_build_request_text), or NULL: the
         * body is built whole; borrowed, used only inside llm_call_start */
        struct llm_body_cache *body_cache;

        int64_t connect_timeout_ms; /* per attempt; <= 0: LLM_DEFAULT_CONNECT_TIMEOUT_MS */
        int64_t total_timeout_ms;   /* the whole call; <= 0: LLM_DEFAULT_TOTAL_TIMEOUT_MS */
        int max_attempts;           /* <= 0: LLM_DEFAULT_MAX_ATTEMPTS; 1: no retry */

        /*
         * Streamed text as it forms (optional): called from runtime_http_poll at most once
         * per LLM_TEXT_INTERVAL_MS with the text that arrived since the last call (whole
         * UTF-8 characters; text points into the call's buffer, valid during the call).
         * attempt counts from 1: when it changes, a retry started the answer again. The
         * pieces of one attempt joined are a prefix of the final result's text; what
         * arrived within the last interval comes with the result only.
         */
        void (*on_text)(void *userdata, const char *text, size_t len, int attempt);
        /*
         * An attempt failed and another follows after wait_ms (optional): error is the
         * attempt's error (the shape on_done gets; borrowed).
         */
        void (*on_retry)(void *userdata, const json_t *error, int attempt, int64_t wait_ms);
        /*
         * The call ended (required), from runtime_http_poll: on success result is the
         * answer (the callee owns it and frees it with llm_result_free) and error NULL; on
         * failure result is NULL and error is {"class", "message", "status"?,
         * "retry_after_ms"?, "attempts"} (the callee owns it). The call is freed before
         * on_done runs: drop the pointer. Classes: connect (never reached the server),
         * network (connection lost or the stream cut before its end), timeout (the total
         * timeout passed), http_429, http_4xx, http_5xx, http_status, too_large, bad_response
         * (an answer that could not be understood), stream_error (the provider sent an error
         * event mid-stream). Retried before on_done: connect, network, http_429, http_5xx,
         * stream_error.
         */
        void (*on_done)(void *userdata, struct llm_result *result, json_t *error,
                        const struct llm_call_info *info);
        void *userdata;
        /*
         * The request goes out but for the last byte of its body until llm_call_release
         * (runtime_http's hold_body_end): the caller overlaps the request's way to the
         * server with what must happen before the server may act on it (src/agent: the
         * commit of the previous answer). Retries before the release are held the same way.
         */
        bool hold;
};

/*
 * Starts a call: builds the request (-EINVAL and *error naming the member when it is not
 * the neutral shape, or the base URL or key cannot be used), sends it, and returns at once
 * with *out; the rest happens in runtime_http_poll. -ENOMEM. Nothing is called back when
 * starting fails.
 */
int llm_call_start(struct runtime_http *h, const struct llm_call_params *p, struct llm_call **out,
                   char **error);

/* Lets a call started with hold send the rest of its request; accepts NULL and a call not
 * held. */
void llm_call_release(struct llm_call *c);

/* Stops a call that has not ended (its transfer or its wait) and frees it; on_done is never
 * called. Accepts NULL. */
void llm_call_abort(struct llm_call *c);

/* Whether a failure class is retried by a call (and could be by its caller). */
bool llm_error_class_retryable(const char *klass);
