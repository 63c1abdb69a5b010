"""Message throughput and latency through real Socket.IO clients.

    .venv/bin/python bench/threads_bench.py [--seconds 8] [--scenario direct|group|all]
        [--instances 1|2|both] [--client node|python|both] [--warmup 0]

Starts its own PostgreSQL (embedded) and Redis, runs `studyhall serve` as separate
processes (one, or two sharing Redis, clients alternating between them), and measures

  (a) 200 clients in 100 direct threads;  (b) one group of 100 members.

For each: the closed-loop maximum (every client sends, waits for its ack, sends again)
giving messages acked/s and deliveries/s, then an open-loop run at half that rate giving
send→deliver latency p50/p99. `--warmup S` runs S seconds of unmeasured closed loop first.

Users are registered over HTTP and conversations created over Socket.IO from this
process; the load itself comes from `bench/threads_load.mjs`, a Node.js process of
official socket.io-client clients (`--client node`, the default). Why Node: the machine
has 2 cores shared by the servers, PostgreSQL and the load generator, and python-socketio
clients cost ~0.4 ms of CPU per message, so a Python load generator measures itself as
much as the server. `--client python` keeps the python-socketio load generator (in this
process) for comparison; `--client both` runs each configuration with both.

CPU columns cover the closed loop: the servers and PostgreSQL (from /proc) and the load
generator (its own report for Node, /proc/self for Python). Figures are still lower
bounds for a real deployment, where the database and the clients have cores of their own.

Webhooks: `--webhook` adds one endpoint subscribed to message.created, its receiver a
process of its own (`--receiver python`, the default, reports the lag; `--receiver nginx`
answers 204 for almost no CPU, standing for a receiver on a machine of its own).
`--pairs N` runs N interleaved rounds without and with the endpoint (ABAB...) and prints
the median and spread of acked msg/s, each pair's change, and the server's and
PostgreSQL's CPU ms per acked message: what the endpoint costs, which one pair on a shared
machine cannot say. BENCH_WEBHOOK_SQL runs an SQL statement once the endpoint exists (an
experiment, e.g. a trigger disabled).

BENCH_PROFILE=/tmp/profile.txt records the first server with py-spy over the closed loop;
BENCH_PG_TCP=1 connects the servers to PostgreSQL over loopback TCP instead of its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from math import nan
from pathlib import Path

import aiohttp
import asyncpg
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import webhooks_bench  # noqa: E402
from bench.harness import TICK, cpu_seconds, py_spy, quantile_ms, start_servers, stop_servers, wait_up  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import RedisServer  # noqa: E402

LOAD_SCRIPT = ROOT / "bench" / "threads_load.mjs"


@dataclass
class User:
    user_id: str
    token: str
    url: str  # the instance this user's client connects to
    conversation_id: str = ""


# --- setup: users and conversations ------------------------------------------------------

async def register_users(urls: list[str], count: int) -> list[User]:
    """Register `count` users over HTTP; user i will connect to urls[i % len(urls)]."""
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as s:
        async def register(i: int) -> User:
            async with sem:
                body = {"email": f"b{i}-{uuid.uuid4().hex[:6]}@example.com", "password": "benchmark-pw", "name": f"B{i}"}
                async with s.post(urls[0] + "/api/auth/register", json=body) as r:
                    data = await r.json()
                    return User(data["user"]["id"], data["token"], urls[i % len(urls)])
        return list(await asyncio.gather(*(register(i) for i in range(count))))


async def create_conversation(creator: User, kind: str, members: list[User]) -> str:
    """Create a conversation through a short-lived python-socketio client of `creator`."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(creator.url, auth={"token": creator.token}, transports=["websocket"], wait_timeout=10)
    try:
        ack = await sio.call("conversation:create", {"kind": kind, "member_ids": [m.user_id for m in members]})
    finally:
        await sio.disconnect()
    return ack["conversation"]["id"]


async def setup(name: str, urls: list[str]) -> list[User]:
    """(a) 200 users paired into 100 direct threads, or (b) 100 users in one group."""
    if name == "direct":
        users = await register_users(urls, 200)
        for a, b in zip(users[0::2], users[1::2]):
            a.conversation_id = b.conversation_id = await create_conversation(a, "direct", [b])
    else:
        users = await register_users(urls, 100)
        conversation_id = await create_conversation(users[0], "group", users[1:])
        for u in users:
            u.conversation_id = conversation_id
    return users


