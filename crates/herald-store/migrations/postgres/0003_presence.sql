-- A user's chosen presence (online, away, busy), custom status text and when they were
-- last seen online. Whether they are online now is not stored: the nodes know.
CREATE TABLE herald_presence (
    user_id       TEXT    PRIMARY KEY,
    status        TEXT    NOT NULL,
    custom_status TEXT,
    last_seen     BIGINT,
    updated_at    BIGINT  NOT NULL
);
