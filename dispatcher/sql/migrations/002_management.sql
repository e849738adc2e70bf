-- Management: input rules enforced in the database, an optional event-type catalog, and
-- deliveries that record why they exist (an event, a resend, or a test).

-- A dotted name of letters, digits, '_' and '-' (or '*' where a subscription allows it).
CREATE FUNCTION dispatcher.valid_event_type(t text, allow_star boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t ~ '^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$' OR (allow_star AND t = '*')
$$;

CREATE FUNCTION dispatcher.valid_event_types(types text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT cardinality(types) >= 1
       AND NOT EXISTS (SELECT 1 FROM unnest(types) t
                       WHERE t IS NULL OR NOT dispatcher.valid_event_type(t, true))
$$;

-- http or https, a host (a name or a bracketed IPv6 address) with an optional numeric port, no
-- user-info, no whitespace, at most 2048 characters.
CREATE FUNCTION dispatcher.valid_url(url text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT length(url) <= 2048
       AND url ~* ('^https?://(\[[0-9a-f:.]+\]|[^/?#@:\[\][:space:]]+)(:[1-9][0-9]{0,4})?'
                   '([/?#][^[:space:]]*)?$')
$$;

ALTER TABLE dispatcher.webhooks
    ADD CONSTRAINT webhooks_url_valid CHECK (dispatcher.valid_url(url)),
    ADD CONSTRAINT webhooks_service_name_valid
        CHECK (service_name ~ '[^[:space:]]' AND length(service_name) <= 200),
    ADD CONSTRAINT webhooks_event_types_valid CHECK (dispatcher.valid_event_types(event_types));

ALTER TABLE dispatcher.events
    DROP CONSTRAINT events_event_type_check,
    ADD CONSTRAINT events_event_type_valid CHECK (dispatcher.valid_event_type(event_type, false));

-- Known event types. While the catalog is empty any type may be used; once it is not, the CLI
-- rejects types missing from it unless told --allow-unknown.
CREATE TABLE dispatcher.event_types (
    name        text PRIMARY KEY CHECK (dispatcher.valid_event_type(name, false)),
    description text NOT NULL DEFAULT '',
    sample      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Why a delivery exists: fan-out of a published event, a resend, or `webhooks test`.
ALTER TABLE dispatcher.deliveries
    ADD COLUMN kind text NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'resend', 'test'));


-- `webhooks test` stores its event without fanning it out to every subscriber: the CLI sets
-- dispatcher.skip_fan_out for its own transaction only.
DROP TRIGGER events_fan_out ON dispatcher.events;
CREATE TRIGGER events_fan_out
AFTER INSERT ON dispatcher.events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT
WHEN (current_setting('dispatcher.skip_fan_out', true) IS DISTINCT FROM 'on')
EXECUTE FUNCTION dispatcher.fan_out_events();
