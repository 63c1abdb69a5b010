"""Room participants for bench/rooms_bench.py, run in worker processes.

Two client kinds, the same protocol:
  sio  python-socketio's AsyncClient (what the brief asks for; heavy: ~tens of µs of
       client CPU per received event, which on a 2-core machine competes with the server);
  raw  a minimal Engine.IO 4 / Socket.IO 5 client on a bare asyncio Protocol speaking
       websocket (connect with auth, answer pings, emit with ack, receive events), so that
       receiving costs the load generator a few µs per frame and the figures say more
       about the server.

`raw-deflate` is the raw client offering permessage-deflate the way browsers do; when the
server agrees, it compresses what it sends and inflates what it gets (bench/socket_memory_bench.py).

Times are CLOCK_MONOTONIC, which on Linux is one clock for every process on the machine,
so a sender in one worker and a receiver in another measure latency on the same clock.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import struct
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson
import socketio

Sink = Callable[[str], None]


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class SioParticipant:
    def __init__(self, url: str, token: str, sink: Sink, counts: Counter[str]) -> None:
        self.url, self.token = url, token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.connect_timeout = 30.0

        async def on_new(data: dict[str, Any]) -> None:
            counts["message:new"] += 1
            sink(data["message"]["client_id"] or "")

        async def on_any(event: str, data: Any = None) -> None:
            counts[event] += 1

        async def on_disconnect(*_: Any) -> None:
            counts["connections lost"] += 1

        self.sio.on("message:new", on_new)
        self.sio.on("*", on_any)
        self.sio.on("disconnect", on_disconnect)

    async def connect(self) -> None:
        await self.sio.connect(self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=self.connect_timeout)

    async def call(self, event: str, data: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return await self.sio.call(event, data, timeout=timeout)

    async def close(self) -> None:
        await self.sio.disconnect()


class _RawProtocol(asyncio.Protocol):
    """A websocket client on a bare asyncio Protocol: frames are parsed straight from the
    received bytes, with no per-frame futures or queues, so that 1,000 participants cost
    the load generator little. Client frames are masked with a zero key (RFC 6455 requires
    the mask bit, not a random key) and, unless `deflate`, no extension is offered, so
    frames arrive plain. With `deflate` it offers permessage-deflate like a browser; if the
    server agrees (`self.inflater` is set) every frame both ways is compressed."""

    def __init__(self, owner: RawParticipant, host: str, path: str, deflate: bool = False) -> None:
        self.owner, self.host, self.path, self.deflate = owner, host, path, deflate
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake_done = False
        self.inflater: Any = None
        self.deflater: Any = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write((
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if self.deflate else "")
            + "\r\n"
        ).encode())

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        payload = text.encode()
        b0 = 0x81
        if self.deflater is not None:  # RFC 7692 §7.2.1: drop the sync flush's 00 00 ff ff
            payload = (self.deflater.compress(payload) + self.deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
            b0 = 0xC1
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", b0, 0x80 | 127, n)
        self.transport.write(header + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(bytes(buf[:end]).decode(errors="replace"))
            if self.deflate and b"permessage-deflate" in bytes(buf[:end]).lower():
                # Small windows on this side: the load generator's memory is not measured.
                self.inflater = zlib.decompressobj(-15)
                self.deflater = zlib.compressobj(6, zlib.DEFLATED, -9, 1)
            del buf[:end + 4]
            self.handshake_done = True
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if size - pos < head + n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                payload = bytes(buf[pos + head:pos + head + n])
                if b0 & 0x40 and self.inflater is not None:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                self.owner.frame(payload)
            elif opcode == 0x8:
                self.transport.close()  # type: ignore[union-attr]
            pos += head + n
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner.lost()


class RawParticipant:
    """Just enough Socket.IO: `0` open, `40` connect with auth, `2`/`3` ping/pong, `42` events, `43` acks."""

    MESSAGE_NEW = b'42["message:new"'
    CLIENT_ID = b'"client_id":"'

    def __init__(self, url: str, token: str, sink: Sink, counts: Counter[str], deflate: bool = False) -> None:
        self.url, self.token, self.sink, self.counts, self.deflate = url, token, sink, counts, deflate
        self.proto: _RawProtocol | None = None
        self.ids = itertools.count()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.connected: asyncio.Future[None] | None = None
        self.connect_timeout = 30.0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        host_port = self.url.split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        self.connected = loop.create_future()
        _, self.proto = await loop.create_connection(
            lambda: _RawProtocol(self, host_port, "/socket.io/?EIO=4&transport=websocket", self.deflate), host, int(port)
        )
        try:
            await asyncio.wait_for(self.connected, self.connect_timeout)
        except BaseException:
            # Not left half-open: a socket the server finishes connecting later would be
            # counted by the server and not by the caller.
            if self.proto.transport is not None:
                self.proto.transport.abort()
            raise

    def frame(self, d: bytes) -> None:
        assert self.proto is not None and self.connected is not None
        if d.startswith(b"42"):
            if d.startswith(self.MESSAGE_NEW):
                self.counts["message:new"] += 1
                i = d.find(self.CLIENT_ID) + len(self.CLIENT_ID)
                self.sink(d[i:d.index(b'"', i)].decode())
            else:
                self.counts[d[4:d.index(b'"', 4)].decode()] += 1
        elif d == b"2":
            self.proto.send_text("3")
        elif d.startswith(b"43"):
            i = 2
            while 48 <= d[i] <= 57:
                i += 1
            fut = self.pending.pop(int(d[2:i]), None)
            if fut is not None and not fut.done():
                fut.set_result(orjson.loads(d[i:])[0])
        elif d.startswith(b"40"):
            if not self.connected.done():
                self.connected.set_result(None)
        elif d.startswith(b"44"):
            if not self.connected.done():
                self.connected.set_exception(ConnectionError(d[2:].decode()))
        elif d.startswith(b"0"):
            self.proto.send_text("40" + orjson.dumps({"token": self.token}).decode())

    def lost(self) -> None:
        if self.connected is not None and self.connected.done() and not self.connected.cancelled() \
                and self.connected.exception() is None:  # not a connect that failed or was given up
            self.counts["connections lost"] += 1
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    async def call(self, event: str, data: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        assert self.proto is not None
        ack_id = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ack_id] = fut
        self.proto.send_text(f"42{ack_id}" + orjson.dumps([event, data]).decode())
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
            await self.proto.closed


class Worker:
    """One process's share of the room: connects, joins and chats on command."""

    def __init__(self, kind: str, creds: list[tuple[str, str]], session_id: str, conversation_id: str) -> None:
        self.kind, self.creds = kind, creds
        self.session_id, self.conversation_id = session_id, conversation_id
        self.counts: Counter[str] = Counter()
        self.tag = ""
        self.latencies = array("d")
        self.last_delivery = 0.0
        self.people: list[Any] = []

    def sink(self, client_id: str) -> None:
        tag, _, rest = client_id.partition("|")
        if tag != self.tag:
            return
        t = now()
        self.latencies.append(t - float(rest.split("|", 1)[0]))
        self.last_delivery = t

    async def connect(self, concurrency: int, timeout: float = 30.0) -> dict[str, Any]:
        for url, token in self.creds:
            if self.kind in ("raw", "raw-deflate"):
                self.people.append(RawParticipant(url, token, self.sink, self.counts, deflate=self.kind == "raw-deflate"))
            else:
                self.people.append(SioParticipant(url, token, self.sink, self.counts))
            self.people[-1].connect_timeout = timeout
        sem = asyncio.Semaphore(concurrency)
        failed = 0

        async def one(p: Any) -> None:
            nonlocal failed
            async with sem:
                try:
                    await p.connect()
                except Exception:
                    failed += 1

        start = now()
        await asyncio.gather(*(one(p) for p in self.people))
        return {"connected": len(self.people) - failed, "failed": failed, "start": start, "end": now()}

    async def join(self, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        codes: Counter[str] = Counter()
        lat = array("d")

        async def one(p: Any) -> None:
            async with sem:
                t = now()
                try:
                    ack = await p.call("room:join", {"live_session_id": self.session_id}, timeout=300)
                except Exception as exc:
                    codes[type(exc).__name__] += 1
                    return
                lat.append(now() - t)
                codes["ok" if ack.get("ok") else ack["error"]["code"]] += 1

        start = now()
        await asyncio.gather(*(one(p) for p in self.people))
        return {"codes": dict(codes), "start": start, "end": now(), "latencies": lat.tolist()}

    async def chat(self, senders: list[int], per_sender_rate: float, seconds: float, tag: str, quiet: float) -> dict[str, Any]:
        """Open loop: each sender sends every 1/rate s (random phase) without waiting for acks."""
        self.tag, self.latencies, self.last_delivery = tag, array("d"), 0.0
        acks: Counter[str] = Counter()
        ack_lat = array("d")
        sent = 0
        tasks: set[asyncio.Task[Any]] = set()
        start = now()
        deadline = start + seconds

        async def send(p: Any, n: int) -> None:
            try:
                t = now()
                ack = await p.call("message:send", {
                    "conversation_id": self.conversation_id, "content": f"bench message {n}",
                    "client_id": f"{tag}|{t:.6f}|{id(p)}-{n}",
                })
                ack_lat.append(now() - t)
                acks["ok" if ack.get("ok") else ack["error"]["code"]] += 1
            except Exception as exc:
                acks[type(exc).__name__] += 1

        async def run(p: Any) -> None:
            nonlocal sent
            interval = 1.0 / per_sender_rate
            next_at = start + random.random() * interval
            n = 0
            while next_at < deadline:
                await asyncio.sleep(max(0.0, next_at - now()))
                n += 1
                sent += 1
                t = asyncio.create_task(send(p, n))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                next_at += interval

        await asyncio.gather(*(run(self.people[i]) for i in senders))
        while tasks:
            await asyncio.gather(*list(tasks))
        # Drain: wait until deliveries stop arriving, but not before the sending period is
        # over: a worker with no senders (or done early) would otherwise stop listening
        # while another worker's last messages are still on their way, and count them lost.
        await asyncio.sleep(max(0.0, deadline - now()))
        seen = -1
        while len(self.latencies) != seen:
            seen = len(self.latencies)
            await asyncio.sleep(quiet)
        return {"sent": sent, "acks": dict(acks), "ack_latencies": ack_lat.tolist(), "start": start, "last_delivery": self.last_delivery,
                "latencies": self.latencies.tolist()}

    async def stats(self) -> dict[str, Any]:
        """Nothing to do: the reply carries the counts (connections lost, events seen)."""
        return {"people": len(self.people)}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.people), return_exceptions=True)


def run_worker(conn: Connection, kind: str, creds: list[tuple[str, str]], session_id: str, conversation_id: str) -> None:
    """Process entry point: obey commands from the orchestrator until `close`."""

    async def main() -> None:
        worker = Worker(kind, creds, session_id, conversation_id)
        loop = asyncio.get_running_loop()
        while True:
            cmd, params = await loop.run_in_executor(None, conn.recv)
            if cmd == "close":
                await worker.close()
                conn.send({"counts": dict(worker.counts)})
                return
            result = await getattr(worker, cmd)(**params)
            result["counts"] = dict(worker.counts)
            conn.send(result)

    asyncio.run(main())
