-- Fair leasing: due rows are found per webhook, so one webhook's backlog never hides another's.
--
-- The lease walks this index once per webhook with pending rows (a loose index scan) and then
-- takes each due webhook's oldest rows from its own range. The old global (run_at, id) index
-- is dropped: every lease and outcome write had to maintain it, and nothing hot reads it now.
CREATE INDEX deliveries_pending ON dispatcher.deliveries (webhook_id, run_at, id)
    WHERE status = 'pending';
DROP INDEX dispatcher.deliveries_due;

-- The retention sweep pages through old events by (created_at, message_id).
CREATE INDEX events_created_key ON dispatcher.events (created_at, message_id);
DROP INDEX dispatcher.events_created;
