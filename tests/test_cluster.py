"""Several instances behind one Redis: delivery, presence, and recovery through a Redis restart."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import aiohttp
import pytest

from storage import messages as message_store
from tests.client import Api, Socket
from tests.services import RedisServer

pytestmark = pytest.mark.cluster  # starts Redis servers of its own


async def test_cross_instance_delivery_and_presence(cluster, db) -> None:
    one, two = cluster
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a = await api.register("Ana")
        b = await api.register("Bob")
        sa = await api.socket(a, url=one.url)
        sb = await api.socket(b, url=two.url)
        conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
        await sb.wait_for("conversation:new")
        for i in range(10):
            sender = sa if i % 2 == 0 else sb
            await sender.ok("message:send", {"conversation_id": conv["id"], "content": f"x{i}", "client_id": f"k{i}"})
        # Every member gets every message once. Each instance's own messages (odd seqs from
        # one, even from two) arrive everywhere in seq order; across instances, the protocol
        # lets a client see seq jump (a message from the other instance can come through Redis
        # after the next local one: CI saw 5, 7, 9, 6, 8, 10), and the client then syncs
        # (docs/threads.md "Ordering and durability").
        for s in (sa, sb):
            for seq in range(1, 11):
                await s.wait_for("message:new", lambda d, seq=seq: d["message"]["seq"] == seq)
            seqs = [d["message"]["seq"] for d in s.received("message:new")]
            assert sorted(seqs) == list(range(1, 11)), seqs
            for origin in (1, 0):  # instance one's sends, then instance two's
                assert [q for q in seqs if q % 2 == origin] == list(range(2 - origin, 11, 2)), seqs

        # Presence spans instances: b's last socket (on instance two) closes → a (on one) hears offline.
        await sb.disconnect()
        await sa.wait_for("presence", lambda d: d == {"user_id": b.id, "status": "offline"}, timeout=5)
        sb2 = await api.socket(b, url=two.url)
        await sa.wait_for("presence", lambda d: d == {"user_id": b.id, "status": "online"}, timeout=5)
        # A second tab on the other instance does not flip presence.
        await api.socket(b, url=one.url)
        offline_before = [e for e in sa.received("presence") if e == {"user_id": b.id, "status": "offline"}]
        await sb2.disconnect()
        await asyncio.sleep(0.8)  # well past the 0.3 s presence grace of the tests
        offline_after = [e for e in sa.received("presence") if e == {"user_id": b.id, "status": "offline"}]
        assert offline_after == offline_before, "b still has a tab open on the other instance"
        await api.close_sockets()


async def _view_after_sync(sock: Socket, cid: str, view: dict[int, str]) -> dict[int, str]:
    """What a well-behaved client does after a gap or reconnect: sync from its last seq."""
    while True:
        last = 0  # the highest seq with nothing missing below it
        while last + 1 in view:
            last += 1
        res = await sock.ok("sync", {"since": {cid: last}})
        got = res["conversations"][cid]
        for m in got["messages"]:
            assert m["seq"] not in view or view[m["seq"]] == m["id"], "same seq, different message"
            view[m["seq"]] = m["id"]
        if got["complete"]:
            return view


async def test_property_every_client_ends_with_seq_1_to_n_through_a_redis_restart(start_instance, db) -> None:
    """Senders on two instances; Redis restarts mid-way; one client drops and reconnects.
    Afterwards each client's view of the conversation is exactly seq 1..N, no gaps, no
    duplicates, and equals what the database holds."""
    redis = RedisServer().start()
    channel = f"prop-{uuid.uuid4().hex[:8]}"
    try:
        shared = {"cluster__redis_url": redis.url, "cluster__redis_channel": channel,
                  "gateway__rate_limit_per_second": 500, "gateway__rate_limit_burst": 500}
        one = await start_instance(**shared)
        two = await start_instance(**shared)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            users = [await api.register(f"P{i}") for i in range(4)]
            socks = [await api.socket(u, url=(one if i % 2 == 0 else two).url) for i, u in enumerate(users)]
            conv = (await socks[0].ok("conversation:create", {"kind": "group", "member_ids": [u.id for u in users[1:]]}))["conversation"]
            cid = conv["id"]
            views: list[dict[int, str]] = [dict() for _ in socks]
            seen_twice: list[int] = []

            def recorder(i: int) -> Any:
                async def on_new(data: dict[str, Any]) -> None:
                    m = data["message"]
                    if m["conversation_id"] != cid:
                        return
                    if m["seq"] in views[i]:
                        seen_twice.append(m["seq"])
                    views[i][m["seq"]] = m["id"]
                return on_new

            for i, s in enumerate(socks):
                s.client.on("message:new", recorder(i))

            acked: list[dict[str, Any]] = []
            rng = random.Random(7)

            async def sender(i: int, count: int) -> None:
                for n in range(count):
                    sock = socks[i]
                    if not sock.client.connected:
                        await asyncio.sleep(0.05)
                        continue
                    payload = {"conversation_id": cid, "content": f"u{i}-{n}", "client_id": f"{i}-{n}"}
                    try:
                        ack = await sock.call("message:send", payload, timeout=10)
                    except Exception:
                        continue
                    if ack.get("ok"):
                        acked.append(ack["message"])
                    await asyncio.sleep(rng.random() * 0.01)

            async def chaos() -> None:
                await asyncio.sleep(0.4)
                await asyncio.to_thread(redis.restart, 0.5)
                await asyncio.sleep(0.3)
                # Client 3 drops and comes back (on the other instance) mid-stream.
                await socks[3].disconnect()
                await asyncio.sleep(0.2)
                fresh = await api.socket(users[3], url=one.url)
                fresh.client.on("message:new", recorder(3))
                socks[3] = fresh

            await asyncio.gather(*(sender(i, 75) for i in range(3)), chaos())
            assert len(acked) >= 200, f"only {len(acked)} sends were acked"

            async with db.connection() as conn:
                stored, _ = await message_store.history(conn, uuid.UUID(cid), before_seq=None, limit=100_000)
            truth = {m.seq: str(m.id) for m in stored}
            n = len(truth)
            assert sorted(truth) == list(range(1, n + 1)), "the database has no gaps"
            assert {str(m["id"]) for m in acked} <= set(truth.values()), "every acked message is stored"
            assert not seen_twice, f"delivered twice: {seen_twice[:5]}"

            for i, s in enumerate(socks):
                view = await _view_after_sync(s, cid, views[i])
                assert sorted(view) == list(range(1, n + 1)), f"client {i} has gaps"
                assert view == truth, f"client {i} differs from the database"
            await api.close_sockets()
    finally:
        redis.stop()


async def test_sends_commit_and_ack_while_redis_is_down(start_instance, db) -> None:
    redis = RedisServer().start()
    try:
        inst = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=f"down-{uuid.uuid4().hex[:6]}")
        async with aiohttp.ClientSession() as session:
            api = Api(session, inst.url)
            a, b = await api.register("Rd"), await api.register("Rb")
            sa, sb = await api.socket(a), await api.socket(b)
            conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
            redis.stop()
            ack = await sa.ok("message:send", {"conversation_id": conv["id"], "content": "while down", "client_id": "d1"})
            assert ack["message"]["seq"] == 1
            # Local delivery does not need Redis.
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "while down")
            status, body = await api.request("GET", "/api/health")
            assert status == 200 and body["redis"] == "down" and body["status"] == "degraded"
            redis.start()
            # The instance tells its clients to resync once Redis is back.
            await sb.wait_for("resync", timeout=15)
            await api.close_sockets()
    finally:
        redis.stop()
