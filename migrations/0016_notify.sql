-- 0016_notify.sql — the notification outbox, per-workflow subscriptions, cron schedules and
-- webhook triggers (issue 13, items 5 and 6). src/notify/README.md tells the whole story.
--
--   * agently_notify_enqueue() is THE way a notification is written: approvals, the
--     subscriptions below and the notify node all call it, inside the transaction of the
--     change that causes it (a transactional outbox: the row exists if and only if the
--     change committed). Its id travels with every delivery (webhook-id, Message-ID,
--     X-Agently-Notification-Id), so a receiver that deduplicates never sees one twice.
--   * agently_notify_claim() / agently_notify_finish(): the dispatcher's side. A claim locks
--     due rows with SKIP LOCKED and leases them (status 'sending', next_attempt_at = now() +
--     lease), so any number of dispatchers never deliver one at the same time; a dispatcher
--     killed mid-delivery leaves a lease that expires and another takes the row over (the
--     same id again). Every attempt is a row of notification_attempts. The finish is fenced
--     on the attempt number: a dispatcher whose lease was taken over changes nothing but its
--     own attempt row.
--   * Subscriptions: a workflow definition's "notifications" list ([{"on": [...],
--     "channel": {...}}], validated by the engine) is read by triggers that sit beside the
--     run status rules of 0009: a run reaching completed, failed or needs_input, and an
--     approval being requested, enqueue one notification per matching subscription in the
--     same transaction. Writers of statuses do nothing more.
--   * Schedules: schedule_ticks has one row per (schedule, tick) a dispatcher fired; its
--     primary key is what makes two dispatchers unable to fire one tick twice.
--     agently_schedule_fire() records the tick, starts the run and moves next_run_at, in the
--     dispatcher's transaction. Next fire times are computed by src/base/cron.c in the
--     schedule's local wall-clock time and turned into instants by Postgres' time-zone rules
--     (agently_schedule_local_to_instant).
--   * Webhook triggers keep their signing secret sealed by the vault (the API must compute
--     the Standard Webhooks HMAC, so a hash is not enough); agently_webhook_trigger() gives
--     the API the sealed secret of one trigger before it knows the user.
--   * agently_start_run(): a run of a workflow's newest version, idempotent on a key — what
--     a schedule tick and a webhook delivery start.

-- ---------------------------------------------------------------------------------------
-- Delivery attempts
-- ---------------------------------------------------------------------------------------

CREATE TABLE notification_attempts (
    notification_id  uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    dispatcher       text NOT NULL CHECK (char_length(dispatcher) BETWEEN 1 AND 200),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- started: in flight (or its dispatcher died: 'abandoned' once another takes over)
    outcome          text NOT NULL DEFAULT 'started'
                     CHECK (outcome IN ('started', 'sent', 'failed', 'abandoned')),
    status_code      integer,
    error            text CHECK (char_length(error) <= 10000),
    PRIMARY KEY (notification_id, attempt)
);
CREATE INDEX notification_attempts_user_idx ON notification_attempts (user_id, started_at DESC);

ALTER TABLE notification_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_api_tenant ON notification_attempts FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_worker_all ON notification_attempts FOR ALL TO agently_worker
    USING (true) WITH CHECK (true);
GRANT SELECT ON notification_attempts TO agently_api;
GRANT SELECT, INSERT, UPDATE ON notification_attempts TO agently_worker;

-- The kind of event a notification tells about ('run.completed', 'approval.requested',
-- 'notify', ...), for listings; the payload has the rest.
ALTER TABLE notifications ADD COLUMN event text NOT NULL DEFAULT 'notify'
    CHECK (char_length(event) BETWEEN 1 AND 100);

-- ---------------------------------------------------------------------------------------
-- Enqueue: the one writer of notification rows
-- ---------------------------------------------------------------------------------------
-- channel: {"kind": "email", "to": "a@example.com" | [...]}
--        | {"kind": "slack", "url": "https://hooks.slack.com/..."}
--        | {"kind": "webhook", "url": "https://...", "secret": "<vault secret name>"?}
-- message: {"event": "...", "title": "...", "text": "...", "run_id"?, "workflow"?,
--           "links": [{"label", "url"}]?, "data": {...}?} — rendered by src/notify.
-- dedupe_key (may be NULL; stored as idempotency_key): a caller that may run twice for one cause (a notify node
-- re-executed after a crash) passes a key and gets the first row's id back.
-- Returns the notification's id. SECURITY INVOKER: the API's row-level security applies.
CREATE FUNCTION agently_notify_enqueue(owner uuid, run_id uuid, channel jsonb, message jsonb,
                                       dedupe_key text)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    kind    text := channel->>'kind';
    target  text;
    new_id  uuid;
