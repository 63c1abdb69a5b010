-- When the socket registry (`instances`, `connections`: UNLOGGED) was last found emptied
-- by a crash or a failover. LOGGED on purpose: it must outlive the very reset it records.
-- While it is recent, no grace period expires (handlers/registry.py explains why).
CREATE TABLE registry_resets (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    reset_at  timestamptz NOT NULL
);
