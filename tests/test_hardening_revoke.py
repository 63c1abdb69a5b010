"""Revocation that reaches every socket, and acks that never wait on Redis.

Two real instances, a real PostgreSQL and a real redis-server (the tests that stop or
freeze Redis start their own), real python-socketio clients. The loss of a `connections`
row is simulated with SQL behind the server's back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from typing import Any

import aiohttp
import pytest

from server.keys import SIO
from storage import messages as message_store
from storage.db import Database
from tests.client import Api, Socket, User
from tests.services import RedisServer

# Long enough that the periodic database sweep never runs during a test that proves the
# notices (so a pass is the notice's doing, not the sweep's).
NO_SWEEP = 3600.0


async def _closed(sock: Socket, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not sock.client.connected:
            return True
        await asyncio.sleep(0.05)
    return not sock.client.connected


async def _forget_rows(db: Database, user: User) -> None:
    """Lose the user's `connections` rows, as a hostile disconnect or a database crash would."""
    async with db.connection() as conn:
        deleted = await conn.execute("DELETE FROM connections WHERE user_id = $1", uuid.UUID(user.id))
    assert deleted != "DELETE 0", "the socket had a row to lose"


@pytest.fixture
async def pair(start_instance: Any, redis_url: str) -> list[Any]:
    channel = f"revoke-{uuid.uuid4().hex[:8]}"
    return [await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, auth__revocation_sweep_seconds=NO_SWEEP) for _ in range(2)]


async def test_logout_on_one_instance_closes_a_socket_on_the_other_whose_row_is_gone(pair, db) -> None:
    one, two = pair
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        user = await api.register("Lou")
        bystander = await api.register("Bea")
        sock = await api.socket(user, url=two.url)
        other = await api.socket(bystander, url=two.url)
        await _forget_rows(db, user)
        status, _ = await api.request("POST", "/api/auth/logout", user)
        assert status == 204
        assert await _closed(sock, within=3), "the logged-out token's socket stayed open"
        assert other.client.connected, "a socket of another token was closed"
        await api.close_sockets()


async def test_a_socket_that_faked_its_own_disconnect_is_still_revoked(pair, db) -> None:
    """A client sends an event named "disconnect": the server's disconnect handler runs (row
    and in-memory state gone) while the transport stays open. Logout must still reach it."""
    one, two = pair
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        user = await api.register("Hos")
        sock = await api.socket(user, url=two.url)
        await sock.client.emit("disconnect", {})
        await asyncio.sleep(0.3)
        status, _ = await api.request("POST", "/api/auth/logout", user)
        assert status == 204
        assert await _closed(sock, within=3), "a socket outlived its revoked token"
        await api.close_sockets()


async def test_role_change_closes_a_socket_on_the_other_instance_whose_row_is_gone(pair, db) -> None:
    one, two = pair
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        admin = await api.staff(db, "admin")
        user = await api.register("Ray")
        sock = await api.socket(user, url=two.url)
        admin_sock = await api.socket(admin, url=two.url)
        await _forget_rows(db, user)
        status, body = await api.request("PUT", f"/api/users/{user.id}/role", admin, json={"role": "mentor"})
        assert status == 200 and body["user"]["role"] == "mentor"
        assert await _closed(sock, within=3), "the socket kept its old role"
        assert admin_sock.client.connected
        # It reconnects, now with the new role (a mentor may create a live session).
        again = await api.socket(user, url=two.url)
        assert again.client.connected
        await api.close_sockets()


async def test_a_socket_is_closed_when_its_token_expires_without_reading_the_table(pair, db) -> None:
    one, two = pair
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        user = await api.register("Tim")
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE auth_tokens SET expires_at = now() + interval '1.5 seconds' WHERE user_id = $1", uuid.UUID(user.id)
            )
        sock = await api.socket(user, url=two.url)
        await _forget_rows(db, user)
        assert sock.client.connected
        started = time.monotonic()
        assert await _closed(sock, within=4), "the socket outlived its token"
        # Not the 10-second housekeeping: the instance's own timer, at expiry.
        assert time.monotonic() - started < 4


