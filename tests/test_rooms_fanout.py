"""server/fanout.py: the encode-once broadcast path, with real servers and real clients
(websocket and long-polling, one instance and two over Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
import socketio

import server.app as app_module
from handlers.settings import Settings
from server import fanout
from server.keys import CORE, SIO
from storage.db import Database
from tests.client import Api, Instance


@pytest.fixture
def fast_fanout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build servers the way server/realtime.py will once it uses fanout.create_manager()."""
    stock = app_module.create_sio

    def create_sio(settings: Settings) -> socketio.AsyncServer:
        sio = stock(settings)
        sio.manager = fanout.create_manager(settings.cluster)
        sio.manager.set_server(sio)
        fanout.install(sio)
        return sio

    monkeypatch.setattr(app_module, "create_sio", create_sio)


def test_text_frame_lengths() -> None:
    for n in (0, 125, 126, 65535, 65536, 70000):
        frame = fanout.text_frame(b"x" * n)
        assert frame[0] == 0x81, "FIN + text opcode, no RSV bits (uncompressed)"
        if n < 126:
            assert frame[1] == n and len(frame) == 2 + n
        elif n < 65536:
            assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == n and len(frame) == 4 + n
        else:
            assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == n and len(frame) == 10 + n


async def _room(api: Api, db: Database, size: int) -> dict[str, Any]:
    mentor = await api.staff(db, "mentor")
    status, body = await api.request("POST", "/api/live-sessions", mentor, json={"title": "Fan-out", "max_participants": size})
    assert status == 201
    session = body["live_session"]
    status, _ = await api.request("POST", f"/api/live-sessions/{session['id']}/start", mentor)
    assert status == 200
    return session


async def _everyone_gets_everything(api: Api, session: dict[str, Any], socks: list[Any], *, in_order: bool) -> None:
    """Every message reaches every socket once; on one instance also in seq order (across
    instances the pipeline orders commits, not deliveries: clients sort by seq)."""
    for s in socks:
        await s.ok("room:join", {"live_session_id": session["id"]})
    senders = socks[:3]
    acks = await asyncio.gather(*[
        s.call("message:send", {"conversation_id": session["conversation_id"], "content": f"m{i}-{j} " + "é" * (40 * j),
                                "client_id": f"c{i}-{j}"})
        for j in range(10) for i, s in enumerate(senders)
    ])
    assert all(a["ok"] for a in acks)
    last = max(a["message"]["seq"] for a in acks)
    await asyncio.gather(*[s.wait_for("message:new", lambda d: d["message"]["seq"] == last, timeout=10) for s in socks])
    await asyncio.sleep(0.2)
    for s in socks:
        seqs = [d["message"]["seq"] for d in s.received("message:new")]
        if in_order:
            assert seqs == list(range(1, last + 1)), "each message once, in seq order"
        else:
            assert sorted(seqs) == list(range(1, last + 1)), "each message once"
    long = next(a["message"] for a in acks if a["message"]["content"].startswith("m0-9"))
    assert all(any(d["message"]["content"] == long["content"] for d in s.received("message:new")) for s in socks)


@pytest.mark.slow
async def test_fast_fanout_websocket_and_polling_clients(fast_fanout: None, server: Instance, api: Api, db: Database) -> None:
    session = await _room(api, db, 40)
    ws_socks = [await api.socket(await api.guest(f"W{i}")) for i in range(30)]
    polling = [await api.socket(await api.guest(f"P{i}"), transports=["polling"]) for i in range(2)]
    upgraded = [await api.socket(await api.guest(f"U{i}"), transports=["polling", "websocket"]) for i in range(3)]
    await _everyone_gets_everything(api, session, ws_socks + polling + upgraded, in_order=True)
    manager = server.app[SIO].manager
    assert isinstance(manager, fanout.FastFanout)
    assert len(manager.websockets) >= 30, "websocket and upgraded sockets take the fast path"
    # python-engineio's polling client waits for its pending long-poll GET on disconnect
    # (about ping_interval, 20 s): do not wait for it, the server's shutdown ends it.
    for s in polling:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(s.disconnect(), 0.3)


async def test_fast_fanout_across_two_instances(fast_fanout: None, cluster: list, db: Database) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(http, cluster[0].url)
        try:
            session = await _room(api, db, 40)
            socks = [await api.socket(await api.guest(f"G{i}"), url=cluster[i % 2].url) for i in range(20)]
            await _everyone_gets_everything(api, session, socks, in_order=False)
            for inst in cluster:
                manager = inst.app[SIO].manager
                assert isinstance(manager, fanout.FastRedisFanout) and len(manager.websockets) >= 10
        finally:
            await api.close_sockets()


