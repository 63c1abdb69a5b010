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
    waits for the next one (a retried message must see the first one committed).

    `exclusive_key`: requests with the same key are run in submission order, one batch at
    a time: while a batch holding a key is in flight, later requests with that key wait,
    together, for the next batch (one conversation's messages: seq order is the order they
    were submitted in, and a batch's fan-out ends before the next one's starts). Once one
    of them waits, so do all later ones with its key, so none overtakes another."""

    def __init__(
        self,
        run: RunBatch[T, R],
        *,
        max_batch: int = 200,
        concurrency: int = 2,
        conflict_key: Callable[[T], Hashable | None] | None = None,
        exclusive_key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._conflict_key = conflict_key
        self._exclusive_key = exclusive_key
        self._busy: set[Hashable] = set()  # exclusive keys of the batches in flight
        self._queue: list[_Pending[T, R]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run; requests / batches is the mean batch size
        self.requests = 0
        self.in_flight = 0  # requests in the batches running now

    @property
    def waiting(self) -> int:
        """Requests queued behind the batches in flight."""
        return len(self._queue)

    async def submit(self, request: T) -> R:
        return await self.enqueue(request)

    def enqueue(self, request: T) -> asyncio.Future[R]:
        """Queue the request now (its place in the order is taken when this returns) and
        return the future of its outcome."""
        pending: _Pending[T, R] = _Pending(request, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        # A request whose exclusive key has a batch in flight waits for that batch's drainer,
        # which takes it next: starting another would only scan the queue and find nothing.
        key_busy = self._exclusive_key is not None and self._exclusive_key(request) in self._busy
        if self._running < self.concurrency and not key_busy:
            self._running += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return pending.outcome

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, held = self._take()
                if not batch:  # everything queued waits for a batch in flight; its drainer takes it
                    return
                try:
                    await self._run_one(batch)
                finally:
                    self._busy.difference_update(held)
        finally:
            self._running -= 1

    def _take(self) -> tuple[list[_Pending[T, R]], set[Hashable]]:
        """The next batch, and the exclusive keys it now holds."""
        if self._conflict_key is None and self._exclusive_key is None:
            taken, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            return taken, set()
        batch: list[_Pending[T, R]] = []
        rest: list[_Pending[T, R]] = []
        keys: set[Hashable] = set()
        held: set[Hashable] = set()
        waiting: set[Hashable] = set()  # exclusive keys with a request left for later
        for p in self._queue:
            key = self._conflict_key(p.request) if self._conflict_key is not None else None
            ex = self._exclusive_key(p.request) if self._exclusive_key is not None else None
            if (
                len(batch) >= self.max_batch
                or (key is not None and key in keys)
                or (ex is not None and (ex in self._busy or ex in waiting))
            ):
                rest.append(p)
                if ex is not None:
                    waiting.add(ex)
                continue
            if key is not None:
                keys.add(key)
            if ex is not None:
                held.add(ex)
            batch.append(p)
        self._queue = rest
        self._busy.update(held)
        return batch, held

    async def _run_one(self, batch: list[_Pending[T, R]]) -> None:
        self.in_flight += len(batch)
        try:
            outcomes = await self._run([p.request for p in batch])
        except Exception as exc:
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled at shutdown: nobody is left waiting forever
            for p in batch:
                _settle(p, ConnectionError("the server is shutting down"))
            raise
        finally:
            self.in_flight -= len(batch)
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
