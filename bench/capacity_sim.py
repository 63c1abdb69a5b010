"""Replay a day of Studyhall traffic against the capacity model and say where a fleet breaks.

Pure Python, no services. The model of the users (classes of 30–500 students, office hours,
evening homework with the tutor, support peaks before deadlines) gives, hour by hour, the
rates of sends, deliveries, Redis publishes, database writes, history reads and searches;
the measured constants turn them into the load on each part of a fleet (docs/scaling.md).

    .venv/bin/python bench/capacity_sim.py --users 10000 --instances 8 --pg-cores 4
    .venv/bin/python bench/capacity_sim.py --size 10000 100000 1000000     # smallest fleet per size
    .venv/bin/python bench/capacity_sim.py --size 1000000 --fanout targeted # per-room channels (issue 17, the default)

A part at 100% or more of its capacity "breaks"; sizing keeps every part under TARGET.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Constant:
    value: float
    unit: str
    source: str


# ============================== MEASURED CONSTANTS ===========================================
# Every figure below was measured on this project's 2-core development machine (shared, so
# lower bounds) or is marked ASSUMPTION. Update them when the pipeline changes and rerun the
# simulation; docs/scaling.md quotes its output.
C: dict[str, Constant] = {
    # --- per instance (one `studyhall serve` process: one Python event loop, one core) ---
    "send_cpu": Constant(0.22e-3, "instance CPU s per acked message",
                         "docs/performance.md#messages-benchthreads_benchpy: server 0.22 ms per message with group commit"),
    "delivery_cpu": Constant(5e-6, "instance CPU s per event delivered to one socket (encode-once fan-out, batched writes)",
                             "docs/performance.md, quiet-machine check of the seventh session: bench/conversation_bench.py "
                             "--members 1000, 5.0 µs of server and PostgreSQL CPU per delivery (3.8-6.1 at 100 members)"),
    "receive_cpu": Constant(34.5e-6, "instance CPU s per Redis event received for nobody on it",
                            "bench/capacity_probe.py --part instance: 'instance receive cost' at 2,500 events/s; "
                            "bench/cluster_bench.py measured ~100 µs at 360 events/s (one per wake-up), a low-rate bound"),
    "event_bytes": Constant(688, "bytes per event on Redis (a message:new as published)",
                            "bench/capacity_probe.py --part instance: payload size it prints"),
    "socket_kb": Constant(34.5, "instance resident KiB per connected websocket (no deflate, the default)",
                          "bench/socket_memory_bench.py: 34.5 KiB per idle socket at 10,000 sockets (docs/performance.md)"),
    "deflate_kb": Constant(103.6, "extra KiB per socket when STUDYHALL_WS_DEFLATE is on and the client negotiates it",
                           "bench/socket_memory_bench.py: 138.1 KiB with deflate against 34.5 without, 10,000 sockets"),
    "instance_base_mb": Constant(109, "instance resident MB with no sockets",
                                 "bench/capacity_probe.py --part instance: 'MB idle'"),
    "ping_seconds": Constant(20, "Engine.IO ping interval: one ping out, one pong in per socket",
                             "server/realtime.py ping_interval=20"),
    "tutor_cpu": Constant(5e-3, "instance CPU s per tutor question (embedding the query, prompt)",
                          "docs/performance.md, retrieval Speed: hashing embedder ~5 ms a chunk; tutor p50 9.8 ms incl. waits"),
    # --- per PostgreSQL (CPU seconds of the measured 2-core machine; scaled by cores) ---
    "pg_insert_cpu": Constant(0.3e-3, "PostgreSQL CPU s per committed message (small batches)",
                              "docs/performance.md#messages-benchthreads_benchpy: 0.07 ms at max, 0.3 ms at half rate"),
    "pg_wal_rows": Constant(5463, "durable rows/s through group commit on one WAL (this machine's shared disk)",
                            "bench/capacity_probe.py --part pg: 'group commit (insert_batch of 100)', best of 2 runs (2,672-5,463)"),
    "pg_history_cpu": Constant(4.5e-3, "PostgreSQL s per history page (last 50 messages; wall time, an upper bound)",
                               "bench/capacity_probe.py --part pg: 'history read'"),
    "pg_search_cpu": Constant(8.0e-3, "PostgreSQL CPU s per hybrid search, 100k chunks",
                              "docs/performance.md retrieval Speed: vector p50 4.6 + full text p50 3.4 ms"),
    "pg_join_cpu": Constant(6e-3, "PostgreSQL CPU s per room seat transaction",
                            "docs/performance.md live rooms: 210-450 joins/s on 2 cores (2 / 330)"),
    "pg_row_bytes": Constant(516, "bytes per stored message with its indexes",
                             "bench/capacity_probe.py --part pg: 'bytes per message'"),
    # --- per Redis (one single-threaded server) ---
    "redis_publish": Constant(1 / 107991, "Redis s per PUBLISH with no subscriber",
                              "bench/capacity_probe.py --part redis: 0 subscribers, best of 2 runs (27,855-107,991/s)"),
    "redis_per_subscriber": Constant(1.74e-6, "Redis s per subscriber a PUBLISH is copied to",
                                     "bench/capacity_probe.py --part redis: (1/61,728 - 1/107,991) / 4 subscribers, same run"),
    "nic_bytes": Constant(1.25e9, "bytes/s out of one server", "ASSUMPTION: a 10 Gbit/s NIC, not measured here"),
}
ROOM_EMIT_LIMIT = 16  # server default (STUDYHALL_REDIS_ROOM_EMIT_LIMIT): emits to more users' rooms go once to
# every instance; groups no longer pass it (one room each, handlers/grouprooms.py), presence to many partners could
TARGET = 0.7  # ASSUMPTION (policy): size every part to at most 70% at the peak hour, headroom for bursts
# ============================================================================================


def k(name: str) -> float:
    return C[name].value


# --- the users (ASSUMPTIONS: a model of the mission's platforms, not measurements) ----------
# Fraction of the peak concurrent users online, by hour (school day, evening homework).
ONLINE = [0.05, 0.03, 0.02, 0.02, 0.03, 0.06, 0.15, 0.35, 0.70, 0.85, 0.90, 0.80,
          0.65, 0.80, 0.85, 0.75, 0.60, 0.55, 0.65, 0.85, 1.00, 0.95, 0.60, 0.20]
# Of those online, the fraction in a live class (rooms) and in office hours (group threads).
IN_CLASS = [0] * 8 + [0.6, 0.65, 0.65, 0.5, 0.3, 0.55, 0.6, 0.5, 0.2] + [0.05] * 4 + [0] * 3
IN_OFFICE_HOURS = [0] * 14 + [0.10, 0.15, 0.20, 0.15, 0.05, 0.05, 0.05, 0.05, 0, 0]
# Tutor questions per online student per hour (homework in the evening).
TUTOR_PER_HOUR = [0.05] * 7 + [0.2] * 9 + [0.4, 0.5, 0.8, 1.2, 1.5, 1.5, 1.0, 0.3]
SUPPORT_PEAK = [1.0] * 20 + [3.0, 3.0, 2.0, 1.0]  # tickets before a 23:00 deadline
CLASS_SIZES = [(30, 0.35), (60, 0.30), (120, 0.20), (250, 0.10), (500, 0.05)]  # size, share of classes
CLASS_CHAT_PER_MIN = 0.3  # messages per participant per minute in a live class
JOIN_MINUTES = 5  # a class fills in its first five minutes: each join tells everyone already in
OFFICE_GROUP, OFFICE_PER_MIN = 8, 1.0  # office hours: groups of 8, a message per member per minute
DIRECT_PER_HOUR = 6  # everyone else: direct messages sent per hour
TYPING_PER_MESSAGE = 1.0  # typing notices per message (throttled to one per 2 s per user)
READS_PER_MESSAGE = 1.0  # read markers per direct/group message (stored, then told to the others)
SESSION_MINUTES = 40  # connect churn: presence to ~10 contacts and a history page per connect
TUTOR_PIECES = 300  # streamed pieces per answer, each a message:delta (docs/tutor.md step 3)
ESCALATIONS, AGENT_MESSAGES = 0.02, 6  # tickets per tutor question; agent replies per ticket


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of event: its rate and how many sockets receive each one."""

    rate: float  # events/s
    recipients: float
    room: bool = False  # to one Socket.IO room (a class's chat, a group, the staff room), else to each recipient's user room


