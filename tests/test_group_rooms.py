"""Group conversations fan out through one room per group (handlers/grouprooms.py), with
real Redis and several real instances: a 40-member group reaches each member once, in seq
order, and no instance without a member hears of it; sockets enter the group's room at
connect and when the group is created (even on an instance whose subscription is slow),
and leave it when the member is removed, also when the notice is lost while Redis is down
(the periodic check, server/grouprooms.py, repairs it)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from bench.cluster_bench import outcome as emits
from bench.cluster_bench import read_counters
from handlers import threads
from handlers.events import group_room
from server.grouprooms import GroupRoomCheck
from server.keys import CORE, GATEWAY, SIO
from tests.client import Api, Instance, User
from tests.redis_helpers import channel_prefix, eventually, in_room, instances, seqs
from tests.services import RedisServer
from tests.test_room_channels import received_all, shard_subscribers, slow_redis

pytestmark = pytest.mark.cluster

STEADY = {"threads__group_room_settle_seconds": 0.0}  # a group's room alone from its first message


def _group_channel(instance: Instance, conversation_id: str) -> str:
    return f"{channel_prefix(instance)}:room:/:{group_room(conversation_id)}"


async def _subscribed(redis_url: str, channel: str, count: int) -> None:
    async def check() -> bool:
        return await shard_subscribers(redis_url, channel) == count
    await eventually(check)


@pytest.mark.parametrize("fanout", ["fast", "stock"])
async def test_a_40_member_group_reaches_each_member_once_and_no_other_instance(start_instance, redis_url,
                                                                                 fanout) -> None:
    """40 members, 20 on instance one and 20 on instance two; instance three holds only a
    bystander. Messages from both sides reach every member once, in seq order; typing and
    read reach the other members, not the author's own sockets (on either instance); instance three receives
    nothing at all, and instance two receives one copy per event, not one per member. With
    the encode-once delivery and with python-socketio's own (STUDYHALL_FANOUT=stock)."""
    one, two, three = await instances(start_instance, redis_url, 3, gateway__fanout=fanout, **STEADY)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        members: list[User] = list(await asyncio.gather(*(api.register(f"M{i}") for i in range(40))))
        bystander = await api.register("By")
        socks = [await api.socket(u, url=(one if i < 20 else two).url) for i, u in enumerate(members)]
        await api.socket(bystander, url=three.url)
        other_tab = await api.socket(members[25], url=one.url)  # the typist's second tab, elsewhere
        group = (await socks[0].ok("conversation:create", {
            "kind": "group", "title": "Class", "member_ids": [u.id for u in members[1:]]}))["conversation"]
        cid = group["id"]
        await _subscribed(redis_url, _group_channel(one, cid), 2)  # both member instances hear the room
        await asyncio.sleep(0.2)
        before3, before2 = await read_counters(session, three.url), await read_counters(session, two.url)

        for i in range(10):
            sender = socks[0] if i % 2 == 0 else socks[25]
            await sender.ok("message:send", {"conversation_id": cid, "content": f"m{i}", "client_id": f"m{i}"})
        for sock in socks:
            await sock.wait_for("message:new", lambda d: d["message"]["conversation_id"] == cid
                                and d["message"]["seq"] == 10)
        for sock in socks:
            assert seqs(sock, cid) == list(range(1, 11)), "each member gets every message once, in order"

        await socks[25].ok("typing", {"conversation_id": cid, "typing": True})
        await socks[3].ok("read", {"conversation_id": cid, "seq": 10})
        for i, sock in enumerate(socks):
            if i != 25:
                await sock.wait_for("typing", lambda d: d["user_id"] == members[25].id)
            if i != 3:
                await sock.wait_for("read", lambda d: d["user_id"] == members[3].id)
        await asyncio.sleep(0.3)
        assert socks[25].received("typing") == [] and socks[3].received("read") == [], "no echo to the author"
        assert other_tab.received("typing") == [], "nor to the author's tab on another instance"
        assert seqs(other_tab, cid) == list(range(1, 11))
        for i, sock in enumerate(socks):
            assert len(sock.received("typing")) == (i != 25) and len(sock.received("read")) == (i != 3)

        after3, after2 = await read_counters(session, three.url), await read_counters(session, two.url)
        assert received_all(after3) == received_all(before3), "an instance with no member heard the group"
        # Instance two hears one copy of each group event, not one per member: the 5 messages
        # sent on one and the read marker (delivered), and the echo of its own 5 and typing.
        assert emits(after2, "delivered") - emits(before2, "delivered") == 6
        assert received_all(after2) - received_all(before2) == 12
        await api.close_sockets()


async def test_a_member_who_connects_later_gets_live_messages(start_instance, redis_url) -> None:
    """A member's socket that connects after the group exists, on an instance where no other
    member is, enters the group's room at connect: a message sent right after arrives live."""
    one, two = await instances(start_instance, redis_url, 2, **STEADY)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a, b, late = [await api.register(n) for n in ("Ana", "Bob", "Late")]
        sa = await api.socket(a, url=one.url)
        group = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, late.id]}))["conversation"]
        await sa.ok("message:send", {"conversation_id": group["id"], "content": "before", "client_id": "b"})
        sl = await api.socket(late, url=two.url)
        assert in_room(two, sl, group_room(group["id"]))
        await sa.ok("message:send", {"conversation_id": group["id"], "content": "live", "client_id": "l"})
        got = await sl.wait_for("message:new", lambda d: d["message"]["content"] == "live")
        assert got["message"]["seq"] == 2
        await sl.expect_none("message:new", lambda d: d["message"]["content"] == "before", within=0.2)
        await api.close_sockets()


