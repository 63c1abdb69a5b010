"""Message throughput and latency through real Socket.IO clients.

    .venv/bin/python bench/threads_bench.py [--seconds 8] [--scenario direct|group|all] [--instances 1|2|both]

Starts its own PostgreSQL (embedded) and Redis, runs `studyhall serve` as separate
processes (one, or two sharing Redis), and drives them from this process with
python-socketio clients:

  (a) 200 clients in 100 direct threads;  (b) one group of 100 members.

For each: the closed-loop maximum (every client sends, waits for its ack, sends again)
giving messages acked/s and deliveries/s, then an open-loop run at half that rate giving
send→deliver latency p50/p99. The load generator shares the machine's 2 cores with the
servers and PostgreSQL, so figures are lower bounds for a real deployment; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import start_servers, stop_servers, wait_up  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import RedisServer  # noqa: E402


@dataclass
class Stats:
    acked: int = 0
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Client:
    user_id: str
    token: str
    sio: socketio.AsyncClient
    conversation_id: str = ""


async def make_clients(urls: list[str], count: int) -> list[Client]:
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as s:
        async def register(i: int) -> tuple[str, str]:
            async with sem:
                body = {"email": f"b{i}-{uuid.uuid4().hex[:6]}@example.com", "password": "benchmark-pw", "name": f"B{i}"}
                async with s.post(urls[0] + "/api/auth/register", json=body) as r:
                    data = await r.json()
                    return data["user"]["id"], data["token"]
        creds = await asyncio.gather(*(register(i) for i in range(count)))
    clients = []
    for i, (uid, token) in enumerate(creds):
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(urls[i % len(urls)], auth={"token": token}, transports=["websocket"], wait_timeout=10)
        clients.append(Client(uid, token, sio))
    return clients


def attach_receivers(clients: list[Client], stats: Stats, phase: list[str]) -> None:
    for c in clients:
        async def on_new(data: dict, c: Client = c) -> None:
            m = data["message"]
            cid = m.get("client_id") or ""
            if not cid.startswith(phase[0]):
                return
            stats.delivered += 1
            sent_at = float(cid.split("|")[1])
            stats.latencies.append(time.time() - sent_at)
        c.sio.on("message:new", on_new)


async def closed_loop(clients: list[Client], seconds: float, stats: Stats, phase: str) -> None:
    deadline = time.monotonic() + seconds

    async def run(c: Client) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            ack = await c.sio.call("message:send", {"conversation_id": c.conversation_id, "content": "benchmark message",
                                                    "client_id": f"{phase}{n}-{c.user_id[:8]}|{time.time()}"}, timeout=30)
            if ack.get("ok"):
                stats.acked += 1
    await asyncio.gather(*(run(c) for c in clients))


async def open_loop(clients: list[Client], seconds: float, rate: float, stats: Stats, phase: str) -> None:
    per_client = rate / len(clients)
    deadline = time.monotonic() + seconds

    async def run(c: Client) -> None:
        n = 0
        await asyncio.sleep(random.random() / per_client)
        pending = set()
        while time.monotonic() < deadline:
            n += 1
            payload = {"conversation_id": c.conversation_id, "content": "benchmark message",
                       "client_id": f"{phase}{n}-{c.user_id[:8]}|{time.time()}"}
            t = asyncio.create_task(c.sio.call("message:send", payload, timeout=30))
            pending.add(t)
            t.add_done_callback(pending.discard)
            await asyncio.sleep(random.expovariate(per_client))
        for t in list(pending):
            try:
                if (await t).get("ok"):
                    stats.acked += 1
            except Exception:
                pass
    await asyncio.gather(*(run(c) for c in clients))


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of processes (and this one when pid is 0), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


async def scenario(name: str, urls: list[str], seconds: float, server_pids: list[int]) -> dict:
    if name == "direct":
        clients = await make_clients(urls, 200)
        for a, b in zip(clients[0::2], clients[1::2]):
            ack = await a.sio.call("conversation:create", {"kind": "direct", "member_ids": [b.user_id]})
            a.conversation_id = b.conversation_id = ack["conversation"]["id"]
    else:
        clients = await make_clients(urls, 100)
        ack = await clients[0].sio.call("conversation:create", {"kind": "group", "member_ids": [c.user_id for c in clients[1:]]})
        for c in clients:
            c.conversation_id = ack["conversation"]["id"]
    phase = ["max-"]
    peak = Stats()
    attach_receivers(clients, peak, phase)
    started = time.monotonic()
    cpu_server, cpu_client = cpu_seconds(server_pids), cpu_seconds([0])
    if os.environ.get("BENCH_PROFILE"):  # e.g. BENCH_PROFILE=/tmp/profile.txt: py-spy on the first server
        subprocess.Popen(["py-spy", "record", "--pid", str(server_pids[0]), "--duration", str(int(seconds)),
                          "--format", "raw", "--output", os.environ["BENCH_PROFILE"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await closed_loop(clients, seconds, peak, "max-")
    cpu_server, cpu_client = cpu_seconds(server_pids) - cpu_server, cpu_seconds([0]) - cpu_client
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    acked_rate = peak.acked / seconds
    deliveries_rate = peak.delivered / elapsed
    steady = Stats()
    phase[0] = "half-"
    for c in clients:
        c.sio.handlers["/"].pop("message:new", None)
    attach_receivers(clients, steady, phase)
    await open_loop(clients, seconds, acked_rate / 2, steady, "half-")
    await asyncio.sleep(1.0)
    for c in clients:
        await c.sio.disconnect()
    return {
        "acked/s": acked_rate, "deliveries/s": deliveries_rate,
        "max p50 ms": pct(peak.latencies, 50), "max p99 ms": pct(peak.latencies, 99),
        "half rate": acked_rate / 2, "half p50 ms": pct(steady.latencies, 50), "half p99 ms": pct(steady.latencies, 99),
        "half deliveries/s": steady.delivered / seconds,
        "server cpu %": 100 * cpu_server / seconds, "load-generator cpu %": 100 * cpu_client / seconds,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--scenario", choices=["direct", "group", "all"], default="all")
    parser.add_argument("--instances", choices=["1", "2", "both"], default="both")
    args = parser.parse_args()
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port(), listen_tcp=os.environ.get("BENCH_PG_TCP") == "1")
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    redis = RedisServer().start()
    rows = []
    try:
        for instances in ([1, 2] if args.instances == "both" else [int(args.instances)]):
            for name in (["direct", "group"] if args.scenario == "all" else [args.scenario]):
                procs = start_servers(instances, database_url, redis.url if instances > 1 else None,
                                      {"STUDYHALL_REDIS_CHANNEL": "bench"})
                try:
                    for _, url in procs:
                        await wait_up(url)
                    result = await scenario(name, [u for _, u in procs], args.seconds, [p.pid for p, _ in procs])
                finally:
                    stop_servers(procs)
                rows.append((instances, name, result))
                print(f"{instances} instance(s), {name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in result.items()), flush=True)
    finally:
        redis.stop()
        pg.destroy()
    print()
    print("| instances | scenario | acked msg/s | deliveries/s | p50 / p99 ms at max | offered (half) msg/s | p50 / p99 ms at half | CPU server / load gen |")
    print("|---|---|---|---|---|---|---|---|")
    for instances, name, r in rows:
        print(f"| {instances} | {name} | {r['acked/s']:,.0f} | {r['deliveries/s']:,.0f} | {r['max p50 ms']:.1f} / {r['max p99 ms']:.1f} "
              f"| {r['half rate']:,.0f} | {r['half p50 ms']:.1f} / {r['half p99 ms']:.1f} "
              f"| {r['server cpu %']:.0f}% / {r['load-generator cpu %']:.0f}% |")


if __name__ == "__main__":
    asyncio.run(main())
