/* The batched writes of one worker loop turn; see queue.h, 0011_run_queue.sql and
 * 0055_write_rows.sql. */
#include "queue.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "db.h"
#include "redact.h"
#include "strutil.h"

static const char APPLY_WRITES_SQL[] =
    "SELECT lost_run_id FROM agently_apply_write_rows($1, $2::agently_write[])";

/* A buffer grown past this (bytes of text) is freed after its flush, not kept. */
#define KEEP_MAX (4u << 20)

/* Nesting deeper than jansson's own parser takes is refused (no value of ours has it). */
#define DEPTH_MAX 2048

/*
 * The operations are written as text the moment they are appended (no tree per operation,
 * no serialization of the whole batch at the flush: that was a fifth of the worker's CPU in
 * a big map, docs/performance.md): the text of an array of agently_write rows
 * (0055_write_rows.sql), which the server reads field by field with each type's input
 * function, where a JSON document cost it twice as much to parse and take apart.
 *
 * The text has two levels of quoting. An operation is an array element, `"(f1,f2,...)"`;
 * inside it a field that is not NULL is written quoted, `\"...\"`, and a NULL field is
 * empty. A `"` or `\` of a field's value is escaped for the row (a backslash before it) and
 * the row's text again for the array (a backslash before each `"` and `\`): four bytes,
 * `\\\"` or `\\\\`. Every other byte is written as it is (commas, parentheses, braces,
 * newlines: all inside quotes). A JSON field's value is its JSON text, escaped the same way.
 */
struct queue_writes {
        struct buf text; /* "{op,op,..." — the agently_write[] text, open */
        int n;           /* operations in text */
        /* the (run, node, attempt) of every node write, as 64-bit hashes in an open-addressed
         * set (0 = empty): a collision only answers -EBUSY once too often, which costs the
         * caller one flush more, never a wrong write (so does a key left by a failed append) */
        uint64_t *keys;
        size_t keys_cap, keys_used;
};

/* A writer into b->text that keeps its first error, so the fields of an operation are
 * written one after another and checked once. While quoted, what it writes is a field's
 * value: its `"` and `\` are escaped for both levels (the comment above). */
struct emit {
        struct buf *b;
        int err;
        bool quoted;
};

struct queue_writes *queue_writes_new(void)
{
        struct queue_writes *b = calloc(1, sizeof(*b));

        if (!b)
                return NULL;
        buf_init(&b->text, SIZE_MAX / 2);
        return b;
}

void queue_writes_free(struct queue_writes *b)
{
        if (!b)
                return;
        buf_free(&b->text);
        free(b->keys);
        free(b);
}

int queue_writes_count(const struct queue_writes *b)
{
        return b->n;
}

void queue_writes_clear(struct queue_writes *b)
{
        buf_reset(&b->text);
        b->n = 0;
        if (b->keys_used > 0)
                memset(b->keys, 0, b->keys_cap * sizeof(*b->keys));
        b->keys_used = 0;
}

static void put(struct emit *e, const char *s, size_t n)
{
        size_t run = 0;

        if (e->err)
                return;
        if (!e->quoted) {
                e->err = buf_append(e->b, s, n);
                return;
        }
        for (size_t i = 0; i < n && e->err == 0; i++) {
                if (s[i] != '"' && s[i] != '\\')
                        continue;
                e->err = buf_append(e->b, s + run, i - run);
                if (e->err == 0)
                        e->err = buf_append(e->b, s[i] == '"' ? "\\\\\\\"" : "\\\\\\\\", 4);
                run = i + 1;
        }
        if (e->err == 0)
                e->err = buf_append(e->b, s + run, n - run);
}

/* The row's own syntax (commas, parentheses, a field's quotes), never escaped. */
static void put_raw(struct emit *e, const char *s, size_t n)
{
        if (e->err == 0)
                e->err = buf_append(e->b, s, n);
}

static void put_lit(struct emit *e, const char *s)
{
        put(e, s, strlen(s));
}

