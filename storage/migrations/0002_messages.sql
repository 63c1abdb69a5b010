-- Conversations, members and messages: the one message pipeline's tables.

CREATE TABLE conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind        text NOT NULL CHECK (kind IN ('direct', 'group', 'tutor', 'room')),
    title       text,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    mode        text CHECK (mode IN ('ai', 'waiting', 'human')),
    context     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by  uuid REFERENCES users(id) ON DELETE SET NULL,
    -- The seq of the newest message; incremented under the row lock, so seqs are gap-free.
    last_seq    bigint NOT NULL DEFAULT 0,
    -- "a:b" with the two user ids sorted: one direct conversation per pair.
    direct_key  text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversation_members (
    conversation_id  uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    member_role      text NOT NULL DEFAULT 'member',
    last_read_seq    bigint NOT NULL DEFAULT 0,
    joined_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_user_idx ON conversation_members (user_id);

CREATE TABLE messages (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id  uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq              bigint NOT NULL,
    sender_id        uuid REFERENCES users(id) ON DELETE SET NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant', 'agent', 'system')),
    content          text NOT NULL,
    client_id        text,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    edited_at        timestamptz,
    deleted          boolean NOT NULL DEFAULT false,
    UNIQUE (conversation_id, seq)
);
-- A retried send (same client_id from the same sender in the same conversation) is one message.
CREATE UNIQUE INDEX messages_client_id_key ON messages (conversation_id, sender_id, client_id)
    WHERE client_id IS NOT NULL;

-- Users who follow a mentor: presence and live:started reach them.
CREATE TABLE favorites (
    user_id             uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    target_user_id      uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    notify_when_online  boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, target_user_id)
);
CREATE INDEX favorites_target_idx ON favorites (target_user_id);
