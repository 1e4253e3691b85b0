/*
 * The expression language: a hand-written lexer and recursive-descent parser producing a
 * small AST stored in one array, and a tree-walking evaluator over jansson values. Every
 * recursion is bounded by WF_EXPR_MAX_DEPTH (checked at parse time on the AST depth) and
 * every string an evaluation builds by WF_EXPR_MAX_STRING, so a hostile definition or a
 * hostile run input cannot exhaust the stack or memory.
 */
#include "expr_internal.h"
#include "engine.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cleanup.h"
#include "strutil.h"

enum tok {
        TOK_EOF,
        TOK_NUM,
        TOK_STR,
        TOK_IDENT,
        TOK_TRUE,
        TOK_FALSE,
        TOK_NULL,
        TOK_LPAREN,
        TOK_RPAREN,
        TOK_LBRACKET,
        TOK_RBRACKET,
        TOK_DOT,
        TOK_COMMA,
        TOK_NOT,
        TOK_AND,
        TOK_OR,
        TOK_EQ,
        TOK_NE,
        TOK_LT,
        TOK_LE,
        TOK_GT,
        TOK_GE,
        TOK_PLUS,
        TOK_MINUS,
        TOK_STAR,
        TOK_SLASH,
        TOK_PERCENT,
        TOK_RBRACE,
};

enum node_kind {
        N_LITERAL,
        N_NAME,   /* a root name: input, nodes, item, ... */
        N_MEMBER, /* a.name */
        N_INDEX,  /* a[expr] */
        N_CALL,
        N_NOT,
        N_NEG,
        N_BINARY,
        N_AND,
        N_OR,
};

enum func { F_LEN, F_DEFAULT, F_STRING, F_JSON };

static const struct {
        const char *name;
        int arity;
} funcs[] = {
    [F_LEN] = {"len", 1},
    [F_DEFAULT] = {"default", 2},
    [F_STRING] = {"string", 1},
    [F_JSON] = {"json", 1},
};

struct enode {
        enum node_kind kind;
        int op; /* N_BINARY: the token; N_CALL: enum func */
        int column;
        int a, b;      /* children (-1 if none) */
        json_t *value; /* N_LITERAL */
        char *name;    /* N_NAME, N_MEMBER */
};

struct wf_expr {
        char *src;
        struct enode *nodes;
        size_t n_nodes, cap;
        int root;
};

struct parser {
        const char *s;
        size_t len;
        size_t pos; /* next unread byte */
        bool in_template;
        /* current token */
        enum tok tok;
        size_t tok_start;
        json_t *tok_value; /* TOK_NUM, TOK_STR */
        char *tok_text;    /* TOK_IDENT */
        struct wf_expr *e;
        struct wf_expr_error *err;
        bool failed;
};

void wf_expr_error_clear(struct wf_expr_error *err)
{
        if (!err)
                return;
        free(err->message);
        err->message = NULL;
        err->column = 0;
}

