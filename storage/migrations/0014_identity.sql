-- Signed identity from embedding platforms (handlers/identity/, docs/integration.md).

-- An app is one platform that embeds Studyhall and signs identity tokens for its users.
-- Its key is exactly one of: HMAC secrets (several while one is rotated), a PEM public
-- key, or a JWKS URL; its algorithm allowlist never mixes HMAC with public-key
-- algorithms (checked in handlers/identity/apps.py, and here), so a public key can never
-- be used as an HMAC secret. HMAC secrets are stored as given: verifying needs them.
CREATE TABLE apps (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        uuid REFERENCES users(id) ON DELETE SET NULL,
    algorithms        text[] NOT NULL,
    hmac_secrets      text[] NOT NULL DEFAULT '{}',
    public_key_pem    text,
    jwks_url          text,
    issuer            text NOT NULL,
    audience          text NOT NULL,
    allowed_roles     text[] NOT NULL DEFAULT '{student}',
    allowed_origins   text[] NOT NULL DEFAULT '{}',
    require_identity  boolean NOT NULL DEFAULT false,
    CHECK ((cardinality(hmac_secrets) > 0)::int + (public_key_pem IS NOT NULL)::int + (jwks_url IS NOT NULL)::int = 1),
    CHECK (cardinality(algorithms) > 0),
    CHECK (allowed_roles <@ ARRAY['student', 'mentor', 'agent']::text[])
);
-- A token names its app by `iss`: one app per issuer.
CREATE UNIQUE INDEX apps_issuer_key ON apps (issuer);

-- One platform user (app, sub) is one Studyhall user. The claims the platform sends that
-- users has no column for live here. The email is the platform's word only: it is never
-- written to users.email and never used to find an existing account.
CREATE TABLE identities (
    app_id        uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    subject       text NOT NULL,
    user_id       uuid NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    email         text,
    avatar_url    text,
    courses       text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, subject)
);

-- Token ids (`jti`) already used, kept until the token could no longer be accepted
-- anyway; expired rows are swept.
CREATE TABLE identity_jtis (
    app_id      uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (app_id, jti)
);
CREATE INDEX identity_jtis_expires_idx ON identity_jtis (expires_at);
