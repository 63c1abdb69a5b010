"""Surviving a PostgreSQL crash: a PostgreSQL of the test's own, killed with SIGKILL (as a
crash happens) and started again (crash recovery empties the UNLOGGED socket registry).

1. Live rooms, presence, logout and new sockets keep working across the crash, on two
   instances (handlers/registry.py).
2. While the database is down every event and route answers `unavailable` (HTTP 503),
   the log gets one line per outage, and the same socket works again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import socketio

from server.keys import CORE
from storage.availability import DatabaseUnavailable
from storage.db import Database
from storage.embedded import EmbeddedPostgres, free_port
from storage.migrate import migrate
from tests.client import Api, Socket, User

DATABASE = "studyhall"
# Short clocks so the tests run in seconds: graces, heartbeat, and the settle period.
FAST = {
    "presence__grace_seconds": 0.3,
    "rooms__leave_grace_seconds": 0.5,
    "rooms__host_grace_seconds": 1.0,
    "cluster__instance_heartbeat_seconds": 0.5,
    "cluster__registry_settle_seconds": 2.0,
    "database__connect_timeout_seconds": 2.0,
}


@dataclass
class CrashablePostgres:
    """An embedded PostgreSQL on a TCP port that a test may SIGKILL and start again."""

    base: Path
    port: int
    server: EmbeddedPostgres

    @classmethod
    def start(cls) -> CrashablePostgres:
        base = Path(tempfile.mkdtemp(prefix="studyhall-test-pgcrash-"))
        os.chmod(base, 0o755)  # as root the server runs as another user, who must reach it
        port = free_port()
        server = EmbeddedPostgres(base, port=port, listen_tcp=True, shared_buffers="128MB")
        server.start()
        return cls(base, port, server)

    def url(self, database: str = DATABASE) -> str:
        return self.server.url(database)

    def kill(self) -> None:
        """SIGKILL the postmaster, then wait until the process is gone (not even a zombie)."""
        pid = int((self.server.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, f"postmaster {pid} did not go away after SIGKILL"
            time.sleep(0.02)

    def restart(self) -> None:
        """Start on the same data and port: PostgreSQL runs crash recovery first."""
        deadline = time.monotonic() + 60
        while True:
            try:
                self.server = EmbeddedPostgres(self.base, port=self.port, listen_tcp=True, shared_buffers="128MB")
                self.server.start()
                return
            except RuntimeError:  # orphaned backends may still hold the old shared memory
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter …)."""
        postmaster = int((self.server.pgdata / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(stat.parent.name))
        return pids

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (or SIGCONT) every process of the server: it accepts TCP, answers nothing."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def running(self) -> bool:
        pid_file = self.server.pgdata / "postmaster.pid"
        return pid_file.exists() and Path(f"/proc/{pid_file.read_text().split()[0]}").exists()

    def destroy(self) -> None:
        self.server.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


class TcpGate:
    """A TCP forwarder between one instance and PostgreSQL that can be shut for a while:
    that instance's way to the database comes back later than the others' (a slow
    network path, a DNS change after a failover) without touching its code."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def shut(self) -> None:
        """Refuse new connections and cut the open ones (as a broken network path does)."""
        self.open = False
        for writer in list(self.links):
            writer.close()

    async def start(self) -> TcpGate:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        self.links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                self.links.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def crash_pg() -> Iterator[CrashablePostgres]:
    pg = CrashablePostgres.start()
    yield pg
    pg.destroy()


@pytest.fixture
async def database_url(crash_pg: CrashablePostgres) -> str:
    """Overrides conftest's: every instance of these tests uses the crashable server."""
    conn = await asyncpg.connect(crash_pg.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()
    await migrate(crash_pg.url())
    return crash_pg.url()


@pytest.fixture
async def gate(crash_pg: CrashablePostgres) -> AsyncIterator[TcpGate]:
    """Set up before the instances, so it closes after they shut down."""
    g = await TcpGate(crash_pg.port).start()
    yield g
    await g.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _crash(pg: CrashablePostgres) -> float:
    """Kill PostgreSQL and start it again; returns the monotonic time it was back."""
    await asyncio.to_thread(pg.kill)
    await asyncio.to_thread(pg.restart)
    return time.monotonic()


async def _query(pg: CrashablePostgres, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg.url())
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _mentor(api: Api, pg: CrashablePostgres, name: str) -> User:
    user = await api.register(name)
    await _query(pg, "UPDATE users SET role = 'mentor' WHERE id = $1", uuid.UUID(user.id))
    user.role = "mentor"
    return user


async def _eventually(what: str, check: Any, timeout: float = 15.0) -> Any:
    """Retry `check()` (an awaitable factory) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _send(sock: Socket, conversation_id: str, content: str, client_id: str, timeout: float = 10) -> Any:
    payload = {"conversation_id": conversation_id, "content": content, "client_id": client_id}
    return sock.call("message:send", payload, timeout=timeout)


async def _connect_when_up(api: Api, user: User, url: str) -> Socket:
    """A new socket; while the database is still coming up it may be refused `unavailable`."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await api.socket(user, url=url)
        except socketio.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "could not connect after the database came back"
            await asyncio.sleep(0.1)


async def test_live_room_and_presence_survive_a_database_crash_on_two_instances(
    crash_pg: CrashablePostgres, gate: TcpGate, start_instance: Any, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """Instance `two` reaches the database again 3 s after `one` does, while `one` sweeps
    every second: without the settle period `one` would judge two's users gone first."""
    channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
    settle, late_by = 6.0, 3.0
    settings = {**FAST, "cluster__redis_url": redis_url, "cluster__redis_channel": channel, "cluster__registry_settle_seconds": settle}
    one = await start_instance(**settings)
    two = await start_instance(**settings, database__url=gate.database_url)
    api = Api(http, one.url)
    try:
        host = await _mentor(api, crash_pg, "Host")
        ana, bob, watcher = [await api.register(n) for n in ("Ana", "Bob", "Watcher")]
        host_sock = await api.socket(host, url=two.url)  # the slow instance
        ana_sock = await api.socket(ana, url=one.url)
        bob_sock = await api.socket(bob, url=two.url)
        watcher_sock = await api.socket(watcher, url=one.url)
        # The watcher shares a thread with all three, so hears their presence.
        members = [host.id, ana.id, bob.id]
        await watcher_sock.ok("conversation:create", {"kind": "group", "member_ids": members, "title": "Study"})

        status, body = await api.request(
            "POST", "/api/live-sessions", host, json={"title": "Live", "max_participants": 10}
        )
        assert status == 201, body
        session_id = body["live_session"]["id"]
        status, body = await api.request("POST", f"/api/live-sessions/{session_id}/start", host)
        assert status == 200, body
        room_chat = body["live_session"]["conversation_id"]
        for sock in (host_sock, ana_sock, bob_sock):
            await sock.ok("room:join", {"live_session_id": session_id})

        await asyncio.to_thread(crash_pg.kill)
        gate.shut()
        await asyncio.to_thread(crash_pg.restart)
        back_at = time.monotonic()
        await asyncio.sleep(late_by)
        gate.open = True
        # Past the settle period, then past every grace with several sweeps in between.
        await asyncio.sleep(max(0.0, back_at + settle - time.monotonic()))
        await asyncio.sleep(FAST["rooms__host_grace_seconds"] + FAST["rooms__leave_grace_seconds"] + 3.0)

        status, body = await api.request("GET", f"/api/live-sessions/{session_id}", ana)
        assert status == 200, body
        assert body["live_session"]["status"] == "live", "the room ended although its host never left"
        assert body["live_session"]["current_participants"] == 2, body["live_session"]
        await bob_sock.ok("room:hand", {"live_session_id": session_id, "raised": True})  # still present
        await ana_sock.ok("message:send", {"conversation_id": room_chat, "content": "still here", "client_id": "after"})
        await bob_sock.wait_for("message:new", lambda d: d["message"]["content"] == "still here", timeout=5)
        assert not ana_sock.received("room:ended") and not bob_sock.received("room:ended")

        went_offline = [p for p in watcher_sock.received("presence") if p["status"] == "offline"]
        assert not went_offline, f"presence flipped offline across the crash: {went_offline}"
        online = await _query(crash_pg, "SELECT DISTINCT user_id FROM connections")
        assert {str(r["user_id"]) for r in online} == {host.id, ana.id, bob.id, watcher.id}
        assert len(await _query(crash_pg, "SELECT id FROM instances")) == 2
    finally:
        await api.close_sockets()


async def test_new_sockets_and_logout_work_right_after_a_database_crash(
    crash_pg: CrashablePostgres, start_instance: Any, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """A socket arrives on instance `two` before two's own heartbeat or sweep has noticed the
    crash: registering it must re-create two's row (and re-register two's other sockets)."""
    channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
    slow = {"cluster__instance_heartbeat_seconds": 3.0, "rooms__leave_grace_seconds": 5.0, "cluster__registry_settle_seconds": 7.0}
    one = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, **{**FAST, "cluster__registry_settle_seconds": 7.0})
    two = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, **{**FAST, **slow})
    api = Api(http, two.url)
    try:
        leaver, late, friend, early = [await api.register(n) for n in ("Leaver", "Late", "Friend", "Early")]
        leaver_sock = await api.socket(leaver, url=one.url)
        await api.socket(early, url=two.url)

        await _crash(crash_pg)

        late_sock = await _connect_when_up(api, late, two.url)
        await late_sock.ok("conversation:create", {"kind": "direct", "member_ids": [friend.id]})
        registered = await _query(crash_pg, "SELECT DISTINCT user_id FROM connections")
        missing = {late.id, early.id} - {str(r["user_id"]) for r in registered}
        assert not missing, f"sockets missing from the registry after the crash: {missing}"

        # A logout right after the crash closes a socket opened before it, on the other instance.
        async def logged_out() -> bool:
            status, _ = await api.request("POST", "/api/auth/logout", leaver)
            return status == 204

        async def closed() -> bool:
            return not leaver_sock.client.connected

        await _eventually("logout", logged_out)
        await _eventually("the logged-out socket to close", closed, timeout=10)
    finally:
        await api.close_sockets()


def _outage_records(caplog: pytest.LogCaptureFixture, since: int) -> list[logging.LogRecord]:
    """Every log record since index `since`, but aiohttp's access log (one line per request by design)."""
    return [r for r in caplog.records[since:] if r.name != "aiohttp.access"]


async def test_outage_answers_unavailable_logs_once_and_recovers_by_itself(
    crash_pg: CrashablePostgres, start_instance: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    one = await start_instance(**FAST)
    api = Api(http, one.url)
    try:
        ana, bob = await api.register("Ana"), await api.register("Bob")
        sock = await api.socket(ana)
        sid = sock.client.get_sid()
        conv = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]}))["conversation"]
        await sock.ok("message:send", {"conversation_id": conv["id"], "content": "before", "client_id": "c0"})

        mark = len(caplog.records)
        await asyncio.to_thread(crash_pg.kill)
        failed = 0
        for i in range(50):
            started = time.monotonic()
            ack = await _send(sock, conv["id"], "x", f"d{i}")
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
            assert time.monotonic() - started < 3.0, "an unreachable database must not hang a send"
            status, body = await api.request("GET", "/api/conversations", ana)
            assert status == 503 and body["error"]["code"] == "unavailable", (status, body)
            failed += 2
        status, body = await api.request("GET", "/api/health")
        assert status == 503 and body["database"] == "down"
        newcomer, refusals = socketio.AsyncClient(reconnection=False), []
        newcomer.on("connect_error", refusals.append)  # a reserved event: not seen by a catch-all
        with pytest.raises(socketio.exceptions.ConnectionError):
            await newcomer.connect(one.url, auth={"token": bob.token}, transports=["websocket"], wait_timeout=5)
        assert refusals and refusals[0]["data"]["code"] == "unavailable", refusals
        lines = _outage_records(caplog, mark)
        print(f"\n{failed} failed requests during the outage -> {len(lines)} log lines")
        messages = [r.getMessage() for r in lines]
        assert len(messages) == 1 and messages[0].startswith("database unreachable"), messages
        assert not any(r.exc_info for r in lines)
        status, body = await api.request("GET", "/metrics")
        assert "studyhall_database_up 0.0" in body and "studyhall_database_outages_total 1.0" in body

        await asyncio.to_thread(crash_pg.restart)
        back = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            ack = await _send(sock, conv["id"], "after", "c1")
            if ack["ok"]:
                break
            assert ack["error"]["code"] == "unavailable", ack
            assert time.monotonic() - back < 15, "sends did not work again after the database came back"
            await asyncio.sleep(0.05)
        first_success = time.monotonic() - back
        print(f"restart -> first successful send: {first_success * 1000:.0f} ms ({attempts} attempts)")
        assert sock.client.connected and sock.client.get_sid() == sid, "the socket had to reconnect"
        assert ack["message"]["seq"] == 2
        status, body = await api.request("GET", "/api/conversations", ana)
        assert status == 200, body
        ended = [r for r in _outage_records(caplog, mark) if "reachable again" in r.getMessage()]
        assert len(ended) == 1, [r.getMessage() for r in _outage_records(caplog, mark)]
    finally:
        await api.close_sockets()
        if not crash_pg.running():  # a failed assertion above: let the instance shut down
            await asyncio.to_thread(crash_pg.restart)


