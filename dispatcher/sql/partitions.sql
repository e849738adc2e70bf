-- Named queries for the maintenance of history partitions (dispatcher.ops.partitions).
--
-- DDL takes no $n parameters, so the statements that name a partition or a bound are built here
-- by format(): %I quotes the identifiers and %L the values, and the caller runs the text it gets
-- back. The identifiers are constants of the code or names read from the catalog.

-- name: history_partitions
-- The partitions of history table $1 (deliveries_done or attempts) and the database's clock.
-- Bounds are read back from their text form, which this session wrote in its own DateStyle and
-- TimeZone and so reads back exactly; NULL for MINVALUE and for the DEFAULT partition.
SELECT c.relname AS name, b.bound = 'DEFAULT' AS is_default,
       (regexp_match(b.bound, 'FROM \(''([^'']*)''\)'))[1]::timestamptz AS lower,
       (regexp_match(b.bound, 'TO \(''([^'']*)''\)'))[1]::timestamptz AS upper,
       now() AS now
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS b(bound)
WHERE i.inhparent = format('dispatcher.%I', $1::text)::regclass
ORDER BY upper NULLS FIRST, name;

-- name: try_maintenance_lock
-- Held until the transaction ends; false when another instance is maintaining partitions.
SELECT pg_try_advisory_xact_lock($1);

-- name: partition_ddl
-- Make partition $2 of $1 for [$4, $5) of column $3 out of what the DEFAULT partition $6 holds
-- there: a table of the parent's shape, the DEFAULT partition's rows in that range moved into it,
-- then attached, with the parent locked against writes (EXCLUSIVE: readers go on) for these
-- few statements. ATTACH alone would let writes go on (it takes SHARE UPDATE EXCLUSIVE), but a
-- write that chose the DEFAULT partition for a row of this range before the ATTACH committed
-- would then fail ("violates partition constraint"): an outcome write while no partition
-- covered now, say. A write that waits for the parent's lock instead routes its rows afresh.
-- ONLY the parent: every write goes through it, and locking the partitions as well would wait
-- on autovacuum of any one of them (SHARE UPDATE EXCLUSIVE) and so defer for its whole run.
SELECT format('LOCK TABLE ONLY dispatcher.%I IN EXCLUSIVE MODE', $1::text) AS lock_parent,
       format('CREATE TABLE dispatcher.%I (LIKE dispatcher.%I INCLUDING DEFAULTS'
              ' INCLUDING CONSTRAINTS)', $2::text, $1::text) AS create_table,
       format('WITH moved AS (DELETE FROM dispatcher.%I WHERE %I >= %L AND %I < %L RETURNING *)'
              ' INSERT INTO dispatcher.%I SELECT * FROM moved',
              $6::text, $3::text, $4::timestamptz, $3::text, $5::timestamptz, $2::text)
           AS move_rows,
       format('ALTER TABLE dispatcher.%I ATTACH PARTITION dispatcher.%I'
              ' FOR VALUES FROM (%L) TO (%L)', $1::text, $2::text, $4::timestamptz,
              $5::timestamptz) AS attach;

-- name: drop_partition_ddl
SELECT format('DROP TABLE dispatcher.%I', $1::text);
