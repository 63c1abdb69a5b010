"""What the `message.created` outbox costs PostgreSQL per message, without the rest of the stack.

    .venv/bin/python bench/outbox_bench.py [--seconds 5] [--writers 2] [--batch 8] [--rounds 3]

Starts its own PostgreSQL (embedded), migrates it, and from `--writers` connections (the
message writer runs two batches at once) commits the message writer's own batch statement
(`storage.messages.insert_batch`), `--batch` messages a batch over 100 direct
conversations (each writer its own, as the writer's per-conversation order guarantees), in
a closed loop, for each variant in turn, `--rounds` times interleaved:

- `no outbox`: no endpoint subscribed (the statement without its outbox CTE);
- `per message, NOTIFY`: one endpoint on `message.created`, one delivery row per message
  (the CTE before migration 0020, `PER_MESSAGE_CTE` below) and the deliveries trigger of
  migration 0016 (a NOTIFY at every commit), a connection LISTENing;
- `per message`: the same rows with migration 0019's trigger (NOTIFY only while a delivery
  loop has announced it is asleep; none here, as while messages flow);
- `per batch (as migrated)`: one row per statement (migration 0020, `MESSAGE_CREATED_CTE`),
  which the delivery loops expand later, off the message path.

Prints messages/s and PostgreSQL CPU ms per message for each (median of the rounds). No
deliveries are made and no batch is expanded: this isolates what the message path writes.
What it costs the whole pipeline is `bench/threads_bench.py --pairs`. (Two more variants,
an empty payload and time-ordered delivery ids, were measured in the eighth session and
dropped: docs/performance.md, "Eighth session: webhook cost".)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import migrated_postgres  # noqa: E402
from storage import messages  # noqa: E402
from storage.db import _init_connection  # noqa: E402
from storage.messages import NewMessage  # noqa: E402
from storage.webhooks import DELIVERIES_CHANNEL, MESSAGE_CREATED_CTE  # noqa: E402

VARIANTS = ("no outbox", "per message, NOTIFY", "per message", "per batch (as migrated)")
# The outbox CTE before migration 0020: one delivery row per message per endpoint.
PER_MESSAGE_CTE = """
hooks AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_type, payload)
    SELECT e.id, 'message.created', jsonb_build_object(
        'message', jsonb_build_object(
            'id', i.id, 'conversation_id', i.conversation_id, 'seq', i.seq, 'sender_id', i.sender_id,
            'role', i.role, 'content', i.content, 'client_id', i.client_id, 'metadata', i.metadata,
            'created_at', i.created_at),
        'conversation', jsonb_build_object('id', l.id, 'kind', l.kind, 'title', l.title))
    FROM ins i JOIN locked l ON l.id = i.conversation_id
    CROSS JOIN webhook_endpoints e
    WHERE e.enabled AND 'message.created' = ANY(e.events)
    ORDER BY i.conversation_id, i.seq
)"""
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
        if variant == "per message, NOTIFY":
            await conn.execute(OLD_TRIGGER)
        elif migrated_trigger:
            await conn.execute(migrated_trigger.replace("CREATE TRIGGER", "CREATE OR REPLACE TRIGGER", 1))
        await conn.execute("TRUNCATE webhook_deliveries, webhook_message_batches")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def writer(conn: asyncpg.Connection, user: uuid.UUID, convs: list[uuid.UUID], batch: int, variant: str,
                 deadline: float) -> int:
    sql = messages.statement(webhooks=variant != "no outbox")
    if variant.startswith("per message"):
        sql = sql.replace(MESSAGE_CREATED_CTE, PER_MESSAGE_CTE)
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
    print(f"  {variant:24} {total / elapsed:9,.0f} msg/s  PostgreSQL {1000 * cpu / total:.4f} ms/msg  "
          f"NOTIFYs heard {heard[0]:,}", flush=True)
    return total / elapsed, 1000 * cpu / total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    async with migrated_postgres() as pg:
        url = pg.url()
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