async def test_pool_whose_connections_all_broke_gives_working_connections(
    crash_pg: CrashablePostgres, database_url: str
) -> None:
    db = await Database.connect(database_url, min_size=4, max_size=4, connect_timeout=2)
    try:
        async def use() -> int:
            async with db.connection() as conn:
                await asyncio.sleep(0.05)  # hold it, so four are open at once
                return int(await conn.fetchval("SELECT 1"))
        assert await asyncio.gather(*(use() for _ in range(4))) == [1, 1, 1, 1]
        await asyncio.to_thread(crash_pg.kill)
        for _ in range(6):  # broken pooled connections, then refused new ones
            with pytest.raises(DatabaseUnavailable):
                await use()
        assert db.outage.down and db.outage.failures == 6
        await asyncio.to_thread(crash_pg.restart)
        # Every connection of the pool is usable at the first try, several at once.
        assert await asyncio.gather(*(use() for _ in range(8))) == [1] * 8
        assert not db.outage.down
    finally:
        await db.close()


async def test_real_query_errors_stay_internal_with_their_traceback(
    crash_pg: CrashablePostgres, start_instance: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    one = await start_instance(**FAST)
    api = Api(http, one.url)
    try:
        ana, bob = await api.register("Ana"), await api.register("Bob")
        sock = await api.socket(ana)
        conv = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]}))["conversation"]
        await _query(crash_pg, "ALTER TABLE conversation_members RENAME TO broken_members")  # a bug, not an outage
        status, body = await api.request("GET", "/api/conversations", ana)
        assert status == 500 and body["error"]["code"] == "internal", (status, body)
        ack = await _send(sock, conv["id"], "x", "k1")
        assert ack["ok"] is False and ack["error"]["code"] == "internal", ack
        for message in ("request failed", "event handler failed"):
            failures = [r for r in caplog.records if r.getMessage() == message]
            assert failures and failures[0].exc_info is not None, message
    finally:
        await api.close_sockets()
    assert not one.app[CORE].db.outage.down



