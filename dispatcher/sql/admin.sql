-- Named queries for webhooks and the event-type catalog, loaded once by dispatcher.manage.admin.

-- name: webhook_columns
-- (a fragment, not a query: the columns every webhook read returns)
id, service_name, url, description, secret, event_types, status, created_at, updated_at,
rate_limit, max_concurrency, retry_policy, disabled_reason, disabled_at,
CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret,
CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
    AS previous_secret_expires_at

-- name: health_columns
-- (a fragment, not a query: a webhook's health from its webhook_health row `h`, which may be
-- missing: a webhook just inserted, read in the same statement. The booleans use the
-- database's clock, so every surface agrees on them.)
coalesce(h.consecutive_failures, 0) AS consecutive_failures, h.first_failure_at,
h.last_failure_at, h.last_error, h.breaker_until, h.breaker_opened_at,
coalesce(h.breaker_trips, 0) AS breaker_trips, h.throttled_at,
coalesce(h.breaker_until > now(), false) AS breaker_open,
coalesce(h.throttled_at > now() - interval '1 minute', false) AS rate_limited

-- name: add_webhook
WITH w AS (
    INSERT INTO dispatcher.webhooks
        (service_name, url, description, event_types, rate_limit, retry_policy, max_concurrency)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING {webhook_columns}
)
SELECT w.*, {health_columns}
FROM w LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id;

-- name: get_webhook
WITH w AS (SELECT {webhook_columns} FROM dispatcher.webhooks WHERE id = $1)
SELECT w.*, {health_columns}
FROM w LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id;

-- name: lock_webhook
SELECT {webhook_columns} FROM dispatcher.webhooks WHERE id = $1 FOR UPDATE;

-- name: webhook_summary_columns
-- (a fragment, not a query: what a listing shows of each webhook `w`; never the secret)
w.id, w.service_name, w.url, w.description, w.status, w.event_types,
cardinality(w.event_types) AS event_type_count, w.created_at, w.updated_at,
w.rate_limit, w.max_concurrency, w.retry_policy, w.disabled_reason, w.disabled_at

-- name: list_webhooks
-- Every webhook with its health and its delivery counts over the last $1 seconds.
SELECT {webhook_summary_columns}, {health_columns},
       coalesce(c.total, 0) AS deliveries, coalesce(c.failed, 0) AS failed,
       coalesce(c.succeeded, 0) AS succeeded
FROM dispatcher.webhooks w
LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id
LEFT JOIN (
    SELECT webhook_id, count(*) AS total, count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded
    FROM dispatcher.deliveries
    WHERE created_at >= now() - make_interval(secs => $1)
    GROUP BY webhook_id
) c ON c.webhook_id = w.id
ORDER BY w.id;

-- name: list_webhooks_only
-- Every webhook with its health, without delivery counts (the console counts those from its
-- own history).
SELECT {webhook_summary_columns}, {health_columns}
FROM dispatcher.webhooks w
LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id
ORDER BY w.id;

-- name: update_webhook
-- NULL leaves a name, URL or description as it is; the rate limit, the retry policy and the
-- concurrency cap change (to NULL too) only where their flag, $5, $7 and $9, is true.
WITH w AS (
    UPDATE dispatcher.webhooks
    SET service_name = coalesce($2, service_name),
        url = coalesce($3, url),
        description = coalesce($4, description),
        rate_limit = CASE WHEN $5::bool THEN $6::float8 ELSE rate_limit END,
        retry_policy = CASE WHEN $7::bool THEN $8::text ELSE retry_policy END,
        max_concurrency = CASE WHEN $9::bool THEN $10::int ELSE max_concurrency END
    WHERE id = $1
    RETURNING {webhook_columns}
)
SELECT w.*, {health_columns}
FROM w LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id;

-- name: set_event_types
WITH w AS (
    UPDATE dispatcher.webhooks SET event_types = $2 WHERE id = $1 RETURNING {webhook_columns}
)
SELECT w.*, {health_columns}
FROM w LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id;

-- name: rotate_secret
-- A new secret; the old one keeps signing (as a second signature) for $2 seconds.
WITH w AS (
    UPDATE dispatcher.webhooks
    SET previous_secret = CASE WHEN $2::float8 > 0 THEN secret END,
        previous_secret_expires_at = CASE WHEN $2::float8 > 0
                                          THEN now() + make_interval(secs => $2::float8) END,
        secret = dispatcher.generate_secret()
    WHERE id = $1
    RETURNING {webhook_columns}
)
SELECT w.*, {health_columns}
FROM w LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = w.id;

-- name: enable_webhook
-- Clears why it was disabled and, only when it was disabled, gives it a fresh start: no
-- failure streak, the breaker closed. The last failure and error stay as history. Enabling a
-- webhook that is active changes nothing, so it cannot cut short a breaker probe in flight.
WITH old AS (
    SELECT status FROM dispatcher.webhooks WHERE id = $1 FOR UPDATE
), enabled AS (
    UPDATE dispatcher.webhooks SET status = 'active', disabled_reason = NULL, disabled_at = NULL
    WHERE id = $1 AND (SELECT status FROM old) = 'disabled'
    RETURNING id
), reset AS (
    UPDATE dispatcher.webhook_health
    SET consecutive_failures = 0, first_failure_at = NULL, breaker_failures = 0,
        breaker_until = NULL, breaker_opened_at = NULL, breaker_trips = 0,
        probe_delivery_id = NULL, failing_since = NULL
    WHERE webhook_id = (SELECT id FROM enabled)
    RETURNING webhook_id
)
SELECT (SELECT status FROM old) AS old_status, (SELECT count(*) FROM reset) AS reset;

-- name: disable_webhook
-- The webhooks_disable trigger cancels the pending deliveries counted here; it fires, and so
-- the count is not zero, only when the webhook was active.
WITH old_status AS (
    SELECT status FROM dispatcher.webhooks WHERE id = $1
), pending AS (
    SELECT count(*) AS n FROM dispatcher.deliveries
    WHERE webhook_id = $1 AND status = 'pending' AND (SELECT status FROM old_status) = 'active'
), updated AS (
    -- A webhook already disabled keeps the reason and time it was disabled with.
    UPDATE dispatcher.webhooks
    SET status = 'disabled',
        disabled_reason = CASE WHEN status = 'active' THEN 'manual'
                               ELSE coalesce(disabled_reason, 'manual') END,
        disabled_at = CASE WHEN status = 'active' THEN now() ELSE coalesce(disabled_at, now()) END
    WHERE id = $1
    RETURNING {webhook_columns}
)
SELECT updated.*, {health_columns}, (SELECT n FROM pending) AS cancelled
FROM updated LEFT JOIN dispatcher.webhook_health h ON h.webhook_id = updated.id;

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

-- name: list_builtin_event_types
-- The operator event types ($1, with their descriptions $2), which are never catalog rows.
SELECT b.name, b.description, NULL::text AS sample, NULL::timestamptz AS created_at,
       (SELECT count(*) FROM dispatcher.webhooks w WHERE b.name = ANY (w.event_types)) AS webhooks
FROM unnest($1::text[], $2::text[]) AS b(name, description)
ORDER BY b.name;

-- name: remove_event_type
DELETE FROM dispatcher.event_types WHERE name = $1 RETURNING name;

-- name: unknown_event_types
-- The types in $1 missing from a non-empty catalog ('*' and the built-in operator types in
-- $2 are always known).
SELECT coalesce(array_agg(t ORDER BY t), '{}')
FROM unnest($1::text[]) t
WHERE t <> '*' AND t <> ALL ($2::text[])
  AND EXISTS (SELECT 1 FROM dispatcher.event_types)
  AND NOT EXISTS (SELECT 1 FROM dispatcher.event_types c WHERE c.name = t);

-- name: event_type_sample
SELECT sample::text FROM dispatcher.event_types WHERE name = $1;

-- name: insert_test_delivery
-- A test attempt's delivery, leased to the CLI from the start so no daemon picks it up. It is
-- counted in the webhook's attempts in flight like a daemon's lease (its outcome write
-- subtracts it), with the same reset rule as lease_batch; a test is sent even at the cap.
WITH inserted AS (
    INSERT INTO dispatcher.deliveries (message_id, webhook_id, kind, attempts, run_at, lease_token)
    VALUES ($1, $2, 'test', 1, now() + make_interval(secs => $3::float8), $4)
    RETURNING id, webhook_id, run_at
), counted AS (
    UPDATE dispatcher.webhook_health h
    SET in_flight = CASE WHEN h.leased_until <= now() THEN 0 ELSE h.in_flight END + 1,
        slots_reset_at = CASE WHEN h.leased_until <= now()
                              THEN greatest(h.slots_reset_at, now()) ELSE h.slots_reset_at END,
        leased_until = greatest(h.leased_until, i.run_at)
    FROM inserted i
    WHERE h.webhook_id = i.webhook_id
)
SELECT id, run_at AS lease_until FROM inserted;
