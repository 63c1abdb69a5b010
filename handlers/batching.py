"""Run concurrent requests to the database together, without waiting for a timer.

Every query costs PostgreSQL a statement (and a commit, for writes) and this process a
round trip through asyncpg. Under load, requests arrive faster than queries finish, so
the ones that queue up while a batch is running go together in the next one. An idle
server runs a lone request at once; batches only grow as load does. Each caller gets
its own result (or exception) when its batch is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Runs a batch; returns one outcome per request, in order: a result, or an exception
# for that request alone. Raising fails every request of the batch.
RunBatch = Callable[[list[T]], Awaitable[list[R | BaseException]]]


@dataclass
class _Pending(Generic[T, R]):
    request: T
    outcome: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """At most `concurrency` batches of at most `max_batch` requests in flight.

    `conflict_key`: requests with the same (non-None) key never share a batch; the later
    waits for the next one (a retried message must see the first one committed)."""

    def __init__(
        self,
        run: RunBatch[T, R],
        *,
        max_batch: int = 200,
        concurrency: int = 2,
        conflict_key: Callable[[T], Hashable | None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._conflict_key = conflict_key
        self._queue: list[_Pending[T, R]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run; requests / batches is the mean batch size
        self.requests = 0

    async def submit(self, request: T) -> R:
        pending: _Pending[T, R] = _Pending(request, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._running < self.concurrency:
            self._running += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await pending.outcome

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._run_one(self._take())
        finally:
            self._running -= 1

    def _take(self) -> list[_Pending[T, R]]:
        if self._conflict_key is None:
            taken, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            return taken
        batch: list[_Pending[T, R]] = []
        rest: list[_Pending[T, R]] = []
        keys: set[Hashable] = set()
        for p in self._queue:
            key = self._conflict_key(p.request)
            if len(batch) >= self.max_batch or (key is not None and key in keys):
                rest.append(p)
                continue
            if key is not None:
                keys.add(key)
            batch.append(p)
        self._queue = rest
        return batch

    async def _run_one(self, batch: list[_Pending[T, R]]) -> None:
        try:
            outcomes = await self._run([p.request for p in batch])
        except Exception as exc:
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled at shutdown: nobody is left waiting forever
            for p in batch:
                _settle(p, ConnectionError("the server is shutting down"))
            raise
        self.batches += 1
        self.requests += len(batch)
        for p, outcome in zip(batch, outcomes, strict=True):
            _settle(p, outcome)


def _settle(p: _Pending[T, R], outcome: R | BaseException) -> None:
    if p.outcome.done():  # the caller was cancelled; the batch ran all the same
        return
    if isinstance(outcome, BaseException):
        p.outcome.set_exception(outcome)
    else:
        p.outcome.set_result(outcome)
