-- Accounts, sign-in tokens, audit log, and the live socket registry.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text,
    name            text NOT NULL,
    role            text NOT NULL CHECK (role IN ('student', 'mentor', 'agent', 'admin', 'guest')),
    password_hash   text,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX users_role_idx ON users (role) WHERE role IN ('agent', 'admin');

-- Tokens are stored only as a SHA-256 of the random secret.
CREATE TABLE auth_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX auth_tokens_user_idx ON auth_tokens (user_id);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_id     uuid REFERENCES users(id) ON DELETE SET NULL,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    ip           text,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_action_idx ON audit_log (action, at);

-- Server instances and their open sockets: presence and token revocation span instances.
-- UNLOGGED: this is soft state, rebuilt as clients reconnect.
CREATE UNLOGGED TABLE instances (
    id            uuid PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNLOGGED TABLE connections (
    sid           text PRIMARY KEY,
    instance_id   uuid NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_id      uuid NOT NULL,
    connected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_user_idx ON connections (user_id);
CREATE INDEX connections_token_idx ON connections (token_id);
