"""The capacity model's missing constants, measured cheaply on this machine (docs/scaling.md).

    .venv/bin/python bench/capacity_probe.py                 # all three parts, about a minute
    .venv/bin/python bench/capacity_probe.py --part redis    # or pg, instance

Parts:
  pg        durable message inserts into a real, migrated `messages` table (embedded PostgreSQL
            18, fsync and synchronous_commit on): one `messages.insert` per commit from 8
            connections (PostgreSQL groups their WAL flushes itself), then the pipeline's group
            commit (`messages.insert_batch`, 100 rows per statement) from 2 connections.
  redis     `redis-benchmark ... publish studyhall <payload>` against a redis-server started here on a free port,
            payload the size of a `message:new` event, with 0, 4 and 16 subscribers attached
            (`redis-cli subscribe`, one per instance of a fleet: Redis copies each publish to
            every subscriber).
  instance  one `studyhall serve` with Redis: resident memory per connected websocket (raw
            client, no permessage-deflate: see GUIDE.md for deflate's extra ~150 KB), then the
            CPU the instance spends on Redis events for conversations it has no socket in (what
            every instance pays for every event today: docs/scaling.md, "Fan-out").

Figures are lower bounds: two cores shared with everything else (print the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from redis import asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_seconds, start_servers, stop_servers, wait_up  # noqa: E402
from bench.rooms_client import RawParticipant  # noqa: E402
from storage import conversations, messages  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from tests.services import RedisServer  # noqa: E402

CONTENT = "Could you explain why the light reactions need water? " * 3  # ~160 chars, a typical chat line


async def _inserts(url: str, seconds: float, connections: int, batch: int) -> float:
    """Rows committed per second: `connections` loops, each committing `batch` rows per statement."""
    db = await Database.connect(url, min_size=connections, max_size=connections)
    pool = db.pool
    async with pool.acquire() as conn:
        conv = await conversations.insert_conversation(conn, kind="group", title="probe", created_by=None)
    assert conv is not None
    done = 0
    stop = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.monotonic() < stop:
                rows = [messages.NewMessage(conv.id, None, "user", CONTENT, client_id=uuid.uuid4().hex) for _ in range(batch)]
                if batch == 1:
                    await messages.insert(conn, conversation_id=conv.id, sender_id=None, role="user", content=CONTENT,
                                          client_id=rows[0].client_id)
                else:
                    await messages.insert_batch(conn, rows)
                done += batch

    start = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(connections)))
    elapsed = time.monotonic() - start
    if batch == 1:  # the history a client reads when it opens a conversation, on the rows just written
        async with pool.acquire() as conn:
            t0 = time.monotonic()
            for _ in range(200):
                await messages.recent(conn, conv.id, 50)
            print(f"pg history read, last 50 messages, one connection: {(time.monotonic() - t0) / 200 * 1000:.2f} ms each")
    await pool.close()
    return done / elapsed


async def probe_pg(seconds: float) -> None:
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-probe-pg-")), port=free_port(), listen_tcp=True)
    os.chmod(pg.data_dir, 0o755)
    url = await asyncio.to_thread(pg.start)
    try:
        await migrate(url)
        conn = await asyncpg.connect(url)
        settings = {n: await conn.fetchval(f"SHOW {n}") for n in ("fsync", "synchronous_commit", "commit_delay")}
        await conn.close()
        print(f"pg settings: {settings}")
        single = await _inserts(url, seconds, connections=8, batch=1)
        print(f"pg durable inserts, one row per commit, 8 connections: {single:,.0f} rows/s")
        grouped = await _inserts(url, seconds, connections=2, batch=100)
        print(f"pg durable inserts, group commit (insert_batch of 100), 2 connections: {grouped:,.0f} rows/s")
        conn = await asyncpg.connect(url)
        rows = await conn.fetchval("SELECT count(*) FROM messages")
        size = await conn.fetchval("SELECT pg_total_relation_size('messages')")
        await conn.close()
        print(f"pg storage: {rows:,} messages in {size / 1e6:,.1f} MB with indexes: {size / rows:,.0f} bytes per message")
    finally:
        pg.destroy()


def _publish_rate(port: int, size: int) -> float:
    # Redis 7.0's redis-benchmark has no `-t publish` test: give it the command itself.
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-n", "50000", "-c", "8", "-q", "publish", "studyhall", "x" * size],
                         capture_output=True, text=True, check=True).stdout
    found = re.findall(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    return float(found[-1])


def probe_redis(size: int) -> None:
    redis = RedisServer().start()
    subscribers: list[subprocess.Popen[bytes]] = []
    try:
        for wanted in (0, 4, 16):
            while len(subscribers) < wanted:
                subscribers.append(subprocess.Popen(["redis-cli", "-p", str(redis.port), "subscribe", "studyhall"],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
            print(f"redis publish, {size}-byte payload, {wanted} subscribers: {_publish_rate(redis.port, size):,.0f}/s", flush=True)
    finally:
        for p in subscribers:
            p.terminate()
        redis.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def probe_instance(sockets: int, events: int) -> None:
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-probe-pg-")), port=free_port(), listen_tcp=True)
    os.chmod(pg.data_dir, 0o755)
    url = await asyncio.to_thread(pg.start)
    redis = RedisServer().start()
    channel = f"probe-{uuid.uuid4().hex[:6]}"
    procs = start_servers(1, url, redis.url, {"STUDYHALL_REDIS_CHANNEL": channel})
    (proc, base), = procs
    clients: list[RawParticipant] = []
    try:
        await wait_up(base)
        async with aiohttp.ClientSession() as s:
            async def guest(i: int) -> str:
                async with s.post(base + "/api/auth/guest", json={"name": f"P{i}"}) as r:
                    return str((await r.json())["token"])
            tokens = await asyncio.gather(*(guest(i) for i in range(sockets)))
        await asyncio.sleep(2)
        before = _rss_kb(proc.pid)
        counts: Counter[str] = Counter()
        clients = [RawParticipant(base, t, lambda _: None, counts) for t in tokens]
        for i in range(0, sockets, 50):
            await asyncio.gather(*(c.connect() for c in clients[i:i + 50]))
        await asyncio.sleep(3)
        after = _rss_kb(proc.pid)
        print(f"instance memory: {before / 1024:,.1f} MB idle, {after / 1024:,.1f} MB with {sockets} websockets: "
              f"{(after - before) / sockets:,.1f} KB per socket", flush=True)

        # A message:new for a conversation none of this instance's sockets is in, as another
        # instance's AsyncRedisManager publishes it.
        body = {"id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4()), "seq": 42, "sender_id": str(uuid.uuid4()),
                "role": "user", "content": CONTENT, "client_id": uuid.uuid4().hex, "metadata": {},
                "created_at": "2026-12-01T17:00:00.000000+00:00", "edited_at": None, "deleted_at": None}
        payload = orjson.dumps({"method": "emit", "event": "message:new", "data": [body], "binary": False, "namespace": "/",
                                "room": f"conversation:{body['conversation_id']}", "skip_sid": None, "callback": None,
                                "host_id": "elsewhere"})
        idle0 = cpu_seconds(proc.pid)
        await asyncio.sleep(4)
        idle = cpu_seconds(proc.pid) - idle0
        client = aioredis.Redis.from_url(redis.url)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        for _ in range(0, events, 200):
            pipe = client.pipeline(transaction=False)
            for _ in range(200):
                pipe.publish(channel, payload)
            await pipe.execute()
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, 4 - (time.monotonic() - t0)))  # same window as the idle one, or more
        window = time.monotonic() - t0
        busy = cpu_seconds(proc.pid) - cpu0 - idle * window / 4
        await client.aclose()
        print(f"instance receive cost: {events:,} foreign events of {len(payload)} bytes in {window:.1f} s: "
              f"{busy / events * 1e6:,.1f} µs CPU per event (idle {idle / 4 * 100:.1f}% subtracted), "
              f"deliveries made {counts['message:new']}", flush=True)
    finally:
        for c in clients:
            await c.close()
        stop_servers(procs)
        redis.stop()
        pg.destroy()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "pg", "redis", "instance"], default="all")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--payload", type=int, default=600, help="bytes per publish (a message:new event as published)")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if args.part in ("all", "redis"):
        probe_redis(args.payload)
    if args.part in ("all", "pg"):
        await probe_pg(args.seconds)
    if args.part in ("all", "instance"):
        await probe_instance(args.sockets, args.events)


if __name__ == "__main__":
    asyncio.run(main())
