-- Named queries, loaded once by dispatcher.store. Values are always $n parameters.

-- name: lease_batch
-- $1 batch size, $2 lease seconds, $3 webhook ids with no free slot, $4 this batch's lease token,
-- $5/$6 webhooks with attempts in flight and their free slots, $7 the per-webhook cap, $8 the
-- round-robin cursor (visit webhooks with a greater id first), $9 how many webhooks to visit.
--
-- Every step reads rows in proportion to the batch or to the webhooks with pending rows, never
-- to the backlog: each reads one webhook's range of deliveries_pending, or rows by primary key.
-- The daemon runs this on a connection that allows only index scans and nested loops
-- (store.HOT_SETTINGS), so no plan, generic or custom, can trade these paths for a scan.
WITH RECURSIVE heads AS (
    -- A loose index scan: one probe per webhook with pending rows, in webhook order, yields each
    -- webhook's head, its earliest run_at. The head is in the past exactly when it has due work.
    (SELECT d.webhook_id, d.run_at, d.id, 1 AS visited
     FROM dispatcher.deliveries d
     WHERE d.status = 'pending' AND d.webhook_id > $8
     ORDER BY d.webhook_id, d.run_at, d.id
     LIMIT 1)
    UNION ALL
    SELECT nxt.webhook_id, nxt.run_at, nxt.id, h.visited + 1
    FROM heads h
    CROSS JOIN LATERAL (
        SELECT d.webhook_id, d.run_at, d.id
        FROM dispatcher.deliveries d
        WHERE d.status = 'pending' AND d.webhook_id > h.webhook_id
        ORDER BY d.webhook_id, d.run_at, d.id
        LIMIT 1) nxt
    WHERE h.visited < $9
), eligible AS (
    -- Webhooks with due work and a free slot here.
    SELECT h.webhook_id, h.run_at AS head, h.id AS head_id, coalesce(busy.free, $7::int) AS free
    FROM heads h
    LEFT JOIN unnest($5::bigint[], $6::int[]) AS busy(webhook_id, free)
      ON busy.webhook_id = h.webhook_id
    WHERE h.run_at <= now() AND h.webhook_id <> ALL ($3::bigint[])
), candidates AS (
    -- Each eligible webhook's oldest due rows from its own index range, starting at its head
    -- (the scan seeks past index entries of rows leased or finished since the last vacuum): no
    -- more than its free slots, and no more than an even share of the batch, so the rows locked
    -- here and not leased are at most one per webhook. SKIP LOCKED lets other instances lease
    -- disjoint rows at the same time.
    SELECT e.webhook_id, e.head, c.id, c.run_at
    FROM eligible e
    CROSS JOIN LATERAL (
        SELECT d.id, d.run_at
        FROM dispatcher.deliveries d
        WHERE d.webhook_id = e.webhook_id AND d.status = 'pending'
          AND (d.run_at, d.id) >= (e.head, e.head_id) AND d.run_at <= now()
        ORDER BY d.run_at, d.id
        LIMIT least(e.free, ceil($1::float8 / (SELECT count(*) FROM eligible))::int)
        FOR UPDATE SKIP LOCKED) c
), chosen AS (
    -- Interleave the webhooks: every webhook's first row, then every webhook's second row, and
    -- so on, oldest heads first. One webhook's backlog cannot fill the batch while another
    -- webhook has a due row.
    SELECT r.id
    FROM (SELECT c.id, c.head,
                 row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.run_at, c.id) AS n
          FROM candidates c) r
    ORDER BY r.n, r.head, r.id
    LIMIT $1
), leased AS (
    -- The lease is a visibility timeout: run_at moves past the attempt's deadline, so rows of a
    -- crashed process become due again on their own. The token fences out late writes. The
    -- rows are locked and were checked above; the id array leaves the primary key as the path.
    UPDATE dispatcher.deliveries d
    SET run_at = now() + make_interval(secs => $2::float8),
        lease_token = $4::uuid,
        attempts = d.attempts + 1
    WHERE d.id = ANY (ARRAY(SELECT id FROM chosen))
    RETURNING d.id, d.message_id, d.webhook_id, d.attempts
), scan AS (
    -- What the loop needs to decide when to lease next, from the heads already read: seconds
    -- until the earliest head (NULL when nothing is pending; leased rows count, due when their
    -- lease expires), and where the next lease resumes when this one stopped at $9 webhooks.
    SELECT (SELECT extract(epoch FROM min(h.run_at) - now())::float8 FROM heads h) AS next_due_s,
           (SELECT CASE WHEN count(*) >= $9 THEN max(h.webhook_id) ELSE 0 END
            FROM heads h) AS next_cursor
)
-- One row even when nothing was leased: its delivery columns are NULL.
SELECT s.next_due_s, s.next_cursor, l.id, l.message_id, l.webhook_id, l.attempts, e.event_type,
       e.payload::text AS payload, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
           AS previous_secret
