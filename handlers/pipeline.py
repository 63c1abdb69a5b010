"""The one message pipeline: every message in Studyhall is written and delivered here.

Thread messages, tutor questions and answers, live-room chat, agent replies and system
notices all go through `commit_message`: the row is committed with the conversation's
next seq, and only then is `message:new` fanned out and are the after-commit hooks run
(the tutor answers, tickets reopen). Who may read or write a conversation depends on its
kind, through a `KindPolicy`; features register theirs (live rooms do).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.events import conversation_room
from handlers.writer import ConversationLoader, MessageWriter
from storage import conversations, messages
from storage.records import ConversationAccess, ConversationMembership, Message

log = logging.getLogger(__name__)

AfterCommit = Callable[[Core, ConversationMembership, Message], Awaitable[None]]
# (core, conversation, sender, role, client_id) before a sender's message is written: raising
# an ApiError refuses the send, with nothing stored (the tutor's question limit).
BeforeCommit = Callable[[Core, ConversationMembership, Actor, str, str | None], Awaitable[None]]
Conv = TypeVar("Conv", bound=ConversationAccess)


class KindPolicy(Protocol):
    """Access rules for one kind of conversation. `conn` is the caller's connection, or
    None when it holds none (a send): a rule that needs a query then takes a connection
    of its own. `conv` is a `ConversationAccess` (all that `conversations.access_rows`
    loads; a send passes the fuller `ConversationMembership`): membership is decided from
    it alone."""

    async def check_read(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None: ...

    async def check_send(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None: ...

    def fans_out_to_members(self, conv: ConversationAccess) -> bool: ...


class MemberPolicy:
    """Direct, group and tutor conversations: members read and write; others learn nothing."""

    async def check_read(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        if not conv.is_member:
            raise ApiError("not_found", "No such conversation.")

    async def check_send(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        await self.check_read(core, conn, conv, actor)

    def fans_out_to_members(self, conv: ConversationAccess) -> bool:
        return True


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Any, asyncio.Lock] = {}
        self._users: dict[Any, int] = defaultdict(int)

    @asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                self._locks.pop(key, None)


@dataclass
class Pipeline:
    writer: MessageWriter
    loader: ConversationLoader
    policies: dict[str, KindPolicy] = field(default_factory=dict)
    after_commit: list[AfterCommit] = field(default_factory=list)
    before_commit: list[BeforeCommit] = field(default_factory=list)
    # Per conversation, on this instance: commit and fan-out in seq order.
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    # (user_id, conversation_id) -> when `typing: true` was last passed on.
    typing_sent: dict[tuple[UUID, UUID], float] = field(default_factory=dict)

    def policy(self, kind: str) -> KindPolicy:
        return self.policies.get(kind) or self.policies["_members"]


def install(core: Core) -> Pipeline:
    pipeline = Pipeline(MessageWriter(core.db), ConversationLoader(core.db))
    pipeline.policies["_members"] = MemberPolicy()
    core.services["pipeline"] = pipeline
    return pipeline


def get_pipeline(core: Core) -> Pipeline:
    return core.services["pipeline"]


async def authorize(
    core: Core, conn: asyncpg.Connection | None, conv: Conv | None, actor: Actor, *, send: bool = False
) -> Conv:
    """`conv` (as `conversations.get_with_membership` loads it, None if there is none) if the
    actor may read (or send to) it, by its kind's policy; `not_found` otherwise."""
    if conv is None:
        raise ApiError("not_found", "No such conversation.")
    policy = get_pipeline(core).policy(conv.kind)
    if send:
        await policy.check_send(core, conn, conv, actor)
    else:
        await policy.check_read(core, conn, conv, actor)
    return conv


async def load_conversation(
    core: Core, conn: asyncpg.Connection, conversation_id: UUID, actor: Actor, *, send: bool = False
) -> ConversationMembership:
    """The conversation if the actor may read (or send to) it; `not_found` otherwise."""
    conv = await conversations.get_with_membership(conn, conversation_id, actor.user_id)
    return await authorize(core, conn, conv, actor, send=send)


async def fan_out(core: Core, conv: ConversationMembership, event: str, data: dict[str, Any]) -> None:
    """Deliver an event about a conversation to whoever follows it: its members (loaded
    with the conversation by `conversations.get_with_membership`), or its room."""
    if get_pipeline(core).policy(conv.kind).fans_out_to_members(conv):
        await core.events.to_users(conv.member_ids, event, data)
    else:
        await core.events.to_rooms([conversation_room(conv.id)], event, data)


async def commit_message(
    core: Core,
    conversation_id: UUID,
    *,
    sender: Actor | None,
    role: str | None,
    content: str,
    client_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    check_access: bool = True,
    message_id: UUID | None = None,
    require_mode: str | None = None,
) -> tuple[Message, bool]:
    """Commit a message with the next seq, then fan it out. Returns (message, duplicate).

    `sender=None` is the system or the AI tutor. `role=None` derives it from the sender:
    staff who joined as the conversation's agent write as `agent`, everyone else as `user`. A duplicate
    (retried client_id) is returned as first committed and delivered to nobody again.
    `message_id` and `require_mode` go to `messages.NewMessage`: the tutor commits under the id
    it streamed with, only while the conversation is still in mode `ai` (else
    `messages.ModeChanged` is raised and nothing is committed).
    """
    pipeline = get_pipeline(core)
    # The look-up and access check need no order among a conversation's senders: outside
    # the lock, concurrent sends to one busy group share a look-up batch.
    conv = await pipeline.loader.load(conversation_id, sender.user_id if sender else None)
    if check_access and sender is not None:
        conv = await authorize(core, None, conv, sender, send=True)
    elif conv is None:
        raise ApiError("not_found", "No such conversation.")
    if role is None:
        # An agent who took a conversation over writes as `agent`; staff who started
        # a tutor conversation of their own are its student and write as `user`.
        role = "agent" if sender is not None and sender.is_staff and conv.member_role == "agent" else "user"
    if sender is not None:
        for check in pipeline.before_commit:
            await check(core, conv, sender, role, client_id)
    async with pipeline.locks.hold(conversation_id):
        message, duplicate = await pipeline.writer.insert(messages.NewMessage(
            conversation_id=conversation_id, sender_id=sender.user_id if sender else None,
            role=role, content=content, client_id=client_id, metadata=metadata,
            message_id=message_id, require_mode=require_mode,
        ))
        if not duplicate:
            await fan_out(core, conv, "message:new", {"message": message})
    if not duplicate:
        conv = replace(conv, last_seq=message.seq)
        for hook in pipeline.after_commit:
            try:
                await hook(core, conv, message)
            except Exception:
                log.exception("after-commit hook failed", extra={"conversation_id": str(conversation_id)})
    return message, duplicate