# --- CPU over the closed-loop window -----------------------------------------------------

def postgres_cpu(pgdata: Path) -> dict[int, float]:
    """CPU seconds by pid of the PostgreSQL processes (`comm` postgres, running as another
    user). Only our cluster's when its postmaster (started with -D pgdata) is found, since
    the machine may run other PostgreSQL servers; otherwise every postgres process."""
    procs: dict[int, tuple[int, bytes, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # vanished meanwhile
            continue
        procs[int(entry.name)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / TICK)
    postmaster = next((pid for pid, (_, cmdline, _) in procs.items() if str(pgdata).encode() in cmdline), None)
    return {pid: cpu for pid, (ppid, _, cpu) in procs.items() if postmaster is None or postmaster in (pid, ppid)}


class CpuWindow:
    """CPU used by the servers, PostgreSQL and this process between start() and stop()."""

    def __init__(self, server_pids: list[int], pgdata: Path, seconds: float, profile: bool = True) -> None:
        self.server_pids, self.pgdata, self.seconds, self.profile = server_pids, pgdata, seconds, profile

    def start(self) -> None:
        self.server = cpu_seconds(*self.server_pids)
        self.postgres = postgres_cpu(self.pgdata)
        self.me = cpu_seconds("self")
        if self.profile and os.environ.get("BENCH_PROFILE"):  # e.g. BENCH_PROFILE=/tmp/profile.txt: py-spy on the first server
            py_spy(self.server_pids[0], self.seconds, os.environ["BENCH_PROFILE"])

    def stop(self) -> None:
        self.server = cpu_seconds(*self.server_pids) - self.server
        # A backend born in the window (the servers' pools grow under load) counts whole;
        # one that ended in it is missed.
        before = self.postgres
        self.postgres = sum(cpu - before.get(pid, 0.0) for pid, cpu in postgres_cpu(self.pgdata).items())
        self.me = cpu_seconds("self") - self.me


# --- load generator: Node.js (bench/threads_load.mjs) ------------------------------------

async def load_node(users: list[User], seconds: float, warmup: float, cpu: CpuWindow) -> dict:
    half_cpu = CpuWindow(cpu.server_pids, cpu.pgdata, seconds, profile=False)
    node = shutil.which("node")
    assert node, "main() checks for node"
    config = {"clients": [{"url": u.url, "token": u.token, "conversation_id": u.conversation_id} for u in users],
              "seconds": seconds, "half_seconds": seconds, "warmup_seconds": warmup}
    proc = await asyncio.create_subprocess_exec(node, str(LOAD_SCRIPT), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)  # stderr: ours
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps(config).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    out = None
    async for line in proc.stdout:  # phase markers as they happen, then the result
        msg = json.loads(line)
        if msg.get("phase") == "closed-start":
            cpu.start()
        elif msg.get("phase") == "closed-end":
            cpu.stop()
        elif msg.get("phase") == "open-start":
            half_cpu.start()
        elif msg.get("phase") == "open-end":
            half_cpu.stop()
        else:
            out = msg
    if await proc.wait() != 0 or out is None:
        raise RuntimeError(f"{LOAD_SCRIPT.name} failed (exit code {proc.returncode}); see its stderr above")
    def ms(key: str) -> float:  # null when there were no latencies
        return float("nan") if out[key] is None else out[key]
    return {
        "acked/s": out["acked_rate"], "deliveries/s": out["deliveries_rate"],
        "max p50 ms": ms("max_p50_ms"), "max p99 ms": ms("max_p99_ms"),
        "half rate": out["half_rate"], "half p50 ms": ms("half_p50_ms"), "half p99 ms": ms("half_p99_ms"),
        "half deliveries/s": out["half_deliveries_rate"],
        "server cpu %": 100 * cpu.server / seconds, "postgres cpu %": 100 * cpu.postgres / seconds,
        "load-generator cpu %": out["cpu_closed_pct"],
        "half server cpu %": 100 * half_cpu.server / seconds, "half postgres cpu %": 100 * half_cpu.postgres / seconds,
        "half load-generator cpu %": out["cpu_open_pct"],
        "errors": out["errors"], "first error": out["first_error"],
    }


# --- load generator: python-socketio clients in this process -----------------------------

@dataclass
class Stats:
    acked: int = 0
    delivered: int = 0
    errors: int = 0
    first_error: object = None
    latencies: list[float] = field(default_factory=list)

    def error(self, what: object) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


@dataclass
class Client:
    user: User
    sio: socketio.AsyncClient


def attach_receivers(clients: list[Client], stats: Stats, phase: list[str]) -> None:
    for c in clients:
        async def on_new(data: dict) -> None:
            m = data["message"]
            cid = m.get("client_id") or ""
            if not cid.startswith(phase[0]):
                return
            stats.delivered += 1
            sent_at = float(cid.split("|")[1])
            stats.latencies.append(time.time() - sent_at)
        c.sio.on("message:new", on_new)


async def send(c: Client, phase: str, n: int, stats: Stats) -> None:
    payload = {"conversation_id": c.user.conversation_id, "content": "benchmark message",
               "client_id": f"{phase}{n}-{c.user.user_id[:8]}|{time.time()}"}
    try:
        ack = await c.sio.call("message:send", payload, timeout=30)
    except Exception as exc:  # socketio.exceptions.TimeoutError, mostly
        stats.error(repr(exc))
        return
    if ack.get("ok"):
        stats.acked += 1
    else:
        stats.error(ack)


async def closed_loop(clients: list[Client], seconds: float, stats: Stats, phase: str) -> None:
    deadline = time.monotonic() + seconds

    async def run(c: Client) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await send(c, phase, n, stats)
    await asyncio.gather(*(run(c) for c in clients))


async def open_loop(clients: list[Client], seconds: float, rate: float, stats: Stats, phase: str) -> None:
    per_client = rate / len(clients)
    deadline = time.monotonic() + seconds

    async def run(c: Client) -> None:
        n = 0
        await asyncio.sleep(random.random() / per_client)
        pending = []
        while time.monotonic() < deadline:
            n += 1
            pending.append(asyncio.create_task(send(c, phase, n, stats)))
            await asyncio.sleep(random.expovariate(per_client))
        await asyncio.gather(*pending)
    await asyncio.gather(*(run(c) for c in clients))


async def load_python(users: list[User], seconds: float, warmup: float, cpu: CpuWindow) -> dict:
    clients = []
    for u in users:
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(u.url, auth={"token": u.token}, transports=["websocket"], wait_timeout=10)
        clients.append(Client(u, sio))
    phase = ["max-"]
    peak = Stats()
    attach_receivers(clients, peak, phase)
    if warmup > 0:  # not counted: only "max-" messages are
        await closed_loop(clients, warmup, Stats(), "warm-")
        await asyncio.sleep(1.0)
    started = time.monotonic()
    cpu.start()
    await closed_loop(clients, seconds, peak, "max-")
    cpu.stop()
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    acked_rate = peak.acked / seconds
    deliveries_rate = peak.delivered / elapsed
    steady = Stats()
    phase[0] = "half-"
    for c in clients:
        c.sio.handlers["/"].pop("message:new", None)
    attach_receivers(clients, steady, phase)
    if acked_rate > 0:
        await open_loop(clients, seconds, acked_rate / 2, steady, "half-")
        await asyncio.sleep(1.0)
    for c in clients:
        await c.sio.disconnect()
    return {
        "acked/s": acked_rate, "deliveries/s": deliveries_rate,
        "max p50 ms": quantile_ms(peak.latencies, 50), "max p99 ms": quantile_ms(peak.latencies, 99),
        "half rate": acked_rate / 2, "half p50 ms": quantile_ms(steady.latencies, 50), "half p99 ms": quantile_ms(steady.latencies, 99),
        "half deliveries/s": steady.delivered / seconds,
        "server cpu %": 100 * cpu.server / seconds, "postgres cpu %": 100 * cpu.postgres / seconds,
        "load-generator cpu %": 100 * cpu.me / seconds,
        "errors": peak.errors + steady.errors, "first error": peak.first_error or steady.first_error,
    }


# --- one configuration, and interleaved pairs with and without a webhook endpoint --------

def make_sink(args: argparse.Namespace) -> webhooks_bench.SinkProcess | webhooks_bench.NginxSink:
    if args.receiver == "nginx":
        return webhooks_bench.NginxSink()
    return webhooks_bench.SinkProcess(args.receiver_nice, args.receiver_cpu)


async def run_once(args: argparse.Namespace, instances: int, name: str, loader, database_url: str,  # type: ignore[no-untyped-def]
                   redis: RedisServer, pgdata: Path, webhook: bool) -> tuple[dict, dict | None]:
    """One run: fresh servers (and receiver), setup, the load; prints its line. Returns the
    load's figures and the receiver's (None without an endpoint). The servers get the same
    environment either way, so a pair differs only in the endpoint."""
    procs = start_servers(instances, database_url, redis.url if instances > 1 else None,
                          {"STUDYHALL_REDIS_CHANNEL": "bench", **webhooks_bench.SERVER_ENV})
    sink = await make_sink(args).start() if webhook else None
    got = None
    endpoint_id = None
    try:
        for _, url in procs:
            await wait_up(url)
        if sink is not None:
            endpoint_id = await webhooks_bench.add_endpoint(database_url, sink.url)
            if os.environ.get("BENCH_WEBHOOK_SQL"):  # an experiment's change, e.g. a trigger disabled
                conn = await asyncpg.connect(database_url)
                await conn.execute(os.environ["BENCH_WEBHOOK_SQL"])
                await conn.close()
        await asyncio.sleep(1.5)  # every instance hears of the endpoint (both kinds of run wait alike)
        users = await setup(name, [u for _, u in procs])
        cpu = CpuWindow([p.pid for p, _ in procs], pgdata, args.seconds)
        result = await loader(users, args.seconds, args.warmup, cpu)
        result["server cpu ms/acked"] = 1000 * cpu.server / max(1.0, result["acked/s"] * args.seconds)
        result["postgres cpu ms/acked"] = 1000 * cpu.postgres / max(1.0, result["acked/s"] * args.seconds)
    finally:
        stop_servers(procs)
        if sink is not None:
            got = sink.stop()
            print(f"webhooks ({sink.describe()}): {got['delivered']:,} message.created delivered "
                  f"over {got['connections']} connection(s), lag p50 / p99 "
                  f"{got['lag p50 ms'] or nan:.0f} / {got['lag p99 ms'] or nan:.0f} ms, "
                  f"receiver CPU {got['cpu s']:.2f} s", flush=True)
        if endpoint_id is not None:  # the next run of a pair has no endpoint, and no backlog
            conn = await asyncpg.connect(database_url)
            await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", uuid.UUID(endpoint_id))
            # The endpoint's deliveries go with it (ON DELETE CASCADE); the batches of
            # messages not yet expanded (migration 0020) name it in an array and would be
            # expanded, to nothing, by the next run's delivery loop, which is work the
            # run without an endpoint would pay for. The bench owns this database.
            # And the dead rows are reclaimed now, not by autovacuum during the next run.
            # (A base before migration 0020 has no batches table.)
            tables = ["webhook_deliveries"]
            if await conn.fetchval("SELECT to_regclass('webhook_message_batches') IS NOT NULL"):
                await conn.execute("DELETE FROM webhook_message_batches")
                tables.append("webhook_message_batches")
            await conn.execute(f"VACUUM {', '.join(tables)}")
            await conn.close()
    first_error = result.pop("first error")
    print(f"{instances} instance(s), {name}{', webhook' if webhook else ''}: "
          + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:,.3f}" for k, v in result.items())
          + (f" (first error: {first_error})" if first_error is not None else ""), flush=True)
    return result, got


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.3f} (min {min(values):,.3f}, max {max(values):,.3f})"


