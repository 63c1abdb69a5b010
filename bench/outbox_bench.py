"""What the `message.created` outbox costs PostgreSQL per message, without the rest of the stack.

    .venv/bin/python bench/outbox_bench.py [--seconds 5] [--writers 2] [--batch 8] [--rounds 3]

Starts its own PostgreSQL (embedded), migrates it, and from `--writers` connections (the
message writer runs two batches at once) commits the message writer's own batch statement
(`storage.messages.insert_batch`), `--batch` messages a batch over 100 direct
conversations (each writer its own, as the writer's per-conversation order guarantees), in
a closed loop, for each variant in turn, `--rounds` times interleaved:

- `no outbox`: no endpoint subscribed (the statement without its outbox CTE);
- `outbox, NOTIFY`: one endpoint on `message.created`, the deliveries trigger of migration
  0016 (a NOTIFY at every commit that inserted deliveries), a connection LISTENing;
- `outbox, no NOTIFY`: the same with that trigger disabled (what a busy delivery loop that
  polls would see);
- `outbox as migrated`: whatever trigger the migrations leave (after 0019: NOTIFY only while
  a delivery loop has announced it is asleep; none here, as while messages flow);
- `outbox, empty payload`: the outbox CTE writing `{}` instead of the message's payload,
  no NOTIFY (what a payload-less row would save);
- `outbox, time-ordered ids`: delivery ids that grow with time (UUIDv7), no NOTIFY (what
  random primary-key inserts cost).

Prints messages/s and PostgreSQL CPU ms per message for each (median of the rounds). No
deliveries are made: this isolates the write side. What it costs the whole pipeline is
`bench/threads_bench.py --pairs`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage import messages  # noqa: E402
from storage.db import _init_connection  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from storage.messages import NewMessage  # noqa: E402
from storage.webhooks import DELIVERIES_CHANNEL, MESSAGE_CREATED_CTE  # noqa: E402

VARIANTS = ("no outbox", "outbox, NOTIFY", "outbox, no NOTIFY", "outbox as migrated", "outbox, empty payload",
            "outbox, time-ordered ids")
# A UUIDv7 in SQL for PostgreSQL before 18 (which has uuidv7()): 48 bits of milliseconds
# over a random UUID, version 7: the primary key's inserts land at its right edge.
UUID7 = """encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
        substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
        52, 1), 53, 1), 'hex')::uuid"""
CONVERSATIONS = 100
OLD_TRIGGER = """CREATE OR REPLACE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_notify('studyhall_webhook_deliveries')"""


async def prepare(url: str) -> tuple[uuid.UUID, list[uuid.UUID]]:
    from bench.webhooks_bench import add_endpoint

    conn = await asyncpg.connect(url)
    try:
        user = await conn.fetchval("INSERT INTO users (name, role) VALUES ('bench', 'student') RETURNING id")
        convs = [r["id"] for r in await conn.fetch(
            "INSERT INTO conversations (kind, created_by) SELECT 'direct', $1 FROM generate_series(1, $2) RETURNING id",
            user, CONVERSATIONS)]
    finally:
        await conn.close()
    await add_endpoint(url, "http://127.0.0.1:9/hook")  # never delivered: no server runs
    return user, convs


async def set_variant(url: str, variant: str, migrated_trigger: str | None) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE webhook_endpoints SET enabled = $1", variant != "no outbox")
        if variant == "outbox, NOTIFY":
            await conn.execute(OLD_TRIGGER)
        elif variant == "outbox as migrated" and migrated_trigger:
            await conn.execute(migrated_trigger.replace("CREATE TRIGGER", "CREATE OR REPLACE TRIGGER", 1))
        await conn.execute("ALTER TABLE webhook_deliveries " + (
            "ENABLE" if variant in ("outbox, NOTIFY", "outbox as migrated") else "DISABLE") + " TRIGGER webhook_deliveries_notify")
        await conn.execute("TRUNCATE webhook_deliveries")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def writer(conn: asyncpg.Connection, user: uuid.UUID, convs: list[uuid.UUID], batch: int, variant: str,
                 deadline: float) -> int:
    sql = messages.statement(webhooks=variant != "no outbox")
    if variant == "outbox, empty payload":
        cte = MESSAGE_CREATED_CTE
        start, end = cte.index("jsonb_build_object("), cte.index("    FROM ins i")
        sql = sql.replace(cte, cte[:start] + "'{}'::jsonb\n" + cte[end:])
    if variant == "outbox, time-ordered ids":
        sql = sql.replace("INSERT INTO webhook_deliveries (endpoint_id, event_type, payload)\n    SELECT e.id,",
                          f"INSERT INTO webhook_deliveries (id, endpoint_id, event_type, payload)\n    SELECT {UUID7}, e.id,")
        assert UUID7 in sql
    sent, n = 0, 0
    while time.monotonic() < deadline:
        picked = sorted(convs[(n * batch + i) % len(convs)] for i in range(batch))
        n += 1
        rows = [NewMessage(c, user, "user", "benchmark message", f"b{n}-{i}-{uuid.uuid4().hex[:6]}")
                for i, c in enumerate(picked)]
        await conn.fetch(sql, *messages.batch_arguments(rows))
        sent += batch
    return sent


async def run_variant(url: str, pgdata: Path, user: uuid.UUID, convs: list[uuid.UUID], args: argparse.Namespace,
                      variant: str, migrated_trigger: str | None) -> tuple[float, float]:
    from bench.threads_bench import postgres_cpu

    await set_variant(url, variant, migrated_trigger)
    listener = await asyncpg.connect(url)  # the servers' LISTEN connection
    heard = [0]
    await listener.add_listener(DELIVERIES_CHANNEL, lambda *_: heard.__setitem__(0, heard[0] + 1))
    share = len(convs) // args.writers
    conns = [await asyncpg.connect(url) for _ in range(args.writers)]
    for conn in conns:
        await _init_connection(conn)  # the servers' jsonb codec
    before = postgres_cpu(pgdata)  # with the backends open: their CPU is read before they exit
    started = time.monotonic()
    deadline = started + args.seconds
    sent = await asyncio.gather(*(writer(conn, user, convs[i * share:(i + 1) * share], args.batch, variant, deadline)
                                  for i, conn in enumerate(conns)))
    elapsed = time.monotonic() - started
    cpu = sum(c - before.get(pid, 0.0) for pid, c in postgres_cpu(pgdata).items())
    for conn in conns:
        await conn.close()
    await listener.close()
    total = sum(sent)
    print(f"  {variant:22} {total / elapsed:9,.0f} msg/s  PostgreSQL {1000 * cpu / total:.4f} ms/msg  "
          f"NOTIFYs heard {heard[0]:,}", flush=True)
    return total / elapsed, 1000 * cpu / total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port())
    os.chmod(pg.data_dir, 0o755)
    url = await asyncio.to_thread(pg.start)
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    try:
        from storage.migrate import migrate

        await migrate(url)
        conn = await asyncpg.connect(url)
        migrated_trigger = await conn.fetchval(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'webhook_deliveries_notify'")
        await conn.close()
        user, convs = await prepare(url)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}, {time.strftime('%H:%M:%S', time.gmtime())} UTC, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            for variant in VARIANTS:
                results[variant].append(await run_variant(url, pg.pgdata, user, convs, args, variant, migrated_trigger))
    finally:
        pg.destroy()
    print()
    print(f"| variant ({args.writers} writers, {args.batch} messages a batch) | messages/s (median, min-max) "
          "| PostgreSQL CPU ms per message (median, min-max) |")
    print("|---|---|---|")
    for variant, rs in results.items():
        rates, cpus = [r for r, _ in rs], [c for _, c in rs]
        print(f"| {variant} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
              f"| {statistics.median(cpus):.4f} ({min(cpus):.4f}-{max(cpus):.4f}) |")


if __name__ == "__main__":
    asyncio.run(main())
