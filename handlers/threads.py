"""Conversations and messages as clients see them: create, send, edit, delete, typing,
read markers, history and recovery by seq."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import orjson

from handlers import grouprooms
from handlers.audience import audience_of
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.pipeline import authorize, commit_message, conversation_audience, fan_out, get_pipeline, load_conversation
from handlers.webhooks import outbox as webhooks
from storage import conversations, messages, users
from storage.records import Conversation, ConversationMembership, Message, Role

MAX_GROUP_MEMBERS = 100
UNADDABLE_ROLES = frozenset({Role.GUEST})  # conversation:create refuses these members
SYNC_PAGE = 200  # messages per conversation in one sync answer; past it, complete: false
# (and at most settings.threads.sync_max_bytes of messages in all: see `sync`)
TYPING_EVERY_SECONDS = 2.0
TYPING_TABLE_MAX = 10_000


def conversation_out(conv: Conversation, members: list[dict[str, Any]], unread: int = 0) -> dict[str, Any]:
    """The protocol's conversation object."""
    return {
        "id": conv.id, "kind": conv.kind, "title": conv.title, "status": conv.status,
        "mode": conv.mode, "members": members, "last_seq": conv.last_seq, "unread": unread,
        "context": conv.context, "created_at": conv.created_at,
    }


async def describe(core: Core, conversation_id: UUID, user_id: UUID | None = None) -> dict[str, Any]:
    """A conversation object (unread for `user_id`) read fresh from the database."""
    async with core.db.connection() as conn:
        conv = await conversations.get(conn, conversation_id)
        if conv is None:
            raise ApiError("not_found", "No such conversation.")
        members = (await conversations.members(conn, [conversation_id]))[conversation_id]
        unread = await conversations.unread_count(conn, conversation_id, user_id) if user_id else 0
    return conversation_out(conv, members, unread)


async def announce_conversation(core: Core, conversation_id: UUID, event: str = "conversation:updated") -> dict[str, Any]:
    """Send a conversation's new state to its members (each gets it without per-user unread)."""
    conv = await describe(core, conversation_id)
    # A ticket's or tutor's conversation (its callers'): members, never a live room's room.
    to = audience_of(core, kind=conv["kind"], conversation_id=conversation_id, created_at=conv["created_at"],
                     member_ids=[m["id"] for m in conv["members"]], to_members=True)
    await to.emit(core, event, {"conversation": conv})
    return conv


async def create(core: Core, actor: Actor, *, kind: str, member_ids: list[UUID], title: str | None) -> dict[str, Any]:
    if actor.role == Role.GUEST:
        raise ApiError("forbidden", "Guests cannot start threads; sign up first.")
    others = [m for m in dict.fromkeys(member_ids) if m != actor.user_id]
    if kind == "direct" and len(others) != 1:
        raise ApiError("bad_request", "A direct conversation has exactly one other member.")
    if kind == "group" and not 1 <= len(others) <= MAX_GROUP_MEMBERS - 1:
        raise ApiError("bad_request", f"A group has 2 to {MAX_GROUP_MEMBERS} members.")
    everyone = [actor.user_id, *others]
    direct_key = ":".join(sorted(str(u) for u in everyone)) if kind == "direct" else None
    async with core.db.transaction() as conn:
        found = await users.get_users(conn, others)
        # Guests (anonymous widget visitors) are never added to threads. A guest's id and
        # an id that is no user get the same answer, so it confirms no guest's id.
        if len([u for u in found if u.role not in UNADDABLE_ROLES]) != len(others):
            raise ApiError("bad_request", "Some member_ids are not users you can add.")
        conv = await conversations.insert_conversation(conn, kind=kind, title=title, created_by=actor.user_id, direct_key=direct_key)
        created = conv is not None
        if conv is None:
            assert direct_key is not None
            conv = await conversations.get_by_direct_key(conn, direct_key)
            assert conv is not None
        else:
            await conversations.add_members(conn, conv.id, everyone)
            await webhooks.emit(core, conn, "conversation.created", webhooks.conversation_data(conv, everyone))
    out = await describe(core, conv.id, actor.user_id)
    if created:
        if kind == "group":  # before the announcement: a member told of the group is in its room
            await grouprooms.members_joined(core, conv.id, everyone)
        await core.events.to_users(everyone, "conversation:new", {"conversation": {**out, "unread": 0}})
    return {"conversation": out}


