-- `message.created` is written one row per batch of messages, not one per message
-- (docs/webhooks.md, "Guarantees: the outbox"; issue 14's cost target).
--
-- Before: the message writer's statement inserted one webhook_deliveries row per message
-- per endpoint, each a heap tuple with its jsonb payload, three index entries and a
-- foreign-key check, on the message path. Now it inserts one row here per statement: the
-- endpoints subscribed at commit, and the committed messages themselves (a copy, so the
-- payload stays the message as committed, whatever edits or deletions come later). The
-- delivery loops expand these rows into webhook_deliveries (storage/webhooks.py `_CLAIM`),
-- off the message path and paced with the rest of delivery; from there on a delivery is
-- the same row as every other event's, with its own id (`webhook-id`), status and retries.

-- One committed message, as its `message.created` payload needs it. A composite, not jsonb:
-- the writer copies fields, the loop builds the JSON (the same jsonb_build_object as before).
CREATE TYPE webhook_message AS (
    id               uuid,
    conversation_id  uuid,
    seq              bigint,
    sender_id        uuid,
    role             text,
    content          text,
    client_id        text,
    metadata         jsonb,
    created_at       timestamptz,
    kind             text,
    title            text
);

-- No foreign key on the endpoints: an endpoint deleted before its batch is expanded is
-- simply not joined then (what ON DELETE CASCADE does for deliveries).
CREATE TABLE webhook_message_batches (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_ids  uuid[] NOT NULL,
    messages      webhook_message[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The same doorbell as direct inserts into the outbox (migration 0019): the insert holds the
-- sleep lock shared until it commits, and rings only while some delivery loop sleeps.
CREATE TRIGGER webhook_message_batches_notify AFTER INSERT ON webhook_message_batches
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_wake();
