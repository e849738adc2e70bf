-- Named queries, loaded once by dispatcher.store. Values are always $n parameters.

-- name: lease_batch
-- $1 batch size, $2 lease seconds, $3 webhook ids with no free slot, $4 this batch's lease token,
-- $5/$6 webhooks with attempts in flight and their free slots, $7 the per-webhook cap of a
-- webhook with none of its own (max_concurrency), $8 the round-robin cursor (visit webhooks with
-- a greater id first), $9 how many webhooks to visit, $10 seconds to wait before looking again
-- at a webhook at its cap over all instances.
--
-- Every step reads rows in proportion to the batch or to the webhooks with pending rows, never
-- to the backlog: each reads one webhook's range of deliveries_pending, or rows by id. It names
-- deliveries_active, the pending rows' partition: the history (migration 008) never grows the
-- table or the indexes the lease reads, and no plan has a partition of it to consider.
-- The daemon runs this on a connection that allows only index scans and nested loops
-- (store.HOT_SETTINGS), so no plan, generic or custom, can trade these paths for a scan.
WITH RECURSIVE heads AS (
    -- A loose index scan: one probe per webhook with pending rows, in webhook order, yields each
    -- webhook's head, its earliest run_at. The head is in the past exactly when it has due work.
    (SELECT d.webhook_id, d.run_at, d.id, 1 AS visited
     FROM dispatcher.deliveries_active d
     WHERE d.status = 'pending' AND d.webhook_id > $8
     ORDER BY d.webhook_id, d.run_at, d.id
     LIMIT 1)
    UNION ALL
    SELECT nxt.webhook_id, nxt.run_at, nxt.id, h.visited + 1
    FROM heads h
    CROSS JOIN LATERAL (
        SELECT d.webhook_id, d.run_at, d.id
        FROM dispatcher.deliveries_active d
        WHERE d.status = 'pending' AND d.webhook_id > h.webhook_id
        ORDER BY d.webhook_id, d.run_at, d.id
        LIMIT 1) nxt
    WHERE h.visited < $9
), due AS (
    -- The heads due now, with their webhook's gate read by primary key: a rate limit, a circuit
    -- breaker (open until breaker_until, then ready for one probe), and whether it was at its
    -- cap over all instances. This unlocked read only plans the next lease (`scan`); what is
    -- taken is decided on the locked gate below.
    SELECT h.webhook_id, h.run_at AS head, h.id AS head_id, g.gate, g.rate_limit,
           g.breaker_until, g.full
    FROM heads h
    LEFT JOIN LATERAL (SELECT g.webhook_id AS gate, g.rate_limit, g.breaker_until,
                              g.leased_until > now()
                                  AND g.in_flight >= coalesce(g.max_concurrency, $7::int) AS full
                       FROM dispatcher.webhook_health g
                       WHERE g.webhook_id = h.webhook_id LIMIT 1) g ON true
    WHERE h.run_at <= now() AND h.webhook_id <> ALL ($3::bigint[])
), gates AS (
    -- Lock the gate of every due webhook that may send now: its count of attempts in flight
    -- over all instances, its tokens and its probe change in `spent` below. SKIP LOCKED:
    -- another instance is leasing for it this moment, and this lease leaves the webhook alone.
    -- A locked row is read at its latest committed version, whatever this statement's snapshot
    -- saw, so in_flight here is exact across instances; a count of its leased rows from
    -- deliveries_pending would read the snapshot, which predates the lock, and miss the leases
    -- another instance committed meanwhile. A breaker reopened since `due` read it is read
    -- again here, and excluded.
    SELECT g.webhook_id, g.breaker_until,
           coalesce(g.max_concurrency, $7::int) AS cap,
           -- Past the latest deadline granted, every lease counted has expired: its holder is
           -- dead, or its late write is fenced out by the token. The count starts again from 0,
           -- and forgets the leases that ended by then (see `spent`).
           CASE WHEN g.leased_until <= now() THEN 0 ELSE g.in_flight END AS in_flight,
           CASE WHEN g.leased_until <= now() THEN greatest(g.slots_reset_at, now())
                ELSE g.slots_reset_at END AS reset_at,
           -- The bucket refilled to now; it holds a second's worth at most (one token at least).
           CASE WHEN g.rate_limit IS NOT NULL THEN
               least(greatest(g.rate_limit, 1),
                     coalesce(g.tokens + g.rate_limit
                                  * extract(epoch FROM now() - g.tokens_at)::float8,
                              greatest(g.rate_limit, 1)))
           END AS tokens
    FROM dispatcher.webhook_health g
    WHERE g.webhook_id = ANY (ARRAY(SELECT d.webhook_id FROM due d))
      AND (g.breaker_until IS NULL OR g.breaker_until <= now())
    FOR UPDATE SKIP LOCKED
), eligible AS (
    -- Webhooks with due work and a free slot, with how many rows each may take: its free slots
    -- here (from its own cap), its free slots over all instances, its whole tokens, and a
    -- single probe when its breaker is ready for one. A webhook without a health row (none
    -- should lack one) has no gate to lock, and keeps only each instance's own cap.
    SELECT e.webhook_id, e.head, e.head_id, e.free
    FROM (SELECT d.webhook_id, d.head, d.head_id,
                 least(coalesce(busy.free, gt.cap, $7::int),
                       gt.cap - gt.in_flight,
                       CASE WHEN gt.breaker_until IS NOT NULL THEN 1 END,
                       floor(gt.tokens)::int) AS free
          FROM due d
          LEFT JOIN gates gt ON gt.webhook_id = d.webhook_id
          LEFT JOIN unnest($5::bigint[], $6::int[]) AS busy(webhook_id, free)
            ON busy.webhook_id = d.webhook_id
          WHERE gt.webhook_id IS NOT NULL OR d.gate IS NULL) e
    -- One with nothing free takes no share of the batch below.
    WHERE e.free > 0
), candidates AS (
    -- Each eligible webhook's oldest due rows from its own index range, starting at its head
    -- (the scan seeks past index entries of rows leased or finished since the last vacuum): no
    -- more than its free slots, and no more than an even share of the batch, so the rows locked
    -- here and not leased are at most one per webhook. SKIP LOCKED lets other instances lease
    -- disjoint rows at the same time. A row's old lease (token and deadline, when it expired)
    -- decides below whether it is counted against the cap again.
    SELECT e.webhook_id, e.head, c.id, c.run_at, c.lease_token IS NULL AS fresh
    FROM eligible e
    CROSS JOIN LATERAL (
        SELECT d.id, d.run_at, d.lease_token
        FROM dispatcher.deliveries_active d
        WHERE d.webhook_id = e.webhook_id AND d.status = 'pending'
          AND (d.run_at, d.id) >= (e.head, e.head_id) AND d.run_at <= now()
        ORDER BY d.run_at, d.id
        LIMIT least(e.free, ceil($1::float8 / (SELECT count(*) FROM eligible))::int)
        FOR UPDATE SKIP LOCKED) c
), chosen AS (
    -- Interleave the webhooks: every webhook's first row, then every webhook's second row, and
    -- so on, oldest heads first. One webhook's backlog cannot fill the batch while another
    -- webhook has a due row.
    SELECT r.id, r.webhook_id, r.run_at, r.fresh
    FROM (SELECT c.id, c.webhook_id, c.head, c.run_at, c.fresh,
                 row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.run_at, c.id) AS n
          FROM candidates c) r
    ORDER BY r.n, r.head, r.id
    LIMIT $1
), leased AS (
    -- The lease is a visibility timeout: run_at moves past the attempt's deadline, so rows of a
    -- crashed process become due again on their own. The token fences out late writes. The
    -- rows are locked and were checked above; the id array leaves the id index as the path.
    UPDATE dispatcher.deliveries_active d
    SET run_at = now() + make_interval(secs => $2::float8),
        lease_token = $4::uuid,
        attempts = d.attempts + 1
    WHERE d.id = ANY (ARRAY(SELECT id FROM chosen))
    RETURNING d.id, d.message_id, d.webhook_id, d.attempts, d.run_at
), taken AS (
    -- Per webhook: the rows taken, and how many of them were not counted against its cap yet:
    -- rows not leased before, and rows whose expired lease a reset forgot (it ended no later
    -- than the reset). A row whose counted lease expired moves from its old holder, fenced out
    -- now, to this lease: it stays counted once.
    SELECT c.webhook_id, count(*)::int AS n, min(c.id) AS first_id,
           count(*) FILTER (WHERE c.fresh OR c.run_at <= gt.reset_at)::int AS counted
    FROM chosen c
    JOIN gates gt ON gt.webhook_id = c.webhook_id
    GROUP BY c.webhook_id
), spent AS (
    -- On the gate rows locked above: count the attempts taken, spend the tokens taken, and
    -- claim the probe sent. The probe holds the breaker for its lease; if its outcome never
    -- comes (a crash), another probe goes when that lease would have expired.
    UPDATE dispatcher.webhook_health g
    SET tokens = coalesce(gt.tokens - coalesce(n.n, 0), g.tokens),
        tokens_at = CASE WHEN gt.tokens IS NULL THEN g.tokens_at ELSE now() END,
        throttled_at = CASE WHEN gt.tokens - coalesce(n.n, 0) < 1 THEN now()
                            ELSE g.throttled_at END,
        breaker_until = CASE WHEN gt.breaker_until IS NOT NULL AND n.n > 0
                             THEN now() + make_interval(secs => $2::float8)
                             ELSE g.breaker_until END,
        probe_delivery_id = CASE WHEN gt.breaker_until IS NOT NULL AND n.n > 0
                                 THEN n.first_id ELSE g.probe_delivery_id END,
        -- A reset is written only with rows taken: the count and the time it was reset at go
        -- together.
        in_flight = CASE WHEN n.n > 0 THEN gt.in_flight + n.counted ELSE g.in_flight END,
        slots_reset_at = CASE WHEN n.n > 0 THEN gt.reset_at ELSE g.slots_reset_at END,
        leased_until = CASE WHEN n.n > 0
                            THEN greatest(g.leased_until,
                                          now() + make_interval(secs => $2::float8))
                            ELSE g.leased_until END
    FROM gates gt
    LEFT JOIN taken n ON n.webhook_id = gt.webhook_id
    WHERE g.webhook_id = ANY (ARRAY(SELECT webhook_id FROM gates))
      AND g.webhook_id = gt.webhook_id
      -- Nothing taken leaves the bucket as it was (it refills from tokens_at whenever read):
      -- no new row version, except to note now and then that the limit held rows back.
      AND (n.n > 0 OR (gt.tokens IS NOT NULL
                       AND (g.throttled_at IS NULL OR g.throttled_at < now() - interval '10 s')))
), scan AS (
    -- What the loop needs to decide when to lease next, from the heads already read: seconds
    -- until the earliest head can go (NULL when nothing is pending; leased rows count, due
    -- when their lease expires; an open breaker's rows when it may probe; a rate-limited
    -- webhook's when its next token comes; a webhook at its cap over all instances $10 s from
    -- now, since the outcome write that frees a slot may be another instance's, and tells this
    -- one nothing), and where the next lease resumes when this one stopped at $9 webhooks.
    SELECT (SELECT extract(epoch FROM min(
                CASE WHEN d.breaker_until > now() THEN d.breaker_until
                     WHEN coalesce(gt.in_flight >= gt.cap, d.full)
                     THEN now() + make_interval(secs => $10::float8)
                     WHEN d.rate_limit IS NOT NULL
                     THEN now() + make_interval(secs => 1.0 / d.rate_limit)
                     ELSE h.run_at END) - now())::float8
            FROM heads h
            LEFT JOIN due d ON d.webhook_id = h.webhook_id
            LEFT JOIN gates gt ON gt.webhook_id = h.webhook_id) AS next_due_s,
           (SELECT CASE WHEN count(*) >= $9 THEN max(h.webhook_id) ELSE 0 END
            FROM heads h) AS next_cursor
)
-- One row even when nothing was leased: its delivery columns are NULL.
SELECT s.next_due_s, s.next_cursor, l.id, l.message_id, l.webhook_id, l.attempts, e.event_type,
       e.payload::text AS payload, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
           AS previous_secret, w.retry_policy, coalesce(w.max_concurrency, $7::int) AS cap,
       l.run_at AS lease_until
