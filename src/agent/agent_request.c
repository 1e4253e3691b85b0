/*
 * A request's hash, and an llm request as the worker takes it from the executor. The hash
 * of a request is the SHA-256 of its canonical JSON (the request without v and id, keys
 * sorted, compact; docs/executor-protocol.md, "Determinism"): it is what replay matches on,
 * so it must never depend on how the executor chose to send the request.
 *
 * An llm request carries the whole conversation, which grows with every turn. The executor
 * may send only the messages added since its previous llm request (`messages_from`, the
 * protocol's llm_messages_from feature); the worker rebuilds the whole request from the
 * previous one's messages, so everything after this point (the hash, the journal, the
 * provider's body, a nondeterminism error) sees the whole request, whichever form was sent.
 * And the hash is kept incrementally: the SHA-256 state after the previous request's
 * canonical text up to and including its last message is kept, and a request that
 * continues that conversation only hashes its new messages and its other members — the
 * same digest as hashing the whole canonical text, byte for byte.
 */
#include "agent_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "strutil.h"

/* The canonical form: jansson's JSON_SORT_KEYS orders keys bytewise, as strcmp does. */
#define CANONICAL (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)

static void digest_hex(crypto_hash_sha256_state *st, char out[65])
{
        unsigned char digest[crypto_hash_sha256_BYTES];

        crypto_hash_sha256_final(st, digest);
        str_hex(digest, sizeof(digest), out);
        out[64] = '\0';
}

int agent_request_hash(const json_t *body, char out[65])
{
        _cleanup_free_ char *text = json_dumps(body, CANONICAL);
        crypto_hash_sha256_state st;

        if (!text)
                return -ENOMEM;
        crypto_hash_sha256_init(&st);
        crypto_hash_sha256_update(&st, (const unsigned char *)text, strlen(text));
        digest_hex(&st, out);
        return 0;
}

static void absorb(crypto_hash_sha256_state *st, const char *text, size_t len)
{
        crypto_hash_sha256_update(st, (const unsigned char *)text, len);
}

/* The canonical text of o's members whose keys sort before (before) or after key, without
 * the braces: "" when there are none. NULL when memory ran out. */
static char *members_text(const json_t *o, const char *key, bool before)
{
        _cleanup_json_ json_t *part = json_object();
        const char *k;
        json_t *v;
        char *text;
        size_t n;

        if (!part)
                return NULL;
        json_object_foreach ((json_t *)o, k, v) {
                int c = strcmp(k, key);
                if (c != 0 && (c < 0) == before && json_object_set(part, k, v) < 0)
                        return NULL;
        }
        text = json_dumps(part, CANONICAL);
        if (!text)
                return NULL;
        n = strlen(text); /* "{...}" */
        memmove(text, text + 1, n - 2);
        text[n - 2] = '\0';
        return text;
}

/*
 * The canonical text of body around its request's messages: *head up to and including
 * `"messages":[`, *tail from the `]` that closes them to the end. So the canonical text of
 * body is head, the messages' canonical texts joined by ",", and tail. Both malloc'd.
 */
static int frame(const json_t *body, char **head, char **tail)
{
        const json_t *req = json_object_get(body, "request");
        _cleanup_free_ char *top_before = members_text(body, "request", true);
        _cleanup_free_ char *top_after = members_text(body, "request", false);
        _cleanup_free_ char *req_before = members_text(req, "messages", true);
        _cleanup_free_ char *req_after = members_text(req, "messages", false);

        *head = *tail = NULL;
        if (!top_before || !top_after || !req_before || !req_after)
                return -ENOMEM;
        *head = str_printf("{%s%s\"request\":{%s%s\"messages\":[", top_before,
                           *top_before ? "," : "", req_before, *req_before ? "," : "");
        *tail = str_printf("]%s%s}%s%s}", *req_after ? "," : "", req_after, *top_after ? "," : "",
                           top_after);
        if (!*head || !*tail) {
                free(*head);
                free(*tail);
                *head = *tail = NULL;
                return -ENOMEM;
        }
        return 0;
}

void agent_llm_base_reset(struct agent_llm_base *b)
{
        json_decref(b->messages);
        free(b->head);
        b->messages = NULL;
        b->head = NULL;
}