static void set_error(struct wf_expr_error *err, int column, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(struct wf_expr_error *err, int column, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        if (!err || err->message) /* keep the first error */
                return;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        err->message = m;
        err->column = column;
}

static void parse_fail(struct parser *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void parse_fail(struct parser *p, size_t at, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        if (p->failed)
                return;
        p->failed = true;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (p->err && !p->err->message) {
                p->err->message = m;
                p->err->column = (int)at + 1;
        } else {
                free(m);
        }
}

static const char *tok_name(enum tok t)
{
        switch (t) {
        case TOK_EOF:
                return "end of expression";
        case TOK_NUM:
                return "number";
        case TOK_STR:
                return "string";
        case TOK_IDENT:
                return "name";
        case TOK_TRUE:
                return "true";
        case TOK_FALSE:
                return "false";
        case TOK_NULL:
                return "null";
        case TOK_LPAREN:
                return "'('";
        case TOK_RPAREN:
                return "')'";
        case TOK_LBRACKET:
                return "'['";
        case TOK_RBRACKET:
                return "']'";
        case TOK_DOT:
                return "'.'";
        case TOK_COMMA:
                return "','";
        case TOK_NOT:
                return "'!'";
        case TOK_AND:
                return "'&&'";
        case TOK_OR:
                return "'||'";
        case TOK_EQ:
                return "'=='";
        case TOK_NE:
                return "'!='";
        case TOK_LT:
                return "'<'";
        case TOK_LE:
                return "'<='";
        case TOK_GT:
                return "'>'";
        case TOK_GE:
                return "'>='";
        case TOK_PLUS:
                return "'+'";
        case TOK_MINUS:
                return "'-'";
        case TOK_STAR:
                return "'*'";
        case TOK_SLASH:
                return "'/'";
        case TOK_PERCENT:
                return "'%'";
        case TOK_RBRACE:
                return "'}'";
        }
        return "token";
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static void lex_string(struct parser *p)
{
        char quote = p->s[p->pos++];
        _cleanup_buf_ struct buf b;

        buf_init(&b, WF_EXPR_MAX_LEN);
        while (p->pos < p->len && p->s[p->pos] != quote) {
                char c = p->s[p->pos];
                if (c == '\\') {
                        size_t esc = p->pos;
                        char out;
                        if (p->pos + 1 >= p->len)
                                break;
                        c = p->s[++p->pos];
                        switch (c) {
                        case 'n':
                                out = '\n';
                                break;
                        case 't':
                                out = '\t';
                                break;
                        case 'r':
                                out = '\r';
                                break;
                        case '\\':
                        case '\'':
                        case '"':
                        case '/':
                                out = c;
                                break;
                        case 'u': {
                                unsigned cp = 0;
                                char utf[4];
                                size_t n;
                                for (int i = 1; i <= 4; i++) {
                                        int h =
                                            p->pos + i < p->len ? hex_value(p->s[p->pos + i]) : -1;
                                        if (h < 0) {
                                                parse_fail(p, esc, "\\u needs 4 hex digits");
                                                return;
                                        }
                                        cp = cp * 16 + (unsigned)h;
                                }
                                if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) {
                                        parse_fail(p, esc, "\\u%04x is not allowed in a string",
                                                   cp);
                                        return;
                                }
                                if (cp < 0x80) {
                                        utf[0] = (char)cp;
                                        n = 1;
                                } else if (cp < 0x800) {
                                        utf[0] = (char)(0xC0 | (cp >> 6));
                                        utf[1] = (char)(0x80 | (cp & 0x3F));
                                        n = 2;
                                } else {
                                        utf[0] = (char)(0xE0 | (cp >> 12));
                                        utf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                                        utf[2] = (char)(0x80 | (cp & 0x3F));
                                        n = 3;
                                }
                                if (buf_append(&b, utf, n) < 0)
                                        goto too_long;
                                p->pos += 5;
                                continue;
                        }
                        default:
                                parse_fail(p, esc,
                                           "unknown escape '\\%c'; use \\n, \\t, \\r, \\\\, \\', "
                                           "\\\" or \\uXXXX",
                                           c);
                                return;
                        }
                        if (buf_append(&b, &out, 1) < 0)
                                goto too_long;
                        p->pos++;
                        continue;
                }
                if (c == '\0') {
                        parse_fail(p, p->pos, "NUL byte in string");
                        return;
                }
                if (buf_append(&b, &c, 1) < 0)
                        goto too_long;
                p->pos++;
        }
        if (p->pos >= p->len) {
                parse_fail(p, p->tok_start, "unterminated string; close it with %c", quote);
                return;
        }
        p->pos++; /* closing quote */
        p->tok_value = json_stringn(b.data ? b.data : "", b.len);
        if (!p->tok_value)
                parse_fail(p, p->tok_start, "string is not valid UTF-8");
        p->tok = TOK_STR;
        return;
too_long:
        parse_fail(p, p->tok_start, "string literal too long");
}

static void lex_number(struct parser *p)
{
        size_t start = p->pos;
        bool real = false;
        char tmp[64];

        while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos]))
                p->pos++;
        if (p->pos + 1 < p->len && p->s[p->pos] == '.' &&
            isdigit((unsigned char)p->s[p->pos + 1])) {
                real = true;
                p->pos++;
                while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos]))
                        p->pos++;
        }
        if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
                size_t q = p->pos + 1;
                if (q < p->len && (p->s[q] == '+' || p->s[q] == '-'))
                        q++;
                if (q < p->len && isdigit((unsigned char)p->s[q])) {
                        real = true;
                        p->pos = q;
                        while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos]))
                                p->pos++;
                }
        }
        if (p->pos < p->len && (isalpha((unsigned char)p->s[p->pos]) || p->s[p->pos] == '_')) {
                parse_fail(p, start, "malformed number");
                return;
        }
        if (p->pos - start >= sizeof(tmp)) {
                parse_fail(p, start, "number too long");
                return;
        }
        memcpy(tmp, p->s + start, p->pos - start);
        tmp[p->pos - start] = '\0';
        p->tok = TOK_NUM;
        if (!real) {
                int64_t v;
                if (str_to_int64(tmp, &v) == 0) {
                        p->tok_value = json_integer(v);
                        return;
                }
        }
        {
                char *end;
                double d = strtod(tmp, &end);
                if (*end || !isfinite(d)) {
                        parse_fail(p, start, "number out of range");
                        return;
                }
                p->tok_value = json_real(d);
        }
}

