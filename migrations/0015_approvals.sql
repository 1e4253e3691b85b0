-- 0015_approvals.sql — the approval node: requests, votes, timeouts, escalation ladders,
-- signed one-click links, notifications through the outbox, and one inbox.
--
-- The approvals table of 0001 gets what an approval workflow needs (who may decide, how
-- many must agree, what happens when nobody answers); every change of an approval's state
-- is one of the functions below, each under the approval's row lock (taken after the run's
-- row lock, the global order: run, then approval), so that of any number of concurrent
-- decisions exactly one decides and the others learn the winning decision.
--
--   agently_request_approval   the worker (fenced): creates the approval of a node attempt
--                              once (a re-execution after a crash finds it), writes its
--                              links and notifications in the same transaction;
--   agently_approval_timeout   the worker (fenced), at the deadline: on_timeout approve /
--                              reject / fail, or escalate (next level of the ladder: notify
--                              its contacts, who may decide from then on, extend the deadline);
--   agently_decide_approval    the API, for a user (the run's owner or a listed reviewer);
--   agently_approval_link*     the API, for a signed one-click link (no token: the link is
--                              the credential, single-use, expiring, bound to the approval,
--                              the decision and the reviewer it was sent to);
--   agently_reassign_approval  the API: a reviewer hands their place to someone else, or the
--                              owner adds or replaces a reviewer.
-- A decision wakes the run (agently_wake_run); the planner reads the approval from the
-- worker's snapshot and completes the node with the decision as its output (approved) or
-- fails it with class 'rejected' / 'timeout' (its on_failure decides). Run statuses are not
-- touched here: the run waits as 'waiting' (run_at = the approval's deadline) like any wait.
--
-- Notifications are rows of the notifications outbox (0001), written in the transaction
-- that causes them; the dispatcher delivers them. Payload (docs/data-model.md):
--   {"event": "approval.requested" | "approval.escalated" | "approval.reassigned",
--    "subject", "text" (plain text with the links), "to" (the contact), "approval_id",
--    "run_id", "node_id", "workflow", "title", "level", "expires_at", "request",
--    "links": {"approve", "reject"}}
-- with idempotency_key "approval:<approval id>:<level>:<md5(contact)>:<channel index>", so a
-- re-executed request never writes one twice.

ALTER TABLE approvals
    -- the node attempt that asked (a re-execution of the same attempt finds its approval)
    ADD COLUMN node_attempt integer NOT NULL DEFAULT 1 CHECK (node_attempt >= 1),
    -- lower-case user names or e-mail addresses; the run's owner may always decide too
    ADD COLUMN reviewers text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(reviewers) <= 1000),
    ADD COLUMN quorum integer NOT NULL DEFAULT 1 CHECK (quorum BETWEEN 1 AND 100),
    ADD COLUMN forbid_self_approval boolean NOT NULL DEFAULT false,
    -- {"channels": [...], "on_timeout", "timeout_ms", "escalation": [{"contacts",
    --  "timeout_ms"}], "public_url"}: what the functions below need later
    ADD COLUMN policy jsonb NOT NULL DEFAULT '{}',
    -- the escalation level reached (0: none yet)
    ADD COLUMN level integer NOT NULL DEFAULT 0 CHECK (level >= 0),
    -- [{"by", "decision", "comment", "via", "at"}] in order; a decision is the vote that
    -- settled it (or the timeout's)
    ADD COLUMN votes jsonb NOT NULL DEFAULT '[]',
    -- how the deciding answer came: api, cli, web, link, timeout
    ADD COLUMN decided_via text CHECK (char_length(decided_via) <= 20);

CREATE UNIQUE INDEX approvals_node_attempt_idx
    ON approvals (workflow_run_id, node_id, node_attempt);
-- a reviewer's inbox: pending approvals naming them
CREATE INDEX approvals_reviewers_idx ON approvals USING gin (reviewers) WHERE status = 'pending';

-- One-click links. The token is 244 random bits, only its SHA-256 is stored; the link
-- decides one approval one way for one reviewer, once, until it expires (the approval's
-- deadline, moved with every escalation; 30 days without one).
CREATE TABLE approval_links (
    token_hash   bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    approval_id  uuid NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reviewer     text NOT NULL CHECK (char_length(reviewer) BETWEEN 1 AND 254),
    decision     text NOT NULL CHECK (decision IN ('approve', 'reject')),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX approval_links_approval_idx ON approval_links (approval_id);

ALTER TABLE approval_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE approval_links FORCE ROW LEVEL SECURITY;
CREATE POLICY agently_worker_all ON approval_links FOR ALL TO agently_worker
    USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON approval_links TO agently_worker;
-- agently_api has no grant: links are only read through the functions below.

-- A reviewer who is another user sees the approvals that name them (read only; deciding
-- goes through agently_decide_approval).
CREATE FUNCTION agently_current_user_name()
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT u.name FROM users u WHERE u.id = agently_current_user_id()
$$;
REVOKE ALL ON FUNCTION agently_current_user_name() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agently_current_user_name() TO agently_api;

CREATE POLICY agently_api_reviewer ON approvals FOR SELECT TO agently_api
    USING (reviewers @> ARRAY[agently_current_user_name()]);

-- The SECURITY DEFINER functions below run as the owner, which is a superuser or
-- BYPASSRLS in every supported setup; these policies make them work for an owner that is
-- neither. Each function checks who may do what itself.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY agently_owner_approvals ON approvals FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_approvals ON approval_links FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_approvals ON notifications FOR INSERT TO %I '
                   'WITH CHECK (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_approvals ON workflow_runs FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
    EXECUTE format('CREATE POLICY agently_owner_approvals ON logs FOR ALL TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Notifications of an approval (internal: called by the functions below)
-- ---------------------------------------------------------------------------------------
-- For each contact: a pair of links (approve, reject) bound to it, and one notification per
-- channel of the policy ({"kind": "email"} goes to contacts that are e-mail addresses,
-- {"kind": "webhook"|"slack", "url"} to the URL, once per contact). No channels: e-mail to
-- the contacts that are addresses. Returns how many notifications were written.
CREATE FUNCTION agently_approval_notify(approval_id uuid, contacts text[], event text)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    a        approvals%ROWTYPE;
    contact  text;
    ch       jsonb;
    idx      integer;
    channels jsonb;
    base     text;
    tokens   text[];
    links    jsonb;
    kind     text;
    target   text;
    subject  text;
    body     text;
    written  integer := 0;
    n        integer;
BEGIN
    SELECT * INTO a FROM approvals x WHERE x.id = agently_approval_notify.approval_id;
    channels := coalesce(a.policy -> 'channels', '[]'::jsonb);
    IF jsonb_array_length(channels) = 0 THEN
        channels := '[{"kind": "email"}]'::jsonb;
    END IF;
    base := rtrim(coalesce(a.policy ->> 'public_url', 'http://127.0.0.1:8080'), '/');
    FOREACH contact IN ARRAY coalesce(contacts, '{}') LOOP
        tokens := ARRAY[replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                        replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')];
        INSERT INTO approval_links (token_hash, approval_id, user_id, reviewer, decision,
                                    expires_at)
        VALUES (sha256(convert_to(tokens[1], 'UTF8')), a.id, a.user_id, contact, 'approve',
                coalesce(a.expires_at, now() + interval '30 days')),
               (sha256(convert_to(tokens[2], 'UTF8')), a.id, a.user_id, contact, 'reject',
                coalesce(a.expires_at, now() + interval '30 days'));
        links := jsonb_build_object('approve', base || '/v1/approval-links/' || tokens[1],
                                    'reject', base || '/v1/approval-links/' || tokens[2]);
        subject := CASE event
                       WHEN 'approval.escalated' THEN 'Escalated, approval needed: '
                       ELSE 'Approval needed: ' END || a.title;
        body := format(E'%s\n\nRun %s of workflow %s is waiting at node %s for a decision%s.\n\n'
                       'Approve: %s\nReject:  %s\n\nDeadline: %s\nRun: %s/v1/runs/%s\n',
                       a.title, a.workflow_run_id, coalesce(a.request ->> 'workflow', '?'),
                       a.node_id,
                       CASE WHEN a.quorum > 1 THEN format(' (%s approvals needed)', a.quorum)
                            ELSE '' END,
                       links ->> 'approve', links ->> 'reject',
                       coalesce(to_char(a.expires_at AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'none'),
                       base, a.workflow_run_id);
        idx := 0;
        FOR ch IN SELECT value FROM jsonb_array_elements(channels) LOOP
            kind := ch ->> 'kind';
            target := CASE WHEN kind = 'email' THEN
                               CASE WHEN contact LIKE '%_@_%' THEN contact END
                           ELSE ch ->> 'url' END;
            IF target IS NOT NULL AND kind IN ('email', 'slack', 'webhook') THEN
                INSERT INTO notifications (user_id, workflow_run_id, channel, target, payload,
                                           idempotency_key)
                VALUES (a.user_id, a.workflow_run_id, kind, target,
                        jsonb_build_object('event', event, 'subject', subject, 'text', body,
                                           'to', contact, 'approval_id', a.id,
                                           'run_id', a.workflow_run_id, 'node_id', a.node_id,
                                           'workflow', a.request ->> 'workflow',
                                           'title', a.title, 'level', a.level,
                                           'expires_at', a.expires_at, 'request', a.request,
                                           'links', links),
                        format('approval:%s:%s:%s:%s:%s', a.id, a.level,
                               CASE event WHEN 'approval.reassigned' THEN 'r' ELSE 'n' END,
                               md5(contact), idx))
                ON CONFLICT (user_id, idempotency_key) DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                written := written + n;
            END IF;
            idx := idx + 1;
        END LOOP;
    END LOOP;
    RETURN written;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- The worker's two calls (fenced on the run's lease epoch)
-- ---------------------------------------------------------------------------------------

-- spec (from the planner's request_approval action): {"title", "context",
-- "proposed_action", "reviewers", "channels", "quorum", "forbid_self_approval",
-- "timeout_ms", "on_timeout", "escalation"}. Returns the approval's id; NULL when the
-- lease is lost (nothing written). Idempotent per (run, node, attempt).
CREATE FUNCTION agently_request_approval(run_id uuid, epoch bigint, node text,
                                         node_attempt integer, spec jsonb, public_url text)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    r         workflow_runs%ROWTYPE;
    found_id  uuid;
    new_id    uuid;
    revs      text[];
    timeout   bigint := (spec ->> 'timeout_ms')::bigint;
BEGIN
    SELECT * INTO r FROM workflow_runs w
    WHERE w.id = agently_request_approval.run_id AND w.lease_epoch = epoch
      AND w.status = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT a.id INTO found_id FROM approvals a
    WHERE a.workflow_run_id = r.id AND a.node_id = node
      AND a.node_attempt = agently_request_approval.node_attempt;
    IF FOUND THEN
        RETURN found_id;  -- asked before this crash or re-execution: never twice
    END IF;
    SELECT coalesce(array_agg(DISTINCT lower(v)), '{}') INTO revs
    FROM jsonb_array_elements_text(coalesce(spec -> 'reviewers', '[]')) AS v;
    INSERT INTO approvals (user_id, workflow_run_id, node_id, node_attempt, title, request,
                           reviewers, quorum, forbid_self_approval, policy, expires_at)
    VALUES (r.user_id, r.id, node, agently_request_approval.node_attempt,
            left(coalesce(nullif(spec ->> 'title', ''), 'Approve ' || node), 500),
            jsonb_build_object('workflow', r.workflow_name, 'node', node,
                               'context', coalesce(spec -> 'context', '{}'),
                               'proposed_action', spec -> 'proposed_action'),
            revs, coalesce((spec ->> 'quorum')::integer, 1),
            coalesce((spec ->> 'forbid_self_approval')::boolean, false),
            jsonb_build_object('channels', coalesce(spec -> 'channels', '[]'),
                               'on_timeout', spec -> 'on_timeout',
                               'timeout_ms', spec -> 'timeout_ms',
                               'escalation', coalesce(spec -> 'escalation', '[]'),
                               'public_url', public_url),
            CASE WHEN timeout IS NOT NULL THEN now() + timeout * interval '1 millisecond' END)
    RETURNING id INTO new_id;
    PERFORM agently_approval_notify(new_id, revs, 'approval.requested');
    PERFORM agently_append_event_unfenced(
        r.id, 'approval.requested', node, agently_request_approval.node_attempt, 'info',
        format('waiting for approval: %s', left(coalesce(spec ->> 'title', node), 200)),
        jsonb_build_object('approval_id', new_id, 'reviewers', to_jsonb(revs),
                           'quorum', coalesce((spec ->> 'quorum')::integer, 1),
                           'expires_at', (SELECT expires_at FROM approvals WHERE id = new_id)));
    RETURN new_id;
END;
$$;

-- The approval's deadline passed (the planner saw it): apply on_timeout under the row
-- lock, unless a person decided first. Returns the approval's status afterwards ('pending'
-- after an escalation), NULL when the lease is lost.
CREATE FUNCTION agently_approval_timeout(run_id uuid, epoch bigint, approval_id uuid)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    a        approvals%ROWTYPE;
    ladder   jsonb;
    step     jsonb;
    contacts text[];
    pol      text;
    waited   text;
    outcome  jsonb;
BEGIN
    PERFORM 1 FROM workflow_runs w
    WHERE w.id = agently_approval_timeout.run_id AND w.lease_epoch = epoch
      AND w.status = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO a FROM approvals x
    WHERE x.id = agently_approval_timeout.approval_id AND x.workflow_run_id = run_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'missing';
    END IF;
    IF a.status <> 'pending' OR a.expires_at IS NULL OR a.expires_at > now() THEN
        RETURN a.status;
    END IF;
    pol := coalesce(a.policy ->> 'on_timeout', 'fail');
    waited := to_char(now() - a.created_at, 'FMDD"d "FMHH24"h "FMMI"m "FMSS"s"');

    IF pol = 'escalate' THEN
        ladder := coalesce(a.policy -> 'escalation', '[]'::jsonb);
        IF jsonb_array_length(ladder) = 0 THEN
            -- no ladder: one reminder to the reviewers, one more timeout
            ladder := jsonb_build_array(jsonb_build_object(
                'contacts', to_jsonb(a.reviewers), 'timeout_ms', a.policy -> 'timeout_ms'));
        END IF;
        IF a.level < jsonb_array_length(ladder) THEN
            step := ladder -> a.level;
            SELECT coalesce(array_agg(lower(v)), '{}') INTO contacts
            FROM jsonb_array_elements_text(coalesce(step -> 'contacts', '[]')) AS v;
            UPDATE approvals x
            SET level = a.level + 1,
                reviewers = (SELECT coalesce(array_agg(DISTINCT v), '{}')
                             FROM unnest(a.reviewers || contacts) AS v),
                expires_at = now() + coalesce((step ->> 'timeout_ms')::bigint,
                                              (a.policy ->> 'timeout_ms')::bigint, 86400000)
                                     * interval '1 millisecond'
            WHERE x.id = a.id
            RETURNING * INTO a;
            UPDATE approval_links l SET expires_at = a.expires_at
            WHERE l.approval_id = a.id AND l.used_at IS NULL;
            PERFORM agently_approval_notify(a.id, contacts, 'approval.escalated');
            PERFORM agently_append_event_unfenced(
                a.workflow_run_id, 'approval.escalated', a.node_id, a.node_attempt, 'warn',
                format('no decision after %s: escalated to level %s (%s), new deadline %s',
                       waited, a.level, array_to_string(contacts, ', '),
                       to_char(a.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
                jsonb_build_object('approval_id', a.id, 'level', a.level,
                                   'contacts', to_jsonb(contacts), 'expires_at', a.expires_at));
            RETURN 'pending';
        END IF;
        pol := 'fail';  -- the ladder is exhausted
    END IF;

    outcome := jsonb_build_object('decision', CASE pol WHEN 'approve' THEN 'approve'
                                                          WHEN 'reject' THEN 'reject' END,
                                  'comment', format('no decision within the deadline (%s)',
                                                    waited),
                                  'by', 'timeout', 'via', 'timeout', 'at', now(),
                                  'votes', a.votes);
    UPDATE approvals x
    SET status = CASE pol WHEN 'approve' THEN 'approved' WHEN 'reject' THEN 'rejected'
                             ELSE 'expired' END,
        decision = outcome, decided_by = 'timeout', decided_via = 'timeout',
        comment = outcome ->> 'comment', decided_at = now()
    WHERE x.id = a.id
    RETURNING * INTO a;
    PERFORM agently_append_event_unfenced(
        a.workflow_run_id, 'approval.timed_out', a.node_id, a.node_attempt, 'warn',
        format('no decision within the deadline: %s', a.status),
        jsonb_build_object('approval_id', a.id, 'status', a.status, 'on_timeout',
                           a.policy ->> 'on_timeout'));
    RETURN a.status;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Deciding (internal): one vote under the run's and the approval's row locks
-- ---------------------------------------------------------------------------------------
-- outcome: 'decided' (this vote settled it), 'recorded' (counted; the quorum is not
-- reached yet), 'conflict' (already decided: approval shows the winning decision),
-- 'already_voted', 'forbidden' (not a reviewer; or forbid_self_approval and the voter
-- started the run), 'not_found'. Any rejection rejects; approvals decide when `quorum`
-- different people approved.
CREATE FUNCTION agently_approval_vote(approval_id uuid, decision text, note text, voter text,
                                      voter_is_owner boolean, via text)
RETURNS TABLE (outcome text, reason text, approval_status text)
LANGUAGE plpgsql
AS $$
DECLARE
    a        approvals%ROWTYPE;
    owner    text;
    run      uuid;
    approves integer;
    vote     jsonb;
BEGIN
    IF decision IS NULL OR decision NOT IN ('approve', 'reject') THEN
        RAISE EXCEPTION 'decision must be approve or reject, not %', coalesce(decision, '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT x.workflow_run_id INTO run FROM approvals x
    WHERE x.id = agently_approval_vote.approval_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::text;
        RETURN;
    END IF;
    -- the global lock order: the run first (a worker's turn holds it), then the approval
    PERFORM 1 FROM workflow_runs w WHERE w.id = run FOR UPDATE;
    SELECT * INTO a FROM approvals x WHERE x.id = agently_approval_vote.approval_id FOR UPDATE;
    SELECT u.name INTO owner FROM users u WHERE u.id = a.user_id;
    IF NOT voter_is_owner AND NOT (a.reviewers @> ARRAY[lower(voter)]) THEN
        RETURN QUERY SELECT 'forbidden',
                            format('%s is not a reviewer of this approval', voter), a.status;
        RETURN;
    END IF;
    IF a.status <> 'pending' THEN
        RETURN QUERY SELECT 'conflict', format('the approval was already %s', a.status),
                            a.status;
        RETURN;
    END IF;
    IF decision = 'approve' AND a.forbid_self_approval AND lower(voter) = owner THEN
        RETURN QUERY SELECT 'forbidden',
                            'the person who started the run cannot approve it '
                            '(forbid_self_approval)', a.status;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(a.votes) v WHERE v ->> 'by' = lower(voter)) THEN
        RETURN QUERY SELECT 'already_voted', format('%s already voted', voter), a.status;
        RETURN;
    END IF;
    vote := jsonb_build_object('by', lower(voter), 'decision', decision, 'comment', note,
                               'via', via, 'at', now());
    a.votes := a.votes || jsonb_build_array(vote);
    SELECT count(*) INTO approves FROM jsonb_array_elements(a.votes) v
    WHERE v ->> 'decision' = 'approve';
    IF decision = 'reject' OR approves >= a.quorum THEN
        UPDATE approvals x
        SET votes = a.votes,
            status = CASE agently_approval_vote.decision WHEN 'approve' THEN 'approved'
                                                         ELSE 'rejected' END,
            decision = vote || jsonb_build_object('votes', a.votes),
            decided_by = lower(voter), comment = note, decided_at = now(), decided_via = via
        WHERE x.id = a.id
        RETURNING * INTO a;
        PERFORM agently_wake_run(a.workflow_run_id);
        PERFORM pg_notify('agently_control', a.workflow_run_id::text);
        PERFORM agently_append_event_unfenced(
            a.workflow_run_id, 'approval.decided', a.node_id, a.node_attempt, 'info',
            format('%s by %s via %s', a.status, lower(voter), via),
            jsonb_build_object('approval_id', a.id, 'decision', decision, 'by', lower(voter),
                               'comment', note, 'via', via));
        RETURN QUERY SELECT 'decided', NULL::text, a.status;
        RETURN;
    END IF;
    UPDATE approvals x SET votes = a.votes WHERE x.id = a.id;
    PERFORM agently_append_event_unfenced(
        a.workflow_run_id, 'approval.voted', a.node_id, a.node_attempt, 'info',
        format('approved by %s via %s (%s of %s)', lower(voter), via, approves, a.quorum),
        jsonb_build_object('approval_id', a.id, 'decision', decision, 'by', lower(voter),
                           'comment', note, 'via', via, 'approvals', approves,
                           'quorum', a.quorum));
    RETURN QUERY SELECT 'recorded', NULL::text, a.status;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- The API's entry points (SECURITY DEFINER: a reviewer may be another user than the run's
-- owner, and a link has no user at all; each checks who may act itself)
-- ---------------------------------------------------------------------------------------

-- The current user decides: as the run's owner, or as a listed reviewer. An approval the
-- user may not see (another user's, not naming them) is 'not_found'.
CREATE FUNCTION agently_decide_approval(approval_id uuid, decision text, note text, via text)
RETURNS TABLE (outcome text, reason text, approval_status text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    me     uuid := agently_current_user_id();
    myname text;
    a      approvals%ROWTYPE;
BEGIN
    IF me IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT u.name INTO myname FROM users u WHERE u.id = me;
    SELECT * INTO a FROM approvals x WHERE x.id = agently_decide_approval.approval_id;
    IF NOT FOUND OR (a.user_id <> me AND NOT (a.reviewers @> ARRAY[myname])) THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM agently_approval_vote(a.id, decision, note, myname,
                                                     a.user_id = me, coalesce(via, 'api'));
END;
$$;

-- What a link shows before anything is decided (GET): never changes anything.
CREATE FUNCTION agently_approval_link(token text)
RETURNS TABLE (approval_id uuid, decision text, reviewer text, link_state text,
               approval_status text, title text, run_id uuid, node_id text, request jsonb,
               expires_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
AS $$
    SELECT a.id, l.decision, l.reviewer,
           CASE WHEN l.used_at IS NOT NULL THEN 'used'
                WHEN l.expires_at <= now() THEN 'expired'
                ELSE 'valid' END,
           a.status, a.title, a.workflow_run_id, a.node_id, a.request, l.expires_at
    FROM approval_links l
    JOIN approvals a ON a.id = l.approval_id
    WHERE l.token_hash = sha256(convert_to(agently_approval_link.token, 'UTF8'))
$$;

-- The link's decision (POST). outcome as agently_approval_vote, or 'used' / 'expired'
-- (the link is refused) / 'not_found'. The link is spent only by a vote that counted.
CREATE FUNCTION agently_approval_link_decide(token text, note text)
RETURNS TABLE (outcome text, reason text, approval_status text, approval_id uuid,
               decision text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    l   approval_links%ROWTYPE;
    res record;
BEGIN
    SELECT * INTO l FROM approval_links x
    WHERE x.token_hash = sha256(convert_to(agently_approval_link_decide.token, 'UTF8'))
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF l.used_at IS NOT NULL THEN
        RETURN QUERY SELECT 'used', 'this link was already used'::text, NULL::text,
                            l.approval_id, l.decision;
        RETURN;
    END IF;
    IF l.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired', 'this link has expired'::text, NULL::text,
                            l.approval_id, l.decision;
        RETURN;
    END IF;
    SELECT * INTO res FROM agently_approval_vote(l.approval_id, l.decision, note, l.reviewer,
                                                 false, 'link') v;
    IF res.outcome IN ('decided', 'recorded') THEN
        UPDATE approval_links x SET used_at = now() WHERE x.token_hash = l.token_hash;
    END IF;
    RETURN QUERY SELECT res.outcome, res.reason, res.approval_status, l.approval_id,
                        l.decision;
END;
$$;

-- Reassignment and delegation. A reviewer hands their own place to `to_reviewer` (from_
-- reviewer NULL or themselves); the run's owner replaces any reviewer, or with from_reviewer
-- NULL adds one. The new reviewer is notified with links of their own. outcome: 'done',
-- 'forbidden', 'not_found', 'conflict' (decided already), 'invalid' (reason says why).
CREATE FUNCTION agently_reassign_approval(approval_id uuid, from_reviewer text,
                                          to_reviewer text, note text)
RETURNS TABLE (outcome text, reason text)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    me      uuid := agently_current_user_id();
    myname  text;
    a       approvals%ROWTYPE;
    old_rev text := lower(from_reviewer);
    new_rev text := lower(to_reviewer);
BEGIN
    IF me IS NULL THEN
        RAISE EXCEPTION 'no user set' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT u.name INTO myname FROM users u WHERE u.id = me;
    SELECT x.* INTO a FROM approvals x WHERE x.id = agently_reassign_approval.approval_id;
    IF NOT FOUND OR (a.user_id <> me AND NOT (a.reviewers @> ARRAY[myname])) THEN
        RETURN QUERY SELECT 'not_found', NULL::text;
        RETURN;
    END IF;
    PERFORM 1 FROM workflow_runs w WHERE w.id = a.workflow_run_id FOR UPDATE;
    SELECT x.* INTO a FROM approvals x WHERE x.id = a.id FOR UPDATE;
    IF a.status <> 'pending' THEN
        RETURN QUERY SELECT 'conflict', format('the approval was already %s', a.status);
        RETURN;
    END IF;
    IF new_rev IS NULL OR new_rev !~ '^[a-z0-9][a-z0-9_.@+-]{0,253}$' THEN
        RETURN QUERY SELECT 'invalid', 'to must be a user name or an e-mail address'::text;
        RETURN;
    END IF;
    IF a.user_id <> me THEN
        IF old_rev IS NOT NULL AND old_rev <> myname THEN
            RETURN QUERY SELECT 'forbidden', 'a reviewer can only hand over their own place'::text;
            RETURN;
        END IF;
        old_rev := myname;
    END IF;
    IF old_rev IS NOT NULL AND NOT (a.reviewers @> ARRAY[old_rev]) THEN
        RETURN QUERY SELECT 'invalid', format('%s is not a reviewer of this approval', old_rev);
        RETURN;
    END IF;
    IF a.reviewers @> ARRAY[new_rev] THEN
        RETURN QUERY SELECT 'invalid', format('%s is already a reviewer', new_rev);
        RETURN;
    END IF;
    UPDATE approvals x
    SET reviewers = array_append(CASE WHEN old_rev IS NULL THEN x.reviewers
                                      ELSE array_remove(x.reviewers, old_rev) END, new_rev)
    WHERE x.id = a.id;
    -- the old reviewer's links stop working
    UPDATE approval_links l SET expires_at = least(l.expires_at, now())
    WHERE l.approval_id = a.id AND l.reviewer = old_rev AND l.used_at IS NULL;
    PERFORM agently_approval_notify(a.id, ARRAY[new_rev], 'approval.reassigned');
    PERFORM agently_append_event_unfenced(
        a.workflow_run_id, 'approval.reassigned', a.node_id, a.node_attempt, 'info',
        CASE WHEN old_rev IS NULL THEN format('%s added %s as a reviewer', myname, new_rev)
             ELSE format('%s handed %s''s place to %s', myname, old_rev, new_rev) END,
        jsonb_build_object('approval_id', a.id, 'from', old_rev, 'to', new_rev, 'by', myname,
                           'comment', note));
    RETURN QUERY SELECT 'done', NULL::text;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- One inbox: everything that waits for a person, for the current user
-- ---------------------------------------------------------------------------------------
-- kind 'approval': a pending approval the user owns or reviews (answer: POST
-- /v1/approvals/{id}/decide); kind 'escalation': a run in needs_input after a node failed
-- for good with on_failure escalate (its error is on the run; answer: POST
-- /v1/runs/{id}/resolve); kinds 'question' and 'budget': a run in needs_input whose agent
-- asked a person (ask_human) or ran out of budget (0012: the run's error has class
-- needs_input and says what it waits for; answer: POST /v1/runs/{id}/input).
-- security_invoker: the reader's row-level security applies.
CREATE VIEW agently_inbox WITH (security_invoker = true) AS
SELECT 'approval'::text AS kind, a.id::text AS id, a.workflow_run_id AS run_id,
       a.node_id, a.title, a.created_at, a.expires_at,
       jsonb_build_object('request', a.request, 'reviewers', to_jsonb(a.reviewers),
                          'quorum', a.quorum, 'votes', a.votes, 'level', a.level) AS detail,
       jsonb_build_object('method', 'POST', 'path', '/v1/approvals/' || a.id || '/decide',
                          'body', jsonb_build_object('decision', 'approve | reject',
                                                     'comment', 'text (optional)'))
           AS answer
FROM approvals a
WHERE a.status = 'pending'
UNION ALL
SELECT CASE WHEN r.error ->> 'class' IS DISTINCT FROM 'needs_input' THEN 'escalation'
            WHEN r.error -> 'waiting_for' ->> 'kind' = 'budget' THEN 'budget'
            ELSE 'question' END,
       r.id::text, r.id,
       (SELECT l.node_id FROM logs l
        WHERE l.run_created_at = r.created_at AND l.workflow_run_id = r.id
          AND l.kind IN ('run.escalated', 'agent.needs_input')
        ORDER BY l.seq DESC LIMIT 1),
       left(coalesce(r.wait_reason, r.error ->> 'message', 'waiting for a person'), 500),
       r.updated_at, r.timeout_at,
       jsonb_build_object('error', r.error, 'workflow', r.workflow_name,
                          'waiting_for', r.error -> 'waiting_for'),
       CASE WHEN r.error ->> 'class' IS DISTINCT FROM 'needs_input' THEN
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/resolve',
                                   'body', jsonb_build_object('action', 'retry | skip | stop',
                                                              'comment', 'text (optional)'))
            WHEN r.error -> 'waiting_for' ->> 'kind' = 'budget' THEN
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/input',
                                   'body', jsonb_build_object('budget',
                                                              '{"max_cost_usd": n, ...}'))
            ELSE
                jsonb_build_object('method', 'POST', 'path', '/v1/runs/' || r.id || '/input',
                                   'body', jsonb_build_object('answer', 'any JSON'))
       END
FROM workflow_runs r
WHERE r.status = 'needs_input';

GRANT SELECT ON agently_inbox TO agently_api;

-- ---------------------------------------------------------------------------------------
-- Privileges and search paths
-- ---------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agently_approval_notify(uuid, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_request_approval(uuid, bigint, text, integer, jsonb, text)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_approval_timeout(uuid, bigint, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_approval_vote(uuid, text, text, text, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_decide_approval(uuid, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_approval_link(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_approval_link_decide(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agently_reassign_approval(uuid, text, text, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION agently_request_approval(uuid, bigint, text, integer, jsonb, text)
    TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_approval_timeout(uuid, bigint, uuid) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_approval_notify(uuid, text[], text) TO agently_worker;
GRANT EXECUTE ON FUNCTION agently_decide_approval(uuid, text, text, text) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_approval_link(text) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_approval_link_decide(text, text) TO agently_api;
GRANT EXECUTE ON FUNCTION agently_reassign_approval(uuid, text, text, text) TO agently_api;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['agently_current_user_name()',
                              'agently_approval_notify(uuid, text[], text)',
                              'agently_request_approval(uuid, bigint, text, integer, jsonb, text)',
                              'agently_approval_timeout(uuid, bigint, uuid)',
                              'agently_approval_vote(uuid, text, text, text, boolean, text)',
                              'agently_decide_approval(uuid, text, text, text)',
                              'agently_approval_link(text)',
                              'agently_approval_link_decide(text, text)',
                              'agently_reassign_approval(uuid, text, text, text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
