-- Webhooks (handlers/webhooks/, docs/webhooks.md).

-- An endpoint belongs to an app and receives the events it subscribes to. Its secret
-- (`whsec_` + base64, the Standard Webhooks format) signs every delivery; it is stored as
-- given because signing needs it. An endpoint whose deliveries ran out of retries is
-- disabled with the reason, shown to admins, until one enables it again.
CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id           uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    url              text NOT NULL,
    description      text NOT NULL DEFAULT '',
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    secret           text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    disabled_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       uuid REFERENCES users(id) ON DELETE SET NULL
);
CREATE INDEX webhook_endpoints_app_idx ON webhook_endpoints (app_id);

-- The outbox: one row per (event, endpoint), written in the transaction that made the
-- change, so a rolled-back change sends nothing and a crash loses nothing. Its id is the
-- delivery's `webhook-id` (kept across retries). A claim is a lease: `next_attempt_at`
-- is moved past the attempt's deadline, so a claim whose instance died falls due again.
CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_type        text NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    claim             uuid,
    claimed_by        uuid,
    last_attempt_at   timestamptz,
    last_status_code  integer,
    last_error        text,
    last_latency_ms   real,
    delivered_at      timestamptz
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC);

-- Doorbells, rung at commit (one per transaction whatever the row count): new deliveries
-- wake the delivery loops; a changed endpoint makes every instance reload which events
-- anyone subscribes to.
CREATE FUNCTION webhook_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_notify('studyhall_webhook_deliveries');
CREATE TRIGGER webhook_endpoints_notify AFTER INSERT OR UPDATE OR DELETE ON webhook_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_notify('studyhall_webhook_endpoints');
