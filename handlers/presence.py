"""Presence: a user is online while at least one socket is open on any instance.

Going offline waits a short grace period, so a page reload or a brief network blip does
not flash "offline" to everyone. Who hears about it: users sharing a direct, group or
tutor conversation with the user, and users who favorited them. "Offline" is a judgement
that the user is gone, so it waits for a settled registry (handlers/registry.py): after
a database crash the registry is empty until every instance has re-registered.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from handlers import registry
from handlers.core import Actor, Core
from storage import connections, conversations


async def _announce(core: Core, user_id: UUID, status: str) -> None:
    async with core.db.connection() as conn:
        audience = await conversations.presence_audience(conn, user_id)
    await core.events.to_users(audience, "presence", {"user_id": user_id, "status": status})


async def socket_connected(core: Core, actor: Actor) -> None:
    assert actor.sid is not None
    async with core.db.connection() as conn:
        count, reset = await connections.add(conn, actor.sid, core.instance_id, actor.user_id, actor.token_id)
    if reset:  # this instance's row was gone: the registry was emptied under us
        await registry.recover(core)
    if count == 1:
        await _announce(core, actor.user_id, "online")


async def socket_disconnected(core: Core, actor: Actor) -> None:
    assert actor.sid is not None
    async with core.db.connection() as conn:
        await connections.remove(conn, actor.sid)
        remaining = await connections.count_for_user(conn, actor.user_id)
    if remaining == 0:
        core.spawn(_offline_after_grace(core, actor.user_id), name=f"presence-grace:{actor.user_id}")


async def _offline_after_grace(core: Core, user_id: UUID) -> None:
    await asyncio.sleep(core.settings.presence.grace_seconds)
    async with registry.settled(core) as conn:
        if await connections.count_for_user(conn, user_id) > 0:
            return
    await _announce(core, user_id, "offline")


async def announce_offline(core: Core, user_ids: list[UUID]) -> None:
    """Users whose instance died: tell their audiences, unless they reconnected elsewhere."""
    async with registry.settled(core) as conn:
        still_online = await connections.online_users(conn, user_ids)
    for user_id in user_ids:
        if user_id not in still_online:
            await _announce(core, user_id, "offline")


async def online_among(core: Core, user_ids: list[UUID]) -> set[UUID]:
    async with core.db.connection() as conn:
        return await connections.online_users(conn, user_ids)
