-- AI tutor: the decision log, per-user model usage, and answers being streamed.

-- One row per student message the tutor handled: what it decided, why, and what it cost.
CREATE TABLE tutor_decisions (
    id                 bigserial PRIMARY KEY,
    conversation_id    uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    message_id         uuid REFERENCES messages(id) ON DELETE SET NULL,  -- the student's message
    answer_id          uuid,                                             -- the tutor's reply, if committed
    action             text NOT NULL CHECK (action IN ('answer', 'clarify', 'escalate')),
    reason             text NOT NULL,
    confidence         real NOT NULL,
    category           text,
    urgent             boolean NOT NULL DEFAULT false,
    -- answered | clarified | escalated | stopped | cut_off | failed
    outcome            text NOT NULL,
    model              text,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    latency_ms         integer NOT NULL DEFAULT 0,
    details            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tutor_decisions_conversation_idx ON tutor_decisions (conversation_id, id DESC);

-- Every model call made for a user, with its tokens and price.
CREATE TABLE llm_usage (
    id                 bigserial PRIMARY KEY,
    user_id            uuid REFERENCES users(id) ON DELETE SET NULL,
    conversation_id    uuid REFERENCES conversations(id) ON DELETE SET NULL,
    message_id         uuid,  -- the assistant message the call produced
    model              text NOT NULL,
    prompt_tokens      integer NOT NULL,
    completion_tokens  integer NOT NULL,
    cost_usd           numeric(12, 6) NOT NULL DEFAULT 0,
    estimated          boolean NOT NULL DEFAULT false,  -- tokens counted locally, not reported
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_usage_user_idx ON llm_usage (user_id, created_at);

-- The answer currently streaming in a conversation, on whichever instance. `tutor:stop`
-- sets stop_requested; the streaming instance polls it (with the mode) and cuts off.
CREATE TABLE tutor_streams (
    conversation_id  uuid PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    answer_id        uuid NOT NULL,
    instance_id      uuid NOT NULL,
    stop_requested   boolean NOT NULL DEFAULT false,
    started_at       timestamptz NOT NULL DEFAULT now()
);

-- Crash recovery looks for recently active tutor conversations answered by the AI.
CREATE INDEX conversations_tutor_ai_idx ON conversations (updated_at)
    WHERE kind = 'tutor' AND mode = 'ai' AND status = 'open';
