"""The rooms feature's settings section (`Settings.rooms`), filled in by handlers/settings.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoomSettings:
    """Live rooms: how long a seat and a host's room outlive their last socket."""

    # A host whose sockets are all gone this long: the room ends (STUDYHALL_ROOM_HOST_GRACE).
    host_grace_seconds: float = 120.0
    # A participant whose sockets are all gone this long loses the seat (STUDYHALL_ROOM_LEAVE_GRACE).
    leave_grace_seconds: float = 5.0
