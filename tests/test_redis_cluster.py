"""Studyhall on a real Redis Cluster (tests/services.py: 3 masters on loopback, no
replicas) with `REDIS_URL=redis+cluster://...` (server/rediscluster.py).

Two instances that hold the members, and a third that holds nobody in the conversations:
direct, group and live-room messages cross instances; room channels are subscribed on
the node that owns each channel's slot, which spreads them over several nodes; the third
instance receives nothing for the conversations; logout notices act on every instance;
rate limits count across instances in the Cluster; a master killed and restarted on its
port is survived: every acked message reaches its members (live, or through `resync` then
`sync` by seq) and the subscriptions come back on the restarted node; and a slot moved to
another master (resharding, or what a failover does) is followed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.cluster_bench import outcome as emits
from bench.cluster_bench import read_counters, received
from server.keys import SIO
from server.rediscluster import ClusterListener
from tests.client import Api, Instance, Socket
from tests.redis_helpers import channel_prefix, eventually, instances, seqs
from tests.services import RedisCluster
from tests.test_hardening_auth import assert_rate_limited, post
from tests.test_hardening_revoke import NO_SWEEP, _closed, _forget_rows

pytestmark = pytest.mark.cluster


def _listener(instance: Instance) -> ClusterListener:
    pubsub = instance.app[SIO].manager.pubsub
    assert isinstance(pubsub, ClusterListener), "a redis+cluster:// URL gives the cluster listener"
    return pubsub


async def _node_command(port: int, *args: Any) -> Any:
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        return await client.execute_command(*args)
    finally:
        await client.aclose()


async def _shard_subscribers(port: int, channel: str) -> int:
    """SSUBSCRIBE count for a channel on one node (PUBSUB SHARDNUMSUB is per node)."""
    reply = await _node_command(port, "PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


async def _owner(cluster: RedisCluster, channel: str) -> int:
    """The port of the node serving the channel's slot, as the Cluster itself says."""
    slot = int(await _node_command(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", channel))
    return cluster.port_of_slot(slot)


@pytest.mark.parametrize("fanout", ["fast", "stock"])
async def test_direct_group_and_live_room_messages_cross_instances_on_a_cluster(start_instance, redis_cluster, db,
                                                                                fanout) -> None:
    """With the encode-once delivery and with python-socketio's own (STUDYHALL_FANOUT=stock)."""
    one, two, three = await instances(start_instance, redis_cluster.url, 3, gateway__fanout=fanout)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a, c = await api.register("Ana"), await api.register("Cy")
        mentor = await api.staff(db, "mentor")
        sa = await api.socket(a, url=one.url)
        host = await api.socket(mentor, url=one.url)
        await api.socket(c, url=three.url)  # connected, in none of the conversations below
        # Members on instance two until their user channels live on two nodes or more.
        members: list[Any] = []
        sockets: list[Socket] = []
        for i in range(12):
            user = await api.register(f"Member{i}")
            members.append(user)
            sockets.append(await api.socket(user, url=two.url))
            owners = {await _owner(redis_cluster, f"{channel_prefix(one)}:room:/:user:{m.id}") for m in members}
            if len(members) >= 2 and len(owners) >= 2:
                break
        b, sb = members[0], sockets[0]

        # Live room: host on one, the members on two.
        live = await api.live_session(mentor, "Live", 20)
        await host.ok("room:join", {"live_session_id": live["id"]})
        await sb.ok("room:join", {"live_session_id": live["id"]})
        direct = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
        group = (await sa.ok("conversation:create", {"kind": "group", "title": "G",
                                                      "member_ids": [m.id for m in members]}))["conversation"]
        # Creating a group sends one notice that every instance hears (its members' sockets
        # on any instance enter its room): count from after it.
        await asyncio.sleep(0.3)
        before = await read_counters(session, three.url)
        for i in range(4):
            await sa.ok("message:send", {"conversation_id": direct["id"], "content": f"d{i}", "client_id": f"d{i}"})
            await sa.ok("message:send", {"conversation_id": group["id"], "content": f"g{i}", "client_id": f"g{i}"})
            await host.ok("message:send", {"conversation_id": live["conversation_id"], "content": f"l{i}", "client_id": f"l{i}"})
        await sb.wait_for("message:new", lambda m: m["message"]["conversation_id"] == direct["id"] and m["message"]["seq"] == 4)
        await sb.wait_for("message:new", lambda m: m["message"]["conversation_id"] == live["conversation_id"]
                          and m["message"]["content"] == "l3")
        for sock in sockets:
            await sock.wait_for("message:new", lambda m: m["message"]["conversation_id"] == group["id"] and m["message"]["seq"] == 4)
            assert seqs(sock, group["id"]) == [1, 2, 3, 4], "each member gets every group message once, in order"
        assert seqs(sb, direct["id"]) == [1, 2, 3, 4]
        assert [m["message"]["content"] for m in sb.received("message:new")
                if m["message"]["conversation_id"] == live["conversation_id"]] == ["l0", "l1", "l2", "l3"]

        # Every room channel instance two holds is subscribed on the node that owns its slot
        # (and only there), and they are spread over more than one node.
        where = _listener(two).nodes_of()
        assert f"{channel_prefix(one)}:room:/:conv:{live['conversation_id']}" in where
        ports = {n.port for n in redis_cluster.nodes}
        for channel, node in where.items():
            owner = await _owner(redis_cluster, channel)
            assert node == f"127.0.0.1:{owner}"
            assert await _shard_subscribers(owner, channel) >= 1
            for other in ports - {owner}:
                assert await _shard_subscribers(other, channel) == 0
        assert len(set(where.values())) >= 2, "room channels spread over the Cluster's nodes"

        await asyncio.sleep(0.3)
        after = await read_counters(session, three.url)
        two_counters = await read_counters(session, two.url)
        await api.close_sockets()
    assert emits(two_counters, "delivered") >= 8, "instance two delivered what instance one sent"
    assert received(after, "received_total") == received(before, "received_total"), \
        "an instance with no member received events for these conversations"
    assert emits(after, "ignored") == 0


async def test_logout_notice_and_rate_limits_act_on_every_instance_of_a_cluster(start_instance, redis_cluster, db) -> None:
    """A logout on instance one closes the token's socket on instance two although its
    `connections` row is gone (the notice travels through the Cluster), and a sign-in limit
    counts the requests of both instances (the `limits` counters live in the Cluster: on
    this instance's memory each would allow 6)."""
    one, two = await instances(start_instance, redis_cluster.url, 2, auth__revocation_sweep_seconds=NO_SWEEP,
                                auth__guest_limit_10min=6)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        user, bystander = await api.register("Lou"), await api.register("Bea")
        sock = await api.socket(user, url=two.url)
        other = await api.socket(bystander, url=two.url)
        await _forget_rows(db, user)
        status, _ = await api.request("POST", "/api/auth/logout", user)
        assert status == 204
        assert await _closed(sock, within=3), "the logged-out token's socket on the other instance stayed open"
        assert other.client.connected
        await api.close_sockets()

        for inst in (one, two, one, two, one, two):
            assert (await post(session, inst, "/api/auth/guest", {}))[0] == 201
        assert_rate_limited(*await post(session, inst=two, path="/api/auth/guest", body={}))
        assert_rate_limited(*await post(session, inst=one, path="/api/auth/guest", body={}))

        async with session.get(one.url + "/api/health") as r:
            assert r.status == 200
            assert (await r.json())["redis"] == "ok"


async def test_a_master_restart_loses_no_acked_message(start_instance) -> None:
    """Kill the master that owns the receiver's channel, send while it is down (acks do
    not wait on Redis), start it again on its port. The receiver's instance subscribes its
    rooms again on the restarted node and tells its socket to `resync`; `sync` by seq
    returns what was sent meanwhile, and later messages arrive live."""
    cluster = RedisCluster().start()
    try:
        one, two = await instances(start_instance, cluster.url, 2)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b = await api.register("Ana"), await api.register("Bob")
            sa = await api.socket(a, url=one.url)
            sb = await api.socket(b, url=two.url)
            conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
            await sa.ok("message:send", {"conversation_id": conv["id"], "content": "before", "client_id": "b0"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "before")
            b_channel = f"{channel_prefix(one)}:room:/:user:{b.id}"
            port = await _owner(cluster, b_channel)
            index = [n.port for n in cluster.nodes].index(port)
            assert await _shard_subscribers(port, b_channel) == 1

            await asyncio.to_thread(cluster.nodes[index].stop)
            acked = []
            for i in range(5):
                ack = await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"down {i}", "client_id": f"x{i}"},
                                  timeout=3)
                acked.append(ack["message"]["seq"])
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.nodes[index].start)
            await asyncio.to_thread(cluster.wait_ok)

            async def resubscribed() -> bool:
                try:
                    return await _shard_subscribers(port, b_channel) >= 1
                except RedisConnectionError:  # the restarted node is still coming up
                    return False
            await eventually(resubscribed, timeout=15)
            await sb.wait_for("resync", timeout=15)
            seen = max(s for s in seqs(sb, conv["id"]) if s < acked[0]) if seqs(sb, conv["id"]) else 0
            synced = await sb.ok("sync", {"since": {conv["id"]: seen}})
            recovered = {m["seq"] for m in synced["conversations"][conv["id"]]["messages"]} | set(seqs(sb, conv["id"]))
            assert set(acked) <= recovered, "a message acked while a master was down never reached the receiver"

            for i in range(3):
                await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"after {i}", "client_id": f"r{i}"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "after 2", timeout=10)
            assert [d["message"]["content"] for d in sb.received("message:new")][-3:] == ["after 0", "after 1", "after 2"]
            await api.close_sockets()
    finally:
        cluster.stop()


