"""A live room with many participants: joins/s, chat deliveries/s and send→deliver latency.

    .venv/bin/python bench/rooms_bench.py [--participants 1000] [--instances 1|2|both]
        [--client sio|raw|both] [--rates 10,20,40] [--seconds 5] [--workers 2] [--senders 20]

Starts its own PostgreSQL (embedded, TCP on loopback) and Redis, then `studyhall serve`
(`python -m server serve`) as one process, or two sharing Redis, with DATABASE_URL /
REDIS_URL in the environment. Participants are guests, spread round-robin over the
instances and driven from `--workers` separate processes (bench/rooms_client.py).

Per configuration:
  connect  all participants connect (50 at a time per worker);
  join     all send `room:join` at once (--join-concurrency in flight per worker); joins/s is
           participants / wall time from the first join sent to the last ack. Every join
           also broadcasts `room:participant` to everyone already in (n²/2 deliveries);
  chat     for each offered rate R (messages/s, spread over --senders participants on
           both instances, open loop), R × participants deliveries/s are offered for
           --seconds; reported: deliveries/s achieved (delivered / time from the first
           send to the last delivery), latency p50/p99/max, loss. The ladder stops once p99
           passes 2 s (the server is past saturation) or messages are lost.

Everything shares the machine's cores (2 here): servers, PostgreSQL, Redis and the load
generators. Figures are lower bounds; the server CPU column says how busy the servers were.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_seconds, py_spy, quantile_ms, start_servers, wait_up  # noqa: E402
from bench.rooms_client import run_worker  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import RedisServer  # noqa: E402


def profile(pid: int, phase: str) -> None:
    """BENCH_PROFILE=/tmp/prefix: py-spy (if installed) records the first server for 10 s of a phase."""
    prefix = os.environ.get("BENCH_PROFILE")
    if prefix:
        py_spy(pid, 10, f"{prefix}-{phase}.txt")


async def setup_room(url: str, database_url: str, participants: int) -> tuple[dict[str, Any], list[str], str]:
    """A mentor's live room and `participants` guest tokens."""
    async with aiohttp.ClientSession() as s:
        body = {"email": f"mentor-{uuid.uuid4().hex[:8]}@example.com", "password": "benchmark-pw", "name": "Mentor"}
        async with s.post(url + "/api/auth/register", json=body) as r:
            mentor = await r.json()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE users SET role = 'mentor' WHERE id = $1", uuid.UUID(mentor["user"]["id"]))
        finally:
            await conn.close()
        headers = {"Authorization": f"Bearer {mentor['token']}"}
        async with s.post(url + "/api/live-sessions", json={"title": "Bench room", "max_participants": participants},
                          headers=headers) as r:
            session = (await r.json())["live_session"]
        async with s.post(url + f"/api/live-sessions/{session['id']}/start", headers=headers) as r:
            assert r.status == 200, await r.text()
        sem = asyncio.Semaphore(20)

        async def guest(i: int) -> str:
            async with sem:
                async with s.post(url + "/api/auth/guest", json={"name": f"P{i}"}) as r:
                    return (await r.json())["token"]

        tokens = await asyncio.gather(*(guest(i) for i in range(participants)))
    return session, list(tokens), mentor["token"]


class Workers:
    def __init__(self, kind: str, n: int, creds: list[tuple[str, str]], session: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for w in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run_worker, args=(child, kind, creds[w::n], session["id"], session["conversation_id"]))
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.pids = [p.pid for p in self.procs]

    async def all(self, cmd: str, per_worker: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
        params = per_worker if isinstance(per_worker, list) else [per_worker] * len(self.pipes)
        for pipe, p in zip(self.pipes, params):
            pipe.send((cmd, p))
        return list(await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes)))

    async def close(self) -> None:
        await self.all("close", {})
        for proc in self.procs:
            proc.join(10)


