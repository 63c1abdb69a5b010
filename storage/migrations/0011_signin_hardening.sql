-- Sign-in hardening: failed logins per (account, client address), and guest activity.

-- One row per failed login of an existing account. Lockout counts the rows inside the
-- lockout window per (user, address) and per user, so an attacker's failures lock out
-- the attacker's address, not the real user signing in from elsewhere. A success deletes
-- its address's rows. The audit log keeps every attempt regardless.
CREATE TABLE login_failures (
    id       bigserial PRIMARY KEY,
    user_id  uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ip       text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_user_idx ON login_failures (user_id, at);
CREATE INDEX login_failures_at_idx ON login_failures (at);

-- When the account last used a token (refreshed at most hourly), so idle guests can be
-- deleted. Existing accounts count as active now.
ALTER TABLE users ADD COLUMN last_active_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX users_guest_idle_idx ON users (last_active_at) WHERE role = 'guest';
