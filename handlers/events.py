"""How handlers tell clients about things, without knowing about Socket.IO.

The transport (server/realtime.py) implements this. Handlers call it only after the
transaction that made the change has committed, so nobody hears of a rolled-back row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID


def user_room(user_id: UUID | str) -> str:
    return f"user:{user_id}"


def conversation_room(conversation_id: UUID | str) -> str:
    """Sockets that joined a live room's chat (room conversations fan out to joined sockets)."""
    return f"conv:{conversation_id}"


GROUP_ROOM_PREFIX = "group:"


def group_room(conversation_id: UUID | str) -> str:
    """Every connected socket of a group conversation's members (handlers/grouprooms.py):
    one emit to it reaches exactly the instances that host members. Its own prefix, so the
    periodic check (server/grouprooms.py) can tell group rooms from live rooms' `conv:`."""
    return f"{GROUP_ROOM_PREFIX}{conversation_id}"

STAFF_ROOM = "staff"  # sockets of agents and admins


class Events(Protocol):
    async def to_users(self, user_ids: Iterable[UUID | str], event: str, data: dict[str, Any]) -> None:
        """Every socket of these users, on every instance."""

    async def to_rooms(self, rooms: Iterable[str], event: str, data: dict[str, Any]) -> None:
        """Every socket in these Socket.IO rooms, on every instance (each socket once)."""

    async def to_rooms_except_user(self, rooms: Iterable[str], user_id: UUID | str, event: str,
                                   data: dict[str, Any]) -> None:
        """`to_rooms`, but none of this user's sockets (on any instance) gets it: `typing`
        and `read` go to the other members only."""

    async def to_users_many(self, user_ids: Iterable[UUID | str], event: str, datas: Sequence[dict[str, Any]]) -> None:
        """`to_users` for several events, in order: each socket gets them together (one
        write where the transport allows), never reordered."""

    async def to_rooms_many(self, rooms: Iterable[str], event: str, datas: Sequence[dict[str, Any]]) -> None:
        """`to_rooms` for several events, in order, like `to_users_many`."""

    async def join_user_sockets(self, user_id: UUID | str, room: str) -> None:
        """Make every socket of a user, on every instance, enter a room."""

    async def join_users_sockets(self, user_ids: Iterable[UUID | str], room: str) -> None:
        """`join_user_sockets` for several users at once (one notice for all of them)."""

    async def leave_user_sockets(self, user_id: UUID | str, room: str) -> None:
        """Make every socket of a user, on every instance, leave a room."""

    async def disconnect_sids(self, sids: Iterable[str]) -> None:
        """Close these sockets wherever they are connected."""

    async def disconnect_tokens(self, token_ids: Iterable[UUID | str]) -> None:
        """Close every socket signed in with these tokens, on every instance (found in each
        instance's memory, not through the `connections` table)."""

    async def disconnect_user(self, user_id: UUID | str) -> None:
        """Close every socket of a user, on every instance (found in memory, like above)."""
