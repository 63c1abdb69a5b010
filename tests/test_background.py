"""Background loops stop at shutdown even when one swallows a cancellation, as Python
3.11's asyncio.wait_for does when the cancel arrives just as its wait completes
(python/cpython#86296): one cancel and a gather would wait for ever."""

from __future__ import annotations

import asyncio

from handlers.background import Loop, Loops


async def test_loops_stop_even_when_one_swallows_its_cancellation() -> None:
    swallowed: list[str] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.append("first cancel")  # lost, as inside 3.11's wait_for
        await asyncio.sleep(3600)

    async def plain() -> None:
        await asyncio.sleep(3600)

    loops = Loops([Loop("stubborn", stubborn), Loop("plain", plain)])
    loops.start()
    tasks = list(loops.tasks)
    await asyncio.sleep(0)
    await asyncio.wait_for(loops.stop(), 5)
    assert swallowed == ["first cancel"]
    assert all(task.cancelled() for task in tasks)