BEGIN
    IF jsonb_typeof(channel) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a notification channel must be an object with a kind'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kind = 'email' THEN
        IF jsonb_typeof(channel->'to') = 'array' THEN
            SELECT string_agg(x, ', ') INTO target
            FROM jsonb_array_elements_text(channel->'to') AS x;
        ELSE
            target := channel->>'to';
        END IF;
    ELSIF kind IN ('slack', 'webhook') THEN
        target := channel->>'url';
    ELSE
        RAISE EXCEPTION 'unknown notification channel kind %; use email, slack or webhook',
                        coalesce(quote_literal(kind), '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target IS NULL OR target = '' OR char_length(target) > 2000 THEN
        RAISE EXCEPTION 'a % channel needs %', kind,
                        CASE kind WHEN 'email' THEN 'a "to" address' ELSE 'a "url"' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO notifications (user_id, workflow_run_id, channel, target, payload,
                               idempotency_key, event)
    VALUES (owner, run_id, kind, target,
            coalesce(message, '{}') || jsonb_build_object('channel', channel),
            dedupe_key,
            left(coalesce(message->>'event', 'notify'), 100))
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT n.id INTO new_id
        FROM notifications n
        WHERE n.user_id = owner AND n.idempotency_key = dedupe_key;
    END IF;
    -- a hint for dispatchers that LISTEN; they poll anyway
    PERFORM pg_notify('agently_notifications', '');
    RETURN new_id;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Claim and finish: the dispatcher's two statements
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION agently_notify_claim(dispatcher text, lease interval, max_rows integer)
RETURNS TABLE (id uuid, user_id uuid, workflow_run_id uuid, channel text, target text,
               payload jsonb, attempt integer, created_at timestamptz)
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT n.id
        FROM notifications n
        WHERE n.status IN ('pending', 'sending')
          AND n.next_attempt_at <= now()
        ORDER BY n.next_attempt_at
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE notifications n
        SET status = 'sending', attempts = n.attempts + 1, next_attempt_at = now() + lease
        FROM due
        WHERE n.id = due.id
        RETURNING n.id, n.user_id, n.workflow_run_id, n.channel, n.target, n.payload,
                  n.attempts, n.created_at
    ), abandoned AS (
        UPDATE notification_attempts a
        SET outcome = 'abandoned', finished_at = now(),
            error = 'the delivery did not end within its lease (dispatcher stopped or killed)'
        FROM claimed c
        WHERE a.notification_id = c.id AND a.outcome = 'started'
    ), started AS (
        INSERT INTO notification_attempts (notification_id, attempt, user_id, dispatcher)
        SELECT c.id, c.attempts, c.user_id, agently_notify_claim.dispatcher
        FROM claimed c
    )
    SELECT c.id, c.user_id, c.workflow_run_id, c.channel, c.target, c.payload, c.attempts,
           c.created_at
    FROM claimed c
    ORDER BY c.id;
END;
$$;

-- The back-off before attempt n+1 after attempt n failed: 2 s, 4 s, 8 s ... at most 1 h,
-- with ±25 % jitter; a longer Retry-After wins.
CREATE FUNCTION agently_notify_backoff(attempt integer, retry_after_ms bigint)
RETURNS interval
LANGUAGE sql
VOLATILE
AS $$
SELECT greatest(
    least(interval '1 hour', interval '2 seconds' * power(2, least(attempt, 20) - 1))
        * (0.75 + random() * 0.5),
    coalesce(retry_after_ms, 0) * interval '1 millisecond')
$$;

-- Ends one attempt. ok: delivered. permanent: a failure that no retry can fix (a 4xx other
-- than 408/429, a bad channel). Returns what became of the notification: 'sent', 'retry',
-- 'failed', or NULL when this attempt is no longer the current one (its lease expired and
-- another dispatcher took the row over: only the attempt row is written).
CREATE FUNCTION agently_notify_finish(notification uuid, attempt integer, ok boolean,
                                      permanent boolean, status_code integer, error text,
                                      retry_after_ms bigint)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    n        notifications%ROWTYPE;
    max_n    integer;
    result   text;
