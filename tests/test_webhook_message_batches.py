"""`message.created` is written one row per batch of messages and expanded by the delivery
loops (migration 0020, storage/webhooks.py `MESSAGE_CREATED_CTE` and `_CLAIM`).

What must hold: the message path writes one row per statement, not one per message; every
committed message becomes exactly one delivery per endpoint subscribed at commit, with
the payload documented in docs/webhooks.md; the payload is the message as committed (an
edit or deletion before the expansion changes nothing); two loops never expand one batch
twice; and a loop going to sleep never misses a batch in flight. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson

from storage import messages
from storage import webhooks as store
from storage.db import Database
from storage.messages import NewMessage
from tests.test_webhook_wakeups import endpoint_row, outbox_notifications

# The payload as the outbox wrote it per message before migration 0020, built from the
# messages table: what each delivery must still carry.
EXPECTED = """
SELECT m.id, jsonb_build_object(
    'message', jsonb_build_object(
        'id', m.id, 'conversation_id', m.conversation_id, 'seq', m.seq, 'sender_id', m.sender_id,
        'role', m.role, 'content', m.content, 'client_id', m.client_id, 'metadata', m.metadata,
        'created_at', m.created_at),
    'conversation', jsonb_build_object('id', c.id, 'kind', c.kind, 'title', c.title)) AS payload
FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE m.conversation_id = $1
"""
LEASE = 30.0


async def conversation(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    user = await conn.fetchval("INSERT INTO users (name, role) VALUES ('batcher', 'student') RETURNING id")
    conv = await conn.fetchval(
        "INSERT INTO conversations (kind, title, created_by) VALUES ('group', 'Study group', $1) RETURNING id", user)
    await conn.execute("INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2)", conv, user)
    return user, conv


async def send(conn: asyncpg.Connection, user: uuid.UUID, conv: uuid.UUID, *contents: str) -> None:
    """One statement, as the message writer commits a batch, with the outbox CTE."""
    batch = [NewMessage(conv, user, "user", c, f"c-{uuid.uuid4().hex[:8]}", {"n": i}) for i, c in enumerate(contents)]
    results = await messages.insert_batch(conn, batch, webhooks=True)
    assert all(isinstance(r, tuple) and not r[1] for r in results)


async def claim(conn: asyncpg.Connection, *, limit: int = 100, expand: int = store.EXPAND_BATCHES) -> store.ClaimPass:
    return await store.claim(conn, limit=limit, lease_seconds=LEASE, instance_id=uuid.uuid4(), expand=expand)


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    return (await conn.fetchval("SELECT count(*) FROM webhook_message_batches"),
            await conn.fetchval("SELECT count(*) FROM webhook_deliveries"))


async def test_a_batch_is_one_row_expanded_into_one_delivery_per_message_and_endpoint(db: Database) -> None:
    async with db.connection() as conn:
        first, second = await endpoint_row(conn), await endpoint_row(conn)
        user, conv = await conversation(conn)
        await send(conn, user, conv, "one", "two", "three", "four", "five")
        await send(conn, user, conv, "six")
        assert await counts(conn) == (2, 0)  # the message path wrote two rows, no delivery

        taken = await claim(conn, expand=1)  # one batch a claim (as while the pipeline is saturated)
        assert (len(taken.claimed), taken.expanded) == (0, 10)  # made now, claimable from the next claim
        assert await counts(conn) == (1, 10)
        # Due since the commit, so the outbox lag counts from it, not from the expansion.
        assert await conn.fetchval(
            "SELECT bool_and(next_attempt_at = created_at AND created_at < now()) FROM webhook_deliveries")
        taken = await claim(conn)
        assert (len(taken.claimed), taken.expanded) == (10, 2)
        taken = await claim(conn)
        assert (len(taken.claimed), taken.expanded) == (2, 0)
        assert await counts(conn) == (0, 12)

        rows = await conn.fetch("SELECT endpoint_id, payload FROM webhook_deliveries")
        expected = {r["id"]: r["payload"] for r in await conn.fetch(EXPECTED, conv)}
    assert len(expected) == 6
    for endpoint in (first, second):
        got = {r["payload"]["message"]["id"]: r["payload"] for r in rows if r["endpoint_id"] == endpoint}
        assert got == {str(k): v for k, v in expected.items()}


async def test_the_payload_is_the_message_as_committed(db: Database) -> None:
    async with db.connection() as conn:
        await endpoint_row(conn)
        user, conv = await conversation(conn)
        await send(conn, user, conv, "as sent", "soon deleted")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM messages WHERE conversation_id = $1 ORDER BY seq", conv)]
        assert await messages.edit(conn, ids[0], "edited later") is not None
        assert await messages.soft_delete(conn, ids[1]) is not None
        await conn.execute("UPDATE conversations SET title = 'Renamed' WHERE id = $1", conv)
        await claim(conn)
        taken = await claim(conn)
    sent = sorted((orjson.loads(c.data) for c in taken.claimed), key=lambda p: p["message"]["seq"])
    assert [p["message"]["content"] for p in sent] == ["as sent", "soon deleted"]
    assert {p["conversation"]["title"] for p in sent} == {"Study group"}


async def test_endpoints_are_the_ones_subscribed_at_commit(db: Database) -> None:
    """Deleted before the expansion: nothing for it. Disabled: its deliveries wait, as
    every disabled endpoint's do. Subscribed after the commit: nothing for it."""
    async with db.connection() as conn:
        kept, deleted, disabled = await endpoint_row(conn), await endpoint_row(conn), await endpoint_row(conn)
        user, conv = await conversation(conn)
        await send(conn, user, conv, "hello")
        await endpoint_row(conn)  # too late for "hello"
        await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", deleted)
        await store.set_enabled(conn, disabled, False, "paused")
        assert (await claim(conn)).expanded == 2
        taken = await claim(conn)
        assert [c.endpoint_id for c in taken.claimed] == [kept]
        pending = await conn.fetch("SELECT endpoint_id FROM webhook_deliveries WHERE claim IS NULL")
    assert [r["endpoint_id"] for r in pending] == [disabled]


async def test_two_loops_never_expand_one_batch_twice(db: Database) -> None:
    async with db.connection() as conn:
        await endpoint_row(conn)
        user, conv = await conversation(conn)
        await send(conn, user, conv, "a", "b", "c")
    async with db.transaction() as first:
        assert (await claim(first)).expanded == 3  # not committed yet: the batch row is locked
        async with db.connection() as second:
            assert (await claim(second)).expanded == 0  # skipped, not waited for
    async with db.connection() as conn:
        assert (await claim(conn)).expanded == 0
        assert await counts(conn) == (0, 3)


async def test_a_loop_does_not_fall_asleep_while_a_batch_is_in_flight_and_is_rung_for_one(db: Database) -> None:
    """The sleep protocol of migration 0019 holds for the batch rows too: an uncommitted
    batch refuses the announcement, and a committed one rings a sleeping loop."""
    me = uuid.uuid4()
    async with outbox_notifications(db) as heard:
        async with db.connection() as conn:
            await endpoint_row(conn)
            user, conv = await conversation(conn)
        async with db.transaction() as writer:
            await send(writer, user, conv, "in flight")
            async with db.connection() as conn:
                assert not await store.fall_asleep(conn, me)
        async with db.connection() as conn:
            assert await store.fall_asleep(conn, me)
            await send(conn, user, conv, "ring")
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert len(heard) == 1
