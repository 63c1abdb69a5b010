"""The periodic check of this instance's sockets' group rooms against the database.

Sockets enter and leave group rooms through notices (handlers/grouprooms.py), which Redis
can lose. A removed member whose leave notice was lost would keep receiving the group's
messages, and a member whose enter notice was lost would hear nothing live; so every
`settings.auth.revocation_sweep_seconds` (the revocation sweep's period, same reasoning)
each instance reads, in one query, the groups of the users its sockets belong to and
makes each socket's `group:` rooms match: it leaves the rooms of groups its user is no
longer in, and enters the missing ones.

The rooms are read before the sockets and the database, so a group created meanwhile (whose
notice made a socket enter after the snapshot) is not taken for a stale room, nor is a
socket that connects meanwhile (it has no Gateway state in the snapshot: left alone). One narrow race is left
for the next check: a socket missing a room, whose user is removed between the query and
the entry, enters once more; the following check takes it out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from uuid import UUID

import socketio

from handlers import grouprooms
from handlers.core import Core
from handlers.events import GROUP_ROOM_PREFIX
from server.gateway import Gateway

log = logging.getLogger(__name__)


class GroupRoomCheck:
    def __init__(self, core: Core, gateway: Gateway, sio: socketio.AsyncServer) -> None:
        self.core = core
        self.gateway = gateway
        self.sio = sio

    def _group_rooms_by_sid(self) -> dict[str, set[str]]:
        """This instance's group-room memberships, walking the rooms once (not per socket)."""
        out: dict[str, set[str]] = {}
        for room, members in list(self.sio.manager.rooms.get("/", {}).items()):
            if isinstance(room, str) and room.startswith(GROUP_ROOM_PREFIX):
                for sid in list(members):
                    out.setdefault(sid, set()).add(room)
        return out

    async def check_once(self) -> int:
        """Make local sockets' group rooms match the database; returns how many rooms each
        socket entered or left, summed."""
        if not self.core.settings.threads.group_rooms:
            return 0
        # Rooms first, then sockets, then the database (see the module docstring): a socket
        # that connects meanwhile is either not looked at or only re-enters its rooms.
        have = self._group_rooms_by_sid()
        actors = {sid: state.actor for sid, state in list(self.gateway.sockets.items())}
        if not actors:
            return 0
        users: list[UUID] = list({a.user_id for a in actors.values()})
        wanted = await grouprooms.rooms_of_users(self.core, users)
        changed = 0
        entering: list[Awaitable[object]] = []
        for sid, actor in actors.items():
            should = wanted.get(actor.user_id, set())
            for room in have.get(sid, set()) - should:
                try:
                    await self.sio.leave_room(sid, room)
                except KeyError:
                    continue  # closed meanwhile: it left every room
                changed += 1
            if sid in self.gateway.sockets:  # not closed meanwhile
                entering.extend(self.sio.enter_room(sid, room) for room in should - have.get(sid, set()))
        if entering:
            changed += len(entering)
            await asyncio.gather(*entering, return_exceptions=True)
        if changed:
            log.info("group rooms repaired against the database", extra={"changes": changed})
        return changed