BEGIN
    UPDATE notification_attempts a
    SET outcome = CASE WHEN ok THEN 'sent' ELSE 'failed' END, finished_at = now(),
        status_code = agently_notify_finish.status_code, error = left(agently_notify_finish.error, 10000)
    WHERE a.notification_id = notification AND a.attempt = agently_notify_finish.attempt;

    SELECT * INTO n FROM notifications x WHERE x.id = notification FOR UPDATE;
    IF NOT FOUND OR n.status <> 'sending' OR n.attempts <> agently_notify_finish.attempt THEN
        RETURN NULL;
    END IF;
    max_n := coalesce((n.payload->>'max_attempts')::integer, 10);
    IF ok THEN
        result := 'sent';
        UPDATE notifications x SET status = 'sent', sent_at = now(), last_error = NULL
        WHERE x.id = notification;
    ELSIF permanent OR n.attempts >= max_n THEN
        result := 'failed';
        UPDATE notifications x SET status = 'failed', last_error = left(agently_notify_finish.error, 10000)
        WHERE x.id = notification;
    ELSE
        result := 'retry';
        UPDATE notifications x
        SET status = 'pending', last_error = left(agently_notify_finish.error, 10000),
            next_attempt_at = now() + agently_notify_backoff(n.attempts, retry_after_ms)
        WHERE x.id = notification;
    END IF;
    IF n.workflow_run_id IS NOT NULL AND result <> 'retry' THEN
        PERFORM agently_append_event_unfenced(
            n.workflow_run_id, 'notification.' || result, NULL, NULL,
            CASE result WHEN 'sent' THEN 'info' ELSE 'warn' END,
            CASE result
                WHEN 'sent' THEN format('%s notification %s sent to %s', n.channel, n.event, n.target)
                ELSE format('%s notification %s to %s failed after %s attempt(s): %s', n.channel,
                            n.event, n.target, n.attempts, agently_notify_finish.error)
            END,
            jsonb_build_object('notification_id', n.id, 'channel', n.channel,
                               'event', n.event, 'attempts', n.attempts));
    END IF;
    RETURN result;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Subscriptions: beside the run status rules of 0009
-- ---------------------------------------------------------------------------------------
-- The definition of the version the run started with says who hears of what:
--   "notifications": [{"on": ["completed", "failed", "needs_input", "approval_requested"],
--                      "channel": {...}}]

CREATE FUNCTION agently_notify_subscribers(run workflow_runs, event text, message jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    sub  jsonb;
    n    integer := 0;
BEGIN
    FOR sub IN
        SELECT s
        FROM workflows w, jsonb_array_elements(w.definition->'notifications') AS s
        WHERE w.id = run.workflow_id
          AND jsonb_typeof(w.definition->'notifications') = 'array'
          AND s->'on' ? event
    LOOP
        PERFORM agently_notify_enqueue(run.user_id, run.id, sub->'channel',
                                       message || jsonb_build_object(
                                           'run_id', run.id, 'workflow', run.workflow_name,
                                           'workflow_version', run.workflow_version),
                                       NULL);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

CREATE FUNCTION agently_run_notify()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    event text := CASE NEW.status WHEN 'needs_input' THEN 'needs_input' ELSE NEW.status END;
BEGIN
    PERFORM agently_notify_subscribers(
        NEW, event,
        jsonb_build_object(
            'event', 'run.' || event,
            'status', NEW.status,
            'title', format('%s: run %s', NEW.workflow_name,
                            CASE NEW.status WHEN 'completed' THEN 'completed'
                                            WHEN 'failed' THEN 'failed'
                                            ELSE 'needs input' END),
            'text', CASE NEW.status
                        WHEN 'completed' THEN 'The run completed.'
                        WHEN 'failed' THEN 'The run failed: ' || coalesce(NEW.error->>'message', 'no error message')
                        ELSE 'The run waits for a person: ' || coalesce(NEW.wait_reason, NEW.error->>'message', 'see the run')
                    END,
            'error', NEW.error));
    RETURN NULL;
END;
$$;

-- One WHEN clause of plain expressions: runs that do not reach these statuses call nothing.
CREATE TRIGGER workflow_runs_notify
    AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'needs_input')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION agently_run_notify();

