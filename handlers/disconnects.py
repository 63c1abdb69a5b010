"""Closing a user's open sockets after their tokens were revoked or their role changed
(logout, a role change by an admin or by the platform, deactivation, a guest carried over).

Two steps, because nobody may hear of a change that was rolled back: inside the change's
transaction, `of_tokens` or `of_user` notes what to close, with the socket ids the
`connections` table holds for those tokens; once it has committed, `close` closes them.
Closing goes two ways: the tokens' or user's sockets in memory on every instance first
(`core.events`), then the table's socket ids as a second net (its rows can be lost, and an
in-memory notice can be missed by an instance that is just starting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from handlers.core import Core
from storage import connections, users


@dataclass(frozen=True)
class Disconnects:
    """Sockets to close once the transaction commits."""

    token_ids: tuple[UUID, ...] = ()  # revoked: every socket signed in with one of them
    user_id: UUID | None = None  # every socket of this user (a role change, a deactivation)
    sids: tuple[str, ...] = ()  # the second net: the `connections` rows of those tokens


async def of_tokens(conn: Any, token_ids: Sequence[UUID], *, user_id: UUID | None = None) -> Disconnects:
    """The sockets of tokens just revoked (and all of `user_id`'s, when given)."""
    sids = await connections.sids_for_token(conn, list(token_ids)) if token_ids else []
    return Disconnects(tuple(token_ids), user_id, tuple(sids))


async def of_user(conn: Any, user_id: UUID) -> Disconnects:
    """Every socket of a user whose tokens stay valid (a changed role: they reconnect with it)."""
    live = await users.live_token_ids(conn, user_id)
    sids = await connections.sids_for_token(conn, live) if live else []
    return Disconnects(user_id=user_id, sids=tuple(sids))


async def close(core: Core, closing: Disconnects | None) -> None:
    """After the commit: close them on every instance (None: nothing to close)."""
    if closing is None:
        return
    if closing.token_ids:
        await core.events.disconnect_tokens(closing.token_ids)
    if closing.user_id is not None:
        await core.events.disconnect_user(closing.user_id)
    if closing.sids:
        await core.events.disconnect_sids(closing.sids)
