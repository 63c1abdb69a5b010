"""Who hears a conversation's events: one answer for every sender of them.

A conversation's events (a new message, an edit, typing, a read marker, its new state)
go to one of three audiences, decided in one place so that `message:new` and the events
around it can never take different routes:

- a group's Socket.IO room (`group:<id>`, handlers/grouprooms.py), plus its members' own
  rooms while a new group settles across instances;
- its members' own rooms (`user:<id>`): direct, tutor and ticket conversations, whose
  member list the caller has already loaded;
- the conversation's room (`conversation:<id>`): a live room's chat, whose participants
  are not a stored member list.

Which of the last two a kind uses is its policy's `fans_out_to_members` (handlers/
pipeline.py `conversation_audience`); this module only knows the rooms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from handlers import grouprooms
from handlers.core import Core
from handlers.events import conversation_room
from handlers.writer import Delivery
from storage.records import Message

Route = Literal["group", "members", "room"]


@dataclass(frozen=True, slots=True)
class Audience:
    """Where a conversation's events go: Socket.IO rooms (routes `group` and `room`) or
    members' own rooms (`members`). Hashable, so the writer can tell consecutive messages
    with the same audience apart from the rest (handlers/writer.py `Delivery`)."""

    route: Route
    rooms: tuple[str, ...] = ()
    members: tuple[UUID, ...] = ()
    skip_user: UUID | None = None

    async def emit(self, core: Core, event: str, data: dict[str, Any]) -> None:
        """Send one event. `skip_user`'s sockets are left out (their own echo of typing or
        a read marker) in a group or a member list; a live room's chat echoes to every
        socket in its room, as it always has (its participants are only known as the room)."""
        if self.route == "members":
            await core.events.to_users((m for m in self.members if m != self.skip_user), event, data)
        elif self.route == "group" and self.skip_user is not None:
            await core.events.to_rooms_except_user(self.rooms, self.skip_user, event, data)
        else:
            await core.events.to_rooms(self.rooms, event, data)

    def delivery(self, core: Core) -> Delivery:
        """How the writer sends `message:new` for a run of committed messages to this
        audience: all of them in one call, in seq order."""
        route, rooms, members = self.route, self.rooms, self.members

        async def send(batch: list[Message]) -> None:
            datas = [{"message": m} for m in batch]
            if route == "members":
                await core.events.to_users_many(members, "message:new", datas)
            else:
                await core.events.to_rooms_many(rooms, "message:new", datas)

        return Delivery(self, send)


def room_audience(conversation_id: UUID) -> Audience:
    """A live room's chat: the conversation's Socket.IO room."""
    return Audience("room", rooms=(conversation_room(conversation_id),))


def audience_of(core: Core, *, kind: str, conversation_id: UUID, created_at: datetime,
                member_ids: Sequence[UUID], to_members: bool, skip_user: UUID | None = None) -> Audience:
    """The audience of a conversation, from what the caller has loaded. `to_members` is
    the kind's policy (`fans_out_to_members`); `skip_user` hears none of the events sent
    to it (but in a live room's room, see `Audience.emit`)."""
    # Lazy: only a group still settling across instances reads its members (per message,
    # the list is not copied for nothing).
    rooms = grouprooms.audience(core, kind=kind, conversation_id=conversation_id, created_at=created_at,
                                member_ids=(m for m in member_ids if m != skip_user))
    if rooms is not None:
        return Audience("group", rooms=tuple(rooms), skip_user=skip_user)
    if to_members:
        return Audience("members", members=tuple(member_ids), skip_user=skip_user)
    return room_audience(conversation_id)

