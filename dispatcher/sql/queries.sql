-- Named queries, loaded once by dispatcher.store. Values are always $n parameters.

-- name: lease_batch
-- $1 batch size, $2 lease seconds, $3 webhook ids with no free slot, $4 this batch's lease token,
-- $5/$6 webhooks with attempts in flight and their free slots, $7 the per-webhook cap.
WITH candidates AS (
    -- The oldest due rows, a few batches deep, read from the due index alone. Webhooks already
    -- at their cap are skipped so their backlog cannot crowd out the others. No join here: a
    -- join lets the planner trade this index range scan for a scan and sort of the whole
    -- backlog when statistics are stale (637 ms instead of 0.2 ms at 300k rows); disabling or
    -- deleting a webhook cancels its pending rows instead.
    SELECT d.id, d.webhook_id, d.run_at
    FROM dispatcher.deliveries d
    WHERE d.status = 'pending'
      AND d.run_at <= now()
      AND d.webhook_id <> ALL ($3::bigint[])
    ORDER BY d.run_at, d.id
    LIMIT $1 * 4
), within_caps AS (
    -- No more rows per webhook than it has free slots, so nothing is leased only to be
    -- handed back.
    SELECT c.id
    FROM (SELECT c.*, row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.run_at, c.id) AS n
          FROM candidates c) c
    LEFT JOIN unnest($5::bigint[], $6::int[]) AS busy(webhook_id, free)
      ON busy.webhook_id = c.webhook_id
    WHERE c.n <= coalesce(busy.free, $7::int)
), due AS (
    -- SKIP LOCKED lets other instances lease disjoint rows at the same time.
    SELECT d.id
    FROM dispatcher.deliveries d
    WHERE d.id IN (SELECT id FROM within_caps)
      AND d.status = 'pending'
      AND d.run_at <= now()
    ORDER BY d.run_at, d.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), leased AS (
    -- The lease is a visibility timeout: run_at moves past the attempt's deadline, so rows of a
    -- crashed process become due again on their own. The token fences out late writes.
    UPDATE dispatcher.deliveries d
    SET run_at = now() + make_interval(secs => $2::float8),
        lease_token = $4::uuid,
        attempts = d.attempts + 1
    FROM due
    WHERE d.id = due.id
    RETURNING d.id, d.message_id, d.webhook_id, d.attempts
)
SELECT l.id, l.message_id, l.webhook_id, l.attempts, e.event_type, e.payload::text AS payload,
       e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
           AS previous_secret
FROM leased l
JOIN dispatcher.events e ON e.message_id = l.message_id
JOIN dispatcher.webhooks w ON w.id = l.webhook_id;

-- name: record_outcomes
-- One row per finished attempt, as parallel arrays. A row whose lease token no longer matches
-- (the lease expired and another worker took it, or the webhook was disabled) changes nothing.
WITH o AS (
    SELECT *
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[],
                $6::timestamptz[], $7::int[], $8::int[], $9::text[], $10::bool[],
                $11::text[], $12::text[])
      AS o(delivery_id, lease_token, status, retry_in_s, attempt,
           started_at, duration_ms, response_status, response_body, response_truncated,
           error_kind, error_message)
), updated AS (
    UPDATE dispatcher.deliveries d
    SET status = o.status,
        run_at = CASE WHEN o.status = 'pending'
                      THEN now() + make_interval(secs => o.retry_in_s) ELSE d.run_at END,
        lease_token = NULL,
        finished_at = CASE WHEN o.status = 'pending' THEN NULL ELSE now() END,
        last_response_status = o.response_status,
        last_error_kind = o.error_kind
    FROM o
    WHERE d.id = o.delivery_id AND d.lease_token = o.lease_token AND d.status = 'pending'
    RETURNING d.id
), logged AS (
    INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms,
                                     response_status, response_body, response_truncated,
                                     error_kind, error_message)
    SELECT o.delivery_id, o.attempt, o.started_at, o.duration_ms, o.response_status,
           o.response_body, o.response_truncated, o.error_kind, o.error_message
    FROM o JOIN updated u ON u.id = o.delivery_id
    RETURNING delivery_id
)
-- The deliveries whose outcome was written; the rest of the batch was refused.
SELECT coalesce(array_agg(delivery_id), '{}') FROM logged;

-- name: release_leases
-- Hand back leased rows that were never attempted: due at once, and the attempt not counted.
UPDATE dispatcher.deliveries d
SET run_at = now(), lease_token = NULL, attempts = d.attempts - 1
FROM unnest($1::bigint[], $2::uuid[]) AS r(id, lease_token)
WHERE d.id = r.id AND d.lease_token = r.lease_token AND d.status = 'pending';

-- name: seconds_until_next_due
-- How long the leaser may sleep: the head of the due index, leased rows included (their lease
-- expiry is when they come back). NULL when nothing is pending.
SELECT extract(epoch FROM min(run_at) - now())::float8
FROM dispatcher.deliveries
WHERE status = 'pending';

-- name: ping
-- The watchdog's liveness probe: a round trip through the pool and nothing more.
SELECT 1;

-- name: set_limit
UPDATE dispatcher.limits SET value = $2 WHERE name = $1 AND value <> $2;

-- name: sweep_deliveries
-- Delete up to $2 deliveries that finished more than $1 seconds ago, with their attempts.
-- SKIP LOCKED: several instances can sweep at once without waiting on each other.
WITH doomed AS (
    SELECT id
    FROM dispatcher.deliveries
    WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1::float8)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), attempts_gone AS (
    DELETE FROM dispatcher.attempts a USING doomed WHERE a.delivery_id = doomed.id
)
DELETE FROM dispatcher.deliveries d USING doomed WHERE d.id = doomed.id;

-- name: sweep_events
-- Delete up to $2 events older than $1 seconds that no delivery refers to any more.
DELETE FROM dispatcher.events
WHERE message_id IN (
    SELECT e.message_id
    FROM dispatcher.events e
    WHERE e.created_at < now() - make_interval(secs => $1::float8)
      AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.message_id = e.message_id)
    ORDER BY e.created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
);