async def test_a_frozen_database_answers_unavailable_after_the_timeouts(
    crash_pg: CrashablePostgres, start_instance: Any, http: aiohttp.ClientSession
) -> None:
    """A server that accepts connections and answers nothing (stopped, not dead): the
    command and acquire timeouts bound the wait, then it is `unavailable`, not `internal`."""
    one = await start_instance(**{**FAST, "database__connect_timeout_seconds": 1.0, "database__command_timeout_seconds": 1.0})
    api = Api(http, one.url)
    try:
        ana, bob = await api.register("Ana"), await api.register("Bob")
        sock = await api.socket(ana)
        conv = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]}))["conversation"]
        await asyncio.to_thread(crash_pg.freeze, True)
        try:
            for i in range(3):
                started = time.monotonic()
                ack = await _send(sock, conv["id"], "x", f"f{i}", timeout=30)
                assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
                assert time.monotonic() - started < 5.0
            status, body = await api.request("GET", "/api/conversations", ana)
            assert status == 503 and body["error"]["code"] == "unavailable", (status, body)
        finally:
            await asyncio.to_thread(crash_pg.freeze, False)

        async def sent() -> bool:
            ack = await _send(sock, conv["id"], "thawed", "t")
            return bool(ack["ok"])
        await _eventually("a send after the thaw", sent)
    finally:
        await api.close_sockets()


