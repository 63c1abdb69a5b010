"""What each instance receives from Redis, per message, with per-room channels and without.

    .venv/bin/python bench/cluster_bench.py [--conversations 30] [--messages 40] [--idle 20]
        [--modes single,room] [--group 0] [--redis single|cluster]
    .venv/bin/python bench/cluster_bench.py --conversations 0 --group 40 --modes room-users,room

Starts its own PostgreSQL (embedded) and Redis, then for each mode four `studyhall serve`
processes sharing them. Modes: `single` (STUDYHALL_REDIS_CHANNELS=single: python-socketio's
one channel that every instance hears); `room` (per-room sharded channels, server/
roomchannels.py, and each group fans out through its own room, handlers/grouprooms.py);
`room-users` (room channels, but groups fan out to each member's own room as before
STUDYHALL_GROUP_ROOMS existed: past STUDYHALL_REDIS_ROOM_EMIT_LIMIT members, once on the
global channel). Conversations are direct threads whose two members sit on two of the
first three instances (pairs 1-2, 2-3, 3-1); the fourth instance holds `--idle` connected
users who are in none of them (an instance with no member of any conversation). `--group N`
adds one group of N members spread over instances 1 and 2 only; two of them send its
`--messages`, in turns (or each half at the same time, `--concurrent`). The group is measured as it is after its first seconds
(STUDYHALL_GROUP_ROOM_SETTLE=0; the load starts a second after it is created).

The load: each conversation's members take turns sending `--messages` messages, waiting
for each ack (python-socketio clients in this process, all conversations at once). Then,
per instance, from its /metrics (`studyhall_redis_*`) and /proc/<pid>/stat:

  events and bytes received from Redis per message sent (probes excluded), how many of
  those events were delivered to a local socket, ignored (no local recipient) or its own
  echo, and the CPU the instance used over the load, in total and per message sent.

For the group, every member also records when each of its `message:new` arrived: a seq that
jumps (one below it missing) is a hole, which across instances usually fills by itself (a
message from the other instance came through Redis after the next local one). The report
gives holes per message per member and how long each took to fill (p50, p99, max): the
pages wait `GAP_GRACE_MS` (static/js/timeline.js) for a hole before they `sync`.

The fourth instance's figures are the point: with one channel it receives every event and
spends CPU on each; with room channels it receives nothing for these conversations. The
machine's two cores are shared by the four instances, PostgreSQL, Redis and the clients:
compare ratios within one run.

`--redis cluster` runs the same on a real 3-master Redis Cluster on loopback
(`REDIS_URL=redis+cluster://...`, tests/services.py `RedisCluster`) and adds, per mode,
the PUBLISH and SPUBLISH calls each Cluster node served (INFO commandstats): with room
channels the publishes spread over the nodes by slot.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_seconds, start_servers, stop_servers, wait_up  # noqa: E402
from bench.threads_bench import User, register_users  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import RedisCluster, RedisServer  # noqa: E402

INSTANCES = 4
MODES = {  # what each mode sets in the instances' environment
    "single": {"STUDYHALL_REDIS_CHANNELS": "single"},
    "room": {"STUDYHALL_REDIS_CHANNELS": "room", "STUDYHALL_GROUP_ROOMS": "1"},
    "room-users": {"STUDYHALL_REDIS_CHANNELS": "room", "STUDYHALL_GROUP_ROOMS": "0"},
}
PAIRS = ((0, 1), (1, 2), (2, 0))  # conversations never touch the fourth instance


@dataclass
class InstanceFigures:
    events: float
    bytes: float
    delivered: float
    ignored: float
    own: float
    cpu_s: float


@dataclass
class HoleFigures:
    holes: int  # seq jumps seen, summed over members
    fills_ms: list[float]  # how long each missing seq took to arrive, sorted
    unfilled: int  # missing seqs that never arrived live


def hole_figures(arrivals: list[list[tuple[float, int]]], after: int | None = None) -> HoleFigures:
    """Holes in each member's live stream (arrival time, seq), and when each missing seq came.
    `after`: the last seq before the streams began (default: each stream's first seq - 1)."""
    holes, fills, unfilled = 0, [], 0
    for stream in arrivals:
        held: set[int] = set()
        missing: dict[int, float] = {}  # seq -> when its hole opened
        contiguous = after if after is not None else min((seq for _, seq in stream), default=1) - 1
        for at, seq in stream:
            if seq in missing:
                fills.append((at - missing.pop(seq)) * 1000)
            if seq in held or seq <= contiguous:
                continue
            if seq > contiguous + 1:
                holes += 1
                for gap in range(contiguous + 1, seq):
                    if gap not in held:
                        missing.setdefault(gap, at)
            held.add(seq)
            while contiguous + 1 in held:
                contiguous += 1
        unfilled += len(missing)
    return HoleFigures(holes, sorted(fills), unfilled)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else 0.0


async def read_counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The instance's `studyhall_redis_*` samples from its /metrics (tests/test_room_channels.py
    reads them the same way)."""
    async with session.get(url + "/metrics") as r:
        r.raise_for_status()
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("studyhall_redis_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def received(c: dict[str, float], what: str) -> float:
    return sum(v for k, v in c.items() if k.startswith(f"studyhall_redis_{what}{{") and 'channel="probe"' not in k)


def outcome(c: dict[str, float], name: str) -> float:
    return c.get(f'studyhall_redis_emits_total{{outcome="{name}"}}', 0.0)


async def connect(user: User) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(user.url, auth={"token": user.token}, transports=["websocket"], wait_timeout=10)
    return sio


async def run_mode(mode: str, args: argparse.Namespace, database_url: str, redis_url: str) -> dict[str, object]:
    procs = start_servers(INSTANCES, database_url, redis_url, MODES[mode] | {
        "STUDYHALL_REDIS_CHANNEL": f"bench-{mode}", "STUDYHALL_GROUP_ROOM_SETTLE": "0"})
    try:
        urls = [u for _, u in procs]
        for url in urls:
            await wait_up(url, attempts=1200)  # four instances starting at once on a loaded machine
        # Users: two per conversation on its pair of instances, idle ones on the fourth.
        members: list[tuple[User, User]] = []
        for k in range(args.conversations):
            i, j = PAIRS[k % len(PAIRS)]
            a, b = await register_users([urls[i], urls[j]], 2)
            members.append((a, b))
        idle = await register_users([urls[3]], args.idle)
        group = await register_users([urls[0], urls[1]], args.group) if args.group else []
        clients: dict[str, socketio.AsyncClient] = {}
        for u in [x for pair in members for x in pair] + idle + group:
            clients[u.user_id] = await connect(u)
        conversations = []
        for a, b in members:
            ack = await clients[a.user_id].call("conversation:create", {"kind": "direct", "member_ids": [b.user_id]})
            conversations.append((ack["conversation"]["id"], [a, b]))
        if group:
            ack = await clients[group[0].user_id].call(
                "conversation:create", {"kind": "group", "title": "bench", "member_ids": [u.user_id for u in group[1:]]})
            if args.concurrent:  # each of the two senders its own stream, at the same time
                conversations += [(ack["conversation"]["id"], [u]) for u in group[:2]]
            else:  # two of them take turns
                conversations.append((ack["conversation"]["id"], group[:2]))
        group_cid = conversations[-1][0] if group else None
        arrivals: list[list[tuple[float, int]]] = [[] for _ in group]

        def recorder(stream: list[tuple[float, int]]) -> object:
            async def on_new(data: dict[str, object]) -> None:
                message = data["message"]
                if message["conversation_id"] == group_cid:  # type: ignore[index]
                    stream.append((time.perf_counter(), int(message["seq"])))  # type: ignore[index]
            return on_new

        for u, stream in zip(group, arrivals):
            clients[u.user_id].on("message:new", recorder(stream))
        await asyncio.sleep(1.0)  # creation events and presence settle before counting

        async with aiohttp.ClientSession() as session:
            before = [await read_counters(session, u) for u in urls]
            cpu_before = [cpu_seconds(p.pid) for p, _ in procs]
            started = time.perf_counter()

            async def talk(cid: str, senders: list[User]) -> int:
                sent = 0
                count = args.messages // 2 if cid == group_cid and args.concurrent else args.messages
                for n in range(count):
                    sender = senders[n % len(senders)]
                    ack = await clients[sender.user_id].call(
                        "message:send", {"conversation_id": cid, "content": f"bench message {n} " + "x" * 80,
                                         "client_id": f"{sender.user_id}-{n}"}, timeout=30)
                    sent += bool(ack.get("ok"))
                return sent

            sent = sum(await asyncio.gather(*(talk(cid, s) for cid, s in conversations)))
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1.0)  # the last events reach every instance
            cpu_after = [cpu_seconds(p.pid) for p, _ in procs]
            after = [await read_counters(session, u) for u in urls]
        for sio in clients.values():
            await sio.disconnect()
    finally:
        stop_servers(procs)
    figures = []
    for b, a, c0, c1 in zip(before, after, cpu_before, cpu_after):
        figures.append(InstanceFigures(
            events=received(a, "received_total") - received(b, "received_total"),
            bytes=received(a, "received_bytes_total") - received(b, "received_bytes_total"),
            delivered=outcome(a, "delivered") - outcome(b, "delivered"),
            ignored=outcome(a, "ignored") - outcome(b, "ignored"),
            own=outcome(a, "own") - outcome(b, "own"),
            cpu_s=c1 - c0,
        ))
    hosted = [0] * INSTANCES  # conversation members connected to each instance
    for u in [x for pair in members for x in pair] + group:
        hosted[urls.index(u.url)] += 1
    return {"mode": mode, "sent": sent, "elapsed": elapsed, "instances": figures, "hosted": hosted,
            "holes": hole_figures(arrivals) if group else None, "group": len(group), "group_sent": args.messages}


def node_publishes(redis: RedisServer | RedisCluster) -> list[dict[str, int]]:
    """PUBLISH and SPUBLISH calls each Redis node has served so far (INFO commandstats)."""
    import redis as redis_py

    ports = [n.port for n in redis.nodes] if isinstance(redis, RedisCluster) else [redis.port]
    out = []
    for port in ports:
        client = redis_py.Redis(host="127.0.0.1", port=port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        out.append({name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("publish", "spublish")})
    return out


def report(results: list[dict[str, object]]) -> None:
    print()
    print("| mode | instance | members there | events / msg | bytes / msg | delivered / ignored / own (per msg) "
          "| CPU s | CPU µs / msg |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        sent = max(1, int(r["sent"]))  # type: ignore[call-overload]
        for n, f in enumerate(r["instances"], start=1):  # type: ignore[attr-defined]
            there = r["hosted"][n - 1]  # type: ignore[index]
            print(f"| {r['mode']} | {n} | {there or 'none'} "
                  f"| {f.events / sent:.2f} | {f.bytes / sent:,.0f} "
                  f"| {f.delivered / sent:.2f} / {f.ignored / sent:.2f} / {f.own / sent:.2f} "
                  f"| {f.cpu_s:.2f} | {f.cpu_s / sent * 1e6:,.0f} |")
    for r in results:
        print(f"{r['mode']}: {r['sent']:,} messages in {r['elapsed']:.1f} s "  # type: ignore[str-format]
              f"({int(r['sent']) / r['elapsed']:,.0f} msg/s)")  # type: ignore[call-overload, operator]
        h = r["holes"]
        if isinstance(h, HoleFigures):
            per = h.holes / max(1, int(r["group"]) * int(r["group_sent"]))  # type: ignore[call-overload]
            print(f"{r['mode']}: group holes {h.holes} ({per:.1%} of messages per member); filled in "
                  f"p50 {percentile(h.fills_ms, 0.5):.1f} ms, p99 {percentile(h.fills_ms, 0.99):.1f} ms, "
                  f"max {max(h.fills_ms, default=0):.1f} ms; never filled live {h.unfilled}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=30)
    parser.add_argument("--messages", type=int, default=40, help="messages per conversation")
    parser.add_argument("--idle", type=int, default=20, help="connected users on the fourth instance")
    parser.add_argument("--group", type=int, default=0, help="add one group of N members on instances 1 and 2")
    parser.add_argument("--concurrent", action="store_true",
                        help="the group's two senders send at the same time, not in turns")
    parser.add_argument("--modes", default="single,room", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--redis", choices=("single", "cluster"), default="single",
                        help="one redis-server, or a 3-master Redis Cluster on loopback")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port())
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    redis: RedisServer | RedisCluster = RedisCluster().start() if args.redis == "cluster" else RedisServer().start()
    print(f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"Redis: {args.redis}", flush=True)
    results = []
    node_calls: list[tuple[str, list[dict[str, int]]]] = []
    try:
        for mode in modes:
            before = node_publishes(redis)
            results.append(await run_mode(mode, args, database_url, redis.url))
            after = node_publishes(redis)
            node_calls.append((mode, [{k: a[k] - b.get(k, 0) for k in a} for b, a in zip(before, after)]))
            print(f"{mode} done", flush=True)
    finally:
        redis.stop()
        pg.destroy()
    report(results)
    if args.redis == "cluster":
        print()
        print("| mode | Cluster node | PUBLISH calls | SPUBLISH calls |")
        print("|---|---|---|---|")
        for mode, per_node in node_calls:
            for n, calls in enumerate(per_node, start=1):
                print(f"| {mode} | {n} | {calls.get('publish', 0):,} | {calls.get('spublish', 0):,} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