@dataclass(frozen=True, slots=True)
class Hour:
    hour: int
    online: float
    sends: float  # acked messages/s (committed rows)
    kinds: tuple[Kind, ...]  # every emit through Redis, with its recipients
    reads: float  # read markers written/s
    joins: float  # room seat transactions/s (during the join storm)
    connects: float
    searches: float

    @property
    def publishes(self) -> float:
        return sum(e.rate for e in self.kinds)

    @property
    def deliveries(self) -> float:
        return sum(e.rate * e.recipients for e in self.kinds)


def traffic(users: int, hour: int, burst: bool) -> Hour:
    """Average rates in `hour`; with `burst`, in its first JOIN_MINUTES (classes filling)."""
    online = users * ONLINE[hour]
    kinds: list[Kind] = []
    sends = joins = 0.0
    in_class = online * IN_CLASS[hour]
    mean_size = sum(s * w for s, w in CLASS_SIZES)
    for size, share in CLASS_SIZES:
        classes = in_class * share / mean_size
        chat = classes * size * CLASS_CHAT_PER_MIN / 60
        sends += chat
        kinds.append(Kind(chat, size, room=True))
        if burst:
            j = classes * size / (JOIN_MINUTES * 60)
            joins += j
            kinds.append(Kind(j, size / 2, room=True))  # room:participant to everyone already in
    office = online * IN_OFFICE_HOURS[hour]
    office_msgs = office * OFFICE_PER_MIN / 60
    rest = online - in_class - office
    direct = rest * DIRECT_PER_HOUR / 3600
    sends += office_msgs + direct
    # A group's events (messages, typing, read markers) are one publish on the group's room
    # (handlers/grouprooms.py); a direct thread's go to its members' own rooms.
    office_reads = office_msgs * (OFFICE_GROUP - 1) * READS_PER_MESSAGE
    direct_reads = direct * READS_PER_MESSAGE
    reads = office_reads + direct_reads
    kinds += [Kind(office_msgs * (1 + TYPING_PER_MESSAGE), OFFICE_GROUP, room=True),
              Kind(office_reads, OFFICE_GROUP - 1, room=True),  # a read marker: the other members
              Kind(direct * (1 + TYPING_PER_MESSAGE), 2),
              Kind(direct_reads, 2)]  # the other member and the reader's other tabs
    questions = rest * TUTOR_PER_HOUR[hour] / 3600
    sends += 2 * questions  # the question and the committed answer
    kinds += [Kind(2 * questions, 1), Kind(questions * TUTOR_PIECES, 1)]
    tickets = questions * ESCALATIONS * SUPPORT_PEAK[hour]
    sends += tickets * AGENT_MESSAGES
    kinds += [Kind(tickets * AGENT_MESSAGES, 2), Kind(tickets, 20, room=True)]  # replies; the queue to 20 agents
    connects = online / (SESSION_MINUTES * 60)
    kinds.append(Kind(connects, 10))  # presence
    return Hour(hour, online, sends, tuple(kinds), reads, joins, connects, questions)


