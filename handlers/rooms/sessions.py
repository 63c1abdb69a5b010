"""Live sessions: a mentor schedules a room, starts it, ends or cancels it; and favorites.

Lifecycle: scheduled → live → ended, or scheduled → cancelled; anything else is a
`conflict`. Each session owns a `room` conversation created with it, so its chat is the
one message pipeline's (see handlers/rooms/live.py for who may read and send). Clients
hear of a change only after the transaction that made it has committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from handlers.core import Actor, Core, RoomSockets
from handlers.errors import ApiError
from handlers.events import conversation_room, user_room
from handlers.webhooks.outbox import conversation_data
from handlers.webhooks.outbox import emit as emit_webhook
from storage import audit, conversations, rooms, users
from storage.records import LiveSession, Role, RoomAccess, SessionLock

STATUSES = ("scheduled", "live", "ended", "cancelled")
CREATOR_ROLES = (Role.MENTOR, Role.ADMIN)
# room:updated is coalesced per room on each instance: a burst of joins sends one update
# with the final count instead of one per join to every participant.
UPDATE_COALESCE_SECONDS = 0.1
# action -> (from status, to status)
TRANSITIONS = {"start": ("scheduled", "live"), "end": ("live", "ended"), "cancel": ("scheduled", "cancelled")}


@dataclass
class RoomService:
    """Per-app room state (no module globals) and the two socket operations rooms need
    beyond `core.events`, supplied by the transport."""

    enter_socket: Callable[[str, str], Awaitable[None]]  # (sid, room): one local socket
    close_socket_room: Callable[[str], Awaitable[None]]  # empty a Socket.IO room on every instance
    pending_updates: dict[UUID, asyncio.Task[Any]] = field(default_factory=dict)


def service(core: Core) -> RoomSockets:
    """The app's room state (`core.rooms`, a RoomService built by server/assembly.py)."""
    if core.rooms is None:
        raise RuntimeError("this Core was built without rooms (a command-line tool)")
    return core.rooms


def audience(session: LiveSession) -> list[str]:
    """Who hears about a room: its joined sockets and the host's sockets."""
    return [conversation_room(session.conversation_id), user_room(session.host_id)]


def may_moderate(actor: Actor, session: LiveSession | SessionLock | RoomAccess) -> bool:
    return actor.user_id == session.host_id or actor.role == Role.ADMIN


async def load(core: Core, session_id: UUID) -> LiveSession:
    async with core.db.connection() as conn:
        row = await rooms.get_session(conn, session_id)
    if row is None:
        raise ApiError("not_found", "No such live session.")
    return row


# --- lifecycle ----------------------------------------------------------------------

async def create(
    core: Core,
    actor: Actor,
    *,
    title: str,
    type: str,
    scheduled_start_time: datetime | None,
    max_participants: int,
    is_featured: bool,
) -> dict[str, Any]:
    if actor.role not in CREATOR_ROLES:
        raise ApiError("forbidden", "Only mentors and admins host live sessions.")
    if scheduled_start_time is not None and scheduled_start_time.tzinfo is None:
        scheduled_start_time = scheduled_start_time.replace(tzinfo=UTC)
    session_id = uuid.uuid4()
    async with core.db.transaction() as conn:
        # The conversation's context names its session, so a client holding only the chat finds the room.
        conv = await conversations.insert_conversation(
            conn, kind="room", title=title, created_by=actor.user_id, context={"live_session_id": str(session_id)}
        )
        assert conv is not None
        await rooms.insert_session(
            conn, session_id=session_id, title=title, host_id=actor.user_id, type=type,
            scheduled_start_time=scheduled_start_time, max_participants=max_participants,
            is_featured=is_featured, conversation_id=conv.id,
        )
        await audit.record(conn, "live_session.create", actor_id=actor.user_id, target_type="live_session", target_id=session_id)
        await emit_webhook(core, conn, "conversation.created", conversation_data(conv, []))
        row = await rooms.get_session(conn, session_id)
    assert row is not None
    return {"live_session": row.to_wire()}


async def list_sessions(core: Core, actor: Actor, *, status: str | None, host_id: UUID | None, limit: int) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise ApiError("bad_request", f"status must be one of {', '.join(STATUSES)}.")
    async with core.db.connection() as conn:
        rows = await rooms.list_sessions(conn, status=status, host_id=host_id, limit=limit)
    return {"live_sessions": [r.to_wire() for r in rows]}


async def get(core: Core, actor: Actor, session_id: UUID) -> dict[str, Any]:
    return {"live_session": (await load(core, session_id)).to_wire()}