/* Reads the next token into p->tok. */
static void next(struct parser *p)
{
        if (p->tok_value) {
                json_decref(p->tok_value);
                p->tok_value = NULL;
        }
        free(p->tok_text);
        p->tok_text = NULL;
        if (p->failed) {
                p->tok = TOK_EOF;
                return;
        }
        while (p->pos < p->len && isspace((unsigned char)p->s[p->pos]))
                p->pos++;
        p->tok_start = p->pos;
        if (p->pos >= p->len) {
                p->tok = TOK_EOF;
                return;
        }
        char c = p->s[p->pos], d = p->pos + 1 < p->len ? p->s[p->pos + 1] : '\0';
        if (isdigit((unsigned char)c)) {
                lex_number(p);
                return;
        }
        if (c == '"' || c == '\'') {
                lex_string(p);
                return;
        }
        if (isalpha((unsigned char)c) || c == '_') {
                size_t start = p->pos;
                while (p->pos < p->len &&
                       (isalnum((unsigned char)p->s[p->pos]) || p->s[p->pos] == '_'))
                        p->pos++;
                size_t n = p->pos - start;
                if (n == 4 && !memcmp(p->s + start, "true", 4))
                        p->tok = TOK_TRUE;
                else if (n == 5 && !memcmp(p->s + start, "false", 5))
                        p->tok = TOK_FALSE;
                else if (n == 4 && !memcmp(p->s + start, "null", 4))
                        p->tok = TOK_NULL;
                else {
                        p->tok = TOK_IDENT;
                        p->tok_text = strndup(p->s + start, n);
                        if (!p->tok_text)
                                parse_fail(p, start, "out of memory");
                }
                return;
        }
        p->pos++;
        switch (c) {
        case '(':
                p->tok = TOK_LPAREN;
                return;
        case ')':
                p->tok = TOK_RPAREN;
                return;
        case '[':
                p->tok = TOK_LBRACKET;
                return;
        case ']':
                p->tok = TOK_RBRACKET;
                return;
        case '.':
                p->tok = TOK_DOT;
                return;
        case ',':
                p->tok = TOK_COMMA;
                return;
        case '+':
                p->tok = TOK_PLUS;
                return;
        case '-':
                p->tok = TOK_MINUS;
                return;
        case '*':
                p->tok = TOK_STAR;
                return;
        case '/':
                p->tok = TOK_SLASH;
                return;
        case '%':
                p->tok = TOK_PERCENT;
                return;
        case '}':
                p->tok = TOK_RBRACE;
                return;
        case '!':
                if (d == '=') {
                        p->pos++;
                        p->tok = TOK_NE;
                } else {
                        p->tok = TOK_NOT;
                }
                return;
        case '=':
                if (d == '=') {
                        p->pos++;
                        p->tok = TOK_EQ;
                        return;
                }
                parse_fail(p, p->tok_start, "unexpected '='; use == to compare");
                p->tok = TOK_EOF;
                return;
        case '<':
        case '>':
                if (d == '=') {
                        p->pos++;
                        p->tok = c == '<' ? TOK_LE : TOK_GE;
                } else {
                        p->tok = c == '<' ? TOK_LT : TOK_GT;
                }
                return;
        case '&':
        case '|':
                if (d == c) {
                        p->pos++;
                        p->tok = c == '&' ? TOK_AND : TOK_OR;
                        return;
                }
                parse_fail(p, p->tok_start, "unexpected '%c'; use %c%c", c, c, c);
                p->tok = TOK_EOF;
                return;
        default:
                if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f)
                        parse_fail(p, p->tok_start, "unexpected character (byte 0x%02x)",
                                   (unsigned char)c);
                else
                        parse_fail(p, p->tok_start, "unexpected character '%c'", c);
                p->tok = TOK_EOF;
                return;
        }
}

static int add_node(struct parser *p, enum node_kind kind, size_t at, int a, int b)
{
        struct wf_expr *e = p->e;

        if (p->failed)
                return -1;
        if (e->n_nodes == e->cap) {
                size_t cap = e->cap ? e->cap * 2 : 16;
                struct enode *n = realloc(e->nodes, cap * sizeof(*n));
                if (!n) {
                        parse_fail(p, at, "out of memory");
                        return -1;
                }
                e->nodes = n;
                e->cap = cap;
        }
        e->nodes[e->n_nodes] =
            (struct enode){.kind = kind, .column = (int)at + 1, .a = a, .b = b, .op = 0};
        return (int)e->n_nodes++;
}

static int parse_or(struct parser *p, int depth);

static bool too_deep(struct parser *p, int depth)
{
        if (depth > WF_EXPR_MAX_DEPTH) {
                parse_fail(p, p->tok_start, "expression nested too deeply (limit %d levels)",
                           WF_EXPR_MAX_DEPTH);
                return true;
        }
        return false;
}

static bool expect(struct parser *p, enum tok t, const char *hint)
{
        if (p->failed)
                return false;
        if (p->tok != t) {
                parse_fail(p, p->tok_start, "expected %s%s but found %s", tok_name(t),
                           hint ? hint : "", tok_name(p->tok));
                return false;
        }
        next(p);
        return true;
}

