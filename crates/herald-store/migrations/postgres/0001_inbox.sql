-- The notification inbox. Times are milliseconds since the Unix epoch.
CREATE TABLE herald_notifications (
    id           BIGSERIAL PRIMARY KEY,
    user_id      TEXT   NOT NULL,
    type         TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    priority     TEXT   NOT NULL,
    sound        TEXT,
    badge        BIGINT,
    dedupe_key   TEXT,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    -- true when the user had a connection as it was created (so it was pushed live).
    pushed_live  BOOLEAN NOT NULL DEFAULT false,
    seen_at      BIGINT,
    read_at      BIGINT
);
CREATE INDEX herald_notifications_user ON herald_notifications (user_id, id);
CREATE INDEX herald_notifications_unread ON herald_notifications (user_id, id) WHERE read_at IS NULL;
CREATE INDEX herald_notifications_created ON herald_notifications (created_at);
-- Only keyed notifications are indexed: most have no key, and every index entry costs a
-- page write at commit.
CREATE UNIQUE INDEX herald_notifications_dedupe ON herald_notifications (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;

-- How far each device of a user has been given its notifications.
CREATE TABLE herald_inbox_devices (
    user_id           TEXT   NOT NULL,
    device            TEXT   NOT NULL,
    delivered_through BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);
