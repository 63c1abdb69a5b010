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
    "presence_grace_seconds": 0.3,
    "room_leave_grace_seconds": 0.5,
    "room_host_grace_seconds": 1.0,
    "instance_heartbeat_seconds": 0.5,
    "registry_settle_seconds": 2.0,
    "db_connect_timeout_seconds": 2.0,
}


@dataclass
class CrashablePostgres:
    """An embedded PostgreSQL on a TCP port that a test may SIGKILL and start again."""

    base: Path
    port: int
    server: EmbeddedPostgres

    @classmethod
    def start(cls) -> "CrashablePostgres":
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

    def running(self) -> bool:
        pid_file = self.server.pgdata / "postmaster.pid"
        return pid_file.exists() and Path(f"/proc/{pid_file.read_text().split()[0]}").exists()

    def destroy(self) -> None:
        self.server.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


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


async def _connect_when_up(api: Api, user: User, url: str) -> Socket:
    """A new socket; while the database is still coming up it may be refused `unavailable`."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await api.socket(user, url=url)
        except socketio.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "could not connect after the database came back"
            await asyncio.sleep(0.1)


async def test_live_room_presence_and_logout_survive_a_database_crash(
    crash_pg: CrashablePostgres, start_instance: Any, redis_url: str, http: aiohttp.ClientSession
) -> None:
    channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
    one = await start_instance(redis_url=redis_url, redis_channel=channel, **FAST)
    two = await start_instance(redis_url=redis_url, redis_channel=channel, **FAST)
    api = Api(http, one.url)
    try:
        host = await _mentor(api, crash_pg, "Host")
        ana, bob, watcher, leaver, late = [await api.register(n) for n in ("Ana", "Bob", "Watcher", "Leaver", "Late")]
        host_sock = await api.socket(host, url=one.url)
        ana_sock = await api.socket(ana, url=one.url)
        bob_sock = await api.socket(bob, url=two.url)  # the other instance
        watcher_sock = await api.socket(watcher, url=one.url)
        leaver_sock = await api.socket(leaver, url=two.url)
        # The watcher shares a thread with Ana and Bob, so hears their presence.
        await watcher_sock.ok("conversation:create", {"kind": "group", "member_ids": [ana.id, bob.id], "title": "Study"})

        status, body = await api.request("POST", "/api/live-sessions", host, json={"title": "Live", "max_participants": 10})
        assert status == 201, body
        session_id = body["live_session"]["id"]
        status, body = await api.request("POST", f"/api/live-sessions/{session_id}/start", host)
        assert status == 200, body
        room_chat = body["live_session"]["conversation_id"]
        await host_sock.ok("room:join", {"live_session_id": session_id})
        await ana_sock.ok("room:join", {"live_session_id": session_id})
        await bob_sock.ok("room:join", {"live_session_id": session_id})

        back_at = await _crash(crash_pg)

        # A socket opened right after recovery registers (its instance row was gone) and works.
        late_sock = await _connect_when_up(api, late, one.url)
        await late_sock.ok("conversation:create", {"kind": "direct", "member_ids": [watcher.id]})
        registered = await _query(crash_pg, "SELECT 1 FROM connections WHERE user_id = $1", uuid.UUID(late.id))
        assert registered, "a socket opened right after the crash is missing from the registry"

        # A logout right after the crash closes a socket opened before it (on the other instance).
        async def logged_out() -> bool:
            status, _ = await api.request("POST", "/api/auth/logout", leaver)
            return status == 204
        await _eventually("logout", logged_out)
        async def closed() -> bool:
            return not leaver_sock.client.connected
        await _eventually("the logged-out socket to close", closed)

        # Past the settle period and then every grace, with sweeps in between.
        await asyncio.sleep(max(0.0, back_at + FAST["registry_settle_seconds"] - time.monotonic()))
        await asyncio.sleep(FAST["room_host_grace_seconds"] + FAST["room_leave_grace_seconds"] + 3.0)

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
        assert {str(r["user_id"]) for r in online} >= {host.id, ana.id, bob.id, watcher.id, late.id}
        assert len(await _query(crash_pg, "SELECT id FROM instances")) == 2
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
            ack = await sock.call("message:send", {"conversation_id": conv["id"], "content": "x", "client_id": f"d{i}"})
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
            assert time.monotonic() - started < 3.0, "an unreachable database must not hang a send"
            status, body = await api.request("GET", "/api/conversations", ana)
            assert status == 503 and body["error"]["code"] == "unavailable", (status, body)
            failed += 2
        status, body = await api.request("GET", "/api/health")
        assert status == 503 and body["database"] == "down"
        lines = _outage_records(caplog, mark)
        print(f"\n{failed} failed requests during the outage -> {len(lines)} log lines")
        assert [r.getMessage()[:30] for r in lines] == ["database unreachable: answerin"], [r.getMessage() for r in lines]
        assert not any(r.exc_info for r in lines)
        status, body = await api.request("GET", "/metrics")
        assert "studyhall_database_up 0.0" in body and "studyhall_database_outages_total 1.0" in body

        await asyncio.to_thread(crash_pg.restart)
        back = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            ack = await sock.call("message:send", {"conversation_id": conv["id"], "content": "after", "client_id": "c1"})
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


async def test_pool_whose_connections_all_broke_gives_working_connections(crash_pg: CrashablePostgres, database_url: str) -> None:
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
    ana = await api.register("Ana")
    await _query(crash_pg, "ALTER TABLE conversation_members RENAME TO broken_members")  # a bug, not an outage
    status, body = await api.request("GET", "/api/conversations", ana)
    assert status == 500 and body["error"]["code"] == "internal", (status, body)
    failures = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert failures and failures[0].exc_info is not None
    assert not one.app[CORE].db.outage.down

