"""Per-room Redis channels between instances (server/roomchannels.py), with real Redis and
several real instances: events still reach members everywhere, an instance with no member
of a conversation receives nothing for it (read from its /metrics), leaving and
disconnecting unsubscribe, and a join that returns history has no gap even when the
subscription is slow to take."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis import asyncio as aioredis

from bench.cluster_bench import outcome as emits
from bench.cluster_bench import read_counters, received
from storage.embedded import free_port
from tests.client import Api, Instance, Socket
from tests.redis_helpers import channel_prefix, eventually
from tests.services import RedisServer
from tests.ticket_helpers import escalate, tutor_conversation

pytestmark = pytest.mark.cluster


def received_all(counters: dict[str, float]) -> float:
    """Every pub/sub message an instance received, whatever the channel, probes aside."""
    return received(counters, "received_total")


async def shard_subscribers(redis_url: str, channel: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    finally:
        await client.aclose()
    return int(reply[1])


async def _three(start_instance: Any, redis_url: str, mode: str, **extra: Any) -> list[Instance]:
    channel = f"rooms-{uuid.uuid4().hex[:8]}"
    return [
        await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel,
                             cluster__redis_channels=mode, **extra)
        for _ in range(3)
    ]


@pytest.mark.parametrize("mode,fanout", [("room", "fast"), ("room", "stock"), ("single", "fast")])
async def test_threads_reach_members_and_only_their_instances(start_instance, redis_url, mode, fanout) -> None:
    """Direct and group threads across three instances; the third holds nobody in them.
    With room channels it receives nothing at all while they talk (with the encode-once
    delivery or python-socketio's own, STUDYHALL_FANOUT=stock); with the single channel
    (python-socketio's design, kept as the baseline) it receives every event and ignores it."""
    one, two, three = await _three(start_instance, redis_url, mode, gateway__fanout=fanout)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a, b, d, c = [await api.register(n) for n in ("Ana", "Bob", "Dee", "Cy")]
        sa = await api.socket(a, url=one.url)
        sb = await api.socket(b, url=two.url)
        sd = await api.socket(d, url=two.url)
        await api.socket(c, url=three.url)  # connected, but in none of these conversations
        direct = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
        group = (await sb.ok("conversation:create", {"kind": "group", "title": "Study group",
                                                      "member_ids": [a.id, d.id]}))["conversation"]
        # Connects' presence notices have settled, and the one notice every instance hears
        # when a group is created (its members' sockets enter its room: handlers/grouprooms.py).
        await asyncio.sleep(0.3)
        before = await read_counters(session, three.url)
        for i in range(6):
            sender = sa if i % 2 == 0 else sb
            await sender.ok("message:send", {"conversation_id": direct["id"], "content": f"d{i}", "client_id": f"d{i}"})
            await sender.ok("message:send", {"conversation_id": group["id"], "content": f"g{i}", "client_id": f"g{i}"})
        # Acks never wait on Redis, so instance one may publish d4 after instance two has
        # published d5: across two senders' instances arrival order is not seq order, and
        # clients order by seq (PROTOCOL.md). Each instance's own messages keep their order.
        for sock, convs in ((sa, (direct, group)), (sb, (direct, group)), (sd, (group,))):
            for conv in convs:
                def seqs(sock: Socket = sock, conv: dict[str, Any] = conv) -> list[int]:
                    return [m["message"]["seq"] for m in sock.received("message:new")
                            if m["message"]["conversation_id"] == conv["id"]]

                async def all_six(seqs: Any = seqs) -> bool:
                    return len(seqs()) >= 6

                await eventually(all_six)
                await asyncio.sleep(0.1)  # room for a duplicate to show
                got = seqs()
                assert sorted(got) == list(range(1, 7)), "each member gets every message once"
                assert [q for q in got if q % 2] == [1, 3, 5], "instance one's messages in their order"
                assert [q for q in got if not q % 2] == [2, 4, 6], "instance two's messages in their order"
        await asyncio.sleep(0.3)
        after = await read_counters(session, three.url)
        two_counters = await read_counters(session, two.url)
        await api.close_sockets()

    assert emits(two_counters, "delivered") >= 6, "instance two delivered the messages instance one sent"
    if mode == "room":
        assert received_all(after) == received_all(before), "an instance with no member received events for these conversations"
        assert emits(after, "ignored") == emits(before, "ignored") == 0
    else:
        assert received_all(after) - received_all(before) >= 12, "the single channel brings every event to every instance"
        assert emits(after, "ignored") - emits(before, "ignored") >= 12


async def test_live_rooms_and_tickets_across_instances_and_unsubscribe(start_instance, redis_url, db) -> None:
    """A live room whose host is on one instance and student on another; a ticket escalated
    on one instance reaches an agent on another. Leaving the room, then disconnecting, drops
    the instance's subscriptions: later events for them no longer reach it."""
    one, two, three = await _three(start_instance, redis_url, "room")
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        mentor = await api.staff(db, "mentor")
        student = await api.register("Stu")
        agent = await api.staff(db, "agent")
        host = await api.socket(mentor, url=one.url)
        stu = await api.socket(student, url=two.url)
        ag = await api.socket(agent, url=three.url)
        live = await api.live_session(mentor, "Live", 5)
        await host.ok("room:join", {"live_session_id": live["id"]})
        await stu.ok("room:join", {"live_session_id": live["id"]})
        conv_channel = f"{channel_prefix(one)}:room:/:conv:{live['conversation_id']}"
        assert await shard_subscribers(redis_url, conv_channel) == 2, "instances one and two hear the room"

        sent = (await host.ok("message:send", {"conversation_id": live["conversation_id"], "content": "hello class",
                                               "client_id": "h1"}))["message"]
        got = await stu.wait_for("message:new", lambda d: d["message"]["id"] == sent["id"])
        assert got["message"]["content"] == "hello class"

        # A ticket escalated on instance one reaches the agent on instance three (staff room).
        cid = await tutor_conversation(db, student)
        ticket = await escalate(one, cid, "human_requested", category="human_request")
        got = await ag.wait_for("ticket:new")
        assert got["ticket"]["id"] == str(ticket["id"])

        # Leaving the room: instance two no longer holds its channel, nor hears the room.
        await stu.ok("room:leave", {"live_session_id": live["id"]})

        async def dropped() -> bool:
            return await shard_subscribers(redis_url, conv_channel) == 1
        await eventually(dropped)
        before = await read_counters(session, two.url)
        await host.ok("message:send", {"conversation_id": live["conversation_id"], "content": "after", "client_id": "h2"})
        await host.wait_for("message:new", lambda d: d["message"]["content"] == "after")
        await stu.expect_none("message:new", lambda d: d["message"]["content"] == "after", within=0.3)
        after = await read_counters(session, two.url)
        assert after.get('studyhall_redis_received_total{channel="room"}', 0) == \
            before.get('studyhall_redis_received_total{channel="room"}', 0)

        # Disconnecting: the student's own (user) channel is dropped too.
        user_channel = f"{channel_prefix(one)}:room:/:user:{student.id}"
        assert await shard_subscribers(redis_url, user_channel) == 1
        await stu.disconnect()

        async def gone() -> bool:
            return await shard_subscribers(redis_url, user_channel) == 0
        await eventually(gone)
        counters = await read_counters(session, two.url)
        assert counters["studyhall_redis_room_channels"] == 0, "instance two holds no socket, so no room channel"
        await api.close_sockets()


class SlowProxy:
    """A TCP proxy to Redis that holds each SSUBSCRIBE the instance sends for `delay` seconds
    (and, to keep the order, whatever it sends after it until then); everything else passes
    at once. The instance's room subscriptions take effect late, as on a loaded Redis."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SlowProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for coro in (self._pipe(reader, up_writer, self.delay), self._pipe(up_reader, writer, 0.0)):
            task = asyncio.get_running_loop().create_task(coro)
            self.tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        loop = asyncio.get_running_loop()
        not_before = 0.0
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                held = delay if b"SSUBSCRIBE" in data.upper() else 0.0
                not_before = max(loop.time() + held, not_before)
                if not_before > loop.time():
                    loop.call_at(not_before, writer.write, data)
                else:
                    writer.write(data)
        writer.close()


@contextlib.asynccontextmanager
async def slow_redis(redis_url: str, delay: float) -> AsyncIterator[str]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with SlowProxy(port, delay) as proxy:
        yield f"redis://127.0.0.1:{proxy.port}/0"


async def test_join_while_messages_are_in_flight_misses_nothing(start_instance, redis_url, db) -> None:
    """The student's instance reaches Redis through a link that holds its SSUBSCRIBEs 0.3 s,
    so its subscription to the room takes effect late, while the host on another instance sends
    a message every 20 ms. `room:join` returns only once the subscription is confirmed, so
    history (read after it) plus live events cover every message: no gap. Without that wait
    the messages committed between the history read and the late subscription are lost."""
    channel = f"race-{uuid.uuid4().hex[:8]}"
    async with slow_redis(redis_url, 0.3) as slow_url:
        one = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel)
        two = await start_instance(cluster__redis_url=slow_url, cluster__redis_channel=channel,
                                   cluster__redis_timeout_seconds=1.0)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            mentor = await api.staff(db, "mentor")
            student = await api.register("Late")
            host = await api.socket(mentor, url=one.url)
            stu: Socket = await api.socket(student, url=two.url)
            live = await api.live_session(mentor, "Race", 5)
            await host.ok("room:join", {"live_session_id": live["id"]})
            cid = live["conversation_id"]
            stop = asyncio.Event()
            sent: list[int] = []

            async def talk() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    ack = await host.ok("message:send", {"conversation_id": cid, "content": f"m{i}", "client_id": f"m{i}"})
                    sent.append(ack["message"]["seq"])
                    await asyncio.sleep(0.02)

            talker = asyncio.get_running_loop().create_task(talk())
            await asyncio.sleep(0.2)
            joined = await stu.ok("room:join", {"live_session_id": live["id"]}, timeout=10)
            await asyncio.sleep(0.8)  # well past the slow link's delay: live events flow
            stop.set()
            await talker
            last = sent[-1]
            await stu.wait_for("message:new", lambda d: d["message"]["seq"] == last, timeout=5)
            history = [m["seq"] for m in joined["messages"]]
            live_seqs = [d["message"]["seq"] for d in stu.received("message:new")
                         if d["message"]["conversation_id"] == cid]
            first = min(history) if history else min(live_seqs)
            missing = sorted(set(range(first, last + 1)) - set(history) - set(live_seqs))
            assert missing == [], f"messages committed while the student joined never reached it: {missing}"
            assert history and max(history) < last, "the join happened while messages were flowing"
            await api.close_sockets()


async def test_an_emit_to_several_rooms_reaches_each_socket_once(start_instance, redis_url, db) -> None:
    """An agent's socket is in its own user room and in the staff room. An event for both
    rooms, sent from another instance, comes over two room channels; the agent gets it once.
    A third instance, with nobody in either room, receives neither copy."""
    from handlers.events import STAFF_ROOM, user_room
    from tests.ticket_helpers import core_of

    one, two, three = await _three(start_instance, redis_url, "room")
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        agent = await api.staff(db, "agent")
        bystander = await api.register("By")
        ag = await api.socket(agent, url=two.url)
        await api.socket(bystander, url=three.url)
        await asyncio.sleep(0.2)
        before = await read_counters(session, three.url)
        for i in range(3):
            await core_of(one).events.to_rooms([user_room(agent.id), STAFF_ROOM], "ticket:note", {"n": i})
        await ag.wait_for("ticket:note", lambda d: d["n"] == 2)
        await asyncio.sleep(0.3)
        assert [d["n"] for d in ag.received("ticket:note")] == [0, 1, 2], "one copy each, in order"
        two_counters = await read_counters(session, two.url)
        assert two_counters['studyhall_redis_received_total{channel="room"}'] >= 6, "both rooms' copies came"
        assert received_all(await read_counters(session, three.url)) == received_all(before)
        await api.close_sockets()


async def test_an_emit_to_more_rooms_than_the_limit_goes_once_to_every_instance(start_instance, redis_url) -> None:
    """Past STUDYHALL_REDIS_ROOM_EMIT_LIMIT rooms, one copy on the global channel is cheaper
    than one per room: members still get the message once, and every instance hears it."""
    one, two, three = await _three(start_instance, redis_url, "room", cluster__redis_room_emit_limit=2)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a, b, d, c = [await api.register(n) for n in ("Ana", "Bob", "Dee", "Cy")]
        sa = await api.socket(a, url=one.url)
        sb = await api.socket(b, url=two.url)
        sd = await api.socket(d, url=two.url)
        await api.socket(c, url=three.url)
        group = (await sa.ok("conversation:create", {"kind": "group", "title": "G", "member_ids": [b.id, d.id]}))["conversation"]
        await asyncio.sleep(0.3)
        before = await read_counters(session, three.url)
        await sa.ok("message:send", {"conversation_id": group["id"], "content": "to all three", "client_id": "x"})
        for sock in (sb, sd):
            await sock.wait_for("message:new", lambda m: m["message"]["content"] == "to all three")
        await asyncio.sleep(0.3)
        for sock in (sb, sd):
            assert len([m for m in sock.received("message:new") if m["message"]["content"] == "to all three"]) == 1
        after = await read_counters(session, three.url)
        assert after['studyhall_redis_received_total{channel="global"}'] - \
            before.get('studyhall_redis_received_total{channel="global"}', 0) == 1
        assert emits(after, "ignored") - emits(before, "ignored") == 1
        await api.close_sockets()


async def test_after_a_redis_restart_every_room_channel_is_subscribed_again(start_instance) -> None:
    """Redis restarts (all subscriptions gone). Each instance's listener reconnects and
    subscribes again to every room its sockets are in: later messages arrive live, without
    the client asking `sync`, and the room channels are back in Redis."""
    redis = RedisServer().start()
    channel = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        one = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
        two = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b = await api.register("Ana"), await api.register("Bob")
            sa = await api.socket(a, url=one.url)
            sb = await api.socket(b, url=two.url)
            conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
            await sb.wait_for("conversation:new")
            b_channel = f"{channel}:room:/:user:{b.id}"
            assert await shard_subscribers(redis.url, b_channel) == 1

            await asyncio.to_thread(redis.restart, 0.5)

            async def resubscribed() -> bool:
                try:
                    return await shard_subscribers(redis.url, b_channel) == 1
                except Exception:
                    return False
            await eventually(resubscribed, timeout=15)
            await sb.wait_for("resync", timeout=10)  # what was published meanwhile is recovered by seq
            for i in range(3):
                await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"after {i}", "client_id": f"r{i}"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "after 2", timeout=10)
            got = [d["message"]["content"] for d in sb.received("message:new")]
            assert got == ["after 0", "after 1", "after 2"]
            await api.close_sockets()
    finally:
        redis.stop()


async def test_an_emit_to_one_socket_of_another_instance_goes_on_the_global_channel(start_instance, redis_url) -> None:
    """python-socketio lets a server emit to any sid; nobody subscribes to a sid's own
    channel, so an emit to a sid held elsewhere travels on the global channel and arrives."""
    from server.keys import SIO

    one, two, _ = await _three(start_instance, redis_url, "room")
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        bob = await api.register("Bob")
        sb = await api.socket(bob, url=two.url)
        sid = sb.client.get_sid("/")
        assert sid is not None
        await one.app[SIO].emit("ticket:note", {"to": "one socket"}, to=sid)
        got = await sb.wait_for("ticket:note", timeout=5)
        assert got == {"to": "one socket"}
        await api.close_sockets()
