"""Periodic background work: the one loop every sweeper, heartbeat and watcher runs in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from storage.availability import DatabaseUnavailable

log = logging.getLogger(__name__)


async def repeat(work: Callable[[], Awaitable[object]], *, every: float, what: str, first_delay: float | None = None) -> None:
    """Run `work` every `every` seconds until cancelled; the first run after `first_delay`
    (default: `every`; 0 runs it at once).

    A background loop must never die and never flood the log: while the database is down
    a pass is skipped quietly (the database's outage tracker logs the outage once, at its
    start and end); any other failure is logged with its traceback and the loop goes on."""
    await asyncio.sleep(every if first_delay is None else first_delay)
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable:
            pass
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(every)
