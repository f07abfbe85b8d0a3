-- Call signalling: one row per call between two users, with its state machine
-- (ringing -> active -> ended, ringing -> missed | ended) and times.
CREATE TABLE herald_calls (
    id          BIGSERIAL PRIMARY KEY,
    caller_id   TEXT    NOT NULL,
    callee_id   TEXT    NOT NULL,
    -- `audio` or `video`.
    type        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    -- Why it ended: `completed`, `rejected`, `cancelled`, `missed`.
    reason      TEXT,
    created_at  BIGINT  NOT NULL,
    answered_at BIGINT,
    ended_at    BIGINT
);
CREATE INDEX herald_calls_caller ON herald_calls (caller_id, id);
CREATE INDEX herald_calls_callee ON herald_calls (callee_id, id);