async def test_a_new_groups_first_message_reaches_a_member_on_a_slow_instance(start_instance, redis_url) -> None:
    """Instance two's SSUBSCRIBEs take 0.3 s (a loaded Redis), so the notice that makes its
    member's socket enter the new group's room takes effect well after the creator's first
    messages. They still arrive live, once each: while a group settles its events also go
    to its members' own rooms (handlers/grouprooms.py)."""
    channel = f"groups-{uuid.uuid4().hex[:8]}"
    async with slow_redis(redis_url, 0.3) as slow_url:
        one = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel)
        two = await start_instance(cluster__redis_url=slow_url, cluster__redis_channel=channel,
                                   cluster__redis_timeout_seconds=1.0)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b, d = [await api.register(n) for n in ("Ana", "Bob", "Dee")]
            sa = await api.socket(a, url=one.url)
            sb = await api.socket(b, url=two.url)
            group = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, d.id]}))["conversation"]
            cid = group["id"]
            for i in range(3):
                await sa.ok("message:send", {"conversation_id": cid, "content": f"first {i}", "client_id": f"f{i}"})
            await sb.wait_for("message:new", lambda m: m["message"]["seq"] == 3, timeout=5)
            await asyncio.sleep(0.6)  # the slow subscription has taken effect: the room copy is heard too
            await sa.ok("message:send", {"conversation_id": cid, "content": "then", "client_id": "t"})
            await sb.wait_for("message:new", lambda m: m["message"]["seq"] == 4, timeout=5)
            await asyncio.sleep(0.2)
            assert seqs(sb, cid) == [1, 2, 3, 4], "live, once each, in order"
            assert in_room(two, sb, group_room(cid))
            await api.close_sockets()


async def test_a_removed_member_stops_receiving_on_every_instance(start_instance, redis_url) -> None:
    """A member on instance two is removed through instance one: their socket leaves the
    group's room at once (instance two drops the channel: it held no other member), the
    others keep receiving, and the removed member is told with `conversation:updated`."""
    one, two = await instances(start_instance, redis_url, 2, **STEADY)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a, b, d = [await api.register(n) for n in ("Ana", "Bob", "Dee")]
        sa, sd = await api.socket(a, url=one.url), await api.socket(d, url=one.url)
        sb = await api.socket(b, url=two.url)
        cid = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, d.id]}))["conversation"]["id"]
        await _subscribed(redis_url, _group_channel(one, cid), 2)
        await sa.ok("message:send", {"conversation_id": cid, "content": "all", "client_id": "1"})
        await sb.wait_for("message:new", lambda m: m["message"]["content"] == "all")

        assert await threads.remove_member(one.app[CORE], uuid.UUID(cid), uuid.UUID(b.id)) is True
        updated = await sb.wait_for("conversation:updated")
        assert b.id not in [m["id"] for m in updated["conversation"]["members"]]
        await _subscribed(redis_url, _group_channel(one, cid), 1)
        assert not in_room(two, sb, group_room(cid))
        await sa.ok("message:send", {"conversation_id": cid, "content": "without bob", "client_id": "2"})
        await sd.wait_for("message:new", lambda m: m["message"]["content"] == "without bob")
        await sb.expect_none("message:new", lambda m: m["message"]["content"] == "without bob", within=0.3)
        await sb.expect_none("typing", within=0)
        assert (await sb.call("message:send", {"conversation_id": cid, "content": "x", "client_id": "x"}))["error"][
            "code"] == "not_found"
        await api.close_sockets()


async def test_a_lost_leave_notice_is_repaired_by_the_periodic_check(start_instance) -> None:
    """Redis is down while a member on instance two is removed: the leave notice (and the
    remote leave_room) is lost, and once Redis is back that socket is still in the group's
    room. The periodic check reads the database and takes it out; later messages reach the
    others and not the removed member. A socket that lost its room is put back the same way."""
    redis = RedisServer().start()
    try:
        one, two = await instances(start_instance, redis.url, 2, **STEADY)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b, d = [await api.register(n) for n in ("Ana", "Bob", "Dee")]
            sa = await api.socket(a, url=one.url)
            sb, sd = await api.socket(b, url=two.url), await api.socket(d, url=two.url)
            cid = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, d.id]}))["conversation"]["id"]
            room = group_room(cid)
            await _subscribed(redis.url, _group_channel(one, cid), 2)

            redis.stop()
            assert await threads.remove_member(one.app[CORE], uuid.UUID(cid), uuid.UUID(b.id)) is True
            await asyncio.sleep(0.3)
            redis.start()
            await sb.wait_for("resync", timeout=15)
            assert in_room(two, sb, room), "the leave notice was lost with Redis"

            check = GroupRoomCheck(two.app[CORE], two.app[GATEWAY], two.app[SIO])
            # Also a socket that lost its room (as after a lost enter notice) is put back.
            await two.app[SIO].leave_room(sd.client.get_sid("/"), room)
            assert await check.check_once() == 2
            assert not in_room(two, sb, room) and in_room(two, sd, room)
            assert await check.check_once() == 0, "nothing left to repair"

            await sa.ok("message:send", {"conversation_id": cid, "content": "after", "client_id": "a"})
            await sd.wait_for("message:new", lambda m: m["message"]["content"] == "after", timeout=5)
            await sb.expect_none("message:new", lambda m: m["message"]["content"] == "after", within=0.3)
            await api.close_sockets()
    finally:
        redis.stop()