FROM scan s
LEFT JOIN (leased l
           -- LIMIT 1 keeps each lookup a subquery run once per leased row by primary key: as
           -- a plain join, a plan made on an empty table may hash a scan of the whole table.
           CROSS JOIN LATERAL (SELECT e.event_type, e.payload, e.created_at
                               FROM dispatcher.events e
                               WHERE e.message_id = l.message_id LIMIT 1) e
           CROSS JOIN LATERAL (SELECT w.url, w.secret, w.previous_secret,
                                      w.previous_secret_expires_at, w.retry_policy,
                                      w.max_concurrency
                               FROM dispatcher.webhooks w
                               WHERE w.id = l.webhook_id LIMIT 1) w) ON true;

-- name: record_outcomes
-- One row per finished attempt, as parallel arrays ($1-$13). A row whose lease token no longer
-- matches (the lease expired and another worker took it, or the webhook was disabled) changes
-- nothing. The same statement keeps each webhook's health row from what the batch did to it,
-- one entry per webhook ($14-$21, summed up by the caller, in the order the attempts finished;
-- $22 the deliveries that failed): its failure streak, and its circuit breaker ($23 failures to
-- open it, $24 the first cool-off, doubling up to $25). It returns the deliveries written and,
-- as JSON, the webhooks whose health needs the daemon's attention: a breaker opened or closed,
-- or a streak old enough to be reported ($26 s) or to disable the webhook ($27 s and $28
-- attempts), or a reported streak that has ended. The deliveries written free their slots in
-- their webhook's count of attempts in flight over all instances (see lease_batch); $29 holds
-- each one's lease deadline.
WITH o AS MATERIALIZED (
    -- Unnested once: however the join below is planned, a rescan reads this in memory.
    SELECT *
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[],
                $6::timestamptz[], $7::int[], $8::int[], $9::text[], $10::bool[],
                $11::text[], $12::text[], $13::text[], $29::timestamptz[])
      AS o(delivery_id, lease_token, status, retry_in_s, attempt,
           started_at, duration_ms, response_status, response_body, response_truncated,
           error_kind, error_message, retry_reason, lease_until)
), retried AS (
    -- A retry stays in deliveries_active, due again at its new run_at.
    UPDATE dispatcher.deliveries_active d
    SET run_at = now() + make_interval(secs => o.retry_in_s),
        lease_token = NULL,
        last_response_status = o.response_status,
        last_error_kind = o.error_kind
    FROM o
    -- The id array again, for the planner: with it every join order reads deliveries by id;
    -- without it, a plan made on an empty table may walk the whole table. The token fences:
    -- every way out of a lease clears or replaces it, and a row that left deliveries_active
    -- (cancelled meanwhile) is not found at all.
    WHERE d.id = ANY ($1::bigint[])
      AND d.id = o.delivery_id AND d.lease_token = o.lease_token AND o.status = 'pending'
    RETURNING d.webhook_id, o.*
), finished AS (
    -- A final outcome moves the row to the history: an explicit DELETE here and INSERT below,
    -- never an UPDATE of the status. That UPDATE would move the row across partitions, and one
    -- racing a lock or update of the same row (the webhook disabled by another instance this
    -- moment, its trigger cancelling this row) fails with "tuple to be locked was already moved
    -- to another partition due to concurrent update" (40001). A DELETE that loses the race
    -- finds no row, and the outcome is refused like any other whose lease was lost.
    DELETE FROM dispatcher.deliveries_active d
    USING o
    WHERE d.id = ANY ($1::bigint[])
      AND d.id = o.delivery_id AND d.lease_token = o.lease_token AND o.status <> 'pending'
    RETURNING d.id, d.message_id, d.webhook_id, d.attempts, d.run_at, d.created_at, d.kind, o.*
), moved AS (
    INSERT INTO dispatcher.deliveries_done
        (id, message_id, webhook_id, status, attempts, run_at, lease_token, created_at,
         finished_at, last_response_status, last_error_kind, kind)
    OVERRIDING SYSTEM VALUE
    SELECT f.id, f.message_id, f.webhook_id, f.status, f.attempts, f.run_at, NULL, f.created_at,
           now(), f.response_status, f.error_kind, f.kind
    FROM finished f
), updated AS (
    -- Every row written, with its webhook: the attempt log takes its columns from here, so it
    -- needs no second join.
    SELECT * FROM retried
    UNION ALL
    SELECT f.webhook_id, f.delivery_id, f.lease_token, f.status, f.retry_in_s, f.attempt,
           f.started_at, f.duration_ms, f.response_status, f.response_body,
           f.response_truncated, f.error_kind, f.error_message, f.retry_reason, f.lease_until
    FROM finished f
), freed AS (
    -- Per webhook, the deadlines of the leases written back here (fenced by their token, so
    -- none was subtracted before); `health` subtracts those still counted.
    SELECT u.webhook_id, array_agg(u.lease_until) AS deadlines
    FROM updated u
    GROUP BY u.webhook_id
), logged AS (
    INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms,
                                     response_status, response_body, response_truncated,
                                     error_kind, error_message, retry_in_s, retry_reason)
    SELECT u.delivery_id, u.attempt, u.started_at, u.duration_ms, u.response_status,
           u.response_body, u.response_truncated, u.error_kind, u.error_message,
           CASE WHEN u.status = 'pending' THEN u.retry_in_s END, u.retry_reason
    FROM updated u
    RETURNING delivery_id
), batch AS (
    -- Per webhook: whether the batch had a success (which ends the failure streak) or another
    -- outcome that is not a breaker failure (which ends the breaker's count), and what came
    -- after the last of each: failures, breaker failures, the first and last failure, the last
    -- error. An attempt whose lease was lost still counts here: the endpoint did answer it.
    SELECT *
    FROM unnest($14::bigint[], $15::bool[], $16::bool[], $17::int[], $18::timestamptz[],
                $19::timestamptz[], $20::text[], $21::int[])
      AS b(webhook_id, any_ok, any_reset, failures, first_failure_at, last_failure_at,
           last_error, breaker_failures)
), health AS (
    -- Every expression reads the row as it is now (h), not as this statement's snapshot saw
    -- it, so a lease that spent tokens or claimed a probe meanwhile is not undone. `was` is
    -- that snapshot, for reporting what changed. A breaker opens at $23 breaker failures in a
    -- row, reopens for a longer cool-off when its probe fails, and closes on any other outcome.
    -- The caller sorts $14 by webhook id, so that writers of several rows (other instances'
    -- outcome writes) lock them in one order and never wait on each other in a cycle.
    UPDATE dispatcher.webhook_health h
    SET in_flight = greatest(0, h.in_flight - {still_counted}),
        consecutive_failures
            = CASE WHEN b.any_ok THEN 0 ELSE h.consecutive_failures END + b.failures,
        first_failure_at = CASE WHEN b.any_ok OR h.first_failure_at IS NULL
                                THEN b.first_failure_at ELSE h.first_failure_at END,
        last_failure_at = coalesce(b.last_failure_at, h.last_failure_at),
        last_error = coalesce(b.last_error, h.last_error),
        breaker_failures
            = CASE WHEN b.any_reset THEN 0 ELSE h.breaker_failures END + b.breaker_failures,
        breaker_until = CASE
            WHEN CASE WHEN b.any_reset THEN 0 ELSE h.breaker_failures END + b.breaker_failures
                 < $23::int THEN NULL
            WHEN h.breaker_until IS NULL OR h.probe_delivery_id = ANY ($22::bigint[])
            THEN now() + make_interval(
                secs => least($25::float8, $24::float8 * 2 ^ least(h.breaker_trips, 30)))
            ELSE h.breaker_until END,
        breaker_trips = CASE
            WHEN CASE WHEN b.any_reset THEN 0 ELSE h.breaker_failures END + b.breaker_failures
                 < $23::int THEN 0
            WHEN h.breaker_until IS NULL OR h.probe_delivery_id = ANY ($22::bigint[])
            THEN h.breaker_trips + 1
            ELSE h.breaker_trips END,
        breaker_opened_at = CASE
            WHEN CASE WHEN b.any_reset THEN 0 ELSE h.breaker_failures END + b.breaker_failures
                 < $23::int THEN NULL
            WHEN h.breaker_until IS NULL THEN now()
            ELSE h.breaker_opened_at END,
        probe_delivery_id = CASE WHEN h.probe_delivery_id = ANY ($1::bigint[]) THEN NULL
                                 ELSE h.probe_delivery_id END
    FROM batch b LEFT JOIN freed f ON f.webhook_id = b.webhook_id,
         dispatcher.webhook_health was
    WHERE h.webhook_id = ANY ($14::bigint[])
      AND h.webhook_id = b.webhook_id AND was.webhook_id = b.webhook_id
      -- A success for a healthy webhook, the common case, writes its count alone; an outcome
      -- refused (its lease lost) for a healthy one writes nothing.
      AND (f.deadlines IS NOT NULL OR b.failures > 0 OR h.consecutive_failures > 0
           OR h.breaker_failures > 0 OR h.breaker_until IS NOT NULL
           OR h.failing_since IS NOT NULL)
    RETURNING h.webhook_id, h.consecutive_failures, h.first_failure_at, h.last_error,
              h.breaker_until, h.breaker_trips, h.failing_since,
              was.breaker_until AS was_breaker_until, was.breaker_trips AS was_breaker_trips
), attention AS (
    SELECT x.webhook_id, x.consecutive_failures, x.last_error, x.breaker_until, x.breaker_trips,
           x.breaker_until IS NOT NULL AND x.was_breaker_until IS NULL AS opened,
           x.was_breaker_until IS NOT NULL AND x.breaker_trips > x.was_breaker_trips AS reopened,
           x.breaker_until IS NULL AND x.was_breaker_until IS NOT NULL AS closed,
           x.consecutive_failures = 0 AND x.failing_since IS NOT NULL AS recovered,
           x.consecutive_failures > 0 AND x.failing_since IS NULL
               AND x.first_failure_at <= now() - make_interval(secs => $26::float8) AS failing,
           x.consecutive_failures >= $28::int
               AND x.first_failure_at <= now() - make_interval(secs => $27::float8) AS disable
    FROM health x
)
SELECT (SELECT coalesce(array_agg(delivery_id), '{}') FROM logged) AS written,
       (SELECT jsonb_agg(a)::text FROM attention a
        WHERE a.opened OR a.reopened OR a.closed OR a.recovered OR a.failing OR a.disable)
           AS attention;

-- name: release_leases
-- Hand back leased rows that were never attempted: due at once, and the attempt not counted.
-- Planned like record_outcomes: by id whatever the join order, fenced by the token.
-- Their slots are free again in their webhooks' counts of attempts in flight ($3: each one's
-- lease deadline, as in record_outcomes).
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[]) AS r(id, lease_token,
                                                                           lease_until)
), released AS (
    UPDATE dispatcher.deliveries_active d
    SET run_at = now(), lease_token = NULL, attempts = d.attempts - 1
    FROM r
    WHERE d.id = ANY ($1::bigint[]) AND d.id = r.id AND d.lease_token = r.lease_token
    RETURNING d.webhook_id, r.lease_until
), freed AS (
    -- In webhook order, as record_outcomes writes health rows.
    SELECT x.webhook_id, array_agg(x.lease_until) AS deadlines FROM released x
    GROUP BY x.webhook_id ORDER BY x.webhook_id
)
UPDATE dispatcher.webhook_health h
SET in_flight = greatest(0, h.in_flight - {still_counted})
FROM freed f
WHERE h.webhook_id = ANY (ARRAY(SELECT webhook_id FROM freed)) AND h.webhook_id = f.webhook_id;

