-- Retention: find finished deliveries and old events by age without scanning the tables.
CREATE INDEX deliveries_finished ON dispatcher.deliveries (finished_at) WHERE status <> 'pending';
CREATE INDEX events_created ON dispatcher.events (created_at);
