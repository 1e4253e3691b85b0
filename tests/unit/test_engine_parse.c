/* Unit tests for workflow parsing and validation (src/engine): the minimal shape is
 * accepted as written, and every kind of mistake is reported with its node, its field and a
 * message that says how to fix it — all of them at once, not just the first. */
#include "testlib.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "engine.h"
#include "fileio.h"
#include "strutil.h"

/* Parses text expecting failure; returns the error array (caller frees). */
static json_t *errors_of(const char *text)
{
        _cleanup_json_ json_t *def = test_json(text);
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;

        assert_int_equal(wf_parse(def, &wf, &errors), -EINVAL);
        assert_null(wf);
        assert_non_null(errors);
        assert_int_gt(json_array_size(errors), 0);
        return errors;
}

/* Asserts an error exists for (node, field) whose message contains `needle`. */
static void expect_error(const json_t *errors, const char *node, const char *field,
                         const char *needle)
{
        size_t i;
        json_t *e;

        json_array_foreach (errors, i, e) {
                const char *n = json_string_value(json_object_get(e, "node"));
                const char *f = json_string_value(json_object_get(e, "field"));
                const char *m = json_string_value(json_object_get(e, "message"));
                if ((node ? n && !strcmp(n, node) : json_is_null(json_object_get(e, "node"))) &&
                    f && !strcmp(f, field) && m && strstr(m, needle))
                        return;
        }
        char *dump = json_dumps(errors, JSON_INDENT(2));
        fail_msg("no error for node=%s field=%s containing \"%s\"; got:\n%s", node ? node : "null",
                 field, needle, dump);
}

static void minimal_shape_is_accepted_as_written(void **state)
{
        const char *text =
            "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"request\":{"
            "\"method\":\"POST\",\"url\":\"http://127.0.0.1:9/x\",\"body\":{}}},{\"id\":\"b\","
            "\"type\":\"sleep\",\"duration\":\"2s\",\"after\":[\"a\"]}]}";
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;

        assert_int_equal(wf_parse_text(text, strlen(text), &wf, &errors), 0);
        assert_null(errors);
        assert_non_null(wf);
        assert_string_equal(wf_name(wf), "w");
        assert_null(wf_description(wf));
        assert_int_equal(wf_node_count(wf), 2);
        assert_int_equal(wf_timeout_ms(wf), 0);
        assert_string_equal(wf_node_kind(wf, "a"), "http");
        assert_string_equal(wf_node_kind(wf, "b"), "sleep");
        assert_null(wf_node_kind(wf, "c"));

        /* the canonical form sorts keys and is compact, whatever the input spelling */
        _cleanup_free_ char *canon = wf_canonical_json(wf_definition(wf));
        _cleanup_json_ json_t *reordered = test_json(
            "{\"nodes\":[{\"type\":\"http\",\"id\":\"a\",\"request\":{\"url\":"
            "\"http://127.0.0.1:9/x\",\"method\":\"POST\",\"body\":{}}},{\"after\":[\"a\"],"
            "\"id\":\"b\",\"duration\":\"2s\",\"type\":\"sleep\"}],  \"name\": \"w\"}");
        _cleanup_free_ char *canon2 = wf_canonical_json(reordered);
        assert_string_equal(canon, canon2);
        assert_null(strchr(canon, ' '));
        wf_free(wf);
}

static void every_kind_parses(void **state)
{
        _cleanup_json_ json_t *def = test_json(
            "{\"name\":\"all.kinds-1\",\"description\":\"d\",\"timeout\":\"2h\","
            "\"output\":{\"n\":\"${ len(nodes.fan.output) }\"},\"nodes\":["
            "{\"id\":\"get\",\"type\":\"http\",\"request\":{\"method\":\"get\",\"url\":"
            "\"https://example.com/${ input.path }\",\"headers\":{\"X-A\":\"b\"}},"
            "\"expect_status\":[200,\"3xx\",\"404-410\"],\"retry\":{\"max_attempts\":5,"
            "\"backoff\":\"fixed\",\"initial_delay\":\"2s\",\"max_delay\":\"1m\","
            "\"jitter\":false,\"retry_on\":[\"network\",\"http_5xx\"]},\"timeout\":\"10s\","
            "\"delivery\":\"at_most_once\",\"on_failure\":\"continue\"},"
            "{\"id\":\"nap\",\"type\":\"sleep\",\"until\":\"input.at\",\"after\":[\"get\"]},"
            "{\"id\":\"ok\",\"type\":\"wait_event\",\"event\":\"approved\",\"timeout\":\"3d\"},"
            "{\"id\":\"c\",\"type\":\"condition\",\"if\":\"nodes.get.status == "
            "'completed'\",\"after\":[\"get\"],\"then\":[\"fan\"],\"else\":[\"t\"]},"
            "{\"id\":\"fan\",\"type\":\"map\",\"items\":\"input.list\",\"concurrency\":3,"
            "\"node\":{\"type\":\"http\",\"request\":{\"method\":\"POST\",\"url\":"
            "\"http://h/${ index }\",\"body\":\"${ item }\"}}},"
            "{\"id\":\"poll\",\"type\":\"loop\",\"max_iterations\":10,\"until\":\"last.done "
            "|| iteration >= 3\",\"node\":{\"type\":\"transform\",\"output\":{\"done\":"
            "\"${ iteration == 2 }\"}}},"
            "{\"id\":\"child\",\"type\":\"subworkflow\",\"workflow\":\"other\",\"version\":2,"
            "\"input\":{\"x\":\"${ input.x }\"}},"
            "{\"id\":\"t\",\"type\":\"transform\",\"output\":\"${ nodes.get.output }\"},"
            "{\"id\":\"z\",\"type\":\"noop\",\"when\":\"${ input.go }\",\"after\":[\"t\","
            "\"fan\",\"poll\",\"child\",\"ok\",\"nap\"]}]}");
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;
        int r = wf_parse(def, &wf, &errors);

        if (r < 0) {
                char *dump = json_dumps(errors, JSON_INDENT(2));
                fail_msg("rejected: %s", dump);
        }
        assert_string_equal(wf_description(wf), "d");
        assert_int_equal(wf_timeout_ms(wf), 7200000);
        assert_string_equal(wf_node_kind(wf, "fan[17]"), "http");
        assert_string_equal(wf_node_kind(wf, "poll#3"), "transform");
        assert_null(wf_node_kind(wf, "poll[3]"));
        wf_free(wf);
}

