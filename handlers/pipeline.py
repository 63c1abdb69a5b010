"""The one message pipeline: every message in Studyhall is written and delivered here.

Thread messages, tutor questions and answers, live-room chat, agent replies and system
notices all go through `commit_message`: the row is committed with the conversation's
next seq, and only then is `message:new` fanned out and are the after-commit hooks run
(the tutor answers, tickets reopen). Who may read or write a conversation depends on its
kind, through a `KindPolicy`. The hooks and policies are registered in one list, in
server/assembly.py; their types live in handlers/core.py (they take a Core).

A send first looks the conversation up (batched: handlers/writer.py `ConversationLoader`),
checks its kind's policy, runs the before-commit hooks, and then queues the insert: two
PostgreSQL round trips in a chain. A live room's send skips the look-up (issue 16): the
loader remembers every conversation's kind, and a send to a conversation known to be a
room, by a sender, with access checked, when no hook acts on rooms, goes straight to the
writer with the room policy's `send_guard`, which the batch's statement checks in SQL as
it locks the conversation (storage/messages.py `RoomSendGuard`). Its audience, the
conversation's Socket.IO room, needs nothing from the look-up. A send the guard refuses
(`GuardFailed`: banned, muted, gone, ended, never joined) then takes the full path, which
gives the protocol's error exactly as before, or commits it if the state allows it by
then (that second try is its acceptance: its seq comes after what was accepted meanwhile).
Member kinds (direct, group, tutor, ticket) keep the look-up: their audience is the
member list it loads (docs/architecture.md, "Room sends without the look-up").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from handlers.audience import Audience, audience_of, room_audience
from handlers.core import Actor, AfterCommit, BeforeCommit, Core, KindPolicy, Pipeline
from handlers.errors import ApiError
from handlers.writer import ConversationLoader, MessageWriter, unstorable
from storage import conversations, messages
from storage.db import Database
from storage.records import ConversationAccess, ConversationMembership, Message

log = logging.getLogger(__name__)

Conv = TypeVar("Conv", bound=ConversationAccess)

__all__ = [
    "AfterCommit", "AfterCommitHook", "BeforeCommit", "BeforeCommitHook", "KindPolicy", "KindPolicyFor",
    "MemberPolicy", "Pipeline", "authorize", "commit_message", "conversation_audience", "fan_out", "get_pipeline",
    "load_conversation", "new_pipeline", "register",
]


class MemberPolicy:
    """Direct, group and tutor conversations: members read and write; others learn nothing."""

    async def check_read(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        if not conv.is_member:
            raise ApiError("not_found", "No such conversation.")

    async def check_send(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        await self.check_read(core, conn, conv, actor)

    def fans_out_to_members(self, conv: ConversationAccess) -> bool:
        return True

    def send_guard(self, actor: Actor) -> messages.RoomSendGuard | None:
        return None  # the audience is the member list: every send needs the look-up


def new_pipeline(db: Database) -> Pipeline:
    """The app's pipeline, with the members' policy as every kind's default; the app's
    hooks and other policies are added in server/assembly.py."""
    pipeline = Pipeline(MessageWriter(db), ConversationLoader(db))
    pipeline.policies["_members"] = MemberPolicy()
    return pipeline


@dataclass(frozen=True)
class BeforeCommitHook:
    """Runs before a sender's message is written; raising an ApiError refuses the send.
    `kinds`: the conversation kinds it acts on (None: every kind); a send to a kind no hook
    acts on may skip the look-up (the module docstring), so say it when you can."""

    check: BeforeCommit
    kinds: frozenset[str] | None = None


@dataclass(frozen=True)
class AfterCommitHook:
    """Runs after a message is committed and fanned out; a failure is logged, the message
    stands. `kinds` as for `BeforeCommitHook`."""

    hook: AfterCommit
    kinds: frozenset[str] | None = None


@dataclass(frozen=True)
class KindPolicyFor:
    """Who may read and write conversations of one kind (others: `MemberPolicy`)."""

    kind: str
    policy: KindPolicy


def register(pipeline: Pipeline, plugs: Iterable[BeforeCommitHook | AfterCommitHook | KindPolicyFor]) -> None:
    """Add the app's hooks and policies from one list (server/assembly.py); hooks of a
    kind run in the list's order."""
    for plug in plugs:
        if isinstance(plug, BeforeCommitHook):
            pipeline.before_commit.append(plug.check)
            if plug.kinds is not None:
                pipeline.hook_kinds[plug.check] = plug.kinds
        elif isinstance(plug, AfterCommitHook):
            pipeline.after_commit.append(plug.hook)
            if plug.kinds is not None:
                pipeline.hook_kinds[plug.hook] = plug.kinds
        else:
            if plug.kind in pipeline.policies:
                raise ValueError(f"two policies for conversations of kind {plug.kind!r}")
            pipeline.policies[plug.kind] = plug.policy


