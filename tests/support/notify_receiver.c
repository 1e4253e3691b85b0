/* The notification tests' receivers and dispatchers (notify_receiver.h). */
#include "notify_receiver.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

static void receiver_start(struct notify_receiver *r, const char *secret, const char *dir,
                           const char *credentials)
{
        int out[2];
        char line[128] = "";
        const char *argv[8] = {"python3", AGENTLY_SOURCE_DIR "/tests/support/notify_receiver.py"};
        int n = 2;
        FILE *f;

        if (secret) {
                argv[n++] = "--secret";
                argv[n++] = secret;
        }
        if (dir) {
                argv[n++] = "--tls";
                argv[n++] = dir;
                argv[n++] = "--auth";
                argv[n++] = credentials;
        }

        memset(r, 0, sizeof(*r));
        assert_int_equal(pipe(out), 0);
        r->pid = fork();
        assert_int_ge(r->pid, 0);
        if (r->pid == 0) {
                dup2(out[1], 1);
                close(out[0]);
                /* never outlive the test (a failed assertion skips its teardown) */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setpgid(0, 0);
                execv("/usr/bin/python3", (char *const *)argv);
                _exit(127);
        }
        close(out[1]);
        f = fdopen(out[0], "r");
        assert_non_null(f);
        assert_non_null(fgets(line, sizeof(line), f));
        fclose(f);
        if (dir) {
                assert_int_equal(sscanf(line, "ready %d %d %d %d", &r->http_port, &r->smtp_port,
                                        &r->login_port, &r->plain_port),
                                 4);
                snprintf(r->ca_file, sizeof(r->ca_file), "%s/ca.pem", dir);
        } else {
                assert_int_equal(sscanf(line, "ready %d %d", &r->http_port, &r->smtp_port), 2);
        }
        snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%d", r->http_port);
}

void notify_receiver_start(struct notify_receiver *r, const char *secret)
{
        receiver_start(r, secret, NULL, NULL);
}

void notify_receiver_start_tls(struct notify_receiver *r, const char *dir, const char *credentials)
{
        receiver_start(r, NULL, dir, credentials);
}

void notify_receiver_stop(struct notify_receiver *r)
{
        if (r->pid > 0)
                test_stop_process(r->pid, SIGTERM, 5000);
        r->pid = 0;
}

json_t *notify_receiver_state(const struct notify_receiver *r)
{
        char url[96];
        char *body = NULL;
        json_t *state;

        snprintf(url, sizeof(url), "%s/state", r->url);
        assert_int_equal(test_http("GET", url, NULL, NULL, &body), 200);
        state = json_loads(body, 0, NULL);
        free(body);
        assert_non_null(state);
        return state;
}

pid_t notify_spawn_dispatcher(const char *owner_conninfo, const struct notify_receiver *r,
                              const char *id, const char *const *extra, const char *log_path)
{
        return notify_spawn_dispatcher_env(owner_conninfo, r, id, extra, NULL, log_path);
}

pid_t notify_spawn_dispatcher_env(const char *owner_conninfo, const struct notify_receiver *r,
                                  const char *id, const char *const *extra,
                                  const char *const *more_env, const char *log_path)
{
        const char *args[32] = {"dispatch", "--id", id, "--poll", "100ms"};
        int n = 5, e = 5;
        char env_url[1024], env_smtp[96];
        const char *env[32] = {env_url,
                               env_smtp,
                               "AGENTLY_SMTP_FROM=agently@example.test",
                               "AGENTLY_SMTP_TLS=none",
                               "AGENTLY_PUBLIC_URL=https://agently.example.test",
                               NULL};
        pid_t pid;

        for (int i = 0; more_env && more_env[i] && e < 31; i++)
                env[e++] = more_env[i];
        env[e] = NULL;
        for (int i = 0; extra && extra[i] && n < 30; i++)
                args[n++] = extra[i];
        args[n] = NULL;
        snprintf(env_url, sizeof(env_url), "AGENTLY_DATABASE_URL=%s", owner_conninfo);
        snprintf(env_smtp, sizeof(env_smtp), "AGENTLY_SMTP_URL=smtp://127.0.0.1:%d", r->smtp_port);
        pid = test_spawn_agently(args, env, log_path);
        assert_int_gt(pid, 0);
        return pid;
}
