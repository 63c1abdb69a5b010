-- Live sessions (mentor-hosted rooms) and who is in them.

CREATE TABLE live_sessions (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title                 text NOT NULL,
    host_id               uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status                text NOT NULL DEFAULT 'scheduled'
                          CHECK (status IN ('scheduled', 'live', 'ended', 'cancelled')),
    type                  text NOT NULL DEFAULT 'lecture',
    scheduled_start_time  timestamptz,
    started_at            timestamptz,
    ended_at              timestamptz,
    max_participants      integer NOT NULL CHECK (max_participants BETWEEN 1 AND 10000),
    is_featured           boolean NOT NULL DEFAULT false,
    -- The room's chat: a `room` conversation carried by the one message pipeline.
    conversation_id       uuid NOT NULL UNIQUE REFERENCES conversations(id) ON DELETE CASCADE,
    -- Set when the host's last socket closed while the room was live (or the sweeper found
    -- the host without sockets); the room ends once this is older than the host grace.
    host_away_since       timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX live_sessions_status_idx ON live_sessions (status, scheduled_start_time);
CREATE INDEX live_sessions_host_idx ON live_sessions (host_id) WHERE status IN ('scheduled', 'live');

-- One row per (session, user) ever seen: present while left_at IS NULL. Bans and mutes
-- stay on the row, so leaving and rejoining escapes neither.
CREATE TABLE room_participants (
    live_session_id  uuid NOT NULL REFERENCES live_sessions(id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    joined_at        timestamptz NOT NULL DEFAULT now(),
    left_at          timestamptz,
    -- Set when the user's last socket closed; the seat is freed once older than the leave grace.
    away_since       timestamptz,
    muted            boolean NOT NULL DEFAULT false,
    hand_raised      boolean NOT NULL DEFAULT false,
    banned           boolean NOT NULL DEFAULT false,
    kicked_at        timestamptz,
    PRIMARY KEY (live_session_id, user_id)
);
-- Seats are counted over present rows only.
CREATE INDEX room_participants_present_idx ON room_participants (live_session_id) WHERE left_at IS NULL;
CREATE INDEX room_participants_user_present_idx ON room_participants (user_id) WHERE left_at IS NULL;
