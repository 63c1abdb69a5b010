"""Guest carry-over: a guest who signs in with identity keeps their conversations, but
only when the platform names the guest: in the signed token (`guest_token` claim: the
guest's Studyhall session token), or with its API key (`link_guest`). Nothing else links them: never an email, a name or
a device. Runs in the identity sign-in's transaction; the guest's tokens are revoked
with it, and their sockets closed once it commits (`Carried.sockets`, handlers/disconnects.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from handlers import disconnects
from handlers.auth import hash_token
from handlers.core import Core
from handlers.disconnects import Disconnects
from handlers.errors import ApiError
from handlers.platform.keys import AppActor
from storage import audit, carryover, identities
from storage.carryover import Moved

__all__ = ["Carried", "Moved", "carry_over", "link_guest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Carried:
    moved: Moved
    sockets: Disconnects  # the guest's, to close once the transaction commits


async def carry_over(
    conn: Any, *, guest_token: str, user_id: UUID, app_id: UUID, ip: str | None, extra: dict[str, Any] | None = None,
) -> Carried | None:
    """Move the guest's data to `user_id`: what moved, and the guest's sockets (their
    tokens are revoked); None when the token names no live guest (nothing moves)."""
    guest_id = await carryover.lock_guest_by_token(conn, hash_token(guest_token))
    if guest_id is None or guest_id == user_id:
        log.info("guest carry-over skipped: the guest_token names no live guest", extra={"app_id": str(app_id)})
        return None
    moved = await carryover.move(conn, guest_id, user_id)
    await audit.record(
        conn, "identity.guest_carried", actor_id=user_id, target_type="user", target_id=guest_id, ip=ip,
        details={"app_id": str(app_id), "memberships": moved.memberships, "conversations": moved.conversations,
                 "messages": moved.messages, "tickets": moved.tickets, **(extra or {})},
    )
    return Carried(moved, await disconnects.of_tokens(conn, moved.tokens_revoked))


async def link_guest(core: Core, app: AppActor, sub: str, guest_token: str, *, ip: str | None) -> dict[str, Any]:
    """The platform API's explicit link (`users:write`): the guest's data moves to the
    app's user `sub` (who must exist). `not_found` for an unknown `sub` or a token that
    names no live guest."""
    app.require("users:write")
    async with core.db.transaction() as conn:
        await identities.lock_subject(conn, app.app_id, sub)
        known = await identities.get(conn, app.app_id, sub)
        if known is None:
            raise ApiError("not_found", "This app has no user with this sub.")
        carried = await carry_over(conn, guest_token=guest_token, user_id=known.user_id, app_id=app.app_id, ip=ip,
                                   extra={"key_id": str(app.key_id), "via": "api_key"})
        if carried is None:
            raise ApiError("not_found", "No live guest has this token.")
    await disconnects.close(core, carried.sockets)
    moved = carried.moved
    return {"sub": sub, "user_id": str(known.user_id), "moved": {
        "memberships": moved.memberships, "conversations": moved.conversations, "messages": moved.messages,
        "tickets": moved.tickets}}
