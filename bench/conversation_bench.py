"""One busy conversation, Studyhall beside Node's socket.io in the same run (issue 16).

    .venv/bin/python bench/conversation_bench.py [--members 10,100,1000] [--senders 1,10]
        [--deliveries 500,...,160000,240000,320000] [--seconds 3] [--repeat 1] [--warmup 1] [--workers 2] [--probe]

For each room size N, both servers are up at once and hold N websocket members each:
  studyhall  `studyhall serve` (one process) with PostgreSQL: a mentor's live room, N guests
             joined by `room:join`; every `message:send` is validated, committed with its
             seq, acked and fanned out as `message:new` (the durable path);
  node       Node's socket.io 4.8 with its defaults (bench/node_relay.mjs): every socket is
             in one room; `message:send` is relayed as a `message:new` of the same shape
             and acked. It stores and checks nothing: the yardstick, not a peer in work.
The same load generator drives both (bench/rooms_client.py's raw websocket clients in
`--workers` processes, no permessage-deflate). For each number of senders, a ladder of
offered deliveries/s (N × msg/s, open loop, `--seconds` each) runs on Studyhall and then
on Node at every step; a server's ladder stops once its p99 passes 2 s or it loses a
delivery.

Per step: msg/s acked, deliveries/s (delivered / time from first send to last delivery),
delivery latency p50/p99 (send → `message:new` at every member), CPU of the server
process, of PostgreSQL (postmaster and its backends; Studyhall only) and of the load
generator, as % of one core, µs of server CPU per delivery (PostgreSQL included for
Studyhall), and the CPU of the other side meanwhile (its server, PostgreSQL for Studyhall,
and its idle members' workers: about 0, or the server under test shared its cores). The
summary prints, per N and senders, each server's best step and the ratios
Studyhall / Node: deliveries/s, CPU efficiency (Node µs per delivery / Studyhall's) and
p99 at the highest offered load both passed; then the p99 ratio at every offered load both
ran, marking the steps below both servers' saturation (each kept up: ≥ 95% of the offered
msg/s acked, nothing lost, at that step and every lower one). `--repeat K` runs every step
K times and keeps the run with the median p99 (a 3 s step's p99 is one stall of a shared
machine); `--warmup K` (1) first runs the ladder's first step K times on each server and
keeps none of it; `--probe` prints, under each Studyhall step, the server's own per-step timings
(bench/latency_probe.py: look-up, queue wait, commit, fan-out, outbox flush, loop lag, GC)
and PostgreSQL's WAL fsyncs in that step.

Everything shares the machine's cores (2 here): compare ratios within one run. The disk's
fdatasync time is printed before and after: each message waits for its commit, so a busy
disk lowers msg/s without raising CPU. `--fsync off` takes the disk out (not durable: for
seeing CPU costs only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import postmaster_pid, quantile_ms, start_servers, stop_servers, tree_cpu_seconds, wait_up  # noqa: E402
from bench.rooms_bench import Workers, setup_room  # noqa: E402
from bench.socket_memory_bench import raise_fd_limit, start_node  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import ThrowawayPostgres  # noqa: E402

P99_LIMIT_MS = 2000.0


def fsync_ms(directory: Path, n: int = 50) -> tuple[float, float]:
    """p50 and p90 of one 8 KiB write + fdatasync where PostgreSQL keeps its WAL: each
    Studyhall message waits for one commit, so a busy disk shows up in msg/s, not CPU."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 8192)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[n // 2], times[n * 9 // 10]


class Side:
    """One server under test, its members connected, and what to read its CPU from."""

    def __init__(self, name: str, workers: Workers, server_pid: int, pg_pid: int | None,
                 probe: Path | None = None, database_url: str | None = None) -> None:
        self.name, self.workers, self.server_pid, self.pg_pid = name, workers, server_pid, pg_pid
        self.stopped: set[int] = set()  # sender counts whose ladder ended
        self.probe, self.database_url = probe, database_url  # --probe: bench/latency_probe.py's output

    async def probe_read(self) -> dict[str, Any]:
        """Ask the probed server for its timings since the last call (SIGUSR1), and read them."""
        if self.probe is None:
            return {}
        before = self.probe.stat().st_mtime_ns if self.probe.exists() else 0
        os.kill(self.server_pid, signal.SIGUSR1)
        for _ in range(200):
            if self.probe.exists() and self.probe.stat().st_mtime_ns != before:
                return dict(json.loads(self.probe.read_text()))
            await asyncio.sleep(0.01)
        return {}

    async def wal_io(self) -> dict[str, float]:
        """PostgreSQL's WAL writes and fsyncs so far (pg_stat_io, with track_wal_io_timing)."""
        if self.database_url is None:
            return {}
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow("SELECT sum(writes) AS writes, sum(write_time) AS write_ms, sum(fsyncs) AS fsyncs, "
                                      "sum(fsync_time) AS fsync_ms FROM pg_stat_io WHERE object = 'wal'")
        finally:
            await conn.close()
        return {k: float(v or 0) for k, v in dict(row).items()} if row else {}

    def cpu(self) -> tuple[float, float, float]:
        pg = tree_cpu_seconds(self.pg_pid) if self.pg_pid else 0.0
        workers = sum(tree_cpu_seconds(p) for p in self.workers.pids if p is not None)
        return tree_cpu_seconds(self.server_pid), pg, workers