# --- the fleet ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fleet:
    instances: int  # `studyhall serve` processes (one core each)
    pg_cores: int = 2  # the primary (each shard's, with pg_shards)
    pg_shards: int = 1  # primaries sharing `messages` by conversation (Citus); 1: one primary
    pg_replicas: int = 0  # read replicas (same cores) serving history reads and, without vector_server, search
    vector_server: bool = False  # a dedicated pgvector server (same cores) for search
    redis_shards: int = 1  # Redis Cluster masters; only sharded (targeted) pub/sub spreads over them
    fanout: str = "targeted"  # per-room channels (the default): an instance receives only its sockets' events;
    # "broadcast": STUDYHALL_REDIS_CHANNELS=single, every instance receives every event
    deflate: bool = False  # STUDYHALL_WS_DEFLATE (off by default): sockets that negotiated permessage-deflate
    instance_mem_mb: float = 2048  # memory per process (e.g. an 8 GB node running 4)


@dataclass(frozen=True, slots=True)
class Load:
    """Fraction of capacity per part (1.0 = saturated) and what it is made of."""

    instance_cpu: float
    instance_receive: float  # the part of instance_cpu spent on Redis events (received, not delivered)
    instance_mem: float
    pg_cpu: float
    pg_cpu_reads: float  # the part of pg_cpu spent on history reads and searches (no replicas)
    pg_cpu_search: float  # the part of pg_cpu spent on searches (no replicas, no pgvector server)
    pg_wal: float
    pg_reads: float  # per replica (or on the primary when there are none)
    vector: float
    redis_cpu: float
    redis_nic: float

    def parts(self) -> dict[str, float]:
        return {"instance CPU": self.instance_cpu, "instance memory": self.instance_mem, "PostgreSQL CPU": self.pg_cpu,
                "PostgreSQL WAL": self.pg_wal, "read replicas": self.pg_reads, "pgvector server": self.vector,
                "Redis CPU": self.redis_cpu, "Redis network": self.redis_nic}

    def worst(self) -> tuple[str, float]:
        return max(self.parts().items(), key=lambda kv: kv[1])


