"""Inside a live room: join, leave, hands, moderation, the chat policy, and seats freed
when people go away.

A room place belongs to a user, not to a socket: joining from one tab puts every socket
of that user (on every instance, and any tab opened later) into the room's chat, and the
user takes one seat however many tabs they have. Leaving from any tab leaves for all of
them. The place is freed when the user leaves, is kicked or banned, the room ends, or the
user has had no socket anywhere for `room_leave_grace_seconds`.

Seats: the host never takes one (a full room cannot lock its host out), everyone else
does; `current_participants` counts present users other than the host.

Freeing a seat or ending a room judges someone gone from the socket registry, so every
such judgement runs on a `registry.settled` connection: after a database crash emptied
the registry, not before every instance has re-registered its sockets.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import nullcontext
from typing import Any
from uuid import UUID

import asyncpg

from handlers import registry
from handlers.background import repeat
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.events import conversation_room, user_room
from handlers.rooms import sessions
from storage import audit, connections, messages, rooms, users
from storage.availability import DatabaseUnavailable
from storage.records import ConversationAccess, ConversationMembership, LiveSession, Role, RoomAccess

log = logging.getLogger(__name__)

RECENT_MESSAGES = 50
MODERATION_ACTIONS = {"mute": "muted", "unmute": "unmuted", "kick": "kicked", "ban": "banned"}
# Timers fire a little after the grace so the database clock has certainly passed it.
TIMER_SLACK_SECONDS = 0.05


class RoomPolicy:
    """Room chat: read and write while joined (not kicked or banned); writes only while the
    room is live and the sender is not muted. The host and admins may always read, and
    write while live. Messages go to the sockets in the room, not to stored members."""

    async def _state(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> RoomAccess:
        # Loaded with the conversation for this actor (`conversations.get_many_with_membership`,
        # the send path's one look-up): no second round trip per message.
        if isinstance(conv, ConversationMembership) and conv.room is not None:
            return conv.room
        async with core.db.connection() if conn is None else nullcontext(conn) as c:
            state = await rooms.session_for_conversation(c, conv.id, actor.user_id)
        if state is None:
            raise ApiError("not_found", "No such conversation.")
        return state

    async def check_read(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        state = await self._state(core, conn, conv, actor)
        if sessions.may_moderate(actor, state):
            return
        if state.banned:
            raise ApiError("forbidden", "You are banned from this room.")
        if not state.present:
            raise ApiError("forbidden", "Join the room to read its chat.")

    async def check_send(self, core: Core, conn: asyncpg.Connection | None, conv: ConversationAccess, actor: Actor) -> None:
        state = await self._state(core, conn, conv, actor)
        if state.status != "live":
            raise ApiError("not_live", f"The room is {state.status}.")
        if sessions.may_moderate(actor, state):
            return
        if state.banned:
            raise ApiError("forbidden", "You are banned from this room.")
        if not state.present:
            raise ApiError("forbidden", "Join the room to chat.")
        if state.muted:
            raise ApiError("forbidden", "You are muted in this room.")

    def fans_out_to_members(self, conv: ConversationAccess) -> bool:
        return False

    def send_guard(self, actor: Actor) -> messages.RoomSendGuard:
        """`check_send` in SQL (storage/messages.py `RoomSendGuard`, keep the two in step):
        a room send skips the look-up, and the writer's statement refuses it unless the
        room is live and the sender is its host, an admin (`sessions.may_moderate`), or a
        present participant neither banned nor muted. A refusal takes the full path, whose
        `check_send` says why."""
        return messages.RoomSendGuard(moderator=actor.role == Role.ADMIN)


async def _announce(core: Core, session: LiveSession, user: dict[str, Any], action: str,
                    *, also_to: UUID | None = None) -> None:
    """`also_to`: this user's sockets hear it through their own room too, whether or not
    they are still in the room's chat when it arrives (see `_seat_freed`)."""
    audience = sessions.audience(session)
    if also_to is not None:
        audience.append(user_room(also_to))
    await core.events.to_rooms(
        audience, "room:participant", {"live_session_id": session.id, "user": user, "action": action}
    )


