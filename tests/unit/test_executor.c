/*
 * The native executor (src/executor) over real pipes, this test playing the worker: offered
 * llm_messages_from in its start message, it sends its second llm request as the messages
 * added since the first (`messages_from`); not offered it, whole lists (the version rule:
 * an optional feature is used only when the start message offers it). And an `event` is
 * not waited for: the tool request of the same turn comes before the event's answer.
 */
#include "testlib.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "executor.h"
#include "strutil.h"

struct executor_thread {
        pthread_t thread;
        FILE *in, *out;
        int status;
};

static void *executor_main(void *arg)
{
        struct executor_thread *x = arg;

        x->status = executor_run(x->in, x->out, stderr);
        fclose(x->in);
        fclose(x->out);
        return NULL;
}

/* The worker's side: what it writes to the executor and reads from it. */
struct worker_side {
        struct executor_thread x;
        int to, from; /* the executor's stdin (write end), its stdout (read end) */
        char buf[1 << 16];
        size_t len;
};

static void start(struct worker_side *w)
{
        int in[2], out[2];

        assert_int_equal(pipe(in), 0);
        assert_int_equal(pipe(out), 0);
        w->x.in = fdopen(in[0], "r");
        w->x.out = fdopen(out[1], "w");
        assert_non_null(w->x.in);
        assert_non_null(w->x.out);
        w->to = in[1];
        w->from = out[0];
        w->len = 0;
        assert_int_equal(pthread_create(&w->x.thread, NULL, executor_main, &w->x), 0);
}

static void say(struct worker_side *w, const char *text)
{
        size_t n = strlen(text);

        assert_int_equal(write(w->to, text, n), (ssize_t)n);
        assert_int_equal(write(w->to, "\n", 1), 1);
}

/* The executor's next line, waiting at most 5 s (NULL when none came). */
static json_t *next(struct worker_side *w)
{
        for (;;) {
                char *nl = memchr(w->buf, '\n', w->len);
                if (nl) {
                        json_t *m = json_loadb(w->buf, (size_t)(nl - w->buf), 0, NULL);
                        size_t used = (size_t)(nl - w->buf) + 1;
                        memmove(w->buf, w->buf + used, w->len - used);
                        w->len -= used;
                        assert_non_null(m);
                        return m;
                }
                struct pollfd p = {.fd = w->from, .events = POLLIN};
                if (poll(&p, 1, 5000) != 1)
                        return NULL;
                ssize_t n = read(w->from, w->buf + w->len, sizeof(w->buf) - w->len);
                if (n <= 0)
                        return NULL;
                w->len += (size_t)n;
        }
}

static json_t *expect(struct worker_side *w, const char *type)
{
        json_t *m = next(w);

        if (!m)
                fail_msg("the executor sent no %s request within 5 s", type);
        assert_string_equal(json_string_value(json_object_get(m, "type")), type);
        return m;
}

static void finish(struct worker_side *w)
{
        close(w->to);
        pthread_join(w->x.thread, NULL);
        close(w->from);
        assert_int_equal(w->x.status, 0);
}

/* The start message; %s: its features member (with a trailing comma) or nothing. */
#define START_MESSAGE                                                                              \
        "{\"v\":1,\"type\":\"start\",%s\"agent\":{\"name\":\"a\",\"model\":\"m\","                 \
        "\"system\":\"S\",\"prompt\":\"P\",\"tools\":[{\"name\":\"http_request\","                 \
        "\"description\":\"d\",\"effect\":\"idempotent\",\"parameters\":{\"type\":"                \
        "\"object\"}}],\"output_schema\":null,\"max_turns\":5},\"input\":{},\"depth\":0}"

/* One turn with a tool call, then the answer; returns the second llm request. */
static json_t *two_calls(struct worker_side *w, const char *features)
{
        _cleanup_free_ char *st = str_printf(START_MESSAGE, features);
        _cleanup_json_ json_t *first = NULL, *ev = NULL, *tool = NULL, *res = NULL;
        json_t *second;

        start(w);
        say(w, st);
        first = expect(w, "llm");
        assert_null(json_object_get(first, "messages_from"));
        assert_int_equal(
            json_array_size(json_object_get(json_object_get(first, "request"), "messages")), 1);
        say(w, "{\"v\":1,\"id\":\"1\",\"ok\":true,\"result\":{\"text\":\"Looking.\","
               "\"tool_calls\":[{\"id\":\"c1\",\"name\":\"http_request\",\"arguments\":"
               "\"{\\\"method\\\":\\\"GET\\\",\\\"url\\\":\\\"http://h/a\\\"}\"}],"
               "\"stop_reason\":\"tool_calls\"}}");
        ev = expect(w, "event");
        assert_string_equal(json_string_value(json_object_get(ev, "message")), "Looking.");
        /* the tool request comes while the event waits for its answer */
        tool = expect(w, "tool");
        assert_string_equal(json_string_value(json_object_get(tool, "call_id")), "c1");
        say(w, "{\"v\":1,\"id\":\"2\",\"ok\":true,\"result\":{}}");
        say(w, "{\"v\":1,\"id\":\"3\",\"ok\":true,\"result\":{\"content\":\"alpha\","
               "\"is_error\":false,\"effect\":\"read_only\"}}");
        second = expect(w, "llm");
        say(w, "{\"v\":1,\"id\":\"4\",\"ok\":true,\"result\":{\"text\":\"Done.\","
               "\"tool_calls\":[],\"stop_reason\":\"end\"}}");
        res = expect(w, "result");
        assert_string_equal(json_string_value(json_object_get(res, "output")), "Done.");
        say(w, "{\"v\":1,\"id\":\"5\",\"ok\":true,\"result\":{}}");
        finish(w);
        return second;
}

static void offered_deltas_it_sends_the_new_messages(void **state)
{
        (void)state;
        struct worker_side w;
        _cleanup_json_ json_t *second =
            two_calls(&w, "\"features\":[\"something_else\",\"llm_messages_from\"],");
        const json_t *msgs = json_object_get(json_object_get(second, "request"), "messages");

        assert_int_equal(json_integer_value(json_object_get(second, "messages_from")), 1);
        assert_int_equal(json_array_size(msgs), 2); /* the assistant's turn and the result */
        assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                            "assistant");
        assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "role")),
                            "tool");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(second, "request"), "system")), "S");
}

static void not_offered_it_sends_whole_lists(void **state)
{
        (void)state;
        struct worker_side w;
        _cleanup_json_ json_t *second = two_calls(&w, "");
        const json_t *msgs = json_object_get(json_object_get(second, "request"), "messages");

        assert_null(json_object_get(second, "messages_from"));
        assert_int_equal(json_array_size(msgs), 3);
        assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                            "P");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(offered_deltas_it_sends_the_new_messages),
            cmocka_unit_test(not_offered_it_sends_whole_lists),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
