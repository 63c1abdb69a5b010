"""Webhook delivery yields to the message pipeline (handlers/webhooks/pacing.py), and what
each delivery costs is paid once (handlers/webhooks/sender.py, targets.py).

Real parts throughout: the app's own message writer committing to PostgreSQL, its outbox
rows, the delivery loop, and a receiver verifying every request with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

from handlers.batching import Batcher
from handlers.tokenbucket import TokenBucket
from handlers.webhooks.pacing import PipelineLoad
from handlers.webhooks.sender import signed_headers
from handlers.webhooks.targets import GuardedResolver, RefusedAddress
from server.keys import CORE
from server.webhooks import DISPATCHER
from storage.messages import NewMessage
from tests.client import Api, Instance
from tests.test_webhooks import FAST, subscribe
from tests.webhook_receiver import Receiver

FLOOR = 20.0  # deliveries per second while the pipeline is saturated
PACED = replace(FAST, saturated_rate=FLOOR, saturated_batch_size=3.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


async def conversation(api: Api, n: int) -> tuple[uuid.UUID, uuid.UUID]:
    """(sender id, conversation id) of a new direct conversation."""
    a, b = await api.register(f"A{n}"), await api.register(f"B{n}")
    sock = await api.socket(a)
    conv = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    return uuid.UUID(a.id), uuid.UUID(conv["id"])


def metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def test_a_saturated_pipeline_gets_deliveries_at_the_floor_then_full_speed_when_idle(
    start_instance: Any, db: Any, receiver: Receiver
) -> None:
    """Bursts of messages keep the writer's batches large for a few seconds: delivery
    falls to the floor rate (no less: the outbox still drains; not much more: it yields),
    batches are expanded only as the floor needs them, the outbox lag metric grows, and once the bursts stop the backlog goes out at full
    speed, every event exactly once."""
    hooked: Instance = await start_instance(webhooks=PACED)
    dispatcher = hooked.app[DISPATCHER]
    pipeline = hooked.app[CORE].pipeline
    assert pipeline is not None
    writer = pipeline.writer
    async with aiohttp.ClientSession() as session:
        api = Api(session, hooked.url)
        admin = await api.staff(db, "admin")
        await subscribe(api, admin, receiver, ["message.created"])
        convs = [await conversation(api, n) for n in range(2)]

        # Saturate: every 100 ms, 60 messages at once into two conversations (batches of ~30).
        sent: list[str] = []
        yielding_seen = lag_seen = 0.0
        start = time.time()
        while time.time() - start < 3.0:
            burst = [NewMessage(conversation_id=cid, sender_id=uid, role="user", content=f"m{len(sent) + i}")
                     for i, (uid, cid) in enumerate(convs * 30)]
            done = await asyncio.gather(*(writer.insert(m) for m in burst))
            sent += [str(message.id) for message, _ in done]
            yielding_seen = max(yielding_seen, float(dispatcher.yielding))
            await asyncio.sleep(0.1)
            if time.time() - start > 2.0 and not lag_seen:
                status, text = await api.request("GET", "/metrics")
                assert status == 200
                lag_seen = metric(text, "studyhall_webhook_outbox_lag_seconds")
                assert metric(text, "studyhall_webhook_yielding") == 1.0
                async with db.connection() as conn:  # the backlog waits as batches, not rows
                    pending = await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
                    waiting = await conn.fetchval("SELECT count(*) FROM webhook_message_batches")
                # A batch holds up to 60 messages here; the floor sends 2 a claim. Expanding a
                # batch per claim (10 a second) left hundreds of rows pending by now.
                assert pending <= 150 and waiting > 0, (pending, waiting)
        end = time.time()
        # From half a second in (the first quarter second's batches tell it the pipeline is busy).
        paced_for = end - (start + 0.5)
        during = sum(1 for r in receiver.delivered if start + 0.5 <= r.at <= end)
        before_end = sum(1 for r in receiver.delivered if r.at <= end)

        assert yielding_seen == 1.0
        assert len(sent) > 1000  # far more than the floor lets out meanwhile
        # The floor: it still drains (a claim's burst of FLOOR/10 at most comes on top).
        assert during >= 0.6 * FLOOR * paced_for, during
        assert during <= 1.5 * FLOOR * paced_for + 8, during
        assert lag_seen > 0.5  # operators see it fall behind

        # Idle: the backlog goes out at full speed, far above the floor.
        backlog, idle_start = len(sent) - before_end, time.time()
        await receiver.wait_for(lambda: len(receiver.delivered) >= len(sent), timeout=60)
        drained = time.time() - idle_start
        assert backlog / drained >= 5 * FLOOR, (backlog, drained)
        assert dispatcher.yielding is False

        # Nothing lost, nothing twice.
        await asyncio.sleep(0.5)
        counts = Counter(r.webhook_id for r in receiver.attempts)
        assert set(counts.values()) == {1}, counts.most_common(3)
        assert sorted(r.payload["data"]["message"]["id"] for r in receiver.delivered) == sorted(sent)
        for _ in range(40):  # the last claim found nothing due: no lag left
            status, text = await api.request("GET", "/metrics")
            if metric(text, "studyhall_webhook_outbox_lag_seconds") == 0.0:
                break
            await asyncio.sleep(0.1)
        assert metric(text, "studyhall_webhook_outbox_lag_seconds") == 0.0
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'") == 0
            assert await conn.fetchval("SELECT count(*) FROM webhook_message_batches") == 0
        await api.close_sockets()


async def test_pipeline_load_reads_the_writers_batches() -> None:
    """Saturated while requests queue behind running batches (a large mean batch), not
    while they go one at a time, and not once the queue is gone."""

    async def commit(batch: list[int]) -> list[int | BaseException]:
        await asyncio.sleep(0.01)
        return list[int | BaseException](batch)

    batcher: Batcher[int, int] = Batcher(commit, concurrency=2)
    load = PipelineLoad(batcher, saturated_batch_size=4, window=0.05, hold=0.3)
    for i in range(10):  # one at a time
        await batcher.submit(i)
    await asyncio.sleep(0.06)
    assert load.saturated() is False and 0 < load.mean_batch < 2
    await asyncio.gather(*(batcher.submit(i) for i in range(200)))
    await asyncio.sleep(0.06)
    assert load.saturated() is True and load.mean_batch >= 4
    await asyncio.sleep(0.06)
    assert load.saturated() is True and load.mean_batch == 0  # none finished lately: maybe a slow commit
    await asyncio.sleep(0.3)
    assert load.saturated() is False and load.mean_batch == 0  # none for longer than `hold`: idle


def test_pacer_grants_its_rate() -> None:
    pacer = TokenBucket(rate=100, burst=10)
    assert pacer.available() == 10
    pacer.spend(10)
    assert pacer.available() == 0 and 0.005 < pacer.wait_seconds(1) <= 0.011
    time.sleep(0.05)
    assert 4 <= pacer.available() <= 6


def test_signatures_verify_with_the_standard_library() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"message.created","data":{"a": 1}}'
    now = int(time.time())
    headers = signed_headers(Webhook(secret), "msg_1", now, body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(body, headers) == {"type": "message.created", "data": {"a": 1}}
    headers = signed_headers(Webhook(secret), "msg_1", now, body + b" ")
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, headers)


class CountingResolver(AbstractResolver):
    """aiohttp's real resolver, counting how often it is asked."""

    calls = 0

    def __init__(self) -> None:
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        CountingResolver.calls += 1
        return await self.inner.resolve(host, port, family)

    async def close(self) -> None:
        await self.inner.close()


async def test_the_guarded_resolver_caches_only_checked_answers() -> None:
    """A name's checked addresses are kept for the TTL (not resolved per connection); a
    name that resolves only to refused addresses is refused every time, never cached."""
    CountingResolver.calls = 0
    allowed = GuardedResolver(allow_private=True, cache_seconds=0.3, inner=CountingResolver())
    first = await allowed.resolve("localhost", 80)
    assert await allowed.resolve("localhost", 80) == first and CountingResolver.calls == 1
    await asyncio.sleep(0.35)
    await allowed.resolve("localhost", 80)
    assert CountingResolver.calls == 2  # the TTL ran out: resolved and checked again

    guarded = GuardedResolver(allow_private=False, cache_seconds=10, inner=CountingResolver())
    for _ in range(2):
        with pytest.raises(RefusedAddress, match="loopback"):
            await guarded.resolve("localhost", 80)
    assert CountingResolver.calls == 4 and not guarded._cache
    await allowed.close()
    await guarded.close()