async def test_a_banned_participant_whose_row_is_gone_stops_getting_the_room(pair, db) -> None:
    one, two = pair
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        host = await api.staff(db, "mentor", "Host")
        status, body = await api.request("POST", "/api/live-sessions", host, json={"title": "Ban test", "max_participants": 10})
        assert status == 201, body
        live_id = body["live_session"]["id"]
        status, body = await api.request("POST", f"/api/live-sessions/{live_id}/start", host)
        assert status == 200, body
        room_conv = body["live_session"]["conversation_id"]
        host_sock = await api.socket(host, url=one.url)
        bad, good = await api.register("Bad"), await api.register("Good")
        bad_sock = await api.socket(bad, url=two.url)
        good_sock = await api.socket(good, url=two.url)
        for s in (bad_sock, good_sock):
            await s.ok("room:join", {"live_session_id": live_id})
        await _forget_rows(db, bad)
        await host_sock.ok("room:moderate", {"live_session_id": live_id, "user_id": bad.id, "action": "ban"})
        await good_sock.wait_for("room:participant", lambda d: d["action"] == "banned")
        # No wait: the notice leaves in the same publish queue as the host's next message.
        await host_sock.ok("message:send", {"conversation_id": room_conv, "content": "after the ban", "client_id": "b1"})
        await good_sock.wait_for("message:new", lambda d: d["message"]["content"] == "after the ban")
        await bad_sock.expect_none("message:new", lambda d: d["message"]["content"] == "after the ban", within=1.0)
        await api.close_sockets()


@pytest.mark.cluster
async def test_revoked_sockets_are_swept_when_redis_is_down_and_the_row_is_gone(start_instance, db) -> None:
    """The last net: each instance checks its own sockets' tokens against the database."""
    redis = RedisServer().start()
    try:
        channel = f"sweep-{uuid.uuid4().hex[:8]}"
        one, two = [await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel, auth__revocation_sweep_seconds=0.5) for _ in range(2)]
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            user = await api.register("Sam")
            sock = await api.socket(user, url=two.url)
            await _forget_rows(db, user)
            redis.stop()
            status, _ = await api.request("POST", "/api/auth/logout", user)
            assert status == 204
            assert await _closed(sock, within=4), "no net caught the revoked socket"
            await api.close_sockets()
    finally:
        redis.stop()


async def _view_after_sync(sock: Socket, cid: str, seen: set[int]) -> set[int]:
    while True:
        last = 0
        while last + 1 in seen:
            last += 1
        got = (await sock.ok("sync", {"since": {cid: last}}))["conversations"][cid]
        seen |= {m["seq"] for m in got["messages"]}
        if got["complete"]:
            return seen


