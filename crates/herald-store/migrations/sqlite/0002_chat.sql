-- Rooms, groups and chats: their members, messages, receipts, reactions, and blocks
-- between users. A conversation is named by its topic (`room:{id}`, `group:{id}`,
-- `chat:{id}`). Times are milliseconds since the Unix epoch; flags are 0 or 1.
CREATE TABLE herald_conversations (
    topic      TEXT    PRIMARY KEY,
    name       TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE herald_members (
    topic     TEXT    NOT NULL,
    user_id   TEXT    NOT NULL,
    role      TEXT    NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (topic, user_id)
);
CREATE INDEX herald_members_user ON herald_members (user_id, topic);

CREATE TABLE herald_messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    topic          TEXT    NOT NULL,
    author_id      TEXT    NOT NULL,
    author_name    TEXT,
    author_image   TEXT,
    -- Text, or an encrypted client's opaque ciphertext, stored verbatim.
    content        TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    encrypted      INTEGER NOT NULL,
    reply_to       INTEGER,
    forwarded_from INTEGER,
    -- The client's id for an optimistic update; makes a retried send idempotent.
    temp_id        TEXT,
    -- Free JSON from the client (attachments, mentions), stored verbatim.
    metadata       TEXT,
    created_at     INTEGER NOT NULL,
    edited_at      INTEGER,
    deleted_at     INTEGER
);
CREATE INDEX herald_messages_topic ON herald_messages (topic, id);
CREATE UNIQUE INDEX herald_messages_temp ON herald_messages (author_id, temp_id) WHERE temp_id IS NOT NULL;

CREATE TABLE herald_receipts (
    message_id   INTEGER NOT NULL,
    user_id      TEXT    NOT NULL,
    delivered_at INTEGER,
    read_at      INTEGER,
    PRIMARY KEY (message_id, user_id)
);

CREATE TABLE herald_reactions (
    message_id INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    emoji      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- `user_id` blocked `blocked_id`: the first receives nothing from the second.
CREATE TABLE herald_blocks (
    user_id    TEXT    NOT NULL,
    blocked_id TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);