async def join(core: Core, actor: Actor, session_id: UUID) -> dict[str, Any]:
    """Take a seat (or find the one already held) under the session row lock."""
    async with core.db.transaction() as conn:
        locked = await rooms.lock_session(conn, session_id)
        if locked is None:
            raise ApiError("not_found", "No such live session.")
        if locked.status != "live":
            raise ApiError("not_live", f"The room is {locked.status}.")
        place = await rooms.get_participant(conn, session_id, actor.user_id)
        if place is not None and place.banned:
            raise ApiError("forbidden", "You are banned from this room.")
        arrived = place is None or place.left_at is not None
        if arrived:
            if actor.user_id != locked.host_id:
                taken = await rooms.count_present(conn, session_id, locked.host_id)
                if taken >= locked.max_participants:
                    raise ApiError("room_full", "The room is full.")
            await rooms.enter(conn, session_id, actor.user_id)
        else:
            await rooms.mark_back(conn, session_id, actor.user_id)
    # Enter the chat before reading recent messages: anything committed after the read is
    # fanned out after it, to sockets that are already in the room. No gap.
    await core.events.join_user_sockets(actor.user_id, conversation_room(locked.conversation_id))
    async with core.db.connection() as conn:
        row = await rooms.get_session(conn, session_id)
        present = await rooms.participants(conn, session_id)
        recent = await messages.recent(conn, locked.conversation_id, RECENT_MESSAGES)
    assert row is not None
    if arrived:
        me = next((p for p in present if p["id"] == actor.user_id), None)
        if me is not None:
            await _announce(core, row, me, "joined")
        sessions.schedule_update(core, session_id)
    return {"live_session": row.to_wire(), "participants": present, "messages": recent}


async def _seat_freed(core: Core, session_id: UUID, user_id: UUID, action: str, *, remove_sockets: bool) -> None:
    """Tell the room someone is gone; take their sockets out of its chat.

    The user hears it through their own room as well: on another instance the notice that
    takes their sockets out of the chat can arrive before the event (on a Redis Cluster the
    two travel through different masters), and a kicked user must learn they were kicked.
    Each socket gets it once (server/roomchannels.py `RecentEmits`)."""
    async with core.db.connection() as conn:
        row = await rooms.get_session(conn, session_id)
        user = await rooms.participant_out(conn, session_id, user_id)
    if row is None or user is None:
        return
    await _announce(core, row, user, action, also_to=user_id)
    if remove_sockets:
        await core.events.leave_user_sockets(user_id, conversation_room(row.conversation_id))
    sessions.schedule_update(core, session_id)


async def leave(core: Core, actor: Actor, session_id: UUID) -> dict[str, Any]:
    await sessions.load(core, session_id)
    async with core.db.connection() as conn:
        left = await rooms.leave(conn, session_id, actor.user_id)
    if left:
        await _seat_freed(core, session_id, actor.user_id, "left", remove_sockets=True)
    return {}


async def hand(core: Core, actor: Actor, session_id: UUID, raised: bool) -> dict[str, Any]:
    session = await sessions.load(core, session_id)
    if session.status != "live":
        raise ApiError("not_live", f"The room is {session.status}.")
    async with core.db.transaction() as conn:
        changed = await rooms.set_flag(conn, session_id, actor.user_id, "hand_raised", raised, present_only=True)
        user = await rooms.participant_out(conn, session_id, actor.user_id)
    if changed is None:
        raise ApiError("forbidden", "Join the room first.")
    if changed and user is not None:
        await _announce(core, session, user, "hand_raised" if raised else "hand_lowered")
    return {}


async def moderate(core: Core, actor: Actor, session_id: UUID, user_id: UUID, action: str) -> dict[str, Any]:
    """mute | unmute | kick | ban, by the host or an admin. A kicked user may rejoin; a banned one may not."""
    async with core.db.transaction() as conn:
        locked = await rooms.lock_session(conn, session_id)
        if locked is None:
            raise ApiError("not_found", "No such live session.")
        if not sessions.may_moderate(actor, locked):
            raise ApiError("forbidden", "Only the host or an admin may moderate this room.")
        if locked.status != "live":
            raise ApiError("not_live", f"The room is {locked.status}.")
        if user_id == locked.host_id or user_id == actor.user_id:
            raise ApiError("forbidden", "Neither the host nor yourself can be moderated.")
        changed: bool | None
        if action in ("mute", "unmute"):
            changed = await rooms.set_flag(conn, session_id, user_id, "muted", action == "mute", present_only=False)
            if changed is None:
                raise ApiError("not_found", "That user has not been in this room.")
        elif action == "kick":
            changed = await rooms.kick(conn, session_id, user_id)
            if not changed:
                raise ApiError("not_found", "That user is not in this room.")
        else:
            if await users.get_user(conn, user_id) is None:
                raise ApiError("not_found", "No such user.")
            changed = await rooms.ban(conn, session_id, user_id)
        await audit.record(
            conn, f"room.{action}", actor_id=actor.user_id, target_type="user", target_id=user_id,
            details={"live_session_id": str(session_id)},
        )
    verb = MODERATION_ACTIONS[action]
    if action in ("mute", "unmute"):
        if changed:
            async with core.db.connection() as conn:
                row = await rooms.get_session(conn, session_id)
                user = await rooms.participant_out(conn, session_id, user_id)
            if row is not None and user is not None:
                await _announce(core, row, user, verb)
    elif action == "kick" or changed:  # a ban of someone present removes them like a kick
        await _seat_freed(core, session_id, user_id, verb, remove_sockets=True)
    else:  # banned before ever joining, or after leaving: tell the room, no seat changes
        async with core.db.connection() as conn:
            row = await rooms.get_session(conn, session_id)
            user = await rooms.participant_out(conn, session_id, user_id)
        if row is not None and user is not None:
            await _announce(core, row, user, verb)
    return {}


