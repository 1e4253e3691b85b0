/*
 * Durations as users write them in workflow definitions and flags: "250ms", "2s", "5m",
 * "3h", "2d", "1w", or combinations such as "1h30m". Plain integers are seconds.
 */
#pragma once

#include <stdint.h>

/* Limit: 10 years, so arithmetic on timestamps never overflows. */
#define DURATION_MAX_MS (INT64_C(10) * 366 * 24 * 3600 * 1000)

/* Parses s into milliseconds; -EINVAL with no partial result on anything malformed,
 * -ERANGE when longer than DURATION_MAX_MS. */
int duration_parse_ms(const char *s, int64_t *out_ms);

/* Formats ms compactly ("1h30m", "250ms", "0s") into out. */
void duration_format(int64_t ms, char *out, unsigned size);
