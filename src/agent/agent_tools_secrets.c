/*
 * `${ secrets.NAME }` in a tool call's arguments (http_request's url, headers and body,
 * shell/run_code's env values). The model writes the reference; only the names the agent's
 * definition lists in "secrets" are allowed (a prompt injection cannot name another one);
 * the value is resolved through src/secrets at the moment the request leaves or the sandbox
 * starts, and only that copy holds it: the journal, the events and the hash keep the
 * reference as written, and everything stored passes the redaction choke point.
 */
#include "agent_internal.h"

#include <errno.h>
#include <string.h>
#include <sodium.h>

#include "cleanup.h"
#include "secrets.h"
#include "strutil.h"

#define NAME_MAX_LEN 63

static bool name_char(char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '.' || c == '-';
}

/*
 * At p (pointing at "${"): a secrets reference? 1 with name and *end after the "}", 0 when
 * it is not one (other text stays as it is), -EINVAL when it starts as one but is malformed.
 */
static int parse_ref(const char *p, char name[NAME_MAX_LEN + 1], const char **end)
{
        const char *q = p + 2;
        size_t n = 0;

        while (*q == ' ')
                q++;
        if (strncmp(q, "secrets.", 8) != 0)
                return 0;
        q += 8;
        while (name_char(q[n]) && n <= NAME_MAX_LEN)
                n++;
        if (n == 0 || n > NAME_MAX_LEN)
                return -EINVAL;
        memcpy(name, q, n);
        name[n] = '\0';
        q += n;
        while (*q == ' ')
                q++;
        if (*q != '}')
                return -EINVAL;
        *end = q + 1;
        return 1;
}

static bool allowed(const struct agent_session *s, const char *name)
{
        json_t *n;
        size_t i;

        json_array_foreach (json_object_get(s->agent, "secrets"), i, n)
                if (json_is_string(n) && !strcmp(json_string_value(n), name))
                        return true;
        return false;
}

static int check_text(const struct agent_session *s, const char *text, char **why)
{
        const char *p = text, *end;
        char name[NAME_MAX_LEN + 1];
        int n = 0, r;

        while ((p = strstr(p, "${"))) {
                r = parse_ref(p, name, &end);
                if (r < 0) {
                        *why = strdup("a secret is referenced as ${ secrets.NAME } with NAME "
                                      "1-63 characters of A-Z a-z 0-9 _ . -");
                        return r;
                }
                if (r == 0) {
                        p += 2;
                        continue;
                }
                if (!allowed(s, name)) {
                        *why = str_printf("the secret %s is not one of this agent's secrets (the "
                                          "agent's \"secrets\" list names those its tools may use)",
                                          name);
                        return -EPERM;
                }
                n++;
                p = end;
        }
        return n;
}

int agent_secrets_check(const struct agent_session *s, const json_t *v, char **why)
{
        const char *k;
        json_t *x;
        size_t i;
        int n = 0, r;

        *why = NULL;
        if (json_is_string(v))
                return check_text(s, json_string_value(v), why);
        if (json_is_object(v))
                json_object_foreach ((json_t *)v, k, x) {
                        if ((r = agent_secrets_check(s, x, why)) < 0)
                                return r;
                        n += r;
                }
        if (json_is_array(v))
                json_array_foreach (v, i, x) {
                        if ((r = agent_secrets_check(s, x, why)) < 0)
                                return r;
                        n += r;
                }
        return n;
}

static int expand_text(struct agent_session *s, struct secrets_kms *kms, const char *text,
                       json_t **out, char **error)
{
        _cleanup_buf_ struct buf b = {0};
        const char *p = text, *hit, *end;
        char name[NAME_MAX_LEN + 1];
        int r = 0;

        buf_init(&b, (size_t)16 << 20);
        while ((hit = strstr(p, "${"))) {
                if (parse_ref(hit, name, &end) != 1) {
                        if (buf_append(&b, p, (size_t)(hit - p) + 2) < 0)
                                r = -ENOMEM;
                        p = hit + 2;
                        if (r < 0)
                                break;
                        continue;
                }
                const char *value = NULL;
                size_t len = 0;
                if (buf_append(&b, p, (size_t)(hit - p)) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = secrets_resolve(s->host->cfg.db, kms, s->user_id, name, &value, &len, error);
                if (r < 0)
                        break;
                if (buf_append(&b, value, len) < 0) {
                        r = -ENOMEM;
                        break;
                }
                p = end;
        }
        if (r == 0 && buf_append_str(&b, p) < 0)
                r = -ENOMEM;
        if (r == 0 && !(*out = json_stringn(b.data ? b.data : "", b.len)))
                r = -ENOMEM;
        if (b.data)
                sodium_memzero(b.data, b.len);
        return r;
}

static int expand(struct agent_session *s, struct secrets_kms *kms, const json_t *v, json_t **out,
                  char **error)
{
        const char *k;
        json_t *x, *c;
        size_t i;
        int r;

        *out = NULL;
        if (json_is_string(v))
                return expand_text(s, kms, json_string_value(v), out, error);
        if (!json_is_object(v) && !json_is_array(v))
                return (*out = json_deep_copy(v)) ? 0 : -ENOMEM;
        *out = json_is_object(v) ? json_object() : json_array();
        if (!*out)
                return -ENOMEM;
        if (json_is_object(v))
                json_object_foreach ((json_t *)v, k, x) {
                        if ((r = expand(s, kms, x, &c, error)) < 0 ||
                            (r = json_object_set_new(*out, k, c) < 0 ? -ENOMEM : 0) < 0)
                                goto fail;
                }
        else
                json_array_foreach (v, i, x) {
                        if ((r = expand(s, kms, x, &c, error)) < 0 ||
                            (r = json_array_append_new(*out, c) < 0 ? -ENOMEM : 0) < 0)
                                goto fail;
                }
        return 0;
fail:
        json_decref(*out);
        *out = NULL;
        return r;
}

int agent_secrets_expand(struct agent_session *s, const json_t *v, json_t **out, char **error)
{
        struct secrets_kms kms;
        int r;

        *out = NULL;
        if (secrets_kms_init(&kms, s->host->cfg.secrets_dir) < 0)
                return -ENOMEM;
        r = expand(s, &kms, v, out, error);
        secrets_kms_release(&kms);
        if (r == -ENOENT && error && *error) {
                char *m = str_printf("%s (the agent's secrets must be stored secrets of its user)",
                                     *error);
                if (m) {
                        free(*error);
                        *error = m;
                }
        }
        return r;
}

char *agent_secrets_hint(const struct agent_session *s, const char *where)
{
        const json_t *names = json_object_get(s->agent, "secrets");
        _cleanup_buf_ struct buf b = {0};
        json_t *n;
        size_t i;

        if (json_array_size(names) == 0)
                return NULL;
        buf_init(&b, 4096);
        if (buf_printf(&b,
                       "Secrets are written ${ secrets.NAME } %s (the value is put in when "
                       "the call runs; you never see it); NAME is one of:",
                       where) < 0)
                return NULL;
        json_array_foreach (names, i, n)
                if (json_is_string(n) &&
                    buf_printf(&b, "%s %s", i ? "," : "", json_string_value(n)) < 0)
                        return NULL;
        if (buf_append_str(&b, ".") < 0)
                return NULL;
        return buf_steal(&b);
}
