"""Background work: the one loop body every sweeper, heartbeat and watcher runs in
(`repeat`), and the one way long-running loops are started and stopped (`Loop`, `Loops`).

Convention (docs/architecture.md, "Background loops"): a feature's long-running loops are
`Loop`s in the list server/assembly.py builds; server/app.py starts them all once the core
exists and cancels them all at shutdown, before the database pool closes. Short work one
event starts (a grace timer, a fan-out after commit) goes through `core.spawn` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Loop:
    """One long-running loop: its task's name, and the coroutine function that runs it until
    cancelled (its body usually `repeat`)."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]


class Loops:
    """The app's loops, started together and cancelled together."""

    def __init__(self, loops: Iterable[Loop]) -> None:
        self.loops = list(loops)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in self.loops]

    async def stop(self) -> None:
        """Cancel every loop and wait until each has ended."""
        tasks, self.tasks = self.tasks, []
        await cancel_until_done(tasks)


RECANCEL_SECONDS = 1.0


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait for them to end, cancelling again every second those that
    still run. One cancel is not always enough on Python 3.11: `asyncio.wait_for` swallows a
    cancellation that arrives just as the awaited thing completes (python/cpython#86296,
    fixed in 3.12), and a loop around such a wait then goes on for ever, hanging shutdown."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