@pytest.mark.cluster
async def test_acks_do_not_wait_on_a_frozen_redis(start_instance, db) -> None:
    redis = RedisServer().start()
    assert redis.process is not None
    try:
        channel = f"freeze-{uuid.uuid4().hex[:8]}"
        one, two = [await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel) for _ in range(2)]
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, a2, b = await api.register("Fa"), await api.register("Fb"), await api.register("Fc")
            sa, sa2 = await api.socket(a, url=one.url), await api.socket(a2, url=one.url)
            sb = await api.socket(b, url=two.url)
            conv = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [a2.id, b.id]}))["conversation"]
            cid = conv["id"]
            await sb.wait_for("conversation:new")
            os.kill(redis.process.pid, signal.SIGSTOP)
            latencies: list[float] = []
            late_local: list[int] = []
            try:
                for i in range(1, 6):
                    started = time.perf_counter()
                    ack = await sa.call("message:send", {"conversation_id": cid, "content": f"f{i}", "client_id": f"f{i}"}, timeout=30)
                    latencies.append(time.perf_counter() - started)
                    assert ack["ok"] and ack["message"]["seq"] == i
                    try:  # the member on the same instance has it at once
                        await sa2.wait_for("message:new", lambda d, i=i: d["message"]["seq"] == i, timeout=1)
                    except TimeoutError:
                        late_local.append(i)
                await asyncio.sleep(2.5)  # a freeze long enough to time out publishes and probes
            finally:
                os.kill(redis.process.pid, signal.SIGCONT)
            print(f"\nack latency with Redis frozen (s): {[round(x, 3) for x in latencies]}")
            assert max(latencies) < 1.0, f"acks waited on Redis: {latencies}"
            assert not late_local, f"local delivery waited: {late_local}"
            async with db.connection() as conn:
                stored, _ = await message_store.history(conn, uuid.UUID(cid), before_seq=None, limit=100)
            assert [m.seq for m in stored] == [1, 2, 3, 4, 5]

            # Redis answers again: the other instance's member is told to resync and recovers all.
            await sb.wait_for("resync", timeout=15)
            b_seen = {d["message"]["seq"] for d in sb.received("message:new") if d["message"]["conversation_id"] == cid}
            assert await _view_after_sync(sb, cid, b_seen) == {1, 2, 3, 4, 5}
            # The outage is counted: once as degraded, and the publishes it dropped.
            status, text = await api.request("GET", "/metrics")
            counters = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("studyhall_fanout")}
            assert counters["studyhall_fanout_degraded_total"] == 1 and counters["studyhall_fanout_dropped_total"] >= 1, counters
            # And fan-out works again afterwards.
            await sa.ok("message:send", {"conversation_id": cid, "content": "after", "client_id": "after"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "after", timeout=5)
            await api.close_sockets()
    finally:
        if redis.process is not None:
            os.kill(redis.process.pid, signal.SIGCONT)
        redis.stop()


def _redis_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    def about_redis(r: logging.LogRecord) -> bool:
        text = f"{r.name} {r.getMessage()}".lower()
        return "redis" in text or "fan-out" in text or "pubsub" in text or r.name.startswith("socketio")

    return [r for r in records if r.levelno >= logging.WARNING and about_redis(r)]


@pytest.mark.cluster
async def test_a_redis_outage_is_logged_once_not_per_message(start_instance, caplog) -> None:
    redis = RedisServer().start()
    try:
        channel = f"quiet-{uuid.uuid4().hex[:8]}"
        one = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)  # one process log: one instance
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            a, b = await api.register("La"), await api.register("Lb")
            sa, sb = await api.socket(a, url=one.url), await api.socket(b, url=one.url)
            conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
            caplog.clear()
            with caplog.at_level(logging.INFO):
                redis.stop()
                for i in range(50):
                    await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"q{i}", "client_id": f"q{i}"})
                await sb.wait_for("message:new", lambda d: d["message"]["content"] == "q49")
                await asyncio.sleep(1.5)  # listener retries and health pings happen meanwhile
                down = _redis_records(caplog.records)
                redis.start()
                await sb.wait_for("resync", timeout=15)
                await asyncio.sleep(0.5)
                total = _redis_records(caplog.records)
            print(f"\nRedis-related log records: {len(down)} during the outage, {len(total)} in all")
            assert len(down) <= 1, [r.getMessage() for r in down]
            assert len(total) <= 2, [r.getMessage() for r in total]
            await api.close_sockets()
    finally:
        redis.stop()