def room_channel_copies(e: Kind, instances: int) -> tuple[float, float]:
    """(publishes, copies delivered by Redis) per event with per-room channels
    (server/roomchannels.py): a room's event (a live class, a group's room, the staff room) is
    one publish reaching each instance holding a member once; an event for r users' own rooms
    (direct threads, presence) is published once per room, each copy reaching that user's
    instance, unless r passes ROOM_EMIT_LIMIT, when one copy goes to every instance."""
    if e.room:
        return 1.0, instances_reached(e.recipients, instances)
    if e.recipients > ROOM_EMIT_LIMIT:
        return 1.0, float(instances)
    return e.recipients, e.recipients


def instances_reached(recipients: float, instances: int) -> float:
    """Instances holding at least one of `recipients` sockets spread evenly at random."""
    return instances * (1 - (1 - 1 / instances) ** recipients)


def load(h: Hour, fleet: Fleet) -> Load:
    n = fleet.instances
    local = (h.sends * k("send_cpu") + h.deliveries * k("delivery_cpu") + h.searches * k("tutor_cpu")
             + h.online * 2 / k("ping_seconds") * k("delivery_cpu")) / n
    publishes = h.publishes
    if fleet.fanout == "broadcast":  # every instance subscribes to the one channel
        received = h.publishes * (n - 1) / n
        copies = h.publishes * n
    else:  # per-room channels: only instances with a recipient hear an event
        per_kind = [(e.rate, room_channel_copies(e, n)) for e in h.kinds]
        publishes = sum(rate * p for rate, (p, _) in per_kind)
        copies = sum(rate * c for rate, (_, c) in per_kind)
        received = copies / n * (n - 1) / n
    receive = received * k("receive_cpu")
    socket_kb = k("socket_kb") + (k("deflate_kb") if fleet.deflate else 0)
    mem = (k("instance_base_mb") + h.online / n * socket_kb / 1024) / fleet.instance_mem_mb
    pg_scale = fleet.pg_cores / 2  # the PostgreSQL figures are CPU time on a 2-core machine
    writes = ((h.sends + h.reads) * k("pg_insert_cpu") + h.joins * k("pg_join_cpu")) / fleet.pg_shards
    history = h.connects * k("pg_history_cpu")
    search = h.searches * k("pg_search_cpu")
    reads = history + (0 if fleet.vector_server else search)
    if fleet.pg_replicas:
        pg_cpu, pg_reads, primary_reads = writes, reads / fleet.pg_replicas, 0.0
    else:
        pg_cpu, pg_reads, primary_reads = writes + reads, 0.0, reads
    primary_search = 0.0 if fleet.pg_replicas or fleet.vector_server else search
    shards = fleet.redis_shards if fleet.fanout == "targeted" else 1  # one channel lives on one shard
    redis_cpu = (publishes * k("redis_publish") + copies * k("redis_per_subscriber")) / shards
    return Load(
        instance_cpu=local + receive, instance_receive=receive, instance_mem=mem,
        pg_cpu=pg_cpu / (2 * pg_scale), pg_cpu_reads=primary_reads / (2 * pg_scale),
        pg_cpu_search=primary_search / (2 * pg_scale), pg_wal=(h.sends + h.reads) / k("pg_wal_rows") / fleet.pg_shards,
        pg_reads=pg_reads / (2 * pg_scale), vector=search / (2 * pg_scale) if fleet.vector_server else 0.0,
        redis_cpu=redis_cpu, redis_nic=copies * k("event_bytes") / k("nic_bytes") / shards,
    )


def day(users: int) -> Iterator[Hour]:
    """Each hour twice: its average, then its first minutes (classes filling)."""
    for hour in range(24):
        yield traffic(users, hour, burst=False)
        if IN_CLASS[hour]:
            yield traffic(users, hour, burst=True)


def replay(users: int, fleet: Fleet) -> list[tuple[Hour, Load]]:
    """The day hour by hour, each hour at its busier moment (average or join storm)."""
    out: dict[int, tuple[Hour, Load]] = {}
    for h in day(users):
        lo = load(h, fleet)
        if h.hour not in out or lo.worst()[1] > out[h.hour][1].worst()[1]:
            out[h.hour] = (h, lo)
    return [out[i] for i in range(24)]


