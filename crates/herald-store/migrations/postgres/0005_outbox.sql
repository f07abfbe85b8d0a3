-- The outbox: notification events an application enqueues, in the same transaction as
-- its own change, for Herald's worker to enrich, store and publish (docs/outbox.md).
-- Times are milliseconds since the Unix epoch.
CREATE TABLE herald_outbox (
    id              BIGSERIAL PRIMARY KEY,
    -- The application's id for the event: enqueuing it twice enqueues it once, and the
    -- inbox notification made from it is keyed by it.
    event_id        TEXT    NOT NULL UNIQUE,
    -- `user:{id}`, `channel:{id}` or `global`.
    recipient       TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    data            TEXT    NOT NULL DEFAULT '{}',
    created_at      BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    processed_at    BIGINT,
    dead_at         BIGINT,
    last_error      TEXT
);
CREATE INDEX herald_outbox_pending ON herald_outbox (next_attempt_at, id) WHERE processed_at IS NULL AND dead_at IS NULL;
CREATE INDEX herald_outbox_processed ON herald_outbox (processed_at) WHERE processed_at IS NOT NULL;
CREATE INDEX herald_outbox_dead ON herald_outbox (dead_at, id) WHERE dead_at IS NOT NULL;

-- Wakes the workers (LISTEN herald_outbox) once per inserting statement; they also poll,
-- so a notification lost while a worker reconnects delays an event, never loses it.
CREATE FUNCTION herald_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;
CREATE TRIGGER herald_outbox_inserted AFTER INSERT ON herald_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION herald_outbox_notify();

-- What an application calls inside its own transaction:
--   SELECT herald_enqueue('tip-981', 'user:42', 'TIP', '{"actorId":"7","channelId":"3","amount":5}');
-- Returns false when an event with that id was enqueued before.
CREATE FUNCTION herald_enqueue(p_event_id TEXT, p_recipient TEXT, p_type TEXT, p_data TEXT DEFAULT '{}')
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    inserted BIGINT;
BEGIN
    IF p_recipient IS NULL OR NOT (p_recipient = 'global' OR p_recipient ~ '^(user|channel):.+$') THEN
        RAISE EXCEPTION 'herald_enqueue: recipient must be user:{id}, channel:{id} or global, not %', p_recipient;
    END IF;
    INSERT INTO herald_outbox (event_id, recipient, type, data)
    VALUES (p_event_id, p_recipient, p_type, COALESCE(p_data, '{}'))
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id INTO inserted;
    RETURN inserted IS NOT NULL;
END;
$$;
