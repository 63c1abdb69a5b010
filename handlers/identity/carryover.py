"""Guest carry-over: a guest who signs in with identity keeps their conversations, but
only when the platform names the guest: in the signed token (`guest_token` claim: the
guest's Studyhall session token), or with its API key (`link_guest`). Nothing else links them: never an email, a name or
a device. Runs in the identity sign-in's transaction; the guest's tokens are revoked
with it, and their sockets closed once it commits (`close_guest_sockets`).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from handlers.auth import hash_token
from handlers.core import Core
from handlers.errors import ApiError
from handlers.platform.keys import AppActor
from storage import audit, carryover, connections, identities
from storage.carryover import Moved

__all__ = ["Moved", "carry_over", "close_guest_sockets", "link_guest"]

log = logging.getLogger(__name__)


async def carry_over(
    conn: Any, *, guest_token: str, user_id: UUID, app_id: UUID, ip: str | None, extra: dict[str, Any] | None = None,
) -> Moved | None:
    """Move the guest's data to `user_id`: what moved, with the guest's revoked token ids;
    None when the token names no live guest (nothing moves)."""
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
    return moved


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
        moved = await carry_over(conn, guest_token=guest_token, user_id=known.user_id, app_id=app.app_id, ip=ip,
                                 extra={"key_id": str(app.key_id), "via": "api_key"})
        if moved is None:
            raise ApiError("not_found", "No live guest has this token.")
    await close_guest_sockets(core, moved.tokens_revoked)
    return {"sub": sub, "user_id": str(known.user_id), "moved": {
        "memberships": moved.memberships, "conversations": moved.conversations, "messages": moved.messages,
        "tickets": moved.tickets}}


async def close_guest_sockets(core: Core, token_ids: list[UUID]) -> None:
    """After the commit: the revoked guest's sockets close on every instance."""
    if not token_ids:
        return
    async with core.db.connection() as conn:
        sids = await connections.sids_for_token(conn, token_ids)
    await core.events.disconnect_tokens(token_ids)
    await core.events.disconnect_sids(sids)
