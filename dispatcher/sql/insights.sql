-- Read-only queries behind the console's overview: delivery outcomes per hour and small counts.

-- name: hourly_outcomes
-- Deliveries that finished in each of the last 24 UTC hours (the current hour last), succeeded
-- against failed, of webhook $1 or of all webhooks when $1 is NULL. An hour with none is a row
-- of zeros, so the chart always has 24 bars. `status <> 'pending'` leaves out deliveries_active
-- (the backlog), and the range on finished_at reads only the history partitions it overlaps,
-- through their deliveries_finished index.
WITH hours AS (
    SELECT generate_series(date_trunc('hour', now(), 'UTC') - interval '23 hours',
                           date_trunc('hour', now(), 'UTC'), interval '1 hour') AS hour
), finished AS (
    SELECT date_trunc('hour', finished_at, 'UTC') AS hour,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM dispatcher.deliveries
    WHERE status <> 'pending'
      AND finished_at >= date_trunc('hour', now(), 'UTC') - interval '23 hours'
      AND ($1::bigint IS NULL OR webhook_id = $1)
    GROUP BY 1
)
SELECT h.hour, coalesce(f.succeeded, 0) AS succeeded, coalesce(f.failed, 0) AS failed
FROM hours h
LEFT JOIN finished f USING (hour)
ORDER BY h.hour;

-- name: pending_of_webhook
-- What disabling or deleting webhook $1 would cancel.
SELECT count(*) FROM dispatcher.deliveries WHERE webhook_id = $1 AND status = 'pending';

-- name: webhook_names
-- For the delivery log's webhook filter.
SELECT id, service_name FROM dispatcher.webhooks ORDER BY lower(service_name), id;

-- name: outcomes_by_hour
-- Deliveries that finished in [$1, $2), per UTC hour and webhook. Both bounds walk the
-- deliveries_finished index of the history partitions they overlap.
SELECT date_trunc('hour', finished_at, 'UTC') AS hour, webhook_id,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM dispatcher.deliveries
WHERE status <> 'pending'
  AND finished_at >= $1
  AND finished_at < $2
  AND status IN ('succeeded', 'failed')
GROUP BY 1, 2;

-- name: clock
SELECT now() AS now, date_trunc('hour', now(), 'UTC') AS hour;