# --- sockets coming and going -------------------------------------------------------

async def socket_connected(core: Core, actor: Actor) -> None:
    """A new socket of a user who is in rooms enters their chats; the grace clocks stop."""
    async with core.db.connection() as conn:
        chats = await rooms.mark_user_back(conn, actor.user_id)
    if actor.sid is not None:
        for conversation_id in chats:
            await sessions.service(core).enter_socket(actor.sid, conversation_room(conversation_id))


async def socket_disconnected(core: Core, actor: Actor) -> None:
    """The user's last socket anywhere closed: start the leave and host grace clocks."""
    async with core.db.connection() as conn:
        if await connections.count_for_user(conn, actor.user_id) > 0:
            return
        present, hosting = await rooms.mark_user_away(conn, actor.user_id)
    s = core.settings.rooms
    if core.closing:
        # Shutting down: start no grace timers here; the sweepers of the instances still
        # running free those seats.
        return
    if present:
        core.spawn(_after(core, s.leave_grace_seconds, expire_seats, actor.user_id), name=f"room-leave:{actor.user_id}")
    if hosting:
        core.spawn(_after(core, s.host_grace_seconds, end_abandoned, actor.user_id), name=f"room-host:{actor.user_id}")


async def _after(core: Core, delay: float, action: Any, user_id: UUID) -> None:
    await asyncio.sleep(delay + TIMER_SLACK_SECONDS)
    try:
        await action(core, user_id)
    except asyncio.CancelledError:
        raise
    except DatabaseUnavailable:
        pass  # logged once per outage; the sweeper frees or ends it once the database is back
    except Exception:
        log.exception("room grace timer failed", extra={"user_id": str(user_id)})


async def expire_seats(core: Core, user_id: UUID | None = None) -> None:
    """Free the seats of users away past the grace (one user, or everyone for the sweeper)."""
    async with registry.settled(core) as conn:
        freed = await rooms.expire_away(conn, core.settings.rooms.leave_grace_seconds, user_id)
    for session_id, uid in freed:
        await _seat_freed(core, session_id, uid, "left", remove_sockets=False)


async def end_abandoned(core: Core, host_id: UUID | None = None) -> None:
    """End live rooms whose host has been gone past the host grace."""
    async with registry.settled(core) as conn:
        due = await rooms.hosts_gone(conn, core.settings.rooms.host_grace_seconds, host_id)
    for session_id in due:
        try:
            await sessions.change_status(core, None, session_id, "end")
            log.info("room ended: host gone", extra={"live_session_id": str(session_id)})
        except ApiError:
            pass  # another instance ended it first


def sweep_interval(core: Core) -> float:
    return max(1.0, min(10.0, core.settings.rooms.leave_grace_seconds))


async def sweep(core: Core) -> None:
    """Make the grace clocks agree with the registry, then free and end what is due.

    Clocks of people who have a socket are stopped too: a disconnect in the moment between
    a database crash and its notice may have found the user's other sockets missing."""
    async with registry.settled(core) as conn:
        await rooms.clear_clocks_of_connected(conn)
        await rooms.mark_socketless_away(conn)
    await expire_seats(core)
    await end_abandoned(core)


async def sweep_forever(core: Core) -> None:
    """Safety net for instances that died without running disconnect hooks: people with no
    socket anywhere start their grace clocks here, and expired ones are freed/ended."""
    await repeat(lambda: sweep(core), every=sweep_interval(core), what="room sweep")
