-- Named queries for events and their deliveries, loaded once by dispatcher.manage.history.

-- name: publish
-- As dispatcher.publish(), but says whether this statement inserted the event. An existing
-- message_id (committed before this statement began) is returned with created = false, and
-- whether it holds the same type and payload; no row means a concurrent transaction inserted
-- it meanwhile: ask published_before.
WITH inserted AS (
    INSERT INTO dispatcher.events (message_id, event_type, payload)
    VALUES (coalesce($3::uuid, gen_random_uuid()), $1, $2::jsonb)
    ON CONFLICT ON CONSTRAINT events_pkey DO NOTHING
    RETURNING message_id
)
SELECT message_id, true AS created, true AS same_as_sent FROM inserted
UNION ALL
SELECT message_id, false, event_type = $1 AND payload = $2::jsonb
FROM dispatcher.events
WHERE message_id = $3::uuid AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: published_before
SELECT message_id, false AS created, event_type = $1 AND payload = $2::jsonb AS same_as_sent
FROM dispatcher.events WHERE message_id = $3::uuid;

-- name: deliveries_of_message
SELECT count(*) FROM dispatcher.deliveries WHERE message_id = $1;

-- name: get_event
SELECT message_id, event_type, payload::text AS payload, created_at
FROM dispatcher.events WHERE message_id = $1;

-- name: event_deliveries
SELECT d.id, d.webhook_id, w.service_name, d.kind, d.status, d.attempts,
       d.last_response_status, d.last_error_kind, d.created_at, d.finished_at
FROM dispatcher.deliveries d
LEFT JOIN dispatcher.webhooks w ON w.id = d.webhook_id
WHERE d.message_id = $1
ORDER BY d.id;

-- name: resend_event
-- New deliveries of a stored event, with a fresh retry budget: to the webhook $2 if given
-- (any active webhook), else to every active webhook that had a delivery of it.
INSERT INTO dispatcher.deliveries (message_id, webhook_id, kind)
SELECT $1, w.id, 'resend'
FROM dispatcher.webhooks w
WHERE w.status = 'active'
  AND CASE WHEN $2::bigint IS NULL
           THEN EXISTS (SELECT 1 FROM dispatcher.deliveries d
                        WHERE d.message_id = $1 AND d.webhook_id = w.id AND d.kind <> 'test')
           ELSE w.id = $2 END
RETURNING id, webhook_id;

-- name: list_deliveries
SELECT d.id, d.message_id, d.webhook_id, w.service_name, e.event_type, d.kind, d.status,
       d.attempts, d.last_response_status, d.last_error_kind, d.created_at, d.finished_at,
       CASE WHEN d.status = 'pending' AND d.lease_token IS NULL THEN d.run_at END AS next_attempt_at
FROM dispatcher.deliveries d
LEFT JOIN dispatcher.webhooks w ON w.id = d.webhook_id
LEFT JOIN dispatcher.events e ON e.message_id = d.message_id
WHERE ($1::bigint IS NULL OR d.webhook_id = $1)
  AND ($2::text IS NULL OR d.status = $2)
  AND ($3::text IS NULL OR e.event_type = $3)
  AND ($4::float8 IS NULL OR d.created_at >= now() - make_interval(secs => $4))
  -- The next page after one that ended at id $6: keyset paging never repeats a row.
  AND ($6::bigint IS NULL OR d.id < $6)
ORDER BY d.id DESC
LIMIT $5;

-- name: get_delivery
SELECT d.id, d.message_id, d.webhook_id, w.service_name, w.url, e.event_type,
       e.payload::text AS payload, e.created_at AS event_created_at, d.kind, d.status,
       d.attempts, d.last_response_status, d.last_error_kind, d.created_at, d.finished_at,
       CASE WHEN d.status = 'pending' AND d.lease_token IS NULL THEN d.run_at END AS next_attempt_at,
       d.lease_token IS NOT NULL AND d.status = 'pending' AND d.run_at > now() AS leased
FROM dispatcher.deliveries d
LEFT JOIN dispatcher.webhooks w ON w.id = d.webhook_id
LEFT JOIN dispatcher.events e ON e.message_id = d.message_id
WHERE d.id = $1;

-- name: delivery_attempts
SELECT attempt, started_at, duration_ms, response_status, response_body, response_truncated,
       error_kind, error_message, retry_in_s, retry_reason
FROM dispatcher.attempts WHERE delivery_id = $1 ORDER BY attempt, id;

-- name: bulk_resend
-- Resend finished deliveries with status $1 created in the last $2 seconds (of webhook $3 if
-- given) to active webhooks, skipping any (event, webhook) that already has a newer delivery,
-- so running it twice does not send twice. $4 = true only counts.
WITH candidates AS (
    SELECT DISTINCT ON (d.message_id, d.webhook_id) d.message_id, d.webhook_id
    FROM dispatcher.deliveries d
    JOIN dispatcher.webhooks w ON w.id = d.webhook_id AND w.status = 'active'
    WHERE d.status = $1
      AND d.kind <> 'test'
      AND d.created_at >= now() - make_interval(secs => $2)
      AND ($3::bigint IS NULL OR d.webhook_id = $3)
      AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries newer
                      WHERE newer.message_id = d.message_id AND newer.webhook_id = d.webhook_id
                        AND newer.id > d.id)
), inserted AS (
    INSERT INTO dispatcher.deliveries (message_id, webhook_id, kind)
    SELECT message_id, webhook_id, 'resend' FROM candidates WHERE NOT $4
    RETURNING id
)
SELECT (SELECT count(*) FROM candidates) AS matched, (SELECT count(*) FROM inserted) AS resent;

-- name: notify
SELECT pg_notify('dispatcher_deliveries', '');

-- name: queue_stats
-- A lease whose time is up counts as due: lease_batch takes such rows again.
SELECT count(*) FILTER (WHERE run_at <= now()) AS due_now,
       count(*) FILTER (WHERE lease_token IS NULL AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE lease_token IS NOT NULL AND run_at > now()) AS leased,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_due_s
FROM dispatcher.deliveries
WHERE status = 'pending';

-- name: webhook_stats
-- Outcomes per webhook over the last $1 seconds, by when the delivery finished.
SELECT w.id AS webhook_id, w.service_name, w.status,
       count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE d.status = 'failed') AS failed,
       count(*) FILTER (WHERE d.status = 'pending') AS pending
FROM dispatcher.webhooks w
LEFT JOIN dispatcher.deliveries d
  ON d.webhook_id = w.id
 AND (d.status = 'pending' OR d.finished_at >= now() - make_interval(secs => $1))
GROUP BY w.id
ORDER BY w.id;