FROM scan s
LEFT JOIN (leased l
           -- LIMIT 1 keeps each lookup a subquery run once per leased row by primary key: as
           -- a plain join, a plan made on an empty table may hash a scan of the whole table.
           CROSS JOIN LATERAL (SELECT e.event_type, e.payload, e.created_at
                               FROM dispatcher.events e
                               WHERE e.message_id = l.message_id LIMIT 1) e
           CROSS JOIN LATERAL (SELECT w.url, w.secret, w.previous_secret,
                                      w.previous_secret_expires_at
                               FROM dispatcher.webhooks w
                               WHERE w.id = l.webhook_id LIMIT 1) w) ON true;

-- name: record_outcomes
-- One row per finished attempt, as parallel arrays. A row whose lease token no longer matches
-- (the lease expired and another worker took it, or the webhook was disabled) changes nothing.
WITH o AS MATERIALIZED (
    -- Unnested once: however the join below is planned, a rescan reads this in memory.
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
    -- The id array again, for the planner: with it every join order reads deliveries by
    -- primary key; without it, a plan made on an empty table may walk the whole table. The
    -- token alone fences (every way out of 'pending' clears it), and naming the status here
    -- would offer the planner the partial index deliveries_pending, a walk of every pending row.
    WHERE d.id = ANY ($1::bigint[])
      AND d.id = o.delivery_id AND d.lease_token = o.lease_token
    -- The attempt log takes its columns from here, so it needs no second join.
    RETURNING o.*
), logged AS (
    INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms,
                                     response_status, response_body, response_truncated,
                                     error_kind, error_message)
    SELECT u.delivery_id, u.attempt, u.started_at, u.duration_ms, u.response_status,
           u.response_body, u.response_truncated, u.error_kind, u.error_message
    FROM updated u
    RETURNING delivery_id
)
-- The deliveries whose outcome was written; the rest of the batch was refused.
SELECT coalesce(array_agg(delivery_id), '{}') FROM logged;

-- name: release_leases
-- Hand back leased rows that were never attempted: due at once, and the attempt not counted.
-- Planned like record_outcomes: by primary key whatever the join order, fenced by the token.
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS r(id, lease_token)
)
UPDATE dispatcher.deliveries d
SET run_at = now(), lease_token = NULL, attempts = d.attempts - 1
FROM r
WHERE d.id = ANY ($1::bigint[]) AND d.id = r.id AND d.lease_token = r.lease_token;

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
-- Examine the next $2 events older than $1 seconds after the key ($3, $4), oldest first, and
-- delete those no delivery refers to any more. The caller pages through with the returned key,
-- so events still referenced (resent, or a backlog older than retention) are stepped over once
-- per sweep instead of being read again by every statement.
WITH examined AS (
    SELECT e.message_id, e.created_at
    FROM dispatcher.events e
    WHERE e.created_at < now() - make_interval(secs => $1::float8)
      AND (e.created_at, e.message_id) > ($3::timestamptz, $4::uuid)
    ORDER BY e.created_at, e.message_id
    LIMIT $2
), deleted AS (
    DELETE FROM dispatcher.events e
    WHERE e.message_id = ANY (ARRAY(
        SELECT x.message_id FROM examined x
        WHERE NOT EXISTS (SELECT 1 FROM dispatcher.deliveries d
                          WHERE d.message_id = x.message_id)))
    RETURNING 1
), last AS (
    SELECT x.created_at, x.message_id FROM examined x
    ORDER BY x.created_at DESC, x.message_id DESC
    LIMIT 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM examined) AS examined,
       (SELECT created_at FROM last) AS last_created_at,
       (SELECT message_id FROM last) AS last_message_id;
