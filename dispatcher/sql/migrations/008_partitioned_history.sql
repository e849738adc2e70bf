-- Partitioned history: the hot table holds only pending rows, and finished deliveries and
-- attempt records live in time-ranged partitions that retention drops whole.
--
-- Before this, every finished row stayed in the table the lease walks until the retention sweep
-- deleted it, one row at a time: the hot table and its indexes grew with the history, and the
-- sweep's deletes left dead tuples for vacuum behind every lease. Now:
--   deliveries                 PARTITION BY LIST (status)
--     deliveries_active          'pending': due, scheduled and leased rows; the lease's table
--     deliveries_done            the rest, PARTITION BY RANGE (finished_at)
--       deliveries_done_legacy     what had finished before this migration
--       deliveries_done_p...       one per retention_partition_s, made ahead by the daemon
--       deliveries_done_default    whatever no range partition covers
--   attempts                   PARTITION BY RANGE (started_at), likewise _legacy, _p..., _default
--
-- No primary keys: a unique index on a partitioned table must contain the partition key, and
-- (id, status) or (id, finished_at) would not stop two rows with one id. The identity sequence
-- alone keeps ids unique (a finished row keeps its id when it moves), and a plain index on id
-- serves the lookups by id. A row leaves deliveries_active by an explicit DELETE and INSERT
-- (record_outcomes, the cancel trigger), never by an UPDATE of its status: see below.
-- Producers see no change: they insert into dispatcher.events and call dispatcher.publish().

ALTER TABLE dispatcher.deliveries RENAME TO deliveries_old;
ALTER SEQUENCE dispatcher.deliveries_id_seq RENAME TO deliveries_old_id_seq;
ALTER TABLE dispatcher.attempts RENAME TO attempts_old;
ALTER SEQUENCE dispatcher.attempts_id_seq RENAME TO attempts_old_id_seq;

-- An identity column on a partitioned table: PostgreSQL 15 and 16 use it only for rows inserted
-- through the parent, 17 and later for every partition too. Every INSERT that names an id
-- (moving a row) says OVERRIDING SYSTEM VALUE, which both accept.
CREATE TABLE dispatcher.deliveries (
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    message_id           uuid NOT NULL,
    webhook_id           bigint NOT NULL,
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts             integer NOT NULL DEFAULT 0,
    run_at               timestamptz NOT NULL DEFAULT now(),
    lease_token          uuid,
    created_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    last_response_status integer,
    last_error_kind      text,
    kind                 text NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'resend', 'test'))
) PARTITION BY LIST (status);

-- Small and rewritten all the time (leases, retries): vacuumed early and without pauses.
CREATE TABLE dispatcher.deliveries_active PARTITION OF dispatcher.deliveries
    FOR VALUES IN ('pending')
    WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE dispatcher.deliveries_done PARTITION OF dispatcher.deliveries
    FOR VALUES IN ('succeeded', 'failed', 'cancelled')
    PARTITION BY RANGE (finished_at);

-- Catches rows no range partition covers (the daemon was down when one was due to be made), so
-- finishing a delivery never fails for want of a partition. The daemon moves such rows into the
-- partition it makes for them.
CREATE TABLE dispatcher.deliveries_done_default PARTITION OF dispatcher.deliveries_done DEFAULT;

CREATE TABLE dispatcher.attempts (
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    delivery_id        bigint NOT NULL,
    attempt            integer NOT NULL,
    started_at         timestamptz NOT NULL,
    duration_ms        integer NOT NULL,
    response_status    integer,
    response_body      text,
    response_truncated boolean NOT NULL DEFAULT false,
    error_kind         text,
    error_message      text,
    retry_in_s         double precision,
    retry_reason       text
) PARTITION BY RANGE (started_at);

CREATE TABLE dispatcher.attempts_default PARTITION OF dispatcher.attempts DEFAULT;

-- The history so far, one partition per table up to this moment; retention drops each when its
-- upper bound has passed the window, and until then sweeps what in it is past retention. The
-- bound is a value, so the statement is built with format().
DO $$
BEGIN
    EXECUTE format('CREATE TABLE dispatcher.deliveries_done_legacy PARTITION OF'
                   ' dispatcher.deliveries_done FOR VALUES FROM (MINVALUE) TO (%L)', now());
    EXECUTE format('CREATE TABLE dispatcher.attempts_legacy PARTITION OF'
                   ' dispatcher.attempts FOR VALUES FROM (MINVALUE) TO (%L)', now());
