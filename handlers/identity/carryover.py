"""Guest carry-over: a guest who signs in with identity keeps their conversations, but
only when the platform names the guest in the signed token (`guest_token` claim: the
guest's Studyhall session token). Nothing else links them: never an email, a name or
a device. Runs in the identity sign-in's transaction; the guest's tokens are revoked
with it, and their sockets closed once it commits (`close_guest_sockets`).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from handlers.auth import hash_token
from handlers.core import Core
from storage import audit, carryover, connections

log = logging.getLogger(__name__)


async def carry_over(conn: Any, *, guest_token: str, user_id: UUID, app_id: UUID, ip: str | None) -> list[UUID]:
    """Move the guest's data to `user_id`; the guest's revoked token ids (empty when the
    token names no live guest: the sign-in goes on, carrying nothing)."""
    guest_id = await carryover.lock_guest_by_token(conn, hash_token(guest_token))
    if guest_id is None or guest_id == user_id:
        log.info("guest carry-over skipped: the guest_token names no live guest", extra={"app_id": str(app_id)})
        return []
    moved = await carryover.move(conn, guest_id, user_id)
    await audit.record(
        conn, "identity.guest_carried", actor_id=user_id, target_type="user", target_id=guest_id, ip=ip,
        details={"app_id": str(app_id), "memberships": moved.memberships, "conversations": moved.conversations,
                 "messages": moved.messages, "tickets": moved.tickets},
    )
    return moved.tokens_revoked


async def close_guest_sockets(core: Core, token_ids: list[UUID]) -> None:
    """After the commit: the revoked guest's sockets close on every instance."""
    if not token_ids:
        return
    async with core.db.connection() as conn:
        sids = await connections.sids_for_token(conn, token_ids)
    await core.events.disconnect_tokens(token_ids)
    await core.events.disconnect_sids(sids)
