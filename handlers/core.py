"""The objects every handler needs, built once per app in server/app.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from handlers.events import Events
from handlers.ratelimit import RateLimiter
from handlers.settings import Settings
from storage.availability import DatabaseUnavailable
from storage.db import Database
from storage.records import STAFF_ROLES, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who sent an event or a request."""

    user_id: UUID
    role: Role
    name: str
    token_id: UUID
    sid: str | None = None
    # When the sign-in token expires: the socket's instance closes it then (server/revocation.py).
    token_expires_at: datetime | None = None

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    def user_dict(self) -> dict[str, Any]:
        return {"id": self.user_id, "name": self.name, "role": self.role}


@dataclass
class Core:
    """Shared services: settings, database, event emitter, and feature services.

    Features attach their own service objects to `services` by name at startup
    (e.g. "tutor", "rooms", "tickets"), so handlers can reach each other without
    import cycles or module-level state.
    """

    settings: Settings
    db: Database
    events: Events
    instance_id: UUID
    # The app's one rate limiter (sign-in limits, tutor limits): shared through Redis when set.
    limiter: RateLimiter = field(default_factory=RateLimiter)
    services: dict[str, Any] = field(default_factory=dict)
    closing: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run work in the background, keeping a reference so it is not garbage collected.

        Once the instance is shutting down nothing new starts (the pool is about to close):
        the coroutine is dropped and an already-cancelled task returned."""
        if self.closing:
            if asyncio.iscoroutine(coro):
                coro.close()
            task = asyncio.ensure_future(asyncio.sleep(0))
            task.cancel()
            return task
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # A database outage is logged once by its tracker (storage/availability.py), not per task.
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, DatabaseUnavailable):
            log.error("background task failed", exc_info=task.exception(), extra={"task": task.get_name()})

    async def cancel_background(self) -> None:
        self.closing = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)


Hook = Callable[..., Awaitable[Any]]