def get_pipeline(core: Core) -> Pipeline:
    if core.pipeline is None:
        raise RuntimeError("this Core was built without a message pipeline (a command-line tool)")
    return core.pipeline


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


def conversation_audience(core: Core, conv: ConversationMembership, *, skip_user: UUID | None = None) -> Audience:
    """Who hears `conv`'s events (handlers/audience.py): its group's room, its members
    (loaded with it by `conversations.get_with_membership`), or its room, by its kind."""
    return audience_of(core, kind=conv.kind, conversation_id=conv.id, created_at=conv.created_at,
                       member_ids=conv.member_ids, skip_user=skip_user,
                       to_members=get_pipeline(core).policy(conv.kind).fans_out_to_members(conv))


async def fan_out(core: Core, conv: ConversationMembership, event: str, data: dict[str, Any]) -> None:
    """Deliver an event about a conversation to whoever follows it."""
    await conversation_audience(core, conv).emit(core, event, data)


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
    if check_access and sender is not None and require_mode is None:
        guard = _send_guard(pipeline, conversation_id, sender)
        if guard is not None:
            new = messages.NewMessage(
                conversation_id=conversation_id, sender_id=sender.user_id, role=role or "user", content=content,
                client_id=client_id, metadata=metadata, message_id=message_id,
                guard=replace(guard, derive_agent=role is None and sender.is_staff),
            )
            if unstorable(new) is None:  # else the full path refuses it, in today's order of checks
                try:
                    return await pipeline.writer.insert(new, then=room_audience(conversation_id).delivery(core))
                except messages.GuardFailed:
                    pass  # the full path gives the protocol's error, or commits it if it may by now
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
            if pipeline.acts_on(check, conv.kind):
                await check(core, conv, sender, role, client_id)
    # The writer commits the conversation's messages in batches, in the order they arrive
    # (their seq order), and delivers them in seq order after their commit.
    message, duplicate = await pipeline.writer.insert(messages.NewMessage(
        conversation_id=conversation_id, sender_id=sender.user_id if sender else None,
        role=role, content=content, client_id=client_id, metadata=metadata,
        message_id=message_id, require_mode=require_mode,
    ), then=conversation_audience(core, conv).delivery(core))
    if not duplicate:
        conv = replace(conv, last_seq=message.seq)
        for hook in pipeline.after_commit:
            if not pipeline.acts_on(hook, conv.kind):
                continue
            try:
                await hook(core, conv, message)
            except Exception:
                log.exception("after-commit hook failed", extra={"conversation_id": str(conversation_id)})
    return message, duplicate


def _send_guard(pipeline: Pipeline, conversation_id: UUID, sender: Actor) -> messages.RoomSendGuard | None:
    """The guard under which this send may skip the look-up, or None (full path): the
    conversation's kind is known (a look-up noted it), its policy has a guard, and no hook
    acts on that kind (a hook must see the whole conversation)."""
    kind = pipeline.loader.kinds.get(conversation_id)
    if kind is None or pipeline.hooked(kind):
        return None
    return pipeline.policy(kind).send_guard(sender)
