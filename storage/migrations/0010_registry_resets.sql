-- When the socket registry (`instances`, `connections`: UNLOGGED) was last found emptied
-- by a crash or a failover. LOGGED on purpose: it must outlive the very reset it records.
-- While it is recent, no grace period expires (handlers/registry.py explains why).
CREATE TABLE registry_resets (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    reset_at  timestamptz NOT NULL
);

-- Each instance counts its own rows at every heartbeat (and re-syncs, reaps and checks
-- tokens by instance): without this index each of those reads every open socket.
CREATE INDEX connections_instance_idx ON connections (instance_id);
