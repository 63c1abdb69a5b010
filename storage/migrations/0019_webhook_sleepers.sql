-- New deliveries ring the doorbell only while some delivery loop sleeps (docs/webhooks.md,
-- "Waking the delivery loops"; handlers/webhooks/delivery.py).
--
-- Before: every statement that inserted deliveries did pg_notify, so every committed batch
-- of messages took PostgreSQL's notify lock (held through its commit: concurrent batches
-- committed one after the other) and woke every instance's delivery loop. A loop that is
-- busy needs no doorbell: it polls. A loop going to sleep announces itself here; an insert
-- notifies only while one is announced.
--
-- The race between a loop going to sleep and an insert that looked before the loop's row
-- was visible is closed by a lock: the insert's trigger holds SHARED_LOCK shared until it
-- commits; the loop commits its row while holding it exclusively (a try: it never waits,
-- so it never holds writers up; if a writer is in flight it stays awake and tries again
-- later), then claims once more. Every insert either saw the row (and notified) or had
-- committed before that claim (and is claimed by it).
CREATE TABLE webhook_sleepers (
    instance_id  uuid PRIMARY KEY,
    since        timestamptz NOT NULL DEFAULT now()
);

-- 0x5748_534C_4550 = "WHSLEP": the lock's key (storage/webhooks.py SLEEP_LOCK_ID).
CREATE FUNCTION webhook_deliveries_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'5748534C4550'::bigint);
    IF EXISTS (SELECT 1 FROM webhook_sleepers) THEN
        PERFORM pg_notify('studyhall_webhook_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER webhook_deliveries_notify ON webhook_deliveries;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_wake();