async def step(side: Side, idle: Side, n: int, senders: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """Offer `rate` msg/s from `senders` members for `args.seconds`; measure. `idle`: the
    other server, up and holding its members meanwhile; its CPU should be about nothing (a
    background loop spinning there once took a core's half from the server under test)."""
    per_worker = max(1, senders // args.workers)
    used = per_worker * args.workers if senders >= args.workers else 1
    tag = f"{side.name[:2]}{rate:g}-{uuid.uuid4().hex[:4]}"
    params = [{"senders": list(range(per_worker)), "per_sender_rate": rate / used, "seconds": args.seconds,
               "tag": tag, "quiet": 1.5} for _ in range(args.workers)]
    if senders < args.workers:  # one sender: only the first worker sends
        params = [{**p, "senders": [] if i else [0]} for i, p in enumerate(params)]
    await side.probe_read()  # forget what came before this step
    wal0 = await side.wal_io()
    (s0, p0, w0), t0, i0 = side.cpu(), time.monotonic(), idle.cpu()
    r = await side.workers.all("chat", params)
    (s1, p1, w1), wall, i1 = side.cpu(), time.monotonic() - t0, idle.cpu()
    probe, wal1 = await side.probe_read(), await side.wal_io()
    lat = [v for x in r for v in x["latencies"]]
    sent = sum(x["sent"] for x in r)
    acked = sum(x["acks"].get("ok", 0) for x in r)
    span = max(x["last_delivery"] for x in r) - min(x["start"] for x in r)
    server_cpu = (s1 - s0) + (p1 - p0)
    row = {
        "server": side.name, "members": n, "senders": used, "offered msg/s": rate, "offered deliveries/s": rate * n,
        "sent": sent, "msg/s": acked / span if span > 0 else 0.0, "deliveries/s": len(lat) / span if span > 0 else 0.0,
        "loss %": 100 * (1 - len(lat) / (sent * n)) if sent else 0.0,
        "p50 ms": quantile_ms(lat, 50), "p99 ms": quantile_ms(lat, 99),
        "server cpu %": 100 * (s1 - s0) / wall, "pg cpu %": 100 * (p1 - p0) / wall, "load gen cpu %": 100 * (w1 - w0) / wall,
        "us/delivery": 1e6 * server_cpu / len(lat) if lat else float("nan"),
        "idle side cpu %": 100 * sum(b - a for a, b in zip(i0, i1, strict=True)) / wall,
        "errors": {k: v for x in r for k, v in x["acks"].items() if k != "ok"},
        "lost": sum(x["counts"].get("connections lost", 0) for x in r),
    }
    print(f"  N={n} senders={used} {side.name:9s} offered {rate:>7,.0f} msg/s → {row['msg/s']:>7,.0f} msg/s, "
          f"{row['deliveries/s']:>8,.0f} deliveries/s, p50 {row['p50 ms']:.1f} ms, p99 {row['p99 ms']:.1f} ms, "
          f"loss {row['loss %']:.2f}%, cpu server {row['server cpu %']:.0f}% pg {row['pg cpu %']:.0f}% "
          f"loadgen {row['load gen cpu %']:.0f}%, {row['us/delivery']:.1f} µs/delivery, "
          f"idle {idle.name} {row['idle side cpu %']:.0f}% {row['errors'] or ''}", flush=True)
    if probe:
        row["probe"] = probe
        print_probe(probe, {k: wal1[k] - wal0.get(k, 0.0) for k in wal1})
    return row


PROBE_STEPS = ("arrival", "queued", "lookup", "queue wait", "commit", "commit+fan-out", "flush wait", "flush", "ack",
               "loop lag", "gc gen0", "gc gen1", "gc gen2")


def print_probe(probe: dict[str, Any], wal: dict[str, float]) -> None:
    """The server's per-step timings of this step (bench/latency_probe.py), p50 / p99 / max ms."""
    parts = [f"{k} {v['p50']:.2f}/{v['p99']:.2f}/{v['max']:.1f}" + (f" n={v['n']}" if k.startswith("gc") else "")
             for k in PROBE_STEPS if (v := probe.get(k))]
    sizes = [f"{k} mean {v['sum'] / v['n']:.1f} max {v['max']:.0f}" for k in ("batch size", "lookup size", "flush sockets")
             if (v := probe.get(k))]
    print("      server ms p50/p99/max: " + "; ".join(parts), flush=True)
    print("      " + "; ".join(sizes) + (f"; WAL fsyncs {wal['fsyncs']:.0f}, {wal['fsync_ms'] / max(1.0, wal['fsyncs']):.2f} ms each"
                                      if wal.get("fsyncs") else ""), flush=True)


def combine(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for `--repeat` runs of a step: the run with the median p99 (its other figures
    with it), the spread of p99 over the runs, and a failure if any run failed."""
    if len(repeats) == 1:
        return {**repeats[0], "p99 runs": [repeats[0]["p99 ms"]]}
    ordered = sorted(repeats, key=lambda r: r["p99 ms"])
    row = dict(ordered[len(ordered) // 2])
    row["p99 runs"] = [r["p99 ms"] for r in repeats]
    failed = [r for r in repeats if not passed(r)]
    if failed:  # a step passes only if every run of it did
        worst = failed[0]
        row.update({k: worst[k] for k in ("loss %", "lost", "errors")}, **{"p99 ms": max(row["p99 ms"], worst["p99 ms"])})
    return row


def saturated(row: dict[str, Any]) -> bool:
    """The server no longer keeps up: under 95% of the offered msg/s acked, or it failed."""
    return not passed(row) or row["msg/s"] < 0.95 * row["offered msg/s"]


def passed(row: dict[str, Any]) -> bool:
    return row["p99 ms"] <= P99_LIMIT_MS and row["loss %"] <= 0 and not row["lost"] and not row["errors"]


async def studyhall_side(n: int, database_url: str, pg_pid: int, args: argparse.Namespace) -> tuple[Side, Any, Any]:
    probe = Path(tempfile.mkdtemp(prefix="studyhall-probe-")) / "probe.json" if args.probe else None
    command = [sys.executable, "-m", "bench.latency_probe", str(probe), "serve"] if probe else None
    procs = start_servers(1, database_url, None, {"STUDYHALL_ROOM_HOST_GRACE": "600"}, command=command)
    url = procs[0][1]
    try:
        await wait_up(url, attempts=1200)  # a busy shared machine: imports and migrations can take a while
        session, tokens, host_token = await setup_room(url, database_url, n)
        host = socketio.AsyncClient(reconnection=False)  # the host stays connected (no host-gone grace)
        await host.connect(url, auth={"token": host_token}, transports=["websocket"], wait_timeout=60)
    except BaseException:
        stop_servers(procs)
        raise
    workers = Workers("raw", args.workers, [(url, t) for t in tokens], session)
    try:
        r = await workers.all("connect", {"concurrency": 50, "timeout": 120.0})
        assert sum(x["connected"] for x in r) == n, r
        for _ in range(5):  # a join refused `unavailable` (the database slow to answer) is asked again
            r = await workers.all("join", {"concurrency": 20})
            if sum(x["codes"].get("ok", 0) for x in r) == n:
                break
        else:
            raise RuntimeError(f"joins failed: {[x['codes'] for x in r]}")
    except BaseException:
        await workers.close()
        await host.disconnect()
        stop_servers(procs)
        raise
    await asyncio.sleep(1.0)  # the joins' room:participant broadcasts drain
    return Side("studyhall", workers, procs[0][0].pid, pg_pid, probe, database_url if probe else None), procs, host


async def node_side(n: int, args: argparse.Namespace) -> tuple[Side, subprocess.Popen[bytes]]:
    proc, url = start_node()
    session = {"id": "", "conversation_id": str(uuid.uuid4())}
    workers = Workers("raw", args.workers, [(url, "-")] * n, session)
    r = await workers.all("connect", {"concurrency": 50, "timeout": 120.0})
    assert sum(x["connected"] for x in r) == n, r
    return Side("node", workers, proc.pid, None), proc


async def room_size(n: int, database_url: str, pg_pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    study, procs, host = await studyhall_side(n, database_url, pg_pid, args)
    try:
        node, node_proc = await node_side(n, args)
    except BaseException:
        await study.workers.close()
        await host.disconnect()
        stop_servers(procs)
        raise
    try:
        for senders in (int(x) for x in args.senders.split(",")):
            first = next((d / n for d in (float(x) for x in args.deliveries.split(",")) if d / n >= args.min_rate), None)
            for side, idle in ((study, node), (node, study)):
                for _ in range(args.warmup if first is not None else 0):  # not kept: caches, plans, pools, the JIT
                    print("  (warm-up, not kept)", end="")
                    await step(side, idle, n, senders, first or 0.0, args)
            for deliveries in (float(x) for x in args.deliveries.split(",")):
                rate = deliveries / n
                if rate < args.min_rate:  # 0.5 msg/s in 3 s is a message or two: no figure
                    continue
                for side, idle in ((study, node), (node, study)):
                    if senders in side.stopped:
                        continue
                    repeats = [await step(side, idle, n, senders, rate, args) for _ in range(args.repeat)]
                    row = combine(repeats)
                    rows.append(row)
                    if not passed(row):
                        side.stopped.add(senders)
                if senders in study.stopped and senders in node.stopped:
                    break
    finally:
        for side in (study, node):
            await side.workers.close()
        await host.disconnect()
        stop_servers(procs)
        node_proc.terminate()
        node_proc.wait()
    return rows


def summary(rows: list[dict[str, Any]]) -> None:
    print()
    print("| members | senders | server | offered msg/s | msg/s | deliveries/s | p50 / p99 ms | loss | server CPU | PostgreSQL CPU "
          "| load gen CPU | µs server CPU / delivery |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['members']:,} | {r['senders']} | {r['server']} | {r['offered msg/s']:,.0f} | {r['msg/s']:,.0f} "
              f"| {r['deliveries/s']:,.0f} | {r['p50 ms']:.1f} / {r['p99 ms']:.1f} | {r['loss %']:.2f}% "
              f"| {r['server cpu %']:.0f}% | {r['pg cpu %']:.0f}% | {r['load gen cpu %']:.0f}% | {r['us/delivery']:.1f} |")
    print()
    print("Best passing step of each (p99 ≤ 2 s, nothing lost); ratios are Studyhall / Node.")
    print("| members | senders | Studyhall deliveries/s (msg/s) | Node deliveries/s (msg/s) | deliveries/s ratio "
          "| µs/delivery Studyhall / Node | CPU efficiency ratio | p99 ms at equal load (offered msg/s) | p99 ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((r["members"], r["senders"]) for r in rows):
        mine = [r for r in rows if (r["members"], r["senders"]) == key]
        best = {s: max((r for r in mine if r["server"] == s and passed(r)), key=lambda r: r["deliveries/s"], default=None)
                for s in ("studyhall", "node")}
        st, nd = best["studyhall"], best["node"]
        if st is None or nd is None:
            print(f"| {key[0]:,} | {key[1]} | {_best(st)} | {_best(nd)} | | | | | |")
            continue
        both = [r["offered msg/s"] for r in mine if r["server"] == "studyhall" and passed(r)
                and any(o["server"] == "node" and o["offered msg/s"] == r["offered msg/s"] and passed(o) for o in mine)]
        equal = max(both) if both else None
        p99 = {s: next(r["p99 ms"] for r in mine if r["server"] == s and r["offered msg/s"] == equal) for s in ("studyhall", "node")} if equal else {}
        print(f"| {key[0]:,} | {key[1]} | {st['deliveries/s']:,.0f} ({st['msg/s']:,.0f}) | {nd['deliveries/s']:,.0f} ({nd['msg/s']:,.0f}) "
              f"| {st['deliveries/s'] / nd['deliveries/s']:.2f}× | {st['us/delivery']:.1f} / {nd['us/delivery']:.1f} "
              f"| {nd['us/delivery'] / st['us/delivery']:.2f}× "
              + (f"| {p99['studyhall']:.1f} vs {p99['node']:.1f} ({equal:,.0f}) | {p99['studyhall'] / p99['node']:.1f}× |" if equal else "| | |"))


def ratios_per_step(rows: list[dict[str, Any]]) -> None:
    """p99 Studyhall / Node at every offered load both servers ran, and which steps lie below
    both servers' saturation (every step up to it kept up with the offer: at least 95% of the
    offered msg/s acked, nothing lost). Issue 16's latency target is about those steps."""
    print()
    print("p99 at each equal offered load (Studyhall / Node); 'below saturation': both servers kept up "
          "at this step and every lower one.")
    print("| members | senders | offered msg/s | Studyhall p50 / p99 ms | Node p50 / p99 ms | p99 runs Studyhall; Node "
          "| p99 ratio | below both saturations |")
    print("|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((r["members"], r["senders"]) for r in rows):
        mine = [r for r in rows if (r["members"], r["senders"]) == key]
        below = True
        for rate in sorted(dict.fromkeys(r["offered msg/s"] for r in mine)):
            st = next((r for r in mine if r["server"] == "studyhall" and r["offered msg/s"] == rate), None)
            nd = next((r for r in mine if r["server"] == "node" and r["offered msg/s"] == rate), None)
            if st is None or nd is None:
                break
            below = below and not saturated(st) and not saturated(nd)
            runs = "; ".join(", ".join(f"{v:.0f}" for v in r.get("p99 runs", [r["p99 ms"]])) for r in (st, nd))
            print(f"| {key[0]:,} | {key[1]} | {rate:,.0f} | {st['p50 ms']:.1f} / {st['p99 ms']:.1f} "
                  f"| {nd['p50 ms']:.1f} / {nd['p99 ms']:.1f} | {runs} | {st['p99 ms'] / nd['p99 ms']:.1f}× "
                  f"| {'yes' if below else 'no'} |")


def _best(row: dict[str, Any] | None) -> str:
    return "none passed" if row is None else f"{row['deliveries/s']:,.0f} ({row['msg/s']:,.0f})"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", default="10,100,1000")
    parser.add_argument("--senders", default="1,10")
    parser.add_argument("--deliveries", default="500,1000,2000,5000,10000,20000,40000,80000,160000,240000,320000",
                        help="the ladder of offered deliveries/s (msg/s × members); past 160,000 since both servers "
                             "passed it at N=100 (issue 16: find each server's saturation)")
    parser.add_argument("--min-rate", type=float, default=5,
                        help="skip ladder steps below this many msg/s (N=1,000 starts at 5,000 deliveries/s)")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each step this many times; the row is the run with the median p99 (all p99s are "
                             "printed): one stall of a shared machine is the p99 of a short step")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unkept runs of the first step on each server before the ladder: the first run of a "
                             "fresh server had the highest p99 of five, on both servers")
    parser.add_argument("--fsync", choices=["on", "off"], default="on",
                        help="off: PostgreSQL without fsync, to see CPU costs when the disk is slow (not durable: say so)")
    parser.add_argument("--probe", action="store_true",
                        help="time each step of the message path inside the server (bench/latency_probe.py) and "
                             "PostgreSQL's WAL fsyncs, printed under each Studyhall step")
    args = parser.parse_args()
    raise_fd_limit()

    kind = EmbeddedPostgres if args.fsync == "on" else ThrowawayPostgres
    pg = kind(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port(), listen_tcp=True)
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    pg_pid = postmaster_pid(pg)
    if args.probe:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("ALTER SYSTEM SET track_wal_io_timing = on")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
    rows: list[dict[str, Any]] = []
    disk = [fsync_ms(pg.data_dir)]
    print(f"disk: 8 KiB write + fdatasync p50 {disk[0][0]:.2f} ms, p90 {disk[0][1]:.2f} ms", flush=True)
    try:
        for n in (int(x) for x in args.members.split(",")):
            print(f"{n} members (load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
            try:
                rows += await room_size(n, database_url, pg_pid, args)
            except Exception as exc:  # keep what the other sizes measured
                print(f"  N={n} not measured: {exc!r}"[:500], flush=True)
        disk.append(fsync_ms(pg.data_dir))
    finally:
        pg.destroy()
    summary(rows)
    ratios_per_step(rows)
    print(f"\nload average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")
    print(f"\ndisk (PostgreSQL's data directory), 8 KiB write + fdatasync: before p50 {disk[0][0]:.2f} ms / p90 {disk[0][1]:.2f} ms"
          + (f", after p50 {disk[1][0]:.2f} ms / p90 {disk[1][1]:.2f} ms" if len(disk) > 1 else ""))


if __name__ == "__main__":
    asyncio.run(main())