def breaks(rows: list[tuple[Hour, Load]]) -> tuple[int, str] | None:
    """The first hour at which a part reaches 100%, and that part."""
    for h, lo in rows:
        part, value = lo.worst()
        if value >= 1.0:
            return h.hour, part
    return None


@dataclass(frozen=True, slots=True)
class Sizing:
    fleet: Fleet
    nearest: str  # the part nearest its limit at the peak, or why no fleet fits
    peak: float  # that part's load at the peak
    sized: bool


def size(users: int, fanout: str = "targeted", deflate: bool = False, instance_mem_mb: float = 2048) -> Sizing:
    """The smallest fleet (grown one limit at a time, by the engine that lifts it) with every
    part under TARGET all day; or the last one tried and why no fleet of these engines fits."""
    fleet = Fleet(instances=MIN_INSTANCES, fanout=fanout, deflate=deflate, instance_mem_mb=instance_mem_mb)
    for _ in range(500):
        peak = max((lo for _, lo in replay(users, fleet)), key=lambda lo: lo.worst()[1])
        part, value = peak.worst()
        if value <= TARGET:
            return Sizing(fleet, part, value, True)
        grown = _grow(fleet, part, peak)
        if isinstance(grown, str):
            return Sizing(fleet, grown, value, False)
        fleet = grown
    return Sizing(fleet, "gave up", 0.0, False)


MIN_INSTANCES = 2  # ASSUMPTION (policy): one can be drained or lost (docs/deployment.md)
MAX_PG_CORES = 64  # ASSUMPTION: the largest single PostgreSQL server worth buying