/* Fails unless no error for field has a message containing needle. */
static void expect_no_error(const json_t *errors, const char *field, const char *needle)
{
        size_t i;
        json_t *e;

        json_array_foreach (errors, i, e) {
                const char *f = json_string_value(json_object_get(e, "field"));
                const char *m = json_string_value(json_object_get(e, "message"));
                if (f && !strcmp(f, field) && m && strstr(m, needle)) {
                        char *dump = json_dumps(errors, JSON_INDENT(2));
                        fail_msg("an error for field=%s contains \"%s\"; got:\n%s", field, needle,
                                 dump);
                }
        }
}

/* An error a refused definition is reported with: its node (NULL: the workflow itself), its
 * field, and text its message contains. */
struct expected_error {
        const char *node;
        const char *field;
        const char *message;
};

/* A definition the parser refuses, and the errors it must be refused with: all of them at
 * once. Each is one test, named by name. */
struct refusal {
        const char *name;
        const char *definition;
        struct expected_error errors[16]; /* ends at a NULL field */
        size_t count;                     /* 0, or exactly how many errors are reported */
        struct expected_error absent;     /* NULL field, or one that must not be reported */
};

static const struct refusal refusals[] = {
    {.name = "duplicate_ids_and_bad_ids",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},{\"id\":\"a\","
                   "\"type\":\"noop\"},{\"id\":\"9bad\",\"type\":\"noop\"},{\"type\":\"noop\"}]}",
     .errors = {{"a", "/nodes/1/id", "duplicate node id 'a' (also /nodes/0/id)"},
                {NULL, "/nodes/2/id", "invalid node id '9bad'"},
                {NULL, "/nodes/3/id", "missing required field 'id'"}}},
    {.name = "unknown_after_reference_lists_known_nodes",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},{\"id\":\"b\","
                   "\"type\":\"noop\",\"after\":[\"x\"]}]}",
     .errors = {{"b", "/nodes/1/after/0", "after refers to unknown node 'x'; known nodes: a, b"}}},
    /* a condition branch closing a loop through its implicit dependency */
    {.name = "cycles_are_named: through a condition's branch",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"c\",\"type\":\"condition\",\"if\":\"true\","
         "\"then\":[\"a\"],\"after\":[\"a\"]},{\"id\":\"a\",\"type\":\"noop\"}]}",
     .errors = {{"c", "/nodes/0/after", "dependency cycle: c -> a -> c"}}},
    {.name = "bad_durations",
     .definition =
         "{\"name\":\"w\",\"timeout\":\"soon\",\"nodes\":[{\"id\":\"s\",\"type\":\"sleep\","
         "\"duration\":\"5 minutes\"},{\"id\":\"h\",\"type\":\"http\",\"request\":{"
         "\"url\":\"http://x\"},\"timeout\":30,\"retry\":{\"initial_delay\":\"1y\"}}]}",
     .errors = {{NULL, "/timeout", "not a valid duration: \"soon\""},
                {"s", "/nodes/0/duration", "not a valid duration: \"5 minutes\""},
                {"h", "/nodes/1/timeout", "must be a duration string"},
                {"h", "/nodes/1/retry/initial_delay", "not a valid duration"}}},
    {.name = "bad_expressions_report_the_column",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\",\"when\":\"input.x "
                   "== \"},{\"id\":\"b\",\"type\":\"noop\",\"when\":\"input.x = 1\"},"
                   "{\"id\":\"c\",\"type\":\"transform\",\"output\":{\"v\":\"n=${ input.( }\"}},"
                   "{\"id\":\"d\",\"type\":\"noop\",\"when\":\"lenn(input)\"},"
                   "{\"id\":\"f\",\"type\":\"noop\",\"when\":\"len(input, 2)\"}]}",
     .errors = {{"a", "/nodes/0/when", "invalid expression at column 12: expression ends"},
                {"b", "/nodes/1/when", "column 9: unexpected '='; use == to compare"},
                {"c", "/nodes/2/output/v", "invalid template at column 12:"},
                {"d", "/nodes/3/when", "unknown function 'lenn'"},
                {"f", "/nodes/4/when", "len() takes 1 argument, got 2"}}},
    /* ${ secrets.NAME }: only in an http node's request, only with a literal name */
    {.name = "secrets_only_in_http_requests_and_by_literal_name",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"transform\",\"output\":"
         "{\"k\":\"${ secrets.API_KEY }\"}},{\"id\":\"b\",\"type\":\"noop\",\"when\":"
         "\"secrets.X == 'y'\"},{\"id\":\"c\",\"type\":\"http\",\"request\":{\"url\":"
         "\"https://x.example.com/\",\"headers\":{\"A\":\"${ secrets[input.name] }\"}}}]}",
     .errors = {{"a", "/nodes/0/output",
                 "'secrets' at column 4 can only be used in an http node's request"},
                {"b", "/nodes/1/when",
                 "'secrets' at column 1 can only be used in an http node's request"},
                {"c", "/nodes/2/request",
                 "'secrets' at column 4 must be followed by a literal name"}}},
    {.name = "unknown_fields_are_rejected_with_a_hint",
     .definition = "{\"name\":\"w\",\"nodse\":[],\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},"
                   "{\"id\":\"b\",\"type\":\"http\",\"afer\":[\"a\"],\"request\":{\"url\":"
                   "\"http://x\",\"header\":{}},\"retry\":{\"max_attempt\":3},\"zzzzzz\":1}]}",
     .errors = {{NULL, "/nodse", "unknown field 'nodse' in the workflow; did you mean 'nodes'?"},
                {"b", "/nodes/1/afer", "did you mean 'after'?"},
                {"b", "/nodes/1/request/header", "did you mean 'headers'?"},
                {"b", "/nodes/1/retry/max_attempt", "did you mean 'max_attempts'?"},
                {"b", "/nodes/1/zzzzzz", "known fields: id, type"}}},
    /* An at_most_once node whose retry block allows more attempts must say on which failures
     * (retry_on): the default would otherwise decide whether the request may be sent twice. */
    {.name = "at_most_once_retry_must_name_its_classes",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"pay\",\"type\":\"http\","
                   "\"delivery\":\"at_most_once\",\"request\":{\"url\":\"http://x\"},"
                   "\"retry\":{\"max_attempts\":5}},"
                   "{\"id\":\"m\",\"type\":\"map\",\"items\":\"input.xs\",\"node\":{\"type\":"
                   "\"http\",\"delivery\":\"at_most_once\",\"request\":{\"url\":\"http://x\"},"
                   "\"retry\":{\"initial_delay\":\"2s\"}}}]}",
     .errors = {{"pay", "/nodes/0/retry",
                 "delivery is at_most_once and retry allows 5 attempts, so retry_on must say "
                 "which failures send the request again: [\"connect\", \"http_429\"] retries "
                 "only failures where it surely did not take effect; adding \"timeout\", "
                 "\"network\" or \"http_5xx\" accepts that it may arrive twice"},
                {"m", "/nodes/1/node/retry", "allows 3 attempts, so retry_on must say"}},
     .count = 2},
    {.name = "type_errors_and_limits",
     .definition =
         "{\"name\":\"Bad Name\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"after\":\"b\","
         "\"request\":{\"method\":\"FETCH\",\"url\":\"ftp://x\"},\"retry\":{"
         "\"max_attempts\":101},\"expect_status\":[\"2xy\"]},"
         "{\"id\":\"b\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"},\"retry\":{"
         "\"max_attempts\":\"3\",\"retry_on\":[\"flaky\"]}},"
         "{\"id\":\"l\",\"type\":\"loop\",\"until\":\"true\",\"max_iterations\":10001,"
         "\"node\":{\"type\":\"noop\"}},"
         "{\"id\":\"l2\",\"type\":\"loop\",\"until\":\"true\",\"node\":{\"type\":\"noop\"}},"
         "{\"id\":\"m\",\"type\":\"map\",\"items\":\"input\",\"concurrency\":0,"
         "\"node\":{\"type\":\"condition\",\"if\":\"true\"}},"
         "{\"id\":\"n\",\"type\":\"noop\",\"retry\":{\"max_attempts\":2}},"
         "{\"id\":\"q\",\"type\":\"frobnicate\"}]}",
     .errors = {{NULL, "/name", "invalid workflow name 'Bad Name'"},
                {"a", "/nodes/0/after", "'after' must be an array of node ids"},
                {"a", "/nodes/0/request/method", "unknown HTTP method 'FETCH'"},
                {"a", "/nodes/0/request/url", "url must start with http:// or https://"},
                {"a", "/nodes/0/retry/max_attempts", "between 1 and 100 (got 101)"},
                {"a", "/nodes/0/expect_status/0", "invalid status '2xy'"},
                {"b", "/nodes/1/retry/max_attempts", "must be an integer"},
                {"b", "/nodes/1/retry/retry_on/0",
                 "unknown failure class 'flaky' in retry_on; use connect, network, timeout, "
                 "http_429, http_4xx, http_5xx, http_status, too_large, error, interrupted"},
                {"l", "/nodes/2/max_iterations", "between 1 and 10000 (got 10001)"},
                {"l2", "/nodes/3/max_iterations", "missing required field 'max_iterations'"},
                {"m", "/nodes/4/concurrency", "between 1 and 1000 (got 0)"},
                {"m", "/nodes/4/node/type", "a condition node cannot be a map template"},
                {"n", "/nodes/5/retry", "retry does not apply to noop nodes"},
                {"q", "/nodes/6/type",
                 "unknown node type 'frobnicate'; known types: http, agent, sleep, wait_event, "
                 "condition, map, loop, subworkflow, transform, noop, approval, notify"}}},
    /* the nodes[\"a\"] spelling of an upstream node is fine: no error about it */
    {.name = "expression_references_are_checked",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},"
                   "{\"id\":\"b\",\"type\":\"noop\",\"when\":\"nodes.zz.output\"},"
                   "{\"id\":\"c\",\"type\":\"noop\",\"when\":\"nodes.a.status == 'completed'\"},"
                   "{\"id\":\"d\",\"type\":\"noop\",\"when\":\"item.x\",\"after\":[\"a\"]},"
                   "{\"id\":\"f\",\"type\":\"noop\",\"when\":\"inptu.x\"},"
                   "{\"id\":\"g\",\"type\":\"noop\",\"when\":\"nodes[input.k]\"},"
                   "{\"id\":\"h\",\"type\":\"transform\",\"after\":[\"a\"],\"output\":\"${ "
                   "nodes[\\\"a\\\"].output }${ nodes.h.output }\"}]}",
     .errors = {{"b", "/nodes/1/when", "unknown node 'zz' at column 1; known nodes: a, b, c"},
                {"c", "/nodes/2/when", "reads node 'a', which is not upstream of 'c'; add \"a\""},
                {"d", "/nodes/3/when", "'item' at column 1 is only available inside a map"},
                {"f", "/nodes/4/when", "unknown name 'inptu' at column 1"},
                {"g", "/nodes/5/when", "must be followed by a literal node id"},
                {"h", "/nodes/6/output", "reads node 'h' itself"}},
     .absent = {"h", "/nodes/6/output", "'a'"}},
    {.name = "structural_errors: not an object",
     .definition = "[]",
     .errors = {{NULL, "", "must be a JSON object"}}},
    {.name = "structural_errors: no nodes",
     .definition = "{\"name\":\"w\",\"nodes\":[]}",
     .errors = {{NULL, "/nodes", "non-empty array"}}},
    {.name = "structural_errors: missing and misplaced fields",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"s\",\"type\":\"sleep\"},{\"id\":\"c\","
         "\"type\":\"condition\",\"if\":\"true\",\"then\":[\"s\"],\"else\":[\"s\"]},"
         "{\"id\":\"w\",\"type\":\"wait_event\"},{\"id\":\"t\",\"type\":\"transform\"},"
         "{\"id\":\"sw\",\"type\":\"subworkflow\",\"workflow\":\"Nope!\"},"
         "{\"id\":\"x\",\"type\":\"noop\",\"timeout\":\"1s\",\"delivery\":\"at_most_once\","
         "\"on_failure\":\"explode\"}]}",
     .errors = {{"s", "/nodes/0", "exactly one of 'duration'"},
                {"c", "/nodes/1/else", "node 's' is in both then and else"},
                {"w", "/nodes/2/event", "missing required field 'event'"},
                {"t", "/nodes/3/output", "missing required field 'output'"},
                {"sw", "/nodes/4/workflow", "invalid workflow name 'Nope!'"},
                {"x", "/nodes/5/timeout", "timeout does not apply to noop nodes"},
                {"x", "/nodes/5/delivery", "delivery does not apply to noop nodes"},
                {"x", "/nodes/5/on_failure", "must be \"fail\", \"continue\" or \"escalate\""}}},
    /* the approval node: the rules a definition must keep */
    {.name = "approval_nodes",
     .definition =
         "{\"name\":\"w\",\"nodes\":["
         "{\"id\":\"a\",\"type\":\"approval\",\"reviewers\":[\"bob\"],\"quorum\":2},"
         "{\"id\":\"b\",\"type\":\"approval\",\"on_timeout\":\"reject\"},"
         "{\"id\":\"c\",\"type\":\"approval\",\"channels\":[{\"kind\":\"pigeon\"}]},"
         "{\"id\":\"d\",\"type\":\"approval\",\"timeout\":\"1d\",\"escalation\":"
         "[{\"contacts\":[\"x@example.com\"]}]},"
         "{\"id\":\"e\",\"type\":\"approval\",\"reviewers\":[\"not valid\"],"
         "\"context\":[\"zz\"],\"forbid_self_approval\":\"yes\"},"
         "{\"id\":\"f\",\"type\":\"approval\",\"timeout\":\"1d\",\"on_timeout\":\"later\","
         "\"channels\":[{\"kind\":\"slack\"}]}]}",
     .errors = {{"a", "/nodes/0/quorum", "quorum 2 is more than the 1 reviewer listed"},
                {"b", "/nodes/1/on_timeout", "on_timeout needs a timeout"},
                {"c", "/nodes/2/channels/0/kind", "channel kind must be"},
                {"d", "/nodes/3/escalation", "needs \"on_timeout\": \"escalate\""},
                {"e", "/nodes/4/reviewers/0", "invalid reviewer 'not valid'"},
                {"e", "/nodes/4/context/0", "context refers to unknown node 'zz'"},
                {"e", "/nodes/4/forbid_self_approval", "must be true or false"},
                {"f", "/nodes/5/on_timeout", "on_timeout must be"},
                {"f", "/nodes/5/channels/0/url", "missing required field 'url'"}}},
    /* the agent node's inline shape of issue 10: its mistakes are named */
    {.name = "agent_node_inline_shape",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"agent\",\"agent\":{"
         "\"provider\":\"openia\",\"model\":\"m\",\"promt\":\"x\",\"tools\":[\"browser\"],"
         "\"budget\":{\"max_cost\":1},\"api_key_secret\":\"${ input.k }\","
         "\"secrets\":[\"${ secrets.X }\"]}}]}",
     .errors = {{"a", "/nodes/0/agent/provider", "unknown provider 'openia'"},
                {"a", "/nodes/0/agent/promt", "did you mean 'prompt'"},
                {"a", "/nodes/0/agent/prompt", "missing required field"},
                {"a", "/nodes/0/agent/tools", "unknown tool 'browser'"},
                {"a", "/nodes/0/agent/secrets", "list of stored secret names"},
                {"a", "/nodes/0/agent/budget/max_cost", "known fields: max_tokens"},
                {"a", "/nodes/0/agent/api_key_secret", "cannot be an expression"}}},
    /* an agent's approve_tools: what cannot be gated and the approval fields' mistakes */
    {.name = "agent_approve_tools_shapes",
     .definition =
         "{\"name\":\"w\",\"nodes\":["
         "{\"id\":\"a\",\"type\":\"agent\",\"agent\":{\"provider\":\"openai\",\"model\":\"m\","
         "\"prompt\":\"p\",\"approve_tools\":[\"finish\",\"dangerous\"]}},"
         "{\"id\":\"b\",\"type\":\"agent\",\"agent\":{\"provider\":\"openai\",\"model\":\"m\","
         "\"prompt\":\"p\",\"approve_tools\":{\"reviewers\":[\"bad name\"],\"on_timeout\":"
         "\"reject\",\"quorum\":3,\"effects\":[\"http_request\"],\"when\":1}}},"
         "{\"id\":\"c\",\"type\":\"agent\",\"agent\":{\"provider\":\"openai\",\"model\":\"m\","
         "\"prompt\":\"p\",\"approve_tools\":\"all\"}},"
         "{\"id\":\"d\",\"type\":\"agent\",\"agent\":{\"provider\":\"openai\",\"model\":\"m\","
         "\"prompt\":\"p\",\"approve_tools\":{}}}]}",
     .errors = {{"a", "/nodes/0/agent/approve_tools", "'finish' cannot be gated"},
                {"a", "/nodes/0/agent/approve_tools", "'dangerous' cannot be gated"},
                {"b", "/nodes/1/agent/approve_tools/effects",
                 "'http_request' cannot be gated: name effect classes"},
                {"b", "/nodes/1/agent/approve_tools/reviewers/0", "invalid reviewer"},
                {"b", "/nodes/1/agent/approve_tools/on_timeout", "on_timeout needs a timeout"},
                {"b", "/nodes/1/agent/approve_tools/quorum", "quorum 3 is more"},
                {"b", "/nodes/1/agent/approve_tools/when", "known fields"},
                {"d", "/nodes/3/agent/approve_tools", "gates nothing"},
                {"c", "/nodes/2/agent/approve_tools", "must be a list"}}},
};