async def webhook_pairs(args: argparse.Namespace, database_url: str, redis: RedisServer, pgdata: Path,  # type: ignore[no-untyped-def]
                        loader) -> None:
    """`--pairs N`: N rounds of (no endpoint, endpoint), interleaved ABAB..., then medians
    and spread: the acked msg/s of each kind, each pair's change, and CPU per acked message
    of the servers and of PostgreSQL. One pair says little on a shared machine; the median
    of many interleaved ones says what the endpoint costs."""
    instances = 1 if args.instances == "both" else int(args.instances)
    name = "direct" if args.scenario == "all" else args.scenario
    runs: dict[bool, list[dict]] = {False: [], True: []}
    receivers: list[dict] = []
    for i in range(args.pairs):
        for webhook in (False, True):
            load = os.getloadavg()[0]
            print(f"-- pair {i + 1}/{args.pairs}, {'endpoint' if webhook else 'none'}, "
                  f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load {load:.1f}", flush=True)
            result, got = await run_once(args, instances, name, loader, database_url, redis, pgdata, webhook)
            result["load"] = load
            runs[webhook].append(result)
            if got is not None:
                receivers.append(got)
    none, hook = runs[False], runs[True]
    changes = [100 * (h["acked/s"] / n["acked/s"] - 1) for n, h in zip(none, hook, strict=True)]
    print()
    print(f"{args.pairs} pairs, {name}, {instances} instance(s), receiver {args.receiver}:")
    for label, rs in (("none", none), ("endpoint", hook)):
        print(f"  {label:8} acked msg/s {spread([r['acked/s'] for r in rs])}; "
              f"server CPU ms/acked {spread([r['server cpu ms/acked'] for r in rs])}; "
              f"PostgreSQL CPU ms/acked {spread([r['postgres cpu ms/acked'] for r in rs])}")
    print(f"  per pair, endpoint vs none: {', '.join(f'{c:+.0f}%' for c in changes)}; "
          f"median {statistics.median(changes):+.1f}% (min {min(changes):+.0f}%, max {max(changes):+.0f}%)")
    print(f"  medians: endpoint vs none {100 * (statistics.median(r['acked/s'] for r in hook) / statistics.median(r['acked/s'] for r in none) - 1):+.1f}%")
    print(f"  receiver: {spread([r['delivered'] for r in receivers])} delivered, "
          f"CPU s {spread([r['cpu s'] for r in receivers])}")


# --- main --------------------------------------------------------------------------------

async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--scenario", choices=["direct", "group", "all"], default="all")
    parser.add_argument("--instances", choices=["1", "2", "both"], default="both")
    parser.add_argument("--warmup", type=float, default=0,
                        help="seconds of closed loop, not measured, before the measured one")
    parser.add_argument("--client", choices=["node", "python", "both"], default="node",
                        help="load generator: Node.js socket.io-client (default) or python-socketio")
    parser.add_argument("--webhook", action="store_true",
                        help="one endpoint subscribed to message.created, its receiver a process of its own (bench/webhooks_bench.py)")
    parser.add_argument("--receiver-nice", type=int, default=None,
                        help="with --webhook: run the receiver at this niceness (19: only spare CPU)")
    parser.add_argument("--receiver", choices=["python", "nginx"], default="python",
                        help="with --webhook or --pairs: the receiver, a Python aiohttp process (default; its lag is reported) "
                             "or nginx answering 204 (almost no CPU: a receiver elsewhere)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="N interleaved runs without and with an endpoint (ABAB...), then medians and spread")
    parser.add_argument("--receiver-cpu", type=float, default=None,
                        help="with --webhook: cap the receiver at this %% of one CPU (a cgroup; needs root)")
    args = parser.parse_args()
    loaders = {"node": load_node, "python": load_python}
    client_kinds = ["node", "python"] if args.client == "both" else [args.client]
    if "node" in client_kinds and not shutil.which("node"):
        parser.error("`node` not found on PATH (needed for --client node); install Node.js 18+ or use --client python")
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port(), listen_tcp=os.environ.get("BENCH_PG_TCP") == "1")
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    redis = RedisServer().start()
    rows = []
    try:
        if args.pairs:
            await webhook_pairs(args, database_url, redis, pg.pgdata, loaders[client_kinds[0]])
            return
        for instances in ([1, 2] if args.instances == "both" else [int(args.instances)]):
            for name in (["direct", "group"] if args.scenario == "all" else [args.scenario]):
                for kind in client_kinds:
                    result, _ = await run_once(args, instances, name, loaders[kind], database_url, redis, pg.pgdata,
                                               args.webhook)
                    rows.append((instances, name, kind, result))
    finally:
        redis.stop()
        pg.destroy()
    print()
    print("| instances | scenario | load gen | acked msg/s | deliveries/s | p50 / p99 ms at max | offered (half) msg/s "
          "| p50 / p99 ms at half | CPU server / load gen / PostgreSQL at max | at half |")
    print("|---|---|---|---|---|---|---|---|---|")
    for instances, name, kind, r in rows:
        print(f"| {instances} | {name} | {kind} | {r['acked/s']:,.0f} | {r['deliveries/s']:,.0f} "
              f"| {r['max p50 ms']:.1f} / {r['max p99 ms']:.1f} "
              f"| {r['half rate']:,.0f} | {r['half p50 ms']:.1f} / {r['half p99 ms']:.1f} "
              f"| {r['server cpu %']:.0f}% / {r['load-generator cpu %']:.0f}% / {r['postgres cpu %']:.0f}% "
              f"| {r.get('half server cpu %', nan):.0f}% / {r.get('half load-generator cpu %', nan):.0f}% / {r.get('half postgres cpu %', nan):.0f}% |")


if __name__ == "__main__":
    asyncio.run(main())
