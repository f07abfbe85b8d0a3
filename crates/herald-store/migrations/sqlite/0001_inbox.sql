-- The notification inbox. Times are milliseconds since the Unix epoch.
CREATE TABLE herald_notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    priority     TEXT    NOT NULL,
    sound        TEXT,
    badge        INTEGER,
    dedupe_key   TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    -- 1 when the user had a connection as it was created (so it was pushed live).
    pushed_live  INTEGER NOT NULL DEFAULT 0,
    seen_at      INTEGER,
    read_at      INTEGER
);
CREATE INDEX herald_notifications_user ON herald_notifications (user_id, id);
CREATE INDEX herald_notifications_unread ON herald_notifications (user_id, id) WHERE read_at IS NULL;
CREATE INDEX herald_notifications_created ON herald_notifications (created_at);
-- Only keyed notifications are indexed: most have no key, and every index entry costs a
-- page write at commit.
CREATE UNIQUE INDEX herald_notifications_dedupe ON herald_notifications (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;

-- How far each device of a user has been given its notifications.
CREATE TABLE herald_inbox_devices (
    user_id           TEXT    NOT NULL,
    device            TEXT    NOT NULL,
    delivered_through INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (user_id, device)
);
