-- The outbox: notification events an application enqueues, in the same transaction as
-- its own change, for Herald's worker to enrich, store and publish (docs/outbox.md).
-- Times are milliseconds since the Unix epoch.
CREATE TABLE herald_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The application's id for the event: enqueuing it twice enqueues it once, and the
    -- inbox notification made from it is keyed by it.
    event_id        TEXT    NOT NULL UNIQUE,
    -- `user:{id}`, `channel:{id}` or `global`.
    recipient       TEXT    NOT NULL CHECK (recipient = 'global' OR recipient GLOB 'user:?*' OR recipient GLOB 'channel:?*'),
    type            TEXT    NOT NULL,
    data            TEXT    NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    processed_at    INTEGER,
    dead_at         INTEGER,
    last_error      TEXT
);
CREATE INDEX herald_outbox_pending ON herald_outbox (next_attempt_at, id) WHERE processed_at IS NULL AND dead_at IS NULL;
CREATE INDEX herald_outbox_processed ON herald_outbox (processed_at) WHERE processed_at IS NOT NULL;
CREATE INDEX herald_outbox_dead ON herald_outbox (dead_at, id) WHERE dead_at IS NOT NULL;