@pytest.mark.slow  # fills socket buffers until the server gives up
async def test_a_consumer_that_cannot_keep_up_is_closed(fast_fanout: None, start_instance: Any, db: Database,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "MAX_BUFFERED_BYTES", 256 * 1024)
    inst = await start_instance(gateway__rate_limit_per_second=100_000, gateway__rate_limit_burst=100_000,
                                gateway__user_rate_limit_per_second=100_000, gateway__user_rate_limit_burst=100_000)
    def small_receive_buffer(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # set before connect: no autotuning
        return sock

    async with aiohttp.ClientSession() as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=small_receive_buffer)) as stuck_http:
        api = Api(http, inst.url)
        try:
            session = await _room(api, db, 5)
            reader = await api.socket(await api.guest("Reader"))
            await reader.ok("room:join", {"live_session_id": session["id"]})
            stuck = await api.guest("Stuck")
            ws = await stuck_http.ws_connect(inst.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
            assert (await ws.receive_str()).startswith("0")
            await ws.send_str(f'40{{"token":"{stuck.token}"}}')
            assert (await ws.receive_str()).startswith("40")
            await ws.send_str(f'421["room:join",{{"live_session_id":"{session["id"]}"}}]')
            while not (await ws.receive_str()).startswith("431"):
                pass
            # Stop reading: the kernel buffers fill, then the server's buffer passes the cap.
            ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]
            big = "z" * 15000

            def gone(d: dict) -> bool:
                return d["user"]["id"] == stuck.id and d["action"] == "left"

            for batch in range(100):
                acks = await asyncio.gather(*[
                    reader.call("message:send", {"conversation_id": session["conversation_id"], "content": big,
                                                 "client_id": f"b{batch}-{i}"}) for i in range(20)
                ])
                assert all(a["ok"] for a in acks)
                if any(gone(d) for d in reader.received("room:participant")):
                    break
            await reader.wait_for("room:participant", gone, timeout=10)
            assert reader.client.connected, "the reader that keeps up is unaffected"
            assert inst.app[SIO].manager.outbox.slow_consumers_closed == 1
            # The stuck client, reading again, finds its connection cut.
            ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]
            kinds = set()
            while not ws.closed:
                kinds.add((await ws.receive(timeout=5)).type)
            assert kinds & {aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSING}
        finally:
            await api.close_sockets()


def _frames(data: bytes) -> list[str]:
    """The text payloads of the server's (unmasked) websocket frames in one write."""
    out, i = [], 0
    while i < len(data):
        assert data[i] == 0x81, "one unfragmented text frame after another"
        n, i = data[i + 1], i + 2
        if n == 126:
            n, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        out.append(data[i:i + n].decode())
        i += n
    return out


async def _until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_batch_leaves_in_one_write_per_socket_in_seq_order_acks_included(
        server: Instance, api: Api, db: Database) -> None:
    """Four sends queue behind a commit, so they are committed as one batch: every socket
    in the room then gets the batch in one transport write, its `message:new` frames in seq
    order, and each sender's ack in that same write (a sender does not pay a second write,
    and a member a write per message)."""
    session = await _room(api, db, 10)
    socks = [await api.socket(await api.guest(f"B{i}")) for i in range(6)]
    for s in socks:
        await s.ok("room:join", {"live_session_id": session["id"]})
    await asyncio.sleep(0.3)  # the joins' room:participant broadcasts are out
    manager = server.app[SIO].manager
    writer = server.app[CORE].pipeline.writer
    writes: dict[int, list[bytes]] = {}
    for i, s in enumerate(socks):  # record every write the server makes to each socket (and make it)
        transport = manager.websockets[s.client.eio.sid]
        writes[i] = record = []

        def write(data: bytes, real: Any = transport.write, record: list[bytes] = record) -> None:
            record.append(bytes(data))
            real(data)

        transport.write = write
    cid = session["conversation_id"]

    def send(i: int) -> asyncio.Future[dict[str, Any]]:
        return asyncio.ensure_future(socks[i].call("message:send", {"conversation_id": cid, "content": f"from {i}",
                                                                    "client_id": f"b-{i}"}))

    async with db.transaction() as conn:  # hold the conversation's row: the first batch waits on it
        await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", uuid.UUID(cid))
        first = send(0)
        await _until(lambda: writer.batcher.batches == 0 and uuid.UUID(cid) in writer.batcher._busy, "the first batch")
        rest = [send(i) for i in range(1, 5)]
        await _until(lambda: len(writer.batcher._queue) == 4, "four sends queued behind it")
    acks = await asyncio.gather(first, *rest)
    assert [a["message"]["seq"] for a in acks] == [1, 2, 3, 4, 5] and writer.batcher.batches == 2
    for s in socks:
        await s.wait_for("message:new", lambda d: d["message"]["seq"] == 5)
    await asyncio.sleep(0.2)
    for i, s in enumerate(socks):
        assert [d["message"]["seq"] for d in s.received("message:new")] == [1, 2, 3, 4, 5]
        assert len(writes[i]) == 2, f"socket {i}: one write per batch, not {len(writes[i])}"
        batch1, batch2 = (_frames(w) for w in writes[i])
        news = [orjson.loads(f[2:])[1]["message"]["seq"] for f in batch2 if f.startswith('42["message:new"')]
        assert news == [2, 3, 4, 5], "the second batch's four messages, in seq order, in one write"
        own_acks = [f for f in batch1 + batch2 if f.startswith("43")]
        assert len(own_acks) == (1 if i < 5 else 0), "a sender's ack rides in its batch's write"
        if 1 <= i <= 4:
            assert batch2[-1].startswith("43"), "after the batch's messages, in the same write"