async def remove_member(core: Core, conversation_id: UUID, user_id: UUID) -> bool:
    """Take a member out of a group: the row goes, their sockets leave the group's room on
    every instance, and the others are told (`conversation:updated`; the removed member
    too, through their own room). No client event calls this yet (the protocol has none):
    it is the one way a group loses a member, for operators' tools and a future event.
    False if they were no member."""
    async with core.db.transaction() as conn:
        conv = await conversations.get(conn, conversation_id, for_update=True)
        if conv is None or conv.kind != "group":
            raise ApiError("not_found", "No such group.")
        removed = await conversations.remove_member(conn, conversation_id, user_id)
    if not removed:
        return False
    await grouprooms.members_left(core, conversation_id, [user_id])
    out = await announce_conversation(core, conversation_id)
    await core.events.to_users([user_id], "conversation:updated", {"conversation": out})
    return True


async def list_mine(core: Core, actor: Actor) -> dict[str, Any]:
    async with core.db.connection() as conn:
        rows = await conversations.list_for_user(conn, actor.user_id)
        members = await conversations.members(conn, [conv.id for conv, _ in rows])
    return {"conversations": [conversation_out(conv, members[conv.id], unread) for conv, unread in rows]}


async def send(core: Core, actor: Actor, *, conversation_id: UUID, content: str, client_id: str) -> dict[str, Any]:
    message, _ = await commit_message(core, conversation_id, sender=actor, role=None, content=content, client_id=client_id)
    return {"message": message}


async def _own_message(
    core: Core, actor: Actor, message_id: UUID, *, staff_may: bool
) -> tuple[Message, ConversationMembership]:
    """The message and its conversation if the actor may change it. A message in a
    conversation the actor may not read gets exactly the answer of one that does not
    exist; only then are sender and state checked (the actor can see those anyway)."""
    conv: ConversationMembership | None = None
    async with core.db.connection() as conn:
        msg = await messages.get(conn, message_id)
        if msg is not None:
            try:
                conv = await load_conversation(core, conn, msg.conversation_id, actor)
            except ApiError:  # not a member, not in the live room, banned: it cannot be read
                conv = None
    if msg is None or conv is None:
        raise ApiError("not_found", "No such message.")
    if msg.sender_id != actor.user_id and not (staff_may and actor.is_staff):
        raise ApiError("forbidden", "Only the sender may change this message.")
    if msg.deleted:
        raise ApiError("conflict", "This message was deleted.")
    return msg, conv


async def edit(core: Core, actor: Actor, *, message_id: UUID, content: str) -> dict[str, Any]:
    _, conv = await _own_message(core, actor, message_id, staff_may=False)
    async with core.db.connection() as conn:
        msg = await messages.edit(conn, message_id, content)
    if msg is None:
        raise ApiError("conflict", "This message was deleted.")
    await fan_out(core, conv, "message:updated", {"message": msg})
    return {"message": msg}


async def delete(core: Core, actor: Actor, *, message_id: UUID) -> dict[str, Any]:
    _, conv = await _own_message(core, actor, message_id, staff_may=True)
    async with core.db.connection() as conn:
        msg = await messages.soft_delete(conn, message_id)
    assert msg is not None
    await fan_out(core, conv, "message:updated", {"message": msg})
    return {"message": msg}


