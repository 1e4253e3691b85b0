/*
 * The native executor: one agent's loop (prompt → LLM → tools → repeat until a final
 * answer, a finish call or a limit) speaking the executor protocol (docs/executor-protocol.md)
 * and nothing else — no database, no network, no secret, no clock. Every effect is a request
 * to the worker on `out`, every answer arrives on `in`; so the loop is deterministic given
 * its start message and its answers, which is what the worker's journal replay relies on.
 */
#pragma once

#include <stdio.h>

/* Longest protocol line either way (docs/executor-protocol.md, "Transport"). */
#define EXECUTOR_MAX_LINE (8 * 1024 * 1024)
/* LLM calls without a final answer when the start message gives no max_turns. */
#define EXECUTOR_DEFAULT_MAX_TURNS 50

/*
 * Runs one session: reads the start message from in, sends requests on out (flushed after
 * each line), reads their answers, and returns 0 once a result or error request has been
 * answered. Returns 1 when in ends or carries something the protocol does not allow (a
 * message on err says what); the worker then treats the session as broken.
 */
int executor_run(FILE *in, FILE *out, FILE *err);
