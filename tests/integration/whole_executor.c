/*
 * The native executor (src/executor) as an executor written before the protocol's optional
 * features: it reads the start message, removes its "features", and runs executor_run on
 * that and the rest of its stdin — so it sends every llm request with the whole message
 * list (test_agent_deltas: a journal written this way replays under the native executor's
 * deltas, and the other way round). Started by a worker with `--executor`, in its sandbox.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "executor.h"

struct input {
        char *first; /* the start message as the executor reads it */
        size_t len, pos;
};

static ssize_t input_read(void *cookie, char *buf, size_t size)
{
        struct input *in = cookie;

        if (in->pos < in->len) {
                size_t n = in->len - in->pos < size ? in->len - in->pos : size;
                memcpy(buf, in->first + in->pos, n);
                in->pos += n;
                return (ssize_t)n;
        }
        for (;;) {
                ssize_t n = read(STDIN_FILENO, buf, size);
                if (n >= 0 || errno != EINTR)
                        return n;
        }
}

int main(void)
{
        static char line[1 << 20];
        size_t len = 0;
        struct input in = {0};

        /* the first line byte by byte: nothing after it may be read here */
        while (len + 1 < sizeof(line)) {
                ssize_t n = read(STDIN_FILENO, line + len, 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return 1;
                if (line[len++] == '\n')
                        break;
        }
        json_t *start = json_loadb(line, len, 0, NULL);
        if (!start)
                return 1;
        json_object_del(start, "features");
        char *text = json_dumps(start, JSON_COMPACT);
        json_decref(start);
        if (!text || !(in.first = malloc(strlen(text) + 2)))
                return 1;
        in.len = (size_t)snprintf(in.first, strlen(text) + 2, "%s\n", text);
        free(text);
        FILE *f = fopencookie(&in, "r", (cookie_io_functions_t){.read = input_read});
        if (!f)
                return 1;
        int r = executor_run(f, stdout, stderr);
        fclose(f);
        free(in.first);
        return r == 0 ? 0 : 1;
}
