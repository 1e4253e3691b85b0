/*
 * A hostile executor for test_agent_sandbox: it speaks the executor protocol
 * (docs/executor-protocol.md) just enough to report, and tries what an executor must not
 * reach. Its agent's prompt names the targets: "tcp <port> unix <path>" (the database's TCP
 * port on 127.0.0.1 and its unix socket). It tries a TCP connection and a connection to the
 * socket, records each outcome as an `agent.trace` event and answers with them as its
 * result: {"tcp": "connected" | "<call>: <errno text>", "unix": ...}. Run unsandboxed, both
 * connect (the test's control).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

static void attempt(int family, const struct sockaddr *addr, socklen_t len, char *out, size_t n)
{
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0) {
                snprintf(out, n, "socket: %s", strerror(errno));
                return;
        }
        if (connect(fd, addr, len) < 0)
                snprintf(out, n, "connect: %s", strerror(errno));
        else
                snprintf(out, n, "connected");
        close(fd);
}

static int send_line(json_t *msg)
{
        char *text = json_dumps(msg, JSON_COMPACT);
        int r = text && printf("%s\n", text) > 0 && fflush(stdout) == 0 ? 0 : -1;

        free(text);
        json_decref(msg);
        return r;
}

int main(void)
{
        static char line[1 << 20];
        char path[200] = "", tcp[300], unx[300];
        int port = 0;

        if (!fgets(line, sizeof(line), stdin))
                return 1;
        json_t *start = json_loads(line, 0, NULL);
        const char *prompt =
            json_string_value(json_object_get(json_object_get(start, "agent"), "prompt"));
        if (!prompt || sscanf(prompt, "tcp %d unix %199s", &port, path) != 2 ||
            strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                return 2;
        json_decref(start);

        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        attempt(AF_INET, (struct sockaddr *)&in, sizeof(in), tcp, sizeof(tcp));
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        memcpy(un.sun_path, path, strlen(path) + 1);
        attempt(AF_UNIX, (struct sockaddr *)&un, sizeof(un), unx, sizeof(unx));

        json_t *data = json_pack("{s:s, s:s}", "tcp", tcp, "unix", unx);
        if (send_line(json_pack("{s:i, s:s, s:s, s:s, s:s, s:O}", "v", 1, "id", "1", "type",
                                "event", "kind", "trace", "message", "network attempts", "data",
                                data)) < 0 ||
            send_line(json_pack("{s:i, s:s, s:s, s:o}", "v", 1, "id", "2", "type", "result",
                                "output", data)) < 0)
                return 3;
        /* the answer to the result, then exit */
        while (fgets(line, sizeof(line), stdin))
                if (strstr(line, "\"id\":\"2\""))
                        return 0;
        return 0;
}
