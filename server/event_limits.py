"""Event rate limits for sockets on this instance: token buckets per socket and per user.

Every event a socket sends (including ones refused as undecodable or reserved) takes a
token from its socket's bucket and from its user's bucket, which all of that user's
sockets on this instance share: opening more sockets does not buy a user more events.
How many sockets one user may hold open on this instance is capped too. Counting is per
instance and in memory: the buckets are consulted on every event, so a round trip to
Redis would cost more than the events they guard (the deployment-wide limits of
handlers/ratelimit.py guard the expensive calls: sign-in, tutor questions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from handlers.tokenbucket import TokenBucket


@dataclass
class UserSockets:
    """One user's sockets on this instance and the bucket they share."""

    bucket: TokenBucket
    sids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Refusal:
    """Why an event was refused by a limit, and when trying again can succeed."""

    message: str
    retry_after_ms: int


class EventLimits:
    """Per-socket and per-user event buckets, and the per-user socket cap."""

    def __init__(self, *, socket_rate: float, socket_burst: int, user_rate: float, user_burst: int,
                 max_sockets_per_user: int) -> None:
        self.socket_rate = socket_rate
        self.socket_burst = socket_burst
        self.user_rate = user_rate
        self.user_burst = user_burst
        self.max_sockets_per_user = max_sockets_per_user
        self.users: dict[UUID, UserSockets] = {}

    def admit(self, user_id: UUID, sid: str) -> bool:
        """Register a new socket for the user; False when the user already holds the
        most sockets allowed on this instance (0 turns the cap off)."""
        entry = self.users.get(user_id)
        if entry is None:
            entry = self.users[user_id] = UserSockets(TokenBucket(self.user_rate, self.user_burst))
        cap = self.max_sockets_per_user
        if cap > 0 and len(entry.sids) >= cap and sid not in entry.sids:
            return False
        entry.sids.add(sid)
        return True

    def release(self, user_id: UUID, sid: str) -> None:
        """The socket closed; a user with no sockets left is forgotten."""
        entry = self.users.get(user_id)
        if entry is None:
            return
        entry.sids.discard(sid)
        if not entry.sids:
            del self.users[user_id]

    def new_socket_bucket(self) -> TokenBucket:
        return TokenBucket(self.socket_rate, self.socket_burst)

    def take(self, socket_bucket: TokenBucket, user_id: UUID) -> Refusal | None:
        """Count one event against the socket and its user; None when allowed."""
        if not socket_bucket.take():
            return Refusal("Too many events on this connection; slow down.", socket_bucket.wait_ms())
        entry = self.users.get(user_id)
        if entry is not None and self.user_rate > 0 and not entry.bucket.take():
            return Refusal("Too many events from this account; slow down.", entry.bucket.wait_ms())
        return None
