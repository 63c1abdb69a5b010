"""Group conversations fan out through one Socket.IO room, `group:<id>`.

Why: a message to each member's own room (`user:<id>`) is one Redis copy per member; past
STUDYHALL_REDIS_ROOM_EMIT_LIMIT members that became one copy on the global channel, which
every instance hears, so a class chat of 30-100 reached every instance of the fleet. With
every connected socket of a member in the group's room, a group event is one publish on
that room's channel, heard by exactly the instances that host a member (server/
roomchannels.py). Groups of every size use it: a group of 3 costs one publish instead of
three (docs/scaling.md has the measurement).

Who is in the room, on every instance:
- at connect, every socket of a member (server/gateway.py, one query: `rooms_for_user`);
- when a group is created, its members' live sockets, through one notice (`members_joined`);
- when a member leaves the group (`members_left`), their sockets leave, through a notice
  and the `connections` table's sids;
- and every sweep period each instance checks its own sockets' group rooms against the
  database (server/grouprooms.py): a notice lost while Redis was down is repaired there,
  both ways. A deactivated user's sockets are closed (revocation), which leaves every room.

A notice reaches another instance later than the creator's first message can: that
instance subscribes to the room's channel only once the notice made a socket enter it.
So while a group is younger than `threads.group_room_settle_seconds` its events go to the
group's room and to its members' own rooms (one copy per socket, server/roomchannels.py
dedupes), which covers sockets whose notice is still on its way. A single instance (no
Redis) has no notice on its way: its events go to the group's room alone from the start
(the window cost a new group of 100 about a fifth of its messages per second in
`bench/threads_bench.py --scenario group`, which sends in the group's first seconds).

Direct conversations (two members, no membership changes) and tutor conversations (whose
members change as tickets seat agents: handlers/tickets/seating.py) keep their members'
own rooms: a room per pair would cost a subscription per conversation for no saving.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from handlers.core import Core
from handlers.events import group_room, user_room
from storage import conversations
from storage.records import Role


def uses_group_room(core: Core, kind: str) -> bool:
    return core.settings.threads.group_rooms and kind == "group"


def audience(core: Core, *, kind: str, conversation_id: UUID, created_at: datetime,
             member_ids: Iterable[UUID]) -> list[str] | None:
    """The rooms a group's events go to; None when the conversation is no group (its
    members' own rooms, as before). A group still settling (see the module docstring)
    adds its members' own rooms."""
    if not uses_group_room(core, kind):
        return None
    rooms = [group_room(conversation_id)]
    if core.settings.cluster.redis_url is None:
        return rooms  # one instance: `members_joined` entered every socket before the group was returned
    settle = timedelta(seconds=core.settings.threads.group_room_settle_seconds)
    if datetime.now(UTC) - created_at < settle:
        rooms.extend(user_room(m) for m in member_ids)
    return rooms


async def rooms_for_user(core: Core, user_id: UUID, role: str) -> list[str]:
    """The group rooms a newly connected socket of this user enters. A guest (a widget
    visitor) is never a group member (handlers/threads.py UNADDABLE_ROLES): no query."""
    if not core.settings.threads.group_rooms or role == Role.GUEST:
        return []
    return list((await rooms_of_users(core, [user_id])).get(user_id, ()))


async def rooms_of_users(core: Core, user_ids: Sequence[UUID]) -> dict[UUID, set[str]]:
    """`rooms_for_user` for many users in one query (the periodic check)."""
    async with core.db.connection() as conn:
        found = await conversations.group_ids_of_users(conn, user_ids)
    return {uid: {group_room(cid) for cid in cids} for uid, cids in found.items()}


async def members_joined(core: Core, conversation_id: UUID, user_ids: Sequence[UUID]) -> None:
    """After the commit that made them members: their sockets enter the group's room on
    every instance (here before this returns, with the room's channel subscribed)."""
    if core.settings.threads.group_rooms:
        await core.events.join_users_sockets(user_ids, group_room(conversation_id))


async def members_left(core: Core, conversation_id: UUID, user_ids: Sequence[UUID]) -> None:
    """After the commit that removed them: their sockets leave the group's room everywhere.
    Done even with group rooms off, so turning them off leaves nobody behind in one."""
    for user_id in dict.fromkeys(user_ids):
        await core.events.leave_user_sockets(user_id, group_room(conversation_id))
