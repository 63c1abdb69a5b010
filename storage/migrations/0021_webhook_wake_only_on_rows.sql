-- A delivery loop's claim no longer rings for itself (migrations 0019, 0020).
--
-- Statement-level triggers fire once per INSERT statement, even one that inserts no row.
-- Since migration 0020 every delivery loop's claim is such a statement on
-- webhook_deliveries: its `expanded` CTE inserts the deliveries of the batches it took,
-- usually none. A loop that had announced it sleeps made that claim once more, its own
-- empty INSERT found its own row in webhook_sleepers and rang, the NOTIFY woke it, it
-- claimed again, and so on: an idle instance ran about a thousand claims a second for as
-- long as it stayed idle (a quarter of a core for the server, half or more for
-- PostgreSQL; docs/performance.md, "Tenth session"). An empty `enqueue` (an event nobody
-- subscribes to) rang the same way, once.
--
-- The deliveries' trigger now sees the statement's inserted rows (a transition table) and
-- does nothing, not even take the sleep lock, when there are none. The lock's protocol is
-- unchanged for inserts that did insert rows: every such insert either saw a sleeper (and
-- rang) or had committed before the sleeper's last claim.
--
-- The message batches' trigger (0020) keeps no transition table. Only the writer's statement inserts
-- there, and it inserts nothing only while its subscription cache is stale (one ring per
-- batch then, never a loop); a transition table there would copy every batch row, every
-- message of it, on the message path: PostgreSQL's cost of the outbox row rose from about
-- +19 % to +31-36 % of the statement without one when both triggers had it
-- (bench/outbox_bench.py).
-- One place rings (both triggers call it), so the lock key and the channel, which
-- storage/webhooks.py also names, are written once in the live schema.
CREATE FUNCTION webhook_ring_sleepers() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'5748534C4550'::bigint);
    IF EXISTS (SELECT 1 FROM webhook_sleepers) THEN
        PERFORM pg_notify('studyhall_webhook_deliveries', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhook_deliveries_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_ring_sleepers();
    RETURN NULL;
END
$$;

CREATE FUNCTION webhook_deliveries_wake_if_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM webhook_ring_sleepers();
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER webhook_deliveries_notify ON webhook_deliveries;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_wake_if_inserted();
