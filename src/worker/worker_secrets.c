/* The worker's use of secrets: put the values into the request that leaves. */
#include "worker_secrets.h"

#include <errno.h>
#include <stddef.h>

int worker_secrets_request(PGconn *db, const struct secrets_kms *kms, const char *user_id,
                           const json_t *action, json_t **out, char **error)
{
        const json_t *names = json_object_get(action, "secrets");

        *out = NULL;
        if (json_array_size(names) == 0)
                return 0;
        return secrets_expand_json(db, kms, user_id, json_object_get(action, "input"), names, out,
                                   error);
}