/* How many leading messages of all are the base's (its whole list, or none: the kept state
 * covers exactly the base's messages). kept is how many the executor said it kept. */
static size_t shared_prefix(const struct agent_llm_base *b, const char *head, const json_t *all,
                            size_t kept)
{
        size_t n = json_array_size(b->messages);

        if (!b->messages || n == 0 || !b->head || strcmp(head, b->head) != 0 ||
            n > json_array_size(all))
                return 0;
        if (kept == n) /* a continuation: those very messages */
                return n;
        if (kept > 0) /* the executor rewrote part of its history */
                return 0;
        /* a whole list: the same conversation so far? (cheaper than hashing it again) */
        for (size_t i = 0; i < n; i++)
                if (!json_equal(json_array_get(all, i), json_array_get(b->messages, i)))
                        return 0;
        return n;
}

/* The hash of body (whose request's messages are all), continuing the base's state when
 * body continues its conversation; the base becomes body's. */
static int hash_llm(struct agent_llm_base *b, const json_t *body, const json_t *all, size_t kept,
                    char out[65])
{
        _cleanup_free_ char *head = NULL, *tail = NULL;
        crypto_hash_sha256_state st, fin;
        size_t from, n = json_array_size(all);
        int r = frame(body, &head, &tail);

        if (r < 0)
                return r;
        from = shared_prefix(b, head, all, kept);
        if (from > 0) {
                st = b->state;
        } else {
                crypto_hash_sha256_init(&st);
                absorb(&st, head, strlen(head));
        }
        for (size_t i = from; i < n; i++) {
                _cleanup_free_ char *text = json_dumps(json_array_get(all, i), CANONICAL);
                if (!text)
                        return -ENOMEM;
                if (i > 0)
                        absorb(&st, ",", 1);
                absorb(&st, text, strlen(text));
        }
        agent_llm_base_reset(b);
        b->messages = json_incref((json_t *)all);
        b->head = TAKE_PTR(head);
        b->state = st;
        fin = st;
        absorb(&fin, tail, strlen(tail));
        digest_hex(&fin, out);
        return 0;
}

int agent_llm_request_take(struct agent_llm_base *b, const json_t *m, json_t **out, char hash[65],
                           char **why)
{
        const json_t *from = json_object_get(m, "messages_from");
        const json_t *req = json_object_get(m, "request");
        const json_t *sent = json_object_get(req, "messages");
        size_t base = json_array_size(b->messages), kept = 0;
        _cleanup_json_ json_t *body = json_copy((json_t *)m), *all = NULL;
        int r;

        *out = NULL;
        *why = NULL;
        if (!body)
                return -ENOMEM;
        if (from) {
                json_int_t k = json_integer_value(from);
                if (!json_is_integer(from) || k < 0 || (size_t)k > base || !json_is_array(sent)) {
                        *why = str_printf("messages_from must be a whole number of at most %zu "
                                          "(the messages of this session's previous llm "
                                          "request), with request.messages the ones after them",
                                          base);
                        return -EINVAL; /* refused: the base stays the previous request's */
                }
                kept = (size_t)k;
        }
        json_object_del(body, "v");
        json_object_del(body, "id");
        json_object_del(body, "messages_from");
        if (!json_is_object(req) || !json_is_array(sent)) {
                /* refused when the call starts; hashed whole, and nothing to continue */
                agent_llm_base_reset(b);
                r = agent_request_hash(body, hash);
                if (r == 0)
                        *out = TAKE_PTR(body);
                return r;
        }
        if (kept > 0) { /* the whole list: the previous request's first `kept`, then these */
                json_t *rq = json_copy((json_t *)req);
                all = json_array();
                if (!rq || !all || json_object_set_new(body, "request", rq) < 0)
                        return -ENOMEM;
                for (size_t i = 0; i < kept; i++)
                        if (json_array_append(all, json_array_get(b->messages, i)) < 0)
                                return -ENOMEM;
                if (json_array_extend(all, (json_t *)sent) < 0 ||
                    json_object_set(rq, "messages", all) < 0)
                        return -ENOMEM;
        } else {
                all = json_incref((json_t *)sent);
        }
        r = hash_llm(b, body, all, kept, hash);
        if (r < 0) {
                agent_llm_base_reset(b);
                return r;
        }
        *out = TAKE_PTR(body);
        return 0;
}
