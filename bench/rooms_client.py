"""Room participants for bench/rooms_bench.py, run in worker processes.

Two client kinds, the same protocol:
  sio  python-socketio's AsyncClient (what the brief asks for; heavy: ~tens of µs of
       client CPU per received event, which on a 2-core machine competes with the server);
  raw  a minimal Engine.IO 4 / Socket.IO 5 client over one aiohttp websocket (connect
       with auth, answer pings, emit with ack, receive events), so that receiving costs
       the load generator little and the figures say more about the server.

Times are CLOCK_MONOTONIC, which on Linux is one clock for every process on the machine,
so a sender in one worker and a receiver in another measure latency on the same clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson
import socketio

Sink = Callable[[str], None]


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class SioParticipant:
    def __init__(self, url: str, token: str, sink: Sink, counts: Counter[str]) -> None:
        self.url, self.token = url, token
        self.sio = socketio.AsyncClient(reconnection=False)

        async def on_new(data: dict[str, Any]) -> None:
            counts["message:new"] += 1
            sink(data["message"]["client_id"] or "")

        async def on_any(event: str, data: Any = None) -> None:
            counts[event] += 1

        self.sio.on("message:new", on_new)
        self.sio.on("*", on_any)

    async def connect(self) -> None:
        await self.sio.connect(self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=30)

    async def call(self, event: str, data: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return await self.sio.call(event, data, timeout=timeout)

    async def close(self) -> None:
        await self.sio.disconnect()


class RawParticipant:
    """Just enough Socket.IO: `0` open, `40` connect with auth, `2`/`3` ping/pong, `42` events, `43` acks."""

    def __init__(self, url: str, token: str, sink: Sink, counts: Counter[str], http: aiohttp.ClientSession) -> None:
        self.url, self.token, self.sink, self.counts, self.http = url, token, sink, counts, http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.connected: asyncio.Future[None] | None = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        ws_url = self.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.http.ws_connect(ws_url, autoping=True, max_msg_size=0)
        self.connected = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.connected, 30)

    async def _read(self) -> None:
        assert self.ws is not None and self.connected is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            d: str = msg.data
            if d == "2":
                await self.ws.send_str("3")
            elif d.startswith("42"):
                if d.startswith('42["message:new"'):
                    self.counts["message:new"] += 1
                    self.sink(orjson.loads(d[2:])[1]["message"]["client_id"] or "")
                else:
                    self.counts[d[4:d.index('"', 4)]] += 1
            elif d.startswith("43"):
                i = 2
                while d[i].isdigit():
                    i += 1
                fut = self.pending.pop(int(d[2:i]), None)
                if fut is not None and not fut.done():
                    fut.set_result(orjson.loads(d[i:])[0])
            elif d.startswith("40"):
                if not self.connected.done():
                    self.connected.set_result(None)
            elif d.startswith("44"):
                if not self.connected.done():
                    self.connected.set_exception(ConnectionError(d[2:]))
            elif d.startswith("0"):
                await self.ws.send_str("40" + orjson.dumps({"token": self.token}).decode())
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    async def call(self, event: str, data: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        assert self.ws is not None
        ack_id = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ack_id] = fut
        await self.ws.send_str(f"42{ack_id}" + orjson.dumps([event, data]).decode())
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class Worker:
    """One process's share of the room: connects, joins and chats on command."""

    def __init__(self, kind: str, creds: list[tuple[str, str]], session_id: str, conversation_id: str) -> None:
        self.kind, self.creds = kind, creds
        self.session_id, self.conversation_id = session_id, conversation_id
        self.counts: Counter[str] = Counter()
        self.tag = ""
        self.latencies = array("d")
        self.last_delivery = 0.0
        self.http: aiohttp.ClientSession | None = None
        self.people: list[Any] = []

    def sink(self, client_id: str) -> None:
        tag, _, rest = client_id.partition("|")
        if tag != self.tag:
            return
        t = now()
        self.latencies.append(t - float(rest.split("|", 1)[0]))
        self.last_delivery = t

    async def connect(self, concurrency: int) -> dict[str, Any]:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for url, token in self.creds:
            if self.kind == "raw":
                self.people.append(RawParticipant(url, token, self.sink, self.counts, self.http))
            else:
                self.people.append(SioParticipant(url, token, self.sink, self.counts))
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
                    ack = await p.call("room:join", {"live_session_id": self.session_id})
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
        sent = 0
        tasks: set[asyncio.Task[Any]] = set()
        start = now()
        deadline = start + seconds

        async def send(p: Any, n: int) -> None:
            try:
                ack = await p.call("message:send", {
                    "conversation_id": self.conversation_id, "content": f"bench message {n}",
                    "client_id": f"{tag}|{now():.6f}|{id(p)}-{n}",
                })
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
        # Drain: wait until deliveries stop arriving.
        seen = -1
        while len(self.latencies) != seen:
            seen = len(self.latencies)
            await asyncio.sleep(quiet)
        return {"sent": sent, "acks": dict(acks), "start": start, "last_delivery": self.last_delivery,
                "latencies": self.latencies.tolist()}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.people), return_exceptions=True)
        if self.http is not None:
            await self.http.close()


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