-- name: ping
-- The watchdog's liveness probe: a round trip through the pool and nothing more.
SELECT 1;

-- name: set_limit
UPDATE dispatcher.limits SET value = $2 WHERE name = $1 AND value <> $2;

-- name: sweep_deliveries
-- Delete up to $2 finished deliveries that finished more than $1 seconds ago and before $3 (the
-- lower bound of the oldest range partition, NULL if there is none), and return how many.
-- Range partitions go whole when they expire (dispatcher.ops.partitions); below $3 lie only the
-- legacy and DEFAULT partitions, so the bound keeps these row deletes out of the partitions that
-- are dropped whole, and pruning keeps the statement from reading them. SKIP LOCKED: several
-- instances can sweep at once without waiting on each other.
WITH doomed AS (
    SELECT d.id
    FROM dispatcher.deliveries_done d
    WHERE d.finished_at < least(now() - make_interval(secs => $1::float8), $3::timestamptz)
    ORDER BY d.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM dispatcher.deliveries_done d
WHERE d.id = ANY (ARRAY(SELECT id FROM doomed))
  AND d.finished_at < least(now() - make_interval(secs => $1::float8), $3::timestamptz);

-- name: sweep_attempts
-- As sweep_deliveries, for attempt records that started more than $1 seconds ago and before $3
-- (the oldest range partition's lower bound). Attempts have their own clock: a delivery still
-- pending after retention_s keeps its recent attempts only.
WITH doomed AS MATERIALIZED (
    SELECT a.delivery_id
    FROM dispatcher.attempts a
    WHERE a.started_at < least(now() - make_interval(secs => $1::float8), $3::timestamptz)
    ORDER BY a.started_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    -- By the id array, for the planner (see record_outcomes); with each attempt examined go the
    -- other attempts of its delivery that are past retention too.
    DELETE FROM dispatcher.attempts a
    WHERE a.delivery_id = ANY (ARRAY(SELECT delivery_id FROM doomed))
      AND a.started_at < least(now() - make_interval(secs => $1::float8), $3::timestamptz)
    RETURNING 1
)
SELECT (SELECT count(*) FROM doomed) AS examined, (SELECT count(*) FROM deleted) AS deleted;

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

-- name: disable_unhealthy_webhook
-- Disable webhook $1 for reason $2: 'gone' (it answered 410) at once; 'failing' only when its
-- streak still qualifies ($3 seconds old, $4 attempts). The disable trigger cancels its pending
-- deliveries. Returns nothing when it was already disabled, or has recovered meanwhile, so of
-- several instances only one disables it and reports it.
UPDATE dispatcher.webhooks w
SET status = 'disabled', disabled_reason = $2, disabled_at = now()
FROM dispatcher.webhook_health h
WHERE w.id = $1 AND h.webhook_id = w.id AND w.status = 'active'
  AND ($2 = 'gone'
       OR (h.consecutive_failures >= $4::int
           AND h.first_failure_at <= now() - make_interval(secs => $3::float8)))
RETURNING w.id AS webhook_id, w.service_name, w.url, w.disabled_reason AS reason,
          h.first_failure_at, h.last_error, h.consecutive_failures, w.disabled_at;

-- name: mark_failing
-- Record that webhook $1's streak (older than $2 seconds) is being reported, once per streak.
UPDATE dispatcher.webhook_health h
SET failing_since = h.first_failure_at
FROM dispatcher.webhooks w
WHERE h.webhook_id = $1 AND w.id = h.webhook_id AND w.status = 'active'
  AND h.failing_since IS NULL AND h.consecutive_failures > 0
  AND h.first_failure_at <= now() - make_interval(secs => $2::float8)
RETURNING h.webhook_id, w.service_name, w.url, h.failing_since, h.consecutive_failures,
          h.last_error;

-- name: mark_recovered
-- End the report of webhook $1's streak once a success has ended the streak itself.
WITH reported AS (
    SELECT h.webhook_id, h.failing_since
    FROM dispatcher.webhook_health h
    WHERE h.webhook_id = $1 AND h.failing_since IS NOT NULL AND h.consecutive_failures = 0
    FOR UPDATE
)
UPDATE dispatcher.webhook_health h
SET failing_since = NULL
FROM reported r, dispatcher.webhooks w
WHERE h.webhook_id = r.webhook_id AND w.id = r.webhook_id
RETURNING h.webhook_id, w.service_name, w.url, r.failing_since, now() AS recovered_at;

-- name: publish_event
SELECT dispatcher.publish($1, $2::jsonb);

-- name: health_stats
-- For the metrics gauges: one row per webhook, so a scan of the health table is right here.
SELECT count(*) FILTER (WHERE h.breaker_until > now()) AS breakers_open,
       count(*) FILTER (WHERE h.consecutive_failures > 0 AND w.status = 'active') AS failing
FROM dispatcher.webhook_health h
JOIN dispatcher.webhooks w ON w.id = h.webhook_id;

-- name: still_counted
-- (a fragment, not a query: how many of the leases written back for webhook `h`, whose
-- deadlines are `f.deadlines`, are still counted in h.in_flight. A lease that ended no later
-- than the last reset of the count (slots_reset_at) was forgotten by it: its holder's write,
-- late but not fenced out because no one took the row since, must not free a slot that a
-- lease counted after the reset holds. A deadline not given (NULL) counts.)
(SELECT count(*)::int FROM unnest(f.deadlines) AS t(lease_until)
 WHERE t.lease_until IS NULL OR h.slots_reset_at IS NULL OR t.lease_until > h.slots_reset_at)