static void refused_as_expected(void **state)
{
        const struct refusal *c = *state;
        _cleanup_json_ json_t *errors = errors_of(c->definition);

        for (const struct expected_error *x = c->errors; x->field; x++)
                expect_error(errors, x->node, x->field, x->message);
        if (c->count)
                assert_int_equal(json_array_size(errors), c->count);
        if (c->absent.field)
                expect_no_error(errors, c->absent.field, c->absent.message);
}

/* The inline agent node of issue 10 as written, with the provider given. */
#define AGENT_INLINE(provider)                                                                     \
        "{\"name\":\"w\",\"nodes\":[{\"id\":\"think\",\"type\":\"agent\",\"agent\":{"              \
        "\"provider\":\"" provider "\",\"base_url\":\"http://127.0.0.1:PORT/v1\",\"model\":"       \
        "\"m\",\"api_key_secret\":\"LLMKEY\",\"system\":\"You call tools when "                    \
        "asked.\",\"prompt\":\"Research ${ input.topic } carefully.\",\"tools\":["                 \
        "\"http_request\",\"shell\",\"run_code\"],\"allowed_hosts\":[\"127.0.0.1\"],"              \
        "\"secrets\":[\"GITHUB_TOKEN\"],\"budget\":{"                                              \
        "\"max_tokens\":100000,\"max_cost_usd\":5}}}]}"