END
$$;

-- Every row, with its id. Indexes come after the copy: building them once is cheaper than
-- maintaining them row by row.
INSERT INTO dispatcher.deliveries
    (id, message_id, webhook_id, status, attempts, run_at, lease_token, created_at, finished_at,
     last_response_status, last_error_kind, kind)
OVERRIDING SYSTEM VALUE
SELECT id, message_id, webhook_id, status, attempts, run_at, lease_token, created_at, finished_at,
       last_response_status, last_error_kind, kind
FROM dispatcher.deliveries_old;

INSERT INTO dispatcher.attempts
    (id, delivery_id, attempt, started_at, duration_ms, response_status, response_body,
     response_truncated, error_kind, error_message, retry_in_s, retry_reason)
OVERRIDING SYSTEM VALUE
SELECT id, delivery_id, attempt, started_at, duration_ms, response_status, response_body,
       response_truncated, error_kind, error_message, retry_in_s, retry_reason
FROM dispatcher.attempts_old;

-- New rows get ids above every copied one (is_called false: the next id is this value).
SELECT setval(pg_get_serial_sequence('dispatcher.deliveries', 'id'),
              coalesce((SELECT max(id) FROM dispatcher.deliveries_old), 0) + 1, false);
SELECT setval(pg_get_serial_sequence('dispatcher.attempts', 'id'),
              coalesce((SELECT max(id) FROM dispatcher.attempts_old), 0) + 1, false);

DROP TABLE dispatcher.deliveries_old;
DROP TABLE dispatcher.attempts_old;

CREATE INDEX deliveries_id ON dispatcher.deliveries (id);
CREATE INDEX deliveries_message ON dispatcher.deliveries (message_id);
CREATE INDEX deliveries_webhook ON dispatcher.deliveries (webhook_id, created_at);
-- The console's outcome charts read finished rows by time within a partition.
CREATE INDEX deliveries_finished ON dispatcher.deliveries_done (finished_at);
-- The lease walks this once per webhook with pending rows (see lease_batch). Partial as before,
-- though every row of deliveries_active is pending: a statement that names the status (the
-- lease; the queue gauges and counts, through the parent) has it as an index path, one that
-- does not (the outcome write) is not offered a walk of every pending row, and a query with no
-- other path never gets a disabled sequential scan, whose cost would set off JIT compilation.
CREATE INDEX deliveries_pending ON dispatcher.deliveries_active (webhook_id, run_at, id)
    WHERE status = 'pending';

CREATE INDEX attempts_delivery ON dispatcher.attempts (delivery_id, attempt);
-- The retention sweep deletes attempts past retention row by row only from these two (range
-- partitions are dropped whole), oldest first.
CREATE INDEX attempts_legacy_started ON dispatcher.attempts_legacy (started_at);
CREATE INDEX attempts_default_started ON dispatcher.attempts_default (started_at);

-- A disabled or deleted webhook's pending rows move to the history as cancelled: an explicit
-- DELETE from the hot table and INSERT, like record_outcomes. An UPDATE of the status would move
-- each row across partitions, and one that races a lock or update of the same row by another
-- transaction (an instance writing the outcome of an attempt in flight, say, while this one
-- auto-disables the webhook) fails with "tuple to be locked was already moved to another
-- partition due to concurrent update" (40001). A DELETE that loses such a race simply finds no
-- row, and a lease holder's late outcome write finds none either: its DELETE or UPDATE of
-- deliveries_active matches nothing, and the write is refused as before.
CREATE OR REPLACE FUNCTION dispatcher.cancel_pending_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH cancelled AS (
        DELETE FROM dispatcher.deliveries_active d
        WHERE d.webhook_id = OLD.id AND d.status = 'pending'
        RETURNING d.id, d.message_id, d.webhook_id, d.attempts, d.run_at, d.created_at,
                  d.last_response_status, d.kind
    )
    INSERT INTO dispatcher.deliveries_done
        (id, message_id, webhook_id, status, attempts, run_at, lease_token, created_at,
         finished_at, last_response_status, last_error_kind, kind)
    OVERRIDING SYSTEM VALUE
    SELECT c.id, c.message_id, c.webhook_id, 'cancelled', c.attempts, c.run_at, NULL,
           c.created_at, now(), c.last_response_status,
           CASE TG_OP WHEN 'DELETE' THEN 'webhook_deleted' ELSE 'webhook_disabled' END, c.kind
    FROM cancelled c;
    RETURN NULL;
END
$$;
