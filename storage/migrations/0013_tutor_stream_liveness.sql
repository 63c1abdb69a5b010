-- An answer being streamed says it is alive: the streaming instance touches its row every
-- few seconds, so any instance can tell an answer abandoned by a crash (the row stops being
-- touched, or its instance is gone) and tell the members to drop the partial text.
ALTER TABLE tutor_streams ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();
-- The usage row written when the model call started and updated as text arrives, so a
-- crash mid-stream still leaves what was spent.
ALTER TABLE tutor_streams ADD COLUMN usage_id bigint;
