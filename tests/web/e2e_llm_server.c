/*
 * The scripted LLM server of tests/integration (llm_server.h) as a process, for the browser
 * tests (web/e2e): `agently up` runs its agents against it. It prints its base URL on the
 * first line of stdout, then reads commands from stdin, one a line, and answers each with
 * one line:
 *   a JSON array        appends those steps to the script (llm_server_script)  -> "ok"
 *   count               requests received so far                             -> "N"
 *   left                steps not yet used                                   -> "N"
 * It stops at the end of stdin (the test closes it, or dies).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_server.h"

int main(void)
{
        struct llm_server *s = llm_server_start();
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;

        printf("%s\n", llm_server_url(s));
        fflush(stdout);
        while ((n = getline(&line, &cap, stdin)) > 0) {
                while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                        line[--n] = '\0';
                if (n == 0)
                        continue;
                if (!strcmp(line, "count"))
                        printf("%d\n", llm_server_request_count(s));
                else if (!strcmp(line, "left"))
                        printf("%d\n", llm_server_steps_left(s));
                else {
                        llm_server_script(s, line);
                        printf("ok\n");
                }
                fflush(stdout);
        }
        free(line);
        llm_server_stop(s);
        return 0;
}