/* An agent node gating its tools with the approve_tools given. */
#define AGENT_APPROVE_TOOLS(approve_tools)                                                         \
        "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"agent\",\"agent\":{"                  \
        "\"provider\":\"openai\",\"model\":\"m\",\"prompt\":\"p\",\"tools\":"                      \
        "[\"http_request\"],\"approve_tools\":" approve_tools "}}]}"

/* A definition the parser accepts as written; each is one test, named by name. */
struct acceptance {
        const char *name;
        const char *definition;
        const char *node, *kind; /* NULL, or a node the workflow has and its kind */
};

static const struct acceptance acceptances[] = {
    /* accepted where it belongs: url, headers and body, member or index syntax */
    {.name = "secrets_only_in_http_requests_and_by_literal_name: in a request",
     .definition = "{\"name\":\"w\",\"nodes\":[{\"id\":\"c\",\"type\":\"http\",\"request\":{"
                   "\"url\":\"https://x.example.com/?k=${ secrets.K }\",\"headers\":{\"A\":"
                   "\"Bearer ${ secrets.OPENAI_API_KEY }\"},\"body\":{\"b\":\"${ "
                   "secrets[\\\"my-key\\\"] }\"}}}]}"},
    /* at_most_once without a retry block, or with retry_on or a single attempt; every class
     * of the vocabulary is a valid retry_on entry */
    {.name = "at_most_once_retry_must_name_its_classes: named or not retried",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"http\",\"delivery\":"
         "\"at_most_once\",\"request\":{\"url\":\"http://x\"}},"
         "{\"id\":\"b\",\"type\":\"http\",\"delivery\":\"at_most_once\",\"request\":{"
         "\"url\":\"http://x\"},\"retry\":{\"max_attempts\":1}},"
         "{\"id\":\"c\",\"type\":\"http\",\"delivery\":\"at_most_once\",\"request\":{"
         "\"url\":\"http://x\"},\"retry\":{\"max_attempts\":4,\"retry_on\":[\"connect\","
         "\"http_429\",\"timeout\"]}},"
         "{\"id\":\"d\",\"type\":\"http\",\"request\":{\"url\":\"http://x\"},"
         "\"retry\":{\"max_attempts\":2,\"retry_on\":[\"connect\",\"network\",\"timeout\","
         "\"http_429\",\"http_4xx\",\"http_5xx\",\"http_status\",\"too_large\",\"error\","
         "\"interrupted\"]}}]}"},
    /* the approval node: the issue's minimal shape as written */
    {.name = "approval_nodes: the minimal shape",
     .definition =
         "{\"name\":\"w\",\"nodes\":[{\"id\":\"draft\",\"type\":\"noop\"},"
         "{\"id\":\"ok\",\"type\":\"approval\",\"after\":[\"draft\"],\"reviewers\":"
         "[\"ops@example.com\"],\"channels\":[{\"kind\":\"webhook\",\"url\":"
         "\"http://127.0.0.1:9/hook\"}],\"timeout\":\"3d\",\"on_timeout\":\"escalate\"}]}",
     .node = "ok",
     .kind = "approval"},
    {.name = "agent_node_inline_shape: openai",
     .definition = AGENT_INLINE("openai"),
     .node = "think",
     .kind = "agent"},
    {.name = "agent_node_inline_shape: anthropic",
     .definition = AGENT_INLINE("anthropic"),
     .node = "think",
     .kind = "agent"},
    /* approve_tools: the short list and the object with the approval node's fields */
    {.name = "agent_approve_tools_shapes: a tool",
     .definition = AGENT_APPROVE_TOOLS("[\"http_request\"]")},
    {.name = "agent_approve_tools_shapes: an effect class and a tool",
     .definition = AGENT_APPROVE_TOOLS("[\"irreversible\", \"http_request\"]")},
    {.name = "agent_approve_tools_shapes: the approval's fields",
     .definition = AGENT_APPROVE_TOOLS(
         "{\"effects\":[\"irreversible\"],\"reviewers\":[\"ops@example.com\"],\"channels\":"
         "[{\"kind\":\"webhook\",\"url\":\"https://example.com/h\"}],\"quorum\":1,"
         "\"timeout\":\"1d\",\"on_timeout\":\"escalate\",\"escalation\":[{\"contacts\":"
         "[\"boss\"],\"timeout\":\"2h\"}],\"title\":\"Send it?\"}")},
};