async def test_disconnects_lost_in_an_outage_are_repaired_when_the_database_is_back(
    crash_pg: CrashablePostgres, gate: TcpGate, start_instance: Any, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """Instance `two` loses the database (no crash: its rows stay) while a socket closes, so
    the row could not be removed; its next heartbeat after the outage repairs that."""
    channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
    one = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, **FAST)
    two = await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, database__url=gate.database_url, **FAST)
    api = Api(http, one.url)
    try:
        ana, bob = await api.register("Ana"), await api.register("Bob")
        ana_sock = await api.socket(ana, url=one.url)
        bob_sock = await api.socket(bob, url=two.url)
        await ana_sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]})

        gate.shut()
        await bob_sock.disconnect()
        await asyncio.sleep(1.5)  # several failed heartbeats
        ghost = await _query(crash_pg, "SELECT sid FROM connections WHERE user_id = $1", uuid.UUID(bob.id))
        assert ghost, "the row should still be there: instance two could not remove it"
        assert not [p for p in ana_sock.received("presence") if p == {"user_id": bob.id, "status": "offline"}]

        gate.open = True
        await ana_sock.wait_for("presence", lambda p: p == {"user_id": bob.id, "status": "offline"}, timeout=10)
        assert not await _query(crash_pg, "SELECT sid FROM connections WHERE user_id = $1", uuid.UUID(bob.id))
    finally:
        await api.close_sockets()