async def typing(core: Core, actor: Actor, *, conversation_id: UUID, is_typing: bool) -> dict[str, Any]:
    """Never stored. `typing: true` is passed on at most every 2 s per user and conversation."""
    async with core.db.connection() as conn:
        conv = await load_conversation(core, conn, conversation_id, actor, send=True)
    throttle = get_pipeline(core).typing_sent
    key = (actor.user_id, conversation_id)
    now = time.monotonic()
    if is_typing and now - throttle.get(key, 0.0) < TYPING_EVERY_SECONDS:
        return {}
    if is_typing:
        if len(throttle) > TYPING_TABLE_MAX:  # forget stale entries rather than grow forever
            for stale in [k for k, at in throttle.items() if now - at >= TYPING_EVERY_SECONDS]:
                del throttle[stale]
        throttle[key] = now
    else:
        throttle.pop(key, None)
    data = {"conversation_id": conversation_id, "user_id": actor.user_id, "typing": is_typing}
    await _to_others(core, conv, actor, "typing", data)
    return {}


async def _to_others(core: Core, conv: ConversationMembership, actor: Actor, event: str, data: dict[str, Any]) -> None:
    """Everyone who follows the conversation but the actor (whose other tabs need no echo;
    a live room's chat echoes to every socket in its room, handlers/audience.py)."""
    await conversation_audience(core, conv, skip_user=actor.user_id).emit(core, event, data)


async def read(core: Core, actor: Actor, *, conversation_id: UUID, seq: int) -> dict[str, Any]:
    async with core.db.connection() as conn:
        conv = await load_conversation(core, conn, conversation_id, actor)
        marker = await conversations.set_read(conn, conversation_id, actor.user_id, seq)
    if marker is None:  # a live-room participant who is not a stored member: nothing to keep
        return {}
    await _to_others(core, conv, actor, "read", {"conversation_id": conversation_id, "user_id": actor.user_id, "seq": marker})
    return {}


async def history(core: Core, actor: Actor, *, conversation_id: UUID, before_seq: int | None, limit: int) -> dict[str, Any]:
    async with core.db.connection() as conn:
        await load_conversation(core, conn, conversation_id, actor)
        msgs, has_more = await messages.history(conn, conversation_id, before_seq=before_seq, limit=limit)
    return {"messages": msgs, "has_more": has_more}


async def sync(core: Core, actor: Actor, *, since: dict[UUID, int]) -> dict[str, Any]:
    """What the client missed, per conversation it may read; others are left out silently.

    What access needs is loaded for all of them in one query; each kind's policy then
    decides from it (membership), or with a query of its own (live rooms).

    The answer is bounded by size as well as by count: an answer over ~10 MiB would sit
    in the socket's output past the fan-out's slow-consumer limit and close the socket,
    so a client with a big backlog could never catch up. Conversations are filled in the
    order asked until `sync_max_bytes`; one cut short or not reached is `complete: false`
    and the client asks again from the last seq it now holds."""
    readable_ids: set[UUID] = set()
    async with core.db.connection() as conn:
        for conv in await conversations.access_rows(conn, actor.user_id, list(since)):
            try:
                await authorize(core, conn, conv, actor)
            except ApiError:
                continue
            readable_ids.add(conv.id)
        readable = {cid: seq for cid, seq in since.items() if cid in readable_ids}
        budget = core.settings.threads.sync_max_bytes
        found = await messages.since(conn, readable, limit=SYNC_PAGE, max_bytes=budget)
    return {
        "conversations": {
            str(cid): {"messages": msgs, "complete": complete} for cid, (msgs, complete) in _within(found, budget).items()
        }
    }


def _within(found: dict[UUID, tuple[list[Message], bool]], max_bytes: int) -> dict[UUID, tuple[list[Message], bool]]:
    """Cut a sync answer at `max_bytes` of encoded messages (the query's estimate can be low
    when JSON escapes the text), keeping at least one message so each call makes progress."""
    used = 0
    full = False
    out: dict[UUID, tuple[list[Message], bool]] = {}
    for cid, (msgs, complete) in found.items():
        kept: list[Message] = []
        for msg in msgs:
            size = len(orjson.dumps(msg, default=str))
            if full or (used and used + size > max_bytes):
                full = True
                break
            kept.append(msg)
            used += size
        out[cid] = (kept, complete and len(kept) == len(msgs))
    return out