static void accepted_as_written(void **state)
{
        const struct acceptance *c = *state;
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;

        if (wf_parse_text(c->definition, strlen(c->definition), &wf, &errors) != 0) {
                char *dump = json_dumps(errors, JSON_INDENT(2));
                fail_msg("refused: %s", dump);
        }
        assert_null(errors);
        assert_non_null(wf);
        if (c->node)
                assert_string_equal(wf_node_kind(wf, c->node), c->kind);
        wf_free(wf);
}

static void cycles_are_named(void **state)
{
        _cleanup_json_ json_t *e =
            errors_of("{\"name\":\"w\",\"nodes\":[{\"id\":\"root\",\"type\":\"noop\"},"
                      "{\"id\":\"a\",\"type\":\"noop\",\"after\":[\"c\",\"root\"]},"
                      "{\"id\":\"b\",\"type\":\"noop\",\"after\":[\"a\"]},"
                      "{\"id\":\"c\",\"type\":\"noop\",\"after\":[\"b\"]}]}");
        size_t i;
        json_t *x;
        bool found = false;
        json_array_foreach (e, i, x) {
                const char *m = json_string_value(json_object_get(x, "message"));
                if (strstr(m, "dependency cycle") && strstr(m, "a -> b -> c -> a"))
                        found = true;
                if (strstr(m, "dependency cycle"))
                        assert_non_null(
                            strstr(json_string_value(json_object_get(x, "field")), "/after"));
        }
        if (!found) {
                char *d = json_dumps(e, 0);
                fail_msg("cycle not named: %s", d);
        }
}