static int parse_primary(struct parser *p, int depth)
{
        size_t at = p->tok_start;
        int n;

        if (too_deep(p, depth))
                return -1;
        switch (p->tok) {
        case TOK_NUM:
        case TOK_STR:
        case TOK_TRUE:
        case TOK_FALSE:
        case TOK_NULL:
                n = add_node(p, N_LITERAL, at, -1, -1);
                if (n < 0)
                        return -1;
                p->e->nodes[n].value = p->tok == TOK_TRUE    ? json_true()
                                       : p->tok == TOK_FALSE ? json_false()
                                       : p->tok == TOK_NULL  ? json_null()
                                                             : json_incref(p->tok_value);
                next(p);
                return n;
        case TOK_LPAREN:
                next(p);
                n = parse_or(p, depth + 1);
                if (!expect(p, TOK_RPAREN, " to close '('"))
                        return -1;
                return n;
        case TOK_IDENT: {
                _cleanup_free_ char *name = TAKE_PTR(p->tok_text);
                next(p);
                if (p->tok != TOK_LPAREN) {
                        n = add_node(p, N_NAME, at, -1, -1);
                        if (n >= 0)
                                p->e->nodes[n].name = TAKE_PTR(name);
                        return n;
                }
                size_t f;
                for (f = 0; f < ELEMENTSOF(funcs); f++)
                        if (!strcmp(funcs[f].name, name))
                                break;
                if (f == ELEMENTSOF(funcs)) {
                        parse_fail(p, at,
                                   "unknown function '%s'; known functions: len, default, "
                                   "string, json",
                                   name);
                        return -1;
                }
                next(p); /* ( */
                int args[2] = {-1, -1}, nargs = 0;
                if (p->tok != TOK_RPAREN)
                        for (;;) {
                                int a = parse_or(p, depth + 1);
                                if (p->failed)
                                        return -1;
                                if (nargs < 2)
                                        args[nargs] = a;
                                nargs++;
                                if (p->tok != TOK_COMMA)
                                        break;
                                next(p);
                        }
                if (!expect(p, TOK_RPAREN, " or ',' in the argument list"))
                        return -1;
                if (nargs != funcs[f].arity) {
                        parse_fail(p, at, "%s() takes %d argument%s, got %d", name, funcs[f].arity,
                                   funcs[f].arity == 1 ? "" : "s", nargs);
                        return -1;
                }
                n = add_node(p, N_CALL, at, args[0], args[1]);
                if (n >= 0)
                        p->e->nodes[n].op = (int)f;
                return n;
        }
        case TOK_EOF:
                parse_fail(p, at, "expression ends too early; expected a value");
                return -1;
        default:
                parse_fail(p, at, "expected a value but found %s", tok_name(p->tok));
                return -1;
        }
}

static int parse_postfix(struct parser *p, int depth)
{
        int n = parse_primary(p, depth);
        int chain = 0;

        while (!p->failed && (p->tok == TOK_DOT || p->tok == TOK_LBRACKET)) {
                size_t at = p->tok_start;
                if (too_deep(p, depth + ++chain))
                        return -1;
                if (p->tok == TOK_DOT) {
                        next(p);
                        if (p->tok != TOK_IDENT && p->tok != TOK_TRUE && p->tok != TOK_FALSE &&
                            p->tok != TOK_NULL) {
                                parse_fail(p, p->tok_start,
                                           "expected a name after '.' but found %s; use "
                                           "[\"key\"] for other keys",
                                           tok_name(p->tok));
                                return -1;
                        }
                        const char *text = p->tok == TOK_IDENT   ? p->tok_text
                                           : p->tok == TOK_TRUE  ? "true"
                                           : p->tok == TOK_FALSE ? "false"
                                                                 : "null";
                        char *name = strdup(text);
                        int m = add_node(p, N_MEMBER, at, n, -1);
                        if (m < 0 || !name) {
                                free(name);
                                parse_fail(p, at, "out of memory");
                                return -1;
                        }
                        p->e->nodes[m].name = name;
                        n = m;
                        next(p);
                } else {
                        next(p);
                        int idx = parse_or(p, depth + chain + 1);
                        if (!expect(p, TOK_RBRACKET, " to close '['"))
                                return -1;
                        n = add_node(p, N_INDEX, at, n, idx);
                }
        }
        return n;
}

static int parse_unary(struct parser *p, int depth)
{
        size_t at = p->tok_start;

        if (too_deep(p, depth))
                return -1;
        if (p->tok == TOK_NOT || p->tok == TOK_MINUS) {
                enum node_kind k = p->tok == TOK_NOT ? N_NOT : N_NEG;
                next(p);
                int a = parse_unary(p, depth + 1);
                return add_node(p, k, at, a, -1);
        }
        return parse_postfix(p, depth);
}

/* Binary levels, loosest first; left-associative. The chain length counts toward the
 * depth because evaluation recurses along it. */
static const enum tok level_ops[][4] = {
    {TOK_EQ, TOK_NE},
    {TOK_LT, TOK_LE, TOK_GT, TOK_GE},
    {TOK_PLUS, TOK_MINUS},
    {TOK_STAR, TOK_SLASH, TOK_PERCENT},
};

static bool tok_in(enum tok t, const enum tok *ops)
{
        for (int i = 0; i < 4; i++)
                if (ops[i] == t && t != TOK_EOF)
                        return true;
        return false;
}

static int parse_level(struct parser *p, int level, int depth)
{
        if (level == (int)ELEMENTSOF(level_ops))
                return parse_unary(p, depth);
        int n = parse_level(p, level + 1, depth + 1);
        int chain = 0;
        while (!p->failed && tok_in(p->tok, level_ops[level])) {
                size_t at = p->tok_start;
                enum tok op = p->tok;
                if (too_deep(p, depth + ++chain))
                        return -1;
                next(p);
                int b = parse_level(p, level + 1, depth + chain + 1);
                n = add_node(p, N_BINARY, at, n, b);
                if (n >= 0)
                        p->e->nodes[n].op = op;
        }
        return n;
}

