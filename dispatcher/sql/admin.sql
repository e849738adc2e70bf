-- Named queries for the management CLI, loaded once by dispatcher.admin.

-- name: webhook_columns
-- (a fragment, not a query: the columns every webhook read returns)
id, service_name, url, description, secret, event_types, status, created_at, updated_at,
CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret,
CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
    AS previous_secret_expires_at

-- name: add_webhook
INSERT INTO dispatcher.webhooks (service_name, url, description, event_types)
VALUES ($1, $2, $3, $4)
RETURNING {webhook_columns};

-- name: get_webhook
SELECT {webhook_columns} FROM dispatcher.webhooks WHERE id = $1;

-- name: lock_webhook
SELECT {webhook_columns} FROM dispatcher.webhooks WHERE id = $1 FOR UPDATE;

-- name: list_webhooks
-- Every webhook with its delivery counts over the last $1 seconds.
SELECT w.id, w.service_name, w.url, w.description, w.status, w.event_types,
       cardinality(w.event_types) AS event_type_count, w.created_at, w.updated_at,
       coalesce(c.total, 0) AS deliveries, coalesce(c.failed, 0) AS failed
FROM dispatcher.webhooks w
LEFT JOIN (
    SELECT webhook_id, count(*) AS total, count(*) FILTER (WHERE status = 'failed') AS failed
    FROM dispatcher.deliveries
    WHERE created_at >= now() - make_interval(secs => $1)
    GROUP BY webhook_id
) c ON c.webhook_id = w.id
ORDER BY w.id;

-- name: list_webhooks_only
-- Every webhook, without delivery counts (the console counts those from its own history).
SELECT w.id, w.service_name, w.url, w.description, w.status, w.event_types,
       cardinality(w.event_types) AS event_type_count, w.created_at, w.updated_at
FROM dispatcher.webhooks w
ORDER BY w.id;

-- name: update_webhook
-- NULL leaves a field as it is.
UPDATE dispatcher.webhooks
SET service_name = coalesce($2, service_name),
    url = coalesce($3, url),
    description = coalesce($4, description)
WHERE id = $1
RETURNING {webhook_columns};

-- name: set_event_types
UPDATE dispatcher.webhooks SET event_types = $2 WHERE id = $1 RETURNING {webhook_columns};

-- name: rotate_secret
-- A new secret; the old one keeps signing (as a second signature) for $2 seconds.
UPDATE dispatcher.webhooks
SET previous_secret = CASE WHEN $2::float8 > 0 THEN secret END,
    previous_secret_expires_at = CASE WHEN $2::float8 > 0
                                      THEN now() + make_interval(secs => $2::float8) END,
    secret = dispatcher.generate_secret()
WHERE id = $1
RETURNING {webhook_columns};

-- name: set_status
-- The webhooks_disable trigger cancels pending deliveries when this disables a webhook.
UPDATE dispatcher.webhooks SET status = $2 WHERE id = $1 RETURNING {webhook_columns};

-- name: disable_webhook
-- The webhooks_disable trigger cancels the pending deliveries counted here; it fires, and so
-- the count is not zero, only when the webhook was active.
WITH old_status AS (
    SELECT status FROM dispatcher.webhooks WHERE id = $1
), pending AS (
    SELECT count(*) AS n FROM dispatcher.deliveries
    WHERE webhook_id = $1 AND status = 'pending' AND (SELECT status FROM old_status) = 'active'
), updated AS (
    UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1 RETURNING {webhook_columns}
)
SELECT updated.*, (SELECT n FROM pending) AS cancelled FROM updated;

-- name: delete_webhook
-- The webhooks_delete trigger cancels its pending deliveries; their log stays.
WITH pending AS (
    SELECT count(*) AS n FROM dispatcher.deliveries WHERE webhook_id = $1 AND status = 'pending'
), deleted AS (
    DELETE FROM dispatcher.webhooks WHERE id = $1 RETURNING id
)
SELECT (SELECT id FROM deleted) AS id, (SELECT n FROM pending) AS cancelled;

-- name: recent_failures
SELECT a.delivery_id, d.message_id, e.event_type, a.attempt, a.started_at,
       a.response_status, a.error_kind, a.error_message
FROM dispatcher.deliveries d
JOIN dispatcher.attempts a ON a.delivery_id = d.id
LEFT JOIN dispatcher.events e ON e.message_id = d.message_id
WHERE d.webhook_id = $1 AND (a.error_kind IS NOT NULL)
ORDER BY a.id DESC
LIMIT $2;

-- name: add_event_type
INSERT INTO dispatcher.event_types (name, description, sample) VALUES ($1, $2, $3::jsonb)
RETURNING name, description, sample::text AS sample, created_at;

-- name: list_event_types
SELECT t.name, t.description, t.sample::text AS sample, t.created_at,
       (SELECT count(*) FROM dispatcher.webhooks w WHERE t.name = ANY (w.event_types)) AS webhooks
FROM dispatcher.event_types t
ORDER BY t.name;

-- name: remove_event_type
DELETE FROM dispatcher.event_types WHERE name = $1 RETURNING name;

-- name: unknown_event_types
-- The types in $1 missing from a non-empty catalog ('*' is always known).
SELECT coalesce(array_agg(t ORDER BY t), '{}')
FROM unnest($1::text[]) t
WHERE t <> '*'
  AND EXISTS (SELECT 1 FROM dispatcher.event_types)
  AND NOT EXISTS (SELECT 1 FROM dispatcher.event_types c WHERE c.name = t);

-- name: event_type_sample
SELECT sample::text FROM dispatcher.event_types WHERE name = $1;

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

-- name: insert_test_delivery
-- A test attempt's delivery, leased to the CLI from the start so no daemon picks it up.
INSERT INTO dispatcher.deliveries (message_id, webhook_id, kind, attempts, run_at, lease_token)
VALUES ($1, $2, 'test', 1, now() + make_interval(secs => $3::float8), $4)
RETURNING id;

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
       error_kind, error_message
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