static void too_many_nodes_and_too_many_errors(void **state)
{
        _cleanup_json_ json_t *nodes = json_array();
        for (int i = 0; i < WF_MAX_NODES + 1; i++) {
                char id[16];
                snprintf(id, sizeof(id), "n%d", i);
                json_array_append_new(nodes, json_pack("{s:s,s:s}", "id", id, "type", "noop"));
        }
        _cleanup_json_ json_t *def = json_pack("{s:s,s:O}", "name", "big", "nodes", nodes);
        json_t *errors = NULL;
        assert_int_equal(wf_validate(def, &errors), -EINVAL);
        expect_error(errors, NULL, "/nodes", "too many nodes (10001; limit 10000)");
        json_decref(errors);

        /* exactly the limit is fine and parses quickly */
        json_array_remove(nodes, 0);
        json_object_set(def, "nodes", nodes);
        assert_int_equal(wf_validate(def, &errors), 0);

        /* 500 bad nodes: errors are capped, with a final count of the rest */
        _cleanup_json_ json_t *bad = json_array();
        for (int i = 0; i < 500; i++)
                json_array_append_new(bad, json_pack("{s:s,s:s}", "id", "dup", "type", "noop"));
        _cleanup_json_ json_t *def2 = json_pack("{s:s,s:O}", "name", "dups", "nodes", bad);
        assert_int_equal(wf_validate(def2, &errors), -EINVAL);
        assert_int_equal(json_array_size(errors), WF_MAX_ERRORS + 1);
        expect_error(errors, NULL, "", "and 299 more errors");
        json_decref(errors);
}