static int parse_and(struct parser *p, int depth)
{
        int n = parse_level(p, 0, depth + 1);
        int chain = 0;
        while (!p->failed && p->tok == TOK_AND) {
                size_t at = p->tok_start;
                if (too_deep(p, depth + ++chain))
                        return -1;
                next(p);
                int b = parse_level(p, 0, depth + chain + 1);
                n = add_node(p, N_AND, at, n, b);
        }
        return n;
}

static int parse_or(struct parser *p, int depth)
{
        if (too_deep(p, depth))
                return -1;
        int n = parse_and(p, depth + 1);
        int chain = 0;
        while (!p->failed && p->tok == TOK_OR) {
                size_t at = p->tok_start;
                if (too_deep(p, depth + ++chain))
                        return -1;
                next(p);
                int b = parse_and(p, depth + chain + 1);
                n = add_node(p, N_OR, at, n, b);
        }
        return n;
}

void wf_expr_free(struct wf_expr *e)
{
        if (!e)
                return;
        for (size_t i = 0; i < e->n_nodes; i++) {
                if (e->nodes[i].value)
                        json_decref(e->nodes[i].value);
                free(e->nodes[i].name);
        }
        free(e->nodes);
        free(e->src);
        free(e);
}

int wf_expr_parse_n(const char *src, size_t len, bool in_template, size_t *end,
                    struct wf_expr **out, struct wf_expr_error *err)
{
        struct parser p = {.s = src, .len = len, .in_template = in_template, .err = err};
        struct wf_expr *e;
        int root;

        *out = NULL;
        if (!in_template && len > WF_EXPR_MAX_LEN) {
                set_error(err, 1, "expression too long (%zu bytes; limit %d)", len,
                          WF_EXPR_MAX_LEN);
                return -EINVAL;
        }
        if (memchr(src, '\0', len)) {
                set_error(err, 1, "expression contains a NUL byte");
                return -EINVAL;
        }
        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        p.e = e;
        next(&p);
        if (p.tok == TOK_EOF && !p.failed) {
                parse_fail(&p, p.tok_start, "empty expression");
        } else if (in_template && p.tok == TOK_RBRACE) {
                parse_fail(&p, p.tok_start, "empty expression in ${ }");
        }
        root = parse_or(&p, 0);
        if (!p.failed) {
                if (in_template) {
                        if (p.tok != TOK_RBRACE)
                                parse_fail(&p, p.tok_start,
                                           p.tok == TOK_EOF
                                               ? "missing '}' to close '${'"
                                               : "expected '}' to end the expression but "
                                                 "found %s",
                                           tok_name(p.tok));
                        else if (p.tok_start > WF_EXPR_MAX_LEN)
                                parse_fail(&p, 0, "expression too long (%zu bytes; limit %d)",
                                           p.tok_start, WF_EXPR_MAX_LEN);
                } else if (p.tok != TOK_EOF) {
                        parse_fail(&p, p.tok_start,
                                   p.tok == TOK_RBRACE
                                       ? "unexpected '}'"
                                       : "unexpected %s after the end of the expression; "
                                         "is an operator missing?",
                                   tok_name(p.tok));
                }
        }
        if (end)
                *end = p.tok_start;
        if (p.tok_value)
                json_decref(p.tok_value);
        free(p.tok_text);
        if (p.failed || root < 0) {
                wf_expr_free(e);
                if (err && !err->message)
                        return -ENOMEM;
                return -EINVAL;
        }
        e->root = root;
        e->src = strndup(src, in_template ? p.tok_start : len);
        if (!e->src) {
                wf_expr_free(e);
                return -ENOMEM;
        }
        *out = e;
        return 0;
}

static json_t *error_object(struct wf_expr_error *err)
{
        return json_pack("{s:s,s:i}", "message", err->message ? err->message : "out of memory",
                         "column", err->column);
}

int wf_expr_parse(const char *src, struct wf_expr **out, json_t **error)
{
        struct wf_expr_error err = {0};
        int r;

        if (error)
                *error = NULL;
        r = wf_expr_parse_n(src, strlen(src), false, NULL, out, &err);
        if (r == -EINVAL && error)
                *error = error_object(&err);
        wf_expr_error_clear(&err);
        return r;
}

const char *wf_expr_source(const struct wf_expr *e)
{
        return e->src;
}

/* ---- Evaluation ---- */

int wf_expr_truthy(const json_t *v)
{
        switch (json_typeof(v)) {
        case JSON_NULL:
        case JSON_FALSE:
                return 0;
        case JSON_TRUE:
                return 1;
        case JSON_INTEGER:
                return json_integer_value(v) != 0;
        case JSON_REAL:
                return json_real_value(v) != 0.0;
        case JSON_STRING:
                return json_string_length(v) != 0;
        case JSON_ARRAY:
                return json_array_size(v) != 0;
        case JSON_OBJECT:
                return json_object_size(v) != 0;
        }
        return 0;
}

