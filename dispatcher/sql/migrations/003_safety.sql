-- Safety: secret rotation with a grace period, and a payload size limit the database enforces.

-- While previous_secret_expires_at is in the future, attempts carry a second signature made
-- with the previous secret, so receivers can switch secrets without dropping a request.
ALTER TABLE dispatcher.webhooks
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_expires_at timestamptz;

-- Limits shared by every process using this database. The daemon writes its configured values
-- here when it starts.
CREATE TABLE dispatcher.limits (
    name  text PRIMARY KEY,
    value bigint NOT NULL CHECK (value > 0)
);
INSERT INTO dispatcher.limits (name, value) VALUES ('max_payload_bytes', 262144);

-- One check per INSERT statement over its transition table, whatever the row count; a single
-- oversized row fails the whole statement with a message naming the limit.
CREATE FUNCTION dispatcher.check_payload_size() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cap bigint := (SELECT value FROM dispatcher.limits WHERE name = 'max_payload_bytes');
    offender record;
BEGIN
    SELECT e.message_id, octet_length(e.payload::text) AS size INTO offender
    FROM new_events e
    WHERE octet_length(e.payload::text) > cap
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event payload is % bytes, over the limit of % bytes (max_payload_bytes)',
            offender.size, cap
            USING ERRCODE = 'check_violation',
                  DETAIL = format('message_id %s', offender.message_id),
                  HINT = 'Send a smaller payload, or raise max_payload_bytes in the dispatcher config.';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_payload_size
AFTER INSERT ON dispatcher.events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.check_payload_size();

-- An UPDATE must not smuggle in what an INSERT may not.
CREATE TRIGGER events_payload_size_update
AFTER UPDATE ON dispatcher.events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.check_payload_size();