async def change_status(core: Core, actor: Actor | None, session_id: UUID, action: str) -> dict[str, Any]:
    """start / end / cancel, by the host or an admin (actor None: the server, e.g. host gone)."""
    from_status, to_status = TRANSITIONS[action]
    async with core.db.transaction() as conn:
        locked = await rooms.lock_session(conn, session_id)
        if locked is None:
            raise ApiError("not_found", "No such live session.")
        if actor is not None and not may_moderate(actor, locked):
            raise ApiError("forbidden", "Only the host or an admin may do this.")
        if locked.status != from_status:
            raise ApiError("conflict", f"Cannot {action} a session that is {locked.status}.")
        await rooms.transition(conn, session_id, from_status, to_status)
        if to_status in ("ended", "cancelled"):
            await rooms.leave_everyone(conn, session_id)
            await conversations.set_status(conn, locked.conversation_id, "closed")
        await audit.record(
            conn, f"live_session.{action}", actor_id=actor.user_id if actor else None,
            target_type="live_session", target_id=session_id, details={} if actor else {"by": "server"},
        )
        row = await rooms.get_session(conn, session_id)
        followers = await rooms.followers_to_notify(conn, locked.host_id) if to_status == "live" else []
        if row is not None and to_status in ("live", "ended"):
            event = "live_session.started" if to_status == "live" else "live_session.ended"
            await emit_webhook(core, conn, event, {"live_session": row.to_wire()})
    assert row is not None
    out = row.to_wire()
    if to_status == "live" and followers:
        await core.events.to_users(followers, "live:started", {"live_session": out})
    if to_status == "ended":
        await core.events.to_rooms(audience(row), "room:updated", {"live_session": out})
        await core.events.to_rooms(audience(row), "room:ended", {"live_session_id": session_id})
        await service(core).close_socket_room(conversation_room(row.conversation_id))
    return {"live_session": out}


# --- room:updated, coalesced ---------------------------------------------------------

def schedule_update(core: Core, session_id: UUID) -> None:
    """Send `room:updated` soon, once for any number of changes in the meantime."""
    pending = service(core).pending_updates
    if session_id in pending:
        return
    pending[session_id] = core.spawn(_send_update(core, session_id), name=f"room-update:{session_id}")


async def _send_update(core: Core, session_id: UUID) -> None:
    try:
        await asyncio.sleep(UPDATE_COALESCE_SECONDS)
    finally:
        service(core).pending_updates.pop(session_id, None)
    async with core.db.connection() as conn:
        row = await rooms.get_session(conn, session_id)
    if row is not None:
        await core.events.to_rooms(audience(row), "room:updated", {"live_session": row.to_wire()})


# --- favorites ----------------------------------------------------------------------

# Favoriting someone shows their presence, so it is allowed only for users the actor may
# see anyway: people in these roles (the school's mentors and support staff, whose rooms
# and replies everyone meets), hosts of live sessions (every signed-in user can list them),
# and people who share a conversation with the actor (`storage.users.visible_user`).
PUBLIC_ROLES = (Role.MENTOR, Role.AGENT, Role.ADMIN)

async def favorite(core: Core, actor: Actor, *, user_id: UUID, notify_when_online: bool) -> dict[str, Any]:
    if user_id == actor.user_id:
        raise ApiError("bad_request", "You cannot favorite yourself.")
    async with core.db.transaction() as conn:
        target = await users.visible_user(conn, actor.user_id, user_id, public_roles=PUBLIC_ROLES)
        if target is None:  # no such user, or one the actor may not see: one answer
            raise ApiError("not_found", "No such user.")
        row = await rooms.upsert_favorite(conn, actor.user_id, user_id, notify_when_online)
    return {"favorite": _favorite_out(row, target.public())}


async def unfavorite(core: Core, actor: Actor, *, user_id: UUID) -> None:
    async with core.db.connection() as conn:
        if not await rooms.delete_favorite(conn, actor.user_id, user_id):
            raise ApiError("not_found", "Not in your favorites.")


async def list_favorites(core: Core, actor: Actor) -> dict[str, Any]:
    async with core.db.connection() as conn:
        rows = await rooms.list_favorites(conn, actor.user_id)
    return {"favorites": [_favorite_out(r, {"id": r["target_user_id"], "name": r["name"], "role": r["role"]}) for r in rows]}


def _favorite_out(row: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": row["target_user_id"], "notify_when_online": row["notify_when_online"],
        "user": {"id": target["id"], "name": target["name"], "role": target["role"]}, "created_at": row["created_at"],
    }