static const char *type_name(const json_t *v)
{
        switch (json_typeof(v)) {
        case JSON_NULL:
                return "null";
        case JSON_TRUE:
        case JSON_FALSE:
                return "boolean";
        case JSON_INTEGER:
        case JSON_REAL:
                return "number";
        case JSON_STRING:
                return "string";
        case JSON_ARRAY:
                return "array";
        case JSON_OBJECT:
                return "object";
        }
        return "value";
}

static char *format_real(double d)
{
        char tmp[64];

        if (d > -1e15 && d < 1e15 && d == (double)(long long)d) {
                snprintf(tmp, sizeof(tmp), "%.0f", d);
                return strdup(tmp);
        }
        snprintf(tmp, sizeof(tmp), "%.15g", d);
        if (strtod(tmp, NULL) != d)
                snprintf(tmp, sizeof(tmp), "%.17g", d);
        return strdup(tmp);
}

char *wf_expr_to_text(const json_t *v)
{
        switch (json_typeof(v)) {
        case JSON_NULL:
                return strdup("");
        case JSON_TRUE:
                return strdup("true");
        case JSON_FALSE:
                return strdup("false");
        case JSON_INTEGER:
                return str_printf("%lld", (long long)json_integer_value(v));
        case JSON_REAL:
                return format_real(json_real_value(v));
        case JSON_STRING:
                return strndup(json_string_value(v), json_string_length(v));
        case JSON_ARRAY:
        case JSON_OBJECT:
                return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        }
        return NULL;
}

static bool is_number(const json_t *v)
{
        return json_is_integer(v) || json_is_real(v);
}

static int compare_values(const json_t *a, const json_t *b, bool *equal)
{
        if (is_number(a) && is_number(b)) {
                if (json_is_integer(a) && json_is_integer(b))
                        *equal = json_integer_value(a) == json_integer_value(b);
                else
                        *equal = json_number_value(a) == json_number_value(b);
                return 0;
        }
        *equal = json_equal((json_t *)a, (json_t *)b);
        return 0;
}

struct eval {
        const struct wf_expr *e;
        const struct wf_scope *scope;
        struct wf_expr_error *err;
};

static json_t *eval_node(struct eval *ev, int i);

