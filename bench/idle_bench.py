"""What an idle instance costs: CPU of the server and of PostgreSQL with nobody connected.

    .venv/bin/python bench/idle_bench.py [--instances 1] [--settle 5] [--seconds 10]

Starts its own PostgreSQL (embedded), migrates it, starts `--instances` servers on it, waits
`--settle` seconds (start-up work, the webhook loops falling asleep), then reads the CPU of
every server process and of PostgreSQL (postmaster and backends) over `--seconds`, as % of
one core. Background loops (webhook delivery, presence, SLA timers, the outbox) should cost
about nothing while nothing happens: the tenth session found a delivery loop that rang for
itself and kept an idle instance at 27.5 % of a core and its PostgreSQL at 69.6 %
(docs/performance.md, "Tenth session").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    migrated_postgres,
    postmaster_pid,
    start_servers,
    stop_servers,
    tree_cpu_seconds,
    wait_up,
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    async with migrated_postgres() as pg:
        pg_pid = postmaster_pid(pg)
        procs = start_servers(args.instances, pg.url(), None)
        try:
            for _, url in procs:
                await wait_up(url, attempts=1200)
            await asyncio.sleep(args.settle)

            def cpu() -> tuple[float, float]:
                return sum(tree_cpu_seconds(p.pid) for p, _ in procs), tree_cpu_seconds(pg_pid)

            (s0, p0), t0 = cpu(), time.monotonic()
            await asyncio.sleep(args.seconds)
            (s1, p1), wall = cpu(), time.monotonic() - t0
        finally:
            stop_servers(procs)
    print(f"idle for {wall:.1f} s, {args.instances} instance(s): servers {100 * (s1 - s0) / wall:.2f} % of a core, "
          f"PostgreSQL {100 * (p1 - p0) / wall:.2f} %")


if __name__ == "__main__":
    asyncio.run(main())
