"""The objects every handler needs, built once per app by server/assembly.py (command-line
tools build a smaller one: server/cli.py).

Core's fields are typed by *ports*: small Protocols that say what one part of Studyhall
uses of another (the tutor escalates through `Escalations`, tickets cut an answer off
through `Tutoring`). The concrete services (handlers/tutor/service.py's TutorService,
handlers/tickets/service.py's TicketService, ...) satisfy them structurally, so this module
imports no feature and no feature imports another: docs/architecture.md, "Services and ports".
The message pipeline's per-app state (`Pipeline`, its hooks and kind policies) lives here
too, because its hooks take a Core.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from handlers.background import cancel_until_done
from handlers.events import Events
from handlers.ratelimit import RateLimiter
from handlers.settings import Settings
from handlers.writer import ConversationLoader, MessageWriter
from rag.retrieval import KnowledgeBase
from storage.availability import DatabaseUnavailable
from storage.connections import SocketRow
from storage.db import Database
from storage.messages import RoomSendGuard
from storage.records import STAFF_ROLES, ConversationAccess, ConversationMembership, Message, Role

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


# ---- the message pipeline's state (handlers/pipeline.py runs it) ------------------------

AfterCommit = Callable[["Core", ConversationMembership, Message], Awaitable[None]]
# (core, conversation, sender, role, client_id) before a sender's message is written: raising
# an ApiError refuses the send, with nothing stored (the tutor's question limit).
BeforeCommit = Callable[["Core", ConversationMembership, Actor, str, str | None], Awaitable[None]]


class KindPolicy(Protocol):
    """Access rules for one kind of conversation. `conn` is the caller's connection, or
    None when it holds none (a send): a rule that needs a query then takes a connection
    of its own. `conv` is a `ConversationAccess` (all that `conversations.access_rows`
    loads; a send passes the fuller `ConversationMembership`): membership is decided from
    it alone."""

    async def check_read(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None: ...

    async def check_send(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None: ...

    def fans_out_to_members(self, conv: ConversationAccess) -> bool: ...

    def send_guard(self, actor: Actor) -> RoomSendGuard | None:
        """`check_send` as a guard the writer's statement checks in SQL, if this kind has
        one; then a send by `actor` to a conversation known to be of this kind skips the
        look-up, and is delivered to the conversation's room (`fans_out_to_members` is
        False). None: every send takes the look-up and `check_send`."""
        ...


@dataclass
class Pipeline:
    """Per app: the writer, and what features registered (server/assembly.py, one list)."""

    writer: MessageWriter
    loader: ConversationLoader
    policies: dict[str, KindPolicy] = field(default_factory=dict)
    after_commit: list[AfterCommit] = field(default_factory=list)
    before_commit: list[BeforeCommit] = field(default_factory=list)
    # The kinds a hook acts on, as registered (handlers/pipeline.py `BeforeCommitHook(check,
    # kinds=...)`); a hook not listed here acts on every kind.
    hook_kinds: dict[BeforeCommit | AfterCommit, frozenset[str]] = field(default_factory=dict)
    # (user_id, conversation_id) -> when `typing: true` was last passed on.
    typing_sent: dict[tuple[UUID, UUID], float] = field(default_factory=dict)

    def policy(self, kind: str) -> KindPolicy:
        return self.policies.get(kind) or self.policies["_members"]

    def acts_on(self, hook: BeforeCommit | AfterCommit, kind: str) -> bool:
        kinds = self.hook_kinds.get(hook)
        return kinds is None or kind in kinds

    def hooked(self, kind: str) -> bool:
        """Whether any hook acts on conversations of this kind: then every send takes the
        full path, so that hooks always see the whole conversation."""
        return (any(self.acts_on(check, kind) for check in self.before_commit)
                or any(self.acts_on(hook, kind) for hook in self.after_commit))


# ---- ports: what one feature uses of another --------------------------------------------

class Tutoring(Protocol):
    """The tutor's answering service (handlers/tutor/service.py, TutorService)."""

    def enqueue(self, conversation_id: UUID, message_id: UUID, seq: int, *, recovered: bool = False) -> None:
        """Queue a student message for an answer."""

    async def cancel(self, conversation_id: UUID) -> bool:
        """Cut off the answer streaming here (tickets call it when a person takes over)."""

    def stop_local(self, conversation_id: UUID) -> bool:
        """tutor:stop for an answer streaming on this instance."""


class UsageLimits(Protocol):
    """Per-user limits on what costs money or people's time (handlers/tutor/limits.py,
    TutorGate); each check raises `rate_limited`."""

    async def question(self, user_id: UUID, role: str) -> None: ...

    async def session(self, user_id: UUID, role: str) -> None: ...

    async def escalation(self, user_id: UUID, role: str, *, urgent: bool) -> None: ...


class Escalations(Protocol):
    """Handing a tutor conversation to people (handlers/tickets/service.py, TicketService)."""

    async def escalate(
        self, core: Core, *, conversation_id: UUID, reason: str, escalated_by: Actor | None, source: str,
        urgent: bool = False, category: str | None = None, priority: str | None = None, admitted: bool = False,
    ) -> dict[str, Any]:
        """Open a ticket (or return the open one); `rate_limited` over the escalation limit."""

    async def admit(
        self, core: Core, *, conversation_id: UUID, reason: str, source: str, urgent: bool = False,
        category: str | None = None, priority: str | None = None,
    ) -> None:
        """Count an escalation against its owner's limits before saying a person is coming."""


class RoomSockets(Protocol):
    """Per-app room state and the socket operations rooms need beyond `core.events`
    (handlers/rooms/sessions.py, RoomService; the transport supplies the operations)."""

    @property
    def enter_socket(self) -> Callable[[str, str], Awaitable[None]]: ...

    @property
    def close_socket_room(self) -> Callable[[str], Awaitable[None]]: ...

    @property
    def pending_updates(self) -> dict[UUID, asyncio.Task[Any]]: ...


class WebhookEvents(Protocol):
    """Which webhook events some enabled endpoint subscribes to, as this instance last
    loaded them (handlers/webhooks/outbox.py, Subscriptions): `emit` writes nothing else."""

    def wants(self, event_type: str) -> bool: ...

    async def refresh(self) -> None:
        """Load the set again (an endpoint changed)."""


@dataclass(frozen=True)
class Registry:
    """What the transport tells the socket registry (handlers/registry.py): this instance's
    open sockets, now. A Core without a gateway (command-line tools) has none."""

    local_sockets: Callable[[], list[SocketRow]] = list
    # One re-sync at a time per instance (a heartbeat and a sweep may notice together).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Core:
    """Shared services: settings, database, event emitter, and the features' services.

    The app builds every field in one place (server/assembly.py); a feature reaches another
    only through these fields, typed by the ports above. A field left None is a feature
    this Core was built without (command-line tools build no tutor, tickets or rooms).
    """

    settings: Settings
    db: Database
    events: Events
    instance_id: UUID
    # The app's one rate limiter (sign-in limits, tutor limits): shared through Redis when set.
    limiter: RateLimiter = field(default_factory=RateLimiter)
    pipeline: Pipeline | None = None
    registry: Registry = field(default_factory=Registry)
    kb: KnowledgeBase | None = None
    tutor: Tutoring | None = None
    tutor_limits: UsageLimits | None = None
    tickets: Escalations | None = None
    rooms: RoomSockets | None = None
    webhooks: WebhookEvents | None = None
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
            await cancel_until_done(tasks)  # a cancellation swallowed by wait_for is repeated
            self._tasks.difference_update(tasks)