static json_t *fail_at(struct eval *ev, const struct enode *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static json_t *fail_at(struct eval *ev, const struct enode *n, const char *fmt, ...)
{
        va_list ap;
        char *m = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (ev->err && !ev->err->message) {
                ev->err->message = m;
                ev->err->column = n->column;
        } else {
                free(m);
        }
        return NULL;
}

static json_t *oom(struct eval *ev, const struct enode *n)
{
        return fail_at(ev, n, "out of memory");
}

static const json_t *scope_lookup(const struct wf_scope *s, const char *name)
{
        if (!s)
                return NULL;
        if (!strcmp(name, "input"))
                return s->input;
        if (!strcmp(name, "nodes"))
                return s->nodes;
        if (!strcmp(name, "run"))
                return s->run;
        if (!strcmp(name, "item"))
                return s->item;
        if (!strcmp(name, "index"))
                return s->index;
        if (!strcmp(name, "iteration"))
                return s->iteration;
        if (!strcmp(name, "last"))
                return s->last;
        if (!strcmp(name, "secrets"))
                return s->secrets;
        return NULL;
}

static json_t *eval_arith(struct eval *ev, const struct enode *n, json_t *a, json_t *b)
{
        int op = n->op;

        if (op == TOK_PLUS && json_is_string(a) && json_is_string(b)) {
                size_t la = json_string_length(a), lb = json_string_length(b);
                if (la + lb > WF_EXPR_MAX_STRING)
                        return fail_at(ev, n, "string too long (limit %d bytes)",
                                       WF_EXPR_MAX_STRING);
                char *s = malloc(la + lb + 1);
                if (!s)
                        return oom(ev, n);
                memcpy(s, json_string_value(a), la);
                memcpy(s + la, json_string_value(b), lb);
                json_t *r = json_stringn_nocheck(s, la + lb);
                free(s);
                return r ? r : oom(ev, n);
        }
        if (!is_number(a) || !is_number(b)) {
                if (op == TOK_PLUS && (json_is_string(a) || json_is_string(b)))
                        return fail_at(ev, n,
                                       "cannot add %s and %s; convert with string() to "
                                       "concatenate",
                                       type_name(a), type_name(b));
                return fail_at(ev, n, "cannot apply %s to %s and %s", tok_name(op), type_name(a),
                               type_name(b));
        }
        if (json_is_integer(a) && json_is_integer(b)) {
                json_int_t x = json_integer_value(a), y = json_integer_value(b), r;
                long long rr;
                switch (op) {
                case TOK_PLUS:
                        if (__builtin_add_overflow((long long)x, (long long)y, &rr))
                                goto as_real;
                        return json_integer(rr);
                case TOK_MINUS:
                        if (__builtin_sub_overflow((long long)x, (long long)y, &rr))
                                goto as_real;
                        return json_integer(rr);
                case TOK_STAR:
                        if (__builtin_mul_overflow((long long)x, (long long)y, &rr))
                                goto as_real;
                        return json_integer(rr);
                case TOK_SLASH:
                        if (y == 0)
                                return fail_at(ev, n, "division by zero");
                        if (y == -1 && x == INT64_MIN)
                                goto as_real;
                        if (x % y == 0)
                                return json_integer(x / y);
                        goto as_real;
                case TOK_PERCENT:
                        if (y == 0)
                                return fail_at(ev, n, "division by zero");
                        if (y == -1)
                                return json_integer(0);
                        r = x % y;
                        return json_integer(r);
                }
        }
as_real : {
        double x = json_number_value(a), y = json_number_value(b), r = 0;
        switch (op) {
        case TOK_PLUS:
                r = x + y;
                break;
        case TOK_MINUS:
                r = x - y;
                break;
        case TOK_STAR:
                r = x * y;
                break;
        case TOK_SLASH:
                if (y == 0)
                        return fail_at(ev, n, "division by zero");
                r = x / y;
                break;
        case TOK_PERCENT:
                return fail_at(ev, n, "%% needs two integers");
        }
        if (!isfinite(r))
                return fail_at(ev, n, "number out of range");
        return json_real(r);
}
}

static json_t *eval_binary(struct eval *ev, const struct enode *n)
{
        _cleanup_json_ json_t *a = eval_node(ev, n->a);
        if (!a)
                return NULL;
        _cleanup_json_ json_t *b = eval_node(ev, n->b);
        if (!b)
                return NULL;
        bool eq;

        switch (n->op) {
        case TOK_EQ:
        case TOK_NE:
                compare_values(a, b, &eq);
                return json_boolean(n->op == TOK_EQ ? eq : !eq);
        case TOK_LT:
        case TOK_LE:
        case TOK_GT:
        case TOK_GE: {
                int c;
                if (is_number(a) && is_number(b)) {
                        if (json_is_integer(a) && json_is_integer(b)) {
                                json_int_t x = json_integer_value(a), y = json_integer_value(b);
                                c = x < y ? -1 : x > y;
                        } else {
                                double x = json_number_value(a), y = json_number_value(b);
                                c = x < y ? -1 : x > y;
                        }
                } else if (json_is_string(a) && json_is_string(b)) {
                        c = strcmp(json_string_value(a), json_string_value(b));
                } else {
                        return fail_at(ev, n,
                                       "cannot compare %s with %s; both sides must be "
                                       "numbers or both strings",
                                       type_name(a), type_name(b));
                }
                bool r = n->op == TOK_LT   ? c < 0
                         : n->op == TOK_LE ? c <= 0
                         : n->op == TOK_GT ? c > 0
                                           : c >= 0;
                return json_boolean(r);
        }
        default:
                return eval_arith(ev, n, a, b);
        }
}

static size_t utf8_length(const char *s, size_t n)
{
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
                if (((unsigned char)s[i] & 0xC0) != 0x80)
                        count++;
        return count;
}

static json_t *eval_call(struct eval *ev, const struct enode *n)
{
        _cleanup_json_ json_t *a = eval_node(ev, n->a);
        if (!a)
                return NULL;

        switch ((enum func)n->op) {
        case F_LEN:
                if (json_is_string(a))
                        return json_integer(
                            (json_int_t)utf8_length(json_string_value(a), json_string_length(a)));
                if (json_is_array(a))
                        return json_integer((json_int_t)json_array_size(a));
                if (json_is_object(a))
                        return json_integer((json_int_t)json_object_size(a));
                if (json_is_null(a))
                        return json_integer(0);
                return fail_at(ev, n, "len() needs a string, array or object, not a %s",
                               type_name(a));
        case F_DEFAULT:
                if (!json_is_null(a))
                        return TAKE_PTR(a);
                return eval_node(ev, n->b);
        case F_STRING: {
                if (json_is_string(a))
                        return TAKE_PTR(a);
                _cleanup_free_ char *s = wf_expr_to_text(a);
                if (!s)
                        return oom(ev, n);
                if (strlen(s) > WF_EXPR_MAX_STRING)
                        return fail_at(ev, n, "string too long (limit %d bytes)",
                                       WF_EXPR_MAX_STRING);
                json_t *r = json_string_nocheck(s);
                return r ? r : oom(ev, n);
        }
        case F_JSON: {
                json_error_t jerr;
                if (!json_is_string(a))
                        return fail_at(ev, n, "json() needs a string of JSON text, not a %s",
                                       type_name(a));
                json_t *r = json_loadb(json_string_value(a), json_string_length(a),
                                       JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
                if (!r)
                        return fail_at(ev, n, "json() could not parse its argument: %s", jerr.text);
                return r;
        }
        }
        return fail_at(ev, n, "unknown function");
}

static json_t *eval_node(struct eval *ev, int i)
{
        const struct enode *n = &ev->e->nodes[i];

        switch (n->kind) {
        case N_LITERAL:
                return json_incref(n->value);
        case N_NAME: {
                const json_t *v = scope_lookup(ev->scope, n->name);
                return v ? json_incref((json_t *)v) : json_null();
        }
        case N_MEMBER: {
                _cleanup_json_ json_t *o = eval_node(ev, n->a);
                if (!o)
                        return NULL;
                json_t *v = json_is_object(o) ? json_object_get(o, n->name) : NULL;
                return v ? json_incref(v) : json_null();
        }
        case N_INDEX: {
                _cleanup_json_ json_t *o = eval_node(ev, n->a);
                if (!o)
                        return NULL;
                _cleanup_json_ json_t *k = eval_node(ev, n->b);
                if (!k)
                        return NULL;
                json_t *v = NULL;
                if (json_is_object(o) && json_is_string(k))
                        v = json_object_get(o, json_string_value(k));
                else if (json_is_array(o) && json_is_integer(k) && json_integer_value(k) >= 0)
                        v = json_array_get(o, (size_t)json_integer_value(k));
                else if ((json_is_object(o) || json_is_array(o)) && !json_is_string(k) &&
                         !json_is_integer(k))
                        return fail_at(ev, n,
                                       "cannot index with a %s; use a string key or an "
                                       "integer index",
                                       type_name(k));
                return v ? json_incref(v) : json_null();
        }
        case N_CALL:
                return eval_call(ev, n);
        case N_NOT: {
                _cleanup_json_ json_t *a = eval_node(ev, n->a);
                if (!a)
                        return NULL;
                return json_boolean(!wf_expr_truthy(a));
        }
        case N_NEG: {
                _cleanup_json_ json_t *a = eval_node(ev, n->a);
                if (!a)
                        return NULL;
                if (json_is_integer(a) && json_integer_value(a) != INT64_MIN)
                        return json_integer(-json_integer_value(a));
                if (is_number(a))
                        return json_real(-json_number_value(a));
                return fail_at(ev, n, "cannot negate a %s", type_name(a));
        }
        case N_AND:
        case N_OR: {
                _cleanup_json_ json_t *a = eval_node(ev, n->a);
                if (!a)
                        return NULL;
                bool t = wf_expr_truthy(a);
                if (n->kind == N_AND && !t)
                        return json_false();
                if (n->kind == N_OR && t)
                        return json_true();
                _cleanup_json_ json_t *b = eval_node(ev, n->b);
                if (!b)
                        return NULL;
                return json_boolean(wf_expr_truthy(b));
        }
        case N_BINARY:
                return eval_binary(ev, n);
        }
        return fail_at(ev, n, "unknown expression node");
}

int wf_expr_eval_scope(const struct wf_expr *e, const struct wf_scope *scope, json_t **out,
                       struct wf_expr_error *err)
{
        struct wf_expr_error local = {0};
        struct eval ev = {.e = e, .scope = scope, .err = err ? err : &local};
        json_t *v = eval_node(&ev, e->root);

        *out = v;
        if (v) {
                wf_expr_error_clear(&local);
                return 0;
        }
        if (!ev.err->message) {
                wf_expr_error_clear(&local);
                return -ENOMEM;
        }
        if (ev.err->message && !strcmp(ev.err->message, "out of memory")) {
                wf_expr_error_clear(&local);
                return -ENOMEM;
        }
        wf_expr_error_clear(&local);
        return -EINVAL;
}

static void scope_from_json(const json_t *scope, struct wf_scope *s)
{
        *s = (struct wf_scope){0};
        if (!json_is_object(scope))
                return;
        s->input = json_object_get(scope, "input");
        s->nodes = json_object_get(scope, "nodes");
        s->run = json_object_get(scope, "run");
        s->item = json_object_get(scope, "item");
        s->index = json_object_get(scope, "index");
        s->iteration = json_object_get(scope, "iteration");
        s->last = json_object_get(scope, "last");
}

int wf_expr_eval(const struct wf_expr *e, const json_t *scope, json_t **out, json_t **error)
{
        struct wf_expr_error err = {0};
        struct wf_scope s;
        int r;

        if (error)
                *error = NULL;
        scope_from_json(scope, &s);
        r = wf_expr_eval_scope(e, &s, out, &err);
        if (r == -EINVAL && error)
                *error = error_object(&err);
        wf_expr_error_clear(&err);
        return r;
}

int wf_expr_walk_refs(const struct wf_expr *e, wf_expr_ref_cb cb, void *userdata)
{
        for (size_t i = 0; i < e->n_nodes; i++) {
                const struct enode *n = &e->nodes[i];
                int r;

                if (n->kind != N_NAME)
                        continue;
                if (strcmp(n->name, "nodes") != 0 && strcmp(n->name, "secrets") != 0) {
                        r = cb(userdata, n->name, NULL, n->column);
                        if (r < 0)
                                return r;
                        continue;
                }
                /* find the member or index applied directly to this name */
                const char *id = NULL;
                for (size_t j = i + 1; j < e->n_nodes; j++) {
                        const struct enode *m = &e->nodes[j];
                        if (m->a != (int)i || (m->kind != N_MEMBER && m->kind != N_INDEX))
                                continue;
                        if (m->kind == N_MEMBER)
                                id = m->name;
                        else if (e->nodes[m->b].kind == N_LITERAL &&
                                 json_is_string(e->nodes[m->b].value))
                                id = json_string_value(e->nodes[m->b].value);
                        break;
                }
                r = cb(userdata, n->name, id, n->column);
                if (r < 0)
                        return r;
        }
        return 0;
}
