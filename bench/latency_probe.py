"""`studyhall serve` with per-step timings of the message path, for bench/conversation_bench.py.

    python -m bench.latency_probe OUT.json     (then `serve` as usual; SIGUSR1 writes OUT.json)

Where does a message's time go between the frame arriving and the last socket write? This
wraps (in this process only, nothing in the server changes) the steps of one send:

  arrival      Engine.IO frame read -> the event's handler starts (its task scheduled, the
               socket's FIFO lock taken)
  lookup       the batched conversation look-up (ConversationLoader), per batch, and its size
  queued       handler start -> the message queued in the writer (look-up, checks)
  queue wait   queued -> its batch starts (waiting for the conversation's batch in flight)
  commit       the batch's statement and commit (PostgreSQL round trip + WAL flush), and size
  fan-out      the batch's `Delivery.send` calls (frames built, outbox puts)
  flush wait   first outbox put -> the outbox flush (the "two loop turns later")
  flush        one flush: every socket's transport.write, and how many sockets
  ack          handler start -> ack returned (the sender's view, server side)
  loop lag     how late a 1 ms timer fires (anything holding the event loop)
  gc           each collection's pause, by generation

On SIGUSR1 the histograms since the last signal are written to OUT.json (then reset), so the
bench reads one step's figures at a time. All times are ms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections import defaultdict
from contextvars import ContextVar
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES: defaultdict[str, list[float]] = defaultdict(list)
ARRIVED: ContextVar[float | None] = ContextVar("probe_arrived", default=None)


def now() -> float:
    return time.perf_counter()


def note(name: str, ms: float) -> None:
    SAMPLES[name].append(ms)


def summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in SAMPLES.items():
        v = sorted(values)
        n = len(v)
        if not n:
            continue
        out[name] = {"n": n, "p50": v[n // 2], "p99": v[min(n - 1, int(n * 0.99))], "max": v[-1], "sum": sum(v)}
    return out


def install(out_path: str) -> None:
    from engineio import async_socket

    from handlers import batching, writer
    from server import fanout
    from server.gateway import Gateway

    stock_receive = async_socket.AsyncSocket.receive

    async def receive(self: Any, pkt: Any) -> Any:
        token = ARRIVED.set(now())  # the tasks made for this packet's event copy the context
        try:
            return await stock_receive(self, pkt)
        finally:
            ARRIVED.reset(token)

    async_socket.AsyncSocket.receive = receive

    stock_dispatch = Gateway._dispatch
    started: ContextVar[float | None] = ContextVar("probe_started", default=None)

    async def dispatch(self: Any, event: str, sid: str, *args: Any) -> Any:
        arrived = ARRIVED.get()
        t = now()
        if event == "message:send" and arrived is not None:
            note("arrival", (t - arrived) * 1000)
        token = started.set(t)
        try:
            return await stock_dispatch(self, event, sid, *args)
        finally:
            started.reset(token)
            if event == "message:send":
                note("ack", (now() - t) * 1000)

    Gateway._dispatch = dispatch  # type: ignore[method-assign]

    stock_enqueue = batching.Batcher.enqueue
    enqueued: dict[int, float] = {}

    def enqueue(self: Any, request: Any) -> Any:
        fut = stock_enqueue(self, request)
        enqueued[id(self._queue[-1])] = now()
        if isinstance(request, writer._Job):
            t0 = started.get()
            if t0 is not None:
                note("queued", (now() - t0) * 1000)
        return fut

    batching.Batcher.enqueue = enqueue  # type: ignore[method-assign]

    stock_run_one = batching.Batcher._run_one

    async def run_one(self: Any, batch: list[Any]) -> None:
        t = now()
        is_writer = isinstance(self._run.__self__, writer.MessageWriter) if hasattr(self._run, "__self__") else False
        for p in batch:
            q = enqueued.pop(id(p), None)
            if q is not None and is_writer:
                note("queue wait", (t - q) * 1000)
        await stock_run_one(self, batch)

    batching.Batcher._run_one = run_one  # type: ignore[method-assign]

    stock_commit = writer.MessageWriter._commit

    async def commit(self: Any, batch: list[Any]) -> Any:
        t = now()
        try:
            return await stock_commit(self, batch)
        finally:
            note("commit", (now() - t) * 1000)
            note("batch size", float(len(batch)))

    writer.MessageWriter._commit = commit  # type: ignore[method-assign]

    stock_load = writer.ConversationLoader._load

    async def load(self: Any, keys: list[Any]) -> Any:
        t = now()
        try:
            return await stock_load(self, keys)
        finally:
            note("lookup", (now() - t) * 1000)
            note("lookup size", float(len(keys)))

    writer.ConversationLoader._load = load  # type: ignore[method-assign]

    stock_run = writer.MessageWriter._run

    async def run(self: Any, jobs: list[Any]) -> Any:
        # commit is timed by itself; what _run adds after it is the fan-out
        t = now()
        result = await stock_run(self, jobs)
        note("commit+fan-out", (now() - t) * 1000)
        return result

    writer.MessageWriter._run = run  # type: ignore[method-assign]

    stock_put = fanout.Outbox.put
    first_put: list[float] = []

    def put(self: Any, transport: Any, frame: bytes) -> None:
        if not self.scheduled:
            first_put[:] = [now()]
        stock_put(self, transport, frame)

    fanout.Outbox.put = put  # type: ignore[method-assign]
    stock_flush = fanout.Outbox.flush

    def flush(self: Any) -> None:
        t = now()
        if first_put:
            note("flush wait", (t - first_put[0]) * 1000)
        sockets = len(self.pending)
        stock_flush(self)
        note("flush", (now() - t) * 1000)
        note("flush sockets", float(sockets))

    fanout.Outbox.flush = flush  # type: ignore[method-assign]

    gc_started: list[float] = []

    def gc_callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[:] = [now()]
        elif gc_started:
            note(f"gc gen{info['generation']}", (now() - gc_started[0]) * 1000)

    gc.callbacks.append(gc_callback)

    async def lag_probe() -> None:
        while True:
            t = now()
            await asyncio.sleep(0.001)
            note("loop lag", max(0.0, (now() - t) * 1000 - 1.0))

    def dump() -> None:
        data = summary()
        SAMPLES.clear()
        tmp = out_path + ".tmp"
        Path(tmp).write_text(json.dumps(data))
        os.replace(tmp, out_path)

    stock_new_loop = asyncio.events.new_event_loop

    def new_loop() -> asyncio.AbstractEventLoop:
        loop = stock_new_loop()
        loop.add_signal_handler(signal.SIGUSR1, dump)
        loop.call_soon(lambda: PROBE_TASKS.add(loop.create_task(lag_probe())))
        return loop

    asyncio.events.new_event_loop = new_loop  # asyncio.run's runner calls it  # type: ignore[assignment]


PROBE_TASKS: set[asyncio.Task[None]] = set()


if __name__ == "__main__":
    install(sys.argv[1])
    from server.cli import main

    raise SystemExit(main(sys.argv[2:] or ["serve"]))