static void invalid_json_text_is_reported(void **state)
{
        struct wf_workflow *wf = NULL;
        json_t *errors = NULL;
        const char *text = "{\"name\": \"w\",\n \"nodes\": [}";

        assert_int_equal(wf_parse_text(text, strlen(text), &wf, &errors), -EINVAL);
        expect_error(errors, NULL, "", "invalid JSON at line 2");
        json_decref(errors);
}

static void idempotency_keys_and_rerun_sets(void **state)
{
        _cleanup_free_ char *k1 = wf_idempotency_key("6f1c0000-0000-0000-0000-000000000001", "a");
        _cleanup_free_ char *k2 = wf_idempotency_key("6f1c0000-0000-0000-0000-000000000001", "b");
        _cleanup_free_ char *k3 = wf_idempotency_key("6f1c0000-0000-0000-0000-000000000002", "a");
        _cleanup_free_ char *k4 = wf_idempotency_key("6f1c0000-0000-0000-0000-000000000001", "a");
        assert_string_equal(k1, "6f1c0000-0000-0000-0000-000000000001:a");
        assert_string_equal(k1, k4);
        assert_string_not_equal(k1, k2);
        assert_string_not_equal(k1, k3);

        _cleanup_json_ json_t *def =
            test_json("{\"name\":\"w\",\"nodes\":[{\"id\":\"a\",\"type\":\"noop\"},"
                      "{\"id\":\"b\",\"type\":\"noop\",\"after\":[\"a\"]},"
                      "{\"id\":\"c\",\"type\":\"condition\",\"if\":\"true\",\"after\":[\"a\"],"
                      "\"then\":[\"d\"]},{\"id\":\"d\",\"type\":\"noop\"},"
                      "{\"id\":\"e\",\"type\":\"noop\",\"after\":[\"b\"]},"
                      "{\"id\":\"f\",\"type\":\"noop\"}]}");
        struct wf_workflow *wf = NULL;
        assert_int_equal(wf_parse(def, &wf, NULL), 0);
        json_t *ids = NULL;
        assert_int_equal(wf_nodes_before(wf, "c", &ids), 0);
        _cleanup_free_ char *s = json_dumps(ids, JSON_COMPACT);
        assert_string_equal(s, "[\"a\",\"b\",\"e\",\"f\"]"); /* d is downstream via then */
        json_decref(ids);
        assert_int_equal(wf_nodes_before(wf, "a", &ids), 0);
        _cleanup_free_ char *s2 = json_dumps(ids, JSON_COMPACT);
        assert_string_equal(s2, "[\"f\"]");
        json_decref(ids);
        assert_int_equal(wf_nodes_before(wf, "nope", &ids), -ENOENT);
        wf_free(wf);
}

/* {"name": "doc", "nodes": [stubs..., node]}: every node id the snippet names (in after,
 * then, else or nodes.<id>) becomes a noop the snippet runs after. */
static json_t *stub_workflow(json_t *node)
{
        _cleanup_free_ char *text = json_dumps(node, JSON_COMPACT);
        json_t *ids = json_object(), *nodes = json_array(), *after = json_array();
        const char *self = json_string_value(json_object_get(node, "id"));
        const char *keys[] = {"after", "then", "else"};

        for (size_t k = 0; k < 3; k++) {
                size_t i;
                json_t *v;
                json_array_foreach (json_object_get(node, keys[k]), i, v)
                        json_object_set_new(ids, json_string_value(v), json_true());
                json_object_del(node, keys[k]);
        }
        for (const char *p = text; (p = strstr(p, "nodes."));) {
                p += 6;
                size_t n =
                    strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
                char id[80];
                snprintf(id, sizeof(id), "%.*s", (int)n, p);
                if (n && strcmp(id, self))
                        json_object_set_new(ids, id, json_true());
        }
        const char *id;
        json_t *v;
        json_object_foreach (ids, id, v) {
                json_array_append_new(nodes, json_pack("{s:s,s:s}", "id", id, "type", "noop"));
                json_array_append_new(after, json_string(id));
        }
        if (json_array_size(after))
                json_object_set_new(node, "after", after);
        else
                json_decref(after);
        json_array_append(nodes, node);
        json_decref(ids);
        return json_pack("{s:s,s:o}", "name", "doc", "nodes", nodes);
}

/* Every example in docs/workflows.md is valid: whole workflows as written, node snippets
 * wrapped into a workflow (their references to other nodes dropped). Docs cannot rot. */
