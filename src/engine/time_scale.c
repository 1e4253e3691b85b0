/*
 * The run-level time scale: the one home of how a run's waits shrink for a dry run. A run
 * started with time_scale s waits d / s for every duration d its workflow names (sleep,
 * wait_event, subworkflow and workflow timeouts, retry back-off, approval deadlines and
 * escalation steps); the planner and the failure policy call wf_time_scaled_ms() wherever
 * they turn a duration into a due time, and nowhere else is a duration scaled. The scale
 * is recorded with the run (migrations/0023_time_scale.sql, whose CHECK holds the same
 * range as a backstop) and reaches the planner in the snapshot.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>

static bool scale_valid(double s)
{
        return isfinite(s) && s >= WF_TIME_SCALE_MIN && s <= WF_TIME_SCALE_MAX;
}

int wf_time_scale_check(const json_t *value, double *scale, char *msg, size_t len)
{
        double s = json_is_number(value) ? json_number_value(value) : 0;

        if (!json_is_number(value) || !scale_valid(s)) {
                snprintf(msg, len,
                         "time_scale must be a number from 0.001 to 1000000 (every wait of the "
                         "run is divided by it: 86400 makes a day a second)");
                return -EINVAL;
        }
        *scale = s;
        return 0;
}

int64_t wf_time_scaled_ms(int64_t ms, double scale)
{
        if (scale == 1.0 || !scale_valid(scale) || ms <= 0)
                return ms;
        /* rounded up without libm's ceil: the quotient, plus one if it fell short */
        double q = (double)ms / scale;
        int64_t r = (int64_t)q;
        if ((double)r < q)
                r++;
        return r < 1 ? 1 : r;
}

double wf_snapshot_time_scale(const json_t *snapshot)
{
        const json_t *v = json_object_get(snapshot, "time_scale");
        double s = json_is_number(v) ? json_number_value(v) : 1.0;

        return scale_valid(s) ? s : 1.0;
}

int64_t wf_run_deadline_ms(const struct wf_workflow *wf, const json_t *snapshot)
{
        const json_t *started = json_object_get(snapshot, "started_at_ms");
        int64_t timeout = wf ? wf_timeout_ms(wf) : 0;

        if (timeout <= 0 || !json_is_integer(started))
                return -1;
        return json_integer_value(started) +
               wf_time_scaled_ms(timeout, wf_snapshot_time_scale(snapshot));
}
