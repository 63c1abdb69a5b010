"""New deliveries NOTIFY only while a delivery loop sleeps (migration 0019,
handlers/webhooks/delivery.py, docs/webhooks.md#waking-the-delivery-loops).

A NOTIFY per committed batch of messages serialised those commits on PostgreSQL's notify
lock and woke the loops once per batch; a busy loop polls instead. What must hold: an
idle loop is still woken at once (the latency a platform sees when nothing else happens),
a busy pipeline's batches commit without NOTIFY, and a loop going to sleep never misses an
insert that was in flight. Real PostgreSQL, a real instance, a verifying receiver."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from server.webhooks import DISPATCHER
from storage import webhooks as store
from storage.db import Database
from tests.client import Api, Instance
from tests.test_webhooks import FAST, direct, subscribe
from tests.webhook_receiver import Receiver

# A poll far slower than any assertion below: only a NOTIFY can wake a sleeping loop in time.
SLEEPY = replace(FAST, poll_seconds=30.0, idle_seconds=1.0, busy_poll_seconds=0.01)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


async def endpoint_row(conn: asyncpg.Connection) -> uuid.UUID:
    app_id = await conn.fetchval(
        """INSERT INTO apps (name, algorithms, hmac_secrets, issuer, audience)
           VALUES ('t', '{HS256}', ARRAY[md5(random()::text) || md5(random()::text)],
                   'https://t-' || gen_random_uuid() || '.example', 'studyhall') RETURNING id""")
    return await conn.fetchval(
        "INSERT INTO webhook_endpoints (app_id, url, events, secret) VALUES ($1, 'http://127.0.0.1:9/h', "
        "'{message.created}', 'whsec_dGVzdA==') RETURNING id", app_id)


@asynccontextmanager
async def outbox_notifications(db: Database) -> AsyncIterator[list[str]]:
    """The payloads of the NOTIFYs on the deliveries' channel while the block runs, heard
    by a connection of its own (as a server's listener hears them)."""
    heard: list[str] = []
    listener = await asyncpg.connect(db.url)
    try:
        await listener.add_listener(store.DELIVERIES_CHANNEL, lambda _conn, _pid, _channel, payload: heard.append(payload))
        yield heard
    finally:
        await listener.close()


def recorded_claims(dispatcher: Any) -> list[float]:
    """When each claim of `dispatcher` starts from now on (its `claim_and_send`, wrapped:
    the loop looks the method up on every pass)."""
    claims: list[float] = []
    claim = dispatcher.claim_and_send

    async def counted(limit: int) -> bool:
        claims.append(time.monotonic())
        return bool(await claim(limit))

    dispatcher.claim_and_send = counted
    return claims


async def heard_after_insert(db: Database, heard: list[str]) -> int:
    """NOTIFYs heard for one committed insert into the outbox."""
    before = len(heard)
    async with db.transaction() as conn:
        await store.enqueue(conn, "message.created", [{"n": 1}])
    await asyncio.sleep(0.3)
    return len(heard) - before


async def test_inserts_notify_only_while_a_loop_has_announced_it_sleeps(db: Database) -> None:
    async with outbox_notifications(db) as heard:
        async with db.connection() as conn:
            await endpoint_row(conn)
            assert await conn.fetchval("SELECT count(*) FROM webhook_sleepers") == 0
        assert await heard_after_insert(db, heard) == 0  # every loop busy: it polls
        me = uuid.uuid4()
        async with db.connection() as conn:
            assert await store.fall_asleep(conn, me)
        assert await heard_after_insert(db, heard) == 1  # one asleep: rung
        async with db.connection() as conn:
            await store.wake_up(conn, me)
        assert await heard_after_insert(db, heard) == 0


async def test_an_insert_of_no_rows_does_not_ring_even_for_a_sleeper(db: Database) -> None:
    """A statement that inserts nothing (an event nobody subscribes to; a loop's claim that
    expanded no batch) must not ring: a sleeping loop's own last claim would wake it, and
    its next claim again, for as long as it is idle (migration 0021)."""
    me = uuid.uuid4()
    async with outbox_notifications(db) as heard:
        async with db.connection() as conn:
            await endpoint_row(conn)  # subscribed to message.created only
            assert await store.fall_asleep(conn, me)
        async with db.transaction() as conn:
            await store.enqueue(conn, "ticket.created", [{"n": 1}])
        async with db.connection() as conn:
            taken = await store.claim(conn, limit=10, lease_seconds=30, instance_id=me, succeeded=[],
                                      expand=store.EXPAND_BATCHES)
        assert taken.claimed == [] and taken.expanded == 0
        await asyncio.sleep(0.3)
        assert heard == []
        assert await heard_after_insert(db, heard) == 1  # a real insert still rings


async def test_an_idle_instance_with_no_endpoint_sleeps_quietly(start_instance: Any, db: Database) -> None:
    """Once its loop has announced it sleeps, an idle instance makes no claims until
    something is inserted or its poll comes round (30 s here). Before migration 0021 the
    sleeper's own empty claim rang for it, about a thousand claims a second."""
    inst: Instance = await start_instance(webhooks=replace(SLEEPY, idle_seconds=0.3))
    dispatcher = inst.app[DISPATCHER]
    deadline = time.monotonic() + 5
    while not dispatcher.asleep:
        assert time.monotonic() < deadline, "the idle loop never announced it sleeps"
        await asyncio.sleep(0.05)
    claims = recorded_claims(dispatcher)
    async with outbox_notifications(db) as heard:
        await asyncio.sleep(1.0)
    assert dispatcher.asleep
    assert len(claims) <= 1 and heard == [], f"{len(claims)} claims and {len(heard)} NOTIFYs in 1 s of an idle instance"


async def test_a_loop_does_not_fall_asleep_while_an_insert_is_in_flight(db: Database) -> None:
    """The insert below has looked for sleepers (none) and not committed yet: were the loop
    to sleep now, its last claim would not see the insert and nobody would ring for it. So
    the announcement is refused until the insert commits, and writes nothing."""
    me = uuid.uuid4()
    async with db.connection() as setup:
        await endpoint_row(setup)
    async with db.transaction() as writer:
        await store.enqueue(writer, "message.created", [{"n": 1}])
        async with db.connection() as conn:
            assert not await store.fall_asleep(conn, me)
            assert await conn.fetchval("SELECT count(*) FROM webhook_sleepers") == 0
    async with db.connection() as conn:
        assert await store.fall_asleep(conn, me)
        assert await conn.fetchval("SELECT instance_id FROM webhook_sleepers") == me


async def test_a_sleeping_loop_is_woken_at_once_and_a_busy_one_is_not_rung_per_batch(
    start_instance: Any, db: Database, receiver: Receiver,
) -> None:
    import aiohttp

    inst: Instance = await start_instance(webhooks=SLEEPY)
    dispatcher = inst.app[DISPATCHER]
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        try:
            admin = await api.staff(db, "admin")
            await subscribe(api, admin, receiver, ["message.created"])
            sa, cid = await direct(api)

            async def asleep() -> bool:
                async with db.connection() as conn:
                    return dispatcher.asleep and await conn.fetchval(
                        "SELECT count(*) FROM webhook_sleepers WHERE instance_id = $1", dispatcher.instance_id) == 1

            deadline = time.monotonic() + 5
            while not await asleep():
                assert time.monotonic() < deadline, "the idle loop never announced it sleeps"
                await asyncio.sleep(0.05)

            # Idle: one message is delivered well within the 30 s poll, so by the NOTIFY.
            sent = time.time()
            await sa.ok("message:send", {"conversation_id": cid, "content": "wake up", "client_id": "w1"})
            await receiver.wait_for(lambda: len(receiver.delivered) == 1, timeout=2.0)
            assert receiver.delivered[0].at - sent < 1.0

            # Busy: a stream of batches, each its own commit; the loop, awake, polls for them.
            async with outbox_notifications(db) as heard:
                count = 40
                for i in range(count):
                    await sa.ok("message:send", {"conversation_id": cid, "content": f"m{i}", "client_id": f"b{i}"})
                    await asyncio.sleep(0.01)
                await receiver.wait_for(lambda: len(receiver.delivered) == count + 1, timeout=10.0)
            assert len(heard) <= 5, f"{len(heard)} NOTIFYs for {count} batches: the busy loop was rung per batch"
            assert sorted(r.payload["data"]["message"]["content"] for r in receiver.delivered[1:]) == sorted(
                f"m{i}" for i in range(count))
        finally:
            await api.close_sockets()


async def test_an_awake_loop_backs_off_while_its_claims_find_nothing(db: Database) -> None:
    """A quiet spell before the loop sleeps: the busy poll doubles with each empty claim (to
    8x), so 0.6 s of an awake, idle loop costs about 10 claims, not 60 at a fixed 10 ms."""
    from handlers.webhooks.delivery import Dispatcher

    dispatcher = Dispatcher(db, replace(SLEEPY, idle_seconds=5.0), uuid.uuid4())
    claims = recorded_claims(dispatcher)
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.6)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.close()
    assert not dispatcher.asleep, "idle_seconds has not passed: still awake and polling"
    assert 4 <= len(claims) <= 16, claims
    gaps = [b - a for a, b in zip(claims, claims[1:], strict=False)]
    assert max(gaps) >= 0.07, "the poll backed off to 8 busy polls"