static void documented_examples_are_valid(void **state)
{
        _cleanup_free_ char *md = NULL;
        size_t len = 0;
        int workflows = 0, snippets = 0;

        assert_int_equal(file_read_all(AGENTLY_SOURCE_DIR "/docs/workflows.md", 1 << 20, &md, &len),
                         0);
        for (char *p = md; (p = strstr(p, "```json\n"));) {
                p += 8;
                char *end = strstr(p, "```");
                assert_non_null(end);
                *end = '\0';
                json_error_t jerr;
                json_t *whole = json_loads(p, 0, &jerr);
                if (whole && json_object_get(whole, "nodes")) {
                        json_t *errors = NULL;
                        if (wf_validate(whole, &errors) < 0) {
                                char *d = json_dumps(errors, JSON_INDENT(2));
                                fail_msg("documented workflow rejected: %s\n%s", d, p);
                        }
                        workflows++;
                } else {
                        /* one node per line, or one node over several lines */
                        char *line = p;
                        json_t *one = whole;
                        while (line && *line) {
                                char *nl = strchr(line, '\n');
                                if (!one && nl)
                                        *nl = '\0';
                                json_t *node = one ? json_incref(one) : json_loads(line, 0, NULL);
                                if (node && json_object_get(node, "id") &&
                                    json_object_get(node, "type")) {
                                        /* the nodes it names become noop stubs it runs after */
                                        _cleanup_json_ json_t *wf = stub_workflow(node);
                                        json_t *errors = NULL;
                                        if (wf_validate(wf, &errors) < 0) {
                                                char *d = json_dumps(errors, JSON_INDENT(2));
                                                fail_msg("documented node rejected: %s", d);
                                        }
                                        snippets++;
                                }
                                if (node)
                                        json_decref(node);
                                if (one)
                                        break;
                                line = nl ? nl + 1 : NULL;
                        }
                }
                if (whole)
                        json_decref(whole);
                p = end + 3;
        }
        assert_int_ge(workflows, 2);
        assert_int_ge(snippets, 8);
}

/* docs/workflow.schema.json is loadable and lists exactly the node kinds the parser knows,
 * with a rule per kind; its minimal example constraints agree with the parser's. */
static void schema_matches_the_parser(void **state)
{
        json_error_t jerr;
        _cleanup_json_ json_t *schema =
            json_load_file(AGENTLY_SOURCE_DIR "/docs/workflow.schema.json", 0, &jerr);
        assert_non_null(schema);
        assert_string_equal(json_string_value(json_object_get(schema, "$schema")),
                            "https://json-schema.org/draft/2020-12/schema");
        json_t *node = json_object_get(json_object_get(schema, "$defs"), "node");
        json_t *types =
            json_object_get(json_object_get(json_object_get(node, "properties"), "type"), "enum");
        json_t *rules = json_object_get(node, "allOf");
        assert_int_equal(json_array_size(types), 12);
        assert_int_equal(json_array_size(rules), 12);
        size_t i;
        json_t *t;
        json_array_foreach (types, i, t) {
                /* a workflow with just that kind, minimally filled, must name the kind as known */
                _cleanup_json_ json_t *def = json_pack("{s:s,s:[{s:s,s:s}]}", "name", "k", "nodes",
                                                       "id", "a", "type", json_string_value(t));
                json_t *errors = NULL;
                (void)wf_validate(def, &errors);
                size_t j;
                json_t *e;
                json_array_foreach (errors, j, e)
                        assert_null(strstr(json_string_value(json_object_get(e, "message")),
                                           "unknown node type"));
                json_decref(errors);
                const char *kind = json_string_value(json_object_get(
                    json_object_get(json_object_get(json_object_get(json_array_get(rules, i), "if"),
                                                    "properties"),
                                    "type"),
                    "const"));
                assert_string_equal(kind, json_string_value(t));
        }
        /* unknown kinds are rejected by the parser too */
        _cleanup_json_ json_t *bad =
            json_pack("{s:s,s:[{s:s,s:s}]}", "name", "k", "nodes", "id", "a", "type", "agentx");
        assert_int_equal(wf_validate(bad, NULL), -EINVAL);
}

int main(void)
{
        static const struct CMUnitTest named[] = {
            cmocka_unit_test(minimal_shape_is_accepted_as_written),
            cmocka_unit_test(every_kind_parses),
            cmocka_unit_test(cycles_are_named),
            cmocka_unit_test(too_many_nodes_and_too_many_errors),
            cmocka_unit_test(invalid_json_text_is_reported),
            cmocka_unit_test(idempotency_keys_and_rerun_sets),
            cmocka_unit_test(documented_examples_are_valid),
            cmocka_unit_test(schema_matches_the_parser),
        };
        /* each table row is a test of its own, named by its row */
        struct CMUnitTest tests[ELEMENTSOF(named) + ELEMENTSOF(refusals) + ELEMENTSOF(acceptances)];
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(named); i++)
                tests[n++] = named[i];
        for (size_t i = 0; i < ELEMENTSOF(refusals); i++)
                tests[n++] = (struct CMUnitTest){refusals[i].name, refused_as_expected, NULL, NULL,
                                                 (void *)&refusals[i]};
        for (size_t i = 0; i < ELEMENTSOF(acceptances); i++)
                tests[n++] = (struct CMUnitTest){acceptances[i].name, accepted_as_written, NULL,
                                                 NULL, (void *)&acceptances[i]};
        return cmocka_run_group_tests(tests, NULL, NULL);
}