static void put_int(struct emit *e, int64_t v)
{
        char tmp[24], *p = tmp + sizeof(tmp);
        uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;

        do {
                *--p = (char)('0' + u % 10);
                u /= 10;
        } while (u);
        if (v < 0)
                *--p = '-';
        put(e, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* s (n bytes, valid UTF-8, NULs allowed) as a JSON string, escaped as jansson does (the
 * two-character escapes, other control characters as \u00XX, everything else as is).
 * Bytes that are not UTF-8 are refused (-EILSEQ): the server would refuse the statement. */
static void put_escaped(struct emit *e, const char *s, size_t n)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t run = 0, i = 0;

        put(e, "\"", 1);
        while (i < n && e->err == 0) {
                unsigned char c = (unsigned char)s[i];

                if (c >= 0x20 && c != '"' && c != '\\') {
                        size_t len = c < 0x80 ? 1 : str_utf8_char_len(s + i, n - i);
                        if (len == 0) {
                                e->err = -EILSEQ;
                                return;
                        }
                        i += len;
                        continue;
                }
                char esc[6] = {'\\', 'u', '0', '0', 0, 0};
                size_t k = 2;
                put(e, s + run, i - run);
                switch (c) {
                case '"':
                case '\\':
                        esc[1] = (char)c;
                        break;
                case '\b':
                        esc[1] = 'b';
                        break;
                case '\f':
                        esc[1] = 'f';
                        break;
                case '\n':
                        esc[1] = 'n';
                        break;
                case '\r':
                        esc[1] = 'r';
                        break;
                case '\t':
                        esc[1] = 't';
                        break;
                default:
                        esc[4] = hex[c >> 4];
                        esc[5] = hex[c & 15];
                        k = 6;
                }
                put(e, esc, k);
                run = ++i;
        }
        put(e, s + run, n - run);
        put(e, "\"", 1);
}

/* A JSON value whose strings and keys redact_json() has masked already. */
static void put_json(struct emit *e, const json_t *v, int depth)
{
        if (e->err)
                return;
        if (depth > DEPTH_MAX) {
                e->err = -ELOOP;
                return;
        }
        switch (json_typeof(v)) {
        case JSON_OBJECT: {
                const char *k;
                json_t *x;
                bool first = true;
                put(e, "{", 1);
                json_object_foreach ((json_t *)v, k, x) {
                        if (!first)
                                put(e, ",", 1);
                        first = false;
                        put_escaped(e, k, strlen(k));
                        put(e, ":", 1);
                        put_json(e, x, depth + 1);
                }
                put(e, "}", 1);
                return;
        }
        case JSON_ARRAY:
                put(e, "[", 1);
                for (size_t i = 0; i < json_array_size(v); i++) {
                        if (i > 0)
                                put(e, ",", 1);
                        put_json(e, json_array_get(v, i), depth + 1);
                }
                put(e, "]", 1);
                return;
        case JSON_STRING:
                put_escaped(e, json_string_value(v), json_string_length(v));
                return;
        case JSON_INTEGER:
                put_int(e, json_integer_value(v));
                return;
        case JSON_REAL: {
                /* rare: jansson's own text, digit for digit */
                _cleanup_free_ char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
                if (!t)
                        e->err = -ENOMEM;
                else
                        put_lit(e, t);
                return;
        }
        case JSON_TRUE:
                put(e, "true", 4);
                return;
        case JSON_FALSE:
                put(e, "false", 5);
                return;
        case JSON_NULL:
                put(e, "null", 4);
                return;
        }
}

/* The fields of one operation, in agently_write's order (0055_write_rows.sql); NULL (or a
 * negative number) is a NULL field. */
struct op {
        const char *op;
        const char *node; /* data: masked */
        int attempt;      /* < 0: none */
        const char *status;
        const json_t *input, *output, *error;
        const char *key; /* data */
        const char *kind, *level;
        const char *message; /* data */
        const json_t *data;
        int64_t run_at_ms; /* < 0: none */
        const char *signal;
        int64_t deadline_ms; /* < 0: none */
};

static void field_sep(struct emit *e)
{
        put_raw(e, ",", 1);
}

/* n bytes of text, valid UTF-8 (else -EILSEQ: the server would refuse the statement), as
 * a quoted field. */
static void field_text(struct emit *e, const char *s, size_t n)
{
        if (e->err == 0 && !str_is_utf8(s, n))
                e->err = -EILSEQ;
        put_raw(e, "\\\"", 2);
        e->quoted = true;
        put(e, s, n);
        e->quoted = false;
        put_raw(e, "\\\"", 2);
}

/* The operation's own words — the op, a status, an event's kind and level, the run id, a
 * signal id — are the program's, not data, and are not masked: a secret whose value is
 * such a word cannot break the statement. */
static void field_word(struct emit *e, const char *s)
{
        field_sep(e);
        if (s)
                field_text(e, s, strlen(s));
}

/* A string of data (a node id, a message, a key): masked (src/base/redact.h) first. */
static void field_data(struct emit *e, const char *s)
{
        _cleanup_free_ char *masked = NULL;
        size_t mn = 0;
        int r;

        field_sep(e);
        if (!s || e->err)
                return;
        r = redact_text(s, strlen(s), &masked, &mn);
        if (r < 0)
                e->err = r;
        else if (r > 0)
                field_text(e, masked, mn);
        else
                field_text(e, s, strlen(s));
}

/* A JSON value: its strings and keys are masked in place, as the choke point always did
 * (the caller's tree, so a value kept in a snapshot holds the mask too), then written as
 * its JSON text, quoted. */
static void field_json(struct emit *e, const json_t *v)
{
        int r;

        field_sep(e);
        if (!v || e->err)
                return;
        r = redact_json((json_t *)v);
        if (r < 0) {
                e->err = r;
                return;
        }
        put_raw(e, "\\\"", 2);
        e->quoted = true;
        put_json(e, v, 0);
        e->quoted = false;
        put_raw(e, "\\\"", 2);
}

static void field_int(struct emit *e, int64_t v, bool present)
{
        field_sep(e);
        if (present)
                put_int(e, v);
}

/* Appends o as the next element of the array (its position i, the run, the epoch first);
 * on any error of its fields it is taken back whole (the buffer holds what it held before). */
static int op_append(struct queue_writes *b, const char *run_id, int64_t epoch, const struct op *o)
{
        size_t mark = b->text.len;
        struct emit e = {.b = &b->text};

        put_raw(&e, b->n > 0 ? ",\"(" : "{\"(", 3);
        put_int(&e, b->n);
        field_word(&e, o->op);
        field_word(&e, run_id);
        field_int(&e, epoch, true);
        field_data(&e, o->node);
        field_int(&e, o->attempt, o->attempt >= 0);
        field_word(&e, o->status);
        field_json(&e, o->input);
        field_json(&e, o->output);
        field_json(&e, o->error);
        field_data(&e, o->key);
        field_word(&e, o->kind);
        field_word(&e, o->level);
        field_data(&e, o->message);
        field_json(&e, o->data);
        field_int(&e, o->run_at_ms, o->run_at_ms >= 0);
        field_word(&e, o->signal);
        field_int(&e, o->deadline_ms, o->deadline_ms >= 0);
        put_raw(&e, ")\"", 2);
        if (e.err) {
                b->text.len = mark;
                if (b->text.data)
                        b->text.data[mark] = '\0';
                return e.err;
        }
        b->n++;
        return 0;
}

static uint64_t key_hash(const char *run_id, const char *node_id, int attempt)
{
        uint64_t h = 14695981039346656037ull; /* FNV-1a */

        for (const char *p = run_id; *p; p++)
                h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull; /* no byte of a string: the separator */
        for (const char *p = node_id; *p; p++)
                h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
        h = (h ^ (uint32_t)attempt) * 1099511628211ull;
        h ^= h >> 29;
        return h ? h : 1;
}

/* The slot of h in the set: where it is, or the empty one where it would go. */
static size_t key_slot(const uint64_t *keys, size_t cap, uint64_t h)
{
        size_t i = (size_t)h & (cap - 1);

        while (keys[i] && keys[i] != h)
                i = (i + 1) & (cap - 1);
        return i;
}

/* 1 when h was in the set already, 0 when added, -ENOMEM. */
static int key_add(struct queue_writes *b, uint64_t h)
{
        size_t i;

        if ((b->keys_used + 1) * 2 > b->keys_cap) {
                size_t cap = b->keys_cap ? b->keys_cap * 2 : 256;
                uint64_t *keys = calloc(cap, sizeof(*keys));
                if (!keys)
                        return -ENOMEM;
                for (size_t j = 0; j < b->keys_cap; j++)
                        if (b->keys[j])
                                keys[key_slot(keys, cap, b->keys[j])] = b->keys[j];
                free(b->keys);
                b->keys = keys;
                b->keys_cap = cap;
        }
        i = key_slot(b->keys, b->keys_cap, h);
        if (b->keys[i])
                return 1;
        b->keys[i] = h;
        b->keys_used++;
        return 0;
}

int queue_writes_node(struct queue_writes *b, const char *run_id, int64_t epoch,
                      const struct queue_node_write *w)
{
        uint64_t h;
        int r;

        if (!w->node_id || !w->status)
                return -EINVAL;
        h = key_hash(run_id, w->node_id, w->attempt);
        r = key_add(b, h);
        if (r != 0)
                return r > 0 ? -EBUSY : r;
        /* a failed append leaves its key: at worst one -EBUSY too many */
        return op_append(b, run_id, epoch,
                         &(struct op){.op = "node",
                                      .node = w->node_id,
                                      .attempt = w->attempt,
                                      .status = w->status,
                                      .input = w->input,
                                      .output = w->output,
                                      .error = w->error,
                                      .key = w->idempotency_key,
                                      .kind = w->event_kind,
                                      .message = w->event_message,
                                      .data = w->event_data,
                                      .run_at_ms = -1,
                                      .deadline_ms = -1});
}

int queue_writes_event(struct queue_writes *b, const char *run_id, int64_t epoch, const char *kind,
                       const char *node_id, int attempt, const char *level, const char *message,
                       const json_t *data)
{
        return op_append(b, run_id, epoch,
                         &(struct op){.op = "event",
                                      .node = node_id,
                                      .attempt = attempt,
                                      .kind = kind,
                                      .level = level,
                                      .message = message,
                                      .data = data,
                                      .run_at_ms = -1,
                                      .deadline_ms = -1});
}

int queue_writes_finish(struct queue_writes *b, const char *run_id, int64_t epoch,
                        const char *status, const json_t *output, const json_t *error)
{
        return op_append(b, run_id, epoch,
                         &(struct op){.op = "finish",
                                      .attempt = -1,
                                      .status = status,
                                      .output = output,
                                      .error = error,
                                      .run_at_ms = -1,
                                      .deadline_ms = -1});
}

int queue_writes_release(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *status, int64_t run_at_ms, const char *wait_reason,
                         const json_t *error, int64_t deadline_ms)
{
        return op_append(b, run_id, epoch,
                         &(struct op){.op = "release",
                                      .attempt = -1,
                                      .status = status,
                                      .message = wait_reason,
                                      .error = error,
                                      .run_at_ms = run_at_ms,
                                      .deadline_ms = deadline_ms});
}

int queue_writes_consume(struct queue_writes *b, const char *run_id, int64_t epoch,
                         const char *signal_id, const char *node_id)
{
        return op_append(b, run_id, epoch,
                         &(struct op){.op = "consume",
                                      .node = node_id,
                                      .attempt = -1,
                                      .signal = signal_id,
                                      .run_at_ms = -1,
                                      .deadline_ms = -1});
}

static int flush(PGconn *c, const char *worker, struct queue_writes *b,
                 void (*lost)(void *arg, const char *run_id), void *arg, const char *after)
{
        _cleanup_pgresult_ PGresult *res = NULL;
        int r = 0;

        if (b->n == 0)
                return after ? db_exec(c, after) : 0;
        r = buf_append(&b->text, "}", 1);
        if (r < 0) {
                queue_writes_clear(b);
                return r;
        }
        const char *params[] = {worker, b->text.data};
        /* prepared once per connection, as the claim (queue.c) */
        res = db_query_prepared_between(c, NULL, APPLY_WRITES_SQL, 2, params, after, &r);
        queue_writes_clear(b);
        /* the memory is kept for the next turn, unless a big statement (a map's fan-in)
         * grew it past what a turn usually needs */
        if (b->text.cap > KEEP_MAX) {
                buf_free(&b->text);
                free(TAKE_PTR(b->keys));
                b->keys_cap = 0;
        }
        if (!res)
                return r;
        for (int i = 0; i < PQntuples(res); i++)
                lost(arg, PQgetvalue(res, i, 0));
        return 0;
}

int queue_writes_flush(PGconn *c, const char *worker, struct queue_writes *b,
                       void (*lost)(void *arg, const char *run_id), void *arg)
{
        return flush(c, worker, b, lost, arg, NULL);
}

int queue_writes_flush_commit(PGconn *c, const char *worker, struct queue_writes *b,
                              void (*lost)(void *arg, const char *run_id), void *arg)
{
        return flush(c, worker, b, lost, arg, "COMMIT");
}
