/*
 * The route table of the API: every (method, path pattern) the server answers, with its
 * handler and what it requires. docs/openapi.json must list exactly these; the test
 * tests/integration/test_api_openapi.c compares the two.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct api_request;
struct api_response;

enum api_route_flags {
        API_ROUTE_PUBLIC = 1 << 0,     /* no token (healthz, readyz, metrics) */
        API_ROUTE_IDEMPOTENT = 1 << 1, /* honours Idempotency-Key */
        API_ROUTE_NO_DB = 1 << 2,      /* handler manages the database itself */
        API_ROUTE_STREAM = 1 << 3,     /* server-sent events */
};

struct api_route {
        const char *method;
        const char *pattern; /* "/v1/runs/{id}": {x} matches one non-empty segment */
        unsigned (*handler)(struct api_request *req, struct api_response *resp);
        unsigned flags;
};

extern const struct api_route api_routes[];
extern const size_t api_routes_count;

/*
 * Finds the route for method and path. Returns its index and fills params (up to max,
 * malloc'd copies owned by *storage, decoded) for a match; -1 when no pattern matches the
 * path (404); -2 when the path matches but not the method (405), with *allow set to a
 * static "GET, POST" style list.
 */
int api_route_match(const char *method, const char *path, const char **params, size_t max,
                    char **storage, const char **allow);

/* The statement GET /v1/runs/{id} reads a run with ($1: its id); items: whether its `nodes`
 * hold map items (?items=false: not). Also for the tests that look at its plan. */
const char *api_run_read_sql(bool items);
