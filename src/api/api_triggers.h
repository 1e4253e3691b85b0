/*
 * Cron schedules and webhook triggers over the API (api_triggers.c): the handlers the route
 * table (api_routes.c) points at. docs/triggers.md describes them for users.
 */
#pragma once

struct api_request;
struct api_response;

unsigned api_schedules_create(struct api_request *req, struct api_response *resp);
unsigned api_schedules_list(struct api_request *req, struct api_response *resp);
unsigned api_schedules_get(struct api_request *req, struct api_response *resp);
unsigned api_schedules_update(struct api_request *req, struct api_response *resp);
unsigned api_schedules_delete(struct api_request *req, struct api_response *resp);
unsigned api_triggers_create(struct api_request *req, struct api_response *resp);
unsigned api_triggers_list(struct api_request *req, struct api_response *resp);
unsigned api_triggers_get(struct api_request *req, struct api_response *resp);
unsigned api_triggers_delete(struct api_request *req, struct api_response *resp);
/* POST /v1/hooks/{id}: public (the signature is the authentication); manages its own
 * transaction. */
unsigned api_hooks_deliver(struct api_request *req, struct api_response *resp);