def _grow(f: Fleet, part: str, lo: Load) -> Fleet | str:
    """One step of the engine that lifts `part`'s limit, or why none does."""
    if part in ("instance CPU", "instance memory"):
        if f.fanout == "broadcast" and lo.instance_receive > TARGET:
            return "instance CPU: every instance receives every Redis event (needs targeted fan-out)"
        return replace(f, instances=f.instances + max(1, f.instances // 10))
    if part == "PostgreSQL CPU":
        if lo.pg_cpu_search > lo.pg_cpu / 2:
            return replace(f, vector_server=True)
        if lo.pg_cpu_reads > lo.pg_cpu / 2:
            return replace(f, pg_replicas=1)
        if f.pg_cores < MAX_PG_CORES:
            return replace(f, pg_cores=f.pg_cores * 2)
        if not f.pg_replicas:
            return replace(f, pg_replicas=1)
        return replace(f, pg_shards=f.pg_shards * 2)
    if part == "read replicas":
        if not f.vector_server:
            return replace(f, vector_server=True)
        return replace(f, pg_replicas=f.pg_replicas + 1)
    if part == "pgvector server":
        return replace(f, pg_cores=f.pg_cores * 2) if f.pg_cores < MAX_PG_CORES else "pgvector server: shard the chunks"
    if part == "PostgreSQL WAL":
        return replace(f, pg_shards=f.pg_shards * 2)
    if f.fanout == "targeted":  # Redis CPU or network: sharded pub/sub spreads over a Redis Cluster
        return replace(f, redis_shards=f.redis_shards * 2)
    return f"{part}: one channel for every event lives on one Redis (needs sharded pub/sub)"


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def print_day(users: int, fleet: Fleet) -> list[tuple[Hour, Load]]:
    rows = replay(users, fleet)
    print(f"{users:,} peak concurrent users on {fleet}")
    print("| hour | online | msg/s | deliveries/s | Redis pub/s | instance CPU (Redis receive) | instance mem "
          "| PG CPU | WAL | replicas | pgvector | Redis CPU | Redis net | busiest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for h, lo in rows:
        part, value = lo.worst()
        flag = f"**{part} breaks**" if value >= 1 else part
        print(f"| {h.hour:02d} | {h.online:,.0f} | {h.sends:,.0f} | {h.deliveries:,.0f} | {h.publishes:,.0f} "
              f"| {pct(lo.instance_cpu)} ({pct(lo.instance_receive)}) | {pct(lo.instance_mem)} | {pct(lo.pg_cpu)} "
              f"| {pct(lo.pg_wal)} | {pct(lo.pg_reads)} | {pct(lo.vector)} | {pct(lo.redis_cpu)} | {pct(lo.redis_nic)} "
              f"| {flag} |")
    stored = sum(h.sends for h, _ in rows) * 3600
    print(f"messages stored in the day: {stored:,.0f} ({stored * k('pg_row_bytes') / 1e9:,.1f} GB with indexes)")
    broken = breaks(rows)
    print(f"breaks at {broken[0]:02d}:00: {broken[1]}" if broken else "holds all day")
    return rows


def print_sizes(users_list: list[int], fanout: str, deflate: bool, node_cores: int, node_gb: float) -> None:
    """A node of `node_cores` cores and `node_gb` GB runs one instance per core, sharing the memory
    (a tenth kept for the system)."""
    print(f"{fanout} fan-out, permessage-deflate {'on' if deflate else 'off'}, nodes of {node_cores} cores / {node_gb:g} GB")
    print("| peak concurrent users | instances (nodes) | PostgreSQL primaries × cores | read replicas "
          "| pgvector server | Redis shards | nearest its limit at the peak |")
    print("|---|---|---|---|---|---|---|")
    for users in users_list:
        s = size(users, fanout, deflate, node_gb * 1024 * 0.9 / node_cores)
        f = s.fleet
        verdict = f"{s.nearest} ({pct(s.peak)})" if s.sized else f"**does not fit**: {s.nearest} at {pct(s.peak)}"
        print(f"| {users:,} | {f.instances} ({math.ceil(f.instances / node_cores)}) | {f.pg_shards} × {f.pg_cores} "
              f"| {f.pg_replicas} | {'yes' if f.vector_server else 'no'} | {f.redis_shards} | {verdict} |")


NODE_SIZES = [(2, 4), (4, 8), (8, 16), (16, 32)]  # cores, GB: common cloud sizes


def users_per_node(cores: int, gb: float, fanout: str, deflate: bool) -> tuple[int, str]:
    """The most peak concurrent users one node (one instance per core) serves with its instances
    under TARGET all day, in steps of 500, and the part that stops it. Database and Redis excluded."""
    fleet = Fleet(instances=cores, fanout=fanout, deflate=deflate, instance_mem_mb=gb * 1024 * 0.9 / cores)
    users = 0
    while True:
        rows = replay(users + 500, fleet)
        over = [(p, v) for _, lo in rows for p, v in lo.parts().items() if p.startswith("instance") and v > TARGET]
        if over:
            return users, over[0][0]
        users += 500


def print_nodes(fanout: str, deflate: bool) -> None:
    print(f"{fanout} fan-out, permessage-deflate {'on' if deflate else 'off'}")
    print("| node | instances | peak concurrent users per node | limit |")
    print("|---|---|---|---|")
    for cores, gb in NODE_SIZES:
        users, part = users_per_node(cores, gb, fanout, deflate)
        print(f"| {cores} cores / {gb} GB | {cores} | {users:,} | {part} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10000, help="peak concurrent users")
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--pg-cores", type=int, default=4)
    parser.add_argument("--pg-shards", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=0)
    parser.add_argument("--vector-server", action="store_true")
    parser.add_argument("--redis-shards", type=int, default=1)
    parser.add_argument("--fanout", choices=["broadcast", "targeted"], default="targeted",
                        help="targeted: per-room Redis channels (the default); broadcast: STUDYHALL_REDIS_CHANNELS=single")
    parser.add_argument("--deflate", action="store_true",
                        help="sockets with permessage-deflate (STUDYHALL_WS_DEFLATE=1; off by default)")
    parser.add_argument("--size", type=int, nargs="+", metavar="USERS", help="print the smallest fleet for each size")
    parser.add_argument("--node", default="4:8", metavar="CORES:GB", help="node size for --size (default 4:8)")
    parser.add_argument("--per-node", action="store_true", help="print peak users per node size")
    parser.add_argument("--constants", action="store_true", help="print the constants and their sources")
    args = parser.parse_args(argv)
    if args.constants:
        for name, c in C.items():
            print(f"{name} = {c.value:g} ({c.unit}): {c.source}")
        return
    if args.per_node:
        print_nodes(args.fanout, args.deflate)
        return
    if args.size:
        cores, gb = args.node.split(":")
        print_sizes(args.size, args.fanout, args.deflate, int(cores), float(gb))
        return
    print_day(args.users, Fleet(args.instances, args.pg_cores, args.pg_shards, args.replicas, args.vector_server,
                                args.redis_shards, args.fanout, args.deflate))


if __name__ == "__main__":
    main()
