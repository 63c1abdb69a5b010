-- API keys for platforms' backends, deactivated users, and messages posted by an app
-- (handlers/platform/, docs/integration.md).

-- A key belongs to one app and acts as that app, never as a user. Only the SHA-256 of the
-- secret is stored: the secret is 32 random bytes, so a fast hash is as strong as a slow
-- one and keeps the look-up one indexed equality per request. `prefix` (the first
-- characters of the key) lets an administrator recognise a key without holding it.
-- Rotation makes a new key and gives the old one an `expires_at`; `replaced_by` links them.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id        uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    uuid REFERENCES users(id) ON DELETE SET NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    replaced_by   uuid REFERENCES api_keys(id) ON DELETE SET NULL,
    CHECK (cardinality(scopes) > 0)
);
CREATE INDEX api_keys_app_idx ON api_keys (app_id, created_at);

-- A deactivated user cannot sign in (identity sign-in refuses them) and their tokens are
-- revoked when they are deactivated.
ALTER TABLE users ADD COLUMN deactivated_at timestamptz;

-- Messages an app posts into a conversation (sender_id NULL, metadata names the app).
-- Every existing row satisfies the old list, a subset of the new one: NOT VALID skips the
-- scan of the messages table.
ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE messages ADD CONSTRAINT messages_role_check
    CHECK (role IN ('user', 'assistant', 'agent', 'system', 'app')) NOT VALID;
