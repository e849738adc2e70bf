-- Endpoint caps across instances: a webhook's concurrency cap holds for all the instances that
-- share this database, not for each one alone.
--
-- The cap is kept as a counter on the webhook's health row, which the lease already locks and
-- reads by primary key: the lease adds the rows it takes, the outcome write and the lease release
-- subtract the rows they write. Counting the leased rows in deliveries_pending instead would be
-- racy: the lease's scan reads a snapshot taken when its statement began, so two instances
-- leasing at once would each count the other's new leases as absent and both fill the cap.
-- A locked health row is read at its latest committed version, so the counter is exact.

ALTER TABLE dispatcher.webhooks
    -- Attempts in flight at once, over every instance; NULL: the per_endpoint_concurrency setting.
    ADD COLUMN max_concurrency integer CHECK (max_concurrency BETWEEN 1 AND 1000);

ALTER TABLE dispatcher.webhook_health
    -- A copy of webhooks.max_concurrency (kept by the trigger below), so the lease reads one row.
    ADD COLUMN max_concurrency integer,
    -- Rows of this webhook leased and counted, not yet written back or handed back.
    ADD COLUMN in_flight integer NOT NULL DEFAULT 0,
    -- The latest lease deadline granted for it. Once it has passed, every lease counted has
    -- expired (its holder died, or its late write is fenced out by the token): the counter is
    -- taken as 0, and slots_reset_at records when, so that expired-lease rows leased again are
    -- counted again only if that reset forgot them (their old deadline is not after it).
    ADD COLUMN leased_until timestamptz,
    ADD COLUMN slots_reset_at timestamptz;

CREATE OR REPLACE FUNCTION dispatcher.sync_webhook_health() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dispatcher.webhook_health (webhook_id, rate_limit, max_concurrency)
    VALUES (NEW.id, NEW.rate_limit, NEW.max_concurrency)
    ON CONFLICT (webhook_id) DO UPDATE
        SET rate_limit = EXCLUDED.rate_limit, max_concurrency = EXCLUDED.max_concurrency;
    RETURN NULL;
END
$$;

DROP TRIGGER webhooks_health_rate_limit ON dispatcher.webhooks;
CREATE TRIGGER webhooks_health_flow
AFTER UPDATE OF rate_limit, max_concurrency ON dispatcher.webhooks
FOR EACH ROW WHEN (OLD.rate_limit IS DISTINCT FROM NEW.rate_limit
                   OR OLD.max_concurrency IS DISTINCT FROM NEW.max_concurrency)
EXECUTE FUNCTION dispatcher.sync_webhook_health();

-- A disabled webhook's pending rows are cancelled (webhooks_disable, which fires first: triggers
-- fire in name order), so their holders' outcome writes are fenced out and will never subtract
-- from the counter: it starts again from 0. A trigger of its own rather than a line in
-- cancel_pending_deliveries, so the two can change apart. A deleted webhook's health row goes
-- with it (ON DELETE CASCADE).
CREATE FUNCTION dispatcher.clear_in_flight() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dispatcher.webhook_health SET in_flight = 0
    WHERE webhook_id = NEW.id AND in_flight <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhooks_disable_slots
AFTER UPDATE OF status ON dispatcher.webhooks
FOR EACH ROW WHEN (OLD.status = 'active' AND NEW.status = 'disabled')
EXECUTE FUNCTION dispatcher.clear_in_flight();

-- Rows leased now (by a daemon that ran before this migration) are counted, so their outcome
-- writes subtract what was added; rows whose lease has already expired are not, and the reset
-- time makes the next lease of them count them.
UPDATE dispatcher.webhook_health h
SET in_flight = c.live, leased_until = c.until
FROM (SELECT d.webhook_id, count(*) FILTER (WHERE d.run_at > now())::int AS live,
             max(d.run_at) AS until
      FROM dispatcher.deliveries d
      WHERE d.status = 'pending' AND d.lease_token IS NOT NULL
      GROUP BY d.webhook_id) c
WHERE h.webhook_id = c.webhook_id;
UPDATE dispatcher.webhook_health SET slots_reset_at = now();