async def test_a_room_channel_whose_slot_moves_to_another_master_is_followed(start_instance) -> None:
    """Resharding or a failover moves a slot to another master; Redis then ends the shard
    subscriptions on the old one (an unrequested SUNSUBSCRIBE). The receiver's instance
    subscribes the channel again on the new owner, and messages keep reaching the member."""
    cluster = RedisCluster().start()
    try:
        one, two = await instances(start_instance, cluster.url, 2)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b = await api.register("Ana"), await api.register("Bob")
            sa = await api.socket(a, url=one.url)
            sb = await api.socket(b, url=two.url)
            conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
            b_channel = f"{channel_prefix(one)}:room:/:user:{b.id}"
            slot = int(await _node_command(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", b_channel))
            old = cluster.port_of_slot(slot)
            new = next(n.port for n in cluster.nodes if n.port != old)
            # One subscriber (instance two's listener) before the move. Eventually: CI once saw
            # 2 here under load, a second subscription that was gone by the move's own check
            # (which wants exactly 1 on the new owner). Likely a listener reset by a late health
            # probe leaving its old connection subscribed for a moment; late probes no longer
            # reset the listener (server/redisbus.py `ProbeHearing`), the wait stays harmless.
            async def on_old_only() -> bool:
                return await _shard_subscribers(old, b_channel) == 1
            await eventually(on_old_only, timeout=10)
            new_id = (await _node_command(new, "CLUSTER", "MYID")).decode()
            for port in [new, old] + [n.port for n in cluster.nodes if n.port not in (old, new)]:
                await _node_command(port, "CLUSTER", "SETSLOT", slot, "NODE", new_id)

            async def moved() -> bool:
                return await _shard_subscribers(new, b_channel) == 1 and await _shard_subscribers(old, b_channel) == 0
            await eventually(moved, timeout=15)
            assert _listener(two).nodes_of()[b_channel] == f"127.0.0.1:{new}"
            for i in range(3):
                await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"moved {i}", "client_id": f"m{i}"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "moved 2", timeout=20)
            assert [d["message"]["content"] for d in sb.received("message:new")] == ["moved 0", "moved 1", "moved 2"]
            await api.close_sockets()
    finally:
        cluster.stop()


async def test_a_room_left_and_entered_again_at_once_keeps_the_listener(redis_cluster) -> None:
    """SUNSUBSCRIBE then SSUBSCRIBE of one channel, sent before Redis answered the first:
    the SUNSUBSCRIBE's answer is this instance's own, not Redis moving the slot, so the
    listener goes on (a rebuild would `resync` every socket of the instance) and the
    channel's next message arrives."""
    from server.rediscluster import cluster_client

    listener = ClusterListener(cluster_client(redis_cluster.url, timeout=2.0), connect_timeout=2.0)
    publisher = cluster_client(redis_cluster.url, timeout=2.0)
    channel = f"again-{uuid.uuid4().hex[:8]}:room:/:user:x"
    messages = listener.listen()
    try:
        await listener.ssubscribe(channel)
        first = await asyncio.wait_for(anext(messages), 5)
        assert first["type"] == "ssubscribe"
        await listener.sunsubscribe(channel)
        await listener.ssubscribe(channel)
        again = await asyncio.wait_for(anext(messages), 5)
        assert again["type"] == "ssubscribe", again
        await publisher.spublish(channel, b"still here")
        got = await asyncio.wait_for(anext(messages), 5)
        assert (got["type"], got["data"]) == ("smessage", b"still here")
    finally:
        await messages.aclose()
        await listener.aclose()
        await listener.cluster.aclose()
        await publisher.aclose()


async def test_a_deaf_connection_to_one_master_is_found_by_the_probe(start_instance, redis_cluster) -> None:
    """The listener's connection to the master holding the receiver's channel stays open
    but nothing is read from it any more (what a partition that never closes it looks
    like). The probe, sent on every master, goes unheard there: the instance reports the
    outage, rebuilds its listener and tells its sockets to `resync`; later messages arrive."""
    one, two = await instances(start_instance, redis_cluster.url, 2)
    global_node = f"127.0.0.1:{await _owner(redis_cluster, channel_prefix(one))}"
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        a = await api.register("Ana")
        sa = await api.socket(a, url=one.url)
        for i in range(20):  # a receiver whose channel is not on the global channels' master
            b = await api.register(f"Bob{i}")
            node = f"127.0.0.1:{await _owner(redis_cluster, f'{channel_prefix(one)}:room:/:user:{b.id}')}"
            if node != global_node:
                break
        assert node != global_node
        sb = await api.socket(b, url=two.url)
        conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
        await sb.wait_for("conversation:new")
        listener = _listener(two)
        assert listener.nodes_of()[f"{channel_prefix(one)}:room:/:user:{b.id}"] == node
        assert set(listener.probe_channels.values()) == {f"127.0.0.1:{n.port}" for n in redis_cluster.nodes}, \
            "every master carries a probe channel"
        listener.readers[node].cancel()  # the global channels' master still answers the usual probe

        await sb.wait_for("resync", timeout=15)
        assert _listener(two) is not listener, "the deaf listener was replaced"
        for i in range(3):
            await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"heard {i}", "client_id": f"h{i}"})
        await sb.wait_for("message:new", lambda d: d["message"]["content"] == "heard 2", timeout=15)
        assert [d["message"]["content"] for d in sb.received("message:new")][-3:] == ["heard 0", "heard 1", "heard 2"]
        await api.close_sockets()