async def configuration(instances: int, kind: str, fanout: str, args: argparse.Namespace, database_url: str, redis_url: str) -> dict[str, Any]:
    procs = start_servers(instances, database_url, redis_url if instances > 1 else None, {
        "STUDYHALL_REDIS_CHANNEL": f"bench-{uuid.uuid4().hex[:6]}", "STUDYHALL_ROOM_HOST_GRACE": "600", "STUDYHALL_FANOUT": fanout})
    pids = [p.pid for p, _ in procs]
    urls = [u for _, u in procs]
    result: dict[str, Any] = {"instances": instances, "client": kind, "fanout": fanout, "participants": args.participants, "chat": []}
    try:
        for url in urls:
            await wait_up(url)
        session, tokens, host_token = await setup_room(urls[0], database_url, args.participants)
        host = socketio.AsyncClient(reconnection=False)  # the host stays connected (no host-gone grace)
        await host.connect(urls[0], auth={"token": host_token}, transports=["websocket"])
        creds = [(urls[i % instances], t) for i, t in enumerate(tokens)]
        workers = Workers(kind, args.workers, creds, session)
        try:
            r = await workers.all("connect", {"concurrency": 50})
            wall = max(x["end"] for x in r) - min(x["start"] for x in r)
            result["connected"] = sum(x["connected"] for x in r)
            result["connects/s"] = result["connected"] / wall

            cpu0 = cpu_seconds(*pids)
            profile(pids[0], "join")
            r = await workers.all("join", {"concurrency": args.join_concurrency})
            wall = max(x["end"] for x in r) - min(x["start"] for x in r)
            codes: dict[str, int] = {}
            for x in r:
                for k, v in x["codes"].items():
                    codes[k] = codes.get(k, 0) + v
            lat = [v for x in r for v in x["latencies"]]
            result.update({"joined": codes.get("ok", 0), "join codes": codes, "joins/s": codes.get("ok", 0) / wall,
                           "join p50 ms": quantile_ms(lat, 50), "join p99 ms": quantile_ms(lat, 99),
                           "join server cpu %": 100 * (cpu_seconds(*pids) - cpu0) / wall,
                           "lost after join": sum(x["counts"].get("connections lost", 0) for x in r)})
            await asyncio.sleep(1.0)  # let the last room:participant / room:updated broadcasts drain

            # Senders: spread over workers (each worker's clients alternate instances).
            per_worker_senders = max(1, args.senders // args.workers)
            n = result["joined"]
            for rate in [float(x) for x in args.rates.split(",")]:
                tag = f"r{rate:g}-{uuid.uuid4().hex[:4]}"
                params = [{"senders": list(range(per_worker_senders)), "per_sender_rate": rate / (per_worker_senders * args.workers),
                           "seconds": args.seconds, "tag": tag, "quiet": 1.0} for _ in range(args.workers)]
                cpu0, wcpu0, t0 = cpu_seconds(*pids), cpu_seconds(*workers.pids), time.monotonic()
                profile(pids[0], f"chat-{rate:g}")
                r = await workers.all("chat", params)
                cpu, wcpu = cpu_seconds(*pids) - cpu0, cpu_seconds(*workers.pids) - wcpu0
                acklat = [v for x in r for v in x["ack_latencies"]]
                sent = sum(x["sent"] for x in r)
                lat = [v for x in r for v in x["latencies"]]
                span = max(x["last_delivery"] for x in r) - min(x["start"] for x in r)
                row = {
                    "offered msg/s": rate, "offered deliveries/s": rate * n, "sent": sent,
                    "delivered/s": len(lat) / span if span > 0 else 0.0,
                    "loss %": 100 * (1 - len(lat) / (sent * n)) if sent else 0.0,
                    "p50 ms": quantile_ms(lat, 50), "p99 ms": quantile_ms(lat, 99), "max ms": max(lat) * 1000 if lat else float("nan"),
                    "server cpu %": 100 * cpu / (time.monotonic() - t0),
                    "cpu us/delivery": 1e6 * cpu / len(lat) if lat else float("nan"),
                    "load gen cpu %": 100 * wcpu / (time.monotonic() - t0),
                    "ack p50 ms": quantile_ms(acklat, 50), "ack p99 ms": quantile_ms(acklat, 99),
                    "acks": {k: sum(x["acks"].get(k, 0) for x in r) for k in {k for x in r for k in x["acks"]}},
                }
                row["lost"] = sum(x["counts"].get("connections lost", 0) for x in r)
                result["chat"].append(row)
                print(f"  {instances} inst {kind} {fanout}: rate {rate:g}/s → {row['delivered/s']:,.0f} deliveries/s, "
                      f"p50 {row['p50 ms']:.0f} ms, p99 {row['p99 ms']:.0f} ms, loss {row['loss %']:.2f}%, "
                      f"server cpu {row['server cpu %']:.0f}% ({row['cpu us/delivery']:.1f} µs/delivery), "
                      f"send ack p50 {row['ack p50 ms']:.0f} ms p99 {row['ack p99 ms']:.0f} ms, load gen cpu {row['load gen cpu %']:.0f}%, "
                      f"connections lost so far {row['lost']}", flush=True)
                if row["p99 ms"] > 2000 or row["loss %"] > 0 or row["lost"]:
                    break
        finally:
            await workers.close()
            await host.disconnect()
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--instances", choices=["1", "2", "both"], default="both")
    parser.add_argument("--client", choices=["sio", "raw", "both"], default="sio")
    parser.add_argument("--fanout", choices=["stock", "fast", "both"], default="both",
                        help="STUDYHALL_FANOUT: stock (python-socketio's emit) or fast (server/fanout.py, the default)")
    parser.add_argument("--rates", default="5,10,20,40")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--join-concurrency", type=int, default=100, help="room:join calls in flight per worker")
    args = parser.parse_args()

    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port(), listen_tcp=True)
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    redis = RedisServer().start()
    results = []
    try:
        for instances in ([1, 2] if args.instances == "both" else [int(args.instances)]):
            for kind, fanout in itertools.product(["sio", "raw"] if args.client == "both" else [args.client],
                                                  ["stock", "fast"] if args.fanout == "both" else [args.fanout]):
                print(f"{instances} instance(s), {kind} clients, {fanout} fan-out, {args.participants} participants", flush=True)
                r = await configuration(instances, kind, fanout, args, database_url, redis.url)
                print(f"  connected {r['connected']} ({r['connects/s']:,.0f}/s); joined {r['joined']} "
                      f"{r['join codes']} at {r['joins/s']:,.0f} joins/s (ack p50 {r['join p50 ms']:.0f} ms, "
                      f"p99 {r['join p99 ms']:.0f} ms, server cpu {r['join server cpu %']:.0f}%, connections lost {r['lost after join']})", flush=True)
                results.append(r)
    finally:
        redis.stop()
        pg.destroy()

    print()
    print("| instances | fan-out | clients | participants | joins/s | offered msg/s | offered deliveries/s | delivered/s "
          "| deliver p50 / p99 ms | send ack p50 / p99 ms | loss | server CPU | server CPU µs/delivery | load gen CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for i, c in enumerate(r["chat"]):
            joins = f"{r['joins/s']:,.0f}" if i == 0 else ""
            print(f"| {r['instances']} | {r['fanout']} | {r['client']} | {r['joined']} | {joins} | {c['offered msg/s']:g} "
                  f"| {c['offered deliveries/s']:,.0f} | {c['delivered/s']:,.0f} | {c['p50 ms']:.0f} / {c['p99 ms']:.0f} "
                  f"| {c['ack p50 ms']:.0f} / {c['ack p99 ms']:.0f} | {c['loss %']:.2f}% | {c['server cpu %']:.0f}% "
                  f"| {c['cpu us/delivery']:.1f} | {c['load gen cpu %']:.0f}% |")


if __name__ == "__main__":
    asyncio.run(main())
