/*
 * `${ secrets.NAME }` in an http node: the request that leaves gets the values, the
 * record keeps the placeholders. See src/secrets/README.md ("Using secrets").
 */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>

#include "secrets.h"

/*
 * The request to hand to libcurl for an execute action of user_id's run: NULL in *out when
 * the action names no secret (send action.input as it is), else a new copy of
 * action.input whose "[secret:NAME]" placeholders of the names in action.secrets hold the
 * values (resolved over db now; the caller sends it and drops it at once). 0, or a
 * negative errno with *error (malloc'd) saying which secret and why.
 */
int worker_secrets_request(PGconn *db, const struct secrets_kms *kms, const char *user_id,
                           const json_t *action, json_t **out, char **error);
