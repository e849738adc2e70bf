-- Named queries for webhooks and the event-type catalog, loaded once by dispatcher.manage.admin.

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

-- name: webhook_summary_columns
-- (a fragment, not a query: what a listing shows of each webhook `w`; never the secret)
w.id, w.service_name, w.url, w.description, w.status, w.event_types,
cardinality(w.event_types) AS event_type_count, w.created_at, w.updated_at

-- name: list_webhooks
-- Every webhook with its delivery counts over the last $1 seconds.
SELECT {webhook_summary_columns},
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
SELECT {webhook_summary_columns}
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

-- name: insert_test_delivery
-- A test attempt's delivery, leased to the CLI from the start so no daemon picks it up.
INSERT INTO dispatcher.deliveries (message_id, webhook_id, kind, attempts, run_at, lease_token)
VALUES ($1, $2, 'test', 1, now() + make_interval(secs => $3::float8), $4)
RETURNING id;