CREATE FUNCTION agently_approval_notify()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    run workflow_runs%ROWTYPE;
BEGIN
    SELECT * INTO run FROM workflow_runs r WHERE r.id = NEW.workflow_run_id;
    IF FOUND THEN
        PERFORM agently_notify_subscribers(
            run, 'approval_requested',
            jsonb_build_object(
                'event', 'approval.requested',
                'approval_id', NEW.id,
                'node_id', NEW.node_id,
                'title', format('%s: approval requested — %s', run.workflow_name, NEW.title),
                'text', format('The run waits for a decision on "%s" (node %s).', NEW.title,
                               NEW.node_id),
                'links', jsonb_build_array(jsonb_build_object(
                    'label', 'Open the approval', 'url', '/v1/approvals/' || NEW.id))));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER approvals_notify
    AFTER INSERT ON approvals
    FOR EACH ROW
    WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION agently_approval_notify();

-- ---------------------------------------------------------------------------------------
-- Starting a run for a schedule or a trigger
-- ---------------------------------------------------------------------------------------
-- The newest version of the owner's workflow, idempotent on key: a second call with the same
-- key returns the first run. Raises no_data_found (P0002) when the workflow does not exist.
CREATE FUNCTION agently_start_run(owner uuid, workflow text, input jsonb, key text)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    wf      workflows%ROWTYPE;
    new_id  uuid;
BEGIN
    SELECT * INTO wf FROM workflows w
    WHERE w.user_id = owner AND w.name = workflow
    ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found; apply it first', quote_literal(workflow)
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO workflow_runs (user_id, workflow_id, workflow_name, workflow_version, input,
                               idempotency_key)
    VALUES (owner, wf.id, wf.name, wf.version, coalesce(input, '{}'), key)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT r.id INTO new_id FROM workflow_runs r
        WHERE r.user_id = owner AND r.idempotency_key = key;
    END IF;
    RETURN new_id;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Schedules
-- ---------------------------------------------------------------------------------------

-- What a dispatcher does with ticks that passed while no dispatcher ran: skip them, or
-- start one run for all of them (catch_up_one).
ALTER TABLE schedules
    ADD COLUMN missed text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch_up_one')),
    ADD COLUMN last_run_id uuid,
    ADD COLUMN last_error text CHECK (char_length(last_error) <= 2000),
    ADD COLUMN description text CHECK (char_length(description) <= 1000);

CREATE TABLE schedule_ticks (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    tick         timestamptz NOT NULL,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    run_id       uuid,
    -- true when the run stands for missed ticks (missed = catch_up_one)
    caught_up    boolean NOT NULL DEFAULT false,
    error        text CHECK (char_length(error) <= 2000),
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, tick)
);
CREATE INDEX schedule_ticks_user_idx ON schedule_ticks (user_id, fired_at DESC);

ALTER TABLE schedule_ticks ENABLE ROW LEVEL SECURITY;
ALTER TABLE schedule_ticks FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_api_tenant ON schedule_ticks FOR ALL TO agently_api
    USING (user_id = agently_current_user_id()) WITH CHECK (user_id = agently_current_user_id());
CREATE POLICY agently_worker_all ON schedule_ticks FOR ALL TO agently_worker
    USING (true) WITH CHECK (true);
GRANT SELECT ON schedule_ticks TO agently_api;
GRANT SELECT, INSERT, UPDATE ON schedule_ticks TO agently_worker;

-- A wall-clock time of the zone as an instant, by Postgres' rules: a time skipped by a
-- daylight-saving change moves forward by the change (02:30 on a spring-forward night is
-- 03:30), a repeated one is taken once.
CREATE FUNCTION agently_schedule_local_to_instant(local_time timestamp, zone text)
RETURNS timestamptz
LANGUAGE sql
STABLE
AS $$
SELECT local_time AT TIME ZONE zone
$$;

-- Fires (or skips) the due tick of a schedule the caller locked and sets the next one.
-- fire false: the tick was missed and is skipped. Returns the run started (NULL when none:
-- skipped, already fired by another dispatcher, or the workflow is missing — then
-- last_error says so).
CREATE FUNCTION agently_schedule_fire(schedule uuid, tick timestamptz, fire boolean,
                                      caught_up boolean, next_at timestamptz)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    s       schedules%ROWTYPE;
    started  uuid;
    err      text;
