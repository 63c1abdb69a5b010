"""What a lone room send costs the database: the look-up it skips, the guard it carries instead.

    .venv/bin/python bench/room_send_bench.py [--messages 1500] [--rounds 3] [--participants 10]

Starts its own PostgreSQL (embedded), migrates it, makes one live room with
`--participants` present participants, and has one of them send `--messages` messages one
at a time (each waits for its commit, as a lone sender in a quiet room does), through the
pipeline's own `ConversationLoader` and `MessageWriter`, in three variants, interleaved over
`--rounds`:

- `look-up + insert`: the full path's database work (handlers/pipeline.py before issue 16's
  last step): the batched look-up, then the unguarded insert;
- `guarded insert`: a room send whose kind is known: the insert alone, with
  `RoomSendGuard` checked in the statement (storage/messages.py);
- `unguarded insert`: the insert alone with no check (the floor; no send takes it).

Prints p50 / p99 / mean ms per message (the statement round trips and the commit's WAL
flush; no sockets). `bench/conversation_bench.py --probe` is the whole path's view.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import migrated_postgres  # noqa: E402
from bench.statements_bench import make_room  # noqa: E402
from handlers.writer import ConversationLoader, MessageWriter  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.messages import NewMessage, RoomSendGuard  # noqa: E402

VARIANTS = ("look-up + insert", "guarded insert", "unguarded insert")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--participants", type=int, default=10)
    args = parser.parse_args()
    async with migrated_postgres() as pg:
        url = pg.url()
        conn = await asyncpg.connect(url)
        try:
            cid, users = await make_room(conn, args.participants + 1)
        finally:
            await conn.close()
        db = await Database.connect(url)
        try:
            writer, loader, sender = MessageWriter(db), ConversationLoader(db), users[1]
            results: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for round_ in range(args.rounds):
                for variant in VARIANTS:
                    times = []
                    guard = RoomSendGuard(moderator=False) if variant == "guarded insert" else None
                    for _ in range(args.messages):
                        started = time.perf_counter()
                        if variant == "look-up + insert":
                            await loader.load(cid, sender)
                        await writer.insert(NewMessage(cid, sender, "user", "benchmark message", guard=guard))
                        times.append((time.perf_counter() - started) * 1000)
                    times.sort()
                    results[variant] += times
                    print(f"round {round_ + 1} {variant:18s} p50 {times[len(times) // 2]:.3f} ms, "
                          f"p99 {times[int(len(times) * 0.99)]:.3f} ms, mean {statistics.mean(times):.3f} ms", flush=True)
            print("\n| variant | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
            for variant, times in results.items():
                times.sort()
                print(f"| {variant} | {times[len(times) // 2]:.3f} | {times[int(len(times) * 0.99)]:.3f} "
                      f"| {statistics.mean(times):.3f} |")
        finally:
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