class BlackholeProxy:
    """A TCP proxy in front of Redis that can go silent on the connections it already has
    (a partition the kernel never reports: no reset, no close) while new ones get through,
    or hold back what Redis sends the subscribed ones (a listener that hears late)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.pairs: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> BlackholeProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pair: dict[str, Any] = {"silent": False, "writers": (writer, up_writer), "subscriber": False, "held": None}
        self.pairs.append(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and b"SUBSCRIBE" in data:
                        pair["subscriber"] = True
                    if pair["silent"]:
                        continue
                    if not upstream and pair["held"] is not None:
                        pair["held"].append(data)
                        continue
                    dst.write(data)
            except (ConnectionError, asyncio.CancelledError):
                pass

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def hold_subscribers(self) -> int:
        """Keep what Redis sends each subscribed connection until `release`; how many."""
        held = [pair for pair in self.pairs if pair["subscriber"]]
        for pair in held:
            pair["held"] = []
        return len(held)

    def release(self) -> None:
        for pair in self.pairs:
            held, pair["held"] = pair["held"], None
            if held:
                pair["writers"][0].write(b"".join(held))

    def silence_existing(self) -> None:
        for pair in self.pairs:
            pair["silent"] = True

    async def stop(self) -> None:
        for pair in self.pairs:
            for w in pair["writers"]:
                w.close()
        if self.server is not None:
            self.server.close()


async def _direct_across(api: Api, one: Any, two: Any) -> tuple[Socket, Socket, dict[str, Any]]:
    """Two new users, the first's socket on instance one and the second's on two, in a
    direct conversation both sockets know of."""
    a, b = await api.register("Across A"), await api.register("Across B")
    sa, sb = await api.socket(a, url=one.url), await api.socket(b, url=two.url)
    conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    await sb.wait_for("conversation:new")
    return sa, sb, conv


@pytest.mark.cluster
async def test_a_listener_deafened_by_a_silent_partition_is_found_and_reset(start_instance) -> None:
    """Connections that go silent without being closed: python-socketio's listener would wait
    forever while fresh connections (pings, publishes) work. The probe through the instance's
    own listener finds it deaf, resets it, and sockets resync."""
    redis = RedisServer().start()
    proxy = await BlackholeProxy(redis.port).start()
    try:
        channel = f"deaf-{uuid.uuid4().hex[:8]}"
        one, two = [await start_instance(cluster__redis_url=proxy.url, cluster__redis_channel=channel) for _ in range(2)]
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            sa, sb, conv = await _direct_across(api, one, two)
            proxy.silence_existing()
            await sb.wait_for("resync", timeout=15)
            await sa.ok("message:send", {"conversation_id": conv["id"], "content": "heard again", "client_id": "h1"})
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "heard again", timeout=5)
            await api.close_sockets()
    finally:
        await proxy.stop()
        redis.stop()


@pytest.mark.cluster
async def test_a_listener_that_hears_late_is_not_reset_and_loses_nothing(start_instance) -> None:
    """A busy instance hears its own probe after the timeout (CI saw 1 s with the machine
    loaded). The listener is late, not deaf: resetting it dropped the events it was about to
    deliver (a room's `kicked` went missing) and sent every socket a `resync`. Here what
    Redis sends the receiving instance's listener is held back 2.5 s: every event arrives
    once, in order, no resync, the same listener, and the late probes are counted."""
    redis = RedisServer().start()
    proxy = await BlackholeProxy(redis.port).start()
    try:
        channel = f"late-{uuid.uuid4().hex[:8]}"
        one = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
        two = await start_instance(cluster__redis_url=proxy.url, cluster__redis_channel=channel)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            sa, sb, conv = await _direct_across(api, one, two)
            listener = two.app[SIO].manager.pubsub
            assert proxy.hold_subscribers() == 1, "instance two's listener goes through the proxy"
            for i in range(5):
                await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"late {i}", "client_id": f"l{i}"})
            await asyncio.sleep(2.5)  # over two probe timeouts (2 x 0.5 s), under deaf_after (5 s)
            assert not sb.received("message:new"), "the hold did not hold"
            proxy.release()
            await sb.wait_for("message:new", lambda d: d["message"]["content"] == "late 4", timeout=5)
            await sb.expect_none("resync", within=1.5)
            assert [d["message"]["content"] for d in sb.received("message:new")] == [f"late {i}" for i in range(5)]
            assert two.app[SIO].manager.pubsub is listener, "the late listener was reset"
            async with session.get(f"{two.url}/metrics") as r:
                text = await r.text()
            late = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                    if line.startswith(("studyhall_redis_probes_late_total", "studyhall_fanout_degraded_total"))}
            assert late["studyhall_redis_probes_late_total"] >= 1 and late["studyhall_fanout_degraded_total"] == 0, late
            await api.close_sockets()
    finally:
        await proxy.stop()
        redis.stop()


def test_settings_from_env() -> None:
    from handlers.settings import Settings

    s = Settings.from_env({"STUDYHALL_REDIS_TIMEOUT": "0.25", "STUDYHALL_REDIS_PUBLISH_QUEUE": "500", "STUDYHALL_REVOCATION_SWEEP": "3"})
    assert (s.cluster.redis_timeout_seconds, s.cluster.redis_publish_queue, s.auth.revocation_sweep_seconds) == (0.25, 500, 3.0)
    d = Settings.from_env({})
    assert (d.cluster.redis_timeout_seconds, d.cluster.redis_publish_queue, d.auth.revocation_sweep_seconds) == (0.5, 10_000, 10.0)
    with pytest.raises(SystemExit, match="STUDYHALL_REDIS_TIMEOUT"):
        Settings.from_env({"STUDYHALL_REDIS_TIMEOUT": "soon"})