BEGIN
    SELECT * INTO s FROM schedules x WHERE x.id = schedule;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF fire THEN
        INSERT INTO schedule_ticks (schedule_id, tick, user_id, caught_up)
        VALUES (schedule, tick, s.user_id, caught_up)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            BEGIN
                started := agently_start_run(s.user_id, s.workflow_name, s.input,
                                            'schedule:' || schedule || ':' ||
                                            to_char(tick AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
            EXCEPTION WHEN no_data_found THEN
                err := format('workflow %s not found; apply it or delete the schedule',
                              s.workflow_name);
            END;
            UPDATE schedule_ticks t SET run_id = started, error = err
            WHERE t.schedule_id = schedule AND t.tick = agently_schedule_fire.tick;
        END IF;
    END IF;
    UPDATE schedules x
    SET next_run_at = next_at,
        last_run_at = CASE WHEN started IS NOT NULL THEN tick ELSE x.last_run_at END,
        last_run_id = coalesce(started, x.last_run_id),
        last_error = CASE WHEN fire THEN err ELSE x.last_error END
    WHERE x.id = schedule;
    RETURN started;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Webhook triggers
-- ---------------------------------------------------------------------------------------

ALTER TABLE triggers
    ADD COLUMN secret_nonce        bytea,
    ADD COLUMN secret_ciphertext   bytea,
    ADD COLUMN secret_wrapped_key  bytea,
    ADD COLUMN secret_key_version  integer,
    ADD COLUMN description         text CHECK (char_length(description) <= 1000),
    ADD COLUMN last_run_id         uuid;

-- What the API needs to verify a delivery before it knows the user: the owner, the
-- workflow and the sealed signing secret (with its key version's KMS provider, 0014) of an
-- enabled trigger of an enabled user; zero rows otherwise.
CREATE FUNCTION agently_webhook_trigger(trigger_id uuid)
RETURNS TABLE (user_id uuid, workflow_name text, secret_nonce bytea, secret_ciphertext bytea,
               secret_wrapped_key bytea, secret_key_version integer, secret_provider text)
LANGUAGE sql
STABLE
SECURITY DEFINER
AS $$
    SELECT t.user_id, t.workflow_name, t.secret_nonce, t.secret_ciphertext,
           t.secret_wrapped_key, t.secret_key_version, k.provider
    FROM triggers t
    JOIN users u ON u.id = t.user_id
    JOIN secret_key_versions k ON k.version = t.secret_key_version
    WHERE t.id = agently_webhook_trigger.trigger_id
      AND t.enabled
      AND t.secret_ciphertext IS NOT NULL
      AND u.disabled_at IS NULL
$$;

-- ---------------------------------------------------------------------------------------
-- Privileges and search paths
-- ---------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agently_notify_enqueue(uuid, uuid, jsonb, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_claim(text, interval, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_backoff(integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_finish(uuid, integer, boolean, boolean, integer, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_notify_subscribers(workflow_runs, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_run_notify() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_approval_notify() FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_start_run(uuid, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_schedule_local_to_instant(timestamp, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_schedule_fire(uuid, timestamptz, boolean, boolean, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_webhook_trigger(uuid) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION agently_notify_enqueue(uuid, uuid, jsonb, jsonb, text) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_notify_claim(text, interval, integer) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_notify_backoff(integer, bigint) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_notify_finish(uuid, integer, boolean, boolean, integer, text, bigint) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_start_run(uuid, text, jsonb, text) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_schedule_local_to_instant(timestamp, text) TO agently_api, agently_worker;
GRANT EXECUTE ON FUNCTION agently_schedule_fire(uuid, timestamptz, boolean, boolean, timestamptz) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_webhook_trigger(uuid) TO agently_api;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_notify_enqueue(uuid, uuid, jsonb, jsonb, text)',
                              'agently_notify_claim(text, interval, integer)',
                              'agently_notify_backoff(integer, bigint)',
                              'agently_notify_finish(uuid, integer, boolean, boolean, integer, text, bigint)',
                              'agently_notify_subscribers(workflow_runs, text, jsonb)',
                              'agently_run_notify()',
                              'agently_approval_notify()',
                              'agently_start_run(uuid, text, jsonb, text)',
                              'agently_schedule_local_to_instant(timestamp, text)',
                              'agently_schedule_fire(uuid, timestamptz, boolean, boolean, timestamptz)',
                              'agently_webhook_trigger(uuid)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
